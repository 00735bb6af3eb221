/* Model card JSON -> maskd_card.  Every error names the key it is about. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "card.h"

typedef struct parser {
    const char *where;
    maskd_error *err;
} parser;

static int fail(parser *ps, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(parser *ps, const char *key, const char *fmt, ...)
{
    if (ps->err) {
        char msg[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        ps->err->code = MASKD_ERR_INVALID;
        snprintf(ps->err->message, sizeof ps->err->message, "card %s: %s: %s", ps->where, key,
                 msg);
    }
    return MASKD_ERR_INVALID;
}

static int oom(parser *ps)
{
    if (ps->err) {
        ps->err->code = MASKD_ERR_NOMEM;
        snprintf(ps->err->message, sizeof ps->err->message, "card %s: out of memory", ps->where);
    }
    return MASKD_ERR_NOMEM;
}

/* ---- typed getters: absent keys leave *out alone ------------------------- */

static int get_object(parser *ps, const json_t *obj, const char *name, const char *key,
                      const json_t **out)
{
    json_t *v = json_object_get(obj, name);
    *out = NULL;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_object(v)) return fail(ps, key, "must be an object");
    *out = v;
    return 0;
}

static int get_string(parser *ps, const json_t *obj, const char *name, const char *key,
                      char **out)
{
    json_t *v = json_object_get(obj, name);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v) || !json_string_length(v))
        return fail(ps, key, "must be a non-empty string");
    if (strlen(json_string_value(v)) != json_string_length(v))
        return fail(ps, key, "must not contain NUL characters");
    char *s = strdup(json_string_value(v));
    if (!s) return oom(ps);
    free(*out);
    *out = s;
    return 0;
}

/* Borrowed; NULL when absent. */
static int get_cstr(parser *ps, const json_t *obj, const char *name, const char *key,
                    const char **out)
{
    json_t *v = json_object_get(obj, name);
    *out = NULL;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v)) return fail(ps, key, "must be a string");
    *out = json_string_value(v);
    return 0;
}

static int get_double(parser *ps, const json_t *obj, const char *name, const char *key,
                      double lo, double hi, double *out)
{
    json_t *v = json_object_get(obj, name);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return fail(ps, key, "must be a number");
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi)) return fail(ps, key, "%g is not in [%g, %g]", d, lo, hi);
    *out = d;
    return 0;
}

static int get_float(parser *ps, const json_t *obj, const char *name, const char *key,
                     double lo, double hi, float *out)
{
    double d = *out;
    int rc = get_double(ps, obj, name, key, lo, hi, &d);
    *out = (float)d;
    return rc;
}

static int get_int64(parser *ps, const json_t *obj, const char *name, const char *key,
                     int64_t lo, int64_t hi, int64_t *out)
{
    json_t *v = json_object_get(obj, name);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v)) return fail(ps, key, "must be an integer");
    json_int_t i = json_integer_value(v);
    if (i < lo || i > hi)
        return fail(ps, key, "%lld is not in [%lld, %lld]", (long long)i, (long long)lo,
                    (long long)hi);
    *out = i;
    return 0;
}

static int get_int(parser *ps, const json_t *obj, const char *name, const char *key, int lo,
                   int hi, int *out)
{
    int64_t i = *out;
    int rc = get_int64(ps, obj, name, key, lo, hi, &i);
    *out = (int)i;
    return rc;
}

static int get_bool(parser *ps, const json_t *obj, const char *name, const char *key, int *out)
{
    json_t *v = json_object_get(obj, name);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return fail(ps, key, "must be true or false");
    *out = json_is_true(v);
    return 0;
}

/* An array of n numbers, or (when allow_scalar) one number for all n. */
static int get_floats(parser *ps, const json_t *obj, const char *name, const char *key, int n,
                      int allow_scalar, float *out, int *present)
{
    json_t *v = json_object_get(obj, name);
    if (present) *present = 0;
    if (!v || json_is_null(v)) return 0;
    if (allow_scalar && json_is_number(v)) {
        for (int i = 0; i < n; i++) out[i] = (float)json_number_value(v);
    } else {
        if (!json_is_array(v) || (int)json_array_size(v) != n)
            return fail(ps, key, "must be an array of %d numbers", n);
        for (int i = 0; i < n; i++) {
            json_t *e = json_array_get(v, (size_t)i);
            if (!json_is_number(e)) return fail(ps, key, "must be an array of %d numbers", n);
            out[i] = (float)json_number_value(e);
        }
    }
    for (int i = 0; i < n; i++)
        if (!isfinite(out[i])) return fail(ps, key, "must be finite");
    if (present) *present = 1;
    return 0;
}

/* A positive-number list of any length (anchor sizes, ratios). */
static int get_float_list(parser *ps, const json_t *obj, const char *name, const char *key,
                          float **out, int *n)
{
    json_t *v = json_object_get(obj, name);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > 64)
        return fail(ps, key, "must be an array of 1 to 64 positive numbers");
    size_t len = json_array_size(v);
    float *f = malloc(len * sizeof(float));
    if (!f) return oom(ps);
    for (size_t i = 0; i < len; i++) {
        json_t *e = json_array_get(v, i);
        double d = json_is_number(e) ? json_number_value(e) : -1;
        if (!(d > 0) || !isfinite(d)) {
            free(f);
            return fail(ps, key, "must be an array of 1 to 64 positive numbers");
        }
        f[i] = (float)d;
    }
    free(*out);
    *out = f;
    *n = (int)len;
    return 0;
}

/* One of a fixed set of names -> its index. */
static int get_enum(parser *ps, const json_t *obj, const char *name, const char *key,
                    const char *const *names, const int *values, int n, int *out)
{
    const char *s;
    int rc = get_cstr(ps, obj, name, key, &s);
    if (rc || !s) return rc;
    for (int i = 0; i < n; i++)
        if (!strcasecmp(s, names[i])) {
            *out = values[i];
            return 0;
        }
    char list[200] = "";
    size_t len = 0;
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "", names[i]);
    return fail(ps, key, "'%s' is not one of %s", s, list);
}

static int resolve_path(parser *ps, const char *base_dir, const char *key, char **path)
{
    if (!*path || (*path)[0] == '/' || !base_dir || !*base_dir) return 0;
    size_t len = strlen(base_dir) + strlen(*path) + 2;
    char *full = malloc(len);
    if (!full) return oom(ps);
    snprintf(full, len, "%s/%s", base_dir, *path);
    free(*path);
    *path = full;
    (void)key;
    return 0;
}

/* ---- sections ------------------------------------------------------------ */

static int parse_input(parser *ps, const json_t *root, maskd_card *c)
{
    const json_t *in;
    int rc = get_object(ps, root, "input", "input", &in);
    if (rc) return rc;
    if (!in) return fail(ps, "input", "missing (the model's input contract: size, mean, std)");
    maskd_card_input *ci = &c->input;
    if ((rc = get_string(ps, in, "name", "input.name", &ci->name))) return rc;
    if ((rc = get_int(ps, in, "width", "input.width", 1, 16384, &ci->width))) return rc;
    if ((rc = get_int(ps, in, "height", "input.height", 1, 16384, &ci->height))) return rc;
    json_t *shape = json_object_get(in, "shape");
    if (shape && !json_is_null(shape)) {
        if (!json_is_array(shape) || json_array_size(shape) != 4)
            return fail(ps, "input.shape", "must be [1, 3, height, width]");
        int64_t d[4];
        for (int i = 0; i < 4; i++) {
            json_t *e = json_array_get(shape, (size_t)i);
            if (!json_is_integer(e)) return fail(ps, "input.shape", "must be [1, 3, height, width]");
            d[i] = json_integer_value(e);
        }
        if (d[0] != 1 || d[1] != 3 || d[2] < 1 || d[3] < 1 || d[2] > 16384 || d[3] > 16384)
            return fail(ps, "input.shape", "must be [1, 3, height, width]");
        if ((ci->height && ci->height != d[2]) || (ci->width && ci->width != d[3]))
            return fail(ps, "input.shape", "disagrees with input.width/input.height");
        ci->height = (int)d[2];
        ci->width = (int)d[3];
    }
    static const char *const resize_names[] = {"keep-aspect", "letterbox", "stretch"};
    static const int resize_values[] = {MASKD_RESIZE_KEEP_ASPECT, MASKD_RESIZE_KEEP_ASPECT,
                                        MASKD_RESIZE_STRETCH};
    int v = ci->resize;
    if ((rc = get_enum(ps, in, "resize", "input.resize", resize_names, resize_values, 3, &v)))
        return rc;
    ci->resize = (maskd_resize_mode)v;
    static const char *const place_names[] = {"top-left", "center", "centre"};
    static const int place_values[] = {MASKD_PLACE_TOP_LEFT, MASKD_PLACE_CENTER,
                                       MASKD_PLACE_CENTER};
    v = ci->placement;
    if ((rc = get_enum(ps, in, "placement", "input.placement", place_names, place_values, 3, &v)))
        return rc;
    ci->placement = (maskd_placement)v;
    static const char *const color_names[] = {"RGB", "BGR"};
    static const int color_values[] = {0, 1};
    if ((rc = get_enum(ps, in, "color", "input.color", color_names, color_values, 2, &ci->bgr)))
        return rc;
    const char *layout;
    if ((rc = get_cstr(ps, in, "layout", "input.layout", &layout))) return rc;
    if (layout && strcmp(layout, "NCHW"))
        return fail(ps, "input.layout", "'%s': only NCHW is supported", layout);
    const char *dtype;
    if ((rc = get_cstr(ps, in, "dtype", "input.dtype", &dtype))) return rc;
    if (dtype && strcmp(dtype, "float32"))
        return fail(ps, "input.dtype", "'%s': only float32 is supported", dtype);

    json_t *scale = json_object_get(in, "scale");
    if (json_is_string(scale)) {
        const char *s = json_string_value(scale);
        if (!strcmp(s, "0..255")) ci->scale = 1.0f;
        else if (!strcmp(s, "0..1")) ci->scale = 1.0f / 255.0f;
        else return fail(ps, "input.scale", "'%s' is not one of 0..255, 0..1 (or a number)", s);
    } else if (scale && !json_is_null(scale)) {
        if ((rc = get_float(ps, in, "scale", "input.scale", 1e-9, 1e9, &ci->scale))) return rc;
    }
    if ((rc = get_floats(ps, in, "mean", "input.mean", 3, 1, ci->mean, NULL))) return rc;
    if ((rc = get_floats(ps, in, "std", "input.std", 3, 1, ci->std, NULL))) return rc;
    for (int k = 0; k < 3; k++)
        if (ci->std[k] == 0) return fail(ps, "input.std", "must not be 0");
    int has_pad;
    if ((rc = get_floats(ps, in, "pad_value", "input.pad_value", 3, 1, ci->pad_value, &has_pad)))
        return rc;
    /* Padding that normalizes to 0 is what most training pipelines pad with. */
    if (!has_pad)
        for (int k = 0; k < 3; k++) ci->pad_value[k] = ci->mean[k] / ci->scale;
    return 0;
}

static int parse_labels(parser *ps, const json_t *root, maskd_card *c)
{
    json_t *labels = json_object_get(root, "labels");
    if (!labels || json_is_null(labels)) return 0;
    if (!json_is_array(labels) || json_array_size(labels) > 100000)
        return fail(ps, "labels", "must be an array of strings (class 0 first)");
    size_t n = json_array_size(labels);
    c->labels = calloc(n + 1, sizeof(char *));
    if (!c->labels) return oom(ps);
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(labels, i);
        if (!json_is_string(e)) {
            char key[48];
            snprintf(key, sizeof key, "labels[%zu]", i);
            return fail(ps, key, "must be a string");
        }
        c->labels[i] = strdup(json_string_value(e));
        if (!c->labels[i]) return oom(ps);
        c->n_labels = (int)i + 1;
    }
    json_t *bg = json_object_get(root, "background_class");
    if (bg && !json_is_null(bg)) {
        int rc = get_int(ps, root, "background_class", "background_class", -1,
                         c->n_labels ? c->n_labels - 1 : INT_MAX, &c->background_class);
        if (rc) return rc;
    } else if (bg && json_is_null(bg)) {
        c->background_class = -1;
    } else if (c->pipeline == MASKD_PIPELINE_DETECT && c->n_labels > 0) {
        c->background_class = 0; /* R-CNN heads reserve class 0 */
    }
    return 0;
}

static int parse_nms_options(parser *ps, const json_t *o, const char *prefix,
                             maskd_nms_options *nms)
{
    char key[96];
    int rc;
#define KEY(k) (snprintf(key, sizeof key, "%s.%s", prefix, k), key)
    const char *method;
    if ((rc = get_cstr(ps, o, "method", KEY("method"), &method))) return rc;
    if (method) {
        maskd_error e;
        maskd_nms_method m;
        if (maskd_nms_method_parse(method, &m, &e)) return fail(ps, KEY("method"), "%s", e.message);
        /* Method defaults first, then the card's values over them. */
        maskd_nms_options fresh;
        maskd_nms_options_init(&fresh, m);
        fresh.max_detections = nms->max_detections;
        fresh.class_agnostic = nms->class_agnostic;
        if (isfinite(nms->score_threshold) && !isfinite(fresh.score_threshold))
            fresh.score_threshold = nms->score_threshold;
        *nms = fresh;
    }
    if ((rc = get_double(ps, o, "iou", KEY("iou"), 0, 1, &nms->iou_threshold))) return rc;
    if ((rc = get_double(ps, o, "iou_threshold", KEY("iou_threshold"), 0, 1, &nms->iou_threshold)))
        return rc;
    if ((rc = get_double(ps, o, "sigma", KEY("sigma"), 1e-9, 1e9, &nms->sigma))) return rc;
    if ((rc = get_double(ps, o, "score_threshold", KEY("score_threshold"), -1e30, 1e30,
                         &nms->score_threshold)))
        return rc;
    if ((rc = get_int64(ps, o, "max_detections", KEY("max_detections"), 0, 1000000,
                        &nms->max_detections)))
        return rc;
    if ((rc = get_int64(ps, o, "pre_nms_top_k", KEY("pre_nms_top_k"), 0, 100000000,
                        &nms->pre_nms_top_k)))
        return rc;
    if ((rc = get_bool(ps, o, "class_agnostic", KEY("class_agnostic"), &nms->class_agnostic)))
        return rc;
    if ((rc = get_double(ps, o, "diou_beta", KEY("diou_beta"), 1e-9, 1e9, &nms->diou_beta)))
        return rc;
    if ((rc = get_double(ps, o, "softer_sigma_t", KEY("softer_sigma_t"), 1e-9, 1e9,
                         &nms->softer_sigma_t)))
        return rc;
    if ((rc = get_int64(ps, o, "cluster_max_iter", KEY("cluster_max_iter"), 0, 1000000,
                        &nms->cluster_max_iter)))
        return rc;
    const char *kernel;
    if ((rc = get_cstr(ps, o, "matrix_kernel", KEY("matrix_kernel"), &kernel))) return rc;
    if (kernel) {
        maskd_error e;
        if (maskd_nms_kernel_parse(kernel, &nms->matrix_kernel, &e))
            return fail(ps, KEY("matrix_kernel"), "%s", e.message);
    }
#undef KEY
    return 0;
}

static int parse_nms(parser *ps, const json_t *root, maskd_card *c)
{
    const json_t *nms;
    int rc = get_object(ps, root, "nms", "nms", &nms);
    if (rc || !nms) return rc;
    const json_t *def;
    if ((rc = get_object(ps, nms, "default", "nms.default", &def))) return rc;
    if (def && (rc = parse_nms_options(ps, def, "nms.default", &c->nms.defaults))) return rc;
    json_t *allowed = json_object_get(nms, "allowed");
    if (allowed && !json_is_null(allowed)) {
        if (!json_is_array(allowed) || json_array_size(allowed) == 0)
            return fail(ps, "nms.allowed", "must be a non-empty array of method names");
        c->nms.allowed = 0;
        for (size_t i = 0; i < json_array_size(allowed); i++) {
            json_t *e = json_array_get(allowed, i);
            maskd_error me;
            maskd_nms_method m;
            if (!json_is_string(e))
                return fail(ps, "nms.allowed", "must be a non-empty array of method names");
            if (maskd_nms_method_parse(json_string_value(e), &m, &me))
                return fail(ps, "nms.allowed", "%s", me.message);
            c->nms.allowed |= 1u << m;
        }
    }
    if ((rc = get_int64(ps, nms, "max_detections_limit", "nms.max_detections_limit", 0, 1000000,
                        &c->nms.max_detections_limit)))
        return rc;
    const json_t *softer, *limits;
    if ((rc = get_object(ps, nms, "softer", "nms.softer", &softer))) return rc;
    if (softer && (rc = get_double(ps, softer, "sigma_t", "nms.softer.sigma_t", 1e-9, 1e9,
                                   &c->nms.defaults.softer_sigma_t)))
        return rc;
    if ((rc = get_object(ps, nms, "limits", "nms.limits", &limits))) return rc;
    if (limits) {
        if ((rc = get_int64(ps, limits, "max_detections", "nms.limits.max_detections", 0, 1000000,
                            &c->nms.max_detections_limit)))
            return rc;
        float range[2] = {0, 1};
        int present;
        if ((rc = get_floats(ps, limits, "iou", "nms.limits.iou", 2, 0, range, &present))) return rc;
        if (present) {
            if (!(range[0] >= 0 && range[0] <= range[1] && range[1] <= 1))
                return fail(ps, "nms.limits.iou", "must be [lo, hi] with 0 <= lo <= hi <= 1");
            c->nms.iou_min = range[0];
            c->nms.iou_max = range[1];
        }
    }
    double t = c->nms.defaults.iou_threshold;
    if (t < c->nms.iou_min || t > c->nms.iou_max)
        return fail(ps, "nms.default.iou", "%g is outside nms.limits.iou", t);
    if (c->nms.max_detections_limit > 0 &&
        c->nms.defaults.max_detections > c->nms.max_detections_limit)
        return fail(ps, "nms.default.max_detections", "above the card's limit");
    return 0;
}

static int parse_segment(parser *ps, const json_t *root, maskd_card *c)
{
    const json_t *seg, *post, *outputs;
    int rc = get_object(ps, root, "segment", "segment", &seg);
    if (!rc) rc = get_object(ps, root, "postprocess", "postprocess", &post);
    if (!rc) rc = get_object(ps, root, "outputs", "outputs", &outputs);
    if (rc) return rc;
    /* "outputs" documents the graph's outputs by name; one of them is the logits. */
    if (outputs && json_object_size(outputs) == 1) {
        c->segment.logits = strdup(json_object_iter_key(json_object_iter((json_t *)outputs)));
        if (!c->segment.logits) return oom(ps);
    } else if (outputs && json_object_get(outputs, "logits")) {
        c->segment.logits = strdup("logits");
        if (!c->segment.logits) return oom(ps);
    }
    for (int pass = 0; pass < 2; pass++) {
        const json_t *o = pass ? seg : post;
        const char *sec = pass ? "segment" : "postprocess";
        if (!o) continue;
        char key[64];
        snprintf(key, sizeof key, "%s.logits", sec);
        if ((rc = get_string(ps, o, "logits", key, &c->segment.logits))) return rc;
        snprintf(key, sizeof key, "%s.upsample", sec);
        const char *up;
        if ((rc = get_cstr(ps, o, "upsample", key, &up))) return rc;
        if (up) {
            maskd_error e;
            if (maskd_upsample_parse(up, &c->segment.upsample, &e))
                return fail(ps, key, "%s", e.message);
        }
        snprintf(key, sizeof key, "%s.crop_valid_region", sec);
        if ((rc = get_bool(ps, o, "crop_valid_region", key, &c->segment.crop_valid_region)))
            return rc;
    }
    return 0;
}

static int parse_dense(parser *ps, const json_t *root, maskd_card *c)
{
    const json_t *d;
    int rc = get_object(ps, root, "dense", "dense", &d);
    if (rc || !d) return rc;
    maskd_card_dense *cd = &c->dense;
    if ((rc = get_string(ps, d, "output", "dense.output", &cd->output))) return rc;
    if ((rc = get_string(ps, d, "boxes", "dense.boxes", &cd->boxes))) return rc;
    if ((rc = get_string(ps, d, "scores", "dense.scores", &cd->scores))) return rc;
    if ((rc = get_bool(ps, d, "transposed", "dense.transposed", &cd->transposed))) return rc;
    if ((rc = get_bool(ps, d, "normalized", "dense.normalized", &cd->normalized))) return rc;
    if ((rc = get_bool(ps, d, "objectness", "dense.objectness", &cd->objectness))) return rc;
    if ((rc = get_bool(ps, d, "multi_label", "dense.multi_label", &cd->multi_label))) return rc;
    if ((rc = get_int(ps, d, "class_offset", "dense.class_offset", 0, 100000, &cd->class_offset)))
        return rc;
    static const char *const fmt_names[] = {"xyxy", "cxcywh", "xywh"};
    static const int fmt_values[] = {MASKD_BOX_XYXY, MASKD_BOX_CXCYWH, MASKD_BOX_XYWH};
    int v = cd->box_format;
    if ((rc = get_enum(ps, d, "box_format", "dense.box_format", fmt_names, fmt_values, 3, &v)))
        return rc;
    cd->box_format = (maskd_box_format)v;
    static const char *const act_names[] = {"none", "sigmoid", "softmax"};
    static const int act_values[] = {MASKD_SCORES_AS_IS, MASKD_SCORES_SIGMOID,
                                     MASKD_SCORES_SOFTMAX};
    v = cd->activation;
    if ((rc = get_enum(ps, d, "activation", "dense.activation", act_names, act_values, 3, &v)))
        return rc;
    cd->activation = (maskd_score_activation)v;
    if ((cd->boxes == NULL) != (cd->scores == NULL))
        return fail(ps, "dense.boxes", "dense.boxes and dense.scores go together");
    return 0;
}

static int parse_roi(parser *ps, const json_t *o, const char *prefix, maskd_roi_align_options *r)
{
    char key[96];
    int rc;
    snprintf(key, sizeof key, "%s.output_size", prefix);
    json_t *size = json_object_get(o, "output_size");
    if (json_is_integer(size)) {
        if ((rc = get_int64(ps, o, "output_size", key, 1, 1024, &r->pooled_h))) return rc;
        r->pooled_w = r->pooled_h;
    } else if (size && !json_is_null(size)) {
        float hw[2] = {0, 0};
        if ((rc = get_floats(ps, o, "output_size", key, 2, 0, hw, NULL))) return rc;
        if (hw[0] < 1 || hw[1] < 1 || hw[0] > 1024 || hw[1] > 1024 || hw[0] != floorf(hw[0]) ||
            hw[1] != floorf(hw[1]))
            return fail(ps, key, "must be an integer or [h, w] in 1..1024");
        r->pooled_h = (int64_t)hw[0];
        r->pooled_w = (int64_t)hw[1];
    }
    snprintf(key, sizeof key, "%s.sampling_ratio", prefix);
    if ((rc = get_int64(ps, o, "sampling_ratio", key, 0, 64, &r->sampling_ratio))) return rc;
    snprintf(key, sizeof key, "%s.aligned", prefix);
    if ((rc = get_bool(ps, o, "aligned", key, &r->aligned))) return rc;
    snprintf(key, sizeof key, "%s.spatial_scale", prefix);
    return get_float(ps, o, "spatial_scale", key, 0, 1e6, &r->spatial_scale);
}

static int parse_coder(parser *ps, const json_t *o, const char *name, const char *key,
                       maskd_box_coder *bc)
{
    float w[4];
    int present;
    int rc = get_floats(ps, o, name, key, 4, 0, w, &present);
    if (rc || !present) return rc;
    for (int i = 0; i < 4; i++)
        if (!(w[i] > 0)) return fail(ps, key, "weights must be positive");
    bc->wx = w[0];
    bc->wy = w[1];
    bc->ww = w[2];
    bc->wh = w[3];
    return 0;
}

/* The ONNX name of an output role: outputs.<role>.name, else the role itself
 * when the card lists it (absent roles keep the pipeline's default). */
static int get_output_name(parser *ps, const json_t *outputs, const char *role,
                           const char *section, char **out)
{
    if (!outputs) return 0;
    json_t *v = json_object_get(outputs, role);
    if (!v) return 0;
    char key[96];
    snprintf(key, sizeof key, "%s.outputs.%s", section, role);
    if (json_is_string(v)) return get_string(ps, outputs, role, key, out);
    if (!json_is_object(v)) return fail(ps, key, "must be an object (or the output's name)");
    if (json_object_get(v, "name")) {
        snprintf(key, sizeof key, "%s.outputs.%s.name", section, role);
        return get_string(ps, v, "name", key, out);
    }
    char *s = strdup(role);
    if (!s) return oom(ps);
    free(*out);
    *out = s;
    return 0;
}

static int parse_detect(parser *ps, const json_t *root, maskd_card *c)
{
    maskd_card_detect *cd = &c->detect;
    const json_t *st1, *st2, *anchors, *rpn, *roi, *post, *o;
    int rc;
    if ((rc = get_object(ps, root, "stage1", "stage1", &st1))) return rc;
    if ((rc = get_object(ps, root, "stage2", "stage2", &st2))) return rc;
    if ((rc = get_object(ps, root, "anchors", "anchors", &anchors))) return rc;
    if ((rc = get_object(ps, root, "rpn", "rpn", &rpn))) return rc;
    if ((rc = get_object(ps, root, "roi_align", "roi_align", &roi))) return rc;
    if ((rc = get_object(ps, root, "postprocess", "postprocess", &post))) return rc;

    if (st1) {
        if ((rc = get_object(ps, st1, "outputs", "stage1.outputs", &o))) return rc;
        if ((rc = get_output_name(ps, o, "features", "stage1", &cd->features))) return rc;
        if ((rc = get_output_name(ps, o, "rpn_logits", "stage1", &cd->objectness))) return rc;
        if ((rc = get_output_name(ps, o, "rpn_deltas", "stage1", &cd->rpn_deltas))) return rc;
    }
    if (st2) {
        const json_t *in;
        if ((rc = get_object(ps, st2, "input", "stage2.input", &in))) return rc;
        if (in && (rc = get_string(ps, in, "name", "stage2.input.name", &cd->box_input))) return rc;
        if ((rc = get_object(ps, st2, "outputs", "stage2.outputs", &o))) return rc;
        if ((rc = get_output_name(ps, o, "cls_logits", "stage2", &cd->class_logits))) return rc;
        if ((rc = get_output_name(ps, o, "box_deltas", "stage2", &cd->box_deltas))) return rc;
        if ((rc = get_output_name(ps, o, "box_logvar", "stage2", &cd->variances))) return rc;
        if ((rc = get_output_name(ps, o, "density", "stage2", &cd->densities))) return rc;
        if ((rc = get_output_name(ps, o, "mask_logits", "stage2", &cd->mask_logits))) return rc;
        if ((rc = parse_coder(ps, st2, "box_coder_weights", "stage2.box_coder_weights",
                              &cd->box_coder)))
            return rc;
        if ((rc = get_float(ps, st2, "exp_clamp", "stage2.exp_clamp", 0, 100, &cd->box_coder.clip)))
            return rc;
        if ((rc = get_int64(ps, st2, "batch", "stage2.batch", 0, 100000, &cd->stage2_batch)))
            return rc;
    }
    if (!anchors) return fail(ps, "anchors", "missing (stride, sizes, aspect_ratios)");
    if ((rc = get_float(ps, anchors, "stride", "anchors.stride", 1e-3, 1e6, &cd->anchor_stride)))
        return rc;
    if (!(cd->anchor_stride > 0)) return fail(ps, "anchors.stride", "missing");
    if ((rc = get_float_list(ps, anchors, "sizes", "anchors.sizes", &cd->anchor_sizes,
                             &cd->n_anchor_sizes)))
        return rc;
    if ((rc = get_float_list(ps, anchors, "aspect_ratios", "anchors.aspect_ratios",
                             &cd->aspect_ratios, &cd->n_aspect_ratios)))
        return rc;
    json_t *base = json_object_get(anchors, "base");
    if (base && !json_is_null(base)) {
        size_t n = json_is_array(base) ? json_array_size(base) : 0;
        if (n == 0 || n > 4096) return fail(ps, "anchors.base", "must be a list of [x1, y1, x2, y2]");
        cd->anchor_base = malloc(n * 4 * sizeof(float));
        if (!cd->anchor_base) return oom(ps);
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_array_get(base, i);
            if (!json_is_array(e) || json_array_size(e) != 4)
                return fail(ps, "anchors.base", "must be a list of [x1, y1, x2, y2]");
            for (size_t k = 0; k < 4; k++) {
                json_t *v = json_array_get(e, k);
                if (!json_is_number(v) || !isfinite(json_number_value(v)))
                    return fail(ps, "anchors.base", "must be a list of [x1, y1, x2, y2]");
                cd->anchor_base[4 * i + k] = (float)json_number_value(v);
            }
        }
        cd->n_anchor_base = (int)n;
    } else if (!cd->n_anchor_sizes || !cd->n_aspect_ratios) {
        return fail(ps, "anchors", "needs base, or sizes and aspect_ratios");
    }
    if (rpn) {
        if ((rc = parse_coder(ps, rpn, "box_coder_weights", "rpn.box_coder_weights",
                              &cd->rpn_coder)))
            return rc;
        if ((rc = get_float(ps, rpn, "exp_clamp", "rpn.exp_clamp", 0, 100, &cd->rpn_coder.clip)))
            return rc;
        if ((rc = get_int64(ps, rpn, "pre_nms_top_n", "rpn.pre_nms_top_n", 1, 10000000,
                            &cd->rpn_pre_nms_top_n)))
            return rc;
        if ((rc = get_int64(ps, rpn, "post_nms_top_n", "rpn.post_nms_top_n", 1, 1000000,
                            &cd->rpn_post_nms_top_n)))
            return rc;
        if ((rc = get_float(ps, rpn, "nms_iou", "rpn.nms_iou", 0, 1, &cd->rpn_nms_iou))) return rc;
        if ((rc = get_float(ps, rpn, "min_size", "rpn.min_size", 0, 1e6, &cd->rpn_min_size)))
            return rc;
    }
    if (roi) {
        if ((rc = parse_roi(ps, roi, "roi_align", &cd->box_roi))) return rc;
        static const char *const modes[] = {"avg", "max"};
        static const int mode_values[] = {MASKD_ROI_AVG, MASKD_ROI_MAX};
        int m = cd->box_roi.mode;
        if ((rc = get_enum(ps, roi, "mode", "roi_align.mode", modes, mode_values, 2, &m))) return rc;
        cd->box_roi.mode = (maskd_roi_mode)m;
    }
    if (post) {
        if ((rc = get_float(ps, post, "score_threshold", "postprocess.score_threshold", 0, 1,
                            &cd->box_score_threshold)))
            return rc;
        if ((rc = get_float(ps, post, "min_box_size", "postprocess.min_box_size", 0, 1e6,
                            &cd->box_min_size)))
            return rc;
        if ((rc = get_float(ps, post, "mask_threshold_logit", "postprocess.mask_threshold_logit",
                            -1e6, 1e6, &cd->mask_threshold_logit)))
            return rc;
    }
    return 0;
}

/* ---- entry points -------------------------------------------------------- */

int maskd_card_from_json(const json_t *root, const char *base_dir, const char *where,
                         maskd_card *out, maskd_error *err)
{
    parser ps = {where ? where : "(card)", err};
    maskd_card_init(out);
    if (!json_is_object(root)) return fail(&ps, "(top level)", "a card is a JSON object");
    int rc;
    if ((rc = get_string(&ps, root, "name", "name", &out->name))) goto fail;
    static const char *const kinds[] = {"segment", "detect", "detect-two-stage", "two-stage",
                                        "detect-dense", "dense"};
    static const int kind_values[] = {MASKD_PIPELINE_SEGMENT,      MASKD_PIPELINE_DETECT,
                                      MASKD_PIPELINE_DETECT,       MASKD_PIPELINE_DETECT,
                                      MASKD_PIPELINE_DETECT_DENSE, MASKD_PIPELINE_DETECT_DENSE};
    const char *kind;
    if ((rc = get_cstr(&ps, root, "pipeline", "pipeline", &kind))) goto fail;
    if (!kind) {
        rc = fail(&ps, "pipeline", "missing (segment, detect or detect-dense)");
        goto fail;
    }
    int k = 0;
    if ((rc = get_enum(&ps, root, "pipeline", "pipeline", kinds, kind_values, 6, &k))) goto fail;
    out->pipeline = (maskd_pipeline_kind)k;

    const json_t *files;
    if ((rc = get_object(&ps, root, "files", "files", &files))) goto fail;
    if (files) {
        if ((rc = get_string(&ps, files, "model", "files.model", &out->model_path))) goto fail;
        if ((rc = get_string(&ps, files, "stage1", "files.stage1", &out->model_path))) goto fail;
        if ((rc = get_string(&ps, files, "stage2", "files.stage2", &out->model2_path))) goto fail;
    }
    if (!out->model_path) {
        rc = fail(&ps, out->pipeline == MASKD_PIPELINE_DETECT ? "files.stage1" : "files.model",
                  "missing (the .onnx file, relative to the card)");
        goto fail;
    }
    if (out->pipeline == MASKD_PIPELINE_DETECT && !out->model2_path) {
        rc = fail(&ps, "files.stage2", "missing (a two-stage detector has two graphs)");
        goto fail;
    }
    if ((rc = resolve_path(&ps, base_dir, "files.model", &out->model_path))) goto fail;
    if ((rc = resolve_path(&ps, base_dir, "files.stage2", &out->model2_path))) goto fail;

    if ((rc = parse_input(&ps, root, out))) goto fail;
    if ((rc = parse_labels(&ps, root, out))) goto fail;
    if ((rc = parse_nms(&ps, root, out))) goto fail;
    switch (out->pipeline) {
    case MASKD_PIPELINE_SEGMENT: rc = parse_segment(&ps, root, out); break;
    case MASKD_PIPELINE_DETECT_DENSE: rc = parse_dense(&ps, root, out); break;
    case MASKD_PIPELINE_DETECT: rc = parse_detect(&ps, root, out); break;
    }
    if (rc) goto fail;
    if (!out->name) {
        /* The file name without .json names an unnamed card. */
        const char *base = strrchr(ps.where, '/');
        base = base ? base + 1 : ps.where;
        size_t len = strlen(base);
        if (len > 5 && !strcmp(base + len - 5, ".json")) len -= 5;
        out->name = strndup(base, len);
        if (!out->name) {
            rc = oom(&ps);
            goto fail;
        }
    }
    return MASKD_OK;
fail:
    maskd_card_free(out);
    return rc;
}

int maskd_card_load_file(const char *path, maskd_card *out, maskd_error *err)
{
    maskd_card_init(out);
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (err) {
            err->code = MASKD_ERR_INVALID;
            FILE *f = fopen(path, "rb");
            if (!f) {
                err->code = MASKD_ERR_IO;
                snprintf(err->message, sizeof err->message, "card %s: %s", path, strerror(errno));
            } else {
                fclose(f);
                snprintf(err->message, sizeof err->message, "card %s: line %d column %d: %s",
                         path, je.line, je.column, je.text);
            }
        }
        return err ? err->code : MASKD_ERR_INVALID;
    }
    char *dir = strdup(path);
    if (!dir) {
        json_decref(root);
        if (err) {
            err->code = MASKD_ERR_NOMEM;
            snprintf(err->message, sizeof err->message, "card %s: out of memory", path);
        }
        return MASKD_ERR_NOMEM;
    }
    char *slash = strrchr(dir, '/');
    if (slash) slash == dir ? (void)(slash[1] = 0) : (void)(*slash = 0);
    int rc = maskd_card_from_json(root, slash ? dir : NULL, path, out, err);
    free(dir);
    json_decref(root);
    return rc;
}
