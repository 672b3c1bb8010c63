"""The scaling sweep (recipes/scaling.py, also ``finetune.py --recipe scaling``): a 2-point sweep over
head size on fixture shards with the tiny PaliGemma, its results table / JSON / plot, and how the
axes map to configs."""

from __future__ import annotations

import json

import pytest

from recipes.finetune import main as finetune_main
from recipes.scaling import parse_scaling_args, point_configs
from tests.recipes.test_oxe_mix import write_fixture_shards

QUICK = ["--base.deepspeed", "", "--base.data.num-workers", "0", "--base.data.shuffle-buffer", "20",
         "--base.policy.bridge.max-prefix-tokens", "8", "--base.optim.log-every", "1", "--batch-size", "4"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_fixture_shards(tmp_path_factory.mktemp("shards"))


@pytest.mark.slow
def test_two_point_head_sweep_writes_table_json_and_plot(tmp_path, shards) -> None:
    out = tmp_path / "sweep"
    finetune_main(["--recipe", "scaling", "--base-recipe", "oxe_mix", *QUICK, "--heads", "16x1", "48x2",
                   "--backbones", "tiny_paligemma", "--embodiments", "2", "--steps", "3",
                   "--shards", str(shards["arm7"]), str(shards["planar"]), "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    rows = res["rows"]
    assert [r["head"] for r in rows] == ["16x1", "48x2"] and all("error" not in r for r in rows)
    small, big = rows
    assert big["params_head"] > 5 * small["params_head"]  # width 3x, depth 2x
    assert big["params_total"] - small["params_total"] >= big["params_head"] - small["params_head"]
    for r in rows:
        assert r["steps"] == 3 and r["embodiments"] == 2 and r["success"] is None  # shards: no simulator
        assert r["param_samples"] == pytest.approx(3 * 4 * r["params_total"])
        assert r["final_loss"] > 0 and r["train_seconds"] > 0
        assert (tmp_path / "sweep" / "points" / r["point"] / "policy" / "config.json").exists()
    assert res["config"]["heads"] == ["16x1", "48x2"]
    md = (out / "results.md").read_text().splitlines()
    assert len(md) == 4 and "final loss" in md[0] and "16x1" in md[2] and "48x2" in md[3]
    png = out / "scaling.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000


def test_axes_map_to_configs(tmp_path, shards) -> None:
    sc = parse_scaling_args(["--base-recipe", "oxe_mix", *QUICK, "--heads", "64x2", "--backbones", "recipe",
                             "tiny_paligemma", "--embodiments", "1", "2", "--shards", str(shards["arm7"]),
                             str(shards["planar"]), "--out", str(tmp_path)])
    pts = point_configs(sc)
    assert [d["point"] for d, _ in pts] == ["recipe__h64x2__e1", "recipe__h64x2__e2", "tiny_paligemma__h64x2__e1",
                                            "tiny_paligemma__h64x2__e2"]
    for d, cfg in pts:
        assert cfg.policy.trunk.width == 64 and cfg.policy.trunk.depth == 2 and cfg.policy.trunk.num_heads == 2
        assert len(cfg.data.shards) == d["embodiments"]
        assert (cfg.policy.action_dim, cfg.policy.state_dim) == (7, 8)  # the largest dims over the datasets
    assert pts[0][1].policy.backbone.model == "google/paligemma-3b-pt-224"
    assert pts[2][1].policy.backbone.family == "paligemma" and pts[2][1].policy.backbone.image_size == 64
    # sim data has one embodiment; unknown presets and bad head specs are refused with the field named
    with pytest.raises(SystemExit, match="embodiments > 1 needs --shards"):
        point_configs(parse_scaling_args(["--embodiments", "2", "--out", str(tmp_path)]))
    with pytest.raises(SystemExit, match="backbones: unknown 'huge'"):
        point_configs(parse_scaling_args(["--backbones", "huge", "--out", str(tmp_path)]))
    with pytest.raises(SystemExit, match="not WIDTHxDEPTH"):
        point_configs(parse_scaling_args(["--heads", "wide", "--out", str(tmp_path)]))


# ---------------------------------------------------------------------- the sim embodiment axis

SIM = ["--base-recipe", "reach2d_ebt", "--heads", "32x1", "--backbones", "recipe", "--steps", "3", "--batch-size", "8",
       "--demos-per-task", "2", "--eval-episodes-per-task", "1", "--base.data.tasks", "reach_red",
       "--base.data.suite-args", "image_size=32", "max_episode_steps=12", "--base.data.suite-overrides",
       'reach2d_detour.suite_args=["image_size=32", "max_episode_steps=12"]', "reach2d_detour.tasks=reach_red",
       "--base.policy.finetune.mode", "frozen", "--base.policy.backbone.image-size", "32",
       "--base.policy.trunk.width", "32", "--base.threads", "1", "--base.env-workers", "0"]


def test_sim_embodiment_axis_maps_to_configs(tmp_path) -> None:
    sc = parse_scaling_args([*SIM, "--suites", "reach2d", "reach2d_detour", "pusht", "--embodiments", "1", "2", "3",
                             "--base.policy.action-dim", "1", "--base.policy.state-dim", "1", "--out", str(tmp_path)])
    pts = point_configs(sc)
    assert [d["point"] for d, _ in pts] == ["recipe__h32x1__e1", "recipe__h32x1__e2", "recipe__h32x1__e3"]
    for (d, cfg), k in zip(pts, (1, 2, 3)):
        assert d["suites"] == ["reach2d", "reach2d_detour", "pusht"][:k] and cfg.data.suites == tuple(d["suites"])
        assert cfg.data.suite == "reach2d" and cfg.data.episodes_per_task == 2  # the target, in every point
        assert (cfg.policy.action_dim, cfg.policy.state_dim) == (2, 2)  # the largest over all the suites
        assert cfg.optim.steps == 3 and cfg.eval.episodes_per_task == 1 and not cfg.eval.baselines
        # only overrides of the point's own suites; --demos-per-task before the user's own
        for o in cfg.data.suite_overrides:
            assert o.split(".")[0] in d["suites"]
    assert pts[1][1].data.suite_overrides == ("reach2d_detour.episodes_per_task=2",
                                              'reach2d_detour.suite_args=["image_size=32", "max_episode_steps=12"]',
                                              "reach2d_detour.tasks=reach_red")
    assert "pusht.episodes_per_task=2" in pts[2][1].data.suite_overrides
    bad = [(["--suites", "pusht", "reach2d"], "first suite is the target and must be the base recipe's data.suite"),
           (["--suites", "reach2d", "pusht", "--embodiments", "3"], r"each must be in 1..2 \(the number of suites\)"),
           (["--suites", "reach2d", "--shards", str(tmp_path)], "shards and suites"),
           (["--embodiments", "2"], "needs --shards .* or --suites")]
    for args, msg in bad:
        with pytest.raises(SystemExit, match=msg):
            point_configs(parse_scaling_args([*SIM, *args, "--out", str(tmp_path)]))


def test_sim_embodiment_sweep_end_to_end_and_resume(tmp_path, monkeypatch) -> None:
    """k = 1, 2 embodiments (reach2d, + reach2d_detour) at 3 steps: per-suite success with Wilson intervals and
    compute in results.json / .md / embodiments.png; a second invocation skips the finished points and runs
    only a point whose point.json is gone."""
    import recipes.finetune

    out = tmp_path / "sweep"
    argv = ["--recipe", "scaling", *SIM, "--suites", "reach2d", "reach2d_detour", "--embodiments", "1", "2",
            "--out", str(out)]
    finetune_main(argv)
    res = json.loads((out / "results.json").read_text())
    rows = res["rows"]
    assert [r["embodiments"] for r in rows] == [1, 2] and all("error" not in r for r in rows)
    assert len(res["git_commit"]) >= 7 and all(r["git_commit"] for r in rows)  # what code made the numbers
    assert [sorted(r["success_per_suite"]) for r in rows] == [["reach2d"], ["reach2d", "reach2d_detour"]]
    for r in rows:
        assert r["steps"] == 3 and r["samples"] == 24 and r["train_seconds"] > 0 and r["wall_seconds"] > 0
        assert r["success"] == r["success_per_suite"]["reach2d"]["success"]  # the target's
        for name, c in r["success_per_suite"].items():
            assert c["episodes"] == 1 and 0 <= c["ci_low"] <= c["success"] <= c["ci_high"] <= 1
            assert c["embodiment"] == ["reach2d", "reach2d_detour"].index(name) and c["train_samples"] > 0
    assert res["config"]["suites"] == ["reach2d", "reach2d_detour"]
    md = (out / "results.md").read_text()
    assert "Success per suite against the number of embodiments" in md
    table = [line for line in md.splitlines() if line.startswith("| recipe | 32x1 |")]
    assert len(table) == 2 and table[0].split(" | ")[4] == "-"  # k = 1 never saw reach2d_detour
    assert "**reach2d**: 1 embodiment(s)" in md
    assert (out / "embodiments.png").read_bytes()[:4] == b"\x89PNG"

    def no_training(*a, **k):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(recipes.finetune, "run", no_training)
    finetune_main(argv)  # everything finished: nothing runs, same rows
    assert json.loads((out / "results.json").read_text())["rows"] == rows
    (out / "points" / "recipe__h32x1__e2" / "point.json").unlink()
    finetune_main(argv)  # only e2 runs again (and fails here, recorded in its row)
    again = json.loads((out / "results.json").read_text())["rows"]
    assert again[0] == rows[0] and "a finished point was trained again" in again[1]["error"]


@pytest.mark.slow
def test_sim_embodiment_sweep_in_single_thread_processes(tmp_path) -> None:
    out = tmp_path / "sweep"
    finetune_main(["--recipe", "scaling", *SIM, "--suites", "reach2d", "reach2d_detour", "--embodiments", "1", "2",
                   "--jobs", "2", "--out", str(out)])
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [sorted(r["success_per_suite"]) for r in rows] == [["reach2d"], ["reach2d", "reach2d_detour"]]
    for r in rows:
        d = out / "points" / r["point"]
        assert "=== attempt" in (d / "log.txt").read_text()
        spec = json.loads((d / "point_spec.json").read_text())
        assert spec["config"]["threads"] == 1 and spec["config"]["env_workers"] == 0
