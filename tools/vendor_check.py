"""Our openvino row against OpenVINO's own benchmark tool, on the same model, shape, precision and threads.

    python tools/vendor_check.py [--model default|PATH] [--size 1280x896] [--threads 2] [--loops 1000]

Runs `benchmark_app` (shipped with the openvino wheel) on the ONNX file our openvino backend loads
(the model's own, or our cached export of its graph): one stream, as the latency hint gives our
row, f32, the given threads and iterations; then `bench.py` with the openvino row alone, as many
loops. Writes results/<UTC stamp>-vendor-check/ with both medians, their ratio, both commands and
benchmark_app's report; the README cites it. `benchmark_app` measures the infer request alone; our inference stage
also copies the outputs out (share_outputs=False): a few tenths of a millisecond at 1280x896.
For TensorRT the vendor tool is `trtexec --onnx=M --shapes=input:1x3x896x1280 --fp16 --iterations=1000`
(not runnable here: TensorRT cannot be installed).
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retinabench.cli.common import resolve_images, resolve_model  # noqa: E402
from retinabench.config import parse_size  # noqa: E402
from retinabench.graph.onnx_export import onnx_for  # noqa: E402
from retinabench.harness.env import fingerprint  # noqa: E402
from retinabench.model.source import open_model  # noqa: E402
from retinabench.store import RunStore  # noqa: E402

TOLERANCE = 0.05


def benchmark_app(onnx: Path, shape: str, threads: int, loops: int) -> dict:
    exe = shutil.which("benchmark_app", path=str(Path(sys.executable).parent)) or shutil.which("benchmark_app")
    if exe is None:
        raise SystemExit("benchmark_app not found (it ships with the openvino wheel)")
    # One stream on `threads` threads, as our openvino row runs: benchmark_app accepts -nthreads and
    # -nstreams only with -hint none (its own UI rule), and reports errors on stdout, exit code 0.
    cmd = [exe, "-m", str(onnx), "-d", "CPU", "-hint", "none", "-nstreams", "1", "-nthreads", str(threads),
           "-infer_precision", "f32", "-shape", shape, "-niter", str(loops), "-api", "sync"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    error = next((ln for ln in out.stdout.splitlines() if "[ ERROR ]" in ln), "")
    if out.returncode != 0 or error:
        raise SystemExit(f"benchmark_app failed: {(error or out.stderr.strip() or out.stdout.strip())[-500:]}")
    found = {k: float(v) for k, v in re.findall(r"(Median|Average|Min|Max):\s+([\d.]+) ms", out.stdout)}
    if "Median" not in found:
        raise SystemExit(f"benchmark_app printed no median latency:\n{out.stdout[-2000:]}")
    return {"command": " ".join(cmd), "latency_ms": found, "stdout": out.stdout}


def ours(model: Path, image: Path, size: str, threads: int, loops: int, out: Path) -> dict:
    w, h = parse_size(size)
    cfg = out / "scenario.yaml"
    cfg.write_text(yaml.safe_dump({"name": "vendor-check-openvino", "model": str(model), "images": [str(image)],
                                   "input": {"mode": "fit", "width": w, "height": h}, "threads": threads,
                                   "loops": loops, "warmup": 50, "backends": ["openvino"]}))
    cmd = [sys.executable, str(ROOT / "bench.py"), "--config", str(cfg), "--out", str(out / "runs")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"bench.py failed: {proc.stderr.strip()[-500:]}")
    (run,) = (out / "runs").iterdir()
    shutil.rmtree(run / ".work", ignore_errors=True)
    with (run / "summary.csv").open() as f:
        line = next(ln for ln in csv.DictReader(f) if ln["stage"] == "inference")
    return {"command": " ".join(cmd[1:]), "run": str(run.relative_to(out)), "inference_median_ms": float(line["median_ms"]),
            "precision": line["precision"], "threads": line["threads"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--image", default="default")
    p.add_argument("--size", default="1280x896")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--loops", type=int, default=1000)
    p.add_argument("--out", default="results")
    args = p.parse_args()
    model_path, (image,) = resolve_model(args.model), resolve_images([args.image])
    w, h = parse_size(args.size)
    onnx = onnx_for(open_model(model_path), (1, 3, h, w))
    store = RunStore.create(Path(args.out), "vendor-check")
    vendor = benchmark_app(onnx, f"[1,3,{h},{w}]", args.threads, args.loops)
    store.write_file("benchmark_app.txt", vendor.pop("stdout"))
    mine = ours(model_path, image, args.size, args.threads, args.loops, store.path)
    ratio = mine["inference_median_ms"] / vendor["latency_ms"]["Median"]
    record = {"model": str(model_path), "onnx": str(onnx), "size": args.size, "threads": args.threads,
              "loops": args.loops, "benchmark_app": vendor, "ours": mine, "ratio_ours_to_vendor": ratio,
              "within": abs(ratio - 1.0) <= TOLERANCE, "tolerance": TOLERANCE, "env": fingerprint()}
    store.write_file("vendor_check.json", json.dumps(record, indent=1))
    print(f"benchmark_app median {vendor['latency_ms']['Median']:.2f} ms; our openvino inference median "
          f"{mine['inference_median_ms']:.2f} ms; ratio {ratio:.3f} ({'within' if record['within'] else 'OUTSIDE'} "
          f"{TOLERANCE:.0%}); results: {store.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
