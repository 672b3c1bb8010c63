"""Test settings: one torch thread (2-core machines: oversubscription makes tiny models ~100x
slower), offline model hubs, deterministic seeds per test."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# sim demo caches go to a fresh folder per test session (never the user's ~/.cache)
import tempfile  # noqa: E402

# one folder per test run, shared by the xdist workers (cache entries are written atomically)
_run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
os.environ.setdefault("VLA_EBT_CACHE", os.path.join(tempfile.gettempdir(), f"vla_ebt_test_cache_{_run}"))

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# this checkout's client package, not the one the shared virtualenv's editable install points at
_CLIENT = str(Path(__file__).resolve().parents[1] / "packages" / "vla_ebt_client")
if _CLIENT not in sys.path:
    sys.path.insert(0, _CLIENT)
if _CLIENT not in os.environ.get("PYTHONPATH", "").split(os.pathsep):  # and in the processes tests start
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_CLIENT, os.environ.get("PYTHONPATH")) if p)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
