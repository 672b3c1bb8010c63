"""Every periodic checkpoint holds ``policy/``, a save_pretrained folder of the weights evaluated at that
step (EMA if on): it loads with ``VLAPolicy.from_pretrained`` and predicts what the in-memory EMA
policy predicted at that step; the last one predicts what the final export predicts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.policy_fixtures import make_batch, make_policy
from vla_ebt.policy import VLAPolicy
from vla_ebt.train import OptimConfig, list_checkpoints, train_policy


def observation_for(policy: VLAPolicy, batch: int = 4, seed: int = 0) -> dict:
    """A random observation that fits ``policy`` (image size, views, state dim; embodiment 0)."""
    c = policy.cfg
    g = torch.Generator().manual_seed(seed)
    size = c.backbone.image_size
    return {"images": torch.rand(batch, c.num_views, 3, size, size, generator=g),
            "instruction": ["reach the red target"] * batch,
            "state": torch.randn(batch, c.obs_steps, c.state_dim, generator=g),
            "embodiment": torch.zeros(batch, dtype=torch.long)}


def predict(policy: VLAPolicy, obs: dict, seed: int = 123) -> torch.Tensor:
    torch.manual_seed(seed)
    return policy.predict_chunk(obs).actions


def assert_same_policy(a: str | Path | VLAPolicy, b: str | Path | VLAPolicy, obs: dict) -> None:
    """Two policies (objects or save_pretrained folders) with equal weights and equal actions on ``obs``."""
    pa = a if isinstance(a, VLAPolicy) else VLAPolicy.from_pretrained(a)
    pb = b if isinstance(b, VLAPolicy) else VLAPolicy.from_pretrained(b)
    sa, sb = pa.state_dict(), pb.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])][:5]
    assert torch.equal(predict(pa.eval(), obs), predict(pb.eval(), obs))


def _batches():
    batches = [make_batch(4, seed=s) for s in range(3)]
    i = 0
    while True:
        yield batches[i % 3]
        i += 1


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["frozen", "lora"])
def test_each_checkpoint_policy_predicts_like_the_ema_policy_of_its_step(tmp_path, mode) -> None:
    policy = make_policy(mode=mode)
    obs = make_batch(4, seed=7)
    cfg = OptimConfig(steps=6, warmup_steps=2, lr=1e-3, ema_decay=0.8, log_every=1, ckpt_every=2, ckpt_keep=3,
                      eval_every=2, tensorboard=False)
    at_step: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def on_eval(step: int, ema_policy: VLAPolicy) -> dict[str, float]:  # runs right after the checkpoint
        at_step[step] = (predict(ema_policy, obs), predict(policy, obs))
        return {"success": 0.0}

    res = train_policy(policy, _batches(), cfg, run_dir=tmp_path, progress=False, on_eval=on_eval)
    ckpts = list_checkpoints(tmp_path / "checkpoints")
    assert [c.name for c in ckpts] == ["step_00000002", "step_00000004", "step_00000006"]
    for ckpt in ckpts:
        ema_actions, live_actions = at_step[int(ckpt.name.split("_")[1])]
        loaded = VLAPolicy.from_pretrained(ckpt / "policy")
        got = predict(loaded, obs)
        assert torch.equal(got, ema_actions), ckpt.name
        assert not torch.allclose(got, live_actions), ckpt.name  # the EMA weights, not the live ones
    assert not torch.allclose(at_step[2][0], at_step[6][0])  # the checkpoints differ from each other
    # the last checkpoint holds exactly what the final export holds
    res.eval_policy.save_pretrained(tmp_path / "final")
    assert_same_policy(ckpts[-1] / "policy", tmp_path / "final", obs)
    assert_same_policy(ckpts[-1] / "policy", res.eval_policy, obs)
    if mode == "lora":
        assert (ckpts[0] / "policy" / "adapter_model.safetensors").exists()


def test_checkpoint_policy_without_ema_is_the_live_policy(tmp_path) -> None:
    policy = make_policy(mode="frozen")
    cfg = OptimConfig(steps=2, warmup_steps=1, lr=1e-3, ema_decay=0.0, ckpt_every=2, tensorboard=False)
    res = train_policy(policy, _batches(), cfg, run_dir=tmp_path, progress=False)
    assert res.eval_policy is policy
    assert_same_policy(tmp_path / "checkpoints" / "step_00000002" / "policy", policy, make_batch(4, seed=7))
