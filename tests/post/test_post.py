#!/usr/bin/env python3
"""engine/post (NMS family, ROI Align / ROI Pool, boxes) against references.

    python3 test_post.py PATH/TO/maskd_post_driver [PATH/TO/maskd]

With the maskd CLI, the ONNX ops built on the library (RoiAlign at opsets 10
and 16, mode max, MaxRoiPool, NonMaxSuppression) also run through the engine
on cases ONNX's node tests do not cover.

References:
  * torchvision 0.14 for hard NMS (nms, batched_nms), roi_align, roi_pool,
    MultiScaleRoIAlign, AnchorGenerator, BoxCoder, clip_boxes_to_image and
    the box IoU variants;
  * for every other NMS method, a NumPy reference written below from the
    method's formula (float64, whole-matrix style; deliberately not the C
    loops), and NumPy references for the two ROI Align max modes.

On ties: torch 1.13's CPU sort is not stable (for 100 or more elements), so
torchvision's nms visits equal-scored boxes in an arbitrary order.  maskd's
documented order is stable (score desc, then index asc).  Hard NMS depends
only on the visiting order, so with ties we hand torchvision scores that
encode maskd's order (n, n-1, ... by stable rank) and require the exact same
kept indices; on tie-free sets we also compare with the raw scores.

Prints "post_reference: N passed, M failed" and exits 1 on any failure.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as tvb

DRIVER = sys.argv[1]
MASKD_CLI = sys.argv[2] if len(sys.argv) > 2 else None
torch.set_num_threads(1)
WORK = tempfile.mkdtemp(prefix="maskd_post_")
passed = failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print("FAIL", what, flush=True)


def save(name, arr):
    np.save(os.path.join(WORK, name), arr)


def load(name):
    return np.load(os.path.join(WORK, name))


def clear():
    for f in os.listdir(WORK):
        os.remove(os.path.join(WORK, f))


def drive(cmd, **kw):
    args = [DRIVER, cmd, WORK] + [f"{k}={v}" for k, v in kw.items()]
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode == 2:
        raise RuntimeError(f"driver failed: {' '.join(args)}\n{p.stderr}")
    return p.returncode, p.stdout


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------

def make_boxes(rng, n, extent, ties=True, nonneg=False, quantize=False):
    """Random boxes with duplicates, tied scores and zero-area boxes."""
    lo = 0.0 if nonneg else -20.0
    xy = rng.uniform(lo, extent, (n, 2))
    wh = rng.uniform(0.0, 1.0, (n, 2)) ** 2 * extent * 0.3 + 0.5
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = rng.uniform(0.001, 1.0, n)
    if n >= 4:
        k = max(1, n // 20)
        dst = rng.choice(n, k, replace=False)
        boxes[dst] = boxes[rng.choice(n, k)]                   # duplicate boxes
        flat = rng.choice(n, k, replace=False)
        boxes[flat[: k // 2 + 1], 2] = boxes[flat[: k // 2 + 1], 0]   # zero width
        boxes[flat[k // 2:], 3] = boxes[flat[k // 2:], 1]             # zero height
        if ties:
            t = rng.choice(n, max(2, n // 10), replace=False)
            scores[t] = rng.choice([0.25, 0.5, 0.75], t.size)
            same = rng.choice(n, k, replace=False)             # duplicates with equal scores
            boxes[same] = boxes[same[0]]
            scores[same] = scores[same[0]]
    if quantize:
        boxes = np.round(boxes * 16) / 16
    boxes = boxes.astype(np.float32)
    scores = scores.astype(np.float32)
    if not ties:
        # Tie-free: strictly distinct float32 scores.
        scores = np.float32(rng.permutation(n) + 1) / np.float32(n + 1)
    return boxes, scores


def stable_order(scores):
    idx = np.arange(scores.size)
    return np.lexsort((idx, -scores.astype(np.float64)))


def rank_scores(scores):
    r = np.empty(scores.size, np.float32)
    r[stable_order(scores)] = np.arange(scores.size, 0, -1, dtype=np.float32)
    return r


# ---------------------------------------------------------------------------
# hard NMS against torchvision
# ---------------------------------------------------------------------------

def run_nms(boxes, scores, labels=None, **opts):
    clear()
    save("boxes.npy", boxes)
    save("scores.npy", scores)
    if labels is not None:
        save("labels.npy", labels.astype(np.int64))
    for k in ("variances", "densities"):
        if k in opts:
            save(f"{k}.npy", opts.pop(k).astype(np.float32))
    rc, out = drive("nms", **opts)
    if rc != 0:
        return None, out
    return (load("keep.npy"), load("out_scores.npy"), load("out_boxes.npy")), out


def hard_cases():
    """(n, extent, seed, ties, threshold): every size with and without ties;
    the 10 000-box sets only twice, as torchvision needs ~1 s for each."""
    for n, extent, seeds in ((10, 40.0, (0, 1, 2)), (1000, 400.0, (0, 1))):
        for seed in seeds:
            for ties in (True, False):
                for t in (0.5, 0.7):
                    yield n, extent, seed, ties, t
    yield 10000, 1000.0, 0, True, 0.5
    yield 10000, 1000.0, 1, False, 0.7


def test_hard():
    for n, extent, seed, ties, t in hard_cases():
        rng = np.random.default_rng(1000 * n + seed)
        # Coordinates on a 1/16 grid for odd seeds: batched_nms's offset
        # trick then shifts boxes without rounding; even seeds use raw floats.
        boxes, scores = make_boxes(rng, n, extent, ties=ties, nonneg=True, quantize=(seed % 2 == 1))
        labels = rng.integers(0, 7, n)
        bt = torch.from_numpy(boxes)
        tag = f"n={n} seed={seed} ties={ties} t={t}"
        got, msg = run_nms(boxes, scores, method="hard", agnostic=1, iou=t)
        check(got is not None, f"hard {tag}: {msg}")
        if got is None:
            continue
        keep, sc, bx = got
        ref = tvb.nms(bt, torch.from_numpy(rank_scores(scores)), t).numpy()
        check(np.array_equal(keep, ref), f"hard {tag}: {keep.size} kept vs torchvision {ref.size}")
        if not ties:
            ref2 = tvb.nms(bt, torch.from_numpy(scores), t).numpy()
            check(np.array_equal(keep, ref2), f"hard {tag}: raw scores")
        check(np.array_equal(sc, scores[keep]) and np.array_equal(bx, boxes[keep]),
              f"hard {tag}: scores/boxes are not the input's")

        got, msg = run_nms(boxes, scores, labels, method="hard", iou=t)
        check(got is not None, f"batched {tag}: {msg}")
        if got is None:
            continue
        ref = tvb.batched_nms(bt, torch.from_numpy(rank_scores(scores)),
                              torch.from_numpy(labels), t).numpy()
        check(np.array_equal(got[0], ref),
              f"batched {tag}: {got[0].size} kept vs torchvision {ref.size}")
        if not ties:
            ref2 = tvb.batched_nms(bt, torch.from_numpy(scores), torch.from_numpy(labels),
                                   t).numpy()
            check(np.array_equal(got[0], ref2), f"batched {tag}: raw scores")
    # Negative coordinates (torchvision's nms takes them; batched_nms's
    # offset trick assumes x1 >= 0, so only nms here).
    rng = np.random.default_rng(7)
    boxes, scores = make_boxes(rng, 2000, 300.0, ties=False)
    keep = run_nms(boxes, scores, method="hard", agnostic=1, iou=0.45)[0][0]
    ref = tvb.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.45).numpy()
    check(np.array_equal(keep, ref), "hard with negative coordinates")


# ---------------------------------------------------------------------------
# NumPy references from the formulas
# ---------------------------------------------------------------------------

def iou_matrix(b):
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(b[:, None, :2], b[None, :, :2])
    rb = np.minimum(b[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area[:, None] + area[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def diou_penalty_matrix(b, beta):
    c = (b[:, :2] + b[:, 2:]) / 2
    d2 = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    lt = np.minimum(b[:, None, :2], b[None, :, :2])
    rb = np.maximum(b[:, None, 2:], b[None, :, 2:])
    c2 = ((rb - lt) ** 2).sum(-1)
    return np.where(c2 > 0, (d2 / np.where(c2 > 0, c2, 1)) ** beta, 0.0)


class Cands:
    """The candidate set in maskd's rank order, as float64."""

    def __init__(self, boxes, scores, labels, o):
        keep = np.nonzero(scores.astype(np.float64) > o["score"])[0]
        order = keep[stable_order(scores[keep])]
        if o["topk"] > 0:
            order = order[: o["topk"]]
        self.idx = order
        b = boxes[order].astype(np.float64)
        self.b = np.stack([np.minimum(b[:, 0], b[:, 2]), np.minimum(b[:, 1], b[:, 3]),
                           np.maximum(b[:, 0], b[:, 2]), np.maximum(b[:, 1], b[:, 3])], 1)
        self.s = scores[order].astype(np.float64)
        m = order.size
        self.same = (np.ones((m, m), bool) if labels is None
                     else labels[order][:, None] == labels[order][None, :])
        self.iou = iou_matrix(self.b)


def greedy(c, crit, thr):
    """Visit by rank; drop later same-class boxes with crit > thr[kept]."""
    m = c.idx.size
    alive = np.ones(m, bool)
    keep = []
    for i in range(m):
        if alive[i]:
            keep.append(i)
            alive[i + 1:] &= ~(c.same[i, i + 1:] & (crit[i, i + 1:] > thr[i]))
    return np.array(keep, np.int64)


def ref_method(method, boxes, scores, labels, o, variances=None, densities=None):
    """Returns (indices, scores, boxes) as maskd documents them."""
    c = Cands(boxes, scores, labels, o)
    m, t = c.idx.size, o["iou"]
    maxdet = o["maxdet"] if o["maxdet"] > 0 else m
    out_boxes = c.b.copy()
    if method in ("weighted", "diou", "adaptive", "cluster"):
        if method == "weighted":
            kept = greedy(c, c.iou, np.full(m, t))
            for i in kept:
                members = (c.same[i] & (c.iou[i] > t)) | (np.arange(m) == i)
                w = c.s[members]
                out_boxes[i] = (w[:, None] * c.b[members]).sum(0) / w.sum()
        elif method == "diou":
            kept = greedy(c, c.iou - diou_penalty_matrix(c.b, o["beta"]), np.full(m, t))
        elif method == "adaptive":
            d = densities[c.idx].astype(np.float64)
            kept = greedy(c, c.iou, np.maximum(t, d))
        else:
            X = np.triu(c.iou * c.same, 1)
            B = X
            cap = o["iters"] if o["iters"] > 0 else 10 ** 9
            max_a = np.zeros(m)
            for _ in range(cap):
                A = B
                max_a = A.max(0) if m else max_a
                B = X * (max_a <= t)[:, None]
                if np.array_equal(A, B):
                    break
            kept = np.nonzero(max_a <= t)[0]
        kept = kept[:maxdet]
        return c.idx[kept], c.s[kept], out_boxes[kept]

    if method == "matrix":
        X = np.triu(c.iou * c.same, 1)
        comp = X.max(0) if m else np.zeros(0)
        if o["kernel"] == "gaussian":
            f = lambda x: np.exp(-o["sigma"] * x ** 2)
        else:
            f = lambda x: 1 - x
        fc = f(comp)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(fc > 0, f(X) / np.where(fc > 0, fc, 1), np.inf)
        decay = ratio.min(0) if m else np.zeros(0)
        s = c.s * decay
        ok = np.nonzero(s > o["score"])[0]
        ok = ok[np.lexsort((ok, -s[ok]))][:maxdet]
        return c.idx[ok], s[ok], c.b[ok]

    # soft-linear, soft-gaussian, softer: the paper's loop.
    s = c.s.copy()
    remaining = list(range(m))
    res_i, res_s, res_b = [], [], []
    while remaining and len(res_i) < maxdet:
        cur = np.array(remaining)
        i = cur[np.argmax(s[cur])]
        res_i.append(i)
        res_s.append(s[i])
        if method == "softer":
            var = variances[c.idx].astype(np.float64)
            sel = (c.same[i] & (c.iou[i] > t)) | (np.arange(m) == i)
            p = np.exp(-(1 - c.iou[i, sel]) ** 2 / o["sigma_t"])
            p[np.nonzero(sel)[0] == i] = 1.0
            wgt = p[:, None] / var[sel]
            res_b.append((wgt * c.b[sel]).sum(0) / wgt.sum(0))
        else:
            res_b.append(c.b[i])
        remaining.remove(i)
        if not remaining:
            break
        r = np.array(remaining)
        ov = c.iou[i, r]
        if method == "soft-linear":
            factor = np.where(ov > t, 1 - ov, 1.0)
        else:
            factor = np.exp(-ov ** 2 / o["sigma"])
        same = c.same[i, r]
        s[r] = np.where(same, s[r] * factor, s[r])
        remaining = [j for j, keep in zip(r, ~same | (s[r] > o["score"])) if keep]
    res_i = np.array(res_i, np.int64)
    return c.idx[res_i], np.array(res_s), np.array(res_b).reshape(-1, 4)


DEFAULTS = dict(iou=0.5, sigma=0.5, score=-np.inf, topk=0, maxdet=0, beta=1.0,
                kernel="gaussian", iters=0, sigma_t=0.025)

CONFIGS = [
    ("soft-linear", dict(iou=0.3, score=0.001)),
    ("soft-gaussian", dict(sigma=0.5, score=0.001)),
    ("weighted", dict(iou=0.5)),
    ("diou", dict(iou=0.5, beta=1.0)),
    ("diou", dict(iou=0.4, beta=0.6)),
    ("softer", dict(iou=0.5, sigma_t=0.025, sigma=0.5, score=0.001)),
    ("adaptive", dict(iou=0.5)),
    ("matrix", dict(sigma=2.0, score=0.05, kernel="gaussian")),
    ("matrix", dict(score=0.05, kernel="linear")),
    ("cluster", dict(iou=0.5)),
    ("cluster", dict(iou=0.5, iters=2)),
]


def close(a, b, tol=1e-5):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= tol * np.maximum(1.0, np.abs(b))))


def test_methods():
    for n, extent in ((10, 40.0), (120, 120.0), (500, 300.0)):
        for seed in (0, 1):
            rng = np.random.default_rng(77 * n + seed)
            boxes, scores = make_boxes(rng, n, extent, ties=True)
            labels = rng.integers(0, 4, n)
            variances = rng.uniform(0.05, 4.0, (n, 4)).astype(np.float32)
            densities = rng.uniform(0.0, 0.9, n).astype(np.float32)
            for method, extra in CONFIGS:
                for agnostic in (1, 0):
                    limits = [dict()]
                    if seed == 0 and n > 10:
                        limits.append(dict(topk=n // 2, maxdet=25))
                    for lim in limits:
                        o = dict(DEFAULTS, **extra, **lim)
                        tag = f"{method} {extra} {lim} n={n} seed={seed} agnostic={agnostic}"
                        kw = {k: o[k] for k in extra}
                        kw.update(lim)
                        if method == "softer":
                            kw["variances"] = variances
                        if method == "adaptive":
                            kw["densities"] = densities
                        got, msg = run_nms(boxes, scores, None if agnostic else labels,
                                           method=method, agnostic=agnostic, **kw)
                        check(got is not None, f"{tag}: {msg}")
                        if got is None:
                            continue
                        ri, rs, rb = ref_method(method, boxes, scores,
                                                None if agnostic else labels, o,
                                                variances, densities)
                        same_set = np.array_equal(got[0], ri)
                        check(same_set, f"{tag}: kept {got[0].size} vs reference {ri.size}")
                        if same_set:
                            check(close(got[1], rs), f"{tag}: scores differ")
                            check(close(got[2], rb), f"{tag}: boxes differ")
            # Cluster-NMS run to convergence is hard NMS.
            for agnostic in (1, 0):
                lab = None if agnostic else labels
                a = run_nms(boxes, scores, lab, method="cluster", agnostic=agnostic)[0]
                b = run_nms(boxes, scores, lab, method="hard", agnostic=agnostic)[0]
                check(a is not None and b is not None and np.array_equal(a[0], b[0]),
                      f"cluster == hard n={n} seed={seed} agnostic={agnostic}")


def test_nms_errors():
    rng = np.random.default_rng(3)
    boxes, scores = make_boxes(rng, 20, 50.0)
    for method, needle in (("softer", "variances"), ("adaptive", "density")):
        got, msg = run_nms(boxes, scores, method=method, agnostic=1)
        check(got is None and "error 1:" in msg and needle in msg, f"{method} without input: {msg}")
    got, msg = run_nms(boxes, scores, method="hard")
    check(got is None and "label" in msg, f"per-class without labels: {msg}")
    bad = scores.copy()
    bad[5] = np.nan
    got, msg = run_nms(boxes, bad, method="hard", agnostic=1)
    check(got is None and "NaN" in msg and "box 5" in msg, f"NaN score: {msg}")
    got, msg = run_nms(boxes, scores, method="greedy", agnostic=1)
    check(got is None and "unknown NMS method" in msg, f"unknown method: {msg}")


# ---------------------------------------------------------------------------
# ROI Align / ROI Pool
# ---------------------------------------------------------------------------

def make_rois(rng, k, img_h, img_w, n_images):
    x1 = rng.uniform(-0.2 * img_w, 1.0 * img_w, k)
    y1 = rng.uniform(-0.2 * img_h, 1.0 * img_h, k)
    w = rng.uniform(0, 0.6, k) ** 2 * img_w + rng.uniform(0, 3, k)
    h = rng.uniform(0, 0.6, k) ** 2 * img_h + rng.uniform(0, 3, k)
    rois = np.stack([x1, y1, x1 + w, y1 + h], 1)
    rois[: k // 20 + 1, 2] = rois[: k // 20 + 1, 0]          # zero width
    rois[-2:, [0, 2]] = rois[-2:, [2, 0]]                     # flipped
    batch = rng.integers(0, n_images, k)
    return rois.astype(np.float32), batch.astype(np.int64)


def tv_rois(rois, batch):
    return torch.from_numpy(np.concatenate([batch[:, None].astype(np.float32), rois], 1))


def run_roi(cmd, x, rois, batch, **kw):
    clear()
    save("features.npy", x)
    save("rois.npy", rois)
    save("batch.npy", batch)
    rc, msg = drive(cmd, **kw)
    return (load("out.npy") if rc == 0 else None), msg


def bilinear_samples(x, roi, ph, pw, scale, ratio, aligned):
    """Per bin, the list of samples; each sample is None (outside) or the
    four (value vector over channels, weight) taps."""
    C, H, W = x.shape
    off = 0.5 if aligned else 0.0
    sw, sh, ew, eh = [np.float32(v) * np.float32(scale) - np.float32(off) for v in roi]
    rw, rh = ew - sw, eh - sh
    if not aligned:
        rw, rh = max(rw, np.float32(1)), max(rh, np.float32(1))
    bh, bw = rh / np.float32(ph), rw / np.float32(pw)
    gh = ratio if ratio > 0 else int(np.ceil(rh / np.float32(ph)))
    gw = ratio if ratio > 0 else int(np.ceil(rw / np.float32(pw)))
    bins = []
    for py in range(ph):
        for px in range(pw):
            samples = []
            for iy in range(max(gh, 0)):
                y = sh + np.float32(py) * bh + np.float32(iy + 0.5) * bh / np.float32(gh)
                for ix in range(max(gw, 0)):
                    xx = sw + np.float32(px) * bw + np.float32(ix + 0.5) * bw / np.float32(gw)
                    if y < -1 or y > H or xx < -1 or xx > W:
                        samples.append(None)
                        continue
                    yy, xv = max(float(y), 0.0), max(float(xx), 0.0)
                    y0, x0 = int(yy), int(xv)
                    if y0 >= H - 1:
                        y0 = y1 = H - 1
                        yy = float(y0)
                    else:
                        y1 = y0 + 1
                    if x0 >= W - 1:
                        x0 = x1 = W - 1
                        xv = float(x0)
                    else:
                        x1 = x0 + 1
                    ly, lx = yy - y0, xv - x0
                    hy, hx = 1 - ly, 1 - lx
                    samples.append([(x[:, y0, x0], hy * hx), (x[:, y0, x1], hy * lx),
                                    (x[:, y1, x0], ly * hx), (x[:, y1, x1], ly * lx)])
            bins.append(samples)
    return bins


def ref_roi_max(x, rois, batch, ph, pw, scale, ratio, aligned, onnx):
    out = np.zeros((len(rois), x.shape[1], ph, pw))
    for r in range(len(rois)):
        bins = bilinear_samples(x[batch[r]].astype(np.float64), rois[r], ph, pw, scale, ratio,
                                aligned)
        for k, samples in enumerate(bins):
            vals = []
            for s in samples:
                if s is None:
                    vals.append(np.zeros(x.shape[1]))
                elif onnx:
                    vals.append(np.max([v * w for v, w in s], 0))
                else:
                    vals.append(np.sum([v * w for v, w in s], 0))
            out[r, :, k // pw, k % pw] = np.max(vals, 0) if vals else 0.0
    return out


def test_roi_align():
    rng = np.random.default_rng(11)
    img_h, img_w = 256, 320
    for stride in (4, 8, 16):
        x = rng.standard_normal((2, 8, img_h // stride, img_w // stride)).astype(np.float32)
        rois, batch = make_rois(rng, 80, img_h, img_w, 2)
        for aligned in (0, 1):
            for ratio in (0, 2):
                # torchvision sizes a vector by the (negative) adaptive grid of
                # a flipped ROI under aligned=True and throws: leave those out.
                r, bt = (rois[:-2], batch[:-2]) if aligned and ratio == 0 else (rois, batch)
                for (ph, pw) in ((7, 7), (5, 3)):
                    threads = 2 if (ph == 5) else 1
                    got, msg = run_roi("roi_align", x, r, bt, ph=ph, pw=pw,
                                       scale=1.0 / stride, ratio=ratio, aligned=aligned,
                                       threads=threads)
                    ref = torchvision.ops.roi_align(torch.from_numpy(x), tv_rois(r, bt),
                                                    (ph, pw), 1.0 / stride, ratio,
                                                    bool(aligned)).numpy()
                    tag = f"roi_align stride={stride} aligned={aligned} ratio={ratio} {ph}x{pw}"
                    check(got is not None and close(got, ref, 1e-5), f"{tag}: {msg}" if got is None
                          else f"{tag}: max diff {np.abs(got - ref).max():.3g}")
    # Few ROIs on a large map: the in-place (NCHW) path.
    x = rng.standard_normal((1, 4, 200, 160)).astype(np.float32)
    rois, batch = make_rois(rng, 6, 800, 640, 1)
    rois, batch = rois[:4], batch[:4]
    for aligned in (0, 1):
        got, _ = run_roi("roi_align", x, rois, batch, ph=7, pw=7, scale=0.25, ratio=0,
                         aligned=aligned)
        ref = torchvision.ops.roi_align(torch.from_numpy(x), tv_rois(rois, batch), (7, 7), 0.25,
                                        0, bool(aligned)).numpy()
        check(got is not None and close(got, ref, 1e-5), f"roi_align NCHW path aligned={aligned}")
    # The max modes, against the NumPy reference.
    x = rng.standard_normal((2, 3, 20, 24)).astype(np.float32)
    rois, batch = make_rois(rng, 12, 80, 96, 2)
    for mode in ("max", "max_onnx"):
        for aligned in (0, 1):
            for ratio in (0, 2):
                got, msg = run_roi("roi_align", x, rois, batch, ph=3, pw=4, scale=0.25,
                                   ratio=ratio, aligned=aligned, mode=mode)
                ref = ref_roi_max(x, rois, batch, 3, 4, 0.25, ratio, aligned, mode == "max_onnx")
                check(got is not None and close(got, ref, 1e-5),
                      f"roi_align mode={mode} aligned={aligned} ratio={ratio}: "
                      + (msg if got is None else f"max diff {np.abs(got - ref).max():.3g}"))


def test_roi_pool():
    rng = np.random.default_rng(12)
    for stride in (1, 4, 16):
        x = rng.standard_normal((2, 5, 256 // stride, 192 // stride)).astype(np.float32)
        rois, batch = make_rois(rng, 60, 256, 192, 2)
        for (ph, pw) in ((7, 7), (3, 5)):
            got, msg = run_roi("roi_pool", x, rois, batch, ph=ph, pw=pw, scale=1.0 / stride,
                               threads=2)
            ref = torchvision.ops.roi_pool(torch.from_numpy(x), tv_rois(rois, batch), (ph, pw),
                                           1.0 / stride).numpy()
            check(got is not None and np.array_equal(got, ref),
                  f"roi_pool stride={stride} {ph}x{pw}: " +
                  (msg if got is None else f"max diff {np.abs(got - ref).max():.3g}"))


def test_fpn():
    rng = np.random.default_rng(13)
    img = 512
    names = ["p2", "p3", "p4", "p5"]
    feats = {nm: torch.from_numpy(rng.standard_normal((2, 4, img // s, img // s)).astype(np.float32))
             for nm, s in zip(names, (4, 8, 16, 32))}
    per_image = []
    for _ in range(2):
        x1 = rng.uniform(0, img - 20, (40, 2))
        side = np.exp(rng.uniform(np.log(4), np.log(500), (40, 1)))
        b = np.concatenate([x1, x1 + side * rng.uniform(0.5, 1.5, (40, 2))], 1)
        per_image.append(torch.from_numpy(b.astype(np.float32)))
    pooler = torchvision.ops.MultiScaleRoIAlign(names, 7, 2)
    ref = pooler(feats, per_image, [(img, img)] * 2).numpy()
    ref_levels = pooler.map_levels(per_image).numpy()
    clear()
    for i, nm in enumerate(names):
        save(f"feat{i}.npy", feats[nm].numpy())
    save("rois.npy", torch.cat(per_image).numpy())
    save("batch.npy", np.repeat(np.arange(2), 40).astype(np.int64))
    rc, msg = drive("roi_fpn", levels=4, scales="0.25,0.125,0.0625,0.03125", ph=7, pw=7, ratio=2,
                    aligned=0)
    check(rc == 0, f"roi_fpn: {msg}")
    if rc == 0:
        check(np.array_equal(load("levels.npy"), ref_levels), "fpn level assignment")
        check(close(load("out.npy"), ref, 1e-5), "fpn pooled values")


# ---------------------------------------------------------------------------
# boxes
# ---------------------------------------------------------------------------

def test_boxes():
    img_h, img_w = 600, 904
    strides = (4, 8, 16, 32, 64)
    sizes = ((32,), (64,), (128,), (256,), (512,))
    ratios = ((0.5, 1.0, 2.0),) * 5
    # Size 25 at ratio 1 puts corners at +-12.5: torch rounds half to even.
    for sz, ar in ((sizes, ratios), (((18, 25, 40),), ((0.3, 1.7, 1.0),))):
        gen = AnchorGenerator(sz, ar)
        n_levels = len(sz)
        grids = [(img_h // s + (1 if img_h % s else 0), img_w // s + (1 if img_w % s else 0))
                 for s in strides[:n_levels]]
        fmaps = [torch.zeros(1, 1, gh, gw) for gh, gw in grids]
        ref = gen(ImageList(torch.zeros(1, 3, img_h, img_w), [(img_h, img_w)]), fmaps)[0].numpy()
        clear()
        levels = []
        for i, (gh, gw) in enumerate(grids):
            sh, sw = img_h // gh, img_w // gw
            levels.append(f"level={','.join(map(str, sz[i]))}/{','.join(map(str, ar[i]))}/"
                          f"{gh}x{gw}/{sh}x{sw}")
        p = subprocess.run([DRIVER, "anchors", WORK] + levels, capture_output=True, text=True)
        check(p.returncode == 0 and np.array_equal(load("anchors.npy"), ref),
              f"anchors {sz} {ar}: {p.stderr}")

    rng = np.random.default_rng(14)
    n, k = 500, 3
    refs = make_rois(rng, n, 600, 800, 1)[0]
    refs = np.concatenate([np.minimum(refs[:, :2], refs[:, 2:]),
                           np.maximum(refs[:, :2], refs[:, 2:]) + 1], 1).astype(np.float32)
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        coder = BoxCoder(weights)
        deltas = rng.standard_normal((n, 4 * k)).astype(np.float32) * 2
        deltas[::17, 2::4] = 30.0                      # past the exp clamp
        deltas[::19, 3::4] = 25.0
        clear()
        save("deltas.npy", deltas)
        save("refs.npy", refs)
        w = ",".join(map(str, weights))
        drive("decode", w=w)
        ref = coder.decode_single(torch.from_numpy(deltas), torch.from_numpy(refs)).numpy()
        check(close(load("out.npy"), ref.reshape(n, 4 * k), 1e-5), f"decode weights={weights}")
        gt = ref.reshape(n, k, 4)[:, 0, :].copy()
        gt = np.concatenate([np.minimum(gt[:, :2], gt[:, 2:]),
                             np.maximum(gt[:, :2], gt[:, 2:]) + 1], 1).astype(np.float32)
        clear()
        save("boxes.npy", gt)
        save("refs.npy", refs)
        drive("encode", w=w)
        ref = coder.encode_single(torch.from_numpy(gt), torch.from_numpy(refs)).numpy()
        check(close(load("deltas.npy"), ref, 1e-5), f"encode weights={weights}")

    boxes = make_rois(rng, 300, 600, 800, 1)[0]
    clear()
    save("boxes.npy", boxes)
    drive("clip", width=800, height=600)
    ref = tvb.clip_boxes_to_image(torch.from_numpy(boxes), (600, 800)).numpy()
    check(np.array_equal(load("out.npy"), ref), "clip")

    a, _ = make_boxes(rng, 400, 100.0, ties=False)
    b, _ = make_boxes(rng, 400, 100.0, ties=False)
    ok = ((a[:, 2] > a[:, 0]) & (a[:, 3] > a[:, 1]) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))
    a, b = a[ok], b[ok]
    b[:50] = a[:50] + np.float32(3)                    # make sure many overlap
    clear()
    save("a.npy", a)
    save("b.npy", b)
    drive("overlap")
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    for name, fn in (("iou", tvb.box_iou), ("giou", tvb.generalized_box_iou),
                     ("diou", tvb.distance_box_iou)):
        ref = torch.diagonal(fn(ta, tb)).numpy()
        check(close(load(f"{name}.npy"), ref, 1e-5), f"{name} vs torchvision")


# ---------------------------------------------------------------------------
# ONNX ops through the engine (maskd infer)
# ---------------------------------------------------------------------------

def run_model(nodes, inputs, outputs, opset, feeds):
    import onnx
    from onnx import TensorProto, helper

    def vi(name, arr):
        kind = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64}
        return helper.make_tensor_value_info(name, kind[arr.dtype], list(arr.shape))

    graph = helper.make_graph(nodes, "g", [vi(n, feeds[n]) for n in inputs],
                              [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None)
                               for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    clear()
    path = os.path.join(WORK, "model.onnx")
    onnx.save(model, path)
    args = [MASKD_CLI, "infer", path, "--threads", "2", "--output-dir", WORK]
    for n in inputs:
        save(f"in_{n}.npy", feeds[n])
        args += ["--input", f"{n}={os.path.join(WORK, f'in_{n}.npy')}"]
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        return None, p.stderr
    return [load(f"{o}.npy") for o in outputs], ""


def test_onnx_ops():
    from onnx import helper

    rng = np.random.default_rng(21)
    x = rng.standard_normal((2, 3, 24, 20)).astype(np.float32)
    rois, batch = make_rois(rng, 30, 96, 80, 2)
    rois, batch = rois[:-2], batch[:-2]
    feeds = {"X": x, "rois": rois, "batch_indices": batch}
    attrs = dict(output_height=4, output_width=5, sampling_ratio=0, spatial_scale=0.25)
    for opset, extra, aligned in ((10, {}, False), (16, {}, True),
                                  (16, {"coordinate_transformation_mode": "output_half_pixel"},
                                   False)):
        node = helper.make_node("RoiAlign", ["X", "rois", "batch_indices"], ["Y"], **attrs,
                                **extra)
        got, msg = run_model([node], ["X", "rois", "batch_indices"], ["Y"], opset, feeds)
        ref = torchvision.ops.roi_align(torch.from_numpy(x), tv_rois(rois, batch), (4, 5), 0.25,
                                        0, aligned).numpy()
        check(got is not None and close(got[0], ref, 1e-5),
              f"RoiAlign-{opset} {extra}: {msg}")
    node = helper.make_node("RoiAlign", ["X", "rois", "batch_indices"], ["Y"], mode="max",
                            output_height=3, output_width=3, sampling_ratio=2,
                            spatial_scale=0.25)
    got, msg = run_model([node], ["X", "rois", "batch_indices"], ["Y"], 16, feeds)
    ref = ref_roi_max(x, rois, batch, 3, 3, 0.25, 2, True, True)
    check(got is not None and close(got[0], ref, 1e-5), f"RoiAlign-16 mode=max: {msg}")

    node = helper.make_node("MaxRoiPool", ["X", "rois5"], ["Y"], pooled_shape=[3, 4],
                            spatial_scale=0.25)
    r5 = np.concatenate([batch[:, None].astype(np.float32), rois], 1)
    got, msg = run_model([node], ["X", "rois5"], ["Y"], 13, {"X": x, "rois5": r5})
    ref = torchvision.ops.roi_pool(torch.from_numpy(x), torch.from_numpy(r5), (3, 4),
                                   0.25).numpy()
    check(got is not None and np.array_equal(got[0], ref), f"MaxRoiPool: {msg}")

    # NonMaxSuppression on a larger random set, both box formats: per
    # (batch, class), torchvision's nms on the boxes above the threshold.
    B, C, N = 2, 3, 400
    for center in (0, 1):
        xyxy = np.stack([make_boxes(rng, N, 200.0, ties=False)[0] for _ in range(B)])
        scores = rng.uniform(0, 1, (B, C, N)).astype(np.float32)
        if center:
            boxes = np.concatenate([(xyxy[..., :2] + xyxy[..., 2:]) / 2,
                                    xyxy[..., 2:] - xyxy[..., :2]], -1).astype(np.float32)
        else:
            boxes = xyxy[..., [1, 0, 3, 2]].copy()
        feeds = {"boxes": boxes, "scores": scores,
                 "max_out": np.array([40], np.int64), "iou": np.array([0.45], np.float32),
                 "score_thr": np.array([0.2], np.float32)}
        node = helper.make_node("NonMaxSuppression",
                                ["boxes", "scores", "max_out", "iou", "score_thr"], ["sel"],
                                center_point_box=center)
        got, msg = run_model([node], list(feeds), ["sel"], 11, feeds)
        rows = []
        for b in range(B):
            if center:
                half = boxes[b, :, 2:] / np.float32(2)
                bx = np.concatenate([boxes[b, :, :2] - half, boxes[b, :, :2] + half], 1)
            else:
                bx = boxes[b][:, [1, 0, 3, 2]]
            for c in range(C):
                cand = np.nonzero(scores[b, c] > np.float32(0.2))[0]
                keep = tvb.nms(torch.from_numpy(np.ascontiguousarray(bx[cand])),
                               torch.from_numpy(scores[b, c, cand]), float(np.float32(0.45)))
                rows += [(b, c, int(cand[k])) for k in keep.numpy()[:40]]
        ref = np.array(rows, np.int64).reshape(-1, 3)
        check(got is not None and np.array_equal(got[0], ref),
              f"NonMaxSuppression center_point_box={center}: {msg}")


def main():
    import time
    for test in (test_hard, test_methods, test_nms_errors, test_roi_align, test_roi_pool,
                 test_fpn, test_boxes) + ((test_onnx_ops,) if MASKD_CLI else ()):
        t0 = time.perf_counter()
        test()
        if os.environ.get("MASKD_TEST_TIMING"):
            print(f"{test.__name__}: {time.perf_counter() - t0:.1f} s", flush=True)
    shutil.rmtree(WORK, ignore_errors=True)
    print(f"post_reference: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
