"""Frozen-backbone feature cache: with ``finetune.mode == "frozen"`` the backbone's pretrained encoders
are a fixed function of their input, so their outputs are computed once per frame and looked up on
every later training step; each step then runs only the backbone's own new layers (projections,
position / camera embeddings, which train in every mode), the bridge and the head.

::

    cache = FrozenFeatureCache()
    cache.fill(policy.encoder.backbone, batches)      # (images, instructions) of every training frame
    cache.save(path); cache = FrozenFeatureCache.load(path)
    cache.install(policy.encoder.backbone)            # training forward passes now hit the cache

What is cached, per pretrained module (``Backbone.pretrained_modules()``), by the kind of its input:

* a Tensor batch ``(N, ...) -> Tensor (N, ...)`` (image encoders): each output row under a hash of the
  input row's bytes (blake2b-128 of dtype, shape and data), i.e. a lookup hits only on a bit-identical
  input;
* a list of N strings ``-> (hidden (N, L, D), mask (N, L))`` with right padding (text encoders): each
  string's valid hidden rows; a batch is re-padded with zeros to its longest string. Padded positions
  are masked and the bridge zeroes masked tokens before anything reads them, so the prefix is
  unchanged (valid rows equal the uncached ones up to float rounding of the padded batch).

Misses run the module on the missing rows only (and are stored while ``grow`` is True); any other
call signature runs the module unchanged. The wrapped ``forward`` is an instance attribute holding a
plain function, so ``state_dict``, ``save_pretrained`` and EMA copies (``copy.deepcopy`` shares
functions, not the tables) are unaffected. ``remove()`` restores the modules.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

__all__ = ["FrozenFeatureCache"]

_TENSOR, _TEXT = "tensor", "text"


def _tensor_keys(x: Tensor) -> list[bytes]:
    rows = x.detach().to("cpu").contiguous()
    head = f"{rows.dtype}{tuple(rows.shape[1:])}".encode()
    flat = rows.reshape(rows.shape[0], -1)
    if flat.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw bits
        flat = flat.view(torch.int16)
    arr = flat.numpy()
    return [hashlib.blake2b(head + arr[i].tobytes(), digest_size=16).digest() for i in range(arr.shape[0])]


def _text_key(s: str) -> bytes:
    return hashlib.blake2b(b"text:" + s.encode("utf-8"), digest_size=16).digest()


class FrozenFeatureCache:
    """Per-module tables ``key -> output row`` (see the module docstring)."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[bytes, Tensor]] = {}
        self.kinds: dict[str, str] = {}
        self.grow = True
        self.hits = 0
        self.misses = 0
        self._installed: list[nn.Module] = []

    # ------------------------------------------------------------------ install / remove
    def install(self, backbone: nn.Module) -> "FrozenFeatureCache":
        """Wrap the forward of every pretrained module of a frozen ``backbone``; ValueError if the
        backbone is not frozen (a LoRA adapter or a trainable weight would make the outputs change)."""
        if getattr(backbone, "finetune_mode", "full") != "frozen":
            raise ValueError(f"the frozen feature cache needs finetune mode 'frozen', got "
                             f"{getattr(backbone, 'finetune_mode', 'full')!r}")
        for name, module in backbone.pretrained_modules().items():
            trainable = [n for n, p in module.named_parameters() if p.requires_grad]
            if trainable:
                raise ValueError(f"pretrained module {name!r} has trainable parameters {trainable[:3]}: not cacheable")
            if "forward" in vars(module):
                raise ValueError(f"pretrained module {name!r} already has a wrapped forward")
            module.forward = self._wrapped(name, module.forward)  # instance attribute: a plain function
            self._installed.append(module)
        return self

    def remove(self) -> None:
        """Restore the wrapped modules' own forward."""
        for module in self._installed:
            vars(module).pop("forward", None)
        self._installed.clear()

    def _wrapped(self, name: str, forward: Callable[..., Any]) -> Callable[..., Any]:
        def cached_forward(*args: Any, **kwargs: Any) -> Any:
            if kwargs or len(args) != 1:
                return forward(*args, **kwargs)
            x = args[0]
            if isinstance(x, Tensor) and x.dim() >= 1:
                return self._tensor_call(name, forward, x)
            if isinstance(x, (list, tuple)) and x and all(isinstance(s, str) for s in x):
                return self._text_call(name, forward, list(x))
            return forward(*args)

        return cached_forward

    # ------------------------------------------------------------------ lookups
    def _table(self, name: str, kind: str) -> dict[bytes, Tensor]:
        if self.kinds.setdefault(name, kind) != kind:
            raise ValueError(f"feature cache {name!r}: holds {self.kinds[name]} outputs, called with {kind} input")
        return self.tables.setdefault(name, {})

    def _tensor_call(self, name: str, forward: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        table = self._table(name, _TENSOR)
        keys = _tensor_keys(x)
        missing = [i for i, k in enumerate(keys) if k not in table]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh: dict[int, Tensor] = {}
        if missing:
            out = forward(x[missing])
            if not isinstance(out, Tensor) or out.shape[0] != len(missing):
                raise ValueError(f"feature cache {name!r}: expected a row-wise Tensor output, got {type(out).__name__}")
            for j, i in enumerate(missing):
                fresh[i] = out[j].detach().to("cpu")
                if self.grow:
                    table[keys[i]] = fresh[i].clone()
        rows = [fresh[i] if i in fresh else table[k] for i, k in enumerate(keys)]
        return torch.stack(rows).to(x.device)

    def _text_call(self, name: str, forward: Callable[[list[str]], tuple[Tensor, Tensor]],
                   texts: list[str]) -> tuple[Tensor, Tensor]:
        table = self._table(name, _TEXT)
        keys = [_text_key(s) for s in texts]
        missing = sorted({s for s, k in zip(texts, keys) if k not in table})
        self.hits += sum(1 for k in keys if k in table)
        self.misses += len(texts) - sum(1 for k in keys if k in table)
        fresh: dict[bytes, Tensor] = {}
        device = torch.device("cpu")
        if missing:
            hidden, mask = forward(missing)
            device = hidden.device
            for j, s in enumerate(missing):
                n = int(mask[j].sum())
                if not bool(mask[j, :n].all()):
                    raise ValueError(f"feature cache {name!r}: the text mask is not right-padded")
                fresh[_text_key(s)] = hidden[j, :n].detach().to("cpu").clone()
            if self.grow:
                table.update(fresh)
        rows = [fresh[k] if k in fresh else table[k] for k in keys]
        longest = max(r.shape[0] for r in rows)
        out = rows[0].new_zeros((len(rows), longest, *rows[0].shape[1:]))
        out_mask = torch.zeros(len(rows), longest, dtype=torch.bool)
        for i, r in enumerate(rows):
            out[i, : r.shape[0]] = r
            out_mask[i, : r.shape[0]] = True
        return out.to(device), out_mask.to(device)

    # ------------------------------------------------------------------ fill / persist
    @torch.no_grad()
    def fill(self, backbone: nn.Module, batches: Iterable[tuple[Tensor, list[str]]]) -> int:
        """Run ``backbone(images, instructions)`` over ``batches`` with the cache installed (storing
        every output); returns the number of frames seen. Installs the cache if it is not yet."""
        if not self._installed:
            self.install(backbone)
        grow, self.grow = self.grow, True
        n = 0
        try:
            for images, instructions in batches:
                backbone(images, list(instructions))
                n += int(images.shape[0])
        finally:
            self.grow = grow
        return n

    def __len__(self) -> int:
        return sum(len(t) for t in self.tables.values())

    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
        """One safetensors file: per module ``<name>.keys`` (N, 16) uint8, ``<name>.values`` (rows
        zero-padded along their first dim), ``<name>.lengths`` (N,); kinds and ``meta`` as metadata."""
        from safetensors.torch import save_file

        from .config_io import atomic_path

        tensors: dict[str, Tensor] = {}
        for name, table in self.tables.items():
            if not table:
                continue
            keys = list(table)
            rows = [table[k] for k in keys]
            longest = max(r.shape[0] for r in rows)
            values = rows[0].new_zeros((len(rows), longest, *rows[0].shape[1:]))
            for i, r in enumerate(rows):
                values[i, : r.shape[0]] = r
            tensors[f"{name}.keys"] = torch.tensor([list(k) for k in keys], dtype=torch.uint8)
            tensors[f"{name}.values"] = values.contiguous()
            tensors[f"{name}.lengths"] = torch.tensor([r.shape[0] for r in rows], dtype=torch.long)
        md = {"kinds": json.dumps(self.kinds), "meta": json.dumps(meta or {})}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=md)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "FrozenFeatureCache":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
        tensors = load_file(str(path))
        cache = cls()
        cache.kinds = json.loads(md.get("kinds", "{}"))
        for name in cache.kinds:
            if f"{name}.keys" not in tensors:
                continue
            keys, values, lengths = (tensors[f"{name}.{x}"] for x in ("keys", "values", "lengths"))
            rows = zip(keys.tolist(), lengths.tolist())
            cache.tables[name] = {bytes(k): values[i, : int(n)] for i, (k, n) in enumerate(rows)}
        return cache

    def stats(self) -> dict[str, Any]:
        """{"entries", "hits", "misses", "hit_rate"} since creation / load."""
        calls = self.hits + self.misses
        return {"entries": len(self), "hits": self.hits, "misses": self.misses,
                "hit_rate": self.hits / calls if calls else float("nan")}
