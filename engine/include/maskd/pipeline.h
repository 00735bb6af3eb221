/*
 * maskd pipelines: image in, masks or boxes out.
 * (Being written: the pipeline API below the image struct.)
 */
#ifndef MASKD_PIPELINE_H
#define MASKD_PIPELINE_H

#include <stdint.h>

#include "maskd/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A decoded image as the pipelines take it.  Decoders may hand over a
 * smaller image than the client sent (JPEG DCT-domain scaling); results are
 * always reported in the original image's pixels (orig_*), which are after
 * EXIF orientation. */
typedef struct maskd_image {
    int width, height;           /* of the pixels in rgb */
    int orig_width, orig_height; /* of the image as the client sent it */
    uint8_t *rgb;                /* width * height * 3 bytes, row-major RGB */
} maskd_image;

#ifdef __cplusplus
}
#endif
#endif
