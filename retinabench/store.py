"""The run folder: the one place that knows its layout, and the one atomic-write helper.

results/<UTC timestamp>-<scenario>/
  run.json          scenario name, status (complete | partial | incomplete) and reason, row order
  config.yaml       the resolved scenario;  env.json: the environment fingerprint
  rows/<key>.json   one row: its identity, status, reason and the worker's result record
  rows/<key>.npz    its raw per-loop stage times in ns (measured and warmup)
  hosts/<host>.json the environment fingerprint of each host that measured rows (a row names its host)
  .work/<key>/      a worker's scratch files (job, result, samples, outputs, stderr; git-ignored)
  .work/lock        held while a process works in the folder
  ... and the reports written from the rows (summary.csv/.md, samples.csv.gz, detections.json, ...)

Every file is written to a temporary name and renamed (`atomic_write`), so a crash never leaves
half a file. Row files written before rows had a typed identity (no "id" in the JSON) still load:
their device comes from the row's recorded settings or the run's config.yaml.

The worker (which may run under the Caffe interpreter's Python 3.9) uses `WorkDir` only, so this
module imports nothing heavy at the top: numpy and yaml are imported where they are needed.
"""
from __future__ import annotations

import fcntl
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from retinabench.errors import BenchError
from retinabench.records import Job, RowId, WorkerResult

STAGE_COUNT = 4          # preprocess, inference, postprocess, total (retinabench.harness.loop.STAGES)
ROW_FORMAT = 2           # row files with a typed identity; files without "format" are version 1


def atomic_write(path: Union[str, Path], data: Union[bytes, str]) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results and caches are shared files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def npz_bytes(**arrays: Any) -> bytes:
    """The bytes of a compressed .npz holding `arrays` (written atomically by the caller)."""
    import numpy as np
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def read_npz(path: Path) -> Dict[str, Any]:
    """Arrays of an .npz, never unpickling what a folder holds."""
    import numpy as np
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _json(data: Any) -> str:
    return json.dumps(data, indent=1, default=str)


# ---------------------------------------------------------------------------------------------
# A worker's scratch folder
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkDir:
    """.work/<row key>/: the files a worker and its parent exchange."""

    path: Path

    @property
    def job(self) -> Path:
        return self.path / "job.json"

    @property
    def result(self) -> Path:
        return self.path / "result.json"

    @property
    def samples(self) -> Path:
        return self.path / "samples.npz"

    @property
    def outputs(self) -> Path:
        return self.path / "outputs.npz"

    @property
    def stderr(self) -> Path:
        return self.path / "stderr.txt"

    @property
    def stdout(self) -> Path:
        return self.path / "stdout.txt"

    def prepare(self, job: Job) -> None:
        """A fresh folder for one worker start: the job written, any previous result removed."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.job, _json(job.to_json()))
        for p in (self.result, self.samples):
            p.unlink(missing_ok=True)

    def read_job(self) -> Job:
        return Job.from_json(json.loads(self.job.read_text()))

    def write_result(self, result: WorkerResult) -> None:
        atomic_write(self.result, _json(result.to_json()))

    def read_result(self) -> Optional[WorkerResult]:
        """The worker's result, or None where it wrote none (it died first) or a damaged one."""
        try:
            return WorkerResult.from_json(json.loads(self.result.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write_samples(self, **arrays: Any) -> None:
        atomic_write(self.samples, npz_bytes(**arrays))

    def read_samples(self) -> Dict[str, Any]:
        return read_npz(self.samples)

    def write_outputs(self, outputs: Dict[str, Any]) -> None:
        atomic_write(self.outputs, npz_bytes(**outputs))

    def read_outputs(self) -> Optional[Dict[str, Any]]:
        return read_npz(self.outputs) if self.outputs.is_file() else None

    def process(self, index: int) -> "WorkDir":
        """p<index>/: the scratch folder of one of the row's worker processes (retinabench.harness.processes
        merges them into this one)."""
        return WorkDir(self.path / f"p{index}")


# ---------------------------------------------------------------------------------------------
# One row as the run folder keeps it
# ---------------------------------------------------------------------------------------------

@dataclass
class RowResult:
    """A finished row: its identity, the worker's result record, and its raw samples in ns."""

    id: RowId
    result: WorkerResult
    samples_ns: Any = None      # numpy int64 [loops, 4]: preprocess, inference, postprocess, total
    warmup_ns: Any = None       # numpy int64 [warmup, 4], same columns
    rounds: Any = None          # numpy int32 [loops]: the round each sample was measured in (None: one round)
    rewarm_ns: Any = None       # numpy int64 [n, 4]: the re-warm loops at the start of later rounds, excluded
    processes: Any = None       # numpy int32 [loops]: the worker process each sample came from (None: one process)
    replaced_ns: Any = None     # numpy int64 [n, 4]: chunks measured while other programs were busy, measured again
    group: str = ""             # the interleaved group it was measured in ("s0g1": session 0, group 1); "": alone
    stored_key: str = ""        # the file name it has in its run folder (older runs used other keys)
    host: str = ""              # the host that measured it (hosts/<host>.json); "": rows older than hosts
    # [start, end] in Unix seconds: each stretch in which its worker process worked (loading, each chunk
    # with its warmup and re-warm, writing its files), on its host's clock; idle waits excluded
    busy: List[List[float]] = field(default_factory=list)
    # keys of the rows whose work on the same host overlapped this row's measured windows
    # (retinabench.harness.units.overlaps): [] means it was measured alone
    overlaps: List[str] = field(default_factory=list)
    # the last line of the row's stderr where it reads like an error (rows/<key>.stderr.txt holds it all)
    stderr_tail: str = ""

    @property
    def key(self) -> str:
        return self.id.key

    @property
    def status(self) -> str:
        return self.result.status

    @property
    def reason(self) -> str:
        return self.result.reason

    @property
    def passed(self) -> bool:
        return self.result.status == "passed" and self.samples_ns is not None and len(self.samples_ns) > 0

    @classmethod
    def failed(cls, row: RowId, status: str, reason: str, **info: Any) -> "RowResult":
        return cls(row, WorkerResult.failure(status, reason, **info))


# ---------------------------------------------------------------------------------------------
# The run folder
# ---------------------------------------------------------------------------------------------

class RunStore:
    """A results folder: create or open it, lock it, write and read its rows and files."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)

    # -- creating and opening
    @classmethod
    def create(cls, results_root: Path, scenario_name: str) -> "RunStore":
        """A new, never-shared folder: mkdir fails if it exists, so concurrent runs pick different names."""
        results_root = Path(results_root)
        results_root.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in scenario_name)
        for i in range(1000):
            path = results_root / (f"{stamp}-{safe}" + (f"-{i + 1}" if i else ""))
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                continue
        raise BenchError(f"{results_root}: could not create a unique run folder")

    @classmethod
    def open(cls, path: Union[str, Path], what: str = "results folder") -> "RunStore":
        store = cls(path)
        if not store.path.is_dir():
            raise BenchError(f"{store.path}: no such {what}")
        if not (store.path / "run.json").is_file():
            raise BenchError(f"{store.path}: not a results folder (no run.json)")
        return store

    def lock(self) -> "RunLock":
        """An exclusive lock on the folder, released when the process ends however it ends."""
        return RunLock(self.path / ".work" / "lock")

    # -- files
    def file(self, name: str) -> Path:
        return self.path / name

    def write_file(self, name: str, data: Union[bytes, str]) -> Path:
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
        return path

    def read_json(self, name: str, default: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        path = self.path / name
        if default is not None and not path.is_file():
            return default
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise BenchError(f"{path}: cannot read ({e})") from None

    def write_meta(self, meta: Dict[str, Any]) -> None:
        self.write_file("run.json", _json(meta))

    def read_meta(self) -> Dict[str, Any]:
        return self.read_json("run.json")

    def write_env(self, env: Dict[str, Any]) -> None:
        self.write_file("env.json", _json(env))

    def read_env(self) -> Dict[str, Any]:
        return self.read_json("env.json", default={})

    def write_config(self, scenario: Dict[str, Any]) -> None:
        import yaml
        self.write_file("config.yaml", yaml.safe_dump(scenario, sort_keys=False))

    def read_config(self) -> Dict[str, Any]:
        """config.yaml as a mapping ({} where absent); a damaged one is an error naming it."""
        import yaml
        path = self.path / "config.yaml"
        if not path.is_file():
            return {}
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            raise BenchError(f"{path}: missing or unreadable") from None
        if not isinstance(data, dict):
            raise BenchError(f"{path}: not a scenario")
        return data

    # -- rows
    def work(self, row: RowId) -> WorkDir:
        return WorkDir(self.path / ".work" / row.key)

    def write_row(self, row: RowResult) -> None:
        import numpy as np
        rows = self.path / "rows"
        rows.mkdir(exist_ok=True)
        if row.samples_ns is not None:
            arrays = {"samples": row.samples_ns,
                      "warmup": row.warmup_ns if row.warmup_ns is not None else np.zeros((0, STAGE_COUNT), np.int64)}
            if row.rounds is not None:
                arrays["rounds"] = row.rounds
            if row.rewarm_ns is not None:
                arrays["rewarm"] = row.rewarm_ns
            if row.processes is not None:
                arrays["processes"] = row.processes
            if row.replaced_ns is not None and len(row.replaced_ns):
                arrays["replaced"] = row.replaced_ns
            atomic_write(rows / f"{row.key}.npz", npz_bytes(**arrays))
        record = {"format": ROW_FORMAT, "key": row.key, "id": row.id.to_json(), "status": row.status,
                  "reason": row.reason, "group": row.group, "host": row.host, "busy": row.busy,
                  "overlaps": list(row.overlaps), "result": row.result.to_json()}
        atomic_write(rows / f"{row.key}.json", _json(record))
        row.stored_key = row.key

    def read_rows(self) -> Dict[RowId, RowResult]:
        """The finished rows, by identity; a damaged row file is an error naming it, never a guess."""
        devices = _config_devices(self.read_config())
        rows: Dict[RowId, RowResult] = {}
        for p in sorted((self.path / "rows").glob("*.json")):
            try:
                row = _read_row(p, devices)
            except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise BenchError(f"{p}: damaged row file ({msg})") from None
            if row.id in rows:
                raise BenchError(f"{p}: a second file for row {row.id.key}")
            rows[row.id] = row
        return rows

    def ordered_rows(self, rows: Optional[Dict[RowId, RowResult]] = None) -> List[RowResult]:
        """Rows in the run's order (run.json), then any others in identity order."""
        rows = self.read_rows() if rows is None else rows
        meta = self.read_json("run.json", default={})
        if meta.get("row_ids"):
            order = [RowId.from_json(d) for d in meta["row_ids"]]
        else:  # older runs listed their file keys
            by_key = {r.stored_key: r.id for r in rows.values()}
            order = [by_key[k] for k in meta.get("rows", []) if k in by_key]
        seen = [rows[i] for i in order if i in rows]
        return seen + [rows[i] for i in sorted(rows) if i not in set(order)]

    def read_outputs(self, row: RowResult) -> Optional[Dict[str, Any]]:
        """The first image's raw outputs a row's worker left in its scratch folder, if any."""
        for key in dict.fromkeys((row.key, row.stored_key or row.key)):
            outputs = WorkDir(self.path / ".work" / key).read_outputs()
            if outputs is not None:
                return outputs
        return None


class RunLock:
    """Context manager holding an exclusive flock on a run folder's lock file."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "w")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise BenchError(f"{path.parent.parent}: another bench.py process is working in this run folder") from None

    def release(self) -> None:
        self._file.close()

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _config_devices(config: Dict[str, Any]) -> Dict[tuple, str]:
    """(backend, variant) -> device, from a run's config.yaml: for row files older than RowId."""
    out: Dict[tuple, str] = {}
    for b in config.get("backends") or []:
        if isinstance(b, dict) and b.get("name"):
            out.setdefault((b["name"], b.get("variant", "default")), str(b.get("device") or "cpu"))
    return out


def _read_row(path: Path, devices: Dict[tuple, str]) -> RowResult:
    d = json.loads(path.read_text())
    if "id" in d:
        row_id = RowId.from_json(d["id"])
        result = WorkerResult.from_json(d["result"])
    else:  # format 1: flat identity fields and the worker's record as "info"
        info = dict(d.get("info") or {})
        recorded = (info.get("settings") or {}).get("device")
        device = recorded if recorded else devices.get((d["backend"], d["variant"]), "cpu")
        row_id = RowId(d["backend"], d["variant"], str(device), d["input"], int(d["batch"]), int(d["max_batch"]))
        result = WorkerResult.from_json({**info, "status": d["status"], "reason": d.get("reason", "")})
    row = RowResult(row_id, result, group=str(d.get("group") or ""), stored_key=str(d.get("key") or path.stem),
                    host=str(d.get("host") or ""), busy=[[float(a), float(b)] for a, b in d.get("busy") or []],
                    overlaps=[str(k) for k in d.get("overlaps") or []])
    npz = path.with_suffix(".npz")
    if npz.exists():
        arrays = read_npz(npz)
        row.samples_ns, row.warmup_ns = arrays["samples"], arrays["warmup"]
        row.rounds, row.rewarm_ns = arrays.get("rounds"), arrays.get("rewarm")
        row.processes, row.replaced_ns = arrays.get("processes"), arrays.get("replaced")
        if row.samples_ns.ndim != 2 or row.samples_ns.shape[1] != STAGE_COUNT:
            raise ValueError(f"samples have shape {row.samples_ns.shape}")
        for name in ("rounds", "processes"):
            per = getattr(row, name)
            if per is not None and per.shape != (len(row.samples_ns),):
                raise ValueError(f"{name} have shape {per.shape} for {len(row.samples_ns)} samples")
    return row
