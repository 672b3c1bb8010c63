"""RLDS -> shard conversion throughput: the local engine (multiprocessing) vs the Ray engine, on
this machine.

    python benchmarks/convert_throughput.py --out runs/bench/convert_throughput.json [--episodes 40]
        [--files 8] [--steps 30] [--image-size 224] [--workers 2] [--repeats 1]

Data: an RLDS folder in the OXE ``bridge`` layout (tests/data_pipelines/test_data_fixture.py: one 480x640 JPEG,
state, split action dict and a 512-D language embedding per step), ``--episodes`` episodes of
``--steps`` steps in ``--files`` TFRecord files (the unit of work of both engines: one task per
file). Every engine converts the same folder into a fresh output folder (images resized to
``--image-size``, JPEG); the outputs are checked to be byte-identical.

Rows: ``local`` with 1 and ``--workers`` processes; ``ray`` with a local Ray instance of
``--workers`` CPUs, timed twice: ``ray (incl. start)`` counts ``ray.init`` / ``ray.shutdown`` as a
one-off command would, ``ray (warm)`` converts on an instance that is already up (as on a running
cluster). With ``--repeats N`` each row is the fastest of N runs (a shared machine is noisy; the
1-minute load averages before and after are reported). JSON keys: settings, ``results`` (engine,
workers, seconds, episodes_per_s, steps_per_s, all_seconds), outputs_identical, ray_version,
cpu_count, load_avg_before / load_avg_after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _write_fixture(root: Path, episodes: int, files: int, steps: int) -> Path:
    import tests.test_data_fixture as fx
    from data_pipelines.tfrecord import masked_crc32c

    fx.masked = masked_crc32c  # the fixture's pure-Python CRC (~3 MB/s) would dominate the setup time
    seeds = list(range(episodes))
    per_file = [seeds[i::files] for i in range(files)]
    return fx.write_rlds(root, "bridge", per_file, lengths={s: steps for s in seeds})


def _same(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("*.tar"))
    return names == sorted(p.name for p in b.glob("*.tar")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--files", type=int, default=8, help="TFRecord files (= tasks)")
    p.add_argument("--steps", type=int, default=30, help="steps per episode")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=2, help="processes (local) / CPUs of the local Ray instance")
    p.add_argument("--repeats", type=int, default=1, help="runs per row; the fastest is reported")
    a = p.parse_args(argv)

    import ray

    from data_pipelines.convert import convert

    tmp = Path(tempfile.mkdtemp(prefix="convert_bench_"))
    load_before = os.getloadavg()[0]
    try:
        t0 = time.perf_counter()
        src = _write_fixture(tmp / "src", a.episodes, a.files, a.steps)
        setup_s = time.perf_counter() - t0
        steps_total = a.episodes * a.steps
        results = []

        def run(label: str, engine: str, workers: int, out: Path, around=None) -> None:
            times = []
            for _ in range(max(1, a.repeats)):
                shutil.rmtree(out, ignore_errors=True)
                t = time.perf_counter()
                if around is not None:
                    around[0]()
                s = convert(src, "bridge", out, image_size=a.image_size, workers=workers, engine=engine,
                            progress=False)
                if around is not None:
                    around[1]()
                times.append(time.perf_counter() - t)
                assert (s["episodes"], s["steps"], s["converted"]) == (a.episodes, steps_total, a.files), s
            dt = min(times)
            results.append({"engine": label, "workers": workers, "seconds": round(dt, 3),
                            "episodes_per_s": round(a.episodes / dt, 3), "steps_per_s": round(steps_total / dt, 2),
                            "all_seconds": [round(x, 3) for x in times]})

        run("local", "local", 1, tmp / "local1")
        run("local", "local", a.workers, tmp / "localN")
        ray_tmp = tempfile.mkdtemp(prefix="rb", dir="/tmp")  # short: unix socket paths
        init = (lambda: ray.init(address="local", num_cpus=a.workers, include_dashboard=False,  # noqa: E731
                                 logging_level="WARNING", _temp_dir=ray_tmp))
        run("ray (incl. start)", "ray", a.workers, tmp / "ray_cold", around=(init, ray.shutdown))
        init()
        try:
            run("ray (warm)", "ray", a.workers, tmp / "ray_warm")
        finally:
            ray.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)
        identical = all(_same(tmp / "local1", tmp / d) for d in ("localN", "ray_cold", "ray_warm"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    report = {"settings": {"episodes": a.episodes, "files": a.files, "steps_per_episode": a.steps,
                           "image_size": a.image_size, "workers": a.workers, "layout": "bridge (OXE), 480x640 JPEG",
                           "fixture_setup_s": round(setup_s, 2)},
              "results": results, "outputs_identical": identical, "ray_version": ray.__version__,
              "cpu_count": os.cpu_count(), "load_avg_before": round(load_before, 2),
              "load_avg_after": round(os.getloadavg()[0], 2)}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{a.episodes} episodes x {a.steps} steps in {a.files} files, {a.image_size} px, {os.cpu_count()} CPUs "
          f"(ray {ray.__version__}); outputs identical: {identical}; load average {report['load_avg_before']} -> "
          f"{report['load_avg_after']}")
    print(f"{'engine':<20}{'workers':>8}{'seconds':>10}{'episodes/s':>12}{'steps/s':>10}")
    for r in results:
        print(f"{r['engine']:<20}{r['workers']:>8}{r['seconds']:>10.2f}{r['episodes_per_s']:>12.2f}{r['steps_per_s']:>10.1f}")
    return report


if __name__ == "__main__":
    main()
