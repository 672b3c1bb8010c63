"""Perturbations for the shift and recovery studies, as gymnasium wrappers on any suite's env.

Observation shift (the policy sees a changed world, the task is unchanged):

- :class:`ImageNoise`:   Gaussian pixel noise, ``sigma`` in [0, 255] units, on every view.
- :class:`ImageShift`:   the camera moved: every view rolled by ``(dy, dx)`` pixels (edge pixels
                         repeat instead of wrapping).

Failure injection (the episode is pushed off the demonstrated path mid-way):

- :class:`ActionBurst`:     for ``length`` steps from ``start`` the env executes uniform random
                            actions from the action box instead of the policy's.
- :class:`DisplaceObject`:  at step ``at`` the env's ``displace_object(rng, scale)`` hook moves the
                            task object / target and returns a :class:`~eval.sim.contracts.Displacement`
                            (suites implement it; others raise a clear error).
                            ``scale`` is in the suite's units (reach2d: unit square, Meta-World:
                            metres, PushT: pixels); omitted, the suite's default applies.
- :class:`ForceGripperOpen`: for ``length`` steps from ``start`` action dim ``dim`` is forced to
                            ``value`` (Meta-World: dim 3 = -1 opens the gripper).

:class:`PerturbedSuite` wraps a suite so that every env it makes carries the wrappers;
:func:`make_perturbation` builds one from a spec string such as ``"burst:start=10,length=8"``
(used by the study commands). Perturbation RNGs are seeded from the env's reset seed, so a study
is reproducible and the same episode gets the same perturbation under every policy.
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np

from .contracts import Displacement, DisplaceableEnv, PerturbableSuite

__all__ = ["ImageNoise", "ImageShift", "ActionBurst", "DisplaceObject", "ForceGripperOpen", "PerturbedSuite",
           "make_perturbation", "onset_step", "PERTURBATIONS"]


class _Seeded(gym.Wrapper):
    """Keeps an RNG re-seeded from each reset's seed (+ a per-wrapper salt) and a step counter.
    ``onset_arg``: the constructor argument holding the env step at which it first acts (None: from
    the reset on, as an observation shift)."""

    salt = 0
    onset_arg: str | None = None

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.rng = np.random.default_rng(self.salt)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self.rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, self.salt])
        self.t = 0
        return super().reset(seed=seed, options=options)


class ImageNoise(_Seeded):
    """obs["image"] uint8 (..., 3, S, S) + N(0, sigma^2), clipped to [0, 255]."""

    salt = 11

    def __init__(self, env: gym.Env, sigma: float = 20.0) -> None:
        super().__init__(env)
        self.sigma = float(sigma)

    def _noisy(self, obs: dict[str, Any]) -> dict[str, Any]:
        img = obs["image"].astype(np.float32) + self.rng.normal(0.0, self.sigma, obs["image"].shape)
        return {**obs, "image": np.clip(np.rint(img), 0, 255).astype(np.uint8)}

    def reset(self, **kw: Any):
        obs, info = super().reset(**kw)
        return self._noisy(obs), info

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        return self._noisy(obs), r, term, trunc, info


class ImageShift(gym.Wrapper):
    """Every view shifted by (dy, dx) pixels (content moves down/right for positive values)."""

    def __init__(self, env: gym.Env, dy: int = 4, dx: int = 4) -> None:
        super().__init__(env)
        self.dy, self.dx = int(dy), int(dx)

    def _shift(self, obs: dict[str, Any]) -> dict[str, Any]:
        img = obs["image"]
        s = img.shape[-1]
        rows = np.clip(np.arange(s) - self.dy, 0, s - 1)
        cols = np.clip(np.arange(s) - self.dx, 0, s - 1)
        return {**obs, "image": np.ascontiguousarray(img[..., rows, :][..., cols])}

    def reset(self, **kw: Any):
        obs, info = super().reset(**kw)
        return self._shift(obs), info

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        return self._shift(obs), r, term, trunc, info


class ActionBurst(_Seeded):
    """Steps [start, start + length): the executed action is uniform in the env's action box."""

    salt = 23
    onset_arg = "start"

    def __init__(self, env: gym.Env, start: int = 10, length: int = 8) -> None:
        super().__init__(env)
        self.start, self.length = int(start), int(length)

    def step(self, action):
        if self.start <= self.t < self.start + self.length:
            box = self.env.action_space
            action = self.rng.uniform(box.low, box.high).astype(np.float32)
        self.t += 1
        return self.env.step(action)


class DisplaceObject(_Seeded):
    """At step ``at`` call ``env.unwrapped.displace_object(rng, scale)`` (the suite's hook, see
    :class:`~eval.sim.contracts.DisplaceableEnv`); ``displacement`` holds what it returned."""

    salt = 37
    onset_arg = "at"

    def __init__(self, env: gym.Env, at: int = 10, scale: float | None = None) -> None:
        super().__init__(env)
        if not isinstance(env.unwrapped, DisplaceableEnv):
            raise ValueError(f"{type(env.unwrapped).__name__} has no displace_object(rng, scale) hook; "
                             "this suite does not support the object-displacement perturbation")
        self.at, self.scale = int(at), scale  # None: the suite's own default (units differ per suite)
        self.displacement: Displacement | None = None

    def reset(self, **kw: Any):
        self.displacement = None
        return super().reset(**kw)

    def step(self, action):
        if self.t == self.at:
            hook = self.env.unwrapped.displace_object
            d = hook(self.rng) if self.scale is None else hook(self.rng, float(self.scale))
            if not isinstance(d, Displacement):
                raise TypeError(f"{type(self.env.unwrapped).__name__}.displace_object returned {type(d).__name__}, "
                                "expected eval.sim.contracts.Displacement")
            self.displacement = d
        self.t += 1
        return self.env.step(action)


class ForceGripperOpen(_Seeded):
    """Steps [start, start + length): action[dim] = value (the gripper is forced open)."""

    salt = 41
    onset_arg = "start"

    def __init__(self, env: gym.Env, start: int = 30, length: int = 10, dim: int = 3, value: float = -1.0) -> None:
        super().__init__(env)
        n = int(np.prod(env.action_space.shape))
        if not 0 <= dim < n:
            raise ValueError(f"ForceGripperOpen: dim {dim} outside the {n}-dim action")
        self.start, self.length, self.dim, self.value = int(start), int(length), int(dim), float(value)

    def step(self, action):
        if self.start <= self.t < self.start + self.length:
            action = np.array(action, np.float32, copy=True)
            action[self.dim] = self.value
        self.t += 1
        return self.env.step(action)


PERTURBATIONS: dict[str, type[gym.Wrapper]] = {
    "noise": ImageNoise,
    "shift": ImageShift,
    "burst": ActionBurst,
    "displace": DisplaceObject,
    "gripper_open": ForceGripperOpen,
}


def _parse(spec: str) -> tuple[type[gym.Wrapper], dict[str, Any]]:
    name, _, args = spec.partition(":")
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r} in {spec!r}; known: {sorted(PERTURBATIONS)}")
    kw: dict[str, Any] = {}
    for part in filter(None, args.split(",")):
        k, eq, v = part.partition("=")
        if not eq:
            raise ValueError(f"perturbation {spec!r}: expected key=value, got {part!r}")
        kw[k.strip()] = float(v) if any(c in v for c in ".eE") else int(v)
    return PERTURBATIONS[name], kw


def make_perturbation(spec: str) -> Callable[[gym.Env], gym.Env]:
    """``"name"`` or ``"name:key=value,key=value"`` -> env wrapper factory (numbers parsed as float/int).

    Names: ``noise`` (sigma), ``shift`` (dy, dx), ``burst`` (start, length), ``displace`` (at, scale),
    ``gripper_open`` (start, length, dim, value)."""
    cls, kw = _parse(spec)
    return lambda env: cls(env, **kw)


def onset_step(spec: str) -> int:
    """The env step at which the perturbation ``spec`` first acts (its ``onset_arg``, given or the
    constructor's default); 0 for one that acts from the reset on. ValueError for a bad spec."""
    import inspect

    cls, kw = _parse(spec)
    arg = getattr(cls, "onset_arg", None)
    if arg is None:
        return 0
    return int(kw.get(arg, inspect.signature(cls.__init__).parameters[arg].default))


class PerturbedSuite:
    """A suite whose envs are wrapped by ``wrappers`` (applied in order); everything else delegates.

    Runs in-process (``EvalConfig(num_workers=0)``): the wrappers are closures, not picklable.
    """

    def __init__(self, suite: PerturbableSuite, wrappers: list[Callable[[gym.Env], gym.Env]], tag: str = "") -> None:
        if not isinstance(suite, PerturbableSuite):
            raise TypeError(f"PerturbedSuite: {type(suite).__name__} is not a suite (needs name and "
                            "make_env(task, seed, split); see eval.sim.contracts.PerturbableSuite)")
        self._suite = suite
        self._wrappers = list(wrappers)
        self.name = f"{suite.name}+{tag}" if tag else suite.name

    def __getattr__(self, item: str) -> Any:
        return getattr(self._suite, item)

    def make_env(self, task: str, seed: int | None = None, split: str = "train") -> gym.Env:
        env = self._suite.make_env(task, seed=seed, split=split)
        for w in self._wrappers:
            env = w(env)
        return env
