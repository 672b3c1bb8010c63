"""A policy in this process as the chunk source of :class:`vla_ebt_client.ActionChunkBroker`.

The sim rollout runs the asynchronous strategies through the same broker as the robot client;
where the robot's source is a :class:`~vla_ebt_client.PolicyClient`, the sim's is
:class:`PolicyChunkSource`: ``infer(obs, step=..., **fields)`` calls ``policy.predict_chunk`` (with
the request fields ``prefix``, ``prefix_weights``, ``soft_target``, ``latency_budget_ms`` as
keyword arguments, the policy contract of heads with ``capabilities.inpainting``) and
``score(obs, chunks)`` calls ``policy.score_chunks``. Warm starts work as in
``VLAPolicy.select_action``: the previous chunk shifted by the steps executed since it was planned.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["PolicyChunkSource", "chunk_policy_problem"]


def chunk_policy_problem(policy: Any) -> str | None:
    """Why ``policy`` cannot be a chunk source (None when it can): it needs ``predict_chunk``,
    ``cfg.horizon`` / ``cfg.execution`` and a ``head`` with ``capabilities``."""
    missing = [n for n, ok in (("predict_chunk", callable(getattr(policy, "predict_chunk", None))),
                               ("cfg.horizon", hasattr(getattr(policy, "cfg", None), "horizon")),
                               ("cfg.execution", hasattr(getattr(policy, "cfg", None), "execution")),
                               ("head.capabilities", hasattr(getattr(policy, "head", None), "capabilities")))
               if not ok]
    return f"{type(policy).__name__} lacks {', '.join(missing)}" if missing else None


class PolicyChunkSource:
    """``policy`` (a VLAPolicy or anything with its ``predict_chunk`` / ``score_chunks`` / ``cfg`` /
    ``head.capabilities``) behind the broker's source interface; one per episode (it keeps the warm
    start). ``metadata``: horizon, execution and ``capabilities`` (inpainting, reports_energy,
    warm_start) like the policy server's. ``last_output``: the last PolicyOutput."""

    accepts_step = True

    def __init__(self, policy: Any) -> None:
        problem = chunk_policy_problem(policy)
        if problem:
            raise TypeError(f"PolicyChunkSource: {problem}")
        self.policy = policy
        cfg, caps = policy.cfg, policy.head.capabilities
        ex = cfg.execution
        self.horizon = int(cfg.horizon)
        self.metadata = {
            "horizon": self.horizon,
            "execution": {"mode": ex.mode, "n_action_steps": int(ex.n_action_steps),
                          "ensemble_decay": float(ex.ensemble_decay)},
            "capabilities": {"inpainting": bool(getattr(caps, "inpainting", False)),
                             "reports_energy": bool(getattr(caps, "reports_energy", False)),
                             "warm_start": bool(getattr(caps, "warm_start", False))},
        }
        self._warm = bool(getattr(caps, "warm_start", False)) and bool(getattr(ex, "warm_start", False))
        self.last_output: Any = None
        self._prev: torch.Tensor | None = None
        self._prev_step: int | None = None

    def _warm_start(self, step: int | None) -> torch.Tensor | None:
        """The previous normalized chunk shifted by the steps since it was planned (last action
        repeated), as ``VLAPolicy`` does; None without one."""
        if not self._warm or self._prev is None or step is None or self._prev_step is None:
            return None
        k = max(0, int(step) - self._prev_step)
        prev = self._prev
        if k == 0:
            return prev
        shifted = prev[:, k:]
        pad = (shifted[:, -1:] if shifted.shape[1] else prev[:, -1:]).expand(-1, k, -1)
        return torch.cat([shifted, pad], dim=1)[:, : self.horizon]

    def _tensor(self, v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return torch.as_tensor(v, dtype=torch.float32, device=self.policy.device)
        return v

    def infer(self, obs: Mapping[str, Any], step: int | None = None, **fields: Any) -> dict[str, Any]:
        """One chunk for ``obs`` (the observation of episode step ``step``): ``{"actions": float32
        numpy (B, H, D), "energy", "steps", "infer_ms", "output"}``."""
        kw = {k: self._tensor(v) for k, v in fields.items() if v is not None}
        out = self.policy.predict_chunk(obs, warm_start=self._warm_start(step), **kw)
        self.last_output = out
        self._prev, self._prev_step = out.normalized, (None if step is None else int(step))
        return {
            "actions": out.actions.detach().float().cpu().numpy(),
            "energy": None if out.energy is None else out.energy.detach().float().cpu().numpy(),
            "steps": None if out.steps is None else out.steps.detach().float().cpu().numpy(),
            "infer_ms": float(out.latency_ms),
            "output": out,
        }

    def score(self, obs: Mapping[str, Any], chunks: Any) -> np.ndarray:
        """Energies (B, K) of unnormalized chunks (B, K, H, D) under ``obs`` (``policy.score_chunks``)."""
        e = self.policy.score_chunks(obs, self._tensor(np.asarray(chunks, np.float32)))
        return e.detach().float().cpu().numpy()
