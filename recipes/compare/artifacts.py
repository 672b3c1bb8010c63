"""The per-run artifact (``result.json``, published as ``docs/results/compare/<suite>/<protocol>/<head>/
seed<N>.json``): a small JSON from which every comparison table, plot and README sentence is
generated (``python -m recipes.results``); nothing is typed by hand.

Required fields (:func:`validate_artifact`)::

    schema "vla_ebt.compare/1", suite, head, protocol, stage, train_seed, eval_seeds, episodes_per_task,
    tasks, git_commit, config (the resolved TrainConfig), hparams {lr, ema_decay, ...}, steps,
    train_seconds, curve [{step, train_seconds, success {<task>: x, mean: y}}]   (the primary row),
    rows [{label, preset, overrides, warm_start, curve [... + outcomes {<task>: [0/1, ...]}], cost}],
        (a suite that declares ``episode_attrs`` adds ``episode_info {<task>: {<attr>: [value, ...]}}``
        to each row's curve entries, in the order of ``outcomes``)
    cost {nfe, eval_cost, forward_equiv, head_ms, policy_ms, train_samples_per_s}, cpu_seconds
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Iterable

from .plan import SCHEMA

__all__ = ["validate_artifact", "load_artifacts", "git_commit", "publish", "merged_tuning", "REPO", "DEFAULT_RESULTS_DIR"]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_RESULTS_DIR = REPO / "docs" / "results" / "compare"

_NUM = (int, float)
_TOP: dict[str, Any] = {
    "schema": str, "suite": str, "head": str, "protocol": str, "stage": str, "train_seed": int, "eval_seeds": list,
    "episodes_per_task": int, "tasks": list, "git_commit": str, "config": dict, "hparams": dict, "steps": int,
    "train_seconds": _NUM, "curve": list, "rows": list, "cost": dict, "cpu_seconds": _NUM,
}
_COST = ("nfe", "eval_cost", "forward_equiv", "head_ms", "policy_ms", "train_samples_per_s")


def _num_or_none(x: Any) -> bool:
    return x is None or (isinstance(x, _NUM) and not isinstance(x, bool))


def _check_curve(curve: Any, tasks: list[str], where: str, outcomes: bool) -> list[str]:
    bad = []
    if not isinstance(curve, list) or not curve:
        return [f"{where}: a non-empty list expected"]
    last = 0
    for i, c in enumerate(curve):
        w = f"{where}[{i}]"
        if not isinstance(c, dict):
            bad.append(f"{w}: an object expected")
            continue
        if not isinstance(c.get("step"), int) or c["step"] <= last:
            bad.append(f"{w}.step: increasing positive int expected, got {c.get('step')!r}")
        else:
            last = c["step"]
        if not _num_or_none(c.get("train_seconds")):
            bad.append(f"{w}.train_seconds: a number expected")
        s = c.get("success")
        if not isinstance(s, dict) or set(s) != {*tasks, "mean"} or not all(_num_or_none(v) for v in s.values()):
            bad.append(f"{w}.success: {{task: rate, mean: rate}} over tasks {tasks} expected, got {s!r}")
        if outcomes:
            o = c.get("outcomes")
            if not isinstance(o, dict) or set(o) != set(tasks) or not all(
                    isinstance(v, list) and all(x in (0, 1) for x in v) for v in o.values()):
                bad.append(f"{w}.outcomes: {{task: [0/1 per episode]}} expected")
    return bad


def validate_artifact(d: Any) -> dict[str, Any]:
    """``d`` if it is a complete artifact, else ValueError listing every problem."""
    if not isinstance(d, dict):
        raise ValueError(f"artifact: an object expected, got {type(d).__name__}")
    bad = [f"{k}: missing" for k in _TOP if k not in d]
    for k, t in _TOP.items():
        v = d.get(k)
        if k in d and not ((isinstance(v, t) and not isinstance(v, bool)) or (t is _NUM and v is None)):
            bad.append(f"{k}: {getattr(t, '__name__', 'number')} expected, got {type(v).__name__}")
    if not bad:
        if d["schema"] != SCHEMA:
            bad.append(f"schema: {SCHEMA!r} expected, got {d['schema']!r}")
        tasks = list(d["tasks"])
        if not tasks:
            bad.append("tasks: empty")
        for k in ("lr", "ema_decay"):
            if not _num_or_none(d["hparams"].get(k)):
                bad.append(f"hparams.{k}: a number expected")
        bad += [f"cost.{k}: missing or not a number" for k in _COST if not _num_or_none(d["cost"].get(k, "x"))]
        bad += _check_curve(d["curve"], tasks, "curve", outcomes=False)
        if not d["rows"]:
            bad.append("rows: empty")
        for i, r in enumerate(d["rows"]):
            if not isinstance(r, dict) or not isinstance(r.get("label"), str) or not isinstance(r.get("warm_start"), bool):
                bad.append(f"rows[{i}]: label (str) and warm_start (bool) expected")
                continue
            bad += _check_curve(r.get("curve"), tasks, f"rows[{i}].curve", outcomes=True)
            if not isinstance(r.get("cost"), dict):
                bad.append(f"rows[{i}].cost: an object expected")
    if bad:
        raise ValueError("invalid comparison artifact:\n  " + "\n  ".join(bad))
    return d


def load_artifacts(root: str | Path) -> list[dict[str, Any]]:
    """Every ``seed*.json`` artifact under ``root`` (validated), sorted by suite, protocol, head, seed."""
    out = []
    for p in sorted(Path(root).rglob("seed*.json")):
        try:
            out.append(validate_artifact(json.loads(p.read_text())))
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from None
    return sorted(out, key=lambda a: (a["suite"], a["protocol"], a["head"], a["train_seed"]))


def git_commit(repo: Path = REPO) -> str:
    """``git rev-parse HEAD`` (+ ``-dirty`` when tracked files differ from it); "unknown" outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def publish(results: Iterable[dict[str, Any]], tuning_files: Iterable[Path], dest: str | Path = DEFAULT_RESULTS_DIR) -> list[Path]:
    """Copy final-stage artifacts to ``dest/<suite>/<protocol>/<head>/seed<N>.json`` and each
    ``tuning.json`` to ``dest/<suite>/<protocol>/tuning.json`` (merged with a published one, see
    :func:`merged_tuning`); returns the written paths. Every tuning file is checked before anything is
    written, so a refused merge (ValueError) leaves ``dest`` as it was."""
    from vla_ebt.config_io import atomic_write_json

    dest = Path(dest)
    results = [validate_artifact(a) for a in results]
    tunings = []
    for t in tuning_files:
        info = json.loads(Path(t).read_text())
        p = dest / info["suite"] / info["protocol"] / "tuning.json"
        tunings.append((p, merged_tuning(p, info)))
    written = []
    for a in results:
        if a["stage"] != "final":
            continue
        p = dest / a["suite"] / a["protocol"] / a["head"] / f"seed{a['train_seed']}.json"
        atomic_write_json(p, a)
        written.append(p)
    for p, info in tunings:
        atomic_write_json(p, info)
        written.append(p)
    return written


def merged_tuning(published: Path, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` with the heads of an already published ``tuning.json`` it does not cover, when both
    were made under the same settings (every field but ``heads``): publishing a run of some heads keeps
    the others' tuning tables. Under other settings ``new`` replaces the file whole (printed), unless a
    head it drops still has published artifacts beside it (``<head>/seed*.json``): ValueError naming the
    file, the differing fields and those heads."""
    if not published.exists():
        return new
    try:
        old = json.loads(published.read_text())
    except ValueError as e:
        raise ValueError(f"{published}: not a readable tuning.json ({e})") from None
    differ = sorted(k for k in set(old) | set(new) if k != "heads" and old.get(k) != new.get(k))
    if not differ:
        return {**new, "heads": {**old.get("heads", {}), **new["heads"]}}
    dropped = sorted(set(old.get("heads", {})) - set(new["heads"]))
    orphaned = [h for h in dropped if any((published.parent / h).glob("seed*.json"))]
    if orphaned:
        raise ValueError(f"{published}: this run's tuning differs in {differ} and would drop the tuning of "
                         f"head(s) {orphaned}, whose artifacts are published beside it; re-run them under the "
                         f"same settings or remove their folders first")
    print(f"[publish] {published}: tuning settings differ in {differ}; replaced whole (dropped heads {dropped}, "
          f"none with published artifacts)")
    return new
