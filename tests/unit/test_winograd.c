/*
 * Winograd F(4x4, 3x3) (kernels/winograd.c) against a direct 3x3 conv
 * accumulated in double, on maps from 1x1 up, odd sizes, dilations 1 to 13,
 * pads from none (valid) through same to asymmetric and past the kernel,
 * with the tiles cut in spans and blocks, the input channels of a span's
 * transform in two calls and the output channels in chunks as conv's items
 * cut them, bias or none, ReLU, Clip and a post pass.  Runs the
 * transforms that the CPU and MASKD_CPU select (it prints which); ctest runs
 * it at every level.
 *
 * Winograd's error grows with the transforms' constants (up to 8 in A^T,
 * 5 in B^T) and follows the magnitudes of the whole tile, not of one
 * output's terms (an output whose taps all fall in padding is the sum of
 * terms that cancel): a result passes when within 2e-5 of the largest sum
 * of the magnitudes of the terms of the outputs up to a tile away, where
 * the im2col path is held to 1e-5 of its own sum (test_conv.c).  It prints
 * the largest error seen in those units.
 *
 *     test_winograd [seed] [random-cases]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../engine/kernels/kernels.h"
#include "../../engine/mk.h"

#define TEST_RNG_SEED 0x2545f4914f6cdd1dull
#include "test_random.h"

static int passed, failed;
static double worst; /* largest |error| / (magnitude sum + 1) seen */

enum { TOL_UNITS = 2 }; /* x 1e-5 */

typedef struct wcase {
    int64_t cin, cout, in_h, in_w, dil_h, dil_w;
    int64_t pt, pl, pb, pr; /* pads: top, left, bottom, right */
    int64_t span, chunk;    /* tiles per input transform, output channels per call */
    bool bias;
    int act;                /* 0 none, 1 relu, 2 clip, 3 post (x2) */
    int64_t block;          /* tiles per output call (0: the span) */
} wcase;

static void double_it(float *v, int64_t n, const void *arg)
{
    (void)arg;
    for (int64_t i = 0; i < n; i++) v[i] *= 2.0f;
}

static void run_case(const wcase *wc)
{
    const int64_t out_h = wc->in_h + wc->pt + wc->pb - 2 * wc->dil_h;
    const int64_t out_w = wc->in_w + wc->pl + wc->pr - 2 * wc->dil_w;
    if (out_h < 1 || out_w < 1) return;
    float *x = random_floats(wc->cin * wc->in_h * wc->in_w);
    float *w = random_floats(wc->cout * wc->cin * 9);
    float *b = random_floats(wc->cout);
    float *y = malloc((size_t)(wc->cout * out_h * out_w) * sizeof *y);
    for (int64_t i = 0; i < wc->cout * out_h * out_w; i++) y[i] = NAN; /* all must be written */
    float *u = mk_aligned_alloc(mk_winograd_u_floats(wc->cout, wc->cin) * sizeof *u);
    mk_winograd_pack_u(w, wc->cout, wc->cin, u);
    bool ok = true;

    mk_winograd_geom g;
    mk_winograd_axis_init(&g.h, wc->in_h, out_h, wc->pt, wc->dil_h);
    mk_winograd_axis_init(&g.w, wc->in_w, out_w, wc->pl, wc->dil_w);
    const int64_t tiles = g.h.tiles * g.w.tiles;
    const int64_t block = wc->block ? wc->block : wc->span;
    float *v = mk_aligned_alloc(mk_winograd_v_floats(wc->cin, wc->span) * sizeof *v);
    void *scratch = mk_aligned_alloc(mk_winograd_output_bytes(wc->chunk, block));
    for (int64_t t0 = 0; t0 < tiles; t0 += wc->span) {
        const int64_t nt = t0 + wc->span < tiles ? wc->span : tiles - t0;
        /* Two threads' channel ranges, the second first. */
        const int64_t cut = wc->cin / 3;
        mk_winograd_input(x, wc->cin, cut, wc->cin - cut, &g, t0, nt, v);
        mk_winograd_input(x, wc->cin, 0, cut, &g, t0, nt, v);
        for (int64_t m0 = 0; m0 < wc->cout; m0 += wc->chunk) {
            const int64_t mn = m0 + wc->chunk < wc->cout ? wc->chunk : wc->cout - m0;
            const mk_winograd_store st = {
                .bias = wc->bias ? b + m0 : NULL,
                .clamp = wc->act == 1 ? MK_SGEMM_CLAMP_RELU
                         : wc->act == 2 ? MK_SGEMM_CLAMP_CLIP
                                        : MK_SGEMM_CLAMP_NONE,
                .lo = -0.5f,
                .hi = 0.75f,
                .post = wc->act == 3 ? double_it : NULL,
            };
            for (int64_t j0 = 0; j0 < nt; j0 += block)
                mk_winograd_output(v, wc->cin, nt, j0, j0 + block < nt ? block : nt - j0, u, wc->cout, m0,
                                   mn, &g, t0, &st, y + m0 * out_h * out_w, scratch);
        }
    }

    int64_t bad = -1;
    double bad_got = 0, bad_want = 0;
    const int64_t plane = out_h * out_w;
    double *want = malloc((size_t)(wc->cout * plane) * sizeof *want);
    double *mags = malloc((size_t)(wc->cout * plane) * sizeof *mags);
    for (int64_t o = 0; o < wc->cout; o++)
        for (int64_t oh = 0; oh < out_h; oh++)
            for (int64_t ow = 0; ow < out_w; ow++) {
                double acc = wc->bias ? b[o] : 0.0, mag = wc->bias ? fabs(b[o]) : 0.0;
                for (int64_t c = 0; c < wc->cin; c++)
                    for (int kh = 0; kh < 3; kh++)
                        for (int kw = 0; kw < 3; kw++) {
                            const int64_t ih = oh - wc->pt + kh * wc->dil_h;
                            const int64_t iw = ow - wc->pl + kw * wc->dil_w;
                            if (ih < 0 || ih >= wc->in_h || iw < 0 || iw >= wc->in_w) continue;
                            const double t = (double)x[(c * wc->in_h + ih) * wc->in_w + iw] *
                                             w[((o * wc->cin + c) * 3 + kh) * 3 + kw];
                            acc += t;
                            mag += fabs(t);
                        }
                if (wc->act == 1) acc = acc > 0 ? acc : 0;
                if (wc->act == 2) acc = acc < -0.5 ? -0.5 : acc > 0.75 ? 0.75 : acc;
                if (wc->act == 3) acc *= 2, mag *= 2;
                want[o * plane + oh * out_w + ow] = acc;
                mags[o * plane + oh * out_w + ow] = mag;
            }
    const int64_t reach_h = (MK_WINO_OUT - 1) * wc->dil_h, reach_w = (MK_WINO_OUT - 1) * wc->dil_w;
    for (int64_t o = 0; o < wc->cout && ok; o++)
        for (int64_t oh = 0; oh < out_h && ok; oh++)
            for (int64_t ow = 0; ow < out_w; ow++) {
                double mag = 0;
                for (int64_t h = oh - reach_h; h <= oh + reach_h; h++)
                    for (int64_t v = ow - reach_w; v <= ow + reach_w; v++)
                        if (h >= 0 && h < out_h && v >= 0 && v < out_w &&
                            mags[o * plane + h * out_w + v] > mag)
                            mag = mags[o * plane + h * out_w + v];
                const int64_t at = o * plane + oh * out_w + ow;
                const float got = y[at];
                const double err = fabs((double)got - want[at]) / (mag + 1.0);
                if (err > worst) worst = err;
                if (!(err <= TOL_UNITS * 1e-5)) {
                    bad = at;
                    bad_got = got;
                    bad_want = want[at];
                    ok = false;
                    break;
                }
            }
    free(want);
    free(mags);
    if (!ok)
        printf("FAIL cin %lld cout %lld in %lldx%lld dil %lldx%lld pads %lld,%lld,%lld,%lld "
               "span %lld block %lld chunk %lld bias %d act %d: element %lld got %.7g want %.7g\n",
               (long long)wc->cin, (long long)wc->cout, (long long)wc->in_h,
               (long long)wc->in_w, (long long)wc->dil_h, (long long)wc->dil_w,
               (long long)wc->pt, (long long)wc->pl, (long long)wc->pb, (long long)wc->pr,
               (long long)wc->span, (long long)block, (long long)wc->chunk, wc->bias, wc->act, (long long)bad,
               bad_got, bad_want);
    if (ok) passed++;
    else failed++;
    free(x);
    free(w);
    free(b);
    free(y);
    mk_aligned_free(u);
    mk_aligned_free(scratch);
    mk_aligned_free(v);
}

static wcase random_case(void)
{
    static const int64_t maps[] = {1, 2, 3, 4, 5, 7, 8, 9, 13, 14, 17, 28, 33};
    const int64_t n_maps = (int64_t)(sizeof maps / sizeof maps[0]);
    wcase wc;
    memset(&wc, 0, sizeof wc);
    wc.cin = rnd(1, 40);
    wc.cout = rnd(1, 40);
    wc.in_h = maps[rnd(0, n_maps - 1)];
    wc.in_w = maps[rnd(0, n_maps - 1)];
    /* Dilations up to 4 mostly, and some of DeepLab's ASPP rates' size
     * (sub-grids of one or two tiles a side). */
    wc.dil_h = rng() % 4 ? rnd(1, 4) : rnd(5, 13);
    wc.dil_w = rng() % 2 ? wc.dil_h : rnd(1, 4);
    const int pads = (int)(rng() % 4); /* same, valid, asymmetric, big */
    const int64_t ph = wc.dil_h, pw = wc.dil_w;
    wc.pt = pads == 0 ? ph : pads == 1 ? 0 : pads == 2 ? rnd(0, ph) : rnd(0, 2 * ph + 2);
    wc.pb = pads == 0 ? ph : pads == 1 ? 0 : pads == 2 ? rnd(0, ph) : rnd(0, 2 * ph + 2);
    wc.pl = pads == 0 ? pw : pads == 1 ? 0 : pads == 2 ? rnd(0, pw) : rnd(0, 2 * pw + 2);
    wc.pr = pads == 0 ? pw : pads == 1 ? 0 : pads == 2 ? rnd(0, pw) : rnd(0, 2 * pw + 2);
    /* A map smaller than the dilated kernel needs pads to have an output. */
    while (wc.in_h + wc.pt + wc.pb < 2 * wc.dil_h + 1) wc.pb++;
    while (wc.in_w + wc.pl + wc.pr < 2 * wc.dil_w + 1) wc.pr++;
    static const int64_t blocks[] = {1, 7, 16, 17, 32, 48, 96};
    wc.span = blocks[rnd(0, 6)];
    wc.block = rng() % 2 ? 0 : blocks[rnd(0, 6)];
    wc.chunk = rng() % 2 ? wc.cout : rnd(1, wc.cout);
    wc.bias = rng() % 3 != 0;
    wc.act = (int)(rng() % 4);
    return wc;
}

int main(int argc, char **argv)
{
    if (argc > 1) rng_state = strtoull(argv[1], NULL, 0) | 1;
    const int count = argc > 2 ? atoi(argv[2]) : 300;
    /* Fixed corners: a 1x1 map (every tile mostly padding), ResNet's 14x14
     * and 7x7 with same pads, DeepLab's dilations on a map that is not a
     * multiple of them (one with a span of many blocks), a wide K for the
     * sgemm's K blocks. */
    const wcase fixed[] = {
        {8, 8, 1, 1, 1, 1, 1, 1, 1, 1, 16, 8, true, 1, 0},
        {32, 24, 14, 14, 1, 1, 1, 1, 1, 1, 16, 8, true, 0, 0},
        {16, 40, 7, 7, 1, 1, 1, 1, 1, 1, 96, 40, false, 1, 0},
        {24, 16, 30, 29, 2, 2, 2, 2, 2, 2, 240, 16, true, 1, 32},
        {16, 16, 33, 31, 4, 4, 4, 4, 4, 4, 48, 16, true, 2, 16},
        {300, 9, 13, 17, 1, 1, 1, 1, 1, 1, 16, 9, true, 3, 0},
        {5, 7, 5, 7, 3, 2, 0, 0, 0, 0, 16, 3, true, 0, 0},
        {20, 17, 33, 30, 12, 12, 12, 12, 12, 12, 48, 17, true, 1, 16},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) run_case(&fixed[i]);
    for (int i = 0; i < count; i++) {
        const wcase wc = random_case();
        run_case(&wc);
    }
    printf("winograd (cpu level %s): %d passed, %d failed; worst error %.3g x (magnitude + 1)\n",
           mk_isa_name(mk_cpu_level()), passed, failed, worst);
    return failed ? 1 : 0;
}
