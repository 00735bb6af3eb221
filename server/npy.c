#include "npy.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static const struct {
    const char *descr;
    maskd_dtype dtype;
} kinds[] = {
    {"<f4", MASKD_FLOAT}, {"<f8", MASKD_DOUBLE}, {"<i4", MASKD_INT32}, {"<i8", MASKD_INT64},
    {"|u1", MASKD_UINT8}, {"|i1", MASKD_INT8},   {"|b1", MASKD_BOOL},  {"<i2", MASKD_INT16},
    {"<u2", MASKD_UINT16}, {"<u4", MASKD_UINT32}, {"<u8", MASKD_UINT64}, {"<f2", MASKD_FLOAT16},
};

/* Finds `'key':` in the header dict and returns what follows, or NULL. */
static const char *dict_value(const char *hdr, const char *key)
{
    char pat[32];
    snprintf(pat, sizeof pat, "'%s':", key);
    const char *p = strstr(hdr, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (*p == ' ') p++;
    return p;
}

int maskd_npy_read(const char *path, maskd_tensor *out, maskd_error *err)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return maskd_error_set(err, MASKD_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    unsigned char pre[10];
    int rc = MASKD_OK;
    char *hdr = NULL;
    if (fread(pre, 1, 8, f) != 8 || memcmp(pre, "\x93NUMPY", 6)) {
        rc = maskd_error_set(err, MASKD_ERR_INVALID, "'%s' is not a .npy file", path);
        goto out;
    }
    size_t hlen;
    if (pre[6] == 1) {
        if (fread(pre, 1, 2, f) != 2) goto truncated;
        hlen = pre[0] | (size_t)pre[1] << 8;
    } else {
        if (fread(pre, 1, 4, f) != 4) goto truncated;
        hlen = pre[0] | (size_t)pre[1] << 8 | (size_t)pre[2] << 16 | (size_t)pre[3] << 24;
    }
    if (hlen > 1 << 20) goto bad_header;
    hdr = malloc(hlen + 1);
    if (!hdr || fread(hdr, 1, hlen, f) != hlen) goto truncated;
    hdr[hlen] = 0;

    const char *d = dict_value(hdr, "descr");
    if (!d || *d != '\'') goto bad_header;
    bool found = false;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (!strncmp(d + 1, kinds[i].descr, 3) && d[4] == '\'') {
            out->dtype = kinds[i].dtype;
            found = true;
        }
    if (!found) {
        rc = maskd_error_set(err, MASKD_ERR_UNSUPPORTED, "'%s': unsupported dtype %.8s", path, d);
        goto out;
    }
    const char *fo = dict_value(hdr, "fortran_order");
    if (!fo) goto bad_header;
    if (!strncmp(fo, "True", 4)) {
        rc = maskd_error_set(err, MASKD_ERR_UNSUPPORTED, "'%s' is in Fortran order; save it C-contiguous", path);
        goto out;
    }
    const char *sh = dict_value(hdr, "shape");
    if (!sh || *sh != '(') goto bad_header;
    sh++;
    int64_t numel = 1;
    while (*sh && *sh != ')') {
        while (*sh == ' ' || *sh == ',') sh++;
        if (*sh == ')') break;
        char *end;
        long long v = strtoll(sh, &end, 10);
        if (end == sh || v < 0 || out->ndim == MASKD_MAX_DIMS) goto bad_header;
        out->dims[out->ndim++] = v;
        if (v && numel > ((int64_t)1 << 40) / v) goto bad_header;
        numel *= v;
        sh = end;
    }
    size_t bytes = (size_t)numel * maskd_dtype_size(out->dtype);
    out->data = malloc(bytes ? bytes : 1);
    if (!out->data) {
        rc = maskd_error_set(err, MASKD_ERR_NOMEM, "out of memory reading '%s'", path);
        goto out;
    }
    if (fread(out->data, 1, bytes, f) != bytes) goto truncated;
    goto out;
bad_header:
    rc = maskd_error_set(err, MASKD_ERR_INVALID, "'%s' has a malformed .npy header", path);
    goto out;
truncated:
    rc = maskd_error_set(err, MASKD_ERR_INVALID, "'%s' is truncated", path);
out:
    free(hdr);
    fclose(f);
    if (rc) {
        free(out->data);
        out->data = NULL;
    }
    return rc;
}

int maskd_npy_write(const char *path, const maskd_tensor *t, maskd_error *err)
{
    const char *descr = NULL;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (kinds[i].dtype == t->dtype) descr = kinds[i].descr;
    if (!descr)
        return maskd_error_set(err, MASKD_ERR_UNSUPPORTED, "cannot write %s tensors as .npy",
                    maskd_dtype_name(t->dtype));
    char dict[512];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    for (int i = 0; i < t->ndim; i++)
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%lld,%s", (long long)t->dims[i],
                      i + 1 < t->ndim ? " " : "");
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    /* Pad so the data starts on a 64-byte boundary, as NumPy does. */
    size_t total = 10 + (size_t)n + 1;
    size_t pad = (64 - total % 64) % 64;
    FILE *f = fopen(path, "wb");
    if (!f) return maskd_error_set(err, MASKD_ERR_IO, "cannot create '%s': %s", path, strerror(errno));
    size_t hlen = (size_t)n + pad + 1;
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                             (unsigned char)(hlen & 0xff), (unsigned char)(hlen >> 8)};
    fwrite(pre, 1, 10, f);
    fwrite(dict, 1, (size_t)n, f);
    for (size_t i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    size_t bytes = (size_t)maskd_tensor_numel(t) * maskd_dtype_size(t->dtype);
    if (bytes) fwrite(t->data, 1, bytes, f);
    if (fclose(f))
        return maskd_error_set(err, MASKD_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
    return MASKD_OK;
}
