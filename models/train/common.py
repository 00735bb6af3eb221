"""What the shapes models share: the preprocessing contract with maskd's C pipelines,
the on-the-fly data stream, and the network building blocks.

The preprocessing here is the reference the C side mirrors (models/README.md):
  1. scale s = min(S / W, S / H); new_w = clamp(floor(W * s + 0.5), 1, S), same for new_h;
  2. decode the JPEG with DCT scaling to the smallest size that is still >= new_w x new_h
     (libjpeg scale_num/scale_denom; PIL's Image.draft does the same with 1/1, 1/2, 1/4, 1/8);
  3. bilinear resize to new_w x new_h, half-pixel centres (align_corners = false), no antialias;
  4. RGB, x = (pixel - mean) / std with pixel in 0..255, NCHW float32;
  5. the image sits at the top-left corner of the S x S input; the rest is 0.0 after
     normalization (= the mean colour before it).
Coordinates map back with sx = new_w / W and sy = new_h / H: x_original = x_input / sx.
"""
import functools
import io
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(MODELS, "shapes"))
import generate  # noqa: E402

CLASSES = generate.CLASSES
MEAN = np.array([123.675, 116.28, 103.53], np.float32)   # 0..255 scale, RGB
STD = np.array([58.395, 57.12, 57.375], np.float32)


def letterbox_size(width, height, size):
    s = min(size / width, size / height)
    new_w = min(size, max(1, int(math.floor(width * s + 0.5))))
    new_h = min(size, max(1, int(math.floor(height * s + 0.5))))
    return new_w, new_h


def open_scaled(jpeg, new_w, new_h):
    """Decode with the JPEG decoder's DCT scaling, as the C side does."""
    pil = Image.open(io.BytesIO(jpeg))
    pil.draft("RGB", (new_w, new_h))
    return pil.convert("RGB")


def bilinear(arr, new_w, new_h):
    """HxWx3 uint8/float -> new_h x new_w x 3 float32, half-pixel bilinear, no antialias."""
    t = torch.from_numpy(np.ascontiguousarray(arr, np.float32)).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=(new_h, new_w), mode="bilinear", align_corners=False)
    return t[0].permute(1, 2, 0).numpy()


def normalize_pad(rgb, size):
    """new_h x new_w x 3 (0..255) -> 3 x S x S float32, image top-left, zeros elsewhere."""
    out = np.zeros((3, size, size), np.float32)
    h, w = rgb.shape[:2]
    out[:, :h, :w] = ((rgb - MEAN) / STD).transpose(2, 0, 1)
    return out


def preprocess(jpeg, size):
    """The reference preprocessing.  Returns (1x3xSxS tensor, info dict)."""
    pil = Image.open(io.BytesIO(jpeg))
    width, height = pil.size
    new_w, new_h = letterbox_size(width, height, size)
    scaled = np.asarray(open_scaled(jpeg, new_w, new_h))
    x = normalize_pad(bilinear(scaled, new_w, new_h), size)
    info = {"width": width, "height": height, "new_w": new_w, "new_h": new_h,
            "sx": new_w / width, "sy": new_h / height}
    return torch.from_numpy(x)[None], info


def preprocess_train(sample, size, rng):
    """Like preprocess, but with a random resampling path (the C side or a user's client may
    resize differently; the models should not care), and random flips / 90-degree turns."""
    width, height = sample["width"], sample["height"]
    new_w, new_h = letterbox_size(width, height, size)
    how = rng.random()
    if how < 0.4:
        rgb = bilinear(np.asarray(open_scaled(sample["jpeg"], new_w, new_h)), new_w, new_h)
    else:
        filt = [Image.BILINEAR, Image.BICUBIC, Image.BOX, Image.LANCZOS][int(rng.integers(0, 4))]
        rgb = np.asarray(Image.fromarray(sample["image"]).resize((new_w, new_h), filt), np.float32)
    return rgb, new_w, new_h


def class_map_at_input(classes, new_w, new_h):
    """Nearest ground-truth class at each input pixel centre."""
    height, width = classes.shape
    xs = np.minimum(width - 1, ((np.arange(new_w) + 0.5) * width / new_w).astype(np.int64))
    ys = np.minimum(height - 1, ((np.arange(new_h) + 0.5) * height / new_h).astype(np.int64))
    return classes[ys[:, None], xs[None, :]]


def dihedral(arrays, k):
    """Apply one of the 8 symmetries of the square to HxW(xC) arrays (all shapes' classes are
    invariant under them)."""
    out = []
    for a in arrays:
        if k & 4:
            a = a[:, ::-1]
        a = np.rot90(a, k & 3)
        out.append(np.ascontiguousarray(a))
    return out


# ----------------------------------------------------------------------------- blocks

def conv_bn(cin, cout, k=3, stride=1, dilation=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride, dilation * (k // 2), dilation, groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, depthwise 3x3 (strided or dilated), 1x1 project."""

    def __init__(self, cin, cout, expand=4, stride=1, dilation=1):
        super().__init__()
        mid = cin * expand
        layers = []
        if expand != 1:
            layers.append(conv_bn(cin, mid, 1))
        layers += [conv_bn(mid, mid, 3, stride, dilation, groups=mid), conv_bn(mid, cout, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class Backbone(nn.Module):
    """Depthwise-separable backbone, output stride 8, returning the /4 features (for a decoder's
    boundary detail) and the /8 features.  At /8 the resolution stays put and the depthwise
    convs take HDC-style mixed dilations 1, 2, 5 in two rounds (rates with no common factor, so
    the stacked receptive field has no holes -- the gridding a constant rate would cause).
    Thin at /2 and /4: on CPU the cost of training is memory traffic, which the large early
    maps dominate; the width goes where the maps are small."""

    def __init__(self, widths=(32, 64, 96, 128), expand=3):
        super().__init__()
        c4, c8, c8b, c8c = widths
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2),                                  # /2
                                  conv_bn(16, 16, 3, groups=16), conv_bn(16, c4, 1))
        self.low = nn.Sequential(InvertedResidual(c4, c4, expand=2, stride=2),           # /4
                                 InvertedResidual(c4, c4, expand=3))
        self.high = nn.Sequential(
            InvertedResidual(c4, c8, expand, stride=2), InvertedResidual(c8, c8, expand),  # /8
            InvertedResidual(c8, c8b, expand, dilation=1), InvertedResidual(c8b, c8b, expand, dilation=2),
            InvertedResidual(c8b, c8b, expand, dilation=5),
            InvertedResidual(c8b, c8c, expand, dilation=1), InvertedResidual(c8c, c8c, expand, dilation=2),
            InvertedResidual(c8c, c8c, expand, dilation=5))
        self.low_channels, self.channels = c4, c8c

    def forward(self, x):
        low = self.low(self.stem(x))
        return low, self.high(low)


def gn(channels):
    return nn.GroupNorm(8, channels)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, three atrous 3x3 branches (depthwise +
    pointwise), and an image-pooling branch, each with GroupNorm; concat, 1x1 projection."""

    def __init__(self, cin, branch, cout, rates=(3, 6, 9)):
        super().__init__()
        self.b0 = nn.Sequential(nn.Conv2d(cin, branch, 1, bias=False), gn(branch), nn.ReLU(inplace=True))
        self.atrous = nn.ModuleList([
            nn.Sequential(nn.Conv2d(cin, cin, 3, 1, r, r, groups=cin, bias=False), gn(cin), nn.ReLU(inplace=True),
                          nn.Conv2d(cin, branch, 1, bias=False), gn(branch), nn.ReLU(inplace=True))
            for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, branch, 1, bias=False),
                                  gn(branch), nn.ReLU(inplace=True))
        # The 1x1 projection of concat(b0, atrous..., pooled-and-broadcast) is computed as
        # conv(concat(b0, atrous...)) + conv(pooled): the pooled branch is constant over space,
        # so its share of the projection is a per-channel bias.  Same function, no Expand of a
        # 1x1 map to HxW in the graph.
        self.project = nn.Conv2d(branch * 4, cout, 1, bias=False)
        self.project_pool = nn.Conv2d(branch, cout, 1, bias=False)
        self.project_norm = nn.Sequential(gn(cout), nn.ReLU(inplace=True))

    def forward(self, x):
        feats = [self.b0(x)] + [b(x) for b in self.atrous]
        y = self.project(torch.cat(feats, 1)) + self.project_pool(self.pool(x))
        return self.project_norm(y)


# ----------------------------------------------------------------------------- data

def _draw(seed, prepare, index):
    sample = generate.ShapesStream(seed).sample(index)
    return prepare(sample, np.random.default_rng([seed, index, 7]))


def draw_pool(seed, start, count, prepare, procs=2, log=print):
    """`count` generated images (indices start..start+count-1), each turned by `prepare(sample,
    rng)` into the compact arrays training draws its views from.  Drawing an image costs about as
    much CPU as a training step on it; drawn once up front on every core, the images then serve
    many differently cropped and turned views while the training step has the cores to itself."""
    import multiprocessing
    t0 = time.time()
    draw = functools.partial(_draw, seed, prepare)
    # torch.set_num_threads(1) first thing in each child: once the parent has run a parallel op,
    # its OpenMP pool does not survive fork, and the child's first parallel op would hang
    with multiprocessing.get_context("fork").Pool(procs, initializer=torch.set_num_threads,
                                                 initargs=(1,)) as pool:
        out = pool.map(draw, range(start, start + count), chunksize=16)
    log("drew %d training images (from index %d) in %.0f s on %d processes"
        % (count, start, time.time() - t0, procs))
    return out


def add_phase_args(ap):
    """The options that make a second training phase: weights from a checkpoint, a fresh
    one-cycle schedule, and images the first phase never drew."""
    ap.add_argument("--init-from", default="",
                    help="phase 2: start from this checkpoint's weights with a fresh optimizer and schedule")
    ap.add_argument("--data-start", type=int, default=0,
                    help="first image index of the training stream (phase 2 continues past phase 1's)")
    ap.add_argument("--pct-start", type=float, default=0.05, help="OneCycle warm-up share")


def init_from(model, path, state, log):
    """Loads a previous phase's weights; its state (steps, seconds, command) goes on record."""
    prev = torch.load(path)
    model.load_state_dict(prev["model"])
    state["previous"] = prev["state"]
    log("weights from %s (%s)" % (path, prev["state"]))


def set_threads(n=2):
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
