"""pusht: push a T-shaped block onto a fixed target outline (wraps the ``gym-pusht`` package).

``make_suite("pusht", image_size=64, max_episode_steps=300)``: one task, ``push_t``; 2-dim state
(agent position) and action (its target position), both in world pixels [0, 512]^2. The full
contract (world, observation, action, termination, info, headless pygame) and the measured expert
success and speed are in docs/suites.md, section "PushT".

Modules: :mod:`.geometry` (the T in its body frame), :mod:`.env` (:class:`PushTEnv`),
:mod:`.expert` (:class:`PushTExpert`), :mod:`.suite` (:class:`PushTSuite`, registration).
"""

from __future__ import annotations

from .env import ACTION_DIM, STATE_DIM, TASKS, PushTEnv
from .expert import ExpertConfig, PushTExpert
from .geometry import AGENT_RADIUS, TEE_RECTS, WORKSPACE
from .suite import PushTSuite

__all__ = [
    "PushTSuite",
    "PushTEnv",
    "PushTExpert",
    "ExpertConfig",
    "TASKS",
    "STATE_DIM",
    "ACTION_DIM",
    "WORKSPACE",
    "AGENT_RADIUS",
    "TEE_RECTS",
]
