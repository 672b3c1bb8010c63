#!/bin/bash
# On the GPU machine, repo root, after benchmarks/gpu_latency_prep.sh here: installs the carried
# wheels, builds the random-init text encoder, runs the CUDA-graph tests and the policy-latency
# benchmark with every head captured as a CUDA graph, per image size in ${SIZES:-96}
# (policy_latency_cuda.json at 96 px, policy_latency_cuda_<N>px.json otherwise). Writes to
# ${OUT:-gpu_out}/; SKIP_TESTS=1 skips the tests.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/packages/vla_ebt_client:$PWD
python3 benchmarks/random_text_encoder.py .devrun/minilm_cfg /tmp/minilm /tmp/site > /dev/null 2>&1 || echo "random_text_encoder failed"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
if [ -z "$SKIP_TESTS" ]; then
  timeout 60 python3 -m pytest -q -o addopts="" -p no:cacheprovider --tb=short tests/vla_ebt/heads/test_cuda_graph.py > "$OUT/pytest.log" 2>&1
  tail -4 "$OUT/pytest.log"
fi
B="python3 benchmarks/policy_latency.py --device cuda --threads 1 --repeats 15 --warmup 3 --skip-reference --backbone efficientnet_lite0+/tmp/minilm"
for size in ${SIZES:-96}; do
  name=policy_latency_cuda.json; [ "$size" = 96 ] || name=policy_latency_cuda_${size}px.json
  timeout 150 $B --cuda-graphs --image-size "$size" --out "$OUT/$name" > "$OUT/bench_$size.log" 2>&1 || echo "benchmark failed: $?"
  grep -v "Loading weights" "$OUT/bench_$size.log" | tail -30
done
