/*
 * Operators that change how a buffer is viewed (Reshape, Flatten, Squeeze,
 * Unsqueeze, Identity, Dropout), that describe shapes (Shape, Size), that
 * make constants (Constant, ConstantOfShape), that change the element type
 * (Cast, CastLike) or that broadcast (Expand).
 *
 * Exporters compute shapes with int64 tensors flowing through these ops, and
 * the engine folds such chains at load by calling infer and run; so every op
 * here copies by element size and works for any dtype, and infer derives the
 * exact output shape from an input's values whenever those values decide it.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* ---- shared helpers ------------------------------------------------------ */

static void copy_data(mk_tensor *y, const mk_tensor *x)
{
    size_t n = mk_nbytes(x);
    if (n && y->data != x->data) memmove(y->data, x->data, n);
}

/* x's dtype with the shape given (x's own for Identity and the like). */
static void set_view(mk_tensor *y, const mk_tensor *x, int ndim, const int64_t *dims)
{
    y->dtype = x->dtype;
    y->ndim = ndim;
    memmove(y->dims, dims, (size_t)ndim * sizeof dims[0]);
}

/* ---- Reshape ------------------------------------------------------------- */

static int reshape_infer(mk_ctx *ctx)
{
    const mk_tensor *x;
    mk_tensor *y;
    int rc;
    if ((rc = mk_need_data_input(ctx, 0, &x)) || (rc = mk_need_output(ctx, 0, &y))) return rc;

    int64_t shape[MASKD_MAX_DIMS];
    int n = 0;
    if (ctx->node->opset < 5) {
        n = mk_attr_ints(ctx->node, "shape", shape, MASKD_MAX_DIMS);
        if (n < 0 || n > MASKD_MAX_DIMS)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "attribute 'shape' is missing or too long");
    } else {
        const mk_tensor *s = mk_input(ctx, 1);
        if (!s)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "missing 'shape'");
        if ((rc = mk_read_int_list(ctx, s, "shape", shape, MASKD_MAX_DIMS, &n))) return rc;
    }
    bool allowzero = ctx->node->opset >= 14 && mk_attr_int(ctx->node, "allowzero", 0) != 0;

    int64_t total = mk_numel(x), known = 1;
    int infer_at = -1;
    int64_t dims[MASKD_MAX_DIMS];
    for (int i = 0; i < n; i++) {
        int64_t v = shape[i];
        if (v == 0 && !allowzero) {
            if (i >= x->ndim)
                return mk_op_fail(ctx, MASKD_ERR_INVALID,
                                  "shape[%d] = 0 copies a dimension the "
                                  "rank-%d input does not have",
                                  i, x->ndim);
            v = x->dims[i];
        } else if (v == -1) {
            if (infer_at >= 0)
                return mk_op_fail(ctx, MASKD_ERR_INVALID, "more than one -1 in shape");
            infer_at = i;
            continue;
        } else if (v < 0) {
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "invalid dimension %lld in shape",
                              (long long)v);
        }
        dims[i] = v;
        if (__builtin_mul_overflow(known, v, &known))
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "shape overflows");
    }
    if (infer_at >= 0) {
        if (known == 0 || total % known)
            return mk_op_fail(ctx, MASKD_ERR_SHAPE,
                              "cannot infer -1 for %lld elements from the "
                              "other dimensions' product %lld",
                              (long long)total, (long long)known);
        dims[infer_at] = total / known;
    } else if (known != total) {
        char buf[128];
        return mk_op_fail(ctx, MASKD_ERR_SHAPE,
                          "cannot reshape %s (%lld elements) into %lld elements",
                          mk_shape_str(x, buf, sizeof buf), (long long)total, (long long)known);
    }
    set_view(y, x, n, dims);
    return MASKD_OK;
}

static int copy_run(mk_ctx *ctx)
{
    copy_data(ctx->out[0], ctx->in[0]);
    return MASKD_OK;
}

/* ---- Flatten ------------------------------------------------------------- */

static int flatten_infer(mk_ctx *ctx)
{
    const mk_tensor *x;
    mk_tensor *y;
    int rc;
    if ((rc = mk_need_data_input(ctx, 0, &x)) || (rc = mk_need_output(ctx, 0, &y))) return rc;
    int64_t axis = mk_attr_int(ctx->node, "axis", 1);
    if (axis < -x->ndim || axis > x->ndim)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "axis %lld is out of range for rank %d",
                          (long long)axis, x->ndim);
    if (axis < 0) axis += x->ndim;
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < x->ndim; i++) *(i < axis ? &outer : &inner) *= x->dims[i];
    set_view(y, x, 2, (int64_t[]){outer, inner});
    return MASKD_OK;
}

/* ---- Squeeze / Unsqueeze ------------------------------------------------- */

/* Input, output and axes of Squeeze / Unsqueeze; the axes come from the
 * attribute before opset 13, from the second input since.  *n = -1 when
 * none are given. */
static int squeeze_start(mk_ctx *ctx, const mk_tensor **x, mk_tensor **y, int64_t *axes, int *n)
{
    *n = -1;
    int rc;
    if ((rc = mk_need_data_input(ctx, 0, x)) || (rc = mk_need_output(ctx, 0, y))) return rc;
    if (ctx->node->opset < 13) {
        int count = mk_attr_ints(ctx->node, "axes", axes, MASKD_MAX_DIMS);
        if (count > MASKD_MAX_DIMS)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "too many axes");
        *n = count;
        return MASKD_OK;
    }
    const mk_tensor *a = mk_input(ctx, 1);
    return a ? mk_read_int_list(ctx, a, "axes", axes, MASKD_MAX_DIMS, n) : MASKD_OK;
}

static int squeeze_infer(mk_ctx *ctx)
{
    const mk_tensor *x;
    mk_tensor *y;
    int64_t axes[MASKD_MAX_DIMS];
    int n, rc;
    if ((rc = squeeze_start(ctx, &x, &y, axes, &n))) return rc;
    if ((rc = mk_normalize_axes(ctx, axes, n < 0 ? 0 : n, x->ndim))) return rc;

    bool drop[MASKD_MAX_DIMS] = {false};
    if (n < 0) {
        for (int i = 0; i < x->ndim; i++) drop[i] = x->dims[i] == 1;
    } else {
        for (int i = 0; i < n; i++) {
            if (x->dims[axes[i]] != 1) {
                char buf[128];
                return mk_op_fail(ctx, MASKD_ERR_SHAPE, "axis %lld of %s is not 1",
                                  (long long)axes[i], mk_shape_str(x, buf, sizeof buf));
            }
            drop[axes[i]] = true;
        }
    }
    int r = 0;
    int64_t dims[MASKD_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++)
        if (!drop[i]) dims[r++] = x->dims[i];
    set_view(y, x, r, dims);
    return MASKD_OK;
}

static int unsqueeze_infer(mk_ctx *ctx)
{
    const mk_tensor *x;
    mk_tensor *y;
    int64_t axes[MASKD_MAX_DIMS];
    int n, rc;
    if ((rc = squeeze_start(ctx, &x, &y, axes, &n))) return rc;
    if (n < 0)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "'axes' is required");
    int rank = x->ndim + n;
    if (rank > MASKD_MAX_DIMS)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "result has rank %d (at most %d)", rank,
                          MASKD_MAX_DIMS);
    if ((rc = mk_normalize_axes(ctx, axes, n, rank))) return rc;
    bool inserted[MASKD_MAX_DIMS] = {false};
    for (int i = 0; i < n; i++) inserted[axes[i]] = true;
    int src = 0;
    int64_t dims[MASKD_MAX_DIMS];
    for (int i = 0; i < rank; i++) dims[i] = inserted[i] ? 1 : x->dims[src++];
    set_view(y, x, rank, dims);
    return MASKD_OK;
}

/* ---- Shape / Size -------------------------------------------------------- */

static void shape_range(const mk_ctx *ctx, int rank, int64_t *start, int64_t *end)
{
    *start = 0;
    *end = rank;
    if (ctx->node->opset < 15) return;
    int64_t s = mk_attr_int(ctx->node, "start", 0);
    int64_t e = mk_attr_int(ctx->node, "end", rank);
    /* The spec clamps instead of failing on out-of-range start/end. */
    if (s < 0) s += rank;
    if (e < 0) e += rank;
    *start = s < 0 ? 0 : s > rank ? rank : s;
    *end = e < 0 ? 0 : e > rank ? rank : e;
}

static int shape_infer(mk_ctx *ctx)
{
    mk_tensor *x, *y;
    int rc;
    if ((rc = mk_need_output(ctx, 0, &y)) || (rc = mk_need_input(ctx, 0, &x))) return rc;
    if (x->ndim < 0) return MK_DYNAMIC;
    int64_t start, end;
    shape_range(ctx, x->ndim, &start, &end);
    y->dtype = MASKD_INT64;
    y->ndim = 1;
    y->dims[0] = end > start ? end - start : 0;
    return MASKD_OK;
}

static int shape_run(mk_ctx *ctx)
{
    const mk_tensor *x = ctx->in[0];
    int64_t start, end;
    shape_range(ctx, x->ndim, &start, &end);
    int64_t *y = ctx->out[0]->data;
    for (int64_t i = start; i < end; i++) y[i - start] = x->dims[i];
    return MASKD_OK;
}

static int size_infer(mk_ctx *ctx)
{
    mk_tensor *x, *y;
    int rc;
    if ((rc = mk_need_output(ctx, 0, &y)) || (rc = mk_need_input(ctx, 0, &x))) return rc;
    if (x->ndim < 0) return MK_DYNAMIC;
    y->dtype = MASKD_INT64;
    y->ndim = 0;
    return MASKD_OK;
}

static int size_run(mk_ctx *ctx)
{
    *(int64_t *)ctx->out[0]->data = mk_numel(ctx->in[0]);
    return MASKD_OK;
}

/* ---- Identity / Dropout -------------------------------------------------- */

static int identity_infer(mk_ctx *ctx)
{
    const mk_tensor *x;
    mk_tensor *y;
    int rc;
    if ((rc = mk_need_data_input(ctx, 0, &x)) || (rc = mk_need_output(ctx, 0, &y))) return rc;
    set_view(y, x, x->ndim, x->dims);
    return MASKD_OK;
}

/* Dropout-12 decides training from an input; the engine only infers. */
static int dropout_check_mode(mk_ctx *ctx)
{
    if (ctx->node->opset < 12) return MASKD_OK;
    const mk_tensor *training = mk_input(ctx, 2);
    if (!training || !training->data || mk_numel(training) < 1) return MASKD_OK;
    if (mk_get_i64(training, 0) != 0)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED,
                          "training_mode = true is not supported (inference engine)");
    return MASKD_OK;
}

static int dropout_infer(mk_ctx *ctx)
{
    int rc = identity_infer(ctx);
    if (rc) return rc;
    if ((rc = dropout_check_mode(ctx))) return rc;
    mk_tensor *mask = mk_output(ctx, 1);
    if (mask) {
        set_view(mask, ctx->in[0], ctx->in[0]->ndim, ctx->in[0]->dims);
        /* Before opset 10 the mask had the data's type. */
        if (ctx->node->opset >= 10) mask->dtype = MASKD_BOOL;
    }
    return MASKD_OK;
}

static void store_one(maskd_dtype dt, void *dst)
{
    switch (dt) {
    case MASKD_FLOAT: *(float *)dst = 1.0f; break;
    case MASKD_DOUBLE: *(double *)dst = 1.0; break;
    case MASKD_FLOAT16: *(uint16_t *)dst = 0x3c00; break;
    case MASKD_INT64: case MASKD_UINT64: *(int64_t *)dst = 1; break;
    case MASKD_INT32: case MASKD_UINT32: *(int32_t *)dst = 1; break;
    case MASKD_INT16: case MASKD_UINT16: *(int16_t *)dst = 1; break;
    default: *(uint8_t *)dst = 1; break;
    }
}

static int dropout_run(mk_ctx *ctx)
{
    int rc = dropout_check_mode(ctx);
    if (rc) return rc;
    copy_data(ctx->out[0], ctx->in[0]);
    mk_tensor *mask = mk_output(ctx, 1);
    if (mask) {
        unsigned char one[8];
        store_one(mask->dtype, one);
        mk_fill_elements(mask->data, one, maskd_dtype_size(mask->dtype), mk_numel(mask));
    }
    return MASKD_OK;
}

/* ---- Constant ------------------------------------------------------------ */

/* The constant as a tensor viewing the attribute's memory. */
static int constant_view(mk_ctx *ctx, mk_tensor *t)
{
    const mk_node *n = ctx->node;
    int found = 0;
    memset(t, 0, sizeof *t);
    for (int i = 0; i < n->n_attrs; i++) {
        const mk_attr *a = &n->attrs[i];
        if (!strcmp(a->name, "value") && a->type == MK_ATTR_TENSOR && a->t) {
            *t = *a->t;
        } else if (!strcmp(a->name, "value_float") && a->type == MK_ATTR_FLOAT) {
            t->dtype = MASKD_FLOAT;
            t->ndim = 0;
            t->data = (void *)&a->f;
        } else if (!strcmp(a->name, "value_floats") && a->type == MK_ATTR_FLOATS) {
            t->dtype = MASKD_FLOAT;
            t->ndim = 1;
            t->dims[0] = a->n;
            t->data = a->floats;
        } else if (!strcmp(a->name, "value_int") && a->type == MK_ATTR_INT) {
            t->dtype = MASKD_INT64;
            t->ndim = 0;
            t->data = (void *)&a->i;
        } else if (!strcmp(a->name, "value_ints") && a->type == MK_ATTR_INTS) {
            t->dtype = MASKD_INT64;
            t->ndim = 1;
            t->dims[0] = a->n;
            t->data = a->ints;
        } else if (!strcmp(a->name, "sparse_value")) {
            return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "sparse_value is not supported");
        } else if (!strncmp(a->name, "value_string", 12)) {
            return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "string constants are not supported");
        } else {
            continue;
        }
        found++;
    }
    if (found != 1)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "needs exactly one value attribute, found %d",
                          found);
    return MASKD_OK;
}

static int constant_prepare(mk_ctx *ctx)
{
    mk_tensor view;
    return constant_view(ctx, &view);
}

static int constant_infer(mk_ctx *ctx)
{
    mk_tensor view, *y;
    int rc;
    if ((rc = mk_need_output(ctx, 0, &y)) || (rc = constant_view(ctx, &view))) return rc;
    set_view(y, &view, view.ndim, view.dims);
    return MASKD_OK;
}

static int constant_run(mk_ctx *ctx)
{
    mk_tensor view;
    int rc = constant_view(ctx, &view);
    if (rc) return rc;
    copy_data(ctx->out[0], &view);
    return MASKD_OK;
}

/* ---- ConstantOfShape ----------------------------------------------------- */

static int constant_of_shape_value(mk_ctx *ctx, maskd_dtype *dt, unsigned char elem[8])
{
    const mk_attr *a = mk_attr_find(ctx->node, "value");
    memset(elem, 0, 8);
    *dt = MASKD_FLOAT;
    if (!a) return MASKD_OK;
    if (a->type != MK_ATTR_TENSOR || !a->t || mk_numel(a->t) != 1)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "'value' must be a one-element tensor");
    size_t es = maskd_dtype_size(a->t->dtype);
    if (es == 0 || es > 8)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "value type %s is not supported",
                          maskd_dtype_name(a->t->dtype));
    *dt = a->t->dtype;
    memcpy(elem, a->t->data, es);
    return MASKD_OK;
}

static int constant_of_shape_prepare(mk_ctx *ctx)
{
    unsigned char elem[8];
    maskd_dtype dt;
    return constant_of_shape_value(ctx, &dt, elem);
}

static int constant_of_shape_infer(mk_ctx *ctx)
{
    mk_tensor *s, *y;
    int rc;
    if ((rc = mk_need_output(ctx, 0, &y)) || (rc = mk_need_input(ctx, 0, &s))) return rc;
    unsigned char elem[8];
    maskd_dtype dt;
    if ((rc = constant_of_shape_value(ctx, &dt, elem))) return rc;
    int64_t dims[MASKD_MAX_DIMS];
    int n = 0;
    if ((rc = mk_read_int_list(ctx, s, "input", dims, MASKD_MAX_DIMS, &n))) return rc;
    for (int i = 0; i < n; i++)
        if (dims[i] < 0)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "negative dimension %lld",
                              (long long)dims[i]);
    y->dtype = dt;
    y->ndim = n;
    memcpy(y->dims, dims, (size_t)n * sizeof dims[0]);
    return MASKD_OK;
}

static int constant_of_shape_run(mk_ctx *ctx)
{
    unsigned char elem[8];
    maskd_dtype dt;
    int rc = constant_of_shape_value(ctx, &dt, elem);
    if (rc) return rc;
    mk_fill_elements(ctx->out[0]->data, elem, maskd_dtype_size(dt), mk_numel(ctx->out[0]));
    return MASKD_OK;
}

/* ---- Cast ---------------------------------------------------------------- */

static bool is_float_type(maskd_dtype t)
{
    return t == MASKD_FLOAT || t == MASKD_DOUBLE || t == MASKD_FLOAT16;
}

static void load_f64(maskd_dtype t, const void *src, int64_t at, int n, double *buf)
{
    switch (t) {
    case MASKD_FLOAT: for (int i = 0; i < n; i++) buf[i] = ((const float *)src)[at + i]; break;
    case MASKD_DOUBLE: for (int i = 0; i < n; i++) buf[i] = ((const double *)src)[at + i]; break;
    case MASKD_FLOAT16:
        for (int i = 0; i < n; i++) buf[i] = mk_half_to_float(((const uint16_t *)src)[at + i]);
        break;
    case MASKD_UINT64:
        for (int i = 0; i < n; i++) buf[i] = (double)((const uint64_t *)src)[at + i];
        break;
    default: {
        mk_tensor view = {.dtype = t, .data = (void *)src};
        for (int i = 0; i < n; i++) buf[i] = (double)mk_get_i64(&view, at + i);
        break;
    }
    }
}

static void load_i64(maskd_dtype t, const void *src, int64_t at, int n, int64_t *buf)
{
    mk_tensor view = {.dtype = t, .data = (void *)src};
    if (t == MASKD_INT64) {
        memcpy(buf, (const int64_t *)src + at, (size_t)n * sizeof *buf);
        return;
    }
    for (int i = 0; i < n; i++) buf[i] = mk_get_i64(&view, at + i);
}

typedef struct cast_job {
    maskd_dtype from, to;
    const void *src;
    void *dst;
} cast_job;

static void cast_range(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const cast_job *j = arg;
    enum { CHUNK = 256 };
    /* Integer to integer stays in int64 so that no value rounds. */
    bool exact_int = !is_float_type(j->from) && !is_float_type(j->to) && j->from != MASKD_UINT64;
    if (j->from == MASKD_FLOAT && j->to == MASKD_FLOAT16) {
        for (int64_t i = begin; i < end; i++)
            ((uint16_t *)j->dst)[i] = mk_float_to_half(((const float *)j->src)[i]);
        return;
    }
    if (j->from == MASKD_FLOAT16 && j->to == MASKD_FLOAT) {
        for (int64_t i = begin; i < end; i++)
            ((float *)j->dst)[i] = mk_half_to_float(((const uint16_t *)j->src)[i]);
        return;
    }
    for (int64_t at = begin; at < end; at += CHUNK) {
        int n = end - at < CHUNK ? (int)(end - at) : CHUNK;
        if (exact_int) {
            int64_t buf[CHUNK];
            load_i64(j->from, j->src, at, n, buf);
            mk_store_i64(j->to, j->dst, at, n, buf);
        } else {
            double buf[CHUNK];
            load_f64(j->from, j->src, at, n, buf);
            mk_store_f64(j->to, j->dst, at, n, buf);
        }
    }
}

static int cast_check_types(mk_ctx *ctx, maskd_dtype from, int64_t to)
{
    if (to == MASKD_STRING || from == MASKD_STRING)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "casts to or from string are not supported");
    if (to < 0 || to > MASKD_UINT64 || maskd_dtype_size((maskd_dtype)to) == 0)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "cast to type %lld is not supported",
                          (long long)to);
    return MASKD_OK;
}

static int cast_target(mk_ctx *ctx, maskd_dtype *to)
{
    *to = MASKD_UNDEFINED;
    int64_t t;
    if (!strcmp(ctx->node->op_type, "CastLike")) {
        const mk_tensor *like = mk_input(ctx, 1);
        if (!like)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "missing 'target_type'");
        t = like->dtype;
    } else {
        if (!mk_attr_find(ctx->node, "to"))
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "missing 'to'");
        t = mk_attr_int(ctx->node, "to", 0);
    }
    int rc = cast_check_types(ctx, ctx->in[0]->dtype, t);
    if (rc) return rc;
    *to = (maskd_dtype)t;
    return MASKD_OK;
}

/* At load: a cast the engine cannot do fails here, not on the first request. */
static int cast_prepare(mk_ctx *ctx)
{
    const mk_tensor *x = mk_input(ctx, 0), *like = mk_input(ctx, 1);
    maskd_dtype from = x ? x->dtype : MASKD_UNDEFINED;
    if (!strcmp(ctx->node->op_type, "CastLike")) {
        if (like && like->dtype != MASKD_UNDEFINED)
            return cast_check_types(ctx, from, like->dtype);
        return from == MASKD_STRING ? cast_check_types(ctx, from, MASKD_FLOAT) : MASKD_OK;
    }
    if (!mk_attr_find(ctx->node, "to"))
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "missing 'to'");
    return cast_check_types(ctx, from, mk_attr_int(ctx->node, "to", 0));
}

static int cast_infer(mk_ctx *ctx)
{
    const mk_tensor *x = mk_input(ctx, 0);
    mk_tensor *y;
    int rc;
    if ((rc = mk_need_output(ctx, 0, &y))) return rc;
    if (x && x->dtype == MASKD_STRING)
        return cast_check_types(ctx, x->dtype, MASKD_FLOAT);
    if ((rc = mk_need_data_input(ctx, 0, &x))) return rc;
    maskd_dtype to;
    if ((rc = cast_target(ctx, &to))) return rc;
    set_view(y, x, x->ndim, x->dims);
    y->dtype = to;
    return MASKD_OK;
}

static int cast_run(mk_ctx *ctx)
{
    const mk_tensor *x = ctx->in[0];
    mk_tensor *y = ctx->out[0];
    if (x->dtype == y->dtype) {
        copy_data(y, x);
        return MASKD_OK;
    }
    cast_job j = {.from = x->dtype, .to = y->dtype, .src = x->data, .dst = y->data};
    mk_parallel_for(ctx->pool, mk_numel(x), 1 << 14, cast_range, &j);
    return MASKD_OK;
}

/* ---- Expand -------------------------------------------------------------- */

static int expand_infer(mk_ctx *ctx)
{
    const mk_tensor *x, *s = mk_input(ctx, 1);
    mk_tensor *y;
    int rc;
    if ((rc = mk_need_data_input(ctx, 0, &x)) || (rc = mk_need_output(ctx, 0, &y))) return rc;
    if (!s)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "missing 'shape'");
    int64_t shape[MASKD_MAX_DIMS];
    int n = 0;
    if ((rc = mk_read_int_list(ctx, s, "shape", shape, MASKD_MAX_DIMS, &n))) return rc;
    int rank = n > x->ndim ? n : x->ndim;
    int64_t dims[MASKD_MAX_DIMS];
    for (int i = 0; i < rank; i++) {
        int xi = i - (rank - x->ndim), si = i - (rank - n);
        int64_t a = xi >= 0 ? x->dims[xi] : 1, b = si >= 0 ? shape[si] : 1;
        if (b < 0 || (a != b && a != 1 && b != 1)) {
            char buf[128];
            return mk_op_fail(ctx, MASKD_ERR_SHAPE,
                              "cannot broadcast %s to shape value %lld at axis %d",
                              mk_shape_str(x, buf, sizeof buf), (long long)b, i);
        }
        dims[i] = a == 1 ? b : a;
    }
    set_view(y, x, rank, dims);
    return MASKD_OK;
}

/* A broadcast copy seen as rows: all axes but the last are walked with a
 * coordinate counter; the last is either contiguous in the source or a
 * single element repeated. */
typedef struct expand_job {
    int rank;
    int64_t dims[MASKD_MAX_DIMS];   /* output dims, merged */
    int64_t stride[MASKD_MAX_DIMS]; /* source strides in elements, 0 = broadcast */
    size_t esize;
    const unsigned char *src;
    unsigned char *dst;
} expand_job;

static void expand_rows(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const expand_job *j = arg;
    int last = j->rank - 1;
    int64_t len = j->dims[last];
    size_t es = j->esize;
    int64_t coord[MASKD_MAX_DIMS] = {0};
    int64_t rest = begin;
    for (int k = last - 1; k >= 0; k--) {
        coord[k] = rest % j->dims[k];
        rest /= j->dims[k];
    }
    for (int64_t row = begin; row < end; row++) {
        int64_t off = 0;
        for (int k = 0; k < last; k++) off += coord[k] * j->stride[k];
        unsigned char *d = j->dst + (size_t)(row * len) * es;
        const unsigned char *s = j->src + (size_t)off * es;
        if (j->stride[last])
            memcpy(d, s, (size_t)len * es);
        else
            mk_fill_elements(d, s, es, len);
        for (int k = last - 1; k >= 0; k--) {
            if (++coord[k] < j->dims[k]) break;
            coord[k] = 0;
        }
    }
}

static int expand_run(mk_ctx *ctx)
{
    const mk_tensor *x = ctx->in[0];
    mk_tensor *y = ctx->out[0];
    int64_t total = mk_numel(y);
    if (total == 0) return MASKD_OK;
    expand_job j = {.esize = maskd_dtype_size(x->dtype), .src = x->data, .dst = y->data};

    /* Source strides aligned to the output's rank; then merge neighbouring
     * axes that are both broadcast or both copied, so rows get long. */
    int64_t stride[MASKD_MAX_DIMS], acc = 1;
    int off = y->ndim - x->ndim;
    for (int i = y->ndim - 1; i >= 0; i--) {
        int xi = i - off;
        int64_t xd = xi >= 0 ? x->dims[xi] : 1;
        stride[i] = xd == 1 && y->dims[i] != 1 ? 0 : acc;
        acc *= xd;
    }
    j.rank = 0;
    for (int i = 0; i < y->ndim; i++) {
        if (y->dims[i] == 1) continue;
        if (j.rank > 0 && (stride[i] == 0) == (j.stride[j.rank - 1] == 0)) {
            j.dims[j.rank - 1] *= y->dims[i];
            j.stride[j.rank - 1] = stride[i];
            continue;
        }
        j.dims[j.rank] = y->dims[i];
        j.stride[j.rank] = stride[i];
        j.rank++;
    }
    if (j.rank == 0) {
        memcpy(y->data, x->data, j.esize);
        return MASKD_OK;
    }
    int64_t len = j.dims[j.rank - 1];
    mk_parallel_for(ctx->pool, total / len, mk_row_grain(len, j.esize), expand_rows, &j);
    return MASKD_OK;
}

MK_OP_FAMILY(shape,
    {.domain = "", .op_type = "Reshape", .since_version = 1, .infer = reshape_infer,
     .run = copy_run, .view = 1},
    {.domain = "", .op_type = "Flatten", .since_version = 1, .infer = flatten_infer,
     .run = copy_run, .view = 1},
    {.domain = "", .op_type = "Squeeze", .since_version = 1, .infer = squeeze_infer,
     .run = copy_run, .view = 1},
    {.domain = "", .op_type = "Unsqueeze", .since_version = 1, .infer = unsqueeze_infer,
     .run = copy_run, .view = 1},
    {.domain = "", .op_type = "Shape", .since_version = 1, .infer = shape_infer,
     .run = shape_run, .shape_only = 1},
    {.domain = "", .op_type = "Size", .since_version = 1, .infer = size_infer,
     .run = size_run, .shape_only = 1},
    {.domain = "", .op_type = "Identity", .since_version = 1, .infer = identity_infer,
     .run = copy_run, .view = 1},
    {.domain = "", .op_type = "Dropout", .since_version = 1, .prepare = dropout_check_mode,
     .infer = dropout_infer,
     .run = dropout_run, .view = 1},
    {.domain = "", .op_type = "Constant", .since_version = 1, .prepare = constant_prepare,
     .infer = constant_infer,
     .run = constant_run},
    {.domain = "", .op_type = "ConstantOfShape", .since_version = 9,
     .prepare = constant_of_shape_prepare, .infer = constant_of_shape_infer,
     .run = constant_of_shape_run},
    {.domain = "", .op_type = "Cast", .since_version = 1, .prepare = cast_prepare,
     .infer = cast_infer,
     .run = cast_run},
    {.domain = "", .op_type = "CastLike", .since_version = 15, .prepare = cast_prepare,
     .infer = cast_infer,
     .run = cast_run},
    {.domain = "", .op_type = "Expand", .since_version = 8, .infer = expand_infer,
     .run = expand_run});
