#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, lints, type-checks, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

echo "== ruff"
python3 -m ruff check abflow serving components pipelines tests bench
echo "== mypy --strict (abflow.serving, abflow.components)"
bash scripts/typecheck.sh
echo "== pytest (2 workers; a test file's tests stay on one worker, so module fixtures are built once)"
python3 -m pytest -n 2 --dist loadfile "$@"
