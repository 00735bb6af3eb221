/*
 * JPEG -> model input tensor, with and without libjpeg-turbo's DCT-domain
 * scaling.  Run through bench/decode/run.sh, which builds this and makes the
 * test JPEGs; by hand:
 *
 *   bench_decode [--repeat N] [--wall] FILE.jpg [FILE.jpg ...]
 *
 * For each file and model size S (320, 512) three ways to the same
 * [1, 3, S, S] float tensor (keep-aspect resize with maskd_image_resize_rgb,
 * ImageNet normalisation, zero padding around the letterboxed picture):
 *   full     decode at full size, then resize (area averaging past 2x
 *            shrinking, as an unaliased result needs; bilinear below)
 *   dct      decode at the smallest of 1/8, 1/4, 1/2 still >= S x S, then
 *            resize (bilinear: under 2x left)
 *   dct-fit  the same, but only as large as the letterboxed picture
 *            (maskd_image_options.fit_box)
 *   dct-fit5 and allowed to fall 5% short of it (undersize_percent = 5:
 *            the resize enlarges by up to 5%)
 * The variants alternate within each round (A B C A B C ...) so drift
 * affects them alike.  Columns: medians of decode, resize + normalise and
 * their sum; `ratio` = total / full's total; `vs-dec` = total / full's
 * decode alone (the bound for a free resize).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jpeglib.h>

#include "image.h"

/* The decode is single-threaded, so its thread's CPU time is its latency
 * on an idle machine, and it stays meaningful on a busy one (CI and the
 * team's shared 2-core boxes), where wall time counts the waits for a core.
 * --wall switches to CLOCK_MONOTONIC. */
static clockid_t timer = CLOCK_THREAD_CPUTIME_ID;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(timer, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Letterbox img into a size x size CHW float tensor. */
static int to_tensor(const maskd_image *img, int size, float *tensor, uint8_t *scratch)
{
    static const float mean[3] = {0.485f, 0.456f, 0.406f}, stdev[3] = {0.229f, 0.224f, 0.225f};
    int w, h;
    if (img->width >= img->height) {
        w = size;
        h = (int)(((int64_t)img->height * size + img->width / 2) / img->width);
    } else {
        h = size;
        w = (int)(((int64_t)img->width * size + img->height / 2) / img->height);
    }
    if (w < 1)
        w = 1;
    if (h < 1)
        h = 1;
    int rc = maskd_image_resize_rgb(img->rgb, img->width, img->height, scratch, w, h);
    if (rc != MASKD_OK)
        return rc;
    int x0 = (size - w) / 2, y0 = (size - h) / 2;
    size_t plane = (size_t)size * size;
    memset(tensor, 0, plane * 3 * sizeof(float));
    for (int c = 0; c < 3; c++) {
        float scale = 1.0f / (255.0f * stdev[c]), shift = -mean[c] / stdev[c];
        for (int y = 0; y < h; y++) {
            float *dst = tensor + c * plane + (size_t)(y + y0) * size + x0;
            const uint8_t *src = scratch + (size_t)y * w * 3 + c;
            for (int x = 0; x < w; x++)
                dst[x] = src[3 * x] * scale + shift;
        }
    }
    return MASKD_OK;
}

static uint8_t *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = (size_t)n;
    return buf;
}

enum { VARIANTS = 4 };
static const char *const variant_names[VARIANTS] = {"full", "dct", "dct-fit", "dct-fit5"};

int main(int argc, char **argv)
{
    int repeat = 21, first = 1;
    for (;;) {
        if (first + 1 < argc && strcmp(argv[first], "--repeat") == 0) {
            repeat = atoi(argv[first + 1]);
            first += 2;
        } else if (first < argc && strcmp(argv[first], "--wall") == 0) {
            timer = CLOCK_MONOTONIC;
            first++;
        } else {
            break;
        }
    }
    if (first >= argc || repeat < 1) {
        fprintf(stderr, "usage: %s [--repeat N] [--wall] FILE.jpg...\n", argv[0]);
        return 2;
    }
    static const int sizes[] = {320, 512};
    printf("libjpeg-turbo %d (API %d), %d rounds after 2 warm-up rounds, medians of %s in ms\n",
           LIBJPEG_TURBO_VERSION_NUMBER, JPEG_LIB_VERSION, repeat,
           timer == CLOCK_MONOTONIC ? "wall time" : "thread CPU time");
    printf("%-10s %5s  %-8s %-10s %9s %9s %9s %7s %7s\n", "image", "model", "variant",
           "decoded", "decode", "resize", "total", "ratio", "vs-dec");
    int misses = 0;
    for (int f = first; f < argc; f++) {
        size_t size;
        uint8_t *data = read_file(argv[f], &size);
        if (!data) {
            fprintf(stderr, "cannot read %s\n", argv[f]);
            return 1;
        }
        maskd_image_info info;
        maskd_error err;
        if (maskd_image_probe(data, size, NULL, &info, &err) != MASKD_OK) {
            fprintf(stderr, "%s: %s\n", argv[f], err.message);
            return 1;
        }
        char dims[32];
        snprintf(dims, sizeof dims, "%dx%d", info.width, info.height);
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            int model = sizes[s];
            float *tensor = malloc(sizeof(float) * 3 * model * model);
            uint8_t *scratch = malloc((size_t)model * model * 3);
            double *dec = calloc((size_t)repeat * VARIANTS, sizeof(double));
            double *rsz = calloc((size_t)repeat * VARIANTS, sizeof(double));
            double *tot = calloc((size_t)repeat * VARIANTS, sizeof(double));
            int out_w[VARIANTS] = {0}, out_h[VARIANTS] = {0};
            for (int round = -2; round < repeat; round++) {
                for (int v = 0; v < VARIANTS; v++) {
                    maskd_image_options opt = {0};
                    if (v > 0) {
                        opt.min_width = opt.min_height = model;
                        opt.fit_box = v >= 2;
                        opt.undersize_percent = v == 3 ? 5 : 0;
                    }
                    maskd_image img;
                    double t0 = now_ms();
                    if (maskd_image_decode(data, size, &opt, &img, &err) != MASKD_OK) {
                        fprintf(stderr, "%s: %s\n", argv[f], err.message);
                        return 1;
                    }
                    double t1 = now_ms();
                    if (to_tensor(&img, model, tensor, scratch) != MASKD_OK) {
                        fprintf(stderr, "resize failed\n");
                        return 1;
                    }
                    double t2 = now_ms();
                    out_w[v] = img.width;
                    out_h[v] = img.height;
                    maskd_image_free(&img);
                    if (round >= 0) {
                        dec[v * repeat + round] = t1 - t0;
                        rsz[v * repeat + round] = t2 - t1;
                        tot[v * repeat + round] = t2 - t0;
                    }
                }
            }
            double full = 0, full_decode = 0;
            for (int v = 0; v < VARIANTS; v++) {
                double d = median(dec + v * repeat, repeat), r = median(rsz + v * repeat, repeat);
                double t = median(tot + v * repeat, repeat);
                if (v == 0) {
                    full = t;
                    full_decode = d;
                }
                char decoded[32];
                snprintf(decoded, sizeof decoded, "%dx%d", out_w[v], out_h[v]);
                printf("%-10s %5d  %-8s %-10s %9.2f %9.2f %9.2f %7.3f %7.3f\n", dims, model,
                       variant_names[v], decoded, d, r, t, t / full, t / full_decode);
                if (v == 1 && info.width * (int64_t)info.height >= 4000000 && t / full > 0.35) {
                    printf("  MISS: dct/full %.3f > 0.35\n", t / full);
                    misses++;
                }
            }
            free(tensor);
            free(scratch);
            free(dec);
            free(rsz);
            free(tot);
        }
        free(data);
    }
    printf("target (issue 6): DCT-scaled <= 0.35 x full decode + resize for large JPEGs: %s\n",
           misses ? "MISSED" : "met");
    return 0;
}
