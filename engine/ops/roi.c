/*
 * RoiAlign (opsets 10 and 16) and MaxRoiPool on top of engine/post/roi.c.
 *
 * RoiAlign-10 has no coordinate_transformation_mode: it always computes what
 * opset 16 calls output_half_pixel (no half-pixel shift, ROIs stretched to at
 * least 1x1).  RoiAlign-16 defaults to half_pixel.  We follow the model's
 * declared opset exactly, even where an exporter got it wrong (design §9).
 * mode="max" is ONNX's own definition (MASKD_ROI_MAX_ONNX in post.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../mk.h"
#include "maskd/post.h"

/* Re-labels an error from post/ with the node it happened in. */
static int relabel(mk_ctx *ctx, int rc)
{
    char msg[sizeof ctx->err->message];
    snprintf(msg, sizeof msg, "%s", ctx->err->message);
    return mk_op_fail(ctx, rc, "%s", msg);
}

/* ---- RoiAlign ---------------------------------------------------------------- */

static int roialign_prepare_common(mk_ctx *ctx, int aligned_default, bool has_ctm)
{
    maskd_roi_align_options *o = calloc(1, sizeof *o);
    if (!o) return mk_fail(ctx->err, MASKD_ERR_NOMEM, "out of memory");
    ctx->node->state = o;
    const mk_node *n = ctx->node;
    o->pooled_h = mk_attr_int(n, "output_height", 1);
    o->pooled_w = mk_attr_int(n, "output_width", 1);
    o->sampling_ratio = mk_attr_int(n, "sampling_ratio", 0);
    o->spatial_scale = mk_attr_float(n, "spatial_scale", 1.0f);
    o->aligned = aligned_default;
    const char *mode = mk_attr_str(n, "mode", "avg");
    if (!strcmp(mode, "avg"))
        o->mode = MASKD_ROI_AVG;
    else if (!strcmp(mode, "max"))
        o->mode = MASKD_ROI_MAX_ONNX;
    else
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "mode '%s' is not 'avg' or 'max'", mode);
    if (has_ctm) {
        const char *ctm = mk_attr_str(n, "coordinate_transformation_mode", "half_pixel");
        if (!strcmp(ctm, "half_pixel"))
            o->aligned = 1;
        else if (!strcmp(ctm, "output_half_pixel"))
            o->aligned = 0;
        else
            return mk_op_fail(ctx, MASKD_ERR_INVALID,
                            "coordinate_transformation_mode '%s' is not 'half_pixel' or "
                            "'output_half_pixel'",
                            ctm);
    }
    if (o->pooled_h < 1 || o->pooled_w < 1 || o->pooled_h > 4096 || o->pooled_w > 4096)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "output size %lldx%lld must be in [1, 4096]",
                        (long long)o->pooled_h, (long long)o->pooled_w);
    if (o->sampling_ratio < 0 || o->sampling_ratio > 1024)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "sampling_ratio %lld must be in [0, 1024]",
                        (long long)o->sampling_ratio);
    if (!(o->spatial_scale > 0) || !isfinite(o->spatial_scale))
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "spatial_scale %g must be > 0",
                        (double)o->spatial_scale);
    return MASKD_OK;
}

static int roialign10_prepare(mk_ctx *ctx) { return roialign_prepare_common(ctx, 0, false); }
static int roialign16_prepare(mk_ctx *ctx) { return roialign_prepare_common(ctx, 1, true); }

static bool is_int_type(maskd_dtype t)
{
    return t == MASKD_INT64 || t == MASKD_INT32 || t == MASKD_INT16 || t == MASKD_INT8 ||
           t == MASKD_UINT8 || t == MASKD_UINT16 || t == MASKD_UINT32 || t == MASKD_UINT64;
}

static int roialign_infer(mk_ctx *ctx)
{
    const maskd_roi_align_options *o = ctx->node->state;
    const mk_tensor *x = mk_input(ctx, 0), *rois = mk_input(ctx, 1), *bi = mk_input(ctx, 2);
    if (!x || !rois || !bi)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "needs X, rois and batch_indices");
    if (x->ndim < 0 || rois->ndim < 0 || bi->ndim < 0) return MK_DYNAMIC;
    if (x->dtype != MASKD_FLOAT)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "X of type %s (only float32 is supported)",
                        maskd_dtype_name(x->dtype));
    if (x->ndim != 4) return mk_op_fail(ctx, MASKD_ERR_SHAPE, "X must be 4-D [N,C,H,W]");
    if (rois->dtype != MASKD_FLOAT)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "rois must have X's type (float32)");
    if (rois->ndim != 2 || rois->dims[1] != 4)
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "rois must be [num_rois, 4]");
    if (!is_int_type(bi->dtype))
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "batch_indices must be integers");
    if (bi->ndim != 1 || bi->dims[0] != rois->dims[0])
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "batch_indices must be [num_rois] (%lld)",
                        (long long)rois->dims[0]);
    mk_tensor *y = ctx->out[0];
    y->dtype = MASKD_FLOAT;
    y->ndim = 4;
    y->dims[0] = rois->dims[0];
    y->dims[1] = x->dims[1];
    y->dims[2] = o->pooled_h;
    y->dims[3] = o->pooled_w;
    if (bi->dtype != MASKD_INT64) ctx->scratch_bytes = sizeof(int64_t) * (size_t)bi->dims[0];
    return MASKD_OK;
}

static int roialign_run(mk_ctx *ctx)
{
    const maskd_roi_align_options *o = ctx->node->state;
    const mk_tensor *x = ctx->in[0], *rois = ctx->in[1], *bi = ctx->in[2];
    const int64_t n = rois->dims[0];
    const int64_t *batch = bi->data;
    if (bi->dtype != MASKD_INT64) {
        int64_t *copy = ctx->scratch;
        for (int64_t r = 0; r < n; r++) copy[r] = mk_get_i64(bi, r);
        batch = copy;
    }
    int rc = maskd_roi_align(x, rois->data, batch, n, o, ctx->out[0]->data, ctx->pool,
                             ctx->err);
    return rc ? relabel(ctx, rc) : MASKD_OK;
}

/* ---- MaxRoiPool ----------------------------------------------------------------- */

typedef struct roipool_attrs {
    int64_t pooled_h, pooled_w;
    float spatial_scale;
} roipool_attrs;

static int maxroipool_prepare(mk_ctx *ctx)
{
    roipool_attrs *a = calloc(1, sizeof *a);
    if (!a) return mk_fail(ctx->err, MASKD_ERR_NOMEM, "out of memory");
    ctx->node->state = a;
    int64_t shape[2];
    if (mk_attr_ints(ctx->node, "pooled_shape", shape, 2) != 2)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "pooled_shape must be two ints (height, width)");
    a->pooled_h = shape[0];
    a->pooled_w = shape[1];
    a->spatial_scale = mk_attr_float(ctx->node, "spatial_scale", 1.0f);
    if (a->pooled_h < 1 || a->pooled_w < 1 || a->pooled_h > 4096 || a->pooled_w > 4096)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "pooled_shape %lldx%lld must be in [1, 4096]",
                        (long long)a->pooled_h, (long long)a->pooled_w);
    if (!(a->spatial_scale > 0) || !isfinite(a->spatial_scale))
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "spatial_scale %g must be > 0",
                        (double)a->spatial_scale);
    return MASKD_OK;
}

static int maxroipool_infer(mk_ctx *ctx)
{
    const roipool_attrs *a = ctx->node->state;
    const mk_tensor *x = mk_input(ctx, 0), *rois = mk_input(ctx, 1);
    if (!x || !rois) return mk_op_fail(ctx, MASKD_ERR_INVALID, "needs X and rois");
    if (x->ndim < 0 || rois->ndim < 0) return MK_DYNAMIC;
    if (x->dtype != MASKD_FLOAT || rois->dtype != MASKD_FLOAT)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED, "X and rois must be float32");
    if (x->ndim != 4) return mk_op_fail(ctx, MASKD_ERR_SHAPE, "X must be 4-D [N,C,H,W]");
    if (rois->ndim != 2 || rois->dims[1] != 5)
        return mk_op_fail(ctx, MASKD_ERR_SHAPE, "rois must be [num_rois, 5] (batch, x1, y1, x2, y2)");
    mk_tensor *y = ctx->out[0];
    y->dtype = MASKD_FLOAT;
    y->ndim = 4;
    y->dims[0] = rois->dims[0];
    y->dims[1] = x->dims[1];
    y->dims[2] = a->pooled_h;
    y->dims[3] = a->pooled_w;
    ctx->scratch_bytes = (sizeof(float) * 4 + sizeof(int64_t)) * (size_t)rois->dims[0];
    return MASKD_OK;
}

static int maxroipool_run(mk_ctx *ctx)
{
    const roipool_attrs *a = ctx->node->state;
    const mk_tensor *x = ctx->in[0], *rois = ctx->in[1];
    const int64_t n = rois->dims[0];
    const float *r5 = rois->data;
    int64_t *batch = ctx->scratch;
    float *boxes = (float *)(batch + n);
    for (int64_t r = 0; r < n; r++) {
        float b = r5[5 * r];
        /* The batch id travels as a float; anything but a valid image
         * number is an error, not a truncation. */
        if (!(b >= 0 && b < (float)x->dims[0]))
            return mk_op_fail(ctx, MASKD_ERR_INVALID,
                            "ROI %lld has batch index %g outside [0, %lld)", (long long)r,
                            (double)b, (long long)x->dims[0]);
        batch[r] = (int64_t)b;
        memcpy(boxes + 4 * r, r5 + 5 * r + 1, 4 * sizeof(float));
    }
    int rc = maskd_roi_pool(x, boxes, batch, n, a->pooled_h, a->pooled_w, a->spatial_scale,
                            ctx->out[0]->data, ctx->pool, ctx->err);
    return rc ? relabel(ctx, rc) : MASKD_OK;
}

MK_OP_FAMILY(roi,
    {.domain = "", .op_type = "RoiAlign", .since_version = 10, .until_version = 15,
     .prepare = roialign10_prepare, .infer = roialign_infer, .run = roialign_run,
     .release = free},
    {.domain = "", .op_type = "RoiAlign", .since_version = 16, .prepare = roialign16_prepare,
     .infer = roialign_infer, .run = roialign_run, .release = free},
    {.domain = "", .op_type = "MaxRoiPool", .since_version = 1, .prepare = maxroipool_prepare,
     .infer = maxroipool_infer, .run = maxroipool_run, .release = free});
