"""Streaming, multi-embodiment training loader over episode shards (:mod:`data_pipelines.shards`).

::

    normalizer = load_normalizer(["shards/bridge", "shards/droid"], max_action_dim=7, max_state_dim=8)
    ds = EpisodeStream(["shards/bridge", "shards/droid"], normalizer,
                       StreamConfig(image_size=224, horizon=8, obs_steps=2, batch_size=32),
                       weights={"bridge": 1.0, "droid": 0.5})       # or weights="size"
    loader = StreamLoader(ds, num_workers=2)                        # a DataLoader that counts batches
    for batch in loader: ...                                        # vla_ebt.schema training batch
    state = loader.state_dict()                                     # {"seed": .., "batches": ..}
    loader.load_state_dict(state)                                   # resume at the same position

Pipeline (per consumer and dataset): seeded shard shuffle -> split by node and worker -> episodes
-> shuffle buffer of step references -> weighted choice among datasets -> decode, history, chunk,
augmentation, padding, collate; the steps and the memory bound: docs/data_loading.md.

Values stay **unnormalized** (``VLAPolicy.compute_loss`` normalizes); the embodiment id is
``normalizer.embodiment_id(dataset)`` and a dataset missing from the normalizer is refused.
Streams are infinite (``StreamConfig.infinite``; epochs only reshuffle) and deterministic given
(seed, rank, world size, num_workers), which is what makes resuming by batch count exact (the
sample sequence is replayed exactly; augmentation draws after a resume are fresh, not replayed).
Resuming skips the consumed batches without decoding images (it re-reads the tar shards).

Camera roles a dataset lacks (e.g. a wrist camera for bridge) come out as black frames.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from vla_ebt_client.history import history_indices

from vla_ebt.normalize import DatasetStats, NormalizationConfig, Normalizer, load_stats

__all__ = ["StreamConfig", "EpisodeStream", "StreamLoader", "load_normalizer", "dataset_info", "mixture_weights"]


@dataclass
class StreamConfig:
    """image_size: output H = W. cameras: roles stacked as views (camera-major). image_history: all
    To frames per camera (V = cameras * To) instead of the current frame only (V = cameras).
    crop_scale/crop_ratio: RandomResizedCrop area fraction / aspect range. jitter: ColorJitter
    (brightness, contrast, saturation, hue). train=False disables augmentation (plain resize)."""

    image_size: int = 64
    horizon: int = 8
    obs_steps: int = 1
    cameras: tuple[str, ...] = ("primary",)
    image_history: bool = False
    batch_size: int = 32
    shuffle_buffer: int = 2000
    train: bool = True
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.05)
    seed: int = 0
    infinite: bool = True
    drop_last: bool = True

    def __post_init__(self) -> None:
        if self.horizon < 1 or self.obs_steps < 1 or self.batch_size < 1 or self.image_size < 1:
            raise ValueError(f"StreamConfig: horizon, obs_steps, batch_size, image_size must be >= 1: {self}")
        if not self.cameras:
            raise ValueError("StreamConfig.cameras: at least one camera role")


def dataset_info(path: str | os.PathLike) -> dict[str, Any]:
    """name, shard paths (finished only), episodes, steps, stats of a converted dataset folder."""
    from vla_ebt.data.shard_format import MANIFEST, STATS, read_manifest

    p = Path(path)
    m = read_manifest(p)
    if m is None:
        raise FileNotFoundError(f"{p}: no {MANIFEST}; convert the dataset first (python -m data_pipelines.convert)")
    name = m["dataset"]
    if not (p / STATS).exists():
        raise FileNotFoundError(f"{p}: no {STATS} (conversion not finished?)")
    stats = load_stats(p / STATS)
    if name not in stats:
        raise ValueError(f"{p / STATS}: no statistics for dataset {name!r} (has {sorted(stats)})")
    shards = [p / n for n, s in sorted(m["shards"].items()) if s["episodes"] > 0]
    if not shards:
        raise ValueError(f"{p}: no finished shards with episodes")
    return {"name": name, "path": p, "shards": shards, "episodes": sum(s["episodes"] for s in m["shards"].values()),
            "steps": sum(s["steps"] for s in m["shards"].values()), "stats": stats[name]}


def load_normalizer(paths: Sequence[str | os.PathLike], config: NormalizationConfig | None = None,
                    max_action_dim: int | None = None, max_state_dim: int | None = None) -> Normalizer:
    """A Normalizer from the stats.json files of converted dataset folders."""
    stats: dict[str, DatasetStats] = {}
    for p in paths:
        info = dataset_info(p)
        if info["name"] in stats:
            raise ValueError(f"dataset {info['name']!r} given twice ({p})")
        stats[info["name"]] = info["stats"]
    return Normalizer(stats, config, max_action_dim=max_action_dim, max_state_dim=max_state_dim)


def mixture_weights(infos: Sequence[dict], weights: Mapping[str, float] | str | None) -> np.ndarray:
    """Normalized sampling probabilities: explicit {name: weight}, "size" (proportional to steps)
    or "uniform"/None."""
    names = [i["name"] for i in infos]
    if weights is None or weights == "uniform":
        w = np.ones(len(names))
    elif weights == "size":
        w = np.array([float(i["steps"]) for i in infos])
    elif isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(names))
        missing = sorted(set(names) - set(weights))
        if unknown or missing:
            raise ValueError(f"mixture weights: unknown dataset(s) {unknown}, missing weight(s) for {missing}; "
                             f"datasets: {names}")
        w = np.array([float(weights[n]) for n in names])
    else:
        raise ValueError(f"weights must be a dict, 'size', 'uniform' or None; got {weights!r}")
    if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
        raise ValueError(f"mixture weights must be finite, >= 0 and not all 0; got {dict(zip(names, w.tolist()))}")
    return w / w.sum()


def _consumer(rank: int | None, world_size: int | None) -> tuple[int, int, int, int]:
    """(rank, world_size, worker id, num workers)."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world_size = 0, 1
    wi = get_worker_info()
    return int(rank), int(world_size), (wi.id if wi else 0), (wi.num_workers if wi else 1)


def _read_shard(path: Path) -> Iterator[dict[str, Any]]:
    """Episodes of one shard via webdataset's tar iterator (members grouped by sample key)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with open(path, "rb") as f:
        for s in group_by_keys(tar_file_expander([{"url": str(path), "stream": f}])):
            images: dict[str, list[tuple[str, bytes]]] = {}
            for k, v in s.items():
                if k.endswith((".jpg", ".png")):
                    role, t, _ = k.split(".")
                    images.setdefault(role, []).append((t, v))
            try:
                yield {"__key__": s["__key__"], "instruction": s["instruction.txt"].decode("utf-8"),
                       "action": np.load(io.BytesIO(s["action.npy"]), allow_pickle=False),
                       "state": np.load(io.BytesIO(s["state.npy"]), allow_pickle=False),
                       "images": {r: [b for _, b in sorted(v)] for r, v in images.items()}}
            except KeyError as e:
                raise ValueError(f"{path}: sample {s.get('__key__')!r} lacks member {e}") from None


class _Episode:
    """Decoded arrays + still-encoded frames of one episode (what the shuffle buffer references)."""

    __slots__ = ("key", "dataset", "emb", "action", "state", "instruction", "images")

    def __init__(self, raw: dict, dataset: str, emb: int) -> None:
        self.key = raw["__key__"]
        self.dataset = dataset
        self.emb = emb
        self.action = raw["action"]
        self.state = raw["state"]
        self.instruction = raw["instruction"]
        self.images = raw["images"]


class EpisodeStream(IterableDataset):
    """Yields collated training batches (see module docstring). Use with ``batch_size=None`` in a
    DataLoader (or :class:`StreamLoader`). ``start_batch``: batches already consumed (resume)."""

    def __init__(self, datasets: Sequence[str | os.PathLike], normalizer: Normalizer, cfg: StreamConfig | None = None,
                 weights: Mapping[str, float] | str | None = "size", rank: int | None = None,
                 world_size: int | None = None, start_batch: int = 0) -> None:
        super().__init__()
        self.cfg = cfg or StreamConfig()
        if not datasets:
            raise ValueError("EpisodeStream: no datasets given")
        self.infos = [dataset_info(p) for p in datasets]
        names = [i["name"] for i in self.infos]
        if len(set(names)) != len(names):
            raise ValueError(f"EpisodeStream: a dataset is given twice: {names}")
        self.normalizer = normalizer
        self.emb_ids = []
        for info in self.infos:
            n = info["name"]
            try:
                self.emb_ids.append(normalizer.embodiment_id(n))
            except ValueError as e:
                raise ValueError(f"EpisodeStream: dataset {n!r} ({info['path']}) has no statistics in the "
                                 f"normalizer: {e}") from None
            st = info["stats"]
            if st.action.dim != normalizer.action_dim(n) or (st.state.dim if st.state else 0) != normalizer.state_dim(n):
                raise ValueError(f"EpisodeStream: dataset {n!r}: shard dims (action {st.action.dim}, state "
                                 f"{st.state.dim if st.state else 0}) differ from the normalizer's "
                                 f"({normalizer.action_dim(n)}, {normalizer.state_dim(n)}); stale statistics?")
        self.weights = mixture_weights(self.infos, weights)
        self.rank, self.world_size = rank, world_size
        self.start_batch = int(start_batch)
        self._transforms = None

    # ------------------------------------------------------------------ episode streams

    def _episodes(self, d: int, consumer: int, consumers: int) -> Iterator[_Episode]:
        info, cfg = self.infos[d], self.cfg
        shards = info["shards"]
        epoch = 0
        while True:
            rng = np.random.default_rng([cfg.seed, d, epoch])
            order = [shards[i] for i in rng.permutation(len(shards))]
            if len(order) >= consumers:
                mine, by_episode = order[consumer::consumers], False
            else:
                mine, by_episode = order, True
            k = 0
            for shard in mine:
                for raw in _read_shard(shard):
                    if not by_episode or k % consumers == consumer:
                        yield _Episode(raw, info["name"], self.emb_ids[d])
                    k += 1
            epoch += 1
            if not cfg.infinite:
                return

    def _steps(self, d: int, consumer: int, consumers: int, rng: np.random.Generator) -> Iterator[tuple[_Episode, int]]:
        """Shuffle buffer over (episode, step) references."""
        buf: list[tuple[_Episode, int]] = []
        size = max(1, self.cfg.shuffle_buffer)
        for ep in self._episodes(d, consumer, consumers):
            for t in range(len(ep.action)):
                buf.append((ep, t))
                if len(buf) >= size:
                    i = int(rng.integers(len(buf)))
                    buf[i], buf[-1] = buf[-1], buf[i]
                    yield buf.pop()
        rng.shuffle(buf)  # finite stream: drain
        yield from buf

    def _references(self) -> Iterator[list[tuple[_Episode, int]]]:
        rank, world, wid, nw = _consumer(self.rank, self.world_size)
        # A DataLoader takes batch i from worker i % nw, starting again at worker 0 after a restart;
        # rotating worker identities by start_batch keeps global batch g on stream g % nw.
        wid = (wid + self.start_batch) % nw
        consumer, consumers = rank * nw + wid, world * nw
        rng = np.random.default_rng([self.cfg.seed, 7, consumer, consumers])
        streams = [self._steps(d, consumer, consumers, np.random.default_rng([self.cfg.seed, 11, d, consumer]))
                   for d in range(len(self.infos))]
        p = self.weights.copy()
        # local batches to skip so that global batch index (local j -> j * nw + wid) resumes exactly
        skip = max(0, -(-(self.start_batch - wid) // nw))
        batch: list[tuple[_Episode, int]] = []
        while p.sum() > 0:
            d = int(rng.choice(len(p), p=p / p.sum()))
            try:
                batch.append(next(streams[d]))
            except StopIteration:
                p[d] = 0.0
                continue
            if len(batch) == self.cfg.batch_size:
                if skip > 0:
                    skip -= 1
                else:
                    yield batch
                batch = []
        if batch and not self.cfg.drop_last and skip == 0:
            yield batch

    # ------------------------------------------------------------------ decode / augment / collate

    def _get_transforms(self):
        if self._transforms is None:
            from torchvision.transforms import v2

            c = self.cfg
            if c.train:
                self._transforms = v2.Compose([
                    v2.RandomResizedCrop(c.image_size, scale=c.crop_scale, ratio=c.crop_ratio, antialias=True),
                    v2.ColorJitter(*c.jitter),
                ])
            else:
                self._transforms = v2.Resize((c.image_size, c.image_size), antialias=True)
        return self._transforms

    def _frames(self, ep: _Episode, role: str, steps: np.ndarray) -> torch.Tensor:
        """(len(steps), 3, S, S) uint8, augmented consistently across the steps."""
        S = self.cfg.image_size
        frames = ep.images.get(role)
        if frames is None:
            return torch.zeros(len(steps), 3, S, S, dtype=torch.uint8)
        # PIL (libjpeg-turbo / zlib): torchvision.io's decoders are deprecated as of 0.29
        arr = np.stack([np.asarray(Image.open(io.BytesIO(frames[int(t)])).convert("RGB")) for t in steps])
        imgs = torch.from_numpy(arr).permute(0, 3, 1, 2)
        if self.cfg.train or imgs.shape[-2:] != (S, S):
            imgs = self._get_transforms()(imgs)
        return imgs

    def _sample(self, ep: _Episode, t: int) -> dict[str, Any]:
        c = self.cfg
        T = len(ep.action)
        hist = history_indices(t, c.obs_steps)
        fut = np.arange(t, t + c.horizon)
        steps = hist if c.image_history else np.array([t])
        images = torch.cat([self._frames(ep, role, steps) for role in c.cameras])  # camera-major
        action = np.zeros((c.horizon, self.normalizer.max_action_dim), np.float32)
        action[:, : ep.action.shape[1]] = ep.action[np.minimum(fut, T - 1)]
        state = np.zeros((c.obs_steps, self.normalizer.max_state_dim), np.float32)
        state[:, : ep.state.shape[1]] = ep.state[hist]
        return {"images": images, "state": state, "action": action, "mask": fut < T}

    def collate(self, refs: list[tuple[_Episode, int]]) -> dict[str, Any]:
        samples = [self._sample(ep, t) for ep, t in refs]
        return {
            "images": torch.stack([s["images"] for s in samples]).float().div_(255.0),
            "instruction": [ep.instruction for ep, _ in refs],
            "state": torch.from_numpy(np.stack([s["state"] for s in samples])),
            "embodiment": torch.tensor([ep.emb for ep, _ in refs], dtype=torch.long),
            "action": torch.from_numpy(np.stack([s["action"] for s in samples])),
            "action_mask": torch.from_numpy(np.stack([s["mask"] for s in samples])),
            "sample_id": [f"{ep.dataset}/{ep.key}/{t}" for ep, t in refs],
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        wi = get_worker_info()
        torch.manual_seed(self.cfg.seed * 1000003 + (wi.id if wi else 0) + 7919 * _consumer(self.rank, self.world_size)[0]
                          + 104729 * self.start_batch)
        for refs in self._references():
            yield self.collate(refs)

    def iter_references(self) -> Iterator[list[tuple[str, int, str]]]:
        """Batches as (dataset, step, episode key) without decoding images (for tests/inspection)."""
        for refs in self._references():
            yield [(ep.dataset, t, ep.key) for ep, t in refs]


class StreamLoader:
    """DataLoader over an :class:`EpisodeStream` that counts consumed batches, so that
    ``state_dict()`` / ``load_state_dict()`` resume the stream at the same batch."""

    def __init__(self, stream: EpisodeStream, num_workers: int = 0, pin_memory: bool = False, prefetch_factor: int | None = None) -> None:
        self.stream = stream
        self.num_workers = int(num_workers)
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.batches = stream.start_batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.stream.start_batch = self.batches
        kw = {"prefetch_factor": self.prefetch_factor} if self.num_workers and self.prefetch_factor else {}
        dl = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                        persistent_workers=False, **kw)
        for b in dl:
            self.batches += 1
            yield b

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.stream.cfg.seed, "batches": self.batches}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if int(state["seed"]) != self.stream.cfg.seed:
            raise ValueError(f"StreamLoader.load_state_dict: seed {state['seed']} != stream seed {self.stream.cfg.seed}")
        self.batches = int(state["batches"])
