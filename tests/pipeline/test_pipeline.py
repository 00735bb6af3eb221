#!/usr/bin/python3
"""Pipeline tests through `maskd predict` (engine/pipeline, config/card.c, server/respond.c).

  test_pipeline.py --maskd build/server/maskd --work-dir DIR [--only NAME]

- preprocessing: maskd's dumped input tensor equals a numpy reference (keep-aspect
  top-left / centred, stretch);
- a torchvision deeplabv3_mobilenet_v3_large export (weights=None, seeded) served from a
  card alone: its raw logits equal PyTorch's on the same input, the class map equals
  PyTorch's crop + bilinear upsample + argmax, the JSON has the answer's shape;
- coordinates: a white square drawn at a known place comes back as the segment's box,
  from PNG and DCT-scaled JPEG, with coarse logits, centred and stretched inputs;
- dense detection on a graph with known candidate boxes: NMS methods, mapping back,
  a method the outputs cannot support is a clear error;
- hostile images (corrupt, truncated, empty, 1x1, 20000x20000 headers, CMYK, greyscale,
  progressive JPEG, 16-bit / palette / alpha PNG): a correct answer or a clear error;
- card errors name the key.
Prints one line per check and "N passed, M failed".
"""
import argparse
import base64
import io
import json
import math
import os
import subprocess
import sys
import traceback

import numpy as np

sys.dont_write_bytecode = True  # imports from the source tree must not litter it

VOC = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
       "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
       "sheep", "sofa", "train", "tvmonitor"]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
results = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print(f"{'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""), flush=True)
    return ok


# ---------------------------------------------------------------------------- helpers

def predict(args, image, card, *extra, dump=None):
    cmd = [args.maskd, "predict", image, "--model", card, "--threads", "2", *extra]
    if dump:
        cmd += ["--dump-dir", dump]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    doc = None
    try:
        doc = json.loads(p.stdout)
    except ValueError:
        pass
    return p.returncode, doc, p.stderr


def rle_decode(counts_str, h, w):
    """pycocotools' compressed counts -> h x w uint8 mask."""
    counts, p, s = [], 0, counts_str.encode()
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = s[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    flat = np.zeros(h * w, np.uint8)
    pos, val = 0, 0
    for c in counts:
        flat[pos:pos + c] = val
        pos += c
        val ^= 1
    assert pos == h * w, (pos, h * w)
    return flat.reshape(w, h).T


def class_map_from_doc(doc):
    h, w = doc["image"]["height"], doc["image"]["width"]
    cmap = np.zeros((h, w), np.int32)
    for s in doc["segments"]:
        m = rle_decode(s["mask"]["counts"], *s["mask"]["size"])
        cmap[m.astype(bool)] = s["class_id"]
    return cmap


def letterbox(W, H, in_w, in_h, resize="keep-aspect", placement="top-left"):
    if resize == "stretch":
        nw, nh = in_w, in_h
    else:
        s = min(in_w / W, in_h / H)
        nw = min(in_w, max(1, int(math.floor(W * s + 0.5))))
        nh = min(in_h, max(1, int(math.floor(H * s + 0.5))))
    ox, oy = ((in_w - nw) // 2, (in_h - nh) // 2) if placement == "center" else (0, 0)
    return nw, nh, ox, oy


def bilinear_np(img, nw, nh):
    """Half-pixel bilinear without antialiasing, in float32, as torch's interpolate."""
    H, W = img.shape[:2]

    def taps(n_in, n_out):
        scale = np.float32(n_in) / np.float32(n_out)
        src = np.maximum(scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
        i0 = np.minimum(src.astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        l1 = (src - i0).astype(np.float32)
        return i0, i1, np.float32(1) - l1, l1

    x0, x1, wx0, wx1 = taps(W, nw)
    y0, y1, wy0, wy1 = taps(H, nh)
    f = img.astype(np.float32)
    top = wx0[None, :, None] * f[y0][:, x0] + wx1[None, :, None] * f[y0][:, x1]
    bot = wx0[None, :, None] * f[y1][:, x0] + wx1[None, :, None] * f[y1][:, x1]
    return wy0[:, None, None] * top + wy1[:, None, None] * bot


def preprocess_np(rgb, in_w, in_h, scale, mean, std, resize="keep-aspect", placement="top-left",
                  pad=None):
    H, W = rgb.shape[:2]
    nw, nh, ox, oy = letterbox(W, H, in_w, in_h, resize, placement)
    mean, std = np.float32(mean), np.float32(std)
    pad = mean / np.float32(scale) if pad is None else np.float32(pad)
    out = np.empty((3, in_h, in_w), np.float32)
    out[:] = ((pad * np.float32(scale) - mean) / std)[:, None, None]
    r = bilinear_np(rgb, nw, nh)
    out[:, oy:oy + nh, ox:ox + nw] = ((r * np.float32(scale) - mean) / std).transpose(2, 0, 1)
    return out[None], (nw, nh, ox, oy)


def write_card(path, **card):
    with open(path, "w") as f:
        json.dump(card, f, indent=2)
    return path


def make_onnx(path, nodes, inputs, outputs, inits=(), opset=13):
    import onnx
    from onnx import helper
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(m)
    onnx.save(m, path)
    return path


def threshold_model(path, h, w, stride=1):
    """logits[1] = red - 0.5, logits[0] = 0 (red in 0..1): class 1 where the image is
    bright red-channel.  stride > 1 average-pools first (coarse logits)."""
    from onnx import TensorProto, helper, numpy_helper
    wt = np.zeros((2, 3, 1, 1), np.float32)
    wt[1, 0] = 1
    b = np.array([0, -0.5], np.float32)
    nodes, src = [], "input"
    if stride > 1:
        nodes.append(helper.make_node("AveragePool", ["input"], ["pooled"],
                                      kernel_shape=[stride, stride], strides=[stride, stride]))
        src = "pooled"
    nodes.append(helper.make_node("Conv", [src, "w", "b"], ["logits"]))
    return make_onnx(path, nodes,
                     [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, w])],
                     [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                    [1, 2, h // stride, w // stride])],
                     [numpy_helper.from_array(wt, "w"), numpy_helper.from_array(b, "b")])


def threshold_card(path, model, h, w, **input_extra):
    inp = {"width": w, "height": h, "scale": "0..1", "mean": [0, 0, 0], "std": [1, 1, 1],
           "pad_value": 0}
    inp.update(input_extra)
    return write_card(path, name="thresh", pipeline="segment", files={"model": model},
                      input=inp, labels=["background", "bright"], background_class=0)


def square_image(W, H, box, mode="RGB"):
    from PIL import Image
    a = np.zeros((H, W, 3), np.uint8)
    a[:, :, 1] = 40  # a dim green background: red channel 0
    x1, y1, x2, y2 = box
    a[y1:y2, x1:x2] = 255
    return Image.fromarray(a).convert(mode) if mode != "RGB" else Image.fromarray(a)


# ---------------------------------------------------------------------------- cases

def case_torchvision(args):
    """The user-model path: a torchvision export served from a card alone."""
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torchvision.models import segmentation
    work = os.path.join(args.work_dir, "tv")
    os.makedirs(work, exist_ok=True)
    H, W = 256, 320
    onnx_path = os.path.join(work, "deeplabv3_mobilenet_v3_large.onnx")

    class Out(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)["out"]

    # A non-square image with structure, in a lossless format.
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:389, 0:517]
    img = np.stack([(xx * 255 / 516), (yy * 255 / 388), 128 + 100 * np.sin(xx / 17.0)], -1)
    img += rng.normal(0, 20, img.shape)
    img[100:220, 150:330] = [250, 30, 30]
    rgb = np.clip(img, 0, 255).astype(np.uint8)
    png = os.path.join(work, "scene.png")
    Image.fromarray(rgb).save(png)

    torch.manual_seed(0)
    torch.set_num_threads(2)
    net = segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, aux_loss=False)
    # At its random init the network answers one class everywhere (its logits hardly vary
    # over the image).  Perturbed batch-norm statistics, a louder classifier and biases that
    # centre each class's logits on this image give a class map with many segments, which
    # exercises far more of the pipeline.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        net.classifier[-1].weight.mul_(30)
        net.classifier[-1].bias.zero_()
    model = Out(net.eval()).eval()
    x_np, _ = preprocess_np(rgb, W, H, 1 / 255, IMAGENET_MEAN, IMAGENET_STD)
    with torch.no_grad():
        centre = model(torch.from_numpy(x_np)).mean(dim=(0, 2, 3))
        net.classifier[-1].bias.sub_(centre)
    torch.onnx.export(model, torch.zeros(1, 3, H, W), onnx_path, opset_version=13,
                      input_names=["input"], output_names=["out"])
    card = write_card(os.path.join(work, "deeplabv3-voc.json"),
                      name="deeplabv3-voc", pipeline="segment",
                      files={"model": "deeplabv3_mobilenet_v3_large.onnx"},
                      input={"width": W, "height": H, "resize": "keep-aspect",
                             "placement": "top-left", "scale": "0..1",
                             "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
                      labels=VOC, background_class=0)
    dump = os.path.join(work, "dump")
    rc, doc, err = predict(args, png, card, dump=dump)
    if not check("torchvision: maskd predict runs from the card", rc == 0 and doc is not None,
                 err.strip()[-300:]):
        return
    x = np.load(os.path.join(dump, "input.npy"))
    ref_x, (nw, nh, _, _) = preprocess_np(rgb, W, H, 1 / 255, IMAGENET_MEAN, IMAGENET_STD)
    d = float(np.max(np.abs(x - ref_x)))
    check("torchvision: input tensor equals the numpy reference", x.shape == ref_x.shape and d < 1e-4,
          f"max|diff| {d:.2e}, resized to {nw}x{nh}")
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = np.load(os.path.join(dump, "out.npy"))
    peak = float(np.max(np.abs(ref)))
    d = float(np.max(np.abs(got - ref)))
    check("torchvision: logits equal PyTorch's on the same input",
          got.shape == ref.shape and d <= 1e-3 * peak + 1e-5,
          f"max|diff| {d:.2e}, max|logit| {peak:.3g}, shape {list(got.shape)}")

    # The reference inference path: crop the valid region, bilinear to the original, argmax.
    with torch.no_grad():
        up = F.interpolate(torch.from_numpy(ref[:, :, :nh, :nw]), size=rgb.shape[:2],
                           mode="bilinear", align_corners=False)[0]
    top2 = torch.topk(up, 2, dim=0).values
    margin = (top2[0] - top2[1]).numpy()
    ref_map = up.argmax(0).numpy()
    got_map = class_map_from_doc(doc)
    sure = margin > 1e-3
    agree = float(np.mean(got_map[sure] == ref_map[sure]))
    check("torchvision: class map equals crop + bilinear upsample + argmax",
          agree >= 0.9999, f"agreement {agree:.6f} on {int(sure.sum())} pixels with a margin")

    ok = (doc.get("model") == "deeplabv3-voc" and doc["image"] == {"width": 517, "height": 389}
          and all(k in doc["timing_ms"] for k in ("decode", "queue", "infer", "post")))
    segs = doc.get("segments", [])
    for s in segs:
        m = rle_decode(s["mask"]["counts"], *s["mask"]["size"])
        ys, xs = np.nonzero(m)
        ok &= s["mask"]["size"] == [389, 517] and s["label"] == VOC[s["class_id"]]
        ok &= s["class_id"] != 0 and s["area"] == int(m.sum())
        ok &= s["box"] == [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    check("torchvision: answer JSON shape (model, image, segments, timing_ms)", ok and len(segs) > 0,
          f"{len(segs)} segments")

    present = sorted(s["class_id"] for s in segs)
    rc, doc_f, _ = predict(args, png, card, "--classes", ",".join(map(str, present[:2])))
    check("torchvision: class filter keeps only the asked classes",
          rc == 0 and [s["class_id"] for s in doc_f["segments"]] == present[:2])

    rc, doc_png, _ = predict(args, png, card, "--format", "png")
    ok = rc == 0 and "class_map" in doc_png and all("mask" not in s for s in doc_png["segments"])
    if ok:
        pm = np.asarray(Image.open(io.BytesIO(base64.b64decode(doc_png["class_map"]["png"]))))
        ok = pm.shape == got_map.shape and np.array_equal(pm.astype(np.int32), got_map)
    check("torchvision: format=png gives the same class map as a palette PNG", ok)

    rc, doc_poly, _ = predict(args, png, card, "--format", "polygons")
    ok = rc == 0 and len(doc_poly["segments"]) == len(segs)
    for s in doc_poly.get("segments", []) if ok else []:
        rings = s.get("polygons")
        ok &= bool(rings) and all(len(r) >= 6 and len(r) % 2 == 0 for r in rings)
        xs = [v for r in rings for v in r[0::2]]
        ys = [v for r in rings for v in r[1::2]]
        ok &= abs(min(xs) - s["box"][0]) <= 1 and abs(max(ys) - s["box"][3]) <= 1
    check("torchvision: format=polygons gives rings within the boxes", ok)

    rc, _, err = predict(args, png, card, "--repeat", "2", "--workers", "3", "--format", "polygons")
    check("torchvision: 3 workers at once give identical answers",
          rc == 0 and "every answer identical" in err, err.strip()[-200:])

    rc, doc_nn, _ = predict(args, png, card, "--upsample", "argmax-nearest")
    if rc == 0:
        with torch.no_grad():
            low = torch.from_numpy(ref[:, :, :nh, :nw]).argmax(1, keepdim=True).float()
            nn_ref = F.interpolate(low, size=rgb.shape[:2], mode="nearest")[0, 0].numpy()
        agree = float(np.mean(class_map_from_doc(doc_nn) == nn_ref))
    check("torchvision: argmax-nearest equals argmax then nearest upsampling",
          rc == 0 and agree >= 0.999, f"agreement {agree:.5f}" if rc == 0 else "")


def case_preprocess(args):
    from PIL import Image
    work = os.path.join(args.work_dir, "pre")
    os.makedirs(work, exist_ok=True)
    H, W = 96, 128
    model = threshold_model(os.path.join(work, "t.onnx"), H, W)
    rng = np.random.default_rng(5)
    for iw, ih in [(301, 77), (50, 200), (128, 96), (1, 1), (640, 480)]:
        rgb = rng.integers(0, 256, (ih, iw, 3), dtype=np.uint8)
        png = os.path.join(work, f"r{iw}x{ih}.png")
        Image.fromarray(rgb).save(png)
        for resize, place in [("keep-aspect", "top-left"), ("keep-aspect", "center"), ("stretch", "top-left")]:
            card = threshold_card(os.path.join(work, "c.json"), "t.onnx", H, W, resize=resize,
                                  placement=place, scale="0..255", mean=[123.675, 116.28, 103.53],
                                  std=[58.395, 57.12, 57.375], pad_value=[10, 20, 30])
            dump = os.path.join(work, "dump")
            rc, doc, err = predict(args, png, card, dump=dump)
            if rc != 0:
                check(f"preprocess {iw}x{ih} {resize} {place}", False, err.strip())
                continue
            x = np.load(os.path.join(dump, "input.npy"))
            ref, _ = preprocess_np(rgb, W, H, 1.0, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375],
                                   resize, place, pad=[10, 20, 30])
            d = float(np.max(np.abs(x - ref)))
            check(f"preprocess {iw}x{ih} {resize} {place}: equals numpy", d < 1e-4, f"max|diff| {d:.2e}")
    # BGR input: channels swapped, mean/std in the tensor's order.
    rgb = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    png = os.path.join(work, "bgr.png")
    Image.fromarray(rgb).save(png)
    card = threshold_card(os.path.join(work, "c.json"), "t.onnx", H, W, color="BGR",
                          mean=[0.1, 0.2, 0.3], std=[0.5, 0.6, 0.7])
    rc, doc, err = predict(args, png, card, dump=os.path.join(work, "dump"))
    x = np.load(os.path.join(work, "dump", "input.npy")) if rc == 0 else None
    ref, _ = preprocess_np(rgb[:, :, ::-1], W, H, 1 / 255, [0.1, 0.2, 0.3], [0.5, 0.6, 0.7], pad=0)
    check("preprocess BGR: equals numpy", rc == 0 and float(np.max(np.abs(x - ref))) < 1e-4, err.strip())


def case_coordinates(args):
    work = os.path.join(args.work_dir, "coords")
    os.makedirs(work, exist_ok=True)
    H, W = 320, 320
    threshold_model(os.path.join(work, "t.onnx"), H, W)
    threshold_model(os.path.join(work, "t4.onnx"), H, W, stride=4)
    cases = [
        # image size, square box, format, card extras, model, tolerance
        ((640, 480), (100, 150, 200, 260), "png", {}, "t.onnx", 1),
        ((480, 640), (37, 411, 301, 600), "png", {}, "t.onnx", 1),
        ((640, 480), (100, 150, 200, 260), "png", {"placement": "center"}, "t.onnx", 1),
        ((640, 480), (100, 150, 200, 260), "png", {"resize": "stretch"}, "t.onnx", 1),
        ((1280, 960), (200, 300, 400, 520), "jpg", {}, "t.onnx", 3),
        ((2000, 1000), (1500, 100, 1900, 700), "jpg", {"placement": "center"}, "t.onnx", 4),
        ((640, 480), (96, 152, 200, 264), "png", {}, "t4.onnx", 4),
        ((333, 517), (10, 20, 300, 100), "png", {"placement": "center"}, "t4.onnx", 4),
    ]
    for (iw, ih), box, fmt, extra, model, tol in cases:
        path = os.path.join(work, f"sq{iw}x{ih}.{fmt}")
        img = square_image(iw, ih, box)
        img.save(path, quality=95) if fmt == "jpg" else img.save(path)
        card = threshold_card(os.path.join(work, "c.json"), model, H, W, **extra)
        rc, doc, err = predict(args, path, card)
        name = f"coords {iw}x{ih} {fmt} {model} {extra or ''} square {list(box)}"
        if rc != 0 or not doc:
            check(name, False, err.strip())
            continue
        segs = doc["segments"]
        got = segs[0]["box"] if len(segs) == 1 else None
        ok = got is not None and all(abs(g - b) <= tol for g, b in zip(got, box))
        ok &= doc["image"] == {"width": iw, "height": ih}
        check(name, ok, f"box {got}")


def dense_model(path, rows, h=320, w=320):
    from onnx import TensorProto, helper, numpy_helper
    rows = np.asarray(rows, np.float32)[None]
    nodes = [
        helper.make_node("Slice", ["input", "s0", "s1"], ["px"]),
        helper.make_node("Reshape", ["px", "shape"], ["px3"]),
        helper.make_node("Mul", ["px3", "zero"], ["z"]),
        helper.make_node("Add", ["z", "rows"], ["detections"]),
    ]
    inits = [numpy_helper.from_array(np.zeros(4, np.int64), "s0"),
             numpy_helper.from_array(np.ones(4, np.int64), "s1"),
             numpy_helper.from_array(np.array([1, 1, 1], np.int64), "shape"),
             numpy_helper.from_array(np.zeros((1, 1, 1), np.float32), "zero"),
             numpy_helper.from_array(rows, "rows")]
    return make_onnx(path, nodes,
                     [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, w])],
                     [helper.make_tensor_value_info("detections", TensorProto.FLOAT, list(rows.shape))],
                     inits)


def case_dense(args):
    work = os.path.join(args.work_dir, "dense")
    os.makedirs(work, exist_ok=True)
    rows = [[10, 10, 60, 60, 0.9, 0.05, 0.0],
            [12, 12, 62, 62, 0.8, 0.1, 0.0],
            [100, 50, 200, 150, 0.1, 0.7, 0.0],
            [300, 200, 330, 260, 0.0, 0.0, 0.6],
            [0, 0, 5, 5, 0.01, 0.02, 0.03]]
    dense_model(os.path.join(work, "d.onnx"), rows)
    card = write_card(os.path.join(work, "d.json"), name="dense", pipeline="detect-dense",
                      files={"model": "d.onnx"},
                      input={"width": 320, "height": 320, "mean": 0, "std": 1},
                      labels=["cat", "dog", "bird"],
                      dense={"output": "detections", "box_format": "xyxy"},
                      nms={"default": {"method": "hard", "iou": 0.5, "score_threshold": 0.05,
                                       "max_detections": 100},
                           "max_detections_limit": 1000})
    img = os.path.join(work, "img.png")
    square_image(640, 480, (0, 0, 1, 1)).save(img)
    rc, doc, err = predict(args, img, card)
    want = [([20, 20, 120, 120], 0.9, 0), ([200, 100, 400, 300], 0.7, 1), ([600, 400, 640, 480], 0.6, 2)]
    ok = rc == 0 and doc is not None and len(doc["detections"]) == 3
    if ok:
        for d, (box, score, cls) in zip(doc["detections"], want):
            ok &= all(abs(a - b) < 1e-3 for a, b in zip(d["box"], box))
            ok &= abs(d["score"] - score) < 1e-5 and d["class_id"] == cls
            ok &= d["label"] == ["cat", "dog", "bird"][cls]
        ok &= doc["nms"]["method"] == "hard" and doc["nms"]["max_detections"] == 100
    check("dense: hard NMS, boxes back in original pixels, clipped", ok,
          err.strip() if rc else json.dumps(doc.get("detections"))[:300])

    rc, doc, err = predict(args, img, card, "--nms", "soft-gaussian", "--sigma", "0.5")
    ok = rc == 0 and len(doc["detections"]) == 4 and doc["nms"]["method"] == "soft-gaussian"
    if ok:
        iou = (48 * 48) / (50 * 50 * 2 - 48 * 48)
        b = doc["detections"][-1] if doc["detections"][-1]["score"] < 0.6 else None
        ok = b is not None and abs(b["score"] - 0.8 * math.exp(-iou * iou / 0.5)) < 1e-4
    check("dense: soft-gaussian decays the overlapping box", ok, err.strip())

    for method in ["hard", "soft-linear", "soft-gaussian", "weighted", "diou", "matrix", "cluster"]:
        rc, doc, err = predict(args, img, card, "--nms", method)
        check(f"dense: nms={method} runs", rc == 0 and len(doc["detections"]) >= 3, err.strip())
    rc, doc, err = predict(args, img, card, "--class-agnostic", "--iou", "0.01")
    check("dense: class-agnostic", rc == 0 and len(doc["detections"]) == 3 and doc["nms"]["class_agnostic"])
    rc, doc, err = predict(args, img, card, "--max-detections", "1")
    check("dense: max_detections", rc == 0 and len(doc["detections"]) == 1)
    rc, doc, err = predict(args, img, card, "--classes", "1,2")
    check("dense: class filter", rc == 0 and sorted(d["class_id"] for d in doc["detections"]) == [1, 2])
    rc, doc, err = predict(args, img, card, "--classes", "dog,bird", "--nms", "soft-linear")
    check("dense: classes by label, soft-linear with its own iou default",
          rc == 0 and sorted(d["class_id"] for d in doc["detections"]) == [1, 2]
          and doc["nms"]["iou"] == 0.3 and doc["nms"]["score_threshold"] == 0.05, err.strip())
    rc, doc, err = predict(args, img, card, "--classes", "dog,fish")
    check("dense: unknown label is a clear error", rc == 2 and doc and "fish" in doc["error"])
    rc, doc, err = predict(args, img, card, "--iou", "0.4", "--iou", "0.6")
    check("dense: an option given twice is a clear error", rc == 2 and doc and "twice" in doc["error"])
    rc, doc, err = predict(args, img, card, "--nms", "softer")
    check("dense: softer NMS without variances is a clear error",
          rc == 2 and doc and doc.get("code") == "invalid_parameter" and "softer" in doc["error"]
          and "variances" in doc["error"], doc and doc.get("error"))
    rc, doc, err = predict(args, img, card, "--nms", "nosuch")
    check("dense: unknown method is a clear error", rc == 2 and doc and "nosuch" in doc["error"])
    rc, doc, err = predict(args, img, card, "--iou", "2")
    check("dense: iou=2 is a clear error", rc == 2 and doc and "iou" in doc["error"])
    rc, doc, err = predict(args, img, card, "--max-detections", "5000")
    check("dense: max_detections above the card's limit is a clear error",
          rc == 2 and doc and "max_detections" in doc["error"])

    # cxcywh, normalized, transposed ([K, N]) with objectness and sigmoid scores.
    rows2 = np.array([[35 / 320, 35 / 320, 50 / 320, 50 / 320, 4.0, 3.0, -3.0, -5.0]], np.float32)
    dense_model(os.path.join(work, "d2.onnx"), rows2.T)
    card2 = write_card(os.path.join(work, "d2.json"), name="dense2", pipeline="dense",
                       files={"model": "d2.onnx"},
                       input={"width": 320, "height": 320, "mean": 0, "std": 1},
                       labels=["cat", "dog", "bird"],
                       dense={"box_format": "cxcywh", "normalized": True, "transposed": True,
                              "objectness": True, "activation": "sigmoid"})
    rc, doc, err = predict(args, img, card2)
    sig = lambda v: 1 / (1 + math.exp(-v))
    ok = rc == 0 and len(doc["detections"]) == 1
    if ok:
        d = doc["detections"][0]
        ok = (all(abs(a - b) < 1e-2 for a, b in zip(d["box"], [20, 20, 120, 120]))
              and abs(d["score"] - sig(4) * sig(3)) < 1e-4 and d["class_id"] == 0)
    check("dense: cxcywh, normalized, transposed, objectness, sigmoid", ok,
          err.strip() if rc else json.dumps(doc)[:300])


def case_hostile(args):
    """Every odd image gives a correct answer or a clear error."""
    from PIL import Image
    work = os.path.join(args.work_dir, "hostile")
    os.makedirs(work, exist_ok=True)
    H = W = 160
    threshold_model(os.path.join(work, "t.onnx"), H, W)
    card = threshold_card(os.path.join(work, "c.json"), "t.onnx", H, W)
    box = (40, 30, 120, 90)
    base = square_image(200, 150, box)
    files = {}

    def save(name, img, **kw):
        p = os.path.join(work, name)
        img.save(p, **kw)
        files[name] = p
        return p

    good_jpeg = save("base.jpg", base, quality=92)
    save("grey.jpg", base.convert("L"), quality=92)
    save("cmyk.jpg", base.convert("CMYK"), quality=92)
    save("progressive.jpg", base, quality=92, progressive=True)
    save("palette.png", base.convert("P"))
    save("alpha.png", base.convert("RGBA"))
    save("grey_alpha.png", base.convert("LA"))
    a16 = (np.asarray(base.convert("L")).astype(np.uint16) * 257)
    save("grey16.png", Image.fromarray(a16.astype(np.uint16)))
    # A 16-bit RGB PNG, written by hand (PIL cannot).
    import struct
    import zlib

    def png_chunk(t, data):
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)

    def png_bytes(w, h, depth, ctype, raw_rows):
        return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
                + png_chunk(b"IDAT", zlib.compress(raw_rows)) + png_chunk(b"IEND", b""))

    rgb16 = (np.asarray(base).astype(">u2") * 257)
    raw = b"".join(b"\x00" + rgb16[y].tobytes() for y in range(rgb16.shape[0]))
    p = os.path.join(work, "rgb16.png")
    open(p, "wb").write(png_bytes(200, 150, 16, 2, raw))
    files["rgb16.png"] = p
    expect_ok = ["base.jpg", "grey.jpg", "cmyk.jpg", "progressive.jpg", "palette.png", "alpha.png",
                 "grey_alpha.png", "grey16.png", "rgb16.png"]
    for name in expect_ok:
        rc, doc, err = predict(args, files[name], card)
        got = doc["segments"][0]["box"] if rc == 0 and doc and len(doc["segments"]) == 1 else None
        ok = got is not None and all(abs(g - b) <= 2 for g, b in zip(got, box))
        ok &= bool(doc) and doc.get("image") == {"width": 200, "height": 150}
        check(f"hostile {name}: correct answer", ok, err.strip() or f"box {got}")

    one = save("one.png", Image.new("RGB", (1, 1), (255, 0, 0)))
    rc, doc, err = predict(args, one, card)
    ok = rc == 0 and doc["image"] == {"width": 1, "height": 1}
    ok &= ok and len(doc["segments"]) == 1 and doc["segments"][0]["box"] == [0, 0, 1, 1]
    check("hostile 1x1 PNG: correct answer", ok, err.strip())
    one_j = save("one.jpg", Image.new("RGB", (1, 1), (255, 255, 255)))
    rc, doc, err = predict(args, one_j, card)
    check("hostile 1x1 JPEG: correct answer", rc == 0 and doc["image"] == {"width": 1, "height": 1}, err.strip())

    data = open(good_jpeg, "rb").read()
    errors = {}
    errors["empty.jpg"] = b""
    errors["truncated.jpg"] = data[: len(data) * 3 // 5]
    errors["header_only.jpg"] = data[:300]
    corrupt = bytearray(data)
    rng = np.random.default_rng(9)
    start = len(data) // 3
    corrupt[start:start + 400] = rng.integers(0, 256, 400, dtype=np.uint8).tobytes()
    errors["corrupt.jpg"] = bytes(corrupt)
    errors["garbage.bin"] = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    # Decompression bombs: headers claiming 20000 x 20000.
    sof = data.find(b"\xff\xc0")
    bomb = bytearray(data)
    bomb[sof + 5:sof + 9] = struct.pack(">HH", 20000, 20000)
    errors["bomb.jpg"] = bytes(bomb)
    errors["bomb.png"] = png_bytes(20000, 20000, 8, 2, b"\x00" * 10)[:-12]
    pngdata = open(files["palette.png"], "rb").read()
    errors["truncated.png"] = pngdata[: len(pngdata) // 2]
    errors["gif.gif"] = b"GIF89a" + b"\x01\x00\x01\x00" + b"\x00" * 20
    codes = {"empty.jpg": {"empty_image"}, "bomb.jpg": {"image_too_large"}, "bomb.png": {"image_too_large"},
             "gif.gif": {"unsupported_media_type"}, "garbage.bin": {"unsupported_media_type"}}
    for name, blob in errors.items():
        p = os.path.join(work, name)
        open(p, "wb").write(blob)
        rc, doc, err = predict(args, p, card)
        want = codes.get(name, {"invalid_image", "truncated_image"})
        ok = rc == 2 and doc is not None and doc.get("code") in want and bool(doc.get("error"))
        # A corrupt stretch inside entropy data may still decode (libjpeg resyncs); then it
        # must be a well-formed answer.
        if name == "corrupt.jpg" and rc == 0:
            ok = doc is not None and doc.get("image") == {"width": 200, "height": 150}
        check(f"hostile {name}: clear error", ok, f"exit {rc}, {json.dumps(doc)[:160]}")


def match_detections(ref, got, iou_min, score_tol):
    """Pairs each reference detection with an unused maskd one of the same class whose box
    IoU >= iou_min and score is within score_tol.  Returns [(ref, got)]."""
    def iou(a, b):
        ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = ix * iy
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0
    used, pairs = set(), []
    for r in ref:
        for j, g in enumerate(got):
            if j in used or g["class_id"] != r["class_id"] or abs(g["score"] - r["score"]) > score_tol:
                continue
            if iou(r["box"], g["box"]) >= iou_min:
                used.add(j)
                pairs.append((r, g))
                break
    return pairs


def two_stage_modules(seed):
    """shapes-det's two networks with seeded random weights, perturbed so that features
    vary over the image and class scores spread (a plain init gives near-ties everywhere)."""
    import torch
    sys.path.insert(0, os.path.join(REPO, "models", "train"))
    import train_det
    torch.manual_seed(seed)
    s1, s2 = train_det.Stage1().eval(), train_det.Stage2().eval()
    with torch.no_grad():
        for m in s1.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        s1.rpn_head.cls_logits.weight.mul_(30)
        s2.cls.weight.normal_(0, 0.5)
        s2.deltas.weight.normal_(0, 0.01)
    return train_det, s1, s2


def shapes_pngs(generate, seed, count, work, prefix):
    """Shapes images as PNG files (lossless, so maskd and PyTorch see the same pixels)."""
    from PIL import Image
    stream = generate.ShapesStream(seed)
    paths = []
    for i in range(count):
        sample = stream.sample(i, decode=False)
        paths.append(os.path.join(work, f"{prefix}{i}.png"))
        Image.open(io.BytesIO(sample["jpeg"])).convert("RGB").save(paths[-1])
    return paths


def every_nms_method(args, image, card, what):
    """Each NMS method the card allows runs through the pipeline and keeps boxes in the image."""
    for method in json.load(open(card))["nms"]["allowed"]:
        rc, doc, err = predict(args, image, card, "--nms", method)
        ok = rc == 0 and doc["nms"]["method"] == method and len(doc["detections"]) > 0
        ok = ok and all(0 <= d["box"][0] <= d["box"][2] <= doc["image"]["width"] for d in doc["detections"])
        check(f"{what}: nms={method} runs", ok, err.strip())


def compare_two_stage(args, train_det, s1, s2, card, images, strict, what=""):
    """maskd predict vs train_det.infer() (hard NMS) on PNG files (lossless, so both sides
    see the same pixels)."""
    total = matched = mask_bad = 0
    worst = []
    for png in images:
        ref, info = train_det.infer(s1, s2, open(png, "rb").read())
        rc, doc, err = predict(args, png, card)
        if rc != 0:
            return check(f"two-stage {os.path.basename(png)}: maskd runs", False, err.strip())
        got = doc["detections"]
        pairs = match_detections(ref, got, 0.99, 1e-3)
        total += len(ref)
        matched += len(pairs)
        if strict and len(got) != len(ref):
            worst.append(f"{os.path.basename(png)}: {len(got)} detections, PyTorch {len(ref)}")
        for r, g in pairs:
            m = rle_decode(g["mask"]["counts"], *g["mask"]["size"]).astype(bool)
            diff = int((m != r["mask"]).sum())
            if diff > max(2, 0.01 * r["mask"].sum()):
                mask_bad += 1
        if len(pairs) < len(ref):
            worst.append(f"{os.path.basename(png)}: {len(pairs)}/{len(ref)} matched")
    need = 1.0 if strict else 0.9
    ok = total > 0 and matched >= need * total and mask_bad == 0 and not (strict and worst)
    return check(f"two-stage {what or 'random-weight model'}: detections equal "
                 f"PyTorch's infer() (IoU >= 0.99, |score diff| <= 1e-3, masks)", ok,
                 f"{matched}/{total} matched, {mask_bad} masks differ; " + "; ".join(worst[:4]))


def case_two_stage(args):
    import torch
    from PIL import Image
    work = os.path.join(args.work_dir, "two_stage")
    os.makedirs(work, exist_ok=True)
    torch.set_num_threads(2)
    train_det, s1, s2 = two_stage_modules(0)
    ops, _ = train_det.export(s1, s2, work)

    class Args:
        seed = 0
        reproduce = []
    card = os.path.join(work, "shapes-det.json")
    train_det.write_card(card, Args, {"eval_seed": -1}, {}, ops)
    images = shapes_pngs(train_det.generate, 4242, 6, work, "img")
    compare_two_stage(args, train_det, s1, s2, card, images, strict=False)
    every_nms_method(args, images[0], card, "two-stage")
    # A stage-2 graph with a fixed ROI count gets the ROIs in padded batches.
    c = json.load(open(card))
    c["stage2"]["batch"] = 7
    batched = write_card(os.path.join(work, "batched.json"), **c)
    rc, doc, err = predict(args, images[1], card)
    rc2, doc2, err2 = predict(args, images[1], batched)
    same = rc == 0 and rc2 == 0 and len(doc["detections"]) == len(doc2["detections"]) and all(
        max(abs(u - v) for u, v in zip(a["box"], b["box"])) <= 0.02
        and abs(a["score"] - b["score"]) <= 2e-5 and a["mask"] == b["mask"]
        for a, b in zip(doc["detections"], doc2["detections"]))
    check("two-stage: stage-2 batches of 7 ROIs give the same answer", same, err + err2)
    rc, doc, err = predict(args, images[0], card, "--iou", "0.99")
    check("two-stage: iou outside the card's limits is a clear error",
          rc == 2 and doc and "iou" in doc["error"], doc and doc.get("error"))
    rc, doc, err = predict(args, images[0], card, "--format", "polygons", "--max-detections", "5")
    check("two-stage: polygons for instance masks", rc == 0 and len(doc["detections"]) == 5
          and all(isinstance(d.get("polygons"), list) and "mask" not in d for d in doc["detections"])
          and any(d["polygons"] for d in doc["detections"]), err.strip())
    rc, doc, err = predict(args, images[0], card, "--format", "png", "--max-detections", "3")
    ok = rc == 0 and len(doc["detections"]) == 3
    if ok:
        for d in doc["detections"]:
            m = np.asarray(Image.open(io.BytesIO(base64.b64decode(d["mask"]["png"]))))
            ok &= m.shape == (doc["image"]["height"], doc["image"]["width"])
    check("two-stage: format=png instance masks", ok, err.strip())
    rc, doc, err = predict(args, images[0], card, "--repeat", "3", "--workers", "3")
    check("two-stage: 3 workers at once give identical answers", rc == 0 and "every answer identical" in err,
          err.strip()[-200:])
    rc, doc, err = predict(args, images[0], card, "--render", os.path.join(work, "render.png"))
    check("two-stage: --render writes a PNG", rc == 0 and os.path.getsize(os.path.join(work, "render.png")) > 0)

    # The shipped model: its committed graphs run by torch ops (models/train/onnx_torch.py) through
    # train_det.infer() -- on any checkout -- and, when the training checkpoint is at hand (the
    # trainer's machine), the PyTorch modules themselves.
    shipped = os.path.join(REPO, "models", "shapes-det.json")
    if not os.path.exists(shipped):
        print("SKIP two-stage shipped model: models/shapes-det.json is missing")
        return
    images = shapes_pngs(train_det.generate, 777, 20, work, "shipped")
    import onnx_torch
    g1 = onnx_torch.OnnxGraph(os.path.join(REPO, "models", "shapes-det-stage1.onnx"))
    g2 = onnx_torch.OnnxGraph(os.path.join(REPO, "models", "shapes-det-stage2.onnx"))
    compare_two_stage(args, train_det, g1, g2, shipped, images, strict=True, what="shipped graphs (torch ops)")
    every_nms_method(args, images[0], shipped, "shipped shapes-det")
    ckpt = os.environ.get("MASKD_DET_CHECKPOINT", "/tmp/maskd-train/det.pt")
    if os.path.exists(ckpt):
        ck = torch.load(ckpt)
        det = train_det.Detector()
        det.load_state_dict(ck["model"])
        compare_two_stage(args, train_det, det.stage1.eval(), det.stage2.eval(), shipped, images,
                          strict=True, what=f"training checkpoint {ckpt}")
    else:
        print(f"SKIP two-stage training checkpoint: {ckpt} (MASKD_DET_CHECKPOINT) is not here")


def case_shapes_seg(args):
    """shapes-seg's own card and export code (models/train/train_seg.py) with seeded random
    weights: maskd's class map equals the training code's reference predict()."""
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, os.path.join(REPO, "models", "train"))
    import train_seg
    work = os.path.join(args.work_dir, "shapes_seg")
    os.makedirs(work, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = train_seg.SegNet().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ops = train_seg.export(model, os.path.join(work, "shapes-seg.onnx"))

    class Args:
        seed = 0
        reproduce = []
    card = os.path.join(work, "shapes-seg.json")
    train_seg.write_card(card, Args, {"eval_seed": -1}, {}, ops)
    worst = 1.0
    for png in shapes_pngs(train_seg.generate, 4243, 4, work, "img"):
        data = open(png, "rb").read()
        x, info = train_seg.common.preprocess(data, train_seg.SIZE)
        with torch.no_grad():
            logits = model(x)[:, :, :info["new_h"], :info["new_w"]]
            up = F.interpolate(logits, size=(info["height"], info["width"]), mode="bilinear",
                               align_corners=False)[0]
        top2 = torch.topk(up, 2, dim=0).values
        sure = (top2[0] - top2[1]).numpy() > 1e-3
        ref = up.argmax(0).numpy()
        rc, doc, err = predict(args, png, card)
        if rc != 0:
            check("shapes-seg card: maskd predict runs", False, err.strip())
            return
        got = class_map_from_doc(doc)
        worst = min(worst, float(np.mean(got[sure] == ref[sure])))
    check("shapes-seg card + export: class map equals train_seg's reference predict()",
          worst >= 0.9999, f"worst agreement {worst:.6f}")


def case_cards(args):
    work = os.path.join(args.work_dir, "cards")
    os.makedirs(work, exist_ok=True)
    threshold_model(os.path.join(work, "t.onnx"), 64, 64)
    img = os.path.join(work, "i.png")
    square_image(64, 64, (1, 1, 5, 5)).save(img)
    good = {"name": "t", "pipeline": "segment", "files": {"model": "t.onnx"},
            "input": {"mean": [0, 0, 0], "std": [1, 1, 1], "scale": "0..1"},
            "labels": ["background", "bright"]}
    rc, doc, err = predict(args, img, write_card(os.path.join(work, "ok.json"), **good))
    check("card: input size may come from the graph", rc == 0, err.strip())
    bad = [
        ("input.mean", {"input": {"mean": [0, 0], "std": 1}}),
        ("input.std", {"input": {"mean": 0, "std": [1, 0, 1]}}),
        ("pipeline", {"pipeline": "classify"}),
        ("files.model", {"files": {}}),
        ("labels", {"labels": ["a", "b", "c"]}),
        ("input.resize", {"input": {"mean": 0, "std": 1, "resize": "crop"}}),
        ("input.width", {"input": {"mean": 0, "std": 1, "width": 100, "height": 64}}),
        ("segment.logits", {"segment": {"logits": "nope"}}),
        ("nms.default.method", {"pipeline": "detect-dense", "nms": {"default": {"method": "best"}}}),
        ("input.scale", {"input": {"mean": 0, "std": 1, "scale": "0..100"}}),
    ]
    for key, change in bad:
        card = dict(good)
        card.update(change)
        rc, doc, err = predict(args, img, write_card(os.path.join(work, "bad.json"), **card))
        ok = rc == 1 and doc is not None and doc.get("code") == "model_load_failed" and key in doc["error"]
        check(f"card error names '{key}'", ok, doc and doc.get("error"))
    p = os.path.join(work, "syntax.json")
    open(p, "w").write('{"name": "x", ')
    rc, doc, err = predict(args, img, p)
    check("card: a JSON syntax error names the line", rc == 1 and doc and "line" in doc["error"],
          doc and doc.get("error"))


CASES = {"preprocess": case_preprocess, "coordinates": case_coordinates, "dense": case_dense,
         "hostile": case_hostile, "cards": case_cards, "torchvision": case_torchvision,
         "two_stage": case_two_stage, "shapes_seg": case_shapes_seg}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--maskd", required=True)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--only", action="append", choices=sorted(CASES))
    args = ap.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    for name, fn in CASES.items():
        if args.only and name not in args.only:
            continue
        try:
            fn(args)
        except Exception:
            check(f"{name}: ran without an exception", False, traceback.format_exc())
    print(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] or not results["passed"] else 0


if __name__ == "__main__":
    sys.exit(main())
