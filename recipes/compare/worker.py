"""One comparison run, in its own process (one torch thread):

    python -m recipes.compare.worker RUN_DIR/spec.json

1. train with ``recipes.finetune.run`` (``resume="latest"``: a killed run continues from its last
   checkpoint; skipped when ``summary.json`` says the planned steps are done);
2. evaluate every checkpoint's ``policy/`` under every variant of the spec (each checkpoint's
   result is kept in ``evals/step_N.json``, so a killed evaluation resumes too);
3. write the artifact ``result.json`` (:mod:`recipes.compare.artifacts`).

CPU seconds of each finished phase accumulate in ``accounting.json`` across attempts.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from vla_ebt.machine import machine_info

from .plan import SCHEMA, RunSpec

__all__ = ["execute_run", "checkpoint_seconds", "main"]


def _load(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


def checkpoint_seconds(run_dir: Path) -> dict[int, float]:
    """Training seconds at the end of each logged step (metrics.jsonl ``train_seconds``), keyed by
    steps done (= the record's 0-based ``step`` + 1)."""
    out: dict[int, float] = {}
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line) if line.strip() else {}
            if "loss" in rec and "train_seconds" in rec:
                out[int(rec["step"]) + 1] = float(rec["train_seconds"])
    return out


def _train(spec: RunSpec, acct: dict[str, Any]) -> dict[str, Any]:
    from recipes.configs import TrainConfig
    from recipes.finetune import run
    from vla_ebt import config_io

    run_dir = spec.run_dir
    summary = _load(run_dir / "summary.json", None)
    if summary is not None and int(summary.get("train_steps", -1)) == spec.steps:
        return summary
    cfg = config_io.from_dict(TrainConfig, spec.config, where=f"{run_dir}/spec.json")
    c0 = time.process_time()
    summary = run(cfg, progress=False, resume="latest")
    acct["train_cpu_seconds"] = acct.get("train_cpu_seconds", 0.0) + time.process_time() - c0
    acct["train_attempts"] = acct.get("train_attempts", 0) + 1
    return summary


def _evaluate(spec: RunSpec, acct: dict[str, Any]) -> list[dict[str, Any]]:
    """[{"step", "rows": {label: evaluate_variant result}}] for every checkpoint, oldest first."""
    from eval.sim.suites import make_suite, parse_suite_args
    from recipes.studies.common import load_policy
    from vla_ebt.train import list_checkpoints

    from .evaluation import evaluate_variant

    ckpts = list_checkpoints(spec.run_dir / "checkpoints")
    steps = [int(p.name.split("_")[1]) for p in ckpts]
    expected = [spec.steps * (k + 1) // spec.checkpoints for k in range(spec.checkpoints)]
    if steps[-len(expected):] != expected:
        raise RuntimeError(f"{spec.run_dir}: checkpoints at steps {steps}, expected {expected}")
    suite = make_suite(spec.suite, **parse_suite_args(spec.config["data"]["suite_args"]))
    out = []
    for step, ckpt in zip(steps[-len(expected):], ckpts[-len(expected):]):
        path = spec.run_dir / "evals" / f"step_{step:08d}.json"
        n = spec.episodes_at(step)
        done = _load(path, None)
        if done is not None and done.get("episodes_per_task", spec.episodes_per_task) != n:
            done = None  # evaluated under another episode count: evaluate again
        if done is None:
            c0 = time.process_time()
            policy = load_policy(ckpt / "policy")
            rows = {v.label: evaluate_variant(policy, suite, spec.tasks, spec.eval_seeds, n, v) for v in spec.variants}
            # timings are only comparable on a machine that is not oversubscribed: keep its load with them
            done = {"step": step, "episodes_per_task": n, "rows": rows, "load_avg_1min": os.getloadavg()[0], "cpu_count": os.cpu_count()}
            from vla_ebt.config_io import atomic_write_json

            atomic_write_json(path, done)
            acct["eval_cpu_seconds"] = acct.get("eval_cpu_seconds", 0.0) + time.process_time() - c0
        out.append(done)
    return out


def _artifact(spec: RunSpec, summary: dict[str, Any], evals: list[dict[str, Any]], acct: dict[str, Any]) -> dict[str, Any]:
    secs = checkpoint_seconds(spec.run_dir)
    rows = []
    for v in spec.variants:
        curve = [{"step": e["step"], "train_seconds": secs.get(e["step"], float("nan")),
                  "success": e["rows"][v.label]["success"], "outcomes": e["rows"][v.label]["outcomes"],
                  "errors": e["rows"][v.label]["errors"],
                  **({"episode_info": e["rows"][v.label]["episode_info"]} if "episode_info" in e["rows"][v.label] else {})}
                 for e in evals]
        rows.append({"label": v.label, "preset": v.preset, "overrides": dict(v.overrides), "warm_start": v.warm_start,
                     "curve": curve, "cost": evals[-1]["rows"][v.label]["cost"]})
    primary = rows[0]
    cost = {**primary["cost"], "train_samples_per_s": float(summary.get("samples_per_s", float("nan"))),
            "load_avg_1min": evals[-1].get("load_avg_1min"), "cpu_count": evals[-1].get("cpu_count"),
            "unit": "forward_equiv = ChunkPrediction.nfe x capabilities.eval_cost per chunk; ms are medians per chunk at batch 1"}
    cpu = acct.get("train_cpu_seconds", 0.0) + acct.get("eval_cpu_seconds", 0.0)
    return {
        "schema": SCHEMA, "suite": spec.suite, "head": spec.head, "protocol": spec.protocol, "stage": spec.stage,
        "base_head": spec.model_head, "head_overrides": {k: v for k, v in spec.head_overrides},
        "train_seed": spec.train_seed, "eval_seeds": list(spec.eval_seeds), "episodes_per_task": spec.episodes_per_task,
        "curve_episodes_per_task": spec.episodes_at(0) if spec.checkpoints > 1 else spec.episodes_per_task,
        "tasks": list(spec.tasks), "git_commit": spec.meta.get("git_commit", "unknown"), "config": spec.config,
        "hparams": {"lr": spec.lr, "ema_decay": spec.ema_decay, "used_ema_decay": spec.config["optim"]["ema_decay"],
                    **spec.meta.get("hparams", {})},
        "steps": spec.steps, "train_seconds": float(summary.get("train_seconds", float("nan"))),
        "final_loss": float(summary.get("final_loss", float("nan"))),
        "curve": [{k: c[k] for k in ("step", "train_seconds", "success")} for c in primary["curve"]],
        "rows": rows, "cost": cost, "cpu_seconds": cpu,
        "train_cpu_seconds": acct.get("train_cpu_seconds", 0.0), "eval_cpu_seconds": acct.get("eval_cpu_seconds", 0.0),
        "run": spec.key, "jobs": spec.meta.get("jobs"), "threads": 1, "machine": machine_info(),
    }


def execute_run(spec: RunSpec) -> dict[str, Any]:
    """Train (or resume), evaluate the checkpoints, write and return the artifact (``result.json``)."""
    from vla_ebt.config_io import atomic_write_json

    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    acct_path = run_dir / "accounting.json"
    acct = _load(acct_path, {})
    summary = _train(spec, acct)
    atomic_write_json(acct_path, acct)
    evals = _evaluate(spec, acct)
    atomic_write_json(acct_path, acct)
    from vla_ebt.config_io import json_safe

    from .artifacts import validate_artifact

    art = validate_artifact(json_safe(_artifact(spec, summary, evals, acct)))  # NaN -> null: strict JSON
    atomic_write_json(run_dir / "result.json", art)
    for trainer_state in (run_dir / "checkpoints").glob("step_*/trainer_rank*.pt"):  # done: only policies stay
        trainer_state.unlink()
    return art


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m recipes.compare.worker RUN_DIR/spec.json")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    spec = RunSpec.from_dict(json.loads(Path(args[0]).read_text()))
    art = execute_run(spec)
    print(f"[compare] {spec.key}: done, final success {art['curve'][-1]['success']['mean']:.3f}")


if __name__ == "__main__":
    main()
