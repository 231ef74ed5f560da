"""Import any insightface recognition checkpoint: our Gluon backbone when its family is known, else a SymbolBlock.

    net = import_legacy("old/model-r100-ii/model", 0)   # IResNet or MobileFaceNet: our Gluon backbone
    net = import_legacy("old/other/model", 0)           # any other symbol with fc1 / fc1_output: a SymbolBlock
    emb = net(images)                                   # (B, 3, 112, 112) raw RGB 0..255 -> (B, D)

How a family is recognised and what is read from the symbol file: symbols.legacy_graph.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import mxnet as mx
from mxnet.gluon import HybridBlock

from pfc_mx.errors import ModelError
from symbols.legacy import load_legacy_checkpoint
from symbols.legacy_graph import family, read_symbol
from symbols.symbol_files import EMBEDDING_OUTPUT, batch_norms_on_4d, load_symbol_params, read_params

log = logging.getLogger(__name__)


def import_legacy(prefix: str, epoch: int = 0, ctx: Optional[mx.Context] = None) -> HybridBlock:
    """An insightface checkpoint as our Gluon backbone when its family is known (IResNet, MobileFaceNet;
    see symbols.legacy.load_legacy_checkpoint), else as a SymbolBlock computing its fc1 / fc1_output
    from raw RGB `data` (run, evaluate and export it all the same)."""
    tensors = read_params(prefix, epoch)
    if family(tensors):
        return load_legacy_checkpoint(prefix, epoch, ctx=ctx, tensors=tensors)
    if not Path(f"{prefix}-symbol.json").is_file():
        raise ModelError(f"{prefix}-symbol.json not found (needed for a model that is not an IResNet or "
                         f"MobileFaceNet)")
    graph = read_symbol(prefix) or {}
    outputs = {n["name"] for n in graph["nodes"]} & {"fc1"}
    if not outputs:
        raise ModelError(f"{prefix}-symbol.json: no fc1 node; expected an insightface recognition model "
                         f"whose embedding is {EMBEDDING_OUTPUT}")
    sym, data_name, params = load_symbol_params(prefix, epoch)
    net = mx.gluon.SymbolBlock(batch_norms_on_4d(sym, data_name), mx.sym.var(data_name, dtype="float32"))
    net.collect_params().load_dict(params, ctx=ctx or mx.cpu())
    log.info("%s-%04d.params: no Gluon family; loaded as a SymbolBlock (output %s)", prefix, epoch,
             sym.list_outputs()[0])
    return net
