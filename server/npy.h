/* .npy files (NumPy's array format, version 1-3, C order, little-endian):
 * the CLI's and the tests' way to hand tensors to the engine. */
#ifndef MASKD_NPY_H
#define MASKD_NPY_H

#include "maskd/engine.h"

/* out->data is malloc'd: free() it. */
int maskd_npy_read(const char *path, maskd_tensor *out, maskd_error *err);
int maskd_npy_write(const char *path, const maskd_tensor *t, maskd_error *err);

#endif
