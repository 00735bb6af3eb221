/*
 * Box utilities: anchors, delta coding, clipping, IoU variants.
 *
 * Anchor generation and the box coder follow torchvision's float arithmetic
 * step by step (same products, same order), so a pipeline that decodes a
 * torchvision-trained RPN lands on the same proposals.
 */
#include <math.h>
#include <stdlib.h>

#include "../mk.h"
#include "maskd/post.h"

/* ---- anchors ---------------------------------------------------------------- */

static bool level_ok(const maskd_anchor_level *l)
{
    return l->n_sizes >= 1 && l->n_aspect_ratios >= 1 && l->sizes && l->aspect_ratios &&
           l->grid_h >= 0 && l->grid_w >= 0 && l->grid_h <= (1 << 20) &&
           l->grid_w <= (1 << 20) && l->n_sizes <= 1024 && l->n_aspect_ratios <= 1024;
}

int64_t maskd_anchor_count(const maskd_anchor_level *levels, int n_levels)
{
    if (n_levels < 0 || (n_levels > 0 && !levels)) return -1;
    int64_t total = 0;
    for (int i = 0; i < n_levels; i++) {
        if (!level_ok(&levels[i])) return -1;
        total += levels[i].grid_h * levels[i].grid_w * levels[i].n_sizes *
                 levels[i].n_aspect_ratios;
    }
    return total;
}

int maskd_anchors(const maskd_anchor_level *levels, int n_levels, float *out, maskd_error *err)
{
    if (maskd_anchor_count(levels, n_levels) < 0)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "anchors: every level needs sizes, aspect ratios and a grid size >= 0");
    for (int i = 0; i < n_levels; i++) {
        const maskd_anchor_level *l = &levels[i];
        for (int k = 0; k < l->n_sizes; k++)
            if (!(l->sizes[k] > 0) || !isfinite(l->sizes[k]))
                return mk_fail(err, MASKD_ERR_INVALID, "anchors: level %d: size %g must be > 0",
                               i, (double)l->sizes[k]);
        for (int k = 0; k < l->n_aspect_ratios; k++)
            if (!(l->aspect_ratios[k] > 0) || !isfinite(l->aspect_ratios[k]))
                return mk_fail(err, MASKD_ERR_INVALID,
                               "anchors: level %d: aspect ratio %g must be > 0", i,
                               (double)l->aspect_ratios[k]);
        if (!(l->stride_h > 0) || !(l->stride_w > 0) || !isfinite(l->stride_h) ||
            !isfinite(l->stride_w))
            return mk_fail(err, MASKD_ERR_INVALID, "anchors: level %d: strides must be > 0", i);
    }

    for (int i = 0; i < n_levels; i++) {
        const maskd_anchor_level *l = &levels[i];
        const int a_count = l->n_sizes * l->n_aspect_ratios;
        float *cell = malloc(sizeof(float) * 4 * (size_t)a_count);
        if (!cell) return mk_fail(err, MASKD_ERR_NOMEM, "anchors: out of memory");
        /* Zero-centred cell anchors, ratio-major; r = height / width. */
        for (int a = 0; a < l->n_aspect_ratios; a++) {
            float h_ratio = sqrtf(l->aspect_ratios[a]);
            float w_ratio = 1.0f / h_ratio;
            for (int s = 0; s < l->n_sizes; s++) {
                float ws = w_ratio * l->sizes[s], hs = h_ratio * l->sizes[s];
                float *c = cell + 4 * (a * l->n_sizes + s);
                /* torch.round: half to even, which rintf does in the default
                 * rounding mode. */
                c[0] = rintf(-ws / 2);
                c[1] = rintf(-hs / 2);
                c[2] = rintf(ws / 2);
                c[3] = rintf(hs / 2);
            }
        }
        for (int64_t y = 0; y < l->grid_h; y++) {
            float sy = (float)y * l->stride_h;
            for (int64_t x = 0; x < l->grid_w; x++) {
                float sx = (float)x * l->stride_w;
                for (int a = 0; a < a_count; a++) {
                    out[0] = sx + cell[4 * a + 0];
                    out[1] = sy + cell[4 * a + 1];
                    out[2] = sx + cell[4 * a + 2];
                    out[3] = sy + cell[4 * a + 3];
                    out += 4;
                }
            }
        }
        free(cell);
    }
    return MASKD_OK;
}

/* ---- delta coding --------------------------------------------------------------- */

void maskd_box_encode(const maskd_box_coder *k, const float *boxes, const float *refs,
                      int64_t n, float *deltas)
{
    for (int64_t i = 0; i < n; i++) {
        const float *a = refs + 4 * i, *b = boxes + 4 * i;
        float aw = a[2] - a[0], ah = a[3] - a[1];
        float acx = a[0] + 0.5f * aw, acy = a[1] + 0.5f * ah;
        float bw = b[2] - b[0], bh = b[3] - b[1];
        float bcx = b[0] + 0.5f * bw, bcy = b[1] + 0.5f * bh;
        float *d = deltas + 4 * i;
        d[0] = k->wx * (bcx - acx) / aw;
        d[1] = k->wy * (bcy - acy) / ah;
        d[2] = k->ww * logf(bw / aw);
        d[3] = k->wh * logf(bh / ah);
    }
}

void maskd_box_decode(const maskd_box_coder *k, const float *deltas, const float *refs,
                      int64_t n, int64_t per_ref, float *out)
{
    for (int64_t i = 0; i < n; i++) {
        const float *a = refs + 4 * i;
        float w = a[2] - a[0], h = a[3] - a[1];
        float cx = a[0] + 0.5f * w, cy = a[1] + 0.5f * h;
        for (int64_t j = 0; j < per_ref; j++) {
            const float *d = deltas + 4 * (i * per_ref + j);
            float *o = out + 4 * (i * per_ref + j);
            float dx = d[0] / k->wx, dy = d[1] / k->wy;
            float dw = d[2] / k->ww, dh = d[3] / k->wh;
            /* Written so that NaN passes through, as torch.clamp lets it. */
            dw = dw > k->clip ? k->clip : dw;
            dh = dh > k->clip ? k->clip : dh;
            float pcx = dx * w + cx, pcy = dy * h + cy;
            float pw = expf(dw) * w, ph = expf(dh) * h;
            float hw = 0.5f * pw, hh = 0.5f * ph;
            o[0] = pcx - hw;
            o[1] = pcy - hh;
            o[2] = pcx + hw;
            o[3] = pcy + hh;
        }
    }
}

void maskd_box_clip(float *boxes, int64_t n, float width, float height)
{
    for (int64_t i = 0; i < n; i++)
        for (int k = 0; k < 4; k++) {
            float lim = (k & 1) ? height : width;
            float v = boxes[4 * i + k];
            v = v < 0 ? 0 : v;
            boxes[4 * i + k] = v > lim ? lim : v;
        }
}

/* ---- overlap measures ------------------------------------------------------------- */

typedef struct overlap {
    float inter, uni, iou;
} overlap;

static overlap overlap_of(const float a[4], const float b[4])
{
    float area_a = (a[2] - a[0]) * (a[3] - a[1]);
    float area_b = (b[2] - b[0]) * (b[3] - b[1]);
    float w = fminf(a[2], b[2]) - fmaxf(a[0], b[0]);
    float h = fminf(a[3], b[3]) - fmaxf(a[1], b[1]);
    overlap o;
    o.inter = (w > 0 ? w : 0) * (h > 0 ? h : 0);
    o.uni = area_a + area_b - o.inter;
    o.iou = o.uni > 0 ? o.inter / o.uni : 0.0f;
    return o;
}

float maskd_box_iou(const float a[4], const float b[4]) { return overlap_of(a, b).iou; }

float maskd_box_giou(const float a[4], const float b[4])
{
    overlap o = overlap_of(a, b);
    float enclosing = (fmaxf(a[2], b[2]) - fminf(a[0], b[0])) *
                      (fmaxf(a[3], b[3]) - fminf(a[1], b[1]));
    return enclosing > 0 ? o.iou - (enclosing - o.uni) / enclosing : o.iou;
}

float maskd_box_diou(const float a[4], const float b[4])
{
    overlap o = overlap_of(a, b);
    float cw = fmaxf(a[2], b[2]) - fminf(a[0], b[0]);
    float ch = fmaxf(a[3], b[3]) - fminf(a[1], b[1]);
    float c2 = cw * cw + ch * ch;
    float dx = (a[0] + a[2]) * 0.5f - (b[0] + b[2]) * 0.5f;
    float dy = (a[1] + a[3]) * 0.5f - (b[1] + b[3]) * 0.5f;
    return c2 > 0 ? o.iou - (dx * dx + dy * dy) / c2 : o.iou;
}
