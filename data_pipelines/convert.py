"""Convert robot datasets to episode shards (schema: :mod:`data_pipelines.shards`): RLDS (Open
X-Embodiment, without TensorFlow), LeRobotDataset v2.x / v3.0 folders, robomimic-style HDF5 and npz demos.

::

    python -m data_pipelines.convert --src /data/bridge/0.1.0 --dataset bridge --out /data/shards/bridge \
        [--image-size 224] [--workers 4] [--split train] [--skip-bad] [--image-format jpg]
    python -m data_pipelines.convert --format lerobot --src /data/koch_pick --dataset koch_pick --out OUT \
        [--action-key action] [--state-key observation.state] \
        [--camera-keys primary=observation.images.top,wrist=observation.images.wrist] [--instruction TEXT]
    python -m data_pipelines.convert --format hdf5 --src demos.hdf5 --dataset my_robot --out OUT \
        [--action-key actions] [--state-key obs/robot0_eef_pos,obs/robot0_gripper_qpos] \
        [--camera-keys primary=obs/agentview_image,wrist=obs/robot0_eye_in_hand_image] --instruction "lift the cube"
    python -m data_pipelines.convert --format npz --src episodes/ --dataset my_robot --out OUT [--instruction TEXT]
    vla-ebt-convert ...   # the same, as a console script

``--format rlds`` (default): ``--dataset`` must be a registered config
(:mod:`vla_ebt.data.oxe_configs`); one output shard per input TFRecord file.

``--format lerobot|hdf5|npz`` (readers: :mod:`data_pipelines.lerobot`,
:mod:`data_pipelines.hdf5_npz`): ``--dataset`` is either a registered config name (its keys,
slices, gripper transforms, camera roles and control frequency are used, keys looked up in the
source's namespace: ``observation/state`` also matches LeRobot's ``observation.state`` and
robomimic's ``obs/state``) or any new name (letters, digits, ``_``, ``-``), with the format's
default keys. Either way these options override:

* ``--action-key K1[,K2..]`` / ``--state-key K1[,K2..]``: source keys concatenated into the action /
  state vectors (``--state-key none``: no state);
* ``--camera-keys [ROLE=]KEY,..``: cameras for the roles ``primary``, ``secondary``, ``wrist`` (without
  ``ROLE=`` in that order; ``none``: no images);
* ``--instruction TEXT``: instruction for episodes whose source has none;
* ``--control-hz HZ``: recorded control frequency (stored in meta.json);
* ``--episodes-per-shard N`` (default 32): episodes per output shard (the unit of resume and of
  parallel work).

Per-step shapes come from the source's metadata (LeRobot ``meta/info.json``, the first HDF5 demo,
the first npz file); every episode must match them.

Parallel (multiprocessing, one output shard per task) with a tqdm progress bar. Resumable:
finished shards are recorded in ``manifest.json`` (written atomically after each one) and
skipped on the next run with the same settings. Atomic: shards are written to a temp file and
renamed. Bad input raises a :class:`~data_pipelines.rlds.DataError` naming dataset, file, episode
and field (exit code 2); with ``--skip-bad`` bad episodes are skipped, counted, listed in the
manifest and summarized. ``stats.json`` beside the shards holds the action/state statistics.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from tqdm import tqdm

from vla_ebt.data.oxe_configs import DatasetConfig, get_config, known_datasets

from .rlds import DataError, StdEpisode, check_config, list_tfrecords, read_dataset_info, read_episodes, read_features
from .shards import FORMAT, ShardWriter, finalize, read_manifest, shard_name, write_manifest
from .sources import SpecOptions, parse_camera_keys, parse_keys

__all__ = ["convert", "main", "FORMATS", "RLDSSource", "open_source"]

FORMATS = ("rlds", "lerobot", "hdf5", "npz")


class RLDSSource:
    """RLDS TFRecord files of one split as a converter source: one unit (shard) per file."""

    format = "rlds"

    def __init__(self, cfg: DatasetConfig, files: Sequence[Path]) -> None:
        self.cfg, self.dataset, self.files = cfg, cfg.name, list(files)

    def units(self, episodes_per_shard: int = 0) -> list[tuple[str, str]]:
        return [(f.name, str(f)) for f in self.files]

    def read(self, path: str, image_size: int, image_format: str = "jpg",
             skip_bad: bool = False) -> Iterator[StdEpisode | DataError]:
        return read_episodes(path, self.cfg, image_size, skip_bad=skip_bad, image_format=image_format)

    def extra_meta(self, image_size: int) -> dict[str, Any]:
        return {"image_size": image_size, "control_hz": self.cfg.control_hz,
                "action_encoding": self.cfg.action_encoding, "state_encoding": self.cfg.state_encoding}


def _convert_unit(task: tuple) -> dict[str, Any]:
    """Worker: one unit of a source (a TFRecord file, a group of episodes) -> one shard. Returns
    counts and skipped-episode records."""
    source, index, unit_id, payload, out_dir, image_size, image_format, skip_bad, extra = task
    dataset = source.dataset
    name = shard_name(dataset, index)
    skipped: list[dict] = []
    with ShardWriter(Path(out_dir) / name, Path(out_dir) / "_stats" / f"{name}.npz") as w:
        for item in source.read(payload, image_size, image_format=image_format, skip_bad=skip_bad):
            if isinstance(item, DataError):
                skipped.append({**item.to_dict(), "shard": name})
                continue
            w.write(item, f"{dataset}-{index:05d}-{item.record:06d}", extra)
    return {"name": name, "source": unit_id, "episodes": w.episodes, "steps": w.steps,
            "stats": f"_stats/{name}.npz", "skipped": skipped}


def _as_keys(v: str | Sequence[str] | None) -> tuple[str, ...] | None:
    return parse_keys(v) if isinstance(v, str) or v is None else tuple(v)


def open_source(fmt: str, src: str | os.PathLike, dataset: str, action_key: str | Sequence[str] | None = None,
                state_key: str | Sequence[str] | None = None, camera_keys: str | Mapping[str, str] | None = None,
                instruction: str | None = None, control_hz: float | None = None):
    """The reader of a ``lerobot`` / ``hdf5`` / ``npz`` source, with its spec resolved (raises
    :class:`DataError` for missing keys or shape mismatches in the metadata)."""
    cams = parse_camera_keys(camera_keys) if isinstance(camera_keys, str) or camera_keys is None else dict(camera_keys)
    opts = SpecOptions(action_keys=_as_keys(action_key), state_keys=_as_keys(state_key), cameras=cams,
                       instruction=instruction, control_hz=control_hz)
    cfg = get_config(dataset) if dataset in known_datasets() else None
    if fmt == "lerobot":
        from .lerobot import LeRobotSource

        if not Path(src).is_dir():
            raise FileNotFoundError(f"--src {src}: not a directory")
        return LeRobotSource(src, dataset, opts, cfg)
    if fmt == "hdf5":
        from .hdf5_npz import HDF5Source

        return HDF5Source(src, dataset, opts, cfg)
    if fmt == "npz":
        from .hdf5_npz import NpzSource

        return NpzSource(src, dataset, opts, cfg)
    raise ValueError(f"unknown format {fmt!r}; formats: {FORMATS}")


def convert(src: str | os.PathLike, dataset: str, out: str | os.PathLike, image_size: int = 224,
            workers: int | None = None, split: str = "train", skip_bad: bool = False, image_format: str = "jpg",
            progress: bool = True, format: str = "rlds", action_key: str | Sequence[str] | None = None,
            state_key: str | Sequence[str] | None = None, camera_keys: str | Mapping[str, str] | None = None,
            instruction: str | None = None, control_hz: float | None = None,
            episodes_per_shard: int = 32) -> dict[str, Any]:
    """Convert ``src`` (format ``format``, see module docstring) to shards in ``out``; returns a
    summary dict (``converted``, ``resumed`` shard counts, ``episodes``, ``steps``, ``skipped``)."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; formats: {FORMATS}")
    if not dataset or "." in dataset or "/" in dataset or any(c.isspace() for c in dataset):
        raise ValueError(f"dataset name must be non-empty without '.', '/' or spaces: {dataset!r}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image format must be 'jpg' or 'png', got {image_format!r}")
    src, out = Path(src), Path(out)
    if format == "rlds":
        given = {"action_key": action_key, "state_key": state_key, "camera_keys": camera_keys,
                 "instruction": instruction, "control_hz": control_hz}
        if any(v is not None for v in given.values()):
            raise ValueError(f"{sorted(k for k, v in given.items() if v is not None)}: only for --format "
                             f"lerobot/hdf5/npz (RLDS datasets use their registered config)")
        cfg = get_config(dataset)  # ValueError listing known names
        if not src.is_dir():
            raise FileNotFoundError(f"--src {src}: not a directory")
        info = read_dataset_info(src)
        if info.get("name") and info["name"] != dataset:
            print(f"[convert] note: dataset_info.json names {info['name']!r}; converting with config {dataset!r}",
                  file=sys.stderr)
        feat_path = src / "features.json"
        if feat_path.exists():
            check_config(cfg, read_features(feat_path), str(feat_path))
        source: Any = RLDSSource(cfg, list_tfrecords(src, split))
        settings = {"dataset": dataset, "image_size": int(image_size), "image_format": image_format, "split": split,
                    "src": str(src.resolve()), "skip_bad": bool(skip_bad)}
        config_summary = cfg.summary()
        extra = source.extra_meta(int(image_size))
    else:
        source = open_source(format, src, dataset, action_key, state_key, camera_keys, instruction, control_hz)
        settings = {"format": format, "dataset": dataset, "image_size": int(image_size), "image_format": image_format,
                    "skip_bad": bool(skip_bad), "episodes_per_shard": int(episodes_per_shard), **source.identity()}
        config_summary = source.spec.summary()
        extra = source.spec.extra_meta(int(image_size), format)
    units = source.units(int(episodes_per_shard))
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):  # leftovers of an interrupted run (never read by loaders)
        stale.unlink()
    manifest = read_manifest(out)
    if manifest is None or manifest.get("settings") != settings:
        if manifest is not None:
            print(f"[convert] {out}: settings changed ({manifest.get('settings')} -> {settings}); starting over",
                  file=sys.stderr)
        manifest = {"format": FORMAT, "dataset": dataset, "source": format, "settings": settings,
                    "image_size": int(image_size), "image_format": image_format, "config": config_summary,
                    "shards": {}, "skipped": [], "complete": False}
    tasks = []
    for i, (unit_id, payload) in enumerate(units):
        name = shard_name(dataset, i)
        done = manifest["shards"].get(name)
        if done and done.get("source") == unit_id and (out / name).exists() and (out / done["stats"]).exists():
            continue
        manifest["shards"].pop(name, None)
        tasks.append((source, i, unit_id, payload, str(out), int(image_size), image_format, bool(skip_bad), extra))
    resumed = len(units) - len(tasks)
    manifest["complete"] = False
    write_manifest(out, manifest)
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks) or 1))
    bar = tqdm(total=len(units), initial=resumed, desc=f"convert {dataset}", unit="shard", disable=not progress)

    def record(r: dict) -> None:
        skipped, name = r.pop("skipped"), r.pop("name")
        manifest["shards"][name] = r
        manifest["skipped"] = [s for s in manifest["skipped"]
                               if not (s.get("shard") == name or Path(s["file"]).name == r["source"])] + skipped
        write_manifest(out, manifest)
        bar.update(1)
        bar.set_postfix(episodes=sum(s["episodes"] for s in manifest["shards"].values()),
                        skipped=len(manifest["skipped"]))

    try:
        if workers == 1:
            for t in tasks:
                record(_convert_unit(t))
        else:
            with mp.get_context("spawn").Pool(workers) as pool:
                for r in pool.imap_unordered(_convert_unit, tasks):
                    record(r)
    finally:
        bar.close()
    manifest["complete"] = True
    stats = finalize(out, manifest)
    return {"dataset": dataset, "format": format, "out": str(out), "files": len(units), "converted": len(tasks),
            "resumed": resumed, "episodes": stats.num_episodes, "steps": stats.num_steps,
            "skipped": len(manifest["skipped"]), "action_dim": stats.action.dim,
            "state_dim": 0 if stats.state is None else stats.state.dim}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vla-ebt-convert", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", choices=FORMATS, default="rlds", help="source format (default rlds)")
    p.add_argument("--src", required=True, help="rlds: dataset folder (dataset_info.json, features.json, "
                   "*.tfrecord-*); lerobot: dataset root (meta/, data/, videos/); hdf5: a file or folder of them; "
                   "npz: a folder of per-episode .npz files (or one file)")
    p.add_argument("--dataset", required=True, help="rlds: registered config name (vla_ebt.data.oxe_configs); "
                   "other formats: a registered config name or a new dataset name")
    p.add_argument("--out", required=True, help="output folder for shards, manifest.json and stats.json")
    p.add_argument("--image-size", type=int, default=224, help="square size images are resized to (default 224)")
    p.add_argument("--image-format", choices=("jpg", "png"), default="jpg")
    p.add_argument("--split", default="train", help="rlds only")
    p.add_argument("--workers", type=int, default=None, help="parallel worker processes (default: CPU count)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad episodes instead of failing")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("lerobot / hdf5 / npz")
    g.add_argument("--action-key", default=None, help="source key(s) of the action, comma separated (concatenated)")
    g.add_argument("--state-key", default=None, help="source key(s) of the state, comma separated; 'none': no state")
    g.add_argument("--camera-keys", default=None,
                   help="[ROLE=]KEY,... with roles primary, secondary, wrist (in that order without ROLE=); 'none'")
    g.add_argument("--instruction", default=None, help="instruction for episodes whose source has none")
    g.add_argument("--control-hz", type=float, default=None, help="control frequency of the recorded data")
    g.add_argument("--episodes-per-shard", type=int, default=32, help="episodes per output shard (default 32)")
    a = p.parse_args(argv)
    try:
        s = convert(a.src, a.dataset, a.out, image_size=a.image_size, workers=a.workers, split=a.split,
                    skip_bad=a.skip_bad, image_format=a.image_format, progress=not a.no_progress, format=a.format,
                    action_key=a.action_key, state_key=a.state_key, camera_keys=a.camera_keys,
                    instruction=a.instruction, control_hz=a.control_hz, episodes_per_shard=a.episodes_per_shard)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    see = " (listed in manifest.json 'skipped')" if s["skipped"] else ""
    print(f"[convert] {s['dataset']}: {s['episodes']} episodes, {s['steps']} steps in {s['files']} shard(s) "
          f"({s['converted']} converted, {s['resumed']} already done); skipped {s['skipped']} bad episode(s)"
          f"{see}; stats -> {Path(s['out']) / 'stats.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
