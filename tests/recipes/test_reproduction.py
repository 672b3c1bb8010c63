"""The reproduction check (recipes/studies/reproduction.py): a re-run's artifacts set against the
published ones run by run — success, AUC, final-episode outcome agreement, loss — a re-run of other
settings refused with the field named, the summary rendered by the results' study renderer."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from recipes.compare.stats import auc
from recipes.compare.study_summaries import render_study
from recipes.studies import reproduction

PUBLISHED = Path(__file__).resolve().parents[2] / "docs/results/compare/reach2d/frozen"


def _trees(tmp_path: Path, change=None) -> tuple[Path, Path, dict, dict]:
    """A published tree with reach2d/frozen/ebt/seed1.json and a compare OUT whose final run of ebt seed 1
    is that artifact changed by ``change(artifact)``; plus a finished re-run of flow with no published one."""
    pub = json.loads((PUBLISHED / "ebt/seed1.json").read_text())
    published = tmp_path / "published"
    (published / "reach2d/frozen/ebt").mkdir(parents=True)
    (published / "reach2d/frozen/ebt/seed1.json").write_text(json.dumps(pub))
    rerun = copy.deepcopy(pub)
    if change:
        change(rerun)
    out = tmp_path / "compare"
    run = out / "reach2d/frozen/final/ebt/lr0.001_ema0.99/seed1"
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps(rerun))
    (run / "done.json").write_text("{}")
    flow = out / "reach2d/frozen/final/flow/lr0.0003_ema0.99/seed1"
    flow.mkdir(parents=True)
    (flow / "result.json").write_text(json.dumps(json.loads((PUBLISHED / "flow/seed1.json").read_text())))
    (flow / "done.json").write_text("{}")
    return published, out, pub, rerun


def _flip_two_final_outcomes(a: dict) -> None:
    """Row 0's last checkpoint: two episodes of its first task change outcome; success follows."""
    last = a["rows"][0]["curve"][-1]
    task = a["tasks"][0]
    for i in (0, 1):
        last["outcomes"][task][i] = 1 - last["outcomes"][task][i]
    last["success"][task] = sum(last["outcomes"][task]) / len(last["outcomes"][task])
    last["success"]["mean"] = sum(last["success"][t] for t in a["tasks"]) / len(a["tasks"])
    a["rows"][0]["curve"][0]["success"]["mean"] = 0.1
    a["final_loss"] *= 1.01
    a["git_commit"] = "f" * 40


def test_reproduction_measures_the_differences_of_each_run(tmp_path):
    published, out, pub, rerun = _trees(tmp_path, _flip_two_final_outcomes)
    assert reproduction.main(["--compare", str(out), "--suite", "reach2d", "--protocol", "frozen",
                              "--published", str(published), "--out", str(tmp_path / "study")]) == 0
    data = json.loads((tmp_path / "study/reproduction.json").read_text())
    assert data["schema"] == reproduction.SCHEMA and len(data["unpaired"]) == 1 and "flow" in data["unpaired"][0]
    (pair,) = data["pairs"]
    assert pair["commit_rerun"] == "f" * 40 and pair["commit_published"] == pub["git_commit"]
    assert [r["label"] for r in pair["rows"]] == [r["label"] for r in pub["rows"]]
    row = pair["rows"][0]
    n = sum(len(v) for v in pub["rows"][0]["curve"][-1]["outcomes"].values())
    assert row["final_episodes"] == n and row["outcome_agreement"] == pytest.approx((n - 2) / n)
    steps = [c["step"] for c in pub["rows"][0]["curve"]]
    new = [c["success"]["mean"] for c in rerun["rows"][0]["curve"]]
    assert row["auc_rerun"] == pytest.approx(auc(steps, new)) and row["success_rerun"][0] == 0.1
    (summary,) = data["summary"]
    assert summary["head"] == "ebt" and summary["row"] == pub["rows"][0]["label"] and summary["seeds"] == [1]
    assert summary["max_abs_final_diff"] == pytest.approx(abs(row["final_rerun"] - row["final_published"]))
    assert summary["max_abs_final_diff"] > 0 and summary["max_final_loss_rel_diff"] == pytest.approx(0.01)
    # the other rows are unchanged: full agreement, no difference
    assert all(r["outcome_agreement"] == 1.0 and r["final_rerun"] == r["final_published"] for r in pair["rows"][1:])
    lines = render_study(tmp_path / "study/reproduction.json", "reproduction.md", ("reach2d", "frozen"))
    ebt_line = next(line for line in lines if line.startswith("| ebt |"))
    assert f"{summary['max_abs_final_diff']:.2f}" in ebt_line and f"{(n - 2) / n:.2f}" in ebt_line
    assert "0.10 ->" not in (tmp_path / "study/reproduction.md").read_text().split("Per run")[0]
    # CPU time: the paired re-runs' own (the unpaired flow re-run is not counted)
    assert data["meta"]["cpu_seconds"] == pytest.approx(rerun["cpu_seconds"]) and data["meta"]["cpu_unrecorded_parts"] == 0
    assert f"re-runs trained at git {'f' * 10}, compared at git " in lines[0]  # the re-run's commit, not the analysis'
    assert lines[-1] == f"* CPU time: {rerun['cpu_seconds'] / 3600:.2f} CPU-h (the re-runs' training + evaluation)."


def test_a_rerun_of_other_settings_is_refused_with_the_field(tmp_path):
    published, out, _, _ = _trees(tmp_path, lambda a: a.update(eval_seeds=[12345]))
    with pytest.raises(SystemExit, match=r"field 'eval_seeds' differs \(\[10000\] published, \[12345\] re-run\)"):
        reproduction.main(["--compare", str(out), "--suite", "reach2d", "--protocol", "frozen",
                           "--published", str(published), "--out", str(tmp_path / "study")])
    published, out, _, _ = _trees(tmp_path / "b", lambda a: a["hparams"].update(lr=0.5))
    with pytest.raises(SystemExit, match=r"field 'hparams.lr' differs"):
        reproduction.main(["--compare", str(out), "--suite", "reach2d", "--protocol", "frozen",
                           "--published", str(published), "--out", str(tmp_path / "study")])
    assert not (tmp_path / "study").exists()
    with pytest.raises(SystemExit, match="no finished final runs"):
        reproduction.main(["--compare", str(tmp_path / "none"), "--suite", "reach2d", "--protocol", "frozen",
                           "--out", str(tmp_path / "study")])


def test_publish_puts_the_study_beside_the_published_grid(tmp_path):
    published, out, _, _ = _trees(tmp_path)
    assert reproduction.main(["--compare", str(out), "--suite", "reach2d", "--protocol", "frozen", "--heads", "ebt",
                              "--published", str(published), "--out", str(tmp_path / "study"), "--publish"]) == 0
    dest = published / "reach2d/frozen/studies"
    assert sorted(p.name for p in dest.iterdir()) == ["reproduction.json", "reproduction.md", "reproduction.png"]
    data = json.loads((dest / "reproduction.json").read_text())
    assert data["unpaired"] == [] and data["summary"][0]["max_abs_final_diff"] == 0.0
    assert data["summary"][0]["min_outcome_agreement"] == 1.0
