"""Float16 version of an exported model: half weights and activations between a float32 Sub/Mul head
and a final Cast back to float32, so callers still feed and read float32."""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pfc_mx.errors import ExportError
from pfc_mx.export.graph import MUL_NAME, SUB_NAME

log = logging.getLogger(__name__)

FP16_MAX = float(np.finfo(np.float16).max)


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model computing in float16 after the float32 Sub/Mul head; input and output stay float32.

    Float initializers become float16 (values beyond ±65504 are clipped, with a warning), Casts
    to float32 inside become Casts to float16, and two Casts are added: after Mul_input_scale and
    before the output.
    """
    model16 = onnx.ModelProto()
    model16.CopyFrom(model)
    graph = model16.graph
    sub, mul = graph.node[0], graph.node[1]
    if (sub.name, mul.name) != (SUB_NAME, MUL_NAME):
        raise ExportError("to_float16 expects a model made by convert() (Sub/Mul head first)")
    head_constants = set(sub.input[1:]) | set(mul.input)
    clipped = 0
    for i, t in enumerate(graph.initializer):
        if t.data_type == TensorProto.FLOAT and t.name not in head_constants:
            a = numpy_helper.to_array(t)
            clipped += int(np.sum(np.abs(a) > FP16_MAX))
            half = np.clip(a, -FP16_MAX, FP16_MAX).astype(np.float16)
            graph.initializer[i].CopyFrom(numpy_helper.from_array(half, t.name))
    if clipped:
        log.warning("fp16: %d weights beyond ±%g were clipped", clipped, FP16_MAX)
    for node in graph.node[2:]:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
            if node.op_type == "Constant" and a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
    for vi in graph.value_info:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    scaled = mul.output[0]
    mul.output[0] = scaled + "_fp32"
    graph.node.insert(2, helper.make_node("Cast", [mul.output[0]], [scaled], name="Cast_to_fp16",
                                          to=TensorProto.FLOAT16))
    out = graph.output[0].name
    for node in graph.node:
        node.output[:] = [o + "_fp16" if o == out else o for o in node.output]
    graph.node.append(helper.make_node("Cast", [out + "_fp16"], [out], name="Cast_to_fp32", to=TensorProto.FLOAT))
    return model16
