"""MXNet's RecordIO format, read without MXNet: the .idx, insightface's `property`, records and image headers.

Usage::

    keys, offsets = read_index(Path("train.idx"))        # int64, sorted by key
    payload = read_record_at(fd, offsets[0], file_size, "train.rec")
    flag, labels, image = unpack_header(payload)         # like mx.recordio.unpack
    labels = scan_headers(np.frombuffer(mm, np.uint8), offsets, "train.rec", keys)

A record is one or more chunks: magic (u32), lrec (u32: continuation flag in the top 3 bits,
payload length in the rest), the payload padded to 4 bytes. The writer splits a payload
where the magic number occurs in it; reading joins the parts with the magic put back, as
dmlc-core does. An image record's payload starts with mx.recordio.IRHeader (flag, label, id,
id2); flag > 0 means `flag` float32 labels follow the header. pfc_mx.data.recordio builds the
dataset (layouts, label checks) on these functions.
"""
from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

from pfc_mx.errors import DatasetError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
_IR_FORMAT = "<IfQQ"  # flag, label, id, id2: mx.recordio.IRHeader
_IR_SIZE = struct.calcsize(_IR_FORMAT)
_SCAN_CHUNK = 1 << 16  # records per vectorised header scan (a few MB of temporaries)


def read_index(idx_path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """Parse an MXNet .idx file ("key<TAB>offset" lines) into (keys, offsets) int64 sorted by key.

    A key listed twice keeps its last offset, as mx.recordio.MXIndexedRecordIO does.
    """
    raw = idx_path.read_bytes()
    lines = raw.count(b"\n") + (0 if raw.endswith(b"\n") or not raw else 1)
    with warnings.catch_warnings():  # malformed text: numpy warns and stops early; caught by the count below
        warnings.simplefilter("ignore")
        values = np.fromstring(raw, dtype=np.int64, sep=" ") if raw else np.zeros(0, np.int64)
    if values.size != 2 * lines:
        raise DatasetError(f"{idx_path}: malformed index (expected 'key<TAB>offset' lines)")
    if values.size == 0:
        return values, values
    keys, offsets = values[0::2], values[1::2]
    order = np.argsort(keys, kind="stable")
    keys, offsets = keys[order], offsets[order]
    last = np.append(keys[1:] != keys[:-1], True)
    return keys[last], offsets[last]


def read_property(path: Path) -> Tuple[Optional[int], Optional[Tuple[int, int]]]:
    """(num_classes, (height, width)) from an insightface `property` file ("C,112,112"); Nones if absent."""
    if not path.is_file():
        return None, None
    fields = path.read_text().strip().split(",")
    try:
        values = [int(f) for f in fields]
    except ValueError:
        raise DatasetError(f"{path}: expected 'num_classes,height,width', got {path.read_text().strip()!r}")
    if not values or values[0] <= 0:
        raise DatasetError(f"{path}: num_classes must be positive, got {fields[0]!r}")
    size = (values[1], values[2]) if len(values) >= 3 else None
    return values[0], size


def _chunks(fd: int, offset: int, where: str) -> Iterator[Tuple[int, int]]:
    """(byte position, payload length) of each chunk of the RecordIO record at byte `offset`."""
    pos = offset
    while True:
        head = os.pread(fd, 8, pos)
        if len(head) < 8:
            raise DatasetError(f"{where}: record header at byte {pos} lies beyond the end of the file")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise DatasetError(f"{where}: no record at byte {pos} (bad magic)")
        cflag, length = lrec >> 29, lrec & _LEN_MASK
        yield pos, length
        pos += 8 + ((length + 3) & ~3)
        if cflag in (0, 3):
            return


def read_record_at(fd: int, offset: int, file_size: int, where: str) -> bytes:
    """The payload of the RecordIO record at byte `offset` (multi-part records joined, as dmlc does)."""
    parts = []
    for pos, length in _chunks(fd, offset, where):
        data = os.pread(fd, length, pos + 8)
        if len(data) < length:
            raise DatasetError(f"{where}: record at byte {pos} is truncated ({len(data)} of {length} bytes)")
        if parts:
            parts.append(_MAGIC_BYTES)  # the writer cut the payload where the magic number occurred
        parts.append(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def check_index_covers(fd: int, keys: np.ndarray, offsets: np.ndarray, file_size: int, rec: Path,
                       idx: Path) -> None:
    """DatasetError when the .rec holds data past the last record the index lists (a truncated .idx).

    The writer pads every record to 4 bytes, so the file ends within 3 bytes of the last record's payload.
    """
    last = int(np.argmax(offsets))
    end = max(pos + 8 + length for pos, length in _chunks(fd, int(offsets[last]), str(rec)))
    if file_size - end > 3:
        raise DatasetError(f"{idx}: the index ends with record {keys[last]} at byte {end}, but {rec.name} has "
                           f"{file_size} bytes: truncated .idx (or the index of another .rec)")


def unpack_header(payload: bytes) -> Tuple[int, np.ndarray, bytes]:
    """(flag, labels float32 (max(flag, 1),), image bytes) of an image record, like mx.recordio.unpack."""
    if len(payload) < _IR_SIZE:
        raise ValueError("record shorter than its header")
    flag, label, _, _ = struct.unpack(_IR_FORMAT, payload[:_IR_SIZE])
    if flag > 0:
        end = _IR_SIZE + 4 * flag
        return flag, np.frombuffer(payload[_IR_SIZE:end], np.float32), payload[end:]
    return flag, np.array([label], np.float32), payload[_IR_SIZE:]


def scan_headers(buf: np.ndarray, offsets: np.ndarray, where: str, keys: np.ndarray) -> np.ndarray:
    """Class labels (float64) of the image records at `offsets` of the memory-mapped rec `buf`.

    Checks magic and that each record lies inside the file. Vectorised: one gather per chunk.
    """
    size = buf.size
    labels = np.empty(len(offsets), np.float64)
    for lo in range(0, len(offsets), _SCAN_CHUNK):
        off = offsets[lo:lo + _SCAN_CHUNK]
        bad = np.flatnonzero((off < 0) | (off + 8 + _IR_SIZE > size))
        if bad.size:
            k = lo + bad[0]
            raise DatasetError(f"{where}: record {keys[k]} at byte {offsets[k]} lies beyond the end of the file "
                               f"({size} bytes): truncated .rec or wrong .idx")
        head = np.ascontiguousarray(buf[off[:, None] + np.arange(16)]).view("<u4")  # magic, lrec, flag, label
        magic, lrec, flag = head[:, 0], head[:, 1], head[:, 2]
        label = head[:, 3].view("<f4").astype(np.float64)
        length = (lrec & _LEN_MASK).astype(np.int64)
        cflag = lrec >> 29
        end = off + 8 + length
        problems = [(magic != MAGIC, "no record there (bad magic): the .idx does not match the .rec"),
                    (end > size, "the record runs past the end of the file: truncated .rec"),
                    ((cflag == 0) & (length < _IR_SIZE + 4 * flag), "the record is shorter than its header")]
        for mask, why in problems:
            if mask.any():
                k = lo + int(np.flatnonzero(mask)[0])
                raise DatasetError(f"{where}: record {keys[k]} at byte {offsets[k]}: {why}")
        split = (cflag != 0) & (length < _IR_SIZE + 4 * flag.astype(np.int64))
        arr = np.flatnonzero((flag > 0) & ~split)
        if arr.size:  # array labels: the class id is the first element after the header
            first = off[arr] + 8 + _IR_SIZE
            label[arr] = buf[first[:, None] + np.arange(4)].copy().view("<f4")[:, 0]
        labels[lo:lo + len(off)] = label
        split = np.flatnonzero(split)
        for j in split:  # magic number inside the header: a multi-part record, read it whole
            labels[lo + j] = _slow_label(buf, int(off[j]), where)
    return labels


def _slow_label(buf: np.ndarray, offset: int, where: str) -> float:
    fd = os.open(where, os.O_RDONLY)
    try:
        return float(unpack_header(read_record_at(fd, offset, buf.size, where))[1][0])
    finally:
        os.close(fd)
