"""Statistics of a comparison cell: a hierarchical bootstrap over training seeds x evaluation episodes,
the area under the learning curve, and :func:`separates` (the only test the report uses to say a head
"beats" another).

Data of a cell: one array per training seed, episodes on the last axis (``(E,)`` 0/1 outcomes of the
final checkpoint, or ``(K, E)`` for K checkpoints that were evaluated on the same E episodes), plus
the task of every episode. One bootstrap replicate draws the seeds with replacement, then within each
drawn seed the episodes of each task with replacement (the same draw for all K checkpoints: the
curve stays paired), and recomputes the statistic. Point estimate: the statistic of the data;
interval: the 2.5 / 97.5 percentiles of 2,000 replicates from a fixed RNG seed (deterministic).
A statistic may be undefined (NaN) on some replicates (e.g. an AUROC when a resample holds one
class only): those replicates are left out of the percentiles and counted (``Estimate.undefined``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = ["Estimate", "bootstrap", "success_estimate", "auc", "auc_estimate", "separates", "N_BOOT", "BOOT_SEED"]

N_BOOT = 2000
BOOT_SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval."""

    value: float
    lo: float
    hi: float
    n_seeds: int = 0
    n_episodes: int = 0  # per seed (all checkpoints share them)
    undefined: int = 0  # bootstrap replicates on which the statistic was NaN (left out of the interval)

    def fmt(self, nd: int = 2) -> str:
        return f"{self.value:.{nd}f} [{self.lo:.{nd}f}, {self.hi:.{nd}f}]"


def _mean_over_seeds(per_seed: Sequence[np.ndarray]) -> float:
    """Seeds weigh equally: the mean over seeds of each seed's mean over episodes."""
    return float(np.mean([x.mean() for x in per_seed]))


def bootstrap(per_seed: Sequence[np.ndarray], tasks: Sequence[np.ndarray] | None,
              statistic: Callable[[list[np.ndarray]], float] = _mean_over_seeds, n_boot: int = N_BOOT,
              seed: int = BOOT_SEED, level: float = 0.95) -> Estimate:
    """Hierarchical bootstrap (module docstring). ``per_seed[i]``: (E_i,) or (K, E_i); ``tasks[i]``:
    (E_i,) labels to resample within (None: one stratum)."""
    data = [np.asarray(x, np.float64) for x in per_seed]
    if not data or any(x.shape[-1] == 0 for x in data):
        raise ValueError("bootstrap: every seed needs at least one episode")
    strata = []
    for i, x in enumerate(data):
        lab = np.zeros(x.shape[-1], int) if tasks is None else np.asarray(tasks[i])
        if lab.shape != (x.shape[-1],):
            raise ValueError(f"bootstrap: seed {i} has {x.shape[-1]} episodes but {lab.shape} task labels")
        strata.append([np.flatnonzero(lab == u) for u in np.unique(lab)])
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    n = len(data)
    for b in range(n_boot):
        drawn = []
        for s in rng.integers(0, n, n):
            idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in strata[s]])
            drawn.append(data[s][..., idx])
        reps[b] = statistic(drawn)
    a = (1.0 - level) / 2.0
    ok = reps[np.isfinite(reps)]
    lo, hi = np.quantile(ok, [a, 1.0 - a]) if len(ok) else (float("nan"), float("nan"))
    return Estimate(statistic(data), float(lo), float(hi), n, int(data[0].shape[-1]), int(n_boot - len(ok)))


def success_estimate(outcomes: Sequence[np.ndarray], tasks: Sequence[np.ndarray], **kw) -> Estimate:
    """Mean success with its interval; ``outcomes[i]``: (E,) 0/1 of training seed i."""
    return bootstrap(outcomes, tasks, _mean_over_seeds, **kw)


def auc(steps: Sequence[float], success: Sequence[float]) -> float:
    """Normalized area under a learning curve: the trapezoid integral of success over the checkpoint
    steps divided by their span (the mean success over training, in [0, 1]); one point: its value."""
    x = np.asarray(steps, np.float64)
    y = np.asarray(success, np.float64)
    if len(x) == 1:
        return float(y[0])
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0 / (x[-1] - x[0]))


def auc_estimate(curves: Sequence[np.ndarray], tasks: Sequence[np.ndarray], steps: Sequence[float], **kw) -> Estimate:
    """Area under the learning curve with its interval; ``curves[i]``: (K, E) 0/1 outcomes of seed i at
    the K checkpoints ``steps`` (the same episodes at every checkpoint)."""

    def stat(per_seed: list[np.ndarray]) -> float:
        return float(np.mean([auc(steps, c.mean(axis=1)) for c in per_seed]))

    return bootstrap(curves, tasks, stat, **kw)


def separates(a: Estimate | tuple[float, float], b: Estimate | tuple[float, float]) -> bool:
    """True when the two intervals do not overlap (a conservative test at about the 1% level for
    95% intervals); the report says "beats" / "loses to" only then."""
    alo, ahi = (a.lo, a.hi) if isinstance(a, Estimate) else a
    blo, bhi = (b.lo, b.hi) if isinstance(b, Estimate) else b
    return alo > bhi or blo > ahi
