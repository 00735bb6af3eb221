/* The dense (single-stage) detector: one graph gives every candidate's box and
 * class scores; thresholds, the requested NMS, boxes back to the original
 * image.  NMS runs in input-tensor pixels, where the model saw the boxes (as
 * torchvision's detectors do before their final resize). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline_internal.h"

/* A 2-D view of an output: `rows` candidates of `cols` values, element
 * (i, j) at data[i * rs + j * cs]. */
typedef struct view2 {
    const float *data;
    int64_t rows, cols, rs, cs;
} view2;

static int as_view(const maskd_tensor *t, int transposed, const char *what, view2 *v,
                   maskd_error *err)
{
    if (t->dtype != MASKD_FLOAT)
        return mk_fail(err, MASKD_ERR_RUNTIME, "detect: the %s output must be float, not %s",
                       what, maskd_dtype_name(t->dtype));
    int nd = t->ndim;
    if (!(nd == 2 || (nd == 3 && t->dims[0] == 1)))
        return mk_fail(err, MASKD_ERR_RUNTIME,
                       "detect: the %s output must be [N, K] or [1, N, K] (%d dimensions)",
                       what, nd);
    int64_t a = t->dims[nd - 2], b = t->dims[nd - 1];
    v->data = t->data;
    if (transposed) *v = (view2){t->data, b, a, 1, b};
    else *v = (view2){t->data, a, b, b, 1};
    return MASKD_OK;
}

static inline float at(const view2 *v, int64_t i, int64_t j)
{
    return v->data[i * v->rs + j * v->cs];
}

static void to_xyxy(maskd_box_format f, const float in[4], float out[4])
{
    switch (f) {
    case MASKD_BOX_CXCYWH:
        out[0] = in[0] - in[2] / 2;
        out[1] = in[1] - in[3] / 2;
        out[2] = in[0] + in[2] / 2;
        out[3] = in[1] + in[3] / 2;
        break;
    case MASKD_BOX_XYWH:
        out[0] = in[0];
        out[1] = in[1];
        out[2] = in[0] + in[2];
        out[3] = in[1] + in[3];
        break;
    default: memcpy(out, in, 4 * sizeof(float));
    }
}

static float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

int mk_dense_run(maskd_worker *w, const maskd_image *image, const maskd_request *req,
                 maskd_result *res, maskd_error *err)
{
    (void)image;
    const maskd_pipeline *p = w->pipeline;
    const maskd_card_dense *d = &p->card.dense;
    double t0 = mk_now_ms();
    int rc = maskd_session_run(w->sessions[0], &w->input, 1, err);
    if (rc) return rc;
    w->stage_ran[0] = 1;
    double t1 = mk_now_ms();
    res->timing.infer_ms = t1 - t0;

    view2 boxes, scores;
    int64_t n, n_cls, score_col0;
    int obj_col = -1;
    if (p->dense_output >= 0) {
        view2 v;
        rc = as_view(maskd_session_output(w->sessions[0], p->dense_output), d->transposed,
                     "detections", &v, err);
        if (rc) return rc;
        n = v.rows;
        int64_t extra = 4 + (d->objectness ? 1 : 0);
        n_cls = v.cols - extra;
        if (n_cls < 1)
            return mk_fail(err, MASKD_ERR_RUNTIME,
                           "detect: rows of %lld values leave no class scores", (long long)v.cols);
        boxes = scores = v;
        score_col0 = extra;
        if (d->objectness) obj_col = 4;
    } else {
        rc = as_view(maskd_session_output(w->sessions[0], p->dense_boxes), d->transposed,
                     "boxes", &boxes, err);
        if (!rc)
            rc = as_view(maskd_session_output(w->sessions[0], p->dense_scores), d->transposed,
                         "scores", &scores, err);
        if (rc) return rc;
        if (boxes.cols != 4 || boxes.rows != scores.rows)
            return mk_fail(err, MASKD_ERR_RUNTIME,
                           "detect: boxes must be [N, 4] and scores [N, C] with the same N");
        n = boxes.rows;
        n_cls = scores.cols;
        score_col0 = 0;
    }

    /* Candidates above the score threshold: (box, score, label). */
    int64_t per_row = d->multi_label ? n_cls : 1;
    float *cand_boxes = malloc((size_t)(n * per_row + 1) * 4 * sizeof(float));
    float *cand_scores = malloc((size_t)(n * per_row + 1) * sizeof(float));
    int64_t *cand_labels = malloc((size_t)(n * per_row + 1) * sizeof(int64_t));
    float *row = malloc((size_t)(n_cls + 1) * sizeof(float));
    maskd_nms_result kept = {0};
    if (!cand_boxes || !cand_scores || !cand_labels || !row) {
        rc = mk_fail(err, MASKD_ERR_NOMEM, "detect: out of memory");
        goto done;
    }
    const double thr = req->nms.score_threshold;
    const float sx = d->normalized ? (float)p->card.input.width : 1.0f;
    const float sy = d->normalized ? (float)p->card.input.height : 1.0f;
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        float mx = -INFINITY;
        for (int64_t c = 0; c < n_cls; c++) {
            row[c] = at(&scores, i, score_col0 + c);
            if (row[c] > mx) mx = row[c];
        }
        if (d->activation == MASKD_SCORES_SOFTMAX) {
            float sum = 0;
            for (int64_t c = 0; c < n_cls; c++) sum += row[c] = expf(row[c] - mx);
            for (int64_t c = 0; c < n_cls; c++) row[c] /= sum;
        } else if (d->activation == MASKD_SCORES_SIGMOID) {
            for (int64_t c = 0; c < n_cls; c++) row[c] = sigmoid(row[c]);
        }
        if (obj_col >= 0) {
            float o = at(&scores, i, obj_col);
            if (d->activation == MASKD_SCORES_SIGMOID) o = sigmoid(o);
            for (int64_t c = 0; c < n_cls; c++) row[c] *= o;
        }
        float raw[4], box[4];
        for (int k = 0; k < 4; k++) raw[k] = at(&boxes, i, k) * (k & 1 ? sy : sx);
        to_xyxy(d->box_format, raw, box);
        int64_t best = 0;
        for (int64_t c = 1; c < n_cls; c++)
            if (row[c] > row[best]) best = c;
        for (int64_t c = d->multi_label ? 0 : best; c < (d->multi_label ? n_cls : best + 1); c++) {
            int32_t label = (int32_t)(c + d->class_offset);
            if (!(row[c] > thr) || !isfinite(row[c]) || !mk_class_wanted(p, req, label)) continue;
            if (!isfinite(box[0]) || !isfinite(box[1]) || !isfinite(box[2]) || !isfinite(box[3]))
                continue;
            memcpy(cand_boxes + 4 * m, box, sizeof box);
            cand_scores[m] = row[c];
            cand_labels[m] = label;
            m++;
        }
    }

    maskd_nms_input in = {m, cand_boxes, cand_scores, cand_labels, NULL, NULL};
    rc = maskd_nms(&in, &req->nms, &kept, err);
    if (rc) goto done;
    res->nms = req->nms;
    res->detections = calloc((size_t)kept.count + 1, sizeof *res->detections);
    if (!res->detections) {
        rc = mk_fail(err, MASKD_ERR_NOMEM, "detect: out of memory");
        goto done;
    }
    mk_boxes_to_original(&res->letterbox, kept.boxes, kept.count);
    for (int64_t k = 0; k < kept.count; k++) {
        maskd_detection *det = &res->detections[k];
        memcpy(det->box, kept.boxes + 4 * k, sizeof det->box);
        det->score = kept.scores[k];
        det->class_id = (int32_t)cand_labels[kept.indices[k]];
        det->label = mk_label(p, det->class_id);
    }
    res->n_detections = kept.count;

done:
    maskd_nms_result_free(&kept);
    free(cand_boxes);
    free(cand_scores);
    free(cand_labels);
    free(row);
    res->timing.post_ms = mk_now_ms() - t1;
    return rc;
}
