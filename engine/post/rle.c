/*
 * COCO run-length encoding, bit-compatible with pycocotools (maskApi.c):
 * uncompressed counts and the compressed counts string.
 */
#include <stdlib.h>
#include <string.h>

#include "../mk.h"
#include "maskd/masks.h"

/*
 * RLE reads the image column by column while it is stored row by row.
 * Walking it column-wise (or transposing it in narrow tiles) touches a new
 * page on every row, which the hardware prefetcher does not follow: that
 * measured ~4x slower than reading rows.  Instead each strip of columns is
 * read row by row, twice: once to count, per column, the rows where the
 * value changes, once to record those rows and the new values.  The column-
 * major runs are then the gaps between those changes.
 */

/* Where the pixels come from: one class of a mask view (values 0/1) or a
 * label map as it is (every value). */
typedef struct pixel_source {
    const maskd_mask *mask;      /* non-NULL: values are 0/1 */
    const maskd_label_map *map;  /* otherwise the labels themselves */
} pixel_source;

typedef struct strip {
    int32_t x0, x1;
    int32_t *first;  /* value at row 0, per column */
    size_t *start;   /* changes of column x0+i are [start[i], start[i+1]) */
    uint32_t *row;   /* the row where a change happens */
    int32_t *value;  /* the value from that row on */
} strip;

typedef struct strips_job {
    pixel_source src;
    int32_t height;
    int n_strips;
    strip *strips;
    int failed;
} strips_job;

/* Row y, columns [x0, x0 + n): straight from the map when it can be, else
 * the mask's 0/1 bytes in buf.  *elem is the element size (1 or 4). */
static const void *fetch_row(const pixel_source *s, int32_t y, int32_t x0,
                             int32_t n, uint8_t *buf, size_t *elem)
{
    if (s->mask) {
        maskd_mask_row(s->mask, y, x0, n, buf);
        *elem = 1;
        return buf;
    }
    size_t at = (size_t)y * (size_t)s->map->width + (size_t)x0;
    if (s->map->dtype == MASKD_INT32) {
        *elem = 4;
        return (const int32_t *)s->map->data + at;
    }
    *elem = 1;
    return (const uint8_t *)s->map->data + at;
}

static int32_t element(const void *row, size_t elem, size_t i)
{
    return elem == 1 ? ((const uint8_t *)row)[i] : ((const int32_t *)row)[i];
}

/* Visits the columns whose value differs between two rows: counts them
 * (record = 0) or records row y and the new value (record = 1).  Rows of a
 * mask mostly agree, so 8 bytes are compared at a time. */
static void visit_changes(const void *cur, const void *prev, int32_t n,
                          size_t elem, uint32_t y, strip *st, uint32_t *count,
                          int record)
{
    const unsigned char *c = cur, *p = prev;
    size_t bytes = (size_t)n * elem, b = 0;
    while (b < bytes) {
        if (b + 8 <= bytes) {
            uint64_t u, v;
            memcpy(&u, c + b, 8);
            memcpy(&v, p + b, 8);
            if (u == v) {
                b += 8;
                continue;
            }
        }
        size_t i1 = (b + 8) / elem < (size_t)n ? (b + 8) / elem : (size_t)n;
        for (size_t i = b / elem; i < i1; i++) {
            int32_t now = element(cur, elem, i);
            if (now == element(prev, elem, i)) continue;
            if (!record) {
                count[i]++;
            } else {
                size_t k = st->start[i]++;
                st->row[k] = y;
                st->value[k] = now;
            }
        }
        b = i1 * elem;
    }
}

static int scan_strip(const strips_job *j, strip *st)
{
    int32_t n = st->x1 - st->x0, h = j->height;
    uint8_t *bufs = malloc(2 * (size_t)n);
    uint32_t *count = calloc((size_t)n, sizeof *count);
    st->first = malloc((size_t)n * sizeof *st->first);
    st->start = malloc(((size_t)n + 1) * sizeof *st->start);
    int rc = -1;
    if (!bufs || !count || !st->first || !st->start) goto out;

    /* Pass 1: count the changes of every column. */
    size_t elem;
    const void *prev = fetch_row(&j->src, 0, st->x0, n, bufs, &elem);
    for (int32_t i = 0; i < n; i++) st->first[i] = element(prev, elem, (size_t)i);
    for (int32_t y = 1; y < h; y++) {
        const void *cur = fetch_row(&j->src, y, st->x0, n, bufs + (y & 1) * (size_t)n, &elem);
        visit_changes(cur, prev, n, elem, (uint32_t)y, st, count, 0);
        prev = cur;
    }
    st->start[0] = 0;
    for (int32_t i = 0; i < n; i++) st->start[i + 1] = st->start[i] + count[i];

    /* Pass 2: record them; start[i] walks forward and is restored after. */
    size_t total = st->start[n];
    st->row = malloc((total ? total : 1) * sizeof *st->row);
    st->value = malloc((total ? total : 1) * sizeof *st->value);
    if (!st->row || !st->value) goto out;
    prev = fetch_row(&j->src, 0, st->x0, n, bufs, &elem);
    for (int32_t y = 1; y < h; y++) {
        const void *cur = fetch_row(&j->src, y, st->x0, n, bufs + (y & 1) * (size_t)n, &elem);
        visit_changes(cur, prev, n, elem, (uint32_t)y, st, NULL, 1);
        prev = cur;
    }
    for (int32_t i = n; i > 0; i--) st->start[i] = st->start[i - 1];
    st->start[0] = 0;
    rc = 0;
out:
    free(bufs);
    free(count);
    return rc;
}

static void scan_strips(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    strips_job *j = arg;
    for (int64_t s = begin; s < end; s++)
        if (scan_strip(j, &j->strips[s])) __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
}

static void free_strips(strips_job *j)
{
    for (int s = 0; j->strips && s < j->n_strips; s++) {
        free(j->strips[s].first);
        free(j->strips[s].start);
        free(j->strips[s].row);
        free(j->strips[s].value);
    }
    free(j->strips);
    j->strips = NULL;
}

/* One strip per thread: as wide as possible, since wide rows are what the
 * prefetcher likes. */
static int scan_source(strips_job *j, int32_t h, int32_t w, mk_pool *pool)
{
    int slots = pool ? mk_pool_slots(pool) : 1;
    int n = w / 64 < slots ? (w / 64 > 0 ? w / 64 : 1) : slots;
    j->height = h;
    j->n_strips = n;
    j->strips = calloc((size_t)n, sizeof *j->strips);
    if (!j->strips) return -1;
    for (int s = 0; s < n; s++) {
        j->strips[s].x0 = (int32_t)((int64_t)w * s / n);
        j->strips[s].x1 = (int32_t)((int64_t)w * (s + 1) / n);
    }
    mk_parallel_for(pool, n, 1, scan_strips, j);
    return j->failed ? -1 : 0;
}

/* Walks the runs of equal values in column-major order.  Runs of one value
 * may follow each other across column boundaries. */
typedef struct run_iter {
    const strips_job *j;
    int s;          /* strip */
    int32_t i;      /* column in the strip */
    int in_column;
    size_t k;       /* the column's next change */
    uint32_t from;  /* row where the current run starts */
    int32_t value;
} run_iter;

static int next_run(run_iter *it, int32_t *value, uint32_t *len)
{
    while (it->s < it->j->n_strips) {
        const strip *st = &it->j->strips[it->s];
        if (!it->in_column) {
            if (it->i >= st->x1 - st->x0) {
                it->s++;
                it->i = 0;
                continue;
            }
            it->in_column = 1;
            it->k = st->start[it->i];
            it->from = 0;
            it->value = st->first[it->i];
        }
        size_t end = st->start[it->i + 1];
        uint32_t to = it->k < end ? st->row[it->k] : (uint32_t)it->j->height;
        *value = it->value;
        *len = to - it->from;
        if (it->k < end) {
            it->value = st->value[it->k++];
            it->from = to;
        } else {
            it->in_column = 0;
            it->i++;
        }
        return 1;
    }
    return 0;
}

/* Builds the counts of values [k0, k0 + n) from the runs: each run of value
 * k closes the zeros since k's previous run. */
static int runs_to_counts(const strips_job *j, int32_t h, int32_t w, int32_t k0,
                          int32_t n, maskd_rle *out)
{
    uint64_t area = (uint64_t)h * (uint64_t)w, pos = 0;
    size_t *runs_of = calloc((size_t)n, sizeof *runs_of);
    uint64_t *last_end = calloc((size_t)n, sizeof *last_end);
    int failed = !runs_of || !last_end;
    int32_t value;
    uint32_t len;
    run_iter it = {.j = j};
    while (!failed && next_run(&it, &value, &len)) {
        int64_t k = (int64_t)value - k0;
        if (k >= 0 && k < n) runs_of[k]++;
    }
    /* r runs of ones make at most 2r + 1 counts. */
    for (int32_t k = 0; !failed && k < n; k++) {
        out[k].height = h;
        out[k].width = w;
        out[k].counts = malloc((2 * runs_of[k] + 1) * sizeof *out[k].counts);
        failed = !out[k].counts;
    }
    if (!failed) {
        it = (run_iter){.j = j};
        while (next_run(&it, &value, &len)) {
            int64_t k = (int64_t)value - k0;
            if (k >= 0 && k < n) {
                maskd_rle *o = &out[k];
                uint64_t gap = pos - last_end[k];
                if (o->n_counts > 0 && gap == 0) {
                    o->counts[o->n_counts - 1] += len; /* continues across columns */
                } else {
                    o->counts[o->n_counts++] = (uint32_t)gap;
                    o->counts[o->n_counts++] = len;
                }
                last_end[k] = pos + len;
            }
            pos += len;
        }
        /* A mask ending in ones has no trailing zeros, as in pycocotools;
         * an empty one is a single run of zeros. */
        for (int32_t k = 0; k < n; k++)
            if (out[k].n_counts == 0 || last_end[k] < area)
                out[k].counts[out[k].n_counts++] = (uint32_t)(area - last_end[k]);
    }
    free(runs_of);
    free(last_end);
    return failed ? -1 : 0;
}

void maskd_rle_free(maskd_rle *rle)
{
    if (!rle) return;
    free(rle->counts);
    rle->counts = NULL;
    rle->n_counts = 0;
}

static int check_size(int32_t h, int32_t w, const char *what, mk_error *err)
{
    if (h < 0 || w < 0)
        return mk_fail(err, MASKD_ERR_INVALID, "%s: negative size %dx%d", what,
                       (int)w, (int)h);
    if ((uint64_t)h * (uint64_t)w > UINT32_MAX)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "%s: %dx%d has more pixels than COCO RLE counts (2^32 - 1)",
                       what, (int)w, (int)h);
    return MASKD_OK;
}

static int check_map(const maskd_label_map *m, const char *what, mk_error *err)
{
    int rc = check_size(m->height, m->width, what, err);
    if (rc) return rc;
    if (m->dtype != MASKD_UINT8 && m->dtype != MASKD_INT32)
        return mk_fail(err, MASKD_ERR_INVALID, "%s: masks are uint8 or int32, not %s",
                       what, maskd_dtype_name(m->dtype));
    if (!m->data && m->height > 0 && m->width > 0)
        return mk_fail(err, MASKD_ERR_INVALID, "%s: no pixel data", what);
    return MASKD_OK;
}

static int encode(const pixel_source *src, const maskd_label_map *map, int32_t k0,
                  int32_t n, maskd_rle *out, mk_pool *pool, mk_error *err,
                  const char *what)
{
    memset(out, 0, (size_t)n * sizeof *out);
    int rc = check_map(map, what, err);
    if (rc) return rc;
    strips_job j = {.src = *src};
    int32_t h = map->height, w = map->width;
    int failed = h > 0 && w > 0 && scan_source(&j, h, w, pool);
    if (!failed) failed = runs_to_counts(&j, h, w, k0, n, out);
    free_strips(&j);
    if (failed) {
        for (int32_t k = 0; k < n; k++) maskd_rle_free(&out[k]);
        return mk_fail(err, MASKD_ERR_NOMEM, "%s: out of memory", what);
    }
    return MASKD_OK;
}

int maskd_rle_encode(const maskd_mask *mask, maskd_rle *out, maskd_pool *pool,
                     maskd_error *err)
{
    if (!mask || !out)
        return mk_fail(err, MASKD_ERR_INVALID, "rle_encode: missing mask or output");
    pixel_source src = {.mask = mask};
    return encode(&src, &mask->map, 1, 1, out, pool, err, "rle_encode");
}

int maskd_rle_encode_classes(const maskd_label_map *map, int32_t n_classes,
                             maskd_rle *out, maskd_pool *pool, maskd_error *err)
{
    if (!map || !out || n_classes < 1)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "rle_encode_classes: need a map, outputs and at least one class");
    pixel_source src = {.map = map};
    return encode(&src, map, 0, n_classes, out, pool, err, "rle_encode_classes");
}

int maskd_rle_decode(const maskd_rle *rle, uint8_t *mask, maskd_error *err)
{
    if (!rle)
        return mk_fail(err, MASKD_ERR_INVALID, "rle_decode: no RLE");
    int32_t h = rle->height, w = rle->width;
    int rc = check_size(h, w, "rle_decode", err);
    if (rc) return rc;
    uint64_t area = (uint64_t)h * (uint64_t)w, sum = 0;
    for (size_t i = 0; i < rle->n_counts; i++) sum += rle->counts[i];
    if (sum != area)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "rle_decode: counts sum to %llu, but %dx%d has %llu pixels",
                       (unsigned long long)sum, (int)w, (int)h,
                       (unsigned long long)area);
    if (area == 0) return MASKD_OK;
    if (!mask) return mk_fail(err, MASKD_ERR_INVALID, "rle_decode: no output buffer");
    memset(mask, 0, (size_t)area);
    int32_t x = 0, y = 0;
    for (size_t i = 0; i < rle->n_counts; i++) {
        uint32_t len = rle->counts[i];
        if (i & 1) {
            for (uint32_t k = 0; k < len; k++) {
                mask[(size_t)y * (size_t)w + (size_t)x] = 1;
                if (++y == h) {
                    y = 0;
                    x++;
                }
            }
        } else {
            /* Skip a run of zeros without touching pixels. */
            uint64_t p = (uint64_t)x * (uint64_t)h + (uint64_t)y + len;
            x = (int32_t)(p / (uint64_t)h);
            y = (int32_t)(p % (uint64_t)h);
        }
    }
    return MASKD_OK;
}

int maskd_rle_to_string(const maskd_rle *rle, char **out, size_t *len,
                        maskd_error *err)
{
    if (!rle || !out)
        return mk_fail(err, MASKD_ERR_INVALID, "rle_to_string: missing RLE or output");
    /* A count is < 2^32 and so is a difference of two: with the sign that
     * is at most 33 bits, 7 groups of 5. */
    char *s = malloc(rle->n_counts * 7 + 1);
    if (!s) return mk_fail(err, MASKD_ERR_NOMEM, "rle_to_string: out of memory");
    size_t p = 0;
    for (size_t i = 0; i < rle->n_counts; i++) {
        int64_t x = rle->counts[i];
        if (i > 2) x -= rle->counts[i - 2];
        int more = 1;
        while (more) {
            int64_t c = x & 0x1f; /* two's complement low bits */
            x = (x - c) / 32;      /* arithmetic shift, without relying on >> */
            more = (c & 0x10) ? x != -1 : x != 0;
            if (more) c |= 0x20;
            s[p++] = (char)(c + 48);
        }
    }
    s[p] = 0;
    *out = s;
    if (len) *len = p;
    return MASKD_OK;
}

int maskd_rle_from_string(const char *s, size_t len, int32_t height,
                          int32_t width, maskd_rle *out, maskd_error *err)
{
    if (!out || (!s && len))
        return mk_fail(err, MASKD_ERR_INVALID, "rle_from_string: missing string or output");
    memset(out, 0, sizeof *out);
    int rc = check_size(height, width, "rle_from_string", err);
    if (rc) return rc;
    /* Every count takes at least one character. */
    uint32_t *counts = malloc((len ? len : 1) * sizeof *counts);
    if (!counts) return mk_fail(err, MASKD_ERR_NOMEM, "rle_from_string: out of memory");
    size_t n = 0, p = 0;
    uint64_t sum = 0, area = (uint64_t)height * (uint64_t)width;
    while (p < len) {
        uint64_t x = 0;
        int groups = 0, more;
        size_t start = p;
        do {
            if (p >= len) {
                free(counts);
                return mk_fail(err, MASKD_ERR_INVALID,
                               "rle_from_string: the string ends inside a number "
                               "(at character %zu)", start);
            }
            int c = (unsigned char)s[p] - 48;
            if (c < 0 || c > 63 || groups == 7) {
                free(counts);
                return mk_fail(err, MASKD_ERR_INVALID,
                               c < 0 || c > 63
                                   ? "rle_from_string: character %zu is not a COCO RLE digit"
                                   : "rle_from_string: the number at character %zu is too long",
                               c < 0 || c > 63 ? p : start);
            }
            x |= (uint64_t)(c & 0x1f) << (5 * groups);
            more = c & 0x20;
            p++;
            groups++;
            if (!more && (c & 0x10)) x |= ~(uint64_t)0 << (5 * groups);
        } while (more);
        int64_t v = (int64_t)x;
        if (n > 2) v += counts[n - 2];
        if (v < 0 || v > (int64_t)UINT32_MAX) {
            free(counts);
            return mk_fail(err, MASKD_ERR_INVALID,
                           "rle_from_string: run %zu has length %lld", n, (long long)v);
        }
        counts[n++] = (uint32_t)v;
        sum += (uint64_t)v;
        if (sum > area) break;
    }
    if (sum != area) {
        free(counts);
        return mk_fail(err, MASKD_ERR_INVALID,
                       "rle_from_string: runs cover %llu pixels, but %dx%d has %llu",
                       (unsigned long long)sum, (int)width, (int)height,
                       (unsigned long long)area);
    }
    out->height = height;
    out->width = width;
    out->counts = counts;
    out->n_counts = n;
    return MASKD_OK;
}
