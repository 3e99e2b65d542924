"""Images in: decoded as the benchmark always has (cv2.imread, IMREAD_COLOR), damaged files refused.

`cv2.imread` decodes what a truncated or corrupt JPEG still holds and returns it: libjpeg says
"Premature end of JPEG file" or "Corrupt JPEG data: ..." on stderr, fills the rest with grey, and
the caller cannot tell. A run would then measure and detect on part of an image. So the decode
runs with the process's stderr (file descriptor 2, where libjpeg, libpng and OpenCV's own log
write) captured, and a decoder's report of damage is an error naming the file and the report.

Why this and not Pillow's verify()/load(): OpenCV is the decoder whose pixels we benchmark, so
its own decoders' reports are the ones that matter, no second decoder (or dependency) is needed,
and the result stays cv2.imread's, bit for bit (grayscale, RGBA, 16-bit and EXIF-rotated images
convert exactly as before). Pillow also misses damage that libjpeg only warns about: a JPEG with
bytes overwritten inside its entropy-coded data ("Corrupt JPEG data: bad Huffman code") loads in
Pillow without complaint (tests/test_images.py makes one).

Not damage: a PNG whose ancillary chunk (tEXt, ...) fails its CRC. libpng drops that chunk with a
warning and decodes every pixel (a bad CRC in image data, IDAT, is an error that stops it): the
image is accepted and the warning is passed on to stderr, as before.

Capturing fd 2 is process-wide for the few milliseconds of one decode: text another thread
writes meanwhile is held back and written out afterwards (nothing is lost); our callers decode
before any other thread of theirs starts. A lock keeps two of our own decodes from overlapping.
Works under Python 3.9 (the Caffe worker decodes its images with this too).
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Tuple, Union

from retinabench.errors import BenchError

# What the decoders print when the pixels they return are not the file's, or they return none.
DAMAGE = re.compile(
    # libjpeg: warnings (it decodes the rest as grey) and errors
    r"Premature end of JPEG file|Corrupt JPEG data[^\n]*|Bogus [^\n]*|"
    # libpng: errors (a bad IDAT CRC, a truncated stream)
    r"libpng error: [^\n]*|"
    # OpenCV's own readers (BMP, ...), through its log
    r"Unexpected end of input stream|can't read data[^\n]*",
)
_LOCK = threading.Lock()


def load_image(path: Union[str, Path]) -> Any:
    """The image as cv2.imread(path, cv2.IMREAD_COLOR) gives it (BGR uint8, H x W x 3).

    Raises BenchError, one line naming the file and what is wrong: missing, not a file, not
    readable, not decodable, or decoded with damage reported by the decoder.
    """
    p = Path(path)
    if not p.exists():
        raise BenchError(f"image {p} does not exist")
    if not p.is_file():
        raise BenchError(f"image {p} is not a file")
    if not os.access(p, os.R_OK):
        raise BenchError(f"image {p} is not readable")
    img, messages = _decode(str(p))
    damage = DAMAGE.search(messages)
    if img is None or img.size == 0:
        why = _summary(damage.group(0) if damage else _first_line(messages))
        raise BenchError(f"image {p} cannot be decoded as an image" + (f" ({why})" if why else ""))
    if damage:
        raise BenchError(f"image {p} is corrupt or truncated: the decoder reports "
                         f"\"{_summary(damage.group(0))}\" (only part of it would be benchmarked)")
    if messages.strip():  # a decoder's remark that is not damage: pass it on, as before
        _write_stderr(messages)
    return img


def _decode(path: str) -> Tuple[Any, str]:
    """cv2.imread with fd 2 captured: (image or None, what was written to stderr meanwhile)."""
    import cv2

    with _LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no stderr to capture: decode as it is
            return cv2.imread(path, cv2.IMREAD_COLOR), ""
        try:
            with tempfile.TemporaryFile() as tmp:
                os.dup2(tmp.fileno(), 2)
                try:
                    img = cv2.imread(path, cv2.IMREAD_COLOR)
                finally:
                    os.dup2(saved, 2)
                tmp.seek(0)
                text = tmp.read().decode("utf-8", "replace")
        finally:
            os.close(saved)
    return img, text


def _summary(text: str) -> str:
    """A decoder's message in a few words: OpenCV's log prefix and C++ location dropped."""
    text = text.strip()
    m = re.search(r"error: \([^)]*\) (.*?)(?: in function .*)?$", text)
    if m:
        text = m.group(1)
    text = re.sub(r"^\[[A-Z]+:[^\]]*\]\s*(global\s+)?\S+:\d+\s+\S+\s+", "", text)
    return text[:200]


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _write_stderr(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
