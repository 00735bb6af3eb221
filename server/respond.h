/* A pipeline's result -> the answer JSON of design §5, the same from the
 * daemon and from `maskd predict`.
 *
 * segment:  {"model", "image": {"width", "height"},
 *            "segments": [{"class_id", "label", "area", "box": [x1, y1, x2, y2],
 *                          "mask": {"size": [h, w], "counts": "<COCO RLE>"}}],
 *            "timing_ms": {"decode", "queue", "preprocess", "infer", "post"}}
 *   format=png: no per-segment "mask"; "class_map": {"size": [h, w],
 *     "png": "<base64 8-bit palette PNG, pixel value = class id>"}
 *   format=polygons: per segment "polygons": [[x0, y0, x1, y1, ...], ...]:
 *     rings in pixel-corner coordinates, outer rings clockwise on screen,
 *     holes counter-clockwise (either fill rule gives the mask back)
 *   format=none: neither.
 * detect:   {"model", "image", "nms": {"method", "iou", "sigma",
 *            "score_threshold", "max_detections", "class_agnostic"},
 *            "detections": [{"box", "score", "class_id", "label",
 *                            "mask"?: {"size", "counts"}}], "timing_ms"}
 *   format=png: "mask": {"size", "png": "<base64 0/255 greyscale PNG>"};
 *   format=polygons: "polygons" instead of "mask".
 * Segment boxes are integer pixel edges (x2, y2 exclusive); detection boxes
 * are floats.  Both in the original image's pixels. */
#ifndef MASKD_RESPOND_H
#define MASKD_RESPOND_H

#include <jansson.h>

#include "maskd/pipeline.h"

/* The parts of timing_ms the pipeline does not measure; negative: left out. */
typedef struct maskd_respond_extra {
    double decode_ms, queue_ms;
} maskd_respond_extra;

/* Flags for json_dumps of these documents: compact, short reals. */
#define MASKD_JSON_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(10))

/* A new reference, or NULL when out of memory.  extra may be NULL. */
json_t *maskd_result_to_json(const maskd_result *result, const maskd_respond_extra *extra);
/* The document as a malloc'd string (MASKD_JSON_FLAGS), or NULL. */
char *maskd_result_to_string(const maskd_result *result, const maskd_respond_extra *extra);

/* {"error": message, "code": code}: the error body of every route. */
json_t *maskd_error_json(const char *code, const char *message);

/* Standard base64 (RFC 4648, padded); malloc'd, NUL-terminated, or NULL. */
char *maskd_base64(const unsigned char *data, size_t size);

#endif
