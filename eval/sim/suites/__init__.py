"""Suite registry and the interface every simulated suite implements.

A *suite* is a family of tasks sharing one embodiment (action/state dims, image size)::

    suite = make_suite("reach2d", image_size=64)
    env = suite.make_env("reach_red", seed=0)          # a gymnasium.Env
    obs, info = env.reset()                            # {"image", "state", "instruction"}
    act = suite.expert("reach_red")(obs, env)          # np.ndarray (action_dim,)
    suite.instructions("reach_red", split="heldout")   # paraphrases never used for training

Register a new suite with ``@register_suite("name")`` on a :class:`Suite` subclass (or any
factory returning one).
"""

from __future__ import annotations

import abc
import inspect
import json
from typing import Any, Callable, Sequence

import numpy as np

from vla_ebt.registry import Registry

__all__ = ["Suite", "register_suite", "make_suite", "available_suites", "parse_suite_args", "suite_make_kwargs",
           "INSTRUCTION_SPLITS"]

INSTRUCTION_SPLITS = ("train", "heldout")

# Built-in suites are imported on first use so that e.g. MuJoCo is loaded only by processes that need
# it: suite name -> module whose import registers it.
_REGISTRY: Registry[Callable[..., "Suite"]] = Registry("suite", lazy={
    "reach2d": f"{__name__}.reach2d",
    "reach2d_detour": f"{__name__}.reach2d_detour",
    "metaworld": f"{__name__}.metaworld",
    "pusht": f"{__name__}.pusht",
    "libero": f"{__name__}.libero",
})


class Suite(abc.ABC):
    """Interface of a simulated suite.

    Attributes (set by subclasses):
        name:              registry name.
        action_dim:        D of the env action.
        state_dim:         dim of ``obs["state"]``.
        image_size:        S of ``obs["image"]`` (uint8, (3, S, S)).
        num_views:         cameras per observation (``obs["image"]`` is one view when 1).
        max_episode_steps: the env truncates after this many steps.
        episode_attrs:     attributes of ``env.unwrapped`` an evaluation records after each episode
                           (e.g. the detour suite's ``mode``: which demonstrated mode it followed);
                           empty for suites with nothing beyond success.
    """

    name: str = ""
    episode_attrs: tuple[str, ...] = ()
    action_dim: int
    state_dim: int
    image_size: int
    num_views: int = 1
    max_episode_steps: int

    @abc.abstractmethod
    def task_names(self) -> list[str]:
        """All task names of the suite."""

    @abc.abstractmethod
    def make_env(self, task: str, seed: int | None = None, split: str = "train") -> Any:
        """A gymnasium.Env for ``task``; its first ``reset()`` without a seed uses ``seed``.
        Each episode's instruction is drawn from the paraphrases of ``split``."""

    @abc.abstractmethod
    def expert(self, task: str, noise: float = 0.0, seed: int | None = None) -> Callable[[dict, Any], np.ndarray]:
        """A scripted expert ``fn(obs_dict, env) -> action`` (may read privileged env state)."""

    @abc.abstractmethod
    def instructions(self, task: str, split: str = "train") -> list[str]:
        """Paraphrases of the task's instruction; ``split`` is "train" or "heldout"."""

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) of the action box, float32 (action_dim,)."""
        raise NotImplementedError

    def check_task(self, task: str) -> None:
        names = self.task_names()
        if task not in names:
            raise ValueError(f"suite {self.name!r}: unknown task {task!r}; known tasks: {names}")

    def check_split(self, split: str) -> None:
        if split not in INSTRUCTION_SPLITS:
            raise ValueError(f"instruction split must be one of {list(INSTRUCTION_SPLITS)}, got {split!r}")


def register_suite(name: str) -> Callable[[Callable[..., Suite]], Callable[..., Suite]]:
    """Decorator registering a Suite class/factory under ``name`` (duplicate names raise)."""
    return _REGISTRY.register(name)


def available_suites() -> list[str]:
    """Sorted names of the registered and built-in suites (built-ins not imported yet included)."""
    return _REGISTRY.names()


def make_suite(name: str, **kwargs: Any) -> Suite:
    """Build a suite by name; unknown names raise ValueError listing the known ones."""
    suite = _REGISTRY.get(name)(**kwargs)
    try:  # how to rebuild it (env worker processes build their own copy)
        suite.make_kwargs = dict(kwargs)
    except AttributeError:
        # make_kwargs is a read-only property (MetaWorldSuite derives it from its config): keep the
        # suite's own. (Not __slots__: Suite has none, so every subclass instance has a __dict__.)
        pass
    return suite


def _plain_value(v: Any) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain_value(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain_value(x) for k, x in v.items())
    return False


def suite_make_kwargs(suite: Any) -> dict[str, Any]:
    """Best guess of the ``make_suite`` kwargs that rebuild ``suite`` (e.g. in an env worker): its
    ``make_kwargs`` attribute if present, else the constructor's parameters that the suite keeps
    as same-named plain attributes (the worker's suite is then checked against this one)."""
    kw = getattr(suite, "make_kwargs", None)
    if isinstance(kw, dict):
        return dict(kw)
    out: dict[str, Any] = {}
    try:
        params = inspect.signature(type(suite).__init__).parameters
    except (TypeError, ValueError):
        return out
    for name, p in params.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if hasattr(suite, name) and _plain_value(getattr(suite, name)):
            v = getattr(suite, name)
            out[name] = list(v) if isinstance(v, tuple) else v
    return out


def parse_suite_args(items: Sequence[str]) -> dict[str, Any]:
    """["image_size=32", "camera=front"] -> {"image_size": 32, "camera": "front"} (JSON values, else
    the raw string). Raises ValueError for an item that is not KEY=VALUE."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--suite-arg expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out
