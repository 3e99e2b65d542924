"""Fetch dlib's annotated face photos from Debian's `dlib` source package, verified and cached.

No package on PyPI, npm or Debian ships WIDER FACE, FDDB or AFW; Debian's `dlib` source package
(19.24+dfsg) ships dlib's face-detector example set in `examples/faces/`: 9 PASCAL VOC photos,
`training.xml` (4 images, 18 boxes), `testing.xml` (5 images, 25 boxes) and the
`*_with_face_landmarks.xml` variants. The PyPI `dlib` sdist does not contain them.

How, without changing the system's apt sources: a deb-src line for the mirror and suite the
machine already uses for Debian (read from /etc/apt/sources.list, sources.list.d/*.list and
*.sources) is written to a temporary file, and apt runs with its sources, lists and caches
pointed into a temporary folder:
    apt-get -o Dir::Etc::sourcelist=FILE -o Dir::Etc::sourceparts=- -o Dir::State::Lists=TMP/lists
            -o Dir::Cache=TMP/cache update
    apt-get <same options> source --download-only dlib      (in TMP/src)
The upstream archive is verified by its pinned sha256, only `examples/faces/*.jpg` and `*.xml`
are extracted (by their base names: nothing else leaves the archive), and a manifest records the
sha256 of each extracted file. A later call finds the manifest, checks the files against it and
returns at once. Where apt cannot reach the sources, SourceUnreachable (a DatasetError) carries
apt's last error line.

    python -m retinabench.datasets.fetch dlib [--cache DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from retinabench.datasets.records import DatasetError, sha256_file

PACKAGE = "dlib"
VERSION = "19.24+dfsg"
ARCHIVE = f"dlib_{VERSION}.orig.tar.bz2"
ARCHIVE_SHA256 = "66b4263822a2ff91a3e769e501c7d7927a13089e178c1427ec19cb0475823cf6"
FACES_DIR = f"dlib-faces-{VERSION}"
MANIFEST = "manifest.json"
REQUIRED = ("training.xml", "testing.xml")
_MEMBER = re.compile(r"^(?:\./)?[^/]+/examples/faces/([A-Za-z0-9_.-]+\.(?:jpg|xml))$")
FETCH_COMMAND = "python -m retinabench.datasets.fetch dlib --cache {cache}"


class SourceUnreachable(DatasetError):
    """apt could not reach the Debian sources (no network, no mirror configured): a reason to skip."""


def default_cache_dir() -> Path:
    """$RETINABENCH_DATASETS, else the user's cache (retinabench.defaults.cache_home) / datasets:
    never inside the installed project."""
    env = os.environ.get("RETINABENCH_DATASETS")
    if env:
        return Path(env)
    from retinabench.defaults import cache_home
    return cache_home() / "datasets"


def faces_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / FACES_DIR


def cached_faces(cache_dir: Path) -> Optional[Path]:
    """The extracted folder if its manifest exists and every file matches it; None if not fetched.

    A manifest whose files do not match is an error (the cache was altered): delete the folder.
    """
    folder = faces_dir(cache_dir)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DatasetError(f"{manifest}: unreadable manifest; delete {folder} and fetch again") from None
    for name, digest in files.items():
        p = folder / name
        got = sha256_file(p) if p.is_file() else "missing"
        if got != digest:
            raise DatasetError(f"{p}: sha256 {got} is not the manifest's {digest}; delete {folder} and fetch again")
    return folder


def fetch_dlib_faces(cache_dir: Path, timeout_s: float = 600.0) -> Path:
    """The folder of dlib's example faces under cache_dir, fetched and verified on the first call."""
    folder = cached_faces(cache_dir)
    if folder is not None:
        return folder
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="retinabench-dlib-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # apt downloads as its sandbox user (_apt) when run as root
        mirror, suite, options = debian_source()
        archive = download_source(work, mirror, suite, options, timeout_s)
        got = sha256_file(archive)
        if got != ARCHIVE_SHA256:
            raise DatasetError(f"{archive.name} from {mirror} {suite}: sha256 {got} is not the pinned {ARCHIVE_SHA256}")
        staging = Path(tempfile.mkdtemp(prefix=f".{FACES_DIR}-", dir=cache_dir))
        os.chmod(staging, 0o755)
        try:
            files = extract_faces(archive, staging)
            manifest = {"package": PACKAGE, "version": VERSION, "archive": ARCHIVE, "archive_sha256": got,
                        "mirror": mirror, "suite": suite, "files": files}
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
            target = faces_dir(cache_dir)
            if target.exists():  # another fetch finished first, or a stale folder without a manifest
                if cached_faces(cache_dir) is not None:
                    return target
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return faces_dir(cache_dir)


def extract_faces(archive: Path, dest: Path) -> Dict[str, str]:
    """Write examples/faces/*.xml and the photos they name (base names only) into dest; {name: sha256}.

    The folder also holds photos no annotation names (bald_guys.jpg, dogs.jpg, ...): left in the archive.
    """
    import hashlib
    import xml.etree.ElementTree as ET

    found: Dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:bz2") as tar:
            for member in tar:
                m = _MEMBER.match(member.name)
                if m and member.isfile():
                    f = tar.extractfile(member)
                    if f is not None:
                        found[m.group(1)] = f.read()
    except (OSError, tarfile.TarError, EOFError) as e:
        raise DatasetError(f"{archive}: not a readable .tar.bz2 ({e})") from None
    missing = [n for n in REQUIRED if n not in found]
    if missing:
        raise DatasetError(f"{archive}: has no examples/faces/{missing[0]}")
    named = set()
    for name in REQUIRED:
        try:
            root = ET.fromstring(found[name])
        except ET.ParseError as e:
            raise DatasetError(f"{archive}: examples/faces/{name} is not XML ({e})") from None
        named.update(el.get("file", "") for el in root.iter("image"))
    files: Dict[str, str] = {}
    for name, data in sorted(found.items()):
        if name.endswith(".xml") or name in named:
            (dest / name).write_bytes(data)
            files[name] = hashlib.sha256(data).hexdigest()
    return files


# ---- apt
def debian_source(etc: Path = Path("/etc/apt")) -> Tuple[str, str, List[str]]:
    """(mirror URI, suite, one-line options) of the machine's configured Debian main archive."""
    entries = read_apt_sources(etc)
    codename = _codename()
    def rank(e):
        uri, suites, comps, opts, path = e
        return (codename not in suites, "debian" not in uri, str(path))
    usable = []
    for uri, suites, comps, opts, path in entries:
        main = [s for s in suites if not re.search(r"-(security|updates|backports|proposed-updates)$|/", s)]
        if main and "main" in comps and "security" not in uri:
            usable.append((uri, main, comps, opts, path))
    if not usable:
        raise SourceUnreachable(f"{etc}: no Debian main archive among the configured apt sources "
                                f"(needed to write a temporary deb-src line for {PACKAGE})")
    uri, suites, _, opts, _ = sorted(usable, key=rank)[0]
    suite = codename if codename in suites else suites[0]
    return uri, suite, opts


def read_apt_sources(etc: Path = Path("/etc/apt")) -> List[Tuple[str, List[str], List[str], List[str], Path]]:
    """Enabled deb/deb-src entries: (uri, suites, components, one-line options, file)."""
    out = []
    files = [etc / "sources.list"] + sorted((etc / "sources.list.d").glob("*.list"))
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.match(r"^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
            if m:
                opts = m.group(2).split() if m.group(2) else []
                out.append((m.group(3).rstrip("/"), [m.group(4)], m.group(5).split(), opts, path))
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: Dict[str, str] = {}
            key = None
            for raw in stanza.splitlines():
                if raw.lstrip().startswith("#") or not raw.strip():
                    continue
                if raw[:1] in (" ", "\t") and key:
                    fields[key] += " " + raw.strip()
                    continue
                if ":" in raw:
                    key, val = raw.split(":", 1)
                    key = key.strip().lower()
                    fields[key] = val.strip()
            if "deb" not in fields.get("types", "").split() and "deb-src" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            opts = []
            signed = fields.get("signed-by", "")
            if signed and not signed.startswith("-----") and " " not in signed:
                opts.append(f"signed-by={signed}")
            for uri in fields.get("uris", "").split():
                out.append((uri.rstrip("/"), fields.get("suites", "").split(), fields.get("components", "").split(),
                            opts, path))
    return out


def _codename() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def download_source(work: Path, mirror: str, suite: str, options: Sequence[str], timeout_s: float) -> Path:
    """apt-get update + source --download-only with a private configuration; the orig archive's path."""
    if shutil.which("apt-get") is None:
        raise SourceUnreachable("apt-get is not installed here (a Debian or Ubuntu machine is needed to fetch dlib's faces)")
    sources = work / "sources.list"
    opt = f"[{' '.join(options)}] " if options else ""
    sources.write_text(f"deb-src {opt}{mirror} {suite} main\n")
    for d in ("lists/partial", "cache/archives/partial", "src"):
        (work / d).mkdir(parents=True, exist_ok=True)
    common = ["-o", f"Dir::Etc::sourcelist={sources}", "-o", "Dir::Etc::sourceparts=-",
              "-o", f"Dir::State::Lists={work / 'lists'}", "-o", f"Dir::Cache={work / 'cache'}",
              "-o", "APT::Get::List-Cleanup=0", "-o", "Acquire::Retries=2", "-q"]
    _apt(["apt-get", *common, "update"], work, timeout_s, "update")
    _apt(["apt-get", *common, "source", "--download-only", PACKAGE], work / "src", timeout_s, "source")
    archive = work / "src" / ARCHIVE
    if not archive.is_file():
        found = sorted(p.name for p in (work / "src").iterdir())
        raise DatasetError(f"apt-get source {PACKAGE} from {mirror} {suite} did not bring {ARCHIVE} "
                           f"(got: {', '.join(found) or 'nothing'}): the suite's dlib is another version")
    return archive


def _apt(cmd: List[str], cwd: Path, timeout_s: float, step: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"})
    except subprocess.TimeoutExpired:
        raise SourceUnreachable(f"apt-get {step} did not finish in {timeout_s:g} s") from None
    except OSError as e:
        raise SourceUnreachable(f"apt-get {step} could not run: {e}") from None
    lines = [ln.strip() for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("E:")]
    # "W: Failed to fetch URL  <reason>" names the unreachable index and why; update may still exit 0
    failed = [ln for ln in lines if ln.startswith("W: Failed to fetch")]
    if failed:
        raise SourceUnreachable(f"apt-get {step} for {PACKAGE}'s source failed: {failed[-1]}")
    if proc.returncode != 0:
        last = (errors or lines or [f"exit {proc.returncode}"])[-1]
        raise SourceUnreachable(f"apt-get {step} for {PACKAGE}'s source failed: {last}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retinabench.datasets.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["dlib"], help="the dataset to fetch")
    parser.add_argument("--cache", type=Path, default=None, help=f"cache folder (default: {default_cache_dir()})")
    args = parser.parse_args(argv)
    cache = args.cache or default_cache_dir()
    try:
        folder = fetch_dlib_faces(cache)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
