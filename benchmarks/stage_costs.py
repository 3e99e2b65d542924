"""The cost of the shared CPU stages on their own, and what waiting before them adds.

    python benchmarks/stage_costs.py --model PATH --image PATH [--size 1280x896] [--loops 1000]

Preprocessing (t1.jpg into the 1280x896 blob) is measured for both model families (insightface:
RGB as it is; biubug6: BGR minus the mean), whatever the model; `preprocess` is the model's own
family, as before. Postprocessing (threshold 0.8, decode, NMS on the model's real outputs for
that image) is measured in several conditions, each with its own loops, because in the pipeline
it follows a wait:
  - back to back: the stage's own cost, everything it touches hot in the caches;
  - after a 20 ms sleep: the thread slept as it does while a runtime computes, nothing else ran;
  - after a 20 ms busy spin: the same wait with the core never idle (no sleep state, no wake-up).
    If this is as slow as after the sleep, the extra cost is not the core's wake-up;
  - after a 20 ms busy spin and one untimed run: the same wait, then the stage's code and data
    brought back into the caches by running it once. Back to back again means the extra cost
    is cache state lost during the wait, not code;
  - after reading 64 MB (no wait): the caches evicted on purpose, on a busy core;
  - after inference: the model ran on the other threads in between (what the pipeline does);
  - after inference with a spin-wait: the inference runs on a helper thread while this one
    spins until it is done, so the core that decodes never idles;
  - after inference and one untimed run: what inference leaves behind, restored by running once;
  - and, for scale, one numpy add of 121 floats back to back and right after inference: what
    the first use of a code path costs once the runtime has had the core.
Preprocessing is also measured after a 20 ms spin (both families) and after inference (the
model's family), and a memset of the blob gives that stage's floor (its 13.8 MB write: back to
back, after a 20 ms spin and after inference).
`summary` holds the figures the conditions pin: the code's own cost (back to back), the
in-pipeline cost (after inference), what a wake-up adds (sleep minus spin), what lost cache
state adds (spin minus spin with a warm run; inference minus inference with a warm run) and the
best in-pipeline figure measured (after inference, with a blocking or a spinning wait).
`other_threads_cores` is, per condition, the median CPU time the process's other threads (the
runtime's pool) used while the stage ran, per second of the stage's wall time.
Writes results/<UTC stamp>-stage-costs/stage_costs.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Tuple

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

WAIT_S = 0.02
FAMILIES = ("insightface", "biubug6")


def timed(fn, loops: int, before=None) -> Measurement:
    m, _ = timed_with_others(fn, loops, before)
    return m


def timed_with_others(fn, loops: int, before=None) -> Tuple[Measurement, Optional[float]]:
    """The stage's times, and the median CPU time the process's other threads used while it ran,
    per second of its wall time (1.0: one core's worth; a runtime's pool spinning after a run
    shows here). None for stages shorter than 20 us, where the CPU clocks cannot tell."""
    clock, cpu, own = time.perf_counter_ns, time.process_time_ns, time.thread_time_ns
    samples = np.zeros(loops, np.int64)
    others = np.zeros(loops, np.float64)
    for i in range(loops):
        if before is not None:
            before()
        p0, c0 = cpu(), own()
        t0 = clock()
        fn()
        samples[i] = clock() - t0
        c1, p1 = own(), cpu()
        others[i] = ((p1 - p0) - (c1 - c0)) / max(1, samples[i])
    m = Measurement.from_ns(samples)
    return m, (float(np.median(others)) if m.median_ms >= 0.02 else None)


def spin(seconds: float = WAIT_S) -> None:
    """Wait without yielding the core: a busy loop on the clock."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def spin_while(fn) -> None:
    """Run fn on a helper thread and spin on this one until it is done (the core never idles)."""
    done = threading.Event()
    failed = []

    def run():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the measuring thread
            failed.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    while not done.is_set():
        pass
    t.join()
    if failed:
        raise failed[0]


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
    pres = {name: Preprocessor(get_family(name).normalization, "fit", (w, h)) for name in FAMILIES}
    pre = pres[model.family] if model.family in pres else Preprocessor(family.normalization, "fit", (w, h))
    blob, metas = pre([image])
    blob = blob.copy()
    memset_target = np.zeros_like(blob)
    scratch = np.ones(64 << 20, np.uint8)  # read to evict the caches
    small = np.ones(121, np.float32)

    with create_backend(args.backend, threads=args.threads) as backend:
        backend.load(model, 1, h, w)
        outputs = backend.infer(blob)
        decode = family.make_decoder(backend.output_names, args.threshold)
        faces = decode(outputs, metas)[0]
        warm = max(10, args.loops // 20)
        for p_ in pres.values():
            timed(lambda: p_([image]), warm)
        timed(lambda: pre([image]), warm)
        timed(lambda: decode(outputs, metas), warm)
        post = lambda: decode(outputs, metas)  # noqa: E731
        infer = lambda: backend.infer(blob)  # noqa: E731
        stats, others = {}, {}

        def measure(name, fn, before=None):
            stats[name], others[name] = timed_with_others(fn, args.loops, before)

        measure("preprocess", lambda: pre([image]))
        measure("postprocess_back_to_back", post)
        measure("postprocess_after_20ms_sleep", post, lambda: time.sleep(WAIT_S))
        measure("postprocess_after_inference", post, infer)
        # controls: what the wait itself does, and what inference leaves behind
        measure("postprocess_after_20ms_spin", post, spin)
        measure("postprocess_after_20ms_spin_and_a_warm_run", post, lambda: (spin(), post()))
        measure("postprocess_after_reading_64MB", post, scratch.sum)
        measure("postprocess_after_inference_spin_wait", post, lambda: spin_while(infer))
        measure("postprocess_after_inference_and_a_warm_run", post, lambda: (infer(), post()))
        # what any code pays there: one numpy add of 121 floats (the candidates at 0.8)
        measure("one_numpy_add_back_to_back", lambda: small + small)
        measure("one_numpy_add_after_inference", lambda: small + small, infer)
        for name, p_ in pres.items():
            measure(f"preprocess_{name}", lambda p_=p_: p_([image]))
            measure(f"preprocess_{name}_after_20ms_spin", lambda p_=p_: p_([image]), spin)
        measure("preprocess_after_inference", lambda: pre([image]), infer)
        measure("memset_blob", lambda: memset_target.fill(0))
        measure("memset_blob_after_20ms_spin", lambda: memset_target.fill(0), spin)
        measure("memset_blob_after_inference", lambda: memset_target.fill(0), infer)
        versions = backend.versions()

    med = {k: m.median_ms for k, m in stats.items()}
    pipeline = {k: med[k] for k in ("postprocess_after_inference", "postprocess_after_inference_spin_wait")}
    best = min(pipeline, key=pipeline.get)
    summary = {
        "postprocess_code_ms": med["postprocess_back_to_back"],
        "postprocess_in_pipeline_ms": med["postprocess_after_inference"],
        "postprocess_wakeup_ms": med["postprocess_after_20ms_sleep"] - med["postprocess_after_20ms_spin"],
        "postprocess_lost_cache_state_ms": (med["postprocess_after_20ms_spin"]
                                            - med["postprocess_after_20ms_spin_and_a_warm_run"]),
        "postprocess_state_left_by_inference_ms": (med["postprocess_after_inference"]
                                                   - med["postprocess_after_inference_and_a_warm_run"]),
        "one_numpy_add_after_inference_ms": med["one_numpy_add_after_inference"],
        "one_numpy_add_back_to_back_ms": med["one_numpy_add_back_to_back"],
        "postprocess_best_in_pipeline_ms": pipeline[best],
        "postprocess_best_in_pipeline_condition": best,
        "preprocess_memset_floor_ms": med["memset_blob"],
        "preprocess_memset_floor_after_20ms_spin_ms": med["memset_blob_after_20ms_spin"],
        "preprocess_in_pipeline_ms": med["preprocess_after_inference"],
        "preprocess_memset_floor_after_inference_ms": med["memset_blob_after_inference"],
    }
    run = RunStore.create(Path(args.out), "stage-costs")
    record = {"model": model.describe(), "image": args.image, "size": args.size, "threshold": args.threshold,
              "faces": len(faces), "loops": args.loops, "backend": args.backend, "threads": args.threads,
              "versions": versions, "stages_ms": {k: m.to_dict() for k, m in stats.items()},
              "other_threads_cores": others, "summary": summary, "env": fingerprint()}
    run.write_file("stage_costs.json", json.dumps(record, indent=1))
    for k, m in stats.items():
        busy = "" if others[k] is None else f"  other threads {others[k]:.2f} cores"
        print(f"{k:44s} median {m.median_ms:.4f} ms  p90 {m.p90_ms:.4f} ms{busy}")
    for k, v in summary.items():
        print(f"{k:44s} {v if isinstance(v, str) else f'{v:.4f} ms'}")
    print(f"{len(faces)} faces; results: {run.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
