"""``--engine ray``: the same per-file conversion as Ray tasks, on a local Ray instance on loopback
(in this process) and on a cluster started with ``ray start --head`` (``--address``). Output must
equal the local engine's (shards byte for byte, manifest entries, statistics); resume and bad-data
errors behave as with the local engine.

Each Ray start costs ~10 s on a 2-core machine, so these tests are ``slow`` and the in-process
checks share one Ray instance in one test function (``xdist_group`` does not keep tests on one
xdist worker with the pytest-xdist installed here, so separate tests would start Ray twice)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from data_pipelines import convert as conv
from data_pipelines.rlds import DataError
from tests.data_pipelines.test_data_fixture import write_rlds
from vla_ebt.normalize import load_stats

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ray_local():
    """A local Ray instance (2 CPUs, no dashboard) in its own short temp dir (unix socket paths);
    convert() uses an initialized Ray as it is."""
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", _temp_dir=tmp)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def _convert(src, name, out, **kw):
    kw.setdefault("image_size", 16)
    return conv.convert(src, name, out, progress=False, **kw)


def _assert_same_output(a: Path, b: Path) -> None:
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["complete"] and mb["complete"]
    assert ma["shards"] == mb["shards"] and ma["skipped"] == mb["skipped"]
    assert (ma["num_episodes"], ma["num_steps"]) == (mb["num_episodes"], mb["num_steps"])
    names = sorted(p.name for p in a.glob("*.tar"))
    assert names == sorted(p.name for p in b.glob("*.tar")) == sorted(ma["shards"])
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n
    sa, sb = load_stats(a / "stats.json"), load_stats(b / "stats.json")
    assert list(sa) == list(sb)
    for k in sa:
        assert (sa[k].num_episodes, sa[k].num_steps) == (sb[k].num_episodes, sb[k].num_steps)
        for f in ("mean", "std", "min", "max", "q01", "q99"):
            np.testing.assert_allclose(getattr(sa[k].action, f), getattr(sb[k].action, f), rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(getattr(sa[k].state, f), getattr(sb[k].state, f), rtol=1e-6, atol=1e-7)


def _bad_seed_7(seed, feats):
    if seed == 7:
        kind, v = feats["steps/action/world_vector"]
        v = v.copy()
        v[1] = np.nan
        feats["steps/action/world_vector"] = (kind, v)
    return feats


def _check_output_equals_local(tmp_path: Path) -> None:
    src = write_rlds(tmp_path / "src", "bridge", [[1, 2], [3], [4, 5, 6], [7, 8], [9]], mutate=_bad_seed_7)
    sl = _convert(src, "bridge", tmp_path / "local", workers=1, skip_bad=True)
    sr = _convert(src, "bridge", tmp_path / "ray", engine="ray", skip_bad=True)
    assert (sr["converted"], sr["episodes"], sr["skipped"]) == (5, 8, 1)
    assert {k: v for k, v in sr.items() if k != "out"} == {k: v for k, v in sl.items() if k != "out"}
    _assert_same_output(tmp_path / "local", tmp_path / "ray")
    # the tensorflow-datasets bridge layout, chosen from features.json, on Ray too
    src2 = write_rlds(tmp_path / "src2", "bridge_tfds", [[1], [2, 3]])
    _convert(src2, "bridge", tmp_path / "local2", workers=1)
    _convert(src2, "bridge", tmp_path / "ray2", engine="ray", workers=2)
    _assert_same_output(tmp_path / "local2", tmp_path / "ray2")


def _check_resume_and_bad_data(tmp_path: Path) -> None:
    src = write_rlds(tmp_path / "src", "language_table", [[1], [2], [3], [4]])
    out = tmp_path / "out"
    assert _convert(src, "language_table", out, engine="ray")["converted"] == 4
    # a node lost while writing shard 2: its shard never made it into the manifest (a temp file at most)
    man = json.loads((out / "manifest.json").read_text())
    del man["shards"]["language_table-00002.tar"]
    man["complete"] = False
    (out / "manifest.json").write_text(json.dumps(man))
    (out / "language_table-00002.tar").unlink()
    (out / ".language_table-00002.tar.99-deadbeef.tmp").write_bytes(b"partial")
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    s = _convert(src, "language_table", out, engine="ray")
    assert (s["resumed"], s["converted"], s["episodes"]) == (3, 1, 4)
    assert all((out / n).stat().st_mtime_ns == t for n, t in mtimes.items())  # finished shards kept
    assert not list(out.glob(".*.tmp"))
    _convert(src, "language_table", tmp_path / "local", workers=1)
    _assert_same_output(tmp_path / "local", out)
    # a bad episode stops the run with the same named error as the local engine; shards that
    # finished before it stay recorded
    bad = write_rlds(tmp_path / "bad", "bridge", [[1], [7]], mutate=_bad_seed_7)
    with pytest.raises(DataError) as ei:
        _convert(bad, "bridge", tmp_path / "o_bad", engine="ray", workers=1)
    e = ei.value
    assert (e.dataset, e.episode, e.field) == ("bridge", 0, "steps/action/world_vector")
    assert e.file.endswith("bridge-train.tfrecord-00001-of-00002") and "non-finite action" in str(e)
    man = json.loads((tmp_path / "o_bad" / "manifest.json").read_text())
    assert list(man["shards"]) == ["bridge-00000.tar"] and man["complete"] is False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_started(head: subprocess.Popen, timeout: float = 240.0) -> str:
    """The head's output up to its "Ray runtime started" line (a client started earlier can find no
    cluster yet). Fails with the output if the head exits or does not start in time."""
    import queue
    import threading

    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in head.stdout] + [lines.put(None)], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            pytest.fail("ray start --head exited before it started:\n" + "".join(seen[-40:]))
        seen.append(line)
        if "Ray runtime started" in line:
            return "".join(seen)
    pytest.fail(f"ray start --head did not start within {timeout:.0f} s:\n" + "".join(seen[-40:]))


@pytest.mark.slow
def test_ray_cli_on_a_cluster_started_with_ray_start(tmp_path):
    """`ray start --head` on loopback in a subprocess (its own temp dir and ports; stopped by
    SIGTERM to that process, which stops what it started), then the CLI with --address, as the README
    says: token created with `ray get-auth-token --generate`, head and driver with RAY_AUTH_MODE=token.
    HOME is a fresh folder, so neither a token left in ~/.ray nor another test's can change the outcome."""
    src = write_rlds(tmp_path / "src", "jaco_play", [[1, 2], [3], [4]])
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    subprocess.run([str(Path(sys.executable).with_name("ray")), "get-auth-token", "--generate"], env=env, check=True,
                   capture_output=True, timeout=120)
    assert (home / ".ray" / "auth_token").is_file()
    ray_tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    port = _free_port()
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(port), "--ray-client-server-port", str(_free_port()),
         "--dashboard-agent-listen-port", str(_free_port()), "--num-cpus", "2", "--include-dashboard", "false",
         "--disable-usage-stats", "--temp-dir", ray_tmp],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_until_started(head)
        r = subprocess.run([sys.executable, "-m", "data_pipelines.convert", "--src", str(src), "--dataset", "jaco_play",
                            "--out", str(tmp_path / "ray"), "--image-size", "16", "--no-progress", "--engine", "ray",
                            "--address", f"127.0.0.1:{port}"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "4 episodes" in r.stdout and "3 converted" in r.stdout
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.communicate()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    _convert(src, "jaco_play", tmp_path / "local", workers=1)
    _assert_same_output(tmp_path / "local", tmp_path / "ray")


def _check_npz_and_hdf5_sources(tmp_path: Path) -> None:
    """The non-RLDS readers' units (groups of --episodes-per-shard episodes) run as Ray tasks too."""
    from tests.data_pipelines.test_data_import_hdf5_npz import write_hdf5, write_npz

    write_npz(tmp_path / "npz", n=5)
    write_hdf5(tmp_path / "lift.hdf5")
    for fmt, src, kw in (("npz", tmp_path / "npz", {}),
                         ("hdf5", tmp_path / "lift.hdf5", {"instruction": "lift the cube"})):
        for engine, out in (("local", tmp_path / f"{fmt}_local"), ("ray", tmp_path / f"{fmt}_ray")):
            s = conv.convert(src, "push", out, image_size=8, image_format="png", progress=False, format=fmt,
                             episodes_per_shard=2, engine=engine, workers=1 if engine == "local" else None, **kw)
            assert s["converted"] >= 2
        _assert_same_output(tmp_path / f"{fmt}_local", tmp_path / f"{fmt}_ray")


@pytest.mark.slow
def test_ray_engine_in_process(tmp_path, ray_local):
    """On a local Ray instance: output equal to the local engine's (OXE and TFDS bridge layouts,
    --skip-bad), resume after a shard lost with its node, the same named DataError for bad data,
    and npz / hdf5 sources."""
    for name, check in (("equal", _check_output_equals_local), ("resume", _check_resume_and_bad_data),
                        ("npz_hdf5", _check_npz_and_hdf5_sources)):
        (tmp_path / name).mkdir()
        check(tmp_path / name)
