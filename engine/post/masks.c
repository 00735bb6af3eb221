/*
 * Logits -> class map: argmax with optional bilinear upsampling, nearest
 * resize of label maps, per-class area and box.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../mk.h"
#include "maskd/masks.h"

static int pool_slots(const mk_pool *pool)
{
    return pool ? mk_pool_slots(pool) : 1;
}

static int check_label_map(const maskd_label_map *m, const char *what,
                           mk_error *err)
{
    if (!m)
        return mk_fail(err, MASKD_ERR_INVALID, "%s: no label map", what);
    if (m->height < 0 || m->width < 0)
        return mk_fail(err, MASKD_ERR_INVALID, "%s: negative size %dx%d", what,
                       (int)m->width, (int)m->height);
    if (m->dtype != MASKD_UINT8 && m->dtype != MASKD_INT32)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "%s: label maps are uint8 or int32, not %s", what,
                       maskd_dtype_name(m->dtype));
    if (!m->data && m->height > 0 && m->width > 0)
        return mk_fail(err, MASKD_ERR_INVALID, "%s: no pixel data", what);
    return MASKD_OK;
}

void maskd_mask_row(const maskd_mask *m, int32_t y, int32_t x, int32_t n,
                    uint8_t *out)
{
    size_t base = (size_t)y * (size_t)m->map.width + (size_t)x;
    if (m->map.dtype == MASKD_UINT8) {
        const uint8_t *row = (const uint8_t *)m->map.data + base;
        if (m->value == MASKD_NONZERO) {
            for (int32_t i = 0; i < n; i++) out[i] = row[i] != 0;
        } else {
            /* A uint8 map can never hold a value outside 0..255. */
            int32_t v = m->value;
            for (int32_t i = 0; i < n; i++) out[i] = row[i] == v;
        }
    } else {
        const int32_t *row = (const int32_t *)m->map.data + base;
        if (m->value == MASKD_NONZERO) {
            for (int32_t i = 0; i < n; i++) out[i] = row[i] != 0;
        } else {
            int32_t v = m->value;
            for (int32_t i = 0; i < n; i++) out[i] = row[i] == v;
        }
    }
}

/* ---- argmax ------------------------------------------------------------- */

/* Columns per inner block: the running best and index stay in L1 while every
 * class streams past. */
enum { ARGMAX_BLOCK = 512 };

typedef struct argmax_job {
    const float *logits;
    int64_t classes, in_h, in_w;
    int32_t out_h, out_w;
    int resize;
    float scale_h;
    /* Per output column: the two source columns and their weights. */
    const int32_t *col0, *col1;
    const float *wcol0, *wcol1;
    /* Per slot: two cached horizontally resampled source rows (classes ×
     * out_w each), the running best value and class of the current row. */
    float *scratch;
    size_t slot_floats;
    maskd_label_map *out;
} argmax_job;

/* The source index and weight of PyTorch's half-pixel linear resampling, in
 * the same float arithmetic (area_pixel_compute_source_index and
 * guard_index_and_lambda), so that argmax agrees except on near-ties. */
static void linear_source(int64_t dst, float scale, int64_t in_size,
                          int32_t *i0, int32_t *i1, float *w0, float *w1)
{
    float src = scale * ((float)dst + 0.5f) - 0.5f;
    if (src < 0.f) src = 0.f;
    int64_t i = (int64_t)floorf(src);
    if (i > in_size - 1) i = in_size - 1;
    float lambda = src - (float)i;
    if (lambda < 0.f) lambda = 0.f;
    if (lambda > 1.f) lambda = 1.f;
    *i0 = (int32_t)i;
    *i1 = (int32_t)(i + (i < in_size - 1 ? 1 : 0));
    *w0 = 1.f - lambda;
    *w1 = lambda;
}

static void resample_row(const argmax_job *j, int64_t row, float *dst)
{
    for (int64_t c = 0; c < j->classes; c++) {
        const float *src = j->logits + (c * j->in_h + row) * j->in_w;
        float *d = dst + c * j->out_w;
        for (int32_t x = 0; x < j->out_w; x++)
            d[x] = j->wcol0[x] * src[j->col0[x]] + j->wcol1[x] * src[j->col1[x]];
    }
}

typedef struct row_cache {
    int64_t key[2];
    float *buf[2];
} row_cache;

/* The resampled source row `row`, loading it over whichever buffer does not
 * hold `keep` (the other row the current output row needs). */
static const float *cached_row(const argmax_job *j, row_cache *rc, int64_t row,
                               int64_t keep)
{
    if (rc->key[0] == row) return rc->buf[0];
    if (rc->key[1] == row) return rc->buf[1];
    int b = rc->key[0] == keep ? 1 : 0;
    resample_row(j, row, rc->buf[b]);
    rc->key[b] = row;
    return rc->buf[b];
}

static void store_labels(maskd_label_map *out, int64_t y, const int32_t *idx)
{
    size_t base = (size_t)y * (size_t)out->width;
    if (out->dtype == MASKD_UINT8) {
        uint8_t *o = (uint8_t *)out->data + base;
        for (int32_t x = 0; x < out->width; x++) o[x] = (uint8_t)idx[x];
    } else {
        memcpy((int32_t *)out->data + base, idx, (size_t)out->width * sizeof *idx);
    }
}

/* The running maximum over classes.  Written with masks rather than
 * branches so that the compiler vectorizes it; NaN never compares greater,
 * so it never wins. */
static void blend_max(float *restrict best, int32_t *restrict idx,
                      const float *restrict top, const float *restrict bottom,
                      float wtop, float wbottom, int32_t n, int32_t cls)
{
    for (int32_t x = 0; x < n; x++) {
        float v = wtop * top[x] + wbottom * bottom[x], old = best[x];
        int32_t gt = -(int32_t)(v > old);
        best[x] = v > old ? v : old;
        idx[x] = (idx[x] & ~gt) | (cls & gt);
    }
}

/* Same without resampling: no arithmetic, so infinite logits stay exact. */
static void plain_max(float *restrict best, int32_t *restrict idx,
                      const float *restrict logits, int32_t n, int32_t cls)
{
    for (int32_t x = 0; x < n; x++) {
        float v = logits[x], old = best[x];
        int32_t gt = -(int32_t)(v > old);
        best[x] = v > old ? v : old;
        idx[x] = (idx[x] & ~gt) | (cls & gt);
    }
}

static void argmax_rows(void *arg, int64_t begin, int64_t end, int slot)
{
    const argmax_job *j = arg;
    float *mine = j->scratch + (size_t)slot * j->slot_floats;
    size_t plane = j->resize ? (size_t)j->classes * (size_t)j->out_w : 0;
    row_cache rc = {{-1, -1}, {mine, mine + plane}};
    float *best = mine + 2 * plane;
    int32_t *idx = (int32_t *)(best + j->out_w);

    for (int64_t y = begin; y < end; y++) {
        const float *top, *bottom;
        float wtop = 1.f, wbottom = 0.f;
        int64_t plane_stride; /* from class c's row to class c+1's */
        if (j->resize) {
            int32_t r0, r1;
            linear_source(y, j->scale_h, j->in_h, &r0, &r1, &wtop, &wbottom);
            top = cached_row(j, &rc, r0, r1);
            bottom = cached_row(j, &rc, r1, r0);
            plane_stride = j->out_w;
        } else {
            top = bottom = j->logits + y * j->in_w;
            plane_stride = j->in_h * j->in_w;
        }
        for (int32_t x0 = 0; x0 < j->out_w; x0 += ARGMAX_BLOCK) {
            int32_t n = j->out_w - x0 < ARGMAX_BLOCK ? j->out_w - x0 : ARGMAX_BLOCK;
            float *b = best + x0;
            int32_t *k = idx + x0;
            for (int32_t x = 0; x < n; x++) {
                b[x] = -INFINITY;
                k[x] = 0;
            }
            for (int64_t c = 0; c < j->classes; c++) {
                const float *pt = top + c * plane_stride + x0;
                const float *pb = bottom + c * plane_stride + x0;
                if (j->resize) blend_max(b, k, pt, pb, wtop, wbottom, n, (int32_t)c);
                else plain_max(b, k, pt, n, (int32_t)c);
            }
        }
        store_labels(j->out, y, idx);
    }
}

int maskd_argmax(const maskd_tensor *logits, maskd_label_map *out,
                 maskd_pool *pool, maskd_error *err)
{
    if (!logits || !out)
        return mk_fail(err, MASKD_ERR_INVALID, "argmax: missing logits or output");
    if (logits->dtype != MASKD_FLOAT)
        return mk_fail(err, MASKD_ERR_INVALID, "argmax: logits must be float, not %s",
                       maskd_dtype_name(logits->dtype));
    int64_t classes, in_h, in_w;
    if (logits->ndim == 3) {
        classes = logits->dims[0];
    } else if (logits->ndim == 4 && logits->dims[0] == 1) {
        classes = logits->dims[1];
    } else {
        char s[128];
        return mk_fail(err, MASKD_ERR_SHAPE,
                       "argmax: logits must be [C,h,w] or [1,C,h,w], got %s",
                       mk_shape_str(logits, s, sizeof s));
    }
    in_h = logits->dims[logits->ndim - 2];
    in_w = logits->dims[logits->ndim - 1];
    int rc = check_label_map(out, "argmax", err);
    if (rc) return rc;
    if (classes < 1)
        return mk_fail(err, MASKD_ERR_SHAPE, "argmax: logits have no classes");
    if (out->dtype == MASKD_UINT8 && classes > 256)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "argmax: %lld classes do not fit a uint8 map",
                       (long long)classes);
    if (classes > INT32_MAX)
        return mk_fail(err, MASKD_ERR_INVALID, "argmax: too many classes");
    if (out->height == 0 || out->width == 0) return MASKD_OK;
    if (in_h < 1 || in_w < 1 || !logits->data)
        return mk_fail(err, MASKD_ERR_SHAPE,
                       "argmax: empty logits cannot fill a %dx%d map",
                       (int)out->width, (int)out->height);
    if (in_h > INT32_MAX || in_w > INT32_MAX)
        return mk_fail(err, MASKD_ERR_SHAPE, "argmax: logits too large");

    argmax_job j = {
        .logits = logits->data, .classes = classes, .in_h = in_h, .in_w = in_w,
        .out_h = out->height, .out_w = out->width, .out = out,
        .resize = in_h != out->height || in_w != out->width,
        .scale_h = (float)in_h / (float)out->height,
    };
    int slots = pool_slots(pool);
    size_t ow = (size_t)out->width;
    /* best (float) + idx (int32) per column, and two resampled rows when
     * resizing. */
    j.slot_floats = 2 * ow + (j.resize ? 2 * (size_t)classes * ow : 0);
    j.slot_floats = (j.slot_floats + 15) & ~(size_t)15; /* slots on own lines */
    void *cols = NULL;
    if (j.resize) {
        cols = malloc(ow * (2 * sizeof(int32_t) + 2 * sizeof(float)));
        if (!cols) return mk_fail(err, MASKD_ERR_NOMEM, "argmax: out of memory");
        int32_t *c0 = cols, *c1 = c0 + ow;
        float *w0 = (float *)(c1 + ow), *w1 = w0 + ow;
        float scale_w = (float)in_w / (float)out->width;
        for (size_t x = 0; x < ow; x++)
            linear_source((int64_t)x, scale_w, in_w, &c0[x], &c1[x], &w0[x], &w1[x]);
        j.col0 = c0;
        j.col1 = c1;
        j.wcol0 = w0;
        j.wcol1 = w1;
    }
    j.scratch = mk_aligned_alloc((size_t)slots * j.slot_floats * sizeof(float));
    if (!j.scratch) {
        free(cols);
        return mk_fail(err, MASKD_ERR_NOMEM, "argmax: out of memory");
    }
    /* Rows sharing source rows should land in one chunk, so the grain
     * covers a few upsampling steps. */
    int64_t step = (out->height + in_h - 1) / in_h;
    int64_t grain = j.resize && 2 * step > 4 ? 2 * step : 4;
    mk_parallel_for(pool, out->height, grain, argmax_rows, &j);
    mk_aligned_free(j.scratch);
    free(cols);
    return MASKD_OK;
}

/* ---- nearest resize ----------------------------------------------------- */

typedef struct nearest_job {
    const maskd_label_map *src;
    maskd_label_map *dst;
    const int32_t *src_col;
    float scale_h;
} nearest_job;

/* PyTorch's nearest_idx: exact copies and 2x get integer paths, other
 * ratios floor(dst * (float)in / out). */
static int32_t nearest_source(int64_t dst, int64_t in_size, int64_t out_size,
                              float scale)
{
    if (in_size == out_size) return (int32_t)dst;
    if (out_size == 2 * in_size) return (int32_t)(dst >> 1);
    int64_t i = (int64_t)floorf((float)dst * scale);
    return (int32_t)(i < in_size - 1 ? i : in_size - 1);
}

static void nearest_rows(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const nearest_job *j = arg;
    const maskd_label_map *s = j->src;
    maskd_label_map *d = j->dst;
    for (int64_t y = begin; y < end; y++) {
        int64_t sy = nearest_source(y, s->height, d->height, j->scale_h);
        size_t so = (size_t)sy * (size_t)s->width, dof = (size_t)y * (size_t)d->width;
        if (s->dtype == MASKD_UINT8) {
            const uint8_t *in = (const uint8_t *)s->data + so;
            uint8_t *o = (uint8_t *)d->data + dof;
            for (int32_t x = 0; x < d->width; x++) o[x] = in[j->src_col[x]];
        } else {
            const int32_t *in = (const int32_t *)s->data + so;
            int32_t *o = (int32_t *)d->data + dof;
            for (int32_t x = 0; x < d->width; x++) o[x] = in[j->src_col[x]];
        }
    }
}

int maskd_labels_resize_nearest(const maskd_label_map *src,
                                maskd_label_map *dst, maskd_pool *pool,
                                maskd_error *err)
{
    int rc = check_label_map(src, "resize_nearest: source", err);
    if (rc) return rc;
    rc = check_label_map(dst, "resize_nearest: destination", err);
    if (rc) return rc;
    if (src->dtype != dst->dtype)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "resize_nearest: source is %s, destination %s",
                       maskd_dtype_name(src->dtype), maskd_dtype_name(dst->dtype));
    if (dst->height == 0 || dst->width == 0) return MASKD_OK;
    if (src->height == 0 || src->width == 0)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "resize_nearest: an empty map cannot fill %dx%d",
                       (int)dst->width, (int)dst->height);
    int32_t *cols = malloc((size_t)dst->width * sizeof *cols);
    if (!cols) return mk_fail(err, MASKD_ERR_NOMEM, "resize_nearest: out of memory");
    float scale_w = (float)src->width / (float)dst->width;
    for (int32_t x = 0; x < dst->width; x++)
        cols[x] = nearest_source(x, src->width, dst->width, scale_w);
    nearest_job j = {src, dst, cols, (float)src->height / (float)dst->height};
    mk_parallel_for(pool, dst->height, 16, nearest_rows, &j);
    free(cols);
    return MASKD_OK;
}

/* ---- per-class regions -------------------------------------------------- */

typedef struct regions_job {
    const maskd_label_map *map;
    int32_t n_classes;
    maskd_region *partial; /* slots × n_classes */
} regions_job;

static void region_add_run(maskd_region *r, int32_t x0, int32_t x1, int32_t y)
{
    if (r->area == 0) {
        r->box[0] = x0;
        r->box[1] = y;
        r->box[2] = x1;
        r->box[3] = y + 1;
    } else {
        if (x0 < r->box[0]) r->box[0] = x0;
        if (x1 > r->box[2]) r->box[2] = x1;
        if (y < r->box[1]) r->box[1] = y;
        if (y + 1 > r->box[3]) r->box[3] = y + 1;
    }
    r->area += x1 - x0;
}

static void region_merge(maskd_region *into, const maskd_region *r)
{
    if (r->area == 0) return;
    if (into->area == 0) {
        *into = *r;
        return;
    }
    for (int i = 0; i < 2; i++)
        if (r->box[i] < into->box[i]) into->box[i] = r->box[i];
    for (int i = 2; i < 4; i++)
        if (r->box[i] > into->box[i]) into->box[i] = r->box[i];
    into->area += r->area;
}

static int is_class(int64_t v, int32_t n_classes)
{
    return v >= 0 && v < n_classes;
}

/* Class maps are mostly long runs of one label: account per run, not per
 * pixel. */
#define REGION_ROW_LOOP(T)                                                     \
    do {                                                                       \
        const T *row = (const T *)m->data + (size_t)y * (size_t)m->width;      \
        int32_t x = 0;                                                         \
        while (x < m->width) {                                                 \
            T v = row[x];                                                      \
            int32_t start = x;                                                 \
            while (x < m->width && row[x] == v) x++;                           \
            if (is_class((int64_t)v, j->n_classes))                            \
                region_add_run(&mine[(int32_t)v], start, x, (int32_t)y);       \
        }                                                                      \
    } while (0)

static void regions_rows(void *arg, int64_t begin, int64_t end, int slot)
{
    const regions_job *j = arg;
    const maskd_label_map *m = j->map;
    maskd_region *mine = j->partial + (size_t)slot * (size_t)j->n_classes;
    for (int64_t y = begin; y < end; y++) {
        if (m->dtype == MASKD_UINT8)
            REGION_ROW_LOOP(uint8_t);
        else
            REGION_ROW_LOOP(int32_t);
    }
}

int maskd_class_regions(const maskd_label_map *map, int32_t n_classes,
                        maskd_region *out, maskd_pool *pool, maskd_error *err)
{
    int rc = check_label_map(map, "class_regions", err);
    if (rc) return rc;
    if (n_classes < 1 || !out)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "class_regions: need at least one class and an output");
    int slots = pool_slots(pool);
    regions_job j = {map, n_classes,
                     calloc((size_t)slots * (size_t)n_classes, sizeof(maskd_region))};
    if (!j.partial) return mk_fail(err, MASKD_ERR_NOMEM, "class_regions: out of memory");
    mk_parallel_for(pool, map->width > 0 ? map->height : 0, 16, regions_rows, &j);
    memset(out, 0, (size_t)n_classes * sizeof *out);
    for (int s = 0; s < slots; s++)
        for (int32_t k = 0; k < n_classes; k++)
            region_merge(&out[k], &j.partial[(size_t)s * (size_t)n_classes + k]);
    free(j.partial);
    return MASKD_OK;
}
