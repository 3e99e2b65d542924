"""The cost of the shared CPU stages on their own, and what a sleeping core adds to them.

    python benchmarks/stage_costs.py --model PATH --image PATH [--size 1280x896] [--loops 1000]

Preprocessing (t1.jpg into the 1280x896 blob) and postprocessing (threshold 0.8, decode, NMS on
the model's real outputs for that image) are each run `loops` times back to back. Postprocessing
is measured three ways, each with its own loops, because in the pipeline it follows a wait:
  - back to back: the stage's own cost with a busy core;
  - after a 20 ms sleep: the thread slept as it does while a runtime computes, nothing else ran;
  - after inference: the model ran on the other threads in between (what the pipeline does).
On the 2-core CI VM the last two are about twice the first: a core woken from idle runs slowly
for a few hundred microseconds. Writes results/<UTC stamp>-stage-costs/stage_costs.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.base import create_backend  # noqa: E402
from retinabench.config import parse_size  # noqa: E402
from retinabench.harness.env import fingerprint  # noqa: E402
from retinabench.model.family import get_family  # noqa: E402
from retinabench.model.preprocess import Preprocessor  # noqa: E402
from retinabench.model.source import open_model  # noqa: E402
from retinabench.store import RunStore  # noqa: E402
from retinabench.report.stats import Measurement  # noqa: E402


def timed(fn, loops: int, before=None) -> Measurement:
    clock = time.perf_counter_ns
    samples = np.zeros(loops, np.int64)
    for i in range(loops):
        if before is not None:
            before()
        t0 = clock()
        fn()
        samples[i] = clock() - t0
    return Measurement.from_ns(samples)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--size", default="1280x896")
    p.add_argument("--threshold", type=float, default=0.8)
    p.add_argument("--loops", type=int, default=1000)
    p.add_argument("--backend", default="mxnet", help="the runtime that produces the outputs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results")
    args = p.parse_args()

    import cv2
    w, h = parse_size(args.size)
    model = open_model(Path(args.model))
    family = get_family(model.family)
    image = cv2.imread(args.image, cv2.IMREAD_COLOR)
    pre = Preprocessor(family.normalization, "fit", (w, h))
    blob, metas = pre([image])
    with create_backend(args.backend, threads=args.threads) as backend:
        backend.load(model, 1, h, w)
        outputs = backend.infer(blob)
        decode = family.make_decoder(backend.output_names, args.threshold)
        faces = decode(outputs, metas)[0]
        warm = max(10, args.loops // 20)
        timed(lambda: pre([image]), warm)
        timed(lambda: decode(outputs, metas), warm)
        stats = {
            "preprocess": timed(lambda: pre([image]), args.loops),
            "postprocess_back_to_back": timed(lambda: decode(outputs, metas), args.loops),
            "postprocess_after_20ms_sleep": timed(lambda: decode(outputs, metas), args.loops,
                                                  before=lambda: time.sleep(0.02)),
            "postprocess_after_inference": timed(lambda: decode(outputs, metas), args.loops,
                                                 before=lambda: backend.infer(blob)),
        }
        versions = backend.versions()
    run = RunStore.create(Path(args.out), "stage-costs")
    record = {"model": model.describe(), "image": args.image, "size": args.size, "threshold": args.threshold,
              "faces": len(faces), "loops": args.loops, "backend": args.backend, "threads": args.threads,
              "versions": versions, "stages_ms": {k: m.to_dict() for k, m in stats.items()}, "env": fingerprint()}
    run.write_file("stage_costs.json", json.dumps(record, indent=1))
    for k, m in stats.items():
        print(f"{k:30s} median {m.median_ms:.3f} ms  p90 {m.p90_ms:.3f} ms")
    print(f"{len(faces)} faces; results: {run.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
