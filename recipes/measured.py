"""Regenerate the README's "Measured" section from the benchmark artifacts in docs/results/.

    python -m recipes.measured                  # write the section between the markers; print it
    python -m recipes.measured --check          # exit 1 with a unified diff if the README differs
                                                # from what the artifacts give (nothing is written)

One bullet per known artifact file present in ``--dir`` (default ``docs/results``), in the order of
:data:`FORMATTERS`; each bullet states the artifact's numbers, names the file and the command that
regenerates it. Files not in :data:`FORMATTERS` and missing ones are skipped; a malformed one (not
JSON, a field missing or of the wrong type) raises :class:`ArtifactError` naming the file and the
field. The section lies between ``<!-- measured:begin -->`` and ``<!-- measured:end -->``.

The artifacts are read as JSON only: this module imports nothing from ``benchmarks/`` (which sits
above ``recipes/`` on the layer line, docs/architecture.md).
"""

from __future__ import annotations

import argparse
import difflib
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["BEGIN", "END", "Artifact", "ArtifactError", "Bullet", "FORMATTERS", "generate", "main",
           "render_artifact", "replace_section"]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO / "docs" / "results"
BEGIN, END = "<!-- measured:begin -->", "<!-- measured:end -->"
_MISSING = object()


class ArtifactError(ValueError):
    """A malformed benchmark artifact; the message names the file and the field."""


@dataclass(frozen=True)
class Artifact:
    """One parsed artifact file. ``name`` is how the file is shown (``docs/results/x.json``);
    field paths are dotted, list indices included (``runs.0.wall_s``)."""

    name: str
    data: Any

    def get(self, field: str, *types: type) -> Any:
        """The value at ``field``; ArtifactError if it is absent or (given ``types``) of another type."""
        value = self.opt(field, _MISSING)
        if value is _MISSING:
            raise ArtifactError(f"{self.name}: field '{field}' is missing")
        if types and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            want = " or ".join(t.__name__ for t in types)
            raise ArtifactError(f"{self.name}: field '{field}' should be {want}, got {type(value).__name__} {value!r:.60}")
        return value

    def num(self, field: str) -> float:
        """A number (int or float, not bool) at ``field``."""
        return self.get(field, int, float)

    def text(self, field: str) -> str:
        return self.get(field, str)

    def opt(self, field: str, default: Any = None) -> Any:
        """The value at ``field``, or ``default`` where any part of the path is absent (no type check)."""
        value = self.data
        for part in field.split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return default
        return value


@dataclass(frozen=True)
class Bullet:
    """What a formatter returns: a short title, the numbers as markdown, the regenerating command."""

    title: str
    text: str
    command: str


Formatter = Callable[[Artifact], Bullet]


# ------------------------------------------------------------------------------------------ formatting
def _secs(s: float) -> str:
    """Seconds as '93 s' or '16 min 55 s'."""
    if s < 10:
        return f"{s:.1f} s"
    if s < 100:
        return f"{s:.0f} s"
    m, r = divmod(round(s), 60)
    return f"{m} min {r} s"


def _count(n: float) -> str:
    """189538951 -> '189.5M'."""
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:g}"


def _cmd(script: str, out: str, *args: Any) -> str:
    """``python benchmarks/<script> ARGS --out OUT`` (None args dropped, strings shell-quoted)."""
    parts = ["python", f"benchmarks/{script}"]
    parts += [a if isinstance(a, str) and a.startswith("--") else shlex.quote(str(a)) for a in args if a is not None]
    return " ".join([*parts, "--out", out])


def _load_text(a: Artifact, field: str) -> str:
    s = a.opt(field) or {}
    if not isinstance(s, dict) or "mean" not in s:
        return ""
    return f"load average {a.num(field + '.mean'):.1f} mean, {a.num(field + '.max'):.1f} max"


def _machine(a: Artifact) -> str:
    m = a.opt("machine")
    if isinstance(m, dict):
        cores = f"{a.num('machine.nproc'):g} cores"
        return f"{cores} ({m['cpu_model']})" if m.get("cpu_model") else cores
    if a.opt("cpu_count") is not None:
        return f"{a.num('cpu_count'):g} cores"
    return ""


def _commit(a: Artifact, field: str, dirty_field: str) -> str:
    commit = a.opt(field)
    if commit is None:
        return ""
    return f"commit `{a.text(field)[:7]}`" + (" + uncommitted changes" if a.opt(dirty_field) else "")


def _n(n: float, what: str) -> str:
    """'1 thread', '2 threads'."""
    return f"{n:g} {what}" + ("" if n == 1 else "s")


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


# ------------------------------------------------------------------------------------------ formatters
_PHASES = ("demos", "policy", "training", "evaluation", "baselines")


def format_main_job_timing(a: Artifact) -> Bullet:
    """``benchmarks/main_job_timing.py``: label, machine, commit, per run its cache, wall, phases, peak
    RSS and load; success per policy (per task for the first one) of the first run."""
    runs = a.get("runs", list)
    if not runs:
        raise ArtifactError(f"{a.name}: field 'runs' is empty")
    texts = []
    for i in range(len(runs)):
        r = f"runs.{i}"
        phases = a.get(f"{r}.timing_s", dict)
        names = [k for k in _PHASES if k in phases] + sorted(set(phases) - set(_PHASES) - {"total"})
        ph = []
        for k in names:
            v = _secs(a.num(f"{r}.timing_s.{k}"))
            if k == "training" and a.opt(f"{r}.train_steps") is not None:
                v += (f" for {a.num(f'{r}.train_steps'):g} steps at {a.num(f'{r}.samples_per_s'):.1f} samples/s"
                      f" with {_n(a.num(f'{r}.threads'), 'thread')}")
            ph.append(f"{k} {v}")
        load = _load_text(a, f"{r}.load_avg_1min")
        texts.append(f"{a.text(f'{r}.cache_before')} cache **{_secs(a.num(f'{r}.wall_s'))} wall** ({', '.join(ph)}),"
                     f" {a.num(f'{r}.peak_rss_mb'):.0f} MB peak RSS" + (f", {load}" if load else ""))
    success = a.get("runs.0.success", dict)
    pols = []
    for j, pol in enumerate(success):
        s = f"**{pol} {a.num(f'runs.0.success.{pol}'):.2f}**"
        tasks = a.opt(f"runs.0.per_task.{pol}")
        if j == 0 and isinstance(tasks, dict):
            s += " (" + ", ".join(f"{t} {a.num(f'runs.0.per_task.{pol}.{t}'):.2f}" for t in tasks) + ")"
        pols.append(s)
    context = _join(a.opt("label") or "", _machine(a), _commit(a, "git.commit", "git.dirty"))
    extra = a.opt("extra_args") or []
    cmd = _cmd("main_job_timing.py", a.name, "--runs", len(runs), *(("--label", a.text("label")) if a.opt("label") else ()))
    if extra:
        cmd += " -- " + " ".join(shlex.quote(str(x)) for x in extra)
    return Bullet("Main job (`recipes/finetune.py --recipe default`)",
                  f"{context}: " + "; then ".join(texts) + ". Success: " + ", ".join(pols) + ".", cmd)


_SUITE_RUNS = {"full_suite": "full suite", "not_slow": "without slow tests"}


def format_test_suite_timing(a: Artifact) -> Bullet:
    """``benchmarks/test_suite_timing.py`` (and its earlier hand-made file): per run (``full_suite``,
    ``not_slow``) the command, commit, counts, pytest and wall time, load and slowest test if recorded."""
    present = [k for k in _SUITE_RUNS if k in a.data]
    if not present:
        raise ArtifactError(f"{a.name}: field 'full_suite' is missing (nor is there 'not_slow')")
    texts = []
    for k in present:
        counts = [f"{a.num(f'{k}.passed'):g} passed", f"{a.num(f'{k}.failed'):g} failed"]
        counts += [f"{a.num(f'{k}.{c}'):g} {c}" for c in ("errors", "skipped", "deselected") if a.opt(f"{k}.{c}")]
        t = (f"{_SUITE_RUNS[k]} `{a.text(f'{k}.command')}` ({_commit(a, f'{k}.commit', f'{k}.dirty')}): "
             f"{', '.join(counts)}, pytest **{_secs(a.num(f'{k}.pytest_seconds'))}**, wall {_secs(a.num(f'{k}.wall_seconds'))}")
        if _load_text(a, f"{k}.load_avg_1min"):
            t += f", {_load_text(a, f'{k}.load_avg_1min')}"
        slowest = a.opt(f"{k}.slowest") or []
        if slowest:
            t += f"; slowest `{a.text(f'{k}.slowest.0.test')}` {_secs(a.num(f'{k}.slowest.0.seconds'))}"
        if a.opt(f"{k}.note"):
            t += f"; note: {a.text(f'{k}.note')}"
        texts.append(t)
    label = a.opt("label") or a.opt("what") or ""
    only = {("full_suite",): "full", ("not_slow",): "not_slow"}.get(tuple(present))
    cmd = _cmd("test_suite_timing.py", a.name, *(("--only", only) if only else ()),
               *(("--label", a.text("label")) if a.opt("label") else ()))
    if a.opt("extra_args"):
        cmd += " -- " + " ".join(shlex.quote(str(x)) for x in a.get("extra_args", list))
    return Bullet("Tests", f"{_join(label, _machine(a))}: " + "; ".join(texts) + ".", cmd)


_DEFAULT_BACKBONE = "efficientnet_lite0+all-MiniLM-L6-v2"


def format_policy_latency(a: Artifact) -> Bullet:
    """``benchmarks/policy_latency.py``: settings, head and whole-policy ms per method, encoding ms,
    the goal ratios with their targets and whether they were met."""
    methods = list(a.get("methods", dict))
    c = "config."
    setting = (f"{a.text('device')}, batch {a.num(c + 'batch'):g}, {_n(a.num('threads'), 'thread')}, "
               f"{a.text(c + 'backbone')} at {a.num(c + 'image_size'):g} px, trunk {a.num(c + 'width'):g} x "
               f"{a.num(c + 'depth'):g}, H {a.num(c + 'horizon'):g}, D {a.num(c + 'action_dim'):g}, median of "
               f"{a.num(c + 'repeats'):g} interleaved calls" + (f", {a.text('date')}" if a.opt("date") else ""))
    name = {m: m.replace("_", "-") for m in methods}
    head = ", ".join(f"{name[m]} {a.num(f'{m}_head_ms'):.1f}" for m in methods)
    pol = ", ".join(f"{name[m]} {a.num(f'{m}_policy_ms'):.1f}" for m in methods)
    goals = []
    for g in a.get("goals", dict):
        met = "met" if a.get(f"goals.{g}.met", bool) else "**not met**"
        goals.append(f"`{g}` **{a.num(f'goals.{g}.value'):.2f}** (goal <= {a.num(f'goals.{g}.target'):g}: {met})")
    gpu = a.text("device") != "cpu"
    family, backbone = a.text(c + "backbone").removesuffix(" (frozen)").split(" ", 1)
    cmd = _cmd("policy_latency.py", a.name, "--repeats", int(a.num(c + "repeats")), "--warmup", int(a.num(c + "warmup")),
               "--threads", int(a.num("threads")), *(("--device", "cuda") if gpu else ()),
               *(("--cuda-graphs",) if a.opt("cuda_graph_capture") else ()),
               *(("--skip-reference",) if f"{methods[0]}_head_nokv_ms" not in a.data else ()),
               *(("--backbone-family", family) if family != "composite" else ()),
               *(("--backbone", backbone) if backbone != _DEFAULT_BACKBONE else ()),
               *(("--image-size", int(a.num(c + "image_size"))) if a.num(c + "image_size") != 96 else ()))
    if gpu:  # benchmarks/gpu_latency.sh runs it there, with a random-init text encoder of the same architecture
        setting += (f"; run on the GPU machine by `benchmarks/gpu_latency.sh` (after `benchmarks/gpu_latency_prep.sh` "
                    f"here), whose text encoder ({backbone.split('+', 1)[-1]}) has all-MiniLM-L6-v2's architecture "
                    f"and random weights (the hub is out of reach there; latency does not depend on the values)")
    if a.opt(c + "backbone_random_weights") is not None:  # benchmarks/random_vlm.py built it
        setting += (f"; the backbone is {a.text(c + 'backbone_random_weights.layout')}, built by "
                    f"`benchmarks/random_vlm.py` (the hub is out of reach here; latency does not depend on the values)")
        cmd = f"python benchmarks/random_vlm.py {shlex.quote(backbone)} && {cmd}"
    if a.opt("load_avg_1min") is not None:
        setting += f", load {a.num('load_avg_1min'):.1f} on the machine"
    floor = ""
    if a.opt("encode_ms_for_policy_goal") is not None and a.num("encode_ms_for_policy_goal") > a.num("encode_ms"):
        floor = (f" The whole-policy ratio would meet its goal with an observation encoding of "
                 f"{a.num('encode_ms_for_policy_goal'):.0f} ms at these head times.")
    graphs = ""
    if a.opt("cuda_graph_capture"):
        cap = a.get("cuda_graph_capture", dict)
        done = [m for m in methods if cap.get(m) == "captured"]
        graphs = (" **CUDA graphs** (each head's whole call captured once and replayed): head ms "
                  + ", ".join(f"{name[m]} {a.num(f'{m}_head_graph_ms'):.2f} ({a.num(f'{m}_head_graph_speedup'):.1f}x "
                              f"faster than eager)" for m in done)
                  + "; whole policy ms " + ", ".join(f"{name[m]} {a.num(f'{m}_policy_graph_ms'):.1f}" for m in done)
                  + "; " + ", ".join(f"`{g}_graph` **{a.num(g + '_graph'):.2f}** (goal <= {a.num(f'goals.{g}.target'):g}: "
                                     + ("met" if a.num(g + "_graph") <= a.num(f"goals.{g}.target") else "**not met**") + ")"
                                     for g in a.get("goals", dict) if a.opt(g + "_graph") is not None)
                  + ("." if len(done) == len(methods) else
                     "; not captured: " + ", ".join(f"{name[m]} ({cap.get(m, 'not tried')})" for m in methods if m not in done) + "."))
    return Bullet("Policy latency", f"{setting}: head ms {head}; whole policy ms {pol}; observation encoding "
                  f"{a.num('encode_ms'):.1f} ms. " + ", ".join(goals) + "." + floor + graphs, cmd)


_SIM_VARIANTS = (("ebt", "EBT"), ("diffusion", "diffusion"), ("diffusion_ddim", "diffusion DDIM"))


def format_sim_eval(a: Artifact) -> Bullet:
    """``benchmarks/sim_eval.py``: recipe, suite, episodes; success, ms per chunk and nfe per head
    variant, EBT / diffusion ms ratio; env steps/s per suite; the note if any."""
    tasks = a.get("tasks", list)
    eps = a.num("episodes_per_task")
    setting = f"recipe `{a.text('recipe')}`: {a.text('suite')}, {len(tasks)} tasks x {eps:g} episodes"
    rows = [(k, label) for k, label in _SIM_VARIANTS if f"{k}_success" in a.data]
    if not rows:
        raise ArtifactError(f"{a.name}: field 'ebt_success' is missing")
    succ = ", ".join(f"{label} **{a.num(k + '_success'):.2f}** ({a.num(k + '_nfe'):g} nfe)" for k, label in rows)
    ms = ", ".join(f"{label} {a.num(k + '_chunk_ms'):.1f}" for k, label in rows)
    if a.opt("chunk_ms_ratio") is not None:
        ms += f" (EBT / diffusion {a.num('chunk_ms_ratio'):.2f})"
    env = a.get("env_steps_per_s", dict)
    steps = ", ".join(f"{s} {a.num('env_steps_per_s.' + s):.1f}" if a.num("env_steps_per_s." + s) < 10 else
                      f"{s} {a.num('env_steps_per_s.' + s):.0f}" for s in env)
    text = f"{setting}: success {succ}; ms per chunk {ms}. Env steps/s, image rendered every step: {steps}"
    text += f" ({a.text('note')})." if a.opt("note") else "."
    pols = a.opt("policies") or {}
    if any(f"{k}_train_steps" in a.data for k in ("ebt", "diffusion")):
        pol_args: tuple = ("--train-steps", int(a.num("ebt_train_steps")))
    else:  # saved policies; a description after the folder, "DIR (what)", is not part of the command
        pol_args = ("--policies", *(f"{k}={str(v).split(' (')[0]}" for k, v in pols.items()))
    cmd = _cmd("sim_eval.py", a.name, "--recipe", a.text("recipe"), "--episodes", int(eps), *pol_args)
    return Bullet("Closed-loop head-to-head and env throughput", text, cmd)


def format_convert_throughput(a: Artifact) -> Bullet:
    """``benchmarks/convert_throughput.py``: settings, episodes/s per engine row (fastest of the
    repeats), whether the outputs were identical, cores and load."""
    s = "settings."
    results = a.get("results", list)
    repeats = len(a.get("results.0.all_seconds", list)) if results else 1
    rows = ", ".join(f"{a.text(f'results.{i}.engine')} x {a.num(f'results.{i}.workers'):g} "
                     f"**{a.num(f'results.{i}.episodes_per_s'):.1f}**" for i in range(len(results)))
    setting = (f"{a.num(s + 'episodes'):g} episodes x {a.num(s + 'steps_per_episode'):g} steps, "
               f"{a.text(s + 'layout')} -> {a.num(s + 'image_size'):g} px, {a.num(s + 'files'):g} TFRecord files; "
               f"{_machine(a)}, load average {a.num('load_avg_before'):.1f} before / {a.num('load_avg_after'):.1f} after; "
               f"fastest of {repeats}")
    same = "identical" if a.get("outputs_identical", bool) else "**different**"
    cmd = _cmd("convert_throughput.py", a.name, "--episodes", int(a.num(s + "episodes")), "--files", int(a.num(s + "files")),
               "--steps", int(a.num(s + "steps_per_episode")), "--image-size", int(a.num(s + "image_size")),
               "--workers", int(a.num(s + "workers")), "--repeats", repeats)
    return Bullet("RLDS -> shard conversion", f"{setting}: episodes/s {rows}; outputs {same}.", cmd)


#: (stage field, what it is, format, the artifact's ZeRO-3 / ZeRO-2 ratio field)
_ZERO_ROWS = (("param_elements", "parameter elements", _count, "ratio_param_elements"),
              ("rss_init_mb", "RSS after init", "{:.0f} MB".format, "ratio_rss_init"),
              ("peak_train_mb", "peak RSS in training", "{:.0f} MB".format, "ratio_peak_train"),
              ("peak_above_runtime_mb", "peak minus runtime", "{:.0f} MB".format, "ratio_peak_above_runtime"))


def format_zero_memory(a: Artifact) -> Bullet:
    """``benchmarks/zero_memory.py``: model and run settings; per stage the parameter elements, RSS
    after init, peak training RSS, peak minus runtime and training seconds (slowest rank); ratios."""
    stages = list(a.get("stages", dict))
    m = "model."
    thr = a.get("malloc_mmap_threshold", int, str)
    setting = (f"{_count(a.num('params_total'))}-parameter PaliGemma-architecture model "
               f"({a.num(m + 'layers'):g} x {a.num(m + 'hidden'):g}), {a.text('mode')}, {a.num('world_size'):g} "
               f"{a.text('backend')} ranks, {a.num('steps'):g} steps of batch {a.num('batch_size_per_rank'):g} per rank, "
               f"glibc mmap threshold {thr if isinstance(thr, str) else f'{thr} B'}")
    rows = []
    for key, what, fmt, ratio in _ZERO_ROWS:
        vals = " / ".join(fmt(a.num(f"stages.{st}.{key}")) for st in stages)
        rows.append(f"{what} {vals}" + (f" ({a.num(ratio):.2f})" if a.opt(ratio) is not None else ""))
    train = " / ".join(_secs(max(a.num(f"stages.{st}.ranks.{i}.train_s") for i in range(len(a.get(f"stages.{st}.ranks", list)))))
                       for st in stages)
    rows.append(f"{a.num('steps'):g} training steps {train}")
    cmd = _cmd("zero_memory.py", a.name, "--steps", int(a.num("steps")), "--batch-size", int(a.num("batch_size_per_rank")),
               "--layers", int(a.num(m + "layers")), "--hidden", int(a.num(m + "hidden")), "--heads", int(a.num(m + "heads")),
               "--vision-layers", int(a.num(m + "vision_layers")), "--vision-width", int(a.num(m + "vision_width")),
               "--mode", a.text("mode"), "--ranks", int(a.num("world_size")),
               "--stages", *(st.removeprefix("zero") for st in stages),
               "--malloc-mmap-threshold", thr if isinstance(thr, int) else 0)
    title = "ZeRO memory per rank" + ("" if isinstance(thr, int) and thr > 0 else ", glibc's default allocator settings")
    return Bullet(title, f"{setting}; {' / '.join(stages)} (ratio): " + ", ".join(rows) + ".", cmd)


def format_frozen_feature_cache(a: Artifact) -> Bullet:
    """``benchmarks/frozen_feature_cache.py``: settings; per head s per training step without / with
    the cache, wall and CPU, and the speed-ups; load during each head's blocks."""
    heads = list(a.get("heads", dict))
    if not heads:
        raise ArtifactError(f"{a.name}: field 'heads' is empty")
    h0 = f"heads.{heads[0]}."
    setting = (f"default recipe's policy, frozen backbone, batch {a.num(h0 + 'batch_size'):g}, "
               f"{_n(a.num('threads'), 'thread')}, {a.num('rounds'):g} rounds of {a.num('steps'):g} timed steps, "
               f"{a.num('frames'):g} frames")
    rows = []
    for h in heads:
        p = f"heads.{h}."
        rows.append(f"{h} wall {a.num(p + 'uncached_s_per_step'):.3f} / {a.num(p + 'cached_s_per_step'):.3f} "
                    f"(**{a.num(p + 'speedup'):.2f}x**), CPU {a.num(p + 'uncached_cpu_s_per_step'):.3f} / "
                    f"{a.num(p + 'cached_cpu_s_per_step'):.3f} (**{a.num(p + 'cpu_speedup'):.2f}x**), load average "
                    f"{a.num(p + 'load_avg_1min'):.1f}")
    cmd = _cmd("frozen_feature_cache.py", a.name, "--heads", *heads, "--steps", int(a.num("steps")), "--warmup",
               int(a.num("warmup")), "--rounds", int(a.num("rounds")), "--frames", int(a.num("frames")),
               "--batch-size", int(a.num(h0 + "batch_size")), "--threads", int(a.num("threads")))
    return Bullet("Frozen feature cache", f"{setting}; s per step without / with the cache: " + "; ".join(rows) + ".", cmd)


_HEAD_METHODS = ("ebt_1", "ebt_2", "ebt_4", "ebt_8", "flow_10", "ddim_10", "ddpm_100", "regression")


def format_head_latency(a: Artifact) -> Bullet:
    """``benchmarks/head_latency.py``: trunk size and context; per method wall / process-CPU ms per
    chunk at batch 1 and its network evaluations; what a backward costs in forwards (wall and CPU)."""
    c = "config."
    setting = _join(f"{a.text('device')}, batch {a.num(c + 'batch'):g}, {_n(a.num('threads'), 'thread')}, trunk "
                    f"{a.num(c + 'width'):g} x {a.num(c + 'depth'):g}, H {a.num(c + 'horizon'):g}, D "
                    f"{a.num(c + 'action_dim'):g}, {a.num(c + 'context_tokens'):g} context tokens, median of "
                    f"{a.num(c + 'repeats'):g} interleaved calls", _machine(a), _load_text(a, "load_avg_1min"),
                    _commit(a, "git.commit", "git.dirty"))
    methods = [m for m in _HEAD_METHODS if a.opt(f"{m}_ms") is not None]
    rows = ", ".join(f"{m.replace('_', '-')} {a.num(f'{m}_ms'):.1f} / {a.num(f'{m}_cpu_ms'):.1f} "
                     f"({a.num(f'{m}_nfe'):g} nfe)" for m in methods)
    cost = (f"one forward + action-gradient costs **{1 + a.num('backward_over_forward_cpu'):.2f}** trunk forwards "
            f"by CPU time ({1 + a.num('backward_over_forward'):.2f} by wall time; trunk forward "
            f"{a.num('trunk_fwd_cpu_ms'):.1f} ms CPU); EBT's declared `eval_cost` is {a.num('ebt_declared_eval_cost'):g}")
    cmd = _cmd("head_latency.py", a.name, "--repeats", int(a.num(c + "repeats")), "--warmup", int(a.num(c + "warmup")),
               "--width", int(a.num(c + "width")), "--depth", int(a.num(c + "depth")), "--heads", int(a.num(c + "num_heads")),
               "--horizon", int(a.num(c + "horizon")), "--action-dim", int(a.num(c + "action_dim")),
               "--context-tokens", int(a.num(c + "context_tokens")), "--threads", int(a.num("threads")))
    return Bullet("Action-head latency", f"{setting}: wall / CPU ms per chunk {rows}; {cost}.", cmd)


def format_train_throughput(a: Artifact) -> Bullet:
    """``benchmarks/train_throughput.py``: settings; samples/s and peak RSS per configuration (head x
    fine-tuning mode) of the default recipe's policy."""
    configs = list(a.get("configs", dict))
    if not configs:
        raise ArtifactError(f"{a.name}: field 'configs' is empty")
    setting = _join(f"default recipe's policy, batch {a.num('batch_size'):g}, {_n(a.num('threads'), 'thread')}, "
                    f"{a.num('steps'):g} timed steps after {a.num('warmup'):g}, each configuration in a fresh process",
                    _machine(a), _load_text(a, "load_avg_1min"), _commit(a, "git.commit", "git.dirty"))
    rows = ", ".join(f"{k.replace('_', ' ')} **{a.num(f'configs.{k}.samples_per_s'):.1f}** samples/s "
                     f"({a.num(f'configs.{k}.peak_rss_mb'):.0f} MB peak RSS)" for k in configs)
    cmd = _cmd("train_throughput.py", a.name, "--steps", int(a.num("steps")), "--warmup", int(a.num("warmup")),
               "--batch-size", int(a.num("batch_size")), "--threads", int(a.num("threads")), "--configs", *configs)
    return Bullet("Training throughput", f"{setting}: {rows}.", cmd)


def format_scaling_embodiments(a: Artifact) -> Bullet:
    """``python -m recipes.scaling --suites TARGET OTHER ...`` (results.json): per number of embodiments
    in the training mixture, closed-loop success on each suite trained on (Wilson 95% interval) and the
    training compute."""
    suites = [str(x) for x in a.get("config.suites", list)]
    rows = a.get("rows", list)
    if not suites or not rows:
        raise ArtifactError(f"{a.name}: field 'config.suites' / 'rows' is empty (not an embodiment sweep)")
    points = []
    for i, r in enumerate(rows):
        per = []
        for s in suites:
            f = f"rows.{i}.success_per_suite.{s}"
            if a.opt(f) is None:
                continue
            per.append(f"{s} **{a.num(f + '.success'):.2f}** [{a.num(f + '.ci_low'):.2f}, {a.num(f + '.ci_high'):.2f}] "
                       f"({a.num(f + '.successes'):g}/{a.num(f + '.episodes'):g})")
        points.append(f"{a.num(f'rows.{i}.embodiments'):g} ({', '.join(suites[:int(a.num(f'rows.{i}.embodiments'))])}): "
                      + ", ".join(per) + f"; {_secs(a.num(f'rows.{i}.train_seconds'))} training")
    c = "config."
    setting = _join(f"target {suites[0]}, one policy per mixture of the first k suites, {a.num(c + 'steps'):g} steps "
                    f"each, mixture `{a.text(c + 'base.data.mixture')}`, {a.num(c + 'eval_episodes_per_task'):g} "
                    f"evaluation episodes per task, 1 training seed",
                    f"results written at commit `{a.text('git_commit')[:7]}`" if a.opt("git_commit") else "")
    cmd = ("python -m recipes.scaling --base-recipe default --suites " + " ".join(suites) + " --embodiments "
           + " ".join(str(int(k)) for k in a.get(c + "embodiments", list))
           + " --heads " + " ".join(map(str, a.get(c + "heads", list)))
           + " --backbones " + " ".join(map(str, a.get(c + "backbones", list)))
           + f" --steps {int(a.num(c + 'steps'))} --base.data.mixture {a.text(c + 'base.data.mixture')}"
           f" --eval-episodes-per-task {int(a.num(c + 'eval_episodes_per_task'))} --out OUT"
           f" (then copy OUT/results.json to {a.name})")
    return Bullet("Closed-loop scaling across embodiments", f"{setting}; success per suite by the number of "
                  "embodiments trained on: " + "; ".join(points) + ".", cmd)


#: artifact file name -> formatter; the section lists the present ones in this order
FORMATTERS: dict[str, Formatter] = {
    "main_job_timing.json": format_main_job_timing,
    "test_suite_timing.json": format_test_suite_timing,
    "policy_latency.json": format_policy_latency,
    "policy_latency_224px.json": format_policy_latency,
    "policy_latency_cuda.json": format_policy_latency,
    "policy_latency_cuda_224px.json": format_policy_latency,
    "policy_latency_vlm.json": format_policy_latency,
    "head_latency.json": format_head_latency,
    "train_throughput.json": format_train_throughput,
    "sim_eval_default.json": format_sim_eval,
    "convert_throughput.json": format_convert_throughput,
    "frozen_feature_cache.json": format_frozen_feature_cache,
    "scaling_embodiments.json": format_scaling_embodiments,
    "zero_memory.json": format_zero_memory,
    "zero_memory_glibc_heap.json": format_zero_memory,
}


# ------------------------------------------------------------------------------------------ section
def _shown(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return path.as_posix()


def render_artifact(path: Path, formatter: Formatter) -> str:
    """One markdown bullet for the artifact at ``path``; ArtifactError if it is not JSON or a field
    the formatter needs is missing or of the wrong type."""
    name = _shown(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{name}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{name}: expected a JSON object, got {type(data).__name__}")
    b = formatter(Artifact(name, data))
    return f"* **{b.title}**: {b.text.rstrip('.')}. From `{name}`, regenerated by `{b.command}`."


def generate(results_dir: Path = DEFAULT_DIR) -> str:
    """The section's markdown (no markers) from the known artifacts present in ``results_dir``."""
    source = _shown(results_dir)
    lines = [f"Generated by `python -m recipes.measured` from the benchmark artifacts in `{source}` (do not edit by "
             "hand); each bullet names its artifact and the command that regenerates it.", ""]
    bullets = [render_artifact(results_dir / f, fmt) for f, fmt in FORMATTERS.items() if (results_dir / f).is_file()]
    return "\n".join(lines + (bullets or ["No benchmark artifacts found."])) + "\n"


def replace_section(text: str, body: str, where: str = "README") -> str:
    """``text`` with the part between the markers replaced by ``body``; ValueError if they are missing."""
    b, e = text.find(BEGIN), text.find(END)
    if b < 0 or e < b:
        raise ValueError(f"{where}: markers {BEGIN} ... {END} not found")
    return text[:b + len(BEGIN)] + "\n" + body + text[e:]


def main(argv: list[str] | None = None) -> int:
    """CLI; returns the exit status (0, or 1 when ``--check`` finds a difference)."""
    p = argparse.ArgumentParser(prog="python -m recipes.measured", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=str(DEFAULT_DIR), help="artifact folder (default docs/results)")
    p.add_argument("--readme", default=str(REPO / "README.md"), help="the file holding the measured markers")
    p.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    a = p.parse_args(argv)
    readme = Path(a.readme)
    body = generate(Path(a.dir))
    text = readme.read_text()
    new_text = replace_section(text, body, str(readme))
    if a.check:
        if new_text != text:
            diff = difflib.unified_diff(text.splitlines(), new_text.splitlines(), str(readme), "generated", lineterm="")
            print(f"{readme}: the measured section is stale (run `python -m recipes.measured`):\n" + "\n".join(diff),
                  file=sys.stderr)
            return 1
        print(f"[measured] {readme} matches the artifacts in {a.dir}")
        return 0
    if new_text != text:
        from vla_ebt.config_io import atomic_write_text

        atomic_write_text(readme, new_text)
    print(body, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
