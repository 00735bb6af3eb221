/*
 * DepthToSpace (DCR and CRD) and SpaceToDepth.
 *
 * Both are pure permutations, so they copy elements by size and serve every
 * dtype.  One output row is the unit of work: it gathers from `blocksize`
 * input rows (DepthToSpace) or strides through one (SpaceToDepth).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../mk.h"

typedef enum d2s_order {
    ORDER_DCR, /* depth-column-row: channel = (i * b + j) * C_out + c */
    ORDER_CRD, /* column-row-depth: channel = c * b * b + i * b + j (PixelShuffle) */
} d2s_order;

typedef struct block_attrs {
    int64_t block;
    d2s_order order;
} block_attrs;

static int block_prepare(mk_ctx *ctx)
{
    block_attrs a = {0, ORDER_DCR};
    a.block = mk_attr_int(ctx->node, "blocksize", 0);
    if (a.block < 1 || a.block > ((int64_t)1 << 20))
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "blocksize %lld is out of range",
                          (long long)a.block);
    if (!strcmp(ctx->node->op_type, "DepthToSpace")) {
        /* mode arrived at opset 11; before it the layout was DCR. */
        const char *mode = mk_attr_str(ctx->node, "mode", "DCR");
        if (!strcmp(mode, "DCR")) a.order = ORDER_DCR;
        else if (!strcmp(mode, "CRD")) a.order = ORDER_CRD;
        else return mk_op_fail(ctx, MASKD_ERR_INVALID, "unknown mode '%s'", mode);
    }
    block_attrs *state = malloc(sizeof *state);
    if (!state) return mk_op_fail(ctx, MASKD_ERR_NOMEM, "out of memory");
    *state = a;
    ctx->node->state = state;
    return MASKD_OK;
}

/* DepthToSpace (to_space) spreads each group of blocksize^2 channels over a
 * blocksize x blocksize patch of pixels; SpaceToDepth gathers them back. */
static int block_infer(mk_ctx *ctx, bool to_space)
{
    const block_attrs *a = ctx->node->state;
    mk_tensor *x, *y;
    char shape[128];
    int rc;
    if (!a) return mk_op_fail(ctx, MASKD_ERR_INVALID, "attributes were not prepared");
    if ((rc = mk_need_input(ctx, 0, &x)) || (rc = mk_need_output(ctx, 0, &y))) return rc;
    if (x->ndim != 4)
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "input must be N x C x H x W, got %s",
                          mk_shape_str(x, shape, sizeof shape));
    const size_t size = maskd_dtype_size(x->dtype);
    if (size != 1 && size != 2 && size != 4 && size != 8)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "input type %s is not supported",
                          maskd_dtype_name(x->dtype));
    const int64_t b = a->block, area = b * b;
    int64_t c, h, w;
    bool overflow;
    if (to_space) {
        if (x->dims[1] % area)
            return mk_op_fail(ctx, MASKD_ERR_SHAPE,
                              "channels of %s are not a multiple of blocksize^2 = %lld",
                              mk_shape_str(x, shape, sizeof shape), (long long)area);
        c = x->dims[1] / area;
        overflow = __builtin_mul_overflow(x->dims[2], b, &h) ||
                   __builtin_mul_overflow(x->dims[3], b, &w);
    } else {
        if (x->dims[2] % b || x->dims[3] % b)
            return mk_op_fail(ctx, MASKD_ERR_SHAPE,
                              "height and width of %s are not multiples of blocksize %lld",
                              mk_shape_str(x, shape, sizeof shape), (long long)b);
        overflow = __builtin_mul_overflow(x->dims[1], area, &c);
        h = x->dims[2] / b;
        w = x->dims[3] / b;
    }
    if (overflow)
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "output of %s is too large",
                          mk_shape_str(x, shape, sizeof shape));
    y->dtype = x->dtype;
    y->ndim = 4;
    y->dims[0] = x->dims[0];
    y->dims[1] = c;
    y->dims[2] = h;
    y->dims[3] = w;
    ctx->scratch_bytes = 0;
    return MASKD_OK;
}

static int d2s_infer(mk_ctx *ctx) { return block_infer(ctx, true); }
static int s2d_infer(mk_ctx *ctx) { return block_infer(ctx, false); }

typedef struct block_job {
    const void *x;
    void *y;
    int64_t block;
    d2s_order order;
    int64_t in_c, in_h, in_w;    /* input dims */
    int64_t out_c, out_h, out_w; /* output dims */
} block_job;

/* Output rows are (n, c, oh) of the output tensor. */
#define DEFINE_D2S_ROWS(NAME, T)                                                  \
    static void NAME(void *arg, int64_t begin, int64_t end, int slot)             \
    {                                                                             \
        (void)slot;                                                               \
        const block_job *job = arg;                                               \
        const int64_t b = job->block, w_in = job->in_w;                           \
        for (int64_t row = begin; row < end; row++) {                             \
            const int64_t oh = row % job->out_h, nc = row / job->out_h;           \
            const int64_t c = nc % job->out_c, n = nc / job->out_c;               \
            const int64_t h = oh / b, i = oh % b;                                 \
            T *y = (T *)job->y + row * job->out_w;                                \
            for (int64_t j = 0; j < b; j++) {                                     \
                const int64_t ch = job->order == ORDER_DCR                        \
                                       ? (i * b + j) * job->out_c + c             \
                                       : (c * b + i) * b + j;                     \
                const T *src = (const T *)job->x +                                \
                               ((n * job->in_c + ch) * job->in_h + h) * w_in;     \
                for (int64_t w = 0; w < w_in; w++) y[w * b + j] = src[w];         \
            }                                                                     \
        }                                                                         \
    }

/* Output rows are (n, oc, oh); oc = (i * b + j) * C_in + c. */
#define DEFINE_S2D_ROWS(NAME, T)                                                  \
    static void NAME(void *arg, int64_t begin, int64_t end, int slot)             \
    {                                                                             \
        (void)slot;                                                               \
        const block_job *job = arg;                                               \
        const int64_t b = job->block;                                             \
        for (int64_t row = begin; row < end; row++) {                             \
            const int64_t oh = row % job->out_h, noc = row / job->out_h;          \
            const int64_t oc = noc % job->out_c, n = noc / job->out_c;            \
            const int64_t c = oc % job->in_c, ij = oc / job->in_c;                \
            const int64_t i = ij / b, j = ij % b;                                 \
            const T *src = (const T *)job->x +                                    \
                           ((n * job->in_c + c) * job->in_h + oh * b + i) * job->in_w + j; \
            T *y = (T *)job->y + row * job->out_w;                                \
            for (int64_t w = 0; w < job->out_w; w++) y[w] = src[w * b];           \
        }                                                                         \
    }

DEFINE_D2S_ROWS(d2s_rows_8, uint8_t)
DEFINE_D2S_ROWS(d2s_rows_16, uint16_t)
DEFINE_D2S_ROWS(d2s_rows_32, uint32_t)
DEFINE_D2S_ROWS(d2s_rows_64, uint64_t)
DEFINE_S2D_ROWS(s2d_rows_8, uint8_t)
DEFINE_S2D_ROWS(s2d_rows_16, uint16_t)
DEFINE_S2D_ROWS(s2d_rows_32, uint32_t)
DEFINE_S2D_ROWS(s2d_rows_64, uint64_t)

static int block_run(mk_ctx *ctx, const mk_range_fn fns[4])
{
    const block_attrs *a = ctx->node->state;
    const mk_tensor *x = ctx->in[0], *y = ctx->out[0];
    block_job job = {
        .x = x->data,
        .y = y->data,
        .block = a->block,
        .order = a->order,
        .in_c = x->dims[1], .in_h = x->dims[2], .in_w = x->dims[3],
        .out_c = y->dims[1], .out_h = y->dims[2], .out_w = y->dims[3],
    };
    if (mk_numel(y) == 0) return MASKD_OK;
    const size_t size = maskd_dtype_size(x->dtype);
    const mk_range_fn fn = fns[size == 1 ? 0 : size == 2 ? 1 : size == 4 ? 2 : 3];
    const int64_t rows = y->dims[0] * y->dims[1] * y->dims[2];
    const int64_t grain = job.out_w >= 16384 ? 1 : 16384 / job.out_w;
    mk_parallel_for(ctx->pool, rows, grain, fn, &job);
    return MASKD_OK;
}

static int d2s_run(mk_ctx *ctx)
{
    static const mk_range_fn fns[4] = {d2s_rows_8, d2s_rows_16, d2s_rows_32, d2s_rows_64};
    return block_run(ctx, fns);
}

static int s2d_run(mk_ctx *ctx)
{
    static const mk_range_fn fns[4] = {s2d_rows_8, s2d_rows_16, s2d_rows_32, s2d_rows_64};
    return block_run(ctx, fns);
}

MK_OP_FAMILY(depth_to_space,
    {.domain = "", .op_type = "DepthToSpace", .since_version = 1, .prepare = block_prepare,
     .infer = d2s_infer, .run = d2s_run, .release = free},
    {.domain = "", .op_type = "SpaceToDepth", .since_version = 1, .prepare = block_prepare,
     .infer = s2d_infer, .run = s2d_run, .release = free});
