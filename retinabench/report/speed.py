"""The speed section of a run: the table the original project hand-wrote, and what it says in words."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from retinabench.harness.loop import STAGES
from retinabench.records import RowId
from retinabench.report.format import flags_cell, machine_line, md_table, ms, row_label, scenario_line, status_cell
from retinabench.report.run_data import BASELINE_BACKENDS, RunData
from retinabench.report.flags import describe
from retinabench.report.tables import (footprint_cells, footprint_headers, footprint_note, has_ratios, pivot,
                                       ratio_cell, reference_name)
from retinabench.report.variants import variant_cell


def _stage_cell(s: Optional[Dict[str, Any]]) -> str:
    if not s:
        return "–"
    return f"{ms(s['median_ms'])} ({ms(s['p90_ms'])}, {ms(s['p99_ms'])})"


def is_sweep(run: RunData) -> bool:
    return len({int(s["batch"]) for s in run.summary}) > 1


def has_gpu(run: RunData) -> bool:
    return any(s.get("gpu_util_mean_pct") not in ("", None) for s in run.summary)


def has_gpu_time(run: RunData) -> bool:
    return any(s.get("gpu_time_median_ms") not in ("", None) for s in run.summary)


def _gpu_time(run: RunData, rid: RowId) -> Any:
    """The row's CUDA-event GPU time median (summary.csv's gpu_time_median_ms), '' where none."""
    for s in run.lines(rid):
        if s.get("gpu_time_median_ms") not in ("", None):
            return s["gpu_time_median_ms"]
    return ""


def _device(run: RunData, rid: RowId) -> str:
    """'cpu, f32': where it ran and at what precision (OpenVINO picks bf16 on AMX CPUs by default)."""
    for s in run.lines(rid):
        if s.get("device"):
            return ", ".join(str(v) for v in (s["device"], s.get("precision")) if v)
    return "–"


def calibrated(run: RunData) -> bool:
    """The run's flags are the calibrated ones (retinabench.report.flags): it has their columns."""
    return any("spread_iqr" in s for s in run.summary)


def flags_legend(run: RunData) -> str:
    """What each flag that occurs means, in the words of the run's own time (and what to do about it)."""
    present = {f for s in run.summary if int(s.get("n") or 0) > 0 for f in str(s.get("flags", "")).split()}
    legacy = not calibrated(run)
    notes = [f"*{f}*: {describe(f, legacy)}" for f in sorted(present)]
    if legacy:
        return ("Flags: " + "; ".join(notes) + ".") if notes else ""
    return ("Flags: " + " ".join(notes)) if notes else "No row carries a flag."


def has_timings(run: RunData) -> bool:
    """Some row was timed end to end or for throughput (its stage columns are CUDA-event times)."""
    return any(s.get("timing") not in ("", None, "staged") for s in run.summary)


def _timing(run: RunData, rid: RowId) -> str:
    return next((str(s["timing"]) for s in run.lines(rid) if s.get("timing")), "–")


def timing_note(run: RunData) -> str:
    if not has_timings(run):
        return ""
    return ("Timing: *staged* rows synchronise at each stage boundary, as the original tables did (stage columns "
            "are host intervals that add up to the total); *e2e* rows synchronise once per loop: the total is the "
            "latency from the uint8 image in host memory to the faces in host memory, and the stage columns are "
            "CUDA-event times on the stream (upload + preprocessing, network, decode + NMS + copy back); "
            "*throughput* rows keep two batches in flight: the total is the time between two batches' "
            "completions (its mean is wall time / batches), the stage columns are the completed batch's CUDA-event "
            "times.")


def speed_table(run: RunData) -> str:
    sweep, gpu = is_sweep(run), has_gpu(run)
    timings = has_timings(run)
    order = ["total", "preprocess", "inference", "postprocess"]  # the original tables' column order
    headers = ["backend", "variant"] + (["batch", "max batch"] if sweep else []) + ["status", "device, precision", "threads"]
    headers += ["timing"] if timings else []
    headers += [f"{s} ms" for s in order] + (["per image ms"] if sweep else []) + ["images/s"]
    gpu_time = has_gpu_time(run)
    ratios = has_ratios(run.summary)
    headers += (["GPU util %"] if sweep or gpu else []) + (["GPU ms (CUDA events)"] if gpu_time else [])
    headers += [f"inference vs {reference_name(run.summary)} (95% CI)"] if ratios else []
    footprint = footprint_headers(run.summary)   # none for runs recorded before footprints were
    headers += footprint + ["flags"]
    lines = []
    for r in pivot(run.summary):
        rid: RowId = r["row"]
        row = run.row(rid)
        reason = row.reason if row is not None else r.get("reason", "")
        t = r.get("total")
        line = [r["backend"], variant_cell(run, rid)]
        line += [r["batch"], r["max_batch"]] if sweep else []
        line += [status_cell(r["status"], reason), _device(run, rid), r["threads"] or "–"]
        line += [_timing(run, rid)] if timings else []
        line += [_stage_cell(r.get(s)) for s in order]
        line += [ms(t["per_image_median_ms"]) if t else "–"] if sweep else []
        line += [f"{t['images_per_s']:.1f}" if t and t.get("images_per_s") != "" else "–"]
        line += [(f"{r['gpu_util']:.0f}" if r["gpu_util"] != "" else "–")] if sweep or gpu else []
        line += [ms(_gpu_time(run, rid))] if gpu_time else []
        line += [(ratio_cell(r["inference"]) if "inference" in r else "") or "–"] if ratios else []
        line += footprint_cells(r, footprint, empty="–")
        lines.append(line + [flags_cell(r) or "–"])
    return md_table(headers, lines)


def _on_device(run: RunData, rid: RowId) -> bool:
    row = run.row(rid)
    return bool(row is not None and row.result.settings is not None and row.result.settings.device_stages)


def _ranking(at: List[Dict[str, Any]], key: Any, title: str, suffix: str = "", unit: str = "ms") -> str:
    """'**title**suffix: best (x ms), 1.23x faster than the next, second (y ms)' over rows ranked by key(row)."""
    ranked = sorted(at, key=lambda r: (key(r), r["backend"], r["variant"]))
    best = ranked[0]
    text = f"**{title}**{suffix}: {row_label(best['backend'], best['variant'])} ({ms(key(best))} {unit})"
    if len(ranked) > 1:
        nxt = ranked[1]
        ratio = key(nxt) / key(best) if key(best) > 0 else float("inf")
        text += f", {ratio:.2f}x faster than the next, {row_label(nxt['backend'], nxt['variant'])} ({ms(key(nxt))} {unit})"
    else:
        text += ", the only backend that passed"
    return text


def fastest_sentences(run: RunData) -> List[str]:
    """Which backend is fastest at each stage, and by what ratio over the next one (issue 4).

    Rows that run the family's stages on the device end their inference with outputs on the GPU
    (their copy back is in postprocess, their upload in preprocess): their stages measure other
    work than the host-stage rows', so stages are ranked within each kind; totals (the same work:
    image in host memory to faces in host memory) and CUDA-event GPU times are ranked together."""
    rows = [r for r in pivot(run.summary) if "total" in r and r["backend"] not in BASELINE_BACKENDS]
    if not rows:
        return []
    batch = min(r["batch"] for r in rows)
    at = [r for r in rows if r["batch"] == batch]
    where = f" at batch {batch}" if is_sweep(run) else ""
    # e2e and throughput rows' stage columns are CUDA-event times: stages rank among staged rows only;
    # a throughput row's total is not a latency: totals rank among the others.
    staged = [r for r in at if _timing(run, r["row"]) in ("staged", "–")]
    latency = [r for r in at if _timing(run, r["row"]) != "throughput"]
    kinds = {False: [r for r in staged if not _on_device(run, r["row"])],
             True: [r for r in staged if _on_device(run, r["row"])]}
    mixed = bool(kinds[False]) and bool(kinds[True])
    out = []
    for stage in STAGES[:3]:
        for on_device, members in kinds.items():
            if not members:
                continue
            what = (" (stages on the device)" if on_device else " (stages on the host)") if mixed else ""
            if stage in ("preprocess", "postprocess") and not on_device:
                # Every such row ran the family's one numpy implementation: differences are noise, not backends.
                lo, hi = (min(r[stage]["median_ms"] for r in members), max(r[stage]["median_ms"] for r in members))
                out.append(f"**{stage}**{what}: the same shared code in every row ({ms(lo)} to {ms(hi)} ms)")
                continue
            out.append(_ranking(members, lambda r, st=stage: r[st]["median_ms"], stage, f"{what}{where}"))
    if latency:
        out.append(_ranking(latency, lambda r: r["total"]["median_ms"], "total", where))
    timed = [r for r in staged if _gpu_time(run, r["row"]) not in ("", None)]
    if mixed and timed:
        out.append(_ranking(timed, lambda r: float(_gpu_time(run, r["row"])), "network on the GPU", f" (CUDA events){where}"))
    if is_sweep(run):
        best_per: Dict[Any, Dict[str, Any]] = {}
        for r in rows:
            k = (r["backend"], r["variant"], r["row"].device)
            if k not in best_per or r["total"]["images_per_s"] > best_per[k]["total"]["images_per_s"]:
                best_per[k] = r
        ranked = sorted(best_per.values(), key=lambda r: (-r["total"]["images_per_s"], r["backend"], r["variant"]))
        b = ranked[0]
        text = (f"**throughput**: {row_label(b['backend'], b['variant'])} at batch {b['batch']} "
                f"({b['total']['images_per_s']:.1f} images/s)")
        if len(ranked) > 1:
            n = ranked[1]
            text += (f", {b['total']['images_per_s'] / n['total']['images_per_s']:.2f}x the next, "
                     f"{row_label(n['backend'], n['variant'])} at batch {n['batch']} ({n['total']['images_per_s']:.1f} images/s)")
        out.append(text)
    return out


def device_stages_note(run: RunData) -> str:
    rids = [r["row"] for r in pivot(run.summary) if "total" in r]
    if not any(_on_device(run, rid) for rid in rids) or all(_on_device(run, rid) for rid in rids):
        return ""
    return ("Rows with their stages on the device (the `pipe` variants) upload the uint8 image in preprocess, end "
            "inference with the outputs on the GPU and copy back only the kept faces in postprocess; the other rows "
            "end inference with every output in host memory. Their stage columns measure different work, so stages "
            "are ranked within each kind; totals and GPU times compare like for like.")


def baseline_sentence(run: RunData) -> str:
    base = [r for r in pivot(run.summary) if r["backend"] in BASELINE_BACKENDS and "total" in r]
    if not base:
        return ""
    r = min(base, key=lambda r: r["batch"])
    return (f"The `{r['backend']}` backend runs no network (batch {r['batch']}): its inference stage, "
            f"{ms(r['inference']['median_ms'])} ms, is what the harness's call and clock reads cost; its "
            f"{ms(r['preprocess']['median_ms'])} ms preprocess is the shared preprocessing, and its "
            f"{ms(r['postprocess']['median_ms'])} ms postprocess decodes all-zero outputs (no candidate passes the threshold).")


def ratio_note(run: RunData) -> str:
    """What the ratio column means, for the runs that have one."""
    if not has_ratios(run.summary):
        return ""
    lines = [s for s in run.summary if s.get("ratio") not in ("", None) and s.get("reference") != s["row"].key]
    paired = {bool(s.get("ratio_paired")) for s in lines}
    how = ("paired round by round (each resample draws rounds and takes both rows' loops of those rounds)"
           if paired == {True} else "resampling each row's rounds (or blocks of loops) independently"
           if paired == {False} else "paired round by round where both rows were interleaved in one group, "
                                     "else resampling each row independently")
    return (f"Inference vs {reference_name(run.summary)}: the ratio of the row's inference median to the reference "
            f"row's at the same batch, with a 95% bootstrap interval {how}.")


def schedule_line(run: RunData) -> str:
    """How the rows shared the machine, from run.json."""
    schedules = run.meta.get("schedules") or []
    if not schedules:
        return ""
    s = schedules[-1]
    if s.get("kind") == "sequential":
        return "Rows were measured one after another (`schedule: sequential`)."
    return (f"Rows were measured in interleaved rounds: {s['round_loops']} loops per row per round, in an order "
            f"shuffled per round (seed {s['seed']}), each round's chunk after the first starting with "
            f"{s['rewarm_loops']} re-warm loops that are not counted.")


def speed_section(run: RunData, link_base: Path) -> str:
    parts = [scenario_line(run) + " " + machine_line(run, link_base), "",
             speed_table(run), "",
             " ".join(t for t in ("Times are per batch, in milliseconds: median (p90, p99). Threads: the intra-op "
                                  "threads each backend was given.", schedule_line(run), ratio_note(run),
                                  timing_note(run), flags_legend(run)) if t)]
    if has_gpu(run):
        extended = any(r.result.gpu_monitor.get("utilisation_from") for r in run.rows.values())
        windowed = any(r.result.gpu_monitor for r in run.rows.values())
        parts += ["", "GPU util %: NVML's mean utilisation during the measured loops, the share of time at least one "
                      "kernel was running (busy, not how many SMs were used)."
                  + (" Only NVML samples whose whole period (1/6 s to 1 s) lies inside a row's measured chunks count; "
                     "'–' where none did (interleaved chunks of a fast row last tens of milliseconds)." if windowed else "")
                  + (" Rows whose chunks were too short took theirs from 2.5 s of extra loops after the measured ones "
                     "(not timed)." if extended else "")]
    footprint = footprint_note(run.summary)
    if footprint:
        parts += ["", footprint]
    note = device_stages_note(run)
    if note:
        parts += ["", note]
    sentences = fastest_sentences(run)
    if sentences:
        parts += ["", "Fastest backend per stage: " + "; ".join(sentences) + "."]
    baseline = baseline_sentence(run)
    if baseline:
        parts += ["", baseline]
    return "\n".join(parts)
