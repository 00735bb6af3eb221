/*
 * Topology of binary masks: connected components (run-based union-find) and
 * polygons (boundary following on pixel corners, Douglas-Peucker).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../mk.h"
#include "maskd/masks.h"

/* ---- connected components ------------------------------------------------ */

/* Labelling works on horizontal runs rather than pixels: a class mask has
 * far fewer runs than pixels, and a run's component is all the polygon
 * tracer needs to know to pair holes with their outer ring. */
typedef struct run {
    int32_t x0, x1; /* [x0, x1) */
    uint32_t id;    /* union-find parent, then the component index */
} run;

typedef struct run_labels {
    int32_t height, width;
    size_t n_runs;
    run *runs;
    size_t *row_start; /* height + 1: runs of row y are [row_start[y], row_start[y+1]) */
    int32_t count;
    maskd_region *regions;
} run_labels;

static void run_labels_free(run_labels *rl)
{
    free(rl->runs);
    free(rl->row_start);
    free(rl->regions);
    memset(rl, 0, sizeof *rl);
}

static uint32_t find_root(run *runs, uint32_t i)
{
    while (runs[i].id != i) {
        runs[i].id = runs[runs[i].id].id; /* path halving */
        i = runs[i].id;
    }
    return i;
}

/* The smaller index becomes the root, so a component's root is its first run
 * in raster order and components get numbered in that order. */
static void unite(run *runs, uint32_t a, uint32_t b)
{
    a = find_root(runs, a);
    b = find_root(runs, b);
    if (a < b) runs[b].id = a;
    else if (b < a) runs[a].id = b;
}

static int label_runs(const maskd_mask *m, int connectivity, run_labels *rl,
                      mk_error *err)
{
    memset(rl, 0, sizeof *rl);
    int32_t h = m->map.height, w = m->map.width;
    rl->height = h;
    rl->width = w;
    int touch = connectivity == 8; /* diagonal neighbours join */
    size_t cap = 1024;
    rl->runs = malloc(cap * sizeof *rl->runs);
    rl->row_start = malloc(((size_t)h + 1) * sizeof *rl->row_start);
    uint8_t *row = malloc(w > 0 ? (size_t)w : 1);
    if (!rl->runs || !rl->row_start || !row) goto nomem;

    size_t n = 0;
    for (int32_t y = 0; y < h; y++) {
        rl->row_start[y] = n;
        maskd_mask_row(m, y, 0, w, row);
        size_t x = 0;
        while (x < (size_t)w) {
            const uint8_t *one = memchr(row + x, 1, (size_t)w - x);
            if (!one) break;
            size_t x0 = (size_t)(one - row);
            const uint8_t *zero = memchr(row + x0, 0, (size_t)w - x0);
            size_t x1 = zero ? (size_t)(zero - row) : (size_t)w;
            if (n == cap) {
                if (cap >= UINT32_MAX / 2) goto nomem;
                run *r = realloc(rl->runs, 2 * cap * sizeof *r);
                if (!r) goto nomem;
                rl->runs = r;
                cap *= 2;
            }
            rl->runs[n] = (run){(int32_t)x0, (int32_t)x1, (uint32_t)n};
            n++;
            x = x1;
        }
        if (y > 0) {
            size_t p = rl->row_start[y - 1], pend = rl->row_start[y];
            for (size_t c = rl->row_start[y]; c < n; c++) {
                run *cur = &rl->runs[c];
                while (p < pend && rl->runs[p].x1 + touch <= cur->x0) p++;
                for (size_t q = p; q < pend && rl->runs[q].x0 < cur->x1 + touch; q++)
                    unite(rl->runs, (uint32_t)q, (uint32_t)c);
            }
        }
    }
    rl->row_start[h] = n;
    rl->n_runs = n;
    free(row);

    /* A parent always has a smaller index than its child, so in index order
     * every run can point straight at its root, and then every root, met
     * before its members, can hand out the next component index. */
    for (size_t i = 0; i < n; i++) rl->runs[i].id = rl->runs[rl->runs[i].id].id;
    int32_t count = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t root = rl->runs[i].id;
        rl->runs[i].id = root == i ? (uint32_t)count++ : rl->runs[root].id;
    }
    rl->count = count;
    rl->regions = calloc(count > 0 ? (size_t)count : 1, sizeof *rl->regions);
    if (!rl->regions) goto nomem_row_freed;
    for (int32_t y = 0; y < h; y++) {
        for (size_t i = rl->row_start[y]; i < rl->row_start[y + 1]; i++) {
            const run *r = &rl->runs[i];
            maskd_region *g = &rl->regions[r->id];
            if (g->area == 0) {
                g->box[0] = r->x0;
                g->box[1] = y;
                g->box[2] = r->x1;
            } else {
                if (r->x0 < g->box[0]) g->box[0] = r->x0;
                if (r->x1 > g->box[2]) g->box[2] = r->x1;
            }
            g->box[3] = y + 1;
            g->area += r->x1 - r->x0;
        }
    }
    return MASKD_OK;

nomem:
    free(row);
nomem_row_freed:
    run_labels_free(rl);
    return mk_fail(err, MASKD_ERR_NOMEM, "components: out of memory");
}

/* Component index of pixel (x, y), which must be in the mask. */
static int32_t component_at(const run_labels *rl, int32_t x, int32_t y)
{
    size_t lo = rl->row_start[y], hi = rl->row_start[y + 1];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (rl->runs[mid].x1 <= x) lo = mid + 1;
        else hi = mid;
    }
    return lo < rl->row_start[y + 1] ? (int32_t)rl->runs[lo].id : -1;
}

static int check_mask(const maskd_mask *m, int *connectivity, const char *what,
                      mk_error *err)
{
    if (!m) return mk_fail(err, MASKD_ERR_INVALID, "%s: no mask", what);
    if (m->map.height < 0 || m->map.width < 0)
        return mk_fail(err, MASKD_ERR_INVALID, "%s: negative size %dx%d", what,
                       (int)m->map.width, (int)m->map.height);
    if (m->map.dtype != MASKD_UINT8 && m->map.dtype != MASKD_INT32)
        return mk_fail(err, MASKD_ERR_INVALID, "%s: masks are uint8 or int32, not %s",
                       what, maskd_dtype_name(m->map.dtype));
    if (!m->map.data && m->map.height > 0 && m->map.width > 0)
        return mk_fail(err, MASKD_ERR_INVALID, "%s: no pixel data", what);
    if (*connectivity == 0) *connectivity = 8;
    if (*connectivity != 4 && *connectivity != 8)
        return mk_fail(err, MASKD_ERR_INVALID, "%s: connectivity is 4 or 8, not %d",
                       what, *connectivity);
    return MASKD_OK;
}

int maskd_components_find(const maskd_mask *mask, int connectivity,
                          int with_labels, maskd_components *out,
                          maskd_error *err)
{
    if (!out) return mk_fail(err, MASKD_ERR_INVALID, "components: no output");
    memset(out, 0, sizeof *out);
    int rc = check_mask(mask, &connectivity, "components", err);
    if (rc) return rc;
    run_labels rl;
    rc = label_runs(mask, connectivity, &rl, err);
    if (rc) return rc;
    if (with_labels) {
        size_t area = (size_t)rl.height * (size_t)rl.width;
        out->labels = calloc(area ? area : 1, sizeof *out->labels);
        if (!out->labels) {
            run_labels_free(&rl);
            return mk_fail(err, MASKD_ERR_NOMEM, "components: out of memory");
        }
        for (int32_t y = 0; y < rl.height; y++) {
            int32_t *row = out->labels + (size_t)y * (size_t)rl.width;
            for (size_t i = rl.row_start[y]; i < rl.row_start[y + 1]; i++)
                for (int32_t x = rl.runs[i].x0; x < rl.runs[i].x1; x++)
                    row[x] = (int32_t)rl.runs[i].id + 1;
        }
    }
    out->count = rl.count;
    out->regions = rl.regions;
    rl.regions = NULL;
    run_labels_free(&rl);
    return MASKD_OK;
}

void maskd_components_free(maskd_components *c)
{
    if (!c) return;
    free(c->regions);
    free(c->labels);
    memset(c, 0, sizeof *c);
}

/* ---- boundary tracing -------------------------------------------------- */

/* Boundaries run along pixel edges between corner points, with the mask on
 * the right of the direction of travel (screen coordinates, y down): outer
 * rings go clockwise on screen, holes counter-clockwise.  Directions are
 * numbered clockwise, so d+1 is a right turn and d+3 a left turn. */
enum { EAST, SOUTH, WEST, NORTH };
static const int32_t DX[4] = {1, 0, -1, 0}, DY[4] = {0, 1, 0, -1};

typedef struct point_buf {
    int32_t *xy;
    size_t n, cap; /* in points */
} point_buf;

static int push_point(point_buf *b, int32_t x, int32_t y)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 1024;
        int32_t *p = realloc(b->xy, cap * 2 * sizeof *p);
        if (!p) return -1;
        b->xy = p;
        b->cap = cap;
    }
    b->xy[2 * b->n] = x;
    b->xy[2 * b->n + 1] = y;
    b->n++;
    return 0;
}

/* Whether the edge leaving corner (x, y) in direction d is a boundary edge
 * with the mask on its right. */
static int edge_leaves(const maskd_mask *m, int32_t x, int32_t y, int d)
{
    switch (d) {
    case EAST: return maskd_mask_at(m, x, y) && !maskd_mask_at(m, x, y - 1);
    case SOUTH: return maskd_mask_at(m, x - 1, y) && !maskd_mask_at(m, x, y);
    case WEST: return maskd_mask_at(m, x - 1, y - 1) && !maskd_mask_at(m, x - 1, y);
    default: return maskd_mask_at(m, x, y - 1) && !maskd_mask_at(m, x - 1, y - 1);
    }
}

/* At a corner where two diagonal pixels are in the mask and the other two
 * are not, two boundaries meet.  Turning left first keeps the diagonal
 * pixels in one ring (8-connected mask), turning right first separates them
 * (4-connected).  Elsewhere only one way on exists. */
static int next_direction(const maskd_mask *m, int32_t x, int32_t y, int d,
                          int connectivity)
{
    static const int left_first[3] = {3, 0, 1}, right_first[3] = {1, 0, 3};
    const int *order = connectivity == 8 ? left_first : right_first;
    for (int i = 0; i < 3; i++) {
        int nd = (d + order[i]) & 3;
        if (edge_leaves(m, x, y, nd)) return nd;
    }
    return -1;
}

typedef struct traced_ring {
    size_t first, n; /* points in the shared buffer */
    int64_t area2;   /* twice the signed area */
    int32_t component;
} traced_ring;

/* Follows one boundary from the horizontal edge at row y, column x, marking
 * the horizontal edges it passes; points are kept only at turns. */
static int trace_ring(const maskd_mask *m, int connectivity, int32_t x,
                      int32_t y, int start_dir, uint8_t *visited,
                      point_buf *pts, traced_ring *ring)
{
    int32_t w = m->map.width;
    int32_t sx = start_dir == EAST ? x : x + 1, sy = y;
    int32_t vx = sx, vy = sy;
    int d = start_dir;
    ring->first = pts->n;
    if (push_point(pts, vx, vy)) return MASKD_ERR_NOMEM;
    for (;;) {
        if (d == EAST || d == WEST) {
            size_t e = (size_t)vy * (size_t)w + (size_t)(d == EAST ? vx : vx - 1);
            visited[e >> 3] |= (uint8_t)(1u << (e & 7));
        }
        vx += DX[d];
        vy += DY[d];
        int nd = next_direction(m, vx, vy, d, connectivity);
        if (nd < 0) return MASKD_ERR_RUNTIME; /* cannot happen on a boundary */
        if (vx == sx && vy == sy && nd == start_dir) break;
        if (nd != d && push_point(pts, vx, vy)) return MASKD_ERR_NOMEM;
        d = nd;
    }
    ring->n = pts->n - ring->first;
    if (d == start_dir) {
        /* The start lay on a straight stretch, not at a corner. */
        memmove(pts->xy + 2 * ring->first, pts->xy + 2 * ring->first + 2,
                (ring->n - 1) * 2 * sizeof *pts->xy);
        ring->n--;
        pts->n--;
    }
    const int32_t *p = pts->xy + 2 * ring->first;
    int64_t a = 0;
    for (size_t i = 0; i < ring->n; i++) {
        size_t k = i + 1 == ring->n ? 0 : i + 1;
        a += (int64_t)p[2 * i] * p[2 * k + 1] - (int64_t)p[2 * k] * p[2 * i + 1];
    }
    ring->area2 = a;
    return MASKD_OK;
}

/* ---- Douglas-Peucker --------------------------------------------------- */

static double segment_distance2(const int32_t *p, const int32_t *a,
                                const int32_t *b)
{
    double abx = b[0] - a[0], aby = b[1] - a[1];
    double apx = p[0] - a[0], apy = p[1] - a[1];
    double len2 = abx * abx + aby * aby;
    double t = len2 > 0 ? (apx * abx + apy * aby) / len2 : 0;
    if (t < 0) t = 0;
    if (t > 1) t = 1;
    double dx = apx - t * abx, dy = apy - t * aby;
    return dx * dx + dy * dy;
}

typedef struct span {
    size_t a, b;
} span;

/* Marks in keep[] the points of the open chain from index a to index b
 * (b may equal n, meaning point 0 again) that Douglas-Peucker keeps.  An
 * explicit stack, since a ring of a large mask has millions of points. */
static int simplify_chain(const int32_t *xy, size_t n, size_t a, size_t b,
                          double tol2, uint8_t *keep, span *stack)
{
    size_t top = 0;
    stack[top++] = (span){a, b};
    while (top) {
        span s = stack[--top];
        if (s.b - s.a < 2) continue;
        const int32_t *pa = xy + 2 * s.a, *pb = xy + 2 * (s.b % n);
        double far = -1;
        size_t at = s.a;
        for (size_t i = s.a + 1; i < s.b; i++) {
            double d = segment_distance2(xy + 2 * i, pa, pb);
            if (d > far) {
                far = d;
                at = i;
            }
        }
        if (far > tol2) {
            keep[at] = 1;
            stack[top++] = (span){s.a, at};
            stack[top++] = (span){at, s.b};
        }
    }
    return 0;
}

typedef struct line_fit {
    double cx, cy; /* a point on the line */
    double dx, dy; /* unit direction */
} line_fit;

/* The least-squares line through the boundary from corner a to corner b
 * (indices mod n), from the moments of the boundary as a curve, so every
 * unit of length weighs the same however the corners fall. */
static line_fit fit_stretch(const int32_t *xy, size_t n, size_t a, size_t b)
{
    /* Relative to corner a, so squares of large coordinates do not cancel. */
    double ox = xy[2 * a], oy = xy[2 * a + 1];
    double m0 = 0, mx = 0, my = 0, mxx = 0, mxy = 0, myy = 0;
    for (size_t i = a; i < b; i++) {
        const int32_t *p = xy + 2 * (i % n), *q = xy + 2 * ((i + 1) % n);
        double px = p[0] - ox, py = p[1] - oy, qx = q[0] - ox, qy = q[1] - oy;
        double len = fabs(qx - px) + fabs(qy - py); /* edges are axis-aligned */
        m0 += len;
        mx += len * (px + qx) / 2;
        my += len * (py + qy) / 2;
        mxx += len * (px * px + px * qx + qx * qx) / 3;
        myy += len * (py * py + py * qy + qy * qy) / 3;
        mxy += len * (2 * px * py + px * qy + qx * py + 2 * qx * qy) / 6;
    }
    double cx = mx / m0, cy = my / m0;
    double sxx = mxx / m0 - cx * cx, syy = myy / m0 - cy * cy, sxy = mxy / m0 - cx * cy;
    double theta = 0.5 * atan2(2 * sxy, sxx - syy);
    return (line_fit){cx + ox, cy + oy, cos(theta), sin(theta)};
}

static double ring_area2(const double *xy, size_t n)
{
    double a = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = i + 1 == n ? 0 : i + 1;
        a += xy[2 * i] * xy[2 * k + 1] - xy[2 * k] * xy[2 * i + 1];
    }
    return a;
}

typedef struct simplify_buf {
    uint8_t *keep;
    span *stack;
    size_t *kept;
    line_fit *fits;
} simplify_buf;

/* Douglas-Peucker picks the corners to keep.  Its chords run through
 * corners of the pixel staircase and cut every curve on one side (inside a
 * convex stretch, outside a concave one), so each kept stretch is then
 * replaced by its least-squares line and the corners moved to where
 * neighbouring lines meet: at tolerance 1 this halves the area lost to
 * simplification.  A corner whose lines are near parallel, or would move
 * more than twice the tolerance (sharp tips), stays where it was.  Writes
 * the ring as doubles to out; returns the point count. */
static size_t simplify_ring(const int32_t *xy, size_t n, double tol,
                            simplify_buf *sb, double *out)
{
    size_t o = 0;
    if (tol > 0 && n > 3) {
        /* A closed ring has no natural ends: split it at point 0 and the
         * point farthest from it. */
        size_t far_i = 0;
        int64_t far = -1;
        for (size_t i = 1; i < n; i++) {
            int64_t dx = xy[2 * i] - xy[0], dy = xy[2 * i + 1] - xy[1];
            if (dx * dx + dy * dy > far) {
                far = dx * dx + dy * dy;
                far_i = i;
            }
        }
        memset(sb->keep, 0, n);
        sb->keep[0] = sb->keep[far_i] = 1;
        simplify_chain(xy, n, 0, far_i, tol * tol, sb->keep, sb->stack);
        simplify_chain(xy, n, far_i, n, tol * tol, sb->keep, sb->stack);
        for (size_t i = 0; i < n; i++)
            if (sb->keep[i]) sb->kept[o++] = i;
    }
    if (o < 3) {
        for (size_t i = 0; i < 2 * n; i++) out[i] = xy[i];
        return n;
    }
    for (size_t s = 0; s < o; s++) {
        size_t a = sb->kept[s], b = s + 1 < o ? sb->kept[s + 1] : sb->kept[0] + n;
        sb->fits[s] = fit_stretch(xy, n, a, b);
    }
    for (size_t s = 0; s < o; s++) {
        const line_fit *l1 = &sb->fits[s ? s - 1 : o - 1], *l2 = &sb->fits[s];
        double corner_x = xy[2 * sb->kept[s]], corner_y = xy[2 * sb->kept[s] + 1];
        double cross = l1->dx * l2->dy - l1->dy * l2->dx;
        out[2 * s] = corner_x;
        out[2 * s + 1] = corner_y;
        if (fabs(cross) < 1e-6) continue;
        double t = ((l2->cx - l1->cx) * l2->dy - (l2->cy - l1->cy) * l2->dx) / cross;
        double px = l1->cx + t * l1->dx, py = l1->cy + t * l1->dy;
        if (hypot(px - corner_x, py - corner_y) > 2 * tol) continue;
        out[2 * s] = px;
        out[2 * s + 1] = py;
    }
    /* Moving corners must not turn a tiny ring inside out. */
    double before = 0;
    for (size_t s = 0; s < o; s++) {
        size_t i = sb->kept[s], k = sb->kept[s + 1 < o ? s + 1 : 0];
        before += (double)xy[2 * i] * xy[2 * k + 1] - (double)xy[2 * k] * xy[2 * i + 1];
    }
    double after = ring_area2(out, o);
    if (before == 0 || (after > 0) != (before > 0)) {
        if (before == 0) {
            for (size_t i = 0; i < 2 * n; i++) out[i] = xy[i];
            return n;
        }
        for (size_t s = 0; s < o; s++) {
            out[2 * s] = xy[2 * sb->kept[s]];
            out[2 * s + 1] = xy[2 * sb->kept[s] + 1];
        }
    }
    return o;
}

/* ---- polygons ---------------------------------------------------------- */

void maskd_polygons_free(maskd_polygons *p)
{
    if (!p) return;
    free(p->rings); /* one allocation holds the rings and their points */
    p->rings = NULL;
    p->n_rings = 0;
}

int maskd_polygons_trace(const maskd_mask *mask,
                         const maskd_polygon_options *opt, maskd_polygons *out,
                         maskd_error *err)
{
    if (!out) return mk_fail(err, MASKD_ERR_INVALID, "polygons: no output");
    memset(out, 0, sizeof *out);
    int connectivity = opt ? opt->connectivity : 8;
    double tol = opt ? opt->tolerance : 0;
    int rc = check_mask(mask, &connectivity, "polygons", err);
    if (rc) return rc;
    if (!(tol >= 0) || !isfinite(tol))
        return mk_fail(err, MASKD_ERR_INVALID,
                       "polygons: tolerance must be a finite number >= 0, not %g", tol);
    int32_t h = mask->map.height, w = mask->map.width;
    if (h == 0 || w == 0) return MASKD_OK;

    run_labels rl;
    rc = label_runs(mask, connectivity, &rl, err);
    if (rc) return rc;

    point_buf pts = {0};
    traced_ring *rings = NULL;
    size_t n_rings = 0, ring_cap = 0;
    /* One bit per horizontal edge: rows 0..h of w edges. */
    uint8_t *visited = calloc((((size_t)h + 1) * (size_t)w + 7) / 8, 1);
    uint8_t *above = malloc((size_t)w), *below = malloc((size_t)w);
    simplify_buf sb = {0};
    double *simplified = NULL;
    int32_t *outer_of = NULL, *holes_of = NULL, *slot_ring = NULL, *next_hole = NULL;
    int status = MASKD_ERR_NOMEM;
    if (!visited || !above || !below) goto done;

    /* Every ring has a horizontal edge, and its first one in raster order
     * is where tracing starts; the whole ring is then marked. */
    memset(above, 0, (size_t)w);
    for (int32_t y = 0; y <= h; y++) {
        if (y < h) maskd_mask_row(mask, y, 0, w, below);
        else memset(below, 0, (size_t)w);
        int32_t x = 0;
        while (x < w) {
            /* Most neighbouring rows agree: skip 8 equal columns at once. */
            if (x + 8 <= w) {
                uint64_t a, b;
                memcpy(&a, above + x, 8);
                memcpy(&b, below + x, 8);
                if (a == b) {
                    x += 8;
                    continue;
                }
            }
            size_t e = (size_t)y * (size_t)w + (size_t)x;
            if (above[x] == below[x] || (visited[e >> 3] >> (e & 7) & 1)) {
                x++;
                continue;
            }
            if (n_rings == ring_cap) {
                size_t cap = ring_cap ? 2 * ring_cap : 64;
                traced_ring *r = realloc(rings, cap * sizeof *r);
                if (!r) goto done;
                rings = r;
                ring_cap = cap;
            }
            traced_ring *ring = &rings[n_rings++];
            int dir = below[x] ? EAST : WEST;
            status = trace_ring(mask, connectivity, x, y, dir, visited, &pts, ring);
            if (status) goto done;
            status = MASKD_ERR_NOMEM;
            ring->component = below[x] ? component_at(&rl, x, y)
                                       : component_at(&rl, x, y - 1);
            x++;
        }
        uint8_t *t = above;
        above = below;
        below = t;
    }

    if (n_rings == 0) {
        status = MASKD_OK;
        goto done;
    }

    /* Each component has one outer ring; its holes follow it. */
    outer_of = malloc((size_t)(rl.count > 0 ? rl.count : 1) * sizeof *outer_of);
    holes_of = calloc((size_t)rl.count + 1, sizeof *holes_of);
    if (!outer_of || !holes_of) goto done;
    for (int32_t k = 0; k < rl.count; k++) outer_of[k] = -1;
    size_t max_points = 0;
    for (size_t i = 0; i < n_rings; i++) {
        int32_t k = rings[i].component;
        if (k < 0 || (rings[i].area2 > 0 && outer_of[k] >= 0) || rings[i].area2 == 0) {
            status = MASKD_ERR_RUNTIME;
            goto done;
        }
        if (rings[i].area2 > 0) outer_of[k] = (int32_t)i;
        else holes_of[k + 1]++;
        if (rings[i].n > max_points) max_points = rings[i].n;
    }
    for (int32_t k = 0; k < rl.count; k++) {
        if (outer_of[k] < 0) {
            status = MASKD_ERR_RUNTIME;
            goto done;
        }
    }
    sb.keep = malloc(max_points ? max_points : 1);
    sb.stack = malloc((2 * max_points + 2) * sizeof *sb.stack);
    sb.kept = malloc((max_points ? max_points : 1) * sizeof *sb.kept);
    sb.fits = malloc((max_points ? max_points : 1) * sizeof *sb.fits);
    simplified = malloc(2 * pts.n * sizeof *simplified);
    if (!sb.keep || !sb.stack || !sb.kept || !sb.fits || !simplified) goto done;
    size_t total_points = 0;
    for (size_t i = 0; i < n_rings; i++) {
        rings[i].n = simplify_ring(pts.xy + 2 * rings[i].first, rings[i].n, tol, &sb,
                                   simplified + 2 * rings[i].first);
        total_points += rings[i].n;
    }

    /* holes_of becomes each component's first slot: its outer ring, then its
     * holes in tracing order. */
    for (int32_t k = 0; k < rl.count; k++) holes_of[k + 1] += holes_of[k] + 1;
    slot_ring = malloc(n_rings * sizeof *slot_ring);
    next_hole = malloc((size_t)(rl.count > 0 ? rl.count : 1) * sizeof *next_hole);
    if (!slot_ring || !next_hole) goto done;
    for (int32_t k = 0; k < rl.count; k++) next_hole[k] = holes_of[k] + 1;
    for (size_t i = 0; i < n_rings; i++) {
        int32_t k = rings[i].component;
        int32_t slot = rings[i].area2 < 0 ? next_hole[k]++ : holes_of[k];
        slot_ring[slot] = (int32_t)i;
    }
    maskd_ring *res = malloc(n_rings * sizeof *res + 2 * total_points * sizeof(double));
    if (!res) goto done;
    double *store = (double *)(res + n_rings);
    size_t at = 0;
    for (size_t s = 0; s < n_rings; s++) {
        const traced_ring *r = &rings[slot_ring[s]];
        int32_t k = r->component;
        res[s] = (maskd_ring){.n_points = (int32_t)r->n, .xy = store + 2 * at,
                              .hole = r->area2 < 0, .outer = holes_of[k],
                              .component = k};
        memcpy(res[s].xy, simplified + 2 * r->first, r->n * 2 * sizeof(double));
        at += r->n;
    }
    out->rings = res;
    out->n_rings = (int32_t)n_rings;
    status = MASKD_OK;

done:
    free(visited);
    free(above);
    free(below);
    free(sb.keep);
    free(sb.stack);
    free(sb.kept);
    free(sb.fits);
    free(simplified);
    free(outer_of);
    free(holes_of);
    free(slot_ring);
    free(next_hole);
    free(rings);
    free(pts.xy);
    run_labels_free(&rl);
    if (status == MASKD_ERR_NOMEM)
        return mk_fail(err, status, "polygons: out of memory");
    if (status)
        return mk_fail(err, status, "polygons: internal error tracing a %dx%d mask",
                       (int)w, (int)h);
    return MASKD_OK;
}
