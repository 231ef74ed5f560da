"""MXNet symbol -> ONNX graph in insightface's conventions (see pfc_mx.export): MXNet's exporter, then
weights as initializers, opset 13, (N, 3, 112, 112) -> (N, D) shapes, the input normalisation as the
first two nodes Sub_input_mean / Mul_input_scale, per-channel PRelu slopes that broadcast as in MXNet.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from typing import Any, Dict, Iterator, List, Tuple

import mxnet as mx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pfc_mx.data import options as data_options
from pfc_mx.errors import ExportError

OPSET = 13
IR_VERSION = 7
IMAGE_SIZE = (data_options.IMAGE_SIZE, data_options.IMAGE_SIZE)  # (H, W) of the model's input
SUB_NAME, MUL_NAME = "Sub_input_mean", "Mul_input_scale"


# Attributes whose absence MXNet's exporter reads differently from MXNet itself: insightface's
# symbols write FullyConnected without `flatten` (MXNet: True); the exporter took it as False and
# left out the Flatten before Gemm ("GEMM: Dimension mismatch, W: {512,25088} K: 7").
MXNET_DEFAULTS = {"FullyConnected": {"flatten": "True"}}


def explicit_defaults(sym: mx.sym.Symbol) -> mx.sym.Symbol:
    """sym with MXNET_DEFAULTS written into every node that leaves them out (the same graph for MXNet)."""
    graph = json.loads(sym.tojson())
    for node in graph["nodes"]:
        for name, value in MXNET_DEFAULTS.get(node["op"], {}).items():
            node.setdefault("attrs", {}).setdefault(name, value)
    return mx.sym.load_json(json.dumps(graph))


@contextlib.contextmanager
def _quick_mxnet_exporter() -> Iterator[None]:
    """Within: onnx.helper.make_tensor stores float32 tensors as raw bytes; INFO logs are muted.

    MXNet's exporter writes every weight as a list of Python floats (`float_data`), which the
    pure-Python protobuf of this stack (3.20 on Python 3.11) takes minutes to serialise and parse
    for a ResNet; as raw bytes it takes milliseconds. The values are the same.
    """
    original = helper.make_tensor

    def make_tensor(name, data_type, dims, vals, raw=False):
        if not raw and data_type == TensorProto.FLOAT and np.size(vals) > 1:
            return numpy_helper.from_array(np.asarray(vals, dtype=np.float32).reshape(dims), name)
        return original(name, data_type, dims, vals, raw)

    helper.make_tensor = make_tensor
    disabled = logging.root.manager.disable
    logging.disable(logging.INFO)            # the exporter's root-logger chatter about its temporary file
    try:
        yield
    finally:
        helper.make_tensor = original
        logging.disable(disabled)


def convert(sym: mx.sym.Symbol, data_name: str, params: Dict[str, mx.nd.NDArray], dim: int,
            source: Any = "model") -> onnx.ModelProto:
    """MXNet's exporter, then the fixes: initializers out of the inputs, opset 13, (N, 3, 112, 112)
    -> (N, dim) shapes, the normalisation as the first two nodes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "raw.onnx")
        try:
            with _quick_mxnet_exporter():
                mx.onnx.export_model(sym, params, in_shapes=[(1, 3) + IMAGE_SIZE], in_types=[np.float32],
                                     onnx_file_path=path, dynamic=True,
                                     dynamic_input_shapes=[(None, 3) + IMAGE_SIZE])
        except (AttributeError, NotImplementedError, KeyError, TypeError, ValueError, mx.base.MXNetError) as e:
            raise ExportError(f"{source}: MXNet's ONNX exporter failed: {str(e).splitlines()[0]}") from None
        model = onnx.load(path)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    del graph.input[:]
    graph.input.extend(inputs)
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExportError(f"{source}: expected one input and one output, "
                          f"got {len(graph.input)} and {len(graph.output)}")
    _set_shape(graph.input[0], ["N", 3, *IMAGE_SIZE])
    _set_shape(graph.output[0], ["N", dim])
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    _normalisation_first(graph, source)
    _channel_prelu_slopes(model)
    return model


def _channel_prelu_slopes(model: onnx.ModelProto) -> None:
    """Reshape per-channel PRelu slopes (C,) to (C, 1, 1) where the input is (N, C, H, W).

    MXNet's PReLU broadcasts its slope along axis 1; ONNX broadcasts from the last axis.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in
             list(inferred.graph.value_info) + list(inferred.graph.input)
             if vi.type.tensor_type.HasField("shape")}
    initializers = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "PRelu" or node.input[1] not in initializers:
            continue
        slope = initializers[node.input[1]]
        rank = ranks.get(node.input[0], 4)          # unknown: the usual (N, C, H, W)
        if len(slope.dims) == 1 and slope.dims[0] > 1 and rank > 2:
            a = numpy_helper.to_array(slope).reshape((-1,) + (1,) * (rank - 2))
            slope.CopyFrom(numpy_helper.from_array(a, slope.name))


def _set_shape(value_info: onnx.ValueInfoProto, dims: List[Any]) -> None:
    shape = value_info.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        entry = shape.dim.add()
        if isinstance(d, str):
            entry.dim_param = d
        else:
            entry.dim_value = int(d)


def _consumers(graph: onnx.GraphProto, tensor: str) -> List[onnx.NodeProto]:
    return [n for n in graph.node if tensor in n.input]


def _is_noop(node: onnx.NodeProto) -> bool:
    """Identity, or a Cast to float32 (the input already is float32)."""
    if node.op_type == "Identity":
        return True
    return node.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT for a in node.attribute)


def _normalisation_first(graph: onnx.GraphProto, source: Any) -> None:
    """Drop no-op nodes after the input, check that Sub then Mul by constants follow, rename them
    Sub_input_mean / Mul_input_scale and move them to the front of the node list."""
    data = graph.input[0].name
    initializers = {t.name: t for t in graph.initializer}
    while True:
        users = _consumers(graph, data)
        if len(users) != 1 or not _is_noop(users[0]):
            break
        noop = users[0]
        for node in graph.node:
            node.input[:] = [data if i == noop.output[0] else i for i in node.input]
        graph.node.remove(noop)
    users = _consumers(graph, data)
    sub = users[0] if len(users) == 1 and users[0].op_type == "Sub" else None
    mul_users = _consumers(graph, sub.output[0]) if sub is not None else []
    mul = mul_users[0] if len(mul_users) == 1 and mul_users[0].op_type == "Mul" else None
    if (sub is None or mul is None or list(sub.input[:1]) != [data]
            or sub.input[1] not in initializers or not any(i in initializers for i in mul.input)):
        raise ExportError(f"{source}: the graph does not start with the input normalisation "
                          f"(x - mean) * scale; insightface would not know how to feed it")
    if {n.name for n in graph.node} & {SUB_NAME, MUL_NAME}:
        raise ExportError(f"{source}: node names {SUB_NAME}/{MUL_NAME} are already taken")
    sub.name, mul.name = SUB_NAME, MUL_NAME
    rest = [n for n in graph.node if n is not sub and n is not mul]
    head = [onnx.NodeProto(), onnx.NodeProto()]
    head[0].CopyFrom(sub)
    head[1].CopyFrom(mul)
    del graph.node[:]
    graph.node.extend(head + rest)


def normalisation_constants(model: onnx.ModelProto) -> Tuple[float, float]:
    """(mean, scale) read from the Sub_input_mean and Mul_input_scale nodes of an exported model."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    sub, mul = model.graph.node[0], model.graph.node[1]
    mean = values[sub.input[1]]
    scale = values[next(i for i in mul.input if i in values)]
    return float(mean.reshape(-1)[0]), float(scale.reshape(-1)[0])
