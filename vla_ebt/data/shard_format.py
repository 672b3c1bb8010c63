"""Episode shards: the on-disk schema shared by converted OXE data and this project's sim demos.

A converted dataset is a folder::

    OUT_DIR/
      manifest.json            finished shards (the only ones a loader reads), counts, skipped episodes
      stats.json               normalize.save_stats({dataset: DatasetStats}) over all finished shards
      <dataset>-NNNNN.tar      webdataset shards (one per input TFRecord file / per N sim episodes)
      _stats/<shard>.npz       per-shard action/state rows, to recompute stats.json on resume

Each shard is a plain tar (webdataset layout). **One sample = one episode**, key
``<dataset>-NNNNN-EEEEEE`` (no dots), with members:

=========================  ==========================================================================
``action.npy``             float32 (T, D): standardized, unnormalized actions, one row per step
``state.npy``              float32 (T, S): standardized, unnormalized robot states, one row per step
``instruction.txt``        UTF-8 language instruction (non-empty)
``<role>.<tttt>.jpg|png``  one image per camera role (``primary``, ``secondary``, ``wrist``) and step
                           ``t`` (zero padded to 4 digits), square ``image_size``
``meta.json``              ``{"dataset", "embodiment" (= dataset name), "episode_id", "episode_index",
                           "file_path", "source_file", "num_steps", "action_dim", "state_dim",
                           "cameras", "image_size", "image_format", "control_hz", "action_encoding",
                           "state_encoding", "step_ids": [0..T-1]}``
=========================  ==========================================================================

Atomicity: a shard is written to ``.<name>.<writer>.tmp`` and renamed when complete; the manifest (written
atomically after each finished shard) lists finished shards only, so an interrupted conversion
leaves nothing that a loader reads. Writers live in
:mod:`data_pipelines.shards`; this module is the read side (loaders, demo cache, replay).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["MANIFEST", "STATS", "FORMAT", "read_manifest", "shard_paths", "iter_shard"]

MANIFEST = "manifest.json"
STATS = "stats.json"
FORMAT = "vla_ebt.episodes/1"


def read_manifest(out_dir: str | os.PathLike) -> dict | None:
    p = Path(out_dir) / MANIFEST
    if not p.exists():
        return None
    try:
        m = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None
    if m.get("format") != FORMAT:
        raise ValueError(f"{p}: format {m.get('format')!r}, expected {FORMAT!r}")
    return m


def shard_paths(out_dir: str | os.PathLike) -> list[Path]:
    """Finished shards of a dataset folder (from its manifest), sorted."""
    m = read_manifest(out_dir)
    if m is None:
        raise FileNotFoundError(f"{out_dir}: no {MANIFEST} (not a converted dataset, or conversion never finished a shard)")
    return [Path(out_dir) / n for n in sorted(m["shards"])]


def iter_shard(path: str | os.PathLike, decode_images: bool = False) -> Iterator[dict[str, Any]]:
    """Episodes of one shard as dicts: ``__key__``, ``meta`` (dict), ``instruction`` (str),
    ``action``/``state`` (float32 arrays), ``images`` (role -> list of encoded bytes, or of uint8
    (H, W, 3) arrays with ``decode_images``). Reads members in order; needs nothing but tarfile."""
    cur: dict[str, Any] | None = None
    with tarfile.open(path, mode="r|") as tar:
        for m in tar:
            if not m.isfile():
                continue
            key, _, ext = m.name.partition(".")
            data = tar.extractfile(m).read()  # type: ignore[union-attr]
            if cur is None or cur["__key__"] != key:
                if cur is not None:
                    yield _finish(cur, decode_images)
                cur = {"__key__": key, "images": {}, "__url__": str(path)}
            if ext == "meta.json":
                cur["meta"] = json.loads(data)
            elif ext == "instruction.txt":
                cur["instruction"] = data.decode("utf-8")
            elif ext in ("action.npy", "state.npy"):
                cur[ext[:-4]] = np.load(io.BytesIO(data), allow_pickle=False)
            else:
                role = ext.split(".", 1)[0]
                cur["images"].setdefault(role, []).append(data)
    if cur is not None:
        yield _finish(cur, decode_images)


def _finish(ep: dict, decode: bool) -> dict:
    missing = [k for k in ("meta", "instruction", "action", "state") if k not in ep]
    if missing:
        raise ValueError(f"{ep['__url__']}: sample {ep['__key__']!r} lacks member(s) {missing}")
    if decode:
        from PIL import Image

        ep["images"] = {r: [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in v]
                        for r, v in ep["images"].items()}
    return ep
