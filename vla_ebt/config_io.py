"""Dataclass configs <-> JSON dicts, with errors that name the offending field.

Configs are plain nested dataclasses (so tyro can override any field from the command line);
this module turns them into JSON-safe dicts and back, rejecting unknown keys and wrong types
instead of silently ignoring them. It is also the project's one implementation of atomic file
writes (:func:`atomic_path`, :func:`atomic_write_bytes` / ``_text`` / ``_json``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Iterator, TypeVar

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested dataclass -> JSON-safe dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise TypeError(f"{where}: {value!r} matches none of {tp}: {errors}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {type(value).__name__}")
        inner = args[0] if args else Any
        seq = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected an object, got {type(value).__name__}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise TypeError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise naming the field."""
    if not isinstance(data, dict):
        raise TypeError(f"{where}: expected an object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(fields)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask swaps it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block exits normally the file written there
    is fsynced, given the usual permissions (0666 & ~umask) and renamed over ``path`` (readers see
    the old file or the new one, never a partial one). If the block raises, the temporary file is
    removed and ``path`` is untouched.

    For writers that open the file themselves (matplotlib, imageio, ...). The temporary file
    exists (empty) when yielded and ends with ``suffix`` (default ``".tmp" + path.suffix``, so
    writers that pick a format from the extension still see it). ``path``'s folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".tmp" + path.suffix if suffix is None else suffix
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, suffix=".tmp") as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same folder + fsync + rename)."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(
    path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False, allow_nan: bool = True
) -> None:
    """Write ``obj`` as JSON (plus a trailing newline) to ``path`` atomically. Serialization
    errors (TypeError, or ValueError for NaN/inf with ``allow_nan=False``) are raised before any
    file is created."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan) + "\n"
    atomic_write_text(path, text)


def json_safe(x: Any) -> Any:
    """Nested dicts/lists for strict JSON: NaN/inf floats -> None, numpy scalars -> Python numbers,
    dict keys -> str."""
    if hasattr(x, "item") and getattr(x, "ndim", None) == 0:  # numpy / torch scalar
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def save_json(path: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON with sorted keys, written atomically."""
    atomic_write_json(path, obj, sort_keys=True)


def load_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
