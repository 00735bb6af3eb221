/*
 * Helpers shared by several op families (engine/mk.h has the ones every op
 * uses).  Mostly for the families that move data by element size whatever
 * its type (shape.c, layout.c, reduce.c): they read shape-like integer
 * inputs, normalize axes and convert elements between dtypes the same way.
 */
#ifndef MK_OPS_COMMON_H
#define MK_OPS_COMMON_H

#include "../mk.h"

static inline int64_t mk_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
/* n rounded up to a multiple of 64 (cache lines; mk_aligned_alloc's alignment). */
static inline size_t mk_align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* dims[from] * ... * dims[to - 1] (1 when from >= to). */
int64_t mk_dims_product(const int64_t *dims, int from, int to);

/* Input i's element type, MASKD_UNDEFINED when it is omitted or not known
 * yet: at load only graph inputs and initializers have one.  prepare checks
 * the known ones, so that a model with a type an op cannot take fails at
 * load rather than on every request. */
maskd_dtype mk_known_dtype(const mk_ctx *ctx, int i);

/* 8- to 64-bit signed and unsigned integers (not bool). */
bool mk_is_int_dtype(maskd_dtype t);

/* Input i into *out for ops that copy by element size: an error when it is
 * missing or of a type without an element size, MK_DYNAMIC while its shape
 * is unknown. */
int mk_need_data_input(const mk_ctx *ctx, int i, const mk_tensor **out);

/* The values of a 0-D or 1-D integer tensor (Reshape's shape, Slice's starts,
 * ...) into vals, at most cap of them; `what` names it in errors.
 * MK_DYNAMIC while its shape or values are not known. */
int mk_read_int_list(const mk_ctx *ctx, const mk_tensor *t, const char *what, int64_t *vals,
                     int cap, int *count);

/* axis in [-rank, rank) into *out in [0, rank). */
int mk_normalize_axis(const mk_ctx *ctx, int64_t axis, int rank, int *out);
/* The same for axes[0..n) in place; an axis may not repeat. */
int mk_normalize_axes(const mk_ctx *ctx, int64_t *axes, int n, int rank);

/* Fills n elements of esize bytes with copies of elem. */
void mk_fill_elements(void *dst, const void *elem, size_t esize, int64_t n);

/* Rows per parallel chunk so that a chunk moves at least ~32 KB. */
int64_t mk_row_grain(int64_t row_elems, size_t esize);

float mk_half_to_float(uint16_t h);
/* Rounds to nearest even, as numpy's astype(float16) does. */
uint16_t mk_float_to_half(float f);

/* Out-of-range float to int conversion is undefined in C; saturate instead
 * (the ONNX spec leaves the result undefined too).  NaN gives 0. */
int64_t mk_f64_to_i64(double v);

/* Elements [at, at + n) of dst, of type t, from int64 / double values, each
 * converted as a C cast would (saturating from double, != 0 for bool). */
void mk_store_i64(maskd_dtype t, void *dst, int64_t at, int n, const int64_t *vals);
void mk_store_f64(maskd_dtype t, void *dst, int64_t at, int n, const double *vals);

/* ---- sliding windows: Conv, ConvTranspose and the pools ---- */

typedef enum mk_auto_pad {
    MK_PAD_NOTSET, /* explicit pads */
    MK_PAD_SAME_UPPER,
    MK_PAD_SAME_LOWER,
    MK_PAD_VALID,
} mk_auto_pad;

/* The auto_pad attribute ("" counts as NOTSET, as some exporters write it). */
int mk_parse_auto_pad(const mk_ctx *ctx, mk_auto_pad *out);

/* Begin pad of SAME_UPPER / SAME_LOWER padding of `total`: the odd pixel
 * goes at the end for SAME_UPPER, at the start otherwise. */
int64_t mk_same_pad_begin(mk_auto_pad mode, int64_t total);

/* One spatial axis of a window spanning `span` input pixels ((k - 1) * d + 1)
 * that slides with stride s over `in`: the output size, and the pads
 * *pad_begin / *pad_end (read for NOTSET, computed for SAME_*, 0 for VALID).
 * ceil_mode (the pools, NOTSET only) rounds the output size up but drops a
 * last window that would start in the end padding, as PyTorch and ONNX do.
 * false when the window does not fit the (padded) input. */
bool mk_window_axis(mk_auto_pad mode, int64_t in, int64_t span, int64_t s, bool ceil_mode,
                    int64_t *pad_begin, int64_t *pad_end, int64_t *out);

#endif
