/*
 * Gemm and MatMul.
 *
 * Both become one or more row-major sgemm problems, each cut into blocks of
 * rows (or of columns when the result is wide and short) spread over the
 * pool; every sgemm call is single-threaded.  Gemm's C is broadcast into the
 * block before the sgemm accumulates onto it, and the fused activation runs
 * on the block right after.  MatMul folds a batch that shares one B into a
 * single tall problem; other batches become items of their own.
 * MatMul also takes int32 / int64 (wrapping, like numpy) through a plain
 * loop, for shape arithmetic that some exporters route through MatMul.
 */
#include <cblas.h>
#include <string.h>

#include "common.h"

/* Below this many multiply-adds a problem is not worth splitting. */
enum { SPLIT_MIN_MACS = 1 << 18, MIN_BLOCK = 16 };


/* One C = alpha * op(A) op(B) (+ beta * bias) problem. */
typedef struct gemm_problem {
    bool trans_a, trans_b;
    int64_t m, n, k;
    float alpha;
    const void *a, *b;
    int64_t lda, ldb, ldc;
    void *c;
    /* Gemm's C: element (i, j) is bias[i * bias_rs + j * bias_cs]. */
    const float *bias;
    int64_t bias_rs, bias_cs;
    float beta;
    mk_act act;
    float act_alpha, act_beta;
    /* How the problem is cut. */
    bool split_rows;
    int64_t block, n_blocks;
} gemm_problem;

static void plan_blocks(gemm_problem *g, int slots, int64_t items_alongside)
{
    g->split_rows = g->m >= g->n;
    const int64_t dim = g->split_rows ? g->m : g->n;
    int64_t blocks = 1;
    const int64_t want = slots > 1 ? 2 * (int64_t)slots : 1;
    if (items_alongside < want && g->m * g->n * g->k >= SPLIT_MIN_MACS) {
        blocks = mk_ceil_div(want, items_alongside);
        int64_t cap = mk_ceil_div(dim, MIN_BLOCK);
        if (blocks > cap) blocks = cap;
    }
    if (blocks < 1) blocks = 1;
    g->block = dim > 0 ? mk_ceil_div(dim, blocks) : 0;
    g->n_blocks = g->block > 0 ? mk_ceil_div(dim, g->block) : 0;
}

static void sgemm_block(const gemm_problem *g, int64_t i)
{
    int64_t r0 = 0, m = g->m, c0 = 0, n = g->n;
    if (g->split_rows) {
        r0 = i * g->block;
        m = r0 + g->block < g->m ? g->block : g->m - r0;
    } else {
        c0 = i * g->block;
        n = c0 + g->block < g->n ? g->block : g->n - c0;
    }
    const float *a = (const float *)g->a + (g->trans_a ? r0 : r0 * g->lda);
    const float *b = (const float *)g->b + (g->trans_b ? c0 * g->ldb : c0);
    float *c = (float *)g->c + r0 * g->ldc + c0;
    float beta = 0.0f;
    if (g->bias) {
        for (int64_t r = 0; r < m; r++) {
            const float *brow = g->bias + (r0 + r) * g->bias_rs + c0 * g->bias_cs;
            float *crow = c + r * g->ldc;
            if (g->bias_cs)
                for (int64_t j = 0; j < n; j++) crow[j] = g->beta * brow[j];
            else
                for (int64_t j = 0; j < n; j++) crow[j] = g->beta * brow[0];
        }
        beta = 1.0f;
    }
    if (g->k > 0 && m == 1) {
        /* One row (a classifier's Linear on one image): sgemv streams B
         * once, where sgemm would first pack all of it. */
        const int incx = g->trans_a ? (int)g->lda : 1;
        if (g->trans_b)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)n, (int)g->k, g->alpha, b, (int)g->ldb,
                        a, incx, beta, c, 1);
        else
            cblas_sgemv(CblasRowMajor, CblasTrans, (int)g->k, (int)n, g->alpha, b, (int)g->ldb,
                        a, incx, beta, c, 1);
    } else if (g->k > 0) {
        cblas_sgemm(CblasRowMajor, g->trans_a ? CblasTrans : CblasNoTrans,
                    g->trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)g->k, g->alpha,
                    a, (int)g->lda, b, (int)g->ldb, beta, c, (int)g->ldc);
    } else if (!g->bias) {
        for (int64_t r = 0; r < m; r++) memset(c + r * g->ldc, 0, (size_t)n * sizeof *c);
    }
    if (g->act != MK_ACT_NONE)
        for (int64_t r = 0; r < m; r++)
            mk_apply_act(c + r * g->ldc, n, g->act, g->act_alpha, g->act_beta);
}

/* Integer MatMul block (rows r0..r0+m of one problem, no transposes). */
#define INT_MATMUL_BLOCK(T, UT)                                                   \
    static void int_block_##T(const gemm_problem *g, int64_t r0, int64_t m)       \
    {                                                                            \
        const T *a = (const T *)g->a + r0 * g->lda;                              \
        const T *b = g->b;                                                       \
        T *c = (T *)g->c + r0 * g->ldc;                                          \
        for (int64_t r = 0; r < m; r++) {                                        \
            UT *crow = (UT *)(c + r * g->ldc);                                   \
            for (int64_t j = 0; j < g->n; j++) crow[j] = 0;                      \
            for (int64_t kk = 0; kk < g->k; kk++) {                              \
                const UT av = (UT)a[r * g->lda + kk];                            \
                const T *brow = b + kk * g->ldb;                                 \
                for (int64_t j = 0; j < g->n; j++) crow[j] += av * (UT)brow[j];  \
            }                                                                    \
        }                                                                        \
    }
INT_MATMUL_BLOCK(int32_t, uint32_t)
INT_MATMUL_BLOCK(int64_t, uint64_t)

/* ---- Gemm ---------------------------------------------------------------- */

static int gemm_check(mk_ctx *ctx, gemm_problem *g)
{
    const mk_node *node = ctx->node;
    mk_tensor *a, *b, *c = mk_input(ctx, 2);
    int rc;
    if ((rc = mk_need_input(ctx, 0, &a)) || (rc = mk_need_input(ctx, 1, &b))) return rc;
    if (a->ndim < 0 || b->ndim < 0 || (c && c->ndim < 0)) return MK_DYNAMIC;
    if (a->dtype != MASKD_FLOAT || b->dtype != MASKD_FLOAT || (c && c->dtype != MASKD_FLOAT))
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED,
                          "only float32 is supported (A is %s, B is %s)",
                          maskd_dtype_name(a->dtype), maskd_dtype_name(b->dtype));
    char as[96], bs[96], cs[96];
    if (a->ndim != 2 || b->ndim != 2)
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "A %s and B %s must be 2-D",
                          mk_shape_str(a, as, sizeof as), mk_shape_str(b, bs, sizeof bs));
    memset(g, 0, sizeof *g);
    g->trans_a = mk_attr_int(node, "transA", 0) != 0;
    g->trans_b = mk_attr_int(node, "transB", 0) != 0;
    g->alpha = mk_attr_float(node, "alpha", 1.0f);
    g->beta = mk_attr_float(node, "beta", 1.0f);
    g->m = a->dims[g->trans_a ? 1 : 0];
    g->k = a->dims[g->trans_a ? 0 : 1];
    g->n = b->dims[g->trans_b ? 0 : 1];
    if (b->dims[g->trans_b ? 1 : 0] != g->k)
        return mk_op_fail(ctx, MASKD_ERR_SHAPE,
                          "inner dims differ (A %s, B %s, transA %d, transB %d)",
                          mk_shape_str(a, as, sizeof as), mk_shape_str(b, bs, sizeof bs),
                          g->trans_a, g->trans_b);
    g->lda = a->dims[1];
    g->ldb = b->dims[1];
    g->ldc = g->n;
    if (c) {
        /* C broadcasts one way onto [M, N]. */
        int64_t cm = 1, cn = 1;
        if (c->ndim == 1) cn = c->dims[0];
        if (c->ndim == 2) {
            cm = c->dims[0];
            cn = c->dims[1];
        }
        if (c->ndim > 2 || (cm != 1 && cm != g->m) || (cn != 1 && cn != g->n))
            return mk_op_fail(ctx, MASKD_ERR_SHAPE, "C %s does not broadcast to [%lld,%lld]",
                              mk_shape_str(c, cs, sizeof cs), (long long)g->m, (long long)g->n);
        g->bias_rs = cm == 1 ? 0 : cn;
        g->bias_cs = cn == 1 ? 0 : 1;
    }
    return MASKD_OK;
}

static int gemm_infer(mk_ctx *ctx)
{
    gemm_problem g;
    int rc = gemm_check(ctx, &g);
    if (rc) return rc;
    mk_tensor *y = mk_output(ctx, 0);
    if (y) {
        y->dtype = MASKD_FLOAT;
        y->ndim = 2;
        y->dims[0] = g.m;
        y->dims[1] = g.n;
    }
    ctx->scratch_bytes = 0;
    return MASKD_OK;
}

static void gemm_blocks(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const gemm_problem *g = arg;
    for (int64_t i = begin; i < end; i++) sgemm_block(g, i);
}

static int gemm_run(mk_ctx *ctx)
{
    gemm_problem g;
    int rc = gemm_check(ctx, &g);
    if (rc == MK_DYNAMIC)
        return mk_op_fail(ctx, MASKD_ERR_RUNTIME, "input shapes unknown at run");
    if (rc) return rc;
    mk_tensor *y = ctx->out[0];
    if (!y || g.m == 0 || g.n == 0) return MASKD_OK;
    const mk_tensor *c = mk_input(ctx, 2);
    g.a = ctx->in[0]->data;
    g.b = ctx->in[1]->data;
    g.c = y->data;
    /* beta == 0 drops C, as the reference (and every runtime) effectively does. */
    g.bias = c && g.beta != 0.0f && mk_numel(c) > 0 ? c->data : NULL;
    g.act = ctx->node->act;
    g.act_alpha = ctx->node->act_alpha;
    g.act_beta = ctx->node->act_beta;
    plan_blocks(&g, ctx->pool ? mk_pool_slots(ctx->pool) : 1, 1);
    mk_parallel_for(ctx->pool, g.n_blocks, 1, gemm_blocks, &g);
    return MASKD_OK;
}

/* ---- MatMul -------------------------------------------------------------- */

typedef struct matmul_plan {
    gemm_problem g;          /* one batch entry; a, b, c are batch 0's */
    int nb;                  /* batch dims of the output */
    int64_t batch_dims[MASKD_MAX_DIMS];
    int64_t a_stride[MASKD_MAX_DIMS], b_stride[MASKD_MAX_DIMS]; /* 0 = broadcast */
    int64_t batch;           /* product of batch_dims */
    int out_ndim;
    int64_t out_dims[MASKD_MAX_DIMS];
    maskd_dtype dtype;
} matmul_plan;

static int matmul_check(mk_ctx *ctx, matmul_plan *p)
{
    mk_tensor *a, *b;
    int rc;
    if ((rc = mk_need_input(ctx, 0, &a)) || (rc = mk_need_input(ctx, 1, &b))) return rc;
    if (a->ndim < 0 || b->ndim < 0) return MK_DYNAMIC;
    if (a->dtype != b->dtype)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "A is %s but B is %s", maskd_dtype_name(a->dtype),
                          maskd_dtype_name(b->dtype));
    if (a->dtype != MASKD_FLOAT && a->dtype != MASKD_INT32 && a->dtype != MASKD_INT64)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED,
                          "%s is not supported (float32, int32, int64 are)",
                          maskd_dtype_name(a->dtype));
    char as[96], bs[96];
    if (a->ndim < 1 || b->ndim < 1)
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "scalars (A %s, B %s)",
                          mk_shape_str(a, as, sizeof as), mk_shape_str(b, bs, sizeof bs));
    memset(p, 0, sizeof *p);
    p->dtype = a->dtype;
    gemm_problem *g = &p->g;
    /* numpy: a 1-D A is a row [1, K], a 1-D B a column [K, 1]; the added
     * dim is dropped from the result. */
    g->m = a->ndim >= 2 ? a->dims[a->ndim - 2] : 1;
    g->k = a->dims[a->ndim - 1];
    const int64_t kb = b->ndim >= 2 ? b->dims[b->ndim - 2] : b->dims[0];
    g->n = b->ndim >= 2 ? b->dims[b->ndim - 1] : 1;
    if (kb != g->k)
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "inner dims differ (A %s, B %s)",
                          mk_shape_str(a, as, sizeof as), mk_shape_str(b, bs, sizeof bs));
    g->lda = g->k;
    g->ldb = g->n;
    g->ldc = g->n;
    g->alpha = 1.0f;

    const int a_nb = a->ndim > 2 ? a->ndim - 2 : 0, b_nb = b->ndim > 2 ? b->ndim - 2 : 0;
    p->nb = a_nb > b_nb ? a_nb : b_nb;
    int64_t a_step = g->m * g->k, b_step = g->k * g->n;
    p->batch = 1;
    for (int i = p->nb - 1; i >= 0; i--) {
        const int ai = i - (p->nb - a_nb), bi = i - (p->nb - b_nb);
        const int64_t ad = ai >= 0 ? a->dims[ai] : 1, bd = bi >= 0 ? b->dims[bi] : 1;
        if (ad != bd && ad != 1 && bd != 1)
            return mk_op_fail(ctx, MASKD_ERR_SHAPE, "batch dims do not broadcast (A %s, B %s)",
                              mk_shape_str(a, as, sizeof as), mk_shape_str(b, bs, sizeof bs));
        const int64_t od = ad == 1 ? bd : ad;
        p->batch_dims[i] = od;
        p->a_stride[i] = ad == 1 ? 0 : a_step;
        p->b_stride[i] = bd == 1 ? 0 : b_step;
        a_step *= ad;
        b_step *= bd;
        p->batch *= od;
    }
    p->out_ndim = 0;
    for (int i = 0; i < p->nb; i++) p->out_dims[p->out_ndim++] = p->batch_dims[i];
    if (a->ndim >= 2) p->out_dims[p->out_ndim++] = g->m;
    if (b->ndim >= 2) p->out_dims[p->out_ndim++] = g->n;
    return MASKD_OK;
}

static int matmul_infer(mk_ctx *ctx)
{
    matmul_plan p;
    int rc = matmul_check(ctx, &p);
    if (rc) return rc;
    mk_tensor *y = mk_output(ctx, 0);
    if (y) {
        y->dtype = p.dtype;
        y->ndim = p.out_ndim;
        memcpy(y->dims, p.out_dims, sizeof(int64_t) * (size_t)p.out_ndim);
    }
    ctx->scratch_bytes = 0;
    return MASKD_OK;
}

typedef struct matmul_job {
    const matmul_plan *p;
    size_t elem;
} matmul_job;

static void matmul_items(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const matmul_job *job = arg;
    const matmul_plan *p = job->p;
    for (int64_t it = begin; it < end; it++) {
        const int64_t bi = it / p->g.n_blocks, blk = it % p->g.n_blocks;
        int64_t a_off = 0, b_off = 0, rest = bi;
        for (int i = p->nb - 1; i >= 0; i--) {
            const int64_t idx = rest % p->batch_dims[i];
            rest /= p->batch_dims[i];
            a_off += idx * p->a_stride[i];
            b_off += idx * p->b_stride[i];
        }
        gemm_problem g = p->g;
        g.a = (const char *)g.a + (size_t)a_off * job->elem;
        g.b = (const char *)g.b + (size_t)b_off * job->elem;
        g.c = (char *)g.c + (size_t)(bi * g.m * g.n) * job->elem;
        if (p->dtype == MASKD_FLOAT) {
            sgemm_block(&g, blk);
        } else {
            const int64_t r0 = g.split_rows ? blk * g.block : 0;
            const int64_t rows = !g.split_rows ? g.m : r0 + g.block < g.m ? g.block : g.m - r0;
            if (p->dtype == MASKD_INT32) int_block_int32_t(&g, r0, rows);
            else int_block_int64_t(&g, r0, rows);
        }
    }
}

static int matmul_run(mk_ctx *ctx)
{
    matmul_plan p;
    int rc = matmul_check(ctx, &p);
    if (rc == MK_DYNAMIC)
        return mk_op_fail(ctx, MASKD_ERR_RUNTIME, "input shapes unknown at run");
    if (rc) return rc;
    mk_tensor *y = ctx->out[0];
    if (!y || mk_numel(y) == 0) return MASKD_OK;
    gemm_problem *g = &p.g;
    g->a = ctx->in[0]->data;
    g->b = ctx->in[1]->data;
    g->c = y->data;
    g->act = MK_ACT_NONE;
    /* A batch sharing one B, with A not broadcast, is one tall problem. */
    bool b_shared = true, a_dense = true;
    for (int i = 0; i < p.nb; i++) {
        b_shared = b_shared && p.b_stride[i] == 0;
        a_dense = a_dense && (p.a_stride[i] != 0 || p.batch_dims[i] == 1);
    }
    if (p.nb > 0 && b_shared && a_dense) {
        g->m *= p.batch;
        p.nb = 0;
        p.batch = 1;
    }
    plan_blocks(g, ctx->pool ? mk_pool_slots(ctx->pool) : 1, p.batch);
    if (p.dtype != MASKD_FLOAT) {
        /* The integer loop only splits rows. */
        const int64_t blocks = g->n_blocks;
        g->split_rows = true;
        g->block = g->m > 0 ? mk_ceil_div(g->m, blocks) : 0;
        g->n_blocks = g->block > 0 ? mk_ceil_div(g->m, g->block) : 0;
    }
    matmul_job job = {.p = &p, .elem = maskd_dtype_size(p.dtype)};
    const int64_t items = p.batch * g->n_blocks;
    if (items > 0) mk_parallel_for(ctx->pool, items, 1, matmul_items, &job);
    return MASKD_OK;
}

MK_OP_FAMILY(gemm,
    {.domain = "", .op_type = "Gemm", .since_version = 1, .infer = gemm_infer,
     .run = gemm_run, .fuse_act = 1},
    {.domain = "", .op_type = "MatMul", .since_version = 1, .infer = matmul_infer,
     .run = matmul_run});
