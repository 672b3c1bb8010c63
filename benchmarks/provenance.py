"""Where and under what conditions a benchmark ran: the machine (usable cores, CPU model, memory,
versions), the git state (commit, branch, uncommitted changes) and the 1-minute load average sampled
while it ran. Every benchmark's JSON carries these, so its numbers can be traced and judged."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    """nproc (usable cores), CPU model and count, torch's CPU capability, memory, Python and torch versions
    (:func:`vla_ebt.machine.machine_info`)."""
    from vla_ebt.machine import machine_info

    return machine_info()


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
