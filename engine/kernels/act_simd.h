/*
 * The fused activations (mk_act_spec) on one value and on AVX2 / AVX-512
 * vectors, inline for the kernels that apply them as they store (depthwise)
 * and for mk_act_span (kernels/act.c).  One arithmetic for all: the scalar
 * form is ops/activation.c's, the vector forms make the same comparisons in
 * the same order, so fused, unfused and portable runs agree.
 */
#ifndef MK_ACT_SIMD_H
#define MK_ACT_SIMD_H

#include "../mk.h"
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MK_ACT_X86 1
#endif

static inline float mk_act_scalar(float v, const mk_act_spec *ep)
{
    switch ((mk_act)ep->act) {
    case MK_ACT_RELU: return v > 0.0f ? v : 0.0f;
    case MK_ACT_CLIP: {
        const float c = v < ep->alpha ? ep->alpha : v;
        return c > ep->beta ? ep->beta : c;
    }
    case MK_ACT_LEAKY_RELU: return v < 0.0f ? ep->alpha * v : v;
    case MK_ACT_HARD_SIGMOID: {
        float h = ep->alpha * v + ep->beta;
        h = h < 0.0f ? 0.0f : h;
        return h > 1.0f ? 1.0f : h;
    }
    case MK_ACT_HARD_SWISH: {
        float h = v * (1.0f / 6.0f) + 0.5f;
        h = h < 0.0f ? 0.0f : h;
        h = h > 1.0f ? 1.0f : h;
        return v * h;
    }
    default: return v;
    }
}

#ifdef MK_ACT_X86
/* The activation on a vector, with mk_act_scalar's comparisons (NaN included:
 * max/min return their second operand on NaN). */
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) __m256 act8(__m256 v, const mk_act_spec *ep)
{
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    switch ((mk_act)ep->act) {
    case MK_ACT_RELU: return _mm256_max_ps(v, zero);
    case MK_ACT_CLIP:
        return _mm256_min_ps(_mm256_set1_ps(ep->beta), _mm256_max_ps(_mm256_set1_ps(ep->alpha), v));
    case MK_ACT_LEAKY_RELU:
        return _mm256_blendv_ps(v, _mm256_mul_ps(_mm256_set1_ps(ep->alpha), v),
                                _mm256_cmp_ps(v, zero, _CMP_LT_OQ));
    case MK_ACT_HARD_SIGMOID: {
        const __m256 h = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(ep->alpha), v),
                                       _mm256_set1_ps(ep->beta));
        return _mm256_min_ps(one, _mm256_max_ps(zero, h));
    }
    case MK_ACT_HARD_SWISH: {
        const __m256 h = _mm256_add_ps(_mm256_mul_ps(v, _mm256_set1_ps(1.0f / 6.0f)),
                                       _mm256_set1_ps(0.5f));
        return _mm256_mul_ps(v, _mm256_min_ps(one, _mm256_max_ps(zero, h)));
    }
    default: return v;
    }
}

/* The same on sixteen lanes. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static inline
    __attribute__((always_inline)) __m512 act16(__m512 v, const mk_act_spec *ep)
{
    const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
    switch ((mk_act)ep->act) {
    case MK_ACT_RELU: return _mm512_max_ps(v, zero);
    case MK_ACT_CLIP:
        return _mm512_min_ps(_mm512_set1_ps(ep->beta), _mm512_max_ps(_mm512_set1_ps(ep->alpha), v));
    case MK_ACT_LEAKY_RELU:
        return _mm512_mask_mul_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ),
                                  _mm512_set1_ps(ep->alpha), v);
    case MK_ACT_HARD_SIGMOID: {
        const __m512 h = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(ep->alpha), v),
                                       _mm512_set1_ps(ep->beta));
        return _mm512_min_ps(one, _mm512_max_ps(zero, h));
    }
    case MK_ACT_HARD_SWISH: {
        const __m512 h = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.0f / 6.0f)),
                                       _mm512_set1_ps(0.5f));
        return _mm512_mul_ps(v, _mm512_min_ps(one, _mm512_max_ps(zero, h)));
    }
    default: return v;
    }
}
#endif

#endif
