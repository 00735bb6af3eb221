/*
 * maskd mask post-processing: logits -> class map -> per-class masks in the
 * encodings clients read (COCO RLE, PNG class map, polygons).
 *
 * Conventions shared by every function here:
 * - Images are row-major, `height` rows of `width` pixels; pixel (x, y) is
 *   data[y * width + x].
 * - Boxes are [x1, y1, x2, y2] in pixels with x2, y2 EXCLUSIVE: a box holding
 *   the single pixel (3, 5) is [3, 5, 4, 6].  COCO's [x, y, w, h] is then
 *   [x1, y1, x2 - x1, y2 - y1], and the box is also the pixel-corner bounding
 *   box of the mask's polygons.
 * - Results that own memory have a matching *_free; freeing a zeroed struct
 *   is harmless.
 * - No global state: any function may run on several threads at once.
 *   `pool` arguments may be NULL (run on the calling thread).
 */
#ifndef MASKD_MASKS_H
#define MASKD_MASKS_H

#include <stddef.h>
#include <stdint.h>

#include "maskd/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A class-index map (or any 8/32-bit image of integer labels). */
typedef struct maskd_label_map {
    int32_t height, width;
    maskd_dtype dtype; /* MASKD_UINT8 or MASKD_INT32 */
    void *data;
} maskd_label_map;

/* A binary mask seen through a label map, so that one class of a class map
 * can be encoded without copying it out: a pixel is in the mask when its
 * value equals `value`, or, when value is MASKD_NONZERO, when it is not 0
 * (a plain 0/1 or 0/255 mask). */
#define MASKD_NONZERO INT32_MIN
typedef struct maskd_mask {
    maskd_label_map map;
    int32_t value;
} maskd_mask;

static inline maskd_mask maskd_mask_binary(const uint8_t *data, int32_t height,
                                           int32_t width)
{
    maskd_mask m = {{height, width, MASKD_UINT8, (void *)data}, MASKD_NONZERO};
    return m;
}

static inline maskd_mask maskd_mask_of_class(const maskd_label_map *map,
                                             int32_t class_id)
{
    maskd_mask m = {*map, class_id};
    return m;
}

/* 1 when pixel (x, y) is in the mask; 0 outside the image. */
static inline int maskd_mask_at(const maskd_mask *m, int32_t x, int32_t y)
{
    if (x < 0 || y < 0 || x >= m->map.width || y >= m->map.height) return 0;
    size_t i = (size_t)y * (size_t)m->map.width + (size_t)x;
    int32_t v = m->map.dtype == MASKD_UINT8 ? ((const uint8_t *)m->map.data)[i]
                                            : ((const int32_t *)m->map.data)[i];
    return m->value == MASKD_NONZERO ? v != 0 : v == m->value;
}

/* Pixels [x, x + n) of row y as 0/1 bytes into out.  The range must lie in
 * the image. */
void maskd_mask_row(const maskd_mask *m, int32_t y, int32_t x, int32_t n,
                    uint8_t *out);

/* ---- class maps ------------------------------------------------------- */

/* argmax over classes of logits [C, h, w] or [1, C, h, w] (float) into out,
 * whose height, width, dtype and data the caller sets (data holds
 * height*width elements).  When out's size differs from (h, w) the logits
 * are first resized bilinearly with half-pixel centres, as PyTorch's
 * F.interpolate(mode="bilinear", align_corners=False) does, one output row at
 * a time (the upsampled C×H×W tensor never exists).  Ties go to the lower
 * class; NaN logits never win.  UINT8 output needs C <= 256.  pool may be
 * NULL. */
int maskd_argmax(const maskd_tensor *logits, maskd_label_map *out,
                 maskd_pool *pool, maskd_error *err);

/* Nearest-neighbour resize of a label map (PyTorch's mode="nearest":
 * source index floor(dst * src_size / dst_size)), for "argmax at low
 * resolution, then upsample" pipelines.  dst has the same dtype as src. */
int maskd_labels_resize_nearest(const maskd_label_map *src,
                                maskd_label_map *dst, maskd_pool *pool,
                                maskd_error *err);

/* Area and bounding box of a set of pixels; area 0 has box {0, 0, 0, 0}. */
typedef struct maskd_region {
    int64_t area;
    int32_t box[4]; /* x1, y1, x2, y2; x2, y2 exclusive */
} maskd_region;

/* out[k] = the region of pixels labelled k, for k in [0, n_classes).
 * Labels outside that range (e.g. an "ignore" 255) are not counted. */
int maskd_class_regions(const maskd_label_map *map, int32_t n_classes,
                        maskd_region *out, maskd_pool *pool, maskd_error *err);

/* ---- connected components ------------------------------------------- */

typedef struct maskd_components {
    int32_t count;
    maskd_region *regions; /* in raster order of each component's first pixel */
    int32_t *labels;       /* height*width: 0 outside the mask, k + 1 in
                              regions[k]; NULL unless asked for */
} maskd_components;

/* connectivity: 4 or 8 (0 means 8). */
int maskd_components_find(const maskd_mask *mask, int connectivity,
                          int with_labels, maskd_components *out,
                          maskd_error *err);
void maskd_components_free(maskd_components *c);

/* ---- COCO RLE ------------------------------------------------------- */

/* Uncompressed COCO RLE: the mask read column by column (x outer, y inner),
 * as lengths of alternating runs, the first run being of zeros (possibly of
 * length 0).  The counts sum to height*width; an empty image has one count,
 * 0, as pycocotools writes it. */
typedef struct maskd_rle {
    int32_t height, width;
    size_t n_counts;
    uint32_t *counts;
} maskd_rle;

/* height*width must stay below 2^32, as in pycocotools. */
int maskd_rle_encode(const maskd_mask *mask, maskd_rle *out, maskd_pool *pool,
                     maskd_error *err);
/* out[k] = the RLE of class k's pixels, for k in [0, n_classes), from one
 * pass over the map (labels outside the range belong to no class).  With 21
 * classes on a 4000×3000 map: 16 ms of CPU against 180 ms for calling
 * maskd_rle_encode per class.  maskd_rle_free each out[k]. */
int maskd_rle_encode_classes(const maskd_label_map *map, int32_t n_classes,
                             maskd_rle *out, maskd_pool *pool, maskd_error *err);
/* Writes the mask as 0/1 bytes, row-major height*width; fails when the counts
 * do not sum to height*width. */
int maskd_rle_decode(const maskd_rle *rle, uint8_t *mask, maskd_error *err);
void maskd_rle_free(maskd_rle *rle);

/* The compressed "counts" string of pycocotools (rleToString): from the 4th
 * run on (index > 2) each count is stored as its difference from the count
 * two before; every number goes out in 5-bit groups, low group first, with
 * 0x20 marking "more groups follow" and 0x10 in the last group as the sign,
 * each group + 48 as a character.  *out is malloc'd and NUL-terminated. */
int maskd_rle_to_string(const maskd_rle *rle, char **out, size_t *len,
                        maskd_error *err);
/* Parses such a string for an image of height × width (the "size" field),
 * checking that it is well formed and that the counts sum to the area. */
int maskd_rle_from_string(const char *s, size_t len, int32_t height,
                          int32_t width, maskd_rle *out, maskd_error *err);

/* ---- PNG class map -------------------------------------------------- */

typedef enum maskd_png_kind {
    MASKD_PNG_PALETTE = 0, /* 8-bit indexed: the class id is the palette index */
    MASKD_PNG_GREY = 1,    /* 8-bit greyscale: the class id is the grey value */
} maskd_png_kind;

typedef struct maskd_png_options {
    maskd_png_kind kind;
    const uint8_t *colors; /* RGB triples for the palette; NULL: the PASCAL
                              VOC colour map (0 black, 1 dark red, ...) */
    int n_colors;
    int level;             /* zlib level 1..9; 0 means 3 (fast; class maps
                              compress well anyway) */
} maskd_png_options;

/* Encodes a class map whose values are all in 0..255 as a PNG in memory
 * (libpng; *out is malloc'd).  opt may be NULL (palette, VOC colours). */
int maskd_png_encode(const maskd_label_map *map, const maskd_png_options *opt,
                     unsigned char **out, size_t *size, maskd_error *err);

/* ---- polygons ------------------------------------------------------- */

/* A closed ring of points in pixel-corner coordinates (the last point joins
 * the first; no point is repeated).  Pixel (x, y) is the unit square
 * [x, x+1] × [y, y+1].  Unsimplified rings run along pixel edges through
 * integer corners, and filling them (even-odd or nonzero rule, sampling at
 * pixel centres) gives back exactly the mask.  Outer rings run clockwise on
 * the screen (y down; positive shoelace area in image coordinates), holes
 * counter-clockwise. */
typedef struct maskd_ring {
    int32_t n_points;
    double *xy;        /* x0, y0, x1, y1, ... */
    int32_t hole;      /* 1 for a hole */
    int32_t outer;     /* index of the outer ring this ring belongs to (its
                          own index for an outer ring) */
    int32_t component; /* index in maskd_components_find's order */
} maskd_ring;

/* Rings grouped by component: each outer ring, then its holes. */
typedef struct maskd_polygons {
    int32_t n_rings;
    maskd_ring *rings;
} maskd_polygons;

typedef struct maskd_polygon_options {
    int connectivity; /* of the mask's pixels: 4 or 8 (0 means 8, as COCO
                         and OpenCV trace); holes get the other one */
    double tolerance; /* in pixels; 0 keeps every corner.  Douglas-Peucker
                         picks the corners to keep, then each kept stretch
                         becomes its least-squares line (corners where the
                         lines meet, moved at most 2 × tolerance), so curves
                         are not all cut on one side.  A ring that would
                         fall below 3 points is kept as traced; simplified
                         rings may touch themselves. */
} maskd_polygon_options;

/* opt may be NULL (8-connected, no simplification). */
int maskd_polygons_trace(const maskd_mask *mask,
                         const maskd_polygon_options *opt, maskd_polygons *out,
                         maskd_error *err);
void maskd_polygons_free(maskd_polygons *p);

#ifdef __cplusplus
}
#endif
#endif
