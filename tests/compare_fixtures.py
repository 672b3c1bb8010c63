"""Synthetic comparison artifacts (the schema of recipes.compare.artifacts) for fast tests, and the
generator of the committed fixture set ``tests/fixtures/compare/``:

    .venv/bin/python -m tests.compare_fixtures     # rewrites the fixture artifacts and its README
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recipes.compare.plan import SCHEMA

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "compare"
TASKS = ["reach_red", "reach_blue"]


def fake_artifact(head: str, seed: int, rates: dict[str, float], *, suite: str = "reach2d", protocol: str = "frozen",
                  steps: tuple[int, ...] = (10, 20), episodes: int = 10, warm: dict[str, float] | None = None,
                  stage: str = "final") -> dict[str, Any]:
    """An artifact whose row ``label`` succeeds with probability ``rates[label]`` at the last checkpoint
    (half of it at the first ones); outcomes are drawn from a fixed RNG (head, seed)."""
    rng = np.random.default_rng([seed, sum(map(ord, head))])
    rows = []
    for label, p in {**rates, **{f"{k} +warm": v for k, v in (warm or {}).items()}}.items():
        curve = []
        for k, step in enumerate(steps):
            q = p * (k + 1) / len(steps)
            outcomes = {t: [int(x) for x in rng.random(episodes) < q] for t in TASKS}
            success = {t: float(np.mean(v)) for t, v in outcomes.items()}
            success["mean"] = float(np.mean([success[t] for t in TASKS]))
            curve.append({"step": step, "train_seconds": 1.5 * step, "success": success, "outcomes": outcomes,
                          "errors": 0})
        rows.append({"label": label, "preset": label.split(" ")[0], "overrides": {}, "warm_start": label.endswith("+warm"),
                     "curve": curve, "cost": {"nfe": 3.0, "eval_cost": 2.0, "forward_equiv": 6.0, "head_ms": 5.0,
                                              "policy_ms": 20.0}})
    return {
        "schema": SCHEMA, "suite": suite, "head": head, "protocol": protocol, "stage": stage, "train_seed": seed,
        "eval_seeds": [10000], "episodes_per_task": episodes, "tasks": list(TASKS), "git_commit": "fixture",
        "config": {"seed": seed}, "hparams": {"lr": 1e-3, "ema_decay": 0.99}, "steps": steps[-1],
        "train_seconds": 1.5 * steps[-1], "curve": [{k: c[k] for k in ("step", "train_seconds", "success")}
                                                    for c in rows[0]["curve"]],
        "rows": rows, "cost": {**rows[0]["cost"], "train_samples_per_s": 100.0}, "cpu_seconds": 42.0,
    }


def fixture_artifacts() -> list[dict[str, Any]]:
    """Two heads x two seeds: "ebt" (one row + a warm-start row) and "regression" (one row)."""
    out = []
    for seed in (0, 1):
        out.append(fake_artifact("ebt", seed, {"ebt-2": 0.9}, warm={"ebt-2": 0.85}))
        out.append(fake_artifact("regression", seed, {"regression": 0.3}))
    return out


def write_fixture_set(root: Path = FIXTURE_DIR) -> None:
    from recipes import results
    from vla_ebt.config_io import atomic_write_json

    for a in fixture_artifacts():
        atomic_write_json(root / a["suite"] / a["protocol"] / a["head"] / f"seed{a['train_seed']}.json", a)
    readme = root / "README.md"
    if not readme.exists():
        readme.write_text(f"# fixture\n\n{results.BEGIN}\n{results.END}\n")
    results.main(["--dir", str(root), "--readme", str(readme), "--no-plots"])


if __name__ == "__main__":
    write_fixture_set()
