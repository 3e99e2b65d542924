"""Bounds for comparing two float32 computations of the same quantity, and the thread count tests use.

Two runtimes, or one runtime on two CPUs (AVX2 or AVX-512 kernels, other blocking, FMA or not), sum
the same terms in another order. Neither result is exact; how far apart they may be follows from
float32 rounding, and scales with the magnitude compared:

    |got - want| <= EPS32 * min(C * sqrt(n), n) * scale + ATOL        (elementwise)

Why: a float32 sum of n terms t_i, in any order, is within n * u * sum|t_i| of the exact sum (u = 2**-24),
and, with rounding errors modelled as independent and mean-zero, within lam * sqrt(n) * u * sum|t_i| but
for a tail of probability ~exp(-lam**2 / 2) (Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019). Two such
results differ by twice that (EPS32 = 2u = 2**-23). Errors of successive layers add in variance, so n
counts every rounding along the longest chain of accumulations (the fan-ins on the path, `chain_lengths`).
sum|t_i| is unknown from the result: scale is max |want| of the tensor, and C covers the difference.

C = 8 = lam * kappa. lam = 4: the tail exp(-8) is for every rounding error at its extreme; spread over
[-u, u] they make 4 * sqrt(3) = 7 standard deviations, more than the largest of a few million elements.
kappa = 2: sum|t_i| / max|want| measured on mnet25's 1x1 output heads is 1.6 to 2.3 (their sums cancel).
Measured worst ratio of a difference to its bound in the suite: 0.35 (AVX-512 kernels), 0.42 (AVX2 or
SSE4.1 kernels forced through ONEDNN_MAX_CPU_ISA, OPENCV_CPU_DISABLE, OPENBLAS_CORETYPE), both on
mnet25's stride-8 landmarks against MXNet. The min with n, the worst case, rules chains shorter than 64.
ATOL = 2**-23, one ulp of 1.0, is the floor where the relative term vanishes (an all-zero map): every
tensor compared here is of order 1 or more.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence, Union

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23
C = 8.0
ATOL = EPS32

# Intra-op threads for every runtime a test runs in-process or in a worker: fixed, so how work is
# split into partial sums never depends on the machine's core count.
THREADS = 2


def rtol(reduction: int, c: float = C) -> float:
    """The relative part of the bound for a chain of `reduction` summed terms: c * EPS32 * sqrt(n), never
    more than the worst case n * EPS32 (which is smaller for chains of fewer than c**2 terms)."""
    if reduction < 1:
        raise ValueError(f"reduction length {reduction} < 1")
    return EPS32 * min(c * math.sqrt(reduction), float(reduction))


def bound(want: np.ndarray, reduction: int, scale: Union[str, float] = "max", c: float = C,
          atol: float = ATOL, exact_want: bool = False) -> np.ndarray:
    """The elementwise bound on |got - want| (see the module's docstring).

    scale: "max" (max |want| of the tensor), "elementwise" (|want|), or a number (the magnitude of the
    terms when `want` is not it). exact_want: `want` was computed in float64, so only `got` rounds and
    the bound is half (u = EPS32 / 2 per term instead of EPS32 for two float32 results)."""
    w = np.abs(np.asarray(want, np.float64))
    if scale == "max":
        s = np.full_like(w, w.max() if w.size else 0.0)
    elif scale == "elementwise":
        s = w
    else:
        s = np.full_like(w, float(scale))
    return rtol(reduction, c) * (0.5 if exact_want else 1.0) * s + atol


def assert_close(got, want, reduction: int, name: str = "", scale: Union[str, float] = "max", c: float = C,
                 atol: float = ATOL, exact_want: bool = False) -> float:
    """Assert |got - want| <= bound elementwise; return the worst ratio |got - want| / bound.

    On failure the message names the worst element: its index, both values, the difference, the
    bound there and their ratio."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    if not got.size:
        return 0.0
    diff = np.abs(got - want)
    lim = bound(want, reduction, scale, c, atol, exact_want)
    ratio = np.where(np.isnan(diff), np.inf, diff / np.maximum(lim, np.finfo(np.float64).tiny))
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    r = float(ratio[worst])
    assert r <= 1.0, (f"{name}: |got - want| exceeds the float32 bound at {tuple(int(i) for i in worst)}: "
                      f"got {got[worst]:.9g}, want {want[worst]:.9g}, diff {diff[worst]:.3g} > bound "
                      f"{lim[worst]:.3g} (ratio {r:.3g}; n={reduction}, C={c}, scale={scale!r}, "
                      f"max diff {float(np.nanmax(diff)):.3g})")
    return r


def assert_all_close(got: Dict[str, np.ndarray], want: Dict[str, np.ndarray], reductions: Dict[str, int],
                     label: str = "", **kw) -> Dict[str, float]:
    """assert_close for every output of a network (the same names in both); returns the ratios."""
    assert set(got) == set(want), f"{label}: outputs {sorted(got)} != {sorted(want)}"
    return {k: assert_close(got[k], want[k], reductions[k], name=f"{label} {k}".strip(), **kw) for k in want}


# ---- reduction lengths of a graph ---------------------------------------------------------------

def _fan_in(node, shapes) -> int:
    """Roundings on the way to one output element of a node: the terms it sums (a bias is a term)."""
    p, a = node.params, node.attrs
    bias = 1 if "bias" in p else 0
    if node.op == "conv":  # weight [O, I/g, kh, kw]: one output sums I/g * kh * kw products
        _, cin, kh, kw = p["weight"].shape
        return cin * kh * kw + bias
    if node.op == "deconv":  # weight [I, O/g, kh, kw]: an output receives ceil(k/s)^2 taps per input channel
        cin = p["weight"].shape[0] // int(a["group"])
        (kh, kw), (sh, sw) = a["kernel"], a["stride"]
        return cin * math.ceil(kh / sh) * math.ceil(kw / sw) + bias
    if node.op == "batchnorm":  # (x - mean) * (gamma / sqrt(var + eps)) + beta: 6 roundings
        return 6
    if node.op == "add":
        return len(node.inputs) - 1
    if node.op == "leaky_relu":  # one product
        return 1
    if node.op == "softmax":  # x - max, exp (3: within 3 ulp), the sum over the axis, the division
        return shapes[node.name][int(a["axis"])] + 4
    return 0  # relu, upsample_nearest, crop_like, concat, reshape, transpose: exact


def chain_lengths(graph, input_shape: Sequence[int]) -> Dict[str, int]:
    """Every tensor's longest chain of accumulations from the input: over all paths, the largest sum
    of the nodes' fan-ins (conv I/g*kh*kw + bias, deconv taps + bias, 6 per batchnorm, 1 per add or
    leaky product, axis + 4 per softmax; copies, crops, relus and reshapes are exact and count 0)."""
    from retinabench.graph.ir import infer_shapes

    shapes = infer_shapes(graph, input_shape)
    n: Dict[str, int] = {graph.input_name: 0}
    for node in graph.nodes:
        n[node.name] = max(n[i] for i in node.inputs) + _fan_in(node, shapes)
    return n


def output_chain_lengths(graph, input_shape: Sequence[int]) -> Dict[str, int]:
    """chain_lengths of the graph's outputs (at least 1: an output that is a copy still compares)."""
    n = chain_lengths(graph, input_shape)
    return {o: max(n[o], 1) for o in graph.outputs}
