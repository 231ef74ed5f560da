"""MXNet's RecordIO format, read without MXNet: the .idx, insightface's `property`, records and image headers.

Usage::

    keys, offsets = read_index(Path("train.idx"))        # sorted by key (a KeyRange when consecutive)
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
from typing import Iterator, Optional, Tuple, Union

import numpy as np

from pfc_mx.errors import DatasetError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
_IR_FORMAT = "<IfQQ"  # flag, label, id, id2: mx.recordio.IRHeader
_IR_SIZE = struct.calcsize(_IR_FORMAT)
_SCAN_CHUNK = 1 << 13  # records per vectorised header scan (~1 MiB of temporaries)
_INDEX_BLOCK = 1 << 20  # bytes of .idx text parsed at a time


class KeyRange:
    """Record keys start … stop − 1 of consecutive records, without storing them (8 bytes a record).

    Indexed like the int64 array it stands for: keys[i] is an int, keys[array] an array.
    """

    def __init__(self, start: int, stop: int):
        self.start, self.stop = int(start), int(stop)

    @property
    def size(self) -> int:
        return self.stop - self.start

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i):
        if isinstance(i, (int, np.integer)):
            if not -self.size <= i < self.size:
                raise IndexError(f"record {i} outside [0, {self.size})")
            return self.start + int(i) % self.size
        if isinstance(i, slice):
            r = range(self.start, self.stop)[i]
            return np.arange(r.start, r.stop, r.step, dtype=np.int64)
        return self.start + np.asarray(i, dtype=np.int64)

    def __array__(self, dtype=None) -> np.ndarray:
        return np.arange(self.start, self.stop, dtype=dtype or np.int64)

    def tolist(self) -> list:
        return list(range(self.start, self.stop))


Keys = Union[np.ndarray, KeyRange]


def positions(keys: Keys, wanted: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(position in keys, present) of each wanted key; keys sorted and unique."""
    if isinstance(keys, KeyRange):
        pos = wanted - keys.start
        return pos, (pos >= 0) & (pos < keys.size)
    pos = np.searchsorted(keys, wanted)
    return pos, (pos < keys.size) & (keys[np.minimum(pos, keys.size - 1)] == wanted)


def read_index(idx_path: Path, block: int = _INDEX_BLOCK, digest=None) -> Tuple[Keys, np.ndarray]:
    """Parse an MXNet .idx file ("key<TAB>offset" lines) into (keys, offsets int64), sorted by key.

    A key listed twice keeps its last offset, as mx.recordio.MXIndexedRecordIO does. One pass in
    blocks of `block` bytes (fed to `digest`, a hashlib object, when given): memory beyond the
    offsets (8 bytes a line) stays near a few blocks while the keys run consecutively (as writers
    make them: keys is then a KeyRange); other keys are stored and sorted. The arrays are sized
    for the shortest possible lines; pages never written are never resident.
    """
    offsets = np.empty(idx_path.stat().st_size // 4 + 1, np.int64)  # "0<TAB>0<NEWLINE>": 4 bytes a line
    keys: Optional[np.ndarray] = None  # stored once they stop running consecutively
    first = filled = 0
    with open(idx_path, "rb") as f:
        tail = b""
        for chunk in iter(lambda: f.read(block), b""):
            if digest is not None:
                digest.update(chunk)
            text = tail + chunk
            cut = text.rfind(b"\n") + 1
            text, tail = text[:cut], text[cut:]
            keys, first, filled = _parse_lines(text, keys, offsets, first, filled, idx_path)
        keys, first, filled = _parse_lines(tail, keys, offsets, first, filled, idx_path)
    offsets = offsets[:filled]
    if keys is None:
        return KeyRange(first, first + filled), offsets
    keys = keys[:filled]
    if (keys[1:] > keys[:-1]).all():
        return keys, offsets
    order = np.argsort(keys, kind="stable")
    keys, offsets = keys[order], offsets[order]
    last_of_key = np.append(keys[1:] != keys[:-1], True)
    return keys[last_of_key], offsets[last_of_key]


def _parse_lines(text: bytes, keys: Optional[np.ndarray], offsets: np.ndarray, first: int, filled: int,
                 idx_path: Path) -> Tuple[Optional[np.ndarray], int, int]:
    """Parse whole lines into offsets[filled:] and keys (None while they run first, first + 1, …)."""
    if not text.strip():
        return keys, first, filled
    with warnings.catch_warnings():  # malformed text: numpy warns and stops early; caught by the count
        warnings.simplefilter("ignore")
        values = np.fromstring(text, dtype=np.int64, sep=" ")
    n = text.count(b"\n") + (not text.endswith(b"\n"))
    if values.size != 2 * n:
        raise DatasetError(f"{idx_path}: malformed index (expected 'key<TAB>offset' lines)")
    got = values[0::2]
    offsets[filled:filled + n] = values[1::2]
    if keys is None:
        if filled == 0:
            first = int(got[0])
        if got[0] == first + filled and got[-1] == first + filled + n - 1 and (got[1:] > got[:-1]).all():
            return None, first, filled + n
        keys = np.empty(offsets.size, np.int64)
        keys[:filled] = np.arange(first, first + filled)
    keys[filled:filled + n] = got
    return keys, first, filled + n


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


def check_index_covers(fd: int, keys: Keys, offsets: np.ndarray, file_size: int, rec: Path,
                       idx: Path) -> None:
    """DatasetError when the .rec and its index do not end together: a record the index lists runs past
    the end of the .rec (a truncated .rec), or the .rec holds data past the last one (a truncated .idx).

    The writer pads every record to 4 bytes, so the file ends within 3 bytes of the last record's payload.
    """
    last = int(np.argmax(offsets))
    beyond = bool(offsets[last] >= file_size)  # records start past the end: a truncated .rec
    if beyond:  # look at the last record that starts inside the file
        inside = np.flatnonzero(offsets < file_size)
        last = int(inside[np.argmax(offsets[inside])]) if inside.size else int(np.argmin(offsets))
    try:
        end = max(pos + 8 + length for pos, length in _chunks(fd, int(offsets[last]), str(rec)))
    except DatasetError as e:
        raise DatasetError(f"{rec}: record {keys[last]} at byte {offsets[last]}: {str(e).split(': ', 1)[-1]}: "
                           "truncated .rec or wrong .idx")
    if end > file_size or beyond:
        past = np.flatnonzero(offsets >= file_size)
        k = last if end > file_size else int(past[np.argmin(offsets[past])])
        how = "reaches beyond" if k == last else "lies beyond"
        raise DatasetError(f"{rec}: record {keys[k]} at byte {offsets[k]} {how} the end of the file "
                           f"({file_size} bytes): truncated .rec or wrong .idx")
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


def _heads(buf: np.ndarray, off: np.ndarray, where: str, keys: np.ndarray) -> Tuple[np.ndarray, ...]:
    """(flag, label float64, payload length, continuation flag) of the records at byte offsets `off`.

    DatasetError naming the record (keys[k]) when one lies outside the file or has no magic there.
    """
    size = buf.size
    bad = np.flatnonzero((off < 0) | (off + 8 + _IR_SIZE > size))
    if bad.size:
        k = bad[0]
        raise DatasetError(f"{where}: record {keys[k]} at byte {off[k]} lies beyond the end of the file "
                           f"({size} bytes): truncated .rec or wrong .idx")
    head = np.ascontiguousarray(buf[off[:, None] + np.arange(16)]).view("<u4")  # magic, lrec, flag, label
    magic, lrec, flag = head[:, 0], head[:, 1], head[:, 2]
    length = (lrec & _LEN_MASK).astype(np.int64)
    cflag = lrec >> 29
    problems = [(magic != MAGIC, "no record there (bad magic): the .idx does not match the .rec"),
                (off + 8 + length > size, "the record runs past the end of the file: truncated .rec"),
                ((cflag == 0) & (length < _IR_SIZE + 4 * flag.astype(np.int64)), "the record is shorter than its header")]
    for mask, why in problems:
        if mask.any():
            k = int(np.flatnonzero(mask)[0])
            raise DatasetError(f"{where}: record {keys[k]} at byte {off[k]}: {why}")
    return flag, head[:, 3].view("<f4").astype(np.float64), length, cflag


def scan_headers(buf: np.ndarray, offsets: np.ndarray, where: str, keys: np.ndarray) -> np.ndarray:
    """Class labels (float64) of the image records at `offsets` of the memory-mapped rec `buf`.

    Checks magic and that each record lies inside the file. Vectorised: one gather per chunk.
    """
    labels = np.empty(len(offsets), np.float64)
    for lo in range(0, len(offsets), _SCAN_CHUNK):
        off = offsets[lo:lo + _SCAN_CHUNK]
        flag, label, length, cflag = _heads(buf, off, where, keys[lo:lo + _SCAN_CHUNK])
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


def scan_pairs(buf: np.ndarray, offsets: np.ndarray, where: str, keys: np.ndarray) -> np.ndarray:
    """(n, 2) float32 two-value labels of the records at `offsets`: insightface's identity records,
    [start, end) image ranges (record 0's (a, b) too). DatasetError naming a record with another label."""
    pairs = np.empty((len(offsets), 2), np.float32)
    for lo in range(0, len(offsets), _SCAN_CHUNK):
        off = offsets[lo:lo + _SCAN_CHUNK]
        flag, _, length, cflag = _heads(buf, off, where, keys[lo:lo + _SCAN_CHUNK])
        bad = np.flatnonzero((flag != 2) | (cflag != 0))
        if bad.size:
            k = int(bad[0])
            raise DatasetError(f"{where}: identity record {keys[lo + k]} at byte {off[k]} is damaged: expected a "
                               f"one-part record with a 2-value label [start, end), found {flag[k]} label value(s)")
        first = off + 8 + _IR_SIZE
        pairs[lo:lo + len(off)] = buf[first[:, None] + np.arange(8)].copy().view("<f4")
    return pairs


def _slow_label(buf: np.ndarray, offset: int, where: str) -> float:
    fd = os.open(where, os.O_RDONLY)
    try:
        return float(unpack_header(read_record_at(fd, offset, buf.size, where))[1][0])
    finally:
        os.close(fd)
