/* One structured line per request (and per lifecycle event) on stderr, as
 * JSON or logfmt, so that a log shipper needs no parsing rules of its own. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon.h"

static _Atomic int log_format = MASKD_LOG_JSON;

void mk_log_set_format(maskd_log_format f)
{
    log_format = f;
}

static void timestamp(char *buf, size_t n)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t k = strftime(buf, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + k, n - k, ".%03ldZ", ts.tv_nsec / 1000000);
}

/* logfmt values are quoted when they hold spaces, quotes or '='. */
static void logfmt_value(char *out, size_t n, const char *v)
{
    bool quote = !*v || strpbrk(v, " \"=\\\t\n") != NULL;
    size_t k = 0;
    if (quote && k + 1 < n) out[k++] = '"';
    for (; *v && k + 3 < n; v++) {
        if (*v == '"' || *v == '\\') out[k++] = '\\';
        out[k++] = (*v == '\n' || *v == '\t') ? ' ' : *v;
    }
    if (quote && k + 1 < n) out[k++] = '"';
    out[k] = 0;
}

static void emit(json_t *o)
{
    if (log_format == MASKD_LOG_JSON) {
        char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
        if (s) fprintf(stderr, "%s\n", s);
        free(s);
    } else {
        char line[4096];
        size_t k = 0;
        const char *key;
        json_t *v;
        json_object_foreach(o, key, v)
        {
            char val[1024];
            if (json_is_string(v))
                logfmt_value(val, sizeof val, json_string_value(v));
            else if (json_is_integer(v))
                snprintf(val, sizeof val, "%lld", (long long)json_integer_value(v));
            else if (json_is_real(v))
                snprintf(val, sizeof val, "%.3f", json_real_value(v));
            else
                snprintf(val, sizeof val, "%s", json_is_true(v) ? "true" : "false");
            int w = snprintf(line + k, sizeof line - k, "%s%s=%s", k ? " " : "", key, val);
            if (w < 0 || (size_t)w >= sizeof line - k) break;
            k += (size_t)w;
        }
        fprintf(stderr, "%s\n", line);
    }
}

static json_t *line_start(const char *level)
{
    char ts[40];
    timestamp(ts, sizeof ts);
    json_t *o = json_object();
    json_object_set_new(o, "ts", json_string(ts));
    json_object_set_new(o, "level", json_string(level));
    return o;
}

void mk_log(const char *level, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *o = line_start(level);
    json_object_set_new(o, "msg", json_string(msg));
    emit(o);
    json_decref(o);
}

static double ms3(double v)
{
    return (double)(long long)(v * 1000 + 0.5) / 1000;
}

void mk_log_request(const mk_req *r, double total_ms)
{
    json_t *o = line_start(r->status >= 500 ? "warn" : "info");
    json_object_set_new(o, "msg", json_string("request"));
    json_object_set_new(o, "id", json_string(r->id));
    json_object_set_new(o, "method", json_string(r->method));
    json_object_set_new(o, "route", json_string(r->route ? r->route->pattern : "unmatched"));
    if (r->model[0]) {
        char model[sizeof r->model];
        size_t i = 0;
        for (; r->model[i] && i + 1 < sizeof model; i++) {
            unsigned char c = (unsigned char)r->model[i];
            model[i] = c < 0x20 || c >= 0x7f ? '?' : (char)c;
        }
        model[i] = 0;
        json_object_set_new(o, "model", json_string(model));
    }
    json_object_set_new(o, "status", json_integer(r->status));
    if (r->error_code) json_object_set_new(o, "error", json_string(r->error_code));
    json_object_set_new(o, "bytes_in", json_integer((json_int_t)r->body_seen));
    json_object_set_new(o, "bytes_out", json_integer((json_int_t)r->bytes_out));
    json_object_set_new(o, "total_ms", json_real(ms3(total_ms)));
    if (r->timing.queue_ms > 0) json_object_set_new(o, "queue_ms", json_real(ms3(r->timing.queue_ms)));
    if (r->timing.decode_ms > 0)
        json_object_set_new(o, "decode_ms", json_real(ms3(r->timing.decode_ms)));
    if (r->timing.infer_ms > 0) json_object_set_new(o, "infer_ms", json_real(ms3(r->timing.infer_ms)));
    if (r->timing.post_ms > 0) json_object_set_new(o, "post_ms", json_real(ms3(r->timing.post_ms)));
    emit(o);
    json_decref(o);
}
