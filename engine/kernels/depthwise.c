/*
 * Direct depthwise convolution, one plane at a time.
 *
 * Rows whose tap falls in padding are skipped outright, so an atrous conv
 * whose taps mostly fall outside a small map (DeepLab's ASPP rates) does only
 * the taps that touch data.  Each output row (with its live kernel rows) then
 * goes to a row kernel picked once from the CPU (mk_cpu_level):
 *
 *   portable  the reference the others are tested against, and the fallback:
 *             the row is split into the interior, where every horizontal tap
 *             lands, and the two borders; the borders are scalar with a
 *             bounds test per tap (a few positions), the interior is one
 *             vectorizable pass per live kernel row (the kernel width
 *             unrolled for 3 and 5), the bias folded into the first pass
 *   avx2      8 outputs per vector, avx512: 16 per vector, for strides 1 and
 *             2 (others go portable), any width and dilation: every live
 *             kernel row and tap is accumulated in registers before one
 *             store; the borders take masked loads instead of tests (see
 *             below).  Two output rows that use the same kernel rows go
 *             together, so short rows still keep two FMA chains in flight.
 *
 *   flat      (avx2, avx512) stride 1 with output rows as wide as the input
 *             rows ("same" padding, any dilation): output p and tap (kh, kw)
 *             then read input p + (kh*dh - ph) * W + kw*dw - pw, so the plane
 *             is one long row and a vector of outputs may span several
 *             output rows: a 7x7 map is four vectors, not seven short rows.
 *             Padding is a per-vector mask, the lanes whose row and column
 *             the tap lands in.  On avx512, undilated (or dilated 2) 3x3 and
 *             5x5 kernels on rows of 20 and more go in bands of four output
 *             rows instead, each input vector serving every output row it
 *             is a kernel row of.
 *   strided   (avx512) stride 2 across: the row walk with column masks
 *             tabulated once per call and constant loops on full rows; for
 *             kernels of more than 9 taps, on input rows split once into
 *             their even and odd columns instead.
 *
 *   blocked   (avx512) small maps, any stride: whole groups of sixteen
 *             planes transposed into one zero-bordered map of 16-channel
 *             vectors, every tap a plain load, and transposed back.
 *
 * Planes come in runs (mk_depthwise_planes) so the geometry and mask tables
 * are worked out once per run, not per plane.  The fused activation
 * (act_simd.h) is applied as each vector is stored.
 *
 * The strided walk also serves convs with a few input channels and stride 2
 * (a network's stem, mk_stem_conv_rows): every output channel of a block at
 * once, each tap's input vector feeding one FMA per output channel.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MK_DW_X86 1
#endif

#include "../mk.h"
#include "kernels.h"
#include "act_simd.h"

/* Kernel rows (kd, kh) and widths handled by the fast path; larger kernels
 * take the plain per-tap loop. */
enum { MAX_ROWS = 64, MAX_KW = 32 };
/* The flat walk's limits: taps of a kernel, lane-mask entries tabulated
 * (16 KiB of stack). */
enum { FLAT_MAX_TAPS = 64, FLAT_TABLE_MAX = 8192 };

static void act_span(float *y, int64_t n, const mk_act_spec *ep)
{
    if (ep->act != MK_ACT_NONE) mk_act_span(y, n, ep);
}

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
                          const mk_act_spec *ep, float *y)
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
            act_span(yrow, ow_n, ep);
        }
}

/* ---- row kernels ----------------------------------------------------------- */

/* One output row's horizontal geometry: ow outputs; output o and tap k read
 * input column o * sw - pw + k * dw of a row tw wide, when it exists; every
 * tap lands for o in [inner_lo, inner_hi). */
typedef struct dw_row {
    int64_t ow, kw, sw, dw, pw, tw, inner_lo, inner_hi;
} dw_row;

/* y[o] = bias + sum over live kernel rows r and taps k of ws[r][k] *
 * xs[r][o * sw - pw + k * dw], taps outside [0, tw) skipped; xs[r] is the
 * start of an input row.  n_rows >= 1.  A row kernel computes nr (1 or 2)
 * such output rows ys[j] from input rows xss[j], with the same weights. */
typedef void (*row_fn)(float *const *ys, const dw_row *g, const float *const *const *xss,
                       const float *const *ws, int n_rows, int nr, float bias,
                       const mk_act_spec *ep);

static void row_portable_one(float *y, const dw_row *g, const float *const *xs,
                             const float *const *ws, int n_rows, float bias)
{
    const int64_t kw_n = g->kw, sw = g->sw, dw = g->dw, pw = g->pw, tw = g->tw;
    /* Borders: few positions, each tap tested. */
    for (int64_t o = 0; o < g->ow; o++) {
        if (o == g->inner_lo) o = g->inner_hi;
        if (o >= g->ow) break;
        float acc = bias;
        for (int r = 0; r < n_rows; r++)
            for (int64_t kw = 0; kw < kw_n; kw++) {
                const int64_t t = o * sw - pw + kw * dw;
                if (t >= 0 && t < tw) acc += ws[r][kw] * xs[r][t];
            }
        y[o] = acc;
    }
    const int64_t n = g->inner_hi - g->inner_lo;
    if (n <= 0) return;
    const int64_t x0 = g->inner_lo * sw - pw; /* input of the first interior position, tap 0 */
    float *yi = y + g->inner_lo;
    for (int r = 0; r < n_rows; r++) {
        const float *xr = xs[r] + x0;
        if (kw_n == 3) interior_3(yi, xr, ws[r], n, sw, dw, bias, r == 0);
        else if (kw_n == 5) interior_5(yi, xr, ws[r], n, sw, dw, bias, r == 0);
        else interior_any(yi, xr, ws[r], n, sw, dw, kw_n, bias, r == 0);
    }
}

static void row_portable(float *const *ys, const dw_row *g, const float *const *const *xss,
                         const float *const *ws, int n_rows, int nr, float bias,
                         const mk_act_spec *ep)
{
    for (int j = 0; j < nr; j++) {
        row_portable_one(ys[j], g, xss[j], ws, n_rows, bias);
        act_span(ys[j], g->ow, ep);
    }
}

/* The flat walk's geometry: a plane w wide (input and output), h output
 * rows; kernel row kh lands for output rows [row_lo, row_hi), kernel column
 * kw for output columns [col_lo, col_hi); tap (kh, kw) of output p reads
 * input p + off[kh] + kw * dw. */
typedef struct dw_flat {
    int64_t w, h, dw, kh_n, kw_n;
    int64_t full_lo, full_hi; /* output rows where every kernel row lands */
    int64_t off[MAX_KW], row_lo[MAX_KW], row_hi[MAX_KW], col_lo[MAX_KW], col_hi[MAX_KW];
} dw_flat;

/* The strided walk's geometry (stride 2 across, AVX-512): output rows ow
 * wide, h of them, input rows tw wide; kernel row kh lands for output rows
 * [row_lo, row_hi) and output row oh's kernel row kh reads input row
 * oh * sh + row_off[kh]; output o, tap kw reads input column o * 2 - pw +
 * kw * dw. */
typedef struct dw_strided {
    int64_t ow, h, tw, sh, pw, dw, kh_n, kw_n;
    int64_t row_off[MAX_KW], row_lo[MAX_KW], row_hi[MAX_KW];
} dw_strided;

/* What the flat and strided walks take: one 2-D plane (no depth to walk),
 * a kernel of at most FLAT_MAX_TAPS taps, MAX_KW a side; and the output
 * rows [row_lo[k], row_hi[k]) each kernel row k lands for. */
static bool plane_walkable(const mk_conv_geom *g, int64_t *row_lo, int64_t *row_hi)
{
    if (g->kernel[0] != 1 || g->iter[0] != 1 || g->pad[0] != 0 || g->touch[0] < 1 ||
        g->kernel[1] * g->kernel[2] > FLAT_MAX_TAPS || g->kernel[1] > MAX_KW ||
        g->kernel[2] > MAX_KW)
        return false;
    for (int64_t k = 0; k < g->kernel[1]; k++) mk_conv_tap_span(g, 1, k, &row_lo[k], &row_hi[k]);
    return true;
}

static bool strided_geometry(const mk_conv_geom *g, dw_strided *sg)
{
    if (g->stride[2] != 2 || !plane_walkable(g, sg->row_lo, sg->row_hi)) return false;
    sg->ow = g->iter[2];
    sg->h = g->iter[1];
    sg->tw = g->touch[2];
    sg->sh = g->stride[1];
    sg->pw = g->pad[2];
    sg->dw = g->dilation[2];
    sg->kh_n = g->kernel[1];
    sg->kw_n = g->kernel[2];
    for (int64_t k = 0; k < sg->kh_n; k++) sg->row_off[k] = k * g->dilation[1] - g->pad[1];
    return true;
}

static bool flat_geometry(const mk_conv_geom *g, dw_flat *f)
{
    if (g->stride[1] != 1 || g->stride[2] != 1 || g->iter[2] != g->touch[2] ||
        !plane_walkable(g, f->row_lo, f->row_hi))
        return false;
    f->w = g->iter[2];
    f->h = g->iter[1];
    f->dw = g->dilation[2];
    f->kh_n = g->kernel[1];
    f->kw_n = g->kernel[2];
    for (int64_t k = 0; k < f->kh_n; k++) f->off[k] = (k * g->dilation[1] - g->pad[1]) * f->w - g->pad[2];
    for (int64_t k = 0; k < f->kw_n; k++) mk_conv_tap_span(g, 2, k, &f->col_lo[k], &f->col_hi[k]);
    f->full_lo = 0;
    f->full_hi = f->h;
    for (int64_t k = 0; k < f->kh_n; k++) {
        if (f->row_lo[k] > f->full_lo) f->full_lo = f->row_lo[k];
        if (f->row_hi[k] < f->full_hi) f->full_hi = f->row_hi[k];
    }
    return true;
}

enum { BAND_ROWS = 4, BAND_MIN_WIDTH = 20, BAND_TABLE_MAX = 2048 };

/* Whether the banded walk (AVX-512, below) takes a flat geometry: 3x3
 * undilated or dilated 2 (both ways) or 5x5 undilated, on rows wide enough
 * and a plane tall enough for bands. */
static bool band_walks(const dw_flat *f)
{
    const int64_t kh = f->kh_n, kw = f->kw_n, d = f->dw;
    return kh == kw && (kh == 3 || (kh == 5 && d == 1)) && (d == 1 || d == 2) &&
           f->off[1] - f->off[0] == d * f->w && f->w >= BAND_MIN_WIDTH &&
           f->full_hi - f->full_lo >= BAND_ROWS;
}

#ifdef MK_DW_X86
/*
 * The vector kernels walk the whole row in vectors of outputs.  Where four
 * vectors lie in the interior they go together, unmasked (four independent
 * FMA chains in flight); every other vector (borders, remainders) loads each
 * tap under a mask of the input columns that exist, so padding reads as zero
 * with no test in the loop.  Masked-off lanes are never touched, even when
 * their address lies outside the row or the plane.  Stride 2 loads twice the
 * columns and keeps the even lanes.
 */
#define ALWAYS_INLINE static inline __attribute__((always_inline))
#define AVX2_TARGET __attribute__((target("avx2,fma")))
#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

enum { BLOCK_VECS = 4 };

/* ROW(acc, kh) for kernel rows 0..KH-1, even rows into a0 and odd ones into
 * a1: two FMA chains in flight instead of one. */
#define EVEN_ODD_ROWS(ROW)                                                                     \
    do {                                                                                       \
        int kh_ = 0;                                                                           \
        for (; kh_ + 1 < KH; kh_ += 2) {                                                       \
            ROW(a0, kh_);                                                                      \
            ROW(a1, kh_ + 1);                                                                  \
        }                                                                                      \
        if (kh_ < KH) ROW(a0, kh_);                                                            \
    } while (0)

/* Bits [lo, hi) of 32, clamped. */
static inline uint32_t bit_range(int64_t lo, int64_t hi)
{
    if (lo < 0) lo = 0;
    if (hi > 32) hi = 32;
    if (hi <= lo) return 0;
    return (uint32_t)((((uint64_t)1 << hi) - 1) & ~(((uint64_t)1 << lo) - 1));
}

/* The flat walk's lanes for the c outputs from output row oh, column ow
 * on: per kernel row, the lanes whose output row it lands for; per kernel
 * column, the lanes whose output column it lands for.  A vector crosses
 * ceil(c / w) + 1 rows at most, each a run of lanes. */
static inline void flat_masks(const dw_flat *f, int64_t oh, int64_t ow, int64_t c, const int KH,
                              const int KW, uint32_t *rows, uint32_t *cols)
{
    for (int k = 0; k < KH; k++) rows[k] = 0;
    for (int k = 0; k < KW; k++) cols[k] = 0;
    for (int64_t e = 0; e < c; oh++, ow = 0) {
        const int64_t len = f->w - ow < c - e ? f->w - ow : c - e;
        const uint32_t run = bit_range(e, e + len);
        for (int k = 0; k < KH; k++)
            if (oh >= f->row_lo[k] && oh < f->row_hi[k]) rows[k] |= run;
        for (int k = 0; k < KW; k++)
            cols[k] |= bit_range(e + f->col_lo[k] - ow, e + f->col_hi[k] - ow) & run;
        e += len;
    }
}

/* Where the flat walk is: output row and column of the next vector. */
typedef struct flat_cursor {
    int64_t oh, ow;
} flat_cursor;

/* The lane mask of each tap (kernel-row-major) for the c outputs at the
 * cursor, then whether all V lanes of all taps are live; moves the cursor
 * V outputs on. */
static inline void flat_vector_masks(const dw_flat *f, flat_cursor *cur, int64_t c, int V,
                                     const int KH, const int KW, uint16_t *m)
{
    uint32_t rows[MAX_KW], cols[MAX_KW];
    flat_masks(f, cur->oh, cur->ow, c, KH, KW, rows, cols);
    const uint32_t full = bit_range(0, V);
    uint32_t all = c == V ? full : 0;
    for (int kh = 0; kh < KH; kh++)
        for (int kw = 0; kw < KW; kw++) {
            m[kh * KW + kw] = (uint16_t)(rows[kh] & cols[kw]);
            all &= rows[kh] & cols[kw];
        }
    m[KH * KW] = all == full;
    for (cur->ow += V; cur->ow >= f->w; cur->ow -= f->w) cur->oh++;
}

/* Every vector's masks (flat_vector_masks, taps + 1 entries a vector) when
 * they fit in FLAT_TABLE_MAX entries: computing them costs branches that
 * a small plane's few FMAs cannot hide, and they are the same for every
 * plane. */
/* A plane too big for that table: the column masks of a vector starting at
 * each output column (all V lanes, taps + 1 entries as above, the kernel
 * rows' entries left to flat_masks_at), which is all a vector needs when
 * every kernel row lands on its rows, as on all but a big plane's edge rows.
 * False when there are no such rows or the table would not fit. */
static bool flat_column_table(const dw_flat *f, int V, uint16_t *table)
{
    const int64_t kw_n = f->kw_n;
    if (f->w < V || f->full_lo >= f->full_hi || f->w * (kw_n + 1) > FLAT_TABLE_MAX) return false;
    uint32_t rows[MAX_KW], cols[MAX_KW];
    const uint32_t full = bit_range(0, V);
    for (int64_t ow = 0; ow < f->w; ow++, table += kw_n + 1) {
        flat_masks(f, f->full_lo, ow, V, (int)f->kh_n, (int)kw_n, rows, cols);
        uint32_t all = full;
        for (int64_t k = 0; k < kw_n; k++) {
            table[k] = (uint16_t)cols[k];
            all &= cols[k];
        }
        table[kw_n] = all == full;
    }
    return true;
}

/* The masks of the vector of c outputs at the cursor, without a
 * whole-plane table: from the column table when all its rows are full
 * rows, else worked out; moves the cursor on. */
static inline const uint16_t *flat_masks_at(const dw_flat *f, const uint16_t *columns,
                                            flat_cursor *cur, int64_t c, int V, const int KH,
                                            const int KW, uint16_t *local)
{
    const int T = KH * KW;
    if (columns && c == V && cur->oh >= f->full_lo &&
        cur->oh + (cur->ow + V > f->w) < f->full_hi) {
        const uint16_t *cm = columns + cur->ow * (KW + 1);
        for (cur->ow += V; cur->ow >= f->w; cur->ow -= f->w) cur->oh++;
        local[T] = cm[KW];
        if (!local[T])
            for (int kh = 0; kh < KH; kh++)
                for (int kw = 0; kw < KW; kw++) local[kh * KW + kw] = cm[kw];
        return local;
    }
    flat_vector_masks(f, cur, c, V, KH, KW, local);
    return local;
}

static bool flat_table(const dw_flat *f, int V, uint16_t *table)
{
    const int64_t n = f->h * f->w, taps = f->kh_n * f->kw_n;
    if ((n + V - 1) / V * (taps + 1) > FLAT_TABLE_MAX) return false;
    flat_cursor cur = {0, 0};
    for (int64_t p0 = 0; p0 < n; p0 += V, table += taps + 1)
        flat_vector_masks(f, &cur, n - p0 < V ? n - p0 : V, V, (int)f->kh_n, (int)f->kw_n,
                          table);
    return true;
}

/* Mask of the input columns a vector of c outputs at input column t0 reads
 * that exist: bit e for column t0 + e, e < S * (c - 1) + 1. */
static inline uint32_t column_mask(int64_t t0, int64_t c, int64_t S, int64_t tw)
{
    return bit_range(-t0, S * (c - 1) + 1 < tw - t0 ? S * (c - 1) + 1 : tw - t0);
}

/* AVX2: masks are vectors, lane set when its bit is. */
AVX2_TARGET ALWAYS_INLINE __m256i mask8(uint32_t bits)
{
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i b = _mm256_and_si256(_mm256_set1_epi32((int)bits), lane_bit);
    return _mm256_cmpeq_epi32(b, lane_bit);
}

AVX2_TARGET ALWAYS_INLINE __m256 even8(__m256 lo, __m256 hi)
{
    /* lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6, then the middle 64-bit pairs swapped. */
    const __m256 e = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
}

/* Eight outputs' taps at p[j * S], all in the row.  A stride-2 load also
 * reads the column after the last tap: blocks stop one output short of the
 * interior's end so that it exists. */
AVX2_TARGET ALWAYS_INLINE __m256 load8_full(const float *p, const int S)
{
    if (S == 1) return _mm256_loadu_ps(p);
    return even8(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8));
}

AVX2_TARGET ALWAYS_INLINE __m256 load8_masked(const float *p, const int S, __m256i m_lo,
                                              __m256i m_hi)
{
    if (S == 1) return _mm256_maskload_ps(p, m_lo);
    return even8(_mm256_maskload_ps(p, m_lo), _mm256_maskload_ps(p + 8, m_hi));
}

AVX2_TARGET ALWAYS_INLINE void row_avx2_body(float *const *ys, const dw_row *g,
                                             const float *const *const *xss,
                                             const float *const *ws, int n_rows, const int KW,
                                             const int S, const int NR, float bias,
                                             const mk_act_spec *ep)
{
    enum { V = 8 };
    const int64_t ow = g->ow, dw = g->dw, pw = g->pw, tw = g->tw;
    const __m256 vb = _mm256_set1_ps(bias);
    __m256i m_lo[MAX_KW], m_hi[MAX_KW];
    int64_t o = 0;
    while (o < ow) {
        if (o >= g->inner_lo && o + BLOCK_VECS * V + (S - 1) <= g->inner_hi) {
            for (int j = 0; j < NR; j++) {
                __m256 a0 = vb, a1 = vb, a2 = vb, a3 = vb;
                for (int r = 0; r < n_rows; r++) {
                    const float *x = xss[j][r] + o * S - pw;
                    for (int k = 0; k < KW; k++) {
                        const __m256 wk = _mm256_set1_ps(ws[r][k]);
                        const float *p = x + k * dw;
                        a0 = _mm256_fmadd_ps(wk, load8_full(p, S), a0);
                        a1 = _mm256_fmadd_ps(wk, load8_full(p + V * S, S), a1);
                        a2 = _mm256_fmadd_ps(wk, load8_full(p + 2 * V * S, S), a2);
                        a3 = _mm256_fmadd_ps(wk, load8_full(p + 3 * V * S, S), a3);
                    }
                }
                float *y = ys[j];
                _mm256_storeu_ps(y + o, act8(a0, ep));
                _mm256_storeu_ps(y + o + V, act8(a1, ep));
                _mm256_storeu_ps(y + o + 2 * V, act8(a2, ep));
                _mm256_storeu_ps(y + o + 3 * V, act8(a3, ep));
            }
            o += BLOCK_VECS * V;
            continue;
        }
        const int64_t c = ow - o < V ? ow - o : V;
        for (int k = 0; k < KW; k++) {
            const uint32_t bits = column_mask(o * S - pw + k * dw, c, S, tw);
            m_lo[k] = mask8(bits & 0xff);
            m_hi[k] = mask8(bits >> 8);
        }
        __m256 a[2] = {vb, vb};
        for (int r = 0; r < n_rows; r++)
            for (int k = 0; k < KW; k++) {
                const __m256 wk = _mm256_set1_ps(ws[r][k]);
                for (int j = 0; j < NR; j++)
                    a[j] = _mm256_fmadd_ps(wk, load8_masked(xss[j][r] + o * S - pw + k * dw, S, m_lo[k], m_hi[k]),
                                 a[j]);
            }
        for (int j = 0; j < NR; j++) {
            if (c == V) _mm256_storeu_ps(ys[j] + o, act8(a[j], ep));
            else _mm256_maskstore_ps(ys[j] + o, mask8(bit_range(0, c)), act8(a[j], ep));
        }
        o += c;
    }
}

/* The specializations a vector row body is compiled into, picked per call:
 * kernel widths 3 and 5 unrolled and any other width, strides 1 and 2, one or
 * two output rows (NR; the second's FMA chains run beside the first's where a
 * row is too short for blocks).  Other strides go portable. */
#define ROW_BODY_NR(body, KW, S)                                                 \
    do {                                                                         \
        if (nr == 2) body(ys, g, xss, ws, n_rows, KW, S, 2, bias, ep);           \
        else body(ys, g, xss, ws, n_rows, KW, S, 1, bias, ep);                   \
    } while (0)
#define ROW_DISPATCH(body)                                                       \
    do {                                                                         \
        const int64_t kw = g->kw, sw = g->sw;                                    \
        if (sw == 1 && kw == 3) ROW_BODY_NR(body, 3, 1);                         \
        else if (sw == 1 && kw == 5) ROW_BODY_NR(body, 5, 1);                    \
        else if (sw == 1) ROW_BODY_NR(body, (int)kw, 1);                         \
        else if (sw == 2 && kw == 3) ROW_BODY_NR(body, 3, 2);                    \
        else if (sw == 2 && kw == 5) ROW_BODY_NR(body, 5, 2);                    \
        else if (sw == 2) ROW_BODY_NR(body, (int)kw, 2);                         \
        else row_portable(ys, g, xss, ws, n_rows, nr, bias, ep);                 \
    } while (0)

AVX2_TARGET static void row_avx2(float *const *ys, const dw_row *g, const float *const *const *xss,
                                 const float *const *ws, int n_rows, int nr, float bias,
                                 const mk_act_spec *ep)
{
    ROW_DISPATCH(row_avx2_body);
}

/* The flat walk (dw_flat), eight outputs a vector.  A vector whose taps all
 * land loads plainly; the others under per-tap lane masks.  Even and odd
 * kernel rows go to two accumulators, two FMA chains in flight. */
AVX2_TARGET ALWAYS_INLINE void flat_avx2_body(const float *x, const float *w, float bias,
                                              const dw_flat *f, const uint16_t *table,
                                              const uint16_t *columns,
                                              const mk_act_spec *ep, float *y, const int KH,
                                              const int KW, const int64_t dw)
{
    enum { V = 8 };
    const int T = KH * KW;
    const int64_t n = f->h * f->w;
    const __m256 vb = _mm256_set1_ps(bias);
    uint16_t local[FLAT_MAX_TAPS + 1];
    flat_cursor cur = {0, 0};
    for (int64_t p0 = 0, v = 0; p0 < n; p0 += V, v++) {
        const int64_t c = n - p0 < V ? n - p0 : V;
        const uint16_t *m = table ? table + v * (T + 1)
                                  : flat_masks_at(f, columns, &cur, c, V, KH, KW, local);
        __m256 a0 = vb, a1 = _mm256_setzero_ps();
        if (m[T]) {
#define FLAT_ROW_AVX2(acc, kh)                                                                 \
    for (int kw = 0; kw < KW; kw++)                                                            \
        acc = _mm256_fmadd_ps(_mm256_set1_ps(w[(kh) * KW + kw]),                               \
                              _mm256_loadu_ps(x + p0 + f->off[kh] + kw * dw), acc)
            EVEN_ODD_ROWS(FLAT_ROW_AVX2);
#undef FLAT_ROW_AVX2
            _mm256_storeu_ps(y + p0, act8(_mm256_add_ps(a0, a1), ep));
            continue;
        }
        for (int kh = 0; kh < KH; kh++) {
            const float *xr = x + p0 + f->off[kh];
            for (int kw = 0; kw < KW; kw++) {
                const uint32_t bits = m[kh * KW + kw];
                if (!bits) continue;
                const __m256 t = _mm256_maskload_ps(xr + kw * dw, mask8(bits));
                if (kh & 1) a1 = _mm256_fmadd_ps(_mm256_set1_ps(w[kh * KW + kw]), t, a1);
                else a0 = _mm256_fmadd_ps(_mm256_set1_ps(w[kh * KW + kw]), t, a0);
            }
        }
        _mm256_maskstore_ps(y + p0, mask8(bit_range(0, c)), act8(_mm256_add_ps(a0, a1), ep));
    }
}

/* Kernels 3x3 and 5x5 unrolled (undilated rows too), others (up to
 * FLAT_MAX_TAPS taps) not; the
 * lane masks tabulated once for all planes when the table fits. */
#define FLAT_PLANES(body, V)                                                                  \
    do {                                                                                      \
        uint16_t table[FLAT_TABLE_MAX];                                                       \
        const uint16_t *t = flat_table(f, V, table) ? table : NULL;                           \
        const uint16_t *cols = !t && flat_column_table(f, V, table) ? table : NULL;           \
        for (int64_t i = 0; i < n_planes; i++) {                                              \
            const float *xi = x + i * x_stride, *wi = w + i * w_stride;                       \
            const float bi = bias ? bias[i] : 0.0f;                                           \
            float *yi = y + i * y_stride;                                                     \
            const int64_t kh = f->kh_n, kw = f->kw_n, dw = f->dw;                            \
            if (kh == 3 && kw == 3 && dw == 1) body(xi, wi, bi, f, t, cols, ep, yi, 3, 3, 1); \
            else if (kh == 3 && kw == 3) body(xi, wi, bi, f, t, cols, ep, yi, 3, 3, dw);      \
            else if (kh == 5 && kw == 5 && dw == 1)                                           \
                body(xi, wi, bi, f, t, cols, ep, yi, 5, 5, 1);                                \
            else if (kh == 5 && kw == 5) body(xi, wi, bi, f, t, cols, ep, yi, 5, 5, dw);      \
            else body(xi, wi, bi, f, t, cols, ep, yi, (int)kh, (int)kw, dw);                  \
        }                                                                                     \
    } while (0)

AVX2_TARGET static void flat_avx2(const float *x, int64_t x_stride, const float *w,
                                  int64_t w_stride, const float *bias, int64_t n_planes,
                                  const dw_flat *f, const mk_act_spec *ep, float *y,
                                  int64_t y_stride)
{
    FLAT_PLANES(flat_avx2_body, 8);
}

/* AVX-512: the same with 16 lanes and mask registers. */
AVX512_TARGET ALWAYS_INLINE __m512 even16(__m512 lo, __m512 hi)
{
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                           28, 30);
    return _mm512_permutex2var_ps(lo, even, hi);
}

AVX512_TARGET ALWAYS_INLINE __m512 load16_full(const float *p, const int S)
{
    if (S == 1) return _mm512_loadu_ps(p);
    return even16(_mm512_loadu_ps(p), _mm512_loadu_ps(p + 16));
}

AVX512_TARGET ALWAYS_INLINE __m512 load16_masked(const float *p, const int S, __mmask16 m_lo,
                                                 __mmask16 m_hi)
{
    if (S == 1) return _mm512_maskz_loadu_ps(m_lo, p);
    return even16(_mm512_maskz_loadu_ps(m_lo, p), _mm512_maskz_loadu_ps(m_hi, p + 16));
}

AVX512_TARGET ALWAYS_INLINE void row_avx512_body(float *const *ys, const dw_row *g,
                                             const float *const *const *xss,
                                             const float *const *ws, int n_rows, const int KW,
                                             const int S, const int NR, float bias,
                                             const mk_act_spec *ep)
{
    enum { V = 16 };
    const int64_t ow = g->ow, dw = g->dw, pw = g->pw, tw = g->tw;
    const __m512 vb = _mm512_set1_ps(bias);
    __mmask16 m_lo[MAX_KW], m_hi[MAX_KW];
    int64_t o = 0;
    while (o < ow) {
        if (o >= g->inner_lo && o + BLOCK_VECS * V + (S - 1) <= g->inner_hi) {
            for (int j = 0; j < NR; j++) {
                __m512 a0 = vb, a1 = vb, a2 = vb, a3 = vb;
                for (int r = 0; r < n_rows; r++) {
                    const float *x = xss[j][r] + o * S - pw;
                    for (int k = 0; k < KW; k++) {
                        const __m512 wk = _mm512_set1_ps(ws[r][k]);
                        const float *p = x + k * dw;
                        a0 = _mm512_fmadd_ps(wk, load16_full(p, S), a0);
                        a1 = _mm512_fmadd_ps(wk, load16_full(p + V * S, S), a1);
                        a2 = _mm512_fmadd_ps(wk, load16_full(p + 2 * V * S, S), a2);
                        a3 = _mm512_fmadd_ps(wk, load16_full(p + 3 * V * S, S), a3);
                    }
                }
                float *y = ys[j];
                _mm512_storeu_ps(y + o, act16(a0, ep));
                _mm512_storeu_ps(y + o + V, act16(a1, ep));
                _mm512_storeu_ps(y + o + 2 * V, act16(a2, ep));
                _mm512_storeu_ps(y + o + 3 * V, act16(a3, ep));
            }
            o += BLOCK_VECS * V;
            continue;
        }
        const int64_t c = ow - o < V ? ow - o : V;
        for (int k = 0; k < KW; k++) {
            const uint32_t bits = column_mask(o * S - pw + k * dw, c, S, tw);
            m_lo[k] = (__mmask16)(bits & 0xffff);
            m_hi[k] = (__mmask16)(bits >> 16);
        }
        __m512 a[2] = {vb, vb};
        for (int r = 0; r < n_rows; r++)
            for (int k = 0; k < KW; k++) {
                const __m512 wk = _mm512_set1_ps(ws[r][k]);
                for (int j = 0; j < NR; j++)
                    a[j] = _mm512_fmadd_ps(wk, load16_masked(xss[j][r] + o * S - pw + k * dw, S, m_lo[k], m_hi[k]),
                                 a[j]);
            }
        for (int j = 0; j < NR; j++)
            _mm512_mask_storeu_ps(ys[j] + o, (__mmask16)bit_range(0, c), act16(a[j], ep));
        o += c;
    }
}

AVX512_TARGET static void row_avx512(float *const *ys, const dw_row *g, const float *const *const *xss,
                                     const float *const *ws, int n_rows, int nr, float bias,
                                 const mk_act_spec *ep)
{
    ROW_DISPATCH(row_avx512_body);
}

/* The flat walk, sixteen outputs a vector.  The weights stay in registers
 * and each kernel row's offset in a register, so a tap is one load and one
 * FMA; vectors whose taps all land skip the masks. */
AVX512_TARGET ALWAYS_INLINE void flat_avx512_body(const float *x, const float *w, float bias,
                                                  const dw_flat *f, const uint16_t *table,
                                                  const uint16_t *columns,
                                                  const mk_act_spec *ep, float *y,
                                                  const int KH, const int KW, const int64_t DW)
{
    enum { V = 16 };
    const int T = KH * KW;
    const int64_t n = f->h * f->w;
    const __m512 vb = _mm512_set1_ps(bias);
    __m512 wv[FLAT_MAX_TAPS];
    int64_t off[MAX_KW];
    for (int t = 0; t < T; t++) wv[t] = _mm512_set1_ps(w[t]);
    for (int kh = 0; kh < KH; kh++) off[kh] = f->off[kh];
    uint16_t local[FLAT_MAX_TAPS + 1];
    flat_cursor cur = {0, 0};
    for (int64_t p0 = 0, v = 0; p0 < n; p0 += V, v++) {
        const int64_t c = n - p0 < V ? n - p0 : V;
        const uint16_t *m = table ? table + v * (T + 1)
                                  : flat_masks_at(f, columns, &cur, c, V, KH, KW, local);
        const float *xp = x + p0;
        __m512 a0 = vb, a1 = _mm512_setzero_ps();
        if (m[T]) {
#define FLAT_ROW(acc, kh)                                                                      \
    for (int kw = 0; kw < KW; kw++)                                                            \
        acc = _mm512_fmadd_ps(wv[(kh) * KW + kw], _mm512_loadu_ps(xp + off[kh] + kw * DW), acc)
            EVEN_ODD_ROWS(FLAT_ROW);
#undef FLAT_ROW
            _mm512_storeu_ps(y + p0, act16(_mm512_add_ps(a0, a1), ep));
            continue;
        }
#define FLAT_ROW(acc, kh)                                                                      \
    for (int kw = 0; kw < KW; kw++)                                                            \
        acc = _mm512_fmadd_ps(wv[(kh) * KW + kw],                                              \
                              _mm512_maskz_loadu_ps((__mmask16)m[(kh) * KW + kw],              \
                                                    xp + off[kh] + kw * DW),                   \
                              acc)
        EVEN_ODD_ROWS(FLAT_ROW);
#undef FLAT_ROW
        _mm512_mask_storeu_ps(y + p0, (__mmask16)bit_range(0, c), act16(_mm512_add_ps(a0, a1), ep));
    }
}

/*
 * Undilated kernels on rows of 32 and more (AVX-512): the vectors of
 * BAND_ROWS output rows below each other go together, so each input row
 * vector loaded serves every output row it is a kernel row of (3x3: 18
 * loads for 36 FMAs instead of 36), on the rows where every kernel row
 * lands; other rows go one at a time.  Vectors stay inside a row here, so
 * the column masks of a row's vectors are tabulated once per call.
 */

static bool band_table(const dw_flat *f, uint16_t *table)
{
    enum { V = 16 };
    const int64_t kw_n = f->kw_n, n_vec = (f->w + V - 1) / V;
    if (n_vec * (kw_n + 1) > BAND_TABLE_MAX) return false;
    uint32_t rows[MAX_KW], cols[MAX_KW];
    for (int64_t j = 0; j < n_vec; j++, table += kw_n + 1) {
        const int64_t o = j * V, c = f->w - o < V ? f->w - o : V;
        flat_masks(f, f->full_lo, o, c, (int)f->kh_n, (int)kw_n, rows, cols);
        bool plain = c == V;
        for (int64_t k = 0; k < kw_n; k++) {
            table[k] = (uint16_t)cols[k];
            plain = plain && cols[k] == 0xffff;
        }
        table[kw_n] = plain;
    }
    return true;
}

AVX512_TARGET ALWAYS_INLINE void band_avx512_body(const float *x, const float *w, float bias,
                                                  const dw_flat *f, const uint16_t *table,
                                                  const mk_act_spec *ep, float *y, const int KH,
                                                  const int KW, const int D)
{
    enum { V = 16, R = BAND_ROWS };
    const int64_t W = f->w, n_vec = (W + V - 1) / V;
    const __m512 vb = _mm512_set1_ps(bias);
    __m512 wv[FLAT_MAX_TAPS];
    for (int t = 0; t < KH * KW; t++) wv[t] = _mm512_set1_ps(w[t]);
    for (int64_t oh = 0; oh < f->h;) {
        const bool band = oh >= f->full_lo && oh + R <= f->full_hi;
        for (int64_t j = 0; j < n_vec; j++) {
            const uint16_t *m = table + j * (KW + 1);
            const int64_t o = j * V, c = W - o < V ? W - o : V;
            const __mmask16 store = (__mmask16)bit_range(0, c);
            if (band) {
                /* Input row i of the band is kernel row (i - r) / D of output row r
                 * when D divides i - r. */
                const float *xb = x + oh * W + o + f->off[0];
                __m512 acc[R];
                for (int r = 0; r < R; r++) acc[r] = vb;
#define BAND_TAPS(LOAD)                                                                        \
    _Pragma("GCC unroll 16") for (int i = 0; i < R + (KH - 1) * D; i++)                        \
    _Pragma("GCC unroll 8") for (int kw = 0; kw < KW; kw++) {                                  \
        const float *p = xb + i * W + kw * D;                                                  \
        const __m512 t = LOAD;                                                                 \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                    \
            if (i - r >= 0 && (i - r) % D == 0 && (i - r) / D < KH)                            \
                acc[r] = _mm512_fmadd_ps(wv[(i - r) / D * KW + kw], t, acc[r]);                \
    }
                if (m[KW]) {
                    BAND_TAPS(_mm512_loadu_ps(p))
                } else {
                    BAND_TAPS(_mm512_maskz_loadu_ps((__mmask16)m[kw], p))
                }
#undef BAND_TAPS
                for (int r = 0; r < R; r++)
                    _mm512_mask_storeu_ps(y + (oh + r) * W + o, store, act16(acc[r], ep));
            } else {
                __m512 a0 = vb;
                for (int kh = 0; kh < KH; kh++) {
                    if (oh < f->row_lo[kh] || oh >= f->row_hi[kh]) continue;
                    const float *p = x + oh * W + o + f->off[kh];
                    for (int kw = 0; kw < KW; kw++)
                        a0 = _mm512_fmadd_ps(wv[kh * KW + kw],
                                             _mm512_maskz_loadu_ps((__mmask16)m[kw], p + kw * D),
                                             a0);
                }
                _mm512_mask_storeu_ps(y + oh * W + o, store, act16(a0, ep));
            }
        }
        oh += band ? R : 1;
    }
}

AVX512_TARGET static void flat_avx512(const float *x, int64_t x_stride, const float *w,
                                      int64_t w_stride, const float *bias, int64_t n_planes,
                                      const dw_flat *f, const mk_act_spec *ep, float *y,
                                      int64_t y_stride)
{
    /* 3x3 undilated or dilated 2 (both ways), 5x5 undilated. */
    const int64_t kh = f->kh_n, d = f->dw;
    uint16_t band[BAND_TABLE_MAX];
    if (band_walks(f) && band_table(f, band)) {
        for (int64_t i = 0; i < n_planes; i++) {
            const float *xi = x + i * x_stride, *wi = w + i * w_stride;
            const float bi = bias ? bias[i] : 0.0f;
            float *yi = y + i * y_stride;
            if (kh == 5) band_avx512_body(xi, wi, bi, f, band, ep, yi, 5, 5, 1);
            else if (d == 1) band_avx512_body(xi, wi, bi, f, band, ep, yi, 3, 3, 1);
            else band_avx512_body(xi, wi, bi, f, band, ep, yi, 3, 3, 2);
        }
        return;
    }
    FLAT_PLANES(flat_avx512_body, 16);
}
#undef FLAT_PLANES

/*
 * The strided walk, sixteen outputs of a row a vector: each tap loads the
 * 32 input columns under it and keeps the even ones.  The lane masks of a
 * vector's taps are the same on every row of every plane, so they are
 * tabulated once per call (with whether the vector needs none), and each
 * output row finds its live kernel rows without a division.
 */

AVX512_TARGET ALWAYS_INLINE void strided_avx512_body(const float *x, const float *w, float bias,
                                                     const dw_strided *sg,
                                                     const uint32_t *table,
                                                     const mk_act_spec *ep, float *y,
                                                     const int KH, const int KW,
                                                     const int64_t DW)
{
    enum { V = 16 };
    const int64_t ow = sg->ow, pw = sg->pw, n_vec = (ow + V - 1) / V;
    const __m512 vb = _mm512_set1_ps(bias);
    __m512 wv[FLAT_MAX_TAPS];
    for (int t = 0; t < KH * KW; t++) wv[t] = _mm512_set1_ps(w[t]);
    for (int64_t oh = 0; oh < sg->h; oh++, y += ow) {
        int kh0 = 0, kh1 = 0; /* live kernel rows [kh0, kh1) */
        for (int k = 0; k < KH; k++)
            if (oh >= sg->row_lo[k] && oh < sg->row_hi[k]) {
                if (kh1 == 0) kh0 = k;
                kh1 = k + 1;
            }
        const float *xr = x + (oh * sg->sh) * sg->tw;
        /* Rows where every kernel row lands (most) have constant loops. */
        const bool all_rows = kh0 == 0 && kh1 == KH;
        for (int64_t v = 0; v < n_vec; v++) {
            const uint32_t *m = table + v * (KW + 1);
            const int64_t o = v * V, c = ow - o < V ? ow - o : V;
            const float *xo = xr + o * 2 - pw;
            __m512 a0 = vb, a1 = _mm512_setzero_ps();
#define STRIDED_TAPS(LOAD)                                                                     \
    do {                                                                                       \
        if (all_rows) {                                                                        \
            for (int kh = 0; kh < KH; kh++) {                                                  \
                const float *p = xo + sg->row_off[kh] * sg->tw;                                \
                for (int kw = 0; kw < KW; kw++) {                                              \
                    const __m512 t = LOAD;                                                     \
                    if (kh & 1) a1 = _mm512_fmadd_ps(wv[kh * KW + kw], t, a1);                 \
                    else a0 = _mm512_fmadd_ps(wv[kh * KW + kw], t, a0);                        \
                }                                                                              \
            }                                                                                  \
        } else {                                                                               \
            for (int kh = kh0; kh < kh1; kh++) {                                               \
                const float *p = xo + sg->row_off[kh] * sg->tw;                                \
                for (int kw = 0; kw < KW; kw++) a0 = _mm512_fmadd_ps(wv[kh * KW + kw], LOAD, a0); \
            }                                                                                  \
        }                                                                                      \
    } while (0)
            if (m[KW])
                STRIDED_TAPS(even16(_mm512_loadu_ps(p + kw * DW), _mm512_loadu_ps(p + kw * DW + V)));
            else
                STRIDED_TAPS(load16_masked(p + kw * DW, 2, (__mmask16)(m[kw] & 0xffff),
                                           (__mmask16)(m[kw] >> 16)));
#undef STRIDED_TAPS
            _mm512_mask_storeu_ps(y + o, (__mmask16)bit_range(0, c), act16(_mm512_add_ps(a0, a1), ep));
        }
    }
}

/*
 * The strided walk for kernels of more than SPLIT_MIN_TAPS taps, where a
 * permute per tap and vector above is the bound (one port): each input row
 * the output rows need is split once into its even and its odd columns
 * (zero where the row's padding is), kept in a ring of the last few rows;
 * output o's tap kw then reads column o + kw * dw / 2 of one half, a plain
 * load, and every output row the input row serves reuses the split.  A 5x5
 * over 72 planes of 128x128 took 0.72 ms above, 0.43 ms so; a 3x3 over 96
 * planes of 112x112 0.25 above and 0.30 so (memory-bound either way, and
 * the split is one more pass).
 */
enum { STRIDED_TABLE_MAX = 2048, SPLIT_V = 16, SPLIT_GROUP = 4, SPLIT_MIN_TAPS = 9 };

typedef struct split_ring {
    int64_t half;  /* floats per half row, whole vectors, past every tap's reach */
    int64_t slots; /* rows kept, a power of two */
    float *rows;   /* [slots][even half, odd half] */
    int64_t *held; /* the input row in each slot, -1: none */
} split_ring;

/* even[j] = row[2j - pw], odd[j] = row[2j + 1 - pw], zero outside [0, tw). */
AVX512_TARGET static void split_row(const float *row, int64_t tw, int64_t pw, int64_t half,
                                    float *even, float *odd)
{
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (int64_t j = 0; j < half; j += SPLIT_V) {
        const int64_t c = 2 * j - pw;
        __m512 lo, hi;
        if (c >= 0 && c + 2 * SPLIT_V <= tw) {
            lo = _mm512_loadu_ps(row + c);
            hi = _mm512_loadu_ps(row + c + SPLIT_V);
        } else { /* the row's ends: masked loads, zeros past them */
            lo = _mm512_maskz_loadu_ps((__mmask16)column_mask(c, SPLIT_V, 1, tw), row + c);
            hi = _mm512_maskz_loadu_ps((__mmask16)column_mask(c + SPLIT_V, SPLIT_V, 1, tw),
                                       row + c + SPLIT_V);
        }
        _mm512_storeu_ps(even + j, _mm512_permutex2var_ps(lo, ev, hi));
        _mm512_storeu_ps(odd + j, _mm512_permutex2var_ps(lo, od, hi));
    }
}

/* Input row ih split, from the ring or now. */
AVX512_TARGET static const float *split_of(split_ring *ring, const float *x, const dw_strided *sg,
                                           int64_t ih)
{
    const int64_t slot = ih & (ring->slots - 1);
    float *even = ring->rows + slot * 2 * ring->half;
    if (ring->held[slot] != ih) {
        split_row(x + ih * sg->tw, sg->tw, sg->pw, ring->half, even, even + ring->half);
        ring->held[slot] = ih;
    }
    return even;
}

AVX512_TARGET ALWAYS_INLINE void split_avx512_body(const float *x, const float *w, float bias,
                                                   const dw_strided *sg, split_ring *ring,
                                                   const mk_act_spec *ep, float *y, const int KH,
                                                   const int KW, const int64_t DW)
{
    enum { V = SPLIT_V, G = SPLIT_GROUP };
    const int64_t ow = sg->ow, n_vec = (ow + V - 1) / V, half = ring->half;
    for (int64_t s = 0; s < ring->slots; s++) ring->held[s] = -1;
    const __m512 vb = _mm512_set1_ps(bias);
    for (int64_t oh = 0; oh < sg->h; oh++, y += ow) {
        const float *src[MAX_KW];
        const float *wk[MAX_KW];
        int live = 0;
        for (int kh = 0; kh < KH; kh++)
            if (oh >= sg->row_lo[kh] && oh < sg->row_hi[kh]) {
                src[live] = split_of(ring, x, sg, oh * sg->sh + sg->row_off[kh]);
                wk[live++] = w + kh * KW;
            }
        /* G vectors at a time: independent FMA chains. */
        int64_t v = 0;
        for (; v + G <= n_vec; v += G) {
            __m512 a[G];
            for (int j = 0; j < G; j++) a[j] = vb;
            for (int r = 0; r < live; r++)
                for (int kw = 0; kw < KW; kw++) {
                    const float *p = src[r] + ((kw * DW) & 1) * half + ((kw * DW) >> 1) + v * V;
                    const __m512 t = _mm512_set1_ps(wk[r][kw]);
                    for (int j = 0; j < G; j++)
                        a[j] = _mm512_fmadd_ps(t, _mm512_loadu_ps(p + j * V), a[j]);
                }
            for (int j = 0; j < G; j++) {
                const int64_t o = (v + j) * V;
                const __mmask16 m = (__mmask16)bit_range(0, ow - o < V ? ow - o : V);
                _mm512_mask_storeu_ps(y + o, m, act16(a[j], ep));
            }
        }
        for (; v < n_vec; v++) {
            __m512 a0 = vb, a1 = _mm512_setzero_ps();
            for (int r = 0; r < live; r++)
                for (int kw = 0; kw < KW; kw++) {
                    const float *p = src[r] + ((kw * DW) & 1) * half + ((kw * DW) >> 1) + v * V;
                    if (kw & 1) a1 = _mm512_fmadd_ps(_mm512_set1_ps(wk[r][kw]), _mm512_loadu_ps(p), a1);
                    else a0 = _mm512_fmadd_ps(_mm512_set1_ps(wk[r][kw]), _mm512_loadu_ps(p), a0);
                }
            const int64_t o = v * V;
            const __mmask16 m = (__mmask16)bit_range(0, ow - o < V ? ow - o : V);
            _mm512_mask_storeu_ps(y + o, m, act16(_mm512_add_ps(a0, a1), ep));
        }
    }
}

/* The column masks of every vector of a row and tap, and whether all 32
 * columns under each tap exist (then plain loads serve); false when the
 * table would not fit. */
static bool strided_table(const dw_strided *sg, uint32_t *table)
{
    enum { V = 16 };
    const int64_t n_vec = (sg->ow + V - 1) / V, kw_n = sg->kw_n;
    if (n_vec * (kw_n + 1) > STRIDED_TABLE_MAX) return false;
    for (int64_t v = 0; v < n_vec; v++, table += kw_n + 1) {
        const int64_t o = v * V, c = sg->ow - o < V ? sg->ow - o : V;
        bool plain = c == V;
        for (int64_t k = 0; k < kw_n; k++) {
            const int64_t t0 = o * 2 - sg->pw + k * sg->dw;
            table[k] = column_mask(t0, c, 2, sg->tw);
            plain = plain && t0 >= 0 && t0 + 2 * V <= sg->tw;
        }
        table[kw_n] = plain;
    }
    return true;
}

AVX512_TARGET static bool strided_table_avx512(const float *x, int64_t x_stride, const float *w,
                                               int64_t w_stride, const float *bias,
                                               int64_t n_planes, const dw_strided *sg,
                                               const mk_act_spec *ep, float *y, int64_t y_stride)
{
    uint32_t table[STRIDED_TABLE_MAX];
    if (!strided_table(sg, table)) return false;
    for (int64_t i = 0; i < n_planes; i++) {
        const float *xi = x + i * x_stride, *wi = w + i * w_stride;
        const float bi = bias ? bias[i] : 0.0f;
        float *yi = y + i * y_stride;
        const int64_t kh = sg->kh_n, kw = sg->kw_n, dw = sg->dw;
        if (kh == 3 && kw == 3 && dw == 1) strided_avx512_body(xi, wi, bi, sg, table, ep, yi, 3, 3, 1);
        else strided_avx512_body(xi, wi, bi, sg, table, ep, yi, (int)kh, (int)kw, dw);
    }
    return true;
}

AVX512_TARGET static bool strided_avx512(const float *x, int64_t x_stride, const float *w,
                                         int64_t w_stride, const float *bias, int64_t n_planes,
                                         const dw_strided *sg, const mk_act_spec *ep, float *y,
                                         int64_t y_stride)
{
    const int64_t kh = sg->kh_n, kw = sg->kw_n, dw = sg->dw;
    if (kh * kw <= SPLIT_MIN_TAPS)
        return strided_table_avx512(x, x_stride, w, w_stride, bias, n_planes, sg, ep, y, y_stride);
    const int64_t dh = kh > 1 ? sg->row_off[1] - sg->row_off[0] : 0;
    /* Every tap of the last vector inside the half row; rows enough that one
     * output row's rows and the next one's stay in the ring together (a
     * power of two: a row's slot is a mask, not a division). */
    split_ring ring = {.half = ((sg->ow + SPLIT_V - 1) / SPLIT_V * SPLIT_V + (kw - 1) * dw / 2 +
                                SPLIT_V) / SPLIT_V * SPLIT_V,
                       .slots = 1};
    while (ring.slots < (kh - 1) * dh + 1 + sg->sh) ring.slots *= 2;
    ring.rows = mk_aligned_alloc((size_t)(ring.slots * 2 * ring.half) * sizeof(float));
    ring.held = malloc((size_t)ring.slots * sizeof *ring.held);
    if (!ring.rows || !ring.held) {
        mk_aligned_free(ring.rows);
        free(ring.held);
        return false; /* the row kernels serve */
    }
    for (int64_t i = 0; i < n_planes; i++) {
        const float *xi = x + i * x_stride, *wi = w + i * w_stride;
        const float bi = bias ? bias[i] : 0.0f;
        float *yi = y + i * y_stride;
        if (kh == 5 && kw == 5 && dw == 1) split_avx512_body(xi, wi, bi, sg, &ring, ep, yi, 5, 5, 1);
        else split_avx512_body(xi, wi, bi, sg, &ring, ep, yi, (int)kh, (int)kw, dw);
    }
    mk_aligned_free(ring.rows);
    free(ring.held);
    return true;
}
#undef ROW_DISPATCH
#undef ROW_BODY_NR

/*
 * Few input channels, stride 2 (a network's stem: 3 -> 16 or 32, 3x3): the
 * strided walk with every output channel of a block at once.  Each tap's
 * input vector (two loads and a permute) feeds STEM_BLOCK FMAs, one per
 * output channel, where im2col + sgemm had a K of 27 to amortise its
 * packing over.  Weights are reordered [c][tap][m] so a tap's channel
 * weights are consecutive broadcasts.
 */
enum { STEM_BLOCK = 16 };

AVX512_TARGET ALWAYS_INLINE void stem_avx512_body(const float *x, int64_t s_in, const int CIN,
                                                  const float *wt, const float *bias, int64_t mb,
                                                  const dw_strided *sg, const uint32_t *table,
                                                  const mk_act_spec *ep, float *y, int64_t s_out,
                                                  int64_t oh0, int64_t oh1, const int KH,
                                                  const int KW)
{
    enum { V = 16, M = STEM_BLOCK };
    const int64_t ow = sg->ow, n_vec = (ow + V - 1) / V, tw = sg->tw, dw = sg->dw;
    const int taps = KH * KW;
    __m512 vbias[M];
    for (int j = 0; j < M; j++) vbias[j] = _mm512_set1_ps(j < mb && bias ? bias[j] : 0.0f);
    for (int64_t oh = oh0; oh < oh1; oh++) {
        bool live[MAX_KW];
        for (int kh = 0; kh < KH; kh++) live[kh] = oh >= sg->row_lo[kh] && oh < sg->row_hi[kh];
        for (int64_t v = 0; v < n_vec; v++) {
            const uint32_t *m = table + v * (KW + 1);
            const int64_t o = v * V, c = ow - o < V ? ow - o : V;
            __m512 acc[M];
            _Pragma("GCC unroll 16") for (int j = 0; j < M; j++) acc[j] = vbias[j];
            const bool plain = m[KW];
            for (int ci = 0; ci < CIN; ci++) {
                const float *xr = x + ci * s_in + (oh * sg->sh) * tw + o * 2 - sg->pw;
                for (int kh = 0; kh < KH; kh++) {
                    if (!live[kh]) continue;
                    const float *p = xr + sg->row_off[kh] * tw;
                    for (int kw = 0; kw < KW; kw++) {
                        const float *q = p + kw * dw;
                        const __m512 t = plain ? even16(_mm512_loadu_ps(q), _mm512_loadu_ps(q + V))
                                               : load16_masked(q, 2, (__mmask16)(m[kw] & 0xffff),
                                                               (__mmask16)(m[kw] >> 16));
                        const float *wk = wt + (ci * taps + kh * KW + kw) * M;
                        _Pragma("GCC unroll 16") for (int j = 0; j < M; j++)
                            acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(wk[j]), t, acc[j]);
                    }
                }
            }
            const __mmask16 store = (__mmask16)bit_range(0, c);
            _Pragma("GCC unroll 16") for (int j = 0; j < M; j++)
                if (j < mb) _mm512_mask_storeu_ps(y + j * s_out + oh * ow + o, store, act16(acc[j], ep));
        }
    }
}

AVX512_TARGET static void stem_avx512_rows(const float *x, int64_t s_in, int64_t cin,
                                           const float *wt, const float *bias, int64_t mb,
                                           const dw_strided *sg, const uint32_t *table,
                                           const mk_act_spec *ep, float *y, int64_t s_out,
                                           int64_t oh0, int64_t oh1)
{
    if (cin == 3 && sg->kh_n == 3 && sg->kw_n == 3)
        stem_avx512_body(x, s_in, 3, wt, bias, mb, sg, table, ep, y, s_out, oh0, oh1, 3, 3);
    else
        stem_avx512_body(x, s_in, (int)cin, wt, bias, mb, sg, table, ep, y, s_out, oh0, oh1,
                         (int)sg->kh_n, (int)sg->kw_n);
}
#endif

/*
 * Small maps (AVX-512): sixteen planes at a time, interleaved by channel.
 * A 14x14 or 7x7 plane leaves most lanes of the walks above idle or masked
 * (a 14-wide row never fills a vector in place), and their per-vector masks
 * and loop set-up cost more than the few FMAs a plane has.  Here the group's
 * planes are transposed, sixteen positions at a time, into a zero-bordered
 * map whose every position is one vector of sixteen channels; each tap of
 * each output is then one full-vector load and FMA with no mask at any
 * stride, and the outputs are transposed back into their planes.  The
 * transposes (64 shuffles per 256 values, each way) cost less than the
 * lanes and masks they save while the bordered map stays small enough for
 * L2 (stride 2, 576 planes 14 -> 7: 0.041 -> 0.015 ms, 144 planes 56 -> 28:
 * 0.079 -> 0.063; 112 -> 56, 0.17 -> 0.20, slower; 960 planes 32x32, 5x5
 * dilated 2: 0.98 -> 0.63; 192 planes 48x48, 3x3 dilated 5: 0.17 -> 0.14)
 * and, where the band walk takes the plane, while rows are too short for
 * its reuse (576 planes 14x14: 0.060 -> 0.035, 20x20 0.081 -> 0.062; 28x28
 * 0.043 -> 0.046 and 48x48 0.11 -> 0.14, slower).  Taps
 * in the padding are computed, not skipped, so atrous kernels whose reach
 * exceeds the map keep the other walks (and an Inf or NaN weight makes NaN
 * of a padding tap here, 0 x Inf, where the other walks skip the tap).
 */
enum { BLOCKED_MAX_POSITIONS = 4096, BLOCKED_BAND_POSITIONS = 576 };

typedef struct dw_blocked {
    int64_t sh, sw;   /* strides, in positions of the bordered map */
    int64_t hp, wp;   /* the bordered map: rows, columns */
    int64_t oh, ow;   /* the output */
    int64_t ih, iw, ph, pw; /* the input plane and where it sits in the bordered map */
    int64_t in_n;     /* input positions (rows x columns) */
    int64_t taps;
    int64_t tap[FLAT_MAX_TAPS]; /* tap t's offset from an output's first position */
} dw_blocked;

static bool blocked_geometry(const mk_conv_geom *g, bool band_walks, dw_blocked *bg)
{
    int64_t row_lo[MAX_KW], row_hi[MAX_KW];
    if (!plane_walkable(g, row_lo, row_hi)) return false;
    const int64_t reach_h = (g->kernel[1] - 1) * g->dilation[1];
    const int64_t reach_w = (g->kernel[2] - 1) * g->dilation[2];
    if (reach_h > g->touch[1] || reach_w > g->touch[2]) return false;
    bg->sh = g->stride[1];
    bg->sw = g->stride[2];
    bg->oh = g->iter[1];
    bg->ow = g->iter[2];
    bg->hp = (bg->oh - 1) * bg->sh + reach_h + 1;
    bg->wp = (bg->ow - 1) * bg->sw + reach_w + 1;
    bg->ih = g->touch[1];
    bg->iw = g->touch[2];
    bg->ph = g->pad[1];
    bg->pw = g->pad[2];
    bg->in_n = bg->ih * bg->iw;
    /* Up to BLOCKED_MAX_POSITIONS where that was measured to pay: strided,
     * or dilated kernels the band walk does not take. */
    const bool wide = !band_walks && (bg->sh * bg->sw > 1 || g->dilation[1] > 1 || g->dilation[2] > 1);
    const int64_t limit = wide ? BLOCKED_MAX_POSITIONS : BLOCKED_BAND_POSITIONS;
    if (bg->hp * bg->wp > limit || bg->in_n > 4 * limit) return false;
    bg->taps = g->kernel[1] * g->kernel[2];
    for (int64_t kh = 0; kh < g->kernel[1]; kh++)
        for (int64_t kw = 0; kw < g->kernel[2]; kw++)
            bg->tap[kh * g->kernel[2] + kw] = kh * g->dilation[1] * bg->wp + kw * g->dilation[2];
    return true;
}

#ifdef MK_DW_X86
/* r[i] lane j -> r[j] lane i: unpacks of floats, then of float pairs, give
 * each 128-bit lane four rows of one column; two lane shuffles gather a
 * column's four lanes. */
AVX512_TARGET ALWAYS_INLINE void transpose16(__m512 r[16])
{
    __m512 a[16], b[16];
    for (int i = 0; i < 16; i += 2) {
        a[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        a[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        const __m512d a0 = _mm512_castps_pd(a[i]), a1 = _mm512_castps_pd(a[i + 1]);
        const __m512d a2 = _mm512_castps_pd(a[i + 2]), a3 = _mm512_castps_pd(a[i + 3]);
        b[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
        b[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
        b[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
        b[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
    }
    /* b[4g + c], lane L: column 4L + c of rows 4g .. 4g + 3. */
    for (int c = 0; c < 4; c++) {
        const __m512 e0 = _mm512_shuffle_f32x4(b[c], b[4 + c], 0x44);
        const __m512 e1 = _mm512_shuffle_f32x4(b[c], b[4 + c], 0xee);
        const __m512 f0 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0x44);
        const __m512 f1 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0xee);
        r[c] = _mm512_shuffle_f32x4(e0, f0, 0x88);
        r[4 + c] = _mm512_shuffle_f32x4(e0, f0, 0xdd);
        r[8 + c] = _mm512_shuffle_f32x4(e1, f1, 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(e1, f1, 0xdd);
    }
}

AVX512_TARGET ALWAYS_INLINE void blocked_group(const float *x, int64_t x_stride, int nc,
                                               const __m512 *wv, __m512 vb,
                                               const dw_blocked *bg, const int32_t *where,
                                               float *map, float *out, const mk_act_spec *ep,
                                               float *y, int64_t y_stride, const int T)
{
    enum { V = 16, U = 4 };
    __m512 r[16];
    /* In: sixteen positions of the group's planes at a time. */
    for (int64_t p0 = 0; p0 < bg->in_n; p0 += V) {
        const int64_t cnt = bg->in_n - p0 < V ? bg->in_n - p0 : V;
        const __mmask16 m = (__mmask16)bit_range(0, cnt);
        for (int j = 0; j < 16; j++)
            r[j] = j < nc ? _mm512_maskz_loadu_ps(m, x + j * x_stride + p0) : _mm512_setzero_ps();
        transpose16(r);
        for (int64_t k = 0; k < cnt; k++)
            if (where[p0 + k] >= 0) _mm512_store_ps(map + (int64_t)where[p0 + k] * V, r[k]);
    }
    /* The outputs, U along a row at a time. */
    int64_t tap[FLAT_MAX_TAPS];
    for (int t = 0; t < T; t++) tap[t] = bg->tap[t] * V;
    float *o = out;
    for (int64_t oh = 0; oh < bg->oh; oh++) {
        const float *row = map + oh * bg->sh * bg->wp * V;
        const int64_t step = bg->sw * V;
        int64_t ow = 0;
        for (; ow + U <= bg->ow; ow += U, o += U * V) {
            const float *base = row + ow * step;
            __m512 acc[U];
            for (int u = 0; u < U; u++) acc[u] = vb;
            for (int t = 0; t < T; t++)
                for (int u = 0; u < U; u++)
                    acc[u] = _mm512_fmadd_ps(wv[t], _mm512_load_ps(base + u * step + tap[t]), acc[u]);
            for (int u = 0; u < U; u++) _mm512_store_ps(o + u * V, act16(acc[u], ep));
        }
        for (; ow < bg->ow; ow++, o += V) {
            const float *base = row + ow * step;
            __m512 acc = vb;
            for (int t = 0; t < T; t++) acc = _mm512_fmadd_ps(wv[t], _mm512_load_ps(base + tap[t]), acc);
            _mm512_store_ps(o, act16(acc, ep));
        }
    }
    /* Out: sixteen positions back into the planes at a time. */
    const int64_t out_n = bg->oh * bg->ow;
    for (int64_t p0 = 0; p0 < out_n; p0 += V) {
        const int64_t cnt = out_n - p0 < V ? out_n - p0 : V;
        for (int k = 0; k < 16; k++)
            r[k] = k < cnt ? _mm512_load_ps(out + (p0 + k) * V) : _mm512_setzero_ps();
        transpose16(r);
        const __mmask16 m = (__mmask16)bit_range(0, cnt);
        for (int j = 0; j < nc; j++) _mm512_mask_storeu_ps(y + j * y_stride + p0, m, r[j]);
    }
}

AVX512_TARGET static bool blocked_avx512(const float *x, int64_t x_stride, const float *w,
                                         int64_t w_stride, const float *bias, int64_t n_planes,
                                         const dw_blocked *bg, const mk_act_spec *ep, float *y,
                                         int64_t y_stride)
{
    enum { V = 16 };
    const int64_t map_floats = bg->hp * bg->wp * V, out_floats = bg->oh * bg->ow * V;
    float *map = mk_aligned_alloc((size_t)(map_floats + out_floats) * sizeof(float));
    int32_t *where = malloc((size_t)bg->in_n * sizeof *where);
    if (!map || !where) {
        mk_aligned_free(map);
        free(where);
        return false; /* the other walks serve */
    }
    memset(map, 0, (size_t)map_floats * sizeof(float)); /* the border, never written again */
    for (int64_t r = 0; r < bg->ih; r++)
        for (int64_t c = 0; c < bg->iw; c++) {
            const int64_t mr = r + bg->ph, mc = c + bg->pw;
            where[r * bg->iw + c] = mr < bg->hp && mc < bg->wp ? (int32_t)(mr * bg->wp + mc) : -1;
        }
    const int T = (int)bg->taps;
    for (int64_t i = 0; i < n_planes; i += V) {
        const int nc = n_planes - i < V ? (int)(n_planes - i) : V;
        __m512 wv[FLAT_MAX_TAPS];
        float lane[V];
        for (int t = 0; t < T; t++) {
            for (int j = 0; j < V; j++) lane[j] = j < nc ? w[(i + j) * w_stride + t] : 0.0f;
            wv[t] = _mm512_loadu_ps(lane);
        }
        for (int j = 0; j < V; j++) lane[j] = j < nc && bias ? bias[i + j] : 0.0f;
        const __m512 vb = _mm512_loadu_ps(lane);
        const float *xi = x + i * x_stride;
        float *yi = y + i * y_stride;
        if (T == 9)
            blocked_group(xi, x_stride, nc, wv, vb, bg, where, map, map + map_floats, ep, yi,
                          y_stride, 9);
        else
            blocked_group(xi, x_stride, nc, wv, vb, bg, where, map, map + map_floats, ep, yi,
                          y_stride, T);
    }
    mk_aligned_free(map);
    free(where);
    return true;
}
#endif

typedef void (*flat_fn)(const float *x, int64_t x_stride, const float *w, int64_t w_stride,
                        const float *bias, int64_t n_planes, const dw_flat *f,
                        const mk_act_spec *ep, float *y, int64_t y_stride);

static row_fn row_kernel = row_portable;
static flat_fn flat_kernel = NULL; /* none portable: the row walk serves */
/* Returns false when it cannot take the geometry (the row walk then does). */
typedef bool (*strided_fn)(const float *x, int64_t x_stride, const float *w, int64_t w_stride,
                           const float *bias, int64_t n_planes, const dw_strided *sg,
                           const mk_act_spec *ep, float *y, int64_t y_stride);
static strided_fn strided_kernel = NULL; /* AVX-512 only */
typedef bool (*blocked_fn)(const float *x, int64_t x_stride, const float *w, int64_t w_stride,
                          const float *bias, int64_t n_planes, const dw_blocked *bg,
                          const mk_act_spec *ep, float *y, int64_t y_stride);
static blocked_fn blocked_kernel = NULL; /* AVX-512 only */
static pthread_once_t row_once = PTHREAD_ONCE_INIT;

static void pick_row_kernel(void)
{
#ifdef MK_DW_X86
    switch (mk_cpu_level()) {
    case MK_ISA_AVX512:
        row_kernel = row_avx512;
        flat_kernel = flat_avx512;
        strided_kernel = strided_avx512;
        blocked_kernel = blocked_avx512;
        break;
    case MK_ISA_AVX2:
        row_kernel = row_avx2;
        flat_kernel = flat_avx2;
        break;
    default: row_kernel = row_portable; break;
    }
#endif
}

/* The kernel rows (kd, kh) that land inside the input for output row
 * (od, oh): their input rows and weight rows; returns their count. */
static int live_rows(const float *x, const float *w, const mk_conv_geom *g, int64_t od,
                     int64_t oh, const float **rows_x, const float **rows_w)
{
    int n_rows = 0;
    for (int64_t kd = 0; kd < g->kernel[0]; kd++) {
        const int64_t td = od * g->stride[0] - g->pad[0] + kd * g->dilation[0];
        if (td < 0 || td >= g->touch[0]) continue;
        for (int64_t kh = 0; kh < g->kernel[1]; kh++) {
            const int64_t th = oh * g->stride[1] - g->pad[1] + kh * g->dilation[1];
            if (th < 0 || th >= g->touch[1]) continue;
            rows_x[n_rows] = x + (td * g->touch[1] + th) * g->touch[2];
            rows_w[n_rows] = w + (kd * g->kernel[1] + kh) * g->kernel[2];
            n_rows++;
        }
    }
    return n_rows;
}

/* One plane by the row walk, row's horizontal geometry worked out. */
static void plane_rows(const float *x, const float *w, float bias, const mk_conv_geom *g,
                       const dw_row *row, const mk_act_spec *ep, float *y)
{
    const int64_t ow_n = g->iter[2];
    const row_fn kernel = row_kernel;
    const float *rows_x[2][MAX_ROWS];
    const float *rows_w[2][MAX_ROWS];
    for (int64_t od = 0; od < g->iter[0]; od++)
        for (int64_t oh = 0; oh < g->iter[1];) {
            float *ys[2] = {y + (od * g->iter[1] + oh) * ow_n, NULL};
            const int n_rows = live_rows(x, w, g, od, oh, rows_x[0], rows_w[0]);
            /* Pair with the next output row when it uses the same kernel rows. */
            int nr = 1;
            if (oh + 1 < g->iter[1] &&
                live_rows(x, w, g, od, oh + 1, rows_x[1], rows_w[1]) == n_rows) {
                nr = 2;
                for (int r = 0; r < n_rows; r++)
                    if (rows_w[1][r] != rows_w[0][r]) nr = 1;
                ys[1] = ys[0] + ow_n;
            }
            if (n_rows == 0) {
                const float v = mk_act_scalar(bias, ep);
                for (int64_t o = 0; o < nr * ow_n; o++) ys[0][o] = v;
            } else {
                const float *const *xss[2] = {rows_x[0], rows_x[1]};
                kernel(ys, row, xss, rows_w[0], n_rows, nr, bias, ep);
            }
            oh += nr;
        }
}

/* Whether the blocked walk takes g (planes then go in groups of sixteen),
 * flat_ok saying whether the flat walk's geometry `flat` was worked out. */
static bool blocked_takes(const mk_conv_geom *g, bool flat_ok, const dw_flat *flat,
                          dw_blocked *bg)
{
    return blocked_kernel && blocked_geometry(g, flat_ok && band_walks(flat), bg);
}

int64_t mk_depthwise_run(const mk_conv_geom *g)
{
    if (g->kernel[2] > MAX_KW || g->kernel[0] * g->kernel[1] > MAX_ROWS) return 1;
    pthread_once(&row_once, pick_row_kernel);
    dw_flat flat;
    dw_blocked bg;
    const bool flat_ok = flat_kernel && flat_geometry(g, &flat);
    return blocked_takes(g, flat_ok, &flat, &bg) ? 16 : 1;
}

void mk_depthwise_planes(const float *x, int64_t x_stride, const float *w, int64_t w_stride,
                         const float *bias, int64_t n_planes, const mk_conv_geom *g,
                         const mk_act_spec *ep, float *y, int64_t y_stride)
{
    const int64_t ow_n = g->iter[2], kw_n = g->kernel[2], tw = g->touch[2];
    if (kw_n > MAX_KW || g->kernel[0] * g->kernel[1] > MAX_ROWS) {
        for (int64_t i = 0; i < n_planes; i++)
            plane_generic(x + i * x_stride, w + i * w_stride, bias ? bias[i] : 0.0f, g, ep,
                          y + i * y_stride);
        return;
    }
    pthread_once(&row_once, pick_row_kernel);
    /* The geometry once for all planes: it costs divisions, a small plane
     * only a few hundred FMAs.  Whole groups of sixteen planes go
     * interleaved when the map is small; the rest (a thread's share need not
     * be whole groups) walk a plane at a time, as a group of a few planes
     * would leave most lanes idle. */
    dw_flat flat;
    const bool flat_ok = flat_kernel && flat_geometry(g, &flat);
    dw_blocked blocked;
    const int64_t grouped = n_planes / 16 * 16;
    if (grouped > 0 && blocked_takes(g, flat_ok, &flat, &blocked) &&
        blocked_kernel(x, x_stride, w, w_stride, bias, grouped, &blocked, ep, y, y_stride)) {
        if (grouped == n_planes) return;
        x += grouped * x_stride;
        w += grouped * w_stride;
        if (bias) bias += grouped;
        y += grouped * y_stride;
        n_planes -= grouped;
    }
    if (flat_ok) {
        flat_kernel(x, x_stride, w, w_stride, bias, n_planes, &flat, ep, y, y_stride);
        return;
    }
    dw_strided strided;
    if (strided_kernel && strided_geometry(g, &strided) &&
        strided_kernel(x, x_stride, w, w_stride, bias, n_planes, &strided, ep, y, y_stride))
        return;
    dw_row row = {.ow = ow_n, .kw = kw_n, .sw = g->stride[2], .dw = g->dilation[2],
                  .pw = g->pad[2], .tw = tw, .inner_lo = 0, .inner_hi = ow_n};
    /* The interior: where every horizontal tap lands. */
    for (int64_t kw = 0; kw < kw_n; kw++) {
        int64_t a, b;
        mk_conv_tap_span(g, 2, kw, &a, &b);
        if (a > row.inner_lo) row.inner_lo = a;
        if (b < row.inner_hi) row.inner_hi = b;
    }
    if (row.inner_hi < row.inner_lo) row.inner_hi = row.inner_lo;
    if (row.inner_lo > ow_n) row.inner_lo = row.inner_hi = ow_n;
    for (int64_t i = 0; i < n_planes; i++)
        plane_rows(x + i * x_stride, w + i * w_stride, bias ? bias[i] : 0.0f, g, &row, ep,
                   y + i * y_stride);
}

/* ---- few input channels (stem) --------------------------------------------- */

bool mk_stem_conv_takes(const mk_conv_geom *g, int64_t cin, int64_t cout)
{
    dw_strided sg;
    uint32_t table[STRIDED_TABLE_MAX];
    pthread_once(&row_once, pick_row_kernel);
    return strided_kernel != NULL && cin >= 1 && cin <= MK_STEM_MAX_CIN && cout >= 1 &&
           g->stride[1] == 2 && strided_geometry(g, &sg) && strided_table(&sg, table);
}

void mk_stem_conv_rows(const float *x, int64_t s_in, int64_t cin, const float *w,
                       const float *bias, int64_t cout, const mk_conv_geom *g,
                       const mk_act_spec *ep, float *y, int64_t s_out, int64_t oh0, int64_t oh1)
{
#ifdef MK_DW_X86
    dw_strided sg;
    uint32_t table[STRIDED_TABLE_MAX];
    if (!strided_geometry(g, &sg) || !strided_table(&sg, table)) return; /* see mk_stem_conv_takes */
    const int64_t taps = sg.kh_n * sg.kw_n;
    float wt[MK_STEM_MAX_CIN * FLAT_MAX_TAPS * STEM_BLOCK];
    for (int64_t m0 = 0; m0 < cout; m0 += STEM_BLOCK) {
        const int64_t mb = cout - m0 < STEM_BLOCK ? cout - m0 : STEM_BLOCK;
        for (int64_t ci = 0; ci < cin; ci++)
            for (int64_t t = 0; t < taps; t++)
                for (int64_t j = 0; j < STEM_BLOCK; j++)
                    wt[(ci * taps + t) * STEM_BLOCK + j] =
                        j < mb ? w[((m0 + j) * cin + ci) * taps + t] : 0.0f;
        stem_avx512_rows(x, s_in, cin, wt, bias ? bias + m0 : NULL, mb, &sg, table, ep,
                         y + m0 * s_out, s_out, oh0, oh1);
    }
#else
    (void)x, (void)s_in, (void)cin, (void)w, (void)bias, (void)cout, (void)g, (void)ep;
    (void)y, (void)s_out, (void)oh0, (void)oh1;
#endif
}
