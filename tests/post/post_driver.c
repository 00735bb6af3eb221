/*
 * engine/post on the command line, for test_post.py and bench/post: each
 * command reads .npy inputs from a directory, calls the library once (or
 * times it), and writes .npy outputs next to them.
 *
 *   post_driver COMMAND DIR [key=value ...]
 *
 * nms          boxes.npy scores.npy [labels.npy variances.npy densities.npy]
 *              -> keep.npy (int64) out_scores.npy out_boxes.npy
 *              method= iou= sigma= score= topk= maxdet= agnostic= beta=
 *              kernel= iters= sigma_t=   (unset keys keep the method's defaults)
 * roi_align    features.npy rois.npy [batch.npy] -> out.npy
 *              ph= pw= scale= ratio= aligned= mode=avg|max|max_onnx threads=
 * roi_fpn      feat0.npy .. featK-1.npy rois.npy [batch.npy] -> out.npy levels.npy
 *              levels=K scales=a,b,.. ph= pw= ratio= aligned= threads=
 * roi_pool     features.npy rois.npy [batch.npy] -> out.npy   ph= pw= scale= threads=
 * anchors      -> anchors.npy   level=SIZES/RATIOS/GHxGW/SHxSW (repeatable;
 *              SIZES and RATIOS comma-separated)
 * encode       boxes.npy refs.npy -> deltas.npy        w=wx,wy,ww,wh
 * decode       deltas.npy ([n, 4k]) refs.npy -> out.npy w=wx,wy,ww,wh
 * clip         boxes.npy -> out.npy                     width= height=
 * overlap      a.npy b.npy -> iou.npy giou.npy diou.npy (row by row)
 * bench_nms, bench_roi_align: as nms / roi_align, plus reps=; print the
 *              median wall time in ms as "median_ms X".
 *
 * A library error prints "error CODE: MESSAGE" and exits with 3.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "maskd/post.h"
#include "npy.h"

enum { MAX_ARGS = 64, MAX_OWNED = 256 };

/* Everything a command allocates is released in one place at exit, so the
 * early error returns do not leak under the sanitizers. */
static void *owned[MAX_OWNED];
static int n_owned;
static maskd_pool *the_pool;

static void *own(void *p)
{
    if (n_owned < MAX_OWNED) owned[n_owned++] = p;
    return p;
}

static void release_all(void)
{
    for (int i = 0; i < n_owned; i++) free(owned[i]);
    n_owned = 0;
    maskd_pool_free(the_pool);
    the_pool = NULL;
}

typedef struct args {
    const char *dir;
    int n;
    const char *key[MAX_ARGS];
    const char *val[MAX_ARGS];
} args;

static const char *arg(const args *a, const char *key)
{
    const char *found = NULL;
    for (int i = 0; i < a->n; i++)
        if (!strcmp(a->key[i], key)) found = a->val[i];
    return found;
}

static double arg_f(const args *a, const char *key, double dflt)
{
    const char *v = arg(a, key);
    if (!v) return dflt;
    if (!strcmp(v, "-inf")) return -INFINITY;
    return strtod(v, NULL);
}

static long long arg_i(const args *a, const char *key, long long dflt)
{
    const char *v = arg(a, key);
    return v ? strtoll(v, NULL, 10) : dflt;
}

static char *path_in(const args *a, const char *name)
{
    static char buf[4][4096];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", a->dir, name);
    return buf[k];
}

static int lib_error(const maskd_error *err)
{
    printf("error %d: %s\n", err->code, err->message);
    return 3;
}

static int io_error(const maskd_error *err)
{
    fprintf(stderr, "post_driver: %s\n", err->message);
    return 2;
}

/* Reads DIR/name; optional files that do not exist give *t with data NULL. */
static int load(const args *a, const char *name, maskd_dtype want, int optional,
                maskd_tensor *t)
{
    char *p = path_in(a, name);
    memset(t, 0, sizeof *t);
    FILE *f = fopen(p, "rb");
    if (!f) {
        if (optional) return 0;
        fprintf(stderr, "post_driver: missing %s\n", p);
        return 2;
    }
    fclose(f);
    maskd_error err = {0};
    if (maskd_npy_read(p, t, &err)) return io_error(&err);
    own(t->data);
    if (t->dtype != want) {
        fprintf(stderr, "post_driver: %s has dtype %s, want %s\n", p,
                maskd_dtype_name(t->dtype), maskd_dtype_name(want));
        return 2;
    }
    return 0;
}

static int save(const args *a, const char *name, maskd_dtype dtype, int ndim,
                const int64_t *dims, void *data)
{
    maskd_tensor t = {.dtype = dtype, .ndim = ndim, .data = data};
    for (int i = 0; i < ndim; i++) t.dims[i] = dims[i];
    maskd_error err = {0};
    if (maskd_npy_write(path_in(a, name), &t, &err)) return io_error(&err);
    return 0;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *pa, const void *pb)
{
    double a = *(const double *)pa, b = *(const double *)pb;
    return (a > b) - (a < b);
}

static void print_median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    printf("median_ms %.4f\n", n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]));
}

static maskd_pool *make_pool(const args *a)
{
    int threads = (int)arg_i(a, "threads", 1);
    maskd_pool *pool = NULL;
    maskd_error err = {0};
    if (threads > 1 && maskd_pool_create(threads, &pool, &err)) {
        fprintf(stderr, "post_driver: %s\n", err.message);
        exit(2);
    }
    the_pool = pool;
    return pool;
}

/* ---- nms ---------------------------------------------------------------------- */

static int nms_options(const args *a, maskd_nms_options *o)
{
    maskd_error err = {0};
    maskd_nms_method m = MASKD_NMS_HARD;
    if (arg(a, "method") && maskd_nms_method_parse(arg(a, "method"), &m, &err))
        return lib_error(&err);
    maskd_nms_options_init(o, m);
    o->iou_threshold = arg_f(a, "iou", o->iou_threshold);
    o->sigma = arg_f(a, "sigma", o->sigma);
    o->score_threshold = arg_f(a, "score", o->score_threshold);
    o->pre_nms_top_k = arg_i(a, "topk", o->pre_nms_top_k);
    o->max_detections = arg_i(a, "maxdet", o->max_detections);
    o->class_agnostic = (int)arg_i(a, "agnostic", o->class_agnostic);
    o->diou_beta = arg_f(a, "beta", o->diou_beta);
    o->cluster_max_iter = arg_i(a, "iters", o->cluster_max_iter);
    o->softer_sigma_t = arg_f(a, "sigma_t", o->softer_sigma_t);
    if (arg(a, "kernel") && maskd_nms_kernel_parse(arg(a, "kernel"), &o->matrix_kernel, &err))
        return lib_error(&err);
    return 0;
}

static int cmd_nms(const args *a, int bench)
{
    maskd_tensor boxes, scores, labels, vars, dens;
    int rc;
    if ((rc = load(a, "boxes.npy", MASKD_FLOAT, 0, &boxes)) ||
        (rc = load(a, "scores.npy", MASKD_FLOAT, 0, &scores)) ||
        (rc = load(a, "labels.npy", MASKD_INT64, 1, &labels)) ||
        (rc = load(a, "variances.npy", MASKD_FLOAT, 1, &vars)) ||
        (rc = load(a, "densities.npy", MASKD_FLOAT, 1, &dens)))
        return rc;
    maskd_nms_options o;
    if ((rc = nms_options(a, &o))) return rc;
    maskd_nms_input in = {.n = scores.dims[0], .boxes = boxes.data, .scores = scores.data,
                          .labels = labels.data, .variances = vars.data,
                          .densities = dens.data};
    maskd_nms_result res;
    maskd_error err = {0};
    if (bench) {
        int reps = (int)arg_i(a, "reps", 20);
        double *t = own(calloc((size_t)reps, sizeof *t));
        for (int r = 0; r < reps; r++) {
            double t0 = now_ms();
            if (maskd_nms(&in, &o, &res, &err)) return lib_error(&err);
            t[r] = now_ms() - t0;
            if (r == 0) printf("kept %lld\n", (long long)res.count);
            maskd_nms_result_free(&res);
        }
        print_median(t, reps);
    } else {
        if (maskd_nms(&in, &o, &res, &err)) return lib_error(&err);
        own(res.indices);
        own(res.scores);
        own(res.boxes);
        int64_t d1[1] = {res.count}, d2[2] = {res.count, 4};
        if ((rc = save(a, "keep.npy", MASKD_INT64, 1, d1, res.indices)) ||
            (rc = save(a, "out_scores.npy", MASKD_FLOAT, 1, d1, res.scores)) ||
            (rc = save(a, "out_boxes.npy", MASKD_FLOAT, 2, d2, res.boxes)))
            return rc;
    }
    return 0;
}

/* ---- ROI ops -------------------------------------------------------------------- */

static maskd_roi_align_options align_options(const args *a)
{
    maskd_roi_align_options o = {
        .pooled_h = arg_i(a, "ph", 7),
        .pooled_w = arg_i(a, "pw", 7),
        .spatial_scale = (float)arg_f(a, "scale", 1.0),
        .sampling_ratio = arg_i(a, "ratio", 0),
        .aligned = (int)arg_i(a, "aligned", 0),
        .mode = MASKD_ROI_AVG,
    };
    const char *m = arg(a, "mode");
    if (m && !strcmp(m, "max")) o.mode = MASKD_ROI_MAX;
    if (m && !strcmp(m, "max_onnx")) o.mode = MASKD_ROI_MAX_ONNX;
    return o;
}

static int cmd_roi(const args *a, const char *what)
{
    int bench = !strcmp(what, "bench_roi_align");
    maskd_tensor x, rois, batch;
    int rc;
    if ((rc = load(a, "features.npy", MASKD_FLOAT, 0, &x)) ||
        (rc = load(a, "rois.npy", MASKD_FLOAT, 0, &rois)) ||
        (rc = load(a, "batch.npy", MASKD_INT64, 1, &batch)))
        return rc;
    maskd_roi_align_options o = align_options(a);
    int64_t n = rois.dims[0];
    int64_t dims[4] = {n, x.dims[1], o.pooled_h, o.pooled_w};
    float *out = own(malloc(sizeof(float) * (size_t)(n * x.dims[1] * o.pooled_h * o.pooled_w + 1)));
    maskd_pool *pool = make_pool(a);
    maskd_error err = {0};
    if (bench) {
        int reps = (int)arg_i(a, "reps", 10);
        double *t = own(calloc((size_t)reps, sizeof *t));
        for (int r = 0; r < reps; r++) {
            double t0 = now_ms();
            if (maskd_roi_align(&x, rois.data, batch.data, n, &o, out, pool, &err))
                return lib_error(&err);
            t[r] = now_ms() - t0;
        }
        print_median(t, reps);
    } else {
        if (!strcmp(what, "roi_pool"))
            rc = maskd_roi_pool(&x, rois.data, batch.data, n, o.pooled_h, o.pooled_w,
                                o.spatial_scale, out, pool, &err);
        else
            rc = maskd_roi_align(&x, rois.data, batch.data, n, &o, out, pool, &err);
        if (rc) return lib_error(&err);
        if ((rc = save(a, "out.npy", MASKD_FLOAT, 4, dims, out))) return rc;
    }
    return 0;
}

static int cmd_roi_fpn(const args *a)
{
    int k = (int)arg_i(a, "levels", 1);
    if (k < 1 || k > 16) return 2;
    maskd_tensor feats[16], rois, batch;
    float scales[16];
    int rc;
    const char *s = arg(a, "scales");
    for (int i = 0; i < k; i++) {
        char name[32];
        snprintf(name, sizeof name, "feat%d.npy", i);
        if ((rc = load(a, name, MASKD_FLOAT, 0, &feats[i]))) return rc;
        scales[i] = s ? strtof(s, (char **)&s) : 1.0f;
        if (s && *s == ',') s++;
    }
    if ((rc = load(a, "rois.npy", MASKD_FLOAT, 0, &rois)) ||
        (rc = load(a, "batch.npy", MASKD_INT64, 1, &batch)))
        return rc;
    maskd_roi_align_options o = align_options(a);
    int64_t n = rois.dims[0], C = feats[0].dims[1];
    float *out = own(malloc(sizeof(float) * (size_t)(n * C * o.pooled_h * o.pooled_w + 1)));
    int64_t *levels = own(malloc(sizeof(int64_t) * (size_t)(n + 1)));
    maskd_pool *pool = make_pool(a);
    maskd_error err = {0};
    if (maskd_roi_align_fpn(feats, scales, k, rois.data, batch.data, n, &o, NULL, out, levels,
                            pool, &err))
        return lib_error(&err);
    int64_t dims[4] = {n, C, o.pooled_h, o.pooled_w};
    if ((rc = save(a, "out.npy", MASKD_FLOAT, 4, dims, out)) ||
        (rc = save(a, "levels.npy", MASKD_INT64, 1, dims, levels)))
        return rc;
    return 0;
}

/* ---- boxes ------------------------------------------------------------------------ */

static int parse_floats(const char *s, float *out, int cap)
{
    int n = 0;
    while (s && *s && n < cap) {
        char *end;
        out[n++] = strtof(s, &end);
        s = *end == ',' ? end + 1 : NULL;
    }
    return n;
}

static int cmd_anchors(const args *a)
{
    maskd_anchor_level lv[16];
    float sizes[16][32], ratios[16][32];
    int k = 0;
    for (int i = 0; i < a->n && k < 16; i++) {
        if (strcmp(a->key[i], "level")) continue;
        char buf[512];
        snprintf(buf, sizeof buf, "%s", a->val[i]);
        char *part[4];
        char *save_ptr = NULL;
        int np = 0;
        for (char *p = strtok_r(buf, "/", &save_ptr); p && np < 4;
             p = strtok_r(NULL, "/", &save_ptr))
            part[np++] = p;
        if (np != 4) return 2;
        lv[k].sizes = sizes[k];
        lv[k].n_sizes = parse_floats(part[0], sizes[k], 32);
        lv[k].aspect_ratios = ratios[k];
        lv[k].n_aspect_ratios = parse_floats(part[1], ratios[k], 32);
        long long gh, gw;
        float sh, sw;
        if (sscanf(part[2], "%lldx%lld", &gh, &gw) != 2 || sscanf(part[3], "%fx%f", &sh, &sw) != 2)
            return 2;
        lv[k].grid_h = gh;
        lv[k].grid_w = gw;
        lv[k].stride_h = sh;
        lv[k].stride_w = sw;
        k++;
    }
    int64_t n = maskd_anchor_count(lv, k);
    if (n < 0) return 2;
    float *out = own(malloc(sizeof(float) * 4 * (size_t)(n + 1)));
    maskd_error err = {0};
    if (maskd_anchors(lv, k, out, &err)) return lib_error(&err);
    int64_t dims[2] = {n, 4};
    return save(a, "anchors.npy", MASKD_FLOAT, 2, dims, out);
}

static maskd_box_coder coder(const args *a)
{
    float w[4] = {1, 1, 1, 1};
    parse_floats(arg(a, "w"), w, 4);
    return (maskd_box_coder){w[0], w[1], w[2], w[3], (float)MASKD_BOX_CODER_CLIP};
}

static int cmd_code(const args *a, int decode)
{
    maskd_tensor x, refs;
    int rc;
    if ((rc = load(a, decode ? "deltas.npy" : "boxes.npy", MASKD_FLOAT, 0, &x)) ||
        (rc = load(a, "refs.npy", MASKD_FLOAT, 0, &refs)))
        return rc;
    maskd_box_coder k = coder(a);
    int64_t n = refs.dims[0], per = x.dims[1] / 4;
    float *out = own(malloc(sizeof(float) * (size_t)(x.dims[0] * x.dims[1] + 1)));
    if (decode)
        maskd_box_decode(&k, x.data, refs.data, n, per, out);
    else
        maskd_box_encode(&k, x.data, refs.data, n, out);
    rc = save(a, decode ? "out.npy" : "deltas.npy", MASKD_FLOAT, 2, x.dims, out);
    return rc;
}

static int cmd_clip(const args *a)
{
    maskd_tensor b;
    int rc = load(a, "boxes.npy", MASKD_FLOAT, 0, &b);
    if (rc) return rc;
    maskd_box_clip(b.data, b.dims[0], (float)arg_f(a, "width", 1), (float)arg_f(a, "height", 1));
    rc = save(a, "out.npy", MASKD_FLOAT, 2, b.dims, b.data);
    return rc;
}

static int cmd_overlap(const args *a)
{
    maskd_tensor x, y;
    int rc;
    if ((rc = load(a, "a.npy", MASKD_FLOAT, 0, &x)) || (rc = load(a, "b.npy", MASKD_FLOAT, 0, &y)))
        return rc;
    int64_t n = x.dims[0];
    float *o = own(malloc(sizeof(float) * 3 * (size_t)(n + 1)));
    const float *pa = x.data, *pb = y.data;
    for (int64_t i = 0; i < n; i++) {
        o[i] = maskd_box_iou(pa + 4 * i, pb + 4 * i);
        o[n + i] = maskd_box_giou(pa + 4 * i, pb + 4 * i);
        o[2 * n + i] = maskd_box_diou(pa + 4 * i, pb + 4 * i);
    }
    int64_t d[1] = {n};
    if ((rc = save(a, "iou.npy", MASKD_FLOAT, 1, d, o)) ||
        (rc = save(a, "giou.npy", MASKD_FLOAT, 1, d, o + n)) ||
        (rc = save(a, "diou.npy", MASKD_FLOAT, 1, d, o + 2 * n)))
        return rc;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: post_driver COMMAND DIR [key=value ...] (see the source)\n");
        return 2;
    }
    args a = {.dir = argv[2]};
    for (int i = 3; i < argc && a.n < MAX_ARGS; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            fprintf(stderr, "post_driver: '%s' is not key=value\n", argv[i]);
            return 2;
        }
        *eq = 0;
        a.key[a.n] = argv[i];
        a.val[a.n++] = eq + 1;
    }
    const char *cmd = argv[1];
    int rc = 2;
    if (!strcmp(cmd, "nms"))
        rc = cmd_nms(&a, 0);
    else if (!strcmp(cmd, "bench_nms"))
        rc = cmd_nms(&a, 1);
    else if (!strcmp(cmd, "roi_align") || !strcmp(cmd, "roi_pool") ||
             !strcmp(cmd, "bench_roi_align"))
        rc = cmd_roi(&a, cmd);
    else if (!strcmp(cmd, "roi_fpn"))
        rc = cmd_roi_fpn(&a);
    else if (!strcmp(cmd, "anchors"))
        rc = cmd_anchors(&a);
    else if (!strcmp(cmd, "encode"))
        rc = cmd_code(&a, 0);
    else if (!strcmp(cmd, "decode"))
        rc = cmd_code(&a, 1);
    else if (!strcmp(cmd, "clip"))
        rc = cmd_clip(&a);
    else if (!strcmp(cmd, "overlap"))
        rc = cmd_overlap(&a);
    else
        fprintf(stderr, "post_driver: unknown command '%s'\n", cmd);
    release_all();
    return rc;
}
