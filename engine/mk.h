/*
 * Internal engine types: the graph, the operator contract, the thread pool.
 * Everything here is private to engine/; server/ sees only include/maskd/.
 */
#ifndef MK_H
#define MK_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "maskd/engine.h"

typedef maskd_tensor mk_tensor;
typedef maskd_error mk_error;
typedef maskd_pool mk_pool;

/* Sets err (if not NULL) and returns code, so callers can `return mk_fail(...)`. */
int mk_fail(mk_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- tensors ------------------------------------------------------------ */

int64_t mk_numel(const mk_tensor *t);
size_t mk_nbytes(const mk_tensor *t);
bool mk_same_shape(const mk_tensor *a, const mk_tensor *b);
/* "[1,3,224,224]" into buf, for messages. */
const char *mk_shape_str(const mk_tensor *t, char *buf, size_t size);
/* Element i of an integer tensor (INT32/INT64/UINT8/BOOL...) as int64; of a
 * float tensor truncated.  For shape-like inputs (Reshape's shape, Slice's
 * starts, ...). */
int64_t mk_get_i64(const mk_tensor *t, int64_t i);
double mk_get_f64(const mk_tensor *t, int64_t i);

/* ---- attributes ----------------------------------------------------------- */

typedef enum mk_attr_type {
    MK_ATTR_FLOAT = 1,
    MK_ATTR_INT = 2,
    MK_ATTR_STRING = 3,
    MK_ATTR_TENSOR = 4,
    MK_ATTR_FLOATS = 6,
    MK_ATTR_INTS = 7,
    MK_ATTR_STRINGS = 8,
} mk_attr_type; /* values are ONNX AttributeProto.AttributeType's */

typedef struct mk_attr {
    char *name;
    mk_attr_type type;
    float f;
    int64_t i;
    char *s;          /* NUL-terminated copy */
    mk_tensor *t;     /* owned */
    int n;            /* count of floats / ints / strings */
    float *floats;
    int64_t *ints;
    char **strings;
} mk_attr;

/* ---- nodes and operators ------------------------------------------------ */

typedef struct mk_op mk_op;

/* Activations an operator can apply in its epilogue (set by fusion). */
typedef enum mk_act {
    MK_ACT_NONE = 0,
    MK_ACT_RELU,
    MK_ACT_CLIP,        /* min(max(x, alpha), beta) */
    MK_ACT_LEAKY_RELU,  /* alpha */
    MK_ACT_SIGMOID,
    MK_ACT_HARD_SIGMOID, /* max(0, min(1, alpha*x + beta)) */
    MK_ACT_HARD_SWISH,
    MK_ACT_SILU,        /* x * sigmoid(x) (SiLU, or Swish with beta 1) */
    MK_ACT_TANH,
    MK_ACT_ERF,         /* the error function (GELU's exports: x * 0.5 * (1 + erf(x / sqrt 2))) */
    MK_ACT_EXP,         /* e^x over the whole float range */
} mk_act;

typedef struct mk_node {
    char *name;
    char *op_type;
    char *domain; /* "" for the default ONNX domain */
    int opset;    /* the model's opset for this node's domain */
    int n_inputs, n_outputs;
    int *inputs;  /* value ids; -1 for an omitted optional input */
    int *outputs; /* value ids; -1 for an omitted optional output */
    int n_attrs;
    mk_attr *attrs;
    const mk_op *op;
    void *state;  /* the op's parsed attributes / packed weights (op->release) */
    /* Fused epilogue, honoured by ops whose row says fuse_act. */
    mk_act act;
    float act_alpha, act_beta;
} mk_node;

const mk_attr *mk_attr_find(const mk_node *n, const char *name);
int64_t mk_attr_int(const mk_node *n, const char *name, int64_t dflt);
float mk_attr_float(const mk_node *n, const char *name, float dflt);
/* Returns dflt when absent; the string belongs to the node. */
const char *mk_attr_str(const mk_node *n, const char *name, const char *dflt);
/* Count of ints, -1 when absent; copies at most cap into out. */
int mk_attr_ints(const mk_node *n, const char *name, int64_t *out, int cap);
int mk_attr_floats(const mk_node *n, const char *name, float *out, int cap);

typedef struct mk_ctx mk_ctx;

/*
 * What an op sees.  During `infer` each in[i] has dtype and dims, and `data`
 * only when that input is a constant (an initializer or a folded value);
 * the op fills out[i]->dtype/ndim/dims.  During `run` every data pointer is
 * valid and out[i]->data points at memory of the inferred size.
 */
struct mk_ctx {
    mk_node *node;
    int n_in, n_out;
    mk_tensor **in;  /* NULL entries for omitted optional inputs */
    mk_tensor **out; /* NULL entries for omitted optional outputs */
    mk_pool *pool;   /* NULL means run on the calling thread only */
    mk_error *err;
    /* Scratch: infer sets scratch_bytes to what run needs; run finds the
     * buffer (64-byte aligned) in scratch. */
    size_t scratch_bytes;
    void *scratch;
};

/* Input/output i, or NULL when omitted or past the node's count. */
mk_tensor *mk_input(const mk_ctx *ctx, int i);
mk_tensor *mk_output(const mk_ctx *ctx, int i);
/* mk_fail with the message prefixed "OpType: node 'name': ". */
int mk_op_fail(const mk_ctx *ctx, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Required input/output i into *out; an error naming the node when absent. */
int mk_need_input(const mk_ctx *ctx, int i, mk_tensor **out);
int mk_need_output(const mk_ctx *ctx, int i, mk_tensor **out);

/* Return codes of infer besides MASKD_OK and errors: the output shape depends
 * on an input's values that are not known until run time (a Reshape whose
 * shape is computed, NonMaxSuppression's count). The engine then calls infer
 * again at run time with every input's data present, and allocates then. */
enum { MK_DYNAMIC = 100 };

struct mk_op {
    const char *domain; /* "" = ai.onnx */
    const char *op_type;
    int since_version;  /* first opset this row serves */
    int until_version;  /* last opset this row serves (inclusive); 0 = open */
    /* Once at model load: parse and validate attributes into node->state.
     * ctx->in[i] has data when input i is an initializer, ndim -1 when its
     * shape is not yet known.  Optional (NULL). */
    int (*prepare)(mk_ctx *ctx);
    int (*infer)(mk_ctx *ctx);
    int (*run)(mk_ctx *ctx);
    void (*release)(void *state);
    /* Flags */
    unsigned fuse_act : 1;  /* run applies node->act */
    unsigned no_fold : 1;   /* never constant-fold (none so far) */
    unsigned shape_only : 1; /* reads only its inputs' shapes (Shape, Size):
                                folded whenever those are known */
    unsigned view : 1;      /* output 0 holds input 0's bytes unchanged (Reshape
                               and kin): the plan may give it input 0's buffer,
                               and run then copies nothing */
};

/* Each op family file (ops/NAME.c) defines its rows with
 *     MK_OP_FAMILY(NAME, { ... }, { ... });
 * and ops/registry.c lists the families. */
typedef struct mk_op_family {
    const mk_op *rows;
    size_t count;
} mk_op_family;
#define MK_OP_FAMILY(name, ...)                                                \
    static const mk_op mk_rows_##name[] = {__VA_ARGS__};                       \
    const mk_op_family mk_ops_##name = {                                       \
        mk_rows_##name, sizeof mk_rows_##name / sizeof mk_rows_##name[0]}

/* The registry (ops/registry.c): the row serving (domain, op_type, opset). */
const mk_op *mk_op_find(const char *domain, const char *op_type, int opset);
/* Whether any row has this op_type, for error messages. */
bool mk_op_known(const char *domain, const char *op_type);

/* Helpers for ops. */
void mk_apply_act(float *x, int64_t n, mk_act act, float alpha, float beta);
/* Numpy-style broadcast of a and b's shapes into out; error on mismatch. */
int mk_broadcast_shape(const mk_tensor *a, const mk_tensor *b, mk_tensor *out,
                       mk_error *err);
/* Output shape = input 0's shape and dtype (elementwise unary ops). */
int mk_infer_same_as_input(mk_ctx *ctx);

/* ---- thread pool -------------------------------------------------------- */

/* fn(arg, begin, end, slot) processes items [begin, end).  slot is a distinct
 * number in [0, mk_pool_slots(pool)) among the threads of one parallel_for,
 * to index per-thread scratch. */
typedef void (*mk_range_fn)(void *arg, int64_t begin, int64_t end, int slot);
/* Splits [0, n) into chunks of at least `grain` items over the pool and
 * returns when all are done.  pool may be NULL. */
void mk_parallel_for(mk_pool *pool, int64_t n, int64_t grain, mk_range_fn fn,
                     void *arg);
int mk_pool_slots(const mk_pool *pool);

/* ---- memory ------------------------------------------------------------- */

void *mk_aligned_alloc(size_t bytes); /* 64-byte aligned, zero bytes -> non-NULL */
void mk_aligned_free(void *p);
/* mk_aligned_alloc for buffers a run sweeps through (activations, scratch):
 * from 2 MB up, in whole 2 MB pages the kernel is asked to back with huge
 * pages, so that a sweep over megabytes does not miss the TLB every 4 KB
 * (shapes-det stage 1 at 1 thread, 5 alternating runs: median 0.3 ms, 1%,
 * lower; minimum the same).  Freed with mk_aligned_free. */
void *mk_big_alloc(size_t bytes);

/* ---- CPU dispatch (cpu.c) ---------------------------------------------- */

/* Instruction-set levels kernels are compiled for, in increasing order:
 * AVX2 means AVX2 + FMA; AVX512 means F + BW + VL + DQ. */
typedef enum mk_isa { MK_ISA_PORTABLE = 0, MK_ISA_AVX2, MK_ISA_AVX512 } mk_isa;
/* The best level both the CPU and the OS support, lowered (never raised) by
 * the environment variable MASKD_CPU=portable|avx2|avx512; computed once. */
mk_isa mk_cpu_level(void);
const char *mk_isa_name(mk_isa isa);

/* For a small hot loop a second, AVX2 build picked by the loader (an ifunc)
 * is enough.  Off under the sanitizers: their runtimes are not yet set up
 * when the dynamic loader runs an ifunc resolver, so the resolver crashes. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define MK_TARGET_CLONES(...) __attribute__((target_clones(__VA_ARGS__)))
#else
#define MK_TARGET_CLONES(...)
#endif

#endif
