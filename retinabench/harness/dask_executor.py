"""The Dask executor: each unit (an interleaved group, or one row in the sequential schedule) is one
task on a Dask worker, which measures it whole with the local machinery and sends the rows back.

    bench.py --config X --executor dask [--scheduler tcp://HOST:8786]

Without a scheduler, bench.py starts its own cluster on this machine: a `LocalCluster` of one
worker with one thread and resources MEASURE=1 (so rows are never measured side by side here),
or, when the scenario has CUDA rows, a `dask_cuda.LocalCUDACluster` (one worker per GPU, each with
GPU=1 and its GPU as CUDA_VISIBLE_DEVICES) plus one MEASURE=1 worker for the CPU rows.

Resources make sure no two measurements share what they measure: a GPU unit asks for {"GPU": 1},
a CPU unit for {"MEASURE": 1}, a host's one measuring slot (start one worker per host with
`--resources MEASURE=1`; each GPU's worker with `--resources GPU=1`). A group's CPU and GPU rows
are two units (retinabench.harness.units.plan_units). What still runs side by side on one host
(GPU rows beside each other or beside a CPU row) is recorded, not assumed away: each row lists the
rows whose work overlapped its measured windows there (units.overlaps; the `overlap` flag).

The task (`measure_task`, run in the Dask worker's process on its host) makes a temporary folder,
runs the unit's worker processes there exactly as the local executor does, and returns each
row's record and files (result.json, samples.npz, outputs.npz, stderr/stdout) with the host's
id and environment fingerprint. The client writes them into the one run folder through the store
(atomically), so resume, summaries and accuracy work as for a local run.

A measurement is never silently repeated elsewhere: tasks are submitted with retries=0, and a task
marks its unit as started in the scheduler's metadata first, so when the scheduler hands the unit
of a lost worker to another one (Dask does so up to allowed-failures times), that task finds the
mark and fails the rows with the reason instead of measuring them again; units that were only
queued on the lost worker run elsewhere, as they never started. The others go on.
Ctrl-C cancels the futures and stops the running tasks' worker processes (Client.run), keeps the
finished rows, and leaves the run incomplete for `--resume`.

`distributed` is optional (requirements-dask.txt, the `dask` extra): it is imported here only.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

from retinabench.errors import BenchError
from retinabench.records import Job, RowId, WorkerResult
from retinabench.store import RowResult, WorkDir, atomic_write

GPU, MEASURE = "GPU", "MEASURE"
CONNECT_TIMEOUT_S = 10
# The files of a worker's scratch folder that come back to the client (retinabench.store.WorkDir)
WORK_FILES = ("job.json", "result.json", "samples.npz", "outputs.npz", "stderr.txt", "stdout.txt")
# What a Dask nanny puts in its worker's environment before spawning it (distributed.yaml's
# distributed.nanny.pre-spawn-environ, plus the hash seed it forces): not what a row would see
# when run locally, so bench.py's own clusters do not set them and tasks drop them where a nanny did.
NANNY_ENV = {"MALLOC_TRIM_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
             "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "6640"}
# bench.py's own clusters: no profiler sampling the measuring process's threads, no environment that
# a local run would not have. (allowed-failures stays Dask's: a unit queued on a worker that dies has
# not started and may run elsewhere; one that had started is stopped by its mark, on any scheduler.)
OWN_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.nanny.pre-spawn-environ": {k: None for k in NANNY_ENV if k != "PYTHONHASHSEED"},
}
MARK = "retinabench"   # scheduler metadata: [MARK, session token, unit index] -> where the unit started


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise BenchError("executor dask needs the 'distributed' package: pip install -r requirements-dask.txt "
                         "(or pip install -e '.[dask]')") from None
    return distributed


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def unit_resources(unit: Any) -> Dict[str, int]:
    """What a unit holds while it runs: one GPU for CUDA rows, the host's measuring slot for CPU rows."""
    out: Dict[str, int] = {}
    if any(is_cuda(r.id.device) for r in unit.rows):
        out[GPU] = 1
    if any(not is_cuda(r.id.device) for r in unit.rows):
        out[MEASURE] = 1
    return out


def _resources_text(res: Dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(res.items()))


# ---------------------------------------------------------------------------------------------
# The task: runs in a Dask worker's process, on the host that worker is on
# ---------------------------------------------------------------------------------------------

_LOCK = threading.Lock()
_RUNNING: Dict[str, List[Any]] = {}     # session token -> its UnitRuns running in this worker process
_STOPPED: Set[str] = set()              # session tokens stopped here: their later tasks measure nothing


def task_env(environ: Optional[Dict[str, str]] = None, nanny: bool = True) -> Dict[str, str]:
    """The environment a row's worker starts with: the Dask worker's, less what its nanny added
    (a variable is taken as the nanny's where it holds the nanny's value)."""
    env = dict(os.environ if environ is None else environ)
    if nanny:
        for k, v in NANNY_ENV.items():
            if env.get(k) == v:
                env.pop(k)
    return env


def _pack(result: RowResult, work: WorkDir) -> Dict[str, Any]:
    files = {}
    for name in WORK_FILES:
        path = work.path / name
        if path.is_file():
            files[name] = path.read_bytes()
    return {"id": result.id.to_json(), "result": result.result.to_json(), "group": result.group,
            "busy": result.busy, "files": files}


def _missing_input(job: Job, host: str) -> str:
    for p in (job.model, *job.images):
        if not Path(p).exists():
            return (f"{p} not found on host {host}: Dask workers read the model and images at the client's "
                    "paths (a shared filesystem, or the same files at the same paths)")
    return ""


def measure_task(token: str, unit: Any, jobs: Sequence[Job]) -> Dict[str, Any]:
    """Measure one unit here, whole: the rows' records and files, this host's id and fingerprint.

    `jobs` are the client's; each worker process here is this process's child (its parent_pid)."""
    import distributed
    from retinabench.harness.units import Interrupted, UnitRun, host_info

    worker = distributed.get_worker()
    host, info = host_info([r.id.device for r in unit.rows if is_cuda(r.id.device)] or ["cuda"])
    info["dask_worker"] = worker.address
    out: Dict[str, Any] = {"host": host, "env": info, "rows": [], "stopped": False}
    client = distributed.get_client()
    mark = [MARK, token, str(unit.index)]
    first = client.get_metadata(mark, default=None)
    if first is not None:  # the scheduler gave this unit to a second worker: the first was lost mid-unit
        out["host"] = first.get("host", "")
        reason = (f"its Dask worker {first.get('worker')} on {first.get('host')} was lost while measuring; "
                  f"not measured again on another worker (this one: {worker.address})")
        out["rows"] = [{"id": r.id.to_json(), "result": WorkerResult.failure("failed", reason).to_json(),
                        "group": "", "busy": [], "files": {}} for r in unit.rows]
        return out
    client.set_metadata(mark, {"host": host, "worker": worker.address, "started": time.time()})

    env = task_env(nanny=getattr(worker, "nanny", None) is not None)
    with tempfile.TemporaryDirectory(prefix="retinabench-task-") as tmp:
        missing = _missing_input(jobs[0], host) if jobs else ""
        if missing:  # every row of a unit reads the same model and images
            out["rows"] = [{"id": j.row.to_json(), "result": WorkerResult.failure("failed", missing).to_json(),
                            "group": "", "busy": [], "files": {}} for j in jobs]
            return out
        todo = {j.row: dataclasses.replace(j, parent_pid=os.getpid()) for j in jobs}
        run = UnitRun(unit, todo, lambda rid: WorkDir(Path(tmp) / rid.key),
                      lambda result, work: out["rows"].append(_pack(result, work)), env=env)
        with _LOCK:
            if token in _STOPPED:
                out["stopped"] = True
                return out
            _RUNNING.setdefault(token, []).append(run)
        try:
            run.run()
        except Interrupted:   # stopped by the client: what its unfinished rows had done, for the record
            out["stopped"] = True
            out["busy"] = {rid.key: w.busy for rid, w in run.workers.items()}
        finally:
            with _LOCK:
                _RUNNING[token].remove(run)
                if not _RUNNING[token]:
                    del _RUNNING[token]
    return out


def stop_session(token: str) -> int:
    """Run on each worker by an interrupted client: its running units stop, its queued ones do nothing."""
    with _LOCK:
        _STOPPED.add(token)
        runs = list(_RUNNING.get(token, []))
    for run in runs:
        run.interrupt()   # returns at once: the signals are sent from a thread of its own
    return len(runs)


# ---------------------------------------------------------------------------------------------
# The client's side
# ---------------------------------------------------------------------------------------------

class DaskExecutor:
    """Reaches (or starts) a Dask cluster, submits a session's units, writes their rows back."""

    def __init__(self, scheduler: Optional[str] = None, cuda: bool = False, cpu: bool = True,
                 log: Callable[[str], None] = _log):
        self.scheduler, self.cuda, self.cpu, self.log = scheduler, cuda, cpu, log
        self.client: Any = None
        self.cluster: Any = None
        self._extra: Any = None       # the MEASURE worker added to a LocalCUDACluster
        self.where = scheduler or ""

    @classmethod
    def for_scenario(cls, scenario: Any, log: Callable[[str], None] = _log) -> "DaskExecutor":
        devices = [r.id.device for r in scenario.rows()]
        return cls(scenario.scheduler, cuda=any(is_cuda(d) for d in devices),
                   cpu=any(not is_cuda(d) for d in devices), log=log)

    # -- the cluster
    def open(self) -> None:
        distributed = import_distributed()
        import dask
        if self.scheduler:
            try:
                self.client = distributed.Client(self.scheduler, timeout=f"{CONNECT_TIMEOUT_S}s",
                                                 set_as_default=False)
            except (OSError, TimeoutError, ValueError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise BenchError(f"scheduler {self.scheduler}: cannot reach a Dask scheduler there ({msg})") from None
            return
        with dask.config.set(OWN_CLUSTER_CONFIG):
            if self.cuda:
                try:
                    from dask_cuda import LocalCUDACluster
                except ImportError:
                    raise BenchError("executor dask on a CUDA scenario without --scheduler starts a LocalCUDACluster: "
                                     "pip install dask-cuda, or start workers and pass --scheduler") from None
                self.cluster = LocalCUDACluster(threads_per_worker=1, resources={GPU: 1}, dashboard_address=None,
                                                host="127.0.0.1")
                self.where = f"LocalCUDACluster at {self.cluster.scheduler_address}"
                if self.cpu:
                    self._extra = add_measure_worker(self.cluster)
            else:
                self.cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                                        resources={MEASURE: 1}, dashboard_address=None,
                                                        host="127.0.0.1")
                self.where = f"LocalCluster at {self.cluster.scheduler_address}"
            self.client = distributed.Client(self.cluster, set_as_default=False)

    def close(self) -> None:
        for thing in (self.client, self._extra, self.cluster):
            if thing is None:
                continue
            try:
                if thing is self._extra:
                    self.cluster.sync(thing.close)
                else:
                    thing.close()
            except Exception:  # closing after a lost scheduler or an interrupt: nothing left to save
                pass
        self.client = self.cluster = self._extra = None

    def describe(self) -> Dict[str, Any]:
        """run.json's `executors` entry for this session."""
        workers = {}
        try:
            for addr, w in self.client.scheduler_info(n_workers=-1)["workers"].items():
                workers[addr] = {"host": w.get("host"), "resources": w.get("resources"), "nthreads": w.get("nthreads")}
        except Exception:
            pass
        return {"executor": "dask", "scheduler": self.scheduler or "", "cluster": self.where, "workers": workers}

    def _offered(self) -> List[Dict[str, Any]]:
        try:
            return [dict(w.get("resources") or {}) for w in self.client.scheduler_info(n_workers=-1)["workers"].values()]
        except Exception:
            return []

    # -- a session's units
    def run(self, session: Any, units: List[Any]) -> None:
        from retinabench.harness.units import Interrupted
        distributed = import_distributed()
        token = uuid.uuid4().hex
        offered = self._offered()
        for res in {_resources_text(unit_resources(u)) for u in units}:
            need = dict(kv.split("=") for kv in res.split(","))
            if not any(all(float(o.get(k, 0)) >= float(v) for k, v in need.items()) for o in offered):
                self.log(f"dask: no worker offers {res} yet; the rows that need it wait for one "
                         f"(start one: dask worker {self.scheduler or 'ADDR'} --nthreads 1 --resources {res})")
        futures: Dict[Any, Any] = {}
        for i, unit in enumerate(units):
            session.note_group(unit, resources=unit_resources(unit))
            jobs = [session.job(r, absolute=True) for r in unit.rows]
            key = f"retinabench-{unit.label or 'row'}-{unit.index}-{token[:12]}"
            fut = self.client.submit(measure_task, token, unit, jobs, key=key, resources=unit_resources(unit),
                                     retries=0, pure=False, priority=len(units) - i)
            futures[fut] = unit
        session.store.write_meta(session.meta)
        self.log(f"dask: {sum(len(u.rows) for u in units)} row(s) in {len(units)} task(s) on {self.where}")
        client_commit = session.store.read_env().get("git_commit", "")
        try:
            for fut in distributed.as_completed(list(futures), loop=self.client.loop):
                unit = futures[fut]
                try:
                    out = fut.result()
                except (KeyboardInterrupt, SystemExit, Interrupted):
                    raise
                except BaseException as e:  # the task raised, or its worker was lost (KilledWorker, CancelledError)
                    out = self._lost(token, unit, e)
                if out.get("env"):
                    host = out["host"]
                    commit = out["env"].get("git_commit", "")
                    if host not in session.hosts and client_commit and commit and commit != client_commit:
                        self.log(f"dask: warning: host {host} runs commit {commit[:12]}, this checkout {client_commit[:12]}")
                    session.add_host(host, out["env"])
                for item in out["rows"]:
                    session.record(self._row(session, out.get("host", ""), item))
        except BaseException:
            self._interrupt(token, list(futures))
            raise
        finally:
            try:
                self.client.set_metadata([MARK, token], None)
            except Exception:
                pass

    def _lost(self, token: str, unit: Any, error: BaseException) -> Dict[str, Any]:
        """A task that raised or whose worker was lost: its rows fail with the reason."""
        where: Dict[str, Any] = {}
        try:
            where = self.client.get_metadata([MARK, token, str(unit.index)], default=None) or {}
        except Exception:
            pass
        text = str(error).splitlines()[0] if str(error) else ""
        name = type(error).__name__
        if where:   # it had started: its worker died (or the task raised) mid-unit
            reason = (f"its Dask worker {where.get('worker', '?')} on {where.get('host', '?')} was lost while "
                      f"measuring ({name}" + (f": {text}" if text else "") + "); not measured again")
        else:
            reason = f"the Dask task failed before it measured: {name}" + (f": {text}" if text else "")
        failed = WorkerResult.failure("failed", reason).to_json()
        return {"host": where.get("host", ""), "env": None,
                "rows": [{"id": r.id.to_json(), "result": failed, "group": "", "busy": [], "files": {}}
                         for r in unit.rows]}

    def _row(self, session: Any, host: str, item: Dict[str, Any]) -> RowResult:
        """A row that came back: its files written into the run folder's scratch, then read as a local row's."""
        from retinabench.harness.units import with_samples
        rid = RowId.from_json(item["id"])
        work = session.store.work(rid)
        if item.get("files"):
            work.path.mkdir(parents=True, exist_ok=True)
            for p in work.path.iterdir():   # a previous session's files must not pass for this one's
                if p.name in WORK_FILES:
                    p.unlink()
            for name, data in item["files"].items():
                if name in WORK_FILES:
                    atomic_write(work.path / name, data)
        result = RowResult(rid, WorkerResult.from_json(item["result"]), group=item.get("group", ""),
                           host=host, busy=[list(b) for b in item.get("busy") or []])
        return with_samples(result, session.store)

    def _interrupt(self, token: str, futures: List[Any]) -> None:
        """Cancel what has not run, stop what runs (its worker processes), within a few seconds."""
        def stop() -> None:
            try:
                self.client.cancel(futures, force=True)
                self.client.run(stop_session, token, on_error="ignore")
            except Exception:
                pass
        t = threading.Thread(target=stop, name="retinabench-dask-stop", daemon=True)
        t.start()
        t.join(15)


def add_measure_worker(cluster: Any, nthreads: int = 1) -> Any:
    """One more worker on `cluster`'s scheduler, on this host, holding its measuring slot (MEASURE=1)."""
    import dask
    from distributed import Nanny

    async def start() -> Any:
        with dask.config.set(OWN_CLUSTER_CONFIG):
            return await Nanny(cluster.scheduler_address, nthreads=nthreads, resources={MEASURE: 1},
                               host="127.0.0.1", dashboard_address=None)
    return cluster.sync(start)
