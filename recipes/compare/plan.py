"""What a comparison runs: the seed plan (demonstration, tuning-evaluation and final-evaluation seeds,
checked disjoint), the evaluation variants of a head (presets x warm start), and one
:class:`RunSpec` per (suite, protocol, head, hyperparameters, training seed) with the resolved
training config and its own folder."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from vla_ebt.heads import head_class

__all__ = ["SCHEMA", "PROTOCOLS", "SeedPlan", "check_seed_plan", "Variant", "head_variants", "RunSpec",
           "train_config", "tune_decay"]

#: artifact schema tag (recipes.compare.artifacts)
SCHEMA = "vla_ebt.compare/1"
#: backbone protocols: how the pretrained backbone trains (policy.finetune.mode)
PROTOCOLS = ("frozen", "lora", "full")


# ------------------------------------------------------------------------------------------ seeds
@dataclass(frozen=True)
class SeedPlan:
    """Base seeds (env seed of episode i of task t = ``episode_seed(base, t, i)``).

    demo_seed / demo_episodes: the demonstrations (``data.seed``, episodes per task).
    tune_eval_seeds / tune_episodes: evaluation episodes that choose the hyperparameters.
    eval_seeds / episodes: the final evaluation episodes (identical for every head and run).
    """

    tasks: tuple[str, ...]
    demo_seed: int
    demo_episodes: int
    tune_eval_seeds: tuple[int, ...]
    tune_episodes: int
    eval_seeds: tuple[int, ...]
    episodes: int


def _env_seeds(bases: Sequence[int], tasks: Sequence[str], n: int) -> set[int]:
    from vla_ebt.data.episodes import episode_seed

    return {episode_seed(b, t, i) for b in bases for t in tasks for i in range(n)}


def check_seed_plan(plan: SeedPlan) -> None:
    """ValueError naming the overlap when the demonstration, tuning-evaluation and final-evaluation
    episodes share a base seed or an env seed (the evaluation must never replay a training layout,
    and the final numbers must not be the ones the hyperparameters were chosen on)."""
    groups = {"demonstration": ((plan.demo_seed,), plan.demo_episodes),
              "tuning evaluation": (plan.tune_eval_seeds, plan.tune_episodes),
              "final evaluation": (plan.eval_seeds, plan.episodes)}
    if not plan.eval_seeds:
        raise ValueError("no final evaluation seeds")
    names = list(groups)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(set(groups[a][0]) & set(groups[b][0]))
            if shared:
                raise ValueError(f"{a} and {b} seeds overlap: base seed(s) {shared} are used by both "
                                 f"(choose disjoint --eval-seeds / --tune-eval-seeds / data.seed)")
    env = {k: _env_seeds(bases, plan.tasks, n) for k, (bases, n) in groups.items()}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(env[a] & env[b])
            if shared:
                raise ValueError(f"{a} and {b} episodes overlap: {len(shared)} env seed(s) in both "
                                 f"(e.g. {shared[:3]}); choose other base seeds")


# ------------------------------------------------------------------------------------------ variants
@dataclass(frozen=True)
class Variant:
    """One evaluation row of a trained head: a preset's inference overrides, warm start on or off."""

    label: str
    preset: str
    overrides: tuple[tuple[str, Any], ...] = ()
    warm_start: bool = False


def head_variants(head: str, warm_rows: bool = True, name: str | None = None,
                  presets: Sequence[str] | None = None) -> list[Variant]:
    """Every preset of ``head`` (``capabilities.presets``; else one row named after the head) with warm
    start off, then, for heads declaring ``capabilities.warm_start``, the same presets with it on and the
    head's ``capabilities.warm_overrides`` applied. ``name`` (a head trained with changed config
    fields, e.g. ``ebt_eqm``) labels the rows: ``name`` for a preset that keeps the configured
    inference, ``"name preset"`` otherwise. ``presets``: only these of the head's presets (in its order)."""
    from recipes.studies.head_to_head import eval_variants

    base = [(label, tuple(sorted(ov.items()))) for label, ov in eval_variants(head)
            if presets is None or label in presets]
    if name is not None and name != head:
        base = [(name if not ov else f"{name} {label}", ov) for label, ov in base]
    rows = [Variant(label, label, ov, False) for label, ov in base]
    caps = head_class(head).capabilities
    if warm_rows and caps.warm_start:  # with the knob values that make the head use the previous plan
        rows += [Variant(f"{label} +warm", label, tuple(sorted({**dict(ov), **caps.warm_overrides}.items())), True)
                 for label, ov in base]
    return rows


# ------------------------------------------------------------------------------------------ runs
def _slug(x: float) -> str:
    return re.sub(r"[^0-9a-zA-Z.+-]", "_", f"{x:g}")


@dataclass(frozen=True)
class RunSpec:
    """One training run and the evaluations of its checkpoints.

    stage "tune": train seed 0 at the tuning budget, evaluated on the tuning seeds (primary variant,
    last checkpoint); "final": the chosen hyperparameters at the full budget, every checkpoint under
    every variant on the final evaluation seeds (``curve_episodes`` of them before the last checkpoint).
    """

    suite: str
    protocol: str
    head: str
    stage: str
    lr: float
    ema_decay: float
    train_seed: int
    steps: int
    checkpoints: int
    eval_seeds: tuple[int, ...]
    episodes_per_task: int
    tasks: tuple[str, ...]
    variants: tuple[Variant, ...]
    out: str
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    #: the registered head class when ``head`` names a variant (``ebt_eqm`` = ``ebt`` with
    #: ``head_overrides`` applied to its config); "" when ``head`` is the registered head itself
    base_head: str = ""
    head_overrides: tuple[tuple[str, Any], ...] = ()
    #: episodes per task and eval seed at the checkpoints before the last (the first ones of the final
    #: checkpoint's list, so the same env seeds); 0: ``episodes_per_task`` at every checkpoint
    curve_episodes: int = 0
    #: tuning runs evaluated under this preset instead of the head's first (``--tune-presets``); it
    #: names the run folder too, so tunings under different presets never share one; "" = the first
    tune_preset: str = ""

    def episodes_at(self, step: int) -> int:
        """Episodes per task and eval seed evaluated at checkpoint ``step`` (the last gets them all)."""
        if step >= self.steps or self.curve_episodes <= 0:
            return self.episodes_per_task
        return min(self.curve_episodes, self.episodes_per_task)

    @property
    def key(self) -> str:
        """``suite/protocol/stage/head/lr<lr>_ema<decay>/seed<N>`` (also the run folder below ``out``)."""
        preset = f"_{self.tune_preset}" if self.tune_preset else ""
        return (f"{self.suite}/{self.protocol}/{self.stage}/{self.head}/"
                f"lr{_slug(self.lr)}_ema{_slug(self.ema_decay)}{preset}/seed{self.train_seed}")

    @property
    def model_head(self) -> str:
        """The registered head that is trained (``base_head`` or ``head``)."""
        return self.base_head or self.head

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.key

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["variants"] = [dataclasses.asdict(v) for v in self.variants]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        d = dict(d)
        d["variants"] = tuple(Variant(v["label"], v["preset"], tuple(tuple(x) for x in v["overrides"]), v["warm_start"])
                              for v in d["variants"])
        d["eval_seeds"] = tuple(d["eval_seeds"])
        d["tasks"] = tuple(d["tasks"])
        d["head_overrides"] = tuple(tuple(x) for x in d.get("head_overrides", ()))
        return cls(**d)


def tune_decay(decay: float, steps: int, tune_steps: int) -> float:
    """The EMA decay a tuning run of ``tune_steps`` uses for a candidate ``decay`` meant for ``steps``:
    ``decay ** (steps / tune_steps)``, so the average spans the same fraction of training."""
    if decay <= 0 or tune_steps <= 0:
        return decay
    return float(decay ** (steps / tune_steps))


def train_config(base: Any, *, suite: str, head: str, protocol: str, lr: float, ema_decay: float, seed: int,
                 steps: int, checkpoints: int, run_dir: Path, demo_cache: str | None = None,
                 head_overrides: Sequence[tuple[str, Any]] = ()) -> Any:
    """``base`` (a TrainConfig) for one run: the head (everything else of the recipe unchanged), the
    backbone protocol, lr / EMA, the training seed (initialization and data order), ``steps`` with
    ``checkpoints`` evenly spaced checkpoints (all kept, each with a loadable policy/), every step
    logged (metrics.jsonl carries the training seconds the curves use), warmup at most a tenth of
    the run, no evaluation inside finetune.run (the comparison evaluates the checkpoints).
    ``head_overrides`` change fields of that head's config (a head variant such as ``ebt_eqm``) and the
    ``optim.`` fields a variant may change (``optim.ema_warmup``; ``head_to_head.split_overrides``)."""
    from recipes.studies.head_to_head import _head_config, variant_optim

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {list(PROTOCOLS)}")
    if checkpoints < 1 or steps < checkpoints or steps % checkpoints:
        raise ValueError(f"steps ({steps}) must be a positive multiple of checkpoints ({checkpoints})")
    policy = _head_config(base.policy, head, tuple(head_overrides))
    policy = dataclasses.replace(policy, finetune=dataclasses.replace(policy.finetune, mode=protocol))
    optim = dataclasses.replace(base.optim, steps=steps, lr=lr, ema_decay=ema_decay,
                                warmup_steps=min(base.optim.warmup_steps, steps // 10),
                                ckpt_every=steps // checkpoints, ckpt_keep=checkpoints, log_every=1,
                                eval_every=0, max_seconds=0.0, tensorboard=False)
    optim = variant_optim(optim, head_overrides)
    data = dataclasses.replace(base.data, suite=suite)
    if demo_cache is not None:
        data = dataclasses.replace(data, demo_cache=demo_cache)
    ev = dataclasses.replace(base.eval, episodes_per_task=0, baselines=False)
    return dataclasses.replace(base, policy=policy, optim=optim, data=data, eval=ev, seed=seed, run_dir=str(run_dir),
                               deepspeed="")
