"""What several subcommands share: resolving the model and images, and a row's progress display."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Sequence

from retinabench.errors import BenchError


def resolve_model(value: str) -> Path:
    """An existing model whose files parse: a corrupt model is an error before any worker starts."""
    from retinabench.model.source import open_model
    if value == "default":
        from retinabench.defaults import default_model_path
        path = default_model_path()
    else:
        path = Path(os.path.expanduser(value))
    open_model(path).check()  # names what is missing, truncated or inconsistent
    return path


def resolve_images(values: Sequence[str]) -> List[Path]:
    """Existing, decodable images; 'default' is the PyPI-shipped photo (retinabench.defaults)."""
    import cv2
    if not values:
        raise BenchError("no images given")
    paths = []
    for v in values:
        if v == "default":
            from retinabench.defaults import default_image_path
            p = default_image_path()
        else:
            p = Path(os.path.expanduser(v))
        if not p.exists():
            raise BenchError(f"image {p} does not exist")
        if not p.is_file():
            raise BenchError(f"image {p} is not a file")
        if not os.access(p, os.R_OK):
            raise BenchError(f"image {p} is not readable")
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None or img.size == 0:
            raise BenchError(f"image {p} cannot be decoded as an image")
        paths.append(p.resolve())
    return paths


class ProgressBar:
    """Progress of one row, fed by the worker's progress lines: a tqdm bar on a terminal, a plain
    line at each quarter in a log (where a bar's carriage returns would make one endless line)."""

    def __init__(self, desc: str):
        self._desc = desc
        self._quarter = 0
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=1, desc=desc, unit="loop", leave=False, dynamic_ncols=True, file=sys.stderr)
        else:
            print(f"{desc}: started", file=sys.stderr, flush=True)

    def update_to(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.total = total
            self._bar.n = done
            self._bar.refresh()
        elif total and 4 * done // total > self._quarter:
            self._quarter = 4 * done // total
            print(f"{self._desc}: {done}/{total} loops (warmup included)", file=sys.stderr, flush=True)

    def set_description(self, desc: str) -> None:
        """A new stage of the same bar (an interleaved group's next round); logs get one line each."""
        self._desc = desc
        if self._bar is not None:
            self._bar.set_description(desc)
        else:
            print(desc, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
