"""libero: the LIBERO benchmark (MuJoCo / robosuite), run in a separate virtualenv.

LIBERO cannot share the main environment's mujoco, so every env is a proxy to a worker process,
``eval/sim/libero_worker.py``, run by ``.venv-libero/bin/python`` (built by ``setup.sh``)::

    suite = make_suite("libero", benchmark="libero_spatial", image_size=64)
    env = suite.make_env(suite.task_names()[0], seed=3)   # a gymnasium.Env
    obs, info = env.reset()

Observation ``{"image": uint8 (V, 3, S, S) (one camera: (3, S, S)), "state": float32 (8,),
"instruction": str}``; action float32 (7,) in [-1, 1] (clipped; wrong shape or non-finite:
ValueError); ``terminated`` on task success, ``truncated`` after ``max_episode_steps``. Same seed ->
same episode. No scripted expert (``expert()`` raises NotImplementedError). Missing LIBERO venv:
:class:`LiberoUnavailableError`; failed / timed-out / dead worker: :class:`LiberoWorkerError`. The
full contract (tasks, episode start, state layout, horizons, instructions, worker pool) is in
docs/suites.md, section "LIBERO".

Modules: :mod:`.worker_client` (:class:`LiberoWorker`, the process and its protocol),
:mod:`.env` (:class:`LiberoEnv`), :mod:`.suite` (:class:`LiberoSuite`, registration, horizons,
held-out paraphrases).
"""

from __future__ import annotations

# also re-exported (module attributes of the former libero.py): ACTION_DIM, STATE_DIM, MAX_EPISODE_STEPS,
# PYTHON_ENV_VAR, resolve_python
from .env import ACTION_DIM, STATE_DIM, LiberoEnv
from .suite import MAX_EPISODE_STEPS, LiberoSuite, default_max_episode_steps, heldout_paraphrases
from .worker_client import (
    DEFAULT_PYTHON,
    INSTALL_HINT,
    PYTHON_ENV_VAR,
    LiberoUnavailableError,
    LiberoWorker,
    LiberoWorkerError,
    resolve_python,
)

__all__ = [
    "LiberoSuite",
    "LiberoEnv",
    "LiberoWorker",
    "LiberoWorkerError",
    "LiberoUnavailableError",
    "heldout_paraphrases",
    "default_max_episode_steps",
    "DEFAULT_PYTHON",
    "INSTALL_HINT",
]
