#!/usr/bin/env bash
# Builds maskd (Release, build/) and runs the daemon in the foreground: the
# README's first set-up command.  Ctrl-C or SIGTERM drains and stops it.
# Extra arguments go to `maskd serve` (e.g. --port 9000, --threads 2).
#
# Once the shipped models are in the tree (models/shapes-seg.json and its
# graph) it serves config/maskd.json.  Until then (they are still being
# trained) it serves a demo: torchvision's deeplabv3_mobilenet_v3_large with
# RANDOM weights, exported once into build/demo, on 127.0.0.1:8080
# (MASKD_PORT, MASKD_LISTEN, ... override it as they override any config).
set -euo pipefail
cd "$(dirname "$0")/.."

# The graph the card names (files.model), relative to the card.
shipped_models_present() {
  local card=models/shapes-seg.json onnx
  [[ -f $card ]] || return 1
  onnx=$(sed -n 's/.*"model"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$card" | head -n 1)
  [[ -n $onnx ]] || return 1
  [[ $onnx == /* ]] || onnx=models/$onnx
  [[ -f $onnx ]]
}

build() {
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build -j"$(nproc)" --target maskd
}

if shipped_models_present; then
  scripts/install-deps.sh
  build
  exec build/server/maskd serve --config config/maskd.json "$@"
fi

demo=build/demo
if [[ -f $demo/deeplabv3.json && -f $demo/deeplabv3.onnx ]]; then
  scripts/install-deps.sh
else
  scripts/install-deps.sh --test # python3-torch, -torchvision for the export
fi
build

if [[ ! -f $demo/deeplabv3.json || ! -f $demo/deeplabv3.onnx ]]; then
  echo "maskd: exporting the demo model into $demo (once; about a minute)" >&2
  mkdir -p "$demo"
  tmp=$(mktemp -d "$demo/export.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # the README's "Serving your own model" example, without downloading weights.
  if ! /usr/bin/python3 - "$tmp" >"$tmp/export.log" 2>&1 <<'EOF'; then
import json, os, sys
import torch
from torchvision.models import segmentation

out = sys.argv[1]

class Out(torch.nn.Module):  # torchvision returns a dict; ONNX wants tensors
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)["out"]

torch.manual_seed(0)
net = segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None)
torch.onnx.export(Out(net).eval(), torch.zeros(1, 3, 512, 512),
                  os.path.join(out, "deeplabv3.onnx"), opset_version=13,
                  input_names=["input"], output_names=["out"])
card = {
    "name": "deeplabv3",
    "description": "DEMO: torchvision deeplabv3_mobilenet_v3_large with random weights "
                   "(weights=None, seed 0); its masks are noise",
    "pipeline": "segment",
    "files": {"model": "deeplabv3.onnx"},
    "input": {"width": 512, "height": 512, "resize": "keep-aspect", "placement": "top-left",
              "scale": "0..1", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "labels": ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor"],
    "background_class": 0,
}
with open(os.path.join(out, "deeplabv3.json"), "w") as f:
    json.dump(card, f, indent=2)
EOF
    cat "$tmp/export.log" >&2
    echo "maskd: exporting the demo model failed" >&2
    exit 1
  fi
  mv "$tmp/deeplabv3.onnx" "$demo/deeplabv3.onnx"
  mv "$tmp/deeplabv3.json" "$demo/deeplabv3.json" # last: it marks the export done
  rm -rf "$tmp"
  trap - EXIT
fi

cat >"$demo/maskd.json" <<'EOF'
{
  "_comment": "Written by scripts/serve.sh: the demo served until the shapes models ship.",
  "models": {"deeplabv3": "deeplabv3.json"},
  "listen": "127.0.0.1",
  "port": 8080
}
EOF
echo "maskd: serving a DEMO model, deeplabv3 (torchvision deeplabv3_mobilenet_v3_large, VOC labels) with RANDOM weights: its masks are noise. The shipped shapes models are still being trained and are not in the repository yet." >&2
exec build/server/maskd serve --config "$demo/maskd.json" "$@"
