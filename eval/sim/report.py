"""Evaluation results: per-episode records, per-task aggregates with 95% Wilson intervals, and the
report written as JSON and markdown (:class:`EvalReport`), plus :func:`load_report` to read it back."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from vla_ebt.config_io import atomic_write_text, json_safe

__all__ = ["Z95", "wilson_interval", "EpisodeSpec", "EpisodeResult", "TaskResult", "EvalReport", "load_report"]

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % by default); n = 0 -> (0, 1)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: successes must be in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(sum(xs) / len(xs)) if xs else float("nan")


_json_safe = json_safe


def _nan(x: Any) -> float:
    return float("nan") if x is None else float(x)


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


@dataclass
class EpisodeSpec:
    """One evaluation job: episode ``index`` of ``task`` with env seed ``seed``
    (= ``episode_seed(base_seed, task, index)``)."""

    task: str
    index: int
    seed: int
    base_seed: int | None = None


@dataclass
class EpisodeResult:
    task: str
    index: int
    seed: int
    instruction: str
    success: bool
    length: int
    chunk_latency_ms: list[float] = field(default_factory=list)
    energy: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    error: str | None = None
    video: str | None = None
    wall_s: float = 0.0
    base_seed: int | None = None
    # chunk execution (docs/realtime.md): chunk switches, control periods the loop waited for a
    # chunk (stalls) or held its last action (starved), energy-gate rejections, and the smoothness
    # of the executed actions (vla_ebt_client.action_smoothness; None/NaN: undefined)
    switches: int = 0
    stalls: int = 0
    starved: int = 0
    gate_rejections: int = 0
    max_switch_jump: float | None = None
    mean_switch_jump: float | None = None
    mean_sq_second_diff: float | None = None

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_latency_ms)


@dataclass
class TaskResult:
    task: str
    episodes: int
    successes: int
    success_rate: float
    ci_low: float
    ci_high: float
    mean_length: float
    mean_chunk_latency_ms: float
    mean_energy: float
    mean_steps: float
    errors: int
    mean_max_switch_jump: float = float("nan")
    mean_sq_second_diff: float = float("nan")
    mean_stalls: float = float("nan")
    mean_starved: float = float("nan")

    @classmethod
    def from_episodes(cls, task: str, eps: Sequence[EpisodeResult]) -> "TaskResult":
        n = len(eps)
        k = sum(bool(e.success) for e in eps)
        lo, hi = wilson_interval(k, n)
        return cls(
            task=task,
            episodes=n,
            successes=k,
            success_rate=k / n if n else float("nan"),
            ci_low=lo,
            ci_high=hi,
            mean_length=_mean([e.length for e in eps]),
            mean_chunk_latency_ms=_mean([x for e in eps for x in e.chunk_latency_ms]),
            mean_energy=_mean([x for e in eps for x in e.energy]),
            mean_steps=_mean([x for e in eps for x in e.steps]),
            errors=sum(e.error is not None for e in eps),
            mean_max_switch_jump=_mean([e.max_switch_jump for e in eps]),
            mean_sq_second_diff=_mean([e.mean_sq_second_diff for e in eps]),
            mean_stalls=_mean([e.stalls for e in eps]),
            mean_starved=_mean([e.starved for e in eps]),
        )


@dataclass
class EvalReport:
    """Per-task and overall results. ``success_rate`` is the mean over tasks of the per-task
    rates; ``overall`` pools all episodes (its CI is the pooled Wilson interval).

    seeds: the base seeds evaluated (``seed`` is the first); num_workers: env worker processes
    (0: serial, in-process); worker_restarts: workers replaced after a crash or a timeout;
    execution: the chunk-execution settings (``EvalConfig.execution()``; None: not recorded)."""

    suite: str
    policy: str
    seed: int
    split: str
    tasks: dict[str, TaskResult]
    episodes: list[EpisodeResult]
    wall_s: float = 0.0
    seeds: list[int] | None = None
    num_workers: int = 0
    worker_restarts: int = 0
    execution: dict[str, Any] | None = None

    @property
    def success_rate(self) -> float:
        return _mean([t.success_rate for t in self.tasks.values()])

    @property
    def overall(self) -> TaskResult:
        return TaskResult.from_episodes("overall", self.episodes)

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(
            {
                "suite": self.suite,
                "policy": self.policy,
                "seed": self.seed,
                "split": self.split,
                "seeds": list(self.seeds) if self.seeds else [self.seed],
                "num_workers": self.num_workers,
                "worker_restarts": self.worker_restarts,
                "execution": self.execution,
                "wall_s": self.wall_s,
                "success_rate": self.success_rate,
                "overall": dataclasses.asdict(self.overall),
                "tasks": {k: dataclasses.asdict(v) for k, v in self.tasks.items()},
                "episodes": [dataclasses.asdict(e) for e in self.episodes],
            }
        )

    def to_json(self, path: str | Path) -> Path:
        """Write the report as JSON atomically (temp file in the same folder + rename)."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))
        return path

    def to_markdown(self, max_errors: int = 5) -> str:
        def f(x: float, fmt: str) -> str:
            return "–" if x is None or not math.isfinite(x) else format(x, fmt)

        seeds = self.seeds if self.seeds and len(self.seeds) > 1 else None
        seed_txt = f"seeds {', '.join(map(str, seeds))}" if seeds else f"seed {self.seed}"
        workers = f" · {self.num_workers} env workers" if self.num_workers else ""
        if self.worker_restarts:
            workers += f" ({self.worker_restarts} replaced)"
        lines = [
            f"**{self.suite}** · policy `{self.policy}` · {seed_txt} · instructions `{self.split}` "
            f"· success {f(self.success_rate, '.3f')} (mean over tasks) · {self.wall_s:.1f} s{workers}",
            "",
            "| task | episodes | successes | success rate | 95% CI | mean length | chunk latency (ms) | energy "
            "| steps/chunk | errors |",
            "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for t in [*self.tasks.values(), self.overall]:
            name = f"**{t.task}**" if t.task == "overall" else t.task
            lines.append(
                f"| {name} | {t.episodes} | {t.successes} | {f(t.success_rate, '.3f')} | "
                f"[{t.ci_low:.3f}, {t.ci_high:.3f}] | {f(t.mean_length, '.1f')} | "
                f"{f(t.mean_chunk_latency_ms, '.2f')} | {f(t.mean_energy, '.4g')} | {f(t.mean_steps, '.2f')} | {t.errors} |"
            )
        ex = self.execution or {}
        if ex:
            delay = (f"delay {ex.get('delay_steps')} steps" if ex.get("delay_mode") == "steps"
                     else f"delay = measured latency at {ex.get('control_hz'):g} Hz")
            lines += ["", f"Chunk execution: `{ex.get('strategy')}` · {delay} · on starve `{ex.get('on_starve')}`"]
        lines += [
            "",
            "| task | max switch jump | mean sq 2nd diff | stalls/ep | starved/ep |",
            "|---|---:|---:|---:|---:|",
        ]
        for t in [*self.tasks.values(), self.overall]:
            name = f"**{t.task}**" if t.task == "overall" else t.task
            lines.append(f"| {name} | {f(t.mean_max_switch_jump, '.4g')} | {f(t.mean_sq_second_diff, '.4g')} | "
                         f"{f(t.mean_stalls, '.1f')} | {f(t.mean_starved, '.1f')} |")
        errs = [e for e in self.episodes if e.error]
        if errs:
            lines += ["", f"{len(errs)} episode(s) ended with an error:"]
            lines += [f"- {e.task} #{e.index} (seed {e.seed}): {e.error}" for e in errs[:max_errors]]
            if len(errs) > max_errors:
                lines.append(f"- ... {len(errs) - max_errors} more")
        return "\n".join(lines)

    def print_table(self, file: Any = None) -> None:
        print(self.to_markdown(), file=file)

    def __str__(self) -> str:
        return self.to_markdown()


def load_report(path: str | Path) -> EvalReport:
    """Read a report written by :meth:`EvalReport.to_json`."""
    d = json.loads(Path(path).read_text())

    def tr(x: dict[str, Any]) -> TaskResult:
        return TaskResult(**{k: _nan(v) if isinstance(v, float) or v is None else v for k, v in x.items()})

    return EvalReport(
        suite=d["suite"],
        policy=d["policy"],
        seed=d["seed"],
        split=d["split"],
        tasks={k: tr(v) for k, v in d["tasks"].items()},
        episodes=[EpisodeResult(**e) for e in d["episodes"]],
        wall_s=d.get("wall_s", 0.0),
        seeds=d.get("seeds"),
        num_workers=d.get("num_workers", 0),
        worker_restarts=d.get("worker_restarts", 0),
        execution=d.get("execution"),
    )


# --------------------------------------------------------------------------------------------
# baseline adapters (same interface as VLAPolicy for the loop)
# --------------------------------------------------------------------------------------------
