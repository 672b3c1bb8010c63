"""Policy server + robot-side client: round trip equals in-process inference, concurrency,
validation, auth, message size, slow requests, reconnects, the sim loop and the CLI."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from eval.real.run_sim_loop import main as sim_loop_main
from eval.real.run_sim_loop import run_sim_loop
from eval.real.serve import PolicyServer
from tests.policy_fixtures import D, H, S, make_policy
from vla_ebt.policy import VLAPolicy
from vla_ebt.schema import ObservationSpec
from vla_ebt_client import (
    ActionChunkBroker,
    AuthenticationError,
    MessageTooLargeError,
    PolicyClient,
    PolicyClientError,
    ServerError,
)
from vla_ebt_client.codec import packb, unpackb

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "s3cret-token"
MAX_BYTES = 1 << 20


def obs_np(b: int = 1, seed: int = 0, emb=None) -> dict:
    g = np.random.default_rng(seed)
    instr = ["pick up the red block", "open the drawer", "close the drawer", "push the button"]
    return {
        "images": g.integers(0, 256, (b, 1, 3, 64, 64), dtype=np.uint8),
        "instruction": [instr[(seed + i) % 4] for i in range(b)],
        "state": g.normal(size=(b, 1, S)).astype(np.float32),
        "embodiment": np.array(emb if emb is not None else [0] * b, np.int64),
    }


def in_process(policy, obs: dict) -> np.ndarray:
    t = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in obs.items()}
    return policy.predict_chunk(t).actions.numpy()


@pytest.fixture(scope="module")
def saved_policy(tmp_path_factory):
    d = tmp_path_factory.mktemp("policy")
    make_policy(head="regression").save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def policy(saved_policy):
    return VLAPolicy.from_pretrained(saved_policy)


@pytest.fixture(scope="module")
def server(policy):
    srv = PolicyServer(policy, port=0, token=TOKEN, max_message_bytes=MAX_BYTES, max_batch=8).start()
    yield srv
    srv.stop()


def client(srv, **kw) -> PolicyClient:
    return PolicyClient(srv.url, token=TOKEN, **kw)


def http_get(port: int, path: str = "/healthz") -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def raw_ws(srv, token=TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else None
    ws = connect(srv.url, additional_headers=headers, compression=None, proxy=None, legacy=True, max_size=None)
    meta = unpackb(ws.recv(timeout=10))
    assert meta["type"] == "metadata"
    return ws


# ------------------------------------------------------------------------------------------------


def test_metadata_and_health(server, policy):
    with client(server) as c:
        m = c.metadata
    assert m["protocol"] == "vla_ebt.serve/1" and m["auth"] is True
    assert m["spec"] == policy.spec.to_dict()
    assert (m["cameras"], m["image_size"], m["state_dim"], m["action_dim"], m["horizon"]) == (1, 64, S, D, H)
    assert m["embodiments"] == ["arm_a", "arm_b"]
    assert m["embodiment_dims"]["arm_b"] == {"action_dim": 3, "state_dim": 4}
    assert m["execution"]["n_action_steps"] == 3 and m["max_message_bytes"] == MAX_BYTES
    status, body = http_get(server.port)
    h = json.loads(body)
    assert status == 200 and h["status"] == "ok" and h["requests"] >= 0


def test_round_trip_equals_in_process(server, policy):
    with client(server) as c:
        for seed, b, emb in [(0, 1, [0]), (1, 2, [0, 1]), (2, 3, [1, 1, 0])]:
            o = obs_np(b, seed, emb)
            r = c.infer(o)
            ref = in_process(policy, o)
            assert r["actions"].dtype == np.float32 and r["actions"].shape == (b, H, D)
            np.testing.assert_array_equal(r["actions"], ref)
            assert r["steps"].shape == (b,) and r["energy"] is None and r["nfe"] == 1
            assert r["infer_ms"] > 0 and r["server_ms"] >= r["infer_ms"] and r["round_trip_ms"] >= r["server_ms"]
        # conveniences: a single instruction string, an int or a name as embodiment, state (B, S)
        o = obs_np(1, 5)
        r = c.infer({**o, "instruction": o["instruction"][0], "embodiment": "arm_b", "state": o["state"][:, 0]})
        np.testing.assert_array_equal(r["actions"], in_process(policy, {**o, "embodiment": np.array([1])}))
        # torch tensors are accepted by the client (duck-typed) and floats in [0, 1] by the server
        t = {**o, "images": torch.from_numpy(o["images"]).float() / 255.0}
        np.testing.assert_allclose(c.infer(t)["actions"], in_process(policy, o), atol=1e-6)


@pytest.mark.slow
def test_four_concurrent_clients_lose_nothing(server, policy):
    n_clients, n_req, n_obs = 4, 200, 5
    obs = {(i, j): obs_np(1, 100 + 10 * i + j, [i % 2]) for i in range(n_clients) for j in range(n_obs)}
    expected = {k: in_process(policy, o) for k, o in obs.items()}
    results: dict[int, dict] = {}

    def work(i: int) -> None:
        rtts, wrong, errors = [], 0, []
        try:
            with client(server) as c:
                for k in range(n_req):
                    r = c.infer(obs[(i, k % n_obs)])
                    rtts.append(r["round_trip_ms"])
                    wrong += not np.array_equal(r["actions"], expected[(i, k % n_obs)])
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
        results[i] = {"rtts": rtts, "wrong": wrong, "errors": errors}

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    wall = time.perf_counter() - t0
    assert all(not r["errors"] for r in results.values()), results
    rtts = [x for r in results.values() for x in r["rtts"]]
    assert len(rtts) == n_clients * n_req  # nothing lost
    assert sum(r["wrong"] for r in results.values()) == 0  # every reply is its own request's
    p50, p99 = np.percentile(rtts, [50, 99])
    print(f"\n4 clients x {n_req} requests: round trip p50 {p50:.1f} ms, p99 {p99:.1f} ms, {len(rtts) / wall:.1f} req/s")


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda o: {k: v for k, v in o.items() if k != "state"}, "missing key"),
        (lambda o: {**o, "images": o["images"][:, :, :, :32]}, "'images' expected shape"),
        (lambda o: {**o, "images": o["images"].astype(np.int32)}, "'images' dtype"),
        (lambda o: {**o, "images": o["images"].astype(np.float32)}, r"must be in \[0, 1\]"),
        (lambda o: {**o, "images": np.full((1, 1, 3, 64, 64), np.nan, np.float32)}, "NaN"),
        (lambda o: {**o, "state": np.full((1, 1, S), np.nan, np.float32)}, "NaN"),
        (lambda o: {**o, "state": o["state"].astype(np.int64)}, "'state' must be a float array"),
        (lambda o: {**o, "state": np.zeros((1, 1, S + 3), np.float32)}, "'state' expected shape"),
        (lambda o: {**o, "embodiment": np.array([7])}, "'embodiment' ids must be in"),
        (lambda o: {**o, "embodiment": "arm_z"}, "unknown embodiment"),
        (lambda o: {**o, "instruction": ["a", "b"]}, "'instruction'"),
        (lambda o: {**o, "instruction": [" "]}, "empty string"),
        (lambda o: {**o, "extra": 1}, "unknown key"),
        (lambda o: {**o, "images": np.zeros((9, 1, 3, 64, 64), np.uint8), "instruction": ["x"] * 9}, "batch size"),
    ],
)
def test_malformed_requests_get_errors(server, policy, change, match):
    with client(server) as c:
        with pytest.raises(ServerError, match=match) as ei:
            c.infer(change(obs_np()))
        assert ei.value.kind == "bad_request"
        r = c.infer(obs_np())  # the same connection keeps working
        np.testing.assert_array_equal(r["actions"], in_process(policy, obs_np()))


def test_garbage_frames_get_errors_and_server_keeps_serving(server, policy):
    errors0 = server.errors
    ws = raw_ws(server)
    try:
        for msg in [b"\xc1\xc1", "a text frame", packb([1, 2, 3]), packb({"type": "nope"}), packb({"request_id": 1.5})]:
            ws.send(msg)
            r = unpackb(ws.recv(timeout=10))
            assert r["type"] == "error" and r["kind"] == "bad_request" and r["error"], r
        ws.send(packb({"type": "metadata", "request_id": "m"}))
        assert unpackb(ws.recv(timeout=10))["request_id"] == "m"
        ws.send(packb({**obs_np(), "request_id": 9}))
        r = unpackb(ws.recv(timeout=10))
        assert r["type"] == "result" and r["request_id"] == 9
    finally:
        ws.close()
    assert server.errors >= errors0 + 5
    assert json.loads(http_get(server.port)[1])["errors"] >= errors0 + 5


def test_oversized_messages_are_refused(server, policy):
    ws = raw_ws(server)
    with pytest.raises(ConnectionClosed) as ei:
        ws.send(b"\x00" * (MAX_BYTES + 1))
        ws.recv(timeout=10)
    assert ei.value.rcvd is not None and ei.value.rcvd.code == 1009
    big = {**obs_np(6), "images": np.zeros((6, 1, 3, 64, 64), np.float32)}  # ~0.3 MiB
    huge = {**obs_np(8), "images": np.zeros((8, 1, 3, 128, 128), np.float32)}  # 1.5 MiB
    with client(server) as c:
        with pytest.raises(MessageTooLargeError, match="exceeds"):
            c.infer(huge)  # checked on the client, nothing sent
        c.check_size = False
        with pytest.raises(MessageTooLargeError, match="too big"):
            c.infer(huge)  # the server closes with 1009; not retried
        assert c.infer(big)["actions"].shape == (6, H, D)  # reconnects and keeps going
        np.testing.assert_array_equal(c.infer(obs_np())["actions"], in_process(policy, obs_np()))


def test_unauthenticated_requests_are_refused(server, policy):
    for tok in (None, "wrong"):
        with pytest.raises(AuthenticationError):
            PolicyClient(server.url, token=tok, max_retries=3, backoff_s=0.01)
        with pytest.raises(InvalidStatus) as ei:
            connect(server.url, additional_headers={"Authorization": f"Bearer {tok}"} if tok else None,
                    proxy=None, legacy=True)
        assert ei.value.response.status_code == 401
    assert http_get(server.port)[0] == 200  # health needs no token
    with client(server) as c:
        np.testing.assert_array_equal(c.infer(obs_np())["actions"], in_process(policy, obs_np()))


class SlowPolicy:
    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.spec, self.cfg, self.normalizer = inner.spec, inner.cfg, inner.normalizer

    def predict_chunk(self, obs):
        time.sleep(self.delay)
        return self.inner.predict_chunk(obs)


def test_slow_request_does_not_block_pings_or_health(policy):
    with PolicyServer(SlowPolicy(policy, 1.5), port=0) as srv:
        ws = connect(srv.url, compression=None, proxy=None, legacy=True, max_size=None)
        unpackb(ws.recv(timeout=10))
        ws.send(packb({**obs_np(), "request_id": 1}))
        time.sleep(0.2)  # the request is now inside the model
        t0 = time.perf_counter()
        assert ws.ping().wait(1.0)  # same connection: the loop answers while the model runs
        with PolicyClient(srv.url, connect=False) as other:  # another client connects meanwhile
            other._with_retries(lambda: None)
            assert other.metadata["horizon"] == H
            assert other.health()["busy"] is True
        assert time.perf_counter() - t0 < 1.0
        r = unpackb(ws.recv(timeout=10))
        assert r["type"] == "result" and r["infer_ms"] >= 1400
        ws.close()


def test_client_survives_server_restart(policy):
    srv = PolicyServer(policy, port=0).start()
    port = srv.port
    c = PolicyClient(srv.url, backoff_s=0.05, max_backoff_s=0.4, max_retries=12)
    ref = in_process(policy, obs_np())
    np.testing.assert_array_equal(c.infer(obs_np())["actions"], ref)
    srv.stop()
    box = {}
    restart = threading.Timer(0.6, lambda: box.setdefault("srv", PolicyServer(policy, port=port).start()))
    restart.start()
    try:
        np.testing.assert_array_equal(c.infer(obs_np())["actions"], ref)  # retried until the new server is up
        assert c.reconnects >= 1 and c.connects == 2
        assert c.latency_stats()["round_trip"]["count"] == 2
    finally:
        restart.join()
        c.close()
        box["srv"].stop()


def test_client_gives_up_after_bounded_retries():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    sleeps = []
    t0 = time.perf_counter()
    with pytest.raises(PolicyClientError, match="3 attempt"):
        PolicyClient(f"ws://127.0.0.1:{port}", max_retries=2, backoff_s=0.01, sleep=sleeps.append)
    assert sleeps == [0.01, 0.02] and time.perf_counter() - t0 < 5


def test_ebt_reply_carries_energy_and_steps():
    with PolicyServer(make_policy(head="ebt").eval(), port=0) as srv, PolicyClient(srv.url) as c:
        r = c.infer(obs_np(2, 0, [0, 1]))
    assert r["actions"].shape == (2, H, D) and r["energy"].shape == (2,) and np.isfinite(r["energy"]).all()
    assert r["steps"].shape == (2,) and r["grad_norm"].shape == (2,) and r["nfe"] > 0


def test_client_process_without_torch_talks_to_server(server, policy):
    code = (
        "import sys, numpy as np\n"
        "from vla_ebt_client import PolicyClient, ActionChunkBroker\n"
        "c = PolicyClient(sys.argv[1], token=sys.argv[2])\n"
        "g = np.random.default_rng(0)\n"
        f"o = {{'images': g.integers(0, 256, (1, 1, 3, 64, 64), dtype=np.uint8), 'instruction': ['go'],"
        f" 'state': np.zeros((1, 1, {S}), np.float32), 'embodiment': 0}}\n"
        "b = ActionChunkBroker(c)\n"
        "acts = [b.act(o) for _ in range(4)]\n"
        "assert acts[0].shape == (1, c.metadata['action_dim']) and b.chunks == 2, (acts[0].shape, b.chunks)\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok', b.latency_stats()['round_trip']['count'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code, server.url, TOKEN], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["ok", "2"], r.stderr


class FakeClient:
    """Scripted chunks for broker tests: chunk k has value 10 * k + step in every dim."""

    metadata = {"horizon": 4, "execution": {"mode": "receding", "n_action_steps": 2, "ensemble_decay": 0.5}}

    def __init__(self) -> None:
        self.calls = 0

    def infer(self, obs):
        k = self.calls
        self.calls += 1
        return {"actions": (10.0 * k + np.arange(4, dtype=np.float32))[None, :, None].repeat(2, axis=2)}


def test_broker_receding_and_ensemble():
    b = ActionChunkBroker(FakeClient())  # defaults from metadata: receding, 2 steps per chunk
    assert [float(b.act({})[0, 0]) for _ in range(5)] == [0, 1, 10, 11, 20]
    assert b.chunks == 3
    b = ActionChunkBroker(FakeClient(), mode="ensemble", ensemble_decay=0.5)
    got = [float(b.act({})[0, 0]) for _ in range(3)]
    # step 1: chunk0[1] = 1 (age 1), chunk1[0] = 10 (age 0); step 2: chunk0[2]=2, chunk1[1]=11, chunk2[0]=20
    w = np.exp(-0.5 * np.arange(3))
    assert got[0] == 0
    assert got[1] == pytest.approx((1 * w[1] + 10 * w[0]) / (w[0] + w[1]))
    assert got[2] == pytest.approx((2 * w[2] + 11 * w[1] + 20 * w[0]) / w.sum())
    with pytest.raises(ValueError):
        ActionChunkBroker(FakeClient(), n_action_steps=5)


# ------------------------------------------------------------------------------------------------
# the robot path without a robot


class ReachOracle:
    """A scripted 'policy' that reads reach2d images: finds the instructed color's disc and moves
    the agent (state) straight towards it, one chunk of H steps per request."""

    COLORS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240)}

    def __init__(self, horizon: int = 8) -> None:
        self.spec = ObservationSpec(num_views=1, image_size=64, obs_steps=1, state_dim=2, action_dim=2,
                                    horizon=horizon, embodiments=("reach2d",))
        self.cfg = SimpleNamespace(head="oracle", execution=SimpleNamespace(mode="receding", n_action_steps=4,
                                                                          ensemble_decay=0.01))

    def predict_chunk(self, obs):
        imgs, states = obs["images"], obs["state"]
        B, H = imgs.shape[0], self.spec.horizon
        out = np.zeros((B, H, 2), np.float32)
        for b in range(B):
            color = next(c for c in self.COLORS if c in obs["instruction"][b])
            mask = (imgs[b, 0].transpose(1, 2, 0) == np.array(self.COLORS[color], np.uint8)).all(-1)
            rows, cols = np.nonzero(mask)
            s = imgs.shape[-1]
            goal = np.array([(cols.mean() + 0.5) / s, 1 - (rows.mean() + 0.5) / s])
            pos = states[b, -1, :2].astype(np.float64)
            for h in range(H):
                d = goal - pos
                m = np.abs(d).max()
                a = d * min(1.0, 0.05 / m) if m > 0 else np.zeros(2)
                out[b, h] = a
                pos = pos + a
        return SimpleNamespace(actions=out, energy=None, steps=np.ones(B), grad_norm=None, nfe=0)


def test_sim_loop_through_client_reaches_targets(tmp_path):
    with PolicyServer(ReachOracle(), port=0, token=TOKEN) as srv:
        with PolicyClient(srv.url, token=TOKEN) as c:
            rep = run_sim_loop(c, "reach2d", episodes_per_task=2, seed=123)
            assert rep["success_rate"] == 1.0 and rep["errors"] == 0 and rep["episodes_total"] == 6
            assert rep["mode"] == "receding" and rep["n_action_steps"] == 4
            assert all(e["chunks"] == -(-e["length"] // 4) for e in rep["episodes"])
            assert rep["latency"]["round_trip"]["count"] == sum(e["chunks"] for e in rep["episodes"])
            rep = run_sim_loop(c, "reach2d", tasks=["reach_blue"], episodes_per_task=1, seed=5, mode="ensemble")
            assert rep["success_rate"] == 1.0
            assert rep["episodes"][0]["chunks"] == rep["episodes"][0]["length"]
        out = tmp_path / "loop.json"
        sim_loop_main(["--url", srv.url, "--token", TOKEN, "--tasks", "reach_red", "--episodes", "1", "--out", str(out)])
        assert json.loads(out.read_text())["success_rate"] == 1.0


def test_sim_loop_with_saved_policy_cli(tmp_path):
    """A real (untrained) VLAPolicy through ``run_sim_loop --policy`` (in-process server): the loop
    runs to the end without errors; success is whatever the untrained policy gets."""
    import dataclasses

    from vla_ebt.data.episodes import dataset_stats
    from eval.sim.demos import collect_demos
    from eval.sim.suites import make_suite
    from tests.policy_fixtures import small_config
    from vla_ebt.normalize import Normalizer

    eps = collect_demos(make_suite("reach2d"), None, 2, seed=0)
    norm = Normalizer({"reach2d": dataset_stats(eps)}, max_action_dim=2, max_state_dim=2)
    cfg = dataclasses.replace(small_config("regression"), state_dim=2, action_dim=2)
    torch.manual_seed(0)
    VLAPolicy(cfg, norm).save_pretrained(tmp_path / "p")
    out = tmp_path / "loop.json"
    rep = sim_loop_main(["--policy", str(tmp_path / "p"), "--tasks", "reach_red", "--episodes", "1", "--out", str(out)])
    assert rep["errors"] == 0 and rep["episodes"][0]["length"] > 0 and 0.0 <= rep["success_rate"] <= 1.0
    assert json.loads(out.read_text())["latency"]["round_trip"]["count"] == rep["episodes"][0]["chunks"]


@pytest.mark.slow
def test_serve_cli_subprocess(saved_policy, policy, tmp_path):
    port_file = tmp_path / "port"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "eval.real.serve", "--policy", str(saved_policy), "--port", "0", "--port-file",
         str(port_file), "--token", TOKEN, "--max-message-mb", "2", "--log-level", "WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        t0 = time.time()
        while not port_file.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() - t0 < 60, "server did not start"
            time.sleep(0.1)
        port = int(port_file.read_text())
        assert http_get(port)[0] == 200
        with PolicyClient(f"ws://127.0.0.1:{port}", token=TOKEN) as c:
            assert c.metadata["max_message_bytes"] == 2 * 2**20
            # another process: its CPU kernels may round differently (~1e-7)
            np.testing.assert_allclose(c.infer(obs_np())["actions"], in_process(policy, obs_np()), atol=1e-5, rtol=0)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0
