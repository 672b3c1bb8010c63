"""Offline replay evaluation: the report agrees with a direct step-by-step computation."""

import json

import numpy as np
import pytest
import torch

from data_pipelines.shards import write_episodes
from eval.real.replay import main as replay_main
from eval.real.replay import replay, spearman
from vla_ebt.data.episodes import Episode
from tests.policy_fixtures import D, H, S, make_policy

LENGTHS = (6, 9, 4)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Synthetic 'arm_a' episodes (4-D actions, 6-D states, random 64 px frames) as PNG shards."""
    rng = np.random.default_rng(0)
    eps = [
        Episode(
            images=rng.integers(0, 256, (T, 1, 3, 64, 64), dtype=np.uint8),
            state=rng.normal(size=(T, S)).astype(np.float32),
            action=rng.uniform(-2, 2, (T, D)).astype(np.float32),
            instruction=["pick up the red block", "open the drawer", "push the button"][i],
            task="synthetic",
            success=True,
            seed=i,
        )
        for i, T in enumerate(LENGTHS)
    ]
    d = tmp_path_factory.mktemp("shards")
    write_episodes(eps, d, "arm_a", episodes_per_shard=2)
    return d, eps


def direct(policy, eps, threshold):
    """Step-by-step (B = 1) reference computation of the replay metrics."""
    acts = np.concatenate([e.action for e in eps])
    q01, q99 = np.quantile(acts, [0.01, 0.99], axis=0)
    scale = np.maximum((q99 - q01) / 2, 1e-6)
    errs, chunk_nmae, chunk_energy = [], [], []
    for e in eps:
        T = len(e)
        for t in range(T):
            out = policy.predict_chunk({
                "images": torch.from_numpy(e.images[t][None]),
                "instruction": [e.instruction],
                "state": torch.from_numpy(e.state[t][None, None]),
                "embodiment": torch.tensor([0]),
            })
            pred = out.actions[0].numpy()
            for h in range(H):
                if t + h < T:
                    errs.append((h, np.abs(pred[h] - e.action[t + h])))
            valid = np.array([np.abs(pred[h] - e.action[t + h]) / scale for h in range(H) if t + h < T])
            chunk_nmae.append(valid.mean())
            chunk_energy.append(None if out.energy is None else float(out.energy[0]))
    per_dim = np.mean([x for _, x in errs], axis=0)
    per_step = [np.mean([x.mean() for hh, x in errs if hh == h]) for h in range(H)]
    return {"per_dim_mae": per_dim, "per_step_mae": per_step, "chunk_nmae": np.array(chunk_nmae),
            "success_proxy": float((np.array(chunk_nmae) < threshold).mean()), "energy": chunk_energy, "scale": scale}


@pytest.mark.slow
def test_replay_agrees_with_direct_computation(shards):
    d, eps = shards
    policy = make_policy(head="regression").eval()
    ref = direct(policy, eps, threshold=0.5)
    r = replay(policy, d, batch_size=4, threshold=0.5)
    assert r["episodes"] == len(LENGTHS) and r["chunks_total"] == sum(LENGTHS) and r["dataset"] == "arm_a"
    np.testing.assert_allclose(r["per_dim"]["scale"], ref["scale"], rtol=1e-5)
    np.testing.assert_allclose(r["per_dim"]["mae"], ref["per_dim_mae"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r["per_step"]["mae"], ref["per_step_mae"], rtol=1e-5, atol=1e-6)
    assert r["per_step"]["count"] == [sum(max(0, T - h) for T in LENGTHS) for h in range(H)]
    np.testing.assert_allclose([c["nmae"] for c in r["chunks"]], ref["chunk_nmae"], rtol=1e-5, atol=1e-6)
    assert r["success_proxy"] == pytest.approx(ref["success_proxy"])
    assert r["energy_error_spearman"] is None  # regression head: no energy
    # stride and episode selection
    r2 = replay(policy, d, stride=2, skip_episodes=1, max_episodes=1)
    assert r2["episodes"] == 1 and r2["chunks_total"] == -(-LENGTHS[1] // 2)


def test_replay_energy_correlation_and_report_files(shards, tmp_path):
    d, eps = shards
    policy = make_policy(head="ebt").eval()
    r = replay(policy, d, batch_size=8)
    en = [c["energy"] for c in r["chunks"]]
    assert all(np.isfinite(en))
    assert r["energy_error_spearman"] == pytest.approx(spearman(en, [c["nmae"] for c in r["chunks"]]))
    stats = pytest.importorskip("scipy.stats")
    assert r["energy_error_spearman"] == pytest.approx(
        stats.spearmanr(en, [c["nmae"] for c in r["chunks"]]).statistic, abs=1e-9)

    # the CLI on a saved policy writes JSON + markdown + plot + per-chunk CSV
    make_policy(head="regression").save_pretrained(tmp_path / "p")
    out = tmp_path / "out"
    rr = replay_main(["--policy", str(tmp_path / "p"), "--shards", str(d), "--out", str(out), "--threshold", "0.5"])
    j = json.loads((out / "replay.json").read_text())
    assert j["chunks_total"] == sum(LENGTHS) and "chunks" not in j
    assert j["per_dim"]["mae"] == pytest.approx(rr["per_dim"]["mae"])
    md = (out / "replay.md").read_text()
    assert "success proxy" in md and "| action dim |" in md
    assert (out / "replay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "chunks.csv").read_text().strip().splitlines()) == sum(LENGTHS) + 1


def test_replay_refuses_unknown_dataset(shards):
    d, _ = shards
    policy = make_policy(head="regression").eval()
    with pytest.raises(ValueError, match="--embodiment"):
        replay(_Renamed(policy), d)


class _Renamed:
    """The fixture policy with different embodiment names (the shards' dataset is unknown to it)."""

    def __init__(self, p) -> None:
        import dataclasses

        self.spec = dataclasses.replace(p.spec, embodiments=("x", "y"))
        self.predict_chunk = p.predict_chunk
