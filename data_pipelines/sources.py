"""Shared pieces of the non-RLDS importers (:mod:`data_pipelines.lerobot`,
:mod:`data_pipelines.hdf5_npz`): which source keys become the standardized action / state / camera
roles / instruction (:class:`SourceSpec`), how that is resolved against what a source holds, and
the per-episode assembly into a :class:`~data_pipelines.rlds.StdEpisode`.

A spec comes either from a registered :class:`~vla_ebt.data.oxe_configs.DatasetConfig` (its
``Part`` keys, slices, gripper transforms, camera roles and control frequency; keys are looked up
in the source's own namespace, trying ``a/b``, then ``a.b`` (LeRobot), ``obs/b`` (robomimic) and
the last path component) or from command-line options (``--action-key``, ``--state-key``,
``--camera-keys``, ``--instruction``), which override the registered config's pieces. Per-step
shapes are taken from the source's metadata (LeRobot ``meta/info.json``; the first HDF5 demo; the
first npz file) and every episode must match them.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from vla_ebt.data.oxe_configs import CAMERA_ROLES, GRIPPER_TRANSFORMS, DatasetConfig, Part, apply_gripper

from .rlds import DataError, encode_image, resize_image

__all__ = ["SourceSpec", "SpecOptions", "resolve_spec", "assign_roles", "parse_camera_keys", "parse_keys",
           "parse_part", "assemble", "encode_frames", "natural_key", "chunks"]

WRIST_HINTS = ("wrist", "hand", "gripper", "eye_in_hand")


@dataclass(frozen=True)
class SpecOptions:
    """What the user asked for (CLI options); None = the registered config's / the format's default.

    action_keys / state_keys: concatenated in order (``state_keys=()``: no state).
    cameras: role -> source key (``{}``: no cameras).
    instruction: used for episodes whose source carries no instruction.
    """

    action_keys: tuple[str, ...] | None = None
    state_keys: tuple[str, ...] | None = None
    cameras: dict[str, str] | None = None
    instruction: str | None = None
    control_hz: float | None = None


@dataclass(frozen=True)
class SourceSpec:
    """Resolved spec: concrete source keys with their per-step shapes."""

    dataset: str
    action: tuple[Part, ...]
    state: tuple[Part, ...]
    cameras: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)  # role -> (key, (H, W, C))
    instruction: str | None = None
    instruction_keys: tuple[str, ...] = ()
    control_hz: float | None = None
    action_encoding: str = "unspecified"
    state_encoding: str = "unspecified"
    config: str | None = None  # registered config name, if one was used

    @property
    def action_dim(self) -> int:
        return sum(p.dim for p in self.action)

    @property
    def state_dim(self) -> int:
        return sum(p.dim for p in self.state)

    def summary(self) -> dict:
        d = asdict(self)
        d["action_dim"], d["state_dim"] = self.action_dim, self.state_dim
        return json.loads(json.dumps(d))  # JSON types (lists), as read back from manifest.json

    def extra_meta(self, image_size: int, source_format: str) -> dict[str, Any]:
        return {"image_size": image_size, "control_hz": self.control_hz, "action_encoding": self.action_encoding,
                "state_encoding": self.state_encoding, "source_format": source_format}


def parse_keys(text: str | None) -> tuple[str, ...] | None:
    """``"a,b"`` -> ("a", "b"); ``"none"`` / ``""`` -> (); None -> None (default)."""
    if text is None:
        return None
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(k.strip() for k in text.split(",") if k.strip())


_PART_RE = re.compile(r"^(?P<key>[^\[\]:\s]+?)(?:\[(?P<a>-?\d*):(?P<b>-?\d*)\])?(?::(?P<g>[A-Za-z0-9_]+))?$")


def parse_part(text: str) -> tuple[str, tuple[int | None, int | None] | None, str]:
    """One part of a ``--action-key`` / ``--state-key`` list (RLDS): ``KEY``, ``KEY[a:b]`` (a slice of
    the flattened per-step vector), ``KEY:GRIPPER`` or ``KEY[a:b]:GRIPPER`` (a gripper transform of
    :data:`~vla_ebt.data.oxe_configs.GRIPPER_TRANSFORMS`) -> (key, (a, b) or None, transform).
    ValueError for anything else."""
    m = _PART_RE.match(text.strip())
    if not m:
        raise ValueError(f"cannot parse key {text!r}: expected KEY, KEY[start:stop], KEY:GRIPPER or "
                         f"KEY[start:stop]:GRIPPER")
    g = m.group("g") or "none"
    if g not in GRIPPER_TRANSFORMS:
        raise ValueError(f"key {text!r}: unknown gripper transform {g!r}; known: {GRIPPER_TRANSFORMS}")
    sl = None
    if m.group("a") is not None:
        sl = tuple(int(v) if v not in ("", "-") else None for v in (m.group("a"), m.group("b")))
    return m.group("key"), sl, g  # type: ignore[return-value]


def parse_camera_keys(text: str | None) -> dict[str, str] | None:
    """``"primary=cam_high,wrist=cam_wrist"`` or ``"cam_high,cam_wrist"`` (roles in the order
    primary, secondary, wrist); ``"none"``: no cameras; None: default."""
    keys = parse_keys(text)
    if keys is None:
        return None
    out: dict[str, str] = {}
    free = list(CAMERA_ROLES)
    for item in keys:
        if "=" in item:
            role, key = (s.strip() for s in item.split("=", 1))
            if role not in CAMERA_ROLES:
                raise ValueError(f"--camera-keys: unknown role {role!r} in {item!r}; roles: {CAMERA_ROLES}")
        else:
            if not free:
                raise ValueError(f"--camera-keys: more than {len(CAMERA_ROLES)} cameras in {text!r}")
            role, key = free[0], item
        if role in out:
            raise ValueError(f"--camera-keys: role {role!r} given twice in {text!r}")
        out[role] = key
        if role in free:
            free.remove(role)
    return out


def assign_roles(keys: Sequence[str]) -> dict[str, str]:
    """Default camera roles: a key naming a wrist / hand / gripper camera -> ``wrist``; the others
    -> ``primary``, ``secondary`` in the given order. ValueError when they don't fit."""
    wrist = [k for k in keys if any(h in k.lower() for h in WRIST_HINTS)]
    other = [k for k in keys if k not in wrist]
    if len(wrist) > 1 or len(other) > 2:
        raise ValueError(f"cannot assign camera roles to {list(keys)} automatically (at most 2 scene cameras and 1 "
                         f"wrist camera); choose with --camera-keys primary=KEY,wrist=KEY")
    out = dict(zip(("primary", "secondary"), other))
    if wrist:
        out["wrist"] = wrist[0]
    return out


def key_candidates(key: str) -> list[str]:
    """Spellings of a (registered-config) key to look up in a source, first match wins."""
    c = [key, key.replace("/", "."), key.replace(".", "/"), "obs/" + key]
    for pre in ("observation/", "observation."):
        if key.startswith(pre):
            c.append("obs/" + key[len(pre):])
    c.append(re.split(r"[/.]", key)[-1])
    return list(dict.fromkeys(c))


def _find(key: str, available: Mapping[str, Any]) -> str | None:
    return next((k for k in key_candidates(key) if k in available), None)


def resolve_spec(dataset: str, where: str, available: Mapping[str, tuple[int, ...]], image_keys: Sequence[str],
                 options: SpecOptions, config: DatasetConfig | None, default_action: Sequence[str],
                 default_state: Sequence[Sequence[str]], default_cameras: Callable[[], dict[str, str]] | None = None,
                 instruction_keys: Sequence[str] = (), control_hz: float | None = None) -> SourceSpec:
    """Resolve keys against ``available`` (source key -> per-step shape) and return a spec with
    concrete shapes. ``image_keys``: the available keys that hold images (for default camera roles
    and checks). ``default_state``: alternatives, the first whose keys all exist wins. Raises
    :class:`DataError` (episode ``-``) naming the field for a missing key or a shape mismatch."""
    near = sorted(available)

    def missing(key: str, what: str, hint: str = "") -> DataError:
        return DataError(dataset, where, None, key, f"missing {what} key (source has {near}){hint}")

    def parts(keys: Sequence[str] | None, cfg_parts: Sequence[Part], what: str) -> tuple[Part, ...]:
        if keys is not None:  # user keys: shapes from the source
            out = []
            for k in keys:
                found = k if k in available else _find(k, available)
                if found is None:
                    raise missing(k, what)
                out.append(Part(found, tuple(available[found])))
            return tuple(out)
        out = []
        for p in cfg_parts:  # registered config: its shapes must match the source's
            found = _find(p.key, available)
            if found is None:
                raise missing(p.key, what, f" (registered config {config.name!r})")  # type: ignore[union-attr]
            have = tuple(available[found])
            if int(np.prod(have)) != p.size:
                raise DataError(dataset, where, None, found, f"shape mismatch: registered config {config.name!r} "
                                                             f"expects per-step shape {p.shape}, source has {have}")
            out.append(replace(p, key=found, shape=have))
        return tuple(out)

    if options.action_keys is None and config is None:
        action_keys: Sequence[str] | None = default_action
    else:
        action_keys = options.action_keys
    action = parts(action_keys, config.action if config else (), "action")
    if not action:
        raise DataError(dataset, where, None, "action", "no action key given")
    if options.state_keys is None and config is None:
        for alt in default_state:
            if all(k in available for k in alt):
                state_keys: Sequence[str] | None = alt
                break
        else:
            raise DataError(dataset, where, None, "state",
                            f"none of the default state keys {[list(a) for a in default_state]} found (source has "
                            f"{near}); pass --state-key KEY[,KEY...] or --state-key none")
    else:
        state_keys = options.state_keys
    state = parts(state_keys, config.state if config else (), "state")

    cameras: dict[str, tuple[str, tuple[int, ...]]] = {}
    if options.cameras is not None:
        wanted = dict(options.cameras)
    elif config is not None:
        wanted = {r: config.cameras[r][0] for r in config.camera_roles()}  # type: ignore[index]
    else:
        try:
            wanted = default_cameras() if default_cameras else assign_roles(list(image_keys))
        except ValueError as e:
            raise DataError(dataset, where, None, "cameras", str(e)) from None
    for role, key in wanted.items():
        found = key if key in available else _find(key, available)
        if found is None:
            raise missing(key, f"camera ({role})")
        if found not in image_keys:
            raise DataError(dataset, where, None, found,
                            f"camera ({role}) key is not an image feature: per-step shape {tuple(available[found])}; "
                            f"image keys: {sorted(image_keys)}")
        cameras[role] = (found, tuple(available[found]))
    cameras = {r: cameras[r] for r in CAMERA_ROLES if r in cameras}

    ikeys = tuple(dict.fromkeys(([config.language_key] if config else []) + list(instruction_keys)))
    hz = options.control_hz if options.control_hz is not None else (config.control_hz if config else control_hz)
    return SourceSpec(dataset=dataset, action=action, state=state, cameras=cameras, instruction=options.instruction,
                      instruction_keys=ikeys, control_hz=None if hz is None else float(hz),
                      action_encoding=config.action_encoding if config else "unspecified",
                      state_encoding=config.state_encoding if config else "unspecified",
                      config=config.name if config else None)


def assemble(spec: SourceSpec, parts: Sequence[Part], get: Callable[[str], np.ndarray], T: int, what: str,
             file: str, episode: Any) -> np.ndarray:
    """(T, dim) float32 from ``parts``; ``get(key)`` returns the raw (T, ...) array (or raises a
    DataError). Checks row count, per-step shape and finiteness; applies slices and gripper
    transforms."""
    cols = [np.zeros((T, 0), np.float32)]
    for p in parts:
        x = np.asarray(get(p.key))
        if x.dtype.kind not in "biuf":
            raise DataError(spec.dataset, file, episode, p.key, f"expected numbers, got dtype {x.dtype}")
        if x.ndim == 0 or x.shape[0] != T:
            raise DataError(spec.dataset, file, episode, p.key, f"shape mismatch: {x.shape[0] if x.ndim else 0} rows, "
                                                                 f"expected {T} (one per step)")
        got = tuple(x.shape[1:])
        if got != tuple(p.shape) and not (len(got) <= 1 and len(p.shape) <= 1 and int(np.prod(got)) == p.size == 1):
            raise DataError(spec.dataset, file, episode, p.key,
                            f"shape mismatch: per-step shape {got}, expected {tuple(p.shape)}")
        x = x.reshape(T, p.size).astype(np.float32)
        if p.take is not None:
            x = x[:, p.take[0]:p.take[1]]
        if not np.isfinite(x).all():
            t, d = np.argwhere(~np.isfinite(x))[0]
            raise DataError(spec.dataset, file, episode, p.key, f"non-finite {what} value {x[t, d]} at step {t}, dim {d}")
        cols.append(apply_gripper(x, p.gripper))
    return np.concatenate(cols, axis=1).astype(np.float32)


def to_rgb_uint8(a: np.ndarray, chw: bool | None = None) -> np.ndarray:
    """One frame -> (H, W, 3) uint8. Accepts (H, W, 3|1), (H, W), (3|1, H, W); uint8, or floats in
    [0, 1]. ValueError otherwise."""
    a = np.asarray(a)
    if a.ndim == 3 and (chw or (chw is None and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3))):
        a = a.transpose(1, 2, 0)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise ValueError(f"expected an (H, W, 3) image, got shape {a.shape}")
    if a.dtype == np.uint8:
        pass
    elif a.dtype.kind == "f":
        if not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            raise ValueError(f"float images must lie in [0, 1] (got {a.dtype} in [{np.nanmin(a)}, {np.nanmax(a)}])")
        a = np.round(a * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"expected uint8 images (or floats in [0, 1]), got dtype {a.dtype}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return a


def encode_frames(frames: Iterable[Any], image_size: int, image_format: str) -> list[bytes]:
    """Frames (arrays as :func:`to_rgb_uint8` accepts, or PIL images) -> resized, encoded bytes."""
    out = []
    for f in frames:
        img = f.convert("RGB") if isinstance(f, Image.Image) else Image.fromarray(to_rgb_uint8(f))
        out.append(encode_image(resize_image(img, image_size), image_format))
    return out


def decode_image_bytes(b: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(b))
    img.load()
    return img


def natural_key(s: str) -> list:
    """Sort key: ``demo_2`` before ``demo_10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def chunks(items: Sequence[Any], n: int) -> list[list[Any]]:
    n = max(1, int(n))
    return [list(items[i:i + n]) for i in range(0, len(items), n)]
