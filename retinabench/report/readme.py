"""The report people read: a run folder -> markdown sections, and the README rewritten between markers.

A section is regenerated only from the run folder's own files (summary.csv, rows/, env.json,
accuracy_*.csv), never from "now": running the report twice on one folder gives the same bytes,
so README diffs show changed measurements and nothing else. Markers in the README:

    <!-- retinabench:begin SCENARIO -->            speed table
    <!-- retinabench:begin accuracy-SCENARIO -->   accuracy section
    <!-- retinabench:begin plots-SCENARIO -->      plot image links
    ... each closed by <!-- retinabench:end NAME -->
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml
from tabulate import tabulate

from retinabench.errors import BenchError
from retinabench.harness.env import machine_label
from retinabench.harness.loop import STAGES
from retinabench.report.results import FLAGS, RowResult, read_rows
from retinabench.report.tables import pivot

# Backends that run no network: they measure the harness itself, so they never "win" a stage.
BASELINE_BACKENDS = {"empty"}
_INT_COLUMNS = {"batch", "max_batch", "n", "reference_faces", "faces", "matched", "missed", "extra"}
_TEXT_COLUMNS = {"backend", "variant", "input", "stage", "status", "flags", "precision", "device", "threads",
                 "reference", "output"}
_SHORT = {"preprocess": "pre", "inference": "infer", "postprocess": "post", "total": "total"}


# ---------------------------------------------------------------------------------------------
# Reading a run folder
# ---------------------------------------------------------------------------------------------

@dataclass
class RunData:
    """Everything a report needs from one results folder."""

    path: Path
    meta: Dict[str, Any]
    env: Dict[str, Any]
    config: Dict[str, Any]
    summary: List[Dict[str, Any]]                       # summary.csv, numbers parsed
    rows: Dict[str, RowResult]                          # rows/<key>.json + samples, by key
    accuracy_faces: List[Dict[str, Any]] = field(default_factory=list)
    accuracy_outputs: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def scenario(self) -> str:
        return str(self.meta.get("scenario") or self.config.get("name") or self.path.name)

    def ordered_rows(self) -> List[RowResult]:
        """Rows in the scenario's order (run.json), then any others by key."""
        order = [k for k in self.meta.get("rows", []) if k in self.rows]
        return [self.rows[k] for k in order] + [r for k, r in sorted(self.rows.items()) if k not in order]

    def find_row(self, backend: str, variant: str, input: str, batch: int) -> Optional[RowResult]:
        for r in self.ordered_rows():
            if (r.backend, r.variant, r.input, r.batch) == (backend, variant, input, int(batch)):
                return r
        return None

    def batches(self) -> List[int]:
        return sorted({r.batch for r in self.rows.values() if r.status == "passed"})


def _number(key: str, value: str) -> Any:
    if key in _TEXT_COLUMNS or value == "":
        return value
    try:
        return int(value) if key in _INT_COLUMNS else float(value)
    except ValueError:
        return value


def read_csv(path: Path) -> List[Dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: _number(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def _json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BenchError(f"{path}: cannot read ({e})") from None


def load_run(path: Path | str) -> RunData:
    """A results folder, validated: one clear error when it is missing or not a finished run."""
    path = Path(path)
    if not path.is_dir():
        raise BenchError(f"{path}: no such results folder")
    if not (path / "run.json").is_file():
        raise BenchError(f"{path}: not a results folder (no run.json)")
    if not (path / "summary.csv").is_file():
        raise BenchError(f"{path}: the run has no summary.csv (interrupted? finish it with --resume {path})")
    meta = _json(path / "run.json")
    env = _json(path / "env.json") if (path / "env.json").is_file() else {}
    config: Dict[str, Any] = {}
    if (path / "config.yaml").is_file():
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    try:
        rows = read_rows(path)
    except (OSError, ValueError, KeyError) as e:
        raise BenchError(f"{path}/rows: cannot read ({e})") from None
    # A backend that runs no network has no accuracy to report: its rows stay in the CSVs only.
    accuracy = [[a for a in read_csv(path / name) if a.get("backend") not in BASELINE_BACKENDS]
                for name in ("accuracy_faces.csv", "accuracy_outputs.csv")]
    return RunData(path, meta, env, config, read_csv(path / "summary.csv"), rows, *accuracy)


# ---------------------------------------------------------------------------------------------
# Formatting helpers
# ---------------------------------------------------------------------------------------------

def ms(v: Any) -> str:
    """Milliseconds with about three significant digits (0.0123, 1.23, 12.3, 123)."""
    if v == "" or v is None:
        return "–"
    v = float(v)
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _sci(v: Any) -> str:
    return "–" if v == "" or v is None else f"{float(v):.1e}"


def _cell(text: Any) -> str:
    """Markdown table cells cannot hold pipes or newlines."""
    return " ".join(str(text).replace("|", "\\|").split())


def _md_table(headers: Sequence[str], lines: List[List[Any]], colalign: Optional[Sequence[str]] = None) -> str:
    return tabulate([[_cell(c) for c in line] for line in lines], headers=list(headers), tablefmt="github",
                    disable_numparse=True, colalign=colalign)


def row_label(backend: str, variant: str, batch: Optional[int] = None) -> str:
    label = backend if variant == "default" else f"{backend} ({variant})"
    return label if batch is None else f"{label} b{batch}"


def relative_link(target: Path, base: Path) -> str:
    """Posix path of target relative to base (a README's folder), absolute when on another drive."""
    try:
        return Path(os.path.relpath(Path(target).resolve(), Path(base).resolve())).as_posix()
    except ValueError:
        return Path(target).resolve().as_posix()


def status_cell(status: str, reason: str) -> str:
    """Ultralytics-style status: a mark, the status, and the reason when it did not pass."""
    mark = {"passed": "✅", "failed": "❌", "unavailable": "⛔"}.get(status, "❔")
    return f"{mark} {status}" + (f": {reason}" if reason and status != "passed" else "")


def flags_cell(row: Dict[str, Any]) -> str:
    """'noisy: infer, total; drift: infer' from the per-stage flags of summary.csv."""
    by_flag: Dict[str, List[str]] = {}
    for stage in STAGES:
        s = row.get(stage)
        if not s:
            continue
        for f in str(s.get("flags", "")).split():
            by_flag.setdefault(f, []).append(_SHORT[stage])
    return "; ".join(f"{f}: {', '.join(st)}" for f, st in sorted(by_flag.items()))


def key_versions(run: RunData) -> str:
    """Python and numpy from env.json, then each runtime's version as its rows recorded it."""
    versions: Dict[str, str] = {}
    for r in run.ordered_rows():
        for k, v in (r.info.get("versions") or {}).items():
            if re.match(r"^\d", str(v)):  # a version number, not a setting such as an engine name
                versions.setdefault(k, str(v))
    parts = [f"Python {run.env['python']}"] if run.env.get("python") else []
    parts += [f"numpy {run.env['numpy']}"] if run.env.get("numpy") else []
    return ", ".join(parts + [f"{k} {v}" for k, v in sorted(versions.items())])


def machine_line(run: RunData, link_base: Path) -> str:
    env = run.env
    commit = str(env.get("git_commit") or "")[:7]
    when = env.get("timestamp_utc", "unknown time")
    link = relative_link(run.path, link_base)
    text = f"Measured on **{machine_label(env) if env else 'an unrecorded machine'}** at {when}"
    if commit:
        text += f", commit `{commit}`" + (" (with uncommitted changes)" if env.get("git_dirty") else "")
    text += f". Run folder: [`{link}`]({link})."
    versions = key_versions(run)
    return text + (f" Versions: {versions}." if versions else "")


def scenario_line(run: RunData) -> str:
    cfg = run.config
    inp = cfg.get("input") or {}
    size = f"{inp.get('width')}x{inp.get('height')} ({inp.get('mode')})" if inp.get("mode") == "fit" else "native size"
    images = len(cfg.get("images") or run.meta.get("images") or [])
    batches = ", ".join(str(b) for b in cfg.get("batches") or [])
    text = (f"Scenario **{run.scenario}**: input {size}, {images} image(s), batch {batches}, "
            f"{cfg.get('loops', '?')} measured loops after {cfg.get('warmup', '?')} warmup loops")
    status = run.meta.get("status")
    if status and status != "complete":
        text += f"; run status **{status}**" + (f" ({run.meta.get('reason')})" if run.meta.get("reason") else "")
    return text + "."


# ---------------------------------------------------------------------------------------------
# Speed section
# ---------------------------------------------------------------------------------------------

def _stage_cell(s: Optional[Dict[str, Any]]) -> str:
    if not s:
        return "–"
    return f"{ms(s['median_ms'])} ({ms(s['p90_ms'])}, {ms(s['p99_ms'])})"


def is_sweep(run: RunData) -> bool:
    return len({int(s["batch"]) for s in run.summary}) > 1


def has_gpu(run: RunData) -> bool:
    return any(s.get("gpu_util_mean_pct") not in ("", None) for s in run.summary)


def _gpu_time(run: RunData, r: Dict[str, Any]) -> Any:
    """The row's CUDA-event GPU time median (summary.csv's gpu_time_median_ms), '' where none."""
    for s in run.summary:
        if (s["backend"], s["variant"], s["batch"]) == (r["backend"], r["variant"], r["batch"]) \
                and s.get("gpu_time_median_ms") not in ("", None):
            return s["gpu_time_median_ms"]
    return ""


def has_gpu_time(run: RunData) -> bool:
    return any(s.get("gpu_time_median_ms") not in ("", None) for s in run.summary)


def flags_legend(run: RunData) -> str:
    """What each flag that occurs means (results.FLAGS, the same words as summary.md)."""
    present = {f for s in run.summary if int(s.get("n") or 0) > 0 for f in str(s.get("flags", "")).split()}
    notes = [f"*{f}*: {FLAGS.get(f, 'see summary.md')}" for f in sorted(present)]
    return ("Flags: " + "; ".join(notes) + ".") if notes else ""


def speed_table(run: RunData) -> str:
    sweep, gpu = is_sweep(run), has_gpu(run)
    order = ["total", "preprocess", "inference", "postprocess"]  # the original tables' column order
    headers = ["backend", "variant"] + (["batch", "max batch"] if sweep else []) + ["status", "device, precision", "threads"]
    headers += [f"{s} ms" for s in order] + (["per image ms"] if sweep else []) + ["images/s"]
    gpu_time = has_gpu_time(run)
    headers += (["GPU util %"] if sweep or gpu else []) + (["GPU ms (CUDA events)"] if gpu_time else []) + ["flags"]
    lines = []
    for r in pivot(run.summary):
        row = run.find_row(r["backend"], r["variant"], r["input"], r["batch"])
        reason = row.reason if row is not None else r.get("reason", "")
        t = r.get("total")
        line = [r["backend"], variant_cell(run, r["backend"], r["variant"], r["input"], r["batch"])]
        line += [r["batch"], r["max_batch"]] if sweep else []
        line += [status_cell(r["status"], reason), _device(run, r), r["threads"] or "–"]
        line += [_stage_cell(r.get(s)) for s in order]
        line += [ms(t["per_image_median_ms"]) if t else "–"] if sweep else []
        line += [f"{t['images_per_s']:.1f}" if t and t.get("images_per_s") != "" else "–"]
        line += [(f"{r['gpu_util']:.0f}" if r["gpu_util"] != "" else "–")] if sweep or gpu else []
        line += [ms(_gpu_time(run, r))] if gpu_time else []
        lines.append(line + [flags_cell(r) or "–"])
    return _md_table(headers, lines)


def _device(run: RunData, r: Dict[str, Any]) -> str:
    """'cpu, f32': where it ran and at what precision (OpenVINO picks bf16 on AMX CPUs by default)."""
    for s in run.summary:
        if (s["backend"], s["variant"], s["batch"]) == (r["backend"], r["variant"], r["batch"]) and s.get("device"):
            return ", ".join(str(v) for v in (s["device"], s.get("precision")) if v)
    return "–"


def fastest_sentences(run: RunData) -> List[str]:
    """Which backend is fastest at each stage, and by what ratio over the next one (issue 4)."""
    rows = [r for r in pivot(run.summary) if "total" in r and r["backend"] not in BASELINE_BACKENDS]
    if not rows:
        return []
    batch = min(r["batch"] for r in rows)
    at = [r for r in rows if r["batch"] == batch]
    out = []
    where = f" at batch {batch}" if is_sweep(run) else ""
    device_stages = any((r.info.get("settings") or {}).get("device_stages") for r in run.rows.values())
    for stage in STAGES:
        if stage in ("preprocess", "postprocess") and not device_stages:
            # Every row ran the family's one numpy implementation: differences are noise, not backends.
            lo, hi = (min(r[stage]["median_ms"] for r in at), max(r[stage]["median_ms"] for r in at))
            out.append(f"**{stage}**: the same shared code in every row ({ms(lo)} to {ms(hi)} ms)")
            continue
        ranked = sorted(at, key=lambda r: (r[stage]["median_ms"], r["backend"], r["variant"]))
        best = ranked[0]
        text = f"**{stage}**{where}: {row_label(best['backend'], best['variant'])} ({ms(best[stage]['median_ms'])} ms)"
        if len(ranked) > 1:
            nxt = ranked[1]
            ratio = nxt[stage]["median_ms"] / best[stage]["median_ms"] if best[stage]["median_ms"] > 0 else float("inf")
            text += (f", {ratio:.2f}x faster than the next, {row_label(nxt['backend'], nxt['variant'])} "
                     f"({ms(nxt[stage]['median_ms'])} ms)")
        else:
            text += ", the only backend that passed"
        out.append(text)
    if is_sweep(run):
        best_per: Dict[Tuple[str, str], Dict[str, Any]] = {}
        for r in rows:
            k = (r["backend"], r["variant"])
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


def baseline_sentence(run: RunData) -> str:
    base = [r for r in pivot(run.summary) if r["backend"] in BASELINE_BACKENDS and "total" in r]
    if not base:
        return ""
    r = min(base, key=lambda r: r["batch"])
    return (f"The `{r['backend']}` backend runs no network (batch {r['batch']}): its inference stage, "
            f"{ms(r['inference']['median_ms'])} ms, is what the harness's call and clock reads cost; its "
            f"{ms(r['preprocess']['median_ms'])} ms preprocess is the shared preprocessing, and its "
            f"{ms(r['postprocess']['median_ms'])} ms postprocess decodes all-zero outputs (no candidate passes the threshold).")


def speed_section(run: RunData, link_base: Path) -> str:
    parts = [scenario_line(run) + " " + machine_line(run, link_base), "",
             speed_table(run), "",
             " ".join(t for t in ("Times are per batch, in milliseconds: median (p90, p99). Threads: the intra-op "
                                  "threads each backend was given.", flags_legend(run)) if t)]
    if has_gpu(run):
        parts += ["", "GPU util %: NVML's mean utilisation during the measured loops, the share of time at least one "
                      "kernel was running (busy, not how many SMs were used)."]
    sentences = fastest_sentences(run)
    if sentences:
        parts += ["", "Fastest backend per stage: " + "; ".join(sentences) + "."]
    baseline = baseline_sentence(run)
    if baseline:
        parts += ["", baseline]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Accuracy section
# ---------------------------------------------------------------------------------------------

def _float(v: Any) -> Optional[float]:
    return None if v in ("", None) else float(v)


def faces_table(run: RunData) -> str:
    sweep = is_sweep(run)
    headers = ["backend", "variant"] + (["batch"] if sweep else []) + \
              ["faces (reference)", "matched", "missed", "extra", "min IoU", "max box shift px",
               "max landmark shift px", "max score diff", "max abs diff (output)"]
    worst = _worst_outputs(run)
    lines = []
    for a in run.accuracy_faces:
        w = worst.get((a["backend"], a["variant"], int(a["batch"])))
        lines.append([a["backend"], variant_cell(run, a["backend"], a["variant"], a["input"], a["batch"])]
                     + ([a["batch"]] if sweep else []) + [
            f"{a['faces']} ({a['reference_faces']})", a["matched"], a["missed"], a["extra"],
            f"{float(a['min_iou']):.4f}", f"{float(a['max_box_shift_px']):.3g}",
            f"{float(a['max_landmark_shift_px']):.3g}", f"{float(a['max_score_diff']):.2g}",
            f"{_sci(w[0])} ({w[1]})" if w else "–"])
    return _md_table(headers, lines)


def _worst_outputs(run: RunData) -> Dict[Tuple[str, str, int], Tuple[float, str]]:
    worst: Dict[Tuple[str, str, int], Tuple[float, str]] = {}
    for o in run.accuracy_outputs:
        k = (o["backend"], o["variant"], int(o["batch"]))
        if k not in worst or float(o["max_abs"]) > worst[k][0]:
            worst[k] = (float(o["max_abs"]), str(o["output"]))
    return worst


def outputs_table(run: RunData) -> str:
    """One line per output, one column per compared row: max abs diff (mean abs diff)."""
    sweep = is_sweep(run)
    ref = _reference_key(run)
    cols: List[Tuple[str, str, int]] = []
    for o in run.accuracy_outputs:
        k = (o["backend"], o["variant"], int(o["batch"]))
        if k != ref and k not in cols:  # the reference against itself is zero by construction
            cols.append(k)
    if not cols:
        return ""
    outputs: List[str] = []
    cells: Dict[Tuple[str, Tuple[str, str, int]], str] = {}
    for o in run.accuracy_outputs:
        if o["output"] not in outputs:
            outputs.append(o["output"])
        cells[(o["output"], (o["backend"], o["variant"], int(o["batch"])))] = f"{_sci(o['max_abs'])} ({_sci(o['mean_abs'])})"
    inp = run.accuracy_outputs[0]["input"]
    headers = ["output"] + [row_label(b, "bilinear" if _hidden_bilinear(run, b, v, inp, n) else v, n if sweep else None)
                            for b, v, n in cols]
    lines = [[name] + [cells.get((name, c), "–") for c in cols] for name in outputs]
    return _md_table(headers, lines)


def _reference_key(run: RunData) -> Optional[Tuple[str, str, int]]:
    """The reference row: its backend/variant at the smallest batch (as run_accuracy picks it)."""
    if not run.accuracy_faces:
        return None
    backend, _, variant = str(run.accuracy_faces[0]["reference"]).partition("/")
    batches = [int(a["batch"]) for a in run.accuracy_faces if (a["backend"], a["variant"]) == (backend, variant)]
    return (backend, variant, min(batches)) if batches else None


def _upsample(run: RunData, row: RowResult) -> str:
    """How a row's Caffe model upsamples: recorded by the backend, else the config's option."""
    recorded = (row.info.get("settings") or {}).get("upsample")
    if recorded:
        return str(recorded)
    for b in run.config.get("backends") or []:
        if b.get("name") == row.backend and b.get("variant", "default") == row.variant:
            return str((b.get("options") or {}).get("upsample", ""))
    return ""


def _hidden_bilinear(run: RunData, backend: str, variant: str, input: str, batch: int) -> bool:
    """A Caffe row that used bilinear upsampling without its variant name saying so."""
    row = run.find_row(backend, variant, input, batch)
    return row is not None and "bilinear" not in variant and _upsample(run, row) == "bilinear"


def variant_cell(run: RunData, backend: str, variant: str, input: str, batch: int) -> str:
    return f"{variant} (upsample: bilinear)" if _hidden_bilinear(run, backend, variant, input, batch) else variant


def _faces_of(run: RunData, row: RowResult) -> Optional[Dict[str, Any]]:
    for a in run.accuracy_faces:
        if (a["backend"], a["variant"], a["input"], int(a["batch"])) == (row.backend, row.variant, row.input, row.batch):
            return a
    return None


def bilinear_sentences(run: RunData) -> List[str]:
    """The cost of the original project's bilinear Deconvolution, when a Caffe row used it."""
    caffe = [r for r in run.ordered_rows() if r.backend in ("caffe", "opencv-caffe")]
    if not caffe:
        return []
    bilinear = [r for r in caffe if r.status == "passed" and _upsample(run, r) == "bilinear"]
    if not bilinear:
        return ["No Caffe row in this run used `upsample: bilinear`, so the bilinear Deconvolution's cost is not "
                "measured here; Caffe rows with exact upsampling (Deconvolution kernel 2, stride 2, all-ones "
                "weights) reproduce nearest upsampling."]
    firsts: Dict[Tuple[str, str, str], RowResult] = {}
    for r in bilinear:  # accuracy does not depend on the batch: report each row's smallest batch
        k = (r.backend, r.variant, r.input)
        if k not in firsts or r.batch < firsts[k].batch:
            firsts[k] = r
    worst = _worst_outputs(run)
    out = []
    for b in firsts.values():
        exact = next((r for r in caffe if r.status == "passed" and r.key != b.key and r.input == b.input
                      and r.batch == b.batch and r.backend == b.backend and _upsample(run, r) == "exact"), None)
        fb, wb = _faces_of(run, b), worst.get((b.backend, b.variant, b.batch))
        text = (f"**Cost of the bilinear Deconvolution** ({row_label(b.backend, b.variant)}, batch {b.batch}; "
                f"kernel 4, stride 2, pad 1 in place of nearest upsampling):")
        fe = _faces_of(run, exact) if exact else None
        we = worst.get((exact.backend, exact.variant, exact.batch)) if exact else None
        if wb:
            text += f" outputs differ from the reference by up to {_sci(wb[0])} ({wb[1]})"
            text += f", against {_sci(we[0])} with exact upsampling" if we else ""
            text += ";"
        if fb:
            text += (f" {fb['matched']} of {fb['reference_faces']} reference faces matched, {fb['missed']} missed, "
                     f"{fb['extra']} extra, min IoU {float(fb['min_iou']):.4f}, boxes moved up to "
                     f"{float(fb['max_box_shift_px']):.3g} px")
            text += (f" (exact: min IoU {float(fe['min_iou']):.4f}, {float(fe['max_box_shift_px']):.3g} px)" if fe else "")
            text += ";"
        inf_b = _median(run, b, "inference")
        inf_e = _median(run, exact, "inference") if exact else None
        if inf_b is not None and inf_e:
            text += f" inference median {ms(inf_b)} ms against {ms(inf_e)} ms exact ({inf_b / inf_e:.2f}x)."
        elif inf_b is not None:
            text += f" inference median {ms(inf_b)} ms (no exact-upsampling row of {b.backend} to compare with)."
        out.append(text.rstrip(";") + ("" if text.endswith(".") else "."))
    return out


def _median(run: RunData, row: Optional[RowResult], stage: str) -> Optional[float]:
    if row is None:
        return None
    for s in run.summary:
        if (s["backend"], s["variant"], s["input"], s["batch"], s["stage"]) == \
                (row.backend, row.variant, row.input, row.batch, stage) and s.get("median_ms") != "":
            return float(s["median_ms"])
    return None


def accuracy_section(run: RunData) -> str:
    if not run.accuracy_faces:
        return (f"No accuracy comparison in run `{run.path.name}`: no reference backend passed "
                f"(set `reference:` in the scenario).")
    ref = run.accuracy_faces[0]["reference"]
    parts = [f"Every backend's detections and raw outputs for the first image of the batch, against the reference "
             f"**{ref}** (faces matched one to one at IoU >= 0.5; shifts in pixels of the original image).", "",
             faces_table(run)]
    table = outputs_table(run)
    if table:
        parts += ["", "Absolute difference from the reference per raw output: max (mean).", "", table]
    for sentence in bilinear_sentences(run):
        parts += ["", sentence]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Plots section and the README rewrite
# ---------------------------------------------------------------------------------------------

def plots_section(run: RunData, link_base: Path) -> str:
    from retinabench.report.plots import planned_plots
    specs = planned_plots(run)
    if not specs:
        return f"No plots: run `{run.path.name}` has no passed rows."
    return "\n".join(f"![{s.title}]({relative_link(run.path / 'plots' / s.file, link_base)})" for s in specs)


def report_sections(run: RunData, link_base: Path) -> Dict[str, str]:
    """Marker name -> markdown, for one run."""
    name = run.scenario
    return {name: speed_section(run, link_base),
            f"accuracy-{name}": accuracy_section(run),
            f"plots-{name}": plots_section(run, link_base)}


def marker_lines(name: str) -> Tuple[str, str]:
    return f"<!-- retinabench:begin {name} -->", f"<!-- retinabench:end {name} -->"


@dataclass
class ReadmeUpdate:
    found: List[str]
    missing: List[str]
    changed: List[str]


def rewrite_sections(text: str, sections: Dict[str, str]) -> Tuple[str, ReadmeUpdate]:
    """Replace what lies between each section's existing markers; everything else stays byte for byte."""
    found, missing, changed = [], [], []
    for name, body in sections.items():
        begin, end = marker_lines(name)
        pattern = re.compile(rf"^{re.escape(begin)}[ \t]*\n(.*?)^{re.escape(end)}[ \t]*$", re.M | re.S)
        matches = list(pattern.finditer(text))
        begins = len(re.findall(rf"^{re.escape(begin)}[ \t]*$", text, re.M))
        if begins == 0:
            missing.append(name)
            continue
        if len(matches) != 1 or begins != 1:
            raise BenchError(f"README: marker {begin!r} must appear once, followed by {end!r}")
        m = matches[0]
        new_inner = "\n" + body.strip("\n") + "\n\n"
        if m.group(1) != new_inner:
            changed.append(name)
            text = text[:m.start(1)] + new_inner + text[m.end(1):]
        found.append(name)
    return text, ReadmeUpdate(found, missing, changed)


def update_readme(readme: Path, run: RunData) -> ReadmeUpdate:
    """Rewrite the run's marked sections in a README; the file is written only when something changed."""
    if not readme.is_file():
        raise BenchError(f"{readme}: no such README")
    text = readme.read_text(encoding="utf-8")
    new, update = rewrite_sections(text, report_sections(run, readme.parent))
    if not update.found:
        begin, end = marker_lines(run.scenario)
        raise BenchError(f"{readme}: no markers for scenario {run.scenario!r}; add e.g. '{begin}' ... '{end}' "
                         f"(also accuracy-{run.scenario}, plots-{run.scenario})")
    if new != text:
        tmp = readme.with_name(f".{readme.name}.tmp")
        tmp.write_text(new, encoding="utf-8")
        os.replace(tmp, readme)
    return update
