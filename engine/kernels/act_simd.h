/*
 * The fused activations (mk_act_spec) on one value and on AVX2 / AVX-512
 * vectors, inline for the kernels that apply them as they store (depthwise)
 * and for mk_act_span (kernels/act.c).  One arithmetic for all: the vector
 * forms make the scalar ones' comparisons in the same order and the same
 * operations (Sigmoid's exponential included), so fused, unfused and portable
 * runs agree, up to the rounding of a multiply-add the compiler may fuse.
 */
#ifndef MK_ACT_SIMD_H
#define MK_ACT_SIMD_H

#include <stdint.h>
#include <string.h>

#include "../mk.h"
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MK_ACT_X86 1
#endif

/*
 * e^x where only moderate arguments matter: Sigmoid (through e^-x) and
 * Softmax (through e^(x - max) <= 1).  e^x = 2^n * e^r with n = round(x /
 * ln 2), |r| <= ln2/2, and e^r by its Taylor series to r^7; measured error at
 * most 1.5 ulp.  2^n must stay a normal float, so arguments below -87 give 0
 * (e^-87 is 1.6e-38) and those above 88 give e^88, which neither user can
 * observe at float precision.  NaN propagates.  exp8 and exp16 below do the
 * same arithmetic on vectors.
 */
enum { MK_EXP_DEGREE = 7 };
#define MK_EXP_LOG2E 1.44269504088896341f
/* ln 2 split so that n * ln2_hi is exact for |n| < 2^9. */
#define MK_EXP_LN2_HI 0.693359375f
#define MK_EXP_LN2_LO -2.12194440054690583e-4f
/* Adding 1.5 * 2^23 rounds to an integer without a libm call. */
#define MK_EXP_ROUND 12582912.0f

/* e^r for v = n ln2 + r, |r| <= ln2/2: the polynomial, with n in *n. */
static inline float mk_exp_reduced(float v, float *n_out)
{
    const float n = (v * MK_EXP_LOG2E + MK_EXP_ROUND) - MK_EXP_ROUND;
    const float r = (v - n * MK_EXP_LN2_HI) - n * MK_EXP_LN2_LO;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    *n_out = n;
    return p * r * r + r + 1.0f;
}

static inline float mk_exp_scalar(float x)
{
    float v = x > -87.0f ? x : -87.0f; /* also maps NaN to -87 */
    v = v < 88.0f ? v : 88.0f;
    float n;
    const float p = mk_exp_reduced(v, &n);
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float y = x < -87.0f ? 0.0f : p * scale;
    return x == x ? y : x;
}

/*
 * e^x over the whole float range, for the Exp op: mk_exp_scalar's reduction
 * and polynomial with n allowed from -150 to 129, and 2^n applied as two
 * factors 2^(n/2) and 2^(n - n/2), each a normal float, so that results
 * overflow to infinity above 88.72 and go subnormal below -87.3 as they
 * should.  exp_full8 and exp_full16 do the same on vectors.
 */
static inline float mk_exp_full_scalar(float x)
{
    float v = x > -104.0f ? x : -104.0f; /* e^-104 rounds to 0; NaN maps to -104 */
    v = v < 89.0f ? v : 89.0f;           /* e^89 overflows */
    float n;
    const float p = mk_exp_reduced(v, &n);
    const int32_t n1 = (int32_t)n >> 1, n2 = (int32_t)n - n1;
    int32_t b1 = (n1 + 127) << 23, b2 = (n2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    return x == x ? p * s1 * s2 : x;
}

/*
 * tanh(x) = sign(x) * t(|x|): below |x| = 0.35 its Taylor series to x^13 (the
 * next term is under 3e-10 there), above it 1 - 2 / (1 + e^2|x|), which would
 * cancel near 0; at most a few ulp from the true value.  Past |x| = 44 the
 * exponential's clamp still gives exactly 1.  tanh8 and tanh16 do the same
 * arithmetic on vectors.
 */
#define MK_TANH_SERIES_BELOW 0.35f
#define MK_TANH_C13 (21844.0f / 6081075)
#define MK_TANH_C11 (-1382.0f / 155925)
#define MK_TANH_C9 (62.0f / 2835)
#define MK_TANH_C7 (-17.0f / 315)
#define MK_TANH_C5 (2.0f / 15)
#define MK_TANH_C3 (-1.0f / 3)

static inline float mk_tanh_scalar(float x)
{
    const float a = x < 0.0f ? -x : x;
    float t;
    if (a < MK_TANH_SERIES_BELOW) {
        const float a2 = a * a;
        float p = MK_TANH_C13;
        p = p * a2 + MK_TANH_C11;
        p = p * a2 + MK_TANH_C9;
        p = p * a2 + MK_TANH_C7;
        p = p * a2 + MK_TANH_C5;
        p = p * a2 + MK_TANH_C3;
        t = a + a * a2 * p;
    } else {
        t = 1.0f - 2.0f / (1.0f + mk_exp_scalar(2.0f * a)); /* NaN stays NaN */
    }
    return x < 0.0f || (x == 0.0f && 1.0f / x < 0.0f) ? -t : t;
}

/*
 * erf(x) = sign(x) * e(|x|): below |x| = 0.5 its Taylor series to x^13 (the
 * next term is under 5e-10 there); above it 1 - erfc, with erfc(a) = t *
 * e^(P(t) - a^2), t = 1 / (1 + a/2) and P the degree-9 Chebyshev fit of
 * Numerical Recipes' erfcc (fractional error under 1.2e-7).  erf8 and erf16
 * do the same on vectors.
 */
#define MK_ERF_SERIES_BELOW 0.5f
#define MK_ERF_TWO_OVER_SQRT_PI 1.12837916709551257f
static const float mk_erf_series[] = {1.0f / 9360, -1.0f / 1320, 1.0f / 216, -1.0f / 42,
                                      1.0f / 10, -1.0f / 3};
static const float mk_erfc_fit[] = {0.17087277f, -0.82215223f, 1.48851587f, -1.13520398f,
                                    0.27886807f, -0.18628806f, 0.09678418f, 0.37409196f,
                                    1.00002368f, -1.26551223f};

static inline float mk_erf_scalar(float x)
{
    const float a = x < 0.0f ? -x : x;
    float e;
    if (a < MK_ERF_SERIES_BELOW) {
        const float a2 = a * a;
        float p = mk_erf_series[0];
        for (int i = 1; i < 6; i++) p = p * a2 + mk_erf_series[i];
        e = MK_ERF_TWO_OVER_SQRT_PI * (a + a * a2 * p);
    } else {
        const float t = 1.0f / (1.0f + 0.5f * a);
        float p = mk_erfc_fit[0];
        for (int i = 1; i < 10; i++) p = p * t + mk_erfc_fit[i];
        e = 1.0f - t * mk_exp_scalar(p - a * a); /* NaN stays NaN */
    }
    return x < 0.0f || (x == 0.0f && 1.0f / x < 0.0f) ? -e : e;
}

static inline float mk_act_scalar(float v, const mk_act_spec *ep)
{
    switch ((mk_act)ep->act) {
    case MK_ACT_RELU: return v > 0.0f ? v : 0.0f;
    case MK_ACT_CLIP: {
        const float c = v < ep->alpha ? ep->alpha : v;
        return c > ep->beta ? ep->beta : c;
    }
    case MK_ACT_LEAKY_RELU: return v < 0.0f ? ep->alpha * v : v;
    case MK_ACT_SIGMOID: return 1.0f / (1.0f + mk_exp_scalar(-v));
    case MK_ACT_SILU: return v * (1.0f / (1.0f + mk_exp_scalar(-v)));
    case MK_ACT_TANH: return mk_tanh_scalar(v);
    case MK_ACT_ERF: return mk_erf_scalar(v);
    case MK_ACT_EXP: return mk_exp_full_scalar(v);
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
/* mk_exp_reduced on 8 lanes. */
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) __m256 exp_reduced8(__m256 v, __m256 *n_out)
{
    const __m256 round = _mm256_set1_ps(MK_EXP_ROUND);
    const __m256 n = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(v, _mm256_set1_ps(MK_EXP_LOG2E)), round), round);
    const __m256 r = _mm256_sub_ps(_mm256_sub_ps(v, _mm256_mul_ps(n, _mm256_set1_ps(MK_EXP_LN2_HI))),
                               _mm256_mul_ps(n, _mm256_set1_ps(MK_EXP_LN2_LO)));
    __m256 p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f / 720));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f / 120));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f / 24));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f / 6));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(0.5f));
    *n_out = n;
    return _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), r), _mm256_set1_ps(1.0f));
}

/* mk_exp_scalar on eight lanes. */
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) __m256 exp8(__m256 x)
{
    /* max/min return their second operand on NaN: NaN becomes -87, as above */
    __m256 v = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    v = _mm256_min_ps(v, _mm256_set1_ps(88.0f));
    __m256 n;
    const __m256 p = exp_reduced8(v, &n);
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    y = _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ), y);
    return _mm256_blendv_ps(x, y, _mm256_cmp_ps(x, x, _CMP_ORD_Q));
}

/* mk_exp_reduced on 16 lanes. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static inline __attribute__((always_inline)) __m512 exp_reduced16(__m512 v, __m512 *n_out)
{
    const __m512 round = _mm512_set1_ps(MK_EXP_ROUND);
    const __m512 n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(MK_EXP_LOG2E)), round), round);
    const __m512 r = _mm512_sub_ps(_mm512_sub_ps(v, _mm512_mul_ps(n, _mm512_set1_ps(MK_EXP_LN2_HI))),
                               _mm512_mul_ps(n, _mm512_set1_ps(MK_EXP_LN2_LO)));
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f / 720));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f / 120));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f / 24));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f / 6));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(0.5f));
    *n_out = n;
    return _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r), _mm512_set1_ps(1.0f));
}

/* mk_exp_scalar on sixteen lanes. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static inline
    __attribute__((always_inline)) __m512 exp16(__m512 x)
{
    __m512 v = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    v = _mm512_min_ps(v, _mm512_set1_ps(88.0f));
    __m512 n;
    const __m512 p = exp_reduced16(v, &n);
    const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
    __m512 y = _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
    y = _mm512_maskz_mov_ps(~_mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ), y);
    return _mm512_mask_mov_ps(x, _mm512_cmp_ps_mask(x, x, _CMP_ORD_Q), y);
}

/* mk_exp_full_scalar on eight lanes. */
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) __m256 exp_full8(__m256 x)
{
    __m256 v = _mm256_max_ps(x, _mm256_set1_ps(-104.0f));
    v = _mm256_min_ps(v, _mm256_set1_ps(89.0f));
    __m256 n;
    const __m256 p = exp_reduced8(v, &n);
    const __m256i ni = _mm256_cvttps_epi32(n), n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    return _mm256_blendv_ps(x, _mm256_mul_ps(_mm256_mul_ps(p, s1), s2), _mm256_cmp_ps(x, x, _CMP_ORD_Q));
}

/* The same on sixteen lanes. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static inline
    __attribute__((always_inline)) __m512 exp_full16(__m512 x)
{
    __m512 v = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    v = _mm512_min_ps(v, _mm512_set1_ps(89.0f));
    __m512 n;
    const __m512 p = exp_reduced16(v, &n);
    const __m512i ni = _mm512_cvttps_epi32(n), n1 = _mm512_srai_epi32(ni, 1), n2 = _mm512_sub_epi32(ni, n1);
    const __m512i bias = _mm512_set1_epi32(127);
    const __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n1, bias), 23));
    const __m512 s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n2, bias), 23));
    return _mm512_mask_mov_ps(x, _mm512_cmp_ps_mask(x, x, _CMP_ORD_Q), _mm512_mul_ps(_mm512_mul_ps(p, s1), s2));
}

/* mk_tanh_scalar on eight lanes: both forms, then the one its |x| selects. */
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) __m256 tanh8(__m256 x)
{
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    const __m256 a = _mm256_andnot_ps(sign, x), a2 = _mm256_mul_ps(a, a);
    __m256 p = _mm256_set1_ps(MK_TANH_C13);
    p = _mm256_add_ps(_mm256_mul_ps(p, a2), _mm256_set1_ps(MK_TANH_C11));
    p = _mm256_add_ps(_mm256_mul_ps(p, a2), _mm256_set1_ps(MK_TANH_C9));
    p = _mm256_add_ps(_mm256_mul_ps(p, a2), _mm256_set1_ps(MK_TANH_C7));
    p = _mm256_add_ps(_mm256_mul_ps(p, a2), _mm256_set1_ps(MK_TANH_C5));
    p = _mm256_add_ps(_mm256_mul_ps(p, a2), _mm256_set1_ps(MK_TANH_C3));
    const __m256 series = _mm256_add_ps(a, _mm256_mul_ps(_mm256_mul_ps(a, a2), p));
    const __m256 e = exp8(_mm256_add_ps(a, a));
    const __m256 far = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(one, e)));
    const __m256 t = _mm256_blendv_ps(far, series,
                                      _mm256_cmp_ps(a, _mm256_set1_ps(MK_TANH_SERIES_BELOW), _CMP_LT_OQ));
    return _mm256_or_ps(t, _mm256_and_ps(sign, x));
}

/* The same on sixteen lanes. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static inline
    __attribute__((always_inline)) __m512 tanh16(__m512 x)
{
    const __m512 sign = _mm512_set1_ps(-0.0f), one = _mm512_set1_ps(1.0f);
    const __m512 a = _mm512_andnot_ps(sign, x), a2 = _mm512_mul_ps(a, a);
    __m512 p = _mm512_set1_ps(MK_TANH_C13);
    p = _mm512_add_ps(_mm512_mul_ps(p, a2), _mm512_set1_ps(MK_TANH_C11));
    p = _mm512_add_ps(_mm512_mul_ps(p, a2), _mm512_set1_ps(MK_TANH_C9));
    p = _mm512_add_ps(_mm512_mul_ps(p, a2), _mm512_set1_ps(MK_TANH_C7));
    p = _mm512_add_ps(_mm512_mul_ps(p, a2), _mm512_set1_ps(MK_TANH_C5));
    p = _mm512_add_ps(_mm512_mul_ps(p, a2), _mm512_set1_ps(MK_TANH_C3));
    const __m512 series = _mm512_add_ps(a, _mm512_mul_ps(_mm512_mul_ps(a, a2), p));
    const __m512 e = exp16(_mm512_add_ps(a, a));
    const __m512 far = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(one, e)));
    const __m512 t = _mm512_mask_mov_ps(
        far, _mm512_cmp_ps_mask(a, _mm512_set1_ps(MK_TANH_SERIES_BELOW), _CMP_LT_OQ), series);
    return _mm512_or_ps(t, _mm512_and_ps(sign, x));
}

/* mk_erf_scalar on eight lanes: both forms, then the one its |x| selects. */
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) __m256 erf8(__m256 x)
{
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    const __m256 a = _mm256_andnot_ps(sign, x), a2 = _mm256_mul_ps(a, a);
    __m256 p = _mm256_set1_ps(mk_erf_series[0]);
    for (int i = 1; i < 6; i++) p = _mm256_add_ps(_mm256_mul_ps(p, a2), _mm256_set1_ps(mk_erf_series[i]));
    const __m256 series = _mm256_mul_ps(_mm256_set1_ps(MK_ERF_TWO_OVER_SQRT_PI),
                                        _mm256_add_ps(a, _mm256_mul_ps(_mm256_mul_ps(a, a2), p)));
    const __m256 t = _mm256_div_ps(one, _mm256_add_ps(one, _mm256_mul_ps(_mm256_set1_ps(0.5f), a)));
    __m256 q = _mm256_set1_ps(mk_erfc_fit[0]);
    for (int i = 1; i < 10; i++) q = _mm256_add_ps(_mm256_mul_ps(q, t), _mm256_set1_ps(mk_erfc_fit[i]));
    const __m256 far = _mm256_sub_ps(one, _mm256_mul_ps(t, exp8(_mm256_sub_ps(q, a2))));
    const __m256 e = _mm256_blendv_ps(far, series,
                                      _mm256_cmp_ps(a, _mm256_set1_ps(MK_ERF_SERIES_BELOW), _CMP_LT_OQ));
    return _mm256_or_ps(e, _mm256_and_ps(sign, x));
}

/* The same on sixteen lanes. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static inline
    __attribute__((always_inline)) __m512 erf16(__m512 x)
{
    const __m512 sign = _mm512_set1_ps(-0.0f), one = _mm512_set1_ps(1.0f);
    const __m512 a = _mm512_andnot_ps(sign, x), a2 = _mm512_mul_ps(a, a);
    __m512 p = _mm512_set1_ps(mk_erf_series[0]);
    for (int i = 1; i < 6; i++) p = _mm512_add_ps(_mm512_mul_ps(p, a2), _mm512_set1_ps(mk_erf_series[i]));
    const __m512 series = _mm512_mul_ps(_mm512_set1_ps(MK_ERF_TWO_OVER_SQRT_PI),
                                        _mm512_add_ps(a, _mm512_mul_ps(_mm512_mul_ps(a, a2), p)));
    const __m512 t = _mm512_div_ps(one, _mm512_add_ps(one, _mm512_mul_ps(_mm512_set1_ps(0.5f), a)));
    __m512 q = _mm512_set1_ps(mk_erfc_fit[0]);
    for (int i = 1; i < 10; i++) q = _mm512_add_ps(_mm512_mul_ps(q, t), _mm512_set1_ps(mk_erfc_fit[i]));
    const __m512 far = _mm512_sub_ps(one, _mm512_mul_ps(t, exp16(_mm512_sub_ps(q, a2))));
    const __m512 e = _mm512_mask_mov_ps(
        far, _mm512_cmp_ps_mask(a, _mm512_set1_ps(MK_ERF_SERIES_BELOW), _CMP_LT_OQ), series);
    return _mm512_or_ps(e, _mm512_and_ps(sign, x));
}

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
    case MK_ACT_SIGMOID:
    case MK_ACT_SILU: {
        const __m256 s =
            _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_xor_ps(v, _mm256_set1_ps(-0.0f)))));
        return ep->act == MK_ACT_SILU ? _mm256_mul_ps(v, s) : s;
    }
    case MK_ACT_TANH: return tanh8(v);
    case MK_ACT_ERF: return erf8(v);
    case MK_ACT_EXP: return exp_full8(v);
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
    case MK_ACT_SIGMOID:
    case MK_ACT_SILU: {
        const __m512 s =
            _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_xor_ps(v, _mm512_set1_ps(-0.0f)))));
        return ep->act == MK_ACT_SILU ? _mm512_mul_ps(v, s) : s;
    }
    case MK_ACT_TANH: return tanh16(v);
    case MK_ACT_ERF: return erf16(v);
    case MK_ACT_EXP: return exp_full16(v);
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
