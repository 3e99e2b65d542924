"""Ground-truth records: an image and its face boxes; a dataset is a named list of them.

Box convention (every dataset kind is converted to it on reading):
    boxes are float64 [N, 4] arrays x1, y1, x2, y2 in pixels of the image as stored on disk,
    with the origin at the top-left corner of the top-left pixel and *exclusive* right/bottom
    edges: a box covering pixel columns 10..19 has x1 = 10, x2 = 20, width x2 - x1 = 10.
    - dlib `<box top=t left=l width=w height=h>`: x1 = l, y1 = t, x2 = l + w, y2 = t + h
      (dlib's rectangle is inclusive, right = l + w - 1, so x2 = right + 1).
    - WIDER FACE `x y w h`: x1 = x, y1 = y, x2 = x + w, y2 = y + h (as its eval code does).
    - COCO `bbox [x, y, w, h]` (continuous coordinates): x1 = x, x2 = x + w.
    - Pascal VOC `<bndbox>` (1-based, inclusive pixel indices, as the VOC devkit defines them):
      x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax.
    Detections use the same convention, with a score column: [M, 5] x1, y1, x2, y2, score.

`ignore` marks boxes that count neither way (dlib's ignore='1', VOC's difficult, COCO's iscrowd
or ignore, WIDER's `invalid` flag). WIDER FACE items also carry per-setting keep masks
(`settings["easy"]` etc.): the official protocol counts a face in a setting only where its mask
is True and ignores the rest (see wider_protocol.py).

Bad input is refused before anything runs, as a DatasetError: one line naming the file.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from retinabench.errors import BenchError

# A box may reach this far (in pixels) past the image's edges before it is refused as "outside
# its image". One pixel absorbs annotation tools that disagree by one about inclusive edges
# (a VOC file written 0-based, a dlib box on the last row), while a box drawn for another
# image size or a different image is still caught.
EDGE_TOLERANCE = 1.0


class DatasetError(BenchError):
    """A dataset that cannot be used as given; the message is one line naming the file."""


@dataclass(frozen=True, eq=False)
class Item:
    """One image and its ground truth.

    key: a stable name for the image within its dataset (for WIDER FACE "event/name" without the
    extension, as its evaluation code names images; otherwise the annotation's file name).
    size: (width, height) of the image on disk, in pixels.
    settings: name -> bool [N] keep mask (WIDER FACE easy/medium/hard); empty otherwise.
    """

    path: Path
    key: str
    size: Tuple[int, int]
    boxes: np.ndarray
    ignore: np.ndarray
    settings: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])


@dataclass(frozen=True, eq=False)
class Dataset:
    """A named, validated list of items plus what produced it.

    name: the normalised spec (e.g. "dlib:test@0.5"); kind: "widerface", "coco", "voc", "dlib";
    root: the folder or file the spec named; annotation_files: the files the boxes came from
    (hashed by describe()); settings: the protocol settings every item carries (WIDER FACE:
    ("easy", "medium", "hard")); extra: kind-specific facts for the record (scale, source).
    """

    name: str
    kind: str
    root: Path
    items: Tuple[Item, ...]
    annotation_files: Tuple[Path, ...]
    settings: Tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return len(self.items)

    @property
    def num_boxes(self) -> int:
        return sum(it.num_boxes for it in self.items)

    def describe(self) -> Dict[str, Any]:
        """A JSON-ready record of the dataset for a run folder: what, where, how big, which bytes."""
        ignored = sum(int(it.ignore.sum()) for it in self.items)
        out: Dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "path": str(self.root),
            "images": self.num_images,
            "boxes": self.num_boxes,
            "ignored_boxes": ignored,
            "box_convention": "x1,y1,x2,y2 pixels, exclusive right/bottom edge",
            "annotations": {str(p): sha256_file(p) for p in self.annotation_files},
        }
        if self.settings:
            out["settings"] = {s: int(sum(int(it.settings[s].sum()) for it in self.items))
                               for s in self.settings}
        if self.extra:
            out.update({k: v for k, v in self.extra.items() if k not in out})
        return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_item(path: Path, key: str, size: Tuple[int, int], boxes: Sequence, ignore: Optional[Sequence] = None,
              settings: Optional[Mapping[str, np.ndarray]] = None) -> Item:
    """An Item with its arrays in the documented dtypes and shapes."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ig = np.zeros(len(b), dtype=bool) if ignore is None else np.asarray(ignore, dtype=bool).reshape(-1)
    if ig.shape[0] != b.shape[0]:
        raise ValueError(f"{len(ig)} ignore flags for {len(b)} boxes")
    return Item(path=Path(path), key=key, size=(int(size[0]), int(size[1])), boxes=b, ignore=ig,
                settings=dict(settings or {}))


def check_item_boxes(item: Item, source: Path, tolerance: float = EDGE_TOLERANCE,
                     exempt: Optional[np.ndarray] = None) -> None:
    """Refuse a box that is not finite, has negative size, or leaves its image by more than `tolerance` px.

    Zero-size boxes are accepted: WIDER FACE has a few, and its protocol keeps them. `exempt`
    (bool [N]) skips boxes a reader has accepted as known defects (widerface.py says which).
    """
    b = item.boxes
    if b.size == 0:
        return
    keep = np.ones(len(b), dtype=bool) if exempt is None else ~np.asarray(exempt, dtype=bool)
    w, h = item.size
    bad_value = ~np.isfinite(b).all(axis=1)
    negative = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    outside = ((b[:, 0] < -tolerance) | (b[:, 1] < -tolerance)
               | (b[:, 2] > w + tolerance) | (b[:, 3] > h + tolerance))
    for mask, what in ((bad_value, "is not finite"), (negative, "has a negative width or height"),
                       (outside, f"lies outside the {w}x{h} image (by more than {tolerance:g} px)")):
        idx = np.flatnonzero(mask & keep)
        if idx.size:
            i = int(idx[0])
            coords = ",".join(f"{v:g}" for v in b[i])
            more = f" (and {idx.size - 1} more)" if idx.size > 1 else ""
            raise DatasetError(f"{source}: box {i + 1} of image {item.key} (x1,y1,x2,y2 = {coords}) "
                               f"{what}{more}")


def check_images_exist(items: Sequence[Item], source: Path) -> None:
    """Refuse annotations that name images that are not there (one line, the first few named)."""
    missing = [it.path for it in items if not it.path.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DatasetError(f"{source}: names {len(missing)} missing image(s): {shown}{more}")


def check_not_empty(items: Sequence[Item], source: Path) -> None:
    """Refuse a dataset with no images, or with no face to score (AP would be undefined)."""
    if not items:
        raise DatasetError(f"{source}: the dataset is empty (no images)")
    if not any(int((~it.ignore).sum()) for it in items):
        raise DatasetError(f"{source}: the dataset is empty ({len(items)} images but no face boxes to score)")
