/* The operator registry: one table of op families, searched by
 * (domain, op_type, opset).  Adding an op = a row in its family's file. */
#include <string.h>

#include "../mk.h"

extern const mk_op_family mk_ops_conv, mk_ops_gemm, mk_ops_norm,
    mk_ops_activation, mk_ops_softmax, mk_ops_elementwise, mk_ops_shape,
    mk_ops_layout, mk_ops_reduce, mk_ops_pool, mk_ops_resize,
    mk_ops_depth_to_space, mk_ops_roi, mk_ops_nms;

static const mk_op_family *const families[] = {
    &mk_ops_conv,    &mk_ops_gemm,   &mk_ops_norm,   &mk_ops_activation,
    &mk_ops_softmax, &mk_ops_elementwise, &mk_ops_shape, &mk_ops_layout,
    &mk_ops_reduce,  &mk_ops_pool,   &mk_ops_resize, &mk_ops_depth_to_space,
    &mk_ops_roi,     &mk_ops_nms,
};

static bool same_domain(const char *a, const char *b)
{
    /* "ai.onnx" and "" name the same default domain. */
    if (!a || !*a || !strcmp(a, "ai.onnx")) a = "";
    if (!b || !*b || !strcmp(b, "ai.onnx")) b = "";
    return strcmp(a, b) == 0;
}

const mk_op *mk_op_find(const char *domain, const char *op_type, int opset)
{
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
        for (size_t i = 0; i < families[f]->count; i++) {
            const mk_op *op = &families[f]->rows[i];
            if (strcmp(op->op_type, op_type) || !same_domain(op->domain, domain))
                continue;
            if (opset < op->since_version) continue;
            if (op->until_version && opset > op->until_version) continue;
            return op;
        }
    }
    return NULL;
}

bool mk_op_known(const char *domain, const char *op_type)
{
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++)
        for (size_t i = 0; i < families[f]->count; i++)
            if (!strcmp(families[f]->rows[i].op_type, op_type) &&
                same_domain(families[f]->rows[i].domain, domain))
                return true;
    return false;
}
