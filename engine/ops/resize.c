/*
 * Resize (opsets 10, 11, 13) and Upsample (7, 9).
 *
 * Interpolation is separable, so each axis gets a table once per call: for
 * every output coordinate the input offsets of its taps (1 nearest, 2 linear,
 * 4 cubic) and their weights.  Axes the resize leaves alone (usually N and C)
 * collapse to a single tap, so a 4-D bilinear resize costs two source rows per
 * output row and nothing per channel.  Output rows are independent and are
 * what the threads share.
 *
 * Coordinates follow the ONNX reference implementation exactly (double
 * precision, the "length_resized" of align_corners and tf_crop_and_resize is
 * input * scale when scales are given), because the backend tests encode it.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

typedef enum interp_mode { MODE_NEAREST, MODE_LINEAR, MODE_CUBIC } interp_mode;

typedef enum coord_mode {
    COORD_HALF_PIXEL,
    COORD_PYTORCH_HALF_PIXEL,
    COORD_ALIGN_CORNERS,
    COORD_ASYMMETRIC,
    COORD_TF_HALF_PIXEL_FOR_NN,
    COORD_TF_CROP_AND_RESIZE,
} coord_mode;

typedef enum nearest_rule {
    NEAREST_ROUND_PREFER_FLOOR,
    NEAREST_ROUND_PREFER_CEIL,
    NEAREST_FLOOR,
    NEAREST_CEIL,
    /* Upsample and Resize-10 predate nearest_mode; ONNX Runtime rounds up
     * when shrinking and down when growing, and the old tests agree. */
    NEAREST_LEGACY,
} nearest_rule;

/* Where the op finds its target size. */
typedef enum param_layout {
    PARAMS_ATTR_SCALES,    /* Upsample-7: attribute scales */
    PARAMS_INPUT_SCALES,   /* Upsample-9, Resize-10: X, scales */
    PARAMS_ROI_SCALES_SIZES, /* Resize-11+: X, roi, scales, sizes */
} param_layout;

typedef struct resize_attrs {
    interp_mode mode;
    coord_mode coord;
    nearest_rule nearest;
    double cubic_a;
    bool exclude_outside;
    float extrapolation;
    param_layout layout;
    int n_attr_scales;
    float attr_scales[MASKD_MAX_DIMS];
} resize_attrs;

typedef struct axis_plan {
    int64_t in, out;
    double scale;          /* output / input as the coordinate maths sees it */
    double length_resized; /* input * scale: not rounded, as in the reference */
    double roi_start, roi_end;
} axis_plan;

typedef struct resize_plan {
    int rank;
    axis_plan ax[MASKD_MAX_DIMS];
} resize_plan;

/* ---- attributes --------------------------------------------------------- */

static int parse_mode(mk_ctx *ctx, resize_attrs *a, bool cubic_allowed)
{
    const char *mode = mk_attr_str(ctx->node, "mode", "nearest");
    if (!strcmp(mode, "nearest")) a->mode = MODE_NEAREST;
    else if (!strcmp(mode, "linear") || !strcmp(mode, "bilinear")) a->mode = MODE_LINEAR;
    else if (cubic_allowed && !strcmp(mode, "cubic")) a->mode = MODE_CUBIC;
    else return mk_op_fail(ctx, MASKD_ERR_INVALID, "unknown mode '%s'", mode);
    return MASKD_OK;
}

static int parse_modern(mk_ctx *ctx, resize_attrs *a)
{
    const mk_node *n = ctx->node;
    int rc = parse_mode(ctx, a, true);
    if (rc) return rc;

    static const struct { const char *name; coord_mode mode; } coords[] = {
        {"half_pixel", COORD_HALF_PIXEL},
        {"pytorch_half_pixel", COORD_PYTORCH_HALF_PIXEL},
        {"align_corners", COORD_ALIGN_CORNERS},
        {"asymmetric", COORD_ASYMMETRIC},
        {"tf_half_pixel_for_nn", COORD_TF_HALF_PIXEL_FOR_NN},
        {"tf_crop_and_resize", COORD_TF_CROP_AND_RESIZE},
    };
    const char *coord = mk_attr_str(n, "coordinate_transformation_mode", "half_pixel");
    size_t i = 0;
    while (i < sizeof coords / sizeof coords[0] && strcmp(coords[i].name, coord)) i++;
    if (i == sizeof coords / sizeof coords[0])
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED,
                          "unsupported coordinate_transformation_mode '%s'", coord);
    a->coord = coords[i].mode;

    const char *nearest = mk_attr_str(n, "nearest_mode", "round_prefer_floor");
    if (!strcmp(nearest, "round_prefer_floor")) a->nearest = NEAREST_ROUND_PREFER_FLOOR;
    else if (!strcmp(nearest, "round_prefer_ceil")) a->nearest = NEAREST_ROUND_PREFER_CEIL;
    else if (!strcmp(nearest, "floor")) a->nearest = NEAREST_FLOOR;
    else if (!strcmp(nearest, "ceil")) a->nearest = NEAREST_CEIL;
    else return mk_op_fail(ctx, MASKD_ERR_INVALID, "unknown nearest_mode '%s'", nearest);

    a->cubic_a = mk_attr_float(n, "cubic_coeff_a", -0.75f);
    int64_t exclude = mk_attr_int(n, "exclude_outside", 0);
    if (exclude != 0 && exclude != 1)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "exclude_outside must be 0 or 1");
    a->exclude_outside = exclude;
    a->extrapolation = mk_attr_float(n, "extrapolation_value", 0.0f);

    /* Opset 18 additions, accepted only at their neutral values. */
    if (mk_attr_int(n, "antialias", 0) != 0)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "antialias is not supported");
    if (mk_attr_find(n, "axes"))
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "the axes attribute is not supported");
    const char *policy = mk_attr_str(n, "keep_aspect_ratio_policy", "stretch");
    if (strcmp(policy, "stretch"))
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED,
                          "keep_aspect_ratio_policy '%s' is not supported", policy);
    return MASKD_OK;
}

static int store_state(mk_ctx *ctx, const resize_attrs *a)
{
    resize_attrs *state = malloc(sizeof *state);
    if (!state) return mk_op_fail(ctx, MASKD_ERR_NOMEM, "out of memory");
    *state = *a;
    ctx->node->state = state;
    return MASKD_OK;
}

/* Upsample and Resize-10: only a mode, with fixed legacy semantics. */
static int parse_legacy(mk_ctx *ctx, param_layout layout, resize_attrs *a)
{
    memset(a, 0, sizeof *a);
    a->layout = layout;
    a->coord = COORD_ASYMMETRIC;
    a->nearest = NEAREST_LEGACY;
    a->cubic_a = -0.75;
    return parse_mode(ctx, a, false);
}

static int upsample7_prepare(mk_ctx *ctx)
{
    resize_attrs a;
    int rc = parse_legacy(ctx, PARAMS_ATTR_SCALES, &a);
    if (rc) return rc;
    int n = mk_attr_floats(ctx->node, "scales", a.attr_scales, MASKD_MAX_DIMS);
    if (n < 1) return mk_op_fail(ctx, MASKD_ERR_INVALID, "attribute scales is required");
    if (n > MASKD_MAX_DIMS)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "%d scales; at most %d axes", n,
                          MASKD_MAX_DIMS);
    a.n_attr_scales = n;
    return store_state(ctx, &a);
}

static int legacy_input_prepare(mk_ctx *ctx)
{
    resize_attrs a;
    int rc = parse_legacy(ctx, PARAMS_INPUT_SCALES, &a);
    return rc ? rc : store_state(ctx, &a);
}

static int resize11_prepare(mk_ctx *ctx)
{
    resize_attrs a;
    memset(&a, 0, sizeof a);
    a.layout = PARAMS_ROI_SCALES_SIZES;
    int rc = parse_modern(ctx, &a);
    if (rc) return rc;
    return store_state(ctx, &a);
}

/* ---- target shape ------------------------------------------------------- */

/* An omitted input and an empty tensor mean the same ("" vs. []). */
static bool given(const mk_tensor *t)
{
    return t && (t->ndim < 0 || mk_numel(t) > 0);
}

static int read_scales(mk_ctx *ctx, const resize_attrs *a, const mk_tensor *x,
                       const mk_tensor *scales, resize_plan *plan)
{
    double values[MASKD_MAX_DIMS];
    if (a->layout == PARAMS_ATTR_SCALES) {
        if (a->n_attr_scales != x->ndim)
            return mk_op_fail(ctx, MASKD_ERR_SHAPE, "%d scales for a %d-D input", a->n_attr_scales,
                              x->ndim);
        for (int i = 0; i < x->ndim; i++) values[i] = a->attr_scales[i];
    } else {
        if (scales->ndim < 0 || !scales->data) return MK_DYNAMIC;
        if (mk_numel(scales) != x->ndim)
            return mk_op_fail(ctx, MASKD_ERR_SHAPE, "%lld scales for a %d-D input",
                              (long long)mk_numel(scales), x->ndim);
        if (scales->dtype != MASKD_FLOAT && scales->dtype != MASKD_DOUBLE)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "scales must be float, got %s",
                              maskd_dtype_name(scales->dtype));
        for (int i = 0; i < x->ndim; i++) values[i] = mk_get_f64(scales, i);
    }
    for (int i = 0; i < x->ndim; i++) {
        axis_plan *ax = &plan->ax[i];
        const double s = values[i];
        if (!(s > 0.0) || !isfinite(s))
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "scale %g on axis %d is not positive", s, i);
        const double length = (double)x->dims[i] * s;
        if (length >= 9.0e15)
            return mk_op_fail(ctx, MASKD_ERR_SHAPE, "scale %g on axis %d is too large", s, i);
        ax->in = x->dims[i];
        ax->out = (int64_t)floor(length);
        ax->scale = s;
        ax->length_resized = length;
    }
    return MASKD_OK;
}

static int read_sizes(mk_ctx *ctx, const mk_tensor *x, const mk_tensor *sizes,
                      resize_plan *plan)
{
    if (sizes->ndim < 0 || !sizes->data) return MK_DYNAMIC;
    if (mk_numel(sizes) != x->ndim)
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "%lld sizes for a %d-D input",
                          (long long)mk_numel(sizes), x->ndim);
    for (int i = 0; i < x->ndim; i++) {
        axis_plan *ax = &plan->ax[i];
        const int64_t out = mk_get_i64(sizes, i);
        if (out < 0 || out > ((int64_t)1 << 40))
            return mk_op_fail(ctx, MASKD_ERR_SHAPE, "size %lld on axis %d is out of range",
                              (long long)out, i);
        ax->in = x->dims[i];
        ax->out = out;
        ax->scale = ax->in > 0 ? (double)out / (double)ax->in : 1.0;
        ax->length_resized = (double)out;
    }
    return MASKD_OK;
}

/* Fills plan from the inputs; MK_DYNAMIC when scales or sizes are not known
 * yet.  roi values are read only when `with_roi` (run time): no shape needs
 * them, so a computed roi must not make the node dynamic. */
static int build_plan(mk_ctx *ctx, const resize_attrs *a, bool with_roi, resize_plan *plan)
{
    mk_tensor *x;
    char shape[128];
    int rc = mk_need_input(ctx, 0, &x);
    if (rc) return rc;
    if (x->ndim < 1)
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "input must have at least one axis, got %s",
                          mk_shape_str(x, shape, sizeof shape));
    plan->rank = x->ndim;
    for (int i = 0; i < x->ndim; i++) {
        plan->ax[i].roi_start = 0.0;
        plan->ax[i].roi_end = 1.0;
    }

    if (a->layout == PARAMS_ATTR_SCALES) {
        rc = read_scales(ctx, a, x, NULL, plan);
    } else if (a->layout == PARAMS_INPUT_SCALES) {
        mk_tensor *scales;
        rc = mk_need_input(ctx, 1, &scales);
        if (rc) return rc;
        rc = read_scales(ctx, a, x, scales, plan);
    } else {
        const mk_tensor *scales = mk_input(ctx, 2), *sizes = mk_input(ctx, 3);
        if (given(scales) && given(sizes))
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "only one of scales and sizes may be given");
        if (given(scales)) rc = read_scales(ctx, a, x, scales, plan);
        else if (given(sizes)) rc = read_sizes(ctx, x, sizes, plan);
        else return mk_op_fail(ctx, MASKD_ERR_INVALID, "needs scales or sizes");
    }
    if (rc) return rc;

    for (int i = 0; i < x->ndim; i++)
        if (plan->ax[i].in == 0 && plan->ax[i].out > 0)
            return mk_op_fail(ctx, MASKD_ERR_SHAPE, "cannot resize the empty axis %d of %s to %lld",
                              i, mk_shape_str(x, shape, sizeof shape), (long long)plan->ax[i].out);

    if (a->coord == COORD_TF_CROP_AND_RESIZE) {
        const mk_tensor *roi = mk_input(ctx, 1);
        if (!roi || (roi->ndim >= 0 && mk_numel(roi) != 2 * (int64_t)x->ndim) ||
            (with_roi && !roi->data))
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "tf_crop_and_resize needs roi with %d values",
                              2 * x->ndim);
        if (!with_roi) return MASKD_OK;
        if (roi->dtype != MASKD_FLOAT && roi->dtype != MASKD_DOUBLE)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "roi must be float, got %s",
                              maskd_dtype_name(roi->dtype));
        for (int i = 0; i < x->ndim; i++) {
            plan->ax[i].roi_start = mk_get_f64(roi, i);
            plan->ax[i].roi_end = mk_get_f64(roi, x->ndim + i);
        }
    }
    return MASKD_OK;
}

static int taps_of(interp_mode mode)
{
    return mode == MODE_NEAREST ? 1 : mode == MODE_LINEAR ? 2 : 4;
}


/* Scratch for the per-axis tables. */
static size_t tables_bytes(const resize_plan *plan, int taps)
{
    size_t total = 0;
    for (int i = 0; i < plan->rank; i++) {
        const size_t n = (size_t)plan->ax[i].out;
        total += mk_align64(n * (size_t)taps * sizeof(int64_t));
        total += mk_align64(n * (size_t)taps * sizeof(float));
        total += mk_align64(n);
    }
    return total;
}

static bool dtype_ok(const resize_attrs *a, maskd_dtype t)
{
    if (a->mode != MODE_NEAREST) return t == MASKD_FLOAT;
    switch (t) {
    case MASKD_FLOAT: case MASKD_DOUBLE:
    case MASKD_INT8: case MASKD_UINT8: case MASKD_INT16: case MASKD_UINT16:
    case MASKD_INT32: case MASKD_UINT32: case MASKD_INT64: case MASKD_UINT64:
    case MASKD_BOOL:
        return true;
    case MASKD_FLOAT16:
        /* Copies fine; only extrapolation would need a half conversion. */
        return a->coord != COORD_TF_CROP_AND_RESIZE;
    default:
        return false;
    }
}

static int resize_infer(mk_ctx *ctx)
{
    const resize_attrs *a = ctx->node->state;
    if (!a) return mk_op_fail(ctx, MASKD_ERR_INVALID, "attributes were not prepared");
    resize_plan plan;
    int rc = build_plan(ctx, a, false, &plan);
    if (rc) return rc;
    const mk_tensor *x = ctx->in[0];
    if (!dtype_ok(a, x->dtype))
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "input type %s is not supported in %s mode",
                          maskd_dtype_name(x->dtype),
                          a->mode == MODE_NEAREST ? "nearest"
                          : a->mode == MODE_LINEAR ? "linear" : "cubic");
    mk_tensor *y;
    if ((rc = mk_need_output(ctx, 0, &y))) return rc;
    y->dtype = x->dtype;
    y->ndim = x->ndim;
    for (int i = 0; i < x->ndim; i++) y->dims[i] = plan.ax[i].out;
    ctx->scratch_bytes = tables_bytes(&plan, taps_of(a->mode));
    return MASKD_OK;
}

/* ---- per-axis tables ---------------------------------------------------- */

typedef struct axis_table {
    int taps;               /* 1 on axes the resize leaves alone */
    int64_t *offset;        /* [out * taps]: input index times the axis stride */
    float *weight;          /* [out * taps] */
    uint8_t *outside;       /* [out]: tf_crop_and_resize extrapolates here */
    bool any_outside;
} axis_table;

static double source_coord(const resize_attrs *a, const axis_plan *ax, int64_t x)
{
    const double xr = (double)x, in = (double)ax->in, len = ax->length_resized;
    switch (a->coord) {
    case COORD_PYTORCH_HALF_PIXEL:
        return len > 1.0 ? (xr + 0.5) / ax->scale - 0.5 : 0.0;
    case COORD_ALIGN_CORNERS:
        return len == 1.0 ? 0.0 : xr * (in - 1.0) / (len - 1.0);
    case COORD_ASYMMETRIC:
        return xr / ax->scale;
    case COORD_TF_HALF_PIXEL_FOR_NN:
        return (xr + 0.5) / ax->scale;
    case COORD_TF_CROP_AND_RESIZE: {
        const double span = ax->roi_end - ax->roi_start;
        const double from = ax->roi_start * (in - 1.0);
        if (len == 1.0) return span * (in - 1.0) / 2.0 + from;
        return xr * span * (in - 1.0) / (len - 1.0) + from;
    }
    default:
        return (xr + 0.5) / ax->scale - 0.5;
    }
}

static int64_t nearest_index(const resize_attrs *a, const axis_plan *ax, double src)
{
    const double lo = floor(src);
    switch (a->nearest) {
    case NEAREST_FLOOR: return (int64_t)lo;
    case NEAREST_CEIL: return (int64_t)ceil(src);
    case NEAREST_ROUND_PREFER_CEIL: return (int64_t)(src - lo < 0.5 ? lo : lo + 1.0);
    case NEAREST_LEGACY: return (int64_t)(ax->scale < 1.0 ? ceil(src) : lo);
    default: return (int64_t)(src - lo <= 0.5 ? lo : lo + 1.0);
    }
}

static double cubic_weight(double d, double A)
{
    d = fabs(d);
    if (d <= 1.0) return ((A + 2.0) * d - (A + 3.0)) * d * d + 1.0;
    if (d < 2.0) return ((A * d - 5.0 * A) * d + 8.0 * A) * d - 4.0 * A;
    return 0.0;
}

static inline int64_t clamp_index(int64_t i, int64_t n)
{
    return i < 0 ? 0 : i >= n ? n - 1 : i;
}

/* Carves the table out of *cursor and fills it.  `stride` is the axis's
 * element stride in the input. */
static void build_table(const resize_attrs *a, const axis_plan *ax, int64_t stride,
                        char **cursor, axis_table *t)
{
    const int taps = taps_of(a->mode);
    const size_t n = (size_t)ax->out;
    t->offset = (int64_t *)*cursor;
    *cursor += mk_align64(n * (size_t)taps * sizeof(int64_t));
    t->weight = (float *)*cursor;
    *cursor += mk_align64(n * (size_t)taps * sizeof(float));
    t->outside = (uint8_t *)*cursor;
    *cursor += mk_align64(n);
    t->any_outside = false;

    /* An axis whose every output maps exactly onto the same input index
     * needs one tap; the common N and C axes take this path. */
    bool identity = ax->in == ax->out;
    for (int64_t x = 0; identity && x < ax->out; x++)
        identity = source_coord(a, ax, x) == (double)x;
    if (identity) {
        t->taps = 1;
        for (int64_t x = 0; x < ax->out; x++) {
            t->offset[x] = x * stride;
            t->weight[x] = 1.0f;
            t->outside[x] = 0;
        }
        return;
    }

    t->taps = taps;
    for (int64_t x = 0; x < ax->out; x++) {
        double src = source_coord(a, ax, x);
        int64_t *off = t->offset + x * taps;
        float *w = t->weight + x * taps;
        /* Written so that a NaN from a hostile roi lands outside too. */
        t->outside[x] = a->coord == COORD_TF_CROP_AND_RESIZE &&
                        !(src >= 0.0 && src <= (double)(ax->in - 1));
        if (t->outside[x]) {
            t->any_outside = true;
            for (int k = 0; k < taps; k++) {
                off[k] = 0;
                w[k] = 0.0f;
            }
            continue;
        }
        /* Every tap clamps to the edge beyond this range anyway; clamping
         * the coordinate keeps its conversion to an integer defined. */
        const double limit = (double)ax->in + 4.0;
        src = isnan(src) ? 0.0 : src < -4.0 ? -4.0 : src > limit ? limit : src;
        if (a->mode == MODE_NEAREST) {
            off[0] = clamp_index(nearest_index(a, ax, src), ax->in) * stride;
            w[0] = 1.0f;
            continue;
        }
        const double lo = floor(src), frac = src - lo;
        const int64_t base = (int64_t)lo;
        if (a->mode == MODE_LINEAR) {
            off[0] = clamp_index(base, ax->in) * stride;
            off[1] = clamp_index(base + 1, ax->in) * stride;
            w[0] = (float)(1.0 - frac);
            w[1] = (float)frac;
            continue;
        }
        double cw[4], sum = 0.0;
        for (int k = 0; k < 4; k++) {
            const int64_t i = base - 1 + k;
            cw[k] = cubic_weight(frac - (double)(k - 1), a->cubic_a);
            if (a->exclude_outside && (i < 0 || i >= ax->in)) cw[k] = 0.0;
            sum += cw[k];
            off[k] = clamp_index(i, ax->in) * stride;
        }
        /* exclude_outside renormalises what is left inside the input. */
        const double norm = a->exclude_outside && sum != 0.0 ? 1.0 / sum : 1.0;
        for (int k = 0; k < 4; k++) w[k] = (float)(cw[k] * norm);
    }
}

/* ---- kernels ------------------------------------------------------------ */

typedef struct resize_job {
    int rank;
    int64_t out_dims[MASKD_MAX_DIMS];
    axis_table table[MASKD_MAX_DIMS];
    const void *x;
    void *y;
    float extrapolation;
    uint64_t fill_bits; /* extrapolation value in the element type */
    int64_t in_plane;   /* input elements per (rank-2)-D plane, for the 2-D path */
} resize_job;

/* Output coordinates of row `row` on every axis but the last. */
static inline void row_coords(const resize_job *job, int64_t row, int64_t *coord)
{
    for (int ax = job->rank - 2; ax >= 0; ax--) {
        coord[ax] = row % job->out_dims[ax];
        row /= job->out_dims[ax];
    }
}

static inline bool row_outside(const resize_job *job, const int64_t *coord)
{
    for (int ax = 0; ax < job->rank - 1; ax++)
        if (job->table[ax].any_outside && job->table[ax].outside[coord[ax]]) return true;
    return false;
}

/* y[j] += w * (interpolation of src along the last axis). */
static inline void accumulate_row(float *restrict y, const float *restrict src,
                                  const axis_table *t, int64_t n, float w)
{
    const int64_t *off = t->offset;
    const float *wt = t->weight;
    switch (t->taps) {
    case 1:
        for (int64_t j = 0; j < n; j++) y[j] += w * src[off[j]];
        break;
    case 2:
        for (int64_t j = 0; j < n; j++)
            y[j] += w * (wt[2 * j] * src[off[2 * j]] + wt[2 * j + 1] * src[off[2 * j + 1]]);
        break;
    default:
        for (int64_t j = 0; j < n; j++) {
            const int64_t *o = off + 4 * j;
            const float *c = wt + 4 * j;
            y[j] += w * (c[0] * src[o[0]] + c[1] * src[o[1]] + c[2] * src[o[2]] +
                         c[3] * src[o[3]]);
        }
        break;
    }
}

static void interp_rows_f32(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const resize_job *job = arg;
    const int lead = job->rank - 1;
    const int64_t width = job->out_dims[lead];
    const axis_table *last = &job->table[lead];
    const float *x = job->x;
    int64_t coord[MASKD_MAX_DIMS];
    for (int64_t row = begin; row < end; row++) {
        float *y = (float *)job->y + row * width;
        row_coords(job, row, coord);
        if (row_outside(job, coord)) {
            for (int64_t j = 0; j < width; j++) y[j] = job->extrapolation;
            continue;
        }
        for (int64_t j = 0; j < width; j++) y[j] = 0.0f;
        /* Every combination of the leading axes' taps: one source row each. */
        int pick[MASKD_MAX_DIMS] = {0};
        for (;;) {
            int64_t base = 0;
            float w = 1.0f;
            for (int ax = 0; ax < lead; ax++) {
                const axis_table *t = &job->table[ax];
                const int64_t k = coord[ax] * t->taps + pick[ax];
                base += t->offset[k];
                w *= t->weight[k];
            }
            if (w != 0.0f) accumulate_row(y, x + base, last, width, w);
            int ax = lead - 1;
            while (ax >= 0 && ++pick[ax] == job->table[ax].taps) pick[ax--] = 0;
            if (ax < 0) break;
        }
        if (last->any_outside)
            for (int64_t j = 0; j < width; j++)
                if (last->outside[j]) y[j] = job->extrapolation;
    }
}

/*
 * Linear or cubic over the last two axes with every leading axis untouched:
 * the common NCHW case.  Each source row is interpolated horizontally once
 * into a small per-thread cache and reused by every output row that reads it
 * (an 8x upsample reads each row eight times), so the per-output work is one
 * vertical blend of 2 or 4 cached rows, which vectorises.
 */
enum { ROW_CACHE_WIDTH = 2048, ROW_CACHE_SLOTS = 4 };

typedef struct row_cache {
    float row[ROW_CACHE_SLOTS][ROW_CACHE_WIDTH];
    int64_t key[ROW_CACHE_SLOTS]; /* input offset of the cached row; -1 empty */
} row_cache;

static void horizontal_pass(float *restrict h, const float *restrict src,
                            const axis_table *t, int64_t n)
{
    const int64_t *off = t->offset;
    const float *w = t->weight;
    if (t->taps == 2) {
        for (int64_t j = 0; j < n; j++)
            h[j] = w[2 * j] * src[off[2 * j]] + w[2 * j + 1] * src[off[2 * j + 1]];
        return;
    }
    for (int64_t j = 0; j < n; j++) {
        const int64_t *o = off + 4 * j;
        const float *c = w + 4 * j;
        h[j] = c[0] * src[o[0]] + c[1] * src[o[1]] + c[2] * src[o[2]] + c[3] * src[o[3]];
    }
}

/* The horizontally interpolated row at input offset `key`; evicts a slot
 * holding none of the `needed` rows of the current output row. */
static const float *cached_row(row_cache *c, const float *x, int64_t key,
                               const int64_t *needed, int n_needed,
                               const axis_table *t, int64_t n)
{
    for (int s = 0; s < ROW_CACHE_SLOTS; s++)
        if (c->key[s] == key) return c->row[s];
    int victim = 0;
    for (int s = 0; s < ROW_CACHE_SLOTS; s++) {
        bool wanted = false;
        for (int k = 0; k < n_needed; k++) wanted |= c->key[s] == needed[k];
        if (!wanted) {
            victim = s;
            break;
        }
    }
    horizontal_pass(c->row[victim], x + key, t, n);
    c->key[victim] = key;
    return c->row[victim];
}

static void separable_rows_f32(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const resize_job *job = arg;
    const axis_table *ty = &job->table[job->rank - 2], *tx = &job->table[job->rank - 1];
    const int64_t out_h = job->out_dims[job->rank - 2], width = job->out_dims[job->rank - 1];
    const int taps = ty->taps;
    const float *x = job->x;
    row_cache cache;
    for (int s = 0; s < ROW_CACHE_SLOTS; s++) cache.key[s] = -1;
    for (int64_t row = begin; row < end; row++) {
        const int64_t plane = row / out_h, oy = row % out_h;
        const int64_t *off = ty->offset + taps * oy;
        const float *wy = ty->weight + taps * oy;
        int64_t needed[ROW_CACHE_SLOTS];
        for (int k = 0; k < taps; k++) needed[k] = plane * job->in_plane + off[k];
        float *y = (float *)job->y + row * width;
        /* Exact source rows give the other taps zero weight: skip those. */
        const float *h[ROW_CACHE_SLOTS];
        float w[ROW_CACHE_SLOTS];
        int m = 0;
        for (int k = 0; k < taps; k++) {
            if (wy[k] == 0.0f) continue;
            h[m] = cached_row(&cache, x, needed[k], needed, taps, tx, width);
            w[m++] = wy[k];
        }
        /* One pass per row, whatever the tap count. */
        switch (m) {
        case 0:
            for (int64_t j = 0; j < width; j++) y[j] = 0.0f;
            break;
        case 1:
            for (int64_t j = 0; j < width; j++) y[j] = w[0] * h[0][j];
            break;
        case 2:
            for (int64_t j = 0; j < width; j++) y[j] = w[0] * h[0][j] + w[1] * h[1][j];
            break;
        case 3:
            for (int64_t j = 0; j < width; j++)
                y[j] = w[0] * h[0][j] + w[1] * h[1][j] + w[2] * h[2][j];
            break;
        default:
            for (int64_t j = 0; j < width; j++)
                y[j] = w[0] * h[0][j] + w[1] * h[1][j] + w[2] * h[2][j] + w[3] * h[3][j];
            break;
        }
    }
}

/* Whether the job fits separable_rows_f32. */
static bool fits_separable_2d(const resize_job *job, int taps)
{
    if (job->rank < 2) return false;
    const axis_table *ty = &job->table[job->rank - 2], *tx = &job->table[job->rank - 1];
    if (ty->taps != taps || tx->taps != taps || ty->any_outside || tx->any_outside)
        return false;
    if (job->out_dims[job->rank - 1] > ROW_CACHE_WIDTH) return false;
    for (int ax = 0; ax < job->rank - 2; ax++)
        if (job->table[ax].taps != 1) return false;
    return true;
}

#define DEFINE_NEAREST_ROWS(NAME, T)                                              \
    static void NAME(void *arg, int64_t begin, int64_t end, int slot)             \
    {                                                                             \
        (void)slot;                                                               \
        const resize_job *job = arg;                                              \
        const int lead = job->rank - 1;                                           \
        const int64_t width = job->out_dims[lead];                                \
        const axis_table *last = &job->table[lead];                               \
        T fill;                                                                   \
        memcpy(&fill, &job->fill_bits, sizeof fill);                              \
        int64_t coord[MASKD_MAX_DIMS];                                            \
        for (int64_t row = begin; row < end; row++) {                             \
            T *y = (T *)job->y + row * width;                                     \
            row_coords(job, row, coord);                                          \
            if (row_outside(job, coord)) {                                        \
                for (int64_t j = 0; j < width; j++) y[j] = fill;                  \
                continue;                                                         \
            }                                                                     \
            int64_t base = 0;                                                     \
            for (int ax = 0; ax < lead; ax++) base += job->table[ax].offset[coord[ax]]; \
            const T *src = (const T *)job->x + base;                              \
            for (int64_t j = 0; j < width; j++) y[j] = src[last->offset[j]];      \
            if (last->any_outside)                                                \
                for (int64_t j = 0; j < width; j++)                               \
                    if (last->outside[j]) y[j] = fill;                            \
        }                                                                         \
    }

DEFINE_NEAREST_ROWS(nearest_rows_8, uint8_t)
DEFINE_NEAREST_ROWS(nearest_rows_16, uint16_t)
DEFINE_NEAREST_ROWS(nearest_rows_32, uint32_t)
DEFINE_NEAREST_ROWS(nearest_rows_64, uint64_t)

/* The extrapolation value as the bits of one element of type t. */
static uint64_t fill_bits(maskd_dtype t, float value)
{
    uint64_t bits = 0;
    switch (t) {
    case MASKD_FLOAT: memcpy(&bits, &value, sizeof value); break;
    case MASKD_DOUBLE: { double d = value; memcpy(&bits, &d, sizeof d); break; }
    case MASKD_BOOL: bits = value != 0.0f; break;
    case MASKD_INT8: case MASKD_INT16: case MASKD_INT32: case MASKD_INT64: {
        /* Two's complement: the low bytes are the narrower value. */
        const int64_t v = isfinite(value) && fabsf(value) < 9.2e18f ? (int64_t)value : 0;
        memcpy(&bits, &v, sizeof v);
        break;
    }
    case MASKD_UINT8: case MASKD_UINT16: case MASKD_UINT32: case MASKD_UINT64:
        bits = isfinite(value) && value > 0.0f && value < 1.8e19f ? (uint64_t)value : 0;
        break;
    default: break;
    }
    return bits;
}

static int resize_run(mk_ctx *ctx)
{
    const resize_attrs *a = ctx->node->state;
    resize_plan plan;
    int rc = build_plan(ctx, a, true, &plan);
    if (rc) return rc == MK_DYNAMIC ? mk_op_fail(ctx, MASKD_ERR_RUNTIME,
                                                 "scales or sizes missing at run time")
                                    : rc;
    const mk_tensor *x = ctx->in[0];
    mk_tensor *y = ctx->out[0];
    if (mk_numel(y) == 0) return MASKD_OK;
    if (!ctx->scratch)
        return mk_op_fail(ctx, MASKD_ERR_RUNTIME, "no scratch for the interpolation tables");

    resize_job job;
    memset(&job, 0, sizeof job);
    job.rank = plan.rank;
    job.x = x->data;
    job.y = y->data;
    job.extrapolation = a->extrapolation;
    job.fill_bits = fill_bits(x->dtype, a->extrapolation);
    char *cursor = ctx->scratch;
    int64_t stride = 1;
    for (int ax = plan.rank - 1; ax >= 0; ax--) {
        job.out_dims[ax] = plan.ax[ax].out;
        build_table(a, &plan.ax[ax], stride, &cursor, &job.table[ax]);
        stride *= plan.ax[ax].in;
    }

    const int64_t width = plan.ax[plan.rank - 1].out;
    const int64_t rows = mk_numel(y) / width;
    mk_range_fn fn;
    double cost = (double)width * job.table[plan.rank - 1].taps;
    if (a->mode == MODE_NEAREST) {
        switch (maskd_dtype_size(x->dtype)) {
        case 1: fn = nearest_rows_8; break;
        case 2: fn = nearest_rows_16; break;
        case 4: fn = nearest_rows_32; break;
        default: fn = nearest_rows_64; break;
        }
    } else if (fits_separable_2d(&job, taps_of(a->mode))) {
        /* Identity leading axes keep their input size, so planes line up. */
        job.in_plane = plan.ax[plan.rank - 2].in * plan.ax[plan.rank - 1].in;
        fn = separable_rows_f32;
    } else {
        fn = interp_rows_f32;
        for (int ax = 0; ax < plan.rank - 1; ax++) cost *= job.table[ax].taps;
    }
    const int64_t grain = cost >= 8192.0 ? 1 : (int64_t)(8192.0 / (cost + 1.0)) + 1;
    mk_parallel_for(ctx->pool, rows, grain, fn, &job);
    return MASKD_OK;
}

MK_OP_FAMILY(resize,
    {.domain = "", .op_type = "Upsample", .since_version = 7, .until_version = 8,
     .prepare = upsample7_prepare, .infer = resize_infer, .run = resize_run,
     .release = free},
    /* Deprecated at 10, yet some exporters keep writing it: serve it on. */
    {.domain = "", .op_type = "Upsample", .since_version = 9,
     .prepare = legacy_input_prepare, .infer = resize_infer, .run = resize_run,
     .release = free},
    {.domain = "", .op_type = "Resize", .since_version = 10, .until_version = 10,
     .prepare = legacy_input_prepare, .infer = resize_infer, .run = resize_run,
     .release = free},
    {.domain = "", .op_type = "Resize", .since_version = 11,
     .prepare = resize11_prepare, .infer = resize_infer, .run = resize_run,
     .release = free});
