"""Import an MXNet checkpoint (`prefix-symbol.json` + `prefix-EPOCH.params`) into the graph IR.

The `.params` reader is our own (MXNet's NDArray list format, version 2/3 magic), so the
model can be read where MXNet cannot be installed: the GPU machine, Caffe's Python 3.9.
"""
from __future__ import annotations

import ast
import json
import math
import struct
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from retinabench.errors import ModelError
from retinabench.graph.ir import Graph, Node

_LIST_MAGIC = 0x112
_ND_MAGICS = (0xF993FAC9, 0xF993FACA)  # V2, V3 (numpy-shape semantics); same layout for dense arrays
_DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8, 6: np.int64}


def find_checkpoint(path: Path) -> Tuple[Path, Path]:
    """Resolve a directory, a symbol JSON or a params file to the (symbol, params) pair."""
    path = Path(path)
    if path.is_dir():
        symbols = sorted(path.glob("*-symbol.json"))
        if len(symbols) != 1:
            raise ModelError(f"{path}: expected one *-symbol.json, found {len(symbols)}")
        path = symbols[0]
    if path.name.endswith(".params"):
        prefix = path.name.rsplit("-", 1)[0]
        return path.with_name(prefix + "-symbol.json"), path
    if not path.name.endswith("-symbol.json"):
        raise ModelError(f"{path}: not an MXNet checkpoint (want PREFIX-symbol.json + PREFIX-EPOCH.params)")
    prefix = path.name[: -len("-symbol.json")]
    params = sorted(path.parent.glob(prefix + "-[0-9]*.params"))
    if not params:
        raise ModelError(f"{path}: no {prefix}-EPOCH.params beside it")
    return path, params[-1]


def read_params(path: Path) -> Dict[str, np.ndarray]:
    """Read MXNet's NDArray list format into {'arg:name'|'aux:name': array}."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror})") from None
    return params_from_bytes(data, str(path))


def params_from_bytes(data: bytes, source: str = "<params>") -> Dict[str, np.ndarray]:
    """Parse a .params file's bytes; anything malformed is a ModelError naming `source`."""
    try:
        return _parse_params(data)
    except (struct.error, ValueError, IndexError, OverflowError) as e:
        raise ModelError(f"{source}: corrupt or truncated MXNet params file ({e})") from None


def _parse_params(data: bytes) -> Dict[str, np.ndarray]:
    """Parse the bytes; every inconsistency is a ValueError/struct.error, and no size read from the
    file is trusted before it is checked against the bytes that are actually there."""
    pos = 0

    def take(fmt: str):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return vals

    magic, _reserved = take("QQ")
    if magic != _LIST_MAGIC:
        raise ValueError(f"bad magic {magic:#x}")
    (count,) = take("Q")
    if count > 100_000:
        raise ValueError(f"implausible array count {count}")
    arrays: List[np.ndarray] = []
    for _ in range(count):
        (nd_magic,) = take("I")
        if nd_magic not in _ND_MAGICS:
            raise ValueError(f"bad array magic {nd_magic:#x}")
        (stype,) = take("i")
        if stype != 0:
            raise ValueError("sparse arrays are not supported")
        (ndim,) = take("I")
        if ndim > 8:
            raise ValueError(f"implausible ndim {ndim}")
        shape = take("q" * ndim) if ndim else ()
        if ndim == 0:
            arrays.append(np.zeros((0,), np.float32))
            continue
        take("ii")  # context: device type, device id
        (type_flag,) = take("i")
        if type_flag not in _DTYPES:
            raise ValueError(f"unknown dtype flag {type_flag}")
        dtype = np.dtype(_DTYPES[type_flag])
        if any(d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        size = math.prod(shape)  # Python ints: a hostile shape cannot overflow into a small size
        if pos + size * dtype.itemsize > len(data):
            raise ValueError("array data runs past the end of the file")
        arr = np.frombuffer(data, dtype, size, pos).reshape(shape)
        pos += size * dtype.itemsize
        arrays.append(arr.astype(np.float32))
    (nnames,) = take("Q")
    if nnames != count:
        raise ValueError(f"{nnames} names for {count} arrays")
    names = []
    for _ in range(nnames):
        (n,) = take("Q")
        if pos + n > len(data):
            raise ValueError("name runs past the end of the file")
        names.append(data[pos:pos + n].decode("utf-8"))
        pos += n
    return dict(zip(names, arrays))


def _literal(text: object) -> object:
    """An attribute such as '(3, 3)': Python literal syntax, read without evaluating any code.
    Short strings only: RetinaFace's longest attribute is a reshape spec of a few numbers."""
    text = str(text)
    if len(text) > 200:
        raise ValueError(f"attribute value of {len(text)} characters")
    return ast.literal_eval(text)


def _pair(text: object, default=(0, 0)) -> Tuple[int, int]:
    if text is None:
        return tuple(default)  # type: ignore[return-value]
    v = _literal(text)
    v = (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[arg-type]
    return int(v[0]), int(v[1])


def _bool(text: object) -> bool:
    return str(text).lower() in ("true", "1")


def load_mxnet(path: Path) -> Graph:
    """Parse the symbol and weights into a Graph; unknown ops fail naming the node."""
    symbol_path, params_path = find_checkpoint(Path(path))
    try:
        sym = json.loads(Path(symbol_path).read_text())
        sym_nodes, heads = sym["nodes"], sym["heads"]
    except OSError as e:
        raise ModelError(f"{symbol_path}: cannot read ({e.strerror})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{symbol_path}: not an MXNet symbol JSON ({e})") from None
    raw = read_params(params_path)
    weights = {k.split(":", 1)[-1]: v for k, v in raw.items()}  # "arg:name" / "aux:name"

    where = "the symbol's node list"
    try:
        names = [n["name"] for n in sym_nodes]
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name or not isinstance(sym_nodes[i]["op"], str):
                raise ValueError(f"node {i} needs a name and an op that are non-empty strings")
        nodes: List[Node] = []
        input_name = ""
        for n in sym_nodes:
            where = f"node {n['name']!r}"
            op, name, attrs = n["op"], n["name"], n.get("attrs", n.get("param", {})) or {}
            ins = [names[_index(i[0], names)] for i in n.get("inputs", [])]
            if op == "null":
                if name not in weights and not input_name:
                    input_name = name
                continue
            try:
                nodes.append(_convert(op, name, attrs, ins, weights))
            except KeyError as e:
                if e.args and e.args[0] in names:
                    raise ModelError(f"{params_path}: weight {e} missing for {where}") from None
                raise
        where = "the symbol's heads"
        outputs = [names[_index(h[0], names)] for h in heads]
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, SyntaxError, RecursionError) as e:
        raise ModelError(f"{symbol_path}: malformed {where} ({type(e).__name__}: {e})") from None
    graph = Graph(nodes=nodes, outputs=outputs, input_name=input_name or "data",
                  family="insightface", source=str(symbol_path))
    graph.validate()
    return graph


def _index(i: object, names: List[str]) -> int:
    """A node reference: an index into the node list, never negative (no wrap-around)."""
    if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(names):
        raise IndexError(f"node reference {i!r} out of range")
    return i


def _convert(op: str, name: str, a: dict, ins: List[str], w: Dict[str, np.ndarray]) -> Node:
    data = ins[:1]
    if op == "Convolution":
        weight = w[ins[1]]
        params = {"weight": weight}
        if not _bool(a.get("no_bias", "False")):
            params["bias"] = w[ins[2]]
        return Node(name, "conv", data, dict(
            kernel=_pair(a["kernel"]), stride=_pair(a.get("stride"), (1, 1)), pad=_pair(a.get("pad")),
            dilate=_pair(a.get("dilate"), (1, 1)), group=int(a.get("num_group", 1)),
            num_filter=int(a["num_filter"])), params)
    if op == "Deconvolution":
        params = {"weight": w[ins[1]]}
        if not _bool(a.get("no_bias", "False")):
            params["bias"] = w[ins[2]]
        return Node(name, "deconv", data, dict(
            kernel=_pair(a["kernel"]), stride=_pair(a.get("stride"), (1, 1)), pad=_pair(a.get("pad")),
            group=int(a.get("num_group", 1)), num_filter=int(a["num_filter"])), params)
    if op == "BatchNorm":
        gamma = w[ins[1]]
        if _bool(a.get("fix_gamma", "True")):  # MXNet's default: gamma is treated as 1
            gamma = np.ones_like(gamma)
        return Node(name, "batchnorm", data, dict(eps=float(a.get("eps", 1e-3))),
                    {"gamma": gamma, "beta": w[ins[2]], "mean": w[ins[3]], "var": w[ins[4]]})
    if op == "Activation":
        if a.get("act_type") != "relu":
            raise ModelError(f"node {name!r}: Activation act_type={a.get('act_type')!r} is not supported")
        return Node(name, "relu", data)
    if op == "LeakyReLU":
        if a.get("act_type", "leaky") != "leaky":
            raise ModelError(f"node {name!r}: LeakyReLU act_type={a.get('act_type')!r} is not supported")
        return Node(name, "leaky_relu", data, dict(alpha=float(a.get("slope", 0.25))))
    if op == "UpSampling":
        if a.get("sample_type", "nearest") != "nearest":
            raise ModelError(f"node {name!r}: UpSampling sample_type={a.get('sample_type')!r} is not supported")
        return Node(name, "upsample_nearest", data, dict(scale=int(a["scale"])))
    if op == "Crop":
        if len(ins) != 2 or _bool(a.get("center_crop", "False")):
            raise ModelError(f"node {name!r}: only Crop to a reference tensor at an offset is supported")
        return Node(name, "crop_like", ins[:2], dict(offset=_pair(a.get("offset"))))
    if op in ("elemwise_add", "_Plus", "_plus", "broadcast_add"):
        return Node(name, "add", ins[:2])
    if op == "Concat":
        return Node(name, "concat", ins, dict(axis=int(a.get("dim", 1))))
    if op == "SoftmaxActivation":
        if a.get("mode") != "channel":
            raise ModelError(f"node {name!r}: SoftmaxActivation mode={a.get('mode')!r} is not supported")
        return Node(name, "softmax", data, dict(axis=1))
    if op == "softmax":
        return Node(name, "softmax", data, dict(axis=int(a.get("axis", -1))))
    if op == "Reshape":
        return Node(name, "reshape", data, dict(shape=tuple(_literal(a["shape"]))))
    if op == "transpose":
        return Node(name, "transpose", data, dict(perm=tuple(_literal(a["axes"]))))
    raise ModelError(f"node {name!r}: MXNet op {op!r} is not supported by the converter")
