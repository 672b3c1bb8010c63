"""vla_ebt.config_io atomic writes: the project's one implementation (text / bytes / JSON / a temp path)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from vla_ebt.config_io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, save_json


def _leftovers(d) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def test_text_bytes_json_round_trip_with_usual_permissions(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    atomic_write_text(p, "héllo\n")
    assert p.read_text(encoding="utf-8") == "héllo\n"
    atomic_write_bytes(p, b"\x00\x01")  # replaces the old content
    assert p.read_bytes() == b"\x00\x01"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600

    j = tmp_path / "r.json"
    atomic_write_json(j, {"b": 1, "a": [1.5, None]})
    assert j.read_text().endswith("\n") and json.loads(j.read_text()) == {"b": 1, "a": [1.5, None]}
    save_json(j, {"b": 1, "a": 2})
    assert j.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []


def test_failures_leave_the_old_file_and_no_temp_files(tmp_path):
    j = tmp_path / "stats.json"
    atomic_write_json(j, {"x": 1})
    with pytest.raises(ValueError):
        atomic_write_json(j, {"x": float("nan")}, allow_nan=False)
    with pytest.raises(TypeError):
        atomic_write_json(j, {"x": object()})
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(j) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("writer failed")
    assert json.loads(j.read_text()) == {"x": 1} and _leftovers(tmp_path) == []


def test_atomic_path_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    target = tmp_path / "plot.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".plot.png.") and tmp.suffix == ".png"
        assert tmp.exists() and not target.exists()
        tmp.write_bytes(b"png bytes")
    assert target.read_bytes() == b"png bytes" and not tmp.exists()
    with atomic_path(target, suffix=".part") as tmp:
        assert tmp.suffix == ".part"
        tmp.write_bytes(b"v2")
    assert target.read_bytes() == b"v2" and _leftovers(tmp_path) == []
