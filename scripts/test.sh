#!/usr/bin/env bash
# Set up the dev environment, then lint, type-check and run the test suite (extra pytest arguments pass through).
#   scripts/test.sh                 # the default suite: unit, e2e and integration on a real local Ray
#   scripts/test.sh -m slow         # the slow checks
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
. .venv/bin/activate
ruff format --check .
ruff check .
mypy
python -m pytest "$@"
