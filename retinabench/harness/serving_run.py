"""A serving run: every row of a scenario with a `load:` section, driven by MLPerf LoadGen.

Each row's worker is loaded once (as for the latency tables, one process per row) and measures its
own closed-loop rate first: `closed_loop_loops` loops of the measured loop, the rate its per-image
median allows. Then, in `rounds` rounds whose row order is shuffled from the recorded seed (as the
latency tables interleave), each row runs its LoadGen tests (retinabench.harness.serving):

- `server` with `target_qps: auto`: a search over LoadGen runs for the highest rate LoadGen calls
  VALID at the latency bound. It starts at 80% of the closed-loop rate (on a GPU, times the copies
  in flight, which overlap), grows by a quarter while runs pass (shrinks by 40% while they fail),
  then bisects between the highest passing and the lowest failing rate, `search_steps` runs in all;
  later rounds start at the earlier rounds' median peak and step by 10%. A slow rate gets the time
  to issue the queries LoadGen's early stopping needs (else it 'exits early' whatever its latency).
  A search over runs rather than LoadGen's FindPeakPerformance mode: that mode runs its own
  open-ended search inside one test (doubling until a run fails, each run a full test), so neither
  the time a row takes nor the interleaving of rows could be bounded; our steps are each one
  PerformanceOnly test with its own logs, ended by `max_duration_s` and by the overload guard;
- `server` with a fixed rate, `offline`, `singlestream`, `multistream`: one test per round.

A row's figure is the median over its rounds, with their range. A row whose latency bound is below
its own closed-loop single-batch latency cannot meet it at any rate: it ends with that reason and
the run goes on. Everything is written into the run folder: rows/ (the closed-loop samples, as a
latency run's), loadgen/<row>/<round>-<step>/ (LoadGen's mlperf_log_summary.txt and
mlperf_log_detail.txt, and result.json), serving.json (every test), serving.csv (one line per row).
"""
from __future__ import annotations

import csv
import io
import json
import os
import statistics
import sys
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from retinabench.config import LoadSpec, Row, Scenario
from retinabench.errors import BenchError
from retinabench.harness import env as envmod
from retinabench.harness.contention import ContentionGuard, contended
from retinabench.harness.process import WorkerProcess, interpreter_for, worker_memory_limit
from retinabench.harness.schedule import new_seed
from retinabench.harness.serving import loadgen_available
from retinabench.harness.units import with_samples
from retinabench.records import Command, Job, WorkerResult
from retinabench.store import RowResult, RunStore

START_FRACTION = 0.8      # the search's first rate, of the closed-loop rate
GROW, SHRINK = 1.25, 0.6  # ... times these while runs pass (fail), before the other outcome brackets the peak
NEAR = 0.1                # later rounds start at the earlier rounds' median peak, stepping by this fraction
EARLY_STOPPING_QUERIES = {99: 700, 95: 200}   # queries a test runs at least, by percentile (else 100)
QUERY_MARGIN = 1.3        # a server test's time limit leaves its Poisson arrivals this much room for them
CONTENDED_RETRIES = 2     # a test during which other programs took more than contention_limit: run again
MAX_BACKLOG_S = 2.0       # the overload guard: a backlog of this many seconds of the target rate (at least 256)
SERVING_COLUMNS = ["backend", "variant", "device", "batch", "scenario", "status", "reason", "rate", "rate_min",
                   "rate_max", "rate_unit", "latency_bound_ms", "percentile", "p50_ms", "p90_ms", "p99_ms",
                   "streams", "fps", "closed_loop_rate", "rate_over_closed_loop", "validity", "invalid_reason",
                   "overloaded_above", "energy_per_image_j", "energy", "in_flight", "threads_each", "rounds", "tests",
                   "service_ms_p50", "closed_loop_ms", "service_over_closed_loop", "wait_ms_p50", "wait_ms_p99",
                   "batch_mean", "tests_contended"]


@dataclass
class RowServing:
    """One row's tests and what they add up to."""

    row: Row
    tests: List[Dict[str, Any]] = field(default_factory=list)
    closed_loop_ms: Optional[float] = None     # the closed-loop median per batch
    # each closed-loop chunk measured: its median and what other programs took meanwhile; a contended one is
    # measured again (up to CONTENDED_RETRIES), as a test is, and the last one counts
    closed_loop_chunks: List[Dict[str, Any]] = field(default_factory=list)
    status: str = "passed"
    reason: str = ""

    @property
    def key(self) -> str:
        return self.row.key


def percentile_of(load: LoadSpec) -> float:
    return (load.percentile if load.percentile is not None else (90.0 if load.scenario == "singlestream" else 99.0))


def loadgen_fields(load: LoadSpec, target: Optional[float], closed_ms: float) -> Dict[str, Any]:
    """LoadGen TestSettings fields for one test (the scenario's own `settings` override them)."""
    min_ms = int(load.min_duration_s * 1000)
    pct = percentile_of(load) / 100.0
    # LoadGen's early stopping needs enough queries to estimate a tail percentile (about 460 for p99): a test
    # must run at least that many, or no rate can pass however fast the pipeline (LoadGen says so otherwise)
    queries = EARLY_STOPPING_QUERIES.get(round(pct * 100), 100)
    max_s = load.max_duration_s if load.max_duration_s is not None else 2 * load.min_duration_s + 20
    if load.max_duration_s is None and load.scenario == "server" and target:
        # ... and a slow rate must have the time to issue them (else it 'exits early', whatever its latency)
        max_s = max(max_s, QUERY_MARGIN * queries / float(target) + load.min_duration_s)
    f: Dict[str, Any] = {"min_duration_ms": min_ms, "max_duration_ms": int(max_s * 1000), "min_query_count": queries}
    if load.scenario == "server":
        f.update(server_target_qps=float(target), server_target_latency_percentile=pct,
                 server_target_latency_ns=int(float(load.latency_bound_ms) * 1e6))
    elif load.scenario == "offline":
        f.update(offline_expected_qps=float(target))
    elif load.scenario == "singlestream":
        f.update(single_stream_expected_latency_ns=int(closed_ms * 1e6), single_stream_target_latency_percentile=pct)
    else:
        f.update(multi_stream_expected_latency_ns=int(closed_ms * load.samples_per_query * 1e6),
                 multi_stream_samples_per_query=load.samples_per_query, multi_stream_target_latency_percentile=pct)
    f.update(load.settings)
    return f


def closed_rate(rs: RowServing) -> float:
    """Images per second the row's own closed-loop median allows: one batch after another."""
    assert rs.closed_loop_ms
    return rs.row.id.batch * 1000.0 / rs.closed_loop_ms


def expected_rate(rs: RowServing, load: LoadSpec) -> float:
    """Where the search starts from and the overload guard's scale: on a GPU the `in_flight` copies
    overlap (one uploads while another computes), so their closed-loop rates add up; on a CPU they
    split the row's cores, and one copy's closed-loop rate is what they share."""
    overlap = load.in_flight if rs.row.id.device.startswith("cuda") else 1
    return closed_rate(rs) * overlap


class ServingRun:
    def __init__(self, scenario: Scenario, model: Path, images: List[Path], store: RunStore, seed: int,
                 say: Callable[[str], None]):
        assert scenario.load is not None
        self.scenario, self.load, self.model, self.images, self.store = scenario, scenario.load, model, images, store
        self.seed, self.say = seed, say
        self.rows = [RowServing(r) for r in scenario.rows()]
        self.workers: Dict[str, WorkerProcess] = {}
        self.finished: Dict[str, WorkerResult] = {}

    # -- one row's worker
    def job(self, row: Row) -> Job:
        sc = self.scenario
        return Job(row=row.id, backend=row.backend, model=str(self.model), images=tuple(str(p) for p in self.images),
                   input=row.input or sc.input, loops=self.load.closed_loop_loops, warmup=sc.warmup, threshold=sc.threshold,
                   family=sc.family, parent_pid=os.getpid(), memory_limit_bytes=worker_memory_limit(),
                   timeout_s=sc.row_timeout_s)

    def end(self, rs: RowServing, result: WorkerResult) -> None:
        rs.status, rs.reason = result.status, result.reason
        self.finished[rs.key] = result
        self.workers.pop(rs.key, None)

    def start(self) -> None:
        why = loadgen_available()
        for rs in self.rows:
            if why:
                self.end(rs, WorkerResult.failure("unavailable", why))
                continue
            try:
                python = interpreter_for(rs.row.backend.name)
            except BenchError as e:
                self.end(rs, WorkerResult.failure("unavailable", str(e)))
                continue
            worker = WorkerProcess(self.job(rs.row), self.store.work(rs.row.id), python)
            self.workers[rs.key] = worker
            ended = worker.start()
            if ended is not None:
                self.end(rs, ended)
                continue
            self.closed_loop(rs, worker)

    def closed_loop(self, rs: RowServing, worker: WorkerProcess) -> None:
        """The row's closed-loop median per batch (the search starts from it, the tables compare with it),
        measured again while other programs took more than the contention limit."""
        for attempt in range(CONTENDED_RETRIES + 1):
            ended = worker.measure(Command("measure", self.load.closed_loop_loops,
                                           warmup=self.scenario.warmup if attempt == 0 else 0))
            if ended is not None:
                self.end(rs, ended)
                return
            load = dict(worker.last_load)
            busy = contended(load, self.scenario.contention_limit)
            rs.closed_loop_chunks.append({"attempt": attempt, "contended": busy, **load})
            rs.closed_loop_ms = float(load.get("median_total_ms") or 0.0) or None
            if not busy:
                return
            self.say(f"  {rs.key}: other programs busy during the closed loop "
                     f"({float(load.get('others_s') or 0.0):.2g} CPU s in {float(load.get('wall_s') or 0.0):.2g} s)"
                     + (": measured again" if attempt < CONTENDED_RETRIES else ": kept, contended"))
            if attempt < CONTENDED_RETRIES:
                ContentionGuard(self.scenario.contention_limit, 0, []).wait_quiet()

    # -- the tests
    def test(self, rs: RowServing, r: int, step: int, target: Optional[float]) -> Optional[Dict[str, Any]]:
        worker = self.workers.get(rs.key)
        if worker is None:
            return None
        load = self.load
        out = self.store.path / "loadgen" / rs.key / f"r{r}-s{step}"
        fields = loadgen_fields(load, target, rs.closed_loop_ms or 1.0)
        # offline issues its whole test at once: only the other scenarios can run away from the pipeline
        # (a backlog of MAX_BACKLOG_S of the pipeline's own closed-loop capacity: queries waiting that long)
        backlog = 10**9 if load.scenario == "offline" else max(256, int(MAX_BACKLOG_S * expected_rate(rs, load)))
        settings = {"kind": load.scenario, "fields": fields, "in_flight": load.in_flight, "decode": load.decode,
                    "max_queue_delay_ms": load.max_queue_delay_ms, "max_backlog": backlog}
        limit = fields["max_duration_ms"] / 1000.0 + 120.0
        for attempt in range(CONTENDED_RETRIES + 1):
            folder = out if attempt == 0 else out.with_name(out.name + f"-again{attempt}")
            ended = worker.serve(settings, folder, limit)
            if ended is not None:
                self.end(rs, ended)
                return None
            result = json.loads((folder / "result.json").read_text())
            result.update(round=r, step=step, target=target, folder=str(folder.relative_to(self.store.path)),
                          attempt=attempt)
            # other programs busy during the test: it is kept (recorded) and run again once the machine is quiet
            busy = contended(result.get("machine") or {}, self.scenario.contention_limit)
            result["contended"] = busy
            if not busy or attempt == CONTENDED_RETRIES:
                break
            result["replaced"] = True
            rs.tests.append(result)
            self.say(f"  {rs.key} round {r + 1} step {step + 1}: other programs used "
                     f"{float(result['machine'].get('others_cores') or 0):.2f} cores: measured again once quiet")
            ContentionGuard(self.scenario.contention_limit, 0, []).wait_quiet()
        rs.tests.append(result)
        self.say(f"  {rs.key} round {r + 1} step {step + 1}: " + describe(result, load))
        return result

    def search(self, rs: RowServing, r: int) -> None:
        """The highest rate LoadGen calls VALID at the bound, over `search_steps` runs: from 80% of the
        closed-loop rate, up by GROW while runs pass or down by SHRINK while they fail, then bisecting
        between the highest pass and the lowest failure. A later round starts at the median of the
        earlier rounds' peaks and steps by NEAR, so its steps refine the peak rather than find it again."""
        load = self.load
        lo, hi = 0.0, None
        target, grow, shrink = START_FRACTION * expected_rate(rs, load), GROW, SHRINK
        earlier = [peak for peak in (round_peak(rs.tests, q) for q in range(r)) if peak]
        if earlier:
            target, grow, shrink = statistics.median(earlier), 1.0 + NEAR, 1.0 - NEAR
        for step in range(load.search_steps):
            result = self.test(rs, r, step, round(target, 3))
            if result is None:
                return
            if result.get("validity") == "VALID":
                lo = target
                target = target * grow if hi is None else (lo + hi) / 2
            else:
                hi = target
                target = (lo + hi) / 2 if lo > 0 else target * shrink

    def measure(self) -> None:
        load = self.load
        rng = np.random.default_rng(self.seed)
        for r in range(load.rounds):
            alive = [rs for rs in self.rows if rs.key in self.workers]
            for i in rng.permutation(len(alive)):
                rs = alive[int(i)]
                if rs.closed_loop_ms is None:
                    continue
                bound = load.latency_bound_ms
                if r == 0 and bound is not None and rs.closed_loop_ms > bound:
                    self.workers.pop(rs.key).kill()
                    rs.status, rs.reason = "unavailable", (
                        f"the latency bound {bound:g} ms is below this row's own latency: its closed-loop "
                        f"median is {rs.closed_loop_ms:.3g} ms per batch of {rs.row.id.batch}")
                    continue
                if load.scenario == "server" and load.target_qps == "auto":
                    self.search(rs, r)
                else:
                    target = load.target_qps if load.target_qps != "auto" else expected_rate(rs, load)
                    self.test(rs, r, 0, target if load.scenario in ("server", "offline") else None)

    def finish(self) -> List[RowResult]:
        out = []
        for rs in self.rows:
            worker = self.workers.pop(rs.key, None)
            if worker is not None:
                result = worker.finish()
                if rs.status == "passed" and result.status != "passed":
                    rs.status, rs.reason = result.status, result.reason
                self.finished[rs.key] = result
            result = self.finished.get(rs.key) or WorkerResult.failure(rs.status, rs.reason)
            if rs.status != "passed" and result.status == "passed":
                result = replace(result, status=rs.status if rs.status in ("failed", "unavailable") else "failed",
                                 reason=rs.reason)
            row = RowResult(rs.row.id, result)
            out.append(with_samples(row, self.store) if result.status == "passed" else row)
        return out


def round_peak(tests: List[Dict[str, Any]], r: int) -> Optional[float]:
    """A round's highest VALID rate (None where none passed); a contended test measured again does not count."""
    rates = [t["target"] for t in tests if t.get("round") == r and not t.get("replaced")
             and t.get("validity") == "VALID" and t.get("target") is not None]
    return max(rates) if rates else None


def describe(result: Dict[str, Any], load: LoadSpec) -> str:
    bits = [str(result.get("validity"))]
    if result.get("target") is not None:
        bits.append(f"at {result['target']:.4g}/s")
    for k in ("p50_ms", "p99_ms"):
        if result.get(k) is not None:
            bits.append(f"{k[:-3]} {result[k]:.3g} ms")
    if result.get("overloaded"):
        bits.append("overloaded")
    return ", ".join(bits)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# What a row's tests add up to, and the run folder
# ---------------------------------------------------------------------------------------------

def row_line(rs: RowServing, load: LoadSpec) -> Dict[str, Any]:
    """serving.csv's line of one row: its figure (median over rounds, with the range), the latencies of
    the test at that figure, streams at `fps`, its closed-loop rate and what LoadGen said."""
    rid = rs.row.id
    line: Dict[str, Any] = {"backend": rid.backend, "variant": rid.variant, "device": rid.device, "batch": rid.batch,
                            "scenario": load.scenario, "status": rs.status, "reason": rs.reason,
                            "latency_bound_ms": load.latency_bound_ms, "percentile": percentile_of(load),
                            "fps": load.fps, "tests": len(rs.tests)}
    if rs.closed_loop_ms:
        line["closed_loop_rate"] = closed_rate(rs)
    if rs.status != "passed" or not rs.tests:
        return line
    tests = [t for t in rs.tests if not t.get("replaced")]   # a contended test measured again does not count
    rounds = sorted({t["round"] for t in tests})
    line["rounds"] = len(rounds)
    if load.scenario == "server":
        best = []   # per round: its highest VALID test (a search's peak; a fixed rate's one test)
        failing = []
        for r in rounds:
            mine = [t for t in tests if t["round"] == r]
            valid = [t for t in mine if t.get("validity") == "VALID"]
            failing += [t["target"] for t in mine if t.get("validity") != "VALID" and t.get("target") is not None]
            best.append(max(valid, key=lambda t: t["target"]) if valid else None)
        rates = [t["target"] if t is not None else 0.0 for t in best]
        line.update(rate=statistics.median(rates), rate_min=min(rates), rate_max=max(rates), rate_unit="queries/s")
        valid = [t for t in best if t is not None]
        at = sorted(valid, key=lambda t: t["target"])[len(valid) // 2] if valid else None
        if failing:
            line["overloaded_above"] = min(failing)
        line["validity"] = "VALID" if at is not None else "INVALID"
        if at is None:
            worst = tests[-1]
            line["invalid_reason"] = worst.get("invalid_reason") or worst.get("early_stopping") or "no rate passed"
    else:
        key = {"offline": "samples_per_second", "singlestream": "p90_ms", "multistream": "p99_ms"}[load.scenario]
        if load.scenario == "singlestream" and percentile_of(load) != 90.0:
            key = "p99_ms"
        values = [t.get(key) for t in tests if t.get(key) is not None]
        line.update(rate=statistics.median(values) if values else None, rate_min=min(values) if values else None,
                    rate_max=max(values) if values else None,
                    rate_unit="samples/s" if load.scenario == "offline" else f"ms ({key[:-3]})")
        at = sorted(tests, key=lambda t: t.get(key) or 0.0)[len(tests) // 2]
        line["validity"] = "VALID" if all(t.get("validity") == "VALID" for t in tests) else "INVALID"
        bad = [t for t in tests if t.get("validity") != "VALID"]
        if bad:
            line["invalid_reason"] = bad[0].get("invalid_reason") or bad[0].get("early_stopping") or ""
    if at is not None:
        line.update(p50_ms=at.get("p50_ms"), p90_ms=at.get("p90_ms"), p99_ms=at.get("p99_ms"),
                    in_flight=at.get("in_flight"), threads_each=at.get("threads_each"),
                    service_ms_p50=at.get("service_ms_p50"), wait_ms_p50=at.get("wait_ms_p50"),
                    wait_ms_p99=at.get("wait_ms_p99"), batch_mean=at.get("batch_mean"))
        if at.get("energy_per_image_j") is not None:
            line["energy_per_image_j"] = at["energy_per_image_j"]
        line["energy"] = "" if at.get("energy_j") is not None else str(at.get("energy", ""))
    line["tests_contended"] = sum(1 for t in rs.tests if t.get("contended"))
    if rs.closed_loop_ms:
        line["closed_loop_ms"] = rs.closed_loop_ms
        if line.get("service_ms_p50"):   # the pipeline's own time under load against its closed loop
            line["service_over_closed_loop"] = line["service_ms_p50"] / rs.closed_loop_ms
    rate = line.get("rate")
    if load.scenario in ("server", "offline") and rate:
        line["streams"] = rate / load.fps
        if line.get("closed_loop_rate"):
            line["rate_over_closed_loop"] = rate / line["closed_loop_rate"]
    return line


def write_serving(store: RunStore, run: ServingRun) -> List[Dict[str, Any]]:
    lines = [row_line(rs, run.load) for rs in run.rows]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SERVING_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for ln in lines:
        w.writerow({k: ("" if ln.get(k) is None else (f"{ln[k]:.6g}" if isinstance(ln[k], float) else ln[k]))
                    for k in SERVING_COLUMNS})
    store.write_file("serving.csv", buf.getvalue())
    store.write_file("serving.json", json.dumps({"load": run.load.to_json(), "seed": run.seed,
                                                 "rows": {rs.key: {"closed_loop_ms": rs.closed_loop_ms,
                                                                   "closed_loop_chunks": rs.closed_loop_chunks,
                                                                   "status": rs.status, "reason": rs.reason,
                                                                   "tests": rs.tests} for rs in run.rows}},
                                                indent=1, default=str))
    return lines


# (store, rows, serving.csv's lines): the reports the report layer writes from a finished serving run
ServingReports = Callable[[RunStore, List[RowResult], List[Dict[str, Any]], Scenario], None]


def run_serving(scenario: Scenario, model: Path, images: List[Path], results_root: Path, reports: ServingReports,
                say: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> Any:
    """The whole serving run: loaded rows, closed loops, LoadGen tests in rounds, the files; a RunOutcome."""
    from retinabench.harness.runner import RunOutcome
    store = RunStore.create(Path(results_root), scenario.name)
    lock = store.lock()
    seed = scenario.seed if scenario.seed is not None else new_seed()
    meta: Dict[str, Any] = {"scenario": scenario.name, "kind": "serving", "status": "running", "started_utc": _now(),
                            "model": str(model), "images": [str(p) for p in images], "seed": seed,
                            "load": scenario.load.to_json() if scenario.load else {}}
    status = "incomplete"
    rows: List[RowResult] = []
    try:
        store.write_config(scenario.to_dict())
        store.write_env(envmod.fingerprint([b.device for b in scenario.backends if b.device.startswith("cuda")]
                                           or ["cuda"]))
        store.write_meta(meta)
        run = ServingRun(scenario, model, images, store, seed, say)
        try:
            run.start()
            run.measure()
        finally:
            rows = run.finish()
        for r in rows:
            store.write_row(r)
        lines = write_serving(store, run)
        reports(store, rows, lines, scenario)
        failed = [r for r in rows if r.status == "failed"]
        status = "partial" if failed else "complete"
        meta.update(status=status, finished_utc=_now(), rows=[r.key for r in rows],
                    row_ids=[r.id.to_json() for r in rows], reason="; ".join(f"{r.key}: {r.reason}" for r in failed))
        store.write_meta(meta)
    except BaseException as e:
        meta.update(status="incomplete", reason=f"{type(e).__name__}: {e}")
        store.write_meta(meta)
        raise
    finally:
        lock.release()
    return RunOutcome(store.path, rows, status, [])
