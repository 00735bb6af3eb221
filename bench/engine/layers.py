#!/usr/bin/python3
"""Where a model's convolutions stand against the machine's FMA peak, and node by node
against ONNX Runtime.

    layers.py MODEL_DIR [--threads 1] [--repeat 5] [--nodes 25] [--ort]
              [--maskd build/server/maskd] [--peak GFLOPS]

MODEL_DIR holds model.onnx and input.npy (bench/engine/run.sh's cache, e.g.
build/bench-engine/deeplabv3_resnet50).  Runs `maskd infer --profile` and
prints its slowest nodes with their multiply-adds (flops.py), the GFLOP/s each
reached and that as a share of the peak: by default bench/engine/peak.c's
AVX-512 FMA rate (AVX2 where AVX-512 is absent) at the same thread count (built into MODEL_DIR/../peak by
run.sh).  Multiply-adds are counted densely: an atrous conv whose taps land in
the zero padding is credited with them, so it can show more than the peak.

--ort adds ONNX Runtime's time for the same node (its own profiler: ort_run.js
--profile, the same thread count, warm-up and repeat).  Nodes are matched by
name, or by the value they write: ORT names a node it moved to its blocked
layout after that value (+ "_nchwc"), and a fused chain on either side writes
the chain's last value.  ORT's layout reorders match nothing and are summed
apart.  Both profilers time each node on its own, which adds the same small
cost per node on both sides; compare nodes, not the totals with run.sh's.
"""
import json
import argparse
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flops  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def measured_peak(model_dir, threads):
    binary = os.path.join(os.path.dirname(os.path.abspath(model_dir)), "peak")
    if not os.path.exists(binary):
        subprocess.run(["gcc", "-std=c11", "-O2", "-pthread", os.path.join(HERE, "peak.c"), "-o", binary],
                       check=True)
    out = subprocess.run([binary, str(threads)], capture_output=True, text=True, check=True).stdout
    avx512 = float(re.search(r"AVX-512 ([0-9.]+) GFLOP/s", out).group(1))
    avx2 = float(re.search(r"AVX2 ([0-9.]+) GFLOP/s", out).group(1))
    return (avx512 if avx512 > 0 else avx2), out.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--maskd", default=os.environ.get("MASKD", os.path.join(ROOT, "build/server/maskd")))
    ap.add_argument("--peak", type=float, help="GFLOP/s to compare with (default: measured)")
    ap.add_argument("--nodes", type=int, default=25, help="how many of the slowest nodes (0: all)")
    ap.add_argument("--ort", action="store_true", help="add ONNX Runtime's time per node")
    args = ap.parse_args()

    onnx_path = os.path.join(args.model_dir, "model.onnx")
    x = np.load(os.path.join(args.model_dir, "input.npy"), mmap_mode="r")
    macs = {n.name: m for n, m in flops.count_nodes(onnx_path, ["x".join(map(str, x.shape))])}
    if args.peak:
        peak, how = args.peak, "given"
    else:
        peak, how = measured_peak(args.model_dir, args.threads)
    prof = subprocess.run([args.maskd, "infer", onnx_path, "--input", os.path.join(args.model_dir, "input.npy"),
                           "--threads", str(args.threads), "--repeat", str(args.repeat), "--warmup-ms", "500",
                           "--profile", "--profile-nodes", str(args.nodes)],
                          capture_output=True, text=True, check=True).stdout
    print(prof.splitlines()[0])
    print("peak: %.1f GFLOP/s (%s)" % (peak, how))
    ort = ort_profile(onnx_path, os.path.join(args.model_dir, "input.npy"), args) if args.ort else None
    matched = set()
    print("%-52s %-6s %8s %9s %9s %7s%s" % ("node", "op", "GMACs", "ms/run", "GFLOP/s", "% peak",
                                            "  ORT ms/run  maskd/ORT" if ort else ""))
    rows = prof[prof.index("slowest nodes"):].splitlines()[1:]
    for line in rows:
        row = re.match(r"^(.*?)\s+(\S+)\s+([0-9.]+)\s+(\S*)$", line)
        if not row:
            continue
        name, op, ms, output = row.group(1), row.group(2), float(row.group(3)), row.group(4)
        m = macs.get(name)
        cells = "%-52s %-6s" % (name[-52:], op)
        if not m or ms <= 0:
            cells += " %8s %9.3f %9s %7s" % ("-", ms, "", "")
        else:
            gflops = 2 * m / (ms / 1e3) / 1e9
            cells += " %8.4f %9.3f %9.1f %6.0f%%" % (m / 1e9, ms, gflops, 100 * gflops / peak)
        if ort:
            key = name if name in ort else output if output in ort else None
            if key:
                matched.add(key)
                cells += "  %10.3f  %9.2f" % (ort[key], ms / ort[key] if ort[key] > 0 else float("nan"))
            else:
                cells += "  %10s" % "-"
        print(cells)
    if ort:
        total = sum(ort.values())
        rest = sum(v for k, v in ort.items() if k not in matched)
        print("ORT: %.3f ms/run over all nodes, %.3f of it in nodes not listed above" % (total, rest))


def ort_profile(onnx_path, input_path, args):
    """ONNX Runtime's kernel time per node (ms per timed run), keyed by node name and, for
    the nodes it renamed into its blocked layout, by the value they write."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(["node", os.path.join(HERE, "ort_run.js"), onnx_path,
                              "%s=%s" % (onnx_input_name(onnx_path), input_path),
                              "--threads", str(args.threads), "--repeat", str(args.repeat),
                              "--warmup-ms", "500", "--profile", tmp],
                             capture_output=True, text=True, check=True).stdout
        events = json.load(open(json.loads(out.splitlines()[-1])["profile_file"]))
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    timed = runs[-args.repeat:]
    per_node = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        if not any(a <= e["ts"] <= b for a, b in timed):
            continue
        name = e["name"][:-len("_kernel_time")]
        if name.endswith("_nchwc"):
            name = name[:-len("_nchwc")]
        per_node[name] = per_node.get(name, 0.0) + e["dur"] / 1e3 / len(timed)
    return per_node


def onnx_input_name(onnx_path):
    import onnx
    m = onnx.load(onnx_path, load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in inits][0]


if __name__ == "__main__":
    main()
