"""Wall time of the test suite: ``python -m pytest -q`` (the project's addopts: xdist ``-n auto``,
``--durations=15``) for the full suite and with ``-m "not slow"``, in the repository root.

    python benchmarks/test_suite_timing.py --out docs/results/test_suite_timing.json
        [--only full|not_slow|both] [--label "quiet machine"] [-- PYTEST ARGS]

Per run (JSON key ``full_suite`` / ``not_slow``): the command, the git commit and whether the tree had
uncommitted changes, the pytest exit code, passed / failed / errors / skipped / deselected / xfailed /
xpassed counts and pytest's own seconds from its summary line, the wall seconds of the process, the
60 slowest durations (``--durations`` output: test id, phase, seconds) and the 1-minute load average
sampled every 5 s during the run (what else ran). Top level: label, git state, machine (usable
cores, CPU model, memory). Failing tests do not stop the measurement (the counts say so); a run whose
output has no summary line (pytest could not start) is an error. The JSON is written atomically.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.provenance import LoadSampler, git_state, machine, split_passthrough  # noqa: E402
from vla_ebt.config_io import atomic_write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUNS = {"full_suite": [], "not_slow": ["-m", "not slow"]}
SLOWEST = 60  # enough for tests/conftest.py to order the heavy modules first
#: outcome words of pytest's summary line -> JSON key
OUTCOMES = {"passed": "passed", "failed": "failed", "error": "errors", "errors": "errors", "skipped": "skipped",
            "deselected": "deselected", "xfailed": "xfailed", "xpassed": "xpassed", "warning": "warnings",
            "warnings": "warnings", "rerun": "reruns"}
_COUNT = re.compile(r"(\d+) (" + "|".join(sorted(OUTCOMES, key=len, reverse=True)) + r")\b")
_SECONDS = re.compile(r"\bin (\d+(?:\.\d+)?)s\b")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s+(call|setup|teardown)\s+(\S.*?)\s*$")


def parse_summary(output: str) -> dict[str, Any]:
    """Counts and pytest seconds from the last summary line of pytest's output (``=== 3 passed,
    1 failed, 2 deselected in 12.34s (0:00:12) ===`` or the ``-q`` form without the ``=``); missing
    outcomes count 0. ValueError if no line has both counts and ``in N s``."""
    for line in reversed(output.splitlines()):
        seconds, counts = _SECONDS.search(line), _COUNT.findall(line)
        if seconds and (counts or "no tests ran" in line):
            out: dict[str, Any] = {k: 0 for k in dict.fromkeys(OUTCOMES.values())}
            for n, word in counts:
                out[OUTCOMES[word]] += int(n)
            out["pytest_seconds"] = float(seconds.group(1))
            out["summary_line"] = line.strip("= ").strip()
            return out
    raise ValueError("no pytest summary line (e.g. '3 passed in 1.2s') in the output")


def parse_durations(output: str, limit: int = SLOWEST) -> list[dict[str, Any]]:
    """The ``--durations`` table (after the ``slowest ... durations`` header): up to ``limit`` rows of
    test id, phase (call / setup / teardown) and seconds, slowest first; [] without the table."""
    rows: list[dict[str, Any]] = []
    in_table = False
    for line in output.splitlines():
        if re.search(r"=+ slowest (\d+ )?durations =+", line):
            in_table, rows = True, []
            continue
        if in_table:
            m = _DURATION.match(line)
            if m:
                rows.append({"test": m.group(3), "phase": m.group(2), "seconds": float(m.group(1))})
            elif line.strip() and not line.lstrip().startswith("("):  # "(N durations < 0.005s hidden ...)"
                in_table = False
    return sorted(rows, key=lambda r: -r["seconds"])[:limit]


def run_pytest(name: str, extra: list[str], log_path: Path) -> dict[str, Any]:
    """One ``python -m pytest -q`` process in the repo root; its counts, seconds, slowest tests, load."""
    cmd = [sys.executable, "-m", "pytest", "-q", f"--durations={SLOWEST}", *RUNS[name], *extra]
    git = git_state()
    t0 = time.perf_counter()
    with LoadSampler() as load, open(log_path, "w") as log:
        code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    output = log_path.read_text(errors="replace")
    try:
        summary = parse_summary(output)
    except ValueError as e:
        raise RuntimeError(f"{name}: pytest exited {code} with {e}; see {log_path}:\n{output[-3000:]}") from None
    return {"command": shlex.join(["python", *cmd[1:]]), "commit": git["commit"], "dirty": git["dirty"],
            "exit_code": code, **summary, "wall_seconds": round(wall, 1), "load_avg_1min": load.summary(),
            "slowest": parse_durations(output)}


def table(result: dict[str, Any]) -> str:
    """The runs as a plain-text table."""
    cols = ("passed", "failed", "errors", "skipped", "deselected")
    lines = [f"{'run':<12}" + "".join(f"{c:>11}" for c in cols) + f"{'pytest s':>10}{'wall s':>9}{'load':>6}"]
    for name in RUNS:
        r = result.get(name)
        if r:
            load = r["load_avg_1min"].get("mean")
            lines.append(f"{name:<12}" + "".join(f"{r[c]:>11}" for c in cols) + f"{r['pytest_seconds']:>10.1f}"
                         f"{r['wall_seconds']:>9.1f}" + (f"{load:>6.1f}" if load is not None else f"{'-':>6}"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv, extra = split_passthrough(list(sys.argv[1:] if argv is None else argv))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="write the measurement here as JSON (atomically)")
    p.add_argument("--only", choices=["full", "not_slow", "both"], default="both", help="which runs (default both)")
    p.add_argument("--label", default="", help="conditions of the measurement, e.g. 'quiet machine'")
    a = p.parse_args(argv)
    names = {"full": ["full_suite"], "not_slow": ["not_slow"], "both": list(RUNS)}[a.only]
    logs = Path(tempfile.mkdtemp(prefix="test_suite_timing_"))
    result: dict[str, Any] = {"label": a.label, "what": "python -m pytest -q in the repository root (addopts: xdist -n auto)",
                              "git": git_state(), "machine": machine(), "extra_args": extra}
    for name in names:
        print(f"[bench] {name}: pytest -q {shlex.join(RUNS[name] + extra)} (log in {logs}) ...", flush=True)
        r = run_pytest(name, extra, logs / f"{name}.log")
        print(f"[bench]   {r['summary_line']}; {r['wall_seconds']:.0f} s wall", flush=True)
        result[name] = r
    print(table(result))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, result)
    print(f"[bench] wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
