/*
 * Class maps as 8-bit PNG (palette or greyscale) in memory, through libpng.
 */
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../mk.h"
#include "maskd/masks.h"

typedef struct png_sink {
    unsigned char *data;
    size_t size, cap;
    char message[200]; /* libpng's complaint, for the error */
} png_sink;

static void sink_write(png_structp png, png_bytep bytes, png_size_t n)
{
    png_sink *s = png_get_io_ptr(png);
    if (s->size + n > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->size + n) cap *= 2;
        unsigned char *d = realloc(s->data, cap);
        if (!d) png_error(png, "out of memory");
        s->data = d;
        s->cap = cap;
    }
    memcpy(s->data + s->size, bytes, n);
    s->size += n;
}

static void sink_flush(png_structp png)
{
    (void)png;
}

static void on_png_error(png_structp png, png_const_charp msg)
{
    png_sink *s = png_get_error_ptr(png);
    snprintf(s->message, sizeof s->message, "%s", msg);
    png_longjmp(png, 1);
}

static void on_png_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

/* The PASCAL VOC colour map: the bits of the class id spread over the high
 * bits of R, G and B, so neighbouring ids get far-apart colours. */
static void voc_color(int id, png_color *c)
{
    int r = 0, g = 0, b = 0;
    for (int bit = 7; bit >= 0; bit--) {
        r |= (id & 1) << bit;
        g |= ((id >> 1) & 1) << bit;
        b |= ((id >> 2) & 1) << bit;
        id >>= 3;
    }
    c->red = (png_byte)r;
    c->green = (png_byte)g;
    c->blue = (png_byte)b;
}

int maskd_png_encode(const maskd_label_map *map, const maskd_png_options *opt,
                     unsigned char **out, size_t *size, maskd_error *err)
{
    if (!map || !out || !size)
        return mk_fail(err, MASKD_ERR_INVALID, "png: missing map or output");
    *out = NULL;
    *size = 0;
    maskd_png_options o = {0};
    if (opt) o = *opt;
    if (map->dtype != MASKD_UINT8 && map->dtype != MASKD_INT32)
        return mk_fail(err, MASKD_ERR_INVALID, "png: label maps are uint8 or int32, not %s",
                       maskd_dtype_name(map->dtype));
    if (map->height < 1 || map->width < 1 || !map->data)
        return mk_fail(err, MASKD_ERR_INVALID, "png: a PNG cannot be %dx%d",
                       (int)map->width, (int)map->height);
    if (o.kind != MASKD_PNG_PALETTE && o.kind != MASKD_PNG_GREY)
        return mk_fail(err, MASKD_ERR_INVALID, "png: unknown kind %d", (int)o.kind);
    if (o.level == 0) o.level = 3;
    if (o.level < 1 || o.level > 9)
        return mk_fail(err, MASKD_ERR_INVALID, "png: zlib level %d is not in 1..9", o.level);

    size_t w = (size_t)map->width, n = w * (size_t)map->height;
    int max_id = 0;
    if (map->dtype == MASKD_UINT8) {
        const uint8_t *p = map->data;
        for (size_t i = 0; i < n; i++)
            if (p[i] > max_id) max_id = p[i];
    } else {
        const int32_t *p = map->data;
        for (size_t i = 0; i < n; i++) {
            if (p[i] < 0 || p[i] > 255)
                return mk_fail(err, MASKD_ERR_INVALID,
                               "png: label %d at pixel (%zu, %zu) does not fit 8 bits",
                               (int)p[i], i % w, i / w);
            if (p[i] > max_id) max_id = p[i];
        }
    }
    png_color palette[256];
    int n_palette = max_id + 1;
    if (o.kind == MASKD_PNG_PALETTE) {
        if (o.colors && o.n_colors < n_palette)
            return mk_fail(err, MASKD_ERR_INVALID,
                           "png: the map uses class %d but the palette has %d colours",
                           max_id, o.n_colors);
        for (int i = 0; i < n_palette; i++) {
            if (o.colors) {
                palette[i].red = o.colors[3 * i];
                palette[i].green = o.colors[3 * i + 1];
                palette[i].blue = o.colors[3 * i + 2];
            } else {
                voc_color(i, &palette[i]);
            }
        }
    }

    /* The sink lives on the heap: a local changed between setjmp and
     * longjmp would be indeterminate after the jump. */
    png_sink *sink = calloc(1, sizeof *sink);
    uint8_t *row = map->dtype == MASKD_INT32 ? malloc(w) : NULL;
    png_structp png = sink ? png_create_write_struct(PNG_LIBPNG_VER_STRING, sink,
                                                     on_png_error, on_png_warning)
                           : NULL;
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info || (map->dtype == MASKD_INT32 && !row)) {
        png_destroy_write_struct(&png, &info);
        free(row);
        free(sink);
        return mk_fail(err, MASKD_ERR_NOMEM, "png: out of memory");
    }
    /* Everything longjmp may skip over was set up before this point. */
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(row);
        int nomem = !strcmp(sink->message, "out of memory");
        int rc = mk_fail(err, nomem ? MASKD_ERR_NOMEM : MASKD_ERR_RUNTIME,
                         "png: libpng failed: %s", sink->message);
        free(sink->data);
        free(sink);
        return rc;
    }
    png_set_write_fn(png, sink, sink_write, sink_flush);
    png_set_IHDR(png, info, (png_uint_32)map->width, (png_uint_32)map->height, 8,
                 o.kind == MASKD_PNG_PALETTE ? PNG_COLOR_TYPE_PALETTE : PNG_COLOR_TYPE_GRAY,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (o.kind == MASKD_PNG_PALETTE) png_set_PLTE(png, info, palette, n_palette);
    png_set_compression_level(png, o.level);
    /* Class maps are long runs that deflate finds unaided; filters only
     * cost time here. */
    png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_NONE);
    png_write_info(png, info);
    for (int32_t y = 0; y < map->height; y++) {
        if (map->dtype == MASKD_UINT8) {
            png_write_row(png, (png_const_bytep)map->data + (size_t)y * w);
        } else {
            const int32_t *src = (const int32_t *)map->data + (size_t)y * w;
            for (size_t x = 0; x < w; x++) row[x] = (uint8_t)src[x];
            png_write_row(png, row);
        }
    }
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(row);
    *out = sink->data;
    *size = sink->size;
    free(sink);
    return MASKD_OK;
}
