"""metaworld: the Meta-World MT10 / MT50 manipulation tasks (Sawyer arm, MuJoCo) as a suite.

``make_suite("metaworld", benchmark="MT10", image_size=64, cameras=("corner2",), state_mode="proprio",
...)``. The full contract (observation, state modes, action, termination, instructions, held-out
tasks, perturbations, rendering, env reuse) and the measured speed / expert numbers are in
docs/suites.md, section "Meta-World".

Modules: :mod:`.render` (OpenGL backend), :mod:`.pool` (simulator + renderer, reuse pool),
:mod:`.env` (:class:`MetaWorldEnv`), :mod:`.suite` (:class:`MetaWorldSuite`, registration),
:mod:`.expert` (scripted expert), :mod:`.instructions` (paraphrases from ``instructions.json``).
"""

from __future__ import annotations

from .env import ACTION_DIM, RAW_OBS_DIM, STATE_MODES, MetaWorldEnv
from .instructions import INSTRUCTIONS, InstructionsError, instructions_for
from .render import configure_gl
from .suite import BENCHMARKS, DEFAULT_MAX_EPISODE_STEPS, HELDOUT_TASKS, MetaWorldConfig, MetaWorldSuite

__all__ = [
    "MetaWorldSuite",
    "MetaWorldEnv",
    "MetaWorldConfig",
    "BENCHMARKS",
    "HELDOUT_TASKS",
    "INSTRUCTIONS",
    "STATE_MODES",
    "ACTION_DIM",
    "RAW_OBS_DIM",
    "DEFAULT_MAX_EPISODE_STEPS",
    "InstructionsError",
    "configure_gl",
    "instructions_for",
]
