/*
 * Normalization operators, inference only: BatchNormalization (with given
 * statistics), InstanceNormalization, LayerNormalization and
 * GroupNormalization (with statistics computed from the input).
 *
 * All four reduce to "planes": contiguous runs of elements that share one
 * mean and one variance (a channel of one image, a group of channels, a row
 * of a LayerNorm) and are then scaled and shifted.  Work is split over planes;
 * when planes are small, a chunk takes enough of them to amortize the
 * scheduling.
 *
 * Statistics are accumulated in double and in two passes (mean, then the
 * mean of squared deviations): single-pass E[x^2]-E[x]^2 loses everything
 * when the mean is large against the spread, as it is for unnormalized
 * image data.
 *
 * GroupNormalization: opset 18 defines scale and bias per group (shape
 * [num_groups]); opset 21 redefined them per channel (shape [C]) and added
 * stash_type.  Both rows are served.  At opsets 18-20 a scale/bias with C
 * elements (C != num_groups) is invalid ONNX but is what exporters that
 * followed PyTorch's GroupNorm wrote; we apply it per channel rather than
 * refuse the model.
 */
#include <math.h>
#include <string.h>

#include "common.h"

/* Elements per parallel chunk. */
enum { GRAIN = 16384 };

static int64_t plane_grain(int64_t plane_size)
{
    return plane_size >= GRAIN ? 1 : GRAIN / (plane_size > 0 ? plane_size : 1);
}

/* Sums run in float lanes within blocks, each lane adding BLOCK / LANES
 * values, and in double across blocks and lanes: the lanes vectorize at every
 * ISA level (a running double sum is a serial chain of dependent adds, and
 * double lanes are half as wide), while no float sum grows long enough to
 * lose the small terms of a large plane. */
enum { LANES = 16, BLOCK = 256 };

/* The sum of x[0..n) - c, or (square) of its squares. */
static inline double deviation_sum(const float *x, int64_t n, float c, bool square)
{
    double total = 0.0;
    int64_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK) {
        float lane[LANES] = {0};
        for (int j = 0; j < BLOCK; j += LANES)
            for (int k = 0; k < LANES; k++) {
                float d = x[i + j + k] - c;
                lane[k] += square ? d * d : d;
            }
        for (int k = 0; k < LANES; k++) total += lane[k];
    }
    for (; i < n; i++) {
        double d = (double)x[i] - c;
        total += square ? d * d : d;
    }
    return total;
}

/* Mean and 1/sqrt(variance + eps) of x[0..n). */
static void plane_stats(const float *x, int64_t n, float eps, float *mean_out,
                        float *inv_std_out)
{
    if (n <= 0) {
        *mean_out = 0.0f;
        *inv_std_out = 1.0f / sqrtf(eps);
        return;
    }
    const float mean = (float)(deviation_sum(x, n, 0.0f, false) / (double)n);
    const double var = deviation_sum(x, n, mean, true) / (double)n;
    *mean_out = mean;
    *inv_std_out = (float)(1.0 / sqrt(var + eps));
}

/* y = (x - mean) * a + b, then the fused activation.  Subtracting the
 * mean first rather than folding it into b keeps outputs near 0 accurate
 * when the mean is large against the spread (folding cancels there). */
static void affine(const float *x, float *y, int64_t n, float mean, float a, float b,
                   const mk_node *node)
{
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] - mean) * a + b;
    mk_apply_act(y, n, node->act, node->act_alpha, node->act_beta);
}

/* ---- checks --------------------------------------------------------------- */

static int need_inputs(mk_ctx *ctx, int required, int max)
{
    if (ctx->n_in < required || ctx->n_in > max || ctx->n_out < 1 || !ctx->out[0])
        return mk_op_fail(ctx, MASKD_ERR_INVALID,
                          "takes %d to %d inputs and an output, has %d inputs", required, max,
                          ctx->n_in);
    for (int i = 0; i < ctx->n_in; i++) {
        const mk_tensor *t = ctx->in[i];
        if (!t) {
            if (i < required)
                return mk_op_fail(ctx, MASKD_ERR_INVALID, "input %d is missing", i);
            continue;
        }
        if (t->dtype != MASKD_FLOAT)
            return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "input %d is %s; only float is supported",
                              i, maskd_dtype_name(t->dtype));
        if (t->ndim < 0 || t->ndim > MASKD_MAX_DIMS)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "input %d has unknown or too high rank %d", i,
                              t->ndim);
    }
    return MASKD_OK;
}

/* At load only graph inputs and initializers have a known type; refusing
 * other types here reports an unsupported model at load, not per request. */
static int prepare_float_inputs(mk_ctx *ctx)
{
    for (int i = 0; i < ctx->n_in; i++) {
        maskd_dtype t = mk_known_dtype(ctx, i);
        if (t != MASKD_UNDEFINED && t != MASKD_FLOAT)
            return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "input %d is %s; only float is supported",
                              i, maskd_dtype_name(t));
    }
    return MASKD_OK;
}

static int check_param_count(mk_ctx *ctx, int i, const char *what, int64_t want)
{
    if (mk_numel(ctx->in[i]) != want) {
        char buf[96];
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "%s has shape %s, expected %lld elements", what,
                          mk_shape_str(ctx->in[i], buf, sizeof buf), (long long)want);
    }
    return MASKD_OK;
}

static int check_min_rank(mk_ctx *ctx, int min_rank)
{
    if (ctx->in[0]->ndim < min_rank) {
        char buf[96];
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "input %s needs rank >= %d",
                          mk_shape_str(ctx->in[0], buf, sizeof buf), min_rank);
    }
    return MASKD_OK;
}

/* Outputs past Y hold training statistics, which an inference engine does
 * not produce. */
static int refuse_extra_outputs(mk_ctx *ctx, int first_extra, const char *why)
{
    for (int i = first_extra; i < ctx->n_out; i++)
        if (ctx->out[i])
            return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "output %d is requested; %s", i, why);
    return MASKD_OK;
}

static void copy_shape(mk_tensor *dst, const mk_tensor *src)
{
    dst->dtype = src->dtype;
    dst->ndim = src->ndim;
    memcpy(dst->dims, src->dims, sizeof dst->dims);
}

/* ---- BatchNormalization ---------------------------------------------------- */

/* X is [N, C, D1..Dn]; a rank-1 X is [N] with C = 1.  The "non-spatial"
 * variant of opsets 6-8 (spatial=0) has statistics per (C, D1..Dn) element,
 * which is the same computation with C*D1*..*Dn channels of one element. */
typedef struct bn_layout {
    int64_t batch, channels, inner;
} bn_layout;

static bn_layout bn_layout_of(const mk_ctx *ctx)
{
    const mk_tensor *x = ctx->in[0];
    bn_layout l = {x->dims[0], 1, 1};
    if (x->ndim >= 2) {
        l.channels = x->dims[1];
        l.inner = mk_dims_product(x->dims, 2, x->ndim);
        if (ctx->node->opset < 9 && mk_attr_int(ctx->node, "spatial", 1) == 0) {
            l.channels *= l.inner;
            l.inner = 1;
        }
    }
    return l;
}

/* training_mode=1 (opset 14+) normalises with the batch's own statistics
 * and also returns the updated running mean and variance; the older
 * opsets' training outputs (saved mean / inverse std) are not produced. */
static bool batchnorm_training(const mk_ctx *ctx)
{
    return ctx->node->opset >= 14 && mk_attr_int(ctx->node, "training_mode", 0) != 0;
}

static int batchnorm_check_mode(mk_ctx *ctx)
{
    if (batchnorm_training(ctx)) return refuse_extra_outputs(ctx, 3, "no such output");
    return refuse_extra_outputs(ctx, 1, "running/saved statistics are produced only with "
                                        "training_mode=1 (opset 14+)");
}

static int batchnorm_prepare(mk_ctx *ctx)
{
    int rc = batchnorm_check_mode(ctx);
    return rc ? rc : prepare_float_inputs(ctx);
}

static int batchnorm_infer(mk_ctx *ctx)
{
    int rc;
    if ((rc = need_inputs(ctx, 5, 5)) || (rc = check_min_rank(ctx, 1)) ||
        (rc = batchnorm_check_mode(ctx)))
        return rc;
    bn_layout l = bn_layout_of(ctx);
    static const char *const names[] = {"", "scale", "B", "mean", "var"};
    for (int i = 1; i < 5; i++)
        if ((rc = check_param_count(ctx, i, names[i], l.channels))) return rc;
    copy_shape(ctx->out[0], ctx->in[0]);
    for (int o = 1; o < 3 && o < ctx->n_out; o++)
        if (ctx->out[o]) copy_shape(ctx->out[o], ctx->in[2 + o]);
    return MASKD_OK;
}

typedef struct bn_job {
    const mk_node *node;
    const float *x, *scale, *bias, *mean, *var;
    float *y;
    bn_layout l;
    float eps;
    /* training mode */
    float momentum;
    float *running_mean, *running_var;
} bn_job;

static void batchnorm_range(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const bn_job *j = arg;
    for (int64_t p = begin; p < end; p++) {
        int64_t c = p % j->l.channels;
        float a = j->scale[c] / sqrtf(j->var[c] + j->eps);
        int64_t off = p * j->l.inner;
        affine(j->x + off, j->y + off, j->l.inner, j->mean[c], a, j->bias[c], j->node);
    }
}

/* Training mode: one task per channel, statistics over batch and space. */
static void batchnorm_training_range(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const bn_job *j = arg;
    const bn_layout *l = &j->l;
    for (int64_t c = begin; c < end; c++) {
        double sum = 0, sq = 0;
        int64_t count = l->batch * l->inner;
        for (int64_t n = 0; n < l->batch; n++) {
            const float *x = j->x + (n * l->channels + c) * l->inner;
            for (int64_t i = 0; i < l->inner; i++) sum += x[i];
        }
        double mean = count ? sum / (double)count : 0.0;
        for (int64_t n = 0; n < l->batch; n++) {
            const float *x = j->x + (n * l->channels + c) * l->inner;
            for (int64_t i = 0; i < l->inner; i++) sq += (x[i] - mean) * (x[i] - mean);
        }
        double var = count ? sq / (double)count : 0.0;
        float a = (float)(j->scale[c] / sqrt(var + j->eps));
        for (int64_t n = 0; n < l->batch; n++) {
            int64_t off = (n * l->channels + c) * l->inner;
            affine(j->x + off, j->y + off, l->inner, (float)mean, a, j->bias[c], j->node);
        }
        if (j->running_mean)
            j->running_mean[c] = (float)(j->mean[c] * j->momentum + mean * (1 - j->momentum));
        if (j->running_var)
            j->running_var[c] = (float)(j->var[c] * j->momentum + var * (1 - j->momentum));
    }
}

static int batchnorm_run(mk_ctx *ctx)
{
    bn_job j = {.node = ctx->node, .x = ctx->in[0]->data, .scale = ctx->in[1]->data,
                .bias = ctx->in[2]->data, .mean = ctx->in[3]->data,
                .var = ctx->in[4]->data, .y = ctx->out[0]->data,
                .l = bn_layout_of(ctx),
                .eps = mk_attr_float(ctx->node, "epsilon", 1e-5f)};
    if (batchnorm_training(ctx)) {
        mk_tensor *rm = mk_output(ctx, 1), *rv = mk_output(ctx, 2);
        j.momentum = mk_attr_float(ctx->node, "momentum", 0.9f);
        j.running_mean = rm ? rm->data : NULL;
        j.running_var = rv ? rv->data : NULL;
        mk_parallel_for(ctx->pool, j.l.channels, 1, batchnorm_training_range, &j);
        return MASKD_OK;
    }
    mk_parallel_for(ctx->pool, j.l.batch * j.l.channels, plane_grain(j.l.inner),
                    batchnorm_range, &j);
    return MASKD_OK;
}

/* ---- InstanceNormalization ------------------------------------------------- */

static int instancenorm_infer(mk_ctx *ctx)
{
    int rc;
    if ((rc = need_inputs(ctx, 3, 3)) || (rc = check_min_rank(ctx, 2))) return rc;
    int64_t c = ctx->in[0]->dims[1];
    if ((rc = check_param_count(ctx, 1, "scale", c)) || (rc = check_param_count(ctx, 2, "B", c)))
        return rc;
    copy_shape(ctx->out[0], ctx->in[0]);
    return MASKD_OK;
}

typedef struct in_job {
    const mk_node *node;
    const float *x, *scale, *bias;
    float *y;
    int64_t channels, inner;
    float eps;
} in_job;

static void instancenorm_range(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const in_job *j = arg;
    for (int64_t p = begin; p < end; p++) {
        int64_t c = p % j->channels, off = p * j->inner;
        float mean, inv_std;
        plane_stats(j->x + off, j->inner, j->eps, &mean, &inv_std);
        affine(j->x + off, j->y + off, j->inner, mean, j->scale[c] * inv_std, j->bias[c],
               j->node);
    }
}

static int instancenorm_run(mk_ctx *ctx)
{
    const mk_tensor *x = ctx->in[0];
    in_job j = {.node = ctx->node, .x = x->data, .scale = ctx->in[1]->data,
                .bias = ctx->in[2]->data, .y = ctx->out[0]->data,
                .channels = x->dims[1], .inner = mk_dims_product(x->dims, 2, x->ndim),
                .eps = mk_attr_float(ctx->node, "epsilon", 1e-5f)};
    mk_parallel_for(ctx->pool, x->dims[0] * j.channels, plane_grain(j.inner),
                    instancenorm_range, &j);
    return MASKD_OK;
}

/* ---- GroupNormalization ---------------------------------------------------- */

static bool groupnorm_per_channel(const mk_ctx *ctx)
{
    return ctx->node->opset >= 21 ||
           mk_numel(ctx->in[1]) != mk_attr_int(ctx->node, "num_groups", 0);
}

static int groupnorm_check_attrs(mk_ctx *ctx)
{
    const mk_node *node = ctx->node;
    if (mk_attr_int(node, "num_groups", 0) <= 0)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "num_groups must be given and positive");
    if (node->opset >= 21 && mk_attr_int(node, "stash_type", 1) != 1)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "only stash_type=1 (float) is supported");
    return MASKD_OK;
}

static int groupnorm_prepare(mk_ctx *ctx)
{
    int rc = groupnorm_check_attrs(ctx);
    return rc ? rc : prepare_float_inputs(ctx);
}

static int groupnorm_infer(mk_ctx *ctx)
{
    int rc;
    if ((rc = need_inputs(ctx, 3, 3)) || (rc = check_min_rank(ctx, 2)) ||
        (rc = groupnorm_check_attrs(ctx)))
        return rc;
    const mk_node *node = ctx->node;
    int64_t groups = mk_attr_int(node, "num_groups", 0);
    int64_t c = ctx->in[0]->dims[1];
    if (c % groups != 0)
        return mk_op_fail(ctx, MASKD_ERR_INVALID,
                          "%lld channels do not split into num_groups=%lld groups", (long long)c,
                          (long long)groups);
    /* Opset 18-20 scale/bias are per group, or per channel by the leniency
     * described at the top of the file. */
    int64_t want = c;
    if (node->opset < 21 && mk_numel(ctx->in[1]) != c) want = groups;
    if ((rc = check_param_count(ctx, 1, "scale", want)) ||
        (rc = check_param_count(ctx, 2, "bias", want)))
        return rc;
    copy_shape(ctx->out[0], ctx->in[0]);
    return MASKD_OK;
}

typedef struct gn_job {
    const mk_node *node;
    const float *x, *scale, *bias;
    float *y;
    int64_t groups, channels_per_group, inner;
    bool per_channel;
    float eps;
} gn_job;

static void groupnorm_range(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const gn_job *j = arg;
    const int64_t group_size = j->channels_per_group * j->inner;
    for (int64_t p = begin; p < end; p++) {
        int64_t g = p % j->groups, off = p * group_size;
        float mean, inv_std;
        plane_stats(j->x + off, group_size, j->eps, &mean, &inv_std);
        for (int64_t k = 0; k < j->channels_per_group; k++) {
            int64_t param = j->per_channel ? g * j->channels_per_group + k : g;
            int64_t o = off + k * j->inner;
            affine(j->x + o, j->y + o, j->inner, mean, j->scale[param] * inv_std,
                   j->bias[param], j->node);
        }
    }
}

static int groupnorm_run(mk_ctx *ctx)
{
    const mk_tensor *x = ctx->in[0];
    int64_t groups = mk_attr_int(ctx->node, "num_groups", 1);
    gn_job j = {.node = ctx->node, .x = x->data, .scale = ctx->in[1]->data,
                .bias = ctx->in[2]->data, .y = ctx->out[0]->data, .groups = groups,
                .channels_per_group = x->dims[1] / groups,
                .inner = mk_dims_product(x->dims, 2, x->ndim),
                .per_channel = groupnorm_per_channel(ctx),
                .eps = mk_attr_float(ctx->node, "epsilon", 1e-5f)};
    mk_parallel_for(ctx->pool, x->dims[0] * groups,
                    plane_grain(j.channels_per_group * j.inner), groupnorm_range, &j);
    return MASKD_OK;
}

/* ---- LayerNormalization ---------------------------------------------------- */

/*
 * Scale and B broadcast to X one way.  We accept any such shape whose
 * non-1 dimensions lie within the normalized axes (anything else would make
 * the affine step differ between rows, which no exporter writes).  A
 * parameter that is not already laid out as X[axis:] is expanded into
 * scratch once per run.
 */
typedef struct ln_layout {
    int axis;
    int64_t rows, row_size;
} ln_layout;

static ln_layout ln_layout_of(const mk_ctx *ctx)
{
    const mk_tensor *x = ctx->in[0];
    int64_t axis = mk_attr_int(ctx->node, "axis", -1);
    if (axis < 0) axis += x->ndim;
    ln_layout l = {(int)axis, mk_dims_product(x->dims, 0, (int)axis),
                   mk_dims_product(x->dims, (int)axis, x->ndim)};
    return l;
}

/* Whether p, right-aligned against X, already is X[axis:] element for
 * element: every normalized dimension present in p at full size (or of
 * size 1 in X), nothing else but 1s. */
static bool ln_param_dense(const mk_tensor *p, const mk_tensor *x, int axis)
{
    for (int d = 0; d < x->ndim; d++) {
        int k = d - (x->ndim - p->ndim);
        int64_t pd = k >= 0 ? p->dims[k] : 1;
        if (d < axis ? pd != 1 : pd != x->dims[d]) return false;
    }
    return true;
}

static int ln_check_param(mk_ctx *ctx, int i, const char *what, int axis)
{
    const mk_tensor *p = ctx->in[i], *x = ctx->in[0];
    bool broadcasts = p->ndim <= x->ndim, within_axes = true;
    for (int k = 0; broadcasts && k < p->ndim; k++) {
        int d = x->ndim - p->ndim + k;
        if (p->dims[k] != 1 && p->dims[k] != x->dims[d]) broadcasts = false;
        if (p->dims[k] != 1 && d < axis) within_axes = false;
    }
    if (broadcasts && within_axes) return MASKD_OK;
    char sp[96], sx[96];
    mk_shape_str(p, sp, sizeof sp);
    mk_shape_str(x, sx, sizeof sx);
    if (!broadcasts)
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "%s %s does not broadcast to X %s", what, sp, sx);
    return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED,
                      "%s %s varies outside the normalized axes of X %s (axis %d)", what, sp, sx,
                      axis);
}

static int layernorm_check_stash(mk_ctx *ctx)
{
    if (mk_attr_int(ctx->node, "stash_type", 1) != 1)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "only stash_type=1 (float) is supported");
    return MASKD_OK;
}

static int layernorm_prepare(mk_ctx *ctx)
{
    int rc = layernorm_check_stash(ctx);
    return rc ? rc : prepare_float_inputs(ctx);
}

static int layernorm_infer(mk_ctx *ctx)
{
    int rc;
    if ((rc = need_inputs(ctx, 2, 3)) || (rc = layernorm_check_stash(ctx))) return rc;
    const mk_node *node = ctx->node;
    const mk_tensor *x = ctx->in[0];
    int64_t axis = mk_attr_int(node, "axis", -1);
    if (axis < -x->ndim || axis > x->ndim)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "axis %lld is out of range for rank %d",
                          (long long)axis, x->ndim);
    ln_layout l = ln_layout_of(ctx);
    if ((rc = ln_check_param(ctx, 1, "Scale", l.axis))) return rc;
    if (mk_input(ctx, 2) && (rc = ln_check_param(ctx, 2, "B", l.axis))) return rc;

    copy_shape(ctx->out[0], x);
    /* Mean and InvStdDev keep X's rank with the normalized axes as 1. */
    for (int i = 1; i < 3; i++) {
        mk_tensor *s = mk_output(ctx, i);
        if (!s) continue;
        copy_shape(s, x);
        s->dtype = MASKD_FLOAT;
        for (int d = l.axis; d < x->ndim; d++) s->dims[d] = 1;
    }
    size_t scratch = 0;
    if (!ln_param_dense(ctx->in[1], x, l.axis)) scratch += (size_t)l.row_size;
    if (mk_input(ctx, 2) && !ln_param_dense(ctx->in[2], x, l.axis))
        scratch += (size_t)l.row_size;
    ctx->scratch_bytes = scratch * sizeof(float);
    return MASKD_OK;
}

/* Lays p out as X[axis:] into dst. */
static void ln_expand_param(const mk_tensor *p, const mk_tensor *x, int axis, float *dst)
{
    const float *src = p->data;
    int64_t row_size = mk_dims_product(x->dims, axis, x->ndim);
    for (int64_t i = 0; i < row_size; i++) {
        int64_t rest = i, off = 0, stride = 1;
        for (int d = x->ndim - 1; d >= axis; d--) {
            int64_t idx = rest % x->dims[d];
            rest /= x->dims[d];
            int k = d - (x->ndim - p->ndim);
            if (k >= 0 && p->dims[k] != 1) off += idx * stride;
            if (k >= 0) stride *= p->dims[k];
        }
        dst[i] = src[off];
    }
}

typedef struct ln_job {
    const float *x, *scale, *bias; /* scale and bias laid out as one row */
    float *y, *mean, *inv_std;     /* mean and inv_std may be NULL */
    int64_t row_size;
    float eps;
} ln_job;

static void layernorm_range(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const ln_job *j = arg;
    const int64_t n = j->row_size;
    for (int64_t r = begin; r < end; r++) {
        const float *x = j->x + r * n;
        float *y = j->y + r * n;
        float mean, inv_std;
        plane_stats(x, n, j->eps, &mean, &inv_std);
        const float *scale = j->scale, *bias = j->bias;
        if (bias)
            for (int64_t i = 0; i < n; i++) y[i] = (x[i] - mean) * inv_std * scale[i] + bias[i];
        else
            for (int64_t i = 0; i < n; i++) y[i] = (x[i] - mean) * inv_std * scale[i];
        if (j->mean) j->mean[r] = mean;
        if (j->inv_std) j->inv_std[r] = inv_std;
    }
}

static int layernorm_run(mk_ctx *ctx)
{
    const mk_tensor *x = ctx->in[0];
    ln_layout l = ln_layout_of(ctx);
    ln_job j = {.x = x->data, .y = ctx->out[0]->data, .row_size = l.row_size,
                .eps = mk_attr_float(ctx->node, "epsilon", 1e-5f)};
    float *scratch = ctx->scratch;
    const mk_tensor *scale = ctx->in[1];
    if (ln_param_dense(scale, x, l.axis)) {
        j.scale = scale->data;
    } else {
        ln_expand_param(scale, x, l.axis, scratch);
        j.scale = scratch;
        scratch += l.row_size;
    }
    if (mk_input(ctx, 2)) {
        const mk_tensor *bias = ctx->in[2];
        if (ln_param_dense(bias, x, l.axis)) {
            j.bias = bias->data;
        } else {
            ln_expand_param(bias, x, l.axis, scratch);
            j.bias = scratch;
        }
    }
    mk_tensor *mean = mk_output(ctx, 1), *inv_std = mk_output(ctx, 2);
    if (mean) j.mean = mean->data;
    if (inv_std) j.inv_std = inv_std->data;
    mk_parallel_for(ctx->pool, l.rows, plane_grain(l.row_size), layernorm_range, &j);
    return MASKD_OK;
}

MK_OP_FAMILY(norm,
    {.domain = "", .op_type = "BatchNormalization", .since_version = 6,
     .prepare = batchnorm_prepare, .infer = batchnorm_infer, .run = batchnorm_run,
     .fuse_act = 1},
    {.domain = "", .op_type = "InstanceNormalization", .since_version = 6,
     .prepare = prepare_float_inputs, .infer = instancenorm_infer,
     .run = instancenorm_run, .fuse_act = 1},
    {.domain = "", .op_type = "LayerNormalization", .since_version = 17,
     .prepare = layernorm_prepare, .infer = layernorm_infer, .run = layernorm_run},
    {.domain = "", .op_type = "GroupNormalization", .since_version = 18,
     .prepare = groupnorm_prepare, .infer = groupnorm_infer, .run = groupnorm_run,
     .fuse_act = 1});
