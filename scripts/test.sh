#!/usr/bin/env bash
# The test suite, from a fresh clone: install (with the test extra), then pytest. Arguments go to pytest.
# pytest exits 5 when it collects no tests, and that fails this script too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
exec .venv/bin/python -m pytest -q "$@"
