#!/usr/bin/env bash
# The demo, from a fresh clone: install, prepare the model and data, run the demo sweep, print the results.
# On a CPU this is a smoke run of the real pipeline (about 10 minutes on 2 cores); a real sweep needs a GPU.
# Extra arguments go to `cpt-harness sweep`, e.g. `bash scripts/demo.sh --n-trials 6`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/cpt-harness sweep sweeps/demo.yaml "$@"
