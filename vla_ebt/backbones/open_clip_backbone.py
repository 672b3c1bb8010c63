"""Family "open_clip": an open_clip CLIP model's patch tokens + per-token text outputs.

``BackboneConfig.model`` is anything ``open_clip.create_model`` accepts: a built-in architecture name
with ``checkpoint`` = a weights file or pretrained tag ("ViT-B-32" + "/path/open_clip_model.safetensors"),
``"hf-hub:org/repo"``, or ``"local-dir:/path"`` (a folder with ``open_clip_config.json`` and weights,
which is what :func:`vla_ebt.backbones.tiny.build_tiny_open_clip` writes).

Tokens come from ``model.forward_intermediates`` (last block, final LayerNorm applied): image patch tokens
without the class token, and the text transformer's per-position outputs truncated to
``max_text_tokens``. Each is projected to D_b by a new Linear, with a per-camera embedding on image
tokens and a type embedding on text tokens. The text mask is ``token id != pad id``.

``BackboneConfig.image_size`` is passed as ``force_image_size`` (open_clip interpolates ViT position
embeddings when loading). ``extra`` options:
    width:        D_b (default: the text tower width).
    allow_random: "true" to accept a model without pretrained weights (otherwise it is an error).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Backbone, BackboneConfig, PrefixOutput, register_backbone
from .preprocess import check_images, resize_and_normalize

# Suffixes: transformer MLPs and nn.MultiheadAttention blocks (peft wraps MHA, incl. its out_proj).
OPEN_CLIP_LORA_TARGETS = ["attn", "c_fc", "c_proj"]


def _pad_id(tokenizer: object) -> int:
    """Padding id of an open_clip tokenizer (HF-backed tokenizers carry it; SimpleTokenizer pads with 0)."""
    hf_tok = getattr(tokenizer, "tokenizer", None)
    pad = getattr(hf_tok, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def _drop_unused_heads(clip: nn.Module) -> None:
    """Remove the contrastive projections and logit scale: token outputs never use them, and parameters
    without gradients break "full" fine-tuning under DDP."""
    heads = [
        (getattr(clip, "visual", None), "proj"),
        (clip, "text_projection"),
        (getattr(clip, "text", None), "text_projection"),
        (clip, "logit_scale"),
        (clip, "logit_bias"),
    ]
    for owner, name in heads:
        if owner is not None and isinstance(getattr(owner, name, None), (nn.Parameter, nn.Linear)):
            setattr(owner, name, None)


def text_valid_mask(ids: Tensor, pad_id: int) -> Tensor:
    """ids (B, L) right-padded -> (B, L) bool, True up to the last non-pad token.

    (A pad id can also be an ordinary token: CLIP's SimpleTokenizer pads with 0, which is "!".)
    """
    pos = torch.arange(ids.shape[1], device=ids.device)
    last = torch.where(ids != pad_id, pos, -1).max(dim=1).values
    return pos[None, :] <= last[:, None]


class OpenCLIPBackbone(Backbone):
    """images (B, V, 3, H, W) in [0, 1] + B instructions -> (B, V * P + max_text_tokens, D_b).

    P = number of ViT patches per image.
    """

    family = "open_clip"

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        import open_clip

        allow_random = cfg.extra.get("allow_random", "false").lower() in ("1", "true", "yes")
        self.clip = open_clip.create_model(
            cfg.model,
            pretrained=cfg.checkpoint,
            force_image_size=cfg.image_size,
            require_pretrained=not allow_random,
        )
        _drop_unused_heads(self.clip)
        self.tokenizer = open_clip.get_tokenizer(cfg.model)
        self.pad_id = _pad_id(self.tokenizer)
        pre = open_clip.get_model_preprocess_cfg(self.clip)
        size = pre["size"]
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)
        self.mean, self.std = tuple(pre["mean"]), tuple(pre["std"])
        self.interpolation = str(pre.get("interpolation", "bicubic"))
        self.max_cameras = cfg.max_cameras
        self.max_text_tokens = cfg.max_text_tokens

        vision_width, text_width = self._tower_widths()
        self.width = int(cfg.extra.get("width", text_width))
        self.image_proj = nn.Linear(vision_width, self.width)
        self.text_proj = nn.Linear(text_width, self.width)
        self.camera_embed = nn.Parameter(torch.randn(cfg.max_cameras, self.width) * 0.02)
        self.text_type_embed = nn.Parameter(torch.randn(self.width) * 0.02)

    @torch.no_grad()
    def _tower_widths(self) -> tuple[int, int]:
        """Token widths of the two towers, read off a 1-sample forward (works for any tower type)."""
        was_training = self.clip.training
        self.clip.eval()
        image = torch.zeros(1, 3, *self.image_size)
        text = self.tokenizer([""])
        out = self._intermediates(image, text)
        self.clip.train(was_training)
        return out["image_intermediates"][0].shape[-1], out["text_intermediates"][0].shape[-1]

    def _intermediates(self, image: Tensor, text: Tensor) -> dict:
        return self.clip.forward_intermediates(
            image=image,
            text=text,
            image_indices=1,
            text_indices=1,
            normalize_intermediates=True,
            intermediates_only=True,
            image_output_fmt="NLC",
        )

    def pretrained_modules(self) -> dict[str, nn.Module]:
        return {"clip": self.clip}

    def lora_target_modules(self) -> list[str]:
        return list(OPEN_CLIP_LORA_TARGETS)

    def forward(self, images: Tensor, instructions: list[str]) -> PrefixOutput:
        b, v = check_images(images, instructions)
        if v > self.max_cameras:
            raise ValueError(f"got {v} cameras but BackboneConfig.max_cameras is {self.max_cameras}")
        device = self.image_proj.weight.device
        pixels = resize_and_normalize(
            images.flatten(0, 1).to(device), self.image_size, self.mean, self.std, self.interpolation
        )
        # The text tower needs its full context (fixed position table); it is causal, so cutting its
        # outputs to the first max_text_tokens equals encoding the truncated text.
        ids = self.tokenizer(list(instructions)).to(device)
        out = self._intermediates(pixels, ids)
        patches = out["image_intermediates"][0]  # (B*V, P, Dv)
        image_tokens = self.image_proj(patches).view(b, v, -1, self.width) + self.camera_embed[:v, None, :]
        image_tokens = image_tokens.flatten(1, 2)
        text_hidden = out["text_intermediates"][0][:, : self.max_text_tokens]
        text_tokens = self.text_proj(text_hidden) + self.text_type_embed
        text_mask = text_valid_mask(ids, self.pad_id)[:, : self.max_text_tokens]
        image_mask = torch.ones(b, image_tokens.shape[1], dtype=torch.bool, device=device)
        return PrefixOutput(
            tokens=torch.cat([image_tokens, text_tokens], dim=1),
            mask=torch.cat([image_mask, text_mask], dim=1),
        )


@register_backbone("open_clip")
def build_open_clip(cfg: BackboneConfig) -> OpenCLIPBackbone:
    return OpenCLIPBackbone(cfg)
