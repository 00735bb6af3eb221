/*
 * mk_act_span: a fused activation over a span of floats, in place, with the
 * vector forms of act_simd.h picked once from mk_cpu_level().  Before it the
 * activations went through one plain loop, which the compiler left scalar
 * for HardSwish; as a conv epilogue over a whole map that cost more than
 * the separate ops it replaced.
 */
#include <pthread.h>

#include "act_simd.h"

bool mk_act_span_supports(int act)
{
    switch ((mk_act)act) {
    case MK_ACT_NONE:
    case MK_ACT_RELU:
    case MK_ACT_CLIP:
    case MK_ACT_LEAKY_RELU:
    case MK_ACT_HARD_SIGMOID:
    case MK_ACT_HARD_SWISH: return true;
    default: return false;
    }
}

static void span_portable(float *x, int64_t n, const mk_act_spec *a)
{
    for (int64_t i = 0; i < n; i++) x[i] = mk_act_scalar(x[i], a);
}

#ifdef MK_ACT_X86
__attribute__((target("avx2,fma"))) static void span_avx2(float *x, int64_t n,
                                                          const mk_act_spec *a)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, act8(_mm256_loadu_ps(x + i), a));
    for (; i < n; i++) x[i] = mk_act_scalar(x[i], a);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static void
span_avx512(float *x, int64_t n, const mk_act_spec *a)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, act16(_mm512_loadu_ps(x + i), a));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(x + i, m, act16(_mm512_maskz_loadu_ps(m, x + i), a));
    }
}
#endif

typedef void (*span_fn)(float *x, int64_t n, const mk_act_spec *a);
static span_fn span_kernel = span_portable;
static pthread_once_t span_once = PTHREAD_ONCE_INIT;

static void pick_span_kernel(void)
{
#ifdef MK_ACT_X86
    switch (mk_cpu_level()) {
    case MK_ISA_AVX512: span_kernel = span_avx512; break;
    case MK_ISA_AVX2: span_kernel = span_avx2; break;
    default: break;
    }
#endif
}

void mk_act_span(float *x, int64_t n, const mk_act_spec *a)
{
    if (a->act == MK_ACT_NONE || n <= 0) return;
    pthread_once(&span_once, pick_span_kernel);
    span_kernel(x, n, a);
}
