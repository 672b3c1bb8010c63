"""Sim mixtures (``DataConfig.suites``): one policy trained on several suites, each suite one embodiment.

Batches carry the right embodiment ids, padded actions / states and frames of one size; each suite is
normalized with its own statistics (round trip); the mixture weighting is the shard mixture's; bad
configs fail before any demonstration is collected; a tiny mixture policy trains, saves, reloads and
runs closed-loop on each suite as that suite's embodiment (actions cut to the suite's action dim), and
``eval.sim.run`` refuses a suite it was not trained on, naming the ones it was."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch

from recipes.configs import DataConfig, suite_data_preset
from recipes.data import sim_data, sim_suite_configs
from tests.policy_fixtures import small_config
from vla_ebt.backbones import BackboneConfig

IMG = 32
ARGS = ("image_size=32", "max_episode_steps=12")


def _pc():
    # action / state dims above both suites' (2 / 2): padded dims in every sample
    return dataclasses.replace(small_config(), action_dim=3, state_dim=4, backbone=BackboneConfig(image_size=IMG))


def _dc(tmp_path, **kw) -> DataConfig:
    """reach2d (32 px) + reach2d_detour rendered at 24 px (its frames are resized to the backbone's 32)."""
    return DataConfig(suite="reach2d", suites=("reach2d", "reach2d_detour"), tasks=("reach_red", "reach_blue"),
                      episodes_per_task=2, suite_args=ARGS, demo_cache=str(tmp_path / "cache"),
                      suite_overrides=("reach2d_detour.episodes_per_task=3", "reach2d_detour.tasks=reach_green",
                                       'reach2d_detour.suite_args=["image_size=24", "max_episode_steps=12"]'), **kw)


def test_mixture_batches_carry_embodiments_padding_and_per_suite_normalization(tmp_path):
    data = sim_data(_dc(tmp_path, mixture="uniform"), _pc(), batch_size=8, seed=0, world=1, rank=0)
    norm = data.normalizer
    assert data.datasets == list(norm.names) == ["reach2d", "reach2d_detour"]
    by_name = {s.name: s for s in data.sim_suites}
    assert [(s.name, s.embodiment, s.tasks) for s in data.sim_suites] == [
        ("reach2d", 0, ["reach_red", "reach_blue"]), ("reach2d_detour", 1, ["reach_green"])]
    assert data.suite is by_name["reach2d"].suite and data.tasks == ["reach_red", "reach_blue"]
    assert by_name["reach2d_detour"].suite.image_size == 24
    # per-suite statistics: each suite's own demonstrations, under its name
    for s in data.sim_suites:
        assert norm.stats[s.name].num_steps == s.train_samples and norm.action_dim(s.name) == 2
    assert data.num_samples == sum(s.train_samples for s in data.sim_suites)
    assert norm.stats["reach2d"].action.q01 != norm.stats["reach2d_detour"].action.q01

    # every sample: its suite's embodiment id, its own values in the first dims, zeros after
    batches = list(itertools.islice(data.make_batches(0), 40))
    for b in batches:
        assert b["images"].shape == (8, 1, 3, IMG, IMG) and b["action"].shape == (8, 8, 3)
        assert b["state"].shape == (8, 1, 4) and set(b["embodiment"].tolist()) <= {0, 1}
        assert (b["action"][..., 2:] == 0).all() and (b["state"][..., 2:] == 0).all()
        assert b["action"][..., :2].abs().sum() > 0
        # detour instructions are green targets, reach2d's red / blue: the id follows the suite
        for instr, e in zip(b["instruction"], b["embodiment"].tolist()):
            assert ("green" in instr.lower()) == (e == 1), (instr, e)
    emb = torch.cat([b["embodiment"] for b in batches])
    assert abs(emb.float().mean().item() - 0.5) < 0.1  # mixture "uniform": half the samples from each suite
    mask = norm.action_dim_mask(torch.tensor([0, 1]))
    assert mask.tolist() == [[True, True, False], [True, True, False]]

    # normalization per suite: in-range actions round-trip, padded dims stay 0, the suites' scales differ
    b = batches[0]
    e = b["embodiment"]
    lo = torch.stack([torch.tensor(norm.stats[norm.names[i]].action.q01 + [0.0]) for i in e.tolist()])[:, None]
    hi = torch.stack([torch.tensor(norm.stats[norm.names[i]].action.q99 + [0.0]) for i in e.tolist()])[:, None]
    raw = torch.minimum(torch.maximum(b["action"], lo.float()), hi.float())
    n = norm.normalize_action(raw, e)
    assert n.abs().max() <= 1.0 and (n[..., 2] == 0).all()
    assert torch.allclose(norm.unnormalize_action(n, e), raw, atol=1e-5)
    same = torch.tensor([[0.0, 0.03, 0.0]]).expand(2, -1)  # one raw action, each suite's own scale
    n0, n1 = norm.normalize_action(same, torch.tensor([0, 1]))
    assert not torch.allclose(n0, n1) and n0[2] == n1[2] == 0

    # resuming at batch 5 replays the weighted draws without the global RNG
    torch.manual_seed(7)
    again = list(itertools.islice(sim_data(_dc(tmp_path, mixture="uniform"), _pc(), 8, 0, 1, 0).make_batches(5), 3))
    for x, y in zip(batches[5:8], again):
        assert torch.equal(x["action"], y["action"]) and torch.equal(x["embodiment"], y["embodiment"])


def test_size_weighting_is_a_plain_shuffle_and_one_suite_is_the_plain_sim_data(tmp_path):
    pc = _pc()
    data = sim_data(_dc(tmp_path), pc, batch_size=4, seed=0, world=1, rank=0)  # mixture "size" (default)
    per_epoch = data.num_samples // 4
    emb = torch.cat([b["embodiment"] for b in itertools.islice(data.make_batches(0), per_epoch)])
    share = data.sim_suites[1].train_samples / data.num_samples
    assert abs(emb.float().mean().item() - share) <= 4 / len(emb) + 1e-9  # each chunk once per epoch
    # suites=(reach2d,) is exactly the plain sim data of reach2d
    plain = DataConfig(suite="reach2d", tasks=("reach_red",), episodes_per_task=2, suite_args=ARGS,
                       demo_cache=str(tmp_path / "cache"))
    a = list(itertools.islice(sim_data(plain, pc, 4, 0, 1, 0).make_batches(0), 3))
    b = list(itertools.islice(sim_data(dataclasses.replace(plain, suites=("reach2d",)), pc, 4, 0, 1, 0)
                              .make_batches(0), 3))
    for x, y in zip(a, b):
        assert torch.equal(x["action"], y["action"]) and torch.equal(x["images"], y["images"])


def test_mixture_config_errors_name_the_field_before_any_demo(tmp_path):
    dc = _dc(tmp_path)
    presets = sim_suite_configs(dataclasses.replace(dc, suite_overrides=()))
    assert presets[1].episodes_per_task == suite_data_preset("reach2d_detour").episodes_per_task == 1000
    assert presets[0] == dataclasses.replace(dc, suites=(), suite_overrides=())
    cases = [
        (dict(suites=("reach2d_detour", "pusht")), "data.suite 'reach2d' is not one of data.suites"),
        (dict(suites=("reach2d", "reach2d")), r"data.suites: \['reach2d'\] given twice"),
        (dict(suites=("reach2d", "libero")), "no recipe for suite 'libero'"),
        (dict(suite_overrides=("pusht.episodes_per_task=3",)), "suite 'pusht' is not one of data.suites"),
        (dict(suite_overrides=("reach2d_detour.image_size=3",)), "field 'image_size' is not one of"),
        (dict(suite_overrides=("reach2d_detour.episodes_per_task=many",)), "episodes_per_task: expected int"),
        (dict(suite_overrides=("episodes_per_task=3",)), "expected SUITE.FIELD=VALUE"),
        (dict(weights=(1.0,)), "data.weights has 1 values for 2 data.suites"),
        (dict(suites=(), suite_overrides=("reach2d.tasks=reach_red",)), "data.suite_overrides needs data.suites"),
    ]
    for kw, msg in cases:
        with pytest.raises(SystemExit, match=msg):
            sim_data(dataclasses.replace(dc, **kw), _pc(), 4, 0, 1, 0)
    with pytest.raises(SystemExit, match=r"policy.action_dim/state_dim \(1/4\) smaller than suite 'reach2d'"):
        sim_data(dc, dataclasses.replace(_pc(), action_dim=1), 4, 0, 1, 0)
    assert not (tmp_path / "cache").exists()  # nothing was collected


def test_mixture_policy_trains_reloads_and_acts_as_each_suites_embodiment(tmp_path, capsys):
    from eval.sim.rollout import EvalConfig, evaluate
    from eval.sim.run import main as eval_main
    from eval.sim.suites import make_suite
    from recipes.finetune import main as finetune_main
    from vla_ebt.policy import VLAPolicy

    run_dir = tmp_path / "run"
    finetune_main([
        "--recipe", "reach2d_ebt", "--optim.batch-size", "8", "--optim.steps", "4", "--optim.warmup-steps", "1",
        "--optim.log-every", "1", "--policy.trunk.width", "32", "--policy.trunk.depth", "1",
        "--policy.finetune.mode", "frozen", "--policy.action-dim", "3", "--policy.state-dim", "3",
        "--policy.backbone.image-size", str(IMG), "--eval.episodes-per-task", "1", "--eval.no-baselines",
        "--data.suites", "reach2d", "reach2d_detour", "--data.tasks", "reach_red", "reach_blue",
        "--data.episodes-per-task", "2", "--data.suite-args", *ARGS,
        "--data.suite-overrides", "reach2d_detour.episodes_per_task=2", "reach2d_detour.tasks=reach_green",
        'reach2d_detour.suite_args=["image_size=32", "max_episode_steps=12"]',
        "--data.demo-cache", str(tmp_path / "cache"), "--run-dir", str(run_dir), "--threads", "1",
        "--env-workers", "0"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["datasets"] == ["reach2d", "reach2d_detour"]
    suites = summary["suites"]
    assert {k: (v["embodiment"], v["tasks"]) for k, v in suites.items()} == {
        "reach2d": (0, ["reach_red", "reach_blue"]), "reach2d_detour": (1, ["reach_green"])}
    for name, v in suites.items():
        rep = json.loads((run_dir / "eval" / name / "report.json").read_text())
        assert rep["suite"] == name and rep["overall"]["episodes"] == v["trained"]["episodes"] == len(v["tasks"])
        assert rep["overall"]["errors"] == 0
        assert 0 <= v["trained"]["ci_low"] <= v["success"]["ebt (trained)"] <= v["trained"]["ci_high"] <= 1
    assert summary["success"] == suites["reach2d"]["success"]  # the headline: data.suite's

    policy = VLAPolicy.from_pretrained(run_dir / "policy")
    assert policy.normalizer.names == ("reach2d", "reach2d_detour") and policy.cfg.action_dim == 3
    obs = {"images": torch.rand(2, 1, 3, IMG, IMG), "instruction": ["reach the red dot", "go to the green one"],
           "state": torch.rand(2, 1, 2), "embodiment": torch.tensor([0, 1])}
    a = policy.predict_chunk(obs).actions
    assert a.shape == (2, 8, 3) and (a[..., 2] == 0).all()
    # closed loop on each suite as its embodiment: the suite's 2-D actions from the policy's 3-D ones
    for name in ("reach2d", "reach2d_detour"):
        suite = make_suite(name, image_size=IMG, max_episode_steps=12)
        rep = evaluate(policy, suite, EvalConfig(tasks=[suite.task_names()[0]], episodes_per_task=1,
                                                 embodiment=policy.normalizer.embodiment_id(name)))
        assert rep.overall.errors == 0 and rep.episodes[0].length >= 1
        d = eval_main(["--policy", str(run_dir / "policy"), "--suite", name, "--tasks", suite.task_names()[0],
                       "--episodes", "1", "--suite-arg", f"image_size={IMG}", "--suite-arg", "max_episode_steps=12",
                       "--out", str(tmp_path / f"eval_{name}"), "--quiet"])
        assert d["overall"]["episodes"] == 1 and d["overall"]["errors"] == 0
        assert d["run"]["args"]["embodiment"] is None  # chosen from the suite's name
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        eval_main(["--policy", str(run_dir / "policy"), "--suite", "pusht", "--suite-arg", f"image_size={IMG}",
                   "--out", str(tmp_path / "never"), "--quiet"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "not trained on suite 'pusht'" in err and "['reach2d', 'reach2d_detour']" in err
    assert not (tmp_path / "never").exists()
