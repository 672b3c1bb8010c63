"""ZeRO-3 on CPU (gloo, 2 ranks via torchrun): the backbone is partitioned, the head / bridge stay whole.

* EBT head + tiny PaliGemma-architecture backbone with LoRA: ZeRO-3 losses match ZeRO-0 step by step,
  with EMA and periodic evaluation on; the final export and the last checkpoint's policy/ (EMA weights)
  load with ``VLAPolicy.from_pretrained``, predict identically, and match ZeRO-0's export; the live
  weights gathered with ``deepspeed.zero.GatheredParameters`` match ZeRO-0's; resuming a ZeRO-3
  checkpoint (sharded EMA included) continues the same losses and ends with the same export.
* Regression head + composite backbone (the case that crashed in backward with "size of tensor a (0)
  must match ... 384": the backbone's own top-level parameters were never gathered again for the
  backward): trains, and its export equals the weights gathered from the partitions.
* :func:`zero3_split` in one process: what is partitioned and what stays whole, and the error for a
  parameter shared across the two.

Every DeepSpeed run is a subprocess (a process can initialize the process group only once).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.vla_ebt.test_checkpoint_policy import assert_same_policy, observation_for, predict
from vla_ebt.policy import VLAPolicy

ROOT = Path(__file__).resolve().parents[2]
DS = ROOT / "recipes" / "deepspeed"

#: ZeRO-3 vs ZeRO-0 per-step loss, relative. Measured max 6.8e-06 over the 4 steps (gloo allreduce vs
#: reduce-scatter summation order, amplified by Adam through the steps).
LOSS_RTOL = 1e-4
#: live / exported (EMA) weights, ZeRO-3 vs ZeRO-0, absolute. Measured max 5.5e-05 (live) / 3.7e-05
#: (EMA), all of it in the key halves of the attention biases: softmax is invariant to a key bias, so
#: their gradient is rounding noise that Adam normalizes into lr-sized (1e-3) steps of arbitrary sign;
#: every other weight differs by < 4e-07.
WEIGHT_ATOL = 1e-4
#: predicted actions of the exports, ZeRO-3 vs ZeRO-0, absolute. Measured max 4.5e-06.
ACTION_ATOL = 1e-4

EBT_ARGS = ["--recipe", "reach2d_ebt", "--data.episodes-per-task", "4", "--optim.batch-size", "4",
            "--optim.steps", "4", "--optim.warmup-steps", "2", "--optim.log-every", "1",
            "--policy.backbone.family", "paligemma", "--policy.backbone.image-size", "64",
            "--policy.finetune.target-modules", "None",  # the family's default LoRA targets (LM projections)
            "--policy.trunk.width", "32", "--policy.trunk.depth", "1", "--policy.trunk.num-heads", "2",
            "--policy.bridge.max-prefix-tokens", "8", "--policy.bridge.fusion-layers", "0",
            "--optim.ema-decay", "0.5", "--optim.eval-every", "2", "--optim.ckpt-every", "2", "--optim.ckpt-keep", "2",
            "--eval.episodes-per-task", "1", "--eval.periodic-episodes-per-task", "1", "--eval.no-baselines"]
REGRESSION_ARGS = ["--recipe", "reach2d_regression", "--data.episodes-per-task", "4", "--optim.batch-size", "4",
                   "--optim.steps", "3", "--optim.warmup-steps", "1", "--optim.log-every", "1",
                   "--policy.trunk.width", "32", "--policy.trunk.depth", "1", "--policy.finetune.mode", "frozen",
                   "--optim.ema-decay", "0", "--optim.ckpt-every", "3", "--eval.episodes-per-task", "0",
                   "--eval.no-baselines"]

# Runs finetune.main with --run-dir = the output folder. After train_policy returns, every rank gathers the
# live weights with DeepSpeed's own GatheredParameters (a no-op below ZeRO-3) and rank 0 saves the
# trainable ones (live.pt) and the actions result.eval_policy (the gathered policy finetune exports)
# predicts on a fixed observation (eval_pred.pt); after finetune.main, rank 0 saves the actions of the
# export loaded back with from_pretrained (export_pred.pt): same process, so they must be bit-equal
# (across processes the CPU kernels may round differently, ~1e-8).
#
# The DataLoader patch works around a bug outside the trainer: with world > 1, recipes/data.py builds the
# DistributedSampler DataLoader without a generator, so each new epoch iterator draws its base seed from
# the global torch RNG, and a resumed run (which replays the loader after restoring the RNG states) draws
# one more number than the run it resumes: the EBT noise shifts and the losses after the resume point
# differ, under ZeRO-0 as under ZeRO-3. With a seeded generator (what the world == 1 path passes) a
# resumed ZeRO-3 run reproduces the uninterrupted one exactly. A no-op once data.py passes one.
WORKER = """
import os, sys
sys.path.insert(0, {root!r})
import torch
import torch.utils.data as TUD
_loader_init = TUD.DataLoader.__init__
def _seeded_loader_init(self, *a, **k):
    if k.get("generator") is None:
        k["generator"] = torch.Generator().manual_seed(0)
    _loader_init(self, *a, **k)
TUD.DataLoader.__init__ = _seeded_loader_init
import vla_ebt.train as T
from recipes import finetune
from tests.vla_ebt.test_checkpoint_policy import observation_for, predict
out = {out!r}
orig = T.train_policy
def patched(policy, *a, **k):
    result = orig(policy, *a, **k)
    import deepspeed
    params = list(policy.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=hasattr(params[0], "ds_id")):
        live = {{n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}}
    if os.environ["RANK"] == "0":
        torch.save(live, out + "/live.pt")
        torch.save(predict(result.eval_policy, observation_for(result.eval_policy)), out + "/eval_pred.pt")
    else:
        assert result.eval_policy is None or not hasattr(params[0], "ds_id")
    return result
T.train_policy = patched
finetune.main(sys.argv[1:])
if os.environ["RANK"] == "0":
    from vla_ebt.policy import VLAPolicy
    exported = VLAPolicy.from_pretrained(out + "/policy")
    torch.save(predict(exported, observation_for(exported)), out + "/export_pred.pt")
"""


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def torchrun(out: Path, args: list[str], timeout: int = 300) -> None:
    """2-rank torchrun of the worker (writes live.pt / eval_pred.pt into ``out``); fails with stderr."""
    out.mkdir(parents=True, exist_ok=True)
    worker = out / "worker.py"
    worker.write_text(WORKER.format(root=str(ROOT), out=str(out)))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           str(worker), *args]
    # start_new_session + killpg: a hung run must not leave rank processes behind
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    try:
        stdout, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, err[-4000:]
    (out / "stdout.txt").write_text(stdout)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in records(run_dir) if "loss" in r]


def max_weight_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def ebt_runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny PaliGemma + LoRA + EBT, 2 ranks: ZeRO-0, ZeRO-3, and ZeRO-3 resumed from its step-2 checkpoint."""
    from vla_ebt.backbones.tiny import build_tiny_paligemma

    root = tmp_path_factory.mktemp("zero3_ebt")
    model = build_tiny_paligemma(root / "tiny_paligemma")
    args = [*EBT_ARGS, "--policy.backbone.model", model]
    runs = {name: root / name for name in ("z0", "z3", "z3_resumed")}
    torchrun(runs["z0"], [*args, "--run-dir", str(runs["z0"]), "--deepspeed-config", str(DS / "zero0.json")])
    torchrun(runs["z3"], [*args, "--run-dir", str(runs["z3"]), "--deepspeed-config", str(DS / "zero3.json")])
    # resume the ZeRO-3 run's step-2 checkpoint (model, optimizer, scheduler, EMA shards, RNG) in a new run dir
    ckpt = runs["z3_resumed"] / "checkpoints" / "step_00000002"
    shutil.copytree(runs["z3"] / "checkpoints" / "step_00000002", ckpt)
    shutil.copy(runs["z3"] / "metrics.jsonl", runs["z3_resumed"] / "metrics.jsonl")
    torchrun(runs["z3_resumed"], [*args, "--run-dir", str(runs["z3_resumed"]), "--deepspeed-config",
                                  str(DS / "zero3.json"), "--resume", str(ckpt)])
    return runs


@pytest.mark.slow
def test_zero3_ebt_losses_match_zero0(ebt_runs) -> None:
    z0, z3 = losses(ebt_runs["z0"]), losses(ebt_runs["z3"])
    assert len(z0) == len(z3) == 4
    assert z3 == pytest.approx(z0, rel=LOSS_RTOL)
    out = (ebt_runs["z3"] / "stdout.txt").read_text()
    assert "ZeRO-3: backbone submodules partitioned" in out and "EMA disabled" not in out


@pytest.mark.slow
def test_zero3_periodic_evaluation_runs(ebt_runs) -> None:
    for run in ("z0", "z3"):
        evals = [r for r in records(ebt_runs[run]) if "eval/success" in r]
        assert [r["step"] for r in evals] == [2, 4], run
        assert all(0.0 <= r["eval/success"] <= 1.0 for r in evals)
    summary = json.loads((ebt_runs["z3"] / "summary.json").read_text())
    assert [e["step"] for e in summary["evals"]] == [2, 4] and summary["world_size"] == 2


@pytest.mark.slow
def test_zero3_exports_the_gathered_ema_weights(ebt_runs) -> None:
    z3 = ebt_runs["z3"]
    final = VLAPolicy.from_pretrained(z3 / "policy")
    obs = observation_for(final)
    # the last checkpoint's policy/ and the final export: the same EMA weights, the same actions
    assert_same_policy(z3 / "checkpoints" / "step_00000004" / "policy", final, obs)
    # ... and the same actions as the gathered policy finetune exported (result.eval_policy)
    assert torch.equal(torch.load(z3 / "export_pred.pt"), torch.load(z3 / "eval_pred.pt"))
    # the sharded EMA gathered = ZeRO-0's AveragedModel, up to the training differences
    ref = VLAPolicy.from_pretrained(ebt_runs["z0"] / "policy")
    assert max_weight_diff(final.state_dict(), ref.state_dict()) < WEIGHT_ATOL
    assert torch.allclose(predict(final, obs), predict(ref, obs), atol=ACTION_ATOL)
    # EMA is on: the export is not the live weights
    live = torch.load(z3 / "live.pt")
    exported = final.state_dict()
    assert max((live[k] - exported[k]).abs().max().item() for k in live) > 1e-4


@pytest.mark.slow
def test_zero3_gathered_live_weights_match_zero0(ebt_runs) -> None:
    z0, z3 = torch.load(ebt_runs["z0"] / "live.pt"), torch.load(ebt_runs["z3"] / "live.pt")
    assert any("lora_" in k for k in z3) and any(k.startswith("head.") for k in z3)
    assert max_weight_diff(z3, z0) < WEIGHT_ATOL


@pytest.mark.slow
def test_zero3_resume_continues_the_same_run(ebt_runs) -> None:
    """Model, optimizer, scheduler, RNG and the EMA shards of both ranks come back: measured exactly equal."""
    z3, resumed = ebt_runs["z3"], ebt_runs["z3_resumed"]
    assert losses(resumed) == losses(z3)
    assert "resumed from" in (resumed / "stdout.txt").read_text()
    a, b = VLAPolicy.from_pretrained(z3 / "policy"), VLAPolicy.from_pretrained(resumed / "policy")
    assert max_weight_diff(a.state_dict(), b.state_dict()) == 0.0


@pytest.mark.slow
def test_zero3_regression_head_composite_backbone(tmp_path) -> None:
    run = tmp_path / "reg"
    torchrun(run, [*REGRESSION_ARGS, "--run-dir", str(run), "--deepspeed-config", str(DS / "zero3.json")])
    got = losses(run)
    assert len(got) == 3 and all(torch.isfinite(torch.tensor(got)))
    final = VLAPolicy.from_pretrained(run / "policy")
    assert_same_policy(run / "checkpoints" / "step_00000003" / "policy", final, observation_for(final))
    # EMA off: the export holds exactly the weights DeepSpeed gathers from the partitions
    live, exported = torch.load(run / "live.pt"), final.state_dict()
    assert any(k.startswith("encoder.backbone.") for k in live)  # the backbone's own embeddings / projections
    assert all(torch.equal(live[k], exported[k]) for k in live)
    assert torch.equal(torch.load(run / "export_pred.pt"), torch.load(run / "eval_pred.pt"))


def test_zero3_split_keeps_everything_but_the_backbone_submodules_whole() -> None:
    from tests.policy_fixtures import make_policy
    from vla_ebt.train_backend import zero3_split

    policy = make_policy(mode="lora")
    backbone = policy.encoder.backbone
    modules, whole = zero3_split(policy)
    partitioned = {id(p) for child in backbone.children() for p in child.parameters()}
    assert {id(p) for p in whole} == {id(p) for p in policy.parameters()} - partitioned
    assert {id(p) for p in policy.head.parameters()} <= {id(p) for p in whole}
    assert {id(p) for p in policy.encoder.bridge.parameters()} <= {id(p) for p in whole}
    assert {id(p) for p in backbone.parameters(recurse=False)} <= {id(p) for p in whole}
    assert policy in modules and backbone in modules and policy.head in modules
    assert not any(m in modules for child in backbone.children() for m in child.modules())
    # a head parameter tied to a partitioned backbone weight cannot be both
    inner = next(m for child in backbone.children() for m in child.modules() if isinstance(m, torch.nn.Linear))
    policy.head.tied = inner.weight
    with pytest.raises(ValueError, match=r"head\.tied.*shared between the backbone"):
        zero3_split(policy)
