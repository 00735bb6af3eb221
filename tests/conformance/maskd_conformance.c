/*
 * Runs ONNX's backend node test cases (DATA_DIR/test_x/model.onnx plus
 * test_data_set_N/{input,output}_K.pb) through the engine and compares with
 * the tolerances ONNX's own runner uses.
 *
 * Each case runs in a forked child so that a crash, a hang or a leak reported
 * by the sanitizers is pinned on that case and the rest still run.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "maskd/engine.h"
#include "onnx_import.h"

/* ONNX's backend runner: np.testing.assert_allclose(rtol=1e-3, atol=1e-7). */
static const double RTOL = 1e-3;
static const double ATOL = 1e-7;

/* Exit codes of a case's child process. */
enum { CASE_PASS = 0, CASE_FAIL = 1, CASE_UNSUPPORTED = 2, CASE_NOT_RUN = -1 };

typedef struct options {
    const char *data_dir;
    const char *expect_path;
    const char *passing_path;
    char **patterns;
    int n_patterns;
    int verbose;
    int threads;
    int use_fork;
    int timeout_s;
    int lenient;
} options;

typedef struct case_entry {
    char *name;
    int result;
} case_entry;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: maskd_conformance DATA_DIR [options] [PATTERN...]\n"
            "  Runs every case directory of DATA_DIR (sorted) whose name matches one of\n"
            "  the shell PATTERNs (all when none is given).\n"
            "  --expect FILE        cases (one a line, '#' comments) that must run and pass\n"
            "  --print-passing FILE write the names of the passing cases to FILE\n"
            "  --threads N          engine pool threads per case (default 2)\n"
            "  --timeout S          seconds allowed per case (default 120)\n"
            "  --no-fork            run cases in this process (for debuggers)\n"
            "  --lenient            only the --expect list decides the exit status\n"
            "  -v, --verbose        print every case's outcome, and why unsupported\n"
            "Exit status: 0 when no case failed (unless --lenient) and every expected\n"
            "case passed; 1 otherwise.\n");
}

/* vsnprintf, not snprintf: reasons are cut to fit by design, and gcc's
 * -Wformat-truncation would otherwise flag every composed message. */
static void explain(char *why, size_t why_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void explain(char *why, size_t why_size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_size, fmt, ap);
    va_end(ap);
}

/* ---- small utilities ---------------------------------------------------- */

static char *path_join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", a, b);
    return p;
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int read_file(const char *path, void **data, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    size_t cap = 1 << 16, len = 0;
    unsigned char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (len < cap)
            break;
        cap *= 2;
        unsigned char *bigger = realloc(buf, cap);
        if (!bigger)
            free(buf);
        buf = bigger;
    }
    int bad = ferror(f) || !buf;
    fclose(f);
    if (bad) {
        free(buf);
        return -1;
    }
    *data = buf;
    *size = len;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of the entries of dir accepted by keep(dir, name). */
static char **list_dir(const char *dir, int (*keep)(const char *, const char *),
                       int *count)
{
    *count = 0;
    DIR *d = opendir(dir);
    if (!d)
        return NULL;
    char **names = NULL;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || !keep(dir, e->d_name))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **bigger = realloc(names, (size_t)cap * sizeof *names);
            if (!bigger)
                break;
            names = bigger;
        }
        names[n] = strdup(e->d_name);
        if (names[n])
            n++;
    }
    closedir(d);
    if (n)
        qsort(names, (size_t)n, sizeof *names, cmp_str);
    *count = n;
    return names;
}

static void free_names(char **names, int n)
{
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

static int is_case_dir(const char *dir, const char *name)
{
    char *d = path_join(dir, name);
    char *m = d ? path_join(d, "model.onnx") : NULL;
    int ok = m && file_exists(m);
    free(m);
    free(d);
    return ok;
}

static int is_data_set_dir(const char *dir, const char *name)
{
    (void)dir;
    return strncmp(name, "test_data_set_", 14) == 0;
}

static void format_index(const maskd_tensor *t, int64_t flat, char *buf, size_t size)
{
    int64_t idx[MASKD_MAX_DIMS];
    for (int d = t->ndim - 1; d >= 0; d--) {
        idx[d] = t->dims[d] ? flat % t->dims[d] : 0;
        flat = t->dims[d] ? flat / t->dims[d] : 0;
    }
    size_t used = 0;
    used += (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < t->ndim && used < size; d++)
        used += (size_t)snprintf(buf + used, size - used, "%s%lld", d ? "," : "",
                                 (long long)idx[d]);
    if (used < size)
        snprintf(buf + used, size - used, "]");
}

static void format_shape(const maskd_tensor *t, char *buf, size_t size)
{
    size_t used = (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < t->ndim && used < size; d++)
        used += (size_t)snprintf(buf + used, size - used, "%s%lld", d ? "," : "",
                                 (long long)t->dims[d]);
    if (used < size)
        snprintf(buf + used, size - used, "]");
}

static double half_to_double(uint16_t h)
{
    int sign = h >> 15, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
    double v;
    if (exp == 0)
        v = ldexp(frac, -24);
    else if (exp == 31)
        v = frac ? NAN : INFINITY;
    else
        v = ldexp(frac | 0x400, exp - 25);
    return sign ? -v : v;
}

static int is_float_type(maskd_dtype t)
{
    return t == MASKD_FLOAT || t == MASKD_DOUBLE || t == MASKD_FLOAT16;
}

static double float_at(const maskd_tensor *t, int64_t i)
{
    switch (t->dtype) {
    case MASKD_FLOAT: return ((const float *)t->data)[i];
    case MASKD_DOUBLE: return ((const double *)t->data)[i];
    case MASKD_FLOAT16: return half_to_double(((const uint16_t *)t->data)[i]);
    default: return NAN;
    }
}

/* Integers and bools compare exactly; reading them widened keeps one path. */
static int int_at(const maskd_tensor *t, int64_t i, long long *s, unsigned long long *u)
{
    const void *p = t->data;
    switch (t->dtype) {
    case MASKD_INT8: *s = ((const int8_t *)p)[i]; return 1;
    case MASKD_INT16: *s = ((const int16_t *)p)[i]; return 1;
    case MASKD_INT32: *s = ((const int32_t *)p)[i]; return 1;
    case MASKD_INT64: *s = ((const int64_t *)p)[i]; return 1;
    case MASKD_UINT8: *u = ((const uint8_t *)p)[i]; return 0;
    case MASKD_UINT16: *u = ((const uint16_t *)p)[i]; return 0;
    case MASKD_UINT32: *u = ((const uint32_t *)p)[i]; return 0;
    case MASKD_UINT64: *u = ((const uint64_t *)p)[i]; return 0;
    case MASKD_BOOL: *u = ((const uint8_t *)p)[i] != 0; return 0;
    default: *u = 0; return 0;
    }
}

/* 0 when got matches want; otherwise a reason in why. */
static int compare_tensors(const maskd_tensor *got, const maskd_tensor *want,
                           char *why, size_t why_size)
{
    char gs[160], ws[160];
    if (got->dtype != want->dtype) {
        explain(why, why_size, "dtype %s, expected %s", maskd_dtype_name(got->dtype),
                maskd_dtype_name(want->dtype));
        return 1;
    }
    int same_shape = got->ndim == want->ndim;
    for (int d = 0; same_shape && d < got->ndim; d++)
        same_shape = got->dims[d] == want->dims[d];
    if (!same_shape) {
        format_shape(got, gs, sizeof gs);
        format_shape(want, ws, sizeof ws);
        explain(why, why_size, "shape %s, expected %s", gs, ws);
        return 1;
    }
    int64_t n = maskd_tensor_numel(want);
    if (n == 0)
        return 0;
    if (!got->data || !want->data) {
        explain(why, why_size, "%s has no data", got->data ? "expected tensor" : "output");
        return 1;
    }
    if (want->dtype == MASKD_STRING) {
        explain(why, why_size, "string tensors cannot be compared by this runner");
        return 1;
    }
    int64_t bad = 0, worst = -1;
    double worst_excess = -1;
    if (is_float_type(want->dtype)) {
        for (int64_t i = 0; i < n; i++) {
            double a = float_at(got, i), b = float_at(want, i);
            if (isnan(a) && isnan(b))
                continue;
            double excess;
            if (isinf(a) || isinf(b))
                excess = a == b ? -1 : INFINITY;
            else if (isnan(a) || isnan(b))
                excess = INFINITY;
            else
                excess = fabs(a - b) - (ATOL + RTOL * fabs(b));
            if (excess > 0) {
                bad++;
                if (excess > worst_excess) {
                    worst_excess = excess;
                    worst = i;
                }
            }
        }
        if (!bad)
            return 0;
        format_index(want, worst, gs, sizeof gs);
        explain(why, why_size,
                "%lld of %lld values out of tolerance; worst at %s: got %.9g, expected %.9g",
                (long long)bad, (long long)n, gs, float_at(got, worst), float_at(want, worst));
        return 1;
    }
    long long gs_i = 0, ws_i = 0;
    unsigned long long gu = 0, wu = 0;
    for (int64_t i = 0; i < n; i++) {
        int_at(got, i, &gs_i, &gu);
        int_at(want, i, &ws_i, &wu);
        if (gs_i != ws_i || gu != wu) {
            if (!bad)
                worst = i;
            bad++;
        }
    }
    if (!bad)
        return 0;
    int is_signed = int_at(got, worst, &gs_i, &gu);
    int_at(want, worst, &ws_i, &wu);
    format_index(want, worst, gs, sizeof gs);
    if (is_signed)
        explain(why, why_size, "%lld of %lld values differ; first at %s: got %lld, expected %lld",
                (long long)bad, (long long)n, gs, gs_i, ws_i);
    else
        explain(why, why_size, "%lld of %lld values differ; first at %s: got %llu, expected %llu",
                (long long)bad, (long long)n, gs, gu, wu);
    return 1;
}

/* ---- one case ----------------------------------------------------------- */

typedef struct pb_tensor {
    maskd_tensor t;
    char *name;
    int loaded;
} pb_tensor;

static void pb_free(pb_tensor *p, int n)
{
    for (int i = 0; p && i < n; i++) {
        free(p[i].t.data);
        free(p[i].name);
    }
    free(p);
}

static int count_files(const char *dir, const char *prefix)
{
    int n = 0;
    for (;;) {
        char file[64];
        snprintf(file, sizeof file, "%s_%d.pb", prefix, n);
        char *p = path_join(dir, file);
        int ok = p && file_exists(p);
        free(p);
        if (!ok)
            return n;
        n++;
    }
}

/* Reads DIR/PREFIX_0.pb ... into a fresh array: CASE_PASS, or CASE_FAIL /
 * CASE_UNSUPPORTED (a dtype the engine does not have) with why. */
static int load_pb_files(const char *dir, const char *prefix, int n, pb_tensor **out,
                         char *why, size_t why_size)
{
    pb_tensor *arr = calloc(n ? (size_t)n : 1, sizeof *arr);
    if (!arr) {
        explain(why, why_size, "out of memory");
        return CASE_FAIL;
    }
    for (int i = 0; i < n; i++) {
        char file[64];
        snprintf(file, sizeof file, "%s_%d.pb", prefix, i);
        char *path = path_join(dir, file);
        void *data = NULL;
        size_t size = 0;
        if (!path || read_file(path, &data, &size) != 0) {
            explain(why, why_size, "cannot read %s: %s", file, strerror(errno));
            free(path);
            pb_free(arr, n);
            return CASE_FAIL;
        }
        free(path);
        maskd_error err = {0};
        int rc = mk_onnx_parse_tensor(data, size, &arr[i].t, &arr[i].name, &err);
        free(data);
        if (rc != MASKD_OK) {
            explain(why, why_size, "%s: %s", file, err.message);
            pb_free(arr, n);
            return rc == MASKD_ERR_UNSUPPORTED ? CASE_UNSUPPORTED : CASE_FAIL;
        }
        arr[i].loaded = 1;
    }
    *out = arr;
    return CASE_PASS;
}

static void report(const options *opt, const char *name, int result, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void report(const options *opt, const char *name, int result, const char *fmt, ...)
{
    if (result == CASE_PASS && !opt->verbose)
        return;
    if (result == CASE_UNSUPPORTED && !opt->verbose)
        return;
    static const char *const label[] = {"PASS", "FAIL", "UNSUPPORTED"};
    printf("%-11s %s", label[result], name);
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        printf(": ");
        vprintf(fmt, ap);
        va_end(ap);
    }
    printf("\n");
}

/* Runs one data set with an existing session.  CASE_UNSUPPORTED when the
 * engine says so only now (a feature chosen by an input's value, such as
 * Dropout's training_mode) or cannot hold the test data's dtype; the expected
 * list keeps that from hiding a case that should run. */
static int run_data_set(const maskd_model *model, maskd_session *session, const char *set_dir,
                        const char *set_name, char *why, size_t why_size)
{
    int n_model_in = maskd_model_num_inputs(model);
    int n_model_out = maskd_model_num_outputs(model);
    int n_in = count_files(set_dir, "input");
    int n_out = count_files(set_dir, "output");
    pb_tensor *ins = NULL, *outs = NULL;
    maskd_tensor *feed = NULL;
    char inner[400];
    int result = CASE_FAIL;

    if (n_out != n_model_out) {
        explain(why, why_size, "%s: the model has %d outputs, the test data %d", set_name,
                n_model_out, n_out);
        return CASE_FAIL;
    }
    result = load_pb_files(set_dir, "input", n_in, &ins, inner, sizeof inner);
    if (result == CASE_PASS)
        result = load_pb_files(set_dir, "output", n_out, &outs, inner, sizeof inner);
    if (result != CASE_PASS) {
        explain(why, why_size, "%s: %s", set_name, inner);
        pb_free(ins, n_in);
        return result;
    }
    result = CASE_FAIL;
    feed = calloc(n_model_in ? (size_t)n_model_in : 1, sizeof *feed);
    int *fed = calloc(n_model_in ? (size_t)n_model_in : 1, sizeof *fed);
    if (!feed || !fed) {
        explain(why, why_size, "out of memory");
        goto done;
    }
    /* input_K.pb feeds graph input K; the tensor's name says so as well, and
     * the name is what survives an engine that drops or reorders inputs. */
    for (int i = 0; i < n_in; i++) {
        int idx = ins[i].name && ins[i].name[0] ? maskd_model_input_index(model, ins[i].name) : -1;
        if (idx < 0 && !(ins[i].name && ins[i].name[0]))
            idx = i;
        if (idx < 0 || idx >= n_model_in) {
            explain(why, why_size, "%s: input_%d.pb ('%s') feeds no input of the model", set_name,
                    i, ins[i].name ? ins[i].name : "");
            goto done;
        }
        feed[idx] = ins[i].t;
        fed[idx] = 1;
    }
    for (int i = 0; i < n_model_in; i++) {
        if (!fed[i]) {
            explain(why, why_size, "%s: no test data for model input '%s'", set_name,
                    maskd_model_input(model, i)->name);
            goto done;
        }
    }
    maskd_error err = {0};
    int rc = maskd_session_run(session, feed, n_model_in, &err);
    if (rc == MASKD_ERR_UNSUPPORTED) {
        explain(why, why_size, "%s: at run time: %s", set_name, err.message);
        result = CASE_UNSUPPORTED;
        goto done;
    }
    if (rc != MASKD_OK) {
        explain(why, why_size, "%s: run failed (code %d): %s", set_name, rc, err.message);
        goto done;
    }
    for (int i = 0; i < n_out; i++) {
        int idx = outs[i].name && outs[i].name[0] ? maskd_model_output_index(model, outs[i].name)
                                                  : i;
        if (idx < 0 || idx >= n_model_out) {
            explain(why, why_size, "%s: the model has no output '%s'", set_name,
                    outs[i].name ? outs[i].name : "");
            goto done;
        }
        const maskd_tensor *got = maskd_session_output(session, idx);
        if (!got) {
            explain(why, why_size, "%s: output %d is missing after the run", set_name, idx);
            goto done;
        }
        if (compare_tensors(got, &outs[i].t, inner, sizeof inner)) {
            explain(why, why_size, "%s: output '%s': %s", set_name,
                    maskd_model_output(model, idx)->name, inner);
            goto done;
        }
    }
    result = CASE_PASS;
done:
    free(fed);
    free(feed);
    pb_free(ins, n_in);
    pb_free(outs, n_out);
    return result;
}

static int run_case(const options *opt, const char *name)
{
    char why[1024] = "";
    char *case_dir = path_join(opt->data_dir, name);
    char *model_path = case_dir ? path_join(case_dir, "model.onnx") : NULL;
    maskd_model *model = NULL;
    maskd_pool *pool = NULL;
    maskd_session *session = NULL;
    char **sets = NULL;
    int n_sets = 0;
    int result = CASE_FAIL;
    maskd_error err = {0};

    if (!model_path) {
        report(opt, name, CASE_FAIL, "out of memory");
        goto done;
    }
    int rc = maskd_model_load_file(model_path, NULL, &model, &err);
    if (rc == MASKD_ERR_UNSUPPORTED) {
        result = CASE_UNSUPPORTED;
        report(opt, name, result, "%s", err.message);
        goto done;
    }
    if (rc != MASKD_OK) {
        report(opt, name, CASE_FAIL, "load failed (code %d): %s", rc, err.message);
        goto done;
    }
    if (opt->threads > 1 && maskd_pool_create(opt->threads, &pool, &err) != MASKD_OK) {
        report(opt, name, CASE_FAIL, "pool: %s", err.message);
        goto done;
    }
    if (maskd_session_create(model, pool, &session, &err) != MASKD_OK) {
        report(opt, name, CASE_FAIL, "session: %s", err.message);
        goto done;
    }
    sets = list_dir(case_dir, is_data_set_dir, &n_sets);
    if (n_sets == 0) {
        report(opt, name, CASE_FAIL, "no test_data_set_* directory");
        goto done;
    }
    for (int s = 0; s < n_sets; s++) {
        char *set_dir = path_join(case_dir, sets[s]);
        int r = set_dir ? run_data_set(model, session, set_dir, sets[s], why, sizeof why)
                        : CASE_FAIL;
        free(set_dir);
        if (r != CASE_PASS) {
            result = r;
            report(opt, name, r, "%s", why[0] ? why : "out of memory");
            goto done;
        }
    }
    result = CASE_PASS;
    report(opt, name, result, NULL);
done:
    free_names(sets, n_sets);
    maskd_session_free(session);
    maskd_pool_free(pool);
    maskd_model_free(model);
    free(model_path);
    free(case_dir);
    return result;
}

static int run_case_isolated(const options *opt, const char *name)
{
    if (!opt->use_fork)
        return run_case(opt, name);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        printf("%-11s %s: fork: %s\n", "FAIL", name, strerror(errno));
        return CASE_FAIL;
    }
    if (pid == 0) {
        alarm((unsigned)opt->timeout_s);
        int r = run_case(opt, name);
        fflush(stdout);
        exit(r);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            printf("%-11s %s: waitpid: %s\n", "FAIL", name, strerror(errno));
            return CASE_FAIL;
        }
    }
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        if (sig == SIGALRM)
            printf("%-11s %s: timed out after %d s\n", "FAIL", name, opt->timeout_s);
        else
            printf("%-11s %s: crashed with signal %d (%s)\n", "FAIL", name, sig, strsignal(sig));
        return CASE_FAIL;
    }
    int code = WEXITSTATUS(status);
    if (code == CASE_PASS || code == CASE_FAIL || code == CASE_UNSUPPORTED)
        return code;
    /* The sanitizers exit with their own codes (LeakSanitizer: 23). */
    printf("%-11s %s: exited with status %d (a sanitizer report is above)\n", "FAIL", name, code);
    return CASE_FAIL;
}

/* ---- the expected list -------------------------------------------------- */

static char **read_expect_file(const char *path, int *count)
{
    *count = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char **names = NULL;
    int n = 0, cap = 0;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash)
            *hash = 0;
        char *s = line;
        while (isspace((unsigned char)*s))
            s++;
        char *e = s + strlen(s);
        while (e > s && isspace((unsigned char)e[-1]))
            *--e = 0;
        if (!*s)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 128;
            char **bigger = realloc(names, (size_t)cap * sizeof *names);
            if (!bigger)
                break;
            names = bigger;
        }
        names[n] = strdup(s);
        if (names[n])
            n++;
    }
    fclose(f);
    *count = n;
    return names ? names : calloc(1, sizeof *names);
}

static int selected(const options *opt, const char *name)
{
    if (opt->n_patterns == 0)
        return 1;
    for (int i = 0; i < opt->n_patterns; i++)
        if (fnmatch(opt->patterns[i], name, 0) == 0)
            return 1;
    return 0;
}

static int find_case(const case_entry *cases, int n, const char *name)
{
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int c = strcmp(cases[mid].name, name);
        if (c == 0)
            return mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

/* ---- main --------------------------------------------------------------- */

static int parse_args(int argc, char **argv, options *opt)
{
    opt->threads = 2;
    opt->use_fork = 1;
    opt->timeout_s = 120;
    opt->patterns = calloc((size_t)argc, sizeof *opt->patterns);
    if (!opt->patterns)
        return -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            opt->verbose = 1;
        } else if (!strcmp(a, "--no-fork")) {
            opt->use_fork = 0;
        } else if (!strcmp(a, "--lenient")) {
            opt->lenient = 1;
        } else if (!strcmp(a, "--expect") && has_value) {
            opt->expect_path = argv[++i];
        } else if (!strcmp(a, "--print-passing") && has_value) {
            opt->passing_path = argv[++i];
        } else if (!strcmp(a, "--threads") && has_value) {
            opt->threads = atoi(argv[++i]);
            if (opt->threads < 1)
                return -1;
        } else if (!strcmp(a, "--timeout") && has_value) {
            opt->timeout_s = atoi(argv[++i]);
            if (opt->timeout_s < 1)
                return -1;
        } else if (a[0] == '-') {
            return -1;
        } else if (!opt->data_dir) {
            opt->data_dir = a;
        } else {
            opt->patterns[opt->n_patterns++] = argv[i];
        }
    }
    return opt->data_dir ? 0 : -1;
}

int main(int argc, char **argv)
{
    options opt = {0};
    if (parse_args(argc, argv, &opt) != 0) {
        usage(stderr);
        free(opt.patterns);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    int n_all = 0;
    char **all = list_dir(opt.data_dir, is_case_dir, &n_all);
    if (n_all == 0) {
        fprintf(stderr, "maskd_conformance: no case directories (with model.onnx) in %s\n",
                opt.data_dir);
        free(opt.patterns);
        return 1;
    }
    case_entry *cases = calloc((size_t)n_all, sizeof *cases);
    if (!cases) {
        fprintf(stderr, "maskd_conformance: out of memory\n");
        return 1;
    }
    int passed = 0, failed = 0, unsupported = 0, n_selected = 0;
    for (int i = 0; i < n_all; i++) {
        cases[i].name = all[i];
        cases[i].result = CASE_NOT_RUN;
        if (!selected(&opt, all[i]))
            continue;
        n_selected++;
        cases[i].result = run_case_isolated(&opt, all[i]);
        passed += cases[i].result == CASE_PASS;
        failed += cases[i].result == CASE_FAIL;
        unsupported += cases[i].result == CASE_UNSUPPORTED;
    }

    int expect_problems = 0;
    if (opt.expect_path) {
        int n_expect = 0;
        char **expect = read_expect_file(opt.expect_path, &n_expect);
        if (!expect) {
            fprintf(stderr, "maskd_conformance: cannot read %s: %s\n", opt.expect_path,
                    strerror(errno));
            expect_problems++;
        }
        int n_checked = 0;
        char *listed = calloc((size_t)n_all, 1);
        for (int i = 0; expect && i < n_expect; i++) {
            if (!selected(&opt, expect[i]))
                continue;
            n_checked++;
            int k = find_case(cases, n_all, expect[i]);
            if (k >= 0 && listed)
                listed[k] = 1;
            const char *problem = NULL;
            if (k < 0)
                problem = "is not in the test data";
            else if (cases[k].result == CASE_UNSUPPORTED)
                problem = "did not run (unsupported)";
            else if (cases[k].result == CASE_FAIL)
                problem = "failed";
            if (problem) {
                printf("EXPECTED    %s %s\n", expect[i], problem);
                expect_problems++;
            }
        }
        int unlisted = 0;
        for (int i = 0; listed && i < n_all; i++) {
            if (cases[i].result == CASE_PASS && !listed[i]) {
                printf("warning: %s passes but is not in %s\n", cases[i].name, opt.expect_path);
                unlisted++;
            }
        }
        printf("expected: %d listed cases checked, %d did not pass; %d passing cases unlisted\n",
               n_checked, expect_problems, unlisted);
        free(listed);
        free_names(expect, n_expect);
    }

    if (opt.passing_path) {
        FILE *f = fopen(opt.passing_path, "w");
        if (!f) {
            fprintf(stderr, "maskd_conformance: cannot write %s: %s\n", opt.passing_path,
                    strerror(errno));
            expect_problems++;
        } else {
            for (int i = 0; i < n_all; i++)
                if (cases[i].result == CASE_PASS)
                    fprintf(f, "%s\n", cases[i].name);
            fclose(f);
        }
    }

    printf("conformance: %d ran, %d passed, %d failed, %d unsupported\n", passed + failed,
           passed, failed, unsupported);
    printf("%d passed, %d failed\n", passed, failed);

    int status = 0;
    if (n_selected == 0) {
        fprintf(stderr, "maskd_conformance: no case matches the patterns\n");
        status = 1;
    }
    if (expect_problems || (failed && !opt.lenient))
        status = 1;
    free(cases);
    free_names(all, n_all);
    free(opt.patterns);
    return status;
}
