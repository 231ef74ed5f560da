"""The Partial FC head: PartialFC (partial_fc.py) over one of three implementations of the same math.

    from pfc_mx.head import PartialFC

    partial_fc.py   the public class: options, this rank's shard, the step between the collectives
    base.py         what the implementations share: phases, step state, workspace
    stock.py        stock MXNet operators (GPUs)      fused.py   the fused CPU kernels
    original.py     insightface's MXNet operators in their order, through autograd (comparisons)
    labels.py       the labels' all-gather, its wire header and the checks on it
    options.py      option values and their rules (pfc_mx.config uses them; no MXNet)
    arrays.py       NDArrays from host data
"""
from typing import Any

__all__ = ["PartialFC"]


def __getattr__(name: str) -> Any:
    # PartialFC on first use: importing pfc_mx.head.options (the config does) must not load MXNet
    if name == "PartialFC":
        from pfc_mx.head.partial_fc import PartialFC
        return PartialFC
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
