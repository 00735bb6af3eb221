/*
 * Operators that move elements around without computing on them: Concat,
 * Split, Slice, Gather, GatherElements, Transpose, Pad and Tile.
 *
 * They copy by element size, so one implementation serves every dtype (the
 * int64 shape arithmetic exporters emit goes through the same code as
 * float feature maps).  Most walk the output as rows: a coordinate counter
 * over all axes but the last, and a memcpy or a strided loop along it.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* ---- shared helpers ------------------------------------------------------ */

/* The same from an INTS attribute; *count = -1 when absent. */
static int read_int_attr(mk_ctx *ctx, const char *name, int64_t *vals, int cap, int *count)
{
    *count = -1;
    int n = mk_attr_ints(ctx->node, name, vals, cap);
    if (n > cap)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "attribute '%s' has %d values (at most %d)", name,
                          n, cap);
    *count = n;
    return MASKD_OK;
}

static void contiguous_strides(const mk_tensor *t, int64_t *stride)
{
    int64_t acc = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        stride[i] = acc;
        acc *= t->dims[i];
    }
}

static void unravel(int64_t index, const int64_t *dims, int n, int64_t *coord)
{
    for (int k = n - 1; k >= 0; k--) {
        coord[k] = index % dims[k];
        index /= dims[k];
    }
}

static void advance(int64_t *coord, const int64_t *dims, int n)
{
    for (int k = n - 1; k >= 0; k--) {
        if (++coord[k] < dims[k]) return;
        coord[k] = 0;
    }
}

/* n elements from src (stride in elements) to contiguous dst. */
static void copy_strided(void *dst, const void *src, int64_t n, int64_t stride, size_t es)
{
    if (stride == 1) {
        memcpy(dst, src, (size_t)n * es);
        return;
    }
    switch (es) {
#define STRIDED(T)                                                                  \
    for (int64_t i = 0; i < n; i++) ((T *)dst)[i] = ((const T *)src)[i * stride]; \
    break;
    case 1: STRIDED(uint8_t)
    case 2: STRIDED(uint16_t)
    case 4: STRIDED(uint32_t)
    case 8: STRIDED(uint64_t)
#undef STRIDED
    default:
        for (int64_t i = 0; i < n; i++)
            memcpy((unsigned char *)dst + i * es, (const unsigned char *)src + i * stride * es,
                   es);
    }
}

/* The tail of the ops that build y row by row (every axis but the last)
 * from x of the same rank: fn over the rows in parallel, or the single
 * element of a scalar. */
static void run_rows(mk_ctx *ctx, const mk_tensor *x, mk_tensor *y, mk_range_fn fn, void *job)
{
    size_t es = maskd_dtype_size(y->dtype);
    int64_t total = mk_numel(y);
    if (total == 0) return;
    if (y->ndim == 0) {
        memcpy(y->data, x->data, es);
        return;
    }
    int64_t len = y->dims[y->ndim - 1];
    mk_parallel_for(ctx->pool, total / len, mk_row_grain(len, es), fn, job);
}

/* ---- Concat -------------------------------------------------------------- */

static int concat_infer(mk_ctx *ctx)
{
    mk_tensor *y;
    int rc;
    if ((rc = mk_need_output(ctx, 0, &y))) return rc;
    if (ctx->n_in < 1)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "no inputs");
    const mk_tensor *x;
    for (int i = 0; i < ctx->n_in; i++)
        if ((rc = mk_need_data_input(ctx, i, &x))) return rc;
    const mk_tensor *first = ctx->in[0];
    int rank = first->ndim;
    if (rank == 0)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "inputs are scalars");
    if (ctx->node->opset >= 4 && !mk_attr_find(ctx->node, "axis"))
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "missing 'axis'");
    int axis;
    if ((rc = mk_normalize_axis(ctx, mk_attr_int(ctx->node, "axis", 1), rank, &axis))) return rc;
    int64_t sum = 0;
    for (int i = 0; i < ctx->n_in; i++) {
        const mk_tensor *t = ctx->in[i];
        bool ok = t->dtype == first->dtype && t->ndim == rank;
        for (int k = 0; ok && k < rank; k++) ok = k == axis || t->dims[k] == first->dims[k];
        if (!ok) {
            char a[128], b[128];
            return mk_op_fail(ctx, MASKD_ERR_SHAPE,
                              "input %d (%s %s) does not match input 0 (%s %s) on axis %d", i,
                              maskd_dtype_name(t->dtype), mk_shape_str(t, a, sizeof a),
                              maskd_dtype_name(first->dtype), mk_shape_str(first, b, sizeof b),
                              axis);
        }
        sum += t->dims[axis];
    }
    y->dtype = first->dtype;
    y->ndim = rank;
    memcpy(y->dims, first->dims, sizeof y->dims);
    y->dims[axis] = sum;
    return MASKD_OK;
}

typedef struct concat_job {
    const mk_ctx *ctx;
    size_t inner_bytes; /* bytes of one step along the axis */
    size_t row_bytes;   /* bytes of one output row (everything from the axis on) */
    int axis;
} concat_job;

static void concat_rows(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const concat_job *j = arg;
    unsigned char *dst = j->ctx->out[0]->data;
    for (int64_t o = begin; o < end; o++) {
        unsigned char *d = dst + (size_t)o * j->row_bytes;
        for (int i = 0; i < j->ctx->n_in; i++) {
            const mk_tensor *t = j->ctx->in[i];
            size_t part = (size_t)t->dims[j->axis] * j->inner_bytes;
            if (part) memcpy(d, (const unsigned char *)t->data + (size_t)o * part, part);
            d += part;
        }
    }
}

static int concat_run(mk_ctx *ctx)
{
    mk_tensor *y = ctx->out[0];
    if (mk_numel(y) == 0) return MASKD_OK;
    int axis;
    mk_normalize_axis(ctx, mk_attr_int(ctx->node, "axis", 1), y->ndim, &axis);
    int64_t outer = mk_dims_product(y->dims, 0, axis);
    int64_t inner = mk_dims_product(y->dims, axis + 1, y->ndim);
    size_t es = maskd_dtype_size(y->dtype);
    concat_job j = {.ctx = ctx, .inner_bytes = (size_t)inner * es,
                    .row_bytes = (size_t)(y->dims[axis] * inner) * es, .axis = axis};
    mk_parallel_for(ctx->pool, outer, mk_row_grain(y->dims[axis] * inner, es), concat_rows, &j);
    return MASKD_OK;
}

/* ---- Split --------------------------------------------------------------- */

typedef struct split_plan {
    int axis;
    int64_t dim;
    const mk_tensor *sizes_input;
    const mk_attr *sizes_attr;
    int64_t equal; /* part size when no sizes are given */
} split_plan;

static int64_t split_size(const split_plan *p, int i)
{
    if (p->sizes_input) return mk_get_i64(p->sizes_input, i);
    if (p->sizes_attr) return p->sizes_attr->ints[i];
    int64_t left = p->dim - (int64_t)i * p->equal;
    return left < 0 ? 0 : left < p->equal ? left : p->equal;
}

static int split_make(mk_ctx *ctx, split_plan *p)
{
    memset(p, 0, sizeof *p);
    const mk_tensor *x;
    int rc;
    if ((rc = mk_need_data_input(ctx, 0, &x))) return rc;
    if (x->ndim == 0)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "input is a scalar");
    if ((rc = mk_normalize_axis(ctx, mk_attr_int(ctx->node, "axis", 0), x->ndim, &p->axis)))
        return rc;
    p->dim = x->dims[p->axis];
    int n = ctx->n_out;
    if (n < 1)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "no outputs");
    if (ctx->node->opset >= 13) {
        const mk_tensor *s = mk_input(ctx, 1);
        if (s) {
            if (s->ndim != 1 || mk_numel(s) != n || !mk_is_int_dtype(s->dtype))
                return mk_op_fail(ctx, MASKD_ERR_INVALID, "'split' must be %d integers", n);
            if (!s->data) return MK_DYNAMIC;
            p->sizes_input = s;
        }
    } else {
        const mk_attr *a = mk_attr_find(ctx->node, "split");
        if (a && a->type == MK_ATTR_INTS) {
            if (a->n != n)
                return mk_op_fail(ctx, MASKD_ERR_INVALID, "'split' has %d values for %d outputs",
                                  a->n, n);
            p->sizes_attr = a;
        }
    }
    if (!p->sizes_input && !p->sizes_attr) {
        int64_t parts = n;
        if (ctx->node->opset >= 18 && mk_attr_find(ctx->node, "num_outputs")) {
            parts = mk_attr_int(ctx->node, "num_outputs", n);
            if (parts != n)
                return mk_op_fail(ctx, MASKD_ERR_INVALID,
                                  "num_outputs = %lld but the node has %d outputs",
                                  (long long)parts, n);
            /* Opset 18: uneven splits make the last part smaller. */
            p->equal = (p->dim + parts - 1) / parts;
        } else {
            if (p->dim % parts)
                return mk_op_fail(ctx, MASKD_ERR_SHAPE,
                                  "axis size %lld does not split into %lld equal parts",
                                  (long long)p->dim, (long long)parts);
            p->equal = p->dim / parts;
        }
    }
    int64_t sum = 0;
    for (int i = 0; i < n; i++) {
        int64_t s = split_size(p, i);
        if (s < 0)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "negative part %lld", (long long)s);
        sum += s;
    }
    if (sum != p->dim)
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "parts sum to %lld but the axis has %lld",
                          (long long)sum, (long long)p->dim);
    return MASKD_OK;
}

static int split_infer(mk_ctx *ctx)
{
    split_plan p;
    int rc = split_make(ctx, &p);
    if (rc) return rc;
    const mk_tensor *x = ctx->in[0];
    for (int i = 0; i < ctx->n_out; i++) {
        mk_tensor *y = ctx->out[i];
        if (!y) continue;
        y->dtype = x->dtype;
        y->ndim = x->ndim;
        memcpy(y->dims, x->dims, sizeof y->dims);
        y->dims[p.axis] = split_size(&p, i);
    }
    return MASKD_OK;
}

static int split_run(mk_ctx *ctx)
{
    split_plan p;
    int rc = split_make(ctx, &p);
    if (rc) return rc;
    const mk_tensor *x = ctx->in[0];
    size_t es = maskd_dtype_size(x->dtype);
    int64_t outer = mk_dims_product(x->dims, 0, p.axis);
    int64_t inner = mk_dims_product(x->dims, p.axis + 1, x->ndim);
    const unsigned char *src = x->data;
    size_t in_row = (size_t)(p.dim * inner) * es;
    int64_t offset = 0;
    for (int i = 0; i < ctx->n_out; i++) {
        int64_t s = split_size(&p, i);
        mk_tensor *y = ctx->out[i];
        size_t part = (size_t)(s * inner) * es;
        if (y && part)
            for (int64_t o = 0; o < outer; o++)
                memcpy((unsigned char *)y->data + (size_t)o * part,
                       src + (size_t)o * in_row + (size_t)(offset * inner) * es, part);
        offset += s;
    }
    return MASKD_OK;
}

/* ---- Slice --------------------------------------------------------------- */

typedef struct slice_plan {
    int64_t start[MASKD_MAX_DIMS], step[MASKD_MAX_DIMS], count[MASKD_MAX_DIMS];
} slice_plan;

static int slice_list(mk_ctx *ctx, int index, const char *attr, int64_t *vals, int *n)
{
    *n = -1;
    if (ctx->node->opset < 10) return read_int_attr(ctx, attr, vals, MASKD_MAX_DIMS, n);
    const mk_tensor *t = mk_input(ctx, index);
    if (!t) return MASKD_OK;
    return mk_read_int_list(ctx, t, attr, vals, MASKD_MAX_DIMS, n);
}

static int slice_make(mk_ctx *ctx, slice_plan *p)
{
    memset(p, 0, sizeof *p);
    const mk_tensor *x;
    int rc;
    if ((rc = mk_need_data_input(ctx, 0, &x))) return rc;
    int rank = x->ndim;
    int64_t starts[MASKD_MAX_DIMS], ends[MASKD_MAX_DIMS], axes[MASKD_MAX_DIMS],
        steps[MASKD_MAX_DIMS];
    int ns, ne, na, nst;
    if ((rc = slice_list(ctx, 1, "starts", starts, &ns)) ||
        (rc = slice_list(ctx, 2, "ends", ends, &ne)) ||
        (rc = slice_list(ctx, 3, "axes", axes, &na)))
        return rc;
    nst = -1;
    if (ctx->node->opset >= 10 && (rc = slice_list(ctx, 4, "steps", steps, &nst))) return rc;
    if (ns < 0 || ne < 0 || ns != ne || (na >= 0 && na != ns) || (nst >= 0 && nst != ns))
        return mk_op_fail(ctx, MASKD_ERR_INVALID,
                          "starts, ends, axes and steps must have the same length");
    for (int k = 0; k < rank; k++) {
        p->start[k] = 0;
        p->step[k] = 1;
        p->count[k] = x->dims[k];
    }
    if (na < 0)
        for (int i = 0; i < ns; i++) axes[i] = i;
    if ((rc = mk_normalize_axes(ctx, axes, ns, rank))) return rc;
    for (int i = 0; i < ns; i++) {
        int axis = (int)axes[i];
        int64_t step = nst >= 0 ? steps[i] : 1;
        if (step == 0)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "step is 0");
        /* Beyond ±dim all steps behave alike; this also keeps -step finite. */
        if (step < -INT64_MAX) step = -INT64_MAX;
        int64_t d = x->dims[axis], s = starts[i], e = ends[i], count;
        if (s < 0) s += d;
        if (e < 0) e += d;
        if (d == 0) {
            s = 0;
            count = 0;
        } else if (step > 0) {
            s = s < 0 ? 0 : s > d ? d : s;
            e = e < 0 ? 0 : e > d ? d : e;
            count = e > s ? (e - s - 1) / step + 1 : 0;
        } else {
            s = s < 0 ? 0 : s > d - 1 ? d - 1 : s;
            e = e < -1 ? -1 : e > d - 1 ? d - 1 : e;
            count = s > e ? (s - e - 1) / -step + 1 : 0;
        }
        p->start[axis] = s;
        p->step[axis] = step;
        p->count[axis] = count;
    }
    return MASKD_OK;
}

static int slice_infer(mk_ctx *ctx)
{
    slice_plan p;
    mk_tensor *y;
    int rc;
    if ((rc = mk_need_output(ctx, 0, &y)) || (rc = slice_make(ctx, &p))) return rc;
    const mk_tensor *x = ctx->in[0];
    y->dtype = x->dtype;
    y->ndim = x->ndim;
    memcpy(y->dims, p.count, (size_t)x->ndim * sizeof p.count[0]);
    return MASKD_OK;
}

typedef struct slice_job {
    int rank;
    const int64_t *count;   /* output dims */
    int64_t step[MASKD_MAX_DIMS]; /* source elements per output step, per axis */
    int64_t base;           /* source element of the output's first element */
    size_t es;
    const unsigned char *src;
    unsigned char *dst;
} slice_job;

static void slice_rows(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const slice_job *j = arg;
    int last = j->rank - 1;
    int64_t len = j->count[last], coord[MASKD_MAX_DIMS];
    unravel(begin, j->count, last, coord);
    for (int64_t row = begin; row < end; row++) {
        int64_t off = j->base;
        for (int k = 0; k < last; k++) off += coord[k] * j->step[k];
        copy_strided(j->dst + (size_t)(row * len) * j->es, j->src + (size_t)off * j->es, len,
                     j->step[last], j->es);
        advance(coord, j->count, last);
    }
}

static int slice_run(mk_ctx *ctx)
{
    slice_plan p;
    int rc = slice_make(ctx, &p);
    if (rc) return rc;
    const mk_tensor *x = ctx->in[0];
    mk_tensor *y = ctx->out[0];
    int64_t stride[MASKD_MAX_DIMS];
    contiguous_strides(x, stride);
    slice_job j = {.rank = x->ndim, .count = y->dims, .es = maskd_dtype_size(x->dtype),
                   .src = x->data, .dst = y->data};
    for (int k = 0; k < x->ndim; k++) {
        /* With one element taken the step is never applied; it may be huge. */
        j.step[k] = p.count[k] > 1 ? p.step[k] * stride[k] : 0;
        j.base += p.start[k] * stride[k];
    }
    run_rows(ctx, x, y, slice_rows, &j);
    return MASKD_OK;
}

/* ---- Gather -------------------------------------------------------------- */

static int gather_axis(mk_ctx *ctx, const mk_tensor *x, int *axis)
{
    if (x->ndim == 0)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "data is a scalar");
    return mk_normalize_axis(ctx, mk_attr_int(ctx->node, "axis", 0), x->ndim, axis);
}

static int check_indices(mk_ctx *ctx, const mk_tensor *idx)
{
    if (!idx)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "missing indices");
    if (idx->ndim < 0) return MK_DYNAMIC;
    if (idx->dtype != MASKD_INT64 && idx->dtype != MASKD_INT32)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "indices must be int32 or int64, got %s",
                          maskd_dtype_name(idx->dtype));
    return MASKD_OK;
}

/* Data, indices, output and axis of Gather and GatherElements. */
static int gather_start(mk_ctx *ctx, const mk_tensor **x, const mk_tensor **idx, mk_tensor **y,
                        int *axis)
{
    int rc;
    *idx = mk_input(ctx, 1);
    if ((rc = mk_need_data_input(ctx, 0, x)) || (rc = check_indices(ctx, *idx)) ||
        (rc = mk_need_output(ctx, 0, y)))
        return rc;
    return gather_axis(ctx, *x, axis);
}

/* Every index must lie in [-dim, dim); checked before the parallel copy
 * because workers cannot report errors. */
static int check_index_range(mk_ctx *ctx, const mk_tensor *idx, int64_t dim)
{
    int64_t n = mk_numel(idx);
    for (int64_t i = 0; i < n; i++) {
        int64_t v = mk_get_i64(idx, i);
        if (v < -dim || v >= dim)
            return mk_op_fail(ctx, MASKD_ERR_RUNTIME,
                              "index %lld is out of range for an axis of size %lld", (long long)v,
                              (long long)dim);
    }
    return MASKD_OK;
}

static int gather_infer(mk_ctx *ctx)
{
    const mk_tensor *x, *idx;
    mk_tensor *y;
    int axis, rc = gather_start(ctx, &x, &idx, &y, &axis);
    if (rc) return rc;
    int rank = x->ndim - 1 + idx->ndim;
    if (rank > MASKD_MAX_DIMS)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "result has rank %d (at most %d)", rank,
                          MASKD_MAX_DIMS);
    int64_t dims[MASKD_MAX_DIMS];
    int r = 0;
    for (int k = 0; k < axis; k++) dims[r++] = x->dims[k];
    for (int k = 0; k < idx->ndim; k++) dims[r++] = idx->dims[k];
    for (int k = axis + 1; k < x->ndim; k++) dims[r++] = x->dims[k];
    y->dtype = x->dtype;
    y->ndim = rank;
    memcpy(y->dims, dims, (size_t)rank * sizeof dims[0]);
    return MASKD_OK;
}

typedef struct gather_job {
    const mk_tensor *idx;
    int64_t n_idx, dim;
    size_t inner_bytes;
    const unsigned char *src;
    unsigned char *dst;
} gather_job;

static void gather_rows(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const gather_job *j = arg;
    for (int64_t row = begin; row < end; row++) {
        int64_t o = row / j->n_idx, v = mk_get_i64(j->idx, row % j->n_idx);
        if (v < 0) v += j->dim;
        const unsigned char *s = j->src + (size_t)(o * j->dim + v) * j->inner_bytes;
        unsigned char *d = j->dst + (size_t)row * j->inner_bytes;
        switch (j->inner_bytes) {
        case 4: memcpy(d, s, 4); break; /* constant sizes become plain moves */
        case 8: memcpy(d, s, 8); break;
        default: memcpy(d, s, j->inner_bytes);
        }
    }
}

static int gather_run(mk_ctx *ctx)
{
    const mk_tensor *x = ctx->in[0], *idx = ctx->in[1];
    int axis, rc;
    if ((rc = gather_axis(ctx, x, &axis))) return rc;
    if ((rc = check_index_range(ctx, idx, x->dims[axis]))) return rc;
    int64_t outer = mk_dims_product(x->dims, 0, axis);
    int64_t inner = mk_dims_product(x->dims, axis + 1, x->ndim);
    size_t es = maskd_dtype_size(x->dtype);
    gather_job j = {.idx = idx, .n_idx = mk_numel(idx), .dim = x->dims[axis],
                    .inner_bytes = (size_t)inner * es, .src = x->data,
                    .dst = ctx->out[0]->data};
    if (j.n_idx == 0 || j.inner_bytes == 0) return MASKD_OK;
    mk_parallel_for(ctx->pool, outer * j.n_idx, mk_row_grain(inner, es), gather_rows, &j);
    return MASKD_OK;
}

/* ---- GatherElements ------------------------------------------------------ */

static int gather_elements_infer(mk_ctx *ctx)
{
    const mk_tensor *x, *idx;
    mk_tensor *y;
    int axis, rc = gather_start(ctx, &x, &idx, &y, &axis);
    if (rc) return rc;
    bool ok = idx->ndim == x->ndim;
    for (int k = 0; ok && k < x->ndim; k++) ok = k == axis || idx->dims[k] <= x->dims[k];
    if (!ok) {
        char a[128], b[128];
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "indices %s do not fit data %s",
                          mk_shape_str(idx, a, sizeof a), mk_shape_str(x, b, sizeof b));
    }
    y->dtype = x->dtype;
    y->ndim = idx->ndim;
    memcpy(y->dims, idx->dims, sizeof y->dims);
    return MASKD_OK;
}

typedef struct gather_elements_job {
    int rank, axis;
    const int64_t *idims;           /* index (= output) dims */
    int64_t stride[MASKD_MAX_DIMS]; /* data strides */
    int64_t axis_dim;
    const mk_tensor *idx;
    size_t es;
    const unsigned char *src;
    unsigned char *dst;
} gather_elements_job;

static void gather_elements_rows(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const gather_elements_job *j = arg;
    int last = j->rank - 1;
    int64_t len = j->idims[last], axis_stride = j->stride[j->axis], coord[MASKD_MAX_DIMS];
    /* Along the last axis the data stride is 1; it is replaced by the index
     * when the gather axis is the last one. */
    int64_t along = j->axis == last ? 0 : 1;
    unravel(begin, j->idims, last, coord);
    for (int64_t row = begin; row < end; row++) {
        int64_t base = 0;
        for (int k = 0; k < last; k++)
            if (k != j->axis) base += coord[k] * j->stride[k];
        for (int64_t e = 0; e < len; e++) {
            int64_t i = row * len + e, v = mk_get_i64(j->idx, i);
            if (v < 0) v += j->axis_dim;
            int64_t off = base + e * along + v * axis_stride;
            memcpy(j->dst + (size_t)i * j->es, j->src + (size_t)off * j->es, j->es);
        }
        advance(coord, j->idims, last);
    }
}

static int gather_elements_run(mk_ctx *ctx)
{
    const mk_tensor *x = ctx->in[0], *idx = ctx->in[1];
    int axis, rc;
    if ((rc = gather_axis(ctx, x, &axis))) return rc;
    if ((rc = check_index_range(ctx, idx, x->dims[axis]))) return rc;
    int64_t total = mk_numel(idx);
    if (total == 0) return MASKD_OK;
    gather_elements_job j = {.rank = x->ndim, .axis = axis, .idims = idx->dims,
                             .axis_dim = x->dims[axis], .idx = idx,
                             .es = maskd_dtype_size(x->dtype), .src = x->data,
                             .dst = ctx->out[0]->data};
    contiguous_strides(x, j.stride);
    int64_t len = idx->dims[x->ndim - 1];
    mk_parallel_for(ctx->pool, total / len, mk_row_grain(len, 16), gather_elements_rows, &j);
    return MASKD_OK;
}

/* ---- Transpose ----------------------------------------------------------- */

static int transpose_perm(mk_ctx *ctx, int rank, int *perm)
{
    int64_t p[MASKD_MAX_DIMS];
    int n, rc;
    if ((rc = read_int_attr(ctx, "perm", p, MASKD_MAX_DIMS, &n))) return rc;
    if (n < 0) {
        for (int i = 0; i < rank; i++) perm[i] = rank - 1 - i;
        return MASKD_OK;
    }
    if (n != rank)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "perm has %d entries for rank %d", n, rank);
    bool seen[MASKD_MAX_DIMS] = {false};
    for (int i = 0; i < n; i++) {
        if (p[i] < 0 || p[i] >= rank || seen[p[i]])
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "perm is not a permutation of 0..%d",
                              rank - 1);
        seen[p[i]] = true;
        perm[i] = (int)p[i];
    }
    return MASKD_OK;
}

/* At load the rank may be unknown; a perm that is no permutation of its
 * own length is wrong for every rank. */
static int transpose_prepare(mk_ctx *ctx)
{
    int perm[MASKD_MAX_DIMS];
    const mk_attr *a = mk_attr_find(ctx->node, "perm");
    if (!a || a->type != MK_ATTR_INTS) return MASKD_OK;
    return transpose_perm(ctx, a->n, perm);
}

static int transpose_infer(mk_ctx *ctx)
{
    const mk_tensor *x;
    mk_tensor *y;
    int rc, perm[MASKD_MAX_DIMS];
    if ((rc = mk_need_data_input(ctx, 0, &x)) || (rc = mk_need_output(ctx, 0, &y)) ||
        (rc = transpose_perm(ctx, x->ndim, perm)))
        return rc;
    y->dtype = x->dtype;
    y->ndim = x->ndim;
    for (int i = 0; i < x->ndim; i++) y->dims[i] = x->dims[perm[i]];
    return MASKD_OK;
}

/* The general case after merging: some output axis q reads the source
 * contiguously while the output's last axis reads it with a stride.  The
 * (q, last) plane is copied in TILE x TILE tiles that stay in cache, each
 * as 8 x 8 blocks gathered into a local array: eight contiguous reads, then
 * eight contiguous writes, so neither side walks memory with a large
 * (often power-of-two, cache-set-aliasing) stride element by element. */
enum { TILE = 64 };

typedef struct transpose_job {
    int n_other;                   /* axes other than q and the last */
    int64_t odims[MASKD_MAX_DIMS]; /* their sizes */
    int64_t osrc[MASKD_MAX_DIMS];  /* their source strides */
    int64_t odst[MASKD_MAX_DIMS];  /* their output strides */
    int64_t rows, cols;            /* sizes of q and of the last axis */
    int64_t row_dst_stride;        /* output stride of q (source stride is 1) */
    int64_t col_src_stride;        /* source stride of the last axis */
    int64_t row_tiles;
    size_t es;
    const unsigned char *src;
    unsigned char *dst;
} transpose_job;

/* dst[a * dst_stride + b] = src[a + b * src_stride] for a in [a0, a1), b in [b0, b1). */
#define DEFINE_TILE(T)                                                                    \
    static void tile_##T(const T *src, int64_t src_stride, T *dst, int64_t dst_stride,   \
                         int64_t a0, int64_t a1, int64_t b0, int64_t b1)                  \
    {                                                                                     \
        int64_t a8 = a0 + (a1 - a0) / 8 * 8, b8 = b0 + (b1 - b0) / 8 * 8;                 \
        for (int64_t a = a0; a < a8; a += 8)                                              \
            for (int64_t b = b0; b < b8; b += 8) {                                        \
                const T *s = src + a + b * src_stride;                                    \
                T *d = dst + a * dst_stride + b, block[8][8];                             \
                for (int y = 0; y < 8; y++)                                               \
                    for (int x = 0; x < 8; x++) block[x][y] = s[y * src_stride + x];      \
                for (int x = 0; x < 8; x++)                                               \
                    for (int y = 0; y < 8; y++) d[x * dst_stride + y] = block[x][y];      \
            }                                                                             \
        for (int64_t a = a0; a < a1; a++)                                                 \
            for (int64_t b = a < a8 ? b8 : b0; b < b1; b++)                               \
                dst[a * dst_stride + b] = src[a + b * src_stride];                        \
    }
DEFINE_TILE(uint8_t)
DEFINE_TILE(uint16_t)
DEFINE_TILE(uint32_t)
DEFINE_TILE(uint64_t)
#undef DEFINE_TILE

static void transpose_tiles(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const transpose_job *j = arg;
    for (int64_t w = begin; w < end; w++) {
        int64_t o = w / j->row_tiles, a0 = (w % j->row_tiles) * TILE;
        int64_t a1 = a0 + TILE < j->rows ? a0 + TILE : j->rows;
        int64_t coord[MASKD_MAX_DIMS], sb = 0, db = 0;
        unravel(o, j->odims, j->n_other, coord);
        for (int k = 0; k < j->n_other; k++) {
            sb += coord[k] * j->osrc[k];
            db += coord[k] * j->odst[k];
        }
        for (int64_t b0 = 0; b0 < j->cols; b0 += TILE) {
            int64_t b1 = b0 + TILE < j->cols ? b0 + TILE : j->cols;
            int64_t ss = j->col_src_stride, ds = j->row_dst_stride;
            switch (j->es) {
            case 1: tile_uint8_t((const uint8_t *)j->src + sb, ss, (uint8_t *)j->dst + db, ds,
                                 a0, a1, b0, b1); break;
            case 2: tile_uint16_t((const uint16_t *)j->src + sb, ss, (uint16_t *)j->dst + db,
                                  ds, a0, a1, b0, b1); break;
            case 4: tile_uint32_t((const uint32_t *)j->src + sb, ss, (uint32_t *)j->dst + db,
                                  ds, a0, a1, b0, b1); break;
            case 8: tile_uint64_t((const uint64_t *)j->src + sb, ss, (uint64_t *)j->dst + db,
                                  ds, a0, a1, b0, b1); break;
            default:
                for (int64_t a = a0; a < a1; a++)
                    for (int64_t b = b0; b < b1; b++)
                        memcpy(j->dst + (size_t)(db + a * ds + b) * j->es,
                               j->src + (size_t)(sb + a + b * ss) * j->es, j->es);
            }
        }
    }
}

static int transpose_run(mk_ctx *ctx)
{
    const mk_tensor *x = ctx->in[0];
    mk_tensor *y = ctx->out[0];
    int perm[MASKD_MAX_DIMS], rc;
    if ((rc = transpose_perm(ctx, x->ndim, perm))) return rc;
    size_t es = maskd_dtype_size(x->dtype);
    int64_t total = mk_numel(x);
    if (total == 0) return MASKD_OK;

    /* Output axes that read consecutive source memory merge into one, and
     * size-1 axes vanish: NCHW->NHWC becomes a batch of [C, HW] -> [HW, C]. */
    int64_t istride[MASKD_MAX_DIMS], gsize[MASKD_MAX_DIMS], gstride[MASKD_MAX_DIMS];
    contiguous_strides(x, istride);
    int m = 0;
    for (int i = 0; i < x->ndim; i++) {
        int a = perm[i];
        int64_t d = x->dims[a];
        if (d == 1) continue;
        if (m > 0 && gstride[m - 1] == istride[a] * d) {
            gsize[m - 1] *= d;
            gstride[m - 1] = istride[a];
        } else {
            gsize[m] = d;
            gstride[m] = istride[a];
            m++;
        }
    }
    if (m <= 1) {
        memcpy(y->data, x->data, (size_t)total * es);
        return MASKD_OK;
    }
    if (gstride[m - 1] == 1) {
        /* The last axis stays innermost: whole rows copy at once. */
        slice_job j = {.rank = m, .count = gsize, .es = es, .src = x->data, .dst = y->data};
        memcpy(j.step, gstride, (size_t)m * sizeof gstride[0]);
        mk_parallel_for(ctx->pool, total / gsize[m - 1], mk_row_grain(gsize[m - 1], es),
                        slice_rows, &j);
        return MASKD_OK;
    }
    int64_t ostride[MASKD_MAX_DIMS];
    ostride[m - 1] = 1;
    for (int k = m - 2; k >= 0; k--) ostride[k] = ostride[k + 1] * gsize[k + 1];
    int q = 0;
    while (gstride[q] != 1) q++; /* the source's innermost non-1 axis */
    transpose_job j = {.rows = gsize[q], .cols = gsize[m - 1], .row_dst_stride = ostride[q],
                       .col_src_stride = gstride[m - 1], .es = es, .src = x->data,
                       .dst = y->data};
    for (int k = 0; k < m - 1; k++) {
        if (k == q) continue;
        j.odims[j.n_other] = gsize[k];
        j.osrc[j.n_other] = gstride[k];
        j.odst[j.n_other] = ostride[k];
        j.n_other++;
    }
    j.row_tiles = (j.rows + TILE - 1) / TILE;
    int64_t work = total / (j.rows * j.cols) * j.row_tiles;
    int64_t per_item = TILE * j.cols;
    mk_parallel_for(ctx->pool, work, per_item >= 8192 ? 1 : 8192 / per_item + 1,
                    transpose_tiles, &j);
    return MASKD_OK;
}

/* ---- Pad ----------------------------------------------------------------- */

enum pad_mode { PAD_CONSTANT, PAD_REFLECT, PAD_EDGE, PAD_WRAP };

typedef struct pad_plan {
    int64_t before[MASKD_MAX_DIMS], after[MASKD_MAX_DIMS];
    int mode;
    unsigned char value[8];
} pad_plan;

/* The pad value in the data's type, from a tensor (constant_value) or from
 * the float attribute of opsets before 11. */
static int pad_value(mk_ctx *ctx, maskd_dtype dt, const mk_tensor *v, double f,
                     unsigned char out[8])
{
    memset(out, 0, 8);
    if (v && v->dtype == dt) {
        memcpy(out, v->data, maskd_dtype_size(dt));
        return MASKD_OK;
    }
    bool have_int = v && mk_is_int_dtype(v->dtype);
    int64_t i = have_int ? mk_get_i64(v, 0) : 0;
    if (v && !have_int) f = mk_get_f64(v, 0);
    if (!have_int) {
        if (!(f >= -9.2e18 && f <= 9.2e18) && mk_is_int_dtype(dt))
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "pad value does not fit %s",
                              maskd_dtype_name(dt));
        i = mk_is_int_dtype(dt) || dt == MASKD_BOOL ? (int64_t)f : 0;
    } else {
        f = (double)i;
    }
    switch (dt) {
    case MASKD_FLOAT: { float t = (float)f; memcpy(out, &t, 4); break; }
    case MASKD_DOUBLE: memcpy(out, &f, 8); break;
    case MASKD_INT64: case MASKD_UINT64: memcpy(out, &i, 8); break;
    case MASKD_INT32: case MASKD_UINT32: { int32_t t = (int32_t)i; memcpy(out, &t, 4); break; }
    case MASKD_INT16: case MASKD_UINT16: { int16_t t = (int16_t)i; memcpy(out, &t, 2); break; }
    case MASKD_BOOL: out[0] = f != 0; break;
    case MASKD_INT8: case MASKD_UINT8: out[0] = (uint8_t)i; break;
    default:
        if (f != 0)
            return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED,
                              "a non-zero pad value for %s is not supported", maskd_dtype_name(dt));
    }
    return MASKD_OK;
}

static int pad_mode(mk_ctx *ctx, int *mode)
{
    const char *name = mk_attr_str(ctx->node, "mode", "constant");
    if (!strcmp(name, "constant")) *mode = PAD_CONSTANT;
    else if (!strcmp(name, "reflect")) *mode = PAD_REFLECT;
    else if (!strcmp(name, "edge")) *mode = PAD_EDGE;
    else if (!strcmp(name, "wrap")) *mode = PAD_WRAP;
    else
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "unknown mode '%s'", name);
    return MASKD_OK;
}

static int pad_prepare(mk_ctx *ctx)
{
    int mode;
    return pad_mode(ctx, &mode);
}

static int pad_make(mk_ctx *ctx, pad_plan *p)
{
    memset(p, 0, sizeof *p);
    const mk_tensor *x;
    int rc;
    if ((rc = mk_need_data_input(ctx, 0, &x))) return rc;
    int rank = x->ndim;

    if ((rc = pad_mode(ctx, &p->mode))) return rc;
    const char *mode = mk_attr_str(ctx->node, "mode", "constant");

    int64_t pads[2 * MASKD_MAX_DIMS], axes[MASKD_MAX_DIMS];
    int n = -1, n_axes = -1;
    const mk_tensor *value = NULL;
    double fvalue = 0;
    if (ctx->node->opset < 11) {
        const char *name = ctx->node->opset < 2 ? "paddings" : "pads";
        if ((rc = read_int_attr(ctx, name, pads, 2 * MASKD_MAX_DIMS, &n))) return rc;
        fvalue = mk_attr_float(ctx->node, "value", 0.0f);
    } else {
        const mk_tensor *t = mk_input(ctx, 1);
        if (t && (rc = mk_read_int_list(ctx, t, "pads", pads, 2 * MASKD_MAX_DIMS, &n))) return rc;
        const mk_tensor *v = mk_input(ctx, 2);
        if (v) {
            if (!v->data) return MK_DYNAMIC;
            if (mk_numel(v) > 0) value = v;
        }
        const mk_tensor *a = mk_input(ctx, 3);
        if (a && (rc = mk_read_int_list(ctx, a, "axes", axes, MASKD_MAX_DIMS, &n_axes))) return rc;
    }
    if (n < 0)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "missing pads");
    if (n_axes < 0) {
        n_axes = rank;
        for (int i = 0; i < rank; i++) axes[i] = i;
    }
    if (n != 2 * n_axes)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "%d pads for %d axes (need twice as many)", n,
                          n_axes);
    if ((rc = mk_normalize_axes(ctx, axes, n_axes, rank))) return rc;
    for (int i = 0; i < n_axes; i++) {
        p->before[axes[i]] = pads[i];
        p->after[axes[i]] = pads[i + n_axes];
    }
    for (int k = 0; k < rank; k++) {
        int64_t d = x->dims[k], out = d + p->before[k] + p->after[k];
        if (out < 0)
            return mk_op_fail(ctx, MASKD_ERR_SHAPE, "pads crop axis %d (size %lld) below zero", k,
                              (long long)d);
        if (d == 0 && out > 0 && p->mode != PAD_CONSTANT)
            return mk_op_fail(ctx, MASKD_ERR_SHAPE, "cannot %s-pad the empty axis %d", mode, k);
    }
    return pad_value(ctx, x->dtype, value, fvalue, p->value);
}

static int pad_infer(mk_ctx *ctx)
{
    pad_plan p;
    mk_tensor *y;
    int rc;
    if ((rc = mk_need_output(ctx, 0, &y)) || (rc = pad_make(ctx, &p))) return rc;
    const mk_tensor *x = ctx->in[0];
    y->dtype = x->dtype;
    y->ndim = x->ndim;
    for (int k = 0; k < x->ndim; k++) y->dims[k] = x->dims[k] + p.before[k] + p.after[k];
    return MASKD_OK;
}

/* The source coordinate an output coordinate c (already shifted by the
 * leading pad) reads, or -1 for the constant. */
static int64_t pad_source(int64_t c, int64_t d, int mode)
{
    if (c >= 0 && c < d) return c;
    switch (mode) {
    case PAD_EDGE: return c < 0 ? 0 : d - 1;
    case PAD_REFLECT: {
        if (d == 1) return 0;
        int64_t period = 2 * (d - 1);
        c %= period;
        if (c < 0) c += period;
        return c < d ? c : period - c;
    }
    case PAD_WRAP:
        c %= d;
        return c < 0 ? c + d : c;
    default: return -1;
    }
}

/* What the row walkers of Pad and Tile read. */
typedef struct grow_job {
    int rank;
    const int64_t *idims, *odims;
    int64_t istride[MASKD_MAX_DIMS];
    size_t es;
    const unsigned char *src;
    unsigned char *dst;
    const pad_plan *p; /* Pad only */
} grow_job;

/* Runs fn, a walker of y's rows, for Pad (with plan p) or Tile (p NULL). */
static void grow_run(mk_ctx *ctx, mk_range_fn fn, const pad_plan *p)
{
    const mk_tensor *x = ctx->in[0];
    mk_tensor *y = ctx->out[0];
    grow_job j = {.rank = x->ndim, .idims = x->dims, .odims = y->dims,
                  .es = maskd_dtype_size(x->dtype), .src = x->data, .dst = y->data, .p = p};
    contiguous_strides(x, j.istride);
    run_rows(ctx, x, y, fn, &j);
}

static void pad_rows(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const grow_job *j = arg;
    const pad_plan *p = j->p;
    int last = j->rank - 1;
    size_t es = j->es;
    int64_t len = j->odims[last], d = j->idims[last], b = p->before[last];
    /* Output positions [lo, hi) of a row copy the source row directly. */
    int64_t lo = b < 0 ? 0 : b > len ? len : b;
    int64_t hi = b + d < lo ? lo : b + d > len ? len : b + d;
    int64_t coord[MASKD_MAX_DIMS];
    unravel(begin, j->odims, last, coord);
    for (int64_t row = begin; row < end; row++) {
        unsigned char *drow = j->dst + (size_t)(row * len) * es;
        int64_t off = 0;
        bool blank = false;
        for (int k = 0; k < last && !blank; k++) {
            int64_t s = pad_source(coord[k] - p->before[k], j->idims[k], p->mode);
            blank = s < 0;
            off += s * j->istride[k];
        }
        if (blank) {
            mk_fill_elements(drow, p->value, es, len);
        } else {
            const unsigned char *srow = j->src + (size_t)off * es;
            for (int64_t c = 0; c < len; c++) {
                if (c == lo && hi > lo) {
                    memcpy(drow + (size_t)lo * es, srow + (size_t)(lo - b) * es,
                           (size_t)(hi - lo) * es);
                    c = hi - 1;
                    continue;
                }
                int64_t s = pad_source(c - b, d, p->mode);
                memcpy(drow + (size_t)c * es, s < 0 ? p->value : srow + (size_t)s * es, es);
            }
        }
        advance(coord, j->odims, last);
    }
}

static int pad_run(mk_ctx *ctx)
{
    pad_plan p;
    int rc = pad_make(ctx, &p);
    if (rc) return rc;
    grow_run(ctx, pad_rows, &p);
    return MASKD_OK;
}

/* ---- Tile ---------------------------------------------------------------- */

static int tile_repeats(mk_ctx *ctx, int64_t *rep)
{
    const mk_tensor *x, *r = mk_input(ctx, 1);
    int rc, n = 0;
    if ((rc = mk_need_data_input(ctx, 0, &x))) return rc;
    if (!r)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "missing repeats");
    if ((rc = mk_read_int_list(ctx, r, "repeats", rep, MASKD_MAX_DIMS, &n))) return rc;
    if (n != x->ndim)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "%d repeats for rank %d", n, x->ndim);
    for (int k = 0; k < n; k++)
        if (rep[k] < 0)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "negative repeat %lld", (long long)rep[k]);
    return MASKD_OK;
}

static int tile_infer(mk_ctx *ctx)
{
    int64_t rep[MASKD_MAX_DIMS];
    mk_tensor *y;
    int rc;
    if ((rc = mk_need_output(ctx, 0, &y)) || (rc = tile_repeats(ctx, rep))) return rc;
    const mk_tensor *x = ctx->in[0];
    y->dtype = x->dtype;
    y->ndim = x->ndim;
    for (int k = 0; k < x->ndim; k++) y->dims[k] = x->dims[k] * rep[k];
    return MASKD_OK;
}

static void tile_rows(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const grow_job *j = arg;
    int last = j->rank - 1;
    int64_t len = j->odims[last], piece = j->idims[last], coord[MASKD_MAX_DIMS];
    size_t piece_bytes = (size_t)piece * j->es;
    unravel(begin, j->odims, last, coord);
    for (int64_t row = begin; row < end; row++) {
        int64_t off = 0;
        for (int k = 0; k < last; k++) off += coord[k] % j->idims[k] * j->istride[k];
        unsigned char *d = j->dst + (size_t)(row * len) * j->es;
        for (int64_t c = 0; c < len; c += piece, d += piece_bytes)
            memcpy(d, j->src + (size_t)off * j->es, piece_bytes);
        advance(coord, j->odims, last);
    }
}

static int tile_run(mk_ctx *ctx)
{
    grow_run(ctx, tile_rows, NULL);
    return MASKD_OK;
}

MK_OP_FAMILY(layout,
    {.domain = "", .op_type = "Concat", .since_version = 1, .infer = concat_infer,
     .run = concat_run},
    {.domain = "", .op_type = "Split", .since_version = 1, .infer = split_infer,
     .run = split_run},
    {.domain = "", .op_type = "Slice", .since_version = 1, .infer = slice_infer,
     .run = slice_run},
    {.domain = "", .op_type = "Gather", .since_version = 1, .infer = gather_infer,
     .run = gather_run},
    {.domain = "", .op_type = "GatherElements", .since_version = 11,
     .infer = gather_elements_infer, .run = gather_elements_run},
    {.domain = "", .op_type = "Transpose", .since_version = 1, .prepare = transpose_prepare,
     .infer = transpose_infer, .run = transpose_run},
    {.domain = "", .op_type = "Pad", .since_version = 1, .prepare = pad_prepare,
     .infer = pad_infer, .run = pad_run},
    {.domain = "", .op_type = "Tile", .since_version = 6, .infer = tile_infer,
     .run = tile_run});
