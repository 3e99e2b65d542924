"""The accuracy section of a run: every row's faces and raw outputs against the reference row's.

The original project's README left this section empty; here it says what the bilinear
Deconvolution of its Caffe port cost, in numbers.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from retinabench.records import RowId
from retinabench.report.format import md_table, ms, row_label, sci
from retinabench.report.run_data import RunData
from retinabench.report.speed import is_sweep
from retinabench.report.variants import hidden_bilinear, upsample_of, variant_cell
from retinabench.store import RowResult


def faces_table(run: RunData) -> str:
    sweep = is_sweep(run)
    headers = ["backend", "variant"] + (["batch"] if sweep else []) + \
              ["faces (reference)", "matched", "missed", "extra", "min IoU", "max box shift px",
               "max landmark shift px", "max score diff", "max abs diff (output)"]
    worst = _worst_outputs(run)
    lines = []
    for a in run.accuracy_faces:
        w = worst.get(a["row"])
        lines.append([a["backend"], variant_cell(run, a["row"])] + ([a["batch"]] if sweep else []) + [
            f"{a['faces']} ({a['reference_faces']})", a["matched"], a["missed"], a["extra"],
            f"{float(a['min_iou']):.4f}", f"{float(a['max_box_shift_px']):.3g}",
            f"{float(a['max_landmark_shift_px']):.3g}", f"{float(a['max_score_diff']):.2g}",
            f"{sci(w[0])} ({w[1]})" if w else "–"])
    return md_table(headers, lines)


def _worst_outputs(run: RunData) -> Dict[RowId, Tuple[float, str]]:
    worst: Dict[RowId, Tuple[float, str]] = {}
    for o in run.accuracy_outputs:
        k = o["row"]
        if k not in worst or float(o["max_abs"]) > worst[k][0]:
            worst[k] = (float(o["max_abs"]), str(o["output"]))
    return worst


def outputs_table(run: RunData) -> str:
    """One line per output, one column per compared row: max abs diff (mean abs diff)."""
    sweep = is_sweep(run)
    ref = _reference_row(run)
    cols: List[RowId] = []
    for o in run.accuracy_outputs:
        if o["row"] != ref and o["row"] not in cols:  # the reference against itself is zero by construction
            cols.append(o["row"])
    if not cols:
        return ""
    outputs: List[str] = []
    cells: Dict[Tuple[str, RowId], str] = {}
    for o in run.accuracy_outputs:
        if o["output"] not in outputs:
            outputs.append(o["output"])
        cells[(o["output"], o["row"])] = f"{sci(o['max_abs'])} ({sci(o['mean_abs'])})"
    headers = ["output"] + [row_label(c.backend, "bilinear" if hidden_bilinear(run, c) else c.variant,
                                      c.batch if sweep else None) for c in cols]
    lines = [[name] + [cells.get((name, c), "–") for c in cols] for name in outputs]
    return md_table(headers, lines)


def _reference_row(run: RunData) -> Optional[RowId]:
    """The reference row: its backend/variant at the smallest batch (as run_accuracy picks it)."""
    if not run.accuracy_faces:
        return None
    backend, _, variant = str(run.accuracy_faces[0]["reference"]).partition("/")
    refs = [a["row"] for a in run.accuracy_faces if (a["backend"], a["variant"]) == (backend, variant)]
    return min(refs, key=lambda r: r.batch) if refs else None


def _faces_of(run: RunData, row: RowResult) -> Optional[Dict[str, Any]]:
    return next((a for a in run.accuracy_faces if a["row"] == row.id), None)


def _median(run: RunData, row: Optional[RowResult], stage: str) -> Optional[float]:
    if row is None:
        return None
    for s in run.lines(row.id):
        if s["stage"] == stage and s.get("median_ms") != "":
            return float(s["median_ms"])
    return None


def bilinear_sentences(run: RunData) -> List[str]:
    """The cost of the original project's bilinear Deconvolution, when a Caffe row used it."""
    caffe = [r for r in run.ordered_rows() if r.id.backend in ("caffe", "opencv-caffe")]
    if not caffe:
        return []
    bilinear = [r for r in caffe if r.status == "passed" and upsample_of(run, r) == "bilinear"]
    if not bilinear:
        return ["No Caffe row in this run used `upsample: bilinear`, so the bilinear Deconvolution's cost is not "
                "measured here; Caffe rows with exact upsampling (Deconvolution kernel 2, stride 2, all-ones "
                "weights) reproduce nearest upsampling."]
    firsts: Dict[Tuple[str, str, str, str], RowResult] = {}
    for r in bilinear:  # accuracy does not depend on the batch: report each row's smallest batch
        k = (r.id.backend, r.id.variant, r.id.device, r.id.input)
        if k not in firsts or r.id.batch < firsts[k].id.batch:
            firsts[k] = r
    worst = _worst_outputs(run)
    out = []
    for b in firsts.values():
        exact = next((r for r in caffe if r.status == "passed" and r.id != b.id and r.id.input == b.id.input
                      and r.id.batch == b.id.batch and r.id.backend == b.id.backend
                      and upsample_of(run, r) == "exact"), None)
        fb, wb = _faces_of(run, b), worst.get(b.id)
        text = (f"**Cost of the bilinear Deconvolution** ({b.id.name}, batch {b.id.batch}; "
                f"kernel 4, stride 2, pad 1 in place of nearest upsampling):")
        fe = _faces_of(run, exact) if exact else None
        we = worst.get(exact.id) if exact else None
        if wb:
            text += f" outputs differ from the reference by up to {sci(wb[0])} ({wb[1]})"
            text += f", against {sci(we[0])} with exact upsampling" if we else ""
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
            text += f" inference median {ms(inf_b)} ms (no exact-upsampling row of {b.id.backend} to compare with)."
        out.append(text.rstrip(";") + ("" if text.endswith(".") else "."))
    return out


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
