"""The ``oxe_mix`` recipe: a PaliGemma-class backbone with LoRA trained on a mixture of converted
webdataset shards (two embodiments with different action/state dims), here with the tiny PaliGemma
fixture and small shards written by ``data_pipelines.shards.write_episodes``."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipelines.shards import write_episodes
from vla_ebt.data.episodes import Episode
from recipes.configs import recipes
from recipes.finetune import run
from vla_ebt.backbones.tiny import build_tiny_paligemma
from vla_ebt.policy import VLAPolicy

ROOT = Path(__file__).resolve().parents[2]
INSTRUCTIONS = ["pick up the red block", "open the top drawer", "push the blue cube to the left"]


def fixture_episodes(n: int, adim: int, sdim: int, seed: int, size: int = 16) -> list[Episode]:
    """n random-walk episodes (length 6-9) with adim-D actions, sdim-D states, size-px frames."""
    rng = np.random.default_rng(seed)
    out = []
    for e in range(n):
        T = 6 + e % 4
        action = rng.normal(size=(T, adim)).astype(np.float32)
        state = np.cumsum(rng.normal(size=(T, sdim)), 0).astype(np.float32)
        img = rng.integers(0, 255, (T, 1, 3, size, size), dtype=np.uint8)
        out.append(Episode(images=img, state=state, action=action, instruction=INSTRUCTIONS[e % 3], task="t",
                           success=True))
    return out


def write_fixture_shards(root: Path) -> dict[str, Path]:
    """Two converted datasets: "arm7" (7-D action, 8-D state, 3 shards) and "planar" (2-D / 2-D, 1 shard)."""
    dirs = {"arm7": root / "arm7", "planar": root / "planar"}
    write_episodes(fixture_episodes(12, 7, 8, seed=0), dirs["arm7"], "arm7", episodes_per_shard=4)
    write_episodes(fixture_episodes(6, 2, 2, seed=1), dirs["planar"], "planar", episodes_per_shard=6)
    return dirs


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("oxe")
    return {"shards": write_fixture_shards(root), "paligemma": build_tiny_paligemma(root / "tiny_paligemma")}


def small_oxe_cfg(assets, run_dir: Path, steps: int = 4):
    """The oxe_mix recipe with the tiny PaliGemma, a small head and the fixture shards (plain loop)."""
    cfg = recipes()["oxe_mix"]
    pc = cfg.policy
    pc = dataclasses.replace(pc, backbone=dataclasses.replace(pc.backbone, model=assets["paligemma"], image_size=64),
                             trunk=dataclasses.replace(pc.trunk, width=32, depth=1, num_heads=2),
                             bridge=dataclasses.replace(pc.bridge, max_prefix_tokens=8))
    return dataclasses.replace(
        cfg, policy=pc,
        data=dataclasses.replace(cfg.data, shards=tuple(str(p) for p in assets["shards"].values()), num_workers=0,
                                 shuffle_buffer=20),
        optim=dataclasses.replace(cfg.optim, steps=steps, batch_size=4, warmup_steps=2, log_every=1, ckpt_every=0),
        run_dir=str(run_dir), deepspeed="")


def test_recipe_is_the_gpu_config() -> None:
    cfg = recipes()["oxe_mix"]
    pc = cfg.policy
    assert pc.backbone.family == "paligemma" and pc.backbone.model == "google/paligemma-3b-pt-224"
    assert pc.finetune.mode == "lora" and pc.head == "ebt" and cfg.data.source == "shards"
    ds = json.loads((ROOT / cfg.deepspeed).read_text())
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] is True


def test_oxe_mix_trains_on_fixture_shards_and_saves_a_reloadable_policy(assets, tmp_path) -> None:
    cfg = small_oxe_cfg(assets, tmp_path / "run")
    summary = run(cfg, progress=False)
    assert summary["data_source"] == "shards" and summary["datasets"] == ["arm7", "planar"]
    assert "success" not in summary and not (tmp_path / "run" / "eval").exists()  # no sim: no closed-loop eval
    assert summary["train_steps"] == 4 and np.isfinite(summary["final_loss"])
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(np.isfinite(r["loss"]) for r in recs)
    policy = VLAPolicy.from_pretrained(tmp_path / "run" / "policy")
    assert policy.cfg.backbone.family == "paligemma" and policy.cfg.finetune.mode == "lora"
    assert policy.normalizer.names == ("arm7", "planar")
    assert (tmp_path / "run" / "policy" / "adapter_model.safetensors").exists()
    obs = {"images": torch.rand(2, 1, 3, 64, 64), "instruction": ["open the top drawer"] * 2,
           "state": torch.randn(2, 1, 8), "embodiment": torch.tensor([0, 1])}
    out = policy.predict_chunk(obs)
    assert out.actions.shape == (2, 8, 7) and torch.isfinite(out.actions).all()
    assert (out.actions[1, :, 2:] == 0).all()  # "planar" has 2 action dims: the padding stays 0


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


WORKER = """
import json, sys
sys.path.insert(0, {root!r})
import vla_ebt.distributed as D
orig = D.load_ds_config
def keep_bf16(path, micro_batch_size, grad_clip):  # what load_ds_config returns where CUDA is available
    cfg = orig(path, micro_batch_size, grad_clip)
    if json.loads(open(path).read()).get("bf16", {{}}).get("enabled"):
        cfg["bf16"]["enabled"] = True
    return cfg
D.load_ds_config = keep_bf16
from recipes import finetune
finetune.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_oxe_mix_under_deepspeed_zero2_bf16(assets, tmp_path) -> None:
    """The recipe's own DeepSpeed config (ZeRO-2, bf16 on), one process, with bf16 kept on as on a GPU
    (on CPU load_ds_config switches it off): it runs as torch autocast bf16, and the energies the EBT
    head reports are bf16 numbers."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(root=str(ROOT)))
    shards = [str(p) for p in assets["shards"].values()]
    cmd = [sys.executable, str(worker), "--recipe", "oxe_mix",
           "--policy.backbone.model", assets["paligemma"], "--policy.backbone.image-size", "64",
           "--policy.trunk.width", "32", "--policy.trunk.depth", "1", "--policy.trunk.num-heads", "2",
           "--policy.bridge.max-prefix-tokens", "8", "--data.shards", *shards, "--data.num-workers", "0",
           "--data.shuffle-buffer", "20", "--optim.steps", "3", "--optim.batch-size", "4",
           "--optim.warmup-steps", "1", "--optim.log-every", "1", "--optim.ckpt-every", "0",
           "--run-dir", str(tmp_path / "ds")]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "bf16: torch autocast" in p.stdout
    recs = [json.loads(ln) for ln in (tmp_path / "ds" / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in recs)
    for r in recs:  # computed in bf16: exactly representable as bf16
        for k in ("energy_start", "energy_end"):
            assert torch.tensor(r[k]).to(torch.bfloat16).item() == r[k], (k, r[k])
    summary = json.loads((tmp_path / "ds" / "summary.json").read_text())
    assert summary["train_steps"] == 3 and np.isfinite(summary["final_loss"])
    assert VLAPolicy.from_pretrained(tmp_path / "ds" / "policy").normalizer.names == ("arm7", "planar")
