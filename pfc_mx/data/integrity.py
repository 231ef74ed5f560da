"""Is an encoded face image complete, and what size is it? Cheap checks before and around the decode.

Usage::

    info = image_info(data)          # from the headers only: kind, height, width, channels, fault
    img, fault, info = decode_checked(data)  # (H, W, 3) uint8 BGR or None; fault "" when sound

Why: OpenCV decodes a JPEG cut short without a word (the missing rows are filled with noise),
and libjpeg's "Corrupt JPEG data: ..." warnings go straight to the process's stderr. So:

- JPEG: the markers are walked from SOI to EOI (segment lengths, then the entropy-coded
  data of each scan, where a 0xFF byte may only be followed by 0x00, a fill 0xFF or a
  restart marker). The image is damaged when the file ends before EOI, when a segment runs
  past the end, or when a scan holds a marker no scan may be followed by (random bytes do).
  Bytes after EOI (padding, camera trailers) are ignored, as libjpeg ignores them.
- PNG: the signature, the IHDR chunk and a final IEND chunk must be there.
- The decoder's own messages (libjpeg warnings, libpng errors) are captured while it runs:
  file descriptor 2 points at a private temporary file for the call, and anything written
  there makes the image damaged, with that message as the reason. In a process with other
  threads writing to stderr at that moment, their text would be taken as the decoder's.

Sizes and channels come from the headers (JPEG SOF, PNG IHDR), so checking them costs no decode.
"""
from __future__ import annotations

import os
import re
import struct
import tempfile
from typing import NamedTuple, Optional, Tuple

import cv2
import numpy as np

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_AFTER_SCAN = {0xC4, 0xCC, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xFE} | set(range(0xE0, 0xF0))  # may follow a scan
_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker ends the entropy-coded data
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # colour type -> channels as stored (palette: RGB)


class ImageInfo(NamedTuple):
    """What the headers of one encoded image say. height/width/channels are 0 when unknown."""
    kind: str  # "jpeg", "png" or "other"
    height: int = 0
    width: int = 0
    channels: int = 0
    fault: str = ""  # "" when the structure is complete

    @property
    def shape(self) -> str:
        """'WxHxC' as tools print it."""
        return f"{self.width}x{self.height}x{self.channels}"


def _jpeg_info(data: bytes, to_frame_header: bool = False) -> ImageInfo:
    """The marker walk; with to_frame_header it stops at the SOF segment (size and channels known)."""
    n, pos = len(data), 2
    h = w = c = 0
    scanned = False
    try:
        while True:
            if data[pos] != 0xFF:
                return ImageInfo("jpeg", h, w, c, f"no marker at byte {pos} where one must be (damaged)")
            marker = data[pos + 1]
            if marker == 0xFF:  # a fill byte before a marker
                pos += 1
                continue
            if scanned and marker not in _AFTER_SCAN:
                return ImageInfo("jpeg", h, w, c, f"corrupt entropy-coded data (marker FF {marker:02X} at byte "
                                                   f"{pos})")
            if marker == 0xD9:
                if scanned:
                    return ImageInfo("jpeg", h, w, c)
                return ImageInfo("jpeg", h, w, c, "end-of-image marker before any image data")
            if 0xD0 <= marker <= 0xD7 or marker == 0x01:
                pos += 2
                continue
            end = pos + 2 + ((data[pos + 2] << 8) | data[pos + 3])
            if end > n:
                return ImageInfo("jpeg", h, w, c, f"truncated: segment FF {marker:02X} at byte {pos} runs past "
                                                   f"the end ({n} bytes)")
            if marker in _SOF:
                h, w = struct.unpack_from(">HH", data, pos + 5)
                c = data[pos + 9]
                if to_frame_header:
                    return ImageInfo("jpeg", h, w, c)
            elif marker == 0xDA:
                scanned = True
                found = _MARKER_IN_SCAN.search(data, end)
                if found is None:
                    return ImageInfo("jpeg", h, w, c, f"truncated: the file ends at byte {n} inside the image "
                                                       "data (no end-of-image marker FF D9)")
                end = found.start()
            pos = end
    except IndexError:
        return ImageInfo("jpeg", h, w, c, f"truncated: the file ends at byte {n} before the end-of-image marker "
                                           "(FF D9)")


def _png_info(data: bytes) -> ImageInfo:
    if len(data) < 33 or data[12:16] != b"IHDR":
        return ImageInfo("png", fault="truncated or damaged header (no IHDR chunk)")
    w, h = struct.unpack(">II", data[16:24])
    c = _PNG_CHANNELS.get(data[25], 0)
    if data.rfind(_PNG_IEND) < 0:
        return ImageInfo("png", h, w, c, f"truncated: no IEND chunk at the end ({len(data)} bytes)")
    return ImageInfo("png", h, w, c)


def _quick_info(data: bytes) -> ImageInfo:
    """image_info for the decode path: a JPEG whose frame header is sound and whose last bytes are its
    EOI marker needs no walk through its scans (a damaged scan makes libjpeg speak, which is caught)."""
    if data[:2] == b"\xff\xd8":
        info = _jpeg_info(data, to_frame_header=True)
        if not info.fault and (data.endswith(b"\xff\xd9") or data.rstrip(b"\0").endswith(b"\xff\xd9")):
            return info
        return _jpeg_info(data)
    return image_info(data)


def image_info(data: bytes) -> ImageInfo:
    """Kind, size, channels and structural fault of an encoded image, from its bytes (no decode)."""
    if data[:2] == b"\xff\xd8":
        return _jpeg_info(data)
    if data[:8] == _PNG_SIGNATURE:
        return _png_info(data)
    return ImageInfo("other")


class _Stderr:
    """Redirects file descriptor 2 into a private temporary file around a call (one per process)."""

    def __init__(self) -> None:
        self._pid, self._fd = -1, -1

    def _file(self) -> int:
        if self._pid != os.getpid():  # after a fork: a file of our own
            fd, path = tempfile.mkstemp(prefix="pfc_mx-decoder-")
            os.unlink(path)
            self._fd, self._pid = fd, os.getpid()
        return self._fd

    def call(self, fn, *args) -> Tuple[object, str]:
        """(fn(*args), what fn wrote to file descriptor 2)."""
        fd = self._file()
        saved = os.dup(2)
        os.dup2(fd, 2)
        try:
            result = fn(*args)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        size = os.lseek(fd, 0, os.SEEK_CUR)  # what was written (the offset is shared with fd 2); cheaper than fstat
        if not size:
            return result, ""
        text = os.pread(fd, min(size, 4096), 0).decode("utf-8", "replace")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        return result, text


_STDERR = _Stderr()


def decode_checked(data: bytes, flags: int = cv2.IMREAD_COLOR) -> Tuple[Optional[np.ndarray], str, ImageInfo]:
    """(decoded image (H, W, 3) uint8 BGR or None, fault, header info): fault is "" for a sound image,
    else why not.

    The structural check runs first (a damaged image is not decoded): the frame header and the
    final EOI marker of a JPEG (the full walk through its scans only when the EOI is not last),
    a PNG's IHDR and IEND. The decoder's messages on stderr are captured and make the image damaged.
    """
    info = _quick_info(data)
    if info.fault:
        return None, info.fault, info
    try:
        img, messages = _STDERR.call(cv2.imdecode, np.frombuffer(data, np.uint8), flags)
    except cv2.error as e:
        return None, f"does not decode ({str(e).strip().splitlines()[-1]})", info
    if messages.strip():
        said = " / ".join(m.strip() for m in messages.splitlines() if m.strip())
        return None, f"the decoder reports: {said}", info
    if img is None:
        return None, "does not decode", info
    return img, "", info
