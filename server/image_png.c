/*
 * PNG through libpng: every colour type and bit depth into RGB8.
 *
 * The header is checked by hand first (33 bytes), so a bomb is refused
 * before libpng allocates anything; libpng's own errors longjmp back here.
 */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <png.h>

#include "image_internal.h"

/* Text and ICC chunks may be zlib bombs of their own; none of them is needed
 * for the pixels. */
enum { PNG_CHUNK_MAX = 8 << 20 };

typedef struct png_source {
    const uint8_t *data;
    size_t size, pos;
    int truncated;
    char message[256];
} png_source;

static void on_read(png_structp png, png_bytep dst, size_t n)
{
    png_source *src = png_get_io_ptr(png);
    if (n > src->size - src->pos) {
        src->truncated = 1;
        png_error(png, "the data ends early");
    }
    memcpy(dst, src->data + src->pos, n);
    src->pos += n;
}

static void on_error(png_structp png, png_const_charp message)
{
    png_source *src = png_get_error_ptr(png);
    snprintf(src->message, sizeof src->message, "%s", message);
    png_longjmp(png, 1);
}

static void on_warning(png_structp png, png_const_charp message)
{
    (void)png; /* e.g. "iCCP: known incorrect sRGB profile": nothing to act on */
    (void)message;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int read_ihdr(const uint8_t *data, size_t size, maskd_image_info *info,
                     maskd_error *err)
{
    if (size < 8 + 8 + 13)
        return mk_image_fail(err, MASKD_IMAGE_ERR_TRUNCATED,
                             "truncated PNG: %zu bytes, too short for its header", size);
    if (be32(data + 8) != 13 || memcmp(data + 12, "IHDR", 4) != 0)
        return mk_image_fail(err, MASKD_IMAGE_ERR_INVALID,
                             "invalid PNG: the first chunk is not a 13-byte IHDR");
    uint32_t w = be32(data + 16), h = be32(data + 20);
    if (w == 0 || h == 0 || w > 0x7FFFFFFFu || h > 0x7FFFFFFFu)
        return mk_image_fail(err, MASKD_IMAGE_ERR_INVALID, "invalid PNG: size %ux%u", w, h);
    info->width = info->stored_width = (int)w;
    info->height = info->stored_height = (int)h;
    info->orientation = 1;
    return MASKD_OK;
}

/* Folds a 4th (alpha) channel away in place: dst never overtakes src. */
static void drop_alpha(uint8_t *px, size_t count, maskd_image_alpha alpha)
{
    uint8_t *d = px;
    const uint8_t *s = px;
    for (size_t i = 0; i < count; i++, s += 4, d += 3) {
        if (alpha == MASKD_IMAGE_ALPHA_WHITE) {
            unsigned a = s[3], inv = 255 - a;
            d[0] = (uint8_t)((s[0] * a + 255 * inv + 127) / 255);
            d[1] = (uint8_t)((s[1] * a + 255 * inv + 127) / 255);
            d[2] = (uint8_t)((s[2] * a + 255 * inv + 127) / 255);
        } else {
            d[0] = s[0];
            d[1] = s[1];
            d[2] = s[2];
        }
    }
}

int mk_png_read(const uint8_t *data, size_t size, const maskd_image_options *opt,
                maskd_image_info *info, maskd_image *out, maskd_error *err)
{
    int rc = read_ihdr(data, size, info, err);
    if (rc != MASKD_OK)
        return rc;
    rc = mk_image_check_limit(opt, "PNG", info->width, info->height, err);
    if (rc != MASKD_OK || !out)
        return rc;

    png_source src = {.data = data, .size = size};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, on_error, on_warning);
    if (!png)
        return mk_image_fail(err, MASKD_ERR_NOMEM, "out of memory starting libpng");
    png_infop pinfo = png_create_info_struct(png);
    if (!pinfo) {
        png_destroy_read_struct(&png, NULL, NULL);
        return mk_image_fail(err, MASKD_ERR_NOMEM, "out of memory starting libpng");
    }
    uint8_t *volatile pixels = NULL;
    png_bytep *volatile rows = NULL;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &pinfo, NULL);
        free(pixels);
        free(rows);
        if (src.truncated)
            return mk_image_fail(err, MASKD_IMAGE_ERR_TRUNCATED, "truncated PNG: %s",
                                 src.message);
        return mk_image_fail(err, MASKD_IMAGE_ERR_INVALID, "invalid PNG: %s", src.message);
    }
    png_set_read_fn(png, &src, on_read);
    png_set_chunk_malloc_max(png, PNG_CHUNK_MAX);
    png_set_user_limits(png, (png_uint_32)info->width, (png_uint_32)info->height);
    png_read_info(png, pinfo);

    png_uint_32 w, h;
    int depth, color, interlace;
    png_get_IHDR(png, pinfo, &w, &h, &depth, &color, &interlace, NULL, NULL);
    png_set_expand(png);   /* palette -> RGB, grey < 8 bits -> 8, tRNS -> alpha */
    png_set_scale_16(png); /* rounded, not truncated to the high byte */
    png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, pinfo);

    int channels = png_get_channels(png, pinfo);
    size_t rowbytes = png_get_rowbytes(png, pinfo);
    if ((channels != 3 && channels != 4) || rowbytes != (size_t)w * channels)
        png_error(png, "unexpected row layout after conversion");
    pixels = malloc((size_t)h * rowbytes);
    rows = malloc(sizeof(png_bytep) * h);
    if (!pixels || !rows) {
        png_destroy_read_struct(&png, &pinfo, NULL);
        free(pixels);
        free(rows);
        return mk_image_fail(err, MASKD_ERR_NOMEM, "out of memory decoding a %ux%u PNG", w, h);
    }
    for (png_uint_32 y = 0; y < h; y++)
        rows[y] = pixels + (size_t)y * rowbytes;
    png_read_image(png, rows);
    /* No png_read_end: chunks after the image data cannot change the pixels,
     * and browsers show files whose IEND is missing. */
    png_destroy_read_struct(&png, &pinfo, NULL);
    free(rows);

    uint8_t *rgb = pixels;
    if (channels == 4) {
        drop_alpha(rgb, (size_t)w * h, opt ? opt->alpha : MASKD_IMAGE_ALPHA_DROP);
        uint8_t *shrunk = realloc(rgb, (size_t)w * h * 3);
        if (shrunk)
            rgb = shrunk;
    }
    out->rgb = rgb;
    out->width = out->orig_width = (int)w;
    out->height = out->orig_height = (int)h;
    return MASKD_OK;
}
