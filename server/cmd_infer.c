/* `maskd infer`: run an ONNX model on .npy inputs and write .npy outputs.
 * The engine's command-line face, for tests, benchmarks and debugging. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "cli.h"
#include "maskd/engine.h"
#include "npy.h"

static const char usage[] =
    "usage: maskd infer MODEL.onnx --input [NAME=]FILE.npy [--input ...] [--output-dir DIR]\n"
    "                   [--threads N] [--repeat N] [--warmup-ms MS] [--no-optimize]\n"
    "                   [--profile] [--profile-nodes N]\n"
    "Runs MODEL on the inputs and writes each output as DIR/<output name>.npy.\n"
    "  --input        a model input from a .npy file; NAME= may be left out for a one-input model\n"
    "  --output-dir   where outputs go (created if missing); without it nothing is written\n"
    "  --threads N    worker threads, counting the caller (default: all CPUs)\n"
    "  --repeat N     run N more times after the first and print min/median latency\n"
    "  --warmup-ms MS with --repeat: keep running untimed until MS ms have passed since the\n"
    "                 first run began (a fresh process's threads may share a core for its\n"
    "                 first ~100 ms, until the kernel spreads them)\n"
    "  --no-optimize  skip constant folding and fusions (to compare against)\n"
    "  --profile      with --repeat: time every node and print where the time goes\n"
    "  --profile-nodes N  with --profile: list the N slowest nodes (default 15; 0: all), each\n"
    "                 with the value it writes (after fusion, the fused chain's result)\n";

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Output names may hold '/', ':' and the like; file names should not. */
static void safe_name(const char *name, char *out, size_t size)
{
    size_t i = 0;
    for (; name[i] && i + 1 < size; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        out[i] = ok ? c : '_';
    }
    out[i] = 0;
}

typedef struct {
    const char *op_type;
    double ms;
    int nodes;
} op_total;

static int by_ms_desc(const void *a, const void *b)
{
    double x = ((const op_total *)a)->ms, y = ((const op_total *)b)->ms;
    return x < y ? 1 : x > y ? -1 : 0;
}

static int node_by_ms_desc(const void *a, const void *b)
{
    const maskd_node_time *x = a, *y = b;
    double mx = x->runs ? x->total_ms / x->runs : 0, my = y->runs ? y->total_ms / y->runs : 0;
    return mx < my ? 1 : mx > my ? -1 : 0;
}

/* Per-run milliseconds by op type, then the `top` slowest nodes (0: all). */
static void print_profile(const maskd_session *session, int top)
{
    int n;
    const maskd_node_time *t = maskd_session_profile(session, &n);
    op_total *ops = calloc((size_t)n + 1, sizeof *ops);
    maskd_node_time *nodes = malloc(((size_t)n + 1) * sizeof *nodes);
    if (!ops || !nodes) {
        free(ops);
        free(nodes);
        return;
    }
    int n_ops = 0, n_nodes = 0;
    double total = 0;
    for (int k = 0; k < n; k++) {
        if (!t[k].runs) continue;
        double ms = t[k].total_ms / t[k].runs;
        total += ms;
        nodes[n_nodes++] = t[k];
        int j = 0;
        while (j < n_ops && strcmp(ops[j].op_type, t[k].op_type)) j++;
        if (j == n_ops) ops[n_ops++].op_type = t[k].op_type;
        ops[j].ms += ms;
        ops[j].nodes++;
    }
    qsort(ops, (size_t)n_ops, sizeof *ops, by_ms_desc);
    qsort(nodes, (size_t)n_nodes, sizeof *nodes, node_by_ms_desc);
    printf("%-24s %10s %6s %6s\n", "op type", "ms/run", "%", "nodes");
    for (int j = 0; j < n_ops; j++)
        printf("%-24s %10.3f %6.1f %6d\n", ops[j].op_type, ops[j].ms,
               total > 0 ? 100 * ops[j].ms / total : 0, ops[j].nodes);
    printf("\n%-48s %-18s %10s  %s\n", "slowest nodes", "op type", "ms/run", "output");
    for (int k = 0; k < n_nodes && (top == 0 || k < top); k++)
        printf("%-48s %-18s %10.3f  %s\n", nodes[k].node, nodes[k].op_type,
               nodes[k].total_ms / nodes[k].runs, nodes[k].output);
    free(ops);
    free(nodes);
}

int maskd_cmd_infer(int argc, char **argv)
{
    const char *model_path = NULL, *out_dir = NULL;
    const char *in_specs[64];
    int n_specs = 0, threads = 0, repeat = 0, warmup_ms = 0, profile_nodes = 15;
    bool profile = false;
    maskd_load_options opt = {.optimize = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_val = i + 1 < argc;
        if (!strcmp(a, "--input") && has_val) {
            if (n_specs == 64) return cli_fail(64, "too many --input options");
            in_specs[n_specs++] = argv[++i];
        } else if (!strcmp(a, "--output-dir") && has_val) {
            out_dir = argv[++i];
        } else if (!strcmp(a, "--threads") && has_val) {
            if (cli_parse_int(argv[++i], 1, 256, &threads))
                return cli_fail(64, "--threads wants a number from 1 to 256");
        } else if (!strcmp(a, "--warmup-ms") && has_val) {
            if (cli_parse_int(argv[++i], 0, 600000, &warmup_ms))
                return cli_fail(64, "--warmup-ms wants a number from 0 to 600000");
        } else if (!strcmp(a, "--repeat") && has_val) {
            if (cli_parse_int(argv[++i], 0, 1000000, &repeat))
                return cli_fail(64, "--repeat wants a number from 0 to 1000000");
        } else if (!strcmp(a, "--profile")) {
            profile = true;
        } else if (!strcmp(a, "--profile-nodes") && has_val) {
            if (cli_parse_int(argv[++i], 0, 1000000, &profile_nodes))
                return cli_fail(64, "--profile-nodes wants a number from 0 to 1000000");
        } else if (!strcmp(a, "--no-optimize")) {
            opt.optimize = 0;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage, stdout);
            return 0;
        } else if (a[0] != '-' && !model_path) {
            model_path = a;
        } else {
            fputs(usage, stderr);
            return cli_fail(64, "unexpected argument '%s'", a);
        }
    }
    if (!model_path) {
        fputs(usage, stderr);
        return cli_fail(64, "no model given");
    }

    maskd_error err = {0};
    maskd_model *model = NULL;
    maskd_pool *pool = NULL;
    maskd_session *session = NULL;
    maskd_tensor inputs[64];
    bool given[64] = {0};
    int rc = 0;
    memset(inputs, 0, sizeof inputs);

    /* "load" is what a server pays before its first answer, as ONNX Runtime's
     * InferenceSession.create is: reading and optimizing the graph, the thread
     * pool and the session (its memory plan); .npy reading is left out. */
    double t0 = now_ms();
    if (maskd_model_load_file(model_path, &opt, &model, &err)) {
        rc = cli_fail(2, "%s", err.message);
        goto out;
    }
    double load_ms = now_ms() - t0;
    int n_in = maskd_model_num_inputs(model);
    if (n_in > 64) {
        rc = cli_fail(1, "the model has %d inputs; at most 64 are supported here", n_in);
        goto out;
    }
    for (int s = 0; s < n_specs; s++) {
        const char *eq = strchr(in_specs[s], '=');
        int idx;
        const char *file;
        if (eq) {
            char name[256];
            snprintf(name, sizeof name, "%.*s", (int)(eq - in_specs[s]), in_specs[s]);
            idx = maskd_model_input_index(model, name);
            if (idx < 0) {
                rc = cli_fail(1, "the model has no input named '%s'", name);
                goto out;
            }
            file = eq + 1;
        } else if (n_in == 1) {
            idx = 0;
            file = in_specs[s];
        } else {
            rc = cli_fail(1, "the model has %d inputs: name each one (--input NAME=FILE.npy)", n_in);
            goto out;
        }
        if (given[idx]) {
            rc = cli_fail(1, "input '%s' is given twice", maskd_model_input(model, idx)->name);
            goto out;
        }
        if (maskd_npy_read(file, &inputs[idx], &err)) {
            rc = cli_fail(1, "%s", err.message);
            goto out;
        }
        given[idx] = true;
    }
    for (int i = 0; i < n_in; i++)
        if (!given[i]) {
            rc = cli_fail(1, "input '%s' is missing (--input %s=FILE.npy)",
                          maskd_model_input(model, i)->name, maskd_model_input(model, i)->name);
            goto out;
        }

    t0 = now_ms();
    if (maskd_pool_create(threads, &pool, &err) ||
        maskd_session_create(model, pool, &session, &err)) {
        rc = cli_fail(1, "%s", err.message);
        goto out;
    }
    load_ms += now_ms() - t0;
    t0 = now_ms();
    if (maskd_session_run(session, inputs, n_in, &err)) {
        rc = cli_fail(1, "%s", err.message);
        goto out;
    }
    double first_ms = now_ms() - t0;
    while (repeat > 0 && now_ms() - t0 < warmup_ms)
        if (maskd_session_run(session, inputs, n_in, &err)) {
            rc = cli_fail(1, "%s", err.message);
            goto out;
        }
    if (repeat > 0) {
        double *times = malloc((size_t)repeat * sizeof *times);
        if (!times) {
            rc = cli_fail(1, "out of memory");
            goto out;
        }
        maskd_session_set_profiling(session, profile);
        for (int r = 0; r < repeat; r++) {
            t0 = now_ms();
            if (maskd_session_run(session, inputs, n_in, &err)) {
                free(times);
                rc = cli_fail(1, "%s", err.message);
                goto out;
            }
            times[r] = now_ms() - t0;
        }
        qsort(times, (size_t)repeat, sizeof *times, cmp_double);
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("load %.2f ms, first run %.2f ms, %d runs: min %.3f ms, median %.3f ms, "
               "max %.3f ms (threads %d), peak RSS %.1f MB\n",
               load_ms, first_ms, repeat, times[0], times[repeat / 2], times[repeat - 1],
               maskd_pool_threads(pool), ru.ru_maxrss / 1024.0);
        free(times);
        if (profile) print_profile(session, profile_nodes);
    }
    if (out_dir) {
        if (mkdir(out_dir, 0777) && errno != EEXIST) {
            rc = cli_fail(1, "cannot create '%s': %s", out_dir, strerror(errno));
            goto out;
        }
        for (int i = 0; i < maskd_model_num_outputs(model); i++) {
            char name[256], path[4096];
            safe_name(maskd_model_output(model, i)->name, name, sizeof name);
            snprintf(path, sizeof path, "%s/%s.npy", out_dir, name);
            if (maskd_npy_write(path, maskd_session_output(session, i), &err)) {
                rc = cli_fail(1, "%s", err.message);
                goto out;
            }
        }
    }
out:
    for (int i = 0; i < 64; i++) free(inputs[i].data);
    maskd_session_free(session);
    maskd_pool_free(pool);
    maskd_model_free(model);
    return rc;
}
