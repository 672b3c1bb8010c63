"""EBT head on two demonstrated modes from one context (goal_reach_batch(bimodal=True)).

Dim 2 of the target is +0.8 * ramp or -0.8 * ramp with a fair coin per sample. A chunk "lands" in
a mode when its last-step dim-2 value is > 0.4 (or < -0.4); |v| < 0.2 is the average of the modes.

Documented behaviour (width 64, depth 2, 300 steps, 2 inference steps):
- reference objective (start from noise): every random start lands on the average, like a
  regression head; the failure mode this file pins down.
- denoise objective (start from the noised target, opt-in): random starts land in *both*
  modes (roughly 15-30% each) but a large share (25-50%) still ends in between; it is the partial
  fix measured so far, not a full one.
- path objective (teacher-forced partial steps along noise -> target, opt-in): both modes at
  roughly 20-27% each with 24-35% average at 2 steps, less average with more steps (13-31% at 8);
  better than denoise, still short of "<= 20% average at 2 steps".
"""

import pytest
import torch

from tests.synthetic_tasks import goal_reach_batch, train_head
from vla_ebt.heads import EBTConfig, EBTHead, TrunkConfig

H, D, W = 8, 4, 64
STARTS = 32
CONTEXTS = 4


def _cfg(**kw) -> EBTConfig:
    return EBTConfig(trunk=TrunkConfig(width=W, depth=2, num_heads=4), horizon=H, action_dim=D, **kw)


def _coverage(head: EBTHead, num_steps: int = 2) -> dict[str, float]:
    """Fractions of STARTS random starts x CONTEXTS contexts per outcome (pooled)."""
    ctx, _ = goal_reach_batch(CONTEXTS, H, D, W, bimodal=True, generator=torch.Generator().manual_seed(100))
    with torch.random.fork_rng():
        torch.manual_seed(7)
        v = head.predict(ctx.repeat_interleave(STARTS), num_steps=num_steps).actions[:, -1, 2]
    return {"plus": (v > 0.4).float().mean().item(), "minus": (v < -0.4).float().mean().item(),
            "avg": (v.abs() < 0.2).float().mean().item()}


def _train(objective: str, steps: int = 300) -> EBTHead:
    torch.manual_seed(0)
    head = EBTHead(_cfg(objective=objective))
    train_head(head, steps=steps, bimodal=True, horizon=H, action_dim=D, width=W)
    return head


def test_default_objective_is_the_papers_reference_one() -> None:
    # denoise and path stay opt-in until one covers both modes without averaging (see ebt.py's docstring)
    assert EBTConfig().objective == "reference"


@pytest.mark.slow
def test_denoise_objective_reaches_both_modes_from_random_starts() -> None:
    cov = _coverage(_train("denoise"))
    assert cov["plus"] >= 0.10 and cov["minus"] >= 0.10, cov


@pytest.mark.slow
def test_path_objective_reaches_both_modes_and_averages_less_with_more_steps() -> None:
    head = _train("path")
    cov2, cov8 = _coverage(head, 2), _coverage(head, 8)
    assert cov2["plus"] >= 0.15 and cov2["minus"] >= 0.15 and cov2["avg"] <= 0.45, cov2
    assert cov8["plus"] >= 0.15 and cov8["minus"] >= 0.15 and cov8["avg"] <= 0.40, cov8


@pytest.mark.slow
def test_path_objective_is_accurate_on_a_unimodal_task_in_two_steps() -> None:
    torch.manual_seed(0)
    head = EBTHead(_cfg(objective="path"))
    train_head(head, steps=300, horizon=H, action_dim=D, width=W)
    ctx, target = goal_reach_batch(256, H, D, W, generator=torch.Generator().manual_seed(1))
    mean_err = (target - target.mean(0)).pow(2).mean().item()
    err = (head.predict(ctx, num_steps=2).actions - target).pow(2).mean().item()
    assert err < 0.05 * mean_err, (err, mean_err)


@pytest.mark.slow
def test_reference_objective_averages_the_modes() -> None:
    cov = _coverage(_train("reference"))
    assert cov["avg"] >= 0.9 and cov["plus"] <= 0.05 and cov["minus"] <= 0.05, cov
