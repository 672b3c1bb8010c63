"""Convert robot datasets to episode shards (schema: :mod:`data_pipelines.shards`): RLDS (Open
X-Embodiment, without TensorFlow), LeRobotDataset v2.x / v3.0 folders, robomimic-style HDF5 and npz demos.

::

    python -m data_pipelines.convert --src /data/bridge/0.1.0 --dataset bridge --out /data/shards/bridge \
        [--image-size 224] [--workers 4] [--split train] [--skip-bad] [--image-format jpg]
    python -m data_pipelines.convert --src /shared/bridge/0.1.0 --dataset bridge --out /shared/shards/bridge \
        --engine ray [--address auto]
    python -m data_pipelines.convert --format lerobot --src /data/koch_pick --dataset koch_pick --out OUT \
        [--action-key action] [--state-key observation.state] \
        [--camera-keys primary=observation.images.top,wrist=observation.images.wrist] [--instruction TEXT]
    python -m data_pipelines.convert --format hdf5 --src demos.hdf5 --dataset my_robot --out OUT \
        [--action-key actions] [--state-key obs/robot0_eef_pos,obs/robot0_gripper_qpos] \
        [--camera-keys primary=obs/agentview_image,wrist=obs/robot0_eye_in_hand_image] --instruction "lift the cube"
    python -m data_pipelines.convert --format npz --src episodes/ --dataset my_robot --out OUT [--instruction TEXT]
    vla-ebt-convert ...   # the same, as a console script

``--format rlds`` (default): one output shard per input TFRecord file. ``--dataset`` is a
registered config (:mod:`vla_ebt.data.oxe_configs`), checked against the folder's
``features.json``; where a dataset is served in more than one layout the registered layout that
fits is chosen (``--dataset bridge`` converts the OXE release's ``bridge`` and the
tensorflow-datasets catalog's ``bridge``, config ``bridge_tfds``). Any other RLDS dataset converts
with a key mapping instead of code (keys relative to ``steps/``, checked against ``features.json``;
on a registered config they replace its pieces)::

    python -m data_pipelines.convert --src /data/my_robot/1.0.0 --dataset my_robot --out OUT \
        --camera-keys primary=observation/image_0,wrist=observation/wrist_image \
        --state-key observation/state \
        --action-key "action[0:6],action[6:7]:invert" \
        --instruction-key language_instruction [--control-hz 10]

* ``--action-key`` / ``--state-key PART,..``: parts concatenated in order; a part is ``KEY``,
  ``KEY[a:b]`` (a slice of the flattened per-step vector) and/or ``KEY:GRIPPER`` with a gripper
  transform of :data:`~vla_ebt.data.oxe_configs.GRIPPER_TRANSFORMS` (to 1 = open, 0 = closed);
  defaults ``action`` / ``observation/state``; ``--state-key none``: no state;
* ``--camera-keys ROLE=KEY,..`` (default: the image features, wrist-like names -> ``wrist``);
* ``--instruction-key KEY``: per-step string (or zero-padded UTF-8 codes); default: the first of
  ``language_instruction``, ``observation/natural_language_instruction``,
  ``observation/instruction``; ``--instruction TEXT``: for episodes with an empty or no instruction.

Engines: ``--engine local`` (default: a multiprocessing pool of ``--workers`` processes on this
machine) or ``--engine ray [--address ADDR]``: the same per-unit work (one shard per task) as Ray
tasks, on a local Ray instance (no ``--address``; ``--workers`` CPUs) or on a running cluster
(``--address auto`` on a cluster node, or ``HOST:PORT``). Workers write shards straight into
``--out`` (which must be on storage every node sees), atomically; the driver merges the manifest
and ``stats.json``. The output equals the local engine's, byte for byte. A task lost with its node
is retried by Ray (up to 3 times); finished shards stay in the manifest, so rerunning the same
command after any failure converts only what is missing.

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

Parallel (one output shard per task, on either engine) with a tqdm progress bar. Resumable:
finished shards are recorded in ``manifest.json`` (written atomically after each one) and
skipped on the next run with the same settings. Atomic: shards are written to a temp file and
renamed. Bad input raises a :class:`~data_pipelines.rlds.DataError` naming dataset, file, episode
and field (exit code 2); with ``--skip-bad`` bad episodes are skipped, counted, listed in the
manifest and summarized. ``stats.json`` beside the shards holds the action/state statistics.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from tqdm import tqdm

from vla_ebt.data.oxe_configs import DatasetConfig, get_config, known_datasets, layout_candidates

from .rlds import (DataError, StdEpisode, check_config, choose_layout, list_tfrecords, mapped_config,
                   read_dataset_info, read_episodes, read_features)
from .shards import FORMAT, ShardWriter, finalize, read_manifest, shard_name, write_manifest
from .sources import SpecOptions, parse_camera_keys, parse_keys

__all__ = ["convert", "main", "FORMATS", "ENGINES", "RLDSSource", "open_source", "rlds_config"]

FORMATS = ("rlds", "lerobot", "hdf5", "npz")
ENGINES = ("local", "ray")
RAY_TASK_RETRIES = 3  # a task whose worker or node dies is re-run this many times


class RLDSSource:
    """RLDS TFRecord files of one split as a converter source: one unit (shard) per file."""

    format = "rlds"

    def __init__(self, cfg: DatasetConfig, files: Sequence[Path], instruction: str | None = None) -> None:
        self.cfg, self.dataset, self.files, self.instruction = cfg, cfg.name, list(files), instruction

    def units(self, episodes_per_shard: int = 0) -> list[tuple[str, str]]:
        return [(f.name, str(f)) for f in self.files]

    def read(self, path: str, image_size: int, image_format: str = "jpg",
             skip_bad: bool = False) -> Iterator[StdEpisode | DataError]:
        return read_episodes(path, self.cfg, image_size, skip_bad=skip_bad, image_format=image_format,
                             default_instruction=self.instruction)

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


def _convert_unit_ray(source: Any, rest: tuple) -> dict[str, Any]:
    """Ray task body: ``source`` arrives once per worker through the object store."""
    return _convert_unit((source, *rest))


def _as_keys(v: str | Sequence[str] | None) -> tuple[str, ...] | None:
    return parse_keys(v) if isinstance(v, str) or v is None else tuple(v)


def _as_cameras(v: str | Mapping[str, str] | None) -> dict[str, str] | None:
    return parse_camera_keys(v) if isinstance(v, str) or v is None else dict(v)


def rlds_config(src: str | os.PathLike, dataset: str, action_key: str | Sequence[str] | None = None,
                state_key: str | Sequence[str] | None = None, camera_keys: str | Mapping[str, str] | None = None,
                instruction_key: str | None = None, control_hz: float | None = None,
                instruction: str | None = None) -> tuple[DatasetConfig, str, dict[str, Any]]:
    """The config an RLDS folder ``src`` converts with: ``(config, layout, mapping)``.

    Without mapping options, ``dataset`` must be registered; with a ``features.json``, the
    registered layout that fits it is chosen (:func:`~data_pipelines.rlds.choose_layout`). With
    mapping options (``action_key`` .. ``control_hz``, see the module docstring), the config is
    built from them over ``dataset``'s registered layout (the first that fits afterwards) or from
    scratch for an unregistered ``dataset``, checked against ``features.json`` (required).
    ``layout``: the registered config used ("" for a mapping from scratch); ``mapping``: the
    options given (for the manifest). Raises :class:`DataError` naming features.json and the field."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"--src {src}: not a directory")
    feat_path = src / "features.json"
    mapping = {k: v for k, v in {"action_key": _as_keys(action_key), "state_key": _as_keys(state_key),
                                 "camera_keys": _as_cameras(camera_keys), "instruction_key": instruction_key,
                                 "control_hz": control_hz}.items() if v is not None}
    features = read_features(feat_path) if feat_path.exists() else None
    if not mapping:
        if dataset not in known_datasets():
            try:
                get_config(dataset)
            except ValueError as e:  # lists the known names
                raise ValueError(f"{e}; an unregistered RLDS dataset converts with a key mapping (--action-key, "
                                 f"--state-key, --camera-keys, --instruction-key)") from None
        if features is None:
            return get_config(dataset), dataset, {}
        cfg, layout = choose_layout(dataset, features, str(feat_path))
        return cfg, layout, {}
    if features is None:
        raise FileNotFoundError(f"{feat_path}: missing; a key mapping ({', '.join('--' + k.replace('_', '-') for k in mapping)}) "
                                f"is checked against the dataset's features.json")
    opts = dict(action=mapping.get("action_key"), state=mapping.get("state_key"), cameras=mapping.get("camera_keys"),
                instruction_key=instruction_key, control_hz=control_hz, fixed_instruction=bool(instruction))
    mapping = json.loads(json.dumps(mapping))  # as read back from manifest.json
    if dataset not in known_datasets():
        cfg = mapped_config(dataset, features, str(feat_path), **opts)
        check_config(cfg, features, str(feat_path))
        return cfg, "", mapping
    first: DataError | None = None
    for base in layout_candidates(dataset):
        try:
            cfg = mapped_config(dataset, features, str(feat_path), base=base, **opts)
            check_config(cfg, features, str(feat_path))
            return cfg, base.name, mapping
        except DataError as e:
            first = first or e
    assert first is not None
    raise first


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
            episodes_per_shard: int = 32, instruction_key: str | None = None, engine: str = "local",
            address: str | None = None) -> dict[str, Any]:
    """Convert ``src`` (format ``format``, see module docstring) to shards in ``out``; returns a
    summary dict (``converted``, ``resumed`` shard counts, ``episodes``, ``steps``, ``skipped``).
    ``engine``: ``"local"`` (multiprocessing, ``workers`` processes) or ``"ray"`` (Ray tasks on a
    local instance, or on the cluster at ``address``; an already initialized Ray connection is
    used as it is)."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; formats: {FORMATS}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; engines: {ENGINES}")
    if address is not None and engine != "ray":
        raise ValueError("--address is for --engine ray")
    if not dataset or "." in dataset or "/" in dataset or any(c.isspace() for c in dataset):
        raise ValueError(f"dataset name must be non-empty without '.', '/' or spaces: {dataset!r}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image format must be 'jpg' or 'png', got {image_format!r}")
    src, out = Path(src), Path(out)
    if format == "rlds":
        cfg, layout, mapping = rlds_config(src, dataset, action_key, state_key, camera_keys, instruction_key,
                                           control_hz, instruction)
        info = read_dataset_info(src)
        if info.get("name") and info["name"] != dataset:
            print(f"[convert] note: dataset_info.json names {info['name']!r}; converting with config {dataset!r}",
                  file=sys.stderr)
        if layout and layout != dataset:
            print(f"[convert] {dataset}: features.json matches the registered layout {layout!r}", file=sys.stderr)
        source: Any = RLDSSource(cfg, list_tfrecords(src, split), instruction)
        settings = {"dataset": dataset, "image_size": int(image_size), "image_format": image_format, "split": split,
                    "src": str(src.resolve()), "skip_bad": bool(skip_bad)}
        if layout and layout != dataset:
            settings["layout"] = layout
        if mapping:
            settings["mapping"] = mapping
        if instruction:
            settings["instruction"] = instruction
        config_summary = cfg.summary()
        extra = source.extra_meta(int(image_size))
    else:
        if instruction_key is not None:
            raise ValueError("--instruction-key is for --format rlds (lerobot/hdf5/npz read their own instruction "
                             "fields; --instruction sets a text)")
        source = open_source(format, src, dataset, action_key, state_key, camera_keys, instruction, control_hz)
        settings = {"format": format, "dataset": dataset, "image_size": int(image_size), "image_format": image_format,
                    "skip_bad": bool(skip_bad), "episodes_per_shard": int(episodes_per_shard), **source.identity()}
        config_summary = source.spec.summary()
        extra = source.spec.extra_meta(int(image_size), format)
    units = source.units(int(episodes_per_shard))
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob(".*.tmp"), *out.glob("_stats/.*.tmp")]:  # leftovers of an interrupted run
        stale.unlink(missing_ok=True)  # (never read by loaders)
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
    ray_workers = workers
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks) or 1))
    if engine == "ray":
        workers = ray_workers  # type: ignore[assignment]  # None: as many as the cluster schedules
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
        if engine == "ray":
            if tasks:
                _run_ray(tasks, record, address, workers)
        elif workers == 1:
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


def _run_ray(tasks: list[tuple], record, address: str | None, workers: int | None) -> None:
    """Run ``tasks`` (as for :func:`_convert_unit`) as Ray tasks and ``record`` each result on
    arrival. Connects to ``address`` (a running cluster: ``auto``, ``HOST:PORT``, ``ray://...``)
    or starts a local instance of ``workers`` CPUs (all CPUs when None) that is shut down at the
    end; an already initialized Ray connection is used as it is. ``workers`` also caps the tasks
    in flight. A task whose worker or node dies is retried (:data:`RAY_TASK_RETRIES`); a task that
    raises (bad data) is not: its exception is raised here, the tasks still in flight are cancelled,
    and the shards already recorded stay finished."""
    try:
        import ray
        from ray.exceptions import RayError, RayTaskError
    except ImportError as e:  # pragma: no cover - ray is a dependency
        raise RuntimeError(f"--engine ray needs the 'ray' package ({e}); pip install ray") from None
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING", "log_to_driver": True}
        if address is None:
            ray.init(address="local", num_cpus=workers, **kw)
        else:
            try:
                ray.init(address=address, **kw)
            except ConnectionError as e:
                hint = ("" if os.environ.get("RAY_AUTH_MODE") else
                        "; a head started where a token exists (~/.ray/auth_token) uses token authentication (Ray "
                        "2.60): set RAY_AUTH_MODE=token here, with the head's ~/.ray/auth_token copied to this "
                        "machine (or its content in RAY_AUTH_TOKEN)")
                raise ConnectionError(f"--address {address}: {e}{hint}") from None
        started = True
    elif address is not None:
        print(f"[convert] note: Ray is already initialized in this process; --address {address} is not used",
              file=sys.stderr)
    remote = ray.remote(num_cpus=1, max_retries=RAY_TASK_RETRIES, retry_exceptions=False)(_convert_unit_ray)
    source_ref = ray.put(tasks[0][0])  # one source object for every task
    todo = [t[1:] for t in tasks]
    limit = max(1, int(workers)) if workers else len(todo)
    pending: dict[Any, str] = {}
    try:
        while todo or pending:
            while todo and len(pending) < limit:
                rest = todo.pop(0)
                pending[remote.remote(source_ref, rest)] = rest[1]  # unit id, for errors
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                unit = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError as e:  # the task raised: re-raise its own exception (DataError, ...)
                    cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else None
                    if cause is not None:
                        raise cause from None
                    raise RuntimeError(f"ray task for {unit!r} failed: {e}") from None
                except RayError as e:  # worker / node lost after the retries, object lost, ...
                    raise RuntimeError(f"ray task for {unit!r} failed ({type(e).__name__}: {e}); finished shards "
                                       f"are kept in manifest.json: rerun the same command to convert the rest") from None
                record(result)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vla-ebt-convert", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", choices=FORMATS, default="rlds", help="source format (default rlds)")
    p.add_argument("--src", required=True, help="rlds: dataset folder (dataset_info.json, features.json, "
                   "*.tfrecord-*); lerobot: dataset root (meta/, data/, videos/); hdf5: a file or folder of them; "
                   "npz: a folder of per-episode .npz files (or one file)")
    p.add_argument("--dataset", required=True, help="a registered config name (vla_ebt.data.oxe_configs) or, "
                   "with a key mapping (--action-key ...), a new dataset name")
    p.add_argument("--out", required=True, help="output folder for shards, manifest.json and stats.json")
    p.add_argument("--image-size", type=int, default=224, help="square size images are resized to (default 224)")
    p.add_argument("--image-format", choices=("jpg", "png"), default="jpg")
    p.add_argument("--split", default="train", help="rlds only")
    p.add_argument("--workers", type=int, default=None, help="parallel worker processes (default: CPU count); "
                   "--engine ray: CPUs of the local Ray instance / most tasks in flight (default: all)")
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: multiprocessing on this machine (default); ray: Ray tasks (see --address)")
    p.add_argument("--address", default=None, help="--engine ray: a running cluster ('auto' on one of its nodes, "
                   "HOST:PORT, ray://HOST:PORT); default: start a local Ray instance")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad episodes instead of failing")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("key mapping (every format; rlds: keys relative to steps/, checked against features.json)")
    g.add_argument("--action-key", default=None, help="source key(s) of the action, comma separated (concatenated); "
                   "rlds: each KEY, KEY[a:b] and/or KEY:GRIPPER (gripper transform)")
    g.add_argument("--state-key", default=None, help="source key(s) of the state, comma separated (rlds: as "
                   "--action-key); 'none': no state")
    g.add_argument("--camera-keys", default=None,
                   help="[ROLE=]KEY,... with roles primary, secondary, wrist (in that order without ROLE=); 'none'")
    g.add_argument("--instruction-key", default=None, help="rlds: per-step instruction key (string, or UTF-8 codes)")
    g.add_argument("--instruction", default=None, help="instruction for episodes whose source has none (or an empty one)")
    g.add_argument("--control-hz", type=float, default=None, help="control frequency of the recorded data")
    g.add_argument("--episodes-per-shard", type=int, default=32,
                   help="lerobot/hdf5/npz: episodes per output shard (default 32)")
    a = p.parse_args(argv)
    try:
        s = convert(a.src, a.dataset, a.out, image_size=a.image_size, workers=a.workers, split=a.split,
                    skip_bad=a.skip_bad, image_format=a.image_format, progress=not a.no_progress, format=a.format,
                    action_key=a.action_key, state_key=a.state_key, camera_keys=a.camera_keys,
                    instruction=a.instruction, control_hz=a.control_hz, episodes_per_shard=a.episodes_per_shard,
                    instruction_key=a.instruction_key, engine=a.engine, address=a.address)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ConnectionError, RuntimeError) as e:  # --engine ray: cluster unreachable, task lost after retries
        print(f"error: {e}", file=sys.stderr)
        return 1
    see = " (listed in manifest.json 'skipped')" if s["skipped"] else ""
    print(f"[convert] {s['dataset']}: {s['episodes']} episodes, {s['steps']} steps in {s['files']} shard(s) "
          f"({s['converted']} converted, {s['resumed']} already done); skipped {s['skipped']} bad episode(s)"
          f"{see}; stats -> {Path(s['out']) / 'stats.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
