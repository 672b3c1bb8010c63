"""Training throughput and peak host memory of the default recipe's policy: EBT vs diffusion head
(samples/s) and LoRA vs full fine-tuning (peak RSS), each configuration in a fresh subprocess.

    python benchmarks/train_throughput.py --out runs/bench/train_throughput.json [--steps 20]
        [--warmup 3] [--batch-size 32] [--threads 1]

Every configuration is ``recipes.configs.recipes()["default"].policy`` with one change (head kind or
fine-tuning mode), trained by ``vla_ebt.train.train_policy`` (the real loop: compute_loss, backward,
clipping, AdamW, EMA) on synthetic batches in the training schema (64 px images, reach2d
instructions; no demo collection, so no dataset in memory). samples/s = timed steps x batch /
time from the first timed batch request to the end of the loop (``--warmup`` steps excluded).
Peak memory = the child process's RSS high-water mark (``resource.getrusage(...).ru_maxrss``),
including the Python/torch runtime; ``*_model_rss_mb`` is the RSS after building the policy, so
peak - model is what training adds.

JSON keys: ebt_samples_per_s, diffusion_samples_per_s, ebt_over_diffusion (samples/s ratio),
lora_peak_mb, full_peak_mb, full_over_lora_peak (ratio), full_samples_per_s, per-configuration
details under "configs", and the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: configuration name -> (head, fine-tuning mode)
CONFIGS = {
    "ebt_lora": ("ebt", "lora"),
    "diffusion_lora": ("diffusion", "lora"),
    "ebt_full": ("ebt", "full"),
    "regression_lora": ("regression", "lora"),
    "flow_lora": ("flow", "lora"),
}
INSTRUCTIONS = ["move to the red dot", "move to the green dot", "move to the blue dot", "reach the red target"]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(spec: dict) -> dict:
    """Build the policy of one configuration, train, and measure (runs in a fresh process)."""
    import dataclasses

    import numpy as np
    import torch

    from recipes.configs import recipes
    from vla_ebt.normalize import DatasetStats, FeatureStats, Normalizer
    from vla_ebt.policy import VLAPolicy
    from vla_ebt.train import train_policy

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    rss_start = _rss_mb()
    cfg = recipes()["default"]
    pc = dataclasses.replace(cfg.policy, head=spec["head"],
                             finetune=dataclasses.replace(cfg.policy.finetune, mode=spec["mode"]))
    rng = np.random.default_rng(0)
    stats = DatasetStats(action=FeatureStats.from_array(rng.uniform(-1, 1, (1000, pc.action_dim))),
                         state=FeatureStats.from_array(rng.normal(size=(1000, pc.state_dim))),
                         num_episodes=10, num_steps=1000)
    policy = VLAPolicy(pc, Normalizer({"reach2d": stats}, max_action_dim=pc.action_dim, max_state_dim=pc.state_dim))
    rss_model = _rss_mb()
    B, S = spec["batch_size"], pc.backbone.image_size
    g = torch.Generator().manual_seed(0)
    batches = [{
        "images": torch.rand(B, pc.num_views, 3, S, S, generator=g),
        "instruction": [INSTRUCTIONS[(i + k) % len(INSTRUCTIONS)] for i in range(B)],
        "state": torch.randn(B, pc.obs_steps, pc.state_dim, generator=g),
        "embodiment": torch.zeros(B, dtype=torch.long),
        "action": torch.rand(B, pc.horizon, pc.action_dim, generator=g) * 2 - 1,
        "action_mask": torch.ones(B, pc.horizon, dtype=torch.bool),
    } for k in range(3)]
    requested: list[float] = []

    def stream():
        i = 0
        while True:
            requested.append(time.perf_counter())
            yield batches[i % len(batches)]
            i += 1

    total = spec["warmup"] + spec["steps"]
    optim = dataclasses.replace(cfg.optim, steps=total, batch_size=B, log_every=10**9, ckpt_every=0)
    res = train_policy(policy, stream(), optim, run_dir=None, progress=False)
    t_end = time.perf_counter()
    timed = t_end - requested[spec["warmup"]]
    return {
        "head": spec["head"], "mode": spec["mode"], "batch_size": B, "steps_timed": spec["steps"],
        "samples_per_s": spec["steps"] * B / timed, "seconds_per_step": timed / spec["steps"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "model_rss_mb": rss_model, "start_rss_mb": rss_start,
        "params_total": sum(p.numel() for p in policy.parameters()),
        "params_trainable": sum(p.numel() for p in policy.parameters() if p.requires_grad),
        "final_loss": res.losses[-1],
    }


def run_config(name: str, args: argparse.Namespace) -> dict:
    head, mode = CONFIGS[name]
    spec = {"head": head, "mode": mode, "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size,
            "threads": args.threads}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"configuration {name} failed:\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t0
    return out


def table(configs: dict[str, dict]) -> str:
    lines = ["| config | samples/s | s/step | peak RSS MB | model RSS MB | trainable params |", "|---|---|---|---|---|---|"]
    for name, c in configs.items():
        lines.append(f"| {name} | {c['samples_per_s']:.1f} | {c['seconds_per_step']:.3f} | {c['peak_rss_mb']:.0f} | "
                     f"{c['model_rss_mb']:.0f} | {c['params_trainable'] / 1e6:.2f}M |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the results here as JSON")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=32, help="default: the default recipe's")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each child")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return {}
    if a.steps < 1 or a.warmup < 1:
        p.error("--steps and --warmup must be >= 1")
    import torch

    from benchmarks.provenance import LoadSampler, provenance

    configs = {}
    with LoadSampler() as load:
        for name in a.configs:
            print(f"[bench] {name} ...", flush=True)
            configs[name] = run_config(name, a)
    result: dict = {**provenance(load), "configs": configs, "steps": a.steps, "warmup": a.warmup, "batch_size": a.batch_size,
                    "threads": a.threads, "cpu_count": os.cpu_count(), "arch": platform.machine(),
                    "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    c = configs
    if "ebt_lora" in c:
        result["ebt_samples_per_s"] = c["ebt_lora"]["samples_per_s"]
        result["lora_peak_mb"] = c["ebt_lora"]["peak_rss_mb"]
    if "diffusion_lora" in c:
        result["diffusion_samples_per_s"] = c["diffusion_lora"]["samples_per_s"]
    if "regression_lora" in c:
        result["regression_samples_per_s"] = c["regression_lora"]["samples_per_s"]
    if "flow_lora" in c:
        result["flow_samples_per_s"] = c["flow_lora"]["samples_per_s"]
    if "ebt_full" in c:
        result["full_peak_mb"] = c["ebt_full"]["peak_rss_mb"]
        result["full_samples_per_s"] = c["ebt_full"]["samples_per_s"]
    if "ebt_samples_per_s" in result and "diffusion_samples_per_s" in result:
        result["ebt_over_diffusion"] = result["ebt_samples_per_s"] / result["diffusion_samples_per_s"]
    if "lora_peak_mb" in result and "full_peak_mb" in result:
        result["full_over_lora_peak"] = result["full_peak_mb"] / result["lora_peak_mb"]
        result["full_over_lora_training_mb"] = ((c["ebt_full"]["peak_rss_mb"] - c["ebt_full"]["model_rss_mb"])
                                                / max(c["ebt_lora"]["peak_rss_mb"] - c["ebt_lora"]["model_rss_mb"], 1e-9))
    print(table(configs))
    for k in ("ebt_over_diffusion", "full_over_lora_peak", "full_over_lora_training_mb"):
        if k in result:
            print(f"{k}: {result[k]:.3f}")
    if a.out:
        from vla_ebt.config_io import atomic_write_json

        atomic_write_json(a.out, result)
        print(f"[bench] wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
