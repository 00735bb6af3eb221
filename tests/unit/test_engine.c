/* Engine internals: the thread pool, load-time fusion, per-plan constant
 * folding, the memory plan, dynamic shapes and input validation. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph.h"
#include "../check.h"

static const char *models_dir;

static maskd_model *load(const char *name, int optimize)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.onnx", models_dir, name);
    maskd_load_options opt = {.optimize = optimize};
    maskd_model *m = NULL;
    maskd_error err = {0};
    if (maskd_model_load_file(path, &opt, &m, &err)) {
        printf("FAIL loading %s: %s\n", name, err.message);
        failed++;
        return NULL;
    }
    return m;
}

/* A session for the named test model on pool; NULL, with the failure
 * counted, when loading or creating fails.  *m gets the model to free. */
static maskd_session *open_session(const char *name, int optimize, maskd_pool *pool,
                                   maskd_model **m)
{
    *m = load(name, optimize);
    if (!*m) return NULL;
    maskd_session *s = NULL;
    maskd_error err = {0};
    if (maskd_session_create(*m, pool, &s, &err)) {
        printf("FAIL creating a session for %s: %s\n", name, err.message);
        failed++;
        maskd_model_free(*m);
        *m = NULL;
        return NULL;
    }
    return s;
}

/* ---- pool -------------------------------------------------------------- */

typedef struct {
    atomic_int *hits;
    int max_slot;
    pthread_mutex_t lock;
} cover_arg;

static void cover(void *arg, int64_t b, int64_t e, int slot)
{
    cover_arg *a = arg;
    for (int64_t i = b; i < e; i++) atomic_fetch_add(&a->hits[i], 1);
    pthread_mutex_lock(&a->lock);
    if (slot > a->max_slot) a->max_slot = slot;
    pthread_mutex_unlock(&a->lock);
}

typedef struct {
    maskd_pool *pool;
    int ok;
} caller_arg;

static void *concurrent_caller(void *p)
{
    caller_arg *c = p;
    enum { N = 50000 };
    atomic_int *hits = calloc(N, sizeof *hits);
    cover_arg a = {.hits = hits};
    pthread_mutex_init(&a.lock, NULL);
    c->ok = 1;
    for (int round = 0; round < 50; round++) {
        for (int i = 0; i < N; i++) atomic_store(&hits[i], 0);
        mk_parallel_for(c->pool, N, 7, cover, &a);
        for (int i = 0; i < N; i++) c->ok &= atomic_load(&hits[i]) == 1;
    }
    pthread_mutex_destroy(&a.lock);
    free(hits);
    return NULL;
}

static void test_pool(void)
{
    maskd_pool *pool;
    maskd_error err;
    CHECK(maskd_pool_create(3, &pool, &err) == 0, "pool create: %s", err.message);
    enum { N = 100003 };
    atomic_int *hits = calloc(N, sizeof *hits);
    cover_arg a = {.hits = hits};
    pthread_mutex_init(&a.lock, NULL);
    mk_parallel_for(pool, N, 1, cover, &a);
    int once = 1;
    for (int i = 0; i < N; i++) once &= atomic_load(&hits[i]) == 1;
    CHECK(once, "parallel_for visits every index exactly once");
    CHECK(a.max_slot < mk_pool_slots(pool), "slots stay below %d (saw %d)", mk_pool_slots(pool),
          a.max_slot);
    mk_parallel_for(pool, 0, 1, cover, &a); /* empty range: no call, no hang */
    pthread_mutex_destroy(&a.lock);
    free(hits);

    /* Two sessions' ops sharing one pool at the same time. */
    pthread_t t[2];
    caller_arg c[2] = {{pool, 0}, {pool, 0}};
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, concurrent_caller, &c[i]);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    CHECK(c[0].ok && c[1].ok, "concurrent parallel_for calls each cover their range");
    maskd_pool_free(pool);
}

/* ---- graph ------------------------------------------------------------- */

static void fill_random(float *x, int64_t n, unsigned seed)
{
    for (int64_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        x[i] = (float)((seed >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
}

/* What running a test model with and without optimisation showed. */
typedef struct {
    int ran;                /* both runs succeeded with same-shaped outputs */
    int fused_nodes, raw_nodes;
    double worst;           /* largest difference between the two outputs */
    int negative;           /* negative values in the optimised output */
} fusion_result;

/* Runs model `name` loaded with and without optimisation on one random
 * input of shape in_dims (rank 4). */
static fusion_result compare_fusion(maskd_pool *pool, const char *name, const int64_t *in_dims)
{
    fusion_result r = {0};
    maskd_model *opt = load(name, 1), *raw = load(name, 0);
    maskd_session *a = NULL, *b = NULL;
    maskd_error err;
    maskd_tensor in = {MASKD_FLOAT, 4, {in_dims[0], in_dims[1], in_dims[2], in_dims[3]}, NULL};
    float *x = malloc((size_t)maskd_tensor_numel(&in) * sizeof *x);
    if (!opt || !raw || !x || maskd_session_create(opt, pool, &a, &err) ||
        maskd_session_create(raw, pool, &b, &err)) {
        CHECK(0, "%s: models and sessions", name);
        goto out;
    }
    r.fused_nodes = maskd_model_num_nodes(opt);
    r.raw_nodes = maskd_model_num_nodes(raw);
    fill_random(x, maskd_tensor_numel(&in), 1);
    in.data = x;
    int ra = maskd_session_run(a, &in, 1, &err);
    CHECK(ra == 0, "%s fused run: %s", name, err.message);
    int rb = maskd_session_run(b, &in, 1, &err);
    CHECK(rb == 0, "%s unfused run: %s", name, err.message);
    if (ra || rb) goto out;
    const maskd_tensor *ya = maskd_session_output(a, 0), *yb = maskd_session_output(b, 0);
    r.ran = mk_same_shape(ya, yb);
    CHECK(r.ran, "%s: fused and unfused output shapes match", name);
    for (int64_t i = 0; r.ran && i < maskd_tensor_numel(ya); i++) {
        double d = fabs(((float *)ya->data)[i] - ((float *)yb->data)[i]);
        if (d > r.worst) r.worst = d;
        r.negative += ((float *)ya->data)[i] < 0;
    }
out:
    free(x);
    maskd_session_free(a);
    maskd_session_free(b);
    maskd_model_free(opt);
    maskd_model_free(raw);
    return r;
}

static void test_conv_bn_relu(maskd_pool *pool)
{
    fusion_result r = compare_fusion(pool, "conv_bn_relu", (const int64_t[]){1, 3, 9, 7});
    CHECK(r.fused_nodes == 1, "Conv+BN+Relu fold into one node (got %d)", r.fused_nodes);
    CHECK(r.raw_nodes == 3, "without optimisation 3 nodes stay (got %d)", r.raw_nodes);
    CHECK(r.ran && r.worst < 1e-4, "fused equals unfused (max diff %g)", r.worst);
    CHECK(r.ran && !r.negative, "the fused Relu clamps");
}

static void test_conv_silu(maskd_pool *pool)
{
    fusion_result r = compare_fusion(pool, "conv_silu", (const int64_t[]){1, 3, 9, 7});
    CHECK(r.raw_nodes == 3 && r.fused_nodes == 1, "Conv+Sigmoid+Mul fuse into one node (%d -> %d)",
          r.raw_nodes, r.fused_nodes);
    CHECK(r.ran && r.worst < 1e-5, "fused SiLU equals x * Sigmoid(x) (max diff %g)", r.worst);
}

/* PyTorch's GroupNorm export becomes one GroupNormalization, but only where
 * gamma's broadcast is per channel. */
static void test_groupnorm_chain(maskd_pool *pool)
{
    const int64_t dims[] = {1, 3, 6, 5};
    fusion_result r = compare_fusion(pool, "gn_chain", dims);
    CHECK(r.raw_nodes == 8, "gn_chain has 8 nodes unoptimised (got %d)", r.raw_nodes);
    CHECK(r.fused_nodes == 2, "Conv, GroupNormalization+Relu remain (got %d)", r.fused_nodes);
    CHECK(r.ran && r.worst < 1e-4, "fused GroupNorm equals the chain (max diff %g)", r.worst);
    CHECK(r.ran && !r.negative, "the Relu is applied");

    r = compare_fusion(pool, "gn_chain_rows", dims);
    CHECK(r.fused_nodes >= 6, "a per-row gamma keeps the chain (%d nodes)", r.fused_nodes);
    CHECK(r.ran && r.worst < 1e-4, "per-row chain unchanged (max diff %g)", r.worst);
}

static void test_shape_chain(maskd_pool *pool)
{
    maskd_model *m;
    maskd_session *s = open_session("shape_chain", 1, pool, &m);
    if (!s) return;
    maskd_error err;
    for (int batch = 2; batch <= 5; batch += 3) {
        float x[5 * 48];
        fill_random(x, batch * 48, (unsigned)batch);
        maskd_tensor in = {MASKD_FLOAT, 4, {batch, 3, 4, 4}, x};
        int rc = maskd_session_run(s, &in, 1, &err);
        CHECK(rc == 0, "batch %d: %s", batch, err.message);
        if (rc) continue;
        const maskd_tensor *y = maskd_session_output(s, 0);
        CHECK(y->ndim == 2 && y->dims[0] == batch && y->dims[1] == 48,
              "batch %d re-plans to [%d,48]", batch, batch);
        CHECK(!memcmp(y->data, x, (size_t)batch * 48 * sizeof(float)), "reshape keeps data");
    }
    float bad[48];
    maskd_tensor wrong = {MASKD_FLOAT, 4, {1, 4, 4, 3}, bad};
    CHECK(maskd_session_run(s, &wrong, 1, &err) == MASKD_ERR_SHAPE &&
              strstr(err.message, "[batch,3,4,4]"),
          "a wrong input shape names the expected one (%s)", err.message);
    maskd_tensor wrong_type = {MASKD_INT64, 4, {1, 3, 4, 4}, bad};
    CHECK(maskd_session_run(s, &wrong_type, 1, &err) == MASKD_ERR_SHAPE,
          "a wrong input dtype is refused (%s)", err.message);
    maskd_session_free(s);
    maskd_model_free(m);
}

static void test_memory_plan(maskd_pool *pool)
{
    maskd_model *m;
    maskd_session *s = open_session("chain", 1, pool, &m);
    if (!s) return;
    maskd_error err;
    static float x[16 * 32 * 32];
    fill_random(x, 16 * 32 * 32, 3);
    maskd_tensor in = {MASKD_FLOAT, 4, {1, 16, 32, 32}, x};
    CHECK(maskd_session_run(s, &in, 1, &err) == 0, "chain runs: %s", err.message);
    size_t one = sizeof x;
    CHECK(mk_session_arena_bytes(s) <= 3 * one,
          "9 chained values fit in %zu bytes, not %zu", mk_session_arena_bytes(s), 9 * one);
    const maskd_tensor *y = maskd_session_output(s, 0);
    double worst = 0;
    for (int i = 0; i < 16 * 32 * 32; i++) {
        double v = x[i];
        for (int k = 0; k < 8; k++) v = 1 / (1 + exp(-v));
        double d = fabs(v - ((float *)y->data)[i]);
        if (d > worst) worst = d;
    }
    CHECK(worst < 1e-5, "reused buffers do not corrupt values (max diff %g)", worst);
    maskd_session_free(s);
    maskd_model_free(m);
}

static double sigmoid(double v) { return 1 / (1 + exp(-v)); }

/* Reshape outputs share their input's buffer (see views in make_models.py). */
static void test_views(maskd_pool *pool)
{
    maskd_model *m;
    maskd_session *s = open_session("views", 0, pool, &m);
    if (!s) return;
    maskd_error err;
    enum { N = 16 * 32 * 32 };
    static float x[N];
    fill_random(x, N, 5);
    maskd_tensor in = {MASKD_FLOAT, 4, {1, 16, 32, 32}, x};
    CHECK(maskd_session_run(s, &in, 1, &err) == 0, "views run: %s", err.message);
    const maskd_tensor *y = maskd_session_output(s, 0), *r3 = maskd_session_output(s, 1);
    double worst_y = 0, worst_r3 = 0;
    for (int i = 0; i < N; i++) {
        double a = sigmoid(x[i]), c = sigmoid(sigmoid(a));
        worst_y = fmax(worst_y, fabs(a + c - ((const float *)y->data)[i]));
        worst_r3 = fmax(worst_r3, fabs(c - ((const float *)r3->data)[i]));
    }
    CHECK(worst_y < 1e-5, "a view's buffer outlives the ops after it (max diff %g)", worst_y);
    CHECK(worst_r3 < 1e-5, "a view that is a graph output keeps its values (max diff %g)",
          worst_r3);
    CHECK(r3->ndim == 2 && r3->dims[1] == N, "the view output has its own shape");
    CHECK(mk_session_arena_bytes(s) <= 3 * sizeof x,
          "views take no arena of their own (%zu bytes for 3 buffers of %zu)",
          mk_session_arena_bytes(s), sizeof x);
    maskd_session_free(s);
    maskd_model_free(m);
}

static void test_dynamic(maskd_pool *pool)
{
    maskd_model *m;
    maskd_session *s = open_session("dynamic", 1, pool, &m);
    if (!s) return;
    maskd_error err;
    /* Three pairs of identical boxes: one of each pair survives. */
    float boxes[6 * 4] = {0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3, 5, 5, 6, 6, 5, 5, 6, 6};
    float scores[6] = {0.9f, 0.8f, 0.7f, 0.95f, 0.3f, 0.2f};
    maskd_tensor in[2] = {{MASKD_FLOAT, 3, {1, 6, 4}, boxes}, {MASKD_FLOAT, 3, {1, 1, 6}, scores}};
    for (int round = 0; round < 2; round++) {
        int rc = maskd_session_run(s, in, 2, &err);
        CHECK(rc == 0, "dynamic run %d: %s", round, err.message);
        if (rc) break;
        const maskd_tensor *y = maskd_session_output(s, 0);
        int expect = round == 0 ? 3 : 6;
        CHECK(y->ndim == 2 && y->dims[0] == expect && y->dims[1] == 3,
              "round %d selects %d boxes (got %lld)", round, expect, (long long)y->dims[0]);
        /* Second round: spread the boxes apart, every one survives. */
        for (int i = 0; i < 6; i++) {
            boxes[i * 4 + 0] = boxes[i * 4 + 1] = (float)(i * 10);
            boxes[i * 4 + 2] = boxes[i * 4 + 3] = (float)(i * 10 + 1);
        }
    }
    maskd_session_free(s);
    maskd_model_free(m);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test_engine MODELS_DIR\n");
        return 2;
    }
    models_dir = argv[1];
    test_pool();
    maskd_pool *pool;
    maskd_error err;
    maskd_pool_create(2, &pool, &err);
    test_conv_bn_relu(pool);
    test_groupnorm_chain(pool);
    test_conv_silu(pool);
    test_shape_chain(pool);
    test_memory_plan(pool);
    test_views(pool);
    test_dynamic(pool);
    maskd_pool_free(pool);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
