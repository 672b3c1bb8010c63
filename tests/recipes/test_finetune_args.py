"""finetune.py's argument parsing: the launch pre-parser takes only its exact flags, so every
TrainConfig field (as a tyro flag) reaches tyro unchanged — including ``--deepspeed``, which a
prefix-matching pre-parser refused as an abbreviation of ``--deepspeed-config``. Parse step only
(``run`` is replaced), nothing trains."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Iterator

import pytest

from recipes import finetune
from recipes.configs import TrainConfig, recipes


def _leaves(cls: type, obj: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """(field path, type, current value) of every non-dataclass field, nested dataclasses walked."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(type(value), value, (*path, f.name))
        else:
            yield (*path, f.name), hints[f.name], value


def _flag(path: tuple[str, ...], negate: bool = False) -> str:
    *parents, name = (p.replace("_", "-") for p in path)
    return "--" + ".".join([*parents, f"no-{name}" if negate else name])


def _override(path: tuple[str, ...], tp: Any, default: Any) -> list[tuple[list[str], tuple[str, ...], Any]]:
    """Command-line tokens that change the field, and the (path, value) tyro must produce from them."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        tp = next(a for a in args if a is not type(None))  # X | None: override with an X
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return [([_flag(path, negate=default)], path, not default)]
    if tp is int:  # (int | Literal["auto"] with default "auto": override with an int)
        value = (default if isinstance(default, int) else 0) + 3
        return [([_flag(path), str(value)], path, value)]
    if tp is float:
        return [([_flag(path), repr(default + 0.25)], path, default + 0.25)]
    if tp is str:
        return [([_flag(path), f"{default}_x"], path, f"{default}_x")]
    if origin is typing.Literal:
        choice = next(a for a in args if a != default)
        return [([_flag(path), choice], path, choice)]
    if origin is tuple and args[0] is str:
        return [([_flag(path), "a", "b"], path, ("a", "b"))]
    if origin is tuple and args[0] is float:
        return [([_flag(path), "0.5", "1.5"], path, (0.5, 1.5))]
    if origin is dict:
        if not default:  # an empty dict takes KEY VALUE pairs
            return [([_flag(path), "k", "v"], path, {"k": "v"})]
        # a dict with entries: one flag per key (--x.key VALUE)
        return [([_flag((*path, key)), f"{val}_x"], (*path, key), f"{val}_x") for key, val in default.items()]
    raise AssertionError(f"no override rule for {'.'.join(path)}: {tp}")


def _get(cfg: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        cfg = cfg[p] if isinstance(cfg, dict) else getattr(cfg, p)
    return cfg


def _parse_via_main(argv: list[str], monkeypatch) -> tuple[TrainConfig, dict]:
    """finetune.main(argv) up to the point where it would train; returns run()'s arguments."""
    seen: dict = {}

    def fake_run(cfg, progress=True, resume=None, deepspeed_config=None):
        seen.update(cfg=cfg, resume=resume, deepspeed_config=deepspeed_config)
        return {}

    monkeypatch.setattr(finetune, "run", fake_run)
    finetune.main(argv)
    return seen["cfg"], seen


@pytest.mark.parametrize("recipe", ["default", "oxe_mix"])
def test_every_train_config_field_passes_through_the_pre_parser(recipe, monkeypatch) -> None:
    base = recipes()[recipe]
    argv, expected = ["--recipe", recipe], []
    for path, tp, default in _leaves(TrainConfig, base):
        for tokens, where, value in _override(path, tp, default):
            argv += tokens
            expected.append((where, value))
    assert len(expected) > 100  # the walk reached the nested configs
    assert any(where == ("deepspeed",) for where, _ in expected)
    cfg, launch = _parse_via_main(argv, monkeypatch)
    wrong = [(".".join(w), _get(cfg, w), v) for w, v in expected if _get(cfg, w) != v]
    assert not wrong, wrong
    assert launch["resume"] is None and launch["deepspeed_config"] is None  # no launch flag was taken


def test_deepspeed_field_can_switch_a_recipe_back_to_the_plain_loop(monkeypatch) -> None:
    assert recipes()["oxe_mix"].deepspeed  # the recipe trains through DeepSpeed by default
    cfg, launch = _parse_via_main(["--recipe", "oxe_mix", "--deepspeed", ""], monkeypatch)
    assert cfg.deepspeed == "" and launch["deepspeed_config"] is None
    cfg, _ = _parse_via_main(["--recipe", "oxe_mix", "--deepspeed=", "--optim.steps", "5"], monkeypatch)
    assert cfg.deepspeed == "" and cfg.optim.steps == 5
    # the launch flag itself still works, spelled out
    cfg, launch = _parse_via_main(["--recipe", "oxe_mix", "--deepspeed-config", "z.json", "--deepspeed", ""],
                                  monkeypatch)
    assert cfg.deepspeed == "" and launch["deepspeed_config"] == "z.json"


def test_launch_flags_are_not_abbreviated() -> None:
    """A prefix of a launch flag is a tyro flag (unknown ones are tyro's error), never the launch flag."""
    with pytest.raises(SystemExit):
        finetune.parse_launch_args(["--recipe", "default", "--deepspeed-conf", "x.json"])
    cfg, launch = finetune.parse_launch_args(["--recipe", "oxe_mix", "--deepspeed", "x.json"])
    assert cfg.deepspeed == "x.json" and launch.deepspeed_config is None


def test_scaling_pre_parser_passes_base_fields_through() -> None:
    from recipes.scaling import parse_scaling_args

    sc = parse_scaling_args(["--base-recipe", "oxe_mix", "--base.deepspeed", "", "--base.optim.steps", "3"])
    assert sc.base.deepspeed == "" and sc.base.optim.steps == 3 and sc.base.run_dir == "runs/oxe_mix"
    with pytest.raises(SystemExit):  # an abbreviation is not --base-recipe
        parse_scaling_args(["--base-rec", "oxe_mix"])
