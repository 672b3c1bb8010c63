"""LeRobotDataset v2 folders (parquet + mp4 + meta JSONs, written here with pyarrow / PyAV) -> shards:
round trip through the training loader, statistics, registered configs, resume, bad input."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipelines import convert as conv
from data_pipelines.rlds import DataError
from vla_ebt.data.shard_format import iter_shard
from vla_ebt.data.oxe_configs import DatasetConfig, Part, register_config
from vla_ebt.data.stream import EpisodeStream, StreamConfig, load_normalizer
from vla_ebt.normalize import load_stats

H = W = 32
FPS = 10
TASKS = ["pick up the red block", "open the drawer"]
EPISODES = [(5, 0), (7, 1), (6, 0)]  # (T, task_index)
TOP, WRIST = "observation.images.top", "observation.images.wrist"


def smooth_frame(t: int, seed: int, h: int = H, w: int = W) -> np.ndarray:
    """A smooth image (codec-friendly) that differs by step and episode."""
    yy, xx = np.mgrid[0:h, 0:w]
    f = np.stack([xx * 5 + t * 7 + seed * 20, yy * 5 + t * 3, (xx + yy) * 2 + 30 + seed * 15], -1)
    return np.clip(f, 0, 255).astype(np.uint8)


def write_mp4(path: Path, frames: list[np.ndarray], fps: int = FPS) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        s.options = {"crf": "10"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def make_lerobot_episode(ep: int, T: int) -> dict:
    rng = np.random.default_rng(100 + ep)
    return {"action": rng.normal(size=(T, 4)).astype(np.float32),
            "state": rng.normal(size=(T, 3)).astype(np.float32),
            "top": [smooth_frame(t, ep) for t in range(T)],
            "wrist": [smooth_frame(T - t, ep + 3) for t in range(T)]}


def write_parquet(path: Path, ep: int, data: dict, task: int, start: int, drop: tuple[str, ...] = (),
                  state_type=None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    T = len(data["action"])
    cols = {
        "observation.state": pa.array(data["state"].tolist(), type=state_type or pa.list_(pa.float32(), 3)),
        "action": pa.array(data["action"].tolist(), type=pa.list_(pa.float32())),  # variable-size lists
        WRIST: pa.array([{"bytes": _png(f), "path": f"frame_{t:06d}.png"} for t, f in enumerate(data["wrist"])],
                        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "timestamp": pa.array(np.arange(T, dtype=np.float32) / FPS),
        "frame_index": pa.array(np.arange(T, dtype=np.int64)),
        "episode_index": pa.array(np.full(T, ep, np.int64)),
        "index": pa.array(np.arange(start, start + T, dtype=np.int64)),
        "task_index": pa.array(np.full(T, task, np.int64)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({k: v for k, v in cols.items() if k not in drop}), path)


def write_lerobot(root: Path, episodes=EPISODES) -> dict[int, dict]:
    """A LeRobotDataset v2.1 folder; returns episode index -> source arrays / frames / task."""
    root.mkdir(parents=True)
    (root / "meta").mkdir()
    info = {
        "codebase_version": "v2.1", "robot_type": "koch", "fps": FPS, "chunks_size": 2,
        "total_episodes": len(episodes), "total_frames": sum(T for T, _ in episodes), "total_tasks": len(TASKS),
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": {
            "action": {"dtype": "float32", "shape": [4], "names": ["x", "y", "z", "gripper"]},
            "observation.state": {"dtype": "float32", "shape": [3], "names": ["j0", "j1", "j2"]},
            TOP: {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"],
                  "info": {"video.fps": FPS, "video.codec": "h264"}},
            WRIST: {"dtype": "image", "shape": [3, H, W], "names": ["channels", "height", "width"]},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        },
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                       for i, t in enumerate(TASKS)))
    (root / "meta" / "episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": i, "tasks": [TASKS[k]], "length": T}) + "\n" for i, (T, k) in enumerate(episodes)))
    out, start = {}, 0
    for ep, (T, task) in enumerate(episodes):
        d = make_lerobot_episode(ep, T)
        chunk = ep // 2
        write_parquet(root / f"data/chunk-{chunk:03d}/episode_{ep:06d}.parquet", ep, d, task, start)
        write_mp4(root / f"videos/chunk-{chunk:03d}/{TOP}/episode_{ep:06d}.mp4", d["top"])
        out[ep] = {**d, "task": TASKS[task]}
        start += T
    return out


def stream_samples(out: Path, cameras: tuple[str, ...], image_size: int = H) -> list[dict]:
    """Every step of a converted dataset through the training loader (no augmentation)."""
    norm = load_normalizer([out])
    cfg = StreamConfig(image_size=image_size, horizon=1, obs_steps=1, cameras=cameras,
                       batch_size=4, shuffle_buffer=1, train=False, infinite=False, drop_last=False)
    res = []
    for b in EpisodeStream([out], norm, cfg):
        for i, sid in enumerate(b["sample_id"]):
            _, key, t = sid.split("/")
            res.append({"key": key, "record": int(key.rsplit("-", 1)[1]), "t": int(t),
                        "action": b["action"][i, 0].numpy(), "state": b["state"][i, 0].numpy(),
                        "images": (b["images"][i].numpy() * 255.0), "instruction": b["instruction"][i],
                        "mask": bool(b["action_mask"][i, 0])})
    return res


def check_stats(out: Path, name: str, actions: list[np.ndarray], states: list[np.ndarray]) -> None:
    st = load_stats(out / "stats.json")[name]
    a = np.concatenate(actions).astype(np.float64)
    s = np.concatenate(states).astype(np.float64)
    for fs, x in ((st.action, a), (st.state, s)):
        np.testing.assert_allclose(fs.mean, x.mean(0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(fs.std, x.std(0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(fs.q01, np.quantile(x, 0.01, axis=0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(fs.q99, np.quantile(x, 0.99, axis=0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(fs.min, x.min(0)), np.testing.assert_allclose(fs.max, x.max(0))
    assert st.num_steps == a.shape[0] and st.num_episodes == len(actions)


def _convert(src, name, out, **kw):
    kw.setdefault("image_size", H)
    kw.setdefault("image_format", "png")
    kw.setdefault("workers", 1)
    return conv.convert(src, name, out, progress=False, format="lerobot", **kw)


@pytest.fixture(scope="module")
def lerobot_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot") / "koch"
    return root, write_lerobot(root)


def test_lerobot_roundtrip_through_loader(tmp_path, lerobot_src):
    src, eps = lerobot_src
    out = tmp_path / "out"
    s = _convert(src, "my_koch", out, episodes_per_shard=2)
    assert (s["files"], s["episodes"], s["steps"], s["skipped"]) == (2, 3, 18, 0)
    assert (s["action_dim"], s["state_dim"]) == (4, 3)
    samples = stream_samples(out, ("primary", "wrist"))
    assert sorted((r["record"], r["t"]) for r in samples) == sorted((e, t) for e, d in eps.items()
                                                                    for t in range(len(d["action"])))
    for r in samples:
        d = eps[r["record"]]
        np.testing.assert_array_equal(r["action"], d["action"][r["t"]])  # exact
        np.testing.assert_array_equal(r["state"], d["state"][r["t"]])
        assert r["instruction"] == d["task"] and r["mask"]
        top = r["images"][0].transpose(1, 2, 0)
        assert np.abs(top - d["top"][r["t"]].astype(np.float64)).mean() < 4.0  # h264 round trip
        np.testing.assert_allclose(r["images"][1].transpose(1, 2, 0), d["wrist"][r["t"]], atol=1e-3)  # PNG: lossless
    check_stats(out, "my_koch", [d["action"] for d in eps.values()], [d["state"] for d in eps.values()])
    metas = [e["meta"] for p in sorted(out.glob("*.tar")) for e in iter_shard(p)]
    assert [m["episode_id"] for m in metas] == ["episode_000000", "episode_000001", "episode_000002"]
    assert all(m["cameras"] == ["primary", "wrist"] and m["control_hz"] == FPS and m["source_format"] == "lerobot"
               for m in metas)
    # resumable: a second run with the same settings converts nothing
    s2 = _convert(src, "my_koch", out, episodes_per_shard=2)
    assert (s2["converted"], s2["resumed"], s2["episodes"]) == (0, 2, 3)


def test_lerobot_cli_options_and_registered_config(tmp_path, lerobot_src, capsys):
    src, eps = lerobot_src
    out = tmp_path / "cli"
    assert conv.main(["--format", "lerobot", "--src", str(src), "--dataset", "koch_cli", "--out", str(out),
                      "--image-size", "16", "--workers", "1", "--no-progress", "--state-key", "none",
                      "--camera-keys", f"wrist={WRIST}", "--action-key", "action,observation.state"]) == 0
    assert "3 episodes, 18 steps" in capsys.readouterr().out
    got = {e["meta"]["episode_id"]: e for p in sorted(out.glob("*.tar")) for e in iter_shard(p, decode_images=True)}
    e1 = got["episode_000001"]
    np.testing.assert_array_equal(e1["action"], np.concatenate([eps[1]["action"], eps[1]["state"]], 1))
    assert e1["state"].shape == (7, 0) and list(e1["images"]) == ["wrist"] and e1["images"]["wrist"][0].shape == (16, 16, 3)
    assert load_stats(out / "stats.json")["koch_cli"].state is None

    # a registered config: RLDS-style keys found in LeRobot's namespace, slices and gripper transforms applied
    register_config(DatasetConfig(
        name="test_import_koch", cameras={"primary": (TOP, (H, W, 3))},
        state=(Part("observation/state", (3,)),),
        action=(Part("action", (4,), take=(0, 3)), Part("action", (4,), take=(3, 4), gripper="invert")),
        action_encoding="eef_delta_xyz_gripper", state_encoding="joint_pos_gripper", language_key="task",
        control_hz=30.0), overwrite=True)
    s = _convert(src, "test_import_koch", tmp_path / "reg")
    assert (s["action_dim"], s["state_dim"]) == (4, 3)
    for e in iter_shard(next((tmp_path / "reg").glob("*.tar"))):
        d = eps[int(e["meta"]["episode_id"].split("_")[1])]
        np.testing.assert_allclose(e["action"], np.concatenate([d["action"][:, :3], 1 - d["action"][:, 3:]], 1))
        np.testing.assert_array_equal(e["state"], d["state"])
        assert e["meta"]["cameras"] == ["primary"] and e["meta"]["control_hz"] == 30.0
        assert e["meta"]["action_encoding"] == "eef_delta_xyz_gripper"
    # the instruction falls back to --instruction only where the source has none
    (src2 := tmp_path / "notasks").mkdir()
    shutil.copytree(src, src2, dirs_exist_ok=True)
    (src2 / "meta" / "tasks.jsonl").unlink()
    (src2 / "meta" / "episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": i, "length": T}) + "\n" for i, (T, _) in enumerate(EPISODES)))
    with pytest.raises(DataError, match=r"episode 0, field 'task': no instruction"):
        _convert(src2, "x", tmp_path / "x1")
    _convert(src2, "x", tmp_path / "x2", instruction="do the thing")
    assert {e["instruction"] for e in iter_shard(next((tmp_path / "x2").glob("*.tar")))} == {"do the thing"}


# ------------------------------------------------------------------ bad input


def _episode1(root: Path) -> tuple[Path, dict]:
    return root / "data/chunk-000/episode_000001.parquet", make_lerobot_episode(1, 7)


def _drop_action(root):
    p, d = _episode1(root)
    write_parquet(p, 1, d, 1, 5, drop=("action",))


def _wide_state(root):
    import pyarrow as pa

    p, d = _episode1(root)
    d["state"] = np.zeros((7, 4), np.float32)
    write_parquet(p, 1, d, 1, 5, state_type=pa.list_(pa.float32()))


def _ragged_state(root):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p, _ = _episode1(root)
    t = pq.read_table(p)
    rows = [[0.0, 1.0, 2.0]] * 6 + [[0.0, 1.0]]
    t = t.set_column(t.schema.get_field_index("observation.state"), "observation.state",
                     pa.array(rows, type=pa.list_(pa.float32())))
    pq.write_table(t, p)


def _nan_action(root):
    p, d = _episode1(root)
    d["action"][3, 2] = np.nan
    write_parquet(p, 1, d, 1, 5)


def _short_video(root):
    _, d = _episode1(root)
    write_mp4(root / f"videos/chunk-000/{TOP}/episode_000001.mp4", d["top"][:-1])


def _no_video(root):
    (root / f"videos/chunk-000/{TOP}/episode_000001.mp4").unlink()


def _bad_video_size(root):
    write_mp4(root / f"videos/chunk-000/{TOP}/episode_000001.mp4", [smooth_frame(t, 1, 16, 16) for t in range(7)])


def _length(root):
    lines = (root / "meta" / "episodes.jsonl").read_text().splitlines()
    d = json.loads(lines[1])
    d["length"] = 9
    lines[1] = json.dumps(d)
    (root / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")


def _frame_index(root):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p, _ = _episode1(root)
    t = pq.read_table(p)
    t = t.set_column(t.schema.get_field_index("frame_index"), "frame_index", pa.array([0, 1, 2, 4, 3, 5, 6]))
    pq.write_table(t, p)


def _timestamps(root):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p, _ = _episode1(root)
    t = pq.read_table(p)
    t = t.set_column(t.schema.get_field_index("timestamp"), "timestamp", pa.array(np.arange(7, dtype=np.float32) / 5))
    pq.write_table(t, p)


@pytest.mark.parametrize("mutate,field,problem,file", [
    (_timestamps, TOP, "frame 1 is at 0.1000s but the timestamp column says 0.2000s", "episode_000001.mp4"),
    (_drop_action, "action", "missing column", "episode_000001.parquet"),
    (_wide_state, "observation.state", "shape mismatch: per-step shape (4,), expected (3,)", "episode_000001.parquet"),
    (_ragged_state, "observation.state", "ragged", "episode_000001.parquet"),
    (_nan_action, "action", "non-finite action value nan at step 3, dim 2", "episode_000001.parquet"),
    (_short_video, TOP, "video has 6 frames, parquet has 7 rows", "episode_000001.mp4"),
    (_no_video, TOP, "missing video file", "episode_000001.mp4"),
    (_bad_video_size, TOP, "shape mismatch", "episode_000001.mp4"),
    (_length, "length", "episodes.jsonl says 9 frames, parquet has 7 rows", "episode_000001.parquet"),
    (_frame_index, "frame_index", "not 0..6 in order", "episode_000001.parquet"),
])
def test_lerobot_bad_episode_named_or_skipped(tmp_path, lerobot_src, mutate, field, problem, file):
    src = tmp_path / "src"
    shutil.copytree(lerobot_src[0], src)
    mutate(src)
    with pytest.raises(DataError) as ei:
        _convert(src, "koch", tmp_path / "out")
    e = ei.value
    assert (e.dataset, e.episode, e.field) == ("koch", 1, field) and e.file.endswith(file), str(e)
    assert problem in str(e) and "episode 1" in str(e) and file in str(e)
    assert not list((tmp_path / "out").glob("*.tar")) and not list((tmp_path / "out").glob(".*"))
    s = _convert(src, "koch", tmp_path / "out2", skip_bad=True)
    assert (s["episodes"], s["skipped"]) == (2, 1)
    man = json.loads((tmp_path / "out2" / "manifest.json").read_text())
    assert man["skipped"][0]["field"] == field and man["skipped"][0]["episode"] == 1


def test_lerobot_bad_metadata(tmp_path, lerobot_src):
    src = tmp_path / "src"
    shutil.copytree(lerobot_src[0], src)
    with pytest.raises(DataError, match=r"field 'observation.effort': missing action key .*'action'") as ei:
        _convert(src, "koch", tmp_path / "o1", action_key="observation.effort")
    assert ei.value.file.endswith("info.json") and ei.value.episode is None
    with pytest.raises(DataError, match=r"field 'action': camera \(primary\) key is not an image feature"):
        _convert(src, "koch", tmp_path / "o2", camera_keys="action")
    info = json.loads((src / "meta" / "info.json").read_text())
    info["codebase_version"] = "v3.0"  # v3.0 is read with its own layout: this v2 folder has no meta/episodes/
    (src / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"episodes'.*missing episodes metadata"):
        _convert(src, "koch", tmp_path / "o3")
    info["codebase_version"] = "v1.6"
    (src / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="v1.6 is not supported"):
        _convert(src, "koch", tmp_path / "o3")
    (src / "meta" / "info.json").unlink()
    with pytest.raises(DataError, match=r"info.json'.*missing file"):
        _convert(src, "koch", tmp_path / "o4")
    assert conv.main(["--format", "lerobot", "--src", str(src), "--dataset", "koch", "--out", str(tmp_path / "o5"),
                      "--no-progress"]) == 2
