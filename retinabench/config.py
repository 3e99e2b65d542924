"""Scenario configs: YAML validated into typed records, every error naming its field.

A scenario names a model, images, an input size, batch sizes (with the engine's max batch), loops,
warmup and the backends to compare. Model and image locations are settings: the config's value,
overridden by RETINABENCH_MODEL / RETINABENCH_IMAGE, overridden by the CLI's --model / --image.
"""
from __future__ import annotations

import os
import re
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from backends.base import REGISTRY, backend_class
from retinabench.errors import BenchError, ConfigError
from retinabench.model.preprocess import INPUT_MODES
from retinabench.records import BackendSpec, InputSpec, RowId, check_device

MAX_SIDE = 8192
MAX_BATCH = 1024
MAX_LOOPS = 10_000_000
MAX_CONFIG_BYTES = 1 << 20  # a scenario is a page of YAML; anything larger is not one
MAX_ROWS = 200              # rows a scenario may generate (its `max_rows`): a sweep's typo must not launch 10,000
SCHEDULES = ("interleaved", "sequential")
CONTENTION_LIMIT = 0.1      # cores others may use during a chunk (retinabench.harness.contention says why)
# What one run cannot see: the machine's state that lasts longer than a run (other guests of the host
# using its memory bandwidth, say) moves a ratio between runs as a whole. Measured with
# benchmarks/interval_coverage.py on the 2-core machines (three quiet runs per scenario, two scenarios,
# seven rows: the README's "Do the intervals tell the truth?"): the largest standard deviation of a
# row's ratio between runs was 1.45% (opencv-onnx against onnxruntime at 1280x896). The ratio intervals
# of rows measured by several processes add it (retinabench.report.stats.with_run_term); `run_spread: 0`
# leaves the interval of the run's own variation alone.
RUN_SPREAD = 0.015   # how rows share the machine (retinabench.harness.schedule)
EXECUTORS = ("local", "dask")   # where rows run: this machine, or the workers of a Dask cluster
# A Dask scheduler's address: tcp://host:port (or tls://, or host:port); the port is required
_SCHEDULER = re.compile(r"^(?:(?:tcp|tls|ucx)://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$")

# Environment variables a backend entry may set for its worker (`env:`), applied before the runtime
# is imported. An allowlist, because variables such as LD_PRELOAD or MXNET_LIBRARY_PATH would let a
# config load code; these only tune engines, threads and devices.
WORKER_ENV = frozenset({
    "MXNET_ENGINE_TYPE", "MXNET_CPU_WORKER_NTHREADS", "MXNET_EXEC_BULK_EXEC_INFERENCE",
    "MXNET_MKLDNN_ENABLED", "MXNET_CUDNN_AUTOTUNE_DEFAULT", "OMP_NUM_THREADS", "OMP_WAIT_POLICY",
    "OMP_PROC_BIND", "KMP_AFFINITY", "KMP_BLOCKTIME", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES", "CUDA_LAUNCH_BLOCKING", "CUBLAS_WORKSPACE_CONFIG", "NVIDIA_TF32_OVERRIDE",
})


LOAD_SCENARIOS = ("singlestream", "multistream", "server", "offline")
# LoadGen TestSettings fields a `load.settings` mapping may set, under LoadGen's own names
LOADGEN_SETTINGS = ("single_stream_expected_latency_ns", "single_stream_target_latency_percentile",
                    "multi_stream_expected_latency_ns", "multi_stream_target_latency_percentile",
                    "multi_stream_samples_per_query", "server_target_qps", "server_target_latency_ns",
                    "server_target_latency_percentile", "server_coalesce_queries", "server_max_async_queries",
                    "server_num_issue_query_threads", "offline_expected_qps", "min_duration_ms", "max_duration_ms",
                    "min_query_count", "max_query_count", "qsl_rng_seed", "sample_index_rng_seed",
                    "schedule_rng_seed", "performance_sample_count_override")


@dataclass(frozen=True)
class LoadSpec:
    """A serving scenario (retinabench.harness.serving_run): MLPerf LoadGen drives each row's pipeline.

    `target_qps: auto` searches the highest rate LoadGen calls VALID at the latency bound (server);
    `settings` passes LoadGen TestSettings fields under their own names."""

    scenario: str
    latency_bound_ms: Optional[float] = None
    percentile: Optional[float] = None      # of the latency bound (default: 99; singlestream 90)
    min_duration_s: float = 10.0
    max_duration_s: Optional[float] = None  # default: 2 x min + 20 s, so an overloaded test ends
    target_qps: Any = "auto"                # server: a rate, or auto (peak search); offline: expected rate
    samples_per_query: int = 8              # multistream: streams per query
    fps: float = 30.0                       # the "streams at fps" column
    in_flight: int = 1                      # CPU: requests served at once, the row's threads split between them
    max_batch: int = 1                      # dynamic batching: the row is loaded at this batch
    max_queue_delay_ms: float = 2.0         # ... and a request waits at most this long for the batch to fill
    decode: bool = False                    # the system under test decodes the JPEG bytes too
    rounds: int = 3                         # searches (or tests) per row, rows alternating
    search_steps: int = 5                   # LoadGen runs per peak search
    closed_loop_loops: int = 200            # the row's own closed-loop rate, measured first
    settings: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Row:
    """One measured configuration: its identity, the backend entry it came from (with the row's swept
    threads and options), and its input (a swept input size, or the scenario's)."""

    id: RowId
    backend: BackendSpec
    input: Optional[InputSpec] = None

    @property
    def key(self) -> str:
        return self.id.key


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    images: Tuple[str, ...]
    input: InputSpec
    backends: Tuple[BackendSpec, ...]
    batches: Tuple[int, ...] = (1,)
    max_batch: Tuple[int, ...] = ()
    loops: int = 1000
    warmup: int = 50
    threshold: float = 0.8
    family: Optional[str] = None
    reference: Optional[str] = None  # backend whose outputs the accuracy section compares against
    results_dir: str = "results"
    # A row's worker still running after this many seconds is stopped and the row fails
    # (a runtime that deadlocks must not hang the run); None: no limit. With interleaved rounds it
    # counts the time spent on this row only (loading, its own chunks), not the other rows' chunks.
    row_timeout_s: Optional[int] = None
    # How rows share the machine (retinabench.harness.schedule): interleaved rounds or one after another.
    schedule: str = "interleaved"
    round_loops: Optional[int] = None       # loops per row per round (default: loops / 20)
    rewarm_loops: Optional[int] = None      # excluded loops at the start of each later chunk (default: a tenth)
    seed: Optional[int] = None              # of the per-round shuffles (default: a fresh one, recorded)
    max_live_workers: Optional[int] = None  # rows loaded at once (default: every row of a batch size)
    # Where rows run (retinabench.harness.dask_executor): `local` here, or `dask` on a Dask cluster's
    # workers: the one at `scheduler` (ADDR), else a LocalCluster (LocalCUDACluster for CUDA rows).
    executor: str = "local"
    scheduler: Optional[str] = None
    # Worker processes per row (retinabench.harness.processes), `loops` split between them; None: the
    # default for the rows' device (retinabench.harness.schedule.DEFAULT_PROCESSES). 1: one process per row.
    processes: Optional[int] = None
    # Cores that other programs may use during a chunk before it is measured again
    # (retinabench.harness.contention); None: record contention, never measure again.
    contention_limit: Optional[float] = CONTENTION_LIMIT
    contention_retries: Optional[int] = None   # chunks per row measured again (default: as many as it plans)
    run_spread: float = RUN_SPREAD   # relative SD between runs, added to ratio intervals (RUN_SPREAD says why)
    load: Optional[LoadSpec] = None  # a serving scenario (MLPerf LoadGen) instead of the latency tables
    # A sweep: row configurations generated from lists of values (threads, input sizes, backend options);
    # a backend entry's own `sweep` adds to and overrides it. Swept values are part of a row's identity.
    sweep: Dict[str, Tuple[Any, ...]] = field(default_factory=dict)
    oversubscribe: bool = False      # allow thread counts above the machine's cores
    max_rows: int = MAX_ROWS         # refuse a scenario that would generate more rows (a typo's 10,000 rows)
    source: str = ""

    def rows(self) -> List[Row]:
        """Every backend entry at every point of its sweep and every batch size, each batch with the smallest
        max batch that holds it; a serving scenario's rows are loaded at its dynamic batch (`load.max_batch`)."""
        rows = []
        batches = (self.load.max_batch,) if self.load is not None else self.batches
        for b in self.backends:
            for point in sweep_points({**self.sweep, **b.sweep}):
                spec, inp, threads, options = self._apply(b, point)
                for n in batches:
                    fitting = [m for m in self.max_batch if m >= n]
                    rid = RowId(b.name, b.variant, b.device, inp.label, n, min(fitting) if fitting else n,
                                threads, options)
                    rows.append(Row(rid, spec, inp))
        return rows

    def _apply(self, b: BackendSpec, point: Dict[str, Any]) -> Tuple[BackendSpec, InputSpec, int, str]:
        """A backend entry at one sweep point: its spec, input, and the identity's swept threads and options."""
        threads = int(point["threads"]) if "threads" in point else 0
        inp = point["input"] if "input" in point else self.input
        swept = {k[len("options."):]: v for k, v in point.items() if k.startswith("options.")}
        spec = b
        if threads or swept or b.sweep:
            spec = replace(b, threads=threads or b.threads, options={**b.options, **swept}, sweep={},
                           pin=bool(threads) or b.pin)
        options = "+".join(f"{k}={_safe(v)}" for k, v in sorted(swept.items()))
        return spec, inp, threads, options

    @property
    def inputs(self) -> List[InputSpec]:
        """Every input size the scenario's rows use, in first-use order."""
        return list(dict.fromkeys(r.input for r in self.rows() if r.input is not None))

    @classmethod
    def field_defaults(cls) -> Dict[str, Any]:
        """The default of every field that has one (what a config written before a field existed meant)."""
        return {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
                for f in fields(cls) if f.default is not MISSING}

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update(images=list(self.images), input=self.input.to_json(),
                 backends=[b.to_json() for b in self.backends], batches=list(self.batches),
                 max_batch=list(self.max_batch))
        if self.contention_limit is None:
            d["contention_limit"] = "off"
        if self.load is not None:
            d["load"] = self.load.to_json()
        else:
            d.pop("load", None)
        if self.sweep:
            d["sweep"] = {k: [v.label if isinstance(v, InputSpec) else v for v in vals] for k, vals in self.sweep.items()}
        else:
            d.pop("sweep", None)
        return d


_FIELDS = {"name", "model", "images", "input", "backends", "batches", "max_batch", "loops", "warmup",
           "threshold", "family", "reference", "results_dir", "threads", "device", "row_timeout_s",
           "schedule", "round_loops", "rewarm_loops", "seed", "max_live_workers", "executor", "scheduler",
           "processes", "contention_limit", "contention_retries", "run_spread", "load", "sweep", "oversubscribe",
           "max_rows"}
_BACKEND_FIELDS = {"name", "variant", "threads", "device", "options", "env", "sweep"}
_SCALARS = (str, int, float, bool, type(None))


def _key(k: Any) -> str:
    """A mapping key as it may appear in a one-line message (keys may be ints, None, or hold newlines)."""
    return k if isinstance(k, str) and k.isidentifier() else repr(k)


def _unknown(keys: Any, known: Any) -> Optional[str]:
    """The first key not in `known`, printable."""
    unknown = sorted(_key(k) for k in keys if not isinstance(k, str) or k not in known)
    return unknown[0] if unknown else None


def _int(where: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{where}: {value} is out of range [{lo}, {hi}]")
    return value


def _optional_int(data: Dict[str, Any], key: str, lo: int, hi: int) -> Optional[int]:
    return None if data.get(key) is None else _int(key, data[key], lo, hi)


def _choice(where: str, value: Any, allowed: Tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{where}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


def _str(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _int_list(where: str, value: Any, lo: int, hi: int) -> Tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(f"{where}: must not be empty")
    ints = tuple(_int(f"{where}[{i}]", v, lo, hi) for i, v in enumerate(items))
    if len(set(ints)) != len(ints):
        raise ConfigError(f"{where}: {list(ints)} lists a value twice")
    return ints


def _input(where: str, value: Any) -> InputSpec:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping with mode, width, height")
    unknown = _unknown(value, {"mode", "width", "height"})
    if unknown:
        raise ConfigError(f"{where}.{unknown}: unknown field (known: mode, width, height)")
    mode = value.get("mode", "fit")
    if not isinstance(mode, str) or mode not in INPUT_MODES:
        raise ConfigError(f"{where}.mode: expected one of {', '.join(INPUT_MODES)}, got {mode!r}")
    if mode == "native":
        if "width" in value or "height" in value:
            raise ConfigError(f"{where}: 'native' mode takes the image's own size; remove width/height")
        return InputSpec("native")
    for k in ("width", "height"):
        if k not in value:
            raise ConfigError(f"{where}.{k}: required in {mode!r} mode")
    w = _int(f"{where}.width", value["width"], 32, MAX_SIDE)
    h = _int(f"{where}.height", value["height"], 32, MAX_SIDE)
    for k, v in (("width", w), ("height", h)):
        if v % 32:
            raise ConfigError(f"{where}.{k}: {v} is not a multiple of 32 (needed in {mode!r} mode)")
    return InputSpec(mode, w, h)


def parse_size(text: str, where: str = "size") -> Tuple[int, int]:
    """'1280x896' -> (1280, 896): sizes are written width x height, each a positive integer.

    Only the syntax is checked here; `fit_input` adds what an input size must also be."""
    m = re.fullmatch(r"\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*", str(text))
    if not m or int(m.group(1)) <= 0 or int(m.group(2)) <= 0:
        raise ConfigError(f"{where} {text!r}: expected WIDTHxHEIGHT, e.g. 1280x896")
    return int(m.group(1)), int(m.group(2))


def fit_input(text: str, where: str = "--size") -> InputSpec:
    """A 'fit' input size from WIDTHxHEIGHT text, validated as the scenario's `input` field is."""
    w, h = parse_size(text, where)
    return _input(where, {"mode": "fit", "width": w, "height": h})


def _backend(where: str, value: Any, threads: Optional[int], device: str) -> BackendSpec:
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a backend name or a mapping with 'name'")
    unknown = _unknown(value, _BACKEND_FIELDS)
    if unknown:
        raise ConfigError(f"{where}.{unknown}: unknown field (known: {', '.join(sorted(_BACKEND_FIELDS))})")
    name = _str(f"{where}.name", value.get("name"))
    if name not in REGISTRY:
        raise ConfigError(f"{where}.name: unknown backend {name!r} (known: {', '.join(sorted(REGISTRY))})")
    try:
        cls = backend_class(name)
    except BenchError as e:
        raise ConfigError(f"{where}.name: {e}") from None
    variant = _str(f"{where}.variant", value.get("variant", "default"))
    if variant not in cls.variants:
        raise ConfigError(f"{where}.variant: backend {name!r} has no variant {variant!r} "
                          f"(known: {', '.join(cls.variants)})")
    options = _scalar_map(f"{where}.options", value.get("options"))
    cls.parse_options(options, f"{where}.options (backend {name!r})")  # an unknown or mistyped key fails here
    env = {k: str(v) for k, v in _scalar_map(f"{where}.env", value.get("env")).items()}
    for k, v in env.items():
        if k not in WORKER_ENV:
            raise ConfigError(f"{where}.env.{_key(k)}: not a tunable worker variable (allowed: {', '.join(sorted(WORKER_ENV))})")
        if "\0" in v or len(v) > 256:
            raise ConfigError(f"{where}.env.{_key(k)}: value must be a short string without NUL")
    t = value.get("threads", threads)
    spec = BackendSpec(
        name=name,
        variant=variant,
        threads=None if t is None else _int(f"{where}.threads", t, 1, 1024),
        device=_device(f"{where}.device", value.get("device", device)),
        options=options,
        env=env,
    )
    if value.get("sweep") is not None:
        spec = replace(spec, sweep={k: list(v) for k, v in _sweep(f"{where}.sweep", value["sweep"], [spec]).items()})
    return spec


SWEEP_KEYS = ("threads", "input")     # and options.NAME for a NAME of the backend's options


def sweep_points(sweep: Dict[str, Sequence[Any]]) -> List[Dict[str, Any]]:
    """Every combination of the swept values ([{}] without a sweep), keys in sorted order."""
    points: List[Dict[str, Any]] = [{}]
    for key in sorted(sweep):
        points = [{**p, key: v} for p in points for v in sweep[key]]
    return points


def _safe(value: Any) -> str:
    """A swept option's value as it appears in a row's key (letters, digits, '_' and '.')."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", str(value))


def _sweep(where: str, value: Any, backends: Sequence[Any] = ()) -> Dict[str, Tuple[Any, ...]]:
    """A `sweep:` mapping validated: non-empty lists, known keys (threads, input, options.NAME of every
    backend it applies to, naming a backend's known options where one lacks it), fit sizes checked."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where}: expected a mapping of lists, e.g. {{threads: [1, 2], input: [320x416, 640x480]}}")
    out: Dict[str, Tuple[Any, ...]] = {}
    for key, vals in value.items():
        if not isinstance(key, str) or not (key in SWEEP_KEYS or key.startswith("options.")):
            raise ConfigError(f"{where}.{_key(key)}: not a key a sweep takes (known: threads, input, options.NAME)")
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"{where}.{key}: expected a non-empty list of values")
        if len(set(map(str, vals))) != len(vals):
            raise ConfigError(f"{where}.{key}: {vals} lists a value twice")
        if key == "threads":
            out[key] = tuple(_int(f"{where}.threads[{i}]", v, 1, 1024) for i, v in enumerate(vals))
        elif key == "input":
            out[key] = tuple(_swept_input(f"{where}.input[{i}]", v) for i, v in enumerate(vals))
        else:
            name = key[len("options."):]
            for b in backends:
                cls = backend_class(b.name)
                known = [f.name for f in fields(cls.Options)]
                if name not in known:
                    raise ConfigError(f"{where}.{key}: backend {b.name!r} takes no option {name!r} "
                                      f"(known: {', '.join(known) or 'none'})")
                for v in vals:
                    if not isinstance(v, _SCALARS):
                        raise ConfigError(f"{where}.{key}: expected strings, numbers or booleans, got {v!r}")
                    cls.parse_options({**b.options, name: v}, f"{where}.{key} (backend {b.name!r})")
            out[key] = tuple(vals)
    return out


def _swept_input(where: str, value: Any) -> InputSpec:
    """'640x480' (fit mode) or a mapping as `input:`; sizes not a multiple of 32 are refused, saying why."""
    if isinstance(value, dict):
        return _input(where, value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected WIDTHxHEIGHT, e.g. 640x480")
    w, h = parse_size(value, where)
    for k, v, up in (("width", w, -(-w // 32) * 32), ("height", h, -(-h // 32) * 32)):
        if v % 32:
            raise ConfigError(f"{where}: {value}'s {k} {v} is not a multiple of 32, which both families' strided "
                              f"networks need; fit mode pads the image into the input, not the input: use {up} "
                              f"(e.g. {value.replace(str(v), str(up), 1)})")
    return _input(where, {"mode": "fit", "width": w, "height": h})


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _device(where: str, value: Any) -> str:
    try:
        return check_device(_str(where, value))
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _scalar_map(where: str, value: Any) -> Dict[str, Any]:
    """A flat mapping of names to scalars: what backend options and env need, and all they may hold."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping")
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise ConfigError(f"{where}: keys must be non-empty strings, got {k!r}")
        if not isinstance(v, _SCALARS) or (isinstance(v, float) and v != v):
            raise ConfigError(f"{where}.{_key(k)}: expected a string, number or boolean, got {type(v).__name__}")
    return dict(value)


def _scheduler(value: Any) -> Optional[str]:
    """A Dask scheduler address (tcp://host:port), or None ("" too: none)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _SCHEDULER.match(value.strip()) or \
            not 0 < int(value.strip().rsplit(":", 1)[1]) < 65536:
        raise ConfigError(f"scheduler: expected a Dask scheduler address such as tcp://10.0.0.5:8786, got {value!r}")
    return value.strip()


def _number(where: str, value: Any, lo: float, hi: float, open_lo: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if value < lo or value > hi or (open_lo and value <= lo):
        raise ConfigError(f"{where}: {value} is out of range ({'>' if open_lo else '>='} {lo:g}, <= {hi:g})")
    return float(value)


def _load(value: Any) -> Optional[LoadSpec]:
    """The `load:` section: every field checked, LoadGen's own settings by their names (one line each)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError("load: expected a mapping, e.g. {scenario: server, latency_bound_ms: 100}")
    known = {f.name for f in fields(LoadSpec)}
    unknown = _unknown(value, known)
    if unknown:
        raise ConfigError(f"load.{unknown}: unknown field (known: {', '.join(sorted(known))})")
    kind = _choice("load.scenario", value.get("scenario"), LOAD_SCENARIOS)
    bound = value.get("latency_bound_ms")
    if kind == "server" and bound is None:
        raise ConfigError("load.latency_bound_ms: required for the server scenario (the bound a rate must meet)")
    qps = value.get("target_qps", "auto")
    if qps != "auto":
        qps = _number("load.target_qps", qps, 0.0, 1e7, open_lo=True)
    raw = value.get("settings") or {}
    if not isinstance(raw, dict):
        raise ConfigError("load.settings: expected a mapping of LoadGen TestSettings fields")
    for k, v in raw.items():
        if k not in LOADGEN_SETTINGS:
            raise ConfigError(f"load.settings.{_key(k)}: not a LoadGen TestSettings field here "
                              f"(known: {', '.join(LOADGEN_SETTINGS)})")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            if not (isinstance(v, bool) and k in ("server_coalesce_queries",)):
                raise ConfigError(f"load.settings.{k}: expected a number, got {v!r}")
    decode = value.get("decode", False)
    if not isinstance(decode, bool):
        raise ConfigError(f"load.decode: expected true or false, got {decode!r}")
    return LoadSpec(
        scenario=kind,
        latency_bound_ms=None if bound is None else _number("load.latency_bound_ms", bound, 0.0, 1e6, open_lo=True),
        percentile=None if value.get("percentile") is None else _number("load.percentile", value["percentile"], 0.0,
                                                                        100.0, open_lo=True),
        min_duration_s=_number("load.min_duration_s", value.get("min_duration_s", 10.0), 0.0, 86400.0, open_lo=True),
        max_duration_s=None if value.get("max_duration_s") is None else
        _number("load.max_duration_s", value["max_duration_s"], 0.0, 86400.0, open_lo=True),
        target_qps=qps,
        samples_per_query=_int("load.samples_per_query", value.get("samples_per_query", 8), 1, 4096),
        fps=_number("load.fps", value.get("fps", 30.0), 0.0, 10000.0, open_lo=True),
        in_flight=_int("load.in_flight", value.get("in_flight", 1), 1, 256),
        max_batch=_int("load.max_batch", value.get("max_batch", 1), 1, MAX_BATCH),
        max_queue_delay_ms=_number("load.max_queue_delay_ms", value.get("max_queue_delay_ms", 2.0), 0.0, 60000.0),
        decode=decode,
        rounds=_int("load.rounds", value.get("rounds", 3), 1, 100),
        search_steps=_int("load.search_steps", value.get("search_steps", 5), 1, 30),
        closed_loop_loops=_int("load.closed_loop_loops", value.get("closed_loop_loops", 200), 10, MAX_LOOPS),
        settings=dict(raw))


def _fraction(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 0.5 or value != value:
        raise ConfigError(f"{where}: expected a relative standard deviation in [0, 0.5] (e.g. 0.015), got {value!r}")
    return float(value)


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def check_sweep(scenario: "Scenario") -> None:
    """What a sweep may not do, before any row runs: more rows than `max_rows`, threads beyond the cores."""
    if not scenario.sweep and not any(b.sweep for b in scenario.backends):
        return
    count = len(scenario.rows())
    if count > scenario.max_rows:
        raise ConfigError(f"sweep: {count} rows, more than max_rows={scenario.max_rows} (a typo? raise max_rows "
                          "if you mean it)")
    cores = usable_cores()
    asked = sorted({int(t) for sw in [scenario.sweep] + [b.sweep for b in scenario.backends]
                    for t in sw.get("threads", ())})
    over = [t for t in asked if t > cores]
    if over and not scenario.oversubscribe:
        raise ConfigError(f"sweep.threads: {', '.join(map(str, over))} above this machine's {cores} cores "
                          "(oversubscribe: true measures them anyway)")


def _contention_limit(value: Any) -> Optional[float]:
    """Cores (a number >= 0), or `off` / false: contention recorded, chunks never measured again."""
    if value is False or value == "off":
        return None
    if value is None:
        return CONTENTION_LIMIT
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1024 or value != value:
        raise ConfigError(f"contention_limit: expected cores other programs may use (a number >= 0, e.g. 0.1) "
                          f"or off, got {value!r}")
    return float(value)


def scenario_from_dict(data: Any, source: str = "<config>") -> Scenario:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level")
    unknown = _unknown(data, _FIELDS)
    if unknown:
        raise ConfigError(f"{source}: unknown field {unknown} (known: {', '.join(sorted(_FIELDS))})")
    swept_input = isinstance(data.get("sweep"), dict) and "input" in data["sweep"]
    for k in ("model", "input", "backends"):
        if k not in data and not (k == "input" and swept_input):
            raise ConfigError(f"{source}: missing required field {k!r}")
    threads = data.get("threads")
    if threads is not None:
        threads = _int("threads", threads, 1, 1024)
    device = _device("device", data.get("device", "cpu"))
    images = data.get("images", ["default"])
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not images:
        raise ConfigError("images: expected a non-empty list of image paths")
    backends = data["backends"]
    if not isinstance(backends, list) or not backends:
        raise ConfigError("backends: expected a non-empty list")
    threshold = data.get("threshold", 0.8)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold: expected a number in [0, 1], got {threshold!r}")
    specs = tuple(_backend(f"backends[{i}]", b, threads, device) for i, b in enumerate(backends))
    entries = [(b.name, b.variant, b.device) for b in specs]
    for i, e in enumerate(entries):
        if e in entries[:i]:
            raise ConfigError(f"backends[{i}]: backend {e[0]!r}, variant {e[1]!r} on {e[2]} is listed twice")
    reference = data.get("reference")
    if reference is not None and (not isinstance(reference, str) or reference not in {b.name for b in specs}):
        raise ConfigError(f"reference: {reference!r} is not one of the scenario's backends")
    family = data.get("family")
    if family is not None and (not isinstance(family, str) or family not in ("insightface", "biubug6")):
        raise ConfigError(f"family: expected 'insightface' or 'biubug6', got {family!r}")
    scenario = Scenario(
        name=_str("name", data.get("name", Path(source).stem)),
        model=_str("model", data["model"]),
        images=tuple(_str(f"images[{i}]", v) for i, v in enumerate(images)),
        input=_input("input", data["input"]) if "input" in data else _swept_input("sweep.input[0]", data["sweep"]["input"][0]),
        backends=specs,
        batches=_int_list("batches", data.get("batches", [1]), 1, MAX_BATCH),
        max_batch=_int_list("max_batch", data["max_batch"], 1, MAX_BATCH) if "max_batch" in data else (),
        loops=_int("loops", data.get("loops", 1000), 1, MAX_LOOPS),
        warmup=_int("warmup", data.get("warmup", 50), 0, MAX_LOOPS),
        threshold=float(threshold),
        family=family,
        reference=reference,
        results_dir=_str("results_dir", data.get("results_dir", "results")),
        row_timeout_s=(_int("row_timeout_s", data["row_timeout_s"], 1, 7 * 24 * 3600)
                       if data.get("row_timeout_s") is not None else None),
        schedule=_choice("schedule", data.get("schedule", "interleaved"), SCHEDULES),
        round_loops=_optional_int(data, "round_loops", 1, MAX_LOOPS),
        rewarm_loops=_optional_int(data, "rewarm_loops", 0, MAX_LOOPS),
        seed=_optional_int(data, "seed", 0, 2**31 - 1),
        max_live_workers=_optional_int(data, "max_live_workers", 1, 4096),
        executor=_choice("executor", data.get("executor", "local"), EXECUTORS),
        scheduler=_scheduler(data.get("scheduler")),
        processes=_optional_int(data, "processes", 1, 1000),
        contention_limit=_contention_limit(data.get("contention_limit", CONTENTION_LIMIT)),
        contention_retries=_optional_int(data, "contention_retries", 0, MAX_LOOPS),
        run_spread=_fraction("run_spread", data.get("run_spread", RUN_SPREAD)),
        load=_load(data.get("load")),
        sweep=_sweep("sweep", data.get("sweep"), specs),
        oversubscribe=_bool("oversubscribe", data.get("oversubscribe", False)),
        max_rows=_int("max_rows", data.get("max_rows", MAX_ROWS), 1, 100000),
        source=source,
    )
    if scenario.scheduler is not None and scenario.executor != "dask":
        raise ConfigError(f"scheduler: {scenario.scheduler!r} is a Dask scheduler; it needs executor: dask "
                          "(--executor dask)")
    if scenario.executor == "dask":
        for i, b in enumerate(specs):  # a Dask worker holds one GPU, seen as cuda:0 (CUDA_VISIBLE_DEVICES)
            if b.device.startswith("cuda:") and b.device != "cuda:0":
                raise ConfigError(f"backends[{i}].device: {b.device} with executor dask: a GPU row runs on the GPU "
                                  "its Dask worker holds (use cuda; pick GPUs by starting workers on them)")
    check_sweep(scenario)
    keys: Dict[str, RowId] = {}
    for row in scenario.rows():  # keys name files: two identities must never share one
        if keys.setdefault(row.key, row.id) != row.id:
            raise ConfigError(f"backends: rows {keys[row.key]} and {row.id} would share the key {row.key!r}")
    return scenario


def read_config(path: Path) -> Any:
    """A scenario file's YAML, parsed but not yet validated (`load_scenario` validates it).

    The CLI reads it first where an option depends on what the file says (run's --backends keeps a
    listed entry's options; its reference default depends on the file's reference)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes is too large for a scenario config")
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (UTF-8 expected)") from None
    try:
        return yaml.safe_load(text)  # safe: a config can never construct Python objects
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None


def scenario_with_overrides(data: Any, source: str, overrides: Optional[Dict[str, Any]] = None) -> Scenario:
    """Scenario data (a config's YAML, or one the CLI assembled) with environment and CLI overrides,
    validated: RETINABENCH_MODEL / RETINABENCH_IMAGE over the data, `overrides` (None values
    skipped) over both."""
    if isinstance(data, dict):
        data = dict(data)
        if os.environ.get("RETINABENCH_MODEL"):
            data["model"] = os.environ["RETINABENCH_MODEL"]
        if os.environ.get("RETINABENCH_IMAGE"):
            data["images"] = os.environ["RETINABENCH_IMAGE"].split(os.pathsep)
        for k, v in (overrides or {}).items():
            if v is not None:
                data[k] = v
    return scenario_from_dict(data, source)


def load_scenario(path: Path, overrides: Optional[Dict[str, Any]] = None) -> Scenario:
    """Read and validate a YAML scenario, then apply environment and CLI overrides."""
    return scenario_with_overrides(read_config(path), str(Path(path)), overrides)


def backend_entry_key(entry: Any) -> Optional[Tuple[str, str]]:
    """(name, variant) of a `backends:` entry as a config writes it (a name, or a mapping with
    `name`); None for anything else (validation names it later)."""
    if isinstance(entry, str):
        return entry, "default"
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        variant = entry.get("variant", "default")
        return entry["name"], variant if isinstance(variant, str) else repr(variant)
    return None


def entry_on_device(entry: Any, device: str) -> Any:
    """A `backends:` entry moved to `device` (run's --device: every entry, whatever it said)."""
    if isinstance(entry, str):
        return {"name": entry, "device": device}
    if isinstance(entry, dict):
        return {**entry, "device": device}
    return entry
