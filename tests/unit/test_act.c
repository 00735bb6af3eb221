/*
 * The fused activations' span kernels (kernels/act.c, act_simd.h) and the
 * softmax row kernels, against double-precision references, at whichever
 * level MASKD_CPU selects: every length from 1 to 40 (the vector tails) and
 * a few long ones, in place and out of place, with NaN, infinities and
 * signed zeros among the arguments.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mk.h"
#include "kernels/kernels.h"
#include "../check.h"

static double clamp01(double v) { return v < 0 ? 0 : v > 1 ? 1 : v; }

static double reference(const mk_act_spec *a, double v)
{
    switch ((mk_act)a->act) {
    case MK_ACT_RELU: return v > 0 ? v : 0;
    case MK_ACT_CLIP: return v < a->alpha ? a->alpha : v > a->beta ? a->beta : v;
    case MK_ACT_LEAKY_RELU: return v < 0 ? a->alpha * v : v;
    case MK_ACT_SIGMOID: return 1 / (1 + exp(-v));
    case MK_ACT_HARD_SIGMOID: return clamp01(a->alpha * v + a->beta);
    case MK_ACT_HARD_SWISH: return v * clamp01(v / 6 + 0.5);
    case MK_ACT_SILU: return v / (1 + exp(-v));
    case MK_ACT_TANH: return tanh(v);
    case MK_ACT_ERF: return erf(v);
    case MK_ACT_EXP: return exp(v);
    default: return v;
    }
}

/* Arguments from -lim to lim with a spread of magnitudes, and the specials
 * where there is room for them. */
static void arguments(float *x, int n, float lim)
{
    for (int i = 0; i < n; i++) {
        double t = n > 1 ? (double)i / (n - 1) : 0.5;
        x[i] = (float)(lim * (2 * t - 1) * (i % 3 == 0 ? 1e-3 : 1));
    }
    if (n >= 6) {
        x[1] = NAN;
        x[2] = INFINITY;
        x[3] = -INFINITY;
        x[4] = -0.0f;
        x[5] = 1e-30f;
    }
}

/* Whether y is within `ulps` units in the last place of the reference r,
 * or within `floor` of it (NaN for NaN, the same infinity, the sign of an
 * exact zero). */
static int close_to(float y, double r, double ulps, double floor)
{
    if (isnan(r)) return isnan(y);
    /* Past FLT_MAX plus half its ulp a float result rounds to infinity. */
    if (fabs(r) >= (double)FLT_MAX + ldexp(1.0, 103)) return isinf(y) && (y > 0) == (r > 0);
    if (fabs(y - r) <= floor) return 1;
    if (r == 0) return y == 0 && !signbit(y) == !signbit(r);
    /* A float's unit in the last place at r's magnitude (subnormals: 2^-149). */
    const double unit = fabs(r) < FLT_MIN ? ldexp(1.0, -149) : ldexp(1.0, ilogb(r) - 23);
    return fabs(y - r) <= ulps * unit;
}

static void test_spans(void)
{
    /* floor: an absolute error allowed beside the ulps.  The hard ones
     * compute alpha * x + beta in float, which cancels near their kinks (a
     * few ulp of beta); Sigmoid's exponential saturates at e^88, so its
     * smallest results are 6e-39, not below. */
    static const struct {
        mk_act_spec spec;
        const char *name;
        double ulps, floor;
    } acts[] = {
        {{MK_ACT_RELU, 0, 0}, "Relu", 0, 0},
        {{MK_ACT_CLIP, -1.5f, 2.25f}, "Clip", 0, 0},
        {{MK_ACT_LEAKY_RELU, 0.1f, 0}, "LeakyRelu", 0.5, 0},
        {{MK_ACT_SIGMOID, 0, 0}, "Sigmoid", 4, 1e-38},
        {{MK_ACT_HARD_SIGMOID, 0.2f, 0.5f}, "HardSigmoid", 1, 2 * FLT_EPSILON},
        {{MK_ACT_HARD_SWISH, 0, 0}, "HardSwish", 2, 8 * FLT_EPSILON},
        {{MK_ACT_SILU, 0, 0}, "SiLU", 4, 1e-36},
        {{MK_ACT_TANH, 0, 0}, "Tanh", 4, 0},
        {{MK_ACT_ERF, 0, 0}, "Erf", 4, 0},
        {{MK_ACT_EXP, 0, 0}, "Exp", 4, 0},
    };
    static const int long_lengths[] = {255, 256, 257, 4099};
    enum { MAX_N = 4099 };
    float *x = malloc(MAX_N * sizeof *x), *y = malloc(MAX_N * sizeof *y),
          *z = malloc(MAX_N * sizeof *z);
    for (size_t a = 0; a < sizeof acts / sizeof acts[0]; a++) {
        CHECK(mk_act_span_supports(acts[a].spec.act), "%s has a span kernel", acts[a].name);
        int bad = 0;
        for (int k = 0; k < 40 + 4; k++) {
            const int n = k < 40 ? k + 1 : long_lengths[k - 40];
            const float lim = acts[a].spec.act == MK_ACT_ERF ? 6.0f
                              : acts[a].spec.act == MK_ACT_EXP ? 110.0f : 20.0f;
            arguments(x, n, lim);
            mk_act_map(x, y, n, &acts[a].spec);
            memcpy(z, x, (size_t)n * sizeof *z);
            mk_act_span(z, n, &acts[a].spec);
            for (int i = 0; i < n && bad < 3; i++) {
                /* SiLU fuses Mul(x, Sigmoid(x)), which at -inf is -inf * (Sigmoid's
                 * 6e-39 floor): -inf, where the limit is 0. */
                if (acts[a].spec.act == MK_ACT_SILU && isinf(x[i])) continue;
                double r = reference(&acts[a].spec, x[i]);
                if (!close_to(y[i], r, acts[a].ulps, acts[a].floor) ||
                    memcmp(&y[i], &z[i], sizeof y[i])) {
                    printf("  %s(%.9g) = %.9g in place %.9g, want %.9g (n %d)\n", acts[a].name,
                           x[i], y[i], z[i], r, n);
                    bad++;
                }
            }
        }
        CHECK(!bad, "%s within %.1f ulp at every length, in place and not", acts[a].name,
              acts[a].ulps);
    }
    free(x);
    free(y);
    free(z);
}

static void test_softmax_kernels(void)
{
    enum { MAX_N = 3001 };
    float *x = malloc(MAX_N * sizeof *x), *y = malloc(MAX_N * sizeof *y);
    int bad = 0;
    for (int n = 1; n <= MAX_N && bad < 3; n += n < 40 ? 1 : 487) {
        for (int i = 0; i < n; i++) x[i] = (float)(30 * sin(i * 0.37) - 5);
        float want_max = -INFINITY;
        for (int i = 0; i < n; i++) want_max = x[i] > want_max ? x[i] : want_max;
        const float max = mk_max_span(x, n);
        double sum = mk_exp_sum_span(x, y, n, max), want_sum = 0;
        int ok = max == want_max;
        for (int i = 0; i < n; i++) {
            double r = exp((double)(x[i] - max)); /* the difference rounds to float first */
            want_sum += y[i];
            if (!close_to(y[i], r, 2, 0) && !(r < 1.6e-38 && y[i] == 0)) { /* below e^-87: 0 */
                if (ok) printf("  e^(%.9g - %.9g) = %.9g, want %.9g\n", x[i], max, y[i], r);
                ok = 0;
            }
        }
        ok &= fabs(sum - want_sum) <= 1e-6 * want_sum;
        if (!ok) {
            printf("  softmax row of %d: max %g (want %g), sum %.9g (want %.9g)\n", n, max,
                   want_max, sum, want_sum);
            bad++;
        }
    }
    CHECK(!bad, "softmax max and exp-sum kernels at every length");
    x[0] = NAN;
    x[1] = 2.0f;
    CHECK(mk_max_span(x, 2) == 2.0f, "max skips NaN, as the scalar comparison does");
    free(x);
    free(y);
}

int main(void)
{
    test_spans();
    test_softmax_kernels();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
