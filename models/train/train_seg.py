#!/usr/bin/python3
"""Train, evaluate and export shapes-seg: a DeepLab-style segmenter with a DUC head.

    nice -n 19 /usr/bin/python3 models/train/train_seg.py            # train + eval + export
    /usr/bin/python3 models/train/train_seg.py --eval-only           # re-measure the checkpoint
    /usr/bin/python3 models/train/train_seg.py --export-only         # re-export the checkpoint

Network: depthwise-separable backbone (output stride 8, HDC dilations 1,2,5 twice) -> ASPP
with GroupNorm (1x1, atrous 6/12/18, image pooling) -> decoder at /4 (ASPP output upsampled x2
+ the backbone's /4 features) -> DUC (1x1 conv to classes * 4 * 4 channels, PixelShuffle(4) =
ONNX DepthToSpace CRD) -> logits at the input resolution.

Training draws a pool of generated images once on every core, then trains on random crops and
turns of them with the cores to itself (drawing an image costs as much as a step on it).
"""
import argparse
import json
import math
import os
import shutil
import sys
import time

import numpy as np

# OpenMP's threads spin between parallel regions instead of sleeping: a shapes-seg step takes
# 0.46 s so against 0.56 s (idle 2-core VM, 200-step runs; the losses are the same bit for bit,
# the policy only moves time).  On a machine shared with other work, OMP_WAIT_POLICY=PASSIVE
# in the environment overrides it: spinning then burns CPU the others need.  Set before torch
# starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
import torch  # noqa: E402
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import generate  # noqa: E402

SIZE = 320
NUM_CLASSES = 5
UPSCALE = 4
ASPP_RATES = (6, 12, 18)


class SegNet(nn.Module):
    """Backbone (/4 and /8 features) -> ASPP on /8 -> decoder at /4: the ASPP output upsampled
    x2 (bilinear) and concatenated with the projected /4 features (boundaries are where a
    DUC from /8 alone went wrong most: a sixth of each class's union was within 1.5 input
    pixels of a true edge) -> DUC: 1x1 conv to classes * 4 * 4 channels, PixelShuffle(4)."""

    def __init__(self):
        super().__init__()
        self.backbone = common.Backbone()
        self.aspp = common.ASPP(self.backbone.channels, 64, 128, rates=ASPP_RATES)
        self.low_project = common.conv_bn(self.backbone.low_channels, 32, 1)
        c = 128 + 32
        self.decoder = nn.Sequential(
            common.conv_bn(c, c, 3, groups=c), common.conv_bn(c, 64, 1),
            common.conv_bn(64, 64, 3, groups=64), common.conv_bn(64, 64, 1))
        self.duc = nn.Sequential(nn.Conv2d(64, NUM_CLASSES * UPSCALE * UPSCALE, 1), nn.PixelShuffle(UPSCALE))

    def forward(self, x):
        low, high = self.backbone(x)
        context = F.interpolate(self.aspp(high), scale_factor=2, mode="bilinear", align_corners=False)
        return self.duc(self.decoder(torch.cat([context, self.low_project(low)], 1)))


def letterboxed(sample, rng):
    """One generated image as the network sees it (resampled to the letterboxed size by a random
    method) and its class map at that size, both uint8 -- what the training pool keeps."""
    rgb, new_w, new_h = common.preprocess_train(sample, SIZE, rng)
    target = common.class_map_at_input(sample["classes"], new_w, new_h)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8), target.astype(np.uint8)


def make_view(rgb, target, rng, crop=0):
    """A training view of a letterboxed image: one of the 8 turns of the square, placed
    top-left in the padded input; with `crop`, a random crop x crop window of it (mostly over
    the image, not its padding) -- the DeepLab recipe: the network is fully convolutional, and
    a crop costs a fraction of the full input to train on."""
    rgb, target = common.dihedral([rgb, target], int(rng.integers(0, 8)))
    x = common.normalize_pad(rgb.astype(np.float32), SIZE)
    y = np.zeros((SIZE, SIZE), np.int64)
    y[:target.shape[0], :target.shape[1]] = target
    if crop:
        h, w = target.shape
        x0 = int(rng.integers(0, max(0, w - crop) + 1))
        y0 = int(rng.integers(0, max(0, h - crop) + 1))
        x = np.ascontiguousarray(x[:, y0:y0 + crop, x0:x0 + crop])
        y = np.ascontiguousarray(y[y0:y0 + crop, x0:x0 + crop])
    return x, y


def batches(pool, batch, crop, rng):
    while True:
        views = [make_view(*pool[int(i)], rng, crop) for i in rng.integers(0, len(pool), batch)]
        yield (torch.from_numpy(np.stack([v[0] for v in views])),
               torch.from_numpy(np.stack([v[1] for v in views])))


def dice_loss(logits, target):
    prob = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(target, NUM_CLASSES).permute(0, 3, 1, 2)[:, 1:].float()
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1 - ((2 * inter + 1) / (denom + 1)).mean()


def pixel_loss(logits, target, hard_share):
    """Cross-entropy over all pixels, or (hard_share > 0) over that share of the pixels the
    model gets most wrong (online hard example mining): the errors that remain late in
    training are shape interiors on busy backgrounds and small shapes, a few percent of the
    pixels, which a mean over every pixel all but ignores."""
    ce = F.cross_entropy(logits, target, reduction="none").reshape(-1)
    if hard_share <= 0:
        return ce.mean()
    return ce.topk(max(1, int(hard_share * ce.numel()))).values.mean()


def predict(model, jpeg):
    """The reference inference path: preprocess, run, crop the valid region, bilinear
    upsample (half-pixel) to the original size, argmax."""
    x, info = common.preprocess(jpeg, SIZE)
    with torch.no_grad():
        logits = model(x)[:, :, :info["new_h"], :info["new_w"]]
        logits = F.interpolate(logits, size=(info["height"], info["width"]), mode="bilinear",
                               align_corners=False)
    return logits[0].argmax(0).numpy().astype(np.uint8)


def evaluate(model, seed, count, log=print):
    model.eval()
    stream = generate.ShapesStream(seed)
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    t0 = time.time()
    for i in range(count):
        s = stream.sample(i, decode=False)
        pred = predict(model, s["jpeg"])
        conf += np.bincount(s["classes"].reshape(-1).astype(np.int64) * NUM_CLASSES + pred.reshape(-1),
                            minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    iou = inter / np.maximum(union, 1)
    res = {"miou_foreground": float(iou[1:].mean()), "miou_all": float(iou.mean()),
           "iou": {common.CLASSES[k]: float(iou[k]) for k in range(NUM_CLASSES)},
           "pixel_accuracy": float(inter.sum() / conf.sum()),
           "eval_seed": seed, "eval_images": count}
    log("eval seed %d, %d images, %.0f s: mIoU(fg) %.4f  %s" % (
        seed, count, time.time() - t0, res["miou_foreground"],
        " ".join("%s %.4f" % kv for kv in res["iou"].items())))
    return res


def export(model, path):
    model.eval()
    dummy = torch.zeros(1, 3, SIZE, SIZE)
    torch.onnx.export(model, dummy, path, opset_version=13, input_names=["input"],
                      output_names=["logits"], do_constant_folding=True)
    import onnx
    m = onnx.load(path)
    onnx.checker.check_model(m)
    onnx.shape_inference.infer_shapes(m, strict_mode=True)
    return sorted({n.op_type for n in m.graph.node})


def write_card(path, args, metrics, train_info, ops):
    card = {
        "name": "shapes-seg",
        "description": "DeepLab-style semantic segmenter for maskd's synthetic shapes: "
                       "depthwise-separable backbone (output stride 8, HDC dilations 1,2,5 twice), "
                       "ASPP with GroupNorm (rates 6,12,18), decoder at stride 4 with the backbone's "
                       "stride-4 features, DUC head (PixelShuffle 4).",
        "pipeline": "segment",
        "files": {"model": "shapes-seg.onnx"},
        "input": {"name": "input", "shape": [1, 3, SIZE, SIZE], "layout": "NCHW", "dtype": "float32",
                  "color": "RGB", "width": SIZE, "height": SIZE,
                  "resize": "keep-aspect", "resize_filter": "bilinear",
                  "resize_notes": "s = min(320/W, 320/H); new_w = clamp(floor(W*s+0.5),1,320), same for "
                                  "new_h; JPEG DCT-scaled decode to the smallest size >= new_w x new_h, then "
                                  "bilinear (half-pixel, align_corners=false) to exactly new_w x new_h. "
                                  "Trained with several resampling filters, so any sane resize works.",
                  "placement": "top-left",
                  "pad_value": [123.675, 116.28, 103.53],
                  "pad_value_notes": "0..255 scale = the mean, i.e. 0.0 in the normalized tensor",
                  "scale": "0..255", "mean": common.MEAN.tolist(), "std": common.STD.tolist(),
                  "normalize": "x = (pixel - mean) / std, pixel in 0..255"},
        "labels": common.CLASSES,
        "background_class": 0,
        "outputs": {"logits": {"shape": [1, NUM_CLASSES, SIZE, SIZE],
                               "meaning": "per-class logits at input resolution (class index = channel); "
                                          "crop [0:new_h, 0:new_w], bilinear-upsample (half-pixel) to H x W "
                                          "of the original image, argmax over channels"}},
        "postprocess": {"upsample": "bilinear-logits", "alternatives": ["argmax-nearest"],
                        "crop_valid_region": True},
        "onnx": {"opset": 13, "ops": ops},
        "training": {"seed": args.seed, "reproduce": "models/train/reproduce.sh",
                     "command": "/usr/bin/python3 models/train/train_seg.py "
                     + " ".join(args.reproduce), **train_info},
        "accuracy": {"pytorch": metrics, "maskd": None,
                     "notes": "pytorch = the reference path in train_seg.py (PIL draft decode, bilinear "
                              "resize, torch forward, bilinear logit upsample) on JPEG files of "
                              "models/shapes/generate.py --seed %d; IoU accumulated over the whole set "
                              "per class, mIoU = mean over circle, square, triangle, star"
                              % metrics.get("eval_seed", -1)},
    }
    with open(path, "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1, help="training data stream + init seed")
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pool", type=int, default=8000, help="generated images the training views are drawn from")
    ap.add_argument("--procs", type=int, default=2, help="processes that draw the pool")
    ap.add_argument("--eval-seed", type=int, default=1000)
    ap.add_argument("--eval-count", type=int, default=300)
    ap.add_argument("--val-every", type=int, default=1000)
    ap.add_argument("--checkpoint", default="/tmp/maskd-train/seg.pt")
    ap.add_argument("--out-dir", default=common.MODELS)
    ap.add_argument("--snapshot-at", type=int, default=500,
                    help="also keep the checkpoint of this step (train_det.py starts its backbone from it)")
    ap.add_argument("--crop", type=int, default=224,
                    help="train on random crop x crop windows of the %d x %d input (0 = whole input)" % (SIZE, SIZE))
    ap.add_argument("--hard-pixels", type=float, default=0.0,
                    help="cross-entropy over this share of the hardest pixels only (0 = all pixels)")
    common.add_phase_args(ap)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--export-only", action="store_true")
    args = ap.parse_args()
    args.reproduce = [a for a in sys.argv[1:] if a not in ("--resume", "--eval-only", "--export-only")]
    common.set_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(os.path.dirname(args.checkpoint), exist_ok=True)
    log = lambda *a: print(time.strftime("%H:%M:%S"), *a, flush=True)

    model = SegNet()
    log("parameters: %.2f M" % (sum(p.numel() for p in model.parameters()) / 1e6))
    state = {"step": 0, "seconds": 0.0}
    if args.resume or args.eval_only or args.export_only:
        ck = torch.load(args.checkpoint)
        model.load_state_dict(ck["model"])
        state = ck["state"]
    elif args.init_from:
        common.init_from(model, args.init_from, state, log)

    if not (args.eval_only or args.export_only):
        state.setdefault("command", " ".join(["models/train/train_seg.py"] + args.reproduce))
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=args.pct_start)
        if args.resume:
            opt.load_state_dict(ck["opt"])
            sched.load_state_dict(ck["sched"])
        t_pool = time.time()
        pool = common.draw_pool(args.seed, args.data_start, args.pool, letterboxed, args.procs, log)
        state["pool_seconds"] = state.get("pool_seconds", 0.0) + time.time() - t_pool
        data = batches(pool, args.batch, args.crop, np.random.default_rng([args.seed, state["step"], 11]))
        model.to(memory_format=torch.channels_last)   # depthwise convs are ~5x faster so on CPU
        model.train()
        t_start, run_loss = time.time() - state["seconds"], None
        for x, y in data:
            if state["step"] >= args.steps:
                break
            logits = model(x.to(memory_format=torch.channels_last))
            loss = pixel_loss(logits, y, args.hard_pixels) + 0.5 * dice_loss(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            state["step"] += 1
            run_loss = loss.item() if run_loss is None else 0.98 * run_loss + 0.02 * loss.item()
            if state["step"] % 50 == 0:
                el = time.time() - t_start
                log("step %d/%d loss %.4f lr %.2e %.2f s/step, elapsed %.0f min" % (
                    state["step"], args.steps, run_loss, sched.get_last_lr()[0],
                    el / state["step"], el / 60))
            if state["step"] % 250 == 0 or state["step"] == args.steps:
                state["seconds"] = time.time() - t_start
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                            "sched": sched.state_dict(), "state": state}, args.checkpoint)
                if state["step"] == args.snapshot_at:
                    shutil.copyfile(args.checkpoint, args.checkpoint.replace(".pt", "-step%d.pt" % args.snapshot_at))
            if args.val_every and state["step"] % args.val_every == 0 and state["step"] < args.steps:
                evaluate(model, 999, 40, log)
                model.train()
        state["seconds"] = time.time() - t_start
        log("training done: %d steps in %.1f min" % (state["step"], state["seconds"] / 60))
        model = model.to(memory_format=torch.contiguous_format)

    onnx_path = os.path.join(args.out_dir, "shapes-seg.onnx")
    ops = export(model, onnx_path)
    log("exported %s (%.2f MB), ops: %s" % (onnx_path, os.path.getsize(onnx_path) / 1e6, " ".join(ops)))
    if args.export_only:
        metrics = json.load(open(os.path.join(args.out_dir, "shapes-seg.json")))["accuracy"]["pytorch"]
    else:
        metrics = evaluate(model, args.eval_seed, args.eval_count, log)
    train_info = {"steps": state["step"], "batch": args.batch, "crop": args.crop or SIZE,
                  "images_drawn": args.pool, "views_seen": state["step"] * args.batch,
                  "train_minutes": round(state["seconds"] / 60, 1),
                  "pool_minutes": round(state.get("pool_seconds", 0.0) / 60, 1), "threads": args.threads,
                  "previous_phase": state.get("previous")}
    write_card(os.path.join(args.out_dir, "shapes-seg.json"), args, metrics, train_info, ops)
    log("card written")


if __name__ == "__main__":
    main()
