"""Training step time of the default recipe's policy with a frozen backbone: without vs with the frozen
feature cache (:mod:`vla_ebt.feature_cache`, what ``recipes/finetune.py`` installs for
``--policy.finetune.mode frozen``).

    python benchmarks/frozen_feature_cache.py --out runs/bench/frozen_feature_cache.json [--steps 20]
        [--warmup 3] [--rounds 2] [--frames 512] [--heads ebt regression] [--threads 1]

Per head: the default recipe's policy (``recipes()["default"].policy``) with ``finetune.mode =
"frozen"``; a pool of ``--frames`` synthetic 64 px frames with reach2d instructions; batches of
``--batch-size`` drawn from it by a seeded generator (the same batches for both settings). Training
is the real loop (``vla_ebt.train.train_policy``: loss, backward, clipping, AdamW, EMA). Uncached and
cached blocks alternate ``--rounds`` times on one policy (the cache is filled once over the pool,
untimed, then installed / removed); s/step = timed steps / time from the first timed batch request to
the end of the block (wall) and the process CPU time over the same steps (CPU: robust to other load on
the machine); the median block per setting is reported. The cache's hit rate over the timed
cached steps must be 1.0 (every training frame was encoded beforehand).

JSON keys: per head ``{head}_uncached_s_per_step``, ``{head}_cached_s_per_step``, ``{head}_speedup``
(uncached / cached wall), the same as ``*_cpu_s_per_step`` / ``{head}_cpu_speedup``,
``{head}_fill_s_per_frame``; details under "heads"; the settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

INSTRUCTIONS = ["move to the red dot", "move to the green dot", "move to the blue dot", "reach the red target",
                "go to the green target", "touch the blue circle"]


def measure(head: str, a: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from recipes.configs import recipes
    from vla_ebt.feature_cache import FrozenFeatureCache
    from vla_ebt.normalize import DatasetStats, FeatureStats, Normalizer
    from vla_ebt.policy import VLAPolicy
    from vla_ebt.train import train_policy

    torch.manual_seed(0)
    cfg = recipes()["default"]
    pc = dataclasses.replace(cfg.policy, head=head, finetune=dataclasses.replace(cfg.policy.finetune, mode="frozen"))
    rng = np.random.default_rng(0)
    stats = DatasetStats(action=FeatureStats.from_array(rng.uniform(-1, 1, (1000, pc.action_dim))),
                         state=FeatureStats.from_array(rng.normal(size=(1000, pc.state_dim))),
                         num_episodes=10, num_steps=1000)
    policy = VLAPolicy(pc, Normalizer({"reach2d": stats}, max_action_dim=pc.action_dim, max_state_dim=pc.state_dim))
    S, B, P = pc.backbone.image_size, a.batch_size, a.frames
    g = torch.Generator().manual_seed(0)
    # uint8 frames / 255, exactly as the training dataset delivers them
    frames = torch.randint(0, 256, (P, pc.num_views, 3, S, S), generator=g, dtype=torch.uint8).float().div_(255.0)
    instr = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(P)]
    n_batches = a.warmup + a.steps
    batches = []
    for _ in range(n_batches):
        idx = torch.randint(0, P, (B,), generator=g)
        batches.append({"images": frames[idx], "instruction": [instr[i] for i in idx.tolist()],
                        "state": torch.randn(B, pc.obs_steps, pc.state_dim, generator=g),
                        "embodiment": torch.zeros(B, dtype=torch.long),
                        "action": torch.rand(B, pc.horizon, pc.action_dim, generator=g) * 2 - 1,
                        "action_mask": torch.ones(B, pc.horizon, dtype=torch.bool)})

    def block() -> tuple[float, float]:
        """(wall s/step, CPU s/step) of the timed steps."""
        requested: list[tuple[float, float]] = []

        def stream():
            for b in batches:
                requested.append((time.perf_counter(), time.process_time()))
                yield b

        optim = dataclasses.replace(cfg.optim, steps=n_batches, batch_size=B, log_every=10**9, ckpt_every=0,
                                    tensorboard=False)
        train_policy(policy, stream(), optim, run_dir=None, progress=False)
        w0, c0 = requested[a.warmup]
        return (time.perf_counter() - w0) / a.steps, (time.process_time() - c0) / a.steps

    cache = FrozenFeatureCache()
    t0 = time.perf_counter()
    cache.fill(policy.encoder.backbone, ((frames[i:i + 64], instr[i:i + 64]) for i in range(0, P, 64)))
    fill_s = time.perf_counter() - t0
    cache.remove()
    uncached, cached = [], []
    for _ in range(a.rounds):
        uncached.append(block())
        cache.install(policy.encoder.backbone)
        cache.hits = cache.misses = 0
        cached.append(block())
        hit_rate = cache.stats()["hit_rate"]
        cache.remove()
        if hit_rate != 1.0:
            raise RuntimeError(f"feature cache hit rate {hit_rate} during the cached block (expected 1.0)")
    u, c = statistics.median(x[0] for x in uncached), statistics.median(x[0] for x in cached)
    uc, cc = statistics.median(x[1] for x in uncached), statistics.median(x[1] for x in cached)
    return {"head": head, "uncached_s_per_step": u, "cached_s_per_step": c, "speedup": u / c,
            "uncached_cpu_s_per_step": uc, "cached_cpu_s_per_step": cc, "cpu_speedup": uc / cc,
            "load_avg_1min": os.getloadavg()[0],
            "uncached_blocks": uncached, "cached_blocks": cached, "fill_s_per_frame": fill_s / P,
            "cache_entries": len(cache), "batch_size": B,
            "params_trainable": sum(p.numel() for p in policy.parameters() if p.requires_grad)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the results here as JSON")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per block")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each block")
    p.add_argument("--rounds", type=int, default=2, help="uncached / cached blocks per setting (alternating)")
    p.add_argument("--frames", type=int, default=512, help="distinct frames the batches are drawn from")
    p.add_argument("--batch-size", type=int, default=32, help="default: the default recipe's")
    p.add_argument("--heads", nargs="+", default=["ebt"])
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    a = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(a.threads)
    result: dict = {"heads": {}, "steps": a.steps, "warmup": a.warmup, "rounds": a.rounds, "frames": a.frames,
                    "threads": a.threads, "cpu_count": os.cpu_count(), "machine": platform.machine(),
                    "torch": torch.__version__}
    print("| head | uncached s/step | cached s/step | speed-up | CPU s/step uncached / cached | CPU speed-up | "
          "fill ms/frame |\n|---|---|---|---|---|---|---|")
    for head in a.heads:
        r = measure(head, a)
        result["heads"][head] = r
        for k in ("uncached_s_per_step", "cached_s_per_step", "speedup", "uncached_cpu_s_per_step",
                  "cached_cpu_s_per_step", "cpu_speedup", "fill_s_per_frame"):
            result[f"{head}_{k}"] = r[k]
        print(f"| {head} | {r['uncached_s_per_step']:.3f} | {r['cached_s_per_step']:.3f} | {r['speedup']:.2f}x | "
              f"{r['uncached_cpu_s_per_step']:.3f} / {r['cached_cpu_s_per_step']:.3f} | {r['cpu_speedup']:.2f}x | "
              f"{1e3 * r['fill_s_per_frame']:.1f} |", flush=True)
    if a.out:
        from vla_ebt.config_io import save_json

        save_json(a.out, result)
        print(f"[bench] wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
