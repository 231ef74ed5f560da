"""Load a face-embedding model for the tools: our checkpoint, a legacy MXNet model, or ONNX.

    forward = load_embedder("runs/demo")            # run dir, checkpoints/, step dir or `latest`
    forward = load_embedder("old/model,0")          # insightface prefix,epoch (or old/model-0000.params)
    forward = load_embedder("model.onnx")           # onnxruntime
    emb = forward(images)                           # (B, 3, 112, 112) raw RGB, uint8 or float -> (B, D) np.float32

Our checkpoints are found as pfc_mx.checkpoint lays them out (a step folder holds
`backbone-symbol.json` + `backbone-0000.params`; `latest` names the newest). The embedding is
the symbol's `fc1_output` when present (legacy models), else its only output
(symbols.symbol_files.load_symbol_params).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import mxnet as mx
import numpy as np

from pfc_mx import checkpoint
from pfc_mx.errors import CheckpointError, ModelError
from symbols.symbol_files import batch_norms_on_4d, load_symbol_params

log = logging.getLogger(__name__)

_PARAMS_FILE = re.compile(r"^(.*)-(\d{4})\.params$")

Embedder = Callable[[Any], np.ndarray]


def resolve_checkpoint(source: "str | Path") -> Tuple[str, int]:
    """(prefix, epoch) of an MXNet model given as `prefix,epoch`, `prefix-NNNN.params`, or one of our
    checkpoints: a step folder, a checkpoints folder or run folder, or `latest` (checkpoint.resolve)."""
    text = str(source)
    if "," in text:
        prefix, _, epoch_text = text.rpartition(",")
        try:
            epoch = int(epoch_text)
        except ValueError:
            raise ModelError(f"{text}: expected prefix,epoch with an integer epoch") from None
        return _checked(prefix, epoch, text)
    path = Path(text)
    m = _PARAMS_FILE.match(path.name)
    if m and path.is_file():
        return _checked(str(path.parent / m.group(1)), int(m.group(2)), text)
    if path.is_dir() or (path.is_file() and path.name == checkpoint.LATEST):
        try:
            folder = checkpoint.resolve(path)
        except CheckpointError as e:
            raise ModelError(str(e)) from None
        return _checked(str(folder / checkpoint.BACKBONE_PREFIX), checkpoint.BACKBONE_EPOCH, text)
    raise ModelError(f"{text}: no such model (expected a checkpoint directory, prefix,epoch or a .onnx file)")


def _checked(prefix: str, epoch: int, source: str) -> Tuple[str, int]:
    for path in (f"{prefix}-symbol.json", f"{prefix}-{epoch:04d}.params"):
        if not Path(path).is_file():
            raise ModelError(f"{source}: {path} not found")
    return prefix, epoch


def default_context() -> mx.Context:
    return mx.gpu(0) if mx.context.num_gpus() > 0 else mx.cpu()


def mxnet_embedder(prefix: str, epoch: int, ctx: Optional[mx.Context] = None) -> Embedder:
    """forward(images (B, 3, H, W) raw RGB) -> (B, D) float32 of an MXNet checkpoint (a SymbolBlock)."""
    ctx = ctx or default_context()
    sym, data_name, params = load_symbol_params(prefix, epoch)
    sym = batch_norms_on_4d(sym, data_name)
    net = mx.gluon.SymbolBlock(sym, mx.sym.var(data_name, dtype="float32"))
    net.collect_params().load_dict(params, ctx=ctx)
    net.hybridize()

    def forward(x: Any) -> np.ndarray:
        x = x if isinstance(x, mx.nd.NDArray) else mx.nd.array(np.asarray(x), dtype="float32")
        return net(x.astype("float32").as_in_context(ctx)).asnumpy().astype(np.float32)
    return forward


def onnx_takes_raw_pixels(model: Any) -> bool:
    """insightface's rule (model_zoo/arcface_onnx.py): a node named Sub*/_minus* and one named
    Mul*/_mul* among the first eight mean the model normalises its own raw 0..255 input."""
    names = [node.name for node in model.graph.node[:8]]
    return (any(n.startswith(("Sub", "_minus")) for n in names)
            and any(n.startswith(("Mul", "_mul")) for n in names))


def onnx_session(path: "str | Path") -> Any:
    """An onnxruntime session on the best available provider; ModelError if the file is not ONNX."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise ModelError(f"{path}: no such ONNX file")
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ModelError(f"{path}: onnxruntime cannot load it: {str(e).splitlines()[0]}") from None


def onnx_embedder(path: "str | Path") -> Embedder:
    """forward(images (B, 3, H, W) raw RGB) -> (B, D) float32 of an ONNX model.

    Models without the Sub/Mul head (insightface's arcface_torch exports) get (x − 127.5) / 127.5
    here, as insightface's ArcFaceONNX does; models with a fixed batch run one image at a time.
    """
    import onnx

    session = onnx_session(path)
    raw = onnx_takes_raw_pixels(onnx.load(str(path), load_external_data=False))
    first = session.get_inputs()[0]
    fixed_batch = isinstance(first.shape[0], int)

    def forward(x: Any) -> np.ndarray:
        x = x.asnumpy() if isinstance(x, mx.nd.NDArray) else np.asarray(x)
        x = x.astype(np.float32)
        if not raw:
            x = (x - 127.5) / 127.5
        chunks = [x[i:i + 1] for i in range(len(x))] if fixed_batch else [x]
        out = [session.run(None, {first.name: c})[0] for c in chunks]
        return np.concatenate(out, axis=0).astype(np.float32)
    return forward


def load_embedder(source: "str | Path", ctx: Optional[mx.Context] = None) -> Embedder:
    """forward(images) -> (N, D) np.float32 for a `.onnx` file or any MXNet source of resolve_checkpoint."""
    if str(source).lower().endswith(".onnx"):
        return onnx_embedder(source)
    prefix, epoch = resolve_checkpoint(source)
    return mxnet_embedder(prefix, epoch, ctx)
