/* The model graph as the engine holds it after import and optimisation. */
#ifndef MK_GRAPH_H
#define MK_GRAPH_H

#include "mk.h"

typedef struct mk_value {
    char *name;
    mk_tensor t;         /* dtype and dims when known (ndim -1: unknown);
                            data for initializers (owned, mk_aligned_alloc) */
    bool is_initializer;
    bool is_graph_output;
    int producer;        /* node index, -1 for graph inputs and initializers */
    int n_consumers;
    char *dim_names[MASKD_MAX_DIMS];
} mk_value;

struct maskd_model {
    mk_value *values;
    int n_values, cap_values;
    mk_node *nodes;      /* topologically sorted after import */
    int n_nodes;
    int *inputs, n_inputs;   /* value ids fed by the caller */
    int *outputs, n_outputs; /* value ids handed back */
    maskd_value_info *input_info, *output_info;
    int64_t ir_version;
    int *name_slots; /* open-addressing hash of value names -> ids (-1 free) */
    int name_cap;
};

/* onnx_import.c: file bytes -> graph with values, nodes (in file order),
 * initializers, inputs and outputs. */
int mk_onnx_import(const void *data, size_t size, maskd_model *m, mk_error *err);

/* graph.c */
int mk_value_add(maskd_model *m, const char *name, mk_error *err);
int mk_value_find(const maskd_model *m, const char *name);
void mk_node_clear(mk_node *n);
/* Load-time passes, in this order (model.c): sort, bind, optimize, prepare. */
int mk_graph_sort(maskd_model *m, mk_error *err);
int mk_graph_bind_ops(maskd_model *m, mk_error *err);
/* Identity removal, constant folding, Conv+BatchNormalization folding,
 * activation fusion. */
int mk_graph_optimize(maskd_model *m, mk_error *err);
int mk_graph_prepare_ops(maskd_model *m, mk_error *err);
void mk_graph_count_uses(maskd_model *m);

/* Runs one node now: infer, allocate outputs (mk_aligned_alloc, owned by the
 * caller afterwards), run.  For constant folding at load and plan time. */
int mk_node_eval(mk_node *n, mk_tensor **in, mk_tensor **out, mk_error *err);
/* Builds a ctx for node n over the given tensors. */
void mk_ctx_init(mk_ctx *c, mk_node *n, mk_tensor **in, mk_tensor **out, mk_pool *pool,
                 mk_error *err);

/* session.c: the planned arena's size, for tests of the memory plan. */
size_t mk_session_arena_bytes(const maskd_session *s);

#endif
