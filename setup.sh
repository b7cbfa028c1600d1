#!/usr/bin/env bash
# Set up a virtual environment in .venv with the CPU build of torch installed FIRST, so no
# dependency can pull a multi-GB CUDA build, then the library with every extra.
# Usage: ./setup.sh            (idempotent; re-running only installs what is missing)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
TORCH_SPEC=${IES_TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "$TORCH_SPEC"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
# Fashion-MNIST comes from Debian's package (IDX files in /usr/share/datasets/fashion-mnist).
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
    || echo "setup.sh: could not install dataset-fashion-mnist; Fashion-MNIST runs will ask for --data-dir" >&2
fi
.venv/bin/python -c "import torch, ies; print(f'ies {ies.__version__} ready (torch {torch.__version__})')"
