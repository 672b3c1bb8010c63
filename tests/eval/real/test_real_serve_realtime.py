"""Real-time chunking and energy scoring through the policy server: an infer request's committed
``prefix`` and soft guidance (``prefix_weights``, ``soft_target``) and the ``score`` request give
what the policy gives in process; bad fields and heads that cannot take them get clear errors; the
chunk broker's ``rtc`` and ``energy_gate`` strategies run against a live server (docs/serving.md,
docs/realtime.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.real.serve import PolicyServer
from tests.policy_fixtures import D, H, S, make_policy
from vla_ebt_client import (
    ActionChunkBroker,
    PolicyClient,
    RealTime,
    ServerError,
    SimulatedDelay,
    rtc_prefix_weights,
    strategy_support,
)

ROOT = Path(__file__).resolve().parents[3]
ARM_B_DIM = 3  # arm_b's own action dims (tests/policy_fixtures.py); the 4th is padding


def obs_np(b: int = 1, seed: int = 0, emb=None) -> dict:
    g = np.random.default_rng(seed)
    instr = ["pick up the red block", "open the drawer", "close the drawer", "push the button"]
    return {
        "images": g.integers(0, 256, (b, 1, 3, 64, 64), dtype=np.uint8),
        "instruction": [instr[(seed + i) % 4] for i in range(b)],
        "state": g.normal(size=(b, 1, S)).astype(np.float32),
        "embodiment": np.array(emb if emb is not None else [0] * b, np.int64),
    }


def tensors(x: dict) -> dict:
    return {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in x.items()}


def in_process(policy, obs: dict, seed: int, **fields) -> np.ndarray:
    torch.manual_seed(seed)
    return policy.predict_chunk(tensors(obs), **tensors(fields)).actions.numpy()


def remote(client: PolicyClient, obs: dict, seed: int, **fields) -> dict:
    torch.manual_seed(seed)  # the server's worker thread draws from the same (process-wide) generator
    return client.infer(obs, **fields)


@pytest.fixture(scope="module")
def ebt():
    return make_policy(head="ebt").eval()


@pytest.fixture(scope="module")
def ebt_server(ebt):
    srv = PolicyServer(ebt, port=0, max_batch=8).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reg_server():
    srv = PolicyServer(make_policy(head="regression").eval(), port=0).start()
    yield srv
    srv.stop()


def robot_units(g: np.random.Generator, *shape: int) -> np.ndarray:
    """Actions in the robot's units (the fixture's statistics: arm_a in [-2, 2], arm_b in [0, 1])."""
    return g.uniform(-1.5, 1.5, shape).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# infer with a committed prefix and soft guidance


def test_metadata_declares_capabilities_and_request_types(ebt_server, reg_server):
    with PolicyClient(ebt_server.url) as c, PolicyClient(reg_server.url) as r:
        assert c.metadata["capabilities"] == {"inpainting": True, "reports_energy": True, "warm_start": True}
        reg = r.metadata["capabilities"]
        assert reg["inpainting"] is False and reg["reports_energy"] is False
        assert c.metadata["requests"] == ["infer", "score", "metadata"]
        assert all(why is None for why in strategy_support(c).values())
        assert strategy_support(r)["rtc"] and strategy_support(r)["energy_gate"]


def test_prefix_request_returns_the_prefix_and_equals_in_process(ebt_server, ebt):
    g = np.random.default_rng(1)
    d = 3
    with PolicyClient(ebt_server.url) as c:
        # a batch of two embodiments, prefix + soft guidance (the rtc strategy's request)
        o = obs_np(2, 1, [0, 1])
        fields = {"prefix": robot_units(g, 2, d, D), "prefix_weights": rtc_prefix_weights(H, d, 6),
                  "soft_target": robot_units(g, 2, H, D)}
        r = remote(c, o, 7, **fields)
        ref = in_process(ebt, o, 7, **fields)
        np.testing.assert_allclose(r["actions"], ref, rtol=0, atol=1e-6)
        np.testing.assert_allclose(r["actions"][0, :d], fields["prefix"][0], rtol=0, atol=1e-6)  # robot units
        np.testing.assert_allclose(r["actions"][1, :d, :ARM_B_DIM], fields["prefix"][1, :, :ARM_B_DIM],
                                   rtol=0, atol=1e-6)
        assert not r["actions"][1, :, ARM_B_DIM:].any()  # arm_b's padded dim stays 0
        assert r["prefix_len"] == d and r["energy"].shape == (2,)
        # the inpainted rest differs from an unconstrained chunk of the same seed
        assert not np.allclose(r["actions"][:, d:], remote(c, o, 7)["actions"][:, d:])

        # one sample's prefix (d, D') with fewer dims, a prefix alone, and d = 0 (= no prefix)
        o1 = obs_np(1, 2, [1])
        p = robot_units(g, 2, ARM_B_DIM)
        r = remote(c, o1, 3, prefix=p)
        np.testing.assert_allclose(r["actions"], in_process(ebt, o1, 3, prefix=p[None]), rtol=0, atol=1e-6)
        np.testing.assert_allclose(r["actions"][0, :2, :ARM_B_DIM], p, rtol=0, atol=1e-6)
        empty = remote(c, o1, 4, prefix=np.zeros((1, 0, D), np.float32))
        assert empty["prefix_len"] == 0
        np.testing.assert_allclose(empty["actions"], in_process(ebt, o1, 4), rtol=0, atol=1e-6)


BAD_FIELDS = [
    ({"prefix": np.zeros((1, H + 1, D), np.float32)},
     r"'prefix' expected shape \(d, <= 4\) or \(1, d, <= 4\) with d <= 8"),
    ({"prefix": np.zeros((2, 2, D), np.float32)}, r"'prefix' expected shape .*got \(2, 2, 4\)"),
    ({"prefix": np.zeros((1, 2, D + 1), np.float32)}, r"'prefix' expected shape .*got \(1, 2, 5\)"),
    ({"prefix": np.zeros((2, D), np.float32)[None, None]}, r"'prefix' expected shape"),
    ({"prefix": np.full((1, 2, D), np.nan, np.float32)}, r"'prefix' contains NaN or inf"),
    ({"prefix": np.zeros((1, 2, D), np.complex64)}, r"'prefix' must be a float array"),
    ({"prefix_weights": np.ones(H, np.float32)}, r"go together.*without 'soft_target'"),
    ({"soft_target": np.zeros((1, H, D), np.float32)}, r"go together.*without 'prefix_weights'"),
    ({"prefix_weights": np.ones(H - 1, np.float32), "soft_target": np.zeros((1, H, D), np.float32)},
     r"'prefix_weights' expected shape \(8,\) or \(1, 8\), got \(7,\)"),
    ({"prefix_weights": -np.ones(H, np.float32), "soft_target": np.zeros((1, H, D), np.float32)},
     r"'prefix_weights' must be >= 0"),
    ({"prefix_weights": np.ones(H, np.float32), "soft_target": np.zeros((1, H - 2, D), np.float32)},
     r"'soft_target' expected shape \(8, <= 4\) or \(1, 8, <= 4\), got \(1, 6, 4\)"),
    ({"chunks": np.zeros((1, 1, H, D), np.float32)}, r"unknown key\(s\) \['chunks'\]"),
]


@pytest.mark.parametrize("fields, match", BAD_FIELDS)
def test_bad_inpainting_fields_get_errors_naming_the_field(ebt_server, fields, match):
    with PolicyClient(ebt_server.url) as c:
        with pytest.raises(ServerError, match=match) as ei:
            c.infer(obs_np(), **fields)
        assert ei.value.kind == "bad_request"
        assert c.infer(obs_np())["actions"].shape == (1, H, D)  # the connection keeps serving


def test_head_without_inpainting_or_energy_gets_clear_errors(reg_server):
    g = np.random.default_rng(2)
    with PolicyClient(reg_server.url) as c:
        for fields in ({"prefix_weights": np.ones(H, np.float32), "soft_target": np.zeros((1, H, D), np.float32)},
                       {"prefix_weights": np.ones(H, np.float32)}):
            with pytest.raises(ServerError, match=r"head 'regression' does not declare capabilities.inpainting.*"
                                                  r"leave out \[.*'prefix_weights'") as ei:
                c.infer(obs_np(), prefix=np.zeros((1, 2, D), np.float32), **fields)
            assert ei.value.kind == "bad_request"
        # a prefix alone is the in-process contract of every head: its first d steps are overwritten
        p = robot_units(g, 1, 2, D)
        np.testing.assert_allclose(c.infer(obs_np(), prefix=p)["actions"][:, :2], p, rtol=0, atol=1e-6)
        with pytest.raises(ServerError, match=r"head 'regression' has no energy.*'chunks'") as ei:
            c.score(obs_np(), np.zeros((1, 2, H, D), np.float32))
        assert ei.value.kind == "bad_request"
        for strategy in ("rtc", "energy_gate"):  # the broker refuses them up front, from the metadata
            with pytest.raises(ValueError, match=f"strategy '{strategy}' is not available"):
                ActionChunkBroker(c, strategy=strategy)


# ------------------------------------------------------------------------------------------------
# score


def test_score_request_equals_in_process(ebt_server, ebt):
    g = np.random.default_rng(3)
    with PolicyClient(ebt_server.url) as c:
        o = obs_np(2, 3, [0, 1])
        chunks = robot_units(g, 2, 3, H, D)
        e = c.score(o, chunks)
        ref = ebt.score_chunks(tensors(o), torch.from_numpy(chunks)).numpy()
        assert e.shape == (2, 3) and e.dtype == np.float32 and np.isfinite(e).all()
        np.testing.assert_allclose(e, ref, rtol=1e-6, atol=1e-6)
        assert c.last_score_reply["infer_ms"] > 0 and c.latency_stats()["score_round_trip"]["count"] == 1
        # one sample's candidates (K, H, D') are scored under every observation; missing dims are 0
        k3 = robot_units(g, 4, H, ARM_B_DIM)
        padded = np.concatenate([k3, np.zeros((4, H, D - ARM_B_DIM), np.float32)], axis=2)
        np.testing.assert_allclose(c.score(o, k3), ebt.score_chunks(tensors(o), torch.from_numpy(
            np.repeat(padded[None], 2, axis=0))).numpy(), rtol=1e-6, atol=1e-6)
        for bad, match in [(np.zeros((1, 2, H - 1, D), np.float32),
                            r"'chunks' expected shape \(K, 8, <= 4\) or \(2, K, 8, <= 4\) with K >= 1, "
                            r"got \(1, 2, 7, 4\)"),
                           (np.zeros((2, 0, H, D), np.float32), r"'chunks' expected shape .*got \(2, 0, 8, 4\)"),
                           (np.full((2, 1, H, D), np.inf, np.float32), r"'chunks' contains NaN or inf"),
                           (np.zeros((2, 5, H, D), np.float32), r"'chunks': at most 8 chunks per request")]:
            with pytest.raises(ServerError, match=match):
                c.score(o, bad)
        with pytest.raises(ServerError, match=r"unknown key\(s\) \['prefix'\]"):  # score takes no infer fields
            c._request("score", o, {"chunks": chunks, "prefix": chunks[:, 0]})
        with pytest.raises(ServerError, match="needs 'chunks'"):
            c._request("score", o, {})


def test_torch_free_client_sends_prefix_and_scores(ebt_server):
    code = (
        "import sys, numpy as np\n"
        "from vla_ebt_client import PolicyClient\n"
        "c = PolicyClient(sys.argv[1])\n"
        "g = np.random.default_rng(0)\n"
        f"o = {{'images': g.integers(0, 256, (1, 1, 3, 64, 64), dtype=np.uint8), 'instruction': ['go'],"
        f" 'state': np.zeros((1, 1, {S}), np.float32), 'embodiment': 0}}\n"
        f"p = np.full((1, 2, {D}), 0.5, np.float32)\n"
        "r = c.infer(o, prefix=p)\n"
        "assert np.allclose(r['actions'][:, :2], p, atol=1e-6)\n"
        "e = c.score(o, r['actions'][:, None].repeat(2, axis=1))\n"
        "assert e.shape == (1, 2) and e[0, 0] == e[0, 1]\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code, ebt_server.url], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["ok"], r.stderr


# ------------------------------------------------------------------------------------------------
# the chunk broker against the live server


class RecordingClient(PolicyClient):
    """A PolicyClient that keeps every request's fields and reply (and every score)."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.calls: list[tuple[dict, dict]] = []
        self.scores: list[tuple[np.ndarray, np.ndarray]] = []

    def infer(self, obs, **fields):
        reply = super().infer(obs, **fields)
        self.calls.append((fields, reply))
        return reply

    def score(self, obs, chunks):
        e = super().score(obs, chunks)
        self.scores.append((np.asarray(chunks), e))
        return e


def test_broker_rtc_against_the_live_server(ebt_server):
    o = obs_np(1, 5)
    with RecordingClient(ebt_server.url) as c:
        b = ActionChunkBroker(c, strategy="rtc", timing=SimulatedDelay(2))
        b.reset()
        acts = [b.act(o) for _ in range(9)]
        assert all(a.shape == (1, D) and np.isfinite(a).all() for a in acts)
        with_prefix = [(f, r) for f, r in c.calls if "prefix" in f]
        assert b.counters["chunks"] >= 3 and len(with_prefix) >= 2 and b.counters["starved"] == 0
        for f, r in with_prefix:  # each reply starts with exactly the actions committed during the delay
            d = f["prefix"].shape[1]
            assert d == 2 and r["prefix_len"] == d and f["soft_target"].shape == (1, H, D)
            np.testing.assert_allclose(r["actions"][:, :d], f["prefix"], rtol=0, atol=1e-6)
        # what executed while a chunk was planned is its prefix; then the chunk continues from row d
        for e, (f, r) in zip(b.chunk_log[1:], c.calls[1:]):
            s, a = e["sent_step"], e["arrival_step"]
            if a < len(acts):
                np.testing.assert_allclose(np.stack(acts[s:a], 1), f["prefix"], rtol=0, atol=1e-6)
                np.testing.assert_allclose(acts[a], r["actions"][:, a - s], rtol=0, atol=1e-6)

        # the real-time path: a background thread, the loop never waits after the first chunk
        rt = ActionChunkBroker(c, strategy="rtc", control_hz=50, timing=RealTime(), initial_delay=1)
        try:
            rt.reset()
            acts = [rt.act(o) for _ in range(8)]
        finally:
            rt.close()
        assert all(np.isfinite(a).all() for a in acts) and rt.counters["chunks"] >= 1


def test_broker_energy_gate_against_the_live_server(ebt_server, ebt):
    o = obs_np(1, 6)
    with RecordingClient(ebt_server.url) as c:
        b = ActionChunkBroker(c, strategy="energy_gate", timing=SimulatedDelay(1))
        b.reset()
        acts = [b.act(o) for _ in range(10)]
        assert all(a.shape == (1, D) and np.isfinite(a).all() for a in acts)
        gated = [e for e in b.chunk_log if "energy_new" in e]
        assert len(gated) >= 2 and len(c.scores) == len(gated)
        for e, (chunks, energy) in zip(gated, c.scores):
            assert chunks.shape == (1, 2, H, D) and energy.shape == (1, 2)
            ref = ebt.score_chunks(tensors(o), torch.from_numpy(chunks)).numpy()
            np.testing.assert_allclose(energy, ref, rtol=1e-6, atol=1e-6)  # the in-process score
            assert (e["energy_old"], e["energy_new"]) == (float(energy[0, 0]), float(energy[0, 1]))
            assert e["accepted"] == (e["energy_new"] <= e["energy_old"])
        assert b.counters["gate_rejections"] == sum(not e["accepted"] for e in gated)
