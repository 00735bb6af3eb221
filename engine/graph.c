/*
 * Load-time graph work: the value table, topological order, binding nodes
 * to registry rows, and the optimisation passes (identity removal, constant
 * folding, Conv+BatchNormalization folding, activation fusion).
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph.h"

/* ---- the value table -------------------------------------------------- */

static uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    while (*s) h = (h ^ (unsigned char)*s++) * 1099511628211ull;
    return h;
}

static int rehash(maskd_model *m, int cap)
{
    int *slots = malloc((size_t)cap * sizeof *slots);
    if (!slots) return -1;
    for (int i = 0; i < cap; i++) slots[i] = -1;
    for (int id = 0; id < m->n_values; id++) {
        uint64_t h = hash_name(m->values[id].name) & (uint64_t)(cap - 1);
        while (slots[h] >= 0) h = (h + 1) & (uint64_t)(cap - 1);
        slots[h] = id;
    }
    free(m->name_slots);
    m->name_slots = slots;
    m->name_cap = cap;
    return 0;
}

int mk_value_find(const maskd_model *m, const char *name)
{
    if (!m->name_cap) return -1;
    uint64_t h = hash_name(name) & (uint64_t)(m->name_cap - 1);
    while (m->name_slots[h] >= 0) {
        if (!strcmp(m->values[m->name_slots[h]].name, name)) return m->name_slots[h];
        h = (h + 1) & (uint64_t)(m->name_cap - 1);
    }
    return -1;
}

int mk_value_add(maskd_model *m, const char *name, mk_error *err)
{
    if (m->n_values == m->cap_values) {
        int cap = m->cap_values ? m->cap_values * 2 : 64;
        mk_value *v = realloc(m->values, (size_t)cap * sizeof *v);
        if (!v) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory"), -1;
        m->values = v;
        m->cap_values = cap;
    }
    mk_value *v = &m->values[m->n_values];
    memset(v, 0, sizeof *v);
    v->name = strdup(name);
    if (!v->name) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory"), -1;
    v->producer = -1;
    v->t.ndim = -1;
    int id = m->n_values++;
    if (m->n_values * 2 > m->name_cap) {
        if (rehash(m, m->name_cap ? m->name_cap * 2 : 128))
            return mk_fail(err, MASKD_ERR_NOMEM, "out of memory"), -1;
    } else {
        uint64_t h = hash_name(name) & (uint64_t)(m->name_cap - 1);
        while (m->name_slots[h] >= 0) h = (h + 1) & (uint64_t)(m->name_cap - 1);
        m->name_slots[h] = id;
    }
    return id;
}

/* A new initializer value holding `t` (ownership of t->data moves in). */
static int add_initializer(maskd_model *m, const char *base, const char *suffix, mk_tensor *t,
                           mk_error *err)
{
    char name[512];
    for (int k = 0;; k++) {
        snprintf(name, sizeof name, "%s%s%.0d", base, suffix, k);
        if (mk_value_find(m, name) < 0) break;
    }
    int id = mk_value_add(m, name, err);
    if (id < 0) return -1;
    m->values[id].t = *t;
    m->values[id].is_initializer = true;
    return id;
}

void mk_node_clear(mk_node *n)
{
    if (n->op && n->op->release && n->state) n->op->release(n->state);
    for (int i = 0; i < n->n_attrs; i++) {
        mk_attr *a = &n->attrs[i];
        free(a->name);
        free(a->s);
        if (a->t) mk_aligned_free(a->t->data);
        free(a->t);
        free(a->floats);
        free(a->ints);
        if (a->strings)
            for (int j = 0; j < a->n; j++) free(a->strings[j]);
        free(a->strings);
    }
    free(n->attrs);
    free(n->inputs);
    free(n->outputs);
    free(n->name);
    free(n->op_type);
    free(n->domain);
    memset(n, 0, sizeof *n);
}

/* ---- order and uses ---------------------------------------------------- */

int mk_graph_sort(maskd_model *m, mk_error *err)
{
    int n = m->n_nodes;
    int *indegree = calloc((size_t)n + 1, sizeof(int));
    int *order = malloc(((size_t)n + 1) * sizeof(int));
    /* consumers in CSR form: for each value, the nodes reading it */
    int *start = calloc((size_t)m->n_values + 1, sizeof(int));
    int *fill = calloc((size_t)m->n_values + 1, sizeof(int));
    int total = 0;
    for (int k = 0; k < n; k++) total += m->nodes[k].n_inputs;
    int *readers = malloc(((size_t)total + 1) * sizeof(int));
    int rc = MASKD_OK;
    if (!indegree || !order || !start || !fill || !readers) {
        rc = mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int k = 0; k < n; k++)
        for (int i = 0; i < m->nodes[k].n_inputs; i++) {
            int id = m->nodes[k].inputs[i];
            if (id >= 0 && m->values[id].producer >= 0) {
                indegree[k]++;
                start[id + 1]++;
            }
        }
    for (int v = 0; v < m->n_values; v++) start[v + 1] += start[v];
    for (int k = 0; k < n; k++)
        for (int i = 0; i < m->nodes[k].n_inputs; i++) {
            int id = m->nodes[k].inputs[i];
            if (id >= 0 && m->values[id].producer >= 0) readers[start[id] + fill[id]++] = k;
        }
    /* Kahn's algorithm; a ready node list kept in file order keeps the
     * result stable and close to what the exporter wrote. */
    int head = 0, tail = 0;
    for (int k = 0; k < n; k++)
        if (!indegree[k]) order[tail++] = k;
    while (head < tail) {
        int k = order[head++];
        for (int o = 0; o < m->nodes[k].n_outputs; o++) {
            int id = m->nodes[k].outputs[o];
            if (id < 0) continue;
            for (int r = start[id]; r < start[id + 1]; r++)
                if (--indegree[readers[r]] == 0) order[tail++] = readers[r];
        }
    }
    if (tail < n) {
        for (int k = 0; k < n; k++)
            if (indegree[k]) {
                rc = mk_fail(err, MASKD_ERR_INVALID,
                             "the graph has a cycle (node '%s' depends on its own output)",
                             m->nodes[k].name);
                break;
            }
        goto out;
    }
    mk_node *sorted = malloc(((size_t)n + 1) * sizeof *sorted);
    if (!sorted) {
        rc = mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < n; i++) sorted[i] = m->nodes[order[i]];
    free(m->nodes);
    m->nodes = sorted;
    for (int k = 0; k < n; k++)
        for (int o = 0; o < m->nodes[k].n_outputs; o++)
            if (m->nodes[k].outputs[o] >= 0) m->values[m->nodes[k].outputs[o]].producer = k;
out:
    free(indegree);
    free(order);
    free(start);
    free(fill);
    free(readers);
    return rc;
}

void mk_graph_count_uses(maskd_model *m)
{
    for (int v = 0; v < m->n_values; v++) {
        m->values[v].n_consumers = 0;
        m->values[v].producer = -1;
    }
    for (int k = 0; k < m->n_nodes; k++) {
        for (int i = 0; i < m->nodes[k].n_inputs; i++)
            if (m->nodes[k].inputs[i] >= 0) m->values[m->nodes[k].inputs[i]].n_consumers++;
        for (int o = 0; o < m->nodes[k].n_outputs; o++)
            if (m->nodes[k].outputs[o] >= 0) m->values[m->nodes[k].outputs[o]].producer = k;
    }
}

/* Drops the nodes marked dead, keeping order. */
static void remove_dead(maskd_model *m, const bool *dead)
{
    int w = 0;
    for (int k = 0; k < m->n_nodes; k++) {
        if (dead[k]) {
            mk_node_clear(&m->nodes[k]);
            continue;
        }
        m->nodes[w++] = m->nodes[k];
    }
    m->n_nodes = w;
    mk_graph_count_uses(m);
}

static void replace_uses(maskd_model *m, int from, int to)
{
    for (int k = 0; k < m->n_nodes; k++)
        for (int i = 0; i < m->nodes[k].n_inputs; i++)
            if (m->nodes[k].inputs[i] == from) m->nodes[k].inputs[i] = to;
}

/* ---- binding ----------------------------------------------------------- */

int mk_graph_bind_ops(maskd_model *m, mk_error *err)
{
    for (int k = 0; k < m->n_nodes; k++) {
        mk_node *n = &m->nodes[k];
        n->op = mk_op_find(n->domain, n->op_type, n->opset);
        if (n->op) continue;
        const char *dom = n->domain[0] ? n->domain : "ai.onnx";
        if (mk_op_known(n->domain, n->op_type))
            return mk_fail(err, MASKD_ERR_UNSUPPORTED,
                           "operator %s (domain %s) is not supported at opset %d (node '%s')",
                           n->op_type, dom, n->opset, n->name);
        return mk_fail(err, MASKD_ERR_UNSUPPORTED,
                       "unsupported operator %s (domain %s, opset %d) at node '%s'", n->op_type,
                       dom, n->opset, n->name);
    }
    return MASKD_OK;
}

void mk_ctx_init(mk_ctx *c, mk_node *n, mk_tensor **in, mk_tensor **out, mk_pool *pool,
                 mk_error *err)
{
    memset(c, 0, sizeof *c);
    c->node = n;
    c->n_in = n->n_inputs;
    c->n_out = n->n_outputs;
    c->in = in;
    c->out = out;
    c->pool = pool;
    c->err = err;
}

/* Pointers to the model-level tensors of node n's inputs and outputs. */
static int node_tensors(maskd_model *m, mk_node *n, mk_tensor ***in, mk_tensor ***out)
{
    *in = calloc((size_t)n->n_inputs + 1, sizeof **in);
    *out = calloc((size_t)n->n_outputs + 1, sizeof **out);
    if (!*in || !*out) return -1;
    for (int i = 0; i < n->n_inputs; i++)
        (*in)[i] = n->inputs[i] >= 0 ? &m->values[n->inputs[i]].t : NULL;
    for (int i = 0; i < n->n_outputs; i++)
        (*out)[i] = n->outputs[i] >= 0 ? &m->values[n->outputs[i]].t : NULL;
    return 0;
}

int mk_graph_prepare_ops(maskd_model *m, mk_error *err)
{
    for (int k = 0; k < m->n_nodes; k++) {
        mk_node *n = &m->nodes[k];
        if (!n->op->prepare) continue;
        mk_tensor **in, **out;
        mk_tensor *unknown = calloc((size_t)n->n_inputs + 1, sizeof *unknown);
        if (!unknown || node_tensors(m, n, &in, &out)) {
            free(unknown);
            free(in);
            free(out);
            return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
        }
        /* Only initializers are known before a session binds input shapes. */
        for (int i = 0; i < n->n_inputs; i++) {
            if (!in[i] || m->values[n->inputs[i]].is_initializer) continue;
            unknown[i].dtype = in[i]->dtype;
            unknown[i].ndim = -1;
            in[i] = &unknown[i];
        }
        mk_ctx c;
        mk_ctx_init(&c, n, in, out, NULL, err);
        int rc = n->op->prepare(&c);
        free(unknown);
        free(in);
        free(out);
        if (rc) {
            if (rc != err->code || !err->message[0])
                mk_fail(err, rc, "node '%s' (%s) could not be prepared", n->name, n->op_type);
            return rc;
        }
    }
    return MASKD_OK;
}

int mk_node_eval(mk_node *n, mk_tensor **in, mk_tensor **out, mk_error *err)
{
    mk_ctx c;
    mk_ctx_init(&c, n, in, out, NULL, err);
    int rc = n->op->infer(&c);
    if (rc == MK_DYNAMIC)
        return mk_fail(err, MASKD_ERR_RUNTIME, "node '%s' (%s): shape unknown with all inputs known",
                       n->name, n->op_type);
    if (rc) return rc;
    for (int i = 0; i < n->n_outputs; i++) {
        if (!out[i]) continue;
        if (maskd_dtype_size(out[i]->dtype) == 0)
            return mk_fail(err, MASKD_ERR_RUNTIME, "node '%s' (%s): output %d has no type",
                           n->name, n->op_type, i);
        out[i]->data = mk_aligned_alloc(mk_nbytes(out[i]));
        if (!out[i]->data) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
    }
    c.scratch = c.scratch_bytes ? mk_aligned_alloc(c.scratch_bytes) : NULL;
    if (c.scratch_bytes && !c.scratch) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
    rc = n->op->run(&c);
    mk_aligned_free(c.scratch);
    return rc;
}

/* ---- optimisation passes ----------------------------------------------- */

static bool is_const_input(const maskd_model *m, const mk_node *n, int i)
{
    return i < n->n_inputs && n->inputs[i] >= 0 && m->values[n->inputs[i]].is_initializer;
}

/* Identity (and inference-mode Dropout) just forwards its input. */
static void pass_remove_identity(maskd_model *m, bool *dead)
{
    for (int k = 0; k < m->n_nodes; k++) {
        mk_node *n = &m->nodes[k];
        bool dropout = !strcmp(n->op_type, "Dropout") && !n->domain[0];
        if (!(!strcmp(n->op_type, "Identity") && !n->domain[0]) && !dropout) continue;
        if (n->n_inputs < 1 || n->inputs[0] < 0 || n->n_outputs < 1 || n->outputs[0] < 0) continue;
        if (dropout && n->n_outputs > 1 && n->outputs[1] >= 0) continue; /* mask is read */
        if (dropout && n->n_inputs > 2 && n->inputs[2] >= 0) continue;   /* training_mode */
        int out = n->outputs[0];
        if (m->values[out].is_graph_output) continue;
        replace_uses(m, out, n->inputs[0]);
        dead[k] = true;
    }
}

/* Nodes whose inputs are all initializers are run once, now. */
static int pass_fold_constants(maskd_model *m, bool *dead, mk_error *err)
{
    for (int k = 0; k < m->n_nodes; k++) {
        mk_node *n = &m->nodes[k];
        if (dead[k] || n->op->no_fold) continue;
        bool all_const = true;
        for (int i = 0; i < n->n_inputs; i++)
            if (n->inputs[i] >= 0 && !m->values[n->inputs[i]].is_initializer) all_const = false;
        if (!all_const) continue;
        bool to_output = false;
        for (int o = 0; o < n->n_outputs; o++)
            if (n->outputs[o] >= 0 && m->values[n->outputs[o]].is_graph_output) to_output = true;
        (void)to_output; /* a constant output is still served from its initializer */
        mk_tensor **in, **out;
        if (node_tensors(m, n, &in, &out)) {
            free(in);
            free(out);
            return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
        }
        int rc = mk_node_eval(n, in, out, err);
        free(in);
        free(out);
        if (rc) {
            char msg[sizeof err->message];
            snprintf(msg, sizeof msg, "%s", err->message);
            return mk_fail(err, rc, "node '%s' (%s): %s", n->name, n->op_type, msg);
        }
        for (int o = 0; o < n->n_outputs; o++)
            if (n->outputs[o] >= 0) m->values[n->outputs[o]].is_initializer = true;
        dead[k] = true;
    }
    return MASKD_OK;
}

/* The single node reading value v, or -1 when there are several or none. */
static int sole_consumer(const maskd_model *m, const bool *dead, int v)
{
    int found = -1;
    for (int k = 0; k < m->n_nodes; k++) {
        if (dead[k]) continue;
        for (int i = 0; i < m->nodes[k].n_inputs; i++)
            if (m->nodes[k].inputs[i] == v) {
                if (found >= 0 && found != k) return -1;
                found = k;
            }
    }
    return found;
}

static bool is_op(const mk_node *n, const char *type)
{
    return !n->domain[0] && !strcmp(n->op_type, type);
}

/* Node k now writes value v in place of the node(s) fused into it. */
static void take_output(maskd_model *m, int k, int v)
{
    m->nodes[k].outputs[0] = v;
    m->values[v].producer = k;
}

/* Conv followed by inference BatchNormalization: the normalisation is a
 * per-output-channel affine map, so it moves into W and B. */
static int pass_fold_batchnorm(maskd_model *m, bool *dead, mk_error *err)
{
    for (int k = 0; k < m->n_nodes; k++) {
        mk_node *conv = &m->nodes[k];
        if (dead[k] || !is_op(conv, "Conv") || conv->n_outputs != 1 || conv->act) continue;
        if (!is_const_input(m, conv, 1)) continue;
        if (conv->n_inputs > 2 && conv->inputs[2] >= 0 && !is_const_input(m, conv, 2)) continue;
        int y = conv->outputs[0];
        if (y < 0 || m->values[y].is_graph_output) continue;
        int b = sole_consumer(m, dead, y);
        if (b < 0) continue;
        mk_node *bn = &m->nodes[b];
        if (!is_op(bn, "BatchNormalization") || bn->n_inputs != 5 || bn->inputs[0] != y) continue;
        if (bn->n_outputs > 1) {
            bool extra = false;
            for (int o = 1; o < bn->n_outputs; o++) extra |= bn->outputs[o] >= 0;
            if (extra) continue;
        }
        if (mk_attr_int(bn, "training_mode", 0)) continue;
        bool consts = true;
        for (int i = 1; i < 5; i++) consts &= is_const_input(m, bn, i);
        if (!consts) continue;
        const mk_tensor *w = &m->values[conv->inputs[1]].t;
        if (w->dtype != MASKD_FLOAT || w->ndim < 3) continue;
        int64_t cout = w->dims[0];
        const mk_tensor *p[4];
        bool ok = true;
        for (int i = 0; i < 4; i++) {
            p[i] = &m->values[bn->inputs[i + 1]].t;
            ok &= p[i]->dtype == MASKD_FLOAT && mk_numel(p[i]) == cout;
        }
        const mk_tensor *bias = conv->n_inputs > 2 && conv->inputs[2] >= 0
                                    ? &m->values[conv->inputs[2]].t : NULL;
        if (bias) ok &= bias->dtype == MASKD_FLOAT && mk_numel(bias) == cout;
        if (!ok) continue;

        float eps = mk_attr_float(bn, "epsilon", 1e-5f);
        int64_t per = mk_numel(w) / (cout ? cout : 1);
        mk_tensor nw = *w, nb = {.dtype = MASKD_FLOAT, .ndim = 1, .dims = {cout}};
        nw.data = mk_aligned_alloc(mk_nbytes(w));
        nb.data = mk_aligned_alloc((size_t)cout * sizeof(float));
        if (!nw.data || !nb.data) {
            mk_aligned_free(nw.data);
            mk_aligned_free(nb.data);
            return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
        }
        const float *scale = p[0]->data, *shift = p[1]->data, *mean = p[2]->data,
                    *var = p[3]->data, *wsrc = w->data;
        float *wdst = nw.data, *bdst = nb.data;
        for (int64_t c = 0; c < cout; c++) {
            /* double keeps the folded weights as close as possible to
             * what the two separate ops compute */
            double s = scale[c] / sqrt((double)var[c] + eps);
            for (int64_t j = 0; j < per; j++) wdst[c * per + j] = (float)(wsrc[c * per + j] * s);
            double b0 = bias ? ((const float *)bias->data)[c] : 0.0;
            bdst[c] = (float)((b0 - mean[c]) * s + shift[c]);
        }
        const char *wname = m->values[conv->inputs[1]].name;
        int wid = add_initializer(m, wname, "_bnfold", &nw, err);
        if (wid < 0) {
            mk_aligned_free(nw.data);
            mk_aligned_free(nb.data);
            return err->code;
        }
        int bid = add_initializer(m, wname, "_bnfold_bias", &nb, err);
        if (bid < 0) {
            mk_aligned_free(nb.data);
            return err->code;
        }
        conv = &m->nodes[k]; /* values may have moved, nodes did not */
        bn = &m->nodes[b];
        if (conv->n_inputs < 3) {
            int *ins = realloc(conv->inputs, 3 * sizeof(int));
            if (!ins) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
            conv->inputs = ins;
            conv->n_inputs = 3;
        }
        conv->inputs[1] = wid;
        conv->inputs[2] = bid;
        take_output(m, k, bn->outputs[0]);
        dead[b] = true;
    }
    return MASKD_OK;
}

/* The activation a node computes, when it can become an epilogue. */
static bool activation_of(const maskd_model *m, const mk_node *n, mk_act *act, float *alpha,
                          float *beta)
{
    *alpha = 0, *beta = 0;
    if (is_op(n, "Relu")) return *act = MK_ACT_RELU, true;
    if (is_op(n, "Sigmoid")) return *act = MK_ACT_SIGMOID, true;
    if (is_op(n, "Tanh")) return *act = MK_ACT_TANH, true;
    if (is_op(n, "Erf")) return *act = MK_ACT_ERF, true;
    if (is_op(n, "Exp")) return *act = MK_ACT_EXP, true;
    if (is_op(n, "HardSwish")) return *act = MK_ACT_HARD_SWISH, true;
    if (is_op(n, "LeakyRelu")) {
        *alpha = mk_attr_float(n, "alpha", 0.01f);
        return *act = MK_ACT_LEAKY_RELU, true;
    }
    if (is_op(n, "HardSigmoid")) {
        *alpha = mk_attr_float(n, "alpha", 0.2f);
        *beta = mk_attr_float(n, "beta", 0.5f);
        return *act = MK_ACT_HARD_SIGMOID, true;
    }
    if (is_op(n, "Clip")) {
        *alpha = -FLT_MAX, *beta = FLT_MAX;
        if (n->opset < 11) {
            *alpha = mk_attr_float(n, "min", -FLT_MAX);
            *beta = mk_attr_float(n, "max", FLT_MAX);
            return *act = MK_ACT_CLIP, true;
        }
        for (int i = 1; i < n->n_inputs && i < 3; i++) {
            if (n->inputs[i] < 0) continue;
            const mk_value *v = &m->values[n->inputs[i]];
            if (!v->is_initializer || v->t.dtype != MASKD_FLOAT || mk_numel(&v->t) != 1)
                return false;
            float x = *(const float *)v->t.data;
            if (i == 1) *alpha = x;
            else *beta = x;
        }
        return *act = MK_ACT_CLIP, true;
    }
    return false;
}

/* Whether value v is float32 as far as load time can tell: a float
 * initializer or input, or the output of an op that only computes floats.
 * Elementwise ops also run on int64 shape arithmetic, where an activation
 * epilogue would be wrong, so they fuse only when one operand is float. */
static bool known_float(const maskd_model *m, int v)
{
    static const char *const float_ops[] = {
        "Conv", "ConvTranspose", "Gemm", "BatchNormalization", "InstanceNormalization",
        "LayerNormalization", "GroupNormalization", "Sigmoid", "HardSwish", "HardSigmoid",
        "Softmax", "Resize", "GlobalAveragePool", "AveragePool"};
    if (v < 0) return false;
    const mk_value *val = &m->values[v];
    if (val->t.dtype == MASKD_FLOAT) return true;
    if (val->producer < 0) return false;
    const mk_node *p = &m->nodes[val->producer];
    for (size_t i = 0; i < sizeof float_ops / sizeof float_ops[0]; i++)
        if (is_op(p, float_ops[i])) return true;
    if (p->op->fuse_act && p->act) return true; /* already fused: proven float */
    return false;
}

static bool fusable_output_is_float(const maskd_model *m, const mk_node *n)
{
    if (known_float(m, n->outputs[0])) return true;
    for (int i = 0; i < n->n_inputs; i++)
        if (known_float(m, n->inputs[i])) return true;
    return false;
}

/* The nodes reading value v (each once), up to cap; returns how many there
 * are. */
static int consumers(const maskd_model *m, const bool *dead, int v, int *out, int cap)
{
    int found = 0;
    for (int k = 0; k < m->n_nodes; k++) {
        if (dead[k]) continue;
        for (int i = 0; i < m->nodes[k].n_inputs; i++)
            if (m->nodes[k].inputs[i] == v) {
                if (found < cap) out[found] = k;
                found++;
                break;
            }
    }
    return found;
}

/* y * gate(y) as y's only readers, an activation exporters write as two
 * nodes: with gate HardSigmoid(1/6, 1/2) it is HardSwish (before opset 14;
 * torchvision's MobileNetV3 at opset 13), with gate Sigmoid it is SiLU
 * (YOLO-style networks).  On a match, the two nodes, the activation and true. */
static bool self_gate_pair(const maskd_model *m, const bool *dead, int y, int *gate, int *mul,
                           mk_act *act)
{
    int r[2];
    if (consumers(m, dead, y, r, 2) != 2) return false;
    for (int j = 0; j < 2; j++) {
        const mk_node *h = &m->nodes[r[j]], *x = &m->nodes[r[1 - j]];
        if (h->n_inputs != 1 || h->inputs[0] != y || h->n_outputs != 1 || h->outputs[0] < 0)
            continue;
        if (is_op(h, "Sigmoid"))
            *act = MK_ACT_SILU;
        else if (is_op(h, "HardSigmoid") &&
                 fabsf(mk_attr_float(h, "alpha", 0.2f) - 1.0f / 6.0f) <= 1e-7f &&
                 mk_attr_float(h, "beta", 0.5f) == 0.5f)
            *act = MK_ACT_HARD_SWISH;
        else
            continue;
        const int hv = h->outputs[0];
        if (m->values[hv].is_graph_output || sole_consumer(m, dead, hv) != r[1 - j]) continue;
        if (!is_op(x, "Mul") || x->n_inputs != 2 || x->n_outputs != 1 || x->outputs[0] < 0)
            continue;
        if (!((x->inputs[0] == y && x->inputs[1] == hv) || (x->inputs[0] == hv && x->inputs[1] == y)))
            continue;
        *gate = r[j];
        *mul = r[1 - j];
        return true;
    }
    return false;
}

/* ---- GroupNorm as exporters write it ------------------------------------ */

/*
 * Before opset 18, PyTorch exports GroupNorm(G, C) on x [N, C, ...] as
 *
 *   Reshape(x, [0, G, -1]) -> InstanceNormalization(s, b)
 *     -> Reshape(Shape(x)) -> Mul(gamma) -> Add(beta)
 *
 * with s, b ones and zeros over the G groups and gamma, beta shaped [C, 1, ...].
 * Mul and Add are two more passes over the map; together the five nodes are
 * one GroupNormalization with a per-channel affine map, scale[c] = gamma[c] *
 * s[g] and bias[c] = gamma[c] * b[g] + beta[c] for c's group g.  That holds
 * only when gamma's broadcast lines up with x's channel axis, i.e. x has
 * gamma's rank + 1 and C channels: load time proves it from x's producer
 * (channel_layout) or leaves the chain as it is.
 */

/* Rank and channel count (dimension 1) of value v where load time can prove
 * them: a Conv's output has its weight's rank and first dimension; an
 * activation keeps its input's; a binary elementwise op of operands that
 * agree on both keeps theirs. */
static bool channel_layout(const maskd_model *m, int v, int depth, int *rank, int64_t *channels)
{
    if (v < 0 || depth > 8 || m->values[v].producer < 0) return false;
    const mk_node *p = &m->nodes[m->values[v].producer];
    if (p->n_outputs < 1 || p->outputs[0] != v || p->n_inputs < 1) return false;
    if (is_op(p, "Conv")) {
        if (!is_const_input(m, p, 1) || m->values[p->inputs[1]].t.ndim < 3) return false;
        *rank = m->values[p->inputs[1]].t.ndim;
        *channels = m->values[p->inputs[1]].t.dims[0];
        return true;
    }
    mk_act act;
    float alpha, beta;
    if (activation_of(m, p, &act, &alpha, &beta))
        return channel_layout(m, p->inputs[0], depth + 1, rank, channels);
    if (is_op(p, "Add") || is_op(p, "Sub") || is_op(p, "Mul") || is_op(p, "Div")) {
        int r1;
        int64_t c1;
        return p->n_inputs == 2 && channel_layout(m, p->inputs[0], depth + 1, rank, channels) &&
               channel_layout(m, p->inputs[1], depth + 1, &r1, &c1) && r1 == *rank &&
               c1 == *channels;
    }
    return false;
}

/* The data of value v when it is a constant of dtype with n elements. */
static const void *const_data(const maskd_model *m, int v, maskd_dtype dtype, int64_t n)
{
    if (v < 0 || !m->values[v].is_initializer) return NULL;
    const mk_tensor *t = &m->values[v].t;
    return t->dtype == dtype && mk_numel(t) == n ? t->data : NULL;
}

/* A float constant that broadcasts over a rank-`rank` tensor as one value
 * per channel: shape [C, 1, ...] of rank - 1, or [1, C, 1, ...] of rank. */
static const float *per_channel_const(const maskd_model *m, int v, int rank, int64_t channels)
{
    const float *data = const_data(m, v, MASKD_FLOAT, channels);
    if (!data) return NULL;
    const mk_tensor *t = &m->values[v].t;
    if (t->ndim != rank - 1 && t->ndim != rank) return NULL;
    for (int d = 0; d < t->ndim; d++)
        if (t->dims[d] != (d == t->ndim - (rank - 1) ? channels : 1)) return NULL;
    return data;
}

/* The node that alone reads node k's output and is op_type with that output
 * as one of its two operands; -1 otherwise.  *other gets the other operand. */
static int next_in_chain(const maskd_model *m, const bool *dead, int k, const char *op_type,
                         int *other)
{
    int y = m->nodes[k].outputs[0];
    if (y < 0 || m->values[y].is_graph_output) return -1;
    int c = sole_consumer(m, dead, y);
    if (c < 0) return -1;
    const mk_node *n = &m->nodes[c];
    if (!is_op(n, op_type) || n->n_inputs != 2 || n->n_outputs != 1 || n->outputs[0] < 0)
        return -1;
    if (n->inputs[0] != y && n->inputs[1] != y) return -1;
    *other = n->inputs[0] == y ? n->inputs[1] : n->inputs[0];
    return c;
}

/* Turns InstanceNormalization node k into a GroupNormalization of x with
 * per-channel scale and bias that writes value out, the chain's result. */
static int make_groupnorm(maskd_model *m, int k, int64_t groups, int x, int scale, int bias,
                          int out, mk_error *err)
{
    mk_node *n = &m->nodes[k];
    char *type = strdup("GroupNormalization"), *attr = strdup("num_groups");
    mk_attr *attrs = realloc(n->attrs, (size_t)(n->n_attrs + 1) * sizeof *attrs);
    if (attrs) n->attrs = attrs;
    if (!type || !attr || !attrs) {
        free(type);
        free(attr);
        return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
    }
    n->attrs[n->n_attrs++] = (mk_attr){.name = attr, .type = MK_ATTR_INT, .i = groups};
    free(n->op_type);
    n->op_type = type;
    n->opset = 21; /* the opset whose scale and bias are per channel */
    n->op = mk_op_find("", "GroupNormalization", n->opset);
    n->inputs[0] = x;
    n->inputs[1] = scale;
    n->inputs[2] = bias;
    take_output(m, k, out);
    return MASKD_OK;
}

static int pass_fuse_groupnorm(maskd_model *m, bool *dead, mk_error *err)
{
    for (int k = 0; k < m->n_nodes; k++) {
        const mk_node *in = &m->nodes[k];
        if (dead[k] || !is_op(in, "InstanceNormalization") || in->n_inputs != 3 ||
            in->n_outputs != 1 || in->act || in->inputs[0] < 0 || in->inputs[1] < 0 ||
            in->inputs[2] < 0)
            continue;
        const int64_t groups = mk_numel(&m->values[in->inputs[1]].t);
        const float *s = const_data(m, in->inputs[1], MASKD_FLOAT, groups),
                    *b = const_data(m, in->inputs[2], MASKD_FLOAT, groups);
        const int r1 = m->values[in->inputs[0]].producer;
        if (!s || !b || groups < 1 || r1 < 0 || dead[r1]) continue;
        const mk_node *reshape = &m->nodes[r1];
        const int64_t *to = is_op(reshape, "Reshape") && reshape->n_inputs == 2
                                ? const_data(m, reshape->inputs[1], MASKD_INT64, 3) : NULL;
        if (!to || to[0] != 0 || to[1] != groups || to[2] != -1 ||
            mk_attr_int(reshape, "allowzero", 0))
            continue;
        const int x = reshape->inputs[0];
        int rank;
        int64_t channels;
        if (!channel_layout(m, x, 0, &rank, &channels) || channels % groups) continue;

        /* Reshape back to Shape(x), then Mul by gamma and Add beta. */
        int shape, gv, bv;
        const int r2 = next_in_chain(m, dead, k, "Reshape", &shape);
        if (r2 < 0 || m->nodes[r2].inputs[0] != m->nodes[k].outputs[0]) continue;
        const int sh = shape >= 0 ? m->values[shape].producer : -1;
        if (sh < 0 || !is_op(&m->nodes[sh], "Shape") || m->nodes[sh].inputs[0] != x ||
            mk_attr_find(&m->nodes[sh], "start") || mk_attr_find(&m->nodes[sh], "end"))
            continue;
        const int mul = next_in_chain(m, dead, r2, "Mul", &gv);
        const int add = mul < 0 ? -1 : next_in_chain(m, dead, mul, "Add", &bv);
        if (add < 0) continue;
        const float *gamma = per_channel_const(m, gv, rank, channels),
                    *beta = per_channel_const(m, bv, rank, channels);
        if (!gamma || !beta) continue;

        mk_tensor ns = {.dtype = MASKD_FLOAT, .ndim = 1, .dims = {channels}}, nb = ns;
        ns.data = mk_aligned_alloc((size_t)channels * sizeof(float));
        nb.data = mk_aligned_alloc((size_t)channels * sizeof(float));
        if (!ns.data || !nb.data) {
            mk_aligned_free(ns.data);
            mk_aligned_free(nb.data);
            return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
        }
        const int64_t per_group = channels / groups;
        for (int64_t c = 0; c < channels; c++) {
            const int64_t g = c / per_group;
            ((float *)ns.data)[c] = (float)((double)gamma[c] * s[g]);
            ((float *)nb.data)[c] = (float)((double)gamma[c] * b[g] + beta[c]);
        }
        /* Decided before the rewrite changes who reads what. */
        const bool drop_reshape = !m->values[reshape->outputs[0]].is_graph_output &&
                                  sole_consumer(m, dead, reshape->outputs[0]) == k;
        const bool drop_shape = !m->values[shape].is_graph_output &&
                                sole_consumer(m, dead, shape) == r2;
        const char *base = m->nodes[k].name[0] ? m->nodes[k].name : "groupnorm";
        int sid = add_initializer(m, base, "_gn_scale", &ns, err);
        if (sid < 0) {
            mk_aligned_free(ns.data);
            mk_aligned_free(nb.data);
            return err->code;
        }
        int bid = add_initializer(m, base, "_gn_bias", &nb, err);
        if (bid < 0) {
            mk_aligned_free(nb.data);
            return err->code;
        }
        int rc = make_groupnorm(m, k, groups, x, sid, bid, m->nodes[add].outputs[0], err);
        if (rc) return rc;
        dead[r2] = dead[mul] = dead[add] = true;
        if (drop_reshape) dead[r1] = true;
        if (drop_shape) dead[sh] = true;
    }
    return MASKD_OK;
}

static void pass_fuse_activation(maskd_model *m, bool *dead)
{
    for (int k = 0; k < m->n_nodes; k++) {
        mk_node *n = &m->nodes[k];
        if (dead[k] || !n->op->fuse_act || n->act || n->n_outputs < 1) continue;
        bool extra = false;
        for (int o = 1; o < n->n_outputs; o++) extra |= n->outputs[o] >= 0;
        int y = n->outputs[0];
        if (extra || y < 0 || m->values[y].is_graph_output) continue;
        if (!fusable_output_is_float(m, n)) continue;
        int gate, mul;
        mk_act act;
        if (self_gate_pair(m, dead, y, &gate, &mul, &act)) {
            n->act = act;
            n->act_alpha = n->act_beta = 0.0f;
            take_output(m, k, m->nodes[mul].outputs[0]);
            dead[gate] = dead[mul] = true;
            continue;
        }
        int a = sole_consumer(m, dead, y);
        if (a < 0) continue;
        mk_node *an = &m->nodes[a];
        float alpha, beta;
        if (an->inputs[0] != y || an->n_outputs < 1 || !activation_of(m, an, &act, &alpha, &beta))
            continue;
        n->act = act;
        n->act_alpha = alpha;
        n->act_beta = beta;
        take_output(m, k, an->outputs[0]);
        dead[a] = true;
    }
}

int mk_graph_optimize(maskd_model *m, mk_error *err)
{
    bool *dead = calloc((size_t)m->n_nodes + 1, sizeof *dead);
    if (!dead) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
    pass_remove_identity(m, dead);
    int rc = pass_fold_constants(m, dead, err);
    if (!rc) rc = pass_fold_batchnorm(m, dead, err);
    if (!rc) rc = pass_fuse_groupnorm(m, dead, err);
    if (!rc) pass_fuse_activation(m, dead);
    if (!rc) remove_dead(m, dead);
    free(dead);
    return rc;
}
