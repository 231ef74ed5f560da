"""A stock-operator PReLU whose slope gradient is right in a planned graph, and its way back to LeakyReLU.

    y = composed(F, x, alpha)          # in symbols.prelu.PReLU: where(x > 0, x, broadcast_mul(x, alpha))
    collapse(nodes, node)              # in symbols.prelu.to_stock: that form as one LeakyReLU('prelu') node

MXNet 1.9.1's LeakyReLU(act_type='prelu') is right when it runs alone (imperative calls), but in a
planned graph (a hybridized block, a SymbolBlock, an executor) its slope gradient can come out
alpha times the right one: its backward may write the input gradient in place over the output
gradient dy (FInplaceOption {0, 0} of _backward_LeakyReLU), and it reduces the slope gradient,
sum(dy · x) over x ≤ 0, after that write, so it reads alpha · dy. Whether the planner shares the
two buffers depends on the graph: on GPUs and without oneDNN it hit every PReLU of IResNet and
MobileFaceNet; on the CPU with oneDNN only those whose dy arrives in MXNet's plain layout (oneDNN
layouts are copied before the operator runs), e.g. MobileFaceNet's conv_1.

So symbols.prelu builds a trained stock PReLU inside a Backbone's graph as composed: where(x > 0,
x, broadcast_mul(x, alpha)), the same output and input gradient bits, the slope gradient reduced
by broadcast_mul's backward, which MXNet does not plan in place. collapse turns the form back
into one LeakyReLU('prelu') node for saved files (symbols.prelu.to_stock), so ONNX export still
writes a PRelu node. Inputs are 4-D (B, C, H, W), as in every backbone here.
"""
from __future__ import annotations

from typing import Any, Dict, List


def composed(F, x, alpha):
    """PReLU of a 4-D x with slopes alpha (C,) from where and broadcast_mul: LeakyReLU's numbers."""
    negative = F.broadcast_mul(x, F.reshape(alpha, shape=(1, -1, 1, 1)), name="neg")
    return F.where(x > 0, x, negative, name="fwd")


def collapse(nodes: List[Dict[str, Any]], node: Dict[str, Any]) -> None:
    """node (of a symbol's JSON nodes), when it is the where of a composed form, becomes one
    LeakyReLU(act_type='prelu') node with the same name, reading x and alpha; the condition,
    product and reshape nodes are then unreachable, and saving the symbol drops them."""
    if node["op"] != "where" or len(node["inputs"]) != 3:
        return
    cond, x, negative = node["inputs"]
    mul = nodes[negative[0]]
    if mul["op"] != "broadcast_mul" or mul["inputs"][0] != x or nodes[cond[0]]["inputs"][0] != x:
        return
    reshape = nodes[mul["inputs"][1][0]]
    if reshape["op"] != "Reshape" or nodes[reshape["inputs"][0][0]]["op"] != "null":
        return
    node.update(op="LeakyReLU", attrs={"act_type": "prelu"}, inputs=[x, reshape["inputs"][0]])
