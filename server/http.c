/* libmicrohttpd glue: one access handler drives every request through
 * headers -> body -> (queued inference) -> answer, and one completion
 * callback counts, logs and frees it. */
#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"

static struct MHD_Daemon *daemon_handle;
static atomic_int active_requests;
static atomic_ullong request_counter;
static unsigned long long request_seed;

double srv_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

const char *mk_req_header(mk_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *mk_req_query(mk_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

int mk_http_active_requests(void)
{
    return active_requests;
}

/* ---- answers ------------------------------------------------------------- */

void mk_reply_buffer(mk_req *r, int status, const char *content_type, char *data, size_t len)
{
    if (r->response) MHD_destroy_response(r->response);
    r->response = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
    if (!r->response) {
        free(data);
        return;
    }
    if (content_type) MHD_add_response_header(r->response, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    r->status = status;
    r->bytes_out = len;
}

void mk_reply_json(mk_req *r, int status, json_t *body)
{
    char *s = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    json_decref(body);
    if (!s) {
        s = strdup("{\"error\":\"the answer could not be encoded\",\"code\":\"internal_error\"}");
        status = 500;
    }
    size_t n = strlen(s);
    /* a trailing newline makes curl output readable */
    char *t = realloc(s, n + 2);
    if (t) {
        t[n++] = '\n';
        t[n] = 0;
        s = t;
    }
    mk_reply_buffer(r, status, "application/json", s, n);
}

void mk_reply_error(mk_req *r, int status, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Messages quote paths and names from the request: keep them valid
     * UTF-8 (JSON) and free of control characters (logs). */
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f) *p = '?';
    json_t *o = json_object();
    json_object_set_new(o, "error", json_string(msg));
    json_object_set_new(o, "code", json_string(code));
    r->error_code = code;
    if (status == 503) r->retry_after = true;
    mk_reply_json(r, status, o);
}

void mk_reply_empty(mk_req *r, int status)
{
    if (r->response) MHD_destroy_response(r->response);
    r->response = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    r->status = status;
    r->bytes_out = 0;
}

static void add_cors(mk_req *r, struct MHD_Response *resp)
{
    const char *origin = mk_req_header(r, "Origin");
    if (!origin || !r->st || !maskd_config_origin_allowed(&r->st->cfg, origin)) return;
    MHD_add_response_header(resp, "Access-Control-Allow-Origin", origin);
    MHD_add_response_header(resp, "Vary", "Origin");
    MHD_add_response_header(resp, "Access-Control-Expose-Headers", "X-Request-Id, Server-Timing, Retry-After");
}

static enum MHD_Result send_reply(mk_req *r)
{
    struct MHD_Response *resp = r->response;
    r->response = NULL;
    r->phase = PH_DONE;
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    char timing[256];
    snprintf(timing, sizeof timing,
             "decode;dur=%.2f, queue;dur=%.2f, infer;dur=%.2f, post;dur=%.2f, total;dur=%.2f",
             r->timing.decode_ms, r->timing.queue_ms, r->timing.infer_ms, r->timing.post_ms,
             srv_now_ms() - r->t_start);
    MHD_add_response_header(resp, "Server-Timing", timing);
    if (r->retry_after) MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (mk_stopping()) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    add_cors(r, resp);
    enum MHD_Result rc = MHD_queue_response(r->conn, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    return rc;
}

/* ---- request lifecycle --------------------------------------------------- */

static bool valid_request_id(const char *s)
{
    size_t n = strlen(s);
    if (!n || n > 64) return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("-_.:", *s)) return false;
    return true;
}

static mk_req *req_new(struct MHD_Connection *conn, const char *method)
{
    mk_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->conn = conn;
    r->t_start = srv_now_ms();
    r->model_index = -1;
    snprintf(r->method, sizeof r->method, "%s", method);
    r->st = mk_state_acquire();
    const char *cid = mk_req_header(r, "X-Request-Id");
    if (cid && valid_request_id(cid)) {
        snprintf(r->id, sizeof r->id, "%s", cid);
    } else {
        unsigned long long n = atomic_fetch_add(&request_counter, 1) + 1;
        snprintf(r->id, sizeof r->id, "%016llx", request_seed ^ (n * 0x9E3779B97F4A7C15ULL));
    }
    atomic_fetch_add(&active_requests, 1);
    return r;
}

static void req_free(mk_req *r)
{
    if (r->response) MHD_destroy_response(r->response);
    if (r->work_free) r->work_free(r->work);
    mk_upload_free(r);
    if (r->st) mk_state_release(r->st);
    atomic_fetch_sub(&active_requests, 1);
    free(r);
}

/* Constant-time in the key's content: every configured key is compared in
 * full, whatever matched before. */
static bool key_matches(const maskd_config *cfg, const char *given)
{
    size_t gl = strlen(given);
    unsigned ok = 0;
    for (int i = 0; i < cfg->n_api_keys; i++) {
        const char *k = cfg->api_keys[i];
        size_t kl = strlen(k);
        unsigned diff = (unsigned)(kl ^ gl);
        for (size_t j = 0; j < kl; j++) diff |= (unsigned char)k[j] ^ (unsigned char)(j < gl ? given[j] : 0);
        ok |= (diff == 0);
    }
    return ok != 0;
}

static bool authorized(mk_req *r)
{
    const maskd_config *cfg = &r->st->cfg;
    if (!cfg->n_api_keys || (r->route && (r->route->flags & ROUTE_PUBLIC))) return true;
    const char *auth = mk_req_header(r, MHD_HTTP_HEADER_AUTHORIZATION);
    if (auth && !strncasecmp(auth, "Bearer ", 7)) {
        const char *tok = auth + 7;
        while (*tok == ' ') tok++;
        if (key_matches(cfg, tok)) return true;
    }
    const char *key = mk_req_header(r, "X-API-Key");
    return key && key_matches(cfg, key);
}

static void preflight(mk_req *r)
{
    const char *origin = mk_req_header(r, "Origin");
    if (!origin || !maskd_config_origin_allowed(&r->st->cfg, origin)) {
        mk_reply_error(r, 403, "cors_origin_denied", "origin '%.100s' is not on cors_origins",
                       origin ? origin : "");
        return;
    }
    mk_reply_empty(r, 204);
    MHD_add_response_header(r->response, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    MHD_add_response_header(r->response, "Access-Control-Allow-Headers",
                            "Authorization, X-API-Key, Content-Type, X-Request-Id, "
                            "Inference-Header-Content-Length");
    MHD_add_response_header(r->response, "Access-Control-Max-Age", "600");
}

/* Everything decided from the request line and headers. */
static void begin(mk_req *r, const char *url, const char *method)
{
    if (!r->st) {
        mk_reply_error(r, 503, "not_ready", "the server is starting");
        return;
    }
    if (!strcmp(method, "OPTIONS") && mk_req_header(r, "Access-Control-Request-Method")) {
        preflight(r);
        return;
    }
    bool wrong_method = false;
    char allow[64] = "";
    const char *match_method = strcmp(method, "HEAD") ? method : "GET";
    r->route = mk_route_match(match_method, url, r->model, sizeof r->model, &wrong_method, allow,
                              sizeof allow);
    if (!r->route) {
        if (wrong_method) {
            mk_reply_error(r, 405, "method_not_allowed", "%s is not allowed here (allowed: %s)", method,
                           allow);
            MHD_add_response_header(r->response, MHD_HTTP_HEADER_ALLOW, allow);
        } else {
            mk_reply_error(r, 404, "not_found", "no route for %.200s", url);
        }
        r->model[0] = 0;
        return;
    }
    if (r->model[0]) r->model_index = mk_state_find(r->st, r->model);
    if (!authorized(r)) {
        mk_reply_error(r, 401, "unauthorized",
                       "a valid API key is required (Authorization: Bearer <key> or X-API-Key)");
        MHD_add_response_header(r->response, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
        return;
    }
    if (mk_stopping() && !(r->route->flags & ROUTE_PUBLIC)) {
        mk_reply_error(r, 503, "draining", "the server is shutting down");
        return;
    }
    if (r->route->flags & ROUTE_BODY) {
        if (r->model[0] && r->model_index < 0) {
            mk_reply_error(r, 404, "model_not_found", "no model named '%s'", r->model);
            return;
        }
        mk_upload_begin(r);
        return;
    }
    r->route->handle(r);
}

static bool has_body(mk_req *r)
{
    const char *cl = mk_req_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    return mk_req_header(r, MHD_HTTP_HEADER_TRANSFER_ENCODING) || (cl && strcmp(cl, "0"));
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_size, void **con_cls)
{
    (void)cls;
    (void)version;
    mk_req *r = *con_cls;
    if (!r) {
        r = req_new(conn, method);
        if (!r) return MHD_NO;
        *con_cls = r;
        begin(r, url, method);
        if (!r->response) {
            r->phase = PH_BODY;
            return MHD_YES;
        }
        /* An answer queued now makes MHD close the connection (it will not
         * read the body): right for a refused upload, wasteful otherwise. */
        if (has_body(r)) return send_reply(r);
        r->phase = PH_ANSWERED;
        return MHD_YES;
    }
    switch (r->phase) {
    case PH_ANSWERED:
        return send_reply(r);
    case PH_BODY:
        if (*upload_size) {
            int rc = mk_upload_chunk(r, upload_data, *upload_size);
            *upload_size = 0;
            if (rc) {
                if (!r->status) r->status = r->body_error ? r->body_error : 413;
                r->error_code = r->body_error_code;
                return MHD_NO;
            }
            return MHD_YES;
        }
        if (mk_upload_end(r)) return send_reply(r);
        r->route->handle(r);
        if (r->phase != PH_WAITING && r->response) return send_reply(r);
        return MHD_YES;
    case PH_WAITING:
        if (r->response) return send_reply(r);
        return MHD_YES;
    case PH_HEADERS:
    case PH_DONE:
        break;
    }
    /* data after the answer was queued: discard it */
    *upload_size = 0;
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    mk_req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    double total = srv_now_ms() - r->t_start;
    if (r->status == 0) r->status = toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ? 408 : 499;
    mk_metrics_observe(r, total);
    if (!(r->route && (r->route->flags & ROUTE_NO_LOG) && r->status < 400)) mk_log_request(r, total);
    req_free(r);
}

/* ---- queued work ---------------------------------------------------------- */

void mk_req_resume(mk_req *r)
{
    MHD_resume_connection(r->conn);
}

void mk_req_submit(mk_req *r)
{
    r->phase = PH_WAITING;
    MHD_suspend_connection(r->conn);
    if (mk_admission_submit(&r->job, r->st->cfg.queue_depth, r->st->cfg.deadline_ms)) {
        mk_reply_error(r, 503, "overloaded", "the inference queue is full; retry shortly");
        MHD_resume_connection(r->conn);
    }
}

/* ---- the daemon ------------------------------------------------------------ */

int mk_http_start(const maskd_config *cfg, char *err, size_t err_size)
{
    if (getrandom(&request_seed, sizeof request_seed, 0) != sizeof request_seed)
        request_seed = (unsigned long long)time(NULL) * 6364136223846793005ULL;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg->port)};
    inet_pton(AF_INET, cfg->listen, &addr.sin_addr);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ITC;
    daemon_handle = MHD_start_daemon(
        flags, 0, NULL, NULL, on_access, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->http_threads, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)cfg->max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)cfg->connection_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(128 * 1024),
        MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
        MHD_OPTION_END);
    if (!daemon_handle) {
        snprintf(err, err_size, "cannot listen on %s:%d (in use, or not an address of this host)",
                 cfg->listen, cfg->port);
        return -1;
    }
    return 0;
}

int mk_http_port(void)
{
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(daemon_handle, MHD_DAEMON_INFO_BIND_PORT);
    return info ? info->port : -1;
}

void mk_http_quiesce(void)
{
    if (!daemon_handle) return;
    MHD_socket fd = MHD_quiesce_daemon(daemon_handle);
    if (fd != MHD_INVALID_SOCKET) close(fd);
}

void mk_http_stop(void)
{
    if (daemon_handle) MHD_stop_daemon(daemon_handle);
    daemon_handle = NULL;
}
