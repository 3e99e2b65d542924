"""Do the intervals tell the truth? One scenario run N times per variant: ratio spread and interval coverage.

    python benchmarks/interval_coverage.py --config configs/spread-1280x896.yaml [--repeats 3]
        [--variant before=processes:1] [--variant after] [--variant busy=hog:3/7] [--stage inference]
        [--model M] [--loops N] [--out results]
    python benchmarks/interval_coverage.py --rescore results/<stamp>-interval-coverage

A variant is a name and overrides: `processes:N` (the scenario's field), `contention:off` (no chunk is
measured again), `hog:ON/OFF` (a background process burns one core ON seconds, then rests OFF seconds,
for the whole of each of the variant's runs). Runs alternate between the variants, one at a time
(a repeat's order rotates), so a slow hour of the machine does not land on one variant.

From each run's summary.csv, per row (not the reference): the ratio of its `--stage` median to the
reference row's and that ratio's 95% interval. Per row and variant:
- spread: (max - min) / min of the runs' ratios (the issue's "agree within 5%");
- coverage: the fraction of runs whose interval contains the median of the runs' ratios;
- for variants with a hog, each run's distance from the quiet baseline's median (`--baseline`, default:
  the last variant without a hog), and what the run recorded: contention seen, chunks replaced.
Writes results/<UTC stamp>-interval-coverage/: runs/ (every run folder, scratch removed), coverage.json,
coverage.md (the table the README cites).
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retinabench.harness.env import fingerprint  # noqa: E402
from retinabench.store import RunStore  # noqa: E402

HOG = "import time\nwhile True:\n    end = time.monotonic() + {on}\n    while time.monotonic() < end:\n        pass\n" \
      "    time.sleep({off})\n"


def parse_variant(text: str) -> Dict[str, Any]:
    name, _, rest = text.partition("=")
    v: Dict[str, Any] = {"name": name, "overrides": [], "hog": None}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, _, value = item.partition(":")
        if key == "processes":
            v["overrides"] += ["--processes", value]
        elif key == "contention" and value == "off":
            v["overrides"] += ["--contention-limit", "off"]
        elif key == "hog":
            on, _, off = value.partition("/")
            v["hog"] = (float(on), float(off))
        else:
            raise SystemExit(f"--variant {text!r}: unknown override {item!r} (processes:N, contention:off, hog:ON/OFF)")
    return v


def run_ratios(run: Path, stage: str) -> Dict[str, Dict[str, Any]]:
    """backend/variant -> its ratio to the reference at `stage`, interval, and what the run recorded."""
    out: Dict[str, Dict[str, Any]] = {}
    with (run / "summary.csv").open() as f:
        for ln in csv.DictReader(f):
            if ln["stage"] != stage or ln["status"] != "passed" or not ln.get("ratio") or ln["reference"].startswith(
                    f"{ln['backend']}-{ln['variant']}-"):
                continue
            out[f"{ln['backend']}/{ln['variant']}"] = {
                "ratio": float(ln["ratio"]), "low": float(ln["ratio_ci_low"]), "high": float(ln["ratio_ci_high"]),
                "chunks_replaced": int(ln.get("chunks_replaced") or 0),
                "chunks_contended": int(ln.get("chunks_contended") or 0),
                "contention_cores_max": float(ln.get("contention_cores_max") or 0.0), "flags": ln["flags"]}
    return out


def rescored_ratios(run: Path, stage: str) -> Dict[str, Dict[str, Any]]:
    """As run_ratios, with the intervals recomputed from the run's samples by this commit's statistics
    (the measurements are the run's; only the arithmetic over them is today's)."""
    import yaml
    from retinabench.config import RUN_SPREAD
    from retinabench.report.summary import summary_rows
    store = RunStore(run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rows = store.ordered_rows()
    lines = summary_rows(rows, cfg.get("reference"), float(cfg.get("run_spread", RUN_SPREAD)))
    out: Dict[str, Dict[str, Any]] = {}
    recorded = run_ratios(run, stage)
    for ln in lines:
        if ln["stage"] != stage or ln.get("ratio") in ("", None) or ln["reference"] == ln["row"].key:
            continue
        name = f"{ln['backend']}/{ln['variant']}"
        out[name] = {**recorded.get(name, {}), "ratio": float(ln["ratio"]), "low": float(ln["ratio_ci_low"]),
                     "high": float(ln["ratio_ci_high"])}
    return out


def rescore(folder: Path) -> int:
    """Recompute a finished study's intervals from its runs' samples with this commit's statistics."""
    data = json.loads((folder / "coverage.json").read_text())
    variants = data["variants"]
    results = {v: [{"run": r["run"], "ratios": rescored_ratios(folder / "runs" / r["run"], data["stage"])}
                   for r in runs] for v, runs in data["runs"].items()}
    table = summarise(variants, results, data["baseline"])
    data.update(runs=results, table=table, rescored={"env": fingerprint()})
    (folder / "coverage.json").write_text(json.dumps(data, indent=1))
    args = argparse.Namespace(config=data["config"], repeats=data["repeats"], stage=data["stage"])
    text = markdown(args, variants, table, results)
    commit = str(data["rescored"]["env"].get("git_commit") or "")[:7]
    text = text.replace("\n\n| row |", f"\n\nIntervals recomputed from each run's samples by commit `{commit}`'s statistics "
                                       "(`--rescore`); the measurements are the runs'.\n\n| row |", 1)
    (folder / "coverage.md").write_text(text)
    print(text)
    return 0


def one_run(config: Path, variant: Dict[str, Any], runs_root: Path, extra: List[str]) -> Path:
    hog: Optional[subprocess.Popen] = None
    if variant["hog"]:
        on, off = variant["hog"]
        hog = subprocess.Popen([sys.executable, "-c", HOG.format(on=on, off=off)])
    try:
        before = set(runs_root.iterdir()) if runs_root.exists() else set()
        proc = subprocess.run([sys.executable, str(ROOT / "bench.py"), "run", "--config", str(config), "--out",
                               str(runs_root), *variant["overrides"], *extra], cwd=ROOT, capture_output=True, text=True)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    new = set(runs_root.iterdir()) - before
    if proc.returncode != 0 or len(new) != 1:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{variant['name']}: bench.py exited {proc.returncode}")
    (run,) = new
    shutil.rmtree(run / ".work", ignore_errors=True)   # worker scratch: duplicates rows/
    return run


def summarise(variants: List[Dict[str, Any]], results: Dict[str, List[Dict[str, Any]]], baseline: str) -> Dict[str, Any]:
    table: Dict[str, Dict[str, Any]] = {}
    rows = sorted({r for runs in results.values() for run in runs for r in run["ratios"]})
    quiet = {r: statistics.median([run["ratios"][r]["ratio"] for run in results[baseline] if r in run["ratios"]])
             for r in rows if any(r in run["ratios"] for run in results.get(baseline, []))}
    for v in variants:
        for r in rows:
            got = [run["ratios"][r] for run in results[v["name"]] if r in run["ratios"]]
            if not got:
                continue
            ratios = [g["ratio"] for g in got]
            med = statistics.median(ratios)
            entry = {"ratios": ratios, "intervals": [[g["low"], g["high"]] for g in got],
                     "spread": (max(ratios) - min(ratios)) / min(ratios), "median": med,
                     "covered": [g["low"] <= med <= g["high"] for g in got],
                     "chunks_replaced": [g["chunks_replaced"] for g in got],
                     "chunks_contended": [g["chunks_contended"] for g in got],
                     "flags": [g["flags"] for g in got]}
            entry["coverage"] = sum(entry["covered"]) / len(got)
            if v["hog"] and r in quiet:
                entry["quiet_median"] = quiet[r]
                entry["from_quiet"] = [abs(x - quiet[r]) / quiet[r] for x in ratios]
            table.setdefault(r, {})[v["name"]] = entry
    return table


def markdown(args: argparse.Namespace, variants: List[Dict[str, Any]], table: Dict[str, Any],
             results: Dict[str, List[Dict[str, Any]]]) -> str:
    n = args.repeats
    lines = [f"# Interval coverage: {args.config}", "",
             f"{n} runs per variant, alternating; `{args.stage}` median ratio to the reference row per run, its 95% "
             "interval, the spread (max - min) / min over the runs, and coverage: the fraction of runs whose interval "
             "contains the median of the runs' ratios.", "",
             "Variants: " + "; ".join(f"**{v['name']}**: " + (" ".join(v["overrides"]) or "the scenario's defaults")
                                      + (f", a background process burning one core {v['hog'][0]:g} s on, "
                                         f"{v['hog'][1]:g} s off" if v["hog"] else "") for v in variants) + ".", "",
             "| row | variant | " + " | ".join(f"run {i + 1} (95% CI)" for i in range(n)) +
             " | spread | coverage | vs quiet median | chunks replaced |",
             "| --- | --- |" + " --- |" * (n + 4)]
    for r, by_variant in table.items():
        for v in variants:
            e = by_variant.get(v["name"])
            if e is None:
                continue
            cells = [f"{x:.3f} [{lo:.3f}, {hi:.3f}]" + ("" if ok else " ✗")
                     for x, (lo, hi), ok in zip(e["ratios"], e["intervals"], e["covered"])]
            cells += [""] * (n - len(cells))
            quiet = (" / ".join(f"{100 * d:.1f}%" for d in e["from_quiet"]) if "from_quiet" in e else "–")
            lines.append(f"| {r} | {v['name']} | " + " | ".join(cells) + f" | {100 * e['spread']:.1f}% | "
                         f"{sum(e['covered'])}/{len(e['covered'])} | {quiet} | "
                         f"{' / '.join(str(c) for c in e['chunks_replaced'])} |")
    lines += ["", "✗: the run's interval does not contain the median of the runs' ratios.", "",
              "Runs: " + "; ".join(f"{v['name']}: " + ", ".join(f"`runs/{run['run']}`" for run in results[v['name']])
                                   for v in variants) + "."]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rescore", metavar="FOLDER",
                   help="recompute a finished study's intervals from its runs' samples with this commit's statistics")
    p.add_argument("--config")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variant", action="append", help="NAME[=processes:N,contention:off,hog:ON/OFF] (repeatable)")
    p.add_argument("--baseline", help="the quiet variant hog variants are compared with (default: the last without a hog)")
    p.add_argument("--stage", default="inference")
    p.add_argument("--model")
    p.add_argument("--loops", type=int)
    p.add_argument("--out", default="results")
    args = p.parse_args()
    if args.rescore:
        return rescore(Path(args.rescore))
    if not args.config:
        p.error("--config is required (or --rescore FOLDER)")
    variants = [parse_variant(v) for v in (args.variant or ["default"])]
    baseline = args.baseline or next((v["name"] for v in reversed(variants) if not v["hog"]), variants[0]["name"])
    extra = (["--model", args.model] if args.model else []) + (["--loops", str(args.loops)] if args.loops else [])
    out = RunStore.create(Path(args.out), "interval-coverage")
    runs_root = out.path / "runs"
    results: Dict[str, List[Dict[str, Any]]] = {v["name"]: [] for v in variants}
    t0 = time.time()
    for i in range(args.repeats):
        order = variants[i % len(variants):] + variants[:i % len(variants)]
        for v in order:
            run = one_run(Path(args.config), v, runs_root, extra)
            ratios = run_ratios(run, args.stage)
            results[v["name"]].append({"run": run.name, "ratios": ratios})
            print(f"[{time.time() - t0:.0f} s] {v['name']} {i + 1}/{args.repeats}: " +
                  ", ".join(f"{b} {x['ratio']:.3f} [{x['low']:.3f}, {x['high']:.3f}]" for b, x in ratios.items()),
                  file=sys.stderr, flush=True)
    table = summarise(variants, results, baseline)
    out.write_file("coverage.json", json.dumps({"config": args.config, "repeats": args.repeats, "stage": args.stage,
                                                "variants": variants, "baseline": baseline, "runs": results,
                                                "table": table, "env": fingerprint()}, indent=1))
    text = markdown(args, variants, table, results)
    out.write_file("coverage.md", text)
    print(text)
    print(f"results: {out.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
