"""Checkpoint + resume: a run killed with SIGKILL after a checkpoint and resumed with ``--resume``
reproduces the uninterrupted run's loss curve (single process and DeepSpeed ZeRO-2, 1 rank)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.vla_ebt.test_checkpoint_policy import assert_same_policy, observation_for
from vla_ebt.policy import VLAPolicy

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--recipe", "reach2d_ebt", "--data.episodes-per-task", "4", "--optim.batch-size", "8",
         "--optim.warmup-steps", "3", "--optim.log-every", "1", "--policy.trunk.width", "32",
         "--policy.trunk.depth", "1", "--policy.finetune.mode", "frozen", "--eval.episodes-per-task", "1",
         "--eval.no-baselines"]
STEPS, EVERY = 40, 5
RTOL = 1e-5  # measured: bitwise equal on CPU with 1 thread; the tolerance only absorbs float printing


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _cmd(run_dir: Path, extra: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "recipes" / "finetune.py"), *SMALL, "--optim.steps", str(STEPS),
            "--optim.ckpt-every", str(EVERY), "--optim.ckpt-keep", "2", "--run-dir", str(run_dir), *extra]


def _losses(run_dir: Path) -> dict[int, float]:
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {r["step"]: r["loss"] for r in recs}


@pytest.mark.parametrize("extra", [[], ["--deepspeed-config", str(ROOT / "recipes/deepspeed/zero2.json")]],
                         ids=["local", "deepspeed_zero2"])
@pytest.mark.slow
def test_kill9_and_resume_reproduces_loss_curve(tmp_path, extra) -> None:
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cmd(ref_dir, extra), env=_env(), check=True, capture_output=True, cwd=ROOT, timeout=120)

    proc = subprocess.Popen(_cmd(run_dir, extra), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT)
    first = run_dir / "checkpoints" / f"step_{EVERY:08d}"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    killed_at = max(_losses(run_dir))
    assert killed_at < STEPS - 1

    subprocess.run(_cmd(run_dir, [*extra, "--resume"]), env=_env(), check=True, capture_output=True, cwd=ROOT,
                   timeout=120)
    ref, res = _losses(ref_dir), _losses(run_dir)
    assert sorted(res) == list(range(STEPS)) == sorted(ref)
    for step in range(STEPS):
        assert res[step] == pytest.approx(ref[step], rel=RTOL), step
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith("."))
    assert ckpts == [f"step_{STEPS - EVERY:08d}", f"step_{STEPS:08d}"]  # keep last 2
    assert (run_dir / "summary.json").exists()
    # every checkpoint holds a loadable policy; the last one is the final export
    last = run_dir / "checkpoints" / ckpts[-1] / "policy"
    assert_same_policy(last, run_dir / "policy", observation_for(VLAPolicy.from_pretrained(last)))
    assert VLAPolicy.from_pretrained(run_dir / "checkpoints" / ckpts[0] / "policy").cfg.action_dim == 2


def test_resume_latest_without_checkpoint_starts_fresh(tmp_path) -> None:
    from vla_ebt.train import resolve_resume

    assert resolve_resume("latest", tmp_path) is None
    (tmp_path / "checkpoints" / ".tmp_step_00000003").mkdir(parents=True)  # an interrupted write is ignored
    (tmp_path / "checkpoints" / "step_00000002").mkdir()
    assert resolve_resume("latest", tmp_path).name == "step_00000002"
    with pytest.raises(FileNotFoundError):
        resolve_resume(tmp_path / "nope", tmp_path)
