"""Checks of a face dataset's images: damaged records, sizes and channels against `property`.

Usage::

    img, fault, info = read_image(ds, i)         # image i read, unpacked and decoded (BGR), or why not
    img, fault, shape = decode(ds, i)            # what the loader trains on, and what is wrong with it
    check_sample(ds, 112, "resize")              # at open: a sample of headers against property / 112x112
    kind, detail = check_record(ds, i, (112, 112))   # rec.py validate: "damaged", "wrong size", ... or ""

The training input is (112, 112, 3) RGB. An image of another size or channel count is resized
or converted (data.on_wrong_size "resize", counted and logged), left out ("skip") or stops the
run ("error"). Damage is decided by pfc_mx.data.integrity.
"""
from __future__ import annotations

import logging
from typing import Optional, Tuple

import cv2
import numpy as np

from pfc_mx.data.integrity import ImageInfo, decode_checked, image_info
from pfc_mx.data.options import IMAGE_SIZE
from pfc_mx.data.record_format import unpack_header
from pfc_mx.data.recordio import RecordDataset
from pfc_mx.errors import DatasetError

log = logging.getLogger(__name__)

SAMPLE = 64  # image headers read when a loader opens a dataset


def read_image(dataset: RecordDataset, i: int, decode: bool = True) -> Tuple[Optional[np.ndarray], str, ImageInfo]:
    """(image i as (H, W, 3) uint8 BGR or None, why it is damaged or "", what its headers say).

    The one read → unpack → decode of a record that every check shares. decode=False stops
    after the headers (no image, info from pfc_mx.data.integrity.image_info: no decode cost).
    """
    try:
        _, _, data = unpack_header(dataset.read_raw(i))
    except (DatasetError, ValueError) as e:
        return None, str(e) or "unreadable record", ImageInfo("other", fault="unreadable record")
    if not decode:
        info = image_info(data)
        return None, info.fault, info
    return decode_checked(data)


def decode(dataset: RecordDataset, i: int, size: int = IMAGE_SIZE,
           on_wrong_size: str = "resize") -> Tuple[Optional[np.ndarray], str, str]:
    """(image i as (size, size, 3) uint8 RGB or None, why it is damaged or "", its 'WxHxC' when that
    is not size x size x 3, else "").

    A damaged record gives None. An image of another size or channel count is resized / converted
    (on_wrong_size "resize"), given as None ("skip"), or raises DatasetError ("error").
    """
    img, fault, info = read_image(dataset, i)
    if img is None:
        return None, fault, ""
    channels = info.channels or 3  # 0: the header does not say (BMP, WebP): decoded as colour
    wrong = f"{img.shape[1]}x{img.shape[0]}x{channels}" if img.shape[:2] != (size, size) or channels != 3 else ""
    if wrong and on_wrong_size != "resize":
        if on_wrong_size == "error":
            raise DatasetError(f"{dataset.path}: record {dataset.keys[i]} is {wrong} (WxHxC), not {size}x{size}x3 "
                               "(data.on_wrong_size: error; 'resize' trains on it resized, 'skip' leaves it out)")
        return None, "", wrong
    if img.shape[:2] != (size, size):
        interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp)
    return img[:, :, ::-1], "", wrong


def expected_size(dataset: RecordDataset) -> Tuple[int, int]:
    """(height, width) the images should have: `property`'s, else the training input 112x112."""
    return tuple(dataset.image_size) if dataset.image_size else (IMAGE_SIZE, IMAGE_SIZE)  # type: ignore


def _header_shape(dataset: RecordDataset, i: int) -> Optional[Tuple[int, int, int]]:
    """(height, width, channels) from image i's headers; None when they do not say (or are damaged)."""
    _, fault, info = read_image(dataset, i, decode=False)
    return (info.height, info.width, info.channels) if info.height and not fault else None


def check_sample(dataset: RecordDataset, size: int = IMAGE_SIZE, on_wrong_size: str = "resize",
                 sample: int = SAMPLE) -> int:
    """Compare the headers of `sample` evenly spaced images with `property` and with size x size x 3.

    Logs a warning with the counts and an example; with on_wrong_size "error" a mismatch raises
    DatasetError here, before training starts. Returns how many sampled images are not size x size x 3.
    """
    picks = np.unique(np.linspace(0, dataset.num_images - 1, min(sample, dataset.num_images)).astype(np.int64))
    shapes = [(int(i), _header_shape(dataset, int(i))) for i in picks]
    shapes = [(i, s) for i, s in shapes if s is not None]
    if dataset.image_size:
        off = [(i, s) for i, s in shapes if s[:2] != tuple(dataset.image_size)]
        if off:
            i, (h, w, _) = off[0]
            log.warning("%s says the images are %dx%d (HxW), but %d of %d sampled images are not (record %d is "
                        "%dx%d); run tools/rec.py validate to check them all", dataset.property_path,
                        dataset.image_size[0], dataset.image_size[1], len(off), len(shapes), dataset.keys[i], h, w)
    wrong = [(i, s) for i, s in shapes if s != (size, size, 3)]
    if wrong:
        i, (h, w, c) = wrong[0]
        line = (f"{dataset.path}: {len(wrong)} of {len(shapes)} sampled images are not {size}x{size}x3 (WxHxC; "
                f"record {dataset.keys[i]} is {w}x{h}x{c})")
        if on_wrong_size == "error":
            raise DatasetError(line + "; data.on_wrong_size: error ('resize' or 'skip' to train anyway)")
        what = "resized / converted and counted" if on_wrong_size == "resize" else "left out and counted"
        log.warning("%s: such images are %s (data.on_wrong_size %s)", line, what, on_wrong_size)
    return len(wrong)


def check_record(dataset: RecordDataset, i: int, size: Tuple[int, int]) -> Tuple[str, str]:
    """(kind, detail) of what is wrong with image i for rec.py validate; ("", "") when nothing.

    kind: "damaged" (does not decode, truncated, decoder warnings), "wrong size" (not `size`
    (H, W)), "wrong channels" (not 3). Decodes the image fully.
    """
    img, fault, info = read_image(dataset, i)
    if img is None:
        return "damaged", fault
    h, w = img.shape[:2]
    c = info.channels or 3
    if (h, w) != tuple(size):
        return "wrong size", f"{w}x{h}x{c}"
    if c != 3:
        return "wrong channels", f"{w}x{h}x{c}"
    return "", ""
