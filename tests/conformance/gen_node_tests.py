#!/usr/bin/env python3
"""Generates ONNX's backend test cases (node/, simple/, real/) into OUT_DIR.

Uses the installed onnx package's own generator, so the cases are exactly the
ones that onnx release ships.  Nothing generated is committed; the build tree
holds it.  Re-running is cheap: when OUT_DIR already holds a complete set made
by the same onnx version, nothing is done.
"""
import argparse
import os
import shutil
import sys
import warnings

import numpy as np

# onnx 1.12's test case modules still use aliases that numpy 1.24 removed.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # hasattr on a removed alias warns
    for alias, builtin in (("float", float), ("int", int), ("bool", bool), ("object", object)):
        if not hasattr(np, alias):
            setattr(np, alias, builtin)

import onnx  # noqa: E402  (must come after the aliases)
from onnx.backend.test.cmd_tools import generate_data  # noqa: E402

STAMP = ".generated-by-onnx"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args()

    out_dir = os.path.abspath(args.out_dir)
    stamp = os.path.join(out_dir, STAMP)
    if not args.force and os.path.exists(stamp):
        with open(stamp) as f:
            if f.read().strip() == onnx.__version__:
                return 0

    # Build next to the destination and swap it in, so an interrupted run never
    # leaves a half-filled directory that looks complete.
    tmp_dir = out_dir + ".tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generate_data(argparse.Namespace(output=tmp_dir, op_type=None))
    with open(os.path.join(tmp_dir, STAMP), "w") as f:
        f.write(onnx.__version__ + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.rename(tmp_dir, out_dir)
    n = len(os.listdir(os.path.join(out_dir, "node")))
    print(f"gen_node_tests: {n} node test cases from onnx {onnx.__version__} in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
