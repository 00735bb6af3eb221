/* `maskd predict`: one image through a model card's pipeline, printing the
 * same JSON the daemon answers with; optionally drawing the result. */
#include <errno.h>
#include <math.h>
#include <png.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "card.h"
#include "cli.h"
#include "decode.h"
#include "image.h"
#include "maskd/pipeline.h"
#include "npy.h"
#include "respond.h"

static const char usage[] =
    "usage: maskd predict IMAGE --model CARD.json [options]\n"
    "Runs the card's pipeline on IMAGE (JPEG or PNG) and prints the answer JSON of\n"
    "POST /v1/models/{model}/predict.\n"
    "  --model CARD        the model card (its .onnx paths are relative to it)\n"
    "  --nms METHOD        hard, soft-linear, soft-gaussian, weighted, diou, softer,\n"
    "                      adaptive, matrix, cluster (within the card's allowed list)\n"
    "  --iou T             IoU threshold, 0..1\n"
    "  --sigma S           soft-gaussian / softer / matrix sigma\n"
    "  --score-threshold T drop detections scoring T or less\n"
    "  --max-detections N  at most N detections\n"
    "  --class-agnostic    NMS across classes\n"
    "  --classes 1,3       report only these class ids\n"
    "  --format F          rle (default), png, polygons, none\n"
    "  --upsample M        segment: bilinear-logits or argmax-nearest\n"
    "  --render OUT.png    draw masks and boxes over the image\n"
    "  --threads N         worker threads, counting the caller (default: all CPUs)\n"
    "  --max-pixels N      refuse larger images (default 100000000)\n"
    "  --dump-dir DIR      write the input tensor and raw outputs as .npy\n"
    "  --pretty            indent the JSON\n"
    "  --repeat N          run N more times (on --workers K threads, each with its own\n"
    "                      worker, sharing the pool) and print latency, throughput and\n"
    "                      CPU time to stderr; fails if any answer differs from the first\n"
    "  --decode-each       with --repeat: decode IMAGE again in every run, as the daemon\n"
    "                      does for every request (default: decode once, time the rest)\n"
    "Exit status: 0 done, 2 bad image or options (the daemon's 4xx), 1 otherwise.\n";

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* The error body the daemon would send, on stdout; the message on stderr. */
static int print_error(int exit_code, const char *code, const char *message)
{
    json_t *e = maskd_error_json(code, message);
    char *s = e ? json_dumps(e, MASKD_JSON_FLAGS) : NULL;
    if (s) puts(s);
    free(s);
    json_decref(e);
    return cli_fail(exit_code, "%s", message);
}

static int read_file(const char *path, unsigned char **data, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t cap = 1 << 16, len = 0;
    unsigned char *buf = malloc(cap);
    while (buf) {
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (len < cap) break;
        unsigned char *b = cap > ((size_t)1 << 31) ? NULL : realloc(buf, cap * 2);
        if (!b) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = b;
        cap *= 2;
    }
    int bad = ferror(f) || !buf;
    fclose(f);
    if (bad) {
        free(buf);
        errno = errno ? errno : ENOMEM;
        return -1;
    }
    *data = buf;
    *size = len;
    return 0;
}

static int parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

/* ---- rendering -------------------------------------------------------- */

/* The PASCAL VOC colour map (the same colours as the PNG class maps). */
static void class_color(int k, uint8_t rgb[3])
{
    rgb[0] = rgb[1] = rgb[2] = 0;
    for (int bit = 7; k; bit--, k >>= 3) {
        rgb[0] |= (uint8_t)(((k >> 0) & 1) << bit);
        rgb[1] |= (uint8_t)(((k >> 1) & 1) << bit);
        rgb[2] |= (uint8_t)(((k >> 2) & 1) << bit);
    }
}

static void blend(uint8_t *px, const uint8_t c[3], int alpha256)
{
    for (int i = 0; i < 3; i++) px[i] = (uint8_t)((px[i] * (256 - alpha256) + c[i] * alpha256) >> 8);
}

static void draw_box(uint8_t *rgb, int w, int h, const float box[4], const uint8_t c[3])
{
    int x0 = (int)floorf(box[0]), y0 = (int)floorf(box[1]);
    int x1 = (int)ceilf(box[2]) - 1, y1 = (int)ceilf(box[3]) - 1;
    for (int t = 0; t < 2; t++) {
        for (int x = x0; x <= x1; x++)
            for (int yy = 0; yy < 2; yy++) {
                int y = yy ? y1 - t : y0 + t;
                if (x >= 0 && x < w && y >= 0 && y < h) memcpy(rgb + ((size_t)y * w + x) * 3, c, 3);
            }
        for (int y = y0; y <= y1; y++)
            for (int xx = 0; xx < 2; xx++) {
                int x = xx ? x1 - t : x0 + t;
                if (x >= 0 && x < w && y >= 0 && y < h) memcpy(rgb + ((size_t)y * w + x) * 3, c, 3);
            }
    }
}

static int write_png(const char *path, const uint8_t *rgb, int w, int h, char *msg, size_t msz)
{
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    img.width = (png_uint_32)w;
    img.height = (png_uint_32)h;
    img.format = PNG_FORMAT_RGB;
    if (!png_image_write_to_file(&img, path, 0, rgb, w * 3, NULL)) {
        snprintf(msg, msz, "--render %s: %s", path, img.message);
        return -1;
    }
    return 0;
}

static int render(const char *path, const maskd_image *image, const maskd_result *res, char *msg,
                  size_t msz)
{
    int w = res->width, h = res->height;
    size_t n = (size_t)w * (size_t)h;
    uint8_t *rgb = malloc(n * 3);
    if (!rgb) {
        snprintf(msg, msz, "--render: out of memory");
        return -1;
    }
    if (image->width == w && image->height == h)
        memcpy(rgb, image->rgb, n * 3);
    else if (maskd_image_resize_rgb(image->rgb, image->width, image->height, rgb, w, h)) {
        free(rgb);
        snprintf(msg, msz, "--render: cannot resize the image");
        return -1;
    }
    if (res->kind == MASKD_PIPELINE_SEGMENT && res->class_map.data) {
        for (int i = 0; i < res->n_segments; i++) {
            int32_t k = res->segments[i].class_id;
            uint8_t c[3];
            class_color(k, c);
            maskd_mask m = maskd_mask_of_class(&res->class_map, k);
            for (int y = res->segments[i].box[1]; y < res->segments[i].box[3]; y++)
                for (int x = res->segments[i].box[0]; x < res->segments[i].box[2]; x++)
                    if (maskd_mask_at(&m, x, y)) blend(rgb + ((size_t)y * w + x) * 3, c, 128);
            float box[4] = {(float)res->segments[i].box[0], (float)res->segments[i].box[1],
                            (float)res->segments[i].box[2], (float)res->segments[i].box[3]};
            draw_box(rgb, w, h, box, c);
        }
    }
    uint8_t *mask = res->n_detections ? malloc(n ? n : 1) : NULL;
    for (int64_t i = res->n_detections - 1; i >= 0; i--) {
        const maskd_detection *d = &res->detections[i];
        uint8_t c[3];
        class_color(d->class_id, c);
        maskd_error e;
        if (mask && d->has_mask && d->rle.counts && !maskd_rle_decode(&d->rle, mask, &e))
            for (size_t p = 0; p < n; p++)
                if (mask[p]) blend(rgb + p * 3, c, 110);
        draw_box(rgb, w, h, d->box, c);
    }
    free(mask);
    int rc = write_png(path, rgb, w, h, msg, msz);
    free(rgb);
    return rc;
}

/* ---- debugging dumps ------------------------------------------------------ */

static void safe_name(const char *name, char *out, size_t size)
{
    size_t i = 0;
    for (; name[i] && i + 1 < size; i++) {
        char c = name[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-';
        out[i] = ok ? c : '_';
    }
    out[i] = 0;
}

static int dump(const char *dir, const maskd_worker *w, maskd_error *err)
{
    if (mkdir(dir, 0777) && errno != EEXIST) {
        snprintf(err->message, sizeof err->message, "--dump-dir %s: %s", dir, strerror(errno));
        return 1;
    }
    char path[4096], name[256];
    snprintf(path, sizeof path, "%s/input.npy", dir);
    int rc = maskd_npy_write(path, maskd_worker_input(w), err);
    for (int stage = 0; stage < 2 && !rc; stage++)
        for (int i = 0; i < maskd_worker_num_outputs(w, stage) && !rc; i++) {
            const maskd_tensor *t = maskd_worker_output(w, stage, i);
            if (!t) continue;
            safe_name(maskd_worker_output_name(w, stage, i), name, sizeof name);
            snprintf(path, sizeof path, "%s/%s%s.npy", dir, stage ? "stage2_" : "", name);
            rc = maskd_npy_write(path, t, err);
        }
    return rc;
}

/* ---- --repeat: latency and concurrent workers ----------------------------- */

/* The answer without its timings, to compare runs. */
static char *answer_key(const maskd_result *res)
{
    json_t *j = maskd_result_to_json(res, NULL);
    if (!j) return NULL;
    json_object_del(j, "timing_ms");
    char *s = json_dumps(j, MASKD_JSON_FLAGS);
    json_decref(j);
    return s;
}

typedef struct repeat_job {
    const maskd_pipeline *pipe;
    maskd_pool *pool;
    const maskd_image *image;
    /* --decode-each: the file's bytes, decoded again in every run */
    const unsigned char *bytes;
    size_t n_bytes;
    int64_t max_pixels;
    const maskd_request *req;
    const char *expect;
    int runs;
    double *ms;    /* [runs] */
    int mismatches;
    maskd_error err;
    int rc;
} repeat_job;

static void *repeat_thread(void *arg)
{
    repeat_job *j = arg;
    maskd_worker *w = NULL;
    j->rc = maskd_worker_create(j->pipe, j->pool, &w, &j->err);
    for (int i = 0; i < j->runs && !j->rc; i++) {
        maskd_result res;
        memset(&res, 0, sizeof res);
        maskd_image decoded = {0};
        double t0 = now_ms();
        if (j->bytes)
            j->rc = maskd_decode_for_pipeline(j->bytes, j->n_bytes, j->pipe, j->max_pixels,
                                              &decoded, &j->err);
        if (!j->rc)
            j->rc = maskd_pipeline_run(w, j->bytes ? &decoded : j->image, j->req, &res, &j->err);
        j->ms[i] = now_ms() - t0;
        maskd_image_free(&decoded);
        if (!j->rc) {
            char *key = answer_key(&res);
            j->mismatches += !key || strcmp(key, j->expect);
            free(key);
        }
        maskd_result_free(&res);
    }
    maskd_worker_free(w);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Process CPU time (every thread, user + system) in ms. */
static double cpu_ms(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

static int repeat_runs(const maskd_pipeline *pipe, maskd_pool *pool, const maskd_image *image,
                       const unsigned char *bytes, size_t n_bytes, int64_t max_pixels,
                       const maskd_request *req, const maskd_result *first, int repeat,
                       int workers)
{
    char *expect = answer_key(first);
    repeat_job *jobs = calloc((size_t)workers, sizeof *jobs);
    pthread_t *threads = calloc((size_t)workers, sizeof *threads);
    double *ms = calloc((size_t)repeat * (size_t)workers + 1, sizeof *ms);
    int rc = 1, started = 0;
    if (!expect || !jobs || !threads || !ms) {
        cli_fail(1, "--repeat: out of memory");
        goto done;
    }
    double t0 = now_ms(), cpu0 = cpu_ms();
    for (int k = 0; k < workers; k++) {
        jobs[k] = (repeat_job){pipe, pool, image, bytes, n_bytes, max_pixels, req, expect, repeat,
                               ms + (size_t)k * repeat, 0, {0}, 0};
        if (pthread_create(&threads[k], NULL, repeat_thread, &jobs[k])) break;
        started++;
    }
    int mismatches = 0, failed = started < workers;
    for (int k = 0; k < started; k++) {
        pthread_join(threads[k], NULL);
        mismatches += jobs[k].mismatches;
        if (jobs[k].rc) {
            cli_fail(1, "--repeat: worker %d: %s", k, jobs[k].err.message);
            failed = 1;
        }
    }
    double wall = now_ms() - t0, cpu = cpu_ms() - cpu0;
    int n = repeat * workers;
    qsort(ms, (size_t)n, sizeof *ms, cmp_double);
    /* CPU per image next to images/s: on a shared machine the first moves
     * much less than the second. */
    fprintf(stderr,
            "maskd: %d runs on %d worker%s%s: min %.2f ms, median %.2f ms, max %.2f ms, "
            "cpu %.2f ms/image, %.2f images/s; %s\n",
            n, workers, workers == 1 ? "" : "s", bytes ? " (decoding each)" : "", ms[0],
            ms[n / 2], ms[n - 1], cpu / n, n / (wall / 1e3),
            mismatches ? "SOME ANSWERS DIFFER" : "every answer identical");
    if (mismatches) cli_fail(1, "--repeat: %d answers differ from the first", mismatches);
    rc = failed || mismatches;
done:
    free(expect);
    free(jobs);
    free(threads);
    free(ms);
    return rc;
}

/* ---- the command --------------------------------------------------------- */

int maskd_cmd_predict(int argc, char **argv)
{
    const char *image_path = NULL, *card_path = NULL, *render_path = NULL, *dump_dir = NULL;
    /* Request options go to maskd_request_parse as the daemon's query would. */
    static const char *const option_flags[][2] = {
        {"--nms", "nms"},
        {"--iou", "iou"},
        {"--sigma", "sigma"},
        {"--score-threshold", "score_threshold"},
        {"--max-detections", "max_detections"},
        {"--classes", "classes"},
        {"--format", "format"},
        {"--upsample", "upsample"},
    };
    const char *opt_keys[16], *opt_values[16];
    int n_opts = 0, threads = 0, pretty = 0, repeat = 0, workers = 1, decode_each = 0;
    double max_pixels = 1e8;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_val = i + 1 < argc, matched = 0;
        for (size_t k = 0; k < sizeof option_flags / sizeof option_flags[0] && !matched; k++)
            if (!strcmp(a, option_flags[k][0]) && has_val && n_opts < 15) {
                opt_keys[n_opts] = option_flags[k][1];
                opt_values[n_opts++] = argv[++i];
                matched = 1;
            }
        if (matched) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(a, "--model") && has_val) {
            card_path = argv[++i];
        } else if (!strcmp(a, "--class-agnostic") && n_opts < 15) {
            opt_keys[n_opts] = "class_agnostic";
            opt_values[n_opts++] = "true";
        } else if (!strcmp(a, "--render") && has_val) {
            render_path = argv[++i];
        } else if (!strcmp(a, "--dump-dir") && has_val) {
            dump_dir = argv[++i];
        } else if (!strcmp(a, "--threads") && has_val) {
            if (cli_parse_int(argv[++i], 1, 256, &threads))
                return cli_fail(64, "--threads wants a number from 1 to 256");
        } else if (!strcmp(a, "--max-pixels") && has_val) {
            if (parse_double(argv[++i], &max_pixels) || max_pixels < 1 || max_pixels > 9e15)
                return cli_fail(64, "--max-pixels wants a positive number");
        } else if (!strcmp(a, "--repeat") && has_val) {
            if (cli_parse_int(argv[++i], 1, 1000000, &repeat))
                return cli_fail(64, "--repeat wants a number from 1 to 1000000");
        } else if (!strcmp(a, "--workers") && has_val) {
            if (cli_parse_int(argv[++i], 1, 64, &workers))
                return cli_fail(64, "--workers wants a number from 1 to 64");
        } else if (!strcmp(a, "--pretty")) {
            pretty = 1;
        } else if (!strcmp(a, "--decode-each")) {
            decode_each = 1;
        } else if (a[0] != '-' && !image_path) {
            image_path = a;
        } else {
            fputs(usage, stderr);
            return cli_fail(64, "unexpected argument '%s'", a);
        }
    }
    if (!image_path || !card_path) {
        fputs(usage, stderr);
        return cli_fail(64, "an IMAGE and --model CARD are required");
    }

    maskd_error err = {0};
    maskd_card card;
    maskd_pipeline *pipe = NULL;
    maskd_pool *pool = NULL;
    maskd_worker *worker = NULL;
    unsigned char *bytes = NULL;
    size_t nbytes = 0;
    maskd_image image = {0};
    maskd_result res = {0};
    maskd_request req = {0};
    char *doc = NULL;
    int exit_code = 1;

    if (maskd_card_load_file(card_path, &card, &err))
        return print_error(1, "model_load_failed", err.message);
    int rc = maskd_pipeline_load(&card, NULL, &pipe, &err);
    maskd_card_free(&card);
    if (rc) {
        exit_code = print_error(1, "model_load_failed", err.message);
        goto out;
    }

    maskd_request_init(&req, pipe);
    if (maskd_request_parse(&req, pipe, n_opts, opt_keys, opt_values, &err)) {
        exit_code = print_error(2, "invalid_parameter", err.message);
        goto out;
    }
    req.keep_class_map = render_path != NULL;
    req.keep_masks = render_path != NULL;

    if (read_file(image_path, &bytes, &nbytes)) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s: %s", image_path, strerror(errno));
        exit_code = print_error(1, "io_error", msg);
        goto out;
    }
    double t0 = now_ms();
    rc = maskd_decode_for_pipeline(bytes, nbytes, pipe, (int64_t)max_pixels, &image, &err);
    if (rc) {
        exit_code = print_error(maskd_image_http_status(rc) < 500 ? 2 : 1,
                                maskd_image_error_code(rc), err.message);
        goto out;
    }
    double decode_ms = now_ms() - t0;

    if (maskd_pool_create(threads, &pool, &err) ||
        maskd_worker_create(pipe, pool, &worker, &err)) {
        exit_code = print_error(1, "internal_error", err.message);
        goto out;
    }
    rc = maskd_pipeline_run(worker, &image, &req, &res, &err);
    if (rc) {
        exit_code = print_error(rc == MASKD_ERR_INVALID ? 2 : 1,
                                rc == MASKD_ERR_INVALID ? "invalid_parameter" : "inference_failed",
                                err.message);
        goto out;
    }
    if (dump_dir && dump(dump_dir, worker, &err)) {
        exit_code = print_error(1, "io_error", err.message);
        goto out;
    }
    maskd_respond_extra extra = {decode_ms, 0.0};
    json_t *j = maskd_result_to_json(&res, &extra);
    doc = j ? json_dumps(j, pretty ? JSON_INDENT(2) | JSON_REAL_PRECISION(10) : MASKD_JSON_FLAGS)
            : NULL;
    json_decref(j);
    if (!doc) {
        exit_code = print_error(1, "out_of_memory", "out of memory writing the answer");
        goto out;
    }
    puts(doc);
    if (render_path) {
        char msg[600];
        if (render(render_path, &image, &res, msg, sizeof msg)) {
            exit_code = cli_fail(1, "%s", msg);
            goto out;
        }
    }
    exit_code = repeat ? repeat_runs(pipe, pool, &image, decode_each ? bytes : NULL, nbytes,
                                     (int64_t)max_pixels, &req, &res, repeat, workers)
                       : 0;
out:
    free(doc);
    maskd_request_free(&req);
    maskd_result_free(&res);
    maskd_worker_free(worker);
    maskd_pool_free(pool);
    maskd_pipeline_free(pipe);
    maskd_image_free(&image);
    free(bytes);
    return exit_code;
}
