"""Publishing the protocol studies beside their comparison (``--publish``,
recipes/studies/protocol_policies.py) and their generated summaries in the results
(recipes/compare/study_summaries.py, ``python -m recipes.results``): synthetic study json files in a
results folder -> the expected cells, ``--check`` on a stale section, malformed json naming its file
and field, the copy and the regeneration. The json here is written by hand so that every rendered
cell has a known value; that the studies' own output renders is tested where each study runs end to
end (test_protocol_studies, test_uncertainty_study, test_dynamic_compute_study)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from recipes import results
from recipes.compare import study_summaries as ss
from recipes.studies import protocol_policies as pp
from tests.compare_fixtures import FIXTURE_DIR

GROUP = ("reach2d", "frozen")


def _est(v, lo=None, hi=None, **extra):
    return {"value": v, "lo": lo, "hi": hi, **extra}


def _meta(**extra):
    return {"suite": "reach2d", "protocol": "frozen", "git_commit": "0123456789abcdef", "episodes_per_task": 5,
            "eval_seeds": [10000], **extra}


def _policies(*labels, seeds=2):
    return {label: {"head": label, "seeds": [{"train_seed": s} for s in range(seeds)]} for label in labels}


def realtime_json():
    def row(label, strategy, delay, s, jump):
        return {"label": label, "head": label, "strategy": strategy, "delay": delay, "success": s,
                "ci_low": s - 0.1, "ci_high": s + 0.05, "max_switch_jump": jump,
                "max_switch_jump_lo": None if jump is None else jump * 0.9,
                "max_switch_jump_hi": None if jump is None else jump * 1.1}

    rows = [row("ebt", "sync", 0, 0.8, 0.5)]
    for d, s in ((0, 0.8), (2, 0.7), (4, 0.6)):
        rows += [row("ebt", "naive_async", d, s, 0.40), row("ebt", "rtc", d, s - 0.05, 0.10)]
    rows += [row("flow", "naive_async", 4, 0.5, None)]
    return {"schema": "vla_ebt.realtime/2", "meta": _meta(delays=[0, 2, 4]), "policies": _policies("ebt", "flow"),
            "rows": rows, "skipped": []}


def recovery_json():
    def row(label, cond, s, rec=None):
        r = {"label": label, "head": label, "perturbation": cond, "success": s, "ci_low": s - 0.1, "ci_high": s + 0.1}
        if cond != "none":
            r.update(recovery=rec, recovery_lo=None if rec is None else rec - 0.2,
                     recovery_hi=None if rec is None else rec + 0.1)
        return r

    rows = [row("ebt", "none", 0.8), row("ebt", "burst:start=4,length=6", 0.6, 0.75),
            row("regression", "none", 0.0), row("regression", "burst:start=4,length=6", 0.0, None)]
    return {"schema": "vla_ebt.recovery/2", "meta": _meta(), "policies": _policies("ebt", "regression"), "rows": rows}


def uncertainty_json():
    def fail(label, sig, step, v, episodes=10, positives=4):
        return {"label": label, "signal": sig, "score": f"step {step}" if step is not None else "episode mean",
                "step": step, **_est(v, None if v is None else v - 0.1, None if v is None else v + 0.1),
                "episodes": episodes, "positives": positives}

    failure = [fail("ebt", "energy", 0, 0.71), fail("ebt", "energy", 8, 0.66), fail("ebt", "energy", None, 0.9),
               fail("flow", "sample_spread", 0, None, positives=0), fail("flow", "sample_spread", 8, None, episodes=0,
                                                                         positives=0)]
    shift = [{"label": "ebt", "signal": "energy", "shift": "noise:sigma=25", "step": 0, **_est(0.93, 0.88, 0.97),
              "episodes": 20, "positives": 10},
             {"label": "ebt", "signal": "energy", "shift": "displace:at=8", "step": 8, **_est(0.61, 0.5, 0.7),
              "episodes": 20, "positives": 10}]
    return {"schema": "vla_ebt.uncertainty/2", "meta": _meta(steps=[0, 8]), "policies": _policies("ebt", "flow"),
            "tables": {"failure": failure, "shift": shift, "success": [], "no_rows": {}}}


def dynamic_compute_json():
    def row(label, setting, kind, success, fe, ms, steps, over=None):
        return {"label": label, "setting": setting, "kind": kind, "success": success, "ci_low": success - 0.1,
                "ci_high": min(success + 0.05, 1.0), "forward_equiv": fe, "chunk_ms": ms, "steps_used": steps,
                "over_budget": over}
    rows = [row("ebt", "steps=1", "steps", 0.6, 2.0, 8.0, 1.0), row("ebt", "steps=4", "steps", 0.9, 8.0, 21.5, 4.0),
            row("ebt", "budget=10ms", "budget", 0.7, 4.0, 9.6, 1.5, 0.25),
            row("regression", "preset=regression", "reference", 0.8, 1.0, 3.0, None)]
    return {"schema": "vla_ebt.dynamic_compute/2", "meta": _meta(), "policies": _policies("ebt", "regression"),
            "rows": rows}


def _results_dir(tmp_path: Path, studies: dict | None = None) -> tuple[Path, Path]:
    """The fixture comparison (reach2d, frozen: ebt and regression) in a tmp folder with ``studies``
    ({name: json content}) published beside it, and a README with empty markers."""
    res = tmp_path / "compare"
    shutil.copytree(FIXTURE_DIR, res)
    (res / "README.md").unlink()
    for name, data in (studies or {}).items():
        d = res / GROUP[0] / GROUP[1] / ss.STUDIES_DIR
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{name}.json").write_text(json.dumps(data))
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{results.BEGIN}\n{results.END}\n")
    return res, readme


# ------------------------------------------------------------------------------------------ rendering
def test_summaries_render_the_expected_cells_under_their_group(tmp_path):
    res, readme = _results_dir(tmp_path, {"realtime": realtime_json(), "recovery": recovery_json(),
                                          "uncertainty": uncertainty_json()})
    argv = ["--dir", str(res), "--readme", str(readme), "--no-plots"]
    assert results.main(argv) == 0
    text = readme.read_text()
    # realtime: rows = strategy, columns = delays, success [CI]; the smoothest strategy at the largest delay
    assert "| ebt: strategy | d = 0 | d = 2 | d = 4 |" in text
    assert "| rtc | 0.75 [0.65, 0.80] | 0.65 [0.55, 0.70] | 0.55 [0.45, 0.60] |" in text
    assert "| sync (does not depend on d) | 0.80 [0.70, 0.85] | - | - |" in text
    assert "ebt: smallest max switch jump at d = 4: **rtc** 0.100 [0.090, 0.110]; next naive_async 0.400" in text
    assert "(separated)" in text
    assert "flow: at d = 4 no strategy switched chunks" in text
    assert "[realtime.md](compare/reach2d/frozen/studies/realtime.md)" in text  # the README's link
    # recovery: per head and perturbation, perturbed / clean [CI]
    assert "| head | clean success | burst:start=4,length=6 |" in text
    assert "| ebt | 0.80 [0.70, 0.90] | 0.75 [0.55, 0.85] |" in text
    assert "| regression | 0.00 [-0.10, 0.10] | n/a (no clean success) |" in text
    # uncertainty: first chunk and step k; undefined cells say why; shift at step 0 and at a later onset
    assert "| head | signal | first chunk | step 8 |" in text
    assert "| ebt | energy | 0.71 [0.61, 0.81] | 0.66 [0.56, 0.76] |" in text
    assert "| flow | sample_spread | n/a (no failures) | n/a (no episodes running) |" in text
    assert "| head | signal | noise:sigma=25 | displace:at=8 @ step 8 |" in text
    assert "| ebt | energy | 0.93 [0.88, 0.97] | 0.61 [0.50, 0.70] |" in text
    assert "0.90" not in text.split("Uncertainty")[1].split("Shift")[0]  # the confounded episode mean is left out
    # under its group (after the comparison's sentences) and in the group's results.md, links relative to it
    assert text.index("**reach2d, frozen backbone**") < text.index("Studies published beside")
    md = (res / "reach2d" / "frozen" / "results.md").read_text()
    assert "[uncertainty.md](studies/uncertainty.md)" in md and "| ebt | energy | 0.71 [0.61, 0.81] |" in md
    assert results.main([*argv[:4], "--check"]) == 0


def test_dynamic_compute_summary_has_one_row_per_head_and_setting(tmp_path):
    res, readme = _results_dir(tmp_path, {"dynamic_compute": dynamic_compute_json()})
    assert results.main(["--dir", str(res), "--readme", str(readme), "--no-plots"]) == 0
    text = readme.read_text()
    assert "| head | setting | success | forward equiv. / chunk | chunk ms | steps used | over budget |" in text
    assert "| ebt | steps=4 | 0.90 [0.80, 0.95] | 8.0 | 21.5 | 4.00 | - |" in text
    assert "| ebt | budget=10ms | 0.70 [0.60, 0.75] | 4.0 | 9.6 | 1.50 | 0.25 |" in text  # over budget: budget rows only
    assert "| regression | preset=regression | 0.80 [0.70, 0.85] | 1.0 | 3.0 | - | - |" in text
    bad = dynamic_compute_json()
    del bad["rows"][1]["forward_equiv"]
    res2, readme2 = _results_dir(tmp_path / "bad", {"dynamic_compute": bad})
    with pytest.raises(ValueError, match=r"dynamic_compute.json: field rows\[1\]\.forward_equiv: missing"):
        results.main(["--dir", str(res2), "--readme", str(readme2), "--no-plots"])


def test_check_fails_when_the_readme_block_is_stale(tmp_path, capsys):
    res, readme = _results_dir(tmp_path)
    argv = ["--dir", str(res), "--readme", str(readme)]
    assert results.main([*argv, "--no-plots"]) == 0
    before = readme.read_text()
    assert "Studies published" not in before and results.main([*argv, "--check"]) == 0
    # a study published after the last regeneration: README and results.md are stale
    d = res / "reach2d" / "frozen" / ss.STUDIES_DIR
    d.mkdir()
    (d / "recovery.json").write_text(json.dumps(recovery_json()))
    assert results.main([*argv, "--check"]) == 1
    err = capsys.readouterr().err
    assert "stale" in err and "results.md: differs" in err
    assert results.main([*argv, "--no-plots"]) == 0 and results.main([*argv, "--check"]) == 0
    # a hand edit of a generated cell
    readme.write_text(readme.read_text().replace("0.75 [0.55, 0.85]", "0.95 [0.55, 0.85]"))
    assert results.main([*argv, "--check"]) == 1


def test_no_studies_leave_the_section_unchanged(tmp_path):
    res, readme = _results_dir(tmp_path)
    body, files, _ = results.generate(res, "ebt")
    assert "Studies" not in body and all("Studies" not in md for md in files.values())
    assert body.rstrip().endswith(".") and "\n\n\n" not in body


@pytest.mark.parametrize("name, damage, field", [
    ("realtime", lambda d: d["rows"][1].pop("success"), "rows[1].success"),
    ("realtime", lambda d: d["rows"][0].update(delay=[2]), "rows[0].delay"),
    ("recovery", lambda d: d["rows"][1].update(recovery="high"), "rows[1].recovery"),
    ("uncertainty", lambda d: d["tables"]["failure"][3].pop("positives"), "tables.failure[3].positives"),
    ("uncertainty", lambda d: d["meta"].pop("git_commit"), "meta.git_commit"),
    ("uncertainty", lambda d: d.update(schema="vla_ebt.recovery/2"), "schema"),
    ("recovery", lambda d: d["meta"].update(suite="metaworld"), "meta.suite"),
])
def test_malformed_study_json_names_the_file_and_field(tmp_path, name, damage, field):
    data = {"realtime": realtime_json, "recovery": recovery_json, "uncertainty": uncertainty_json}[name]()
    damage(data)
    res, readme = _results_dir(tmp_path, {name: data})
    with pytest.raises(ValueError) as e:
        results.main(["--dir", str(res), "--readme", str(readme), "--check"])
    msg = str(e.value)
    assert f"{name}.json" in msg and f"field {field}:" in msg


def test_a_study_without_a_renderer_gets_a_link_and_one_in_a_group_without_a_table_is_shown(tmp_path):
    res, readme = _results_dir(tmp_path)
    d = res / "metaworld" / "lora" / ss.STUDIES_DIR
    d.mkdir(parents=True)
    (d / "recovery.json").write_text(json.dumps({**recovery_json(), "meta": _meta(suite="metaworld", protocol="lora")}))
    (d / "language_probe.json").write_text(json.dumps({"meta": {}}))
    assert "language_probe" not in ss.RENDERERS
    assert results.main(["--dir", str(res), "--readme", str(readme), "--no-plots"]) == 0
    text = readme.read_text()
    assert "**metaworld, lora backbone** (no comparison table yet):" in text
    assert "**language_probe**: published ([language_probe.md](compare/metaworld/lora/studies/language_probe.md))" in text
    assert "| ebt | 0.80 [0.70, 0.90] |" in (res / "metaworld" / "lora" / "results.md").read_text()


# ------------------------------------------------------------------------------------------ publishing
def _study_out(tmp_path: Path, name: str = "recovery", data: dict | None = None) -> Path:
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data or recovery_json()))
    (out / f"{name}.md").write_text("# study\n")
    (out / f"{name}.png").write_bytes(b"\x89PNG fake")
    return out


def test_publish_copies_the_three_files_and_regenerates_only_the_default_tree(tmp_path, monkeypatch):
    import recipes.compare.artifacts as artifacts

    calls = []
    monkeypatch.setattr(results, "main", lambda argv=None: calls.append(argv) or 0)
    out = _study_out(tmp_path)
    dest = tmp_path / "elsewhere"
    written = pp.publish_study("recovery", out, dest)
    assert sorted(p.name for p in written) == ["recovery.json", "recovery.md", "recovery.png"]
    assert (dest / "recovery.png").read_bytes() == b"\x89PNG fake" and not list(dest.glob("*.tmp*"))
    assert json.loads((dest / "recovery.json").read_text()) == recovery_json() and calls == []
    # into <results>/<suite>/<protocol>/studies of the default results tree: recipes.results runs
    monkeypatch.setattr(artifacts, "DEFAULT_RESULTS_DIR", tmp_path / "res")
    pp.publish_study("recovery", out, tmp_path / "res" / "reach2d" / "frozen" / "studies")
    assert calls == [[]]
    # a study of another suite than the folder, or one the results could not render, is not published
    with pytest.raises(ValueError, match="meta.suite"):
        pp.publish_study("recovery", out, tmp_path / "res" / "metaworld" / "frozen" / "studies")
    bad = _study_out(tmp_path / "b", data={**recovery_json(), "rows": [{"label": "ebt"}]})
    with pytest.raises(ValueError, match=r"recovery\.json: field rows\[0\]\.perturbation"):
        pp.publish_study("recovery", bad, tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()
    (out / "recovery.png").unlink()
    with pytest.raises(FileNotFoundError, match="recovery.png"):
        pp.publish_study("recovery", out, dest)


def test_publish_destination_needs_a_comparison_or_an_explicit_folder(tmp_path):
    from recipes.compare.artifacts import DEFAULT_RESULTS_DIR

    def inp(**source):
        return pp.StudyInputs(policies={"ebt": ["x"]}, suite="metaworld", suite_args=[], tasks=[], eval_seeds=[1],
                              episodes=1, presets={}, source=source)

    ns = argparse.Namespace
    assert pp.publish_destination(ns(publish=False, publish_dir=None), inp()) is None
    with pytest.raises(ValueError, match="--publish-dir"):
        pp.publish_destination(ns(publish=True, publish_dir=None), inp())
    assert pp.publish_destination(ns(publish=False, publish_dir="d"), inp()) == Path("d")  # implies --publish
    assert (pp.publish_destination(ns(publish=True, publish_dir=None), inp(compare="runs/c", protocol="frozen"))
            == DEFAULT_RESULTS_DIR / "metaworld" / "frozen" / "studies")


@pytest.mark.parametrize("study", ["realtime", "recovery", "uncertainty", "dynamic_compute"])
def test_each_study_publishes_after_writing_and_refuses_policies_without_a_folder(tmp_path, monkeypatch, study):
    """The command line: --publish with --compare copies into the comparison's studies folder (here a
    tmp default tree) and regenerates; with --policies it fails before running anything."""
    import importlib

    import recipes.compare.artifacts as artifacts

    mod = importlib.import_module(f"recipes.studies.{study}")
    run_name = {"realtime": "run_realtime", "recovery": "run_recovery", "uncertainty": "run_uncertainty",
                "dynamic_compute": "run_dynamic_compute"}[study]
    data = {"realtime": realtime_json, "recovery": recovery_json, "uncertainty": uncertainty_json,
            "dynamic_compute": dynamic_compute_json}[study]()
    out = tmp_path / "out"

    def fake_run(*a, **k):
        _study_out(tmp_path, study, data)
        return data

    monkeypatch.setattr(mod, run_name, fake_run)
    calls = []
    monkeypatch.setattr(results, "main", lambda argv=None: calls.append(argv) or 0)
    monkeypatch.setattr(artifacts, "DEFAULT_RESULTS_DIR", tmp_path / "res")
    with pytest.raises(ValueError, match="--publish-dir"):
        mod.main(["--policies", "ebt=x", "--suite", "reach2d", "--out", str(out), "--publish"])
    assert not out.exists()
    grid = tmp_path / "grid" / "reach2d" / "frozen" / "final" / "ebt" / "lr0.001_ema0.99" / "seed0"
    (grid / "checkpoints" / "step_00000004" / "policy").mkdir(parents=True)
    (grid / "checkpoints" / "step_00000004" / "policy" / "config.json").write_text("{}")
    (grid / "done.json").write_text("{}")
    (grid / "result.json").write_text(json.dumps({"train_seed": 0, "eval_seeds": [7], "tasks": ["reach_red"]}))
    mod.main(["--compare", str(tmp_path / "grid"), "--suite", "reach2d", "--protocol", "frozen",
              "--out", str(out), "--publish"])
    dest = tmp_path / "res" / "reach2d" / "frozen" / "studies"
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{study}{e}" for e in (".json", ".md", ".png"))
    assert calls == [[]]
