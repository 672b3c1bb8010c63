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
