#!/usr/bin/env python3
"""maskd's mask encodings against references written here.

pycocotools is not packaged for Debian, so the COCO RLE encoder and decoder
below are written from the format description: the mask read column by
column as alternating run lengths starting with a run of zeros; the
compressed string stores each count (from the 4th on, index > 2, as the
difference from the count two before, as pycocotools' rleToString does) in
5-bit groups, low first, 0x20 = more groups follow, 0x10 in the last group =
negative, each group + 48.  PNG is read with zlib and the PNG spec's
filters; polygons are filled with a scanline rasterizer (even-odd and
nonzero); argmax is torch's F.interpolate(bilinear, align_corners=False)
followed by argmax.

usage: masks_reference.py path/to/maskd_masks_tool
Prints "N passed, M failed"; exits 1 on failure.
"""
import collections
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np

TOOL = sys.argv[1]
TMP = tempfile.mkdtemp(prefix="maskd_masks_")
rng = np.random.default_rng(20240611)
passed = failed = 0


def check(ok, msg):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print("FAIL:", msg, file=sys.stderr)


def tmp(name):
    return os.path.join(TMP, name)


def tool(*args):
    r = subprocess.run([TOOL, *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        return r.stderr.strip() or "exit %d" % r.returncode
    return None


# ---- COCO RLE, from the format description ---------------------------------

def ref_counts(mask):
    flat = np.asarray(mask, bool).T.reshape(-1).astype(np.int8)  # column-major
    if flat.size == 0:
        return [0]
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate(([0], change, [flat.size]))).tolist()
    return [0] + runs if flat[0] else runs


def ref_to_string(counts):
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        while True:
            group = x & 0x1F  # Python's & and >> act on two's complement
            x >>= 5
            more = x != -1 if group & 0x10 else x != 0
            out.append(chr((group | 0x20 if more else group) + 48))
            if not more:
                break
    return "".join(out)


def ref_from_string(s):
    counts, p = [], 0
    while p < len(s):
        x = k = 0
        while True:
            c = ord(s[p]) - 48
            p += 1
            x |= (c & 0x1F) << (5 * k)
            k += 1
            if not c & 0x20:
                if c & 0x10:
                    x -= 1 << (5 * k)  # the last group's 0x10 is the sign
                break
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def ref_decode(counts, h, w):
    values = np.zeros(len(counts), np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, counts)
    assert flat.size == h * w, "counts cover %d of %d pixels" % (flat.size, h * w)
    return flat.reshape(w, h).T


def blobs(h, w, n):
    m = np.zeros((h, w), np.uint8)
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(2, min(h, w) / 4)
        y0, y1 = max(0, int(cy - r)), min(h, int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(w, int(cx + r) + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d = np.hypot(yy + 0.5 - cy, xx + 0.5 - cx)
        kind = rng.integers(3)
        if kind == 0:
            m[y0:y1, x0:x1] |= (d < r).astype(np.uint8)
        elif kind == 1:
            m[y0:y1, x0:x1] |= ((d < r) & (d > r / 2)).astype(np.uint8)
        else:
            m[y0:y1, x0:x1] = 1
    return m


def test_rle():
    cases = [
        ("1x1 zero", np.zeros((1, 1), np.uint8)),
        ("1x1 one", np.ones((1, 1), np.uint8)),
        ("empty 37x23", np.zeros((37, 23), np.uint8)),
        ("full 37x23", np.ones((37, 23), np.uint8)),
        ("one row", (rng.random((1, 500)) < 0.5).astype(np.uint8)),
        ("one column", (rng.random((500, 1)) < 0.5).astype(np.uint8)),
        ("last pixel", np.pad(np.ones((1, 1), np.uint8), ((9, 0), (6, 0)))),
        ("first pixel", np.pad(np.ones((1, 1), np.uint8), ((0, 9), (0, 6)))),
        ("blobs 480x640", blobs(480, 640, 8)),
        ("4000x3000", blobs(3000, 4000, 40)),
    ]
    for p in (0.02, 0.3, 0.5, 0.7, 0.98):
        cases.append(("noise p=%g" % p, (rng.random((123, 77)) < p).astype(np.uint8)))
    big_noise = (rng.random((300, 400)) < 0.5).astype(np.uint8)
    cases.append(("noise 400x300 255", big_noise * 255))
    for name, mask in cases:
        h, w = mask.shape
        np.save(tmp("mask.npy"), mask)
        e = tool("rle", tmp("mask.npy"), "nz", tmp("rle.txt"))
        if e:
            check(False, "rle %s: %s" % (name, e))
            continue
        with open(tmp("rle.txt")) as f:
            size, counts, string = f.read().split("\n")[:3]
        counts = [int(c) for c in counts.split()]
        ref = ref_counts(mask)
        check(size == "%d %d" % (h, w), "rle %s: size %s" % (name, size))
        check(counts == ref, "rle %s: counts differ from the reference" % name)
        check(string == ref_to_string(ref), "rle %s: string differs from the reference" % name)
        try:
            back = ref_decode(ref_from_string(string), h, w)
            check(np.array_equal(back, mask != 0), "rle %s: reference decodes other pixels" % name)
        except Exception as ex:  # a malformed string is a failure, not a crash
            check(False, "rle %s: reference cannot decode maskd's string: %s" % (name, ex))
        with open(tmp("ref.txt"), "w") as f:
            f.write(ref_to_string(ref))
        e = tool("unrle", h, w, tmp("ref.txt"), tmp("back.npy"))
        check(not e and np.array_equal(np.load(tmp("back.npy")), mask != 0),
              "rle %s: maskd decodes the reference string to other pixels (%s)" % (name, e))

    # One class of a label map, int32 and uint8, against its binary mask.
    labels = rng.integers(0, 6, (90, 70)).astype(np.int32)
    labels[20:60, 10:50] = 3
    for dtype in (np.int32, np.uint8):
        np.save(tmp("labels.npy"), labels.astype(dtype))
        for k in (0, 3, 5, 7):
            e = tool("rle", tmp("labels.npy"), k, tmp("rle.txt"))
            with open(tmp("rle.txt")) as f:
                string = f.read().split("\n")[2]
            check(not e and string == ref_to_string(ref_counts(labels == k)),
                  "rle of class %d in a %s map (%s)" % (k, np.dtype(dtype).name, e))
        e = tool("rle-classes", tmp("labels.npy"), 8, tmp("rles.txt"))
        with open(tmp("rles.txt")) as f:
            strings = f.read().split("\n")[:8]
        check(not e and strings == [ref_to_string(ref_counts(labels == k)) for k in range(8)],
              "rle of every class of a %s map (%s)" % (np.dtype(dtype).name, e))
    big = np.zeros((3000, 4000), np.uint8)
    for k in range(1, 6):
        big[blobs(3000, 4000, 6) != 0] = k
    np.save(tmp("labels.npy"), big)
    e = tool("rle-classes", tmp("labels.npy"), 6, tmp("rles.txt"))
    with open(tmp("rles.txt")) as f:
        strings = f.read().split("\n")[:6]
    for k in range(6):
        try:
            ok = not e and np.array_equal(ref_decode(ref_from_string(strings[k]), 3000, 4000), big == k)
        except Exception as ex:
            ok, e = False, str(ex)
        check(ok, "rle of class %d of a 4000x3000 map (%s)" % (k, e))


# ---- argmax and nearest against torch --------------------------------------

def test_argmax():
    import torch
    import torch.nn.functional as F
    cases = [(3, 10, 10, 10, 10), (21, 64, 64, 512, 512), (5, 33, 47, 300, 200),
             (8, 100, 80, 37, 29), (2, 1, 1, 5, 5), (150, 32, 32, 256, 256),
             (4, 7, 9, 7, 31), (300, 6, 6, 48, 48)]
    for c, h, w, H, W in cases:
        logits = rng.standard_normal((1, c, h, w)).astype(np.float32)
        np.save(tmp("logits.npy"), logits)
        with torch.no_grad():
            up = F.interpolate(torch.from_numpy(logits), size=(H, W), mode="bilinear",
                               align_corners=False)[0].numpy()
        ref = up.argmax(0)
        top2 = np.sort(up, axis=0)[-2:] if c > 1 else None
        for dtype in ("i32", "u8") if c <= 256 else ("i32",):
            e = tool("argmax", tmp("logits.npy"), H, W, dtype, 2, tmp("out.npy"))
            if e:
                check(False, "argmax C=%d %dx%d->%dx%d %s: %s" % (c, w, h, W, H, dtype, e))
                continue
            got = np.load(tmp("out.npy")).astype(np.int64)
            diff = got != ref
            if c > 1:
                diff &= (top2[1] - top2[0]) > 1e-5
            check(got.shape == (H, W) and not diff.any(),
                  "argmax C=%d %dx%d->%dx%d %s: %d pixels differ from torch"
                  % (c, w, h, W, H, dtype, int(diff.sum())))

    for h, w, H, W in [(12, 16, 96, 128), (13, 17, 50, 31), (10, 10, 20, 20), (64, 48, 9, 7),
                       (5, 5, 5, 5)]:
        labels = rng.integers(0, 200, (h, w)).astype(np.int32)
        np.save(tmp("labels.npy"), labels)
        e = tool("nearest", tmp("labels.npy"), H, W, tmp("out.npy"))
        with torch.no_grad():
            ref = F.interpolate(torch.from_numpy(labels.astype(np.float32))[None, None],
                                size=(H, W), mode="nearest")[0, 0].numpy().astype(np.int32)
        check(not e and np.array_equal(np.load(tmp("out.npy")), ref),
              "nearest %dx%d->%dx%d differs from torch (%s)" % (w, h, W, H, e))


# ---- PNG, read with zlib and the spec's filters -----------------------------

def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def read_png(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    p, idat, plte, ihdr = 8, b"", None, None
    while p < len(data):
        n, kind = struct.unpack(">I4s", data[p:p + 8])
        body = data[p + 8:p + 8 + n]
        (crc,) = struct.unpack(">I", data[p + 8 + n:p + 12 + n])
        assert crc == zlib.crc32(kind + body), "bad CRC in %s" % kind
        p += 12 + n
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            plte = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    w, h, depth, color, _, _, interlace = ihdr
    assert depth == 8 and interlace == 0 and color in (0, 3), "unexpected IHDR %r" % (ihdr,)
    raw = zlib.decompress(idat)
    assert len(raw) == h * (w + 1), "decompressed size"
    out = np.zeros((h, w), np.uint8)
    prev = np.zeros(w, np.int64)
    for y in range(h):
        f = raw[y * (w + 1)]
        line = np.frombuffer(raw, np.uint8, w, y * (w + 1) + 1).astype(np.int64)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) & 0xFF
        else:
            cur = np.zeros(w, np.int64)
            for x in range(w):
                a = cur[x - 1] if x else 0
                b, c = prev[x], prev[x - 1] if x else 0
                pred = a if f == 1 else (a + b) // 2 if f == 3 else paeth(a, b, c)
                cur[x] = (line[x] + pred) & 0xFF
        out[y] = cur
        prev = cur
    return color, out, plte


def voc_colormap(n):
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def test_png():
    labels = np.zeros((480, 640), np.uint8)
    labels[100:300, 50:400] = 3
    labels[200:450, 300:600] = 7
    cases = [("480x640", labels), ("1x1", np.array([[5]], np.uint8)),
             ("1x300", rng.integers(0, 4, (1, 300)).astype(np.uint8)),
             ("300x1", rng.integers(0, 4, (300, 1)).astype(np.uint8)),
             ("all 256", np.arange(256 * 3, dtype=np.int64).reshape(24, 32).astype(np.uint8)),
             ("int32", rng.integers(0, 21, (97, 131)).astype(np.int32))]
    for name, m in cases:
        for kind in ("palette", "grey"):
            np.save(tmp("labels.npy"), m)
            e = tool("png", tmp("labels.npy"), kind, tmp("out.png"))
            if e:
                check(False, "png %s %s: %s" % (name, kind, e))
                continue
            with open(tmp("out.png"), "rb") as f:
                data = f.read()
            try:
                color, pixels, plte = read_png(data)
            except Exception as ex:
                check(False, "png %s %s: unreadable: %s" % (name, kind, ex))
                continue
            check(color == (3 if kind == "palette" else 0) and np.array_equal(pixels, m),
                  "png %s %s: pixels differ" % (name, kind))
            if kind == "palette":
                n = int(m.max()) + 1
                check(plte is not None and len(plte) >= n and
                      np.array_equal(plte[:n], voc_colormap(n)),
                      "png %s: palette is not the VOC colour map" % name)


# ---- polygons, filled by a scanline rasterizer --------------------------------

def read_rings(path):
    rings = []
    with open(path) as f:
        for line in f:
            v = line.split()
            hole, outer, comp, n = map(int, v[:4])
            rings.append((hole, outer, comp, np.array(v[4:4 + 2 * n], float).reshape(n, 2)))
    return rings


def rasterize(rings, h, w, rule):
    """Fills at pixel centres; rule 'evenodd' or 'nonzero'."""
    x1 = np.concatenate([r[3][:, 0] for r in rings]) if rings else np.zeros(0)
    y1 = np.concatenate([r[3][:, 1] for r in rings]) if rings else np.zeros(0)
    x2 = np.concatenate([np.roll(r[3][:, 0], -1) for r in rings]) if rings else np.zeros(0)
    y2 = np.concatenate([np.roll(r[3][:, 1], -1) for r in rings]) if rings else np.zeros(0)
    out = np.zeros((h, w), np.uint8)
    centres = np.arange(w) + 0.5
    for y in range(h):
        cy = y + 0.5
        hit = (y1 <= cy) != (y2 <= cy)
        xs = x1[hit] + (cy - y1[hit]) * (x2[hit] - x1[hit]) / (y2[hit] - y1[hit])
        dirs = np.where(y2[hit] > y1[hit], 1, -1)
        # winding number at each centre = sum of directions of crossings left of it
        left = xs[None, :] <= centres[:, None]
        if rule == "evenodd":
            out[y] = left.sum(1) % 2
        else:
            out[y] = (left * dirs[None, :]).sum(1) != 0
    return out


def shape(kind, h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    dx, dy = xx + 0.5 - w / 2, yy + 0.5 - h / 2
    d, a, r = np.hypot(dx, dy), np.arctan2(dy, dx), min(h, w) * 0.4
    if kind == "disc":
        m = d < r
    elif kind == "ring":
        m = (d < r) & (d > 0.45 * r)
    elif kind == "star":
        m = d < r * (0.55 + 0.45 * np.cos(5 * a))
    elif kind == "square":
        m = (abs(dx) < 0.8 * r) & (abs(dy) < 0.8 * r)
    elif kind == "rings in rings":
        m = ((d < r) & (d > 0.8 * r)) | ((d < 0.6 * r) & (d > 0.4 * r)) | (d < 0.2 * r)
    else:  # several blobs, one with two holes
        m = np.zeros((h, w), bool)
        for i, (fy, fx) in enumerate([(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)]):
            e = np.hypot(xx + 0.5 - w * fx, yy + 0.5 - h * fy)
            m |= e < 0.4 * r
        m &= ~((abs(xx + 0.5 - w * 0.75 - 6) < 4) & (abs(yy + 0.5 - h * 0.75) < 4))
        m &= ~((abs(xx + 0.5 - w * 0.75 + 6) < 4) & (abs(yy + 0.5 - h * 0.75) < 4))
    return m.astype(np.uint8)


def iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 1.0


def components(m, conn):
    """Connected components of the set pixels of m (BFS), as a count."""
    h, w = m.shape
    seen = np.zeros((h, w), bool)
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if conn == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    count = 0
    for y0, x0 in zip(*np.nonzero(m)):
        if seen[y0, x0]:
            continue
        count += 1
        seen[y0, x0] = True
        queue = collections.deque([(y0, x0)])
        while queue:
            y, x = queue.popleft()
            for dy, dx in steps:
                v, u = y + dy, x + dx
                if 0 <= v < h and 0 <= u < w and m[v, u] and not seen[v, u]:
                    seen[v, u] = True
                    queue.append((v, u))
    return count


def holes(m, conn):
    """Background components (the other connectivity) not reaching outside."""
    padded = np.pad(m == 0, 1, constant_values=True)
    return components(padded, 12 - conn) - 1


def test_polygons():
    for kind in ("disc", "ring", "star", "square", "rings in rings", "blobs"):
        h, w = 240, 320
        m = shape(kind, h, w)
        np.save(tmp("mask.npy"), m)
        for conn in (4, 8):
            want_outer, want_holes = components(m, conn), holes(m, conn)
            for tol in (0, 0.5, 1.0, 2.0):
                e = tool("poly", tmp("mask.npy"), conn, tol, tmp("rings.txt"))
                if e:
                    check(False, "polygons %s: %s" % (kind, e))
                    continue
                rings = read_rings(tmp("rings.txt"))
                n_holes = sum(r[0] for r in rings)
                n_outer = len(rings) - n_holes
                for rule in ("evenodd", "nonzero"):
                    filled = rasterize(rings, h, w, rule)
                    score = iou(filled, m)
                    # tolerance 2 is coarse on purpose: only a sanity bound
                    ok = (np.array_equal(filled, m) if tol == 0 else
                          score >= (0.98 if tol <= 1 else 0.95))
                    check(ok and n_holes == want_holes and n_outer == want_outer,
                          "polygons %s conn %d tol %g %s: IoU %.4f, %d outer, %d holes "
                          "(want %d, %d)" % (kind, conn, tol, rule, score, n_outer, n_holes,
                                             want_outer, want_holes))
    # Random masks: the unsimplified rings fill back exactly, saddles included.
    for p in (0.3, 0.5, 0.7):
        m = (rng.random((40, 56)) < p).astype(np.uint8)
        np.save(tmp("mask.npy"), m)
        for conn in (4, 8):
            e = tool("poly", tmp("mask.npy"), conn, 0, tmp("rings.txt"))
            rings = read_rings(tmp("rings.txt")) if not e else []
            n_holes = sum(r[0] for r in rings)
            check(not e and n_holes == holes(m, conn) and
                  len(rings) - n_holes == components(m, conn),
                  "polygons noise p=%g conn %d: ring counts (%s)" % (p, conn, e))
            for rule in ("evenodd", "nonzero"):
                check(not e and np.array_equal(rasterize(rings, 40, 56, rule), m),
                      "polygons noise p=%g conn %d %s (%s)" % (p, conn, rule, e))


def main():
    test_rle()
    test_argmax()
    test_png()
    test_polygons()
    shutil.rmtree(TMP, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
