#!/usr/bin/python3
"""One operator at a time, maskd against ONNX Runtime.

    ops.py [--threads 1] [--repeat 20] [--elements 2097152] [--maskd build/server/maskd] [OP ...]

Each op runs as a one-node model on a [1, N] float tensor (Softmax on
[N / 1024, 1024], along the last axis; Sqrt and Log on positive values; the
Sigmoid+Mul row is x * Sigmoid(x), which maskd fuses only into an op before
it, so here it runs as two), written to a temporary
directory with Debian's onnx.  Prints maskd's median latency of the whole run
(`maskd infer`) and ONNX Runtime's kernel time per run from its own profiler
(layers.py's ort_profile, the same warm-up and repeat): ORT's whole run would
add copying the output into JavaScript, several ms at this size, so this
comparison leans towards ORT.  The ops are elementwise ones outside
bench/engine/run.sh's models, whose loops the engine vectorizes itself.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import layers  # noqa: E402
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_OPS = ["Relu", "Sigmoid", "Sigmoid+Mul", "Tanh", "Erf", "HardSwish", "HardSigmoid", "Sqrt",
               "Exp", "Log", "Softmax"]


def model(op, elements, path):
    shape = [elements // 1024, 1024] if op == "Softmax" else [1, elements]
    if op == "Sigmoid+Mul":
        nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    elif op == "Softmax":
        nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=-1)]
    else:
        nodes = [helper.make_node(op, ["x"], ["y"])]
    g = helper.make_graph(nodes, op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    if op in ("Sqrt", "Log"):
        x = np.abs(x) + 0.1
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ops", nargs="*", default=DEFAULT_OPS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--elements", type=int, default=2097152)
    ap.add_argument("--maskd", default=os.environ.get("MASKD", os.path.join(ROOT, "build/server/maskd")))
    args = ap.parse_args()
    print("%-12s %10s %10s %9s   (%d floats, %d thread%s, median of %d)" % (
        "op", "maskd ms", "ORT ms", "maskd/ORT", args.elements, args.threads,
        "" if args.threads == 1 else "s", args.repeat))
    with tempfile.TemporaryDirectory() as tmp:
        for op in args.ops:
            path, npy = os.path.join(tmp, op + ".onnx"), os.path.join(tmp, op + ".npy")
            np.save(npy, model(op, args.elements, path))
            out = subprocess.run([args.maskd, "infer", path, "--input", npy, "--threads", str(args.threads),
                                  "--repeat", str(args.repeat), "--warmup-ms", "300"],
                                 capture_output=True, text=True, check=True).stdout
            ms = float(re.search(r"median ([0-9.]+) ms", out).group(1))
            ort = sum(layers.ort_profile(path, npy, args).values())
            print("%-12s %10.3f %10.3f %9.2f" % (op, ms, ort, ms / ort), flush=True)


if __name__ == "__main__":
    sys.exit(main())
