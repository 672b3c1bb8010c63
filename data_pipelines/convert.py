"""Convert an RLDS (Open X-Embodiment) dataset folder to episode shards (schema:
:mod:`data_pipelines.shards`), without TensorFlow.

::

    python -m data_pipelines.convert --src /data/bridge/0.1.0 --dataset bridge --out /data/shards/bridge \
        [--image-size 224] [--workers 4] [--split train] [--skip-bad] [--image-format jpg]
    vla-ebt-convert ...   # the same, as a console script

One output shard per input TFRecord file, converted in parallel (multiprocessing, one input file
per task) with a tqdm progress bar over files. Resumable: finished shards are recorded in
``manifest.json`` (written atomically after each one) and skipped on the next run with the same
settings. Atomic: shards are written to a temp file and renamed. Bad input raises a
:class:`~data_pipelines.rlds.DataError` naming dataset, file, episode and field (exit code 2);
with ``--skip-bad`` bad episodes are skipped, counted, listed in the manifest and summarized.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from vla_ebt.data.oxe_configs import get_config

from .rlds import DataError, check_config, list_tfrecords, read_dataset_info, read_episodes, read_features
from .shards import FORMAT, ShardWriter, finalize, read_manifest, shard_name, write_manifest

__all__ = ["convert", "main"]


def _convert_file(task: tuple) -> dict[str, Any]:
    """Worker: one TFRecord file -> one shard. Returns counts and skipped-episode records."""
    dataset, src_file, index, out_dir, image_size, image_format, skip_bad = task
    cfg = get_config(dataset)
    name = shard_name(dataset, index)
    skipped: list[dict] = []
    with ShardWriter(Path(out_dir) / name, Path(out_dir) / "_stats" / f"{name}.npz") as w:
        for item in read_episodes(src_file, cfg, image_size, skip_bad=skip_bad, image_format=image_format):
            if isinstance(item, DataError):
                skipped.append(item.to_dict())
                continue
            w.write(item, f"{dataset}-{index:05d}-{item.record:06d}",
                    {"image_size": image_size, "control_hz": cfg.control_hz,
                     "action_encoding": cfg.action_encoding, "state_encoding": cfg.state_encoding})
    return {"name": name, "source": Path(src_file).name, "episodes": w.episodes, "steps": w.steps,
            "stats": f"_stats/{name}.npz", "skipped": skipped}


def convert(src: str | os.PathLike, dataset: str, out: str | os.PathLike, image_size: int = 224,
            workers: int | None = None, split: str = "train", skip_bad: bool = False, image_format: str = "jpg",
            progress: bool = True) -> dict[str, Any]:
    """Convert ``src`` (RLDS folder) to shards in ``out``; returns a summary dict
    (``converted``, ``resumed`` shard counts, ``episodes``, ``steps``, ``skipped``)."""
    cfg = get_config(dataset)  # KeyError listing known names
    if "." in dataset or "/" in dataset:
        raise ValueError(f"dataset name must not contain '.' or '/': {dataset!r}")
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"--src {src}: not a directory")
    info = read_dataset_info(src)
    if info.get("name") and info["name"] != dataset:
        print(f"[convert] note: dataset_info.json names {info['name']!r}; converting with config {dataset!r}",
              file=sys.stderr)
    feat_path = src / "features.json"
    if feat_path.exists():
        check_config(cfg, read_features(feat_path), str(feat_path))
    files = list_tfrecords(src, split)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):  # leftovers of an interrupted run (never read by loaders)
        stale.unlink()
    settings = {"dataset": dataset, "image_size": int(image_size), "image_format": image_format, "split": split,
                "src": str(src.resolve()), "skip_bad": bool(skip_bad)}
    manifest = read_manifest(out)
    if manifest is None or manifest.get("settings") != settings:
        if manifest is not None:
            print(f"[convert] {out}: settings changed ({manifest.get('settings')} -> {settings}); starting over",
                  file=sys.stderr)
        manifest = {"format": FORMAT, "dataset": dataset, "source": "rlds", "settings": settings,
                    "image_size": int(image_size), "image_format": image_format, "config": cfg.summary(),
                    "shards": {}, "skipped": [], "complete": False}
    tasks = []
    for i, f in enumerate(files):
        name = shard_name(dataset, i)
        done = manifest["shards"].get(name)
        if done and done.get("source") == f.name and (out / name).exists() and (out / done["stats"]).exists():
            continue
        manifest["shards"].pop(name, None)
        tasks.append((dataset, str(f), i, str(out), int(image_size), image_format, bool(skip_bad)))
    resumed = len(files) - len(tasks)
    manifest["complete"] = False
    write_manifest(out, manifest)
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks) or 1))
    bar = tqdm(total=len(files), initial=resumed, desc=f"convert {dataset}", unit="file", disable=not progress)

    def record(r: dict) -> None:
        skipped = r.pop("skipped")
        manifest["shards"][r.pop("name")] = r
        manifest["skipped"] = [s for s in manifest["skipped"] if Path(s["file"]).name != r["source"]] + skipped
        write_manifest(out, manifest)
        bar.update(1)
        bar.set_postfix(episodes=sum(s["episodes"] for s in manifest["shards"].values()),
                        skipped=len(manifest["skipped"]))

    try:
        if workers == 1:
            for t in tasks:
                record(_convert_file(t))
        else:
            with mp.get_context("spawn").Pool(workers) as pool:
                for r in pool.imap_unordered(_convert_file, tasks):
                    record(r)
    finally:
        bar.close()
    manifest["complete"] = True
    stats = finalize(out, manifest)
    summary = {"dataset": dataset, "out": str(out), "files": len(files), "converted": len(tasks), "resumed": resumed,
               "episodes": stats.num_episodes, "steps": stats.num_steps, "skipped": len(manifest["skipped"]),
               "action_dim": stats.action.dim, "state_dim": 0 if stats.state is None else stats.state.dim}
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vla-ebt-convert", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="RLDS dataset folder (dataset_info.json, features.json, *.tfrecord-*)")
    p.add_argument("--dataset", required=True, help="registered dataset config name (vla_ebt.data.oxe_configs)")
    p.add_argument("--out", required=True, help="output folder for shards, manifest.json and stats.json")
    p.add_argument("--image-size", type=int, default=224, help="square size images are resized to (default 224)")
    p.add_argument("--image-format", choices=("jpg", "png"), default="jpg")
    p.add_argument("--split", default="train")
    p.add_argument("--workers", type=int, default=None, help="parallel worker processes (default: CPU count)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad episodes instead of failing")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        s = convert(a.src, a.dataset, a.out, image_size=a.image_size, workers=a.workers, split=a.split,
                    skip_bad=a.skip_bad, image_format=a.image_format, progress=not a.no_progress)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
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
