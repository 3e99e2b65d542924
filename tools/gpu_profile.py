"""Where a GPU row's time goes: stage medians, GPU time per stage, copy bandwidths, torch.profiler tables.

    python tools/gpu_profile.py --model M --image I --size 448x448 --batch 32 --variant pipe-compile \
        --out results/<run>/profile.txt

It builds the row as the worker does (backend, its device pre/post hooks, the harness's measured
loop), measures the host<->device copy rates the row depends on, then profiles a few loops with
torch.profiler (CPU and CUDA activity). For rows that miss a target: the text says what bounds the
time, with the numbers that show it.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _median_ms(fn: Callable[[], None], n: int = 50) -> float:
    import torch
    times = []
    for _ in range(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_rates(images: List, out: io.StringIO) -> float:
    """Host copy into pinned memory and pinned -> device upload, for this batch's bytes; returns the upload ms."""
    import numpy as np
    import torch

    nbytes = sum(int(im.nbytes) for im in images)
    pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    flat = [torch.from_numpy(np.ascontiguousarray(im).reshape(-1)) for im in images]

    def host_copy() -> None:
        o = 0
        for f in flat:
            pinned[o:o + f.numel()].copy_(f)
            o += f.numel()
    upload = _median_ms(lambda: dev.copy_(pinned, non_blocking=True))
    host = _median_ms(host_copy)
    out.write(f"batch bytes (uint8 images as they are in host memory): {nbytes / 2**20:.2f} MiB\n")
    # torch's own CPU copy_, for comparison: the pipeline copies with numpy on a thread pool instead
    out.write(f"torch copy_ into pinned memory: {host:.3f} ms ({nbytes / host / 1e6:.1f} GB/s, "
              f"{torch.get_num_threads()} torch threads)\n")
    out.write(f"pinned -> device upload: {upload:.3f} ms ({nbytes / upload / 1e6:.1f} GB/s)\n")
    return upload


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--size", required=True, help="WxH, fit mode")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--variant", default="pipe-compile")
    p.add_argument("--loops", type=int, default=300)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--profile-loops", type=int, default=20)
    p.add_argument("--threshold", type=float, default=0.8)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option, e.g. compile_stages=false (values parsed as YAML scalars)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    import cv2
    import numpy as np
    import yaml
    import torch
    from torch.profiler import ProfilerActivity, profile

    from backends.base import create_backend
    from retinabench.harness.loop import STAGES, measure
    from retinabench.model.family import get_family
    from retinabench.model.preprocess import Preprocessor
    from retinabench.model.source import open_model

    w, h = (int(v) for v in args.size.lower().split("x"))
    model = open_model(Path(args.model))
    family = get_family(model.family)
    img = cv2.imread(args.image, cv2.IMREAD_COLOR)
    images = [img] * args.batch
    cpu_pre = Preprocessor(family.normalization, "fit", (w, h))
    n, c, hh, ww = cpu_pre.blob_shape(images)
    out = io.StringIO()
    out.write(f"torch/{args.variant}, {args.size}, batch {args.batch}, {torch.cuda.get_device_name()}, "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}\n\n")
    options = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.option)}
    out.write(f"options: {options}\n")
    with create_backend("torch", variant=args.variant, device="cuda", options=options) as be:
        be.load(model, n, hh, ww)
        pre = be.device_preprocess(family, "fit", (w, h)) or cpu_pre
        post = be.device_postprocess(family, be.output_names, args.threshold) or \
            family.make_decoder(be.output_names, args.threshold)
        r = measure(pre, be.infer, post, images, args.loops, args.warmup)
        extra = be.metrics()
        out.write(f"## host time per stage, median of {args.loops} loops (ms)\n")
        for i, stage in enumerate(STAGES):
            out.write(f"{stage:12s} {float(np.median(r.samples_ns[:, i])) / 1e6:8.3f}\n")
        out.write("\n## GPU time per stage from CUDA events, median of the same loops (ms)\n")
        for key in ("gpu_preprocess_ms", "gpu_time_ms", "gpu_postprocess_ms"):
            if key in extra:
                out.write(f"{key:20s} {statistics.median(extra[key][-args.loops:]):8.3f}\n")
        out.write("\n## copy rates for this batch\n")
        copy_rates(images, out)
        acts = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
        with profile(activities=acts) as prof:
            measure(pre, be.infer, post, images, args.profile_loops, 0)
        for sort in ("self_device_time_total", "self_cpu_time_total"):
            out.write(f"\n## torch.profiler, {args.profile_loops} loops, sorted by {sort}\n")
            out.write(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))
            out.write("\n")
    text = out.getvalue()
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
