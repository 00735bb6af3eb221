/*
 * Softmax, LogSoftmax and Hardmax (1 at the first maximum of each vector).
 *
 * Before opset 13 the input is coerced to 2-D at `axis` (default 1) and each
 * row of mk_dims_product(dims[axis:]) elements is normalized as one vector; from opset
 * 13 only the single axis `axis` (default -1) is.  Both are the same loop
 * over a view [outer, len, inner]: the old form is inner = 1 with len the
 * product of the trailing dimensions.
 *
 * inner = 1 is the classifier case (contiguous rows).  inner > 1 is the
 * segmentation case, Softmax over the channels of [N, C, H, W]: walking one
 * pixel's vector at stride H*W would touch a cache line per element, so
 * pixels are processed in blocks of COLS adjacent ones, each pass streaming
 * over contiguous memory with per-pixel maxima and sums kept on the stack.
 *
 * Stability: the maximum is subtracted before exponentiating, so exp never
 * overflows and the largest term is exactly 1.
 */
#include <math.h>
#include <string.h>

#include "common.h"
#include "../kernels/kernels.h"

enum { GRAIN = 16384, COLS = 256 };

typedef struct sm_view {
    int64_t outer, len, inner;
} sm_view;

static int64_t softmax_axis(const mk_ctx *ctx)
{
    int64_t dflt = ctx->node->opset >= 13 ? -1 : 1;
    int64_t axis = mk_attr_int(ctx->node, "axis", dflt);
    return axis < 0 ? axis + ctx->in[0]->ndim : axis;
}

static sm_view view_of(const mk_ctx *ctx)
{
    const mk_tensor *x = ctx->in[0];
    int axis = (int)softmax_axis(ctx);
    sm_view v;
    v.outer = mk_dims_product(x->dims, 0, axis);
    if (ctx->node->opset >= 13) {
        v.len = x->dims[axis];
        v.inner = mk_dims_product(x->dims, axis + 1, x->ndim);
    } else {
        v.len = mk_dims_product(x->dims, axis, x->ndim);
        v.inner = 1;
    }
    return v;
}

static int check_dtype(mk_ctx *ctx, maskd_dtype t)
{
    if (t != MASKD_FLOAT)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "input is %s; only float is supported",
                          maskd_dtype_name(t));
    return MASKD_OK;
}

/* At load only graph inputs and initializers have a known type. */
static int softmax_prepare(mk_ctx *ctx)
{
    maskd_dtype t = mk_known_dtype(ctx, 0);
    return t == MASKD_UNDEFINED ? MASKD_OK : check_dtype(ctx, t);
}

static int softmax_infer(mk_ctx *ctx)
{
    int rc = mk_infer_same_as_input(ctx);
    if (rc) return rc;
    const mk_tensor *x = ctx->in[0];
    if ((rc = check_dtype(ctx, x->dtype))) return rc;
    int64_t axis = mk_attr_int(ctx->node, "axis", ctx->node->opset >= 13 ? -1 : 1);
    /* ONNX limits axis to [-r, r-1] in every version; a scalar has none. */
    if (x->ndim == 0 || axis < -x->ndim || axis >= x->ndim)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "axis %lld is out of range for rank %d",
                          (long long)axis, x->ndim);
    return MASKD_OK;
}

typedef struct sm_job {
    const float *x;
    float *y;
    sm_view v;
    int64_t col_blocks; /* per outer slice, when inner > 1 */
    bool take_log;
} sm_job;

/* One contiguous vector of n elements. */
static void softmax_row(const float *x, float *y, int64_t n, bool take_log)
{
    const float max = mk_max_span(x, n);
    /* The exponentials go through y; LogSoftmax overwrites them after. */
    const double sum = mk_exp_sum_span(x, y, n, max);
    if (take_log) {
        /* (x - max) - log(sum), not x - (max + log(sum)): log(sum) is tiny
         * when one term dominates and would vanish against max. */
        float log_sum = (float)log(sum);
        for (int64_t i = 0; i < n; i++) y[i] = (x[i] - max) - log_sum;
    } else {
        float scale = (float)(1.0 / sum);
        for (int64_t i = 0; i < n; i++) y[i] *= scale;
    }
}

static void rows_range(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const sm_job *j = arg;
    const int64_t n = j->v.len;
    for (int64_t r = begin; r < end; r++) softmax_row(j->x + r * n, j->y + r * n, n, j->take_log);
}

/* cols vectors side by side: element l of vector c at x[l * stride + c]. */
static void softmax_columns(const float *x, float *y, int64_t len, int64_t stride,
                            int64_t cols, bool take_log)
{
    float max[COLS];
    /* Double sums: terms far below the largest (1) would be lost in float,
     * and LogSoftmax's output is made of exactly those. */
    double sum[COLS];
    for (int64_t c = 0; c < cols; c++) {
        max[c] = -INFINITY;
        sum[c] = 0.0;
    }
    for (int64_t l = 0; l < len; l++) {
        const float *xl = x + l * stride;
        for (int64_t c = 0; c < cols; c++) max[c] = xl[c] > max[c] ? xl[c] : max[c];
    }
    /* The exponentials go through y; LogSoftmax overwrites them after. */
    for (int64_t l = 0; l < len; l++) {
        const float *xl = x + l * stride;
        float *yl = y + l * stride;
        for (int64_t c = 0; c < cols; c++) yl[c] = xl[c] - max[c];
        mk_exp_sum_span(yl, yl, cols, 0.0f); /* the sums wanted are per column */
        for (int64_t c = 0; c < cols; c++) sum[c] += yl[c];
    }
    float factor[COLS]; /* log(sum) for LogSoftmax, 1/sum for Softmax */
    for (int64_t c = 0; c < cols; c++)
        factor[c] = take_log ? (float)log(sum[c]) : (float)(1.0 / sum[c]);
    if (take_log) {
        for (int64_t l = 0; l < len; l++) {
            const float *xl = x + l * stride;
            float *yl = y + l * stride;
            for (int64_t c = 0; c < cols; c++) yl[c] = (xl[c] - max[c]) - factor[c];
        }
    } else {
        for (int64_t l = 0; l < len; l++) {
            float *yl = y + l * stride;
            for (int64_t c = 0; c < cols; c++) yl[c] *= factor[c];
        }
    }
}

static void columns_range(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const sm_job *j = arg;
    const int64_t inner = j->v.inner, slice = j->v.len * inner;
    for (int64_t t = begin; t < end; t++) {
        int64_t o = t / j->col_blocks, c0 = (t % j->col_blocks) * COLS;
        int64_t cols = inner - c0 < COLS ? inner - c0 : COLS;
        int64_t off = o * slice + c0;
        softmax_columns(j->x + off, j->y + off, j->v.len, inner, cols, j->take_log);
    }
}

static int run(mk_ctx *ctx, bool take_log)
{
    sm_job j = {.x = ctx->in[0]->data, .y = ctx->out[0]->data, .v = view_of(ctx),
                .take_log = take_log};
    if (j.v.len == 0 || j.v.outer == 0 || j.v.inner == 0) return MASKD_OK;
    if (j.v.inner == 1) {
        int64_t grain = j.v.len >= GRAIN ? 1 : GRAIN / j.v.len;
        mk_parallel_for(ctx->pool, j.v.outer, grain, rows_range, &j);
    } else {
        j.col_blocks = (j.v.inner + COLS - 1) / COLS;
        int64_t block = j.v.len * (j.v.inner < COLS ? j.v.inner : COLS);
        int64_t grain = block >= GRAIN ? 1 : GRAIN / block;
        mk_parallel_for(ctx->pool, j.v.outer * j.col_blocks, grain, columns_range, &j);
    }
    return MASKD_OK;
}

/* Hardmax is rare and cheap: one strided scan per vector. */
static void hardmax_range(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const sm_job *j = arg;
    const int64_t len = j->v.len, inner = j->v.inner;
    for (int64_t t = begin; t < end; t++) {
        int64_t off = (t / inner) * len * inner + t % inner;
        const float *x = j->x + off;
        float *y = j->y + off;
        int64_t best = 0;
        for (int64_t l = 1; l < len; l++)
            if (x[l * inner] > x[best * inner]) best = l;
        for (int64_t l = 0; l < len; l++) y[l * inner] = l == best ? 1.0f : 0.0f;
    }
}

static int hardmax_run(mk_ctx *ctx)
{
    sm_job j = {.x = ctx->in[0]->data, .y = ctx->out[0]->data, .v = view_of(ctx)};
    if (j.v.len == 0) return MASKD_OK;
    int64_t grain = j.v.len >= GRAIN ? 1 : GRAIN / j.v.len;
    mk_parallel_for(ctx->pool, j.v.outer * j.v.inner, grain, hardmax_range, &j);
    return MASKD_OK;
}

static int softmax_run(mk_ctx *ctx) { return run(ctx, false); }
static int logsoftmax_run(mk_ctx *ctx) { return run(ctx, true); }

/* The rows for opsets 1-12 and 13+ share code; view_of reads the opset. */
MK_OP_FAMILY(softmax,
    {.domain = "", .op_type = "Softmax", .since_version = 1,
     .prepare = softmax_prepare, .infer = softmax_infer, .run = softmax_run},
    {.domain = "", .op_type = "LogSoftmax", .since_version = 1,
     .prepare = softmax_prepare, .infer = softmax_infer, .run = logsoftmax_run},
    {.domain = "", .op_type = "Hardmax", .since_version = 1,
     .prepare = softmax_prepare, .infer = softmax_infer, .run = hardmax_run});
