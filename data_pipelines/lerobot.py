"""Read LeRobotDataset folders (v2.x and v3.0) into standardized episodes
(:class:`~data_pipelines.rlds.StdEpisode`). The layout follows ``codebase_version`` in
``meta/info.json``; any other version (v1.x, v4...) is refused.

v2.x (``v2.0`` / ``v2.1``): one parquet / mp4 per episode::

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

v3.0 (written by the LeRobot library since 0.4): many episodes per file::

    ROOT/meta/info.json         as above; data_path / video_path templates use {chunk_index} /
                                {file_index} (and {video_key})
    ROOT/meta/episodes/chunk-XXX/file-XXX.parquet
                                one row per episode: episode_index, tasks, length,
                                data/chunk_index, data/file_index, dataset_from_index /
                                dataset_to_index (the episode's rows: global ``index`` from..to-1),
                                videos/<key>/chunk_index, /file_index, /from_timestamp,
                                /to_timestamp (the episode's segment of a concatenated video);
                                ``stats/...`` columns are not read
    ROOT/meta/tasks.parquet     task_index per task (the task string is the pandas index)
    ROOT/meta/stats.json        dataset statistics (:meth:`LeRobotSource.source_stats`)
    ROOT/data/chunk-XXX/file-XXX.parquet
                                frames of consecutive episodes (columns as in v2)
    ROOT/videos/<key>/chunk-XXX/file-XXX.mp4
                                episodes' videos concatenated; an episode's frame for row t is the
                                frame nearest ``from_timestamp + timestamp[t]`` (within 1/fps; each
                                row its own frame)

Mapping (defaults, see :mod:`data_pipelines.sources` for options / registered configs):
action <- ``action``, state <- ``observation.state``, cameras <- every video / image feature
(a key naming a wrist / hand / gripper camera -> ``wrist``, others -> ``primary``, ``secondary``
in info.json order), instruction <- the task of the episode's first frame (``task_index`` ->
tasks.jsonl / tasks.parquet), else the episode's ``tasks[0]`` (episodes metadata), else
``--instruction``; control_hz <- fps.

Errors are :class:`~data_pipelines.rlds.DataError` naming the file, episode index and field:
missing meta files / features / parquet columns / videos, per-step shape mismatches (vs
info.json), ragged or null list columns, non-finite actions or states, row count vs the
episodes metadata ``length``, ``frame_index`` not 0..T-1, video frame count (or frame times) vs
parquet rows, image size vs info.json; v3 also: episode rows (``dataset_from_index`` /
``dataset_to_index``) absent from the data file or holding another episode, video segments
without a frame near a row's time, total_episodes vs the episodes metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from vla_ebt.data.oxe_configs import DatasetConfig

from .rlds import DataError, StdEpisode, encode_image, resize_image
from .sources import SourceSpec, SpecOptions, assemble, chunks, decode_image_bytes, natural_key, resolve_spec

__all__ = ["LeRobotSource", "read_info", "column_array", "decode_video", "decode_video_segment"]

DEFAULT_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
DEFAULT_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
SUPPORTED_VERSIONS = ("v2", "v3")  # major versions read (v2.0, v2.1, v3.0)
IMAGE_DTYPES = ("video", "image")
V3_EPISODE_COLUMNS = ("episode_index", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                      "dataset_to_index")
V3_VIDEO_COLUMNS = ("chunk_index", "file_index", "from_timestamp", "to_timestamp")  # videos/<key>/...


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
    """``meta/info.json``, checked: a features dict, fps, a v2.x or v3.x layout."""
    p = Path(root) / "meta" / "info.json"
    info = _read_json(p, dataset)
    if not isinstance(info, dict) or not isinstance(info.get("features"), dict):
        raise DataError(dataset, str(p), None, "features", "missing or not a dict")
    ver = str(info.get("codebase_version", "v2.0"))
    if not ver.startswith(SUPPORTED_VERSIONS):
        raise DataError(dataset, str(p), None, "codebase_version",
                        f"{ver} is not supported (LeRobotDataset v2.x folders, one parquet / mp4 per episode, "
                        f"and v3.0 folders, many episodes per file, only)")
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


class SegmentError(ValueError):
    """A video segment does not hold the frames asked for (message says which)."""


def decode_video_segment(path: str | os.PathLike, times: np.ndarray, tolerance: float,
                         segment: tuple[float, float] | None = None,
                         convert: Callable[[Any], Any] | None = None) -> tuple[list[Any], int]:
    """``convert(frame)`` (default: PIL RGB image) of the video frames nearest to ``times`` (seconds
    in the file, ascending), decoding only from the key frame before ``times[0]`` on and converting
    each frame as soon as it is known to be the nearest. Every time needs a frame closer than
    ``tolerance`` and a frame of its own (two times sharing their nearest frame: a frame is missing);
    with ``segment`` = ``(start, end)`` that frame must lie in ``[start - tolerance / 2, end -
    tolerance / 2)``. Also returns how many frames lie there (default segment: ``(times[0],
    times[-1] + tolerance)``), for a frame count check: T times, T frames in the segment, each time
    its own frame in it = frame i for time i. Raises :class:`SegmentError` for a time without a
    (fitting) frame; other errors (no stream, undecodable, from ``convert``) as raised."""
    import av

    convert = convert or (lambda fr: fr.to_image())
    times = np.asarray(times, np.float64)
    n = len(times)
    inside = segment is not None
    start, end = segment if segment is not None else (float(times[0]), float(times[-1]) + tolerance)
    lo, hi = float(start) - tolerance / 2, float(end) - tolerance / 2
    best: list[tuple[float, int, Any] | None] = [None] * n  # (distance, frame number, frame) per time
    out: list[Any] = []  # converted frames of times[:len(out)] (final: no later frame is nearer)

    def settle(upto: float) -> None:
        """Convert the frames of every time <= upto (later frames are farther from it)."""
        while len(out) < n and times[len(out)] <= upto:
            i = len(out)
            b = best[i]
            if b is None:
                raise SegmentError(f"row {i}: no frame within {tolerance:.4f}s of {times[i]:.4f}s")
            if i and best[i - 1][1] == b[1]:  # type: ignore[index]
                raise SegmentError(f"rows {i - 1} and {i} ({times[i - 1]:.4f}s, {times[i]:.4f}s) have the same "
                                   f"nearest frame (at {b[2].time:.4f}s): a frame is missing")
            if inside and not lo <= b[2].time < hi:
                raise SegmentError(f"row {i} ({times[i]:.4f}s): its nearest frame (at {b[2].time:.4f}s) is outside "
                                   f"the segment")
            out.append(convert(b[2]))
            best[i] = (b[0], b[1], None)

    counted = 0
    with av.open(str(path)) as c:
        if not c.streams.video:
            raise ValueError("no video stream")
        vs = c.streams.video[0]
        first = min(float(times[0]), float(start)) - tolerance
        if first > 0 and vs.time_base:
            c.seek(int(first / float(vs.time_base)), stream=vs, backward=True, any_frame=False)
        j = 0  # first time not yet settled or out of reach
        for k, frame in enumerate(c.decode(vs)):
            t = frame.time
            if t is None:
                raise SegmentError(f"frame {k} after the seek has no presentation time")
            if lo <= t < hi:
                counted += 1
            j = max(j, len(out))
            while j < n and times[j] <= t - tolerance:
                j += 1
            i = j
            while i < n and times[i] < t + tolerance:  # times this frame is within tolerance of
                d = abs(times[i] - t)
                b = best[i]
                if b is None or d < b[0]:
                    best[i] = (d, k, frame)
                i += 1
            settle(t)
            if len(out) == n and t >= hi:
                break
    settle(float("inf"))
    return out, counted


class LeRobotSource:
    """A LeRobotDataset v2.x or v3.0 folder as a converter source (see module docstring). Picklable
    (worker processes re-open files themselves)."""

    format = "lerobot"

    def __init__(self, root: str | os.PathLike, dataset: str, options: SpecOptions | None = None,
                 config: DatasetConfig | None = None) -> None:
        self.root = Path(root)
        self.dataset = dataset
        if not (self.root / "meta").is_dir():
            raise DataError(dataset, str(self.root), None, "meta", "not a LeRobotDataset folder: no meta/ directory")
        info_path = self.root / "meta" / "info.json"
        self.info = info = read_info(self.root, dataset)
        self.version = str(info.get("codebase_version", "v2.0"))
        self.v3 = self.version.startswith("v3")
        self.features: dict[str, dict] = info["features"]
        self.fps = float(info["fps"]) if info.get("fps") else None
        self.data_path = info.get("data_path") or (V3_DATA_PATH if self.v3 else DEFAULT_DATA_PATH)
        self.video_path = info.get("video_path") or (V3_VIDEO_PATH if self.v3 else DEFAULT_VIDEO_PATH)
        self.chunks_size = int(info.get("chunks_size") or 1000)
        self.episodes: dict[int, dict] = {}  # episode index -> its metadata (v2: episodes.jsonl, v3: a row)
        self.tasks: dict[int, str] = {}
        if self.v3:
            self._load_v3_meta()
        else:
            self._load_v2_meta()

        image_keys = [k for k, f in self.features.items() if f["dtype"] in IMAGE_DTYPES]
        available = {k: (_image_shape(f) if k in image_keys else tuple(int(s) for s in f["shape"]))
                     for k, f in self.features.items()}
        self.spec: SourceSpec = resolve_spec(
            dataset, str(info_path), available, image_keys, options or SpecOptions(), config,
            default_action=("action",), default_state=(("observation.state",), ("state",)),
            control_hz=self.fps)
        if self.v3:
            self._check_v3_video_columns()

    def _load_v2_meta(self) -> None:
        dataset, info = self.dataset, self.info
        ep_path = self.root / "meta" / "episodes.jsonl"
        self.episodes_file, self.tasks_file = "meta/episodes.jsonl", "meta/tasks.jsonl"
        if ep_path.exists():
            for d in _read_jsonl(ep_path, dataset, ("episode_index",)):
                self.episodes[int(d["episode_index"])] = d
            self.episode_ids = sorted(self.episodes)
        elif info.get("total_episodes") is not None:
            self.episode_ids = list(range(int(info["total_episodes"])))
        else:
            raise DataError(dataset, str(ep_path), None, "<file>", "missing file (and info.json has no total_episodes)")
        if not self.episode_ids:
            raise DataError(dataset, str(ep_path if ep_path.exists() else self.root / "meta" / "info.json"), None,
                            "episodes", "no episodes")
        task_path = self.root / "meta" / "tasks.jsonl"
        if task_path.exists():
            self.tasks = {int(d["task_index"]): str(d["task"])
                          for d in _read_jsonl(task_path, dataset, ("task_index", "task"))}

    # ------------------------------------------------------------------ v3.0 metadata

    def _load_v3_meta(self) -> None:
        """meta/episodes/*/*.parquet (one row per episode, ``stats/`` columns skipped) and
        meta/tasks.parquet."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        dataset = self.dataset
        self.episodes_file, self.tasks_file = "meta/episodes/", "meta/tasks.parquet"
        ep_dir = self.root / "meta" / "episodes"
        files = sorted(ep_dir.rglob("*.parquet"), key=lambda p: natural_key(str(p.relative_to(ep_dir))))
        if not files:
            raise DataError(dataset, str(ep_dir), None, "<file>",
                            "missing episodes metadata: no parquet files under meta/episodes/ (a LeRobot v3.0 "
                            "dataset has meta/episodes/chunk-XXX/file-XXX.parquet)")
        self.episode_files: dict[int, str] = {}  # episode index -> its metadata file
        for f in files:
            try:
                names = pq.read_schema(f).names
                missing = [c for c in V3_EPISODE_COLUMNS if c not in names]
                if missing:
                    raise DataError(dataset, str(f), None, missing[0], f"missing column (episodes metadata has "
                                                                       f"{[n for n in names if not n.startswith('stats/')]})")
                table = pq.read_table(f, columns=[n for n in names if not n.startswith("stats/")])
            except (pa.ArrowException, OSError) as e:
                raise DataError(dataset, str(f), None, "<parquet>", f"cannot read parquet ({e})") from None
            for row in table.to_pylist():
                ep = row["episode_index"]
                if ep is None:
                    raise DataError(dataset, str(f), None, "episode_index", "null episode_index")
                ep = int(ep)
                if ep in self.episodes:
                    raise DataError(dataset, str(f), ep, "episode_index",
                                    f"episode listed twice (also in {self.episode_files[ep]})")
                for c in V3_EPISODE_COLUMNS:
                    if row[c] is None:
                        raise DataError(dataset, str(f), ep, c, "null value")
                self.episodes[ep], self.episode_files[ep] = row, str(f)
        self.episode_ids = sorted(self.episodes)
        total = self.info.get("total_episodes")
        if total is not None and int(total) != len(self.episode_ids):
            raise DataError(dataset, str(ep_dir), None, "total_episodes",
                            f"meta/info.json says {total} episodes, meta/episodes/ lists {len(self.episode_ids)} "
                            f"({len(files)} file(s)): an episodes metadata file is missing or extra")
        task_path = self.root / "meta" / "tasks.parquet"
        if task_path.exists():
            self.tasks = self._read_tasks_parquet(task_path)

    def _read_tasks_parquet(self, path: Path) -> dict[int, str]:
        """task_index -> task from meta/tasks.parquet: a ``task`` column, or (as LeRobot writes it
        with pandas) the task strings as the DataFrame index."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise DataError(self.dataset, str(path), None, "<parquet>", f"cannot read parquet ({e})") from None
        names = table.column_names
        if "task_index" not in names:
            raise DataError(self.dataset, str(path), None, "task_index", f"missing column (tasks has {names})")
        key = "task" if "task" in names else None
        if key is None:
            pandas_meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}") or b"{}")
            idx = [c for c in pandas_meta.get("index_columns", []) if isinstance(c, str) and c in names]
            key = idx[0] if idx else next((n for n in names if n != "task_index"), None)
        if key is None:
            raise DataError(self.dataset, str(path), None, "task", f"no task strings (columns {names})")
        out = {}
        for ti, task in zip(table.column("task_index").to_pylist(), table.column(key).to_pylist()):
            if ti is None or not isinstance(task, str):
                raise DataError(self.dataset, str(path), None, "task", f"bad row: task_index {ti!r}, task {task!r}")
            out[int(ti)] = task
        return out

    def _check_v3_video_columns(self) -> None:
        """Every video camera in the spec needs its videos/<key>/... columns in each episode row."""
        for key, _ in self.spec.cameras.values():
            if self.features[key]["dtype"] != "video":
                continue
            for ep in self.episode_ids:
                row = self.episodes[ep]
                for c in V3_VIDEO_COLUMNS:
                    col = f"videos/{key}/{c}"
                    if col not in row:
                        raise DataError(self.dataset, self.episode_files[ep], None, col,
                                        f"missing column for video feature {key!r}")
                    if row[col] is None:
                        raise DataError(self.dataset, self.episode_files[ep], ep, col, "null value")

    def source_stats(self) -> dict[str, dict[str, np.ndarray]] | None:
        """``meta/stats.json`` (v3.0 and v2.1 write it): feature -> {mean, std, min, max, ...} as
        float64 arrays; None where the file is absent. DataError if unreadable or non-numeric."""
        path = self.root / "meta" / "stats.json"
        if not path.exists():
            return None
        raw = _read_json(path, self.dataset)
        if not isinstance(raw, dict):
            raise DataError(self.dataset, str(path), None, "<file>", "not a JSON object")
        out: dict[str, dict[str, np.ndarray]] = {}
        for feat, st in raw.items():
            if not isinstance(st, dict):
                raise DataError(self.dataset, str(path), None, feat, "not a dict of statistics")
            try:
                out[feat] = {k: np.asarray(v, np.float64) for k, v in st.items()}
            except (TypeError, ValueError) as e:
                raise DataError(self.dataset, str(path), None, feat, f"non-numeric statistics ({e})") from None
        return out

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
            if self.v3:
                return self.root / template.format(**kw)
            return self.root / template.format(episode_chunk=ep // self.chunks_size, episode_index=ep, **kw)
        except (KeyError, IndexError, ValueError) as e:
            raise DataError(self.dataset, str(self.root / "meta" / "info.json"), ep, "data_path/video_path",
                            f"bad path template {template!r} ({e})") from None

    def _v3_index(self, ep: int, prefix: str) -> tuple[int, int]:
        row = self.episodes[ep]
        try:
            return int(row[f"{prefix}chunk_index"]), int(row[f"{prefix}file_index"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(self.dataset, self.episode_files[ep], ep, f"{prefix}chunk_index",
                            f"bad or missing chunk / file index ({e})") from None

    def read_episode(self, ep: int, image_size: int, image_format: str = "jpg") -> StdEpisode:
        import pyarrow as pa
        import pyarrow.parquet as pq

        spec, name = self.spec, self.dataset
        if self.v3:
            c, f = self._v3_index(ep, "data/")
            path = self._path(self.data_path, ep, chunk_index=c, file_index=f)
        else:
            path = self._path(self.data_path, ep)
        file = str(path)
        if not path.exists():
            where = f" (meta/episodes says data/chunk_index {c}, data/file_index {f})" if self.v3 else ""
            raise DataError(name, file, ep, "<file>", f"missing parquet file{where}")
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
        columns = list(dict.fromkeys(vec_keys + img_keys + optional))
        try:
            if self.v3:
                table = self._v3_rows(ep, path, have, columns)
            else:
                table = pq.read_table(path, columns=columns)
        except (pa.ArrowException, OSError) as e:
            raise DataError(name, file, ep, "<parquet>", f"cannot read parquet ({e})") from None
        T = table.num_rows
        if T == 0:
            raise DataError(name, file, ep, "<rows>", "episode has 0 rows")
        length = self.episodes.get(ep, {}).get("length")
        if length is not None and int(length) != T:
            raise DataError(name, self.episode_files[ep] if self.v3 else file, ep, "length",
                            f"{self.episodes_file} says {length} frames, parquet has {T} rows"
                            + (f" (in {file})" if self.v3 else ""))

        def col(key: str) -> np.ndarray:
            try:
                return column_array(table.column(key))
            except ValueError as e:
                raise DataError(name, file, ep, key, str(e)) from None

        if "frame_index" in optional:
            fi = col("frame_index").reshape(T, -1)[:, 0]
            if not np.array_equal(fi, np.arange(T)):
                raise DataError(name, file, ep, "frame_index", f"not 0..{T - 1} in order (starts {fi[:5].tolist()})")
        if "episode_index" in optional and not self.v3:  # v3: checked with the row range
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
            if self.v3 and not (np.diff(ts) > 0).all():  # v3 looks frames up by it
                i = int(np.flatnonzero(np.diff(ts) <= 0)[0]) + 1
                raise DataError(name, file, ep, "timestamp", f"not increasing: row {i} is at {ts[i]:.4f}s, row {i - 1} "
                                                             f"at {ts[i - 1]:.4f}s")
        images: dict[str, list[bytes]] = {}
        for role, (key, shape) in spec.cameras.items():
            if self.features[key]["dtype"] == "video":
                if self.v3:
                    images[role] = self._video_segment(ep, key, shape, T, ts, image_size, image_format)
                else:
                    images[role] = self._video_frames(ep, key, shape, T, ts, image_size, image_format)
            else:
                images[role] = self._parquet_images(table, ep, key, shape, file, image_size, image_format)
        return StdEpisode(dataset=name, episode_id=f"episode_{ep:06d}", source_file=file, record=ep,
                          file_path=str(path.relative_to(self.root)), instruction=instruction, state=state,
                          action=action, images=images, image_format=image_format)

    def _v3_rows(self, ep: int, path: Path, have: list[str], columns: list[str]):
        """The rows of episode ``ep`` in a v3 data file: global ``index`` in [dataset_from_index,
        dataset_to_index) (reading only the row groups holding them), checked to be that many and
        all of episode ``ep``."""
        import pyarrow.parquet as pq

        row = self.episodes[ep]
        a, b = int(row["dataset_from_index"]), int(row["dataset_to_index"])
        meta_file = self.episode_files[ep]
        if b <= a:
            raise DataError(self.dataset, meta_file, ep, "dataset_to_index",
                            f"dataset_to_index {b} is not after dataset_from_index {a}")
        if "index" not in have or "episode_index" not in have:
            raise DataError(self.dataset, str(path), ep, "index" if "index" not in have else "episode_index",
                            f"missing column (a v3.0 data file needs it to find the episode's rows; parquet has {have})")
        table = pq.read_table(path, columns=list(dict.fromkeys(columns + ["index", "episode_index"])),
                              filters=[("index", ">=", a), ("index", "<", b)])
        idx = column_array(table.column("index")).reshape(-1)
        eps = np.unique(column_array(table.column("episode_index")).reshape(-1))
        if len(idx) != b - a or not np.array_equal(idx, np.arange(a, b)) or eps.tolist() != [ep]:
            found = (f"has {len(idx)} of them, of episode(s) {eps[:5].tolist()}" if len(idx) else "has none of them")
            raise DataError(self.dataset, meta_file, ep, "dataset_from_index",
                            f"wrong offsets: the rows with index {a}..{b - 1} (dataset_from_index.."
                            f"dataset_to_index - 1) should be the {b - a} rows of episode {ep}, in order; "
                            f"{path.relative_to(self.root)} {found}")
        return table.select(columns)

    def _instruction(self, table, ep: int, file: str, optional: list[str]) -> str:
        if "task_index" in optional and self.tasks:
            try:
                ti = int(column_array(table.column("task_index")).reshape(-1)[0])
            except ValueError as e:
                raise DataError(self.dataset, file, ep, "task_index", str(e)) from None
            if ti not in self.tasks:
                raise DataError(self.dataset, file, ep, "task_index",
                                f"task {ti} is not in {self.tasks_file} (has {sorted(self.tasks)[:20]})")
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
        raise DataError(self.dataset, file, ep, "task", f"no instruction: no task_index / {self.tasks_file} entry, no "
                                                        f"tasks in {self.episodes_file}; pass --instruction")

    def _video_segment(self, ep: int, key: str, shape: tuple[int, ...], T: int, ts: np.ndarray | None,
                       image_size: int, image_format: str) -> list[bytes]:
        """v3: the episode's frames of a concatenated video: row t <-> the frame nearest
        ``from_timestamp + timestamp[t]`` (within 1/fps, a frame per row)."""
        row = self.episodes[ep]
        c, f = self._v3_index(ep, f"videos/{key}/")
        path = self._path(self.video_path, ep, video_key=key, chunk_index=c, file_index=f)
        vf = str(path)
        if not path.exists():
            raise DataError(self.dataset, vf, ep, key, f"missing video file (meta/episodes says videos/{key}/"
                                                       f"chunk_index {c}, file_index {f})")
        fps = float(self.features[key].get("info", {}).get("video.fps") or self.fps or 0)
        if fps <= 0:
            raise DataError(self.dataset, str(self.root / "meta" / "info.json"), ep, "fps",
                            "needed to match video frames to rows: missing or not positive")
        start, end = float(row[f"videos/{key}/from_timestamp"]), float(row[f"videos/{key}/to_timestamp"])
        times = start + (ts if ts is not None else np.arange(T) / fps)  # as LeRobot: from_timestamp + timestamp
        tol = 1.0 / fps

        def convert(frame) -> bytes:
            img = frame.to_image()
            if (img.height, img.width) != tuple(shape[:2]):
                raise DataError(self.dataset, vf, ep, key, f"shape mismatch: frame at {frame.time:.4f}s is "
                                                           f"{img.height}x{img.width}, info.json says {shape[0]}x{shape[1]}")
            return encode_image(resize_image(img, image_size), image_format)

        try:
            frames, counted = decode_video_segment(path, times, tol, (start, end), convert)
        except DataError:
            raise
        except SegmentError as e:
            raise DataError(self.dataset, vf, ep, key, f"segment {start:.4f}s..{end:.4f}s (from_timestamp.."
                                                       f"to_timestamp): {e}") from None
        except Exception as e:  # noqa: BLE001 - av raises many error types
            raise DataError(self.dataset, vf, ep, key, f"cannot decode video ({e})") from None
        if counted != T:
            raise DataError(self.dataset, vf, ep, key, f"video segment {start:.4f}s..{end:.4f}s (from_timestamp.."
                                                       f"to_timestamp) has {counted} frames, parquet has {T} rows")
        return frames

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
