"""The env side of an episode (:class:`EnvSession`: in-process for serial evaluation, inside a worker
otherwise) and :class:`SuiteInfo`, what the evaluator needs from a suite it may not be able to import."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_ebt_client import wire

from ..suites import INSTRUCTION_SPLITS, Suite
from .errors import EnvOpError, describe_exception


# --------------------------------------------------------------------------------------------
# suite metadata (what the evaluator needs from a suite it may not be able to import)
# --------------------------------------------------------------------------------------------


@dataclass
class SuiteInfo:
    """Plain-data description of a built suite, with the few Suite methods the evaluator uses.

    action_low / action_high: float32 (action_dim,) bounds, or None if the suite has none.
    """

    name: str
    tasks: list[str]
    action_dim: int
    state_dim: int
    image_size: int
    num_views: int
    max_episode_steps: int
    action_low: list[float] | None = None
    action_high: list[float] | None = None
    extra_tasks: list[str] | None = None  # valid but not in task_names(), e.g. Meta-World's held-out tasks

    @classmethod
    def from_suite(cls, suite: Suite | "SuiteInfo") -> "SuiteInfo":
        if isinstance(suite, SuiteInfo):
            return suite
        try:
            lo, hi = suite.action_bounds()
            low, high = [float(x) for x in np.asarray(lo).reshape(-1)], [float(x) for x in np.asarray(hi).reshape(-1)]
        except NotImplementedError:
            low = high = None
        return cls(
            name=str(getattr(suite, "name", "") or type(suite).__name__),
            tasks=list(suite.task_names()),
            action_dim=int(suite.action_dim),
            state_dim=int(suite.state_dim),
            image_size=int(getattr(suite, "image_size", 0) or 0),
            num_views=int(getattr(suite, "num_views", 1) or 1),
            max_episode_steps=int(suite.max_episode_steps),
            action_low=low,
            action_high=high,
            extra_tasks=[t for t in getattr(suite, "heldout_tasks", lambda: [])() if t not in suite.task_names()],
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SuiteInfo":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})

    def compatible_with(self, other: "SuiteInfo") -> list[str]:
        """Names of the fields (besides the bounds) that differ from ``other``."""
        keys = ("name", "tasks", "action_dim", "state_dim", "image_size", "num_views", "max_episode_steps")
        return [k for k in keys if getattr(self, k) != getattr(other, k)]

    # the Suite methods the evaluator calls
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def check_task(self, task: str) -> None:
        known = self.tasks + list(self.extra_tasks or [])
        if task not in known:
            raise ValueError(f"suite {self.name!r}: unknown task {task!r}; known tasks: {known}")

    def check_split(self, split: str) -> None:
        if split not in INSTRUCTION_SPLITS:
            raise ValueError(f"instruction split must be one of {list(INSTRUCTION_SPLITS)}, got {split!r}")

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        if self.action_low is None or self.action_high is None:
            raise NotImplementedError(f"suite {self.name!r} has no action bounds")
        return np.asarray(self.action_low, np.float32), np.asarray(self.action_high, np.float32)


# --------------------------------------------------------------------------------------------
# the env side of an episode (in-process for serial evaluation, inside a worker otherwise)
# --------------------------------------------------------------------------------------------


class EnvSession:
    """Holds at most one env of ``suite``; ``open`` / ``step`` raise :class:`EnvOpError`.

    Results are dicts: ``obs`` (the env's observation dict), ``info``, ``frame`` (uint8
    (H, W, 3) from ``env.render()`` when asked, else None), ``expert_action`` (float32 (D,) when
    the session runs the expert, else None) and ``expert_error`` (a describe_exception dict
    when the expert raised, else None); ``step`` adds ``reward``, ``terminated``, ``truncated``.
    """

    def __init__(self, suite: Suite) -> None:
        self.suite = suite
        self.env: Any = None
        self._expert: Any = None
        self._expert_instruction: str | None = None
        self._obs: dict[str, Any] | None = None

    def make_env(self, task: str, seed: int | None, split: str = "train") -> None:
        self.close()
        try:
            self.env = self.suite.make_env(task, seed=seed, split=split)
        except Exception as e:  # noqa: BLE001
            raise EnvOpError("make_env", e) from e

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
        self._need_env("env.reset")
        try:
            obs, info = self.env.reset(seed=seed, options=options)
        except Exception as e:  # noqa: BLE001
            raise EnvOpError("env.reset", e) from e
        self._obs = obs
        return {"obs": obs, "info": info}

    def render(self) -> np.ndarray:
        self._need_env("env.render")
        try:
            return np.asarray(self.env.render())
        except Exception as e:  # noqa: BLE001
            raise EnvOpError("env.render", e) from e

    def open(
        self,
        task: str,
        seed: int,
        split: str = "train",
        instruction: str | None = None,
        render: bool = False,
        expert: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """make_env(task, seed, split) + reset(seed) (+ render), and the expert when asked."""
        self.make_env(task, seed=seed, split=split)
        out = self.reset(seed=seed, options={"instruction": instruction} if instruction else None)
        self._expert = None
        if expert is not None:
            try:
                self._expert = self.suite.expert(task, noise=float(expert.get("noise", 0.0)), seed=seed)
            except Exception as e:  # noqa: BLE001
                raise EnvOpError("expert", e) from e
            self._expert_instruction = instruction
        return self._finish(out, render)

    def step(self, action: np.ndarray, render: bool = False) -> dict[str, Any]:
        self._need_env("env.step")
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except Exception as e:  # noqa: BLE001
            raise EnvOpError("env.step", e) from e
        self._obs = obs
        out = {"obs": obs, "reward": reward, "terminated": bool(terminated), "truncated": bool(truncated), "info": info}
        return self._finish(out, render)

    def expert_action(self) -> np.ndarray:
        """The session expert's action for the last observation, float32 (D,)."""
        if self._expert is None or self._obs is None:
            raise RuntimeError("expert_action: open the env with expert={...} first")
        raw = {
            "state": np.asarray(self._obs["state"], np.float32).reshape(-1),
            "instruction": self._expert_instruction or self._obs["instruction"],
        }
        return np.asarray(self._expert(raw, self.env), np.float32)

    def _finish(self, out: dict[str, Any], render: bool) -> dict[str, Any]:
        out["frame"] = self.render() if render else None
        out["expert_action"] = out["expert_error"] = None
        if self._expert is not None:
            try:
                out["expert_action"] = self.expert_action()
            except Exception as e:  # noqa: BLE001 - reported when the policy asks for the action
                out["expert_error"] = describe_exception(e)
        return out

    def _need_env(self, phase: str) -> None:
        if self.env is None:
            raise EnvOpError(phase, RuntimeError("no env: send make_env/open first"))

    def close(self) -> None:
        env, self.env, self._expert, self._obs = self.env, None, None, None
        if env is not None:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - closing must not fail an episode
                pass


# --------------------------------------------------------------------------------------------
# wire helpers
# --------------------------------------------------------------------------------------------


def _plain(x: Any, depth: int = 0) -> Any:
    """Make ``x`` msgpack-numpy safe: arrays of bool/int/float, dicts, lists, scalars, str;
    anything else becomes its repr (info dicts may hold arbitrary objects)."""
    if x is None or isinstance(x, (bool, int, float, str, bytes)):
        return x
    if isinstance(x, np.generic):
        return x.item() if x.dtype.kind in wire.ALLOWED_KINDS else repr(x)
    if isinstance(x, np.ndarray):
        return x if x.dtype.kind in wire.ALLOWED_KINDS else repr(x)
    if depth > 16:
        return repr(x)
    if isinstance(x, dict):
        return {str(k) if not isinstance(k, (str, int)) else k: _plain(v, depth + 1) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v, depth + 1) for v in x]
    if hasattr(x, "__array__"):  # e.g. a torch tensor from an env
        try:
            return _plain(np.asarray(x), depth + 1)
        except Exception:  # noqa: BLE001
            pass
    return repr(x)
