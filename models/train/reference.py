#!/usr/bin/python3
"""The reference answers of the shipped shapes models, computed from the committed .onnx files
(run with torch ops, see onnx_torch.py) through the Python reference pipelines -- what maskd's
C pipelines must reproduce -- and their accuracy against the generator's ground truth.

    # accuracy of the shipped models on 300 fresh images (seed 1000, never used in training)
    /usr/bin/python3 models/train/reference.py seg --seed 1000 --count 300
    /usr/bin/python3 models/train/reference.py det --seed 1000 --count 300

    # reference answers (maskd's JSON shapes) for parity tests, written to a file
    /usr/bin/python3 models/train/reference.py det --seed 1000 --count 20 --json /tmp/ref-det.json
    /usr/bin/python3 models/train/reference.py det --images a.jpg b.jpg --json out.json

Segments: {"class_id", "label", "area", "box": [x1,y1,x2,y2] (pixel edges), "mask": COCO RLE}.
Detections: {"box", "score", "class_id", "label", "mask": COCO RLE, "variance", "density",
"proposal", "box_input", "roi_index"}.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

# On a shared machine OpenMP's spin-waiting burns most of the CPU a nice'd job gets (measured:
# 2 threads cost ~8x the CPU of 1 per step); set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import metrics  # noqa: E402
import onnx_torch  # noqa: E402
from common import generate  # noqa: E402


def segments(classes):
    out = []
    for c in range(1, len(common.CLASSES)):
        m = classes == c
        area = int(m.sum())
        if not area:
            continue
        rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        out.append({"class_id": c, "label": common.CLASSES[c], "area": area,
                    "box": [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1],
                    "mask": generate.rle_encode(m)})
    return out


def inputs(args):
    """(name, jpeg bytes, ground truth sample or None)"""
    if args.images:
        for p in args.images:
            with open(p, "rb") as f:
                yield os.path.basename(p), f.read(), None
    else:
        stream = generate.ShapesStream(args.seed)
        for i in range(args.start, args.start + args.count):
            s = stream.sample(i, decode=False)
            yield "%06d.jpg" % i, s["jpeg"], s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=["seg", "det"])
    ap.add_argument("--models-dir", default=common.MODELS)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--images", nargs="*")
    ap.add_argument("--json", help="write the per-image answers here")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    common.set_threads(args.threads)
    answers, t0 = [], time.time()

    if args.model == "seg":
        import train_seg
        net = onnx_torch.OnnxGraph(os.path.join(args.models_dir, "shapes-seg.onnx"))
        n = train_seg.NUM_CLASSES
        conf = np.zeros((n, n), np.int64)
        for name, jpeg, gt in inputs(args):
            pred = train_seg.predict(net, jpeg)
            if args.json:
                answers.append({"file": name, "image": {"width": pred.shape[1], "height": pred.shape[0]},
                                "segments": segments(pred)})
            if gt is not None:
                conf += np.bincount(gt["classes"].reshape(-1).astype(np.int64) * n + pred.reshape(-1),
                                    minlength=n * n).reshape(n, n)
        if conf.sum():
            inter = np.diag(conf)
            iou = inter / np.maximum(conf.sum(0) + conf.sum(1) - inter, 1)
            print("mIoU(foreground) %.4f  %s" % (iou[1:].mean(), " ".join(
                "%s %.4f" % (common.CLASSES[k], iou[k]) for k in range(n))))
    else:
        import train_det
        s1 = onnx_torch.OnnxGraph(os.path.join(args.models_dir, "shapes-det-stage1.onnx"))
        s2 = onnx_torch.OnnxGraph(os.path.join(args.models_dir, "shapes-det-stage2.onnx"))
        gts, dets = [], []
        for name, jpeg, gt in inputs(args):
            d, info = train_det.infer(s1, s2, jpeg)
            if args.json:
                answers.append({"file": name, "image": {"width": info["width"], "height": info["height"]},
                                "detections": [dict(x, mask=generate.rle_encode(x["mask"])) for x in d]})
            if gt is not None:
                dets.append(d)
                gts.append([{"class_id": a["class_id"], "box": a["box"], "mask": gt["owner"] == a["index"]}
                            for a in gt["instances"]])
        if gts:
            for kind in ("box", "mask"):
                r = metrics.evaluate(gts, dets, train_det.NUM_CLASSES, kind)
                print("%s mAP@0.5 %.4f mAP@0.75 %.4f mAP@[.5:.95] %.4f" % (
                    kind, r["mAP@0.5"], r["mAP@0.75"], r["mAP@[.5:.95]"]))
    print("%.2f s/image" % ((time.time() - t0) / max(1, len(answers) or args.count)), file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(answers, f)


if __name__ == "__main__":
    main()
