#!/usr/bin/env python3
"""PyTorch parity: export a model with torch.onnx.export, run it with
`maskd infer`, and compare every output with what PyTorch computed.

    parity.py --maskd BUILD/server/maskd --work-dir DIR MODEL [MODEL...]
    parity.py --list

Pass criterion per output: max|maskd - torch| <= 1e-3 * max(1, max|torch|).

The models are randomly initialised (weights=None) the way torchvision
initialises them, under a fixed seed, with BatchNorm statistics calibrated on
random data (see calibrate_batchnorm), in eval mode.  Exports and PyTorch's
reference outputs are cached in the work directory (keyed by this script's
text and the torch version), so a rerun only pays for `maskd infer`.
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

SEED = 0
TOLERANCE = 1e-3
THREADS = 2


def rel(x):
    return f"{x:.3g}"


# ---- the models --------------------------------------------------------------


def _segmentation(builder):
    import torch

    class FirstOutput(torch.nn.Module):
        """torchvision's segmentation models return a dict; export wants tensors."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)["out"]

    def make():
        from torchvision.models import segmentation

        kwargs = dict(weights=None, weights_backbone=None)
        if builder != "lraspp_mobilenet_v3_large":
            kwargs["aux_loss"] = False
        return FirstOutput(getattr(segmentation, builder)(**kwargs))

    return make


def _classification(builder, **extra):
    def make():
        import torchvision

        return getattr(torchvision.models, builder)(weights=None, **extra)

    return make


def _ours():
    """A network of our own that exercises what torchvision's models do not:
    GroupNorm, InstanceNorm, LayerNorm over channels, dropout, FiLM, a DUC
    head (PixelShuffle) and an ASPP with image pooling."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def conv_gn(cin, cout, stride=1, groups=4):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(groups, cout), nn.ReLU()
        )

    class ChannelLayerNorm(nn.Module):
        """LayerNorm over C of an NCHW tensor, via a channels-last view."""

        def __init__(self, c):
            super().__init__()
            self.norm = nn.LayerNorm(c)

        def forward(self, x):
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class FiLM(nn.Module):
        """Per-channel scale and shift predicted from the globally pooled input."""

        def __init__(self, c):
            super().__init__()
            self.fc = nn.Linear(c, 2 * c)

        def forward(self, x):
            pooled = x.mean(dim=(2, 3))
            gamma, beta = self.fc(pooled).chunk(2, dim=1)
            return x * (1 + torch.tanh(gamma)[:, :, None, None]) + beta[:, :, None, None]

    class ASPP(nn.Module):
        def __init__(self, cin, cout, rates=(6, 12, 18)):
            super().__init__()
            self.branches = nn.ModuleList(
                [nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())]
                + [
                    nn.Sequential(
                        nn.Conv2d(cin, cout, 3, padding=r, dilation=r, bias=False),
                        nn.BatchNorm2d(cout),
                        nn.ReLU(),
                    )
                    for r in rates
                ]
            )
            self.image_pool = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU()
            )
            self.project = nn.Sequential(
                nn.Conv2d(cout * (len(rates) + 2), cout, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Dropout(0.5),
            )

        def forward(self, x):
            size = x.shape[-2:]
            pooled = F.interpolate(self.image_pool(x), size=size, mode="bilinear", align_corners=False)
            return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))

    class OurSegNet(nn.Module):
        def __init__(self, classes=5, upscale=4):
            super().__init__()
            self.stem = nn.Sequential(conv_gn(3, 16, 2), conv_gn(16, 32, 2))
            self.inorm = nn.Sequential(
                nn.Conv2d(32, 32, 3, padding=1), nn.InstanceNorm2d(32, affine=True), nn.LeakyReLU(0.1)
            )
            self.lnorm = ChannelLayerNorm(32)
            self.film = FiLM(32)
            self.dropout = nn.Dropout2d(0.2)
            self.aspp = ASPP(32, 24)
            self.duc = nn.Sequential(
                nn.Conv2d(24, classes * upscale * upscale, 3, padding=1), nn.PixelShuffle(upscale)
            )
            self.edge = nn.Conv2d(24, 1, 1)

        def forward(self, x):
            f = self.stem(x)
            f = self.lnorm(self.inorm(f))
            f = self.dropout(self.film(f))
            f = self.aspp(f)
            logits = self.duc(f)
            edge = torch.sigmoid(
                F.interpolate(self.edge(f), scale_factor=4.0, mode="bilinear", align_corners=True)
            )
            return logits, edge

    return OurSegNet


# name: (builder, input shape, opset, output names)
MODELS = {
    "deeplabv3_mobilenet_v3_large": (_segmentation("deeplabv3_mobilenet_v3_large"), (1, 3, 512, 512), 13, ["out"]),
    "lraspp_mobilenet_v3_large": (_segmentation("lraspp_mobilenet_v3_large"), (1, 3, 512, 512), 13, ["out"]),
    "fcn_resnet50": (_segmentation("fcn_resnet50"), (1, 3, 512, 512), 13, ["out"]),
    "deeplabv3_resnet50": (_segmentation("deeplabv3_resnet50"), (1, 3, 512, 512), 13, ["out"]),
    "resnet50": (_classification("resnet50"), (1, 3, 224, 224), 13, ["logits"]),
    "resnext50_32x4d": (_classification("resnext50_32x4d"), (1, 3, 224, 224), 13, ["logits"]),
    "wide_resnet50_2": (_classification("wide_resnet50_2"), (1, 3, 224, 224), 13, ["logits"]),
    "densenet121": (_classification("densenet121"), (1, 3, 224, 224), 13, ["logits"]),
    "squeezenet1_1": (_classification("squeezenet1_1"), (1, 3, 224, 224), 13, ["logits"]),
    "googlenet": (
        _classification("googlenet", aux_logits=False, init_weights=True),
        (1, 3, 224, 224),
        13,
        ["logits"],
    ),
    "mobilenet_v2": (_classification("mobilenet_v2"), (1, 3, 224, 224), 13, ["logits"]),
    "vgg11": (_classification("vgg11"), (1, 3, 224, 224), 13, ["logits"]),
    "alexnet": (_classification("alexnet"), (1, 3, 224, 224), 13, ["logits"]),
    "ours": (_ours(), (1, 3, 256, 256), 13, ["logits", "edge/prob"]),
    # The same network at opset 17, where LayerNorm exports as one
    # LayerNormalization node instead of the opset-13 reduce chain.
    "ours_opset17": (_ours(), (1, 3, 256, 256), 17, ["logits", "edge/prob"]),
}


def calibrate_batchnorm(model, shape):
    """Sets BatchNorm running statistics from one training-mode pass over
    random inputs, as training would have.  With the untouched statistics
    (mean 0, var 1) BatchNorm is the identity and, under torchvision's weight
    init, activations drift: mobilenet_v2's logits shrink to 1e-9 (a parity
    test that cannot fail) and resnet50's grow to 1e2.  Calibrated, every
    model's outputs are O(1), like a trained network's.  Weights are untouched."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the calibration pass
    model.train()
    generator = torch.Generator().manual_seed(SEED + 2)
    with torch.no_grad():
        model(torch.randn(2, *shape[1:], generator=generator))


def build(name):
    import torch

    torch.manual_seed(SEED)
    make, shape, _, _ = MODELS[name]
    model = make()
    calibrate_batchnorm(model, shape)
    model.eval()
    generator = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(*shape, generator=generator)
    return model, x


def sanitize(name):
    """The file name `maskd infer` gives an output."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


# ---- export (cached) ---------------------------------------------------------


def cache_key(name):
    import torch
    import torchvision

    with open(os.path.abspath(__file__), "rb") as f:
        script = f.read()
    h = hashlib.sha256(script)
    h.update(f"{name} {torch.__version__} {torchvision.__version__}".encode())
    return h.hexdigest()


def export(name, model_dir):
    """Writes model.onnx, input.npy and ref_<output>.npy; returns the meta dict."""
    import torch

    stamp_path = os.path.join(model_dir, "meta.json")
    key = cache_key(name)
    if os.path.exists(stamp_path):
        with open(stamp_path) as f:
            meta = json.load(f)
        if meta.get("key") == key:
            meta["cached"] = True
            return meta

    os.makedirs(model_dir, exist_ok=True)
    _, _, opset, output_names = MODELS[name]
    model, x = build(name)
    t0 = time.perf_counter()
    with torch.no_grad():
        outputs = model(x)
    torch_seconds = time.perf_counter() - t0
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    assert len(outputs) == len(output_names), (len(outputs), output_names)

    onnx_path = os.path.join(model_dir, "model.onnx")
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(
            model,
            x,
            onnx_path,
            opset_version=opset,
            do_constant_folding=True,
            input_names=["input"],
            output_names=output_names,
        )
    export_seconds = time.perf_counter() - t0

    np.save(os.path.join(model_dir, "input.npy"), x.numpy())
    for out_name, out in zip(output_names, outputs):
        np.save(os.path.join(model_dir, "ref_" + sanitize(out_name) + ".npy"), out.numpy())
    meta = {
        "key": key,
        "outputs": output_names,
        "torch_seconds": torch_seconds,
        "export_seconds": export_seconds,
    }
    with open(stamp_path, "w") as f:
        json.dump(meta, f)
    meta["cached"] = False
    return meta


def float64_noise(name, output_names, fp32_outputs):
    """How far PyTorch's own float32 result is from float64: when that alone
    breaks the tolerance the model is numerically chaotic at this init."""
    import torch

    model, x = build(name)
    model = model.double()
    with torch.no_grad():
        outs = model(x.double())
    if isinstance(outs, torch.Tensor):
        outs = (outs,)
    noise = {}
    for out_name, ref64 in zip(output_names, outs):
        noise[out_name] = float(np.max(np.abs(fp32_outputs[out_name] - ref64.numpy())))
    return noise


# ---- one model ---------------------------------------------------------------


def run_model(name, args):
    import torch

    torch.set_num_threads(THREADS)
    model_dir = os.path.join(args.work_dir, name)
    t_start = time.perf_counter()
    meta = export(name, model_dir)
    prep_seconds = time.perf_counter() - t_start

    out_dir = os.path.join(model_dir, "maskd_out")
    os.makedirs(out_dir, exist_ok=True)
    for f in os.listdir(out_dir):
        os.remove(os.path.join(out_dir, f))
    cmd = [
        args.maskd,
        "infer",
        os.path.join(model_dir, "model.onnx"),
        "--input",
        "input=" + os.path.join(model_dir, "input.npy"),
        "--output-dir",
        out_dir,
        "--threads",
        str(args.threads),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    maskd_seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"parity {name}: FAIL: maskd infer exited with {proc.returncode}")
        print("  command: " + " ".join(cmd))
        sys.stdout.write(proc.stdout)
        sys.stdout.write(proc.stderr)
        return False

    ok = True
    refs = {}
    lines = []
    for out_name in meta["outputs"]:
        ref = np.load(os.path.join(model_dir, "ref_" + sanitize(out_name) + ".npy"))
        refs[out_name] = ref
        got_path = os.path.join(out_dir, sanitize(out_name) + ".npy")
        if not os.path.exists(got_path):
            lines.append(f"  {out_name}: FAIL: maskd wrote no {os.path.basename(got_path)} "
                         f"(files: {sorted(os.listdir(out_dir))})")
            ok = False
            continue
        got = np.load(got_path)
        if got.shape != ref.shape:
            lines.append(f"  {out_name}: FAIL: shape {got.shape}, PyTorch {ref.shape}")
            ok = False
            continue
        if not np.all(np.isfinite(ref)):
            lines.append(f"  {out_name}: FAIL: PyTorch's output is not finite (a bad random init)")
            ok = False
            continue
        peak = float(np.max(np.abs(ref))) if ref.size else 0.0
        bound = TOLERANCE * max(1.0, peak)
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        worst = float(np.nanmax(diff)) if diff.size else 0.0
        if np.any(np.isnan(diff)):
            worst = float("nan")
        passed = worst <= bound  # NaN compares false
        ok &= passed
        where = ""
        if not passed and diff.size:
            idx = np.unravel_index(int(np.nanargmax(diff)) if not np.isnan(worst) else
                                   int(np.argmax(np.isnan(diff))), diff.shape)
            where = f" at {tuple(int(i) for i in idx)}: maskd {got[idx]:.6g}, PyTorch {ref[idx]:.6g}"
        lines.append(f"  {out_name}: {'ok' if passed else 'FAIL'} max|diff| {rel(worst)} "
                     f"(bound {rel(bound)}, max|out| {rel(peak)}, shape {list(ref.shape)}){where}")

    if not ok:
        try:
            noise = float64_noise(name, meta["outputs"], refs)
            for out_name, n in noise.items():
                peak = float(np.max(np.abs(refs[out_name])))
                bound = TOLERANCE * max(1.0, peak)
                verdict = ("PyTorch float32 itself exceeds the bound: numerically chaotic"
                           if n > bound else "below the bound, so the difference is maskd's")
                lines.append(f"  {out_name}: PyTorch float32 vs float64 max|diff| {rel(n)} ({verdict})")
        except Exception as e:  # diagnostics only
            lines.append(f"  (float64 reference failed: {e})")

    cached = " (export cached)" if meta.get("cached") else (
        f" (export {meta['export_seconds']:.1f} s)")
    print(f"parity {name}: {'PASS' if ok else 'FAIL'}  maskd {maskd_seconds:.2f} s, "
          f"PyTorch {meta['torch_seconds']:.2f} s, prepare {prep_seconds:.1f} s{cached}")
    for line in lines:
        print(line)
    if proc.stderr.strip():
        print("  maskd stderr: " + proc.stderr.strip().replace("\n", "\n  "))
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="model names (see --list); 'all' for every one")
    parser.add_argument("--maskd", help="path of the maskd binary")
    parser.add_argument("--work-dir", help="where exports and outputs go")
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--export-only", action="store_true", help="only export (warm the cache)")
    args = parser.parse_args()

    if args.list:
        print("\n".join(MODELS))
        return 0
    names = list(MODELS) if args.models in (["all"], []) else args.models
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; see --list")
    if not args.work_dir or (not args.maskd and not args.export_only):
        parser.error("--work-dir and --maskd are required")

    failed = []
    t0 = time.perf_counter()
    for name in names:
        if args.export_only:
            import torch

            torch.set_num_threads(THREADS)
            meta = export(name, os.path.join(args.work_dir, name))
            print(f"exported {name}" + (" (cached)" if meta["cached"] else f" in {meta['export_seconds']:.1f} s"))
            continue
        if not run_model(name, args):
            failed.append(name)
    if not args.export_only:
        print(f"parity: {len(names) - len(failed)} passed, {len(failed)} failed"
              + (f" ({', '.join(failed)})" if failed else "")
              + f" in {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
