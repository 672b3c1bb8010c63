"""Drive a simulated suite (reach2d) through the policy server, exactly as a robot would.

The robot path under test, all of it from the torch-free :mod:`vla_ebt_client`: env observation ->
numpy observation (:class:`~vla_ebt_client.ObservationHistory`) -> :class:`~vla_ebt_client.PolicyClient`
over WebSocket -> :class:`~vla_ebt_client.ActionChunkBroker` (receding horizon or temporal
ensembling, or an asynchronous strategy whose requests run in a background thread while the loop
keeps its ``--control-hz`` rate) -> ``env.step``. Reports success per task, episode lengths,
round-trip latency and, per episode, chunk switches, stalls, starved steps and action smoothness.

::

    python -m eval.real.serve --policy runs/default/policy --port 8000 &
    python -m eval.real.run_sim_loop --url ws://127.0.0.1:8000 --episodes 5 --out sim_loop.json
    # or serve in-process on a free loopback port:
    python -m eval.real.run_sim_loop --policy runs/default/policy --episodes 5
    # asynchronous execution at a fixed 20 Hz (the loop never waits for inference):
    python -m eval.real.run_sim_loop --policy runs/default/policy --strategy naive_async --control-hz 20
    # real-time chunking (a prefix + soft guidance per request; inpainting heads) or the energy gate
    # (the server's score request; EBT):
    python -m eval.real.run_sim_loop --policy runs/default/policy --strategy rtc --control-hz 20
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vla_ebt_client import STRATEGIES, ActionChunkBroker, ObservationHistory, PolicyClient, action_smoothness

__all__ = ["run_episode", "run_sim_loop", "main"]


def run_episode(broker: ActionChunkBroker, suite: Any, task: str, seed: int, embodiment: int, obs_steps: int,
                image_history: bool = False, split: str = "train", control_hz: float | None = None) -> dict[str, Any]:
    """One episode through the broker; errors end the episode as a failure (recorded). With
    ``control_hz`` the loop keeps that rate (sleeps to the next tick; ``overruns`` counts the
    steps that took longer than a period, ``act_ms_max`` the slowest ``act`` after the first)."""
    t0 = time.perf_counter()
    res: dict[str, Any] = {"task": task, "seed": seed, "success": False, "length": 0, "chunks": 0, "error": None,
                           "overruns": 0, "act_ms_max": None}
    env = suite.make_env(task, seed=seed, split=split)
    chunks0 = broker.chunks
    actions: list[np.ndarray] = []
    switches: list[int] = []
    act_ms: list[float] = []
    period = 1.0 / control_hz if control_hz else None
    try:
        obs, info = env.reset(seed=seed)
        res["instruction"] = str(obs["instruction"])
        broker.reset()
        history = ObservationHistory(obs_steps, image_history, embodiment)
        next_tick = time.perf_counter()
        for _ in range(suite.max_episode_steps):
            o = history(obs)
            o["images"] = o["images"].astype(np.uint8, copy=False)  # the wire carries uint8 frames
            ta = time.perf_counter()
            act = np.asarray(broker.act(o), np.float32).reshape(-1)[: suite.action_dim]
            act_ms.append((time.perf_counter() - ta) * 1e3)
            if broker.last_switch:
                switches.append(len(actions))
            actions.append(act)
            obs, _, terminated, truncated, info = env.step(act)
            res["length"] += 1
            if terminated or truncated:
                break
            if period:
                next_tick += period
                wait = next_tick - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                else:
                    res["overruns"] += 1
                    next_tick = time.perf_counter()
        res["success"] = bool(info.get("is_success", False))
        res["final_distance"] = float(info.get("distance", float("nan")))
    except Exception as e:  # noqa: BLE001 - one failing episode must not end the run
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        env.close()
    res["chunks"] = broker.chunks - chunks0
    res.update({k: broker.counters[k] for k in ("switches", "stalls", "starved", "gate_rejections")})
    if actions:
        sm = action_smoothness(np.stack(actions), switches)
        res.update({k: sm[k] for k in ("max_switch_jump", "mean_switch_jump", "mean_sq_second_diff")})
    res["act_ms_max"] = max(act_ms[1:]) if len(act_ms) > 1 else None
    res["wall_s"] = time.perf_counter() - t0
    return res


def run_sim_loop(
    client: PolicyClient,
    suite_name: str = "reach2d",
    tasks: Sequence[str] | None = None,
    episodes_per_task: int = 2,
    seed: int = 10_000,
    mode: str | None = None,
    n_action_steps: int | None = None,
    embodiment: int | str | None = None,
    split: str = "train",
    log: Any = None,
    strategy: str = "sync",
    control_hz: float | None = None,
    on_starve: str = "hold",
    request_remaining: int | None = None,
) -> dict[str, Any]:
    """Run ``episodes_per_task`` episodes of each task through ``client``; return a report dict.
    strategy / on_starve / request_remaining: the broker's (async strategies run requests in a
    background thread); control_hz: the loop's fixed rate (None: as fast as the env steps)."""
    from vla_ebt.data.episodes import episode_seed
    from eval.sim.suites import make_suite

    meta = client.metadata
    suite = make_suite(suite_name, image_size=int(meta.get("image_size", 64)))
    tasks = list(suite.task_names() if not tasks else tasks)
    for t in tasks:
        suite.check_task(t)
    names = list(meta.get("embodiments", []))
    if embodiment is None:
        emb = names.index(suite_name) if suite_name in names else 0
    elif isinstance(embodiment, str) and not embodiment.isdigit():
        if embodiment not in names:
            raise ValueError(f"unknown embodiment {embodiment!r}; the server knows {names}")
        emb = names.index(embodiment)
    else:
        emb = int(embodiment)
    obs_steps = int(meta.get("obs_steps", 1))
    views = int(meta.get("cameras", suite.num_views))
    image_history = obs_steps > 1 and views == suite.num_views * obs_steps
    if not image_history and views != suite.num_views:
        raise ValueError(f"the policy expects {views} camera views; suite {suite_name!r} renders {suite.num_views}")
    broker = ActionChunkBroker(client, mode=mode, n_action_steps=n_action_steps, strategy=strategy,
                               control_hz=control_hz, on_starve=on_starve, request_remaining=request_remaining)
    t0 = time.perf_counter()
    episodes = []
    try:
        for task in tasks:
            for i in range(episodes_per_task):
                r = run_episode(broker, suite, task, episode_seed(seed, task, i), emb, obs_steps, image_history, split,
                                control_hz)
                r["index"] = i
                episodes.append(r)
                if log:
                    log(f"{task} #{i}: {'ok' if r['success'] else ('ERROR ' + r['error'] if r['error'] else 'fail')} "
                        f"in {r['length']} steps, {r['chunks']} chunks, {r['stalls']} stalls, {r['starved']} starved")
    finally:
        broker.close()
    per_task = {}
    for task in tasks:
        eps = [e for e in episodes if e["task"] == task]
        per_task[task] = {"episodes": len(eps), "successes": sum(e["success"] for e in eps),
                          "success_rate": sum(e["success"] for e in eps) / max(1, len(eps))}
    n = len(episodes)
    return {
        "suite": suite_name,
        "url": client.url,
        "mode": broker.mode,
        "n_action_steps": broker.n_action_steps,
        "strategy": broker.strategy,
        "control_hz": control_hz,
        "on_starve": broker.on_starve,
        "stalls": sum(e["stalls"] for e in episodes),
        "starved": sum(e["starved"] for e in episodes),
        "embodiment": emb,
        "seed": seed,
        "episodes_total": n,
        "success_rate": sum(e["success"] for e in episodes) / n if n else float("nan"),
        "errors": sum(e["error"] is not None for e in episodes),
        "per_task": per_task,
        "latency": broker.latency_stats(),
        "wall_s": time.perf_counter() - t0,
        "episodes": episodes,
    }


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m eval.real.run_sim_loop", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="ws://host:port of a running policy server")
    src.add_argument("--policy", help="serve this saved policy in-process on a free loopback port")
    p.add_argument("--token", default=None)
    p.add_argument("--suite", default="reach2d")
    p.add_argument("--tasks", nargs="*", default=None)
    p.add_argument("--episodes", type=int, default=2, help="episodes per task")
    p.add_argument("--seed", type=int, default=10_000)
    p.add_argument("--mode", choices=["receding", "ensemble"], default=None, help="default: the policy's config")
    p.add_argument("--n-action-steps", type=int, default=None)
    p.add_argument("--strategy", choices=list(STRATEGIES), default="sync",
                   help="chunk execution; the async ones never wait for inference (docs/realtime.md)")
    p.add_argument("--control-hz", type=float, default=None, help="keep this control rate (default: free running)")
    p.add_argument("--on-starve", choices=["hold", "block"], default="hold",
                   help="async: the plan ran out before the next chunk: hold the last action or wait")
    p.add_argument("--request-remaining", type=int, default=None,
                   help="async: request the next chunk when this many actions remain (default H - n_action_steps)")
    p.add_argument("--embodiment", default=None, help="name or id (default: the suite's name if known, else 0)")
    p.add_argument("--split", default="train", choices=["train", "heldout"])
    p.add_argument("--out", default=None, help="write the report JSON here")
    a = p.parse_args(argv)
    server = None
    url = a.url
    if a.policy:
        import torch

        from vla_ebt.policy import VLAPolicy

        from .serve import PolicyServer

        torch.set_num_threads(1)
        server = PolicyServer(VLAPolicy.from_pretrained(a.policy), port=0, token=a.token, name=a.policy).start()
        url = server.url
    try:
        with PolicyClient(url, token=a.token) as client:
            report = run_sim_loop(client, a.suite, a.tasks, a.episodes, a.seed, a.mode, a.n_action_steps,
                                  a.embodiment, a.split, log=print, strategy=a.strategy, control_hz=a.control_hz,
                                  on_starve=a.on_starve, request_remaining=a.request_remaining)
    finally:
        if server is not None:
            server.stop()
    lat = report["latency"]["round_trip"]
    print(f"success {report['success_rate']:.3f} over {report['episodes_total']} episodes; round trip "
          f"p50 {lat['p50_ms'] or float('nan'):.1f} ms, p99 {lat['p99_ms'] or float('nan'):.1f} ms")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(_json_safe(report), indent=2))
    return report


if __name__ == "__main__":
    main()
