"""Model families: what a network's input expects and how its outputs decode to faces.

A family is shared by every backend, so a table compares runtimes, not re-implementations of NMS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

import numpy as np

from retinabench.errors import ModelError
from retinabench.model.detections import Faces
from retinabench.model.preprocess import ImageMeta, Normalization

Decoder = Callable[[Dict[str, np.ndarray], List[ImageMeta]], List[Faces]]


@dataclass(frozen=True)
class Family:
    name: str
    normalization: Normalization
    make_decoder: Callable[[Sequence[str], float], Decoder]
    # Input sizes the network accepts in 'native' mode must be multiples of this (1: any size).
    size_multiple: int = 1


def _insightface() -> Family:
    from retinabench.model import insightface
    return Family("insightface", insightface.NORMALIZATION,
                  lambda names, thr: insightface.InsightFaceDecoder(names, thr))


def _biubug6() -> Family:
    from retinabench.model import biubug6  # added with the second family
    return Family("biubug6", biubug6.NORMALIZATION,
                  lambda names, thr: biubug6.Biubug6Decoder(names, thr), size_multiple=32)


_FAMILIES: Dict[str, Callable[[], Family]] = {"insightface": _insightface, "biubug6": _biubug6}


def get_family(name: str) -> Family:
    try:
        return _FAMILIES[name]()
    except KeyError:
        raise ModelError(f"unknown model family {name!r} (known: {', '.join(_FAMILIES)})") from None
