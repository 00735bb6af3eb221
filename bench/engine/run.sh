#!/usr/bin/env bash
# maskd vs ONNX Runtime on the same .onnx files and inputs, alternating
# A B A B, printing median latency, the ratio and peak RSS.
#
#   bench/engine/run.sh [--threads "1 2"] [--repeat N] MODEL_DIR...
#
# Each MODEL_DIR holds model.onnx and input.npy (the parity suite's work
# directory has one per model: build/tests/parity/parity-work/<model>).
# ONNX Runtime comes from npm (onnxruntime-node, --ignore-scripts: its CPU
# library ships in the package), installed into bench/engine/node_modules.
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are left as the environment sets them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
maskd=${MASKD:-$root/build/server/maskd}
threads="1 2"
repeat=10
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --threads) threads=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done
[[ $# -gt 0 ]] || { sed -n 2,12p "$0"; exit 64; }
if [[ ! -d $here/node_modules/onnxruntime-node ]]; then
  (cd "$here" && npm install --ignore-scripts --no-save --silent onnxruntime-node >/dev/null)
fi
printf "%-36s %3s %12s %12s %7s %9s %9s\n" model thr "maskd ms" "ORT ms" ratio "maskd MB" "ORT MB"
for dir in "$@"; do
  name=$(basename "$dir")
  input_name=$(/usr/bin/python3 -c "import onnx,sys; m=onnx.load(sys.argv[1]); init={i.name for i in m.graph.initializer}; print([i.name for i in m.graph.input if i.name not in init][0])" "$dir/model.onnx")
  for t in $threads; do
    m1=$("$maskd" infer "$dir/model.onnx" --input "$input_name=$dir/input.npy" --threads "$t" --repeat "$repeat")
    o1=$(node "$here/ort_run.js" "$dir/model.onnx" "$input_name=$dir/input.npy" --threads "$t" --repeat "$repeat")
    m2=$("$maskd" infer "$dir/model.onnx" --input "$input_name=$dir/input.npy" --threads "$t" --repeat "$repeat")
    o2=$(node "$here/ort_run.js" "$dir/model.onnx" "$input_name=$dir/input.npy" --threads "$t" --repeat "$repeat")
    /usr/bin/python3 - "$name" "$t" "$m1" "$m2" "$o1" "$o2" <<'PY'
import json, re, sys
name, t, m1, m2, o1, o2 = sys.argv[1:]
med = lambda s: float(re.search(r"median ([0-9.]+) ms", s).group(1))
rss = lambda s: float(re.search(r"peak RSS ([0-9.]+) MB", s).group(1))
mm = min(med(m1), med(m2))
oo = min(json.loads(o1)["median_ms"], json.loads(o2)["median_ms"])
orss = max(json.loads(o1)["peak_rss_mb"], json.loads(o2)["peak_rss_mb"])
print(f"{name:<36} {t:>3} {mm:12.2f} {oo:12.2f} {mm / oo:7.2f} {max(rss(m1), rss(m2)):9.1f} {orss:9.1f}")
PY
  done
done
