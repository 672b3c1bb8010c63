"""benchmarks/main_job_timing.py: two runs of the (here shrunk) main job, empty then warm cache,
recorded with commit, machine, load, the timing breakdown and the success table."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_main_job_timing_records_empty_then_warm_cache(tmp_path) -> None:
    from benchmarks import main_job_timing

    out = tmp_path / "timing.json"
    tiny = ["--data.episodes-per-task", "1", "--data.suite-args", "max_episode_steps=20", "--optim.steps", "1",
            "--optim.warmup-steps", "1", "--optim.batch-size", "4", "--policy.finetune.mode", "frozen",
            "--eval.episodes-per-task", "1"]
    main_job_timing.main(["--out", str(out), "--work", str(tmp_path / "work"), "--label", "test", "--", *tiny])
    saved = json.loads(out.read_text())
    assert saved["label"] == "test" and saved["extra_args"] == tiny
    assert len(saved["git"]["commit"]) == 40 and saved["machine"]["nproc"] >= 1 and saved["machine"]["cpu_model"]
    first, second = saved["runs"]
    assert (first["cache_before"], second["cache_before"]) == ("empty", "warm (demos present)")
    assert first["baselines_cached"] == {"random": False, "expert": False}
    assert second["baselines_cached"] == {"random": True, "expert": True}
    for r in (first, second):
        assert r["wall_s"] >= r["timing_s"]["total"] > 0 and r["peak_rss_mb"] > 100
        assert {"demos", "training", "evaluation", "baselines"} <= set(r["timing_s"])
        assert set(r["success"]) == {"ebt (trained)", "random", "expert"} and r["table"][0].startswith("| task |")
        assert r["load_avg_1min"]["samples"] >= 1
    assert "(cached)" in second["table"][0] and "(cached)" not in first["table"][0]
    assert second["timing_s"]["demos"] < first["timing_s"]["demos"]
