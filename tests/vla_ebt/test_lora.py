"""Fine-tuning modes: frozen / LoRA / full, adapter training, merge, and adapter-only save / load."""

from __future__ import annotations

import pytest
import torch

from vla_ebt.backbones import BackboneConfig, build_backbone, tiny
from vla_ebt.lora import (
    apply_finetune_mode,
    count_parameters,
    load_lora,
    lora_state_dict,
    merge_lora,
    resolve_target_modules,
    save_lora,
)

INSTRUCTIONS = ["pick up the red block", "open the drawer"]


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, BackboneConfig]:
    root = tmp_path_factory.mktemp("tiny_lora")
    return {
        "paligemma": BackboneConfig(family="paligemma", model=tiny.build_tiny_paligemma(root / "pg")),
        "idefics3": BackboneConfig(family="idefics3", model=tiny.build_tiny_idefics3(root / "id3")),
        "open_clip": BackboneConfig(
            family="open_clip", model="local-dir:" + tiny.build_tiny_open_clip(root / "oc"), image_size=64
        ),
        # Real EfficientNet-Lite0 (LoRA on its 1x1 convs) + a tiny BERT text side.
        "composite": BackboneConfig(image_size=64, extra={"text_model": tiny.build_tiny_text_encoder(root / "bert")}),
    }


FAMILIES = ["paligemma", "idefics3", "open_clip", "composite"]


def _images() -> torch.Tensor:
    return torch.rand(2, 1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _loss(backbone, images) -> torch.Tensor:
    """Regress the valid prefix tokens onto a fixed random target."""
    out = backbone(images, INSTRUCTIONS)
    target = torch.randn(out.tokens.shape[1:], generator=torch.Generator().manual_seed(2))
    return ((out.tokens - target)[out.mask] ** 2).mean()


def _pretrained_params(backbone) -> dict[str, torch.Tensor]:
    """Checkpoint weights by name (peft's ".base_layer" wrapping removed, so names survive a merge)."""
    return {
        f"{prefix}.{name}".replace(".base_layer", ""): p
        for prefix, module in backbone.pretrained_modules().items()
        for name, p in module.named_parameters()
        if "lora_" not in name
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_adapters_only_and_merges(configs, family, tmp_path) -> None:
    backbone = build_backbone(configs[family])
    images = _images()
    with torch.no_grad():
        base_out = backbone.eval()(images, INSTRUCTIONS).tokens

    adapted = apply_finetune_mode(backbone, "lora", r=4, alpha=8)
    assert adapted and adapted == backbone.lora_modules and backbone.finetune_mode == "lora"
    base = _pretrained_params(backbone)
    assert base and not any(p.requires_grad for p in base.values())
    before = {k: v.detach().clone() for k, v in base.items()}
    lora = {n: p for n, p in backbone.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())

    backbone.train()
    opt = torch.optim.Adam([p for p in backbone.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(3):
        opt.zero_grad()
        _loss(backbone, images).backward()
        opt.step()
    for name, p in lora.items():  # after step 1 lora_B != 0, so every adapter matrix gets gradient
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name, p in base.items():
        assert p.grad is None, name
        assert torch.equal(p.detach(), before[name]), name

    backbone.eval()
    with torch.no_grad():
        adapted_out = backbone(images, INSTRUCTIONS)
    # The adapters changed the prefix (beyond the backbone's own trainable projection layers).
    if family in ("paligemma", "idefics3"):
        assert (adapted_out.tokens - base_out).abs().max() > 1e-4

    save_lora(backbone, tmp_path / "adapter.safetensors")
    assert set(lora_state_dict(backbone)) and all("lora_" in k for k in lora_state_dict(backbone))
    pretrained_roots = set(backbone.pretrained_modules())
    own_layers = {k: v for k, v in backbone.state_dict().items() if k.split(".")[0] not in pretrained_roots}

    merged = merge_lora(backbone)
    assert merged == adapted and not any("lora_" in n for n, _ in backbone.named_parameters())
    with torch.no_grad():
        merged_out = backbone(images, INSTRUCTIONS)
    torch.testing.assert_close(merged_out.tokens, adapted_out.tokens, atol=1e-5, rtol=1e-4)
    assert any(not torch.equal(p.detach(), before[n]) for n, p in _pretrained_params(backbone).items())

    # Adapter-only file + the backbone's own layers restore the adapted model on a fresh backbone.
    fresh = build_backbone(configs[family])
    assert load_lora(fresh, tmp_path / "adapter.safetensors") == adapted
    fresh.load_state_dict(own_layers, strict=False)
    with torch.no_grad():
        restored = fresh.eval()(images, INSTRUCTIONS)
    torch.testing.assert_close(restored.tokens, adapted_out.tokens, atol=1e-5, rtol=1e-4)


def test_frozen_and_full_modes(configs) -> None:
    backbone = build_backbone(configs["composite"])
    assert apply_finetune_mode(backbone, "frozen") == []
    pretrained = _pretrained_params(backbone)
    assert not any(p.requires_grad for p in pretrained.values())
    own = [p for n, p in backbone.named_parameters() if n.split(".")[0] not in backbone.pretrained_modules()]
    assert own and all(p.requires_grad for p in own)  # new projections / embeddings still train
    backbone.train()
    assert not backbone.image_encoder.training and not backbone.text_encoder.training
    assert backbone.image_proj.training
    _loss(backbone, _images()).backward()
    assert all(p.grad is None for p in pretrained.values())
    assert all(p.grad is not None for p in own)

    apply_finetune_mode(backbone, "full")
    assert all(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert backbone.image_encoder.training and backbone.text_encoder.training
    assert count_parameters(backbone, trainable_only=True) == count_parameters(backbone)


def test_lora_keeps_batchnorm_statistics(configs) -> None:
    backbone = build_backbone(configs["composite"])
    apply_finetune_mode(backbone, "lora", r=2, alpha=4)
    bn = backbone.image_encoder.net._bn0
    stats = bn.running_mean.clone()
    backbone.train()
    assert not bn.training
    with torch.no_grad():
        backbone(_images(), INSTRUCTIONS)
    assert torch.equal(bn.running_mean, stats)


def test_target_resolution_and_errors(configs) -> None:
    backbone = build_backbone(configs["paligemma"])
    selected, _ = resolve_target_modules(backbone, backbone.lora_target_modules())
    assert selected and all(".language_model." in n for n in selected)  # default: LM only
    with_vision, _ = resolve_target_modules(backbone, ["q_proj"])
    assert any("vision_tower" in n for n in with_vision)
    with pytest.raises(ValueError, match="match no"):
        apply_finetune_mode(backbone, "lora", target_modules=["does_not_exist"])
    with pytest.raises(ValueError, match="finetune mode"):
        apply_finetune_mode(backbone, "partial")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no LoRA adapters"):
        merge_lora(backbone)
    apply_finetune_mode(backbone, "lora", r=2, alpha=4)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_finetune_mode(backbone, "full")
