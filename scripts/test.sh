#!/usr/bin/env bash
# The test command: installs into .venv if needed, lints, runs the fast test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow` for the long experiments).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
.venv/bin/ruff check src tests benchmarks examples docs
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "no tests were collected" >&2
    exit 0
fi
exit "$rc"
