"""The studies' policies under the comparison protocol (docs/comparison_protocol.md), in one place for
every study that runs several training seeds per head (uncertainty, realtime, recovery,
dynamic compute):

* **Which policies.** ``--policies LABEL=DIR1,DIR2,...`` (one label per head, one folder per training
  seed; :func:`parse_policies`) or ``--compare OUT --suite S --protocol P [--heads ...]`` (the last
  checkpoint of every finished final run of a ``recipes.compare`` grid; :func:`find_compare_policies`).
  :func:`add_policy_arguments` / :func:`resolve_policy_arguments` give every study the same command
  line; with ``--compare`` the grid's final evaluation seeds, tasks and suite arguments are the
  defaults (:func:`run_info` reads them from the run's ``result.json`` / ``spec.json``).
* **How they plan.** :func:`policy_settings`: the head's first preset (``capabilities.presets``, or
  ``--preset LABEL=NAME``) as inference overrides; the studies run with warm start off
  (``recipes.compare.evaluation.warm_start``) as the comparison's own evaluation does.
* **Episodes** are cached per policy and condition (:func:`cached_episodes`: a JSON file holding the
  settings it was run with; a rerun with the same settings reuses it, so a study resumes and labels
  can run in separate processes sharing one ``--out``).
* **CPU time.** :func:`timed_cached_episodes` stores the process CPU seconds a cached part took with
  its episodes; :class:`CpuTally` sums them into the study's ``meta.cpu_seconds`` (counting the parts
  cached before CPU time was recorded in ``meta.cpu_unrecorded_parts``), so a resumed study still
  reports what all of its episodes cost.
* **Pooling training seeds.** Every number is pooled over the training seeds of a label (seeds weigh
  equally: the mean over seeds of each seed's mean over episodes) with a 95% bootstrap interval over
  training seeds x episodes (``recipes.compare.stats.bootstrap``: seeds resampled, then the episodes
  of each task within each drawn seed; 2,000 replicates, RNG seed 0): :func:`success_estimate`,
  :func:`mean_estimate` (a per-episode metric that may be undefined on some episodes) and
  :func:`ratio_estimate` (perturbed / clean success: both conditions ran the same episodes, so one
  replicate draws the same seeds and episodes for both, and takes the ratio of the two means).
  Env errors count as failures, as in the comparison's evaluation (and are reported).
* **Publishing.** :func:`add_publish_arguments` / :func:`publish_destination` / :func:`publish_study`:
  ``--publish`` copies the study's ``<name>.json/.md/.png`` (each file atomically, the json last) to
  ``docs/results/compare/<suite>/<protocol>/studies/`` (with ``--compare``; with ``--policies`` an
  explicit ``--publish-dir`` is required) and regenerates the results (``python -m recipes.results``),
  which summarises each published study under its comparison (:mod:`recipes.compare.study_summaries`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from recipes.compare.stats import N_BOOT, bootstrap

__all__ = ["parse_policies", "run_info", "find_compare_policies", "policy_settings", "compare_success", "seed_tag",
           "slug", "cached_episodes", "timed_cached_episodes", "CpuTally", "add_policy_arguments", "StudyInputs", "resolve_policy_arguments",
           "episode_arrays", "success_estimate", "mean_estimate", "ratio_estimate", "estimate_cell", "check_same_head",
           "add_publish_arguments", "publish_destination", "publish_study", "STUDY_FILES", "write_study_outputs"]


# ------------------------------------------------------------------------------------------ policies
def parse_policies(items: Sequence[str]) -> dict[str, list[str]]:
    """["LABEL=DIR1,DIR2", ...] -> {LABEL: [DIR1, DIR2]} (one label per head; the directories are the
    policies of its training seeds; one directory = one seed). Duplicate labels and empty lists raise
    ValueError."""
    out: dict[str, list[str]] = {}
    for it in items:
        label, eq, dirs = it.partition("=")
        if not eq or not label.strip():
            raise ValueError(f"--policies expects LABEL=DIR[,DIR...], got {it!r}")
        label = label.strip()
        if "/" in label:
            raise ValueError(f"--policies: label {label!r} must not contain '/'")
        if label in out:
            raise ValueError(f"duplicate policy label {label!r}")
        paths = [d for d in dirs.split(",") if d.strip()]
        if not paths:
            raise ValueError(f"--policies {label}: no directory given")
        out[label] = paths
    return out


def run_info(policy_dir: str | Path) -> dict[str, Any]:
    """What the comparison artifacts say about a policy folder (a parent holding ``result.json`` or
    ``spec.json`` within four levels: train seed, git commit, eval seeds, episodes per task, tasks,
    suite args, the comparison's own outcomes per preset); else the training seed parsed from a
    ``seed<N>`` folder name."""
    p = Path(policy_dir).resolve()
    for parent in [p, *p.parents][:5]:
        for name in ("result.json", "spec.json"):
            f = parent / name
            if f.is_file():
                try:
                    d = json.loads(f.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
                if "train_seed" not in d:
                    continue
                cfg = d.get("config") or {}
                return {"run_dir": str(parent), "train_seed": d.get("train_seed"),
                        "train_git_commit": d.get("git_commit") or (d.get("meta") or {}).get("git_commit"),
                        "eval_seeds": d.get("eval_seeds"), "episodes_per_task": d.get("episodes_per_task"),
                        "tasks": d.get("tasks"), "steps": d.get("steps"),
                        "suite_args": (cfg.get("data") or {}).get("suite_args"),
                        "outcomes_by_preset": _outcomes_by_preset(d)}
    m = re.search(r"seed(\d+)", str(p))
    return {"train_seed": int(m.group(1)) if m else None}


def _outcomes_by_preset(result: dict[str, Any]) -> dict[str, dict[str, list[int]]]:
    """{preset: the comparison's own outcomes of that preset's warm-start-off row at the last checkpoint}."""
    out = {}
    for row in result.get("rows") or []:
        if not row.get("warm_start") and row.get("curve") and row["curve"][-1].get("outcomes"):
            out[str(row.get("preset", row.get("label")))] = row["curve"][-1]["outcomes"]
    return out


def find_compare_policies(out: str | Path, suite: str, protocol: str,
                          heads: Sequence[str] | None = None) -> dict[str, list[str]]:
    """{head: [policy dir of every finished final run, by training seed]} of a ``recipes.compare`` grid:
    ``OUT/<suite>/<protocol>/final/<head>/<hparams>/seed<N>/checkpoints/step_<S>/policy`` with S the
    run's last step. A head with finals under several hyperparameter folders uses the one
    ``tuning.json`` chose. FileNotFoundError when nothing is finished."""
    from vla_ebt.train_io import list_checkpoints

    root = Path(out) / suite / protocol / "final"
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no final runs of suite {suite!r}, protocol {protocol!r} under {out}")
    tuning_path = Path(out) / suite / protocol / "tuning.json"
    tuning = json.loads(tuning_path.read_text()) if tuning_path.is_file() else {}
    found: dict[str, list[str]] = {}
    for head_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        head = head_dir.name
        if heads and head not in heads:
            continue
        hp_dirs = sorted(d for d in head_dir.iterdir() if d.is_dir() and any(d.glob("seed*/done.json")))
        if len(hp_dirs) > 1:
            chosen = ((tuning.get("heads") or {}).get(head) or {}).get("chosen") or {}
            key = chosen.get("run", "")
            pick = [d for d in hp_dirs if d.name and f"/{d.name}/" in f"/{key}/"]
            if len(pick) != 1:
                raise ValueError(f"{head_dir}: finals under {[d.name for d in hp_dirs]} and tuning.json does not pick one")
            hp_dirs = pick
        runs = []
        for hp in hp_dirs:
            for seed_dir in hp.glob("seed*"):
                if not (seed_dir / "done.json").is_file():
                    continue
                ckpts = list_checkpoints(seed_dir / "checkpoints")
                if not ckpts or not (ckpts[-1] / "policy" / "config.json").is_file():
                    continue
                m = re.fullmatch(r"seed(\d+)", seed_dir.name)
                runs.append((int(m.group(1)) if m else 0, str(ckpts[-1] / "policy")))
        if runs:
            found[head] = [d for _, d in sorted(runs)]
    missing = sorted(set(heads or ()) - set(found))
    if missing:
        raise FileNotFoundError(f"{root}: no finished final runs of head(s) {missing}")
    if not found:
        raise FileNotFoundError(f"{root}: no finished final runs")
    return found


def policy_settings(policy: Any, preset: str | None = None, *, final_eval: bool = True) -> dict[str, Any]:
    """The knob values a study plans with: the head's preset (``preset`` by name, default its first,
    none when it declares none), plus ``final_eval=True`` when asked for and the head has that knob
    (one more evaluation at the returned chunk for its own energy; the actions are unchanged)."""
    caps = policy.head.capabilities
    presets = dict(caps.presets)
    if preset is not None and preset not in presets:
        raise ValueError(f"head {policy.cfg.head!r} has no preset {preset!r}; known: {sorted(presets)}")
    name = preset if preset is not None else (caps.presets[0][0] if caps.presets else None)
    knobs = dict(presets.get(name, {})) if name is not None else {}
    if final_eval and "final_eval" in caps.knobs:
        knobs["final_eval"] = True
    return {"preset": name, "overrides": knobs}


def compare_success(seeds_info: Sequence[dict[str, Any]], tasks: Sequence[str], eval_seeds: Sequence[int],
                    episodes: int, preset: str | None) -> float | None:
    """The comparison's own success on the same episodes under the same preset, warm start off (its
    outcomes are seed-major per task with its ``eval_seeds`` x its episodes), when every seed has them
    and the study's seeds are the comparison's first ones; None otherwise. ``seeds_info[i]`` holds
    ``eval_seeds`` and ``compare_outcomes`` (``run_info``'s ``outcomes_by_preset``)."""
    vals = []
    for s in seeds_info:
        oc, ce = (s.get("compare_outcomes") or {}).get(str(preset)), s.get("eval_seeds")
        if not oc or not ce or list(ce[: len(eval_seeds)]) != [int(x) for x in eval_seeds]:
            return None
        per_seed = {t: len(oc.get(t, [])) // len(ce) for t in tasks}
        if any(n < episodes for n in per_seed.values()):
            return None
        got = [oc[t][j * per_seed[t] + i] for t in tasks for j in range(len(eval_seeds)) for i in range(episodes)]
        vals.append(float(np.mean(got)))
    return float(np.mean(vals)) if vals else None


def slug(s: str) -> str:
    """A file-name-safe form of a label or condition."""
    return re.sub(r"[^0-9A-Za-z.=_+-]+", "_", s)


def seed_tag(index: int, info: dict[str, Any]) -> str:
    """The cache folder of a label's ``index``-th policy: ``<index>_seed<train seed>``."""
    return f"{index}_seed{info.get('train_seed')}"


def cached_episodes(path: Path, key: dict[str, Any], run: Callable[[], Any]) -> tuple[Any, bool]:
    """(episodes, True) from ``path`` when it holds ``key`` (the settings they were run with), else
    (``run()``, False) after saving them there with the key (atomically; NaN is saved as null, so a
    resumed run reads None where a fresh one has NaN)."""
    from vla_ebt.config_io import atomic_write_json, json_safe

    safe = json_safe(key)
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            cached = None
        if cached is not None and cached.get("key") == safe:
            return cached["episodes"], True
    eps = run()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, json_safe({"key": key, "episodes": eps}))
    return eps, False


def timed_cached_episodes(path: Path, key: dict[str, Any], run: Callable[[], Any]) -> tuple[Any, bool, float | None]:
    """:func:`cached_episodes` with the time of ``run`` stored beside its episodes (``{"episodes",
    "cpu_s", "wall_s"}``): (episodes, hit, cpu_s), cpu_s the process CPU seconds the episodes took when
    they were run (also on a cache hit), None for a cache written before CPU time was recorded (a bare
    episode list)."""
    import time

    def timed() -> dict[str, Any]:
        t0, c0 = time.perf_counter(), time.process_time()
        eps = run()
        return {"episodes": eps, "cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - t0}

    res, hit = cached_episodes(path, key, timed)
    if isinstance(res, dict) and "episodes" in res:
        return res["episodes"], hit, (None if res.get("cpu_s") is None else float(res["cpu_s"]))
    return res, hit, None


@dataclass
class CpuTally:
    """Sum of the CPU seconds of a study's parts; a part without a record (None) is counted apart."""

    seconds: float = 0.0
    unrecorded: int = 0

    def add(self, cpu_s: float | None) -> None:
        if cpu_s is None:
            self.unrecorded += 1
        else:
            self.seconds += float(cpu_s)

    def meta(self) -> dict[str, Any]:
        """``{"cpu_seconds", "cpu_unrecorded_parts"}`` for a study's ``meta``."""
        return {"cpu_seconds": self.seconds, "cpu_unrecorded_parts": self.unrecorded}


# ------------------------------------------------------------------------------------- command line
def add_policy_arguments(p: argparse.ArgumentParser, *, episodes: int = 20, default_seed: int = 30_000) -> None:
    """The policy / suite / episode options every protocol study shares."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--policies", nargs="+", metavar="LABEL=DIR[,DIR...]",
                     help="per label (one head), the policy folders of its training seeds (one folder = one seed)")
    src.add_argument("--compare", metavar="OUT", help="a recipes.compare --out folder: its finished final runs")
    p.add_argument("--protocol", default="frozen", help="with --compare: the protocol (frozen / lora)")
    p.add_argument("--heads", nargs="*", default=None, help="with --compare: only these heads (default: all found)")
    p.add_argument("--suite", default="reach2d")
    p.add_argument("--suite-arg", action="append", default=None, metavar="KEY=VALUE",
                   help="suite argument (default with --compare: the grid's)")
    p.add_argument("--tasks", nargs="*", default=None, help="default: the grid's (--compare), else all of the suite's")
    p.add_argument("--episodes", type=int, default=episodes, help="episodes per task and eval seed")
    p.add_argument("--eval-seeds", "--seed", dest="eval_seeds", type=int, nargs="+", default=None,
                   help=f"base seeds (default: the grid's final evaluation seeds with --compare, else {default_seed})")
    p.add_argument("--preset", action="append", default=[], metavar="LABEL=PRESET",
                   help="plan with this preset of the head (default: its first, e.g. ddpm-100)")
    p.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap replicates of the intervals")


@dataclass
class StudyInputs:
    """What :func:`resolve_policy_arguments` made of the shared options."""

    policies: dict[str, list[str]]
    suite: str
    suite_args: list[str]
    tasks: list[str]
    eval_seeds: list[int]
    episodes: int
    presets: dict[str, str]
    source: dict[str, Any] = field(default_factory=dict)  # {"compare", "protocol"} with --compare

    def suite_kwargs(self) -> dict[str, Any]:
        from eval.sim.suites import parse_suite_args

        return parse_suite_args(self.suite_args)

    def make_suite(self) -> Any:
        from eval.sim.suites import make_suite

        return make_suite(self.suite, **self.suite_kwargs())

    def meta(self) -> dict[str, Any]:
        return {"suite": self.suite, "suite_args": list(self.suite_args), **self.source}


def resolve_policy_arguments(a: argparse.Namespace, *, default_seed: int = 30_000) -> StudyInputs:
    """The policies (``--policies`` or ``--compare``), suite arguments, tasks and eval seeds of parsed
    :func:`add_policy_arguments` options; with ``--compare`` the grid's are the defaults. ``tasks`` is
    empty when neither the options nor the grid name them (then: all of the suite's)."""
    source: dict[str, Any] = {}
    if a.compare:
        policies = find_compare_policies(a.compare, a.suite, a.protocol, a.heads)
        source = {"compare": str(a.compare), "protocol": a.protocol}
        first = run_info(next(iter(policies.values()))[0])
    else:
        policies = parse_policies(a.policies)
        first = {}
    suite_args = list(a.suite_arg if a.suite_arg is not None else (first.get("suite_args") or []))
    presets = {}
    for x in a.preset:
        label, eq, name = x.partition("=")
        if not eq:
            raise ValueError(f"--preset expects LABEL=PRESET, got {x!r}")
        presets[label] = name
    unknown = sorted(set(presets) - set(policies))
    if unknown:
        raise ValueError(f"--preset for unknown label(s) {unknown}; labels: {sorted(policies)}")
    return StudyInputs(policies=policies, suite=a.suite, suite_args=suite_args, tasks=list(a.tasks or first.get("tasks") or []),
                       eval_seeds=[int(s) for s in (a.eval_seeds or first.get("eval_seeds") or [default_seed])],
                       episodes=int(a.episodes), presets=presets, source=source)


# ------------------------------------------------------------------------------------------- pooling
def episode_arrays(eps: Sequence[dict[str, Any]], key: str, tasks: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(values, task ids) of one seed's episode records, in their order. ``key="success"``: 0/1, an
    env error counts as a failure; any other key: the float value (None / missing -> NaN)."""
    tid = {t: i for i, t in enumerate(tasks)}
    if key == "success":
        vals = [float(bool(e.get("success")) and not e.get("error")) for e in eps]
    else:
        vals = [float("nan") if e.get(key) is None else float(e[key]) for e in eps]
    return np.asarray(vals, np.float64), np.asarray([tid[e["task"]] for e in eps], np.int64)


def _finite_mean(x: np.ndarray) -> float:
    v = x[np.isfinite(x)]
    return float(v.mean()) if len(v) else float("nan")


def _nan_mean_over_seeds(per_seed: list[np.ndarray]) -> float:
    """Mean over the seeds with a defined value of each seed's mean over the episodes where the
    metric is defined; NaN when no seed has one."""
    return _finite_mean(np.array([_finite_mean(x) for x in per_seed]))


def _as_dict(est: Any, episodes: int) -> dict[str, Any]:
    return {"value": est.value, "lo": est.lo, "hi": est.hi, "n_seeds": est.n_seeds, "episodes": episodes,
            "undefined_replicates": est.undefined}


def _empty(n_seeds: int) -> dict[str, Any]:
    return {"value": None, "lo": None, "hi": None, "n_seeds": n_seeds, "episodes": 0, "undefined_replicates": None}


def success_estimate(per_seed: Sequence[Sequence[dict[str, Any]]], tasks: Sequence[str],
                     n_boot: int = N_BOOT) -> dict[str, Any]:
    """Success pooled over training seeds (``per_seed[i]``: seed i's episode records) with its 95%
    bootstrap interval over seeds x episodes; also ``per_seed`` (each seed's success) and ``errors``."""
    per_seed = [eps for eps in per_seed if len(eps)]
    if not per_seed:
        return {**_empty(0), "per_seed": [], "errors": 0}
    arrs = [episode_arrays(eps, "success", tasks) for eps in per_seed]
    est = bootstrap([x for x, _ in arrs], [t for _, t in arrs], n_boot=n_boot)
    return {**_as_dict(est, sum(len(x) for x, _ in arrs)), "per_seed": [float(x.mean()) for x, _ in arrs],
            "errors": sum(1 for eps in per_seed for e in eps if e.get("error"))}


def mean_estimate(per_seed: Sequence[Sequence[dict[str, Any]]], key: str, tasks: Sequence[str],
                  n_boot: int = N_BOOT) -> dict[str, Any]:
    """A per-episode metric (``key``; undefined = None / NaN on some episodes, e.g. a switch jump in an
    episode without a switch) pooled over training seeds: the mean over seeds of each seed's mean over
    the episodes where it is defined, with its 95% bootstrap interval over seeds x episodes
    (replicates where it is undefined everywhere are left out and counted)."""
    per_seed = [eps for eps in per_seed if len(eps)]
    if not per_seed:
        return _empty(0)
    arrs = [episode_arrays(eps, key, tasks) for eps in per_seed]
    defined = int(sum(np.isfinite(x).sum() for x, _ in arrs))
    if defined == 0:
        return {**_empty(len(arrs)), "episodes": 0}
    est = bootstrap([x for x, _ in arrs], [t for _, t in arrs], _nan_mean_over_seeds, n_boot=n_boot)
    return _as_dict(est, defined)


def _ratio_of_means(per_seed: list[np.ndarray]) -> float:
    """Rows 0 / 1 of each seed's (2, E): clean / perturbed outcomes of the same episodes; the ratio of
    the perturbed mean to the clean mean (each the mean over seeds of the seed's mean); NaN when the
    clean mean is 0."""
    clean = float(np.mean([x[0].mean() for x in per_seed]))
    pert = float(np.mean([x[1].mean() for x in per_seed]))
    return pert / clean if clean > 0 else float("nan")


def _episode_id(e: dict[str, Any]) -> tuple[Any, ...]:
    return (e["task"], e.get("eval_seed"), e.get("index"), e.get("env_seed"))


def ratio_estimate(clean: Sequence[Sequence[dict[str, Any]]], perturbed: Sequence[Sequence[dict[str, Any]]],
                   tasks: Sequence[str], n_boot: int = N_BOOT) -> dict[str, Any]:
    """Success under a perturbation divided by clean success, pooled over training seeds
    (``clean[i]`` / ``perturbed[i]``: seed i's records of the same episodes), with a 95% bootstrap
    interval: each replicate draws the seeds, then the episodes within task, once for both conditions
    (the pairs stay together), and takes the ratio of the two means (not a mean of per-seed ratios).
    Replicates whose clean mean is 0 are left out and counted; value None when the clean success is 0."""
    data, strata = [], []
    for c, p in zip(clean, perturbed):
        if not len(c):
            continue
        if [_episode_id(e) for e in c] != [_episode_id(e) for e in p]:
            raise ValueError("ratio_estimate: the clean and perturbed episodes of a seed differ (not paired)")
        xc, t = episode_arrays(c, "success", tasks)
        xp, _ = episode_arrays(p, "success", tasks)
        data.append(np.stack([xc, xp]))
        strata.append(t)
    if not data:
        return _empty(0)
    est = bootstrap(data, strata, _ratio_of_means, n_boot=n_boot)
    out = _as_dict(est, int(sum(x.shape[-1] for x in data)))
    if not math.isfinite(out["value"]):
        out.update(value=None, lo=None, hi=None)
    return out


def estimate_cell(est: dict[str, Any], nd: int = 2) -> str:
    """``value [lo, hi]`` for a table; "-" when undefined."""
    v = est.get("value") if est else None
    if v is None or not math.isfinite(v):
        return "-"
    lo, hi = est.get("lo"), est.get("hi")
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{v:.{nd}f}"
    return f"{v:.{nd}f} [{lo:.{nd}f}, {hi:.{nd}f}]"


def check_same_head(label: str, first: Any, policy: Any, where: str | Path) -> None:
    """ValueError when ``policy`` (loaded from ``where``) has another head class than ``first``, the first
    seed of ``label``: the seeds pooled under one label must be one head."""
    if type(policy.head) is not type(first.head):
        raise ValueError(f"label {label!r}: {where} has head {policy.cfg.head!r}, the first policy {first.cfg.head!r}")


# ------------------------------------------------------------------------------------------ publish
#: what a study writes into its --out and --publish copies (the json last: it is what gets rendered)
STUDY_FILES = (".png", ".md", ".json")


def add_publish_arguments(p: argparse.ArgumentParser) -> None:
    """``--publish`` / ``--publish-dir`` of the protocol studies."""
    p.add_argument("--publish", action="store_true",
                   help="after writing, copy <study>.json/.md/.png to docs/results/compare/<suite>/<protocol>/studies/ "
                        "(needs --compare; with --policies give --publish-dir) and regenerate the results "
                        "(python -m recipes.results)")
    p.add_argument("--publish-dir", default=None, metavar="DIR",
                   help="publish into this folder instead (implies --publish; the results and README are "
                        "regenerated only for the default docs/results/compare tree)")


def publish_destination(a: argparse.Namespace, inp: StudyInputs) -> Path | None:
    """Where ``--publish`` copies the study (None without it): ``--publish-dir``, else with ``--compare``
    ``docs/results/compare/<suite>/<protocol>/studies``. ValueError for ``--publish`` with ``--policies``
    and no ``--publish-dir`` (the policies name no comparison to publish beside). Call it before the
    study runs, so a bad combination fails at once."""
    if not (getattr(a, "publish", False) or getattr(a, "publish_dir", None)):
        return None
    if a.publish_dir:
        return Path(a.publish_dir)
    if not inp.source.get("compare"):
        raise ValueError("--publish with --policies needs --publish-dir DIR: only --compare names the "
                         "comparison (docs/results/compare/<suite>/<protocol>/studies/) a study belongs beside")
    from recipes.compare.artifacts import DEFAULT_RESULTS_DIR
    from recipes.compare.study_summaries import STUDIES_DIR

    return DEFAULT_RESULTS_DIR / inp.suite / inp.source["protocol"] / STUDIES_DIR


def _in_default_results(dest: Path) -> bool:
    """True when ``dest`` is ``<default results dir>/<suite>/<protocol>/studies``."""
    from recipes.compare.artifacts import DEFAULT_RESULTS_DIR
    from recipes.compare.study_summaries import STUDIES_DIR

    d = dest.resolve()
    return d.name == STUDIES_DIR and len(d.parents) > 2 and d.parents[2] == DEFAULT_RESULTS_DIR.resolve()


def publish_study(name: str, out: str | Path, dest: str | Path, *, regenerate: bool = True) -> list[Path]:
    """Copy ``out/<name>{.png,.md,.json}`` to ``dest`` (each atomically, the json last) and, when
    ``dest`` lies in the default results tree and ``regenerate``, run ``python -m recipes.results``
    (tables, plots, README section). The json is rendered first (``render_study``), so a study the
    results could not summarise is not published. Returns the written paths."""
    from vla_ebt.config_io import atomic_write_bytes

    from recipes.compare.study_summaries import STUDIES_DIR, render_study

    out, dest = Path(out), Path(dest)
    srcs = [out / f"{name}{ext}" for ext in STUDY_FILES]
    missing = [str(s) for s in srcs if not s.is_file()]
    if missing:
        raise FileNotFoundError(f"publish {name}: missing {missing}")
    group = (dest.parent.parent.name, dest.parent.name) if dest.name == STUDIES_DIR else None
    render_study(out / f"{name}.json", f"{name}.md", group)  # its suite / protocol must be the folder's
    written = []
    for src in srcs:
        atomic_write_bytes(dest / src.name, src.read_bytes())
        written.append(dest / src.name)
    print(f"[{name}] published {len(written)} file(s) to {dest}")
    if regenerate and _in_default_results(dest):
        from recipes import results

        results.main([])
    elif regenerate:
        print(f"[{name}] {dest} is outside docs/results/compare/<suite>/<protocol>/studies: results not regenerated")
    return written


def write_study_outputs(out: str | Path, name: str, result: dict[str, Any], render: Callable[[dict[str, Any]], str],
                        plot: Callable[[dict[str, Any], Path], Any],
                        log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Write a study's ``OUT/<name>.json`` (NaN saved as null), ``<name>.md`` (``render`` of what the json
    holds) and ``<name>.png`` (``plot(result, path)``), each atomically; log the markdown. Returns the
    result as the file holds it, so a fresh run and a reader of the file see the same values."""
    from vla_ebt.config_io import atomic_write_text, json_safe

    out = Path(out)
    result = json.loads(json.dumps(json_safe(result)))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.json", json.dumps(result, indent=2))
    text = render(result)
    atomic_write_text(out / f"{name}.md", text)
    if log:
        log(text)
    plot(result, out / f"{name}.png")
    return result
