"""A small VLAPolicy on the real pretrained composite backbone (EfficientNet-Lite0 + MiniLM)."""

from __future__ import annotations

import numpy as np
import torch

from vla_ebt.backbones import BackboneConfig
from vla_ebt.bridge import BridgeConfig
from vla_ebt.heads.trunk import TrunkConfig
from vla_ebt.normalize import DatasetStats, FeatureStats, Normalizer
from vla_ebt.policy import ExecutionConfig, FinetuneConfig, PolicyConfig, VLAPolicy

H, D, S = 8, 4, 6


def small_normalizer() -> Normalizer:
    rng = np.random.default_rng(0)
    stats = {
        "arm_a": DatasetStats(
            action=FeatureStats.from_array(rng.uniform(-2, 2, (400, D))),
            state=FeatureStats.from_array(rng.normal(size=(400, S))),
            num_episodes=4, num_steps=400,
        ),
        "arm_b": DatasetStats(  # a second embodiment with fewer action/state dims (padded)
            action=FeatureStats.from_array(rng.uniform(0, 1, (300, 3))),
            state=FeatureStats.from_array(rng.normal(size=(300, 4))),
            num_episodes=3, num_steps=300,
        ),
    }
    return Normalizer(stats, max_action_dim=D, max_state_dim=S)


def small_config(head: str = "ebt", mode: str = "lora", **kw) -> PolicyConfig:
    return PolicyConfig(
        backbone=BackboneConfig(image_size=64),
        finetune=FinetuneConfig(mode=mode, lora_r=4, lora_alpha=8),
        bridge=BridgeConfig(max_prefix_tokens=8),
        head=head,
        trunk=TrunkConfig(width=32, depth=1, num_heads=2),
        horizon=H, action_dim=D, state_dim=S,
        execution=ExecutionConfig(n_action_steps=3),
        **kw,
    )


def make_policy(head: str = "ebt", mode: str = "lora", **kw) -> VLAPolicy:
    torch.manual_seed(0)
    return VLAPolicy(small_config(head, mode, **kw), small_normalizer())


def make_batch(b: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "images": torch.rand(b, 1, 3, 64, 64, generator=g),
        "instruction": ["pick up the red block", "open the drawer", "close the drawer", "push the button"][:b] * (b // 4 or 1),
        "state": torch.randn(b, 1, S, generator=g),
        "embodiment": torch.tensor([0, 1] * (b // 2)),
        "action": torch.rand(b, H, D, generator=g) * 2 - 1,
        "action_mask": torch.ones(b, H, dtype=torch.bool),
    }


def save_seed_policy(path, head: str = "ebt", seed: int = 0) -> str:
    """The fixture policy of ``head`` standing in for training seed ``seed`` (seed 0: as built; others:
    head weights moved by 0.05 x N(0, 1) drawn from ``seed``), saved to ``path``; returns ``str(path)``."""
    p = make_policy(head)
    if seed:
        torch.manual_seed(seed)
        for prm in p.head.parameters():
            prm.data.add_(0.05 * torch.randn_like(prm))
    p.save_pretrained(path)
    return str(path)
