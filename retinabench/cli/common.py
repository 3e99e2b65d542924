"""What several subcommands share: resolving the model and images, and a row's progress display."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

from retinabench.errors import BenchError


def resolve_model(value: str, family: Optional[str] = None) -> Path:
    """An existing model whose files parse: a corrupt model is an error before any worker starts.

    A valid model that our graph cannot express is accepted (the runtimes that load its format run
    it; rows that need the graph are unavailable with the reason). Its family must then be known:
    `family` (the scenario's), or recognised from an ONNX file's inputs and outputs. Without
    `family`, an unrecognised one is left to the caller that knows the scenario (run_scenario's
    open_model refuses it before any row).
    """
    from retinabench.model.source import open_model
    if value == "default":
        from retinabench.defaults import default_model_path
        path = default_model_path()
    else:
        path = Path(os.path.expanduser(value))
    # names what is missing, truncated or inconsistent
    open_model(path, family, require_family=family is not None).check()
    return path


def resolve_images(values: Sequence[str]) -> List[Path]:
    """Existing images that decode whole; 'default' is the PyPI-shipped photo (retinabench.defaults).

    A truncated or corrupt file (the decoder reports damage and would return a partly grey image)
    is an error naming the file, before any row runs (retinabench.model.images.load_image).
    """
    from retinabench.model.images import load_image
    if not values:
        raise BenchError("no images given")
    paths = []
    for v in values:
        if v == "default":
            from retinabench.defaults import default_image_path
            p = default_image_path()
        else:
            p = Path(os.path.expanduser(v))
        load_image(p)
        paths.append(p.resolve())
    return paths


def check_writable_dir(path: Path, what: str) -> Path:
    """`path` as a folder this process could create and write in; else one line naming it. Nothing is
    left behind: a run that stops later (a bad model, say) leaves no empty results folder.

    Checked by creating (and removing) a file in the folder, or, where it does not exist yet, in its
    nearest existing parent, not with os.access: permissions are not the only reason a write fails (a
    read-only mount, /proc, a full quota, root squashed on NFS), and a run should stop before any row
    loads, not after its first row measured for minutes.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "exists and is not a folder" if probe == path else f"cannot be created: {probe} is not a folder"
        raise BenchError(f"{what}: {path} {where}")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".retinabench-write-check-"):
            pass
    except OSError as e:
        verb = "write in the folder" if probe == path else "create the folder"
        raise BenchError(f"{what}: cannot {verb} {path} ({e.strerror or e})") from None
    return path


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
