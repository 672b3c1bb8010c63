"""robomimic-style HDF5 and per-episode npz demos (written here with h5py / numpy) -> shards: round
trip through the training loader, statistics, defaults and options, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_pipelines import convert as conv
from data_pipelines.rlds import DataError
from vla_ebt.data.shard_format import iter_shard
from tests.data_pipelines.test_data_import_lerobot import check_stats, smooth_frame, stream_samples

S = 16
DEMOS = {"demo_0": 4, "demo_1": 6, "demo_10": 5}  # natural order: 0, 1, 10


def _frames(T: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(T, S, S, 3), dtype=np.uint8)


def make_demo(name: str, T: int) -> dict[str, np.ndarray]:
    seed = int(name.split("_")[1])
    rng = np.random.default_rng(seed)
    return {"actions": rng.normal(size=(T, 7)),  # float64, as robomimic stores them
            "obs/robot0_eef_pos": rng.normal(size=(T, 3)), "obs/robot0_eef_quat": rng.normal(size=(T, 4)),
            "obs/robot0_gripper_qpos": rng.normal(size=(T, 2)).astype(np.float32),
            "obs/object": rng.normal(size=(T, 10)),
            "obs/agentview_image": _frames(T, seed), "obs/robot0_eye_in_hand_image": _frames(T, seed + 50),
            "states": rng.normal(size=(T, 32))}


def write_hdf5(path: Path, instruction: str | None = "lift the cube", mutate=None) -> dict[str, dict]:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    out = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "env_kwargs": {"control_freq": 20}})
        if instruction is not None:
            data.attrs["problem_info"] = json.dumps({"language_instruction": instruction})
        for name, T in DEMOS.items():
            d = make_demo(name, T)
            if mutate:
                d = mutate(name, d)
            g = data.create_group(name)
            g.attrs["num_samples"] = T
            for k, v in d.items():
                g.create_dataset(k, data=v)
            out[name] = d
    return out


def _convert(fmt, src, name, out, **kw):
    kw.setdefault("image_size", S)
    kw.setdefault("image_format", "png")
    kw.setdefault("workers", 1)
    return conv.convert(src, name, out, progress=False, format=fmt, **kw)


def _robomimic_state(d):
    return np.concatenate([d["obs/robot0_eef_pos"], d["obs/robot0_eef_quat"], d["obs/robot0_gripper_qpos"]], 1)


def test_hdf5_roundtrip_through_loader(tmp_path):
    demos = write_hdf5(tmp_path / "lift.hdf5")
    out = tmp_path / "out"
    s = _convert("hdf5", tmp_path / "lift.hdf5", "lift_demos", out, episodes_per_shard=2)
    assert (s["files"], s["episodes"], s["steps"], s["action_dim"], s["state_dim"]) == (2, 3, 15, 7, 9)
    names = list(DEMOS)
    samples = stream_samples(out, ("primary", "wrist"), S)
    assert len(samples) == 15
    for r in samples:
        # records number the demos in natural order within the file
        d = demos[names[r["record"]]]
        np.testing.assert_array_equal(r["action"], d["actions"][r["t"]].astype(np.float32))
        np.testing.assert_array_equal(r["state"], _robomimic_state(d)[r["t"]].astype(np.float32))
        assert r["instruction"] == "lift the cube"
        np.testing.assert_allclose(r["images"][0].transpose(1, 2, 0), d["obs/agentview_image"][r["t"]], atol=1e-3)
        np.testing.assert_allclose(r["images"][1].transpose(1, 2, 0), d["obs/robot0_eye_in_hand_image"][r["t"]],
                                   atol=1e-3)
    check_stats(out, "lift_demos", [demos[n]["actions"].astype(np.float32) for n in names],
                [_robomimic_state(demos[n]).astype(np.float32) for n in names])
    metas = [e["meta"] for p in sorted(out.glob("*.tar")) for e in iter_shard(p)]
    assert [m["file_path"] for m in metas] == ["data/demo_0", "data/demo_1", "data/demo_10"]
    assert all(m["control_hz"] == 20.0 and m["cameras"] == ["primary", "wrist"] for m in metas)
    assert _convert("hdf5", tmp_path / "lift.hdf5", "lift_demos", out, episodes_per_shard=2)["resumed"] == 2


def test_hdf5_options_and_cli_instruction(tmp_path, capsys):
    demos = write_hdf5(tmp_path / "src" / "a.hdf5", instruction=None)
    with pytest.raises(DataError, match=r"episode demo_0, field 'instruction': no instruction attribute"):
        _convert("hdf5", tmp_path / "src", "lift", tmp_path / "o1")
    out = tmp_path / "o2"
    assert conv.main(["--format", "hdf5", "--src", str(tmp_path / "src"), "--dataset", "lift", "--out", str(out),
                      "--image-size", "8", "--workers", "1", "--no-progress", "--instruction", "stack the blocks",
                      "--action-key", "actions", "--state-key", "robot0_eef_pos,obs/object",
                      "--camera-keys", "secondary=obs/agentview_image", "--control-hz", "5"]) == 0
    assert "3 episodes, 15 steps" in capsys.readouterr().out
    eps = [e for p in sorted(out.glob("*.tar")) for e in iter_shard(p, decode_images=True)]
    d = demos["demo_1"]
    np.testing.assert_array_equal(eps[1]["state"], np.concatenate([d["obs/robot0_eef_pos"], d["obs/object"]], 1)
                                  .astype(np.float32))
    assert eps[1]["instruction"] == "stack the blocks" and list(eps[1]["images"]) == ["secondary"]
    assert eps[1]["images"]["secondary"][0].shape == (8, 8, 3) and eps[1]["meta"]["control_hz"] == 5.0


def _h5_drop(name, d):
    if name == "demo_1":
        d.pop("obs/robot0_eef_quat")
    return d


def _h5_wide(name, d):
    if name == "demo_1":
        d["actions"] = d["actions"][:, :6]
    return d


def _h5_nan(name, d):
    if name == "demo_1":
        d["actions"][2, 5] = np.nan
    return d


def _h5_inf_state(name, d):
    if name == "demo_1":
        d["obs/robot0_eef_pos"][0, 0] = np.inf
    return d


def _h5_frames(name, d):
    if name == "demo_1":
        d["obs/robot0_eye_in_hand_image"] = d["obs/robot0_eye_in_hand_image"][:-1]
    return d


def _h5_rows(name, d):
    if name == "demo_1":
        d["obs/robot0_gripper_qpos"] = d["obs/robot0_gripper_qpos"][:-2]
    return d


@pytest.mark.parametrize("mutate,field,problem", [
    (_h5_drop, "obs/robot0_eef_quat", "missing key"),
    (_h5_wide, "actions", "shape mismatch: per-step shape (6,), expected (7,)"),
    (_h5_nan, "actions", "non-finite action value nan at step 2, dim 5"),
    (_h5_inf_state, "obs/robot0_eef_pos", "non-finite state value inf at step 0, dim 0"),
    (_h5_frames, "obs/robot0_eye_in_hand_image", "camera (wrist) has 5 frames, action has 6 rows"),
    (_h5_rows, "obs/robot0_gripper_qpos", "shape mismatch: 4 rows, expected 6"),
])
def test_hdf5_bad_demo_named_or_skipped(tmp_path, mutate, field, problem):
    write_hdf5(tmp_path / "bad.hdf5", mutate=mutate)
    with pytest.raises(DataError) as ei:
        _convert("hdf5", tmp_path / "bad.hdf5", "lift", tmp_path / "out")
    e = ei.value
    assert (e.dataset, e.episode, e.field) == ("lift", "demo_1", field) and e.file.endswith("bad.hdf5"), str(e)
    assert problem in str(e) and "bad.hdf5" in str(e)
    assert not list((tmp_path / "out").glob("*.tar"))
    s = _convert("hdf5", tmp_path / "bad.hdf5", "lift", tmp_path / "out2", skip_bad=True)
    assert (s["episodes"], s["skipped"]) == (2, 1)


def test_hdf5_bad_layout(tmp_path):
    import h5py

    write_hdf5(tmp_path / "a.hdf5")
    with h5py.File(tmp_path / "a.hdf5", "a") as f:
        f["data/demo_1"].attrs["num_samples"] = 99
    with pytest.raises(DataError, match=r"episode demo_1, field 'num_samples': attribute says 99, action has 6 rows"):
        _convert("hdf5", tmp_path / "a.hdf5", "lift", tmp_path / "o1")
    with pytest.raises(DataError, match=r"field 'obs/joints': missing state key") as ei:
        _convert("hdf5", tmp_path / "a.hdf5", "lift", tmp_path / "o2", state_key="obs/joints")
    assert "demo_0" in ei.value.file and "obs/robot0_eef_pos" in str(ei.value)
    with h5py.File(tmp_path / "b.hdf5", "w") as f:
        f.create_group("mask")
    with pytest.raises(DataError, match=r"b.hdf5', episode -, field 'data': missing group"):
        _convert("hdf5", tmp_path / "b.hdf5", "lift", tmp_path / "o3")


# ------------------------------------------------------------------ npz


def write_npz(root: Path, n: int = 3, mutate=None, images_key: bool = False) -> list[dict]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        T = 3 + i
        rng = np.random.default_rng(i)
        d = {"action": rng.normal(size=(T, 2)).astype(np.float32), "state": rng.normal(size=(T, 5)).astype(np.float32),
             "instruction": np.array(f"push block {i}")}
        if images_key:  # smooth (JPEG-friendly) frames
            d["images"] = np.stack([smooth_frame(t, i, S, S) for t in range(T)])
        else:
            d["image_primary"], d["image_wrist"] = _frames(T, i), _frames(T, i + 9)
        if mutate:
            d = mutate(i, d)
        np.savez(root / f"episode_{i}.npz", **d)
        out.append(d)
    return out


def test_npz_roundtrip_through_loader(tmp_path):
    eps = write_npz(tmp_path / "src")
    out = tmp_path / "out"
    s = _convert("npz", tmp_path / "src", "push_npz", out)
    assert (s["files"], s["episodes"], s["steps"], s["action_dim"], s["state_dim"]) == (1, 3, 12, 2, 5)
    samples = stream_samples(out, ("primary", "wrist"), S)
    assert len(samples) == 12
    for r in samples:
        d = eps[r["record"]]
        np.testing.assert_array_equal(r["action"], d["action"][r["t"]])
        np.testing.assert_array_equal(r["state"], d["state"][r["t"]])
        assert r["instruction"] == f"push block {r['record']}"
        np.testing.assert_allclose(r["images"][0].transpose(1, 2, 0), d["image_primary"][r["t"]], atol=1e-3)
        np.testing.assert_allclose(r["images"][1].transpose(1, 2, 0), d["image_wrist"][r["t"]], atol=1e-3)
    check_stats(out, "push_npz", [d["action"] for d in eps], [d["state"] for d in eps])


def test_npz_images_key_jpeg_and_cli(tmp_path, capsys):
    def chw_no_instruction(i, d):
        d["images"] = d["images"].transpose(0, 3, 1, 2)  # (T, 3, H, W)
        d.pop("instruction")
        return d

    eps = write_npz(tmp_path / "src", mutate=chw_no_instruction, images_key=True)
    out = tmp_path / "out"
    assert conv.main(["--format", "npz", "--src", str(tmp_path / "src"), "--dataset", "push", "--out", str(out),
                      "--image-size", str(S), "--workers", "1", "--no-progress", "--instruction", "push"]) == 0
    assert "3 episodes, 12 steps" in capsys.readouterr().out
    got = [e for p in sorted(out.glob("*.tar")) for e in iter_shard(p, decode_images=True)]
    for e, d in zip(got, eps):
        assert e["instruction"] == "push" and list(e["images"]) == ["primary"]
        want = d["images"].transpose(0, 2, 3, 1).astype(np.float64)
        assert np.abs(np.stack(e["images"]["primary"]) - want).mean() < 4  # JPEG q95


def _npz(fn):
    def m(i, d):
        return fn(d) if i == 1 else d
    return m


@pytest.mark.parametrize("mutate,field,problem", [
    (_npz(lambda d: {k: v for k, v in d.items() if k != "action"}), "action", "missing array"),
    (_npz(lambda d: {**d, "state": d["state"][:, :4]}), "state", "shape mismatch: per-step shape (4,), expected (5,)"),
    (_npz(lambda d: {**d, "action": np.where(np.arange(2) == 1, np.nan, d["action"]).astype(np.float32)}),
     "action", "non-finite action value nan at step 0, dim 1"),
    (_npz(lambda d: {**d, "image_wrist": d["image_wrist"][:2]}), "image_wrist", "camera (wrist) has 2 frames, action has 4 rows"),
    (_npz(lambda d: {k: v for k, v in d.items() if k != "instruction"}), "instruction", "no instruction array"),
    (_npz(lambda d: {**d, "image_primary": d["image_primary"].astype(np.int32)}), "image_primary", "expected uint8 images"),
])
def test_npz_bad_episode_named_or_skipped(tmp_path, mutate, field, problem):
    write_npz(tmp_path / "src", mutate=mutate)
    with pytest.raises(DataError) as ei:
        _convert("npz", tmp_path / "src", "push", tmp_path / "out")
    e = ei.value
    assert (e.dataset, e.episode, e.field) == ("push", "episode_1", field) and e.file.endswith("episode_1.npz"), str(e)
    assert problem in str(e)
    s = _convert("npz", tmp_path / "src", "push", tmp_path / "out2", skip_bad=True)
    assert (s["episodes"], s["skipped"]) == (2, 1)


def test_npz_bad_source(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.npz files"):
        _convert("npz", tmp_path / "empty", "push", tmp_path / "o1")
    write_npz(tmp_path / "src", n=1, mutate=lambda i, d: {**d, "meta": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(DataError, match=r"field 'meta': cannot load array .*object arrays are not supported"):
        _convert("npz", tmp_path / "src", "push", tmp_path / "o2")
    with pytest.raises(FileNotFoundError, match="features.json: missing; a key mapping \\(--action-key\\)"):
        conv.convert(tmp_path, "bridge", tmp_path / "o3", action_key="x", progress=False)  # rlds: checked there
    assert conv.main(["--format", "npz", "--src", str(tmp_path / "nope"), "--dataset", "push",
                      "--out", str(tmp_path / "o4")]) == 2
