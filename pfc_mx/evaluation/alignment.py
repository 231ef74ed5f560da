"""5-point face alignment to the 112×112 ArcFace template (docs/design.md, "IJB-B/C folders").

    M = similarity_transform(landmarks, ARCFACE_TEMPLATE)     # (2, 3), landmarks (5, 2) x, y pixels
    face = align_face(image, landmarks)                       # (112, 112, C), same channel order as image

The similarity (rotation, uniform scale, translation; no reflection) is the least-squares
fit of Umeyama (1991), the estimator insightface uses through skimage.
"""
from __future__ import annotations

import cv2
import numpy as np

ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963],
                             [73.5318, 51.5014],
                             [56.0252, 71.7366],
                             [41.5493, 92.3655],
                             [70.7299, 92.2041]], dtype=np.float64)
FACE_SIZE = 112


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) matrix [s·R | t] minimising Σ‖s·R·src_i + t − dst_i‖²; src, dst (K, 2), K >= 2."""
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_src, dst - mu_dst
    cov = b.T @ a / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rotation = u @ np.diag(d) @ vt
    var_src = np.mean(np.sum(a * a, axis=1))
    scale = float(np.sum(s * d) / var_src) if var_src > 0 else 1.0
    shift = mu_dst - scale * rotation @ mu_src
    return np.hstack([scale * rotation, shift[:, None]])


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """The face of image (H, W, C) uint8 warped to the template, (size, size, C); black outside."""
    template = ARCFACE_TEMPLATE * (size / FACE_SIZE)
    matrix = similarity_transform(landmarks, template)
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)
