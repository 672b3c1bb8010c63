"""Heads declare what they are: capabilities, validated inference overrides, predict hooks; one
registry style for heads, backbones, suites and dataset configs; no code outside the heads compares
head names; and a head added in one file trains and predicts through VLAPolicy."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from vla_ebt.heads import (
    ActionHead,
    ChunkPrediction,
    Context,
    HeadCapabilities,
    TrunkConfig,
    available_heads,
    build_head,
    head_class,
    head_config_for,
    register_head,
)
from vla_ebt.heads.base import masked_mse
from vla_ebt.heads.factory import HEADS
from vla_ebt.registry import Registry

ROOT = Path(__file__).resolve().parents[3]
TRUNK = TrunkConfig(width=16, depth=1, num_heads=2)
H, D, W = 4, 3, 16


def _ctx(b: int = 3) -> Context:
    return Context(torch.randn(b, 5, W), torch.ones(b, 5, dtype=torch.bool))


def _head(kind: str, **kw) -> ActionHead:
    return build_head(kind, head_config_for(kind, TRUNK, H, D, **kw))


# ------------------------------------------------------------------------------ capabilities
@pytest.mark.parametrize("kind", available_heads())
def test_declared_knobs_are_exactly_the_sample_keywords(kind: str) -> None:
    cls = head_class(kind)
    caps = cls.capabilities
    params = inspect.signature(cls.sample).parameters
    kw_only = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert kw_only == set(caps.knobs), kind
    assert cls.name == kind and caps.eval_cost > 0
    for label, overrides in caps.presets:  # presets only use declared knobs
        assert label and set(overrides) <= set(caps.knobs)


def test_capabilities_say_what_each_head_is() -> None:
    ebt, diff, reg = (head_class(k).capabilities for k in ("ebt", "diffusion", "regression"))
    assert ebt.warm_start and ebt.reports_energy and ebt.second_order_loss and ebt.eval_cost > 1
    assert diff.warm_start and not (diff.reports_energy or diff.second_order_loss) and diff.eval_cost == 1
    assert not (reg.warm_start or reg.reports_energy) and reg.knobs == {} and reg.eval_cost == 1
    assert {"num_steps", "min_grad", "num_candidates", "noise"} <= set(ebt.knobs)
    assert {"num_steps", "sampler"} <= set(diff.knobs)


def test_unknown_knob_names_the_head_the_knob_and_the_known_ones() -> None:
    head = _head("diffusion")
    with pytest.raises(ValueError, match=r"head 'diffusion' has no inference knob\(s\) \['min_grad'\]; "
                                         r"known: \['generator', 'max_guidance_weight', 'num_steps', 'sampler', 'warm_noise'\]"):
        head.predict(_ctx(), min_grad=1e-3)
    with pytest.raises(ValueError, match="head 'diffusion'.*'num_candidates'"):
        with head.inference_overrides(num_candidates=4):  # validated on entry, before any predict
            pass
    assert head.active_overrides() == {}


def test_inference_overrides_apply_nest_yield_to_call_arguments_and_restore() -> None:
    head = _head("ebt", infer_steps=2)
    ctx = _ctx()
    assert head.predict(ctx).steps.tolist() == [2] * 3
    with head.inference_overrides(num_steps=3, noise=0.0):
        assert head.predict(ctx).steps.tolist() == [3] * 3
        with head.inference_overrides(num_steps=1):
            assert head.active_overrides() == {"num_steps": 1, "noise": 0.0}
            assert head.predict(ctx).nfe == 1  # 1 step; its evaluation gives the energy (no final one)
            assert head.predict(ctx, final_eval=True).nfe == 2  # + the energy at the output
        assert head.predict(ctx, num_steps=4).steps.tolist() == [4] * 3  # the call's own knob wins
        assert head.predict(ctx).steps.tolist() == [3] * 3
    assert head.active_overrides() == {} and head.predict(ctx).steps.tolist() == [2] * 3
    with pytest.raises(RuntimeError), head.inference_overrides(num_steps=5):
        raise RuntimeError("restored on error too")
    assert head.active_overrides() == {}


def test_predict_hooks_see_every_prediction_but_not_their_own() -> None:
    head = _head("ebt", infer_steps=1)
    seen: list[tuple[dict, int]] = []

    def hook(h, context, init, knobs, pred) -> None:
        seen.append((knobs, context.batch_size))
        h.predict(context.repeat_interleave(2))  # a prediction made by the hook: no recursion

    handle = head.register_predict_hook(hook)
    with head.inference_overrides(num_steps=2):
        head.predict(_ctx(3), noise=0.0)
    handle.remove()
    head.predict(_ctx(3))
    assert seen == [({"num_steps": 2, "noise": 0.0}, 3)]


def test_heads_without_warm_start_never_see_init() -> None:
    @dataclass
    class Cfg:
        trunk: TrunkConfig = field(default_factory=TrunkConfig)
        horizon: int = H
        action_dim: int = D

    class Probe(ActionHead):
        config_class = Cfg

        def __init__(self, cfg: Cfg) -> None:
            super().__init__()
            self.horizon, self.action_dim, self.inits = cfg.horizon, cfg.action_dim, []

        def compute_loss(self, context, target, mask=None):  # pragma: no cover - not called
            raise NotImplementedError

        def sample(self, context: Context, init: Tensor | None = None) -> ChunkPrediction:
            self.inits.append(init)
            b = context.batch_size
            return ChunkPrediction(torch.zeros(b, H, D), torch.ones(b, dtype=torch.long), 1)

    probe = Probe(Cfg())
    probe.predict(_ctx(), init=torch.ones(3, H, D))
    Probe.capabilities = HeadCapabilities(warm_start=True)
    probe.predict(_ctx(), init=torch.ones(3, H, D))
    assert probe.inits[0] is None and probe.inits[1] is not None


def test_ebt_always_reports_its_energy_trace() -> None:
    for final_eval, rows in ((False, 3), (True, 4)):  # one row per evaluation (+ the output's own)
        pred = _head("ebt").predict(_ctx(), num_steps=3, final_eval=final_eval)
        assert pred.energy_trace.shape == (rows, 3) and pred.energy.shape == (3,)
        torch.testing.assert_close(pred.energy_trace[-1], pred.energy)


# ------------------------------------------------------------------------------ one registry style
def test_every_registry_fails_the_same_way() -> None:
    from eval.sim.suites import make_suite
    from vla_ebt.backbones import BackboneConfig, build_backbone
    from vla_ebt.data.oxe_configs import get_config

    cases = [
        (lambda: head_class("foo"), r"unknown head 'foo'; known heads: \[.*'ebt'"),
        (lambda: build_backbone(BackboneConfig(family="foo")),
         r"unknown backbone family 'foo'; known backbone families: \[.*'composite'"),
        (lambda: make_suite("foo"), r"unknown suite 'foo'; known suites: \[.*'metaworld'.*'reach2d'"),
        (lambda: get_config("foo"), r"unknown dataset 'foo'; known datasets: \[.*'bridge'"),
    ]
    for fn, message in cases:
        with pytest.raises(ValueError, match=message):
            fn()


def test_registry_register_unregister_and_lazy_modules() -> None:
    reg: Registry[int] = Registry("widget", lazy={"json_thing": "json"})
    reg.register("a")(1)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a")(2)
    reg.register("a", overwrite=True)(2)
    assert reg.get("a") == 2 and reg.names() == ["a", "json_thing"] and "json_thing" in reg
    with pytest.raises(ValueError, match="unknown widget 'json_thing'"):  # imported, but it registered nothing
        reg.get("json_thing")
    reg.unregister("a")
    with pytest.raises(ValueError, match="unknown widget 'a'; known widgets: \\['json_thing'\\]"):
        reg.get("a")


@pytest.mark.slow
def test_listing_suites_and_backbones_imports_no_heavy_module() -> None:
    code = ("import sys\nfrom eval.sim.suites import available_suites\n"
            "assert {'metaworld', 'libero', 'pusht'} <= set(available_suites())\n"
            "heavy = [m for m in ('mujoco', 'metaworld', 'eval.sim.suites.metaworld', 'eval.sim.suites.libero') "
            "if m in sys.modules]\nassert not heavy, heavy\n"
            "from vla_ebt.backbones import available_backbones\n"
            "assert {'composite', 'open_clip', 'paligemma', 'idefics3'} <= set(available_backbones())\n"
            "assert 'open_clip' not in sys.modules and 'transformers' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------------ no head-name comparisons
HEAD_NAME_SCAN = ("vla_ebt", "eval", "recipes", "benchmarks", "data_pipelines")
HEAD_NAME_EXEMPT = ("vla_ebt/heads/", "vla_ebt/registry.py")


def _is_policy_head_kind(node: ast.AST) -> bool:
    """``<x>.cfg.head`` / ``cfg.head``: the built policy's head kind."""
    if not (isinstance(node, ast.Attribute) and node.attr == "head"):
        return False
    v = node.value
    return (isinstance(v, ast.Attribute) and v.attr == "cfg") or (isinstance(v, ast.Name) and v.id == "cfg")


def head_name_comparisons(path: Path, names: set[str]) -> list[str]:
    """Comparisons (==, !=, in, is, match/case) with a head-name literal, or of a policy config's
    ``head`` field with anything: ``line: source`` for each."""

    def literal(n: ast.AST) -> bool:
        if isinstance(n, ast.Constant):
            return n.value in names
        if isinstance(n, (ast.Tuple, ast.List, ast.Set)):
            return any(literal(e) for e in n.elts)
        return False

    src = path.read_text()
    out = []
    for node in ast.walk(ast.parse(src, filename=str(path))):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(literal(o) or _is_policy_head_kind(o) for o in operands):
                out.append(f"{node.lineno}: {ast.get_source_segment(src, node)}")
        elif isinstance(node, ast.MatchValue) and literal(node.value):
            out.append(f"{node.lineno}: case {ast.get_source_segment(src, node)}")
    return sorted(out, key=lambda h: int(h.split(":")[0]))


def test_no_code_outside_the_heads_compares_head_names() -> None:
    names = set(available_heads())
    bad = []
    for pkg in HEAD_NAME_SCAN:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            rel = f.relative_to(ROOT).as_posix()
            if not rel.startswith(HEAD_NAME_EXEMPT):
                bad += [f"{rel}:{hit}" for hit in head_name_comparisons(f, names)]
    assert bad == [], "query head.capabilities (or ChunkPrediction) instead:\n" + "\n".join(bad)


def test_the_scanner_sees_the_forms_it_forbids(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text('a = policy.cfg.head == "ebt"\nb = kind in ("regression", "x")\nc = cfg.head != other\n'
                 'd = head_name == "diffusion_ddim"\nmatch k:\n    case "ebt":\n        pass\ne = {"ebt": 1}\n')
    hits = head_name_comparisons(f, {"ebt", "diffusion", "regression"})
    assert [h.split(":")[0] for h in hits] == ["1", "2", "3", "6"]


# ------------------------------------------------------------------------------ a head in one file
@dataclass
class MeanConfig:
    """The dummy head's config: the shared fields plus one of its own."""

    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    horizon: int = 16
    action_dim: int = 7
    scale: float = 1.0


class MeanHead(ActionHead):
    """A linear readout of the mean context token, scaled by a knob."""

    config_class = MeanConfig
    capabilities = HeadCapabilities(knobs={"scale": "multiplies the output"}, presets=(("mean", {}),))

    def __init__(self, cfg: MeanConfig) -> None:
        super().__init__()
        self.cfg, self.horizon, self.action_dim = cfg, cfg.horizon, cfg.action_dim
        self.out = nn.Linear(cfg.trunk.width, cfg.horizon * cfg.action_dim)

    def forward(self, context: Context) -> Tensor:
        m = context.mask.unsqueeze(-1).to(context.tokens.dtype)
        pooled = (context.tokens * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.out(pooled).view(-1, self.horizon, self.action_dim)

    def compute_loss(self, context: Context, target: Tensor, mask: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        loss = masked_mse(self(context), target, mask)
        return loss, {"loss": loss.item()}

    @torch.no_grad()
    def sample(self, context: Context, init: Tensor | None = None, *, scale: float | None = None) -> ChunkPrediction:
        s = self.cfg.scale if scale is None else scale
        actions = self(context) * s
        return ChunkPrediction(actions, torch.ones(context.batch_size, dtype=torch.long), nfe=1)


@pytest.fixture
def mean_head():
    register_head("test_mean")(MeanHead)
    try:
        yield MeanHead
    finally:
        HEADS.unregister("test_mean")


@pytest.mark.slow
def test_a_registered_head_trains_saves_and_predicts_through_the_policy(mean_head, tmp_path: Path) -> None:
    from tests.policy_fixtures import make_batch, make_policy
    from vla_ebt.policy import VLAPolicy

    policy = make_policy(head="test_mean", head_options={"scale": 0.5})
    assert isinstance(policy.head, MeanHead) and policy.head.cfg.scale == 0.5
    assert policy.head.cfg.horizon == policy.cfg.horizon and policy.head.cfg.trunk is policy.cfg.trunk
    batch = make_batch()
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.1)
    before = policy.head.out.weight.detach().clone()
    loss, info = policy.compute_loss(batch)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, policy.head.out.weight)

    obs = {k: batch[k] for k in ("images", "instruction", "state", "embodiment")}
    out = policy.predict_chunk(obs)
    assert out.actions.shape == (4, policy.cfg.horizon, policy.cfg.action_dim) and out.nfe == 1
    doubled = policy.predict_chunk(obs, scale=1.0)  # the head's own knob, through the policy
    torch.testing.assert_close(doubled.normalized, 2 * out.normalized)
    with pytest.raises(ValueError, match="head 'test_mean' has no inference knob"):
        policy.predict_chunk(obs, num_steps=2)
    policy.reset()
    assert policy.select_action(obs).shape == (4, policy.cfg.action_dim)  # no warm start asked for

    policy.save_pretrained(tmp_path / "p")
    again = VLAPolicy.from_pretrained(tmp_path / "p")
    assert again.cfg.head == "test_mean" and again.head.cfg.scale == 0.5
    torch.testing.assert_close(again.predict_chunk(obs).normalized, out.normalized)


def test_head_options_and_study_variants_reach_a_head_without_a_typed_field(mean_head) -> None:
    from recipes.configs import recipes
    from recipes.studies.head_to_head import _head_config, eval_variants, parse_variant
    from tests.policy_fixtures import small_config

    with pytest.raises(ValueError, match=r"head_options \(test_mean\).*unknown field\(s\) \['scal'\]"):
        small_config(head="test_mean", head_options={"scal": 2.0}).head_config()
    cfg = small_config(head="ebt", head_options={"infer_steps": 3}).head_config()
    assert cfg.infer_steps == 3 and cfg.trunk.width == 32
    v = parse_variant("half:test_mean:scale=0.5")
    assert _head_config(small_config(), v.head, v.overrides).head_config().scale == 0.5
    with pytest.raises(ValueError, match="unknown test_mean config field"):
        _head_config(small_config(), "test_mean", (("scal", 1.0),))
    assert eval_variants("test_mean") == [("mean", {})]
    assert recipes()["reach2d_test_mean"].policy.head == "test_mean"
