/* Prometheus text exposition (format 0.0.4).  Label values come only from the
 * route table, the configured model names and status codes, never from what a
 * client typed, so the number of series stays bounded. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"

#ifndef MASKD_VERSION
#define MASKD_VERSION "dev"
#endif

static const double bucket_s[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                  0.25,  0.5,    1,     2.5,  5,     10,   30};
enum { N_BUCKETS = sizeof bucket_s / sizeof bucket_s[0], MAX_SERIES = 512 };

typedef struct histogram {
    unsigned long long counts[N_BUCKETS + 1]; /* the last one is +Inf */
    unsigned long long n;
    double sum;
} histogram;

typedef struct series {
    char route[64];
    char model[72];
    int status;
    unsigned long long requests;
} series;

typedef enum { H_TOTAL, H_QUEUE, H_DECODE, H_INFER, H_POST, N_HIST } hist_kind;

typedef struct hist_series {
    char label[72]; /* the route for H_TOTAL, the model for the rest */
    histogram h[N_HIST];
} hist_series;

static struct {
    pthread_mutex_t lock;
    series req[MAX_SERIES];
    int n_req;
    hist_series by_route[64];
    int n_route;
    hist_series by_model[128];
    int n_model;
    int models_loaded;
} m = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void observe(histogram *h, double ms)
{
    double s = ms / 1000;
    int i = 0;
    while (i < N_BUCKETS && s > bucket_s[i]) i++;
    h->counts[i]++;
    h->n++;
    h->sum += s;
}

static hist_series *hist_for(hist_series *arr, int *n, int cap, const char *label)
{
    for (int i = 0; i < *n; i++)
        if (!strcmp(arr[i].label, label)) return &arr[i];
    if (*n == cap) return NULL;
    hist_series *s = &arr[(*n)++];
    memset(s, 0, sizeof *s);
    snprintf(s->label, sizeof s->label, "%s", label);
    return s;
}

void mk_metrics_observe(const mk_req *r, double total_ms)
{
    const char *route = r->route ? r->route->pattern : "unmatched";
    const char *model = r->model_index >= 0 ? r->model : "";
    pthread_mutex_lock(&m.lock);
    series *s = NULL;
    for (int i = 0; i < m.n_req && !s; i++)
        if (m.req[i].status == r->status && !strcmp(m.req[i].route, route) &&
            !strcmp(m.req[i].model, model))
            s = &m.req[i];
    if (!s && m.n_req < MAX_SERIES) {
        s = &m.req[m.n_req++];
        memset(s, 0, sizeof *s);
        snprintf(s->route, sizeof s->route, "%s", route);
        snprintf(s->model, sizeof s->model, "%s", model);
        s->status = r->status;
    }
    if (s) s->requests++;
    hist_series *h = hist_for(m.by_route, &m.n_route, 64, route);
    if (h) observe(&h->h[H_TOTAL], total_ms);
    if (model[0] && r->timing.queue_ms + r->timing.infer_ms > 0) {
        h = hist_for(m.by_model, &m.n_model, 128, model);
        if (h) {
            observe(&h->h[H_QUEUE], r->timing.queue_ms);
            if (r->timing.decode_ms > 0) observe(&h->h[H_DECODE], r->timing.decode_ms);
            if (r->timing.infer_ms > 0) observe(&h->h[H_INFER], r->timing.infer_ms);
            if (r->timing.post_ms > 0) observe(&h->h[H_POST], r->timing.post_ms);
        }
    }
    pthread_mutex_unlock(&m.lock);
}

void mk_metrics_model_loaded(int n)
{
    pthread_mutex_lock(&m.lock);
    m.models_loaded = n;
    pthread_mutex_unlock(&m.lock);
}

typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

static void put(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(buf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (w < 0) return;
        if (b->p && b->len + (size_t)w < b->cap) {
            b->len += (size_t)w;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 16384;
        while (cap < b->len + (size_t)w + 1) cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) return;
        b->p = np;
        b->cap = cap;
    }
}

static void put_hist(buf *b, const char *name, const char *label_name, const char *label,
                     const histogram *h)
{
    unsigned long long cum = 0;
    for (int i = 0; i < N_BUCKETS; i++) {
        cum += h->counts[i];
        put(b, "%s_bucket{%s=\"%s\",le=\"%g\"} %llu\n", name, label_name, label, bucket_s[i], cum);
    }
    cum += h->counts[N_BUCKETS];
    put(b, "%s_bucket{%s=\"%s\",le=\"+Inf\"} %llu\n", name, label_name, label, cum);
    put(b, "%s_sum{%s=\"%s\"} %.6f\n", name, label_name, label, h->sum);
    put(b, "%s_count{%s=\"%s\"} %llu\n", name, label_name, label, h->n);
}

char *mk_metrics_render(size_t *len)
{
    buf b = {0};
    mk_state *st = mk_state_acquire();
    int ready = st && mk_state_ready(st) && !mk_draining();
    if (st) mk_state_release(st);
    int queued = mk_admission_queued(), running = mk_admission_running();
    int active = mk_http_active_requests();

    pthread_mutex_lock(&m.lock);
    put(&b, "# HELP maskd_build_info The maskd version serving.\n# TYPE maskd_build_info gauge\n");
    put(&b, "maskd_build_info{version=\"%s\"} 1\n", MASKD_VERSION);
    put(&b, "# HELP maskd_requests_total HTTP requests answered, by route, model and status.\n");
    put(&b, "# TYPE maskd_requests_total counter\n");
    for (int i = 0; i < m.n_req; i++)
        put(&b, "maskd_requests_total{route=\"%s\",model=\"%s\",status=\"%d\"} %llu\n", m.req[i].route,
            m.req[i].model, m.req[i].status, m.req[i].requests);
    put(&b, "# HELP maskd_request_duration_seconds Time from the request's headers to its answer.\n");
    put(&b, "# TYPE maskd_request_duration_seconds histogram\n");
    for (int i = 0; i < m.n_route; i++)
        put_hist(&b, "maskd_request_duration_seconds", "route", m.by_route[i].label,
                 &m.by_route[i].h[H_TOTAL]);
    static const struct {
        hist_kind kind;
        const char *name, *help;
    } stages[] = {
        {H_QUEUE, "maskd_queue_wait_seconds", "Time a job waited for an inference worker."},
        {H_DECODE, "maskd_decode_seconds", "Image decoding time."},
        {H_INFER, "maskd_inference_seconds", "Graph execution time."},
        {H_POST, "maskd_postprocess_seconds", "Post-processing time (NMS, masks, JSON)."},
    };
    for (size_t s = 0; s < sizeof stages / sizeof stages[0]; s++) {
        put(&b, "# HELP %s %s\n# TYPE %s histogram\n", stages[s].name, stages[s].help, stages[s].name);
        for (int i = 0; i < m.n_model; i++)
            put_hist(&b, stages[s].name, "model", m.by_model[i].label, &m.by_model[i].h[stages[s].kind]);
    }
    put(&b, "# HELP maskd_queue_depth Jobs waiting for an inference worker.\n");
    put(&b, "# TYPE maskd_queue_depth gauge\nmaskd_queue_depth %d\n", queued);
    put(&b, "# HELP maskd_inferences_running Jobs on an inference worker now.\n");
    put(&b, "# TYPE maskd_inferences_running gauge\nmaskd_inferences_running %d\n", running);
    put(&b, "# HELP maskd_requests_in_flight Requests received and not yet answered.\n");
    put(&b, "# TYPE maskd_requests_in_flight gauge\nmaskd_requests_in_flight %d\n", active);
    put(&b, "# HELP maskd_models_loaded Models loaded and serving.\n");
    put(&b, "# TYPE maskd_models_loaded gauge\nmaskd_models_loaded %d\n", m.models_loaded);
    put(&b, "# HELP maskd_ready Whether the daemon takes traffic (1) or not (0).\n");
    put(&b, "# TYPE maskd_ready gauge\nmaskd_ready %d\n", ready);
    pthread_mutex_unlock(&m.lock);
    *len = b.len;
    return b.p;
}
