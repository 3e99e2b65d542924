"""Where a model comes from: its files, their format, its family, and its graph on demand.

Formats: `mxnet` (a directory or PREFIX-symbol.json with PREFIX-EPOCH.params), `caffe` (a directory
or .prototxt with a .caffemodel beside it), `onnx` (a .onnx file). Backends receive a ModelSource
and either load the files natively (MXNet loads a checkpoint, Caffe a prototxt, ONNX Runtime,
OpenVINO, OpenCV and TensorRT an .onnx) or convert the graph through retinabench.graph.

A model whose graph our IR cannot express (an ONNX op without a converter) still runs, as it is,
on the runtimes that load its format (NATIVE_BACKENDS): the rows that need the graph are
`unavailable: conversion needs <op> (node <name>)`. Its family (preprocessing and decode) must be
known then without the graph: named (the scenario's `family:`), or recognised from the ONNX file's
inputs and outputs (`recognise_family`).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from retinabench.errors import ModelError
from retinabench.graph.ir import Graph
from retinabench.graph.onnx_import import ConversionError

FORMATS = ("mxnet", "caffe", "onnx")
FAMILIES = ("insightface", "biubug6")
# The backends that run each format's own files, without our graph.
NATIVE_BACKENDS = {"onnx": ("onnxruntime", "openvino", "opencv-onnx", "tensorrt"),
                   "mxnet": ("mxnet",), "caffe": ("caffe", "opencv-caffe")}

Shape = Optional[Tuple[Optional[int], ...]]   # None: no shape declared; a None entry: a symbolic dim


@dataclass
class ModelSource:
    path: Path
    format: str
    files: List[Path]
    family: Optional[str] = "insightface"   # None only from open_model(require_family=False)
    _graph: Optional[Graph] = field(default=None, repr=False)
    _sha: Optional[str] = field(default=None, repr=False)
    _conversion: Optional[ConversionError] = field(default=None, repr=False)
    _io: Optional[Tuple[List[Tuple[str, Shape]], List[Tuple[str, Shape]]]] = field(default=None, repr=False)
    # seconds spent importing the graph (every attempt, a failed one too): a row's load time splits on it
    graph_import_s: float = field(default=0.0, repr=False, compare=False)

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
        """The model as our IR, imported once.

        A valid model the IR cannot express raises ConversionError (a BackendUnavailable: the row
        that asked is `unavailable: conversion needs <op> (node <name>)`), every time it is asked.
        """
        if self._conversion is not None:
            raise self._conversion
        if self._graph is None:
            t0 = time.perf_counter()
            try:
                if self.format == "mxnet":
                    from retinabench.graph.mxnet_import import load_mxnet
                    graph = load_mxnet(self.files[0])
                elif self.format == "caffe":
                    from retinabench.graph.caffe_import import load_caffe  # with the Caffe converter
                    graph = load_caffe(self.files[0], self.files[1])
                else:
                    from retinabench.graph.onnx_import import load_onnx  # with the ONNX importer
                    graph = load_onnx(self.files[0])
            except ConversionError as e:
                self._conversion = e
                raise
            finally:
                self.graph_import_s += time.perf_counter() - t0
            if self.family:
                graph.family = self.family
            self._graph = graph
        return self._graph

    def conversion_failure(self) -> str:
        """'' when the graph imports, else the one line that says what conversion needs."""
        try:
            self.graph()
        except ConversionError as e:
            return str(e)
        return ""

    def io(self) -> Tuple[List[Tuple[str, Shape]], List[Tuple[str, Shape]]]:
        """An ONNX model's image inputs and its outputs as declared in the file: (name, shape) in file order."""
        if self.format != "onnx":
            raise ModelError(f"model {self.path}: io() reads ONNX files only (this is {self.format})")
        if self._io is None:
            from retinabench.graph.onnx_import import read_onnx
            self._io = onnx_io(read_onnx(self.files[0], load_external_data=False))
        return self._io

    def check(self) -> "ModelSource":
        """Fail now, in one line, if the files are corrupt, truncated or inconsistent.

        Importing the graph parses every file and checks every reference (weights named by the
        symbol, blobs named by the prototxt), and costs 10-100 ms for RetinaFace: cheap enough to
        run in the main process before any worker starts, so a bad model is an error, not a run of
        failed rows. A valid model that does not convert to our IR is accepted: the backends that
        load its format natively (NATIVE_BACKENDS) run it, the others say why they cannot.
        """
        try:
            self.graph()
        except ConversionError:
            if not NATIVE_BACKENDS.get(self.format):
                raise
            return self
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


def open_model(path: Path, family: Optional[str] = None, require_family: bool = True) -> ModelSource:
    """Identify a model's format from its files; errors name the path and what is missing.

    `family` None: the format's (MXNet and Caffe: insightface), or for ONNX what its inputs and
    outputs say (recognise_family). An ONNX model whose family cannot be told is an error unless
    `require_family` is False (the caller learns the family later, e.g. from the scenario); its
    `family` is then None.
    """
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
            return _onnx(path, onnxs[0], family, require_family)
        raise ModelError(f"model directory {path} holds no *-symbol.json, *.prototxt or *.onnx")
    if path.name.endswith("-symbol.json") or path.suffix == ".params":
        return _mxnet(path, family)
    if path.suffix in (".prototxt", ".caffemodel"):
        return _caffe(path, family)
    if path.suffix == ".onnx":
        return _onnx(path, path, family, require_family)
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


def _onnx(path: Path, file: Path, family: Optional[str], require_family: bool) -> ModelSource:
    source = ModelSource(path, "onnx", [_readable(file)], family)
    if family is not None:
        return source
    try:
        inputs, outputs = source.io()
    except ImportError as e:  # no onnx in this interpreter: nothing can be told from the file
        if e.name not in ("onnx", "google", "google.protobuf"):
            raise
        if require_family:
            raise ModelError(f"model {path}: cannot tell its family without the onnx package; "
                             f"name it: `family: {' | '.join(FAMILIES)}` in the scenario") from None
        return source
    source.family, why = recognise_family(inputs, outputs)
    if source.family is None:  # the file leaves shapes symbolic: the graph's, where it converts
        converted = _graph_outputs(source, inputs)
        if converted is not None:
            source.family = recognise_family(inputs, converted)[0]
            if source.family:
                source.graph().family = source.family
    if source.family is None and require_family:
        from retinabench.graph.onnx_import import integrity_failure, read_onnx
        invalid = integrity_failure(read_onnx(file, load_external_data=False))
        if invalid:  # damage, not an unknown layout: say so, as check() would
            raise ModelError(f"{file}: not a valid ONNX model ({invalid})")
        raise ModelError(f"model {path}: cannot tell its family from its inputs and outputs ({why}); "
                         f"name it: `family: {' | '.join(FAMILIES)}` in the scenario")
    return source


def _graph_outputs(source: ModelSource, inputs: Sequence[Tuple[str, Shape]]) -> Optional[List[Tuple[str, Shape]]]:
    """The outputs' shapes from our graph at the importer's folding size; None when it does not convert."""
    from retinabench.graph.ir import infer_shapes
    from retinabench.graph.onnx_import import DEFAULT_HW
    try:
        graph = source.graph()
        declared = inputs[0][1] if len(inputs) == 1 and inputs[0][1] is not None else ()
        fold = tuple(d if d is not None else f for d, f in zip(declared or (None,) * 4, (1, 3) + DEFAULT_HW))
        shapes = infer_shapes(graph, fold)
        return [(o, tuple(shapes[o])) for o in graph.outputs]
    except Exception:  # does not convert, or hostile bytes: check() says what is wrong
        return None


def onnx_io(model) -> Tuple[List[Tuple[str, Shape]], List[Tuple[str, Shape]]]:
    """(name, shape) of an ONNX ModelProto's image inputs (initializers left out) and outputs."""
    g = model.graph
    weights = {t.name for t in g.initializer}

    def shape(value_info) -> Shape:
        t = value_info.type
        if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            return None
        return tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim)

    return ([(i.name, shape(i)) for i in g.input if i.name not in weights],
            [(o.name, shape(o)) for o in g.output])


def recognise_family(inputs: Sequence[Tuple[str, Shape]], outputs: Sequence[Tuple[str, Shape]]
                     ) -> Tuple[Optional[str], str]:
    """(family, '') when the inputs and outputs have one family's layout, else (None, why not).

    insightface (FACTS.md): per stride 32, 16, 8 one output each named ..cls.., ..bbox..,
    ..landmark.. ending in `stride<s>`, NCHW maps of 2A, 4A and 10A channels (A anchors). biubug6:
    three outputs loc [B, N, 4], conf [B, N, 2], landmarks [B, N, 10], told apart by name (as
    the biubug6 decoder does) or by their last axis. Either way one NCHW image input of 3 channels.
    Shapes the file leaves symbolic are not held against a layout; declared ones must fit it.
    """
    if len(inputs) != 1:
        return None, f"{len(inputs)} image inputs ({', '.join(n for n, _ in inputs) or 'none'}), not one"
    name, shape = inputs[0]
    if shape is not None and (len(shape) != 4 or shape[1] not in (None, 3)):
        return None, f"input {name!r} has shape {_fmt(shape)}, not [N, 3, H, W]"
    names = [n for n, _ in outputs]
    shapes = dict(outputs)
    why_insightface = _insightface_layout(names, shapes)
    if not why_insightface:
        return "insightface", ""
    why_biubug6 = _biubug6_layout(names, shapes)
    if not why_biubug6:
        return "biubug6", ""
    listed = ", ".join(f"{n} {_fmt(shapes[n])}" for n in names)
    if len(listed) > 240:
        listed = listed[:240] + "..."
    return None, f"outputs {listed or 'none'}: not insightface ({why_insightface}), not biubug6 ({why_biubug6})"


def _insightface_layout(names: List[str], shapes: Dict[str, Shape]) -> str:
    from retinabench.model import insightface
    try:
        roles = insightface.output_roles(names)
    except ModelError:
        return "no cls/bbox/landmark outputs named ..stride32/16/8"
    for stride, group in roles.items():
        for n in group:
            if shapes[n] is not None and len(shapes[n]) != 4:  # type: ignore[arg-type]
                return f"{n!r} has shape {_fmt(shapes[n])}, not an NCHW map"
        cls, bbox, lmk = (shapes[n][1] if shapes[n] is not None else None for n in group)  # type: ignore[index]
        anchors = cls // 2 if cls is not None and cls % 2 == 0 and cls > 0 else None
        if cls is not None and anchors is None:
            return f"{group[0]!r} has {cls} channels, not 2 per anchor"
        per_anchor = [(bbox, 4), (lmk, 10)]
        if anchors is None:  # the cls channels are symbolic: bbox and landmark must still agree
            if bbox is not None and lmk is not None and bbox * 10 != lmk * 4:
                return f"stride {stride}: {bbox} bbox and {lmk} landmark channels are not 4 and 10 per anchor"
            continue
        for (channels, k), n in zip(per_anchor, group[1:]):
            if channels is not None and channels != k * anchors:
                return f"{n!r} has {channels} channels, not {k} x {anchors} anchors"
    return ""


_BIUBUG6_WIDTH = {"loc": 4, "conf": 2, "landmarks": 10}


def _biubug6_layout(names: List[str], shapes: Dict[str, Shape]) -> str:
    from retinabench.model import biubug6
    if len(names) != 3:
        return f"{len(names)} outputs, not 3 (loc, conf, landmarks)"
    roles = biubug6.output_roles(names)
    if roles is None:
        widths = {s[2]: n for n, s in shapes.items() if s is not None and len(s) == 3 and s[2] is not None}
        if sorted(widths) != sorted(_BIUBUG6_WIDTH.values()):
            return "names do not say loc/conf/landmarks and the shapes are not [B, N, 4], [B, N, 2], [B, N, 10]"
        return ""
    for role, n in roles.items():
        s = shapes[n]
        if s is not None and (len(s) != 3 or s[2] not in (None, _BIUBUG6_WIDTH[role])):
            return f"{n!r} ({role}) has shape {_fmt(s)}, not [B, N, {_BIUBUG6_WIDTH[role]}]"
    return ""


def _fmt(shape: Shape) -> str:
    if shape is None:
        return "[?]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
