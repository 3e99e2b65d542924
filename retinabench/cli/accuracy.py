"""`bench.py accuracy --config X.yaml --dataset SPEC ...`: every row of a scenario over annotated faces.

Each row runs in its own worker (retinabench.harness.accuracy), untimed, at each image's original
scale; the run folder holds every detection per image and dataset, and accuracy_ap.csv/.md the
scores (retinabench.report.dataset_accuracy): AP50 with its interval, COCO AP@[.5:.95], recall at the
speed tables' threshold, the difference to the reference row. `--max-ap-drop POINTS` exits 7 naming
the rows that lose more than POINTS AP50 points (x100) against the reference on some dataset.

Datasets: `dlib[:test|:train][@SCALE]` (fetched from Debian's dlib source package into the user
cache), `widerface:PATH`, `coco:FILE.json[,images=DIR]`, `voc:DIR` (retinabench.datasets).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, List

from retinabench.cli.common import check_writable_dir, resolve_model
from retinabench.cli.registry import subcommand
from retinabench.errors import BenchError
from retinabench.records import ExitCode


def cmd_accuracy(args: argparse.Namespace) -> int:
    from retinabench.config import read_config, scenario_with_overrides
    from retinabench.cli.run import chosen_entries, parse_backends, pick_reference
    from retinabench.datasets import open_dataset
    from retinabench.datasets.fetch import default_cache_dir
    from retinabench.harness.accuracy import AP_THRESHOLD, run_accuracy
    from retinabench.report.dataset_accuracy import ap_table, drops, score, write_scores

    if args.rescore:
        return rescore(Path(args.rescore), args)
    if not args.config:
        raise BenchError("accuracy needs --config FILE.yaml (or --rescore RUN)")
    if not args.dataset:
        raise BenchError("accuracy needs --dataset SPEC (e.g. dlib:test, dlib:test@0.5, widerface:PATH)")
    if args.max_ap_drop is not None and args.max_ap_drop < 0:
        raise BenchError(f"--max-ap-drop {args.max_ap_drop}: expected points of AP50 >= 0, e.g. 1")
    if not 0.0 <= args.score_threshold < 1.0:
        raise BenchError(f"--score-threshold {args.score_threshold}: expected a score in [0, 1)")
    data = dict(read_config(Path(args.config)))
    notes: List[str] = []
    if args.backends:
        data["backends"] = chosen_entries(parse_backends(args.backends), list(data.get("backends") or []))
    if args.backends or args.reference:
        data["reference"], note = pick_reference(args.reference, data.get("reference"), data["backends"])
        notes += [note] if note else []
    scenario = scenario_with_overrides(data, args.config, {"model": args.model, "threads": args.threads})
    results_root = Path(args.out or scenario.results_dir)
    check_writable_dir(results_root, "--out")
    cache = Path(args.cache) if args.cache else default_cache_dir()
    datasets = [open_dataset(spec, cache) for spec in args.dataset]     # every bad input: one line, before any row
    check_calibration(scenario, datasets)
    model = resolve_model(scenario.model, scenario.family)
    for line in notes:
        print(line, file=sys.stderr)
    print(f"accuracy: {len(scenario.backends)} backend entries over " +
          ", ".join(f"{d.name} ({d.num_images} images, {d.num_boxes} faces)" for d in datasets), file=sys.stderr)
    run_dir, rows = run_accuracy(scenario, model, datasets, results_root, threshold=args.score_threshold or AP_THRESHOLD,
                                 on_row=lambda key, i, n: print(f"[{i}/{n}] {key}", file=sys.stderr, flush=True))
    lines = score(run_dir, datasets, scenario.reference, scenario.threshold)
    write_scores(run_dir, lines)
    from retinabench.report.dataset_accuracy import read_scores
    text = ap_table(read_scores(run_dir))
    (run_dir / "accuracy_ap.md").write_text(text + "\n")
    print(text)
    print(f"results: {run_dir}")
    if args.max_ap_drop is not None:
        lost = drops(lines, args.max_ap_drop)
        if lost:
            print(f"accuracy gate: {len(lost)} row(s) lose more than {args.max_ap_drop:g} AP50 points: " + "; ".join(lost))
            return ExitCode.ACCURACY_DROP
        print(f"accuracy gate: no row loses more than {args.max_ap_drop:g} AP50 points against the reference")
    failed = [r for r in rows if r.status == "failed"]
    return ExitCode.PARTIAL if failed else ExitCode.OK


def rescore(run_dir: Path, args: argparse.Namespace) -> int:
    """A finished accuracy run's scores recomputed from its detections (the datasets reopened by the names
    its run.json records): the detections are the run's, the arithmetic today's."""
    from retinabench.datasets import open_dataset
    from retinabench.datasets.fetch import default_cache_dir
    from retinabench.report.dataset_accuracy import ap_table, read_scores, score, write_scores
    from retinabench.store import RunStore
    store = RunStore.open(run_dir)
    meta = store.read_meta()
    if meta.get("kind") != "accuracy":
        raise BenchError(f"{run_dir}: not an accuracy run")
    cache = Path(args.cache) if args.cache else default_cache_dir()
    datasets = [open_dataset(d["name"], cache) for d in meta.get("datasets", [])]
    config = store.read_config()
    write_scores(run_dir, score(run_dir, datasets, config.get("reference"), float(meta.get("speed_threshold", 0.8))))
    text = ap_table(read_scores(run_dir))
    (run_dir / "accuracy_ap.md").write_text(text + "\n")
    from datetime import datetime, timezone
    from retinabench.harness.env import fingerprint
    env = fingerprint()
    meta.setdefault("rescored", []).append({"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                            "commit": env.get("git_commit"), "dirty": env.get("git_dirty")})
    store.write_meta(meta)
    print(text)
    return ExitCode.OK


def check_calibration(scenario: Any, datasets: List[Any]) -> None:
    """A row calibrated on images of an evaluation dataset would grade itself: refused, naming both."""
    from backends.calibration import row_calibration
    from retinabench.datasets.records import sha256_file
    evaluated = {sha256_file(it.path): (ds.name, it.path) for ds in datasets for it in ds.items}
    for b in scenario.backends:
        cal = row_calibration(b.name, b.variant, _options(b))
        if cal is None:
            continue
        for path, digest in zip(cal.paths, cal.sha256):
            hit = evaluated.get(digest)
            if hit is not None:
                raise BenchError(f"{b.name} ({b.variant}) calibrates on {path}, which is image {hit[1]} of the "
                                 f"evaluation set {hit[0]}: calibrate on another split (its `calibration` option)")


def _options(spec: Any) -> Any:
    """A backend entry's options as its backend types them (what the calibration resolves from)."""
    from backends.base import backend_class
    return backend_class(spec.name).parse_options(dict(spec.options), f"backend {spec.name!r} options")


@subcommand("accuracy")
def register(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("accuracy", help="AP of every row of a scenario on annotated faces (dlib, WIDER FACE, COCO, VOC)",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("--config", help="scenario YAML whose rows are scored, e.g. configs/1280x896.yaml")
    p.add_argument("--rescore", metavar="RUN", help="recompute a finished accuracy run's scores from its detections")
    p.add_argument("--dataset", action="append",
                   help="dlib[:test|:train][@SCALE], widerface:PATH, coco:FILE.json[,images=DIR], voc:DIR (repeatable)")
    p.add_argument("--backends", help="NAME[:VARIANT],... replacing the config's rows")
    p.add_argument("--reference", help="the row the AP differences are taken against (default: the config's)")
    p.add_argument("--model", help="model path or 'default'")
    p.add_argument("--threads", type=int, help="intra-op threads for every backend")
    p.add_argument("--score-threshold", type=float, default=0.02,
                   help="faces kept for AP down to this score (the speed tables' threshold stays as it is)")
    p.add_argument("--max-ap-drop", type=float, metavar="POINTS",
                   help="exit 7 when a row loses more than POINTS AP50 points (x100) against the reference")
    p.add_argument("--out", help="results root (default: the config's results_dir)")
    p.add_argument("--cache", help="where datasets are fetched to (default: the user cache, RETINABENCH_DATASETS)")
    p.set_defaults(func=cmd_accuracy)
