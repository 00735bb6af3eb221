/*
 * NonMaxSuppression (opsets 10 and 11, identical semantics) on top of the
 * hard NMS of engine/post/nms.c, run per (batch, class).
 *
 * ONNX's rules, which the library's options express exactly:
 * - a box takes part only if its score is > score_threshold (when that input
 *   is given; otherwise every box does);
 * - candidates are visited by score, ties lowest index first; a candidate is
 *   dropped when its IoU with a selected box of its class is > iou_threshold
 *   (which must lie in [0, 1]);
 * - at most max_output_boxes_per_class per (batch, class); absent or <= 0
 *   selects nothing;
 * - corners may come in either order; a center-format box with a negative
 *   width or height has no area and so never suppresses or is suppressed.
 * Scores that are NaN or infinite are rejected (maskd_nms's rule).
 *
 * The output's row count depends on the data, so infer returns MK_DYNAMIC
 * until boxes and scores have values; with values, infer runs the selection
 * once just to count, and run runs it again to write.  Caching the first
 * result would need state shared between infer and run, which the operator
 * contract does not have (node->state is read-only and shared by sessions),
 * and NMS is cheap next to the network that feeds it.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../mk.h"
#include "maskd/post.h"

typedef struct nms_attrs {
    int center_point_box;
} nms_attrs;

static int nms_prepare(mk_ctx *ctx)
{
    nms_attrs *a = calloc(1, sizeof *a);
    if (!a) return mk_fail(ctx->err, MASKD_ERR_NOMEM, "out of memory");
    ctx->node->state = a;
    int64_t cpb = mk_attr_int(ctx->node, "center_point_box", 0);
    if (cpb != 0 && cpb != 1)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "center_point_box must be 0 or 1, got %lld",
                        (long long)cpb);
    a->center_point_box = (int)cpb;
    return MASKD_OK;
}

typedef struct nms_params {
    int64_t batches, classes, boxes;
    int64_t max_per_class;
    double iou_threshold;
    double score_threshold;
} nms_params;

/* Validates shapes; MK_DYNAMIC when a value the count depends on is not
 * known yet. */
static int read_params(mk_ctx *ctx, nms_params *p)
{
    const mk_tensor *boxes = mk_input(ctx, 0), *scores = mk_input(ctx, 1);
    const mk_tensor *max_out = mk_input(ctx, 2), *iou = mk_input(ctx, 3), *score_thr = mk_input(ctx, 4);
    if (!boxes || !scores) return mk_op_fail(ctx, MASKD_ERR_INVALID, "needs boxes and scores");
    if (boxes->ndim < 0 || scores->ndim < 0) return MK_DYNAMIC;
    if (boxes->dtype != MASKD_FLOAT || scores->dtype != MASKD_FLOAT)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "boxes and scores must be float32");
    if (boxes->ndim != 3 || boxes->dims[2] != 4)
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "boxes must be [num_batches, num_boxes, 4]");
    if (scores->ndim != 3 || scores->dims[0] != boxes->dims[0] ||
        scores->dims[2] != boxes->dims[1])
        return mk_op_fail(ctx, MASKD_ERR_SHAPE,
                        "scores must be [num_batches, num_classes, num_boxes] matching boxes");
    const mk_tensor *opt[3] = {max_out, iou, score_thr};
    for (int i = 0; i < 3; i++) {
        if (!opt[i]) continue;
        if (opt[i]->ndim < 0) return MK_DYNAMIC;
        if (opt[i]->ndim > 1 || mk_numel(opt[i]) > 1)
            return mk_op_fail(ctx, MASKD_ERR_SHAPE, "input %d must be a scalar", i + 2);
    }
    if (max_out && max_out->dtype != MASKD_INT64 && max_out->dtype != MASKD_INT32)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "max_output_boxes_per_class must be int64");
    if ((iou && iou->dtype != MASKD_FLOAT) || (score_thr && score_thr->dtype != MASKD_FLOAT))
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "thresholds must be float32");
    p->batches = boxes->dims[0];
    p->classes = scores->dims[1];
    p->boxes = boxes->dims[1];

    if (!boxes->data || !scores->data) return MK_DYNAMIC;
    for (int i = 0; i < 3; i++)
        if (opt[i] && mk_numel(opt[i]) == 1 && !opt[i]->data) return MK_DYNAMIC;
    /* An empty tensor counts as an absent input, as in ONNX's reference. */
    p->max_per_class = max_out && mk_numel(max_out) == 1 ? mk_get_i64(max_out, 0) : 0;
    if (p->max_per_class < 0) p->max_per_class = 0;
    p->iou_threshold = iou && mk_numel(iou) == 1 ? mk_get_f64(iou, 0) : 0.0;
    if (!(p->iou_threshold >= 0.0 && p->iou_threshold <= 1.0))
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "iou_threshold %g must be in [0, 1]",
                        p->iou_threshold);
    p->score_threshold =
        score_thr && mk_numel(score_thr) == 1 ? mk_get_f64(score_thr, 0) : -INFINITY;
    if (isnan(p->score_threshold))
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "score_threshold is NaN");
    return MASKD_OK;
}

/* Runs the selection; writes rows into `rows` when it is not NULL (at most
 * cap of them).  Returns the row count in *count. */
static int select_boxes(mk_ctx *ctx, const nms_params *p, int64_t *rows, int64_t cap,
                        int64_t *count)
{
    const nms_attrs *a = ctx->node->state;
    const float *all_boxes = ctx->in[0]->data, *all_scores = ctx->in[1]->data;
    *count = 0;
    if (p->max_per_class == 0 || p->boxes == 0 || p->classes == 0) return MASKD_OK;
    float *xyxy = malloc(sizeof(float) * 4 * (size_t)p->boxes);
    if (!xyxy) return mk_fail(ctx->err, MASKD_ERR_NOMEM, "out of memory");
    maskd_nms_options o;
    maskd_nms_options_init(&o, MASKD_NMS_HARD);
    o.iou_threshold = p->iou_threshold;
    o.score_threshold = p->score_threshold;
    o.max_detections = p->max_per_class;
    o.class_agnostic = 1;
    int rc = MASKD_OK;
    for (int64_t b = 0; b < p->batches && !rc; b++) {
        const float *src = all_boxes + b * p->boxes * 4;
        for (int64_t i = 0; i < p->boxes; i++) {
            const float *s = src + 4 * i;
            float *d = xyxy + 4 * i;
            if (a->center_point_box) {
                float hw = s[2] / 2, hh = s[3] / 2;
                d[0] = s[0] - hw;
                d[1] = s[1] - hh;
                d[2] = s[2] < 0 || s[3] < 0 ? d[0] : s[0] + hw;
                d[3] = s[2] < 0 || s[3] < 0 ? d[1] : s[1] + hh;
            } else {
                /* [y1, x1, y2, x2], corners in either order. */
                d[0] = s[1];
                d[1] = s[0];
                d[2] = s[3];
                d[3] = s[2];
            }
        }
        for (int64_t c = 0; c < p->classes && !rc; c++) {
            maskd_nms_input in = {.n = p->boxes, .boxes = xyxy,
                                  .scores = all_scores + (b * p->classes + c) * p->boxes};
            maskd_nms_result res;
            rc = maskd_nms(&in, &o, &res, ctx->err);
            if (rc) {
                char msg[sizeof ctx->err->message];
                snprintf(msg, sizeof msg, "%s", ctx->err->message);
                rc = mk_op_fail(ctx, rc, "batch %lld, class %lld: %s", (long long)b,
                              (long long)c, msg);
                break;
            }
            for (int64_t k = 0; k < res.count; k++) {
                if (rows) {
                    if (*count >= cap) {
                        rc = mk_op_fail(ctx, MASKD_ERR_RUNTIME,
                                      "selection changed between infer and run");
                        break;
                    }
                    rows[3 * *count + 0] = b;
                    rows[3 * *count + 1] = c;
                    rows[3 * *count + 2] = res.indices[k];
                }
                (*count)++;
            }
            maskd_nms_result_free(&res);
        }
    }
    free(xyxy);
    return rc;
}

static int nms_infer(mk_ctx *ctx)
{
    mk_tensor *y = ctx->out[0];
    y->dtype = MASKD_INT64;
    nms_params p;
    int rc = read_params(ctx, &p);
    if (rc) return rc;
    int64_t count;
    rc = select_boxes(ctx, &p, NULL, 0, &count);
    if (rc) return rc;
    y->ndim = 2;
    y->dims[0] = count;
    y->dims[1] = 3;
    return MASKD_OK;
}

static int nms_run(mk_ctx *ctx)
{
    nms_params p;
    int rc = read_params(ctx, &p);
    if (rc == MK_DYNAMIC)
        return mk_op_fail(ctx, MASKD_ERR_RUNTIME, "inputs missing at run time");
    if (rc) return rc;
    mk_tensor *y = ctx->out[0];
    int64_t count;
    rc = select_boxes(ctx, &p, y->data, y->dims[0], &count);
    if (rc) return rc;
    if (count != y->dims[0])
        return mk_op_fail(ctx, MASKD_ERR_RUNTIME, "selection changed between infer and run");
    return MASKD_OK;
}

MK_OP_FAMILY(nms,
    {.domain = "", .op_type = "NonMaxSuppression", .since_version = 10,
     .prepare = nms_prepare, .infer = nms_infer, .run = nms_run, .release = free});
