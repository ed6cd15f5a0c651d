#!/usr/bin/env bash
# The test command of the README and of CI: installs what the tests need, lints, runs the default suite.
# Long suites (fault matrix, load, benchmarks) have their own commands; see README.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
