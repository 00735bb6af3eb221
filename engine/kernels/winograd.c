/*
 * Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions, dense or dilated.
 *
 * A 4x4 block of outputs comes from a 6x6 block of inputs: with V = B^T d B
 * (the input tile transformed) and U = G g G^T (the 3x3 kernel transformed,
 * once at load), the 36 products U[xi] V[xi] summed over input channels and
 * transformed back by A^T . A give the 16 outputs.  Summed over channels,
 * each of the 36 points xi is a GEMM, M[xi] (cout x tiles) = U[xi] (cout x
 * cin) V[xi] (cin x tiles): 36 multiplies per 16 outputs instead of 144,
 * run by kernels/sgemm.c on U packed once into its panels.
 *
 * Dilation d: the outputs whose (row, column) are (a, b) modulo d form a
 * sub-grid that is an ordinary 3x3 conv of the input sub-grid with the same
 * residues (its taps are d apart in the input, one sub-grid step).  Every
 * sub-grid is tiled on its own; along each axis, "tile rows" enumerate the
 * tiles of residue 0, then of residue 1, and so on, so a tile is (tile row,
 * tile column) and the whole set is a rectangle.
 *
 * The transforms work on VL tiles at once (16 for AVX-512, 8 otherwise),
 * each tile a lane of the vectors: the gather brings a channel's 6x6 input
 * blocks of VL tiles into [36][VL], the arithmetic is then plain loops over
 * the lanes that the compiler vectorizes, compiled once per instruction set
 * (target attributes) and chosen once from mk_cpu_level().
 */
#include <pthread.h>
#include <string.h>

#include "../mk.h"
#include "kernels.h"

enum { P = MK_WINO_POINTS, VL_MAX = 16 };

/* V and M hold [point][channel][tile] with each point's matrix this many
 * floats past a whole number of rows: matrices of whole rows are often a
 * multiple of 4 KB apart (512 channels x 96 tiles), and then the 36 points
 * one transform writes or reads of a lane group all map to one L1 set.
 * That conflict made the input transform 3x slower than its work. */
enum { POINT_SKEW = 16 };

/* Lane groups whose addresses are worked out at a time (128 tiles). */
enum { GROUPS_MAX = 8 };

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ---- geometry ------------------------------------------------------------ */

/* Outputs of residue a along an axis. */
static int64_t sub_count(const mk_wino_axis *ax, int64_t a)
{
    return (ax->out - a + ax->dil - 1) / ax->dil;
}

void mk_winograd_axis_init(mk_wino_axis *ax, int64_t in, int64_t out, int64_t pad, int64_t dil)
{
    ax->in = in;
    ax->out = out;
    ax->pad = pad;
    ax->dil = dil;
    ax->tiles = 0;
    for (int64_t a = 0; a < min64(dil, out); a++)
        ax->tiles += (sub_count(ax, a) + MK_WINO_OUT - 1) / MK_WINO_OUT;
}

/* Tile row r of an axis: its first output, and how many of its 4 exist. */
static void axis_tile(const mk_wino_axis *ax, int64_t r, int64_t *first, int *valid)
{
    for (int64_t a = 0;; a++) {
        const int64_t n = sub_count(ax, a), t = (n + MK_WINO_OUT - 1) / MK_WINO_OUT;
        if (r < t) {
            *first = a + r * MK_WINO_OUT * ax->dil;
            *valid = (int)min64(MK_WINO_OUT, n - r * MK_WINO_OUT);
            return;
        }
        r -= t;
    }
}

/* ---- weights --------------------------------------------------------------- */

size_t mk_winograd_u_floats(int64_t cout, int64_t cin)
{
    return P * mk_sgemm_packed_a_floats(cout, cin);
}

/* G times a column (g0, g1, g2): G's rows are (1/4, 0, 0), -(1, 1, 1)/6,
 * -(1, -1, 1)/6, (1/24, 1/12, 1/6), (1/24, -1/12, 1/6), (0, 0, 1). */
static inline void g_column(double g0, double g1, double g2, double out[6])
{
    const double even = g0 + g2, even24 = g0 / 24 + g2 / 6;
    out[0] = g0 / 4;
    out[1] = -(even + g1) / 6;
    out[2] = -(even - g1) / 6;
    out[3] = even24 + g1 / 12;
    out[4] = even24 - g1 / 12;
    out[5] = g2;
}

/* G g G^T of one 3x3 kernel (row-major), in double: the packed U is then
 * rounded once. */
static void kernel_transform(const float *g, double u[P])
{
    double t[3][6]; /* t[j] = G times column j of g */
    for (int j = 0; j < 3; j++) g_column(g[j], g[3 + j], g[6 + j], t[j]);
    for (int i = 0; i < 6; i++) {
        double row[6];
        g_column(t[0][i], t[1][i], t[2][i], row);
        for (int j = 0; j < 6; j++) u[i * 6 + j] = row[j];
    }
}

void mk_winograd_pack_u(const float *w, int64_t cout, int64_t cin, float *u)
{
    if (cout <= 0 || cin <= 0) return;
    /* Straight into the sgemm's panel layout ([panel][k][MR], see
     * kernels.h), rows past cout zero, a panel's MR rows at a time so that
     * each point's run of [k][MR] is written whole and in order: row by row,
     * every cache line of U was written by MR rows in turn, far apart (the
     * 75 MB U of a 2048 -> 256 conv took 70 ms to pack so, 20 this way). */
    enum { MR = MK_SGEMM_MR, C_BLOCK = 32 };
    const size_t point_floats = mk_sgemm_packed_a_floats(cout, cin);
    float block[P][C_BLOCK][MR];
    for (int64_t o0 = 0; o0 < cout; o0 += MR) {
        float *panel = u + o0 * cin;
        for (int64_t c0 = 0; c0 < cin; c0 += C_BLOCK) {
            const int64_t cn = min64(C_BLOCK, cin - c0);
            for (int r = 0; r < MR; r++)
                for (int64_t c = 0; c < cn; c++) {
                    double t[P] = {0};
                    if (o0 + r < cout) kernel_transform(w + ((o0 + r) * cin + c0 + c) * 9, t);
                    for (int xi = 0; xi < P; xi++) block[xi][c][r] = (float)t[xi];
                }
            for (int xi = 0; xi < P; xi++)
                memcpy(panel + xi * point_floats + c0 * MR, block[xi], (size_t)(cn * MR) * sizeof(float));
        }
    }
}

/* ---- transforms, one body per instruction set -------------------------------- */

/* Where VL tiles' lanes read and write: per lane, the first input row and
 * column (possibly in the padding), which of the 6 rows and columns land,
 * the first output row and column and how many of the 4 exist (0: no tile). */
typedef struct lanes {
    int64_t ih[VL_MAX], iw[VL_MAX], oh[VL_MAX], ow[VL_MAX];
    unsigned rows[VL_MAX], cols[VL_MAX];
    int vh[VL_MAX], vw[VL_MAX];
} lanes;

static unsigned landing(int64_t i0, int64_t dil, int64_t n)
{
    unsigned bits = 0;
    for (int r = 0; r < MK_WINO_IN; r++) {
        const int64_t i = i0 + r * dil;
        if (i >= 0 && i < n) bits |= 1u << r;
    }
    return bits;
}

static void lanes_of(const mk_winograd_geom *g, int64_t t0, int64_t nt, int vl, lanes *ln)
{
    for (int k = 0; k < vl; k++) {
        ln->vh[k] = ln->vw[k] = 0;
        ln->rows[k] = ln->cols[k] = 0;
        ln->ih[k] = ln->iw[k] = ln->oh[k] = ln->ow[k] = 0;
        if (k >= nt) continue;
        const int64_t t = t0 + k;
        axis_tile(&g->h, t / g->w.tiles, &ln->oh[k], &ln->vh[k]);
        axis_tile(&g->w, t % g->w.tiles, &ln->ow[k], &ln->vw[k]);
        ln->ih[k] = ln->oh[k] - g->h.pad;
        ln->iw[k] = ln->ow[k] - g->w.pad;
        ln->rows[k] = landing(ln->ih[k], g->h.dil, g->h.in);
        ln->cols[k] = landing(ln->iw[k], g->w.dil, g->w.in);
    }
}

/* The 6x6 input blocks of one channel plane x into d[36][VL], zero where
 * they fall in the padding or past the last tile. */
#define GATHER_BODY(VL)                                                                    \
    do {                                                                                   \
        const int64_t dh = g->h.dil * g->w.in, dw = g->w.dil;                              \
        for (int k = 0; k < VL; k++) {                                                     \
            if (ln->rows[k] == 0x3f && ln->cols[k] == 0x3f) {                              \
                const float *b = x + ln->ih[k] * g->w.in + ln->iw[k];                      \
                for (int r = 0; r < 6; r++)                                                \
                    for (int s = 0; s < 6; s++) d[r * 6 + s][k] = b[r * dh + s * dw];      \
                continue;                                                                  \
            }                                                                              \
            for (int r = 0; r < 6; r++)                                                    \
                for (int s = 0; s < 6; s++) {                                              \
                    float v = 0.0f;                                                        \
                    if ((ln->rows[k] >> r & 1) && (ln->cols[k] >> s & 1))                  \
                        v = x[(ln->ih[k] + r * g->h.dil) * g->w.in + ln->iw[k] + s * dw];   \
                    d[r * 6 + s][k] = v;                                                   \
                }                                                                          \
        }                                                                                  \
    } while (0)

/* B^T d B on VL lanes, vector type V (a GCC vector of VL floats): the rows
 * (the six d[r][s] of one column s) first, then the columns of the result.
 * out[xi] goes to v + xi * point_stride. */
#define INPUT_TX_BODY(V)                                                                   \
    do {                                                                                   \
        V t[36];                                                                           \
        for (int s = 0; s < 6; s++) {                                                      \
            const V d0 = LOADV(V, d[s]), d1 = LOADV(V, d[6 + s]), d2 = LOADV(V, d[12 + s]); \
            const V d3 = LOADV(V, d[18 + s]), d4 = LOADV(V, d[24 + s]);                    \
            const V d5 = LOADV(V, d[30 + s]);                                              \
            t[s] = 4.0f * d0 - 5.0f * d2 + d4;                                             \
            t[6 + s] = d3 + d4 - 4.0f * (d1 + d2);                                         \
            t[12 + s] = 4.0f * (d1 - d2) + d4 - d3;                                        \
            t[18 + s] = 2.0f * (d3 - d1) + d4 - d2;                                        \
            t[24 + s] = 2.0f * (d1 - d3) + d4 - d2;                                        \
            t[30 + s] = 4.0f * d1 - 5.0f * d3 + d5;                                        \
        }                                                                                  \
        for (int r = 0; r < 6; r++) {                                                      \
            float *o = v + r * 6 * point_stride;                                           \
            const V d0 = t[r * 6], d1 = t[r * 6 + 1], d2 = t[r * 6 + 2];                   \
            const V d3 = t[r * 6 + 3], d4 = t[r * 6 + 4], d5 = t[r * 6 + 5];               \
            STOREV(V, o, 4.0f * d0 - 5.0f * d2 + d4);                                      \
            STOREV(V, o + point_stride, d3 + d4 - 4.0f * (d1 + d2));                       \
            STOREV(V, o + 2 * point_stride, 4.0f * (d1 - d2) + d4 - d3);                   \
            STOREV(V, o + 3 * point_stride, 2.0f * (d3 - d1) + d4 - d2);                   \
            STOREV(V, o + 4 * point_stride, 2.0f * (d1 - d3) + d4 - d2);                   \
            STOREV(V, o + 5 * point_stride, 4.0f * d1 - 5.0f * d3 + d5);                   \
        }                                                                                  \
    } while (0)

/* A^T m A on VL lanes (m[xi] at m + xi * point_stride), then bias, the
 * clamp, post, and the existing outputs of each lane stored into plane y. */
#define OUTPUT_TX_BODY(V, VI, VL)                                                              \
    do {                                                                                   \
        V t[24];                                                                           \
        float o[16][VL];                                                                   \
        for (int s = 0; s < 6; s++) {                                                      \
            const V m0 = LOADV(V, m + s * point_stride);                                   \
            const V m1 = LOADV(V, m + (6 + s) * point_stride);                             \
            const V m2 = LOADV(V, m + (12 + s) * point_stride);                            \
            const V m3 = LOADV(V, m + (18 + s) * point_stride);                            \
            const V m4 = LOADV(V, m + (24 + s) * point_stride);                            \
            const V m5 = LOADV(V, m + (30 + s) * point_stride);                            \
            const V a = m1 + m2, b = m1 - m2, c = m3 + m4, e = m3 - m4;                    \
            t[s] = m0 + a + c;                                                             \
            t[6 + s] = b + 2.0f * e;                                                       \
            t[12 + s] = a + 4.0f * c;                                                      \
            t[18 + s] = b + 8.0f * e + m5;                                                 \
        }                                                                                  \
        const V zero = {0}, lo = zero + st->lo, hi = zero + st->hi;                        \
        for (int r = 0; r < 4; r++) {                                                      \
            const V m0 = t[r * 6], m1 = t[r * 6 + 1], m2 = t[r * 6 + 2];                   \
            const V m3 = t[r * 6 + 3], m4 = t[r * 6 + 4], m5 = t[r * 6 + 5];               \
            const V a = m1 + m2, b = m1 - m2, c = m3 + m4, e = m3 - m4;                    \
            V q[4] = {m0 + a + c + bias, b + 2.0f * e + bias, a + 4.0f * c + bias,         \
                      b + 8.0f * e + m5 + bias};                                           \
            for (int j = 0; j < 4; j++) {                                                  \
                /* v > 0 ? v : 0 maps NaN to 0, as the Relu op */                          \
                if (st->clamp == MK_SGEMM_CLAMP_RELU) q[j] = SELECT(VI, q[j] > zero, q[j], zero); \
                else if (st->clamp == MK_SGEMM_CLAMP_CLIP) {                               \
                    q[j] = SELECT(VI, q[j] < lo, lo, q[j]);                                \
                    q[j] = SELECT(VI, q[j] > hi, hi, q[j]);                                \
                }                                                                          \
                STOREV(V, o[r * 4 + j], q[j]);                                             \
            }                                                                              \
        }                                                                                  \
        if (st->post) st->post(&o[0][0], 16 * VL, st->post_arg);                           \
        const int64_t ow_n = g->w.out, sh = g->h.dil * ow_n, sw = g->w.dil;                \
        for (int k = 0; k < VL; k++) {                                                     \
            if (ln->vh[k] == 0) continue;                                                  \
            float *base = y + ln->oh[k] * ow_n + ln->ow[k];                                \
            for (int i = 0; i < ln->vh[k]; i++)                                            \
                for (int j = 0; j < ln->vw[k]; j++) base[i * sh + j * sw] = o[i * 4 + j][k]; \
        }                                                                                  \
    } while (0)

/* Unaligned vector loads and stores (memcpy compiles to one move). */
#define LOADV(V, p) ({ V v_; memcpy(&v_, (p), sizeof v_); v_; })
/* c ? a : b lane by lane, c a comparison's all-ones or zero lanes. */
#define SELECT(VI, c, a, b) ({ const VI c_ = (VI)(c); (__typeof__(a))((c_ & (VI)(a)) | (~c_ & (VI)(b))); })
#define STOREV(V, p, x) do { const V x_ = (x); memcpy((p), &x_, sizeof x_); } while (0)

typedef void (*input_fn)(const float *x, const mk_winograd_geom *g, const lanes *ln, float *v,
                         int64_t point_stride);
typedef void (*output_fn)(const float *m, int64_t point_stride, float bias,
                          const mk_winograd_store *st, const mk_winograd_geom *g,
                          const lanes *ln, float *y);

#define DEFINE_TRANSFORMS(SUFFIX, VL, TARGET)                                              \
    typedef float vec_##SUFFIX __attribute__((vector_size(VL * sizeof(float))));           \
    typedef int32_t veci_##SUFFIX __attribute__((vector_size(VL * sizeof(float))));        \
    TARGET static void input_##SUFFIX(const float *restrict x, const mk_winograd_geom *g,  \
                                      const lanes *ln, float *restrict v,                  \
                                      int64_t point_stride)                                \
    {                                                                                      \
        float d[36][VL];                                                                   \
        GATHER_BODY(VL);                                                                   \
        INPUT_TX_BODY(vec_##SUFFIX);                                                       \
    }                                                                                      \
    TARGET static void output_##SUFFIX(const float *restrict m, int64_t point_stride,      \
                                       float bias, const mk_winograd_store *st,            \
                                       const mk_winograd_geom *g, const lanes *ln,         \
                                       float *restrict y)                                  \
    {                                                                                      \
        OUTPUT_TX_BODY(vec_##SUFFIX, veci_##SUFFIX, VL);                                                  \
    }

DEFINE_TRANSFORMS(portable, 8, )
#if defined(__x86_64__) || defined(__i386__)
#define MK_WINO_X86 1
DEFINE_TRANSFORMS(avx2, 8, __attribute__((target("avx2,fma"))))
DEFINE_TRANSFORMS(avx512, 16, __attribute__((target("avx512f,avx512vl,avx512dq,fma"))))
#endif

typedef struct wino_isa {
    int vl;
    input_fn input;
    output_fn output;
} wino_isa;

static wino_isa isa = {8, input_portable, output_portable};
static pthread_once_t isa_once = PTHREAD_ONCE_INIT;

static void pick_isa(void)
{
#ifdef MK_WINO_X86
    switch (mk_cpu_level()) {
    case MK_ISA_AVX512: isa = (wino_isa){16, input_avx512, output_avx512}; break;
    case MK_ISA_AVX2: isa = (wino_isa){8, input_avx2, output_avx2}; break;
    default: break;
    }
#endif
}

/* ---- one block of tiles ------------------------------------------------------ */

/* The lanes of up to GROUPS_MAX vectors of tiles from tile t0 (of `left`
 * still to do); returns how many tiles they cover. */
static int64_t group_lanes(const mk_winograd_geom *g, int64_t t0, int64_t left, int vl,
                           lanes *ln)
{
    const int64_t n = min64(GROUPS_MAX * vl, left);
    for (int64_t l0 = 0; l0 < n; l0 += vl) lanes_of(g, t0 + l0, n - l0, vl, &ln[l0 / vl]);
    return n;
}

static int64_t v_ld(int64_t tiles) { return (tiles + VL_MAX - 1) / VL_MAX * VL_MAX; }

size_t mk_winograd_v_floats(int64_t cin, int64_t tiles)
{
    return (size_t)(P * (cin * v_ld(tiles) + POINT_SKEW));
}

void mk_winograd_input(const float *x, int64_t cin, int64_t c0, int64_t cn,
                       const mk_winograd_geom *g, int64_t t0, int64_t nt, float *v)
{
    if (nt <= 0 || cn <= 0) return;
    pthread_once(&isa_once, pick_isa);
    const wino_isa k = isa;
    const int64_t ld = v_ld(nt), in_plane = g->h.in * g->w.in;
    const int64_t v_point = cin * ld + POINT_SKEW;
    /* Channel by channel over all the lane groups, so that each plane of x
     * is read from L2 while its tiles go by: lane groups outermost walked
     * every plane per group, from L3 (and was half of a 512-channel layer's
     * time). */
    lanes ln[GROUPS_MAX];
    for (int64_t s0 = 0; s0 < nt; s0 += GROUPS_MAX * k.vl) {
        const int64_t s_n = group_lanes(g, t0 + s0, nt - s0, k.vl, ln);
        for (int64_t c = c0; c < c0 + cn; c++)
            for (int64_t l0 = 0; l0 < s_n; l0 += k.vl)
                k.input(x + c * in_plane, g, &ln[l0 / k.vl], v + c * ld + s0 + l0, v_point);
    }
}

size_t mk_winograd_output_bytes(int64_t mn, int64_t tiles)
{
    return (size_t)(P * (mn * v_ld(tiles) + POINT_SKEW)) * sizeof(float) +
           mk_sgemm_scratch_bytes(v_ld(tiles)) + 64;
}

void mk_winograd_output(const float *v, int64_t cin, int64_t nt, int64_t j0, int64_t nj,
                        const float *u, int64_t cout, int64_t m0, int64_t mn,
                        const mk_winograd_geom *g, int64_t t0, const mk_winograd_store *st,
                        float *y, void *scratch)
{
    if (nj <= 0 || mn <= 0) return;
    pthread_once(&isa_once, pick_isa);
    const wino_isa k = isa;
    const int64_t v_ldv = v_ld(nt), ld = v_ld(nj), out_plane = g->h.out * g->w.out;
    const int64_t v_point = cin * v_ldv + POINT_SKEW, m_point = mn * ld + POINT_SKEW;
    float *m = scratch;                   /* [36][mn][ld], m_point apart */
    void *gemm_scratch = m + P * m_point;
    const mk_packed_a ua = {NULL, cout, cin};
    const size_t point_floats = mk_sgemm_packed_a_floats(cout, cin);
    for (int xi = 0; xi < P; xi++) {
        mk_packed_a a = ua;
        a.data = u + xi * point_floats;
        mk_sgemm_packed(&a, m0, mn, 0, cin, v + xi * v_point + j0, v_ldv, nj, m + xi * m_point, ld,
                        false, NULL, gemm_scratch);
    }
    lanes ln[GROUPS_MAX];
    for (int64_t s0 = 0; s0 < nj; s0 += GROUPS_MAX * k.vl) {
        const int64_t s_n = group_lanes(g, t0 + j0 + s0, nj - s0, k.vl, ln);
        for (int64_t o = 0; o < mn; o++)
            for (int64_t l0 = 0; l0 < s_n; l0 += k.vl)
                k.output(m + o * ld + s0 + l0, m_point, st->bias ? st->bias[o] : 0.0f, st, g,
                         &ln[l0 / k.vl], y + o * out_plane);
    }
}
