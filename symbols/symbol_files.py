"""MXNet checkpoint files (`prefix-symbol.json` + `prefix-NNNN.params`) as arrays and runnable graphs.

    tensors = read_params("old/model", 0)                      # {name: NDArray}, arg:/aux: prefixes dropped
    sym, data_name, params = load_symbol_params("old/model", 0)   # the embedding graph and what it uses
    sym = batch_norms_on_4d(sym, data_name)                    # safe from MXNet 1.9.1's oneDNN BatchNorm crash

Used by the legacy import (symbols.legacy, symbols.legacy_import), evaluation and ONNX export.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

import mxnet as mx

from pfc_mx.data.options import IMAGE_SIZE
from pfc_mx.errors import ModelError

EMBEDDING_OUTPUT = "fc1_output"  # the insightface recognition models' embedding


def read_params(prefix: str, epoch: int = 0) -> Dict[str, mx.nd.NDArray]:
    """{name without arg:/aux:: array} of prefix-%04d.params; ModelError if missing or unreadable."""
    path = f"{prefix}-{epoch:04d}.params"
    if not Path(path).is_file():
        raise ModelError(f"{path}: no such parameter file")
    try:
        saved = mx.nd.load(path)
    except mx.base.MXNetError:
        raise ModelError(f"{path}: not a readable MXNet parameter file") from None
    if not isinstance(saved, dict):
        raise ModelError(f"{path}: holds an unnamed list of arrays, not arg:/aux: tensors")
    return {key.split(":", 1)[1] if key.startswith(("arg:", "aux:")) else key: array
            for key, array in saved.items()}


def bn_fix_gamma(attrs: Dict[str, str]) -> bool:
    """A BatchNorm node's fix_gamma (MXNet's default True: gamma is then 1, whatever the file holds)."""
    return str(attrs.get("fix_gamma", "True")).lower() in ("true", "1")


def load_symbol_params(prefix: str, epoch: int) -> Tuple[mx.sym.Symbol, str, Dict[str, mx.nd.NDArray]]:
    """(embedding symbol, its data input name, {parameter name: array}) of prefix-NNNN.

    Only the parameters the embedding uses are returned; the gamma of every BatchNorm with
    fix_gamma (MXNet's default) is set to one, as MXNet itself treats it, so that exporters
    which read gamma see the same network.
    """
    source = f"{prefix},{epoch}"
    try:
        sym, arg_params, aux_params = mx.model.load_checkpoint(prefix, epoch)
    except (mx.base.MXNetError, ValueError, OSError) as e:
        raise ModelError(f"{source}: cannot load the MXNet checkpoint: {str(e).splitlines()[0]}") from None
    internals = sym.get_internals()
    if EMBEDDING_OUTPUT in internals.list_outputs():
        sym = internals[EMBEDDING_OUTPUT]
    elif len(sym.list_outputs()) != 1:
        raise ModelError(f"{source}: no {EMBEDDING_OUTPUT} and {len(sym.list_outputs())} outputs; "
                         f"cannot tell which is the embedding")
    params = {**arg_params, **aux_params}
    needed = sym.list_arguments() + sym.list_auxiliary_states()
    inputs = [n for n in needed if n not in params]
    if len(inputs) != 1:
        raise ModelError(f"{source}: expected one data input and every parameter present, "
                         f"got unbound inputs {inputs[:5]}")
    used = {n: params[n] for n in needed if n in params}
    nodes = json.loads(sym.tojson())["nodes"]
    for node in nodes:
        if node["op"] == "BatchNorm" and bn_fix_gamma(node.get("attrs", {})):
            gamma = nodes[node["inputs"][1][0]]["name"]
            if gamma in used:
                used[gamma] = mx.nd.ones_like(used[gamma])
    return sym, inputs[0], used


def batch_norms_on_4d(sym: mx.sym.Symbol, data_name: str) -> mx.sym.Symbol:
    """sym with every BatchNorm over a 2-D (N, C) input run on (N, C, 1, 1) (the same arithmetic).

    MXNet 1.9.1's oneDNN BatchNorm kills the process on a 2-D input after a BatchNorm over a conv's
    (N, C, 1, 1) output with the same eps, in any earlier graph of the process (its primitive cache
    ignores the layout; see symbols/mobilefacenet.py). insightface's fc1 is such a 2-D BatchNorm.
    """
    internals = sym.get_internals()
    _, shapes, _ = internals.infer_shape_partial(**{data_name: (1, 3, IMAGE_SIZE, IMAGE_SIZE)})
    ndim = dict(zip(internals.list_outputs(), (len(s) for s in shapes)))
    graph = json.loads(sym.tojson())
    nodes, index = [], {}                       # new node list, old index -> new index
    moved: Dict[int, int] = {}                  # BatchNorm's old index -> index of its Flatten
    for i, node in enumerate(graph["nodes"]):
        node["inputs"] = [[moved.get(e[0], index[e[0]]) if e[1] == 0 else index[e[0]], e[1], e[2]]
                          for e in node["inputs"]]
        if node["op"] == "BatchNorm" and ndim.get(f"{node['name']}_output", 0) == 2:
            nodes.append({"op": "Reshape", "name": node["name"] + "_as4d", "attrs": {"shape": "(0, 0, 1, 1)"},
                          "inputs": [node["inputs"][0]]})
            node["inputs"][0] = [len(nodes) - 1, 0, 0]
            index[i] = len(nodes)
            nodes.append(node)
            nodes.append({"op": "Flatten", "name": node["name"] + "_flat", "inputs": [[index[i], 0, 0]]})
            moved[i] = len(nodes) - 1
            continue
        index[i] = len(nodes)
        nodes.append(node)
    heads = [[moved.get(h[0], index[h[0]]) if h[1] == 0 else index[h[0]], h[1], h[2]] for h in graph["heads"]]
    out = {"nodes": nodes, "arg_nodes": [i for i, n in enumerate(nodes) if n["op"] == "null"], "heads": heads,
           "attrs": graph.get("attrs", {})}
    return mx.sym.load_json(json.dumps(out))
