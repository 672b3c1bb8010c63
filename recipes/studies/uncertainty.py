"""Study 3, energy as uncertainty: do per-chunk signals of an EBT policy predict episode failure
(AUROC **within task**), and do they rise under distribution shift?

    python -m recipes.studies.uncertainty --policy runs/default/policy --suite reach2d --episodes 40 \\
        --shifts heldout noise:sigma=25 shift:dy=6,dx=6 displace:at=6,scale=0.3 \\
        --out runs/studies/uncertainty

Signals per chunk (see :class:`recipes.studies.common.SignalRecorder`): final energy, energy drop over
the minimization steps, final gradient norm, spread (std) of the final energies of N extra
best-of-N chains, ``small_drop`` (minus the energy drop: a minimization that barely lowers the
energy), and the final energy relative to the per-task median of the in-distribution
episodes. An episode's score is the mean over its chunks (and, separately, its first chunk only:
a signal available before the outcome).

Failure AUROC is computed per task (positives = failed episodes) and averaged over tasks that have
both outcomes; the pooled AUROC over all tasks is reported beside it because it mostly measures which
task is harder. Shift rows give success, mean signals, and the AUROC of telling shifted from
in-distribution episodes apart by each signal (0.5 = no signal).

Writes ``uncertainty.{json,md,png}`` (failure AUROC table, shift table, and per-signal histograms).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from eval.sim.perturb import PerturbedSuite, make_perturbation

from .common import ChunkSignals, auroc, load_policy, predict_overrides, write_study, pyplot, save_figure
from .episodes import StudyEpisodes, run_study_episodes

__all__ = ["SIGNALS", "episode_scores", "failure_auroc", "run_uncertainty", "main"]

SIGNALS = ("energy", "energy_drop", "small_drop", "grad_norm", "candidate_spread", "energy_rel", "first_energy")


def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if np.isfinite(x)]
    return float(np.mean(xs)) if xs else float("nan")


def episode_scores(res: StudyEpisodes, task_baseline: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Per-episode score of each signal (mean over the episode's chunks); ``energy_rel`` subtracts the
    task's baseline energy (default: the median episode energy of this run's task)."""
    sig: list[ChunkSignals] = res.signals
    tasks = [e.task for e in res.episodes]
    out = {
        "energy": np.array([_mean(s.energy) for s in sig]),
        "energy_drop": np.array([_mean(s.energy_drop) for s in sig]),
        "grad_norm": np.array([_mean(s.grad_norm) for s in sig]),
        "candidate_spread": np.array([_mean(s.candidate_spread) for s in sig]),
        "first_energy": np.array([s.energy[0] if s.energy else np.nan for s in sig]),
    }
    # the drop read the other way (a flat landscape = failure): that direction was chosen after the
    # first policy studied (AUROC 0.21 as "energy_drop") and then held on four more (see README)
    out["small_drop"] = -out["energy_drop"]
    if task_baseline is None:
        task_baseline = {t: float(np.nanmedian(out["energy"][[i for i, x in enumerate(tasks) if x == t]]))
                         for t in set(tasks)}
    out["energy_rel"] = np.array([out["energy"][i] - task_baseline.get(t, np.nan) for i, t in enumerate(tasks)])
    return out


def failure_auroc(res: StudyEpisodes, scores: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """signal -> {"within_task": mean per-task AUROC, "pooled": AUROC over all episodes, "tasks_used": n,
    "<task>": that task's AUROC}. Positive class = failed episode; higher score = predicted failure."""
    fail = np.array([not e.success for e in res.episodes])
    tasks = np.array([e.task for e in res.episodes])
    out: dict[str, dict[str, float]] = {}
    for name, s in scores.items():
        per = {}
        for t in sorted(set(tasks.tolist())):
            m = tasks == t
            per[t] = auroc(s[m], fail[m])
        valid = [v for v in per.values() if np.isfinite(v)]
        out[name] = {"within_task": float(np.mean(valid)) if valid else float("nan"),
                     "pooled": auroc(s, fail), "tasks_used": float(len(valid)), **per}
    return out


def run_uncertainty(policy: Any, suite: Any, tasks: Sequence[str], episodes_per_task: int, seed: int,
                    shifts: Sequence[str] = ("heldout",), spread_candidates: int = 8) -> dict[str, Any]:
    """Failure AUROC per signal (in-distribution) and a row per shift. See the module docstring."""
    if not policy.head.capabilities.reports_energy:
        raise ValueError(f"uncertainty: needs a head that reports energy (EBT), got head {policy.cfg.head!r}")
    if "final_eval" in policy.head.capabilities.knobs:  # the signals are the returned chunk's own energy
        with predict_overrides(policy, final_eval=True):
            return _run_uncertainty(policy, suite, tasks, episodes_per_task, seed, shifts, spread_candidates)
    return _run_uncertainty(policy, suite, tasks, episodes_per_task, seed, shifts, spread_candidates)


def _run_uncertainty(policy: Any, suite: Any, tasks: Sequence[str], episodes_per_task: int, seed: int,
                     shifts: Sequence[str], spread_candidates: int) -> dict[str, Any]:
    base = run_study_episodes(policy, suite, tasks, episodes_per_task, seed, spread_candidates=spread_candidates)
    base_scores = episode_scores(base)
    tasks_arr = [e.task for e in base.episodes]
    baseline = {t: float(np.nanmedian(base_scores["energy"][[i for i, x in enumerate(tasks_arr) if x == t]]))
                for t in set(tasks_arr)}
    fail_rows = []
    for name, d in failure_auroc(base, base_scores).items():
        fail_rows.append({"signal": name, **d})
    shift_rows = [{"condition": "in-distribution", "success": base.report.success_rate,
                   **{f"mean_{k}": _mean(v.tolist()) for k, v in base_scores.items()},
                   **{f"ood_auroc_{k}": 0.5 for k in base_scores}}]
    raw = {"in-distribution": {k: v.tolist() for k, v in base_scores.items()}}
    for spec in shifts:
        if spec == "heldout":
            res = run_study_episodes(policy, suite, tasks, episodes_per_task, seed, split="heldout",
                                     spread_candidates=spread_candidates)
        else:
            ps = PerturbedSuite(suite, [make_perturbation(spec)], tag=spec)
            res = run_study_episodes(policy, ps, tasks, episodes_per_task, seed, spread_candidates=spread_candidates)
        sc = episode_scores(res, baseline)
        row: dict[str, Any] = {"condition": spec, "success": res.report.success_rate}
        for k, v in sc.items():
            row[f"mean_{k}"] = _mean(v.tolist())
            both = np.concatenate([base_scores[k], v])
            lab = np.concatenate([np.zeros(len(base_scores[k]), bool), np.ones(len(v), bool)])
            row[f"ood_auroc_{k}"] = auroc(both, lab)
        shift_rows.append(row)
        raw[spec] = {k: v.tolist() for k, v in sc.items()}
    return {"failure": fail_rows, "shift": shift_rows, "raw": raw,
            "in_dist_success": base.report.success_rate, "episodes": len(base.episodes)}


def plot(result: dict[str, Any], path: Path) -> Path:
    plt = pyplot()

    raw = result["raw"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, sig in zip(axes, ("energy", "energy_drop", "grad_norm")):
        for cond, scores in raw.items():
            v = np.asarray(scores[sig], float)
            v = v[np.isfinite(v)]
            if len(v):
                ax.hist(v, bins=20, alpha=0.45, label=cond, density=True)
        ax.set_title(f"episode mean {sig}")
    axes[0].legend(fontsize=7)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    from eval.sim.suites import make_suite

    p = argparse.ArgumentParser(prog="python -m recipes.studies.uncertainty", description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", required=True)
    p.add_argument("--suite", default="reach2d")
    p.add_argument("--tasks", nargs="*", default=None)
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--seed", type=int, default=30_000)
    p.add_argument("--shifts", nargs="*", default=["heldout", "noise:sigma=25", "shift:dy=6,dx=6", "displace:at=6,scale=0.3"])
    p.add_argument("--spread-candidates", type=int, default=8)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    policy = load_policy(a.policy)
    suite = make_suite(a.suite)
    tasks = a.tasks or suite.task_names()
    res = run_uncertainty(policy, suite, tasks, a.episodes, a.seed, a.shifts, a.spread_candidates)
    out = Path(a.out)
    meta = {"policy": a.policy, "suite": a.suite, "episodes_per_task": a.episodes, "seed": a.seed,
            "in_dist_success": res["in_dist_success"]}
    write_study(out, "uncertainty_failure", res["failure"], ["signal", "within_task", "pooled", "tasks_used", *tasks],
                meta=meta, title="Failure prediction: AUROC of episode-mean signals (positive = failed episode)")
    write_study(out, "uncertainty_shift", res["shift"],
                ["condition", "success", "mean_energy", "mean_grad_norm", "ood_auroc_energy", "ood_auroc_energy_drop",
                 "ood_auroc_grad_norm", "ood_auroc_candidate_spread"],
                meta=meta, title="Signals under shift (ood_auroc: shifted vs in-distribution episodes)")
    from vla_ebt.config_io import save_json

    save_json(out / "uncertainty_raw.json", res["raw"])
    plot(res, out / "uncertainty.png")
    return res


if __name__ == "__main__":
    main()
