/*
 * Pooling: MaxPool (with its optional Indices), AveragePool, LpPool and the
 * Global forms.
 *
 * Windowed pools normalise their geometry to three spatial axes (missing
 * leading axes have size 1), so one kernel serves 1-D, 2-D and 3-D.  The unit
 * of parallel work is one output row (plane, o0, o1): a single plane still
 * splits over every thread.  Padding is never materialised: each output
 * visits only the taps that land inside the input, which is also what ONNX
 * means by "pads are ignored" for max and count_include_pad=0 for average.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"


enum { MAX_SPATIAL = 3 };
/* Bounds that keep every geometry product inside int64. */
#define ATTR_LIMIT ((int64_t)1 << 31)

typedef enum pool_kind { POOL_MAX, POOL_AVG, POOL_LP } pool_kind;

typedef struct pool_attrs {
    pool_kind kind;
    int n_spatial;
    int64_t kernel[MAX_SPATIAL];
    int64_t strides[MAX_SPATIAL];
    int64_t dilations[MAX_SPATIAL];
    int64_t pads[2 * MAX_SPATIAL]; /* all begins, then all ends */
    mk_auto_pad pad_mode;
    bool ceil_mode;
    bool count_include_pad;
    bool column_major_indices;
    float p;
} pool_attrs;

typedef struct pool_geom {
    int64_t planes; /* N * C */
    int64_t in[MAX_SPATIAL], out[MAX_SPATIAL];
    int64_t kernel[MAX_SPATIAL], stride[MAX_SPATIAL], dilation[MAX_SPATIAL];
    int64_t pad_begin[MAX_SPATIAL], pad_end[MAX_SPATIAL];
} pool_geom;

/* ---- attributes --------------------------------------------------------- */

static int read_p(mk_ctx *ctx, float *p)
{
    /* LpPool-1 declares p as a float, later versions as an int. */
    const mk_attr *a = mk_attr_find(ctx->node, "p");
    *p = 2.0f;
    if (a) *p = a->type == MK_ATTR_FLOAT ? a->f : (float)a->i;
    if (!(*p > 0.0f) || !isfinite(*p))
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "p must be positive, got %g", (double)*p);
    return MASKD_OK;
}

static int read_axis_ints(mk_ctx *ctx, const char *name, int64_t *out, int want,
                          int64_t dflt, int64_t min)
{
    int64_t buf[2 * MAX_SPATIAL];
    int n = mk_attr_ints(ctx->node, name, buf, 2 * MAX_SPATIAL);
    if (n < 0) {
        for (int i = 0; i < want; i++) out[i] = dflt;
        return MASKD_OK;
    }
    if (n != want)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "%s has %d values, kernel_shape needs %d", name,
                          n, want);
    for (int i = 0; i < n; i++) {
        if (buf[i] < min || buf[i] >= ATTR_LIMIT)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "%s[%d] = %lld is out of range", name, i,
                              (long long)buf[i]);
        out[i] = buf[i];
    }
    return MASKD_OK;
}

static int windowed_prepare(mk_ctx *ctx, pool_kind kind)
{
    pool_attrs a;
    memset(&a, 0, sizeof a);
    a.kind = kind;

    int64_t kernel[MAX_SPATIAL + 1];
    int nk = mk_attr_ints(ctx->node, "kernel_shape", kernel, MAX_SPATIAL + 1);
    if (nk < 1)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "kernel_shape is required");
    if (nk > MAX_SPATIAL)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "%d spatial axes; at most %d are supported",
                          nk, MAX_SPATIAL);
    a.n_spatial = nk;
    for (int i = 0; i < nk; i++) {
        if (kernel[i] < 1 || kernel[i] >= ATTR_LIMIT)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "kernel_shape[%d] = %lld is out of range", i,
                              (long long)kernel[i]);
        a.kernel[i] = kernel[i];
    }
    int rc;
    if ((rc = read_axis_ints(ctx, "strides", a.strides, nk, 1, 1)) ||
        (rc = read_axis_ints(ctx, "dilations", a.dilations, nk, 1, 1)) ||
        (rc = read_axis_ints(ctx, "pads", a.pads, 2 * nk, 0, 0)))
        return rc;

    if ((rc = mk_parse_auto_pad(ctx, &a.pad_mode))) return rc;

    int64_t ceil_mode = mk_attr_int(ctx->node, "ceil_mode", 0);
    int64_t include_pad = mk_attr_int(ctx->node, "count_include_pad", 0);
    int64_t storage_order = mk_attr_int(ctx->node, "storage_order", 0);
    if ((ceil_mode != 0 && ceil_mode != 1) || (include_pad != 0 && include_pad != 1) ||
        (storage_order != 0 && storage_order != 1))
        return mk_op_fail(ctx, MASKD_ERR_INVALID,
                          "ceil_mode, count_include_pad and storage_order must be 0 or 1");
    a.ceil_mode = ceil_mode;
    a.count_include_pad = include_pad;
    a.column_major_indices = storage_order;
    if (kind == POOL_LP && (rc = read_p(ctx, &a.p))) return rc;

    pool_attrs *state = malloc(sizeof *state);
    if (!state) return mk_op_fail(ctx, MASKD_ERR_NOMEM, "out of memory");
    *state = a;
    ctx->node->state = state;
    return MASKD_OK;
}

static int maxpool_prepare(mk_ctx *ctx) { return windowed_prepare(ctx, POOL_MAX); }
static int avgpool_prepare(mk_ctx *ctx) { return windowed_prepare(ctx, POOL_AVG); }
static int lppool_prepare(mk_ctx *ctx) { return windowed_prepare(ctx, POOL_LP); }

/* ---- geometry ----------------------------------------------------------- */

static int pool_geometry(mk_ctx *ctx, const pool_attrs *a, const mk_tensor *x,
                         pool_geom *g)
{
    char shape[128];
    if (x->ndim != a->n_spatial + 2)
        return mk_op_fail(ctx, MASKD_ERR_SHAPE,
                          "kernel_shape has %d axes, so the input must be %d-D; got %s",
                          a->n_spatial, a->n_spatial + 2, mk_shape_str(x, shape, sizeof shape));
    g->planes = x->dims[0] * x->dims[1];
    const int lead = MAX_SPATIAL - a->n_spatial;
    for (int ax = 0; ax < lead; ax++) {
        g->in[ax] = g->out[ax] = 1;
        g->kernel[ax] = g->stride[ax] = g->dilation[ax] = 1;
        g->pad_begin[ax] = g->pad_end[ax] = 0;
    }
    for (int i = 0; i < a->n_spatial; i++) {
        const int ax = lead + i;
        const int64_t in = x->dims[2 + i], k = a->kernel[i], s = a->strides[i];
        const int64_t d = a->dilations[i], span = (k - 1) * d + 1;
        int64_t pb = a->pads[i], pe = a->pads[a->n_spatial + i], out;
        if (!mk_window_axis(a->pad_mode, in, span, s, a->ceil_mode, &pb, &pe, &out))
            return mk_op_fail(ctx, MASKD_ERR_SHAPE,
                              "window of %lld on axis %d exceeds the %sinput %s", (long long)span,
                              2 + i, a->pad_mode == MK_PAD_VALID ? "" : "padded ",
                              mk_shape_str(x, shape, sizeof shape));
        g->in[ax] = in;
        g->out[ax] = out;
        g->kernel[ax] = k;
        g->stride[ax] = s;
        g->dilation[ax] = d;
        g->pad_begin[ax] = pb;
        g->pad_end[ax] = pe;
    }
    return MASKD_OK;
}

/* The taps of one window along one axis. */
typedef struct taps {
    int64_t first;  /* input index of the first tap inside the input */
    int64_t count;  /* taps inside the input */
    int64_t padded; /* taps inside the padded extent (count_include_pad) */
} taps;

static inline taps axis_taps(const pool_geom *g, int ax, int64_t o)
{
    const int64_t start = o * g->stride[ax] - g->pad_begin[ax];
    const int64_t d = g->dilation[ax], k = g->kernel[ax], in = g->in[ax];
    /* start >= -pad_begin, so the padded extent never cuts the front. */
    const int64_t lo = start < 0 ? (-start + d - 1) / d : 0;
    int64_t hi = in - 1 - start < 0 ? 0 : (in - 1 - start) / d + 1;
    if (hi > k) hi = k;
    const int64_t last_padded = in + g->pad_end[ax] - 1 - start;
    int64_t padded = last_padded < 0 ? 0 : last_padded / d + 1;
    if (padded > k) padded = k;
    taps t = {start + lo * d, hi > lo ? hi - lo : 0, padded};
    return t;
}

/* Output columns o whose window lies wholly inside the input (dilation 1). */
static inline void interior_columns(const pool_geom *g, int64_t *lo, int64_t *hi)
{
    const int64_t s = g->stride[2], pb = g->pad_begin[2];
    *lo = (pb + s - 1) / s;
    const int64_t last = g->in[2] - g->kernel[2] + pb;
    *hi = last < 0 ? 0 : last / s + 1;
    if (*hi > g->out[2]) *hi = g->out[2];
    if (*lo > *hi) *lo = *hi;
}

typedef struct pool_job {
    const pool_geom *g;
    const void *x;
    void *y;
    int64_t *indices; /* MaxPool's second output, or NULL */
    bool column_major;
    bool count_include_pad;
    float p;
} pool_job;

/* Rows are (plane, o0, o1); each covers out[2] outputs.  Returns the row's
 * plane, and its windows' taps along axes 0 and 1. */
static inline int64_t row_start(const pool_geom *g, int64_t row, taps *t0, taps *t1)
{
    const int64_t o1 = row % g->out[1];
    row /= g->out[1];
    *t0 = axis_taps(g, 0, row % g->out[0]);
    *t1 = axis_taps(g, 1, o1);
    return row / g->out[0];
}

static inline int64_t in_plane_size(const pool_geom *g)
{
    return g->in[0] * g->in[1] * g->in[2];
}

/* The 2-D interior path keeps one reduced input row on the stack. */
enum { FAST_ROW_MAX = 4096 };

/* Whether rows can take the 2-D path for their interior (dilation 1). */
static bool fast_2d(const pool_geom *g)
{
    return g->kernel[0] == 1 && g->dilation[1] == 1 && g->dilation[2] == 1 &&
           g->in[2] <= FAST_ROW_MAX;
}

/*
 * Outputs [lo, hi) of one row whose windows lie inside the input: the kh
 * input rows are first reduced column by column (contiguous, so it
 * vectorises), then a kw-wide window slides along the reduced row; max for
 * MaxPool, the mean for AveragePool (inside the input both of its divisors
 * are the full window).  Called with literal is_max, and literal kh/kw for
 * the common 2x2 and 3x3 windows so they unroll.
 */
static inline __attribute__((always_inline)) void
interior_f32(const float *rows, int64_t w, int kh, int kw, int64_t s, int64_t pb,
             int64_t lo, int64_t hi, float *y, float *reduced, bool is_max)
{
    const int64_t first = lo * s - pb, last = (hi - 1) * s - pb + kw;
    const float inv_area = 1.0f / (float)(kh * kw);
    for (int64_t c = first; c < last; c++) {
        float acc = rows[c];
        for (int i = 1; i < kh; i++) {
            const float v = rows[i * w + c];
            acc = is_max ? (v > acc ? v : acc) : acc + v;
        }
        reduced[c - first] = acc;
    }
    for (int64_t o = lo; o < hi; o++) {
        const float *p = reduced + (o - lo) * s;
        float acc = p[0];
        for (int j = 1; j < kw; j++) acc = is_max ? (p[j] > acc ? p[j] : acc) : acc + p[j];
        y[o] = is_max ? acc : acc * inv_area;
    }
}

/* ---- MaxPool ------------------------------------------------------------ */

/* Generic max over the valid taps; writes the flat index when asked.  The
 * first maximum wins, as in the ONNX reference and ONNX Runtime.  A window
 * lying wholly in the padding yields the type's lowest value (and index -1),
 * as ONNX Runtime does. */
#define DEFINE_MAX_ROWS(NAME, T, LOWEST)                                               \
    static void NAME(void *arg, int64_t begin, int64_t end, int slot)              \
    {                                                                              \
        (void)slot;                                                                \
        const pool_job *job = arg;                                                 \
        const pool_geom *g = job->g;                                               \
        const int64_t plane_size = in_plane_size(g);                               \
        for (int64_t row = begin; row < end; row++) {                              \
            taps t0, t1;                                                           \
            const int64_t plane = row_start(g, row, &t0, &t1);                     \
            const T *x = (const T *)job->x + plane * plane_size;                   \
            T *y = (T *)job->y + row * g->out[2];                                  \
            int64_t *ind = job->indices ? job->indices + row * g->out[2] : NULL;   \
            for (int64_t o2 = 0; o2 < g->out[2]; o2++) {                           \
                const taps t2 = axis_taps(g, 2, o2);                               \
                T best = LOWEST;                                                   \
                int64_t best_at = -1;                                              \
                for (int64_t a = 0; a < t0.count; a++) {                           \
                    const int64_t i0 = t0.first + a * g->dilation[0];              \
                    for (int64_t b = 0; b < t1.count; b++) {                       \
                        const int64_t i1 = t1.first + b * g->dilation[1];          \
                        const T *xr = x + (i0 * g->in[1] + i1) * g->in[2];         \
                        for (int64_t c = 0; c < t2.count; c++) {                   \
                            const int64_t i2 = t2.first + c * g->dilation[2];      \
                            const T v = xr[i2];                                    \
                            if (best_at < 0 || v > best) {                         \
                                best = v;                                          \
                                best_at = job->column_major                        \
                                              ? i0 + (i1 + i2 * g->in[1]) * g->in[0] \
                                              : (i0 * g->in[1] + i1) * g->in[2] + i2; \
                            }                                                      \
                        }                                                          \
                    }                                                              \
                }                                                                  \
                y[o2] = best;                                                      \
                if (ind) ind[o2] = best_at < 0 ? -1 : plane * plane_size + best_at; \
            }                                                                      \
        }                                                                          \
    }

DEFINE_MAX_ROWS(max_rows_f64, double, -DBL_MAX)
DEFINE_MAX_ROWS(max_rows_u8, uint8_t, 0)
DEFINE_MAX_ROWS(max_rows_i8, int8_t, INT8_MIN)
DEFINE_MAX_ROWS(max_rows_f32_indexed, float, -FLT_MAX)

static inline float max_one_f32(const pool_geom *g, const float *x, taps t0, taps t1,
                                int64_t o2)
{
    const taps t2 = axis_taps(g, 2, o2);
    float best = -FLT_MAX;
    bool any = false;
    for (int64_t a = 0; a < t0.count; a++) {
        const int64_t i0 = t0.first + a * g->dilation[0];
        for (int64_t b = 0; b < t1.count; b++) {
            const float *xr = x + (i0 * g->in[1] + t1.first + b * g->dilation[1]) * g->in[2];
            for (int64_t c = 0; c < t2.count; c++) {
                const float v = xr[t2.first + c * g->dilation[2]];
                if (!any || v > best) best = v;
                any = true;
            }
        }
    }
    return best;
}

/* ---- AveragePool and LpPool --------------------------------------------- */

static inline float avg_one_f32(const pool_job *job, const float *x, taps t0, taps t1,
                                int64_t o2)
{
    const pool_geom *g = job->g;
    const taps t2 = axis_taps(g, 2, o2);
    float sum = 0.0f;
    for (int64_t a = 0; a < t0.count; a++) {
        const int64_t i0 = t0.first + a * g->dilation[0];
        for (int64_t b = 0; b < t1.count; b++) {
            const float *xr = x + (i0 * g->in[1] + t1.first + b * g->dilation[1]) * g->in[2];
            for (int64_t c = 0; c < t2.count; c++) sum += xr[t2.first + c * g->dilation[2]];
        }
    }
    const int64_t n = job->count_include_pad ? t0.padded * t1.padded * t2.padded
                                             : t0.count * t1.count * t2.count;
    /* A window wholly in the padding has nothing to average. */
    return n > 0 ? sum / (float)n : 0.0f;
}

/* Rows of float MaxPool (is_max) or AveragePool: the interior of a 2-D
 * pool through interior_f32, everything else through the generic loops. */
static inline __attribute__((always_inline)) void
window_rows_f32(const pool_job *job, int64_t begin, int64_t end, bool is_max)
{
    const pool_geom *g = job->g;
    const int64_t plane_size = in_plane_size(g), w = g->in[2];
    const bool fast = fast_2d(g);
    int64_t lo = 0, hi = 0;
    if (fast) interior_columns(g, &lo, &hi);
    const int kh = (int)g->kernel[1], kw = (int)g->kernel[2];
    const int64_t s = g->stride[2], pb = g->pad_begin[2];
    float reduced[FAST_ROW_MAX];
    for (int64_t row = begin; row < end; row++) {
        taps t0, t1;
        const int64_t plane = row_start(g, row, &t0, &t1);
        const float *x = (const float *)job->x + plane * plane_size;
        float *y = (float *)job->y + row * g->out[2];
        int64_t o2 = 0;
        if (fast && t0.count == 1 && t1.count == kh && lo < hi) {
            for (; o2 < lo; o2++)
                y[o2] = is_max ? max_one_f32(g, x, t0, t1, o2) : avg_one_f32(job, x, t0, t1, o2);
            const float *rows = x + (t0.first * g->in[1] + t1.first) * w;
            if (kh == 2 && kw == 2)
                interior_f32(rows, w, 2, 2, s, pb, lo, hi, y, reduced, is_max);
            else if (kh == 3 && kw == 3)
                interior_f32(rows, w, 3, 3, s, pb, lo, hi, y, reduced, is_max);
            else
                interior_f32(rows, w, kh, kw, s, pb, lo, hi, y, reduced, is_max);
            o2 = hi;
        }
        for (; o2 < g->out[2]; o2++)
            y[o2] = is_max ? max_one_f32(g, x, t0, t1, o2) : avg_one_f32(job, x, t0, t1, o2);
    }
}

static void max_rows_f32(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    window_rows_f32(arg, begin, end, true);
}

static void avg_rows_f32(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    window_rows_f32(arg, begin, end, false);
}

static inline float lp_accumulate(float acc, float v, float p)
{
    if (p == 2.0f) return acc + v * v;
    if (p == 1.0f) return acc + fabsf(v);
    return acc + powf(fabsf(v), p);
}

static inline float lp_finish(float acc, float p)
{
    if (p == 2.0f) return sqrtf(acc);
    if (p == 1.0f) return acc;
    return powf(acc, 1.0f / p);
}

static void lp_rows_f32(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const pool_job *job = arg;
    const pool_geom *g = job->g;
    const int64_t plane_size = in_plane_size(g);
    const float p = job->p;
    for (int64_t row = begin; row < end; row++) {
        taps t0, t1;
        const int64_t plane = row_start(g, row, &t0, &t1);
        const float *x = (const float *)job->x + plane * plane_size;
        float *y = (float *)job->y + row * g->out[2];
        for (int64_t o2 = 0; o2 < g->out[2]; o2++) {
            const taps t2 = axis_taps(g, 2, o2);
            float acc = 0.0f;
            for (int64_t a = 0; a < t0.count; a++) {
                const int64_t i0 = t0.first + a * g->dilation[0];
                for (int64_t b = 0; b < t1.count; b++) {
                    const float *xr =
                        x + (i0 * g->in[1] + t1.first + b * g->dilation[1]) * g->in[2];
                    for (int64_t c = 0; c < t2.count; c++)
                        acc = lp_accumulate(acc, xr[t2.first + c * g->dilation[2]], p);
                }
            }
            y[o2] = lp_finish(acc, p);
        }
    }
}

/* ---- windowed ops: infer and run ----------------------------------------- */

/* Output 0: x's dtype, batch and channels, and the spatial sizes given
 * (NULL: all 1, the global pools). */
static int set_pooled_output(mk_ctx *ctx, const mk_tensor *x, const int64_t *spatial,
                             mk_tensor **out)
{
    mk_tensor *y;
    int rc = mk_need_output(ctx, 0, &y);
    if (rc) return rc;
    y->dtype = x->dtype;
    y->ndim = x->ndim;
    y->dims[0] = x->dims[0];
    y->dims[1] = x->dims[1];
    for (int i = 2; i < x->ndim; i++) y->dims[i] = spatial ? spatial[i - 2] : 1;
    ctx->scratch_bytes = 0;
    *out = y;
    return MASKD_OK;
}

static int windowed_infer(mk_ctx *ctx)
{
    const pool_attrs *a = ctx->node->state;
    mk_tensor *x, *y, *ind;
    if (!a) return mk_op_fail(ctx, MASKD_ERR_INVALID, "attributes were not prepared");
    int rc = mk_need_input(ctx, 0, &x);
    if (rc) return rc;
    bool dtype_ok = x->dtype == MASKD_FLOAT;
    if (a->kind == POOL_MAX)
        dtype_ok = dtype_ok || x->dtype == MASKD_DOUBLE || x->dtype == MASKD_UINT8 ||
                   x->dtype == MASKD_INT8;
    if (!dtype_ok)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "input type %s is not supported",
                          maskd_dtype_name(x->dtype));
    pool_geom g;
    if ((rc = pool_geometry(ctx, a, x, &g)) ||
        (rc = set_pooled_output(ctx, x, g.out + MAX_SPATIAL - a->n_spatial, &y)))
        return rc;
    /* Indices exist from MaxPool-8 on. */
    if (a->kind == POOL_MAX && (ind = mk_output(ctx, 1))) {
        *ind = *y;
        ind->data = NULL;
        ind->dtype = MASKD_INT64;
    }
    return MASKD_OK;
}

static int windowed_run(mk_ctx *ctx)
{
    const pool_attrs *a = ctx->node->state;
    pool_geom g;
    int rc = pool_geometry(ctx, a, ctx->in[0], &g);
    if (rc) return rc;

    pool_job job = {
        .g = &g,
        .x = ctx->in[0]->data,
        .y = ctx->out[0]->data,
        .indices = NULL,
        .column_major = a->column_major_indices,
        .count_include_pad = a->count_include_pad,
        .p = a->p,
    };
    mk_tensor *ind = mk_output(ctx, 1);
    if (a->kind == POOL_MAX && ind) job.indices = ind->data;

    mk_range_fn fn;
    switch (a->kind) {
    case POOL_AVG: fn = avg_rows_f32; break;
    case POOL_LP: fn = lp_rows_f32; break;
    default:
        switch (ctx->in[0]->dtype) {
        case MASKD_DOUBLE: fn = max_rows_f64; break;
        case MASKD_UINT8: fn = max_rows_u8; break;
        case MASKD_INT8: fn = max_rows_i8; break;
        default: fn = job.indices ? max_rows_f32_indexed : max_rows_f32; break;
        }
    }

    const int64_t rows = g.planes * g.out[0] * g.out[1];
    /* Double: a silly kernel must not overflow the estimate. */
    const double per_row = (double)g.out[2] * (double)g.kernel[0] *
                           (double)g.kernel[1] * (double)g.kernel[2];
    const int64_t grain = per_row >= 16384.0 ? 1 : (int64_t)(16384.0 / (per_row + 1.0)) + 1;
    mk_parallel_for(ctx->pool, rows, grain, fn, &job);
    return MASKD_OK;
}

/* ---- Global pools -------------------------------------------------------- */

typedef struct global_job {
    const float *x;
    float *y;
    int64_t size; /* spatial elements per plane */
    pool_kind kind;
    float p;
} global_job;

static void global_planes(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const global_job *job = arg;
    const int64_t n = job->size;
    for (int64_t plane = begin; plane < end; plane++) {
        const float *x = job->x + plane * n;
        float r;
        if (job->kind == POOL_MAX) {
            r = n > 0 ? x[0] : -FLT_MAX;
            for (int64_t i = 1; i < n; i++) r = x[i] > r ? x[i] : r;
        } else if (job->kind == POOL_AVG) {
            /* Double keeps the mean exact enough over very large planes;
             * eight independent sums, which the compiler keeps in vector
             * lanes, instead of one chain of dependent adds (an SE block's
             * pool was a latency-bound pass over the map). */
            enum { LANES = 8 };
            double part[LANES] = {0};
            int64_t i = 0;
            for (; i + LANES <= n; i += LANES)
                for (int j = 0; j < LANES; j++) part[j] += x[i + j];
            double s = ((part[0] + part[1]) + (part[2] + part[3])) +
                       ((part[4] + part[5]) + (part[6] + part[7]));
            for (; i < n; i++) s += x[i];
            r = n > 0 ? (float)(s / (double)n) : 0.0f;
        } else {
            float acc = 0.0f;
            for (int64_t i = 0; i < n; i++) acc = lp_accumulate(acc, x[i], job->p);
            r = lp_finish(acc, job->p);
        }
        job->y[plane] = r;
    }
}

static int global_lp_prepare(mk_ctx *ctx)
{
    float p;
    int rc = read_p(ctx, &p);
    if (rc) return rc;
    float *state = malloc(sizeof *state);
    if (!state) return mk_op_fail(ctx, MASKD_ERR_NOMEM, "out of memory");
    *state = p;
    ctx->node->state = state;
    return MASKD_OK;
}

static int global_infer(mk_ctx *ctx)
{
    mk_tensor *x, *y;
    char shape[128];
    int rc = mk_need_input(ctx, 0, &x);
    if (rc) return rc;
    if (x->dtype != MASKD_FLOAT)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "input type %s is not supported",
                          maskd_dtype_name(x->dtype));
    if (x->ndim < 2)
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "input must be N x C x ..., got %s",
                          mk_shape_str(x, shape, sizeof shape));
    return set_pooled_output(ctx, x, NULL, &y);
}

static int global_run_kind(mk_ctx *ctx, pool_kind kind, float p)
{
    const mk_tensor *x = ctx->in[0];
    global_job job = {
        .x = x->data,
        .y = ctx->out[0]->data,
        .size = 1,
        .kind = kind,
        .p = p,
    };
    for (int i = 2; i < x->ndim; i++) job.size *= x->dims[i];
    const int64_t planes = x->dims[0] * x->dims[1];
    const int64_t grain = job.size >= 16384 ? 1 : 16384 / (job.size > 0 ? job.size : 1);
    mk_parallel_for(ctx->pool, planes, grain, global_planes, &job);
    return MASKD_OK;
}

static int global_max_run(mk_ctx *ctx) { return global_run_kind(ctx, POOL_MAX, 0.0f); }
static int global_avg_run(mk_ctx *ctx) { return global_run_kind(ctx, POOL_AVG, 0.0f); }

static int global_lp_run(mk_ctx *ctx)
{
    const float *p = ctx->node->state;
    return global_run_kind(ctx, POOL_LP, p ? *p : 2.0f);
}

MK_OP_FAMILY(pool,
    {.domain = "", .op_type = "MaxPool", .since_version = 1, .prepare = maxpool_prepare,
     .infer = windowed_infer, .run = windowed_run, .release = free},
    {.domain = "", .op_type = "AveragePool", .since_version = 1, .prepare = avgpool_prepare,
     .infer = windowed_infer, .run = windowed_run, .release = free},
    {.domain = "", .op_type = "LpPool", .since_version = 1, .prepare = lppool_prepare,
     .infer = windowed_infer, .run = windowed_run, .release = free},
    {.domain = "", .op_type = "GlobalMaxPool", .since_version = 1,
     .infer = global_infer, .run = global_max_run},
    {.domain = "", .op_type = "GlobalAveragePool", .since_version = 1,
     .infer = global_infer, .run = global_avg_run},
    {.domain = "", .op_type = "GlobalLpPool", .since_version = 1, .prepare = global_lp_prepare,
     .infer = global_infer, .run = global_lp_run, .release = free});
