/* Unit tests of the pieces around the pipelines that need no model: the
 * letterbox arithmetic, card parsing and copying, the answer JSON, base64. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "card.h"
#include "maskd/pipeline.h"
#include "respond.h"
#include "../check.h"

static void test_letterbox(void)
{
    maskd_card c;
    maskd_card_init(&c);
    c.input.width = c.input.height = 320;
    maskd_letterbox lb;
    maskd_letterbox_compute(&c.input, 640, 480, &lb);
    CHECK(lb.new_w == 320 && lb.new_h == 240 && lb.offset_x == 0 && lb.offset_y == 0, "%dx%d",
          lb.new_w, lb.new_h);
    maskd_letterbox_compute(&c.input, 1, 1000, &lb);
    CHECK(lb.new_w == 1 && lb.new_h == 320, "%dx%d", lb.new_w, lb.new_h);
    maskd_letterbox_compute(&c.input, 517, 389, &lb);
    CHECK(lb.new_w == 320 && lb.new_h == 241, "%dx%d", lb.new_w, lb.new_h); /* 240.77 -> 241 */
    c.input.placement = MASKD_PLACE_CENTER;
    maskd_letterbox_compute(&c.input, 640, 480, &lb);
    CHECK(lb.offset_x == 0 && lb.offset_y == 40, "%d,%d", lb.offset_x, lb.offset_y);
    c.input.resize = MASKD_RESIZE_STRETCH;
    c.input.height = 200;
    maskd_letterbox_compute(&c.input, 640, 480, &lb);
    CHECK(lb.new_w == 320 && lb.new_h == 200 && fabs(lb.sy - 200.0 / 480) < 1e-12, "%dx%d",
          lb.new_w, lb.new_h);
    maskd_card_free(&c);
}

static void test_preprocess_identity(void)
{
    /* An image of the input's size: no resampling, just (x * scale - mean) / std. */
    maskd_card c;
    maskd_card_init(&c);
    c.input.width = 4;
    c.input.height = 2;
    c.input.scale = 1.0f / 255;
    for (int k = 0; k < 3; k++) {
        c.input.mean[k] = 0.5f;
        c.input.std[k] = 0.25f;
    }
    uint8_t rgb[2 * 4 * 3];
    for (int i = 0; i < 24; i++) rgb[i] = (uint8_t)(i * 10);
    maskd_image img = {4, 2, 4, 2, rgb};
    float t[3 * 8];
    maskd_letterbox lb;
    maskd_error err;
    CHECK(maskd_preprocess(&c.input, &img, t, &lb, NULL, &err) == MASKD_OK, "%s", err.message);
    float worst = 0;
    for (int ch = 0; ch < 3; ch++)
        for (int p = 0; p < 8; p++) {
            float want = ((float)rgb[p * 3 + ch] / 255 - 0.5f) / 0.25f;
            worst = fmaxf(worst, fabsf(t[ch * 8 + p] - want));
        }
    CHECK(worst < 1e-5, "max diff %g", (double)worst);
    maskd_image empty = {0, 0, 0, 0, NULL};
    CHECK(maskd_preprocess(&c.input, &empty, t, &lb, NULL, &err) == MASKD_ERR_INVALID, "empty");
    maskd_card_free(&c);
}

static void test_card(void)
{
    const char *text =
        "{\"name\": \"voc\", \"pipeline\": \"segment\", \"files\": {\"model\": \"m.onnx\"},"
        " \"input\": {\"width\": 320, \"height\": 256, \"scale\": \"0..1\","
        "   \"mean\": [0.485, 0.456, 0.406], \"std\": [0.229, 0.224, 0.225]},"
        " \"labels\": [\"background\", \"cat\"], \"background_class\": 0,"
        " \"postprocess\": {\"upsample\": \"argmax-nearest\"}, \"training\": {\"ignored\": 1}}";
    json_error_t je;
    json_t *root = json_loads(text, 0, &je);
    CHECK(root != NULL, "%s", je.text);
    maskd_card c, copy;
    maskd_error err = {0};
    int rc = maskd_card_from_json(root, "/models", "voc.json", &c, &err);
    CHECK(rc == MASKD_OK, "%s", err.message);
    if (rc == MASKD_OK) {
        CHECK(!strcmp(c.model_path, "/models/m.onnx"), "%s", c.model_path);
        CHECK(c.input.width == 320 && c.input.height == 256, "size");
        CHECK(fabsf(c.input.scale - 1.0f / 255) < 1e-9f, "scale %g", (double)c.input.scale);
        /* No pad_value: the mean, so that padding normalizes to 0. */
        CHECK(fabsf(c.input.pad_value[0] - 0.485f * 255) < 1e-3f, "pad %g",
              (double)c.input.pad_value[0]);
        CHECK(c.n_labels == 2 && !strcmp(c.labels[1], "cat") && c.background_class == 0, "labels");
        CHECK(c.segment.upsample == MASKD_UPSAMPLE_ARGMAX_NEAREST, "upsample");
        CHECK(maskd_card_copy(&copy, &c, &err) == MASKD_OK, "%s", err.message);
        CHECK(copy.labels != c.labels && !strcmp(copy.labels[0], "background"), "deep copy");
        maskd_card_free(&copy);
        maskd_card_free(&c);
    }
    json_decref(root);

    root = json_loads("{\"pipeline\": \"segment\", \"files\": {\"model\": \"m.onnx\"},"
                      " \"input\": {\"mean\": [1, 2, 3], \"std\": [1, 2, \"x\"]}}",
                      0, &je);
    rc = maskd_card_from_json(root, NULL, "bad.json", &c, &err);
    CHECK(rc == MASKD_ERR_INVALID && strstr(err.message, "input.std"), "%s", err.message);
    CHECK(c.labels == NULL && c.model_path == NULL, "freed on failure");
    json_decref(root);

    rc = maskd_card_load_file("/nonexistent/card.json", &c, &err);
    CHECK(rc == MASKD_ERR_IO && strstr(err.message, "/nonexistent/card.json"), "%s", err.message);
}

static void test_base64(void)
{
    const char *in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    const char *out[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (int i = 0; i < 7; i++) {
        char *s = maskd_base64((const unsigned char *)in[i], strlen(in[i]));
        CHECK(s && !strcmp(s, out[i]), "base64(%s) = %s", in[i], s ? s : "(null)");
        free(s);
    }
}

static void test_respond(void)
{
    /* A 3x4 class map with one segment of class 1. */
    uint8_t map[12] = {0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0};
    maskd_label_map lm = {3, 4, MASKD_UINT8, map};
    maskd_result r;
    memset(&r, 0, sizeof r);
    r.kind = MASKD_PIPELINE_SEGMENT;
    r.model = "m";
    r.width = 4;
    r.height = 3;
    r.format = MASKD_FORMAT_RLE;
    r.n_segments = 1;
    r.segments = calloc(1, sizeof *r.segments);
    r.segments[0] = (maskd_segment){.class_id = 1, .label = "cat", .area = 4, .box = {1, 0, 3, 2}};
    maskd_error err;
    maskd_mask m = maskd_mask_of_class(&lm, 1);
    CHECK(maskd_rle_encode(&m, &r.segments[0].rle, NULL, &err) == MASKD_OK, "%s", err.message);
    CHECK(maskd_rle_to_string(&r.segments[0].rle, &r.segments[0].counts, NULL, &err) == MASKD_OK,
          "%s", err.message);
    r.timing.infer_ms = 1.23456;
    maskd_respond_extra extra = {0.5, -1};
    char *s = maskd_result_to_string(&r, &extra);
    CHECK(s != NULL, "to_string");
    const char *want_prefix =
        "{\"model\":\"m\",\"image\":{\"width\":4,\"height\":3},\"segments\":[{\"class_id\":1,"
        "\"label\":\"cat\",\"area\":4,\"box\":[1,0,3,2],\"mask\":{\"size\":[3,4],\"counts\":";
    CHECK(s && !strncmp(s, want_prefix, strlen(want_prefix)), "%s", s ? s : "");
    CHECK(s && strstr(s, "\"timing_ms\":{\"decode\":0.5,\"preprocess\":0.0,\"infer\":1.235,"),
          "%s", s ? s : "");
    CHECK(s && !strstr(s, "queue"), "queue left out when negative");
    free(s);
    maskd_result_free(&r);

    memset(&r, 0, sizeof r);
    r.kind = MASKD_PIPELINE_DETECT_DENSE;
    r.model = "d";
    r.width = r.height = 10;
    r.format = MASKD_FORMAT_RLE;
    maskd_nms_options_init(&r.nms, MASKD_NMS_SOFT_GAUSSIAN);
    r.n_detections = 1;
    r.detections = calloc(1, sizeof *r.detections);
    r.detections[0] = (maskd_detection){.box = {1.004f, 2, 3.5f, 4}, .score = 0.97f, .class_id = 2};
    s = maskd_result_to_string(&r, NULL);
    CHECK(s && strstr(s, "\"nms\":{\"method\":\"soft-gaussian\",\"iou\":0.5,\"sigma\":0.5,"
                         "\"score_threshold\":0.001,\"max_detections\":0,\"class_agnostic\":false}"),
          "%s", s ? s : "");
    CHECK(s && strstr(s, "\"detections\":[{\"box\":[1.0,2.0,3.5,4.0],\"score\":0.97,"
                         "\"class_id\":2,\"label\":\"2\"}]"),
          "%s", s ? s : "");
    free(s);
    maskd_result_free(&r);

    json_t *e = maskd_error_json("bad_request", "iou: must be in [0, 1]");
    s = json_dumps(e, MASKD_JSON_FLAGS);
    CHECK(s && !strcmp(s, "{\"error\":\"iou: must be in [0, 1]\",\"code\":\"bad_request\"}"), "%s",
          s ? s : "");
    free(s);
    json_decref(e);
}

int main(void)
{
    test_letterbox();
    test_preprocess_identity();
    test_card();
    test_base64();
    test_respond();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
