#!/usr/bin/env bash
# Create (or reuse) .venv and install bgserve with the given extras (default: cpu).
#   scripts/setup.sh            # to serve
#   scripts/setup.sh dev        # to test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-cpu}"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: these versions are the ones tested (on our build machines they come from local disk).
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".[${extras}]"
