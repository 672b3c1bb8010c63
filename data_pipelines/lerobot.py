"""Read LeRobotDataset (v2.x) folders into standardized episodes (:class:`~data_pipelines.rlds.StdEpisode`).

Layout read (codebase_version ``v2.0`` / ``v2.1``)::

    ROOT/meta/info.json         fps, features {name: {dtype, shape, names}}, data_path / video_path
                                templates, chunks_size, total_episodes
    ROOT/meta/episodes.jsonl    {"episode_index", "tasks": [str], "length"} per line (optional)
    ROOT/meta/tasks.jsonl       {"task_index", "task"} per line (optional)
    ROOT/data/chunk-XXX/episode_XXXXXX.parquet
                                one row per frame: observation.state, action, timestamp,
                                frame_index, episode_index, index, task_index, image features
                                (``dtype: image``: struct {bytes, path} or binary)
    ROOT/videos/chunk-XXX/<video_key>/episode_XXXXXX.mp4
                                one video per ``dtype: video`` feature and episode (decoded with PyAV)

Mapping (defaults, see :mod:`data_pipelines.sources` for options / registered configs):
action <- ``action``, state <- ``observation.state``, cameras <- every video / image feature
(a key naming a wrist / hand / gripper camera -> ``wrist``, others -> ``primary``, ``secondary``
in info.json order), instruction <- the task of the episode's first frame (``task_index`` ->
tasks.jsonl), else ``episodes.jsonl`` ``tasks[0]``, else ``--instruction``; control_hz <- fps.

Errors are :class:`~data_pipelines.rlds.DataError` naming the file, episode index and field:
missing meta files / features / parquet columns / videos, per-step shape mismatches (vs
info.json), ragged or null list columns, non-finite actions or states, row count vs
episodes.jsonl ``length``, ``frame_index`` not 0..T-1, video frame count (or frame times) vs
parquet rows, image size vs info.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from vla_ebt.data.oxe_configs import DatasetConfig

from .rlds import DataError, StdEpisode, encode_image, resize_image
from .sources import SourceSpec, SpecOptions, assemble, chunks, decode_image_bytes, resolve_spec

__all__ = ["LeRobotSource", "read_info", "column_array", "decode_video"]

DEFAULT_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
DEFAULT_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
IMAGE_DTYPES = ("video", "image")


def _read_json(path: Path, dataset: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(dataset, str(path), None, "<file>", "missing file") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(dataset, str(path), None, "<file>", f"not valid JSON ({e})") from None


def _read_jsonl(path: Path, dataset: str, required: tuple[str, ...]) -> list[dict]:
    out = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(dataset, str(path), None, f"line {i + 1}", f"not valid JSON ({e})") from None
        for k in required:
            if k not in d:
                raise DataError(dataset, str(path), d.get("episode_index"), k, f"line {i + 1}: missing key")
        out.append(d)
    return out


def read_info(root: str | os.PathLike, dataset: str) -> dict:
    """``meta/info.json``, checked: a features dict, fps, a v2-style layout."""
    p = Path(root) / "meta" / "info.json"
    info = _read_json(p, dataset)
    if not isinstance(info, dict) or not isinstance(info.get("features"), dict):
        raise DataError(dataset, str(p), None, "features", "missing or not a dict")
    ver = str(info.get("codebase_version", "v2.0"))
    if not ver.startswith("v2"):
        raise DataError(dataset, str(p), None, "codebase_version",
                        f"{ver} is not supported (LeRobotDataset v2.x folders only: one parquet / mp4 per episode)")
    for k, v in info["features"].items():
        if not isinstance(v, dict) or "dtype" not in v or "shape" not in v:
            raise DataError(dataset, str(p), None, f"features.{k}", "needs 'dtype' and 'shape'")
    return info


def _image_shape(feat: dict) -> tuple[int, int, int]:
    """(H, W, C) of an image / video feature (shape given as HWC or, with names, CHW)."""
    shape = [int(s) for s in feat["shape"]]
    names = [str(n).lower() for n in (feat.get("names") or [])]
    if len(shape) == 3 and names and names[0].startswith("channel"):
        return shape[1], shape[2], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1], 1
    return tuple(shape[:3])  # type: ignore[return-value]


def column_array(col) -> np.ndarray:
    """A pyarrow (chunked) numeric or (nested, fixed-length) list column -> (rows, ...) ndarray.
    ValueError for nulls or ragged rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    rows = len(arr)
    shape: list[int] = []
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        if arr.null_count:
            raise ValueError(f"{arr.null_count} null row(s)")
        if pa.types.is_fixed_size_list(arr.type):
            n = arr.type.list_size
        else:
            lengths = np.unique(pc.list_value_length(arr).to_numpy(zero_copy_only=False))
            if len(lengths) > 1:
                raise ValueError(f"ragged list rows (lengths {lengths.tolist()})")
            n = int(lengths[0]) if len(lengths) else 0
        shape.append(n)
        arr = arr.flatten()
    if arr.null_count:
        raise ValueError(f"{arr.null_count} null value(s)")
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_boolean(arr.type)):
        raise ValueError(f"not a numeric column (type {col.type})")
    return np.asarray(arr.to_numpy(zero_copy_only=False)).reshape(rows, *shape)


def decode_video(path: str | os.PathLike) -> Iterator[tuple[float | None, Any]]:
    """(presentation time in s or None, PIL RGB image) per frame, in presentation order."""
    import av

    with av.open(str(path)) as c:
        if not c.streams.video:
            raise ValueError("no video stream")
        for frame in c.decode(c.streams.video[0]):
            yield frame.time, frame.to_image()


class LeRobotSource:
    """A LeRobotDataset v2 folder as a converter source (see module docstring). Picklable (worker
    processes re-open files themselves)."""

    format = "lerobot"

    def __init__(self, root: str | os.PathLike, dataset: str, options: SpecOptions | None = None,
                 config: DatasetConfig | None = None) -> None:
        self.root = Path(root)
        self.dataset = dataset
        if not (self.root / "meta").is_dir():
            raise DataError(dataset, str(self.root), None, "meta", "not a LeRobotDataset folder: no meta/ directory")
        info_path = self.root / "meta" / "info.json"
        self.info = info = read_info(self.root, dataset)
        self.features: dict[str, dict] = info["features"]
        self.fps = float(info["fps"]) if info.get("fps") else None
        self.data_path = info.get("data_path") or DEFAULT_DATA_PATH
        self.video_path = info.get("video_path") or DEFAULT_VIDEO_PATH
        self.chunks_size = int(info.get("chunks_size") or 1000)

        ep_path = self.root / "meta" / "episodes.jsonl"
        self.episodes: dict[int, dict] = {}
        if ep_path.exists():
            for d in _read_jsonl(ep_path, dataset, ("episode_index",)):
                self.episodes[int(d["episode_index"])] = d
            self.episode_ids = sorted(self.episodes)
        elif info.get("total_episodes") is not None:
            self.episode_ids = list(range(int(info["total_episodes"])))
        else:
            raise DataError(dataset, str(ep_path), None, "<file>", "missing file (and info.json has no total_episodes)")
        if not self.episode_ids:
            raise DataError(dataset, str(ep_path if ep_path.exists() else info_path), None, "episodes", "no episodes")
        task_path = self.root / "meta" / "tasks.jsonl"
        self.tasks: dict[int, str] = {}
        if task_path.exists():
            self.tasks = {int(d["task_index"]): str(d["task"])
                          for d in _read_jsonl(task_path, dataset, ("task_index", "task"))}

        image_keys = [k for k, f in self.features.items() if f["dtype"] in IMAGE_DTYPES]
        available = {k: (_image_shape(f) if k in image_keys else tuple(int(s) for s in f["shape"]))
                     for k, f in self.features.items()}
        self.spec: SourceSpec = resolve_spec(
            dataset, str(info_path), available, image_keys, options or SpecOptions(), config,
            default_action=("action",), default_state=(("observation.state",), ("state",)),
            control_hz=self.fps)

    # ------------------------------------------------------------------ converter interface

    def identity(self) -> dict:
        return {"src": str(self.root.resolve()), "spec": self.spec.summary()}

    def units(self, episodes_per_shard: int) -> list[tuple[str, list[int]]]:
        """(stable id, episode indices) per output shard."""
        return [(f"episodes {c[0]}-{c[-1]}", c) for c in chunks(self.episode_ids, episodes_per_shard)]

    def read(self, episodes: list[int], image_size: int, image_format: str = "jpg",
             skip_bad: bool = False) -> Iterator[StdEpisode | DataError]:
        for ep in episodes:
            try:
                yield self.read_episode(ep, image_size, image_format)
            except DataError as e:
                if not skip_bad:
                    raise
                yield e

    # ------------------------------------------------------------------ one episode

    def _path(self, template: str, ep: int, **kw: Any) -> Path:
        try:
            return self.root / template.format(episode_chunk=ep // self.chunks_size, episode_index=ep, **kw)
        except (KeyError, IndexError, ValueError) as e:
            raise DataError(self.dataset, str(self.root / "meta" / "info.json"), ep, "data_path/video_path",
                            f"bad path template {template!r} ({e})") from None

    def read_episode(self, ep: int, image_size: int, image_format: str = "jpg") -> StdEpisode:
        import pyarrow as pa
        import pyarrow.parquet as pq

        spec, name = self.spec, self.dataset
        path = self._path(self.data_path, ep)
        file = str(path)
        if not path.exists():
            raise DataError(name, file, ep, "<file>", "missing parquet file")
        try:
            have = pq.read_schema(path).names
        except (pa.ArrowException, OSError) as e:
            raise DataError(name, file, ep, "<parquet>", f"cannot read parquet ({e})") from None
        vec_keys = [p.key for p in spec.action + spec.state]
        img_keys = [k for k, _ in spec.cameras.values() if self.features[k]["dtype"] == "image"]
        for k in dict.fromkeys(vec_keys + img_keys):
            if k not in have:
                raise DataError(name, file, ep, k, f"missing column (parquet has {have})")
        optional = [k for k in ("timestamp", "frame_index", "episode_index", "task_index", *spec.instruction_keys)
                    if k in have]
        try:
            table = pq.read_table(path, columns=list(dict.fromkeys(vec_keys + img_keys + optional)))
        except (pa.ArrowException, OSError) as e:
            raise DataError(name, file, ep, "<parquet>", f"cannot read parquet ({e})") from None
        T = table.num_rows
        if T == 0:
            raise DataError(name, file, ep, "<rows>", "episode has 0 rows")
        length = self.episodes.get(ep, {}).get("length")
        if length is not None and int(length) != T:
            raise DataError(name, file, ep, "length", f"meta/episodes.jsonl says {length} frames, parquet has {T} rows")

        def col(key: str) -> np.ndarray:
            try:
                return column_array(table.column(key))
            except ValueError as e:
                raise DataError(name, file, ep, key, str(e)) from None

        if "frame_index" in optional:
            fi = col("frame_index").reshape(T, -1)[:, 0]
            if not np.array_equal(fi, np.arange(T)):
                raise DataError(name, file, ep, "frame_index", f"not 0..{T - 1} in order (starts {fi[:5].tolist()})")
        if "episode_index" in optional:
            ei = np.unique(col("episode_index"))
            if ei.tolist() != [ep]:
                raise DataError(name, file, ep, "episode_index", f"column holds {ei[:5].tolist()}, expected {ep}")
        cache: dict[str, np.ndarray] = {}

        def get(key: str) -> np.ndarray:
            if key not in cache:
                cache[key] = col(key)
            return cache[key]

        action = assemble(spec, spec.action, get, T, "action", file, ep)
        state = assemble(spec, spec.state, get, T, "state", file, ep)
        instruction = self._instruction(table, ep, file, optional)

        ts = None
        if "timestamp" in optional:
            ts = col("timestamp").reshape(T, -1)[:, 0].astype(np.float64)
        images: dict[str, list[bytes]] = {}
        for role, (key, shape) in spec.cameras.items():
            if self.features[key]["dtype"] == "video":
                images[role] = self._video_frames(ep, key, shape, T, ts, image_size, image_format)
            else:
                images[role] = self._parquet_images(table, ep, key, shape, file, image_size, image_format)
        return StdEpisode(dataset=name, episode_id=f"episode_{ep:06d}", source_file=file, record=ep,
                          file_path=str(path.relative_to(self.root)), instruction=instruction, state=state,
                          action=action, images=images, image_format=image_format)

    def _instruction(self, table, ep: int, file: str, optional: list[str]) -> str:
        if "task_index" in optional and self.tasks:
            try:
                ti = int(column_array(table.column("task_index")).reshape(-1)[0])
            except ValueError as e:
                raise DataError(self.dataset, file, ep, "task_index", str(e)) from None
            if ti not in self.tasks:
                raise DataError(self.dataset, file, ep, "task_index",
                                f"task {ti} is not in meta/tasks.jsonl (has {sorted(self.tasks)[:20]})")
            if self.tasks[ti].strip():
                return self.tasks[ti].strip()
        tasks = self.episodes.get(ep, {}).get("tasks") or []
        if isinstance(tasks, str):
            tasks = [tasks]
        for t in tasks:
            if str(t).strip():
                return str(t).strip()
        for k in self.spec.instruction_keys:
            if k in optional:
                for v in table.column(k).to_pylist():
                    if isinstance(v, bytes):
                        v = v.decode("utf-8", "replace")
                    if isinstance(v, str) and v.strip():
                        return v.strip()
        if self.spec.instruction and self.spec.instruction.strip():
            return self.spec.instruction.strip()
        raise DataError(self.dataset, file, ep, "task", "no instruction: no task_index / meta/tasks.jsonl entry, no "
                                                        "tasks in meta/episodes.jsonl; pass --instruction")

    def _video_frames(self, ep: int, key: str, shape: tuple[int, ...], T: int, ts: np.ndarray | None,
                      image_size: int, image_format: str) -> list[bytes]:
        path = self._path(self.video_path, ep, video_key=key)
        vf = str(path)
        if not path.exists():
            raise DataError(self.dataset, vf, ep, key, "missing video file")
        out: list[bytes] = []
        times: list[float | None] = []
        try:
            for t, img in decode_video(path):
                if (img.height, img.width) != tuple(shape[:2]):
                    raise DataError(self.dataset, vf, ep, key, f"shape mismatch: frame {len(out)} is "
                                                               f"{img.height}x{img.width}, info.json says {shape[0]}x{shape[1]}")
                if len(out) < T:
                    out.append(encode_image(resize_image(img, image_size), image_format))
                times.append(t)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - av raises many error types
            raise DataError(self.dataset, vf, ep, key, f"cannot decode video ({e})") from None
        if len(times) != T:
            raise DataError(self.dataset, vf, ep, key, f"video has {len(times)} frames, parquet has {T} rows")
        if ts is not None and self.fps and all(t is not None for t in times):
            ft = np.asarray(times, np.float64) - float(times[0])  # type: ignore[arg-type]
            rel = ts - ts[0]
            bad = np.flatnonzero(np.abs(ft - rel) > 0.5 / self.fps)
            if bad.size:
                i = int(bad[0])
                raise DataError(self.dataset, vf, ep, key, f"frame {i} is at {ft[i]:.4f}s but the timestamp column "
                                                           f"says {rel[i]:.4f}s (relative to the episode start)")
        return out

    def _parquet_images(self, table, ep: int, key: str, shape: tuple[int, ...], file: str, image_size: int,
                        image_format: str) -> list[bytes]:
        out = []
        for t, v in enumerate(table.column(key).to_pylist()):
            try:
                if isinstance(v, dict):
                    b = v.get("bytes")
                    if b is None and v.get("path"):
                        p = Path(v["path"])
                        b = (p if p.is_absolute() else self.root / p).read_bytes()
                elif isinstance(v, (bytes, bytearray)):
                    b = bytes(v)
                else:
                    b = None
                if b is None:
                    raise ValueError(f"no image bytes or path (value {str(v)[:60]!r})")
                img = decode_image_bytes(b)
            except Exception as e:  # noqa: BLE001 - PIL / OSError
                raise DataError(self.dataset, file, ep, key, f"row {t}: cannot decode image ({e})") from None
            if (img.height, img.width) != tuple(shape[:2]):
                raise DataError(self.dataset, file, ep, key, f"shape mismatch: row {t} image is {img.height}x{img.width}, "
                                                             f"info.json says {shape[0]}x{shape[1]}")
            out.append(encode_image(resize_image(img.convert("RGB"), image_size), image_format))
        return out
