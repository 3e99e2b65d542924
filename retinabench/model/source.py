"""Where a model comes from: its files, their format, its family, and its graph on demand.

Formats: `mxnet` (a directory or PREFIX-symbol.json with PREFIX-EPOCH.params), `caffe` (a directory
or .prototxt with a .caffemodel beside it), `onnx` (a .onnx file). Backends receive a ModelSource
and either load the files natively (MXNet loads a checkpoint, Caffe a prototxt) or convert the
graph through retinabench.graph.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from retinabench.errors import ModelError
from retinabench.graph.ir import Graph

FORMATS = ("mxnet", "caffe", "onnx")


@dataclass
class ModelSource:
    path: Path
    format: str
    files: List[Path]
    family: str = "insightface"
    _graph: Optional[Graph] = field(default=None, repr=False)
    _sha: Optional[str] = field(default=None, repr=False)

    def sha256(self) -> str:
        """Hash of the model's files, in a fixed order: identifies the model in results and caches."""
        if self._sha is None:
            h = hashlib.sha256()
            for f in self.files:
                h.update(f.name.encode())
                h.update(f.read_bytes())
            self._sha = h.hexdigest()
        return self._sha

    def graph(self) -> Graph:
        """The model as our IR, imported once."""
        if self._graph is None:
            if self.format == "mxnet":
                from retinabench.graph.mxnet_import import load_mxnet
                self._graph = load_mxnet(self.files[0])
            elif self.format == "caffe":
                from retinabench.graph.caffe_import import load_caffe  # with the Caffe converter
                self._graph = load_caffe(self.files[0], self.files[1])
            else:
                from retinabench.graph.onnx_import import load_onnx  # with the ONNX importer
                self._graph = load_onnx(self.files[0])
            self._graph.family = self.family
        return self._graph

    def check(self) -> "ModelSource":
        """Fail now, in one line, if the files are corrupt, truncated or inconsistent.

        Importing the graph parses every file and checks every reference (weights named by the
        symbol, blobs named by the prototxt), and costs 10-100 ms for RetinaFace: cheap enough to
        run in the main process before any worker starts, so a bad model is an error, not a run of
        failed rows. A model must convert to our IR: every non-native backend runs that graph.
        """
        try:
            self.graph()
        except ModelError:
            raise
        except ImportError as e:  # this interpreter lacks the format's parser (e.g. onnx): the worker checks
            if e.name in ("onnx", "google", "google.protobuf"):
                return self
            raise
        except (RecursionError, MemoryError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                OverflowError, SyntaxError, UnicodeError) as e:  # an importer surprised by hostile bytes
            raise ModelError(f"model {self.path}: cannot be read ({type(e).__name__}: {_first_line(e)})") from None
        return self

    def describe(self) -> Dict[str, str]:
        return {"path": str(self.path), "format": self.format, "family": self.family, "sha256": self.sha256()}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""


def _readable(path: Path) -> Path:
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ModelError(f"model file {path} is not readable ({e.strerror})") from None
    return path


def open_model(path: Path, family: Optional[str] = None) -> ModelSource:
    """Identify a model's format from its files; errors name the path and what is missing."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model {path} does not exist")
    if path.is_dir():
        symbols = sorted(path.glob("*-symbol.json"))
        prototxts = sorted(path.glob("*.prototxt"))
        onnxs = sorted(path.glob("*.onnx"))
        if symbols:
            return _mxnet(symbols[0], family)
        if prototxts:
            return _caffe(prototxts[0], family)
        if onnxs:
            return ModelSource(path, "onnx", [_readable(onnxs[0])], family or "biubug6")
        raise ModelError(f"model directory {path} holds no *-symbol.json, *.prototxt or *.onnx")
    if path.name.endswith("-symbol.json") or path.suffix == ".params":
        return _mxnet(path, family)
    if path.suffix in (".prototxt", ".caffemodel"):
        return _caffe(path, family)
    if path.suffix == ".onnx":
        return ModelSource(path, "onnx", [_readable(path)], family or "biubug6")
    raise ModelError(f"model {path}: unknown format (want an MXNet checkpoint, a Caffe prototxt+caffemodel or .onnx)")


def _mxnet(path: Path, family: Optional[str]) -> ModelSource:
    from retinabench.graph.mxnet_import import find_checkpoint
    symbol, params = find_checkpoint(path)
    return ModelSource(path, "mxnet", [_readable(symbol), _readable(params)], family or "insightface")


def _caffe(path: Path, family: Optional[str]) -> ModelSource:
    stem = path.with_suffix("")
    prototxt, caffemodel = stem.with_suffix(".prototxt"), stem.with_suffix(".caffemodel")
    if not caffemodel.exists():
        models = sorted(path.parent.glob("*.caffemodel"))
        if len(models) != 1:
            raise ModelError(f"{prototxt}: no matching .caffemodel beside it")
        caffemodel = models[0]
    return ModelSource(path, "caffe", [_readable(prototxt), _readable(caffemodel)], family or "insightface")
