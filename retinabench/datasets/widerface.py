"""WIDER FACE val: `wider_face_val_bbx_gt.txt`, the images, and the easy/medium/hard setting lists.

Layout (the official downloads, unpacked side by side):
    PATH/wider_face_split/wider_face_val_bbx_gt.txt     (or the txt itself given as PATH)
    PATH/WIDER_val/images/<event>/<name>.jpg
    wider_easy_val.mat, wider_medium_val.mat, wider_hard_val.mat, looked for in PATH,
    PATH/ground_truth, PATH/eval_tools/ground_truth (eval_tools.zip) and PATH/wider_face_split

The txt: an image path line, a count line, then one line per face `x y w h blur expression
illumination invalid occlusion pose`. An image with no face has count 0 and one line of zeros;
the official ground truth (`face_bbx_list` in wider_face_val.mat) holds that line as a box
[0 0 0 0], and the official evaluation scores that image against it (its detections count as
proposals, i.e. false positives). We keep that line as a zero-size box, marked `ignore` and in no
setting, so the protocol sees the image exactly as the official code does.

Setting files (the MATLAB eval_tools' layout, read with scipy.io.loadmat): `event_list` (61x1
cell of event names), `file_list` (61x1 cell of nx1 cells of image names without ".jpg") and
`gt_list` (61x1 cell of nx1 cells of Kx1 arrays: 1-based indices, into that image's boxes, of the
faces the setting counts). Each item's `settings[s]` is the bool keep mask built from them.

Known defect, accepted: the official val annotations hold one box of negative width
(39--Ice_Skating/39_Ice_Skating_iceskiing_39_583, box 8: x=1026 w=-2), and the hard setting
counts it. A box of negative width or height is therefore kept as given in WIDER FACE (it covers
no pixel, no detection can match it, and the official protocol counts it all the same), listed
in describe()["accepted_defects"], and exempt from the inside-the-image check; every other box
is checked as in any dataset (records.check_item_boxes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from retinabench.datasets.image_size import image_size
from retinabench.datasets.records import (Dataset, DatasetError, Item, check_images_exist, check_item_boxes,
                                          check_not_empty, make_item)

SETTINGS = ("easy", "medium", "hard")
GT_TXT = "wider_face_val_bbx_gt.txt"
SETTING_FILES = {s: f"wider_{s}_val.mat" for s in SETTINGS}


def find_layout(path: Path, images: Optional[Path] = None,
                settings_dir: Optional[Path] = None) -> Tuple[Path, Path, Dict[str, Path], Path]:
    """(root, gt txt, setting .mat files, images folder) for a WIDER FACE path, or a one-line error."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: the WIDER FACE path does not exist")
    if path.is_file():
        txt = path
        root = path.parent.parent if path.parent.name == "wider_face_split" else path.parent
    else:
        root = path
        candidates = [path / "wider_face_split" / GT_TXT, path / GT_TXT]
        txt = next((c for c in candidates if c.is_file()), candidates[0])
        if not txt.is_file():
            raise DatasetError(f"{path}: no {GT_TXT} (looked for {candidates[0]} and {candidates[1]})")
    places = ([Path(settings_dir)] if settings_dir else
              [root, root / "ground_truth", root / "eval_tools" / "ground_truth", root / "wider_face_split", txt.parent])
    mats: Dict[str, Path] = {}
    for s, name in SETTING_FILES.items():
        found = next((p / name for p in places if (p / name).is_file()), None)
        if found is None:
            raise DatasetError(f"{root}: no {name} (the {s} setting list; looked in "
                               + ", ".join(str(p) for p in dict.fromkeys(places)) + ")")
        mats[s] = found
    img_dir = Path(images) if images else root / "WIDER_val" / "images"
    if not img_dir.is_dir():
        raise DatasetError(f"{img_dir}: the WIDER FACE images folder does not exist")
    return root, txt, mats, img_dir


def parse_gt_txt(txt: Path) -> List[Tuple[str, np.ndarray, np.ndarray, int]]:
    """[(relative image path, boxes x1,y1,x2,y2 [N,4], invalid flags [N], line number)] in file order."""
    try:
        lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise DatasetError(f"{txt}: cannot be read ({e.strerror or e})") from None
    out = []
    i, n = 0, len(lines)
    while i < n:
        name = lines[i].strip()
        if not name:
            i += 1
            continue
        if not name.lower().endswith((".jpg", ".jpeg", ".png")):
            raise DatasetError(f"{txt}:{i + 1}: expected an image path, found {name[:60]!r}")
        start = i + 1
        try:
            count = int(lines[i + 1].strip())
        except (IndexError, ValueError):
            raise DatasetError(f"{txt}:{i + 2}: expected the number of faces of {name}") from None
        i += 2
        rows = []
        # a count of 0 is followed by one line of zeros (the official [0 0 0 0] box, see above)
        take = count if count > 0 else (1 if i < n and _is_box_line(lines[i]) else 0)
        for k in range(take):
            if i >= n:
                raise DatasetError(f"{txt}:{i}: {name} announces {count} faces, the file ends after {k}")
            fields = lines[i].split()
            try:
                vals = [float(v) for v in fields]
            except ValueError:
                vals = []
            if len(vals) < 4:
                raise DatasetError(f"{txt}:{i + 1}: expected 'x y w h ...' for face {k + 1} of {name}")
            rows.append(vals[:4] + [vals[7] if len(vals) > 7 else 0.0])
            i += 1
        a = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
        boxes = np.stack([a[:, 0], a[:, 1], a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]], axis=1)
        invalid = a[:, 4] != 0
        if count == 0:
            invalid[:] = True  # the placeholder box of an image without faces is no face
        out.append((name, boxes, invalid, start))
    return out


def _is_box_line(line: str) -> bool:
    parts = line.split()
    if len(parts) < 4:
        return False
    try:
        [float(v) for v in parts]
    except ValueError:
        return False
    return True


def read_setting(mat_path: Path) -> Dict[str, np.ndarray]:
    """"event/name" -> 1-based indices of the faces the setting counts, from an eval_tools .mat file."""
    from scipy.io import loadmat

    try:
        m = loadmat(str(mat_path))
    except Exception as e:  # scipy raises several types for a file that is not MATLAB 5 format
        raise DatasetError(f"{mat_path}: not a readable MATLAB .mat file ({type(e).__name__}: {e})") from None
    for key in ("event_list", "file_list", "gt_list"):
        if key not in m:
            raise DatasetError(f"{mat_path}: has no {key} (not a WIDER FACE setting list)")
    events, files, gts = m["event_list"], m["file_list"], m["gt_list"]
    out: Dict[str, np.ndarray] = {}
    try:
        for i in range(len(events)):  # the same indexing as the official evaluation.py
            event = str(events[i][0][0])
            img_list, sub_gt = files[i][0], gts[i][0]
            for j in range(len(img_list)):
                out[f"{event}/{img_list[j][0][0]}"] = np.asarray(sub_gt[j][0], dtype=np.int64).reshape(-1)
    except (IndexError, TypeError) as e:
        raise DatasetError(f"{mat_path}: event_list/file_list/gt_list are not in the WIDER FACE layout ({e})") from None
    return out


def open_widerface(path: Path, images: Optional[Path] = None, settings_dir: Optional[Path] = None,
                   name: Optional[str] = None) -> Dataset:
    root, txt, mats, img_dir = find_layout(path, images, settings_dir)
    parsed = parse_gt_txt(txt)
    settings = {s: read_setting(p) for s, p in mats.items()}
    items: List[Item] = []
    defects: List[str] = []
    keys = set()
    for rel, boxes, invalid, line in parsed:
        key = rel.rsplit(".", 1)[0]
        keys.add(key)
        masks = {}
        for s, table in settings.items():
            if key not in table:
                raise DatasetError(f"{mats[s]}: has no entry for image {key} ({txt}:{line})")
            idx = table[key]
            if idx.size and (idx.min() < 1 or idx.max() > len(boxes)):
                raise DatasetError(f"{mats[s]}: face index {int(idx.max() if idx.max() > len(boxes) else idx.min())} "
                                   f"of image {key} is outside its {len(boxes)} boxes in {txt}:{line} "
                                   f"(the txt and the setting lists disagree)")
            if np.unique(idx).size != idx.size:  # the official count would count such a face twice
                raise DatasetError(f"{mats[s]}: image {key} lists a face index twice")
            mask = np.zeros(len(boxes), dtype=bool)
            mask[idx - 1] = True
            masks[s] = mask
        items.append(make_item(img_dir / rel, key, (0, 0), boxes, invalid, masks))
    for s, table in settings.items():
        extra = sorted(set(table) - keys)
        if extra:
            raise DatasetError(f"{mats[s]}: lists {len(extra)} image(s) that {txt} does not, e.g. {extra[0]}")
    check_not_empty(items, txt)
    check_images_exist(items, txt)
    checked = []
    for it in items:
        it = _with_size(it, image_size(it.path))
        negative = (it.boxes[:, 2] < it.boxes[:, 0]) | (it.boxes[:, 3] < it.boxes[:, 1])
        for k in np.flatnonzero(negative):
            b = it.boxes[k]
            defects.append(f"{it.key} box {k + 1}: x={b[0]:g} y={b[1]:g} w={b[2] - b[0]:g} h={b[3] - b[1]:g}")
        check_item_boxes(it, txt, exempt=negative)
        checked.append(it)
    return Dataset(name=name or f"widerface:{path}", kind="widerface", root=Path(path), items=tuple(checked),
                   annotation_files=(txt, *mats.values()), settings=SETTINGS,
                   extra={"images_dir": str(img_dir), "accepted_defects": defects})


def _with_size(it: Item, size: Tuple[int, int]) -> Item:
    return Item(path=it.path, key=it.key, size=size, boxes=it.boxes, ignore=it.ignore, settings=it.settings)

