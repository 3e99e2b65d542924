"""dlib's annotated faces (from Debian's dlib source package, see fetch.py) and dlib's XML format.

dlib's imglab XML: `<image file='NAME' [width= height=]>` holding `<box top left width height
[ignore='1']>` (the *_with_face_landmarks.xml files add `<part>` children, not read here).
dlib's rectangle is inclusive (right = left + width - 1), so in our exclusive convention the box
is x1 = left, y1 = top, x2 = left + width, y2 = top + height. `ignore='1'` boxes count neither way.

Splits: `train` (training.xml: 4 images, 18 boxes) and `test` (testing.xml: 5 images, 25 boxes,
the default). It is a small set: each face is about 4 points of recall in the test split. A
scale below 1 (e.g. dlib:test@0.35) serves the photos downscaled (downscale.py), which is where
the set starts to separate models.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import List, Optional

from retinabench.datasets.downscale import scale_items
from retinabench.datasets.fetch import FETCH_COMMAND, MANIFEST, cached_faces, faces_dir, fetch_dlib_faces
from retinabench.datasets.image_size import image_size
from retinabench.datasets.records import (Dataset, DatasetError, Item, check_images_exist, check_item_boxes,
                                          check_not_empty, make_item)

SPLITS = {"train": "training.xml", "test": "testing.xml"}


def read_dlib_xml(xml: Path, images_dir: Optional[Path] = None) -> List[Item]:
    """The items of a dlib imglab XML file, images relative to `images_dir` (default: the XML's folder).

    Checks: the file parses, every box has integer-like top/left/width/height, every image exists,
    the size the XML states (if any) is the image's, and every box lies in its image.
    """
    xml = Path(xml)
    if not xml.is_file():
        raise DatasetError(f"{xml}: the dlib XML file does not exist")
    base = Path(images_dir) if images_dir else xml.parent
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as e:
        raise DatasetError(f"{xml}: not a readable XML file ({e})") from None
    items: List[Item] = []
    for n, image in enumerate(root.iter("image"), 1):
        file = image.get("file")
        if not file:
            raise DatasetError(f"{xml}: image {n} has no file attribute")
        boxes, ignore = [], []
        for k, box in enumerate(image.findall("box"), 1):
            try:
                t, l, w, h = (float(box.get(a)) for a in ("top", "left", "width", "height"))
            except (TypeError, ValueError):
                raise DatasetError(f"{xml}: box {k} of image {file} lacks a numeric top, left, width or height") from None
            boxes.append([l, t, l + w, t + h])
            ignore.append(box.get("ignore", "0").strip() not in ("0", "", "false"))
        items.append(make_item(base / file, file, (0, 0), boxes, ignore))
    check_not_empty(items, xml)
    check_images_exist(items, xml)
    out = []
    for image, it in zip(root.iter("image"), items):
        size = image_size(it.path)
        stated = (image.get("width"), image.get("height"))
        if all(stated) and (int(float(stated[0])), int(float(stated[1]))) != size:
            raise DatasetError(f"{xml}: image {it.key} is stated as {stated[0]}x{stated[1]}, "
                               f"the file is {size[0]}x{size[1]}")
        it = Item(path=it.path, key=it.key, size=size, boxes=it.boxes, ignore=it.ignore)
        check_item_boxes(it, xml)
        out.append(it)
    return out


def open_dlib(cache_dir: Path, split: str = "test", scale: Optional[str] = None, fetch: bool = True) -> Dataset:
    """dlib's faces, split "train" or "test", at native size or downscaled by `scale` (a decimal string)."""
    if split not in SPLITS:
        raise DatasetError(f"dlib:{split}: unknown split (known: {', '.join(SPLITS)})")
    folder = fetch_dlib_faces(cache_dir) if fetch else cached_faces(cache_dir)
    if folder is None:
        raise DatasetError(f"{faces_dir(cache_dir)}: dlib's faces are not fetched: run "
                           + FETCH_COMMAND.format(cache=cache_dir))
    xml = folder / SPLITS[split]
    items = read_dlib_xml(xml)
    name = f"dlib:{split}"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = {}
    extra = {"source": "Debian source package dlib " + str(manifest.get("version", "?")),
             "archive": manifest.get("archive"), "archive_sha256": manifest.get("archive_sha256"),
             "mirror": manifest.get("mirror"), "suite": manifest.get("suite"), "split": split, "scale": 1.0}
    if scale is not None:
        items, facts = scale_items(items, scale, folder / "scaled" / split, xml)
        name += f"@{scale}"
        extra.update(facts)
    return Dataset(name=name, kind="dlib", root=folder, items=tuple(items), annotation_files=(xml,), extra=extra)
