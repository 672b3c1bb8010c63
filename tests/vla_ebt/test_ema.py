"""The weights' EMA: without warm-up it is torch's EMA (copy, then lerp by 1 - decay); with
``optim.ema_warmup`` update n uses min(decay, (1 + n) / (10 + n)), so a short run's average follows the
trained weights instead of keeping the initialization; a bad decay is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from tests.policy_fixtures import make_policy
from vla_ebt.train import OptimConfig, train_policy
from vla_ebt.train_backend import ema_decay_at, ema_multi_avg_fn

torch.set_num_threads(1)


def test_warmup_decay_rises_from_small_to_the_configured_decay() -> None:
    assert ema_decay_at(0.999, 1, warmup=False) == 0.999
    got = [ema_decay_at(0.999, n, warmup=True) for n in (1, 80, 10_000)]
    assert got == pytest.approx([2 / 11, 0.9, 0.999])
    assert all(a < b for a, b in zip(got, got[1:]))
    assert ema_decay_at(0.5, 100, warmup=True) == 0.5  # never above the configured decay
    # the cap stays below 0.99 for the first 890 updates: there 0.99 and 0.999 average alike
    assert ema_decay_at(0.999, 889, True) == ema_decay_at(0.99, 889, True) < 0.99 == ema_decay_at(0.99, 890, True)


def _walk(update_fn, steps: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(EMA, live) weights of a small module whose weights take ``steps`` random steps."""
    torch.manual_seed(seed)
    live = nn.Linear(3, 2)
    ema = AveragedModel(live, multi_avg_fn=update_fn, use_buffers=True)
    for _ in range(steps):
        with torch.no_grad():
            live.weight.add_(torch.randn_like(live.weight))
        ema.update_parameters(live)
    return ema.module.weight.detach().clone(), live.weight.detach().clone()


def test_without_warmup_the_update_is_torchs_ema() -> None:
    ours, _ = _walk(ema_multi_avg_fn(0.9), 20)
    torchs, _ = _walk(get_ema_multi_avg_fn(0.9), 20)
    assert torch.allclose(ours, torchs, atol=1e-6)


def test_warmup_update_follows_the_schedule_and_tracks_the_live_weights() -> None:
    steps, decay = 12, 0.999
    torch.manual_seed(0)
    live = nn.Linear(3, 2)
    expected = None
    torch.manual_seed(0)
    ema = AveragedModel(nn.Linear(3, 2), multi_avg_fn=ema_multi_avg_fn(decay, warmup=True), use_buffers=True)
    for n in range(steps):
        with torch.no_grad():
            live.weight.add_(torch.randn_like(live.weight))
        ema.update_parameters(live)
        w = live.weight.detach().clone()
        expected = w if expected is None else ema_decay_at(decay, n, True) * expected + (1 - ema_decay_at(decay, n, True)) * w
    assert torch.allclose(ema.module.weight, expected, atol=1e-6)
    warm, live_w = _walk(ema_multi_avg_fn(decay, warmup=True), steps)
    plain, _ = _walk(ema_multi_avg_fn(decay), steps)
    first, _ = _walk(ema_multi_avg_fn(decay), 1)  # the copy taken at the first update
    # without warm-up the average is still almost the first copy; with it, near the trained weights
    assert (plain - first).norm() < 0.1 * (live_w - first).norm()
    assert (warm - live_w).norm() < 0.5 * (plain - live_w).norm()


def test_bad_decay_is_refused() -> None:
    with pytest.raises(ValueError, match=r"optim.ema_decay must be in \[0, 1\], got 1.5"):
        ema_multi_avg_fn(1.5)


def test_training_with_ema_warmup_ends_nearer_the_trained_weights(tmp_path) -> None:
    """A 10-step run at decay 0.999: without warm-up the evaluated EMA head is still near the copy taken
    after the first step, far from the trained head; with warm-up it is much nearer the trained head."""
    from tests.policy_fixtures import make_batch

    def batches():
        while True:
            yield make_batch(4, seed=0)

    gap = {}
    for warmup in (False, True):
        policy = make_policy()
        cfg = OptimConfig(steps=10, warmup_steps=1, lr=1e-2, ema_decay=0.999, ema_warmup=warmup, log_every=5,
                          tensorboard=False)
        result = train_policy(policy, batches(), cfg, progress=False)
        assert isinstance(result.eval_policy, type(policy)) and result.eval_policy is not policy
        ema_head = dict(result.eval_policy.head.named_parameters())
        live = dict(policy.head.named_parameters())
        gap[warmup] = float(sum((ema_head[k] - live[k]).detach().norm() ** 2 for k in live) ** 0.5)
    assert 0 < gap[True] < 0.5 * gap[False], gap
