"""Cached expert demonstrations, stored in the data pipeline's shard schema.

The first call for a demo configuration rolls out the suite's scripted expert
(:func:`eval.sim.demos.collect_demos`) and writes the episodes with the same writer and statistics
as converted OXE data (:func:`data_pipelines.shards.write_episodes`: webdataset tar shards,
``manifest.json``, ``stats.json``). Later calls with the same configuration read the shards back::

    eps, folder = cached_demos(DemoSpec(suite="reach2d", episodes_per_task=1000), cache_root)
    # folder/reach2d-00000.tar ..., folder/stats.json, folder/spec.json

The cache key is a hash of the :class:`DemoSpec` (suite, suite kwargs, tasks, episode count, seed,
noise) plus :data:`CACHE_VERSION`; the folder is written under a temporary name and renamed when
complete, so a killed generation never leaves a folder that a later run would read. The same
folder can be streamed by :mod:`vla_ebt.data.stream` (it is an ordinary converted dataset).
``num_workers`` generates in env worker processes (byte-identical episodes; not part of the key).

Baselines (the random and expert policies' closed-loop results) depend only on the suite, its
kwargs, the tasks, the episode count, the evaluation seed and the policy's own arguments, never on
a trained policy: :func:`cached_baseline` keys a :class:`BaselineSpec` the same way and keeps the
per-episode report (``eval.sim.report`` JSON) in ``<cache root>/baselines/<suite>-<policy>-<key>/``::

    report, hit = cached_baseline(BaselineSpec("metaworld", "expert", tasks, 10, seed=10_000),
                                  lambda: evaluate(ExpertPolicy(suite), suite, EvalConfig(tasks=tasks, seed=10_000)))
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vla_ebt.data.episodes import Episode

from .demos import collect_demos

__all__ = ["DemoSpec", "BaselineSpec", "cached_demos", "cached_baseline", "read_demo_shards", "default_cache_root",
           "CACHE_VERSION"]

#: bump when the experts, the suites' envs or the on-disk layout change so stale demos and baselines are not reused
CACHE_VERSION = 1


@dataclass(frozen=True)
class DemoSpec:
    """What to generate: ``episodes_per_task`` expert episodes per task of ``suite``."""

    suite: str
    tasks: tuple[str, ...] = ()  # empty: all tasks of the suite
    episodes_per_task: int = 40
    seed: int = 0
    action_noise: float = 0.0
    suite_kwargs: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        """Stable hash of the spec (hex, 16 chars)."""
        blob = json.dumps({"v": CACHE_VERSION, **asdict(self)}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BaselineSpec:
    """What a baseline's closed-loop results depend on: ``policy`` ("random", "expert", ...) built
    with ``policy_args`` (e.g. {"seed": 10000} / {"noise": 0.0}), ``episodes_per_task`` episodes of
    each task of ``suite`` (built with ``suite_kwargs``) from base seed ``seed``, instructions of
    ``split``."""

    suite: str
    policy: str
    tasks: tuple[str, ...]
    episodes_per_task: int
    seed: int
    split: str = "train"
    suite_kwargs: dict[str, Any] = field(default_factory=dict)
    policy_args: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        """Stable hash of the spec and :data:`CACHE_VERSION` (hex, 16 chars), as :meth:`DemoSpec.key`."""
        blob = json.dumps({"v": CACHE_VERSION, "kind": "baseline", **asdict(self)}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_root() -> Path:
    """``$VLA_EBT_CACHE`` or ``~/.cache/vla_ebt``, plus ``demos/``."""
    return Path(os.environ.get("VLA_EBT_CACHE", Path.home() / ".cache" / "vla_ebt")) / "demos"


def read_demo_shards(folder: str | os.PathLike) -> list[Episode]:
    """Episodes of a demo folder written by :func:`cached_demos` (shard order, then episode order).

    Images come back as uint8 (T, V, 3, S, S) (PNG: bit-exact); the task and env seed are read from
    each episode's metadata.
    """
    from vla_ebt.data.shard_format import iter_shard, shard_paths

    out: list[Episode] = []
    for path in shard_paths(folder):
        for ep in iter_shard(path, decode_images=True):
            meta = ep["meta"]
            roles = meta.get("cameras") or sorted(ep["images"])
            missing = [r for r in roles if r not in ep["images"]]
            if missing:
                raise ValueError(f"{path}: episode {ep['__key__']!r} lacks camera(s) {missing}")
            views = [np.stack(ep["images"][r]) for r in roles]  # each (T, S, S, 3)
            images = np.stack(views, axis=1).transpose(0, 1, 4, 2, 3)  # (T, V, 3, S, S)
            fp = dict(kv.split("=", 1) for kv in str(meta.get("file_path", "")).split(";") if "=" in kv)
            out.append(Episode(
                images=np.ascontiguousarray(images, dtype=np.uint8),
                state=ep["state"].astype(np.float32),
                action=ep["action"].astype(np.float32),
                instruction=ep["instruction"],
                task=str(meta.get("task", fp.get("task", ""))),
                success=bool(meta.get("success", True)),
                seed=int(fp.get("seed", -1)),
            ))
    return out


def cached_demos(spec: DemoSpec, cache_root: str | os.PathLike | None = None,
                 log: Any = print, num_workers: int = 0) -> tuple[list[Episode], Path]:
    """Demonstrations for ``spec`` and the shard folder holding them (generated on a cache miss,
    in ``num_workers`` env worker processes when > 0; same episodes either way).

    Returns (episodes, folder). ``cache_root`` None: :func:`default_cache_root`.
    """
    from vla_ebt.data.shard_format import read_manifest
    from data_pipelines.shards import write_episodes

    from .suites import make_suite

    root = Path(cache_root) if cache_root is not None else default_cache_root()
    folder = root / f"{spec.suite}-{spec.key()}"
    manifest = read_manifest(folder) if folder.exists() else None
    if manifest is not None and manifest.get("complete"):
        eps = read_demo_shards(folder)
        if log is not None:
            log(f"[data] {len(eps)} cached demo episodes from {folder}")
        return eps, folder

    suite = make_suite(spec.suite, **spec.suite_kwargs)
    tasks = list(spec.tasks) or suite.task_names()
    eps = collect_demos(suite, tasks, spec.episodes_per_task, seed=spec.seed, action_noise=spec.action_noise,
                        num_workers=num_workers, suite_kwargs=dict(spec.suite_kwargs))
    tmp = root / f".{folder.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_episodes(eps, tmp, spec.suite)
    (tmp / "spec.json").write_text(json.dumps(asdict(spec), indent=2, sort_keys=True, default=str))
    done = read_manifest(folder) if folder.exists() else None
    if done is not None and done.get("complete"):  # another process finished the same spec meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        return eps, folder
    shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder from an older run
    os.replace(tmp, folder)
    if log is not None:
        log(f"[data] wrote {len(eps)} demo episodes to {folder}")
    return eps, folder


def cached_baseline(spec: BaselineSpec, evaluate_fn: Callable[[], Any], cache_root: str | os.PathLike | None = None,
                    log: Any = print) -> tuple[Any, bool]:
    """The baseline's :class:`eval.sim.report.EvalReport` for ``spec``, and whether it came from the cache.

    On a miss ``evaluate_fn()`` runs the evaluation (it must match ``spec``); its report is stored in
    ``<cache_root>/baselines/<suite>-<policy>-<key>/report.json`` (+ ``spec.json``), written under a
    temporary name and renamed, so an interrupted run never leaves a partial entry. A report with an
    episode that ended in an error (env / worker failure) is returned but not stored. ``cache_root``
    None: :func:`default_cache_root` (the demo cache root).
    """
    from .report import load_report

    root = Path(cache_root) if cache_root is not None else default_cache_root()
    folder = root / "baselines" / f"{spec.suite}-{spec.policy}-{spec.key()}"
    if (folder / "report.json").is_file():
        try:
            report = load_report(folder / "report.json")
        except (ValueError, KeyError, TypeError) as e:  # unreadable: evaluate again and overwrite
            if log is not None:
                log(f"[eval] ignoring unreadable cached baseline {folder}: {e}")
        else:
            if log is not None:
                log(f"[eval] {spec.policy} baseline from the cache ({folder})")
            return report, True
    report = evaluate_fn()
    errors = [e.error for e in report.episodes if getattr(e, "error", None)]
    if errors:  # e.g. a crashed env worker: not a result of the baseline itself, so not kept
        if log is not None:
            log(f"[eval] {spec.policy} baseline not cached: {len(errors)} episode(s) ended in an error ({errors[0]})")
        return report, False
    tmp = folder.parent / f".{folder.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "spec.json").write_text(json.dumps(asdict(spec), indent=2, sort_keys=True, default=str))
    report.to_json(tmp / "report.json")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return report, False
