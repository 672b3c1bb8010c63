"""Training data for ``recipes/finetune.py``: sim demonstrations or a mixture of converted shards.

Both builders return a :class:`TrainData`: the normalizer the policy is built with, and
``make_batches(start_batch)`` — an infinite iterator of training batches (schema of
:mod:`vla_ebt.schema`) positioned after ``start_batch`` consumed batches, which is what
:func:`vla_ebt.train.train_policy` needs to resume.

Errors a user can cause (missing folders, a dataset without statistics, mismatched weights) raise
``SystemExit`` with a message that names the config field, the dataset and the path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
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
    suite / tasks: the sim suite and its tasks (None / [] for shards: nothing to evaluate on); in a sim
    mixture those of ``data.suite``. sim_suites: every suite of the sim data with the embodiment the
    policy acts as on it (one for plain sim data; [] for shards).
    prepare_policy: called once with the built policy before training (the frozen feature cache), or None."""

    normalizer: Normalizer
    make_batches: BatchFactory
    num_samples: int
    datasets: list[str]
    suite: Any = None
    tasks: list[str] | None = None
    prepare_policy: Callable[[Any], None] | None = None
    sim_suites: list[SimSuite] = field(default_factory=list)


def _fail(msg: str) -> SystemExit:
    return SystemExit(f"error: {msg}")


# ---------------------------------------------------------------------------------------------- sim


@dataclass
class SimSuite:
    """One suite of sim training data and how the policy acts on it: ``embodiment`` is the suite's
    index in the normalizer (``normalizer.embodiment_id(name)``); ``train_samples``: its chunks in the data."""

    name: str
    suite: Any
    tasks: list[str]
    embodiment: int
    train_samples: int


def sim_suite_configs(dc: DataConfig) -> list[DataConfig]:
    """The demonstration settings of every suite of the sim data, in order, one DataConfig each:
    ``[dc]`` for one suite; for a mixture (``dc.suites``) ``dc`` itself for ``dc.suite`` and the suite's
    recipe data (:func:`recipes.configs.suite_data_preset`) for the others (seed, cache and loader
    fields from ``dc``), each changed by ``dc.suite_overrides``."""
    from vla_ebt import config_io

    from .configs import SUITE_DATA_FIELDS, suite_data_preset

    if not dc.suites:
        if dc.suite_overrides:
            raise _fail("data.suite_overrides needs data.suites (a sim mixture)")
        return [dc]
    suites = list(dc.suites)
    twice = sorted({s for s in suites if suites.count(s) > 1})
    if twice:
        raise _fail(f"data.suites: {twice} given twice (each suite is one embodiment)")
    if dc.suite not in suites:
        raise _fail(f"data.suite {dc.suite!r} is not one of data.suites {suites} (data.suite is the suite whose "
                    f"demonstrations data.tasks / episodes_per_task / suite_args describe)")
    if dc.weights and len(dc.weights) != len(suites):
        raise _fail(f"data.weights has {len(dc.weights)} values for {len(suites)} data.suites")
    base = dataclasses.replace(dc, suites=(), suite_overrides=(), weights=())
    out: dict[str, DataConfig] = {}
    for name in suites:
        if name == dc.suite:
            out[name] = base
            continue
        try:
            preset = suite_data_preset(name)
        except ValueError as e:
            raise _fail(f"data.suites: {e}") from None
        out[name] = dataclasses.replace(base, suite=name, **{f: getattr(preset, f) for f in SUITE_DATA_FIELDS})
    for i, ov in enumerate(dc.suite_overrides):
        where = f"data.suite_overrides[{i}] {ov!r}"
        key, eq, raw = ov.partition("=")
        name, dot, fname = key.strip().rpartition(".")
        if not eq or not dot:
            raise _fail(f"{where}: expected SUITE.FIELD=VALUE, e.g. reach2d.episodes_per_task=200")
        if name not in out:
            raise _fail(f"{where}: suite {name!r} is not one of data.suites {suites}")
        if fname not in SUITE_DATA_FIELDS:
            raise _fail(f"{where}: field {fname!r} is not one of {list(SUITE_DATA_FIELDS)}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if fname in ("tasks", "suite_args") and isinstance(value, str):
            value = [value] if value else []
        try:
            value = getattr(config_io.from_dict(DataConfig, {fname: value}, where=where), fname)
        except (TypeError, ValueError) as e:
            raise _fail(str(e)) from None
        out[name] = dataclasses.replace(out[name], **{fname: value})
    return [out[s] for s in suites]


def _suite_and_tasks(m: DataConfig, where: str) -> tuple[Any, list[str], dict[str, Any]]:
    """Build the suite of ``m`` and check its tasks; ``where`` names the config fields in errors."""
    from eval.sim.suites import make_suite, parse_suite_args

    try:
        suite_kwargs = parse_suite_args(m.suite_args)
    except Exception as e:  # noqa: BLE001 - ValueError: malformed KEY=VALUE
        raise _fail(f"{where}suite_args: {e}") from None
    try:
        suite = make_suite(m.suite, **suite_kwargs)
    except (KeyError, ValueError, TypeError) as e:
        raise _fail(f"{where}suite / {where}suite_args: {e}") from None
    tasks = list(m.tasks) or suite.task_names()
    for t in tasks:
        try:
            suite.check_task(t)
        except (KeyError, ValueError) as e:
            raise _fail(f"{where}tasks: {e}") from None
    return suite, tasks, suite_kwargs


def suite_demos(m: DataConfig, suite: Any, tasks: list[str], suite_kwargs: dict[str, Any], demo_cache: str,
                env_workers: int = 0) -> tuple[list[Any], str]:
    """The expert demonstrations of one suite's settings ``m`` (through the demo cache unless
    ``demo_cache`` is "off") and their cache key."""
    from eval.sim.demo_cache import DemoSpec, cached_demos
    from eval.sim.demos import collect_demos

    print(f"[data] {m.episodes_per_task} expert episodes x {len(tasks)} tasks from suite {m.suite!r}")
    spec = DemoSpec(suite=m.suite, tasks=tuple(tasks), episodes_per_task=m.episodes_per_task, seed=m.seed,
                    action_noise=m.action_noise, suite_kwargs=suite_kwargs)
    if demo_cache == "off":
        return collect_demos(suite, tasks, m.episodes_per_task, seed=m.seed, action_noise=m.action_noise,
                             num_workers=env_workers, suite_kwargs=suite_kwargs), spec.key()
    return cached_demos(spec, demo_cache or None, num_workers=env_workers)[0], spec.key()


def prefetch_sim_demos(dc: DataConfig, env_workers: int = 0) -> None:
    """Generate (into the demo cache) the demonstrations of every suite of ``dc`` now, e.g. once before
    several processes train on them; a no-op with ``demo_cache`` "off"."""
    if dc.demo_cache == "off":
        return
    for m in sim_suite_configs(dc):
        suite, tasks, suite_kwargs = _suite_and_tasks(m, f"data ({m.suite}) ")
        suite_demos(m, suite, tasks, suite_kwargs, dc.demo_cache, env_workers)


def sim_data(dc: DataConfig, pc: PolicyConfig, batch_size: int, seed: int, world: int, rank: int,
             env_workers: int = 0) -> TrainData:
    """Expert demonstrations from ``dc.suite`` (collected in memory, in ``env_workers`` env worker
    processes when > 0: same episodes), chunked per step, shuffled per epoch from (seed, epoch) with a
    disjoint share per rank when world > 1 (:mod:`vla_ebt.data.epoch_batches`: a resumed run skips the
    consumed batches without loading them).

    A sim mixture (``dc.suites``): the demonstrations of every suite (:func:`sim_suite_configs`; each
    through the demo cache under its own key), one normalizer with each suite's statistics under its
    name, one :class:`~vla_ebt.data.episodes.ChunkDataset` per suite with the suite's embodiment id,
    joined by a :class:`~vla_ebt.data.episodes.MixtureDataset` (padding to the policy's dims) and
    sampled by ``dc.weights`` / ``dc.mixture`` (:func:`vla_ebt.data.stream.mixture_weights`, as shard
    mixtures are): "size" is a plain shuffle of all chunks; otherwise a
    :class:`~vla_ebt.data.episodes.MixtureSampler` (with replacement)."""
    from vla_ebt.data.episodes import ChunkDataset, MixtureDataset, MixtureSampler, collate, dataset_stats
    from vla_ebt.data.epoch_batches import EpochShuffleSampler, epoch_batches
    from vla_ebt.data.stream import mixture_weights

    members = sim_suite_configs(dc)
    mixture = len(members) > 1  # data.suites of one suite: exactly the plain sim data
    built = []  # (config, suite, tasks, episodes, demo key)
    for i, m in enumerate(members):
        where = "data." if m.suite == dc.suite else f"data.suites[{i}] {m.suite!r} (recipe / data.suite_overrides): "
        suite, tasks, suite_kwargs = _suite_and_tasks(m, where)
        if pc.action_dim < suite.action_dim or pc.state_dim < suite.state_dim:
            raise _fail(f"policy.action_dim/state_dim ({pc.action_dim}/{pc.state_dim}) smaller than suite "
                        f"{m.suite!r} needs ({suite.action_dim}/{suite.state_dim})")
        episodes, key = suite_demos(m, suite, tasks, suite_kwargs, dc.demo_cache, env_workers)
        built.append((m, suite, tasks, episodes, key))
    stats = {m.suite: dataset_stats(eps) for m, _, _, eps, _ in built}
    for m, *_ in built:  # each suite's own degenerate-dim policy (the mixture's normalizer has one config)
        if mixture and m.on_degenerate == "error":
            try:
                Normalizer({m.suite: stats[m.suite]}, NormalizationConfig(on_degenerate="error"))
            except ValueError as e:
                flag = ("--data.on-degenerate passthrough_dim" if m.suite == dc.suite else
                        f"--data.suite-overrides {m.suite}.on_degenerate=passthrough_dim")
                raise _fail(f"demonstrations of suite {m.suite!r}: {e} (from the command line: {flag})") from None
    on_degenerate = "passthrough_dim" if any(m.on_degenerate == "passthrough_dim" for m in members) else "error"
    try:
        normalizer = Normalizer(stats, NormalizationConfig(on_degenerate=on_degenerate),
                                max_action_dim=pc.action_dim, max_state_dim=pc.state_dim)
    except ValueError as e:
        raise _fail(f"demonstrations of suite {dc.suite!r}: {e} (from the command line: "
                    "--data.on-degenerate passthrough_dim)") from None
    parts = [ChunkDataset(eps, horizon=pc.horizon, obs_steps=pc.obs_steps, embodiment=normalizer.embodiment_id(m.suite))
             for m, _, _, eps, _ in built]
    sim_suites = [SimSuite(m.suite, suite, tasks, normalizer.embodiment_id(m.suite), len(part))
                  for (m, suite, tasks, _, _), part in zip(built, parts)]
    views = {s.suite.num_views for s in sim_suites}
    if len(views) > 1:
        raise _fail(f"data.suites: the suites have different camera counts "
                    f"{ {s.name: s.suite.num_views for s in sim_suites} }; a mixture needs one")
    probs = None
    if not mixture:
        dataset = parts[0]
    else:
        dataset = MixtureDataset(parts, pc.action_dim, pc.state_dim, image_size=pc.backbone.image_size)
        infos = [{"name": s.name, "steps": s.train_samples} for s in sim_suites]
        weights = {s.name: float(w) for s, w in zip(sim_suites, dc.weights)} if dc.weights else dc.mixture
        try:
            probs = mixture_weights(infos, weights)
        except ValueError as e:
            raise _fail(f"data.weights / data.mixture: {e}") from None
        print("[data] sim mixture, one embodiment per suite (sampling share): " + ", ".join(
            f"{s.name} #{s.embodiment} ({s.train_samples} chunks, {p:.2f})" for s, p in zip(sim_suites, probs)))
        if weights == "size":
            probs = None  # proportional to size: every chunk equally likely, a plain shuffle
    # Every epoch's order is a function of (seed, rank, epoch): a resumed run starts at its batch
    # without loading the consumed ones, and nothing draws from the global RNG it restores.
    if probs is not None:  # weighted: drawn with replacement, one epoch = len(dataset) draws per rank
        sampler = MixtureSampler(dataset.sample_weights(probs), len(dataset) // world, seed=seed, rank=rank, world=world)
    else:  # a shuffle per epoch; with several ranks each reads its own share; batch_size is per rank
        sampler = EpochShuffleSampler(len(dataset), seed=seed, rank=rank, world=world)

    def make_batches(start: int) -> Iterator[Mapping[str, Any]]:
        return epoch_batches(dataset, sampler, batch_size=batch_size, collate_fn=collate,
                             num_workers=dc.num_workers, start=start, seed=seed + rank)

    prepare: Callable[[Any], None] | None = None
    if pc.finetune.mode == "frozen" and dc.feature_cache:
        keys = [k for *_, k in built]
        demo_key = keys[0] if not mixture else hashlib.sha256("+".join(keys).encode()).hexdigest()[:16]
        path = None if dc.demo_cache == "off" else feature_cache_path(dc, pc, demo_key)

        def install(policy: Any) -> None:
            install_feature_cache(policy, dataset, path)

        prepare = install

    primary = next(s for s in sim_suites if s.name == dc.suite)
    return TrainData(normalizer, make_batches, len(dataset), [s.name for s in sim_suites], suite=primary.suite,
                     tasks=primary.tasks, prepare_policy=prepare, sim_suites=sim_suites)


def feature_cache_path(dc: DataConfig, pc: PolicyConfig, demo_key: str) -> Path:
    """Where the frozen feature cache of these demonstrations (``demo_key``) and this backbone lives:
    ``<demo cache root>/features/<suite>-<demo key>-<backbone config hash>.safetensors``."""
    import hashlib
    import json

    from eval.sim.demo_cache import default_cache_root
    from vla_ebt import config_io

    root = Path(dc.demo_cache) if dc.demo_cache else default_cache_root()
    blob = json.dumps({"v": 1, "backbone": config_io.to_dict(pc.backbone), "image_history": False}, sort_keys=True)
    prefix = "+".join(dc.suites) if dc.suites else dc.suite
    return root / "features" / f"{prefix}-{demo_key}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.safetensors"


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
