"""The backbones' PReLU block: symbols.prelu.PReLU, with a stock-operator graph whose slope gradient is right.

    relu = PReLU(in_channels=64, prefix="relu0_")      # as symbols.prelu.PReLU: parameter relu0_alpha (64,)
    with backbone_graph():                             # what Backbone does while it builds its graph
        sym = relu(mx.sym.var("data"))                 # where(x > 0, x, x · alpha) unless the fused kernel runs

MXNet 1.9.1's LeakyReLU(act_type='prelu') is right when it runs alone (imperative calls), but in a
planned graph (a hybridized block, a SymbolBlock, an executor) its slope gradient can come out
alpha times the right one: its backward may write the input gradient in place over the output
gradient dy (FInplaceOption {0, 0} of _backward_LeakyReLU), and it reduces the slope gradient,
sum(dy · x) over x ≤ 0, after that write, so it reads alpha · dy. Whether the planner shares the
two buffers depends on the graph: on GPUs and without oneDNN it hit every PReLU of IResNet and
MobileFaceNet; on the CPU with oneDNN only those whose dy arrives in MXNet's plain layout (oneDNN
layouts are copied before the operator runs), e.g. MobileFaceNet's conv_1.

So inside a Backbone's graph (backbone_graph), a PReLU whose slope is trained and that does not
get the fused kernel is built as where(x > 0, x, broadcast_mul(x, alpha)): the same output and
input gradient bits, the slope gradient reduced by broadcast_mul's backward, which MXNet does not
plan in place. Frozen slopes keep the one LeakyReLU node (its input gradient is right). Exported
files and every other symbolic call keep LeakyReLU('prelu') (Backbone.export writes its cached
graph through to_stock), so ONNX export still writes a PRelu node. Inputs are 4-D (B, C, H, W), as in every backbone here.
"""
from __future__ import annotations

import contextlib
import json
import threading
from typing import Iterator

import mxnet as mx

from symbols import prelu

_state = threading.local()  # .active: a Backbone is building its hybridized graph


@contextlib.contextmanager
def backbone_graph() -> Iterator[None]:
    """Within: PReLU blocks called on symbols build the training graph's form (see the module docstring)."""
    previous = getattr(_state, "active", False)
    _state.active = True
    try:
        yield
    finally:
        _state.active = previous


def composed(F, x, alpha):
    """PReLU of a 4-D x with slopes alpha (C,) from where and broadcast_mul: LeakyReLU's numbers."""
    negative = F.broadcast_mul(x, F.reshape(alpha, shape=(1, -1, 1, 1)), name="neg")
    return F.where(x > 0, x, negative, name="fwd")


class PReLU(prelu.PReLU):
    """symbols.prelu.PReLU (same parameter, same kernels); the composed stock form in a Backbone's graph."""

    def hybrid_forward(self, F, x, alpha):
        out = super().hybrid_forward(F, x, alpha)
        stock = F is mx.sym and out.list_attr().get("act_type") == "prelu"  # not the fused kernel
        if stock and getattr(_state, "active", False) and self.alpha.grad_req != "null":
            return composed(F, x, alpha)
        return out


def to_stock(sym: mx.sym.Symbol) -> mx.sym.Symbol:
    """sym with every PReLU as one LeakyReLU(act_type='prelu') node: fused kernels (symbols.prelu.to_stock)
    and composed forms (where(x > 0, x, broadcast_mul(x, reshape(alpha)))) alike; same names, same numbers."""
    graph = json.loads(prelu.to_stock(sym).tojson())
    nodes = graph["nodes"]
    for node in nodes:
        if node["op"] != "where" or len(node["inputs"]) != 3:
            continue
        cond, x, negative = node["inputs"]
        mul = nodes[negative[0]]
        if mul["op"] != "broadcast_mul" or mul["inputs"][0] != x or nodes[cond[0]]["inputs"][0] != x:
            continue
        reshape = nodes[mul["inputs"][1][0]]
        if reshape["op"] != "Reshape" or nodes[reshape["inputs"][0][0]]["op"] != "null":
            continue
        node.update(op="LeakyReLU", attrs={"act_type": "prelu"}, inputs=[x, reshape["inputs"][0]])
    # the condition, product and reshape nodes are no longer reachable: saving the symbol drops them
    return mx.sym.load_json(json.dumps(graph))
