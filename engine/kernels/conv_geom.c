/* Convolution geometry: which iterated positions a tap can serve, and which
 * taps a tile of positions needs at all. */
#include "kernels.h"

int64_t mk_conv_iter_size(const mk_conv_geom *g)
{
    return g->iter[0] * g->iter[1] * g->iter[2];
}

int64_t mk_conv_touch_size(const mk_conv_geom *g)
{
    return g->touch[0] * g->touch[1] * g->touch[2];
}

int64_t mk_conv_tap_count(const mk_conv_geom *g)
{
    return g->kernel[0] * g->kernel[1] * g->kernel[2];
}

int64_t mk_tap_box_count(const mk_tap_box *box)
{
    int64_t n = 1;
    for (int d = 0; d < MK_CONV_DIMS; d++)
        n *= box->hi[d] > box->lo[d] ? box->hi[d] - box->lo[d] : 0;
    return n;
}

int64_t mk_floor_div(int64_t n, int64_t d)
{
    int64_t q = n / d;
    return (n % d != 0 && n < 0) ? q - 1 : q;
}

void mk_conv_tap_span(const mk_conv_geom *g, int dim, int64_t k, int64_t *lo,
                      int64_t *hi)
{
    /* o * s - pad + k * dil must lie in [0, touch): solve for o. */
    int64_t s = g->stride[dim];
    int64_t shift = g->pad[dim] - k * g->dilation[dim];
    int64_t first = -mk_floor_div(-shift, s); /* ceil(shift / s) */
    int64_t last = mk_floor_div(g->touch[dim] - 1 + shift, s);
    if (first < 0) first = 0;
    if (last > g->iter[dim] - 1) last = g->iter[dim] - 1;
    if (g->touch[dim] <= 0 || last < first) {
        *lo = *hi = first;
        return;
    }
    *lo = first;
    *hi = last + 1;
}

/* Live taps per dim for iterated index ranges [a[d], b[d]] (inclusive). */
static void live_in_ranges(const mk_conv_geom *g, const int64_t a[MK_CONV_DIMS],
                           const int64_t b[MK_CONV_DIMS], mk_tap_box *box)
{
    for (int d = 0; d < MK_CONV_DIMS; d++) {
        int64_t lo = -1, hi = -1;
        for (int64_t k = 0; k < g->kernel[d]; k++) {
            int64_t s_lo, s_hi;
            mk_conv_tap_span(g, d, k, &s_lo, &s_hi);
            if (s_lo < s_hi && s_lo <= b[d] && s_hi - 1 >= a[d]) {
                if (lo < 0) lo = k;
                hi = k + 1;
            }
        }
        if (lo < 0) {
            for (int e = 0; e < MK_CONV_DIMS; e++) box->lo[e] = box->hi[e] = 0;
            return;
        }
        box->lo[d] = lo;
        box->hi[d] = hi;
    }
}

void mk_conv_live_taps(const mk_conv_geom *g, int64_t p0, int64_t p1, mk_tap_box *box)
{
    for (int d = 0; d < MK_CONV_DIMS; d++) box->lo[d] = box->hi[d] = 0;
    if (p1 <= p0) return;
    const int64_t w = g->iter[2];
    const int64_t r0 = p0 / w, r1 = (p1 - 1) / w + 1;
    /* Within one row the column range is exact; a tile over several rows
     * counts every column. */
    int64_t w0 = 0, w1 = w;
    if (r1 - r0 == 1) {
        w0 = p0 % w;
        w1 = (p1 - 1) % w + 1;
    }
    mk_conv_live_taps_rect(g, r0, r1, w0, w1, box);
}

void mk_conv_live_taps_rect(const mk_conv_geom *g, int64_t r0, int64_t r1, int64_t w0,
                            int64_t w1, mk_tap_box *box)
{
    for (int d = 0; d < MK_CONV_DIMS; d++) box->lo[d] = box->hi[d] = 0;
    if (r1 <= r0 || w1 <= w0) return;
    /* A dim whose index varies inside the rows counts its whole range. */
    const int64_t h_n = g->iter[1];
    const int64_t d0 = r0 / h_n, d1 = (r1 - 1) / h_n;
    int64_t a[MK_CONV_DIMS] = {d0, d0 == d1 ? r0 % h_n : 0, w0};
    int64_t b[MK_CONV_DIMS] = {d1, d0 == d1 ? (r1 - 1) % h_n : h_n - 1, w1 - 1};
    live_in_ranges(g, a, b, box);
}
