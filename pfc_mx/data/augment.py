"""Training-time augmentation of uint8 image batches: pure, vectorised functions.

Usage::

    rng = np.random.default_rng([seed, epoch, step, rank])
    params = draw(rng, batch=len(x), mirror=True, color_jitter=0.2)
    x = apply(x, params)                 # x: (B, 3, H, W) uint8 RGB

Colour jitter follows the usual brightness / contrast / saturation recipe: each factor is
drawn uniformly from [1 − s, 1 + s] per image; contrast blends with the image's mean grey,
saturation with the per-pixel grey (ITU-R 601 luma weights).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # R, G, B


def mirror(images: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """images (B, C, H, W) with rows where flip (B,) is True mirrored left-right; a new array."""
    out = images.copy()
    out[flip] = images[flip, :, :, ::-1]
    return out


def grey(images: np.ndarray) -> np.ndarray:
    """(B, 1, H, W) float32 luma of RGB images (B, 3, H, W)."""
    return np.einsum("bchw,c->bhw", images.astype(np.float32), _LUMA)[:, None]


def color_jitter(images: np.ndarray, brightness: np.ndarray, contrast: np.ndarray,
                 saturation: np.ndarray) -> np.ndarray:
    """Scale brightness, contrast and saturation of RGB uint8 images (B, 3, H, W) by (B,) factors."""
    x = images.astype(np.float32) * brightness[:, None, None, None]
    g = grey(x.clip(0, 255)) if x.size else x
    x = g + (x - g) * saturation[:, None, None, None]
    m = g.mean(axis=(1, 2, 3), keepdims=True)
    x = m + (x - m) * contrast[:, None, None, None]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def draw(rng: np.random.Generator, batch: int, mirror: bool = True, color_jitter: float = 0.0) -> Dict:
    """Random parameters of one batch: flip (B,) bool and, if color_jitter > 0, three (B,) factors."""
    params: Dict[str, Optional[np.ndarray]] = {
        "flip": rng.random(batch) < 0.5 if mirror else np.zeros(batch, bool)}
    if color_jitter > 0:
        lo, hi = 1.0 - color_jitter, 1.0 + color_jitter
        for name in ("brightness", "contrast", "saturation"):
            params[name] = rng.uniform(lo, hi, batch).astype(np.float32)
    return params


def apply(images: np.ndarray, params: Dict) -> np.ndarray:
    """Apply draw()'s parameters to uint8 images (B, 3, H, W); returns a new array."""
    out = mirror(images, params["flip"]) if params["flip"].any() else images.copy()
    if "brightness" in params:
        out = color_jitter(out, params["brightness"], params["contrast"], params["saturation"])
    return out
