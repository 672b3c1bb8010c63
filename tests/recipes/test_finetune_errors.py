"""Bad input to recipes/finetune.py: a clear message naming the field / dataset / path / step and a
non-zero exit, with the checkpoints already written left intact. Two cases run as real processes
(exit status); the rest call ``main([...])`` (``SystemExit`` with a message = exit status 1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recipes.finetune import main
from tests.recipes.test_oxe_mix import write_fixture_shards

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--recipe", "reach2d_ebt", "--data.episodes-per-task", "3", "--optim.batch-size", "8",
         "--optim.warmup-steps", "1", "--optim.log-every", "1", "--policy.trunk.width", "32",
         "--policy.trunk.depth", "1", "--policy.finetune.mode", "frozen", "--eval.episodes-per-task", "1",
         "--eval.no-baselines"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _finetune(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "recipes" / "finetune.py"), *args], env=_env(),
                          capture_output=True, text=True, cwd=ROOT, timeout=180)


def _exit_message(args: list[str]) -> str:
    """main(args) must exit with a message (exit status 1); returns it."""
    with pytest.raises(SystemExit) as e:
        main(args)
    assert isinstance(e.value.code, str), e.value.code
    return e.value.code


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_fixture_shards(tmp_path_factory.mktemp("shards"))


@pytest.mark.slow
def test_wrong_type_exits_nonzero_naming_the_field(tmp_path) -> None:
    p = _finetune([*SMALL, "--optim.steps", "many", "--run-dir", str(tmp_path / "r")])
    assert p.returncode != 0
    assert "--optim.steps" in p.stderr and "many" in p.stderr
    assert not (tmp_path / "r").exists()  # nothing was started


def test_unknown_recipe_and_unknown_field(capsys) -> None:
    msg = _exit_message(["--recipe", "nope"])
    assert "unknown recipe 'nope'" in msg and "oxe_mix" in msg and "scaling" in msg
    with pytest.raises(SystemExit) as e:
        main(["--recipe", "default", "--optim.stepz", "7"])
    assert e.value.code != 0
    assert "--optim.stepz" in capsys.readouterr().err


def test_missing_deepspeed_config(tmp_path) -> None:
    msg = _exit_message([*SMALL, "--run-dir", str(tmp_path), "--deepspeed-config", str(tmp_path / "ds.json")])
    assert "DeepSpeed config" in msg and "ds.json" in msg


def test_missing_shards_folder(tmp_path) -> None:
    missing = tmp_path / "shards" / "bridge"
    msg = _exit_message([*SMALL, "--run-dir", str(tmp_path / "r"), "--data.source", "shards",
                         "--data.shards", str(missing)])
    assert "data.shards[0]" in msg and str(missing) in msg and "no such directory" in msg
    msg = _exit_message([*SMALL, "--run-dir", str(tmp_path / "r"), "--data.source", "shards"])
    assert "needs data.shards" in msg


def test_dataset_without_statistics(tmp_path, shards) -> None:
    planar = tmp_path / "planar"
    shutil.copytree(shards["planar"], planar)
    (planar / "stats.json").unlink()
    base = [*SMALL, "--run-dir", str(tmp_path / "r"), "--data.source", "shards", "--policy.action-dim", "7",
            "--policy.state-dim", "8"]
    msg = _exit_message([*base, "--data.shards", str(shards["arm7"]), str(planar)])
    assert "'planar'" in msg and str(planar / "stats.json") in msg and "statistics missing" in msg
    # an explicit statistics file (data.stats) that lacks a dataset of the mixture
    only_arm = tmp_path / "arm_stats.json"
    shutil.copy(shards["arm7"] / "stats.json", only_arm)
    msg = _exit_message([*base, "--data.shards", str(shards["arm7"]), str(shards["planar"]), "--data.stats",
                         str(only_arm)])
    assert "'planar'" in msg and str(only_arm) in msg and str(shards["planar"]) in msg
    msg = _exit_message([*base, "--data.shards", str(shards["arm7"]), str(shards["planar"]), "--data.weights", "1"])
    assert "data.weights has 1 values for 2" in msg
    # the policy's padded dims must hold every embodiment
    msg = _exit_message([*SMALL, "--run-dir", str(tmp_path / "r"), "--data.source", "shards",
                         "--data.shards", str(shards["arm7"])])
    assert "max_action_dim=2" in msg and str(shards["arm7"]) in msg


@pytest.mark.slow
def test_nan_loss_exits_naming_the_step_and_keeps_checkpoints(tmp_path, monkeypatch) -> None:
    """A loss that turns NaN at step 4 (monkeypatched): exit message names step 4, the checkpoints at
    steps 2 and 4 stay complete, and --resume continues from step 4 once the loss is finite again."""
    from vla_ebt.policy import VLAPolicy

    run_dir = tmp_path / "run"
    args = [*SMALL, "--optim.steps", "6", "--optim.ckpt-every", "2", "--optim.ckpt-keep", "3", "--run-dir", str(run_dir)]
    orig = VLAPolicy.compute_loss
    calls = []

    def nan_from_step_4(self, batch):
        loss, info = orig(self, batch)
        calls.append(1)
        return (loss * float("nan"), info) if len(calls) > 4 else (loss, info)

    monkeypatch.setattr(VLAPolicy, "compute_loss", nan_from_step_4)
    msg = _exit_message(args)
    assert "training diverged at step 4" in msg and "step_00000004" in msg and "nan" in msg
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["step_00000002", "step_00000004"]  # no temp dir, nothing past the bad step
    state = torch.load(run_dir / "checkpoints" / "step_00000004" / "trainer_rank0.pt", weights_only=False)
    assert state["step"] == 4 and len(state["losses"]) == 4
    assert all(torch.isfinite(v).all() for v in [*state["model"].values(), *state["ema"].values()] if v.is_floating_point())
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [0, 1, 2, 3]
    assert not (run_dir / "policy").exists() and not (run_dir / "summary.json").exists()
    assert (run_dir / "plots" / "train.png").exists()  # the curve up to the failure is plotted

    monkeypatch.setattr(VLAPolicy, "compute_loss", orig)
    main([*args, "--resume"])
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(6))
    assert json.loads((run_dir / "summary.json").read_text())["start_step"] == 4


@pytest.mark.slow
def test_nan_from_a_huge_learning_rate_exits_nonzero(tmp_path) -> None:
    p = _finetune([*SMALL, "--optim.steps", "5", "--optim.lr", "1e30", "--optim.ckpt-every", "1",
                   "--run-dir", str(tmp_path)])
    assert p.returncode == 1, p.stderr[-2000:]
    assert "error: training diverged at step 1" in p.stderr and "Traceback" not in p.stderr
    ck = tmp_path / "checkpoints" / "step_00000001" / "trainer_rank0.pt"
    state = torch.load(ck, weights_only=False)  # written before the bad step, complete and loadable
    assert state["step"] == 1 and all(torch.isfinite(torch.tensor(state["losses"])))


def test_constant_action_dim_in_sim_demos_is_a_clear_error_or_passthrough(tmp_path):
    """A demonstrated action dim that never changes (e.g. a gripper held closed) -> a message naming the
    suite and the flag that maps it through, and with that flag the data builds."""
    import dataclasses

    import numpy as np

    from eval.sim.suites import make_suite
    from recipes.configs import DataConfig
    from recipes.data import sim_data
    from tests.policy_fixtures import small_config

    suite = make_suite("reach2d")
    orig = suite.expert

    def expert_constant_y(task, noise=0.0, seed=None):
        fn = orig(task, noise, seed)
        return lambda obs, env: np.array([fn(obs, env)[0], 0.0], np.float32)

    pc = dataclasses.replace(small_config(), action_dim=2, state_dim=2)
    dc = DataConfig(suite="reach2d", tasks=("reach_red",), episodes_per_task=3, demo_cache="off")
    import eval.sim.suites.reach2d as r2d

    old = r2d.Reach2DSuite.expert
    r2d.Reach2DSuite.expert = lambda self, task, noise=0.0, seed=None: expert_constant_y(task, noise, seed)
    try:
        with pytest.raises(SystemExit, match=r"suite 'reach2d'.*--data.on-degenerate passthrough_dim"):
            sim_data(dc, pc, 4, 0, 1, 0)
        data = sim_data(dataclasses.replace(dc, on_degenerate="passthrough_dim"), pc, 4, 0, 1, 0)
        assert data.num_samples > 0
    finally:
        r2d.Reach2DSuite.expert = old
