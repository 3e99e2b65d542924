#!/usr/bin/env bash
# One device-tool call on the H200 (the device tool's machine: Python 3.12, torch, no package registry).
# Usage there:  scripts/gpu_session.sh STEP...   (steps: tests spread accuracy serve sweep threads)
# The carried folder .carry/ (git-ignored) holds wheels (.carry/whl), the shared model and image
# (.carry/shared), the dlib faces (.carry/datasets); results come back as $OUT/<step>.tgz.
set -uo pipefail
export PYTHONUNBUFFERED=1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
if ls .carry/whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .carry/whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export RETINABENCH_SHARED="$ROOT/.carry/shared" RETINABENCH_DATASETS="$ROOT/.carry/datasets" RETINABENCH_DEFAULTS="$ROOT/.carry/defaults"
export RETINABENCH_CACHE_HOME=/tmp/rbcache
MODEL="$ROOT/.carry/shared/models/insightface-mnet25"
IMAGE="$ROOT/.carry/shared/images/t1.jpg"
mkdir -p results
for step in "$@"; do
    before=$(ls results)
    case "$step" in
        tests)
            python3 -m pytest -q -p no:cacheprovider tests/test_torch_gpu.py tests/test_gpu_floor_and_stage_build.py \
                tests/test_tensorrt_parts.py tests/test_device_pipeline.py tests/test_gpu_monitor.py 2>&1 | tail -40 \
                > "$OUT/gpu-tests.txt" ;;
        spread)
            python3 benchmarks/interval_coverage.py --config configs/gpu-spread.yaml --model "$MODEL" --repeats 2 \
                --variant one=processes:1 --variant three=processes:3 --out results 2>&1 | tail -30 ;;
        accuracy)
            python3 bench.py accuracy --config configs/gpu-accuracy.yaml --model "$MODEL" --dataset dlib:test \
                --dataset dlib:test@0.5 --dataset dlib:test@0.35 --dataset dlib:test@0.25 --out results 2>&1 | tail -30 ;;
        serve)
            python3 bench.py --config configs/gpu-serve-1280x896.yaml --model "$MODEL" --image "$IMAGE" --out results \
                2>&1 | tail -40 ;;
        sweep)
            python3 bench.py --config configs/gpu-sweep.yaml --model "$MODEL" --image "$IMAGE" --out results 2>&1 | tail -25
            python3 bench.py --config configs/gpu-batch-640x480.yaml --model "$MODEL" --image "$IMAGE" --out results \
                2>&1 | tail -25 ;;
        threads)
            python3 bench.py --config configs/sweep-threads-16.yaml --out results 2>&1 | tail -25 ;;
    esac
    new=$(comm -13 <(echo "$before") <(ls results))
    [ -n "$new" ] && (cd results && tar czf "$OUT/$step.tgz" --exclude=.work $new)
done
ls -la "$OUT"
