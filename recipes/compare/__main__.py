"""``python -m recipes.compare``: see :mod:`recipes.compare.cli`."""

import sys

from .cli import main

sys.exit(main())
