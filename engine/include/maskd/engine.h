/*
 * maskd engine — public API.
 *
 * A model is an immutable, parsed and optimised ONNX graph; it may be shared
 * by any number of sessions.  A session binds input shapes, owns the memory
 * plan and the output buffers, and is used by one thread at a time.  Heavy
 * operators split their work over a maskd_pool, which several sessions may
 * share.  Every fallible call returns MASKD_OK (0) or an error code and fills
 * a maskd_error with a message meant for a person.
 */
#ifndef MASKD_ENGINE_H
#define MASKD_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { MASKD_MAX_DIMS = 8 };

/* Element types; the values are ONNX TensorProto.DataType's. */
typedef enum maskd_dtype {
    MASKD_UNDEFINED = 0,
    MASKD_FLOAT = 1,
    MASKD_UINT8 = 2,
    MASKD_INT8 = 3,
    MASKD_UINT16 = 4,
    MASKD_INT16 = 5,
    MASKD_INT32 = 6,
    MASKD_INT64 = 7,
    MASKD_STRING = 8,
    MASKD_BOOL = 9,
    MASKD_FLOAT16 = 10,
    MASKD_DOUBLE = 11,
    MASKD_UINT32 = 12,
    MASKD_UINT64 = 13,
} maskd_dtype;

typedef enum maskd_status {
    MASKD_OK = 0,
    MASKD_ERR_INVALID = 1,     /* a bad argument or a malformed model file */
    MASKD_ERR_UNSUPPORTED = 2, /* valid ONNX that this engine cannot run */
    MASKD_ERR_IO = 3,          /* a file could not be read */
    MASKD_ERR_NOMEM = 4,
    MASKD_ERR_SHAPE = 5,       /* input shapes the graph does not accept */
    MASKD_ERR_RUNTIME = 6,     /* an operator failed while running */
} maskd_status;

typedef struct maskd_error {
    int code;
    char message[512];
} maskd_error;

/* Fills err (when not NULL) with code and a printf-style message; returns
 * code, so callers can `return maskd_error_set(err, ...)`. */
int maskd_error_set(maskd_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A dense, row-major tensor.  `data` is borrowed: tensors handed to the engine
 * stay owned by the caller, tensors handed back stay owned by the session. */
typedef struct maskd_tensor {
    maskd_dtype dtype;
    int ndim;
    int64_t dims[MASKD_MAX_DIMS];
    void *data;
} maskd_tensor;

/* An input or output as the model declares it; a dimension that is symbolic or
 * unknown in the file is -1 (its name, if any, is in dim_names). */
typedef struct maskd_value_info {
    const char *name;
    maskd_dtype dtype;
    int ndim;
    int64_t dims[MASKD_MAX_DIMS];
    const char *dim_names[MASKD_MAX_DIMS];
} maskd_value_info;

typedef struct maskd_pool maskd_pool;
typedef struct maskd_model maskd_model;
typedef struct maskd_session maskd_session;

/* ---- thread pool ------------------------------------------------------ */

/* `threads` counts the calling thread: 1 means no workers.  0 picks the
 * number of online CPUs. */
int maskd_pool_create(int threads, maskd_pool **out, maskd_error *err);
void maskd_pool_free(maskd_pool *pool);
int maskd_pool_threads(const maskd_pool *pool);

/* ---- models ----------------------------------------------------------- */

typedef struct maskd_load_options {
    int optimize; /* 1 (default when options is NULL): folding and fusions */
} maskd_load_options;

int maskd_model_load_file(const char *path, const maskd_load_options *opt,
                          maskd_model **out, maskd_error *err);
int maskd_model_load_memory(const void *data, size_t size,
                            const maskd_load_options *opt, maskd_model **out,
                            maskd_error *err);
void maskd_model_free(maskd_model *model);

int maskd_model_num_inputs(const maskd_model *model);
int maskd_model_num_outputs(const maskd_model *model);
const maskd_value_info *maskd_model_input(const maskd_model *model, int i);
const maskd_value_info *maskd_model_output(const maskd_model *model, int i);
/* -1 when there is no such input/output. */
int maskd_model_input_index(const maskd_model *model, const char *name);
int maskd_model_output_index(const maskd_model *model, const char *name);
/* Node count after optimisation (for tests and --verbose). */
int maskd_model_num_nodes(const maskd_model *model);

/* ---- sessions --------------------------------------------------------- */

/* `pool` may be NULL (single-threaded); it must outlive the session.  When
 * every model input has a fixed shape in the file, the session is planned for
 * it here (weights packed for those shapes, the arena sized), so that its
 * first run costs what later runs do. */
int maskd_session_create(const maskd_model *model, maskd_pool *pool,
                         maskd_session **out, maskd_error *err);
void maskd_session_free(maskd_session *session);

/* Runs the graph.  inputs[i] feeds model input i; every input must be given.
 * A run with input shapes other than the current plan's plans again; later
 * runs with the same shapes reuse that plan. */
int maskd_session_run(maskd_session *session, const maskd_tensor *inputs,
                      int n_inputs, maskd_error *err);

/* Output i of the last successful run, valid until the next run or free. */
const maskd_tensor *maskd_session_output(const maskd_session *session, int i);

/* Profiling: with it on, each run adds every node's wall time to a table
 * (for `maskd infer --profile`).  Off by default: it costs two clock reads
 * per node. */
typedef struct maskd_node_time {
    const char *node;
    const char *op_type;
    const char *output; /* the value it writes (after fusion: the fused chain's last) */
    double total_ms;
    int64_t runs;
} maskd_node_time;

void maskd_session_set_profiling(maskd_session *session, int on);
/* The table (one row per executed node, in execution order); count in *n. */
const maskd_node_time *maskd_session_profile(const maskd_session *session, int *n);

/* ---- helpers ---------------------------------------------------------- */

size_t maskd_dtype_size(maskd_dtype dtype); /* 0 for unsupported types */
const char *maskd_dtype_name(maskd_dtype dtype);
int64_t maskd_tensor_numel(const maskd_tensor *t);

#ifdef __cplusplus
}
#endif
#endif
