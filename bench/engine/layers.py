#!/usr/bin/python3
"""Where a model's convolutions stand against the machine's FMA peak.

    layers.py MODEL_DIR [--threads 1] [--repeat 5] [--maskd build/server/maskd] [--peak GFLOPS]

MODEL_DIR holds model.onnx and input.npy (bench/engine/run.sh's cache, e.g.
build/bench-engine/deeplabv3_resnet50).  Runs `maskd infer --profile` and
prints its slowest nodes with their multiply-adds (flops.py), the GFLOP/s each
reached and that as a share of the peak: by default bench/engine/peak.c's
AVX-512 FMA rate (AVX2 where AVX-512 is absent) at the same thread count (built into MODEL_DIR/../peak by
run.sh).  Multiply-adds are counted densely: an atrous conv whose taps land in
the zero padding is credited with them, so it can show more than the peak.
"""
import argparse
import os
import re
import subprocess
import sys

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
    args = ap.parse_args()

    onnx_path = os.path.join(args.model_dir, "model.onnx")
    x = np.load(os.path.join(args.model_dir, "input.npy"), mmap_mode="r")
    macs = {n.name: m for n, m in flops.count_nodes(onnx_path, ["x".join(map(str, x.shape))])}
    if args.peak:
        peak, how = args.peak, "given"
    else:
        peak, how = measured_peak(args.model_dir, args.threads)
    prof = subprocess.run([args.maskd, "infer", onnx_path, "--input", os.path.join(args.model_dir, "input.npy"),
                           "--threads", str(args.threads), "--repeat", str(args.repeat), "--profile"],
                          capture_output=True, text=True, check=True).stdout
    print(prof.splitlines()[0])
    print("peak: %.1f GFLOP/s (%s)" % (peak, how))
    print("%-52s %-6s %8s %9s %9s %7s" % ("node", "op", "GMACs", "ms/run", "GFLOP/s", "% peak"))
    rows = prof[prof.index("slowest nodes"):].splitlines()[1:]
    for line in rows:
        parts = line.split()
        if len(parts) < 3:
            continue
        name, op, ms = " ".join(parts[:-2]), parts[-2], float(parts[-1])
        m = macs.get(name)
        if m is None:   # the profile cuts long names: take the one node the prefix names
            hits = [v for k, v in macs.items() if k.startswith(name)]
            m = hits[0] if len(hits) == 1 else None
        if not m or ms <= 0:
            print("%-52s %-6s %8s %9.3f" % (name[-52:], op, "-", ms))
            continue
        gflops = 2 * m / (ms / 1e3) / 1e9
        print("%-52s %-6s %8.4f %9.3f %9.1f %6.0f%%" % (name[-52:], op, m / 1e9, ms, gflops, 100 * gflops / peak))


if __name__ == "__main__":
    main()
