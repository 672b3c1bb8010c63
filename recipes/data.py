"""Training data for ``recipes/finetune.py``: sim demonstrations or a mixture of converted shards.

Both builders return a :class:`TrainData`: the normalizer the policy is built with, and
``make_batches(start_batch)`` — an infinite iterator of training batches (schema of
:mod:`vla_ebt.schema`) positioned after ``start_batch`` consumed batches, which is what
:func:`vla_ebt.train.train_policy` needs to resume.

Errors a user can cause (missing folders, a dataset without statistics, mismatched weights) raise
``SystemExit`` with a message that names the config field, the dataset and the path.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from vla_ebt.normalize import NormalizationConfig, Normalizer
from vla_ebt.policy import PolicyConfig

from .configs import DataConfig

BatchFactory = Callable[[int], Iterator[Mapping[str, Any]]]


@dataclass
class TrainData:
    """normalizer: statistics of every embodiment in the data. make_batches(start) -> batches after
    ``start`` consumed ones. num_samples: training samples (steps) in one pass. datasets: names.
    suite / tasks: the sim suite and its tasks (None / [] for shards: nothing to evaluate on).
    prepare_policy: called once with the built policy before training (the frozen feature cache), or None."""

    normalizer: Normalizer
    make_batches: BatchFactory
    num_samples: int
    datasets: list[str]
    suite: Any = None
    tasks: list[str] | None = None
    prepare_policy: Callable[[Any], None] | None = None


def _fail(msg: str) -> SystemExit:
    return SystemExit(f"error: {msg}")


# ---------------------------------------------------------------------------------------------- sim


def sim_data(dc: DataConfig, pc: PolicyConfig, batch_size: int, seed: int, world: int, rank: int,
             env_workers: int = 0) -> TrainData:
    """Expert demonstrations from ``dc.suite`` (collected in memory, in ``env_workers`` env worker
    processes when > 0: same episodes), chunked per step, shuffled by a seeded DataLoader (a
    DistributedSampler per rank when world > 1)."""
    from torch.utils.data import DataLoader, DistributedSampler

    from eval.sim.demo_cache import DemoSpec, cached_demos
    from eval.sim.demos import collect_demos
    from eval.sim.suites import make_suite, parse_suite_args
    from vla_ebt.data.episodes import ChunkDataset, collate, dataset_stats

    try:
        suite_kwargs = parse_suite_args(dc.suite_args)
    except Exception as e:  # noqa: BLE001 - ValueError: malformed KEY=VALUE
        raise _fail(f"data.suite_args: {e}") from None
    try:
        suite = make_suite(dc.suite, **suite_kwargs)
    except (KeyError, ValueError, TypeError) as e:
        raise _fail(f"data.suite / data.suite_args: {e}") from None
    tasks = list(dc.tasks) or suite.task_names()
    for t in tasks:
        try:
            suite.check_task(t)
        except (KeyError, ValueError) as e:
            raise _fail(f"data.tasks: {e}") from None
    if pc.action_dim < suite.action_dim or pc.state_dim < suite.state_dim:
        raise _fail(f"policy.action_dim/state_dim ({pc.action_dim}/{pc.state_dim}) smaller than suite "
                    f"{dc.suite!r} needs ({suite.action_dim}/{suite.state_dim})")
    print(f"[data] {dc.episodes_per_task} expert episodes x {len(tasks)} tasks from suite {dc.suite!r}")
    spec = DemoSpec(suite=dc.suite, tasks=tuple(tasks), episodes_per_task=dc.episodes_per_task, seed=dc.seed,
                    action_noise=dc.action_noise, suite_kwargs=suite_kwargs)
    if dc.demo_cache == "off":
        episodes = collect_demos(suite, tasks, dc.episodes_per_task, seed=dc.seed, action_noise=dc.action_noise,
                                 num_workers=env_workers, suite_kwargs=suite_kwargs)
    else:
        episodes, _ = cached_demos(spec, dc.demo_cache or None, num_workers=env_workers)
    try:
        normalizer = Normalizer({dc.suite: dataset_stats(episodes)}, NormalizationConfig(on_degenerate=dc.on_degenerate),
                                max_action_dim=pc.action_dim, max_state_dim=pc.state_dim)
    except ValueError as e:
        raise _fail(f"demonstrations of suite {dc.suite!r}: {e} (from the command line: "
                    "--data.on-degenerate passthrough_dim)") from None
    dataset = ChunkDataset(episodes, horizon=pc.horizon, obs_steps=pc.obs_steps)
    # Both loaders get their own generator: without one, every new iterator draws its base seed from
    # the global RNG, which a resumed run restores before replaying consumed batches (different draws).
    if world > 1:  # each rank reads its own shard; batch_size is per rank
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, collate_fn=collate,
                            num_workers=dc.num_workers, generator=torch.Generator().manual_seed(seed + rank))
    else:
        sampler = None
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=collate,
                            num_workers=dc.num_workers, generator=torch.Generator().manual_seed(seed))

    def forever() -> Iterator[Mapping[str, Any]]:
        epoch = 0
        while True:
            if sampler is not None:
                sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    def make_batches(start: int) -> Iterator[Mapping[str, Any]]:
        # the shuffled order depends on the loader's generator state: replay and drop consumed batches
        return itertools.islice(forever(), start, None)

    prepare = None
    if pc.finetune.mode == "frozen" and dc.feature_cache:
        path = None if dc.demo_cache == "off" else feature_cache_path(dc, pc, spec.key())

        def prepare(policy: Any) -> None:
            install_feature_cache(policy, dataset, path)

    return TrainData(normalizer, make_batches, len(dataset), [dc.suite], suite=suite, tasks=tasks,
                     prepare_policy=prepare)


def feature_cache_path(dc: DataConfig, pc: PolicyConfig, demo_key: str) -> Path:
    """Where the frozen feature cache of these demonstrations (``demo_key``) and this backbone lives:
    ``<demo cache root>/features/<suite>-<demo key>-<backbone config hash>.safetensors``."""
    import hashlib
    import json

    from eval.sim.demo_cache import default_cache_root
    from vla_ebt import config_io

    root = Path(dc.demo_cache) if dc.demo_cache else default_cache_root()
    blob = json.dumps({"v": 1, "backbone": config_io.to_dict(pc.backbone), "image_history": False}, sort_keys=True)
    return root / "features" / f"{dc.suite}-{demo_key}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.safetensors"


def install_feature_cache(policy: Any, dataset: Any, path: Path | None, batch_size: int = 64) -> Any:
    """Load the frozen feature cache from ``path`` (or compute it over every frame of ``dataset`` and
    save it there), then install it on ``policy``'s backbone; returns the cache."""
    import time

    from torch.utils.data import DataLoader

    from vla_ebt.data.episodes import collate
    from vla_ebt.feature_cache import FrozenFeatureCache

    backbone = policy.encoder.backbone
    if path is not None and path.is_file():
        cache = FrozenFeatureCache.load(path).install(backbone)
        print(f"[feature cache] {len(cache)} frozen encoder outputs from {path}")
        return cache
    t0 = time.perf_counter()
    cache = FrozenFeatureCache()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    with torch.random.fork_rng(devices=[]):  # a loader iterator draws a seed: keep training's RNG stream as is
        n = cache.fill(backbone, ((b["images"], b["instruction"]) for b in loader))
    print(f"[feature cache] encoded {n} frames in {time.perf_counter() - t0:.1f} s ({len(cache)} entries)")
    if path is not None:
        cache.save(path, meta={"frames": n})
    return cache


# ---------------------------------------------------------------------------------------------- shards


def check_shard_datasets(dc: DataConfig) -> list[dict[str, Any]]:
    """Validate ``data.shards`` / ``data.weights`` / ``data.stats``; returns per folder
    {"name", "path", "steps", "stats"} with the statistics the normalizer will use."""
    from vla_ebt.data.shard_format import MANIFEST, STATS, read_manifest
    from vla_ebt.normalize import load_stats

    if not dc.shards:
        raise _fail("data.source='shards' needs data.shards: converted dataset folders "
                    "(python -m data_pipelines.convert ... --out FOLDER)")
    if dc.weights and len(dc.weights) != len(dc.shards):
        raise _fail(f"data.weights has {len(dc.weights)} values for {len(dc.shards)} data.shards folders")
    override = None
    if dc.stats:
        sp = Path(dc.stats)
        if not sp.is_file():
            raise _fail(f"data.stats: {sp}: file not found")
        override = load_stats(sp)
    out: list[dict[str, Any]] = []
    for i, folder in enumerate(dc.shards):
        p = Path(folder)
        if not p.is_dir():
            raise _fail(f"data.shards[{i}]: {p}: no such directory (convert the dataset first: "
                        f"python -m data_pipelines.convert --out {p} ...)")
        try:
            m = read_manifest(p)
        except ValueError as e:
            raise _fail(f"data.shards[{i}]: {e}") from None
        if m is None:
            raise _fail(f"data.shards[{i}]: {p}: no {MANIFEST}; not a converted dataset folder")
        name = m["dataset"]
        if not any(s.get("episodes", 0) > 0 for s in m.get("shards", {}).values()):
            raise _fail(f"dataset {name!r} ({p}): no finished shards with episodes")
        own = p / STATS
        if not own.is_file():
            raise _fail(f"dataset {name!r} ({p}): statistics missing: {own} not found "
                        "(conversion not finished? re-run data_pipelines.convert)")
        own_stats = load_stats(own)
        if name not in own_stats:
            raise _fail(f"dataset {name!r} ({p}): {own} has no statistics for it (has {sorted(own_stats)})")
        if override is not None and name not in override:
            raise _fail(f"data.stats: {dc.stats} has no statistics for dataset {name!r} ({p}); "
                        f"it has {sorted(override)}")
        if any(d["name"] == name for d in out):
            raise _fail(f"data.shards: dataset {name!r} given twice ({p})")
        steps = sum(int(s.get("steps", 0)) for s in m["shards"].values())
        out.append({"name": name, "path": p, "steps": steps,
                    "stats": override[name] if override is not None else own_stats[name]})
    return out


def shard_data(dc: DataConfig, pc: PolicyConfig, batch_size: int, seed: int) -> TrainData:
    """A weighted mixture of converted datasets streamed by :class:`vla_ebt.data.stream.EpisodeStream`
    (per rank and worker splits come from torch.distributed / the DataLoader)."""
    from vla_ebt.data.stream import EpisodeStream, StreamConfig, StreamLoader

    infos = check_shard_datasets(dc)
    views = len(dc.cameras)
    if views != pc.num_views:
        raise _fail(f"data.cameras {list(dc.cameras)} gives {views} views per sample but policy.num_views is "
                    f"{pc.num_views}")
    try:
        normalizer = Normalizer({d["name"]: d["stats"] for d in infos},
                                NormalizationConfig(on_degenerate=dc.on_degenerate),
                                max_action_dim=pc.action_dim, max_state_dim=pc.state_dim)
    except ValueError as e:
        raise _fail(f"{e} (data.shards: {[str(d['path']) for d in infos]}; policy.action_dim/state_dim "
                    f"{pc.action_dim}/{pc.state_dim})") from None
    weights: Mapping[str, float] | str = (
        {d["name"]: float(w) for d, w in zip(infos, dc.weights)} if dc.weights else dc.mixture)
    scfg = StreamConfig(image_size=pc.backbone.image_size, horizon=pc.horizon, obs_steps=pc.obs_steps,
                        cameras=tuple(dc.cameras), batch_size=batch_size, shuffle_buffer=dc.shuffle_buffer,
                        train=dc.augment, seed=seed + dc.seed)
    paths = [d["path"] for d in infos]

    def make_stream(start: int) -> EpisodeStream:
        try:
            return EpisodeStream(paths, normalizer, scfg, weights=weights, start_batch=start)
        except (ValueError, FileNotFoundError) as e:
            raise _fail(f"data: {e}") from None

    make_stream(0)  # validate now (dims vs statistics, weights), not at the first batch

    def make_batches(start: int) -> Iterator[Mapping[str, Any]]:
        return iter(StreamLoader(make_stream(start), num_workers=dc.num_workers))

    names = [d["name"] for d in infos]
    print(f"[data] mixture of {len(infos)} datasets from shards: " + ", ".join(
        f"{d['name']} ({d['steps']} steps)" for d in infos))
    return TrainData(normalizer, make_batches, sum(d["steps"] for d in infos), names)


def build_data(dc: DataConfig, pc: PolicyConfig, batch_size: int, seed: int, world: int = 1, rank: int = 0,
               env_workers: int = 0) -> TrainData:
    """``dc.source`` "sim" or "shards" -> :class:`TrainData` (sim: demos generated in ``env_workers``
    env worker processes when > 0)."""
    if dc.source == "sim":
        return sim_data(dc, pc, batch_size, seed, world, rank, env_workers=env_workers)
    if dc.source == "shards":
        return shard_data(dc, pc, batch_size, seed)
    raise _fail(f"data.source must be 'sim' or 'shards', got {dc.source!r}")
