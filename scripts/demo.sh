#!/usr/bin/env bash
# make demo: calibrate the bundled reference model, tune a preset at +5%
# perplexity, check it, and show where the files are.
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/demo
mkdir -p "$out"
k=bin/kvtorch
echo "== kvtorch calibrate: the reference model on its calibration texts (testdata/calib)"
$k calibrate --out "$out/calib.pt" --plot "$out/spectra.png"
echo
echo "== kvtorch tune: per-layer K/V ranks and 16/8/4-bit latents within +5% perplexity on held-out text"
$k tune --calibration "$out/calib.pt" --target-ppl-delta 0.05 --bits 16,8,4 --max-tokens 16384 \
  --output "$out/preset.json" --plot "$out/tradeoff.png"
echo
echo "== kvtorch check: the CI gate, recomputing the preset's perplexity"
$k check --preset "$out/preset.json"
echo
echo "files:"
for f in calib.pt preset.json spectra.png tradeoff.png; do echo "  $out/$f"; done
echo "load the calibration in Python with torch.load(\"$out/calib.pt\"); apply the preset with kvtorch.Preset (pip install ./python)"
