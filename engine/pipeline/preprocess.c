/* Image -> input tensor: keep-aspect (or stretched) bilinear resize, placement
 * in the padded canvas, normalization.  The arithmetic mirrors the training
 * code's reference (models/train/common.py): torch's bilinear interpolate
 * with half-pixel centres on float pixels, then (x * scale - mean) / std. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "maskd/pipeline.h"
#include "mk.h"

void maskd_letterbox_compute(const maskd_card_input *in, int orig_width,
                             int orig_height, maskd_letterbox *out)
{
    memset(out, 0, sizeof *out);
    out->orig_width = orig_width;
    out->orig_height = orig_height;
    if (orig_width < 1 || orig_height < 1) return;
    int nw = in->width, nh = in->height;
    if (in->resize == MASKD_RESIZE_KEEP_ASPECT) {
        double s = fmin((double)in->width / orig_width, (double)in->height / orig_height);
        nw = (int)fmin(in->width, fmax(1.0, floor(orig_width * s + 0.5)));
        nh = (int)fmin(in->height, fmax(1.0, floor(orig_height * s + 0.5)));
    }
    out->new_w = nw;
    out->new_h = nh;
    if (in->placement == MASKD_PLACE_CENTER) {
        out->offset_x = (in->width - nw) / 2;
        out->offset_y = (in->height - nh) / 2;
    }
    out->sx = (double)nw / orig_width;
    out->sy = (double)nh / orig_height;
}

/* One output coordinate's two source taps, as PyTorch's upsample_bilinear2d
 * (align_corners=False) computes them in float. */
typedef struct tap {
    int32_t i0, i1;
    float w0, w1;
} tap;

static void make_taps(int in_size, int out_size, tap *taps)
{
    float scale = (float)in_size / (float)out_size;
    for (int d = 0; d < out_size; d++) {
        float src = scale * ((float)d + 0.5f) - 0.5f;
        if (src < 0) src = 0;
        int i0 = (int)src;
        if (i0 > in_size - 1) i0 = in_size - 1;
        int i1 = i0 + (i0 < in_size - 1);
        float l1 = src - (float)i0;
        taps[d] = (tap){i0, i1, 1.0f - l1, l1};
    }
}

typedef struct resize_job {
    const maskd_image *image;
    const maskd_card_input *in;
    const maskd_letterbox *lb;
    const tap *xt, *yt;
    float scale, mean[3], std[3];
    int src_channel[3];   /* which RGB byte feeds tensor channel c */
    float *tensor;
} resize_job;

static void resize_rows(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const resize_job *j = arg;
    const int W = j->in->width, H = j->in->height;
    const int iw = j->image->width;
    const size_t plane = (size_t)W * (size_t)H;
    for (int64_t y = begin; y < end; y++) {
        const tap ty = j->yt[y];
        const uint8_t *r0 = j->image->rgb + (size_t)ty.i0 * (size_t)iw * 3;
        const uint8_t *r1 = j->image->rgb + (size_t)ty.i1 * (size_t)iw * 3;
        size_t row = (size_t)(y + j->lb->offset_y) * (size_t)W + (size_t)j->lb->offset_x;
        for (int c = 0; c < 3; c++) {
            const int sc = j->src_channel[c];
            const float scale = j->scale, mean = j->mean[c], std = j->std[c];
            float *dst = j->tensor + (size_t)c * plane + row;
            for (int x = 0; x < j->lb->new_w; x++) {
                const tap tx = j->xt[x];
                float top = tx.w0 * (float)r0[tx.i0 * 3 + sc] + tx.w1 * (float)r0[tx.i1 * 3 + sc];
                float bot = tx.w0 * (float)r1[tx.i0 * 3 + sc] + tx.w1 * (float)r1[tx.i1 * 3 + sc];
                float v = ty.w0 * top + ty.w1 * bot;
                dst[x] = (v * scale - mean) / std;
            }
        }
    }
}

static void fill_rect(float *plane, int W, int x0, int y0, int x1, int y1, float v)
{
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) plane[(size_t)y * W + x] = v;
}

int maskd_preprocess(const maskd_card_input *in, const maskd_image *image,
                     float *tensor, maskd_letterbox *lb, maskd_pool *pool,
                     maskd_error *err)
{
    if (!image || !image->rgb || image->width < 1 || image->height < 1)
        return mk_fail(err, MASKD_ERR_INVALID, "the image has no pixels");
    if (in->width < 1 || in->height < 1)
        return mk_fail(err, MASKD_ERR_INVALID, "the model card's input size is not set");
    int ow = image->orig_width > 0 ? image->orig_width : image->width;
    int oh = image->orig_height > 0 ? image->orig_height : image->height;
    maskd_letterbox_compute(in, ow, oh, lb);

    const int W = in->width, H = in->height;
    tap *taps = malloc(((size_t)lb->new_w + (size_t)lb->new_h) * sizeof(tap));
    if (!taps) return mk_fail(err, MASKD_ERR_NOMEM, "preprocess: out of memory");
    make_taps(image->width, lb->new_w, taps);
    make_taps(image->height, lb->new_h, taps + lb->new_w);

    resize_job j = {.image = image, .in = in, .lb = lb, .xt = taps,
                    .yt = taps + lb->new_w, .tensor = tensor};
    j.scale = in->scale;
    for (int c = 0; c < 3; c++) {
        j.src_channel[c] = in->bgr ? 2 - c : c;
        j.mean[c] = in->mean[c];
        j.std[c] = in->std[c];
    }
    mk_parallel_for(pool, lb->new_h, 16, resize_rows, &j);
    free(taps);

    const size_t plane = (size_t)W * (size_t)H;
    for (int c = 0; c < 3; c++) {
        float pad = (in->pad_value[c] * in->scale - in->mean[c]) / in->std[c];
        float *p = tensor + (size_t)c * plane;
        int x0 = lb->offset_x, y0 = lb->offset_y;
        int x1 = x0 + lb->new_w, y1 = y0 + lb->new_h;
        fill_rect(p, W, 0, 0, W, y0, pad);
        fill_rect(p, W, 0, y1, W, H, pad);
        fill_rect(p, W, 0, y0, x0, y1, pad);
        fill_rect(p, W, x1, y0, W, y1, pad);
    }
    return MASKD_OK;
}
