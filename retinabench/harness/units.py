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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from retinabench.config import Row, Scenario
from retinabench.errors import BenchError
from retinabench.harness import env as envmod
from retinabench.harness.process import WorkerProcess, interpreter_for
from retinabench.harness.schedule import Schedule, groups, round_orders
from retinabench.records import Command, Job, RowId
from retinabench.store import RowResult, RunStore, WorkDir


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while rows were running."""


def with_samples(result: RowResult, store: RunStore) -> RowResult:
    """A passed row with its samples, read from its scratch folder in `store`."""
    if result.status == "passed":
        arrays = store.work(result.id).read_samples()
        result.samples_ns, result.warmup_ns = arrays["samples"], arrays["warmup"]
        result.rounds = arrays.get("rounds")
        result.rewarm_ns = arrays.get("rewarm")
    return result


# ---------------------------------------------------------------------------------------------
# Units: what one executor measures whole, on one machine
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """An interleaved group (its rows loaded together, then measured round by round in `orders`)
    or, in the sequential schedule, one row measured in one chunk. The local executor measures
    units one after another here; the Dask executor makes each one task, run whole on one worker."""

    index: int                      # the group's index in its session (sequential: the row's among pending)
    rows: Tuple[Row, ...]
    chunks: Tuple[int, ...]         # measured loops per round
    orders: Tuple[Tuple[int, ...], ...]   # per round, the order the rows measure in
    warmup: int
    rewarm: int
    label: str = ""                 # the rows' `group` ("s0g1"); "": measured alone (sequential)

    @property
    def interleaved(self) -> bool:
        return bool(self.label)


def plan_units(rows: List[Row], scenario: Scenario, schedule: Schedule, session: int,
               split_devices: bool = False) -> List[Unit]:
    """The units that measure `rows`: one per row (sequential), else one per interleaved group.

    `split_devices`: a group's CPU rows and CUDA rows become two units (the Dask executor: a CPU
    unit holds its host's one measuring slot, a GPU unit one GPU, and a worker rarely holds both).
    """
    if schedule.kind == "sequential":
        return [Unit(i, (row,), (scenario.loops,), ((0,),), scenario.warmup, 0) for i, row in enumerate(rows)]
    chunks = tuple(schedule.rounds(scenario.loops))
    found = groups(rows, lambda r: r.id.batch, schedule.max_live_workers)
    if split_devices:
        found = [part for g in found for part in _by_device(g)]
    units = []
    for g, group in enumerate(found):
        orders = tuple(tuple(o) for o in round_orders(len(group), len(chunks), schedule.seed, g))
        units.append(Unit(g, tuple(group), chunks, orders, scenario.warmup, schedule.rewarm_loops, f"s{session}g{g}"))
    return units


def _by_device(group: List[Row]) -> List[List[Row]]:
    cpu = [r for r in group if not r.id.device.startswith("cuda")]
    gpu = [r for r in group if r.id.device.startswith("cuda")]
    return [part for part in (cpu, gpu) if part] if group[0] in cpu else [part for part in (gpu, cpu) if part]


# (the row, its worker's scratch folder): a finished row as a unit hands it over, samples not yet read
UnitResult = Callable[[RowResult, WorkDir], None]


class UnitRun:
    """One unit measured in this process: a worker process per row, driven round by round.

    A worker that dies or outruns its budget ends its row (`on_result` hears it at once); the other
    rows finish their rounds. `interrupt()` may be called from another thread: no worker or chunk
    starts after it, live workers are stopped, and `run` raises Interrupted.
    """

    def __init__(self, unit: Unit, jobs: Dict[RowId, Job], work_of: Callable[[RowId], WorkDir],
                 on_result: UnitResult, bar: Any = None, describe: Optional[Callable[[int], str]] = None,
                 env: Optional[Dict[str, str]] = None):
        self.unit, self.jobs, self.work_of, self.on_result = unit, jobs, work_of, on_result
        self.bar, self.describe, self.env = bar, describe, env
        self.workers: Dict[RowId, WorkerProcess] = {}
        self.kept: Dict[str, int] = {}        # interrupted: loops measured by rows whose rounds were kept
        self._stopping = threading.Event()
        self._done = threading.Event()

    def run(self) -> None:
        unit, bar = self.unit, self.bar
        total = sum(unit.warmup + sum(unit.chunks) + unit.rewarm * (len(unit.chunks) - 1) for _ in unit.rows)
        done = [0]
        progress = (lambda d, t: bar.update_to(done[0] + d, total)) if bar is not None else None
        try:
            for row in unit.rows:
                self._check()
                try:
                    python = interpreter_for(row.backend.name)
                except BenchError as e:  # the backend's interpreter is missing: it says what and how to set it up
                    self.on_result(RowResult.failed(row.id, "unavailable", str(e)), self.work_of(row.id))
                    continue
                worker = self.workers[row.id] = WorkerProcess(self.jobs[row.id], self.work_of(row.id), python,
                                                              progress, env=self.env)
                ended = worker.start()
                if ended is not None:
                    self._ended(row, worker, ended)
            for r, loops in enumerate(unit.chunks):
                if bar is not None and self.describe is not None:
                    bar.set_description(self.describe(r))
                for i in unit.orders[r]:
                    row = unit.rows[i]
                    worker = self.workers.get(row.id)
                    if worker is None:
                        continue
                    self._check()
                    cmd = Command("measure", loops, warmup=unit.warmup if r == 0 else 0,
                                  rewarm=0 if r == 0 else unit.rewarm, round=r)
                    ended = worker.measure(cmd)
                    done[0] += cmd.warmup + cmd.rewarm + cmd.loops
                    if ended is not None:  # it died or ran out of time: its row ends, the others go on
                        self._ended(row, worker, ended)
            for row in unit.rows:
                worker = self.workers.get(row.id)
                if worker is not None:
                    self._check()
                    result = worker.finish()
                    del self.workers[row.id]
                    self.on_result(RowResult(row.id, result, group=unit.label, busy=worker.busy), worker.work)
        except BaseException:
            self._stop()
            raise
        finally:
            self._done.set()

    def _ended(self, row: Row, worker: WorkerProcess, result: Any) -> None:
        del self.workers[row.id]
        self.on_result(RowResult(row.id, result, busy=worker.busy), worker.work)

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
                    self.kept[rid.key] = worker.measured
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
