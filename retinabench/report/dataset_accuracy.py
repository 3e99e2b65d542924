"""Scores of an accuracy run (retinabench.harness.accuracy): AP per row and dataset, with intervals.

Per row and dataset, from the detections the run wrote and the dataset's ground truth:
- AP at IoU 0.5 (VOC rule, retinabench.datasets.plain_ap) with a 95% bootstrap interval over images;
- AP@[.5:.95] and AP50 by COCO's own implementation (pycocotools);
- recall at the speed tables' score threshold (the operating point the speed rows report);
- the AP50 difference to the reference row, with a paired interval (the same images drawn for both);
- for WIDER FACE, the official easy / medium / hard AP (retinabench.datasets.wider_protocol).

Written to the run folder as accuracy_ap.csv (every figure) and accuracy_ap.md; the README's section
is rendered from the CSV alone (`ap_section`), so it regenerates without the dataset at hand.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from retinabench.report.format import md_table, relative_link, wrap
from retinabench.store import RowResult, RunStore

COLUMNS = ["dataset", "backend", "variant", "device", "precision", "status", "images", "faces", "ap50", "ap50_low",
           "ap50_high", "coco_ap", "coco_ap50", "recall_at_threshold", "threshold", "reference", "ap50_diff",
           "ap50_diff_low", "ap50_diff_high", "easy", "medium", "hard", "reason",
           "f32_row", "f32_diff", "f32_diff_low", "f32_diff_high"]
N_BOOT = 1000
SEED = 0


def predictions(detections: Dict[str, Any], items: Sequence[Any]) -> List[np.ndarray]:
    """One [M, 5] array per item, in the items' order, from a detections file ({image path: boxes})."""
    return [np.asarray(detections.get(str(it.path), []), np.float64).reshape(-1, 5) for it in items]


def reference_key(rows: Sequence[RowResult], reference: Optional[str]) -> Optional[str]:
    """The reference backend's row (its default variant first); accuracy rows have no samples, so their
    status says whether they ran."""
    refs = [r for r in rows if r.status == "passed" and r.id.backend == reference] if reference else []
    refs.sort(key=lambda r: r.id.variant != "default")
    return refs[0].key if refs else None


def score(run_dir: Path, datasets: Sequence[Any], reference: Optional[str], speed_threshold: float) -> List[Dict[str, Any]]:
    from retinabench.datasets.bootstrap import bootstrap_ap, paired_ap_difference
    from retinabench.datasets.coco_ap import coco_ap
    from retinabench.datasets.plain_ap import recall_at
    from retinabench.datasets.wider_protocol import wider_ap
    from retinabench.harness.accuracy import slug

    store = RunStore(run_dir)
    rows = store.ordered_rows()
    ref = reference_key(rows, reference)
    out = []
    for ds in datasets:
        folder = Path(run_dir) / "detections" / slug(ds.name)
        preds = {r.key: predictions(json.loads((folder / f"{r.key}.json").read_text()), ds.items)
                 for r in rows if r.status == "passed" and (folder / f"{r.key}.json").is_file()}
        for r in rows:
            settings = r.result.settings
            line: Dict[str, Any] = {"dataset": ds.name, "backend": r.id.backend, "variant": r.id.variant,
                                    "device": r.id.device, "precision": settings.precision if settings else "",
                                    "status": r.status, "images": ds.num_images, "faces": ds.num_boxes,
                                    "threshold": speed_threshold, "reference": ref or ""}
            if r.key not in preds:
                out.append({**line, "status": r.status if r.status != "passed" else "failed",
                            "reason": r.reason or "no detections file"})
                continue
            p = preds[r.key]
            ap = bootstrap_ap(ds.items, p, n_boot=N_BOOT, seed=SEED)
            line.update(ap50=ap.estimate, ap50_low=ap.low, ap50_high=ap.high,
                        recall_at_threshold=recall_at(ds.items, p, speed_threshold))
            coco = coco_ap(ds.items, p)
            line.update(coco_ap=coco["ap"], coco_ap50=coco["ap50"])
            if ds.settings:
                line.update(wider_ap(ds.items, p))
            if ref and r.key != ref and ref in preds:
                d = paired_ap_difference(ds.items, p, preds[ref], n_boot=N_BOOT, seed=SEED)
                line.update(ap50_diff=d.estimate, ap50_diff_low=d.low, ap50_diff_high=d.high)
            own = f32_row(r, rows)
            if own is not None and own.key in preds:   # a reduced-precision row against its own backend's f32
                d = paired_ap_difference(ds.items, p, preds[own.key], n_boot=N_BOOT, seed=SEED)
                line.update(f32_row=own.key, f32_diff=d.estimate, f32_diff_low=d.low, f32_diff_high=d.high)
            out.append(line)
    return out


LOWER_PRECISIONS = ("int8", "f16", "bf16")


def f32_row(r: RowResult, rows: Sequence[RowResult]) -> Optional[RowResult]:
    """The same backend's default (f32) row on the same device, for a row of lower precision."""
    settings = r.result.settings
    if settings is None or settings.precision not in LOWER_PRECISIONS or r.id.variant == "default":
        return None
    same = [o for o in rows if o.id.backend == r.id.backend and o.id.variant == "default" and o.id.device == r.id.device
            and o.status == "passed"]
    return same[0] if same else None


def write_scores(run_dir: Path, lines: List[Dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for ln in lines:
        w.writerow({k: _fmt(ln.get(k, "")) for k in COLUMNS})
    store = RunStore(run_dir)
    store.write_file("accuracy_ap.csv", buf.getvalue())


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.6g}"
    return "" if v is None else str(v)


def read_scores(run_dir: Path) -> List[Dict[str, str]]:
    path = Path(run_dir) / "accuracy_ap.csv"
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def drops(lines: Sequence[Dict[str, Any]], max_drop_points: float) -> List[str]:
    """Rows that lose more than `max_drop_points` AP50 points (x100) against the reference on some dataset."""
    out = []
    for ln in lines:
        d = ln.get("ap50_diff")
        if d not in ("", None) and -100 * float(d) > max_drop_points:
            name = ln["backend"] + ("" if ln["variant"] == "default" else f" ({ln['variant']})")
            out.append(f"{name} on {ln['dataset']}: {100 * float(d):+.1f} points")
    return out


def _name(ln: Dict[str, str]) -> str:
    return ln["backend"] + ("" if ln["variant"] == "default" else f" ({ln['variant']})")


def _ap(ln: Dict[str, str]) -> str:
    if ln.get("ap50") in ("", None):
        return "–"
    return f"{float(ln['ap50']):.3f} ({float(ln['ap50_low']):.3f}-{float(ln['ap50_high']):.3f})"


def _diff(ln: Dict[str, str]) -> str:
    if ln.get("ap50_diff") in ("", None):
        return "reference" if ln.get("reference") and ln["reference"].startswith(f"{ln['backend']}-{ln['variant']}-") \
            and ln.get("ap50") not in ("", None) else "–"
    d, lo, hi = (100 * float(ln[k]) for k in ("ap50_diff", "ap50_diff_low", "ap50_diff_high"))
    return f"{d:+.1f} ({lo:+.1f} to {hi:+.1f})"


def ap_table(lines: Sequence[Dict[str, str]], with_diffs: bool = True) -> str:
    """Rows x datasets: AP50 with its interval; then, per dataset, the points lost to the reference."""
    datasets = list(dict.fromkeys(ln["dataset"] for ln in lines))
    names = list(dict.fromkeys(_name(ln) for ln in lines if ln.get("ap50") not in ("", None)))
    by = {(_name(ln), ln["dataset"]): ln for ln in lines}
    headers = ["backend"] + [f"AP50 {d}" for d in datasets]
    table = [[n] + [_ap(by[(n, d)]) if (n, d) in by else "–" for d in datasets] for n in names]
    text = md_table(headers, table)
    if not with_diffs:
        return text
    diffs = [[n] + [_diff(by[(n, d)]) if (n, d) in by else "–" for d in datasets] for n in names]
    return (text + "\n\nAP50 points against the reference row, paired over images (95% interval):\n\n"
            + md_table(["backend"] + list(datasets), diffs))


def precision_costs(lines: Sequence[Dict[str, str]]) -> List[str]:
    """One sentence per lower-precision row: its AP50 against its own backend's f32 row, per dataset."""
    out = []
    by: Dict[str, List[Dict[str, str]]] = {}
    for ln in lines:
        if ln.get("f32_diff") not in ("", None):
            by.setdefault(_name(ln), []).append(ln)
    for name, lns in by.items():
        parts = [f"{ln['dataset']} {100 * float(ln['f32_diff']):+.1f} ({100 * float(ln['f32_diff_low']):+.1f} to "
                 f"{100 * float(ln['f32_diff_high']):+.1f})" for ln in lns]
        out.append(f"{name} against its f32 row, AP50 points (95% interval): " + "; ".join(parts) + ".")
    return out


def ap_section(run_dir: Path, link_base: Path) -> str:
    """The README's accuracy section from a committed accuracy run's accuracy_ap.csv and run.json."""
    lines = read_scores(run_dir)
    meta = json.loads((Path(run_dir) / "run.json").read_text())
    env = json.loads((Path(run_dir) / "env.json").read_text()) if (Path(run_dir) / "env.json").is_file() else {}
    link = relative_link(Path(run_dir), link_base)
    full = relative_link(Path(run_dir) / "accuracy_ap.md", link_base)
    ds = meta.get("datasets", [])
    if len({(d["images"], d["boxes"]) for d in ds}) == 1:   # one set at several scales: its size once
        sets = f"{', '.join(d['name'] for d in ds)} ({ds[0]['images']} images, {ds[0]['boxes']} faces each)"
    else:
        sets = "; ".join(f"{d['name']}: {d['images']} images, {d['boxes']} faces" for d in ds)
    from retinabench.harness.env import machine_label
    canvas = meta.get("canvas") or ["?", "?"]
    recall = {(_name(ln), ln["dataset"]): ln.get("recall_at_threshold") for ln in lines}
    first = lines[0]["dataset"] if lines else ""
    found = {n: f"{float(v):.2f}" for (n, d), v in recall.items() if d == first and v not in ("", None)}
    rec = (f"{next(iter(found.values()))} for every row" if len(set(found.values())) == 1
           else ", ".join(f"{n} {v}" for n, v in found.items()))
    coco = ", ".join(f"{_name(ln)} {float(ln['coco_ap']):.3f}" for ln in lines
                     if ln["dataset"] == first and ln.get("coco_ap") not in ("", None))
    faces = sum(int(d.get("boxes") or 0) for d in meta.get("datasets", [])[:1])
    return "\n".join([
        wrap(f"Datasets: {sets}. Run folder [`{link}`]({link}), {machine_label(env) if env else 'unrecorded machine'}; "
              f"each image at its original scale on a {canvas[0]}x{canvas[1]} canvas, faces kept from a score of "
              f"{meta.get('score_threshold')}, IoU 0.5, AP by the VOC rule with a 95% bootstrap interval over images. "
              f"A small set: each of its {faces} faces is about {100 / max(1, faces):.0f} points of recall."),
        "", ap_table(lines, with_diffs=False), "",
        wrap(f"Every row's AP50 against the reference row, paired over images: [accuracy_ap.md]({full}); "
              "every face found, per image: the run folder's detections/. Rows of lower precision against "
              "their own f32 row:"), ""]
        + [wrap("- " + s) for s in precision_costs(lines)]
        + ["", wrap(f"Recall at the speed tables' threshold ({lines[0]['threshold'] if lines else '?'}) on {first}: "
                     f"{rec}."), "", wrap(f"COCO AP@[.5:.95] (pycocotools) on {first}: {coco}.")])
