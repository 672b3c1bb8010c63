"""RLDS (real OXE key layouts, hand-encoded) -> shards: conversion, audit without this code,
statistics, bad input, atomicity and resume."""

from __future__ import annotations

import io
import json
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from data_pipelines import convert as conv
from data_pipelines.rlds import DataError
from vla_ebt.data.shard_format import iter_shard
from data_pipelines.shards import ShardWriter
from tests.data_pipelines.test_data_fixture import LAYOUTS, make_episode, write_rlds
from vla_ebt.data.oxe_configs import apply_gripper, get_config, known_datasets
from vla_ebt.normalize import load_stats

# every registered Open X-Embodiment config (they carry a published version; sim configs don't)
OXE_CONFIGS = [n for n in known_datasets() if get_config(n).version]


def _audit(tar_path: Path) -> dict[str, dict]:
    """Read a shard with tarfile + numpy only (no project code)."""
    out: dict[str, dict] = {}
    with tarfile.open(tar_path) as tar:
        for m in tar.getmembers():
            key, _, ext = m.name.partition(".")
            data = tar.extractfile(m).read()
            d = out.setdefault(key, {"frames": {}})
            if ext.endswith(".npy"):
                d[ext[:-4]] = np.load(io.BytesIO(data))
            elif ext == "instruction.txt":
                d["instruction"] = data.decode()
            elif ext == "meta.json":
                d["meta"] = json.loads(data)
            else:
                role = ext.split(".")[0]
                d["frames"][role] = d["frames"].get(role, 0) + 1
    return out


def _convert(src, name, out, **kw):
    kw.setdefault("image_size", 16)
    kw.setdefault("workers", 1)
    return conv.convert(src, name, out, progress=False, **kw)


def test_registry_has_oxe_datasets_and_unknown_name_lists_known():
    names = known_datasets()
    for n in ["fractal20220817_data", "bridge", "taco_play", "jaco_play", "berkeley_autolab_ur5", "language_table",
              "droid", "reach2d"]:
        assert n in names
    assert get_config("droid").action_dim == 7 and get_config("language_table").action_dim == 2
    assert get_config("fractal20220817_data").state_dim == 8
    with pytest.raises(ValueError, match="known datasets: .*bridge"):
        get_config("bridgee")


def test_gripper_rel2abs():
    x = np.array([[0.0], [1.0], [0.0], [-1.0], [0.0]])
    assert apply_gripper(x, "rel_pm1_close_pos")[:, 0].tolist() == [1, 0, 0, 1, 1]


def test_every_registered_oxe_config_has_a_fixture_in_its_published_layout():
    assert {"bridge", "bridge_tfds", "fractal20220817_data", "taco_play", "jaco_play", "berkeley_autolab_ur5",
            "language_table", "droid"} <= set(OXE_CONFIGS)
    for name in OXE_CONFIGS:
        assert name in LAYOUTS, f"registered OXE config {name!r} has no fixture layout in tests/test_data_fixture.py"
        layout = {f"steps/{k}": v for k, v in LAYOUTS[name].items()}
        for key, (shape, kind) in get_config(name).required_step_keys().items():
            assert key in layout, (name, key)
            if kind != "string":
                assert tuple(layout[key][1]) == tuple(shape), (name, key)
        for key, (shape, _dtype) in get_config(name).extra_keys.items():  # documented extras are in the fixture too
            if key.startswith("steps/"):
                assert key in layout and tuple(layout[key][1]) == tuple(shape), (name, key)


def _expected(cfg, feats, T):
    """Standardized (action, state) from raw fixture features, straight from the config's parts."""
    def vec(parts):
        cols = [np.zeros((T, 0), np.float32)]
        for part in parts:
            x = np.asarray(feats[f"steps/{part.key}"][1], np.float32).reshape(T, -1)
            if part.take is not None:
                x = x[:, part.take[0]:part.take[1]]
            cols.append(apply_gripper(x, part.gripper))
        return np.concatenate(cols, 1)
    return vec(cfg.action), vec(cfg.state)


@pytest.mark.parametrize("name", OXE_CONFIGS)
def test_convert_real_layouts_end_to_end(tmp_path, name):
    seeds = [[1, 2], [3]]
    src = write_rlds(tmp_path / "src", name, seeds, instruction="put the cup on the plate")
    s = _convert(src, name, tmp_path / "out")
    assert s["files"] == 2 and s["episodes"] == 3 and s["skipped"] == 0
    cfg = get_config(name)
    shards = sorted((tmp_path / "out").glob("*.tar"))
    assert [p.name for p in shards] == [f"{name}-00000.tar", f"{name}-00001.tar"]
    eps = {}
    for p in shards:
        eps.update(_audit(p))
    assert len(eps) == 3
    all_actions = []
    for key, ep in eps.items():
        seed = int(ep["meta"]["file_path"].rsplit("_", 1)[1].split(".")[0])
        T = 4 + seed % 5
        feats = make_episode(name, T, seed)
        assert ep["action"].dtype == np.float32 and ep["action"].shape == (T, cfg.action_dim)
        assert ep["state"].dtype == np.float32 and ep["state"].shape == (T, cfg.state_dim)
        assert ep["instruction"] == "put the cup on the plate"
        assert ep["meta"]["dataset"] == name and ep["meta"]["num_steps"] == T and ep["meta"]["step_ids"] == list(range(T))
        assert ep["frames"] == {r: T for r in cfg.camera_roles()}
        f = lambda k: np.asarray(feats[f"steps/{k}"][1], np.float32).reshape(T, -1)  # noqa: E731
        if name == "bridge":
            want_a = np.concatenate([f("action/world_vector"), f("action/rotation_delta"), f("action/open_gripper")], 1)
            np.testing.assert_array_equal(ep["action"], want_a)
            np.testing.assert_array_equal(ep["state"], f("observation/state"))
        elif name == "language_table":
            np.testing.assert_array_equal(ep["action"], f("action"))
            np.testing.assert_array_equal(ep["state"], f("observation/effector_translation"))
        elif name == "droid":
            want_a = np.concatenate([f("action_dict/cartesian_velocity"), 1 - f("action_dict/gripper_position")], 1)
            np.testing.assert_array_equal(ep["action"], want_a)
        elif name == "taco_play":
            np.testing.assert_array_equal(ep["action"][:, :6], f("action/rel_actions_world")[:, :6])
            np.testing.assert_array_equal(ep["state"], f("observation/robot_obs")[:, :7])
        elif name == "bridge_tfds":
            np.testing.assert_array_equal(ep["action"], f("action"))  # flat 7-D, gripper already 1 = open
            np.testing.assert_array_equal(ep["state"], f("observation/state"))
        elif name == "jaco_play":
            want_a = np.concatenate([f("action/world_vector"),
                                     apply_gripper(f("action/gripper_closedness_action"), "rel_pm1_close_pos")], 1)
            np.testing.assert_array_equal(ep["action"], want_a)
            np.testing.assert_array_equal(ep["state"], f("observation/end_effector_cartesian_pos"))
        elif name == "berkeley_autolab_ur5":
            np.testing.assert_array_equal(ep["state"], f("observation/robot_state")[:, 6:14])
            np.testing.assert_array_equal(ep["action"][:, :6], np.concatenate(
                [f("action/world_vector"), f("action/rotation_delta")], 1))
        want_a, want_s = _expected(cfg, feats, T)
        np.testing.assert_array_equal(ep["action"], want_a)
        np.testing.assert_array_equal(ep["state"], want_s)
        all_actions.append(ep["action"])
    # statistics beside the shards == numpy over every step
    st = load_stats(tmp_path / "out" / "stats.json")[name]
    a = np.concatenate(all_actions).astype(np.float64)
    np.testing.assert_allclose(st.action.mean, a.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(st.action.std, a.std(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(st.action.q01, np.quantile(a, 0.01, axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(st.action.q99, np.quantile(a, 0.99, axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(st.action.min, a.min(0)), np.testing.assert_allclose(st.action.max, a.max(0))
    assert st.num_steps == a.shape[0] and st.num_episodes == 3
    # the project reader agrees with the plain-tar audit
    got = {e["__key__"]: e for p in shards for e in iter_shard(p, decode_images=True)}
    for k, ep in eps.items():
        np.testing.assert_array_equal(got[k]["action"], ep["action"])
        assert got[k]["images"]["primary"][0].shape == (16, 16, 3)


def test_cli_and_console_script_entry(tmp_path, capsys):
    src = write_rlds(tmp_path / "src", "bridge", [[1]])
    assert conv.main(["--src", str(src), "--dataset", "bridge", "--out", str(tmp_path / "o"), "--image-size", "8",
                      "--workers", "1", "--no-progress"]) == 0
    assert "1 episodes" in capsys.readouterr().out
    assert conv.main(["--src", str(src), "--dataset", "no_such_robot", "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'no_such_robot'" in err and "bridge" in err and "droid" in err
    text = Path(__file__).resolve().parents[2].joinpath("pyproject.toml").read_text()
    assert 'vla-ebt-convert = "data_pipelines.convert:main"' in text


# ------------------------------------------------------------------ bad input


def _drop(key):
    def m(seed, feats):
        if seed == 2:
            feats.pop(key)
        return feats
    return m


def _short(key):
    def m(seed, feats):
        if seed == 2:
            kind, v = feats[key]
            feats[key] = (kind, v[:-1])
        return feats
    return m


def _nan(seed, feats):
    if seed == 2:
        kind, v = feats["steps/action/world_vector"]
        v = v.copy()
        v[4] = np.nan
        feats["steps/action/world_vector"] = (kind, v)
    return feats


def _inf_state(seed, feats):
    if seed == 2:
        kind, v = feats["steps/observation/state"]
        v = v.copy()
        v[0] = np.inf
        feats["steps/observation/state"] = (kind, v)
    return feats


def _empty_instr(seed, feats):
    if seed == 2:
        kind, v = feats["steps/observation/natural_language_instruction"]
        feats["steps/observation/natural_language_instruction"] = (kind, [b"  "] * len(v))
    return feats


@pytest.mark.parametrize("mutate,field,problem", [
    (_drop("steps/action/world_vector"), "steps/action/world_vector", "missing key"),
    (_short("steps/action/rotation_delta"), "steps/action/rotation_delta", "wrong shape"),
    (_short("steps/observation/image"), "steps/observation/image", "wrong shape"),
    (_nan, "steps/action/world_vector", "non-finite action"),
    (_inf_state, "steps/observation/state", "non-finite state"),
    (_empty_instr, "steps/observation/natural_language_instruction", "empty language instruction"),
])
def test_bad_episode_named_or_skipped(tmp_path, mutate, field, problem):
    src = write_rlds(tmp_path / "src", "bridge", [[1, 2, 3]], mutate=mutate)
    with pytest.raises(DataError) as ei:
        _convert(src, "bridge", tmp_path / "out")
    e = ei.value
    assert (e.dataset, e.episode, e.field) == ("bridge", 1, field) and e.file.endswith("bridge-train.tfrecord-00000-of-00001")
    msg = str(e)
    assert "'bridge'" in msg and "tfrecord-00000-of-00001" in msg and "episode 1" in msg and field in msg and problem in msg
    assert not list((tmp_path / "out").glob("*.tar")) and not list((tmp_path / "out").glob(".*"))  # nothing half-written
    s = _convert(src, "bridge", tmp_path / "out2", skip_bad=True)
    assert s["episodes"] == 2 and s["skipped"] == 1
    man = json.loads((tmp_path / "out2" / "manifest.json").read_text())
    assert man["skipped"][0]["field"] == field and man["skipped"][0]["episode"] == 1


def _raw_file(src: Path) -> Path:
    return next(src.glob("*tfrecord-00000-*"))


def test_crc_mismatch_and_truncation(tmp_path):
    src = write_rlds(tmp_path / "src", "bridge", [[1, 2, 3]])
    f = _raw_file(src)
    raw = bytearray(f.read_bytes())
    n0 = struct.unpack("<Q", raw[:8])[0]
    rec1 = 12 + n0 + 4  # start of record 1
    good = bytes(raw)
    raw[rec1 + 12 + 50] ^= 0xFF  # corrupt record 1's data
    f.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"episode 1, field '<tfrecord>': .*data CRC mismatch"):
        _convert(src, "bridge", tmp_path / "o1")
    assert _convert(src, "bridge", tmp_path / "o2", skip_bad=True)["episodes"] == 2
    # corrupted length field
    raw = bytearray(good)
    raw[rec1] ^= 0x01
    f.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="length CRC mismatch"):
        _convert(src, "bridge", tmp_path / "o3")
    # truncated file: the last record is cut short
    f.write_bytes(good[:-100])
    with pytest.raises(DataError, match=r"episode 2, field '<tfrecord>': .*truncated record") as ei:
        _convert(src, "bridge", tmp_path / "o4")
    assert "bridge-train.tfrecord-00000-of-00001" in str(ei.value)
    s = _convert(src, "bridge", tmp_path / "o5", skip_bad=True)
    assert s["episodes"] == 2 and s["skipped"] == 1


def test_features_json_mismatch_named(tmp_path):
    src = write_rlds(tmp_path / "src", "bridge", [[1]])
    fj = json.loads((src / "features.json").read_text())
    obs = fj["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"]["features"]["observation"]
    obs["featuresDict"]["features"]["state"]["tensor"]["shape"]["dimensions"] = ["8"]
    (src / "features.json").write_text(json.dumps(fj))
    with pytest.raises(DataError, match=r"features.json.*steps/observation/state.*\(7,\).*\(8,\)"):
        _convert(src, "bridge", tmp_path / "o")
    # a config that does not fit the dataset (droid config on bridge data) fails before any work
    src2 = write_rlds(tmp_path / "src2", "bridge", [[1]])
    with pytest.raises(DataError, match="dataset 'droid'.*steps/observation/exterior_image_1_left.*missing"):
        _convert(src2, "droid", tmp_path / "o2")


# ------------------------------------------------------------------ layouts as served; key mappings


def test_bridge_layout_chosen_from_features_json(tmp_path, capsys):
    # the tensorflow-datasets catalog's bridge (image_0..3, flat action) converts as `bridge`
    src = write_rlds(tmp_path / "tfds", "bridge_tfds", [[1, 2], [3]], instruction="wipe the table")
    assert src.parent.name == "bridge" and (src / "bridge-train.tfrecord-00000-of-00002").exists()
    s = _convert(src, "bridge", tmp_path / "out")
    assert (s["episodes"], s["action_dim"], s["state_dim"]) == (3, 7, 7)
    assert "matches the registered layout 'bridge_tfds'" in capsys.readouterr().err
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["settings"]["layout"] == "bridge_tfds" and man["config"]["cameras"]["primary"][0] == "observation/image_0"
    assert sorted(man["shards"]) == ["bridge-00000.tar", "bridge-00001.tar"]
    for key, ep in _audit(tmp_path / "out" / "bridge-00000.tar").items():
        seed = int(ep["meta"]["file_path"].rsplit("_", 1)[1].split(".")[0])
        T = 4 + seed % 5
        feats = make_episode("bridge_tfds", T, seed)
        np.testing.assert_array_equal(ep["action"], np.asarray(feats["steps/action"][1], np.float32).reshape(T, 7))
        assert ep["meta"]["dataset"] == "bridge" and ep["frames"] == {"primary": T}
        assert ep["instruction"] == "wipe the table"
    assert list(load_stats(tmp_path / "out" / "stats.json")) == ["bridge"]
    # the OXE release layout still converts as `bridge`, with its own config
    s2 = _convert(write_rlds(tmp_path / "oxe", "bridge", [[1]]), "bridge", tmp_path / "out2")
    man2 = json.loads((tmp_path / "out2" / "manifest.json").read_text())
    assert s2["episodes"] == 1 and "layout" not in man2["settings"]
    assert man2["config"]["cameras"]["primary"][0] == "observation/image"
    # neither layout: the error names features.json, the field and both layouts' first problem
    with pytest.raises(DataError) as ei:
        _convert(write_rlds(tmp_path / "d", "droid", [[1]]), "bridge", tmp_path / "o3")
    msg = str(ei.value)
    assert ei.value.field == "steps/observation/image" and ei.value.file.endswith("features.json")
    assert "missing from features.json" in msg and "'bridge_tfds': field 'steps/observation/image_0' missing" in msg


MY_ARM = {  # an unregistered RLDS layout
    "observation/front_rgb": ("image", (120, 160, 3), "uint8"),
    "observation/wrist_rgb": ("image", (64, 64, 3), "uint8"),
    "observation/joints": ("float", (8,), "float32"),
    "observation/tcp": ("float", (7,), "float32"),
    "action/delta": ("float", (6,), "float32"),
    "action/gripper": ("float", (1,), "float32"),
    "task": ("string", (), "string"),
}


def test_cli_key_mapping_converts_an_unregistered_layout(tmp_path, capsys):
    src = write_rlds(tmp_path / "src", "my_arm", [[1, 2], [3]], layout=MY_ARM, instruction="stack the cups")
    assert "my_arm" not in known_datasets()
    argv = ["--src", str(src), "--dataset", "my_arm", "--out", str(tmp_path / "out"), "--image-size", "16",
            "--workers", "1", "--no-progress",
            "--camera-keys", "primary=observation/front_rgb,wrist=steps/observation/wrist_rgb",
            "--state-key", "observation/joints[0:7],observation/tcp[:3]",
            "--action-key", "action/delta,action/gripper:pm1_open_pos",
            "--instruction-key", "task", "--control-hz", "12.5"]
    assert conv.main(argv) == 0, capsys.readouterr().err
    assert "3 episodes" in capsys.readouterr().out
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["settings"]["mapping"]["action_key"] == ["action/delta", "action/gripper:pm1_open_pos"]
    n = 0
    for p in sorted((tmp_path / "out").glob("*.tar")):
        for key, ep in _audit(p).items():
            seed = int(ep["meta"]["file_path"].rsplit("_", 1)[1].split(".")[0])
            T = 4 + seed % 5
            feats = make_episode("my_arm", T, seed, layout=MY_ARM)
            f = lambda k: np.asarray(feats[f"steps/{k}"][1], np.float32).reshape(T, -1)  # noqa: E731
            np.testing.assert_array_equal(ep["action"], np.concatenate(
                [f("action/delta"), (np.clip(f("action/gripper"), -1, 1) + 1) / 2], 1))
            np.testing.assert_array_equal(ep["state"], np.concatenate(
                [f("observation/joints")[:, :7], f("observation/tcp")[:, :3]], 1))
            assert ep["frames"] == {"primary": T, "wrist": T} and ep["instruction"] == "stack the cups"
            assert ep["meta"]["control_hz"] == 12.5 and ep["meta"]["action_encoding"] == "unspecified"
            n += 1
    assert n == 3
    # a rerun with the same mapping resumes; another mapping starts over
    assert conv.main(argv) == 0 and "2 already done" in capsys.readouterr().out
    assert conv.main(argv[:-2]) == 0 and "0 already done" in capsys.readouterr().out
    # defaults: images by name (wrist-like -> wrist), no state; `task` is not a default instruction key,
    # so without --instruction-key every episode gets the --instruction text
    s = _convert(src, "my_arm", tmp_path / "o2", action_key="action/delta", state_key="none",
                 instruction="do it")
    assert (s["episodes"], s["action_dim"], s["state_dim"]) == (3, 6, 0)
    ep = next(iter(_audit(tmp_path / "o2" / "my_arm-00000.tar").values()))
    assert ep["instruction"] == "do it"
    assert ep["frames"] == {"primary": 5, "wrist": 5} and ep["state"].shape == (5, 0)
    man = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert man["config"]["cameras"]["wrist"][0] == "observation/wrist_rgb"
    # with the key, the data's own instruction wins and --instruction only fills empty ones
    _convert(src, "my_arm", tmp_path / "o3", action_key="action/delta", state_key="none", instruction="do it",
             instruction_key="task")
    assert next(iter(_audit(tmp_path / "o3" / "my_arm-00000.tar").values()))["instruction"] == "stack the cups"


def test_key_mapping_over_a_registered_config(tmp_path):
    # bridge (TFDS layout) with its secondary camera and a binarized-free relative gripper mapping
    src = write_rlds(tmp_path / "src", "bridge_tfds", [[1]])
    s = _convert(src, "bridge", tmp_path / "out", camera_keys="primary=observation/image_0,secondary=observation/image_1")
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["settings"]["layout"] == "bridge_tfds" and s["action_dim"] == 7
    assert man["config"]["action_encoding"] == "eef_delta_xyz_rpy_gripper"  # action parts kept from the config
    ep = next(iter(_audit(tmp_path / "out" / "bridge-00000.tar").values()))
    assert ep["frames"] == {"primary": 5, "secondary": 5}


@pytest.mark.parametrize("option,value,field,problem", [
    ("--action-key", "action/nope", "steps/action/nope", "action key missing from features.json; numeric step keys"),
    ("--state-key", "observation/joints[5:2]", "steps/observation/joints", "empty slice"),
    ("--state-key", "task", "steps/task", "must be a numeric per-step tensor"),
    ("--camera-keys", "primary=observation/joints", "steps/observation/joints", "camera (primary) key is not an"),
    ("--camera-keys", "wrist=observation/cam9", "steps/observation/cam9", "camera (wrist) key missing"),
    ("--instruction-key", "observation/text", "steps/observation/text", "instruction key missing from features.json"),
    ("--action-key", "action/delta:squeeze", "action/delta:squeeze", "unknown gripper transform 'squeeze'"),
])
def test_key_mapping_naming_a_missing_key_fails_clearly(tmp_path, capsys, option, value, field, problem):
    src = write_rlds(tmp_path / "src", "my_arm", [[1]], layout=MY_ARM)
    base = {"--action-key": "action/delta", "--state-key": "observation/joints", "--instruction-key": "task",
            "--camera-keys": "primary=observation/front_rgb"}
    base[option] = value
    argv = ["--src", str(src), "--dataset", "my_arm", "--out", str(tmp_path / "out"), "--no-progress",
            *[x for kv in base.items() for x in kv]]
    assert conv.main(argv) == 2
    err = capsys.readouterr().err
    assert f"dataset 'my_arm', file '{src / 'features.json'}'" in err and f"field '{field}'" in err, err
    assert problem in err, err
    assert not (tmp_path / "out").exists()  # checked before any work
    with pytest.raises(DataError) as ei:
        _convert(src, "my_arm", tmp_path / "o", **{option[2:].replace("-", "_"): value,
                                                  **{k[2:].replace("-", "_"): v for k, v in base.items() if k != option}})
    assert ei.value.field == field and ei.value.episode is None


def test_unregistered_dataset_without_mapping_points_to_it(tmp_path, capsys):
    src = write_rlds(tmp_path / "src", "my_arm", [[1]], layout=MY_ARM)
    assert conv.main(["--src", str(src), "--dataset", "my_arm", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'my_arm'" in err and "--action-key" in err
    # no steps/action and no --action-key; no observation/state and no --state-key
    assert conv.main(["--src", str(src), "--dataset", "my_arm", "--out", str(tmp_path / "o"),
                      "--state-key", "none"]) == 2
    assert "field 'steps/action': no --action-key given" in capsys.readouterr().err
    assert conv.main(["--src", str(src), "--dataset", "my_arm", "--out", str(tmp_path / "o"),
                      "--action-key", "action/delta"]) == 2
    assert "field 'steps/observation/state': no --state-key given" in capsys.readouterr().err


def test_data_error_pickles_with_its_fields():
    import pickle

    e = pickle.loads(pickle.dumps(DataError("bridge", "f.tfrecord", 3, "steps/action", "bad")))
    assert (e.dataset, e.file, e.episode, e.field, e.problem) == ("bridge", "f.tfrecord", 3, "steps/action", "bad")
    assert str(e) == "dataset 'bridge', file 'f.tfrecord', episode 3, field 'steps/action': bad"


# ------------------------------------------------------------------ atomicity / resume / parallel


def test_interrupted_conversion_leaves_no_readable_partial_shard_and_resumes(tmp_path, monkeypatch):
    src = write_rlds(tmp_path / "src", "bridge", [[1, 2], [3, 4], [5, 6]])
    out = tmp_path / "out"
    real_write = ShardWriter.write
    calls = {"n": 0}

    def flaky(self, ep, key, extra_meta=None):
        calls["n"] += 1
        if calls["n"] == 4:  # second episode of the second shard
            raise KeyboardInterrupt
        return real_write(self, ep, key, extra_meta)

    monkeypatch.setattr(ShardWriter, "write", flaky)
    with pytest.raises(KeyboardInterrupt):
        _convert(src, "bridge", out)
    monkeypatch.setattr(ShardWriter, "write", real_write)
    assert sorted(p.name for p in out.glob("*.tar")) == ["bridge-00000.tar"]
    man = json.loads((out / "manifest.json").read_text())
    assert list(man["shards"]) == ["bridge-00000.tar"] and man["complete"] is False
    from vla_ebt.data.stream import dataset_info

    # a SIGKILLed writer would leave its temp file: never listed, never read, cleaned on resume
    (out / ".bridge-00001.tar.123-abcdef12.tmp").write_bytes(b"partial")
    (out / "_stats" / ".bridge-00001.tar.npz.123-abcdef12.tmp").write_bytes(b"partial")
    with pytest.raises(FileNotFoundError):  # no stats.json yet: the loader refuses an unfinished dataset
        dataset_info(out)
    mtime0 = (out / "bridge-00000.tar").stat().st_mtime_ns
    s = _convert(src, "bridge", out)
    assert (s["resumed"], s["converted"], s["episodes"]) == (1, 2, 6)
    assert (out / "bridge-00000.tar").stat().st_mtime_ns == mtime0  # finished shard skipped
    assert not list(out.glob(".*.tmp")) and not list(out.glob("_stats/.*.tmp"))
    assert [p.name for p in dataset_info(out)["shards"]] == [f"bridge-{i:05d}.tar" for i in range(3)]
    # a rerun converts nothing
    assert _convert(src, "bridge", out)["converted"] == 0
    # a clean conversion gives the same shards, byte for byte
    _convert(src, "bridge", tmp_path / "clean")
    for i in range(3):
        n = f"bridge-{i:05d}.tar"
        assert (out / n).read_bytes() == (tmp_path / "clean" / n).read_bytes()


def test_parallel_workers(tmp_path):
    src = write_rlds(tmp_path / "src", "language_table", [[1], [2], [3], [4]])
    s = _convert(src, "language_table", tmp_path / "out", workers=2)
    assert s["converted"] == 4 and s["episodes"] == 4
    _convert(src, "language_table", tmp_path / "serial", workers=1)
    for i in range(4):
        n = f"language_table-{i:05d}.tar"
        assert (tmp_path / "out" / n).read_bytes() == (tmp_path / "serial" / n).read_bytes()
