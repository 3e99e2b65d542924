#!/usr/bin/env bash
# One device-tool call on the H200 (the device tool's machine: Python 3.12, torch, no package registry).
# Usage there:  scripts/gpu_session.sh STEP...   (steps: tests spread accuracy serve sweep batch threads)
# RETINABENCH_GIT_COMMIT names the commit the copy was made from (the copy has no .git).
# The carried folder .carry/ (git-ignored) holds wheels (.carry/whl), the shared model and image
# (.carry/shared), the dlib faces (.carry/datasets); results come back as $OUT/<step>.tgz.
# SWEEP_ARGS: options added to the sweep, batch and threads steps (e.g. "--processes 1 --loops 100" when the
# session's device time is short; the run folder's config.yaml records what ran).
set -uo pipefail
export PYTHONUNBUFFERED=1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
if ls .carry/whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .carry/whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export RETINABENCH_SHARED="$ROOT/.carry/shared" RETINABENCH_DATASETS="$ROOT/.carry/datasets" RETINABENCH_DEFAULTS="$ROOT/.carry/defaults"
# the inductor cache and converted models in the repo's ignored .cache/: kept between calls on a warm machine
export RETINABENCH_CACHE_HOME="$ROOT/.cache/retinabench"
MODEL="$ROOT/.carry/shared/models/insightface-mnet25"
IMAGE="$ROOT/.carry/shared/images/t1.jpg"
mkdir -p results
# the device tool stops a command at 600 s: each step gets what is left of BUDGET_S (Ctrl-C at the end, so a
# run folder is left resumable and the steps before it are already packed)
BUDGET_S=${BUDGET_S:-570}
read -r -a SWEEP_ARGS <<< "${SWEEP_ARGS:-}"
START=$(date +%s)
for step in "$@"; do
    left=$((BUDGET_S - ($(date +%s) - START)))
    if [ "$left" -lt 30 ]; then echo "skipped $step: ${left}s left"; continue; fi
    before=$(ls results)
    timeout() { command timeout -s INT -k 20 "$left" "$@"; }
    case "$step" in
        tests)
            timeout python3 -m pytest -q -p no:cacheprovider tests/test_torch_gpu.py tests/test_gpu_floor_and_stage_build.py \
                tests/test_tensorrt_parts.py tests/test_device_pipeline.py tests/test_gpu_monitor.py 2>&1 | tail -40 \
                > "$OUT/gpu-tests.txt" ;;
        spread)
            timeout python3 benchmarks/interval_coverage.py --config configs/gpu-spread.yaml --model "$MODEL" --repeats 2 \
                --variant one=processes:1 --variant three=processes:3 --out results 2>&1 | tail -30 ;;
        accuracy)
            timeout python3 bench.py accuracy --config configs/gpu-accuracy.yaml --model "$MODEL" --dataset dlib:test \
                --dataset dlib:test@0.5 --dataset dlib:test@0.35 --dataset dlib:test@0.25 --out results 2>&1 | tail -30 ;;
        serve)
            timeout python3 bench.py --config configs/gpu-serve-1280x896.yaml --model "$MODEL" --image "$IMAGE" --out results \
                2>&1 | tail -40 ;;
        sweep)
            timeout python3 bench.py --config configs/gpu-sweep.yaml --model "$MODEL" --image "$IMAGE" --out results \
                "${SWEEP_ARGS[@]}" 2>&1 | tail -25 ;;
        batch)
            timeout python3 bench.py --config configs/gpu-batch-640x480.yaml --model "$MODEL" --image "$IMAGE" --out results \
                "${SWEEP_ARGS[@]}" 2>&1 | tail -25 ;;
        threads)
            timeout python3 bench.py --config configs/sweep-threads-16.yaml --model "$MODEL" --out results \
                "${SWEEP_ARGS[@]}" 2>&1 | tail -25 ;;
    esac
    new=$(comm -13 <(echo "$before") <(ls results))
    [ -n "$new" ] && (cd results && tar czf "$OUT/$step.tgz" --exclude=.work $new)
done
ls -la "$OUT"
