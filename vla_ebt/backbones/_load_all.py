"""Import every backbone family module so its builder registers (no work at import time)."""

from . import composite  # noqa: F401
from . import hf_vlm  # noqa: F401
from . import open_clip_backbone  # noqa: F401
