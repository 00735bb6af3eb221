/* The two-stage detector between and after its graphs, step for step as the
 * training code's reference (models/train/train_det.py, infer()):
 * anchors -> top-k objectness -> decode, clip to the valid region, drop tiny
 * boxes -> proposal NMS -> ROI Align -> stage 2 -> softmax, class-wise decode
 * -> the requested NMS -> original pixels, masks pasted over the proposals. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline_internal.h"

/* ---- binding the card to the graphs ------------------------------------ */

static int out_index(const maskd_model *m, const char *name, const char *dflt, int required,
                     const char *role, int *out, maskd_error *err)
{
    *out = maskd_model_output_index(m, name ? name : dflt);
    if (*out >= 0 || (!required && !name)) return MASKD_OK;
    return mk_fail(err, MASKD_ERR_INVALID,
                   "model card: %s: the graph has no output '%s'", role, name ? name : dflt);
}

static int64_t anchors_per_cell(const maskd_card_detect *d)
{
    return d->anchor_base ? d->n_anchor_base : (int64_t)d->n_anchor_sizes * d->n_aspect_ratios;
}

int mk_detect_bind(maskd_pipeline *p, maskd_error *err)
{
    const maskd_card_detect *d = &p->card.detect;
    const maskd_model *m1 = p->models[0], *m2 = p->models[1];
    int rc;
    if ((rc = out_index(m1, d->features, "features", 1, "stage1.outputs.features",
                        &p->det_features, err)) ||
        (rc = out_index(m1, d->objectness, "rpn_logits", 1, "stage1.outputs.rpn_logits",
                        &p->det_objectness, err)) ||
        (rc = out_index(m1, d->rpn_deltas, "rpn_deltas", 1, "stage1.outputs.rpn_deltas",
                        &p->det_rpn_deltas, err)) ||
        (rc = out_index(m2, d->class_logits, "cls_logits", 1, "stage2.outputs.cls_logits",
                        &p->det_class_logits, err)) ||
        (rc = out_index(m2, d->box_deltas, "box_deltas", 1, "stage2.outputs.box_deltas",
                        &p->det_box_deltas, err)) ||
        (rc = out_index(m2, d->variances, "box_logvar", 0, "stage2.outputs.box_logvar",
                        &p->det_variances, err)) ||
        (rc = out_index(m2, d->densities, "density", 0, "stage2.outputs.density",
                        &p->det_densities, err)) ||
        (rc = out_index(m2, d->mask_logits, "mask_logits", 0, "stage2.outputs.mask_logits",
                        &p->det_mask_logits, err)))
        return rc;
    if (d->box_input) {
        p->det_box_input = maskd_model_input_index(m2, d->box_input);
        if (p->det_box_input < 0)
            return mk_fail(err, MASKD_ERR_INVALID,
                           "model card: stage2.input.name: the stage-2 graph has no input '%s'",
                           d->box_input);
    } else {
        p->det_box_input = 0;
    }
    if (maskd_model_num_inputs(m2) != 1)
        return mk_fail(err, MASKD_ERR_UNSUPPORTED,
                       "model card: files.stage2: the stage-2 graph must take one input (the "
                       "ROI-aligned features), it takes %d", maskd_model_num_inputs(m2));
    if (anchors_per_cell(d) < 1 || !(d->anchor_stride > 0))
        return mk_fail(err, MASKD_ERR_INVALID, "model card: anchors: stride and cell anchors needed");

    /* Shapes, where the graphs fix them. */
    const maskd_value_info *f = maskd_model_output(m1, p->det_features);
    const maskd_value_info *o = maskd_model_output(m1, p->det_objectness);
    if (f->ndim == 4 && f->dims[2] > 0 && f->dims[3] > 0 && o->ndim >= 1 &&
        o->dims[o->ndim - 1] > 0) {
        int64_t want = f->dims[2] * f->dims[3] * anchors_per_cell(d);
        if (o->dims[o->ndim - 1] != want)
            return mk_fail(err, MASKD_ERR_INVALID,
                           "model card: anchors: %lldx%lld cells x %lld anchors = %lld, but "
                           "'%s' has %lld",
                           (long long)f->dims[2], (long long)f->dims[3],
                           (long long)anchors_per_cell(d), (long long)want, o->name,
                           (long long)o->dims[o->ndim - 1]);
    }
    const maskd_value_info *cl = maskd_model_output(m2, p->det_class_logits);
    if ((rc = cl->ndim == 2 && cl->dims[1] > 0 && p->card.n_labels > 0 &&
                      cl->dims[1] != p->card.n_labels
                  ? mk_fail(err, MASKD_ERR_INVALID,
                            "model card: labels: %d labels, but '%s' has %lld classes",
                            p->card.n_labels, cl->name, (long long)cl->dims[1])
                  : MASKD_OK))
        return rc;
    p->n_classes = cl->ndim == 2 && cl->dims[1] > 0 ? (int)cl->dims[1] : p->card.n_labels;
    if (p->det_variances < 0) p->nms_allowed &= ~(1u << MASKD_NMS_SOFTER);
    if (p->det_densities < 0) p->nms_allowed &= ~(1u << MASKD_NMS_ADAPTIVE);
    return MASKD_OK;
}

/* ---- stage 1 -> proposals ----------------------------------------------- */

static int make_anchors(maskd_worker *w, int64_t gh, int64_t gw, maskd_error *err)
{
    const maskd_card_detect *d = &w->pipeline->card.detect;
    if (w->anchors && w->anchor_grid_h == gh && w->anchor_grid_w == gw) return MASKD_OK;
    int64_t a = anchors_per_cell(d), n = gh * gw * a;
    float *out = malloc((size_t)(n + 1) * 4 * sizeof(float));
    if (!out) return mk_fail(err, MASKD_ERR_NOMEM, "detect: out of memory for anchors");
    if (d->anchor_base) {
        float *o = out;
        for (int64_t y = 0; y < gh; y++)
            for (int64_t x = 0; x < gw; x++) {
                float sx = (float)x * d->anchor_stride, sy = (float)y * d->anchor_stride;
                for (int64_t k = 0; k < a; k++, o += 4) {
                    const float *b = d->anchor_base + 4 * k;
                    o[0] = sx + b[0];
                    o[1] = sy + b[1];
                    o[2] = sx + b[2];
                    o[3] = sy + b[3];
                }
            }
    } else {
        maskd_anchor_level lv = {d->anchor_sizes, d->n_anchor_sizes, d->aspect_ratios,
                                 d->n_aspect_ratios, gh, gw, d->anchor_stride, d->anchor_stride};
        int rc = maskd_anchors(&lv, 1, out, err);
        if (rc) {
            free(out);
            return rc;
        }
    }
    free(w->anchors);
    w->anchors = out;
    w->n_anchors = n;
    w->anchor_grid_h = gh;
    w->anchor_grid_w = gw;
    return MASKD_OK;
}

typedef struct ranked {
    float key;
    int64_t index;
} ranked;

/* Descending key, then ascending index: numpy's stable argsort of -key. */
static int cmp_ranked(const void *pa, const void *pb)
{
    const ranked *a = pa, *b = pb;
    if (a->key != b->key) return a->key > b->key ? -1 : 1;
    return (a->index > b->index) - (a->index < b->index);
}

static inline int ranks_before(const ranked *a, const ranked *b)
{
    return a->key > b->key || (a->key == b->key && a->index < b->index);
}

/* Moves the k best (cmp_ranked order) of v[0, n) to the front, sorted:
 * quickselect, then a sort of only those k (34560 anchors, 1000 kept). */
static void top_k(ranked *v, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1;
    while (k < n && lo < hi) {
        ranked pivot = v[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (ranks_before(&v[i], &pivot)) i++;
            while (ranks_before(&pivot, &v[j])) j--;
            if (i <= j) {
                ranked t = v[i];
                v[i++] = v[j];
                v[j--] = t;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
    qsort(v, (size_t)(k < n ? k : n), sizeof *v, cmp_ranked);
}

static void clip_valid(float *b, const maskd_letterbox *lb)
{
    float x0 = (float)lb->offset_x, y0 = (float)lb->offset_y;
    float x1 = x0 + (float)lb->new_w, y1 = y0 + (float)lb->new_h;
    for (int k = 0; k < 4; k++) {
        float lo = k & 1 ? y0 : x0, hi = k & 1 ? y1 : x1;
        b[k] = b[k] < lo ? lo : b[k] > hi ? hi : b[k];
    }
}

/* proposals: malloc'd [*n, 4]. */
static int propose(maskd_worker *w, const maskd_letterbox *lb, float **proposals, int64_t *n,
                   maskd_error *err)
{
    const maskd_pipeline *p = w->pipeline;
    const maskd_card_detect *d = &p->card.detect;
    const maskd_tensor *feat = maskd_session_output(w->sessions[0], p->det_features);
    const maskd_tensor *logit_t = maskd_session_output(w->sessions[0], p->det_objectness);
    const maskd_tensor *delta_t = maskd_session_output(w->sessions[0], p->det_rpn_deltas);
    *proposals = NULL;
    *n = 0;
    if (feat->dtype != MASKD_FLOAT || feat->ndim != 4 || feat->dims[0] != 1)
        return mk_fail(err, MASKD_ERR_RUNTIME, "detect: features must be float [1, C, h, w]");
    int64_t na = maskd_tensor_numel(logit_t);
    if (logit_t->dtype != MASKD_FLOAT || delta_t->dtype != MASKD_FLOAT ||
        maskd_tensor_numel(delta_t) != 4 * na)
        return mk_fail(err, MASKD_ERR_RUNTIME,
                       "detect: RPN outputs must be float [1, N] logits and [1, N, 4] deltas");
    int rc = make_anchors(w, feat->dims[2], feat->dims[3], err);
    if (rc) return rc;
    if (w->n_anchors != na)
        return mk_fail(err, MASKD_ERR_RUNTIME, "detect: %lld anchors but %lld RPN logits",
                       (long long)w->n_anchors, (long long)na);
    const float *logits = logit_t->data, *deltas = delta_t->data;

    ranked *order = malloc((size_t)(na + 1) * sizeof *order);
    int64_t k = d->rpn_pre_nms_top_n < na ? d->rpn_pre_nms_top_n : na;
    float *boxes = malloc((size_t)(k + 1) * 4 * sizeof(float));
    float *scores = malloc((size_t)(k + 1) * sizeof(float));
    float *sel_d = malloc((size_t)(k + 1) * 4 * sizeof(float));
    float *sel_a = malloc((size_t)(k + 1) * 4 * sizeof(float));
    maskd_nms_result kept = {0};
    if (!order || !boxes || !scores || !sel_d || !sel_a) {
        rc = mk_fail(err, MASKD_ERR_NOMEM, "detect: out of memory");
        goto done;
    }
    for (int64_t i = 0; i < na; i++)
        order[i] = (ranked){isnan(logits[i]) ? -INFINITY : logits[i], i};
    top_k(order, na, k);
    for (int64_t i = 0; i < k; i++) {
        memcpy(sel_d + 4 * i, deltas + 4 * order[i].index, 4 * sizeof(float));
        memcpy(sel_a + 4 * i, w->anchors + 4 * order[i].index, 4 * sizeof(float));
    }
    maskd_box_decode(&d->rpn_coder, sel_d, sel_a, k, 1, boxes);
    int64_t m = 0;
    for (int64_t i = 0; i < k; i++) {
        float *b = boxes + 4 * i;
        clip_valid(b, lb);
        if (!(b[2] - b[0] >= d->rpn_min_size && b[3] - b[1] >= d->rpn_min_size)) continue;
        memmove(boxes + 4 * m, b, 4 * sizeof(float));
        scores[m++] = 1.0f / (1.0f + expf(-order[i].key));
    }
    maskd_nms_options o;
    maskd_nms_options_init(&o, MASKD_NMS_HARD);
    o.iou_threshold = d->rpn_nms_iou;
    o.class_agnostic = 1;
    o.max_detections = d->rpn_post_nms_top_n;
    maskd_nms_input in = {m, boxes, scores, NULL, NULL, NULL};
    rc = maskd_nms(&in, &o, &kept, err);
    if (rc) goto done;
    *proposals = kept.boxes;
    kept.boxes = NULL;
    *n = kept.count;
done:
    maskd_nms_result_free(&kept);
    free(order);
    free(boxes);
    free(scores);
    free(sel_d);
    free(sel_a);
    return rc;
}

/* ---- stage 2 ------------------------------------------------------------- */

/* The stage-2 outputs for all R proposals, copied out of the session. */
typedef struct stage2_out {
    int64_t r, k, mask_size;
    float *cls, *deltas, *logvar, *density, *masks;
} stage2_out;

static void stage2_free(stage2_out *s)
{
    free(s->cls);
    free(s->deltas);
    free(s->logvar);
    free(s->density);
    free(s->masks);
}

/* Copies rows [0, n) of output `idx` (rows of `row` floats) to dst + at * row,
 * checking the shape. */
static int take_rows(maskd_worker *w, int idx, int64_t n, int64_t row, float *dst, int64_t at,
                     const char *what, maskd_error *err)
{
    const maskd_tensor *t = maskd_session_output(w->sessions[1], idx);
    if (t->dtype != MASKD_FLOAT || t->ndim < 1 || t->dims[0] < n ||
        maskd_tensor_numel(t) != t->dims[0] * row)
        return mk_fail(err, MASKD_ERR_RUNTIME, "detect: stage-2 output %s has an unexpected shape",
                       what);
    memcpy(dst + at * row, t->data, (size_t)(n * row) * sizeof(float));
    return MASKD_OK;
}

static int run_stage2(maskd_worker *w, const float *pooled, int64_t r, int64_t feat_floats,
                      stage2_out *s, maskd_error *err)
{
    const maskd_pipeline *p = w->pipeline;
    const maskd_card_detect *d = &p->card.detect;
    const maskd_roi_align_options *ro = &d->box_roi;
    int64_t batch = d->stage2_batch > 0 ? d->stage2_batch : r;
    float *padded = NULL;
    int rc = MASKD_OK;
    for (int64_t at = 0; at < r && !rc; at += batch) {
        int64_t n = r - at < batch ? r - at : batch;
        maskd_tensor in = {.dtype = MASKD_FLOAT, .ndim = 4,
                           .dims = {batch, feat_floats / (ro->pooled_h * ro->pooled_w),
                                    ro->pooled_h, ro->pooled_w},
                           .data = (void *)(pooled + at * feat_floats)};
        if (n < batch) { /* a fixed-size graph: pad the last batch with zeros */
            padded = calloc((size_t)(batch * feat_floats), sizeof(float));
            if (!padded) return mk_fail(err, MASKD_ERR_NOMEM, "detect: out of memory");
            memcpy(padded, in.data, (size_t)(n * feat_floats) * sizeof(float));
            in.data = padded;
        }
        rc = maskd_session_run(w->sessions[1], &in, 1, err);
        if (rc) break;
        w->stage_ran[1] = 1;
        if (at == 0) {
            const maskd_tensor *cl = maskd_session_output(w->sessions[1], p->det_class_logits);
            if (cl->dtype != MASKD_FLOAT || cl->ndim != 2 || cl->dims[1] < 1) {
                rc = mk_fail(err, MASKD_ERR_RUNTIME, "detect: class logits must be float [R, K]");
                break;
            }
            s->r = r;
            s->k = cl->dims[1];
            if (p->det_mask_logits >= 0) {
                const maskd_tensor *mt = maskd_session_output(w->sessions[1], p->det_mask_logits);
                if (mt->ndim != 4 || mt->dims[1] != s->k || mt->dims[2] != mt->dims[3] ||
                    mt->dims[2] < 1) {
                    rc = mk_fail(err, MASKD_ERR_RUNTIME,
                                 "detect: mask logits must be [R, K, m, m]");
                    break;
                }
                s->mask_size = mt->dims[2];
            }
            size_t k = (size_t)s->k, rr = (size_t)r;
            s->cls = malloc(rr * k * sizeof(float) + 1);
            s->deltas = malloc(rr * k * 4 * sizeof(float) + 1);
            if (p->det_variances >= 0) s->logvar = malloc(rr * k * 4 * sizeof(float) + 1);
            if (p->det_densities >= 0) s->density = malloc(rr * sizeof(float) + 1);
            if (s->mask_size)
                s->masks = malloc(rr * k * (size_t)(s->mask_size * s->mask_size) * sizeof(float) + 1);
            if (!s->cls || !s->deltas || (p->det_variances >= 0 && !s->logvar) ||
                (p->det_densities >= 0 && !s->density) || (s->mask_size && !s->masks)) {
                rc = mk_fail(err, MASKD_ERR_NOMEM, "detect: out of memory");
                break;
            }
        }
        rc = take_rows(w, p->det_class_logits, n, s->k, s->cls, at, "cls_logits", err);
        if (!rc) rc = take_rows(w, p->det_box_deltas, n, 4 * s->k, s->deltas, at, "box_deltas", err);
        if (!rc && s->logvar)
            rc = take_rows(w, p->det_variances, n, 4 * s->k, s->logvar, at, "box_logvar", err);
        if (!rc && s->density)
            rc = take_rows(w, p->det_densities, n, 1, s->density, at, "density", err);
        if (!rc && s->masks)
            rc = take_rows(w, p->det_mask_logits, n, s->k * s->mask_size * s->mask_size, s->masks,
                           at, "mask_logits", err);
        free(padded);
        padded = NULL;
    }
    free(padded);
    return rc;
}

/* ---- masks --------------------------------------------------------------- */

/* A detection's mask in original pixels: its logits [m, m] over the proposal
 * box (input pixels), bilinearly sampled at each original pixel's centre and
 * thresholded.  The sample separates into a column part and a row part:
 *
 *     value(x, y) = c[k0](x) * (1 - ly) + c[k1](x) * ly,
 *     c[k](x)     = logit row k sampled at column x,
 *
 * with (k0, k1, ly) depending on the row alone.  These are the products and
 * sums of the direct per-pixel evaluation, in the same order (and GCC in -std=c11 mode
 * never contracts them into FMAs), so the masks are bit for bit the same; but
 * the divisions and clamps are done once per row and per column instead of
 * once per pixel, and each column is one vectorizable loop per band of rows
 * that blend the same two logit rows.  Columns come out whole, in order:
 * exactly what COCO's column-major RLE wants, so the RLE is built straight
 * from them, with no image-sized mask at all.  On a 4000x3000 image with 11
 * detections of about 800x800 pixels, pasting into a 12-megapixel mask
 * (zeroed pages faulted in on every request) and walking it column by column
 * took 28 ms a request, a third of the whole; this takes 2.3 ms on one
 * thread. */

typedef struct mask_band {
    int end;        /* rows [the previous band's end, end) */
    int64_t k0, k1; /* the two logit rows they blend */
} mask_band;

/* Buffers sized for the image, reused for every detection a thread does. */
typedef struct mask_sampler {
    int width, height;
    float *ly;        /* [height]: each row's weight of logit row k1 */
    uint8_t *bits;    /* [height + 8]: one column of the mask */
    float *col;       /* [m]: the logit rows sampled at one column */
    mask_band *bands; /* [m] */
    /* the current detection */
    const float *logits;
    int64_t ms;
    float x1, bw, fm, top, sxf, threshold;
    int32_t bb[4]; /* pixels considered at all: x in [bb0, bb2), y in [bb1, bb3) */
    int col0, col1; /* columns whose centre falls inside the box */
    int row0, row1; /* rows whose centre does */
    int n_bands;
    int64_t k_lo, k_hi; /* logit rows any band uses */
} mask_sampler;

static int sampler_init(mask_sampler *s, int width, int height, int64_t ms, maskd_error *err)
{
    memset(s, 0, sizeof *s);
    s->width = width;
    s->height = height;
    s->ly = malloc(((size_t)height + 1) * sizeof(float));
    s->bits = malloc((size_t)height + 8);
    s->col = malloc(((size_t)ms + 1) * sizeof(float));
    s->bands = malloc(((size_t)ms + 1) * sizeof(mask_band));
    if (!s->ly || !s->bits || !s->col || !s->bands)
        return mk_fail(err, MASKD_ERR_NOMEM, "detect: out of memory for masks");
    return MASKD_OK;
}

static void sampler_free(mask_sampler *s)
{
    free(s->ly);
    free(s->bits);
    free(s->col);
    free(s->bands);
}

/* Sets up one detection: the box, the rows' tables and bands.  The pixel
 * centres (i + 0.5) * sy grow with i, and so does every step from there to
 * the logit row (subtract, divide and multiply by positive numbers, clamp,
 * floor): the rows inside the box are one run, and the rows blending the
 * same two logit rows are consecutive -- at most m bands. */
static void sampler_place(mask_sampler *s, const float *logits, int64_t ms, const float box[4],
                          const maskd_letterbox *lb, float threshold)
{
    const int W = s->width, H = s->height;
    const double sx = lb->sx, sy = lb->sy;
    const float ox = (float)lb->offset_x, oy = (float)lb->offset_y;
    const float x1 = box[0] - ox, y1 = box[1] - oy, x2 = box[2] - ox, y2 = box[3] - oy;
    s->logits = logits;
    s->ms = ms;
    s->threshold = threshold;
    s->bb[0] = s->bb[1] = s->bb[2] = s->bb[3] = 0;
    s->col0 = s->col1 = s->row0 = s->row1 = 0;
    s->n_bands = 0;
    int j0 = (int)fmax(0, floor(x1 / sx - 0.5)), j1 = (int)fmin(W, ceil(x2 / sx + 0.5));
    int i0 = (int)fmax(0, floor(y1 / sy - 0.5)), i1 = (int)fmin(H, ceil(y2 / sy + 0.5));
    if (j1 <= j0 || i1 <= i0 || !(x2 > x1) || !(y2 > y1)) return;
    s->bb[0] = j0, s->bb[1] = i0, s->bb[2] = j1, s->bb[3] = i1;
    const float bh = (float)((double)y2 - (double)y1);
    s->x1 = x1;
    s->bw = (float)((double)x2 - (double)x1);
    s->fm = (float)ms;
    s->top = (float)(ms - 1);
    s->sxf = (float)sx;

    int j = j0;
    while (j < j1 && !(((float)j + 0.5f) * s->sxf >= x1)) j++;
    s->col0 = j;
    while (j < j1 && ((float)j + 0.5f) * s->sxf < x2) j++;
    s->col1 = j;

    int first = -1, last = -1;
    for (int i = i0; i < i1; i++) {
        float v = ((float)i + 0.5f) * (float)sy;
        if (!(v >= y1 && v < y2)) continue;
        if (first < 0) first = i;
        last = i;
        float my = (v - y1) / bh * s->fm - 0.5f;
        my = my < 0 ? 0 : my > s->top ? s->top : my;
        int64_t my0 = (int64_t)floorf(my), my1 = my0 + 1 < ms ? my0 + 1 : ms - 1;
        s->ly[i] = my - (float)my0;
        mask_band *b = s->n_bands ? &s->bands[s->n_bands - 1] : NULL;
        if (b && b->k0 == my0) {
            b->end = i + 1;
        } else {
            s->bands[s->n_bands++] = (mask_band){i + 1, my0, my1};
        }
    }
    if (first < 0 || s->col1 <= s->col0) {
        s->col0 = s->col1 = 0;
        s->n_bands = 0;
        return;
    }
    s->row0 = first;
    s->row1 = last + 1;
    s->k_lo = s->bands[0].k0;
    s->k_hi = s->bands[s->n_bands - 1].k1;
}

/* bits[y - row0] for y in [row0, row1): the mask in column j (col0 <= j < col1). */
static void sampler_column(mask_sampler *s, int j)
{
    const int64_t ms = s->ms;
    float u = ((float)j + 0.5f) * s->sxf;
    float mx = (u - s->x1) / s->bw * s->fm - 0.5f;
    mx = mx < 0 ? 0 : mx > s->top ? s->top : mx;
    int64_t mx0 = (int64_t)floorf(mx), mx1 = mx0 + 1 < ms ? mx0 + 1 : ms - 1;
    float lx = mx - (float)mx0;
    float *col = s->col;
    for (int64_t k = s->k_lo; k <= s->k_hi; k++) {
        const float *r = s->logits + k * ms;
        col[k] = r[mx0] * (1 - lx) + r[mx1] * lx;
    }
    const float thr = s->threshold;
    int y = s->row0;
    for (int b = 0; b < s->n_bands; b++) {
        const float c0 = col[s->bands[b].k0], c1 = col[s->bands[b].k1];
        const int n = s->bands[b].end - y;
        const float *ly = s->ly + y;
        uint8_t *bits = s->bits + (y - s->row0);
        for (int i = 0; i < n; i++) bits[i] = c0 * (1 - ly[i]) + c1 * ly[i] > thr;
        y += n;
    }
}

/* The runs of a 0/1 column, eight pixels at a time where nothing changes. */
static void runs_add_bits(mk_rle_runs *r, const uint8_t *bits, int n)
{
    int y = 0;
    while (y < n) {
        const uint8_t v = bits[y];
        const uint64_t same = v ? 0x0101010101010101ull : 0;
        int e = y + 1;
        for (uint64_t w; e + 8 <= n; e += 8) {
            memcpy(&w, bits + e, 8);
            if (w != same) break;
        }
        while (e < n && bits[e] == v) e++;
        mk_rle_runs_add(r, v, (uint32_t)(e - y));
        y = e;
    }
}

/* The detection's mask as COCO RLE, one column at a time. */
static int sampler_rle(mask_sampler *s, maskd_rle *out, maskd_error *err)
{
    const int H = s->height;
    mk_rle_runs r = {0};
    for (int x = 0; x < s->width; x++) {
        if (x < s->col0 || x >= s->col1) {
            mk_rle_runs_add(&r, 0, (uint32_t)H);
            continue;
        }
        sampler_column(s, x);
        mk_rle_runs_add(&r, 0, (uint32_t)s->row0);
        runs_add_bits(&r, s->bits, s->row1 - s->row0);
        mk_rle_runs_add(&r, 0, (uint32_t)(H - s->row1));
    }
    return mk_rle_runs_finish(&r, H, s->width, out, err);
}

/* The detection's mask into an image-sized 0/1 mask (zero outside bb), for
 * the formats that trace or draw it. */
static void sampler_paint(mask_sampler *s, uint8_t *mask)
{
    const size_t W = (size_t)s->width;
    for (int x = s->col0; x < s->col1; x++) {
        sampler_column(s, x);
        for (int y = s->row0; y < s->row1; y++) mask[(size_t)y * W + x] = s->bits[y - s->row0];
    }
}

/* The masks of a result's detections. */
typedef struct mask_jobs {
    maskd_detection *dets;
    const float **logits; /* [n]: each detection's [m, m] logits */
    const float **boxes;  /* [n]: the proposal they cover */
    int64_t ms;
    const maskd_letterbox *lb;
    float threshold;
    mask_sampler *samplers; /* one per pool slot */
    int *rc;                /* [n] */
    maskd_error *errs;      /* one per pool slot */
} mask_jobs;

static void rle_range(void *arg, int64_t begin, int64_t end, int slot)
{
    mask_jobs *mj = arg;
    mask_sampler *s = &mj->samplers[slot];
    for (int64_t k = begin; k < end; k++) {
        maskd_detection *det = &mj->dets[k];
        sampler_place(s, mj->logits[k], mj->ms, mj->boxes[k], mj->lb, mj->threshold);
        det->has_mask = 1;
        int rc = sampler_rle(s, &det->rle, &mj->errs[slot]);
        if (!rc) rc = maskd_rle_to_string(&det->rle, &det->counts, NULL, &mj->errs[slot]);
        mj->rc[k] = rc;
    }
}

/* Detections are independent, each a few hundred microseconds on a large
 * image: they are shared out over the pool's threads. */
static int masks_as_rle(mask_jobs *mj, int64_t n, maskd_pool *pool, maskd_error *err)
{
    int slots = mk_pool_slots(pool), rc = MASKD_OK;
    mj->samplers = calloc((size_t)slots, sizeof *mj->samplers);
    mj->errs = calloc((size_t)slots, sizeof *mj->errs);
    mj->rc = calloc((size_t)n, sizeof *mj->rc);
    if (!mj->samplers || !mj->errs || !mj->rc)
        rc = mk_fail(err, MASKD_ERR_NOMEM, "detect: out of memory for masks");
    for (int i = 0; i < slots && !rc; i++)
        rc = sampler_init(&mj->samplers[i], mj->lb->orig_width, mj->lb->orig_height, mj->ms, err);
    if (!rc) {
        mk_parallel_for(pool, n, 1, rle_range, mj);
        for (int64_t k = 0; k < n && !rc; k++) rc = mj->rc[k];
        for (int i = 0; i < slots && rc; i++)
            if (mj->errs[i].code) {
                *err = mj->errs[i];
                break;
            }
    }
    for (int i = 0; mj->samplers && i < slots; i++) sampler_free(&mj->samplers[i]);
    free(mj->samplers);
    free(mj->errs);
    free(mj->rc);
    return rc;
}

/* Polygons and PNGs need each mask as an image: painted into one
 * image-sized buffer, handed over, wiped again inside its box. */
static int masks_painted(mask_jobs *mj, int64_t n, const maskd_request *req, maskd_pool *pool,
                         maskd_error *err)
{
    const int W = mj->lb->orig_width, H = mj->lb->orig_height;
    mask_sampler s = {0};
    uint8_t *mask = calloc((size_t)W * (size_t)H + 1, 1);
    int rc = mask ? sampler_init(&s, W, H, mj->ms, err)
                  : mk_fail(err, MASKD_ERR_NOMEM, "detect: out of memory for masks");
    for (int64_t k = 0; k < n && !rc; k++) {
        sampler_place(&s, mj->logits[k], mj->ms, mj->boxes[k], mj->lb, mj->threshold);
        const int32_t *bb = s.bb;
        sampler_paint(&s, mask);
        rc = mk_detection_set_mask(&mj->dets[k], mask, W, H, bb, req, pool, err);
        for (int y = bb[1]; y < bb[3]; y++)
            memset(mask + (size_t)y * W + bb[0], 0, (size_t)(bb[2] - bb[0]));
    }
    sampler_free(&s);
    free(mask);
    return rc;
}

/* ---- the pipeline -------------------------------------------------------- */

int mk_detect_run(maskd_worker *w, const maskd_image *image, const maskd_request *req,
                  maskd_result *res, maskd_error *err)
{
    (void)image;
    const maskd_pipeline *p = w->pipeline;
    const maskd_card_detect *d = &p->card.detect;
    const maskd_letterbox *lb = &res->letterbox;
    double infer_ms = 0, stage2_ms = 0, t = mk_now_ms();
    int rc = maskd_session_run(w->sessions[0], &w->input, 1, err);
    if (rc) return rc;
    w->stage_ran[0] = 1;
    infer_ms += mk_now_ms() - t;
    double post_start = mk_now_ms();

    float *props = NULL, *pooled = NULL, *cand_boxes = NULL, *cand_scores = NULL;
    float *cand_var = NULL, *cand_dens = NULL, *dec = NULL;
    int64_t *cand_labels = NULL, *cand_roi = NULL, r = 0;
    stage2_out s2 = {0};
    maskd_nms_result kept = {0};
    res->nms = req->nms;
    if ((rc = propose(w, lb, &props, &r, err))) goto done;
    res->n_proposals = r;
    if (r == 0) {
        res->detections = calloc(1, sizeof *res->detections);
        if (!res->detections) rc = mk_fail(err, MASKD_ERR_NOMEM, "detect: out of memory");
        goto done;
    }

    /* ROI Align on the stage-1 features. */
    const maskd_tensor *feat = maskd_session_output(w->sessions[0], p->det_features);
    maskd_roi_align_options ro = d->box_roi;
    if (!(ro.spatial_scale > 0)) ro.spatial_scale = 1.0f / d->anchor_stride;
    int64_t feat_floats = feat->dims[1] * ro.pooled_h * ro.pooled_w;
    int64_t slots = d->stage2_batch > r ? d->stage2_batch : r;
    pooled = malloc((size_t)(slots * feat_floats) * sizeof(float) + 1);
    if (!pooled) {
        rc = mk_fail(err, MASKD_ERR_NOMEM, "detect: out of memory");
        goto done;
    }
    if ((rc = maskd_roi_align(feat, props, NULL, r, &ro, pooled, w->pool, err))) goto done;

    t = mk_now_ms();
    rc = run_stage2(w, pooled, r, feat_floats, &s2, err);
    stage2_ms = mk_now_ms() - t;
    infer_ms += stage2_ms;
    if (rc) goto done;
    if (p->card.n_labels > 0 && s2.k != p->card.n_labels) {
        rc = mk_fail(err, MASKD_ERR_RUNTIME, "detect: %lld classes for %d labels",
                     (long long)s2.k, p->card.n_labels);
        goto done;
    }

    /* Softmax, class-wise decode, thresholds: candidates in class-major order. */
    const int64_t K = s2.k;
    size_t nc = (size_t)(r * K) + 1;
    cand_boxes = malloc(nc * 4 * sizeof(float));
    cand_scores = malloc(nc * sizeof(float));
    cand_labels = malloc(nc * sizeof(int64_t));
    cand_roi = malloc(nc * sizeof(int64_t));
    dec = malloc(((size_t)r * 4 + 1) * sizeof(float));
    if (s2.logvar) cand_var = malloc(nc * 4 * sizeof(float));
    if (s2.density) cand_dens = malloc(nc * sizeof(float));
    if (!cand_boxes || !cand_scores || !cand_labels || !cand_roi || !dec ||
        (s2.logvar && !cand_var) || (s2.density && !cand_dens)) {
        rc = mk_fail(err, MASKD_ERR_NOMEM, "detect: out of memory");
        goto done;
    }
    for (int64_t i = 0; i < r; i++) { /* in place: logits -> probabilities */
        float *row = s2.cls + i * K, mx = row[0], sum = 0;
        for (int64_t c = 1; c < K; c++) mx = row[c] > mx ? row[c] : mx;
        for (int64_t c = 0; c < K; c++) sum += row[c] = expf(row[c] - mx);
        for (int64_t c = 0; c < K; c++) row[c] /= sum;
    }
    const double thr = isfinite(req->nms.score_threshold) ? req->nms.score_threshold
                                                          : d->box_score_threshold;
    int64_t m = 0;
    float *dl = malloc(((size_t)r * 4 + 1) * sizeof(float));
    if (!dl) {
        rc = mk_fail(err, MASKD_ERR_NOMEM, "detect: out of memory");
        goto done;
    }
    for (int64_t c = 0; c < K; c++) {
        if (!mk_class_wanted(p, req, (int32_t)c)) continue;
        for (int64_t i = 0; i < r; i++) memcpy(dl + 4 * i, s2.deltas + (i * K + c) * 4, 4 * sizeof(float));
        maskd_box_decode(&d->box_coder, dl, props, r, 1, dec);
        for (int64_t i = 0; i < r; i++) {
            float *b = dec + 4 * i, score = s2.cls[i * K + c];
            clip_valid(b, lb);
            if (!(score > thr) || !(b[2] - b[0] >= d->box_min_size) ||
                !(b[3] - b[1] >= d->box_min_size))
                continue;
            memcpy(cand_boxes + 4 * m, b, 4 * sizeof(float));
            cand_scores[m] = score;
            cand_labels[m] = c;
            cand_roi[m] = i;
            if (cand_var) {
                const float *pr = props + 4 * i;
                float pw = pr[2] - pr[0], ph = pr[3] - pr[1];
                for (int q = 0; q < 4; q++) {
                    float sz = q & 1 ? ph : pw;
                    cand_var[4 * m + q] = expf(s2.logvar[(i * K + c) * 4 + q]) * sz * sz;
                }
            }
            if (cand_dens) cand_dens[m] = s2.density[i];
            m++;
        }
    }
    free(dl);

    maskd_nms_input in = {m, cand_boxes, cand_scores, cand_labels, cand_var, cand_dens};
    if ((rc = maskd_nms(&in, &req->nms, &kept, err))) goto done;
    res->detections = calloc((size_t)kept.count + 1, sizeof *res->detections);
    if (!res->detections) {
        rc = mk_fail(err, MASKD_ERR_NOMEM, "detect: out of memory");
        goto done;
    }
    for (int64_t k = 0; k < kept.count; k++) {
        maskd_detection *det = &res->detections[k];
        int64_t ci = kept.indices[k];
        memcpy(det->box, kept.boxes + 4 * k, sizeof det->box);
        mk_boxes_to_original(lb, det->box, 1);
        det->score = kept.scores[k];
        det->class_id = (int32_t)cand_labels[ci];
        det->label = mk_label(p, det->class_id);
    }
    res->n_detections = kept.count;
    if (s2.masks && req->format != MASKD_FORMAT_NONE && kept.count > 0) {
        mask_jobs mj = {.dets = res->detections, .ms = s2.mask_size, .lb = lb,
                        .threshold = d->mask_threshold_logit};
        mj.logits = malloc((size_t)kept.count * sizeof *mj.logits);
        mj.boxes = malloc((size_t)kept.count * sizeof *mj.boxes);
        if (!mj.logits || !mj.boxes) {
            rc = mk_fail(err, MASKD_ERR_NOMEM, "detect: out of memory for masks");
        } else {
            for (int64_t k = 0; k < kept.count; k++) {
                int64_t ci = kept.indices[k], roi = cand_roi[ci];
                mj.logits[k] = s2.masks + (roi * K + cand_labels[ci]) * s2.mask_size * s2.mask_size;
                mj.boxes[k] = props + 4 * roi;
            }
            rc = req->format == MASKD_FORMAT_RLE ? masks_as_rle(&mj, kept.count, w->pool, err)
                                                 : masks_painted(&mj, kept.count, req, w->pool, err);
        }
        free(mj.logits);
        free(mj.boxes);
    }

done:
    maskd_nms_result_free(&kept);
    stage2_free(&s2);
    free(props);
    free(pooled);
    free(cand_boxes);
    free(cand_scores);
    free(cand_labels);
    free(cand_roi);
    free(cand_var);
    free(cand_dens);
    free(dec);
    res->timing.infer_ms = infer_ms;
    res->timing.post_ms = mk_now_ms() - post_start - stage2_ms;
    return rc;
}
