"""Streaming loader: chunking at episode boundaries, padding masks, mixtures, rank/worker splits,
resume, schema, and sim demos through write_episodes."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from data_pipelines.shards import write_episodes
from vla_ebt.data.episodes import Episode
from vla_ebt.data import stream as st
from vla_ebt.data.stream import EpisodeStream, StreamConfig, StreamLoader, load_normalizer
from vla_ebt.normalize import Normalizer
from vla_ebt.schema import ObservationSpec, validate_batch


def _episodes(n: int, base: int, adim: int, sdim: int, views: int = 1, size: int = 8) -> list[Episode]:
    """Episode e (length 3 + e % 6): action[t, k] = base + 100 e + t + k / 10; state[t, k] = -action."""
    out = []
    for e in range(n):
        T = 3 + e % 6
        a = base + 100 * e + np.arange(T)[:, None] + np.arange(adim)[None, :] / 10.0
        s = -(base + 100 * e + np.arange(T)[:, None] + np.arange(sdim)[None, :] / 10.0)
        img = np.zeros((T, views, 3, size, size), np.uint8)
        img[:, :, 0] = (np.arange(T) * 20)[:, None, None, None]  # red channel encodes t
        img[:, :, 1] = e
        out.append(Episode(images=img, state=s.astype(np.float32), action=a.astype(np.float32),
                           instruction=f"task {e}", task="t", success=True))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    write_episodes(_episodes(24, 0, 2, 2), root / "reach2d", "reach2d", episodes_per_shard=4)  # 6 shards
    write_episodes(_episodes(10, 10000, 4, 3, views=2), root / "robot_b", "robot_b", episodes_per_shard=10)  # 1 shard
    return root


def _norm(root, names=("reach2d", "robot_b")):
    return load_normalizer([root / n for n in names], max_action_dim=5, max_state_dim=4)


def _decode_id(sid: str) -> tuple[str, int, int]:
    ds, key, t = sid.split("/")
    shard, j = key.split("-")[-2:]
    per = 4 if ds == "reach2d" else 10
    return ds, int(shard) * per + int(j), int(t)


def test_batches_chunk_at_episode_boundaries_with_padding_and_schema(data):
    norm = _norm(data)
    cfg = StreamConfig(image_size=8, horizon=5, obs_steps=3, batch_size=16, train=False, shuffle_buffer=50,
                       cameras=("primary", "secondary"), image_history=True)
    ds = EpisodeStream([data / "reach2d", data / "robot_b"], norm, cfg, weights="uniform")
    it = iter(ds)
    seen_end = seen_start = 0
    for _ in range(6):
        b = next(it)
        assert b["images"].shape == (16, 6, 3, 8, 8) and b["images"].dtype == torch.float32
        assert b["state"].shape == (16, 3, 4) and b["action"].shape == (16, 5, 5) and b["action_mask"].dtype == torch.bool
        for i, sid in enumerate(b["sample_id"]):
            ds_name, e, t = _decode_id(sid)
            base, adim, sdim = (0, 2, 2) if ds_name == "reach2d" else (10000, 4, 3)
            T = 3 + e % 6
            assert b["embodiment"][i] == norm.embodiment_id(ds_name)
            assert b["instruction"][i] == f"task {e}"
            fut = np.arange(t, t + 5)
            np.testing.assert_array_equal(b["action_mask"][i].numpy(), fut < T)
            want = base + 100 * e + np.minimum(fut, T - 1)[:, None] + np.arange(adim)[None] / 10.0
            np.testing.assert_allclose(b["action"][i, :, :adim].numpy(), want, rtol=1e-6)
            assert (b["action"][i, :, adim:] == 0).all()  # padded dims are exactly 0
            hist = np.clip(np.arange(t - 2, t + 1), 0, None)
            want_s = -(base + 100 * e + hist[:, None] + np.arange(sdim)[None] / 10.0)
            np.testing.assert_allclose(b["state"][i, :, :sdim].numpy(), want_s, rtol=1e-6)
            assert (b["state"][i, :, sdim:] == 0).all()
            # images: camera-major history; PNG is lossless, eval mode does no augmentation
            red = (b["images"][i, :3, 0, 0, 0] * 255).round().numpy()
            np.testing.assert_array_equal(red, hist * 20)
            if ds_name == "reach2d":  # no secondary camera: black frames
                assert (b["images"][i, 3:] == 0).all()
            else:
                np.testing.assert_array_equal((b["images"][i, 3:, 0, 0, 0] * 255).round().numpy(), hist * 20)
            seen_end += int(t == T - 1)
            seen_start += int(t == 0)
    assert seen_end and seen_start
    spec = ObservationSpec(num_views=6, image_size=8, obs_steps=3, state_dim=4, action_dim=5, horizon=5,
                           embodiments=norm.names)
    validate_batch(b, spec)


def test_train_augmentation_changes_images_but_not_targets(data):
    norm = _norm(data)
    kw = dict(image_size=8, horizon=2, batch_size=8, shuffle_buffer=10, seed=3)
    a = next(iter(EpisodeStream([data / "reach2d"], _norm(data, ("reach2d",)), StreamConfig(train=True, **kw))))
    b = next(iter(EpisodeStream([data / "reach2d"], _norm(data, ("reach2d",)), StreamConfig(train=False, **kw))))
    assert a["sample_id"] == b["sample_id"]
    assert torch.equal(a["action"], b["action"]) and not torch.equal(a["images"], b["images"])
    assert a["images"].min() >= 0 and a["images"].max() <= 1
    del norm


def test_refuses_dataset_missing_from_stats(data):
    norm = _norm(data, ("reach2d",))
    with pytest.raises(ValueError, match=r"robot_b.*no statistics.*known names: \['reach2d'\]"):
        EpisodeStream([data / "reach2d", data / "robot_b"], norm, StreamConfig())
    other = Normalizer({"robot_b": norm.stats["reach2d"]})  # same name, wrong dims
    with pytest.raises(ValueError, match="stale statistics"):
        EpisodeStream([data / "robot_b"], other, StreamConfig())
    with pytest.raises(ValueError, match="missing weight"):
        EpisodeStream([data / "reach2d", data / "robot_b"], _norm(data), StreamConfig(), weights={"reach2d": 1.0})


@pytest.mark.parametrize("weights", [{"reach2d": 0.8, "robot_b": 0.2}, "size"])
def test_mixture_proportions(data, weights):
    ds = EpisodeStream([data / "reach2d", data / "robot_b"], _norm(data), StreamConfig(batch_size=100, shuffle_buffer=20),
                       weights=weights)
    it = ds.iter_references()
    counts = collections.Counter(r[0] for _ in range(40) for r in next(it))
    n = sum(counts.values())
    steps = {i["name"]: i["steps"] for i in ds.infos}
    p = 0.8 if isinstance(weights, dict) else steps["reach2d"] / sum(steps.values())
    sigma = np.sqrt(n * p * (1 - p))
    assert abs(counts["reach2d"] - n * p) < 4 * sigma, (counts, p)


def _one_epoch(data, rank, world, wid, nw, monkeypatch, names=("reach2d", "robot_b")):
    class WI:
        id, num_workers = wid, nw
    monkeypatch.setattr(st, "get_worker_info", lambda: WI if nw > 1 else None)
    ds = EpisodeStream([data / n for n in names], _norm(data), StreamConfig(batch_size=7, infinite=False, drop_last=False,
                                                                           shuffle_buffer=30), rank=rank, world_size=world)
    return [(d, k, t) for b in ds.iter_references() for d, t, k in b]


@pytest.mark.parametrize("world,nw", [(2, 2), (3, 1), (1, 3)])
def test_rank_and_worker_splits_cover_everything_once(data, monkeypatch, world, nw):
    total = _one_epoch(data, 0, 1, 0, 1, monkeypatch)
    assert len(total) == len(set(total)) == 24 * 0 + sum(3 + e % 6 for e in range(24)) + sum(3 + e % 6 for e in range(10))
    parts = [_one_epoch(data, r, world, w, nw, monkeypatch) for r in range(world) for w in range(nw)]
    flat = [x for p in parts for x in p]
    assert len(flat) == len(set(flat))  # no overlap
    assert set(flat) == set(total)  # no loss
    assert all(len(p) > 0 for p in parts)
    # reach2d (6 shards) splits by shard when there are enough, robot_b (1 shard) by episode
    keys = [{k.rsplit("-", 1)[0] for d, k, t in p if d == "reach2d"} for p in parts]
    if world * nw <= 6:
        assert all(not (a & b) for i, a in enumerate(keys) for b in keys[i + 1:])


def test_resume_from_position_in_process_and_with_workers(data):
    mk = lambda start=0: EpisodeStream([data / "reach2d", data / "robot_b"], _norm(data),  # noqa: E731
                                       StreamConfig(image_size=8, batch_size=5, shuffle_buffer=40, seed=1),
                                       start_batch=start)
    it = mk().iter_references()
    full = [next(it) for _ in range(30)]  # well past one epoch of robot_b: infinite stream
    it2 = mk(17).iter_references()
    assert [next(it2) for _ in range(13)] == full[17:]
    # through DataLoader workers: a loader resumed from state_dict continues with the same batches
    a = StreamLoader(mk(), num_workers=2)
    ia = iter(a)
    first = [next(ia)["sample_id"] for _ in range(9)]
    state = a.state_dict()
    assert state == {"seed": 1, "batches": 9}
    more = [next(ia)["sample_id"] for _ in range(4)]
    b = StreamLoader(mk(), num_workers=2)
    b.load_state_dict(state)
    ib = iter(b)
    assert [next(ib)["sample_id"] for _ in range(4)] == more
    assert len({s for batch in first for s in batch}) > 20
