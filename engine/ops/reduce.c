/*
 * Reductions: ReduceSum/Mean/Max/Min/Prod/L1/L2/SumSquare/LogSum/LogSumExp,
 * ArgMax/ArgMin and TopK.
 *
 * Reduced and kept axes are merged into runs first.  When the reduced axes
 * form one run, the input is [outer, R, inner] and float32 takes a fast
 * path: a contiguous reduction when inner == 1 (ReduceMean over H*W), else
 * accumulators vectorised across inner (ReduceMean over C of [N, C, HW]).
 * Every other case (several reduced runs, other dtypes) goes through a
 * general per-output loop that accumulates in double or int64.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* ---- shared helpers ------------------------------------------------------ */

/* Types the reductions compute on (mk_get_f64 / mk_get_i64 can read them). */
static int need_numeric_input(mk_ctx *ctx, int i, const mk_tensor **out)
{
    int rc = mk_need_data_input(ctx, i, out);
    if (rc) return rc;
    maskd_dtype t = (*out)->dtype;
    if (t != MASKD_FLOAT && t != MASKD_DOUBLE && !mk_is_int_dtype(t))
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "element type %s is not supported",
                          maskd_dtype_name(t));
    return MASKD_OK;
}

/* ---- Reduce* ------------------------------------------------------------- */

typedef enum red_kind {
    RED_SUM, RED_MEAN, RED_MAX, RED_MIN, RED_PROD,
    RED_L1, RED_L2, RED_SUM_SQUARE, RED_LOG_SUM, RED_LOG_SUM_EXP,
} red_kind;

/* Marks the reduced axes.  ReduceSum took its axes as an input from opset
 * 13, the others from opset 18; an empty or absent list means all axes,
 * unless noop_with_empty_axes (input form only) makes it none. */
static int reduce_axes(mk_ctx *ctx, red_kind kind, const mk_tensor *x, bool *reduced)
{
    int rank = x->ndim;
    int64_t axes[MASKD_MAX_DIMS];
    int n = -1;
    bool from_input = ctx->node->opset >= 18 || (kind == RED_SUM && ctx->node->opset >= 13);
    if (from_input) {
        const mk_tensor *a = mk_input(ctx, 1);
        int rc;
        if (a && (rc = mk_read_int_list(ctx, a, "axes", axes, rank, &n))) return rc;
    } else {
        n = mk_attr_ints(ctx->node, "axes", axes, MASKD_MAX_DIMS);
        if (n > rank)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "%d axes for rank %d", n, rank);
    }
    if (n <= 0) {
        bool noop = from_input && mk_attr_int(ctx->node, "noop_with_empty_axes", 0) != 0;
        for (int k = 0; k < rank; k++) reduced[k] = !noop;
        return MASKD_OK;
    }
    int rc = mk_normalize_axes(ctx, axes, n, rank);
    if (rc) return rc;
    for (int k = 0; k < rank; k++) reduced[k] = false;
    for (int i = 0; i < n; i++) reduced[axes[i]] = true;
    return MASKD_OK;
}

static int reduce_infer(mk_ctx *ctx, red_kind kind)
{
    const mk_tensor *x;
    mk_tensor *y;
    bool reduced[MASKD_MAX_DIMS];
    int rc;
    if ((rc = need_numeric_input(ctx, 0, &x)) || (rc = mk_need_output(ctx, 0, &y)) ||
        (rc = reduce_axes(ctx, kind, x, reduced)))
        return rc;
    bool keepdims = mk_attr_int(ctx->node, "keepdims", 1) != 0;
    int r = 0;
    for (int k = 0; k < x->ndim; k++) {
        if (!reduced[k])
            y->dims[r++] = x->dims[k];
        else if (keepdims)
            y->dims[r++] = 1;
    }
    y->dtype = x->dtype;
    y->ndim = r;
    return MASKD_OK;
}

/* The input as alternating runs of kept and reduced axes, size-1 axes
 * dropped (they change neither the values nor the order). */
typedef struct reduce_shape {
    int n;
    int64_t size[MASKD_MAX_DIMS], stride[MASKD_MAX_DIMS];
    bool reduced[MASKD_MAX_DIMS];
} reduce_shape;

static void reduce_shape_make(const mk_tensor *x, const bool *reduced, reduce_shape *s)
{
    int64_t stride = 1, strides[MASKD_MAX_DIMS];
    for (int k = x->ndim - 1; k >= 0; k--) {
        strides[k] = stride;
        stride *= x->dims[k];
    }
    s->n = 0;
    for (int k = 0; k < x->ndim; k++) {
        if (x->dims[k] == 1) continue;
        if (s->n > 0 && s->reduced[s->n - 1] == reduced[k]) {
            s->size[s->n - 1] *= x->dims[k];
            s->stride[s->n - 1] = strides[k];
            continue;
        }
        s->size[s->n] = x->dims[k];
        s->stride[s->n] = strides[k];
        s->reduced[s->n] = reduced[k];
        s->n++;
    }
}

/* -- float32, one reduced run -- */

static float finish_f32(red_kind kind, float acc, int64_t n)
{
    switch (kind) {
    case RED_MEAN: return acc / (float)n;
    case RED_L2: return sqrtf(acc);
    case RED_LOG_SUM: return logf(acc);
    default: return acc;
    }
}

static float init_f32(red_kind kind)
{
    switch (kind) {
    case RED_PROD: return 1.0f;
    case RED_MAX: return -INFINITY;
    case RED_MIN: return INFINITY;
    default: return 0.0f;
    }
}

/* Eight partial sums let the compiler vectorise without -ffast-math, and
 * keep the rounding error of long sums lower than one running sum. */
#define SUM8(EXPR)                                                          \
    do {                                                                    \
        float part[8] = {0};                                                \
        int64_t i = 0;                                                      \
        for (; i + 8 <= n; i += 8)                                          \
            for (int l = 0; l < 8; l++) {                                   \
                float v = x[i + l];                                         \
                part[l] += (EXPR);                                          \
            }                                                               \
        for (; i < n; i++) {                                                \
            float v = x[i];                                                 \
            part[0] += (EXPR);                                              \
        }                                                                   \
        acc = ((part[0] + part[4]) + (part[1] + part[5])) +                 \
              ((part[2] + part[6]) + (part[3] + part[7]));                  \
    } while (0)

static float reduce_contiguous(red_kind kind, const float *x, int64_t n)
{
    float acc = init_f32(kind);
    switch (kind) {
    case RED_SUM: case RED_MEAN: case RED_LOG_SUM: SUM8(v); break;
    case RED_SUM_SQUARE: case RED_L2: SUM8(v * v); break;
    case RED_L1: SUM8(fabsf(v)); break;
    case RED_PROD: for (int64_t i = 0; i < n; i++) acc *= x[i]; break;
    case RED_MAX: for (int64_t i = 0; i < n; i++) acc = x[i] > acc ? x[i] : acc; break;
    case RED_MIN: for (int64_t i = 0; i < n; i++) acc = x[i] < acc ? x[i] : acc; break;
    case RED_LOG_SUM_EXP: {
        float m = -INFINITY;
        for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
        if (isinf(m)) return m; /* empty, all -inf, or an +inf present */
        float sum = 0.0f;
        for (int64_t i = 0; i < n; i++) sum += expf(x[i] - m);
        return m + logf(sum);
    }
    }
    return finish_f32(kind, acc, n);
}
#undef SUM8

enum { BLOCK = 256 };

/* y[i] = reduce over r of x[r * inner + i], for i in [0, len), len <= BLOCK. */
static void reduce_strided(red_kind kind, const float *x, float *y, int64_t reduce_n,
                           int64_t inner, int64_t len)
{
    float acc[BLOCK], shift[BLOCK];
    float init = init_f32(kind);
    for (int64_t i = 0; i < len; i++) acc[i] = init;
    if (kind == RED_LOG_SUM_EXP) {
        for (int64_t i = 0; i < len; i++) shift[i] = -INFINITY;
        for (int64_t r = 0; r < reduce_n; r++) {
            const float *row = x + r * inner;
            for (int64_t i = 0; i < len; i++) shift[i] = row[i] > shift[i] ? row[i] : shift[i];
        }
        for (int64_t i = 0; i < len; i++) acc[i] = 0.0f;
    }
    for (int64_t r = 0; r < reduce_n; r++) {
        const float *row = x + r * inner;
        switch (kind) {
        case RED_SUM: case RED_MEAN: case RED_LOG_SUM:
            for (int64_t i = 0; i < len; i++) acc[i] += row[i];
            break;
        case RED_SUM_SQUARE: case RED_L2:
            for (int64_t i = 0; i < len; i++) acc[i] += row[i] * row[i];
            break;
        case RED_L1:
            for (int64_t i = 0; i < len; i++) acc[i] += fabsf(row[i]);
            break;
        case RED_PROD:
            for (int64_t i = 0; i < len; i++) acc[i] *= row[i];
            break;
        case RED_MAX:
            for (int64_t i = 0; i < len; i++) acc[i] = row[i] > acc[i] ? row[i] : acc[i];
            break;
        case RED_MIN:
            for (int64_t i = 0; i < len; i++) acc[i] = row[i] < acc[i] ? row[i] : acc[i];
            break;
        case RED_LOG_SUM_EXP:
            for (int64_t i = 0; i < len; i++)
                if (!isinf(shift[i])) acc[i] += expf(row[i] - shift[i]);
            break;
        }
    }
    for (int64_t i = 0; i < len; i++) {
        if (kind == RED_LOG_SUM_EXP)
            y[i] = isinf(shift[i]) ? shift[i] : shift[i] + logf(acc[i]);
        else
            y[i] = finish_f32(kind, acc[i], reduce_n);
    }
}

typedef struct reduce_f32_job {
    red_kind kind;
    int64_t reduce_n, inner, inner_blocks;
    const float *x;
    float *y;
} reduce_f32_job;

static void reduce_f32_items(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const reduce_f32_job *j = arg;
    for (int64_t w = begin; w < end; w++) {
        if (j->inner == 1) {
            j->y[w] = reduce_contiguous(j->kind, j->x + w * j->reduce_n, j->reduce_n);
            continue;
        }
        int64_t o = w / j->inner_blocks, i0 = (w % j->inner_blocks) * BLOCK;
        int64_t len = j->inner - i0 < BLOCK ? j->inner - i0 : BLOCK;
        reduce_strided(j->kind, j->x + o * j->reduce_n * j->inner + i0,
                       j->y + o * j->inner + i0, j->reduce_n, j->inner, len);
    }
}

/* -- general: any dtype, any axes -- */

typedef struct reduce_any_job {
    red_kind kind;
    bool use_int; /* accumulate in int64 (integer input, integer-valued kind) */
    int n_keep, n_red;
    int64_t keep_size[MASKD_MAX_DIMS], keep_stride[MASKD_MAX_DIMS];
    int64_t red_size[MASKD_MAX_DIMS], red_stride[MASKD_MAX_DIMS];
    int64_t reduce_n;
    const mk_tensor *x;
    mk_tensor *y;
} reduce_any_job;

static int64_t red_offset(const reduce_any_job *j, const int64_t *coord)
{
    int64_t off = 0;
    for (int k = 0; k < j->n_red; k++) off += coord[k] * j->red_stride[k];
    return off;
}

static void red_advance(const reduce_any_job *j, int64_t *coord)
{
    for (int k = j->n_red - 1; k >= 0; k--) {
        if (++coord[k] < j->red_size[k]) return;
        coord[k] = 0;
    }
}

static int64_t reduce_one_i64(const reduce_any_job *j, int64_t base)
{
    int64_t coord[MASKD_MAX_DIMS] = {0};
    int64_t acc = j->kind == RED_PROD ? 1 : j->kind == RED_MAX ? INT64_MIN
                : j->kind == RED_MIN ? INT64_MAX : 0;
    for (int64_t r = 0; r < j->reduce_n; r++, red_advance(j, coord)) {
        int64_t v = mk_get_i64(j->x, base + red_offset(j, coord));
        /* Wrap like the integer arithmetic of other runtimes, without UB. */
        switch (j->kind) {
        case RED_PROD: acc = (int64_t)((uint64_t)acc * (uint64_t)v); break;
        case RED_MAX: acc = v > acc ? v : acc; break;
        case RED_MIN: acc = v < acc ? v : acc; break;
        case RED_L1: {
            uint64_t magnitude = v < 0 ? -(uint64_t)v : (uint64_t)v;
            acc = (int64_t)((uint64_t)acc + magnitude);
            break;
        }
        case RED_SUM_SQUARE: acc = (int64_t)((uint64_t)acc + (uint64_t)v * (uint64_t)v); break;
        default: acc = (int64_t)((uint64_t)acc + (uint64_t)v); break;
        }
    }
    if (j->kind == RED_MEAN && j->reduce_n > 0) acc /= j->reduce_n;
    return acc;
}

static double reduce_one_f64(const reduce_any_job *j, int64_t base)
{
    int64_t coord[MASKD_MAX_DIMS] = {0};
    double shift = 0.0;
    if (j->kind == RED_LOG_SUM_EXP) {
        shift = -INFINITY;
        for (int64_t r = 0; r < j->reduce_n; r++, red_advance(j, coord)) {
            double v = mk_get_f64(j->x, base + red_offset(j, coord));
            shift = v > shift ? v : shift;
        }
        if (isinf(shift)) return shift;
    }
    double acc = j->kind == RED_PROD ? 1.0 : j->kind == RED_MAX ? -INFINITY
               : j->kind == RED_MIN ? INFINITY : 0.0;
    for (int64_t r = 0; r < j->reduce_n; r++, red_advance(j, coord)) {
        double v = mk_get_f64(j->x, base + red_offset(j, coord));
        switch (j->kind) {
        case RED_PROD: acc *= v; break;
        case RED_MAX: acc = v > acc ? v : acc; break;
        case RED_MIN: acc = v < acc ? v : acc; break;
        case RED_L1: acc += fabs(v); break;
        case RED_SUM_SQUARE: case RED_L2: acc += v * v; break;
        case RED_LOG_SUM_EXP: acc += exp(v - shift); break;
        default: acc += v; break;
        }
    }
    switch (j->kind) {
    case RED_MEAN: return acc / (double)j->reduce_n;
    case RED_L2: return sqrt(acc);
    case RED_LOG_SUM: return log(acc);
    case RED_LOG_SUM_EXP: return shift + log(acc);
    default: return acc;
    }
}

static void reduce_any_items(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const reduce_any_job *j = arg;
    int64_t coord[MASKD_MAX_DIMS];
    int64_t rest = begin;
    for (int k = j->n_keep - 1; k >= 0; k--) {
        coord[k] = rest % j->keep_size[k];
        rest /= j->keep_size[k];
    }
    for (int64_t o = begin; o < end; o++) {
        int64_t base = 0;
        for (int k = 0; k < j->n_keep; k++) base += coord[k] * j->keep_stride[k];
        if (j->use_int) {
            int64_t v = reduce_one_i64(j, base);
            mk_store_i64(j->y->dtype, j->y->data, o, 1, &v);
        } else {
            double v = reduce_one_f64(j, base);
            mk_store_f64(j->y->dtype, j->y->data, o, 1, &v);
        }
        for (int k = j->n_keep - 1; k >= 0; k--) {
            if (++coord[k] < j->keep_size[k]) break;
            coord[k] = 0;
        }
    }
}

static int reduce_run(mk_ctx *ctx, red_kind kind)
{
    const mk_tensor *x = ctx->in[0];
    mk_tensor *y = ctx->out[0];
    bool reduced[MASKD_MAX_DIMS];
    int rc = reduce_axes(ctx, kind, x, reduced);
    if (rc) return rc;
    int64_t n_out = mk_numel(y);
    if (n_out == 0) return MASKD_OK;
    reduce_shape s;
    reduce_shape_make(x, reduced, &s);

    int reduced_runs = 0, at = -1;
    for (int g = 0; g < s.n; g++)
        if (s.reduced[g]) reduced_runs++, at = g;
    int64_t reduce_n = 1;
    for (int g = 0; g < s.n; g++)
        if (s.reduced[g]) reduce_n *= s.size[g];
    /* Per output element work, to size parallel chunks. */
    int64_t grain = reduce_n >= 4096 ? 1 : 4096 / (reduce_n + 1) + 1;

    if (x->dtype == MASKD_FLOAT && reduced_runs <= 1) {
        int64_t outer = 1, inner = 1;
        for (int g = 0; g < s.n; g++) {
            if (at >= 0 && g < at) outer *= s.size[g];
            if (g > at) inner *= s.size[g];
        }
        reduce_f32_job j = {.kind = kind, .reduce_n = reduce_n, .inner = inner,
                            .inner_blocks = (inner + BLOCK - 1) / BLOCK, .x = x->data,
                            .y = y->data};
        int64_t items = inner == 1 ? outer : outer * j.inner_blocks;
        mk_parallel_for(ctx->pool, items, inner == 1 ? grain : 1 + 64 / (reduce_n + 1),
                        reduce_f32_items, &j);
        return MASKD_OK;
    }

    reduce_any_job j = {.kind = kind, .reduce_n = reduce_n, .x = x, .y = y};
    j.use_int = mk_is_int_dtype(x->dtype) && kind != RED_L2 && kind != RED_LOG_SUM &&
                kind != RED_LOG_SUM_EXP;
    for (int g = 0; g < s.n; g++) {
        if (s.reduced[g]) {
            j.red_size[j.n_red] = s.size[g];
            j.red_stride[j.n_red++] = s.stride[g];
        } else {
            j.keep_size[j.n_keep] = s.size[g];
            j.keep_stride[j.n_keep++] = s.stride[g];
        }
    }
    mk_parallel_for(ctx->pool, n_out, grain, reduce_any_items, &j);
    return MASKD_OK;
}

#define REDUCE_OP(fn, kind)                                                   \
    static int fn##_infer(mk_ctx *ctx) { return reduce_infer(ctx, kind); }  \
    static int fn##_run(mk_ctx *ctx) { return reduce_run(ctx, kind); }
REDUCE_OP(reduce_sum, RED_SUM)
REDUCE_OP(reduce_mean, RED_MEAN)
REDUCE_OP(reduce_max, RED_MAX)
REDUCE_OP(reduce_min, RED_MIN)
REDUCE_OP(reduce_prod, RED_PROD)
REDUCE_OP(reduce_l1, RED_L1)
REDUCE_OP(reduce_l2, RED_L2)
REDUCE_OP(reduce_sum_square, RED_SUM_SQUARE)
REDUCE_OP(reduce_log_sum, RED_LOG_SUM)
REDUCE_OP(reduce_log_sum_exp, RED_LOG_SUM_EXP)
#undef REDUCE_OP

/* ---- ArgMax / ArgMin ----------------------------------------------------- */

/* Input 0 (numeric, not a scalar) seen as [outer, n, inner] around the axis
 * attribute, as ArgMax, ArgMin and TopK walk it. */
static int split_at_axis(mk_ctx *ctx, int64_t default_axis, int *axis, int64_t *outer,
                         int64_t *n, int64_t *inner)
{
    const mk_tensor *x;
    int rc;
    if ((rc = need_numeric_input(ctx, 0, &x))) return rc;
    if (x->ndim == 0)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "input is a scalar");
    if ((rc = mk_normalize_axis(ctx, mk_attr_int(ctx->node, "axis", default_axis), x->ndim,
                                axis)))
        return rc;
    *n = x->dims[*axis];
    *outer = mk_dims_product(x->dims, 0, *axis);
    *inner = mk_dims_product(x->dims, *axis + 1, x->ndim);
    return MASKD_OK;
}

typedef struct arg_plan {
    int axis;
    int64_t outer, n, inner;
    bool select_last;
} arg_plan;

static int arg_make(mk_ctx *ctx, arg_plan *p)
{
    memset(p, 0, sizeof *p);
    int rc = split_at_axis(ctx, 0, &p->axis, &p->outer, &p->n, &p->inner);
    if (rc) return rc;
    if (p->n == 0)
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "axis %d is empty", p->axis);
    p->select_last = ctx->node->opset >= 12 && mk_attr_int(ctx->node, "select_last_index", 0);
    return MASKD_OK;
}

static int arg_infer(mk_ctx *ctx)
{
    arg_plan p;
    mk_tensor *y;
    int rc;
    if ((rc = mk_need_output(ctx, 0, &y)) || (rc = arg_make(ctx, &p))) return rc;
    const mk_tensor *x = ctx->in[0];
    bool keepdims = mk_attr_int(ctx->node, "keepdims", 1) != 0;
    int r = 0;
    for (int k = 0; k < x->ndim; k++) {
        if (k != p.axis)
            y->dims[r++] = x->dims[k];
        else if (keepdims)
            y->dims[r++] = 1;
    }
    y->dtype = MASKD_INT64;
    y->ndim = r;
    return MASKD_OK;
}

typedef struct arg_job {
    arg_plan p;
    bool is_max;
    int64_t inner_blocks;
    const mk_tensor *x;
    int64_t *y;
} arg_job;

/* Whether v replaces the best so far: strictly better, or equal when the
 * last index is wanted. */
#define ARG_BETTER(v, best)                                                    \
    (j->is_max ? (j->p.select_last ? (v) >= (best) : (v) > (best))             \
               : (j->p.select_last ? (v) <= (best) : (v) < (best)))

/* float32: a block of inner positions at once, walking the axis in the
 * outer loop so that reads stay contiguous (ArgMax over C of NCHW). */
static void arg_block_f32(const arg_job *j, int64_t o, int64_t i0, int64_t len)
{
    int64_t n = j->p.n, inner = j->p.inner;
    const float *x = (const float *)j->x->data + o * n * inner + i0;
    float best[BLOCK];
    int64_t at[BLOCK];
    for (int64_t i = 0; i < len; i++) best[i] = x[i], at[i] = 0;
    for (int64_t r = 1; r < n; r++) {
        const float *row = x + r * inner;
        for (int64_t i = 0; i < len; i++) {
            bool take = ARG_BETTER(row[i], best[i]);
            best[i] = take ? row[i] : best[i];
            at[i] = take ? r : at[i];
        }
    }
    memcpy(j->y + o * inner + i0, at, (size_t)len * sizeof at[0]);
}

static void arg_items(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const arg_job *j = arg;
    int64_t n = j->p.n, inner = j->p.inner;
    if (j->x->dtype == MASKD_FLOAT) {
        for (int64_t w = begin; w < end; w++) {
            int64_t o = w / j->inner_blocks, i0 = (w % j->inner_blocks) * BLOCK;
            arg_block_f32(j, o, i0, inner - i0 < BLOCK ? inner - i0 : BLOCK);
        }
        return;
    }
    for (int64_t w = begin; w < end; w++) {
        int64_t o = w / inner, i = w % inner, base = o * n * inner + i, best_at = 0;
        if (mk_is_int_dtype(j->x->dtype)) {
            int64_t best = mk_get_i64(j->x, base);
            for (int64_t r = 1; r < n; r++) {
                int64_t v = mk_get_i64(j->x, base + r * inner);
                if (ARG_BETTER(v, best)) best = v, best_at = r;
            }
        } else {
            double best = mk_get_f64(j->x, base);
            for (int64_t r = 1; r < n; r++) {
                double v = mk_get_f64(j->x, base + r * inner);
                if (ARG_BETTER(v, best)) best = v, best_at = r;
            }
        }
        j->y[w] = best_at;
    }
}
#undef ARG_BETTER

static int arg_run(mk_ctx *ctx, bool is_max)
{
    arg_job j = {.is_max = is_max, .x = ctx->in[0], .y = ctx->out[0]->data};
    int rc = arg_make(ctx, &j.p);
    if (rc) return rc;
    j.inner_blocks = (j.p.inner + BLOCK - 1) / BLOCK;
    int64_t items = j.x->dtype == MASKD_FLOAT ? j.p.outer * j.inner_blocks
                                              : j.p.outer * j.p.inner;
    int64_t per_item = j.x->dtype == MASKD_FLOAT ? j.p.n * BLOCK : j.p.n;
    mk_parallel_for(ctx->pool, items, per_item >= 4096 ? 1 : 4096 / per_item + 1, arg_items,
                    &j);
    return MASKD_OK;
}

static int argmax_run(mk_ctx *ctx) { return arg_run(ctx, true); }
static int argmin_run(mk_ctx *ctx) { return arg_run(ctx, false); }

/* ---- TopK ---------------------------------------------------------------- */

typedef struct topk_plan {
    int axis;
    int64_t k, outer, n, inner;
    bool largest;
} topk_plan;

typedef struct topk_entry {
    double key;
    int64_t index;
} topk_entry;

static int topk_make(mk_ctx *ctx, topk_plan *p)
{
    memset(p, 0, sizeof *p);
    int rc = split_at_axis(ctx, -1, &p->axis, &p->outer, &p->n, &p->inner);
    if (rc) return rc;
    if (ctx->node->opset < 10) {
        if (!mk_attr_find(ctx->node, "k"))
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "missing 'k'");
        p->k = mk_attr_int(ctx->node, "k", 0);
    } else {
        const mk_tensor *k = mk_input(ctx, 1);
        if (!k)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "missing K");
        if (k->ndim < 0) return MK_DYNAMIC;
        if (k->ndim > 1 || mk_numel(k) != 1 || !mk_is_int_dtype(k->dtype))
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "K must be a single integer");
        if (!k->data) return MK_DYNAMIC;
        p->k = mk_get_i64(k, 0);
    }
    if (p->k < 0 || p->k > p->n)
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "K = %lld but axis %d has %lld elements",
                          (long long)p->k, p->axis, (long long)p->n);
    p->largest = ctx->node->opset < 11 || mk_attr_int(ctx->node, "largest", 1) != 0;
    return MASKD_OK;
}

static int topk_infer(mk_ctx *ctx)
{
    topk_plan p;
    mk_tensor *values, *indices;
    int rc;
    if ((rc = mk_need_output(ctx, 0, &values)) || (rc = mk_need_output(ctx, 1, &indices)) ||
        (rc = topk_make(ctx, &p)))
        return rc;
    const mk_tensor *x = ctx->in[0];
    values->dtype = x->dtype;
    values->ndim = x->ndim;
    memcpy(values->dims, x->dims, sizeof values->dims);
    values->dims[p.axis] = p.k;
    indices->dtype = MASKD_INT64;
    indices->ndim = values->ndim;
    memcpy(indices->dims, values->dims, sizeof indices->dims);
    ctx->scratch_bytes = (size_t)p.n * sizeof(topk_entry);
    return MASKD_OK;
}

/* NaN orders above every number, so the order stays total. */
static int key_cmp(double a, double b)
{
    bool an = a != a, bn = b != b;
    if (an || bn) return an - bn;
    return (a > b) - (a < b);
}

/* Best first; equal keys by lower index, as the spec asks. */
static int cmp_largest(const void *pa, const void *pb)
{
    const topk_entry *a = pa, *b = pb;
    int c = key_cmp(b->key, a->key);
    return c ? c : (a->index > b->index) - (a->index < b->index);
}

static int cmp_smallest(const void *pa, const void *pb)
{
    const topk_entry *a = pa, *b = pb;
    int c = key_cmp(a->key, b->key);
    return c ? c : (a->index > b->index) - (a->index < b->index);
}

static void swap_entries(topk_entry *a, topk_entry *b)
{
    topk_entry t = *a;
    *a = *b;
    *b = t;
}

/* Moves the k best entries to the front (in no particular order):
 * quickselect with a median-of-three pivot, so a full sort is only paid on
 * the k survivors. */
static void select_best(topk_entry *e, int64_t n, int64_t k,
                        int (*cmp)(const void *, const void *))
{
    int64_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (cmp(&e[mid], &e[lo]) < 0) swap_entries(&e[mid], &e[lo]);
        if (cmp(&e[hi], &e[lo]) < 0) swap_entries(&e[hi], &e[lo]);
        if (cmp(&e[mid], &e[hi]) < 0) swap_entries(&e[mid], &e[hi]);
        /* e[hi] now holds the median of the three: the pivot. */
        int64_t store = lo;
        for (int64_t i = lo; i < hi; i++)
            if (cmp(&e[i], &e[hi]) < 0) swap_entries(&e[i], &e[store++]);
        swap_entries(&e[store], &e[hi]);
        if (store == want) return;
        if (store < want)
            lo = store + 1;
        else
            hi = store - 1;
    }
}

static int topk_run(mk_ctx *ctx)
{
    topk_plan p;
    int rc = topk_make(ctx, &p);
    if (rc) return rc;
    const mk_tensor *x = ctx->in[0];
    mk_tensor *values = ctx->out[0], *indices = ctx->out[1];
    if (p.k == 0 || p.outer * p.inner == 0) return MASKD_OK;
    size_t es = maskd_dtype_size(x->dtype);
    topk_entry *e = ctx->scratch;
    int (*cmp)(const void *, const void *) = p.largest ? cmp_largest : cmp_smallest;
    /* One slice at a time: detection heads run TopK on one long axis, where
     * the selection, not the slice count, is the cost. */
    for (int64_t o = 0; o < p.outer; o++) {
        for (int64_t i = 0; i < p.inner; i++) {
            int64_t base = o * p.n * p.inner + i;
            if (x->dtype == MASKD_FLOAT) {
                const float *xs = (const float *)x->data + base;
                for (int64_t r = 0; r < p.n; r++) e[r] = (topk_entry){xs[r * p.inner], r};
            } else {
                for (int64_t r = 0; r < p.n; r++)
                    e[r] = (topk_entry){mk_get_f64(x, base + r * p.inner), r};
            }
            if (p.k < p.n) select_best(e, p.n, p.k, cmp);
            qsort(e, (size_t)p.k, sizeof *e, cmp);
            int64_t obase = o * p.k * p.inner + i;
            for (int64_t r = 0; r < p.k; r++) {
                int64_t at = obase + r * p.inner;
                memcpy((unsigned char *)values->data + (size_t)at * es,
                       (const unsigned char *)x->data +
                           (size_t)(base + e[r].index * p.inner) * es,
                       es);
                ((int64_t *)indices->data)[at] = e[r].index;
            }
        }
    }
    return MASKD_OK;
}

MK_OP_FAMILY(reduce,
    {.domain = "", .op_type = "ReduceSum", .since_version = 1, .infer = reduce_sum_infer,
     .run = reduce_sum_run},
    {.domain = "", .op_type = "ReduceMean", .since_version = 1, .infer = reduce_mean_infer,
     .run = reduce_mean_run},
    {.domain = "", .op_type = "ReduceMax", .since_version = 1, .infer = reduce_max_infer,
     .run = reduce_max_run},
    {.domain = "", .op_type = "ReduceMin", .since_version = 1, .infer = reduce_min_infer,
     .run = reduce_min_run},
    {.domain = "", .op_type = "ReduceProd", .since_version = 1, .infer = reduce_prod_infer,
     .run = reduce_prod_run},
    {.domain = "", .op_type = "ReduceL1", .since_version = 1, .infer = reduce_l1_infer,
     .run = reduce_l1_run},
    {.domain = "", .op_type = "ReduceL2", .since_version = 1, .infer = reduce_l2_infer,
     .run = reduce_l2_run},
    {.domain = "", .op_type = "ReduceSumSquare", .since_version = 1,
     .infer = reduce_sum_square_infer, .run = reduce_sum_square_run},
    {.domain = "", .op_type = "ReduceLogSum", .since_version = 1,
     .infer = reduce_log_sum_infer, .run = reduce_log_sum_run},
    {.domain = "", .op_type = "ReduceLogSumExp", .since_version = 1,
     .infer = reduce_log_sum_exp_infer, .run = reduce_log_sum_exp_run},
    {.domain = "", .op_type = "ArgMax", .since_version = 1, .infer = arg_infer,
     .run = argmax_run},
    {.domain = "", .op_type = "ArgMin", .since_version = 1, .infer = arg_infer,
     .run = argmin_run},
    {.domain = "", .op_type = "TopK", .since_version = 1, .infer = topk_infer,
     .run = topk_run});
