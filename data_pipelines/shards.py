"""Episode shard writers (schema and readers: :mod:`vla_ebt.data.shard_format`).

:class:`ShardWriter` writes one shard atomically (``.<name>.<writer>.tmp`` renamed when complete);
:func:`write_episodes` writes sim :class:`vla_ebt.data.episodes.Episode` lists in the same schema."""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from vla_ebt.config_io import save_json
from vla_ebt.data.shard_format import FORMAT, MANIFEST, STATS, iter_shard, read_manifest, shard_paths
from vla_ebt.data.oxe_configs import CAMERA_ROLES, get_config, known_datasets

if TYPE_CHECKING:
    from vla_ebt.normalize import DatasetStats

from .rlds import StdEpisode, encode_image

__all__ = ["MANIFEST", "STATS", "FORMAT", "ShardWriter", "read_manifest", "write_manifest", "iter_shard",
           "compute_stats", "write_episodes", "shard_paths"]



def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x), allow_pickle=False)
    return buf.getvalue()


class ShardWriter:
    """Write episodes to ``path`` atomically: ``with ShardWriter(p) as w: w.write(ep, meta)``; the tar
    appears at ``path`` only when the block exits without an exception. Also writes the per-shard
    stats rows to ``stats_path`` (npz, same atomicity)."""

    def __init__(self, path: str | os.PathLike, stats_path: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.stats_path = Path(stats_path) if stats_path else None
        # unique per writer: two writers of one shard (a Ray task retried while the first attempt
        # still runs on a cut-off node) never share a temp file; the last complete one is renamed
        self._tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp = self.path.with_name(f".{self.path.name}.{self._tag}.tmp")
        self.episodes = 0
        self.steps = 0
        self._actions: list[np.ndarray] = []
        self._states: list[np.ndarray] = []

    def __enter__(self) -> "ShardWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._f, mode="w", format=tarfile.USTAR_FORMAT)
        return self

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o444
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, ep: StdEpisode, key: str, extra_meta: dict[str, Any] | None = None) -> None:
        if "." in key or "/" in key:
            raise ValueError(f"sample key must not contain '.' or '/': {key!r}")
        T = len(ep)
        if ep.state.shape[0] != T:
            raise ValueError(f"{ep.dataset} episode {ep.episode_id}: state has {ep.state.shape[0]} rows, action {T}")
        meta = {
            "dataset": ep.dataset,
            "embodiment": ep.dataset,
            "episode_id": ep.episode_id,
            "episode_index": self.episodes,
            "file_path": ep.file_path,
            "source_file": ep.source_file,
            "num_steps": T,
            "action_dim": int(ep.action.shape[1]),
            "state_dim": int(ep.state.shape[1]),
            "cameras": sorted(ep.images, key=CAMERA_ROLES.index),
            "image_format": ep.image_format,
            "step_ids": list(range(T)),
        }
        meta.update(extra_meta or {})
        self._add(f"{key}.meta.json", json.dumps(meta, sort_keys=True).encode())
        self._add(f"{key}.instruction.txt", ep.instruction.encode("utf-8"))
        self._add(f"{key}.action.npy", _npy(ep.action.astype(np.float32)))
        self._add(f"{key}.state.npy", _npy(ep.state.astype(np.float32)))
        for role in meta["cameras"]:
            frames = ep.images[role]
            if len(frames) != T:
                raise ValueError(f"{ep.dataset} episode {ep.episode_id}: camera {role!r} has {len(frames)} frames, "
                                 f"expected {T}")
            for t, b in enumerate(frames):
                self._add(f"{key}.{role}.{t:04d}.{ep.image_format}", b)
        self._actions.append(ep.action.astype(np.float32))
        self._states.append(ep.state.astype(np.float32))
        self.episodes += 1
        self.steps += T

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._tar.close()
            self._f.flush()
            os.fsync(self._f.fileno())
        finally:
            self._f.close()
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            return
        if self.stats_path is not None:
            self.stats_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.stats_path.with_name(f".{self.stats_path.name}.{self._tag}.tmp")
            with open(tmp, "wb") as f:
                a = np.concatenate(self._actions) if self._actions else np.zeros((0, 0), np.float32)
                s = np.concatenate(self._states) if self._states else np.zeros((0, 0), np.float32)
                np.savez(f, action=a, state=s)
            os.replace(tmp, self.stats_path)
        os.replace(self.tmp, self.path)


def shard_name(dataset: str, index: int) -> str:
    return f"{dataset}-{index:05d}.tar"


def write_manifest(out_dir: str | os.PathLike, manifest: dict) -> None:
    save_json(Path(out_dir) / MANIFEST, manifest)


def compute_stats(out_dir: str | os.PathLike, manifest: dict) -> DatasetStats:
    """Statistics over every step of the finished shards (from the per-shard npz rows)."""
    from vla_ebt.normalize import DatasetStats, FeatureStats  # imports torch: the driver's job, not each worker's
    acts, sts, eps = [], [], 0
    for name, info in sorted(manifest["shards"].items()):
        if info["episodes"] == 0:
            continue
        with np.load(Path(out_dir) / info["stats"]) as z:
            acts.append(z["action"])
            sts.append(z["state"])
        eps += info["episodes"]
    if not acts:
        raise ValueError(f"{out_dir}: no episodes in finished shards; cannot compute statistics")
    a, s = np.concatenate(acts), np.concatenate(sts)
    return DatasetStats(action=FeatureStats.from_array(a), state=FeatureStats.from_array(s) if s.shape[1] else None,
                        num_episodes=eps, num_steps=int(a.shape[0]))


def finalize(out_dir: str | os.PathLike, manifest: dict) -> DatasetStats:
    from vla_ebt.normalize import save_stats

    stats = compute_stats(out_dir, manifest)
    save_stats(Path(out_dir) / STATS, {manifest["dataset"]: stats})
    manifest["num_episodes"] = stats.num_episodes
    manifest["num_steps"] = stats.num_steps
    write_manifest(out_dir, manifest)
    return stats


def write_episodes(episodes: Sequence[Any], out_dir: str | os.PathLike, dataset_name: str,
                   episodes_per_shard: int = 64, image_format: str = "png", image_size: int | None = None) -> DatasetStats:
    """Write sim demos (:class:`vla_ebt.data.episodes.Episode`: images uint8 (T, V, 3, S, S), state, action,
    instruction) as shards in this module's schema, with manifest.json and stats.json. Views map to
    the dataset config's camera roles when ``dataset_name`` is registered, else to
    ``primary, secondary, wrist`` in order. PNG by default (lossless for small sim frames).
    Returns the dataset statistics. Overwrites an existing dataset folder's shards."""
    from PIL import Image

    from .rlds import resize_image

    eps = [e for e in episodes if len(e) > 0]
    if not eps:
        raise ValueError(f"write_episodes({dataset_name!r}): no non-empty episodes")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    V = eps[0].images.shape[1]
    if dataset_name in known_datasets() and len(get_config(dataset_name).camera_roles()) == V:
        roles = get_config(dataset_name).camera_roles()
    elif V <= len(CAMERA_ROLES):
        roles = list(CAMERA_ROLES[:V])
    else:
        raise ValueError(f"write_episodes: {V} views per step; at most {len(CAMERA_ROLES)} camera roles")
    size = int(image_size or eps[0].images.shape[-1])
    manifest = {"format": FORMAT, "dataset": dataset_name, "source": "sim", "image_size": size,
                "image_format": image_format, "shards": {}, "skipped": [], "complete": False}
    for s0 in range(0, len(eps), episodes_per_shard):
        idx = s0 // episodes_per_shard
        name = shard_name(dataset_name, idx)
        with ShardWriter(out / name, out / "_stats" / f"{name}.npz") as w:
            for j, e in enumerate(eps[s0:s0 + episodes_per_shard]):
                if e.images.ndim != 5 or e.images.shape[1] != V:
                    raise ValueError(f"write_episodes({dataset_name!r}): episode {s0 + j}: images must be (T, {V}, 3, S, S), "
                                     f"got {e.images.shape}")
                if not e.instruction.strip():
                    raise ValueError(f"write_episodes({dataset_name!r}): episode {s0 + j}: empty instruction")
                if not (np.isfinite(e.action).all() and np.isfinite(e.state).all()):
                    raise ValueError(f"write_episodes({dataset_name!r}): episode {s0 + j}: non-finite action/state")
                imgs = {}
                for v, role in enumerate(roles):
                    frames = []
                    for t in range(len(e)):
                        im = Image.fromarray(np.ascontiguousarray(e.images[t, v].transpose(1, 2, 0)))
                        frames.append(encode_image(resize_image(im, size), image_format))
                    imgs[role] = frames
                std = StdEpisode(dataset=dataset_name, episode_id=f"{idx}:{j}", source_file="sim", record=s0 + j,
                                 file_path=f"task={e.task};seed={e.seed}", instruction=e.instruction.strip(),
                                 state=np.asarray(e.state, np.float32).reshape(len(e), -1),
                                 action=np.asarray(e.action, np.float32).reshape(len(e), -1),
                                 images=imgs, image_format=image_format)
                w.write(std, f"{dataset_name}-{idx:05d}-{j:06d}",
                        {"image_size": size, "task": e.task, "success": bool(e.success)})
        manifest["shards"][name] = {"source": "sim", "episodes": w.episodes, "steps": w.steps,
                                    "stats": f"_stats/{name}.npz"}
        write_manifest(out, manifest)
    manifest["complete"] = True
    return finalize(out, manifest)
