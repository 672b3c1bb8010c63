"""LeRobotDataset v3.0 folders -> shards, on fixtures written by the real LeRobot library
(tests/fixtures/lerobot_v3: make_fixture.py, run in a throwaway venv with lerobot installed;
expected.json holds per-episode frame counts, instructions, action / state checksums and the
mean pixel value of every source frame). Also: clear errors for corrupted v3 folders, and the
segment decoder on its own."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_pipelines import convert as conv
from data_pipelines.lerobot import LeRobotSource, SegmentError, decode_video_segment
from data_pipelines.rlds import DataError
from vla_ebt.data.shard_format import iter_shard
from vla_ebt.normalize import load_stats

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "lerobot_v3"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
ROOT = Path(__file__).resolve().parents[2]
TOP, WRIST = "observation.images.top", "observation.images.wrist"


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def episodes_meta(root: Path) -> dict[int, dict]:
    """episode index -> its meta/episodes row (without stats/ columns), plus the file it is in."""
    import pyarrow.parquet as pq

    out = {}
    for f in sorted((root / "meta" / "episodes").rglob("*.parquet")):
        t = pq.read_table(f)
        for r in t.select([c for c in t.column_names if not c.startswith("stats/")]).to_pylist():
            out[r["episode_index"]] = {**r, "_file": f}
    return out


def edit_episode(root: Path, ep: int, **changes) -> Path:
    """Rewrite one episode's meta/episodes row (value or function of the old value per column)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = episodes_meta(root)[ep]["_file"]
    t = pq.read_table(f)
    i = t.column("episode_index").to_pylist().index(ep)
    for k, v in changes.items():
        vals = t.column(k).to_pylist()
        vals[i] = v(vals[i]) if callable(v) else v
        t = t.set_column(t.schema.get_field_index(k), k, pa.array(vals, type=t.schema.field(k).type))
    pq.write_table(t, f)
    return f


def read_shards(out: Path) -> dict[int, dict]:
    eps = {}
    for p in sorted(out.glob("*.tar")):
        for e in iter_shard(p, decode_images=True):
            eps[int(e["meta"]["episode_id"].split("_")[1])] = e
    return eps


def check_converted(out: Path, name: str, which: str, max_err: float) -> dict[int, dict]:
    """Every episode of expected.json[which]: frames, instruction, action / state checksums; images
    of the right shape, not black, each near its source frame's mean and left-right gradient
    (``max_err``); stats finite and equal to
    the statistics LeRobot wrote to meta/stats.json."""
    exp = EXPECTED["datasets"][which]
    got = read_shards(out)
    assert sorted(got) == [e["episode_index"] for e in exp["episodes"]]
    for e in exp["episodes"]:
        g = got[e["episode_index"]]
        T = e["frames"]
        assert g["action"].shape == (T, exp["action_dim"]) and g["state"].shape == (T, exp["state_dim"])
        assert sha256(g["action"]) == e["action_sha256"], e["episode_index"]
        assert sha256(g["state"]) == e["state_sha256"], e["episode_index"]
        assert g["instruction"] == e["instruction"]
        assert g["meta"]["control_hz"] == exp["fps"] and g["meta"]["source_format"] == "lerobot"
        roles = g["meta"]["cameras"]
        assert len(roles) == len(exp["cameras"])
        for role, key in zip(roles, exp["cameras"]):
            imgs = g["images"][role]
            assert len(imgs) == T and all(im.shape == tuple(exp["image_shape"]) for im in imgs)
            means = np.array([im.mean() for im in imgs])
            assert means.min() > 10, f"episode {e['episode_index']} {key}: (nearly) black frames"
            # source frames step by 12 in brightness per frame and their left-right gradient by 10 per
            # episode: a frame from the wrong time or episode is far off in one of the two
            lr = np.array([im[:, : im.shape[1] // 2].mean() - im[:, im.shape[1] // 2:].mean() for im in imgs])
            for what, x in (("frame_means", means), ("frame_left_minus_right", lr)):
                err = np.abs(x - np.array(e[what][key]))
                assert err.max() < max_err, (e["episode_index"], key, what, err.round(2).tolist())
    st = load_stats(out / "stats.json")[name]
    assert st.num_episodes == len(exp["episodes"]) and st.num_steps == sum(e["frames"] for e in exp["episodes"])
    lr = LeRobotSource(FIXTURES / which, name).source_stats()
    for fs, key in ((st.action, "action"), (st.state, "observation.state")):
        for k in ("mean", "std", "min", "max", "q01", "q99"):
            assert np.isfinite(getattr(fs, k)).all(), (key, k)
        for k in ("mean", "std", "min", "max"):  # the same data LeRobot computed its statistics on
            np.testing.assert_allclose(getattr(fs, k), lr[key][k], rtol=1e-5, atol=1e-5, err_msg=f"{key} {k}")
    return got


def test_fixture_is_multi_episode_v3():
    """The fixture exercises what v3 is about: several data / video files, each with several episodes,
    episodes starting mid-video."""
    exp = EXPECTED["datasets"]["video"]
    assert exp["codebase_version"].startswith("v3") and EXPECTED["lerobot_version"].startswith("0.4")
    meta = episodes_meta(FIXTURES / "video")
    data_files = [m["data/file_index"] for m in meta.values()]
    assert len(set(data_files)) > 1 and max(data_files.count(f) for f in set(data_files)) > 1
    for key in (TOP, WRIST):
        vids = [m[f"videos/{key}/file_index"] for m in meta.values()]
        assert len(set(vids)) > 1 and max(vids.count(f) for f in set(vids)) > 1
        assert any(m[f"videos/{key}/from_timestamp"] > 0 for m in meta.values())
    assert len({m["_file"] for m in meta.values()}) > 1  # episodes metadata over several files too
    assert len({m["_file"] for m in episodes_meta(FIXTURES / "image").values()}) >= 1


def test_v3_video_fixture_via_cli(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "data_pipelines.convert", "--format", "lerobot", "--src",
                        str(FIXTURES / "video"), "--dataset", "lr3_video", "--out", str(out), "--image-size", "32",
                        "--workers", "1", "--no-progress", "--episodes-per-shard", "4"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "6 episodes, 57 steps in 2 shard(s)" in r.stdout
    got = check_converted(out, "lr3_video", "video", max_err=4.0)  # AV1 at crf 30 (LeRobot's default)
    assert all(g["meta"]["cameras"] == ["primary", "wrist"] for g in got.values())
    # resumable like v2: nothing left to do
    s = conv.convert(FIXTURES / "video", "lr3_video", out, image_size=32, workers=1, progress=False,
                     format="lerobot", episodes_per_shard=4)
    assert (s["converted"], s["resumed"]) == (0, 2)


def test_v3_image_fixture(tmp_path):
    out = tmp_path / "out"
    assert conv.main(["--format", "lerobot", "--src", str(FIXTURES / "image"), "--dataset", "lr3_image", "--out",
                      str(out), "--image-size", "32", "--image-format", "png", "--workers", "1", "--no-progress",
                      "--episodes-per-shard", "2"]) == 0
    check_converted(out, "lr3_image", "image", max_err=1e-6)  # PNG in the parquet, PNG out: lossless


def test_v3_tasks_come_from_tasks_parquet(tmp_path):
    """task_index -> meta/tasks.parquet (swapping its strings swaps the instructions); without the
    file the episode's ``tasks`` list in meta/episodes is used."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "image", src)
    p = src / "meta" / "tasks.parquet"
    t = pq.read_table(p)
    key = next(c for c in t.column_names if c != "task_index")
    t = t.set_column(t.schema.get_field_index(key), key, pa.array(t.column(key).to_pylist()[::-1],
                                                                  type=t.schema.field(key).type))
    pq.write_table(t, p)
    conv.convert(src, "lr3", tmp_path / "o1", image_size=16, workers=1, progress=False, format="lerobot")
    swap = {e["episode_index"]: e["instruction"] for e in EXPECTED["datasets"]["image"]["episodes"]}
    names = sorted(set(swap.values()))
    assert {k: e["instruction"] for k, e in read_shards(tmp_path / "o1").items()} == \
        {k: names[1 - names.index(v)] for k, v in swap.items()}
    p.unlink()
    conv.convert(src, "lr3", tmp_path / "o2", image_size=16, workers=1, progress=False, format="lerobot")
    assert {k: e["instruction"] for k, e in read_shards(tmp_path / "o2").items()} == swap


# ------------------------------------------------------------------ corrupted v3 folders


def _last_wrist_video(root: Path) -> tuple[Path, list[int]]:
    meta = episodes_meta(root)
    last = meta[max(meta)]
    c, f = last[f"videos/{WRIST}/chunk_index"], last[f"videos/{WRIST}/file_index"]
    eps = sorted(e for e, m in meta.items() if (m[f"videos/{WRIST}/chunk_index"], m[f"videos/{WRIST}/file_index"])
                 == (c, f))
    return root / f"videos/{WRIST}/chunk-{c:03d}/file-{f:03d}.mp4", eps


def _bad_offsets(root):
    return edit_episode(root, 1, dataset_from_index=lambda v: v + 2, dataset_to_index=lambda v: v + 2).name, [1]


def _bad_length(root):
    return edit_episode(root, 2, length=lambda v: v + 1).name, [2]


def _missing_video(root):
    path, eps = _last_wrist_video(root)
    path.unlink()
    return path.name, eps


def _missing_data_file(root):
    meta = episodes_meta(root)
    f = meta[3]["data/file_index"]
    (root / f"data/chunk-000/file-{f:03d}.parquet").unlink()
    return f"file-{f:03d}.parquet", sorted(e for e, m in meta.items() if m["data/file_index"] == f)


def _segment(root, column: str, shift: float):
    """Move one episode's from_timestamp or to_timestamp (top camera) by ``shift`` seconds."""
    meta = episodes_meta(root)
    ep = next(e for e, m in sorted(meta.items()) if m[f"videos/{TOP}/from_timestamp"] > 0)
    edit_episode(root, ep, **{f"videos/{TOP}/{column}": lambda v: v + shift})
    return f"file-{meta[ep][f'videos/{TOP}/file_index']:03d}.mp4", [ep]


def _segment_start(root):
    """from_timestamp 0.3 s later: the episode's last rows fall after the segment."""
    return _segment(root, "from_timestamp", 0.3)


def _segment_end(root):
    """to_timestamp 0.3 s later: the segment holds 3 frames of the next episode."""
    return _segment(root, "to_timestamp", 0.3)


def _edit_data_column(root: Path, ep: int, key: str, fn) -> str:
    """Rewrite column ``key`` of episode ``ep``'s rows in its data file; returns the file name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = root / f"data/chunk-000/file-{episodes_meta(root)[ep]['data/file_index']:03d}.parquet"
    t = pq.read_table(f)
    vals = np.asarray(t.column(key).to_pylist())
    rows = np.asarray(t.column("episode_index").to_pylist()) == ep
    vals[rows] = fn(vals[rows])
    t = t.set_column(t.schema.get_field_index(key), key, pa.array(vals, type=t.schema.field(key).type))
    pq.write_table(t, f)
    return f.name


def _slow_timestamps(root):
    """timestamps 1.5x too far apart: within 1/fps of a frame each, but running past the segment."""
    _edit_data_column(root, 1, "timestamp", lambda ts: ts * 1.5)
    return f"file-{episodes_meta(root)[1][f'videos/{TOP}/file_index']:03d}.mp4", [1]


def _unordered_timestamps(root):
    return _edit_data_column(root, 4, "timestamp", lambda ts: ts[[0, 2, 1, *range(3, len(ts))]]), [4]


@pytest.mark.parametrize("mutate,field,problem", [
    (_bad_offsets, "dataset_from_index", "wrong offsets: the rows with index 10..20"),
    (_bad_length, "length", "meta/episodes/ says 10 frames, parquet has 9 rows"),
    (_missing_video, WRIST, "missing video file"),
    (_missing_data_file, "<file>", "missing parquet file"),
    (_segment_start, TOP, "row 8 (1.9000s): its nearest frame (at 1.9000s) is outside the segment"),
    (_segment_end, TOP, "video segment 0.8000s..2.2000s (from_timestamp..to_timestamp) has 14 frames, parquet has 11"),
    (_slow_timestamps, TOP, "is outside the segment"),
    (_unordered_timestamps, "timestamp", "not increasing: row 2 is at 0.1000s, row 1 at 0.2000s"),
])
def test_v3_bad_episode_named_or_skipped(tmp_path, mutate, field, problem):
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "video", src)
    file, bad = mutate(src)
    with pytest.raises(DataError) as ei:
        conv.convert(src, "lr3", tmp_path / "out", image_size=16, workers=1, progress=False, format="lerobot")
    e = ei.value
    assert (e.dataset, e.episode, e.field) == ("lr3", bad[0], field), str(e)
    assert Path(e.file).name == file and problem in str(e), str(e)
    assert f"episode {bad[0]}," in str(e) and file in str(e) and repr(field) in str(e)
    assert not list((tmp_path / "out").glob("*.tar"))
    s = conv.convert(src, "lr3", tmp_path / "out2", image_size=16, workers=1, progress=False, format="lerobot",
                     skip_bad=True)
    assert (s["episodes"], s["skipped"]) == (6 - len(bad), len(bad))
    man = json.loads((tmp_path / "out2" / "manifest.json").read_text())
    assert sorted(x["episode"] for x in man["skipped"]) == bad and {x["field"] for x in man["skipped"]} == {field}


def test_v3_bad_metadata(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "video", src)

    def run(tag):
        return conv.convert(src, "lr3", tmp_path / tag, image_size=16, workers=1, progress=False, format="lerobot")

    # one of the episodes metadata files gone: info.json's total_episodes no longer adds up
    files = sorted((src / "meta" / "episodes").rglob("*.parquet"))
    moved = files[-1].rename(tmp_path / "kept.parquet")
    with pytest.raises(DataError, match=r"field 'total_episodes': meta/info.json says 6 episodes, meta/episodes/ "
                                        r"lists \d") as ei:
        run("o1")
    assert ei.value.episode is None and ei.value.file.endswith("episodes")
    # no meta/episodes at all
    shutil.rmtree(src / "meta" / "episodes")
    with pytest.raises(DataError, match=r"file '.*meta/episodes', episode -, field '<file>': missing episodes "
                                        r"metadata"):
        run("o2")
    (src / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    for f in files[:-1]:
        shutil.copy(FIXTURES / "video" / f.relative_to(src), f)
    moved.rename(files[-1])
    run("ok")  # restored
    # a video feature without its columns in meta/episodes
    import pyarrow.parquet as pq

    t = pq.read_table(files[0])
    pq.write_table(t.drop_columns([f"videos/{TOP}/from_timestamp"]), files[0])
    with pytest.raises(DataError, match=rf"field 'videos/{TOP}/from_timestamp': missing column") as ei:
        run("o3")
    assert ei.value.file == str(files[0])
    run_ok = conv.convert(src, "lr3", tmp_path / "o3c", image_size=16, workers=1, progress=False, format="lerobot",
                          camera_keys=f"wrist={WRIST}")  # ...which is only needed for a camera that is used
    assert run_ok["episodes"] == 6
    # codebase_version from the future
    info = json.loads((src / "meta" / "info.json").read_text())
    info["codebase_version"] = "v4.0"
    (src / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"info.json', episode -, field 'codebase_version': v4.0 is not supported"):
        run("o4")
    assert conv.main(["--format", "lerobot", "--src", str(src), "--dataset", "lr3", "--out", str(tmp_path / "o5"),
                      "--no-progress"]) == 2


# ------------------------------------------------------------------ the segment decoder


def _mp4(path: Path, pts: list[int], fps: int = 10, size: int = 16) -> list[float]:
    """An h264 mp4 with one frame per pts (in 1/fps units); frame k has brightness 20 + 20 k."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.options = {"crf": "10", "g": "3"}
        for k, p in enumerate(pts):
            f = av.VideoFrame.from_ndarray(np.full((size, size, 3), 20 + 20 * k, np.uint8), format="rgb24")
            f.pts = p
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return [p / fps for p in pts]


def test_decode_video_segment(tmp_path):
    path = tmp_path / "v.mp4"
    _mp4(path, list(range(10)))
    frames, counted = decode_video_segment(path, np.arange(4, 8) / 10, 0.1, segment=(0.4, 0.8))
    assert counted == 4 and [round(np.asarray(f).mean() / 20) - 1 for f in frames] == [4, 5, 6, 7]
    frames, _ = decode_video_segment(path, np.arange(4, 8) / 10 + 0.03, 0.1)  # off by less than half a frame
    assert [round(np.asarray(f).mean() / 20) - 1 for f in frames] == [4, 5, 6, 7]
    out, _ = decode_video_segment(path, np.array([0.0, 0.1]), 0.1, convert=lambda fr: fr.time)
    assert out == pytest.approx([0.0, 0.1])
    with pytest.raises(SegmentError, match="row 2: no frame within 0.1000s of 1.2000s"):
        decode_video_segment(path, np.array([0.8, 0.9, 1.2]), 0.1)
    gap = tmp_path / "gap.mp4"
    _mp4(gap, [0, 1, 2, 4, 5])  # the frame at 0.3 s is missing
    with pytest.raises(SegmentError, match="a frame is missing"):
        decode_video_segment(gap, np.arange(6) / 10, 0.1)
