"""Per-rank peak memory of ZeRO-2 vs ZeRO-3 training on a model whose backbone dominates.

    python benchmarks/zero_memory.py --out runs/bench/zero_memory.json [--steps 3] [--batch-size 2]
        [--layers 12] [--hidden 1024] [--stages 2 3] [--mode lora] [--model-dir DIR]
        [--malloc-mmap-threshold 131072]

The backbone is a PaliGemma-architecture VLM (SigLIP + Gemma, random init, built locally like
``vla_ebt.backbones.tiny`` but wider and deeper: ~190M parameters by default) with LoRA on its language
model (the ``oxe_mix`` recipe's setup), EBT head; 2 ranks (torchrun, gloo on CPU) train ``--steps`` steps
of ``vla_ebt.train.train_policy`` through ``recipes/deepspeed/zero{2,3}.json`` on synthetic batches.

Measured per rank, memory = the process's resident set (RSS, /proc/self/status), not a torch
allocator statistic (torch keeps none on CPU). It includes the Python / torch / transformers /
DeepSpeed runtime, the same for every stage:

* ``rss_runtime_mb``: after the imports and the process group, before building the model;
* ``rss_built_mb``: after building the policy (full weights on every rank: the model is built before
  DeepSpeed partitions it, so this is the same for both stages);
* ``rss_init_mb``: after ``deepspeed.initialize`` (+ ``gc`` and glibc ``malloc_trim`` so freed
  memory is returned): what the rank keeps for training;
* ``peak_train_mb``: the RSS high-water mark (VmHWM) over the training steps, reset right after
  initialization (``/proc/self/clear_refs``), i.e. the per-rank peak that training needs (params,
  gathered layers, gradients, optimizer states, activations, EBT unroll; under ZeRO-3 also the
  policy gathered on rank 0 when ``train_policy`` returns);
* ``peak_above_runtime_mb``: ``peak_train_mb - rss_runtime_mb``, what the model and training add;
* ``param_elements``: parameter elements this rank holds (whole tensors + its ZeRO-3 partitions; the
  parameters ZeRO-3 keeps whole count twice: the full tensor and the partition DeepSpeed keeps of it);
  ``backbone_submodule_elements``: the same for the partitioned part only.

The ranks run with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed (``--malloc-mmap-threshold``, default
128 KiB; 0 leaves glibc's default): every tensor of 128 KiB or more is then its own mapping, returned
to the system when freed, so RSS follows the live tensors, as a GPU allocator's "allocated" counter
would. With glibc's default (a dynamic threshold), freed blocks stay in the heap and ZeRO-3's many
gather/release allocations of varying size inflate its RSS high-water mark well past what it uses.

JSON: ``stages`` (per stage: per-rank records + max over ranks), ``ratio_peak_train``,
``ratio_peak_above_runtime`` and ``ratio_rss_init`` (ZeRO-3 / ZeRO-2, max over ranks), the model size,
the DeepSpeed configs and the settings.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INSTRUCTIONS = ["pick up the red block", "open the top drawer", "push the blue cube to the left",
                "close the microwave door"]


def build_model(out_dir: Path, layers: int, hidden: int, heads: int, vision_layers: int, vision_width: int,
                seed: int = 0) -> int:
    """A random-init PaliGemma (SigLIP + Gemma) + processor saved into ``out_dir``; returns its parameter count."""
    import torch
    from transformers import (PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor,
                              SiglipImageProcessor)

    from vla_ebt.backbones.tiny import build_tiny_tokenizer

    image_size, patch = 64, 16
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                                           image_std=[0.5] * 3, image_seq_length=(image_size // patch) ** 2)
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=build_tiny_tokenizer())
    vocab = len(processor.tokenizer)
    config = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=vision_width,
                           intermediate_size=4 * vision_width, num_hidden_layers=vision_layers,
                           num_attention_heads=max(1, vision_width // 64), image_size=image_size, patch_size=patch,
                           vision_use_head=False),
        text_config=dict(model_type="gemma", hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=1,
                         head_dim=hidden // heads, vocab_size=vocab, pad_token_id=0, bos_token_id=2, eos_token_id=3),
        image_token_index=processor.image_token_id, vocab_size=vocab, projection_dim=hidden, hidden_size=hidden,
        pad_token_id=0)
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config)
    n = sum(p.numel() for p in model.model.parameters())
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return n


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise KeyError(key)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def child(spec: dict) -> None:
    """One rank of one stage: build, initialize DeepSpeed, train, write this rank's record."""
    import numpy as np
    import torch

    from vla_ebt import distributed as vdist
    from vla_ebt import train as T
    from vla_ebt.backbones import BackboneConfig
    from vla_ebt.bridge import BridgeConfig
    from vla_ebt.heads.trunk import TrunkConfig
    from vla_ebt.normalize import DatasetStats, FeatureStats, Normalizer
    from vla_ebt.policy import FinetuneConfig, PolicyConfig, VLAPolicy

    torch.set_num_threads(1)
    vdist.init_distributed()
    rank = vdist.rank()
    _trim()
    rss_runtime = _status_mb("VmRSS")
    torch.manual_seed(0)
    pc = PolicyConfig(
        backbone=BackboneConfig(family="paligemma", model=spec["model_dir"], image_size=64, max_text_tokens=16),
        finetune=FinetuneConfig(mode=spec["mode"], lora_r=16, lora_alpha=32),
        bridge=BridgeConfig(max_prefix_tokens=16), head="ebt", trunk=TrunkConfig(width=128, depth=2, num_heads=4),
        horizon=8, action_dim=7, state_dim=8)
    rng = np.random.default_rng(0)
    stats = DatasetStats(action=FeatureStats.from_array(rng.uniform(-1, 1, (1000, pc.action_dim))),
                         state=FeatureStats.from_array(rng.normal(size=(1000, pc.state_dim))),
                         num_episodes=10, num_steps=1000)
    policy = VLAPolicy(pc, Normalizer({"bench": stats}, max_action_dim=pc.action_dim, max_state_dim=pc.state_dim))
    _trim()
    rec: dict = {"rank": rank, "rss_runtime_mb": rss_runtime, "rss_built_mb": _status_mb("VmRSS"),
                 "params_total": sum(p.numel() for p in policy.parameters()),
                 "params_trainable": sum(p.numel() for p in policy.parameters() if p.requires_grad),
                 "params_backbone": sum(p.numel() for p in policy.encoder.backbone.parameters())}
    orig = T.make_backend

    def measured_backend(*a, **k):
        backend = orig(*a, **k)
        _trim()
        rec["rss_init_mb"] = _status_mb("VmRSS")

        def held(p) -> int:  # the full tensor (if materialized) + this rank's ZeRO-3 partition
            return p.data.numel() + (p.ds_tensor.numel() if getattr(p, "ds_tensor", None) is not None else 0)

        rec["param_elements"] = sum(held(p) for p in policy.parameters())
        rec["backbone_submodule_elements"] = sum(held(p) for c in policy.encoder.backbone.children()
                                                 for p in c.parameters())
        rec["peak_reset"] = _reset_peak()
        rec["t_train_start"] = time.perf_counter()
        return backend

    T.make_backend = measured_backend
    B = spec["batch_size"]
    g = torch.Generator().manual_seed(rank)

    def batches(start: int):
        while True:
            yield {"images": torch.rand(B, 1, 3, 64, 64, generator=g),
                   "instruction": [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(B)],
                   "state": torch.randn(B, 1, pc.state_dim, generator=g),
                   "embodiment": torch.zeros(B, dtype=torch.long),
                   "action": torch.rand(B, pc.horizon, pc.action_dim, generator=g) * 2 - 1,
                   "action_mask": torch.ones(B, pc.horizon, dtype=torch.bool)}

    cfg = T.OptimConfig(steps=spec["steps"], batch_size=B, lr=1e-4, warmup_steps=1, ema_decay=0.0,
                        log_every=10**9, tensorboard=False)
    result = T.train_policy(policy, batches, cfg, progress=False, deepspeed_config=spec["ds_config"])
    rec["peak_train_mb"] = _status_mb("VmHWM")
    rec["peak_above_runtime_mb"] = rec["peak_train_mb"] - rss_runtime
    rec["rss_end_mb"] = _status_mb("VmRSS")
    rec["train_s"] = time.perf_counter() - rec.pop("t_train_start")
    rec["losses"] = result.losses
    Path(spec["out_dir"], f"rank{rank}.json").write_text(json.dumps(rec))


def run_stage(stage: int, args: argparse.Namespace, model_dir: Path, work: Path) -> list[dict]:
    out = work / f"zero{stage}"
    out.mkdir(parents=True, exist_ok=True)
    spec = {"model_dir": str(model_dir), "mode": args.mode, "steps": args.steps, "batch_size": args.batch_size,
            "ds_config": str(ROOT / "recipes" / "deepspeed" / f"zero{stage}.json"), "out_dir": str(out)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if args.malloc_mmap_threshold > 0:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.ranks), "--master-port",
           str(port), str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"ZeRO-{stage} run failed:\n{p.stderr[-4000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(args.ranks)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="JSON file to write (required)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2, help="per rank")
    ap.add_argument("--layers", type=int, default=12, help="Gemma layers")
    ap.add_argument("--hidden", type=int, default=1024, help="Gemma width (MLP 4x)")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vision-layers", type=int, default=4)
    ap.add_argument("--vision-width", type=int, default=256)
    ap.add_argument("--mode", choices=["lora", "full"], default="lora", help="backbone fine-tuning")
    ap.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--malloc-mmap-threshold", type=int, default=131072,
                    help="glibc MALLOC_MMAP_THRESHOLD_ of the ranks in bytes (0: glibc's dynamic default)")
    ap.add_argument("--model-dir", default="", help="build (or reuse) the backbone here; default: a temp dir")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        child(json.loads(args.child))
        return {}
    if args.out is None:
        ap.error("the following arguments are required: --out")

    work = Path(tempfile.mkdtemp(prefix="zero_memory_"))
    try:
        model_dir = Path(args.model_dir) if args.model_dir else work / "backbone"
        t0 = time.perf_counter()
        if (model_dir / "config.json").exists():
            print(f"[bench] reusing the backbone in {model_dir}")
        else:
            n = build_model(model_dir, args.layers, args.hidden, args.heads, args.vision_layers, args.vision_width)
            print(f"[bench] built a {n / 1e6:.1f}M-parameter PaliGemma-architecture backbone in "
                  f"{time.perf_counter() - t0:.0f} s")
        stages = {}
        for stage in args.stages:
            t0 = time.perf_counter()
            ranks = run_stage(stage, args, model_dir, work)
            stages[f"zero{stage}"] = {
                "ranks": ranks,
                "peak_train_mb": max(r["peak_train_mb"] for r in ranks),
                "peak_above_runtime_mb": max(r["peak_above_runtime_mb"] for r in ranks),
                "rss_init_mb": max(r["rss_init_mb"] for r in ranks),
                "rss_built_mb": max(r["rss_built_mb"] for r in ranks),
                "param_elements": max(r["param_elements"] for r in ranks),
                "wall_s": time.perf_counter() - t0,
            }
            print(f"[bench] ZeRO-{stage}: done in {stages[f'zero{stage}']['wall_s']:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    first = stages[next(iter(stages))]["ranks"][0]
    res = {
        "memory": "resident set size (RSS) per rank from /proc/self/status; peak_train_mb = VmHWM over the "
                  "training steps, reset after deepspeed.initialize; peak_above_runtime_mb = peak_train_mb - the "
                  "RSS before building the model",
        "malloc_mmap_threshold": args.malloc_mmap_threshold or "glibc default",
        "backbone_params": first["params_backbone"], "params_total": first["params_total"],
        "params_trainable": first["params_trainable"], "mode": args.mode, "steps": args.steps,
        "batch_size_per_rank": args.batch_size, "world_size": args.ranks, "backend": "gloo (CPU)",
        "model": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads,
                  "vision_layers": args.vision_layers, "vision_width": args.vision_width},
        "deepspeed_configs": {s: json.loads((ROOT / "recipes" / "deepspeed" / f"{s}.json").read_text())
                              for s in stages},
        "stages": stages, "platform": platform.platform(),
    }
    if "zero2" in stages and "zero3" in stages:
        z2, z3 = stages["zero2"], stages["zero3"]
        res["ratio_peak_train"] = z3["peak_train_mb"] / z2["peak_train_mb"]
        res["ratio_peak_above_runtime"] = z3["peak_above_runtime_mb"] / z2["peak_above_runtime_mb"]
        res["ratio_rss_init"] = z3["rss_init_mb"] / z2["rss_init_mb"]
        res["ratio_param_elements"] = z3["param_elements"] / z2["param_elements"]
        res["losses_max_rel_diff"] = max(abs(a - b) / max(abs(b), 1e-12) for a, b in
                                         zip(z3["ranks"][0]["losses"], z2["ranks"][0]["losses"]))
    rows = [("stage", "rank", "runtime MB", "built MB", "after init MB", "peak train MB", "peak - runtime MB",
             "param elements (M)", "train s")]
    for name, st in stages.items():
        for r in st["ranks"]:
            rows.append((name, str(r["rank"]), f"{r['rss_runtime_mb']:.0f}", f"{r['rss_built_mb']:.0f}",
                         f"{r['rss_init_mb']:.0f}", f"{r['peak_train_mb']:.0f}", f"{r['peak_above_runtime_mb']:.0f}",
                         f"{r['param_elements'] / 1e6:.1f}", f"{r['train_s']:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"backbone {res['backbone_params'] / 1e6:.1f}M params ({args.mode}), {args.ranks} ranks, "
          f"{args.steps} steps, batch {args.batch_size}/rank; RSS per rank")
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    if "ratio_peak_train" in res:
        print(f"ZeRO-3 / ZeRO-2: peak train {res['ratio_peak_train']:.3f} (above runtime "
              f"{res['ratio_peak_above_runtime']:.3f}), after init {res['ratio_rss_init']:.3f}, "
              f"param elements {res['ratio_param_elements']:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
