"""The latency floor: whole policy and head alone, batch 1, every registered head's presets in one run.

One policy per head (``ebt``, ``flow``, ``diffusion``, ``regression``) on the same context encoder
(the default ``PolicyConfig``: EfficientNet-Lite0 + MiniLM composite backbone at 96 px, the shared
trunk width 256 / depth 8 / 4 heads, H 16, D 7; backbone frozen, i.e. no LoRA layers in the path),
batch 1, ``--threads`` torch threads (default 1). Methods are the heads' presets: ebt-2, flow-10,
ddim-10, ddpm-100, regression. Per method, interleaved round-robin (``head_latency.time_interleaved``):

* ``<m>_policy_ms``: ``predict_chunk(obs)`` (validation, encoding, head, unnormalization), the same
  instruction every call (the steady state of an episode: its text embedding is cached);
* ``<m>_head_ms``: ``head.predict(context)`` on the context of that observation;
* ``<m>_backbone_share``: median over calls of (latency - head time) / latency, measured inside
  the same ``predict_chunk`` calls (the part spent encoding the observation).

Reference rows measured in the same run (what the speed-ups changed): ``encode_ms`` (encoding with the
text-embedding cache) vs ``encode_uncached_text_ms`` (cache off: every call runs the text encoder);
``<m>_head_nokv_ms`` (the context's cross-attention keys / values recomputed at every step, the
behaviour before the cache); ``ebt_2_final_eval_head_ms`` (EBT-2 with the extra energy / gradient
evaluation at the output that ``predict`` used to run on every call). On CPU the median process CPU
time is reported too (``*_cpu_ms``).

Goals (issue 15), as ratios of this run: ``ebt2_head_over_ddim10`` <= 0.5, ``ebt2_head_over_flow10``
<= 0.5, ``ebt2_policy_over_regression`` <= 1.25; ``goals`` lists each with its value and whether it
was met. ``encode_ms_for_policy_goal``: the observation-encoding ms at which the last ratio would reach
its goal with this run's head times (a costlier backbone adds the same ms to both policies);
``--image-size`` sets the backbone's cost. ``--cuda-graphs`` (GPU) adds every head captured as one CUDA
graph (``VLAPolicy.capture_cuda_graph``): ``<m>_head_graph_ms``, ``<m>_policy_graph_ms`` (the observation
still encoded eagerly), ``<m>_head_graph_speedup`` and the goals' ratios as ``<key>_graph``; a head whose
call cannot be captured is listed in ``cuda_graph_capture`` with the error. docs/realtime.md has the committed numbers (docs/results/policy_latency.json).

    python benchmarks/policy_latency.py --out policy_latency.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.head_latency import time_interleaved  # noqa: E402
from vla_ebt.backbones import BackboneConfig  # noqa: E402
from vla_ebt.config_io import atomic_write_json  # noqa: E402
from vla_ebt.heads.trunk import TrunkConfig, context_kv_cache  # noqa: E402
from vla_ebt.normalize import DatasetStats, FeatureStats, Normalizer  # noqa: E402
from vla_ebt import policy as policy_module  # noqa: E402
from vla_ebt.policy import ExecutionConfig, FinetuneConfig, PolicyConfig, VLAPolicy  # noqa: E402

#: method -> (head, knobs): every registered head's presets (in this order: the scheduler-driven
#: diffusion heads, whose CUDA-graph capture is likeliest to fail, last)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "ebt_2": ("ebt", {"num_steps": 2}),
    "flow_10": ("flow", {"num_steps": 10}),
    "regression": ("regression", {}),
    "ddim_10": ("diffusion", {"sampler": "ddim", "num_steps": 10}),
    "ddpm_100": ("diffusion", {"sampler": "ddpm", "num_steps": 100}),
}
GOALS = {"ebt2_head_over_ddim10": 0.5, "ebt2_head_over_flow10": 0.5, "ebt2_policy_over_regression": 1.25}


def _normalizer(action_dim: int, state_dim: int) -> Normalizer:
    rng = np.random.default_rng(0)
    stats = {"robot": DatasetStats(action=FeatureStats.from_array(rng.uniform(-1, 1, (200, action_dim))),
                                   state=FeatureStats.from_array(rng.normal(size=(200, state_dim))),
                                   num_episodes=2, num_steps=200)}
    return Normalizer(stats, max_action_dim=action_dim, max_state_dim=state_dim)


def build_policies(args: argparse.Namespace) -> dict[str, VLAPolicy]:
    """One policy per head kind, all on the first one's context encoder (identical weights)."""
    cfg = PolicyConfig(
        backbone=BackboneConfig(family=args.backbone_family, image_size=args.image_size,
                                **({"model": args.backbone} if args.backbone else {})),
        finetune=FinetuneConfig(mode="frozen"),
        trunk=TrunkConfig(width=args.width, depth=args.depth, num_heads=args.heads),
        horizon=args.horizon,
        action_dim=args.action_dim,
        state_dim=args.state_dim,
        execution=ExecutionConfig(n_action_steps=min(8, args.horizon)),
    )
    policies: dict[str, VLAPolicy] = {}
    encoder = None
    for kind in dict.fromkeys(h for h, _ in METHODS.values()):
        torch.manual_seed(args.seed)
        if encoder is None:
            pol = VLAPolicy(dataclasses.replace(cfg, head=kind), _normalizer(args.action_dim, args.state_dim))
            encoder = pol.encoder
        else:  # the same encoder object (its pretrained weights are loaded once)
            orig = policy_module.ContextEncoder
            policy_module.ContextEncoder = lambda *_a, **_k: encoder
            try:
                pol = VLAPolicy(dataclasses.replace(cfg, head=kind), _normalizer(args.action_dim, args.state_dim))
            finally:
                policy_module.ContextEncoder = orig
        policies[kind] = pol.to(args.device).eval()
    return policies


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    policies = build_policies(args)
    g = torch.Generator().manual_seed(args.seed)
    obs = {
        "images": torch.randint(0, 256, (1, 1, 3, args.image_size, args.image_size), generator=g, dtype=torch.uint8),
        "instruction": ["pick up the red block and put it in the drawer"],
        "state": torch.randn(1, 1, args.state_dim, generator=g),
        "embodiment": torch.zeros(1, dtype=torch.long),
    }
    any_pol = next(iter(policies.values()))
    text_encoder = getattr(any_pol.encoder.backbone, "text_encoder", None)
    with torch.no_grad():
        ctx = any_pol.encode(obs)
    shares: dict[str, list[float]] = {m: [] for m in METHODS}

    def policy_fn(m: str) -> Callable[[], object]:
        kind, knobs = METHODS[m]
        pol = policies[kind]

        def call() -> object:
            out = pol.predict_chunk(obs, **knobs)
            shares[m].append((out.latency_ms - out.head_ms) / out.latency_ms)
            return out
        return call

    def head_fn(m: str, kv_cache: bool = True, **extra: Any) -> Callable[[], object]:
        kind, knobs = METHODS[m]
        head = policies[kind].head

        def call() -> object:
            with torch.no_grad(), context_kv_cache(kv_cache):
                return head.predict(ctx, **knobs, **extra)
        return call

    def encode_fn(text_cache: bool) -> Callable[[], object]:
        def call() -> object:
            size = text_encoder.cache_size if text_encoder is not None else 0
            if text_encoder is not None and not text_cache:
                text_encoder.cache_size = 0
            try:
                with torch.no_grad():
                    return any_pol.encode(obs)
            finally:
                if text_encoder is not None:
                    text_encoder.cache_size = size
        return call

    fns: dict[str, Callable[[], object]] = {}
    for m in METHODS:
        fns[f"{m}_policy"] = policy_fn(m)
        fns[f"{m}_head"] = head_fn(m)
    fns["encode"] = encode_fn(True)
    fns["encode_uncached_text"] = encode_fn(False)
    captures: dict[str, str] = {}
    if args.cuda_graphs:  # every method's head captured once (heads.cuda_graph), head alone and whole policy
        if device.type != "cuda":
            raise SystemExit("--cuda-graphs needs --device cuda")
        graph_policies = build_policies(args)  # separate policies: the eager rows stay eager
        for m, (kind, knobs) in METHODS.items():
            try:
                graphed = graph_policies[kind].capture_cuda_graph(obs, **knobs)
            except Exception as e:  # noqa: BLE001 - a head whose call cannot be captured is reported, not fatal
                captures[m] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                continue
            captures[m] = "captured"
            fns[f"{m}_head_graph"] = (lambda g=graphed: g(ctx))
            fns[f"{m}_policy_graph"] = (lambda pol=graph_policies[kind], k=knobs: pol.predict_chunk(obs, **k))
    if not args.skip_reference:
        for m in METHODS:
            fns[f"{m}_head_nokv"] = head_fn(m, kv_cache=False)
        fns["ebt_2_final_eval_head"] = head_fn("ebt_2", final_eval=True)

    result: dict[str, Any] = {}
    for m in METHODS:
        result[f"{m}_nfe"] = int(fns[f"{m}_head"]().nfe)
    if "ebt_2_final_eval_head" in fns:
        result["ebt_2_final_eval_nfe"] = int(fns["ebt_2_final_eval_head"]().nfe)
    for v in shares.values():
        v.clear()
    wall, cpu = time_interleaved(fns, device, args.repeats, args.warmup)
    for name in fns:
        result[f"{name}_ms"] = wall[name]
        if device.type == "cpu":
            result[f"{name}_cpu_ms"] = cpu[name]
    for m in METHODS:
        result[f"{m}_backbone_share"] = statistics.median(shares[m][args.warmup:] or shares[m])

    result["ebt2_head_over_ddim10"] = result["ebt_2_head_ms"] / result["ddim_10_head_ms"]
    result["ebt2_head_over_flow10"] = result["ebt_2_head_ms"] / result["flow_10_head_ms"]
    result["ebt2_policy_over_regression"] = result["ebt_2_policy_ms"] / result["regression_policy_ms"]
    if device.type == "cpu":
        result["ebt2_head_over_ddim10_cpu"] = result["ebt_2_head_cpu_ms"] / result["ddim_10_head_cpu_ms"]
        result["ebt2_head_over_flow10_cpu"] = result["ebt_2_head_cpu_ms"] / result["flow_10_head_cpu_ms"]
        result["ebt2_policy_over_regression_cpu"] = result["ebt_2_policy_cpu_ms"] / result["regression_policy_cpu_ms"]
    if captures:
        result["cuda_graph_capture"] = captures
        pairs = {"ebt2_head_over_ddim10": ("ebt_2_head", "ddim_10_head"), "ebt2_head_over_flow10": ("ebt_2_head", "flow_10_head"),
                 "ebt2_policy_over_regression": ("ebt_2_policy", "regression_policy")}
        for key, (num, den) in pairs.items():
            if f"{num}_graph_ms" in result and f"{den}_graph_ms" in result:
                result[f"{key}_graph"] = result[f"{num}_graph_ms"] / result[f"{den}_graph_ms"]
        for m in METHODS:
            if f"{m}_head_graph_ms" in result:
                result[f"{m}_head_graph_speedup"] = result[f"{m}_head_ms"] / result[f"{m}_head_graph_ms"]
    result["goals"] = {k: {"value": result[k], "target": t, "met": result[k] <= t} for k, t in GOALS.items()}
    # a costlier backbone adds the same encoding ms to both whole-policy times: the encoding time at
    # which EBT-2 / regression reaches its goal with this run's head times
    goal = GOALS["ebt2_policy_over_regression"]
    gap = result["ebt_2_policy_ms"] - goal * result["regression_policy_ms"]
    result["encode_ms_for_policy_goal"] = result["encode_ms"] + max(0.0, gap / (goal - 1.0))
    if hasattr(os, "getloadavg"):
        result["load_avg_1min"] = os.getloadavg()[0]
    result["methods"] = {m: {"head": h, "knobs": k} for m, (h, k) in METHODS.items()}
    result["config"] = {
        "backbone": f"{args.backbone_family} {args.backbone or BackboneConfig().model} (frozen)",
        "image_size": args.image_size,
        "context_tokens": int(ctx.tokens.shape[1]),
        "width": args.width,
        "depth": args.depth,
        "num_heads": args.heads,
        "horizon": args.horizon,
        "action_dim": args.action_dim,
        "batch": 1,
        "repeats": args.repeats,
        "warmup": args.warmup,
    }
    marker = Path(args.backbone or "") / "random_weights.json"  # written by benchmarks/random_vlm.py
    if args.backbone and marker.is_file():
        result["config"]["backbone_random_weights"] = json.loads(marker.read_text())
    result["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result["threads"] = torch.get_num_threads()
    result["torch_version"] = torch.__version__
    result["date"] = time.strftime("%Y-%m-%d")
    return result


def print_table(r: dict) -> None:
    print(f"\npolicy latency, batch 1, device={r['device']}, threads={r['threads']}, torch {r['torch_version']}, "
          f"{r['config']['context_tokens']} context tokens")
    cpu = "ebt_2_policy_cpu_ms" in r
    print(f"{'method':<12}{'nfe':>5}{'policy ms':>11}{'head ms':>10}{'backbone':>10}"
          + (f"{'policy cpu':>12}{'head cpu':>10}" if cpu else "") + f"{'head no-KV':>12}")
    for m in METHODS:
        row = (f"{m:<12}{r[f'{m}_nfe']:>5}{r[f'{m}_policy_ms']:>11.2f}{r[f'{m}_head_ms']:>10.2f}"
               f"{r[f'{m}_backbone_share']:>10.2f}")
        if cpu:
            row += f"{r[f'{m}_policy_cpu_ms']:>12.2f}{r[f'{m}_head_cpu_ms']:>10.2f}"
        row += f"{r.get(f'{m}_head_nokv_ms', float('nan')):>12.2f}"
        print(row)
    print(f"encode {r['encode_ms']:.2f} ms (text cache off: {r['encode_uncached_text_ms']:.2f} ms)"
          + (f"; EBT-2 head with the final evaluation {r['ebt_2_final_eval_head_ms']:.2f} ms"
             if "ebt_2_final_eval_head_ms" in r else ""))
    print(f"encoding time at which ebt2_policy_over_regression would meet its goal: "
          f"{r['encode_ms_for_policy_goal']:.1f} ms (this backbone: {r['encode_ms']:.1f} ms)")
    if "cuda_graph_capture" in r:
        print("CUDA graphs (whole head call captured once, replayed per chunk):")
        for m, status in r["cuda_graph_capture"].items():
            if status == "captured":
                print(f"  {m:<12} head {r[f'{m}_head_graph_ms']:.3f} ms ({r[f'{m}_head_graph_speedup']:.1f}x eager), "
                      f"policy {r[f'{m}_policy_graph_ms']:.3f} ms")
            else:
                print(f"  {m:<12} not captured: {status}")
        for k in GOALS:
            if k + "_graph" in r:
                print(f"  {k}_graph = {r[k + '_graph']:.3f}")
    for k, g in r["goals"].items():
        extra = f" (process CPU: {r[k + '_cpu']:.3f})" if k + "_cpu" in r else ""
        print(f"{k} = {g['value']:.3f} (goal <= {g['target']}: {'met' if g['met'] else 'NOT met'}){extra}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="write results as JSON here (atomically)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per method (interleaved)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument("--action-dim", type=int, default=7)
    p.add_argument("--state-dim", type=int, default=8)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--backbone", default=None, help="BackboneConfig.model (default: the embedded composite); e.g. "
                   "efficientnet_lite0+DIR for a text encoder of the same architecture from a local folder")
    p.add_argument("--backbone-family", default=BackboneConfig().family,
                   help="BackboneConfig.family, e.g. idefics3 with --backbone DIR from benchmarks/random_vlm.py")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also time every head captured as a CUDA graph (needs --device cuda): <m>_head_graph_ms, "
                        "<m>_policy_graph_ms, the goals' ratios as <key>_graph")
    p.add_argument("--skip-reference", action="store_true",
                   help="skip the reference rows (no KV cache, EBT final evaluation)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    result = run(args)
    from benchmarks.provenance import git_state, machine

    result["git"], result["machine"] = git_state(), machine()
    print_table(result)
    if args.out:
        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
