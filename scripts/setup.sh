#!/usr/bin/env bash
# Create (or reuse) .venv and install bgserve with the given extras (default: cpu).
#   scripts/setup.sh            # to serve
#   scripts/setup.sh dev        # to test
#   scripts/setup.sh gpu        # to serve on NVIDIA GPUs (adds onnxruntime-gpu)
# A .venv already set up from this pyproject.toml with these extras is left as it is (no network needed); dev
# includes cpu, so a .venv set up for the tests serves the CPU configs without a second install.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-cpu}"
stamp=".venv/.bgserve-setup"  # one line per extra installed from this pyproject: "<its sha256> <extra>"
sha="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && grep -qxF "$sha $extras" "$stamp"; then
  exit 0
fi
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: these versions are the ones tested (on our build machines they come from local disk).
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".[${extras}]"
case "$extras" in dev) installed="dev cpu" ;; *) installed="$extras" ;; esac
{ grep -s "^$sha " "$stamp" || true; for extra in $installed; do echo "$sha $extra"; done; } | sort -u > "$stamp.new"
mv "$stamp.new" "$stamp"
