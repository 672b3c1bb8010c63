"""The machine a run or measurement happened on, as recorded beside its numbers: usable cores, CPU model
and the CPU kernels torch dispatches to (``torch.backends.cpu.get_cpu_capability()``: float results of a
run can differ between machines whose capability differs), memory, Python, torch and numpy versions
(numpy is pinned to a range, so a fresh install may resolve another)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["machine_info"]


def machine_info() -> dict[str, Any]:
    """{"nproc", "cpu_model", "cpus_in_cpuinfo", "mem_total_gb", "platform", "python", "torch",
    "torch_cpu_capability", "numpy"}; a field that cannot be read here is "" / 0 / None."""
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

        torch_version, capability = torch.__version__, torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):  # pragma: no cover
        torch_version, capability = None, None
    try:
        import numpy

        numpy_version = numpy.__version__
    except ImportError:  # pragma: no cover
        numpy_version = None
    return {"nproc": nproc, "cpu_model": model, "cpus_in_cpuinfo": cpus, "mem_total_gb": mem_gb,
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch_version,
            "torch_cpu_capability": capability, "numpy": numpy_version}
