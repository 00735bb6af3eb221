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
 * No activation here: ops/conv.c applies the fused one to each plane while
 * it is still in cache.
 */
#include <pthread.h>
#include <stdbool.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MK_DW_X86 1
#endif

#include "../mk.h"
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
                       const float *const *ws, int n_rows, int nr, float bias);

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
                         const float *const *ws, int n_rows, int nr, float bias)
{
    for (int j = 0; j < nr; j++) row_portable_one(ys[j], g, xss[j], ws, n_rows, bias);
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

/* Bits [lo, hi) of 32, clamped. */
static inline uint32_t bit_range(int64_t lo, int64_t hi)
{
    if (lo < 0) lo = 0;
    if (hi > 32) hi = 32;
    if (hi <= lo) return 0;
    return (uint32_t)((((uint64_t)1 << hi) - 1) & ~(((uint64_t)1 << lo) - 1));
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
                                             const int S, const int NR, float bias)
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
                _mm256_storeu_ps(y + o, a0);
                _mm256_storeu_ps(y + o + V, a1);
                _mm256_storeu_ps(y + o + 2 * V, a2);
                _mm256_storeu_ps(y + o + 3 * V, a3);
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
            if (c == V) _mm256_storeu_ps(ys[j] + o, a[j]);
            else _mm256_maskstore_ps(ys[j] + o, mask8(bit_range(0, c)), a[j]);
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
        if (nr == 2) body(ys, g, xss, ws, n_rows, KW, S, 2, bias);               \
        else body(ys, g, xss, ws, n_rows, KW, S, 1, bias);                       \
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
        else row_portable(ys, g, xss, ws, n_rows, nr, bias);                     \
    } while (0)

AVX2_TARGET static void row_avx2(float *const *ys, const dw_row *g, const float *const *const *xss,
                                 const float *const *ws, int n_rows, int nr, float bias)
{
    ROW_DISPATCH(row_avx2_body);
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
                                             const int S, const int NR, float bias)
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
                _mm512_storeu_ps(y + o, a0);
                _mm512_storeu_ps(y + o + V, a1);
                _mm512_storeu_ps(y + o + 2 * V, a2);
                _mm512_storeu_ps(y + o + 3 * V, a3);
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
            _mm512_mask_storeu_ps(ys[j] + o, (__mmask16)bit_range(0, c), a[j]);
        o += c;
    }
}

AVX512_TARGET static void row_avx512(float *const *ys, const dw_row *g, const float *const *const *xss,
                                     const float *const *ws, int n_rows, int nr, float bias)
{
    ROW_DISPATCH(row_avx512_body);
}
#undef ROW_DISPATCH
#undef ROW_BODY_NR
#endif

static row_fn row_kernel = row_portable;
static pthread_once_t row_once = PTHREAD_ONCE_INIT;

static void pick_row_kernel(void)
{
#ifdef MK_DW_X86
    switch (mk_cpu_level()) {
    case MK_ISA_AVX512: row_kernel = row_avx512; break;
    case MK_ISA_AVX2: row_kernel = row_avx2; break;
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

void mk_depthwise_plane(const float *x, const float *w, float bias, const mk_conv_geom *g,
                        float *y)
{
    const int64_t ow_n = g->iter[2], kw_n = g->kernel[2], tw = g->touch[2];
    if (kw_n > MAX_KW || g->kernel[0] * g->kernel[1] > MAX_ROWS) {
        plane_generic(x, w, bias, g, y);
        return;
    }
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

    pthread_once(&row_once, pick_row_kernel);
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
                for (int64_t o = 0; o < nr * ow_n; o++) ys[0][o] = bias;
            } else {
                const float *const *xss[2] = {rows_x[0], rows_x[1]};
                kernel(ys, &row, xss, rows_w[0], n_rows, nr, bias);
            }
            oh += nr;
        }
}
