#!/usr/bin/env bash
# Creates or updates kvtorch's Python environment, idempotently.
#
# The venv lives outside the clone, keyed by the hash of requirements.txt, so
# repeated runs (and CI runs on the same machine) reuse it while a fresh
# machine builds it from nothing. Prints the venv's path on stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
req="$root/requirements.txt"
home=${KVTORCH_HOME:-$HOME/.cache/kvtorch}
hash=$(sha256sum "$req" | cut -c1-12)
venv="$home/venv-$hash"
stamp="$venv/.kvtorch-complete"
if [ -f "$stamp" ]; then
  echo "$venv"
  exit 0
fi
# The interpreter the venv is made from (not KVTORCH_PYTHON: the Makefile
# points that at the venv itself).
python=${KVTORCH_BASE_PYTHON:-python3}
echo "deps: creating $venv (first run downloads torch and its CUDA runtime wheels, a few GB)" >&2
mkdir -p "$home"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade "pip>=24" >&2
"$venv/bin/python" -m pip install --quiet --progress-bar off -r "$req" >&2
"$venv/bin/python" -c 'import torch, numpy, pytest; print("deps: torch", torch.__version__, "at", torch.utils.cmake_prefix_path)' >&2
touch "$stamp"
echo "$venv"
