/*
 * Tests of server/image*.c.
 *
 *   maskd_image_test run DIR
 *       runs DIR/manifest.txt (written by gen_images.py) and the built-in
 *       checks (sniffing, error codes, scale choice, resize, every-prefix
 *       truncation and random corruption of small files); prints
 *       "N passed, M failed".
 *   maskd_image_test ycck IN.cmyk WIDTH HEIGHT OUT.jpg
 *       encodes raw Adobe (inverted) CMYK as a YCCK JPEG, which PIL cannot.
 *   maskd_image_test transcode IN.jpg OUT.jpg arith|arith-progressive|restart
 *       lossless re-encoding of the coefficients (so PIL's decode of IN is
 *       the exact reference for OUT), which PIL cannot write either.
 *
 * Manifest lines: NAME key=value ...  with keys
 *   file, op (decode|probe), expect (ok|any|<error code>), max_pixels,
 *   min_w, min_h, alpha (drop|white), fmt, w, h, ow, oh, orient,
 *   ref (a P6 .ppm), mean_tol, max_tol, quads (4 x RRGGBB: TL,TR,BL,BR), quad_tol.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#include "image.h"
#include "image_internal.h"

static int passed, failed, verbose;

static void check(int ok, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void check(int ok, const char *name, const char *fmt, ...)
{
    if (ok) {
        passed++;
        return;
    }
    failed++;
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL %s: ", name);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

static uint8_t *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    /* one spare NUL byte so text parsers (the PPM header) stop in bounds */
    uint8_t *buf = calloc(1, n > 0 ? (size_t)n + 1 : 1);
    if (buf && n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = n > 0 ? (size_t)n : 0;
    return buf;
}

static int write_file(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    int ok = fwrite(data, 1, size, f) == size;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static uint8_t *read_ppm(const char *path, int *w, int *h)
{
    size_t size;
    uint8_t *buf = read_file(path, &size);
    if (!buf)
        return NULL;
    int maxval, consumed = 0;
    if (sscanf((char *)buf, "P6 %d %d %d%n", w, h, &maxval, &consumed) != 3 || maxval != 255 ||
        (size_t)consumed + 1 + (size_t)*w * *h * 3 > size) {
        free(buf);
        return NULL;
    }
    uint8_t *px = malloc((size_t)*w * *h * 3);
    memcpy(px, buf + consumed + 1, (size_t)*w * *h * 3);
    free(buf);
    return px;
}

/* ---- helper encoders ------------------------------------------------------ */

struct tool_err {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
};

static void tool_error_exit(j_common_ptr cinfo)
{
    (*cinfo->err->output_message)(cinfo);
    longjmp(((struct tool_err *)cinfo->err)->jump, 1);
}

static int cmd_ycck(int argc, char **argv)
{
    if (argc != 6)
        return fprintf(stderr, "usage: ycck IN.cmyk W H OUT.jpg\n"), 2;
    int w = atoi(argv[3]), h = atoi(argv[4]);
    size_t size;
    uint8_t *cmyk = read_file(argv[2], &size);
    if (!cmyk || size != (size_t)w * h * 4)
        return fprintf(stderr, "ycck: %s is not %dx%dx4 bytes\n", argv[2], w, h), 1;
    struct jpeg_compress_struct c;
    struct tool_err e;
    c.err = jpeg_std_error(&e.pub);
    e.pub.error_exit = tool_error_exit;
    unsigned char *out = NULL;
    unsigned long out_size = 0;
    if (setjmp(e.jump))
        return 1;
    jpeg_create_compress(&c);
    jpeg_mem_dest(&c, &out, &out_size);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = 4;
    c.in_color_space = JCS_CMYK;
    jpeg_set_defaults(&c);
    jpeg_set_colorspace(&c, JCS_YCCK); /* writes the Adobe marker, transform 2 */
    jpeg_set_quality(&c, 95, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = cmyk + (size_t)c.next_scanline * w * 4;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    int rc = write_file(argv[5], out, out_size) ? 1 : 0;
    free(out);
    free(cmyk);
    return rc;
}

static int cmd_transcode(int argc, char **argv)
{
    if (argc != 5)
        return fprintf(stderr, "usage: transcode IN.jpg OUT.jpg MODE\n"), 2;
    const char *mode = argv[4];
    size_t size;
    uint8_t *in = read_file(argv[2], &size);
    if (!in)
        return fprintf(stderr, "transcode: cannot read %s\n", argv[2]), 1;
    struct jpeg_decompress_struct d;
    struct jpeg_compress_struct c;
    struct tool_err e;
    d.err = jpeg_std_error(&e.pub);
    c.err = d.err;
    e.pub.error_exit = tool_error_exit;
    unsigned char *out = NULL;
    unsigned long out_size = 0;
    if (setjmp(e.jump))
        return 1;
    jpeg_create_decompress(&d);
    jpeg_create_compress(&c);
    jpeg_mem_src(&d, in, (unsigned long)size);
    jpeg_save_markers(&d, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(&d, TRUE);
    jvirt_barray_ptr *coefs = jpeg_read_coefficients(&d);
    jpeg_copy_critical_parameters(&d, &c);
    if (strcmp(mode, "arith") == 0) {
        c.arith_code = TRUE;
    } else if (strcmp(mode, "arith-progressive") == 0) {
        c.arith_code = TRUE;
        jpeg_simple_progression(&c);
    } else if (strcmp(mode, "restart") == 0) {
        c.restart_in_rows = 1;
    } else {
        return fprintf(stderr, "transcode: unknown mode %s\n", mode), 2;
    }
    jpeg_mem_dest(&c, &out, &out_size);
    jpeg_write_coefficients(&c, coefs);
    for (jpeg_saved_marker_ptr m = d.marker_list; m; m = m->next)
        jpeg_write_marker(&c, m->marker, m->data, m->data_length);
    jpeg_finish_compress(&c);
    jpeg_finish_decompress(&d);
    jpeg_destroy_compress(&c);
    jpeg_destroy_decompress(&d);
    int rc = write_file(argv[3], out, out_size) ? 1 : 0;
    free(out);
    free(in);
    return rc;
}

/* ---- manifest ------------------------------------------------------------- */

typedef struct kv {
    char key[32];
    char value[512];
} kv;

static const char *get(const kv *kvs, int n, const char *key, const char *fallback)
{
    for (int i = 0; i < n; i++)
        if (strcmp(kvs[i].key, key) == 0)
            return kvs[i].value;
    return fallback;
}

static int known_error_code(int code)
{
    return code == MASKD_IMAGE_ERR_EMPTY || code == MASKD_IMAGE_ERR_UNSUPPORTED ||
           code == MASKD_IMAGE_ERR_TOO_LARGE || code == MASKD_IMAGE_ERR_INVALID ||
           code == MASKD_IMAGE_ERR_TRUNCATED || code == MASKD_ERR_NOMEM;
}

static void compare_pixels(const char *name, const maskd_image *img, const char *ref_path,
                           double mean_tol, int max_tol)
{
    int rw, rh;
    uint8_t *ref = read_ppm(ref_path, &rw, &rh);
    if (!ref) {
        check(0, name, "cannot read reference %s", ref_path);
        return;
    }
    if (rw != img->width || rh != img->height) {
        check(0, name, "reference is %dx%d, decoded %dx%d", rw, rh, img->width, img->height);
        free(ref);
        return;
    }
    size_t n = (size_t)rw * rh * 3;
    double sum = 0;
    int worst = 0;
    size_t worst_at = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)img->rgb[i] - (int)ref[i]);
        sum += d;
        if (d > worst) {
            worst = d;
            worst_at = i;
        }
    }
    double mean = sum / (double)n;
    if (verbose)
        printf("%-36s   vs reference: mean |d| %.3f, max %d\n", name, mean, worst);
    check(mean <= mean_tol && worst <= max_tol, name,
          "pixels differ from %s: mean |d| %.3f (tolerance %.3f), max %d (tolerance %d) at "
          "x=%zu y=%zu c=%zu",
          ref_path, mean, mean_tol, worst, max_tol, (worst_at / 3) % (size_t)rw,
          worst_at / 3 / (size_t)rw, worst_at % 3);
    free(ref);
}

static void check_quads(const char *name, const maskd_image *img, const char *quads, int tol)
{
    unsigned col[4];
    if (sscanf(quads, "%6x,%6x,%6x,%6x", &col[0], &col[1], &col[2], &col[3]) != 4) {
        check(0, name, "bad quads= value %s", quads);
        return;
    }
    static const char *where[4] = {"top-left", "top-right", "bottom-left", "bottom-right"};
    for (int q = 0; q < 4; q++) {
        int x = img->width * (q % 2 ? 3 : 1) / 4, y = img->height * (q / 2 ? 3 : 1) / 4;
        const uint8_t *p = img->rgb + ((size_t)y * img->width + x) * 3;
        int want[3] = {(int)(col[q] >> 16) & 255, (int)(col[q] >> 8) & 255, (int)col[q] & 255};
        int ok = abs(p[0] - want[0]) <= tol && abs(p[1] - want[1]) <= tol &&
                 abs(p[2] - want[2]) <= tol;
        check(ok, name, "%s quadrant is %02x%02x%02x, expected %06x", where[q], p[0], p[1],
              p[2], col[q]);
    }
}

static void run_case(const char *dir, const char *name, const kv *kvs, int n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, get(kvs, n, "file", ""));
    size_t size = 0;
    uint8_t *data = read_file(path, &size);
    if (!data) {
        check(0, name, "cannot read %s: %s", path, strerror(errno));
        return;
    }
    maskd_image_options opt = {
        .max_pixels = atoll(get(kvs, n, "max_pixels", "100000000")),
        .min_width = atoi(get(kvs, n, "min_w", "0")),
        .min_height = atoi(get(kvs, n, "min_h", "0")),
        .fit_box = atoi(get(kvs, n, "fit", "0")),
        .undersize_percent = atoi(get(kvs, n, "undersize", "0")),
        .alpha = strcmp(get(kvs, n, "alpha", "drop"), "white") == 0 ? MASKD_IMAGE_ALPHA_WHITE
                                                                     : MASKD_IMAGE_ALPHA_DROP,
    };
    const char *expect = get(kvs, n, "expect", "ok");
    const char *fmt = get(kvs, n, "fmt", NULL);
    if (fmt) {
        const char *got = maskd_image_format_name(maskd_image_sniff(data, size));
        check(strcmp(got, fmt) == 0, name, "sniffed %s, expected %s", got, fmt);
    }
    maskd_error err = {0};
    maskd_image img = {0};
    maskd_image_info info;
    int probe = strcmp(get(kvs, n, "op", "decode"), "probe") == 0;
    int rc = probe ? maskd_image_probe(data, size, &opt, &info, &err)
                   : maskd_image_decode(data, size, &opt, &img, &err);
    free(data);
    if (verbose)
        printf("%-36s %s%s%s\n", name, rc ? maskd_image_error_code(rc) : "ok",
               rc ? ": " : "", rc ? err.message : "");

    if (strcmp(expect, "any") == 0) {
        check(rc == MASKD_OK || known_error_code(rc), name, "unexpected status %d (%s)", rc,
              err.message);
        check(rc != MASKD_OK || (img.rgb && img.width > 0 && img.height > 0) || probe, name,
              "success without pixels");
        maskd_image_free(&img);
        return;
    }
    if (strcmp(expect, "ok") != 0) {
        const char *code = maskd_image_error_code(rc);
        check(rc != MASKD_OK && strcmp(code, expect) == 0 && err.code == rc && err.message[0],
              name, "expected %s, got status %d (%s): %s", expect, rc, code,
              rc ? err.message : "decoded");
        check(img.rgb == NULL && img.width == 0, name, "failed decode left pixels behind");
        /* the header's size is still reported for a refused bomb */
        if (probe && get(kvs, n, "w", NULL))
            check(info.width == atoi(get(kvs, n, "w", "0")) &&
                      info.height == atoi(get(kvs, n, "h", "0")),
                  name, "probe size %dx%d", info.width, info.height);
        maskd_image_free(&img);
        return;
    }
    if (rc != MASKD_OK) {
        check(0, name, "expected success, got %s: %s", maskd_image_error_code(rc), err.message);
        return;
    }
    if (probe) {
        int w = atoi(get(kvs, n, "w", "-1")), h = atoi(get(kvs, n, "h", "-1"));
        int orient = atoi(get(kvs, n, "orient", "1"));
        check(info.width == w && info.height == h && info.orientation == orient, name,
              "probe gave %dx%d orientation %d, expected %dx%d orientation %d", info.width,
              info.height, info.orientation, w, h, orient);
        return;
    }
    int w = atoi(get(kvs, n, "w", "-1")), h = atoi(get(kvs, n, "h", "-1"));
    int ow = atoi(get(kvs, n, "ow", get(kvs, n, "w", "-1")));
    int oh = atoi(get(kvs, n, "oh", get(kvs, n, "h", "-1")));
    check(img.width == w && img.height == h && img.orig_width == ow && img.orig_height == oh,
          name, "decoded %dx%d (original %dx%d), expected %dx%d (original %dx%d)", img.width,
          img.height, img.orig_width, img.orig_height, w, h, ow, oh);
    if (img.width == w && img.height == h) {
        const char *ref = get(kvs, n, "ref", NULL);
        if (ref) {
            snprintf(path, sizeof path, "%s/%s", dir, ref);
            compare_pixels(name, &img, path, atof(get(kvs, n, "mean_tol", "0.5")),
                           atoi(get(kvs, n, "max_tol", "2")));
        }
        const char *quads = get(kvs, n, "quads", NULL);
        if (quads)
            check_quads(name, &img, quads, atoi(get(kvs, n, "quad_tol", "40")));
    }
    maskd_image_free(&img);
}

static int run_manifest(const char *dir)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/manifest.txt", dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        check(0, "manifest", "cannot open %s (run gen_images.py first)", path);
        return 0;
    }
    char line[4096];
    int cases = 0;
    while (fgets(line, sizeof line, f)) {
        char *save = NULL, *name = strtok_r(line, " \t\r\n", &save);
        if (!name || name[0] == '#')
            continue;
        kv kvs[32];
        int n = 0;
        for (char *tok; n < 32 && (tok = strtok_r(NULL, " \t\r\n", &save));) {
            char *eq = strchr(tok, '=');
            if (!eq)
                continue;
            *eq = 0;
            snprintf(kvs[n].key, sizeof kvs[n].key, "%s", tok);
            snprintf(kvs[n].value, sizeof kvs[n].value, "%s", eq + 1);
            n++;
        }
        run_case(dir, name, kvs, n);
        cases++;
    }
    fclose(f);
    check(cases > 50, "manifest", "only %d cases in %s", cases, path);
    return cases;
}

/* ---- built-in checks --------------------------------------------------------- */

static void test_sniff(void)
{
    static const struct {
        const char *bytes;
        size_t n;
        maskd_image_format want;
    } cases[] = {
        {"\xFF\xD8\xFF\xE0", 4, MASKD_IMAGE_JPEG},
        {"\xFF\xD8", 2, MASKD_IMAGE_UNKNOWN},
        {"\x89PNG\r\n\x1a\n", 8, MASKD_IMAGE_PNG},
        {"\x89PNG\r\n\x1a", 7, MASKD_IMAGE_UNKNOWN},
        {"GIF89a", 6, MASKD_IMAGE_GIF},
        {"GIF87a", 6, MASKD_IMAGE_GIF},
        {"RIFF\x10\0\0\0WEBPVP8 ", 16, MASKD_IMAGE_WEBP},
        {"RIFF\x10\0\0\0WAVEfmt ", 16, MASKD_IMAGE_UNKNOWN},
        {"II*\0\x08\0\0\0", 8, MASKD_IMAGE_TIFF},
        {"MM\0*\0\0\0\x08", 8, MASKD_IMAGE_TIFF},
        {"\0\0\0\x18" "ftypheic\0\0\0\0", 16, MASKD_IMAGE_HEIF},
        {"\0\0\0\x1c" "ftypavif\0\0\0\0", 16, MASKD_IMAGE_HEIF},
        {"\0\0\0\x18" "ftypmp42\0\0\0\0", 16, MASKD_IMAGE_UNKNOWN},
        {"BMnot an image at all", 21, MASKD_IMAGE_UNKNOWN},
        {"<html><body>", 12, MASKD_IMAGE_UNKNOWN},
        {"", 0, MASKD_IMAGE_UNKNOWN},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        maskd_image_format got = maskd_image_sniff(cases[i].bytes, cases[i].n);
        check(got == cases[i].want, "sniff", "case %zu: %s, expected %s", i,
              maskd_image_format_name(got), maskd_image_format_name(cases[i].want));
    }
    check(maskd_image_sniff(NULL, 10) == MASKD_IMAGE_UNKNOWN, "sniff", "NULL data");
    check(strcmp(maskd_image_format_mime(MASKD_IMAGE_PNG), "image/png") == 0 &&
              maskd_image_format_mime(MASKD_IMAGE_UNKNOWN) == NULL,
          "mime", "format mime types");
}

static void test_errors(void)
{
    static const struct {
        int code;
        const char *name;
        int http;
    } cases[] = {
        {MASKD_IMAGE_ERR_EMPTY, "empty_image", 400},
        {MASKD_IMAGE_ERR_UNSUPPORTED, "unsupported_media_type", 415},
        {MASKD_IMAGE_ERR_TOO_LARGE, "image_too_large", 422},
        {MASKD_IMAGE_ERR_INVALID, "invalid_image", 400},
        {MASKD_IMAGE_ERR_TRUNCATED, "truncated_image", 400},
        {MASKD_ERR_NOMEM, "out_of_memory", 500},
        {12345, "internal_error", 500},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        check(strcmp(maskd_image_error_code(cases[i].code), cases[i].name) == 0 &&
                  maskd_image_http_status(cases[i].code) == cases[i].http,
              "error_codes", "code %d -> %s %d", cases[i].code,
              maskd_image_error_code(cases[i].code), maskd_image_http_status(cases[i].code));
    }
    maskd_error err = {0};
    maskd_image img = {.width = 7};
    check(maskd_image_decode(NULL, 0, NULL, &img, &err) == MASKD_IMAGE_ERR_EMPTY &&
              img.width == 0 && img.rgb == NULL,
          "decode_null", "NULL data: %s", err.message);
    check(maskd_image_decode("x", 1, NULL, NULL, &err) != MASKD_OK, "decode_null",
          "NULL output accepted");
    check(maskd_image_probe("GIF89a....", 10, NULL, NULL, NULL) == MASKD_IMAGE_ERR_UNSUPPORTED,
          "probe_null", "probe with NULL info and error");
    maskd_image_free(NULL);
}

static void test_scale_choice(void)
{
    static const struct {
        int w, h, orient, min_w, min_h, m;
    } cases[] = {
        {4000, 3000, 1, 320, 320, 1}, /* 500x375 */
        {4000, 3000, 1, 512, 512, 2}, /* 1000x750 */
        {640, 480, 1, 320, 320, 8},   /* 6/8 would do, but is slower than 8/8 */
        {640, 480, 1, 320, 240, 4},   /* 320x240 */
        {640, 480, 1, 160, 120, 2},
        {640, 480, 1, 161, 120, 4},
        {640, 480, 1, 512, 512, 8},   /* never upscales */
        {3000, 4000, 6, 320, 500, 2}, /* shown 4000x3000: target 500 across needs stored h 500 */
        {3000, 4000, 1, 320, 500, 1},
        {100, 100, 1, 0, 0, 8},
        {100, 100, 1, 13, 0, 1},      /* ceil(100/8) = 13 */
        {100, 100, 1, 14, 0, 2},
        {17, 9, 1, 3, 2, 1},          /* ceil(17/8) = 3, ceil(9/8) = 2 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int m = maskd_image_jpeg_scale(cases[i].w, cases[i].h, cases[i].orient, cases[i].min_w,
                                       cases[i].min_h);
        int want = cases[i].m;
        check(m == want, "jpeg_scale", "case %zu: %d/8, expected %d/8", i, m, want);
    }
}

static void test_target_size(void)
{
    static const struct {
        int box_w, box_h, fit, w, h, want_w, want_h, slack;
    } cases[] = {
        {512, 512, 1, 4000, 3000, 492, 369, 4}, /* ceil(512 * .96), ceil(384 * .96) */
        {320, 320, 0, 640, 480, 160, 160, 50},
        {320, 320, 0, 640, 480, 160, 160, 90},  /* clamped to 50 */
        {320, 320, 0, 640, 480, 320, 320, -5},
        {320, 320, 0, 640, 480, 320, 320, 0},
        {320, 320, 1, 640, 480, 320, 240, 0},
        {320, 320, 1, 480, 640, 240, 320, 0},
        {320, 320, 1, 4000, 3000, 320, 240, 0},
        {512, 512, 1, 4000, 3000, 512, 384, 0},
        {320, 320, 1, 1001, 1000, 320, 320, 0}, /* 319.7 rounds up */
        {320, 0, 1, 640, 480, 320, 240, 0},
        {0, 240, 1, 640, 480, 320, 240, 0},
        {0, 0, 1, 640, 480, 0, 0, 0},
        {100, 100, 1, 1, 1, 100, 100, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        maskd_image_options opt = {.min_width = cases[i].box_w, .min_height = cases[i].box_h,
                                   .fit_box = cases[i].fit,
                                   .undersize_percent = cases[i].slack};
        int w, h;
        maskd_image_target_size(&opt, cases[i].w, cases[i].h, &w, &h);
        check(w == cases[i].want_w && h == cases[i].want_h, "target_size",
              "case %zu: %dx%d, expected %dx%d", i, w, h, cases[i].want_w, cases[i].want_h);
    }
    int w = -1, h = -1;
    maskd_image_target_size(NULL, 10, 10, &w, &h);
    check(w == 0 && h == 0, "target_size", "NULL options");
}

static void test_resize(void)
{
    uint8_t src[4 * 3 * 3], dst[8 * 6 * 3], same[4 * 3 * 3];
    for (size_t i = 0; i < sizeof src; i++)
        src[i] = (uint8_t)(i * 37 + 11);
    check(maskd_image_resize_rgb(src, 4, 3, same, 4, 3) == MASKD_OK &&
              memcmp(src, same, sizeof src) == 0,
          "resize_identity", "same-size resize changed pixels");
    uint8_t flat[5 * 5 * 3];
    memset(flat, 93, sizeof flat);
    int ok = maskd_image_resize_rgb(flat, 5, 5, dst, 8, 6) == MASKD_OK;
    for (size_t i = 0; i < sizeof dst; i++)
        ok &= dst[i] == 93;
    check(ok, "resize_flat", "a flat image did not stay flat");
    /* 2x upscale of a horizontal ramp 0, 100: half-pixel centres give
     * 0, 25, 75, 100 across. */
    uint8_t ramp[2 * 1 * 3] = {0, 0, 0, 100, 100, 100}, up[4 * 1 * 3];
    maskd_image_resize_rgb(ramp, 2, 1, up, 4, 1);
    check(up[0] == 0 && up[3] == 25 && up[6] == 75 && up[9] == 100, "resize_ramp",
          "got %d %d %d %d", up[0], up[3], up[6], up[9]);
    check(maskd_image_resize_rgb(src, 0, 3, dst, 8, 6) == MASKD_ERR_INVALID, "resize_invalid",
          "zero-size source accepted");
    /* 2x shrink and more: means of footprints, not samples (no aliasing): a
     * 1-pixel checkerboard becomes flat grey. */
    enum { BW = 64, BH = 48 };
    static uint8_t board[BW * BH * 3], small[9 * 7 * 3];
    for (int y = 0; y < BH; y++)
        for (int x = 0; x < BW; x++)
            memset(board + ((size_t)y * BW + x) * 3, (x + y) % 2 ? 200 : 0, 3);
    ok = maskd_image_resize_rgb(board, BW, BH, small, 9, 7) == MASKD_OK;
    for (size_t i = 0; i < sizeof small; i++)
        ok &= abs(small[i] - 100) <= 5; /* odd footprints hold one extra pixel */
    check(ok, "resize_area_checkerboard", "aliased: got %d", small[0]);
    uint8_t quad[4 * 2 * 3] = {10, 20, 30, 30, 40, 50, 0, 0, 0, 255, 255, 255,
                               50, 60, 70, 70, 80, 90, 1, 1, 1, 3, 3, 3};
    uint8_t half[2 * 1 * 3];
    maskd_image_resize_rgb(quad, 4, 2, half, 2, 1);
    check(half[0] == 40 && half[1] == 50 && half[2] == 60 && half[3] == 65, "resize_area_mean",
          "got %d %d %d %d", half[0], half[1], half[2], half[3]);
}

static void test_exif_parser(void)
{
    /* Hand-built minimal IFD0s, both byte orders, and hostile variants. */
    uint8_t le[] = {'E', 'x', 'i', 'f', 0, 0, 'I', 'I', 42, 0, 8, 0, 0, 0, 1, 0,
                    0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0};
    uint8_t be[] = {'E', 'x', 'i', 'f', 0, 0, 'M', 'M', 0, 42, 0, 0, 0, 8, 0, 1,
                    0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 8, 0, 0, 0, 0, 0, 0};
    check(mk_exif_orientation(le, sizeof le) == 6, "exif_le", "little-endian orientation");
    check(mk_exif_orientation(be, sizeof be) == 8, "exif_be", "big-endian orientation");
    uint8_t bad[sizeof le];
    memcpy(bad, le, sizeof le);
    bad[24] = 9;
    check(mk_exif_orientation(bad, sizeof bad) == 1, "exif_range", "orientation 9 accepted");
    memcpy(bad, le, sizeof le);
    bad[10] = 0xF0; /* IFD offset past the end */
    check(mk_exif_orientation(bad, sizeof bad) == 1, "exif_offset", "bad IFD offset");
    memcpy(bad, le, sizeof le);
    bad[14] = 0xFF; /* 255 entries in a 1-entry buffer */
    check(mk_exif_orientation(bad, sizeof bad) == 6, "exif_count", "entry count overrun");
    /* the entry ends at byte 28; the next-IFD offset after it is not needed */
    for (size_t cut = 0; cut < sizeof le; cut++)
        check(mk_exif_orientation(le, cut) == (cut < 28 ? 1 : 6), "exif_truncated",
              "cut at %zu", cut);
    /* random junk after the header must never read out of bounds (ASan) */
    uint32_t seed = 12345;
    for (int round = 0; round < 2000; round++) {
        uint8_t junk[64];
        memcpy(junk, le, 10);
        for (size_t i = 10; i < sizeof junk; i++) {
            seed = seed * 1103515245u + 12345u;
            junk[i] = (uint8_t)(seed >> 16);
        }
        int o = mk_exif_orientation(junk, sizeof junk);
        if (o < 1 || o > 8) {
            check(0, "exif_random", "orientation %d", o);
            break;
        }
    }
    passed++;
}

static void test_orient_tiny(void)
{
    /* A 3x2 image with distinct pixels; each orientation checked against
     * the EXIF definition of where the stored row 0 / column 0 go. */
    uint8_t s[3 * 2 * 3];
    for (int i = 0; i < 6; i++)
        s[3 * i] = s[3 * i + 1] = s[3 * i + 2] = (uint8_t)i; /* value = y*3 + x */
    /* display[y][x] as stored indices */
    static const int want[9][6] = {
        {0}, {0, 1, 2, 3, 4, 5},             /* 1: 3x2 */
        {2, 1, 0, 5, 4, 3}, {5, 4, 3, 2, 1, 0}, {3, 4, 5, 0, 1, 2},
        {0, 3, 1, 4, 2, 5},                   /* 5: 2x3 transpose */
        {3, 0, 4, 1, 5, 2},                   /* 6: rotate 90 CW */
        {5, 2, 4, 1, 3, 0},                   /* 7: transverse */
        {2, 5, 1, 4, 0, 3},                   /* 8: rotate 90 CCW */
    };
    for (int o = 1; o <= 8; o++) {
        int w, h;
        uint8_t *d = mk_image_orient(s, 3, 2, o, &w, &h);
        int ok = d && w == (o >= 5 ? 2 : 3) && h == (o >= 5 ? 3 : 2);
        for (int i = 0; ok && i < 6; i++)
            ok = d[3 * i] == want[o][i];
        check(ok, "orient_tiny", "orientation %d", o);
        if (d != s)
            free(d);
    }
}

/* Every prefix of a valid file must fail cleanly (and the whole file pass);
 * under ASan this is the out-of-bounds check for the codecs' input paths. */
static void test_prefixes(const char *dir, const char *file, int step, size_t slack)
{
    char path[1024], name[256];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    snprintf(name, sizeof name, "prefixes:%s", file);
    size_t size;
    uint8_t *data = read_file(path, &size);
    if (!data) {
        check(0, name, "cannot read %s", path);
        return;
    }
    int bad = 0;
    for (size_t n = 0; n < size && !bad; n += (n < 400 ? 1 : (size_t)step)) {
        uint8_t *copy = malloc(n ? n : 1); /* exact size so ASan sees overreads */
        memcpy(copy, data, n);
        maskd_image img;
        maskd_error err = {0};
        int rc = maskd_image_decode(copy, n, NULL, &img, &err);
        if (rc == MASKD_OK) {
            /* Only what follows the image data may be missing: a JPEG's EOI
             * (2 bytes), a PNG's IEND chunk (12). */
            if (n + slack < size) {
                check(0, name, "a %zu-byte prefix of %zu decoded", n, size);
                bad = 1;
            }
            maskd_image_free(&img);
        } else if (!known_error_code(rc) || rc == MASKD_ERR_NOMEM) {
            check(0, name, "prefix %zu: status %d %s", n, rc, err.message);
            bad = 1;
        }
        free(copy);
    }
    maskd_image img;
    maskd_error err = {0};
    int rc = maskd_image_decode(data, size, NULL, &img, &err);
    check(!bad && rc == MASKD_OK, name, "whole file: %s", rc ? err.message : "ok");
    maskd_image_free(&img);
    free(data);
}

static void test_corruption(const char *dir, const char *file, int rounds)
{
    char path[1024], name[256];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    snprintf(name, sizeof name, "corrupt:%s", file);
    size_t size;
    uint8_t *data = read_file(path, &size);
    if (!data) {
        check(0, name, "cannot read %s", path);
        return;
    }
    uint32_t seed = 987654321u;
    int bad = 0;
    for (int r = 0; r < rounds && !bad; r++) {
        uint8_t *copy = malloc(size);
        memcpy(copy, data, size);
        int flips = 1 + r % 4;
        for (int k = 0; k < flips; k++) {
            seed = seed * 1664525u + 1013904223u;
            size_t at = (seed >> 8) % size;
            seed = seed * 1664525u + 1013904223u;
            copy[at] = (uint8_t)(seed >> 24);
        }
        maskd_image_options opt = {.max_pixels = 4 << 20, .min_width = r % 3 ? 0 : 16,
                                   .min_height = r % 3 ? 0 : 16};
        maskd_image img;
        maskd_error err = {0};
        int rc = maskd_image_decode(copy, size, &opt, &img, &err);
        if (rc == MASKD_OK)
            maskd_image_free(&img);
        else if (!known_error_code(rc) || !err.message[0]) {
            check(0, name, "round %d: status %d", r, rc);
            bad = 1;
        }
        free(copy);
    }
    check(!bad, name, "random corruption");
    free(data);
}

static int cmd_run(const char *dir)
{
    verbose = getenv("MASKD_IMAGE_TEST_VERBOSE") != NULL;
    test_sniff();
    test_errors();
    test_scale_choice();
    test_target_size();
    test_resize();
    test_exif_parser();
    test_orient_tiny();
    run_manifest(dir);
    test_prefixes(dir, "jpeg_baseline_420.jpg", 7, 2);
    test_prefixes(dir, "jpeg_progressive.jpg", 7, 2);
    test_prefixes(dir, "jpeg_arith.jpg", 7, 2);
    test_prefixes(dir, "png_rgb8.png", 5, 12);
    test_prefixes(dir, "png_interlaced_rgb8.png", 5, 12);
    test_corruption(dir, "jpeg_baseline_420.jpg", 1500);
    test_corruption(dir, "jpeg_progressive.jpg", 1500);
    test_corruption(dir, "jpeg_arith.jpg", 600);
    test_corruption(dir, "jpeg_cmyk.jpg", 200);
    test_corruption(dir, "jpeg_orient_6.jpg", 200);
    test_corruption(dir, "png_rgb8.png", 1000);
    test_corruption(dir, "png_palette_trns.png", 1000);
    test_corruption(dir, "png_interlaced_rgb8.png", 300);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "run") == 0)
        return cmd_run(argv[2]);
    if (argc >= 2 && strcmp(argv[1], "ycck") == 0)
        return cmd_ycck(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "transcode") == 0)
        return cmd_transcode(argc, argv);
    fprintf(stderr, "usage: %s run DIR | ycck ... | transcode ...\n", argv[0]);
    return 2;
}
