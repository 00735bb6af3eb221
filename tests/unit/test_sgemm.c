/*
 * mk_sgemm_packed (kernels/sgemm.c) against a plain triple loop accumulated
 * in double, on shapes around the kernels' edges: M, N and K of 0, 1, one
 * off the panel sizes (MR = 8; B panels of 8, 24 or 48 columns, vectors of
 * 8 or 16), K across several KC blocks, N across several column blocks, row
 * ranges that start inside a panel, K ranges that start past 0 (conv's runs
 * of live taps), accumulate, leading dimensions wider than the matrix, B
 * given by row pointers with columns in segments (conv's windows of a
 * plane), and every epilogue.  Cells of C outside the product must keep
 * their values.  Runs the kernel that the CPU and MASKD_CPU select (it
 * prints which); ctest runs it at every level.
 *
 *     test_sgemm [seed] [random-cases]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../engine/kernels/kernels.h"
#include "../../engine/mk.h"

#define TEST_RNG_SEED 0x853c49e6748fea9bull
#include "test_random.h"

static int passed, failed;

typedef struct problem {
    int64_t m, k, taps;   /* A: m x k, columns [channel][tap] when taps > 1 */
    int64_t m0, mn, k0, kn, n;
    int64_t pad_b, pad_c; /* leading dimensions past the matrix */
    int64_t seg_w;        /* > 0: B by row pointers, columns in segments of seg_w */
    bool accumulate;
    int ep_kind;          /* 0 none, 1 bias, 2 relu, 3 bias + relu, 4 bias + clip */
} problem;

static float clamp_ref(float v, const mk_sgemm_epilogue *ep)
{
    if (ep->clamp == MK_SGEMM_CLAMP_RELU) return v > 0.0f ? v : 0.0f;
    if (ep->clamp == MK_SGEMM_CLAMP_CLIP) {
        v = v < ep->lo ? ep->lo : v;
        return v > ep->hi ? ep->hi : v;
    }
    return v;
}

static bool same(float got, float want, double tol)
{
    if (isnan(want)) return isnan(got);
    return fabs((double)got - (double)want) <= tol;
}

static void check(const char *what, const problem *pb)
{
    const int64_t m = pb->m, k = pb->k, n = pb->n, taps = pb->taps;
    const int64_t channels = taps > 0 && k % taps == 0 ? k / taps : k;
    const int64_t lda = k + 3;
    const int64_t ldb = n + pb->pad_b, ldc = n + pb->pad_c;
    float *a = random_floats(m * lda);
    float *packed = malloc((mk_sgemm_packed_a_floats(m, k) + 1) * sizeof *packed);
    mk_sgemm_pack_a(a, lda, m, k, taps, packed);
    const mk_packed_a pa = {packed, m, k};
    /* B as a plain matrix, or per row a plane whose segments hold the row's
     * columns (seg_stride = seg_w + pad_b, rows at shuffled places). */
    const bool segmented = pb->seg_w > 0;
    const int64_t seg_stride = pb->seg_w + pb->pad_b;
    const int64_t segs = segmented ? (n + pb->seg_w - 1) / pb->seg_w : 0;
    const int64_t plane = segmented ? segs * seg_stride + 1 : 0;
    float *b = random_floats(segmented ? pb->kn * plane : pb->kn * ldb);
    const float **rows = malloc((size_t)(pb->kn > 0 ? pb->kn : 1) * sizeof *rows);
    for (int64_t kk = 0; kk < pb->kn; kk++) rows[kk] = b + ((kk * 7) % pb->kn) * plane;
    const mk_sgemm_b bdesc = segmented ? (mk_sgemm_b){.rows = rows, .seg_w = pb->seg_w,
                                                      .seg_stride = seg_stride}
                                       : (mk_sgemm_b){.data = b, .ld = ldb};
    const int64_t c_rows = pb->mn + 2; /* one sentinel row each side */
    float *c = random_floats(c_rows * ldc), *c0 = malloc((size_t)(c_rows * ldc + 1) * sizeof *c0);
    memcpy(c0, c, (size_t)(c_rows * ldc) * sizeof *c);
    float *bias = random_floats(pb->mn);
    mk_sgemm_epilogue ep = {NULL, MK_SGEMM_CLAMP_NONE, 0.0f, 0.0f};
    if (pb->ep_kind == 1 || pb->ep_kind >= 3) ep.bias = bias;
    if (pb->ep_kind == 2 || pb->ep_kind == 3) ep.clamp = MK_SGEMM_CLAMP_RELU;
    if (pb->ep_kind == 4) {
        ep.clamp = MK_SGEMM_CLAMP_CLIP;
        ep.lo = -0.25f;
        ep.hi = 0.5f;
    }
    void *scratch = malloc(mk_sgemm_scratch_bytes(n) + 1);
    if (segmented || rng() % 2)
        mk_sgemm_packed_b(&pa, pb->m0, pb->mn, pb->k0, pb->kn, &bdesc, n, c + ldc, ldc,
                          pb->accumulate, pb->ep_kind ? &ep : NULL, scratch);
    else
        mk_sgemm_packed(&pa, pb->m0, pb->mn, pb->k0, pb->kn, b, ldb, n, c + ldc, ldc,
                        pb->accumulate, pb->ep_kind ? &ep : NULL, scratch);

    int bad = 0;
    double worst = 0.0;
    for (int64_t r = 0; r < c_rows && bad < 3; r++)
        for (int64_t j = 0; j < ldc && bad < 3; j++) {
            const float got = c[r * ldc + j], before = c0[r * ldc + j];
            const int64_t i = r - 1; /* row of the product */
            if (i < 0 || i >= pb->mn || j >= n) {
                if (memcmp(&got, &before, sizeof got)) {
                    fprintf(stderr, "  %s: cell (%lld, %lld) outside the product changed\n", what,
                            (long long)i, (long long)j);
                    bad++;
                }
                continue;
            }
            double sum = pb->accumulate ? before : 0.0, mag = fabs(sum);
            for (int64_t kk = 0; kk < pb->kn; kk++) {
                /* packed K index -> a's column */
                const int64_t pk = pb->k0 + kk;
                const int64_t col = taps > 1 ? (pk % channels) * taps + pk / channels : pk;
                const float bv = segmented ? rows[kk][(j / pb->seg_w) * seg_stride + j % pb->seg_w]
                                           : b[kk * ldb + j];
                const double t = (double)a[(pb->m0 + i) * lda + col] * bv;
                sum += t;
                mag += fabs(t);
            }
            float want = (float)sum;
            if (pb->ep_kind) {
                if (ep.bias) mag += fabs(bias[i]);
                want = clamp_ref((float)(sum + (ep.bias ? bias[i] : 0.0)), &ep);
            }
            const double err = fabs((double)got - want);
            if (!same(got, want, 1e-5 * mag + 1e-6)) {
                fprintf(stderr, "  %s: C[%lld][%lld] = %.7g, want %.7g\n", what, (long long)i,
                        (long long)j, got, want);
                bad++;
            }
            if (err > worst) worst = err;
        }
    if (bad) {
        failed++;
        fprintf(stderr,
                "FAIL %s: m %lld k %lld taps %lld rows [%lld,+%lld) k [%lld,+%lld) n %lld "
                "ldb +%lld ldc +%lld seg %lld acc %d ep %d\n",
                what, (long long)m, (long long)k, (long long)taps, (long long)pb->m0,
                (long long)pb->mn, (long long)pb->k0, (long long)pb->kn, (long long)n,
                (long long)pb->pad_b, (long long)pb->pad_c, (long long)pb->seg_w, pb->accumulate,
                pb->ep_kind);
    } else {
        passed++;
    }
    free(a);
    free(packed);
    free(b);
    free(rows);
    free(c);
    free(c0);
    free(bias);
    free(scratch);
}

/* A whole-matrix problem: rows [0, m), K [0, k). */
static problem whole(int64_t m, int64_t n, int64_t k)
{
    return (problem){.m = m, .k = k, .taps = 1, .m0 = 0, .mn = m, .k0 = 0, .kn = k, .n = n};
}

/* A random problem; sizes drawn around the edges more often than not. */
static problem random_problem(void)
{
    static const int64_t edgy[] = {1, 2, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32, 33,
                                   47, 48, 49, 63, 64, 65, 95, 96, 97, 143, 144, 145};
    const int n_edgy = (int)(sizeof edgy / sizeof edgy[0]);
    problem pb = {0};
    pb.m = rng() % 2 ? edgy[rnd(0, n_edgy - 1)] : rnd(1, 80);
    pb.n = rng() % 2 ? edgy[rnd(0, n_edgy - 1)] : rnd(1, 200);
    pb.taps = rng() % 3 ? 1 : rnd(2, 9);
    const int64_t channels = rng() % 4 ? rnd(1, 40) : rnd(40, 120);
    pb.k = channels * pb.taps;
    pb.m0 = rng() % 2 ? 0 : rnd(0, pb.m - 1);
    if (rng() % 2) pb.m0 -= pb.m0 % MK_SGEMM_MR;
    pb.mn = rnd(1, pb.m - pb.m0);
    if (rng() % 2) pb.mn = pb.m - pb.m0;
    /* Half the time a run of whole taps, as conv asks for. */
    if (pb.taps > 1 && rng() % 2) {
        const int64_t t0 = rnd(0, pb.taps - 1);
        pb.k0 = t0 * channels;
        pb.kn = rnd(1, pb.taps - t0) * channels;
    } else {
        pb.k0 = rnd(0, pb.k - 1);
        pb.kn = rnd(0, pb.k - pb.k0);
    }
    pb.pad_b = rng() % 2 ? 0 : rnd(1, 20);
    pb.pad_c = rng() % 2 ? 0 : rnd(1, 20);
    pb.accumulate = rng() % 2;
    pb.ep_kind = (int)rnd(0, 4);
    if (rng() % 3 == 0) pb.seg_w = rng() % 2 ? rnd(1, 20) : rnd(1, pb.n + 5);
    return pb;
}

int main(int argc, char **argv)
{
    if (argc > 1) rng_state = strtoull(argv[1], NULL, 0) | 1;
    const int cases = argc > 2 ? atoi(argv[2]) : 600;
    printf("sgemm kernel: %s\n", mk_isa_name(mk_cpu_level()));

    /* Every (m, n) around the panel edges with a K that crosses a KC block. */
    const int64_t ms[] = {1, 7, 8, 9, 16, 17, 24};
    const int64_t ns[] = {1, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32, 33, 47, 48, 49, 64, 65, 97};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
        for (size_t j = 0; j < sizeof ns / sizeof ns[0]; j++) {
            problem pb = whole(ms[i], ns[j], 3);
            check("edges k=3", &pb);
            pb = whole(ms[i], ns[j], 600);
            pb.ep_kind = 3;
            check("edges k=600", &pb);
        }
    /* K deep enough for several KC blocks, with a K range inside it. */
    problem deep = whole(40, 100, 1100);
    check("deep", &deep);
    deep.k0 = 123;
    deep.kn = 777;
    deep.accumulate = true;
    deep.ep_kind = 4;
    check("deep k range", &deep);
    /* Empty products: n = 0 and mn = 0 do nothing, K = 0 zeroes or keeps C
     * and still applies the epilogue. */
    problem empty = whole(9, 0, 5);
    check("n=0", &empty);
    empty = whole(9, 10, 5);
    empty.mn = 0;
    check("mn=0", &empty);
    for (int kind = 0; kind <= 4; kind++)
        for (int acc = 0; acc < 2; acc++) {
            problem pb = whole(11, 20, 5);
            pb.kn = 0;
            pb.k0 = 5;
            pb.accumulate = acc;
            pb.ep_kind = kind;
            check("k=0", &pb);
        }
    /* B as windows of planes: segments shorter and longer than a vector,
     * one column wide, and one segment holding every column. */
    const int64_t seg_ws[] = {1, 5, 8, 12, 16, 17, 40, 100, 200};
    for (size_t i = 0; i < sizeof seg_ws / sizeof seg_ws[0]; i++) {
        problem pb = whole(17, 100, 290);
        pb.seg_w = seg_ws[i];
        pb.pad_b = 3;
        pb.ep_kind = 1;
        check("segments", &pb);
    }
    /* N across several column blocks (NC = 240), plain and in segments that
     * straddle the blocks' edges. */
    const int64_t wide_ns[] = {239, 240, 241, 480, 481, 700};
    const int64_t wide_segs[] = {0, 7, 17, 240, 250};
    for (size_t i = 0; i < sizeof wide_ns / sizeof wide_ns[0]; i++)
        for (size_t j = 0; j < sizeof wide_segs / sizeof wide_segs[0]; j++) {
            problem pb = whole(11, wide_ns[i], 270);
            pb.seg_w = wide_segs[j];
            pb.pad_b = 2;
            pb.pad_c = 1;
            pb.accumulate = j % 2;
            pb.ep_kind = (int)(i % 5);
            check("wide", &pb);
        }
    /* One column of B streams the panels whole, gathering B in chunks of
     * 4096: K past two chunks, inside a row and a K range, C accumulated. */
    problem column = whole(37, 1, 9000);
    column.m0 = 3;
    column.mn = 30;
    column.k0 = 100;
    column.kn = 8500;
    column.accumulate = true;
    column.ep_kind = 4;
    column.pad_b = 2;
    check("one column", &column);
    column.seg_w = 1;
    column.accumulate = false;
    column.ep_kind = 1;
    check("one column, rows by pointer", &column);

    /* Conv's weight order: taps after channels in a, before them in K. */
    problem conv = whole(24, 50, 9 * 13);
    conv.taps = 9;
    check("taps", &conv);
    conv.k0 = 13 * 4;
    conv.kn = 13 * 3;
    conv.m0 = 5;
    conv.mn = 14;
    check("taps range", &conv);

    for (int i = 0; i < cases; i++) {
        problem pb = random_problem();
        check("random", &pb);
    }

    /* The epilogue's NaN rules are those of the Relu and Clip ops. */
    {
        float packed[MK_SGEMM_MR] = {0}, b = 1.0f, c[2] = {0};
        void *scratch_f = malloc(mk_sgemm_scratch_bytes(1));
        const float a = NAN;
        mk_sgemm_pack_a(&a, 1, 1, 1, 1, packed);
        const mk_packed_a pa = {packed, 1, 1};
        mk_sgemm_epilogue relu = {NULL, MK_SGEMM_CLAMP_RELU, 0, 0};
        mk_sgemm_epilogue clip = {NULL, MK_SGEMM_CLAMP_CLIP, -1, 1};
        mk_sgemm_packed(&pa, 0, 1, 0, 1, &b, 1, 1, &c[0], 1, false, &relu, scratch_f);
        mk_sgemm_packed(&pa, 0, 1, 0, 1, &b, 1, 1, &c[1], 1, false, &clip, scratch_f);
        free(scratch_f);
        if (c[0] == 0.0f && isnan(c[1])) {
            passed++;
        } else {
            failed++;
            fprintf(stderr, "FAIL NaN: relu gave %g (want 0), clip %g (want nan)\n", c[0], c[1]);
        }
    }

    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
