/*
 * Direct depthwise convolution, one plane at a time.
 *
 * Rows whose tap falls in padding are skipped outright, so an atrous conv
 * whose taps mostly fall outside a small map (DeepLab's ASPP rates) does only
 * the taps that touch data.  Each output row is split into the interior,
 * where every horizontal tap lands, and the two borders: the interior is one
 * vectorizable pass per live kernel row (the kernel width unrolled for 3 and
 * 5), the bias folded into the first pass; the borders are scalar with a
 * bounds test per tap.
 */
#include "kernels.h"

/* Kernel rows (kd, kh) and widths handled by the fast path; larger kernels
 * take the plain per-tap loop. */
enum { MAX_ROWS = 64, MAX_KW = 32 };

/* One pass over the interior: y[i] = (first ? init : y[i]) + sum_kw w[kw] *
 * x[i*sw + kw*dw], x pointing at interior position 0's tap 0.  The four
 * loops keep the invariant tests out of the vectorized body. */
#define INTERIOR_LOOP(KW, START, STEP)                                                \
    for (int64_t i = 0; i < n; i++) {                                                 \
        float acc = START;                                                            \
        for (int k = 0; k < KW; k++) acc += wk[k] * x[i * STEP + k * dw];             \
        y[i] = acc;                                                                   \
    }
#define INTERIOR_PASS(KW)                                                             \
    static void interior_##KW(float *restrict y, const float *restrict x,             \
                              const float *restrict w, int64_t n, int64_t sw,         \
                              int64_t dw, float init, int first)                     \
    {                                                                                \
        float wk[KW];                                                                \
        for (int k = 0; k < KW; k++) wk[k] = w[k];                                   \
        if (first && sw == 1) INTERIOR_LOOP(KW, init, 1)                             \
        else if (first) INTERIOR_LOOP(KW, init, sw)                                  \
        else if (sw == 1) INTERIOR_LOOP(KW, y[i], 1)                                 \
        else INTERIOR_LOOP(KW, y[i], sw)                                             \
    }
INTERIOR_PASS(3)
INTERIOR_PASS(5)

static void interior_any(float *restrict y, const float *restrict x, const float *restrict w,
                         int64_t n, int64_t sw, int64_t dw, int64_t kw_n, float init, int first)
{
    if (first)
        for (int64_t i = 0; i < n; i++) y[i] = init;
    for (int64_t k = 0; k < kw_n; k++) {
        const float wv = w[k];
        const float *xk = x + k * dw;
        if (sw == 1)
            for (int64_t i = 0; i < n; i++) y[i] += wv * xk[i];
        else
            for (int64_t i = 0; i < n; i++) y[i] += wv * xk[i * sw];
    }
}

/* Plain per-tap accumulation for kernels too large for the fast path. */
static void plane_generic(const float *x, const float *w, float bias, const mk_conv_geom *g,
                          float *y)
{
    const int64_t ow_n = g->iter[2], kw_n = g->kernel[2];
    for (int64_t od = 0; od < g->iter[0]; od++)
        for (int64_t oh = 0; oh < g->iter[1]; oh++) {
            float *yrow = y + (od * g->iter[1] + oh) * ow_n;
            for (int64_t o = 0; o < ow_n; o++) yrow[o] = bias;
            for (int64_t kd = 0; kd < g->kernel[0]; kd++) {
                int64_t td = od * g->stride[0] - g->pad[0] + kd * g->dilation[0];
                if (td < 0 || td >= g->touch[0]) continue;
                for (int64_t kh = 0; kh < g->kernel[1]; kh++) {
                    int64_t th = oh * g->stride[1] - g->pad[1] + kh * g->dilation[1];
                    if (th < 0 || th >= g->touch[1]) continue;
                    const float *xrow = x + (td * g->touch[1] + th) * g->touch[2];
                    const float *wk = w + (kd * g->kernel[1] + kh) * kw_n;
                    for (int64_t kw = 0; kw < kw_n; kw++) {
                        int64_t a, b;
                        mk_conv_tap_span(g, 2, kw, &a, &b);
                        const int64_t shift = kw * g->dilation[2] - g->pad[2];
                        for (int64_t o = a; o < b; o++)
                            yrow[o] += wk[kw] * xrow[o * g->stride[2] + shift];
                    }
                }
            }
        }
}

void mk_depthwise_plane(const float *x, const float *w, float bias, const mk_conv_geom *g,
                        float *y)
{
    const int64_t ow_n = g->iter[2], kw_n = g->kernel[2], tw = g->touch[2];
    const int64_t sw = g->stride[2], dw = g->dilation[2], pw = g->pad[2];
    if (kw_n > MAX_KW || g->kernel[0] * g->kernel[1] > MAX_ROWS) {
        plane_generic(x, w, bias, g, y);
        return;
    }
    /* The interior: where every horizontal tap lands. */
    int64_t inner_lo = 0, inner_hi = ow_n;
    for (int64_t kw = 0; kw < kw_n; kw++) {
        int64_t a, b;
        mk_conv_tap_span(g, 2, kw, &a, &b);
        if (a > inner_lo) inner_lo = a;
        if (b < inner_hi) inner_hi = b;
    }
    if (inner_hi < inner_lo) inner_hi = inner_lo;
    if (inner_lo > ow_n) inner_lo = inner_hi = ow_n;

    const float *rows_x[MAX_ROWS];
    const float *rows_w[MAX_ROWS];
    for (int64_t od = 0; od < g->iter[0]; od++)
        for (int64_t oh = 0; oh < g->iter[1]; oh++) {
            float *yrow = y + (od * g->iter[1] + oh) * ow_n;
            int n_rows = 0;
            for (int64_t kd = 0; kd < g->kernel[0]; kd++) {
                const int64_t td = od * g->stride[0] - g->pad[0] + kd * g->dilation[0];
                if (td < 0 || td >= g->touch[0]) continue;
                for (int64_t kh = 0; kh < g->kernel[1]; kh++) {
                    const int64_t th = oh * g->stride[1] - g->pad[1] + kh * g->dilation[1];
                    if (th < 0 || th >= g->touch[1]) continue;
                    rows_x[n_rows] = x + (td * g->touch[1] + th) * tw;
                    rows_w[n_rows] = w + (kd * g->kernel[1] + kh) * kw_n;
                    n_rows++;
                }
            }
            /* Borders: few positions, each tap tested. */
            for (int64_t o = 0; o < ow_n; o++) {
                if (o == inner_lo) o = inner_hi;
                if (o >= ow_n) break;
                float acc = bias;
                for (int r = 0; r < n_rows; r++)
                    for (int64_t kw = 0; kw < kw_n; kw++) {
                        const int64_t t = o * sw - pw + kw * dw;
                        if (t >= 0 && t < tw) acc += rows_w[r][kw] * rows_x[r][t];
                    }
                yrow[o] = acc;
            }
            const int64_t n = inner_hi - inner_lo;
            if (n <= 0) continue;
            float *yi = yrow + inner_lo;
            if (n_rows == 0) {
                for (int64_t i = 0; i < n; i++) yi[i] = bias;
                continue;
            }
            const int64_t x0 = inner_lo * sw - pw; /* input of the first interior position, tap 0 */
            for (int r = 0; r < n_rows; r++) {
                const float *xr = rows_x[r] + x0;
                if (kw_n == 3) interior_3(yi, xr, rows_w[r], n, sw, dw, bias, r == 0);
                else if (kw_n == 5) interior_5(yi, xr, rows_w[r], n, sw, dw, bias, r == 0);
                else interior_any(yi, xr, rows_w[r], n, sw, dw, kw_n, bias, r == 0);
            }
        }
}
