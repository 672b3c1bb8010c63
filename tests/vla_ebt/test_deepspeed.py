"""DeepSpeed path on CPU (gloo): ZeRO 0/1/2 match the single-process loop, a 2-rank torchrun run ends
with identical weights on both ranks, and the launcher's --local_rank flag is accepted (ZeRO-3:
tests/test_zero3.py). Every DeepSpeed run is a subprocess (a process can initialize the process group
only once)."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from recipes.finetune import parse_launch_args
from tests.vla_ebt.test_checkpoint_policy import assert_same_policy, observation_for
from vla_ebt.policy import VLAPolicy

ROOT = Path(__file__).resolve().parents[2]
DS = ROOT / "recipes" / "deepspeed"
SMALL = ["--recipe", "reach2d_ebt", "--data.episodes-per-task", "4", "--optim.batch-size", "8", "--optim.steps", "4",
         "--optim.warmup-steps", "2", "--optim.log-every", "1", "--policy.trunk.width", "32",
         "--policy.trunk.depth", "1", "--policy.finetune.mode", "frozen", "--eval.episodes-per-task", "1",
         "--eval.no-baselines"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _finetune(run_dir: Path, extra: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "recipes" / "finetune.py"), *SMALL, "--run-dir", str(run_dir),
                           *extra], env=_env(), capture_output=True, text=True, cwd=ROOT, timeout=180)


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]


@pytest.mark.slow
def test_zero_stages_0_1_2_match_single_process_loop(tmp_path) -> None:
    p = _finetune(tmp_path / "local", [])
    assert p.returncode == 0, p.stderr[-2000:]
    ref = _losses(tmp_path / "local")
    for stage in (0, 1, 2):
        p = _finetune(tmp_path / f"z{stage}", ["--deepspeed-config", str(DS / f"zero{stage}.json")])
        assert p.returncode == 0, p.stderr[-2000:]
        got = _losses(tmp_path / f"z{stage}")
        assert len(got) == len(ref) == 4
        # measured: relative differences ~1e-6 (flattened-buffer reductions vs per-tensor ones)
        assert got == pytest.approx(ref, rel=1e-4), stage
        assert (tmp_path / f"z{stage}" / "policy" / "model.safetensors").exists()


@pytest.mark.slow
def test_two_ranks_torchrun_gloo_identical_weights(tmp_path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        import torch
        import vla_ebt.train as T
        from recipes import finetune
        orig = T.train_policy
        def patched(policy, *a, **k):
            result = orig(policy, *a, **k)
            state = {{k: v for k, v in policy.state_dict().items()}}
            torch.save(state, {str(tmp_path)!r} + f"/rank{{os.environ['RANK']}}.pt")
            return result
        T.train_policy = patched
        finetune.main(sys.argv[1:])
    """))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           str(worker), *SMALL, "--run-dir", str(tmp_path / "run"), "--deepspeed-config", str(DS / "zero2.json"),
           "--optim.ckpt-every", "2"]
    # start_new_session + killpg: a hung run must not leave rank processes behind
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    p = subprocess.CompletedProcess(cmd, proc.returncode, "", err)
    assert p.returncode == 0, p.stderr[-3000:]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    assert len(_losses(tmp_path / "run")) == 4  # only rank 0 logs
    ck = tmp_path / "run" / "checkpoints" / "step_00000004"
    assert (ck / "trainer_rank0.pt").exists() and (ck / "trainer_rank1.pt").exists()
    # rank 0 wrote the checkpoint's policy/ (the EMA weights at step 4 = the final export)
    final = tmp_path / "run" / "policy"
    assert_same_policy(ck / "policy", final, observation_for(VLAPolicy.from_pretrained(final)))
    assert (tmp_path / "run" / "summary.json").exists()


def test_launcher_flags_are_accepted() -> None:
    cfg, launch = parse_launch_args(["--recipe", "default", "--local_rank=1", "--resume",
                                     "--deepspeed-config", "x.json", "--optim.steps", "3"])
    assert cfg.optim.steps == 3 and launch.resume == "latest" and launch.deepspeed_config == "x.json"
    _, launch = parse_launch_args(["--local-rank", "0", "--resume", "runs/x/checkpoints/step_00000010"])
    assert launch.resume.endswith("step_00000010") and launch.deepspeed_config is None


def test_finetune_destroys_its_process_group_and_a_new_one_can_start() -> None:
    """After a rank's work its process group is destroyed (an orderly gloo teardown, not at exit); a
    second init in the same process starts a new one. In a subprocess: init sets RANK / WORLD_SIZE."""
    code = textwrap.dedent("""
        import torch
        from vla_ebt import distributed as vdist
        vdist.init_distributed()
        assert torch.distributed.is_initialized() and vdist.world_size() == 1
        vdist.shutdown_distributed()
        assert not torch.distributed.is_initialized()
        vdist.shutdown_distributed()  # nothing left: a no-op
        vdist.init_distributed()
        assert torch.distributed.is_initialized()
        vdist.barrier()
        # finetune.main ends with the group destroyed, also when its run raises
        from recipes import finetune
        def fake_run(cfg, resume, deepspeed_config):
            vdist.init_distributed()
            raise RuntimeError("boom")
        finetune.run = fake_run
        try:
            finetune.main(["--recipe", "reach2d_ebt", "--deepspeed-config", "recipes/deepspeed/zero0.json"])
        except RuntimeError:
            pass
        assert not torch.distributed.is_initialized()
        print("ok")
    """)
    p = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-2000:]
