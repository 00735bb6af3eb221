/*
 * The mask library against plain references written here: naive column-major
 * runs, flood fill, a scanline rasterizer, a materialised bilinear resize.
 * Prints "N passed, M failed"; exits 1 on any failure.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "maskd/masks.h"

static int passed, failed;

static void check(int ok, const char *fmt, ...)
{
    if (ok) {
        passed++;
        return;
    }
    failed++;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static uint64_t rng_state = 88172645463325252ull;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}
static double rnd01(void) { return rnd() / 4294967296.0; }

static maskd_pool *pool;

/* ---- mask makers ------------------------------------------------------- */

static uint8_t *noise_mask(int h, int w, double p)
{
    uint8_t *m = malloc((size_t)h * w + 1);
    for (size_t i = 0; i < (size_t)h * w; i++) m[i] = rnd01() < p;
    return m;
}

/* Discs, rings and squares: shapes with long runs and real holes. */
static uint8_t *blob_mask(int h, int w, int n)
{
    uint8_t *m = calloc((size_t)h * w + 1, 1);
    for (int k = 0; k < n; k++) {
        double cx = rnd01() * w, cy = rnd01() * h, r = 2 + rnd01() * (h < w ? h : w) / 4;
        int kind = rnd() % 3;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                double dx = x + 0.5 - cx, dy = y + 0.5 - cy, d = sqrt(dx * dx + dy * dy);
                int in = kind == 0 ? d < r
                       : kind == 1 ? (d < r && d > r * 0.5)
                                   : (fabs(dx) < r && fabs(dy) < r * 0.7);
                if (in) m[(size_t)y * w + x] = 1;
            }
    }
    return m;
}

/* ---- references -------------------------------------------------------- */

static size_t naive_counts(const uint8_t *m, int h, int w, uint32_t *counts)
{
    size_t n = 0;
    uint8_t cur = 0;
    uint32_t run = 0;
    for (int x = 0; x < w; x++)
        for (int y = 0; y < h; y++) {
            uint8_t v = m[(size_t)y * w + x] != 0;
            if (v != cur) {
                counts[n++] = run;
                run = 0;
                cur = v;
            }
            run++;
        }
    counts[n++] = run;
    return n;
}

/* Labels in raster order of each component's first pixel. */
static int flood_labels(const uint8_t *m, int h, int w, int conn, int32_t *lab)
{
    memset(lab, 0, (size_t)h * w * sizeof *lab);
    int32_t *queue = malloc(((size_t)h * w + 1) * sizeof *queue);
    int count = 0;
    for (int s = 0; s < h * w; s++) {
        if (!m[s] || lab[s]) continue;
        lab[s] = ++count;
        size_t head = 0, tail = 0;
        queue[tail++] = s;
        while (head < tail) {
            int p = queue[head++], px = p % w, py = p / w;
            for (int dy = -1; dy <= 1; dy++)
                for (int dx = -1; dx <= 1; dx++) {
                    if ((!dx && !dy) || (conn == 4 && dx && dy)) continue;
                    int x = px + dx, y = py + dy;
                    if (x < 0 || y < 0 || x >= w || y >= h) continue;
                    int q = y * w + x;
                    if (m[q] && !lab[q]) {
                        lab[q] = count;
                        queue[tail++] = q;
                    }
                }
        }
    }
    free(queue);
    return count;
}

/* Background components (other connectivity) that do not reach the border. */
static int count_holes(const uint8_t *m, int h, int w, int conn)
{
    uint8_t *inv = malloc((size_t)h * w + 1);
    int32_t *lab = malloc(((size_t)h * w + 1) * sizeof *lab);
    for (int i = 0; i < h * w; i++) inv[i] = !m[i];
    int n = flood_labels(inv, h, w, conn == 8 ? 4 : 8, lab);
    uint8_t *border = calloc((size_t)n + 1, 1);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            if ((x == 0 || y == 0 || x == w - 1 || y == h - 1) && lab[y * w + x])
                border[lab[y * w + x]] = 1;
    int holes = 0;
    for (int k = 1; k <= n; k++) holes += !border[k];
    free(inv);
    free(lab);
    free(border);
    return holes;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Even-odd fill of all rings, sampling at pixel centres. */
static void rasterize(const maskd_polygons *p, int h, int w, uint8_t *out)
{
    memset(out, 0, (size_t)h * w);
    size_t total = 0;
    for (int r = 0; r < p->n_rings; r++) total += (size_t)p->rings[r].n_points;
    double *xs = malloc((total + 1) * sizeof *xs);
    for (int y = 0; y < h; y++) {
        double cy = y + 0.5;
        size_t n = 0;
        for (int r = 0; r < p->n_rings; r++) {
            const maskd_ring *g = &p->rings[r];
            for (int i = 0; i < g->n_points; i++) {
                int k = (i + 1) % g->n_points;
                double x1 = g->xy[2 * i], y1 = g->xy[2 * i + 1];
                double x2 = g->xy[2 * k], y2 = g->xy[2 * k + 1];
                if ((y1 <= cy) != (y2 <= cy)) xs[n++] = x1 + (cy - y1) * (x2 - x1) / (y2 - y1);
            }
        }
        qsort(xs, n, sizeof *xs, cmp_double);
        for (size_t i = 0; i + 1 < n; i += 2) {
            int x0 = (int)ceil(xs[i] - 0.5), x1 = (int)ceil(xs[i + 1] - 0.5);
            for (int x = x0 < 0 ? 0 : x0; x < x1 && x < w; x++) out[(size_t)y * w + x] ^= 1;
        }
    }
    free(xs);
}

/* ---- RLE --------------------------------------------------------------- */

static void rle_case(const char *name, const uint8_t *m, int h, int w)
{
    maskd_error err = {0};
    maskd_mask mask = maskd_mask_binary(m, h, w);
    uint32_t *ref = malloc(((size_t)h * w + 2) * sizeof *ref);
    size_t n_ref = naive_counts(m, h, w, ref);
    maskd_rle a, b, c;
    int rc = maskd_rle_encode(&mask, &a, NULL, &err);
    check(!rc, "rle %s: encode: %s", name, err.message);
    rc |= maskd_rle_encode(&mask, &b, pool, &err);
    check(!rc && a.n_counts == n_ref && !memcmp(a.counts, ref, n_ref * sizeof *ref),
          "rle %s: counts differ from the naive column-major runs", name);
    check(!rc && b.n_counts == a.n_counts && !memcmp(a.counts, b.counts, a.n_counts * 4),
          "rle %s: threaded counts differ", name);
    char *s = NULL;
    size_t len = 0;
    rc = maskd_rle_to_string(&a, &s, &len, &err);
    check(!rc && strlen(s) == len, "rle %s: to_string: %s", name, err.message);
    rc = maskd_rle_from_string(s, len, h, w, &c, &err);
    check(!rc && c.n_counts == a.n_counts && !memcmp(a.counts, c.counts, a.n_counts * 4),
          "rle %s: string round trip: %s", name, err.message);
    uint8_t *back = malloc((size_t)h * w + 1);
    uint8_t *bin = malloc((size_t)h * w + 1);
    for (size_t i = 0; i < (size_t)h * w; i++) bin[i] = m[i] != 0;
    rc = maskd_rle_decode(&c, back, &err);
    check(!rc && !memcmp(back, bin, (size_t)h * w), "rle %s: decode: %s", name, err.message);
    free(back);
    free(bin);
    free(s);
    free(ref);
    maskd_rle_free(&a);
    maskd_rle_free(&b);
    maskd_rle_free(&c);
}

static void test_rle(void)
{
    static const int sizes[][2] = {{1, 1}, {1, 17}, {17, 1}, {1, 300}, {300, 1}, {2, 2},
                                   {63, 65}, {64, 64}, {100, 129}, {7, 200}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        int h = sizes[i][0], w = sizes[i][1];
        for (int d = 0; d <= 4; d++) {
            char name[64];
            snprintf(name, sizeof name, "%dx%d p=%.2f", h, w, d / 4.0);
            uint8_t *m = noise_mask(h, w, d / 4.0);
            rle_case(name, m, h, w);
            free(m);
        }
    }
    uint8_t *m = blob_mask(480, 640, 6);
    rle_case("blobs 480x640", m, 480, 640);
    for (int i = 0; i < 480 * 640; i++) m[i] *= 255;
    rle_case("0/255 blobs", m, 480, 640);
    free(m);
    rle_case("0x5", NULL, 0, 5);
    rle_case("5x0", NULL, 5, 0);

    /* Known strings, worked by hand from the pycocotools rules: deltas only
     * from the 4th count on; 40-1 = 39 needs two groups; 3-40 = -37 is
     * negative. */
    maskd_error err = {0};
    uint32_t counts[] = {1, 1, 1, 40, 2, 3};
    maskd_rle known = {6, 8, 6, counts};
    char *s = NULL;
    check(!maskd_rle_to_string(&known, &s, NULL, &err) && !strcmp(s, "111W11kN"),
          "rle known string: got '%s'", s ? s : "(null)");
    free(s);
    uint32_t one[] = {5};
    maskd_rle empty = {1, 5, 1, one};
    check(!maskd_rle_to_string(&empty, &s, NULL, &err) && !strcmp(s, "5"), "rle empty 1x5");
    free(s);

    /* Malformed strings are errors, never crashes or wrong masks. */
    static const struct {
        const char *s;
        int h, w;
    } bad[] = {{"", 2, 2}, {"3", 2, 2}, {"5", 2, 2}, {"4 ", 2, 2}, {"p", 1, 1},
               {"W", 2, 2}, {"WWWWWWW1", 2, 2}, {"1111", 1, 1}, {"0O", 4, 4},
               {"22200", 2, 3}, {"4", -2, -2}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        maskd_rle r;
        err.code = 0;
        int rc = maskd_rle_from_string(bad[i].s, strlen(bad[i].s), bad[i].h, bad[i].w, &r, &err);
        check(rc && err.code, "rle: '%s' for %dx%d accepted", bad[i].s, bad[i].w, bad[i].h);
        if (!rc) maskd_rle_free(&r);
    }
    maskd_rle r;
    check(!maskd_rle_from_string("4", 1, 2, 2, &r, &err) && r.n_counts == 1 && r.counts[0] == 4,
          "rle: '4' for 2x2");
    maskd_rle_free(&r);
    check(!maskd_rle_from_string("", 0, 0, 3, &r, &err) && r.n_counts == 0, "rle: '' for 0x3");
    maskd_rle_free(&r);
    uint32_t short_counts[] = {1, 2};
    maskd_rle wrong = {2, 2, 2, short_counts};
    uint8_t out4[4];
    check(maskd_rle_decode(&wrong, out4, &err) != 0, "rle decode: wrong sum accepted");

    /* One class of a label map, uint8 and int32, without copying it out. */
    int h = 97, w = 131;
    uint8_t *lab8 = malloc((size_t)h * w), *bin = malloc((size_t)h * w);
    int32_t *lab32 = malloc((size_t)h * w * sizeof *lab32);
    for (int i = 0; i < h * w; i++) {
        lab8[i] = (uint8_t)((i / w / 10 + (i % w) / 13) % 5);
        lab32[i] = lab8[i] == 4 ? -7 : lab8[i];
    }
    for (int k = 0; k < 5; k++) {
        for (int i = 0; i < h * w; i++) bin[i] = lab8[i] == k;
        maskd_mask mb = maskd_mask_binary(bin, h, w);
        maskd_label_map m8 = {h, w, MASKD_UINT8, lab8}, m32 = {h, w, MASKD_INT32, lab32};
        maskd_mask c8 = maskd_mask_of_class(&m8, k), c32 = maskd_mask_of_class(&m32, k == 4 ? -7 : k);
        maskd_rle rb, r8, r32;
        int rc = maskd_rle_encode(&mb, &rb, NULL, &err) | maskd_rle_encode(&c8, &r8, pool, &err) |
                 maskd_rle_encode(&c32, &r32, pool, &err);
        check(!rc && rb.n_counts == r8.n_counts && rb.n_counts == r32.n_counts &&
                  !memcmp(rb.counts, r8.counts, rb.n_counts * 4) &&
                  !memcmp(rb.counts, r32.counts, rb.n_counts * 4),
              "rle of class %d differs from its binary mask", k);
        maskd_rle_free(&rb);
        maskd_rle_free(&r8);
        maskd_rle_free(&r32);
    }
    free(lab8);
    free(lab32);
    free(bin);

    /* Every class at once equals one class at a time. */
    static const int shapes[][2] = {{1, 1}, {3, 200}, {200, 3}, {64, 64}, {65, 129}, {0, 4}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int dt = 0; dt < 2; dt++) {
            int hh = shapes[si][0], ww = shapes[si][1], nc = 7;
            void *data = malloc((size_t)hh * ww * 4 + 1);
            for (int i = 0; i < hh * ww; i++) {
                int v = (rnd() % 5) ? ((i / ww) / 9 + (i % ww) / 11) % 9 - 1 : (int)(rnd() % 9) - 1;
                if (dt) ((int32_t *)data)[i] = v; /* -1, 7 and 8 are no class */
                else ((uint8_t *)data)[i] = (uint8_t)(v < 0 ? 200 : v);
            }
            maskd_label_map map = {hh, ww, dt ? MASKD_INT32 : MASKD_UINT8, data};
            maskd_rle all[7];
            int rc = maskd_rle_encode_classes(&map, nc, all, pool, &err);
            int same = !rc;
            for (int k = 0; same && k < nc; k++) {
                maskd_mask mk = maskd_mask_of_class(&map, k);
                maskd_rle one;
                same = !maskd_rle_encode(&mk, &one, NULL, &err) && one.n_counts == all[k].n_counts &&
                       !memcmp(one.counts, all[k].counts, one.n_counts * 4);
                maskd_rle_free(&one);
            }
            check(same, "rle_encode_classes %dx%d %s: %s", ww, hh, dt ? "int32" : "uint8",
                  err.message);
            for (int k = 0; !rc && k < nc; k++) maskd_rle_free(&all[k]);
            free(data);
        }
}

/* ---- components and regions ------------------------------------------- */

static void test_components(void)
{
    maskd_error err = {0};
    static const int sizes[][2] = {{1, 1}, {1, 40}, {40, 1}, {33, 47}, {128, 96}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (int d = 1; d <= 7; d += 2)
            for (int conn = 4; conn <= 8; conn += 4) {
                int h = sizes[s][0], w = sizes[s][1];
                uint8_t *m = noise_mask(h, w, d / 8.0);
                int32_t *ref = malloc((size_t)h * w * sizeof *ref);
                int n = flood_labels(m, h, w, conn, ref);
                maskd_mask mask = maskd_mask_binary(m, h, w);
                maskd_components c;
                int rc = maskd_components_find(&mask, conn, 1, &c, &err);
                int same = !rc && c.count == n && !memcmp(c.labels, ref, (size_t)h * w * 4);
                for (int k = 0; same && k < n; k++) {
                    maskd_region g = {0, {w, h, 0, 0}};
                    for (int y = 0; y < h; y++)
                        for (int x = 0; x < w; x++)
                            if (ref[y * w + x] == k + 1) {
                                g.area++;
                                if (x < g.box[0]) g.box[0] = x;
                                if (y < g.box[1]) g.box[1] = y;
                                if (x + 1 > g.box[2]) g.box[2] = x + 1;
                                if (y + 1 > g.box[3]) g.box[3] = y + 1;
                            }
                    same = g.area == c.regions[k].area && !memcmp(g.box, c.regions[k].box, 16);
                }
                check(same, "components %dx%d p=%d/8 conn %d: %d vs %d (%s)", h, w, d, conn,
                      c.count, n, err.message);
                maskd_components_free(&c);
                free(m);
                free(ref);
            }
    maskd_components c;
    maskd_mask empty = maskd_mask_binary(NULL, 0, 0);
    check(!maskd_components_find(&empty, 8, 1, &c, &err) && c.count == 0, "components of 0x0");
    maskd_components_free(&c);
    uint8_t one = 1;
    maskd_mask m1 = maskd_mask_binary(&one, 1, 1);
    check(maskd_components_find(&m1, 6, 0, &c, &err) != 0, "connectivity 6 accepted");

    /* Per-class regions, with labels outside the class range ignored. */
    int h = 123, w = 77, nc = 6;
    for (int dt = 0; dt < 2; dt++) {
        void *data = malloc((size_t)h * w * 4);
        for (int i = 0; i < h * w; i++) {
            int v = (int)(rnd() % 9) - 1; /* -1 and 6..7 are not classes */
            if (rnd() % 4) v = ((i / w) / 20 + (i % w) / 25) % nc;
            if (dt == 0) ((uint8_t *)data)[i] = (uint8_t)(v < 0 ? 255 : v);
            else ((int32_t *)data)[i] = v;
        }
        maskd_label_map map = {h, w, dt ? MASKD_INT32 : MASKD_UINT8, data};
        maskd_region got[6], got_mt[6];
        int rc = maskd_class_regions(&map, nc, got, NULL, &err) |
                 maskd_class_regions(&map, nc, got_mt, pool, &err);
        int same = !rc && !memcmp(got, got_mt, sizeof got);
        for (int k = 0; same && k < nc; k++) {
            maskd_region g = {0, {w, h, 0, 0}};
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++) {
                    int v = dt ? ((int32_t *)data)[y * w + x] : ((uint8_t *)data)[y * w + x];
                    if (v != k) continue;
                    g.area++;
                    if (x < g.box[0]) g.box[0] = x;
                    if (y < g.box[1]) g.box[1] = y;
                    if (x + 1 > g.box[2]) g.box[2] = x + 1;
                    if (y + 1 > g.box[3]) g.box[3] = y + 1;
                }
            if (!g.area) memset(g.box, 0, sizeof g.box);
            same = g.area == got[k].area && !memcmp(g.box, got[k].box, 16);
        }
        check(same, "class regions (%s)", dt ? "int32" : "uint8");
        free(data);
    }
}

/* ---- polygons ---------------------------------------------------------- */

static double iou(const uint8_t *a, const uint8_t *b, size_t n)
{
    size_t inter = 0, uni = 0;
    for (size_t i = 0; i < n; i++) {
        inter += a[i] && b[i];
        uni += a[i] || b[i];
    }
    return uni ? (double)inter / uni : 1.0;
}

static void poly_exact_case(const char *name, const uint8_t *m, int h, int w, int conn)
{
    maskd_error err = {0};
    maskd_mask mask = maskd_mask_binary(m, h, w);
    maskd_polygon_options opt = {conn, 0};
    maskd_polygons p;
    int rc = maskd_polygons_trace(&mask, &opt, &p, &err);
    check(!rc, "polygons %s conn %d: %s", name, conn, err.message);
    if (rc) return;
    uint8_t *r = malloc((size_t)h * w + 1), *bin = malloc((size_t)h * w + 1);
    for (size_t i = 0; i < (size_t)h * w; i++) bin[i] = m[i] != 0;
    rasterize(&p, h, w, r);
    check(!memcmp(r, bin, (size_t)h * w), "polygons %s conn %d: fill differs from the mask",
          name, conn);
    int32_t *lab = malloc(((size_t)h * w + 1) * sizeof *lab);
    int n_comp = flood_labels(m, h, w, conn, lab), n_holes = count_holes(m, h, w, conn);
    int outer = 0, holes = 0, order_ok = 1;
    for (int i = 0; i < p.n_rings; i++) {
        const maskd_ring *g = &p.rings[i];
        double a2 = 0;
        int integral = 1;
        for (int k = 0; k < g->n_points; k++) {
            int j = (k + 1) % g->n_points;
            a2 += g->xy[2 * k] * g->xy[2 * j + 1] - g->xy[2 * j] * g->xy[2 * k + 1];
            integral &= g->xy[2 * k] == floor(g->xy[2 * k]) &&
                        g->xy[2 * k + 1] == floor(g->xy[2 * k + 1]);
        }
        order_ok &= integral;
        if (g->hole) {
            holes++;
            order_ok &= a2 < 0 && g->outer < i && !p.rings[g->outer].hole &&
                        p.rings[g->outer].component == g->component;
        } else {
            order_ok &= a2 > 0 && g->outer == i && g->component == outer;
            outer++;
        }
    }
    check(outer == n_comp && holes == n_holes && order_ok,
          "polygons %s conn %d: %d outer / %d holes, expected %d / %d (order %d)", name, conn,
          outer, holes, n_comp, n_holes, order_ok);
    free(lab);
    free(r);
    free(bin);
    maskd_polygons_free(&p);
}

static uint8_t *shape_mask(int kind, int h, int w)
{
    uint8_t *m = calloc((size_t)h * w, 1);
    double cx = w / 2.0, cy = h / 2.0, R = (h < w ? h : w) * 0.4;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double dx = x + 0.5 - cx, dy = y + 0.5 - cy, d = sqrt(dx * dx + dy * dy);
            double a = atan2(dy, dx);
            int in = 0;
            switch (kind) {
            case 0: in = d < R; break;                                   /* disc */
            case 1: in = d < R && d > R * 0.45; break;                   /* ring */
            case 2: in = d < R * (0.55 + 0.45 * cos(5 * a)); break;      /* star */
            case 3: in = fabs(dx) < R * 0.8 && fabs(dy) < R * 0.8; break; /* square */
            case 4: in = fabs(dx) + fabs(dy) < R; break;                 /* diamond */
            case 5: /* several blobs, one with a square hole */
                for (int b = 0; b < 4; b++) {
                    double bx = w * (0.25 + 0.5 * (b & 1)), by = h * (0.25 + 0.5 * (b >> 1));
                    double e = hypot(x + 0.5 - bx, y + 0.5 - by);
                    if (e < R * 0.4 && !(b == 3 && fabs(x + 0.5 - bx) < R * 0.15 &&
                                         fabs(y + 0.5 - by) < R * 0.15))
                        in = 1;
                }
                break;
            }
            m[(size_t)y * w + x] = (uint8_t)in;
        }
    return m;
}

static void test_polygons(void)
{
    static const int sizes[][2] = {{1, 1}, {1, 30}, {30, 1}, {2, 2}, {16, 16}, {47, 61}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (int d = 1; d <= 7; d += 2) {
            int h = sizes[s][0], w = sizes[s][1];
            uint8_t *m = noise_mask(h, w, d / 8.0);
            char name[64];
            snprintf(name, sizeof name, "%dx%d p=%d/8", h, w, d);
            poly_exact_case(name, m, h, w, 4);
            poly_exact_case(name, m, h, w, 8);
            free(m);
        }
    uint8_t full[12] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    poly_exact_case("full 3x4", full, 3, 4, 8);
    uint8_t *blobs = blob_mask(200, 260, 8);
    poly_exact_case("blobs", blobs, 200, 260, 8);
    poly_exact_case("blobs", blobs, 200, 260, 4);
    free(blobs);

    static const char *names[] = {"disc", "ring", "star", "square", "diamond", "blobs"};
    for (int kind = 0; kind < 6; kind++) {
        int h = 180, w = 240;
        uint8_t *m = shape_mask(kind, h, w);
        poly_exact_case(names[kind], m, h, w, 8);
        for (int t = 0; t < 3; t++) {
            double tol = t == 0 ? 0.5 : t == 1 ? 1.0 : 1.5;
            maskd_error err = {0};
            maskd_mask mask = maskd_mask_binary(m, h, w);
            maskd_polygon_options opt = {8, tol}, exact = {8, 0};
            maskd_polygons p, q;
            int rc = maskd_polygons_trace(&mask, &opt, &p, &err) |
                     maskd_polygons_trace(&mask, &exact, &q, &err);
            if (rc) {
                check(0, "polygons %s: %s", names[kind], err.message);
                continue;
            }
            uint8_t *r = malloc((size_t)h * w);
            rasterize(&p, h, w, r);
            double score = iou(m, r, (size_t)h * w);
            int pts = 0, pts_exact = 0, holes = 0;
            for (int i = 0; i < p.n_rings; i++) pts += p.rings[i].n_points, holes += p.rings[i].hole;
            for (int i = 0; i < q.n_rings; i++) pts_exact += q.rings[i].n_points;
            int want_holes = count_holes(m, h, w, 8);
            check(score >= 0.98 && holes == want_holes && p.n_rings == q.n_rings &&
                      (kind == 3 ? pts <= pts_exact : pts < pts_exact),
                  "polygons %s tol %.1f: IoU %.4f, %d holes, %d of %d points", names[kind], tol,
                  score, holes, pts, pts_exact);
            free(r);
            maskd_polygons_free(&p);
            maskd_polygons_free(&q);
        }
        free(m);
    }
    maskd_error err = {0};
    maskd_polygons p;
    maskd_mask none = maskd_mask_binary(NULL, 0, 7);
    check(!maskd_polygons_trace(&none, NULL, &p, &err) && p.n_rings == 0, "polygons of 0x7");
    uint8_t z[6] = {0};
    maskd_mask zero = maskd_mask_binary(z, 2, 3);
    check(!maskd_polygons_trace(&zero, NULL, &p, &err) && p.n_rings == 0, "polygons of empty");
    maskd_polygon_options neg = {8, -1};
    check(maskd_polygons_trace(&zero, &neg, &p, &err) != 0, "negative tolerance accepted");
}

/* ---- argmax ------------------------------------------------------------ */

static void ref_linear(int64_t dst, float scale, int64_t in, int *i0, int *i1, float *l0,
                       float *l1)
{
    float s = scale * ((float)dst + 0.5f) - 0.5f;
    if (s < 0) s = 0;
    int i = (int)floorf(s);
    if (i > in - 1) i = (int)in - 1;
    float l = s - (float)i;
    *i0 = i;
    *i1 = i + (i < in - 1);
    *l1 = l;
    *l0 = 1.f - l;
}

static void argmax_case(int c, int h, int w, int H, int W)
{
    maskd_error err = {0};
    float *logits = malloc((size_t)c * h * w * sizeof *logits);
    for (int i = 0; i < c * h * w; i++) logits[i] = (float)(rnd01() * 4 - 2);
    /* The reference materialises the resized C×H×W tensor. */
    float *up = malloc((size_t)c * H * W * sizeof *up);
    for (int k = 0; k < c; k++)
        for (int y = 0; y < H; y++) {
            int y0, y1, x0, x1;
            float a0, a1, b0, b1;
            ref_linear(y, (float)h / H, h, &y0, &y1, &a0, &a1);
            for (int x = 0; x < W; x++) {
                ref_linear(x, (float)w / W, w, &x0, &x1, &b0, &b1);
                const float *L = logits + (size_t)k * h * w;
                up[((size_t)k * H + y) * W + x] =
                    a0 * (b0 * L[y0 * w + x0] + b1 * L[y0 * w + x1]) +
                    a1 * (b0 * L[y1 * w + x0] + b1 * L[y1 * w + x1]);
            }
        }
    maskd_tensor t = {MASKD_FLOAT, 4, {1, c, h, w}, logits};
    int32_t *o32 = malloc((size_t)H * W * 4), *o32b = malloc((size_t)H * W * 4);
    uint8_t *o8 = malloc((size_t)H * W);
    maskd_label_map m32 = {H, W, MASKD_INT32, o32}, m32b = {H, W, MASKD_INT32, o32b},
                    m8 = {H, W, MASKD_UINT8, o8};
    int rc = maskd_argmax(&t, &m32, NULL, &err) | maskd_argmax(&t, &m32b, pool, &err);
    int rc8 = c <= 256 ? maskd_argmax(&t, &m8, pool, &err) : 0;
    int bad = 0;
    for (int p = 0; !rc && !rc8 && p < H * W; p++) {
        int best = 0;
        float bv = up[p], second = -INFINITY;
        for (int k = 1; k < c; k++) {
            float v = up[(size_t)k * H * W + p];
            if (v > bv) {
                second = bv;
                bv = v;
                best = k;
            } else if (v > second) {
                second = v;
            }
        }
        if (o32[p] != best && bv - second > 1e-5f) bad++;
        if (o32[p] != o32b[p] || (c <= 256 && o8[p] != (uint8_t)o32[p])) bad++;
    }
    check(!rc && !rc8 && !bad, "argmax C=%d %dx%d -> %dx%d: %d bad pixels (%s)", c, w, h, W, H,
          bad, err.message);
    free(logits);
    free(up);
    free(o32);
    free(o32b);
    free(o8);
}

static void test_argmax(void)
{
    argmax_case(1, 5, 7, 5, 7);
    argmax_case(3, 8, 8, 8, 8);
    argmax_case(21, 16, 12, 128, 96);
    argmax_case(5, 13, 17, 50, 31);
    argmax_case(4, 32, 32, 7, 9); /* downsampling */
    argmax_case(2, 1, 1, 6, 4);
    argmax_case(7, 10, 10, 1, 1);
    argmax_case(300, 4, 4, 9, 9);

    maskd_error err = {0};
    float inf_logits[6] = {INFINITY, 0, -1, 1, NAN, 2};
    maskd_tensor t = {MASKD_FLOAT, 3, {2, 1, 3}, inf_logits};
    uint8_t o[3];
    maskd_label_map m = {1, 3, MASKD_UINT8, o};
    check(!maskd_argmax(&t, &m, NULL, &err) && o[0] == 0 && o[1] == 0 && o[2] == 1,
          "argmax with inf and NaN: %d %d %d", o[0], o[1], o[2]);
    float many[300] = {0};
    maskd_tensor big = {MASKD_FLOAT, 3, {300, 1, 1}, many};
    maskd_label_map one = {1, 1, MASKD_UINT8, o};
    check(maskd_argmax(&big, &one, NULL, &err) == MASKD_ERR_INVALID, "300 classes into uint8");
    maskd_tensor bad = {MASKD_FLOAT, 2, {1, 1}, many};
    check(maskd_argmax(&bad, &one, NULL, &err) != 0, "2-D logits accepted");
    maskd_tensor batch = {MASKD_FLOAT, 4, {2, 1, 1, 1}, many};
    check(maskd_argmax(&batch, &one, NULL, &err) != 0, "batch of 2 accepted");
    maskd_tensor empty = {MASKD_FLOAT, 3, {2, 0, 0}, many};
    check(maskd_argmax(&empty, &one, NULL, &err) != 0, "empty logits into 1x1 accepted");

    /* Nearest resize follows floor(dst * in / out). */
    int32_t src[12], dst[7 * 5];
    for (int i = 0; i < 12; i++) src[i] = i;
    maskd_label_map s = {3, 4, MASKD_INT32, src}, d = {7, 5, MASKD_INT32, dst};
    int ok = !maskd_labels_resize_nearest(&s, &d, pool, &err);
    for (int y = 0; ok && y < 7; y++)
        for (int x = 0; x < 5; x++) {
            int sy = (int)floorf(y * (3.f / 7.f)), sx = (int)floorf(x * (4.f / 5.f));
            ok &= dst[y * 5 + x] == src[sy * 4 + sx];
        }
    check(ok, "nearest resize 4x3 -> 5x7");
}

/* ---- PNG --------------------------------------------------------------- */

static void test_png(void)
{
    maskd_error err = {0};
    uint8_t map8[6] = {0, 1, 2, 3, 4, 20};
    maskd_label_map m = {2, 3, MASKD_UINT8, map8};
    unsigned char *png = NULL;
    size_t size = 0;
    check(!maskd_png_encode(&m, NULL, &png, &size, &err) && size > 8 &&
              !memcmp(png, "\x89PNG\r\n\x1a\n", 8),
          "png signature: %s", err.message);
    free(png);
    int32_t map32[2] = {0, 256};
    maskd_label_map m32 = {1, 2, MASKD_INT32, map32};
    check(maskd_png_encode(&m32, NULL, &png, &size, &err) == MASKD_ERR_INVALID,
          "png of label 256 accepted");
    uint8_t colors[3 * 4] = {0};
    maskd_png_options few = {MASKD_PNG_PALETTE, colors, 4, 0};
    check(maskd_png_encode(&m, &few, &png, &size, &err) == MASKD_ERR_INVALID,
          "png palette smaller than the labels accepted");
    maskd_label_map empty = {0, 0, MASKD_UINT8, map8};
    check(maskd_png_encode(&empty, NULL, &png, &size, &err) == MASKD_ERR_INVALID,
          "png of 0x0 accepted");
}

int main(void)
{
    maskd_error err = {0};
    if (maskd_pool_create(2, &pool, &err)) {
        fprintf(stderr, "pool: %s\n", err.message);
        return 1;
    }
    test_rle();
    test_components();
    test_polygons();
    test_argmax();
    test_png();
    maskd_pool_free(pool);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
