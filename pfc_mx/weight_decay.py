"""Which backbone parameters get weight decay (`optim.wd_rule`), set as each Parameter's wd_mult.

    all      every trainable parameter: the original MXNet partial_fc (train_memory.py hands
             Module its own SGD object, so MXNet's name rule is never applied) and arcface_torch
             (torch SGD over all parameters). The default of every recipe.
    module   MXNet Module's rule for an optimizer it creates from a name (`optimizer="sgd"`):
             only names ending in `_weight` or `_gamma` decay, so biases and BatchNorm betas do not,
             while BatchNorm gammas and PReLU slopes (MXNet calls them `<name>_gamma`; Gluon `alpha`)
             do.
    weights  only convolution and dense weights (`_weight`): no decay on biases, BatchNorm and PReLU.

Parameters without a gradient (running statistics, a fixed BatchNorm gamma) are never updated.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, List

if TYPE_CHECKING:  # the config imports WD_RULES and must not load MXNet
    from mxnet import gluon

WD_RULES = ("all", "module", "weights")


def mxnet_name(name: str) -> str:
    """The name MXNet's symbol API gives a Gluon parameter: PReLU's `alpha` is `gamma` there."""
    return name[: -len("_alpha")] + "_gamma" if name.endswith("_alpha") else name


def decays(name: str, rule: str) -> bool:
    """Whether the parameter `name` (Gluon naming) gets weight decay under `rule` (one of WD_RULES)."""
    if rule == "all":
        return True
    mx_name = mxnet_name(name)
    if rule == "module":
        return mx_name.endswith("_weight") or mx_name.endswith("_gamma")
    if rule == "weights":
        return mx_name.endswith("_weight")
    raise ValueError(f"unknown weight-decay rule {rule!r}; valid: {', '.join(WD_RULES)}")


def apply_wd_rule(params: Iterable["gluon.Parameter"], rule: str) -> List[str]:
    """Set wd_mult to 1 or 0 on each parameter by `rule`; return the names exempted (wd_mult 0)."""
    exempt = []
    for p in params:
        p.wd_mult = 1.0 if decays(p.name, rule) else 0.0
        if p.wd_mult == 0.0 and p.grad_req != "null":
            exempt.append(p.name)
    return exempt
