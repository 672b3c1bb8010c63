"""Loader throughput (decode + augment + chunk + collate) vs what a training step of the default
model consumes, measured in the same run, plus host memory over a long stream.

    python benchmarks/data_throughput.py --out runs/bench/data_throughput.json [--episodes-per-task 10]
        [--loader-batches 40] [--train-steps 6] [--long-batches 1500] [--workers 0]

Data: reach2d expert demos (the default recipe's data) written as shards with
``data_pipelines.shards.write_episodes`` (64 px PNG frames), streamed with
``vla_ebt.data.stream.EpisodeStream`` in train mode (random resized crop + color jitter) with the
default recipe's horizon / obs_steps / batch size. Training: ``VLAPolicy`` built from
``recipes.configs.recipes()["reach2d_ebt"].policy``, one ``compute_loss`` + backward + AdamW step per
batch, on batches pre-fetched from the loader (so loader time is not counted twice).

JSON keys: loader_samples_per_s, train_samples_per_s, ratio (= loader / train; target >= 3),
rss_mb_start / rss_mb_after_long_stream / peak_rss_mb (process peak, ru_maxrss) and the settings.
With ``--workers 0`` the loader runs in the main process on one thread: a lower bound for a
DataLoader with workers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--episodes-per-task", type=int, default=10)
    p.add_argument("--loader-batches", type=int, default=40)
    p.add_argument("--train-steps", type=int, default=6)
    p.add_argument("--long-batches", type=int, default=1500)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads for the training step")
    a = p.parse_args(argv)

    import torch

    from data_pipelines.shards import write_episodes
    from eval.sim.demos import collect_demos
    from eval.sim.suites import make_suite
    from recipes.configs import recipes
    from vla_ebt.data.stream import EpisodeStream, StreamConfig, StreamLoader, load_normalizer
    from vla_ebt.policy import VLAPolicy

    cfg = recipes()["reach2d_ebt"]
    pc = cfg.policy
    suite = make_suite(cfg.data.suite, image_size=pc.backbone.image_size)
    episodes = collect_demos(suite, None, a.episodes_per_task, seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="vla_ebt_bench_"))
    write_episodes(episodes, tmp / cfg.data.suite, cfg.data.suite, episodes_per_shard=16)
    normalizer = load_normalizer([tmp / cfg.data.suite], max_action_dim=pc.action_dim, max_state_dim=pc.state_dim)
    bs = cfg.optim.batch_size
    scfg = StreamConfig(image_size=pc.backbone.image_size, horizon=pc.horizon, obs_steps=pc.obs_steps,
                        batch_size=bs, train=True, seed=0)

    def make_loader():
        return StreamLoader(EpisodeStream([tmp / cfg.data.suite], normalizer, scfg), num_workers=a.workers)

    torch.set_num_threads(1)  # loader: one core, like one DataLoader worker
    it = iter(make_loader())
    for _ in range(3):
        next(it)
    t0 = time.perf_counter()
    batches = [next(it) for _ in range(a.loader_batches)]
    loader_sps = a.loader_batches * bs / (time.perf_counter() - t0)

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    policy = VLAPolicy(pc, normalizer)
    policy.train()
    opt = torch.optim.AdamW([q for q in policy.parameters() if q.requires_grad], lr=1e-4)

    def step(batch):
        loss, _ = policy.compute_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(batches[0])  # warm-up
    t0 = time.perf_counter()
    for i in range(a.train_steps):
        step(batches[1 + i % (len(batches) - 1)])
    train_sps = a.train_steps * bs / (time.perf_counter() - t0)
    del batches

    torch.set_num_threads(1)
    rss0 = _rss_mb()
    trace = []
    it = iter(make_loader())
    t0 = time.perf_counter()
    for i in range(a.long_batches):
        next(it)
        if i % max(1, a.long_batches // 10) == 0:
            trace.append(round(_rss_mb(), 1))
    long_s = time.perf_counter() - t0
    result = {
        "loader_samples_per_s": round(loader_sps, 1),
        "train_samples_per_s": round(train_sps, 2),
        "ratio": round(loader_sps / train_sps, 2),
        "rss_mb_start": round(rss0, 1),
        "rss_mb_after_long_stream": round(_rss_mb(), 1),
        "rss_mb_trace": trace,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "long_stream_samples": a.long_batches * bs,
        "long_stream_samples_per_s": round(a.long_batches * bs / long_s, 1),
        "settings": {"recipe": "reach2d_ebt", "batch_size": bs, "image_size": pc.backbone.image_size,
                     "horizon": pc.horizon, "obs_steps": pc.obs_steps, "loader_workers": a.workers,
                     "train_threads": a.threads, "episodes": len(episodes), "device": "cpu",
                     "augment": "RandomResizedCrop(0.9-1.0) + ColorJitter(0.2,0.2,0.2,0.05)"},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
