#!/usr/bin/python3
"""Prepares one benchmark model directory: model.onnx, input.npy, meta.json.

    export.py NAME DIR
    export.py --list

torchvision models are built with weights=None under seed 0 and exported at
opset 13 (segmentation models wrapped to return only ["out"]); their weights
also go to model.pt so torch_run.py times the very same module.  maskd's
shipped shapes models are linked as they are, with a seeded random input.
"""
import json
import os
import sys

import numpy as np

SEED = 0
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

# name: (constructor kind, input shape, output names)
TORCHVISION = {
    "deeplabv3_mobilenet_v3_large": ("segmentation", (1, 3, 512, 512), ["out"]),
    "lraspp_mobilenet_v3_large": ("segmentation", (1, 3, 512, 512), ["out"]),
    "deeplabv3_resnet50": ("segmentation", (1, 3, 512, 512), ["out"]),
    "resnet50": ("classification", (1, 3, 224, 224), ["logits"]),
    "mobilenet_v2": ("classification", (1, 3, 224, 224), ["logits"]),
}

# name: (committed file, input shape); R = 100 regions of interest for stage 2.
SHAPES = {
    "shapes-seg": ("models/shapes-seg.onnx", (1, 3, 320, 320)),
    "shapes-det-stage1": ("models/shapes-det-stage1.onnx", (1, 3, 384, 384)),
    "shapes-det-stage2": ("models/shapes-det-stage2.onnx", (100, 64, 14, 14)),
}

DEFAULT_SET = list(TORCHVISION) + list(SHAPES)


def make_torchvision(name):
    """The bare constructor (random init under whatever seed is current)."""
    import torch
    import torchvision

    kind = TORCHVISION[name][0]
    if kind == "classification":
        return getattr(torchvision.models, name)(weights=None)

    class OutOnly(torch.nn.Module):
        """Segmentation models return a dict; export wants tensors."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)["out"]

    # weights_backbone defaults to ImageNet weights: None keeps it offline and random.
    kwargs = dict(weights=None, weights_backbone=None)
    if name != "lraspp_mobilenet_v3_large":
        kwargs["aux_loss"] = False
    return OutOnly(getattr(torchvision.models.segmentation, name)(**kwargs))


def calibrate_batchnorm(model, shape):
    """BatchNorm statistics from one training-mode pass over random data.
    Left at mean 0 / var 1, activations of these random-init networks shrink
    to ~1e-9 (mobilenet_v2) and run into denormals, which would time the
    CPU's slow path instead of the engine."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    if not norms:
        return
    model.train()
    generator = torch.Generator().manual_seed(SEED + 2)
    with torch.no_grad():
        model(torch.randn(2, *shape[1:], generator=generator))


def seeded_input(shape):
    return np.random.default_rng(SEED + 1).standard_normal(shape, dtype=np.float32)


def export_torchvision(name, out_dir):
    import warnings

    import torch

    # torch 1.13's exporter warns about its own internals (prim::Constant shape inference).
    warnings.filterwarnings("ignore", category=UserWarning)
    _, shape, output_names = TORCHVISION[name]
    torch.manual_seed(SEED)
    model = make_torchvision(name)
    calibrate_batchnorm(model, shape)
    model.eval()
    x = seeded_input(shape)
    torch.save(model.state_dict(), os.path.join(out_dir, "model.pt"))
    # Written under a temporary name so an interrupted export is not taken for a cached one.
    tmp = os.path.join(out_dir, "model.onnx.tmp")
    with torch.no_grad():
        torch.onnx.export(model, torch.from_numpy(x), tmp, opset_version=13, do_constant_folding=True,
                          input_names=["input"], output_names=output_names)
    os.replace(tmp, os.path.join(out_dir, "model.onnx"))
    return x


def link_shapes(name, out_dir):
    path, shape = SHAPES[name]
    link = os.path.join(out_dir, "model.onnx")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(os.path.join(ROOT, path), link)
    return seeded_input(shape)


def main(argv):
    if argv[1:] == ["--list"]:
        print("\n".join(DEFAULT_SET))
        return 0
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 64
    name, out_dir = argv[1:]
    os.makedirs(out_dir, exist_ok=True)
    if name in TORCHVISION:
        x, source = export_torchvision(name, out_dir), "torchvision"
    elif name in SHAPES:
        x, source = link_shapes(name, out_dir), "onnx"
    else:
        sys.stderr.write(f"export.py: unknown model '{name}' (see --list)\n")
        return 64
    np.save(os.path.join(out_dir, "input.npy"), x)
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump({"model": name, "source": source, "input_shape": list(x.shape), "seed": SEED}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
