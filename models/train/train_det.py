#!/usr/bin/python3
"""Train, evaluate and export shapes-det: a small two-stage, Mask R-CNN-like detector,
exported as two ONNX graphs with everything between and after them done by the caller.

    nice -n 19 /usr/bin/python3 models/train/train_det.py           # train + eval + export
    /usr/bin/python3 models/train/train_det.py --eval-only          # re-measure the checkpoint
    /usr/bin/python3 models/train/train_det.py --export-only        # re-export the checkpoint

Stage 1 (shapes-det-stage1.onnx): input [1,3,384,384] ->
    features   [1, 64, 48, 48]   the stride-8 map ROI Align samples
    rpn_logits [1, 34560]        objectness logit per anchor, anchor order (y, x, a)
    rpn_deltas [1, 34560, 4]     (dx, dy, dw, dh) per anchor, BoxCoder weights (1, 1, 1, 1)
Stage 2 (shapes-det-stage2.onnx): input roi_features [R, 64, 14, 14] ->
    cls_logits  [R, 5]           softmax over background + 4 classes
    box_deltas  [R, 20]          class-specific (dx, dy, dw, dh), class c at [4c, 4c+4), weights (10, 10, 5, 5)
    box_logvar  [R, 20]          class-specific log-variance of (x1, y1, x2, y2), in proposal w^2 / h^2 units
    density     [R, 1]           predicted max IoU of this object with any other object (Adaptive NMS)
    mask_logits [R, 5, 28, 28]   class-specific mask logits over the *proposal* box

`infer()` below is the reference of the whole path, step by step; models/README.md says the same
in prose for the C pipeline.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

# OpenMP's threads spin between parallel regions instead of sleeping: a step takes 1.01 s so
# against 1.09 s (idle 2-core VM, 100-step runs; the losses are the same bit for bit, the policy
# only moves time; shapes-seg gains more, 0.46 against 0.56 s).  On a machine shared with other
# work, OMP_WAIT_POLICY=PASSIVE in the environment overrides it: spinning then burns CPU the
# others need.  Set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
import torch  # noqa: E402
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import boxes as box_ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import metrics  # noqa: E402
from common import generate  # noqa: E402

SIZE = 384
STRIDE = 8
GRID = SIZE // STRIDE
NUM_CLASSES = 5
FEAT = 64
ASPP_RATES = (6, 12, 18)
ROI = 14                       # ROI Align output; the box head average-pools it to 7x7
MASK = 28
SAMPLING_RATIO = 2
ANCHOR_SIZES = (16, 32, 64, 128, 256)
ANCHOR_RATIOS = (0.5, 1.0, 2.0)
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
XFORM_CLIP = math.log(1000.0 / 16)

# inference defaults (the card's)
PRE_NMS_TOP_N = 1000
POST_NMS_TOP_N = 100
RPN_NMS_IOU = 0.7
RPN_MIN_SIZE = 1e-3
SCORE_THRESH = 0.05
DET_MIN_SIZE = 1e-2
NMS_IOU = 0.5
MAX_DETS = 100


# ----------------------------------------------------------------------------- networks

class Stage1(nn.Module):
    """Backbone + ASPP features + RPN head; anchors' outputs flattened in (y, x, a) order."""

    def __init__(self):
        super().__init__()
        self.backbone = common.Backbone()
        self.aspp = common.ASPP(self.backbone.channels, 64, FEAT, rates=ASPP_RATES)
        self.rpn_head = RPNHead(FEAT, len(ANCHOR_SIZES) * len(ANCHOR_RATIOS))

    def features(self, x):
        return self.aspp(self.backbone(x)[1])

    def forward(self, x):
        f = self.features(x)
        logits, deltas = self.rpn_head([f])
        n, a, h, w = logits[0].shape
        rpn_logits = logits[0].permute(0, 2, 3, 1).reshape(n, h * w * a)
        rpn_deltas = deltas[0].reshape(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * a, 4)
        return f, rpn_logits, rpn_deltas


class Stage2(nn.Module):
    """Box head (class, class-specific deltas, their log-variances, density) and mask head,
    both on the same 14x14 ROI-aligned features."""

    def __init__(self):
        super().__init__()
        self.box_pool = nn.AvgPool2d(2, count_include_pad=False)   # (no padding: avoids a Pad node)
        self.box_fc = nn.Sequential(nn.Flatten(), nn.Linear(FEAT * 7 * 7, 256), nn.ReLU(inplace=True),
                                    nn.Linear(256, 256), nn.ReLU(inplace=True))
        self.cls = nn.Linear(256, NUM_CLASSES)
        self.deltas = nn.Linear(256, NUM_CLASSES * 4)
        self.logvar = nn.Linear(256, NUM_CLASSES * 4)
        self.density = nn.Linear(256, 1)
        self.mask = nn.Sequential(
            nn.Conv2d(FEAT, 32, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(32, 32, 2, 2), nn.ReLU(inplace=True),
            nn.Conv2d(32, NUM_CLASSES, 1))
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.normal_(self.deltas.weight, std=0.001)
        nn.init.normal_(self.logvar.weight, std=0.0001)
        for lin in (self.cls, self.deltas, self.logvar, self.density):
            nn.init.zeros_(lin.bias)

    def box(self, roi_features):
        h = self.box_fc(self.box_pool(roi_features))
        return self.cls(h), self.deltas(h), self.logvar(h), torch.sigmoid(self.density(h))

    def forward(self, roi_features):
        return self.box(roi_features) + (self.mask(roi_features),)


def anchor_generator():
    return AnchorGenerator(sizes=(ANCHOR_SIZES,), aspect_ratios=(ANCHOR_RATIOS,))


def all_anchors():
    """[GRID*GRID*A, 4]: anchor (y, x, a) = base[a] + (x*STRIDE, y*STRIDE, x*STRIDE, y*STRIDE)."""
    base = anchor_generator().generate_anchors(ANCHOR_SIZES, ANCHOR_RATIOS).numpy()
    ys, xs = np.meshgrid(np.arange(GRID) * STRIDE, np.arange(GRID) * STRIDE, indexing="ij")
    shifts = np.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4).astype(np.float32)
    return (shifts + base[None]).reshape(-1, 4)


class Detector(nn.Module):
    """Training wrapper: torchvision's RPN (anchors, matching, sampling, losses, proposal
    filtering) around Stage1's head, and a Mask R-CNN-style ROI head loss around Stage2."""

    def __init__(self):
        super().__init__()
        self.stage1 = Stage1()
        self.stage2 = Stage2()
        self.rpn = RegionProposalNetwork(
            anchor_generator(), self.stage1.rpn_head, fg_iou_thresh=0.7, bg_iou_thresh=0.3,
            batch_size_per_image=256, positive_fraction=0.5,
            pre_nms_top_n={"training": PRE_NMS_TOP_N, "testing": PRE_NMS_TOP_N},
            post_nms_top_n={"training": 300, "testing": POST_NMS_TOP_N}, nms_thresh=RPN_NMS_IOU)
        self.rpn.min_size = RPN_MIN_SIZE
        self.box_coder = det_utils.BoxCoder(BOX_WEIGHTS, XFORM_CLIP)
        self.matcher = det_utils.Matcher(0.5, 0.5, allow_low_quality_matches=False)
        self.sampler = det_utils.BalancedPositiveNegativeSampler(64, 0.25)   # <= 8 objects an image

    def forward(self, images, targets, sizes):
        feats = self.stage1.features(images)
        image_list = ImageList(images, sizes)
        rpn_targets = [{"boxes": t["boxes"]} for t in targets]
        proposals, rpn_losses = self.rpn(image_list, {"0": feats}, rpn_targets)

        rois, labels, reg_targets, matched = [], [], [], []
        for props, t in zip(proposals, targets):
            props = torch.cat([props.detach(), t["boxes"]])          # GT as extra proposals
            if len(t["boxes"]):
                quality = box_ops.box_iou(t["boxes"], props)
                idx = self.matcher(quality)
                lab = t["labels"][idx.clamp(min=0)].clone()
                lab[idx < 0] = 0
                gt_for = idx.clamp(min=0)
            else:
                lab = torch.zeros(len(props), dtype=torch.int64)
                gt_for = torch.zeros(len(props), dtype=torch.int64)
            pos, neg = self.sampler([lab])
            keep = torch.where(pos[0] | neg[0])[0]
            rois.append(props[keep])
            labels.append(lab[keep])
            matched.append(gt_for[keep])
            gtb = t["boxes"][gt_for[keep]] if len(t["boxes"]) else props[keep]
            reg_targets.append(self.box_coder.encode_single(gtb, props[keep]))
        roi_batch = torch.cat([torch.cat([torch.full((len(r), 1), float(i)), r], 1)
                               for i, r in enumerate(rois)])
        roi_feats = torchvision.ops.roi_align(feats.contiguous(), roi_batch, (ROI, ROI), 1.0 / STRIDE,
                                              SAMPLING_RATIO, aligned=True)
        cls_logits, deltas, logvar, density = self.stage2.box(roi_feats)
        labels_all = torch.cat(labels)
        loss_cls = F.cross_entropy(cls_logits, labels_all)

        pos = torch.where(labels_all > 0)[0]
        lab_pos = labels_all[pos]
        n = max(1, labels_all.numel())
        d = deltas.reshape(-1, NUM_CLASSES, 4)[pos, lab_pos]
        reg_all = torch.cat(reg_targets)
        loss_box = F.smooth_l1_loss(d, reg_all[pos], beta=1 / 9, reduction="sum") / n

        # variance: Gaussian NLL of the decoded corners' error, in proposal-size units; the error
        # itself is detached so the variance learns how wrong the box is without moving the box
        rois_all = torch.cat(rois)
        if len(pos):
            props = rois_all[pos]
            pw = (props[:, 2] - props[:, 0]).clamp(min=1.0)
            ph = (props[:, 3] - props[:, 1]).clamp(min=1.0)
            pred = self.box_coder.decode_single(d.detach(), props)
            gt = self.box_coder.decode_single(reg_all[pos], props)
            scale = torch.stack([pw, ph, pw, ph], 1)
            err = ((pred - gt) / scale) ** 2
            lv = logvar.reshape(-1, NUM_CLASSES, 4)[pos, lab_pos]
            loss_var = (0.5 * torch.exp(-lv) * err + 0.5 * lv).mean()

            dens_t = torch.cat([t["density"][m] if len(t["density"]) else torch.zeros(len(m))
                                for t, m in zip(targets, matched)])[pos]
            loss_density = F.binary_cross_entropy(density[pos, 0].clamp(1e-6, 1 - 1e-6), dens_t)

            # mask targets: the soft instance mask, ROI-aligned into the proposal, thresholded
            gt_masks = []
            for i, (t, m) in enumerate(zip(targets, matched)):
                k = torch.where(labels[i] > 0)[0]
                if len(k):
                    gt_masks.append(torchvision.ops.roi_align(
                        t["masks"][m[k]][:, None], torch.cat([torch.arange(len(k))[:, None].float(),
                                                              rois[i][k]], 1),
                        (MASK, MASK), 1.0, SAMPLING_RATIO, aligned=True)[:, 0])
            mask_t = (torch.cat(gt_masks) >= 0.5).float()
            # the mask head only on the positives: it is most of stage 2's cost
            mask_logits = self.stage2.mask(roi_feats[pos])
            loss_mask = F.binary_cross_entropy_with_logits(mask_logits[torch.arange(len(pos)), lab_pos], mask_t)
        else:
            loss_var = loss_density = loss_mask = logvar.sum() * 0
        return {"rpn_obj": rpn_losses["loss_objectness"], "rpn_box": rpn_losses["loss_rpn_box_reg"],
                "cls": loss_cls, "box": loss_box, "mask": loss_mask,
                "var": 0.1 * loss_var, "density": 0.5 * loss_density}


# ----------------------------------------------------------------------------- data

def box_density(boxes):
    """Per box: the largest IoU with any other box of the image (0 when alone)."""
    if len(boxes) < 2:
        return torch.zeros(len(boxes))
    iou = box_ops.box_iou(boxes, boxes)
    iou.fill_diagonal_(0)
    return iou.max(1).values


def letterboxed(sample, rng):
    """One generated image as the network sees it (resampled to the letterboxed size by a random
    method), with its boxes in input pixels, labels, and each instance's soft mask at input
    resolution kept only over the instance's window -- the compact form the training pool keeps."""
    rgb, new_w, new_h = common.preprocess_train(sample, SIZE, rng)
    sx, sy = new_w / sample["width"], new_h / sample["height"]
    insts = sample["instances"]
    boxes = np.zeros((len(insts), 4), np.float32)
    windows = []
    for k, a in enumerate(insts):
        x1, y1, x2, y2 = a["box"]
        boxes[k] = [x1 * sx, y1 * sy, x2 * sx, y2 * sy]
        # area-resample only the window around the instance (a full-image resize per instance
        # would cost more than generating the image)
        u0, v0 = max(0, int(x1 * sx) - 2), max(0, int(y1 * sy) - 2)
        u1, v1 = min(new_w, int(math.ceil(x2 * sx)) + 2), min(new_h, int(math.ceil(y2 * sy)) + 2)
        c0, r0 = int(u0 / sx), int(v0 / sy)
        c1, r1 = min(sample["width"], int(math.ceil(u1 / sx)) + 1), min(sample["height"], int(math.ceil(v1 / sy)) + 1)
        crop = Image.fromarray((sample["owner"][r0:r1, c0:c1] == a["index"]).astype(np.uint8) * 255)
        win = crop.resize((u1 - u0, v1 - v0), Image.BILINEAR,
                          box=(u0 / sx - c0, v0 / sy - r0, u1 / sx - c0, v1 / sy - r0))
        windows.append((u0, v0, np.asarray(win, np.uint8)))
    labels = np.array([a["class_id"] for a in insts], np.int64)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8), boxes, labels, windows


def make_view(item, rng):
    """A training sample from a pooled image: one of the 8 symmetries of the square, applied to
    image, masks and boxes; the image top-left in the padded input."""
    rgb, boxes, labels, windows = item
    h, w = rgb.shape[:2]
    masks = np.zeros((len(windows), h, w), np.float32)
    for k, (u0, v0, win) in enumerate(windows):
        masks[k, v0:v0 + win.shape[0], u0:u0 + win.shape[1]] = win.astype(np.float32) / 255
    t = int(rng.integers(0, 8))
    if t & 4:
        rgb, masks = rgb[:, ::-1], masks[:, :, ::-1]
        boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
    for _ in range(t & 3):    # np.rot90: (x, y) -> (y, w - x)
        rgb, masks = np.rot90(rgb), np.rot90(masks, axes=(1, 2))
        boxes = np.stack([boxes[:, 1], w - boxes[:, 2], boxes[:, 3], w - boxes[:, 0]], 1)
        h, w = w, h
    x = common.normalize_pad(np.ascontiguousarray(rgb, np.float32), SIZE)
    full = np.zeros((len(windows), SIZE, SIZE), np.float32)
    full[:, :h, :w] = masks
    boxes_t = torch.from_numpy(np.ascontiguousarray(boxes, np.float32)).reshape(-1, 4)
    return {"image": torch.from_numpy(x), "size": (h, w), "boxes": boxes_t,
            "labels": torch.from_numpy(labels), "masks": torch.from_numpy(full),
            "density": box_density(boxes_t)}


def batches(pool, batch, rng):
    while True:
        yield [make_view(pool[int(i)], rng) for i in rng.integers(0, len(pool), batch)]


# ----------------------------------------------------------------------------- reference inference

def decode(deltas, boxes, weights):
    """torchvision BoxCoder.decode_single, in numpy float32: centre-size deltas on
    (x1, y1, x2, y2) boxes, dw/dh clamped at log(1000/16)."""
    deltas = deltas.astype(np.float32)
    boxes = boxes.astype(np.float32)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    cx = boxes[:, 0] + np.float32(0.5) * w
    cy = boxes[:, 1] + np.float32(0.5) * h
    dx = deltas[:, 0] / np.float32(weights[0])
    dy = deltas[:, 1] / np.float32(weights[1])
    dw = np.minimum(deltas[:, 2] / np.float32(weights[2]), np.float32(XFORM_CLIP))
    dh = np.minimum(deltas[:, 3] / np.float32(weights[3]), np.float32(XFORM_CLIP))
    pcx, pcy = dx * w + cx, dy * h + cy
    pw, ph = np.exp(dw) * w, np.exp(dh) * h
    return np.stack([pcx - np.float32(0.5) * pw, pcy - np.float32(0.5) * ph,
                     pcx + np.float32(0.5) * pw, pcy + np.float32(0.5) * ph], 1)


def clip(boxes, width, height):
    out = boxes.copy()
    out[:, 0::2] = np.clip(out[:, 0::2], 0, width)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, height)
    return out


def paste_mask(logits28, box, info):
    """The mask of one detection in original-image pixels.  logits28 is [28, 28] over the
    proposal `box` (input coordinates).  Original pixel (i, j) has its centre at input
    (u, v) = ((j + 0.5) * sx, (i + 0.5) * sy); it is in the mask iff (u, v) lies inside the box
    (x1 <= u < x2, y1 <= v < y2) and the bilinear sample of the logits at mask coordinates
    mx = (u - x1) / (x2 - x1) * 28 - 0.5, my likewise (clamped to [0, 27]) is > 0."""
    H, W, sx, sy = info["height"], info["width"], info["sx"], info["sy"]
    x1, y1, x2, y2 = [float(v) for v in box]
    mask = np.zeros((H, W), bool)
    j0, j1 = max(0, int(math.floor(x1 / sx - 0.5))), min(W, int(math.ceil(x2 / sx + 0.5)))
    i0, i1 = max(0, int(math.floor(y1 / sy - 0.5))), min(H, int(math.ceil(y2 / sy + 0.5)))
    if j1 <= j0 or i1 <= i0 or x2 <= x1 or y2 <= y1:
        return mask
    u = (np.arange(j0, j1, dtype=np.float32) + np.float32(0.5)) * np.float32(sx)
    v = (np.arange(i0, i1, dtype=np.float32) + np.float32(0.5)) * np.float32(sy)
    in_u, in_v = (u >= x1) & (u < x2), (v >= y1) & (v < y2)
    mx = np.clip((u - np.float32(x1)) / np.float32(x2 - x1) * MASK - np.float32(0.5), 0, MASK - 1)
    my = np.clip((v - np.float32(y1)) / np.float32(y2 - y1) * MASK - np.float32(0.5), 0, MASK - 1)
    mx0, my0 = np.floor(mx).astype(np.int64), np.floor(my).astype(np.int64)
    mx1, my1 = np.minimum(mx0 + 1, MASK - 1), np.minimum(my0 + 1, MASK - 1)
    lx, ly = (mx - mx0)[None, :], (my - my0)[:, None]
    m = logits28.astype(np.float32)
    top = m[my0][:, mx0] * (1 - lx) + m[my0][:, mx1] * lx
    bottom = m[my1][:, mx0] * (1 - lx) + m[my1][:, mx1] * lx
    val = top * (1 - ly) + bottom * ly
    mask[i0:i1, j0:j1] = (val > 0) & in_v[:, None] & in_u[None, :]
    return mask


ANCHORS = None


@torch.no_grad()
def infer(stage1, stage2, jpeg, score_thresh=SCORE_THRESH, nms_iou=NMS_IOU, max_dets=MAX_DETS,
          with_masks=True):
    """The reference two-stage path.  Only stage1/stage2 are network; every other step is an
    explicit numpy / torchvision op the C pipeline mirrors (models/README.md)."""
    global ANCHORS
    if ANCHORS is None:
        ANCHORS = all_anchors()
    # 1. preprocess: keep-aspect resize into the top-left of 384x384, normalize, pad 0
    x, info = common.preprocess(jpeg, SIZE)
    vw, vh = info["new_w"], info["new_h"]
    # 2. stage 1
    feats, logits, deltas = stage1(x)
    logits, deltas = logits[0].numpy(), deltas[0].numpy()
    # 3. top PRE_NMS_TOP_N anchors by objectness logit (descending; ties: lower index first)
    order = np.argsort(-logits, kind="stable")[:PRE_NMS_TOP_N]
    # 4. decode (weights 1,1,1,1), clip to the valid (unpadded) region, drop tiny boxes
    props = clip(decode(deltas[order], ANCHORS[order], RPN_WEIGHTS), vw, vh)
    scores = 1 / (1 + np.exp(-logits[order]))
    keep = ((props[:, 2] - props[:, 0]) >= RPN_MIN_SIZE) & ((props[:, 3] - props[:, 1]) >= RPN_MIN_SIZE)
    props, scores = props[keep], scores[keep]
    # 5. proposal NMS (hard, IoU > 0.7 suppresses), keep the best POST_NMS_TOP_N
    keep = torchvision.ops.nms(torch.from_numpy(props), torch.from_numpy(scores.astype(np.float32)),
                               RPN_NMS_IOU).numpy()[:POST_NMS_TOP_N]
    props = props[keep]
    if len(props) == 0:
        return [], info
    # 6. ROI Align 14x14 on the stride-8 features: spatial_scale 1/8, sampling_ratio 2, aligned
    rois = torch.cat([torch.zeros(len(props), 1), torch.from_numpy(props)], 1)
    roi_feats = torchvision.ops.roi_align(feats, rois, (ROI, ROI), 1.0 / STRIDE, SAMPLING_RATIO, aligned=True)
    # 7. stage 2
    cls_logits, box_deltas, box_logvar, density, mask_logits = [t.numpy() for t in stage2(roi_feats)]
    # 8. softmax; class-wise decode (weights 10,10,5,5) from the proposal; clip
    e = np.exp(cls_logits - cls_logits.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    cand = []
    for c in range(1, NUM_CLASSES):
        boxes_c = clip(decode(box_deltas[:, 4 * c:4 * c + 4], props, BOX_WEIGHTS), vw, vh)
        for r in range(len(props)):
            cand.append((r, c, probs[r, c], boxes_c[r]))
    # 9. score threshold (> score_thresh), drop boxes under 0.01 px
    cand = [t for t in cand if t[2] > score_thresh and t[3][2] - t[3][0] >= DET_MIN_SIZE
            and t[3][3] - t[3][1] >= DET_MIN_SIZE]
    if not cand:
        return [], info
    # 10. NMS per class (hard here; the C side offers the card's methods), best max_dets overall
    boxes = torch.from_numpy(np.stack([t[3] for t in cand]).astype(np.float32))
    sc = torch.tensor([t[2] for t in cand], dtype=torch.float32)
    cl = torch.tensor([t[1] for t in cand])
    keep = torchvision.ops.batched_nms(boxes, sc, cl, nms_iou).numpy()[:max_dets]
    # 11. back to original pixels; masks pasted over the proposal box
    dets = []
    for k in keep:
        r, c, s, b = cand[k]
        pw, ph = props[r, 2] - props[r, 0], props[r, 3] - props[r, 1]
        var = np.exp(box_logvar[r, 4 * c:4 * c + 4]) * np.array([pw, ph, pw, ph]) ** 2
        det = {"class_id": int(c), "label": common.CLASSES[c], "score": float(s),
               "box": [float(b[0] / info["sx"]), float(b[1] / info["sy"]),
                       float(b[2] / info["sx"]), float(b[3] / info["sy"])],
               "box_input": [float(v) for v in b], "proposal": [float(v) for v in props[r]],
               "roi_index": int(r),
               "variance": [float(var[0] / info["sx"] ** 2), float(var[1] / info["sy"] ** 2),
                            float(var[2] / info["sx"] ** 2), float(var[3] / info["sy"] ** 2)],
               "density": float(density[r, 0])}
        if with_masks:
            det["mask"] = paste_mask(mask_logits[r, c], props[r], info)
        dets.append(det)
    return dets, info


def evaluate(stage1, stage2, seed, count, log=print):
    stage1.eval()
    stage2.eval()
    stream = generate.ShapesStream(seed)
    gts, dets = [], []
    t0 = time.time()
    for i in range(count):
        s = stream.sample(i, decode=False)
        d, _ = infer(stage1, stage2, s["jpeg"])
        dets.append(d)
        gts.append([{"class_id": a["class_id"], "box": a["box"], "mask": s["owner"] == a["index"]}
                    for a in s["instances"]])
    t1 = time.time()
    box = metrics.evaluate(gts, dets, NUM_CLASSES, "box")
    mask = metrics.evaluate(gts, dets, NUM_CLASSES, "mask")
    res = {"box_mAP@0.5": box["mAP@0.5"], "box_mAP@0.75": box["mAP@0.75"],
           "box_mAP@[.5:.95]": box["mAP@[.5:.95]"],
           "mask_mAP@0.5": mask["mAP@0.5"], "mask_mAP@0.75": mask["mAP@0.75"],
           "mask_mAP@[.5:.95]": mask["mAP@[.5:.95]"],
           "box_AP@0.5_per_class": {common.CLASSES[c]: v for c, v in box["per_class@0.5"].items()},
           "mask_AP@0.5_per_class": {common.CLASSES[c]: v for c, v in mask["per_class@0.5"].items()},
           "eval_seed": seed, "eval_images": count, "ground_truths": box["ground_truths"],
           "nms": "hard", "nms_iou": NMS_IOU, "score_threshold": SCORE_THRESH,
           "seconds_per_image_pytorch": round((t1 - t0) / max(1, count), 3)}
    log("eval seed %d, %d images: box mAP@.5 %.4f mAP@[.5:.95] %.4f | mask mAP@.5 %.4f "
        "mAP@[.5:.95] %.4f (%.2f s/img infer)" % (
            seed, count, res["box_mAP@0.5"], res["box_mAP@[.5:.95]"], res["mask_mAP@0.5"],
            res["mask_mAP@[.5:.95]"], res["seconds_per_image_pytorch"]))
    return res


# ----------------------------------------------------------------------------- export + card

def export(stage1, stage2, out_dir):
    import onnx
    stage1.eval()
    stage2.eval()
    p1 = os.path.join(out_dir, "shapes-det-stage1.onnx")
    p2 = os.path.join(out_dir, "shapes-det-stage2.onnx")
    torch.onnx.export(stage1, torch.zeros(1, 3, SIZE, SIZE), p1, opset_version=13, input_names=["input"],
                      output_names=["features", "rpn_logits", "rpn_deltas"], do_constant_folding=True)
    torch.onnx.export(stage2, torch.zeros(3, FEAT, ROI, ROI), p2, opset_version=13,
                      input_names=["roi_features"],
                      output_names=["cls_logits", "box_deltas", "box_logvar", "density", "mask_logits"],
                      dynamic_axes={"roi_features": {0: "R"}, "cls_logits": {0: "R"}, "box_deltas": {0: "R"},
                                    "box_logvar": {0: "R"}, "density": {0: "R"}, "mask_logits": {0: "R"}},
                      do_constant_folding=True)
    ops = {}
    for name, p in (("stage1", p1), ("stage2", p2)):
        m = onnx.load(p)
        onnx.checker.check_model(m)
        onnx.shape_inference.infer_shapes(m, strict_mode=True)
        ops[name] = sorted({n.op_type for n in m.graph.node})
    return ops, (p1, p2)


def write_card(path, args, metrics_, train_info, ops):
    base = anchor_generator().generate_anchors(ANCHOR_SIZES, ANCHOR_RATIOS).numpy()
    card = {
        "name": "shapes-det",
        "description": "Two-stage Mask R-CNN-like detector for maskd's synthetic shapes: depthwise-separable "
                       "backbone (output stride 8, HDC dilations 1,2,5 twice) + ASPP (GroupNorm, rates 6,12,18) features, a "
                       "single-level RPN, a box head with class-specific deltas, coordinate log-variances "
                       "(Softer-NMS) and a density (Adaptive NMS), and a 28x28 class-specific mask head.",
        "pipeline": "detect-two-stage",
        "files": {"stage1": "shapes-det-stage1.onnx", "stage2": "shapes-det-stage2.onnx"},
        "input": {"name": "input", "shape": [1, 3, SIZE, SIZE], "layout": "NCHW", "dtype": "float32",
                  "color": "RGB", "width": SIZE, "height": SIZE,
                  "resize": "keep-aspect", "resize_filter": "bilinear",
                  "resize_notes": "s = min(384/W, 384/H); new_w = clamp(floor(W*s+0.5),1,384), same for "
                                  "new_h; JPEG DCT-scaled decode to the smallest size >= new_w x new_h, then "
                                  "bilinear (half-pixel, align_corners=false) to exactly new_w x new_h. "
                                  "sx = new_w/W, sy = new_h/H map input coordinates back: x_orig = x_in/sx.",
                  "placement": "top-left",
                  "pad_value": [123.675, 116.28, 103.53],
                  "pad_value_notes": "0..255 scale = the mean, i.e. 0.0 in the normalized tensor",
                  "scale": "0..255", "mean": common.MEAN.tolist(), "std": common.STD.tolist(),
                  "normalize": "x = (pixel - mean) / std, pixel in 0..255"},
        "labels": common.CLASSES,
        "background_class": 0,
        "stage1": {
            "outputs": {
                "features": {"shape": [1, FEAT, GRID, GRID], "meaning": "stride-8 feature map for ROI Align"},
                "rpn_logits": {"shape": [1, GRID * GRID * len(base)],
                               "meaning": "objectness logit per anchor (sigmoid = score), anchor order (y, x, a)"},
                "rpn_deltas": {"shape": [1, GRID * GRID * len(base), 4],
                               "meaning": "(dx, dy, dw, dh) per anchor, decode with weights rpn.box_coder_weights"}},
        },
        "anchors": {"stride": STRIDE, "grid": [GRID, GRID], "sizes": list(ANCHOR_SIZES),
                    "aspect_ratios": list(ANCHOR_RATIOS), "per_location": len(base),
                    "base": base.tolist(),
                    "rule": "anchor index i = (y*%d + x)*%d + a; anchor = base[a] + [x*%d, y*%d, x*%d, y*%d] "
                            "(input pixels, x1 y1 x2 y2; cell's top-left corner, as torchvision)"
                            % (GRID, len(base), STRIDE, STRIDE, STRIDE, STRIDE),
                    "base_rule": "torchvision AnchorGenerator: for ratio r (outer) and size s (inner): "
                                 "h_ratio = sqrt(r), w_ratio = 1/h_ratio, w = w_ratio*s, h = h_ratio*s, "
                                 "base = round([-w/2, -h/2, w/2, h/2]) (round half to even)"},
        "rpn": {"box_coder_weights": list(RPN_WEIGHTS), "exp_clamp": XFORM_CLIP,
                "pre_nms_top_n": PRE_NMS_TOP_N, "nms_iou": RPN_NMS_IOU, "post_nms_top_n": POST_NMS_TOP_N,
                "min_size": RPN_MIN_SIZE, "clip_to": "valid region [0,new_w] x [0,new_h] (not the padding)"},
        "roi_align": {"output_size": [ROI, ROI], "spatial_scale": 1.0 / STRIDE, "sampling_ratio": SAMPLING_RATIO,
                      "aligned": True, "mode": "avg", "onnx_equivalent": "RoiAlign opset 16, half_pixel",
                      "rois": "the proposals after NMS, input-pixel coordinates"},
        "stage2": {
            "input": {"name": "roi_features", "shape": ["R", FEAT, ROI, ROI]},
            "outputs": {
                "cls_logits": {"shape": ["R", NUM_CLASSES], "meaning": "class logits, softmax -> scores, 0 = background"},
                "box_deltas": {"shape": ["R", NUM_CLASSES * 4],
                               "meaning": "class-specific (dx,dy,dw,dh) from the proposal, class c at [4c,4c+4), "
                                          "weights box_coder_weights"},
                "box_logvar": {"shape": ["R", NUM_CLASSES * 4],
                               "meaning": "class-specific log sigma^2 of the decoded (x1,y1,x2,y2) in units of the "
                                          "proposal's width^2 (x1,x2) / height^2 (y1,y2): var_x[input px^2] = "
                                          "exp(v)*pw^2; in original px^2 divide by sx^2 (sy^2)"},
                "density": {"shape": ["R", 1],
                            "meaning": "predicted max IoU of this object with any other object (0..1, sigmoid "
                                       "applied), class-agnostic: Adaptive NMS's density"},
                "mask_logits": {"shape": ["R", NUM_CLASSES, MASK, MASK],
                                "meaning": "class-specific mask logits over the PROPOSAL box (not the refined box); "
                                           "paste: see models/README.md"}},
            "box_coder_weights": list(BOX_WEIGHTS), "exp_clamp": XFORM_CLIP,
        },
        "postprocess": {"score_threshold": SCORE_THRESH, "score_rule": "score > threshold",
                        "min_box_size": DET_MIN_SIZE, "class_wise_decode": True,
                        "mask_threshold_logit": 0.0, "mask_rule": "bilinear logit sample > 0"},
        "nms": {"default": {"method": "hard", "iou": NMS_IOU, "score_threshold": SCORE_THRESH,
                            "max_detections": MAX_DETS, "class_agnostic": False, "sigma": 0.5},
                "allowed": ["hard", "soft-linear", "soft-gaussian", "weighted", "diou", "softer", "adaptive",
                            "matrix", "cluster"],
                "softer": {"variances": "stage2 box_logvar", "sigma_t": 0.025},
                "adaptive": {"density": "stage2 density"},
                "limits": {"max_detections": 300, "iou": [0.1, 0.95]}},
        "onnx": {"opset": 13, "ops": ops},
        "training": {"seed": args.seed, "reproduce": "models/train/reproduce.sh",
                     "command": "/usr/bin/python3 models/train/train_det.py "
                     + " ".join(args.reproduce), **train_info},
        "accuracy": {"pytorch": metrics_, "maskd": None,
                     "notes": "pytorch = infer() in train_det.py (the reference path: PIL draft decode, bilinear "
                              "resize, the two torch modules, numpy/torchvision ops) on the JPEGs of "
                              "models/shapes/generate.py --seed %d, COCO-style mAP (models/train/metrics.py), "
                              "hard NMS IoU 0.5 per class, score > 0.05, <= 100 detections"
                              % metrics_.get("eval_seed", -1)},
    }
    with open(path, "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=2, help="training data stream + init seed")
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pool", type=int, default=4000, help="generated images the training samples are drawn from")
    ap.add_argument("--procs", type=int, default=2, help="processes that draw the pool")
    ap.add_argument("--eval-seed", type=int, default=1000)
    ap.add_argument("--eval-count", type=int, default=300)
    ap.add_argument("--val-every", type=int, default=1000)
    ap.add_argument("--checkpoint", default="/tmp/maskd-train/det.pt")
    ap.add_argument("--out-dir", default=common.MODELS)
    ap.add_argument("--init-backbone", default="",
                    help="start the backbone from a train_seg.py checkpoint (it already knows the shapes)")
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

    model = Detector()
    log("parameters: stage1 %.2f M, stage2 %.2f M" % (
        sum(p.numel() for p in model.stage1.parameters()) / 1e6,
        sum(p.numel() for p in model.stage2.parameters()) / 1e6))
    state = {"step": 0, "seconds": 0.0}
    if args.resume or args.eval_only or args.export_only:
        ck = torch.load(args.checkpoint)
        model.load_state_dict(ck["model"])
        state = ck["state"]
    elif args.init_from:
        common.init_from(model, args.init_from, state, log)
    elif args.init_backbone:
        seg = torch.load(args.init_backbone)["model"]
        model.stage1.backbone.load_state_dict({k[len("backbone."):]: v for k, v in seg.items()
                                               if k.startswith("backbone.")})
        log("backbone initialized from %s" % args.init_backbone)

    if not (args.eval_only or args.export_only):
        state.setdefault("command", " ".join(["models/train/train_det.py"] + args.reproduce))
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=args.pct_start)
        if args.resume:
            opt.load_state_dict(ck["opt"])
            sched.load_state_dict(ck["sched"])
        t_pool = time.time()
        pool = common.draw_pool(args.seed, args.data_start, args.pool, letterboxed, args.procs, log)
        state["pool_seconds"] = state.get("pool_seconds", 0.0) + time.time() - t_pool
        data = batches(pool, args.batch, np.random.default_rng([args.seed, state["step"], 11]))
        model.stage1.to(memory_format=torch.channels_last)
        model.train()
        t_start, run = time.time() - state["seconds"], {}
        for batch in data:
            if state["step"] >= args.steps:
                break
            images = torch.stack([b["image"] for b in batch]).to(memory_format=torch.channels_last)
            losses = model(images, batch, [b["size"] for b in batch])
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            sched.step()
            state["step"] += 1
            for k, v in list(losses.items()) + [("total", loss)]:
                run[k] = v.item() if k not in run else 0.98 * run[k] + 0.02 * v.item()
            if state["step"] % 50 == 0:
                el = time.time() - t_start
                log("step %d/%d %s lr %.2e %.2f s/step, elapsed %.0f min" % (
                    state["step"], args.steps, " ".join("%s %.4f" % kv for kv in run.items()),
                    sched.get_last_lr()[0], el / state["step"], el / 60))
            if state["step"] % 250 == 0 or state["step"] == args.steps:
                state["seconds"] = time.time() - t_start
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                            "sched": sched.state_dict(), "state": state}, args.checkpoint)
            if args.val_every and state["step"] % args.val_every == 0 and state["step"] < args.steps:
                evaluate(model.stage1, model.stage2, 999, 40, log)
                model.train()
        state["seconds"] = time.time() - t_start
        log("training done: %d steps in %.1f min" % (state["step"], state["seconds"] / 60))
        model.stage1.to(memory_format=torch.contiguous_format)

    ops, paths = export(model.stage1, model.stage2, args.out_dir)
    log("exported %s (%.2f MB), %s (%.2f MB); ops %s" % (
        paths[0], os.path.getsize(paths[0]) / 1e6, paths[1], os.path.getsize(paths[1]) / 1e6, ops))
    card_path = os.path.join(args.out_dir, "shapes-det.json")
    if args.export_only:
        metrics_ = json.load(open(card_path))["accuracy"]["pytorch"]
    else:
        metrics_ = evaluate(model.stage1, model.stage2, args.eval_seed, args.eval_count, log)
    train_info = {"steps": state["step"], "batch": args.batch, "images_drawn": args.pool,
                  "views_seen": state["step"] * args.batch,
                  "train_minutes": round(state["seconds"] / 60, 1),
                  "pool_minutes": round(state.get("pool_seconds", 0.0) / 60, 1), "threads": args.threads,
                  "previous_phase": state.get("previous")}
    write_card(card_path, args, metrics_, train_info, ops)
    log("card written")


if __name__ == "__main__":
    main()
