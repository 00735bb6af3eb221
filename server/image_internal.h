/* Shared between image.c, image_jpeg.c and image_png.c; not a public API. */
#ifndef MASKD_IMAGE_INTERNAL_H
#define MASKD_IMAGE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "image.h"

int mk_image_fail(maskd_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* MASKD_IMAGE_ERR_TOO_LARGE when w*h exceeds opt->max_pixels. */
int mk_image_check_limit(const maskd_image_options *opt, const char *format,
                         int64_t width, int64_t height, maskd_error *err);

/* EXIF orientation (1..8) from an APP1 payload that starts with "Exif\0\0";
 * 1 when absent, malformed or out of range. */
int mk_exif_orientation(const uint8_t *app1, size_t size);

/* Applies an EXIF orientation to packed RGB8: returns a new buffer (or rgb
 * itself for orientation 1) and the displayed size; NULL when out of memory. */
uint8_t *mk_image_orient(const uint8_t *rgb, int width, int height,
                         int orientation, int *out_width, int *out_height);

/* Pass out = NULL to read the header only (probe). */
int mk_jpeg_read(const uint8_t *data, size_t size, const maskd_image_options *opt,
                 maskd_image_info *info, maskd_image *out, maskd_error *err);
int mk_png_read(const uint8_t *data, size_t size, const maskd_image_options *opt,
                maskd_image_info *info, maskd_image *out, maskd_error *err);

#endif
