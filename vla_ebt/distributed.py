"""DeepSpeed / torch.distributed setup for the trainer (CPU: gloo; GPU: nccl).

Launch with ``deepspeed recipes/finetune.py ...``, ``torchrun ... recipes/finetune.py ...`` (both set
RANK/WORLD_SIZE), or single-process with ``--deepspeed-config FILE`` (the env is filled in here).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import torch

_INITIALIZED = False


def launched_distributed() -> bool:
    """True when a launcher (deepspeed, torchrun) set RANK and WORLD_SIZE."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    if torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> None:
    """Initialize the process group once per process (a second call is a no-op).

    On CPU: gloo backend, and DeepSpeed's shared-memory allreduce op is marked incompatible so it is
    not JIT-compiled (~60 s per launch on 2 cores); gloo does the collectives instead.
    """
    global _INITIALIZED
    if _INITIALIZED or torch.distributed.is_initialized():
        _INITIALIZED = True
        return
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed
    import deepspeed.ops

    if not cuda:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # no shm op JIT build
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    _INITIALIZED = True


def shutdown_distributed() -> None:
    """Destroy the process group, if any, at the end of a rank's work: gloo's threads are stopped in
    order instead of at interpreter exit, where they can abort the process ("terminate called without
    an active exception"). A later :func:`init_distributed` starts a new group."""
    global _INITIALIZED
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _INITIALIZED = False


def load_ds_config(path: str | Path, micro_batch_size: int, grad_clip: float) -> dict[str, Any]:
    """Read a DeepSpeed JSON config and fill in batch sizes and clipping from the OptimConfig.

    ``train_micro_batch_size_per_gpu`` is ``OptimConfig.batch_size`` (per rank); the global batch is
    micro x ``gradient_accumulation_steps`` x world size. bf16 is switched off on CPU (the CPU engine's
    bf16 path is unsupported for this model; it stays on where CUDA is available).
    """
    cfg = json.loads(Path(path).read_text())
    cfg.pop("train_batch_size", None)
    cfg["train_micro_batch_size_per_gpu"] = micro_batch_size
    cfg.setdefault("gradient_accumulation_steps", 1)
    cfg.setdefault("gradient_clipping", grad_clip)
    if not torch.cuda.is_available():
        for key in ("bf16", "fp16"):
            if cfg.get(key, {}).get("enabled"):
                print(f"[deepspeed] {key} disabled on CPU")
                cfg[key]["enabled"] = False
    cfg.setdefault("zero_allow_untested_optimizer", True)
    return cfg
