/*
 * Broadcasting elementwise operators: arithmetic (Add, Sub, Mul, Div, Pow,
 * Mod, PRelu), the variadic Min/Max/Sum/Mean, comparisons, logic and Where,
 * with numpy's multidirectional broadcasting over every element type ONNX
 * allows for them except the 16-bit floats.
 *
 * How a broadcast is run: each input gets a stride per output dimension, 0
 * where it is broadcast.  Dimensions of size 1 are dropped and neighbours that
 * are contiguous for every operand are merged, so the innermost dimension is
 * as long as it can be and every operand moves through it with step 0 or 1.
 * The common cases then fall out without special code: same-shape tensors are
 * one run of n elements, a scalar operand is a run with step 0, and
 * [N,C,H,W] op [C,1,1] becomes runs of H*W elements against one value per
 * channel.  A kernel handles one run; the iterator walks the outer dimensions
 * with an odometer, so div/mod happens once per parallel chunk, not per
 * element.
 *
 * Integer semantics, where C would trap or be undefined: + - * wrap around;
 * division and modulo by zero give 0 (numpy's result, without its warning);
 * INT_MIN / -1 wraps to INT_MIN.  Integer Div truncates toward zero, as ONNX
 * Runtime and the ONNX reference implementation do; Mod with fmod=0 takes the
 * divisor's sign (Python's %), with fmod=1 the dividend's (C's fmod).
 */
#include <math.h>
#include <string.h>

#include "common.h"

enum { GRAIN = 16384 };
enum { N_DTYPES = MASKD_UINT64 + 1 };

/*
 * One run of n output elements.  Input k starts at in[k] and advances step[k]
 * elements (0 or 1) per output element; param is op-specific.
 */
typedef void (*seg_fn)(void *out, const void *const in[], const int64_t step[],
                       int64_t n, const void *param);

/* ---- scalar operations ----------------------------------------------------- */

/* Floats propagate NaN through Min/Max as numpy's minimum/maximum do. */
#define DEFINE_FLOAT_OPS(T, sfx, FMOD)                                         \
    static inline T add_##sfx(T a, T b) { return a + b; }                      \
    static inline T sub_##sfx(T a, T b) { return a - b; }                      \
    static inline T mul_##sfx(T a, T b) { return a * b; }                      \
    static inline T div_##sfx(T a, T b) { return a / b; }                      \
    static inline T min_##sfx(T a, T b) { return (a < b || a != a) ? a : b; }  \
    static inline T max_##sfx(T a, T b) { return (a > b || a != a) ? a : b; }  \
    static inline T fmod_##sfx(T a, T b) { return FMOD(a, b); }                \
    static inline T prelu_##sfx(T a, T b) { return a < 0 ? a * b : a; }

/* Wrapping arithmetic through uint64_t avoids signed-overflow UB; the
 * conversion back to T is modular with GCC and Clang. */
#define DEFINE_SIGNED_OPS(T, sfx)                                              \
    static inline T add_##sfx(T a, T b) { return (T)((uint64_t)a + (uint64_t)b); } \
    static inline T sub_##sfx(T a, T b) { return (T)((uint64_t)a - (uint64_t)b); } \
    static inline T mul_##sfx(T a, T b) { return (T)((uint64_t)a * (uint64_t)b); } \
    static inline T div_##sfx(T a, T b)                                        \
    {                                                                          \
        if (b == 0) return 0;                                                  \
        if (b == (T)-1) return (T)(0 - (uint64_t)a);                           \
        return (T)(a / b);                                                     \
    }                                                                          \
    static inline T min_##sfx(T a, T b) { return a < b ? a : b; }              \
    static inline T max_##sfx(T a, T b) { return a > b ? a : b; }              \
    static inline T fmod_##sfx(T a, T b)                                       \
    {                                                                          \
        return (b == 0 || b == (T)-1) ? 0 : (T)(a % b);                        \
    }                                                                          \
    static inline T mod_##sfx(T a, T b)                                        \
    {                                                                          \
        if (b == 0 || b == (T)-1) return 0;                                    \
        T r = (T)(a % b);                                                      \
        return (r != 0 && ((r < 0) != (b < 0))) ? (T)(r + b) : r;              \
    }

#define DEFINE_UNSIGNED_OPS(T, sfx)                                            \
    static inline T add_##sfx(T a, T b) { return (T)((uint64_t)a + b); }       \
    static inline T sub_##sfx(T a, T b) { return (T)((uint64_t)a - b); }       \
    static inline T mul_##sfx(T a, T b) { return (T)((uint64_t)a * b); }       \
    static inline T div_##sfx(T a, T b) { return b ? (T)(a / b) : 0; }         \
    static inline T min_##sfx(T a, T b) { return a < b ? a : b; }              \
    static inline T max_##sfx(T a, T b) { return a > b ? a : b; }              \
    static inline T fmod_##sfx(T a, T b) { return b ? (T)(a % b) : 0; }        \
    static inline T mod_##sfx(T a, T b) { return b ? (T)(a % b) : 0; }

#define DEFINE_COMPARE_OPS(T, sfx)                                             \
    static inline uint8_t eq_##sfx(T a, T b) { return a == b; }                \
    static inline uint8_t gt_##sfx(T a, T b) { return a > b; }                 \
    static inline uint8_t lt_##sfx(T a, T b) { return a < b; }                 \
    static inline uint8_t ge_##sfx(T a, T b) { return a >= b; }                \
    static inline uint8_t le_##sfx(T a, T b) { return a <= b; }

/* Bools are stored as 0/1 bytes, but any nonzero byte reads as true. */
static inline uint8_t and_b(uint8_t a, uint8_t b) { return (a != 0) & (b != 0); }
static inline uint8_t or_b(uint8_t a, uint8_t b) { return (a != 0) | (b != 0); }
static inline uint8_t xor_b(uint8_t a, uint8_t b) { return (a != 0) ^ (b != 0); }
static inline uint8_t eq_b(uint8_t a, uint8_t b) { return (a != 0) == (b != 0); }

/* ---- run kernels ----------------------------------------------------------- */

/* The four step patterns get their own loops so that each one vectorizes. */
#define DEFINE_SEG(name, Tin, Tout, OP)                                        \
    static void name(void *out, const void *const in[], const int64_t step[],  \
                     int64_t n, const void *param)                             \
    {                                                                          \
        (void)param;                                                           \
        Tout *o = out;                                                         \
        const Tin *a = in[0], *b = in[1];                                      \
        if (step[0] && step[1]) {                                              \
            for (int64_t i = 0; i < n; i++) o[i] = OP(a[i], b[i]);             \
        } else if (step[0]) {                                                  \
            const Tin bv = *b;                                                 \
            for (int64_t i = 0; i < n; i++) o[i] = OP(a[i], bv);               \
        } else if (step[1]) {                                                  \
            const Tin av = *a;                                                 \
            for (int64_t i = 0; i < n; i++) o[i] = OP(av, b[i]);               \
        } else {                                                               \
            const Tout v = OP(*a, *b);                                         \
            for (int64_t i = 0; i < n; i++) o[i] = v;                          \
        }                                                                      \
    }

#define DEFINE_ARITH_SEGS(T, sfx)                                              \
    DEFINE_SEG(add_##sfx##_seg, T, T, add_##sfx)                               \
    DEFINE_SEG(sub_##sfx##_seg, T, T, sub_##sfx)                               \
    DEFINE_SEG(mul_##sfx##_seg, T, T, mul_##sfx)                               \
    DEFINE_SEG(div_##sfx##_seg, T, T, div_##sfx)                               \
    DEFINE_SEG(min_##sfx##_seg, T, T, min_##sfx)                               \
    DEFINE_SEG(max_##sfx##_seg, T, T, max_##sfx)                               \
    DEFINE_SEG(fmod_##sfx##_seg, T, T, fmod_##sfx)                             \
    DEFINE_SEG(eq_##sfx##_seg, T, uint8_t, eq_##sfx)                           \
    DEFINE_SEG(gt_##sfx##_seg, T, uint8_t, gt_##sfx)                           \
    DEFINE_SEG(lt_##sfx##_seg, T, uint8_t, lt_##sfx)                           \
    DEFINE_SEG(ge_##sfx##_seg, T, uint8_t, ge_##sfx)                           \
    DEFINE_SEG(le_##sfx##_seg, T, uint8_t, le_##sfx)

#define DEFINE_FLOAT_TYPE(T, sfx, FMOD)                                        \
    DEFINE_FLOAT_OPS(T, sfx, FMOD)                                             \
    DEFINE_COMPARE_OPS(T, sfx)                                                 \
    DEFINE_ARITH_SEGS(T, sfx)                                                  \
    DEFINE_SEG(prelu_##sfx##_seg, T, T, prelu_##sfx)

#define DEFINE_SIGNED_TYPE(T, sfx)                                             \
    DEFINE_SIGNED_OPS(T, sfx)                                                  \
    DEFINE_COMPARE_OPS(T, sfx)                                                 \
    DEFINE_ARITH_SEGS(T, sfx)                                                  \
    DEFINE_SEG(mod_##sfx##_seg, T, T, mod_##sfx)

#define DEFINE_UNSIGNED_TYPE(T, sfx)                                           \
    DEFINE_UNSIGNED_OPS(T, sfx)                                                \
    DEFINE_COMPARE_OPS(T, sfx)                                                 \
    DEFINE_ARITH_SEGS(T, sfx)                                                  \
    DEFINE_SEG(mod_##sfx##_seg, T, T, mod_##sfx)

DEFINE_FLOAT_TYPE(float, f32, fmodf)
DEFINE_FLOAT_TYPE(double, f64, fmod)
DEFINE_SIGNED_TYPE(int8_t, i8)
DEFINE_SIGNED_TYPE(int16_t, i16)
DEFINE_SIGNED_TYPE(int32_t, i32)
DEFINE_SIGNED_TYPE(int64_t, i64)
DEFINE_UNSIGNED_TYPE(uint8_t, u8)
DEFINE_UNSIGNED_TYPE(uint16_t, u16)
DEFINE_UNSIGNED_TYPE(uint32_t, u32)
DEFINE_UNSIGNED_TYPE(uint64_t, u64)
DEFINE_SEG(and_b_seg, uint8_t, uint8_t, and_b)
DEFINE_SEG(or_b_seg, uint8_t, uint8_t, or_b)
DEFINE_SEG(xor_b_seg, uint8_t, uint8_t, xor_b)
DEFINE_SEG(eq_b_seg, uint8_t, uint8_t, eq_b)

/* Where(cond, x, y) selects by element type; any of the three may be
 * broadcast along a run, so the mixed-step loop indexes by multiplication. */
#define DEFINE_WHERE_SEG(T, sfx)                                               \
    static void where_##sfx##_seg(void *out, const void *const in[],           \
                                  const int64_t step[], int64_t n,             \
                                  const void *param)                           \
    {                                                                          \
        (void)param;                                                           \
        T *o = out;                                                            \
        const uint8_t *c = in[0];                                              \
        const T *x = in[1], *y = in[2];                                        \
        if (step[0] && step[1] && step[2]) {                                   \
            for (int64_t i = 0; i < n; i++) o[i] = c[i] ? x[i] : y[i];         \
        } else {                                                               \
            const int64_t sc = step[0], sx = step[1], sy = step[2];            \
            for (int64_t i = 0; i < n; i++)                                    \
                o[i] = c[i * sc] ? x[i * sx] : y[i * sy];                      \
        }                                                                      \
    }

DEFINE_WHERE_SEG(float, f32)
DEFINE_WHERE_SEG(double, f64)
DEFINE_WHERE_SEG(int8_t, i8)
DEFINE_WHERE_SEG(int16_t, i16)
DEFINE_WHERE_SEG(int32_t, i32)
DEFINE_WHERE_SEG(int64_t, i64)
DEFINE_WHERE_SEG(uint8_t, u8)
DEFINE_WHERE_SEG(uint16_t, u16)
DEFINE_WHERE_SEG(uint32_t, u32)
DEFINE_WHERE_SEG(uint64_t, u64)

/* Kernel tables indexed by the inputs' element type; NULL = not supported. */
#define FLOAT_ENTRIES(op)                                                      \
    [MASKD_FLOAT] = op##_f32_seg, [MASKD_DOUBLE] = op##_f64_seg
#define INT_ENTRIES(op)                                                        \
    [MASKD_INT8] = op##_i8_seg, [MASKD_INT16] = op##_i16_seg,                  \
    [MASKD_INT32] = op##_i32_seg, [MASKD_INT64] = op##_i64_seg,                \
    [MASKD_UINT8] = op##_u8_seg, [MASKD_UINT16] = op##_u16_seg,                \
    [MASKD_UINT32] = op##_u32_seg, [MASKD_UINT64] = op##_u64_seg
#define NUMERIC_ENTRIES(op) FLOAT_ENTRIES(op), INT_ENTRIES(op)

typedef struct ew_op {
    seg_fn kernel[N_DTYPES];
    bool bool_out; /* comparisons and logic write bool */
} ew_op;

static const ew_op add_op = {{NUMERIC_ENTRIES(add)}, false};
static const ew_op sub_op = {{NUMERIC_ENTRIES(sub)}, false};
static const ew_op mul_op = {{NUMERIC_ENTRIES(mul)}, false};
static const ew_op div_op = {{NUMERIC_ENTRIES(div)}, false};
static const ew_op min_op = {{NUMERIC_ENTRIES(min)}, false};
static const ew_op max_op = {{NUMERIC_ENTRIES(max)}, false};
/* Mean divides by the count, which only floats can represent. */
static const ew_op mean_op = {{FLOAT_ENTRIES(add)}, false};
/* ONNX requires fmod=1 for floats, so the integer-style table has none. */
static const ew_op mod_op = {{INT_ENTRIES(mod)}, false};
static const ew_op fmod_op = {{NUMERIC_ENTRIES(fmod)}, false};
static const ew_op prelu_op = {{FLOAT_ENTRIES(prelu)}, false};
static const ew_op equal_op = {{NUMERIC_ENTRIES(eq), [MASKD_BOOL] = eq_b_seg}, true};
static const ew_op greater_op = {{NUMERIC_ENTRIES(gt)}, true};
static const ew_op less_op = {{NUMERIC_ENTRIES(lt)}, true};
static const ew_op greater_equal_op = {{NUMERIC_ENTRIES(ge)}, true};
static const ew_op less_equal_op = {{NUMERIC_ENTRIES(le)}, true};
static const ew_op and_op = {{[MASKD_BOOL] = and_b_seg}, true};
static const ew_op or_op = {{[MASKD_BOOL] = or_b_seg}, true};
static const ew_op xor_op = {{[MASKD_BOOL] = xor_b_seg}, true};
static const ew_op where_op = {{NUMERIC_ENTRIES(where), [MASKD_BOOL] = where_u8_seg}, false};

/* ---- broadcasting ---------------------------------------------------------- */

int mk_broadcast_shape(const mk_tensor *a, const mk_tensor *b, mk_tensor *out,
                       mk_error *err)
{
    char sa[96], sb[96];
    if (a->ndim < 0 || a->ndim > MASKD_MAX_DIMS || b->ndim < 0 || b->ndim > MASKD_MAX_DIMS)
        return mk_fail(err, MASKD_ERR_INVALID, "cannot broadcast ranks %d and %d",
                       a->ndim, b->ndim);
    int rank = a->ndim > b->ndim ? a->ndim : b->ndim;
    /* Built aside so that out may be a or b. */
    int64_t dims[MASKD_MAX_DIMS];
    for (int i = 0; i < rank; i++) {
        int ia = i - (rank - a->ndim), ib = i - (rank - b->ndim);
        int64_t da = ia >= 0 ? a->dims[ia] : 1, db = ib >= 0 ? b->dims[ib] : 1;
        if (da == db || db == 1)
            dims[i] = da;
        else if (da == 1)
            dims[i] = db;
        else
            return mk_fail(err, MASKD_ERR_SHAPE, "cannot broadcast shapes %s and %s",
                           mk_shape_str(a, sa, sizeof sa), mk_shape_str(b, sb, sizeof sb));
    }
    out->ndim = rank;
    memcpy(out->dims, dims, (size_t)rank * sizeof dims[0]);
    return MASKD_OK;
}

enum { MAX_OPERANDS = 3 };

/* The output's iteration space after dropping 1s and merging dimensions. */
typedef struct bcast_plan {
    int rank; /* >= 1 */
    int n_in;
    int64_t dims[MASKD_MAX_DIMS];
    int64_t stride[MAX_OPERANDS][MASKD_MAX_DIMS]; /* elements; 0 = broadcast */
} bcast_plan;

static void plan_broadcast(bcast_plan *p, const mk_tensor *out,
                           const mk_tensor *const in[], int n_in)
{
    p->n_in = n_in;
    int rank = 0;
    for (int d = 0; d < out->ndim; d++) {
        if (out->dims[d] == 1) continue;
        p->dims[rank] = out->dims[d];
        for (int k = 0; k < n_in; k++) {
            const mk_tensor *t = in[k];
            int td = d - (out->ndim - t->ndim);
            int64_t stride = 0;
            if (td >= 0 && t->dims[td] != 1) {
                stride = 1;
                for (int j = td + 1; j < t->ndim; j++) stride *= t->dims[j];
            }
            p->stride[k][rank] = stride;
        }
        rank++;
    }
    if (rank == 0) { /* every dimension is 1: a single element */
        p->rank = 1;
        p->dims[0] = 1;
        for (int k = 0; k < n_in; k++) p->stride[k][0] = 0;
        return;
    }
    /* Merge dimension d into the one before it when, for every operand,
     * stepping the outer one is the same as running off the end of d. */
    int merged = 1;
    for (int d = 1; d < rank; d++) {
        bool contiguous = true;
        for (int k = 0; k < n_in; k++)
            if (p->stride[k][merged - 1] != p->stride[k][d] * p->dims[d]) contiguous = false;
        if (contiguous) {
            p->dims[merged - 1] *= p->dims[d];
            for (int k = 0; k < n_in; k++) p->stride[k][merged - 1] = p->stride[k][d];
        } else {
            p->dims[merged] = p->dims[d];
            for (int k = 0; k < n_in; k++) p->stride[k][merged] = p->stride[k][d];
            merged++;
        }
    }
    p->rank = merged;
}

typedef struct bcast_job {
    bcast_plan plan;
    char *out;
    size_t out_size;
    const char *in[MAX_OPERANDS];
    size_t in_size[MAX_OPERANDS];
    seg_fn fn;
    const void *param;
    mk_act act; /* applied to float output runs */
    float act_alpha, act_beta;
} bcast_job;

static void bcast_range(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const bcast_job *j = arg;
    const bcast_plan *p = &j->plan;
    const int last = p->rank - 1, n_in = p->n_in;
    int64_t idx[MASKD_MAX_DIMS], off[MAX_OPERANDS] = {0}, step[MAX_OPERANDS];
    int64_t rest = begin;
    for (int d = last; d >= 0; d--) {
        idx[d] = rest % p->dims[d];
        rest /= p->dims[d];
        for (int k = 0; k < n_in; k++) off[k] += idx[d] * p->stride[k][d];
    }
    for (int k = 0; k < n_in; k++) step[k] = p->stride[k][last];

    for (int64_t pos = begin; pos < end;) {
        int64_t n = p->dims[last] - idx[last];
        if (n > end - pos) n = end - pos;
        const void *ptr[MAX_OPERANDS];
        for (int k = 0; k < n_in; k++) ptr[k] = j->in[k] + off[k] * (int64_t)j->in_size[k];
        char *o = j->out + pos * (int64_t)j->out_size;
        j->fn(o, ptr, step, n, j->param);
        if (j->act != MK_ACT_NONE)
            mk_apply_act((float *)o, n, j->act, j->act_alpha, j->act_beta);
        pos += n;
        if (pos >= end) break;
        /* The run ended at the end of the innermost dimension: carry. */
        for (int k = 0; k < n_in; k++) off[k] -= idx[last] * p->stride[k][last];
        idx[last] = 0;
        for (int d = last - 1; d >= 0; d--) {
            idx[d]++;
            for (int k = 0; k < n_in; k++) off[k] += p->stride[k][d];
            if (idx[d] < p->dims[d]) break;
            for (int k = 0; k < n_in; k++) off[k] -= p->dims[d] * p->stride[k][d];
            idx[d] = 0;
        }
    }
}

/* out = fn(in...) over out's (already inferred) shape. */
static void run_broadcast(mk_ctx *ctx, mk_tensor *out, const mk_tensor *const in[],
                          int n_in, seg_fn fn, const void *param, bool fused_act)
{
    int64_t total = mk_numel(out);
    if (total == 0) return;
    bcast_job j = {.out = out->data, .out_size = maskd_dtype_size(out->dtype),
                   .fn = fn, .param = param, .act = MK_ACT_NONE};
    plan_broadcast(&j.plan, out, in, n_in);
    for (int k = 0; k < n_in; k++) {
        j.in[k] = in[k]->data;
        j.in_size[k] = maskd_dtype_size(in[k]->dtype);
    }
    if (fused_act) {
        j.act = ctx->node->act;
        j.act_alpha = ctx->node->act_alpha;
        j.act_beta = ctx->node->act_beta;
    }
    mk_parallel_for(ctx->pool, total, GRAIN, bcast_range, &j);
}

/* ---- shape and type checks ------------------------------------------------- */

static int need_io(mk_ctx *ctx, int min_in)
{
    if (ctx->n_in < min_in || ctx->n_out < 1 || !ctx->out[0])
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "needs %d input(s) and an output", min_in);
    for (int i = 0; i < ctx->n_in; i++) {
        const mk_tensor *t = ctx->in[i];
        if (!t)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "input %d is missing", i);
        if (t->ndim < 0 || t->ndim > MASKD_MAX_DIMS)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "input %d has unknown or too high rank %d", i,
                              t->ndim);
    }
    return MASKD_OK;
}

/* Broadcasts inputs [first, n_in) into out's shape. */
static int infer_broadcast(mk_ctx *ctx, int first)
{
    mk_tensor *out = ctx->out[0];
    out->ndim = ctx->in[first]->ndim;
    memcpy(out->dims, ctx->in[first]->dims, sizeof out->dims);
    for (int i = first + 1; i < ctx->n_in; i++) {
        if (mk_broadcast_shape(out, ctx->in[i], out, NULL) != MASKD_OK) {
            char s[MAX_OPERANDS][96];
            int n = ctx->n_in < MAX_OPERANDS ? ctx->n_in : MAX_OPERANDS;
            for (int k = 0; k < n; k++) mk_shape_str(ctx->in[k], s[k], sizeof s[k]);
            return mk_op_fail(ctx, MASKD_ERR_SHAPE, "input shapes %s, %s%s%s do not broadcast",
                              s[0], s[1], n > 2 ? ", " : "", n > 2 ? s[2] : "");
        }
    }
    return MASKD_OK;
}

static int check_same_dtype(mk_ctx *ctx, int first)
{
    for (int i = first + 1; i < ctx->n_in; i++)
        if (ctx->in[i]->dtype != ctx->in[first]->dtype)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "input %d is %s but input %d is %s", i,
                              maskd_dtype_name(ctx->in[i]->dtype), first,
                              maskd_dtype_name(ctx->in[first]->dtype));
    return MASKD_OK;
}

static seg_fn kernel_for(const ew_op *op, maskd_dtype t)
{
    return (unsigned)t < N_DTYPES ? op->kernel[t] : NULL;
}

static int unsupported_dtype(mk_ctx *ctx, maskd_dtype t)
{
    return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "element type %s is not supported",
                      maskd_dtype_name(t));
}

/* A fused activation only makes sense on float output. */
static int check_fused_act(mk_ctx *ctx)
{
    if (ctx->node->act != MK_ACT_NONE && ctx->out[0]->dtype != MASKD_FLOAT)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "fused activation on %s output",
                          maskd_dtype_name(ctx->out[0]->dtype));
    return MASKD_OK;
}

/* At load only graph inputs and initializers have a known type; refusing
 * those here reports an unsupported model at load rather than per request. */
static int prepare_dtypes(mk_ctx *ctx, const ew_op *op, int first)
{
    for (int i = first; i < ctx->n_in; i++) {
        maskd_dtype t = mk_known_dtype(ctx, i);
        if (t != MASKD_UNDEFINED && !kernel_for(op, t)) return unsupported_dtype(ctx, t);
    }
    return MASKD_OK;
}

/* ---- binary and variadic ops ----------------------------------------------- */

static int nary_infer(mk_ctx *ctx, const ew_op *op, int min_in)
{
    int rc;
    if ((rc = need_io(ctx, min_in)) || (rc = check_same_dtype(ctx, 0))) return rc;
    maskd_dtype t = ctx->in[0]->dtype;
    if (!kernel_for(op, t)) return unsupported_dtype(ctx, t);
    if ((rc = infer_broadcast(ctx, 0))) return rc;
    ctx->out[0]->dtype = op->bool_out ? MASKD_BOOL : t;
    return check_fused_act(ctx);
}

static int binary_infer(mk_ctx *ctx, const ew_op *op)
{
    if (ctx->n_in != 2)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "takes 2 inputs, has %d", ctx->n_in);
    return nary_infer(ctx, op, 2);
}

static int binary_run(mk_ctx *ctx, const ew_op *op)
{
    const mk_tensor *in[2] = {ctx->in[0], ctx->in[1]};
    run_broadcast(ctx, ctx->out[0], in, 2, kernel_for(op, in[0]->dtype), NULL, true);
    return MASKD_OK;
}

typedef struct scale_job {
    void *data;
    maskd_dtype dtype;
    double factor;
} scale_job;

static void scale_range(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const scale_job *j = arg;
    if (j->dtype == MASKD_FLOAT) {
        float *x = j->data, f = (float)j->factor;
        for (int64_t i = begin; i < end; i++) x[i] *= f;
    } else {
        double *x = j->data;
        for (int64_t i = begin; i < end; i++) x[i] *= j->factor;
    }
}

/* Min, Max, Sum, Mean: folds the inputs pairwise into the output, which
 * after the first step is itself the left operand (same index, so the
 * in-place update is safe). */
static int variadic_run(mk_ctx *ctx, const ew_op *op, bool mean)
{
    mk_tensor *out = ctx->out[0];
    seg_fn fn = kernel_for(op, ctx->in[0]->dtype);
    if (ctx->n_in == 1) {
        /* A single input has the output's shape: copy it. */
        if (out->data != ctx->in[0]->data) memcpy(out->data, ctx->in[0]->data, mk_nbytes(out));
        return MASKD_OK;
    }
    const mk_tensor *in[2] = {ctx->in[0], ctx->in[1]};
    run_broadcast(ctx, out, in, 2, fn, NULL, false);
    for (int i = 2; i < ctx->n_in; i++) {
        const mk_tensor *acc[2] = {out, ctx->in[i]};
        run_broadcast(ctx, out, acc, 2, fn, NULL, false);
    }
    if (mean) {
        scale_job j = {out->data, out->dtype, 1.0 / ctx->n_in};
        mk_parallel_for(ctx->pool, mk_numel(out), GRAIN, scale_range, &j);
    }
    return MASKD_OK;
}

static int variadic_infer_min_max_sum(mk_ctx *ctx, const ew_op *op)
{
    return nary_infer(ctx, op, 1);
}

#define BINARY_OP(fn, op)                                                      \
    static int fn##_prepare(mk_ctx *ctx) { return prepare_dtypes(ctx, &op, 0); } \
    static int fn##_infer(mk_ctx *ctx) { return binary_infer(ctx, &op); }      \
    static int fn##_run(mk_ctx *ctx) { return binary_run(ctx, &op); }

BINARY_OP(add, add_op)
BINARY_OP(sub, sub_op)
BINARY_OP(mul, mul_op)
BINARY_OP(div, div_op)
BINARY_OP(equal, equal_op)
BINARY_OP(greater, greater_op)
BINARY_OP(less, less_op)
BINARY_OP(greater_equal, greater_equal_op)
BINARY_OP(less_equal, less_equal_op)
BINARY_OP(and, and_op)
BINARY_OP(or, or_op)
BINARY_OP(xor, xor_op)

#define VARIADIC_OP(fn, op, is_mean)                                           \
    static int fn##_prepare(mk_ctx *ctx) { return prepare_dtypes(ctx, &op, 0); } \
    static int fn##_infer(mk_ctx *ctx) { return variadic_infer_min_max_sum(ctx, &op); } \
    static int fn##_run(mk_ctx *ctx) { return variadic_run(ctx, &op, is_mean); }

VARIADIC_OP(min, min_op, false)
VARIADIC_OP(max, max_op, false)
VARIADIC_OP(sum, add_op, false)
VARIADIC_OP(mean, mean_op, true)

/* ---- Mod ------------------------------------------------------------------- */

static const ew_op *mod_table(const mk_node *node)
{
    return mk_attr_int(node, "fmod", 0) ? &fmod_op : &mod_op;
}

static int mod_check(mk_ctx *ctx)
{
    int64_t fmod_attr = mk_attr_int(ctx->node, "fmod", 0);
    if (fmod_attr != 0 && fmod_attr != 1)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "fmod must be 0 or 1, got %lld",
                          (long long)fmod_attr);
    maskd_dtype t = mk_known_dtype(ctx, 0);
    if (!fmod_attr && (t == MASKD_FLOAT || t == MASKD_DOUBLE))
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "floating-point inputs require fmod=1");
    return MASKD_OK;
}

static int mod_prepare(mk_ctx *ctx)
{
    int rc = mod_check(ctx);
    return rc ? rc : prepare_dtypes(ctx, mod_table(ctx->node), 0);
}

static int mod_infer(mk_ctx *ctx)
{
    int rc = mod_check(ctx);
    return rc ? rc : binary_infer(ctx, mod_table(ctx->node));
}

static int mod_run(mk_ctx *ctx)
{
    return binary_run(ctx, mod_table(ctx->node));
}

/* ---- PRelu ------------------------------------------------------------------ */

static int prelu_prepare(mk_ctx *ctx)
{
    return prepare_dtypes(ctx, &prelu_op, 0);
}

/* slope broadcasts to X one way only: the output keeps X's shape. */
static int prelu_infer(mk_ctx *ctx)
{
    int rc = binary_infer(ctx, &prelu_op);
    if (rc) return rc;
    if (!mk_same_shape(ctx->out[0], ctx->in[0])) {
        char sx[96], ss[96];
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "slope %s does not broadcast to input %s",
                          mk_shape_str(ctx->in[1], ss, sizeof ss),
                          mk_shape_str(ctx->in[0], sx, sizeof sx));
    }
    return MASKD_OK;
}

static int prelu_run(mk_ctx *ctx)
{
    return binary_run(ctx, &prelu_op);
}

/* ---- Where ------------------------------------------------------------------ */

static int where_prepare(mk_ctx *ctx)
{
    return prepare_dtypes(ctx, &where_op, 1);
}

static int where_infer(mk_ctx *ctx)
{
    int rc;
    if (ctx->n_in != 3)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "takes 3 inputs, has %d", ctx->n_in);
    if ((rc = need_io(ctx, 3)) || (rc = check_same_dtype(ctx, 1))) return rc;
    if (ctx->in[0]->dtype != MASKD_BOOL)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "condition is %s, not bool",
                          maskd_dtype_name(ctx->in[0]->dtype));
    maskd_dtype t = ctx->in[1]->dtype;
    if (!kernel_for(&where_op, t)) return unsupported_dtype(ctx, t);
    if ((rc = infer_broadcast(ctx, 0))) return rc;
    ctx->out[0]->dtype = t;
    return MASKD_OK;
}

static int where_run(mk_ctx *ctx)
{
    const mk_tensor *in[3] = {ctx->in[0], ctx->in[1], ctx->in[2]};
    run_broadcast(ctx, ctx->out[0], in, 3, kernel_for(&where_op, in[1]->dtype), NULL, false);
    return MASKD_OK;
}

/* ---- Not -------------------------------------------------------------------- */

static int not_check_dtype(mk_ctx *ctx, maskd_dtype t)
{
    if (t != MASKD_BOOL)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "input is %s, not bool", maskd_dtype_name(t));
    return MASKD_OK;
}

static int not_prepare(mk_ctx *ctx)
{
    maskd_dtype t = mk_known_dtype(ctx, 0);
    return t == MASKD_UNDEFINED ? MASKD_OK : not_check_dtype(ctx, t);
}

static int not_infer(mk_ctx *ctx)
{
    int rc = mk_infer_same_as_input(ctx);
    return rc ? rc : not_check_dtype(ctx, ctx->in[0]->dtype);
}

typedef struct not_job {
    const uint8_t *x;
    uint8_t *y;
} not_job;

static void not_range(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const not_job *j = arg;
    for (int64_t i = begin; i < end; i++) j->y[i] = j->x[i] == 0;
}

static int not_run(mk_ctx *ctx)
{
    not_job j = {ctx->in[0]->data, ctx->out[0]->data};
    mk_parallel_for(ctx->pool, mk_numel(ctx->in[0]), GRAIN, not_range, &j);
    return MASKD_OK;
}

/* ---- Pow -------------------------------------------------------------------- */

static double load_f64(const void *p, int64_t i, maskd_dtype t)
{
    switch (t) {
    case MASKD_FLOAT: return ((const float *)p)[i];
    case MASKD_DOUBLE: return ((const double *)p)[i];
    case MASKD_INT8: return ((const int8_t *)p)[i];
    case MASKD_INT16: return ((const int16_t *)p)[i];
    case MASKD_INT32: return ((const int32_t *)p)[i];
    case MASKD_INT64: return (double)((const int64_t *)p)[i];
    case MASKD_UINT8: return ((const uint8_t *)p)[i];
    case MASKD_UINT16: return ((const uint16_t *)p)[i];
    case MASKD_UINT32: return ((const uint32_t *)p)[i];
    case MASKD_UINT64: return (double)((const uint64_t *)p)[i];
    default: return 0.0;
    }
}

/* Integer exponents of integer bases are exact (wrapping like the other
 * integer ops) instead of going through a double that loses low bits. */
static int64_t load_i64(const void *p, int64_t i, maskd_dtype t)
{
    switch (t) {
    case MASKD_INT8: return ((const int8_t *)p)[i];
    case MASKD_INT16: return ((const int16_t *)p)[i];
    case MASKD_INT32: return ((const int32_t *)p)[i];
    case MASKD_INT64: return ((const int64_t *)p)[i];
    case MASKD_UINT8: return ((const uint8_t *)p)[i];
    case MASKD_UINT16: return ((const uint16_t *)p)[i];
    case MASKD_UINT32: return ((const uint32_t *)p)[i];
    /* Exponents beyond INT64_MAX behave like huge ones. */
    case MASKD_UINT64: {
        uint64_t v = ((const uint64_t *)p)[i];
        return v > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v;
    }
    default: return 0;
    }
}

static int64_t ipow(int64_t base, int64_t e)
{
    if (e < 0) {
        /* Integer results of 1/base^|e|; base 0 would divide by zero. */
        if (base == 1) return 1;
        if (base == -1) return (e & 1) ? -1 : 1;
        return 0;
    }
    uint64_t result = 1, b = (uint64_t)base;
    while (e) {
        if (e & 1) result *= b;
        b *= b;
        e >>= 1;
    }
    return (int64_t)result;
}

/* Double to integer without the undefined behaviour of out-of-range casts. */
static int64_t saturate_i64(double v, int64_t lo, int64_t hi)
{
    if (v != v) return 0;
    if (v <= (double)lo) return lo;
    if (v >= (double)hi) return hi;
    return (int64_t)v;
}

typedef struct pow_types {
    maskd_dtype base, exponent;
} pow_types;

/* Any supported base with any exponent type; used off the float fast paths. */
static void pow_mixed_seg(void *out, const void *const in[], const int64_t step[],
                          int64_t n, const void *param)
{
    const pow_types *t = param;
    const bool int_exponent = mk_is_int_dtype(t->exponent);
    for (int64_t i = 0; i < n; i++) {
        int64_t ia = i * step[0], ib = i * step[1];
        switch (t->base) {
        case MASKD_FLOAT:
            ((float *)out)[i] = (float)pow(((const float *)in[0])[ia],
                                           load_f64(in[1], ib, t->exponent));
            break;
        case MASKD_DOUBLE:
            ((double *)out)[i] = pow(((const double *)in[0])[ia],
                                     load_f64(in[1], ib, t->exponent));
            break;
        case MASKD_INT32: {
            int32_t a = ((const int32_t *)in[0])[ia];
            ((int32_t *)out)[i] =
                int_exponent ? (int32_t)ipow(a, load_i64(in[1], ib, t->exponent))
                             : (int32_t)saturate_i64(pow(a, load_f64(in[1], ib, t->exponent)),
                                                     INT32_MIN, INT32_MAX);
            break;
        }
        case MASKD_INT64: {
            int64_t a = ((const int64_t *)in[0])[ia];
            ((int64_t *)out)[i] =
                int_exponent ? ipow(a, load_i64(in[1], ib, t->exponent))
                             : saturate_i64(pow((double)a, load_f64(in[1], ib, t->exponent)),
                                            INT64_MIN, INT64_MAX);
            break;
        }
        default:
            break; /* rejected by infer */
        }
    }
}

static inline float powf_op(float a, float b) { return powf(a, b); }
DEFINE_SEG(pow_f32_seg, float, float, powf_op)

/* Float base, one exponent for all: the exponents decompositions of
 * LayerNorm, GELU and friends use (2, 0.5, 3) avoid powf altogether. */
typedef struct pow_scalar_job {
    const float *x;
    float *y;
    float e;
} pow_scalar_job;

static void pow_scalar_range(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const pow_scalar_job *j = arg;
    const float *x = j->x;
    float *y = j->y;
    const float e = j->e;
    if (e == 2.0f)
        for (int64_t i = begin; i < end; i++) y[i] = x[i] * x[i];
    else if (e == 3.0f)
        for (int64_t i = begin; i < end; i++) y[i] = x[i] * x[i] * x[i];
    else if (e == 1.0f)
        for (int64_t i = begin; i < end; i++) y[i] = x[i];
    else if (e == 0.5f)
        for (int64_t i = begin; i < end; i++) y[i] = sqrtf(x[i]);
    else
        for (int64_t i = begin; i < end; i++) y[i] = powf(x[i], e);
}

static bool pow_base_ok(maskd_dtype t)
{
    return t == MASKD_FLOAT || t == MASKD_DOUBLE || t == MASKD_INT32 || t == MASKD_INT64;
}

static bool pow_exponent_ok(maskd_dtype t)
{
    return t == MASKD_FLOAT || t == MASKD_DOUBLE || mk_is_int_dtype(t);
}

static int pow_prepare(mk_ctx *ctx)
{
    for (int i = 0; i < 2; i++) {
        maskd_dtype t = mk_known_dtype(ctx, i);
        if (t != MASKD_UNDEFINED && !(i == 0 ? pow_base_ok : pow_exponent_ok)(t))
            return unsupported_dtype(ctx, t);
    }
    return MASKD_OK;
}

static int pow_infer(mk_ctx *ctx)
{
    int rc;
    if (ctx->n_in != 2)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "takes 2 inputs, has %d", ctx->n_in);
    if ((rc = need_io(ctx, 2))) return rc;
    maskd_dtype tb = ctx->in[0]->dtype, te = ctx->in[1]->dtype;
    if (!pow_base_ok(tb)) return unsupported_dtype(ctx, tb);
    if (!pow_exponent_ok(te)) return unsupported_dtype(ctx, te);
    if ((rc = infer_broadcast(ctx, 0))) return rc;
    ctx->out[0]->dtype = tb;
    return MASKD_OK;
}

static int pow_run(mk_ctx *ctx)
{
    const mk_tensor *x = ctx->in[0], *e = ctx->in[1];
    mk_tensor *y = ctx->out[0];
    if (x->dtype == MASKD_FLOAT && mk_numel(e) == 1) {
        /* One exponent: y has x's elements in x's order. */
        pow_scalar_job j = {x->data, y->data, (float)mk_get_f64(e, 0)};
        mk_parallel_for(ctx->pool, mk_numel(y), GRAIN, pow_scalar_range, &j);
        return MASKD_OK;
    }
    const mk_tensor *in[2] = {x, e};
    if (x->dtype == MASKD_FLOAT && e->dtype == MASKD_FLOAT) {
        run_broadcast(ctx, y, in, 2, pow_f32_seg, NULL, false);
    } else {
        pow_types t = {x->dtype, e->dtype};
        run_broadcast(ctx, y, in, 2, pow_mixed_seg, &t, false);
    }
    return MASKD_OK;
}

/* Opset 7 brought multidirectional broadcasting to the arithmetic and logic
 * ops (before it they had broadcast/axis attributes); later versions only
 * widened the element types, which the kernel tables cover. */
#define EW_ROW(type, since, fn)                                                \
    {.domain = "", .op_type = type, .since_version = since,                    \
     .prepare = fn##_prepare, .infer = fn##_infer, .run = fn##_run}
#define EW_ROW_ACT(type, since, fn)                                            \
    {.domain = "", .op_type = type, .since_version = since,                    \
     .prepare = fn##_prepare, .infer = fn##_infer, .run = fn##_run,         \
     .fuse_act = 1}

MK_OP_FAMILY(elementwise,
    EW_ROW_ACT("Add", 7, add),
    EW_ROW_ACT("Sub", 7, sub),
    EW_ROW_ACT("Mul", 7, mul),
    EW_ROW_ACT("Div", 7, div),
    EW_ROW("Pow", 7, pow),
    EW_ROW("Mod", 10, mod),
    EW_ROW("PRelu", 7, prelu),
    EW_ROW("Min", 6, min),
    EW_ROW("Max", 6, max),
    EW_ROW("Sum", 6, sum),
    EW_ROW("Mean", 6, mean),
    EW_ROW("Equal", 7, equal),
    EW_ROW("Greater", 7, greater),
    EW_ROW("Less", 7, less),
    EW_ROW("GreaterOrEqual", 12, greater_equal),
    EW_ROW("LessOrEqual", 12, less_equal),
    EW_ROW("And", 7, and),
    EW_ROW("Or", 7, or),
    EW_ROW("Xor", 7, xor),
    EW_ROW("Not", 1, not),
    EW_ROW("Where", 9, where));
