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

Here the export itself; graph.py: the conversion and its fixes, fp16.py: the float16 model,
check.py: the onnxruntime checks (parity).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict

import mxnet as mx
import onnx

from pfc_mx.atomic import atomic_path
from pfc_mx.errors import ExportError
from pfc_mx.evaluation.model_loader import mxnet_embedder, resolve_checkpoint
from pfc_mx.export.fp16 import to_float16
from pfc_mx.export.graph import IMAGE_SIZE, OPSET, convert, explicit_defaults, normalisation_constants
from pfc_mx.export.check import MIN_COSINE, check_loads, parity
from symbols.symbol_files import load_symbol_params

__all__ = ["export_onnx", "convert", "explicit_defaults", "to_float16", "parity", "normalisation_constants",
           "MIN_COSINE", "OPSET", "IMAGE_SIZE"]

log = logging.getLogger(__name__)


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
            check_loads(str(tmp), dim, str(out_path))
    report["bytes"] = out_path.stat().st_size
    log.debug("exported %s -> %s (%d bytes)", source, out_path, report["bytes"])
    return report
