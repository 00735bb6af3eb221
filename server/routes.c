/* The route table and the /v1, health, metrics and page handlers. */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "decode.h"
#include "image.h"
#include "maskd/pipeline.h"
#include "respond.h"

static void page(mk_req *r);
static void healthz(mk_req *r);
static void readyz(mk_req *r);
static void metrics(mk_req *r);
static void list_models(mk_req *r);
static void get_model(mk_req *r);
static void predict(mk_req *r);

/* One table: routing, 405s, the metrics' route label, which routes need a
 * key and which take a body all come from here. */
static const mk_route routes[] = {
    {"GET", "/", ROUTE_PUBLIC | ROUTE_NO_LOG, page},
    {"GET", "/healthz", ROUTE_PUBLIC | ROUTE_NO_LOG, healthz},
    {"GET", "/readyz", ROUTE_PUBLIC | ROUTE_NO_LOG, readyz},
    {"GET", "/metrics", ROUTE_PUBLIC | ROUTE_NO_LOG, metrics},
    {"GET", "/v1/models", 0, list_models},
    {"GET", "/v1/models/{model}", 0, get_model},
    {"POST", "/v1/models/{model}/predict", ROUTE_BODY | ROUTE_IMAGE, predict},
    {"GET", "/v2", 0, mk_v2_server},
    {"GET", "/v2/health/live", ROUTE_PUBLIC | ROUTE_NO_LOG, mk_v2_live},
    {"GET", "/v2/health/ready", ROUTE_PUBLIC | ROUTE_NO_LOG, mk_v2_ready},
    {"GET", "/v2/models/{model}", 0, mk_v2_model},
    {"GET", "/v2/models/{model}/ready", ROUTE_PUBLIC | ROUTE_NO_LOG, mk_v2_model_ready},
    {"POST", "/v2/models/{model}/infer", ROUTE_BODY, mk_v2_infer},
};
enum { N_ROUTES = sizeof routes / sizeof routes[0] };

/* Matches a path against a pattern with {model} standing for one segment. */
static bool path_matches(const char *pattern, const char *url, char *model, size_t model_size)
{
    while (*pattern) {
        if (!strncmp(pattern, "{model}", 7)) {
            const char *end = strchr(url, '/');
            size_t n = end ? (size_t)(end - url) : strlen(url);
            if (!n || n >= model_size) return false;
            memcpy(model, url, n);
            model[n] = 0;
            url += n;
            pattern += 7;
            continue;
        }
        if (*pattern != *url) return false;
        pattern++;
        url++;
    }
    /* a trailing slash is forgiven */
    return !*url || (url[0] == '/' && !url[1] && url[-1] != '/');
}

const mk_route *mk_route_match(const char *method, const char *url, char *model, size_t model_size,
                               bool *method_mismatch, char *allow, size_t allow_size)
{
    *method_mismatch = false;
    allow[0] = 0;
    for (int i = 0; i < N_ROUTES; i++) {
        char m[80] = "";
        if (!path_matches(routes[i].pattern, url, m, sizeof m)) continue;
        if (!strcmp(routes[i].method, method)) {
            snprintf(model, model_size, "%s", m);
            return &routes[i];
        }
        *method_mismatch = true;
        size_t k = strlen(allow);
        snprintf(allow + k, allow_size - k, "%s%s", k ? ", " : "", routes[i].method);
        snprintf(model, model_size, "%s", m);
    }
    if (*method_mismatch) {
        size_t k = strlen(allow);
        snprintf(allow + k, allow_size - k, ", OPTIONS");
    }
    return NULL;
}

/* ---- health -------------------------------------------------------------- */

static void healthz(mk_req *r)
{
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string("ok"));
    mk_reply_json(r, 200, o);
}

/* Ready: every model warm, not draining, and the queue not saturated (a load
 * balancer then sends the next request elsewhere instead of into a 503). */
static void readyz(mk_req *r)
{
    const char *why = NULL;
    if (mk_draining())
        why = "draining";
    else if (!mk_state_ready(r->st))
        why = "models are loading";
    else if (mk_admission_queued() > 0 &&
             mk_admission_queued() - (mk_admission_workers() - mk_admission_running()) >=
                 r->st->cfg.queue_depth)
        why = "the inference queue is full";
    if (why) {
        mk_reply_error(r, 503, "not_ready", "not ready: %s", why);
        return;
    }
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string("ready"));
    mk_reply_json(r, 200, o);
}

static void metrics(mk_req *r)
{
    size_t len = 0;
    char *text = mk_metrics_render(&len);
    if (!text) {
        mk_reply_error(r, 500, "internal_error", "out of memory");
        return;
    }
    mk_reply_buffer(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
}

/* ---- /v1/models ------------------------------------------------------------ */

static json_t *model_summary(const mk_model *m)
{
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(m->name));
    json_object_set_new(o, "ready", json_boolean(atomic_load(&m->ready)));
    const maskd_card *card = m->pipeline ? maskd_pipeline_card(m->pipeline) : NULL;
    if (card) {
        json_object_set_new(o, "pipeline", json_string(maskd_pipeline_kind_name(card->pipeline)));
        json_object_set_new(o, "input", json_pack("{s:i,s:i}", "width", card->input.width, "height",
                                                  card->input.height));
    }
    return o;
}

static void list_models(mk_req *r)
{
    json_t *a = json_array();
    for (int i = 0; i < r->st->n_models; i++) json_array_append_new(a, model_summary(&r->st->models[i]));
    mk_reply_json(r, 200, json_pack("{s:o}", "models", a));
}

static void get_model(mk_req *r)
{
    if (r->model_index < 0) {
        mk_reply_error(r, 404, "model_not_found", "no model named '%s'", r->model);
        return;
    }
    const mk_model *m = &r->st->models[r->model_index];
    json_t *o = model_summary(m);
    if (m->card) {
        /* the card as written, less where its files live on this host */
        json_t *card = json_deep_copy(m->card);
        json_object_del(card, "model");
        json_object_del(card, "model2");
        json_object_set_new(o, "card", card);
    }
    mk_reply_json(r, 200, o);
}

/* ---- the page -------------------------------------------------------------- */

static const char page_html[] =
    "<!doctype html><html><head><meta charset=utf-8><title>maskd</title>"
    "<style>body{font:14px sans-serif;margin:2em}canvas{max-width:100%;border:1px solid #ccc}"
    "pre{background:#f4f4f4;padding:1em;max-height:20em;overflow:auto}</style></head><body>"
    "<h1>maskd</h1><p><select id=m></select> <input type=file id=f accept='image/*'> "
    "<span id=s></span></p><canvas id=c></canvas><pre id=o></pre><script>\n"
    "const m=document.getElementById('m'),f=document.getElementById('f'),c=document.getElementById('c'),"
    "o=document.getElementById('o'),s=document.getElementById('s');\n"
    "fetch('/v1/models').then(r=>r.json()).then(j=>{for(const x of j.models){const e="
    "document.createElement('option');e.textContent=x.name;m.appendChild(e);}});\n"
    "function rle(counts,h,w){const a=[];let p=0,k=0;while(p<counts.length){let x=0,j=0,more=1;"
    "while(more){const ch=counts.charCodeAt(p++)-48;x|=(ch&31)<<5*j;more=ch&32;j++;"
    "if(!more&&(ch&16))x|=-1<<5*j;}if(k>2)x+=a[k-2];a.push(x);k++;}return a;}\n"
    "function paint(ctx,counts,h,w,col){const runs=rle(counts,h,w),img=ctx.getImageData(0,0,w,h);"
    "let i=0,v=0;for(const n of runs){if(v)for(let q=i;q<i+n;q++){const y=q%h,x=(q/h)|0,"
    "o4=(y*w+x)*4;img.data[o4]=(img.data[o4]+col[0])/2;img.data[o4+1]=(img.data[o4+1]+col[1])/2;"
    "img.data[o4+2]=(img.data[o4+2]+col[2])/2;}i+=n;v^=1;}ctx.putImageData(img,0,0);}\n"
    "f.onchange=async()=>{const file=f.files[0];if(!file)return;const bmp=await createImageBitmap(file);"
    "c.width=bmp.width;c.height=bmp.height;const ctx=c.getContext('2d');ctx.drawImage(bmp,0,0);"
    "const fd=new FormData();fd.append('image',file);s.textContent='...';"
    "const r=await fetch('/v1/models/'+m.value+'/predict',{method:'POST',body:fd});const j=await r.json();"
    "s.textContent=r.status+' '+(r.headers.get('Server-Timing')||'');o.textContent=JSON.stringify(j,null,1);"
    "const cols=[[230,25,75],[60,180,75],[0,130,200],[245,130,48],[145,30,180],[70,240,240]];"
    "for(const g of (j.segments||[])){const col=cols[g.class_id%6];if(g.mask&&g.mask.counts)"
    "paint(ctx,g.mask.counts,g.mask.size[0],g.mask.size[1],col);}"
    "ctx.lineWidth=2;ctx.font='14px sans-serif';for(const d of (j.detections||[]).concat(j.segments||[])){"
    "const col=cols[d.class_id%6],b=d.box;if(d.mask&&d.mask.counts&&d.score!==undefined)"
    "paint(ctx,d.mask.counts,d.mask.size[0],d.mask.size[1],col);ctx.strokeStyle=ctx.fillStyle="
    "'rgb('+col+')';ctx.strokeRect(b[0],b[1],b[2]-b[0],b[3]-b[1]);ctx.fillText(d.label+"
    "(d.score!==undefined?' '+d.score.toFixed(2):''),b[0]+2,b[1]+14);}};\n"
    "</script></body></html>\n";

static void page(mk_req *r)
{
    char *s = strdup(page_html);
    if (!s) {
        mk_reply_error(r, 500, "internal_error", "out of memory");
        return;
    }
    mk_reply_buffer(r, 200, "text/html; charset=utf-8", s, strlen(s));
}

/* ---- predict ----------------------------------------------------------------- */

typedef struct predict_work {
    mk_req *r;
    maskd_request req;
    const unsigned char *data;
    size_t size;
    unsigned char *owned; /* data, when it is not the request body */
    mk_image_answer answer_kind;
    /* the decoded image, from the job's prepare step */
    maskd_image img;
    int decode_rc;
    maskd_error decode_err;
    /* the outcome, built on the worker */
    json_t *answer;
    int status;
    const char *code;
    char message[512];
} predict_work;

static void predict_work_free(void *p)
{
    predict_work *w = p;
    if (!w) return;
    maskd_request_free(&w->req);
    maskd_image_free(&w->img);
    free(w->owned);
    json_decref(w->answer);
    free(w);
}

static void work_fail(predict_work *w, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void work_fail(predict_work *w, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->message, sizeof w->message, fmt, ap);
    va_end(ap);
    w->status = status;
    w->code = code;
}

/* More than every option once is a repeat or an unknown key: the parser
 * says which. */
enum { MAX_QUERY_ARGS = 32 };

typedef struct query_args {
    const char *keys[MAX_QUERY_ARGS], *values[MAX_QUERY_ARGS];
    int n;
    char error[600];
} query_args;

/* Collects first and parses once: maskd_request_parse applies the options in
 * a fixed order (nms before iou, ...), so `iou=0.3&nms=soft-linear` and
 * `nms=soft-linear&iou=0.3` mean the same thing. */
static enum MHD_Result collect_query_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                         const char *value)
{
    (void)kind;
    query_args *q = cls;
    if (q->error[0]) return MHD_NO;
    if (q->n == MAX_QUERY_ARGS) {
        snprintf(q->error, sizeof q->error, "too many query parameters (at most %d)",
                 MAX_QUERY_ARGS);
        return MHD_NO;
    }
    q->keys[q->n] = key;
    q->values[q->n++] = value ? value : "";
    return MHD_YES;
}

/* The query -> w->req, or a message for a 400 in q->error.  Syntax, ranges,
 * unknown and repeated keys are maskd_request_parse's (the same rules as
 * `maskd predict`); the card's own limits are checked by maskd_pipeline_run.
 * Refusing here keeps a bad request out of the queue. */
static void parse_query(mk_req *r, predict_work *w, const maskd_pipeline *pipeline, query_args *q)
{
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, collect_query_arg, q);
    if (q->error[0]) return;
    maskd_error err = {0};
    if (maskd_request_parse(&w->req, pipeline, q->n, q->keys, q->values, &err))
        snprintf(q->error, sizeof q->error, "%s", err.message);
}

/* Decoding needs no worker's state: the queue's preparer runs it ahead of
 * the worker when the workers are busy (see admission.c). */
static void predict_prepare(mk_job *job)
{
    predict_work *w = (predict_work *)((mk_req *)((char *)job - offsetof(mk_req, job)))->work;
    mk_req *r = w->r;
    const mk_model *m = &r->st->models[r->model_index];
    double t0 = srv_now_ms();
    w->decode_rc = maskd_decode_for_pipeline(w->data, w->size, m->pipeline,
                                             r->st->cfg.max_pixels, &w->img, &w->decode_err);
    r->timing.decode_ms = srv_now_ms() - t0;
}

static void predict_run(mk_job *job, int worker)
{
    predict_work *w = (predict_work *)((mk_req *)((char *)job - offsetof(mk_req, job)))->work;
    mk_req *r = w->r;
    maskd_worker *pw = r->st->pipeline_runs[worker * r->st->n_models + r->model_index];
    maskd_error err = {0};
    if (w->decode_rc) {
        work_fail(w, maskd_image_http_status(w->decode_err.code),
                  maskd_image_error_code(w->decode_err.code), "%s", w->decode_err.message);
        return;
    }
    maskd_result res;
    memset(&res, 0, sizeof res);
    if (maskd_pipeline_run(pw, &w->img, &w->req, &res, &err)) {
        if (err.code == MASKD_ERR_INVALID)
            work_fail(w, 400, "invalid_parameter", "%s", err.message);
        else
            work_fail(w, 500, "inference_failed", "%s", err.message);
    } else {
        r->timing.infer_ms = res.timing.preprocess_ms + res.timing.infer_ms;
        double t1 = srv_now_ms();
        w->answer = mk_result_json(&res, &r->timing, w->answer_kind, r->model,
                                   r->v2_id[0] ? r->v2_id : r->id, &err);
        r->timing.post_ms = res.timing.post_ms + (srv_now_ms() - t1);
        if (!w->answer) work_fail(w, 500, "internal_error", "%s", err.message);
        else w->status = 200;
    }
    maskd_result_free(&res);
    /* the pixels are not needed past the inference: give them back now
     * rather than when the connection closes */
    maskd_image_free(&w->img);
}

static void predict_finish(mk_job *job, mk_job_outcome outcome)
{
    mk_req *r = (mk_req *)((char *)job - offsetof(mk_req, job));
    predict_work *w = r->work;
    r->timing.queue_ms = job->t_started - job->t_enqueued;
    if (outcome == MK_JOB_EXPIRED) {
        mk_reply_error(r, 504, "deadline_exceeded",
                       "the request waited %.0f ms in the queue, past deadline_ms (%d)",
                       r->timing.queue_ms, r->st->cfg.deadline_ms);
    } else if (w->status == 200) {
        mk_reply_json(r, 200, w->answer);
        w->answer = NULL;
    } else {
        mk_reply_error(r, w->status, w->code, "%s", w->message);
    }
    mk_req_resume(r);
}

void mk_image_predict(mk_req *r, const unsigned char *data, size_t size, unsigned char *owned,
                      mk_image_answer answer_kind)
{
    mk_model *m = &r->st->models[r->model_index];
    if (!m->pipeline) {
        free(owned);
        mk_reply_error(r, 400, "not_an_image_model", "model '%s' has no image pipeline", m->name);
        return;
    }
    if (!atomic_load(&m->ready)) {
        free(owned);
        mk_reply_error(r, 503, "model_not_ready", "model '%s' is still warming up", m->name);
        return;
    }
    predict_work *w = calloc(1, sizeof *w);
    if (!w) {
        free(owned);
        mk_reply_error(r, 503, "out_of_memory", "the server is out of memory");
        return;
    }
    w->r = r;
    w->data = data;
    w->size = size;
    w->owned = owned;
    w->answer_kind = answer_kind;
    r->work = w;
    r->work_free = predict_work_free;
    maskd_request_init(&w->req, m->pipeline);
    if (answer_kind == MK_ANSWER_V1) {
        query_args q = {.n = 0};
        parse_query(r, w, m->pipeline, &q);
        if (q.error[0]) {
            mk_reply_error(r, 400, "invalid_parameter", "%s", q.error);
            return;
        }
    }
    /* Cheap checks here, so a bad upload never takes a queue slot. */
    maskd_image_options opt = {.max_pixels = r->st->cfg.max_pixels};
    maskd_image_info info;
    maskd_error err = {0};
    if (maskd_image_probe(data, size, &opt, &info, &err)) {
        mk_reply_error(r, maskd_image_http_status(err.code), maskd_image_error_code(err.code), "%s",
                       err.message);
        return;
    }
    r->job.prepare = predict_prepare;
    r->job.run = predict_run;
    r->job.finish = predict_finish;
    mk_req_submit(r);
}

static void predict(mk_req *r)
{
    if (!r->body_len) {
        mk_reply_error(r, 400, "empty_image", "the request has no image (an empty body)");
        return;
    }
    mk_image_predict(r, (const unsigned char *)r->body, r->body_len, NULL, MK_ANSWER_V1);
}

json_t *mk_result_json(const maskd_result *res, const mk_timing *t, mk_image_answer kind,
                       const char *model, const char *request_id, maskd_error *err)
{
    maskd_respond_extra extra = {.decode_ms = t->decode_ms, .queue_ms = t->queue_ms};
    json_t *doc = maskd_result_to_json(res, &extra);
    if (!doc) {
        snprintf(err->message, sizeof err->message, "out of memory while encoding the answer");
        return NULL;
    }
    if (kind == MK_ANSWER_V1) return doc;
    /* v2: the same document, as the one element of a BYTES output */
    char *s = json_dumps(doc, MASKD_JSON_FLAGS);
    json_decref(doc);
    if (!s) {
        snprintf(err->message, sizeof err->message, "out of memory while encoding the answer");
        return NULL;
    }
    json_t *v2 = json_pack("{s:s,s:s,s:s,s:[{s:s,s:s,s:[i],s:[s]}]}", "model_name", model,
                           "model_version", "1", "id", request_id, "outputs", "name", "result",
                           "datatype", "BYTES", "shape", 1, "data", s);
    free(s);
    return v2;
}
