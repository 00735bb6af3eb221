/*
 * The NMS family behind one entry point (maskd/post.h documents each rule).
 *
 * Every method starts the same way: validate, drop boxes at or below the
 * score threshold, rank the rest by (score desc, index asc) and keep the
 * top k.  From then on a box is known by its rank r; the per-rank arrays of
 * the candidate set (normalized corners, areas, scores, labels) are laid out
 * contiguously so the pairwise loops stream through memory.
 *
 * IoU everywhere is torchvision's float expression
 *     inter / (area_i + area_j - inter)
 * evaluated in the same order, so `hard` reproduces torchvision's kept set
 * bit for bit (the threshold is compared in double, as torchvision compares
 * its float IoU with a double threshold).  A 0/0 (two zero-area boxes) is
 * NaN there and never exceeds a threshold; we report it as 0.
 */
#if defined(__GNUC__) && !defined(__clang__)
/* A fused multiply-add in the union term would round differently from
 * torchvision and flip borderline keep decisions under -march=native. */
#pragma GCC optimize("fp-contract=off")
#endif

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../mk.h"
#include "maskd/post.h"

/* ---- names ---------------------------------------------------------------- */

static const char *const method_names[] = {
    [MASKD_NMS_HARD] = "hard",
    [MASKD_NMS_SOFT_LINEAR] = "soft-linear",
    [MASKD_NMS_SOFT_GAUSSIAN] = "soft-gaussian",
    [MASKD_NMS_WEIGHTED] = "weighted",
    [MASKD_NMS_DIOU] = "diou",
    [MASKD_NMS_SOFTER] = "softer",
    [MASKD_NMS_ADAPTIVE] = "adaptive",
    [MASKD_NMS_MATRIX] = "matrix",
    [MASKD_NMS_CLUSTER] = "cluster",
};
_Static_assert(sizeof method_names / sizeof method_names[0] == MASKD_NMS_METHOD_COUNT,
               "every NMS method needs a name");

static const char *const kernel_names[] = {
    [MASKD_NMS_KERNEL_GAUSSIAN] = "gaussian",
    [MASKD_NMS_KERNEL_LINEAR] = "linear",
};

const char *maskd_nms_method_name(maskd_nms_method m)
{
    return (unsigned)m < MASKD_NMS_METHOD_COUNT ? method_names[m] : "unknown";
}

int maskd_nms_method_parse(const char *name, maskd_nms_method *out, maskd_error *err)
{
    for (int m = 0; m < MASKD_NMS_METHOD_COUNT; m++)
        if (name && !strcmp(name, method_names[m])) {
            *out = (maskd_nms_method)m;
            return MASKD_OK;
        }
    return mk_fail(err, MASKD_ERR_INVALID,
                   "unknown NMS method '%s' (expected one of hard, soft-linear, "
                   "soft-gaussian, weighted, diou, softer, adaptive, matrix, cluster)",
                   name ? name : "(null)");
}

const char *maskd_nms_kernel_name(maskd_nms_kernel k)
{
    return (unsigned)k <= MASKD_NMS_KERNEL_LINEAR ? kernel_names[k] : "unknown";
}

int maskd_nms_kernel_parse(const char *name, maskd_nms_kernel *out, maskd_error *err)
{
    for (int k = 0; k <= MASKD_NMS_KERNEL_LINEAR; k++)
        if (name && !strcmp(name, kernel_names[k])) {
            *out = (maskd_nms_kernel)k;
            return MASKD_OK;
        }
    return mk_fail(err, MASKD_ERR_INVALID,
                   "unknown Matrix-NMS kernel '%s' (expected gaussian or linear)",
                   name ? name : "(null)");
}

void maskd_nms_options_init(maskd_nms_options *o, maskd_nms_method method)
{
    *o = (maskd_nms_options){
        .method = method,
        .iou_threshold = 0.5,
        .sigma = 0.5,
        .score_threshold = -INFINITY,
        .pre_nms_top_k = 0,
        .max_detections = 0,
        .class_agnostic = 0,
        .diou_beta = 1.0,
        .matrix_kernel = MASKD_NMS_KERNEL_GAUSSIAN,
        .cluster_max_iter = 0,
        .softer_sigma_t = 0.025,
    };
    switch (method) {
    case MASKD_NMS_SOFT_LINEAR:
        o->iou_threshold = 0.3;
        o->score_threshold = 0.001;
        break;
    case MASKD_NMS_SOFT_GAUSSIAN:
    case MASKD_NMS_SOFTER:
        o->score_threshold = 0.001;
        break;
    case MASKD_NMS_MATRIX:
        o->sigma = 2.0;
        o->score_threshold = 0.05;
        break;
    default:
        break;
    }
}

void maskd_nms_result_free(maskd_nms_result *r)
{
    if (!r) return;
    free(r->indices);
    free(r->scores);
    free(r->boxes);
    *r = (maskd_nms_result){0};
}

/* ---- the candidate set ------------------------------------------------------ */

typedef struct cands {
    int64_t n;
    int64_t *index;               /* input index of rank r */
    float *x1, *y1, *x2, *y2, *area;
    float *score;
    int64_t *label;               /* NULL when class-agnostic */
    const float *variances;       /* input arrays, indexed by index[r] */
    const float *densities;
} cands;

static void cands_free(cands *c)
{
    free(c->index);
    free(c->x1);
    free(c->score);
    free(c->label);
}

typedef struct scored {
    float score;
    int64_t index;
} scored;

static int by_score_desc(const void *pa, const void *pb)
{
    const scored *a = pa, *b = pb;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    return (a->index > b->index) - (a->index < b->index);
}

/* The largest float f with f <= t, so that for any float x,
 * x > f  <=>  (double)x > t.  Lets the hot loops compare in float. */
static float float_below(double t)
{
    float f = (float)t;
    if ((double)f > t) f = nextafterf(f, -INFINITY);
    return f;
}

static bool finite4(const float *b)
{
    return isfinite(b[0]) && isfinite(b[1]) && isfinite(b[2]) && isfinite(b[3]);
}

static int check_inputs(const maskd_nms_input *in, const maskd_nms_options *o,
                        mk_error *err)
{
    const char *name = maskd_nms_method_name(o->method);
    if ((unsigned)o->method >= MASKD_NMS_METHOD_COUNT)
        return mk_fail(err, MASKD_ERR_INVALID, "NMS: unknown method %d", (int)o->method);
    if (in->n < 0) return mk_fail(err, MASKD_ERR_INVALID, "NMS: negative box count");
    if (in->n > 0 && (!in->boxes || !in->scores))
        return mk_fail(err, MASKD_ERR_INVALID, "NMS: boxes and scores are required");
    if (!(o->iou_threshold >= 0.0 && o->iou_threshold <= 1.0))
        return mk_fail(err, MASKD_ERR_INVALID,
                       "NMS: iou threshold %g is outside [0, 1]", o->iou_threshold);
    if (isnan(o->score_threshold))
        return mk_fail(err, MASKD_ERR_INVALID, "NMS: score threshold is NaN");
    if (o->pre_nms_top_k < 0 || o->max_detections < 0)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "NMS: pre-NMS top-k and max detections must be >= 0 (0 = no limit)");
    bool uses_sigma = o->method == MASKD_NMS_SOFT_GAUSSIAN || o->method == MASKD_NMS_SOFTER ||
                      (o->method == MASKD_NMS_MATRIX &&
                       o->matrix_kernel == MASKD_NMS_KERNEL_GAUSSIAN);
    if (uses_sigma && !(o->sigma > 0 && isfinite(o->sigma)))
        return mk_fail(err, MASKD_ERR_INVALID, "NMS %s: sigma must be > 0 (got %g)",
                       name, o->sigma);
    if (o->method == MASKD_NMS_DIOU && !(o->diou_beta > 0 && isfinite(o->diou_beta)))
        return mk_fail(err, MASKD_ERR_INVALID, "NMS diou: beta must be > 0 (got %g)",
                       o->diou_beta);
    if (o->method == MASKD_NMS_SOFTER &&
        !(o->softer_sigma_t > 0 && isfinite(o->softer_sigma_t)))
        return mk_fail(err, MASKD_ERR_INVALID, "NMS softer: sigma_t must be > 0 (got %g)",
                       o->softer_sigma_t);
    if (o->method == MASKD_NMS_MATRIX && (unsigned)o->matrix_kernel > MASKD_NMS_KERNEL_LINEAR)
        return mk_fail(err, MASKD_ERR_INVALID, "NMS matrix: unknown kernel %d",
                       (int)o->matrix_kernel);
    if (o->method == MASKD_NMS_CLUSTER && o->cluster_max_iter < 0)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "NMS cluster: iteration cap must be >= 0 (0 = until stable)");

    /* Missing per-box inputs are errors even for n = 0: a request that
     * cannot work should fail the same way whatever the image holds. */
    if (!o->class_agnostic && !in->labels)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "NMS %s: per-class NMS needs a label per box (or class_agnostic)",
                       name);
    if (o->method == MASKD_NMS_SOFTER && !in->variances)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "NMS softer: needs per-box coordinate variances, which this "
                       "model does not provide");
    if (o->method == MASKD_NMS_ADAPTIVE && !in->densities)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "NMS adaptive: needs a predicted density per box, which this "
                       "model does not provide");

    for (int64_t i = 0; i < in->n; i++) {
        if (!isfinite(in->scores[i]))
            return mk_fail(err, MASKD_ERR_INVALID, "NMS: score of box %lld is %s",
                           (long long)i, isnan(in->scores[i]) ? "NaN" : "infinite");
        if (!finite4(in->boxes + 4 * i))
            return mk_fail(err, MASKD_ERR_INVALID,
                           "NMS: box %lld has a non-finite coordinate", (long long)i);
    }
    if (o->method == MASKD_NMS_SOFTER)
        for (int64_t i = 0; i < in->n; i++) {
            const float *v = in->variances + 4 * i;
            for (int k = 0; k < 4; k++)
                if (!(v[k] > 0) || !isfinite(v[k]))
                    return mk_fail(err, MASKD_ERR_INVALID,
                                   "NMS softer: variance %d of box %lld is %g; "
                                   "variances must be finite and > 0",
                                   k, (long long)i, (double)v[k]);
        }
    if (o->method == MASKD_NMS_ADAPTIVE)
        for (int64_t i = 0; i < in->n; i++)
            if (!isfinite(in->densities[i]))
                return mk_fail(err, MASKD_ERR_INVALID,
                               "NMS adaptive: density of box %lld is not finite",
                               (long long)i);
    return MASKD_OK;
}

static int build_cands(const maskd_nms_input *in, const maskd_nms_options *o, cands *c,
                       mk_error *err)
{
    *c = (cands){0};
    scored *s = malloc(sizeof *s * (size_t)(in->n ? in->n : 1));
    if (!s) return mk_fail(err, MASKD_ERR_NOMEM, "NMS: out of memory");
    int64_t m = 0;
    for (int64_t i = 0; i < in->n; i++)
        if ((double)in->scores[i] > o->score_threshold)
            s[m++] = (scored){in->scores[i], i};
    qsort(s, (size_t)m, sizeof *s, by_score_desc);
    if (o->pre_nms_top_k > 0 && m > o->pre_nms_top_k) m = o->pre_nms_top_k;

    size_t cnt = (size_t)(m ? m : 1);
    c->n = m;
    c->index = malloc(sizeof *c->index * cnt);
    c->x1 = malloc(sizeof(float) * cnt * 5);
    c->score = malloc(sizeof(float) * cnt);
    if (!o->class_agnostic) c->label = malloc(sizeof *c->label * cnt);
    if (!c->index || !c->x1 || !c->score || (!o->class_agnostic && !c->label)) {
        free(s);
        cands_free(c);
        return mk_fail(err, MASKD_ERR_NOMEM, "NMS: out of memory");
    }
    c->y1 = c->x1 + cnt;
    c->x2 = c->y1 + cnt;
    c->y2 = c->x2 + cnt;
    c->area = c->y2 + cnt;
    for (int64_t r = 0; r < m; r++) {
        int64_t i = s[r].index;
        const float *b = in->boxes + 4 * i;
        c->index[r] = i;
        c->x1[r] = fminf(b[0], b[2]);
        c->y1[r] = fminf(b[1], b[3]);
        c->x2[r] = fmaxf(b[0], b[2]);
        c->y2[r] = fmaxf(b[1], b[3]);
        c->area[r] = (c->x2[r] - c->x1[r]) * (c->y2[r] - c->y1[r]);
        c->score[r] = s[r].score;
        if (c->label) c->label[r] = in->labels[i];
    }
    c->variances = in->variances;
    c->densities = in->densities;
    free(s);
    return MASKD_OK;
}

static inline float iou_raw(const cands *c, int64_t i, int64_t j)
{
    float xx1 = c->x1[i] > c->x1[j] ? c->x1[i] : c->x1[j];
    float yy1 = c->y1[i] > c->y1[j] ? c->y1[i] : c->y1[j];
    float xx2 = c->x2[i] < c->x2[j] ? c->x2[i] : c->x2[j];
    float yy2 = c->y2[i] < c->y2[j] ? c->y2[i] : c->y2[j];
    float w = xx2 - xx1 > 0 ? xx2 - xx1 : 0;
    float h = yy2 - yy1 > 0 ? yy2 - yy1 : 0;
    float inter = w * h;
    return inter / (c->area[i] + c->area[j] - inter);
}

/* IoU with a 0/0 reported as 0. */
static inline double iou_of(const cands *c, int64_t i, int64_t j)
{
    float v = iou_raw(c, i, j);
    return v == v ? (double)v : 0.0;
}

static inline bool same_class(const cands *c, int64_t i, int64_t j)
{
    return !c->label || c->label[i] == c->label[j];
}

/* ---- grouping by class ------------------------------------------------------ */

/* Ranks ordered by (label, rank): each class becomes one contiguous run, in
 * rank order inside.  Class-agnostic: the identity, one run. */
typedef struct groups {
    int64_t *rank;   /* [n] */
    int64_t *start;  /* [n_groups + 1] */
    int64_t n_groups;
} groups;

typedef struct labeled {
    int64_t label, rank;
} labeled;

static int by_label_rank(const void *pa, const void *pb)
{
    const labeled *a = pa, *b = pb;
    if (a->label != b->label) return a->label < b->label ? -1 : 1;
    return (a->rank > b->rank) - (a->rank < b->rank);
}

static int make_groups(const cands *c, groups *g, mk_error *err)
{
    size_t cnt = (size_t)(c->n ? c->n : 1);
    g->rank = malloc(sizeof *g->rank * cnt);
    g->start = malloc(sizeof *g->start * (cnt + 1));
    labeled *l = c->label ? malloc(sizeof *l * cnt) : NULL;
    if (!g->rank || !g->start || (c->label && !l)) {
        free(g->rank);
        free(g->start);
        free(l);
        return mk_fail(err, MASKD_ERR_NOMEM, "NMS: out of memory");
    }
    g->n_groups = 0;
    if (!c->label) {
        for (int64_t r = 0; r < c->n; r++) g->rank[r] = r;
        g->start[0] = 0;
        g->start[1] = c->n;
        g->n_groups = c->n ? 1 : 0;
        return MASKD_OK;
    }
    for (int64_t r = 0; r < c->n; r++) l[r] = (labeled){c->label[r], r};
    qsort(l, (size_t)c->n, sizeof *l, by_label_rank);
    for (int64_t k = 0; k < c->n; k++) {
        g->rank[k] = l[k].rank;
        if (k == 0 || l[k].label != l[k - 1].label) g->start[g->n_groups++] = k;
    }
    g->start[g->n_groups] = c->n;
    free(l);
    return MASKD_OK;
}

static void groups_free(groups *g)
{
    free(g->rank);
    free(g->start);
}

/* ---- greedy suppression (hard, adaptive): the hot path ------------------------ */

/*
 * Greedy NMS over one class: the run's boxes are copied in rank order into
 * contiguous arrays, and for each survivor M one branch-free pass marks every
 * later box whose IoU with M exceeds M's threshold.  The pass vectorizes;
 * when enough boxes are dead the arrays are compacted so later passes stream
 * only live boxes.  Marks kept[rank] = 1, at most `limit` (0 = no limit).
 */
typedef struct greedy_buf {
    float *x1, *y1, *x2, *y2, *area;
    int64_t *rank;
    unsigned char *dead;
} greedy_buf;

/* Marks the boxes in [from, to) whose IoU with M exceeds thr; returns how
 * many were newly marked. */
MK_TARGET_CLONES("avx2", "default")
static int64_t suppress_pass(const float *restrict x1, const float *restrict y1,
                             const float *restrict x2, const float *restrict y2,
                             const float *restrict area, unsigned char *restrict dead,
                             int64_t from, int64_t to, float mx1, float my1, float mx2,
                             float my2, float marea, float thr)
{
    int64_t newly = 0;
    for (int64_t j = from; j < to; j++) {
        float xx1 = mx1 > x1[j] ? mx1 : x1[j];
        float yy1 = my1 > y1[j] ? my1 : y1[j];
        float xx2 = mx2 < x2[j] ? mx2 : x2[j];
        float yy2 = my2 < y2[j] ? my2 : y2[j];
        float w = xx2 - xx1 > 0 ? xx2 - xx1 : 0;
        float h = yy2 - yy1 > 0 ? yy2 - yy1 : 0;
        float inter = w * h;
        float ovr = inter / (marea + area[j] - inter);
        unsigned char hit = ovr > thr;
        newly += hit & (dead[j] ^ 1);
        dead[j] |= hit;
    }
    return newly;
}

static int64_t greedy_run(const cands *c, const int64_t *ranks, int64_t m, double t,
                          const float *per_box_t /* by rank, or NULL */, int64_t limit,
                          greedy_buf *b, unsigned char *kept)
{
    for (int64_t k = 0; k < m; k++) {
        int64_t r = ranks[k];
        b->x1[k] = c->x1[r];
        b->y1[k] = c->y1[r];
        b->x2[k] = c->x2[r];
        b->y2[k] = c->y2[r];
        b->area[k] = c->area[r];
        b->rank[k] = r;
        b->dead[k] = 0;
    }
    float thr = float_below(t);
    int64_t n_live = m, n_kept = 0, dead_in_tail = 0;
    for (int64_t i = 0; i < n_live; i++) {
        if (b->dead[i]) {
            dead_in_tail--;
            continue;
        }
        kept[b->rank[i]] = 1;
        if (++n_kept == limit) break;
        float ti = per_box_t ? per_box_t[b->rank[i]] : thr;
        dead_in_tail += suppress_pass(b->x1, b->y1, b->x2, b->y2, b->area, b->dead, i + 1,
                                      n_live, b->x1[i], b->y1[i], b->x2[i], b->y2[i],
                                      b->area[i], ti);
        /* Compacting costs one pass over the tail; it pays when the dead
         * entries it drops are a good part of what later passes would read. */
        if (dead_in_tail * 4 > n_live - i) {
            int64_t w = i + 1;
            for (int64_t j = i + 1; j < n_live; j++) {
                unsigned char d = b->dead[j];
                b->x1[w] = b->x1[j];
                b->y1[w] = b->y1[j];
                b->x2[w] = b->x2[j];
                b->y2[w] = b->y2[j];
                b->area[w] = b->area[j];
                b->rank[w] = b->rank[j];
                b->dead[w] = 0;
                w += !d;
            }
            n_live = w;
            dead_in_tail = 0;
        }
    }
    return n_kept;
}

static int greedy_all(const cands *c, const groups *g, double t, const float *per_box_t,
                      int64_t limit, unsigned char *kept, mk_error *err)
{
    size_t cnt = (size_t)(c->n ? c->n : 1);
    greedy_buf b;
    b.x1 = malloc(sizeof(float) * cnt * 5);
    b.rank = malloc(sizeof *b.rank * cnt);
    b.dead = malloc(cnt);
    if (!b.x1 || !b.rank || !b.dead) {
        free(b.x1);
        free(b.rank);
        free(b.dead);
        return mk_fail(err, MASKD_ERR_NOMEM, "NMS: out of memory");
    }
    b.y1 = b.x1 + cnt;
    b.x2 = b.y1 + cnt;
    b.y2 = b.x2 + cnt;
    b.area = b.y2 + cnt;
    for (int64_t k = 0; k < g->n_groups; k++)
        greedy_run(c, g->rank + g->start[k], g->start[k + 1] - g->start[k], t, per_box_t,
                   limit, &b, kept);
    free(b.x1);
    free(b.rank);
    free(b.dead);
    return MASKD_OK;
}

/* ---- DIoU --------------------------------------------------------------------- */

static double diou_penalty(const cands *c, int64_t i, int64_t j, double beta)
{
    double dx = 0.5 * ((double)c->x1[i] + c->x2[i]) - 0.5 * ((double)c->x1[j] + c->x2[j]);
    double dy = 0.5 * ((double)c->y1[i] + c->y2[i]) - 0.5 * ((double)c->y1[j] + c->y2[j]);
    double cw = (double)fmaxf(c->x2[i], c->x2[j]) - fminf(c->x1[i], c->x1[j]);
    double ch = (double)fmaxf(c->y2[i], c->y2[j]) - fminf(c->y1[i], c->y1[j]);
    double c2 = cw * cw + ch * ch;
    if (c2 <= 0) return 0;
    return pow((dx * dx + dy * dy) / c2, beta);
}

static void diou_run(const cands *c, const int64_t *ranks, int64_t m, const maskd_nms_options *o,
                     unsigned char *dead, unsigned char *kept)
{
    int64_t n_kept = 0;
    for (int64_t a = 0; a < m; a++) dead[a] = 0;
    for (int64_t a = 0; a < m; a++) {
        if (dead[a]) continue;
        int64_t i = ranks[a];
        kept[i] = 1;
        if (++n_kept == o->max_detections) return;
        for (int64_t b = a + 1; b < m; b++) {
            if (dead[b]) continue;
            int64_t j = ranks[b];
            if (iou_of(c, i, j) - diou_penalty(c, i, j, o->diou_beta) > o->iou_threshold)
                dead[b] = 1;
        }
    }
}

/* ---- Cluster-NMS ---------------------------------------------------------------- */

/*
 * With X the strict upper triangle of the IoU matrix (in rank order) and
 * B = X with the rows of non-kept boxes zeroed, each iteration keeps the boxes
 * whose column maximum of B is <= t.  Only whether some kept row overlaps a
 * column by more than t matters, so we iterate on the kept set itself and
 * recompute IoUs instead of holding an n x n matrix.
 */
static void cluster_run(const cands *c, const int64_t *ranks, int64_t m, const maskd_nms_options *o,
                        unsigned char *active, unsigned char *next, int64_t *live,
                        unsigned char *kept)
{
    if (m <= 0) return;
    float thr = float_below(o->iou_threshold);
    for (int64_t a = 0; a < m; a++) active[a] = 1;
    int64_t cap = o->cluster_max_iter > 0 ? o->cluster_max_iter : m + 1;
    for (int64_t it = 0; it < cap; it++) {
        int64_t n_live = 0;
        bool changed = false;
        for (int64_t b = 0; b < m; b++) {
            int64_t j = ranks[b];
            bool hit = false;
            for (int64_t k = 0; k < n_live && !hit; k++)
                hit = iou_raw(c, ranks[live[k]], j) > thr;
            next[b] = !hit;
            /* Rows of boxes active in this iteration's B: those before b. */
            if (active[b]) live[n_live++] = b;
            changed |= next[b] != active[b];
        }
        memcpy(active, next, (size_t)m);
        if (!changed) break;
    }
    int64_t n_kept = 0;
    for (int64_t b = 0; b < m; b++)
        if (active[b]) {
            if (o->max_detections && n_kept == o->max_detections) break;
            kept[ranks[b]] = 1;
            n_kept++;
        }
}

/* ---- soft family (soft-linear, soft-gaussian, softer) ------------------------------ */

typedef struct soft_out {
    int64_t count;
    int64_t *rank;  /* selection order */
    double *score;  /* score at selection */
    double *box;    /* [count, 4] voted boxes (softer) */
} soft_out;

static void softer_vote(const cands *c, int64_t i, const maskd_nms_options *o, double *box)
{
    double num[4] = {0, 0, 0, 0}, den[4] = {0, 0, 0, 0};
    for (int64_t j = 0; j < c->n; j++) {
        if (!same_class(c, i, j)) continue;
        double p;
        if (j == i) {
            p = 1.0;
        } else {
            double ov = iou_of(c, i, j);
            if (!(ov > o->iou_threshold)) continue;
            p = exp(-(1.0 - ov) * (1.0 - ov) / o->softer_sigma_t);
        }
        const float *var = c->variances + 4 * c->index[j];
        const float coord[4] = {c->x1[j], c->y1[j], c->x2[j], c->y2[j]};
        for (int k = 0; k < 4; k++) {
            num[k] += p * coord[k] / var[k];
            den[k] += p / var[k];
        }
    }
    for (int k = 0; k < 4; k++) box[k] = num[k] / den[k];
}

static void soft_run(const cands *c, const maskd_nms_options *o, double *s,
                     int64_t *remaining, soft_out *out)
{
    int64_t n_rem = c->n;
    for (int64_t r = 0; r < c->n; r++) {
        remaining[r] = r;
        s[r] = c->score[r];
    }
    out->count = 0;
    while (n_rem > 0) {
        if (o->max_detections && out->count == o->max_detections) break;
        /* remaining stays in rank order, so the first maximum found is the
         * lowest-ranked among equals. */
        int64_t best = 0;
        for (int64_t k = 1; k < n_rem; k++)
            if (s[remaining[k]] > s[remaining[best]]) best = k;
        int64_t i = remaining[best];
        out->rank[out->count] = i;
        out->score[out->count] = s[i];
        if (o->method == MASKD_NMS_SOFTER)
            softer_vote(c, i, o, out->box + 4 * out->count);
        out->count++;

        int64_t w = 0;
        for (int64_t k = 0; k < n_rem; k++) {
            int64_t j = remaining[k];
            if (j == i) continue;
            if (same_class(c, i, j)) {
                double ov = iou_of(c, i, j);
                if (o->method == MASKD_NMS_SOFT_LINEAR) {
                    if (ov > o->iou_threshold) s[j] *= 1.0 - ov;
                } else {
                    s[j] *= exp(-ov * ov / o->sigma);
                }
                if (!(s[j] > o->score_threshold)) continue;
            }
            remaining[w++] = j;
        }
        n_rem = w;
    }
}

/* ---- Matrix NMS ----------------------------------------------------------------- */

static double kernel_f(const maskd_nms_options *o, double x)
{
    return o->matrix_kernel == MASKD_NMS_KERNEL_LINEAR ? 1.0 - x : exp(-o->sigma * x * x);
}

/* decay[r] for every rank r of one class run. */
static void matrix_run(const cands *c, const int64_t *ranks, int64_t m, const maskd_nms_options *o,
                       double *comp, double *decay)
{
    for (int64_t b = 0; b < m; b++) {
        double mx = 0;
        for (int64_t a = 0; a < b; a++) {
            double v = iou_of(c, ranks[a], ranks[b]);
            if (v > mx) mx = v;
        }
        comp[b] = mx;
    }
    for (int64_t b = 0; b < m; b++) {
        double d = 1.0;
        for (int64_t a = 0; a < b; a++) {
            double fc = kernel_f(o, comp[a]);
            /* A box its own compensation wipes out (a duplicate under the
             * linear kernel) imposes no decay of its own. */
            if (!(fc > 0)) continue;
            double v = kernel_f(o, iou_of(c, ranks[a], ranks[b])) / fc;
            if (v < d) d = v;
        }
        decay[ranks[b]] = d;
    }
}

typedef struct ranked_score {
    double score;
    int64_t rank;
} ranked_score;

static int by_new_score(const void *pa, const void *pb)
{
    const ranked_score *a = pa, *b = pb;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    return (a->rank > b->rank) - (a->rank < b->rank);
}

/* ---- result assembly ----------------------------------------------------------- */

static int alloc_result(maskd_nms_result *out, int64_t count, mk_error *err)
{
    size_t cnt = (size_t)(count ? count : 1);
    out->indices = malloc(sizeof *out->indices * cnt);
    out->scores = malloc(sizeof *out->scores * cnt);
    out->boxes = malloc(sizeof *out->boxes * cnt * 4);
    if (!out->indices || !out->scores || !out->boxes) {
        maskd_nms_result_free(out);
        return mk_fail(err, MASKD_ERR_NOMEM, "NMS: out of memory");
    }
    out->count = count;
    return MASKD_OK;
}

static void put(maskd_nms_result *out, int64_t k, const cands *c, int64_t r, double score)
{
    out->indices[k] = c->index[r];
    out->scores[k] = (float)score;
    out->boxes[4 * k + 0] = c->x1[r];
    out->boxes[4 * k + 1] = c->y1[r];
    out->boxes[4 * k + 2] = c->x2[r];
    out->boxes[4 * k + 3] = c->y2[r];
}

/* Weighted NMS: each kept box becomes the score-weighted mean of every
 * candidate of its class that overlaps it by more than t (itself included). */
static void weighted_merge(const cands *c, int64_t i, double t, float *box)
{
    double num[4] = {0, 0, 0, 0}, den = 0;
    for (int64_t j = 0; j < c->n; j++) {
        if (j != i && (!same_class(c, i, j) || !(iou_of(c, i, j) > t))) continue;
        double w = c->score[j];
        num[0] += w * c->x1[j];
        num[1] += w * c->y1[j];
        num[2] += w * c->x2[j];
        num[3] += w * c->y2[j];
        den += w;
    }
    for (int k = 0; k < 4; k++) box[k] = (float)(num[k] / den);
}

/* Methods that keep a subset in rank order with the input scores. */
static int emit_kept(const cands *c, const unsigned char *kept, const maskd_nms_options *o,
                     maskd_nms_result *out, mk_error *err)
{
    int64_t count = 0;
    for (int64_t r = 0; r < c->n; r++) count += kept[r];
    if (o->max_detections && count > o->max_detections) count = o->max_detections;
    int rc = alloc_result(out, count, err);
    if (rc) return rc;
    int64_t k = 0;
    for (int64_t r = 0; r < c->n && k < count; r++) {
        if (!kept[r]) continue;
        put(out, k, c, r, c->score[r]);
        if (o->method == MASKD_NMS_WEIGHTED)
            weighted_merge(c, r, o->iou_threshold, out->boxes + 4 * k);
        k++;
    }
    return MASKD_OK;
}

/* ---- entry point --------------------------------------------------------------- */

static int run_subset_method(const cands *c, const maskd_nms_options *o,
                             maskd_nms_result *out, mk_error *err)
{
    size_t cnt = (size_t)(c->n ? c->n : 1);
    groups g = {0};
    int rc = make_groups(c, &g, err);
    if (rc) return rc;
    unsigned char *kept = calloc(cnt, 1);
    unsigned char *tmp1 = malloc(cnt), *tmp2 = malloc(cnt);
    int64_t *live = malloc(sizeof *live * cnt);
    float *per_box_t = o->method == MASKD_NMS_ADAPTIVE ? malloc(sizeof(float) * cnt) : NULL;
    if (!kept || !tmp1 || !tmp2 || !live || (o->method == MASKD_NMS_ADAPTIVE && !per_box_t)) {
        rc = mk_fail(err, MASKD_ERR_NOMEM, "NMS: out of memory");
        goto done;
    }
    switch (o->method) {
    case MASKD_NMS_HARD:
    case MASKD_NMS_WEIGHTED:
        rc = greedy_all(c, &g, o->iou_threshold, NULL, o->max_detections, kept, err);
        break;
    case MASKD_NMS_ADAPTIVE:
        for (int64_t r = 0; r < c->n; r++) {
            double d = c->densities[c->index[r]];
            per_box_t[r] = float_below(d > o->iou_threshold ? d : o->iou_threshold);
        }
        rc = greedy_all(c, &g, o->iou_threshold, per_box_t, o->max_detections, kept, err);
        break;
    case MASKD_NMS_DIOU:
        for (int64_t k = 0; k < g.n_groups; k++)
            diou_run(c, g.rank + g.start[k], g.start[k + 1] - g.start[k], o, tmp1, kept);
        break;
    case MASKD_NMS_CLUSTER:
        for (int64_t k = 0; k < g.n_groups; k++)
            cluster_run(c, g.rank + g.start[k], g.start[k + 1] - g.start[k], o, tmp1, tmp2,
                        live, kept);
        break;
    default:
        break;
    }
    if (!rc) rc = emit_kept(c, kept, o, out, err);
done:
    groups_free(&g);
    free(kept);
    free(tmp1);
    free(tmp2);
    free(live);
    free(per_box_t);
    return rc;
}

static int run_soft_method(const cands *c, const maskd_nms_options *o, maskd_nms_result *out,
                           mk_error *err)
{
    size_t cnt = (size_t)(c->n ? c->n : 1);
    double *s = malloc(sizeof *s * cnt);
    int64_t *remaining = malloc(sizeof *remaining * cnt);
    soft_out so = {0};
    so.rank = malloc(sizeof *so.rank * cnt);
    so.score = malloc(sizeof *so.score * cnt);
    so.box = o->method == MASKD_NMS_SOFTER ? malloc(sizeof *so.box * cnt * 4) : NULL;
    int rc = MASKD_OK;
    if (!s || !remaining || !so.rank || !so.score || (o->method == MASKD_NMS_SOFTER && !so.box)) {
        rc = mk_fail(err, MASKD_ERR_NOMEM, "NMS: out of memory");
        goto done;
    }
    soft_run(c, o, s, remaining, &so);
    rc = alloc_result(out, so.count, err);
    if (rc) goto done;
    for (int64_t k = 0; k < so.count; k++) {
        put(out, k, c, so.rank[k], so.score[k]);
        if (so.box)
            for (int q = 0; q < 4; q++) out->boxes[4 * k + q] = (float)so.box[4 * k + q];
    }
done:
    free(s);
    free(remaining);
    free(so.rank);
    free(so.score);
    free(so.box);
    return rc;
}

static int run_matrix(const cands *c, const maskd_nms_options *o, maskd_nms_result *out,
                      mk_error *err)
{
    size_t cnt = (size_t)(c->n ? c->n : 1);
    groups g = {0};
    int rc = make_groups(c, &g, err);
    if (rc) return rc;
    double *comp = malloc(sizeof *comp * cnt), *decay = malloc(sizeof *decay * cnt);
    ranked_score *rs = malloc(sizeof *rs * cnt);
    if (!comp || !decay || !rs) {
        rc = mk_fail(err, MASKD_ERR_NOMEM, "NMS: out of memory");
        goto done;
    }
    for (int64_t k = 0; k < g.n_groups; k++)
        matrix_run(c, g.rank + g.start[k], g.start[k + 1] - g.start[k], o, comp, decay);
    int64_t m = 0;
    for (int64_t r = 0; r < c->n; r++) {
        double s = c->score[r] * decay[r];
        if (s > o->score_threshold) rs[m++] = (ranked_score){s, r};
    }
    qsort(rs, (size_t)m, sizeof *rs, by_new_score);
    if (o->max_detections && m > o->max_detections) m = o->max_detections;
    rc = alloc_result(out, m, err);
    if (rc) goto done;
    for (int64_t k = 0; k < m; k++) put(out, k, c, rs[k].rank, rs[k].score);
done:
    groups_free(&g);
    free(comp);
    free(decay);
    free(rs);
    return rc;
}

int maskd_nms(const maskd_nms_input *in, const maskd_nms_options *o, maskd_nms_result *out,
              maskd_error *err)
{
    if (out) *out = (maskd_nms_result){0};
    if (!in || !o || !out)
        return mk_fail(err, MASKD_ERR_INVALID, "NMS: input, options and result are required");
    int rc = check_inputs(in, o, err);
    if (rc) return rc;
    cands c;
    rc = build_cands(in, o, &c, err);
    if (rc) return rc;
    if (o->method == MASKD_NMS_WEIGHTED)
        for (int64_t r = 0; r < c.n; r++)
            if (!(c.score[r] > 0)) {
                mk_fail(err, MASKD_ERR_INVALID,
                        "NMS weighted: scores are the merge weights and must be > 0 "
                        "(box %lld has %g; raise score_threshold to 0)",
                        (long long)c.index[r], (double)c.score[r]);
                cands_free(&c);
                return MASKD_ERR_INVALID;
            }
    switch (o->method) {
    case MASKD_NMS_SOFT_LINEAR:
    case MASKD_NMS_SOFT_GAUSSIAN:
    case MASKD_NMS_SOFTER:
        rc = run_soft_method(&c, o, out, err);
        break;
    case MASKD_NMS_MATRIX:
        rc = run_matrix(&c, o, out, err);
        break;
    default:
        rc = run_subset_method(&c, o, out, err);
        break;
    }
    cands_free(&c);
    return rc;
}
