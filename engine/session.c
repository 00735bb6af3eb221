/*
 * Sessions: bind input shapes, plan, run.
 *
 * Planning walks the sorted nodes once: each op infers its output shapes;
 * nodes whose inputs are all known constants (the Shape->Gather->Concat
 * chains exporters emit) are run right there and drop out of the run list;
 * every other value gets an offset in one arena, reusing memory between
 * values whose lifetimes do not overlap; the output of a view op (Reshape
 * and kin) shares its input's buffer instead, which then lives as long as
 * either is read.  Values whose shape depends on
 * data (NonMaxSuppression's output, say) are "dynamic": their node infers
 * again at run time and its outputs are allocated then.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "graph.h"

enum vkind { V_UNUSED, V_CONST, V_INPUT, V_ARENA, V_VIEW, V_DYNAMIC, V_FOLDED };

struct maskd_session {
    const maskd_model *model;
    mk_pool *pool;
    bool planned;
    mk_tensor *vals;     /* per value: this plan's shape, dtype and data */
    uint8_t *kind;       /* enum vkind per value */
    size_t *offset;      /* arena offset of V_ARENA values */
    int *owner;          /* V_VIEW values: the V_ARENA value whose buffer they share */
    uint8_t *skip;       /* node folded at plan time */
    uint8_t *dynamic;    /* node infers and allocates at run time */
    size_t *scratch_need;
    uint8_t *arena;
    size_t arena_bytes;
    void *scratch;
    size_t scratch_bytes;
    mk_tensor **in_ptrs, **out_ptrs; /* per-node argument lists */
    int max_arity;
    mk_tensor *outputs;
    bool profiling;
    maskd_node_time *profile; /* per node, when profiling */
};

static size_t round64(size_t n) { return (n + 63) & ~(size_t)63; }

static int plan(maskd_session *s, const maskd_tensor *inputs, mk_error *err);
static void drop_plan(maskd_session *s);

/*
 * When every input's shape is fixed in the file, the plan for it is made
 * now, so that what planning costs (shape inference, the arena, weights ops
 * pack at their first shapes, e.g. Winograd's transformed weights) is paid
 * at creation, as ONNX Runtime pays it in InferenceSession.create, and not by
 * the first request.  A plan that fails here is dropped: the first run plans
 * again and reports the error with its real inputs.
 */
static void plan_declared_shapes(maskd_session *s)
{
    const maskd_model *m = s->model;
    maskd_tensor *inputs = calloc((size_t)m->n_inputs + 1, sizeof *inputs);
    if (!inputs) return;
    bool fixed = true;
    for (int i = 0; i < m->n_inputs && fixed; i++) {
        const maskd_value_info *info = &m->input_info[i];
        fixed = info->ndim >= 0;
        inputs[i].dtype = info->dtype;
        inputs[i].ndim = info->ndim;
        for (int d = 0; d < info->ndim && fixed; d++) {
            fixed = info->dims[d] > 0;
            inputs[i].dims[d] = info->dims[d];
        }
    }
    mk_error ignored;
    if (fixed && m->n_inputs > 0 && plan(s, inputs, &ignored)) drop_plan(s);
    free(inputs);
}

int maskd_session_create(const maskd_model *model, maskd_pool *pool, maskd_session **out,
                         maskd_error *err)
{
    *out = NULL;
    maskd_session *s = calloc(1, sizeof *s);
    if (!s) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
    s->model = model;
    s->pool = pool;
    size_t nv = (size_t)model->n_values + 1, nn = (size_t)model->n_nodes + 1;
    s->vals = calloc(nv, sizeof *s->vals);
    s->kind = calloc(nv, 1);
    s->offset = calloc(nv, sizeof *s->offset);
    s->owner = calloc(nv, sizeof *s->owner);
    s->skip = calloc(nn, 1);
    s->dynamic = calloc(nn, 1);
    s->scratch_need = calloc(nn, sizeof *s->scratch_need);
    s->outputs = calloc((size_t)model->n_outputs + 1, sizeof *s->outputs);
    for (int k = 0; k < model->n_nodes; k++) {
        const mk_node *n = &model->nodes[k];
        if (n->n_inputs > s->max_arity) s->max_arity = n->n_inputs;
        if (n->n_outputs > s->max_arity) s->max_arity = n->n_outputs;
    }
    s->in_ptrs = calloc((size_t)s->max_arity + 1, sizeof *s->in_ptrs);
    s->out_ptrs = calloc((size_t)s->max_arity + 1, sizeof *s->out_ptrs);
    if (!s->vals || !s->kind || !s->offset || !s->owner || !s->skip || !s->dynamic ||
        !s->scratch_need || !s->outputs || !s->in_ptrs || !s->out_ptrs) {
        maskd_session_free(s);
        return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
    }
    plan_declared_shapes(s);
    *out = s;
    return MASKD_OK;
}

/* Frees what a plan (and the last run's dynamic values) allocated. */
static void drop_plan(maskd_session *s)
{
    const maskd_model *m = s->model;
    for (int v = 0; v < m->n_values; v++) {
        if (s->kind[v] == V_FOLDED || s->kind[v] == V_DYNAMIC) mk_aligned_free(s->vals[v].data);
        memset(&s->vals[v], 0, sizeof s->vals[v]);
        s->kind[v] = V_UNUSED;
    }
    mk_aligned_free(s->arena);
    mk_aligned_free(s->scratch);
    s->arena = s->scratch = NULL;
    s->arena_bytes = s->scratch_bytes = 0;
    memset(s->skip, 0, (size_t)m->n_nodes);
    memset(s->dynamic, 0, (size_t)m->n_nodes);
    s->planned = false;
}

void maskd_session_free(maskd_session *s)
{
    if (!s) return;
    if (s->vals && s->kind) drop_plan(s);
    free(s->vals);
    free(s->kind);
    free(s->offset);
    free(s->owner);
    free(s->skip);
    free(s->dynamic);
    free(s->scratch_need);
    free(s->outputs);
    free(s->profile);
    free(s->in_ptrs);
    free(s->out_ptrs);
    free(s);
}

static void node_args(maskd_session *s, const mk_node *n)
{
    for (int i = 0; i < n->n_inputs; i++)
        s->in_ptrs[i] = n->inputs[i] >= 0 ? &s->vals[n->inputs[i]] : NULL;
    for (int i = 0; i < n->n_outputs; i++)
        s->out_ptrs[i] = n->outputs[i] >= 0 ? &s->vals[n->outputs[i]] : NULL;
}

/* Prefixes the error message with the node, once. */
static int node_error(mk_error *err, int rc, const mk_node *n)
{
    char msg[sizeof err->message];
    snprintf(msg, sizeof msg, "%s", err->message[0] ? err->message : "failed");
    if (strstr(msg, n->name)) return rc;
    return mk_fail(err, rc, "node '%s' (%s): %s", n->name, n->op_type, msg);
}

static int check_input(const maskd_model *m, int i, const maskd_tensor *t, mk_error *err)
{
    const maskd_value_info *info = &m->input_info[i];
    char got[128];
    if (!t || (!t->data && maskd_tensor_numel(t) > 0))
        return mk_fail(err, MASKD_ERR_INVALID, "input '%s' has no data", info->name);
    if (t->ndim < 0 || t->ndim > MASKD_MAX_DIMS)
        return mk_fail(err, MASKD_ERR_SHAPE, "input '%s' has an invalid rank %d", info->name,
                       t->ndim);
    for (int d = 0; d < t->ndim; d++)
        if (t->dims[d] < 0)
            return mk_fail(err, MASKD_ERR_SHAPE, "input '%s' has a negative dimension",
                           info->name);
    if (info->dtype != t->dtype)
        return mk_fail(err, MASKD_ERR_SHAPE, "input '%s' must be %s, got %s", info->name,
                       maskd_dtype_name(info->dtype), maskd_dtype_name(t->dtype));
    if (info->ndim >= 0) {
        bool ok = info->ndim == t->ndim;
        for (int d = 0; ok && d < t->ndim; d++)
            ok = info->dims[d] < 0 || info->dims[d] == t->dims[d];
        if (!ok) {
            char want[160];
            size_t u = (size_t)snprintf(want, sizeof want, "[");
            for (int d = 0; d < info->ndim && u < sizeof want; d++) {
                if (info->dims[d] >= 0)
                    u += (size_t)snprintf(want + u, sizeof want - u, "%s%lld", d ? "," : "",
                                          (long long)info->dims[d]);
                else
                    u += (size_t)snprintf(want + u, sizeof want - u, "%s%s", d ? "," : "",
                                          info->dim_names[d] ? info->dim_names[d] : "?");
            }
            if (u < sizeof want) snprintf(want + u, sizeof want - u, "]");
            return mk_fail(err, MASKD_ERR_SHAPE, "input '%s' must have shape %s, got %s",
                           info->name, want, mk_shape_str(t, got, sizeof got));
        }
    }
    return MASKD_OK;
}

typedef struct {
    int value;
    size_t bytes;
    int first, last;
} span;

static int by_size_desc(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->bytes != y->bytes) return x->bytes < y->bytes ? 1 : -1;
    return x->first - y->first;
}

/* Greedy by size: each buffer, largest first, goes at the lowest offset that
 * does not collide with an already placed buffer alive at the same time. */
static int assign_offsets(maskd_session *s, mk_error *err)
{
    const maskd_model *m = s->model;
    int n = 0;
    span *spans = malloc(((size_t)m->n_values + 1) * sizeof *spans);
    if (!spans) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
    for (int v = 0; v < m->n_values; v++) {
        if (s->kind[v] != V_ARENA) continue;
        const mk_value *val = &m->values[v];
        span sp = {v, round64(mk_nbytes(&s->vals[v])), val->producer, val->producer};
        if (val->is_graph_output) sp.last = m->n_nodes;
        spans[n++] = sp;
    }
    for (int k = 0; k < m->n_nodes; k++) {
        if (s->skip[k]) continue;
        const mk_node *nd = &m->nodes[k];
        for (int i = 0; i < nd->n_inputs; i++) {
            int v = nd->inputs[i];
            if (v >= 0 && s->kind[v] == V_VIEW) v = s->owner[v];
            if (v < 0 || s->kind[v] != V_ARENA) continue;
            for (int j = 0; j < n; j++)
                if (spans[j].value == v && spans[j].last < k) spans[j].last = k;
        }
    }
    qsort(spans, (size_t)n, sizeof *spans, by_size_desc);
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        size_t off = 0;
        bool moved = true;
        while (moved) {
            moved = false;
            for (int j = 0; j < i; j++) {
                if (spans[j].last < spans[i].first || spans[i].last < spans[j].first) continue;
                size_t jo = s->offset[spans[j].value];
                if (off < jo + spans[j].bytes && jo < off + spans[i].bytes) {
                    off = jo + spans[j].bytes;
                    moved = true;
                }
            }
        }
        s->offset[spans[i].value] = off;
        if (off + spans[i].bytes > total) total = off + spans[i].bytes;
    }
    free(spans);
    s->arena_bytes = total;
    s->arena = mk_big_alloc(total);
    if (!s->arena) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory for a %zu-byte arena", total);
    for (int v = 0; v < m->n_values; v++)
        if (s->kind[v] == V_ARENA) s->vals[v].data = s->arena + s->offset[v];
    for (int v = 0; v < m->n_values; v++)
        if (s->kind[v] == V_VIEW) s->vals[v].data = s->vals[s->owner[v]].data;
    return MASKD_OK;
}

/* A view op's output shares its input's arena buffer, unless it is a graph
 * output (those get buffers of their own, as callers expect). */
static void mark_view(maskd_session *s, const mk_node *n)
{
    if (!n->op->view || n->n_inputs < 1 || n->n_outputs < 1) return;
    const int x = n->inputs[0], y = n->outputs[0];
    if (x < 0 || y < 0 || s->model->values[y].is_graph_output) return;
    if (s->kind[x] != V_ARENA && s->kind[x] != V_VIEW) return;
    if (mk_nbytes(&s->vals[x]) != mk_nbytes(&s->vals[y])) return;
    s->kind[y] = V_VIEW;
    s->owner[y] = s->kind[x] == V_VIEW ? s->owner[x] : x;
}

static int plan(maskd_session *s, const maskd_tensor *inputs, mk_error *err)
{
    const maskd_model *m = s->model;
    drop_plan(s);
    for (int v = 0; v < m->n_values; v++) {
        const mk_value *val = &m->values[v];
        if (val->is_initializer) {
            s->vals[v] = val->t;
            s->kind[v] = V_CONST;
        } else {
            s->vals[v].ndim = -1;
        }
    }
    for (int i = 0; i < m->n_inputs; i++) {
        int v = m->inputs[i];
        s->vals[v] = inputs[i];
        s->vals[v].data = NULL;
        s->kind[v] = V_INPUT;
    }
    for (int k = 0; k < m->n_nodes; k++) {
        mk_node *n = &m->nodes[k];
        bool unknown = false, all_const = true;
        for (int i = 0; i < n->n_inputs; i++) {
            int v = n->inputs[i];
            if (v < 0) continue;
            if (s->kind[v] == V_DYNAMIC) unknown = true;
            if (s->kind[v] != V_CONST && s->kind[v] != V_FOLDED) all_const = false;
        }
        node_args(s, n);
        int rc = MK_DYNAMIC;
        mk_ctx c;
        mk_ctx_init(&c, n, s->in_ptrs, s->out_ptrs, s->pool, err);
        if (!unknown) rc = n->op->infer(&c);
        if (rc == MK_DYNAMIC) {
            s->dynamic[k] = 1;
            for (int o = 0; o < n->n_outputs; o++)
                if (n->outputs[o] >= 0) s->kind[n->outputs[o]] = V_DYNAMIC;
            continue;
        }
        if (rc) return node_error(err, rc, n);
        for (int o = 0; o < n->n_outputs; o++) {
            if (!s->out_ptrs[o]) continue;
            mk_tensor *t = s->out_ptrs[o];
            if (t->ndim < 0 || t->ndim > MASKD_MAX_DIMS || maskd_dtype_size(t->dtype) == 0)
                return node_error(err, mk_fail(err, MASKD_ERR_RUNTIME,
                                               "output %d has no valid type or shape", o), n);
        }
        if ((all_const || n->op->shape_only) && !n->op->no_fold) {
            if ((rc = mk_node_eval(n, s->in_ptrs, s->out_ptrs, err))) {
                for (int o = 0; o < n->n_outputs; o++)
                    if (s->out_ptrs[o]) {
                        mk_aligned_free(s->out_ptrs[o]->data);
                        s->out_ptrs[o]->data = NULL;
                    }
                return node_error(err, rc, n);
            }
            for (int o = 0; o < n->n_outputs; o++)
                if (n->outputs[o] >= 0) s->kind[n->outputs[o]] = V_FOLDED;
            s->skip[k] = 1;
            continue;
        }
        for (int o = 0; o < n->n_outputs; o++)
            if (n->outputs[o] >= 0) s->kind[n->outputs[o]] = V_ARENA;
        mark_view(s, n);
        s->scratch_need[k] = c.scratch_bytes;
        if (c.scratch_bytes > s->scratch_bytes) s->scratch_bytes = c.scratch_bytes;
    }
    int rc = assign_offsets(s, err);
    if (rc) return rc;
    if (s->scratch_bytes && !(s->scratch = mk_big_alloc(s->scratch_bytes)))
        return mk_fail(err, MASKD_ERR_NOMEM, "out of memory for %zu bytes of scratch",
                       s->scratch_bytes);
    s->planned = true;
    return MASKD_OK;
}

static bool same_input_shapes(const maskd_session *s, const maskd_tensor *inputs)
{
    const maskd_model *m = s->model;
    for (int i = 0; i < m->n_inputs; i++) {
        const mk_tensor *planned = &s->vals[m->inputs[i]];
        if (planned->dtype != inputs[i].dtype || !mk_same_shape(planned, &inputs[i])) return false;
    }
    return true;
}

/* Infers and allocates a dynamic node's outputs now that its inputs exist. */
static int run_dynamic(maskd_session *s, mk_node *n, mk_error *err)
{
    mk_ctx c;
    mk_ctx_init(&c, n, s->in_ptrs, s->out_ptrs, s->pool, err);
    for (int o = 0; o < n->n_outputs; o++)
        if (s->out_ptrs[o]) {
            mk_aligned_free(s->out_ptrs[o]->data);
            memset(s->out_ptrs[o], 0, sizeof *s->out_ptrs[o]);
        }
    int rc = n->op->infer(&c);
    if (rc == MK_DYNAMIC)
        return mk_fail(err, MASKD_ERR_RUNTIME, "output shape still unknown with all inputs known");
    if (rc) return rc;
    for (int o = 0; o < n->n_outputs; o++) {
        mk_tensor *t = s->out_ptrs[o];
        if (!t) continue;
        if (t->ndim < 0 || maskd_dtype_size(t->dtype) == 0)
            return mk_fail(err, MASKD_ERR_RUNTIME, "output %d has no valid type or shape", o);
        if (!(t->data = mk_aligned_alloc(mk_nbytes(t))))
            return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
    }
    void *scratch = NULL;
    if (c.scratch_bytes > s->scratch_bytes) {
        if (!(scratch = mk_aligned_alloc(c.scratch_bytes)))
            return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
        c.scratch = scratch;
    } else {
        c.scratch = s->scratch;
    }
    rc = n->op->run(&c);
    mk_aligned_free(scratch);
    return rc;
}

int maskd_session_run(maskd_session *s, const maskd_tensor *inputs, int n_inputs,
                      maskd_error *err)
{
    const maskd_model *m = s->model;
    if (n_inputs != m->n_inputs)
        return mk_fail(err, MASKD_ERR_INVALID, "the model takes %d input(s), %d given",
                       m->n_inputs, n_inputs);
    for (int i = 0; i < n_inputs; i++) {
        int rc = check_input(m, i, &inputs[i], err);
        if (rc) return rc;
    }
    if (!s->planned || !same_input_shapes(s, inputs)) {
        int rc = plan(s, inputs, err);
        if (rc) {
            drop_plan(s);
            return rc;
        }
    }
    for (int i = 0; i < n_inputs; i++) s->vals[m->inputs[i]].data = inputs[i].data;
    for (int k = 0; k < m->n_nodes; k++) {
        if (s->skip[k]) continue;
        mk_node *n = &m->nodes[k];
        node_args(s, n);
        struct timespec t0, t1;
        if (s->profiling) clock_gettime(CLOCK_MONOTONIC, &t0);
        int rc;
        if (s->dynamic[k]) {
            rc = run_dynamic(s, n, err);
        } else {
            mk_ctx c;
            mk_ctx_init(&c, n, s->in_ptrs, s->out_ptrs, s->pool, err);
            c.scratch = s->scratch;
            c.scratch_bytes = s->scratch_need[k];
            rc = n->op->run(&c);
        }
        if (rc) return node_error(err, rc, n);
        if (s->profiling) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            s->profile[k].total_ms +=
                (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
            s->profile[k].runs++;
        }
    }
    for (int i = 0; i < m->n_outputs; i++) s->outputs[i] = s->vals[m->outputs[i]];
    return MASKD_OK;
}

const maskd_tensor *maskd_session_output(const maskd_session *s, int i)
{
    if (i < 0 || i >= s->model->n_outputs || !s->planned) return NULL;
    return &s->outputs[i];
}

size_t mk_session_arena_bytes(const maskd_session *s) { return s->arena_bytes; }

void maskd_session_set_profiling(maskd_session *s, int on)
{
    if (on && !s->profile) {
        s->profile = calloc((size_t)s->model->n_nodes + 1, sizeof *s->profile);
        if (!s->profile) return;
        for (int k = 0; k < s->model->n_nodes; k++) {
            const mk_node *nd = &s->model->nodes[k];
            s->profile[k].node = nd->name;
            s->profile[k].op_type = nd->op_type;
            s->profile[k].output = nd->n_outputs > 0 && nd->outputs[0] >= 0
                                       ? s->model->values[nd->outputs[0]].name : "";
        }
    }
    s->profiling = on && s->profile;
}

const maskd_node_time *maskd_session_profile(const maskd_session *s, int *n)
{
    *n = s->profile ? s->model->n_nodes : 0;
    return s->profile;
}
