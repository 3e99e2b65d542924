"""The graph IR as a PyTorch module: a torch.fx GraphModule with straight-line generated code.

fx writes `forward` as plain Python, one line per node (print `module.code` to read it), so the
module scripts (`torch.jit.script`), compiles (`torch.compile(fullgraph=True)`), captures into
CUDA graphs and converts with `.half()` / `channels_last` like any hand-written network. Convs,
deconvs and batch norms are real `nn` submodules holding the weights; crops and reshapes read
their sizes from the tensors at run time, so one module serves every input size and batch.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from retinabench.errors import ModelError
from retinabench.graph.ir import Graph, Node


def _crop_like(x: torch.Tensor, ref: torch.Tensor, oy: int, ox: int) -> torch.Tensor:
    return x[:, :, oy:oy + ref.shape[2], ox:ox + ref.shape[3]]


def _reshape(x: torch.Tensor, spec: List[int]) -> torch.Tensor:
    # 0 copies the input's dim, -1 is inferred: the IR's rule, resolved per call (any batch).
    dims: List[int] = []
    for i, d in enumerate(spec):
        dims.append(x.shape[i] if d == 0 else d)
    return x.reshape(dims)


def to_torch(graph: Graph, fold_batchnorm: bool = False) -> fx.GraphModule:
    """Build the module (float32, CPU, eval mode). forward(data) returns a tuple in graph.outputs order.

    fold_batchnorm merges each batch norm into the conv before it (fewer kernels on a GPU; the
    weights change by float rounding, so parity tests use the unfolded form).
    """
    graph.validate()
    if fold_batchnorm:
        graph = fold_conv_batchnorm(graph)
    root = nn.Module()
    g = fx.Graph()
    env: Dict[str, fx.Node] = {graph.input_name: g.placeholder(_ident(graph.input_name))}
    for n in graph.nodes:
        ins = [env[i] for i in n.inputs]
        x = ins[0]
        if n.op in ("conv", "deconv", "batchnorm"):
            target = _unique_attr(root, n.name)
            root.add_module(target, _module(n))
            node = g.create_node("call_module", target, (x,), name=_ident(n.name))
        else:
            fn, args, kwargs = _function(n, ins)
            node = g.create_node("call_function", fn, args, kwargs, name=_ident(n.name))
        env[n.name] = node
    g.output(tuple(env[o] for o in graph.outputs))
    module = fx.GraphModule(root, g, class_name="RetinaFaceGraph")
    module.output_names = list(graph.outputs)  # type: ignore[assignment]
    return module.eval()


def _module(n: Node) -> nn.Module:
    a, p = n.attrs, {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in n.params.items()}
    if n.op == "conv":
        w = p["weight"]
        m: nn.Module = nn.Conv2d(w.shape[1] * int(a["group"]), int(a["num_filter"]), tuple(a["kernel"]),
                                 stride=tuple(a["stride"]), padding=tuple(a["pad"]),
                                 dilation=tuple(a.get("dilate", (1, 1))), groups=int(a["group"]), bias="bias" in p)
    elif n.op == "deconv":
        w = p["weight"]
        m = nn.ConvTranspose2d(w.shape[0], int(a["num_filter"]), tuple(a["kernel"]), stride=tuple(a["stride"]),
                               padding=tuple(a["pad"]), groups=int(a["group"]), bias="bias" in p)
    else:
        bn = nn.BatchNorm2d(p["gamma"].shape[0], eps=float(a["eps"]))
        with torch.no_grad():
            bn.weight.copy_(p["gamma"]); bn.bias.copy_(p["beta"])
            bn.running_mean.copy_(p["mean"]); bn.running_var.copy_(p["var"])
        return bn
    with torch.no_grad():
        if tuple(m.weight.shape) != tuple(w.shape):
            raise ModelError(f"node {n.name!r}: weight shape {tuple(w.shape)} != expected {tuple(m.weight.shape)}")
        m.weight.copy_(w)
        if "bias" in p:
            m.bias.copy_(p["bias"])
    return m


def _function(n: Node, ins: List[fx.Node]):
    a, x = n.attrs, ins[0]
    if n.op == "relu":
        return torch.relu, (x,), {}
    if n.op == "leaky_relu":
        return F.leaky_relu, (x, float(a["alpha"])), {}
    if n.op == "upsample_nearest":
        # Integer scale: source index floor(dst / scale), MXNet's pixel duplication exactly.
        return F.interpolate, (x,), {"scale_factor": float(a["scale"]), "mode": "nearest"}
    if n.op == "crop_like":
        oy, ox = a["offset"]
        return _crop_like, (x, ins[1], int(oy), int(ox)), {}
    if n.op == "add":
        return torch.add, (ins[0], ins[1]), {}
    if n.op == "concat":
        return torch.cat, (list(ins),), {"dim": int(a["axis"])}
    if n.op == "softmax":
        return torch.softmax, (x, int(a["axis"])), {}
    if n.op == "reshape":
        return _reshape, (x, [int(d) for d in a["shape"]]), {}
    if n.op == "transpose":
        return torch.permute, (x, [int(d) for d in a["perm"]]), {}
    raise ModelError(f"node {n.name!r}: op {n.op!r} has no PyTorch form")


def fold_conv_batchnorm(graph: Graph) -> Graph:
    """A copy of `graph` where a batch norm that is the only consumer of a conv is folded into it.

    The merged conv takes the batch norm's name, so every later reference still resolves.
    """
    consumers: Dict[str, int] = {}
    for n in graph.nodes:
        for i in n.inputs:
            consumers[i] = consumers.get(i, 0) + 1
    by_name = {n.name: n for n in graph.nodes}
    folded = {n.inputs[0] for n in graph.nodes
              if n.op == "batchnorm" and by_name.get(n.inputs[0]) is not None
              and by_name[n.inputs[0]].op == "conv" and consumers[n.inputs[0]] == 1
              and n.inputs[0] not in graph.outputs}
    nodes: List[Node] = []
    for n in graph.nodes:
        if n.name in folded:
            continue
        if n.op == "batchnorm" and n.inputs[0] in folded:
            conv = by_name[n.inputs[0]]
            p = {k: v.astype(np.float64) for k, v in n.params.items()}
            scale = p["gamma"] / np.sqrt(p["var"] + float(n.attrs["eps"]))
            w = conv.params["weight"].astype(np.float64) * scale[:, None, None, None]
            b = conv.params.get("bias", np.zeros_like(scale)).astype(np.float64)
            bias = (b - p["mean"]) * scale + p["beta"]
            nodes.append(Node(n.name, "conv", list(conv.inputs), dict(conv.attrs),
                              {"weight": w.astype(np.float32), "bias": bias.astype(np.float32)}))
        else:
            nodes.append(n)
    return replace(graph, nodes=nodes)


def _ident(name: str) -> str:
    ident = re.sub(r"\W", "_", name)
    return ident if ident and not ident[0].isdigit() else "_" + ident


def _unique_attr(root: nn.Module, name: str) -> str:
    base = _ident(name)
    target, k = base, 1
    while hasattr(root, target):  # also keeps clear of nn.Module's own attributes
        target, k = f"{base}_{k}", k + 1
    return target
