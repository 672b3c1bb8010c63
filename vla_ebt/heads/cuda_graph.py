"""A head's ``predict`` captured once as a CUDA graph and replayed per chunk (GPU inference only).

At batch 1 a head's chunk is dozens of small kernels per step (EBT: a forward and an input-gradient
backward per minimizer step), so on a GPU its time is mostly kernel launches. Capturing the whole
call once (minimizer / sampler loop included, autograd backward included) and replaying it removes
the per-kernel launch cost. The capture fixes what the call's Python sees: batch size, context
length, the knobs and the step count (no early stop by gradient norm, no latency budget, no
inpainting); the context tokens and mask are copied into the captured input buffers at every call,
and the noise is redrawn at every replay (CUDA's generator is graph-aware). docs/realtime.md.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import ActionHead, ChunkPrediction, Context

__all__ = ["GraphedPredict", "UNGRAPHABLE_KNOBS"]

#: knobs that make the call's work depend on values or the clock: not captured
UNGRAPHABLE_KNOBS = ("min_grad", "latency_budget_ms")


def _clone(x: Any) -> Any:
    return x.clone() if isinstance(x, torch.Tensor) else x


class GraphedPredict:
    """``head.predict(context, **knobs)`` replayed from one CUDA graph.

    example: a Context on a CUDA device with the batch size and token count of every later call.
    warmup: eager calls on a side stream before the capture (lazy initialisations, cuBLAS handles).
    Calling it with a Context of that shape returns a ChunkPrediction whose tensors are fresh copies
    ((B, H, D) actions, (B,) steps / energy / grad norm); ``nfe`` is the captured call's.
    Raises ValueError for a CPU context, an ungraphable knob (``UNGRAPHABLE_KNOBS`` set and non-zero)
    or a later context of another shape / device; errors of the capture itself propagate.
    """

    def __init__(self, head: ActionHead, example: Context, warmup: int = 3, **knobs: Any) -> None:
        if example.tokens.device.type != "cuda":
            raise ValueError(f"GraphedPredict needs a CUDA context, got device {example.tokens.device}")
        bad = [k for k in UNGRAPHABLE_KNOBS if knobs.get(k)]
        if bad:
            raise ValueError(f"GraphedPredict cannot capture knob(s) {bad}: they stop the chain by value or clock")
        self.head, self.knobs = head, dict(knobs)
        self.static = Context(example.tokens.detach().clone(), example.mask.clone())
        side = torch.cuda.Stream(device=example.tokens.device)
        side.wait_stream(torch.cuda.current_stream(example.tokens.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                head.predict(self.static, **self.knobs)
        torch.cuda.current_stream(example.tokens.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._out = head.predict(self.static, **self.knobs)

    def fits(self, context: Context) -> bool:
        """Whether ``context`` has the captured shapes and device."""
        s = self.static
        return (context.tokens.shape == s.tokens.shape and context.mask.shape == s.mask.shape
                and context.tokens.device == s.tokens.device and context.tokens.dtype == s.tokens.dtype)

    def __call__(self, context: Context) -> ChunkPrediction:
        s = self.static
        if not self.fits(context):
            raise ValueError(f"GraphedPredict was captured for tokens {tuple(s.tokens.shape)} on {s.tokens.device}, "
                             f"got {tuple(context.tokens.shape)} on {context.tokens.device}")
        s.tokens.copy_(context.tokens.detach())
        s.mask.copy_(context.mask)
        self.graph.replay()
        o = self._out
        return ChunkPrediction(actions=o.actions.clone(), steps=o.steps.clone(), nfe=o.nfe, energy=_clone(o.energy),
                               grad_norm=_clone(o.grad_norm), energy_trace=_clone(o.energy_trace))
