"""Backbone fine-tuning modes (frozen / LoRA / full) with peft, adapter merge, and adapter-only state.

``apply_finetune_mode`` only touches the backbone's :meth:`~vla_ebt.backbones.base.Backbone.pretrained_modules`
(checkpoint weights). Parameters the backbone creates itself (projections to D_b, camera embeddings)
stay trainable in every mode, since they start from random init.

Target module entries (``target_modules`` or the backbone's ``lora_target_modules()``) are
peft-style name suffixes (``"q_proj"``, ``"attention.self.query"``) or, prefixed with ``re:``, regular
expressions matched against the full module name. They are resolved to an explicit list of module names
inside the pretrained modules; matches of a type LoRA cannot wrap (containers) are skipped.

Adapters are injected in place with peft's ``LoraModel`` tuner (the machinery behind
``inject_adapter_in_model``), so the backbone object and its forward stay the same.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from torch import Tensor, nn

from .backbones.base import Backbone

FinetuneMode = Literal["frozen", "lora", "full"]
ADAPTER_NAME = "default"

# Layer types peft's LoRA can wrap (transformers' GPT-2-style Conv1D is matched by class name).
_LORA_TYPES = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention)


def _is_lora_compatible(module: nn.Module) -> bool:
    return isinstance(module, _LORA_TYPES) or type(module).__name__ == "Conv1D"


def _matches(name: str, target: str) -> bool:
    if target.startswith("re:"):
        return re.fullmatch(target[3:], name) is not None
    return name == target or name.endswith("." + target)


def resolve_target_modules(backbone: Backbone, targets: list[str]) -> tuple[list[str], list[str]]:
    """Full backbone module names that ``targets`` select inside the pretrained modules.

    Returns (selected, skipped): skipped are matches whose type LoRA cannot wrap (e.g. a container).
    """
    selected, skipped = [], []
    for prefix, root in backbone.pretrained_modules().items():
        for name, module in root.named_modules():
            full = f"{prefix}.{name}" if name else prefix
            if name and any(_matches(name, t) or _matches(full, t) for t in targets):
                (selected if _is_lora_compatible(module) else skipped).append(full)
    # A wrapped MultiheadAttention already adapts its out_proj: don't target both.
    mha = {n for n in selected if isinstance(backbone.get_submodule(n), nn.MultiheadAttention)}
    selected = [n for n in selected if not any(n.startswith(m + ".") for m in mha)]
    return selected, skipped


def _is_pretrained_weight(backbone: Backbone, name: str) -> bool:
    """True for a checkpoint weight (inside a pretrained module and not a LoRA matrix). By name: peft
    re-registers some wrapped parameters (e.g. MultiheadAttention's in_proj_weight)."""
    in_pretrained = any(name.startswith(prefix + ".") for prefix in backbone.pretrained_modules())
    return in_pretrained and "lora_" not in name


def apply_finetune_mode(
    backbone: Backbone,
    mode: FinetuneMode,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.0,
    target_modules: list[str] | None = None,
) -> list[str]:
    """Set how the backbone trains; return the module names that received LoRA adapters ([] unless "lora").

    frozen: pretrained weights requires_grad=False, and those modules stay in eval mode.
    lora:   pretrained weights frozen (BatchNorm statistics too); LoRA A/B matrices trainable.
    full:   everything trainable.
    Records ``backbone.finetune_mode`` and ``backbone.lora_modules``.
    """
    if mode not in ("frozen", "lora", "full"):
        raise ValueError(f"finetune mode must be 'frozen', 'lora' or 'full', got {mode!r}")
    if getattr(backbone, "_lora_tuner", None) is not None:
        raise ValueError("backbone already has LoRA adapters; merge_lora() them first")
    adapted: list[str] = []
    if mode == "lora":
        from peft import LoraConfig
        from peft.tuners.lora import LoraModel

        targets = list(target_modules) if target_modules is not None else backbone.lora_target_modules()
        adapted, skipped = resolve_target_modules(backbone, targets)
        if not adapted:
            raise ValueError(
                f"LoRA targets {targets} match no Linear/Conv/Embedding/MultiheadAttention layer of the "
                f"{backbone.family} backbone's pretrained modules {list(backbone.pretrained_modules())}"
                + (f" (matched but unsupported: {skipped[:5]})" if skipped else "")
            )
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=adapted)
        # Injects adapters in place and freezes every non-adapter parameter of the backbone.
        tuner = LoraModel(backbone, config, ADAPTER_NAME)
        backbone.__dict__["_lora_tuner"] = tuner  # not a submodule: avoids a module cycle
    for name, param in backbone.named_parameters():
        # Pretrained weights train only in "full"; LoRA matrices and the backbone's own new layers always.
        param.requires_grad_(mode == "full" or not _is_pretrained_weight(backbone, name))
    backbone.finetune_mode = mode
    backbone.lora_modules = adapted
    backbone.train(backbone.training)  # re-apply eval mode of frozen modules / BatchNorm
    return adapted


def merge_lora(backbone: Backbone) -> list[str]:
    """Fold the LoRA adapters into the base weights and remove them (outputs unchanged up to float
    rounding); return the merged module names. The backbone object stays the same."""
    tuner = backbone.__dict__.pop("_lora_tuner", None)
    if tuner is None:
        raise ValueError("backbone has no LoRA adapters to merge")
    merged = list(getattr(backbone, "lora_modules", []))
    tuner.merge_and_unload(safe_merge=True)
    backbone.lora_modules = []
    return merged


def lora_state_dict(backbone: Backbone) -> dict[str, Tensor]:
    """Only the adapter weights (peft key format, adapter name stripped), e.g. for saving separately."""
    from peft import get_peft_model_state_dict

    if getattr(backbone, "_lora_tuner", None) is None:
        raise ValueError("backbone has no LoRA adapters")
    return get_peft_model_state_dict(backbone, adapter_name=ADAPTER_NAME)


def load_lora_state_dict(backbone: Backbone, state: dict[str, Tensor]) -> None:
    """Load adapter weights produced by :func:`lora_state_dict` into an identically adapted backbone."""
    from peft import set_peft_model_state_dict

    if getattr(backbone, "_lora_tuner", None) is None:
        raise ValueError("backbone has no LoRA adapters: apply_finetune_mode(backbone, 'lora', ...) first")
    result = set_peft_model_state_dict(backbone, state, adapter_name=ADAPTER_NAME)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"adapter state mismatch: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")


def save_lora(backbone: Backbone, path: str | Path) -> None:
    """Write the adapter weights as safetensors, with r / alpha / dropout / adapted module names in the metadata."""
    from safetensors.torch import save_file

    config = backbone.peft_config[ADAPTER_NAME]
    meta = {
        "r": str(config.r),
        "alpha": str(config.lora_alpha),
        "dropout": str(config.lora_dropout),
        "modules": json.dumps(list(backbone.lora_modules)),
    }
    state = {k: v.detach().contiguous().cpu() for k, v in lora_state_dict(backbone).items()}
    save_file(state, str(path), metadata=meta)


def load_lora(backbone: Backbone, path: str | Path) -> list[str]:
    """Load a :func:`save_lora` file; injects matching adapters first if the backbone has none."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if getattr(backbone, "_lora_tuner", None) is None:
        apply_finetune_mode(
            backbone,
            "lora",
            r=int(meta["r"]),
            alpha=int(float(meta["alpha"])),
            dropout=float(meta["dropout"]),
            target_modules=[f"re:{re.escape(n)}" for n in json.loads(meta["modules"])],
        )
    load_lora_state_dict(backbone, load_file(str(path)))
    return list(backbone.lora_modules)


def trainable_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) pairs with requires_grad=True."""
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "FinetuneMode",
    "apply_finetune_mode",
    "merge_lora",
    "lora_state_dict",
    "load_lora_state_dict",
    "save_lora",
    "load_lora",
    "resolve_target_modules",
    "trainable_parameters",
    "count_parameters",
]
