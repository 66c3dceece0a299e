#!/usr/bin/env bash
# Set up and start the service on this machine: CPU config by default, any Serve config as the first argument.
#   scripts/serve.sh                     # configs/cpu.yaml on http://localhost:8000
#   scripts/serve.sh serve_config.yaml   # the NVIDIA L4 config
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-configs/cpu.yaml}"
scripts/setup.sh cpu
. .venv/bin/activate
# Fetch and verify the three checkpoints first (progress bars here, not buried in replica logs). Offline, this
# prints which file to put where; see README "Weights".
bgserve-weights fetch
exec serve run "$config"
