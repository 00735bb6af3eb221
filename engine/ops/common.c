/* Helpers shared by several op families; see common.h. */
#include "common.h"

#include <math.h>
#include <string.h>

maskd_dtype mk_known_dtype(const mk_ctx *ctx, int i)
{
    const mk_tensor *t = mk_input(ctx, i);
    return t ? t->dtype : MASKD_UNDEFINED;
}

bool mk_is_int_dtype(maskd_dtype t)
{
    return t == MASKD_INT64 || t == MASKD_INT32 || t == MASKD_INT16 || t == MASKD_INT8 ||
           t == MASKD_UINT64 || t == MASKD_UINT32 || t == MASKD_UINT16 || t == MASKD_UINT8;
}

int64_t mk_dims_product(const int64_t *dims, int from, int to)
{
    int64_t p = 1;
    for (int i = from; i < to; i++) p *= dims[i];
    return p;
}

int mk_need_data_input(const mk_ctx *ctx, int i, const mk_tensor **out)
{
    mk_tensor *x;
    int rc = mk_need_input(ctx, i, &x);
    *out = x;
    if (rc) return rc;
    if (x->ndim < 0) return MK_DYNAMIC;
    if (maskd_dtype_size(x->dtype) == 0)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "element type %s is not supported",
                          maskd_dtype_name(x->dtype));
    return MASKD_OK;
}

int mk_read_int_list(const mk_ctx *ctx, const mk_tensor *t, const char *what, int64_t *vals,
                     int cap, int *count)
{
    *count = 0;
    if (t->ndim < 0) return MK_DYNAMIC;
    if (t->ndim > 1)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "'%s' must be 1-D, got rank %d", what, t->ndim);
    if (!mk_is_int_dtype(t->dtype))
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "'%s' must be an integer tensor, got %s", what,
                          maskd_dtype_name(t->dtype));
    int64_t n = mk_numel(t);
    if (n > cap)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "'%s' has %lld values (at most %d)", what,
                          (long long)n, cap);
    if (!t->data) return MK_DYNAMIC;
    for (int64_t i = 0; i < n; i++) vals[i] = mk_get_i64(t, i);
    *count = (int)n;
    return MASKD_OK;
}

int mk_normalize_axis(const mk_ctx *ctx, int64_t axis, int rank, int *out)
{
    *out = 0;
    if (axis < -rank || axis >= rank)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "axis %lld is out of range for rank %d",
                          (long long)axis, rank);
    *out = (int)(axis < 0 ? axis + rank : axis);
    return MASKD_OK;
}

int mk_normalize_axes(const mk_ctx *ctx, int64_t *axes, int n, int rank)
{
    bool seen[MASKD_MAX_DIMS] = {false};
    for (int i = 0; i < n; i++) {
        int axis, rc = mk_normalize_axis(ctx, axes[i], rank, &axis);
        if (rc) return rc;
        if (seen[axis])
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "axis %lld repeats", (long long)axes[i]);
        seen[axis] = true;
        axes[i] = axis;
    }
    return MASKD_OK;
}

void mk_fill_elements(void *dst, const void *elem, size_t esize, int64_t n)
{
    if (n <= 0) return;
    size_t total = (size_t)n * esize;
    const unsigned char *e = elem;
    bool zero = true;
    for (size_t i = 0; i < esize; i++) zero = zero && e[i] == 0;
    if (zero) {
        memset(dst, 0, total);
        return;
    }
    memcpy(dst, elem, esize);
    /* Doubling copies keep the number of memcpy calls logarithmic. */
    size_t done = esize;
    while (done < total) {
        size_t chunk = done < total - done ? done : total - done;
        memcpy((unsigned char *)dst + done, dst, chunk);
        done += chunk;
    }
}

int64_t mk_row_grain(int64_t row_elems, size_t esize)
{
    int64_t bytes = row_elems * (int64_t)esize;
    return bytes >= (1 << 15) ? 1 : (1 << 15) / (bytes + 1) + 1;
}

float mk_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        /* Zero or subnormal: mant units of 2^-24, exact in float. */
        float f = (float)mant * 0x1p-24f;
        return sign ? -f : f;
    }
    if (exp == 31)
        bits = sign | 0x7f800000u | (mant << 13);
    else
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t mk_float_to_half(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf */
    if (ax < 0x38800000u) {
        /* Below 2^-14: a subnormal half, counted in units of 2^-24.  Scaling
         * by a power of two is exact, so rintf does the only rounding. */
        float a;
        memcpy(&a, &ax, sizeof a);
        return (uint16_t)(sign | (uint16_t)rintf(a * 0x1p24f));
    }
    uint32_t h = (((ax >> 23) - 112) << 10) | ((ax >> 13) & 0x3ff);
    uint32_t rest = ax & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++; /* carries into the exponent */
    return (uint16_t)(sign | h);
}

int64_t mk_f64_to_i64(double v)
{
    if (v != v) return 0;
    if (v >= 9223372036854775807.0) return INT64_MAX;
    if (v <= -9223372036854775808.0) return INT64_MIN;
    return (int64_t)v;
}

void mk_store_i64(maskd_dtype t, void *dst, int64_t at, int n, const int64_t *vals)
{
#define STORE(T, EXPR)                                                          \
    for (int i = 0; i < n; i++) {                                               \
        int64_t v = vals[i];                                                    \
        ((T *)dst)[at + i] = (EXPR);                                            \
    }                                                                           \
    break;
    switch (t) {
    case MASKD_INT64: memcpy((int64_t *)dst + at, vals, (size_t)n * sizeof *vals); break;
    case MASKD_UINT64: STORE(uint64_t, (uint64_t)v)
    case MASKD_INT32: STORE(int32_t, (int32_t)v)
    case MASKD_UINT32: STORE(uint32_t, (uint32_t)v)
    case MASKD_INT16: STORE(int16_t, (int16_t)v)
    case MASKD_UINT16: STORE(uint16_t, (uint16_t)v)
    case MASKD_INT8: STORE(int8_t, (int8_t)v)
    case MASKD_UINT8: STORE(uint8_t, (uint8_t)v)
    case MASKD_BOOL: STORE(uint8_t, v != 0)
    case MASKD_FLOAT: STORE(float, (float)v)
    case MASKD_DOUBLE: STORE(double, (double)v)
    case MASKD_FLOAT16: STORE(uint16_t, mk_float_to_half((float)v))
    default: break;
    }
#undef STORE
}

void mk_store_f64(maskd_dtype t, void *dst, int64_t at, int n, const double *vals)
{
    switch (t) {
    case MASKD_FLOAT: for (int i = 0; i < n; i++) ((float *)dst)[at + i] = (float)vals[i]; break;
    case MASKD_DOUBLE: memcpy((double *)dst + at, vals, (size_t)n * sizeof *vals); break;
    case MASKD_FLOAT16:
        for (int i = 0; i < n; i++) ((uint16_t *)dst)[at + i] = mk_float_to_half((float)vals[i]);
        break;
    case MASKD_BOOL: for (int i = 0; i < n; i++) ((uint8_t *)dst)[at + i] = vals[i] != 0; break;
    default: {
        int64_t tmp[256];
        for (int done = 0; done < n; done += 256) {
            int m = n - done < 256 ? n - done : 256;
            for (int i = 0; i < m; i++) tmp[i] = mk_f64_to_i64(vals[done + i]);
            mk_store_i64(t, dst, at + done, m, tmp);
        }
        break;
    }
    }
}

int mk_parse_auto_pad(const mk_ctx *ctx, mk_auto_pad *out)
{
    const char *pad = mk_attr_str(ctx->node, "auto_pad", "NOTSET");
    if (!strcmp(pad, "NOTSET") || !*pad) *out = MK_PAD_NOTSET;
    else if (!strcmp(pad, "SAME_UPPER")) *out = MK_PAD_SAME_UPPER;
    else if (!strcmp(pad, "SAME_LOWER")) *out = MK_PAD_SAME_LOWER;
    else if (!strcmp(pad, "VALID")) *out = MK_PAD_VALID;
    else return mk_op_fail(ctx, MASKD_ERR_INVALID, "unknown auto_pad '%s'", pad);
    return MASKD_OK;
}

int64_t mk_same_pad_begin(mk_auto_pad mode, int64_t total)
{
    return mode == MK_PAD_SAME_UPPER ? total / 2 : total - total / 2;
}

bool mk_window_axis(mk_auto_pad mode, int64_t in, int64_t span, int64_t s, bool ceil_mode,
                    int64_t *pad_begin, int64_t *pad_end, int64_t *out)
{
    switch (mode) {
    case MK_PAD_SAME_UPPER:
    case MK_PAD_SAME_LOWER: {
        *out = (in + s - 1) / s;
        int64_t total = (*out - 1) * s + span - in;
        if (total < 0) total = 0;
        *pad_begin = mk_same_pad_begin(mode, total);
        *pad_end = total - *pad_begin;
        return true;
    }
    case MK_PAD_VALID:
        *pad_begin = *pad_end = 0;
        if (in < span) return false;
        *out = (in - span) / s + 1;
        return true;
    default: {
        const int64_t room = in + *pad_begin + *pad_end - span;
        if (room < 0) return false;
        if (ceil_mode) {
            *out = (room + s - 1) / s + 1;
            /* A last window starting in the end padding would see no input. */
            if ((*out - 1) * s >= in + *pad_begin) --*out;
        } else {
            *out = room / s + 1;
        }
        return true;
    }
    }
}
