"""Read plain demonstration files into standardized episodes (:class:`~data_pipelines.rlds.StdEpisode`).

**HDF5, robomimic layout** (``--format hdf5``; ``--src`` is one ``.hdf5``/``.h5`` file or a folder of
them)::

    data/                       attrs: env_args (JSON; control_hz <- env_kwargs.control_freq),
                                       problem_info (JSON, LIBERO: language_instruction), instruction
      demo_0/                   attrs: num_samples, instruction / language_instruction (optional)
        actions                 (T, D)
        obs/<key>               (T, ...) low-dim arrays, or (T, H, W, 3) uint8 camera frames
      demo_1/ ...

Keys are paths relative to the demo group (``actions``, ``obs/robot0_eef_pos``; a bare obs key
like ``robot0_eef_pos`` is found too). Defaults: action <- ``actions``; state <- the first of
``obs/state``, ``obs/robot_state``, ``obs/proprio``, (``obs/robot0_eef_pos``,
``obs/robot0_eef_quat``, ``obs/robot0_gripper_qpos``), (``obs/ee_states``, ``obs/gripper_states``)
that exists; cameras <- every (T, H, W, 3) obs array (``*eye_in_hand*`` / ``*wrist*`` -> wrist,
others -> primary, secondary). Instruction <- the demo's attrs, then ``data``'s attrs
(``instruction``, ``language_instruction``, ``lang``, ``task``; LIBERO's ``problem_info``), then the
file's attrs, then ``--instruction``. Demos are read in natural order (demo_2 before demo_10).

**npz** (``--format npz``; ``--src`` is a folder of ``*.npz``, one episode per file, natural order,
or one file)::

    action        (T, D)            state   (T, S)
    images        (T, H, W, 3) uint8 -> primary    or    image_<role> (T, H, W, 3) per role
    instruction   0-d string array (optional when --instruction is given)

Images may also be (T, 3, H, W) or floats in [0, 1]. Object (pickled) arrays are refused.

Errors are :class:`~data_pipelines.rlds.DataError` naming file, episode (demo name / file stem)
and field: missing keys, per-step shape mismatches (vs the first demo / file), non-finite
actions or states, camera frame counts != action rows, ``num_samples`` != action rows, no
instruction.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from vla_ebt.data.oxe_configs import CAMERA_ROLES, DatasetConfig

from .rlds import DataError, StdEpisode
from .sources import SourceSpec, SpecOptions, assemble, assign_roles, chunks, encode_frames, natural_key, resolve_spec

__all__ = ["HDF5Source", "NpzSource"]

INSTRUCTION_KEYS = ("language_instruction", "instruction", "lang", "task", "language")
HDF5_DEFAULT_STATE = (("obs/state",), ("obs/robot_state",), ("obs/proprio",),
                      ("obs/robot0_eef_pos", "obs/robot0_eef_quat", "obs/robot0_gripper_qpos"),
                      ("obs/ee_states", "obs/gripper_states"))


def _is_image(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """Per-step shape / dtype of a camera array: (H, W, 3|1) or (3, H, W), uint8."""
    if np.dtype(dtype) != np.uint8 or len(shape) != 3:
        return False
    return shape[-1] in (1, 3) or shape[0] == 3


def _text(v: Any) -> str:
    if isinstance(v, np.ndarray):
        v = v.item() if v.size == 1 else (v.reshape(-1)[0] if v.size else "")
    if isinstance(v, (bytes, np.bytes_)):
        v = bytes(v).decode("utf-8", "replace")
    return str(v).strip() if isinstance(v, (str, np.str_)) else ""


def _images(spec: SourceSpec, role: str, key: str, arr: np.ndarray, T: int, file: str, episode: Any,
            image_size: int, image_format: str) -> list[bytes]:
    if arr.ndim < 3 or arr.shape[0] != T:
        n = arr.shape[0] if arr.ndim else 0
        raise DataError(spec.dataset, file, episode, key, f"camera ({role}) has {n} frames, action has {T} rows"
                        if arr.ndim >= 3 else f"camera ({role}): expected (T, H, W, 3) frames, got shape {arr.shape}")
    try:
        return encode_frames(arr, image_size, image_format)
    except ValueError as e:
        raise DataError(spec.dataset, file, episode, key, f"camera ({role}): {e}") from None


# ----------------------------------------------------------------------------- HDF5


def _walk(group, prefix: str = "") -> dict[str, Any]:
    import h5py

    out = {}
    for k, v in group.items():
        p = f"{prefix}{k}"
        if isinstance(v, h5py.Group):
            out.update(_walk(v, p + "/"))
        else:
            out[p] = v
    return out


def _json_attr(attrs, key: str) -> dict:
    try:
        v = json.loads(_text(attrs[key])) if key in attrs else {}
        return v if isinstance(v, dict) else {}
    except json.JSONDecodeError:
        return {}


class HDF5Source:
    """robomimic-style HDF5 demos as a converter source (see module docstring)."""

    format = "hdf5"

    def __init__(self, src: str | os.PathLike, dataset: str, options: SpecOptions | None = None,
                 config: DatasetConfig | None = None) -> None:
        import h5py

        self.src, self.dataset = Path(src), dataset
        if self.src.is_file():
            files = [self.src]
        elif self.src.is_dir():
            files = sorted((p for p in self.src.iterdir() if p.suffix in (".hdf5", ".h5")), key=lambda p: natural_key(p.name))
        else:
            raise FileNotFoundError(f"--src {self.src}: no such file or directory")
        if not files:
            raise FileNotFoundError(f"--src {self.src}: no *.hdf5 / *.h5 files")
        self.demos: list[tuple[str, list[str]]] = []
        first = None
        for f in files:
            try:
                h = h5py.File(f, "r")
            except OSError as e:
                raise DataError(dataset, str(f), None, "<file>", f"cannot open HDF5 ({e})") from None
            with h:
                if "data" not in h or not isinstance(h["data"], h5py.Group):
                    raise DataError(dataset, str(f), None, "data", "missing group (robomimic layout: data/demo_N/...)")
                names = sorted((k for k in h["data"] if isinstance(h["data"][k], h5py.Group)), key=natural_key)
                if not names:
                    raise DataError(dataset, str(f), None, "data", "no demo groups")
                self.demos.append((str(f), names))
                if first is None:
                    g = h["data"][names[0]]
                    ds = _walk(g)
                    available = {k: tuple(v.shape[1:]) for k, v in ds.items() if v.ndim >= 1}
                    image_keys = [k for k, v in ds.items() if v.ndim == 4 and _is_image(v.shape[1:], v.dtype)]
                    env = _json_attr(h["data"].attrs, "env_args")
                    hz = (env.get("env_kwargs") or {}).get("control_freq")
                    first = (str(f), names[0], available, image_keys, hz)
        assert first is not None
        where, demo0, available, image_keys, hz = first
        opts = options or SpecOptions()
        default_action = ("actions",) if "actions" in available else ("action",)
        self.spec: SourceSpec = resolve_spec(
            dataset, f"{where}:data/{demo0}", available, image_keys, opts, config, default_action=default_action,
            default_state=HDF5_DEFAULT_STATE, instruction_keys=INSTRUCTION_KEYS,
            control_hz=float(hz) if isinstance(hz, (int, float)) else None)

    def identity(self) -> dict:
        return {"src": str(self.src.resolve()), "spec": self.spec.summary()}

    def units(self, episodes_per_shard: int) -> list[tuple[str, tuple[str, list[tuple[int, str]]]]]:
        out = []
        for f, names in self.demos:
            for c in chunks(list(enumerate(names)), episodes_per_shard):
                out.append((f"{Path(f).name}:{c[0][1]}..{c[-1][1]}", (f, c)))
        return out

    def read(self, unit: tuple[str, list[tuple[int, str]]], image_size: int, image_format: str = "jpg",
             skip_bad: bool = False) -> Iterator[StdEpisode | DataError]:
        import h5py

        file, demos = unit
        with h5py.File(file, "r") as h:
            for i, demo in demos:
                try:
                    yield self._episode(h, file, i, demo, image_size, image_format)
                except DataError as e:
                    if not skip_bad:
                        raise
                    yield e

    def _instruction(self, h, g, file: str, demo: str) -> str:
        for attrs in (g.attrs, h["data"].attrs, h.attrs):
            for k in self.spec.instruction_keys:
                if k in attrs and _text(attrs[k]):
                    return _text(attrs[k])
            pi = _json_attr(attrs, "problem_info")
            if _text(pi.get("language_instruction", "")):
                return _text(pi["language_instruction"])
        if self.spec.instruction and self.spec.instruction.strip():
            return self.spec.instruction.strip()
        raise DataError(self.dataset, file, demo, "instruction",
                        f"no instruction attribute ({list(self.spec.instruction_keys)} or problem_info) on the demo, "
                        f"'data' or the file; pass --instruction")

    def _episode(self, h, file: str, index: int, demo: str, image_size: int, image_format: str) -> StdEpisode:
        import h5py

        spec = self.spec
        g = h["data"][demo]

        def node(key: str):
            if key not in g or not isinstance(g[key], h5py.Dataset):
                have = sorted(_walk(g))
                raise DataError(self.dataset, file, demo, key, f"missing key (demo has {have})")
            return g[key]

        first = node(spec.action[0].key)
        if first.ndim == 0:
            raise DataError(self.dataset, file, demo, spec.action[0].key, "shape mismatch: a scalar, expected (T, ...)")
        T = int(first.shape[0])
        if T == 0:
            raise DataError(self.dataset, file, demo, spec.action[0].key, "episode has 0 steps")
        ns = g.attrs.get("num_samples")
        if ns is not None and int(ns) != T:
            raise DataError(self.dataset, file, demo, "num_samples", f"attribute says {int(ns)}, action has {T} rows")
        action = assemble(spec, spec.action, lambda k: node(k)[()], T, "action", file, demo)
        state = assemble(spec, spec.state, lambda k: node(k)[()], T, "state", file, demo)
        instruction = self._instruction(h, g, file, demo)
        images = {role: _images(spec, role, key, node(key)[()], T, file, demo, image_size, image_format)
                  for role, (key, _) in spec.cameras.items()}
        return StdEpisode(dataset=self.dataset, episode_id=f"{Path(file).name}:{demo}", source_file=file,
                          record=index, file_path=f"data/{demo}", instruction=instruction, state=state,
                          action=action, images=images, image_format=image_format)


# ----------------------------------------------------------------------------- npz


class NpzSource:
    """One ``.npz`` per episode as a converter source (see module docstring)."""

    format = "npz"

    def __init__(self, src: str | os.PathLike, dataset: str, options: SpecOptions | None = None,
                 config: DatasetConfig | None = None) -> None:
        self.src, self.dataset = Path(src), dataset
        if self.src.is_file():
            self.files = [str(self.src)]
        elif self.src.is_dir():
            self.files = [str(p) for p in sorted(self.src.glob("*.npz"), key=lambda p: natural_key(p.name))]
        else:
            raise FileNotFoundError(f"--src {self.src}: no such file or directory")
        if not self.files:
            raise FileNotFoundError(f"--src {self.src}: no *.npz files")
        first = self.files[0]
        z = self._load(first, Path(first).stem)
        available = {k: tuple(v.shape[1:]) for k, v in z.items() if v.ndim >= 1}
        image_keys = [k for k, v in z.items() if v.ndim == 4 and (_is_image(v.shape[1:], v.dtype) or
                                                                   k == "images" or k.startswith("image_"))]
        opts = options or SpecOptions()

        def default_cameras() -> dict[str, str]:
            roles = {k[len("image_"):]: k for k in image_keys if k.startswith("image_")}
            if "images" in image_keys and "primary" not in roles:
                roles = {"primary": "images", **roles}
            if roles and all(r in CAMERA_ROLES for r in roles):
                return roles
            return assign_roles(image_keys)

        self.spec: SourceSpec = resolve_spec(
            dataset, first, available, image_keys, opts, config,
            default_action=("action",) if "action" in available or "actions" not in available else ("actions",),
            default_state=(("state",), ("states",), ("proprio",)), default_cameras=default_cameras,
            instruction_keys=INSTRUCTION_KEYS)

    def _load(self, path: str, episode: str) -> dict[str, np.ndarray]:
        try:
            with np.load(path, allow_pickle=False) as z:
                out = {}
                for k in z.files:
                    try:
                        out[k] = z[k]
                    except ValueError as e:
                        raise DataError(self.dataset, path, episode, k,
                                        f"cannot load array ({e}); object arrays are not supported") from None
                return out
        except DataError:
            raise
        except (OSError, ValueError) as e:
            raise DataError(self.dataset, path, episode, "<file>", f"cannot read npz ({e})") from None

    def identity(self) -> dict:
        return {"src": str(self.src.resolve()), "spec": self.spec.summary()}

    def units(self, episodes_per_shard: int) -> list[tuple[str, list[tuple[int, str]]]]:
        return [(f"{Path(c[0][1]).name}..{Path(c[-1][1]).name}", c)
                for c in chunks(list(enumerate(self.files)), episodes_per_shard)]

    def read(self, unit: list[tuple[int, str]], image_size: int, image_format: str = "jpg",
             skip_bad: bool = False) -> Iterator[StdEpisode | DataError]:
        for i, f in unit:
            try:
                yield self._episode(i, f, image_size, image_format)
            except DataError as e:
                if not skip_bad:
                    raise
                yield e

    def _episode(self, index: int, file: str, image_size: int, image_format: str) -> StdEpisode:
        spec, ep = self.spec, Path(file).stem
        z = self._load(file, ep)

        def get(key: str) -> np.ndarray:
            if key not in z:
                raise DataError(self.dataset, file, ep, key, f"missing array (file has {sorted(z)})")
            return z[key]

        a0 = get(spec.action[0].key)
        if a0.ndim == 0 or a0.shape[0] == 0:
            raise DataError(self.dataset, file, ep, spec.action[0].key, f"expected (T, ...) with T > 0, got {a0.shape}")
        T = int(a0.shape[0])
        action = assemble(spec, spec.action, get, T, "action", file, ep)
        state = assemble(spec, spec.state, get, T, "state", file, ep)
        instruction = next((_text(z[k]) for k in spec.instruction_keys if k in z and _text(z[k])), "")
        if not instruction:
            instruction = (spec.instruction or "").strip()
        if not instruction:
            raise DataError(self.dataset, file, ep, "instruction",
                            f"no instruction array ({list(spec.instruction_keys)}) and no --instruction")
        images = {role: _images(spec, role, key, get(key), T, file, ep, image_size, image_format)
                  for role, (key, _) in spec.cameras.items()}
        return StdEpisode(dataset=self.dataset, episode_id=Path(file).name, source_file=file, record=index,
                          file_path=Path(file).name, instruction=instruction, state=state, action=action,
                          images=images, image_format=image_format)
