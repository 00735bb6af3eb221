/* maskd_result -> answer JSON (see respond.h for the shape). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "respond.h"

char *maskd_base64(const unsigned char *data, size_t size)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t out_len = (size + 2) / 3 * 4;
    char *out = malloc(out_len + 1);
    if (!out) return NULL;
    char *o = out;
    size_t i = 0;
    for (; i + 2 < size; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = tab[(v >> 6) & 63];
        *o++ = tab[v & 63];
    }
    if (i < size) {
        uint32_t v = (uint32_t)data[i] << 16 | (i + 1 < size ? (uint32_t)data[i + 1] << 8 : 0);
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = i + 1 < size ? tab[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = 0;
    return out;
}

/* Rounded so that the document is not full of float noise; json_real of a
 * non-finite value would fail, and none should reach here. */
static json_t *real(double v, double unit)
{
    if (!isfinite(v)) return json_null();
    /* + 0.0 turns a rounded -0.0 into 0.0, which reads better. */
    return json_real(round(v / unit) * unit + 0.0);
}

/* json_object_set_new that remembers a failure. */
static void put(json_t *obj, const char *key, json_t *value, int *bad)
{
    if (!value || json_object_set_new(obj, key, value)) *bad = 1;
}

static void append(json_t *arr, json_t *value, int *bad)
{
    if (!value || json_array_append_new(arr, value)) *bad = 1;
}

static json_t *size_pair(int height, int width)
{
    return json_pack("[ii]", height, width);
}

static json_t *polygons_json(const maskd_polygons *p, int *bad)
{
    json_t *rings = json_array();
    if (!rings) {
        *bad = 1;
        return NULL;
    }
    for (int32_t r = 0; r < p->n_rings; r++) {
        json_t *pts = json_array();
        for (int32_t k = 0; pts && k < 2 * p->rings[r].n_points; k++)
            append(pts, real(p->rings[r].xy[k], 1e-3), bad);
        append(rings, pts, bad);
    }
    return rings;
}

static json_t *label_json(const char *label, int32_t class_id)
{
    if (label) return json_string(label);
    char buf[16];
    snprintf(buf, sizeof buf, "%d", class_id);
    return json_string(buf);
}

static json_t *segments_json(const maskd_result *r, int *bad)
{
    json_t *arr = json_array();
    if (!arr) {
        *bad = 1;
        return NULL;
    }
    for (int i = 0; i < r->n_segments; i++) {
        const maskd_segment *s = &r->segments[i];
        json_t *o = json_object();
        if (!o) {
            *bad = 1;
            break;
        }
        put(o, "class_id", json_integer(s->class_id), bad);
        put(o, "label", label_json(s->label, s->class_id), bad);
        put(o, "area", json_integer(s->area), bad);
        put(o, "box", json_pack("[iiii]", s->box[0], s->box[1], s->box[2], s->box[3]), bad);
        if (r->format == MASKD_FORMAT_RLE && s->counts)
            put(o, "mask",
                json_pack("{s:o,s:s}", "size", size_pair(r->height, r->width), "counts",
                          s->counts),
                bad);
        else if (r->format == MASKD_FORMAT_POLYGONS)
            put(o, "polygons", polygons_json(&s->polygons, bad), bad);
        append(arr, o, bad);
    }
    return arr;
}

static json_t *detections_json(const maskd_result *r, int *bad)
{
    json_t *arr = json_array();
    if (!arr) {
        *bad = 1;
        return NULL;
    }
    for (int64_t i = 0; i < r->n_detections; i++) {
        const maskd_detection *d = &r->detections[i];
        json_t *o = json_object();
        if (!o) {
            *bad = 1;
            break;
        }
        json_t *box = json_array();
        for (int k = 0; box && k < 4; k++) append(box, real(d->box[k], 1e-2), bad);
        put(o, "box", box, bad);
        put(o, "score", real(d->score, 1e-5), bad);
        put(o, "class_id", json_integer(d->class_id), bad);
        put(o, "label", label_json(d->label, d->class_id), bad);
        if (d->has_mask) {
            if (r->format == MASKD_FORMAT_RLE && d->counts) {
                put(o, "mask",
                    json_pack("{s:o,s:s}", "size", size_pair(r->height, r->width), "counts",
                              d->counts),
                    bad);
            } else if (r->format == MASKD_FORMAT_PNG && d->png) {
                char *b64 = maskd_base64(d->png, d->png_size);
                if (!b64) *bad = 1;
                else
                    put(o, "mask",
                        json_pack("{s:o,s:s}", "size", size_pair(r->height, r->width), "png",
                                  b64),
                        bad);
                free(b64);
            } else if (r->format == MASKD_FORMAT_POLYGONS) {
                put(o, "polygons", polygons_json(&d->polygons, bad), bad);
            }
        }
        append(arr, o, bad);
    }
    return arr;
}

static json_t *nms_json(const maskd_nms_options *n, int *bad)
{
    json_t *o = json_object();
    if (!o) {
        *bad = 1;
        return NULL;
    }
    put(o, "method", json_string(maskd_nms_method_name(n->method)), bad);
    put(o, "iou", real(n->iou_threshold, 1e-6), bad);
    if (n->method == MASKD_NMS_SOFT_GAUSSIAN || n->method == MASKD_NMS_SOFTER ||
        (n->method == MASKD_NMS_MATRIX && n->matrix_kernel == MASKD_NMS_KERNEL_GAUSSIAN))
        put(o, "sigma", real(n->sigma, 1e-6), bad);
    if (isfinite(n->score_threshold)) put(o, "score_threshold", real(n->score_threshold, 1e-6), bad);
    put(o, "max_detections", json_integer(n->max_detections), bad);
    put(o, "class_agnostic", json_boolean(n->class_agnostic), bad);
    return o;
}

json_t *maskd_result_to_json(const maskd_result *r, const maskd_respond_extra *extra)
{
    int bad = 0;
    json_t *root = json_object();
    if (!root) return NULL;
    put(root, "model", json_string(r->model ? r->model : ""), &bad);
    put(root, "image", json_pack("{s:i,s:i}", "width", r->width, "height", r->height), &bad);
    if (r->kind == MASKD_PIPELINE_SEGMENT) {
        put(root, "segments", segments_json(r, &bad), &bad);
        if (r->format == MASKD_FORMAT_PNG && r->class_map_png) {
            char *b64 = maskd_base64(r->class_map_png, r->class_map_png_size);
            if (!b64) bad = 1;
            else
                put(root, "class_map",
                    json_pack("{s:o,s:s}", "size", size_pair(r->height, r->width), "png", b64),
                    &bad);
            free(b64);
        }
    } else {
        put(root, "nms", nms_json(&r->nms, &bad), &bad);
        if (r->kind == MASKD_PIPELINE_DETECT) put(root, "proposals", json_integer(r->n_proposals), &bad);
        put(root, "detections", detections_json(r, &bad), &bad);
    }
    json_t *t = json_object();
    if (t) {
        if (extra && extra->decode_ms >= 0) put(t, "decode", real(extra->decode_ms, 1e-3), &bad);
        if (extra && extra->queue_ms >= 0) put(t, "queue", real(extra->queue_ms, 1e-3), &bad);
        put(t, "preprocess", real(r->timing.preprocess_ms, 1e-3), &bad);
        put(t, "infer", real(r->timing.infer_ms, 1e-3), &bad);
        put(t, "post", real(r->timing.post_ms, 1e-3), &bad);
    }
    put(root, "timing_ms", t, &bad);
    if (bad) {
        json_decref(root);
        return NULL;
    }
    return root;
}

char *maskd_result_to_string(const maskd_result *r, const maskd_respond_extra *extra)
{
    json_t *doc = maskd_result_to_json(r, extra);
    if (!doc) return NULL;
    char *s = json_dumps(doc, MASKD_JSON_FLAGS);
    json_decref(doc);
    return s;
}

json_t *maskd_error_json(const char *code, const char *message)
{
    return json_pack("{s:s,s:s}", "error", message ? message : "", "code", code ? code : "error");
}
