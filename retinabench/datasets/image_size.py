"""An image's width and height from its header, without decoding the pixels.

Checking that every box lies inside its image needs the sizes of thousands of images (WIDER FACE
val has 3,226): decoding them all would cost minutes before a run starts, reading their headers
costs milliseconds. JPEG (SOFn marker) and PNG (IHDR) are read here; any other format, or a
header we cannot parse, falls back to a full decode with retinabench.model.images.load_image,
which also refuses damaged files. A damaged JPEG body is caught later, when the run decodes it.

cv2.imread (what the benchmark decodes with) turns a JPEG by its EXIF orientation, so a JPEG
whose EXIF orientation is 5-8 (a quarter turn) reports its height and width swapped, as decoded.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Optional, Tuple

from retinabench.datasets.records import DatasetError

# JPEG start-of-frame markers carrying the frame size (not DHT C4, JPG C8, DAC CC)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_size(path: Path) -> Tuple[int, int]:
    """(width, height) of the image at `path`; DatasetError naming it if it cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            size = None
            if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
                size = struct.unpack(">II", head[16:24])
            elif head.startswith(b"\xff\xd8"):
                f.seek(2)
                size = _jpeg_size(f)
    except OSError as e:
        raise DatasetError(f"image {path}: cannot be read ({e.strerror or e})") from None
    if size is not None and size[0] > 0 and size[1] > 0:
        return int(size[0]), int(size[1])
    return _decoded_size(path)


def _jpeg_size(f) -> Optional[Tuple[int, int]]:
    """Walk the JPEG markers up to the first start-of-frame; None where the stream is not as expected."""
    turned = False
    while True:
        b = f.read(1)
        while b == b"\xff":  # fill bytes
            b = f.read(1)
        if not b:
            return None
        marker = b[0]
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length field
            continue
        if marker == 0xD9 or marker == 0xDA:  # end of image / start of scan before any frame
            return None
        raw = f.read(2)
        if len(raw) < 2:
            return None
        length = struct.unpack(">H", raw)[0]
        if length < 2:
            return None
        if marker in _SOF:
            data = f.read(5)
            if len(data) < 5:
                return None
            height, width = struct.unpack(">HH", data[1:5])
            return (height, width) if turned else (width, height)
        if marker == 0xE1:  # APP1: EXIF orientation, if this is EXIF
            segment = f.read(length - 2)
            turned = turned or _exif_orientation(segment) in (5, 6, 7, 8)
        else:
            f.seek(length - 2, 1)
        # a marker must follow: read on; a stray byte ends the walk at the next loop's check
        nxt = f.read(1)
        if nxt != b"\xff":
            return None


def _exif_orientation(segment: bytes) -> int:
    """The EXIF Orientation tag (0x0112) of IFD0 in an APP1 segment; 1 (upright) where absent."""
    if not segment.startswith(b"Exif\x00\x00") or len(segment) < 14:
        return 1
    tiff = segment[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        ifd = struct.unpack(order + "I", tiff[4:8])[0]
        count = struct.unpack(order + "H", tiff[ifd:ifd + 2])[0]
        for k in range(count):
            entry = tiff[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
            tag, typ = struct.unpack(order + "HH", entry[:4])
            if tag == 0x0112 and typ == 3:
                return int(struct.unpack(order + "H", entry[8:10])[0])
    except struct.error:
        return 1
    return 1


def _decoded_size(path: Path) -> Tuple[int, int]:
    from retinabench.errors import BenchError
    from retinabench.model.images import load_image

    try:
        img = load_image(path)
    except BenchError as e:
        raise DatasetError(str(e)) from None
    return int(img.shape[1]), int(img.shape[0])
