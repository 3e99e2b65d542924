"""Calibration for the INT8 rows: which images, preprocessed how, and the cache of quantised models.

Shared by the `int8` variants of onnxruntime (static QDQ through `quantize_static`) and openvino
(NNCF post-training quantisation), so both calibrate on the same images, the same way.

Which images (the backend option `calibration`):
- unset, `dlib:train` or `dlib` (also `dlib@SCALE`): the **training** split of dlib's annotated
  faces (4 photos, retinabench.datasets, fetched from Debian's dlib source package into the
  datasets cache when needed). Never its test split by default: accuracy runs evaluate on that.
- any other dataset spec `open_dataset` reads (`dlib:train@0.5`, `voc:DIR`, `coco:FILE.json`,
  `widerface:PATH`): that dataset's images.
- anything else is a folder (`/path/to/folder`, `~/folder`, a relative path from the working
  directory, or explicitly `folder:PATH`, e.g. for a folder named `dlib`): its *.jpg, *.jpeg,
  *.png, *.bmp files (not recursive).
Images are fed in the order of their sha256, so the same images are the same calibration (and
the same cached model) whichever spec named them.
Refusing a calibration set that overlaps an evaluation split is the accuracy command's job: it
calls `row_calibration(name, variant, options)` (or `calibration_images(options)`) for each row and
compares the sha256 of the images with the dataset's.

How they are preprocessed: by the model family's own Preprocessor (its normalization) in `fit`
mode at the row's input size (width x height of the network input), the stage the speed rows run.
A row in `native` mode has one fixed input shape too (its image's size): calibration photos of
other sizes are fitted into it, so the calibrated ranges are those of images as the network sees
them at that shape. A batch of B is filled with B consecutive calibration images (wrapping round).

Errors: a set that cannot be had is one line. A folder that does not exist, holds no images, or
an image that does not decode is a BenchError (the row fails: the user can fix it); dlib's set
when apt cannot reach Debian's sources is BackendUnavailable (the row is unavailable, with apt's
reason).

Caching: a quantised model is a retinabench.graph.cache entry keyed by the source model's sha256,
the input shape, the family's preprocessing, the calibration images' sha256, the method and the
runtime (and NNCF) versions. Its build runs under a file lock, so rows loading at once in several
worker processes quantise once: the others wait and reuse it, and record `cached: true`.
"""
from __future__ import annotations

import dataclasses
import fcntl
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from retinabench.errors import BackendUnavailable, BenchError

DEFAULT_CALIBRATION = "dlib:train"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# Bump when the calibration blobs or the cache key change meaning: old entries are then not reused.
CALIBRATION_VERSION = 1


@dataclass(frozen=True)
class CalibrationSet:
    """The images a row calibrates on, each with its sha256, in the order they are fed (by sha256)."""

    spec: str                       # as given (normalised), e.g. "dlib:train" or the folder
    source: str                     # what it is: "dataset dlib:train (...)" or "folder /abs/path"
    paths: Tuple[Path, ...]
    sha256: Tuple[str, ...]

    def describe(self) -> Dict[str, Any]:
        """What a row records in its settings' extras."""
        return {"calibration": self.spec, "calibration_source": self.source,
                "calibration_images": [str(p) for p in self.paths],
                "calibration_sha256": list(self.sha256)}


def _spec_of(options: Any) -> Optional[str]:
    """The `calibration` option of a backend's Options record or of a raw options mapping."""
    if options is None:
        return None
    if isinstance(options, Mapping):
        return options.get("calibration")
    return getattr(options, "calibration", None)


def _is_folder(spec: str) -> bool:
    """A folder unless it reads as a dataset spec (`dlib...`, `voc:`, `coco:`, `widerface:`)."""
    from retinabench.datasets import KINDS

    if spec.startswith("folder:"):
        return True
    return not re.match(r"^(%s)(:|@|$)" % "|".join(KINDS), spec, re.IGNORECASE)


def resolve_calibration(spec: Optional[str], cache_dir: Optional[Path] = None, fetch: bool = True) -> CalibrationSet:
    """The calibration set `spec` names (None: dlib's training split), its images hashed.

    cache_dir: where dlib's faces are fetched (default: retinabench.datasets.default_cache_dir()).
    fetch: whether dlib's faces may be fetched (apt, network) when they are not cached yet.
    """
    from retinabench.datasets import DatasetError, SourceUnreachable, default_cache_dir, open_dataset
    from retinabench.graph.cache import file_sha256

    text = (spec or DEFAULT_CALIBRATION).strip()
    if not text:
        text = DEFAULT_CALIBRATION
    if _is_folder(text):
        folder = Path(text[len("folder:"):] if text.startswith("folder:") else text).expanduser()
        folder = folder if folder.is_absolute() else Path.cwd() / folder
        if not folder.exists():
            raise BenchError(f"calibration folder {folder} does not exist")
        if not folder.is_dir():
            raise BenchError(f"calibration folder {folder} is not a folder")
        paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise BenchError(f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        source, text = f"folder {folder}", str(folder)
    else:
        m = re.match(r"^dlib(@.*)?$", text, re.IGNORECASE)
        if m:  # no split named: dlib's own default is test, calibration's is train
            text = DEFAULT_CALIBRATION + (m.group(1) or "")
        try:
            ds = open_dataset(text, Path(cache_dir) if cache_dir else default_cache_dir(), fetch=fetch)
        except SourceUnreachable as e:
            raise BackendUnavailable(f"calibration set {text}: {e}") from None
        except DatasetError as e:
            raise BenchError(f"calibration set {text}: {e}") from None
        paths = [it.path for it in ds.items]
        if not paths:
            raise BenchError(f"calibration set {text} holds no images")
        source, text = f"dataset {ds.name} ({ds.num_images} images; {ds.extra.get('source', ds.kind)})", ds.name
    # Fed in the order of their sha256: the same images are the same calibration (and the same cached
    # model) whether a dataset or a folder named them, and in whatever order.
    hashed = sorted((file_sha256(Path(p)), Path(p)) for p in paths)
    return CalibrationSet(text, source, tuple(p for _, p in hashed), tuple(h for h, _ in hashed))


def calibration_images(options: Any = None, cache_dir: Optional[Path] = None, fetch: bool = True) -> List[Path]:
    """The images a row with these backend options calibrates on (options: mapping or Options record)."""
    return list(resolve_calibration(_spec_of(options), cache_dir, fetch).paths)


def calibration_hashes(options: Any = None, cache_dir: Optional[Path] = None, fetch: bool = True) -> Dict[str, str]:
    """{image path: sha256} of the images a row with these backend options calibrates on."""
    cal = resolve_calibration(_spec_of(options), cache_dir, fetch)
    return {str(p): h for p, h in zip(cal.paths, cal.sha256)}


def row_calibration(name: str, variant: str, options: Any = None, cache_dir: Optional[Path] = None,
                    fetch: bool = True) -> Optional[CalibrationSet]:
    """The calibration set of a backend entry (name, variant, options), or None for a row that does
    not calibrate (every variant whose precision is not int8)."""
    from backends.base import backend_class

    cls = backend_class(name)
    spec = cls.variants.get(variant)
    if getattr(spec, "precision", "") != "int8":
        return None
    return resolve_calibration(_spec_of(options), cache_dir, fetch)


def refuse_unless_int8(backend: Any) -> None:
    """A `calibration` option on a row that does not calibrate is a mistake, not something to ignore."""
    if getattr(backend.spec, "precision", "") != "int8" and _spec_of(backend.options):
        raise BenchError(f"backend {backend.name!r} variant {backend.variant!r}: option calibration applies "
                         f"to the int8 variant only")


# ---- blobs
def calibration_blobs(cal: CalibrationSet, family_name: str, batch: int, height: int, width: int) -> List[np.ndarray]:
    """The calibration images as the row's network input: the family's Preprocessor, fit to width x height.

    ceil(n / batch) blobs of shape (batch, 3, height, width), each a copy (the Preprocessor reuses its buffer).
    """
    from retinabench.model.family import get_family
    from retinabench.model.images import load_image
    from retinabench.model.preprocess import Preprocessor

    pre = Preprocessor(get_family(family_name).normalization, "fit", (int(width), int(height)))
    images = [load_image(p) for p in cal.paths]
    n = len(images)
    blobs = []
    for start in range(0, n, batch):
        group = [images[(start + i) % n] for i in range(batch)]
        blob, _ = pre(group)
        blobs.append(blob.copy())
    return blobs


def preprocess_record(family_name: str, height: int, width: int) -> Dict[str, Any]:
    """How the calibration blobs were made, for the cache key and the row's record."""
    from retinabench.model.family import get_family

    norm = get_family(family_name).normalization
    return {"family": family_name, "mode": "fit", "width": int(width), "height": int(height),
            "normalization": dataclasses.asdict(norm)}


# ---- cache
def cached_quantized(kind: str, key: Dict[str, Any],
                     build: Callable[[Path], None]) -> Tuple[Path, bool, Dict[str, float]]:
    """(entry folder, came from the cache, timings) for a quantised model; `build(dir)` writes it.

    The build runs under an exclusive lock on <cache>/<kind>/<key hash>.lock, so processes loading
    the same row at once quantise once; timings: `cache_wait_s` (waiting for the lock) and, when
    built here, `quantize_s`.
    """
    from retinabench.graph.cache import cache_root, cached, key_hash

    parent = cache_root() / kind
    parent.mkdir(parents=True, exist_ok=True)
    built: List[float] = []

    def timed_build(d: Path) -> None:
        t = time.perf_counter()
        build(d)
        built.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    with open(parent / f"{key_hash(key)}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        timings = {"cache_wait_s": round(time.perf_counter() - t0, 3)}
        try:
            entry = cached(kind, key, timed_build)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if built:
        timings["quantize_s"] = round(built[0], 3)
    return entry, not built, timings
