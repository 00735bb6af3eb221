/* Request bodies: a raw body or the `image` field of a multipart form, kept in
 * one buffer bounded by max_body_bytes.  The limit is checked against
 * Content-Length before a byte is read and against the bytes as they stream
 * (chunked uploads have no length), so an oversized body costs nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "daemon.h"

static void body_fail(mk_req *r, int status, const char *code, const char *msg)
{
    if (r->body_error) return;
    r->body_error = status;
    r->body_error_code = code;
    snprintf(r->body_error_msg, sizeof r->body_error_msg, "%s", msg);
}

static int keep(mk_req *r, const char *data, size_t size)
{
    if (r->body_len + size > (size_t)r->st->cfg.max_body_bytes) {
        char msg[160];
        snprintf(msg, sizeof msg, "the body is larger than max_body_bytes (%lld)",
                 r->st->cfg.max_body_bytes);
        body_fail(r, 413, "payload_too_large", msg);
        return -1;
    }
    if (r->body_len + size > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 65536;
        while (cap < r->body_len + size) cap *= 2;
        if (cap > (size_t)r->st->cfg.max_body_bytes) cap = (size_t)r->st->cfg.max_body_bytes;
        char *p = realloc(r->body, cap + 1);
        if (!p) {
            body_fail(r, 503, "out_of_memory", "the server is out of memory");
            return -1;
        }
        r->body = p;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, size);
    r->body_len += size;
    r->body[r->body_len] = 0; /* JSON bodies are parsed in place */
    return 0;
}

static enum MHD_Result on_form_field(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *filename, const char *content_type,
                                     const char *transfer_encoding, const char *data, uint64_t off,
                                     size_t size)
{
    (void)kind;
    (void)filename;
    (void)content_type;
    (void)transfer_encoding;
    (void)off;
    mk_req *r = cls;
    if (!key || strcmp(key, "image")) return MHD_YES; /* other fields are ignored */
    r->image_field_seen = true;
    if (!size) return MHD_YES;
    return keep(r, data, size) ? MHD_NO : MHD_YES;
}

static bool media_is(const char *ct, const char *type)
{
    size_t n = strlen(type);
    return !strncasecmp(ct, type, n) && (ct[n] == 0 || ct[n] == ';' || ct[n] == ' ');
}

int mk_upload_begin(mk_req *r)
{
    const char *cl = mk_req_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    r->content_length = -1;
    if (cl) {
        char *end;
        long long v = strtoll(cl, &end, 10);
        if (end == cl || *end || v < 0) {
            mk_reply_error(r, 400, "bad_request", "Content-Length is not a number");
            return -1;
        }
        r->content_length = v;
        if (v > r->st->cfg.max_body_bytes) {
            mk_reply_error(r, 413, "payload_too_large",
                           "the body (%lld bytes) is larger than max_body_bytes (%lld)", v,
                           r->st->cfg.max_body_bytes);
            return -1;
        }
    }
    const char *ct = mk_req_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (r->route->flags & ROUTE_IMAGE) {
        if (!ct || !*ct) {
            mk_reply_error(r, 415, "unsupported_media_type",
                           "send the image as image/jpeg, image/png or multipart/form-data (field "
                           "'image'); the request has no Content-Type");
            return -1;
        }
        if (media_is(ct, "multipart/form-data")) {
            r->multipart = true;
            r->pp = MHD_create_post_processor(r->conn, 65536, on_form_field, r);
            if (!r->pp) {
                mk_reply_error(r, 400, "malformed_multipart",
                               "the multipart/form-data Content-Type has no usable boundary");
                return -1;
            }
        } else if (!(strncasecmp(ct, "image/", 6) == 0 || media_is(ct, "application/octet-stream"))) {
            mk_reply_error(r, 415, "unsupported_media_type",
                           "Content-Type '%.60s' is not an image; send image/jpeg, image/png or "
                           "multipart/form-data (field 'image')",
                           ct);
            return -1;
        }
    } else if (r->route->flags & ROUTE_BODY) {
        /* JSON routes (v2 infer): the binary extension sends octet-stream. */
        if (ct && *ct && !media_is(ct, "application/json") &&
            !media_is(ct, "application/octet-stream") &&
            !media_is(ct, "application/vnd.kserve.inference+json") && !media_is(ct, "text/plain")) {
            mk_reply_error(r, 415, "unsupported_media_type",
                           "Content-Type '%.60s' is not JSON (application/json or, with "
                           "Inference-Header-Content-Length, application/octet-stream)",
                           ct);
            return -1;
        }
    }
    return 0;
}

int mk_upload_chunk(mk_req *r, const char *data, size_t size)
{
    r->body_seen += size;
    /* libmicrohttpd cannot answer in the middle of a body: an oversized
     * chunked upload is read to its end and discarded, then answered 413 --
     * up to a bound, past which (or past upload_timeout_ms, a client
     * trickling bytes) the connection is simply closed. */
    if (srv_now_ms() - r->t_start > r->st->cfg.upload_timeout_ms) {
        body_fail(r, 408, "request_timeout", "the body did not arrive within upload_timeout_ms");
        return -1;
    }
    if (r->body_seen > 4 * (size_t)r->st->cfg.max_body_bytes) return -1;
    if (r->body_error) return 0;
    if (r->body_seen > (size_t)r->st->cfg.max_body_bytes) {
        char msg[160];
        snprintf(msg, sizeof msg, "the body is larger than max_body_bytes (%lld)",
                 r->st->cfg.max_body_bytes);
        body_fail(r, 413, "payload_too_large", msg);
        return 0;
    }
    if (r->pp) {
        if (MHD_post_process(r->pp, data, size) != MHD_YES)
            body_fail(r, 400, "malformed_multipart", "the multipart/form-data body is malformed");
        return 0;
    }
    keep(r, data, size);
    return 0;
}

int mk_upload_end(mk_req *r)
{
    if (r->pp) {
        enum MHD_Result ok = MHD_destroy_post_processor(r->pp);
        r->pp = NULL;
        if (ok != MHD_YES) body_fail(r, 400, "malformed_multipart", "the multipart/form-data body ends early");
        if (!r->body_error && !r->image_field_seen)
            body_fail(r, 400, "missing_image_field",
                      "the multipart/form-data body has no field named 'image'");
    }
    if (r->body_error) {
        mk_reply_error(r, r->body_error, r->body_error_code, "%s", r->body_error_msg);
        return -1;
    }
    return 0;
}

void mk_upload_free(mk_req *r)
{
    if (r->pp) MHD_destroy_post_processor(r->pp);
    r->pp = NULL;
    free(r->body);
    r->body = NULL;
}
