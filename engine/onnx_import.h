/* ONNX protobuf helpers other parts of maskd (its tests, mostly) may use. */
#ifndef MK_ONNX_IMPORT_H
#define MK_ONNX_IMPORT_H

#include "maskd/engine.h"

/* Parses a serialized TensorProto (an ONNX test's input_0.pb).  out->data and
 * *name_out (if name_out is not NULL) are malloc'd for the caller to free. */
int mk_onnx_parse_tensor(const void *data, size_t size, maskd_tensor *out,
                         char **name_out, maskd_error *err);

#endif
