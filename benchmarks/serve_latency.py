"""Policy-server round-trip latency vs in-process ``predict_chunk`` latency, 1 and 4 clients.

    python benchmarks/serve_latency.py --out runs/bench/serve_latency.json [--policy DIR]
        [--requests 50] [--warmup 5] [--clients 1 4]

Policy: ``--policy DIR`` (any folder written by ``save_pretrained``), else the default recipe's
``recipes.configs.recipes()["reach2d_ebt"].policy`` (untrained head, pretrained backbone) with a
Normalizer from reach2d expert-demo statistics, saved to a temporary folder. The server runs as
a subprocess (``python -m eval.real.serve --port 0 --port-file``, one torch thread, loopback),
as on a robot's inference box; the clients are threads of this process using
:class:`vla_ebt_client.PolicyClient` (uint8 images, B = 1 reach2d observations). The
in-process reference loads the same folder here and times ``predict_chunk`` on the same
observations (one torch thread) while the server is idle.

Every count is bounded: ``--warmup`` + ``--requests`` calls in-process and per client; startup
waits at most ``--start-timeout`` s; each request times out after 60 s.

JSON keys: ``inproc_p50_ms`` / ``inproc_p99_ms``; ``server_p50_ms`` / ``server_p99_ms`` (round
trip, 1 client); ``overhead_p50_ms`` (= server_p50 - inproc_p50); ``transport_p50_ms`` (round trip
minus the server's own time per request: network + codec + client); ``server_infer_p50_ms``
(model time measured in the server); and ``clients_<n>`` blocks with p50/p99 round trip,
throughput and lost requests per client count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _pct(x: list[float]) -> dict[str, float]:
    a = np.asarray(x, np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"n": int(a.size), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(a.mean())}


def build_default_policy(directory: Path, episodes_per_task: int = 5) -> Path:
    """The default recipe's policy with reach2d demo statistics, saved to ``directory``."""
    import torch

    from vla_ebt.data.episodes import dataset_stats
    from eval.sim.demos import collect_demos
    from eval.sim.suites import make_suite
    from recipes.configs import recipes
    from vla_ebt.normalize import Normalizer
    from vla_ebt.policy import VLAPolicy

    cfg = recipes()["reach2d_ebt"]
    suite = make_suite(cfg.data.suite, image_size=cfg.policy.backbone.image_size)
    eps = collect_demos(suite, None, episodes_per_task, seed=cfg.data.seed)
    norm = Normalizer({cfg.data.suite: dataset_stats(eps)}, max_action_dim=cfg.policy.action_dim,
                      max_state_dim=cfg.policy.state_dim)
    torch.manual_seed(0)
    VLAPolicy(cfg.policy, norm).save_pretrained(directory)
    return directory


def observations(spec: dict, n: int = 8, seed: int = 123) -> list[dict]:
    """B = 1 reach2d observations (uint8 images) matching the policy's spec."""
    from eval.sim.suites import make_suite

    suite = make_suite("reach2d", image_size=spec["image_size"])
    out = []
    for i in range(n):
        env = suite.make_env(suite.task_names()[i % 3], seed=seed + i)
        obs, _ = env.reset()
        img = np.repeat(obs["image"][None], spec["num_views"], axis=0)
        st = np.zeros((spec["obs_steps"], spec["state_dim"]), np.float32)
        st[:, : obs["state"].shape[0]] = obs["state"]
        out.append({"images": img[None], "instruction": [obs["instruction"]], "state": st[None],
                    "embodiment": np.array([0], np.int64)})
        env.close()
    return out


def start_server(policy_dir: Path, workdir: Path, timeout: float) -> tuple[subprocess.Popen, int]:
    port_file = workdir / "port"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    log = open(workdir / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "eval.real.serve", "--policy", str(policy_dir), "--host", "127.0.0.1", "--port", "0",
         "--port-file", str(port_file), "--threads", "1", "--log-level", "WARNING"],
        cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    t0 = time.time()
    while not port_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {(workdir / 'server.log').read_text()[-2000:]}")
        if time.time() - t0 > timeout:
            proc.terminate()
            raise TimeoutError(f"server did not start within {timeout} s")
        time.sleep(0.1)
    return proc, int(port_file.read_text())


def client_run(url: str, obs: list[dict], warmup: int, requests: int, out: dict, barrier: threading.Barrier | None):
    from vla_ebt_client import PolicyClient

    rtts, infer, server, lost = [], [], [], 0
    with PolicyClient(url, timeout_s=60.0) as c:
        for i in range(warmup):
            c.infer(obs[i % len(obs)])
        if barrier is not None:
            barrier.wait(timeout=120)
        for i in range(requests):
            try:
                r = c.infer(obs[i % len(obs)])
            except Exception:  # noqa: BLE001 - counted as lost
                lost += 1
                continue
            if r["actions"].shape[0] != 1:
                lost += 1
            rtts.append(r["round_trip_ms"])
            infer.append(r["infer_ms"])
            server.append(r["server_ms"])
    out.update(rtt=rtts, infer=infer, server=server, lost=lost)


def run_clients(url: str, obs: list[dict], n: int, warmup: int, requests: int) -> dict:
    results = [dict() for _ in range(n)]
    barrier = threading.Barrier(n)
    threads = [threading.Thread(target=client_run, args=(url, obs, warmup, requests, results[i], barrier))
               for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    wall = time.perf_counter() - t0
    rtt = [x for r in results for x in r.get("rtt", [])]
    transport = [a - b for r in results for a, b in zip(r.get("rtt", []), r.get("server", []))]
    infer = [x for r in results for x in r.get("infer", [])]
    return {
        "clients": n,
        "requests_per_client": requests,
        "completed": len(rtt),
        "lost": sum(r.get("lost", requests) for r in results),
        "round_trip": _pct(rtt),
        "server_infer": _pct(infer),
        "transport": _pct(transport),
        "throughput_rps": len(rtt) / wall,
    }


def interleaved_one_client(url: str, policy, obs: list[dict], warmup: int, requests: int) -> tuple[list[float], dict]:
    """In-process and 1-client server calls alternated request by request (same observations), so
    that drifts in machine load hit both alike; the other side is idle during each call."""
    from vla_ebt_client import PolicyClient

    inproc, rtt, infer, transport, lost = [], [], [], [], 0
    with PolicyClient(url, timeout_s=60.0) as c:
        for i in range(warmup):
            policy.predict_chunk(obs[i % len(obs)])
            c.infer(obs[i % len(obs)])
        server_wall = 0.0
        for i in range(requests):
            o = obs[i % len(obs)]
            t0 = time.perf_counter()
            policy.predict_chunk(o)
            inproc.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            try:
                r = c.infer(o)
            except Exception:  # noqa: BLE001 - counted as lost
                lost += 1
                continue
            server_wall += time.perf_counter() - t0
            rtt.append(r["round_trip_ms"])
            infer.append(r["infer_ms"])
            transport.append(r["round_trip_ms"] - r["server_ms"])
    one = {"clients": 1, "requests_per_client": requests, "completed": len(rtt), "lost": lost,
           "round_trip": _pct(rtt), "server_infer": _pct(infer), "transport": _pct(transport),
           "throughput_rps": len(rtt) / max(server_wall, 1e-9), "interleaved_with_inproc": True}
    return inproc, one


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--policy", default=None, help="saved policy folder (default: the default recipe's policy)")
    p.add_argument("--requests", type=int, default=50, help="timed requests per client (and in-process)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    p.add_argument("--start-timeout", type=float, default=180.0)
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    import torch

    from vla_ebt.config_io import atomic_write_json
    from vla_ebt.policy import VLAPolicy

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="serve_latency_") as tmp:
        work = Path(tmp)
        policy_dir = Path(a.policy) if a.policy else build_default_policy(work / "policy")
        policy = VLAPolicy.from_pretrained(policy_dir)
        spec = policy.spec.to_dict()
        obs = observations(spec)

        proc, port = start_server(policy_dir, work, a.start_timeout)
        try:
            url = f"ws://127.0.0.1:{port}"
            inproc, one = interleaved_one_client(url, policy, obs, a.warmup, a.requests)
            runs = {1: one}
            runs.update({n: run_clients(url, obs, n, a.warmup, a.requests) for n in a.clients if n != 1})
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    ip = _pct(inproc)
    one = runs[1]
    result = {
        "policy": str(a.policy or "recipes default (untrained head, reach2d stats)"),
        "head": policy.cfg.head,
        "device": "cpu",
        "torch_threads": 1,
        "inproc_p50_ms": ip["p50_ms"],
        "inproc_p99_ms": ip["p99_ms"],
        "server_p50_ms": one["round_trip"]["p50_ms"],
        "server_p99_ms": one["round_trip"]["p99_ms"],
        "overhead_p50_ms": one["round_trip"]["p50_ms"] - ip["p50_ms"],
        "transport_p50_ms": one["transport"]["p50_ms"],
        "server_infer_p50_ms": one["server_infer"]["p50_ms"],
        "inproc": ip,
        **{f"clients_{n}": r for n, r in runs.items()},
        "settings": {"requests": a.requests, "warmup": a.warmup, "clients": a.clients, "batch": 1,
                     "cpu_count": os.cpu_count()},
    }
    atomic_write_json(a.out, result)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=2))
    for n, r in runs.items():
        print(f"{n} client(s): round trip p50 {r['round_trip']['p50_ms']:.1f} ms, p99 {r['round_trip']['p99_ms']:.1f} ms, "
              f"{r['throughput_rps']:.1f} req/s, lost {r['lost']}")
    return result


if __name__ == "__main__":
    main()
