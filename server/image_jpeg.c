/*
 * JPEG through libjpeg-turbo: header probe, DCT-domain scaling, colour
 * conversion to RGB (CMYK/YCCK included), EXIF orientation.
 *
 * libjpeg reports fatal errors through error_exit, which must not return:
 * ours longjmps back into mk_jpeg_read.  It reports damaged data (a file cut
 * short, a bad Huffman code) only as warnings and carries on, padding the
 * picture with grey; ours turns those warnings into errors too, so a client
 * never gets masks computed on a half-grey image without being told.
 */
#include <setjmp.h>
#include <stdio.h> /* jpeglib.h needs FILE */
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
/* after jpeglib.h: which messages exist depends on its configuration */
#include <jerror.h>

#include "image_internal.h"

/* A progressive JPEG may legally hold any number of scans, each one a full
 * pass over the coefficient buffer: a few kilobytes of tiny scans can cost
 * seconds.  Real encoders write about ten; libjpeg-turbo's documentation
 * suggests capping at a few hundred. */
enum { MAX_SCANS = 500 };

typedef struct jpeg_guard {
    struct jpeg_error_mgr pub;
    struct jpeg_progress_mgr progress;
    jmp_buf jump;
    int status;
    /* Set while reading Huffman-coded scan data, where the end of the input
     * can be told apart from missing data (see on_emit_message). */
    int lenient_eof;
    int saw_eof;
    char message[JMSG_LENGTH_MAX + 32];
} jpeg_guard;

static jpeg_guard *guard_of(j_common_ptr cinfo)
{
    return (jpeg_guard *)cinfo->err; /* pub is the first member */
}

static void fail_jump(j_common_ptr cinfo, int status, const char *prefix)
{
    jpeg_guard *g = guard_of(cinfo);
    char text[JMSG_LENGTH_MAX];
    cinfo->err->format_message(cinfo, text);
    snprintf(g->message, sizeof g->message, "%s%s", prefix, text);
    g->status = status;
    longjmp(g->jump, 1);
}

static void on_error_exit(j_common_ptr cinfo)
{
    int code = cinfo->err->msg_code;
    if (code == JERR_OUT_OF_MEMORY)
        fail_jump(cinfo, MASKD_ERR_NOMEM, "JPEG: ");
    if (code == JERR_CONVERSION_NOTIMPL)
        fail_jump(cinfo, MASKD_IMAGE_ERR_INVALID, "JPEG colour space not supported: ");
    fail_jump(cinfo, MASKD_IMAGE_ERR_INVALID, "invalid JPEG: ");
}

static void on_emit_message(j_common_ptr cinfo, int level)
{
    if (level >= 0)
        return; /* trace messages */
    jpeg_guard *g = guard_of(cinfo);
    switch (cinfo->err->msg_code) {
    case JWRN_JPEG_EOF:
        /* The input ran out.  The Huffman decoder reads ahead, so a file
         * whose scan data is complete but whose EOI marker is missing ends
         * up here too, harmlessly; the decoder then warns HIT_MARKER only
         * if bits it needed were missing.  Elsewhere (headers, arithmetic
         * coding, which pads silently) running out is fatal at once. */
        if (!g->lenient_eof)
            fail_jump(cinfo, MASKD_IMAGE_ERR_TRUNCATED, "truncated JPEG: ");
        g->saw_eof = 1;
        cinfo->err->num_warnings++;
        break;
    case JWRN_HIT_MARKER:
        if (g->saw_eof)
            fail_jump(cinfo, MASKD_IMAGE_ERR_TRUNCATED, "truncated JPEG: ");
        fail_jump(cinfo, MASKD_IMAGE_ERR_INVALID, "invalid JPEG: ");
        break;
    case JWRN_HUFF_BAD_CODE:
#if defined(C_ARITH_CODING_SUPPORTED) || defined(D_ARITH_CODING_SUPPORTED)
    case JWRN_ARITH_BAD_CODE:
#endif
    case JWRN_MUST_RESYNC:
    case JWRN_NOT_SEQUENTIAL:
        fail_jump(cinfo, MASKD_IMAGE_ERR_INVALID, "invalid JPEG: ");
        break;
    default:
        /* Harmless: extraneous bytes between markers (some cameras), unknown
         * JFIF revisions, odd Adobe transforms, bad ICC chunks we ignore. */
        cinfo->err->num_warnings++;
        break;
    }
}

static void on_output_message(j_common_ptr cinfo)
{
    (void)cinfo; /* a daemon's stderr is not the place for libjpeg's chatter */
}

static void on_progress(j_common_ptr cinfo)
{
    if (!cinfo->is_decompressor)
        return;
    j_decompress_ptr d = (j_decompress_ptr)cinfo;
    if (d->input_scan_number > MAX_SCANS) {
        jpeg_guard *g = guard_of(cinfo);
        snprintf(g->message, sizeof g->message,
                 "invalid JPEG: more than %d scans (a progressive-scan bomb?)", MAX_SCANS);
        g->status = MASKD_IMAGE_ERR_INVALID;
        longjmp(g->jump, 1);
    }
}

/* After a progressive image's input ended early without a cut inside a
 * scan: complete only if every coefficient got all its bits. */
static int progression_complete(j_decompress_ptr cinfo)
{
    if (!cinfo->coef_bits)
        return 0;
    for (int c = 0; c < cinfo->num_components; c++)
        for (int k = 0; k < DCTSIZE2; k++)
            if (cinfo->coef_bits[c][k] != 0)
                return 0;
    return 1;
}

static int find_orientation(j_decompress_ptr cinfo)
{
    for (jpeg_saved_marker_ptr m = cinfo->marker_list; m; m = m->next)
        if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 &&
            memcmp(m->data, "Exif\0\0", 6) == 0)
            return mk_exif_orientation(m->data, m->data_length);
    return 1;
}

/* Photoshop writes CMYK inverted (255 = no ink) and says so with an Adobe
 * APP14 marker, which libjpeg also writes for CMYK; plain CMYK without the
 * marker is taken at face value.  The conversion is the naive one (no ICC
 * profile), the same one browsers fall back to. */
static void cmyk_row_to_rgb(const uint8_t *cmyk, uint8_t *rgb, int width, int inverted)
{
    for (int x = 0; x < width; x++, cmyk += 4, rgb += 3) {
        unsigned c = cmyk[0], m = cmyk[1], y = cmyk[2], k = cmyk[3];
        if (!inverted) {
            c = 255 - c;
            m = 255 - m;
            y = 255 - y;
            k = 255 - k;
        }
        rgb[0] = (uint8_t)((c * k + 127) / 255);
        rgb[1] = (uint8_t)((m * k + 127) / 255);
        rgb[2] = (uint8_t)((y * k + 127) / 255);
    }
}

int mk_jpeg_read(const uint8_t *data, size_t size, const maskd_image_options *opt,
                 maskd_image_info *info, maskd_image *out, maskd_error *err)
{
    struct jpeg_decompress_struct cinfo;
    jpeg_guard guard;
    /* volatile: they change between setjmp and a possible longjmp. */
    uint8_t *volatile pixels = NULL;
    uint8_t *volatile cmyk_row = NULL;
    volatile int created = 0;

    memset(&guard, 0, sizeof guard);
    cinfo.err = jpeg_std_error(&guard.pub);
    guard.pub.error_exit = on_error_exit;
    guard.pub.emit_message = on_emit_message;
    guard.pub.output_message = on_output_message;
    guard.progress.progress_monitor = on_progress;

    if (setjmp(guard.jump)) {
        if (created)
            jpeg_destroy_decompress(&cinfo);
        free(pixels);
        free(cmyk_row);
        return mk_image_fail(err, guard.status, "%s", guard.message);
    }
    jpeg_create_decompress(&cinfo);
    created = 1;
    cinfo.progress = &guard.progress;
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(&cinfo, TRUE);

    int orientation = find_orientation(&cinfo);
    int sw = (int)cinfo.image_width, sh = (int)cinfo.image_height;
    int swap = orientation >= 5;
    info->stored_width = sw;
    info->stored_height = sh;
    info->orientation = orientation;
    info->width = swap ? sh : sw;
    info->height = swap ? sw : sh;
    int rc = mk_image_check_limit(opt, "JPEG", info->width, info->height, err);
    if (rc != MASKD_OK || !out) {
        jpeg_destroy_decompress(&cinfo);
        return rc;
    }

    int min_w, min_h;
    maskd_image_target_size(opt, info->width, info->height, &min_w, &min_h);
    int m = maskd_image_jpeg_scale(sw, sh, orientation, min_w, min_h);
    cinfo.scale_num = (unsigned)m;
    cinfo.scale_denom = 8;
    cinfo.dct_method = JDCT_ISLOW;
    int cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
    cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    /* Only Huffman coding reports missing bits; of multi-scan images only a
     * progressive one can be checked for completeness afterwards. */
    guard.lenient_eof = !cinfo.arith_code &&
                        (cinfo.progressive_mode || !jpeg_has_multiple_scans(&cinfo));
    jpeg_start_decompress(&cinfo);
    if (guard.saw_eof && !(cinfo.progressive_mode && progression_complete(&cinfo))) {
        jpeg_destroy_decompress(&cinfo);
        return mk_image_fail(err, MASKD_IMAGE_ERR_TRUNCATED,
                             "truncated JPEG: the file ends before its last scan");
    }

    int ow = (int)cinfo.output_width, oh = (int)cinfo.output_height;
    pixels = malloc((size_t)ow * oh * 3);
    if (cmyk)
        cmyk_row = malloc((size_t)ow * 4);
    if (!pixels || (cmyk && !cmyk_row)) {
        free(pixels);
        free(cmyk_row);
        jpeg_destroy_decompress(&cinfo);
        return mk_image_fail(err, MASKD_ERR_NOMEM, "out of memory decoding a %dx%d JPEG", ow,
                             oh);
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        if (cmyk) {
            JSAMPROW row = cmyk_row;
            uint8_t *dst = pixels + (size_t)cinfo.output_scanline * ow * 3;
            if (jpeg_read_scanlines(&cinfo, &row, 1) != 1)
                break;
            cmyk_row_to_rgb(cmyk_row, dst, ow, cinfo.saw_Adobe_marker);
        } else {
            JSAMPROW rows[16];
            int n = 0;
            for (unsigned y = cinfo.output_scanline; y < cinfo.output_height && n < 16; y++)
                rows[n++] = pixels + (size_t)y * ow * 3;
            if (jpeg_read_scanlines(&cinfo, rows, (JDIMENSION)n) == 0)
                break;
        }
    }
    int complete = cinfo.output_scanline == cinfo.output_height;
    /* No jpeg_finish_decompress: every pixel is in hand, and what follows the
     * last scan (a missing EOI, trailing bytes) does not change them. */
    jpeg_destroy_decompress(&cinfo);
    free(cmyk_row);
    if (!complete) {
        free(pixels);
        return mk_image_fail(err, MASKD_IMAGE_ERR_TRUNCATED, "truncated JPEG: %s",
                             "the decoder stopped before the last row");
    }

    int dw, dh;
    uint8_t *shown = mk_image_orient(pixels, ow, oh, orientation, &dw, &dh);
    if (!shown) {
        free(pixels);
        return mk_image_fail(err, MASKD_ERR_NOMEM, "out of memory rotating a %dx%d JPEG", ow,
                             oh);
    }
    if (shown != pixels)
        free(pixels);
    out->rgb = shown;
    out->width = dw;
    out->height = dh;
    out->orig_width = info->width;
    out->orig_height = info->height;
    return MASKD_OK;
}
