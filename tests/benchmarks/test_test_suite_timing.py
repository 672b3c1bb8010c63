"""benchmarks/test_suite_timing.py: parsing pytest's summary line and --durations table (fake output,
no pytest run inside the tests), and the Measured-section formatter on the file it writes."""

from __future__ import annotations

import pytest

from benchmarks.test_suite_timing import parse_durations, parse_summary

OUTPUT = """\
........................................................................ [ 50%]
.....F..s.......................................................x....... [100%]
============================= slowest 15 durations =============================
1.50s setup    tests/eval/test_b.py::test_fixture_heavy
120.25s call     tests/recipes/test_a.py::test_trains[ebt]
0.75s call     tests/vla_ebt/test_c.py::test_small

(12 durations < 0.005s hidden.  Use -vv to show these durations.)
=========================== short test summary info ============================
FAILED tests/recipes/test_a.py::test_other - AssertionError: 2 passed in 3s
SKIPPED [1] tests/eval/test_b.py:10: no LIBERO
==== 140 passed, 1 failed, 1 skipped, 70 deselected, 1 xfailed, 3 warnings in 1015.04s (0:16:55) ====
"""


def test_parse_summary_line() -> None:
    s = parse_summary(OUTPUT)
    assert (s["passed"], s["failed"], s["skipped"], s["deselected"], s["xfailed"], s["warnings"]) == (140, 1, 1, 70, 1, 3)
    assert s["errors"] == 0 and s["xpassed"] == 0
    assert s["pytest_seconds"] == 1015.04
    assert s["summary_line"].startswith("140 passed") and s["summary_line"].endswith("(0:16:55)")


def test_parse_summary_quiet_forms() -> None:
    s = parse_summary("476 passed, 2 errors in 93.05s (0:01:33)\n")
    assert (s["passed"], s["errors"], s["pytest_seconds"]) == (476, 2, 93.05)
    assert parse_summary("1 error in 0.50s\n")["errors"] == 1
    assert parse_summary("no tests ran in 0.01s\n")["passed"] == 0
    with pytest.raises(ValueError, match="no pytest summary line"):
        parse_summary("ERROR: usage: pytest [options]\n")


def test_parse_durations() -> None:
    rows = parse_durations(OUTPUT)
    assert rows == [
        {"test": "tests/recipes/test_a.py::test_trains[ebt]", "phase": "call", "seconds": 120.25},
        {"test": "tests/eval/test_b.py::test_fixture_heavy", "phase": "setup", "seconds": 1.5},
        {"test": "tests/vla_ebt/test_c.py::test_small", "phase": "call", "seconds": 0.75},
    ]
    assert parse_durations(OUTPUT, limit=1)[0]["seconds"] == 120.25
    assert parse_durations("3 passed in 1.0s\n") == []


def test_measured_formatter_reads_the_new_file() -> None:
    """The file the benchmark writes (keys of run_pytest) renders in the README's Measured section."""
    from recipes.measured import Artifact, format_test_suite_timing

    run = {"command": "python -m pytest -q --durations=15 -m 'not slow'", "commit": "0123456789abcdef", "dirty": False,
           "exit_code": 1, **parse_summary(OUTPUT), "wall_seconds": 1020.5,
           "load_avg_1min": {"min": 1.0, "mean": 2.0, "max": 3.0, "samples": 9}, "slowest": parse_durations(OUTPUT)}
    data = {"label": "quiet", "git": {"commit": "0123456789abcdef", "dirty": False},
            "machine": {"nproc": 2, "cpu_model": "CPU X"}, "extra_args": ["-x"], "not_slow": run}
    b = format_test_suite_timing(Artifact("t.json", data))
    for s in ("quiet; 2 cores (CPU X)", "commit `0123456`", "140 passed, 1 failed, 1 skipped, 70 deselected",
              "pytest **16 min 55 s**", "wall 17 min 0 s", "load average 2.0 mean, 3.0 max",
              "slowest `tests/recipes/test_a.py::test_trains[ebt]` 2 min 0 s"):
        assert s in b.text, s
    assert "full suite" not in b.text
    assert b.command == "python benchmarks/test_suite_timing.py --only not_slow --label quiet --out t.json -- -x"


def test_split_passthrough_separates_at_the_first_double_dash() -> None:
    from benchmarks.provenance import split_passthrough

    assert split_passthrough(["--out", "x.json", "--", "-k", "a", "--", "b"]) == (["--out", "x.json"], ["-k", "a", "--", "b"])
    assert split_passthrough(["--out", "x.json"]) == (["--out", "x.json"], [])
    assert split_passthrough(["--"]) == ([], [])
