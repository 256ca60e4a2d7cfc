#!/usr/bin/env bash
# The CUDA check, for a machine with a CUDA torch and no Go toolchain.
#
#   scripts/gpu_check.sh PATH/TO/kvtorch [OUT_DIR]
#
# Prepare on a machine with Go: make build; cp bin/kvtorch .gpu/;
# go test -c -o .gpu/torch.test ./torch (optional: the torch package's tests).
#
# Takes a kvtorch binary built elsewhere (make build), rebuilds libkvtorch.so
# against this machine's torch, then on CUDA: calibrates, tunes and checks the
# reference model and a tiny random transformers model exported here with
# kvtorch.export (python/, used from the checkout); compares CUDA and CPU calibrations (same eigenvalues
# within tolerance); and measures calibration tokens/s of kvtorch and of the
# Python pipeline (bench/oldtool/oldtool.py) on the same GPU. Needs python3 with
# torch (CUDA), transformers and tokenizers; cmake and a C++ compiler.
set -euo pipefail
bin=$(readlink -f "$1")
out=$(mkdir -p "${2:-gpu-check}" && readlink -f "${2:-gpu-check}")
cd "$(dirname "$0")/.."
PY=${KVTORCH_PYTHON:-python3}
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"  # the kvtorch package, from the checkout
log() { echo "== $*" | tee -a "$out/summary.txt"; }

TP=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
cmake -S . -B /tmp/kvtorch-gpu -DCMAKE_PREFIX_PATH="$TP" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build /tmp/kvtorch-gpu -j"$(nproc)" >/dev/null
export LD_LIBRARY_PATH=/tmp/kvtorch-gpu
"$bin" version | tee "$out/version.txt"
# The Go torch package's tests, when a test binary was built elsewhere
# (go test -c -o torch.test ./torch) and put next to the kvtorch binary.
if [ -x "$(dirname "$bin")/torch.test" ]; then
  log "torch package tests on this machine (CUDA tests included)"
  (cd torch && KVTORCH_PYTHON="$PY" "$(dirname "$bin")/torch.test" -test.v 2>&1 | tail -40 | tee -a "$out/summary.txt")
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt" || true

log "reference model: export for cuda and cpu"
"$PY" scripts/refmodel.py export --data testdata --out "$out/ref-cuda.pt" --device cuda
"$PY" scripts/refmodel.py export --data testdata --out "$out/ref-cpu.pt" --device cpu
for dev in cuda cpu; do
  "$bin" calibrate -q --json --model "$out/ref-$dev.pt" --output "$out/cal-$dev.pt" > "$out/cal-$dev.json"
  "$PY" -c "import json,sys; d=json.load(open('$out/cal-$dev.json')); print('kvtorch calibrate on $dev: %d tokens, %.0f tok/s' % (d['tokens'], d['tokens_per_second']))" | tee -a "$out/summary.txt"
done
"$PY" - "$out" <<'PYEOF' | tee -a "$out/summary.txt"
import sys, torch
out = sys.argv[1]
a, b = torch.load(f"{out}/cal-cuda.pt"), torch.load(f"{out}/cal-cpu.pt")
worst = 0.0
for la, lb in zip(a["layers"], b["layers"]):
    for s in "KV":
        wa, wb = la[s]["eigenvalues"].double(), lb[s]["eigenvalues"].double()
        worst = max(worst, ((wa - wb).abs() / (wb.abs() + 1e-6 * wb[:, :1])).max().item())
print(f"CUDA vs CPU eigenvalues: largest relative difference {worst:.2e}", "OK" if worst < 1e-3 else "DIFFERENT")
sys.exit(0 if worst < 1e-3 else 1)
PYEOF
"$bin" tune -q --model "$out/ref-cuda.pt" --calibration "$out/cal-cuda.pt" --bits 16,8,4 --max-tokens 16384 --output "$out/preset-ref.json" | tee -a "$out/summary.txt"
"$bin" check --preset "$out/preset-ref.json" | tee -a "$out/summary.txt"

log "Python pipeline on the same GPU"
start=$(date +%s.%N)
OLDTOOL_DEVICE=cuda "$PY" bench/oldtool/oldtool.py calibrate --model "$out/ref-cuda.pt" --texts testdata/calib --rank 48 --out "$out/old.pt"
end=$(date +%s.%N)
"$PY" -c "import json; d=json.load(open('$out/cal-cuda.json')); t=$end-$start; print('Python pipeline calibrate on cuda: %d tokens in %.1f s, %.0f tok/s (process start and model load included)' % (d['tokens'], t, d['tokens']/t))" | tee -a "$out/summary.txt"

log "tiny random transformers model (llama), exported on cuda"
"$PY" - "$out" <<'PYEOF'
import sys, torch
sys.path.insert(0, "python/tests")
from tiny_models import tiny_model
out = sys.argv[1]
m = tiny_model("llama", vocab_size=4096)
m.save_pretrained(f"{out}/tiny-llama")
import shutil; shutil.copy("testdata/refmodel.tokenizer.json", f"{out}/tiny-llama/tokenizer.json")
PYEOF
"$PY" -m kvtorch.export "$out/tiny-llama" -o "$out/tiny-cuda.pt" --device cuda
"$bin" calibrate -q --model "$out/tiny-cuda.pt" --output "$out/tiny-cal.pt"
"$bin" tune -q --model "$out/tiny-cuda.pt" --calibration "$out/tiny-cal.pt" --max-tokens 8192 --output "$out/preset-tiny.json" | tee -a "$out/summary.txt"
"$bin" check --preset "$out/preset-tiny.json" | tee -a "$out/summary.txt"
log "calibrate against the full forward on cuda (bench/calspeed.py, tiny model)"
"$PY" bench/calspeed.py --kvtorch "$bin" --model "$out/tiny-cuda.pt" --hf "$out/tiny-llama" --name "tiny llama" \
  --device cuda --rounds 3 | tee -a "$out/summary.txt"
# The real model (issue 11), when its GGUF is here (KVTORCH_REAL_GGUF) and the
# gguf and accelerate packages import: export on CUDA, calibrate and evaluate
# there, against the CPU's perplexity of the same export.
if [ -n "${KVTORCH_REAL_GGUF:-}" ] && [ -f "$KVTORCH_REAL_GGUF" ] && "$PY" -c 'import gguf, accelerate' 2>/dev/null; then
  log "real model: $KVTORCH_REAL_GGUF exported for cuda"
  "$PY" -m kvtorch.export "$KVTORCH_REAL_GGUF" -o "$out/real-cuda.pt" --device cuda --name SmolLM2-135M-Instruct
  "$bin" calibrate -q --json --model "$out/real-cuda.pt" --texts testdata/calib --output "$out/real-cal.pt" > "$out/real-cal.json"
  "$PY" -c "import json; d=json.load(open('$out/real-cal.json')); print('real model calibrate on cuda: %d tokens, %.0f tok/s' % (d['tokens'], d['tokens_per_second']))" | tee -a "$out/summary.txt"
  "$bin" eval --model "$out/real-cuda.pt" --calibration "$out/real-cal.pt" --texts testdata/eval --max-tokens 4096 \
    --ranks 96,144 | tee -a "$out/summary.txt"
else
  log "real model: skipped (set KVTORCH_REAL_GGUF to the SmolLM2 GGUF, with the gguf and accelerate wheels installed)"
fi
log "done"
