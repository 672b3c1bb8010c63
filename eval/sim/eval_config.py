"""EvalConfig: everything :func:`eval.sim.rollout.evaluate` needs besides the policy and the suite."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["EvalConfig", "VIDEO_FORMATS", "DELAY_MODES"]

VIDEO_FORMATS = ("gif", "mp4")
DELAY_MODES = ("steps", "wall_clock")


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

    Chunk execution (docs/realtime.md, "Asynchronous execution"):
        strategy:          "sync" (``policy.select_action``: the loop waits for every chunk),
                           "naive_async", "temporal_ensemble", "rtc" or "energy_gate" (the chunk
                           broker of :mod:`vla_ebt_client` around ``policy.predict_chunk``; needs a
                           chunk policy such as VLAPolicy, rtc a head with ``capabilities.inpainting``,
                           energy_gate one with ``capabilities.reports_energy``).
        delay_steps:       with ``delay_mode="steps"``: inference takes d control steps (the env
                           advances with the actions already committed meanwhile); deterministic.
        delay_mode:        "steps" or "wall_clock" (each chunk takes ``ceil(measured latency *
                           control_hz)`` steps).
        control_hz:        the control rate the wall-clock mode converts latencies with.
        on_starve:         async: "hold" the last action or "block" (the env waits) when the plan
                           runs out before the next chunk arrives.
        request_remaining: async: request the next chunk when this many planned actions remain
                           (None: horizon - n_action_steps).
        A sync loop waits for every chunk: its env does not advance meanwhile (the control
        periods it waits are counted as ``stalls``), so its success does not depend on the delay.

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
    strategy: str = "sync"
    delay_steps: int = 0
    delay_mode: str = "steps"
    control_hz: float = 10.0
    on_starve: str = "hold"
    request_remaining: int | None = None
    log: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if self.seeds is not None and not list(self.seeds):
            raise ValueError("EvalConfig: seeds must not be empty (None: [seed])")
        if self.video_format not in VIDEO_FORMATS:
            raise ValueError(f"EvalConfig: video_format must be 'gif' or 'mp4', got {self.video_format!r}")
        if isinstance(self.tasks, str):
            raise ValueError(f"EvalConfig: tasks must be a sequence of task names, got the string {self.tasks!r}")
        from vla_ebt_client import ON_STARVE, STRATEGIES

        if self.strategy not in STRATEGIES:
            raise ValueError(f"EvalConfig: strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.delay_mode not in DELAY_MODES:
            raise ValueError(f"EvalConfig: delay_mode must be one of {DELAY_MODES}, got {self.delay_mode!r}")
        if int(self.delay_steps) < 0:
            raise ValueError(f"EvalConfig: delay_steps must be >= 0, got {self.delay_steps}")
        if not self.control_hz > 0:
            raise ValueError(f"EvalConfig: control_hz must be > 0, got {self.control_hz}")
        if self.on_starve not in ON_STARVE:
            raise ValueError(f"EvalConfig: on_starve must be one of {ON_STARVE}, got {self.on_starve!r}")
        if self.request_remaining is not None and int(self.request_remaining) < 0:
            raise ValueError(f"EvalConfig: request_remaining must be >= 0, got {self.request_remaining}")

    def execution(self) -> dict[str, Any]:
        """The chunk-execution fields (as recorded in ``EvalReport.execution``)."""
        return {"strategy": self.strategy, "delay_steps": int(self.delay_steps), "delay_mode": self.delay_mode,
                "control_hz": float(self.control_hz), "on_starve": self.on_starve,
                "request_remaining": self.request_remaining}

    def base_seeds(self) -> list[int]:
        """The base seeds to run, in order."""
        return [int(self.seed)] if self.seeds is None else [int(s) for s in self.seeds]
