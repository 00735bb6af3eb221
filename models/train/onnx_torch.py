"""Run the shipped shapes ONNX graphs with torch ops, so the reference pipelines
(train_seg.predict, train_det.infer) can run from the committed .onnx files alone: Debian has
no onnxruntime, and onnx 1.12 has no reference evaluator.

Covers exactly the operators our exports use; anything else raises.

    g = OnnxGraph("models/shapes-det-stage1.onnx")
    features, rpn_logits, rpn_deltas = g(x)            # torch tensors in, torch tensors out
"""
import math

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv_pads(a, nd=2):
    pads = list(a.get("pads", [0] * 2 * nd))
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NotImplementedError("auto_pad")
    if pads[:nd] != pads[nd:]:
        raise NotImplementedError("asymmetric pads")
    return pads[:nd]


def _run(op, a, x):
    if op == "Conv":
        w, b = x[1], (x[2] if len(x) > 2 else None)
        return F.conv2d(x[0], w, b, a.get("strides", [1, 1]), _conv_pads(a), a.get("dilations", [1, 1]),
                        a.get("group", 1))
    if op == "ConvTranspose":
        w, b = x[1], (x[2] if len(x) > 2 else None)
        return F.conv_transpose2d(x[0], w, b, a.get("strides", [1, 1]), _conv_pads(a),
                                  a.get("output_padding", [0, 0]), a.get("group", 1), a.get("dilations", [1, 1]))
    if op == "Relu":
        return F.relu(x[0])
    if op == "Sigmoid":
        return torch.sigmoid(x[0])
    if op == "Add":
        return x[0] + x[1]
    if op == "Mul":
        return x[0] * x[1]
    if op == "Concat":
        return torch.cat(x, a["axis"])
    if op == "Shape":
        return torch.tensor(x[0].shape, dtype=torch.int64)
    if op == "Reshape":
        shape = [int(v) for v in x[1]]
        shape = [x[0].shape[i] if v == 0 else v for i, v in enumerate(shape)]
        return x[0].reshape(shape)
    if op == "Transpose":
        return x[0].permute(*a["perm"])
    if op == "Flatten":
        ax = a.get("axis", 1)
        return x[0].reshape(int(np.prod(x[0].shape[:ax])), -1)
    if op == "Gemm":
        A, B = x[0], x[1]
        if a.get("transA", 0):
            A = A.t()
        if a.get("transB", 0):
            B = B.t()
        y = a.get("alpha", 1.0) * (A @ B)
        if len(x) > 2:
            y = y + a.get("beta", 1.0) * x[2]
        return y
    if op == "GlobalAveragePool":
        return x[0].mean((2, 3), keepdim=True)
    if op == "AveragePool":
        if any(a.get("pads", [0])):
            raise NotImplementedError("AveragePool pads")
        return F.avg_pool2d(x[0], a["kernel_shape"], a.get("strides", a["kernel_shape"]))
    if op == "InstanceNormalization":
        return F.instance_norm(x[0], weight=x[1], bias=x[2], eps=a.get("epsilon", 1e-5))
    if op == "DepthToSpace":
        if a.get("mode", b"DCR") not in (b"CRD", "CRD"):
            raise NotImplementedError("DepthToSpace DCR")
        return F.pixel_shuffle(x[0], a["blocksize"])
    if op == "Resize":
        # x = [X, roi, scales, sizes] with omitted inputs as None; what torch's exporter writes
        # for F.interpolate(..., mode="bilinear", align_corners=False)
        mode, ctm = a.get("mode", b"nearest"), a.get("coordinate_transformation_mode", b"half_pixel")
        if mode not in (b"linear", "linear") or ctm not in (b"half_pixel", "half_pixel", b"pytorch_half_pixel",
                                                            "pytorch_half_pixel"):
            raise NotImplementedError("Resize mode %s / %s" % (mode, ctm))
        scales = x[2] if len(x) > 2 and x[2] is not None and x[2].numel() else None
        if scales is not None:
            if [float(v) for v in scales[:2]] != [1.0, 1.0]:
                raise NotImplementedError("Resize over N or C")
            size = [int(math.floor(x[0].shape[2 + i] * float(scales[2 + i]))) for i in range(2)]
        else:
            size = [int(v) for v in x[3][2:]]
        return F.interpolate(x[0], size=size, mode="bilinear", align_corners=False)
    raise NotImplementedError("op %s" % op)


class OnnxGraph:
    def __init__(self, path):
        self.model = onnx.load(path)
        g = self.model.graph
        self.consts = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in self.consts]
        self.outputs = [o.name for o in g.output]
        self.nodes = list(g.node)

    @torch.no_grad()
    def __call__(self, *args):
        env = dict(self.consts)
        env.update(zip(self.inputs, args))
        for n in self.nodes:
            a = _attrs(n)
            if n.op_type == "Constant":
                env[n.output[0]] = torch.from_numpy(numpy_helper.to_array(a["value"]).copy())
                continue
            ins = [env[i] if i else None for i in n.input]   # an omitted optional input stays in place
            env[n.output[0]] = _run(n.op_type, a, ins)
        outs = [env[o] for o in self.outputs]
        return outs[0] if len(outs) == 1 else tuple(outs)
