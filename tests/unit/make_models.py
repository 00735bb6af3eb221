"""Small ONNX graphs for the engine's unit tests (written to the build dir)."""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(7)


def save(name, nodes, inputs, outputs, inits, opset=13):
    g = helper.make_graph(nodes, name, inputs, outputs,
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(m)
    onnx.save(m, os.path.join(out, name + ".onnx"))


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


# Conv -> BatchNormalization -> Relu: the optimiser folds it into one node.
save("conv_bn_relu",
     [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
      helper.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["n"], epsilon=1e-3),
      helper.make_node("Relu", ["n"], ["y"])],
     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 7])],
     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 9, 7])],
     {"w": f32(5, 3, 3, 3), "b": f32(5), "g": f32(5), "beta": f32(5), "mean": f32(5),
      "var": np.abs(f32(5)) + 0.5})

# SiLU as exporters write it, x * Sigmoid(x) (here Mul(Sigmoid(c), c)): one
# node after optimisation, the Conv with a SiLU epilogue.
save("conv_silu",
     [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
      helper.make_node("Sigmoid", ["c"], ["s"]),
      helper.make_node("Mul", ["s", "c"], ["y"])],
     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 7])],
     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 9, 7])],
     {"w": f32(5, 3, 3, 3), "b": f32(5)})

# GroupNorm as PyTorch exports it before opset 18 (Reshape -> InstanceNorm ->
# Reshape(Shape) -> Mul -> Add), after a Conv: the optimiser makes it one
# GroupNormalization (and fuses the Relu).  In gn_chain_rows gamma and beta are
# [6, 1]: they broadcast over the rows of the 6x5 map, not the channels, and
# the chain must stay as it is.
def gn_chain(name, param_shape):
    save(name,
         [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
          helper.make_node("Reshape", ["c", "groups"], ["g"]),
          helper.make_node("InstanceNormalization", ["g", "s", "t"], ["n"], epsilon=1e-3),
          helper.make_node("Shape", ["c"], ["shape"]),
          helper.make_node("Reshape", ["n", "shape"], ["r"]),
          helper.make_node("Mul", ["r", "gamma"], ["m"]),
          helper.make_node("Add", ["beta", "m"], ["a"]),
          helper.make_node("Relu", ["a"], ["y"])],
         [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 5])],
         [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 6, 5])],
         {"w": f32(6, 3, 3, 3), "b": f32(6) + 2.0, "groups": np.array([0, 3, -1], dtype=np.int64),
          "s": f32(3), "t": f32(3), "gamma": f32(*param_shape), "beta": f32(*param_shape)})


gn_chain("gn_chain", (6, 1, 1))
gn_chain("gn_chain_rows", (6, 1))

# A shape computed from the input, as exporters write Flatten: folded per plan.
save("shape_chain",
     [helper.make_node("Shape", ["x"], ["s"]),
      helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
      helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
      helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
      helper.make_node("Reshape", ["x", "shape"], ["y"])],
     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4, 4])],
     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 48])],
     {"zero": np.array(0, dtype=np.int64), "axes": np.array([0], dtype=np.int64),
      "minus1": np.array([-1], dtype=np.int64)})

# A long chain: the memory plan must reuse buffers.
chain = [helper.make_node("Sigmoid", ["x" if i == 0 else f"t{i}"], [f"t{i + 1}"]) for i in range(8)]
chain.append(helper.make_node("Relu", ["t8"], ["y"]))
save("chain", chain,
     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 32, 32])],
     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 32, 32])], {})

# Reshapes share their input's buffer: a's must then outlive b and c, which
# would otherwise be given it; r3, a graph output, gets a buffer of its own.
save("views",
     [helper.make_node("Sigmoid", ["x"], ["a"]),
      helper.make_node("Reshape", ["a", "flat"], ["r"]),
      helper.make_node("Sigmoid", ["a"], ["b"]),
      helper.make_node("Sigmoid", ["b"], ["c"]),
      helper.make_node("Reshape", ["r", "square"], ["r2"]),
      helper.make_node("Add", ["r2", "c"], ["y"]),
      helper.make_node("Reshape", ["c", "flat"], ["r3"])],
     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 32, 32])],
     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 32, 32]),
      helper.make_tensor_value_info("r3", TensorProto.FLOAT, [1, 16384])],
     {"flat": np.array([1, -1], dtype=np.int64),
      "square": np.array([1, 16, 32, 32], dtype=np.int64)})

# NonMaxSuppression: a data-dependent output shape, feeding another node.
save("dynamic",
     [helper.make_node("NonMaxSuppression", ["boxes", "scores", "maxk", "iou"], ["sel"]),
      helper.make_node("Cast", ["sel"], ["y"], to=TensorProto.FLOAT)],
     [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 6, 4]),
      helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 6])],
     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["selected", 3])],
     {"maxk": np.array([10], dtype=np.int64), "iou": np.array([0.5], dtype=np.float32)})
