"""Units: what one executor measures whole, on one machine, and what a unit's rows tell about each other.

A unit is an interleaved group (its rows loaded together, each in its own worker process, then
measured round by round in shuffled orders) or, in the sequential schedule, one row measured in
one chunk. `UnitRun` measures one in the calling process: the local executor's runner calls it in
bench.py's process, the Dask executor's task in a Dask worker's (retinabench.harness.runner,
retinabench.harness.dask_executor; both import this module, neither the other's).
`overlaps` says which rows worked on one host while a row measured; `host_info` names a host.
"""
from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from retinabench.config import Row, Scenario
from retinabench.errors import BenchError
from retinabench.harness import env as envmod
from retinabench.harness.contention import ContentionGuard
from retinabench.harness.process import WorkerProcess, interpreter_for
from retinabench.harness.processes import ProcessPart, merge
from retinabench.harness.schedule import Schedule, groups, process_blocks, round_orders
from retinabench.records import Command, Job, RowId
from retinabench.store import RowResult, RunStore, WorkDir, atomic_write


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while rows were running."""


def with_samples(result: RowResult, store: RunStore) -> RowResult:
    """A passed row with its samples, read from its scratch folder in `store`."""
    if result.status == "passed":
        arrays = store.work(result.id).read_samples()
        result.samples_ns, result.warmup_ns = arrays["samples"], arrays["warmup"]
        result.rounds = arrays.get("rounds")
        result.rewarm_ns = arrays.get("rewarm")
        processes = arrays.get("processes")
        # one process: as rows were before processes existed (their files carry no process column)
        result.processes = processes if processes is not None and len(set(processes.tolist())) > 1 else None
        result.replaced_ns = arrays.get("replaced")
    return result


# ---------------------------------------------------------------------------------------------
# Units: what one executor measures whole, on one machine
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """An interleaved group (its rows loaded together, then measured round by round in `orders`)
    or, in the sequential schedule, one row measured alone. The local executor measures units one
    after another here; the Dask executor makes each one task, run whole on one worker.

    Each row is measured by `len(blocks)` worker processes in turn: process k measures the rounds
    from `blocks[k]` up to the next block's first (retinabench.harness.processes), after `warmup`
    loops of its own. A chunk during which other programs took more than `contention_limit` cores
    is measured again, at most `contention_retries` times per row (retinabench.harness.contention)."""

    index: int                      # the group's index in its session (sequential: the row's among pending)
    rows: Tuple[Row, ...]
    chunks: Tuple[int, ...]         # measured loops per round
    orders: Tuple[Tuple[int, ...], ...]   # per round, the order the rows measure in
    warmup: int                     # per process
    rewarm: int
    label: str = ""                 # the rows' `group` ("s0g1"); "": measured alone (sequential)
    blocks: Tuple[int, ...] = (0,)  # the first round of each process
    contention_limit: Optional[float] = None   # cores; None: contention recorded, never judged
    contention_retries: int = 0     # chunks per row that may be measured again

    @property
    def interleaved(self) -> bool:
        return bool(self.label)

    @property
    def processes(self) -> int:
        return len(self.blocks)

    def block_rounds(self, k: int) -> range:
        """The rounds process k measures."""
        end = self.blocks[k + 1] if k + 1 < len(self.blocks) else len(self.chunks)
        return range(self.blocks[k], end)


def plan_units(rows: List[Row], scenario: Scenario, schedule: Schedule, session: int,
               split_devices: bool = False) -> List[Unit]:
    """The units that measure `rows`: one per row (sequential), else one per interleaved group.

    `split_devices`: a group's CPU rows and CUDA rows become two units (the Dask executor: a CPU
    unit holds its host's one measuring slot, a GPU unit one GPU, and a worker rarely holds both).
    """
    limit = scenario.contention_limit
    if schedule.kind == "sequential":
        units = []
        for i, row in enumerate(rows):
            n = schedule.processes_for([row.id.device], scenario.loops)
            chunks = tuple(len(part) for part in _split(scenario.loops, n))
            units.append(Unit(i, (row,), chunks, tuple((0,) for _ in chunks), schedule.process_warmup(scenario.warmup, n),
                              0, blocks=tuple(range(n)), contention_limit=limit,
                              contention_retries=_retries(scenario, len(chunks))))
        return units
    chunks = tuple(schedule.rounds(scenario.loops))
    found = groups(rows, lambda r: (r.id.input, r.id.batch), schedule.max_live_workers)   # one size and batch
    if split_devices:
        found = [part for g in found for part in _by_device(g)]
    units = []
    for g, group in enumerate(found):
        n = schedule.processes_for([r.id.device for r in group], len(chunks))
        orders = tuple(tuple(o) for o in round_orders(len(group), len(chunks), schedule.seed, g))
        units.append(Unit(g, tuple(group), chunks, orders, schedule.process_warmup(scenario.warmup, n),
                          schedule.rewarm_loops, f"s{session}g{g}", tuple(process_blocks(len(chunks), n)),
                          limit, _retries(scenario, len(chunks))))
    return units


def _split(loops: int, parts: int) -> List[range]:
    """`loops` split into `parts` consecutive, nearly equal, non-empty ranges."""
    edges = [(k * loops) // parts for k in range(parts + 1)]
    return [range(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def _retries(scenario: Scenario, chunks: int) -> int:
    """Chunks per row that may be measured again: the scenario's, else as many as it plans (so at most
    twice the planned chunks in all)."""
    return chunks if scenario.contention_retries is None else scenario.contention_retries


def _by_device(group: List[Row]) -> List[List[Row]]:
    cpu = [r for r in group if not r.id.device.startswith("cuda")]
    gpu = [r for r in group if r.id.device.startswith("cuda")]
    return [part for part in (cpu, gpu) if part] if group[0] in cpu else [part for part in (gpu, cpu) if part]


# (the row, its worker's scratch folder): a finished row as a unit hands it over, samples not yet read
UnitResult = Callable[[RowResult, WorkDir], None]


class UnitRun:
    """One unit measured in this process: worker processes per row, driven round by round.

    For each of the unit's process blocks, every live row's next worker is started (loaded), the
    block's rounds are measured, and the workers finish; a row's processes are then merged into its
    result (retinabench.harness.processes). A worker that dies or outruns its budget ends its row
    (`on_result` hears it at once); the other rows finish their rounds. A chunk that other programs
    contended is measured again after the machine quietens (retinabench.harness.contention).
    `interrupt()` may be called from another thread: no worker or chunk starts after it, live
    workers are stopped, and `run` raises Interrupted.
    """

    def __init__(self, unit: Unit, jobs: Dict[RowId, Job], work_of: Callable[[RowId], WorkDir],
                 on_result: UnitResult, bar: Any = None, describe: Optional[Callable[[int], str]] = None,
                 env: Optional[Dict[str, str]] = None, say: Optional[Callable[[str], None]] = None):
        self.unit, self.jobs, self.work_of, self.on_result = unit, jobs, work_of, on_result
        self.bar, self.describe, self.env = bar, describe, env
        self.workers: Dict[RowId, WorkerProcess] = {}
        self.kept: Dict[str, int] = {}        # interrupted: loops measured by rows whose rounds were kept
        self.parts: Dict[RowId, List[ProcessPart]] = {r.id: [] for r in unit.rows}
        self.busy: Dict[RowId, List[List[float]]] = {r.id: [] for r in unit.rows}
        self.ended: Dict[RowId, bool] = {r.id: False for r in unit.rows}
        self.guard = ContentionGuard(unit.contention_limit, unit.contention_retries, [r.id for r in unit.rows],
                                     say=say)
        self._stopping = threading.Event()
        self._done = threading.Event()

    def run(self) -> None:
        unit, bar = self.unit, self.bar
        per_row = unit.processes * unit.warmup + sum(unit.chunks) + \
            unit.rewarm * (len(unit.chunks) - unit.processes)
        total = per_row * len(unit.rows)
        done = [0]
        progress = (lambda d, t: bar.update_to(done[0] + d, total)) if bar is not None else None
        try:
            for k in range(unit.processes):
                self._start_block(k, progress)
                for r in unit.block_rounds(k):
                    if bar is not None and self.describe is not None:
                        bar.set_description(self.describe(r))
                    for i in unit.orders[r]:
                        row = unit.rows[i]
                        if row.id not in self.workers:
                            continue
                        self._check()
                        first = r == unit.blocks[k]
                        cmd = Command("measure", unit.chunks[r], warmup=unit.warmup if first else 0,
                                      rewarm=0 if first else unit.rewarm, round=r)
                        self._measure(row, cmd)
                        done[0] += cmd.warmup + cmd.rewarm + cmd.loops
                self._finish_block(k)
            for row in unit.rows:
                if not self.ended[row.id]:
                    self._check()
                    self._deliver(row)
        except BaseException:
            self._stop()
            raise
        finally:
            self._done.set()

    # -- one process block
    def _start_block(self, k: int, progress: Any) -> None:
        for row in self.unit.rows:
            if self.ended[row.id]:
                continue
            self._check()
            try:
                python = interpreter_for(row.backend.name)
            except BenchError as e:  # the backend's interpreter is missing: it says what and how to set it up
                self.ended[row.id] = True
                self.on_result(RowResult.failed(row.id, "unavailable", str(e)), self.work_of(row.id))
                continue
            job = replace(self.jobs[row.id], process=k, processes=self.unit.processes)
            worker = self.workers[row.id] = WorkerProcess(job, self.work_of(row.id).process(k), python, progress,
                                                          env=self.env)
            ended = worker.start()
            if ended is not None:
                self._ended(row, worker, ended)

    def _measure(self, row: Row, cmd: Command) -> None:
        """One chunk, measured again while other programs contended it and the row's budget allows."""
        worker = self.workers[row.id]
        ended = worker.measure(cmd)
        while ended is None and self.guard.should_remeasure(row.id, worker.last_load):
            self._check()
            if self.bar is not None:
                self.bar.set_description(self.guard.waiting_text(row.id.key))
            self.guard.wait_quiet(self._stopping)
            self._check()
            ended = worker.measure(Command("measure", cmd.loops, rewarm=self.unit.rewarm, round=cmd.round,
                                           replace=True))
        if ended is not None:  # it died or ran out of time: its row ends, the others go on
            self._ended(row, worker, ended)

    def _finish_block(self, k: int) -> None:
        for row in self.unit.rows:
            worker = self.workers.get(row.id)
            if worker is None:
                continue
            self._check()
            result = worker.finish()
            del self.workers[row.id]
            self.busy[row.id] += worker.busy
            if result.status != "passed":
                self._ended(row, worker, result, add_busy=False)
                continue
            self.parts[row.id].append(ProcessPart(k, result, worker.work, worker.pid))

    def _deliver(self, row: Row) -> None:
        """The row's processes merged: its record and files in its own scratch folder, then handed over."""
        work = self.work_of(row.id)
        for part in self.parts[row.id]:
            self.guard.judge(part.result.contention)
        result = merge(self.parts[row.id], work)
        self.ended[row.id] = True
        self.on_result(RowResult(row.id, result, group=self.unit.label, busy=self.busy[row.id]), work)

    def _ended(self, row: Row, worker: WorkerProcess, result: Any, add_busy: bool = True) -> None:
        self.workers.pop(row.id, None)
        if add_busy:
            self.busy[row.id] += worker.busy
        self.ended[row.id] = True
        if self.unit.processes > 1 and result.status == "failed":   # unavailable: the same in every process
            result = replace(result, reason=f"process {worker.job.process + 1} of {self.unit.processes}: "
                                            f"{result.reason}")
        work = self.work_of(row.id)
        for name in ("stderr", "stdout", "result"):   # where a row's files have always been
            src = getattr(worker.work, name)
            if src.is_file() and src != getattr(work, name):
                atomic_write(getattr(work, name), src.read_bytes())
        self.on_result(RowResult(row.id, result, busy=self.busy[row.id]), work)

    def _check(self) -> None:
        if self._stopping.is_set():
            raise Interrupted("stopped")

    def interrupt(self) -> None:
        """From another thread: stop starting anything, and stop the live workers (signals only)."""
        self._stopping.set()

        def stop_live() -> None:
            while not self._done.is_set():
                for worker in list(self.workers.values()):
                    worker.interrupt()
                self._done.wait(0.5)   # a worker that was starting now has a process to stop
        threading.Thread(target=stop_live, name="retinabench-stop", daemon=True).start()

    def _stop(self) -> None:
        """Interrupted mid-group: the idle workers write the rounds they finished (kept in their scratch
        folders, not used: `--resume` measures these rows again, whole), the rest are stopped."""
        for rid, worker in self.workers.items():
            if self.unit.interleaved and not self._stopping.is_set() and worker.measured and worker.result is None:
                worker.limit(10.0)
                result = worker.finish()
                if result.status == "passed":
                    self.kept[rid.key] = worker.measured   # this process's loops (earlier processes' are in p<k>/)
            worker.kill()


# ---------------------------------------------------------------------------------------------
# Which rows overlapped which, on one host
# ---------------------------------------------------------------------------------------------

def overlaps(rows: Sequence[RowResult], machine_of: Optional[Mapping[str, str]] = None) -> Dict[RowId, List[str]]:
    """For each row, the keys of the other rows whose work overlapped its measured windows on its machine.

    A row's measured windows are its worker's [round, start, end] chunks (re-warm loops excluded);
    another row's work is its `busy` stretches (loading, each chunk with its warmup and re-warm,
    writing its files), or its windows where it has no `busy` (rows from before it). Rows are on one
    machine when their hosts map to one `machine_of` key (a host's boot id: containers on one kernel
    share a machine), else when their hosts are equal; a row without a host overlaps nothing.
    Rows of one interleaved group never overlap: they work one at a time.
    """
    machine_of = machine_of or {}
    by_machine: Dict[str, List[RowResult]] = {}
    for r in rows:
        if r.host:
            by_machine.setdefault(machine_of.get(r.host, r.host), []).append(r)
    out: Dict[RowId, List[str]] = {r.id: [] for r in rows}
    for same in by_machine.values():
        work = {r.id: r.busy or [[w[1], w[2]] for w in r.result.windows] for r in same}
        for r in same:
            windows = [(float(w[1]), float(w[2])) for w in r.result.windows]
            out[r.id] = sorted(o.key for o in same if o.id != r.id and
                               any(ws < be and bs < we for ws, we in windows for bs, be in work[o.id]))
    return out


def host_info(gpu_devices: Sequence[str] = ("cuda",)) -> Tuple[str, Dict[str, Any]]:
    """This host's id (its hostname) and its environment fingerprint, with its kernel's boot id."""
    host = socket.gethostname() or "localhost"
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return host, {**envmod.fingerprint(gpu_devices), "host": host, "boot_id": boot}


def host_file(host: str) -> str:
    """hosts/<host>.json: a host's fingerprint in the run folder."""
    return f"hosts/{re.sub(r'[^A-Za-z0-9._-]', '_', host)[:200] or 'unknown'}.json"
