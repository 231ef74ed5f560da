"""Verification during training on the `.bin` sets found beside the rec.

Every rank embeds an equal share of the images (so no rank idles at its next
collective while rank 0 works); rank 0 computes the 10-fold accuracy and
shares the result. The best accuracy so far is tracked per target.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import mxnet as mx
import numpy as np

from pfc_mx import dist
from pfc_mx.config import EvalConfig
from pfc_mx.data.verification_bin import find_bins, load_bin
from pfc_mx.evaluation.verification import embed, ten_fold_accuracy

log = logging.getLogger("pfc_mx.train")


def fixed_batch_forward(net: Any, ctx: mx.Context, batch_size: int):
    """A forward function that pads every batch to batch_size, so a static-shape graph is reused."""
    def forward(x: mx.nd.NDArray) -> mx.nd.NDArray:
        x = x.as_in_context(ctx)
        n = x.shape[0]
        if n < batch_size:
            x = mx.nd.concat(x, mx.nd.zeros((batch_size - n,) + x.shape[1:], ctx=ctx, dtype=x.dtype), dim=0)
        return net(x)[:n]
    return forward


@dataclass
class VerificationTargets:
    """The loaded `.bin` sets: name -> (images uint8 (2P, 3, H, W), issame bool (P,))."""

    sets: Dict[str, Tuple[np.ndarray, np.ndarray]]
    best: Dict[str, float] = field(default_factory=dict)

    @classmethod
    def find(cls, rec: Path, targets: List[str]) -> "VerificationTargets":
        """Load eval.targets: names of .bin files beside the rec, paths to .bin files, or folders of them.

        DatasetError (one line) when one cannot be found or read.
        """
        folder = rec if rec.is_dir() else rec.parent
        sets = {}
        for path in find_bins(targets, folder, what="eval.targets"):
            sets[path.stem] = load_bin(path)
        return cls(sets)

    def evaluate(self, net: Any, ctx: mx.Context, cfg: EvalConfig, reporter: Any, step: int) -> Dict[str, float]:
        """Collective: every rank calls it. Returns {name: accuracy} on every rank."""
        results: Dict[str, float] = {}
        forward = fixed_batch_forward(net, ctx, cfg.batch_size)
        for name, (images, issame) in self.sets.items():
            share = np.array_split(np.arange(len(images)), dist.size())[dist.rank()]
            mine = embed(forward, images[share], batch_size=cfg.batch_size, flip=cfg.flip)
            gathered = dist.allgather(mx.nd.array(mine)).asnumpy()
            acc = std = 0.0
            if dist.rank() == 0:
                acc, std, _ = ten_fold_accuracy(gathered, issame)
            acc, std = dist.broadcast_object((float(acc), float(std)), root=0)
            self.best[name] = max(self.best.get(name, 0.0), acc)
            reporter.verification(step, name, acc, std, self.best[name])
            results[name] = acc
        return results
