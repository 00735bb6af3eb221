/*
 * mk_act_span: a fused activation over a span of floats, in place, with the
 * vector forms of act_simd.h picked once from mk_cpu_level().  Before it the
 * activations went through one plain loop, which the compiler left scalar
 * for HardSwish; as a conv epilogue over a whole map that cost more than
 * the separate ops it replaced.  The same kernels serve the elementwise ops
 * that are activations too (Sigmoid, Tanh, Erf, Exp, HardSwish, HardSigmoid:
 * mk_act_map, out of place); Softmax's passes (mk_max_span, mk_exp_sum_span)
 * share their exponential.
 */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "act_simd.h"

bool mk_act_span_supports(int act)
{
    switch ((mk_act)act) {
    case MK_ACT_NONE:
    case MK_ACT_RELU:
    case MK_ACT_CLIP:
    case MK_ACT_LEAKY_RELU:
    case MK_ACT_SIGMOID:
    case MK_ACT_HARD_SIGMOID:
    case MK_ACT_HARD_SWISH:
    case MK_ACT_SILU:
    case MK_ACT_TANH:
    case MK_ACT_ERF:
    case MK_ACT_EXP: return true;
    default: return false;
    }
}

/* y = act(x) over n floats (y may be x). */
static void span_portable(const float *x, float *y, int64_t n, const mk_act_spec *a)
{
    for (int64_t i = 0; i < n; i++) y[i] = mk_act_scalar(x[i], a);
}

#ifdef MK_ACT_X86
__attribute__((target("avx2,fma"))) static void span_avx2(const float *x, float *y, int64_t n,
                                                          const mk_act_spec *a)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, act8(_mm256_loadu_ps(x + i), a));
    span_portable(x + i, y + i, n - i, a);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static void
span_avx512(const float *x, float *y, int64_t n, const mk_act_spec *a)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, act16(_mm512_loadu_ps(x + i), a));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, m, act16(_mm512_maskz_loadu_ps(m, x + i), a));
    }
}
#endif

/* ---- softmax rows -------------------------------------------------------- */

/* Float lanes add at most this many terms each before their sum goes into a
 * double (as ops/norm.c's statistics): wide vectors, no precision lost on
 * long rows. */
enum { SUM_BLOCK = 256 };

static float max_portable(const float *x, int64_t n)
{
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

static double exp_sum_portable(const float *x, float *y, int64_t n, float shift)
{
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        y[i] = mk_exp_scalar(x[i] - shift);
        sum += y[i];
    }
    return sum;
}

#ifdef MK_ACT_X86
__attribute__((target("avx2,fma"))) static float max_avx2(const float *x, int64_t n)
{
    __m256 m = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) m = _mm256_max_ps(_mm256_loadu_ps(x + i), m);
    float lanes[8];
    _mm256_storeu_ps(lanes, m);
    float r = max_portable(x + i, n - i);
    for (int k = 0; k < 8; k++) r = lanes[k] > r ? lanes[k] : r;
    return r;
}

__attribute__((target("avx2,fma"))) static double exp_sum_avx2(const float *x, float *y, int64_t n,
                                                               float shift)
{
    const __m256 s = _mm256_set1_ps(shift);
    double sum = 0.0;
    int64_t i = 0;
    while (i + 8 <= n) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t end = i + SUM_BLOCK < n ? i + SUM_BLOCK : n; i + 8 <= end; i += 8) {
            const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
            _mm256_storeu_ps(y + i, e);
            acc = _mm256_add_ps(acc, e);
        }
        float lanes[8];
        _mm256_storeu_ps(lanes, acc);
        for (int k = 0; k < 8; k++) sum += lanes[k];
    }
    return sum + exp_sum_portable(x + i, y + i, n - i, shift);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static float max_avx512(const float *x,
                                                                                   int64_t n)
{
    __m512 m = _mm512_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) m = _mm512_max_ps(_mm512_loadu_ps(x + i), m);
    float lanes[16];
    _mm512_storeu_ps(lanes, m);
    float r = max_portable(x + i, n - i);
    for (int k = 0; k < 16; k++) r = lanes[k] > r ? lanes[k] : r;
    return r;
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static double
exp_sum_avx512(const float *x, float *y, int64_t n, float shift)
{
    const __m512 s = _mm512_set1_ps(shift);
    double sum = 0.0;
    int64_t i = 0;
    while (i + 16 <= n) {
        __m512 acc = _mm512_setzero_ps();
        for (int64_t end = i + SUM_BLOCK < n ? i + SUM_BLOCK : n; i + 16 <= end; i += 16) {
            const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), s));
            _mm512_storeu_ps(y + i, e);
            acc = _mm512_add_ps(acc, e);
        }
        float lanes[16];
        _mm512_storeu_ps(lanes, acc);
        for (int k = 0; k < 16; k++) sum += lanes[k];
    }
    return sum + exp_sum_portable(x + i, y + i, n - i, shift);
}
#endif

/* ---- dispatch ------------------------------------------------------------ */

/* The kernels for the CPU, picked once from mk_cpu_level(). */
static struct {
    void (*span)(const float *x, float *y, int64_t n, const mk_act_spec *a);
    float (*max)(const float *x, int64_t n);
    double (*exp_sum)(const float *x, float *y, int64_t n, float shift);
} kernels = {span_portable, max_portable, exp_sum_portable};
static pthread_once_t kernels_once = PTHREAD_ONCE_INIT;

static void pick_kernels(void)
{
#ifdef MK_ACT_X86
    switch (mk_cpu_level()) {
    case MK_ISA_AVX512:
        kernels.span = span_avx512, kernels.max = max_avx512, kernels.exp_sum = exp_sum_avx512;
        break;
    case MK_ISA_AVX2:
        kernels.span = span_avx2, kernels.max = max_avx2, kernels.exp_sum = exp_sum_avx2;
        break;
    default: break;
    }
#endif
}

void mk_act_map(const float *x, float *y, int64_t n, const mk_act_spec *a)
{
    if (n <= 0) return;
    if (a->act == MK_ACT_NONE) {
        if (x != y) memmove(y, x, (size_t)n * sizeof *y);
        return;
    }
    pthread_once(&kernels_once, pick_kernels);
    kernels.span(x, y, n, a);
}

void mk_act_span(float *x, int64_t n, const mk_act_spec *a) { mk_act_map(x, x, n, a); }

float mk_max_span(const float *x, int64_t n)
{
    pthread_once(&kernels_once, pick_kernels);
    return kernels.max(x, n);
}

double mk_exp_sum_span(const float *x, float *y, int64_t n, float shift)
{
    pthread_once(&kernels_once, pick_kernels);
    return kernels.exp_sum(x, y, n, shift);
}
