"""Where and under what conditions a benchmark ran: the machine (usable cores, CPU model, memory,
versions), the git state (commit, branch, uncommitted changes) and the 1-minute load average sampled
while it ran. Every benchmark's JSON carries these, so its numbers can be traced and judged."""

from __future__ import annotations

import os
import platform
import subprocess
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    """nproc (usable cores), CPU model and count from /proc/cpuinfo, memory, Python and torch versions."""
    model, cpus = "", 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = model or line.split(":", 1)[1].strip()
                cpus += 1
    except OSError:
        pass
    mem_gb = None
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        mem_gb = round(kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count() or 1
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:  # pragma: no cover
        torch_version = None
    return {"nproc": nproc, "cpu_model": model, "cpus_in_cpuinfo": cpus, "mem_total_gb": mem_gb,
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch_version}


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


class LoadSampler:
    """Samples /proc/loadavg (1-min) every ``every_s`` seconds in a thread while running."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s, self.samples = every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(float(Path("/proc/loadavg").read_text().split()[0]))
            except OSError:
                return
            self._stop.wait(self.every_s)

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        s = self.samples
        return {"min": min(s), "mean": sum(s) / len(s), "max": max(s), "samples": len(s)} if s else {}


def provenance(load: "LoadSampler | None" = None) -> dict[str, Any]:
    """{"git", "machine", "load_avg_1min"}: the load summary of ``load`` (sampled during the run) or,
    without one, the load average now."""
    return {"git": git_state(), "machine": machine(),
            "load_avg_1min": load.summary() if load is not None else {"now": os.getloadavg()[0]}}


def split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` split at the first ``--``: (the benchmark's own arguments, those passed through to the
    measured command). Without ``--`` the second list is empty."""
    if "--" not in argv:
        return list(argv), []
    i = argv.index("--")
    return list(argv[:i]), list(argv[i + 1:])
