#!/usr/bin/env bash
# Builds maskd and starts it.  The README's first set-up command.
# Until the HTTP daemon lands this runs the engine CLI on a demo network
# (a DeepLab-style ASPP + DUC model of ours, exported with PyTorch).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target maskd
demo=build/demo
if [[ ! -f $demo/ours/model.onnx ]]; then
  /usr/bin/python3 tests/parity/parity.py --export-only --work-dir "$demo" ours
fi
exec build/server/maskd infer "$demo/ours/model.onnx" --input "$demo/ours/input.npy" \
  --output-dir "$demo/out" --threads "$(nproc)" --repeat 10
