#!/usr/bin/env bash
# maskd vs ONNX Runtime (and PyTorch as a reference column) on the same .onnx
# files and inputs.
#
#   bench/engine/run.sh [--threads "1 2"] [--repeat N] [--passes N] [--warmup-ms MS]
#                       [--no-torch] [MODEL...]
#
# MODEL is a directory holding model.onnx and input.npy (e.g. the parity
# suite's build/tests/parity/parity-work/<model>), or one of the names of
# `bench/engine/export.py --list`; with no MODEL the whole default set runs:
#   deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large, deeplabv3_resnet50
#   (1x3x512x512), resnet50, mobilenet_v2 (1x3x224x224), shapes-seg
#   (1x3x320x320), shapes-det-stage1 (1x3x384x384), shapes-det-stage2
#   (roi_features 100x64x14x14).
# A named model lives in $BENCH_ENGINE_CACHE/<name> (default
# build/bench-engine/<name>) and is prepared by export.py when model.onnx or
# input.npy is missing there: torchvision models built with weights=None under
# seed 0, BatchNorm statistics calibrated on random data, eval, exported at
# opset 13 (segmentation ones return only "out"); the shapes models are the
# committed models/*.onnx, linked. Inputs are seeded standard-normal .npy.
# Delete the directory to re-export.
#
# For each model and thread count, maskd (`maskd infer --repeat N`, $MASKD,
# default build/server/maskd), ONNX Runtime (ort_run.js: npm
# onnxruntime-node, --ignore-scripts since its CPU library ships in the
# package, installed into bench/engine/node_modules) and PyTorch (torch_run.py
# under /usr/bin/python3) each run once per pass (--passes, default 3),
# alternating A B C A B C ... so drift in machine load hits all alike; every
# run is a fresh process that warms up (untimed inferences until 500 ms have
# passed, --warmup-ms; at least one) then times N inferences.  The warm-up is
# that long because a fresh process's threads may share one core for its
# first ~100 ms, until the kernel spreads them: 2-thread runs of a few ms
# were then twice as slow for their first dozen inferences. Columns:
#   maskd ms, ORT ms, torch ms  the lowest of the passes' median latencies
#   maskd/ORT                   ratio of those medians (< 1: maskd faster)
#   maskd GFLOP/s               2 x multiply-adds / maskd's median; the
#                               multiply-adds of Conv, ConvTranspose, Gemm and
#                               MatMul, counted by flops.py, head the table
#   maskd MB, ORT MB            peak RSS (the highest of the passes)
#   maskd load ms, ORT load ms  model load (the lowest of the passes): maskd's
#                               graph reading and optimisation, thread pool and
#                               session; ORT's InferenceSession.create
#   rtt ns                      before each pass, the cache-line round trip
#                               between CPUs 0 and 1 (bench/engine/rtt.c): a
#                               VM's vCPUs may sit in one core complex (< 100
#                               ns) or two (several hundred), which moves
#                               multithreaded timings; 2-thread rows only
# torch ms is the torchvision module itself for torchvision models; for
# anything else (the shapes models) it is models/train/onnx_torch.py's
# OnnxGraph, the ONNX graph executed node by node with torch ops, so it
# measures torch's kernels plus Python dispatch, not an optimised runtime.
# "-" marks a run that failed (its error goes to stderr). --no-torch skips
# the torch column.
#
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are left as the environment sets them
# (their values are printed); the header also names the CPU.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
maskd=${MASKD:-$root/build/server/maskd}
cache=${BENCH_ENGINE_CACHE:-$root/build/bench-engine}
python=/usr/bin/python3
threads="1 2"
repeat=10
passes=3
warmup_ms=500
torch=1
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --threads) threads=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --passes) passes=$2; shift 2 ;;
    --warmup-ms) warmup_ms=$2; shift 2 ;;
    --no-torch) torch=0; shift ;;
    --help|-h) sed -n 2,56p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done
mapfile -t known < <("$python" "$here/export.py" --list)
if [[ $# -eq 0 ]]; then
  models=("${known[@]}")
else
  models=("$@")
fi
if [[ ! -d $here/node_modules/onnxruntime-node ]]; then
  (cd "$here" && npm install --ignore-scripts --no-save --silent onnxruntime-node >/dev/null)
fi

dirs=()
for m in "${models[@]}"; do
  if [[ " ${known[*]} " != *" $m "* ]]; then
    dir=$m
  else
    dir=$cache/$m
    if [[ ! -f $dir/model.onnx || ! -f $dir/input.npy ]]; then
      echo "exporting $m into $dir" >&2
      "$python" "$here/export.py" "$m" "$dir"
    fi
  fi
  [[ -f $dir/model.onnx && -f $dir/input.npy ]] || { echo "$dir: no model.onnx + input.npy" >&2; exit 1; }
  dirs+=("$dir")
done

# The one graph input fed from input.npy, and its shape (NAME=1x3x224x224).
input_of() {
  "$python" - "$1" <<'PY'
import sys, numpy as np, onnx
d = sys.argv[1]
m = onnx.load(d + "/model.onnx", load_external_data=False)
init = {i.name for i in m.graph.initializer}
name = [i.name for i in m.graph.input if i.name not in init][0]
print(name + "=" + "x".join(map(str, np.load(d + "/input.npy", mmap_mode="r").shape)))
PY
}

declare -A spec gmacs
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs online"
echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE-(unset)} OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE-(unset)} (left as the environment sets them)"
# the FMA peak the GFLOP/s columns are to be read against (bench/engine/peak.c says how)
mkdir -p "$cache"
gcc -std=c11 -O2 -Wall -Wextra -Werror -pthread "$here/peak.c" -o "$cache/peak"
for t in $threads; do echo "peak: $("$cache/peak" "$t")"; done
gcc -std=c11 -O2 -Wall -Wextra -Werror -pthread "$here/rtt.c" -o "$cache/rtt"
echo "repeat $repeat per run, $passes passes alternating the engines; torch ms: torchvision module, or OnnxGraph (ONNX graph run with torch ops) for other models"
for dir in "${dirs[@]}"; do
  name=$(basename "$dir")
  spec[$dir]=$(input_of "$dir")
  note=""
  g=$("$python" "$here/flops.py" "$dir/model.onnx" "${spec[$dir]}") || note=" (incomplete: some shapes unknown)"
  gmacs[$dir]=${g%% *}
  printf "GMACs %-30s %9s  (input %s)%s\n" "$name" "${gmacs[$dir]}" "${spec[$dir]}" "$note"
done
echo
printf "%-30s %3s %10s %10s %9s %10s %13s %8s %8s %13s %11s  %s\n" model thr "maskd ms" "ORT ms" "maskd/ORT" \
  "torch ms" "maskd GFLOP/s" "maskd MB" "ORT MB" "maskd load ms" "ORT load ms" "rtt ns"
for dir in "${dirs[@]}"; do
  name=$(basename "$dir")
  input=${spec[$dir]%%=*}=$dir/input.npy
  for t in $threads; do
    runs=()
    rtts=()
    for ((pass = 1; pass <= passes; pass++)); do
      if ((t > 1)); then rtts+=("$("$cache/rtt" 2>/dev/null || echo -)"); fi
      runs+=("$("$maskd" infer "$dir/model.onnx" --input "$input" --threads "$t" --repeat "$repeat" --warmup-ms "$warmup_ms" || true)")
      runs+=("$(node "$here/ort_run.js" "$dir/model.onnx" "$input" --threads "$t" --repeat "$repeat" \
                  --warmup-ms "$warmup_ms" || true)")
      if [[ $torch == 1 ]]; then
        runs+=("$("$python" "$here/torch_run.py" "$dir" --threads "$t" --repeat "$repeat" \
                    --warmup-ms "$warmup_ms" || true)")
      else
        runs+=("")
      fi
    done
    rtt=$(IFS=/; echo "${rtts[*]:--}")
    "$python" - "$name" "$t" "${gmacs[$dir]}" "$rtt" "${runs[@]}" <<'PY'
import json, re, sys
name, t, gmacs, rtt = sys.argv[1:5]
runs = sys.argv[5:]
ms, os_, ps = runs[0::3], runs[1::3], runs[2::3]

def maskd(field, s):
    hit = re.search(field + r" ([0-9.]+)", s)
    return float(hit.group(1)) if hit else None

def js(field, s):
    try:
        return json.loads(s.strip().splitlines()[-1])[field]
    except (ValueError, IndexError, KeyError):
        return None

def pick(f, values):
    values = [v for v in values if v is not None]
    return f(values) if values else None

mm = pick(min, [maskd("median", m) for m in ms])
oo = pick(min, [js("median_ms", o) for o in os_])
pp = pick(min, [js("median_ms", p) for p in ps])
cols = [
    (mm, 10, 2), (oo, 10, 2), (mm / oo if mm and oo else None, 9, 2), (pp, 10, 2),
    (2 * float(gmacs) / (mm / 1e3) if mm and gmacs else None, 13, 1),
    (pick(max, [maskd("peak RSS", m) for m in ms]), 8, 1),
    (pick(max, [js("peak_rss_mb", o) for o in os_]), 8, 1),
    (pick(min, [maskd("load", m) for m in ms]), 13, 1),
    (pick(min, [js("load_ms", o) for o in os_]), 11, 1),
]
print(f"{name:<30} {t:>3} " + " ".join(f"{v:{w}.{p}f}" if v is not None else f"{'-':>{w}}" for v, w, p in cols)
      + f"  {rtt}")
PY
  done
done
