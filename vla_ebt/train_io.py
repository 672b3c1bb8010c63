"""What the training loop writes and reads: checkpoint folders, RNG states, metrics.jsonl + TensorBoard.

A checkpoint is ``run_dir/checkpoints/step_NNNNNNNN/`` holding the backend's state files
(``trainer_rank<r>.pt``, plus ``ds/`` under DeepSpeed) and ``policy/``, a ``save_pretrained`` folder of
the weights to evaluate at that step (EMA if on), loadable with ``VLAPolicy.from_pretrained``. It is
written under a ``.tmp_`` name and renamed when complete.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .policy import VLAPolicy
from .train_backend import TrainBackend

_CKPT_RE = re.compile(r"^step_(\d+)$")
POLICY_DIR = "policy"  #: the save_pretrained subfolder of every checkpoint


def rng_state() -> dict[str, Any]:
    """torch / python / numpy (+ CUDA) RNG states."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Complete checkpoints (``step_N``; temp dirs are ignored), oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | Path, run_dir: str | Path | None) -> Path | None:
    """``"latest"``: newest checkpoint under run_dir/checkpoints (None if there is none); else a path."""
    if str(resume) == "latest":
        if run_dir is None:
            raise ValueError("resume='latest' needs a run_dir")
        ckpts = list_checkpoints(Path(run_dir) / "checkpoints")
        return ckpts[-1] if ckpts else None
    p = Path(resume)
    if not p.is_dir():
        raise FileNotFoundError(f"checkpoint {p} not found")
    return p


def write_checkpoint(backend: TrainBackend, ckpt_dir: Path, step: int, state: Mapping[str, Any],
                     eval_policy: VLAPolicy, keep: int) -> Path:
    """Write ``ckpt_dir/step_<step>`` (backend state + ``state`` + ``policy/``), keep the newest ``keep``.

    Every rank must call it; only rank 0 creates, renames and deletes folders.
    """
    final = ckpt_dir / f"step_{step:08d}"
    tmp = ckpt_dir / f".tmp_step_{step:08d}"
    if backend.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    backend.barrier()
    backend.save(tmp, state)
    backend.save_policy(eval_policy, tmp / POLICY_DIR)
    backend.barrier()
    if backend.is_main:
        os.rename(tmp, final)  # atomic: a checkpoint dir either is complete or has a .tmp name
        for old in list_checkpoints(ckpt_dir)[: -max(keep, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    backend.barrier()
    return final


class MetricsSink:
    """metrics.jsonl + TensorBoard scalars for rank 0 (a no-op sink elsewhere or without run_dir).

    A fresh run (``start`` 0) truncates both; a resumed run drops the records at or past ``start``.
    """

    def __init__(self, run_dir: str | Path | None, enabled: bool, start: int, tensorboard: bool) -> None:
        self.log = None
        self.tb = None
        if run_dir is None or not enabled:
            return
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        mpath = Path(run_dir) / "metrics.jsonl"
        if start > 0 and mpath.exists():  # drop records past the checkpoint (they are recomputed)
            kept = [ln for ln in mpath.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) < start]
            mpath.write_text("".join(ln + "\n" for ln in kept))
        elif start == 0:
            mpath.write_text("")
        self.log = open(mpath, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            tb_dir = Path(run_dir) / "tb"
            if start == 0:  # event files of an earlier run would merge into the new curves
                for old in tb_dir.glob("events.out.tfevents.*"):
                    old.unlink()
            # purge_step: a resumed run hides the events a killed run wrote past the checkpoint
            self.tb = SummaryWriter(str(tb_dir), purge_step=start if start > 0 else None)

    def write(self, rec: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> None:
        """One record: ``step`` + scalar values; keys map to tags via ``tags`` (else used as is)."""
        if self.log is not None:
            self.log.write(json.dumps(rec) + "\n")
            self.log.flush()
        if self.tb is not None:
            step = int(rec["step"])
            for k, v in rec.items():
                if k == "step" or not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                    continue
                self.tb.add_scalar((tags or {}).get(k, k), float(v), global_step=step)
            self.tb.flush()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        if self.tb is not None:
            self.tb.close()
