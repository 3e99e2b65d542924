"""Import an ONNX RetinaFace into the graph IR, so an ONNX model runs on every backend.

PyTorch exports compute Reshape and Resize sizes at run time (Shape -> Gather -> Unsqueeze ->
Concat -> Reshape). Those subgraphs are folded here: shape vectors are evaluated symbolically,
an entry being an int or a `Dim` (axis of a tensor). That keeps the graph independent of the input
size where the IR can say so: a reshape to [Shape(x)[0], -1, 2] becomes `reshape (0, -1, 2)`, and
a nearest Resize to the size of tensor `r` becomes `upsample_nearest` + `crop_like r` (exact for
any input: 2n or 2n-1 rows, as mnet.25's UpSampling + Crop). Anything else that only depends on
constants is evaluated with onnx's reference evaluator, at the fixed `input_shape` where a shape
must become a number.

What the IR cannot express (an op without a converter, an attribute form the IR lacks) is a
`ConversionError` naming the op and the node: the file is a valid model that the runtimes which
load ONNX themselves can still run; only rows that need our graph are unavailable. A file that
is cut short or inconsistent stays a plain ModelError (refused before any row): when the walk
stops, `integrity_failure` tells the two apart.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from retinabench.errors import BackendUnavailable, ModelError
from retinabench.graph.ir import Graph, Node, infer_shapes

DEFAULT_HW = (640, 640)  # used for folding only when the model's input size is dynamic


class ConversionError(BackendUnavailable, ModelError):
    """A valid model that uses something outside the IR: `conversion needs <op> (node <name>)`.

    A ModelError (it is about the model) and a BackendUnavailable (a row that needs the graph is
    `unavailable` with this one line as its reason, while runtimes that load the file natively run).
    """

    def __init__(self, op: str, node: str, detail: str = ""):
        self.op, self.node, self.detail = op, node, detail
        text = f"conversion needs {op} (node {node})"
        super().__init__(f"{text}: {detail}" if detail else text)

    def __reduce__(self):  # pickles with its own arguments, not the message
        return (type(self), (self.op, self.node, self.detail))


class _Malformed(ModelError):
    """A node whose inputs are missing: a cut-short or inconsistent file, never a conversion gap."""


@dataclass(frozen=True)
class Dim:
    """Axis `axis` of IR tensor `tensor`, still symbolic: lets reshapes keep `0` (copy)."""

    tensor: str
    axis: int


def load_onnx(path: Path, input_shape: Optional[Sequence[int]] = None) -> Graph:
    """Read an ONNX file into a Graph; `input_shape` (N, 3, H, W) is the size used for folding."""
    path = Path(path)
    model = read_onnx(path)
    try:
        graph = _Importer(model, input_shape, str(path)).run()
        graph.validate()
    except ConversionError:
        invalid = integrity_failure(model)
        if invalid:  # the walk stopped on damage, not on a gap in the IR
            raise ModelError(f"{path}: not a valid ONNX model ({invalid})") from None
        raise
    except ModelError as e:  # a file that parses but is cut short fails here too: name the file
        raise ModelError(f"{path}: {e}") from None
    return graph


def read_onnx(path: Path, load_external_data: bool = True):
    """The file's ModelProto; a file that does not parse is one line naming it."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror})") from None
    except Exception as e:  # protobuf's DecodeError and friends: a corrupt or truncated file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: not a valid ONNX model ({first})") from None
    if not model.graph.node:
        raise ModelError(f"{path}: not a valid ONNX model (no graph nodes)")
    return model


def integrity_failure(model) -> str:
    """'' when the model hangs together, else what is broken: what a cut-short or mangled file shows.

    Every node input comes from an earlier node, an initializer or a graph input; every graph
    output is produced; an ONNX opset is recorded (it is serialised after the graph: a file cut
    inside the graph loses it); every ONNX-domain op exists. Not onnx's checker: it also refuses
    models that every runtime runs (a graph output declared without a shape, for one).
    """
    import onnx

    g = model.graph
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        return "no ONNX opset recorded"
    known = {i.name for i in g.input} | {t.name for t in g.initializer}
    for n in g.node:
        for i in n.input:
            if i and i not in known:
                return f"node {n.name!r} ({n.op_type}): input {i!r} comes from no earlier node, initializer or input"
        if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type):
            return f"node {n.name!r}: {n.op_type!r} is not an ONNX op"
        known.update(o for o in n.output if o)
    for o in g.output:
        if o.name not in known:
            return f"graph output {o.name!r} is produced by nothing"
    return ""


def _attrs(node) -> Dict[str, object]:
    from onnx import helper
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


class _Importer:
    def __init__(self, model, input_shape: Optional[Sequence[int]], source: str):
        from onnx import numpy_helper

        self.model = model
        self.source = source
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        g = model.graph
        self.consts: Dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.syms: Dict[str, np.ndarray] = {}      # symbolic int vectors (object arrays of int | Dim)
        self.ir: Dict[str, str] = {}               # ONNX tensor name -> IR tensor name
        self.nodes: List[Node] = []
        self._shapes: Tuple[int, Dict[str, Tuple[int, ...]]] = (-1, {})
        # Every tensor name in the file: names we invent must not collide with one.
        self.taken = set(self.consts) | {o for n in g.node for o in n.output} | {i.name for i in g.input}
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ModelError(f"expected one image input, found {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.input_shape = self._input_shape(inputs[0], input_shape)
        self.ir[self.input_name] = self.input_name

    def _input_shape(self, value_info, given: Optional[Sequence[int]]) -> Tuple[int, ...]:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]
        if len(dims) != 4:
            raise ModelError(f"input {value_info.name!r} must be NCHW, has rank {len(dims)}")
        if given is not None:
            given = tuple(int(d) for d in given)
            for d, g in zip(dims, given):
                if d is not None and d != g:
                    raise ModelError(f"input is fixed to {dims}, cannot fold for {list(given)}")
            return given
        fallback = (1, 3) + DEFAULT_HW
        return tuple(d if d is not None else f for d, f in zip(dims, fallback))

    # ---- shapes of IR tensors at the folding size
    def shape(self, ir_name: str) -> Tuple[int, ...]:
        if self._shapes[0] != len(self.nodes):  # nodes are only appended: recompute when one was
            g = Graph(self.nodes, [], self.input_name)
            self._shapes = (len(self.nodes), infer_shapes(g, self.input_shape))
        return self._shapes[1][ir_name]

    def concrete(self, value: np.ndarray) -> np.ndarray:
        """A symbolic vector with every Dim replaced by its size at the folding input shape."""
        flat = [self.shape(v.tensor)[v.axis] if isinstance(v, Dim) else int(v) for v in value.ravel()]
        return np.asarray(flat, np.int64).reshape(value.shape)

    def value(self, name: str) -> Optional[np.ndarray]:
        """A known value (constant or symbolic), or None for a run-time tensor."""
        if name in self.consts:
            return self.consts[name]
        return self.syms.get(name)

    def tensor(self, name: str, node) -> str:
        if name not in self.ir:
            raise ModelError(f"node {node.name!r} ({node.op_type}): input {name!r} is not an image tensor "
                             "(a constant where the converter needs a run-time tensor)")
        return self.ir[name]

    def const(self, name: str, node) -> np.ndarray:
        v = self.value(name)
        if v is None:
            raise ModelError(f"node {node.name!r} ({node.op_type}): input {name!r} must be constant")
        return self.concrete(v) if v.dtype == object else v

    def add(self, node: Node) -> str:
        self.nodes.append(node)
        return node.name

    # ---- the walk
    def run(self) -> Graph:
        for node in self.model.graph.node:
            if node.domain not in ("", "ai.onnx"):
                raise ConversionError(f"{node.domain}.{node.op_type}", node.name, "not an ONNX-domain op")
            ins = [i for i in node.input]
            try:
                if any(i and i in self.ir for i in ins):
                    self._runtime(node, ins)
                else:
                    self._fold(node, ins)
            except (ConversionError, _Malformed):
                raise
            except ModelError as e:  # a form the IR lacks: name the op and the node, then what
                raise ConversionError(node.op_type, node.name, _detail(str(e), node)) from None
            except (KeyError, ValueError, IndexError, TypeError, AttributeError) as e:  # malformed attributes
                text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                raise ModelError(f"node {node.name!r} ({node.op_type}): cannot convert "
                                 f"({type(e).__name__}: {text})") from None
        outputs = [self._output(o.name) for o in self.model.graph.output]
        nodes = _prune(self.nodes, outputs)
        return Graph(nodes=nodes, outputs=outputs, input_name=self.input_name, family="biubug6", source=self.source)

    def _output(self, name: str) -> str:
        if name not in self.ir:
            raise _Malformed(f"graph output {name!r} is a constant, not computed from the image")
        ir_name = self.ir[name]
        if ir_name != name:  # an Identity as graph output: a no-op reshape carries the name
            self.add(Node(name, "reshape", [ir_name], dict(shape=(0,) * len(self.shape(ir_name)))))
        return name

    # ---- constant and shape folding
    def _fold(self, node, ins: List[str]) -> None:
        vals = [self.value(i) if i else None for i in ins]
        for i, v in zip(ins, vals):
            if i and v is None:
                raise _Malformed(f"node {node.name!r} ({node.op_type}): input {i!r} is produced by nothing")
        if any(v is not None and v.dtype == object for v in vals):
            out = self._fold_symbolic(node, vals)
            if out is not None:
                self.syms[node.output[0]] = out
                return
            vals = [self.concrete(v) if v is not None and v.dtype == object else v for v in vals]
        results = _evaluate(self.model, node, ins, vals)
        for name, r in zip(node.output, results):
            self.consts[name] = r

    def _fold_symbolic(self, node, vals: List[Optional[np.ndarray]]) -> Optional[np.ndarray]:
        """Shape arithmetic that keeps Dims; None means 'evaluate it concretely instead'."""
        op, a = node.op_type, _attrs(node)
        x = vals[0]
        if op in ("Identity", "Cast") and x is not None:
            if op == "Cast" and a.get("to") not in (6, 7):  # int32, int64
                return None
            return x
        if op == "Gather" and x is not None and vals[1] is not None and vals[1].dtype != object:
            return np.asarray(np.take(x, vals[1], axis=int(a.get("axis", 0))), dtype=object)
        if op in ("Unsqueeze", "Squeeze"):
            axes = a.get("axes") if "axes" in a else (list(vals[1]) if len(vals) > 1 and vals[1] is not None else None)
            if op == "Unsqueeze":
                for ax in sorted(int(v) for v in axes):  # type: ignore[union-attr]
                    x = np.expand_dims(x, ax if ax >= 0 else ax + x.ndim + 1)
                return x
            return np.squeeze(x, axis=None if axes is None else tuple(int(v) for v in axes))
        if op == "Concat":
            return np.concatenate([np.asarray(v, dtype=object) for v in vals], axis=int(a["axis"]))
        if op == "Slice" and x is not None and x.ndim == 1:
            if self.opset < 10:
                starts, ends, steps = a["starts"], a["ends"], [1]
            else:
                if any(v is not None and v.dtype == object for v in vals[1:]):
                    return None
                starts, ends = vals[1], vals[2]
                steps = vals[4] if len(vals) > 4 and vals[4] is not None else [1]
            return x[int(starts[0]):int(ends[0]):int(steps[0])]
        return None

    # ---- image tensors
    def _runtime(self, node, ins: List[str]) -> None:
        op, a, out = node.op_type, _attrs(node), node.output[0]
        if op == "Shape":
            dims = np.array([Dim(self.ir[ins[0]], d) for d in range(len(self.shape(self.ir[ins[0]])))], dtype=object)
            self.syms[out] = dims[a.get("start", 0):a.get("end", None)]
            return
        if op in ("Identity", "Dropout"):
            if len(node.output) > 1 and node.output[1]:
                raise ModelError(f"node {node.name!r}: Dropout's mask output is not supported")
            self.ir[out] = self.tensor(ins[0], node)
            return
        x = self.tensor(ins[0], node)
        handler = getattr(self, "_op_" + op, None)
        if handler is None:
            raise ConversionError(op, node.name)
        if any(o for o in node.output[1:]):
            raise ModelError(f"node {node.name!r} ({op}): only the first output is supported")
        self.ir[out] = handler(node, a, ins, x, out)

    def _op_Conv(self, node, a, ins, x, out) -> str:
        w = self.const(ins[1], node).astype(np.float32)
        if w.ndim != 4:
            raise ModelError(f"node {node.name!r}: only 2-D Conv is supported (weight rank {w.ndim})")
        params = {"weight": w}
        if len(ins) > 2 and ins[2]:
            params["bias"] = self.const(ins[2], node).astype(np.float32)
        return self.add(Node(out, "conv", [x], dict(
            kernel=(int(w.shape[2]), int(w.shape[3])), stride=_pair(a.get("strides"), 1),
            pad=_pads(node, a), dilate=_pair(a.get("dilations"), 1), group=int(a.get("group", 1)),
            num_filter=int(w.shape[0])), params))

    def _op_ConvTranspose(self, node, a, ins, x, out) -> str:
        if any(a.get(k) for k in ("output_padding", "output_shape")) or any(int(d) != 1 for d in a.get("dilations", [1, 1])):
            raise ModelError(f"node {node.name!r}: ConvTranspose with output_padding/output_shape/dilations is not supported")
        w = self.const(ins[1], node).astype(np.float32)
        group = int(a.get("group", 1))
        params = {"weight": w}
        if len(ins) > 2 and ins[2]:
            params["bias"] = self.const(ins[2], node).astype(np.float32)
        return self.add(Node(out, "deconv", [x], dict(
            kernel=(int(w.shape[2]), int(w.shape[3])), stride=_pair(a.get("strides"), 1), pad=_pads(node, a),
            group=group, num_filter=int(w.shape[1]) * group), params))

    def _op_BatchNormalization(self, node, a, ins, x, out) -> str:
        gamma, beta, mean, var = (self.const(i, node).astype(np.float32) for i in ins[1:5])
        return self.add(Node(out, "batchnorm", [x], dict(eps=float(a.get("epsilon", 1e-5))),
                             {"gamma": gamma, "beta": beta, "mean": mean, "var": var}))

    def _op_Relu(self, node, a, ins, x, out) -> str:
        return self.add(Node(out, "relu", [x]))

    def _op_LeakyRelu(self, node, a, ins, x, out) -> str:
        return self.add(Node(out, "leaky_relu", [x], dict(alpha=float(a.get("alpha", 0.01)))))

    def _op_Add(self, node, a, ins, x, out) -> str:
        y = self.tensor(ins[1], node)
        if self.shape(x) != self.shape(y):
            raise ModelError(f"node {node.name!r}: Add with broadcasting ({self.shape(x)} + {self.shape(y)}) is not supported")
        return self.add(Node(out, "add", [x, y]))

    def _op_Concat(self, node, a, ins, x, out) -> str:
        rank = len(self.shape(x))
        axis = int(a["axis"]) % rank
        return self.add(Node(out, "concat", [self.tensor(i, node) for i in ins], dict(axis=axis)))

    def _op_Softmax(self, node, a, ins, x, out) -> str:
        shape = self.shape(x)
        rank = len(shape)
        axis = int(a.get("axis", -1 if self.opset >= 13 else 1)) % rank
        # Before opset 13, Softmax normalises over all axes from `axis` on, flattened.
        if self.opset < 13 and int(np.prod(shape[axis + 1:])) != 1:
            raise ModelError(f"node {node.name!r}: opset-{self.opset} Softmax over axes {axis}.. of {shape} "
                             "(flattened) is not supported")
        return self.add(Node(out, "softmax", [x], dict(axis=axis)))

    def _op_Transpose(self, node, a, ins, x, out) -> str:
        rank = len(self.shape(x))
        perm = tuple(int(p) for p in a.get("perm", range(rank - 1, -1, -1)))
        return self.add(Node(out, "transpose", [x], dict(perm=perm)))

    def _op_Reshape(self, node, a, ins, x, out) -> str:
        spec = self.value(ins[1])
        if spec is None:
            raise ModelError(f"node {node.name!r}: Reshape's shape depends on the image values")
        if a.get("allowzero") and any(not isinstance(v, Dim) and int(v) == 0 for v in spec):
            raise ModelError(f"node {node.name!r}: Reshape with allowzero=1 and a 0 dimension is not supported")
        dims = []
        for pos, v in enumerate(spec.ravel()):
            if isinstance(v, Dim) and v.tensor == x and v.axis == pos:
                dims.append(0)  # the input's own dimension: stays valid for any batch/size
            elif isinstance(v, Dim):
                dims.append(self.shape(v.tensor)[v.axis])
            else:
                dims.append(int(v))
        return self.add(Node(out, "reshape", [x], dict(shape=tuple(dims))))

    def _op_Flatten(self, node, a, ins, x, out) -> str:
        axis = int(a.get("axis", 1))
        if axis != 1:
            raise ModelError(f"node {node.name!r}: Flatten axis={axis} is not supported")
        return self.add(Node(out, "reshape", [x], dict(shape=(0, -1))))

    def _op_Resize(self, node, a, ins, x, out) -> str:
        if a.get("mode", "nearest") != "nearest":
            raise ModelError(f"node {node.name!r}: Resize mode={a.get('mode')!r} is not supported (nearest only)")
        if "axes" in a or a.get("coordinate_transformation_mode") == "tf_crop_and_resize":
            raise ModelError(f"node {node.name!r}: Resize with axes or tf_crop_and_resize is not supported")
        sizes_i, scales_i = (3, 2) if self.opset >= 11 else (None, 1)
        sizes = self.value(ins[sizes_i]) if sizes_i is not None and len(ins) > sizes_i and ins[sizes_i] else None
        if sizes is not None and sizes.size:
            return self._resize_to(node, a, x, out, sizes)
        scales = self.const(ins[scales_i], node) if len(ins) > scales_i and ins[scales_i] else None
        if scales is None or not scales.size:
            raise ModelError(f"node {node.name!r}: Resize without scales or sizes")
        return self._resize_by(node, a, x, out, scales)

    def _op_Upsample(self, node, a, ins, x, out) -> str:
        if a.get("mode", "nearest") != "nearest":
            raise ModelError(f"node {node.name!r}: Upsample mode={a.get('mode')!r} is not supported (nearest only)")
        scales = np.asarray(a["scales"]) if "scales" in a else self.const(ins[1], node)
        return self._resize_by(node, a, x, out, scales)

    def _resize_by(self, node, a, x, out, scales: np.ndarray) -> str:
        s = [float(v) for v in np.asarray(scales).ravel()]
        if len(s) != 4 or s[0] != 1 or s[1] != 1 or s[2] != s[3] or s[2] != int(s[2]) or s[2] < 1:
            raise ModelError(f"node {node.name!r}: Resize scales {s}: only equal integer spatial scales are supported")
        scale = int(s[2])
        shape = self.shape(x)
        self._check_nearest(node, a, shape[2:], (shape[2] * scale, shape[3] * scale), scale)
        return self.add(Node(out, "upsample_nearest", [x], dict(scale=scale)))

    def _resize_to(self, node, a, x, out, sizes: np.ndarray) -> str:
        """Resize to a size: upsample by the integer factor, then crop to the reference tensor."""
        sizes = sizes.ravel()
        shape = self.shape(x)
        target = tuple(int(v) for v in self.concrete(sizes.astype(object)))
        if len(target) != 4 or target[:2] != shape[:2]:
            raise ModelError(f"node {node.name!r}: Resize sizes {target} change N or C of {shape}")
        scale = math.ceil(target[2] / shape[2])
        if scale < 1 or math.ceil(target[3] / shape[3]) != scale:
            raise ModelError(f"node {node.name!r}: Resize {shape} -> {target} is not one integer scale")
        refs = {v.tensor for v in sizes[2:] if isinstance(v, Dim)}
        ref_axes = [v.axis if isinstance(v, Dim) else None for v in sizes[2:]]
        if len(refs) == 1 and ref_axes == [2, 3]:
            ref = refs.pop()
            self._check_nearest(node, a, shape[2:], target[2:], scale)
            self._check_nearest(node, a, shape[2:], (shape[2] * scale - 1, shape[3] * scale - 1), scale)
            up = self.add(Node(_fresh(out + "_upsample", self.taken), "upsample_nearest", [x], dict(scale=scale)))
            return self.add(Node(out, "crop_like", [up, ref], dict(offset=(0, 0))))
        if target[2:] != (shape[2] * scale, shape[3] * scale):
            raise ModelError(f"node {node.name!r}: Resize {shape} -> {target} needs a crop, and the size "
                             "does not come from another tensor's shape")
        self._check_nearest(node, a, shape[2:], target[2:], scale)
        return self.add(Node(out, "upsample_nearest", [x], dict(scale=scale)))

    def _check_nearest(self, node, a, src: Sequence[int], dst: Sequence[int], scale: int) -> None:
        """Fail unless these Resize attributes pick source pixel floor(i / scale) on both axes."""
        modes = ("asymmetric", "floor") if node.op_type == "Upsample" or self.opset < 11 else (
            str(a.get("coordinate_transformation_mode", "half_pixel")), str(a.get("nearest_mode", "round_prefer_floor")))
        for n, out in zip(src, dst):
            if not np.array_equal(nearest_source_index(int(n), int(out), *modes), np.arange(int(out)) // scale):
                raise ModelError(f"node {node.name!r}: nearest Resize with {modes} is not a pixel-repeat x{scale} "
                                 f"upsampling for {tuple(src)} -> {tuple(dst)}")


def nearest_source_index(n: int, out: int, transform: str, rounding: str) -> np.ndarray:
    """Which input pixel each of `out` output pixels copies: ONNX Resize's nearest mode, per axis.

    Formulas from the ONNX operator spec (Resize-11..18), the modes onnx.reference implements
    (tests compare the two); other modes are refused.
    """
    i = np.arange(out, dtype=np.float64)
    scale = out / n
    if transform == "asymmetric":
        x = i / scale
    elif transform == "half_pixel":
        x = (i + 0.5) / scale - 0.5
    elif transform == "pytorch_half_pixel":
        x = (i + 0.5) / scale - 0.5 if out > 1 else np.full_like(i, -0.5)
    elif transform == "align_corners":
        x = i * (n - 1) / (out - 1) if out > 1 else np.zeros_like(i)
    else:
        raise ModelError(f"Resize coordinate_transformation_mode={transform!r} is not supported")
    if rounding == "floor":
        idx = np.floor(x)
    elif rounding == "ceil":
        idx = np.ceil(x)
    elif rounding == "round_prefer_floor":
        idx = np.where(x == np.floor(x) + 0.5, np.floor(x), np.round(x))
    elif rounding == "round_prefer_ceil":
        idx = np.where(x == np.floor(x) + 0.5, np.ceil(x), np.round(x))
    else:
        raise ModelError(f"Resize nearest_mode={rounding!r} is not supported")
    return np.clip(idx, 0, n - 1).astype(np.int64)


def _detail(message: str, node) -> str:
    """An importer message without its leading "node 'name' (Op): ", which the reason already says."""
    for prefix in (f"node {node.name!r} ({node.op_type}): ", f"node {node.name!r}: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def _pair(v, default: int) -> Tuple[int, int]:
    if v is None:
        return (default, default)
    v = [int(i) for i in v]
    if len(v) != 2:
        raise ModelError(f"expected a pair, got {v}")
    return v[0], v[1]


def _pads(node, a) -> Tuple[int, int]:
    auto = a.get("auto_pad", "NOTSET")
    if auto not in ("NOTSET", "VALID"):
        raise ModelError(f"node {node.name!r}: auto_pad={auto!r} is not supported")
    p = [int(i) for i in a.get("pads", [0, 0, 0, 0])]
    if len(p) != 4 or p[0] != p[2] or p[1] != p[3]:
        raise ModelError(f"node {node.name!r}: asymmetric pads {p} are not supported")
    return p[0], p[1]


def _fresh(name: str, taken: set) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _prune(nodes: List[Node], outputs: List[str]) -> List[Node]:
    """Drop nodes no output depends on (left over from folded shape computations)."""
    needed = set(outputs)
    keep = []
    for n in reversed(nodes):
        if n.name in needed:
            keep.append(n)
            needed.update(n.inputs)
    return keep[::-1]


def _single_node_model(opset_model, node, names: List[str], values: List[Optional[np.ndarray]]):
    from onnx import helper

    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for n, v in zip(names, values) if n and v is not None]
    outputs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    return helper.make_model(graph, opset_imports=list(opset_model.opset_import), ir_version=opset_model.ir_version)


def _evaluate(model, node, names: List[str], values: List[Optional[np.ndarray]]) -> List[np.ndarray]:
    """Evaluate one node on constant inputs with onnx's reference implementation."""
    from onnx.reference import ReferenceEvaluator

    try:
        ev = ReferenceEvaluator(_single_node_model(model, node, names, values))
        feeds = {n: v for n, v in zip(names, values) if n and v is not None}
        return [np.asarray(r) for r in ev.run(None, feeds)]
    except Exception as e:
        raise ModelError(f"node {node.name!r}: cannot fold {node.op_type} on constants "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
