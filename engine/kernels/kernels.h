/*
 * Convolution kernels shared by ops/conv.c: geometry, im2col / col2im over
 * tiles of flattened positions, the direct depthwise kernel, and the sgemm
 * that runs on weights packed at load.
 *
 * Every kernel sees three spatial dimensions: 1-D and 2-D problems are padded
 * in front with unit dims (size 1, kernel 1, stride 1, pad 0), so one code
 * path serves all ranks.  The kernels are portable C written so the compiler
 * can vectorize the unit-stride inner loops; the depthwise kernel and the
 * sgemm also have AVX2 and AVX-512 variants in the same binary, chosen once
 * at run time from mk_cpu_level() (MASKD_CPU lowers the choice).
 */
#ifndef MK_KERNELS_H
#define MK_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { MK_CONV_DIMS = 3 };

/*
 * A convolution seen from the grid that is walked ("iter") to the grid that
 * taps address ("touch"): iterated position o and tap k address
 *     o * stride - pad + k * dilation
 * in the touched grid.  For Conv, iter = output and touch = input; for
 * ConvTranspose (col2im), iter = input and touch = output, pad being the
 * output's begin padding.  The same arithmetic serves both.
 */
typedef struct mk_conv_geom {
    int64_t iter[MK_CONV_DIMS];
    int64_t touch[MK_CONV_DIMS];
    int64_t kernel[MK_CONV_DIMS];
    int64_t stride[MK_CONV_DIMS];
    int64_t dilation[MK_CONV_DIMS];
    int64_t pad[MK_CONV_DIMS];
} mk_conv_geom;

/* A box [lo, hi) per dim covering the taps that land inside the touched grid
 * for at least one position of a tile (liveness is separable by dim; the box
 * may include a dead tap between live ones when stride > dilation). */
typedef struct mk_tap_box {
    int64_t lo[MK_CONV_DIMS], hi[MK_CONV_DIMS];
} mk_tap_box;

int64_t mk_conv_iter_size(const mk_conv_geom *g);
int64_t mk_conv_touch_size(const mk_conv_geom *g);
int64_t mk_conv_tap_count(const mk_conv_geom *g);
int64_t mk_tap_box_count(const mk_tap_box *box);

/* Floor division for possibly negative numerators (positive d). */
int64_t mk_floor_div(int64_t n, int64_t d);

/* The iterated indices [*lo, *hi) along `dim` for which tap k lands inside
 * the touched grid (empty: *lo == *hi). */
void mk_conv_tap_span(const mk_conv_geom *g, int dim, int64_t k, int64_t *lo,
                      int64_t *hi);

/* Live taps for the iterated positions [p0, p1) (flattened).  Conservative
 * per dim: a dim whose index varies inside the tile counts its whole range
 * in that dim. */
void mk_conv_live_taps(const mk_conv_geom *g, int64_t p0, int64_t p1,
                       mk_tap_box *box);
/* The same for a rectangle: rows [r0, r1) of the flattened outer dims
 * (d, h) times columns [w0, w1) of the innermost. */
void mk_conv_live_taps_rect(const mk_conv_geom *g, int64_t r0, int64_t r1,
                            int64_t w0, int64_t w1, mk_tap_box *box);

/*
 * Conv im2col for positions [p0, p1) of the output grid, for the live taps
 * only.  x is [channels][touch grid]; col gets (live taps × channels) rows of
 * p1 - p0 floats, row = live_tap_index * channels + c (tap-major, taps in
 * row-major kernel order), so a run of consecutive taps is a contiguous
 * K-range of weights packed [cout][tap][cin].  Positions in padding read 0.
 */
void mk_im2col_tile(const float *x, int64_t channels, const mk_conv_geom *g,
                    int64_t p0, int64_t p1, const mk_tap_box *live, float *col);

/* im2col of a rectangle (see mk_conv_live_taps_rect): col gets
 * (r1 - r0) * (w1 - w0) columns, rows as for mk_im2col_tile. */
void mk_im2col_rect(const float *x, int64_t channels, const mk_conv_geom *g,
                    int64_t r0, int64_t r1, int64_t w0, int64_t w1,
                    const mk_tap_box *live, float *col);

/*
 * ConvTranspose col2im for input positions [p0, p1): col holds
 * (channels × taps) rows of p1 - p0 floats, row = c * taps + tap (ONNX's
 * ConvTranspose weight order); each value is added into y ([channels][touch
 * grid]) at the position its tap addresses, when that position exists.
 */
void mk_col2im_tile_add(const float *col, int64_t channels,
                        const mk_conv_geom *g, int64_t p0, int64_t p1,
                        float *y);

/*
 * A fused activation: an mk_act (engine/mk.h) and its parameters.
 * mk_act_span applies one in place over n floats with the widest vectors
 * the CPU has, for the activations mk_act_span_supports (all that fuse);
 * mk_act_map does the same from x into y.
 */
typedef struct mk_act_spec {
    int act; /* mk_act */
    float alpha, beta;
} mk_act_spec;

bool mk_act_span_supports(int act);
void mk_act_span(float *x, int64_t n, const mk_act_spec *a);
void mk_act_map(const float *x, float *y, int64_t n, const mk_act_spec *a);

/* A softmax row's two passes: the largest of x[0..n) (NaN aside), then
 * y = e^(x - shift) (act_simd.h's mk_exp_scalar, for arguments that stay
 * moderate; y may be x) and the sum of y, in float lanes within blocks and
 * double across them. */
float mk_max_span(const float *x, int64_t n);
double mk_exp_sum_span(const float *x, float *y, int64_t n, float shift);

/*
 * Direct depthwise convolution: y[iter grid] = act(bias + sum over taps of
 * w[tap] * x[touch grid]), taps in padding skipped row by row and column
 * ranges clipped, so dilated convs on small maps cost only the taps that
 * land.  The activation is applied as each vector is stored; it must be one
 * mk_act_span_supports, any other is the caller's to apply.
 */
/* n_planes planes at once (the geometry worked out once): plane i reads
 * x + i * x_stride with weights w + i * w_stride and bias[i] (bias may be
 * NULL: 0) and writes y + i * y_stride. */
void mk_depthwise_planes(const float *x, int64_t x_stride, const float *w, int64_t w_stride,
                         const float *bias, int64_t n_planes, const mk_conv_geom *g,
                         const mk_act_spec *ep, float *y, int64_t y_stride);
/* Planes per call that let mk_depthwise_planes interleave whole groups of
 * sixteen for this geometry (AVX-512, small maps): 16, or 1 where it walks
 * plane by plane anyway, and a caller splitting planes over threads can
 * hand them out one at a time. */
int64_t mk_depthwise_run(const mk_conv_geom *g);

/*
 * A conv with few input channels and stride 2 (a network's stem), direct:
 * output rows [oh0, oh1) of every output channel, weights in ONNX's
 * [cout][cin][taps] order, the activation applied as for the depthwise
 * kernel.  Only where mk_stem_conv_takes the geometry (AVX-512, 2-D, stride
 * 2 both ways, at most MK_STEM_MAX_CIN input channels).
 */
enum { MK_STEM_MAX_CIN = 4 };
bool mk_stem_conv_takes(const mk_conv_geom *g, int64_t cin, int64_t cout);
void mk_stem_conv_rows(const float *x, int64_t s_in, int64_t cin, const float *w,
                       const float *bias, int64_t cout, const mk_conv_geom *g,
                       const mk_act_spec *ep, float *y, int64_t s_out, int64_t oh0,
                       int64_t oh1);

/*
 * sgemm with A packed once (kernels/sgemm.c), for conv weights:
 *     C[m0, m0 + mn) x [0, n) = (accumulate ? C : 0) + A[m0.., k0..k0+kn) B
 * then the epilogue, B being kn x n.  A is packed into panels of
 * MK_SGEMM_MR rows, [panel][k][MR], the same for every instruction set.
 * Single-threaded: callers split the work.
 */
enum { MK_SGEMM_MR = 8 };

typedef struct mk_packed_a {
    const float *data; /* mk_sgemm_packed_a_floats(m, k) floats */
    int64_t m, k;
} mk_packed_a;

/* B: row k starts at rows[k] when rows is not NULL, else at data + k * ld.
 * Its n columns are contiguous, or, when 0 < seg_w < n, come in segments of
 * seg_w floats that start seg_stride apart (a rectangle of a plane: rows of
 * the rectangle are the segments). */
typedef struct mk_sgemm_b {
    const float *data;
    int64_t ld;
    const float *const *rows;
    int64_t seg_w, seg_stride;
} mk_sgemm_b;

typedef enum mk_sgemm_clamp {
    MK_SGEMM_CLAMP_NONE,
    MK_SGEMM_CLAMP_RELU, /* x > 0 ? x : 0, as the Relu op (NaN -> 0) */
    MK_SGEMM_CLAMP_CLIP, /* min(max(x, lo), hi), as the Clip op */
} mk_sgemm_clamp;

/* Applied to C as it is stored: + bias[row - m0] (bias may be NULL), then the
 * clamp. */
typedef struct mk_sgemm_epilogue {
    const float *bias;
    mk_sgemm_clamp clamp;
    float lo, hi;
} mk_sgemm_epilogue;

size_t mk_sgemm_packed_a_floats(int64_t m, int64_t k);
/* Packs A (m x k, row stride lda).  taps > 1 reorders K: a's columns are
 * channel-major [channel][tap] (a conv weight), the packed K is tap-major
 * (k = tap * channels + channel), so a run of taps is a contiguous K range;
 * taps = 1 packs a plain matrix.  k must be a multiple of taps. */
void mk_sgemm_pack_a(const float *a, int64_t lda, int64_t m, int64_t k, int64_t taps,
                     float *packed);
/* The same for an A given as its transpose: at is k x m, row stride ldat
 * (ConvTranspose's weights, a Gemm's B without transB).  No tap reordering. */
void mk_sgemm_pack_a_t(const float *at, int64_t ldat, int64_t m, int64_t k, float *packed);
/* Scratch mk_sgemm_packed needs for n columns (any K), no alignment needed. */
size_t mk_sgemm_scratch_bytes(int64_t n);
/* The product above; ep NULL for none.  c must not overlap B or scratch. */
void mk_sgemm_packed_b(const mk_packed_a *a, int64_t m0, int64_t mn, int64_t k0, int64_t kn,
                       const mk_sgemm_b *b, int64_t n, float *c, int64_t ldc, bool accumulate,
                       const mk_sgemm_epilogue *ep, void *scratch);
/* The same for a plain row-major B (row stride ldb). */
void mk_sgemm_packed(const mk_packed_a *a, int64_t m0, int64_t mn, int64_t k0, int64_t kn,
                     const float *b, int64_t ldb, int64_t n, float *c, int64_t ldc,
                     bool accumulate, const mk_sgemm_epilogue *ep, void *scratch);

/*
 * Winograd F(4x4, 3x3) for 3x3 stride-1 2-D convs, any dilation and padding
 * (kernels/winograd.c).  U, the transformed weights, is packed once for
 * mk_sgemm_packed: 36 matrices of cout x cin, point xi's at
 * u + xi * mk_sgemm_packed_a_floats(cout, cin).
 */
enum { MK_WINO_OUT = 4, MK_WINO_IN = 6, MK_WINO_POINTS = 36 };

/* One spatial axis: sizes, begin pad, dilation, and its tile count (tiles of
 * 4 outputs of each residue modulo the dilation, see winograd.c). */
typedef struct mk_wino_axis {
    int64_t in, out, pad, dil, tiles;
} mk_wino_axis;

typedef struct mk_winograd_geom {
    mk_wino_axis h, w; /* tiles: h.tiles * w.tiles, row-major */
} mk_winograd_geom;

void mk_winograd_axis_init(mk_wino_axis *ax, int64_t in, int64_t out, int64_t pad, int64_t dil);

size_t mk_winograd_u_floats(int64_t cout, int64_t cin);
/* U of w ([cout][cin][3][3]) into u (mk_winograd_u_floats floats). */
void mk_winograd_pack_u(const float *w, int64_t cout, int64_t cin, float *u);

/* What the output transform applies as it stores: + bias[channel - m0]
 * (bias may be NULL), the clamp, then post over the values when not NULL. */
typedef struct mk_winograd_store {
    const float *bias;
    mk_sgemm_clamp clamp;
    float lo, hi;
    void (*post)(float *v, int64_t n, const void *arg);
    const void *post_arg;
} mk_winograd_store;

/* A conv runs in two steps, so that threads can share the input transform:
 * mk_winograd_input transforms tiles [t0, t0 + nt) of one image into V
 * ([36][cin][tiles], mk_winograd_v_floats), split over input channels;
 * mk_winograd_output then multiplies V by U and transforms back, split over
 * output channels and tiles.  Calls on disjoint channel ranges (or output
 * ranges) may run at once. */
size_t mk_winograd_v_floats(int64_t cin, int64_t tiles);
/* Input channels [c0, c0 + cn) of x ([cin][in plane]) into v. */
void mk_winograd_input(const float *x, int64_t cin, int64_t c0, int64_t cn,
                       const mk_winograd_geom *g, int64_t t0, int64_t nt, float *v);
/* Scratch mk_winograd_output needs for mn output channels and up to `tiles`
 * tiles. */
size_t mk_winograd_output_bytes(int64_t mn, int64_t tiles);
/* Output channels [m0, m0 + mn) of tiles [t0 + j0, t0 + j0 + nj), from v
 * as mk_winograd_input wrote it for tiles [t0, t0 + nt): y is output channel
 * m0's plane of [cout][out plane]. */
void mk_winograd_output(const float *v, int64_t cin, int64_t nt, int64_t j0, int64_t nj,
                        const float *u, int64_t cout, int64_t m0, int64_t mn,
                        const mk_winograd_geom *g, int64_t t0, const mk_winograd_store *st,
                        float *y, void *scratch);

#endif
