"""A content-addressed cache for converted models (Caffe files, ONNX exports, engines).

An entry is a directory named by the sha256 of its key (source model hash, input shape, policy,
converter version, runtime version...). It is built in a temporary directory beside it and renamed
into place, so a crash never leaves a half-written entry; its manifest records each file's sha256,
and an entry whose files do not match the manifest is rebuilt, not used.

Entries live under the user's cache (retinabench.defaults.cache_home: <cache home>/converted),
or under $RETINABENCH_CACHE; never inside the project, which may be installed read-only.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict

from retinabench.defaults import cache_home

MANIFEST = "manifest.json"


def cache_root() -> Path:
    """$RETINABENCH_CACHE, else <cache home>/converted: one folder per kind of artifact below it."""
    own = os.environ.get("RETINABENCH_CACHE")
    return Path(own) if own else cache_home() / "converted"


def key_hash(key: Dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _valid(entry: Path, key: Dict[str, object]) -> bool:
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("key") != json.loads(json.dumps(key, sort_keys=True, default=str)):
        return False
    files = manifest.get("files", {})
    return bool(files) and all((entry / n).is_file() and file_sha256(entry / n) == h for n, h in files.items())


def cached(kind: str, key: Dict[str, object], build: Callable[[Path], None]) -> Path:
    """Directory holding the artifact for `key`; `build(tmpdir)` writes it there when needed."""
    parent = cache_root() / kind
    parent.mkdir(parents=True, exist_ok=True)
    entry = parent / key_hash(key)
    if _valid(entry, key):
        return entry
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))
    try:
        build(tmp)
        files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps({"key": key, "files": files}, sort_keys=True, default=str, indent=1))
        if entry.exists():  # stale or corrupt: replace it
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:  # another process won the race with a valid entry
            if not _valid(entry, key):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry
