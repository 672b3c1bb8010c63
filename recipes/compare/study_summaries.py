"""Generated summaries of the protocol studies published beside a comparison.

``python -m recipes.studies.<name> ... --publish`` copies ``<name>.json`` / ``.md`` / ``.png`` to
``docs/results/compare/<suite>/<protocol>/studies/``; ``python -m recipes.results`` renders a short
summary of each such ``<name>.json`` under its (suite, protocol) group, in the README's results
section and in the group's ``results.md``, with a link to the study's own ``.md`` for the rest.

:data:`RENDERERS` maps a study name (the file's stem) to its renderer ``render(data, link) -> markdown
lines``; a new study gets a summary by adding one entry there. A published study without a renderer
gets one line with its link. Renderers read fields through :func:`field`, so a json without a field
they need (or with the wrong type) raises :class:`StudyFormatError`; :func:`render_study` reports it
as ``<file>: field <path>: <problem>``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["StudyFormatError", "RENDERERS", "STUDIES_DIR", "field", "find_studies", "render_study", "study_lines"]

STUDIES_DIR = "studies"  # <results dir>/<suite>/<protocol>/studies/<name>.json
_NUM = (int, float)
WALL = "wall"  # realtime's measured-latency delay


class StudyFormatError(ValueError):
    """A study json lacks a field a renderer reads, or holds the wrong type there."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"field {path}: {problem}")
        self.field, self.problem = path, problem


# ------------------------------------------------------------------------------------------ fields
def field(obj: Any, key: str, where: str, kinds: tuple[type, ...], *, null: bool = False) -> Any:
    """``obj[key]`` when it is one of ``kinds`` (or None with ``null``), else StudyFormatError naming
    ``where.key``. ``where`` is the path of ``obj`` in the file ("" at the top)."""
    name = f"{where}.{key}" if where else key
    if not isinstance(obj, dict):
        raise StudyFormatError(where or "(top level)", f"an object expected, got {type(obj).__name__}")
    if key not in obj:
        raise StudyFormatError(name, "missing")
    v = obj[key]
    if v is None and null:
        return None
    if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
        want = " or ".join(k.__name__ for k in kinds) + (" or null" if null else "")
        raise StudyFormatError(name, f"{want} expected, got {type(v).__name__}")
    return v


def _items(obj: Any, key: str, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, item) of every object in the list ``obj[key]``."""
    for i, item in enumerate(field(obj, key, where, (list,))):
        path = f"{where}.{key}[{i}]" if where else f"{key}[{i}]"
        if not isinstance(item, dict):
            raise StudyFormatError(path, f"an object expected, got {type(item).__name__}")
        yield path, item


def _num(obj: dict[str, Any], key: str, where: str) -> float | None:
    v = field(obj, key, where, _NUM, null=True)
    return None if v is None or not math.isfinite(v) else float(v)


def _ci(obj: dict[str, Any], where: str, keys: tuple[str, str, str], nd: int = 2, undefined: str = "-") -> str:
    """``value [lo, hi]`` from the three fields ``keys`` of ``obj``; ``undefined`` when value is null."""
    v, lo, hi = (_num(obj, k, where) for k in keys)
    if v is None:
        return undefined
    return f"{v:.{nd}f}" if lo is None or hi is None else f"{v:.{nd}f} [{lo:.{nd}f}, {hi:.{nd}f}]"


def _schema(data: Any, prefix: str) -> None:
    s = field(data, "schema", "", (str,))
    if not s.startswith(prefix):
        raise StudyFormatError("schema", f"{prefix}* expected, got {s!r}")


def _intro(title: str, data: dict[str, Any], link: str, what: str) -> str:
    """``**title** ([name.md](link); git ...; seeds x episodes): what`` from the json's meta and policies."""
    meta = field(data, "meta", "", (dict,))
    commit = field(meta, "git_commit", "meta", (str,))
    short = _short(commit)
    merged = meta.get("merged_from")
    if merged is not None:  # labels of an earlier stored study, merged in (recipes.studies.realtime --merge-from)
        from recipes.studies.realtime import merged_commits

        field(merged, "labels", "meta.merged_from", (list,))
        groups: dict[str, list[str]] = {}
        for label, c in merged_commits(merged).items():
            groups.setdefault(_short(str(c or "unknown")), []).append(str(label))
        short += "".join(f"; {', '.join(ls)} from git {c} (merged)" for c, ls in groups.items())
    policies = field(data, "policies", "", (dict,))
    n = {label: len(field(p, "seeds", f"policies.{label}", (list,))) for label, p in policies.items()}
    seeds = (f"{next(iter(n.values()))} training seed(s) per head" if len(set(n.values())) == 1
             else "training seeds " + ", ".join(f"{k} {v}" for k, v in n.items()))
    eps = field(meta, "episodes_per_task", "meta", (int,))
    evs = field(meta, "eval_seeds", "meta", (list,))
    return (f"**{title}** ([{Path(link).name}]({link}); git {short}; {seeds} x {eps} episode(s) per task and eval "
            f"seed, eval seeds {', '.join(map(str, evs))}): {what}")


def _short(commit: str) -> str:
    return commit[:10] + ("-dirty" if commit.endswith("-dirty") else "")


def _separated(a: tuple[float | None, float | None], b: tuple[float | None, float | None]) -> bool:
    """True when both intervals exist and do not overlap."""
    if None in a or None in b:
        return False
    return a[1] < b[0] or b[1] < a[0]


# ------------------------------------------------------------------------------------------ realtime
_SUCCESS = ("success", "ci_low", "ci_high")
_JUMP = ("max_switch_jump", "max_switch_jump_lo", "max_switch_jump_hi")


def _delay_key(d: int | str) -> tuple[int, int]:
    return (1, 0) if d == WALL else (0, int(d))


def _realtime_table(label: str, rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Rows = strategy, columns = delay, cells = success [CI]; sync (one run, any d) under d = 0."""
    delays = sorted({field(r, "delay", w, (int, str)) for w, r in rows}, key=_delay_key)
    cells: dict[str, dict[int | str, str]] = {}
    for w, r in rows:
        cells.setdefault(field(r, "strategy", w, (str,)), {})[r["delay"]] = _ci(r, w, _SUCCESS)
    head = [f"d = {d}" if d != WALL else "measured latency" for d in delays]
    lines = [f"| {label}: strategy | " + " | ".join(head) + " |", "|---" * (len(delays) + 1) + "|"]
    for s, by in cells.items():
        name = "sync (does not depend on d)" if s == "sync" else s
        lines.append(f"| {name} | " + " | ".join(by.get(d, "-") for d in delays) + " |")
    return lines


def _smoothest(label: str, rows: list[tuple[str, dict[str, Any]]]) -> str:
    """The strategy with the smallest max switch jump at the largest delay (async strategies; sync
    does not depend on d), against the runner-up."""
    delays = [r["delay"] for _, r in rows if r["delay"] != WALL and r["strategy"] != "sync"]
    if not delays:
        return f"{label}: no asynchronous cell, no smoothness comparison."
    d = max(delays)
    cand = [(v, w, r) for w, r in rows if r["delay"] == d and r["strategy"] != "sync"
            if (v := _num(r, _JUMP[0], w)) is not None]
    if not cand:
        return f"{label}: at d = {d} no strategy switched chunks (max switch jump undefined)."
    cand.sort(key=lambda x: x[0])
    (_, w, best), rest = cand[0], cand[1:]
    out = f"{label}: smallest max switch jump at d = {d}: **{best['strategy']}** {_ci(best, w, _JUMP, 3)}"
    if rest:
        _, w2, nxt = rest[0]
        ivs = [(_num(r, _JUMP[1], ww), _num(r, _JUMP[2], ww)) for ww, r in ((w, best), (w2, nxt))]
        word = "separated" if _separated(*ivs) else "intervals overlap, not separated"
        out += f"; next {nxt['strategy']} {_ci(nxt, w2, _JUMP, 3)} ({word})"
    return out + "."


def realtime_summary(data: dict[str, Any], link: str) -> list[str]:
    """Per head: success [CI] by strategy x delay; the smoothest strategy at the largest delay."""
    _schema(data, "vla_ebt.realtime/")
    by_label: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for w, r in _items(data, "rows"):
        by_label.setdefault(field(r, "label", w, (str,)), []).append((w, r))
        field(r, "strategy", w, (str,))
        field(r, "delay", w, (int, str))
    lines = [_intro("Real-time execution", data, link, "success [95% CI] by strategy and inference delay d "
                    "(control steps), warm start off."), ""]
    for label, rows in by_label.items():
        lines += [*_realtime_table(label, rows), ""]
    lines += [f"* {_smoothest(label, rows)}" for label, rows in by_label.items()]
    lines.append(f"* Smoothness of every cell (max switch jump, mean squared second difference), stalls and "
                 f"skipped cells: [{Path(link).name}]({link}).")
    return lines


# ------------------------------------------------------------------------------------------ recovery
def recovery_summary(data: dict[str, Any], link: str) -> list[str]:
    """Per head: clean success and, per perturbation, the recovery ratio perturbed / clean [CI]."""
    _schema(data, "vla_ebt.recovery/")
    clean: dict[str, str] = {}
    ratios: dict[str, dict[str, str]] = {}
    perts: list[str] = []
    for w, r in _items(data, "rows"):
        label, cond = field(r, "label", w, (str,)), field(r, "perturbation", w, (str,))
        if cond == "none":
            clean[label] = _ci(r, w, _SUCCESS)
            continue
        perts += [cond] if cond not in perts else []
        cell = _ci(r, w, ("recovery", "recovery_lo", "recovery_hi"), undefined="n/a (no clean success)")
        if "reached" in r:  # recovery/3: the ratio over the episodes still running at the onset
            n = field(r, "reached", w, (int,))
            cell += f"; reached {n}: " + (_ci(r, w, ("recovery_reached", "recovery_reached_lo", "recovery_reached_hi"),
                                              undefined="n/a") if n else "none")
        ratios.setdefault(label, {})[cond] = cell
    reached = any("reached" in r for _, r in _items(data, "rows"))
    lines = [_intro("Recovery", data, link, "clean success and, per injected failure, the recovery ratio (success "
                    "under it / clean success, the ratio of the pooled means) [95% CI]" + (
                        " over all episodes and over the N episodes it reached (still running at its onset step; "
                        "one that ended before was never perturbed)." if reached else ".")), "",
             "| head | clean success | " + " | ".join(perts) + " |", "|---|---|" + "---|" * len(perts)]
    for label in dict.fromkeys([*clean, *ratios]):
        lines.append(f"| {label} | {clean.get(label, '-')} | "
                     + " | ".join(ratios.get(label, {}).get(p, "-") for p in perts) + " |")
    return lines


# ------------------------------------------------------------------------------------------ uncertainty
_AUROC = ("value", "lo", "hi")


def _failure_cell(r: dict[str, Any], w: str) -> str:
    """AUROC [CI], or why it is undefined (no failures / no successes among the running episodes)."""
    if _num(r, "value", w) is not None:
        return _ci(r, w, _AUROC)
    n, pos = field(r, "episodes", w, (int,)), field(r, "positives", w, (int,))
    why = ("no episodes running" if n == 0 else "no failures" if pos == 0 else "no successes" if pos == n
           else "no task with both outcomes")
    return f"n/a ({why})"


def _shift_cell(r: dict[str, Any], w: str) -> str:
    if _num(r, "value", w) is not None:
        return _ci(r, w, _AUROC)
    return "n/a (no episodes)" if field(r, "episodes", w, (int,)) == 0 else "n/a (no task with both conditions)"


def _grid(rows: list[tuple[str, dict[str, Any]]], col: Callable[[str, dict[str, Any]], Any],
          cell: Callable[[dict[str, Any], str], str], names: Callable[[Any], str]) -> list[str]:
    """A table with rows (head, signal) and columns ``col(w, r)`` in first-seen order (sorted)."""
    by: dict[tuple[str, str], dict[Any, str]] = {}
    cols: list[Any] = []
    for w, r in rows:
        c = col(w, r)
        cols += [c] if c not in cols else []
        key = (field(r, "label", w, (str,)), field(r, "signal", w, (str,)))
        by.setdefault(key, {})[c] = cell(r, w)
    lines = ["| head | signal | " + " | ".join(names(c) for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    lines += [f"| {label} | {sig} | " + " | ".join(v.get(c, "-") for c in cols) + " |" for (label, sig), v in by.items()]
    return lines


def uncertainty_summary(data: dict[str, Any], link: str) -> list[str]:
    """Per head and signal: within-task failure AUROC [CI] of the first chunk and of the chunk at each
    step k; shift AUROC [CI] per perturbation (at step 0 and at a later onset)."""
    _schema(data, "vla_ebt.uncertainty/")
    tables = field(data, "tables", "", (dict,))
    failure = [(w, r) for w, r in _items(tables, "failure", "tables")
               if field(r, "step", w, (int,), null=True) is not None]
    shift = list(_items(tables, "shift", "tables"))
    lines = [_intro("Uncertainty", data, link, "does a signal read before the outcome predict failure? "
                    "Within-task AUROC [95% CI] (0.5 = no information), in-distribution episodes still running "
                    "at step k (first chunk: step 0)."), "",
             *_grid(failure, lambda w, r: r["step"], _failure_cell,
                    lambda k: "first chunk" if k == 0 else f"step {k}")]
    if shift:
        lines += ["", "Shift detection, AUROC [95% CI] of shifted vs in-distribution episodes (first chunk; a "
                  "perturbation that starts later also at its onset step):", "",
                  *_grid(shift, lambda w, r: (field(r, "shift", w, (str,)), field(r, "step", w, (int,))), _shift_cell,
                         lambda c: c[0] if c[1] == 0 else f"{c[0]} @ step {c[1]}")]
    return lines


# ------------------------------------------------------------------------------------------ dynamic compute
def dynamic_compute_summary(data: dict[str, Any], link: str) -> list[str]:
    """One table: per head and setting (steps k / budget ms / reference), success [CI], forward-pass
    equivalents and measured ms per chunk, steps used and (budget rows) the share of chunks over budget."""
    _schema(data, "vla_ebt.dynamic_compute/")
    lines = [_intro("Dynamic compute", data, link, "success [95% CI] and cost per chunk vs inference steps and "
                    "under a per-chunk latency budget (whole `predict_chunk` call), warm start off."), "",
             "| head | setting | success | forward equiv. / chunk | chunk ms | steps used | over budget |",
             "|---|---|---|---|---|---|---|"]

    def plain(r: dict[str, Any], w: str, key: str, nd: int) -> str:
        v = _num(r, key, w)
        return "-" if v is None else f"{v:.{nd}f}"

    for w, r in _items(data, "rows"):
        kind = field(r, "kind", w, (str,))
        over = plain(r, w, "over_budget", 2) if kind == "budget" else "-"
        lines.append(f"| {field(r, 'label', w, (str,))} | {field(r, 'setting', w, (str,))} | {_ci(r, w, _SUCCESS)} | "
                     f"{plain(r, w, 'forward_equiv', 1)} | {plain(r, w, 'chunk_ms', 1)} | {plain(r, w, 'steps_used', 2)} "
                     f"| {over} |")
    return lines


# ------------------------------------------------------------------------------------------ reproduction
def reproduction_summary(data: dict[str, Any], link: str) -> list[str]:
    """Per head: how far a re-run of the published final runs landed from them (primary row)."""
    _schema(data, "vla_ebt.reproduction/")
    meta = field(data, "meta", "", (dict,))
    commit = _short(field(meta, "git_commit", "meta", (str,)))
    trained = sorted({_short(str(field(p, "commit_rerun", w, (str,)))) for w, p in _items(data, "pairs")})
    lines = [f"**Reproduction** ([{Path(link).name}]({link}); re-runs trained at git {', '.join(trained) or '-'}, "
             f"compared at git {commit}): the published final runs "
             "trained and evaluated again from their recipe, tuning, training seeds and evaluation seeds; per head, "
             "the largest difference over its seeds.", "",
             "| head | row | seeds | final success | AUC | same final-episode outcome (lowest share) | final loss (relative) |",
             "|---|---|---|---|---|---|---|"]
    for w, r in _items(data, "summary"):
        seeds = field(r, "seeds", w, (list,))
        loss = _num(r, "max_final_loss_rel_diff", w)
        cells = [_num(r, k, w) for k in ("max_abs_final_diff", "max_abs_auc_diff", "min_outcome_agreement")]
        lines.append(f"| {field(r, 'head', w, (str,))} | {field(r, 'row', w, (str,), null=True) or '-'} | "
                     f"{', '.join(map(str, seeds))} | "
                     + " | ".join("-" if c is None else f"{c:.2f}" for c in cells)
                     + f" | {'-' if loss is None else f'{loss:.1e}'} |")
    return lines


# ------------------------------------------------------------------------------------------ CPU time
def cpu_line(data: dict[str, Any]) -> str:
    """One sentence: the study's CPU time, from ``meta.cpu_seconds`` (with ``meta.cpu_unrecorded_parts``,
    parts cached before CPU time was recorded, and ``meta.cpu_scope``, what it covers when not the
    study's own episodes) or else the sum of its rows' ``cpu_s``; says so where the artifact records none."""
    meta = field(data, "meta", "", (dict,))
    what = meta.get("cpu_scope") or "its episodes, single-thread processes"
    secs = _num(meta, "cpu_seconds", "meta") if "cpu_seconds" in meta else None
    missing = meta.get("cpu_unrecorded_parts") or 0
    if secs is None:
        rows = data.get("rows")
        vals = [r.get("cpu_s") for r in rows] if isinstance(rows, list) and rows else []
        if not vals or any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in vals):
            return "* CPU time: not recorded in this artifact (published before studies recorded it)."
        secs = float(sum(vals))
    if missing and not secs:
        return f"* CPU time: not recorded ({missing} part(s) reused from a cache written before it was recorded)."
    extra = f", not counting {missing} part(s) reused from a cache written before it was recorded" if missing else ""
    return f"* CPU time: {secs / 3600:.2f} CPU-h ({what}{extra})."


#: study name (the json's stem) -> renderer(data, link to the study's .md) -> markdown lines
RENDERERS: dict[str, Callable[[dict[str, Any], str], list[str]]] = {
    "realtime": realtime_summary,
    "recovery": recovery_summary,
    "uncertainty": uncertainty_summary,
    "dynamic_compute": dynamic_compute_summary,
    "reproduction": reproduction_summary,
}


# ------------------------------------------------------------------------------------------ files
def find_studies(results_dir: str | Path) -> dict[tuple[str, str], list[Path]]:
    """{(suite, protocol): [study json, sorted by name]} under ``<results_dir>/<suite>/<protocol>/studies/``."""
    out: dict[tuple[str, str], list[Path]] = {}
    root = Path(results_dir)
    if root.is_dir():
        for p in sorted(root.glob(f"*/*/{STUDIES_DIR}/*.json")):
            out.setdefault((p.parent.parent.parent.name, p.parent.parent.name), []).append(p)
    return out


def _check_group(data: Any, suite: str, protocol: str) -> None:
    """The study's own suite / protocol (when it names them) must be its folder's."""
    meta = field(data, "meta", "", (dict,))
    for key, want in (("suite", suite), ("protocol", protocol)):
        got = meta.get(key)
        if got is not None and got != want:
            raise StudyFormatError(f"meta.{key}", f"{want!r} expected (the folder it is published in), got {got!r}")


def render_study(path: str | Path, link: str, group: tuple[str, str] | None = None) -> list[str]:
    """Markdown lines summarising the published study ``path`` (renderer by its stem); ``link``: the
    study's .md as the including document reaches it; ``group``: (suite, protocol) it must belong to.
    ValueError ``<path>: ...`` on unreadable json or a missing / mistyped field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable study json ({e})") from None
    render = RENDERERS.get(path.stem)
    try:
        if group is not None:
            _check_group(data, *group)
        if render is None:
            field(data, "meta", "", (dict,))
            return [f"**{path.stem}**: published ([{Path(link).name}]({link})); no summary renderer is registered "
                    "(recipes/compare/study_summaries.py, RENDERERS)."]
        return [*render(data, link), cpu_line(data)]
    except StudyFormatError as e:
        raise ValueError(f"{path}: {e}") from None


def study_lines(paths: list[Path], link_dir: str, group: tuple[str, str]) -> list[str]:
    """The block of one (suite, protocol): a lead line, then each study's summary; links point into
    ``link_dir`` (the studies folder as the including document reaches it)."""
    lines = ["Studies published beside this comparison (`python -m recipes.studies.<name> ... --publish`):"]
    for p in paths:
        lines += ["", *render_study(p, f"{link_dir}/{p.stem}.md", group)]
    return lines
