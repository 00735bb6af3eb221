#!/usr/bin/python3
"""Counts the multiply-adds of an ONNX model at given input shapes.

    flops.py MODEL.onnx INPUT_SHAPE... [--by-op]

One INPUT_SHAPE per graph input (initializers excluded), in order, written
1x3x224x224 or NAME=1x3x224x224.  Prints "<GMACs> GMACs" (then, with --by-op,
one line per operator type).  GFLOP/s = 2 x MACs / seconds.

Counted: Conv (grouped and depthwise included; dilation spreads the taps but
does not add any), ConvTranspose, Gemm, MatMul.  Everything else (norms,
activations, pooling, resize) is memory-bound and left out, as is usual.
Shapes come from onnx.shape_inference with data propagation, Shape nodes
folded to constants (see fold_shape_nodes), so Resize and Reshape targets
computed from shapes are followed.
"""
import sys
from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference


def parse_shapes(model, specs):
    init = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    by_name = {i.name: i for i in inputs}
    shapes = {}
    for k, spec in enumerate(specs):
        name, _, dims = spec.rpartition("=")
        if not name:
            if k >= len(inputs):
                raise SystemExit(f"flops.py: the model has {len(inputs)} inputs, {len(specs)} shapes given")
            name = inputs[k].name
        if name not in by_name:
            raise SystemExit(f"flops.py: the model has no input '{name}'")
        shapes[name] = [int(d) for d in dims.replace(",", "x").split("x") if d]
    for i in inputs:
        if i.name not in shapes:
            raise SystemExit(f"flops.py: no shape given for input '{i.name}'")
    return shapes


def with_input_shapes(model, shapes):
    for i in model.graph.input:
        if i.name in shapes:
            dims = i.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[i.name]:
                dims.add().dim_value = d
    return model


def known_shapes(model):
    shapes = {}
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if all(d is not None for d in dims):
            shapes[vi.name] = dims
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]] = list(a.t.dims)
    return shapes


def attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def node_macs(node, shape):
    """Multiply-adds of one node, or None when a needed shape is unknown."""
    op = node.op_type
    get = lambda i: shape.get(node.input[i]) if i < len(node.input) and node.input[i] else None
    if op == "Conv":
        w, y = get(1), shape.get(node.output[0])
        if w is None or y is None:
            return None
        # Each output element takes (C_in / group) x kernel taps, whatever the group count.
        return int(np.prod(y, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    if op == "ConvTranspose":
        x, w = get(0), get(1)
        if x is None or w is None:
            return None
        # Each input element scatters into (C_out / group) x kernel taps.
        return int(np.prod(x, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    if op == "Gemm":
        a, b = get(0), get(1)
        if a is None or b is None:
            return None
        m, k = (a[1], a[0]) if attr(node, "transA", 0) else (a[0], a[1])
        n = b[0] if attr(node, "transB", 0) else b[1]
        return m * k * n
    if op == "MatMul":
        a, b, y = get(0), get(1), shape.get(node.output[0])
        if a is None or b is None or y is None:
            return None
        k = a[-1]
        # y holds the broadcast batch and M x N (1-D operands drop a dim): one K-long dot each.
        return int(np.prod(y, dtype=np.int64)) * k
    return 0


def fold_shape_nodes(model):
    """Shape inference, with every Shape node whose input shape is known
    replaced by a constant, until none is left to replace: onnx 1.12's data
    propagation does not carry Shape into Reshape (GroupNorm exports as
    Reshape-InstanceNormalization-Reshape(Shape(x))), so later shapes would
    stay unknown."""
    while True:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
        shape = known_shapes(inferred)
        foldable = [n for n in model.graph.node if n.op_type == "Shape" and n.input[0] in shape]
        if not foldable:
            return inferred, shape
        for n in foldable:
            dims = shape[n.input[0]][attr(n, "start", 0):attr(n, "end", None)]
            model.graph.initializer.append(numpy_helper.from_array(np.array(dims, np.int64), n.output[0]))
            model.graph.node.remove(n)


def count_nodes(model_path, specs):
    """[(node, macs or None when its shapes are unknown)] in graph order."""
    model = onnx.load(model_path)
    model, shape = fold_shape_nodes(with_input_shapes(model, parse_shapes(model, specs)))
    return [(node, node_macs(node, shape)) for node in model.graph.node]


def count(model_path, specs):
    by_op, unknown = defaultdict(int), []
    for node, macs in count_nodes(model_path, specs):
        if macs is None:
            unknown.append(f"{node.op_type} '{node.name}'")
        elif macs:
            by_op[node.op_type] += macs
    return by_op, unknown


def main(argv):
    args = [a for a in argv[1:] if a != "--by-op"]
    if len(args) < 2:
        sys.stderr.write(__doc__)
        return 64
    by_op, unknown = count(args[0], args[1:])
    print(f"{sum(by_op.values()) / 1e9:.4f} GMACs")
    if "--by-op" in argv:
        for op, macs in sorted(by_op.items(), key=lambda kv: -kv[1]):
            print(f"  {op:<14} {macs / 1e9:.4f} GMACs")
    if unknown:
        # A node left out would understate GFLOP/s without a word.
        sys.stderr.write(f"flops.py: shapes unknown for {len(unknown)} nodes, not counted: "
                         + ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "") + "\n")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
