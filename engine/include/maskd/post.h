/*
 * maskd post-processing for detectors: the NMS family, ROI Align / ROI
 * Pooling, and box utilities (anchors, delta coding, IoU variants).
 *
 * Conventions shared by every function here:
 * - A box is four floats [x1, y1, x2, y2] in pixels; width = x2 - x1, no +1.
 * - IoU = inter / (area_a + area_b - inter), and 0 when the union is 0.
 * - Functions that can fail return MASKD_OK or a maskd_status and fill `err`
 *   with a message meant for a person (the server passes it on as a 400).
 * - Nothing here keeps state between calls; every call is thread-safe.
 */
#ifndef MASKD_POST_H
#define MASKD_POST_H

#include <stdint.h>

#include "maskd/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ====================================================================== */
/* NMS                                                                     */
/* ====================================================================== */

typedef enum maskd_nms_method {
    MASKD_NMS_HARD = 0,      /* greedy; drop b when IoU(M, b) > t (torchvision.ops.nms) */
    MASKD_NMS_SOFT_LINEAR,   /* s_b *= 1 - IoU when IoU > t */
    MASKD_NMS_SOFT_GAUSSIAN, /* s_b *= exp(-IoU^2 / sigma) for every b */
    MASKD_NMS_WEIGHTED,      /* hard, then M = score-weighted mean of its cluster */
    MASKD_NMS_DIOU,          /* greedy; drop b when IoU - (d^2/c^2)^beta > t */
    MASKD_NMS_SOFTER,        /* variance voting on the boxes + Gaussian soft scores */
    MASKD_NMS_ADAPTIVE,      /* greedy; drop b when IoU > max(t, density_M) */
    MASKD_NMS_MATRIX,        /* one parallel decay pass (SOLOv2) */
    MASKD_NMS_CLUSTER,       /* hard NMS as repeated matrix passes (Zheng et al.) */
    MASKD_NMS_METHOD_COUNT
} maskd_nms_method;

/*
 * The rules exactly.  "Candidates" are the boxes left after the score
 * threshold and pre-NMS top-k, ranked by (score desc, index asc); "b of M's
 * class" means every candidate when class_agnostic, else those with M's label.
 *
 * hard       visit candidates by rank; keep M unless a kept box of its class
 *            has IoU(kept, M) > t.
 * weighted   hard's kept set; each kept M's box becomes sum(s_b b)/sum(s_b)
 *            over M and every candidate b of its class with IoU(M, b) > t
 *            (suppressed or not).  Scores are the weights: they must be > 0.
 * diou       as hard with IoU(kept, M) - (d^2/c^2)^beta > t; d is the distance
 *            of the centres, c the diagonal of the enclosing box (term 0 when
 *            c = 0).
 * adaptive   as hard, but kept M suppresses b when IoU(M, b) > max(t, density_M);
 *            densities <= t make it hard NMS.
 * cluster    X = IoU of each candidate pair i < j of one class (rank order);
 *            keep_0 = everyone; keep_k = {j : no i in keep_(k-1) with X_ij > t};
 *            stop when keep stops changing or after cluster_max_iter rounds.
 *            Run to the end it equals hard.  Cost O(rounds * n^2), memory O(n).
 * soft-*     repeat: M = the remaining candidate with the highest current score
 *            (ties: lowest rank), output it with that score; for every other
 *            remaining b of M's class, s_b *= 1 - IoU(M, b) if IoU > t (linear)
 *            or s_b *= exp(-IoU(M, b)^2 / sigma) (gaussian); drop b once
 *            s_b <= score_threshold.
 * softer     soft-gaussian's loop; the output box of each M is the variance
 *            vote over M and every candidate b of its class with IoU(M, b) > t
 *            (original boxes, selected or not): per coordinate k,
 *            sum(p_b x_bk / var_bk) / sum(p_b / var_bk), p_b =
 *            exp(-(1 - IoU(M, b))^2 / sigma_t), p_M = 1.
 * matrix     comp_i = max IoU of i with a higher-ranked candidate of its class
 *            (0 if none); decay_j = min(1, min over higher-ranked i of j's class
 *            of f(IoU_ij) / f(comp_i)), where an i with f(comp_i) = 0 (a
 *            duplicate under the linear kernel) imposes nothing; s_j *= decay_j;
 *            then the score threshold, sort by new score (ties: rank), cap.
 * The pairwise methods other than hard are O(n^2) time and O(n) memory:
 * use pre_nms_top_k on large sets.
 */

typedef enum maskd_nms_kernel {
    MASKD_NMS_KERNEL_GAUSSIAN = 0, /* f(x) = exp(-sigma x^2) */
    MASKD_NMS_KERNEL_LINEAR,       /* f(x) = 1 - x */
} maskd_nms_kernel;

/*
 * Options.  Start from maskd_nms_options_init(&o, method), which fills the
 * defaults listed here, then change what you need.
 *
 * iou_threshold    t in [0, 1].  hard/weighted/diou/adaptive/cluster/
 *                  soft-linear/softer.  Default 0.5 (soft-linear 0.3).
 * sigma            > 0.  soft-gaussian and softer: the score decay
 *                  exp(-IoU^2/sigma), default 0.5.  matrix with the Gaussian
 *                  kernel: exp(-sigma IoU^2), default 2.0.
 * score_threshold  a box is dropped as soon as its score (the input score,
 *                  or for soft-*, softer and matrix its decayed score) is not
 *                  above it: only s > score_threshold survives.  -INFINITY
 *                  keeps everything.  Default -INFINITY; 0.001 for soft-*,
 *                  softer; 0.05 for matrix.
 * pre_nms_top_k    after the score threshold, only the k best-scored boxes
 *                  (over all classes) take part.  0 = all.  Default 0.
 * max_detections   at most this many boxes come out.  0 = no limit.  Default 0.
 * class_agnostic   0: boxes only interact with boxes of the same label
 *                  (torchvision's batched_nms); labels are then required.
 *                  1: labels are ignored.  Default 0.
 * diou_beta        > 0, exponent on the DIoU penalty.  Default 1.0.
 * matrix_kernel    Default Gaussian.
 * cluster_max_iter cap on Cluster-NMS iterations; 0 = until the kept set is
 *                  stable (at most n passes).  Default 0.
 * softer_sigma_t   > 0, the voting weight exp(-(1-IoU)^2/sigma_t).
 *                  Default 0.025.
 */
typedef struct maskd_nms_options {
    maskd_nms_method method;
    double iou_threshold;
    double sigma;
    double score_threshold;
    int64_t pre_nms_top_k;
    int64_t max_detections;
    int class_agnostic;
    double diou_beta;
    maskd_nms_kernel matrix_kernel;
    int64_t cluster_max_iter;
    double softer_sigma_t;
} maskd_nms_options;

void maskd_nms_options_init(maskd_nms_options *opt, maskd_nms_method method);

/*
 * The boxes to filter.  Per-box inputs a method needs and does not get make
 * maskd_nms fail with MASKD_ERR_INVALID (never a silent fallback):
 *   labels     [n]     needed unless class_agnostic
 *   variances  [n, 4]  softer: the predicted variance of x1, y1, x2, y2; > 0
 *   densities  [n]     adaptive: the predicted crowd density of each box
 * Inputs a method does not use are ignored.
 *
 * Degenerate input:
 * - n = 0 is fine (an empty result); so is n = 1.
 * - NaN or infinite scores, coordinates, variances or densities are
 *   rejected with MASKD_ERR_INVALID naming the first bad index.
 * - A box with x2 < x1 (or y2 < y1) is read as its two corners in either
 *   order, i.e. normalized to [min x, min y, max x, max y], as ONNX's
 *   NonMaxSuppression does; the result's boxes are the normalized ones.
 * - Zero-area boxes have IoU 0 with everything: they are never suppressed
 *   and never suppress.
 * - Equal scores are ordered by index, lowest first (a stable sort, as
 *   torchvision does).
 */
typedef struct maskd_nms_input {
    int64_t n;
    const float *boxes;     /* [n, 4] */
    const float *scores;    /* [n] */
    const int64_t *labels;  /* [n] or NULL */
    const float *variances; /* [n, 4] or NULL */
    const float *densities; /* [n] or NULL */
} maskd_nms_input;

/*
 * What survives, in output order: for hard, weighted, diou, adaptive and
 * cluster the descending input score; for soft-*, softer and matrix the
 * descending final score.  scores are the final (rescored) scores; boxes are
 * the merged boxes for weighted and softer, the (normalized) input boxes
 * otherwise.  The arrays are malloc'd; free them with maskd_nms_result_free.
 */
typedef struct maskd_nms_result {
    int64_t count;
    int64_t *indices; /* [count] indices into the input */
    float *scores;    /* [count] */
    float *boxes;     /* [count, 4] */
} maskd_nms_result;

/* On failure *out is left empty (count 0, NULL arrays). */
int maskd_nms(const maskd_nms_input *in, const maskd_nms_options *opt,
              maskd_nms_result *out, maskd_error *err);
void maskd_nms_result_free(maskd_nms_result *result);

/* "hard", "soft-linear", "soft-gaussian", "weighted", "diou", "softer",
 * "adaptive", "matrix", "cluster" (the server's `nms=` values). */
const char *maskd_nms_method_name(maskd_nms_method method);
int maskd_nms_method_parse(const char *name, maskd_nms_method *out, maskd_error *err);
/* "gaussian", "linear". */
const char *maskd_nms_kernel_name(maskd_nms_kernel kernel);
int maskd_nms_kernel_parse(const char *name, maskd_nms_kernel *out, maskd_error *err);

/* ====================================================================== */
/* ROI Align and ROI Pooling                                               */
/* ====================================================================== */

typedef enum maskd_roi_mode {
    MASKD_ROI_AVG = 0,  /* mean of the bilinear samples of a bin */
    MASKD_ROI_MAX,      /* max of the bilinear samples of a bin */
    /* ONNX RoiAlign's mode="max": the max over samples of the largest of the
     * four weighted corner terms w_k * v_k (not of their sum), as the ONNX
     * reference and ONNX Runtime compute it.  For the RoiAlign op. */
    MASKD_ROI_MAX_ONNX,
} maskd_roi_mode;

/*
 * ROI Align (He et al.), as torchvision.ops.roi_align: the ROI scaled by
 * spatial_scale (and shifted by -0.5 when aligned) is cut into
 * pooled_h x pooled_w bins of g_h x g_w sample points each, where g is
 * sampling_ratio or, when it is 0, ceil(roi size / pooled size).  A sample
 * outside [-1, H] x [-1, W] counts as 0; others are clamped into the map and
 * interpolated bilinearly.  aligned = 0 stretches ROIs smaller than one
 * pixel to one pixel (torchvision aligned=False, ONNX output_half_pixel);
 * aligned = 1 is torchvision aligned=True and ONNX half_pixel.
 */
typedef struct maskd_roi_align_options {
    int64_t pooled_h, pooled_w; /* >= 1 */
    float spatial_scale;        /* > 0; e.g. 1/16 for a stride-16 map */
    int64_t sampling_ratio;     /* >= 0; 0 = adaptive */
    int aligned;
    maskd_roi_mode mode;
} maskd_roi_align_options;

/*
 * features: float [N, C, H, W].  rois: [n_rois, 4] boxes in image pixels.
 * batch_indices: [n_rois] image of each ROI in [0, N), or NULL for all 0.
 * out: [n_rois, C, pooled_h, pooled_w].  ROIs are spread over pool (NULL =
 * this thread).  Non-finite ROI coordinates and bad batch indices are
 * errors.
 */
int maskd_roi_align(const maskd_tensor *features, const float *rois,
                    const int64_t *batch_indices, int64_t n_rois,
                    const maskd_roi_align_options *opt, float *out,
                    maskd_pool *pool, maskd_error *err);

/*
 * Multi-level ROI Align over an FPN, as torchvision's MultiScaleRoIAlign:
 * levels[i] (all with the same N and C) has scale 2^-(k_min + i), finest
 * first (scales[i] must be those powers of two, e.g. 1/4, 1/8, 1/16, 1/32).
 * Each ROI goes to the level
 *   k = clamp(floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6),
 *             k_min, k_max)
 * (FPN paper eq. 1; torchvision uses 224 and 4) and is pooled there with
 * opt (whose spatial_scale is ignored).  roi_levels ([n_rois] or NULL)
 * receives the chosen level index i.
 */
typedef struct maskd_fpn_options {
    float canonical_scale; /* 224 */
    int canonical_level;   /* 4 */
} maskd_fpn_options;

int maskd_roi_align_fpn(const maskd_tensor *levels, const float *scales,
                        int n_levels, const float *rois,
                        const int64_t *batch_indices, int64_t n_rois,
                        const maskd_roi_align_options *opt,
                        const maskd_fpn_options *fpn, /* NULL = 224, 4 */
                        float *out, int64_t *roi_levels, maskd_pool *pool,
                        maskd_error *err);

/* The level index (0 = finest) the rule above picks for one box. */
int maskd_fpn_level(const float box[4], int k_min, int k_max,
                    const maskd_fpn_options *fpn);

/*
 * ROI Pooling (Fast R-CNN), as torchvision.ops.roi_pool and ONNX MaxRoiPool:
 * ROI corners are rounded (half away from zero) to feature pixels after
 * scaling, the ROI (at least 1x1, both ends inclusive) is cut into bins with
 * floor/ceil edges, each bin takes the max, an empty bin gives 0.
 */
int maskd_roi_pool(const maskd_tensor *features, const float *rois,
                   const int64_t *batch_indices, int64_t n_rois,
                   int64_t pooled_h, int64_t pooled_w, float spatial_scale,
                   float *out, maskd_pool *pool, maskd_error *err);

/* ====================================================================== */
/* Boxes                                                                   */
/* ====================================================================== */

/*
 * Anchors as torchvision's AnchorGenerator: for each level, one cell anchor
 * per (aspect ratio, size) pair, ratio-major, with h = size*sqrt(r),
 * w = size/sqrt(r) (r = height/width) and corners rounded half to even
 * around 0; then the cell anchors are shifted to every grid location
 * (x = col * stride_w, y = row * stride_h), row-major, all cell anchors of a
 * location together.  Levels follow each other in the output.
 */
typedef struct maskd_anchor_level {
    const float *sizes;
    int n_sizes;
    const float *aspect_ratios;
    int n_aspect_ratios;
    int64_t grid_h, grid_w;     /* the feature map's size */
    float stride_h, stride_w;   /* image size // grid size in torchvision */
} maskd_anchor_level;

/* Total anchor count, or -1 when a level is malformed. */
int64_t maskd_anchor_count(const maskd_anchor_level *levels, int n_levels);
/* out: [maskd_anchor_count(levels, n_levels), 4]. */
int maskd_anchors(const maskd_anchor_level *levels, int n_levels, float *out,
                  maskd_error *err);

/*
 * Box-delta coding as torchvision's BoxCoder: with (cx, cy, w, h) of the
 * reference (anchor/proposal) box a and of the target b,
 *   dx = wx (cx_b - cx_a) / w_a,   dw = ww log(w_b / w_a)   (and y, h alike).
 * Decoding divides by the weights and clamps dw, dh at clip before exp().
 */
typedef struct maskd_box_coder {
    float wx, wy, ww, wh; /* (1,1,1,1) for an RPN, (10,10,5,5) for a box head */
    float clip;           /* log(1000/16), MASKD_BOX_CODER_CLIP */
} maskd_box_coder;

#define MASKD_BOX_CODER_CLIP 4.135166556742356 /* log(1000 / 16) */

/* deltas: [n, 4] codes of boxes[i] against refs[i]. */
void maskd_box_encode(const maskd_box_coder *coder, const float *boxes,
                      const float *refs, int64_t n, float *deltas);
/* deltas: [n, k, 4] (k boxes per reference, e.g. one per class);
 * out: [n, k, 4]. */
void maskd_box_decode(const maskd_box_coder *coder, const float *deltas,
                      const float *refs, int64_t n, int64_t k, float *out);

/* Clamps x into [0, width] and y into [0, height] (torchvision's
 * clip_boxes_to_image). */
void maskd_box_clip(float *boxes, int64_t n, float width, float height);

/* Pairwise measures of two boxes (normalized: x1 <= x2, y1 <= y2).
 * giou = iou - (enclosing area - union) / enclosing area;
 * diou = iou - d^2 / c^2 (d: centre distance, c: the enclosing box's
 * diagonal).  A zero denominator makes its term 0. */
float maskd_box_iou(const float a[4], const float b[4]);
float maskd_box_giou(const float a[4], const float b[4]);
float maskd_box_diou(const float a[4], const float b[4]);

#ifdef __cplusplus
}
#endif
#endif
