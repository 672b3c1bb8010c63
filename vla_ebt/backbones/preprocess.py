"""Image-side preprocessing shared by the tensor-path backbones (composite, open_clip).

Backbones receive raw camera images as float tensors in [0, 1]; these helpers validate the layout and
apply the encoder's resize + mean/std normalisation inside the model, so callers never need to know
an encoder's preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_images(images: Tensor, instructions: Sequence[str]) -> tuple[int, int]:
    """Validate ``images`` (B, V, 3, H, W) against ``instructions`` (B strings); return (B, V)."""
    if images.dim() != 5 or images.shape[2] != 3:
        raise ValueError(f"images must be (B, V, 3, H, W), got shape {tuple(images.shape)}")
    if len(instructions) != images.shape[0]:
        raise ValueError(f"got {len(instructions)} instructions for a batch of {images.shape[0]} images")
    return images.shape[0], images.shape[1]


def resize_images(images: Tensor, size: int | tuple[int, int], mode: str = "bilinear") -> Tensor:
    """(..., 3, H, W) in [0, 1] -> float (..., 3, h, w) resized to ``size`` (antialiased when
    downsampling); returned as float unchanged when it already has that size."""
    h, w = (size, size) if isinstance(size, int) else size
    x = images.float()
    if x.shape[-2:] == (h, w):
        return x
    mode = mode if mode in ("bilinear", "bicubic") else "bilinear"
    lead = x.shape[:-3]
    y = F.interpolate(x.reshape(-1, *x.shape[-3:]), size=(h, w), mode=mode, align_corners=False, antialias=True)
    return y.reshape(*lead, *y.shape[-3:])


def resize_and_normalize(
    images: Tensor,
    size: int | tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    mode: str = "bilinear",
) -> Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3, h, w) resized to ``size`` and normalised per channel.

    Resizing is skipped when the images already have the target size; downsampling is antialiased.
    """
    x = resize_images(images, size, mode)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t
