"""Export the graph IR to an MXNet symbol and parameters, so any imported model runs on MXNet.

The symbol's image input is always `data` (what the MXNet backend binds); every node keeps its
IR name, so `sym.list_outputs()` minus `_output` gives the graph's output names. Parameters are
named `<node>_weight`, `_bias`, `_gamma`, `_beta` (arguments) and `_moving_mean`, `_moving_var`
(auxiliary states), MXNet's own conventions.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from retinabench.errors import ModelError
from retinabench.graph.ir import Graph, Node


def to_mxnet(graph: Graph) -> Tuple[object, Dict[str, object]]:
    """(mx.sym.Symbol, {'arg:NAME' | 'aux:NAME': mx.nd.NDArray}) for `graph`."""
    import mxnet as mx

    graph.validate()
    if any(n.name == "data" for n in graph.nodes):
        raise ModelError("MXNet export: a node is named 'data', the name of the image input")
    syms: Dict[str, object] = {graph.input_name: mx.sym.Variable("data")}
    params: Dict[str, object] = {}

    def var(node: Node, key: str, suffix: str, aux: bool = False):
        name = f"{node.name}_{suffix}"
        params[("aux:" if aux else "arg:") + name] = mx.nd.array(np.asarray(node.params[key], np.float32))
        return mx.sym.Variable(name)

    for n in graph.nodes:
        syms[n.name] = _node(mx, n, [syms[i] for i in n.inputs], var)
    outs = [syms[o] for o in graph.outputs]
    return (outs[0] if len(outs) == 1 else mx.sym.Group(outs)), params


def _node(mx, n: Node, x: list, var):
    a, name = n.attrs, n.name
    if n.op == "conv":
        bias = "bias" in n.params
        args = [x[0], var(n, "weight", "weight")] + ([var(n, "bias", "bias")] if bias else [])
        return mx.sym.Convolution(*args, kernel=tuple(a["kernel"]), stride=tuple(a["stride"]), pad=tuple(a["pad"]),
                                  dilate=tuple(a.get("dilate", (1, 1))), num_group=int(a["group"]),
                                  num_filter=int(a["num_filter"]), no_bias=not bias, name=name)
    if n.op == "deconv":
        bias = "bias" in n.params
        args = [x[0], var(n, "weight", "weight")] + ([var(n, "bias", "bias")] if bias else [])
        return mx.sym.Deconvolution(*args, kernel=tuple(a["kernel"]), stride=tuple(a["stride"]), pad=tuple(a["pad"]),
                                    num_group=int(a["group"]), num_filter=int(a["num_filter"]), no_bias=not bias,
                                    name=name)
    if n.op == "batchnorm":
        return mx.sym.BatchNorm(x[0], var(n, "gamma", "gamma"), var(n, "beta", "beta"),
                                var(n, "mean", "moving_mean", aux=True), var(n, "var", "moving_var", aux=True),
                                eps=float(a["eps"]), fix_gamma=False, use_global_stats=True, name=name)
    if n.op == "relu":
        return mx.sym.Activation(x[0], act_type="relu", name=name)
    if n.op == "leaky_relu":
        return mx.sym.LeakyReLU(x[0], act_type="leaky", slope=float(a["alpha"]), name=name)
    if n.op == "upsample_nearest":
        return mx.sym.UpSampling(x[0], scale=int(a["scale"]), sample_type="nearest", num_args=1, name=name)
    if n.op == "crop_like":
        return mx.sym.Crop(x[0], x[1], offset=tuple(a.get("offset", (0, 0))), num_args=2, name=name)
    if n.op == "add":
        return mx.sym.elemwise_add(x[0], x[1], name=name)
    if n.op == "concat":
        return mx.sym.Concat(*x, dim=int(a["axis"]), num_args=len(x), name=name)
    if n.op == "softmax":
        return mx.sym.softmax(x[0], axis=int(a["axis"]), name=name)
    if n.op == "reshape":
        return mx.sym.Reshape(x[0], shape=tuple(int(d) for d in a["shape"]), name=name)
    if n.op == "transpose":
        return mx.sym.transpose(x[0], axes=tuple(int(p) for p in a["perm"]), name=name)
    raise ModelError(f"node {name!r}: op {n.op!r} has no MXNet export")
