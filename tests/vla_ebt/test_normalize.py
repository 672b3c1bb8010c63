"""Tests for vla_ebt.normalize: statistics, (de)serialization and the batched Normalizer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vla_ebt.normalize import (
    MODES,
    DatasetStats,
    FeatureStats,
    NormalizationConfig,
    Normalizer,
    load_stats,
    pad_last_dim,
    save_stats,
)

MAX_A, MAX_S = 8, 6


def _data(seed: int, n: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(loc=rng.uniform(-2, 2, d), scale=rng.uniform(0.1, 3.0, d), size=(n, d))


@pytest.fixture(scope="module")
def raw() -> dict[str, dict[str, np.ndarray]]:
    # "bridge": 7-dim actions, 5-dim states; "aloha": 4-dim actions, 6-dim states.
    return {
        "bridge": {"action": _data(1, 500, 7), "state": _data(2, 500, 5)},
        "aloha": {"action": _data(3, 400, 4), "state": _data(4, 400, 6)},
    }


@pytest.fixture(scope="module")
def stats(raw) -> dict[str, DatasetStats]:
    return {
        name: DatasetStats(
            action=FeatureStats.from_array(v["action"]),
            state=FeatureStats.from_array(v["state"]),
            num_episodes=10,
            num_steps=len(v["action"]),
        )
        for name, v in raw.items()
    }


def _batch(raw, norm: Normalizer, names: list[str], seed: int = 0, horizon: int = 3):
    """Padded raw actions (B, H, MAX_A) / states (B, MAX_S) drawn from each dataset's rows."""
    rng = np.random.default_rng(seed)
    acts, states = [], []
    for n in names:
        a = raw[n]["action"][rng.integers(0, len(raw[n]["action"]), horizon)]
        s = raw[n]["state"][rng.integers(0, len(raw[n]["state"]))]
        acts.append(pad_last_dim(torch.tensor(a, dtype=torch.float32), MAX_A))
        states.append(pad_last_dim(torch.tensor(s, dtype=torch.float32), MAX_S))
    return torch.stack(acts), torch.stack(states), norm.embodiment_ids(names)


def _constant_gripper_stats() -> dict[str, DatasetStats]:
    x = _data(5, 300, 3)
    x[:, 2] = 0.75  # constant gripper dim
    return {"const": DatasetStats(action=FeatureStats.from_array(x), state=None,
                                  num_episodes=1, num_steps=300)}


# ------------------------------------------------------------------ FeatureStats


def test_from_array_matches_numpy():
    x = _data(0, 257, 5)
    mask = np.arange(257) % 3 != 0
    fs = FeatureStats.from_array(x, mask=mask)
    xm = x[mask]
    np.testing.assert_array_equal(fs.mean, xm.mean(0))
    np.testing.assert_array_equal(fs.std, xm.std(0))
    np.testing.assert_array_equal(fs.min, xm.min(0))
    np.testing.assert_array_equal(fs.max, xm.max(0))
    np.testing.assert_array_equal(fs.q01, np.quantile(xm, 0.01, axis=0))
    np.testing.assert_array_equal(fs.q99, np.quantile(xm, 0.99, axis=0))
    assert fs.count == int(mask.sum()) and fs.dim == 5


def test_from_array_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        FeatureStats.from_array(np.zeros(5))
    with pytest.raises(ValueError, match="no valid rows"):
        FeatureStats.from_array(np.zeros((3, 2)), mask=np.zeros(3, bool))
    with pytest.raises(ValueError, match="non-finite"):
        FeatureStats.from_array(np.array([[0.0, np.nan]]))


def test_feature_stats_json_roundtrip_exact():
    fs = FeatureStats.from_array(_data(7, 100, 6))
    back = FeatureStats.from_dict(json.loads(json.dumps(fs.to_dict())))
    assert back == fs


def test_feature_stats_validation_messages():
    good = FeatureStats.from_array(_data(8, 50, 3)).to_dict()

    d = dict(good)
    del d["q99"]
    with pytest.raises(ValueError, match=r"missing field.*q99"):
        FeatureStats.from_dict(d)

    d = dict(good, std=good["std"][:2])
    with pytest.raises(ValueError, match=r"field 'std': expected 3 dims.*got 2"):
        FeatureStats.from_dict(d)

    d = dict(good, mean=[good["mean"][0], float("nan"), good["mean"][2]])
    with pytest.raises(ValueError, match=r"field 'mean': expected finite.*dim 1"):
        FeatureStats.from_dict(d)

    d = dict(good, max=[math.inf] * 3)
    with pytest.raises(ValueError, match=r"field 'max': expected finite"):
        FeatureStats.from_dict(d)

    d = dict(good, extra=[1.0])
    with pytest.raises(ValueError, match=r"unknown field.*extra"):
        FeatureStats.from_dict(d)

    d = dict(good, q01=good["q99"], q99=good["q01"])
    with pytest.raises(ValueError, match=r"q01 <= q99"):
        FeatureStats.from_dict(d)


# ------------------------------------------------------------------ stats files


def test_stats_file_roundtrip_exact(tmp_path, stats):
    p = tmp_path / "sub" / "stats.json"
    save_stats(p, stats)
    assert load_stats(p) == stats
    assert not [f for f in p.parent.iterdir() if f.name != "stats.json"]  # no tmp files left


def test_load_stats_errors_name_file_and_key(tmp_path, stats):
    p = tmp_path / "stats.json"
    save_stats(p, stats)
    d = json.loads(p.read_text())
    d["datasets"]["bridge"]["action"]["q99"] = d["datasets"]["bridge"]["action"]["q99"][:3]
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError) as ei:
        load_stats(p)
    msg = str(ei.value)
    assert str(p) in msg and "bridge" in msg and "action" in msg and "q99" in msg

    d = json.loads(json.dumps({"format_version": 1, "datasets": {"aloha": {"action": {}}}}))
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"aloha.*missing field"):
        load_stats(p)


# ------------------------------------------------------------------ Normalizer


@pytest.mark.parametrize("mode", MODES)
def test_roundtrip_each_mode(raw, stats, mode):
    cfg = NormalizationConfig(action_mode=mode, state_mode=mode, clip=False)
    norm = Normalizer(stats, cfg, max_action_dim=MAX_A, max_state_dim=MAX_S)
    a, s, emb = _batch(raw, norm, ["bridge", "aloha", "aloha", "bridge"])
    torch.testing.assert_close(norm.unnormalize_action(norm.normalize_action(a, emb), emb), a,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(norm.unnormalize_state(norm.normalize_state(s, emb), emb), s,
                               atol=1e-5, rtol=0)
    # (B, D) actions and (B, To, S) states too
    torch.testing.assert_close(norm.unnormalize_action(norm.normalize_action(a[:, 0], emb), emb),
                               a[:, 0], atol=1e-5, rtol=0)
    s3 = s.unsqueeze(1).repeat(1, 2, 1)
    torch.testing.assert_close(norm.unnormalize_state(norm.normalize_state(s3, emb), emb), s3,
                               atol=1e-5, rtol=0)


def test_roundtrip_with_clip_inside_range(stats):
    norm = Normalizer(stats, NormalizationConfig(), MAX_A, MAX_S)
    e = norm.embodiment_id("bridge")
    fs = stats["bridge"].action
    w = torch.rand(5, 2, fs.dim, dtype=torch.float64)
    a = torch.tensor(fs.q01) + w * (torch.tensor(fs.q99) - torch.tensor(fs.q01))
    a = pad_last_dim(a.float(), MAX_A)
    emb = torch.full((5,), e)
    torch.testing.assert_close(norm.unnormalize_action(norm.normalize_action(a, emb), emb), a,
                               atol=1e-5, rtol=0)


def test_quantile_maps_q01_q99_to_pm1_and_clips(stats):
    norm = Normalizer(stats, NormalizationConfig(action_mode="quantile"), MAX_A, MAX_S)
    for name in ("aloha", "bridge"):
        fs = stats[name].action
        q = pad_last_dim(torch.tensor([fs.q01, fs.q99], dtype=torch.float32), MAX_A)
        emb = torch.full((2,), norm.embodiment_id(name))
        y = norm.normalize_action(q, emb)
        d = fs.dim
        torch.testing.assert_close(y[0, :d], torch.full((d,), -1.0), atol=1e-5, rtol=0)
        torch.testing.assert_close(y[1, :d], torch.full((d,), 1.0), atol=1e-5, rtol=0)
        # beyond the range: clipped to [-1, 1] (clip=True default)
        far = pad_last_dim(torch.tensor([fs.max], dtype=torch.float32) * 10 + 100, MAX_A)
        assert norm.normalize_action(far, emb[:1])[0, :d].max() <= 1.0
        # model outputs beyond [-1, 1] are clamped before unnormalizing -> never past q99
        out = norm.unnormalize_action(torch.full((1, MAX_A), 5.0), emb[:1])
        torch.testing.assert_close(out[0, :d], torch.tensor(fs.q99, dtype=torch.float32),
                                   atol=1e-5, rtol=0)
    unclipped = Normalizer(stats, NormalizationConfig(clip=False), MAX_A, MAX_S)
    emb = torch.tensor([unclipped.embodiment_id("bridge")])
    far = pad_last_dim(torch.tensor([stats["bridge"].action.max], dtype=torch.float32) + 100, MAX_A)
    assert unclipped.normalize_action(far, emb)[0, :7].min() > 1.0


def test_padded_dims_zero_and_mixed_embodiments(raw, stats):
    norm = Normalizer(stats, NormalizationConfig(), MAX_A, MAX_S)
    names = ["aloha", "bridge", "aloha"]
    a, s, emb = _batch(raw, norm, names)
    a = a.clone()
    a[..., 7:] = 123.0  # garbage in padding is ignored
    a[0, :, 4:] = float("nan")
    na, ns = norm.normalize_action(a, emb), norm.normalize_state(s, emb)
    assert torch.isfinite(na).all()
    amask, smask = norm.action_dim_mask(emb), norm.state_dim_mask(emb)
    assert amask.shape == (3, MAX_A) and amask.dtype == torch.bool
    assert amask.sum(1).tolist() == [4, 7, 4] and smask.sum(1).tolist() == [6, 5, 6]
    assert (na[~amask.unsqueeze(1).expand_as(na)] == 0).all()
    assert (ns[~smask] == 0).all()
    ua = norm.unnormalize_action(torch.randn(3, 3, MAX_A), emb)
    us = norm.unnormalize_state(torch.randn(3, MAX_S), emb)
    assert (ua[~amask.unsqueeze(1).expand_as(ua)] == 0).all() and (us[~smask] == 0).all()
    # each row equals normalizing that row alone with its own stats (no cross-talk)
    for i, n in enumerate(names):
        fs = stats[n].action
        lo, hi = np.array(fs.q01), np.array(fs.q99)
        ref = np.clip((a[i, :, : fs.dim].double().numpy() - (lo + hi) / 2) / ((hi - lo) / 2), -1, 1)
        np.testing.assert_allclose(na[i, :, : fs.dim].numpy(), ref, atol=1e-5)


def test_embodiment_without_state(raw, stats):
    st = dict(stats, nostate=DatasetStats(action=stats["aloha"].action, state=None))
    norm = Normalizer(st, NormalizationConfig(), MAX_A, MAX_S)
    emb = norm.embodiment_ids(["nostate", "bridge"])
    assert norm.state_dim_mask(emb)[0].sum() == 0
    assert (norm.normalize_state(torch.randn(2, MAX_S), emb)[0] == 0).all()
    assert norm.state_dim("nostate") == 0 and norm.action_dim("bridge") == 7


def test_degenerate_error_names_dataset_feature_dim():
    with pytest.raises(ValueError) as ei:
        Normalizer(_constant_gripper_stats(), NormalizationConfig(), max_action_dim=4, max_state_dim=0)
    msg = str(ei.value)
    assert "'const'" in msg and "'action'" in msg and "dim 2" in msg and "passthrough_dim" in msg


@pytest.mark.parametrize("mode", ["quantile", "min_max", "mean_std"])
def test_degenerate_passthrough_maps_to_zero_and_back_to_constant(mode):
    st = _constant_gripper_stats()
    cfg = NormalizationConfig(action_mode=mode, on_degenerate="passthrough_dim", clip=False)
    norm = Normalizer(st, cfg, max_action_dim=4, max_state_dim=0)
    emb = torch.zeros(2, dtype=torch.long)
    a = pad_last_dim(torch.tensor(_data(9, 2, 3), dtype=torch.float32), 4)
    a[:, 2] = torch.tensor([0.75, 50.0])  # even a wildly off value must not leak through
    y = norm.normalize_action(a, emb)
    assert (y[:, 2] == 0).all() and (y[:, 3] == 0).all()
    assert norm.action_degenerate_mask(emb)[0].tolist() == [False, False, True, False]
    back = norm.unnormalize_action(torch.randn(2, 5, 4) * 3, emb)
    assert torch.allclose(back[..., 2], torch.tensor(0.75))
    assert (back[..., 3] == 0).all()
    torch.testing.assert_close(norm.unnormalize_action(y, emb)[:, :2], a[:, :2], atol=1e-5, rtol=0)


def test_unknown_embodiment_is_loud(stats):
    norm = Normalizer(stats, NormalizationConfig(), MAX_A, MAX_S)
    assert norm.names == ("aloha", "bridge")
    with pytest.raises(ValueError, match=r"'bridge_v2'.*aloha.*bridge"):
        norm.embodiment_id("bridge_v2")
    with pytest.raises(ValueError, match="known names"):
        norm.normalize_action(torch.zeros(1, MAX_A), torch.tensor([2]))
    with pytest.raises(ValueError, match="last dim 8"):
        norm.normalize_action(torch.zeros(1, 7), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\(2,\)"):
        norm.normalize_action(torch.zeros(2, MAX_A), torch.tensor([0]))


def test_max_dim_too_small(stats):
    with pytest.raises(ValueError, match="max_action_dim=6"):
        Normalizer(stats, NormalizationConfig(), max_action_dim=6, max_state_dim=MAX_S)


def test_config_validation():
    with pytest.raises(ValueError, match="action_mode"):
        NormalizationConfig(action_mode="zscore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_degenerate"):
        NormalizationConfig(on_degenerate="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps"):
        NormalizationConfig(eps=0.0)
    with pytest.raises(ValueError, match="unknown key"):
        NormalizationConfig.from_dict({"action_mod": "quantile"})


def test_normalizer_dict_json_and_state_dict_roundtrip(tmp_path, raw, stats):
    cfg = NormalizationConfig(action_mode="min_max", state_mode="quantile", clip=False, eps=1e-3)
    norm = Normalizer(stats, cfg, max_action_dim=MAX_A, max_state_dim=MAX_S)
    a, s, emb = _batch(raw, norm, ["bridge", "aloha"])

    clone = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    p = tmp_path / "normalizer.json"
    norm.save_json(p)
    loaded = Normalizer.load_json(p)
    for other in (clone, loaded):
        assert other.config == cfg and other.names == norm.names
        assert other.fingerprint() == norm.fingerprint()
        assert torch.equal(other.normalize_action(a, emb), norm.normalize_action(a, emb))
        assert torch.equal(other.normalize_state(s, emb), norm.normalize_state(s, emb))
        assert torch.equal(other.unnormalize_action(a, emb), norm.unnormalize_action(a, emb))

    sd = norm.state_dict()
    assert {"action_center", "action_scale", "action_valid", "state_center"} <= set(sd)
    fresh = Normalizer(stats, cfg, MAX_A, MAX_S)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.normalize_action(a, emb), norm.normalize_action(a, emb))

    d = norm.to_dict()
    d["datasets"]["aloha"]["state"]["std"][0] = float("nan")
    with pytest.raises(ValueError, match=r"aloha.*state.*std.*finite"):
        Normalizer.from_dict(d)
    d = norm.to_dict()
    d["extra"] = 1
    with pytest.raises(ValueError, match="unknown key"):
        Normalizer.from_dict(d)
    assert Normalizer(stats, NormalizationConfig(), MAX_A, MAX_S).fingerprint() != norm.fingerprint()


def test_dtype_preserved(raw, stats):
    norm = Normalizer(stats, NormalizationConfig(), MAX_A, MAX_S)
    a, _, emb = _batch(raw, norm, ["aloha"])
    assert norm.normalize_action(a.to(torch.bfloat16), emb).dtype == torch.bfloat16
    assert norm.normalize_action(a.double(), emb).dtype == torch.float64
