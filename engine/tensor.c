/* Tensors, dtypes, attributes and the error value: the vocabulary every
 * other engine file speaks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "mk.h"

static int error_vset(maskd_error *err, int code, const char *fmt, va_list ap)
{
    if (err) {
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        err->code = code;
    }
    return code;
}

int maskd_error_set(maskd_error *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_vset(err, code, fmt, ap);
    va_end(ap);
    return code;
}

int mk_fail(mk_error *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_vset(err, code, fmt, ap);
    va_end(ap);
    return code;
}

size_t maskd_dtype_size(maskd_dtype dtype)
{
    switch (dtype) {
    case MASKD_FLOAT: case MASKD_INT32: case MASKD_UINT32: return 4;
    case MASKD_UINT8: case MASKD_INT8: case MASKD_BOOL: return 1;
    case MASKD_UINT16: case MASKD_INT16: case MASKD_FLOAT16: return 2;
    case MASKD_INT64: case MASKD_UINT64: case MASKD_DOUBLE: return 8;
    default: return 0;
    }
}

const char *maskd_dtype_name(maskd_dtype dtype)
{
    static const char *const names[] = {
        [MASKD_UNDEFINED] = "undefined", [MASKD_FLOAT] = "float32",
        [MASKD_UINT8] = "uint8",         [MASKD_INT8] = "int8",
        [MASKD_UINT16] = "uint16",       [MASKD_INT16] = "int16",
        [MASKD_INT32] = "int32",         [MASKD_INT64] = "int64",
        [MASKD_STRING] = "string",       [MASKD_BOOL] = "bool",
        [MASKD_FLOAT16] = "float16",     [MASKD_DOUBLE] = "float64",
        [MASKD_UINT32] = "uint32",       [MASKD_UINT64] = "uint64",
    };
    if ((unsigned)dtype < sizeof names / sizeof names[0] && names[dtype])
        return names[dtype];
    return "unknown";
}

int64_t maskd_tensor_numel(const maskd_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->dims[i];
    return n;
}

int64_t mk_numel(const mk_tensor *t) { return maskd_tensor_numel(t); }

size_t mk_nbytes(const mk_tensor *t)
{
    return (size_t)mk_numel(t) * maskd_dtype_size(t->dtype);
}

bool mk_same_shape(const mk_tensor *a, const mk_tensor *b)
{
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->dims[i] != b->dims[i]) return false;
    return true;
}

const char *mk_shape_str(const mk_tensor *t, char *buf, size_t size)
{
    size_t used = 0;
    if (size == 0) return buf;
    buf[0] = 0;
    used += (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < t->ndim && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%lld",
                                 i ? "," : "", (long long)t->dims[i]);
    if (used < size) snprintf(buf + used, size - used, "]");
    return buf;
}

int64_t mk_get_i64(const mk_tensor *t, int64_t i)
{
    const void *p = t->data;
    switch (t->dtype) {
    case MASKD_INT64: return ((const int64_t *)p)[i];
    case MASKD_INT32: return ((const int32_t *)p)[i];
    case MASKD_UINT64: return (int64_t)((const uint64_t *)p)[i];
    case MASKD_UINT32: return ((const uint32_t *)p)[i];
    case MASKD_INT16: return ((const int16_t *)p)[i];
    case MASKD_UINT16: return ((const uint16_t *)p)[i];
    case MASKD_INT8: return ((const int8_t *)p)[i];
    case MASKD_UINT8: case MASKD_BOOL: return ((const uint8_t *)p)[i];
    case MASKD_FLOAT: return (int64_t)((const float *)p)[i];
    case MASKD_DOUBLE: return (int64_t)((const double *)p)[i];
    default: return 0;
    }
}

double mk_get_f64(const mk_tensor *t, int64_t i)
{
    switch (t->dtype) {
    case MASKD_FLOAT: return ((const float *)t->data)[i];
    case MASKD_DOUBLE: return ((const double *)t->data)[i];
    default: return (double)mk_get_i64(t, i);
    }
}

/* ---- attributes ------------------------------------------------------- */

const mk_attr *mk_attr_find(const mk_node *n, const char *name)
{
    for (int i = 0; i < n->n_attrs; i++)
        if (!strcmp(n->attrs[i].name, name)) return &n->attrs[i];
    return NULL;
}

int64_t mk_attr_int(const mk_node *n, const char *name, int64_t dflt)
{
    const mk_attr *a = mk_attr_find(n, name);
    return a && a->type == MK_ATTR_INT ? a->i : dflt;
}

float mk_attr_float(const mk_node *n, const char *name, float dflt)
{
    const mk_attr *a = mk_attr_find(n, name);
    if (!a) return dflt;
    if (a->type == MK_ATTR_FLOAT) return a->f;
    if (a->type == MK_ATTR_INT) return (float)a->i;
    return dflt;
}

const char *mk_attr_str(const mk_node *n, const char *name, const char *dflt)
{
    const mk_attr *a = mk_attr_find(n, name);
    return a && a->type == MK_ATTR_STRING ? a->s : dflt;
}

int mk_attr_ints(const mk_node *n, const char *name, int64_t *out, int cap)
{
    const mk_attr *a = mk_attr_find(n, name);
    if (!a || a->type != MK_ATTR_INTS) return -1;
    for (int i = 0; i < a->n && i < cap; i++) out[i] = a->ints[i];
    return a->n;
}

int mk_attr_floats(const mk_node *n, const char *name, float *out, int cap)
{
    const mk_attr *a = mk_attr_find(n, name);
    if (!a || a->type != MK_ATTR_FLOATS) return -1;
    for (int i = 0; i < a->n && i < cap; i++) out[i] = a->floats[i];
    return a->n;
}

/* ---- memory ----------------------------------------------------------- */

void *mk_aligned_alloc(size_t bytes)
{
    void *p = NULL;
    /* Round up so the size is a multiple of the alignment, as C11 asks. */
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded < bytes) return NULL;
    if (posix_memalign(&p, 64, rounded ? rounded : 64)) return NULL;
    return p;
}

void mk_aligned_free(void *p) { free(p); }

void *mk_big_alloc(size_t bytes)
{
    enum { HUGE_PAGE = 2 << 20 };
    if (bytes < HUGE_PAGE) return mk_aligned_alloc(bytes);
    size_t rounded = (bytes + HUGE_PAGE - 1) & ~(size_t)(HUGE_PAGE - 1);
    void *p = NULL;
    if (rounded < bytes || posix_memalign(&p, HUGE_PAGE, rounded)) return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, rounded, MADV_HUGEPAGE); /* a hint: without it, 4 KB pages */
#endif
    return p;
}

/* ---- op context helpers ------------------------------------------------- */

mk_tensor *mk_input(const mk_ctx *ctx, int i)
{
    return i >= 0 && i < ctx->n_in ? ctx->in[i] : NULL;
}

mk_tensor *mk_output(const mk_ctx *ctx, int i)
{
    return i >= 0 && i < ctx->n_out ? ctx->out[i] : NULL;
}

int mk_op_fail(const mk_ctx *ctx, int code, const char *fmt, ...)
{
    char what[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return mk_fail(ctx->err, code, "%s: node '%s': %s", ctx->node->op_type,
                   ctx->node->name ? ctx->node->name : "", what);
}

int mk_need_input(const mk_ctx *ctx, int i, mk_tensor **out)
{
    *out = mk_input(ctx, i);
    return *out ? MASKD_OK : mk_op_fail(ctx, MASKD_ERR_INVALID, "missing input %d", i);
}

int mk_need_output(const mk_ctx *ctx, int i, mk_tensor **out)
{
    *out = mk_output(ctx, i);
    return *out ? MASKD_OK : mk_op_fail(ctx, MASKD_ERR_INVALID, "missing output %d", i);
}
