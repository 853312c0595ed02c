#!/usr/bin/env bash
# Install cpt-harness into .venv (or $VENV): torch first and alone, so pip never pulls a multi-GB CUDA build
# onto a CPU machine, then the package with the versions the committed results were measured with
# (constraints.txt; CONSTRAINTS= for none). Safe to run again (it only adds what is missing). Extras as arguments:
# `bash scripts/install.sh test`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "cpt-harness needs Python 3.11 or newer ($PYTHON is $("$PYTHON" --version 2>&1))" >&2; exit 2; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
# On a CPU-only machine elsewhere, PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu gives the CPU wheel.
"$VENV/bin/python" -c 'import torch' 2>/dev/null || pip install "torch==${TORCH_VERSION:-2.13.0}"
# Pin the torch now installed, so that no dependency (unsloth's torchvision, say) swaps it for another build.
pin=$(mktemp); trap 'rm -f "$pin"' EXIT
"$VENV/bin/python" -W ignore -c 'import torch; print("torch==" + torch.__version__)' > "$pin" 2>/dev/null
extras=$(IFS=,; echo "$*")
CONSTRAINTS=${CONSTRAINTS-constraints.txt}
pip install -c "$pin" ${CONSTRAINTS:+-c "$CONSTRAINTS"} -e ".${extras:+[$extras]}"
