"""Read RLDS (TFDS) datasets as published by Open X-Embodiment, without TensorFlow.

A dataset folder holds ``dataset_info.json``, ``features.json`` and
``<name>-<split>.tfrecord-NNNNN-of-MMMMM`` files; each record is one episode serialized as a
``tf.train.Example`` whose keys flatten the nested features: ``steps/observation/image`` (one
encoded image per step, bytes_list), ``steps/action`` (float_list of T * prod(shape) values),
``steps/is_first`` (int64_list), ``episode_metadata/file_path`` (bytes_list of 1), ...

:func:`read_features` flattens ``features.json`` into ``{flat key: FeatureSpec}``;
:func:`check_config` verifies that a :class:`~vla_ebt.data.oxe_configs.DatasetConfig` matches it;
:func:`choose_layout` picks, among a dataset's registered layouts (``bridge`` / ``bridge_tfds``),
the one that matches it; :func:`mapped_config` builds a config from a key mapping (command-line
``--action-key`` / ``--state-key`` / ``--camera-keys`` / ``--instruction-key``) checked against it;
:func:`read_episodes` yields standardized :class:`StdEpisode` objects (state/action float32 per
step, instruction, images resized and JPEG/PNG encoded). Every failure is a :class:`DataError`
naming dataset, file, episode and field.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from vla_ebt.data.oxe_configs import DatasetConfig, Part, apply_gripper, layout_candidates

from .tfrecord import RecordError, feature_values, iter_records, parse_example

__all__ = ["DataError", "FeatureSpec", "StdEpisode", "read_features", "check_config", "config_problems",
           "choose_layout", "mapped_config", "INSTRUCTION_KEYS", "list_tfrecords", "read_dataset_info",
           "read_episodes", "encode_image", "resize_image"]


class DataError(ValueError):
    """Bad input data; the message names dataset, file, episode and field."""

    def __init__(self, dataset: str, file: str, episode: int | str | None, field: str, problem: str) -> None:
        self.dataset, self.file, self.episode, self.field, self.problem = dataset, str(file), episode, field, problem
        ep = "-" if episode is None else episode
        super().__init__(f"dataset {dataset!r}, file {self.file!r}, episode {ep}, field {field!r}: {problem}")

    def __reduce__(self):  # picklable (worker processes, Ray tasks) with its fields
        return (type(self), (self.dataset, self.file, self.episode, self.field, self.problem))

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "file": self.file, "episode": self.episode, "field": self.field,
                "problem": self.problem}


@dataclass(frozen=True)
class FeatureSpec:
    shape: tuple[int, ...]  # per step (for steps/...) or per episode; -1 / None dims kept as -1
    dtype: str
    kind: str  # "tensor", "image", "text", "scalar"
    encoding: str = ""


@dataclass
class StdEpisode:
    """One standardized episode (rows = steps).

    images: role -> list of T encoded images (JPEG or PNG bytes, ``image_size`` square).
    """

    dataset: str
    episode_id: str
    source_file: str
    record: int
    file_path: str
    instruction: str
    state: np.ndarray
    action: np.ndarray
    images: dict[str, list[bytes]] = field(default_factory=dict)
    image_format: str = "jpg"

    def __len__(self) -> int:
        return int(self.action.shape[0])


# ----------------------------------------------------------------------------- features.json


def _walk_features(node: dict, prefix: str, out: dict[str, FeatureSpec]) -> None:
    if "featuresDict" in node:
        for k, v in node["featuresDict"].get("features", {}).items():
            _walk_features(v, f"{prefix}/{k}" if prefix else k, out)
        return
    if "sequence" in node:  # tfds Dataset / Sequence: children are per step
        _walk_features(node["sequence"]["feature"], prefix, out)
        return
    cls = node.get("pythonClassName", "")
    for kind in ("tensor", "image"):
        if kind in node:
            t = node[kind]
            dims = tuple(int(d) for d in t.get("shape", {}).get("dimensions", []))
            enc = t.get("encodingFormat", t.get("encoding", ""))
            out[prefix] = FeatureSpec(dims, t.get("dtype", ""), kind if kind == "image" else
                                      ("scalar" if not dims else "tensor"), enc)
            return
    if "text" in node or cls.endswith("Text"):
        out[prefix] = FeatureSpec((), "string", "text")
        return
    out[prefix] = FeatureSpec((), node.get("dtype", ""), "unknown")


def read_features(path: str | os.PathLike) -> dict[str, FeatureSpec]:
    """Flatten a TFDS ``features.json`` to ``{"steps/observation/image": FeatureSpec, ...}``."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read features.json ({e})") from None
    out: dict[str, FeatureSpec] = {}
    _walk_features(raw, "", out)
    return out


def read_dataset_info(src: str | os.PathLike) -> dict:
    p = Path(src) / "dataset_info.json"
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None


def config_problems(cfg: DatasetConfig, features: dict[str, FeatureSpec]) -> list[tuple[str, str]]:
    """``(field, problem)`` for every key ``cfg`` reads that ``features`` lacks or publishes with
    another per-step shape / kind; empty when the config fits."""
    out: list[tuple[str, str]] = []
    for key, (shape, kind) in cfg.required_step_keys().items():
        spec = features.get(key)
        if spec is None:
            near = sorted(k for k in features if k.startswith("steps/"))
            out.append((key, f"missing from features.json; it has {near}"))
        elif kind == "string":
            if spec.kind not in ("text", "scalar", "tensor") or spec.shape not in ((),):
                out.append((key, f"expected a per-step string, features.json has {spec}"))
        elif kind == "image" and spec.kind != "image":
            out.append((key, f"expected an image, features.json has {spec}"))
        elif spec.shape != tuple(shape):
            out.append((key, f"expected per-step shape {tuple(shape)}, features.json has {spec.shape}"))
    return out


def check_config(cfg: DatasetConfig, features: dict[str, FeatureSpec], where: str) -> None:
    """Every key the config reads exists in ``features`` with the configured per-step shape
    (:class:`DataError` naming the file, the field and what was expected otherwise)."""
    problems = config_problems(cfg, features)
    if problems:
        raise DataError(cfg.name, where, None, *problems[0])


def choose_layout(name: str, features: dict[str, FeatureSpec], where: str) -> tuple[DatasetConfig, str]:
    """The registered layout of dataset ``name`` that ``features`` matches: ``name``'s own config or
    one of its variants (:func:`~vla_ebt.data.oxe_configs.layout_candidates`), tried in that order.
    Returns ``(config, layout)``: the config carries the name ``name`` (shards, statistics and
    embodiment stay ``name`` whichever layout was served), ``layout`` is the registered config's
    name. When none fits, :class:`DataError` names the first problem of ``name``'s own layout and
    of each variant."""
    fits = []
    for cand in layout_candidates(name):
        problems = config_problems(cand, features)
        if not problems:
            cfg = cand if cand.name == name else dataclasses.replace(cand, name=name)
            return cfg, cand.name
        fits.append((cand, problems[0]))
    (_, (key, problem)), others = fits[0], fits[1:]
    if others:
        problem += "; nor does any other registered layout of {!r} fit: {}".format(
            name, "; ".join(f"{c.name!r}: field {k!r} {p.split('; it has ')[0]}" for c, (k, p) in others))
    raise DataError(name, where, None, key, problem)


INSTRUCTION_KEYS = ("language_instruction", "observation/natural_language_instruction", "observation/instruction",
                    "natural_language_instruction")
"""Step keys (relative to ``steps/``) tried for the instruction when a mapping names none."""


def _strip_steps(key: str) -> str:
    return key[len("steps/"):] if key.startswith("steps/") else key


def mapped_config(name: str, features: dict[str, FeatureSpec], where: str, base: DatasetConfig | None = None,
                  action: Sequence[str] | None = None, state: Sequence[str] | None = None,
                  cameras: Mapping[str, str] | None = None, instruction_key: str | None = None,
                  control_hz: float | None = None, fixed_instruction: bool = False) -> DatasetConfig:
    """A config from a key mapping, checked against ``features`` (flattened ``features.json`` at
    ``where``). Keys are relative to ``steps/`` (a leading ``steps/`` is dropped).

    action / state: parts concatenated in order, each ``KEY``, ``KEY[a:b]`` (slice of the flattened
        per-step vector) and/or ``KEY...:GRIPPER`` (:func:`~data_pipelines.sources.parse_part`);
        ``state=()``: no state.
    cameras: role -> image key (``{}``: no cameras).
    instruction_key: per-step string (or zero-padded UTF-8 int codes, as language_table) key.
    fixed_instruction: a fixed instruction text is given, so no instruction key is needed.

    A ``None`` piece comes from ``base`` (a registered config) or, without one, from defaults:
    ``action``, ``observation/state``, the image keys by :func:`~data_pipelines.sources.assign_roles`
    and the first of :data:`INSTRUCTION_KEYS` present. Shapes come from ``features``; any key that
    is missing or of the wrong kind raises :class:`DataError` naming ``where``, the field and what
    was expected."""
    from .sources import assign_roles, parse_part  # sources imports this module

    steps = {k[len("steps/"):]: v for k, v in features.items() if k.startswith("steps/")}
    numeric = sorted(k for k, v in steps.items() if v.kind in ("tensor", "scalar") and v.dtype != "string")
    images = sorted(k for k, v in steps.items() if v.kind == "image")

    def fail(key: str, problem: str) -> DataError:
        return DataError(name, where, None, key if key.startswith(("steps/", "episode_metadata/")) else f"steps/{key}",
                         problem)

    def parts(texts: Sequence[str], what: str) -> tuple[Part, ...]:
        out = []
        for text in texts:
            try:
                key, sl, grip = parse_part(text)
            except ValueError as e:
                raise DataError(name, where, None, text, f"{what} key: {e}") from None
            key = _strip_steps(key)
            spec = steps.get(key)
            if spec is None:
                raise fail(key, f"{what} key missing from features.json; numeric step keys: {numeric}")
            if key not in numeric:
                raise fail(key, f"{what} key must be a numeric per-step tensor, features.json has {spec}")
            if any(d < 0 for d in spec.shape):
                raise fail(key, f"{what} key has a variable per-step shape {spec.shape} in features.json")
            size = int(np.prod(spec.shape)) if spec.shape else 1
            take = None
            if sl is not None:
                a, b, step = slice(*sl).indices(size)
                if b <= a:
                    raise fail(key, f"{what} key: empty slice {text!r} of a per-step vector of {size} values "
                                    f"(features.json shape {spec.shape})")
                take = None if (a, b) == (0, size) else (a, b)
            out.append(Part(key, tuple(spec.shape), take, grip))
        return tuple(out)

    if action is not None:
        act = parts(action, "action")
    elif base is not None:
        act = base.action
    elif "action" in steps:
        act = parts(["action"], "action")
    else:
        raise fail("action", f"no --action-key given and features.json has no steps/action; numeric step keys: "
                             f"{numeric}")
    if not act:
        raise fail("action", "no action key given")
    if state is not None:
        st = parts(state, "state")
    elif base is not None:
        st = base.state
    elif "observation/state" in steps:
        st = parts(["observation/state"], "state")
    else:
        raise fail("observation/state", "no --state-key given and features.json has no steps/observation/state; "
                                        f"pass --state-key KEY[,KEY..] (numeric step keys: {numeric}) or --state-key none")

    cams: dict[str, tuple[str, tuple[int, int, int]] | None] = {}
    if cameras is None and base is not None:
        cams = dict(base.cameras)
    else:
        if cameras is None:
            try:
                wanted = assign_roles(images)
            except ValueError as e:
                raise DataError(name, where, None, "cameras", f"{e} (image keys: {images})") from None
        else:
            wanted = dict(cameras)
        for role, key in wanted.items():
            key = _strip_steps(key)
            spec = steps.get(key)
            if spec is None:
                raise fail(key, f"camera ({role}) key missing from features.json; image keys: {images}")
            if spec.kind != "image" or len(spec.shape) != 3:
                raise fail(key, f"camera ({role}) key is not an (H, W, 3) image in features.json ({spec}); "
                                f"image keys: {images}")
            cams[role] = (key, tuple(spec.shape))  # type: ignore[assignment]

    lang_key, lang_enc, lang_shape = ((base.language_key, base.language_encoding, base.language_shape)
                                      if base is not None else ("", "string", ()))
    if instruction_key is not None or base is None:
        if instruction_key is None:
            lang_key = next((k for k in INSTRUCTION_KEYS if k in steps), "")
            if not lang_key and not fixed_instruction:
                texts = sorted(k for k, v in steps.items() if v.kind == "text")
                raise fail("language_instruction", f"no --instruction-key given and none of {list(INSTRUCTION_KEYS)} "
                                                   f"is in features.json (text step keys: {texts}); pass "
                                                   f"--instruction-key KEY or --instruction TEXT")
        else:
            lang_key = _strip_steps(instruction_key)
        if lang_key:
            spec = steps.get(lang_key)
            if spec is None:
                texts = sorted(k for k, v in steps.items() if v.kind == "text")
                raise fail(lang_key, f"instruction key missing from features.json; text step keys: {texts}")
            if spec.kind == "text" or (spec.shape == () and spec.dtype == "string"):
                lang_enc, lang_shape = "string", ()
            elif spec.kind == "tensor" and spec.dtype.startswith(("int", "uint")) and len(spec.shape) == 1 \
                    and spec.shape[0] > 0:
                lang_enc, lang_shape = "utf8_int", tuple(spec.shape)
            else:
                raise fail(lang_key, f"instruction key must be a per-step string (or a 1-D int tensor of UTF-8 "
                                     f"codes), features.json has {spec}")

    same_action = base is not None and act == base.action
    same_state = base is not None and st == base.state
    hz = control_hz if control_hz is not None else (base.control_hz if base is not None else None)
    return DatasetConfig(
        name=name, cameras=cams, state=st, action=act,
        action_encoding=base.action_encoding if same_action else "unspecified",  # type: ignore[union-attr]
        state_encoding=base.state_encoding if same_state else "unspecified",  # type: ignore[union-attr]
        language_key=lang_key, language_encoding=lang_enc, language_shape=lang_shape,  # type: ignore[arg-type]
        control_hz=None if hz is None else float(hz), version=base.version if base is not None else "",
        notes=f"key mapping from the command line{f' over the registered config {base.name!r}' if base else ''}")


_SHARD_RE = re.compile(r"^(?P<name>.+)-(?P<split>[a-z_]+)\.tfrecord-(?P<i>\d+)-of-(?P<n>\d+)$")


def list_tfrecords(src: str | os.PathLike, split: str = "train") -> list[Path]:
    """The split's TFRecord files, sorted; a listing that misses shards (``-of-N``) is an error."""
    src = Path(src)
    files = []
    for p in sorted(src.iterdir()):
        m = _SHARD_RE.match(p.name)
        if m and m.group("split") == split:
            files.append((int(m.group("i")), int(m.group("n")), p))
    if not files:
        raise FileNotFoundError(f"{src}: no '*-{split}.tfrecord-NNNNN-of-MMMMM' files")
    n = files[0][1]
    have = {i for i, _, _ in files}
    missing = sorted(set(range(n)) - have)
    if missing:
        raise FileNotFoundError(f"{src}: split {split!r} is incomplete: missing shard(s) {missing[:10]} of {n}")
    return [p for _, _, p in files]


# ----------------------------------------------------------------------------- images


def resize_image(img: Image.Image, size: int) -> Image.Image:
    """Squash to ``size`` x ``size`` (as Octo / OpenVLA do; no aspect-preserving crop)."""
    if img.size == (size, size):
        return img
    return img.resize((size, size), Image.BILINEAR)


def encode_image(arr_or_img, fmt: str = "jpg", quality: int = 95) -> bytes:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(np.asarray(arr_or_img, np.uint8))
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=quality)
    elif fmt == "png":
        img.save(buf, format="PNG", compress_level=1)
    else:
        raise ValueError(f"image format must be 'jpg' or 'png', got {fmt!r}")
    return buf.getvalue()


# ----------------------------------------------------------------------------- episodes


def _get(feats, cfg: DatasetConfig, file: str, ep: int, key: str):
    if key not in feats:
        have = sorted(k for k in feats.keys() if k.startswith(key.rsplit("/", 1)[0]))
        raise DataError(cfg.name, file, ep, key, f"missing key (record has {have[:20]})")
    return feature_values(feats[key])


def _decode_str(b: bytes, cfg, file, ep, key) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(cfg.name, file, ep, key, "not valid UTF-8") from None


def parse_episode(data: bytes, cfg: DatasetConfig, file: str, record: int, image_size: int,
                  features: dict[str, FeatureSpec] | None = None, image_format: str = "jpg",
                  default_instruction: str | None = None) -> StdEpisode:
    """One serialized RLDS episode -> :class:`StdEpisode` (raises :class:`DataError`).
    ``default_instruction``: the instruction of episodes whose own is empty (or of every episode
    when ``cfg.language_key`` is empty)."""
    try:
        ex = parse_example(data)
    except ValueError as e:
        raise DataError(cfg.name, file, record, "<record>", str(e)) from None
    feats = ex.features.feature
    # number of steps: from is_first when present, else from the first action part
    if "steps/is_first" in feats:
        T = len(feature_values(feats["steps/is_first"])[1])
    else:
        p = cfg.action[0]
        T = len(_get(feats, cfg, file, record, f"steps/{p.key}")[1]) // max(p.size, 1)
    if T == 0:
        raise DataError(cfg.name, file, record, "steps", "episode has 0 steps")

    def vector(parts, what: str) -> np.ndarray:
        cols = [np.zeros((T, 0), np.float32)]
        for p in parts:
            key = f"steps/{p.key}"
            kind, vals = _get(feats, cfg, file, record, key)
            if kind == "bytes" or (kind == "none" and p.size * T > 0):
                raise DataError(cfg.name, file, record, key, f"expected numbers, got a {kind} feature")
            vals = np.asarray(vals)
            if vals.size != T * p.size:
                raise DataError(cfg.name, file, record, key,
                                f"wrong shape: expected {T} steps x {p.shape} = {T * p.size} values, got {vals.size}")
            x = vals.astype(np.float32).reshape(T, p.size)
            if p.take is not None:
                x = x[:, p.take[0]:p.take[1]]
            if not np.isfinite(x).all():
                t, d = np.argwhere(~np.isfinite(x))[0]
                raise DataError(cfg.name, file, record, key, f"non-finite {what} value {x[t, d]} at step {t}, dim {d}")
            cols.append(apply_gripper(x, p.gripper))
        return np.concatenate(cols, axis=1).astype(np.float32)

    action = vector(cfg.action, "action")
    state = vector(cfg.state, "state")

    key = f"steps/{cfg.language_key}"
    texts: list[str] = []
    if not cfg.language_key:  # no instruction in the data: default_instruction
        pass
    elif cfg.language_encoding == "string":
        kind, vals = _get(feats, cfg, file, record, key)
        if kind != "bytes" or len(vals) != T:
            raise DataError(cfg.name, file, record, key, f"wrong shape: expected {T} strings, got {len(vals)} {kind}")
        texts = [_decode_str(b, cfg, file, record, key).strip() for b in vals]
    else:
        n = int(np.prod(cfg.language_shape))
        kind, vals = _get(feats, cfg, file, record, key)
        if kind != "int" or len(vals) != T * n:
            raise DataError(cfg.name, file, record, key, f"wrong shape: expected {T} x {n} ints, got {len(vals)} {kind}")
        rows = np.asarray(vals).reshape(T, n)
        for r in rows:
            nz = r[: int(np.argmax(r == 0)) if (r == 0).any() else n]
            texts.append(_decode_str(bytes(nz.astype(np.uint8).tolist()), cfg, file, record, key).strip())
    instruction = next((s for s in texts if s), "") or (default_instruction or "").strip()
    if not instruction:
        raise DataError(cfg.name, file, record, key, "empty language instruction")

    images: dict[str, list[bytes]] = {}
    for role in cfg.camera_roles():
        ckey, shape = cfg.cameras[role]  # type: ignore[misc]
        key = f"steps/{ckey}"
        kind, vals = _get(feats, cfg, file, record, key)
        if kind != "bytes" or len(vals) != T:
            raise DataError(cfg.name, file, record, key,
                            f"wrong shape: expected {T} encoded images, got {len(vals)} {kind} values")
        out = []
        for t, b in enumerate(vals):
            try:
                img = Image.open(io.BytesIO(b))
                img.load()
            except Exception as e:  # noqa: BLE001 - PIL raises many types
                raise DataError(cfg.name, file, record, key, f"step {t}: cannot decode image ({e})") from None
            if all(d > 0 for d in shape[:2]) and (img.height, img.width) != tuple(shape[:2]):
                raise DataError(cfg.name, file, record, key,
                                f"step {t}: wrong shape: image is {img.height}x{img.width}, published {shape[0]}x{shape[1]}")
            if img.size == (image_size, image_size) and img.format == {"jpg": "JPEG", "png": "PNG"}[image_format] \
                    and img.mode == "RGB":
                out.append(bytes(b))
            else:
                out.append(encode_image(resize_image(img.convert("RGB"), image_size), image_format))
        images[role] = out

    file_path = ""
    if "episode_metadata/file_path" in feats:
        k, v = feature_values(feats["episode_metadata/file_path"])
        if k == "bytes" and v:
            file_path = v[0].decode("utf-8", "replace")
    return StdEpisode(
        dataset=cfg.name,
        episode_id=f"{Path(file).name}:{record}",
        source_file=str(file),
        record=record,
        file_path=file_path,
        instruction=instruction,
        state=state,
        action=action,
        images=images,
        image_format=image_format,
    )


def read_episodes(path: str | os.PathLike, cfg: DatasetConfig, image_size: int, skip_bad: bool = False,
                  image_format: str = "jpg", default_instruction: str | None = None) -> Iterator[StdEpisode | DataError]:
    """Standardized episodes of one TFRecord file. With ``skip_bad``, bad episodes (and a file
    whose framing breaks) are yielded as :class:`DataError` instead of raised; without, the first
    one raises."""
    path = str(path)
    it = iter_records(path, skip_bad_data=skip_bad)
    while True:
        try:
            i, data = next(it)
        except StopIteration:
            return
        except RecordError as e:
            err = DataError(cfg.name, path, e.record, "<tfrecord>", str(e).split(": ", 1)[-1])
            if not skip_bad:
                raise err from None
            yield err
            return  # framing broken: the rest of the file is unreadable
        if isinstance(data, RecordError):
            yield DataError(cfg.name, path, i, "<tfrecord>", "data CRC mismatch")
            continue
        try:
            yield parse_episode(data, cfg, path, i, image_size, image_format=image_format,
                                default_instruction=default_instruction)
        except DataError as e:
            if not skip_bad:
                raise
            yield e
