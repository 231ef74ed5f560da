"""Cases for pfc_mx.head (PartialFC): several heads trained for a few steps on every rank.

`run_head` is shared with tests/test_partial_fc.py, which replays each config in
one process on the concatenated batch and compares.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import mxnet as mx
import numpy as np

from pfc_mx import dist
from pfc_mx.head import PartialFC
from tests.dist_cases import case

# name → head and batch settings; B is the per-rank batch on 2 ranks (global batch 2·B)
CONFIGS: Dict[str, Dict[str, Any]] = {
    "arcface_uneven_shards": dict(C=13, D=8, B=4, margin=(1.0, 0.5, 0.0), scale=16.0, steps=3),
    "combined_filtered_c7": dict(C=7, D=8, B=3, margin=(0.9, 0.4, 0.15), scale=16.0, threshold=0.2, steps=3),
    "cosface_more_ranks_than_classes": dict(C=1, D=8, B=2, margin=(1.0, 0.0, 0.4), scale=16.0, steps=3),
    "all_labels_in_shard0": dict(C=20, D=8, B=4, margin=(1.0, 0.5, 0.0), scale=64.0, steps=3, label_high=10),
    "float16_embeddings": dict(C=9, D=8, B=4, margin=(1.0, 0.5, 0.0), scale=16.0, steps=2, dtype="float16"),
    "sampled": dict(C=400, D=8, B=4, margin=(1.0, 0.5, 0.0), scale=16.0, steps=2, rate=0.1, mirror=200),
}


def global_batch(cfg: Dict[str, Any], step: int, world: int) -> tuple:
    """(embeddings (world·B, D) float32, labels (world·B,)) of a step, identical in every process."""
    rng = np.random.default_rng([hash_name(cfg), step])
    n = world * cfg["B"]
    x = rng.standard_normal((n, cfg["D"])).astype(np.float32)
    y = rng.integers(0, cfg.get("label_high", cfg["C"]), n)
    if "mirror" in cfg:  # the second half repeats the first half's classes shifted by `mirror`
        y = np.concatenate([y[:n // 2] % cfg["mirror"], y[:n // 2] % cfg["mirror"] + cfg["mirror"]])
    return x, y


def hash_name(cfg: Dict[str, Any]) -> int:
    return sum(ord(c) * (i + 1) for i, c in enumerate(repr(sorted(cfg.items())))) % 100003


def run_head(cfg: Dict[str, Any], world: int, rank: int) -> Dict[str, np.ndarray]:
    """Train a head for cfg['steps'] steps on this rank's rows of each global batch; collect results."""
    pfc = PartialFC(cfg["C"], cfg["D"], margin=cfg["margin"], scale=cfg["scale"], sample_rate=cfg.get("rate", 1.0),
                    interclass_filtering_threshold=cfg.get("threshold", 0.0), seed=7)
    b = cfg["B"] * (2 // world)  # one process holds the whole 2-rank batch
    losses: List[float] = []
    grads, indices = [], []
    for step in range(cfg["steps"]):
        x, y = global_batch(cfg, step, 2)
        rows = slice(rank * b, (rank + 1) * b)
        emb = mx.nd.array(x[rows]).astype(cfg.get("dtype", "float32"))
        loss, grad = pfc.forward_backward(emb, mx.nd.array(y[rows]))
        assert grad.dtype == emb.dtype and grad.shape == emb.shape
        losses.append(loss)
        grads.append(grad.asnumpy().astype(np.float32))
        indices.append(pfc.class_start + pfc.last_index)
        pfc.step(0.1 * (step + 1), momentum=0.9, wd=5e-4)
    start, weight, momentum = pfc.get_shard()
    return {"loss": np.array(losses), "grad": np.stack(grads), "class_start": np.array(start),
            "weight": weight, "momentum": momentum,
            "used_classes": np.concatenate(indices) if indices else np.zeros(0, np.int64),
            "used_per_step": np.array([len(i) for i in indices])}


def value_error(pfc: PartialFC, b: int, dtype: str = "float32", labels: Optional[np.ndarray] = None) -> str:
    """The ValueError message of one step of pfc on b samples of this rank ("" when none is raised)."""
    try:
        pfc.forward_backward(mx.nd.ones((b, 4), dtype=dtype), np.zeros(b, np.int64) if labels is None else labels)
    except ValueError as e:
        return str(e)
    return ""


def unequal_batch_error() -> str:
    """Rank 1 passes one sample fewer: every rank must raise ValueError (and none may hang)."""
    return value_error(PartialFC(5, 4), 3 - dist.rank())


def mixed_kernels_error() -> str:
    """Rank 0 fused, rank 1 stock (the losses would differ in their last bits): every rank must raise."""
    return value_error(PartialFC(5, 4, kernels="fused" if dist.rank() == 0 else "stock"), 2)


def mixed_dtype_error() -> str:
    """Rank 1 passes float16 embeddings, rank 0 float32 (they are exchanged as raw values): every rank must raise."""
    return value_error(PartialFC(5, 4), 2, "float16" if dist.rank() == 1 else "float32")


def mixed_classes_error() -> str:
    """Rank 0 has C = 10, rank 1 C = 6 (shards that overlap, classes no rank owns): every rank must raise."""
    return value_error(PartialFC(10 if dist.rank() == 0 else 6, 4), 2)


def mixed_scale_error() -> str:
    """Rank 1 uses scale 32, rank 0 the default 64: every rank must raise."""
    return value_error(PartialFC(5, 4, scale=64.0 if dist.rank() == 0 else 32.0), 2)


def bad_label_error() -> str:
    """Rank 1 passes label 7 of 5 classes: every rank must raise, naming it."""
    return value_error(PartialFC(5, 4), 2, labels=np.array([0, 7 if dist.rank() == 1 else 0]))


@case
def partial_fc_heads(outdir: Path) -> Dict[str, np.ndarray]:
    """Every config of CONFIGS (keys "name/field"), then the checks that bad input raises on every rank."""
    out: Dict[str, np.ndarray] = {}
    for name, cfg in CONFIGS.items():
        if cfg.get("threshold") and os.environ.get("PFC_MX_KERNELS") == "original":
            continue  # the original has no inter-class filtering: that head refuses it
        for key, value in run_head(cfg, dist.size(), dist.rank()).items():
            out[f"{name}/{key}"] = value
    out["unequal_batch_error"] = np.array(unequal_batch_error())
    out["mixed_kernels_error"] = np.array(mixed_kernels_error())
    out["mixed_dtype_error"] = np.array(mixed_dtype_error())
    for check in (mixed_classes_error, mixed_scale_error, bad_label_error):
        out[check.__name__] = np.array(check())
    return out
