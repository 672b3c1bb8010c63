"""CPU cores this process may use, and the torch-thread / env-worker counts derived from them.

::

    torch.set_num_threads(resolve_threads("auto"))      # $OMP_NUM_THREADS if set, else the free usable cores
    n = resolve_workers("auto", jobs=90)                # one env worker process per usable core (0 on 1 core)

"Usable" is the scheduler affinity (``os.sched_getaffinity``: a container's or ``taskset``'s CPU set),
not the machine's core count; "free" subtracts what other processes keep busy (sampled from
``/proc/stat``): when nothing else runs that is every usable core. Why free and not usable: torch's
OpenMP threads spin at barriers, so more threads than idle cores is not a little slower but several
times slower (measured on a 2-core machine at load ~4: 2 threads 4-9 s per training step of the
default recipe, 1 thread 0.5-0.7 s). The phases of a job that use these (demo collection,
training, evaluation) run one after the other, so each may take every core; processes that share
the machine with others of their kind (several runs side by side) should pass 1 thread each.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator

__all__ = ["available_cores", "busy_cores", "free_cores", "resolve_threads", "resolve_workers", "torch_threads"]

AUTO = "auto"


def available_cores() -> int:
    """Cores this process may run on (affinity set; ``os.cpu_count()`` where that is unknown), >= 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _cpu_times(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) jiffies summed over ``cpus`` from /proc/stat; None where unreadable."""
    try:
        lines = open("/proc/stat").read().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *vals = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()) or int(name[3:]) not in cpus:
            continue
        v = [int(x) for x in vals[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(v)
        busy += sum(v) - v[3] - v[4]
    return (busy, total) if total else None


def busy_cores(interval_s: float = 0.5) -> float:
    """Cores kept busy during the next ``interval_s`` seconds on this process's usable CPUs, by
    everything but a sleeping caller (from /proc/stat); 0.0 where that cannot be read."""
    try:
        cpus = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return 0.0
    a = _cpu_times(cpus)
    time.sleep(interval_s)
    b = _cpu_times(cpus)
    if a is None or b is None or b[1] <= a[1]:
        return 0.0
    return len(cpus) * (b[0] - a[0]) / (b[1] - a[1])


def free_cores(interval_s: float = 0.5) -> int:
    """:func:`available_cores` minus the cores other processes keep busy (rounded), at least 1."""
    return max(1, available_cores() - int(busy_cores(interval_s) + 0.5))


def _as_int(value: int | str, what: str, minimum: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be 'auto' or an integer >= {minimum}, got {value!r}") from None
    if n < minimum:
        raise ValueError(f"{what} must be 'auto' or an integer >= {minimum}, got {value!r}")
    return n


def resolve_threads(value: int | str) -> int:
    """Torch intra-op threads for ``value``: an integer >= 1 as given; "auto": ``$OMP_NUM_THREADS``
    when set to a positive integer (a launcher or the user chose it), else :func:`free_cores` (every
    usable core when nothing else runs; takes 0.5 s to sample). Anything else raises ValueError."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        if env.isdigit() and int(env) > 0:
            return int(env)
        return free_cores()
    return _as_int(value, "threads", 1)


def resolve_workers(value: int | str, jobs: int | None = None) -> int:
    """Env worker processes for ``value``: an integer >= 0 as given (0: run in this process);
    "auto": :func:`available_cores` when there is more than one, else 0. Never more than ``jobs``
    (the episodes to run) when given. Anything else raises ValueError."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        cores = available_cores()
        n = cores if cores > 1 else 0
    else:
        n = _as_int(value, "workers", 0)
    return n if jobs is None else max(0, min(n, int(jobs)))


@contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)``; the previous count is restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield int(n)
    finally:
        torch.set_num_threads(before)
