/*
 * maskd image decoding: encoded bytes from a client -> maskd_image (RGB8).
 *
 * The format is taken from the magic bytes only, never from a Content-Type.
 * Dimensions are read from the header and checked against max_pixels before
 * any pixel memory exists, so a decompression bomb costs a header parse.
 *
 * JPEG (libjpeg-turbo): baseline, progressive, arithmetic-coded; greyscale,
 * YCbCr, RGB, CMYK and YCCK (Adobe) into RGB; EXIF orientation applied to the
 * pixels; DCT-domain scaling to the smallest of 1/8, 1/4, 1/2 whose oriented
 * output still covers the requested minimum size (the other M/8 scales have
 * no SIMD code in libjpeg-turbo and are slower than a full decode).  The
 * decoder never scales up: if even 8/8 is smaller than the target, the full
 * image is returned and the caller's resize does the rest.  A truncated file or corrupt entropy
 * data is an error ("truncated_image" / "invalid_image"), never a
 * grey-padded picture; only harmless warnings (e.g. extraneous bytes between
 * markers, which some cameras write) are tolerated.
 *
 * PNG (libpng): every bit depth and colour type, tRNS, Adam7 interlacing.
 * 16-bit samples are rounded to 8 bits (png_set_scale_16).  Alpha is dropped
 * by default, as PIL's convert("RGB") does, so that results match a Python
 * reference pipeline; MASKD_IMAGE_ALPHA_WHITE composites over white instead
 * (what a browser shows on a white page).  gAMA/iCCP/eXIf are not applied.
 *
 * Errors are maskd_error values: `message` for a person, `code` one of
 * maskd_image_status below (or MASKD_ERR_NOMEM); maskd_image_error_code()
 * gives the stable string the server puts in its JSON error and
 * maskd_image_http_status() the HTTP status for it.
 */
#ifndef MASKD_IMAGE_H
#define MASKD_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "maskd/engine.h"
#include "maskd/pipeline.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum maskd_image_format {
    MASKD_IMAGE_UNKNOWN = 0,
    MASKD_IMAGE_JPEG,
    MASKD_IMAGE_PNG,
    /* Recognised only to say which unsupported format was sent. */
    MASKD_IMAGE_GIF,
    MASKD_IMAGE_WEBP,
    MASKD_IMAGE_BMP,
    MASKD_IMAGE_TIFF,
    MASKD_IMAGE_HEIF, /* HEIC and AVIF (ISO-BMFF "ftyp" brands) */
    MASKD_IMAGE_JXL,
    MASKD_IMAGE_ICO,
} maskd_image_format;

/* maskd_error.code values of this module.  They start at 100 so they never
 * collide with the engine's maskd_status values. */
typedef enum maskd_image_status {
    MASKD_IMAGE_ERR_EMPTY = 100,       /* zero bytes               -> 400 */
    MASKD_IMAGE_ERR_UNSUPPORTED = 101, /* not JPEG/PNG             -> 415 */
    MASKD_IMAGE_ERR_TOO_LARGE = 102,   /* over max_pixels          -> 422 */
    MASKD_IMAGE_ERR_INVALID = 103,     /* corrupt or malformed     -> 400 */
    MASKD_IMAGE_ERR_TRUNCATED = 104,   /* data ends too early      -> 400 */
} maskd_image_status;

typedef enum maskd_image_alpha {
    MASKD_IMAGE_ALPHA_DROP = 0,
    MASKD_IMAGE_ALPHA_WHITE = 1,
} maskd_image_alpha;

typedef struct maskd_image_options {
    /* Refuse images whose width * height (as in the header) exceeds this;
     * 0 means no limit. */
    int64_t max_pixels;
    /* The decoded image (after orientation) needs to be at least this big;
     * JPEG decoding may scale down to the smallest DCT scale that still is.
     * 0 (or less) in both: full size. */
    int min_width, min_height;
    /* Nonzero: (min_width, min_height) is instead the box the image will be
     * fitted into keeping its aspect ratio (a letterboxing resize), so the
     * decode only needs to cover the fitted size: a 640x480 JPEG for a
     * 320x320 box then decodes at 4/8 = 320x240 rather than 8/8. */
    int fit_box;
    /* Let the decode fall short of that size by up to this many percent
     * (0..50; the caller's resize then enlarges a little): with 5, a
     * 4000x3000 JPEG for a 512 box decodes at 1/8 (500x375, 2.4% short)
     * instead of 1/4 (1000x750), in about half the time. */
    int undersize_percent;
    maskd_image_alpha alpha;
} maskd_image_options;

typedef struct maskd_image_info {
    maskd_image_format format;
    int width, height;               /* after EXIF orientation */
    int stored_width, stored_height; /* as coded in the file */
    int orientation;                 /* EXIF 1..8; 1 when absent or invalid */
} maskd_image_info;

/* The format from the first bytes (12 are enough); never fails. */
maskd_image_format maskd_image_sniff(const void *data, size_t size);
/* "JPEG", "PNG", "GIF", ...; "unknown". */
const char *maskd_image_format_name(maskd_image_format format);
/* "image/jpeg", ...; NULL for MASKD_IMAGE_UNKNOWN. */
const char *maskd_image_format_mime(maskd_image_format format);

/* Reads only headers (and the EXIF orientation).  Fails with
 * MASKD_IMAGE_ERR_TOO_LARGE over opt->max_pixels (opt may be NULL: no
 * limit); `out` is filled whenever the header could be read, also then. */
int maskd_image_probe(const void *data, size_t size,
                      const maskd_image_options *opt, maskd_image_info *out,
                      maskd_error *err);

/* Decodes into out->rgb (malloc'd; free with maskd_image_free).  On failure
 * `out` is zeroed.  opt may be NULL (full size, no pixel limit). */
int maskd_image_decode(const void *data, size_t size,
                       const maskd_image_options *opt, maskd_image *out,
                       maskd_error *err);

void maskd_image_free(maskd_image *img);

/* The JPEG DCT scale (M of M/8: 1, 2, 4 or 8) that maskd_image_decode picks for an
 * image stored as stored_w x stored_h with this EXIF orientation and the
 * given minimum (oriented) size; exposed so callers and tests can predict
 * the decoded size. */
int maskd_image_jpeg_scale(int stored_w, int stored_h, int orientation,
                           int min_width, int min_height);

/* The minimum (oriented) size a decode must cover for these options, for an
 * image shown as width x height: (min_width, min_height), or with fit_box
 * the image's size fitted into that box (rounded up); less
 * undersize_percent. */
void maskd_image_target_size(const maskd_image_options *opt, int width, int height,
                             int *min_width, int *min_height);

/* The stable machine-readable name of an error code: "empty_image",
 * "unsupported_media_type", "image_too_large", "invalid_image",
 * "truncated_image", "out_of_memory", or "internal_error" for others. */
const char *maskd_image_error_code(int code);
/* 400, 415, 422, 500 (out of memory and anything unexpected). */
int maskd_image_http_status(int code);

/* Resize of packed RGB8: bilinear (half-pixel centres, as OpenCV's
 * INTER_LINEAR and PIL's BILINEAR when upscaling) while shrinking by less
 * than 2 in both directions, area averaging (each output pixel the mean of
 * its integer footprint, a simpler OpenCV INTER_AREA) from 2 on, so that large
 * reductions do not alias.  dst must hold dst_w * dst_h * 3 bytes.
 * MASKD_ERR_INVALID for empty sizes, MASKD_ERR_NOMEM when its small tables
 * cannot be allocated. */
int maskd_image_resize_rgb(const uint8_t *src, int src_w, int src_h,
                           uint8_t *dst, int dst_w, int dst_h);

#ifdef __cplusplus
}
#endif
#endif
