#!/usr/bin/env bash
# Set up and start the service on this machine, in the foreground (Ctrl-C stops it):
#   scripts/serve.sh                     # configs/cpu.yaml on http://localhost:8000: fetches the checkpoints it needs
#   scripts/serve.sh serve_config.yaml   # the NVIDIA L4 config (or any Serve config of yours)
#   scripts/serve.sh --try               # no checkpoint needed (offline too): the fast tier on untrained weights
#   scripts/serve.sh my.yaml --min-drain-s 10   # options after the config are the runner's (deployments/run.py)
# It installs the gpu extra (NVML's GPU metrics, onnxruntime-gpu) for a config that asks for GPUs, else cpu;
#   BGSERVE_EXTRAS=cpu scripts/serve.sh my.yaml   # says which, whatever the config
set -euo pipefail
extras_for() {  # gpu where a deployment asks for num_gpus over 0 (a line not commented out), else cpu
  if grep -Eq '^[^#]*num_gpus:[[:space:]]*0*([1-9]|\.[0-9]*[1-9])' "$1"; then echo gpu; else echo cpu; fi
}
case "${1:-}" in
  --try) config=configs/try.yaml; shift ;;
  -h|--help) sed -n 2,8p "$0"; exit 0 ;;
  "" | -*)  # options only: the default config, and the options are the runner's (a config among them is a mistake)
    config=configs/cpu.yaml
    for arg in "$@"; do
      case "$arg" in *.yaml | *.yml) echo "the config goes first: scripts/serve.sh $arg [options]" >&2; exit 2 ;; esac
    done ;;
  *) config="$(realpath "$1")"; shift ;;  # a path from the caller's directory, before the cd below
esac
cd "$(dirname "$0")/.."
[ -f "$config" ] || { echo "no such config: $config" >&2; exit 1; }
scripts/setup.sh "${BGSERVE_EXTRAS:-$(extras_for "$config")}"
# A bad config or a busy port fails here (Serve itself would start beside the other service, sharing its port).
url="$(.venv/bin/python -m deployments.preflight "$config")"  # the config checked, and where it will answer
# The checkpoints this config downloads itself, fetched and verified first (progress bars here, not buried in
# replica logs). Offline, this prints which file to put where, and how to try the service without them.
if ! .venv/bin/bgserve-weights fetch --config "$config"; then
  echo >&2
  echo "Could not get the checkpoints $config needs (see above). To try the service without them:" >&2
  echo "  scripts/serve.sh --try" >&2
  exit 1
fi
echo "Starting $config: $url/docs once /readyz answers 200 (Ctrl-C stops the service)."
# A replica that failed its health checks is stopped at once, not drained for its graceful_shutdown_timeout_s.
export RAY_SERVE_FORCE_STOP_UNHEALTHY_REPLICAS=1
# CPU configs: configs/cpu.env's settings for a small box, each unless already set. GPU configs keep Serve's defaults.
case "$(realpath "$config")" in  # the path given, or the default, from the repository root (the cd above)
  "$PWD/configs/cpu.yaml" | "$PWD/configs/try.yaml")
    while IFS='=' read -r name value; do
      if [[ $name =~ ^[A-Z_][A-Z0-9_]*$ && -z ${!name:-} ]]; then export "$name=$value"; fi
    done <configs/cpu.env ;;
esac
# `serve run`, draining on Ctrl-C or SIGTERM: new requests get 503, those in flight are answered, then Serve stops.
# It starts Ray with the proxy guard (deployments/proxy_guard.py) in Serve's proxies: no client header lifts the
# server's timeouts, a request lost with a dying ingress replica gets a retriable 503, and the drain is its.
exec .venv/bin/python -m deployments.run "$config" "$@"
