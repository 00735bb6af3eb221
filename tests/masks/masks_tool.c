/*
 * The mask library on the command line, for masks_reference.py: .npy in,
 * text / .npy / .png out.  One call per case keeps the Python side simple.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "maskd/masks.h"
#include "npy.h"

static int fail(const char *what, const maskd_error *err)
{
    fprintf(stderr, "%s: %s\n", what, err ? err->message : "bad arguments");
    return 1;
}

static int read_map(const char *path, maskd_tensor *t, maskd_label_map *map,
                    maskd_error *err)
{
    if (maskd_npy_read(path, t, err)) return 1;
    if (t->ndim != 2 || (t->dtype != MASKD_UINT8 && t->dtype != MASKD_INT32)) {
        snprintf(err->message, sizeof err->message, "%s: need a 2-D uint8/int32 array", path);
        return 1;
    }
    *map = (maskd_label_map){(int32_t)t->dims[0], (int32_t)t->dims[1], t->dtype, t->data};
    return 0;
}

static int write_map(const char *path, const maskd_label_map *map, maskd_error *err)
{
    maskd_tensor t = {map->dtype, 2, {map->height, map->width}, map->data};
    return maskd_npy_write(path, &t, err);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    fclose(f);
    if (s) {
        s[n] = 0;
        while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r')) s[--n] = 0;
    }
    return s;
}

/* rle MASK.npy VALUE|nz OUT.txt: "h w", the counts, the string. */
static int cmd_rle(char **a)
{
    maskd_error err = {0};
    maskd_tensor t;
    maskd_label_map map;
    if (read_map(a[0], &t, &map, &err)) return fail("rle", &err);
    maskd_mask m = maskd_mask_of_class(&map, strcmp(a[1], "nz") ? atoi(a[1]) : MASKD_NONZERO);
    maskd_pool *pool = NULL;
    if (maskd_pool_create(2, &pool, &err)) return fail("pool", &err);
    maskd_rle rle;
    char *s = NULL;
    if (maskd_rle_encode(&m, &rle, pool, &err) || maskd_rle_to_string(&rle, &s, NULL, &err))
        return fail("rle", &err);
    FILE *f = fopen(a[2], "w");
    if (!f) return fail("rle: cannot write output", NULL);
    fprintf(f, "%d %d\n", (int)rle.height, (int)rle.width);
    for (size_t i = 0; i < rle.n_counts; i++)
        fprintf(f, "%s%u", i ? " " : "", (unsigned)rle.counts[i]);
    fprintf(f, "\n%s\n", s);
    fclose(f);
    free(s);
    maskd_rle_free(&rle);
    maskd_pool_free(pool);
    free(t.data);
    return 0;
}

/* rle-classes LABELS.npy N OUT.txt: one class's string a line. */
static int cmd_rle_classes(char **a)
{
    maskd_error err = {0};
    maskd_tensor t;
    maskd_label_map map;
    if (read_map(a[0], &t, &map, &err)) return fail("rle-classes", &err);
    int n = atoi(a[1]);
    maskd_rle *rles = calloc((size_t)n + 1, sizeof *rles);
    if (maskd_rle_encode_classes(&map, n, rles, NULL, &err)) return fail("rle-classes", &err);
    FILE *f = fopen(a[2], "w");
    if (!f) return fail("rle-classes: cannot write output", NULL);
    for (int k = 0; k < n; k++) {
        char *s = NULL;
        if (maskd_rle_to_string(&rles[k], &s, NULL, &err)) return fail("rle-classes", &err);
        fprintf(f, "%s\n", s);
        free(s);
        maskd_rle_free(&rles[k]);
    }
    fclose(f);
    free(rles);
    free(t.data);
    return 0;
}

/* unrle H W STRING.txt OUT.npy */
static int cmd_unrle(char **a)
{
    maskd_error err = {0};
    int32_t h = atoi(a[0]), w = atoi(a[1]);
    char *s = read_text(a[2]);
    if (!s) return fail("unrle: cannot read string", NULL);
    maskd_rle rle;
    if (maskd_rle_from_string(s, strlen(s), h, w, &rle, &err)) return fail("unrle", &err);
    uint8_t *mask = malloc((size_t)h * (size_t)w + 1);
    if (maskd_rle_decode(&rle, mask, &err)) return fail("unrle", &err);
    maskd_label_map map = {h, w, MASKD_UINT8, mask};
    if (write_map(a[3], &map, &err)) return fail("unrle", &err);
    free(mask);
    free(s);
    maskd_rle_free(&rle);
    return 0;
}

/* argmax LOGITS.npy H W u8|i32 THREADS OUT.npy */
static int cmd_argmax(char **a)
{
    maskd_error err = {0};
    maskd_tensor logits;
    if (maskd_npy_read(a[0], &logits, &err)) return fail("argmax", &err);
    maskd_label_map out = {atoi(a[1]), atoi(a[2]), strcmp(a[3], "u8") ? MASKD_INT32 : MASKD_UINT8,
                           NULL};
    out.data = malloc((size_t)out.height * (size_t)out.width * 4 + 1);
    maskd_pool *pool = NULL;
    if (maskd_pool_create(atoi(a[4]), &pool, &err)) return fail("pool", &err);
    if (maskd_argmax(&logits, &out, pool, &err)) return fail("argmax", &err);
    if (write_map(a[5], &out, &err)) return fail("argmax", &err);
    maskd_pool_free(pool);
    free(out.data);
    free(logits.data);
    return 0;
}

/* nearest LABELS.npy H W OUT.npy */
static int cmd_nearest(char **a)
{
    maskd_error err = {0};
    maskd_tensor t;
    maskd_label_map src;
    if (read_map(a[0], &t, &src, &err)) return fail("nearest", &err);
    maskd_label_map dst = {atoi(a[1]), atoi(a[2]), src.dtype, NULL};
    dst.data = malloc((size_t)dst.height * (size_t)dst.width * 4 + 1);
    if (maskd_labels_resize_nearest(&src, &dst, NULL, &err)) return fail("nearest", &err);
    if (write_map(a[3], &dst, &err)) return fail("nearest", &err);
    free(dst.data);
    free(t.data);
    return 0;
}

/* png LABELS.npy palette|grey OUT.png */
static int cmd_png(char **a)
{
    maskd_error err = {0};
    maskd_tensor t;
    maskd_label_map map;
    if (read_map(a[0], &t, &map, &err)) return fail("png", &err);
    maskd_png_options opt = {.kind = strcmp(a[1], "grey") ? MASKD_PNG_PALETTE : MASKD_PNG_GREY};
    unsigned char *png;
    size_t size;
    if (maskd_png_encode(&map, &opt, &png, &size, &err)) return fail("png", &err);
    FILE *f = fopen(a[2], "wb");
    if (!f || fwrite(png, 1, size, f) != size) return fail("png: cannot write", NULL);
    fclose(f);
    free(png);
    free(t.data);
    return 0;
}

/* poly MASK.npy CONNECTIVITY TOLERANCE OUT.txt: one ring a line,
 * "hole outer component n x0 y0 x1 y1 ..." */
static int cmd_poly(char **a)
{
    maskd_error err = {0};
    maskd_tensor t;
    maskd_label_map map;
    if (read_map(a[0], &t, &map, &err)) return fail("poly", &err);
    maskd_mask m = maskd_mask_of_class(&map, MASKD_NONZERO);
    maskd_polygon_options opt = {atoi(a[1]), atof(a[2])};
    maskd_polygons p;
    if (maskd_polygons_trace(&m, &opt, &p, &err)) return fail("poly", &err);
    FILE *f = fopen(a[3], "w");
    if (!f) return fail("poly: cannot write", NULL);
    for (int32_t r = 0; r < p.n_rings; r++) {
        const maskd_ring *g = &p.rings[r];
        fprintf(f, "%d %d %d %d", (int)g->hole, (int)g->outer, (int)g->component,
                (int)g->n_points);
        for (int32_t i = 0; i < 2 * g->n_points; i++) fprintf(f, " %.17g", g->xy[i]);
        fputc('\n', f);
    }
    fclose(f);
    maskd_polygons_free(&p);
    free(t.data);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        int args;
        int (*fn)(char **);
    } cmds[] = {
        {"rle", 3, cmd_rle},   {"rle-classes", 3, cmd_rle_classes}, {"unrle", 4, cmd_unrle}, {"argmax", 6, cmd_argmax},
        {"nearest", 4, cmd_nearest}, {"png", 3, cmd_png},     {"poly", 4, cmd_poly},
    };
    for (size_t i = 0; argc > 1 && i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(argv[1], cmds[i].name) && argc == cmds[i].args + 2)
            return cmds[i].fn(argv + 2);
    fprintf(stderr,
            "usage: maskd_masks_tool rle MASK.npy VALUE|nz OUT.txt\n"
            "       maskd_masks_tool rle-classes LABELS.npy N OUT.txt\n"
            "       maskd_masks_tool unrle H W STRING.txt OUT.npy\n"
            "       maskd_masks_tool argmax LOGITS.npy H W u8|i32 THREADS OUT.npy\n"
            "       maskd_masks_tool nearest LABELS.npy H W OUT.npy\n"
            "       maskd_masks_tool png LABELS.npy palette|grey OUT.png\n"
            "       maskd_masks_tool poly MASK.npy 4|8 TOLERANCE OUT.txt\n");
    return 2;
}
