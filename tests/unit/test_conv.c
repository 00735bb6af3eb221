/*
 * Conv / ConvTranspose / Gemm / MatMul against plain reference loops on
 * random shapes, through the ops' own prepare/infer/run with a 2-thread pool.
 *
 * Shapes are drawn so that every algorithm of ops/conv.c runs (depthwise,
 * 1x1 sgemm, Winograd, im2col with tiles whose live taps differ, tiles wholly in
 * padding, several tiles and output-channel chunks), with weights both as
 * initializers (packed at prepare) and as graph inputs (packed at run).
 * The reference accumulates in double; a result passes when its error is
 * within 1e-5 of the sum of the magnitudes of its terms.
 *
 *     test_conv [seed] [cases-per-kind]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../engine/mk.h"

#define TEST_RNG_SEED 0x9e3779b97f4a7c15ull
#include "test_random.h"

static int passed, failed;

/* ---- building a node by hand ---------------------------------------------- */

typedef struct attrs {
    mk_attr a[12];
    int64_t ints[12][8];
    int n;
} attrs;

static void add_ints(attrs *at, const char *name, const int64_t *v, int n)
{
    mk_attr *a = &at->a[at->n];
    memset(a, 0, sizeof *a);
    a->name = (char *)name;
    a->type = MK_ATTR_INTS;
    memcpy(at->ints[at->n], v, sizeof(int64_t) * (size_t)n);
    a->ints = at->ints[at->n];
    a->n = n;
    at->n++;
}
static void add_int(attrs *at, const char *name, int64_t v)
{
    mk_attr *a = &at->a[at->n++];
    memset(a, 0, sizeof *a);
    a->name = (char *)name;
    a->type = MK_ATTR_INT;
    a->i = v;
}
static void add_float(attrs *at, const char *name, float v)
{
    mk_attr *a = &at->a[at->n++];
    memset(a, 0, sizeof *a);
    a->name = (char *)name;
    a->type = MK_ATTR_FLOAT;
    a->f = v;
}
static void add_str(attrs *at, const char *name, const char *v)
{
    mk_attr *a = &at->a[at->n++];
    memset(a, 0, sizeof *a);
    a->name = (char *)name;
    a->type = MK_ATTR_STRING;
    a->s = (char *)v;
}

static mk_tensor tensor(maskd_dtype dt, int ndim, const int64_t *dims, void *data)
{
    mk_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = dt;
    t.ndim = ndim;
    for (int i = 0; i < ndim; i++) t.dims[i] = dims[i];
    t.data = data;
    return t;
}

/*
 * prepare (with W's data when w_const, as for an initializer; X's shape
 * unknown, as at load), infer, run.  infer_pool may differ from the run's
 * pool, to check run copes with a scratch reserved for fewer threads.
 */
static int run_op(const char *op_type, int opset, attrs *at, mk_node *node, mk_tensor **in,
                  int n_in, mk_tensor *out, bool prepare_with_w, mk_pool *infer_pool,
                  mk_pool *pool, mk_act act, float act_alpha, float act_beta, mk_error *err)
{
    const mk_op *op = mk_op_find("", op_type, opset);
    if (!op) return mk_fail(err, MASKD_ERR_UNSUPPORTED, "no row for %s-%d", op_type, opset);
    memset(node, 0, sizeof *node);
    node->name = (char *)"under_test";
    node->op_type = (char *)op_type;
    node->domain = (char *)"";
    node->opset = opset;
    node->n_inputs = n_in;
    node->n_outputs = 1;
    node->n_attrs = at->n;
    node->attrs = at->a;
    node->op = op;
    mk_ctx ctx;
    mk_tensor *outs[1] = {out};
    int rc = MASKD_OK;
    if (op->prepare) {
        mk_tensor load_in[4];
        mk_tensor *load_ptrs[4];
        for (int i = 0; i < n_in; i++) {
            load_ptrs[i] = in[i];
            if (!in[i]) continue;
            load_in[i] = *in[i];
            if (i == 0 || (i == 1 && !prepare_with_w)) {
                load_in[i].ndim = -1;
                load_in[i].data = NULL;
            }
            load_ptrs[i] = &load_in[i];
        }
        memset(&ctx, 0, sizeof ctx);
        ctx.node = node;
        ctx.n_in = n_in;
        ctx.n_out = 1;
        ctx.in = load_ptrs;
        ctx.out = outs;
        ctx.err = err;
        rc = op->prepare(&ctx);
        if (rc) return rc;
    }
    /* Fusion sets the activation after load, as the graph pass does. */
    node->act = act;
    node->act_alpha = act_alpha;
    node->act_beta = act_beta;
    memset(&ctx, 0, sizeof ctx);
    ctx.node = node;
    ctx.n_in = n_in;
    ctx.n_out = 1;
    ctx.in = in;
    ctx.out = outs;
    ctx.pool = infer_pool;
    ctx.err = err;
    rc = op->infer(&ctx);
    if (rc) return rc;
    size_t scratch_bytes = ctx.scratch_bytes;
    out->data = mk_aligned_alloc(mk_nbytes(out));
    /* Garbage, not zeros: run must not rely on zeroed outputs. */
    for (int64_t i = 0; i < mk_numel(out) && out->dtype == MASKD_FLOAT; i++)
        ((float *)out->data)[i] = NAN;
    ctx.pool = pool;
    ctx.scratch_bytes = scratch_bytes;
    ctx.scratch = scratch_bytes ? mk_aligned_alloc(scratch_bytes) : NULL;
    rc = op->run(&ctx);
    mk_aligned_free(ctx.scratch);
    return rc;
}

static void release(mk_node *node)
{
    if (node->op && node->op->release && node->state) node->op->release(node->state);
    node->state = NULL;
}

/* ---- comparing ----------------------------------------------------------- */

/* The activations' parameters in these tests: LeakyRelu's slope, Clip's
 * bounds (both of them inside the outputs' range), HardSigmoid's. */
static const float leaky_alpha = 0.1f, clip_lo = -0.3f, clip_hi = 0.4f, hsig_alpha = 0.2f,
                   hsig_beta = 0.5f;

static void act_params(mk_act act, float *alpha, float *beta)
{
    *alpha = act == MK_ACT_LEAKY_RELU ? leaky_alpha : act == MK_ACT_CLIP ? clip_lo
             : act == MK_ACT_HARD_SIGMOID ? hsig_alpha : 0.0f;
    *beta = act == MK_ACT_CLIP ? clip_hi : act == MK_ACT_HARD_SIGMOID ? hsig_beta : 0.0f;
}

static double clamp01(double v) { return v < 0 ? 0 : v > 1 ? 1 : v; }

static float ref_act(double v, mk_act act)
{
    switch (act) {
    case MK_ACT_RELU: return v > 0 ? (float)v : 0.0f;
    case MK_ACT_LEAKY_RELU: return v >= 0 ? (float)v : (float)(v * leaky_alpha);
    case MK_ACT_CLIP: return (float)(v < clip_lo ? clip_lo : v > clip_hi ? clip_hi : v);
    case MK_ACT_SIGMOID: return (float)(1.0 / (1.0 + exp(-v)));
    case MK_ACT_HARD_SIGMOID: return (float)clamp01(hsig_alpha * v + hsig_beta);
    case MK_ACT_HARD_SWISH: return (float)(v * clamp01(v / 6.0 + 0.5));
    case MK_ACT_SILU: return (float)(v / (1.0 + exp(-v)));
    case MK_ACT_TANH: return (float)tanh(v);
    case MK_ACT_ERF: return (float)erf(v);
    default: return (float)v;
    }
}

/* Any activation the graph fuses into a conv. */
static mk_act random_act(void)
{
    static const mk_act acts[] = {MK_ACT_NONE, MK_ACT_RELU, MK_ACT_CLIP, MK_ACT_LEAKY_RELU,
                                  MK_ACT_SIGMOID, MK_ACT_HARD_SIGMOID, MK_ACT_HARD_SWISH,
                                  MK_ACT_SILU, MK_ACT_TANH, MK_ACT_ERF};
    return acts[rng() % (sizeof acts / sizeof acts[0])];
}

/* got vs want, each want[i] having magnitude sum mag[i]. */
static bool compare(const char *what, const float *got, const double *want, const double *mag,
                    int64_t n, mk_act act)
{
    for (int64_t i = 0; i < n; i++) {
        double w = ref_act(want[i], act);
        double tol = 1e-5 * (mag[i] + 1.0);
        if (!(fabs((double)got[i] - w) <= tol)) {
            printf("FAIL %s: element %lld: got %.7g, want %.7g (tol %.3g)\n", what, (long long)i,
                   got[i], w, tol);
            return false;
        }
    }
    return true;
}

static void record(bool ok)
{
    if (ok) passed++;
    else failed++;
}

/* ---- Conv ---------------------------------------------------------------- */

typedef struct conv_case {
    bool transpose;
    int rank;
    int64_t n, c, m, group;            /* m: output channels */
    int64_t in[3], k[3], s[3], d[3];
    int64_t pads[6];
    int64_t out_pad[3], out_shape[3];
    bool has_pads, has_out_pad, has_out_shape, give_kernel_shape;
    const char *auto_pad;              /* NULL: attribute absent */
    bool bias, w_const;
    mk_act act;
    bool infer_without_pool;
} conv_case;

static const char *act_name(mk_act a)
{
    return a == MK_ACT_RELU ? "relu" : a == MK_ACT_LEAKY_RELU ? "leaky" : a == MK_ACT_CLIP ? "clip"
           : a == MK_ACT_SIGMOID ? "sigmoid" : a == MK_ACT_HARD_SIGMOID ? "hardsigmoid"
           : a == MK_ACT_HARD_SWISH ? "hardswish" : "none";
}

static void describe(const conv_case *cc, char *buf, size_t size)
{
    int o = snprintf(buf, size, "%s rank%d N%lld C%lld M%lld g%lld in", cc->transpose ? "ConvT" : "Conv",
                     cc->rank, (long long)cc->n, (long long)cc->c, (long long)cc->m,
                     (long long)cc->group);
    for (int i = 0; i < cc->rank; i++) o += snprintf(buf + o, size - (size_t)o, "%s%lld", i ? "x" : "", (long long)cc->in[i]);
    o += snprintf(buf + o, size - (size_t)o, " k");
    for (int i = 0; i < cc->rank; i++) o += snprintf(buf + o, size - (size_t)o, "%s%lld", i ? "x" : "", (long long)cc->k[i]);
    o += snprintf(buf + o, size - (size_t)o, " s");
    for (int i = 0; i < cc->rank; i++) o += snprintf(buf + o, size - (size_t)o, "%s%lld", i ? "x" : "", (long long)cc->s[i]);
    o += snprintf(buf + o, size - (size_t)o, " d");
    for (int i = 0; i < cc->rank; i++) o += snprintf(buf + o, size - (size_t)o, "%s%lld", i ? "x" : "", (long long)cc->d[i]);
    o += snprintf(buf + o, size - (size_t)o, " pads");
    for (int i = 0; i < 2 * cc->rank; i++) o += snprintf(buf + o, size - (size_t)o, "%s%lld", i ? "," : "", (long long)cc->pads[i]);
    snprintf(buf + o, size - (size_t)o, " auto_pad %s bias %d wconst %d act %s", cc->auto_pad ? cc->auto_pad : "-",
             cc->bias, cc->w_const, act_name(cc->act));
}

/* Output sizes and begin pads, computed here independently of ops/conv.c. */
static void conv_geometry(const conv_case *cc, int64_t *out, int64_t *pb)
{
    for (int i = 0; i < cc->rank; i++) {
        const int64_t eff = (cc->k[i] - 1) * cc->d[i] + 1, in = cc->in[i], s = cc->s[i];
        const char *ap = cc->auto_pad ? cc->auto_pad : "NOTSET";
        if (!cc->transpose) {
            if (!strcmp(ap, "NOTSET")) {
                pb[i] = cc->pads[i];
                out[i] = (in + cc->pads[i] + cc->pads[i + cc->rank] - eff) / s + 1;
            } else if (!strcmp(ap, "VALID")) {
                pb[i] = 0;
                out[i] = (in - eff) / s + 1;
            } else {
                out[i] = (in + s - 1) / s;
                int64_t total = (out[i] - 1) * s + eff - in;
                if (total < 0) total = 0;
                pb[i] = !strcmp(ap, "SAME_UPPER") ? total / 2 : (total + 1) / 2;
            }
        } else {
            const int64_t full = s * (in - 1) + (cc->has_out_pad ? cc->out_pad[i] : 0) + eff;
            int64_t target = -1;
            if (cc->has_out_shape) target = cc->out_shape[i];
            else if (!strcmp(ap, "SAME_UPPER") || !strcmp(ap, "SAME_LOWER")) target = in * s;
            if (target >= 0) {
                int64_t total = full - target;
                pb[i] = total <= 0 ? 0 : !strcmp(ap, "SAME_UPPER") ? total / 2 : (total + 1) / 2;
                out[i] = target;
            } else {
                pb[i] = !strcmp(ap, "NOTSET") ? cc->pads[i] : 0;
                int64_t pe = !strcmp(ap, "NOTSET") ? cc->pads[i + cc->rank] : 0;
                out[i] = full - pb[i] - pe;
            }
        }
    }
}

static void run_conv_case(const conv_case *cc, mk_pool *pool)
{
    char desc[512];
    describe(cc, desc, sizeof desc);
    const int rank = cc->rank;
    int64_t out_sp[3], pb[3];
    conv_geometry(cc, out_sp, pb);

    int64_t xd[5] = {cc->n, cc->c}, wd[5], yd[5] = {cc->n, cc->m};
    const int64_t cin_g = cc->c / cc->group, cout_g = cc->m / cc->group;
    if (!cc->transpose) {
        wd[0] = cc->m;
        wd[1] = cin_g;
    } else {
        wd[0] = cc->c;
        wd[1] = cout_g;
    }
    int64_t in_size = 1, out_size = 1, taps = 1;
    for (int i = 0; i < rank; i++) {
        xd[2 + i] = cc->in[i];
        wd[2 + i] = cc->k[i];
        yd[2 + i] = out_sp[i];
        in_size *= cc->in[i];
        out_size *= out_sp[i];
        taps *= cc->k[i];
    }
    mk_tensor x = tensor(MASKD_FLOAT, rank + 2, xd, random_floats(cc->n * cc->c * in_size));
    mk_tensor w = tensor(MASKD_FLOAT, rank + 2, wd, random_floats(wd[0] * wd[1] * taps));
    int64_t bd[1] = {cc->m};
    mk_tensor b = tensor(MASKD_FLOAT, 1, bd, random_floats(cc->m));
    mk_tensor y;
    memset(&y, 0, sizeof y);
    mk_tensor *ins[3] = {&x, &w, cc->bias ? &b : NULL};

    attrs at = {.n = 0};
    int64_t pads[6], kshape[3], strides[3], dil[3];
    for (int i = 0; i < rank; i++) {
        kshape[i] = cc->k[i];
        strides[i] = cc->s[i];
        dil[i] = cc->d[i];
        pads[i] = cc->pads[i];
        pads[i + rank] = cc->pads[i + rank];
    }
    if (cc->give_kernel_shape) add_ints(&at, "kernel_shape", kshape, rank);
    add_ints(&at, "strides", strides, rank);
    add_ints(&at, "dilations", dil, rank);
    if (cc->has_pads) add_ints(&at, "pads", pads, 2 * rank);
    if (cc->auto_pad) add_str(&at, "auto_pad", cc->auto_pad);
    if (cc->group != 1 || rng() % 2) add_int(&at, "group", cc->group);
    if (cc->has_out_pad) add_ints(&at, "output_padding", cc->out_pad, rank);
    if (cc->has_out_shape) add_ints(&at, "output_shape", cc->out_shape, rank);

    mk_node node;
    mk_error err = {0};
    float act_alpha, act_beta;
    act_params(cc->act, &act_alpha, &act_beta);
    int rc = run_op(cc->transpose ? "ConvTranspose" : "Conv", 13, &at, &node, ins,
                    cc->bias ? 3 : 2, &y, cc->w_const, cc->infer_without_pool ? NULL : pool,
                    pool, cc->act, act_alpha, act_beta, &err);
    if (rc) {
        printf("FAIL %s: error %d: %s\n", desc, rc, err.message);
        record(false);
        goto done;
    }
    bool ok = y.ndim == rank + 2;
    for (int i = 0; ok && i < rank + 2; i++) ok = y.dims[i] == yd[i];
    if (!ok) {
        char s[96];
        printf("FAIL %s: output shape %s\n", desc, mk_shape_str(&y, s, sizeof s));
        record(false);
        goto done;
    }

    {
        const int64_t total = cc->n * cc->m * out_size;
        double *want = calloc((size_t)(total > 0 ? total : 1), sizeof *want);
        double *mag = calloc((size_t)(total > 0 ? total : 1), sizeof *mag);
        /* Normalize to three spatial dims, as the kernels do. */
        int64_t I[3] = {1, 1, 1}, O[3] = {1, 1, 1}, K[3] = {1, 1, 1}, S[3] = {1, 1, 1},
                D[3] = {1, 1, 1}, P[3] = {0, 0, 0};
        for (int i = 0; i < rank; i++) {
            I[3 - rank + i] = cc->in[i];
            O[3 - rank + i] = out_sp[i];
            K[3 - rank + i] = cc->k[i];
            S[3 - rank + i] = cc->s[i];
            D[3 - rank + i] = cc->d[i];
            P[3 - rank + i] = pb[i];
        }
        const float *X = x.data, *W = w.data, *B = cc->bias ? b.data : NULL;
        for (int64_t n = 0; n < cc->n; n++)
            for (int64_t oc = 0; oc < cc->m; oc++)
                for (int64_t p = 0; p < out_size; p++) {
                    want[(n * cc->m + oc) * out_size + p] = B ? B[oc] : 0.0;
                    mag[(n * cc->m + oc) * out_size + p] = B ? fabs(B[oc]) : 0.0;
                }
        if (!cc->transpose) {
            for (int64_t n = 0; n < cc->n; n++)
                for (int64_t oc = 0; oc < cc->m; oc++) {
                    const int64_t g = oc / cout_g;
                    for (int64_t od = 0; od < O[0]; od++)
                        for (int64_t oh = 0; oh < O[1]; oh++)
                            for (int64_t ow = 0; ow < O[2]; ow++) {
                                double acc = 0, am = 0;
                                for (int64_t ic = 0; ic < cin_g; ic++)
                                    for (int64_t kd = 0; kd < K[0]; kd++)
                                        for (int64_t kh = 0; kh < K[1]; kh++)
                                            for (int64_t kw = 0; kw < K[2]; kw++) {
                                                int64_t id = od * S[0] - P[0] + kd * D[0];
                                                int64_t ih = oh * S[1] - P[1] + kh * D[1];
                                                int64_t iw = ow * S[2] - P[2] + kw * D[2];
                                                if (id < 0 || id >= I[0] || ih < 0 || ih >= I[1] ||
                                                    iw < 0 || iw >= I[2])
                                                    continue;
                                                double xv = X[((n * cc->c + g * cin_g + ic) * I[0] + id) * I[1] * I[2] + ih * I[2] + iw];
                                                double wv = W[((oc * cin_g + ic) * K[0] + kd) * K[1] * K[2] + kh * K[2] + kw];
                                                acc += xv * wv;
                                                am += fabs(xv * wv);
                                            }
                                const int64_t at_ = (n * cc->m + oc) * out_size + (od * O[1] + oh) * O[2] + ow;
                                want[at_] += acc;
                                mag[at_] += am;
                            }
                }
        } else {
            for (int64_t n = 0; n < cc->n; n++)
                for (int64_t c = 0; c < cc->c; c++) {
                    const int64_t g = c / cin_g;
                    for (int64_t j = 0; j < cout_g; j++) {
                        const int64_t oc = g * cout_g + j;
                        for (int64_t id = 0; id < I[0]; id++)
                            for (int64_t ih = 0; ih < I[1]; ih++)
                                for (int64_t iw = 0; iw < I[2]; iw++) {
                                    double xv = X[((n * cc->c + c) * I[0] + id) * I[1] * I[2] + ih * I[2] + iw];
                                    for (int64_t kd = 0; kd < K[0]; kd++)
                                        for (int64_t kh = 0; kh < K[1]; kh++)
                                            for (int64_t kw = 0; kw < K[2]; kw++) {
                                                int64_t od = id * S[0] - P[0] + kd * D[0];
                                                int64_t oh = ih * S[1] - P[1] + kh * D[1];
                                                int64_t ow = iw * S[2] - P[2] + kw * D[2];
                                                if (od < 0 || od >= O[0] || oh < 0 || oh >= O[1] ||
                                                    ow < 0 || ow >= O[2])
                                                    continue;
                                                double wv = W[((c * cout_g + j) * K[0] + kd) * K[1] * K[2] + kh * K[2] + kw];
                                                const int64_t at_ = (n * cc->m + oc) * out_size + (od * O[1] + oh) * O[2] + ow;
                                                want[at_] += xv * wv;
                                                mag[at_] += fabs(xv * wv);
                                            }
                                }
                    }
                }
        }
        ok = compare(desc, y.data, want, mag, total, cc->act);
        record(ok);
        free(want);
        free(mag);
    }
done:
    release(&node);
    mk_aligned_free(y.data);
    free(x.data);
    free(w.data);
    free(b.data);
}

/* A random case; kind picks the algorithm it should reach. */
enum kind {
    K_IM2COL,
    K_POINTWISE,
    K_DEPTHWISE,
    K_DILATED_BIG_PAD,
    K_TILED,
    K_TRANSPOSE,
    K_WINOGRAD,
    K_KINDS
};
static const char *kind_names[K_KINDS] = {"im2col", "pointwise", "depthwise", "dilated+padding",
                                          "multi-tile", "transpose", "winograd"};

static conv_case random_case(enum kind kind)
{
    conv_case cc;
    memset(&cc, 0, sizeof cc);
    cc.rank = (int)(rng() % 5 == 0 ? 1 : rng() % 6 == 0 ? 3 : 2);
    cc.n = rnd(1, 2);
    cc.group = 1;
    cc.bias = rng() % 3 != 0;
    cc.w_const = rng() % 3 != 0;
    cc.give_kernel_shape = rng() % 2;
    cc.act = (mk_act)(rng() % 4 == 0 ? MK_ACT_RELU : rng() % 5 == 0 ? MK_ACT_LEAKY_RELU : MK_ACT_NONE);
    cc.infer_without_pool = rng() % 8 == 0;
    const int64_t max_in = cc.rank == 3 ? 7 : cc.rank == 2 ? 19 : 40;
    for (int i = 0; i < 3; i++) {
        cc.in[i] = rnd(1, max_in);
        cc.k[i] = rnd(1, cc.rank == 3 ? 3 : 5);
        cc.s[i] = rnd(1, 2);
        cc.d[i] = rnd(1, 3);
    }
    switch (kind) {
    case K_IM2COL:
        cc.group = rnd(1, 3);
        cc.c = cc.group * rnd(2, 6);
        cc.m = cc.group * rnd(1, 7);
        break;
    case K_POINTWISE:
        cc.group = rng() % 3 == 0 ? 2 : 1;
        cc.c = cc.group * rnd(2, 40);
        cc.m = cc.group * rnd(1, 40);
        for (int i = 0; i < 3; i++) cc.k[i] = cc.s[i] = 1, cc.d[i] = rnd(1, 3);
        for (int i = 0; i < 3; i++) cc.in[i] = rnd(1, cc.rank == 3 ? 9 : cc.rank == 2 ? 45 : 600);
        break;
    case K_DEPTHWISE:
        cc.act = random_act();
        cc.c = rnd(1, 12);
        cc.group = rng() % 6 == 0 ? 1 : cc.c; /* C = 1, group 1 is depthwise too */
        if (cc.group == 1) cc.c = 1;
        cc.m = cc.c * rnd(1, 3);
        for (int i = 0; i < 3; i++) {
            cc.d[i] = rnd(1, 6);
            if (rng() % 2) cc.k[i] = 3;
        }
        break;
    case K_DILATED_BIG_PAD:
        cc.group = rnd(1, 2);
        cc.c = cc.group * rnd(2, 8);
        cc.m = cc.group * rnd(1, 8);
        for (int i = 0; i < 3; i++) {
            cc.d[i] = rnd(1, 6);
            cc.k[i] = rnd(2, 3);
            cc.in[i] = rnd(1, cc.rank == 3 ? 6 : 16);
        }
        break;
    case K_TILED:
        /* Enough K rows and positions that tiles and channel chunks split. */
        cc.rank = 2;
        cc.n = 1;
        cc.group = rng() % 4 == 0 ? 2 : 1;
        cc.c = cc.group * rnd(16, 48);
        cc.m = cc.group * rnd(8, 64);
        for (int i = 0; i < 2; i++) {
            cc.in[i] = rnd(20, 48);
            cc.k[i] = 3;
            cc.d[i] = rnd(1, 12);
            cc.s[i] = rnd(1, 2);
        }
        break;
    case K_WINOGRAD:
        /* 3x3 stride 1 with enough channels and tiles for ops/conv.c to
         * pick Winograd when W is an initializer (kernels/winograd.c; its
         * own test covers every map size), pads up to the dilation. */
        cc.rank = 2;
        cc.c = rnd(16, 40);
        cc.m = rnd(16, 40);
        for (int i = 0; i < 2; i++) {
            cc.d[i] = rnd(1, 4);
            cc.k[i] = 3;
            cc.s[i] = 1;
            cc.in[i] = rnd(12, 20) * cc.d[i] / (cc.d[i] > 2 ? 2 : 1);
        }
        break;
    case K_TRANSPOSE:
        cc.transpose = true;
        cc.group = rnd(1, 2);
        cc.c = cc.group * rnd(1, 5);
        cc.m = cc.group * rnd(1, 5);
        cc.act = MK_ACT_NONE;
        for (int i = 0; i < 3; i++) {
            cc.in[i] = rnd(1, cc.rank == 3 ? 5 : cc.rank == 2 ? 9 : 20);
            cc.k[i] = rnd(1, 4);
            cc.s[i] = rnd(1, 3);
            cc.d[i] = rnd(1, 3);
        }
        break;
    default:
        break;
    }
    /* Rank-3 cases stay small: the reference loop is slow. */
    if (cc.rank == 3 && cc.c * cc.m > 64) {
        cc.c = cc.group = 1;
        cc.m = rnd(1, 4);
    }
    int r = (int)(rng() % 8);
    cc.auto_pad = kind == K_POINTWISE ? NULL
                  : r == 0            ? "SAME_UPPER"
                  : r == 1            ? "SAME_LOWER"
                  : r == 2            ? "VALID"
                  : r == 3            ? "NOTSET"
                                      : NULL;
    if (kind == K_TRANSPOSE) {
        cc.has_out_pad = rng() % 3 == 0;
        for (int i = 0; i < cc.rank; i++)
            cc.out_pad[i] = cc.has_out_pad ? rnd(0, cc.s[i] > cc.d[i] ? cc.s[i] - 1 : cc.d[i] - 1) : 0;
        cc.has_out_shape = rng() % 5 == 0;
        for (int i = 0; i < cc.rank; i++) {
            const int64_t full = cc.s[i] * (cc.in[i] - 1) + cc.out_pad[i] + (cc.k[i] - 1) * cc.d[i] + 1;
            cc.out_shape[i] = full - rnd(0, 2) + (rng() % 4 == 0); /* sometimes past full */
            if (cc.out_shape[i] < 1) cc.out_shape[i] = 1;
        }
        cc.has_pads = !cc.has_out_shape && (!cc.auto_pad || !strcmp(cc.auto_pad, "NOTSET"));
        for (int i = 0; i < cc.rank; i++) {
            const int64_t full = cc.s[i] * (cc.in[i] - 1) + cc.out_pad[i] + (cc.k[i] - 1) * cc.d[i] + 1;
            cc.pads[i] = cc.has_pads ? rnd(0, (full - 1) / 2) : 0;
            cc.pads[i + cc.rank] = cc.has_pads ? rnd(0, (full - 1) / 2) : 0;
        }
        return cc;
    }
    if (kind == K_POINTWISE) {
        cc.has_pads = rng() % 2;
        return cc;
    }
    /* Pads from none up to past the dilated kernel; the output must not be empty. */
    cc.has_pads = !cc.auto_pad || !strcmp(cc.auto_pad, "NOTSET");
    for (int i = 0; i < cc.rank; i++) {
        const int64_t eff = (cc.k[i] - 1) * cc.d[i] + 1;
        int64_t big = kind == K_DILATED_BIG_PAD || (kind != K_WINOGRAD && rng() % 4 == 0);
        for (int e = 0; e < 2; e++)
            cc.pads[i + e * cc.rank] =
                !cc.has_pads            ? 0
                : big                   ? rnd(0, eff + 3)
                : kind == K_WINOGRAD    ? rnd(0, cc.d[i])
                                        : rnd(0, cc.k[i] > 1 ? cc.k[i] - 1 : 1);
        if (cc.has_pads || (cc.auto_pad && !strcmp(cc.auto_pad, "VALID"))) {
            int64_t padded = cc.in[i] + cc.pads[i] + cc.pads[i + cc.rank];
            if (padded < eff) {
                if (cc.has_pads) cc.pads[i + cc.rank] += eff - padded;
                else cc.in[i] = eff;
            }
        }
    }
    return cc;
}

/* A bias or none, weights as an initializer or a graph input, any fused
 * activation; then the case runs. */
static void run_with_random_extras(conv_case *cc, mk_pool *pool)
{
    cc->bias = rng() % 3 != 0;
    cc->w_const = rng() % 3 != 0;
    cc->act = random_act();
    run_conv_case(cc, pool);
}

/* Depthwise rows wide enough for the vector kernels' blocks, single vectors
 * and masked remainders, for every kernel width and stride they specialize,
 * dilated, with padding from none to past the kernel.  Run at each dispatch
 * level (MASKD_CPU, see CMakeLists.txt). */
static void depthwise_wide_cases(mk_pool *pool)
{
    static const int64_t widths[] = {1, 7, 14, 16, 17, 31, 33, 64, 65, 97, 112, 130};
    int before = failed, count = 0;
    for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++)
        for (int64_t k = 3; k <= 7; k += 2)
            for (int64_t s = 1; s <= 3; s++)
                for (int64_t d = 1; d <= 3; d++) {
                    if ((k == 7 || s == 3) && d == 3) continue;
                    conv_case cc;
                    memset(&cc, 0, sizeof cc);
                    cc.rank = rng() % 4 == 0 ? 1 : 2;
                    cc.n = 1, cc.c = cc.group = rnd(1, 3), cc.m = cc.c * rnd(1, 2);
                    const int r = cc.rank - 1; /* the W dim */
                    cc.in[r] = widths[wi];
                    cc.k[r] = k, cc.s[r] = s, cc.d[r] = d;
                    if (cc.rank == 2) cc.in[0] = rnd(1, 6), cc.k[0] = k, cc.s[0] = s, cc.d[0] = d;
                    const int64_t eff = (k - 1) * d + 1;
                    cc.has_pads = true;
                    for (int i = 0; i < cc.rank; i++) {
                        const int choice = (int)(rng() % 4);
                        const int64_t half = eff / 2;
                        cc.pads[i] = choice == 0 ? 0 : choice == 3 ? rnd(0, eff + 2) : half;
                        cc.pads[i + cc.rank] = choice == 0 ? 0 : choice == 3 ? rnd(0, eff + 2) : half;
                        int64_t padded = cc.in[i] + cc.pads[i] + cc.pads[i + cc.rank];
                        if (padded < eff) cc.pads[i + cc.rank] += eff - padded;
                    }
                    run_with_random_extras(&cc, pool);
                    count++;
                }
    printf("%-16s %d cases, %d failed (cpu level %s)\n", "depthwise wide", count,
           failed - before, mk_isa_name(mk_cpu_level()));
}

/* Depthwise on square maps with "same" padding (the flat walk: vectors
 * spanning several rows, lane masks tabulated or, past the table, made per
 * vector) and their stride-2 halvings (the strided walk), batches of two,
 * one and two outputs per channel, every fused activation. */
static void depthwise_square_cases(mk_pool *pool)
{
    static const int64_t sizes[] = {1, 2, 3, 5, 7, 8, 14, 15, 16, 17, 28, 33, 40, 56, 130};
    int before = failed, count = 0;
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
        for (int64_t k = 2; k <= 5; k++)
            for (int64_t s = 1; s <= 2; s++) {
                conv_case cc;
                memset(&cc, 0, sizeof cc);
                cc.rank = 2;
                cc.n = sizes[si] > 60 ? 1 : rnd(1, 2);
                cc.c = cc.group = sizes[si] > 60 ? 2 : rnd(1, 6);
                cc.m = cc.c * (rng() % 4 == 0 ? 2 : 1);
                cc.in[0] = cc.in[1] = sizes[si];
                cc.k[0] = cc.k[1] = k;
                cc.s[0] = cc.s[1] = s;
                cc.d[0] = cc.d[1] = k > 3 ? rnd(1, 2) : rnd(1, 5);
                const int64_t eff = (k - 1) * cc.d[0] + 1;
                if (eff % 2 == 0) {
                    cc.auto_pad = rng() % 2 ? "SAME_UPPER" : "SAME_LOWER";
                } else {
                    cc.has_pads = true;
                    for (int i = 0; i < 4; i++) cc.pads[i] = eff / 2;
                }
                run_with_random_extras(&cc, pool);
                count++;
            }
    /* The banded rows (AVX-512): 3x3 undilated and dilated 2, 5x5, on maps
     * from one vector and a remainder wide to several. */
    static const int64_t band[][2] = {{3, 1}, {3, 2}, {5, 1}};
    static const int64_t band_sizes[] = {20, 24, 37, 64};
    for (size_t bi = 0; bi < sizeof band / sizeof band[0]; bi++)
        for (size_t si = 0; si < sizeof band_sizes / sizeof band_sizes[0]; si++) {
            conv_case cc;
            memset(&cc, 0, sizeof cc);
            cc.rank = 2, cc.n = 1, cc.c = cc.group = cc.m = rnd(1, 3);
            cc.in[0] = band_sizes[si] + rnd(0, 7), cc.in[1] = band_sizes[si];
            cc.k[0] = cc.k[1] = band[bi][0];
            cc.s[0] = cc.s[1] = 1;
            cc.d[0] = cc.d[1] = band[bi][1];
            cc.has_pads = true;
            for (int i = 0; i < 4; i++) cc.pads[i] = (band[bi][0] - 1) * band[bi][1] / 2;
            cc.bias = true;
            cc.w_const = true;
            cc.act = random_act();
            run_conv_case(&cc, pool);
            count++;
        }
    printf("%-16s %d cases, %d failed (cpu level %s)\n", "depthwise square", count,
           failed - before, mk_isa_name(mk_cpu_level()));
}

/* Depthwise on small maps (and dilated or strided on larger ones) with
 * sixteen channels or more: whole groups of sixteen planes interleaved by
 * channel (AVX-512) and the planes left over on the other walks; strides 1
 * and 2 (also mixed), dilated, padding from none to past the kernel,
 * batches of one and two, every fused activation. */
static void depthwise_grouped_cases(mk_pool *pool)
{
    static const int64_t sizes[] = {1, 2, 3, 5, 7, 8, 14, 15, 16, 20, 23, 28, 40, 56, 63};
    int before = failed, count = 0;
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
        for (int64_t k = 1; k <= 5; k += 2)
            for (int64_t s = 1; s <= 2; s++) {
                conv_case cc;
                memset(&cc, 0, sizeof cc);
                cc.rank = 2;
                cc.n = rnd(1, 2);
                cc.c = cc.group = cc.m = rng() % 3 == 0 ? 16 * rnd(1, 3) : rnd(16, 50);
                cc.in[0] = sizes[si] + (rng() % 3 == 0 ? rnd(0, 4) : 0);
                cc.in[1] = sizes[si];
                cc.k[0] = cc.k[1] = k;
                cc.s[0] = s, cc.s[1] = rng() % 4 == 0 ? 3 - s : s;
                cc.d[0] = cc.d[1] = rng() % 3 == 0 ? 2 : 1;
                /* Maps the band walk keeps when undilated: grouped dilated. */
                if (s == 1 && sizes[si] > 24) cc.d[0] = cc.d[1] = 3;
                const int64_t eff = (k - 1) * cc.d[0] + 1;
                cc.has_pads = true;
                for (int i = 0; i < 4; i++) {
                    const int choice = (int)(rng() % 4);
                    cc.pads[i] = choice == 0 ? 0 : choice == 3 ? rnd(0, eff + 1) : eff / 2;
                }
                for (int i = 0; i < 2; i++) {
                    const int64_t padded = cc.in[i] + cc.pads[i] + cc.pads[i + 2];
                    if (padded < eff) cc.pads[i + 2] += eff - padded;
                }
                run_with_random_extras(&cc, pool);
                count++;
            }
    printf("%-16s %d cases, %d failed (cpu level %s)\n", "depthwise groups", count,
           failed - before, mk_isa_name(mk_cpu_level()));
}

/* Stems: few input channels, stride 2 (kernels' mk_stem_conv_rows on
 * AVX-512), output channels across a block of 16 and a remainder, kernels
 * 1 to 7, dilated, any padding, every fused activation. */
static void stem_cases(mk_pool *pool)
{
    int before = failed, count = 0;
    for (int i = 0; i < 60; i++) {
        conv_case cc;
        memset(&cc, 0, sizeof cc);
        cc.rank = 2;
        cc.n = rnd(1, 2);
        cc.c = rnd(1, 4);
        cc.group = 1;
        cc.m = rng() % 3 == 0 ? 16 : rnd(1, 40);
        for (int d = 0; d < 2; d++) {
            cc.in[d] = rnd(1, 70);
            cc.k[d] = rnd(1, 7);
            cc.s[d] = 2;
            cc.d[d] = rng() % 4 == 0 ? 2 : 1;
        }
        cc.has_pads = true;
        for (int d = 0; d < 2; d++) {
            const int64_t eff = (cc.k[d] - 1) * cc.d[d] + 1;
            cc.pads[d] = rnd(0, eff - 1), cc.pads[d + 2] = rnd(0, eff - 1);
            const int64_t padded = cc.in[d] + cc.pads[d] + cc.pads[d + 2];
            if (padded < eff) cc.pads[d + 2] += eff - padded;
        }
        run_with_random_extras(&cc, pool);
        count++;
    }
    printf("%-16s %d cases, %d failed (cpu level %s)\n", "stem", count, failed - before,
           mk_isa_name(mk_cpu_level()));
}

/* Deterministic cases for the corners random draws may miss. */
static void fixed_conv_cases(mk_pool *pool)
{
    conv_case cc;
    /* ASPP-like: rate 36 on a small map, only the centre tap ever lands. */
    memset(&cc, 0, sizeof cc);
    cc.rank = 2, cc.n = 1, cc.c = 24, cc.m = 16, cc.group = 1;
    cc.in[0] = 12, cc.in[1] = 13;
    cc.k[0] = cc.k[1] = 3, cc.s[0] = cc.s[1] = 1, cc.d[0] = cc.d[1] = 36;
    for (int i = 0; i < 4; i++) cc.pads[i] = 36;
    cc.has_pads = true, cc.bias = true, cc.w_const = true, cc.act = MK_ACT_RELU;
    run_conv_case(&cc, pool);
    /* The same with rate 8: live taps differ from tile to tile. */
    cc.d[0] = cc.d[1] = 8;
    for (int i = 0; i < 4; i++) cc.pads[i] = 8;
    cc.in[0] = cc.in[1] = 24;
    cc.w_const = false;
    run_conv_case(&cc, pool);
    /* Depthwise atrous, padding past the map. */
    memset(&cc, 0, sizeof cc);
    cc.rank = 2, cc.n = 2, cc.c = 8, cc.m = 8, cc.group = 8;
    cc.in[0] = 9, cc.in[1] = 11;
    cc.k[0] = cc.k[1] = 3, cc.s[0] = cc.s[1] = 1, cc.d[0] = cc.d[1] = 12;
    for (int i = 0; i < 4; i++) cc.pads[i] = 12;
    cc.has_pads = true, cc.bias = true;
    run_conv_case(&cc, pool);
    /* The 2-thread splits of ResNet's shapes: Winograd sharing a span's V
     * (28x28: 49 tiles), Winograd in blocks of their own (56x56, batch 2:
     * 392 tiles) and a 1x1 conv split by positions first (14x14). */
    memset(&cc, 0, sizeof cc);
    cc.rank = 2, cc.n = 1, cc.c = 32, cc.m = 40, cc.group = 1;
    cc.in[0] = cc.in[1] = 28, cc.k[0] = cc.k[1] = 3;
    cc.s[0] = cc.s[1] = cc.d[0] = cc.d[1] = 1;
    for (int i = 0; i < 4; i++) cc.pads[i] = 1;
    cc.has_pads = true, cc.bias = true, cc.w_const = true, cc.act = MK_ACT_RELU;
    run_conv_case(&cc, pool);
    cc.n = 2, cc.c = 16, cc.m = 24, cc.in[0] = cc.in[1] = 56;
    run_conv_case(&cc, pool);
    memset(&cc, 0, sizeof cc);
    cc.rank = 2, cc.n = 1, cc.c = 96, cc.m = 64, cc.group = 1;
    cc.in[0] = cc.in[1] = 14, cc.k[0] = cc.k[1] = 1;
    cc.s[0] = cc.s[1] = cc.d[0] = cc.d[1] = 1;
    cc.bias = true, cc.w_const = true;
    run_conv_case(&cc, pool);
    /* Shared V with a batch of two (span by span per image), and with
     * several spans and output-channel chunks (512 input channels). */
    memset(&cc, 0, sizeof cc);
    cc.rank = 2, cc.n = 2, cc.c = 32, cc.m = 40, cc.group = 1;
    cc.in[0] = cc.in[1] = 28, cc.k[0] = cc.k[1] = 3;
    cc.s[0] = cc.s[1] = cc.d[0] = cc.d[1] = 1;
    for (int i = 0; i < 4; i++) cc.pads[i] = 1;
    cc.has_pads = true, cc.bias = true, cc.w_const = true;
    run_conv_case(&cc, pool);
    cc.n = 1, cc.c = 512, cc.m = 96;
    run_conv_case(&cc, pool);
    /* Stride-2 depthwise past 9 taps on the split rows (AVX-512): a 3x5
     * kernel at strides 1x2 and 3x2, and a 1-D 11-tap kernel. */
    memset(&cc, 0, sizeof cc);
    cc.rank = 2, cc.n = 1, cc.c = cc.m = cc.group = 5;
    cc.in[0] = 23, cc.in[1] = 70, cc.k[0] = 3, cc.k[1] = 5;
    cc.s[0] = 1, cc.s[1] = 2, cc.d[0] = 1, cc.d[1] = 2;
    cc.pads[0] = cc.pads[2] = 1, cc.pads[1] = cc.pads[3] = 4;
    cc.has_pads = true, cc.bias = true, cc.w_const = true, cc.act = MK_ACT_RELU;
    run_conv_case(&cc, pool);
    cc.s[0] = 3;
    run_conv_case(&cc, pool);
    memset(&cc, 0, sizeof cc);
    cc.rank = 1, cc.n = 2, cc.c = cc.m = cc.group = 3;
    cc.in[0] = 61, cc.k[0] = 11, cc.s[0] = 2, cc.d[0] = 1;
    cc.pads[0] = 5, cc.pads[1] = 5;
    cc.has_pads = true, cc.bias = true;
    run_conv_case(&cc, pool);
    /* Empty batch. */
    memset(&cc, 0, sizeof cc);
    cc.rank = 2, cc.n = 0, cc.c = 4, cc.m = 4, cc.group = 1;
    cc.in[0] = cc.in[1] = 5, cc.k[0] = cc.k[1] = 3;
    cc.s[0] = cc.s[1] = cc.d[0] = cc.d[1] = 1;
    run_conv_case(&cc, pool);
    /* Big pads on every side: whole tiles wholly in padding. */
    memset(&cc, 0, sizeof cc);
    cc.rank = 2, cc.n = 1, cc.c = 6, cc.m = 5, cc.group = 1;
    cc.in[0] = 3, cc.in[1] = 4, cc.k[0] = cc.k[1] = 2;
    cc.s[0] = cc.s[1] = cc.d[0] = cc.d[1] = 1;
    for (int i = 0; i < 4; i++) cc.pads[i] = 30;
    cc.has_pads = true, cc.bias = true, cc.w_const = true;
    run_conv_case(&cc, pool);
    /* ConvTranspose with enough rows per chunk that the input splits in tiles. */
    memset(&cc, 0, sizeof cc);
    cc.transpose = true;
    cc.rank = 2, cc.n = 1, cc.c = 4, cc.m = 64, cc.group = 1;
    cc.in[0] = cc.in[1] = 64, cc.k[0] = cc.k[1] = 3;
    cc.s[0] = cc.s[1] = 1, cc.d[0] = 1, cc.d[1] = 2;
    for (int i = 0; i < 4; i++) cc.pads[i] = 1;
    cc.has_pads = true, cc.bias = true, cc.act = MK_ACT_RELU;
    run_conv_case(&cc, pool);
    /* A mask head: 3x3 convs on 14x14 ROIs (no im2col: the padded window),
     * then a 2x2 stride-2 ConvTranspose whose taps tile the output (stored,
     * not added), with Relu in the store or Leaky Relu after it. */
    for (int leaky = 0; leaky < 2; leaky++) {
        memset(&cc, 0, sizeof cc);
        cc.rank = 2, cc.n = 3, cc.c = 64, cc.m = 32, cc.group = 1;
        cc.in[0] = cc.in[1] = 14, cc.k[0] = cc.k[1] = 3;
        cc.s[0] = cc.s[1] = cc.d[0] = cc.d[1] = 1;
        for (int i = 0; i < 4; i++) cc.pads[i] = 1;
        cc.has_pads = true, cc.bias = true, cc.w_const = !leaky;
        cc.act = leaky ? MK_ACT_LEAKY_RELU : MK_ACT_RELU;
        run_conv_case(&cc, pool);
        cc.transpose = true;
        cc.c = 32;
        cc.k[0] = cc.k[1] = cc.s[0] = cc.s[1] = 2;
        for (int i = 0; i < 4; i++) cc.pads[i] = 0;
        run_conv_case(&cc, pool);
    }
    /* Taps that tile the output, input tiles ending mid-row. */
    memset(&cc, 0, sizeof cc);
    cc.transpose = true;
    cc.rank = 2, cc.n = 1, cc.c = 4, cc.m = 64, cc.group = 1;
    cc.in[0] = 37, cc.in[1] = 41, cc.k[0] = cc.k[1] = cc.s[0] = cc.s[1] = 3;
    cc.d[0] = cc.d[1] = 1;
    cc.bias = true, cc.w_const = true;
    run_conv_case(&cc, pool);
    /* Padded windows with dilation and uneven pads, tiles of a few rows. */
    memset(&cc, 0, sizeof cc);
    cc.rank = 2, cc.n = 1, cc.c = 3, cc.m = 5, cc.group = 1;
    cc.in[0] = 23, cc.in[1] = 9, cc.k[0] = 3, cc.k[1] = 2;
    cc.s[0] = cc.s[1] = 1, cc.d[0] = 2, cc.d[1] = 3;
    cc.pads[0] = 0, cc.pads[1] = 4, cc.pads[2] = 3, cc.pads[3] = 1;
    cc.has_pads = true, cc.bias = true, cc.w_const = true;
    run_conv_case(&cc, pool);
}

/* ---- Gemm / MatMul ------------------------------------------------------- */

/* B as an initializer (packed at load) when b_const, else as a graph input;
 * act is fused as the graph pass would (Relu: in the sgemm's store, Leaky
 * Relu: after it). */
static void run_gemm_case(mk_pool *pool, int64_t M, int64_t N, int64_t K, bool ta, bool tb,
                          int c_kind, float alpha, float beta, bool b_const, mk_act act)
{
    char desc[200];
    snprintf(desc, sizeof desc, "Gemm M%lld N%lld K%lld tA%d tB%d C%d alpha %g beta %g B %s %s",
             (long long)M, (long long)N, (long long)K, ta, tb, c_kind, alpha, beta,
             b_const ? "initializer" : "input", act_name(act));
    int64_t ad[2] = {ta ? K : M, ta ? M : K}, bd[2] = {tb ? N : K, tb ? K : N};
    mk_tensor a = tensor(MASKD_FLOAT, 2, ad, random_floats(M * K));
    mk_tensor b = tensor(MASKD_FLOAT, 2, bd, random_floats(K * N));
    /* C: 0 none, 1 scalar, 2 [N], 3 [1,N], 4 [M,1], 5 [M,N] */
    int64_t cd[2] = {0, 0};
    int c_ndim = 0;
    int64_t crs = 0, ccs = 0;
    switch (c_kind) {
    case 2: c_ndim = 1, cd[0] = N, ccs = 1; break;
    case 3: c_ndim = 2, cd[0] = 1, cd[1] = N, ccs = 1; break;
    case 4: c_ndim = 2, cd[0] = M, cd[1] = 1, crs = 1; break;
    case 5: c_ndim = 2, cd[0] = M, cd[1] = N, crs = N, ccs = 1; break;
    default: break;
    }
    mk_tensor c = tensor(MASKD_FLOAT, c_ndim, cd, random_floats(M * N + 1));
    mk_tensor *ins[3] = {&a, &b, c_kind ? &c : NULL};
    attrs at = {.n = 0};
    if (ta) add_int(&at, "transA", 1);
    if (tb) add_int(&at, "transB", 1);
    add_float(&at, "alpha", alpha);
    add_float(&at, "beta", beta);
    mk_tensor y;
    memset(&y, 0, sizeof y);
    mk_node node;
    mk_error err = {0};
    float act_alpha, act_beta;
    act_params(act, &act_alpha, &act_beta);
    int rc = run_op("Gemm", 13, &at, &node, ins, c_kind ? 3 : 2, &y, b_const, pool, pool, act,
                    act_alpha, act_beta, &err);
    if (rc) {
        printf("FAIL %s: error %d: %s\n", desc, rc, err.message);
        record(false);
    } else {
        double *want = calloc((size_t)(M * N + 1), sizeof *want);
        double *mag = calloc((size_t)(M * N + 1), sizeof *mag);
        const float *A = a.data, *B = b.data, *C = c.data;
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double acc = 0, am = 0;
                for (int64_t k = 0; k < K; k++) {
                    double av = ta ? A[k * M + i] : A[i * K + k];
                    double bv = tb ? B[j * K + k] : B[k * N + j];
                    acc += av * bv;
                    am += fabs(av * bv);
                }
                double cv = c_kind ? C[i * crs + j * ccs] : 0.0;
                want[i * N + j] = alpha * acc + beta * cv;
                mag[i * N + j] = fabs(alpha) * am + fabs(beta * cv);
            }
        bool ok = y.ndim == 2 && y.dims[0] == M && y.dims[1] == N;
        if (!ok) printf("FAIL %s: output shape\n", desc);
        record(ok && compare(desc, y.data, want, mag, M * N, act));
        free(want);
        free(mag);
    }
    release(&node);
    mk_aligned_free(y.data);
    free(a.data);
    free(b.data);
    free(c.data);
}

static void run_matmul_case(mk_pool *pool, int an, const int64_t *adims, int bn,
                            const int64_t *bdims, bool b_const)
{
    char desc[200], as[96], bs[96];
    mk_tensor a = tensor(MASKD_FLOAT, an, adims, NULL), b = tensor(MASKD_FLOAT, bn, bdims, NULL);
    snprintf(desc, sizeof desc, "MatMul %s x %s, B %s", mk_shape_str(&a, as, sizeof as),
             mk_shape_str(&b, bs, sizeof bs), b_const ? "initializer" : "input");
    a.data = random_floats(mk_numel(&a));
    b.data = random_floats(mk_numel(&b));
    mk_tensor *ins[2] = {&a, &b};
    attrs at = {.n = 0};
    mk_tensor y;
    memset(&y, 0, sizeof y);
    mk_node node;
    mk_error err = {0};
    int rc = run_op("MatMul", 13, &at, &node, ins, 2, &y, b_const, pool, pool, MK_ACT_NONE, 0, 0,
                    &err);
    if (rc) {
        printf("FAIL %s: error %d: %s\n", desc, rc, err.message);
        record(false);
        goto done;
    }
    {
        /* Reference through explicit numpy rules: pad to equal rank. */
        const int64_t M = an >= 2 ? adims[an - 2] : 1, K = adims[an - 1];
        const int64_t N = bn >= 2 ? bdims[bn - 1] : 1;
        int anb = an > 2 ? an - 2 : 0, bnb = bn > 2 ? bn - 2 : 0;
        int nb = anb > bnb ? anb : bnb;
        int64_t obd[8], batch = 1;
        for (int i = 0; i < nb; i++) {
            int ai = i - (nb - anb), bi = i - (nb - bnb);
            int64_t ad_ = ai >= 0 ? adims[ai] : 1, bd_ = bi >= 0 ? bdims[bi] : 1;
            obd[i] = ad_ == 1 ? bd_ : ad_;
            batch *= obd[i];
        }
        double *want = calloc((size_t)(batch * M * N + 1), sizeof *want);
        double *mag = calloc((size_t)(batch * M * N + 1), sizeof *mag);
        for (int64_t bi = 0; bi < batch; bi++) {
            int64_t rest = bi, aoff = 0, boff = 0, astep = M * K, bstep = K * N;
            for (int i = nb - 1; i >= 0; i--) {
                int64_t idx = rest % obd[i];
                rest /= obd[i];
                int ai = i - (nb - anb), bi2 = i - (nb - bnb);
                int64_t ad_ = ai >= 0 ? adims[ai] : 1, bd_ = bi2 >= 0 ? bdims[bi2] : 1;
                aoff += (ad_ == 1 ? 0 : idx) * astep;
                boff += (bd_ == 1 ? 0 : idx) * bstep;
                astep *= ad_;
                bstep *= bd_;
            }
            const float *A = (const float *)a.data + aoff, *B = (const float *)b.data + boff;
            for (int64_t i = 0; i < M; i++)
                for (int64_t j = 0; j < N; j++) {
                    double acc = 0, am = 0;
                    for (int64_t k = 0; k < K; k++) {
                        acc += (double)A[i * K + k] * B[k * N + j];
                        am += fabs((double)A[i * K + k] * B[k * N + j]);
                    }
                    want[(bi * M + i) * N + j] = acc;
                    mag[(bi * M + i) * N + j] = am;
                }
        }
        int ondim = nb + (an >= 2) + (bn >= 2);
        bool ok = y.ndim == ondim && mk_numel(&y) == batch * M * N;
        for (int i = 0; ok && i < nb; i++) ok = y.dims[i] == obd[i];
        if (!ok) printf("FAIL %s: output shape\n", desc);
        record(ok && compare(desc, y.data, want, mag, batch * M * N, MK_ACT_NONE));
        free(want);
        free(mag);
    }
done:
    release(&node);
    mk_aligned_free(y.data);
    free(a.data);
    free(b.data);
}

/* Integer MatMul wraps like numpy; values here stay small enough not to. */
static void run_int_matmul_case(mk_pool *pool, maskd_dtype dt)
{
    const int64_t ad[3] = {2, 3, 40}, bd[2] = {40, 70};
    const int64_t M = 3, K = 40, N = 70;
    mk_tensor a = tensor(dt, 3, ad, NULL), b = tensor(dt, 2, bd, NULL), y;
    const size_t es = dt == MASKD_INT32 ? 4 : 8;
    a.data = malloc((size_t)(2 * M * K) * es);
    b.data = malloc((size_t)(K * N) * es);
    for (int64_t i = 0; i < 2 * M * K; i++) {
        int64_t v = rnd(-1000, 1000);
        if (dt == MASKD_INT32) ((int32_t *)a.data)[i] = (int32_t)v;
        else ((int64_t *)a.data)[i] = v * 100000;
    }
    for (int64_t i = 0; i < K * N; i++) {
        int64_t v = rnd(-1000, 1000);
        if (dt == MASKD_INT32) ((int32_t *)b.data)[i] = (int32_t)v;
        else ((int64_t *)b.data)[i] = v;
    }
    memset(&y, 0, sizeof y);
    mk_tensor *ins[2] = {&a, &b};
    attrs at = {.n = 0};
    mk_node node;
    mk_error err = {0};
    int rc = run_op("MatMul", 13, &at, &node, ins, 2, &y, true, pool, pool, MK_ACT_NONE, 0, 0, &err);
    bool ok = rc == MASKD_OK && y.dtype == dt && y.ndim == 3 && y.dims[0] == 2 &&
              y.dims[1] == M && y.dims[2] == N;
    for (int64_t bi = 0; ok && bi < 2; bi++)
        for (int64_t i = 0; ok && i < M; i++)
            for (int64_t j = 0; ok && j < N; j++) {
                int64_t acc = 0, got;
                for (int64_t k = 0; k < K; k++) {
                    int64_t av = dt == MASKD_INT32 ? ((int32_t *)a.data)[(bi * M + i) * K + k]
                                                   : ((int64_t *)a.data)[(bi * M + i) * K + k];
                    int64_t bv = dt == MASKD_INT32 ? ((int32_t *)b.data)[k * N + j]
                                                   : ((int64_t *)b.data)[k * N + j];
                    acc += av * bv;
                }
                got = dt == MASKD_INT32 ? ((int32_t *)y.data)[(bi * M + i) * N + j]
                                        : ((int64_t *)y.data)[(bi * M + i) * N + j];
                ok = got == acc;
            }
    if (!ok) printf("FAIL MatMul %s: rc %d %s\n", maskd_dtype_name(dt), rc, err.message);
    record(ok);
    release(&node);
    mk_aligned_free(y.data);
    free(a.data);
    free(b.data);
}

static void gemm_cases(mk_pool *pool, int count)
{
    run_int_matmul_case(pool, MASKD_INT32);
    run_int_matmul_case(pool, MASKD_INT64);
    for (int i = 0; i < count; i++) {
        bool big = rng() % 3 == 0;
        int64_t M = big ? rnd(64, 300) : rnd(1, 20), N = big ? rnd(64, 300) : rnd(1, 20);
        int64_t K = big ? rnd(16, 200) : rnd(1, 20);
        const mk_act acts[3] = {MK_ACT_NONE, MK_ACT_RELU, MK_ACT_LEAKY_RELU};
        run_gemm_case(pool, M, N, K, rng() % 2, rng() % 2, (int)(rng() % 6),
                      rng() % 2 ? 1.0f : 0.5f, rng() % 3 ? 1.0f : -2.0f, rng() % 4 != 0,
                      acts[rng() % 3]);
    }
    /* One row or one column: Y and Y^T share their layout (no transposes);
     * a detector's box head (100 ROIs x 3136 -> 256, K past the sgemm's
     * block). */
    const int64_t edge[][3] = {{1, 1000, 300}, {1, 5, 7}, {37, 1, 50}, {100, 256, 700}};
    for (int i = 0; i < 4; i++)
        for (int c_kind = 0; c_kind < 6; c_kind += 2)
            run_gemm_case(pool, edge[i][0], edge[i][1], edge[i][2], i == 2, i != 1, c_kind + 1,
                          1.0f, c_kind == 4 ? 0.5f : 1.0f, true, i == 3 ? MK_ACT_RELU : MK_ACT_NONE);
    /* One row (the sgemv path), split into column blocks when big. */
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            run_gemm_case(pool, 1, rnd(1, 700), rnd(1, 400), ta, tb, (int)(rng() % 6),
                          rng() % 2 ? 1.0f : 0.5f, rng() % 3 ? 1.0f : -2.0f, true, MK_ACT_NONE);
    const int64_t s[][2][5] = {
        {{3, 4}, {4, 5}}, {{7}, {7, 3}}, {{2, 3, 7}, {7}}, {{5}, {5}},
        {{2, 1, 3, 4}, {5, 4, 6}}, {{4, 300, 64}, {64, 96}}, {{1, 96, 40}, {6, 40, 200}},
        {{3, 2, 17, 9}, {3, 2, 9, 33}}, {{7}, {3, 7, 5}}, {{2, 3, 150, 80}, {1, 80, 90}},
    };
    const int nd[][2] = {{2, 2}, {1, 2}, {3, 1}, {1, 1}, {4, 3}, {3, 2}, {3, 3}, {4, 4}, {1, 3}, {4, 3}};
    for (size_t i = 0; i < sizeof nd / sizeof nd[0]; i++)
        for (int b_const = 0; b_const < 2; b_const++)
            run_matmul_case(pool, nd[i][0], s[i][0], nd[i][1], s[i][1], b_const);
}

int main(int argc, char **argv)
{
    if (argc > 1) rng_state = strtoull(argv[1], NULL, 0) | 1;
    int per_kind = argc > 2 ? atoi(argv[2]) : 40;
    mk_pool *pool = NULL;
    mk_error err = {0};
    if (maskd_pool_create(2, &pool, &err)) {
        printf("pool: %s\n", err.message);
        return 1;
    }
    fixed_conv_cases(pool);
    depthwise_wide_cases(pool);
    depthwise_square_cases(pool);
    depthwise_grouped_cases(pool);
    stem_cases(pool);
    for (int kind = 0; kind < K_KINDS; kind++) {
        int before = failed;
        for (int i = 0; i < per_kind; i++) {
            conv_case cc = random_case((enum kind)kind);
            run_conv_case(&cc, pool);
        }
        printf("%-16s %d cases, %d failed\n", kind_names[kind], per_kind, failed - before);
    }
    gemm_cases(pool, per_kind);
    maskd_pool_free(pool);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
