"""The reports of a serving run (retinabench.harness.serving_run): its table, its plot, its README section.

Per row: the rate it sustained (server: the highest offered rate LoadGen called VALID at the latency
bound; offline: samples per second; single/multistream: the latency percentile), as the median of
its rounds with their range; the same as camera streams at `fps`; the latencies at that rate; the
rate its own closed-loop per-image median allows and the ratio of the two; where the gap comes from: the
pipeline's own (service) time under load against its closed-loop median (CPU it loses to the serving
machinery and to LoadGen), and how long requests waited before the pipeline took them up (queueing under
random arrivals, dynamic batching); LoadGen's verdict with its reason; energy per image where a counter
exists.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

from matplotlib.figure import Figure

from retinabench.harness.env import machine_label
from retinabench.report.format import md_table, ms, relative_link, wrap
from retinabench.store import RowResult, RunStore, atomic_write


def _num(v: Any) -> Any:
    try:
        return None if v in ("", None) else float(v)
    except (TypeError, ValueError):
        return None


def _rate(v: Any) -> str:
    v = _num(v)
    return "–" if v is None else (f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}")


REASON = 36   # an unavailable row's reason in the verdict column, as the speed tables' compact cells


def serving_table(lines: Sequence[Dict[str, Any]]) -> str:
    """The headline: the rate each row sustained, as streams, its latencies there and LoadGen's verdict."""
    if not lines:
        return "No rows."
    kind = lines[0]["scenario"]
    head = {"server": "peak /s (range)", "offline": "samples/s (range)",
            "singlestream": "latency ms (range)", "multistream": "latency per query ms (range)"}[kind]
    fps = _num(lines[0].get("fps")) or 30.0
    headers = ["backend", "variant", head]
    headers += [f"streams at {fps:g} fps"] if kind in ("server", "offline") else []
    headers += ["p50 / p90 / p99 ms", "of closed loop", "LoadGen"]
    table = []
    for ln in lines:
        if ln.get("status") != "passed":
            reason = " ".join(f"{ln['status']}: {ln.get('reason', '')}".split())
            reason = reason if len(reason) <= REASON else reason[:REASON - 1].rstrip() + "…"
            table.append([ln["backend"], ln["variant"]] + ["–"] * (len(headers) - 3) + [reason])
            continue
        rate = f"{_rate(ln.get('rate'))} ({_rate(ln.get('rate_min'))}-{_rate(ln.get('rate_max'))})"
        row = [ln["backend"], ln["variant"], rate]
        if kind in ("server", "offline"):
            row.append(f"{_num(ln.get('streams')):.1f}" if _num(ln.get("streams")) is not None else "–")
        lat = " / ".join(ms(ln.get(k)) for k in ("p50_ms", "p90_ms", "p99_ms"))
        ratio = _num(ln.get("rate_over_closed_loop"))
        verdict = str(ln.get("validity") or "–")
        if ln.get("overloaded_above") not in ("", None):
            verdict += f"; overloaded above {_rate(ln['overloaded_above'])}/s"
        if verdict.startswith("INVALID") and ln.get("invalid_reason"):
            verdict += f" ({str(ln['invalid_reason'])[:REASON]})"
        row += [lat, f"{ratio:.0%}" if ratio is not None else "–", verdict]
        table.append(row)
    return md_table(headers, table)


def where_the_time_goes(lines: Sequence[Dict[str, Any]]) -> str:
    """Why a row sustains less than its closed loop: the pipeline's own (service) time under load against its
    closed-loop median, the wait before a worker took a request up, and the energy per image."""
    table = []
    for ln in lines:
        if ln.get("status") != "passed":
            continue
        service = "–"
        if _num(ln.get("service_ms_p50")) is not None:
            rel = _num(ln.get("service_over_closed_loop"))
            service = ms(ln["service_ms_p50"]) + (f" ({rel:.2f}x)" if rel is not None else "")
        wait = " / ".join(ms(ln.get(k)) for k in ("wait_ms_p50", "wait_ms_p99"))
        energy = f"{_num(ln['energy_per_image_j']):.3g}" if _num(ln.get("energy_per_image_j")) is not None else "–"
        table.append([ln["backend"], ln["variant"], _rate(ln.get("closed_loop_rate")), service, wait, energy])
    if not table:
        return ""
    return md_table(["backend", "variant", "closed loop /s", "service ms (vs closed loop)", "wait p50 / p99 ms",
                     "J/image"], table)


def read_lines(run_dir: Path) -> List[Dict[str, Any]]:
    with (Path(run_dir) / "serving.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def latency_plot(lines: Sequence[Dict[str, Any]], serving: Dict[str, Any]) -> Figure:
    """p99 (or the scenario's percentile) latency against the offered rate, one line per row, the bound drawn."""
    load = serving.get("load") or {}
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for key, row in (serving.get("rows") or {}).items():
        pts = sorted((t["target"], t.get("p99_ms")) for t in row.get("tests", [])
                     if t.get("target") is not None and t.get("p99_ms") is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key.rsplit("-cpu", 1)[0].rsplit(
                "-cuda", 1)[0])
    if load.get("latency_bound_ms"):
        ax.axhline(float(load["latency_bound_ms"]), color="red", linestyle="--", label="latency bound")
    ax.set_xlabel("offered load (queries/s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"Latency against offered load ({load.get('scenario', '?')})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def write_serving_plot(run_dir: Path, lines: Sequence[Dict[str, Any]], serving: Dict[str, Any]) -> Path:
    path = Path(run_dir) / "plots" / "latency_vs_load.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    latency_plot(lines, serving).savefig(buf, format="png", dpi=100, metadata={"Software": None})
    atomic_write(path, buf.getvalue())
    return path


def serving_reports(store: RunStore, rows: List[RowResult], lines: List[Dict[str, Any]], scenario: Any) -> None:
    """What a finished serving run writes beside its rows: the closed loops' summary, serving.md, the plot."""
    import matplotlib
    matplotlib.use("Agg")
    from retinabench.report.summary import write_summary
    write_summary(store, rows, scenario.reference, scenario.run_spread)
    lines_now = read_lines(store.path)
    store.write_file("serving.md", serving_table(lines_now) + "\n\n" + where_the_time_goes(lines_now) + "\n")
    write_serving_plot(store.path, lines, json.loads(store.file("serving.json").read_text()))


def is_serving(run_dir: Path) -> bool:
    meta = Path(run_dir) / "run.json"
    return meta.is_file() and json.loads(meta.read_text()).get("kind") == "serving"


def serving_section(run_dir: Path, link_base: Path) -> str:
    """The README's section of a committed serving run, from its serving.csv, run.json and env.json."""
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    env = json.loads((run_dir / "env.json").read_text()) if (run_dir / "env.json").is_file() else {}
    load = meta.get("load") or {}
    link = relative_link(run_dir, link_base)
    plot = relative_link(run_dir / "plots" / "latency_vs_load.png", link_base)
    what = {"server": f"Poisson arrivals, p{load.get('percentile') or 99:g} latency at most {load.get('latency_bound_ms')} ms",
            "offline": "every sample at once", "singlestream": "one query at a time",
            "multistream": f"{load.get('samples_per_query')} samples per query"}.get(load.get("scenario"), "")
    text = (f"LoadGen `{load.get('scenario')}` ({what}), {load.get('rounds')} rounds per row, each test at least "
            f"{load.get('min_duration_s')} s; batch {load.get('max_batch')}, {load.get('in_flight')} in flight. "
            f"Measured on {machine_label(env) if env else 'an unrecorded machine'}; run folder [`{link}`]({link}) "
            f"(LoadGen's own logs under `loadgen/`).")
    return (wrap(text) + "\n\n"
            + serving_table(read_lines(run_dir)) + f"\n\n![latency against offered load]({plot})")


def serving_time_section(run_dir: Path, link_base: Path) -> str:
    """The `serving-time-<scenario>` section (docs/serving.md): where each row's time went under load."""
    link = relative_link(Path(run_dir), link_base)
    gaps = where_the_time_goes(read_lines(run_dir))
    return (f"Where the time goes in [`{link}`]({link}): the rate the row's closed loop allows, the pipeline's own "
            "(service) time under load against its closed-loop median, the wait before a worker took a request "
            "up, and the energy per image where a counter exists.\n\n" + (gaps or "No row ran."))


def compare_serving(a_dir: Path, b_dir: Path) -> str:
    """Two serving runs' figures row by row (matched by backend, variant, device, batch): B over A, and
    whether B's range of rounds lies wholly apart from A's (a change the rounds cannot explain)."""
    key = lambda ln: (ln["backend"], ln["variant"], ln["device"], str(ln["batch"]))  # noqa: E731
    a = {key(ln): ln for ln in read_lines(a_dir) if ln.get("status") == "passed" and _num(ln.get("rate")) is not None}
    b = {key(ln): ln for ln in read_lines(b_dir) if ln.get("status") == "passed" and _num(ln.get("rate")) is not None}
    table = []
    for k in (k for k in a if k in b):
        ra, rb = _num(a[k]["rate"]), _num(b[k]["rate"])
        apart = _num(b[k]["rate_min"]) > _num(a[k]["rate_max"]) or _num(b[k]["rate_max"]) < _num(a[k]["rate_min"])
        table.append([k[0], k[1], k[2], k[3], _rate(ra), _rate(rb), f"{rb / ra:.3f}" if ra else "–",
                      "yes" if apart else "no (ranges overlap)"])
    if not table:
        return "serving: no row of one run matches a row of the other"
    unit = read_lines(a_dir)[0].get("rate_unit", "")
    return "serving figures (" + unit + "):\n" + md_table(
        ["backend", "variant", "device", "batch", "A", "B", "B/A", "ranges apart"], table)
