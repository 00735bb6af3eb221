/* maskd.json + MASKD_* environment + --key flags -> maskd_config. */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { K_INT, K_I64, K_STR, K_LIST, K_MODELS, K_LOGFMT } key_type;

typedef struct key_def {
    const char *name;
    key_type type;
    size_t offset;
    size_t count_offset; /* lists: where the element count lives */
    long long lo, hi;
    const char *help;
} key_def;

#define F(field) offsetof(maskd_config, field)

/* One table: the file, the environment and the flags all go through it, so a
 * key cannot be settable in one place and forgotten in another. */
static const key_def keys[] = {
    {"models", K_MODELS, F(models), F(n_models), 0, 0, "name -> model card (flag/env: name=card.json,...)"},
    {"listen", K_STR, F(listen), 0, 0, 0, "IPv4 address to listen on"},
    {"port", K_INT, F(port), 0, 0, 65535, "TCP port (0: any free port)"},
    {"http_threads", K_INT, F(http_threads), 0, 1, 64, "connection-handling threads"},
    {"threads", K_INT, F(threads), 0, 0, 256, "engine threads (0: all CPUs)"},
    {"concurrency", K_INT, F(concurrency), 0, 1, 64, "inferences at once"},
    {"queue_depth", K_INT, F(queue_depth), 0, 0, 100000, "waiting requests before 503"},
    {"deadline_ms", K_INT, F(deadline_ms), 0, 1, 3600000, "queue deadline before 504"},
    {"max_body_bytes", K_I64, F(max_body_bytes), 0, 1, 1LL << 40, "largest request body"},
    {"max_pixels", K_I64, F(max_pixels), 0, 1, 1LL << 40, "largest image (width x height)"},
    {"max_connections", K_INT, F(max_connections), 0, 1, 100000, "open connections at once"},
    {"connection_timeout_s", K_INT, F(connection_timeout_s), 0, 1, 3600, "idle connection timeout"},
    {"upload_timeout_ms", K_INT, F(upload_timeout_ms), 0, 1, 3600000, "time allowed for a body"},
    {"log_format", K_LOGFMT, F(log_format), 0, 0, 0, "json or logfmt"},
    {"cors_origins", K_LIST, F(cors_origins), F(n_cors_origins), 0, 0, "CORS allow-list, * for any (flag/env: a,b)"},
    {"api_keys", K_LIST, F(api_keys), F(n_api_keys), 0, 0, "accepted API keys; none: open (flag/env: k1,k2)"},
    {"drain_grace_ms", K_INT, F(drain_grace_ms), 0, 0, 3600000, "accepting after SIGTERM"},
    {"drain_timeout_ms", K_INT, F(drain_timeout_ms), 0, 1, 3600000, "time to finish in-flight work"},
};
enum { N_KEYS = sizeof keys / sizeof keys[0] };

static int failf(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int failf(char *err, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
    return -1;
}

static void set_defaults(maskd_config *c)
{
    memset(c, 0, sizeof *c);
    c->listen = strdup("127.0.0.1");
    c->port = 8080;
    c->http_threads = 2;
    c->threads = 0;
    c->concurrency = 1;
    c->queue_depth = 16;
    c->deadline_ms = 30000;
    c->max_body_bytes = 32LL << 20;
    c->max_pixels = 40000000;
    c->max_connections = 512;
    c->connection_timeout_s = 15;
    c->upload_timeout_ms = 30000;
    c->log_format = MASKD_LOG_JSON;
    c->drain_grace_ms = 2000;
    c->drain_timeout_ms = 30000;
}

static void free_list(char **list, int n)
{
    for (int i = 0; i < n; i++) free(list[i]);
    free(list);
}

static void free_models(maskd_model_conf *m, int n)
{
    for (int i = 0; i < n; i++) {
        free(m[i].name);
        free(m[i].card);
    }
    free(m);
}

void maskd_config_free(maskd_config *c)
{
    if (!c) return;
    free(c->config_path);
    free_models(c->models, c->n_models);
    free(c->listen);
    free_list(c->cors_origins, c->n_cors_origins);
    free_list(c->api_keys, c->n_api_keys);
    memset(c, 0, sizeof *c);
}

/* Model names appear in URL paths and metric labels. */
static bool valid_model_name(const char *s)
{
    if (!*s || strlen(s) > 64) return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_' && *s != '.') return false;
    return true;
}

static char *resolve_path(const char *base_dir, const char *path)
{
    if (!base_dir || path[0] == '/') return strdup(path);
    size_t n = strlen(base_dir) + strlen(path) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", base_dir, path);
    return p;
}

static int parse_i64(const char *s, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    while (end && isspace((unsigned char)*end)) end++;
    if (errno || end == s || *end) return -1;
    *out = v;
    return 0;
}

static int set_number(maskd_config *c, const key_def *k, long long v, const char *src, char *err,
                      size_t n)
{
    if (v < k->lo || v > k->hi)
        return failf(err, n, "%s: '%s' must be from %lld to %lld (%s), got %lld", src, k->name, k->lo,
                     k->hi, k->help, v);
    if (k->type == K_INT)
        *(int *)((char *)c + k->offset) = (int)v;
    else
        *(long long *)((char *)c + k->offset) = v;
    return 0;
}

static int set_logfmt(maskd_config *c, const char *s, const char *src, char *err, size_t n)
{
    if (!strcmp(s, "json"))
        c->log_format = MASKD_LOG_JSON;
    else if (!strcmp(s, "logfmt"))
        c->log_format = MASKD_LOG_LOGFMT;
    else
        return failf(err, n, "%s: 'log_format' must be \"json\" or \"logfmt\", got \"%s\"", src, s);
    return 0;
}

static int set_string(maskd_config *c, const key_def *k, const char *s, const char *src, char *err,
                      size_t n)
{
    if (!strcmp(k->name, "listen")) {
        struct in_addr a;
        if (inet_pton(AF_INET, s, &a) != 1)
            return failf(err, n, "%s: 'listen' must be an IPv4 address like 127.0.0.1, got \"%s\"",
                         src, s);
    }
    char **slot = (char **)((char *)c + k->offset);
    char *dup = strdup(s);
    if (!dup) return failf(err, n, "out of memory");
    free(*slot);
    *slot = dup;
    return 0;
}

static int set_list(maskd_config *c, const key_def *k, char **items, int count, const char *src,
                    char *err, size_t n)
{
    for (int i = 0; i < count; i++)
        if (!items[i][0]) {
            free_list(items, count);
            return failf(err, n, "%s: '%s' has an empty entry", src, k->name);
        }
    char ***slot = (char ***)((char *)c + k->offset);
    int *cnt = (int *)((char *)c + k->count_offset);
    free_list(*slot, *cnt);
    *slot = items;
    *cnt = count;
    return 0;
}

static int set_models(maskd_config *c, maskd_model_conf *m, int count, const char *src, char *err,
                      size_t n)
{
    for (int i = 0; i < count; i++) {
        if (!valid_model_name(m[i].name)) {
            int r = failf(err, n,
                          "%s: 'models': name \"%s\" must be 1-64 letters, digits, '-', '_' or '.'",
                          src, m[i].name);
            free_models(m, count);
            return r;
        }
        if (!m[i].card[0]) {
            int r = failf(err, n, "%s: 'models': \"%s\" has an empty card path", src, m[i].name);
            free_models(m, count);
            return r;
        }
        for (int j = 0; j < i; j++)
            if (!strcmp(m[i].name, m[j].name)) {
                int r = failf(err, n, "%s: 'models': \"%s\" is listed twice", src, m[i].name);
                free_models(m, count);
                return r;
            }
    }
    free_models(c->models, c->n_models);
    c->models = m;
    c->n_models = count;
    return 0;
}

/* Environment and flags give lists as "a,b,c" and models as "name=card,name=card". */
static int split_commas(const char *s, char ***out, int *count)
{
    int cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    char **items = calloc((size_t)cap, sizeof *items);
    if (!items) return -1;
    int k = 0;
    const char *p = s;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        while (len && isspace((unsigned char)*p)) p++, len--;
        while (len && isspace((unsigned char)p[len - 1])) len--;
        if (len) items[k++] = strndup(p, len);
        if (!e) break;
        p = e + 1;
    }
    *out = items;
    *count = k;
    return 0;
}

static int apply_string(maskd_config *c, const key_def *k, const char *val, const char *src,
                        char *err, size_t n)
{
    switch (k->type) {
    case K_INT:
    case K_I64: {
        long long v;
        if (parse_i64(val, &v))
            return failf(err, n, "%s: '%s' must be a whole number (%s), got \"%s\"", src, k->name,
                         k->help, val);
        return set_number(c, k, v, src, err, n);
    }
    case K_STR:
        return set_string(c, k, val, src, err, n);
    case K_LOGFMT:
        return set_logfmt(c, val, src, err, n);
    case K_LIST: {
        char **items;
        int count;
        if (split_commas(val, &items, &count)) return failf(err, n, "out of memory");
        return set_list(c, k, items, count, src, err, n);
    }
    case K_MODELS: {
        char **items;
        int count;
        if (split_commas(val, &items, &count)) return failf(err, n, "out of memory");
        maskd_model_conf *m = calloc((size_t)count + 1, sizeof *m);
        for (int i = 0; i < count; i++) {
            char *eq = strchr(items[i], '=');
            if (!eq) {
                int r = failf(err, n, "%s: 'models' wants name=card.json[,name=card.json...], got \"%s\"",
                              src, items[i]);
                free_models(m, i);
                free_list(items, count);
                return r;
            }
            *eq = 0;
            m[i].name = strdup(items[i]);
            m[i].card = strdup(eq + 1);
        }
        free_list(items, count);
        return set_models(c, m, count, src, err, n);
    }
    }
    return failf(err, n, "internal: key type");
}

static int apply_json(maskd_config *c, const key_def *k, json_t *v, const char *base_dir,
                      const char *src, char *err, size_t n)
{
    switch (k->type) {
    case K_INT:
    case K_I64:
        if (!json_is_integer(v))
            return failf(err, n, "%s: '%s' must be a whole number (%s)", src, k->name, k->help);
        return set_number(c, k, (long long)json_integer_value(v), src, err, n);
    case K_STR:
        if (!json_is_string(v)) return failf(err, n, "%s: '%s' must be a string", src, k->name);
        return set_string(c, k, json_string_value(v), src, err, n);
    case K_LOGFMT:
        if (!json_is_string(v))
            return failf(err, n, "%s: 'log_format' must be \"json\" or \"logfmt\"", src);
        return set_logfmt(c, json_string_value(v), src, err, n);
    case K_LIST: {
        if (!json_is_array(v))
            return failf(err, n, "%s: '%s' must be an array of strings", src, k->name);
        size_t count = json_array_size(v);
        char **items = calloc(count + 1, sizeof *items);
        for (size_t i = 0; i < count; i++) {
            json_t *e = json_array_get(v, i);
            if (!json_is_string(e)) {
                free_list(items, (int)i);
                return failf(err, n, "%s: '%s'[%zu] must be a string", src, k->name, i);
            }
            items[i] = strdup(json_string_value(e));
        }
        return set_list(c, k, items, (int)count, src, err, n);
    }
    case K_MODELS: {
        if (!json_is_object(v))
            return failf(err, n, "%s: 'models' must be an object {\"name\": \"card.json\", ...}", src);
        size_t count = json_object_size(v);
        maskd_model_conf *m = calloc(count + 1, sizeof *m);
        const char *name;
        json_t *val;
        int i = 0;
        json_object_foreach(v, name, val)
        {
            const char *card = json_is_string(val) ? json_string_value(val) : NULL;
            if (json_is_object(val) && json_is_string(json_object_get(val, "card")))
                card = json_string_value(json_object_get(val, "card"));
            if (!card) {
                free_models(m, i);
                return failf(err, n,
                             "%s: 'models'.\"%s\" must be a card path or {\"card\": \"path\"}", src,
                             name);
            }
            m[i].name = strdup(name);
            m[i].card = resolve_path(base_dir, card);
            i++;
        }
        return set_models(c, m, i, src, err, n);
    }
    }
    return failf(err, n, "internal: key type");
}

static const key_def *find_key(const char *name)
{
    for (int i = 0; i < N_KEYS; i++)
        if (!strcmp(keys[i].name, name)) return &keys[i];
    return NULL;
}

static int load_file(maskd_config *c, const char *path, char *err, size_t n)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return failf(err, n, "config %s: line %d column %d: %s", path, jerr.line, jerr.column,
                     jerr.text);
    int rc = 0;
    char src[600];
    snprintf(src, sizeof src, "config %s", path);
    if (!json_is_object(root)) {
        rc = failf(err, n, "%s: the top level must be an object", src);
        goto out;
    }
    char *dir = strdup(path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    else
        strcpy(dir, ".");
    const char *name;
    json_t *v;
    json_object_foreach(root, name, v)
    {
        if (name[0] == '_') continue; /* "_comment" and the like */
        const key_def *k = find_key(name);
        if (!k) {
            rc = failf(err, n, "%s: unknown key '%s'", src, name);
            break;
        }
        if ((rc = apply_json(c, k, v, dir, src, err, n))) break;
    }
    free(dir);
out:
    json_decref(root);
    return rc;
}

static void env_name(const char *key, char *out, size_t n)
{
    size_t i = 0;
    i += (size_t)snprintf(out, n, "MASKD_");
    for (; *key && i + 1 < n; key++) out[i++] = (char)toupper((unsigned char)*key);
    out[i] = 0;
}

/* --max-body-bytes and --max_body_bytes both name max_body_bytes. */
static void flag_key(const char *flag, char *out, size_t n)
{
    size_t i = 0;
    for (; *flag && i + 1 < n; flag++) out[i++] = *flag == '-' ? '_' : *flag;
    out[i] = 0;
}

int maskd_config_load(int argc, char **argv, maskd_config *out, char *err, size_t n)
{
    maskd_config c;
    set_defaults(&c);
    const char *file = getenv("MASKD_CONFIG");
    if (file && !*file) file = NULL;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "--", 2)) {
            maskd_config_free(&c);
            return failf(err, n, "unexpected argument '%s' (options are --key value)", argv[i]);
        }
        if (i + 1 >= argc) {
            maskd_config_free(&c);
            return failf(err, n, "%s wants a value", argv[i]);
        }
        if (!strcmp(argv[i], "--config")) file = argv[i + 1];
        i++;
    }
    int rc = 0;
    if (file) {
        c.config_path = strdup(file);
        if ((rc = load_file(&c, file, err, n))) goto fail;
    }
    for (int i = 0; i < N_KEYS; i++) {
        char name[64];
        env_name(keys[i].name, name, sizeof name);
        const char *v = getenv(name);
        if (!v) continue;
        char src[80];
        snprintf(src, sizeof src, "environment %s", name);
        if ((rc = apply_string(&c, &keys[i], v, src, err, n))) goto fail;
    }
    for (int i = 0; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--config")) continue;
        char name[64];
        flag_key(argv[i] + 2, name, sizeof name);
        const key_def *k = find_key(name);
        if (!k) {
            rc = failf(err, n, "unknown option '%s'", argv[i]);
            goto fail;
        }
        char src[80];
        snprintf(src, sizeof src, "flag --%s", k->name);
        if ((rc = apply_string(&c, k, argv[i + 1], src, err, n))) goto fail;
    }
    *out = c;
    return 0;
fail:
    maskd_config_free(&c);
    return rc;
}

char *maskd_config_dump(const maskd_config *c)
{
    json_t *o = json_object();
    json_object_set_new(o, "config", c->config_path ? json_string(c->config_path) : json_null());
    json_t *models = json_object();
    for (int i = 0; i < c->n_models; i++)
        json_object_set_new(models, c->models[i].name, json_string(c->models[i].card));
    json_object_set_new(o, "models", models);
    for (int i = 0; i < N_KEYS; i++) {
        const key_def *k = &keys[i];
        const char *base = (const char *)c;
        switch (k->type) {
        case K_INT:
            json_object_set_new(o, k->name, json_integer(*(const int *)(base + k->offset)));
            break;
        case K_I64:
            json_object_set_new(o, k->name, json_integer(*(const long long *)(base + k->offset)));
            break;
        case K_STR:
            json_object_set_new(o, k->name, json_string(*(char *const *)(base + k->offset)));
            break;
        case K_LOGFMT:
            json_object_set_new(o, k->name,
                                json_string(c->log_format == MASKD_LOG_JSON ? "json" : "logfmt"));
            break;
        case K_LIST: {
            char *const *items = *(char **const *)(base + k->offset);
            int count = *(const int *)(base + k->count_offset);
            json_t *a = json_array();
            bool secret = !strcmp(k->name, "api_keys");
            for (int j = 0; j < count; j++)
                json_array_append_new(a, json_string(secret ? "<redacted>" : items[j]));
            json_object_set_new(o, k->name, a);
            break;
        }
        case K_MODELS:
            break;
        }
    }
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

bool maskd_config_origin_allowed(const maskd_config *c, const char *origin)
{
    if (!origin) return false;
    for (int i = 0; i < c->n_cors_origins; i++)
        if (!strcmp(c->cors_origins[i], "*") || !strcmp(c->cors_origins[i], origin)) return true;
    return false;
}

void maskd_config_describe(FILE *out)
{
    maskd_config d;
    set_defaults(&d);
    char *dump = maskd_config_dump(&d);
    json_t *defaults = dump ? json_loads(dump, 0, NULL) : NULL;
    free(dump);
    for (int i = 0; i < N_KEYS; i++) {
        char env[64], def[64] = "";
        env_name(keys[i].name, env, sizeof env);
        char *v = json_dumps(json_object_get(defaults, keys[i].name), JSON_ENCODE_ANY | JSON_COMPACT);
        if (v) snprintf(def, sizeof def, "%s", v);
        free(v);
        fprintf(out, "  %-22s %-28s %-14s %s\n", keys[i].name, env, def, keys[i].help);
    }
    json_decref(defaults);
    maskd_config_free(&d);
}
