"""Reproduction check: the final runs of a comparison grid trained again from its published recipe,
tuning and seeds, set against the published artifacts run by run.

    # re-train the published cells (same recipe, tuning, seeds, budget and evaluation)
    python -m recipes.compare --suite reach2d --heads ebt flow diffusion regression --protocols frozen \\
        --tuning-from docs/results/compare/reach2d/frozen/tuning.json --seeds 0 1 2 --steps 3000 ... --out OUT
    python -m recipes.studies.reproduction --compare OUT --suite reach2d --protocol frozen --out DIR [--publish]

Every finished final run ``OUT/<suite>/<protocol>/final/<head>/<hparams>/seed<N>/result.json`` is paired
with ``<published>/<suite>/<protocol>/<head>/seed<N>.json``. A pair must agree on hyperparameters, steps,
tasks, evaluation seeds and episodes (else ValueError naming both files and the field). Per pair and
evaluation row present in both: success at every checkpoint, final success, learning-curve AUC
(:func:`recipes.compare.stats.auc`), the share of final-checkpoint episodes (same env seeds) whose
outcome is the same, and the final training loss with its relative difference. Per head: the largest
differences over its seeds. Writes ``reproduction.json`` / ``.md`` / ``.png``; ``--publish`` copies
them to ``docs/results/compare/<suite>/<protocol>/studies/`` and regenerates the results.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, Sequence

from recipes.compare.artifacts import DEFAULT_RESULTS_DIR, REPO, git_commit, validate_artifact
from recipes.compare.stats import auc

from .common import pyplot, save_figure
from .protocol_policies import publish_study, write_study_outputs

__all__ = ["SCHEMA", "MATCHED_FIELDS", "pair_runs", "compare_pair", "analyse", "render_markdown", "plot", "main"]

SCHEMA = "vla_ebt.reproduction/1"
#: fields a re-run must share with its published artifact to count as the same run
MATCHED_FIELDS = ("suite", "protocol", "head", "train_seed", "steps", "tasks", "eval_seeds", "episodes_per_task",
                  "curve_episodes_per_task")


def _load(path: Path) -> dict[str, Any]:
    try:
        return validate_artifact(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"{path}: not a comparison artifact ({e})") from None


def pair_runs(compare_out: str | Path, suite: str, protocol: str, published: str | Path,
              heads: Sequence[str] | None = None) -> tuple[list[tuple[Path, Path]], list[str]]:
    """([(re-run result.json, published seed<N>.json)], [re-runs without a published artifact]) of the
    finished final runs. FileNotFoundError when there is no finished final run."""
    root = Path(compare_out) / suite / protocol / "final"
    runs = sorted(p for p in root.glob("*/*/seed*/result.json") if (p.parent / "done.json").is_file())
    runs = [p for p in runs if not heads or p.parents[2].name in heads]
    if not runs:
        raise FileNotFoundError(f"{root}: no finished final runs" + (f" of heads {list(heads)}" if heads else ""))
    pairs, unpaired = [], []
    for p in runs:
        head, seed = p.parents[2].name, re.fullmatch(r"seed(\d+)", p.parent.name)
        pub = Path(published) / suite / protocol / head / f"seed{int(seed.group(1)) if seed else 0}.json"
        (pairs.append((p, pub)) if pub.is_file() else unpaired.append(str(p)))
    return pairs, unpaired


def _check_match(rerun: dict[str, Any], pub: dict[str, Any], where: str) -> None:
    for key in MATCHED_FIELDS:
        if rerun.get(key) != pub.get(key):
            raise ValueError(f"{where}: field {key!r} differs ({pub.get(key)!r} published, {rerun.get(key)!r} re-run): "
                             "not a re-run of the published artifact")
    for key in ("lr", "ema_decay"):
        if rerun["hparams"].get(key) != pub["hparams"].get(key):
            raise ValueError(f"{where}: field 'hparams.{key}' differs ({pub['hparams'].get(key)!r} published, "
                             f"{rerun['hparams'].get(key)!r} re-run): not a re-run of the published artifact")


def _agreement(a: dict[str, list[int]] | None, b: dict[str, list[int]] | None) -> tuple[int, float | None]:
    """(episodes compared, share with the same outcome) over the tasks and episodes both recorded."""
    if not a or not b:
        return 0, None
    same = total = 0
    for task in sorted(set(a) & set(b)):
        for x, y in zip(a[task], b[task]):
            same, total = same + int(x == y), total + 1
    return total, (same / total if total else None)


def compare_pair(rerun: dict[str, Any], pub: dict[str, Any], where: str = "") -> dict[str, Any]:
    """One (head, training seed): per evaluation row in both artifacts, published vs re-run success per
    checkpoint, final success, AUC and final-episode outcome agreement; final losses. ValueError when
    the two are not the same run (:data:`MATCHED_FIELDS`, lr / EMA decay)."""
    _check_match(rerun, pub, where)
    pub_rows = {r["label"]: r for r in pub.get("rows") or []}
    rows = []
    for r in rerun.get("rows") or []:
        p = pub_rows.get(r["label"])
        if p is None:
            continue
        steps = [c["step"] for c in r["curve"]]
        if steps != [c["step"] for c in p["curve"]]:
            raise ValueError(f"{where}: row {r['label']!r}: checkpoint steps differ")
        s_pub = [c["success"]["mean"] for c in p["curve"]]
        s_new = [c["success"]["mean"] for c in r["curve"]]
        n, agree = _agreement(p["curve"][-1].get("outcomes"), r["curve"][-1].get("outcomes"))
        rows.append({"label": r["label"], "warm_start": bool(r.get("warm_start")), "steps": steps,
                     "success_published": s_pub, "success_rerun": s_new,
                     "final_published": s_pub[-1], "final_rerun": s_new[-1],
                     "auc_published": auc(steps, s_pub), "auc_rerun": auc(steps, s_new),
                     "final_episodes": n, "outcome_agreement": agree})
    lp, ln = pub.get("final_loss"), rerun.get("final_loss")
    return {"head": rerun["head"], "train_seed": rerun["train_seed"], "commit_published": pub.get("git_commit"),
            "commit_rerun": rerun.get("git_commit"), "final_loss_published": lp, "final_loss_rerun": ln,
            "final_loss_rel_diff": (abs(ln - lp) / abs(lp)) if lp and ln is not None else None, "rows": rows}


def _primary(pair: dict[str, Any]) -> dict[str, Any] | None:
    """A pair's primary row: its first row without warm start (None if it has none)."""
    return next((r for r in pair["rows"] if not r["warm_start"]), None)


def analyse(pairs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per head (its primary row: the first row without warm start): the largest |final success
    difference|, |AUC difference| and final-loss relative difference, the lowest outcome agreement."""
    by_head: dict[str, list[dict[str, Any]]] = {}
    for p in pairs:
        by_head.setdefault(p["head"], []).append(p)
    out = []
    for head, ps in by_head.items():
        prim = [r for r in map(_primary, ps) if r is not None]
        agree = [r["outcome_agreement"] for r in prim if r["outcome_agreement"] is not None]
        losses = [p["final_loss_rel_diff"] for p in ps if p["final_loss_rel_diff"] is not None]
        out.append({"head": head, "row": prim[0]["label"] if prim else None,
                    "seeds": sorted(p["train_seed"] for p in ps),
                    "max_abs_final_diff": max((abs(r["final_rerun"] - r["final_published"]) for r in prim), default=None),
                    "max_abs_auc_diff": max((abs(r["auc_rerun"] - r["auc_published"]) for r in prim), default=None),
                    "min_outcome_agreement": min(agree) if agree else None,
                    "max_final_loss_rel_diff": max(losses) if losses else None})
    return out


def _f(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def render_markdown(result: dict[str, Any]) -> str:
    m = result["meta"]
    lines = [f"# Reproduction: {m['suite']}, {m['protocol']}", "",
             f"Generated by `python -m recipes.studies.reproduction` at git {str(m['git_commit'])[:10]}; re-runs "
             f"trained at git {', '.join(sorted({str(p['commit_rerun'])[:10] for p in result['pairs']})) or '-'}, "
             f"published artifacts in `{m['published']}`. Each re-run trained and evaluated the published run's "
             "recipe, hyperparameters, training seed and evaluation seeds again.", "",
             "| head | row | seeds | largest final-success difference | largest AUC difference | lowest share of final "
             "episodes with the same outcome | largest final-loss relative difference |", "|---|---|---|---|---|---|---|"]
    for s in result["summary"]:
        lines.append(f"| {s['head']} | {s['row'] or '-'} | {', '.join(map(str, s['seeds']))} | "
                     f"{_f(s['max_abs_final_diff'])} | {_f(s['max_abs_auc_diff'])} | {_f(s['min_outcome_agreement'])} | "
                     f"{_f(s['max_final_loss_rel_diff'], 5)} |")
    lines += ["", "Per run and row (success at each checkpoint, published -> re-run):", "",
              "| head | seed | row | success per checkpoint | final | AUC | same outcome (episodes) |",
              "|---|---|---|---|---|---|---|"]
    for p in result["pairs"]:
        for r in p["rows"]:
            curve = "; ".join(f"{a:.2f} -> {b:.2f}" for a, b in zip(r["success_published"], r["success_rerun"]))
            lines.append(f"| {p['head']} | {p['train_seed']} | {r['label']} | {curve} | {r['final_published']:.2f} -> "
                         f"{r['final_rerun']:.2f} | {r['auc_published']:.2f} -> {r['auc_rerun']:.2f} | "
                         f"{_f(r['outcome_agreement'])} ({r['final_episodes']}) |")
    if result["unpaired"]:
        lines += ["", f"Re-runs without a published artifact (not compared): {len(result['unpaired'])}."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    """Published vs re-run final success and AUC, one point per (head, seed) primary row."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, key, title in ((axes[0], "final", "final success"), (axes[1], "auc", "learning-curve AUC")):
        for head in dict.fromkeys(p["head"] for p in result["pairs"]):
            pts = [r for r in (_primary(p) for p in result["pairs"] if p["head"] == head) if r is not None]
            ax.scatter([r[f"{key}_published"] for r in pts], [r[f"{key}_rerun"] for r in pts], label=head)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="published", ylabel="re-run", title=title)
    axes[0].legend(fontsize=8)
    return save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare", required=True, help="the recipes.compare --out folder of the re-run")
    p.add_argument("--suite", required=True)
    p.add_argument("--protocol", required=True)
    p.add_argument("--heads", nargs="*", default=None, help="only these heads (default: every finished one)")
    p.add_argument("--published", default=str(DEFAULT_RESULTS_DIR), help="the published results tree")
    p.add_argument("--out", required=True)
    p.add_argument("--publish", action="store_true",
                   help="copy reproduction.json/.md/.png to <published>/<suite>/<protocol>/studies/ and regenerate")
    return p


def _shown(path: str | Path) -> str:
    """``path`` relative to the repository when inside it (published files name no machine's folders)."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        paths, unpaired = pair_runs(a.compare, a.suite, a.protocol, a.published, a.heads)
        reruns = [_load(r) for r, _ in paths]
        pairs = [compare_pair(rerun, _load(p), where=f"{r} vs {p}") for rerun, (r, p) in zip(reruns, paths)]
        cpu = [rerun.get("cpu_seconds") for rerun in reruns]
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if not pairs:
        raise SystemExit(f"error: no re-run under {a.compare} has a published artifact under {a.published}")
    result = {"schema": SCHEMA,
              "meta": {"suite": a.suite, "protocol": a.protocol, "git_commit": git_commit(),
                       "published": _shown(a.published),
                       "cpu_scope": "the re-runs' training + evaluation",  # their artifacts' cpu_seconds
                       "cpu_seconds": float(sum(c for c in cpu if c is not None)),
                       "cpu_unrecorded_parts": sum(c is None for c in cpu)},
              "summary": analyse(pairs), "pairs": pairs, "unpaired": unpaired}
    write_study_outputs(a.out, "reproduction", result, render_markdown, plot)
    if a.publish:
        publish_study("reproduction", a.out, Path(a.published) / a.suite / a.protocol / "studies",
                      regenerate=Path(a.published).resolve() == Path(DEFAULT_RESULTS_DIR).resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
