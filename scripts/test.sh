#!/usr/bin/env bash
# Set up the dev environment, then lint, type-check and run the test suite (extra pytest arguments pass through).
#   scripts/test.sh                 # the default suite: unit, e2e and integration on a real local Ray
#   scripts/test.sh -m slow         # the slow checks
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
# The browser test (/docs renders offline) drives Debian's Chromium: install it where it is missing and we may.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Chromium for the browser test (apt-get, about a minute)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
. .venv/bin/activate
ruff format --check .
ruff check .
mypy
python -m pytest "$@"
