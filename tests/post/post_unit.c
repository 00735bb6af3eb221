/*
 * Degenerate inputs and error values of engine/post's box functions: the
 * cases a reference comparison does not reach (empty sets, bad values,
 * missing per-box inputs, both ROI Align layouts, threads vs no threads).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "maskd/post.h"
#include "../check.h"

static uint32_t rng_state = 12345;
static float frand(void)
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)(rng_state >> 8) / 16777216.0f;
}

static int run_nms(maskd_nms_method m, int agnostic, const float *boxes, const float *scores,
                   const int64_t *labels, int64_t n, maskd_nms_result *res, maskd_error *err)
{
    maskd_nms_options o;
    maskd_nms_options_init(&o, m);
    o.class_agnostic = agnostic;
    maskd_nms_input in = {.n = n, .boxes = boxes, .scores = scores, .labels = labels};
    return maskd_nms(&in, &o, res, err);
}

static void test_names(void)
{
    for (int m = 0; m < MASKD_NMS_METHOD_COUNT; m++) {
        maskd_nms_method back;
        maskd_error err = {0};
        const char *name = maskd_nms_method_name((maskd_nms_method)m);
        CHECK(maskd_nms_method_parse(name, &back, &err) == MASKD_OK && back == (maskd_nms_method)m,
              "method %d (%s) does not round-trip", m, name);
    }
    maskd_nms_method m;
    maskd_error err = {0};
    CHECK(maskd_nms_method_parse("greedy", &m, &err) == MASKD_ERR_INVALID &&
              strstr(err.message, "greedy") && strstr(err.message, "soft-gaussian"),
          "unknown method: %s", err.message);
    CHECK(maskd_nms_method_parse(NULL, &m, &err) == MASKD_ERR_INVALID, "NULL method name");
    maskd_nms_kernel k;
    CHECK(maskd_nms_kernel_parse("linear", &k, &err) == MASKD_OK && k == MASKD_NMS_KERNEL_LINEAR,
          "kernel linear");
    CHECK(maskd_nms_kernel_parse("box", &k, &err) == MASKD_ERR_INVALID, "kernel box");
}

static void test_empty_and_single(void)
{
    const float box[4] = {1, 2, 11, 12};
    const float score[1] = {0.75f};
    const float var[4] = {1, 1, 1, 1};
    const float dens[1] = {0.2f};
    for (int m = 0; m < MASKD_NMS_METHOD_COUNT; m++) {
        maskd_nms_options o;
        maskd_nms_options_init(&o, (maskd_nms_method)m);
        o.class_agnostic = 1;
        maskd_nms_input in = {.n = 0, .boxes = NULL, .scores = NULL, .variances = var,
                              .densities = dens};
        maskd_nms_result res;
        maskd_error err = {0};
        int rc = maskd_nms(&in, &o, &res, &err);
        CHECK(rc == MASKD_OK && res.count == 0, "%s on 0 boxes: rc %d %s",
              maskd_nms_method_name((maskd_nms_method)m), rc, err.message);
        maskd_nms_result_free(&res);

        in = (maskd_nms_input){.n = 1, .boxes = box, .scores = score, .variances = var,
                               .densities = dens};
        rc = maskd_nms(&in, &o, &res, &err);
        CHECK(rc == MASKD_OK && res.count == 1 && res.indices[0] == 0 &&
                  fabsf(res.scores[0] - 0.75f) < 1e-7f && res.boxes[0] == 1 && res.boxes[3] == 12,
              "%s on 1 box: rc %d count %lld %s", maskd_nms_method_name((maskd_nms_method)m), rc,
              (long long)res.count, err.message);
        maskd_nms_result_free(&res);
    }
}

static void test_bad_values(void)
{
    float boxes[8] = {0, 0, 10, 10, 5, 5, 15, 15};
    float scores[2] = {0.5f, NAN};
    maskd_nms_result res;
    maskd_error err = {0};
    int rc = run_nms(MASKD_NMS_HARD, 1, boxes, scores, NULL, 2, &res, &err);
    CHECK(rc == MASKD_ERR_INVALID && strstr(err.message, "NaN") && res.count == 0 && !res.indices,
          "NaN score: rc %d %s", rc, err.message);
    scores[1] = INFINITY;
    rc = run_nms(MASKD_NMS_SOFT_GAUSSIAN, 1, boxes, scores, NULL, 2, &res, &err);
    CHECK(rc == MASKD_ERR_INVALID && strstr(err.message, "infinite"), "inf score: %s",
          err.message);
    scores[1] = 0.25f;
    boxes[6] = -INFINITY;
    rc = run_nms(MASKD_NMS_HARD, 1, boxes, scores, NULL, 2, &res, &err);
    CHECK(rc == MASKD_ERR_INVALID && strstr(err.message, "box 1"), "inf coordinate: %s",
          err.message);
    boxes[6] = 15;

    /* Per-box inputs a method needs: an error naming what is missing. */
    rc = run_nms(MASKD_NMS_SOFTER, 1, boxes, scores, NULL, 2, &res, &err);
    CHECK(rc == MASKD_ERR_INVALID && strstr(err.message, "variances"), "softer: %s",
          err.message);
    rc = run_nms(MASKD_NMS_ADAPTIVE, 1, boxes, scores, NULL, 2, &res, &err);
    CHECK(rc == MASKD_ERR_INVALID && strstr(err.message, "density"), "adaptive: %s",
          err.message);
    rc = run_nms(MASKD_NMS_HARD, 0, boxes, scores, NULL, 2, &res, &err);
    CHECK(rc == MASKD_ERR_INVALID && strstr(err.message, "label"), "per-class: %s", err.message);
    rc = run_nms(MASKD_NMS_HARD, 0, NULL, NULL, NULL, 0, &res, &err);
    CHECK(rc == MASKD_ERR_INVALID, "per-class without labels fails even for 0 boxes");

    const float bad_var[8] = {1, 1, 1, 1, 1, 0, 1, 1};
    maskd_nms_options o;
    maskd_nms_options_init(&o, MASKD_NMS_SOFTER);
    o.class_agnostic = 1;
    maskd_nms_input in = {.n = 2, .boxes = boxes, .scores = scores, .variances = bad_var};
    rc = maskd_nms(&in, &o, &res, &err);
    CHECK(rc == MASKD_ERR_INVALID && strstr(err.message, "variance"), "zero variance: %s",
          err.message);

    maskd_nms_options_init(&o, MASKD_NMS_HARD);
    o.class_agnostic = 1;
    o.iou_threshold = 1.5;
    in = (maskd_nms_input){.n = 2, .boxes = boxes, .scores = scores};
    rc = maskd_nms(&in, &o, &res, &err);
    CHECK(rc == MASKD_ERR_INVALID && strstr(err.message, "[0, 1]"), "iou 1.5: %s", err.message);

    maskd_nms_options_init(&o, MASKD_NMS_WEIGHTED);
    o.class_agnostic = 1;
    const float neg[2] = {0.5f, -0.1f};
    in.scores = neg;
    rc = maskd_nms(&in, &o, &res, &err);
    CHECK(rc == MASKD_ERR_INVALID && strstr(err.message, "> 0"), "weighted negative: %s",
          err.message);
    o.score_threshold = 0;
    rc = maskd_nms(&in, &o, &res, &err);
    CHECK(rc == MASKD_OK && res.count == 1, "weighted with threshold 0: %s", err.message);
    maskd_nms_result_free(&res);
}

static void test_geometry(void)
{
    /* A flipped box is its normalized self: it suppresses its duplicate and
     * comes back normalized. */
    const float boxes[12] = {10, 10, 0, 0, 0, 0, 10, 10, 20, 20, 20, 30};
    const float scores[3] = {0.9f, 0.8f, 0.7f};
    maskd_nms_result res;
    maskd_error err = {0};
    int rc = run_nms(MASKD_NMS_HARD, 1, boxes, scores, NULL, 3, &res, &err);
    CHECK(rc == MASKD_OK && res.count == 2 && res.indices[0] == 0 && res.indices[1] == 2 &&
              res.boxes[0] == 0 && res.boxes[2] == 10,
          "flipped box: rc %d count %lld", rc, (long long)res.count);
    maskd_nms_result_free(&res);

    /* Zero-area duplicates never suppress each other. */
    const float flat[12] = {5, 5, 5, 9, 5, 5, 5, 9, 5, 5, 5, 9};
    const float same[3] = {0.5f, 0.5f, 0.5f};
    for (int m = 0; m < MASKD_NMS_METHOD_COUNT; m++) {
        if (m == MASKD_NMS_SOFTER || m == MASKD_NMS_ADAPTIVE) continue;
        rc = run_nms((maskd_nms_method)m, 1, flat, same, NULL, 3, &res, &err);
        CHECK(rc == MASKD_OK && res.count == 3 && res.indices[0] == 0 && res.indices[2] == 2,
              "%s zero-area: count %lld", maskd_nms_method_name((maskd_nms_method)m),
              (long long)res.count);
        maskd_nms_result_free(&res);
    }

    /* Ties keep the lowest index; labels keep classes apart. */
    const float dup[16] = {0, 0, 4, 4, 0, 0, 4, 4, 0, 0, 4, 4, 0, 0, 4, 4};
    const float tie[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    const int64_t labels[4] = {7, 3, 7, 3};
    rc = run_nms(MASKD_NMS_HARD, 1, dup, tie, NULL, 4, &res, &err);
    CHECK(rc == MASKD_OK && res.count == 1 && res.indices[0] == 0, "ties agnostic");
    maskd_nms_result_free(&res);
    rc = run_nms(MASKD_NMS_HARD, 0, dup, tie, labels, 4, &res, &err);
    CHECK(rc == MASKD_OK && res.count == 2 && res.indices[0] == 0 && res.indices[1] == 1,
          "ties per class: count %lld", (long long)res.count);
    maskd_nms_result_free(&res);

    /* Limits. */
    maskd_nms_options o;
    maskd_nms_options_init(&o, MASKD_NMS_HARD);
    o.class_agnostic = 1;
    o.max_detections = 1;
    maskd_nms_input in = {.n = 3, .boxes = boxes, .scores = scores};
    rc = maskd_nms(&in, &o, &res, &err);
    CHECK(rc == MASKD_OK && res.count == 1 && res.indices[0] == 0, "max_detections");
    maskd_nms_result_free(&res);
    o.max_detections = 0;
    o.score_threshold = 0.8;
    rc = maskd_nms(&in, &o, &res, &err);
    CHECK(rc == MASKD_OK && res.count == 1 && res.indices[0] == 0,
          "score threshold is strict: count %lld", (long long)res.count);
    maskd_nms_result_free(&res);
}

static void test_boxes(void)
{
    const float a[4] = {0, 0, 10, 10}, b[4] = {5, 0, 15, 10}, z[4] = {3, 3, 3, 3};
    CHECK(fabsf(maskd_box_iou(a, b) - 1.0f / 3.0f) < 1e-6f, "iou");
    CHECK(maskd_box_iou(z, z) == 0.0f, "iou of two points is 0");
    CHECK(fabsf(maskd_box_giou(a, b) - 1.0f / 3.0f) < 1e-6f, "giou of touching enclosure");
    CHECK(maskd_box_diou(z, z) == 0.0f, "diou of two points");
    maskd_anchor_level bad = {0};
    CHECK(maskd_anchor_count(&bad, 1) == -1, "malformed anchor level");
    float box[8] = {-5, -5, 700, 20, 10, 10, 20, 20};
    maskd_box_clip(box, 2, 640, 480);
    CHECK(box[0] == 0 && box[2] == 640 && box[4] == 10, "clip");
}

static void roi_align_ref_layouts(maskd_pool *pool)
{
    /* 300 ROIs sample the 2x16x24x20 map densely (channels-last path);
     * one ROI alone does not (in-place path).  Both must agree. */
    enum { N = 2, C = 16, H = 24, W = 20, R = 300 };
    float *x = malloc(sizeof(float) * N * C * H * W);
    for (int i = 0; i < N * C * H * W; i++) x[i] = frand() * 2 - 1;
    maskd_tensor t = {MASKD_FLOAT, 4, {N, C, H, W}, x};
    float rois[R * 4];
    int64_t batch[R];
    for (int r = 0; r < R; r++) {
        float x1 = frand() * 100 - 10, y1 = frand() * 120 - 10;
        rois[4 * r] = x1;
        rois[4 * r + 1] = y1;
        rois[4 * r + 2] = x1 + frand() * 60;
        rois[4 * r + 3] = y1 + frand() * 60;
        batch[r] = r % N;
    }
    for (int mode = MASKD_ROI_AVG; mode <= MASKD_ROI_MAX_ONNX; mode++)
        for (int aligned = 0; aligned < 2; aligned++) {
            maskd_roi_align_options o = {5, 4, 0.25f, mode == MASKD_ROI_AVG ? 0 : 2, aligned,
                                         (maskd_roi_mode)mode};
            float *all = malloc(sizeof(float) * R * C * 20), *one = malloc(sizeof(float) * C * 20);
            float *threaded = malloc(sizeof(float) * R * C * 20);
            maskd_error err = {0};
            int rc = maskd_roi_align(&t, rois, batch, R, &o, all, NULL, &err);
            CHECK(rc == MASKD_OK, "roi_align: %s", err.message);
            rc = maskd_roi_align(&t, rois, batch, R, &o, threaded, pool, &err);
            CHECK(rc == MASKD_OK && !memcmp(all, threaded, sizeof(float) * R * C * 20),
                  "mode %d aligned %d: threads change the result", mode, aligned);
            float worst = 0;
            for (int r = 0; r < R; r += 7) {
                maskd_roi_align(&t, rois + 4 * r, batch + r, 1, &o, one, NULL, &err);
                for (int k = 0; k < C * 20; k++) {
                    float d = fabsf(one[k] - all[r * C * 20 + k]);
                    worst = d > worst ? d : worst;
                }
            }
            CHECK(worst <= 1e-6f, "mode %d aligned %d: layouts differ by %g", mode, aligned,
                  (double)worst);
            free(all);
            free(one);
            free(threaded);
        }
    free(x);
}

static void test_roi_errors(void)
{
    float x[2 * 3 * 4 * 4] = {0};
    maskd_tensor t = {MASKD_FLOAT, 4, {2, 3, 4, 4}, x};
    maskd_roi_align_options o = {2, 2, 1.0f, 0, 0, MASKD_ROI_AVG};
    maskd_error err = {0};
    float out[3 * 4 * 2];
    CHECK(maskd_roi_align(&t, NULL, NULL, 0, &o, NULL, NULL, &err) == MASKD_OK, "0 ROIs");
    float roi[8] = {0, 0, 2, 2, 1, 1, NAN, 3};
    int64_t batch[2] = {2, 0};
    int rc = maskd_roi_align(&t, roi, batch, 1, &o, out, NULL, &err);
    CHECK(rc == MASKD_ERR_INVALID && strstr(err.message, "image 2"), "batch 2 of 2: %s",
          err.message);
    rc = maskd_roi_align(&t, roi, NULL, 2, &o, out, NULL, &err);
    CHECK(rc == MASKD_ERR_INVALID && strstr(err.message, "non-finite"), "NaN ROI: %s",
          err.message);
    o.pooled_h = 0;
    rc = maskd_roi_align(&t, roi, NULL, 1, &o, out, NULL, &err);
    CHECK(rc == MASKD_ERR_INVALID, "pooled 0");
    o.pooled_h = 2;
    rc = maskd_roi_pool(&t, roi, batch, 1, 2, 2, 1.0f, out, NULL, &err);
    CHECK(rc == MASKD_ERR_INVALID, "roi_pool batch 2 of 2");

    /* An aligned ROI thinner than a bin with adaptive sampling has no
     * samples: zeros, as torchvision gives. */
    for (int i = 0; i < 2 * 3 * 16; i++) x[i] = 1.0f;
    maskd_roi_align_options thin = {2, 2, 1.0f, 0, 1, MASKD_ROI_AVG};
    const float line[4] = {1, 1, 1, 3};
    for (int i = 0; i < 12; i++) out[i] = 42;
    rc = maskd_roi_align(&t, line, NULL, 1, &thin, out, NULL, &err);
    CHECK(rc == MASKD_OK && out[0] == 0 && out[11] == 0, "thin aligned ROI: %g", (double)out[0]);

    /* ROI Pool of a ROI wholly outside the map: empty bins are 0. */
    const float far[4] = {100, 100, 120, 120};
    rc = maskd_roi_pool(&t, far, NULL, 1, 2, 2, 1.0f, out, NULL, &err);
    CHECK(rc == MASKD_OK && out[0] == 0 && out[11] == 0, "roi_pool outside");

    /* FPN scales must be consecutive powers of two. */
    maskd_tensor lv[2] = {t, t};
    float scales[2] = {0.25f, 0.1f};
    rc = maskd_roi_align_fpn(lv, scales, 2, line, NULL, 1, &o, NULL, out, NULL, NULL, &err);
    CHECK(rc == MASKD_ERR_INVALID && strstr(err.message, "powers of two"), "fpn scales: %s",
          err.message);
}

int main(void)
{
    test_names();
    test_empty_and_single();
    test_bad_values();
    test_geometry();
    test_boxes();
    maskd_pool *pool = NULL;
    maskd_error err = {0};
    if (maskd_pool_create(2, &pool, &err)) {
        printf("pool: %s\n", err.message);
        return 1;
    }
    roi_align_ref_layouts(pool);
    maskd_pool_free(pool);
    test_roi_errors();
    printf("post_unit: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
