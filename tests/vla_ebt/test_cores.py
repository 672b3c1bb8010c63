"""Thread / env-worker counts (vla_ebt.cores): "auto" follows the free usable cores, explicit values
are kept, bad values raise, and torch_threads restores the caller's count."""

from __future__ import annotations

import pytest
import torch

from vla_ebt import cores


def test_auto_threads_follow_omp_env_then_free_cores(monkeypatch) -> None:
    monkeypatch.setattr(cores, "available_cores", lambda: 4)
    monkeypatch.setattr(cores, "busy_cores", lambda interval_s=0.5: 0.2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cores.resolve_threads("auto") == 4  # nothing else runs: every usable core
    monkeypatch.setattr(cores, "busy_cores", lambda interval_s=0.5: 2.6)
    assert cores.resolve_threads("auto") == 1  # 3 of 4 cores busy with other processes
    monkeypatch.setattr(cores, "busy_cores", lambda interval_s=0.5: 9.0)
    assert cores.resolve_threads("auto") == 1  # never 0
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cores.resolve_threads("auto") == 3  # a launcher / the user chose
    assert cores.resolve_threads(2) == 2 and cores.resolve_threads("5") == 5
    for bad in (0, -1, "x", "1.5"):
        with pytest.raises(ValueError, match="threads"):
            cores.resolve_threads(bad)


def test_auto_workers_one_per_core_capped_by_jobs(monkeypatch) -> None:
    monkeypatch.setattr(cores, "available_cores", lambda: 2)
    assert cores.resolve_workers("auto") == 2
    assert cores.resolve_workers("auto", jobs=1) == 1 and cores.resolve_workers(8, jobs=3) == 3
    assert cores.resolve_workers(0, jobs=100) == 0
    monkeypatch.setattr(cores, "available_cores", lambda: 1)
    assert cores.resolve_workers("auto", jobs=100) == 0  # one core: run in this process
    with pytest.raises(ValueError, match="workers"):
        cores.resolve_workers(-1)


def test_free_cores_sees_this_machine_and_torch_threads_restores() -> None:
    n = cores.available_cores()
    assert n >= 1 and 1 <= cores.free_cores(0.05) <= n
    assert 0.0 <= cores.busy_cores(0.05) <= n + 0.5
    before = torch.get_num_threads()
    with cores.torch_threads(before + 1) as k:
        assert k == torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
