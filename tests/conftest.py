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


# ------------------------------------------------------------------ xdist: heaviest modules first
# pytest-xdist's loadscope hands out whole modules; started last, one long module keeps a worker busy
# while the other idles (longest-first scheduling avoids that tail). A module's cost is the sum of its
# tests' durations in the last stored suite timing (benchmarks/test_suite_timing.py), else an estimate.
_TIMING = Path(__file__).resolve().parents[1] / "docs" / "results" / "test_suite_timing.json"
SLOW_TEST_S, FAST_TEST_S = 15.0, 0.3


def _measured_module_seconds() -> dict[str, float]:
    import json

    try:
        rows = json.loads(_TIMING.read_text()).get("full_suite", {}).get("slowest", [])
        out: dict[str, float] = {}
        for r in rows:
            module = str(r["test"]).split("::")[0]
            out[module] = out.get(module, 0.0) + float(r["seconds"])
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def module_costs(items: list, measured: dict[str, float]) -> dict[str, float]:
    """Estimated seconds per test module: measured where known, else ``SLOW_TEST_S`` per slow test and
    ``FAST_TEST_S`` per other test (the larger of the two where both exist)."""
    est: dict[str, float] = {}
    for it in items:
        module = it.nodeid.split("::")[0]
        est[module] = est.get(module, 0.0) + (SLOW_TEST_S if it.get_closest_marker("slow") else FAST_TEST_S)
    return {m: max(s, measured.get(m, 0.0)) for m, s in est.items()}


#: the module costs the last collection was ordered by (read by tests/test_suite_order.py)
ORDERED_BY: dict[str, float] = {}


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001
    costs = module_costs(items, _measured_module_seconds())
    ORDERED_BY.clear()
    ORDERED_BY.update(costs)
    order = {m: i for i, m in enumerate(dict.fromkeys(it.nodeid.split("::")[0] for it in items))}
    items.sort(key=lambda it: (-costs[it.nodeid.split("::")[0]], order[it.nodeid.split("::")[0]]))
