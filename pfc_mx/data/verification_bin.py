"""insightface `.bin` verification sets: a pickle of (bins, issame_list) (docs/design.md, ".bin verification sets").

Usage::

    images, issame = load_bin("lfw.bin")     # (2P, 3, 112, 112) uint8 RGB, (P,) bool
    # pair i is images[2 * i] and images[2 * i + 1]
    write_bin("mine.bin", images, issame)    # JPEG-encoded, loadable by insightface's own code
"""
from __future__ import annotations

import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from pfc_mx.atomic import atomic_path
from pfc_mx.errors import DatasetError


def _as_bytes(item) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, np.ndarray):
        return item.tobytes()
    raise TypeError(type(item).__name__)


def _decode(item, size: Tuple[int, int]) -> np.ndarray:
    """(3, H, W) uint8 RGB, or an empty array if the bytes do not decode."""
    try:
        img = cv2.imdecode(np.frombuffer(_as_bytes(item), np.uint8), cv2.IMREAD_COLOR)
    except (TypeError, cv2.error):
        img = None
    if img is None:
        return np.zeros(0, np.uint8)
    h, w = size
    if img.shape[:2] != (h, w):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if img.shape[0] > h else cv2.INTER_LINEAR)
    return img[:, :, ::-1].transpose(2, 0, 1)


def is_name(target: str) -> bool:
    """A bare set name ('lfw'), not a path ('data/lfw.bin', '/data/lfw.bin', 'lfw.bin')."""
    return "/" not in target and os.sep not in target and not target.endswith(".bin")


def find_bins(targets: Sequence[str], beside: Optional[Path] = None, what: str = "") -> List[Path]:
    """The `.bin` files that targets name: a name is `<beside>/<name>.bin`, a folder stands for its
    *.bin, anything else is a file path. DatasetError (one line, prefixed by `what`) for one not found."""
    files: List[Path] = []
    prefix = f"{what}: " if what else ""
    for target in map(str, targets):
        if is_name(target) and beside is not None:
            path = beside / f"{target}.bin"
            if not path.is_file():
                raise DatasetError(f"{prefix}{target}: no {path.name} beside the rec in {beside} (give names of "
                                   ".bin files there, paths to .bin files, or [] for none)")
            files.append(path)
            continue
        path = Path(target)
        if path.is_dir():
            found = sorted(path.glob("*.bin"))
            if not found:
                raise DatasetError(f"{prefix}{path}: no .bin files in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DatasetError(f"{prefix}{path}: verification set not found")
    return files


def load_bin(path: "str | os.PathLike", image_size: Tuple[int, int] = (112, 112)) -> Tuple[np.ndarray, np.ndarray]:
    """Images (2P, 3, H, W) uint8 RGB and issame (P,) bool of a `.bin` file; image_size is (H, W)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            bins, issame = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise DatasetError(f"{path}: verification set not found")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise DatasetError(f"{path}: not a verification .bin (pickle of (bins, issame_list)): {e}")
    issame = np.asarray(issame, dtype=np.bool_).reshape(-1)
    if len(bins) != 2 * len(issame) or len(issame) == 0:
        raise DatasetError(f"{path}: {len(bins)} images for {len(issame)} pairs (expected two per pair, >= 1 pair)")
    h, w = image_size
    images = np.empty((len(bins), 3, h, w), np.uint8)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # cv2 releases the GIL
        for i, img in enumerate(pool.map(lambda b: _decode(b, (h, w)), bins, chunksize=64)):
            if img.size == 0:
                raise DatasetError(f"{path}: image {i} (pair {i // 2}) does not decode")
            images[i] = img
    return images, issame


def write_bin(path: "str | os.PathLike", images: "np.ndarray | Sequence[bytes]", issame: Sequence[bool],
              ext: str = ".jpg", quality: int = 95) -> Path:
    """Write a `.bin`: images (2P, 3, H, W) uint8 RGB (encoded as ext; ".png" is lossless) or a list
    of 2P already encoded images, and issame (P,)."""
    issame = [bool(s) for s in issame]
    if isinstance(images, (list, tuple)) and all(isinstance(b, bytes) for b in images):
        bins = list(images)
    else:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected (2P, 3, H, W) uint8 images, got {images.shape} {images.dtype}")
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext.lower() in (".jpg", ".jpeg") else []
        bins = []
        for img in images:
            ok, buf = cv2.imencode(ext, np.ascontiguousarray(img[::-1].transpose(1, 2, 0)), params)
            if not ok:
                raise ValueError(f"could not encode an image as {ext}")
            bins.append(buf.tobytes())
    if len(bins) != 2 * len(issame):
        raise ValueError(f"{len(bins)} images for {len(issame)} pairs (expected two per pair)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump((bins, issame), f, protocol=pickle.HIGHEST_PROTOCOL)
    return path
