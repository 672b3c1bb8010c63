"""EvalConfig: everything :func:`eval.sim.rollout.evaluate` needs besides the policy and the suite."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["EvalConfig", "VIDEO_FORMATS"]

VIDEO_FORMATS = ("gif", "mp4")


@dataclass(frozen=True)
class EvalConfig:
    """Options of one closed-loop evaluation; invalid values raise ValueError at construction.

    Episodes:
        tasks:             task names; None: all of the suite's tasks.
        episodes_per_task: episodes per task and base seed.
        seed / seeds:      base seeds; each runs ``episodes_per_task`` per task (seeds None: ``[seed]``).
        split:             instruction paraphrases the envs draw from ("train" or "heldout").
        instruction:       override every episode's instruction (e.g. for language probes).

    Observations:
        embodiment:        embodiment id sent with every observation.
        obs_steps:         state / frame history length To; None: ``policy.cfg.obs_steps`` if present, else 1.
        image_history:     send the last To frames per camera (camera-major) instead of the current one.

    Videos (first seed only):
        video_dir:         write the first ``max_videos_per_task`` episodes of each task as
                           ``{task}_ep{index:03d}_{success|fail}.{video_format}``; None: no videos.
        video_format:      "gif" or "mp4".

    Env workers:
        num_workers:       0: episodes run serially in this process; N > 0: N env worker processes.
        suite_kwargs:      ``make_suite(name, **suite_kwargs)`` in the workers (and here for a suite
                           name); None with a Suite object: inferred from its attributes, and the
                           workers' suite must match it.
        import_modules:    modules the workers (and this process) import first (registering suites).
        worker_python:     the workers' interpreter (a suite in another virtualenv; with a suite
                           name, the suite is then never built in this process).
        step_timeout_s / reset_timeout_s: bound each env step / render and each make_env + reset;
                           a worker past it is killed and replaced.

    log: called with one line per finished episode.
    """

    tasks: Sequence[str] | None = None
    episodes_per_task: int = 10
    seed: int = 0
    seeds: Sequence[int] | None = None
    split: str = "train"
    instruction: str | None = None
    embodiment: int = 0
    obs_steps: int | None = None
    image_history: bool = False
    video_dir: str | Path | None = None
    max_videos_per_task: int = 2
    video_format: str = "gif"
    num_workers: int = 0
    suite_kwargs: dict[str, Any] | None = None
    import_modules: Sequence[str] = field(default_factory=tuple)
    worker_python: str | None = None
    step_timeout_s: float = 30.0
    reset_timeout_s: float = 120.0
    log: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if self.seeds is not None and not list(self.seeds):
            raise ValueError("EvalConfig: seeds must not be empty (None: [seed])")
        if self.video_format not in VIDEO_FORMATS:
            raise ValueError(f"EvalConfig: video_format must be 'gif' or 'mp4', got {self.video_format!r}")
        if isinstance(self.tasks, str):
            raise ValueError(f"EvalConfig: tasks must be a sequence of task names, got the string {self.tasks!r}")

    def base_seeds(self) -> list[int]:
        """The base seeds to run, in order."""
        return [int(self.seed)] if self.seeds is None else [int(s) for s in self.seeds]
