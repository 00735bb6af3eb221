#!/usr/bin/env python3
"""Hostile inputs for `maskd infer`: broken, malicious or unsupported model
files (and a few bad .npy inputs).  Each must make maskd exit non-zero with a
`maskd: ...` message that names what is wrong, and never crash.

    hostile.py --maskd BUILD/server/maskd --work-dir DIR [-v] [CASE_PATTERN...]

The files are generated here with onnx.helper (nothing is committed).  A
control case (the intact model) must succeed, so that "everything fails" does
not pass for "everything is rejected".
"""
import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
TIMEOUT_S = 60
# A load failure ("a bad model file") exits with this code.
EXIT_BAD_MODEL = 2
PARSE_WORDS = r"pars|protobuf|truncat|malformed|corrupt|invalid|decode|not an? (valid )?onnx"
CRASH_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
               "runtime error:", "Segmentation fault", "core dumped", "stack smashing")


class Case:
    def __init__(self, name, model=None, raw=None, expect=(), inputs=None, exit_code=EXIT_BAD_MODEL,
                 succeed=False, model_path=None, note=""):
        self.name = name
        self.model = model          # an onnx.ModelProto to serialize, or
        self.raw = raw              # the file's bytes as they are
        self.model_path = model_path  # or a path to use as is (no file written)
        self.expect = list(expect)  # regexes (case-insensitive) stderr must all match
        self.inputs = inputs        # {name: array or raw bytes}; default: a good image
        # Problems in the file itself (parse, initializers, graph structure,
        # unknown ops) are load failures; None: any non-zero code.
        self.exit_code = exit_code
        self.succeed = succeed
        self.note = note


# ---- a small real model --------------------------------------------------------


def rng():
    return np.random.default_rng(1234)


def tiny_graph_parts(r):
    """Conv -> BatchNormalization -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    w = r.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.2
    inits = [
        numpy_helper.from_array(w, "conv.weight"),  # raw_data
        helper.make_tensor("conv.bias", TensorProto.FLOAT, [8], r.standard_normal(8).tolist()),  # float_data
        numpy_helper.from_array(np.ones(8, np.float32), "bn.scale"),
        numpy_helper.from_array(np.zeros(8, np.float32), "bn.bias"),
        numpy_helper.from_array(r.standard_normal(8).astype(np.float32) * 0.1, "bn.mean"),
        numpy_helper.from_array(np.ones(8, np.float32) * 1.5, "bn.var"),
        numpy_helper.from_array(r.standard_normal((4, 8)).astype(np.float32), "fc.weight"),
        numpy_helper.from_array(np.zeros(4, np.float32), "fc.bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv.weight", "conv.bias"], ["c"], name="conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b"],
                         name="bn"),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    return nodes, inits


IMAGE = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])


def model_of(nodes, inits=(), inputs=(IMAGE,), outputs=None, opset=OPSET, opsets=None):
    if outputs is None:
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "hostile", list(inputs), outputs, initializer=list(inits))
    m = helper.make_model(graph, opset_imports=opsets or [helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def tiny_model():
    nodes, inits = tiny_graph_parts(rng())
    return model_of(nodes, inits)


def replace_init(model, name, tensor):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for i, t in enumerate(m.graph.initializer):
        if t.name == name:
            m.graph.initializer[i].CopyFrom(tensor)
            return m
    raise KeyError(name)


def raw_tensor(name, dtype, dims, raw):
    t = TensorProto()
    t.name = name
    t.data_type = dtype
    t.dims.extend(dims)
    t.raw_data = raw
    return t


def single_op_model(op, inits, node_name, out_name="y", **attrs):
    """image -> op(image, inits...) -> out_name."""
    node = helper.make_node(op, ["image"] + [t.name for t in inits], [out_name], name=node_name, **attrs)
    return model_of([node], inits, outputs=[helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)])


# ---- the cases -------------------------------------------------------------------


def cases(work_dir):
    base = tiny_model()
    base_bytes = base.SerializeToString()
    out = [Case("control_intact_model", model=base, succeed=True, exit_code=0)]

    # Truncations: inside the header, inside the graph, inside the last field.
    n = len(base_bytes)
    for cut in sorted({1, 2, 8, n // 4, n // 2, (3 * n) // 4, n - 1}):
        data = base_bytes[:cut]
        try:
            onnx.ModelProto().ParseFromString(data)
            # A cut on a field boundary is a well-formed (incomplete) message:
            # the engine must still refuse it, for whatever it lacks.
            expect = []
        except Exception:
            expect = [PARSE_WORDS]
        out.append(Case(f"truncated_at_{cut}_of_{n}", raw=data, expect=expect))

    r = np.random.default_rng(99)
    out.append(Case("random_bytes_4k", raw=r.integers(0, 256, 4096, dtype=np.uint8).tobytes(), expect=[]))
    out.append(Case("random_bytes_1m", raw=r.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes(), expect=[]))
    # Bytes that start like a ModelProto (field 7, graph, length-delimited)
    # and claim a huge length.
    out.append(Case("graph_length_lies", raw=bytes([0x08, 0x08, 0x3a, 0xff, 0xff, 0xff, 0xff, 0x07]) + b"\x00" * 32,
                    expect=[PARSE_WORDS]))
    out.append(Case("text_file", raw=b"this is not an onnx model\n" * 10, expect=[]))
    out.append(Case("empty_file", raw=b"", expect=[r"empty|graph|pars|invalid"]))
    out.append(Case("missing_file", model_path=os.path.join(work_dir, "does-not-exist.onnx"),
                    expect=[r"does-not-exist\.onnx|no such file"], exit_code=None))
    out.append(Case("directory_as_model", model_path=work_dir, expect=[r"director|read|is a dir|invalid"],
                    exit_code=None))
    no_graph = onnx.ModelProto()
    no_graph.ir_version = 8
    no_graph.opset_import.extend([helper.make_opsetid("", OPSET)])
    out.append(Case("model_without_graph", model=no_graph, expect=[r"graph"]))

    # Unsupported operators: the message names op type, node and opset.
    foo = helper.make_node("FooBar", ["image"], ["logits"], name="foo_node")
    out.append(Case("unsupported_op", model=model_of([foo]), expect=["FooBar", "foo_node", str(OPSET)]))
    bar = helper.make_node("Bar", ["image"], ["logits"], name="bar_node", domain="com.example")
    out.append(Case("unsupported_domain", model=model_of([bar], opsets=[helper.make_opsetid("", OPSET),
                                                                         helper.make_opsetid("com.example", 1)]),
                    expect=["Bar", "bar_node"]))

    # Wrong dtypes.
    w64 = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.int64), "w_int64")
    out.append(Case("conv_int64_weights", model=single_op_model("Conv", [w64], "conv_int64", kernel_shape=[3, 3]),
                    expect=[r"conv", r"int64|dtype|type"], exit_code=None))
    s = helper.make_tensor("str_tensor", TensorProto.STRING, [2], [b"a", b"b"])
    out.append(Case("string_initializer", model=single_op_model("Add", [s], "add_string"),
                    expect=[r"string"]))
    img_int = helper.make_tensor_value_info("image", TensorProto.INT64, [1, 3, 16, 16])
    nodes, inits = tiny_graph_parts(rng())
    out.append(Case("int64_model_input_into_conv", model=model_of(nodes, inits, inputs=[img_int]),
                    inputs={"image": np.ones((1, 3, 16, 16), np.int64)},
                    expect=[r"conv|image", r"int64|dtype|type"], exit_code=None))

    # Absurd initializers.
    out.append(Case("dims_2_pow_40_little_data",
                    model=replace_init(base, "conv.weight",
                                       raw_tensor("conv.weight", TensorProto.FLOAT, [1 << 20, 1 << 20], b"\0" * 16)),
                    expect=[r"conv\.weight"]))
    out.append(Case("dims_product_overflows",
                    model=replace_init(base, "conv.weight",
                                       raw_tensor("conv.weight", TensorProto.FLOAT, [1 << 40, 1 << 40, 1 << 40],
                                                  b"\0" * 16)),
                    expect=[r"conv\.weight"]))
    out.append(Case("negative_dims",
                    model=replace_init(base, "conv.weight",
                                       raw_tensor("conv.weight", TensorProto.FLOAT, [-8, 3, 3, 3], b"\0" * 16)),
                    expect=[r"conv\.weight"]))
    out.append(Case("too_many_dims",
                    model=replace_init(base, "conv.weight",
                                       raw_tensor("conv.weight", TensorProto.FLOAT, [1] * 40, b"\0" * 4)),
                    expect=[r"conv\.weight"]))
    out.append(Case("raw_data_shorter_than_dims",
                    model=replace_init(base, "conv.weight",
                                       raw_tensor("conv.weight", TensorProto.FLOAT, [8, 3, 3, 3], b"\0" * 100)),
                    expect=[r"conv\.weight"]))
    out.append(Case("raw_data_longer_than_dims",
                    model=replace_init(base, "conv.weight",
                                       raw_tensor("conv.weight", TensorProto.FLOAT, [8, 3, 3, 3], b"\0" * 1000)),
                    expect=[r"conv\.weight"]))
    short_bias = TensorProto()
    short_bias.name, short_bias.data_type = "conv.bias", TensorProto.FLOAT
    short_bias.dims.append(8)
    short_bias.float_data.extend([1.0] * 5)
    out.append(Case("float_data_count_mismatch", model=replace_init(base, "conv.bias", short_bias),
                    expect=[r"conv\.bias"]))
    undefined_type = TensorProto()
    undefined_type.CopyFrom(numpy_helper.from_array(np.zeros(8, np.float32), "bn.bias"))
    undefined_type.data_type = 0
    out.append(Case("undefined_dtype_initializer", model=replace_init(base, "bn.bias", undefined_type),
                    expect=[r"bn\.bias"]))

    ext = TensorProto()
    ext.CopyFrom(numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "conv.weight"))
    ext.ClearField("raw_data")
    ext.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", str(8 * 27 * 4))):
        entry = ext.external_data.add()
        entry.key, entry.value = k, v
    with open(os.path.join(work_dir, "weights.bin"), "wb") as f:
        f.write(b"\0" * (8 * 27 * 4))  # present, so a refusal is about external data itself
    out.append(Case("external_data_initializer", model=replace_init(base, "conv.weight", ext),
                    expect=[r"external"]))

    # Broken graphs.
    cyc = [helper.make_node("Add", ["image", "b_out"], ["a_out"], name="cycle_a"),
           helper.make_node("Relu", ["a_out"], ["b_out"], name="cycle_b"),
           helper.make_node("Relu", ["a_out"], ["logits"], name="tail")]
    out.append(Case("cyclic_graph", model=model_of(cyc), expect=[r"cycl|topolog"]))
    self_loop = [helper.make_node("Add", ["image", "loop"], ["loop"], name="self_loop"),
                 helper.make_node("Relu", ["loop"], ["logits"], name="tail")]
    out.append(Case("node_consumes_own_output", model=model_of(self_loop), expect=[r"cycl|topolog|loop"]))
    ghost = [helper.make_node("Add", ["image", "ghost_tensor"], ["logits"], name="haunted")]
    out.append(Case("undefined_node_input", model=model_of(ghost), expect=["ghost_tensor"]))
    out.append(Case("undefined_graph_output", model=model_of([helper.make_node("Relu", ["image"], ["r"], name="r")],
                                                             outputs=[helper.make_tensor_value_info(
                                                                 "nowhere_out", TensorProto.FLOAT, None)]),
                    expect=["nowhere_out"]))
    dup = [helper.make_node("Relu", ["image"], ["dup_tensor"], name="first"),
           helper.make_node("Sigmoid", ["image"], ["dup_tensor"], name="second"),
           helper.make_node("Relu", ["dup_tensor"], ["logits"], name="tail")]
    out.append(Case("duplicate_node_outputs", model=model_of(dup), expect=[r"dup_tensor|duplicate"]))
    shadow = [helper.make_node("Relu", ["image"], ["image"], name="shadow"),
              helper.make_node("Relu", ["image"], ["logits"], name="tail")]
    out.append(Case("node_output_shadows_graph_input", model=model_of(shadow), expect=[r"image|duplicate"]))
    nodes, inits = tiny_graph_parts(rng())
    inits.append(numpy_helper.from_array(np.zeros(8, np.float32), "conv.bias"))
    out.append(Case("duplicate_initializer", model=model_of(nodes, inits), expect=[r"conv\.bias|duplicate"]))

    # Bad attributes, dtypes and shapes.  The engine may catch these at load or
    # when it infers shapes for the given input, so any non-zero exit will do.
    w = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    out.append(Case("conv_group_zero", model=single_op_model("Conv", [w], "conv_g0", kernel_shape=[3, 3], group=0),
                    expect=[r"conv_g0|group"], exit_code=None))
    out.append(Case("conv_stride_zero", model=single_op_model("Conv", [w], "conv_s0", kernel_shape=[3, 3],
                                                              strides=[0, 0]),
                    expect=[r"conv_s0|stride"], exit_code=None))
    out.append(Case("conv_kernel_larger_than_input",
                    model=single_op_model("Conv", [numpy_helper.from_array(np.ones((8, 3, 40, 40), np.float32), "w")],
                                          "conv_big"),
                    expect=[r"conv_big"], exit_code=None))
    out.append(Case("conv_channel_mismatch",
                    model=single_op_model("Conv", [numpy_helper.from_array(np.ones((8, 5, 3, 3), np.float32), "w")],
                                          "conv_ch"),
                    expect=[r"conv_ch"], exit_code=None))
    out.append(Case("reshape_wrong_count",
                    model=single_op_model("Reshape", [numpy_helper.from_array(np.array([7, 7], np.int64), "shape")],
                                          "reshape_bad"),
                    expect=[r"reshape_bad"], exit_code=None))
    out.append(Case("gather_index_out_of_range",
                    model=single_op_model("Gather", [numpy_helper.from_array(np.array([100], np.int64), "idx")],
                                          "gather_oob", axis=1),
                    expect=[r"gather_oob", r"range|bound|index|100"], exit_code=None))
    out.append(Case("matmul_shape_mismatch",
                    model=single_op_model("MatMul", [numpy_helper.from_array(np.ones((5, 4), np.float32), "m")],
                                          "matmul_bad"),
                    expect=[r"matmul_bad"], exit_code=None))

    # Bad inputs for a good model.
    out.append(Case("input_wrong_rank", model=base, inputs={"image": np.ones((3, 16, 16), np.float32)},
                    expect=[r"image|conv"], exit_code=None))
    out.append(Case("input_missing", model=base, inputs={}, expect=[r"image"], exit_code=None))
    out.append(Case("input_unknown_name", model=base,
                    inputs={"image": np.ones((1, 3, 16, 16), np.float32), "bogus_name": np.ones(1, np.float32)},
                    expect=[r"bogus_name"], exit_code=None))
    good = np.ones((1, 3, 16, 16), np.float32)
    npy = _npy_bytes(good)
    out.append(Case("input_npy_truncated", model=base, inputs={"image": npy[: len(npy) // 2]},
                    expect=[r"image|\.npy"], exit_code=None))
    out.append(Case("input_npy_garbage", model=base, inputs={"image": b"\x93NUMPY garbage"},
                    expect=[r"image|\.npy"], exit_code=None))
    return out


def _npy_bytes(a):
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


# ---- running -----------------------------------------------------------------


def run_case(case, args):
    case_dir = os.path.join(args.work_dir, case.name)
    shutil.rmtree(case_dir, ignore_errors=True)
    os.makedirs(case_dir)
    if case.model_path is not None:
        model_path = case.model_path
    else:
        model_path = os.path.join(case_dir, "model.onnx")
        with open(model_path, "wb") as f:
            f.write(case.raw if case.raw is not None else case.model.SerializeToString())
    inputs = case.inputs if case.inputs is not None else {"image": np.ones((1, 3, 16, 16), np.float32)}
    cmd = [args.maskd, "infer", model_path]
    for name, value in inputs.items():
        path = os.path.join(case_dir, f"in_{name}.npy")
        with open(path, "wb") as f:
            f.write(value if isinstance(value, bytes) else _npy_bytes(value))
        cmd += ["--input", f"{name}={path}"]
    cmd += ["--output-dir", os.path.join(case_dir, "out"), "--threads", "2"]

    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, f"no answer within {TIMEOUT_S} s", cmd, ""
    stderr = proc.stderr
    rc = proc.returncode
    if rc < 0:
        return False, f"killed by signal {-rc}", cmd, stderr
    crash = [m for m in CRASH_MARKS if m in stderr]
    if crash:
        return False, f"crash report in stderr ({crash[0]})", cmd, stderr
    if case.succeed:
        if rc != 0:
            return False, f"the intact model failed (exit {rc})", cmd, stderr
        return True, "ran", cmd, stderr
    if rc == 0:
        return False, "exited 0: the bad input was accepted", cmd, stderr
    if case.exit_code is not None and rc != case.exit_code:
        return False, f"exit code {rc}, expected {case.exit_code}", cmd, stderr
    messages = [line for line in stderr.splitlines() if line.startswith("maskd: ")]
    if not messages:
        return False, f"exit {rc} but no 'maskd: ...' line on stderr", cmd, stderr
    text = "\n".join(messages)
    missing = [e for e in case.expect if not re.search(e, text, re.IGNORECASE)]
    if missing:
        return False, f"message does not mention {missing}", cmd, stderr
    return True, messages[0], cmd, stderr


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("patterns", nargs="*", help="run only cases matching these shell patterns")
    parser.add_argument("--maskd", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("-v", "--verbose", action="store_true", help="print every case's message")
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    args.work_dir = os.path.abspath(args.work_dir)

    passed = failed = 0
    for case in cases(args.work_dir):
        if args.patterns and not any(fnmatch.fnmatch(case.name, p) for p in args.patterns):
            continue
        ok, why, cmd, stderr = run_case(case, args)
        if ok:
            passed += 1
            if args.verbose:
                print(f"PASS {case.name}: {why}")
        else:
            failed += 1
            print(f"FAIL {case.name}: {why}")
            print("     command: " + " ".join(cmd))
            for line in stderr.strip().splitlines()[:20]:
                print("     | " + line)
    print(f"hostile: {passed} passed, {failed} failed")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
