/*
 * The daemon's configuration: maskd.json, then MASKD_<KEY> environment
 * variables, then --key value flags (flag > environment > file > default).
 * The result is a plain struct; nothing here knows about HTTP or models.
 */
#ifndef MASKD_CONFIG_H
#define MASKD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef enum maskd_log_format { MASKD_LOG_JSON = 0, MASKD_LOG_LOGFMT = 1 } maskd_log_format;

typedef struct maskd_model_conf {
    char *name;
    char *card; /* path of the model card; relative paths resolved against the config file's folder */
} maskd_model_conf;

typedef struct maskd_config {
    char *config_path; /* NULL when no file was read */

    maskd_model_conf *models;
    int n_models;

    char *listen;             /* an IPv4 address */
    int port;                 /* 0 lets the kernel pick (the log line says which) */
    int http_threads;         /* connection-handling threads; never run inference */
    int threads;              /* intra-op threads of the engine pool (0: all CPUs) */
    int concurrency;          /* inferences running at once (workers) */
    int queue_depth;          /* jobs waiting for a worker beyond those running */
    int deadline_ms;          /* a request still queued after this answers 504 */
    long long max_body_bytes; /* 413 past it */
    long long max_pixels;     /* 422 past it, checked from the image header */
    int max_connections;
    int connection_timeout_s; /* idle connections are closed after this */
    int upload_timeout_ms;    /* a body must arrive whole within this (slow clients) */
    maskd_log_format log_format;
    char **cors_origins; /* "*" allows every origin */
    int n_cors_origins;
    char **api_keys; /* empty: no authentication */
    int n_api_keys;
    int drain_grace_ms;   /* after SIGTERM: not ready at once, still accepting for this long */
    int drain_timeout_ms; /* then in-flight work gets this long before the process gives up */
} maskd_config;

/*
 * Builds the effective configuration.  argv holds only `--key value` pairs (and
 * `--config FILE`); the file comes from --config, else MASKD_CONFIG, else none
 * (built-in defaults).  On error returns non-zero and writes a message naming
 * the offending key and where it came from into err.
 */
int maskd_config_load(int argc, char **argv, maskd_config *out, char *err, size_t err_size);

/* The effective configuration as a JSON document (API keys redacted);
 * malloc'd, the caller frees. */
char *maskd_config_dump(const maskd_config *cfg);

void maskd_config_free(maskd_config *cfg);

/* One line per key (name, environment variable, default, meaning), for --help. */
void maskd_config_describe(FILE *out);

/* Is this origin on the CORS allow-list? */
bool maskd_config_origin_allowed(const maskd_config *cfg, const char *origin);

#endif
