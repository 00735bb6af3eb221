/*
 * Single-threaded sgemm whose A operand (conv weights) is packed once, at
 * model load, instead of on every call.
 *
 * Conv calls a GEMM per output tile and per run of live taps; a library sgemm
 * re-packs A on each of those calls, and OpenBLAS under the environment's
 * OPENBLAS_CORETYPE setting may not even run its best kernels.  Here A lives
 * in the layout the micro-kernels read, and only B is packed per call, into
 * scratch the caller owns (one buffer per thread, no allocation in the hot
 * path).  B is a row-major matrix (im2col columns, or the input map itself
 * for a 1x1 conv), or rows given by pointer whose columns come in segments
 * (a rectangle of an input plane), which lets conv feed shifted windows of
 * its input straight in, with no im2col copy.
 *
 * Layout of packed A: panels of MR rows; panel p holds, for k = 0..K-1, the
 * MR values A[p*MR + r][k] side by side ([panel][k][MR]), rows past M zero.
 * MR is the same for every instruction set, so weights packed at load serve
 * whichever kernel runs.  A K range [k0, k0 + kn) of a panel is contiguous,
 * which is what lets conv multiply only the taps that land.
 *
 * Blocking: N is cut into NC-wide and K into KC-deep blocks; each block's B
 * is packed into NR-wide column panels (the last one zero-padded to whole
 * vectors), then every MR x NR tile of C is computed with the B panel reused
 * by all A panels while A panels stream (the kernel prefetches the next A
 * panel as it goes).  A K block after the first adds to C; the bias and
 * ReLU/Clip epilogue is applied when the last one is stored, so the
 * epilogue costs no extra pass over C.
 *
 * Micro-kernels, chosen once from mk_cpu_level() (MASKD_CPU lowers it):
 *   avx512  8 x 48: 24 zmm accumulators, three B vectors per k, each A
 *           value broadcast once and used three times (FMA-bound: 24
 *           cycles per k on Zen 4, which runs one zmm FMA per cycle).
 *           Narrower last panels take the same code with fewer vectors, the
 *           last of them possibly a ymm (8 columns), so that a 7x7 map (49
 *           columns) costs 48 + 8 columns, not 48 + 16: on Zen 4 a ymm FMA
 *           takes half the time of a zmm one, so the lanes saved are real.
 *   avx2    8 x 24 as two 4 x 24 halves (12 ymm accumulators + 3 B + 1
 *           broadcast = all 16 registers)
 *   portable 8 x 8 in plain C that compilers vectorize; the reference for
 *           the other two in tests
 */
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MK_SGEMM_X86 1
#endif

#include "../mk.h"
#include "kernels.h"

enum {
    MR = MK_SGEMM_MR,
    /* K per block: C is revisited once per block, and a C that outgrows L2
     * (a 1x1 conv's 2048 channels by 240 columns, 1.9 MB) then comes back
     * from L3 for every block after the first.  A 48-wide B panel of a
     * block (96 KB) stays in L2 beside the block's A panels.  On Zen 5,
     * 512 -> 2048 at 64x64 took 42.5 ms with KC 256, 35.3 with 512; 2048
     * -> 512 34.7 either way (on Zen 4, 128 to 512 measured within noise). */
    KC = 512,
    /* Columns per block: a block's packed B (KC x NC floats, 480 KB) stays
     * in L2 while the A panels pass it.  Without this a 1x1 conv's tile of
     * a thousand columns packed 1 MB and read it back from L3. */
    NC = 240,
    /* A panels visited per sweep over the B panels of a block: their
     * MC_PANELS * MR x KC floats (256 KB) stay in L2 while every B panel
     * passes them (32 panels, 512 KB, measured 4% slower on 512 -> 2048). */
    MC_PANELS = 16,
    /* Widest B panel of any kernel (scratch is sized by it). */
    NR_MAX = 48,
    /* A segmented B's rows are windows of different planes (conv channels
     * 4 KB or more apart), which no hardware prefetcher follows: packing row
     * k prefetches the same segments of row k + SEG_PREFETCH_ROWS. */
    SEG_PREFETCH_ROWS = 4,
    /* B values a one-column product gathers at a time (see one_column),
     * into the scratch that holds a block's packed B for any n. */
    X_CHUNK = 4096,
};
_Static_assert(X_CHUNK <= KC * NR_MAX, "one_column's gathered B fits mk_sgemm_scratch_bytes(1)");

static inline int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }
static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

size_t mk_sgemm_packed_a_floats(int64_t m, int64_t k)
{
    if (m <= 0 || k <= 0) return 0;
    return (size_t)(round_up(m, MR) * k);
}

void mk_sgemm_pack_a(const float *a, int64_t lda, int64_t m, int64_t k, int64_t taps,
                     float *packed)
{
    if (m <= 0 || k <= 0) return;
    if (taps < 1 || k % taps) taps = 1;
    const int64_t channels = k / taps;
    for (int64_t p0 = 0; p0 < m; p0 += MR) {
        float *panel = packed + p0 * k;
        const int64_t rows = min64(m - p0, MR);
        for (int64_t kk = 0; kk < k; kk++) {
            /* K is tap-major in the packed panel, channel-major in a. */
            const int64_t col = (kk % channels) * taps + kk / channels;
            float *dst = panel + kk * MR;
            int64_t r = 0;
            for (; r < rows; r++) dst[r] = a[(p0 + r) * lda + col];
            for (; r < MR; r++) dst[r] = 0.0f;
        }
    }
}

void mk_sgemm_pack_a_t(const float *at, int64_t ldat, int64_t m, int64_t k, float *packed)
{
    if (m <= 0 || k <= 0) return;
    for (int64_t p0 = 0; p0 < m; p0 += MR) {
        float *panel = packed + p0 * k;
        const int64_t rows = min64(m - p0, MR);
        for (int64_t kk = 0; kk < k; kk++) {
            /* A panel's k-th MR values are adjacent in row kk of at. */
            const float *src = at + kk * ldat + p0;
            float *dst = panel + kk * MR;
            int64_t r = 0;
            for (; r < rows; r++) dst[r] = src[r];
            for (; r < MR; r++) dst[r] = 0.0f;
        }
    }
}

/* Scratch: one block of B panels. */
size_t mk_sgemm_scratch_bytes(int64_t n)
{
    if (n <= 0) return 0;
    return (size_t)(KC * round_up(min64(n, NC), NR_MAX)) * sizeof(float);
}

/* ---- shared pieces ------------------------------------------------------- */

/* One KC block of the product, as the per-ISA drivers see it. */
typedef struct gemm_block {
    const float *a;         /* packed A: the panel holding row m0, at this block's first k */
    int64_t panel_stride;   /* floats from one A panel to the next (K * MR) */
    int r0;                 /* m0's row inside its panel */
    int64_t mn;             /* rows of C */
    const float *bp;        /* this block's B, packed by the same ISA's pack_b */
    int64_t kc, n;
    float *c;
    int64_t ldc;
    bool load_c;                  /* add to C (an earlier block or accumulate) */
    const mk_sgemm_epilogue *ep;  /* non-NULL on the last block only */
} gemm_block;

/* Where row k of B starts, and whether its columns need gathering. */
static inline const float *b_row_start(const mk_sgemm_b *b, int64_t k)
{
    return b->rows ? b->rows[k] : b->data + k * b->ld;
}
static inline bool b_segmented(const mk_sgemm_b *b, int64_t n)
{
    return b->seg_w > 0 && b->seg_w < n;
}

/*
 * Row k0 + k of a segmented B, columns [jb, jb + nc), written straight into
 * row k of the block's panels (nr columns each, the last one tail_w wide
 * with its padding zeroed); copy(dst, src, len) is the ISA's short copy.  A
 * segment is split where it crosses a panel edge.  Gathering the row into a
 * buffer and packing that instead stalled on store forwarding (masked
 * stores, then wide loads of the same bytes).
 */
#define PACK_SEGMENTED_ROW(b, k0, k, kc, jb, nc, bp, nr, tail_w, copy)                  \
    do {                                                                                \
        const int64_t w_ = (b)->seg_w, full_ = (nc) / (nr) * (nr);                      \
        const float *seg_ = b_row_start(b, (k0) + (k)) + (jb) / w_ * (b)->seg_stride;    \
        const int64_t ahead_ = (k) + SEG_PREFETCH_ROWS < (kc) ? SEG_PREFETCH_ROWS : 0;   \
        const float *next_ = b_row_start(b, (k0) + (k) + ahead_) + (jb) / w_ * (b)->seg_stride; \
        int64_t off_ = (jb) % w_;                                                       \
        for (int64_t j_ = 0; j_ < (nc);                                                 \
             seg_ += (b)->seg_stride, next_ += (b)->seg_stride, off_ = 0) {             \
            const float *src_ = seg_ + off_;                                            \
            __builtin_prefetch(next_ + off_);                                           \
            int64_t left_ = min64(w_ - off_, (nc) - j_);                                \
            while (left_ > 0) {                                                         \
                const int64_t at_ = j_ % (nr);                                          \
                const int64_t piece_ = min64(left_, (nr) - at_);                        \
                const int64_t width_ = j_ < full_ ? (nr) : (tail_w);                    \
                copy((bp) + j_ / (nr) * (nr) * (kc) + (k) * width_ + at_, src_, piece_); \
                src_ += piece_;                                                         \
                j_ += piece_;                                                           \
                left_ -= piece_;                                                        \
            }                                                                           \
        }                                                                               \
        float *pad_ = (bp) + full_ * (kc) + (k) * (tail_w);                             \
        for (int64_t i_ = (nc) - full_; i_ < (tail_w); i_++) pad_[i_] = 0.0f;           \
    } while (0)

/* The same operations as ops/activation.c's Relu and Clip, NaN included:
 * Relu maps NaN to 0, Clip passes it through. */
static inline float clamp_scalar(float v, const mk_sgemm_epilogue *ep)
{
    switch (ep->clamp) {
    case MK_SGEMM_CLAMP_RELU: return v > 0.0f ? v : 0.0f;
    case MK_SGEMM_CLAMP_CLIP:
        v = v < ep->lo ? ep->lo : v;
        return v > ep->hi ? ep->hi : v;
    default: return v;
    }
}

/* Rows of C with no product to add (K = 0): C or 0, then the epilogue. */
static void no_product(int64_t mn, int64_t n, float *c, int64_t ldc, bool accumulate,
                       const mk_sgemm_epilogue *ep)
{
    for (int64_t i = 0; i < mn; i++) {
        float *row = c + i * ldc;
        if (!accumulate) memset(row, 0, (size_t)n * sizeof *row);
        if (!ep) continue;
        const float bias = ep->bias ? ep->bias[i] : 0.0f;
        for (int64_t j = 0; j < n; j++) row[j] = clamp_scalar(row[j] + bias, ep);
    }
}

/*
 * One column of B (a Linear on one image, a 1x1 conv on a pooled 1x1 map):
 * the blocked path would pad the column to a whole vector and walk each
 * panel in KC-deep pieces 40 KB apart; this streams every panel from end to
 * end, which is all a one-column product needs: it reads each weight once,
 * so memory bandwidth bounds it (ResNet's 2048 x 1000 classifier: 8 MB per
 * image).  Four partial sums per row keep the adds independent; plain C,
 * vectorized by the compiler, is enough at that.  B's column is gathered
 * into scratch X_CHUNK values at a time, C carrying the sums from one chunk
 * to the next.
 */
static void one_column(const mk_packed_a *a, int64_t m0, int64_t mn, int64_t k0, int64_t kn,
                       const mk_sgemm_b *b, float *c, int64_t ldc, bool accumulate,
                       const mk_sgemm_epilogue *ep, float *x)
{
    enum { LANES = 4 };
    for (int64_t kb = 0; kb < kn; kb += X_CHUNK) {
        const int64_t kc = min64(kn - kb, X_CHUNK);
        const bool add = accumulate || kb > 0, last = kb + kc == kn;
        for (int64_t k = 0; k < kc; k++) x[k] = b_row_start(b, kb + k)[0];
        for (int64_t p = m0 / MR; p * MR < m0 + mn; p++) {
            const float *panel = a->data + p * a->k * MR + (k0 + kb) * MR;
            float sum[LANES][MR] = {{0}};
            int64_t k = 0;
            for (; k + LANES <= kc; k += LANES)
                for (int l = 0; l < LANES; l++)
                    for (int r = 0; r < MR; r++) sum[l][r] += panel[(k + l) * MR + r] * x[k + l];
            for (; k < kc; k++)
                for (int r = 0; r < MR; r++) sum[0][r] += panel[k * MR + r] * x[k];
            const int64_t first = p * MR > m0 ? p * MR : m0;
            const int64_t end = min64((p + 1) * MR, m0 + mn);
            for (int64_t row = first; row < end; row++) {
                const int r = (int)(row - p * MR);
                float v = (sum[0][r] + sum[1][r]) + (sum[2][r] + sum[3][r]);
                float *out = c + (row - m0) * ldc;
                if (add) v += *out;
                if (last && ep) v = clamp_scalar(v + (ep->bias ? ep->bias[row - m0] : 0.0f), ep);
                *out = v;
            }
        }
    }
}

/* Runs TILE for every MR-row A panel p of the block against every B panel
 * (columns [j0, j0 + cols)), A panels grouped so a group stays in L2 while
 * all B panels pass.  TILE sees r_lo/r_hi (the panel rows that are C's),
 * apanel, anext (the panel after it, for the kernel to prefetch), bpanel,
 * ctile and bias.  A macro, so that the tile inlines into each ISA's own
 * driver. */
#define FOR_EACH_TILE(blk, nr, TILE)                                                   \
    do {                                                                               \
        const int64_t panels_ = ((blk)->r0 + (blk)->mn + MR - 1) / MR;                 \
        for (int64_t pg_ = 0; pg_ < panels_; pg_ += MC_PANELS) {                       \
            const int64_t pe_ = min64(pg_ + MC_PANELS, panels_);                       \
            for (int64_t j0 = 0; j0 < (blk)->n; j0 += (nr)) {                          \
                const float *bpanel = (blk)->bp + j0 * (blk)->kc;                      \
                const int64_t cols = min64((blk)->n - j0, (nr));                       \
                for (int64_t p = pg_; p < pe_; p++) {                                  \
                    const int r_lo = p == 0 ? (blk)->r0 : 0;                           \
                    const int r_hi = (int)min64((blk)->r0 + (blk)->mn - p * MR, MR);   \
                    const int64_t row = p * MR + r_lo - (blk)->r0; /* of C */          \
                    const float *apanel = (blk)->a + p * (blk)->panel_stride;          \
                    const float *anext = p + 1 < panels_ ? apanel + (blk)->panel_stride \
                                                         : apanel;                      \
                    float *ctile = (blk)->c + row * (blk)->ldc + j0;                   \
                    const float *bias =                                                \
                        (blk)->ep && (blk)->ep->bias ? (blk)->ep->bias + row : NULL;   \
                    TILE;                                                              \
                }                                                                      \
            }                                                                          \
        }                                                                              \
    } while (0)

/* ---- portable ------------------------------------------------------------ */

enum { NR_PORTABLE = 8 };

static inline void copy_portable(float *dst, const float *src, int64_t len)
{
    for (int64_t i = 0; i < len; i++) dst[i] = src[i];
}

/* B rows [k0, k0 + kc) x columns [jb, jb + nc) (of n) into 8-wide panels
 * ([panel][k][8]), the last one zero-padded. */
static void pack_b_portable(const mk_sgemm_b *b, int64_t k0, int64_t kc, int64_t jb,
                            int64_t nc, int64_t n, float *bp)
{
    const bool segmented = b_segmented(b, n);
    const int64_t tail_w = round_up(nc % NR_PORTABLE, NR_PORTABLE);
    for (int64_t k = 0; k < kc; k++) {
        if (segmented) {
            PACK_SEGMENTED_ROW(b, k0, k, kc, jb, nc, bp, NR_PORTABLE, tail_w, copy_portable);
            continue;
        }
        const float *src = b_row_start(b, k0 + k) + jb;
        for (int64_t j0 = 0; j0 < nc; j0 += NR_PORTABLE) {
            const int64_t cols = min64(nc - j0, NR_PORTABLE);
            float *dst = bp + j0 * kc + k * NR_PORTABLE;
            int64_t j = 0;
            for (; j < cols; j++) dst[j] = src[j0 + j];
            for (; j < NR_PORTABLE; j++) dst[j] = 0.0f;
        }
    }
}

static void tile_portable(int64_t kc, const float *restrict a, const float *restrict b,
                          float *c, int64_t ldc, int r_lo, int r_hi, int64_t cols, bool load_c,
                          const mk_sgemm_epilogue *ep, const float *bias)
{
    float acc[MR][NR_PORTABLE];
    memset(acc, 0, sizeof acc);
    for (int64_t k = 0; k < kc; k++, a += MR, b += NR_PORTABLE)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR_PORTABLE; j++) acc[i][j] += a[i] * b[j];
    for (int i = r_lo; i < r_hi; i++) {
        float *row = c + (int64_t)(i - r_lo) * ldc;
        for (int64_t j = 0; j < cols; j++) {
            float v = acc[i][j];
            if (load_c) v += row[j];
            if (ep) v = clamp_scalar(v + (bias ? bias[i - r_lo] : 0.0f), ep);
            row[j] = v;
        }
    }
}

static void block_portable(const gemm_block *blk)
{
    FOR_EACH_TILE(blk, NR_PORTABLE, {
        (void)anext; /* no prefetch in plain C */
        tile_portable(blk->kc, apanel, bpanel, ctile, blk->ldc, r_lo, r_hi, cols, blk->load_c,
                      blk->ep, bias);
    });
}

/* ---- AVX2 + FMA ------------------------------------------------------------ */

#ifdef MK_SGEMM_X86
#define ALWAYS_INLINE static inline __attribute__((always_inline))
#define AVX2_TARGET __attribute__((target("avx2,fma")))
#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

enum { V8 = 8, NR_AVX2 = 3 * V8 };

/* Lanes [0, count) of 8 set (count clamped to 0..8). */
AVX2_TARGET ALWAYS_INLINE __m256i lanes8(int64_t count)
{
    const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)min64(count, V8)), index);
}

AVX2_TARGET ALWAYS_INLINE void copy_avx2(float *dst, const float *src, int64_t len)
{
    int64_t i = 0;
    for (; i + V8 <= len; i += V8) _mm256_storeu_ps(dst + i, _mm256_loadu_ps(src + i));
    if (i < len) {
        const __m256i m = lanes8(len - i);
        _mm256_maskstore_ps(dst + i, m, _mm256_maskload_ps(src + i, m));
    }
}

/* As pack_b_portable with 24-wide panels; the last panel is rounded up to
 * whole vectors only (8, 16 or 24 wide). */
AVX2_TARGET static void pack_b_avx2(const mk_sgemm_b *b, int64_t k0, int64_t kc, int64_t jb,
                                    int64_t nc, int64_t n, float *bp)
{
    const bool segmented = b_segmented(b, n);
    const int64_t full_panels = nc / NR_AVX2, tail = nc - full_panels * NR_AVX2;
    const int64_t tail_w = round_up(tail, V8);
    float *tail_panel = bp + full_panels * NR_AVX2 * kc;
    for (int64_t k = 0; k < kc; k++) {
        if (segmented) {
            PACK_SEGMENTED_ROW(b, k0, k, kc, jb, nc, bp, NR_AVX2, tail_w, copy_avx2);
            continue;
        }
        const float *src = b_row_start(b, k0 + k) + jb;
        float *dst = bp + k * NR_AVX2;
        for (int64_t p = 0; p < full_panels; p++, dst += NR_AVX2 * kc, src += NR_AVX2) {
            _mm256_storeu_ps(dst, _mm256_loadu_ps(src));
            _mm256_storeu_ps(dst + V8, _mm256_loadu_ps(src + V8));
            _mm256_storeu_ps(dst + 2 * V8, _mm256_loadu_ps(src + 2 * V8));
        }
        dst = tail_panel + k * tail_w;
        for (int64_t j = 0; j < tail_w; j += V8)
            _mm256_storeu_ps(dst + j, _mm256_maskload_ps(src + j, lanes8(tail - j)));
    }
}

/* Four rows of an A panel (from a, stride MR) times an 8 * NV wide B panel;
 * row half_base + i of the panel is stored when inside [r_lo, r_hi). */
AVX2_TARGET ALWAYS_INLINE void half_avx2(const int NV, int64_t kc, const float *restrict a,
                                         const float *a_next, const float *restrict b,
                                         float *c, int64_t ldc,
                                         int half_base, int r_lo, int r_hi, __m256i last,
                                         bool load_c, const mk_sgemm_epilogue *ep,
                                         const float *bias)
{
    __m256 acc[4][3];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
#pragma GCC unroll 3
        for (int j = 0; j < 3; j++) acc[i][j] = _mm256_setzero_ps();
    const int64_t width = NV * V8;
#pragma GCC unroll 2
    for (int64_t k = 0; k < kc; k++) {
        const __m256 b0 = _mm256_loadu_ps(b);
        const __m256 b1 = NV > 1 ? _mm256_loadu_ps(b + V8) : b0;
        const __m256 b2 = NV > 2 ? _mm256_loadu_ps(b + 2 * V8) : b0;
        _mm_prefetch((const char *)(a_next + k * MR), _MM_HINT_T0); /* as in tile_avx512 */
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            const __m256 av = _mm256_broadcast_ss(a + i);
            acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
            if (NV > 1) acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
            if (NV > 2) acc[i][2] = _mm256_fmadd_ps(av, b2, acc[i][2]);
        }
        a += MR;
        b += width;
    }
    const __m256 zero = _mm256_setzero_ps();
    const __m256i all = _mm256_set1_epi32(-1);
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        const int r = half_base + i;
        if (r < r_lo || r >= r_hi) continue;
        float *row = c + (int64_t)(r - r_lo) * ldc;
        const __m256 vbias = bias ? _mm256_set1_ps(bias[r - r_lo]) : zero;
#pragma GCC unroll 3
        for (int j = 0; j < NV; j++) {
            const __m256i mask = j == NV - 1 ? last : all;
            __m256 v = acc[i][j];
            if (load_c) v = _mm256_add_ps(v, _mm256_maskload_ps(row + j * V8, mask));
            if (ep) {
                v = _mm256_add_ps(v, vbias);
                /* max(v, 0) with v first: NaN -> 0, as the Relu op (do not swap) */
                if (ep->clamp == MK_SGEMM_CLAMP_RELU) v = _mm256_max_ps(v, zero);
                else if (ep->clamp == MK_SGEMM_CLAMP_CLIP)
                    v = _mm256_min_ps(_mm256_set1_ps(ep->hi),
                                      _mm256_max_ps(_mm256_set1_ps(ep->lo), v));
            }
            _mm256_maskstore_ps(row + j * V8, mask, v);
        }
    }
}

AVX2_TARGET ALWAYS_INLINE void tile_avx2(const int NV, int64_t kc, const float *a,
                                         const float *a_next, const float *b, float *c,
                                         int64_t ldc, int r_lo, int r_hi,
                                         int64_t cols, bool load_c,
                                         const mk_sgemm_epilogue *ep, const float *bias)
{
    const __m256i last = lanes8(cols - (NV - 1) * V8);
    if (r_lo < 4)
        half_avx2(NV, kc, a, a_next, b, c, ldc, 0, r_lo, r_hi, last, load_c, ep, bias);
    if (r_hi > 4)
        half_avx2(NV, kc, a + 4, a_next, b, c, ldc, 4, r_lo, r_hi, last, load_c, ep, bias);
}

AVX2_TARGET static void block_avx2(const gemm_block *blk)
{
#define TILE_AVX2(NV)                                                                  \
    tile_avx2(NV, blk->kc, apanel, anext, bpanel, ctile, blk->ldc, r_lo, r_hi, cols,      \
              blk->load_c, blk->ep, bias)
    FOR_EACH_TILE(blk, NR_AVX2, {
        if (cols > 2 * V8) TILE_AVX2(3);
        else if (cols > V8) TILE_AVX2(2);
        else TILE_AVX2(1);
    });
#undef TILE_AVX2
}

/* ---- AVX-512 --------------------------------------------------------------- */

enum { V16 = 16, NR_AVX512 = 3 * V16 };

AVX512_TARGET ALWAYS_INLINE __mmask16 lanes16(int64_t count)
{
    return count >= V16 ? (__mmask16)0xffff : (__mmask16)((1u << (count > 0 ? count : 0)) - 1u);
}

AVX512_TARGET ALWAYS_INLINE void copy_avx512(float *dst, const float *src, int64_t len)
{
    for (int64_t i = 0; i < len; i += V16) {
        const __mmask16 m = lanes16(len - i);
        _mm512_mask_storeu_ps(dst + i, m, _mm512_maskz_loadu_ps(m, src + i));
    }
}

/* As pack_b_avx2 with 48-wide panels, the last one rounded up to 8 columns
 * (8 to 48 wide). */
AVX512_TARGET static void pack_b_avx512(const mk_sgemm_b *b, int64_t k0, int64_t kc, int64_t jb,
                                        int64_t nc, int64_t n, float *bp)
{
    const bool segmented = b_segmented(b, n);
    const int64_t full_panels = nc / NR_AVX512, tail = nc - full_panels * NR_AVX512;
    const int64_t tail_w = round_up(tail, V8);
    float *tail_panel = bp + full_panels * NR_AVX512 * kc;
    for (int64_t k = 0; k < kc; k++) {
        if (segmented) {
            PACK_SEGMENTED_ROW(b, k0, k, kc, jb, nc, bp, NR_AVX512, tail_w, copy_avx512);
            continue;
        }
        const float *src = b_row_start(b, k0 + k) + jb;
        float *dst = bp + k * NR_AVX512;
        for (int64_t p = 0; p < full_panels; p++, dst += NR_AVX512 * kc, src += NR_AVX512) {
            _mm512_storeu_ps(dst, _mm512_loadu_ps(src));
            _mm512_storeu_ps(dst + V16, _mm512_loadu_ps(src + V16));
            _mm512_storeu_ps(dst + 2 * V16, _mm512_loadu_ps(src + 2 * V16));
        }
        dst = tail_panel + k * tail_w;
        for (int64_t j = 0; j < tail_w; j += V16)
            _mm512_mask_storeu_ps(dst + j, lanes16(tail_w - j),
                                  _mm512_maskz_loadu_ps(lanes16(tail - j), src + j));
    }
}

/* Bias and clamp of one stored vector (zmm or its ymm half). */
#define EPILOGUE_512(v, vbias)                                                          \
    do {                                                                                \
        v = _mm512_add_ps(v, vbias);                                                    \
        if (ep->clamp == MK_SGEMM_CLAMP_RELU) v = _mm512_max_ps(v, _mm512_setzero_ps()); \
        else if (ep->clamp == MK_SGEMM_CLAMP_CLIP)                                      \
            v = _mm512_min_ps(_mm512_set1_ps(ep->hi), _mm512_max_ps(_mm512_set1_ps(ep->lo), v)); \
    } while (0)
#define EPILOGUE_256(v, vbias)                                                          \
    do {                                                                                \
        v = _mm256_add_ps(v, vbias);                                                    \
        if (ep->clamp == MK_SGEMM_CLAMP_RELU) v = _mm256_max_ps(v, _mm256_setzero_ps()); \
        else if (ep->clamp == MK_SGEMM_CLAMP_CLIP)                                      \
            v = _mm256_min_ps(_mm256_set1_ps(ep->hi), _mm256_max_ps(_mm256_set1_ps(ep->lo), v)); \
    } while (0)

/*
 * An MR x (16 * F + 8 * H) tile: F zmm vectors of B per k, then H (0 or 1)
 * ymm vectors.  The ymm one takes the low half of the same A broadcast, so
 * it costs no extra instruction; alone (F = 0) it broadcasts to ymm, as a
 * zmm broadcast from memory issues at one per cycle on Zen 4 and would be
 * the bottleneck of an 8-FMA step.
 */
AVX512_TARGET ALWAYS_INLINE void tile_avx512(const int F, const int H, int64_t kc,
                                             const float *restrict a, const float *a_next,
                                             const float *restrict b, float *c, int64_t ldc,
                                             int r_lo, int r_hi, int64_t cols, bool load_c,
                                             const mk_sgemm_epilogue *ep, const float *bias)
{
    __m512 acc[MR][3];
    __m256 acc_h[MR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        acc_h[i] = _mm256_setzero_ps();
#pragma GCC unroll 3
        for (int j = 0; j < 3; j++) acc[i][j] = _mm512_setzero_ps();
    }
    const int64_t width = F * V16 + H * V8;
#pragma GCC unroll 2
    for (int64_t k = 0; k < kc; k++) {
        const __m512 b0 = F > 0 ? _mm512_loadu_ps(b) : _mm512_setzero_ps();
        const __m512 b1 = F > 1 ? _mm512_loadu_ps(b + V16) : b0;
        const __m512 b2 = F > 2 ? _mm512_loadu_ps(b + 2 * V16) : b0;
        const __m256 bh = H ? _mm256_loadu_ps(b + F * V16) : _mm256_setzero_ps();
        /* The next A panel, one k step ahead per k step: weights come from
         * DRAM once per layer, and a 7x7 map's few columns leave too little
         * work per panel to hide the misses (1x1 2048 x 512 at 7x7 with cold
         * weights: 77 -> 93 GFLOP/s). */
        _mm_prefetch((const char *)(a_next + k * MR), _MM_HINT_T0);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            if (F == 0) { /* a ymm broadcast: Zen 4 issues two per cycle, one zmm */
                acc_h[i] = _mm256_fmadd_ps(_mm256_set1_ps(a[i]), bh, acc_h[i]);
                continue;
            }
            const __m512 av = _mm512_set1_ps(a[i]);
            acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
            if (F > 1) acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);
            if (F > 2) acc[i][2] = _mm512_fmadd_ps(av, b2, acc[i][2]);
            if (H) acc_h[i] = _mm256_fmadd_ps(_mm512_castps512_ps256(av), bh, acc_h[i]);
        }
        a += MR;
        b += width;
    }
    /* Columns left for the last vector (zmm or ymm). */
    const int64_t last_cols = cols - (H ? F * V16 : (F - 1) * V16);
    const __mmask16 last = lanes16(last_cols);
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        if (i < r_lo || i >= r_hi) continue;
        float *row = c + (int64_t)(i - r_lo) * ldc;
        const float bias_i = bias ? bias[i - r_lo] : 0.0f;
#pragma GCC unroll 3
        for (int j = 0; j < F; j++) {
            const __mmask16 mask = !H && j == F - 1 ? last : (__mmask16)0xffff;
            __m512 v = acc[i][j];
            if (load_c) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, row + j * V16));
            if (ep) EPILOGUE_512(v, _mm512_set1_ps(bias_i));
            _mm512_mask_storeu_ps(row + j * V16, mask, v);
        }
        if (H) {
            const __mmask8 mask = (__mmask8)last;
            __m256 v = acc_h[i];
            if (load_c) v = _mm256_add_ps(v, _mm256_maskz_loadu_ps(mask, row + F * V16));
            if (ep) EPILOGUE_256(v, _mm256_set1_ps(bias_i));
            _mm256_mask_storeu_ps(row + F * V16, mask, v);
        }
    }
}

AVX512_TARGET static void block_avx512(const gemm_block *blk)
{
#define TILE_AVX512(F, H)                                                               \
    tile_avx512(F, H, blk->kc, apanel, anext, bpanel, ctile, blk->ldc, r_lo, r_hi, cols, \
                blk->load_c, blk->ep, bias)
    FOR_EACH_TILE(blk, NR_AVX512, {
        switch ((cols + V8 - 1) / V8) { /* the panel's width in 8-column steps */
        case 1: TILE_AVX512(0, 1); break;
        case 2: TILE_AVX512(1, 0); break;
        case 3: TILE_AVX512(1, 1); break;
        case 4: TILE_AVX512(2, 0); break;
        case 5: TILE_AVX512(2, 1); break;
        default: TILE_AVX512(3, 0); break;
        }
    });
#undef TILE_AVX512
}
#undef EPILOGUE_512
#undef EPILOGUE_256
#endif /* MK_SGEMM_X86 */

/* ---- dispatch and the blocked product ---------------------------------------- */

typedef struct gemm_isa {
    void (*pack_b)(const mk_sgemm_b *b, int64_t k0, int64_t kc, int64_t jb, int64_t nc,
                   int64_t n, float *bp);
    void (*block)(const gemm_block *blk);
} gemm_isa;

static gemm_isa isa = {pack_b_portable, block_portable};
static pthread_once_t isa_once = PTHREAD_ONCE_INIT;

static void pick_isa(void)
{
#ifdef MK_SGEMM_X86
    switch (mk_cpu_level()) {
    case MK_ISA_AVX512: isa = (gemm_isa){pack_b_avx512, block_avx512}; break;
    case MK_ISA_AVX2: isa = (gemm_isa){pack_b_avx2, block_avx2}; break;
    default: break;
    }
#endif
}

void mk_sgemm_packed_b(const mk_packed_a *a, int64_t m0, int64_t mn, int64_t k0, int64_t kn,
                       const mk_sgemm_b *b, int64_t n, float *c, int64_t ldc, bool accumulate,
                       const mk_sgemm_epilogue *ep, void *scratch)
{
    if (mn <= 0 || n <= 0) return;
    if (kn <= 0) {
        no_product(mn, n, c, ldc, accumulate, ep);
        return;
    }
    if (n == 1) {
        one_column(a, m0, mn, k0, kn, b, c, ldc, accumulate, ep, scratch);
        return;
    }
    pthread_once(&isa_once, pick_isa);
    const gemm_isa kernels = isa;
    float *bp = scratch;
    for (int64_t jb = 0; jb < n; jb += NC) {
        const int64_t nc = min64(n - jb, NC);
        for (int64_t kb = 0; kb < kn; kb += KC) {
            const int64_t kc = min64(kn - kb, KC);
            kernels.pack_b(b, kb, kc, jb, nc, n, bp);
            const gemm_block blk = {
                .a = a->data + (m0 / MR) * a->k * MR + (k0 + kb) * MR,
                .panel_stride = a->k * MR,
                .r0 = (int)(m0 % MR),
                .mn = mn,
                .bp = bp,
                .kc = kc,
                .n = nc,
                .c = c + jb,
                .ldc = ldc,
                .load_c = accumulate || kb > 0,
                .ep = kb + kc == kn ? ep : NULL,
            };
            kernels.block(&blk);
        }
    }
}

void mk_sgemm_packed(const mk_packed_a *a, int64_t m0, int64_t mn, int64_t k0, int64_t kn,
                     const float *b, int64_t ldb, int64_t n, float *c, int64_t ldc,
                     bool accumulate, const mk_sgemm_epilogue *ep, void *scratch)
{
    const mk_sgemm_b plain = {.data = b, .ld = ldb};
    mk_sgemm_packed_b(a, m0, mn, k0, kn, &plain, n, c, ldc, accumulate, ep, scratch);
}
