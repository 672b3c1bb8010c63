"""``python -m eval.sim.workers``: run one env worker on stdin / stdout."""

from .server import _worker_main

_worker_main()
