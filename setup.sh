#!/usr/bin/env bash
# One command on a fresh machine: install everything, then run the main job on the embedded default.
#   bash setup.sh                 install + run `recipes/finetune.py --recipe default`
#   bash setup.sh --install-only  install only (what .ci/run uses)
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), f"vla_ebt needs Python >= 3.11, found {sys.version}"'

# System packages. The current suites render with numpy only; MuJoCo-based suites need Mesa's
# software OpenGL (EGL/OSMesa) and ffmpeg for videos.
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
DS_BUILD_OPS=0 .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
.venv/bin/python -c "import vla_ebt, torch; print(f'vla_ebt {vla_ebt.__version__} installed (torch {torch.__version__})')"

if [ "${1:-}" != "--install-only" ]; then
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} .venv/bin/python recipes/finetune.py --recipe default
fi
