/* Loading a model: import, order, bind, optimise, prepare.  Also the
 * read-only inspection API. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "graph.h"

static void fill_info(const mk_value *v, maskd_value_info *info)
{
    memset(info, 0, sizeof *info);
    info->name = v->name;
    info->dtype = v->t.dtype;
    info->ndim = v->t.ndim;
    for (int i = 0; i < v->t.ndim && i < MASKD_MAX_DIMS; i++) {
        info->dims[i] = v->t.dims[i];
        info->dim_names[i] = v->dim_names[i];
    }
}

/* Weights replaced by folding (the BatchNormalization pass makes new ones)
 * are freed so the model does not hold them twice. */
static void drop_unused_initializers(maskd_model *m)
{
    for (int v = 0; v < m->n_values; v++) {
        mk_value *val = &m->values[v];
        if (val->is_initializer && !val->n_consumers && !val->is_graph_output && val->t.data) {
            mk_aligned_free(val->t.data);
            val->t.data = NULL;
            val->is_initializer = false;
        }
    }
}

int maskd_model_load_memory(const void *data, size_t size, const maskd_load_options *opt,
                            maskd_model **out, maskd_error *err)
{
    *out = NULL;
    maskd_model *m = calloc(1, sizeof *m);
    if (!m) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
    int rc = mk_onnx_import(data, size, m, err);
    if (!rc) {
        /* The API describes the model as the file declares it. */
        m->input_info = calloc((size_t)m->n_inputs + 1, sizeof *m->input_info);
        m->output_info = calloc((size_t)m->n_outputs + 1, sizeof *m->output_info);
        if (!m->input_info || !m->output_info) rc = mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
    }
    if (!rc) {
        for (int i = 0; i < m->n_inputs; i++) fill_info(&m->values[m->inputs[i]], &m->input_info[i]);
        for (int i = 0; i < m->n_outputs; i++)
            fill_info(&m->values[m->outputs[i]], &m->output_info[i]);
        /* Shapes are inferred per session; only file-declared input shapes
         * and initializers are known at model level. */
        for (int v = 0; v < m->n_values; v++) {
            mk_value *val = &m->values[v];
            bool is_input = false;
            for (int i = 0; i < m->n_inputs; i++) is_input |= m->inputs[i] == v;
            if (!val->is_initializer && !is_input) {
                val->t.ndim = -1;
                val->t.dtype = MASKD_UNDEFINED;
            }
        }
        rc = mk_graph_sort(m, err);
    }
    if (!rc) rc = mk_graph_bind_ops(m, err);
    if (!rc) mk_graph_count_uses(m);
    if (!rc && (!opt || opt->optimize)) rc = mk_graph_optimize(m, err);
    if (!rc) {
        mk_graph_count_uses(m);
        drop_unused_initializers(m);
        rc = mk_graph_prepare_ops(m, err);
    }
    if (rc) {
        maskd_model_free(m);
        return rc;
    }
    *out = m;
    return MASKD_OK;
}

int maskd_model_load_file(const char *path, const maskd_load_options *opt, maskd_model **out,
                          maskd_error *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mk_fail(err, MASKD_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return mk_fail(err, MASKD_ERR_IO, "'%s' is not a readable regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return mk_fail(err, MASKD_ERR_INVALID, "'%s' is empty, not an ONNX model", path);
    }
    /* mmap: the file's pages are only page cache while protobuf-c parses. */
    void *data = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (data == MAP_FAILED)
        return mk_fail(err, MASKD_ERR_IO, "cannot map '%s': %s", path, strerror(errno));
    int rc = maskd_model_load_memory(data, (size_t)st.st_size, opt, out, err);
    munmap(data, (size_t)st.st_size);
    if (rc) {
        char msg[sizeof err->message];
        snprintf(msg, sizeof msg, "%s", err->message);
        mk_fail(err, rc, "%s: %s", path, msg);
    }
    return rc;
}

void maskd_model_free(maskd_model *m)
{
    if (!m) return;
    for (int k = 0; k < m->n_nodes; k++) mk_node_clear(&m->nodes[k]);
    free(m->nodes);
    for (int v = 0; v < m->n_values; v++) {
        free(m->values[v].name);
        if (m->values[v].t.data) mk_aligned_free(m->values[v].t.data);
        for (int d = 0; d < MASKD_MAX_DIMS; d++) free(m->values[v].dim_names[d]);
    }
    free(m->values);
    free(m->inputs);
    free(m->outputs);
    free(m->input_info);
    free(m->output_info);
    free(m->name_slots);
    free(m);
}

int maskd_model_num_inputs(const maskd_model *m) { return m->n_inputs; }
int maskd_model_num_outputs(const maskd_model *m) { return m->n_outputs; }
int maskd_model_num_nodes(const maskd_model *m) { return m->n_nodes; }

const maskd_value_info *maskd_model_input(const maskd_model *m, int i)
{
    return i >= 0 && i < m->n_inputs ? &m->input_info[i] : NULL;
}

const maskd_value_info *maskd_model_output(const maskd_model *m, int i)
{
    return i >= 0 && i < m->n_outputs ? &m->output_info[i] : NULL;
}

int maskd_model_input_index(const maskd_model *m, const char *name)
{
    for (int i = 0; i < m->n_inputs; i++)
        if (!strcmp(m->input_info[i].name, name)) return i;
    return -1;
}

int maskd_model_output_index(const maskd_model *m, const char *name)
{
    for (int i = 0; i < m->n_outputs; i++)
        if (!strcmp(m->output_info[i].name, name)) return i;
    return -1;
}
