"""Backbone checkpoints in insightface's legacy MXNet format, and the generic save/load of backbones.

    save_legacy_checkpoint(net, "out/model", 0)      # out/model-symbol.json + out/model-0000.params
    sym, arg, aux = mx.model.load_checkpoint("out/model", 0)   # legacy tools: output fc1 (B, D)
    net = load_legacy_checkpoint("old/model", 0)     # an insightface IResNet / MobileFaceNet -> ours
    net = import_legacy("old/model", 0)              # the same, or a SymbolBlock for other models

Name mapping (our Gluon parameter -> legacy tensor, `arg:`/`aux:` prefixed in the .params):
our layer names already are insightface's (`conv0`, `bn0`, `relu0`,
`stage{i}_unit{j}_{bn1,conv1,bn2,relu1,conv2,bn3,conv1sc,sc}`, `bn1`, `pre_fc1`, `fc1`), so
only Gluon's suffixes differ; SUFFIXES lists them. The symbol saved is ours (float32, BN eps
as built, 2e-5 by default) with those names, and its last output is `fc1`.

Which format `save_backbone` writes: the legacy names for IResNet (exactly insightface's) and
MobileFaceNet (insightface fmobilefacenet's layer names; arcface_torch's architecture), and
plain `HybridBlock.export` names for GluonCV backbones. Both are `prefix-symbol.json` +
`prefix-0000.params` that `mx.model.load_checkpoint` and `gluon.SymbolBlock.imports` read.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import mxnet as mx
from mxnet.gluon import nn

from pfc_mx.errors import ModelError
from symbols.common import Backbone, blocks
from symbols.iresnet import SPECS, IResNet
from symbols.legacy_graph import (embedding_weight, family, graph_facts, infer_mobilefacenet_spec, match_batch_norms,
                                   read_symbol)
from symbols.mobilefacenet import MobileFaceNet
from symbols.registry import get_model
from symbols.symbol_files import read_params

log = logging.getLogger(__name__)

# (Gluon suffix, legacy suffix): BatchNorm statistics are the auxiliary states `*_moving_mean/var`,
# and the PReLU slope of mx.sym.LeakyReLU(act_type='prelu') is called gamma.
SUFFIXES = (("_running_mean", "_moving_mean"),
            ("_running_var", "_moving_var"),
            ("_alpha", "_gamma"))
LEGACY_FAMILIES = (IResNet, MobileFaceNet)
_UNIT = re.compile(r"^stage(\d+)_unit(\d+)_conv1_weight$")


def legacy_names(net: Backbone) -> Dict[str, str]:
    """{our parameter name: legacy tensor name} for every parameter of net."""
    table = {}
    for name in net.collect_params().keys():
        short = name[len(net.prefix):]
        for ours, theirs in SUFFIXES:
            if short.endswith(ours):
                short = short[:-len(ours)] + theirs
                break
        table[name] = short
    if len(set(table.values())) != len(table):
        raise ModelError(f"{type(net).__name__}: two parameters map to the same legacy name")
    return table


def _float32_symbol(net: Backbone) -> Tuple[mx.sym.Symbol, Backbone]:
    """The float32 graph of net (input `data`) and the float32 network it belongs to."""
    twin = type(net)(**{**net.config, "fp16": False}) if net.fp16 else net
    return twin(mx.sym.var("data")), twin


def _rename(sym: mx.sym.Symbol, table: Dict[str, str]) -> mx.sym.Symbol:
    """sym with its variables renamed by table and its `X_fwd` nodes called `X` (legacy look)."""
    graph = json.loads(sym.tojson())
    for node in graph["nodes"]:
        if node["op"] == "null":
            node["name"] = table.get(node["name"], node["name"])
        elif node["name"].endswith("_fwd"):
            node["name"] = node["name"][:-len("_fwd")]
    return mx.sym.load_json(json.dumps(graph))


def legacy_symbol(net: Backbone) -> mx.sym.Symbol:
    """net's float32 graph (input `data`, output `fc1`) with its variables under the legacy names."""
    return _rename(_float32_symbol(net)[0], legacy_names(net))


def _write(net: Backbone, prefix: str, epoch: int, table: Optional[Dict[str, str]]) -> None:
    """Write prefix-symbol.json + prefix-%04d.params (float32), names mapped by table if given."""
    sym, twin = _float32_symbol(net)
    names = table or {name: name for name in net.collect_params().keys()}
    if table:
        sym = _rename(sym, table)
    args, auxs = set(sym.list_arguments()), set(sym.list_auxiliary_states())
    arrays = {}
    for (name, p), twin_name in zip(net.collect_params().items(), twin.collect_params().keys()):
        if name != twin_name:
            raise ModelError(f"{type(net).__name__}: parameter names differ between fp16 and float32 builds")
        try:
            data = p.data(p.list_ctx()[0]).as_in_context(mx.cpu()).astype("float32")
        except RuntimeError:         # not initialised, or shapes still deferred
            raise ModelError(f"cannot save {prefix}: parameter '{name}' is not initialised "
                             f"(initialise the net and run one forward first)") from None
        kind = "arg" if names[name] in args else "aux" if names[name] in auxs else None
        if kind is None:
            raise ModelError(f"cannot save {prefix}: parameter '{name}' is not used by the graph")
        arrays[f"{kind}:{names[name]}"] = data
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    sym.save(f"{prefix}-symbol.json")
    mx.nd.save(f"{prefix}-{epoch:04d}.params", arrays)


def save_legacy_checkpoint(net: Backbone, prefix: str, epoch: int = 0) -> None:
    """Write net as prefix-symbol.json + prefix-%04d.params under the legacy names, in float32.

    `mx.model.load_checkpoint(prefix, epoch)` + `mx.mod.Module` on its symbol (last output
    `fc1`, also `get_internals()['fc1_output']`) reproduce net's eval-mode output.
    """
    if not isinstance(net, Backbone):
        raise ModelError(f"cannot save {type(net).__name__} as a legacy checkpoint: not a symbols backbone")
    _write(net, prefix, epoch, legacy_names(net))


def infer_iresnet_spec(tensors: Dict[str, Any], source: str) -> Tuple[Tuple[int, ...], Tuple[int, ...], int]:
    """(units, channels, embedding_size) of an IResNet checkpoint, from its tensor names and shapes."""
    units: Dict[int, int] = {}
    channels: Dict[int, int] = {}
    for name, array in tensors.items():
        m = _UNIT.match(name)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            units[i] = max(units.get(i, 0), j)
            channels[i] = int(array.shape[0])
    if not units or sorted(units) != list(range(1, len(units) + 1)) or "pre_fc1_weight" not in tensors:
        raise ModelError(f"{source}: not an insightface IResNet or MobileFaceNet checkpoint "
                         f"(no stage{{i}}_unit{{j}}_conv1_weight / conv_1_conv2d_weight / pre_fc1_weight "
                         f"tensors); symbols.import_legacy loads other models as a SymbolBlock")
    stages = sorted(units)
    return (tuple(units[i] for i in stages), tuple(channels[i] for i in stages),
            int(tensors["pre_fc1_weight"].shape[0]))


def assign(net: Backbone, tensors: Dict[str, mx.nd.NDArray], table: Dict[str, str], source: str,
           ctx: Optional[mx.Context] = None) -> None:
    """Set every parameter of net from tensors[table[name]], cast to the parameter's dtype.

    Raises one ModelError naming the first missing or mis-shaped tensor (and how many more).
    The gamma of a fixed-gamma BatchNorm (`fc1`) is set to 1, the value the graph uses
    whatever the file holds, so that exporters that ignore fix_gamma agree.
    """
    problems = []
    for name, p in net.collect_params().items():
        key = table[name]
        if key not in tensors:
            problems.append(f"missing tensor '{key}' (for {name}, shape {p.shape})")
            continue
        shape = tuple(tensors[key].shape)
        if len(shape) != len(p.shape) or any(a not in (0, b) for a, b in zip(p.shape, shape)):
            problems.append(f"tensor '{key}' has shape {shape}, {name} needs {p.shape}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ModelError(f"{source}: {problems[0]}{more}")
    for name, p in net.collect_params().items():
        p._load_init(tensors[table[name]], ctx or mx.cpu(), cast_dtype=True, dtype_source="current")
    for block in blocks(net):
        if isinstance(block, nn.BatchNorm) and block._kwargs["fix_gamma"]:
            block.gamma.set_data(mx.nd.ones(block.gamma.shape, dtype=block.gamma.dtype))
    unused = set(tensors) - set(table.values())
    if unused:
        log.info("%s: ignored %d tensor(s) the backbone does not use, e.g. %s", source, len(unused),
                 sorted(unused)[0])


def load_legacy_checkpoint(prefix: str, epoch: int = 0, net: Optional[Backbone] = None,
                           name: Optional[str] = None, ctx: Optional[mx.Context] = None,
                           tensors: Optional[Dict[str, mx.nd.NDArray]] = None, **model_kw: Any) -> Backbone:
    """Our backbone with the weights of a legacy-named checkpoint prefix-%04d.params.

    net: load into this backbone; else name: `get_model(name, embedding_size=<from the file>,
    **model_kw)`; else the family, depth, widths and embedding size read from the tensor names and
    shapes: an IResNet (the registered name when one matches) or a MobileFaceNet (insightface's
    MXNet flavour `mobilefacenet_mxnet` when pre_fc1 has a bias). Extra tensors (e.g. the
    classifier `fc7_weight`) are ignored. prefix-symbol.json, when present, supplies renamed
    variables and every BatchNorm's eps and fix_gamma (symbols/legacy_graph.py), so that the
    result computes exactly what the file's graph does; without it the names and our eps are used.
    tensors: the file's read_params(prefix, epoch) when the caller has read it already.
    """
    source = f"{prefix}-{epoch:04d}.params"
    tensors = read_params(prefix, epoch) if tensors is None else tensors
    renames, norms = graph_facts(read_symbol(prefix))
    kind = family(tensors)
    if net is None and name is None and kind == "mobilefacenet":
        spec = infer_mobilefacenet_spec(tensors, renames, source)
        model_kw.setdefault("embedding_size", spec.pop("embedding_size"))
        net = MobileFaceNet(**spec, **model_kw)
        log.info("%s: MobileFaceNet %s", source, net.config)
    elif net is None:
        if name is not None:
            fc = embedding_weight(tensors, renames)
            if fc in tensors and "embedding_size" not in model_kw:
                model_kw["embedding_size"] = int(tensors[fc].shape[0])
            net = get_model(name, **model_kw)
        else:
            units, channels, emb = infer_iresnet_spec(tensors, source)
            known = [n for n, spec in SPECS.items() if spec == (units, channels)]
            model_kw.setdefault("embedding_size", emb)
            net = get_model(known[0], **model_kw) if known else IResNet(units, channels, **model_kw)
            log.info("%s: %s, units %s, channels %s, embedding %d", source, known[0] if known else "IResNet",
                     units, channels, emb)
    table = {ours: renames.get(theirs, theirs) for ours, theirs in legacy_names(net).items()}
    if isinstance(net, MobileFaceNet):
        fc, named = embedding_weight(tensors, renames), renames.get("pre_fc1_weight", "pre_fc1_weight")
        table = {ours: fc if theirs == named else theirs for ours, theirs in table.items()}
    assign(net, tensors, table, source, ctx)
    match_batch_norms(net, norms)
    return net


def save_backbone(net: Backbone, prefix: str, epoch: int = 0) -> None:
    """Write net as prefix-symbol.json + prefix-%04d.params: legacy names for IResNet and
    MobileFaceNet, plain Gluon export names otherwise; float32 either way."""
    if not isinstance(net, Backbone):
        raise ModelError(f"cannot save {type(net).__name__}: not a symbols backbone")
    _write(net, prefix, epoch, legacy_names(net) if isinstance(net, LEGACY_FAMILIES) else None)


def load_backbone(prefix: str, name: str, epoch: int = 0, ctx: Optional[mx.Context] = None,
                  **model_kw: Any) -> Backbone:
    """The backbone `get_model(name, **model_kw)` with the weights save_backbone wrote at prefix."""
    net = get_model(name, **model_kw)
    table = (legacy_names(net) if isinstance(net, LEGACY_FAMILIES)
             else {n: n for n in net.collect_params().keys()})
    source = f"{prefix}-{epoch:04d}.params"
    tensors = read_params(prefix, epoch)
    assign(net, tensors, table, source, ctx)
    return net
