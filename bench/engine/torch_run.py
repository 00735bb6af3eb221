#!/usr/bin/python3
"""PyTorch's latency on a benchmark model directory (see export.py); prints
one JSON line like ort_run.js.

    torch_run.py MODEL_DIR [--threads N] [--repeat N] [--warmup-ms MS]

torchvision models (meta.json source "torchvision") run as the torch module
itself: the same constructor with the weights export.py saved in model.pt.
Anything else runs model.onnx through models/train/onnx_torch.py's OnnxGraph,
i.e. the ONNX graph executed node by node with torch ops (it covers the
shapes models' operators only; anything else fails with exit status 1).
"""
import json
import os
import resource
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "models", "train"))


def load(model_dir):
    meta_path = os.path.join(model_dir, "meta.json")
    meta = {}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    if meta.get("source") == "torchvision":
        import export

        module = export.make_torchvision(meta["model"])
        module.load_state_dict(torch.load(os.path.join(model_dir, "model.pt")))
        return module.eval(), "torchvision"
    from onnx_torch import OnnxGraph

    return OnnxGraph(os.path.join(model_dir, "model.onnx")), "onnx_torch"


def main(argv):
    args = argv[1:]
    threads, repeat, warmup_ms, model_dir = 1, 10, 0.0, None
    i = 0
    while i < len(args):
        if args[i] == "--threads":
            threads, i = int(args[i + 1]), i + 2
        elif args[i] == "--repeat":
            repeat, i = int(args[i + 1]), i + 2
        elif args[i] == "--warmup-ms":
            warmup_ms, i = float(args[i + 1]), i + 2
        elif model_dir is None:
            model_dir, i = args[i], i + 1
        else:
            sys.stderr.write(__doc__)
            return 64
    if model_dir is None or repeat < 1:
        sys.stderr.write(__doc__)
        return 64
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model, source = load(model_dir)
    load_ms = (time.perf_counter() - t0) * 1e3
    x = torch.from_numpy(np.load(os.path.join(model_dir, "input.npy")))
    times = []
    with torch.no_grad():
        w0 = time.perf_counter()
        model(x)  # warm-up: at least one run, then more until warmup_ms have passed
        while (time.perf_counter() - w0) * 1e3 < warmup_ms:
            model(x)
        for _ in range(repeat):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    print(json.dumps({"runtime": f"torch {torch.__version__} ({source})", "threads": threads,
                      "load_ms": load_ms, "min_ms": times[0], "median_ms": times[len(times) // 2],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Exception as e:  # the column shows "-"; say why on stderr
        sys.stderr.write(f"torch_run: {type(e).__name__}: {e}\n")
        sys.exit(1)
