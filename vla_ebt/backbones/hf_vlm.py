"""HF transformers vision-language models as backbones: families "paligemma" and "idefics3".

``BackboneConfig.model`` is an HF id (``google/paligemma-3b-pt-224``,
``HuggingFaceTB/SmolVLM-256M-Instruct``) or a local ``save_pretrained`` directory; both load through
``<ModelClass>.from_pretrained`` + ``AutoProcessor.from_pretrained``. The prefix is the language
model's last hidden states over the whole prompt (image tokens of every camera + instruction tokens),
D_b = the language model's hidden size, mask = the processor's attention mask (False on padding).

Images go through the model's own processor (resize, rescale is skipped because inputs are already in
[0, 1], mean/std); the processor decides the resolution, so ``BackboneConfig.image_size`` is unused here.

``extra`` options:
    dtype:              weights dtype, "float32" (default), "bfloat16" or "float16"; outputs are float32.
    prompt:             template with ``{images}`` and ``{instruction}`` (default "{images}{instruction}").
    do_image_splitting: idefics3 only, "false" (default) encodes each camera image as one tile.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .base import Backbone, BackboneConfig, PrefixOutput, register_backbone
from .preprocess import check_images

# Default LoRA targets: attention + MLP projections of the language model only (``re:`` = full-name
# regex, see vla_ebt.lora). Pass explicit target_modules to also adapt the vision tower.
_LM_PROJ = r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
PALIGEMMA_LORA_TARGETS = [r"re:.*language_model\..*" + _LM_PROJ]
IDEFICS3_LORA_TARGETS = [r"re:.*text_model\..*" + _LM_PROJ]

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "pixel_attention_mask")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _parse_bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise ValueError(f"expected a boolean string, got {value!r}")


class HFVLMBackbone(Backbone):
    """images (B, V, 3, H, W) in [0, 1] + B instructions -> LM hidden states (B, T, D_b), mask (B, T).

    T = V * (image tokens per image + family-specific wrapper tokens) + instruction tokens, padded to the
    longest prompt in the batch (right padding). Instructions longer than ``max_text_tokens`` tokens are cut.
    """

    def __init__(
        self,
        cfg: BackboneConfig,
        family: str,
        model_cls: type,
        lora_targets: list[str],
        processor_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        from transformers import AutoProcessor

        self.family = family
        dtype_name = cfg.extra.get("dtype", "float32")
        if dtype_name not in _DTYPES:
            raise ValueError(f"backbone.extra.dtype must be one of {sorted(_DTYPES)}, got {dtype_name!r}")
        # Keep the multimodal base model (vision tower + connector + LM); the LM head is unused.
        self.model = model_cls.from_pretrained(cfg.model, dtype=_DTYPES[dtype_name]).model
        self.processor = AutoProcessor.from_pretrained(cfg.model)
        self.processor.tokenizer.padding_side = "right"
        self.width = self.model.config.get_text_config().hidden_size
        self.max_text_tokens = cfg.max_text_tokens
        self.prompt = cfg.extra.get("prompt", "{images}{instruction}")
        self._lora_targets = list(lora_targets)
        self._processor_kwargs = dict(processor_kwargs or {})

    def pretrained_modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def lora_target_modules(self) -> list[str]:
        return list(self._lora_targets)

    def _truncate(self, instruction: str) -> str:
        """Cut an instruction to ``max_text_tokens`` tokenizer tokens (left unchanged when it fits)."""
        ids = self.processor.tokenizer(instruction, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_text_tokens:
            return instruction
        return self.processor.tokenizer.decode(ids[: self.max_text_tokens])

    def build_inputs(self, images: Tensor, instructions: list[str]) -> dict[str, Tensor]:
        """Run the processor: images (B, V, 3, H, W) + instructions -> model keyword inputs on the model device."""
        b, v = check_images(images, instructions)
        image_token = self.processor.image_token
        texts = [self.prompt.format(images=image_token * v, instruction=self._truncate(s)) for s in instructions]
        pixels = images.detach().float().cpu().clamp(0.0, 1.0)
        nested = [[pixels[i, j] for j in range(v)] for i in range(b)]
        with warnings.catch_warnings():
            # PaliGemmaProcessor builds unused "labels" via np.array(...), which warns under NumPy 2.
            warnings.simplefilter("ignore", DeprecationWarning)
            enc = self.processor(
                images=nested,
                text=texts,
                padding="longest",
                return_tensors="pt",
                do_rescale=False,
                **self._processor_kwargs,
            )
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        out = {}
        for key in _MODEL_INPUTS:
            if key in enc:
                value = enc[key].to(device)
                out[key] = value.to(dtype) if key == "pixel_values" else value
        return out

    def forward(self, images: Tensor, instructions: list[str]) -> PrefixOutput:
        inputs = self.build_inputs(images, instructions)
        hidden = self.model(**inputs, use_cache=False).last_hidden_state
        return PrefixOutput(tokens=hidden.float(), mask=inputs["attention_mask"].bool())


@register_backbone("paligemma")
def build_paligemma(cfg: BackboneConfig) -> HFVLMBackbone:
    """PaliGemma (SigLIP + Gemma): prefix tokens attend bidirectionally (token_type_ids = 0)."""
    from transformers import PaliGemmaForConditionalGeneration

    return HFVLMBackbone(cfg, "paligemma", PaliGemmaForConditionalGeneration, PALIGEMMA_LORA_TARGETS)


@register_backbone("idefics3")
def build_idefics3(cfg: BackboneConfig) -> HFVLMBackbone:
    """Idefics3 / SmolVLM (SigLIP-style vision + pixel-shuffle connector + Llama-style causal LM)."""
    from transformers import Idefics3ForConditionalGeneration

    splitting = _parse_bool(cfg.extra.get("do_image_splitting", "false"))
    return HFVLMBackbone(
        cfg,
        "idefics3",
        Idefics3ForConditionalGeneration,
        IDEFICS3_LORA_TARGETS,
        processor_kwargs={"do_image_splitting": splitting},
    )
