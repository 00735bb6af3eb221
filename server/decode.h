/* Encoded image -> maskd_image at the size a pipeline needs: the one decode
 * path of the daemon (v1 predict, v2 BYTES inputs) and `maskd predict`, so
 * that both hand a pipeline exactly the same pixels. */
#ifndef MASKD_DECODE_H
#define MASKD_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "image.h"
#include "maskd/pipeline.h"

/* Probes the header (refusing more than max_pixels, 0: no limit), works out
 * the letterboxed size the card's preprocessing resizes to, and decodes no
 * smaller than that (JPEG DCT scaling picks the smallest scale covering it).
 * Errors are image.h's: maskd_image_http_status / maskd_image_error_code
 * turn err->code into the answer; `image` is zeroed on failure. */
int maskd_decode_for_pipeline(const void *bytes, size_t n, const maskd_pipeline *pipeline,
                              int64_t max_pixels, maskd_image *image, maskd_error *err);

#endif
