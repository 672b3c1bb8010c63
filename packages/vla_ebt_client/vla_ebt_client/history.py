"""Observation history: the last To observations (state rows, image frames) a policy sees.

One definition, used by training and by every closed loop alike: at control step ``t`` the
history holds steps :func:`history_indices` ``(t, To)`` = ``t - To + 1 .. t``, oldest first, where
steps before the episode start repeat the first observation (step 0). Frames of several cameras
are stacked camera-major (:func:`camera_major`).

* Datasets that hold whole episodes as arrays index them: ``ep.state[history_indices(t, To)]``.
* Closed loops (sim rollout, robot client) stream: :class:`ObservationHistory` turns each raw env
  observation into a B = 1 policy observation.

::

    history = ObservationHistory(obs_steps=2, image_history=True, embodiment=0)
    obs = history({"image": uint8 (V, 3, S, S), "state": (S,), "instruction": "pick up the cup"})
    obs["images"]   # (1, V * 2, 3, S, S) camera-major; obs["state"] float32 (1, 2, S)
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

__all__ = ["history_indices", "camera_major", "ObservationHistory"]


def history_indices(t: int, obs_steps: int) -> np.ndarray:
    """The episode steps in the history of step ``t``: int64 (obs_steps,), oldest first,
    ``max(0, t - obs_steps + 1 + k)`` for k = 0 .. obs_steps - 1 (step 0 repeats before the start).
    Raises ValueError for t < 0 or obs_steps < 1."""
    if t < 0 or obs_steps < 1:
        raise ValueError(f"history_indices: need t >= 0 and obs_steps >= 1, got t={t}, obs_steps={obs_steps}")
    return np.maximum(np.arange(t - obs_steps + 1, t + 1, dtype=np.int64), 0)


def camera_major(frames: np.ndarray) -> np.ndarray:
    """History frames (To, V, C, H, W) -> (V * To, C, H, W): camera v's To frames (oldest first)
    at rows v * To .. v * To + To - 1, the view layout of :mod:`vla_ebt.schema` with image history."""
    if frames.ndim != 5:
        raise ValueError(f"camera_major: frames must be (To, V, C, H, W), got shape {frames.shape}")
    return frames.transpose(1, 0, 2, 3, 4).reshape(-1, *frames.shape[2:])


class ObservationHistory:
    """The history of one episode, fed one raw observation per control step.

    obs_steps:     To, the states (and with ``image_history`` frames) per observation.
    image_history: send the last To frames of each camera (camera-major) instead of the current one.
    embodiment:    the embodiment id sent with every observation.
    instruction:   overrides the env's instruction when not None.

    ``obs = history(raw)`` with ``raw = {"image": (V, 3, S, S) or (3, S, S), "state": (S,),
    "instruction": str}`` returns ``{"images": (1, V, 3, S, S), or (1, V * To, 3, S, S) with
    image_history, "instruction": [str], "state": float32 (1, To, S), "embodiment": int64 (1,)}``
    (numpy; images keep their dtype). Call :meth:`reset` (or make a new one) per episode.
    """

    def __init__(self, obs_steps: int, image_history: bool = False, embodiment: int = 0,
                 instruction: str | None = None) -> None:
        if int(obs_steps) < 1:
            raise ValueError(f"ObservationHistory: obs_steps must be >= 1, got {obs_steps}")
        self.obs_steps, self.image_history = int(obs_steps), bool(image_history)
        self.embodiment = np.array([embodiment], np.int64)
        self.instruction = instruction
        self.reset()

    def reset(self) -> None:
        """Forget the episode (the next observation is step 0)."""
        self.t = -1  # the step of the last pushed observation
        self._images: list[np.ndarray | None] = [None] * self.obs_steps  # ring buffers: step s at s % To
        self._states: list[np.ndarray | None] = [None] * self.obs_steps

    def push(self, image: Any, state: Any) -> None:
        """Append the observation of the next step: image (V, 3, S, S) or (3, S, S), state (S,)."""
        img = np.asarray(image)
        self.t += 1
        slot = self.t % self.obs_steps
        self._images[slot] = img[None] if img.ndim == 3 else img
        self._states[slot] = np.asarray(state, np.float32).reshape(-1)

    def _window(self) -> list[int]:
        if self.t < 0:
            raise RuntimeError("ObservationHistory: no observation pushed yet")
        return [int(s) % self.obs_steps for s in history_indices(self.t, self.obs_steps)]

    def states(self) -> np.ndarray:
        """float32 (To, S), oldest first."""
        return np.stack([self._states[k] for k in self._window()])

    def frames(self) -> np.ndarray:
        """(To, V, 3, S, S), oldest first."""
        return np.stack([self._images[k] for k in self._window()])

    def current_frames(self) -> np.ndarray:
        """(V, 3, S, S) of the last pushed step."""
        self._window()
        return self._images[self.t % self.obs_steps]  # type: ignore[return-value]

    def observation(self, instruction: str) -> dict[str, Any]:
        """The B = 1 observation of the last pushed step (see the class docstring)."""
        frames = camera_major(self.frames()) if self.image_history else self.current_frames()
        return {
            "images": np.ascontiguousarray(frames)[None],
            "instruction": [self.instruction or str(instruction)],
            "state": self.states()[None],
            "embodiment": self.embodiment,
        }

    def __call__(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """push(raw["image"], raw["state"]), then the observation (see the class docstring)."""
        self.push(raw["image"], raw["state"])
        return self.observation(raw["instruction"])
