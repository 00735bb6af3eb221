/* KServe v2 / Open Inference Protocol: health, metadata and infer on the raw
 * graph (JSON tensors or the binary tensor extension), plus a BYTES input
 * holding an encoded image for image models, decoded here and run through the
 * model's pipeline (as OpenVINO Model Server does). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"

#ifndef MASKD_VERSION
#define MASKD_VERSION "dev"
#endif

void mk_v2_server(mk_req *r)
{
    mk_reply_json(r, 200,
                  json_pack("{s:s,s:s,s:[s]}", "name", "maskd", "version", MASKD_VERSION, "extensions",
                            "binary_tensor_data"));
}

/* The v2 health routes answer by status alone. */
void mk_v2_live(mk_req *r)
{
    mk_reply_empty(r, 200);
}

void mk_v2_ready(mk_req *r)
{
    mk_reply_empty(r, mk_state_ready(r->st) && !mk_draining() ? 200 : 400);
}

void mk_v2_model_ready(mk_req *r)
{
    if (r->model_index < 0) {
        mk_reply_error(r, 404, "model_not_found", "no model named '%s'", r->model);
        return;
    }
    bool ready = atomic_load(&r->st->models[r->model_index].ready) && !mk_draining();
    mk_reply_empty(r, ready ? 200 : 400);
}

static const struct {
    maskd_dtype dtype;
    const char *name;
} v2_types[] = {
    {MASKD_FLOAT, "FP32"},   {MASKD_UINT8, "UINT8"},   {MASKD_INT8, "INT8"},   {MASKD_INT32, "INT32"},
    {MASKD_INT64, "INT64"},  {MASKD_BOOL, "BOOL"},     {MASKD_DOUBLE, "FP64"}, {MASKD_UINT16, "UINT16"},
    {MASKD_INT16, "INT16"},  {MASKD_FLOAT16, "FP16"},  {MASKD_UINT32, "UINT32"}, {MASKD_UINT64, "UINT64"},
    {MASKD_STRING, "BYTES"},
};

static const char *v2_type_name(maskd_dtype t)
{
    for (size_t i = 0; i < sizeof v2_types / sizeof v2_types[0]; i++)
        if (v2_types[i].dtype == t) return v2_types[i].name;
    return "UNKNOWN";
}

static maskd_dtype v2_type_parse(const char *s)
{
    for (size_t i = 0; i < sizeof v2_types / sizeof v2_types[0]; i++)
        if (!strcmp(v2_types[i].name, s)) return v2_types[i].dtype;
    return MASKD_UNDEFINED;
}

static json_t *tensor_meta(const maskd_value_info *vi)
{
    json_t *shape = json_array();
    for (int d = 0; d < vi->ndim; d++) json_array_append_new(shape, json_integer(vi->dims[d]));
    return json_pack("{s:s,s:s,s:o}", "name", vi->name, "datatype", v2_type_name(vi->dtype), "shape",
                     shape);
}

void mk_v2_model(mk_req *r)
{
    if (r->model_index < 0) {
        mk_reply_error(r, 404, "model_not_found", "no model named '%s'", r->model);
        return;
    }
    const mk_model *m = &r->st->models[r->model_index];
    json_t *inputs = json_array(), *outputs = json_array();
    for (int i = 0; i < maskd_model_num_inputs(m->graph); i++)
        json_array_append_new(inputs, tensor_meta(maskd_model_input(m->graph, i)));
    for (int i = 0; i < maskd_model_num_outputs(m->graph); i++)
        json_array_append_new(outputs, tensor_meta(maskd_model_output(m->graph, i)));
    if (m->pipeline) {
        /* the image form: one BYTES element holding a JPEG or PNG */
        json_array_append_new(inputs, json_pack("{s:s,s:s,s:[i]}", "name", "image", "datatype", "BYTES",
                                                "shape", 1));
    }
    mk_reply_json(r, 200,
                  json_pack("{s:s,s:[s],s:s,s:o,s:o}", "name", m->name, "versions", "1", "platform",
                            "maskd_onnx", "inputs", inputs, "outputs", outputs));
}

/* ---- infer ----------------------------------------------------------------- */

typedef struct v2_work {
    json_t *request;
    maskd_tensor inputs[16];
    int n_inputs;
    void *buffers[16];
    bool want[64];        /* outputs asked for (all when none are named) */
    bool binary_out[64];
    bool any_binary;
    json_t *answer;       /* on success */
    char *binary;         /* binary output section */
    size_t binary_len;
    int status;
    char message[512];
    const char *code;
} v2_work;

static void v2_work_free(void *p)
{
    v2_work *w = p;
    if (!w) return;
    json_decref(w->request);
    json_decref(w->answer);
    for (int i = 0; i < 16; i++) free(w->buffers[i]);
    free(w->binary);
    free(w);
}

static int flatten(json_t *v, json_t *out, int depth)
{
    if (depth > MASKD_MAX_DIMS + 1) return -1;
    if (!json_is_array(v)) return json_array_append(out, v);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) if (flatten(e, out, depth + 1)) return -1;
    return 0;
}

/* JSON numbers into a typed buffer, each checked for its type's range. */
static int fill_from_json(json_t *flat, maskd_dtype dt, void *buf, int64_t n, char *msg, size_t msz)
{
    for (int64_t i = 0; i < n; i++) {
        json_t *e = json_array_get(flat, (size_t)i);
        if (dt == MASKD_FLOAT || dt == MASKD_DOUBLE) {
            if (!json_is_number(e)) {
                snprintf(msg, msz, "element %lld is not a number", (long long)i);
                return -1;
            }
            double x = json_number_value(e);
            if (dt == MASKD_FLOAT)
                ((float *)buf)[i] = (float)x;
            else
                ((double *)buf)[i] = x;
            continue;
        }
        if (dt == MASKD_BOOL && json_is_boolean(e)) {
            ((uint8_t *)buf)[i] = json_is_true(e);
            continue;
        }
        if (!json_is_integer(e)) {
            snprintf(msg, msz, "element %lld is not a whole number", (long long)i);
            return -1;
        }
        long long x = json_integer_value(e);
        long long lo = 0, hi = 0;
        switch (dt) {
        case MASKD_UINT8: lo = 0; hi = 255; break;
        case MASKD_BOOL: lo = 0; hi = 1; break;
        case MASKD_INT8: lo = -128; hi = 127; break;
        case MASKD_INT32: lo = INT32_MIN; hi = INT32_MAX; break;
        case MASKD_INT64: lo = INT64_MIN; hi = INT64_MAX; break;
        default:
            snprintf(msg, msz, "datatype %s is not accepted as JSON data", v2_type_name(dt));
            return -1;
        }
        if (x < lo || x > hi) {
            snprintf(msg, msz, "element %lld (%lld) is out of range for %s", (long long)i, x,
                     v2_type_name(dt));
            return -1;
        }
        switch (dt) {
        case MASKD_UINT8:
        case MASKD_BOOL: ((uint8_t *)buf)[i] = (uint8_t)x; break;
        case MASKD_INT8: ((int8_t *)buf)[i] = (int8_t)x; break;
        case MASKD_INT32: ((int32_t *)buf)[i] = (int32_t)x; break;
        default: ((int64_t *)buf)[i] = x; break;
        }
    }
    return 0;
}

static json_t *tensor_data_json(const maskd_tensor *t)
{
    int64_t n = maskd_tensor_numel(t);
    json_t *a = json_array();
    for (int64_t i = 0; i < n; i++) {
        json_t *e;
        switch (t->dtype) {
        case MASKD_FLOAT: {
            float x = ((const float *)t->data)[i];
            e = json_real(x); /* NULL for NaN/Inf: JSON has no such numbers */
            break;
        }
        case MASKD_DOUBLE: e = json_real(((const double *)t->data)[i]); break;
        case MASKD_UINT8: e = json_integer(((const uint8_t *)t->data)[i]); break;
        case MASKD_BOOL: e = json_boolean(((const uint8_t *)t->data)[i]); break;
        case MASKD_INT8: e = json_integer(((const int8_t *)t->data)[i]); break;
        case MASKD_INT32: e = json_integer(((const int32_t *)t->data)[i]); break;
        case MASKD_INT64: e = json_integer(((const int64_t *)t->data)[i]); break;
        default: e = NULL; break;
        }
        json_array_append_new(a, e ? e : json_null());
    }
    return a;
}

static void v2_run(mk_job *job, int worker)
{
    mk_req *r = (mk_req *)((char *)job - offsetof(mk_req, job));
    v2_work *w = r->work;
    maskd_session *s = r->st->sessions[worker * r->st->n_models + r->model_index];
    const mk_model *m = &r->st->models[r->model_index];
    maskd_error err = {0};
    double t0 = srv_now_ms();
    if (maskd_session_run(s, w->inputs, w->n_inputs, &err)) {
        r->timing.infer_ms = srv_now_ms() - t0;
        w->status = err.code == MASKD_ERR_SHAPE || err.code == MASKD_ERR_INVALID ? 400 : 500;
        w->code = w->status == 400 ? "invalid_tensor" : "inference_failed";
        snprintf(w->message, sizeof w->message, "%s", err.message);
        return;
    }
    r->timing.infer_ms = srv_now_ms() - t0;
    t0 = srv_now_ms();
    json_t *outs = json_array();
    for (int i = 0; i < maskd_model_num_outputs(m->graph) && i < 64; i++) {
        if (!w->want[i]) continue;
        const maskd_tensor *t = maskd_session_output(s, i);
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->dims[d]));
        json_t *o = json_pack("{s:s,s:s,s:o}", "name", maskd_model_output(m->graph, i)->name,
                              "datatype", v2_type_name(t->dtype), "shape", shape);
        if (w->binary_out[i]) {
            size_t bytes = (size_t)maskd_tensor_numel(t) * maskd_dtype_size(t->dtype);
            char *nb = realloc(w->binary, w->binary_len + bytes + 1);
            if (nb) {
                w->binary = nb;
                if (bytes) memcpy(w->binary + w->binary_len, t->data, bytes);
                w->binary_len += bytes;
            }
            json_object_set_new(o, "parameters", json_pack("{s:I}", "binary_data_size", (json_int_t)bytes));
        } else {
            json_object_set_new(o, "data", tensor_data_json(t));
        }
        json_array_append_new(outs, o);
    }
    w->answer = json_pack("{s:s,s:s,s:o}", "model_name", m->name, "model_version", "1", "outputs", outs);
    json_t *id = json_object_get(w->request, "id");
    if (json_is_string(id)) json_object_set(w->answer, "id", id);
    r->timing.post_ms = srv_now_ms() - t0;
    w->status = 200;
}

static void v2_finish(mk_job *job, mk_job_outcome outcome)
{
    mk_req *r = (mk_req *)((char *)job - offsetof(mk_req, job));
    v2_work *w = r->work;
    r->timing.queue_ms = job->t_started - job->t_enqueued;
    if (outcome == MK_JOB_EXPIRED) {
        mk_reply_error(r, 504, "deadline_exceeded", "the request waited %.0f ms in the queue, past deadline_ms (%d)",
                       r->timing.queue_ms, r->st->cfg.deadline_ms);
    } else if (w->status != 200) {
        mk_reply_error(r, w->status, w->code, "%s", w->message);
    } else if (!w->any_binary) {
        mk_reply_json(r, 200, w->answer);
        w->answer = NULL;
    } else {
        char *js = json_dumps(w->answer, JSON_COMPACT | JSON_PRESERVE_ORDER);
        size_t jl = js ? strlen(js) : 0;
        char *all = js ? malloc(jl + w->binary_len + 1) : NULL;
        if (!all) {
            free(js);
            mk_reply_error(r, 500, "internal_error", "out of memory");
        } else {
            memcpy(all, js, jl);
            if (w->binary_len) memcpy(all + jl, w->binary, w->binary_len);
            free(js);
            mk_reply_buffer(r, 200, "application/octet-stream", all, jl + w->binary_len);
            char hl[32];
            snprintf(hl, sizeof hl, "%zu", jl);
            MHD_add_response_header(r->response, "Inference-Header-Content-Length", hl);
        }
    }
    mk_req_resume(r);
}

/* The image path answers through the predict machinery, which brings its own work. */
static void drop_v2_work(mk_req *r)
{
    if (r->work_free) r->work_free(r->work);
    r->work = NULL;
    r->work_free = NULL;
}

static const char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static unsigned char *base64_decode(const char *s, size_t n, size_t *out_len)
{
    unsigned char *out = malloc(n / 4 * 3 + 4);
    if (!out) return NULL;
    unsigned acc = 0;
    int bits = 0;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '=') break;
        if (c == '\n' || c == '\r' || c == ' ') continue;
        const char *p = c ? strchr(b64_alphabet, c) : NULL;
        if (c == '-') p = b64_alphabet + 62; /* URL-safe alphabet too */
        if (c == '_') p = b64_alphabet + 63;
        if (!p) {
            free(out);
            return NULL;
        }
        acc = (acc << 6) | (unsigned)(p - b64_alphabet);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[k++] = (unsigned char)(acc >> bits);
        }
    }
    *out_len = k;
    return out;
}

#define V2_FAIL(...)                                                                            \
    do {                                                                                        \
        mk_reply_error(r, 400, "invalid_request", __VA_ARGS__);                                 \
        return;                                                                                 \
    } while (0)

/* A BYTES input for an image model: one element, base64 in JSON or
 * length-prefixed (4 bytes, little-endian) in the binary section. */
static void infer_image(mk_req *r, json_t *in, const unsigned char *bin, size_t bin_len, size_t *bin_off)
{
    json_t *shape = json_object_get(in, "shape");
    if (!json_is_array(shape) || json_array_size(shape) != 1 || json_integer_value(json_array_get(shape, 0)) != 1)
        V2_FAIL("a BYTES image input must have shape [1]");
    json_t *params = json_object_get(in, "parameters");
    json_t *bds = params ? json_object_get(params, "binary_data_size") : NULL;
    if (bds) {
        if (!json_is_integer(bds) || json_integer_value(bds) < 4 ||
            (size_t)json_integer_value(bds) > bin_len - *bin_off)
            V2_FAIL("binary_data_size of the image input does not fit the binary section");
        const unsigned char *p = bin + *bin_off;
        size_t total = (size_t)json_integer_value(bds);
        size_t len = (size_t)p[0] | (size_t)p[1] << 8 | (size_t)p[2] << 16 | (size_t)p[3] << 24;
        if (len != total - 4) V2_FAIL("the BYTES element's length prefix (%zu) does not match binary_data_size - 4", len);
        *bin_off += total;
        if (*bin_off != bin_len) V2_FAIL("the binary section has bytes that no input claims");
        drop_v2_work(r);
        mk_image_predict(r, p + 4, len, NULL, MK_ANSWER_V2);
        return;
    }
    json_t *data = json_object_get(in, "data");
    if (json_is_array(data) && json_array_size(data) == 1) data = json_array_get(data, 0);
    const char *b64 = NULL;
    if (json_is_string(data)) b64 = json_string_value(data);
    else if (json_is_object(data) && json_is_string(json_object_get(data, "b64")))
        b64 = json_string_value(json_object_get(data, "b64"));
    if (!b64) V2_FAIL("a BYTES image input wants data: [\"<base64 JPEG or PNG>\"]");
    size_t len;
    unsigned char *img = base64_decode(b64, strlen(b64), &len);
    if (!img) V2_FAIL("the BYTES image input is not valid base64");
    if (!len) {
        free(img);
        mk_reply_error(r, 400, "empty_image", "the BYTES image input is empty");
        return;
    }
    drop_v2_work(r);
    mk_image_predict(r, img, len, img, MK_ANSWER_V2);
}

void mk_v2_infer(mk_req *r)
{
    const mk_model *m = &r->st->models[r->model_index];
    size_t json_len = r->body_len;
    const char *hl = mk_req_header(r, "Inference-Header-Content-Length");
    if (hl) {
        char *end;
        long long v = strtoll(hl, &end, 10);
        if (end == hl || *end || v < 0 || (size_t)v > r->body_len)
            V2_FAIL("Inference-Header-Content-Length (%.30s) is not a length within the body", hl);
        json_len = (size_t)v;
    }
    if (!json_len) V2_FAIL("the request has no JSON body");
    json_error_t jerr;
    json_t *root = json_loadb(r->body ? r->body : "", json_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) V2_FAIL("the JSON body is malformed: line %d column %d: %s", jerr.line, jerr.column, jerr.text);
    v2_work *w = calloc(1, sizeof *w);
    if (!w) {
        json_decref(root);
        mk_reply_error(r, 503, "out_of_memory", "the server is out of memory");
        return;
    }
    w->request = root;
    r->work = w;
    r->work_free = v2_work_free;
    const unsigned char *bin = (const unsigned char *)r->body + json_len;
    size_t bin_len = r->body_len - json_len, bin_off = 0;

    if (!json_is_object(root)) V2_FAIL("the JSON body must be an object with \"inputs\"");
    json_t *inputs = json_object_get(root, "inputs");
    if (!json_is_array(inputs) || !json_array_size(inputs))
        V2_FAIL("\"inputs\" must be a non-empty array");
    if (json_object_get(root, "id") && !json_is_string(json_object_get(root, "id")))
        V2_FAIL("\"id\" must be a string");

    json_t *jid = json_object_get(root, "id");
    if (json_is_string(jid)) snprintf(r->v2_id, sizeof r->v2_id, "%s", json_string_value(jid));

    /* the image form */
    json_t *first = json_array_get(inputs, 0);
    if (json_is_object(first) && json_is_string(json_object_get(first, "datatype")) &&
        !strcmp(json_string_value(json_object_get(first, "datatype")), "BYTES")) {
        if (!m->pipeline)
            V2_FAIL("model '%s' takes tensors, not an encoded image (BYTES)", m->name);
        if (json_array_size(inputs) != 1) V2_FAIL("an image request has exactly one BYTES input");
        infer_image(r, first, bin, bin_len, &bin_off);
        return;
    }

    int n_in = maskd_model_num_inputs(m->graph);
    if (n_in > 16) V2_FAIL("models with more than 16 inputs are not served over v2");
    if ((int)json_array_size(inputs) != n_in)
        V2_FAIL("model '%s' has %d input(s); the request gives %zu", m->name, n_in, json_array_size(inputs));
    w->n_inputs = n_in;
    size_t idx;
    json_t *in;
    bool given[16] = {0};
    json_array_foreach(inputs, idx, in)
    {
        if (!json_is_object(in)) V2_FAIL("inputs[%zu] must be an object", idx);
        json_t *jname = json_object_get(in, "name"), *jshape = json_object_get(in, "shape"),
               *jtype = json_object_get(in, "datatype");
        if (!json_is_string(jname) || !json_is_array(jshape) || !json_is_string(jtype))
            V2_FAIL("inputs[%zu] needs \"name\", \"shape\" and \"datatype\"", idx);
        const char *name = json_string_value(jname);
        int k = maskd_model_input_index(m->graph, name);
        if (k < 0) V2_FAIL("model '%s' has no input named '%.60s'", m->name, name);
        if (given[k]) V2_FAIL("input '%.60s' is given twice", name);
        given[k] = true;
        const maskd_value_info *vi = maskd_model_input(m->graph, k);
        maskd_dtype dt = v2_type_parse(json_string_value(jtype));
        if (dt == MASKD_UNDEFINED) V2_FAIL("inputs[%zu]: unknown datatype '%.20s'", idx, json_string_value(jtype));
        if (dt != vi->dtype)
            V2_FAIL("input '%s' is %s, the request sends %s", vi->name, v2_type_name(vi->dtype), v2_type_name(dt));
        size_t nd = json_array_size(jshape);
        if ((int)nd != vi->ndim)
            V2_FAIL("input '%s' has %d dimensions, the request's shape has %zu", vi->name, vi->ndim, nd);
        maskd_tensor *t = &w->inputs[k];
        t->dtype = dt;
        t->ndim = (int)nd;
        int64_t numel = 1;
        for (size_t d = 0; d < nd; d++) {
            json_t *e = json_array_get(jshape, d);
            if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > (1LL << 31))
                V2_FAIL("input '%s': shape[%zu] must be a whole number >= 0", vi->name, d);
            int64_t dim = json_integer_value(e);
            if (vi->dims[d] >= 0 && vi->dims[d] != dim)
                V2_FAIL("input '%s': shape[%zu] must be %lld, the request has %lld", vi->name, d,
                        (long long)vi->dims[d], (long long)dim);
            t->dims[d] = dim;
            if (dim && numel > (1LL << 40) / dim) V2_FAIL("input '%s' is too large", vi->name);
            numel *= dim;
        }
        size_t esize = maskd_dtype_size(dt);
        size_t bytes = (size_t)numel * esize;
        if (bytes > (size_t)r->st->cfg.max_body_bytes * 8)
            V2_FAIL("input '%s' is too large", vi->name);
        json_t *params = json_object_get(in, "parameters");
        json_t *bds = json_is_object(params) ? json_object_get(params, "binary_data_size") : NULL;
        if (bds) {
            if (!json_is_integer(bds) || (size_t)json_integer_value(bds) != bytes)
                V2_FAIL("input '%s': binary_data_size must be %zu for shape and datatype", vi->name, bytes);
            if (bytes > bin_len - bin_off)
                V2_FAIL("input '%s': the binary section ends early", vi->name);
            w->buffers[k] = malloc(bytes + 1);
            if (!w->buffers[k]) V2_FAIL("out of memory");
            memcpy(w->buffers[k], bin + bin_off, bytes);
            bin_off += bytes;
        } else {
            json_t *data = json_object_get(in, "data");
            if (!json_is_array(data)) V2_FAIL("input '%s' needs \"data\" (or binary_data_size)", vi->name);
            json_t *flat = json_array();
            if (flatten(data, flat, 0)) {
                json_decref(flat);
                V2_FAIL("input '%s': data is nested too deeply", vi->name);
            }
            if ((int64_t)json_array_size(flat) != numel) {
                size_t got = json_array_size(flat);
                json_decref(flat);
                V2_FAIL("input '%s': shape wants %lld elements, data has %zu", vi->name, (long long)numel, got);
            }
            w->buffers[k] = malloc(bytes + 1);
            char msg[200];
            if (!w->buffers[k] || fill_from_json(flat, dt, w->buffers[k], numel, msg, sizeof msg)) {
                json_decref(flat);
                V2_FAIL("input '%s': %s", vi->name, w->buffers[k] ? msg : "out of memory");
            }
            json_decref(flat);
        }
        t->data = w->buffers[k];
    }
    if (bin_off != bin_len) V2_FAIL("the binary section has %zu bytes that no input claims", bin_len - bin_off);

    json_t *bdo = json_object_get(json_object_get(root, "parameters"), "binary_data_output");
    bool all_binary = json_is_true(bdo);
    int n_out = maskd_model_num_outputs(m->graph);
    json_t *outputs = json_object_get(root, "outputs");
    if (outputs && !json_is_array(outputs)) V2_FAIL("\"outputs\" must be an array");
    if (!outputs || !json_array_size(outputs)) {
        for (int i = 0; i < n_out && i < 64; i++) w->want[i] = true, w->binary_out[i] = all_binary;
    } else {
        json_array_foreach(outputs, idx, in)
        {
            const char *name = json_string_value(json_object_get(in, "name"));
            int k = name ? maskd_model_output_index(m->graph, name) : -1;
            if (k < 0 || k >= 64) V2_FAIL("model '%s' has no output named '%.60s'", m->name, name ? name : "");
            w->want[k] = true;
            json_t *bd = json_object_get(json_object_get(in, "parameters"), "binary_data");
            w->binary_out[k] = bd ? json_is_true(bd) : all_binary;
        }
    }
    for (int i = 0; i < 64; i++) w->any_binary |= w->want[i] && w->binary_out[i];
    if (!atomic_load(&m->ready)) {
        mk_reply_error(r, 503, "model_not_ready", "model '%s' is still warming up", m->name);
        return;
    }
    r->job.run = v2_run;
    r->job.finish = v2_finish;
    mk_req_submit(r);
}
