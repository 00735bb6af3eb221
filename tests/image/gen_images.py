#!/usr/bin/python3
"""Writes the image decoder's test files, references and manifest.

    gen_images.py --tool BUILD/tests/image/maskd_image_test --out DIR

JPEGs come from PIL (libjpeg-turbo underneath) and, for what PIL cannot
write (YCCK, arithmetic coding, restart markers), from the test binary's
`ycck` and `transcode` commands.  References for JPEGs are PIL's decodes of
the same files (the same library: they should match exactly) and, for
orientation, an asymmetric pattern whose displayed quadrants are known
without PIL.  PNGs are written by a small encoder here (every colour type,
bit depth, tRNS and Adam7), with references computed from the source arrays,
so libpng is checked against the PNG specification rather than itself.
Damaged files (truncated, corrupt, decompression bombs with crafted headers)
carry the error code they must produce.
"""
import argparse
import io
import os
import struct
import subprocess
import warnings
import zlib

import numpy as np
from PIL import Image, ImageFile

# PIL feeds libjpeg through a suspending source in 64 KiB blocks, and
# libjpeg-turbo's arithmetic decoder cannot suspend: hand it whole files.
ImageFile.MAXBLOCK = 1 << 26

CASES = []


def case(name, **kw):
    CASES.append((name, kw))


def write_ppm(path, rgb):
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = rgb.shape
    with open(path, "wb") as f:
        f.write(b"P6 %d %d 255\n" % (w, h))
        f.write(rgb.tobytes())


def photo(w, h, seed=0):
    """Smooth gradients, discs and a little noise: compresses like a photo
    and is asymmetric in both axes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 128 + 100 * np.sin(x / 7.0) * np.cos(y / 11.0)
    for _ in range(4):
        cx, cy, rad = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, max(w, h) / 4)
        inside = (x - cx) ** 2 + (y - cy) ** 2 < rad ** 2
        col = rng.uniform(0, 255, 3)
        r, g, b = (np.where(inside, col[i], c) for i, c in enumerate((r, g, b)))
    img = np.stack([r, g, b], -1) + rng.normal(0, 4, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def quads(w, h, colors=((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0))):
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = colors[0]
    img[: h // 2, w // 2 :] = colors[1]
    img[h // 2 :, : w // 2] = colors[2]
    img[h // 2 :, w // 2 :] = colors[3]
    return img


QUADS = "ff0000,00ff00,0000ff,ffff00"

# EXIF orientation -> the PIL transpose that turns the displayed picture into
# the stored one (the inverse of what a viewer applies).
TO_STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,   # viewer rotates 90 clockwise (PIL ROTATE_270)
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,  # viewer rotates 90 counter-clockwise
}
# What a viewer applies (PIL ImageOps.exif_transpose's table).
TO_SHOWN = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def exif_bytes(orientation, big_endian=False):
    if big_endian:
        ifd = b"MM\0*" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
        ifd += struct.pack(">I", 0)
    else:
        ifd = b"II*\0" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
        ifd += struct.pack("<I", 0)
    return b"Exif\0\0" + ifd


def fit_target(w, h, box_w, box_h):
    """The size a w x h picture takes when fitted into the box keeping its
    aspect ratio, rounded up."""
    if box_h <= 0 or (box_w > 0 and box_w * h <= box_h * w):
        return box_w, -(-h * box_w // w)
    return -(-w * box_h // h), box_h


def jpeg_scale(sw, sh, orientation, min_w, min_h):
    """The decoder's contract: the smallest M/8 whose oriented output covers
    (min_w, min_h); never above 8/8."""
    if orientation >= 5:
        min_w, min_h = min_h, min_w
    if min_w <= 0 and min_h <= 0:
        return 8
    for m in (1, 2, 4):  # libjpeg-turbo's SIMD scales; 3/8, 5/8... are slower than 8/8
        if -(-sw * m // 8) >= min_w and -(-sh * m // 8) >= min_h:
            return m
    return 8


class Gen:
    def __init__(self, out, tool):
        self.out = out
        self.tool = tool

    def path(self, name):
        return os.path.join(self.out, name)

    def save_bytes(self, name, data):
        with open(self.path(name), "wb") as f:
            f.write(data)
        return name

    def run_tool(self, *args):
        subprocess.run([self.tool, *args], check=True)

    # ---- JPEG ------------------------------------------------------------

    def jpeg(self, name, img, **save):
        pil = Image.fromarray(img) if isinstance(img, np.ndarray) else img
        pil.save(self.path(name), "JPEG", **save)
        return name

    def jpeg_ok(self, name, file, orientation=1, min_w=0, min_h=0, ref_file=None, fit=0,
                undersize=0, **extra):
        """A decode case whose reference is PIL's decode of `file` at the
        chosen DCT scale (PIL's draft uses the same libjpeg scaling, so they
        must agree exactly).  ref_file: decode that file for the reference
        instead (PIL refuses some files we accept)."""
        ref_file = ref_file or file
        full = Image.open(self.path(ref_file))
        sw, sh = full.size
        tw, th = min_w, min_h
        if fit:
            tw, th = fit_target(*((sh, sw) if orientation >= 5 else (sw, sh)), min_w, min_h)
        if undersize:
            tw, th = (-(-t * (100 - undersize) // 100) for t in (tw, th))
        m = jpeg_scale(sw, sh, orientation, tw, th)
        w, h = -(-sw * m // 8), -(-sh * m // 8)
        ref = Image.open(self.path(ref_file))
        if m != 8:
            ref.draft(ref.mode, (w, h))
        assert ref.size == (w, h), (file, ref.size, (w, h))
        ref = self.to_rgb(ref)
        ow, oh = sw, sh
        if orientation in TO_SHOWN:
            ref = ref.transpose(TO_SHOWN[orientation])
        if orientation >= 5:
            w, h, ow, oh = h, w, sh, sw
        write_ppm(self.path(name + ".ppm"), np.asarray(ref))
        kw = dict(file=file, fmt="JPEG", w=w, h=h, ow=ow, oh=oh, ref=name + ".ppm",
                  mean_tol=0.01, max_tol=1)
        if min_w or min_h:
            kw.update(min_w=min_w, min_h=min_h)
        if fit:
            kw.update(fit=1)
        if undersize:
            kw.update(undersize=undersize)
        kw.update(extra)
        case(name, **kw)

    @staticmethod
    def to_rgb(im):
        if im.mode == "CMYK":
            # PIL hands CMYK back as ink amounts (it undoes Adobe's inversion);
            # the decoder's naive conversion is R = (255-C)(255-K)/255.
            c = np.asarray(im).astype(np.int32)
            k = 255 - c[..., 3:4]
            rgb = ((255 - c[..., :3]) * k + 127) // 255
            return Image.fromarray(rgb.astype(np.uint8))
        return im.convert("RGB")

    def jpegs(self):
        base = photo(160, 120, 1)
        self.jpeg("jpeg_baseline_420.jpg", base, quality=90)
        self.jpeg_ok("jpeg_baseline_420", "jpeg_baseline_420.jpg")
        self.jpeg("jpeg_baseline_444.jpg", base, quality=95, subsampling=0)
        self.jpeg_ok("jpeg_baseline_444", "jpeg_baseline_444.jpg")
        self.jpeg("jpeg_baseline_422.jpg", base, quality=75, subsampling=1)
        self.jpeg_ok("jpeg_baseline_422", "jpeg_baseline_422.jpg")
        self.jpeg("jpeg_odd.jpg", photo(37, 23, 2), quality=85)
        self.jpeg_ok("jpeg_odd", "jpeg_odd.jpg")
        self.jpeg("jpeg_1x1.jpg", np.full((1, 1, 3), (200, 30, 90), np.uint8), quality=95)
        self.jpeg_ok("jpeg_1x1", "jpeg_1x1.jpg")
        self.jpeg_ok("jpeg_1x1_target", "jpeg_1x1.jpg", min_w=320, min_h=320)
        self.jpeg("jpeg_progressive.jpg", base, quality=90, progressive=True)
        self.jpeg_ok("jpeg_progressive", "jpeg_progressive.jpg")
        self.jpeg("jpeg_optimized.jpg", base, quality=80, optimize=True)
        self.jpeg_ok("jpeg_optimized", "jpeg_optimized.jpg")
        self.run_tool("transcode", self.path("jpeg_baseline_420.jpg"), self.path("jpeg_arith.jpg"), "arith")
        self.jpeg_ok("jpeg_arith", "jpeg_arith.jpg")
        self.run_tool("transcode", self.path("jpeg_baseline_420.jpg"),
                      self.path("jpeg_arith_progressive.jpg"), "arith-progressive")
        self.jpeg_ok("jpeg_arith_progressive", "jpeg_arith_progressive.jpg")
        self.run_tool("transcode", self.path("jpeg_baseline_420.jpg"), self.path("jpeg_restart.jpg"), "restart")
        self.jpeg_ok("jpeg_restart", "jpeg_restart.jpg")
        grey = Image.fromarray(base).convert("L")
        self.jpeg("jpeg_grey.jpg", grey, quality=90)
        self.jpeg_ok("jpeg_grey", "jpeg_grey.jpg")
        self.jpeg("jpeg_grey_progressive.jpg", grey, quality=90, progressive=True)
        self.jpeg_ok("jpeg_grey_progressive_scaled", "jpeg_grey_progressive.jpg", min_w=40, min_h=30)

        # CMYK as PIL writes it (Adobe marker, inverted samples) and YCCK.
        cmyk = np.concatenate([255 - base, (np.arange(160)[None, :, None] % 64 + np.zeros((120, 1, 1))).astype(np.uint8)], -1)
        self.jpeg("jpeg_cmyk.jpg", Image.fromarray(cmyk, "CMYK"), quality=95)
        self.jpeg_ok("jpeg_cmyk", "jpeg_cmyk.jpg")
        self.jpeg_ok("jpeg_cmyk_scaled", "jpeg_cmyk.jpg", min_w=80, min_h=60)
        inverted = (255 - cmyk).astype(np.uint8)
        self.save_bytes("ycck_source.cmyk", inverted.tobytes())
        self.run_tool("ycck", self.path("ycck_source.cmyk"), "160", "120", self.path("jpeg_ycck.jpg"))
        assert Image.open(self.path("jpeg_ycck.jpg")).mode == "CMYK"
        self.jpeg_ok("jpeg_ycck", "jpeg_ycck.jpg")

        # DCT scaling: exact scales against PIL's draft, others approximately.
        big = photo(800, 600, 3)
        self.jpeg("jpeg_800x600.jpg", big, quality=90)
        for mw, mh in ((100, 75), (100, 100), (200, 150), (400, 300), (300, 225), (500, 375),
                       (700, 500), (800, 600), (1000, 1000), (150, 0), (0, 10)):
            self.jpeg_ok(f"jpeg_scale_{mw}x{mh}", "jpeg_800x600.jpg", min_w=mw, min_h=mh)
        for mw, mh in ((320, 320), (100, 100), (0, 150), (200, 0), (50, 300)):
            self.jpeg_ok(f"jpeg_fit_{mw}x{mh}", "jpeg_800x600.jpg", min_w=mw, min_h=mh, fit=1)
        # 100x75 at 1/8 is 3.8% short of a 104x104 box's 104x78 fit: 5% slack takes it, 1% not.
        self.jpeg_ok("jpeg_undersize_5", "jpeg_800x600.jpg", min_w=104, min_h=104, fit=1, undersize=5)
        self.jpeg_ok("jpeg_undersize_1", "jpeg_800x600.jpg", min_w=104, min_h=104, fit=1, undersize=1)
        self.jpeg("jpeg_800x600_progressive.jpg", big, quality=90, progressive=True)
        self.jpeg_ok("jpeg_scale_progressive", "jpeg_800x600_progressive.jpg", min_w=100, min_h=100)
        self.run_tool("transcode", self.path("jpeg_800x600.jpg"), self.path("jpeg_800x600_arith.jpg"), "arith")
        self.jpeg_ok("jpeg_scale_arith", "jpeg_800x600_arith.jpg", min_w=200, min_h=200)

        # EXIF orientation: a quadrant pattern as it should be shown, stored
        # transposed as a camera would, both TIFF byte orders.
        shown = Image.fromarray(quads(96, 64))
        for o in range(1, 9):
            stored = shown.transpose(TO_STORED[o]) if TO_STORED[o] is not None else shown
            f = f"jpeg_orient_{o}.jpg"
            self.jpeg(f, stored, quality=95, exif=exif_bytes(o))
            self.jpeg_ok(f"jpeg_orient_{o}", f, orientation=o, quads=QUADS)
            case(f"jpeg_orient_{o}_probe", file=f, op="probe", w=96, h=64, orient=o)
            self.jpeg_ok(f"jpeg_orient_{o}_scaled", f, orientation=o, min_w=48, min_h=32, quads=QUADS)
            big_stored = Image.fromarray(quads(800, 600)).transpose(TO_STORED[o]) if o > 1 else Image.fromarray(quads(800, 600))
            fb = f"jpeg_orient_{o}_big.jpg"
            self.jpeg(fb, big_stored, quality=85, exif=exif_bytes(o, big_endian=o % 2 == 0))
            self.jpeg_ok(f"jpeg_orient_{o}_big_target", fb, orientation=o, min_w=200, min_h=100, quads=QUADS)
            self.jpeg_ok(f"jpeg_orient_{o}_big_fit", fb, orientation=o, min_w=100, min_h=300, fit=1, quads=QUADS)
        for o in (6, 8):
            stored = shown.transpose(TO_STORED[o])
            f = f"jpeg_orient_{o}_mm.jpg"
            self.jpeg(f, stored, quality=95, exif=exif_bytes(o, big_endian=True))
            self.jpeg_ok(f"jpeg_orient_{o}_mm", f, orientation=o, quads=QUADS)
        self.jpeg("jpeg_orient_cmyk_3.jpg",
                  Image.fromarray(np.concatenate([255 - quads(96, 64), np.zeros((64, 96, 1), np.uint8)], -1), "CMYK")
                  .transpose(Image.Transpose.ROTATE_180), quality=95, exif=exif_bytes(3))
        self.jpeg_ok("jpeg_orient_cmyk_3", "jpeg_orient_cmyk_3.jpg", orientation=3, quads=QUADS)
        # Orientation values outside 1..8 and a broken EXIF block: shown as stored.
        self.jpeg("jpeg_orient_bad.jpg", Image.fromarray(quads(96, 64)), quality=95, exif=exif_bytes(9))
        self.jpeg_ok("jpeg_orient_bad", "jpeg_orient_bad.jpg", quads=QUADS)
        self.jpeg("jpeg_exif_junk.jpg", Image.fromarray(quads(96, 64)), quality=95,
                  exif=b"Exif\0\0II*\0\xff\xff\xff\x7f" + b"\x01" * 40)
        self.jpeg_ok("jpeg_exif_junk", "jpeg_exif_junk.jpg", quads=QUADS)

        # Tolerated oddities: bytes between markers, data after EOI.
        data = open(self.path("jpeg_baseline_420.jpg"), "rb").read()
        dqt = data.index(b"\xff\xdb")
        self.save_bytes("jpeg_extraneous.jpg", data[:dqt] + b"\x00\x13\x37" + data[dqt:])
        self.jpeg_ok("jpeg_extraneous", "jpeg_extraneous.jpg")
        self.save_bytes("jpeg_trailing.jpg", data + b"trailing garbage" * 10)
        self.jpeg_ok("jpeg_trailing", "jpeg_trailing.jpg")

        # Errors.
        case("jpeg_truncated_half", file=self.save_bytes("jpeg_truncated_half.jpg", data[: len(data) // 2]),
             expect="truncated_image", fmt="JPEG")
        case("jpeg_truncated_header", file=self.save_bytes("jpeg_truncated_header.jpg", data[:100]),
             expect="truncated_image")
        case("jpeg_truncated_header_probe", file="jpeg_truncated_header.jpg", op="probe",
             expect="truncated_image")
        case("jpeg_truncated_90", file=self.save_bytes("jpeg_truncated_90.jpg", data[: len(data) * 9 // 10]),
             expect="truncated_image")
        case("jpeg_truncated_scaled", file="jpeg_truncated_90.jpg", min_w=20, min_h=15,
             expect="truncated_image")
        pdata = open(self.path("jpeg_progressive.jpg"), "rb").read()
        case("jpeg_progressive_truncated",
             file=self.save_bytes("jpeg_progressive_truncated.jpg", pdata[: len(pdata) * 6 // 10]),
             expect="truncated_image")
        adata = open(self.path("jpeg_arith.jpg"), "rb").read()
        case("jpeg_arith_truncated",
             file=self.save_bytes("jpeg_arith_truncated.jpg", adata[: len(adata) * 7 // 10]),
             expect="truncated_image")
        # A missing EOI loses no pixels: accepted where the decoder can tell
        # (Huffman coding); arithmetic coding pads silently, so it is refused.
        self.save_bytes("jpeg_no_eoi.jpg", data[:-2])
        self.jpeg_ok("jpeg_no_eoi", "jpeg_no_eoi.jpg", ref_file="jpeg_baseline_420.jpg")
        self.save_bytes("jpeg_progressive_no_eoi.jpg", pdata[:-2])
        self.jpeg_ok("jpeg_progressive_no_eoi", "jpeg_progressive_no_eoi.jpg", ref_file="jpeg_progressive.jpg")
        case("jpeg_arith_no_eoi", file=self.save_bytes("jpeg_arith_no_eoi.jpg", adata[:-2]),
             expect="truncated_image")
        last_sos = pdata.rindex(b"\xff\xda")
        case("jpeg_progressive_missing_scan",
             file=self.save_bytes("jpeg_progressive_missing_scan.jpg", pdata[:last_sos]),
             expect="truncated_image")
        # A scan bomb: the DC scan of a small progressive JPEG (the one scan
        # that does not depend on earlier ones) replayed 600 times; libjpeg
        # only warns about the odd progression -> refused past 500 scans.
        self.jpeg("jpeg_small_progressive.jpg", photo(32, 32, 6), quality=90, progressive=True)
        sp = open(self.path("jpeg_small_progressive.jpg"), "rb").read()
        sos1 = sp.index(b"\xff\xda")
        sos2 = sp.index(b"\xff\xda", sos1 + 2)
        case("jpeg_scan_bomb", file=self.save_bytes("jpeg_scan_bomb.jpg", sp[:sos2] + sp[sos1:sos2] * 600 + sp[sos2:]),
             expect="invalid_image")
        self.save_bytes("jpeg_scan_many.jpg", sp[:sos2] + sp[sos1:sos2] * 100 + sp[sos2:])
        self.jpeg_ok("jpeg_scan_many", "jpeg_scan_many.jpg", ref_file="jpeg_small_progressive.jpg")
        case("jpeg_soi_garbage", file=self.save_bytes("jpeg_soi_garbage.jpg", b"\xff\xd8\xff" + b"garbage!" * 50),
             expect="invalid_image", fmt="JPEG")
        sos = data.index(b"\xff\xda")
        mid = sos + (len(data) - sos) // 2
        case("jpeg_early_eoi", file=self.save_bytes("jpeg_early_eoi.jpg", data[:mid] + b"\xff\xd9" + data[mid + 2 :]),
             expect="invalid_image")
        case("jpeg_bad_rst", file=self.save_bytes(
            "jpeg_bad_rst.jpg", data[:mid] + b"\xff\xd3" + data[mid + 2 :]), expect="any")
        noise = bytearray(data)
        rng = np.random.default_rng(7)
        for i in rng.integers(sos + 20, len(data) - 2, 30):
            noise[i] = int(rng.integers(0, 256))
        case("jpeg_noisy_entropy", file=self.save_bytes("jpeg_noisy_entropy.jpg", bytes(noise)), expect="any")
        sof = data.index(b"\xff\xc0")
        zero = bytearray(data)
        zero[sof + 5 : sof + 9] = struct.pack(">HH", 0, 0)
        case("jpeg_zero_size", file=self.save_bytes("jpeg_zero_size.jpg", bytes(zero)), expect="invalid_image")
        no_sof = data[:sof] + data[sof + 2 + struct.unpack(">H", data[sof + 2 : sof + 4])[0] :]
        case("jpeg_no_sof", file=self.save_bytes("jpeg_no_sof.jpg", no_sof), expect="invalid_image")

        # Decompression bombs: a real file with a giant size in its SOF.
        def bomb(name, src, w, h, marker=b"\xff\xc0"):
            d = bytearray(open(self.path(src), "rb").read())
            at = d.index(marker)
            d[at + 5 : at + 9] = struct.pack(">HH", h, w)
            return self.save_bytes(name, bytes(d))

        f = bomb("jpeg_bomb_20000.jpg", "jpeg_baseline_420.jpg", 20000, 20000)
        case("jpeg_bomb_20000", file=f, expect="image_too_large")
        case("jpeg_bomb_20000_probe", file=f, op="probe", expect="image_too_large", w=20000, h=20000)
        case("jpeg_bomb_20000_scaled", file=f, min_w=320, min_h=320, expect="image_too_large")
        f = bomb("jpeg_bomb_65500.jpg", "jpeg_baseline_420.jpg", 65500, 65500)
        case("jpeg_bomb_65500", file=f, expect="image_too_large")
        f = bomb("jpeg_bomb_progressive.jpg", "jpeg_progressive.jpg", 30000, 30000, b"\xff\xc2")
        case("jpeg_bomb_progressive", file=f, expect="image_too_large")
        f = bomb("jpeg_bomb_orient.jpg", "jpeg_orient_6.jpg", 30000, 10000)
        case("jpeg_bomb_orient_probe", file=f, op="probe", expect="image_too_large", w=10000, h=30000)
        case("jpeg_limit_over", file="jpeg_baseline_420.jpg", max_pixels=160 * 120 - 1, expect="image_too_large")
        self.jpeg_ok("jpeg_limit_exact", "jpeg_baseline_420.jpg", max_pixels=160 * 120)
        case("jpeg_probe", file="jpeg_baseline_420.jpg", op="probe", w=160, h=120, orient=1)

    # ---- PNG -------------------------------------------------------------

    @staticmethod
    def png_bytes(samples, color_type, depth, palette=None, trns=None, interlace=False, chunks=()):
        """samples: (h, w, channels) integer array of raw sample values."""
        h, w = samples.shape[:2]

        def chunk(kind, body):
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

        def pack(rows):
            out = bytearray()
            for row in rows:
                flat = row.reshape(-1).astype(np.uint32)
                out.append(0)
                if depth == 16:
                    out += flat.astype(">u2").tobytes()
                elif depth == 8:
                    out += flat.astype(np.uint8).tobytes()
                else:
                    per = 8 // depth
                    padded = np.zeros(-(-len(flat) // per) * per, np.uint32)
                    padded[: len(flat)] = flat
                    grouped = padded.reshape(-1, per)
                    byte = np.zeros(len(grouped), np.uint32)
                    for i in range(per):
                        byte |= grouped[:, i] << (8 - depth * (i + 1))
                    out += byte.astype(np.uint8).tobytes()
            return bytes(out)

        if interlace:
            raw = b""
            for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4),
                                   (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
                sub = samples[y0::dy, x0::dx]
                if sub.shape[0] and sub.shape[1]:
                    raw += pack(sub)
        else:
            raw = pack(samples)
        out = b"\x89PNG\r\n\x1a\n"
        out += chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 1 if interlace else 0))
        for kind, body in chunks:
            out += chunk(kind, body)
        if palette is not None:
            out += chunk(b"PLTE", bytes(np.asarray(palette, np.uint8).reshape(-1)))
        if trns is not None:
            out += chunk(b"tRNS", trns)
        out += chunk(b"IDAT", zlib.compress(raw, 9))
        out += chunk(b"IEND", b"")
        return out

    def png_case(self, name, data, ref, alpha=None, **kw):
        f = self.save_bytes(name + ".png", data)
        write_ppm(self.path(name + ".ppm"), ref)
        h, w = ref.shape[:2]
        extra = dict(alpha=alpha) if alpha else {}
        case(name, file=f, fmt="PNG", w=w, h=h, ref=name + ".ppm",
             mean_tol=kw.pop("mean_tol", 0.0), max_tol=kw.pop("max_tol", 0), **extra, **kw)

    def pngs(self):
        rng = np.random.default_rng(11)
        w, h = 33, 21
        rgb8 = photo(w, h, 5)
        self.png_case("png_rgb8", self.png_bytes(rgb8, 2, 8), rgb8)
        self.png_case("png_interlaced_rgb8", self.png_bytes(rgb8, 2, 8, interlace=True), rgb8)
        rgb16 = rng.integers(0, 65536, (h, w, 3))
        want16 = ((rgb16 * 255 + 32895) >> 16).astype(np.uint8)  # round(v / 257)
        self.png_case("png_rgb16", self.png_bytes(rgb16, 2, 16), want16, max_tol=1, mean_tol=0.5)
        self.png_case("png_interlaced_rgb16", self.png_bytes(rgb16, 2, 16, interlace=True), want16,
                      max_tol=1, mean_tol=0.5)
        a8 = rng.integers(0, 256, (h, w, 1))
        rgba8 = np.concatenate([rgb8, a8], -1)
        white = ((rgb8.astype(np.int32) * a8 + 255 * (255 - a8) + 127) // 255).astype(np.uint8)
        self.png_case("png_rgba8", self.png_bytes(rgba8, 6, 8), rgb8)
        self.png_case("png_rgba8_white", self.png_bytes(rgba8, 6, 8), white, alpha="white")
        a16 = rng.integers(0, 65536, (h, w, 1))
        self.png_case("png_rgba16", self.png_bytes(np.concatenate([rgb16, a16], -1), 6, 16), want16,
                      max_tol=1, mean_tol=0.5)
        g8 = rng.integers(0, 256, (h, w, 1))
        self.png_case("png_grey8", self.png_bytes(g8, 0, 8), np.repeat(g8, 3, -1).astype(np.uint8))
        self.png_case("png_grey_alpha8", self.png_bytes(np.concatenate([g8, a8], -1), 4, 8),
                      np.repeat(g8, 3, -1).astype(np.uint8))
        ga_white = ((g8 * a8 + 255 * (255 - a8) + 127) // 255).astype(np.uint8)
        self.png_case("png_grey_alpha8_white", self.png_bytes(np.concatenate([g8, a8], -1), 4, 8),
                      np.repeat(ga_white, 3, -1), alpha="white")
        g16 = rng.integers(0, 65536, (h, w, 1))
        self.png_case("png_grey16", self.png_bytes(g16, 0, 16),
                      np.repeat((g16 * 255 + 32895) >> 16, 3, -1).astype(np.uint8), max_tol=1, mean_tol=0.5)
        for depth in (1, 2, 4):
            gl = rng.integers(0, 1 << depth, (h, w, 1))
            scale = 255 // ((1 << depth) - 1)
            self.png_case(f"png_grey{depth}", self.png_bytes(gl, 0, depth),
                          np.repeat(gl * scale, 3, -1).astype(np.uint8))
            self.png_case(f"png_interlaced_grey{depth}", self.png_bytes(gl, 0, depth, interlace=True),
                          np.repeat(gl * scale, 3, -1).astype(np.uint8))
        for depth in (1, 2, 4, 8):
            n = 1 << depth
            pal = rng.integers(0, 256, (n, 3))
            idx = rng.integers(0, n, (h, w, 1))
            ref = pal[idx[..., 0]].astype(np.uint8)
            self.png_case(f"png_palette{depth}", self.png_bytes(idx, 3, depth, palette=pal), ref)
        pal = rng.integers(0, 256, (16, 3))
        idx = rng.integers(0, 16, (h, w, 1))
        ta = rng.integers(0, 256, 16)
        ref = pal[idx[..., 0]].astype(np.uint8)
        a = ta[idx[..., 0]][..., None]
        self.png_case("png_palette_trns", self.png_bytes(idx, 3, 4, palette=pal, trns=bytes(ta.astype(np.uint8))), ref)
        self.png_case("png_palette_trns_white",
                      self.png_bytes(idx, 3, 4, palette=pal, trns=bytes(ta.astype(np.uint8))),
                      ((ref.astype(np.int32) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8), alpha="white")
        self.png_case("png_interlaced_palette2",
                      self.png_bytes(idx % 4, 3, 2, palette=pal[:4], interlace=True),
                      pal[(idx % 4)[..., 0]].astype(np.uint8))
        # colour-key transparency on RGB and grey
        key = rgb8[3, 4].astype(np.int64)
        keyed = np.all(rgb8 == key, -1)[..., None]
        self.png_case("png_rgb_trns_white", self.png_bytes(rgb8, 2, 8, trns=struct.pack(">HHH", *key)),
                      np.where(keyed, 255, rgb8).astype(np.uint8), alpha="white")
        self.png_case("png_rgb_trns_drop", self.png_bytes(rgb8, 2, 8, trns=struct.pack(">HHH", *key)), rgb8)
        gk = int(g8[0, 0, 0])
        self.png_case("png_grey_trns_white", self.png_bytes(g8, 0, 8, trns=struct.pack(">H", gk)),
                      np.repeat(np.where(g8 == gk, 255, g8), 3, -1).astype(np.uint8), alpha="white")
        one = np.array([[[10, 200, 30]]])
        self.png_case("png_1x1", self.png_bytes(one, 2, 8), one.astype(np.uint8))
        self.png_case("png_1x1_interlaced", self.png_bytes(one, 2, 8, interlace=True), one.astype(np.uint8))
        # A PNG written by PIL (adaptive filters, not just filter 0), and
        # ancillary chunks libpng must step over.
        buf = io.BytesIO()
        big = photo(300, 200, 9)
        Image.fromarray(big).save(buf, "PNG", optimize=True)
        self.png_case("png_pil_filtered", buf.getvalue(), big)
        chunks = [(b"gAMA", struct.pack(">I", 45455)), (b"tEXt", b"Comment\0hello"),
                  (b"zTXt", b"Big\0\0" + zlib.compress(b"x" * 100000)), (b"vpAg", b"\0" * 9)]
        self.png_case("png_ancillary", self.png_bytes(rgb8, 2, 8, chunks=chunks), rgb8)
        case("png_probe", file="png_rgb8.png", op="probe", w=w, h=h, orient=1)

        # Errors.
        good = self.png_bytes(rgb8, 2, 8)
        case("png_truncated_half", file=self.save_bytes("png_truncated_half.png", good[: len(good) // 2]),
             expect="truncated_image", fmt="PNG")
        case("png_truncated_header", file=self.save_bytes("png_truncated_header.png", good[:20]),
             expect="truncated_image")
        case("png_no_iend", file=self.save_bytes("png_no_iend.png", good[:-12]), w=w, h=h)
        bad = bytearray(good)
        bad[29] ^= 0xFF  # IHDR CRC
        case("png_bad_ihdr_crc", file=self.save_bytes("png_bad_ihdr_crc.png", bytes(bad)), expect="invalid_image")
        bad = bytearray(good)
        idat = good.index(b"IDAT")
        bad[idat + 20] ^= 0x55  # inside the compressed data: CRC and zlib both break
        case("png_bad_idat", file=self.save_bytes("png_bad_idat.png", bytes(bad)), expect="invalid_image")
        broken = self.png_bytes(rgb8, 2, 8)
        idat = broken.index(b"IDAT")
        n = struct.unpack(">I", broken[idat - 4 : idat])[0]
        junk = b"\x78\x9c" + b"\xff" * (n - 2)
        body = b"IDAT" + junk
        broken = broken[: idat - 4] + struct.pack(">I", n) + body + struct.pack(">I", zlib.crc32(body)) + broken[idat + 4 + n + 4 :]
        case("png_bad_zlib", file=self.save_bytes("png_bad_zlib.png", broken), expect="invalid_image")
        short = self.png_bytes(rgb8[:10], 2, 8)  # 10 rows of data under a 21-row header
        short = good[:33] + short[33:]
        case("png_short_idat", file=self.save_bytes("png_short_idat.png", short), expect="any")
        case("png_first_chunk", file=self.save_bytes("png_first_chunk.png", good[:8] + good[33:]),
             expect="invalid_image")

        def ihdr(w, h, depth=8, color=2):
            body = b"IHDR" + struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
            return good[:8] + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body)) + good[33:]

        f = self.save_bytes("png_bomb.png", ihdr(20000, 20000))
        case("png_bomb", file=f, expect="image_too_large")
        case("png_bomb_probe", file=f, op="probe", expect="image_too_large", w=20000, h=20000)
        case("png_bomb_wide", file=self.save_bytes("png_bomb_wide.png", ihdr(2000000, 300)),
             expect="image_too_large")
        case("png_zero_width", file=self.save_bytes("png_zero_width.png", ihdr(0, 10)), expect="invalid_image")
        case("png_huge_width", file=self.save_bytes("png_huge_width.png", ihdr(0x80000000, 1)),
             expect="invalid_image")
        case("png_bad_depth", file=self.save_bytes("png_bad_depth.png", ihdr(w, h, depth=7)),
             expect="invalid_image")
        case("png_limit_over", file="png_rgb8.png", max_pixels=w * h - 1, expect="image_too_large")

    # ---- other formats and junk -------------------------------------------

    def others(self):
        case("empty", file=self.save_bytes("empty.bin", b""), expect="empty_image")
        img = Image.fromarray(photo(16, 16, 4))
        for fmt, name, kw in (("GIF", "GIF", {}), ("BMP", "BMP", {}), ("TIFF", "TIFF", {}),
                              ("WEBP", "WebP", {})):
            buf = io.BytesIO()
            try:
                img.save(buf, fmt, **kw)
            except (KeyError, OSError):
                continue  # PIL without that codec
            f = self.save_bytes(f"other.{fmt.lower()}", buf.getvalue())
            case(f"unsupported_{fmt.lower()}", file=f, fmt=name, expect="unsupported_media_type")
            case(f"unsupported_{fmt.lower()}_probe", file=f, op="probe", expect="unsupported_media_type")
        case("unsupported_tiff_mm", file=self.save_bytes("other_mm.tiff", b"MM\0*\0\0\0\x08" + b"\0" * 32),
             fmt="TIFF", expect="unsupported_media_type")
        case("unsupported_heic", file=self.save_bytes("other.heic", b"\0\0\0\x18ftypheic\0\0\0\0mif1heic"),
             fmt="HEIF/AVIF", expect="unsupported_media_type")
        case("unsupported_text", file=self.save_bytes("text.txt", b"<html>not an image</html>"),
             fmt="unknown", expect="unsupported_media_type")
        case("unsupported_one_byte", file=self.save_bytes("one.bin", b"\xff"), expect="unsupported_media_type")


def main():
    warnings.simplefilter("ignore")  # PIL complains about the deliberately broken EXIF
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    g = Gen(args.out, args.tool)
    g.jpegs()
    g.pngs()
    g.others()
    with open(os.path.join(args.out, "manifest.txt"), "w") as f:
        for name, kw in CASES:
            f.write(name + " " + " ".join(f"{k}={v}" for k, v in kw.items()) + "\n")
    print(f"wrote {len(CASES)} cases to {args.out}")


if __name__ == "__main__":
    main()
