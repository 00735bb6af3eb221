/*
 * im2col and col2im.  The primitive is a rectangle of the iterated grid:
 * rows [r0, r1) of the flattened outer dims (d, h) times columns [w0, w1).
 * Within a row a tap reads (or writes) one contiguous-or-strided run of the
 * touched grid, clipped to where it lands, so padding costs a memset and
 * never a per-element bounds test.  A flattened tile [p0, p1) is at most
 * three rectangles: a partial first row, whole rows, a partial last row.
 */
#include <string.h>

#include "kernels.h"

/* Rows up to this many positions are copied inline (see im2col_tap_rect). */
enum { SHORT_ROW = 32 };

typedef struct rect {
    int64_t r0, r1, w0, w1;
    int64_t col_off; /* column of the rectangle's first position in col */
} rect;

/* The rectangles of a flattened tile, in position order; returns the count. */
static int split_flat(const mk_conv_geom *g, int64_t p0, int64_t p1, rect out[3])
{
    const int64_t w = g->iter[2];
    int n = 0;
    int64_t p = p0;
    if (p % w != 0) { /* partial first row */
        int64_t end = (p / w + 1) * w < p1 ? (p / w + 1) * w : p1;
        out[n++] = (rect){p / w, p / w + 1, p % w, p % w + (end - p), p - p0};
        p = end;
    }
    if (p1 - p >= w) { /* whole rows */
        int64_t rows = (p1 - p) / w;
        out[n++] = (rect){p / w, p / w + rows, 0, w, p - p0};
        p += rows * w;
    }
    if (p < p1) out[n++] = (rect){p / w, p / w + 1, 0, p1 - p, p - p0};
    return n;
}

/* The touched row that iterated row r addresses through taps (kd, kh), or -1
 * when it falls in padding. */
static int64_t touched_row(const mk_conv_geom *g, int64_t r, int64_t kd, int64_t kh)
{
    const int64_t d = r / g->iter[1], h = r % g->iter[1];
    const int64_t td = d * g->stride[0] - g->pad[0] + kd * g->dilation[0];
    const int64_t th = h * g->stride[1] - g->pad[1] + kh * g->dilation[1];
    if (td < 0 || td >= g->touch[0] || th < 0 || th >= g->touch[1]) return -1;
    return td * g->touch[1] + th;
}

/* im2col of one tap over a rectangle; tap_rows is the tap's first col row. */
static void im2col_tap_rect(const float *x, int64_t channels, const mk_conv_geom *g,
                            const rect *rc, int64_t kd, int64_t kh, int64_t kw,
                            float *tap_rows, int64_t ld)
{
    const int64_t plane = mk_conv_touch_size(g);
    const int64_t tw = g->touch[2], sw = g->stride[2];
    const int64_t shift = kw * g->dilation[2] - g->pad[2];
    const int64_t len = rc->w1 - rc->w0;
    int64_t w_lo, w_hi;
    mk_conv_tap_span(g, 2, kw, &w_lo, &w_hi);
    for (int64_t r = rc->r0; r < rc->r1; r++) {
        const int64_t off = rc->col_off + (r - rc->r0) * len;
        const int64_t row = touched_row(g, r, kd, kh);
        int64_t a = rc->w0 > w_lo ? rc->w0 : w_lo;
        int64_t b = rc->w1 < w_hi ? rc->w1 : w_hi;
        if (row < 0 || a >= b) a = b = rc->w1;
        /* dst[i] holds column w0 + i of this row */
        const int64_t pre = a - rc->w0, mid = b - a, post = rc->w1 - b;
        const float *src = x + (mid > 0 ? row * tw + a * sw + shift : 0);
        /* Rows of small maps (14 wide: a detector's mask head) are too short
         * for memcpy / memset calls to pay: their dispatch cost more than
         * the copy, a quarter of such a conv's time. */
        const bool short_row = len <= SHORT_ROW;
        for (int64_t c = 0; c < channels; c++) {
            float *dst = tap_rows + c * ld + off;
            const float *in = src + c * plane;
            if (short_row) {
                for (int64_t i = 0; i < pre; i++) dst[i] = 0.0f;
                for (int64_t i = 0; i < mid; i++) dst[pre + i] = in[i * sw];
                for (int64_t i = pre + mid; i < len; i++) dst[i] = 0.0f;
                continue;
            }
            if (pre > 0) memset(dst, 0, (size_t)pre * sizeof *dst);
            if (mid > 0) {
                if (sw == 1)
                    memcpy(dst + pre, in, (size_t)mid * sizeof *dst);
                else
                    for (int64_t i = 0; i < mid; i++) dst[pre + i] = in[i * sw];
            }
            if (post > 0) memset(dst + pre + mid, 0, (size_t)post * sizeof *dst);
        }
    }
}

static void im2col_rects(const float *x, int64_t channels, const mk_conv_geom *g,
                         const rect *rects, int n_rects, int64_t ld, const mk_tap_box *live,
                         float *col)
{
    float *tap_rows = col;
    for (int64_t kd = live->lo[0]; kd < live->hi[0]; kd++)
        for (int64_t kh = live->lo[1]; kh < live->hi[1]; kh++)
            for (int64_t kw = live->lo[2]; kw < live->hi[2]; kw++) {
                for (int i = 0; i < n_rects; i++)
                    im2col_tap_rect(x, channels, g, &rects[i], kd, kh, kw, tap_rows, ld);
                tap_rows += channels * ld;
            }
}

void mk_im2col_tile(const float *x, int64_t channels, const mk_conv_geom *g, int64_t p0,
                    int64_t p1, const mk_tap_box *live, float *col)
{
    if (p1 <= p0) return;
    rect rects[3];
    int n = split_flat(g, p0, p1, rects);
    im2col_rects(x, channels, g, rects, n, p1 - p0, live, col);
}

void mk_im2col_rect(const float *x, int64_t channels, const mk_conv_geom *g, int64_t r0,
                    int64_t r1, int64_t w0, int64_t w1, const mk_tap_box *live, float *col)
{
    if (r1 <= r0 || w1 <= w0) return;
    rect rc = {r0, r1, w0, w1, 0};
    im2col_rects(x, channels, g, &rc, 1, (r1 - r0) * (w1 - w0), live, col);
}

void mk_col2im_tile_add(const float *col, int64_t channels, const mk_conv_geom *g, int64_t p0,
                        int64_t p1, float *y)
{
    if (p1 <= p0) return;
    const int64_t n = p1 - p0;
    const int64_t taps = mk_conv_tap_count(g);
    const int64_t plane = mk_conv_touch_size(g);
    const int64_t tw = g->touch[2], sw = g->stride[2];
    rect rects[3];
    const int n_rects = split_flat(g, p0, p1, rects);
    int64_t tap = 0;
    for (int64_t kd = 0; kd < g->kernel[0]; kd++)
        for (int64_t kh = 0; kh < g->kernel[1]; kh++)
            for (int64_t kw = 0; kw < g->kernel[2]; kw++, tap++) {
                int64_t w_lo, w_hi;
                mk_conv_tap_span(g, 2, kw, &w_lo, &w_hi);
                const int64_t shift = kw * g->dilation[2] - g->pad[2];
                for (int i = 0; i < n_rects; i++) {
                    const rect *rc = &rects[i];
                    const int64_t len = rc->w1 - rc->w0;
                    const int64_t a = rc->w0 > w_lo ? rc->w0 : w_lo;
                    const int64_t b = rc->w1 < w_hi ? rc->w1 : w_hi;
                    if (a >= b) continue;
                    for (int64_t r = rc->r0; r < rc->r1; r++) {
                        const int64_t row = touched_row(g, r, kd, kh);
                        if (row < 0) continue;
                        const int64_t first = rc->col_off + (r - rc->r0) * len + (a - rc->w0);
                        const int64_t first_dst = row * tw + a * sw + shift;
                        for (int64_t c = 0; c < channels; c++) {
                            const float *src = col + (c * taps + tap) * n + first;
                            float *out = y + c * plane + first_dst;
                            if (sw == 1)
                                for (int64_t j = 0; j < b - a; j++) out[j] += src[j];
                            else
                                for (int64_t j = 0; j < b - a; j++) out[j * sw] += src[j];
                        }
                    }
                }
            }
}
