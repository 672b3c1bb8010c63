"""Per-chunk action-head latency: EBT (1/2/4/8 steps) vs DDPM-100 vs DDIM-10 vs flow-10 vs regression.

All heads share one trunk size and read the same random context (batch 1, ``--context-tokens``
tokens); the latency is the median wall time of ``--repeats`` ``predict`` calls after
``--warmup`` untimed ones, interleaved round-robin across methods (on CPU the median process
CPU time is reported too, as ``<method>_cpu_ms``). "nfe" is what each head reports: trunk
forwards for diffusion, flow and regression, forward + backward w.r.t. the actions for EBT (one per
step: the reported energy is the last step's; ``final_eval=True`` would add one evaluation at the output).
Every head's ``predict`` computes the context's cross-attention keys / values once per chunk. ``trunk_fwd_ms`` / ``trunk_fwd_bwd_ms`` time one bare
trunk forward (no autograd) and one forward + action-gradient, to convert nfe into forward
equivalents: ``backward_over_forward`` = (trunk_fwd_bwd - trunk_fwd) / trunk_fwd, the cost of the
backward (with the forward's graph recording) in forwards, so one EBT step costs
``ebt_step_forward_equiv`` = 1 + backward_over_forward forwards (compare ``EBTHead.capabilities.eval_cost``).
On CPU ``backward_over_forward_cpu`` is the same ratio from process CPU time, which time spent
descheduled for other work on a shared machine does not inflate.

    python benchmarks/head_latency.py --out head_latency.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

if __package__ in (None, ""):  # run as a script: benchmarks/ is a package of this checkout
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla_ebt.config_io import atomic_write_json  # noqa: E402
from vla_ebt.heads import (
    Context,
    DiffusionConfig,
    DiffusionHead,
    EBTConfig,
    EBTHead,
    FlowConfig,
    FlowHead,
    RegressionConfig,
    RegressionHead,
    TrunkConfig,
)

EBT_STEPS = (1, 2, 4, 8)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and process-CPU milliseconds per call of each fn.

    Calls are interleaved round-robin (one call of every fn per round), so slow drift in machine
    load (shared CPUs, thermal state) hits every method alike instead of whichever ran last.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            _sync(device)
            wall[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name].append((time.process_time() - c0) * 1e3)
    med = statistics.median
    return {k: med(v) for k, v in wall.items()}, {k: med(v) for k, v in cpu.items()}


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    torch.manual_seed(args.seed)
    trunk = TrunkConfig(width=args.width, depth=args.depth, num_heads=args.heads)
    shared = dict(trunk=trunk, horizon=args.horizon, action_dim=args.action_dim)
    ebt = EBTHead(EBTConfig(**shared)).to(device).eval()
    diff = DiffusionHead(DiffusionConfig(**shared)).to(device).eval()
    flow = FlowHead(FlowConfig(**shared)).to(device).eval()
    reg = RegressionHead(RegressionConfig(**shared)).to(device).eval()
    ctx = Context(
        torch.randn(1, args.context_tokens, args.width, device=device),
        torch.ones(1, args.context_tokens, dtype=torch.bool, device=device),
    )

    methods: dict[str, Callable] = {}
    for k in EBT_STEPS:
        methods[f"ebt_{k}"] = lambda k=k: ebt.predict(ctx, num_steps=k)
    methods["ddpm_100"] = lambda: diff.predict(ctx, sampler="ddpm", num_steps=100)
    methods["ddim_10"] = lambda: diff.predict(ctx, sampler="ddim", num_steps=10)
    methods["flow_10"] = lambda: flow.predict(ctx, num_steps=10)
    methods["regression"] = lambda: reg.predict(ctx)

    # Bare trunk costs, for reading nfe as forward equivalents.
    a = torch.randn(1, args.horizon, args.action_dim, device=device)

    def trunk_fwd() -> None:
        with torch.no_grad():
            ebt.trunk(a, ctx.tokens, ctx.mask)

    def trunk_fwd_bwd() -> None:
        x = a.clone().requires_grad_(True)
        with torch.enable_grad():
            torch.autograd.grad(ebt.trunk(x, ctx.tokens, ctx.mask).mean(), x)

    result: dict = {f"{name}_nfe": int(fn().nfe) for name, fn in methods.items()}
    timed = {**methods, "trunk_fwd": trunk_fwd, "trunk_fwd_bwd": trunk_fwd_bwd}
    wall, cpu = time_interleaved(timed, device, args.repeats, args.warmup)
    for name in timed:
        result[f"{name}_ms"] = wall[name]
    if device.type == "cpu":
        for name in timed:
            result[f"{name}_cpu_ms"] = cpu[name]

    result["ebt2_over_ddpm100"] = result["ebt_2_ms"] / result["ddpm_100_ms"]
    result["ebt2_over_ddim10"] = result["ebt_2_ms"] / result["ddim_10_ms"]
    result["flow10_over_ddim10"] = result["flow_10_ms"] / result["ddim_10_ms"]
    result["ebt2_over_flow10"] = result["ebt_2_ms"] / result["flow_10_ms"]
    fwd_ms = result["trunk_fwd_ms"]
    result["backward_over_forward"] = (result["trunk_fwd_bwd_ms"] - fwd_ms) / fwd_ms
    result["ebt_step_forward_equiv"] = 1.0 + result["backward_over_forward"]
    result["ebt_declared_eval_cost"] = EBTHead.capabilities.eval_cost
    if device.type == "cpu":
        fwd_cpu = result["trunk_fwd_cpu_ms"]
        result["backward_over_forward_cpu"] = (result["trunk_fwd_bwd_cpu_ms"] - fwd_cpu) / fwd_cpu
    result["nfe"] = {name: result[f"{name}_nfe"] for name in methods}
    result["config"] = {
        "width": args.width,
        "depth": args.depth,
        "num_heads": args.heads,
        "horizon": args.horizon,
        "action_dim": args.action_dim,
        "context_tokens": args.context_tokens,
        "batch": 1,
        "repeats": args.repeats,
        "warmup": args.warmup,
    }
    result["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result["threads"] = torch.get_num_threads()
    result["torch_version"] = torch.__version__
    return result


def print_table(r: dict) -> None:
    fwd = r["trunk_fwd_ms"]
    print(f"\nhead latency, batch 1, device={r['device']}, threads={r['threads']}, torch {r['torch_version']}")
    print(f"{'method':<12}{'ms/chunk':>10}{'nfe':>6}{'x fwd':>8}{'vs DDPM-100':>13}{'vs DDIM-10':>12}")
    for name in r["nfe"]:
        ms = r[f"{name}_ms"]
        print(
            f"{name:<12}{ms:>10.2f}{r[f'{name}_nfe']:>6}{ms / fwd:>8.1f}"
            f"{ms / r['ddpm_100_ms']:>13.3f}{ms / r['ddim_10_ms']:>12.3f}"
        )
    print(f"trunk forward {fwd:.2f} ms, forward + action-gradient {r['trunk_fwd_bwd_ms']:.2f} ms: "
          f"backward_over_forward = {r['backward_over_forward']:.2f}, one EBT step = "
          f"{r['ebt_step_forward_equiv']:.2f} forwards (declared eval_cost {r['ebt_declared_eval_cost']:g})"
          + (f"; from process CPU time {r['backward_over_forward_cpu']:.2f}" if "backward_over_forward_cpu" in r else ""))
    if "ddpm_100_cpu_ms" in r:
        cpu = "  ".join(f"{n} {r[f'{n}_cpu_ms']:.1f}" for n in r["nfe"])
        print(f"process CPU ms/chunk (excludes time descheduled for other work): {cpu}")
    print(f"ebt2_over_ddpm100 = {r['ebt2_over_ddpm100']:.3f}  ebt2_over_ddim10 = {r['ebt2_over_ddim10']:.3f}  "
          f"flow10_over_ddim10 = {r['flow10_over_ddim10']:.3f}  ebt2_over_flow10 = {r['ebt2_over_flow10']:.3f}")


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
    p.add_argument("--context-tokens", type=int, default=64)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0 = torch's default). Default 1: batch-1 heads are tiny and extra "
        "threads mostly add synchronization, badly so on small shared machines",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from benchmarks.provenance import LoadSampler, provenance

    with LoadSampler() as load:
        result = run(args)
    result.update(provenance(load))
    print_table(result)
    if args.out:
        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
