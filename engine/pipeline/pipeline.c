/* Loading a pipeline from its card, workers, requests, results, dispatch. */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pipeline_internal.h"

double mk_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- loading ------------------------------------------------------------ */

/* Output index by name (or `fallback` when name is NULL); -1 with an error
 * naming the card key when the graph has no such output. */
static int find_output(const maskd_model *m, const char *name, int fallback,
                       const char *key, int *out, maskd_error *err)
{
    if (!name) {
        *out = fallback;
        return MASKD_OK;
    }
    *out = maskd_model_output_index(m, name);
    if (*out < 0) {
        char names[256] = "";
        size_t len = 0;
        for (int i = 0; i < maskd_model_num_outputs(m) && len < sizeof names - 64; i++)
            len += (size_t)snprintf(names + len, sizeof names - len, "%s'%s'", i ? ", " : "",
                                    maskd_model_output(m, i)->name);
        return mk_fail(err, MASKD_ERR_INVALID,
                       "model card: %s: the graph has no output '%s' (it has %s)", key, name,
                       names);
    }
    return MASKD_OK;
}

static int bind_input(maskd_pipeline *p, maskd_error *err)
{
    const maskd_model *m = p->models[0];
    maskd_card_input *in = &p->card.input;
    if (in->name) {
        p->input_index = maskd_model_input_index(m, in->name);
        if (p->input_index < 0)
            return mk_fail(err, MASKD_ERR_INVALID,
                           "model card: input.name: the graph has no input '%s'", in->name);
    } else {
        if (maskd_model_num_inputs(m) != 1)
            return mk_fail(err, MASKD_ERR_INVALID,
                           "model card: input.name: the graph has %d inputs; name the image one",
                           maskd_model_num_inputs(m));
        p->input_index = 0;
    }
    const maskd_value_info *vi = maskd_model_input(m, p->input_index);
    if (vi->dtype != MASKD_FLOAT)
        return mk_fail(err, MASKD_ERR_UNSUPPORTED,
                       "model input '%s' is %s; image pipelines feed float32", vi->name,
                       maskd_dtype_name(vi->dtype));
    if (vi->ndim != 4 || (vi->dims[0] != 1 && vi->dims[0] != -1) ||
        (vi->dims[1] != 3 && vi->dims[1] != -1))
        return mk_fail(err, MASKD_ERR_INVALID,
                       "model input '%s' must be [1, 3, H, W] (NCHW RGB/BGR)", vi->name);
    /* The card may leave the size to a graph that fixes it. */
    int64_t gh = vi->dims[2], gw = vi->dims[3];
    if (in->height <= 0) in->height = gh > 0 ? (int)gh : 0;
    if (in->width <= 0) in->width = gw > 0 ? (int)gw : 0;
    if (in->width <= 0 || in->height <= 0)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "model card: input.width/input.height: required, the graph's input "
                       "'%s' has no fixed size", vi->name);
    if ((gh > 0 && gh != in->height) || (gw > 0 && gw != in->width))
        return mk_fail(err, MASKD_ERR_INVALID,
                       "model card: input.width/input.height: %dx%d, but the graph's input '%s' "
                       "is %lldx%lld (WxH)",
                       in->width, in->height, vi->name, (long long)gw, (long long)gh);
    if (in->width > 16384 || in->height > 16384)
        return mk_fail(err, MASKD_ERR_INVALID, "model card: input: %dx%d is too large",
                       in->width, in->height);
    for (int c = 0; c < 3; c++)
        if (!(in->std[c] != 0) || !isfinite(in->std[c]) || !isfinite(in->mean[c]))
            return mk_fail(err, MASKD_ERR_INVALID,
                           "model card: input.std/mean: must be finite, std non-zero");
    return MASKD_OK;
}

/* C of a [1, C, ...] / [N, C] style dimension, when the graph fixes it. */
static int64_t static_dim(const maskd_model *m, int output, int axis_from_end)
{
    const maskd_value_info *vi = maskd_model_output(m, output);
    int axis = vi->ndim - axis_from_end;
    if (axis < 0) return -1;
    return vi->dims[axis];
}

static int check_classes(maskd_pipeline *p, int64_t graph_classes, const char *what,
                         maskd_error *err)
{
    if (graph_classes > 0 && p->card.n_labels > 0 && graph_classes != p->card.n_labels)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "model card: labels: %d labels, but the graph's %s has %lld classes",
                       p->card.n_labels, what, (long long)graph_classes);
    p->n_classes = graph_classes > 0 ? (int)graph_classes : p->card.n_labels;
    return MASKD_OK;
}

static int bind_segment(maskd_pipeline *p, maskd_error *err)
{
    int rc = find_output(p->models[0], p->card.segment.logits, 0, "segment.logits",
                         &p->seg_logits, err);
    if (rc) return rc;
    const maskd_value_info *vi = maskd_model_output(p->models[0], p->seg_logits);
    if (vi->ndim != -1 && vi->ndim != 0 && vi->ndim != 3 && vi->ndim != 4)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "model card: segment.logits: output '%s' has %d dimensions; logits are "
                       "[1, C, h, w]", vi->name, vi->ndim);
    return check_classes(p, vi->ndim >= 3 ? static_dim(p->models[0], p->seg_logits, 3) : -1,
                         "logits", err);
}

static int bind_dense(maskd_pipeline *p, maskd_error *err)
{
    const maskd_card_dense *d = &p->card.dense;
    const maskd_model *m = p->models[0];
    p->dense_output = p->dense_boxes = p->dense_scores = -1;
    int rc;
    if (d->output || (!d->boxes && !d->scores)) {
        if ((rc = find_output(m, d->output, 0, "dense.output", &p->dense_output, err))) return rc;
        int64_t k = static_dim(m, p->dense_output, d->transposed ? 2 : 1);
        int64_t c = k > 0 ? k - 4 - (d->objectness ? 1 : 0) : -1;
        if (k > 0 && c < 1)
            return mk_fail(err, MASKD_ERR_INVALID,
                           "model card: dense: output rows of %lld values leave no class scores",
                           (long long)k);
        if (c > 0) c += d->class_offset;
        return check_classes(p, c, "detections output", err);
    }
    if (!d->boxes || !d->scores)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "model card: dense.boxes and dense.scores: give both, or dense.output");
    if ((rc = find_output(m, d->boxes, 0, "dense.boxes", &p->dense_boxes, err))) return rc;
    if ((rc = find_output(m, d->scores, 0, "dense.scores", &p->dense_scores, err))) return rc;
    int64_t c = static_dim(m, p->dense_scores, 1);
    if (c > 0) c += d->class_offset;
    return check_classes(p, c, "scores output", err);
}

int maskd_pipeline_load(const maskd_card *card, const maskd_load_options *opt,
                        maskd_pipeline **out, maskd_error *err)
{
    *out = NULL;
    maskd_pipeline *p = calloc(1, sizeof *p);
    if (!p) return mk_fail(err, MASKD_ERR_NOMEM, "pipeline: out of memory");
    int rc = maskd_card_copy(&p->card, card, err);
    if (rc) {
        free(p);
        return rc;
    }
    if (!p->card.model_path) {
        rc = mk_fail(err, MASKD_ERR_INVALID, "model card: files.model: missing");
        goto fail;
    }
    if (p->card.pipeline == MASKD_PIPELINE_DETECT && !p->card.model2_path) {
        rc = mk_fail(err, MASKD_ERR_INVALID,
                     "model card: files.stage2: a two-stage detector needs its second graph");
        goto fail;
    }
    rc = maskd_model_load_file(p->card.model_path, opt, &p->models[0], err);
    if (rc) goto fail;
    if (p->card.pipeline == MASKD_PIPELINE_DETECT) {
        rc = maskd_model_load_file(p->card.model2_path, opt, &p->models[1], err);
        if (rc) goto fail;
    }
    if ((rc = bind_input(p, err))) goto fail;

    uint32_t all = (1u << MASKD_NMS_METHOD_COUNT) - 1;
    uint32_t needs_outputs = (1u << MASKD_NMS_SOFTER) | (1u << MASKD_NMS_ADAPTIVE);
    p->nms_allowed = p->card.nms.allowed ? p->card.nms.allowed & all : all & ~needs_outputs;
    switch (p->card.pipeline) {
    case MASKD_PIPELINE_SEGMENT: rc = bind_segment(p, err); break;
    case MASKD_PIPELINE_DETECT_DENSE:
        rc = bind_dense(p, err);
        p->nms_allowed &= ~needs_outputs; /* no variances or densities in these outputs */
        break;
    case MASKD_PIPELINE_DETECT: rc = mk_detect_bind(p, err); break;
    default: rc = mk_fail(err, MASKD_ERR_INVALID, "model card: pipeline: unknown kind");
    }
    if (rc) goto fail;
    if (p->card.pipeline != MASKD_PIPELINE_SEGMENT &&
        !(p->nms_allowed & (1u << p->card.nms.defaults.method))) {
        rc = mk_fail(err, MASKD_ERR_INVALID,
                     "model card: nms.default.method: '%s' is not among the methods the model "
                     "allows", maskd_nms_method_name(p->card.nms.defaults.method));
        goto fail;
    }
    *out = p;
    return MASKD_OK;
fail:
    maskd_pipeline_free(p);
    return rc;
}

void maskd_pipeline_free(maskd_pipeline *p)
{
    if (!p) return;
    for (int i = 0; i < MK_STAGES; i++) maskd_model_free(p->models[i]);
    maskd_card_free(&p->card);
    free(p);
}

const maskd_card *maskd_pipeline_card(const maskd_pipeline *p) { return &p->card; }

const maskd_model *maskd_pipeline_model(const maskd_pipeline *p, int i)
{
    return i >= 0 && i < MK_STAGES ? p->models[i] : NULL;
}

/* ---- workers ------------------------------------------------------------ */

int maskd_worker_create(const maskd_pipeline *p, maskd_pool *pool, maskd_worker **out,
                        maskd_error *err)
{
    *out = NULL;
    maskd_worker *w = calloc(1, sizeof *w);
    if (!w) return mk_fail(err, MASKD_ERR_NOMEM, "worker: out of memory");
    w->pipeline = p;
    w->pool = pool;
    int rc = MASKD_OK;
    for (int i = 0; i < MK_STAGES && p->models[i] && !rc; i++)
        rc = maskd_session_create(p->models[i], pool, &w->sessions[i], err);
    if (rc) {
        maskd_worker_free(w);
        return rc;
    }
    const maskd_card_input *in = &p->card.input;
    w->input.dtype = MASKD_FLOAT;
    w->input.ndim = 4;
    w->input.dims[0] = 1;
    w->input.dims[1] = 3;
    w->input.dims[2] = in->height;
    w->input.dims[3] = in->width;
    w->input.data = mk_aligned_alloc((size_t)3 * in->height * in->width * sizeof(float));
    if (!w->input.data) {
        maskd_worker_free(w);
        return mk_fail(err, MASKD_ERR_NOMEM, "worker: out of memory");
    }
    *out = w;
    return MASKD_OK;
}

void maskd_worker_free(maskd_worker *w)
{
    if (!w) return;
    for (int i = 0; i < MK_STAGES; i++) maskd_session_free(w->sessions[i]);
    mk_aligned_free(w->input.data);
    free(w->scratch);
    free(w->anchors);
    free(w);
}

float *mk_scratch(maskd_worker *w, size_t n)
{
    if (n > w->scratch_floats) {
        float *s = realloc(w->scratch, (n ? n : 1) * sizeof(float));
        if (!s) return NULL;
        w->scratch = s;
        w->scratch_floats = n;
    }
    return w->scratch;
}

const maskd_tensor *maskd_worker_input(const maskd_worker *w) { return &w->input; }

int maskd_worker_num_outputs(const maskd_worker *w, int stage)
{
    if (stage < 0 || stage >= MK_STAGES || !w->pipeline->models[stage]) return 0;
    return maskd_model_num_outputs(w->pipeline->models[stage]);
}

const maskd_tensor *maskd_worker_output(const maskd_worker *w, int stage, int i)
{
    if (i < 0 || i >= maskd_worker_num_outputs(w, stage) || !w->stage_ran[stage]) return NULL;
    return maskd_session_output(w->sessions[stage], i);
}

const char *maskd_worker_output_name(const maskd_worker *w, int stage, int i)
{
    if (i < 0 || i >= maskd_worker_num_outputs(w, stage)) return NULL;
    return maskd_model_output(w->pipeline->models[stage], i)->name;
}

/* ---- requests ----------------------------------------------------------- */

void maskd_request_init(maskd_request *req, const maskd_pipeline *p)
{
    memset(req, 0, sizeof *req);
    req->nms = p->card.nms.defaults;
    req->format = MASKD_FORMAT_RLE;
    req->upsample = p->card.segment.upsample;
    req->polygon_tolerance = 0.5;
}

void maskd_request_set_method(maskd_request *req, const maskd_pipeline *p,
                              maskd_nms_method method)
{
    const maskd_nms_options *card = &p->card.nms.defaults;
    if (method == card->method) {
        req->nms = *card;
        return;
    }
    maskd_nms_options_init(&req->nms, method);
    req->nms.score_threshold = fmax(card->score_threshold, req->nms.score_threshold);
    req->nms.max_detections = card->max_detections;
    req->nms.class_agnostic = card->class_agnostic;
    req->nms.pre_nms_top_k = card->pre_nms_top_k;
}

/* A number in [lo, hi] (lo excluded when open_lo).  These bounds hold for
 * every model; a card narrows them further (check_request). */
static int parse_real(const char *key, const char *v, double lo, double hi, bool open_lo,
                      double *out, maskd_error *err)
{
    char *end;
    double d = strtod(v, &end);
    if (!*v || *end || !isfinite(d) || d < lo || d > hi || (open_lo && d == lo))
        return mk_fail(err, MASKD_ERR_INVALID, "%s must be a number %s %g to %g, got '%.40s'",
                       key, open_lo ? "above" : "from", lo, hi, v);
    *out = d;
    return MASKD_OK;
}

static int parse_classes(const maskd_pipeline *p, const char *v, maskd_request *req,
                         maskd_error *err)
{
    size_t n = 1;
    for (const char *c = v; *c; c++) n += *c == ',';
    if (!*v || n > 100000) return mk_fail(err, MASKD_ERR_INVALID, "classes: an empty list");
    int32_t *ids = malloc(n * sizeof *ids);
    if (!ids) return mk_fail(err, MASKD_ERR_NOMEM, "classes: out of memory");
    size_t k = 0;
    for (const char *c = v; k < n; k++) {
        const char *e = strchr(c, ',');
        size_t len = e ? (size_t)(e - c) : strlen(c);
        char *end;
        long id = strtol(c, &end, 10);
        if (len == 0) {
            free(ids);
            return mk_fail(err, MASKD_ERR_INVALID, "classes: an empty entry in '%s'", v);
        }
        if (end != c + len || *c == '-' || *c == '+' || *c == ' ') {
            id = -1;
            for (int i = 0; i < p->card.n_labels && id < 0; i++)
                if (strlen(p->card.labels[i]) == len && !strncmp(p->card.labels[i], c, len))
                    id = i;
            if (id < 0) {
                free(ids);
                return mk_fail(err, MASKD_ERR_INVALID,
                               "classes: '%.*s' is neither a class id nor a label of model '%s'",
                               (int)len, c, p->card.name ? p->card.name : "");
            }
        }
        if (id < 0 || id > INT32_MAX) {
            free(ids);
            return mk_fail(err, MASKD_ERR_INVALID, "classes: %ld is not a class id", id);
        }
        ids[k] = (int32_t)id;
        c += len + (e != NULL);
    }
    free(req->owned_classes);
    req->owned_classes = ids;
    req->classes = ids;
    req->n_classes = (int)n;
    return MASKD_OK;
}

int maskd_request_parse(maskd_request *req, const maskd_pipeline *p, int n,
                        const char *const *keys, const char *const *values, maskd_error *err)
{
    static const char *const known[] = {"nms", "iou", "sigma", "score_threshold",
                                        "max_detections", "class_agnostic", "format",
                                        "upsample", "classes", "polygon_tolerance"};
    enum { N_KNOWN = sizeof known / sizeof known[0] };
    const char *given[N_KNOWN] = {0};
    for (int i = 0; i < n; i++) {
        int k = 0;
        while (k < N_KNOWN && strcmp(keys[i], known[k])) k++;
        if (k == N_KNOWN)
            return mk_fail(err, MASKD_ERR_INVALID,
                           "unknown option '%s' (options: nms, iou, sigma, score_threshold, "
                           "max_detections, class_agnostic, format, upsample, classes, "
                           "polygon_tolerance)",
                           keys[i]);
        if (given[k]) return mk_fail(err, MASKD_ERR_INVALID, "%s: given twice", keys[i]);
        given[k] = values[i] ? values[i] : "";
    }
    /* An option the model's pipeline has no use for is an error, not something to drop:
     * the client believes it changed the answer. Options 0..5 steer NMS, 7 upsampling. */
    bool segmenter = p->card.pipeline == MASKD_PIPELINE_SEGMENT;
    for (int k = 0; k < N_KNOWN; k++) {
        bool detection_only = k <= 5, segment_only = k == 7;
        if (given[k] && ((segmenter && detection_only) || (!segmenter && segment_only)))
            return mk_fail(err, MASKD_ERR_INVALID,
                           "option '%s' does not apply to model '%s': it is a %s", known[k],
                           p->card.name ? p->card.name : "",
                           segmenter ? "segmenter (no boxes, no NMS)" : "detector (no class map to upsample)");
    }
    int rc;
    if (given[0]) {
        maskd_nms_method m;
        if ((rc = maskd_nms_method_parse(given[0], &m, err))) return rc;
        maskd_request_set_method(req, p, m);
    }
    if (given[1] && (rc = parse_real("iou", given[1], 0, 1, false, &req->nms.iou_threshold, err)))
        return rc;
    if (given[2] && (rc = parse_real("sigma", given[2], 0, 100, true, &req->nms.sigma, err)))
        return rc;
    if (given[3] && (rc = parse_real("score_threshold", given[3], 0, 1, false,
                                     &req->nms.score_threshold, err)))
        return rc;
    if (given[4]) {
        char *end;
        long long v = strtoll(given[4], &end, 10);
        if (!*given[4] || *end || v < 0 || v > 1000000)
            return mk_fail(err, MASKD_ERR_INVALID,
                           "max_detections: '%s' is not a whole number from 0 to 1000000",
                           given[4]);
        req->nms.max_detections = v;
    }
    if (given[5]) {
        const char *v = given[5];
        if (!strcmp(v, "true") || !strcmp(v, "1") || !*v) req->nms.class_agnostic = 1;
        else if (!strcmp(v, "false") || !strcmp(v, "0")) req->nms.class_agnostic = 0;
        else
            return mk_fail(err, MASKD_ERR_INVALID, "class_agnostic: '%s' is not true or false", v);
    }
    if (given[6] && (rc = maskd_mask_format_parse(given[6], &req->format, err))) return rc;
    if (given[7] && (rc = maskd_upsample_parse(given[7], &req->upsample, err))) return rc;
    if (given[8] && (rc = parse_classes(p, given[8], req, err))) return rc;
    if (given[9] && (rc = parse_real("polygon_tolerance", given[9], 0, 1000, false,
                                     &req->polygon_tolerance, err)))
        return rc;
    return MASKD_OK;
}

void maskd_request_free(maskd_request *req)
{
    if (!req) return;
    if (req->classes == req->owned_classes) {
        req->classes = NULL;
        req->n_classes = 0;
    }
    free(req->owned_classes);
    req->owned_classes = NULL;
}

static int check_request(const maskd_pipeline *p, const maskd_request *req, maskd_error *err)
{
    if ((unsigned)req->format > MASKD_FORMAT_NONE)
        return mk_fail(err, MASKD_ERR_INVALID, "format: unknown");
    if ((unsigned)req->upsample > MASKD_UPSAMPLE_ARGMAX_NEAREST)
        return mk_fail(err, MASKD_ERR_INVALID, "upsample: unknown");
    if (!(req->polygon_tolerance >= 0 && req->polygon_tolerance <= 1000))
        return mk_fail(err, MASKD_ERR_INVALID, "polygon tolerance must be in [0, 1000] pixels");
    if (req->n_classes < 0 || (req->n_classes > 0 && !req->classes))
        return mk_fail(err, MASKD_ERR_INVALID, "classes: malformed list");
    for (int i = 0; i < req->n_classes; i++)
        if (req->classes[i] < 0 || (p->n_classes > 0 && req->classes[i] >= p->n_classes))
            return mk_fail(err, MASKD_ERR_INVALID,
                           "classes: %d is not a class of model '%s' (0..%d)", req->classes[i],
                           p->card.name ? p->card.name : "", p->n_classes - 1);
    if (p->card.pipeline == MASKD_PIPELINE_SEGMENT) return MASKD_OK;

    const maskd_nms_options *o = &req->nms;
    if ((unsigned)o->method >= MASKD_NMS_METHOD_COUNT)
        return mk_fail(err, MASKD_ERR_INVALID, "nms: unknown method");
    if (!(p->nms_allowed & (1u << o->method))) {
        char allowed[200] = "";
        size_t len = 0;
        for (int m = 0; m < MASKD_NMS_METHOD_COUNT; m++)
            if (p->nms_allowed & (1u << m))
                len += (size_t)snprintf(allowed + len, sizeof allowed - len, "%s%s",
                                        len ? ", " : "", maskd_nms_method_name(m));
        const char *why = o->method == MASKD_NMS_SOFTER     ? " (it needs predicted box variances)"
                          : o->method == MASKD_NMS_ADAPTIVE ? " (it needs predicted densities)"
                                                            : "";
        return mk_fail(err, MASKD_ERR_INVALID,
                       "nms: model '%s' does not support '%s'%s; it allows: %s",
                       p->card.name ? p->card.name : "", maskd_nms_method_name(o->method), why,
                       allowed);
    }
    double lo = p->card.nms.iou_min, hi = p->card.nms.iou_max;
    if (!(o->iou_threshold >= lo && o->iou_threshold <= hi))
        return mk_fail(err, MASKD_ERR_INVALID, "iou: must be in [%g, %g]", lo, hi);
    if (!(o->sigma > 0) || !isfinite(o->sigma))
        return mk_fail(err, MASKD_ERR_INVALID, "sigma: must be a positive number");
    if (isnan(o->score_threshold) || o->score_threshold >= 1e30)
        return mk_fail(err, MASKD_ERR_INVALID, "score_threshold: must be a number");
    if (o->max_detections < 0)
        return mk_fail(err, MASKD_ERR_INVALID, "max_detections: must be >= 0");
    int64_t lim = p->card.nms.max_detections_limit;
    if (lim > 0 && (o->max_detections == 0 || o->max_detections > lim))
        return mk_fail(err, MASKD_ERR_INVALID,
                       "max_detections: model '%s' allows at most %lld",
                       p->card.name ? p->card.name : "", (long long)lim);
    return MASKD_OK;
}

int mk_class_wanted(const maskd_pipeline *p, const maskd_request *req, int32_t k)
{
    if (k == p->card.background_class) return 0;
    if (!req->classes) return 1;
    for (int i = 0; i < req->n_classes; i++)
        if (req->classes[i] == k) return 1;
    return 0;
}

const char *mk_label(const maskd_pipeline *p, int32_t k)
{
    return k >= 0 && k < p->card.n_labels ? p->card.labels[k] : NULL;
}

void mk_boxes_to_original(const maskd_letterbox *lb, float *boxes, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float *b = boxes + 4 * i;
        for (int k = 0; k < 4; k++) {
            double v = k & 1 ? (b[k] - lb->offset_y) / lb->sy : (b[k] - lb->offset_x) / lb->sx;
            double hi = k & 1 ? lb->orig_height : lb->orig_width;
            b[k] = (float)fmin(fmax(v, 0.0), hi);
        }
    }
}

/* ---- results ------------------------------------------------------------ */

void maskd_result_free(maskd_result *r)
{
    if (!r) return;
    for (int i = 0; i < r->n_segments; i++) {
        maskd_rle_free(&r->segments[i].rle);
        free(r->segments[i].counts);
        maskd_polygons_free(&r->segments[i].polygons);
    }
    free(r->segments);
    for (int64_t i = 0; i < r->n_detections; i++) {
        maskd_rle_free(&r->detections[i].rle);
        free(r->detections[i].counts);
        maskd_polygons_free(&r->detections[i].polygons);
        free(r->detections[i].png);
    }
    free(r->detections);
    free(r->class_map_png);
    free(r->class_map.data);
    memset(r, 0, sizeof *r);
}

void mk_rle_runs_close(mk_rle_runs *r)
{
    if (r->failed) return;
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 64;
        uint32_t *c = realloc(r->counts, cap * sizeof *c);
        if (!c) {
            r->failed = 1;
            return;
        }
        r->counts = c;
        r->cap = cap;
    }
    r->counts[r->n++] = r->run;
}

int mk_rle_runs_finish(mk_rle_runs *r, int height, int width, maskd_rle *out, maskd_error *err)
{
    mk_rle_runs_close(r);
    if (r->failed) {
        free(r->counts);
        return mk_fail(err, MASKD_ERR_NOMEM, "mask: out of memory");
    }
    *out = (maskd_rle){height, width, r->n, r->counts};
    return MASKD_OK;
}

/* COCO RLE (column-major) of a 0/1 mask whose ones all lie inside bb, in
 * O(width + box area) instead of O(width * height): a detection's mask on a
 * large image is mostly columns of zeros. */
static int rle_in_box(const uint8_t *mask, int width, int height, const int32_t bb[4],
                      maskd_rle *out, maskd_error *err)
{
    mk_rle_runs b = {0};
    for (int x = 0; x < width; x++) {
        if (x < bb[0] || x >= bb[2] || bb[3] <= bb[1]) {
            mk_rle_runs_add(&b, 0, (uint32_t)height);
            continue;
        }
        mk_rle_runs_add(&b, 0, (uint32_t)bb[1]);
        for (int y = bb[1]; y < bb[3]; y++) mk_rle_runs_add(&b, mask[(size_t)y * width + x] != 0, 1);
        mk_rle_runs_add(&b, 0, (uint32_t)(height - bb[3]));
    }
    return mk_rle_runs_finish(&b, height, width, out, err);
}

int mk_detection_set_mask(maskd_detection *d, const uint8_t *mask, int width, int height,
                          const int32_t *bb, const maskd_request *req, maskd_pool *pool,
                          maskd_error *err)
{
    maskd_mask m = maskd_mask_binary(mask, height, width);
    int rc = MASKD_OK;
    d->has_mask = 1;
    if (req->format == MASKD_FORMAT_RLE || req->keep_masks) {
        rc = bb ? rle_in_box(mask, width, height, bb, &d->rle, err)
                : maskd_rle_encode(&m, &d->rle, pool, err);
        if (!rc && req->format == MASKD_FORMAT_RLE)
            rc = maskd_rle_to_string(&d->rle, &d->counts, NULL, err);
    }
    if (!rc && req->format == MASKD_FORMAT_POLYGONS) {
        maskd_polygon_options po = {0, req->polygon_tolerance};
        rc = maskd_polygons_trace(&m, &po, &d->polygons, err);
    }
    if (!rc && req->format == MASKD_FORMAT_PNG) {
        maskd_png_options po = {MASKD_PNG_GREY, NULL, 0, 0};
        /* 0/1 would look black in a viewer; 255 shows the mask. */
        size_t n = (size_t)width * (size_t)height;
        uint8_t *vis = malloc(n ? n : 1);
        if (!vis) return mk_fail(err, MASKD_ERR_NOMEM, "mask: out of memory");
        for (size_t i = 0; i < n; i++) vis[i] = mask[i] ? 255 : 0;
        maskd_label_map map = {height, width, MASKD_UINT8, vis};
        rc = maskd_png_encode(&map, &po, &d->png, &d->png_size, err);
        free(vis);
    }
    return rc;
}

/* ---- running ------------------------------------------------------------ */

int maskd_pipeline_run(maskd_worker *w, const maskd_image *image, const maskd_request *req,
                       maskd_result *res, maskd_error *err)
{
    memset(res, 0, sizeof *res);
    const maskd_pipeline *p = w->pipeline;
    maskd_request defaults;
    if (!req) {
        maskd_request_init(&defaults, p);
        req = &defaults;
    }
    int rc = check_request(p, req, err);
    if (rc) return rc;
    if (!image || !image->rgb || image->width < 1 || image->height < 1)
        return mk_fail(err, MASKD_ERR_INVALID, "the image has no pixels");
    int ow = image->orig_width > 0 ? image->orig_width : image->width;
    int oh = image->orig_height > 0 ? image->orig_height : image->height;
    if (ow < image->width || oh < image->height)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "the decoded image (%dx%d) is larger than the original (%dx%d)",
                       image->width, image->height, ow, oh);
    res->kind = p->card.pipeline;
    res->model = p->card.name;
    res->width = ow;
    res->height = oh;
    res->format = req->format;
    w->stage_ran[0] = w->stage_ran[1] = 0;

    double t0 = mk_now_ms();
    rc = maskd_preprocess(&p->card.input, image, w->input.data, &res->letterbox, w->pool, err);
    if (rc) return rc;
    res->timing.preprocess_ms = mk_now_ms() - t0;

    switch (p->card.pipeline) {
    case MASKD_PIPELINE_SEGMENT: rc = mk_segment_run(w, image, req, res, err); break;
    case MASKD_PIPELINE_DETECT_DENSE: rc = mk_dense_run(w, image, req, res, err); break;
    case MASKD_PIPELINE_DETECT: rc = mk_detect_run(w, image, req, res, err); break;
    default: rc = mk_fail(err, MASKD_ERR_INVALID, "pipeline: unknown kind");
    }
    if (rc) {
        maskd_result_free(res);
        return rc;
    }
    return MASKD_OK;
}

int maskd_worker_warmup(maskd_worker *w, maskd_error *err)
{
    const maskd_card_input *in = &w->pipeline->card.input;
    size_t n = (size_t)in->width * (size_t)in->height * 3;
    uint8_t *rgb = malloc(n);
    if (!rgb) return mk_fail(err, MASKD_ERR_NOMEM, "warm-up: out of memory");
    memset(rgb, 128, n);
    maskd_image img = {in->width, in->height, in->width, in->height, rgb};
    maskd_result res;
    int rc = maskd_pipeline_run(w, &img, NULL, &res, err);
    maskd_result_free(&res);
    free(rgb);
    return rc;
}
