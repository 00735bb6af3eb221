#include "decode.h"

#include <string.h>

int maskd_decode_for_pipeline(const void *bytes, size_t n, const maskd_pipeline *pipeline,
                              int64_t max_pixels, maskd_image *image, maskd_error *err)
{
    memset(image, 0, sizeof *image);
    maskd_image_options opt = {.max_pixels = max_pixels};
    maskd_image_info info;
    int rc = maskd_image_probe(bytes, n, &opt, &info, err);
    if (rc) return rc;
    /* The letterboxed size, not the tensor's: a 4:3 photo for a square input
     * only needs to cover the scaled image, and the padding is no pixels. */
    maskd_letterbox lb;
    maskd_letterbox_compute(&maskd_pipeline_card(pipeline)->input, info.width, info.height, &lb);
    opt.min_width = lb.new_w;
    opt.min_height = lb.new_h;
    return maskd_image_decode(bytes, n, &opt, image, err);
}
