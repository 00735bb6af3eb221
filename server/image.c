/*
 * Image decoding front end: format sniffing, limits, EXIF orientation,
 * error codes, and a bilinear RGB resize.  The codecs live in image_jpeg.c
 * and image_png.c.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image_internal.h"

int mk_image_fail(maskd_error *err, int code, const char *fmt, ...)
{
    if (err) {
        err->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return code;
}

static void format_pixels(char *buf, size_t size, int64_t pixels)
{
    if (pixels >= 1000000)
        snprintf(buf, size, "%.1f megapixels", (double)pixels / 1e6);
    else
        snprintf(buf, size, "%lld pixels", (long long)pixels);
}

int mk_image_check_limit(const maskd_image_options *opt, const char *format,
                         int64_t width, int64_t height, maskd_error *err)
{
    if (!opt || opt->max_pixels <= 0)
        return MASKD_OK;
    int64_t pixels = width * height; /* both < 2^31, cannot overflow */
    if (pixels <= opt->max_pixels)
        return MASKD_OK;
    char have[48], limit[48];
    format_pixels(have, sizeof have, pixels);
    format_pixels(limit, sizeof limit, opt->max_pixels);
    return mk_image_fail(err, MASKD_IMAGE_ERR_TOO_LARGE,
                         "%s image is %lldx%lld = %s, over the limit of %s", format,
                         (long long)width, (long long)height, have, limit);
}

/* ---- format sniffing ------------------------------------------------------ */

static int starts_with(const uint8_t *p, size_t size, const char *magic, size_t n)
{
    return size >= n && memcmp(p, magic, n) == 0;
}

static int is_bmp(const uint8_t *p, size_t size)
{
    /* "BM" alone would claim any text starting with those letters: also
     * require a known DIB header size. */
    if (size < 18 || p[0] != 'B' || p[1] != 'M')
        return 0;
    uint32_t dib = (uint32_t)p[14] | (uint32_t)p[15] << 8 | (uint32_t)p[16] << 16 |
                   (uint32_t)p[17] << 24;
    return dib == 12 || dib == 16 || dib == 40 || dib == 52 || dib == 56 || dib == 64 ||
           dib == 108 || dib == 124;
}

static int is_heif(const uint8_t *p, size_t size)
{
    static const char *const brands[] = {"heic", "heix", "hevc", "hevx", "heim", "heis",
                                         "mif1", "msf1", "avif", "avis"};
    if (size < 12 || memcmp(p + 4, "ftyp", 4) != 0)
        return 0;
    for (size_t i = 0; i < sizeof brands / sizeof brands[0]; i++)
        if (memcmp(p + 8, brands[i], 4) == 0)
            return 1;
    return 0;
}

maskd_image_format maskd_image_sniff(const void *data, size_t size)
{
    const uint8_t *p = data;
    if (!p)
        return MASKD_IMAGE_UNKNOWN;
    if (size >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF)
        return MASKD_IMAGE_JPEG;
    if (starts_with(p, size, "\x89PNG\r\n\x1a\n", 8))
        return MASKD_IMAGE_PNG;
    if (starts_with(p, size, "GIF87a", 6) || starts_with(p, size, "GIF89a", 6))
        return MASKD_IMAGE_GIF;
    if (size >= 12 && memcmp(p, "RIFF", 4) == 0 && memcmp(p + 8, "WEBP", 4) == 0)
        return MASKD_IMAGE_WEBP;
    if (is_bmp(p, size))
        return MASKD_IMAGE_BMP;
    if (starts_with(p, size, "II*\0", 4) || starts_with(p, size, "MM\0*", 4))
        return MASKD_IMAGE_TIFF;
    if (is_heif(p, size))
        return MASKD_IMAGE_HEIF;
    if (starts_with(p, size, "\xFF\x0A", 2) ||
        starts_with(p, size, "\0\0\0\x0CJXL \r\n\x87\n", 12))
        return MASKD_IMAGE_JXL;
    if (size >= 22 && p[0] == 0 && p[1] == 0 && p[2] == 1 && p[3] == 0 && (p[4] | p[5]) != 0)
        return MASKD_IMAGE_ICO;
    return MASKD_IMAGE_UNKNOWN;
}

const char *maskd_image_format_name(maskd_image_format format)
{
    switch (format) {
    case MASKD_IMAGE_JPEG: return "JPEG";
    case MASKD_IMAGE_PNG: return "PNG";
    case MASKD_IMAGE_GIF: return "GIF";
    case MASKD_IMAGE_WEBP: return "WebP";
    case MASKD_IMAGE_BMP: return "BMP";
    case MASKD_IMAGE_TIFF: return "TIFF";
    case MASKD_IMAGE_HEIF: return "HEIF/AVIF";
    case MASKD_IMAGE_JXL: return "JPEG XL";
    case MASKD_IMAGE_ICO: return "ICO";
    case MASKD_IMAGE_UNKNOWN: break;
    }
    return "unknown";
}

const char *maskd_image_format_mime(maskd_image_format format)
{
    switch (format) {
    case MASKD_IMAGE_JPEG: return "image/jpeg";
    case MASKD_IMAGE_PNG: return "image/png";
    case MASKD_IMAGE_GIF: return "image/gif";
    case MASKD_IMAGE_WEBP: return "image/webp";
    case MASKD_IMAGE_BMP: return "image/bmp";
    case MASKD_IMAGE_TIFF: return "image/tiff";
    case MASKD_IMAGE_HEIF: return "image/heif";
    case MASKD_IMAGE_JXL: return "image/jxl";
    case MASKD_IMAGE_ICO: return "image/vnd.microsoft.icon";
    case MASKD_IMAGE_UNKNOWN: break;
    }
    return NULL;
}

/* ---- errors ------------------------------------------------------------------ */

const char *maskd_image_error_code(int code)
{
    switch (code) {
    case MASKD_IMAGE_ERR_EMPTY: return "empty_image";
    case MASKD_IMAGE_ERR_UNSUPPORTED: return "unsupported_media_type";
    case MASKD_IMAGE_ERR_TOO_LARGE: return "image_too_large";
    case MASKD_IMAGE_ERR_INVALID: return "invalid_image";
    case MASKD_IMAGE_ERR_TRUNCATED: return "truncated_image";
    case MASKD_ERR_NOMEM: return "out_of_memory";
    default: return "internal_error";
    }
}

int maskd_image_http_status(int code)
{
    switch (code) {
    case MASKD_IMAGE_ERR_EMPTY:
    case MASKD_IMAGE_ERR_INVALID:
    case MASKD_IMAGE_ERR_TRUNCATED: return 400;
    case MASKD_IMAGE_ERR_UNSUPPORTED: return 415;
    case MASKD_IMAGE_ERR_TOO_LARGE: return 422;
    default: return 500;
    }
}

/* ---- dispatch ---------------------------------------------------------------- */

static int unsupported(const uint8_t *p, size_t size, maskd_image_format format,
                       maskd_error *err)
{
    if (format != MASKD_IMAGE_UNKNOWN)
        return mk_image_fail(err, MASKD_IMAGE_ERR_UNSUPPORTED,
                             "%s images are not supported; send JPEG or PNG",
                             maskd_image_format_name(format));
    char hex[3 * 8 + 1] = "";
    size_t n = size < 8 ? size : 8, len = 0;
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(hex + len, sizeof hex - len, "%s%02x", i ? " " : "", p[i]);
    return mk_image_fail(err, MASKD_IMAGE_ERR_UNSUPPORTED,
                         "not a JPEG or PNG image (it starts with bytes %s)", hex);
}

static int read_image(const void *data, size_t size, const maskd_image_options *opt,
                      maskd_image_info *info, maskd_image *out, maskd_error *err)
{
    memset(info, 0, sizeof *info);
    if (!data || size == 0)
        return mk_image_fail(err, MASKD_IMAGE_ERR_EMPTY, "the image is empty (0 bytes)");
    maskd_image_format format = maskd_image_sniff(data, size);
    info->format = format;
    switch (format) {
    case MASKD_IMAGE_JPEG: return mk_jpeg_read(data, size, opt, info, out, err);
    case MASKD_IMAGE_PNG: return mk_png_read(data, size, opt, info, out, err);
    default: return unsupported(data, size, format, err);
    }
}

int maskd_image_probe(const void *data, size_t size, const maskd_image_options *opt,
                      maskd_image_info *out, maskd_error *err)
{
    maskd_image_info scratch;
    return read_image(data, size, opt, out ? out : &scratch, NULL, err);
}

int maskd_image_decode(const void *data, size_t size, const maskd_image_options *opt,
                       maskd_image *out, maskd_error *err)
{
    if (!out)
        return mk_image_fail(err, MASKD_ERR_INVALID, "maskd_image_decode: no output image");
    memset(out, 0, sizeof *out);
    maskd_image_info info;
    int rc = read_image(data, size, opt, &info, out, err);
    if (rc != MASKD_OK)
        memset(out, 0, sizeof *out);
    return rc;
}

void maskd_image_free(maskd_image *img)
{
    if (!img)
        return;
    free(img->rgb);
    memset(img, 0, sizeof *img);
}

int maskd_image_jpeg_scale(int stored_w, int stored_h, int orientation, int min_width,
                           int min_height)
{
    if (orientation >= 5 && orientation <= 8) {
        int t = min_width;
        min_width = min_height;
        min_height = t;
    }
    if (min_width <= 0 && min_height <= 0)
        return 8;
    /* Only 1/8, 2/8 and 4/8 (and 8/8): libjpeg-turbo has SIMD inverse DCTs
     * for those; its 3/8, 5/8, 6/8 and 7/8 are plain C and measure slower
     * than decoding at 8/8 (bench/decode: a 640x480 photo 1.50 ms at 6/8 vs
     * 0.93 ms at 8/8; 4000x3000: 104 ms at 6/8 vs 90 ms at 8/8). */
    for (int m = 1; m < 8; m *= 2) {
        /* libjpeg's output size for scale m/8: ceil(size * m / 8). */
        int64_t w = ((int64_t)stored_w * m + 7) / 8;
        int64_t h = ((int64_t)stored_h * m + 7) / 8;
        if (w >= min_width && h >= min_height)
            return m;
    }
    return 8;
}

void maskd_image_target_size(const maskd_image_options *opt, int width, int height,
                             int *min_width, int *min_height)
{
    int64_t tw = opt ? opt->min_width : 0, th = opt ? opt->min_height : 0;
    if (opt && opt->fit_box && width > 0 && height > 0 && (tw > 0 || th > 0)) {
        /* The side that limits the fit gets the box's size, the other its
         * proportional share, in integers so that 640x480 into 320 is 240. */
        if (th <= 0 || (tw > 0 && tw * height <= th * width)) {
            th = (height * tw + width - 1) / width;
        } else {
            tw = (width * th + height - 1) / height;
        }
    }
    int64_t slack = opt ? opt->undersize_percent : 0;
    slack = slack < 0 ? 0 : slack > 50 ? 50 : slack;
    if (slack) {
        tw = (tw * (100 - slack) + 99) / 100;
        th = (th * (100 - slack) + 99) / 100;
    }
    *min_width = (int)(tw > INT32_MAX ? INT32_MAX : tw);
    *min_height = (int)(th > INT32_MAX ? INT32_MAX : th);
}

/* ---- EXIF ------------------------------------------------------------------- */

static uint32_t exif_u16(const uint8_t *p, int big_endian)
{
    return big_endian ? (uint32_t)p[0] << 8 | p[1] : (uint32_t)p[1] << 8 | p[0];
}

static uint32_t exif_u32(const uint8_t *p, int big_endian)
{
    return big_endian ? exif_u16(p, 1) << 16 | exif_u16(p + 2, 1)
                      : exif_u16(p + 2, 0) << 16 | exif_u16(p, 0);
}

int mk_exif_orientation(const uint8_t *app1, size_t size)
{
    /* Only IFD0 is read: that is where the orientation of the main image
     * lives (IFD1 describes the thumbnail). */
    if (size < 6 + 8 || memcmp(app1, "Exif\0\0", 6) != 0)
        return 1;
    const uint8_t *tiff = app1 + 6;
    size_t n = size - 6;
    int be;
    if (tiff[0] == 'I' && tiff[1] == 'I')
        be = 0;
    else if (tiff[0] == 'M' && tiff[1] == 'M')
        be = 1;
    else
        return 1;
    if (exif_u16(tiff + 2, be) != 42)
        return 1;
    uint32_t ifd = exif_u32(tiff + 4, be);
    if (ifd < 8 || ifd > n || n - ifd < 2)
        return 1;
    uint32_t count = exif_u16(tiff + ifd, be);
    for (uint32_t i = 0; i < count; i++) {
        size_t at = (size_t)ifd + 2 + (size_t)i * 12;
        if (at + 12 > n)
            return 1;
        const uint8_t *e = tiff + at;
        if (exif_u16(e, be) != 0x0112)
            continue;
        uint32_t type = exif_u16(e + 2, be);
        uint32_t value;
        if (type == 3) /* SHORT, the type the standard prescribes */
            value = exif_u16(e + 8, be);
        else if (type == 4) /* LONG, written by a few broken tools */
            value = exif_u32(e + 8, be);
        else
            return 1;
        return value >= 1 && value <= 8 ? (int)value : 1;
    }
    return 1;
}

/* ---- orientation ----------------------------------------------------------- */

uint8_t *mk_image_orient(const uint8_t *rgb, int width, int height, int orientation,
                         int *out_width, int *out_height)
{
    int swap = orientation >= 5 && orientation <= 8;
    int dw = swap ? height : width, dh = swap ? width : height;
    *out_width = dw;
    *out_height = dh;
    if (orientation < 2 || orientation > 8)
        return (uint8_t *)rgb;
    /* Displayed pixel (x, y) comes from stored (sx, sy) = origin + x*ax + y*ay,
     * with ax, ay unit steps along the stored axes (EXIF 2.3, tag 0x0112). */
    int ox, oy, axx, axy, ayx, ayy; /* stored (x, y) steps per displayed x, y */
    switch (orientation) {
    case 2: ox = width - 1; oy = 0; axx = -1; axy = 0; ayx = 0; ayy = 1; break;
    case 3: ox = width - 1; oy = height - 1; axx = -1; axy = 0; ayx = 0; ayy = -1; break;
    case 4: ox = 0; oy = height - 1; axx = 1; axy = 0; ayx = 0; ayy = -1; break;
    case 5: ox = 0; oy = 0; axx = 0; axy = 1; ayx = 1; ayy = 0; break;
    case 6: ox = 0; oy = height - 1; axx = 0; axy = -1; ayx = 1; ayy = 0; break;
    case 7: ox = width - 1; oy = height - 1; axx = 0; axy = -1; ayx = -1; ayy = 0; break;
    default: ox = width - 1; oy = 0; axx = 0; axy = 1; ayx = -1; ayy = 0; break; /* 8 */
    }
    size_t bytes = (size_t)dw * dh * 3;
    uint8_t *dst = malloc(bytes ? bytes : 1);
    if (!dst)
        return NULL;
    const ptrdiff_t step_x = ((ptrdiff_t)axy * width + axx) * 3;
    const ptrdiff_t step_y = ((ptrdiff_t)ayy * width + ayx) * 3;
    const uint8_t *origin = rgb + ((ptrdiff_t)oy * width + ox) * 3;
    /* Tiles keep both the rows written and the columns read in cache when the
     * mapping transposes. */
    enum { TILE = 64 };
    for (int ty = 0; ty < dh; ty += TILE) {
        int ye = ty + TILE < dh ? ty + TILE : dh;
        for (int tx = 0; tx < dw; tx += TILE) {
            int xe = tx + TILE < dw ? tx + TILE : dw;
            for (int y = ty; y < ye; y++) {
                uint8_t *d = dst + ((size_t)y * dw + tx) * 3;
                const uint8_t *s = origin + step_y * y + step_x * tx;
                for (int x = tx; x < xe; x++, d += 3, s += step_x) {
                    d[0] = s[0];
                    d[1] = s[1];
                    d[2] = s[2];
                }
            }
        }
    }
    return dst;
}

/* ---- resize ------------------------------------------------------------------ */

enum { RESIZE_BITS = 11, RESIZE_ONE = 1 << RESIZE_BITS };

static void resize_taps(int src, int dst, int *i0, int *i1, int *w1)
{
    double scale = (double)src / dst;
    for (int i = 0; i < dst; i++) {
        double s = (i + 0.5) * scale - 0.5;
        if (s < 0)
            s = 0;
        int a = (int)s;
        if (a > src - 1)
            a = src - 1;
        int b = a + 1 < src ? a + 1 : src - 1;
        double frac = s - a;
        if (frac > 1)
            frac = 1;
        i0[i] = a;
        i1[i] = b;
        w1[i] = (int)(frac * RESIZE_ONE + 0.5);
    }
}

/* Each output pixel is the mean of the source pixels whose index maps into
 * it (integer footprints of 2+ pixels when shrinking by 2 or more): every
 * source pixel is read once, through a row of column sums. */
static int resize_area(const uint8_t *src, int src_w, int src_h, uint8_t *dst, int dst_w,
                       int dst_h)
{
    uint32_t *acc = malloc(sizeof(uint32_t) * 3 * (size_t)src_w);
    int *xs = malloc(sizeof(int) * ((size_t)dst_w + 1));
    if (!acc || !xs) {
        free(acc);
        free(xs);
        return MASKD_ERR_NOMEM;
    }
    for (int x = 0; x <= dst_w; x++)
        xs[x] = (int)((int64_t)x * src_w / dst_w);
    for (int y = 0; y < dst_h; y++) {
        int ya = (int)((int64_t)y * src_h / dst_h), yb = (int)((int64_t)(y + 1) * src_h / dst_h);
        if (yb <= ya)
            yb = ya + 1;
        memset(acc, 0, sizeof(uint32_t) * 3 * (size_t)src_w);
        for (int sy = ya; sy < yb; sy++) {
            const uint8_t *row = src + (size_t)sy * src_w * 3;
            for (int i = 0; i < 3 * src_w; i++)
                acc[i] += row[i];
        }
        uint8_t *d = dst + (size_t)y * dst_w * 3;
        for (int x = 0; x < dst_w; x++) {
            int xa = xs[x], xb = xs[x + 1] > xa ? xs[x + 1] : xa + 1;
            uint64_t count = (uint64_t)(xb - xa) * (uint64_t)(yb - ya);
            for (int c = 0; c < 3; c++) {
                uint64_t sum = 0;
                for (int sx = xa; sx < xb; sx++)
                    sum += acc[3 * sx + c];
                d[3 * x + c] = (uint8_t)((sum + count / 2) / count);
            }
        }
    }
    free(acc);
    free(xs);
    return MASKD_OK;
}

int maskd_image_resize_rgb(const uint8_t *src, int src_w, int src_h, uint8_t *dst, int dst_w,
                           int dst_h)
{
    if (!src || !dst || src_w <= 0 || src_h <= 0 || dst_w <= 0 || dst_h <= 0)
        return MASKD_ERR_INVALID;
    /* Bilinear reads 2x2 pixels per output: past 2x shrinking it would skip
     * source pixels and alias, so average footprints instead. */
    if (src_w >= 2 * dst_w || src_h >= 2 * dst_h)
        return resize_area(src, src_w, src_h, dst, dst_w, dst_h);
    int *tab = malloc(sizeof(int) * 3 * ((size_t)dst_w + dst_h));
    if (!tab)
        return MASKD_ERR_NOMEM;
    int *x0 = tab, *x1 = x0 + dst_w, *wx = x1 + dst_w;
    int *y0 = wx + dst_w, *y1 = y0 + dst_h, *wy = y1 + dst_h;
    resize_taps(src_w, dst_w, x0, x1, wx);
    resize_taps(src_h, dst_h, y0, y1, wy);
    const int64_t round = (int64_t)1 << (2 * RESIZE_BITS - 1);
    for (int y = 0; y < dst_h; y++) {
        const uint8_t *r0 = src + (size_t)y0[y] * src_w * 3;
        const uint8_t *r1 = src + (size_t)y1[y] * src_w * 3;
        int b = wy[y], a = RESIZE_ONE - b;
        uint8_t *d = dst + (size_t)y * dst_w * 3;
        for (int x = 0; x < dst_w; x++) {
            const uint8_t *p00 = r0 + x0[x] * 3, *p01 = r0 + x1[x] * 3;
            const uint8_t *p10 = r1 + x0[x] * 3, *p11 = r1 + x1[x] * 3;
            int q = wx[x], p = RESIZE_ONE - q;
            for (int c = 0; c < 3; c++) {
                int64_t top = (int64_t)p00[c] * p + (int64_t)p01[c] * q;
                int64_t bot = (int64_t)p10[c] * p + (int64_t)p11[c] * q;
                d[3 * x + c] = (uint8_t)((top * a + bot * b + round) >> (2 * RESIZE_BITS));
            }
        }
    }
    free(tab);
    return MASKD_OK;
}
