#!/usr/bin/python3
"""The "shapes" data set: seeded synthetic images with exact ground truth.

Classes: 0 background, 1 circle, 2 square, 3 triangle, 4 star.

Every image is a pure function of (seed, index), so a data set on disk and the
on-the-fly stream used for training draw from the same distribution, and a
held-out evaluation set is just another seed.

Write a data set:
    /usr/bin/python3 models/shapes/generate.py --out /tmp/shapes-eval --seed 1000 --count 300

Layout of --out:
    images/NNNNNN.jpg       the JPEG the models see (quality 50..95)
    masks/NNNNNN.png        class-index map (uint8, 0..4), the semantic ground truth
    instances/NNNNNN.png    instance-index map (uint8, 0 = none, k = k-th annotation of the image)
    annotations.json        COCO instances format; bbox = [x, y, w, h] of the visible mask in
                            pixel-edge coordinates (x2 = last column + 1), segmentation = COCO
                            compressed RLE of the visible mask, area = its pixel count

Ground truth is rasterized at pixel centres (x + 0.5, y + 0.5): a pixel belongs to a shape when
its centre is inside.  The drawn image uses the same geometry with one pixel of anti-aliasing.

On the fly (training):
    from generate import ShapesStream
    sample = ShapesStream(seed).sample(index)   # dict: image (HxWx3 uint8, JPEG round-tripped),
                                                 # classes (HxW uint8), instances (list of dicts)
"""
import argparse
import io
import json
import math
import os
import sys
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ["background", "circle", "square", "triangle", "star"]

MIN_SIDE, MAX_SIDE = 192, 1024
MIN_ASPECT, MAX_ASPECT = 0.5, 2.0
MIN_SHAPES, MAX_SHAPES = 1, 8
MIN_REL_SIZE, MAX_REL_SIZE = 0.06, 0.45
# A shape must keep this share of its own area inside the image and unoccluded;
# below it the class stops being decidable from pixels, even for a person.
MIN_VISIBLE_FRACTION = 0.5


# ----------------------------------------------------------------------------- geometry

def regular_polygon(cx, cy, radius, n, phase):
    angles = phase + np.arange(n) * (2 * np.pi / n)
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)


def polygon_area(poly):
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def convex_signed_distance(poly, px, py):
    """Distance inside a convex polygon (positive inside), exact inside, a lower bound outside.
    Vertices in either winding order."""
    x, y = poly[:, 0], poly[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    orientation = np.sign(np.dot(x, yn) - np.dot(y, xn)) or 1.0
    sd = None
    for i in range(len(poly)):
        ex, ey = xn[i] - x[i], yn[i] - y[i]
        length = math.hypot(ex, ey) or 1.0
        # inward normal for counter-clockwise (in a y-down frame that is the mirrored sense)
        nx, ny = -ey * orientation / length, ex * orientation / length
        d = (px - x[i]) * nx + (py - y[i]) * ny
        sd = d if sd is None else np.minimum(sd, d)
    return sd


class Shape:
    """One shape: its class and a signed distance over a pixel window."""

    def __init__(self, cls, cx, cy, size, angle, rng):
        self.cls, self.cx, self.cy = cls, cx, cy
        if cls == 1:                                   # circle, diameter = size
            self.radius = size / 2
            self.pieces = None
            self.area = math.pi * self.radius ** 2
            self.extent = self.radius
        elif cls == 2:                                 # square, side = size
            poly = regular_polygon(cx, cy, size / math.sqrt(2), 4, angle + math.pi / 4)
            self.pieces = [poly]
            self.area = size * size
        elif cls == 3:                                 # triangle, roughly equilateral, side ~ size
            r = size / math.sqrt(3)
            a = angle + np.arange(3) * (2 * np.pi / 3) + rng.uniform(-0.25, 0.25, 3)
            rr = r * rng.uniform(0.85, 1.15, 3)
            poly = np.stack([cx + rr * np.cos(a), cy + rr * np.sin(a)], 1)
            self.pieces = [poly]
            self.area = polygon_area(poly)
        else:                                          # five-pointed star, outer diameter = size
            ro = size / 2
            ri = ro * rng.uniform(0.38, 0.55)
            outer = regular_polygon(cx, cy, ro, 5, angle)
            inner = regular_polygon(cx, cy, ri, 5, angle + math.pi / 5)
            # the star is the union of five convex kites (centre, inner_k-1, tip_k, inner_k)
            centre = np.array([[cx, cy]])
            self.pieces = [np.concatenate([centre, inner[k - 1:k] if k else inner[4:5],
                                           outer[k:k + 1], inner[k:k + 1]]) for k in range(5)]
            # and the inner pentagon, so the kites' shared spokes are not a false edge
            self.pieces.append(inner)
            outline = np.empty((10, 2))
            outline[0::2], outline[1::2] = outer, inner
            self.area = polygon_area(outline)
        if self.pieces is not None:
            allp = np.concatenate(self.pieces)
            self.extent = float(np.max(np.hypot(allp[:, 0] - cx, allp[:, 1] - cy)))

    def window(self, width, height):
        e = self.extent + 2
        x0, x1 = max(0, int(self.cx - e)), min(width, int(math.ceil(self.cx + e)))
        y0, y1 = max(0, int(self.cy - e)), min(height, int(math.ceil(self.cy + e)))
        return x0, y0, x1, y1

    def signed_distance(self, x0, y0, x1, y1):
        px = (np.arange(x0, x1, dtype=np.float32) + 0.5)[None, :]
        py = (np.arange(y0, y1, dtype=np.float32) + 0.5)[:, None]
        if self.pieces is None:
            return self.radius - np.sqrt((px - self.cx) ** 2 + (py - self.cy) ** 2)
        sd = None
        for poly in self.pieces:
            d = convex_signed_distance(poly.astype(np.float32), px, py)
            sd = d if sd is None else np.maximum(sd, d)
        return np.broadcast_to(sd, (y1 - y0, x1 - x0))


# ----------------------------------------------------------------------------- textures

def random_colour(rng):
    # a mix of saturated and dull colours, some near black / white
    kind = rng.random()
    if kind < 0.5:
        return rng.random(3).astype(np.float32)
    hue = rng.random()
    sat = rng.uniform(0.3, 1.0)
    val = rng.uniform(0.15, 1.0)
    return hsv_to_rgb(hue, sat, val)


def hsv_to_rgb(h, s, v):
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i],
                    dtype=np.float32)


def smooth_noise(rng, h, w, cells, channels=1):
    """Value noise: a coarse random grid upsampled bicubically."""
    gh, gw = max(2, int(h / cells)), max(2, int(w / cells))
    out = np.empty((h, w, channels), np.float32)
    for c in range(channels):
        grid = Image.fromarray((rng.random((gh, gw)) * 255).astype(np.uint8))
        out[..., c] = np.asarray(grid.resize((w, h), Image.BICUBIC), np.float32) / 255
    return out


def rotated_coords(h, w, angle, y0=0, x0=0):
    ys = (np.arange(y0, y0 + h, dtype=np.float32) + 0.5)[:, None]
    xs = (np.arange(x0, x0 + w, dtype=np.float32) + 0.5)[None, :]
    c, s = math.cos(angle), math.sin(angle)
    return xs * c + ys * s, -xs * s + ys * c


def two_colour_pattern(rng, h, w, y0=0, x0=0, scale=40.0):
    """Stripes or checks in [0, 1] at a random angle and period, hard or soft-edged."""
    u, v = rotated_coords(h, w, rng.uniform(0, np.pi), y0, x0)
    period = rng.uniform(0.15, 1.0) * scale
    if rng.random() < 0.5:
        t = (np.floor(u / period) % 2) * np.ones_like(v)
    else:
        t = (np.floor(u / period) + np.floor(v / period)) % 2
    if rng.random() < 0.3:
        t = 0.5 + 0.5 * np.sin(u * (2 * np.pi / period)) * np.ones_like(v)
    return t.astype(np.float32)


def background(rng, h, w):
    kind = rng.choice(["flat", "gradient", "noise", "pattern", "clutter"],
                      p=[0.15, 0.2, 0.2, 0.2, 0.25])
    c1, c2 = random_colour(rng), random_colour(rng)
    if kind == "flat":
        img = np.broadcast_to(c1, (h, w, 3)).copy()
    elif kind == "gradient":
        if rng.random() < 0.7:
            u, _ = rotated_coords(h, w, rng.uniform(0, 2 * np.pi))
            t = (u - u.min()) / max(1e-6, float(u.max() - u.min()))
        else:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ys = np.arange(h, dtype=np.float32)[:, None]
            xs = np.arange(w, dtype=np.float32)[None, :]
            t = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
            t = t / t.max()
        img = c1 + (c2 - c1) * t[..., None]
    elif kind == "noise":
        t = smooth_noise(rng, h, w, rng.uniform(8, 120))
        if rng.random() < 0.5:
            img = c1 + (c2 - c1) * t
        else:
            img = smooth_noise(rng, h, w, rng.uniform(8, 120), 3)
    elif kind == "pattern":
        t = two_colour_pattern(rng, h, w, scale=min(h, w) * 0.3)
        img = c1 + (c2 - c1) * t[..., None]
    else:
        pil = Image.new("RGB", (w, h), tuple(int(v * 255) for v in c1))
        draw = ImageDraw.Draw(pil)
        for _ in range(rng.integers(5, 40)):
            colour = tuple(int(v * 255) for v in random_colour(rng))
            x, y = rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h
            r = rng.uniform(0.02, 0.25) * min(h, w)
            what = rng.random()
            if what < 0.4:
                x2, y2 = x + rng.normal() * r * 3, y + rng.normal() * r * 3
                draw.line([(x, y), (x2, y2)], fill=colour, width=int(rng.uniform(2, 0.5 * r + 3)))
            elif what < 0.7:
                draw.ellipse([x - r, y - r * rng.uniform(0.2, 0.6), x + r,
                              y + r * rng.uniform(0.2, 0.6)], fill=colour)
            else:
                pts = [(x + rng.normal() * r, y + rng.normal() * r) for _ in range(rng.integers(4, 9))]
                draw.polygon(pts, fill=colour)
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(3, 10) * min(h, w) / 512))
        img = np.asarray(pil, np.float32) / 255
    if rng.random() < 0.3:   # fine grain on top of anything
        img = img + rng.normal(0, rng.uniform(0.01, 0.06), (h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def shape_fill(rng, shape, x0, y0, h, w, colour):
    """The shape's colour over its window: solid, two-tone, or textured; optionally shaded."""
    kind = rng.choice(["solid", "two-tone", "textured"], p=[0.45, 0.25, 0.3])
    second = random_colour(rng)
    if kind == "solid":
        fill = np.broadcast_to(colour, (h, w, 3)).astype(np.float32)
    elif kind == "two-tone":
        angle = rng.uniform(0, 2 * np.pi)
        ys = (np.arange(y0, y0 + h, dtype=np.float32) + 0.5)[:, None] - shape.cy
        xs = (np.arange(x0, x0 + w, dtype=np.float32) + 0.5)[None, :] - shape.cx
        side = (xs * math.cos(angle) + ys * math.sin(angle)) > rng.uniform(-0.3, 0.3) * shape.extent
        fill = np.where(side[..., None], colour, second).astype(np.float32)
    else:
        if rng.random() < 0.6:
            t = two_colour_pattern(rng, h, w, y0, x0, scale=max(8.0, shape.extent))
        else:
            t = smooth_noise(rng, h, w, max(2.0, shape.extent * rng.uniform(0.05, 0.4)))[..., 0]
        mix = rng.uniform(0.3, 1.0)
        fill = (colour + (second - colour) * (t[..., None] * mix)).astype(np.float32)
    if rng.random() < 0.3:   # shading across the shape
        u, _ = rotated_coords(h, w, rng.uniform(0, 2 * np.pi), y0, x0)
        u = (u - u.mean()) / max(1.0, shape.extent)
        fill = fill * (1 + rng.uniform(0.1, 0.35) * u[..., None])
    return np.clip(fill, 0, 1)


# ----------------------------------------------------------------------------- the image

def image_size(rng):
    while True:
        aspect = math.exp(rng.uniform(math.log(MIN_ASPECT), math.log(MAX_ASPECT)))
        if rng.random() < 0.5:
            w = rng.uniform(MIN_SIDE, MAX_SIDE)
        else:
            w = math.exp(rng.uniform(math.log(MIN_SIDE), math.log(MAX_SIDE)))
        h = w / aspect
        if MIN_SIDE <= h <= MAX_SIDE:
            return int(round(h)), int(round(w))


def contrast(colour, pixels):
    """How well a colour stands out from the pixels it will cover (RGB distance, 0..1.7)."""
    d = np.sqrt(((pixels - colour) ** 2).sum(-1))
    return min(float(np.mean(d)), 2 * float(np.percentile(d, 15)))


def render(rng):
    """One image before JPEG: float image, class map, visible instance masks."""
    h, w = image_size(rng)
    canvas = background(rng, h, w)
    short = min(h, w)
    classes = np.zeros((h, w), np.uint8)
    owner = np.full((h, w), -1, np.int16)          # which placed shape is on top, per pixel
    placed = []                                     # (shape, full-area-in-pixels)
    n_shapes = int(rng.integers(MIN_SHAPES, MAX_SHAPES + 1))
    attempts = 0
    while len(placed) < n_shapes and attempts < n_shapes * 12:
        attempts += 1
        cls = int(rng.integers(1, 5))
        size = rng.uniform(MIN_REL_SIZE, MAX_REL_SIZE) * short
        # centres may lie a little outside so that shapes get cut by the border
        margin = 0.3 * size
        cx, cy = rng.uniform(-margin, w + margin), rng.uniform(-margin, h + margin)
        shape = Shape(cls, cx, cy, size, rng.uniform(0, 2 * np.pi), rng)
        x0, y0, x1, y1 = shape.window(w, h)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        sd = shape.signed_distance(x0, y0, x1, y1)
        inside = sd >= 0
        if inside.sum() < MIN_VISIBLE_FRACTION * shape.area:
            continue                                  # mostly outside the image
        # would it hide too much of any shape already there?
        covered = owner[y0:y1, x0:x1][inside]
        ok = True
        if covered.size and covered.max() >= 0:
            counts = np.bincount(covered[covered >= 0], minlength=len(placed))
            for k, (other, visible) in enumerate(placed):
                if counts[k] and visible - counts[k] < MIN_VISIBLE_FRACTION * other.area:
                    ok = False
                    break
        if not ok:
            continue
        region = canvas[y0:y1, x0:x1]
        best, best_score = None, -1.0
        under = region[inside]
        if under.shape[0] > 400:
            under = under[rng.integers(0, under.shape[0], 400)]
        for _ in range(12):
            colour = random_colour(rng)
            score = contrast(colour, under)
            if score > best_score:
                best, best_score = colour, score
            if score > 0.35:
                break
        fill = shape_fill(rng, shape, x0, y0, y1 - y0, x1 - x0, best)
        fill_score = contrast(fill[inside].mean(0), under)
        if fill_score < 0.15:
            continue                                  # would be invisible; try another shape
        alpha = np.clip(sd + 0.5, 0, 1)[..., None]
        canvas[y0:y1, x0:x1] = region * (1 - alpha) + fill * alpha
        for k in (np.unique(covered[covered >= 0]) if covered.size else []):
            other, visible = placed[k]
            placed[k] = (other, visible - int(np.count_nonzero(covered == k)))
        owner[y0:y1, x0:x1][inside] = len(placed)
        classes[y0:y1, x0:x1][inside] = cls
        placed.append((shape, int(inside.sum())))
    instances = []
    for k, (shape, visible) in enumerate(placed):
        x0, y0, x1, y1 = shape.window(w, h)
        mask = owner[y0:y1, x0:x1] == k
        if not mask.any():
            continue
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        instances.append({"class_id": shape.cls, "index": k,
                          "box": [x0 + int(cols[0]), y0 + int(rows[0]),
                                  x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1],
                          "area": int(mask.sum())})
    return canvas, classes, owner, instances


def degrade(rng, canvas):
    """Blur, sensor noise and JPEG, as a camera and a web upload would."""
    pil = Image.fromarray((np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8))
    if rng.random() < 0.35:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    if rng.random() < 0.5:
        arr = np.asarray(pil, np.float32)
        arr = arr + rng.normal(0, rng.uniform(1, 10), arr.shape).astype(np.float32)
        pil = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    quality = int(rng.integers(50, 96))
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=quality)
    return buf.getvalue(), quality


class ShapesStream:
    """Image `index` of data set `seed`, identical whether written to disk or streamed."""

    def __init__(self, seed):
        self.seed = int(seed)

    def rng(self, index):
        return np.random.default_rng([self.seed, int(index)])

    def sample(self, index, decode=True):
        rng = self.rng(index)
        canvas, classes, owner, instances = render(rng)
        jpeg, quality = degrade(rng, canvas)
        out = {"jpeg": jpeg, "quality": quality, "classes": classes, "owner": owner,
               "instances": instances, "height": classes.shape[0], "width": classes.shape[1]}
        if decode:
            out["image"] = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        return out


# ----------------------------------------------------------------------------- COCO RLE

def rle_encode(mask):
    """COCO compressed RLE of a boolean HxW mask (column-major, starting with a run of zeros),
    byte-identical to pycocotools' encode()."""
    h, w = mask.shape
    flat = np.asarray(mask, bool).T.reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    chars = []
    for i, x in enumerate(runs):
        if i > 2:
            x -= runs[i - 2]
        more = True
        while more:
            c = x & 0x1f
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return {"size": [h, w], "counts": "".join(chars)}


def rle_decode(rle):
    h, w = rle["size"]
    s, runs, i = rle["counts"], [], 0
    while i < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[i]) - 48
            x |= (c & 0x1f) << (5 * k)
            more = bool(c & 0x20)
            i += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    flat = np.zeros(h * w, bool)
    pos, val = 0, False
    for r in runs:
        if val:
            flat[pos:pos + r] = True
        pos += r
        val = not val
    return flat.reshape(w, h).T


# ----------------------------------------------------------------------------- writing

def write_dataset(out, seed, count, start=0, log=True):
    stream = ShapesStream(seed)
    for sub in ("images", "masks", "instances"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    coco = {"info": {"description": "maskd shapes", "seed": seed, "count": count, "start": start},
            "categories": [{"id": i, "name": n, "supercategory": "shape"}
                           for i, n in enumerate(CLASSES) if i],
            "images": [], "annotations": []}
    t0 = time.time()
    for i in range(start, start + count):
        s = stream.sample(i, decode=False)
        name = "%06d" % i
        with open(os.path.join(out, "images", name + ".jpg"), "wb") as f:
            f.write(s["jpeg"])
        Image.fromarray(s["classes"]).save(os.path.join(out, "masks", name + ".png"))
        inst = np.zeros(s["classes"].shape, np.uint8)
        coco["images"].append({"id": i, "file_name": "images/%s.jpg" % name,
                               "width": s["width"], "height": s["height"],
                               "jpeg_quality": s["quality"]})
        for n, a in enumerate(s["instances"], 1):
            mask = s["owner"] == a["index"]
            inst[mask] = n
            x1, y1, x2, y2 = a["box"]
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": i, "category_id": a["class_id"],
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": a["area"], "iscrowd": 0,
                "instance_index": n, "segmentation": rle_encode(mask)})
        Image.fromarray(inst).save(os.path.join(out, "instances", name + ".png"))
        if log and (i - start + 1) % 100 == 0:
            print("%d/%d images, %.1f s" % (i - start + 1, count, time.time() - t0), file=sys.stderr)
    with open(os.path.join(out, "annotations.json"), "w") as f:
        json.dump(coco, f)
    return coco


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--start", type=int, default=0, help="first image index")
    args = ap.parse_args()
    t0 = time.time()
    write_dataset(args.out, args.seed, args.count, args.start)
    print("wrote %d images to %s in %.1f s" % (args.count, args.out, time.time() - t0))


if __name__ == "__main__":
    main()
