"""ONNX export of our checkpoints and legacy insightface MXNet models, with an onnxruntime parity check.

    report = export_onnx("runs/demo", "r50.onnx")            # or "old/model,0"; fp16=True for half weights
    print(report["max_abs_diff"], report["min_cosine"])

The exported model follows insightface's recognition models: input `data` (N, 3, 112, 112)
float32 raw RGB 0..255 with a dynamic batch N, its first two nodes `Sub_input_mean` and
`Mul_input_scale` computing (x − 127.5) · 0.0078125 (insightface's ArcFaceONNX then feeds raw
pixels), one output (N, D) float32, weights as initializers (not graph inputs), opset 13
(IR version 7, so older onnxruntime builds load it too).

Legacy insightface symbols leave attributes at MXNet's defaults that MXNet's exporter reads
otherwise (FullyConnected's `flatten`): they are written out first (explicit_defaults). With
check=False the file is still loaded and run once by onnxruntime before it appears.

Parity: MXNet and onnxruntime embed the same random images, once as a batch and once one image
alone (dynamic batch); the export fails with ExportError when the smallest cosine is below
0.99999 (float32) or 0.999 (fp16: float16 weights and activations between a float32 Sub/Mul
head and a final Cast back to float32; measured >= 0.9999995 on random-weight iresnet_tiny,
iresnet50 and mobilefacenet).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import mxnet as mx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pfc_mx.atomic import atomic_path
from pfc_mx.errors import ExportError, first_line
from pfc_mx.evaluation.model_loader import (load_symbol_params, mxnet_embedder, onnx_session,
                                            onnx_takes_raw_pixels, resolve_checkpoint)

log = logging.getLogger(__name__)

OPSET = 13
IR_VERSION = 7
IMAGE_SIZE = (112, 112)
MIN_COSINE = {False: 0.99999, True: 0.999}     # keyed by fp16
SUB_NAME, MUL_NAME = "Sub_input_mean", "Mul_input_scale"
FP16_MAX = float(np.finfo(np.float16).max)


def export_onnx(source: "str | Path", out_path: "str | Path", fp16: bool = False, check: bool = True,
                batch_check: int = 4, seed: int = 0) -> Dict[str, Any]:
    """Export source (see model_loader.resolve_checkpoint) to out_path; return the report dict.

    The file appears only once it is complete and, with check, has passed the parity check.
    """
    prefix, epoch = resolve_checkpoint(source)
    sym, data_name, params = load_symbol_params(prefix, epoch)
    sym = explicit_defaults(sym)
    try:
        _, out_shapes, _ = sym.infer_shape(**{data_name: (1, 3) + IMAGE_SIZE})
    except mx.base.MXNetError as e:
        raise ExportError(f"{source}: the graph does not accept (1, 3, 112, 112) input: "
                          f"{str(e).splitlines()[0]}") from None
    if len(out_shapes[0]) != 2:
        raise ExportError(f"{source}: the embedding output has shape {out_shapes[0]}, expected (1, D)")
    dim = int(out_shapes[0][1])
    model = convert(sym, data_name, params, dim, source)
    if fp16:
        model = to_float16(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{source}: the exported graph is not valid ONNX: {str(e).splitlines()[0]}") from None
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    report: Dict[str, Any] = {"source": str(source), "prefix": prefix, "epoch": epoch, "path": str(out_path),
                              "opset": OPSET, "fp16": fp16, "input": [data_name, "N", 3, *IMAGE_SIZE],
                              "output": [model.graph.output[0].name, "N", dim], "embedding_size": dim}
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
        if check:
            report.update(parity(mxnet_embedder(prefix, epoch, mx.cpu()), str(tmp), batch_check, seed, fp16,
                                 label=str(out_path)))
        else:
            _loads(str(tmp), dim, str(out_path))
    report["bytes"] = out_path.stat().st_size
    log.debug("exported %s -> %s (%d bytes)", source, out_path, report["bytes"])
    return report


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


def _loads(path: str, dim: int, label: str) -> None:
    """ExportError unless onnxruntime loads path and maps one blank image to (1, dim)."""
    try:
        session = onnx_session(path)
        out = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3) + IMAGE_SIZE, np.float32)})[0]
    except Exception as e:  # onnxruntime's own error types, or our ModelError
        raise ExportError(f"{label}: onnxruntime cannot run the exported model: {first_line(e)}") from None
    if out.shape != (1, dim):
        raise ExportError(f"{label}: onnxruntime gives {out.shape} for one image, expected (1, {dim})")


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


def parity(forward_mx: Any, onnx_path: "str | Path", batch: int = 4, seed: int = 0, fp16: bool = False,
           label: str = "") -> Dict[str, Any]:
    """Compare MXNet and onnxruntime on `batch` random images (as one batch, and the first alone).

    Returns {parity_batch, max_abs_diff, min_cosine, min_cosine_required}; ExportError below it
    (messages name `label`, default onnx_path).
    """
    label = label or str(onnx_path)
    rng = np.random.RandomState(seed)
    x = rng.randint(0, 256, size=(max(1, batch), 3) + IMAGE_SIZE).astype(np.float32)
    ref = forward_mx(x)
    if not onnx_takes_raw_pixels(onnx.load(str(onnx_path))):
        raise ExportError(f"{label}: insightface would not detect the Sub/Mul input normalisation")
    try:
        session = onnx_session(onnx_path)
        name = session.get_inputs()[0].name
        got = session.run(None, {name: x})[0]
        single = session.run(None, {name: x[:1]})[0]
    except Exception as e:  # onnxruntime's own error types (e.g. a Gemm shape mismatch), or ModelError
        raise ExportError(f"{label}: onnxruntime cannot run the exported model: {first_line(e)}") from None
    if got.shape != ref.shape or single.shape != ref[:1].shape:
        raise ExportError(f"{label}: onnxruntime gives {got.shape} / {single.shape}, MXNet {ref.shape}")
    a = np.concatenate([ref, ref[:1]]).astype(np.float64)
    b = np.concatenate([got, single]).astype(np.float64)
    cos = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    result = {"parity_batch": int(len(x)), "max_abs_diff": float(np.max(np.abs(a - b))),
              "min_cosine": float(np.min(cos)), "min_cosine_required": MIN_COSINE[fp16]}
    log.debug("parity: max |mxnet - onnxruntime| %.3g, min cosine %.8f", result["max_abs_diff"], result["min_cosine"])
    if not np.isfinite(result["min_cosine"]) or result["min_cosine"] < MIN_COSINE[fp16]:
        raise ExportError(f"{label}: parity check failed: min cosine {result['min_cosine']:.6f} "
                          f"< {MIN_COSINE[fp16]} (max abs diff {result['max_abs_diff']:.3g})")
    return result
