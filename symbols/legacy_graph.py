"""What an insightface checkpoint is: its family from the tensor names, and facts read from its symbol file.

    kind = family(read_params("old/model", 0))          # "iresnet", "mobilefacenet" or ""
    renames, norms = graph_facts(read_symbol("old/model"))

Which family: tensors `stage{i}_unit{j}_conv1_weight` make an IResNet (fresnet.py), `conv_1_conv2d_weight`
a MobileFaceNet (fmobilefacenet.py: insightface's MXNet flavour when `pre_fc1` has a bias, as in its
"y1" models; arcface_torch's flavour, as save_backbone writes it, when not). The symbol file, when
present, is read with `mx.sym.load`, which upgrades JSON saved by old MXNet versions (0.8 to 1.x:
node attributes under `attr` or `attrs`, variables added where missing); from it come

- variable names that differ from `<node>_<input>` (insightface's April 2018 MobileFaceNet calls
  pre_fc1's weight `fc1_weight`),
- every BatchNorm's eps, MXNet's default 1e-3 where the symbol passes none (fmobilefacenet's
  convolutions), and fix_gamma (default True: gamma is then 1, whatever the file holds).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import mxnet as mx
from mxnet.gluon import nn

from pfc_mx.errors import ModelError, first_line
from symbols.common import MXNET_DEFAULT_EPS, Backbone, NamedBatchNorm, blocks
from symbols.symbol_files import bn_fix_gamma

log = logging.getLogger(__name__)

# the inputs of the operators whose weights we map, in MXNet's order (input 0 is the data)
INPUTS = {"Convolution": ("data", "weight", "bias"), "FullyConnected": ("data", "weight", "bias"),
          "BatchNorm": ("data", "gamma", "beta", "moving_mean", "moving_var"), "LeakyReLU": ("data", "gamma")}
_MBF_UNIT = re.compile(r"^res_(\d)_block(\d+)_conv_sep_conv2d_weight$")


def read_symbol(prefix: str) -> Optional[Dict[str, Any]]:
    """The graph of prefix-symbol.json in today's JSON form, or None when there is no such file."""
    path = Path(f"{prefix}-symbol.json")
    if not path.is_file():
        return None
    try:
        sym = mx.sym.load(str(path))
    except (mx.base.MXNetError, ValueError, OSError) as e:
        raise ModelError(f"{path}: not an MXNet symbol file: {first_line(e)[:200]}") from None
    return json.loads(sym.tojson())


def graph_facts(graph: Optional[Dict[str, Any]]) -> Tuple[Dict[str, str], Dict[str, Tuple[float, bool]]]:
    """({`<node>_<input>`: variable name where they differ}, {BatchNorm node: (eps, fix_gamma)})."""
    renames: Dict[str, str] = {}
    norms: Dict[str, Tuple[float, bool]] = {}
    for node in (graph or {}).get("nodes", []):
        roles = INPUTS.get(node["op"])
        if roles is None:
            continue
        attrs = node.get("attrs", {})
        for role, (index, _, _) in zip(roles[1:], node["inputs"][1:]):
            source = graph["nodes"][index]
            canonical = f"{node['name']}_{role}"
            if source["op"] == "null" and source["name"] != canonical:
                renames[canonical] = source["name"]
        if node["op"] == "BatchNorm":
            norms[node["name"]] = (float(attrs.get("eps", MXNET_DEFAULT_EPS)), bn_fix_gamma(attrs))
    return renames, norms


def family(tensors: Dict[str, Any]) -> str:
    """'iresnet', 'mobilefacenet' or '' from the tensor names of a checkpoint."""
    if any(re.match(r"^stage\d+_unit\d+_conv1_weight$", n) for n in tensors):
        return "iresnet"
    if "conv_1_conv2d_weight" in tensors:
        return "mobilefacenet"
    return ""


def embedding_weight(tensors: Dict[str, Any], renames: Dict[str, str]) -> str:
    """The name of the embedding layer's (pre_fc1's) weight in a checkpoint: as the symbol names it, or
    `fc1_weight`, insightface's April 2018 MobileFaceNet name, when the file has no symbol saying so."""
    fc = renames.get("pre_fc1_weight", "pre_fc1_weight")
    if fc not in tensors and "fc1_weight" in tensors and len(tensors["fc1_weight"].shape) == 2:
        return "fc1_weight"
    return fc


def infer_mobilefacenet_spec(tensors: Dict[str, Any], renames: Dict[str, str], source: str) -> Dict[str, Any]:
    """MobileFaceNet constructor arguments (blocks, scale, embedding_size, insightface_mxnet) of a checkpoint."""
    fc = embedding_weight(tensors, renames)
    if fc not in tensors or "conv_6dw7_7_conv2d_weight" not in tensors:
        raise ModelError(f"{source}: not an insightface MobileFaceNet checkpoint "
                         f"(no pre_fc1 weight or conv_6dw7_7_conv2d_weight tensor)")
    blocks = {2: 1, 3: 0, 4: 0, 5: 0}
    for name in tensors:
        m = _MBF_UNIT.match(name)
        if m:
            stage, i = int(m.group(1)), int(m.group(2))
            blocks[stage] = max(blocks[stage], i + 1)
    if min(blocks.values()) < 1:
        raise ModelError(f"{source}: MobileFaceNet without res_3/res_4/res_5 units; not a layout we know")
    bias = renames.get("pre_fc1_bias", "pre_fc1_bias")
    return dict(blocks=tuple(blocks[s] for s in (2, 3, 4, 5)),
                scale=int(tensors["conv_1_conv2d_weight"].shape[0]) // 64,
                embedding_size=int(tensors[fc].shape[0]), insightface_mxnet=bias in tensors)


def match_batch_norms(net: Backbone, norms: Dict[str, Tuple[float, bool]]) -> int:
    """Give net's BatchNorms the eps of the file's nodes of the same name, and gamma 1 where the file
    fixes it; returns how many eps changed. Call before the first hybridized forward."""
    changed = 0
    for bn in (b for b in blocks(net) if isinstance(b, nn.BatchNorm)):
        node = bn._node if isinstance(bn, NamedBatchNorm) else bn.prefix.rstrip("_")
        node = node if node in norms else node + "_bn"      # ours: fc1_bn, flattened by fc1
        if node not in norms:
            continue
        eps, fixed = norms[node]
        if abs(bn._kwargs["eps"] - eps) > 1e-12:
            bn._kwargs["eps"] = eps
            changed += 1
        if fixed and not bn._kwargs["fix_gamma"]:
            bn.gamma.set_data(mx.nd.ones(bn.gamma.shape, dtype=bn.gamma.dtype))
    return changed
