#!/usr/bin/env bash
# Create .venv-caffe: real pycaffe (BVLC Caffe 1.0, kendryte-caffe wheels exist for cp36-cp39 only)
# plus what the benchmark worker imports there. Idempotent: a complete env is checked and left alone.
#   scripts/setup_caffe.sh            # uses ~/.pyenv/versions/3.9.18/bin/python
#   CAFFE_BASE_PYTHON=/path/python3.9 scripts/setup_caffe.sh   # another 3.6-3.9 interpreter
#   RETINABENCH_CAFFE_VENV=DIR scripts/setup_caffe.sh          # elsewhere; then set RETINABENCH_CAFFE_PYTHON=DIR/bin/python
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RETINABENCH_CAFFE_VENV:-$ROOT/.venv-caffe}"
BASE="${CAFFE_BASE_PYTHON:-$HOME/.pyenv/versions/3.9.18/bin/python}"
# protobuf >= 4 and numpy 2 break pycaffe (so: the last 3.x and 1.x); opencv-python-headless is the main
# env's (>= 4.12 wants numpy 2). PyYAML 6.0.4 (the main env's) has no cp39 wheel.
# onnx reads an ONNX model into our graph before it is converted to Caffe (1.17 accepts protobuf 3.20).
# psutil: the worker reads what other programs take of the CPU around each chunk (retinabench.harness.cpu_load).
PACKAGES=(kendryte-caffe==1.0.0.20210829 "numpy==1.26.4" "protobuf==3.20.3" "PyYAML==6.0.2" "opencv-python-headless==4.10.0.84" "onnx==1.17.0" "psutil==7.2.2")
CHECK='import caffe, numpy, yaml, cv2, onnx, google.protobuf, psutil; assert numpy.__version__ < "2"'

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
    echo "setup_caffe: $VENV is ready ($("$VENV/bin/python" -c 'import caffe, cv2; print("caffe", caffe.__version__, "opencv", cv2.__version__)' 2>/dev/null))"
    exit 0
fi
if [ ! -x "$BASE" ]; then
    echo "setup_caffe: Python 3.9 not found at $BASE (install it with 'pyenv install 3.9.18' or set CAFFE_BASE_PYTHON)" >&2
    exit 1
fi
[ -x "$VENV/bin/python" ] || "$BASE" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PACKAGES[@]}"
"$VENV/bin/python" -c "$CHECK" || { echo "setup_caffe: $VENV was created but 'import caffe' fails" >&2; exit 1; }
echo "setup_caffe: $VENV ready ($("$VENV/bin/python" -c 'import caffe, cv2; print("caffe", caffe.__version__, "opencv", cv2.__version__)' 2>/dev/null))"
