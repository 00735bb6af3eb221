/* What the pipeline files share: the loaded pipeline and a worker's state. */
#ifndef MK_PIPELINE_INTERNAL_H
#define MK_PIPELINE_INTERNAL_H

#include "maskd/pipeline.h"
#include "mk.h"

enum { MK_STAGES = 2 };

struct maskd_pipeline {
    maskd_card card;
    maskd_model *models[MK_STAGES]; /* [1] only for the two-stage detector */
    int input_index;                /* of the image input in models[0] */
    int n_classes;                  /* from the graph when static, else labels; 0: unknown */
    uint32_t nms_allowed;           /* the card's, with the outputs' limits applied */
    /* Output indices, -1 when absent. */
    int seg_logits;
    int dense_output, dense_boxes, dense_scores;
    int det_features, det_objectness, det_rpn_deltas;
    int det_box_input;
    int det_class_logits, det_box_deltas, det_mask_logits, det_variances, det_densities;
};

struct maskd_worker {
    const maskd_pipeline *pipeline;
    maskd_pool *pool;
    maskd_session *sessions[MK_STAGES];
    int stage_ran[MK_STAGES];
    maskd_tensor input; /* [1, 3, H, W], data owned */
    float *scratch;     /* grows as needed (mk_scratch) */
    size_t scratch_floats;
    float *anchors;     /* two-stage: [n_anchors, 4] for the last feature grid */
    int64_t n_anchors, anchor_grid_h, anchor_grid_w;
};

/* A float buffer of at least n floats from the worker (valid until the next
 * call); NULL when out of memory. */
float *mk_scratch(maskd_worker *w, size_t n);

double mk_now_ms(void);

int mk_segment_run(maskd_worker *w, const maskd_image *image, const maskd_request *req,
                   maskd_result *res, maskd_error *err);
int mk_dense_run(maskd_worker *w, const maskd_image *image, const maskd_request *req,
                 maskd_result *res, maskd_error *err);
int mk_detect_run(maskd_worker *w, const maskd_image *image, const maskd_request *req,
                  maskd_result *res, maskd_error *err);
/* Load-time checks of the two-stage card against its graphs. */
int mk_detect_bind(maskd_pipeline *p, maskd_error *err);

/* Is class k wanted by the request (its filter, and not the background)? */
int mk_class_wanted(const maskd_pipeline *p, const maskd_request *req, int32_t k);
const char *mk_label(const maskd_pipeline *p, int32_t k);

/* Detections in input-tensor pixels -> original pixels, clipped. */
void mk_boxes_to_original(const maskd_letterbox *lb, float *boxes, int64_t n);

/* Masks of detections in the result, per req->format (RLE string,
 * polygons or PNG) from a 0/1 mask of the original image's size whose ones
 * lie inside bb (x1, y1, x2, y2 exclusive; NULL: anywhere). */
int mk_detection_set_mask(maskd_detection *d, const uint8_t *mask, int width, int height,
                          const int32_t *bb, const maskd_request *req, maskd_pool *pool,
                          maskd_error *err);

/* COCO RLE counts being built: column-major runs, zeros first, the array
 * grown as runs end (a failed allocation is remembered for finish). */
typedef struct mk_rle_runs {
    uint32_t *counts;
    size_t n, cap;
    uint32_t run;
    int value;
    int failed;
} mk_rle_runs;

void mk_rle_runs_close(mk_rle_runs *r);

static inline void mk_rle_runs_add(mk_rle_runs *r, int value, uint32_t len)
{
    if (!len) return;
    if (value != r->value) {
        mk_rle_runs_close(r);
        r->value = value;
        r->run = 0;
    }
    r->run += len;
}

/* Closes the last run and hands the counts to out (they are freed on failure). */
int mk_rle_runs_finish(mk_rle_runs *r, int height, int width, maskd_rle *out, maskd_error *err);

#endif
