/* The segment pipeline after preprocessing: graph -> logits [1, C, h, w] ->
 * the valid (unpadded) region -> class map of the original size -> one
 * segment per present class.  As the training code's reference path: crop
 * logits[:, :, :new_h, :new_w], bilinear (half-pixel) to H x W, argmax. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline_internal.h"

/* The logits' rows/columns that cover the image, not the padding.  When the
 * logits are coarser than the input the edges are rounded outwards. */
static void valid_region(const maskd_letterbox *lb, const maskd_card_input *in, int64_t lh,
                         int64_t lw, int64_t r[4])
{
    double fx = (double)lw / in->width, fy = (double)lh / in->height;
    r[0] = (int64_t)floor(lb->offset_x * fx + 1e-9);
    r[1] = (int64_t)floor(lb->offset_y * fy + 1e-9);
    r[2] = (int64_t)ceil((lb->offset_x + lb->new_w) * fx - 1e-9);
    r[3] = (int64_t)ceil((lb->offset_y + lb->new_h) * fy - 1e-9);
    if (r[2] > lw) r[2] = lw;
    if (r[3] > lh) r[3] = lh;
    if (r[2] <= r[0]) r[2] = r[0] + 1;
    if (r[3] <= r[1]) r[3] = r[1] + 1;
}

int mk_segment_run(maskd_worker *w, const maskd_image *image, const maskd_request *req,
                   maskd_result *res, maskd_error *err)
{
    (void)image;
    const maskd_pipeline *p = w->pipeline;
    double t0 = mk_now_ms();
    int rc = maskd_session_run(w->sessions[0], &w->input, 1, err);
    if (rc) return rc;
    w->stage_ran[0] = 1;
    double t1 = mk_now_ms();
    res->timing.infer_ms = t1 - t0;

    const maskd_tensor *out = maskd_session_output(w->sessions[0], p->seg_logits);
    if (out->dtype != MASKD_FLOAT || !(out->ndim == 3 || (out->ndim == 4 && out->dims[0] == 1)))
        return mk_fail(err, MASKD_ERR_RUNTIME,
                       "segment: the logits output must be float [1, C, h, w]");
    const int64_t C = out->dims[out->ndim - 3], lh = out->dims[out->ndim - 2],
                  lw = out->dims[out->ndim - 1];
    if (C < 1 || lh < 1 || lw < 1)
        return mk_fail(err, MASKD_ERR_RUNTIME, "segment: empty logits");
    if (p->card.n_labels > 0 && C != p->card.n_labels)
        return mk_fail(err, MASKD_ERR_RUNTIME, "segment: %lld logit channels for %d labels",
                       (long long)C, p->card.n_labels);

    maskd_tensor logits = {.dtype = MASKD_FLOAT, .ndim = 3, .dims = {C, lh, lw},
                           .data = out->data};
    if (p->card.segment.crop_valid_region) {
        int64_t r[4];
        valid_region(&res->letterbox, &p->card.input, lh, lw, r);
        int64_t cw = r[2] - r[0], ch = r[3] - r[1];
        if (cw != lw || ch != lh) {
            float *crop = mk_scratch(w, (size_t)(C * ch * cw));
            if (!crop) return mk_fail(err, MASKD_ERR_NOMEM, "segment: out of memory");
            const float *src = out->data;
            for (int64_t c = 0; c < C; c++)
                for (int64_t y = 0; y < ch; y++)
                    memcpy(crop + (c * ch + y) * cw, src + (c * lh + y + r[1]) * lw + r[0],
                           (size_t)cw * sizeof(float));
            logits.dims[1] = ch;
            logits.dims[2] = cw;
            logits.data = crop;
        }
    }

    maskd_label_map map = {res->height, res->width, C <= 256 ? MASKD_UINT8 : MASKD_INT32, NULL};
    size_t esize = map.dtype == MASKD_UINT8 ? 1 : 4;
    map.data = malloc((size_t)map.height * (size_t)map.width * esize + 1);
    maskd_region *regions = calloc((size_t)C, sizeof *regions);
    maskd_rle *rles = NULL;
    if (!map.data || !regions) {
        rc = mk_fail(err, MASKD_ERR_NOMEM, "segment: out of memory for a %dx%d class map",
                     map.width, map.height);
        goto done;
    }
    if (req->upsample == MASKD_UPSAMPLE_ARGMAX_NEAREST) {
        maskd_label_map low = {(int32_t)logits.dims[1], (int32_t)logits.dims[2], map.dtype, NULL};
        low.data = malloc((size_t)low.height * (size_t)low.width * esize + 1);
        if (!low.data) {
            rc = mk_fail(err, MASKD_ERR_NOMEM, "segment: out of memory");
            goto done;
        }
        rc = maskd_argmax(&logits, &low, w->pool, err);
        if (!rc) rc = maskd_labels_resize_nearest(&low, &map, w->pool, err);
        free(low.data);
    } else {
        rc = maskd_argmax(&logits, &map, w->pool, err);
    }
    if (rc) goto done;

    rc = maskd_class_regions(&map, (int32_t)C, regions, w->pool, err);
    if (rc) goto done;
    int n = 0;
    for (int64_t k = 0; k < C; k++) n += regions[k].area > 0 && mk_class_wanted(p, req, (int32_t)k);
    res->segments = calloc((size_t)n + 1, sizeof *res->segments);
    if (!res->segments) {
        rc = mk_fail(err, MASKD_ERR_NOMEM, "segment: out of memory");
        goto done;
    }
    if (req->format == MASKD_FORMAT_RLE && n > 0) {
        rles = calloc((size_t)C, sizeof *rles);
        if (!rles) {
            rc = mk_fail(err, MASKD_ERR_NOMEM, "segment: out of memory");
            goto done;
        }
        rc = maskd_rle_encode_classes(&map, (int32_t)C, rles, w->pool, err);
        if (rc) goto done;
    }
    for (int64_t k = 0; k < C; k++) {
        if (regions[k].area == 0 || !mk_class_wanted(p, req, (int32_t)k)) continue;
        maskd_segment *s = &res->segments[res->n_segments++];
        s->class_id = (int32_t)k;
        s->label = mk_label(p, (int32_t)k);
        s->area = regions[k].area;
        memcpy(s->box, regions[k].box, sizeof s->box);
        if (rles) {
            s->rle = rles[k];
            memset(&rles[k], 0, sizeof rles[k]);
            rc = maskd_rle_to_string(&s->rle, &s->counts, NULL, err);
        } else if (req->format == MASKD_FORMAT_POLYGONS) {
            maskd_mask m = maskd_mask_of_class(&map, (int32_t)k);
            maskd_polygon_options po = {0, req->polygon_tolerance};
            rc = maskd_polygons_trace(&m, &po, &s->polygons, err);
        }
        if (rc) goto done;
    }
    if (req->format == MASKD_FORMAT_PNG) {
        if (C > 256) {
            rc = mk_fail(err, MASKD_ERR_INVALID,
                         "format=png: %lld classes do not fit an 8-bit PNG class map",
                         (long long)C);
            goto done;
        }
        rc = maskd_png_encode(&map, NULL, &res->class_map_png, &res->class_map_png_size, err);
        if (rc) goto done;
    }
    if (req->keep_class_map) {
        res->class_map = map;
        map.data = NULL;
    }

done:
    if (rles)
        for (int64_t k = 0; k < C; k++) maskd_rle_free(&rles[k]);
    free(rles);
    free(regions);
    free(map.data);
    res->timing.post_ms = mk_now_ms() - t1;
    return rc;
}
