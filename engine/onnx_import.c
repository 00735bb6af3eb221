/*
 * ONNX import: protobuf bytes -> maskd_model.
 *
 * The parser is protobuf-c's, generated at build time from Debian's
 * onnx.proto.  Everything a hostile file can lie about (dtypes, dims, data
 * lengths, names) is checked here, so later stages can trust the graph.
 * Weights are not copied when they can be taken over: raw_data buffers that
 * protobuf-c allocated become the tensors' storage.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph.h"
#include "onnx.pb-c.h"
#include "onnx_import.h"

/* No tensor in a model we serve comes near this; a file claiming more is lying. */
#define MAX_TENSOR_BYTES ((int64_t)1 << 36) /* 64 GiB */

static char *dup_str(const char *s)
{
    return strdup(s ? s : "");
}

/* Converts a TensorProto; on success out->data is owned by the caller
 * (mk_aligned_free).  `what` names the tensor in messages. */
static int convert_tensor(Onnx__TensorProto *tp, mk_tensor *out, const char *what,
                          mk_error *err)
{
    memset(out, 0, sizeof *out);
    if (tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL ||
        tp->n_external_data > 0)
        return mk_fail(err, MASKD_ERR_UNSUPPORTED,
                       "tensor '%s' keeps its data in an external file; maskd loads "
                       "self-contained models only (re-export without external data, "
                       "e.g. onnx.save(model, path, save_as_external_data=False))",
                       what);
    if (tp->segment)
        return mk_fail(err, MASKD_ERR_UNSUPPORTED, "tensor '%s' is segmented; not supported", what);
    maskd_dtype dt = (maskd_dtype)tp->data_type;
    size_t esize = maskd_dtype_size(dt);
    if (!tp->has_data_type || esize == 0)
        return mk_fail(err, MASKD_ERR_UNSUPPORTED,
                       "tensor '%s' has data type %d (%s), which maskd does not support",
                       what, (int)tp->data_type, maskd_dtype_name(dt));
    if (tp->n_dims > MASKD_MAX_DIMS)
        return mk_fail(err, MASKD_ERR_INVALID, "tensor '%s' has %zu dimensions (max %d)",
                       what, tp->n_dims, MASKD_MAX_DIMS);
    out->dtype = dt;
    out->ndim = (int)tp->n_dims;
    int64_t numel = 1;
    for (size_t i = 0; i < tp->n_dims; i++) {
        int64_t d = tp->dims[i];
        if (d < 0)
            return mk_fail(err, MASKD_ERR_INVALID, "tensor '%s' has a negative dimension %lld",
                           what, (long long)d);
        out->dims[i] = d;
        if (d && numel > MAX_TENSOR_BYTES / d)
            return mk_fail(err, MASKD_ERR_INVALID, "tensor '%s' claims an absurd size", what);
        numel *= d;
    }
    if (numel * (int64_t)esize > MAX_TENSOR_BYTES)
        return mk_fail(err, MASKD_ERR_INVALID, "tensor '%s' claims an absurd size", what);
    size_t nbytes = (size_t)numel * esize;

    if (tp->has_raw_data) {
        if (tp->raw_data.len != nbytes)
            return mk_fail(err, MASKD_ERR_INVALID,
                           "tensor '%s': raw_data holds %zu bytes but its shape and type "
                           "need %zu",
                           what, tp->raw_data.len, nbytes);
        if (nbytes && tp->raw_data.data) {
            /* Take over protobuf-c's buffer instead of copying the weights. */
            out->data = tp->raw_data.data;
            tp->raw_data.data = NULL;
            tp->raw_data.len = 0;
            tp->has_raw_data = 0;
            return MASKD_OK;
        }
    }
    out->data = mk_aligned_alloc(nbytes);
    if (!out->data) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory for tensor '%s'", what);
    if (tp->has_raw_data || numel == 0) return MASKD_OK;

    size_t have;
    switch (dt) {
    case MASKD_FLOAT: have = tp->n_float_data; break;
    case MASKD_DOUBLE: have = tp->n_double_data; break;
    case MASKD_INT64: have = tp->n_int64_data; break;
    case MASKD_UINT32: case MASKD_UINT64: have = tp->n_uint64_data; break;
    default: have = tp->n_int32_data; break; /* int32, int16, int8, uint16, uint8, bool, float16 */
    }
    if (have != (size_t)numel) {
        mk_aligned_free(out->data);
        out->data = NULL;
        return mk_fail(err, MASKD_ERR_INVALID,
                       "tensor '%s' has %zu values but its shape needs %lld", what, have,
                       (long long)numel);
    }
    for (int64_t i = 0; i < numel; i++) {
        switch (dt) {
        case MASKD_FLOAT: ((float *)out->data)[i] = tp->float_data[i]; break;
        case MASKD_DOUBLE: ((double *)out->data)[i] = tp->double_data[i]; break;
        case MASKD_INT64: ((int64_t *)out->data)[i] = tp->int64_data[i]; break;
        case MASKD_UINT64: ((uint64_t *)out->data)[i] = tp->uint64_data[i]; break;
        case MASKD_UINT32: ((uint32_t *)out->data)[i] = (uint32_t)tp->uint64_data[i]; break;
        case MASKD_INT32: ((int32_t *)out->data)[i] = tp->int32_data[i]; break;
        case MASKD_INT16: ((int16_t *)out->data)[i] = (int16_t)tp->int32_data[i]; break;
        case MASKD_UINT16: case MASKD_FLOAT16:
            ((uint16_t *)out->data)[i] = (uint16_t)tp->int32_data[i]; break;
        case MASKD_INT8: ((int8_t *)out->data)[i] = (int8_t)tp->int32_data[i]; break;
        default: ((uint8_t *)out->data)[i] = (uint8_t)tp->int32_data[i]; break;
        }
    }
    return MASKD_OK;
}

int mk_onnx_parse_tensor(const void *data, size_t size, maskd_tensor *out, char **name_out,
                         maskd_error *err)
{
    memset(out, 0, sizeof *out);
    if (name_out) *name_out = NULL;
    Onnx__TensorProto *tp = onnx__tensor_proto__unpack(NULL, size, data);
    if (!tp) return mk_fail(err, MASKD_ERR_INVALID, "not a valid serialized ONNX TensorProto");
    int rc = convert_tensor(tp, out, tp->name && *tp->name ? tp->name : "(unnamed)", err);
    if (rc == MASKD_OK && name_out) *name_out = dup_str(tp->name);
    onnx__tensor_proto__free_unpacked(tp, NULL);
    return rc;
}

static int convert_attr(Onnx__AttributeProto *ap, mk_attr *a, const char *node_name,
                        mk_error *err)
{
    memset(a, 0, sizeof *a);
    a->name = dup_str(ap->name);
    a->type = (mk_attr_type)ap->type;
    switch (ap->type) {
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT: a->f = ap->f; break;
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT: a->i = ap->i; break;
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING:
        a->s = malloc(ap->s.len + 1);
        if (!a->s) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
        if (ap->s.len) memcpy(a->s, ap->s.data, ap->s.len);
        a->s[ap->s.len] = 0;
        break;
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR: {
        if (!ap->t)
            return mk_fail(err, MASKD_ERR_INVALID, "node '%s': attribute '%s' has no tensor",
                           node_name, a->name);
        a->t = calloc(1, sizeof *a->t);
        if (!a->t) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
        char what[300];
        snprintf(what, sizeof what, "%s.%s", node_name, a->name);
        return convert_tensor(ap->t, a->t, what, err);
    }
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS:
        a->n = (int)ap->n_floats;
        a->floats = malloc((ap->n_floats + 1) * sizeof(float));
        if (!a->floats) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
        if (ap->n_floats) memcpy(a->floats, ap->floats, ap->n_floats * sizeof(float));
        break;
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS:
        a->n = (int)ap->n_ints;
        a->ints = malloc((ap->n_ints + 1) * sizeof(int64_t));
        if (!a->ints) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
        if (ap->n_ints) memcpy(a->ints, ap->ints, ap->n_ints * sizeof(int64_t));
        break;
    case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRINGS:
        a->strings = calloc(ap->n_strings + 1, sizeof(char *));
        if (!a->strings) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < ap->n_strings; i++) {
            a->strings[i] = malloc(ap->strings[i].len + 1);
            if (!a->strings[i]) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
            if (ap->strings[i].len) memcpy(a->strings[i], ap->strings[i].data, ap->strings[i].len);
            a->strings[i][ap->strings[i].len] = 0;
            a->n = (int)i + 1;
        }
        break;
    default:
        /* Subgraphs, sparse tensors, type protos: kept as an opaque entry.
         * The ops that would need them (If, Loop, Scan, ...) are not in the
         * registry, so binding fails with the op's name. */
        break;
    }
    return MASKD_OK;
}

/* Fills a value's dtype and dims from a ValueInfoProto. */
static int read_value_info(Onnx__ValueInfoProto *vi, mk_value *v, mk_error *err)
{
    Onnx__TypeProto *type = vi->type;
    if (!type) return MASKD_OK; /* untyped: left unknown */
    if (type->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !type->tensor_type)
        return mk_fail(err, MASKD_ERR_UNSUPPORTED,
                       "graph value '%s' is not a tensor (sequence/map/optional types are "
                       "not supported)",
                       v->name);
    Onnx__TypeProto__Tensor *tt = type->tensor_type;
    v->t.dtype = (maskd_dtype)tt->elem_type;
    if (!tt->shape) {
        v->t.ndim = -1;
        return MASKD_OK;
    }
    if (tt->shape->n_dim > MASKD_MAX_DIMS)
        return mk_fail(err, MASKD_ERR_UNSUPPORTED, "graph value '%s' has %zu dimensions (max %d)",
                       v->name, tt->shape->n_dim, MASKD_MAX_DIMS);
    v->t.ndim = (int)tt->shape->n_dim;
    for (size_t i = 0; i < tt->shape->n_dim; i++) {
        Onnx__TensorShapeProto__Dimension *d = tt->shape->dim[i];
        v->t.dims[i] = -1;
        if (d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE) {
            if (d->dim_value < 0)
                return mk_fail(err, MASKD_ERR_INVALID, "graph value '%s' has a negative dimension",
                               v->name);
            v->t.dims[i] = d->dim_value;
        } else if (d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM &&
                   d->dim_param) {
            free(v->dim_names[i]);
            v->dim_names[i] = dup_str(d->dim_param);
        }
    }
    return MASKD_OK;
}

static int model_opset(Onnx__ModelProto *mp, const char *domain)
{
    bool dflt = !domain || !*domain || !strcmp(domain, "ai.onnx");
    for (size_t i = 0; i < mp->n_opset_import; i++) {
        const char *d = mp->opset_import[i]->domain;
        bool d_dflt = !d || !*d || !strcmp(d, "ai.onnx");
        if (dflt ? d_dflt : (d && !strcmp(d, domain)))
            return (int)mp->opset_import[i]->version;
    }
    return dflt && mp->n_opset_import == 0 ? 1 : -1;
}

static int import_graph(Onnx__ModelProto *mp, maskd_model *m, mk_error *err)
{
    Onnx__GraphProto *g = mp->graph;
    int rc;
    if (!g) return mk_fail(err, MASKD_ERR_INVALID, "the model has no graph");
    if (g->n_sparse_initializer)
        return mk_fail(err, MASKD_ERR_UNSUPPORTED, "sparse initializers are not supported");
    m->ir_version = mp->ir_version;

    for (size_t i = 0; i < g->n_initializer; i++) {
        Onnx__TensorProto *tp = g->initializer[i];
        const char *name = tp->name ? tp->name : "";
        if (!*name) return mk_fail(err, MASKD_ERR_INVALID, "initializer %zu has no name", i);
        if (mk_value_find(m, name) >= 0)
            return mk_fail(err, MASKD_ERR_INVALID, "initializer '%s' is defined twice", name);
        int id = mk_value_add(m, name, err);
        if (id < 0) return err->code;
        mk_value *v = &m->values[id];
        if ((rc = convert_tensor(tp, &v->t, name, err))) return rc;
        v->is_initializer = true;
    }

    m->inputs = calloc(g->n_input + 1, sizeof(int));
    if (!m->inputs) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < g->n_input; i++) {
        const char *name = g->input[i]->name ? g->input[i]->name : "";
        if (!*name) return mk_fail(err, MASKD_ERR_INVALID, "graph input %zu has no name", i);
        int id = mk_value_find(m, name);
        if (id >= 0 && m->values[id].is_initializer)
            continue; /* an initializer listed as an input (IR < 4): a constant */
        if (id >= 0)
            return mk_fail(err, MASKD_ERR_INVALID, "graph input '%s' is listed twice", name);
        if ((id = mk_value_add(m, name, err)) < 0) return err->code;
        if ((rc = read_value_info(g->input[i], &m->values[id], err))) return rc;
        if (maskd_dtype_size(m->values[id].t.dtype) == 0)
            return mk_fail(err, MASKD_ERR_UNSUPPORTED,
                               "graph input '%s' has element type %s, which maskd does not support",
                               name, maskd_dtype_name(m->values[id].t.dtype));
        m->inputs[m->n_inputs++] = id;
    }

    m->nodes = calloc(g->n_node + 1, sizeof(mk_node));
    if (!m->nodes) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
    for (size_t k = 0; k < g->n_node; k++) {
        Onnx__NodeProto *np = g->node[k];
        mk_node *n = &m->nodes[m->n_nodes++];
        n->op_type = dup_str(np->op_type);
        n->domain = dup_str(np->domain);
        if (np->name && *np->name) {
            n->name = dup_str(np->name);
        } else {
            char buf[96];
            snprintf(buf, sizeof buf, "%.60s_%zu", n->op_type, k);
            n->name = dup_str(buf);
        }
        if (!n->op_type[0])
            return mk_fail(err, MASKD_ERR_INVALID, "node '%s' has no op_type", n->name);
        n->opset = model_opset(mp, n->domain);
        if (n->opset < 0)
            return mk_fail(err, MASKD_ERR_UNSUPPORTED,
                           "node '%s' (%s) is in domain '%s', which the model does not import",
                           n->name, n->op_type, n->domain);
        n->inputs = malloc((np->n_input + 1) * sizeof(int));
        n->outputs = malloc((np->n_output + 1) * sizeof(int));
        n->attrs = calloc(np->n_attribute + 1, sizeof(mk_attr));
        if (!n->inputs || !n->outputs || !n->attrs)
            return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < np->n_input; i++) {
            const char *name = np->input[i];
            int id = -1;
            if (name && *name) {
                id = mk_value_find(m, name);
                if (id < 0 && (id = mk_value_add(m, name, err)) < 0) return err->code;
            }
            n->inputs[n->n_inputs++] = id;
        }
        for (size_t i = 0; i < np->n_output; i++) {
            const char *name = np->output[i];
            int id = -1;
            if (name && *name) {
                id = mk_value_find(m, name);
                if (id < 0 && (id = mk_value_add(m, name, err)) < 0) return err->code;
                mk_value *v = &m->values[id];
                if (v->producer >= 0 || v->is_initializer)
                    return mk_fail(err, MASKD_ERR_INVALID,
                                   "value '%s' is produced twice (node '%s')", name, n->name);
                v->producer = (int)k;
            }
            n->outputs[n->n_outputs++] = id;
        }
        for (size_t i = 0; i < np->n_attribute; i++) {
            if ((rc = convert_attr(np->attribute[i], &n->attrs[i], n->name, err))) return rc;
            n->n_attrs++;
        }
    }
    /* A graph input that a node also produces is a malformed graph. */
    for (int i = 0; i < m->n_inputs; i++)
        if (m->values[m->inputs[i]].producer >= 0)
            return mk_fail(err, MASKD_ERR_INVALID, "graph input '%s' is also produced by a node",
                           m->values[m->inputs[i]].name);

    m->outputs = calloc(g->n_output + 1, sizeof(int));
    if (!m->outputs) return mk_fail(err, MASKD_ERR_NOMEM, "out of memory");
    if (g->n_output == 0) return mk_fail(err, MASKD_ERR_INVALID, "the graph has no outputs");
    for (size_t i = 0; i < g->n_output; i++) {
        const char *name = g->output[i]->name ? g->output[i]->name : "";
        int id = mk_value_find(m, name);
        if (id < 0)
            return mk_fail(err, MASKD_ERR_INVALID, "graph output '%s' is not produced by any node",
                           name);
        for (int j = 0; j < m->n_outputs; j++)
            if (m->outputs[j] == id)
                return mk_fail(err, MASKD_ERR_INVALID, "graph output '%s' is listed twice", name);
        mk_value *v = &m->values[id];
        v->is_graph_output = true;
        if (!v->is_initializer && v->producer < 0) {
            bool is_input = false;
            for (int j = 0; j < m->n_inputs; j++) is_input |= m->inputs[j] == id;
            if (!is_input)
                return mk_fail(err, MASKD_ERR_INVALID,
                               "graph output '%s' is not produced by any node", name);
        }
        /* Declared output types are kept for the API; shapes come from inference. */
        mk_value decl = {.name = v->name};
        decl.t.ndim = -1;
        if ((rc = read_value_info(g->output[i], &decl, err))) return rc;
        for (int d = 0; d < MASKD_MAX_DIMS; d++) {
            if (!v->dim_names[d]) v->dim_names[d] = decl.dim_names[d];
            else free(decl.dim_names[d]);
        }
        if (v->producer >= 0 && !v->is_initializer) {
            v->t.dtype = decl.t.dtype;
            v->t.ndim = decl.t.ndim;
            memcpy(v->t.dims, decl.t.dims, sizeof v->t.dims);
        }
        m->outputs[m->n_outputs++] = id;
    }

    /* Every node input must come from somewhere. */
    for (int k = 0; k < m->n_nodes; k++) {
        mk_node *n = &m->nodes[k];
        for (int i = 0; i < n->n_inputs; i++) {
            int id = n->inputs[i];
            if (id < 0) continue;
            mk_value *v = &m->values[id];
            if (v->is_initializer || v->producer >= 0) continue;
            bool is_input = false;
            for (int j = 0; j < m->n_inputs; j++) is_input |= m->inputs[j] == id;
            if (!is_input)
                return mk_fail(err, MASKD_ERR_INVALID,
                               "node '%s' (%s) reads '%s', which no node, initializer or graph "
                               "input provides",
                               n->name, n->op_type, v->name);
        }
    }
    return MASKD_OK;
}

int mk_onnx_import(const void *data, size_t size, maskd_model *m, mk_error *err)
{
    if (size == 0) return mk_fail(err, MASKD_ERR_INVALID, "the model file is empty");
    Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, size, data);
    if (!mp)
        return mk_fail(err, MASKD_ERR_INVALID,
                       "not a valid ONNX model: the protobuf could not be parsed (truncated or "
                       "not an .onnx file?)");
    int rc = import_graph(mp, m, err);
    onnx__model_proto__free_unpacked(mp, NULL);
    return rc;
}
