"""Model families: what a network's input expects and how its outputs decode to faces.

A family is shared by every backend, so a table compares runtimes, not re-implementations of NMS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

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
    # Decode + NMS on the device (retinabench.model.device), for variants that run their stages on a
    # GPU: (output_names, threshold, candidates=, max_faces=, nms_iterations=, compile_stage=) -> decoder.
    # None: this family has no device decoder, and such variants are unavailable for it.
    make_device_decoder: Optional[Callable[..., Any]] = None


def _insightface_device_decoder(*args: Any, **kwargs: Any) -> Any:
    from retinabench.model.device.insightface import make_device_decoder  # imports torch when called
    return make_device_decoder(*args, **kwargs)


def _insightface() -> Family:
    from retinabench.model import insightface
    return Family("insightface", insightface.NORMALIZATION,
                  lambda names, thr: insightface.InsightFaceDecoder(names, thr),
                  make_device_decoder=_insightface_device_decoder)


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
