"""How fast an image reaches the GPU, each way the device preprocessing can do it, after torch.compile ran.

    python tools/upload_probe.py --model M --image I [--reps 300] [--out results]

In one process (after a torch.compile of the model, since the slow torch copy seen once came after
one): for t1.jpg as decoded (pageable host memory) to a device buffer, the median of `reps`
synchronised calls of each candidate the DevicePreprocessor offers (option `upload`):
- pageable: one copy_ from the image's own memory to the device;
- pinned: torch's parallel copy_ into a pinned buffer, then an asynchronous upload;
- banded-1 / banded-4: numpy copies of 1 or 4 row bands on a thread pool into the pinned buffer,
  each uploaded when done (the uploads overlap the copies still running);
and for a batch of 32 (the 448x448 sweep): pinned uploads of the 32 full images, `upload_chunk`
images per transfer (1: each image uploaded as soon as it is copied; up to 32: all copied, then one
upload), and host resize to 448x310 on all cores into pinned memory with the small images
uploaded (option host_resize).
Writes results/<UTC stamp>-upload-probe/upload_probe.json (+ .md): the DevicePreprocessor's
default is the fastest single-image candidate here.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retinabench.harness.env import fingerprint  # noqa: E402
from retinabench.model.images import load_image  # noqa: E402
from retinabench.model.source import open_model  # noqa: E402
from retinabench.store import RunStore  # noqa: E402

CHUNKS = (1, 4, 8, 16, 32)  # images per upload tried for the batch of 32


def median_ms(fn: Callable[[], None], reps: int) -> float:
    import torch
    for _ in range(max(5, reps // 10)):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> int:
    import cv2
    import numpy as np
    import torch
    from retinabench.graph.torch_module import to_torch
    from retinabench.model.device.cuda import compiled

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--reps", type=int, default=300)
    p.add_argument("--out", default="results")
    args = p.parse_args()

    dev = torch.device("cuda")
    module = to_torch(open_model(Path(args.model)).graph(), fold_batchnorm=True).to(dev, torch.float16)
    module = module.to(memory_format=torch.channels_last).eval()
    x = torch.zeros((1, 3, 896, 1280), dtype=torch.float16, device=dev).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        _, compile_s = compiled(module, x)
    img = load_image(Path(args.image))
    src = torch.from_numpy(img)
    pinned = torch.empty(img.shape, dtype=torch.uint8, pin_memory=True)
    pinned_np = pinned.numpy()
    target = torch.empty(img.shape, dtype=torch.uint8, device=dev)
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))

    def banded(bands: int) -> Callable[[], None]:
        step = -(-img.shape[0] // bands)
        rows = list(range(0, img.shape[0], step))

        def run() -> None:
            futs = [pool.submit(np.copyto, pinned_np[y:y + step], img[y:y + step]) for y in rows]
            for y, f in zip(rows, futs):
                f.result()
                target[y:y + step].copy_(pinned[y:y + step], non_blocking=True)
        return run

    def pinned_copy() -> None:
        pinned.copy_(src)
        target.copy_(pinned, non_blocking=True)

    single: Dict[str, float] = {
        "pageable": median_ms(lambda: target.copy_(src), args.reps),
        "pinned": median_ms(pinned_copy, args.reps),
        "banded-1": median_ms(banded(1), args.reps),
        "banded-4": median_ms(banded(4), args.reps),
    }
    batch = [img] * 32
    staging = torch.empty((32, *img.shape), dtype=torch.uint8, pin_memory=True)
    up = torch.empty_like(staging, device=dev)
    small_hw = (310, 448)
    small = torch.empty((32, *small_hw, 3), dtype=torch.uint8, pin_memory=True)
    small_np, small_dev = small.numpy(), torch.empty_like(small, device=dev)
    big_pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    threads_before = cv2.getNumThreads()

    def batch_pinned(chunk: int) -> Callable[[], None]:
        def run() -> None:  # what DevicePreprocessor's pinned upload does with upload_chunk=chunk
            for lo in range(0, len(batch), chunk):
                hi = min(len(batch), lo + chunk)
                for j in range(lo, hi):
                    staging[j].copy_(torch.from_numpy(batch[j]))
                up[lo:hi].copy_(staging[lo:hi], non_blocking=True)
        return run

    def batch_host_resize() -> None:
        futs = [big_pool.submit(cv2.resize, im, (small_hw[1], small_hw[0]), dst=small_np[j],
                                interpolation=cv2.INTER_LINEAR) for j, im in enumerate(batch)]
        for j, f in enumerate(futs):
            f.result()
            small_dev[j].copy_(small[j], non_blocking=True)

    batch32 = {f"pinned (32 full images), upload_chunk {c}": median_ms(batch_pinned(c), max(20, args.reps // 10))
               for c in CHUNKS}
    batch32[f"host resize to 448x310 + upload (cv2 threads {threads_before})"] = \
        median_ms(batch_host_resize, max(20, args.reps // 10))
    cv2.setNumThreads(1)  # what the host-resize preprocessing does: one image per pool thread
    batch32["host resize to 448x310 + upload (cv2 threads 1)"] = median_ms(batch_host_resize, max(20, args.reps // 10))
    best = min(single, key=single.get)
    store = RunStore.create(Path(args.out), "upload-probe")
    record = {"image": args.image, "image_shape": list(img.shape), "reps": args.reps, "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(), "compile_s_before": compile_s, "single_image_ms": single,
              "batch32_ms": batch32, "fastest_single": best, "env": fingerprint()}
    store.write_file("upload_probe.json", json.dumps(record, indent=1))
    lines = [f"# Host to device, after torch.compile ({compile_s:.1f} s) in the same process; medians of {args.reps}", "",
             "| t1.jpg (886x1280x3 uint8) | ms |", "| --- | --- |"]
    lines += [f"| {k} | {v:.3f} |" for k, v in single.items()]
    lines += ["", "| batch of 32 | ms |", "| --- | --- |"] + [f"| {k} | {v:.3f} |" for k, v in batch32.items()]
    lines += ["", f"Fastest single-image upload: **{best}**."]
    store.write_file("upload_probe.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"results: {store.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
