/*
 * Convolution kernels shared by ops/conv.c: geometry, im2col / col2im over
 * tiles of flattened positions, and the direct depthwise kernel.
 *
 * Every kernel sees three spatial dimensions: 1-D and 2-D problems are padded
 * in front with unit dims (size 1, kernel 1, stride 1, pad 0), so one code
 * path serves all ranks.  The kernels are portable C written so the compiler
 * can vectorize the unit-stride inner loops; the depthwise kernel also has
 * AVX2 and AVX-512 variants in the same binary, chosen once at run time from
 * mk_cpu_level() (MASKD_CPU lowers the choice).
 */
#ifndef MK_KERNELS_H
#define MK_KERNELS_H

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
 * Direct depthwise convolution of one plane: y[iter grid] = bias + sum over
 * taps of w[tap] * x[touch grid], taps in padding skipped row by row and
 * column ranges clipped, so dilated convs on small maps cost only the taps
 * that land.  No activation (the caller's epilogue does it).
 */
void mk_depthwise_plane(const float *x, const float *w, float bias,
                        const mk_conv_geom *g, float *y);

#endif
