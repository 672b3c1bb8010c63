"""Offline (open-loop) replay evaluation on recorded episodes.

For each held-out episode of a shard folder (:mod:`data_pipelines.shards`: ``action.npy``,
``state.npy``, ``instruction.txt``, per-camera frames), run ``policy.predict_chunk`` on the
recorded observation of every ``stride``-th step and compare the predicted chunk (H steps) with
the recorded actions ``t .. t+H-1`` (steps past the episode end are masked; only the
embodiment's own action dims are compared)::

    python -m eval.real.replay --policy runs/default/policy --shards shards/reach2d_heldout --out replay/

Writes ``OUT/replay.json`` (everything below), ``OUT/replay.md``, ``OUT/replay.png`` (Agg) and
``OUT/chunks.csv`` (one row per predicted chunk) via :mod:`eval.real.replay_report`.

Metrics (``err = |predicted - recorded|``; ``nerr = err / scale_d`` with ``scale_d`` the half
range ``(q99 - q01) / 2`` of dim d in the shard folder's ``stats.json`` (fallback: the evaluated
episodes), floored at 1e-6, so normalized errors are comparable across dims):

* ``per_dim``: MAE, RMSE and normalized MAE per action dim (over all valid chunk steps).
* ``per_step``: MAE and normalized MAE per chunk step h = 0 .. H-1.
* ``chunk_nmae`` per chunk (mean nerr over its valid steps and dims); ``success_proxy`` = fraction
  of chunks with ``chunk_nmae < threshold``; ``episode_success_proxy`` = fraction of episodes
  whose mean chunk_nmae is below it.
* ``energy_error_spearman``: Spearman rank correlation between the policy's final energy (EBT)
  and chunk_nmae (None without energies; a well-calibrated energy correlates positively).

Open-loop replay does not measure closed-loop success (compounding errors, recovery); it is a
cheap check that a policy reproduces the recorded behaviour, and of energy calibration.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from vla_ebt_client.history import history_indices

from .replay_report import to_markdown, write_report

__all__ = ["replay", "spearman", "load_episodes", "main"]


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------


def _ranks(x: np.ndarray) -> np.ndarray:
    """0-based ranks with ties averaged."""
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2.0)[inv.reshape(-1)]


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties averaged); None for < 3 finite pairs or a constant input."""
    a, b = np.asarray(x, np.float64).reshape(-1), np.asarray(y, np.float64).reshape(-1)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    if den == 0.0:
        return None
    return float((ra * rb).sum() / den)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def load_episodes(shards: str | Path, max_episodes: int | None = None, skip_episodes: int = 0) -> tuple[dict, list[dict]]:
    """(manifest, episodes) of a shard folder; episodes carry decoded frames (role -> list of
    (H, W, 3) uint8), ``action``, ``state``, ``instruction``, ``meta``."""
    from vla_ebt.data.shard_format import iter_shard, read_manifest, shard_paths

    manifest = read_manifest(shards)
    if manifest is None:
        raise FileNotFoundError(f"{shards}: no manifest.json (not a shard folder)")
    out: list[dict] = []
    k = 0
    for path in shard_paths(shards):
        for ep in iter_shard(path, decode_images=True):
            if k >= skip_episodes:
                out.append(ep)
                if max_episodes is not None and len(out) >= max_episodes:
                    return manifest, out
            k += 1
    return manifest, out


def _action_scale(shards: Path, dataset: str, episodes: list[dict]) -> tuple[np.ndarray, str]:
    stats_path = shards / "stats.json"
    if stats_path.exists():
        try:
            from vla_ebt.normalize import load_stats

            st = load_stats(stats_path)[dataset].action
            return np.maximum((np.asarray(st.q99) - np.asarray(st.q01)) / 2.0, 1e-6), "stats.json (q99 - q01) / 2"
        except Exception:  # noqa: BLE001 - fall back to the evaluated episodes
            pass
    a = np.concatenate([e["action"] for e in episodes])
    q01, q99 = np.quantile(a, [0.01, 0.99], axis=0)
    return np.maximum((q99 - q01) / 2.0, 1e-6), "evaluated episodes (q99 - q01) / 2"


def _frames(ep: dict, roles: list[str], steps: np.ndarray, size: int) -> np.ndarray:
    """(len(roles) * len(steps), 3, size, size) uint8, camera-major."""
    from PIL import Image

    views = []
    for role in roles:
        frames = ep["images"].get(role)
        if frames is None:
            raise ValueError(f"episode {ep['__key__']}: no frames for camera {role!r} (has {sorted(ep['images'])})")
        for t in steps:
            f = frames[int(t)]
            if f.shape[0] != size or f.shape[1] != size:
                f = np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR))
            views.append(f.transpose(2, 0, 1))
    return np.stack(views)


# --------------------------------------------------------------------------------------------
# replay
# --------------------------------------------------------------------------------------------


def replay(
    policy: Any,
    shards: str | Path,
    *,
    max_episodes: int | None = None,
    skip_episodes: int = 0,
    stride: int = 1,
    batch_size: int = 16,
    threshold: float = 0.1,
    embodiment: str | int | None = None,
    cameras: Sequence[str] | None = None,
    seed: int = 0,
    log: Any = None,
) -> dict[str, Any]:
    """Open-loop replay of ``policy`` on the episodes in ``shards``; returns the report dict
    (see the module docstring; ``chunks`` holds one record per predicted chunk)."""
    import torch

    shards = Path(shards)
    if stride < 1 or batch_size < 1:
        raise ValueError(f"stride and batch_size must be >= 1, got {stride}, {batch_size}")
    manifest, episodes = load_episodes(shards, max_episodes, skip_episodes)
    if not episodes:
        raise ValueError(f"{shards}: no episodes to replay (skip_episodes={skip_episodes})")
    dataset = manifest["dataset"]
    spec = policy.spec
    names = list(spec.embodiments)
    if embodiment is None:
        if dataset not in names:
            raise ValueError(f"dataset {dataset!r} is not one of the policy's embodiments {names}; pass --embodiment")
        emb = names.index(dataset)
    elif isinstance(embodiment, str) and not embodiment.isdigit():
        if embodiment not in names:
            raise ValueError(f"unknown embodiment {embodiment!r}; the policy knows {names}")
        emb = names.index(embodiment)
    else:
        emb = int(embodiment)
    roles = list(cameras) if cameras else list(episodes[0]["meta"].get("cameras") or sorted(episodes[0]["images"]))
    To, V = spec.obs_steps, spec.num_views
    if To > 1 and V == len(roles) * To:
        history = True
    elif V <= len(roles):
        history, roles = False, roles[:V]
    else:
        raise ValueError(f"the policy expects {V} views (obs_steps {To}); the episodes have cameras {roles}")
    if history:
        roles = roles[: V // To]
    scale, scale_src = _action_scale(shards, dataset, episodes)
    H = spec.horizon
    A = int(episodes[0]["action"].shape[1])
    if A > spec.action_dim:
        raise ValueError(f"episodes have {A} action dims, the policy predicts {spec.action_dim}")
    scale = scale[:A]

    torch.manual_seed(seed)
    t_start = time.perf_counter()
    chunks: list[dict[str, Any]] = []
    err_sum = np.zeros((H, A))
    sq_sum = np.zeros((H, A))
    nerr_sum = np.zeros((H, A))
    counts = np.zeros(H)
    for ei, ep in enumerate(episodes):
        act, st = np.asarray(ep["action"], np.float32), np.asarray(ep["state"], np.float32)
        if act.shape[1] != A:
            raise ValueError(f"episode {ep['__key__']}: {act.shape[1]} action dims, expected {A}")
        T = act.shape[0]
        steps = np.arange(0, T, stride)
        for b0 in range(0, len(steps), batch_size):
            ts = steps[b0: b0 + batch_size]
            imgs, states = [], []
            for t in ts:
                hist = history_indices(int(t), To)
                imgs.append(_frames(ep, roles, hist if history else np.array([t]), spec.image_size))
                states.append(st[hist])
            obs = {
                "images": torch.from_numpy(np.stack(imgs)),
                "instruction": [ep["instruction"]] * len(ts),
                "state": torch.from_numpy(np.stack(states)),
                "embodiment": torch.full((len(ts),), emb, dtype=torch.long),
            }
            out = policy.predict_chunk(obs)
            pred = out.actions.detach().cpu().float().numpy()[:, :, :A]
            energy = None if out.energy is None else out.energy.detach().cpu().float().numpy().reshape(-1)
            nsteps = None if out.steps is None else out.steps.detach().cpu().float().numpy().reshape(-1)
            for i, t in enumerate(ts):
                fut = t + np.arange(H)
                mask = fut < T
                target = act[np.minimum(fut, T - 1)]
                err = np.abs(pred[i] - target)  # (H, A)
                nerr = err / scale
                err_sum[mask] += err[mask]
                sq_sum[mask] += err[mask] ** 2
                nerr_sum[mask] += nerr[mask]
                counts[mask] += 1
                chunks.append({
                    "episode": ei,
                    "key": ep["__key__"],
                    "t": int(t),
                    "valid_steps": int(mask.sum()),
                    "mae": float(err[mask].mean()),
                    "nmae": float(nerr[mask].mean()),
                    "first_step_mae": float(err[0].mean()),
                    "energy": None if energy is None else float(energy[i]),
                    "steps": None if nsteps is None else float(nsteps[i]),
                })
        if log:
            log(f"episode {ei + 1}/{len(episodes)} ({ep['__key__']}): {len(steps)} chunks")
    wall = time.perf_counter() - t_start

    n_valid = counts.sum()
    per_dim_cnt = max(n_valid, 1)
    per_dim = {
        "mae": (err_sum.sum(0) / per_dim_cnt).tolist(),
        "rmse": np.sqrt(sq_sum.sum(0) / per_dim_cnt).tolist(),
        "nmae": (nerr_sum.sum(0) / per_dim_cnt).tolist(),
        "scale": scale.tolist(),
    }
    with np.errstate(invalid="ignore", divide="ignore"):
        per_step = {
            "mae": [float(x) if c else None for x, c in zip(err_sum.sum(1) / (counts * A), counts)],
            "nmae": [float(x) if c else None for x, c in zip(nerr_sum.sum(1) / (counts * A), counts)],
            "count": counts.astype(int).tolist(),
        }
    cn = np.array([c["nmae"] for c in chunks])
    ep_mean = [float(np.mean([c["nmae"] for c in chunks if c["episode"] == i])) for i in range(len(episodes))]
    energies = [c["energy"] for c in chunks]
    has_energy = all(e is not None for e in energies)
    rho = spearman(energies, cn) if has_energy else None
    rho_raw = spearman(energies, [c["mae"] for c in chunks]) if has_energy else None
    stp = [c["steps"] for c in chunks]
    rho_steps = spearman(stp, cn) if all(s is not None for s in stp) else None
    return {
        "policy": getattr(policy, "name", None) or type(policy).__name__,
        "shards": str(shards),
        "dataset": dataset,
        "embodiment": emb,
        "cameras": roles,
        "episodes": len(episodes),
        "chunks_total": len(chunks),
        "stride": stride,
        "horizon": H,
        "action_dim": A,
        "threshold": threshold,
        "scale_source": scale_src,
        "mae": float(err_sum.sum() / max(n_valid * A, 1)),
        "nmae": float(nerr_sum.sum() / max(n_valid * A, 1)),
        "first_step_mae": float(np.mean([c["first_step_mae"] for c in chunks])),
        "per_dim": per_dim,
        "per_step": per_step,
        "success_proxy": float((cn < threshold).mean()),
        "episode_success_proxy": float(np.mean(np.asarray(ep_mean) < threshold)),
        "episode_nmae": ep_mean,
        "energy_error_spearman": rho,
        "energy_raw_error_spearman": rho_raw,
        "steps_error_spearman": rho_steps,
        "mean_energy": float(np.mean(energies)) if has_energy else None,
        "wall_s": wall,
        "ms_per_chunk": wall * 1e3 / max(1, len(chunks)),
        "chunks": chunks,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m eval.real.replay", description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", required=True, help="folder written by VLAPolicy.save_pretrained")
    p.add_argument("--shards", required=True, help="episode shard folder (manifest.json, *.tar) of held-out episodes")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-episodes", type=int, default=None)
    p.add_argument("--skip-episodes", type=int, default=0, help="skip the first N episodes (e.g. training ones)")
    p.add_argument("--stride", type=int, default=1, help="predict a chunk at every stride-th step")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threshold", type=float, default=0.1, help="chunk normalized-MAE threshold of the success proxy")
    p.add_argument("--embodiment", default=None, help="name or id (default: the shard dataset's name)")
    p.add_argument("--cameras", nargs="*", default=None, help="camera roles as views (default: the episodes')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-plot", action="store_true")
    a = p.parse_args(argv)
    import torch

    from vla_ebt.policy import VLAPolicy

    torch.set_num_threads(max(1, a.threads))
    policy = VLAPolicy.from_pretrained(a.policy, map_location=a.device)
    policy.name = str(a.policy)
    r = replay(policy, a.shards, max_episodes=a.max_episodes, skip_episodes=a.skip_episodes, stride=a.stride,
               batch_size=a.batch_size, threshold=a.threshold, embodiment=a.embodiment, cameras=a.cameras,
               seed=a.seed, log=print)
    paths = write_report(r, a.out, make_plot=not a.no_plot)
    print(to_markdown(r))
    print("wrote " + ", ".join(str(v) for v in paths.values()))
    return r


if __name__ == "__main__":
    main()
