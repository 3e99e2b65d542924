"""The records that cross the worker boundary, with JSON codecs: standard library only.

Both interpreters import this module: the main one (Python 3.11) and the Caffe worker's (Python 3.9,
real pycaffe has no newer wheels), so it uses nothing but the standard library and 3.9 syntax.
After Polygraphy's `IterationResult`/`RunResults` and torch.utils.benchmark's `TaskSpec`:

- `RowId`: the identity of one measured row. Frozen, ordered, hashable; its `key` is path-safe and
  includes every field, so two rows that differ in anything (device included) never share a key.
- `BackendSpec`, `InputSpec`: what a scenario says about a row's runtime and input.
- `Job`: what the parent sends a worker; `WorkerResult`: what the worker returns;
  `RowSettings`: what a timing depends on besides versions (declared fields only are read by reports);
  `Footprint`: what the worker held in memory and how long it took to start.
- `ExitCode`: one set of exit codes for the CLI and the worker, no value meaning two things.
- `Command` and `Event`: the control channel between the parent and a loaded worker (one JSON line
  each), by which rows are measured in chunks, interleaved round by round with other rows.
"""
from __future__ import annotations

import enum
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Dict, List, Optional, Tuple

STATUSES = ("passed", "failed", "unavailable")


class ExitCode(enum.IntEnum):
    """Exit codes of `bench.py` and of a worker process: each value means one thing in both."""

    OK = 0              # CLI: every row passed or was unavailable; worker: the row passed
    CRASH = 1           # an uncaught Python error (the interpreter's own code)
    USER_ERROR = 2      # CLI: a bad config, model, image or argument (one line on stderr)
    PARTIAL = 3         # CLI: some row failed, the others completed
    FAILED = 4          # worker: the row failed for a known reason (result.json says why)
    UNAVAILABLE = 5     # worker: the runtime or device is missing here (result.json says why)
    SLOWER = 6          # CLI: `compare --fail-if-slower`: a row is slower beyond the threshold and its interval
    ACCURACY_DROP = 7   # CLI: `accuracy --max-ap-drop`: a row loses more AP than allowed against the reference
    INTERRUPTED = 130   # CLI: SIGINT or SIGTERM; the finished rows are kept


# ---------------------------------------------------------------------------------------------
# Row identity
# ---------------------------------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+]*(?:-[A-Za-z0-9.+]+)*$")
_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d{1,4}))?$")
_OPTIONS = re.compile(r"^[A-Za-z0-9_]+=[A-Za-z0-9_.]+(?:\+[A-Za-z0-9_]+=[A-Za-z0-9_.]+)*$")


def check_device(device: str) -> str:
    """'cpu', 'cuda' or 'cuda:N'; anything else is a ValueError naming it."""
    m = _DEVICE.match(str(device))
    if not m or (m.group(1) == "cpu" and m.group(2) is not None):
        raise ValueError(f"device {device!r}: expected cpu, cuda or cuda:N")
    return str(device)


def device_index(device: str) -> int:
    """The ordinal of a CUDA device string ('cuda' is 0)."""
    return int(device.split(":", 1)[1]) if ":" in device else 0


@dataclass(frozen=True, order=True)
class RowId:
    """One measured row: a backend's variant on a device, at one input size, batch and engine max batch.

    `key` joins every field with '-' ('torch-pipe-cuda0-448x448-b32-m32'): backend and variant names
    may hold '-' themselves, so a scenario also refuses two rows whose keys collide (config.py).
    """

    backend: str
    variant: str = "default"
    device: str = "cpu"
    input: str = "native"
    batch: int = 1
    max_batch: int = 1
    # Swept values (a scenario's `sweep`): part of the identity only where swept, so rows of scenarios
    # without sweeps keep their identities and keys. 0 / "": not swept.
    threads: int = 0
    options: str = ""                 # swept backend options, "name=value+name=value", path-safe

    def __post_init__(self) -> None:
        for name in ("backend", "variant", "input"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _NAME.match(value):
                raise ValueError(f"row {name} {value!r}: expected letters, digits, '.', '+' and inner '-'")
        check_device(self.device)
        for name in ("batch", "max_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"row {name} {value!r}: expected a positive integer")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"row threads {self.threads!r}: expected a non-negative integer")
        if self.options and not _OPTIONS.match(self.options):
            raise ValueError(f"row options {self.options!r}: expected name=value pairs joined by '+'")
        if self.max_batch < self.batch:
            raise ValueError(f"row max_batch {self.max_batch} is below its batch {self.batch}")

    @property
    def key(self) -> str:
        """Path-safe and unique per identity: the name of the row's files in a run folder."""
        device = self.device.replace(":", "")
        key = f"{self.backend}-{self.variant}-{device}-{self.input}-b{self.batch}-m{self.max_batch}"
        return key + (f"-t{self.threads}" if self.threads else "") + (f"-{self.options.replace('=', '.')}"
                                                                      if self.options else "")

    @property
    def name(self) -> str:
        """'torch' or 'torch (pipe)': the backend and, when not the default, its variant."""
        return self.backend if self.variant == "default" else f"{self.backend} ({self.variant})"

    def label(self, batch: bool = False, device: bool = False) -> str:
        """What a person reads: 'torch (pipe)', with ' b32' and ' on cuda' when asked for."""
        text = self.name + (f" b{self.batch}" if batch else "")
        return text + (f" on {self.device}" if device else "")

    @property
    def swept(self) -> str:
        """What a sweep set for this row ('2 threads, graph_optimization_level=ORT_ENABLE_BASIC'); '' if nothing."""
        parts = [f"{self.threads} thread{'s' if self.threads != 1 else ''}"] if self.threads else []
        return ", ".join(parts + (self.options.split("+") if self.options else []))

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        if not self.threads:      # rows without sweeps are written as they always were
            d.pop("threads")
        if not self.options:
            d.pop("options")
        return d

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "RowId":
        return cls(str(data["backend"]), str(data.get("variant", "default")), str(data.get("device", "cpu")),
                   str(data.get("input", "native")), int(data.get("batch", 1)), int(data.get("max_batch", 1)),
                   int(data.get("threads") or 0), str(data.get("options") or ""))


# ---------------------------------------------------------------------------------------------
# What a scenario says about a row
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputSpec:
    mode: str            # "native", "fit" or "pad" (fit without enlarging: a dataset's canvas)
    width: int = 0       # 0 in native mode: the image's own size
    height: int = 0

    @property
    def label(self) -> str:
        if self.mode == "fit":
            return f"{self.width}x{self.height}"
        return f"pad{self.width}x{self.height}" if self.mode == "pad" else "native"

    @property
    def size(self) -> Optional[Tuple[int, int]]:
        """(width, height) in fit and pad modes, None in native mode."""
        return (self.width, self.height) if self.mode in ("fit", "pad") else None

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "InputSpec":
        return cls(str(data["mode"]), int(data.get("width", 0)), int(data.get("height", 0)))


@dataclass(frozen=True)
class BackendSpec:
    name: str
    variant: str = "default"
    threads: Optional[int] = None
    device: str = "cpu"
    options: Dict[str, Any] = field(default_factory=dict)   # validated against the backend's Options
    env: Dict[str, str] = field(default_factory=dict)       # worker environment (config.WORKER_ENV only)
    sweep: Dict[str, List[Any]] = field(default_factory=dict)   # this entry's own sweep (retinabench.config)
    pin: bool = False                   # pin the worker to `threads` cores (a threads sweep does)

    def to_json(self) -> Dict[str, Any]:
        d = {"name": self.name, "variant": self.variant, "threads": self.threads, "device": self.device,
             "options": dict(self.options), "env": dict(self.env)}
        if self.sweep:
            d["sweep"] = {k: list(v) for k, v in self.sweep.items()}
        if self.pin:
            d["pin"] = True
        return d

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "BackendSpec":
        threads = data.get("threads")
        return cls(str(data["name"]), str(data.get("variant", "default")), None if threads is None else int(threads),
                   str(data.get("device", "cpu")), dict(data.get("options") or {}), dict(data.get("env") or {}),
                   {str(k): list(v) for k, v in (data.get("sweep") or {}).items()}, bool(data.get("pin", False)))


# ---------------------------------------------------------------------------------------------
# Parent -> worker
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """Everything a worker needs to load and measure one row."""

    row: RowId
    backend: BackendSpec
    model: str
    images: Tuple[str, ...]
    input: InputSpec
    loops: int
    warmup: int
    threshold: float
    family: Optional[str] = None
    save_outputs: bool = True
    gpu_monitor: bool = True
    parent_pid: Optional[int] = None
    memory_limit_bytes: Optional[int] = None
    timeout_s: Optional[int] = None      # the parent enforces it; recorded for the reason it gives
    process: int = 0                     # which of the row's worker processes this is (0-based) ...
    processes: int = 1                   # ... of how many (retinabench.harness.schedule)

    def to_json(self) -> Dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(row=self.row.to_json(), backend=self.backend.to_json(), input=self.input.to_json(),
                 images=list(self.images))
        return d

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Job":
        d = dict(data)
        d.update(row=RowId.from_json(d["row"]), backend=BackendSpec.from_json(d["backend"]),
                 input=InputSpec.from_json(d["input"]), images=tuple(d["images"]))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# ---------------------------------------------------------------------------------------------
# Worker -> parent
# ---------------------------------------------------------------------------------------------

@dataclass
class RowSettings:
    """What a timing depends on besides versions. Reports read the declared fields, never `extras`.

    `device_stages`: preprocessing and decode + NMS ran on the device (the GPU pipelines), so the
    row's inference stage ends with its outputs on the device and its stage times mean other work.
    """

    device: str = "cpu"
    variant: str = "default"
    precision: str = ""                 # f32 | f16 | bf16 | none; "" where the backend does not say
    threads: Optional[int] = None       # intra-op threads the runtime used
    device_stages: bool = False
    # staged: a synchronisation at each stage boundary (stage columns are host intervals); e2e and
    # throughput: one per loop, stage columns are CUDA-event times (retinabench.model.device.pipelined)
    timing: str = "staged"
    upsample: str = ""                  # Caffe rows: exact | bilinear | as in model
    extras: Dict[str, Any] = field(default_factory=dict)   # backend-specific, recorded, not interpreted

    def to_json(self) -> Dict[str, Any]:
        """Flat, as run folders have always stored settings: the declared fields, then the extras."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extras"}
        return {**self.extras, **d}

    @classmethod
    def from_json(cls, data: Optional[Dict[str, Any]]) -> Optional["RowSettings"]:
        if not data:
            return None
        declared = {f.name for f in fields(cls)} - {"extras"}
        s = cls(extras={k: v for k, v in data.items() if k not in declared})
        for k in declared & set(data):
            setattr(s, k, data[k])
        s.device_stages = bool(s.device_stages)
        return s


@dataclass
class Footprint:
    """What a row's worker held and how long it took to start (measured by retinabench.harness.footprint).

    Memory in MiB (2**20 bytes). Host figures are above `host_baseline_mib`, the worker's resident set
    at its start, before any runtime was imported: `host_loaded_mib` once the row is ready to measure,
    `host_load_peak_mib` the peak through import, load and warmup, `host_peak_mib` the peak during the
    measured loops. GPU figures are what NVML charges the worker's process on the row's device (the
    CUDA context and every allocator); `torch_reserved_*` torch's caching allocator alone, where torch
    ran CUDA. Start-up in seconds: the `load_*_s` parts add up to `load_whole_s` (the row's loading,
    from the backend's import to ready), `load_s` is import + read + convert + build. `first_call_ms`
    is the cold start (`first_call` says which call that was), `first_loop_ms` the first timed loop.
    None: not measured here; `sources` says how each figure was obtained, `notes` why one is missing.
    """

    host_baseline_mib: Optional[float] = None
    host_loaded_mib: Optional[float] = None
    host_load_peak_mib: Optional[float] = None
    host_peak_mib: Optional[float] = None
    gpu_loaded_mib: Optional[float] = None
    gpu_peak_mib: Optional[float] = None
    torch_reserved_loaded_mib: Optional[float] = None
    torch_reserved_peak_mib: Optional[float] = None
    model_mib: Optional[float] = None          # the model's files on disk
    load_s: Optional[float] = None
    load_import_s: Optional[float] = None      # the backend's module and its runtime
    load_read_s: Optional[float] = None        # open_model: finding and checking the files
    load_convert_s: Optional[float] = None     # importing the model into the graph IR, where the backend needs it
    load_build_s: Optional[float] = None       # the rest of Backend.load(): session, engine build, compile
    load_stage_build_s: Optional[float] = None  # device stages' capture / compile pass (their first call)
    load_harness_s: Optional[float] = None     # the remainder: images, preprocessing set-up, GPU monitor
    load_whole_s: Optional[float] = None
    first_call_ms: Optional[float] = None
    first_call: str = ""
    first_loop_ms: Optional[float] = None
    sources: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    snapshots: Dict[str, Any] = field(default_factory=dict)   # the raw readings, per moment

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Optional[Dict[str, Any]]) -> Optional["Footprint"]:
        """None for rows recorded before footprints existed (no or an empty `footprint`)."""
        if not data:
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class WorkerResult:
    """What a worker returns in result.json (its samples and outputs are arrays beside it)."""

    status: str
    reason: str = ""
    load_s: Optional[float] = None
    versions: Dict[str, str] = field(default_factory=dict)
    settings: Optional[RowSettings] = None
    output_names: List[str] = field(default_factory=list)
    model: Dict[str, str] = field(default_factory=dict)
    blob_shape: List[int] = field(default_factory=list)
    faces: List[List[Dict[str, Any]]] = field(default_factory=list)   # per image of the batch, last loop
    gpu_samples: List[Dict[str, float]] = field(default_factory=list)
    gpu_monitor_error: str = ""
    gpu_monitor: Dict[str, Any] = field(default_factory=dict)   # the NVML windows, their length, the device
    metrics: Dict[str, Any] = field(default_factory=dict)   # measured beside the stages (gpu_time_ms, ...)
    # [round, start, end] per measured chunk, in Unix seconds (re-warm loops excluded): when the row measured
    windows: List[List[float]] = field(default_factory=list)
    exit_code: Optional[int] = None
    signal: str = ""
    footprint: Optional[Footprint] = None   # memory and start-up (None in rows recorded before they were)
    # One entry per measured chunk, kept or replaced (retinabench.harness.cpu_load): its process, round,
    # wall time and the CPU time other programs and the hypervisor took meanwhile ([] in older rows)
    contention: List[Dict[str, Any]] = field(default_factory=list)
    # One entry per worker process of the row (several: retinabench.harness.processes): its pid, load
    # time, footprint, chunks; the row's own load_s and footprint are the processes' medians
    processes: List[Dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"row status {self.status!r}: expected one of {', '.join(STATUSES)}")

    def to_json(self) -> Dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["settings"] = self.settings.to_json() if self.settings is not None else {}
        d["footprint"] = self.footprint.to_json() if self.footprint is not None else {}
        return d

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "WorkerResult":
        d = dict(data)
        if "extra" in d and "metrics" not in d:   # run folders written before the records existed
            d["metrics"] = d.pop("extra")
        d["settings"] = RowSettings.from_json(d.get("settings"))
        d["metrics"] = dict(d.get("metrics") or {})
        d["footprint"] = Footprint.from_json(d.get("footprint"))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def failure(cls, status: str, reason: str, exit_code: Optional[int] = None, signal: str = "") -> "WorkerResult":
        return cls(status, reason or status, exit_code=exit_code, signal=signal)


# ---------------------------------------------------------------------------------------------
# The control channel: parent -> worker commands, worker -> parent events, one JSON line each
# ---------------------------------------------------------------------------------------------

COMMANDS = ("measure", "finish", "detect", "serve")
EVENTS = ("ready", "progress", "done", "finished")


class _Message:
    """A control-channel message: one JSON line; `KINDS` names the kinds a message may be."""

    KINDS: ClassVar[Tuple[str, ...]] = ()
    kind: str

    def encode(self) -> bytes:
        return (json.dumps(asdict(self)) + "\n").encode()

    @classmethod
    def decode(cls, line: bytes) -> Any:
        d = json.loads(line)
        if d.get("kind") not in cls.KINDS:
            raise ValueError(f"unknown {cls.__name__.lower()} {d.get('kind')!r}")
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True)
class Command(_Message):
    """`measure`: run `warmup` loops (kept as the row's warmup), then `rewarm` loops (recorded apart,
    excluded), then `loops` measured loops tagged with `round`. `finish`: write the row's files and exit.
    `detect`: untimed, run the row's pipeline on each of `images` and write every face scoring at least
    `threshold` to the JSON file `out` (an accuracy run: retinabench.harness.accuracy). `serve`: one
    MLPerf LoadGen test of the row's pipeline with `settings`, its logs and result.json into `out`."""

    KINDS: ClassVar[Tuple[str, ...]] = COMMANDS
    kind: str
    loops: int = 0
    warmup: int = 0
    rewarm: int = 0
    round: int = 0
    replace: bool = False    # the last measured chunk was contended: keep it apart, this one takes its place
    images: List[str] = field(default_factory=list)
    threshold: float = 0.0
    out: str = ""
    settings: Dict[str, Any] = field(default_factory=dict)   # `serve`: the test (retinabench.harness.serving)


@dataclass(frozen=True)
class Event(_Message):
    """`ready`: loaded, waiting for commands. `progress`: loops done of the current command.
    `done`: the command's loops are measured, with what the machine did meanwhile (`load`: the
    chunk's wall time and the CPU seconds others and the hypervisor took, retinabench.harness.cpu_load).
    `finished`: the row's files are written."""

    KINDS: ClassVar[Tuple[str, ...]] = EVENTS
    kind: str
    done: int = 0
    total: int = 0
    round: int = 0
    load: Dict[str, Any] = field(default_factory=dict)
