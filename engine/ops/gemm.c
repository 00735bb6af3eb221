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
 *
 * When B is an initializer (a layer's weights) neither op goes through
 * OpenBLAS: B is packed once at load for kernels/sgemm.c, which multiplies a
 * packed A by a plain B, so the product runs transposed (see "constant B").
 */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/kernels.h"
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


/* ---- constant B ------------------------------------------------------------ */

/*
 * Y = X op(B) runs as Y^T = op(B)^T X^T: the weights op(B)^T (N x K, alpha
 * folded in) are the sgemm's packed A, so a bias along Y's columns is the
 * epilogue's per-row bias and Relu / Clip go into the same store; X^T is its
 * plain B.  X is transposed into scratch unless transA already stores it so
 * or it has one row; Y^T is transposed back into Y unless Y has one row or
 * one column, where both layouts are the same memory.  Weights are the big
 * operand, so they are the one packed once; X^T is small and its packing
 * per call is spread over all N rows.
 */
typedef struct gemm_state {
    mk_packed_a w;
    const void *packed_from;
    int64_t packed_numel;
} gemm_state;

static void gemm_release(void *state)
{
    gemm_state *st = state;
    if (!st) return;
    mk_aligned_free((void *)st->w.data);
    free(st);
}

/* Packs input 1, when it is a float initializer, as op(B)^T * alpha. */
static int pack_constant_b(mk_ctx *ctx, bool trans_b, float alpha)
{
    const mk_tensor *b = mk_input(ctx, 1);
    if (!b || !b->data || b->dtype != MASKD_FLOAT || b->ndim != 2) return MASKD_OK;
    const int64_t n = b->dims[trans_b ? 0 : 1], k = b->dims[trans_b ? 1 : 0];
    const size_t floats = mk_sgemm_packed_a_floats(n, k);
    if (floats == 0) return MASKD_OK;
    gemm_state *st = calloc(1, sizeof *st);
    float *packed = mk_aligned_alloc(floats * sizeof(float));
    if (!st || !packed) {
        free(st);
        mk_aligned_free(packed);
        return mk_op_fail(ctx, MASKD_ERR_NOMEM, "out of memory");
    }
    if (trans_b) mk_sgemm_pack_a(b->data, k, n, k, 1, packed);
    else mk_sgemm_pack_a_t(b->data, n, n, k, packed);
    if (alpha != 1.0f)
        for (size_t i = 0; i < floats; i++) packed[i] *= alpha;
    st->w = (mk_packed_a){packed, n, k};
    st->packed_from = b->data;
    st->packed_numel = mk_numel(b);
    ctx->node->state = st;
    return MASKD_OK;
}

/* The packed weights, when they are still input 1's and fit an N x K product. */
static const mk_packed_a *packed_b(const mk_ctx *ctx, int64_t n, int64_t k)
{
    const gemm_state *st = ctx->node->state;
    const mk_tensor *b = ctx->in[1];
    if (!st || !b || !b->data || st->packed_from != b->data || st->packed_numel != mk_numel(b) ||
        st->w.m != n || st->w.k != k)
        return NULL;
    return &st->w;
}

/* Y (m x n) = X op(B) (+ C) through the packed weights. */
typedef struct packed_problem {
    int64_t m, n, k;
    bool x_trans;     /* X stored as X^T (k x m) */
    bool c_rows;      /* C varies along Y's rows: Y^T starts as beta * C^T */
    bool bias_buffer; /* C along columns only, but not usable as is: beta * C into scratch */
    bool y_transposed; /* Y^T goes through scratch */
    bool x_transposed; /* X^T goes through scratch */
    int64_t row_chunk, n_row_chunks, col_chunk, n_col_chunks; /* of Y^T */
    size_t xt_off, yt_off, bias_off, slots_off, slot_bytes, total;
} packed_problem;

/* Transposes are cut into strips of this many rows of their destination. */
enum { TRANSPOSE_STRIP = 64, TRANSPOSE_TILE = 16 };

static void plan_packed(packed_problem *pp, int64_t m, int64_t n, int64_t k, bool x_trans,
                        const gemm_problem *g, bool with_c, int slots)
{
    memset(pp, 0, sizeof *pp);
    pp->m = m;
    pp->n = n;
    pp->k = k;
    pp->x_trans = x_trans;
    pp->x_transposed = !x_trans && m > 1;
    pp->y_transposed = m > 1 && n > 1;
    if (with_c) {
        pp->c_rows = g->bias_rs != 0;
        pp->bias_buffer = !pp->c_rows && (g->bias_cs != 1 || g->beta != 1.0f);
    }
    /* Rows of Y^T in whole panels first: each chunk still packs all of X^T,
     * but X is the small operand; columns only when the panels are too few. */
    int64_t want = slots > 1 && m * n * k >= SPLIT_MIN_MACS ? 2 * (int64_t)slots : 1;
    const int64_t panels = mk_ceil_div(n, MK_SGEMM_MR);
    const int64_t row_chunks = want < panels ? want : panels;
    int64_t col_chunks = mk_ceil_div(want, row_chunks);
    if (col_chunks > mk_ceil_div(m, MIN_BLOCK)) col_chunks = mk_ceil_div(m, MIN_BLOCK);
    pp->row_chunk = mk_ceil_div(panels, row_chunks) * MK_SGEMM_MR;
    pp->n_row_chunks = mk_ceil_div(n, pp->row_chunk);
    pp->col_chunk = mk_ceil_div(mk_ceil_div(m, col_chunks), 8) * 8;
    if (pp->col_chunk > m) pp->col_chunk = m;
    pp->n_col_chunks = mk_ceil_div(m, pp->col_chunk);
    size_t at = 0;
    pp->xt_off = at;
    if (pp->x_transposed) at += mk_align64((size_t)(k * m) * sizeof(float));
    pp->yt_off = at;
    if (pp->y_transposed) at += mk_align64((size_t)(n * m) * sizeof(float));
    pp->bias_off = at;
    if (pp->bias_buffer) at += mk_align64((size_t)n * sizeof(float));
    pp->slots_off = at;
    pp->slot_bytes = mk_align64(mk_sgemm_scratch_bytes(pp->col_chunk));
    pp->total = at + (size_t)(slots > 1 ? slots : 1) * pp->slot_bytes;
}

/* dst[j][i] = src[i][j] for i < rows, j < cols, in tiles that stay in L1. */
static void transpose_block(const float *src, int64_t lds, int64_t rows, int64_t cols, float *dst,
                            int64_t ldd)
{
    for (int64_t i0 = 0; i0 < rows; i0 += TRANSPOSE_TILE) {
        const int64_t i1 = i0 + TRANSPOSE_TILE < rows ? i0 + TRANSPOSE_TILE : rows;
        for (int64_t j0 = 0; j0 < cols; j0 += TRANSPOSE_TILE) {
            const int64_t j1 = j0 + TRANSPOSE_TILE < cols ? j0 + TRANSPOSE_TILE : cols;
            for (int64_t j = j0; j < j1; j++)
                for (int64_t i = i0; i < i1; i++) dst[j * ldd + i] = src[i * lds + j];
        }
    }
}

typedef struct packed_job {
    const packed_problem *pp;
    const gemm_problem *g; /* bias (C), beta, activation */
    const mk_packed_a *w;
    const float *x;
    float *y;
    const float *xt;
    int64_t ldxt;
    float *yt;
    int64_t ldyt;
    mk_sgemm_epilogue ep; /* bias over all n rows of Y^T */
    bool act_after;
    char *slots;
} packed_job;

/* Strips of X^T's rows (X's columns). */
static void transpose_x_strips(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const packed_job *job = arg;
    const packed_problem *pp = job->pp;
    for (int64_t s = begin; s < end; s++) {
        const int64_t k0 = s * TRANSPOSE_STRIP;
        const int64_t kn = k0 + TRANSPOSE_STRIP < pp->k ? TRANSPOSE_STRIP : pp->k - k0;
        transpose_block(job->x + k0, pp->k, pp->m, kn, (float *)job->xt + k0 * pp->m, pp->m);
    }
}

/* Strips of Y's rows, with the activation the sgemm could not apply. */
static void transpose_y_strips(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const packed_job *job = arg;
    const packed_problem *pp = job->pp;
    for (int64_t s = begin; s < end; s++) {
        const int64_t i0 = s * TRANSPOSE_STRIP;
        const int64_t mn = i0 + TRANSPOSE_STRIP < pp->m ? TRANSPOSE_STRIP : pp->m - i0;
        float *y = job->y + i0 * pp->n;
        if (pp->y_transposed) transpose_block(job->yt + i0, pp->m, pp->n, mn, y, pp->n);
        if (job->act_after)
            mk_apply_act(y, mn * pp->n, job->g->act, job->g->act_alpha, job->g->act_beta);
    }
}

static void packed_chunks(void *arg, int64_t begin, int64_t end, int slot)
{
    const packed_job *job = arg;
    const packed_problem *pp = job->pp;
    const gemm_problem *g = job->g;
    void *scratch = job->slots + (size_t)slot * pp->slot_bytes;
    for (int64_t it = begin; it < end; it++) {
        const int64_t r0 = it / pp->n_col_chunks * pp->row_chunk;
        const int64_t c0 = it % pp->n_col_chunks * pp->col_chunk;
        const int64_t rn = r0 + pp->row_chunk < pp->n ? pp->row_chunk : pp->n - r0;
        const int64_t cn = c0 + pp->col_chunk < pp->m ? pp->col_chunk : pp->m - c0;
        float *yt = job->yt + r0 * job->ldyt + c0;
        if (pp->c_rows) /* element (i, j) of Y is C's (i * rs + j * cs) */
            for (int64_t j = 0; j < rn; j++)
                for (int64_t i = 0; i < cn; i++)
                    yt[j * job->ldyt + i] =
                        g->beta * g->bias[(c0 + i) * g->bias_rs + (r0 + j) * g->bias_cs];
        mk_sgemm_epilogue ep = job->ep;
        if (ep.bias) ep.bias += r0;
        mk_sgemm_packed(job->w, r0, rn, 0, pp->k, job->xt + c0, job->ldxt, cn, yt, job->ldyt,
                        pp->c_rows, &ep, scratch);
    }
}

/* Runs the problem; g gives C, beta and the activation.  m, n, k > 0. */
static int run_packed(mk_ctx *ctx, const mk_packed_a *w, const gemm_problem *g, int64_t m,
                      const float *x, bool x_trans, float *y)
{
    const int slots = ctx->pool ? mk_pool_slots(ctx->pool) : 1;
    packed_problem pp;
    plan_packed(&pp, m, g->n, g->k, x_trans, g, g->bias != NULL, slots);
    char *scratch = ctx->scratch;
    void *owned = NULL;
    if (!scratch || ctx->scratch_bytes < pp.total) {
        owned = mk_aligned_alloc(pp.total);
        if (!owned) return mk_op_fail(ctx, MASKD_ERR_NOMEM, "out of memory (%zu bytes)", pp.total);
        scratch = owned;
    }
    packed_job job = {
        .pp = &pp,
        .g = g,
        .w = w,
        .x = x,
        .y = y,
        .xt = pp.x_transposed ? (const float *)(scratch + pp.xt_off) : x,
        .ldxt = x_trans || pp.x_transposed ? m : 1,
        .yt = pp.y_transposed ? (float *)(scratch + pp.yt_off) : y,
        .ldyt = m,
        .ep = {NULL, MK_SGEMM_CLAMP_NONE, 0.0f, 0.0f},
        .slots = scratch + pp.slots_off,
    };
    if (g->bias && !pp.c_rows) {
        if (pp.bias_buffer) {
            float *bias = (float *)(scratch + pp.bias_off);
            for (int64_t j = 0; j < g->n; j++) bias[j] = g->beta * g->bias[j * g->bias_cs];
            job.ep.bias = bias;
        } else {
            job.ep.bias = g->bias;
        }
    }
    switch (g->act) {
    case MK_ACT_NONE: break;
    case MK_ACT_RELU: job.ep.clamp = MK_SGEMM_CLAMP_RELU; break;
    case MK_ACT_CLIP:
        job.ep.clamp = MK_SGEMM_CLAMP_CLIP;
        job.ep.lo = g->act_alpha;
        job.ep.hi = g->act_beta;
        break;
    default: job.act_after = true; break;
    }
    if (pp.x_transposed)
        mk_parallel_for(ctx->pool, mk_ceil_div(g->k, TRANSPOSE_STRIP), 1, transpose_x_strips, &job);
    mk_parallel_for(ctx->pool, pp.n_row_chunks * pp.n_col_chunks, 1, packed_chunks, &job);
    if (pp.y_transposed || job.act_after)
        mk_parallel_for(ctx->pool, mk_ceil_div(m, TRANSPOSE_STRIP), 1, transpose_y_strips, &job);
    mk_aligned_free(owned);
    return MASKD_OK;
}

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

static int gemm_prepare(mk_ctx *ctx)
{
    return pack_constant_b(ctx, mk_attr_int(ctx->node, "transB", 0) != 0,
                           mk_attr_float(ctx->node, "alpha", 1.0f));
}

/* Whether C counts: beta == 0 drops it, as the reference (and every
 * runtime) effectively does. */
static bool has_c(const gemm_problem *g, const mk_tensor *c)
{
    return c && g->beta != 0.0f && mk_numel(c) > 0;
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
    if (g.m > 0 && packed_b(ctx, g.n, g.k)) {
        const mk_tensor *c = mk_input(ctx, 2);
        packed_problem pp;
        plan_packed(&pp, g.m, g.n, g.k, g.trans_a, &g, has_c(&g, c),
                    ctx->pool ? mk_pool_slots(ctx->pool) : 1);
        ctx->scratch_bytes = pp.total;
    }
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
    g.a = ctx->in[0]->data;
    g.b = ctx->in[1]->data;
    g.c = y->data;
    const mk_tensor *c = mk_input(ctx, 2);
    g.bias = has_c(&g, c) ? c->data : NULL;
    g.act = ctx->node->act;
    g.act_alpha = ctx->node->act_alpha;
    g.act_beta = ctx->node->act_beta;
    const mk_packed_a *w = g.k > 0 ? packed_b(ctx, g.n, g.k) : NULL;
    if (w) return run_packed(ctx, w, &g, g.m, g.a, g.trans_a, y->data);
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

static int matmul_prepare(mk_ctx *ctx) { return pack_constant_b(ctx, false, 1.0f); }

/* The packed weights when B is a 2-D initializer: then every row of A, over
 * all batch dims, is one row of a single product, *rows of them. */
static const mk_packed_a *matmul_packed(const mk_ctx *ctx, const matmul_plan *p, int64_t *rows)
{
    if (p->dtype != MASKD_FLOAT || ctx->in[1]->ndim != 2 || p->g.k <= 0) return NULL;
    *rows = p->batch * p->g.m;
    return packed_b(ctx, p->g.n, p->g.k);
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
    int64_t rows;
    if (matmul_packed(ctx, &p, &rows) && rows > 0) {
        packed_problem pp;
        plan_packed(&pp, rows, p.g.n, p.g.k, false, &p.g, false,
                    ctx->pool ? mk_pool_slots(ctx->pool) : 1);
        ctx->scratch_bytes = pp.total;
    }
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
    int64_t rows;
    const mk_packed_a *w = matmul_packed(ctx, &p, &rows);
    if (w) return run_packed(ctx, w, g, rows, g->a, false, y->data);
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
    {.domain = "", .op_type = "Gemm", .since_version = 1, .prepare = gemm_prepare,
     .infer = gemm_infer, .run = gemm_run, .release = gemm_release, .fuse_act = 1},
    {.domain = "", .op_type = "MatMul", .since_version = 1, .prepare = matmul_prepare,
     .infer = matmul_infer, .run = matmul_run, .release = gemm_release});
