#!/usr/bin/env bash
# make bench's generation benchmark on the real model (docs/BENCHMARKS.md):
# presets for SmolLM2-135M with keys after RoPE (scored on the latents) and
# before (rebuilt per block), then bench/cachebench.py against DynamicCache
# and transformers' QuantizedCache.
#
# Usage: bench/cache.sh [PRE_ROPE_PRESET]   (default: calbench's (e) preset)
set -euo pipefail
: "${KVTORCH_PYTHON:?run through make bench}" "${KVTORCH_REAL_MODEL_DIR:?run through make bench}"
PY=$KVTORCH_PYTHON
D=$KVTORCH_REAL_MODEL_DIR
W=build/bench/cache
K=bin/kvtorch
mkdir -p "$W"
pre=${1:-build/bench/smollm2/p3.json}

[ -f "$W/post.pt" ] || "$PY" -m kvtorch.export "$D/hf" --output "$W/post.pt" --kv-source post_rope --name SmolLM2-135M-Instruct
[ -f "$W/calib-post.pt" ] || $K calibrate -q --model "$W/post.pt" --texts testdata/calib --output "$W/calib-post.pt"
[ -f "$W/post-16-8-4.json" ] || /usr/bin/time -f "tune: wall %e s, max RSS %M KB" $K tune -q --model "$W/post.pt" \
  --calibration "$W/calib-post.pt" --texts testdata/eval --max-tokens 4096 --bits 16,8,4 --check-texts testdata/legal \
  --output "$W/post-16-8-4.json"
[ -f "$W/post-16-8.json" ] || $K tune -q --model "$W/post.pt" --calibration "$W/calib-post.pt" --texts testdata/eval \
  --max-tokens 4096 --bits 16,8 --check-texts testdata/legal --output "$W/post-16-8.json"
[ -f "$W/post-none8.json" ] || $K eval --json --model "$W/post.pt" --calibration "$W/calib-post.pt" --texts testdata/eval \
  --max-tokens 4096 --basis none --bits 8 --output "$W/post-none8.json" > /dev/null

presets=(--preset "post-RoPE, tune 16/8/4=$W/post-16-8-4.json" --preset "post-RoPE, tune 16/8=$W/post-16-8.json"
  --preset "post-RoPE, plain 8-bit=$W/post-none8.json")
[ -f "$pre" ] && presets+=(--preset "pre-RoPE, tune 16/8/4=$pre")
"$PY" bench/cachebench.py --model "$D/hf" "${presets[@]}" --contexts 1024,4096,16384 --json "$W/cachebench.json"
