"""A small COCO-style mAP (the pycocotools rules, area range "all", up to 100 detections an image).

Per class: detections of all images sorted by score (stable, descending); each takes the
best-IoU ground truth of its image and class that is still unmatched and has IoU >= t; the
precision envelope is sampled at the 101 recall points 0, 0.01, ..., 1.  mAP = mean over the
classes that have ground truth; mAP@[.5:.95] = mean over t = 0.50, 0.55, ..., 0.95.

Ground truth per image: list of {"class_id", "box": [x1,y1,x2,y2], "mask": HxW bool (optional)}.
Detections per image:   list of {"class_id", "score", "box", "mask" (optional)}.
Boxes are in pixel-edge coordinates, IoU without +1.
"""
import numpy as np

THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def box_iou(a, b):
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def mask_iou(dets, gts):
    out = np.zeros((len(dets), len(gts)))
    g_area = [int(g.sum()) for g in gts]
    for i, d in enumerate(dets):
        d_area = int(d.sum())
        for j, g in enumerate(gts):
            inter = int(np.logical_and(d, g).sum())
            union = d_area + g_area[j] - inter
            out[i, j] = inter / union if union else 0.0
    return out


def average_precision(scores, matched, n_gt):
    if n_gt == 0:
        return None
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    tp = np.asarray(matched, np.float64)[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    recall = ctp / n_gt
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    for k in range(len(precision) - 2, -1, -1):          # the envelope
        precision[k] = max(precision[k], precision[k + 1])
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(sampled.mean())


def evaluate(ground_truth, detections, num_classes, kind="box", max_dets=100):
    """-> {"mAP@0.5", "mAP@0.75", "mAP@[.5:.95]", "per_class@0.5": {...}}"""
    # per threshold, per class: scores, matched flags, number of ground truths
    scores = {c: [] for c in range(1, num_classes)}
    matched = {c: [[] for _ in THRESHOLDS] for c in range(1, num_classes)}
    n_gt = {c: 0 for c in range(1, num_classes)}
    for gts, dets in zip(ground_truth, detections):
        dets = sorted(dets, key=lambda d: -d["score"])[:max_dets]
        for c in range(1, num_classes):
            g = [x for x in gts if x["class_id"] == c]
            d = [x for x in dets if x["class_id"] == c]
            n_gt[c] += len(g)
            if not d:
                continue
            if g:
                if kind == "box":
                    iou = box_iou([x["box"] for x in d], [x["box"] for x in g])
                else:
                    iou = mask_iou([x["mask"] for x in d], [x["mask"] for x in g])
            else:
                iou = np.zeros((len(d), 0))
            scores[c] += [x["score"] for x in d]
            for ti, t in enumerate(THRESHOLDS):
                taken = np.zeros(len(g), bool)
                for i in range(len(d)):
                    best, best_iou = -1, min(t, 1 - 1e-10)
                    for j in range(len(g)):
                        if not taken[j] and iou[i, j] >= best_iou:
                            best, best_iou = j, iou[i, j]
                    if best >= 0:
                        taken[best] = True
                    matched[c][ti].append(best >= 0)
    ap = np.full((len(THRESHOLDS), num_classes - 1), np.nan)
    for c in range(1, num_classes):
        for ti in range(len(THRESHOLDS)):
            v = average_precision(scores[c], matched[c][ti], n_gt[c])
            if v is not None:
                ap[ti, c - 1] = v
    mean = lambda a: float(np.mean(a[~np.isnan(a)])) if np.any(~np.isnan(a)) else float("nan")
    return {"mAP@0.5": mean(ap[0]), "mAP@0.75": mean(ap[5]), "mAP@[.5:.95]": mean(ap),
            "per_class@0.5": {c: float(ap[0, c - 1]) for c in range(1, num_classes)},
            "per_class@[.5:.95]": {c: mean(ap[:, c - 1]) for c in range(1, num_classes)},
            "ground_truths": int(sum(n_gt.values())),
            "detections": int(sum(len(v) for v in scores.values()))}
