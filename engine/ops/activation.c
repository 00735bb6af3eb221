/*
 * Unary elementwise operators: activations, the one-input math functions
 * (Exp, Log, Sqrt, Neg, Round, the trigonometric family, ...) and IsNaN /
 * IsInf, plus the helpers other ops share: mk_apply_act (the fused epilogue)
 * and mk_infer_same_as_input.
 *
 * Everything here is a map y[i] = f(x[i]) over a contiguous tensor, so one
 * driver splits the elements over the pool and a kind selects the loop.  The
 * switch sits outside the loops so that each loop is a plain, vectorizable
 * one.  The transcendental maps are float-only (the engine is float-first);
 * the ops ONNX also defines over integers (Relu, Abs, Neg, Sign, Clip) accept
 * the integer types too, since exporters use them in shape arithmetic.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "common.h"
#include "../kernels/kernels.h"

typedef enum unary_kind {
    U_RELU,
    U_LEAKY_RELU,   /* alpha */
    U_CLIP,         /* alpha = min, beta = max */
    U_SIGMOID,
    U_HARD_SIGMOID, /* alpha, beta */
    U_HARD_SWISH,
    U_TANH,
    U_ERF,
    U_ELU,          /* alpha */
    U_SELU,         /* alpha, gamma */
    U_SOFTPLUS,
    U_SOFTSIGN,
    U_EXP,
    U_LOG,
    U_ABS,
    U_NEG,
    U_SIGN,
    U_SQRT,
    U_FLOOR,
    U_CEIL,
    U_RECIPROCAL,
    U_ROUND,
    U_THRESHOLDED_RELU, /* alpha */
    U_SHRINK,           /* alpha = lambd, beta = bias */
    U_CELU,             /* alpha */
    U_SIN,
    U_COS,
    U_TAN,
    U_ASIN,
    U_ACOS,
    U_ATAN,
    U_SINH,
    U_COSH,
    U_ASINH,
    U_ACOSH,
    U_ATANH,
} unary_kind;

typedef struct unary_params {
    unary_kind kind;
    float alpha, beta, gamma;
} unary_params;

/* Work per element differs by two orders of magnitude between Relu and Erf;
 * a smaller grain keeps both threads busy on the expensive maps. */
enum { GRAIN_CHEAP = 16384, GRAIN_TRANSCENDENTAL = 4096 };

/* ---- float maps ---------------------------------------------------------- */

/* The fused activation a kind also is, whose vector kernels then serve the
 * op (kernels/act.c); MK_ACT_NONE for the rest.  ONNX fixes HardSwish's
 * alpha = 1/6 and beta = 0.5, as the fused form does. */
static mk_act fused_form(unary_kind kind)
{
    switch (kind) {
    case U_SIGMOID: return MK_ACT_SIGMOID;
    case U_HARD_SIGMOID: return MK_ACT_HARD_SIGMOID;
    case U_HARD_SWISH: return MK_ACT_HARD_SWISH;
    case U_TANH: return MK_ACT_TANH;
    case U_ERF: return MK_ACT_ERF;
    case U_EXP: return MK_ACT_EXP;
    default: return MK_ACT_NONE;
    }
}

/* y may alias x (mk_apply_act maps in place). */
static void map_f32(const float *x, float *y, int64_t n, const unary_params *p)
{
    const float alpha = p->alpha, beta = p->beta, gamma = p->gamma;
    const mk_act act = fused_form(p->kind);
    if (act != MK_ACT_NONE) {
        const mk_act_spec a = {act, alpha, beta};
        mk_act_map(x, y, n, &a);
        return;
    }
    switch (p->kind) {
    case U_RELU:
        for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
        break;
    case U_LEAKY_RELU:
        for (int64_t i = 0; i < n; i++) y[i] = x[i] < 0.0f ? alpha * x[i] : x[i];
        break;
    case U_CLIP:
        /* max-then-min, so that min > max yields max as ONNX specifies. */
        for (int64_t i = 0; i < n; i++) {
            float v = x[i] < alpha ? alpha : x[i];
            y[i] = v > beta ? beta : v;
        }
        break;
    case U_ELU:
        /* expm1f keeps precision for x near 0 where exp(x)-1 cancels. */
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] < 0.0f ? alpha * expm1f(x[i]) : x[i];
        break;
    case U_SELU:
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] <= 0.0f ? gamma * alpha * expm1f(x[i]) : gamma * x[i];
        break;
    case U_SOFTPLUS:
        /* log(1 + e^x) without overflowing e^x for large x. */
        for (int64_t i = 0; i < n; i++) {
            float v = x[i];
            y[i] = v > 0.0f ? v + log1pf(expf(-v)) : log1pf(expf(v));
        }
        break;
    case U_SOFTSIGN:
        for (int64_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + fabsf(x[i]));
        break;
    case U_LOG:
        for (int64_t i = 0; i < n; i++) y[i] = logf(x[i]);
        break;
    case U_ABS:
        for (int64_t i = 0; i < n; i++) y[i] = fabsf(x[i]);
        break;
    case U_NEG:
        for (int64_t i = 0; i < n; i++) y[i] = -x[i];
        break;
    case U_SIGN:
        /* NaN stays NaN, as numpy's sign does. */
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] > 0.0f ? 1.0f : x[i] < 0.0f ? -1.0f : x[i] == 0.0f ? 0.0f : x[i];
        break;
    case U_SQRT:
        for (int64_t i = 0; i < n; i++) y[i] = sqrtf(x[i]);
        break;
    case U_FLOOR:
        for (int64_t i = 0; i < n; i++) y[i] = floorf(x[i]);
        break;
    case U_CEIL:
        for (int64_t i = 0; i < n; i++) y[i] = ceilf(x[i]);
        break;
    case U_RECIPROCAL:
        for (int64_t i = 0; i < n; i++) y[i] = 1.0f / x[i];
        break;
    case U_ROUND:
        /* Halves to even, as ONNX (and numpy) specify; rintf does that in
         * the default rounding mode. */
        for (int64_t i = 0; i < n; i++) y[i] = rintf(x[i]);
        break;
    case U_THRESHOLDED_RELU:
        for (int64_t i = 0; i < n; i++) y[i] = x[i] > alpha ? x[i] : 0.0f;
        break;
    case U_SHRINK:
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] < -alpha ? x[i] + beta : x[i] > alpha ? x[i] - beta : 0.0f;
        break;
    case U_CELU:
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] > 0.0f ? x[i] : alpha * expm1f(x[i] / alpha);
        break;
    case U_SIN: for (int64_t i = 0; i < n; i++) y[i] = sinf(x[i]); break;
    case U_COS: for (int64_t i = 0; i < n; i++) y[i] = cosf(x[i]); break;
    case U_TAN: for (int64_t i = 0; i < n; i++) y[i] = tanf(x[i]); break;
    case U_ASIN: for (int64_t i = 0; i < n; i++) y[i] = asinf(x[i]); break;
    case U_ACOS: for (int64_t i = 0; i < n; i++) y[i] = acosf(x[i]); break;
    case U_ATAN: for (int64_t i = 0; i < n; i++) y[i] = atanf(x[i]); break;
    case U_SINH: for (int64_t i = 0; i < n; i++) y[i] = sinhf(x[i]); break;
    case U_COSH: for (int64_t i = 0; i < n; i++) y[i] = coshf(x[i]); break;
    case U_ASINH: for (int64_t i = 0; i < n; i++) y[i] = asinhf(x[i]); break;
    case U_ACOSH: for (int64_t i = 0; i < n; i++) y[i] = acoshf(x[i]); break;
    case U_ATANH: for (int64_t i = 0; i < n; i++) y[i] = atanhf(x[i]); break;
    case U_SIGMOID:
    case U_HARD_SIGMOID:
    case U_HARD_SWISH:
    case U_TANH:
    case U_ERF:
    case U_EXP: break; /* fused_form's, above */
    }
}

/* ---- integer maps ---------------------------------------------------------- */

/* Clip's bounds for integer tensors, already converted to the element type's
 * range. */
typedef struct int_bounds {
    int64_t lo_s, hi_s;   /* signed types */
    uint64_t lo_u, hi_u;  /* unsigned types */
} int_bounds;

#define DEFINE_CLIP(T, sfx)                                                    \
    static void clip_##sfx(const T *x, T *y, int64_t n, T lo, T hi)            \
    {                                                                          \
        for (int64_t i = 0; i < n; i++) {                                      \
            T v = x[i] < lo ? lo : x[i];                                       \
            y[i] = v > hi ? hi : v;                                            \
        }                                                                      \
    }

/* Negation goes through uint64_t so that INT_MIN wraps instead of being
 * undefined behaviour. */
#define DEFINE_SIGNED_MAP(T, sfx)                                              \
    DEFINE_CLIP(T, sfx)                                                        \
    static void map_##sfx(const T *x, T *y, int64_t n, unary_kind kind,        \
                          const int_bounds *b)                                 \
    {                                                                          \
        switch (kind) {                                                        \
        case U_RELU:                                                           \
            for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0 ? x[i] : 0;        \
            break;                                                             \
        case U_ABS:                                                            \
            for (int64_t i = 0; i < n; i++)                                    \
                y[i] = x[i] < 0 ? (T)(0 - (uint64_t)x[i]) : x[i];              \
            break;                                                             \
        case U_NEG:                                                            \
            for (int64_t i = 0; i < n; i++) y[i] = (T)(0 - (uint64_t)x[i]);    \
            break;                                                             \
        case U_SIGN:                                                           \
            for (int64_t i = 0; i < n; i++) y[i] = (T)((x[i] > 0) - (x[i] < 0)); \
            break;                                                             \
        case U_CLIP:                                                           \
            clip_##sfx(x, y, n, (T)b->lo_s, (T)b->hi_s);                       \
            break;                                                             \
        default:                                                               \
            break; /* rejected by infer */                                     \
        }                                                                      \
    }

#define DEFINE_UNSIGNED_MAP(T, sfx)                                            \
    DEFINE_CLIP(T, sfx)                                                        \
    static void map_##sfx(const T *x, T *y, int64_t n, unary_kind kind,        \
                          const int_bounds *b)                                 \
    {                                                                          \
        switch (kind) {                                                        \
        case U_ABS:                                                            \
            if (x != y) memcpy(y, x, (size_t)n * sizeof(T));                   \
            break;                                                             \
        case U_SIGN:                                                           \
            for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0;                   \
            break;                                                             \
        case U_CLIP:                                                           \
            clip_##sfx(x, y, n, (T)b->lo_u, (T)b->hi_u);                       \
            break;                                                             \
        default:                                                               \
            break; /* rejected by infer */                                     \
        }                                                                      \
    }

DEFINE_SIGNED_MAP(int8_t, i8)
DEFINE_SIGNED_MAP(int16_t, i16)
DEFINE_SIGNED_MAP(int32_t, i32)
DEFINE_SIGNED_MAP(int64_t, i64)
DEFINE_UNSIGNED_MAP(uint8_t, u8)
DEFINE_UNSIGNED_MAP(uint16_t, u16)
DEFINE_UNSIGNED_MAP(uint32_t, u32)
DEFINE_UNSIGNED_MAP(uint64_t, u64)

static bool is_signed_int(maskd_dtype t)
{
    return t == MASKD_INT8 || t == MASKD_INT16 || t == MASKD_INT32 || t == MASKD_INT64;
}

/* Which element types each kind accepts: all take float; these follow the
 * integer types ONNX lists for the op. */
static bool kind_accepts(unary_kind kind, maskd_dtype t)
{
    if (t == MASKD_FLOAT) return true;
    switch (kind) {
    case U_RELU:
    case U_NEG:
        return is_signed_int(t);
    case U_ABS:
    case U_SIGN:
    case U_CLIP:
        return mk_is_int_dtype(t);
    default:
        return false;
    }
}

static void int_type_range(maskd_dtype t, int64_t *lo_s, int64_t *hi_s, uint64_t *hi_u)
{
    switch (t) {
    case MASKD_INT8:   *lo_s = INT8_MIN;  *hi_s = INT8_MAX;  break;
    case MASKD_INT16:  *lo_s = INT16_MIN; *hi_s = INT16_MAX; break;
    case MASKD_INT32:  *lo_s = INT32_MIN; *hi_s = INT32_MAX; break;
    case MASKD_INT64:  *lo_s = INT64_MIN; *hi_s = INT64_MAX; break;
    default:           *lo_s = 0;         *hi_s = 0;         break;
    }
    switch (t) {
    case MASKD_UINT8:  *hi_u = UINT8_MAX;  break;
    case MASKD_UINT16: *hi_u = UINT16_MAX; break;
    case MASKD_UINT32: *hi_u = UINT32_MAX; break;
    case MASKD_UINT64: *hi_u = UINT64_MAX; break;
    default:           *hi_u = 0;          break;
    }
}

/* ---- shared helpers (declared in mk.h) ------------------------------------ */

void mk_apply_act(float *x, int64_t n, mk_act act, float alpha, float beta)
{
    const mk_act_spec a = {act, alpha, beta};
    mk_act_span(x, n, &a);
}

int mk_infer_same_as_input(mk_ctx *ctx)
{
    mk_tensor *x, *y;
    int rc;
    if ((rc = mk_need_input(ctx, 0, &x)) || (rc = mk_need_output(ctx, 0, &y))) return rc;
    if (x->ndim < 0 || x->ndim > MASKD_MAX_DIMS)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "input has unknown or too high rank %d", x->ndim);
    y->dtype = x->dtype;
    y->ndim = x->ndim;
    memcpy(y->dims, x->dims, sizeof y->dims);
    return MASKD_OK;
}

/* ---- the op driver ------------------------------------------------------- */

/* Clip's bounds: attributes before opset 11, optional scalar inputs since. */
static bool clip_bounds_present(const mk_ctx *ctx, int i)
{
    return ctx->node->opset >= 11 && mk_input(ctx, i) != NULL;
}

static int clip_check_bound(mk_ctx *ctx, int i, const char *what)
{
    if (!clip_bounds_present(ctx, i)) return MASKD_OK;
    const mk_tensor *b = ctx->in[i];
    if (b->dtype != ctx->in[0]->dtype)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "%s has type %s, input has %s", what,
                          maskd_dtype_name(b->dtype), maskd_dtype_name(ctx->in[0]->dtype));
    if (b->ndim >= 0 && mk_numel(b) != 1) {
        char buf[96];
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "%s must be a scalar, got shape %s", what,
                          mk_shape_str(b, buf, sizeof buf));
    }
    return MASKD_OK;
}

static int check_dtype(mk_ctx *ctx, unary_kind kind, maskd_dtype t)
{
    if (!kind_accepts(kind, t))
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "element type %s is not supported",
                          maskd_dtype_name(t));
    return MASKD_OK;
}

/* At load only graph inputs and initializers have a known type; refusing
 * those here reports an unsupported model at load rather than per request. */
static int unary_prepare(mk_ctx *ctx, unary_kind kind)
{
    maskd_dtype t = mk_known_dtype(ctx, 0);
    return t == MASKD_UNDEFINED ? MASKD_OK : check_dtype(ctx, kind, t);
}

static int unary_infer(mk_ctx *ctx, unary_kind kind)
{
    int rc = mk_infer_same_as_input(ctx);
    if (rc || (rc = check_dtype(ctx, kind, ctx->in[0]->dtype))) return rc;
    if (kind == U_CLIP) {
        if ((rc = clip_check_bound(ctx, 1, "min"))) return rc;
        if ((rc = clip_check_bound(ctx, 2, "max"))) return rc;
    }
    return MASKD_OK;
}

typedef struct unary_job {
    const void *x;
    void *y;
    maskd_dtype dtype;
    unary_params p;
    int_bounds bounds;
} unary_job;

static void unary_range(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const unary_job *j = arg;
    int64_t n = end - begin;
    switch (j->dtype) {
    case MASKD_FLOAT:
        map_f32((const float *)j->x + begin, (float *)j->y + begin, n, &j->p);
        break;
#define INT_CASE(DT, T, sfx)                                                   \
    case DT:                                                                   \
        map_##sfx((const T *)j->x + begin, (T *)j->y + begin, n, j->p.kind,    \
                  &j->bounds);                                                 \
        break;
        INT_CASE(MASKD_INT8, int8_t, i8)
        INT_CASE(MASKD_INT16, int16_t, i16)
        INT_CASE(MASKD_INT32, int32_t, i32)
        INT_CASE(MASKD_INT64, int64_t, i64)
        INT_CASE(MASKD_UINT8, uint8_t, u8)
        INT_CASE(MASKD_UINT16, uint16_t, u16)
        INT_CASE(MASKD_UINT32, uint32_t, u32)
        INT_CASE(MASKD_UINT64, uint64_t, u64)
#undef INT_CASE
    default:
        break;
    }
}

/* Reads Clip's bounds for the element type at hand; absent bounds leave the
 * type's full range. */
static void clip_read_bounds(const mk_ctx *ctx, unary_job *j)
{
    const mk_node *node = ctx->node;
    if (j->dtype == MASKD_FLOAT) {
        if (node->opset < 11) {
            j->p.alpha = mk_attr_float(node, "min", -FLT_MAX);
            j->p.beta = mk_attr_float(node, "max", FLT_MAX);
        } else {
            /* -inf/+inf rather than +-FLT_MAX so that infinite inputs pass
             * through an unbounded side unchanged. */
            j->p.alpha = clip_bounds_present(ctx, 1) ? (float)mk_get_f64(ctx->in[1], 0) : -INFINITY;
            j->p.beta = clip_bounds_present(ctx, 2) ? (float)mk_get_f64(ctx->in[2], 0) : INFINITY;
        }
        return;
    }
    int_type_range(j->dtype, &j->bounds.lo_s, &j->bounds.hi_s, &j->bounds.hi_u);
    j->bounds.lo_u = 0;
    for (int i = 1; i <= 2; i++) {
        if (!clip_bounds_present(ctx, i)) continue;
        /* mk_get_i64 reads the value with the tensor's own type; for uint64
         * above INT64_MAX the bit pattern is what we want. */
        int64_t v = mk_get_i64(ctx->in[i], 0);
        if (i == 1) { j->bounds.lo_s = v; j->bounds.lo_u = (uint64_t)v; }
        else        { j->bounds.hi_s = v; j->bounds.hi_u = (uint64_t)v; }
    }
}

static int unary_run(mk_ctx *ctx, unary_kind kind)
{
    const mk_node *node = ctx->node;
    const mk_tensor *x = ctx->in[0];
    unary_job j = {.x = x->data, .y = ctx->out[0]->data, .dtype = x->dtype};
    j.p.kind = kind;
    switch (kind) {
    case U_LEAKY_RELU: j.p.alpha = mk_attr_float(node, "alpha", 0.01f); break;
    case U_HARD_SIGMOID:
        j.p.alpha = mk_attr_float(node, "alpha", 0.2f);
        j.p.beta = mk_attr_float(node, "beta", 0.5f);
        break;
    case U_ELU: j.p.alpha = mk_attr_float(node, "alpha", 1.0f); break;
    case U_SELU:
        j.p.alpha = mk_attr_float(node, "alpha", 1.67326319217681884765625f);
        j.p.gamma = mk_attr_float(node, "gamma", 1.05070102214813232421875f);
        break;
    case U_CLIP: clip_read_bounds(ctx, &j); break;
    case U_THRESHOLDED_RELU: j.p.alpha = mk_attr_float(node, "alpha", 1.0f); break;
    case U_SHRINK:
        j.p.alpha = mk_attr_float(node, "lambd", 0.5f);
        j.p.beta = mk_attr_float(node, "bias", 0.0f);
        break;
    case U_CELU: j.p.alpha = mk_attr_float(node, "alpha", 1.0f); break;
    default: break;
    }
    bool cheap = kind == U_RELU || kind == U_LEAKY_RELU || kind == U_CLIP || kind == U_SIGMOID ||
                 kind == U_ABS || kind == U_NEG || kind == U_SIGN ||
                 kind == U_FLOOR || kind == U_CEIL || kind == U_HARD_SIGMOID ||
                 kind == U_HARD_SWISH || kind == U_SQRT || kind == U_RECIPROCAL ||
                 kind == U_SOFTSIGN || kind == U_ROUND || kind == U_THRESHOLDED_RELU ||
                 kind == U_SHRINK;
    mk_parallel_for(ctx->pool, mk_numel(x), cheap ? GRAIN_CHEAP : GRAIN_TRANSCENDENTAL,
                    unary_range, &j);
    return MASKD_OK;
}

/* One infer/run pair per op, so the rows below stay declarative. */
#define UNARY_OP(fn, kind)                                                     \
    static int fn##_prepare(mk_ctx *ctx) { return unary_prepare(ctx, kind); }  \
    static int fn##_infer(mk_ctx *ctx) { return unary_infer(ctx, kind); }      \
    static int fn##_run(mk_ctx *ctx) { return unary_run(ctx, kind); }

UNARY_OP(relu, U_RELU)
UNARY_OP(leaky_relu, U_LEAKY_RELU)
UNARY_OP(clip, U_CLIP)
UNARY_OP(sigmoid, U_SIGMOID)
UNARY_OP(hard_sigmoid, U_HARD_SIGMOID)
UNARY_OP(hard_swish, U_HARD_SWISH)
UNARY_OP(tanh, U_TANH)
UNARY_OP(erf, U_ERF)
UNARY_OP(elu, U_ELU)
UNARY_OP(selu, U_SELU)
UNARY_OP(softplus, U_SOFTPLUS)
UNARY_OP(softsign, U_SOFTSIGN)
UNARY_OP(exp, U_EXP)
UNARY_OP(log, U_LOG)
UNARY_OP(abs, U_ABS)
UNARY_OP(neg, U_NEG)
UNARY_OP(sign, U_SIGN)
UNARY_OP(sqrt, U_SQRT)
UNARY_OP(floor, U_FLOOR)
UNARY_OP(ceil, U_CEIL)
UNARY_OP(reciprocal, U_RECIPROCAL)
UNARY_OP(round, U_ROUND)
UNARY_OP(thresholded_relu, U_THRESHOLDED_RELU)
UNARY_OP(shrink, U_SHRINK)
UNARY_OP(celu, U_CELU)
UNARY_OP(sin, U_SIN)
UNARY_OP(cos, U_COS)
UNARY_OP(tan, U_TAN)
UNARY_OP(asin, U_ASIN)
UNARY_OP(acos, U_ACOS)
UNARY_OP(atan, U_ATAN)
UNARY_OP(sinh, U_SINH)
UNARY_OP(cosh, U_COSH)
UNARY_OP(asinh, U_ASINH)
UNARY_OP(acosh, U_ACOSH)
UNARY_OP(atanh, U_ATANH)

/* ---- IsNaN, IsInf: float in, bool out ------------------------------------- */

static int check_float_dtype(mk_ctx *ctx, maskd_dtype t)
{
    if (t != MASKD_FLOAT)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "element type %s is not supported",
                          maskd_dtype_name(t));
    return MASKD_OK;
}

static int classify_prepare(mk_ctx *ctx)
{
    maskd_dtype t = mk_known_dtype(ctx, 0);
    return t == MASKD_UNDEFINED ? MASKD_OK : check_float_dtype(ctx, t);
}

static int classify_infer(mk_ctx *ctx)
{
    int rc = mk_infer_same_as_input(ctx);
    if (rc || (rc = check_float_dtype(ctx, ctx->in[0]->dtype))) return rc;
    ctx->out[0]->dtype = MASKD_BOOL;
    return MASKD_OK;
}

typedef struct classify_job {
    const float *x;
    uint8_t *y;
    bool nan, pos_inf, neg_inf; /* what counts as true */
} classify_job;

static void classify_range(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const classify_job *j = arg;
    for (int64_t i = begin; i < end; i++) {
        float v = j->x[i];
        j->y[i] = (j->nan && isnan(v)) || (j->pos_inf && v == INFINITY) ||
                  (j->neg_inf && v == -INFINITY);
    }
}

static int classify_run(mk_ctx *ctx, bool nan)
{
    classify_job j = {.x = ctx->in[0]->data, .y = ctx->out[0]->data, .nan = nan};
    if (!nan) {
        j.pos_inf = mk_attr_int(ctx->node, "detect_positive", 1) != 0;
        j.neg_inf = mk_attr_int(ctx->node, "detect_negative", 1) != 0;
    }
    mk_parallel_for(ctx->pool, mk_numel(ctx->in[0]), GRAIN_CHEAP, classify_range, &j);
    return MASKD_OK;
}

static int isnan_run(mk_ctx *ctx) { return classify_run(ctx, true); }
static int isinf_run(mk_ctx *ctx) { return classify_run(ctx, false); }

#define UNARY_ROW(type, since, fn)                                             \
    {.domain = "", .op_type = type, .since_version = since,                    \
     .prepare = fn##_prepare, .infer = fn##_infer, .run = fn##_run}

/* Opsets before 6 carried the legacy consumed_inputs attribute; the
 * computation is the same, but nothing we load is that old. */
MK_OP_FAMILY(activation,
    UNARY_ROW("Relu", 6, relu),
    UNARY_ROW("LeakyRelu", 6, leaky_relu),
    UNARY_ROW("Clip", 6, clip),
    UNARY_ROW("Sigmoid", 6, sigmoid),
    UNARY_ROW("HardSigmoid", 6, hard_sigmoid),
    UNARY_ROW("HardSwish", 14, hard_swish),
    UNARY_ROW("Tanh", 6, tanh),
    UNARY_ROW("Erf", 9, erf),
    UNARY_ROW("Elu", 6, elu),
    UNARY_ROW("Selu", 6, selu),
    UNARY_ROW("Softplus", 1, softplus),
    UNARY_ROW("Softsign", 1, softsign),
    UNARY_ROW("Exp", 6, exp),
    UNARY_ROW("Log", 6, log),
    UNARY_ROW("Abs", 6, abs),
    UNARY_ROW("Neg", 6, neg),
    UNARY_ROW("Sign", 9, sign),
    UNARY_ROW("Sqrt", 6, sqrt),
    UNARY_ROW("Floor", 6, floor),
    UNARY_ROW("Ceil", 6, ceil),
    UNARY_ROW("Reciprocal", 6, reciprocal),
    UNARY_ROW("Round", 11, round),
    UNARY_ROW("ThresholdedRelu", 10, thresholded_relu),
    UNARY_ROW("Shrink", 9, shrink),
    UNARY_ROW("Celu", 12, celu),
    UNARY_ROW("Sin", 7, sin),
    UNARY_ROW("Cos", 7, cos),
    UNARY_ROW("Tan", 7, tan),
    UNARY_ROW("Asin", 7, asin),
    UNARY_ROW("Acos", 7, acos),
    UNARY_ROW("Atan", 7, atan),
    UNARY_ROW("Sinh", 9, sinh),
    UNARY_ROW("Cosh", 9, cosh),
    UNARY_ROW("Asinh", 9, asinh),
    UNARY_ROW("Acosh", 9, acosh),
    UNARY_ROW("Atanh", 9, atanh),
    {.domain = "", .op_type = "IsNaN", .since_version = 9, .prepare = classify_prepare,
     .infer = classify_infer, .run = isnan_run},
    {.domain = "", .op_type = "IsInf", .since_version = 10, .prepare = classify_prepare,
     .infer = classify_infer, .run = isinf_run});
