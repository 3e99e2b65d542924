"""A user's own annotated photos: a COCO JSON file, or a folder of Pascal VOC XML files.

COCO (`coco:ANNOTATIONS.json[,images=DIR][,names=face,...]`): every entry of `images` is an item
(images without annotations included: their detections are false positives); `bbox [x, y, w, h]`
becomes x1 = x, y1 = y, x2 = x + w, y2 = y + h; `iscrowd: 1` or `ignore: 1` marks a box to ignore.
Images are looked up as IMAGES/file_name, IMAGES defaulting to the JSON's folder.

VOC (`voc:FOLDER[,images=DIR][,names=face,...]`): the `*.xml` files of FOLDER (or of
FOLDER/Annotations, the VOC layout), one image each (`<filename>`, looked up in `images=`, else
FOLDER/JPEGImages if it exists, else beside the XML). `<object><bndbox>` in the VOC devkit's
1-based inclusive pixel indices becomes x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax;
`<difficult>1</difficult>` marks a box to ignore.

Which objects are faces: all of them, whatever their name or category, unless `names=` lists the
names that are (then other objects are dropped: they are not faces, and a detection on one is a
false positive). Face sets rarely annotate anything else, and a face set labelled "head" or
"person_face" should not silently score zero.

Checks, each a one-line DatasetError naming the file: it exists and parses, its images exist,
a size the annotations state is the image's, every box lies in its image (records.EDGE_TOLERANCE),
the set is not empty.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from retinabench.datasets.image_size import image_size
from retinabench.datasets.records import (Dataset, DatasetError, Item, check_images_exist, check_item_boxes,
                                          check_not_empty, make_item)


def _finish(items: List[Item], stated: Sequence[Optional[Tuple[int, int]]], source: Path) -> List[Item]:
    """Existence, stated sizes, bounds: the checks every folder format shares."""
    check_not_empty(items, source)
    check_images_exist(items, source)
    out = []
    for it, want in zip(items, stated):
        size = image_size(it.path)
        if want is not None and want[0] > 0 and want[1] > 0 and tuple(want) != size:
            raise DatasetError(f"{source}: image {it.key} is stated as {want[0]}x{want[1]}, "
                               f"the file {it.path} is {size[0]}x{size[1]}")
        it = Item(path=it.path, key=it.key, size=size, boxes=it.boxes, ignore=it.ignore)
        check_item_boxes(it, source)
        out.append(it)
    return out


# ---- COCO
def open_coco(json_path: Path, images: Optional[Path] = None, names: Optional[Sequence[str]] = None,
              name: Optional[str] = None) -> Dataset:
    json_path = Path(json_path)
    if not json_path.is_file():
        raise DatasetError(f"{json_path}: the COCO annotation file does not exist")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{json_path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{json_path}: no 'images' list (not a COCO annotation file)")
    base = Path(images) if images else json_path.parent
    if not base.is_dir():
        raise DatasetError(f"{base}: the images folder of {json_path} does not exist")
    cats = {c.get("id"): str(c.get("name", "")) for c in data.get("categories", []) if isinstance(c, dict)}
    if names:
        unknown = [n for n in names if n not in cats.values()]
        if cats and unknown:
            raise DatasetError(f"{json_path}: names={','.join(names)}: no category {unknown[0]!r} "
                               f"(categories: {', '.join(sorted(set(cats.values())))})")
    per_image: Dict[object, List[Tuple[List[float], bool]]] = {}
    for k, a in enumerate(data.get("annotations", []) or []):
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
            image_id = a["image_id"]
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{json_path}: annotation {k + 1} has no bbox [x, y, w, h] or image_id") from None
        if names and cats.get(a.get("category_id")) not in names:
            continue
        crowd = bool(a.get("iscrowd", 0)) or bool(a.get("ignore", 0))
        per_image.setdefault(image_id, []).append(([x, y, x + w, y + h], crowd))
    items, stated, ids = [], [], set()
    for k, im in enumerate(data["images"]):
        try:
            image_id, file_name = im["id"], im["file_name"]
        except (KeyError, TypeError):
            raise DatasetError(f"{json_path}: image entry {k + 1} has no id or file_name") from None
        ids.add(image_id)
        anns = per_image.get(image_id, [])
        items.append(make_item(base / file_name, str(file_name), (0, 0), [b for b, _ in anns], [c for _, c in anns]))
        stated.append((int(im.get("width", 0) or 0), int(im.get("height", 0) or 0)))
    orphans = [i for i in per_image if i not in ids]
    if orphans:
        raise DatasetError(f"{json_path}: annotations name image_id {orphans[0]!r}, which 'images' does not list")
    items = _finish(items, stated, json_path)
    return Dataset(name=name or f"coco:{json_path}", kind="coco", root=json_path, items=tuple(items),
                   annotation_files=(json_path,), extra={"images_dir": str(base), "names": list(names or [])})


# ---- Pascal VOC
def open_voc(folder: Path, images: Optional[Path] = None, names: Optional[Sequence[str]] = None,
             name: Optional[str] = None) -> Dataset:
    folder = Path(folder)
    if not folder.exists():
        raise DatasetError(f"{folder}: the VOC annotation folder does not exist")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: is not a folder (voc: wants the folder of the XML files)")
    ann_dir = folder / "Annotations" if (folder / "Annotations").is_dir() else folder
    xmls = sorted(ann_dir.glob("*.xml"))
    if not xmls:
        raise DatasetError(f"{ann_dir}: the dataset is empty (no .xml files)")
    if images:
        img_dir: Optional[Path] = Path(images)
    else:
        img_dir = folder / "JPEGImages" if (folder / "JPEGImages").is_dir() else None
    if img_dir is not None and not img_dir.is_dir():
        raise DatasetError(f"{img_dir}: the images folder does not exist")
    items = [read_voc_xml(xml, img_dir or xml.parent, names) for xml in xmls]
    check_not_empty(items, ann_dir)
    return Dataset(name=name or f"voc:{folder}", kind="voc", root=folder, items=tuple(items),
                   annotation_files=tuple(xmls),
                   extra={"images_dir": str(img_dir or ann_dir), "names": list(names or [])})


def read_voc_xml(xml: Path, img_dir: Path, names: Optional[Sequence[str]] = None) -> Item:
    """One VOC annotation file as an item, checked (its image exists, has the stated size, holds its boxes)."""
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as e:
        raise DatasetError(f"{xml}: not a readable XML file ({e})") from None
    file_name = (root.findtext("filename") or "").strip()
    if not file_name:
        raise DatasetError(f"{xml}: has no <filename>")
    boxes, ignore = [], []
    for k, obj in enumerate(root.findall("object"), 1):
        label = (obj.findtext("name") or "").strip()
        if names and label not in names:
            continue
        bb = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise DatasetError(f"{xml}: object {k} has no numeric <bndbox> xmin/ymin/xmax/ymax") from None
        boxes.append([xmin - 1, ymin - 1, xmax, ymax])
        ignore.append((obj.findtext("difficult") or "0").strip() not in ("0", "", "false"))
    size = None
    sz = root.find("size")
    if sz is not None:
        try:
            size = (int(float(sz.findtext("width"))), int(float(sz.findtext("height"))))
        except (TypeError, ValueError):
            size = None
    path = Path(img_dir) / file_name
    check_images_exist([make_item(path, file_name, (0, 0), [])], xml)
    actual = image_size(path)
    if size is not None and size[0] > 0 and size[1] > 0 and actual != size:
        raise DatasetError(f"{xml}: states {size[0]}x{size[1]}, the image {path} is {actual[0]}x{actual[1]}")
    item = make_item(path, file_name, actual, boxes, ignore)
    check_item_boxes(item, xml)
    return item
