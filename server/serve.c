/* `maskd serve` and `maskd check-config`: the daemon's lifecycle.
 *
 *   start:   config -> models loaded (cards checked against graphs) -> HTTP up
 *            (live, not ready) -> one warm-up inference per model and worker
 *            -> ready.
 *   SIGHUP:  a new config and new models are built and warmed beside the old
 *            ones, then swapped in; requests in flight finish on the state
 *            they started with.  Anything wrong with the new one: logged,
 *            refused, the old one keeps serving.
 *   SIGTERM: not ready at once (load balancers stop sending), still accepting
 *            for drain_grace_ms, then the listening socket closes; in-flight
 *            requests finish; exit 0 (1 if drain_timeout_ms runs out first).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "card.h"
#include "cli.h"
#include "daemon.h"

static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static mk_state *current;
static atomic_bool draining, stopping;

bool mk_draining(void)
{
    return draining;
}

bool mk_stopping(void)
{
    return stopping;
}

mk_state *mk_state_acquire(void)
{
    pthread_mutex_lock(&state_lock);
    mk_state *st = current;
    if (st) atomic_fetch_add(&st->refs, 1);
    pthread_mutex_unlock(&state_lock);
    return st;
}

static void state_free(mk_state *st)
{
    for (int i = 0; i < st->n_models; i++) {
        mk_model *m = &st->models[i];
        for (int w = 0; w < st->n_workers; w++) {
            if (st->sessions) maskd_session_free(st->sessions[w * st->n_models + i]);
            if (st->pipeline_runs) maskd_worker_free(st->pipeline_runs[w * st->n_models + i]);
        }
        if (m->pipeline) maskd_pipeline_free(m->pipeline);
        json_decref(m->card);
        free(m->name);
        free(m->card_path);
        free(m->onnx_path);
    }
    free(st->sessions);
    free(st->pipeline_runs);
    free(st->models);
    maskd_config_free(&st->cfg);
    free(st);
}

void mk_state_release(mk_state *st)
{
    if (st && atomic_fetch_sub(&st->refs, 1) == 1) state_free(st);
}

int mk_state_find(const mk_state *st, const char *name)
{
    for (int i = 0; i < st->n_models; i++)
        if (!strcmp(st->models[i].name, name)) return i;
    return -1;
}

bool mk_state_ready(const mk_state *st)
{
    if (!st) return false;
    for (int i = 0; i < st->n_models; i++)
        if (!atomic_load(&st->models[i].ready)) return false;
    return true;
}

/* Loads every model of cfg (taking ownership of cfg).  Nothing is warm yet. */
static mk_state *state_build(maskd_config *cfg, int n_workers, maskd_pool *pool, char *err, size_t n)
{
    mk_state *st = calloc(1, sizeof *st);
    if (!st) {
        snprintf(err, n, "out of memory");
        maskd_config_free(cfg);
        return NULL;
    }
    atomic_init(&st->refs, 1);
    st->cfg = *cfg;
    memset(cfg, 0, sizeof *cfg);
    st->n_workers = n_workers;
    int nm = st->cfg.n_models;
    st->models = calloc((size_t)nm + 1, sizeof *st->models);
    st->sessions = calloc((size_t)(nm * n_workers) + 1, sizeof *st->sessions);
    st->pipeline_runs = calloc((size_t)(nm * n_workers) + 1, sizeof *st->pipeline_runs);
    if (!st->models || !st->sessions || !st->pipeline_runs) {
        snprintf(err, n, "out of memory");
        state_free(st);
        return NULL;
    }
    for (int i = 0; i < nm; i++) {
        const maskd_model_conf *mc = &st->cfg.models[i];
        mk_model *m = &st->models[i];
        st->n_models = i + 1;
        m->name = strdup(mc->name);
        m->card_path = strdup(mc->card);
        atomic_init(&m->ready, false);
        maskd_error e = {0};
        maskd_card card;
        maskd_card_init(&card);
        if (maskd_card_load_file(mc->card, &card, &e)) {
            snprintf(err, n, "models.%s: %s", mc->name, e.message);
            state_free(st);
            return NULL;
        }
        m->card = json_load_file(mc->card, 0, NULL);
        int rc = maskd_pipeline_load(&card, NULL, (maskd_pipeline **)&m->pipeline, &e);
        if (!rc) {
            m->onnx_path = card.model_path ? strdup(card.model_path) : NULL;
        }
        maskd_card_free(&card);
        if (rc) {
            snprintf(err, n, "models.%s: %s", mc->name, e.message);
            state_free(st);
            return NULL;
        }
        m->graph = (maskd_model *)maskd_pipeline_model(m->pipeline, 0);
        for (int w = 0; w < n_workers; w++) {
            int k = w * nm + i;
            if (maskd_session_create(m->graph, pool, &st->sessions[k], &e) ||
                maskd_worker_create(m->pipeline, pool, (maskd_worker **)&st->pipeline_runs[k], &e)) {
                snprintf(err, n, "models.%s: %s", mc->name, e.message);
                state_free(st);
                return NULL;
            }
        }
    }
    return st;
}

/* One run per model and worker: plans memory and faults pages in before the
 * first client pays for it, and proves the model runs at all. */
static int state_warm(mk_state *st, char *err, size_t n)
{
    for (int i = 0; i < st->n_models; i++) {
        double t0 = srv_now_ms();
        for (int w = 0; w < st->n_workers; w++) {
            maskd_error e = {0};
            if (maskd_worker_warmup(st->pipeline_runs[w * st->n_models + i], &e)) {
                snprintf(err, n, "models.%s: warm-up failed: %s", st->models[i].name, e.message);
                return -1;
            }
        }
        atomic_store(&st->models[i].ready, true);
        mk_log("info", "model %s ready (warm-up %.1f ms)", st->models[i].name, srv_now_ms() - t0);
    }
    return 0;
}

static void sleep_ms(double ms)
{
    if (ms <= 0) return;
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)((ms - (double)(long long)(ms / 1000) * 1000) * 1e6)};
    while (nanosleep(&ts, &ts) && errno == EINTR) {
    }
}

static volatile sig_atomic_t got_signal;

static void note_signal(int sig)
{
    /* a pending SIGTERM is never overwritten by a SIGHUP */
    if (got_signal != SIGTERM && got_signal != SIGINT) got_signal = sig;
}

static int serve_argc;
static char **serve_argv;

static void reload(maskd_pool *pool)
{
    mk_log("info", "SIGHUP: reloading the configuration and models");
    char err[1024];
    maskd_config cfg;
    if (maskd_config_load(serve_argc, serve_argv, &cfg, err, sizeof err)) {
        mk_log("error", "reload refused, the old configuration keeps serving: %s", err);
        return;
    }
    mk_state *old = mk_state_acquire();
    const maskd_config *oc = &old->cfg;
    if (strcmp(oc->listen, cfg.listen) || oc->port != cfg.port || oc->http_threads != cfg.http_threads ||
        oc->threads != cfg.threads || oc->concurrency != cfg.concurrency ||
        oc->max_connections != cfg.max_connections || oc->connection_timeout_s != cfg.connection_timeout_s)
        mk_log("warn", "reload: listen, port, http_threads, threads, concurrency, max_connections and "
                       "connection_timeout_s take effect only after a restart");
    int n_workers = old->n_workers;
    mk_state_release(old);
    mk_state *st = state_build(&cfg, n_workers, pool, err, sizeof err);
    if (!st || state_warm(st, err, sizeof err)) {
        if (st) mk_state_release(st);
        mk_log("error", "reload refused, the old configuration keeps serving: %s", err);
        return;
    }
    pthread_mutex_lock(&state_lock);
    old = current;
    current = st;
    pthread_mutex_unlock(&state_lock);
    mk_log_set_format(st->cfg.log_format);
    mk_metrics_model_loaded(st->n_models);
    mk_state_release(old);
    mk_log("info", "reload done: %d model(s) serving", st->n_models);
}

static const char serve_usage[] =
    "usage: maskd serve [--config FILE] [--key value ...]\n"
    "Runs the HTTP daemon.  Every configuration key (see `maskd check-config`) can be\n"
    "given as --key value (or --key-with-dashes value), as MASKD_<KEY> in the\n"
    "environment, or in the JSON file; flag > environment > file > default.\n"
    "Signals: SIGHUP reloads the configuration and models; SIGTERM drains and exits.\n";

int maskd_cmd_serve(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(serve_usage, stdout);
            fputs("keys (--key, environment, default, meaning):\n", stdout);
            maskd_config_describe(stdout);
            return 0;
        }
    serve_argc = argc - 1;
    serve_argv = argv + 1;
    char err[1024];
    maskd_config cfg;
    if (maskd_config_load(serve_argc, serve_argv, &cfg, err, sizeof err))
        return cli_fail(78, "invalid configuration: %s", err);
    mk_log_set_format(cfg.log_format);

    /* Signals go to this thread only (sigtimedwait below): every thread made
     * from here on inherits the blocked mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    /* Threads that libraries started before this point (OpenBLAS starts its
     * own at load time) do not block them: handlers make sure a signal that
     * lands there is noted rather than killing the process. */
    struct sigaction sa = {.sa_handler = note_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    maskd_error e = {0};
    maskd_pool *pool = NULL;
    if (maskd_pool_create(cfg.threads, &pool, &e)) {
        maskd_config_free(&cfg);
        return cli_fail(1, "%s", e.message);
    }
    int n_workers = cfg.concurrency;
    mk_state *st = state_build(&cfg, n_workers, pool, err, sizeof err);
    if (!st) {
        maskd_pool_free(pool);
        return cli_fail(1, "cannot load the models: %s", err);
    }
    current = st;
    mk_metrics_model_loaded(st->n_models);
    if (mk_admission_start(n_workers, err, sizeof err)) {
        mk_state_release(st);
        maskd_pool_free(pool);
        return cli_fail(1, "%s", err);
    }
    if (mk_http_start(&st->cfg, err, sizeof err)) {
        mk_admission_stop();
        mk_state_release(st);
        maskd_pool_free(pool);
        return cli_fail(1, "%s", err);
    }
    mk_log("info", "listening on %s:%d (%d model(s), %d worker(s), %d engine thread(s))", st->cfg.listen,
           mk_http_port(), st->n_models, n_workers, maskd_pool_threads(pool));
    if (state_warm(st, err, sizeof err)) {
        mk_log("error", "%s", err);
        stopping = true;
        mk_http_stop();
        mk_admission_stop();
        pthread_mutex_lock(&state_lock);
        current = NULL;
        pthread_mutex_unlock(&state_lock);
        mk_state_release(st);
        maskd_pool_free(pool);
        return 1;
    }
    mk_log("info", "ready");

    int sig = 0;
    for (;;) {
        struct timespec ts = {.tv_nsec = 100 * 1000 * 1000};
        sig = sigtimedwait(&set, NULL, &ts);
        if (sig < 0 && got_signal) {
            sig = got_signal;
            got_signal = 0;
        }
        if (sig == SIGHUP) reload(pool);
        if (sig == SIGTERM || sig == SIGINT) break;
    }

    double t_signal = srv_now_ms();
    draining = true;
    mk_state *now = mk_state_acquire();
    int grace = now->cfg.drain_grace_ms, timeout = now->cfg.drain_timeout_ms;
    mk_state_release(now);
    mk_log("info", "%s: not ready; accepting for %d ms more, then draining (timeout %d ms)",
           sig == SIGTERM ? "SIGTERM" : "SIGINT", grace, timeout);
    sleep_ms(grace);
    stopping = true;
    mk_http_quiesce();
    while (mk_http_active_requests() > 0 && srv_now_ms() - t_signal < timeout) sleep_ms(10);
    if (mk_http_active_requests() > 0) {
        /* Stopping MHD with parked connections is undefined: leave as we are. */
        mk_log("error", "drain timeout: %d request(s) still in flight; exiting", mk_http_active_requests());
        return 1;
    }
    mk_admission_stop();
    mk_http_stop();
    pthread_mutex_lock(&state_lock);
    st = current;
    current = NULL;
    pthread_mutex_unlock(&state_lock);
    mk_state_release(st);
    maskd_pool_free(pool);
    mk_log("info", "drained; exiting");
    return 0;
}

static const char check_usage[] =
    "usage: maskd check-config [--config FILE] [--key value ...]\n"
    "Validates the configuration (and that each model card reads) and prints the\n"
    "effective configuration as JSON.  Exit 0 when valid, 78 when not.\n";

int maskd_cmd_check_config(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(check_usage, stdout);
            fputs("keys (--key, environment, default, meaning):\n", stdout);
            maskd_config_describe(stdout);
            return 0;
        }
    char err[1024];
    maskd_config cfg;
    if (maskd_config_load(argc - 1, argv + 1, &cfg, err, sizeof err))
        return cli_fail(78, "invalid configuration: %s", err);
    for (int i = 0; i < cfg.n_models; i++) {
        maskd_card card;
        maskd_error e = {0};
        maskd_card_init(&card);
        int rc = maskd_card_load_file(cfg.models[i].card, &card, &e);
        if (!rc && card.model_path && access(card.model_path, R_OK)) {
            snprintf(e.message, sizeof e.message, "model file %s: %s", card.model_path, strerror(errno));
            rc = -1;
        }
        maskd_card_free(&card);
        if (rc) {
            int code = cli_fail(78, "invalid configuration: models.%s: %s", cfg.models[i].name, e.message);
            maskd_config_free(&cfg);
            return code;
        }
    }
    char *s = maskd_config_dump(&cfg);
    if (s) puts(s);
    free(s);
    maskd_config_free(&cfg);
    return 0;
}
