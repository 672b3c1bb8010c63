"""The head comparison machinery (recipes.compare, recipes.results): resumable runs with a fake trainer,
seed disjointness, bootstrap / AUC / separates, the artifact schema, the generated README section,
the training seed reaching initialization and data order, and one real end-to-end run (slow)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from recipes.compare.artifacts import validate_artifact
from recipes.compare.plan import RunSpec, SeedPlan, Variant, check_seed_plan, head_variants, tune_decay
from recipes.compare.runner import DONE, ERROR, is_done, run_specs, select_hparams
from recipes.compare.stats import Estimate, auc, auc_estimate, bootstrap, separates, success_estimate
from tests.compare_fixtures import FIXTURE_DIR, fake_artifact

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ runner
def _spec(out: Path, head: str, seed: int, stage: str = "final", lr: float = 1e-3) -> RunSpec:
    return RunSpec("reach2d", "frozen", head, stage, lr, 0.99, seed, 20, 2, (10000,), 10, ("reach_red", "reach_blue"),
                   (Variant(head, head),), str(out))


class FakeTrainer:
    """execute(spec): records the call; raises once for the keys in ``crash_once``."""

    def __init__(self, crash_once: set[str] = frozenset()) -> None:
        self.calls: list[str] = []
        self.crash_once = set(crash_once)
        self.lock = threading.Lock()

    def __call__(self, spec: RunSpec) -> dict:
        with self.lock:
            self.calls.append(spec.key)
            crash = spec.key in self.crash_once
            self.crash_once.discard(spec.key)
        if crash:
            raise RuntimeError("simulated crash")
        return fake_artifact(spec.head, spec.train_seed, {spec.head: 0.5 + 0.1 * spec.train_seed},
                             stage=spec.stage)


def test_runner_skips_finished_runs_and_reruns_a_crashed_one(tmp_path):
    specs = [_spec(tmp_path, h, s) for h in ("ebt", "regression") for s in (0, 1)]
    crash = specs[1].key
    fake = FakeTrainer(crash_once={crash})
    first = run_specs(specs, fake, jobs=2, log=lambda _: None)
    assert [o.status for o in first] == ["done", "failed", "done", "done"]
    assert sorted(fake.calls) == sorted(s.key for s in specs)
    err = json.loads((specs[1].run_dir / ERROR).read_text())
    assert "simulated crash" in err["error"] and "Traceback" in err["traceback"]
    assert not is_done(specs[1]) and all(is_done(s) for s in specs if s.key != crash)
    assert json.loads((specs[0].run_dir / "spec.json").read_text())["head"] == "ebt"

    fake.calls.clear()
    second = run_specs(specs, fake, jobs=2, log=lambda _: None)
    assert fake.calls == [crash]  # only the crashed run runs again
    assert [o.status for o in second] == ["skipped", "done", "skipped", "skipped"]
    assert not (specs[1].run_dir / ERROR).exists() and (specs[1].run_dir / DONE).exists()
    assert second[0].result["head"] == "ebt"  # a skipped run still reports its artifact

    (specs[2].run_dir / DONE).unlink()  # a killed run (no done.json) runs again
    fake.calls.clear()
    run_specs(specs, fake, jobs=1, log=lambda _: None)
    assert fake.calls == [specs[2].key]


def test_tuning_choice_is_by_success_then_loss_and_needs_every_candidate(tmp_path):
    from recipes.compare.runner import Outcome

    def out(lr, success, loss, status="done"):
        s = _spec(tmp_path, "ebt", 0, "tune", lr)
        art = fake_artifact("ebt", 0, {"ebt": 0.0}, stage="tune")
        art["curve"][-1]["success"]["mean"] = success
        art["final_loss"] = loss
        return Outcome(s, status, result=None if status == "failed" else art)

    sel = select_hparams([out(1e-4, 0.5, 0.2), out(3e-4, 0.7, 0.3), out(1e-3, 0.7, 0.1)])
    assert sel["complete"] and sel["chosen"]["lr"] == 1e-3  # tie on success: lower loss
    assert [c["success"] for c in sel["candidates"]] == [0.5, 0.7, 0.7]
    sel = select_hparams([out(1e-4, 0.5, 0.2), out(3e-4, 0.9, 0.3, status="failed")])
    assert not sel["complete"] and sel["chosen"] is None
    assert tune_decay(0.999, 1000, 250) == pytest.approx(0.999 ** 4) and tune_decay(0.0, 10, 5) == 0.0


def test_cli_plan_fake_trainer_tunes_then_trains_each_seed(tmp_path):
    from recipes.compare.cli import main

    fake = FakeTrainer()
    argv = ["--suite", "reach2d", "--heads", "ebt", "regression", "--seeds", "0", "1", "--out", str(tmp_path),
            "--steps", "20", "--checkpoints", "2", "--tune-steps", "4", "--tune-lr", "1e-4", "1e-3", "--tune-ema", "0.9",
            "--protocols", "frozen", "--jobs", "2"]
    assert main(argv, execute=fake) == 0
    assert len(fake.calls) == 2 * 2 + 2 * 2  # tuning grid per head + seeds per head
    tuning = json.loads((tmp_path / "reach2d" / "frozen" / "tuning.json").read_text())
    assert set(tuning["heads"]) == {"ebt", "regression"} and tuning["tune_steps"] == 4
    assert all(h["chosen"]["tuned"] for h in tuning["heads"].values())
    spec = json.loads((tmp_path / "reach2d/frozen/final/ebt/lr0.0001_ema0.9/seed1/spec.json").read_text())
    assert spec["config"]["seed"] == 1 and spec["config"]["policy"]["finetune"]["mode"] == "frozen"
    assert spec["config"]["optim"]["ckpt_every"] == 10 and spec["config"]["optim"]["ckpt_keep"] == 2
    assert [v["label"] for v in spec["variants"]] == [v.label for v in head_variants("ebt")]
    tune_spec = json.loads((tmp_path / "reach2d/frozen/tune/ebt/lr0.001_ema0.9/seed0/spec.json").read_text())
    assert tune_spec["config"]["optim"]["ema_decay"] == pytest.approx(0.9 ** 5)  # decay ** (20 / 4)
    assert tune_spec["eval_seeds"] == [20000] and spec["eval_seeds"] == [10000]
    fake.calls.clear()
    assert main(argv, execute=fake) == 0 and fake.calls == []  # everything done: nothing reruns


def test_variants_cover_presets_and_warm_start_rows():
    from vla_ebt.heads import available_heads, head_class

    for h in available_heads():
        rows = head_variants(h)
        presets = head_class(h).capabilities.presets or ((h, {}),)
        assert [r.label for r in rows if not r.warm_start] == [p for p, _ in presets]
        assert any(r.warm_start for r in rows) == head_class(h).capabilities.warm_start
        for r in rows:  # a warm row really uses the previous plan: the head's warm-start knob values apply
            expected = head_class(h).capabilities.warm_overrides if r.warm_start else {}
            assert {k: v for k, v in r.overrides if k in expected} == dict(expected)
    assert dict(next(r for r in head_variants("flow") if r.warm_start).overrides)["warm_noise"] < 1.0


# ------------------------------------------------------------------------------------------ seeds
def test_evaluation_seeds_must_be_disjoint_from_demonstrations_and_tuning():
    tasks = ("reach_red", "reach_blue")
    check_seed_plan(SeedPlan(tasks, 0, 50, (20000,), 10, (10000,), 10))
    with pytest.raises(ValueError, match="demonstration and final evaluation seeds overlap"):
        check_seed_plan(SeedPlan(tasks, 0, 50, (20000,), 10, (0,), 10))
    with pytest.raises(ValueError, match="tuning evaluation and final evaluation seeds overlap"):
        check_seed_plan(SeedPlan(tasks, 0, 50, (7,), 10, (7, 8), 10))
    from recipes.compare.cli import main

    with pytest.raises(SystemExit, match="seeds overlap"):
        main(["--suite", "reach2d", "--out", "/tmp/unused", "--eval-seeds", "0", "--dry-run"])


# ------------------------------------------------------------------------------------------ statistics
def test_bootstrap_interval_contains_the_mean_narrows_with_data_and_is_deterministic():
    rng = np.random.default_rng(1)
    small = [(rng.random(20) < 0.6).astype(float) for _ in range(3)]
    big = [(rng.random(200) < 0.6).astype(float) for _ in range(3)]
    tasks_s = [np.arange(20) % 2 for _ in small]
    tasks_b = [np.arange(200) % 2 for _ in big]
    e_s = success_estimate(small, tasks_s)
    e_b = success_estimate(big, tasks_b)
    for e, data in ((e_s, small), (e_b, big)):
        assert e.lo <= e.value <= e.hi and e.value == pytest.approx(np.mean([d.mean() for d in data]))
    assert (e_b.hi - e_b.lo) < 0.6 * (e_s.hi - e_s.lo)
    assert success_estimate(small, tasks_s) == e_s  # fixed bootstrap RNG seed
    assert success_estimate(small, tasks_s, seed=5) != e_s
    one = success_estimate([np.ones(10)], [np.zeros(10, int)])
    assert (one.value, one.lo, one.hi) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="task labels"):
        bootstrap([np.ones(4)], [np.zeros(3)])


def test_seed_variation_widens_the_interval():
    """Resampling seeds first: three seeds that disagree give a wider interval than three that agree."""
    agree = [np.r_[np.ones(12), np.zeros(8)] for _ in range(3)]
    disagree = [np.r_[np.ones(20)], np.r_[np.ones(12), np.zeros(8)], np.r_[np.ones(4), np.zeros(16)]]
    lab = [np.zeros(20, int)] * 3
    a, d = success_estimate(agree, lab), success_estimate(disagree, lab)
    assert a.value == d.value == pytest.approx(0.6) and (d.hi - d.lo) > (a.hi - a.lo)


def test_bootstrap_leaves_out_replicates_where_the_statistic_is_undefined():
    """A statistic that is NaN on some resamples (an AUROC with one class drawn): those replicates are
    counted and left out of the interval instead of making it NaN."""
    def stat(per_seed):
        x = per_seed[0]
        return float(x.mean()) if 0 < x.sum() < len(x) else float("nan")

    e = bootstrap([np.array([0.0, 1.0])], None, stat, n_boot=400)
    assert e.value == 0.5 and (e.lo, e.hi) == (0.5, 0.5)
    assert 100 < e.undefined < 300  # about half of the resamples draw one value twice
    assert bootstrap([np.array([0.0, 1.0, 1.0])], None, n_boot=50).undefined == 0


def test_auc_and_its_interval():
    assert auc([10, 20, 30], [0.0, 0.5, 1.0]) == pytest.approx(0.5)
    assert auc([10, 20], [1.0, 1.0]) == 1.0 and auc([10], [0.3]) == 0.3
    assert auc([0, 10, 40], [0.0, 1.0, 1.0]) == pytest.approx((5 + 30) / 40)
    rng = np.random.default_rng(0)
    curves = [np.stack([(rng.random(30) < p) for p in (0.2, 0.5, 0.8)]).astype(float) for _ in range(2)]
    e = auc_estimate(curves, [np.arange(30) % 3] * 2, [10, 20, 30])
    assert e.lo <= e.value <= e.hi
    assert e.value == pytest.approx(np.mean([auc([10, 20, 30], c.mean(axis=1)) for c in curves]))


def test_separates_only_when_intervals_do_not_overlap():
    assert separates(Estimate(0.8, 0.7, 0.9), Estimate(0.4, 0.3, 0.6))
    assert separates((0.3, 0.6), (0.7, 0.9))
    assert not separates(Estimate(0.8, 0.6, 0.9), Estimate(0.5, 0.4, 0.65))
    assert not separates((0.2, 0.5), (0.5, 0.7))  # touching intervals overlap


# ------------------------------------------------------------------------------------------ artifacts
def test_artifact_schema():
    a = fake_artifact("ebt", 0, {"ebt-2": 0.5})
    assert validate_artifact(json.loads(json.dumps(a))) is not None
    for field, value, msg in [("suite", None, "suite: missing"), ("train_seed", "0", "train_seed: int expected"),
                              ("schema", "other/0", "schema"), ("cpu_seconds", True, "cpu_seconds")]:
        bad = dict(a)
        if value is None:
            del bad[field]
        else:
            bad[field] = value
        with pytest.raises(ValueError, match=msg):
            validate_artifact(bad)
    bad = json.loads(json.dumps(a))
    bad["curve"][1]["step"] = 5  # steps must increase
    bad["rows"][0]["curve"][0]["outcomes"]["reach_red"] = [2]
    del bad["cost"]["forward_equiv"]
    with pytest.raises(ValueError) as e:
        validate_artifact(bad)
    assert "curve[1].step" in str(e.value) and "outcomes" in str(e.value) and "cost.forward_equiv" in str(e.value)


def test_publishing_some_heads_keeps_the_other_heads_tuning_under_the_same_settings(tmp_path):
    from recipes.compare.artifacts import publish

    def tuning(heads: dict, steps: int = 3000) -> dict:
        return {"suite": "reach2d", "protocol": "frozen", "steps": steps, "tune_steps": 750, "grid": {"lr": [1e-3]},
                "heads": {h: {"chosen": {"lr": lr, "ema_decay": 0.99}, "complete": True} for h, lr in heads.items()}}

    src = tmp_path / "run" / "tuning.json"
    src.parent.mkdir()
    dest = tmp_path / "pub"
    src.write_text(json.dumps(tuning({"ebt": 1e-3, "flow": 3e-4, "regression": 1e-3})))
    publish([], [src], dest)
    src.write_text(json.dumps(tuning({"ebt": 3e-4, "ebt_eqm": 1e-4})))  # a later run of two heads
    publish([], [src], dest)
    heads = json.loads((dest / "reach2d" / "frozen" / "tuning.json").read_text())["heads"]
    assert {h: e["chosen"]["lr"] for h, e in heads.items()} == {"ebt": 3e-4, "ebt_eqm": 1e-4, "flow": 3e-4,
                                                                "regression": 1e-3}
    published = dest / "reach2d" / "frozen" / "tuning.json"
    (dest / "reach2d" / "frozen" / "flow").mkdir()
    (dest / "reach2d" / "frozen" / "flow" / "seed0.json").write_text("{}")  # flow's final runs are published
    src.write_text(json.dumps(tuning({"ebt": 1e-3}, steps=600)))  # other settings would drop flow's table
    before = published.read_text()
    artifact = fake_artifact("ebt", 0, {"ebt-2": 0.5})
    with pytest.raises(ValueError, match=r"differs in \['steps'\].*\['flow'\]"):
        publish([artifact], [src], dest)
    assert published.read_text() == before and not (dest / artifact["suite"] / artifact["protocol"] / "ebt").exists()
    shutil.rmtree(dest / "reach2d" / "frozen" / "flow")  # no dropped head has artifacts: replaced whole
    publish([], [src], dest)
    assert list(json.loads(published.read_text())["heads"]) == ["ebt"]


# ------------------------------------------------------------------------------------------ results
@pytest.mark.slow
def test_results_check_passes_on_the_fixture_set_and_fails_when_the_readme_is_edited(tmp_path, capsys):
    from recipes import results

    argv = ["--dir", str(FIXTURE_DIR), "--readme", str(FIXTURE_DIR / "README.md")]
    assert results.main([*argv, "--check"]) == 0
    d = tmp_path / "compare"
    shutil.copytree(FIXTURE_DIR, d)
    readme = d / "README.md"
    argv = ["--dir", str(d), "--readme", str(readme)]
    text = readme.read_text()
    assert "**ebt-2** 0.93" in text and "beats regression" in text
    readme.write_text(text.replace("beats regression", "loses to regression", 1))
    assert results.main([*argv, "--check"]) == 1
    assert "stale" in capsys.readouterr().err
    readme.write_text(text)
    (d / "reach2d" / "frozen" / "results.md").write_text("edited\n")
    assert results.main([*argv, "--check"]) == 1
    assert results.main([*argv, "--no-plots"]) == 0 and results.main([*argv, "--check"]) == 0
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        results.main([*argv, "--check"])


@pytest.mark.slow
def test_results_say_where_the_focus_head_loses(tmp_path):
    from recipes.compare.report import build_cells, verdicts

    arts = [fake_artifact("ebt", s, {"ebt-2": 0.1}) for s in (0, 1)]
    arts += [fake_artifact("regression", s, {"regression": 0.9}) for s in (0, 1)]
    arts += [fake_artifact("diffusion", s, {"ddim-10": 0.15}) for s in (0, 1)]
    (cells,) = build_cells(arts).values()
    text = " ".join(verdicts(cells, "ebt"))
    assert "**loses to** regression" in text and "not separated from ddim-10" in text
    assert "Highest final success: **regression**" in text
    from recipes.compare.report import section

    assert "oversubscribed" not in section(build_cells(arts), "ebt", "x")
    arts[0]["cost"].update(load_avg_1min=7.5, cpu_count=2)
    assert "oversubscribed machine, load 7.5 on 2 cores" in section(build_cells(arts), "ebt", "x")
    other = fake_artifact("regression", 2, {"regression": 0.9}, episodes=5)
    with pytest.raises(ValueError, match="other episodes"):
        build_cells([*arts, other])


def test_readme_results_section_is_generated():
    """The README's section equals what `python -m recipes.results` makes of docs/results/compare."""
    from recipes import results

    assert results.main(["--check"]) == 0


# ------------------------------------------------------------------------------------------ training seed
class _Stop(Exception):
    pass


def test_training_seed_reaches_initialization_and_data_order(tmp_path, monkeypatch):
    """finetune.run's seed: two seeds give different initial weights and batch order, the same seed
    gives identical ones (captured where training would start)."""
    import vla_ebt.train
    from recipes.finetune import run
    from tests.recipes.test_studies import _tiny_reach2d_recipe

    seen: list[tuple[dict, list]] = []

    def fake_train_policy(policy, batches, cfg, **kw):
        weights = {k: v.clone() for k, v in policy.state_dict().items()}
        it = batches(0)
        seen.append((weights, [next(it) for _ in range(3)]))
        raise _Stop

    monkeypatch.setattr(vla_ebt.train, "train_policy", fake_train_policy)
    cfg = _tiny_reach2d_recipe(tmp_path)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, episodes_per_task=3))
    for i, seed in enumerate((0, 0, 1)):
        with pytest.raises(_Stop):
            run(dataclasses.replace(cfg, seed=seed, run_dir=str(tmp_path / f"run{i}")), progress=False)
    (w0, b0), (w0b, b0b), (w1, b1) = seen

    def same_batches(x, y):
        return all(torch_equal(p["action"], q["action"]) and p["instruction"] == q["instruction"] for p, q in zip(x, y))

    head_keys = [k for k in w0 if k.startswith("head.")]
    assert head_keys and all(torch_equal(w0[k], w0b[k]) for k in w0)
    assert not all(torch_equal(w0[k], w1[k]) for k in head_keys)
    assert same_batches(b0, b0b) and not same_batches(b0, b1)


def test_same_seed_training_is_bit_identical_on_one_machine(tmp_path):
    """Two trainings of the same recipe and seed in one environment give the same loss at every step
    and the same weights (a re-run that differs comes from another machine or environment, which the
    artifacts record, not from the training code)."""
    from safetensors.torch import load_file

    from recipes.finetune import run
    from tests.recipes.test_studies import _tiny_reach2d_recipe

    cfg = _tiny_reach2d_recipe(tmp_path)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, steps=8, log_every=1), eval=dataclasses.replace(
        cfg.eval, episodes_per_task=1))
    losses, weights = [], []
    for i in range(2):
        d = tmp_path / f"run{i}"
        run(dataclasses.replace(cfg, seed=3, run_dir=str(d)), progress=False)
        losses.append([json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()
                       if '"loss"' in line])
        weights.append(load_file(str(next(d.glob("policy/*.safetensors")))))
    assert len(losses[0]) == 8 and losses[0] == losses[1]
    assert weights[0].keys() == weights[1].keys() and all(torch_equal(weights[0][k], weights[1][k]) for k in weights[0])


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


# ------------------------------------------------------------------------------------------ end to end
def test_finished_only_runs_nothing_and_publishes_what_has_finished(tmp_path):
    """A grid stopped part-way: --finished-only executes no run, publishes the finished finals and the
    tuning, and a head whose tuning did not finish gets no choice; the exit code says the grid is unfinished."""
    from recipes.compare.cli import main

    common = ["--suite", "reach2d", "--out", str(tmp_path / "out"), "--steps", "20", "--checkpoints", "2",
              "--tune-steps", "4", "--tune-lr", "1e-4", "1e-3", "--tune-ema", "0.9", "--protocols", "frozen", "--jobs", "2"]
    fake = FakeTrainer()
    assert main(common + ["--heads", "ebt", "regression", "--seeds", "0"], execute=fake) == 0
    fake.calls.clear()
    pub = tmp_path / "pub"
    argv = common + ["--heads", "ebt", "regression", "diffusion", "--seeds", "0", "1", "--finished-only",
                     "--publish-dir", str(pub)]
    assert main(argv, execute=fake) == 1
    assert fake.calls == []
    assert sorted(p.relative_to(pub).as_posix() for p in pub.rglob("*.json")) == [
        "reach2d/frozen/ebt/seed0.json", "reach2d/frozen/regression/seed0.json", "reach2d/frozen/tuning.json"]
    heads = json.loads((pub / "reach2d/frozen/tuning.json").read_text())["heads"]
    assert heads["ebt"]["chosen"]["tuned"] and heads["diffusion"]["chosen"] is None
    assert {c["status"] for c in heads["diffusion"]["candidates"]} == {"not run"}
    assert not any((tmp_path / "out/reach2d/frozen/tune/diffusion").rglob("error.json"))


@pytest.mark.slow
def test_compare_command_end_to_end_on_reach2d(tmp_path):
    """The real command: reach2d, ebt + regression, 1 seed, a 1-candidate tuning of 2 steps, 4 steps
    with 2 checkpoints, 2 episodes per task at the last (1 before), frozen backbone; then publish and regenerate the results."""
    from recipes import results
    from recipes.compare.cli import main

    out = tmp_path / "out"
    argv = ["--suite", "reach2d", "--heads", "ebt", "regression", "--seeds", "0", "--out", str(out), "--steps", "4",
            "--checkpoints", "2", "--episodes", "2", "--curve-episodes", "1", "--tune-steps", "2", "--tune-lr", "1e-3", "--tune-ema", "0.9",
            "--protocols", "frozen", "--demos-per-task", "3", "--jobs", "2", "--demo-cache", str(tmp_path / "cache"),
            "--publish-dir", str(tmp_path / "published")]
    assert main(argv) == 0
    art = json.loads((out / "reach2d/frozen/final/ebt/lr0.001_ema0.9/seed0/result.json").read_text())
    validate_artifact(art)
    assert [c["step"] for c in art["curve"]] == [2, 4] and art["protocol"] == "frozen"
    assert all(c["train_seconds"] > 0 for c in art["curve"]) and art["cpu_seconds"] > 0
    assert art["machine"]["nproc"] >= 1 and art["machine"]["torch_cpu_capability"]  # where it ran, for re-runs
    assert [r["label"] for r in art["rows"]] == [v.label for v in head_variants("ebt")]
    assert art["cost"]["forward_equiv"] == pytest.approx(art["cost"]["nfe"] * art["cost"]["eval_cost"])
    assert art["cost"]["head_ms"] > 0 and art["cost"]["policy_ms"] >= art["cost"]["head_ms"]
    # 2 episodes per task at the last checkpoint, 1 at the earlier one (--curve-episodes)
    assert [sum(len(v) for v in c["outcomes"].values()) for c in art["rows"][0]["curve"]] == [3, 6]
    assert art["curve_episodes_per_task"] == 1 and art["episodes_per_task"] == 2
    assert list((out / "reach2d/frozen/final/ebt/lr0.001_ema0.9/seed0/checkpoints").glob("*/trainer_rank*.pt")) == []
    assert (out / "reach2d/frozen/tuning.json").exists()
    pub = tmp_path / "published"
    assert sorted(p.relative_to(pub).as_posix() for p in pub.rglob("*.json")) == [
        "reach2d/frozen/ebt/seed0.json", "reach2d/frozen/regression/seed0.json", "reach2d/frozen/tuning.json"]
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{results.BEGIN}\n{results.END}\n")
    assert results.main(["--dir", str(pub), "--readme", str(readme)]) == 0
    assert results.main(["--dir", str(pub), "--readme", str(readme), "--check"]) == 0
    assert (pub / "reach2d/frozen/curves.png").exists() and "ebt-2" in readme.read_text()


def test_curve_episodes_shorten_earlier_checkpoints_and_the_auc_uses_the_common_episodes():
    """--curve-episodes: earlier checkpoints run the first N episodes of each eval seed's list; the final
    success uses all episodes of the last checkpoint, the AUC the first N at every checkpoint."""
    from recipes.compare.plan import RunSpec
    from recipes.compare.report import build_cells
    from recipes.compare.stats import auc

    spec = RunSpec("reach2d", "frozen", "ebt", "final", 1e-3, 0.99, 0, 30, 3, (10000, 10001), 10, ("a",), (), "o",
                   curve_episodes=4)
    assert [spec.episodes_at(s) for s in (10, 20, 30)] == [4, 4, 10]
    assert RunSpec.from_dict(spec.to_dict()).curve_episodes == 4
    assert dataclasses.replace(spec, curve_episodes=0).episodes_at(10) == 10

    art = fake_artifact("ebt", 0, {"ebt-2": 0.5}, steps=(10, 20, 30), episodes=10)
    art["eval_seeds"] = [10000, 10001]
    row = art["rows"][0]
    for k, c in enumerate(row["curve"]):  # eval-seed-major: 5 episodes per seed at the last checkpoint
        for t in c["outcomes"]:
            c["outcomes"][t] = [1, 1, 0, 0, 0] * 2 if k == 2 else [k % 2, 0] * 2  # 2 per seed before
    (cells,) = build_cells([art]).values()
    (cell,) = cells
    assert cell.episodes == 20 and cell.curve_episodes == 8
    assert cell.final.value == pytest.approx(0.4)
    # the AUC sees the first 2 episodes of each seed at every checkpoint: 0.0, 0.5, 1.0
    assert cell.auc.value == pytest.approx(auc([10, 20, 30], [0.0, 0.5, 1.0]))
    assert cell.curve == pytest.approx([0.0, 0.5, 0.4])


def test_head_variant_is_its_own_cell_trained_with_the_changed_config(tmp_path):
    """--variants NAME:HEAD:fields: a cell tuned and trained like every head, its config changed, its rows
    labelled by NAME; its artifact names the registered head and the changes; bad specs are refused."""
    from recipes.compare.cli import main

    fake = FakeTrainer()
    argv = ["--suite", "reach2d", "--heads", "ebt", "--variants", "ebt_eqm:ebt:objective=eqm,infer_steps=4",
            "--seeds", "0", "--out", str(tmp_path), "--steps", "20", "--checkpoints", "2", "--tune-steps", "4",
            "--tune-lr", "1e-3", "--tune-ema", "0.9", "--protocols", "frozen", "--jobs", "1"]
    assert main(argv, execute=fake) == 0
    spec = RunSpec.from_dict(json.loads((tmp_path / "reach2d/frozen/final/ebt_eqm/lr0.001_ema0.9/seed0/spec.json")
                                        .read_text()))
    assert spec.head == "ebt_eqm" and spec.model_head == "ebt"
    assert dict(spec.head_overrides) == {"objective": "eqm", "infer_steps": 4}
    ebt_cfg = spec.config["policy"]["ebt"]
    assert spec.config["policy"]["head"] == "ebt" and (ebt_cfg["objective"], ebt_cfg["infer_steps"]) == ("eqm", 4)
    plain = json.loads((tmp_path / "reach2d/frozen/final/ebt/lr0.001_ema0.9/seed0/spec.json").read_text())
    assert plain["config"]["policy"]["ebt"]["objective"] == "reference" and plain["base_head"] == ""
    assert [v.label for v in spec.variants] == ["ebt_eqm", "ebt_eqm ebt-4", "ebt_eqm +warm", "ebt_eqm ebt-4 +warm"]
    tuning = json.loads((tmp_path / "reach2d/frozen/tuning.json").read_text())
    assert set(tuning["heads"]) == {"ebt", "ebt_eqm"}
    for bad, msg in ((["ebt:ebt:objective=eqm"], "repeat a head"), (["x:nohead"], "NAME:HEAD"),
                     (["x:ebt:objectiv=eqm"], "unknown ebt config field")):
        with pytest.raises(SystemExit, match=msg):
            main([*argv[:4], "--variants", *bad, *argv[6:]], execute=fake)


def test_variant_may_turn_on_ema_warmup_and_nothing_else_of_training(tmp_path):
    """--variants NAME:HEAD:optim.ema_warmup=true: the cell trains with the EMA warm-up (the plain head's
    cell without it); other optim fields and a value of the wrong type are refused with the field named."""
    from recipes.compare.cli import main

    fake = FakeTrainer()
    argv = ["--suite", "reach2d", "--heads", "diffusion", "--variants", "ddim_ewu:diffusion:optim.ema_warmup=true",
            "--seeds", "0", "--out", str(tmp_path), "--steps", "20", "--checkpoints", "2", "--tune-steps", "4",
            "--tune-lr", "1e-3", "--tune-ema", "0.9", "--protocols", "frozen", "--jobs", "1", "--no-warm-rows"]
    assert main(argv, execute=fake) == 0
    cells = tmp_path / "reach2d/frozen"
    for stage in ("tune", "final"):
        warm = json.loads(next((cells / stage / "ddim_ewu").rglob("spec.json")).read_text())
        plain = json.loads(next((cells / stage / "diffusion").rglob("spec.json")).read_text())
        assert warm["config"]["optim"]["ema_warmup"] is True and plain["config"]["optim"]["ema_warmup"] is False
        assert warm["config"]["policy"] == plain["config"]["policy"]
        assert {k: v for k, v in warm["config"]["optim"].items() if k != "ema_warmup"} == \
            {k: v for k, v in plain["config"]["optim"].items() if k != "ema_warmup"}
    for bad, msg in (("x:diffusion:optim.lr=0.1", r"variant field 'optim.lr': .*only \['optim.ema_warmup'\]"),
                     ("x:diffusion:optim.ema_warmup=1", "variant field 'optim.ema_warmup': expected a bool, got 1")):
        with pytest.raises(SystemExit, match=msg):
            main([*argv[:4], "--variants", bad, *argv[6:]], execute=fake)


def test_heads_flag_alone_runs_only_the_variant_cells(tmp_path):
    """``--heads`` with no name: the --variants cells alone (their head's recipe is the base); with no
    variant either, an error says there is nothing to compare."""
    from recipes.compare.cli import main

    fake = FakeTrainer()
    argv = ["--suite", "reach2d", "--heads", "--variants", "ebt_eqm:ebt:objective=eqm", "--seeds", "0",
            "--out", str(tmp_path), "--steps", "20", "--checkpoints", "2", "--tune-steps", "4", "--tune-lr", "1e-3",
            "--tune-ema", "0.9", "--protocols", "frozen", "--jobs", "1", "--no-warm-rows"]
    assert main(argv, execute=fake) == 0
    assert {c.split("/")[3] for c in fake.calls} == {"ebt_eqm"}, fake.calls  # suite/protocol/stage/head/...
    assert set(json.loads((tmp_path / "reach2d/frozen/tuning.json").read_text())["heads"]) == {"ebt_eqm"}
    spec = json.loads((tmp_path / "reach2d/frozen/final/ebt_eqm/lr0.001_ema0.9/seed0/spec.json").read_text())
    assert spec["config"]["policy"]["head"] == "ebt" and spec["config"]["data"]["suite"] == "reach2d"
    with pytest.raises(SystemExit, match="nothing to compare"):
        main(["--suite", "reach2d", "--heads", "--out", str(tmp_path / "none")], execute=fake)


def test_results_show_a_tuning_without_final_runs_as_no_comparison(tmp_path):
    """A published tuning.json without final artifacts gets its tuning table and one README line saying
    there is no comparison yet (never a table of heads)."""
    from recipes import results

    d = tmp_path / "res" / "metaworld" / "frozen"
    d.mkdir(parents=True)
    (d / "tuning.json").write_text(json.dumps({
        "tune_steps": 7, "tune_seed": 0, "tune_eval_seeds": [20000], "tune_episodes": 3, "rule": "best",
        "heads": {"ebt": {"candidates": [{"lr": 1e-3, "ema_decay": 0.99, "success": 0.5}],
                          "chosen": {"lr": 1e-3, "ema_decay": 0.99, "tuned": True}}}}))
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{results.BEGIN}\n{results.END}\n")
    assert results.main(["--dir", str(tmp_path / "res"), "--readme", str(readme), "--no-plots"]) == 0
    text = readme.read_text()
    assert "metaworld, frozen backbone**: tuning finished" in text and "no comparison" in text and "| ebt" not in text
    md = (d / "results.md").read_text()
    assert "No final run has finished yet" in md and "| ebt | 0.001, 0.99: 0.50 | 0.001, 0.99 |" in md
    assert results.main(["--dir", str(tmp_path / "res"), "--readme", str(readme), "--check"]) == 0


def test_results_name_the_tuned_heads_whose_final_runs_are_missing(tmp_path):
    from recipes import results
    from vla_ebt.config_io import atomic_write_json

    res = tmp_path / "res"
    for seed in (0, 1):
        a = fake_artifact("ebt", seed, {"ebt-2": 0.9})
        atomic_write_json(res / a["suite"] / a["protocol"] / "ebt" / f"seed{seed}.json", a)
    cand = [{"lr": 1e-3, "ema_decay": 0.99, "success": 0.5}]
    chosen = {"lr": 1e-3, "ema_decay": 0.99, "tuned": True}
    atomic_write_json(res / "reach2d" / "frozen" / "tuning.json", {
        "tune_steps": 7, "tune_seed": 0, "tune_eval_seeds": [20000], "tune_episodes": 3, "rule": "best",
        "heads": {h: {"candidates": cand, "chosen": chosen} for h in ("ebt", "diffusion", "regression")}})
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{results.BEGIN}\n{results.END}\n")
    assert results.main(["--dir", str(res), "--readme", str(readme), "--no-plots"]) == 0
    text = readme.read_text()
    assert "no final run has finished yet for diffusion, regression" in text and "| ebt-2 |" in text
    assert "no final run has finished yet for diffusion, regression" in (res / "reach2d/frozen/results.md").read_text()
    assert results.main(["--dir", str(res), "--readme", str(readme), "--check"]) == 0


def test_evaluation_records_the_suites_episode_modes_in_outcome_order():
    """A suite declaring ``episode_attrs`` (reach2d_detour: mode, lateral, collided) gets them recorded per
    episode beside the outcomes, in the same order; a suite without them gets no ``episode_info``."""
    from eval.sim.suites import make_suite
    from eval.sim.suites.reach2d_detour import MODES
    from recipes.compare.evaluation import evaluate_variant
    from tests.policy_fixtures import make_policy

    policy = make_policy("regression")
    detour = make_suite("reach2d_detour", max_episode_steps=12)
    assert detour.episode_attrs == ("mode", "lateral", "collided")
    res = evaluate_variant(policy, detour, ["reach_red", "reach_blue"], [3, 4], 2, Variant("regression", "regression"))
    for t in ("reach_red", "reach_blue"):
        info = res["episode_info"][t]
        assert set(info) == {"mode", "lateral", "collided"}
        assert len(info["mode"]) == len(res["outcomes"][t]) == 4 and set(info["mode"]) <= set(MODES)
        for ok, mode, hit in zip(res["outcomes"][t], info["mode"], info["collided"]):
            assert (mode == "collision") == bool(hit)  # the env's own bookkeeping, per episode
            assert not (ok and hit)  # a collision is never a success
    plain = evaluate_variant(policy, make_suite("reach2d", max_episode_steps=4), ["reach_red"], [3], 1,
                             Variant("regression", "regression"))
    assert "episode_info" not in plain


def test_report_pools_mode_shares_over_seeds_when_every_seed_recorded_them():
    from recipes.compare.report import build_cells, mode_table

    arts = [fake_artifact("ebt", s, {"ebt-2": 0.5}) for s in (0, 1)]
    plain = build_cells(arts)[("reach2d", "frozen")][0]
    assert plain.modes is None and mode_table([plain]) == []
    seq = {0: ["left"] * 6 + ["right"] * 2 + ["collision"] * 2, 1: ["left"] * 2 + ["right"] * 4 + ["none"] * 4}
    for a in arts:
        for c in a["rows"][0]["curve"]:
            c["episode_info"] = {t: {"mode": list(seq[a["train_seed"]])} for t in a["tasks"]}
    cell = build_cells(arts)[("reach2d", "frozen")][0]
    assert set(cell.modes) == {"left", "right", "collision", "none"}
    assert cell.modes["left"].value == pytest.approx(0.4)  # mean over seeds of 0.6 and 0.2
    assert cell.modes["none"].value == pytest.approx(0.2)
    assert sum(e.value for e in cell.modes.values()) == pytest.approx(1.0)
    assert cell.modes["left"].lo <= 0.4 <= cell.modes["left"].hi
    md = mode_table([cell])
    assert md[2] == "| head / row | collision | left | none | right |" and md[4].startswith("| ebt-2 | 0.10")
    arts[1]["rows"][0]["curve"][-1].pop("episode_info")  # one seed without: no pooled shares
    assert build_cells(arts)[("reach2d", "frozen")][0].modes is None


def test_cpu_hours_line_adds_tuning_only_where_every_candidate_was_timed(tmp_path):
    from recipes.compare.report import build_cells
    from recipes.results import cpu_hours_line

    cells = build_cells([fake_artifact("ebt", s, {"ebt-2": 0.5}, warm={"ebt-2": 0.5}) for s in (0, 1)]
                        + [fake_artifact("regression", 0, {"regression": 0.3})])[("reach2d", "frozen")]
    tuning = tmp_path / "tuning.json"
    assert cpu_hours_line(cells, tuning) == ("CPU-hours (single-thread runs, training + evaluation): ebt 0.02 "
                                             "(final runs); regression 0.01 (final runs); total 0.04.")
    tuning.write_text(json.dumps({"heads": {"ebt": {"candidates": [{"cpu_seconds": 3600.0}, {"cpu_seconds": 1800.0}]},
                                            "regression": {"candidates": [{"cpu_seconds": 36.0}, {}]}}}))
    line = cpu_hours_line(cells, tuning)  # 2 ebt runs x 42 s (the +warm row shares them), 1 regression run
    assert "ebt 1.52 (0.02 final runs + 1.50 tuning)" in line and "regression 0.01 (final runs)" in line
    assert "total 1.54" in line and "the tuning runs of regression were not timed" in line  # 1.5 + 84 s + 42 s
    tuning.write_text(json.dumps({"heads": {"ebt": {"candidates": [{"cpu_seconds": 3600.0}], "reused_from": "t.json"}}}))
    assert "ebt 1.02 (0.02 final runs + 1.00 tuning, reused from an earlier grid)" in cpu_hours_line(cells, tuning)


def test_tuning_table_names_the_tuning_preset_and_a_reused_source(tmp_path):
    from recipes.results import _tuning_lines

    t = {"tune_steps": 4, "tune_seed": 0, "tune_eval_seeds": [20000], "tune_episodes": 2, "rule": "r",
         "heads": {"diffusion": {"candidates": [{"lr": 1e-3, "ema_decay": 0.9, "success": 0.5}], "tune_preset": "ddim-10",
                                 "chosen": {"lr": 1e-3, "ema_decay": 0.9, "tuned": True}},
                   "ebt": {"candidates": [{"lr": 1e-3, "ema_decay": 0.9, "success": 0.7}], "reused_from": "a/tuning.json",
                           "reused_at_commit": "0123456789", "chosen": {"lr": 1e-3, "ema_decay": 0.9, "tuned": True}}}}
    path = tmp_path / "tuning.json"
    path.write_text(json.dumps(t))
    lines = "\n".join(_tuning_lines(path))
    assert "| diffusion | 0.001, 0.9: 0.50 | 0.001, 0.9 (tuned by ddim-10) |" in lines
    assert "| ebt | 0.001, 0.9: 0.70 | 0.001, 0.9 (reused from `a/tuning.json` at 0123456) |" in lines


def test_larger_set_line_scales_evaluation_by_tasks_and_keeps_training():
    from recipes.compare.report import build_cells
    from recipes.results import larger_set_line

    def art(head, seed, suite):
        a = fake_artifact(head, seed, {head: 0.5}, suite=suite)
        a.update(cpu_seconds=3600.0, eval_cpu_seconds=1800.0)
        return a

    cells = build_cells([art("ebt", s, "metaworld") for s in (0, 1)] + [art("flow", 0, "metaworld")])
    line = larger_set_line(cells[("metaworld", "frozen")])
    # 3 runs: training 3 x 0.5 h = 1.5, evaluation 1.5 h on the fixture's 2 tasks -> x 10/2 = 7.5 on MT10
    assert "all 10 tasks" in line and "(this grid: 2)" in line
    assert "training 1.50" in line and "evaluation 1.50 x 10/2 = 7.50" in line and "about 9.0 CPU-hours" in line
    # the grid already covers the suite's tasks (reach2d: 3), or an artifact did not split its CPU: no line
    full = art("ebt", 0, "reach2d")
    full["tasks"] = ["reach_red", "reach_green", "reach_blue"]
    for row in full["rows"]:
        for c in row["curve"]:
            c["outcomes"]["reach_green"] = list(c["outcomes"]["reach_red"])
    assert larger_set_line(build_cells([full])[("reach2d", "frozen")]) is None
    plain = build_cells([fake_artifact("ebt", 0, {"ebt": 0.5}, suite="metaworld")])[("metaworld", "frozen")]
    assert larger_set_line(plain) is None


def test_final_presets_restrict_a_heads_final_rows_but_not_its_tuning(tmp_path):
    """--final-presets diffusion=ddim-10: the final runs evaluate DDIM-10 (and its warm row) only; the
    tuning runs keep the head's first preset (DDPM-100); bad specs name the flag, head and presets."""
    from recipes.compare.cli import main

    fake = FakeTrainer()
    argv = ["--suite", "reach2d", "--heads", "diffusion", "--seeds", "0", "--out", str(tmp_path), "--steps", "20",
            "--checkpoints", "2", "--tune-steps", "4", "--tune-lr", "1e-3", "--tune-ema", "0.9", "--protocols",
            "frozen", "--jobs", "1"]
    assert main([*argv, "--final-presets", "diffusion=ddim-10"], execute=fake) == 0
    final = RunSpec.from_dict(json.loads((tmp_path / "reach2d/frozen/final/diffusion/lr0.001_ema0.9/seed0/spec.json")
                                         .read_text()))
    tune = RunSpec.from_dict(json.loads((tmp_path / "reach2d/frozen/tune/diffusion/lr0.001_ema0.9/seed0/spec.json")
                                        .read_text()))
    assert [v.label for v in final.variants] == ["ddim-10", "ddim-10 +warm"]
    assert [v.label for v in tune.variants] == ["ddpm-100"]
    for bad, msg in (("diffusion=ddim-5", r"has no preset\(s\) \['ddim-5'\]; its presets: \['ddpm-100', 'ddim-10'\]"),
                     ("flow=flow-10", "'flow' is not a head of this run"), ("diffusion", "expected HEAD=PRESET")):
        with pytest.raises(SystemExit, match=msg):
            main([*argv, "--final-presets", bad], execute=fake)


def test_tuning_from_a_stored_tuning_skips_its_cells_tuning_and_records_the_source(tmp_path):
    """--tuning-from FILE: the cells FILE covers run no tuning and train their finals with its choice; the
    new tuning.json keeps the stored entry and names FILE; a cell it does not cover is tuned; a stored
    tuning made under another budget or grid, or a file without a complete choice, is refused by name."""
    from recipes.compare.cli import main

    argv = ["--suite", "reach2d", "--seeds", "0", "--steps", "20", "--checkpoints", "2", "--tune-steps", "4",
            "--tune-lr", "1e-3", "3e-4", "--tune-ema", "0.9", "--protocols", "frozen", "--jobs", "1"]
    first = FakeTrainer()
    assert main([*argv, "--heads", "ebt", "regression", "--out", str(tmp_path / "a")], execute=first) == 0
    stored_path = tmp_path / "a/reach2d/frozen/tuning.json"
    stored = json.loads(stored_path.read_text())
    stored["heads"]["ebt"]["chosen"] = {**stored["heads"]["ebt"]["chosen"], "lr": 0.0003}  # not the fake's pick
    stored_path.write_text(json.dumps(stored))

    fake = FakeTrainer()
    out = tmp_path / "b"
    assert main([*argv, "--heads", "ebt", "flow", "--out", str(out), "--tuning-from", str(stored_path)],
                execute=fake) == 0
    tuned_heads = {k.split("/")[3] for k in fake.calls if "/tune/" in k}
    assert tuned_heads == {"flow"}  # ebt reused, flow not in the file
    assert (out / "reach2d/frozen/final/ebt/lr0.0003_ema0.9/seed0/spec.json").exists()
    tuning = json.loads((out / "reach2d/frozen/tuning.json").read_text())
    assert tuning["heads"]["ebt"]["reused_from"] == str(stored_path)
    assert tuning["heads"]["ebt"]["reused_at_commit"]
    assert tuning["heads"]["ebt"]["candidates"] == stored["heads"]["ebt"]["candidates"]
    assert "reused_from" not in tuning["heads"]["flow"]

    for extra, msg in ((["--tune-steps", "5"], r"field 'tune_steps' is 4, this run has 5"),
                       (["--tune-lr", "1e-3"], r"field 'grid'")):
        with pytest.raises(SystemExit, match=msg):
            main([*argv, "--heads", "ebt", "--out", str(out), "--tuning-from", str(stored_path), *extra], execute=fake)
    stored["heads"]["ebt"]["complete"] = False
    stored_path.write_text(json.dumps(stored))
    with pytest.raises(SystemExit, match=r"heads.ebt has no complete choice"):
        main([*argv, "--heads", "ebt", "--out", str(out), "--tuning-from", str(stored_path)], execute=fake)
    fake.calls.clear()  # an unfinished head the run does not train does not block the others' reuse
    assert main([*argv, "--heads", "regression", "--out", str(out), "--tuning-from", str(stored_path)], execute=fake) == 0
    assert not any("/tune/" in k for k in fake.calls)
    with pytest.raises(SystemExit, match=r"cannot read a tuning.json"):
        main([*argv, "--heads", "ebt", "--out", str(out), "--tuning-from", str(tmp_path / "none.json")], execute=fake)


def test_fixed_hparams_skip_a_cells_tuning_and_are_reported_untuned(tmp_path):
    """--fixed-hparams NAME=LR,EMA: that cell runs no tuning and trains its finals at LR / EMA (the spec's
    config and the artifact's hparams say so, tuned false); the other cells are tuned as before; the
    tuning table and the results table say 'not tuned' / '(untuned)'; bad items are refused by name."""
    from recipes.compare.cli import main
    from recipes.compare.report import build_cells, table
    from recipes.results import _tuning_lines

    argv = ["--suite", "reach2d", "--seeds", "0", "--steps", "20", "--checkpoints", "2", "--tune-steps", "4",
            "--tune-lr", "1e-3", "3e-4", "--tune-ema", "0.9", "--protocols", "frozen", "--jobs", "1",
            "--heads", "regression", "--variants", "ddim_nowu:diffusion:optim.ema_warmup=false", "--out", str(tmp_path)]
    fake = FakeTrainer()
    assert main([*argv, "--fixed-hparams", "ddim_nowu=3e-3,0.99", "--tune-presets", "ddim_nowu=ddim-10"],
                execute=fake) == 0
    assert {k.split("/")[3] for k in fake.calls if "/tune/" in k} == {"regression"}
    spec = json.loads((tmp_path / "reach2d/frozen/final/ddim_nowu/lr0.003_ema0.99/seed0/spec.json").read_text())
    assert spec["config"]["optim"]["lr"] == pytest.approx(3e-3) and spec["config"]["optim"]["ema_decay"] == 0.99
    assert spec["meta"]["hparams"] == {"tuned": False}
    assert spec["config"]["optim"]["ema_warmup"] is False
    tuning = json.loads((tmp_path / "reach2d/frozen/tuning.json").read_text())
    assert tuning["heads"]["ddim_nowu"]["candidates"] == [] and tuning["heads"]["regression"]["chosen"]["tuned"]
    assert tuning["heads"]["ddim_nowu"]["chosen"] == {"lr": 3e-3, "ema_decay": 0.99, "tuned": False, "fixed": True}
    lines = "\n".join(_tuning_lines(tmp_path / "reach2d/frozen/tuning.json"))
    assert "| ddim_nowu | - | 0.003, 0.99 (fixed by --fixed-hparams, not tuned) |" in lines  # no "tuned by"

    arts = [fake_artifact("regression", s, {"regression": 0.6}) for s in (0, 1)]
    untuned = [fake_artifact("ddim_nowu", s, {"ddim_nowu": 0.6}) for s in (0, 1)]
    for a in untuned:
        a["hparams"] = {"lr": 3e-3, "ema_decay": 0.99, "tuned": False}
    (cells,) = build_cells(arts + untuned).values()
    rows = {line.split(" | ")[0]: line for line in table(cells).splitlines()[2:]}
    assert rows["| ddim_nowu"].endswith("| 0.003, 0.99 (untuned) |") and rows["| regression"].endswith("| 0.001, 0.99 |")

    for item, msg in (("nope=1e-3,0.99", r"'nope' is not a cell of this run"),
                      ("ddim_nowu=1e-3", r"expected HEAD=LR,EMA"), ("ddim_nowu=1e-3,1.5", r"expected HEAD=LR,EMA"),
                      ("ddim_nowu=x,0.9", r"expected HEAD=LR,EMA"), ("ddim_nowu=inf,0.9", r"expected HEAD=LR,EMA")):
        with pytest.raises(SystemExit, match=msg):
            main([*argv, "--fixed-hparams", item], execute=fake)
    with pytest.raises(SystemExit, match=r"given twice"):
        main([*argv, "--fixed-hparams", "ddim_nowu=1e-3,0.9", "ddim_nowu=3e-3,0.9"], execute=fake)


def test_tune_presets_choose_by_the_scored_preset_in_their_own_folders(tmp_path):
    """--tune-presets diffusion=ddim-10: tuning rows evaluate DDIM-10, in folders named after it (never a
    DDPM-100 tuning's), tuning.json records the preset; a stored tuning under the first preset is tuned
    again rather than reused; one preset per head."""
    from recipes.compare.cli import main

    fake = FakeTrainer()
    argv = ["--suite", "reach2d", "--heads", "diffusion", "--seeds", "0", "--steps", "20", "--checkpoints", "2",
            "--tune-steps", "4", "--tune-lr", "1e-3", "--tune-ema", "0.9", "--protocols", "frozen", "--jobs", "1"]
    assert main([*argv, "--out", str(tmp_path / "a")], execute=fake) == 0  # tuned by DDPM-100 (its first)
    out = tmp_path / "b"
    stored = tmp_path / "a/reach2d/frozen/tuning.json"
    assert main([*argv, "--out", str(out), "--tune-presets", "diffusion=ddim-10", "--final-presets",
                 "diffusion=ddim-10", "--tuning-from", str(stored)], execute=fake) == 0
    tune_dir = out / "reach2d/frozen/tune/diffusion/lr0.001_ema0.9_ddim-10/seed0"
    spec = RunSpec.from_dict(json.loads((tune_dir / "spec.json").read_text()))
    assert [v.label for v in spec.variants] == ["ddim-10"] and spec.tune_preset == "ddim-10"
    tuning = json.loads((out / "reach2d/frozen/tuning.json").read_text())
    assert tuning["heads"]["diffusion"]["tune_preset"] == "ddim-10"
    assert "reused_from" not in tuning["heads"]["diffusion"]
    with pytest.raises(SystemExit, match="--tune-presets diffusion=ddim-10,ddpm-100: one preset per head"):
        main([*argv, "--out", str(out), "--tune-presets", "diffusion=ddim-10,ddpm-100"], execute=fake)
    with pytest.raises(SystemExit, match=r"--tune-presets 'diffusion=ddim-5': head 'diffusion' has no preset"):
        main([*argv, "--out", str(out), "--tune-presets", "diffusion=ddim-5"], execute=fake)
