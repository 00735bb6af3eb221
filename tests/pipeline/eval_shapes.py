#!/usr/bin/python3
"""Accuracy of the shipped models measured by the C pipeline end to end (issue 4 acceptance):
fresh JPEGs from models/shapes/generate.py (a seed not used in training) -> `maskd predict`
-> its JSON -> mIoU (shapes-seg) and COCO-style mAP (shapes-det, models/train/metrics.py).

  eval_shapes.py --maskd build/server/maskd --work-dir DIR [--seed 1000] [--count 300]
                 [--results out.json] [--write-cards] [--require-targets]

What must hold, always (the CTest): maskd measures the accuracy each card states
(accuracy.maskd, within 0.005), so a change to the C pipelines that moves an answer fails.
The issue's targets -- shapes-seg foreground mIoU >= 0.90; shapes-det box mAP@0.5 >= 0.95,
box mAP@[.5:.95] >= 0.75, mask mAP@0.5 >= 0.90 -- are printed as TARGET met/missed, and are
checks only with --require-targets (the issue's acceptance command: the shipped models do
not meet them yet, see the cards).  A model whose card or graphs are missing is skipped
(exit 77 when nothing could be measured).  Prints "N passed, M failed".
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.dont_write_bytecode = True  # imports from the source tree must not litter it

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "models", "train"))
sys.path.insert(0, os.path.join(REPO, "models", "shapes"))
sys.path.insert(0, HERE)

results = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print(f"{'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""), flush=True)


def target(args, name, ok, detail):
    """One of the issue's accuracy targets: a check with --require-targets, a report otherwise."""
    if args.require_targets:
        check(name, ok, detail)
    else:
        print(f"TARGET {'met' if ok else 'MISSED'} {name}: {detail}", flush=True)


def card_ready(path):
    if not os.path.exists(path):
        return False
    card = json.load(open(path))
    files = card.get("files", {})
    return all(os.path.exists(os.path.join(os.path.dirname(path), f)) for f in files.values())


def predict(args, jpeg_path, card):
    p = subprocess.run([args.maskd, "predict", jpeg_path, "--model", card, "--threads", "2"],
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"maskd predict {jpeg_path}: exit {p.returncode}: {p.stderr.strip()}")
    return json.loads(p.stdout)


def samples(args):
    import generate
    stream = generate.ShapesStream(args.seed)
    os.makedirs(args.work_dir, exist_ok=True)
    for i in range(args.count):
        s = stream.sample(i, decode=False)
        path = os.path.join(args.work_dir, f"{args.seed}_{i:04d}.jpg")
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(s["jpeg"])
        yield path, s


def eval_seg(args, card, out):
    from test_pipeline import class_map_from_doc
    n = 5
    conf = np.zeros((n, n), np.int64)
    t0 = time.time()
    for path, s in samples(args):
        doc = predict(args, path, card)
        pred = class_map_from_doc(doc)
        gt = s["classes"].astype(np.int64)
        conf += np.bincount(gt.reshape(-1) * n + pred.reshape(-1), minlength=n * n).reshape(n, n)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    iou = inter / np.maximum(union, 1)
    miou = float(iou[1:].mean())
    out["shapes-seg"] = {"miou_foreground": miou, "iou": iou.tolist(), "eval_seed": args.seed,
                         "eval_images": args.count, "seconds": round(time.time() - t0, 1)}
    target(args, f"shapes-seg mIoU (foreground) >= 0.90 on {args.count} JPEGs", miou >= 0.90,
          f"{miou:.4f}, per class {np.round(iou, 4).tolist()}")


def eval_det(args, card, out):
    import metrics
    from test_pipeline import rle_decode
    gts, dets = [], []
    t0 = time.time()
    for path, s in samples(args):
        doc = predict(args, path, card)
        dets.append([{"class_id": d["class_id"], "score": d["score"], "box": d["box"],
                      "mask": rle_decode(d["mask"]["counts"], *d["mask"]["size"]).astype(bool)}
                     for d in doc["detections"]])
        gts.append([{"class_id": a["class_id"], "box": a["box"], "mask": s["owner"] == a["index"]}
                    for a in s["instances"]])
    box = metrics.evaluate(gts, dets, 5, "box")
    mask = metrics.evaluate(gts, dets, 5, "mask")
    out["shapes-det"] = {"box_mAP@0.5": box["mAP@0.5"], "box_mAP@[.5:.95]": box["mAP@[.5:.95]"],
                         "mask_mAP@0.5": mask["mAP@0.5"], "mask_mAP@[.5:.95]": mask["mAP@[.5:.95]"],
                         "eval_seed": args.seed, "eval_images": args.count, "nms": "hard",
                         "seconds": round(time.time() - t0, 1)}
    target(args, "shapes-det box mAP@0.5 >= 0.95", box["mAP@0.5"] >= 0.95, f"{box['mAP@0.5']:.4f}")
    target(args, "shapes-det box mAP@[.5:.95] >= 0.75", box["mAP@[.5:.95]"] >= 0.75,
          f"{box['mAP@[.5:.95]']:.4f}")
    target(args, "shapes-det mask mAP@0.5 >= 0.90", mask["mAP@0.5"] >= 0.90, f"{mask['mAP@0.5']:.4f}")


def record(args, name, card_path, measured):
    """The card states the accuracy maskd measures: written with --write-cards, checked otherwise."""
    card = json.load(open(card_path))
    numbers = {k: v for k, v in measured.items() if k != "seconds"}
    if args.write_cards:
        card.setdefault("accuracy", {})["maskd"] = numbers
        with open(card_path, "w") as f:
            json.dump(card, f, indent=2)
            f.write("\n")
        print(f"wrote accuracy.maskd into {card_path}")
        return
    stated = (card.get("accuracy") or {}).get("maskd") or {}
    if not stated:
        check(f"{name}: the card records maskd's accuracy (accuracy.maskd)", False,
              f"missing in {card_path}: run with --write-cards")
        return
    if stated.get("eval_seed") != args.seed or stated.get("eval_images") != args.count:
        print(f"SKIP {name}: the card's numbers are for another image set")
        return
    keys = [k for k, v in numbers.items() if isinstance(v, float)]
    off = [f"{k}: card {stated.get(k)}, measured {numbers[k]:.4f}" for k in keys
           if not isinstance(stated.get(k), (int, float)) or abs(stated[k] - numbers[k]) > 0.005]
    check(f"{name}: the card records the accuracy measured here", not off, "; ".join(off))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--maskd", required=True)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--results", help="write the measured numbers here (JSON)")
    ap.add_argument("--models-dir", default=os.path.join(REPO, "models"),
                    help="where shapes-seg.json and shapes-det.json are")
    ap.add_argument("--write-cards", action="store_true",
                    help="record the measured numbers in the cards (accuracy.maskd); without it, "
                         "check that the cards record what was measured")
    ap.add_argument("--require-targets", action="store_true",
                    help="fail when a model misses the issue's accuracy targets")
    args = ap.parse_args()
    out = {}
    ran = False
    for name, fn in (("shapes-seg", eval_seg), ("shapes-det", eval_det)):
        card = os.path.join(args.models_dir, name + ".json")
        if not card_ready(card):
            print(f"SKIP {name}: {card} or its graphs are missing")
            continue
        ran = True
        try:
            fn(args, card, out)
        except Exception as e:  # one model failing must not hide the other's numbers
            check(f"{name}: measured", False, str(e))
            continue
        record(args, name, card, out[name])
    if args.results and out:
        os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
        with open(args.results, "w") as f:
            json.dump(out, f, indent=2)
    print(f"{results['passed']} passed, {results['failed']} failed")
    if not ran:
        return 77
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
