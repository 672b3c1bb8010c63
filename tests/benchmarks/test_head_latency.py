"""benchmarks/head_latency.py: every head's row (flow-10 included), the existing keys, and the
backward / forward cost ratio measured in the same run (tiny trunk, one repeat)."""

from __future__ import annotations

import json

import pytest


def test_head_latency_reports_flow_and_backward_over_forward(tmp_path):
    from benchmarks import head_latency

    out = tmp_path / "hl.json"
    r = head_latency.main(["--width", "16", "--depth", "1", "--heads", "2", "--horizon", "4", "--action-dim", "3",
                           "--context-tokens", "4", "--repeats", "1", "--warmup", "0", "--out", str(out)])
    assert json.loads(out.read_text())["nfe"] == r["nfe"]
    assert r["nfe"] == {"ebt_1": 1, "ebt_2": 2, "ebt_4": 4, "ebt_8": 8, "ddpm_100": 100, "ddim_10": 10,
                        "flow_10": 10, "regression": 1}
    for name in [*r["nfe"], "trunk_fwd", "trunk_fwd_bwd"]:
        assert r[f"{name}_ms"] > 0 and r[f"{name}_cpu_ms"] >= 0
    assert r["ebt2_over_ddpm100"] == pytest.approx(r["ebt_2_ms"] / r["ddpm_100_ms"])
    assert r["ebt2_over_ddim10"] == pytest.approx(r["ebt_2_ms"] / r["ddim_10_ms"])
    assert r["flow10_over_ddim10"] == pytest.approx(r["flow_10_ms"] / r["ddim_10_ms"])
    assert r["backward_over_forward"] == pytest.approx((r["trunk_fwd_bwd_ms"] - r["trunk_fwd_ms"]) / r["trunk_fwd_ms"])
    assert r["ebt_step_forward_equiv"] == pytest.approx(1 + r["backward_over_forward"])
    assert r["ebt_declared_eval_cost"] == 2.0
    assert r["backward_over_forward_cpu"] == pytest.approx(
        (r["trunk_fwd_bwd_cpu_ms"] - r["trunk_fwd_cpu_ms"]) / r["trunk_fwd_cpu_ms"])
