"""MXNet's plain layout in front of a library operator: one Reshape that converts oneDNN's blocked layout.

    x = plain(F, x)                        # inside hybrid_forward, before F.pfc_prelu(x, alpha)
    bypass(nodes, node)                    # in to_stock: the operator's node reads the Reshape's input again

A library operator (pfc_mx.kernels) reads MXNet's plain (row-major) layout. Fed the blocked
layout in which MXNet's oneDNN convolutions and BatchNorms leave their outputs, MXNet converts the
input inside the operator's call, into memory allocated for that call, and again in its backward
for the same input it keeps. A Reshape to the same shape (shape (-2,): every axis kept) converts it
once, into the graph's planned memory, and the operator and its backward then read that copy: for
iresnet50, batch 32, 2 threads, the step went from 1.15-1.18x to 1.08-1.09x its convolutions,
PReLU from 6.5 to 2.7 % of it, and the peak from 5230 to 4216 MiB (docs/performance.md,
"Layout"). On a plain input the Reshape is a view: it costs nothing.
Exported graphs drop it again (bypass), so saved files are the stock network node for node.
"""
from __future__ import annotations

from typing import Any, Dict, List

NAME = "plain"  # the Reshape node's name within the block's prefix
SHAPE = "(-2,)"


def plain(F, x):
    """x as a plain-layout array of the same shape (a Reshape node `<prefix>plain`)."""
    return F.reshape(x, shape=(-2,), name=NAME)


def _is_plain(node: Dict[str, Any]) -> bool:
    return (node["op"] == "Reshape" and node["name"].endswith(NAME)
            and node.get("attrs", {}).get("shape") == SHAPE)


def bypass(nodes: List[Dict[str, Any]], node: Dict[str, Any]) -> None:
    """node (of a symbol's JSON nodes) reads the input of its first input instead, when that is a
    plain() Reshape; the Reshape is then unreachable, and saving the symbol drops it."""
    first = node["inputs"][0]
    if _is_plain(nodes[first[0]]):
        node["inputs"][0] = nodes[first[0]]["inputs"][0]
