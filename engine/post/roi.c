/*
 * ROI Align (single map and FPN levels) and ROI Pooling.
 *
 * Bilinear sampling is separable: a sample's four taps and weights are the
 * products of a row table (y_low, y_high, ly, hy) and a column table
 * (x_low, x_high, lx, hx) that depend only on the ROI.  Each ROI computes
 * those two small tables once and every channel reuses them (design §7).
 *
 * Two channel layouts serve the inner loop.  When the ROIs sample the map
 * densely enough to repay a transposition, the map is copied once to
 * channels-last (NHWC) and each tap becomes a contiguous run of C floats, so
 * the per-sample work is a handful of vector multiply-adds over channels.
 * Otherwise the taps are read in place from the NCHW map, channel stride
 * H*W.  Both give the same sums in the same order per channel.
 *
 * The arithmetic that places samples follows torchvision's roi_align
 * expression by expression (float), so results agree to rounding.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "../mk.h"
#include "maskd/post.h"

/* ---- validation ------------------------------------------------------------- */

static int check_features(const maskd_tensor *x, const char *what, mk_error *err)
{
    if (!x || x->dtype != MASKD_FLOAT || x->ndim != 4)
        return mk_fail(err, MASKD_ERR_INVALID, "%s: features must be a float [N,C,H,W] tensor",
                       what);
    for (int d = 0; d < 4; d++)
        if (x->dims[d] < 0)
            return mk_fail(err, MASKD_ERR_INVALID, "%s: negative feature dimension", what);
    if (x->dims[2] > INT32_MAX / (x->dims[3] ? x->dims[3] : 1))
        return mk_fail(err, MASKD_ERR_INVALID, "%s: feature map too large", what);
    if (mk_numel(x) > 0 && !x->data)
        return mk_fail(err, MASKD_ERR_INVALID, "%s: features have no data", what);
    return MASKD_OK;
}

static int check_rois(const float *rois, const int64_t *batch, int64_t n, int64_t n_images,
                      const char *what, mk_error *err)
{
    if (n < 0) return mk_fail(err, MASKD_ERR_INVALID, "%s: negative ROI count", what);
    if (n > 0 && !rois) return mk_fail(err, MASKD_ERR_INVALID, "%s: ROIs are required", what);
    for (int64_t r = 0; r < n; r++) {
        const float *b = rois + 4 * r;
        if (!isfinite(b[0]) || !isfinite(b[1]) || !isfinite(b[2]) || !isfinite(b[3]))
            return mk_fail(err, MASKD_ERR_INVALID, "%s: ROI %lld has a non-finite coordinate",
                           what, (long long)r);
        int64_t bi = batch ? batch[r] : 0;
        if (bi < 0 || bi >= n_images)
            return mk_fail(err, MASKD_ERR_INVALID,
                           "%s: ROI %lld refers to image %lld of a batch of %lld", what,
                           (long long)r, (long long)bi, (long long)n_images);
    }
    return MASKD_OK;
}

/* ---- ROI geometry -------------------------------------------------------------- */

typedef struct roi_geom {
    float start_h, start_w, bin_h, bin_w;
    int64_t grid_h, grid_w; /* samples per bin along each axis; <= 0: none */
} roi_geom;

static roi_geom geometry(const float *roi, float scale, const maskd_roi_align_options *o)
{
    roi_geom g;
    float offset = o->aligned ? 0.5f : 0.0f;
    g.start_w = roi[0] * scale - offset;
    g.start_h = roi[1] * scale - offset;
    float end_w = roi[2] * scale - offset;
    float end_h = roi[3] * scale - offset;
    float roi_w = end_w - g.start_w;
    float roi_h = end_h - g.start_h;
    if (!o->aligned) {
        /* torchvision's aligned=False stretches malformed ROIs to 1x1. */
        roi_w = roi_w > 1.0f ? roi_w : 1.0f;
        roi_h = roi_h > 1.0f ? roi_h : 1.0f;
    }
    g.bin_h = roi_h / (float)o->pooled_h;
    g.bin_w = roi_w / (float)o->pooled_w;
    if (o->sampling_ratio > 0) {
        g.grid_h = g.grid_w = o->sampling_ratio;
    } else {
        float gh = ceilf(roi_h / (float)o->pooled_h);
        float gw = ceilf(roi_w / (float)o->pooled_w);
        /* Clamp before converting; absurd grids are rejected by the caller. */
        g.grid_h = gh > 0 ? (gh < 1e9f ? (int64_t)gh : 1000000000) : 0;
        g.grid_w = gw > 0 ? (gw < 1e9f ? (int64_t)gw : 1000000000) : 0;
    }
    return g;
}

/* One axis of bilinear sampling: for sample s along the axis, the two taps
 * and their weights; `valid` 0 when the sample lies outside [-1, size]. */
typedef struct axis_tap {
    int32_t lo, hi;
    float l, h; /* weight of hi, weight of lo */
    int valid;
} axis_tap;

static void axis_table(float start, float bin, int64_t pooled, int64_t grid, int64_t size,
                       axis_tap *tab)
{
    for (int64_t p = 0; p < pooled; p++)
        for (int64_t i = 0; i < grid; i++) {
            float v = start + (float)p * bin + ((float)i + 0.5f) * bin / (float)grid;
            axis_tap *t = &tab[p * grid + i];
            if (!(v >= -1.0f && v <= (float)size)) {
                *t = (axis_tap){0, 0, 0.0f, 0.0f, 0};
                continue;
            }
            if (v <= 0) v = 0;
            int32_t lo = (int32_t)v, hi;
            if (lo >= size - 1) {
                hi = lo = (int32_t)(size - 1);
                v = (float)lo;
            } else {
                hi = lo + 1;
            }
            float l = v - (float)lo;
            *t = (axis_tap){lo, hi, l, 1.0f - l, 1};
        }
}

/* ---- the per-ROI kernel ---------------------------------------------------------- */

typedef struct align_job {
    const float *data;      /* NCHW map, or its NHWC copy when nhwc */
    int nhwc;
    int64_t C, H, W;
    const float *rois;
    const int64_t *batch;
    const int64_t *ids;     /* ROI numbers to process (NULL: 0..n-1) */
    float scale;
    const maskd_roi_align_options *opt;
    float *out;
    /* per-slot scratch */
    axis_tap **ytab, **xtab;
    float **acc;            /* [bins * C] (NHWC) */
} align_job;

static inline float max4(float a, float b, float c, float d)
{
    float ab = a > b ? a : b, cd = c > d ? c : d;
    return ab > cd ? ab : cd;
}

/* acc[c] <- combine(acc[c], sample value) for one sample of one bin with
 * the four taps at f1..f4, channel stride cs. */
static inline void accumulate(float *restrict acc, int64_t C, int64_t cs,
                              const float *f1, const float *f2, const float *f3,
                              const float *f4, float w1, float w2, float w3, float w4,
                              maskd_roi_mode mode)
{
    if (mode == MASKD_ROI_AVG) {
        for (int64_t c = 0; c < C; c++)
            acc[c] += w1 * f1[c * cs] + w2 * f2[c * cs] + w3 * f3[c * cs] + w4 * f4[c * cs];
    } else if (mode == MASKD_ROI_MAX) {
        for (int64_t c = 0; c < C; c++) {
            float v = w1 * f1[c * cs] + w2 * f2[c * cs] + w3 * f3[c * cs] + w4 * f4[c * cs];
            acc[c] = acc[c] > v ? acc[c] : v;
        }
    } else {
        for (int64_t c = 0; c < C; c++) {
            float v = max4(w1 * f1[c * cs], w2 * f2[c * cs], w3 * f3[c * cs], w4 * f4[c * cs]);
            acc[c] = acc[c] > v ? acc[c] : v;
        }
    }
}

/* The NHWC inner loops, contiguous over channels: kept apart so the
 * compiler vectorizes them without a stride. */
static inline void accumulate_nhwc(float *restrict acc, int64_t C, const float *restrict f1,
                                   const float *restrict f2, const float *restrict f3,
                                   const float *restrict f4, float w1, float w2, float w3,
                                   float w4, maskd_roi_mode mode)
{
    if (mode == MASKD_ROI_AVG) {
        for (int64_t c = 0; c < C; c++)
            acc[c] += w1 * f1[c] + w2 * f2[c] + w3 * f3[c] + w4 * f4[c];
    } else if (mode == MASKD_ROI_MAX) {
        for (int64_t c = 0; c < C; c++) {
            float v = w1 * f1[c] + w2 * f2[c] + w3 * f3[c] + w4 * f4[c];
            acc[c] = acc[c] > v ? acc[c] : v;
        }
    } else {
        for (int64_t c = 0; c < C; c++) {
            float v = max4(w1 * f1[c], w2 * f2[c], w3 * f3[c], w4 * f4[c]);
            acc[c] = acc[c] > v ? acc[c] : v;
        }
    }
}

/* The per-ROI work is a few vector multiply-adds per sample and channel:
 * worth an AVX2+FMA build beside the portable one, picked at load time. */
MK_TARGET_CLONES("arch=x86-64-v3", "default")
static void align_one(const align_job *j, int64_t r, int slot)
{
    const maskd_roi_align_options *o = j->opt;
    const int64_t C = j->C, H = j->H, W = j->W, PH = o->pooled_h, PW = o->pooled_w;
    const int64_t bins = PH * PW;
    float *out = j->out + r * C * bins;
    roi_geom g = geometry(j->rois + 4 * r, j->scale, o);
    if (g.grid_h <= 0 || g.grid_w <= 0 || C == 0) {
        /* No sample points (a ROI thinner than a bin under aligned=1). */
        memset(out, 0, sizeof(float) * (size_t)(C * bins));
        return;
    }
    axis_tap *ytab = j->ytab[slot], *xtab = j->xtab[slot];
    axis_table(g.start_h, g.bin_h, PH, g.grid_h, H, ytab);
    axis_table(g.start_w, g.bin_w, PW, g.grid_w, W, xtab);
    const float count = (float)(g.grid_h * g.grid_w);
    const maskd_roi_mode mode = o->mode;
    const int64_t b = j->batch ? j->batch[r] : 0;
    const float *img = j->data + b * C * H * W;
    /* A sample outside the map is worth 0: it adds nothing to a mean and
     * takes part in a max as 0. */
    const float init = mode == MASKD_ROI_AVG ? 0.0f : -INFINITY;

    for (int64_t ph = 0; ph < PH; ph++)
        for (int64_t pw = 0; pw < PW; pw++) {
            const int64_t bin = ph * PW + pw;
            float *acc;
            int64_t cs;
            if (j->nhwc) {
                acc = j->acc[slot] + bin * C;
                cs = 1;
            } else {
                acc = j->acc[slot];
                cs = H * W;
            }
            for (int64_t c = 0; c < C; c++) acc[c] = init;
            bool any_outside = false;
            for (int64_t iy = 0; iy < g.grid_h; iy++) {
                const axis_tap *ty = &ytab[ph * g.grid_h + iy];
                for (int64_t ix = 0; ix < g.grid_w; ix++) {
                    const axis_tap *tx = &xtab[pw * g.grid_w + ix];
                    if (!ty->valid || !tx->valid) {
                        any_outside = true;
                        continue;
                    }
                    float w1 = ty->h * tx->h, w2 = ty->h * tx->l;
                    float w3 = ty->l * tx->h, w4 = ty->l * tx->l;
                    int64_t p1 = (int64_t)ty->lo * W + tx->lo, p2 = (int64_t)ty->lo * W + tx->hi;
                    int64_t p3 = (int64_t)ty->hi * W + tx->lo, p4 = (int64_t)ty->hi * W + tx->hi;
                    if (j->nhwc)
                        accumulate_nhwc(acc, C, img + p1 * C, img + p2 * C, img + p3 * C,
                                        img + p4 * C, w1, w2, w3, w4, mode);
                    else
                        accumulate(acc, C, cs, img + p1, img + p2, img + p3, img + p4, w1, w2,
                                   w3, w4, mode);
                }
            }
            if (mode == MASKD_ROI_AVG) {
                for (int64_t c = 0; c < C; c++) acc[c] /= count;
            } else if (any_outside) {
                for (int64_t c = 0; c < C; c++) acc[c] = acc[c] > 0.0f ? acc[c] : 0.0f;
            }
            if (!j->nhwc)
                for (int64_t c = 0; c < C; c++) out[c * bins + bin] = acc[c];
        }
    if (j->nhwc) {
        const float *acc = j->acc[slot];
        for (int64_t c = 0; c < C; c++)
            for (int64_t bin = 0; bin < bins; bin++) out[c * bins + bin] = acc[bin * C + c];
    }
}

static void align_range(void *arg, int64_t begin, int64_t end, int slot)
{
    const align_job *j = arg;
    for (int64_t k = begin; k < end; k++) align_one(j, j->ids ? j->ids[k] : k, slot);
}

/* ---- NCHW -> NHWC ------------------------------------------------------------------- */

typedef struct transpose_job {
    const float *src;
    float *dst;
    int64_t C, HW;
} transpose_job;

static void transpose_range(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const transpose_job *t = arg;
    /* Items are (image, block of 64 pixels); each block reads 64 floats of
     * every channel and writes 64 contiguous rows of C. */
    int64_t blocks = (t->HW + 63) / 64;
    for (int64_t k = begin; k < end; k++) {
        int64_t n = k / blocks, p0 = (k % blocks) * 64;
        int64_t p1 = p0 + 64 < t->HW ? p0 + 64 : t->HW;
        const float *src = t->src + n * t->C * t->HW;
        float *dst = t->dst + n * t->C * t->HW;
        for (int64_t c = 0; c < t->C; c++)
            for (int64_t p = p0; p < p1; p++) dst[p * t->C + c] = src[c * t->HW + p];
    }
}

/* ---- driver -------------------------------------------------------------------------- */

static int check_align_options(const maskd_roi_align_options *o, const char *what,
                               mk_error *err)
{
    if (!o) return mk_fail(err, MASKD_ERR_INVALID, "%s: options are required", what);
    if (o->pooled_h < 1 || o->pooled_w < 1 || o->pooled_h > 4096 || o->pooled_w > 4096)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "%s: output size %lldx%lld must be between 1 and 4096", what,
                       (long long)o->pooled_h, (long long)o->pooled_w);
    if (o->sampling_ratio < 0 || o->sampling_ratio > 1024)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "%s: sampling_ratio %lld must be in [0, 1024] (0 = adaptive)", what,
                       (long long)o->sampling_ratio);
    if ((unsigned)o->mode > MASKD_ROI_MAX_ONNX)
        return mk_fail(err, MASKD_ERR_INVALID, "%s: unknown pooling mode %d", what,
                       (int)o->mode);
    return MASKD_OK;
}

/* Per-ROI sample tables beyond this many entries mean a ROI thousands of
 * times the feature map's size: refuse rather than loop for minutes. */
enum { MAX_SAMPLES_PER_ROI = 1 << 26 };

/* Pools ROIs ids[0..n) (or 0..n) of rois at `scale` from one map. */
static int align_core(const maskd_tensor *x, const float *rois, const int64_t *batch,
                      const int64_t *ids, int64_t n, float scale,
                      const maskd_roi_align_options *o, float *out, mk_pool *pool,
                      const char *what, mk_error *err)
{
    if (n == 0) return MASKD_OK;
    if (!(scale > 0) || !isfinite(scale))
        return mk_fail(err, MASKD_ERR_INVALID, "%s: spatial_scale %g must be > 0", what,
                       (double)scale);
    const int64_t N = x->dims[0], C = x->dims[1], H = x->dims[2], W = x->dims[3];
    const int64_t bins = o->pooled_h * o->pooled_w;
    if (C == 0) return MASKD_OK;
    if (H == 0 || W == 0) {
        /* Every sample is outside an empty map. */
        for (int64_t k = 0; k < n; k++)
            memset(out + (ids ? ids[k] : k) * C * bins, 0, sizeof(float) * (size_t)(C * bins));
        return MASKD_OK;
    }

    int64_t max_gh = 0, max_gw = 0;
    double samples = 0;
    for (int64_t k = 0; k < n; k++) {
        int64_t r = ids ? ids[k] : k;
        roi_geom g = geometry(rois + 4 * r, scale, o);
        if (g.grid_h <= 0 || g.grid_w <= 0) continue;
        if ((double)g.grid_h * g.grid_w * bins > MAX_SAMPLES_PER_ROI)
            return mk_fail(err, MASKD_ERR_INVALID,
                           "%s: ROI %lld needs %lldx%lld samples per bin; it is far larger "
                           "than the feature map (use a fixed sampling_ratio)",
                           what, (long long)r, (long long)g.grid_h, (long long)g.grid_w);
        if (g.grid_h > max_gh) max_gh = g.grid_h;
        if (g.grid_w > max_gw) max_gw = g.grid_w;
        samples += (double)g.grid_h * g.grid_w * bins;
    }
    /* The transposition reads and writes the map once; reading taps in
     * place costs a cache miss per channel once the map outgrows the cache.
     * Transpose when the ROIs sample about as many points as the map has. */
    int nhwc = C > 1 && samples * 4 >= (double)N * H * W;

    const int slots = mk_pool_slots(pool);
    align_job j = {
        .data = x->data, .nhwc = nhwc, .C = C, .H = H, .W = W, .rois = rois,
        .batch = batch, .ids = ids, .scale = scale, .opt = o, .out = out,
    };
    int rc = MASKD_OK;
    float *copy = NULL;
    j.ytab = calloc((size_t)slots, sizeof *j.ytab);
    j.xtab = calloc((size_t)slots, sizeof *j.xtab);
    j.acc = calloc((size_t)slots, sizeof *j.acc);
    if (!j.ytab || !j.xtab || !j.acc) {
        rc = mk_fail(err, MASKD_ERR_NOMEM, "%s: out of memory", what);
        goto done;
    }
    size_t acc_floats = (size_t)(nhwc ? bins * C : C);
    for (int s = 0; s < slots; s++) {
        j.ytab[s] = malloc(sizeof(axis_tap) * (size_t)(o->pooled_h * (max_gh ? max_gh : 1)));
        j.xtab[s] = malloc(sizeof(axis_tap) * (size_t)(o->pooled_w * (max_gw ? max_gw : 1)));
        j.acc[s] = malloc(sizeof(float) * acc_floats);
        if (!j.ytab[s] || !j.xtab[s] || !j.acc[s]) {
            rc = mk_fail(err, MASKD_ERR_NOMEM, "%s: out of memory", what);
            goto done;
        }
    }
    if (nhwc) {
        copy = mk_aligned_alloc(sizeof(float) * (size_t)(N * C * H * W));
        if (!copy) {
            rc = mk_fail(err, MASKD_ERR_NOMEM, "%s: out of memory", what);
            goto done;
        }
        transpose_job t = {x->data, copy, C, H * W};
        mk_parallel_for(pool, N * ((H * W + 63) / 64), 4, transpose_range, &t);
        j.data = copy;
    }
    mk_parallel_for(pool, n, 1, align_range, &j);
done:
    for (int s = 0; s < slots && j.ytab && j.xtab && j.acc; s++) {
        free(j.ytab[s]);
        free(j.xtab[s]);
        free(j.acc[s]);
    }
    free(j.ytab);
    free(j.xtab);
    free(j.acc);
    mk_aligned_free(copy);
    return rc;
}

int maskd_roi_align(const maskd_tensor *x, const float *rois, const int64_t *batch, int64_t n,
                    const maskd_roi_align_options *o, float *out, maskd_pool *pool,
                    maskd_error *err)
{
    const char *what = "ROI Align";
    int rc = check_features(x, what, err);
    if (!rc) rc = check_align_options(o, what, err);
    if (!rc) rc = check_rois(rois, batch, n, x->dims[0], what, err);
    if (rc) return rc;
    if (n > 0 && !out) return mk_fail(err, MASKD_ERR_INVALID, "%s: no output buffer", what);
    return align_core(x, rois, batch, NULL, n, o->spatial_scale, o, out, pool, what, err);
}

/* ---- FPN ------------------------------------------------------------------------------ */

int maskd_fpn_level(const float box[4], int k_min, int k_max, const maskd_fpn_options *fpn)
{
    float s0 = fpn ? fpn->canonical_scale : 224.0f;
    int lvl0 = fpn ? fpn->canonical_level : 4;
    /* Same float steps as torchvision's LevelMapper. */
    float area = (box[2] - box[0]) * (box[3] - box[1]);
    float s = sqrtf(area);
    float v = floorf((float)lvl0 + log2f(s / s0) + 1e-6f);
    /* NaN (a box with negative area) and -inf (zero area) go to the finest
     * level. */
    if (!(v >= (float)k_min)) return 0;
    if (v > (float)k_max) return k_max - k_min;
    return (int)v - k_min;
}

int maskd_roi_align_fpn(const maskd_tensor *levels, const float *scales, int n_levels,
                        const float *rois, const int64_t *batch, int64_t n,
                        const maskd_roi_align_options *o, const maskd_fpn_options *fpn,
                        float *out, int64_t *roi_levels, maskd_pool *pool, maskd_error *err)
{
    const char *what = "ROI Align (FPN)";
    if (n_levels < 1 || n_levels > 16 || !levels || !scales)
        return mk_fail(err, MASKD_ERR_INVALID, "%s: needs 1 to 16 levels with their scales",
                       what);
    int rc = check_align_options(o, what, err);
    if (rc) return rc;
    for (int i = 0; i < n_levels; i++) {
        if ((rc = check_features(&levels[i], what, err))) return rc;
        if (levels[i].dims[0] != levels[0].dims[0] || levels[i].dims[1] != levels[0].dims[1])
            return mk_fail(err, MASKD_ERR_INVALID,
                           "%s: level %d has a different batch size or channel count", what,
                           i);
    }
    if (fpn && !(fpn->canonical_scale > 0))
        return mk_fail(err, MASKD_ERR_INVALID, "%s: canonical scale must be > 0", what);
    /* Levels are consecutive powers of two: scale_i = 2^-(k_min + i). */
    if (!(scales[0] > 0) || !isfinite(scales[0]))
        return mk_fail(err, MASKD_ERR_INVALID, "%s: scale 0 must be > 0", what);
    double k0 = -log2((double)scales[0]);
    int k_min = (int)lround(k0);
    for (int i = 0; i < n_levels; i++)
        if (fabs(ldexp(1.0, -(k_min + i)) - (double)scales[i]) > 1e-6 * ldexp(1.0, -(k_min + i)))
            return mk_fail(err, MASKD_ERR_INVALID,
                           "%s: scale of level %d is %g; levels must be consecutive powers "
                           "of two, finest first (e.g. 1/4, 1/8, 1/16)",
                           what, i, (double)scales[i]);
    int k_max = k_min + n_levels - 1;
    if ((rc = check_rois(rois, batch, n, levels[0].dims[0], what, err))) return rc;
    if (n > 0 && !out) return mk_fail(err, MASKD_ERR_INVALID, "%s: no output buffer", what);
    if (n == 0) return MASKD_OK;

    int64_t *level = malloc(sizeof *level * (size_t)n);
    int64_t *ids = malloc(sizeof *ids * (size_t)n);
    if (!level || !ids) {
        free(level);
        free(ids);
        return mk_fail(err, MASKD_ERR_NOMEM, "%s: out of memory", what);
    }
    for (int64_t r = 0; r < n; r++) {
        level[r] = maskd_fpn_level(rois + 4 * r, k_min, k_max, fpn);
        if (roi_levels) roi_levels[r] = level[r];
    }
    for (int i = 0; i < n_levels && !rc; i++) {
        int64_t m = 0;
        for (int64_t r = 0; r < n; r++)
            if (level[r] == i) ids[m++] = r;
        rc = align_core(&levels[i], rois, batch, ids, m, scales[i], o, out, pool, what, err);
    }
    free(level);
    free(ids);
    return rc;
}

/* ---- ROI Pooling ------------------------------------------------------------------------ */

typedef struct pool_job {
    const float *data;
    int64_t C, H, W, PH, PW;
    const float *rois;
    const int64_t *batch;
    float scale;
    float *out;
} pool_job;

static void pool_range(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const pool_job *j = arg;
    const int64_t C = j->C, H = j->H, W = j->W, PH = j->PH, PW = j->PW;
    for (int64_t r = begin; r < end; r++) {
        const float *roi = j->rois + 4 * r;
        /* Caffe's quantization, as torchvision and ONNX Runtime do it:
         * corners rounded half away from zero, both ends inclusive. */
        int64_t sw = (int64_t)roundf(roi[0] * j->scale), sh = (int64_t)roundf(roi[1] * j->scale);
        int64_t ew = (int64_t)roundf(roi[2] * j->scale), eh = (int64_t)roundf(roi[3] * j->scale);
        int64_t rw = ew - sw + 1 > 1 ? ew - sw + 1 : 1;
        int64_t rh = eh - sh + 1 > 1 ? eh - sh + 1 : 1;
        float bh = (float)rh / (float)PH, bw = (float)rw / (float)PW;
        const float *img = j->data + (j->batch ? j->batch[r] : 0) * C * H * W;
        float *out = j->out + r * C * PH * PW;
        for (int64_t ph = 0; ph < PH; ph++)
            for (int64_t pw = 0; pw < PW; pw++) {
                int64_t h0 = (int64_t)floorf((float)ph * bh) + sh;
                int64_t h1 = (int64_t)ceilf((float)(ph + 1) * bh) + sh;
                int64_t w0 = (int64_t)floorf((float)pw * bw) + sw;
                int64_t w1 = (int64_t)ceilf((float)(pw + 1) * bw) + sw;
                h0 = h0 < 0 ? 0 : h0 > H ? H : h0;
                h1 = h1 < 0 ? 0 : h1 > H ? H : h1;
                w0 = w0 < 0 ? 0 : w0 > W ? W : w0;
                w1 = w1 < 0 ? 0 : w1 > W ? W : w1;
                bool empty = h1 <= h0 || w1 <= w0;
                for (int64_t c = 0; c < C; c++) {
                    const float *plane = img + c * H * W;
                    float m = empty ? 0.0f : -3.402823466e38f; /* -FLT_MAX, as both do */
                    for (int64_t h = h0; h < h1; h++)
                        for (int64_t w = w0; w < w1; w++)
                            if (plane[h * W + w] > m) m = plane[h * W + w];
                    out[(c * PH + ph) * PW + pw] = m;
                }
            }
    }
}

int maskd_roi_pool(const maskd_tensor *x, const float *rois, const int64_t *batch, int64_t n,
                   int64_t pooled_h, int64_t pooled_w, float scale, float *out,
                   maskd_pool *pool, maskd_error *err)
{
    const char *what = "ROI Pool";
    int rc = check_features(x, what, err);
    if (!rc) rc = check_rois(rois, batch, n, x->dims[0], what, err);
    if (rc) return rc;
    if (pooled_h < 1 || pooled_w < 1 || pooled_h > 4096 || pooled_w > 4096)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "%s: output size %lldx%lld must be between 1 and 4096", what,
                       (long long)pooled_h, (long long)pooled_w);
    if (!(scale > 0) || !isfinite(scale))
        return mk_fail(err, MASKD_ERR_INVALID, "%s: spatial_scale %g must be > 0", what,
                       (double)scale);
    for (int64_t r = 0; r < n; r++)
        for (int k = 0; k < 4; k++)
            if (fabsf(rois[4 * r + k] * scale) > 1e9f)
                return mk_fail(err, MASKD_ERR_INVALID,
                               "%s: ROI %lld lies absurdly far outside any map", what,
                               (long long)r);
    if (n > 0 && !out) return mk_fail(err, MASKD_ERR_INVALID, "%s: no output buffer", what);
    pool_job j = {x->data, x->dims[1], x->dims[2], x->dims[3], pooled_h, pooled_w,
                  rois, batch, scale, out};
    if (j.C == 0) return MASKD_OK;
    mk_parallel_for(pool, n, 1, pool_range, &j);
    return MASKD_OK;
}
