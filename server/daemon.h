/*
 * The daemon's internals shared by http.c, routes.c, upload.c, v2.c,
 * admission.c, metrics.c, log.c and serve.c.
 *
 * Threads: libmicrohttpd's few connection threads do I/O, routing, health,
 * metrics and cheap checks; they never run a model.  Inference happens on the
 * admission workers; a connection waiting for one is suspended in MHD and
 * resumed by the worker that finished it, so no connection thread waits.
 */
#ifndef MASKD_DAEMON_H
#define MASKD_DAEMON_H

#include <jansson.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "maskd/engine.h"
#include "maskd/pipeline.h"

double srv_now_ms(void); /* monotonic */

/* ---- models and the served state (serve.c) ------------------------------ */

typedef struct mk_model {
    char *name;
    char *card_path;
    char *onnx_path;
    json_t *card;          /* the card as read, for GET /v1/models/{m} */
    maskd_model *graph;    /* the raw graph (v2 infer) */
    void *pipeline;        /* the image pipeline, when the card names one */
    atomic_bool ready;     /* after one warm-up inference */
} mk_model;

/* One generation of configuration + models.  SIGHUP builds a new one and swaps
 * it in; requests keep a reference to the one they started with, so a reload
 * never pulls a model out from under a running request. */
typedef struct mk_state {
    atomic_int refs;
    maskd_config cfg;
    mk_model *models;
    int n_models;
    int n_workers;
    maskd_session **sessions; /* [worker * n_models + model] */
    void **pipeline_runs;     /* per-worker pipeline instances, same layout (or NULL) */
} mk_state;

mk_state *mk_state_acquire(void); /* the current state, referenced */
void mk_state_release(mk_state *st);
int mk_state_find(const mk_state *st, const char *name); /* model index or -1 */
bool mk_state_ready(const mk_state *st);                 /* all models warm */

bool mk_draining(void);
bool mk_stopping(void); /* past the grace period: refuse new work */

/* ---- admission (admission.c) --------------------------------------------- */

typedef enum mk_job_outcome { MK_JOB_RAN = 0, MK_JOB_EXPIRED = 1 } mk_job_outcome;

typedef struct mk_job {
    /* Optional, before run: the part of the job that needs no worker (decoding
     * the image).  While every worker is busy, a preparer thread does it for
     * the jobs next in line, so it overlaps another job's inference instead of
     * adding to it; a worker that reaches a job first does it itself. */
    void (*prepare)(struct mk_job *job);
    /* On a worker thread: the inference.  `worker` picks the per-worker sessions. */
    void (*run)(struct mk_job *job, int worker);
    /* After run, or instead of it when the deadline passed in the queue; on the
     * worker or the reaper thread. */
    void (*finish)(struct mk_job *job, mk_job_outcome outcome);
    double t_enqueued, t_deadline, t_started;
    int prep; /* admission.c's: prepare not begun, underway or done */
    struct mk_job *next;
} mk_job;

int mk_admission_start(int workers, char *err, size_t err_size);
/* 0: queued; -1: the queue is full (answer 503 at once). */
int mk_admission_submit(mk_job *job, int queue_depth, int deadline_ms);
/* Waits until the queue is empty and no job runs, then stops the workers. */
void mk_admission_stop(void);
int mk_admission_queued(void);
int mk_admission_running(void);
int mk_admission_workers(void);

/* ---- requests (http.c) -------------------------------------------------- */

typedef struct mk_route mk_route;

typedef struct mk_timing {
    double decode_ms, queue_ms, infer_ms, post_ms;
} mk_timing;

typedef enum mk_phase { PH_HEADERS, PH_ANSWERED, PH_BODY, PH_WAITING, PH_DONE } mk_phase;

typedef struct mk_req {
    struct MHD_Connection *conn;
    mk_state *st;
    char id[72];
    char v2_id[128]; /* the "id" of a v2 request, echoed in its answer */
    char method[16];
    const mk_route *route;
    char model[72]; /* the {model} path segment */
    int model_index;
    double t_start;
    mk_timing timing;
    mk_phase phase;

    /* the body (upload.c) */
    char *body;
    size_t body_len, body_cap;
    size_t body_seen; /* counted even when not kept, for the 413 check */
    long long content_length; /* -1 when absent */
    struct MHD_PostProcessor *pp;
    bool multipart;
    bool image_field_seen;
    int body_error; /* 0, or the HTTP status decided while streaming */
    const char *body_error_code;
    char body_error_msg[160];

    /* the answer */
    int status;
    const char *error_code; /* for the log */
    struct MHD_Response *response;
    size_t bytes_out;
    bool retry_after;

    /* the inference, when the route needs one */
    mk_job job;
    void *work;                       /* route-specific */
    void (*work_free)(void *work);
} mk_req;

/* Build the answer; the http layer adds X-Request-Id, Server-Timing, CORS and
 * Retry-After when it sends it. */
void mk_reply_json(mk_req *r, int status, json_t *body); /* steals body */
void mk_reply_error(mk_req *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void mk_reply_empty(mk_req *r, int status);
void mk_reply_buffer(mk_req *r, int status, const char *content_type, char *data, size_t len); /* takes data */

/* Called by a route's job when the answer is ready: wakes the connection. */
void mk_req_resume(mk_req *r);
/* Submits r->job (run/finish set by the route) and parks the connection;
 * answers 503 itself when the queue is full. */
void mk_req_submit(mk_req *r);

const char *mk_req_header(mk_req *r, const char *name);
const char *mk_req_query(mk_req *r, const char *name);

int mk_http_start(const maskd_config *cfg, char *err, size_t err_size);
int mk_http_port(void);
void mk_http_quiesce(void);        /* stop accepting connections */
int mk_http_active_requests(void); /* requests begun and not yet answered */
void mk_http_stop(void);

/* ---- routes (routes.c, v2.c) --------------------------------------------- */

enum {
    ROUTE_PUBLIC = 1,    /* no API key (health) */
    ROUTE_BODY = 2,      /* takes a body */
    ROUTE_IMAGE = 4,     /* the body is an image (raw or multipart) */
    ROUTE_NO_LOG = 8,    /* probes would flood the log */
};

struct mk_route {
    const char *method;
    const char *pattern; /* "/v1/models/{model}/predict"; also the metrics label */
    int flags;
    void (*handle)(mk_req *r); /* headers (and the body, for ROUTE_BODY) are in */
};

/* Finds the route; *method_mismatch when only the method is wrong. */
const mk_route *mk_route_match(const char *method, const char *url, char *model, size_t model_size,
                               bool *method_mismatch, char *allow, size_t allow_size);

void mk_v2_server(mk_req *r);
void mk_v2_live(mk_req *r);
void mk_v2_ready(mk_req *r);
void mk_v2_model(mk_req *r);
void mk_v2_model_ready(mk_req *r);
void mk_v2_infer(mk_req *r);

/* ---- image requests (routes.c) ------------------------------------------- */

typedef enum mk_image_answer { MK_ANSWER_V1 = 0, MK_ANSWER_V2 = 1 } mk_image_answer;

/* Probes the image, queues decode + pipeline for r->model_index and answers
 * with the pipeline's JSON (v1) or that JSON inside a v2 BYTES output.
 * `data` must live as long as r (the body, or `owned`, which r frees). */
void mk_image_predict(mk_req *r, const unsigned char *data, size_t size, unsigned char *owned,
                      mk_image_answer kind);
/* The answer document for a result (server/respond.c's JSON, plus timings). */
json_t *mk_result_json(const maskd_result *res, const mk_timing *t, mk_image_answer kind,
                       const char *model, const char *request_id, maskd_error *err);

/* ---- upload (upload.c) --------------------------------------------------- */

/* First call: limits and content type; 0 when the body may come. */
int mk_upload_begin(mk_req *r);
/* Each chunk; 0 to go on. */
int mk_upload_chunk(mk_req *r, const char *data, size_t size);
/* The body is complete; 0 when r->body holds it (the image, for multipart). */
int mk_upload_end(mk_req *r);
void mk_upload_free(mk_req *r);

/* ---- metrics (metrics.c) and log (log.c) ----------------------------------- */

void mk_metrics_observe(const mk_req *r, double total_ms);
void mk_metrics_model_loaded(int n);
char *mk_metrics_render(size_t *len);

void mk_log_request(const mk_req *r, double total_ms);
void mk_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mk_log_set_format(maskd_log_format f);

#endif
