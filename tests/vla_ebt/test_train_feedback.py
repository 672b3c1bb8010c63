"""Training feedback: TensorBoard scalars that match metrics.jsonl, periodic evaluation on the EMA
weights that leaves the training run unchanged, the wall-clock budget, and what finetune.py writes
(summary.json times, plots, eval records)."""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import time

import numpy as np
import pytest
import torch

from tests.policy_fixtures import make_batch, make_policy
from vla_ebt.train import TB_TAGS, OptimConfig, train_policy


@pytest.fixture(scope="module")
def base_policy():
    return make_policy(mode="frozen")


def _batches(delay: float = 0.0):
    batches = [make_batch(4, seed=s) for s in range(3)]
    i = 0
    while True:
        if delay:
            time.sleep(delay)
        yield batches[i % 3]
        i += 1


def _records(run_dir):
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [r for r in recs if "loss" in r], [r for r in recs if "loss" not in r]


def _scalars(tb_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


CFG = OptimConfig(steps=8, warmup_steps=2, lr=1e-3, ema_decay=0.8, log_every=2)


@pytest.mark.slow
def test_periodic_eval_sees_ema_weights_and_leaves_training_unchanged(tmp_path, base_policy, monkeypatch) -> None:
    torch.manual_seed(0)
    ref = train_policy(copy.deepcopy(base_policy), _batches(), CFG, run_dir=tmp_path / "ref", progress=False)

    live = copy.deepcopy(base_policy)
    seen = []
    modes = []
    orig = type(live).compute_loss

    def spy(self, batch):
        modes.append((self is live, self.training))
        return orig(self, batch)

    monkeypatch.setattr(type(live), "compute_loss", spy)

    def on_eval(step, policy):
        key = "head.trunk.proj.weight"
        p_eval, p_live = dict(policy.named_parameters()), dict(live.named_parameters())
        seen.append({"step": step, "is_live": policy is live, "training": policy.training,
                     "differs_from_live": not torch.equal(p_eval[key], p_live[key]), "policy": policy})
        torch.randn(1000), np.random.rand(10), random.random()  # eval consumes randomness: must not leak
        return {"success": step / 100, "success/task_a": 1.0}

    torch.manual_seed(0)
    res = train_policy(live, _batches(), dataclasses.replace(CFG, eval_every=3), run_dir=tmp_path / "ev",
                       progress=False, on_eval=on_eval)
    # the callback ran at steps 3 and 6 on the EMA copy, in eval mode, whose weights differ from the live ones
    assert [s["step"] for s in seen] == [3, 6]
    assert all(not s["is_live"] and not s["training"] and s["differs_from_live"] for s in seen)
    assert all(s["policy"] is res.eval_policy for s in seen)  # the EMA module is what gets evaluated
    # training always ran on the live policy in train mode, and evaluating changed nothing in the run
    assert modes and all(is_live and training for is_live, training in modes)
    assert res.losses == pytest.approx(ref.losses, rel=1e-6)
    train, evals = _records(tmp_path / "ev")
    assert [e["step"] for e in evals] == [3, 6] and evals[1]["eval/success"] == pytest.approx(0.06)
    assert res.evals == evals and res.steps == 8 and res.stop_reason == "steps"
    tb = _scalars(tmp_path / "ev" / "tb")
    assert tb["eval/success"] == [(3, pytest.approx(0.03)), (6, pytest.approx(0.06))]
    assert "eval/success/task_a" in tb


def test_tensorboard_scalars_match_metrics_jsonl(tmp_path, base_policy) -> None:
    res = train_policy(copy.deepcopy(base_policy), _batches(), CFG, run_dir=tmp_path, progress=False)
    train, _ = _records(tmp_path)
    assert [r["step"] for r in train] == [0, 2, 4, 6, 7]  # every log_every steps and the last
    tb = _scalars(tmp_path / "tb")
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "ebt/energy_before",
                "ebt/energy_after", "ebt/steps"):
        assert tag in tb, (tag, sorted(tb))
    assert [s for s, _ in tb["train/loss"]] == [r["step"] for r in train]
    assert [v for _, v in tb["train/loss"]] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    assert [v for _, v in tb["ebt/energy_after"]] == pytest.approx([r["energy_end"] for r in train], rel=1e-5, abs=1e-6)
    assert {v for _, v in tb["ebt/steps"]} <= {2.0, 3.0}  # train_steps_min 2 + randint(0, 2)
    assert all(v > 0 for _, v in tb["train/samples_per_s"])
    assert tb["train/lr"][0][1] == pytest.approx(CFG.lr / CFG.warmup_steps, rel=1e-5)  # warmup starts at lr / 2
    assert res.losses[-1] == pytest.approx(train[-1]["loss"])
    assert set(TB_TAGS) <= set(train[0]) | {"step"}


def test_max_seconds_stops_at_the_wall_clock_budget_excluding_eval(tmp_path, base_policy) -> None:
    cfg = dataclasses.replace(CFG, steps=1000, max_seconds=1.0, log_every=1000)
    res = train_policy(copy.deepcopy(base_policy), _batches(delay=0.25), cfg, run_dir=tmp_path / "a", progress=False)
    assert res.stop_reason == "max_seconds"
    # each step takes >= 0.25 s (the loader's delay), so at most 5 fit; a loaded machine may fit only 1
    assert 1 <= res.steps <= 5 and len(res.losses) == res.steps
    assert 1.0 <= res.seconds < 1.0 + res.seconds / res.steps + 0.5  # stops after the step that crossed 1 s
    assert res.samples_per_s == pytest.approx(res.steps * cfg.batch_size / res.seconds, rel=1e-6)
    train, _ = _records(tmp_path / "a")
    assert {r["step"] for r in train} == {0, res.steps - 1}  # the stopping step is logged
    # a 1 s evaluation after every step does not eat the training budget
    t0 = time.perf_counter()
    res2 = train_policy(copy.deepcopy(base_policy), _batches(delay=0.25), dataclasses.replace(cfg, eval_every=1),
                        run_dir=tmp_path / "b", progress=False, on_eval=lambda s, p: (time.sleep(1.0), {"success": 0.0})[1])
    wall = time.perf_counter() - t0
    assert res2.stop_reason == "max_seconds" and res2.steps >= 1
    assert res2.eval_seconds >= res2.steps * 1.0 and wall >= res2.seconds + res2.eval_seconds - 0.1
    assert res2.seconds < 1.0 + res2.seconds / res2.steps + 0.5  # evaluation time is not training time


@pytest.mark.slow
def test_finetune_writes_times_evals_tensorboard_and_plots(tmp_path) -> None:
    from recipes.finetune import parse_args, run

    run_dir = tmp_path / "run"
    cfg = parse_args(["--recipe", "reach2d_ebt", "--data.episodes-per-task", "3", "--optim.batch-size", "8",
                      "--optim.steps", "6", "--optim.warmup-steps", "2", "--optim.log-every", "1",
                      "--optim.eval-every", "3", "--eval.periodic-episodes-per-task", "1",
                      "--policy.trunk.width", "32", "--policy.trunk.depth", "1", "--policy.finetune.mode", "frozen",
                      "--eval.episodes-per-task", "1", "--eval.no-baselines", "--run-dir", str(run_dir)])
    summary = run(cfg, progress=False)
    assert summary["train_steps"] == 6 and summary["stop_reason"] == "steps"
    assert summary["train_seconds"] > 0 and summary["samples_per_s"] == pytest.approx(6 * 8 / summary["train_seconds"])
    assert [e["step"] for e in summary["evals"]] == [3, 6]
    assert all(0.0 <= e["eval/success"] <= 1.0 for e in summary["evals"])
    assert {f"eval/success/{t}" for t in ("reach_red", "reach_green", "reach_blue")} <= set(summary["evals"][0])
    assert json.loads((run_dir / "summary.json").read_text())["train_steps"] == 6
    train, evals = _records(run_dir)
    assert len(train) == 6 and [e["step"] for e in evals] == [3, 6]
    tb = _scalars(run_dir / "tb")
    assert [v for _, v in tb["train/loss"]] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    assert [s for s, _ in tb["eval/success"]] == [3, 6]
    for name in ("train.png", "eval_success.png"):
        png = run_dir / "plots" / name
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


@pytest.mark.slow
def test_finetune_equal_wall_clock_budget_records_steps_reached(tmp_path) -> None:
    from recipes.finetune import parse_args, run

    run_dir = tmp_path / "run"
    cfg = parse_args(["--recipe", "reach2d_ebt", "--data.episodes-per-task", "3", "--optim.batch-size", "8",
                      "--optim.steps", "100000", "--optim.max-seconds", "2", "--optim.log-every", "1000",
                      "--policy.trunk.width", "32", "--policy.trunk.depth", "1", "--policy.finetune.mode", "frozen",
                      "--eval.episodes-per-task", "1", "--eval.no-baselines", "--run-dir", str(run_dir)])
    summary = run(cfg, progress=False)
    assert summary["stop_reason"] == "max_seconds" and summary["max_seconds"] == 2.0
    assert 1 <= summary["train_steps"] < 100000 and summary["planned_steps"] == 100000
    assert 2.0 <= summary["train_seconds"] < 6.0
    assert summary["samples_per_s"] == pytest.approx(summary["train_steps"] * 8 / summary["train_seconds"])
    train, _ = _records(run_dir)
    assert train[-1]["step"] == summary["train_steps"] - 1
    assert (run_dir / "policy" / "model.safetensors").exists()
