"""Demonstrations collected in env worker processes are byte-identical to serial collection (same
episodes, same order), with a stochastic expert too; a worker suite that differs is refused."""

from __future__ import annotations

import pytest

from eval.sim.demo_cache import DemoSpec, cached_demos
from eval.sim.demos import collect_demos
from eval.sim.suites import make_suite
from vla_ebt.data.episodes import Episode


def assert_same_bytes(a: list[Episode], b: list[Episode]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert (x.task, x.seed, x.instruction, x.success) == (y.task, y.seed, y.instruction, y.success)
        for name in ("images", "state", "action"):
            u, v = getattr(x, name), getattr(y, name)
            assert (u.dtype, u.shape) == (v.dtype, v.shape), name
            assert u.tobytes() == v.tobytes(), (x.task, x.seed, name)


@pytest.mark.parametrize("name, kwargs, noise", [("reach2d", {"image_size": 32}, 0.01),
                                                 ("reach2d_detour", {"image_size": 32}, 0.0)])
def test_parallel_demos_equal_serial(name: str, kwargs: dict, noise: float) -> None:
    suite = make_suite(name, **kwargs)
    serial = collect_demos(suite, None, 3, seed=7, action_noise=noise)
    parallel = collect_demos(suite, None, 3, seed=7, action_noise=noise, num_workers=2)
    assert_same_bytes(serial, parallel)
    assert [e.task for e in parallel] == [t for t in suite.task_names() for _ in range(3)]
    # one worker per episode at most; the episodes do not depend on which ran before them
    one_task = collect_demos(suite, [suite.task_names()[-1]], 3, seed=7, action_noise=noise, num_workers=5)
    assert_same_bytes(serial[-3:], one_task)


@pytest.mark.slow
def test_parallel_metaworld_demos_equal_serial_and_cache_the_same(tmp_path) -> None:
    suite = make_suite("metaworld", max_episode_steps=60)
    tasks = ["drawer-close-v3", "window-open-v3"]
    serial = collect_demos(suite, tasks, 2, seed=3, action_noise=0.05)
    parallel = collect_demos(suite, tasks, 2, seed=3, action_noise=0.05, num_workers=2)
    assert_same_bytes(serial, parallel)
    spec = DemoSpec(suite="metaworld", tasks=tuple(tasks), episodes_per_task=2, seed=3, action_noise=0.05,
                    suite_kwargs={"max_episode_steps": 60})
    written, folder = cached_demos(spec, tmp_path, log=None, num_workers=2)
    assert_same_bytes(serial, written)
    read_back, same = cached_demos(spec, tmp_path, log=None)
    assert same == folder
    assert_same_bytes(serial, read_back)


def test_worker_suite_must_match() -> None:
    suite = make_suite("reach2d", image_size=32)
    with pytest.raises(ValueError, match="image_size"):
        collect_demos(suite, ["reach_red"], 1, seed=0, num_workers=1, suite_kwargs={})
