/*
 * maskd pipelines: image in, masks or boxes out.
 *
 * Three objects, for N inference workers running at once:
 * - maskd_card: the model card as plain data (config/card.c fills it from
 *   JSON; the engine knows no JSON).
 * - maskd_pipeline: the card plus the loaded graphs.  Immutable once loaded,
 *   shared by every worker.
 * - maskd_worker: one worker's sessions and scratch memory.  Used by one
 *   thread at a time; make one per concurrent inference.
 *
 * maskd_pipeline_run(worker, image, request, result) preprocesses, runs the
 * graph(s) and post-processes; every coordinate in the result is in the
 * ORIGINAL image's pixels (image->orig_*).
 *
 *   maskd_card card;                          // config/card.h fills it
 *   maskd_card_load_file("m.json", &card, &err);
 *   maskd_pipeline_load(&card, NULL, &pipe, &err);
 *   maskd_card_free(&card);                   // the pipeline keeps a copy
 *   maskd_worker_create(pipe, pool, &worker, &err);   // one per inference thread
 *   maskd_worker_warmup(worker, &err);
 *   ...
 *   maskd_letterbox lb;                       // decode JPEGs no smaller than this
 *   maskd_letterbox_compute(&maskd_pipeline_card(pipe)->input, w, h, &lb);
 *   maskd_request req;
 *   maskd_request_init(&req, pipe);
 *   maskd_request_parse(&req, pipe, n, keys, values, &err);   // query -> options
 *   maskd_pipeline_run(worker, &image, &req, &res, &err);     // INVALID -> 400
 *   ... server/respond.h turns res into the answer JSON ...
 *   maskd_result_free(&res);
 *   maskd_request_free(&req);
 */
#ifndef MASKD_PIPELINE_H
#define MASKD_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

#include "maskd/engine.h"
#include "maskd/masks.h"
#include "maskd/post.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A decoded image as the pipelines take it.  Decoders may hand over a
 * smaller image than the client sent (JPEG DCT-domain scaling); results are
 * always reported in the original image's pixels (orig_*), which are after
 * EXIF orientation. */
typedef struct maskd_image {
    int width, height;           /* of the pixels in rgb */
    int orig_width, orig_height; /* of the image as the client sent it */
    uint8_t *rgb;                /* width * height * 3 bytes, row-major RGB */
} maskd_image;

/* ====================================================================== */
/* Model cards                                                             */
/* ====================================================================== */

typedef enum maskd_pipeline_kind {
    MASKD_PIPELINE_SEGMENT = 0,  /* logits [1, C, h, w] -> class map -> segments */
    MASKD_PIPELINE_DETECT,       /* two graphs: RPN, then box/mask heads on ROI Align */
    MASKD_PIPELINE_DETECT_DENSE, /* one graph: boxes + class scores per candidate -> NMS */
} maskd_pipeline_kind;

typedef enum maskd_resize_mode {
    MASKD_RESIZE_KEEP_ASPECT = 0, /* scale by min(W/w, H/h), pad the rest */
    MASKD_RESIZE_STRETCH,         /* to exactly W x H, aspect not kept */
} maskd_resize_mode;

typedef enum maskd_placement {
    MASKD_PLACE_TOP_LEFT = 0, /* the resized image at (0, 0), padding right and below */
    MASKD_PLACE_CENTER,       /* centred; the odd pixel of padding goes right/below */
} maskd_placement;

typedef enum maskd_upsample_mode {
    MASKD_UPSAMPLE_BILINEAR_LOGITS = 0, /* resize logits to the original size, then argmax */
    MASKD_UPSAMPLE_ARGMAX_NEAREST,      /* argmax at logit resolution, then nearest */
} maskd_upsample_mode;

/*
 * How an image becomes the input tensor [1, 3, height, width] (float32):
 *   s = min(width / W, height / H) for an original image of W x H;
 *   new_w = clamp(floor(W s + 0.5), 1, width), likewise new_h (keep-aspect;
 *   stretch takes width x height);
 *   the decoded pixels are resized bilinearly (half-pixel centres, no
 *   antialiasing: PyTorch's F.interpolate(mode="bilinear",
 *   align_corners=False)) to new_w x new_h and placed per `placement`;
 *   each channel c of the tensor = (pixel * scale - mean[c]) / std[c];
 *   padding pixels take pad_value (0..255 units) through the same formula.
 * Coordinates map back with x_orig = (x_input - offset_x) * W / new_w.
 */
typedef struct maskd_card_input {
    char *name;         /* the graph input; NULL: input 0 */
    int width, height;  /* of the tensor */
    maskd_resize_mode resize;
    maskd_placement placement;
    int bgr;            /* tensor channels are B, G, R (mean/std in that order) */
    float scale;        /* 1 for mean/std in 0..255 units, 1/255 for 0..1 units */
    float mean[3], std[3];
    float pad_value[3]; /* in 0..255 pixel units, tensor channel order */
} maskd_card_input;

typedef struct maskd_card_segment {
    char *logits;                /* output name; NULL: output 0 */
    maskd_upsample_mode upsample;
    int crop_valid_region;       /* drop the padding before upsampling (default 1) */
} maskd_card_segment;

/* The NMS a card allows: defaults for requests, the methods its outputs
 * support (a bit per maskd_nms_method), and limits. */
typedef struct maskd_card_nms {
    maskd_nms_options defaults;
    uint32_t allowed;            /* (1u << method); 0 means every method but
                                    softer and adaptive */
    int64_t max_detections_limit; /* requests may not ask for more; 0: none */
    double iou_min, iou_max;      /* the iou requests may ask for (default 0, 1) */
} maskd_card_nms;

typedef enum maskd_box_format {
    MASKD_BOX_XYXY = 0,
    MASKD_BOX_CXCYWH,
    MASKD_BOX_XYWH,
} maskd_box_format;

typedef enum maskd_score_activation {
    MASKD_SCORES_AS_IS = 0,
    MASKD_SCORES_SIGMOID,
    MASKD_SCORES_SOFTMAX,
} maskd_score_activation;

/*
 * A single-stage detector.  Either one output of [N, 4 + [1] + C] rows
 * (optionally with a leading batch dimension of 1; `transposed` when it is
 * [4 + [1] + C, N], as YOLOv8 exports), or two outputs: boxes [N, 4] and
 * scores [N, C].  Boxes are in input-tensor pixels (or 0..1 of the input
 * size when `normalized`).  With `objectness`, column 4 multiplies every
 * class score.  Each candidate becomes one detection of its best class
 * unless `multi_label`.
 */
typedef struct maskd_card_dense {
    char *output;               /* the [N, 4 + C] output; NULL with boxes/scores */
    char *boxes, *scores;       /* the two-output form */
    int transposed;
    maskd_box_format box_format;
    int normalized;
    int objectness;
    maskd_score_activation activation;
    int multi_label;
    int class_offset;           /* label index of score column 0 (1 when the
                                   model has no background column but the
                                   labels list starts with background) */
} maskd_card_dense;

/*
 * A two-stage detector, as models/train/train_det.py's infer() (and
 * models/README.md) specify it:
 *   stage 1: image -> features [1, C, fh, fw], RPN objectness logits
 *     [1, N] and deltas [1, N, 4], N = fh * fw * A anchors in (y, x, a)
 *     order: anchor = base[a] + (x, y, x, y) * stride;
 *   the rpn_pre_nms_top_n highest logits (stable), deltas decoded
 *     (rpn_coder), clipped to the valid (unpadded) region, boxes narrower
 *     or lower than rpn_min_size dropped, sigmoid scores, hard NMS at
 *     rpn_nms_iou, the first rpn_post_nms_top_n kept = proposals;
 *   ROI Align of the features at the proposals (box_roi) -> stage 2:
 *     class logits [R, K] (class 0 = background), class-specific deltas
 *     [R, 4K], optional log-variances [R, 4K] (Softer-NMS; in units of the
 *     proposal's width^2 / height^2) and densities [R, 1] (Adaptive NMS),
 *     optional mask logits [R, K, m, m] over the proposal box;
 *   softmax; for each class c >= 1 (class-major order) decode (box_coder)
 *     from the proposal, clip to the valid region; keep score >
 *     box_score_threshold and width, height >= box_min_size; the requested
 *     NMS per class; boxes to original pixels; each detection's mask is its
 *     class's logits sampled bilinearly at original pixel centres inside the
 *     proposal box, > mask_threshold_logit.
 * Output names: the role names below unless the card renames them.
 */
typedef struct maskd_card_detect {
    char *features;           /* stage-1 outputs */
    char *objectness;
    char *rpn_deltas;
    float anchor_stride;      /* input pixels per feature cell */
    float *anchor_base;       /* [n_anchor_base, 4] cell anchors, or NULL: */
    int n_anchor_base;
    float *anchor_sizes;      /* ... from sizes x aspect ratios (torchvision) */
    int n_anchor_sizes;
    float *aspect_ratios;
    int n_aspect_ratios;
    maskd_box_coder rpn_coder;
    int64_t rpn_pre_nms_top_n, rpn_post_nms_top_n;
    float rpn_nms_iou;
    float rpn_min_size;

    char *box_input;          /* the stage-2 input (pooled features) */
    char *class_logits;       /* stage-2 outputs */
    char *box_deltas;
    char *variances;          /* optional: enable softer */
    char *densities;          /* optional: enable adaptive */
    char *mask_logits;        /* optional: instance masks */
    maskd_roi_align_options box_roi;
    maskd_box_coder box_coder;
    float box_score_threshold;
    float box_min_size;
    float mask_threshold_logit;
    int64_t stage2_batch;     /* > 0: the stage-2 graph takes exactly this many
                                 ROIs; they go in padded batches */
} maskd_card_detect;

typedef struct maskd_card {
    char *name;
    maskd_pipeline_kind pipeline;
    char *model_path;      /* the graph (two-stage: stage 1); absolute or
                              relative to the working directory */
    char *model2_path;     /* two-stage: stage 2 */
    maskd_card_input input;
    char **labels;
    int n_labels;
    int background_class;  /* not reported as a segment/detection; -1: none */
    maskd_card_segment segment;
    maskd_card_nms nms;
    maskd_card_dense dense;
    maskd_card_detect detect;
} maskd_card;

/* Defaults for every field (an empty, segment, 0x0 card). */
void maskd_card_init(maskd_card *card);
void maskd_card_free(maskd_card *card);
/* Deep copy; dst is overwritten. */
int maskd_card_copy(maskd_card *dst, const maskd_card *src, maskd_error *err);

/* "segment", "detect-two-stage", "detect-dense" (the card's "pipeline" values) */
const char *maskd_pipeline_kind_name(maskd_pipeline_kind kind);
const char *maskd_upsample_name(maskd_upsample_mode mode); /* "bilinear-logits", "argmax-nearest" */
int maskd_upsample_parse(const char *name, maskd_upsample_mode *out, maskd_error *err);

/* ====================================================================== */
/* Preprocessing (exposed for tests and clients that want the tensor)      */
/* ====================================================================== */

typedef struct maskd_letterbox {
    int orig_width, orig_height; /* W, H */
    int new_w, new_h;            /* the resized image inside the tensor */
    int offset_x, offset_y;      /* where it sits */
    double sx, sy;               /* new_w / W, new_h / H */
} maskd_letterbox;

void maskd_letterbox_compute(const maskd_card_input *in, int orig_width,
                             int orig_height, maskd_letterbox *out);
/* tensor: 3 * in->height * in->width floats (NCHW without the batch). */
int maskd_preprocess(const maskd_card_input *in, const maskd_image *image,
                     float *tensor, maskd_letterbox *lb, maskd_pool *pool,
                     maskd_error *err);

/* ====================================================================== */
/* Requests and results                                                    */
/* ====================================================================== */

typedef enum maskd_mask_format {
    MASKD_FORMAT_RLE = 0,  /* COCO compressed RLE per segment / detection */
    MASKD_FORMAT_PNG,      /* segment: one PNG class map; detect: a PNG per mask */
    MASKD_FORMAT_POLYGONS, /* rings per segment / detection */
    MASKD_FORMAT_NONE,     /* no masks, just boxes and areas */
} maskd_mask_format;

const char *maskd_mask_format_name(maskd_mask_format f); /* "rle", "png", "polygons", "none" */
int maskd_mask_format_parse(const char *name, maskd_mask_format *out, maskd_error *err);

/*
 * Per-request options.  maskd_request_init fills the card's defaults; the
 * caller changes what the client asked for; maskd_pipeline_run checks it
 * against the card (MASKD_ERR_INVALID, with a message for the client, when
 * the method is not allowed or a value is out of range: the server's 400).
 */
typedef struct maskd_request {
    maskd_nms_options nms;
    maskd_mask_format format;
    maskd_upsample_mode upsample;
    const int32_t *classes;   /* report only these class ids; NULL: all */
    int n_classes;
    double polygon_tolerance; /* pixels; 0 keeps every corner (default 0.5) */
    int keep_class_map;       /* segment: hand the class map back in the result */
    int keep_masks;           /* detect: keep each mask's RLE even when the
                                 format is not rle (for rendering) */
    int32_t *owned_classes;   /* set by maskd_request_parse; maskd_request_free */
} maskd_request;

typedef struct maskd_segment {
    int32_t class_id;
    const char *label;    /* borrowed from the card; NULL when it has no labels */
    int64_t area;
    int32_t box[4];       /* x1, y1, x2, y2; x2, y2 exclusive */
    maskd_rle rle;        /* format rle */
    char *counts;         /* its compressed string */
    maskd_polygons polygons; /* format polygons */
} maskd_segment;

typedef struct maskd_detection {
    float box[4];         /* x1, y1, x2, y2 in original pixels */
    float score;
    int32_t class_id;
    const char *label;
    int has_mask;
    maskd_rle rle;        /* format rle or keep_masks */
    char *counts;
    maskd_polygons polygons;
    unsigned char *png;   /* format png: a 0/255 greyscale PNG of the image size */
    size_t png_size;
} maskd_detection;

typedef struct maskd_timing {
    double preprocess_ms, infer_ms, post_ms;
} maskd_timing;

/* Labels and the model name are borrowed from the pipeline's card: a result
 * must not outlive its pipeline.  The PNG class map holds every class; the
 * request's class filter only selects the segments listed. */
typedef struct maskd_result {
    maskd_pipeline_kind kind;
    const char *model;    /* the card's name, borrowed */
    int width, height;    /* of the original image */
    maskd_mask_format format;
    int n_segments;
    maskd_segment *segments;
    unsigned char *class_map_png; /* segment, format png */
    size_t class_map_png_size;
    maskd_label_map class_map;    /* segment with keep_class_map (UINT8 or INT32) */
    int64_t n_detections;
    maskd_detection *detections;
    maskd_nms_options nms;        /* detect: what was applied */
    int64_t n_proposals;          /* two-stage: after the RPN */
    maskd_letterbox letterbox;
    maskd_timing timing;
} maskd_result;

void maskd_result_free(maskd_result *result);

/* ====================================================================== */
/* Pipelines and workers                                                   */
/* ====================================================================== */

typedef struct maskd_pipeline maskd_pipeline;
typedef struct maskd_worker maskd_worker;

/* Copies the card, loads its graph(s) and checks them against it (input
 * shape, output names and class counts): a card that does not fit its model
 * fails here, naming what disagrees. */
int maskd_pipeline_load(const maskd_card *card, const maskd_load_options *opt,
                        maskd_pipeline **out, maskd_error *err);
void maskd_pipeline_free(maskd_pipeline *pipeline);
const maskd_card *maskd_pipeline_card(const maskd_pipeline *pipeline);
/* The loaded graphs: 0 is the (first) graph, 1 the stage-2 graph. */
const maskd_model *maskd_pipeline_model(const maskd_pipeline *pipeline, int i);

void maskd_request_init(maskd_request *req, const maskd_pipeline *pipeline);
/* Switches req->nms to another method: that method's own defaults (iou,
 * sigma, ...; maskd_nms_options_init) but the card's score_threshold,
 * max_detections and class_agnostic, which describe the model, not the
 * method.  Call it before applying the client's other NMS values.  Whether
 * the method is allowed is checked by maskd_pipeline_run. */
void maskd_request_set_method(maskd_request *req, const maskd_pipeline *pipeline,
                              maskd_nms_method method);

/*
 * The client's options as strings (query parameters, form fields, flags):
 *   nms=METHOD iou=T sigma=S score_threshold=T max_detections=N
 *   class_agnostic=true|false|1|0 format=rle|png|polygons|none
 *   upsample=bilinear-logits|argmax-nearest classes=1,3 or classes=cat,dog
 * Applied in that order whatever order they come in (nms first, so that
 * the others override the method's defaults).  A key given twice, an
 * unknown key or a malformed value is MASKD_ERR_INVALID with a message for
 * the client naming the key.  Range checks against the card happen in
 * maskd_pipeline_run.  Call maskd_request_free afterwards.
 */
int maskd_request_parse(maskd_request *req, const maskd_pipeline *pipeline, int n,
                        const char *const *keys, const char *const *values, maskd_error *err);
void maskd_request_free(maskd_request *req);

/* pool may be NULL (one thread) and may be shared by workers; it must
 * outlive the worker. */
int maskd_worker_create(const maskd_pipeline *pipeline, maskd_pool *pool,
                        maskd_worker **out, maskd_error *err);
void maskd_worker_free(maskd_worker *worker);

/* On failure the result is left empty (safe to maskd_result_free).  Errors:
 * MASKD_ERR_INVALID for bad requests or images (the client's fault), others
 * for the model or the machine. */
int maskd_pipeline_run(maskd_worker *worker, const maskd_image *image,
                       const maskd_request *req, maskd_result *result,
                       maskd_error *err);

/* One run on a grey image of the input size: plans memory, touches pages. */
int maskd_worker_warmup(maskd_worker *worker, maskd_error *err);

/* For debugging and tests, valid until the next run: the last preprocessed
 * input tensor [1, 3, H, W], and the raw outputs of graph `stage` (0, or 1
 * for the two-stage stage 2; NULL when it did not run). */
const maskd_tensor *maskd_worker_input(const maskd_worker *worker);
int maskd_worker_num_outputs(const maskd_worker *worker, int stage);
const maskd_tensor *maskd_worker_output(const maskd_worker *worker, int stage, int i);
const char *maskd_worker_output_name(const maskd_worker *worker, int stage, int i);

#ifdef __cplusplus
}
#endif
#endif
