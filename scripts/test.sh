#!/usr/bin/env bash
# Set up the dev environment, then lint, type-check and run the test suite (extra pytest arguments pass through).
#   scripts/test.sh                 # the default suite: unit, e2e and integration on a real local Ray
#   scripts/test.sh -m slow         # the slow checks
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
# The browser test (/docs renders offline) drives Debian's Chromium, and the monitoring test scrapes the service
# with a real Prometheus: install them where they are missing and we may.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v prometheus >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]} for the browser and monitoring tests (apt-get, a minute or two)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
. .venv/bin/activate
ruff format --check .
ruff check .
mypy
python -m pytest "$@"
