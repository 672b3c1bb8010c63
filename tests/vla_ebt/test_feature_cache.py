"""The frozen-backbone feature cache: same loss and gradients as the uncached backbone, every training
frame a hit after filling, nothing in the state dict or EMA copies changes, save / load round trip,
and the recipe path (``finetune.run`` with a frozen backbone) installs it."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.policy_fixtures import make_batch, make_policy
from vla_ebt.feature_cache import FrozenFeatureCache


def _loss_and_grads(policy, batch):
    policy.zero_grad(set_to_none=True)
    loss, _ = policy.compute_loss(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad and p.grad is not None}
    return loss.item(), grads


def test_cached_frozen_backbone_gives_the_same_loss_and_gradients(tmp_path):
    policy = make_policy("regression", mode="frozen")
    batch = make_batch(8, seed=1)
    keys_before = set(policy.state_dict())
    loss0, grads0 = _loss_and_grads(policy, batch)

    cache = FrozenFeatureCache()
    n = cache.fill(policy.encoder.backbone, [(batch["images"][:5], batch["instruction"][:5]),
                                             (batch["images"][5:], batch["instruction"][5:])])
    assert n == 8 and cache.stats()["misses"] > 0
    cache.hits = cache.misses = 0
    loss1, grads1 = _loss_and_grads(policy, batch)
    assert cache.stats()["hit_rate"] == 1.0  # 8 images + 8 instructions, all looked up
    assert loss1 == pytest.approx(loss0, rel=1e-5, abs=1e-6)
    assert set(grads1) == set(grads0)  # the backbone's own projections still train
    assert any("image_proj" in k for k in grads1)
    for k in grads0:
        torch.testing.assert_close(grads1[k], grads0[k], rtol=1e-4, atol=1e-6)
    assert set(policy.state_dict()) == keys_before
    ema = copy.deepcopy(policy)  # what AveragedModel does: the tables are shared, not copied
    assert ema.compute_loss(batch)[0].item() == pytest.approx(loss0, rel=1e-5, abs=1e-6)

    path = cache.save(tmp_path / "f.safetensors")
    cache.remove()
    assert "forward" not in vars(policy.encoder.backbone.image_encoder)
    loaded = FrozenFeatureCache.load(path).install(policy.encoder.backbone)
    assert len(loaded) == len(cache)
    loss2, _ = _loss_and_grads(policy, batch)
    assert loaded.stats()["hit_rate"] == 1.0 and loss2 == pytest.approx(loss0, rel=1e-5, abs=1e-6)
    other = make_batch(4, seed=7)  # unseen frames: misses run the encoder, the result is still right
    loaded.grow = False
    loaded.remove()
    ref = policy.compute_loss(other)[0].item()
    loaded.install(policy.encoder.backbone)
    assert policy.compute_loss(other)[0].item() == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert loaded.stats()["misses"] == 4 and len(loaded) == len(cache)


def test_only_a_frozen_backbone_is_cacheable():
    policy = make_policy("regression", mode="lora")
    with pytest.raises(ValueError, match="frozen"):
        FrozenFeatureCache().install(policy.encoder.backbone)


@pytest.mark.slow
def test_finetune_with_a_frozen_backbone_trains_the_same_with_and_without_the_cache(tmp_path, capsys):
    """recipes/finetune.py installs the cache for a frozen backbone (computed once, then read back from
    the demo cache folder): the loss curve equals the uncached run's, and a second run loads it."""
    import dataclasses
    import json

    from recipes.finetune import run
    from tests.recipes.test_studies import _tiny_reach2d_recipe

    cfg = _tiny_reach2d_recipe(tmp_path)
    cfg = dataclasses.replace(
        cfg, policy=dataclasses.replace(cfg.policy, finetune=dataclasses.replace(cfg.policy.finetune, mode="frozen")),
        optim=dataclasses.replace(cfg.optim, steps=4, log_every=1, tensorboard=False),
        eval=dataclasses.replace(cfg.eval, episodes_per_task=0, baselines=False))

    def losses(name, **data_kw):
        c = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data_kw), run_dir=str(tmp_path / name))
        run(c, progress=False)
        return [json.loads(ln)["loss"] for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    plain = losses("plain", feature_cache=False)
    assert "[feature cache]" not in capsys.readouterr().out
    filled = losses("filled")
    assert "[feature cache] encoded" in capsys.readouterr().out
    loaded = losses("loaded")
    assert "[feature cache]" in capsys.readouterr().out and list((tmp_path / "cache" / "features").glob("*.safetensors"))
    assert filled == loaded  # computed or read back: bit-identical features, same RNG stream
    assert filled == pytest.approx(plain, rel=1e-4)
