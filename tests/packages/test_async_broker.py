"""Asynchronous chunk execution in the torch-free broker (vla_ebt_client): which actions execute
under a delay, what an RTC request carries, the energy gate, temporal ensembling, the smoothness
metrics, and a real-time loop against a slow policy server that never waits for inference."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np
import pytest

from eval.real.serve import PolicyServer
from vla_ebt.schema import ObservationSpec
from vla_ebt_client import (
    ActionChunkBroker,
    DelayEstimator,
    PolicyClient,
    ServerError,
    SimulatedDelay,
    action_smoothness,
    rtc_prefix_weights,
    strategy_support,
)

H = 6


class Scripted:
    """Chunk k (the k-th request) has row i = 100 k + i in every dim. With ``inpaint`` it returns a
    request's ``prefix`` exactly (the contract of heads with ``capabilities.inpainting``).
    ``energies``: what ``score`` returns for each gate, (old, new) in turn. Records every request."""

    def __init__(self, h: int = H, d: int = 2, inpaint: bool = True, energies=None, n_action_steps: int = 3):
        self.h, self.d = h, d
        self.metadata = {"horizon": h, "execution": {"mode": "receding", "n_action_steps": n_action_steps},
                         "capabilities": {"inpainting": inpaint, "reports_energy": energies is not None}}
        self.requests: list[dict] = []
        self.energies = list(energies or [])
        self.scored: list[np.ndarray] = []

    def infer(self, obs, **fields):
        k = len(self.requests)
        self.requests.append({"step": obs["t"], **fields})
        chunk = (100.0 * k + np.arange(self.h, dtype=np.float32))[None, :, None].repeat(self.d, axis=2)
        if fields.get("prefix") is not None:
            chunk[:, : fields["prefix"].shape[1]] = fields["prefix"]
        return {"actions": chunk, "energy": np.array([-float(k)]), "infer_ms": 1.0}

    def score(self, obs, chunks):
        self.scored.append(np.asarray(chunks))
        return np.array([self.energies.pop(0)], np.float64)


def drive(broker: ActionChunkBroker, steps: int) -> list[float]:
    """Run ``steps`` control steps (the observation carries the step); first action dim per step."""
    broker.reset()
    return [float(broker.act({"t": t})[0, 0]) for t in range(steps)]


def make(strategy: str, d: int, source=None, **kw) -> ActionChunkBroker:
    return ActionChunkBroker(source or Scripted(), strategy=strategy, timing=SimulatedDelay(d), **kw)


# ------------------------------------------------------------------------------------------------
# which actions execute under a delay


def test_sync_waits_and_counts_the_delay_as_stalls():
    for d in (0, 2, 5):
        b = make("sync", d)
        assert drive(b, 8) == [0, 1, 2, 100, 101, 102, 200, 201]  # H = 6, 3 actions per chunk: today's
        assert b.counters["stalls"] == 2 * d and b.counters["starved"] == 0  # the first chunk is not a stall
        assert b.counters["switches"] == 2 and b.chunk_log[1]["delay_periods"] == d


def test_naive_async_at_delay_zero_is_the_sync_receding_horizon():
    a, s = make("naive_async", 0), make("sync", 0)
    assert drive(a, 12) == drive(s, 12) == [0, 1, 2, 100, 101, 102, 200, 201, 202, 300, 301, 302]
    assert a.counters == s.counters


def test_delay_shifts_which_actions_execute():
    """The request goes out when 3 actions remain (H - n_action_steps); a chunk planned at step s
    that arrives d steps later is executed from its row d on; the old plan runs meanwhile."""
    b = make("naive_async", 2)
    assert drive(b, 12) == [0, 1, 2, 3, 4, 102, 103, 104, 202, 203, 204, 302]
    assert [(e["sent_step"], e["arrival_step"]) for e in b.chunk_log] == [(0, 0), (3, 5), (6, 8), (9, 11)]
    assert b.counters["starved"] == b.counters["stalls"] == 0 and b.delay.steps == 2
    # d = 4: the old plan runs out first; default: hold the last action (counted)
    b = make("naive_async", 4)
    assert drive(b, 13) == [0, 1, 2, 3, 4, 5, 5, 104, 105, 105, 105, 204, 205]
    assert b.counters["starved"] == 3 and b.counters["stalls"] == 0
    # ... or wait for the chunk (the env does not advance: executed from row = steps since it was sent)
    b = make("naive_async", 4, on_starve="block")
    assert drive(b, 14) == [0, 1, 2, 3, 4, 5, 103, 104, 105, 202, 203, 204, 205, 303]
    assert b.counters["stalls"] == 1 + 2 + 1 and b.counters["starved"] == 0
    # a chunk arriving after its last step is discarded (counted); the robot holds
    b = make("naive_async", 7)
    acts = drive(b, 12)
    assert acts[:6] == [0, 1, 2, 3, 4, 5] and set(acts[6:]) == {5.0} and b.counters["discarded"] == 1


def test_request_remaining_sets_when_the_next_request_goes_out():
    b = make("naive_async", 1, request_remaining=5)
    drive(b, 6)
    assert [e["sent_step"] for e in b.chunk_log] == [0, 1, 2, 3, 4]  # every step: 5 of 6 remain after one
    with pytest.raises(ValueError, match="request_remaining"):
        make("naive_async", 1, request_remaining=-1)


# ------------------------------------------------------------------------------------------------
# rtc: what the request carries


@pytest.mark.parametrize("d", [1, 2, 3])
def test_rtc_prefix_is_the_actions_executed_during_the_delay(d):
    src = Scripted()
    b = make("rtc", d, src)
    acts = drive(b, 15)
    assert src.requests[0].get("prefix") is None  # nothing committed before the first chunk
    later = src.requests[1:]
    assert later and all(r["prefix"].shape == (1, d, 2) for r in later)  # the estimate learned d
    for r in later:
        s = r["step"]
        np.testing.assert_array_equal(r["prefix"][0, :, 0], acts[s:s + d])  # exactly what executed
        w, target = r["prefix_weights"], r["soft_target"]
        assert w.shape == (H,) and target.shape == (1, H, 2)
        np.testing.assert_allclose(w, rtc_prefix_weights(H, d, 3))  # 3 planned actions were left
        # the old plan, aligned: the 3 rows left of the previous chunk (consecutive), what ran without a switch
        np.testing.assert_array_equal(target[0, :3, 0], acts[s] + np.arange(3))
        assert (target[0, 3:, 0] == target[0, 2, 0]).all()  # padded (weight 0 there)
    # the chunk takes over at arrival with its own row d (its first d rows were the prefix)
    for k, (r, e) in enumerate(zip(later, b.chunk_log[1:]), start=1):
        assert e["arrival_step"] == r["step"] + d and e["prefix_len"] == d
        if e["arrival_step"] < len(acts):
            assert acts[e["arrival_step"]] == 100 * k + d


def test_rtc_prefix_holds_the_last_action_when_the_plan_is_shorter_than_the_delay():
    src = Scripted()
    b = make("rtc", 4, src)  # 3 actions left at each request, 4 execute before the chunk arrives
    acts = drive(b, 14)
    r = src.requests[2]
    s = r["step"]
    np.testing.assert_array_equal(r["prefix"][0, :, 0], acts[s:s + 4])
    assert acts[s + 3] == acts[s + 2]  # the held action is part of the prefix
    assert b.counters["starved"] >= 1


def test_rtc_weights_follow_the_paper_schedule():
    w = rtc_prefix_weights(8, 2, 6)
    assert w.dtype == np.float32 and (w[:2] == 1).all() and (w[6:] == 0).all()
    for i in range(2, 6):
        c = (6 - i) / 5
        assert w[i] == pytest.approx(c * math.expm1(c) / math.expm1(1.0), rel=1e-6)
    assert (np.diff(w) <= 0).all()
    assert (rtc_prefix_weights(4, 0, 0) == 0).all() and (rtc_prefix_weights(4, 6, 2) == 1).all()


def test_strategies_a_source_cannot_run_are_refused():
    no_inpaint = Scripted(inpaint=False)
    assert strategy_support(no_inpaint)["rtc"] and strategy_support(no_inpaint)["energy_gate"] is not None
    with pytest.raises(ValueError, match="inpaint"):
        ActionChunkBroker(no_inpaint, strategy="rtc")
    with pytest.raises(ValueError, match="score"):
        ActionChunkBroker(lambda o: np.zeros((1, 4, 2), np.float32), strategy="energy_gate")
    with pytest.raises(ValueError, match="strategy"):
        ActionChunkBroker(Scripted(), strategy="fastest")
    with pytest.raises(ValueError, match="on_starve"):
        ActionChunkBroker(Scripted(), strategy="naive_async", on_starve="skip")
    assert all(v is None for v in strategy_support(Scripted(energies=[])).values())


# ------------------------------------------------------------------------------------------------
# energy gate and temporal ensemble


def test_energy_gate_keeps_the_lower_energy_plan():
    src = Scripted(energies=[(-1.0, 0.0), (0.0, -1.0)])  # 1st gate: old plan lower; 2nd: new chunk lower
    b = make("energy_gate", 0, src)
    acts = drive(b, 9)
    # gate 1 at step 3: old = rest of chunk 0 then chunk 1's later rows; new = chunk 1 from row 0
    np.testing.assert_array_equal(src.scored[0][0, 0, :, 0], [3, 4, 5, 103, 104, 105])
    np.testing.assert_array_equal(src.scored[0][0, 1, :, 0], [100, 101, 102, 103, 104, 105])
    assert src.scored[0].shape == (1, 2, H, 2)
    # kept the old plan: 3, 4, 5, then chunk 1's tail; gate 2 at step 6 takes chunk 2
    assert acts == [0, 1, 2, 3, 4, 5, 200, 201, 202]
    assert b.counters["gate_rejections"] == 1 and b.counters["switches"] == 1
    assert [e["accepted"] for e in b.chunk_log] == [True, False, True]
    assert b.chunk_log[1]["energy_old"] == -1.0 and b.chunk_log[1]["energy_new"] == 0.0


def test_temporal_ensemble_averages_the_arrived_chunks():
    b = make("temporal_ensemble", 1, ensemble_decay=0.5)
    acts = drive(b, 6)
    # chunk 0 (step 0) alone until chunk 1 (sent at step 3) arrives at step 4 and joins
    assert acts[:4] == [0, 1, 2, 3]
    w0, w1 = math.exp(-0.5 * 4), math.exp(-0.5 * 1)
    assert acts[4] == pytest.approx((4 * w0 + 101 * w1) / (w0 + w1), rel=1e-6)
    assert b.counters["switches"] == 1 and b.last_switch is False


# ------------------------------------------------------------------------------------------------
# metrics and the delay estimate


def test_smoothness_on_hand_made_sequences():
    a = np.array([[0, 0], [1, 0], [1, 0], [4, 4]], np.float32)
    sm = action_smoothness(a, [2, 3, 0, 9])  # t = 0 and t >= T are ignored
    assert sm["switches"] == 2 and sm["max_switch_jump"] == 5.0 and sm["mean_switch_jump"] == 2.5
    # second differences: t=1: (1,0) - 2 (1,0) + (0,0) = (-1, 0) -> 1; t=2: (4,4) - 2 (1,0) + (1,0) = (3,4) -> 25
    assert sm["mean_sq_second_diff"] == 13.0
    line = action_smoothness(np.arange(10.0), [5])  # a ramp: jumps of 1, no curvature
    assert line["max_switch_jump"] == 1.0 and line["mean_sq_second_diff"] == 0.0
    short = action_smoothness(np.zeros((2, 3)), [])
    assert math.isnan(short["max_switch_jump"]) and math.isnan(short["mean_sq_second_diff"])


def test_delay_estimate_is_an_ewma_rounded_up():
    e = DelayEstimator(alpha=0.5)
    assert e.steps == 0
    e.update(2.2)
    assert e.steps == 3
    e.update(4.2)  # 0.5 * 4.2 + 0.5 * 2.2 = 3.2
    assert e.value == pytest.approx(3.2) and e.steps == 4
    e.update(float("nan"))
    assert e.count == 2
    assert DelayEstimator(initial=1.5, margin=1).steps == 3
    with pytest.raises(ValueError):
        DelayEstimator(alpha=0)


# ------------------------------------------------------------------------------------------------
# real time: a slow policy server at 20 Hz


class SlowScripted:
    """A policy-server 'policy': 300 ms per chunk, chunk k row i = 100 k + i (H = 16)."""

    def __init__(self, delay_s: float = 0.3) -> None:
        self.spec = ObservationSpec(num_views=1, image_size=8, obs_steps=1, state_dim=2, action_dim=2, horizon=16,
                                    embodiments=("toy",))
        self.cfg = SimpleNamespace(head="slow", execution=SimpleNamespace(mode="receding", n_action_steps=2,
                                                                          ensemble_decay=0.01))
        self.delay_s, self.calls = delay_s, 0

    def predict_chunk(self, obs, **options):  # prefix / guidance / budget options are accepted and ignored
        time.sleep(self.delay_s)
        k, self.calls = self.calls, self.calls + 1
        out = (100.0 * k + np.arange(16, dtype=np.float32))[None, :, None].repeat(2, axis=2)
        return SimpleNamespace(actions=out, energy=None, steps=np.ones(1), grad_norm=None, nfe=0)


def toy_obs() -> dict:
    return {"images": np.zeros((1, 1, 3, 8, 8), np.uint8), "instruction": ["go"],
            "state": np.zeros((1, 1, 2), np.float32), "embodiment": np.array([0])}


def fixed_rate(broker: ActionChunkBroker, steps: int, hz: float = 20.0) -> tuple[list[float], list[float]]:
    """A control loop at ``hz`` (a late step restarts the schedule: no burst to catch up)."""
    broker.reset()
    acts, took = [], []
    nxt = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        acts.append(float(broker.act(toy_obs())[0, 0]))
        took.append(time.perf_counter() - t0)
        nxt += 1.0 / hz
        wait = nxt - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        else:
            nxt = time.perf_counter()
    return acts, took


def test_async_broker_never_blocks_on_a_slow_server():
    """300 ms inference at 20 Hz (6-7 control periods; the request goes out when 4 actions remain):
    after the first chunk every act() returns within a few ms; the old plan keeps executing while
    a request is in flight; when it runs out the last action is held, and counted."""
    with PolicyServer(SlowScripted(), port=0) as srv, PolicyClient(srv.url) as client:
        b = ActionChunkBroker(client, strategy="naive_async", control_hz=20, request_remaining=4)
        try:
            acts, took = fixed_rate(b, 50)
        finally:
            b.close()
        assert took[0] >= 0.25  # the first chunk is waited for (nothing to execute before it)
        assert max(took[1:]) < 0.02, sorted(took)[-3:]
        log = b.chunk_log
        assert len(log) >= 3 and all(e["delay_periods"] >= 5.5 for e in log[1:])
        assert 6 <= b.delay.steps <= 8
        for prev, e in zip(log, log[1:]):
            s, a = e["sent_step"], e["arrival_step"]
            assert a - s >= 6  # 300 ms at 20 Hz
            assert all(int(x) // 100 == int(prev["id"]) for x in acts[s:a])  # the old plan (or its hold) ran
            assert acts[a] == 100 * e["id"] + (a - s)  # the new chunk from the row of this step
        held = sum(acts[t] == acts[t - 1] for t in range(1, len(acts)))
        assert b.counters["starved"] == held > 0 and b.counters["stalls"] == 0

        blocking = ActionChunkBroker(client, strategy="naive_async", control_hz=20, request_remaining=4,
                                     on_starve="block")
        try:
            acts, took = fixed_rate(blocking, 30)
        finally:
            blocking.close()
        assert blocking.counters["stalls"] > 0 and blocking.counters["starved"] == 0
        assert all(acts[t] != acts[t - 1] for t in range(1, len(acts)))  # never a held action


class RecordingServer(PolicyServer):
    """Records the request fields an RTC client sends (the server validates them, docs/serving.md)."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.fields: list[dict] = []

    def check_observation(self, req, *args):
        self.fields.append({k: req[k] for k in ("prefix", "prefix_weights", "soft_target", "latency_budget_ms")
                            if k in req})
        return super().check_observation(req, *args)


def test_policy_client_sends_rtc_request_fields():
    with RecordingServer(SlowScripted(0.0), port=0) as srv, PolicyClient(srv.url) as c:
        p = np.arange(6, dtype=np.float32).reshape(1, 3, 2)
        c.infer(toy_obs(), prefix=p, prefix_weights=np.ones(16, np.float32), soft_target=np.zeros((1, 16, 2)),
                latency_budget_ms=150.0)
        c.infer(toy_obs())
        with pytest.raises(ServerError, match="'prefix_weights' and 'soft_target' go together"):
            c.infer(toy_obs(), prefix_weights=np.ones(16, np.float32), soft_target=None)  # None is not sent
        with pytest.raises(ValueError, match="state"):
            c.infer(toy_obs(), state=np.zeros(2))
    got, plain, alone = srv.fields
    np.testing.assert_array_equal(got["prefix"], p)
    assert got["prefix_weights"].shape == (16,) and got["soft_target"].shape == (1, 16, 2)
    assert got["latency_budget_ms"] == 150.0 and plain == {} and set(alone) == {"prefix_weights"}


def test_sim_loop_through_the_server_keeps_its_rate_with_an_async_broker():
    """The robot path (eval.real.run_sim_loop): env -> client -> async broker at 20 Hz against a
    200 ms server; the loop never waits for inference after the first chunk."""
    from eval.real.run_sim_loop import run_sim_loop

    with PolicyServer(SlowScripted(0.2), port=0) as srv, PolicyClient(srv.url) as c:
        rep = run_sim_loop(c, "reach2d", tasks=["reach_green"], episodes_per_task=1, seed=0, strategy="naive_async",
                           control_hz=20.0, request_remaining=4)
    ep = rep["episodes"][0]
    assert ep["error"] is None and ep["length"] == 60 and rep["strategy"] == "naive_async"
    assert ep["act_ms_max"] < 20 and ep["overruns"] <= 2
    assert ep["chunks"] >= 4 and ep["stalls"] == 0 and ep["starved"] > 0 and ep["switches"] >= 3
    assert ep["max_switch_jump"] > 0 and math.isfinite(ep["mean_sq_second_diff"])


def test_brokers_copy_without_their_thread():
    """A policy holding a broker is deep-copied for EMA weights: the real-time timing copies (and
    pickles) without its thread or lock, and the copy works on its own."""
    import copy
    import pickle

    from vla_ebt_client import RealTime

    b = ActionChunkBroker(Scripted(), strategy="naive_async", request_remaining=3)
    drive(b, 2)  # the thread exists now
    c = copy.deepcopy(b)
    assert c.timing is not b.timing and c.timing._executor is None and c.timing.threaded
    assert drive(c, 3) == [100, 101, 102]  # its own copy of the source (1 request made)
    b.close()
    c.close()
    r = pickle.loads(pickle.dumps(RealTime(threaded=False)))
    assert r.threaded is False and r._executor is None
