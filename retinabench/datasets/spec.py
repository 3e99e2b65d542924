"""`open_dataset(spec, cache_dir)`: a dataset named on the command line, opened and validated.

Specs:
    widerface:PATH[,images=DIR][,settings=DIR]   WIDER FACE val (widerface.py says what PATH holds)
    coco:ANNOTATIONS.json[,images=DIR][,names=A,B...]
    voc:FOLDER[,images=DIR][,names=A,B...]
    dlib[:train|:test][@SCALE]                     dlib's faces, fetched into cache_dir (test by default)

Options follow the path after commas; `names=` takes every following comma-separated word up to
the next `key=value` (so paths containing commas cannot be named). Every error is a one-line
DatasetError naming the file (or the spec, for a spec that does not parse), raised before
anything runs.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Tuple

from retinabench.datasets.records import Dataset, DatasetError

KINDS = ("widerface", "coco", "voc", "dlib")
_OPTIONS = {"widerface": ("images", "settings"), "coco": ("images", "names"), "voc": ("images", "names")}


def open_dataset(spec: str, cache_dir: Path, *, fetch: bool = True) -> Dataset:
    """The dataset `spec` names (see the module docstring), validated.

    cache_dir: where fetched data sets (dlib's faces) and their downscaled copies live.
    fetch: whether a dlib spec may fetch the set (apt, network) when it is not cached yet.
    """
    spec = spec.strip()
    m = re.match(r"^([A-Za-z_]+)(.*)$", spec)
    kind = m.group(1).lower() if m else ""
    rest = m.group(2) if m else spec
    if kind == "dlib":
        return _open_dlib(spec, rest, Path(cache_dir), fetch)
    if kind not in KINDS or not rest.startswith(":") or len(rest) < 2:
        if kind in KINDS:
            raise DatasetError(f"dataset {spec!r}: write {kind}:PATH")
        raise DatasetError(f"dataset {spec!r}: unknown dataset kind {kind or spec!r} (known: {', '.join(KINDS)})")
    path, opts = _split_options(spec, kind, rest[1:])
    if kind == "widerface":
        from retinabench.datasets.widerface import open_widerface

        return open_widerface(path, images=_opt_path(opts, "images"), settings_dir=_opt_path(opts, "settings"),
                              name=spec)
    from retinabench.datasets.folders import open_coco, open_voc

    opener = open_coco if kind == "coco" else open_voc
    return opener(path, images=_opt_path(opts, "images"), names=opts.get("names") or None, name=spec)


def _open_dlib(spec: str, rest: str, cache_dir: Path, fetch: bool) -> Dataset:
    from retinabench.datasets.dlib_faces import SPLITS, open_dlib

    m = re.match(r"^(?::([A-Za-z]+))?(?:@(.+))?$", rest)
    if not m:
        raise DatasetError(f"dataset {spec!r}: write dlib[:train|:test][@SCALE], e.g. dlib:test@0.5")
    split = (m.group(1) or "test").lower()
    if split not in SPLITS:
        raise DatasetError(f"dataset {spec!r}: unknown dlib split {split!r} (known: {', '.join(SPLITS)})")
    if m.group(2) is not None:  # refuse a bad scale before fetching anything
        from retinabench.datasets.downscale import parse_scale

        parse_scale(m.group(2), f"dataset {spec!r}")
    return open_dlib(cache_dir, split, m.group(2), fetch=fetch)


def _split_options(spec: str, kind: str, text: str) -> Tuple[Path, Dict[str, List[str]]]:
    parts = text.split(",")
    path = Path(parts[0]).expanduser()
    opts: Dict[str, List[str]] = {}
    key = None
    for part in parts[1:]:
        if "=" in part:
            key, value = part.split("=", 1)
            key = key.strip()
            if key not in _OPTIONS[kind]:
                raise DatasetError(f"dataset {spec!r}: unknown option {key!r} for {kind} "
                                   f"(known: {', '.join(_OPTIONS[kind])})")
            opts[key] = [value.strip()] if value.strip() else []
        elif key == "names" and part.strip():
            opts[key].append(part.strip())
        else:
            raise DatasetError(f"dataset {spec!r}: cannot read {part!r} (options are key=value after the path)")
    return path, opts


def _opt_path(opts: Dict[str, List[str]], key: str):
    vals = opts.get(key)
    return Path(vals[0]).expanduser() if vals else None
