"""onnxruntime against MXNet on the same images: the check an export must pass before its file appears."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict

import numpy as np
import onnx

from pfc_mx.errors import ExportError, first_line
from pfc_mx.evaluation.model_loader import onnx_session, onnx_takes_raw_pixels
from pfc_mx.export.graph import IMAGE_SIZE

log = logging.getLogger(__name__)

MIN_COSINE = {False: 0.99999, True: 0.999}     # keyed by fp16


def check_loads(path: str, dim: int, label: str) -> None:
    """ExportError unless onnxruntime loads path and maps one blank image to (1, dim)."""
    try:
        session = onnx_session(path)
        out = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3) + IMAGE_SIZE, np.float32)})[0]
    except Exception as e:  # onnxruntime's own error types, or our ModelError
        raise ExportError(f"{label}: onnxruntime cannot run the exported model: {first_line(e)}") from None
    if out.shape != (1, dim):
        raise ExportError(f"{label}: onnxruntime gives {out.shape} for one image, expected (1, {dim})")


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
