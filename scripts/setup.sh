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
# onnxruntime and onnxruntime-gpu install the same module: one replaces the other (ONNX Runtime's own advice),
# so a .venv switched between gpu and cpu (or dev) is set up again for the other one next time. Both go first
# (removing one deletes files the other shares), then the extra puts its own back.
case "$extras" in
  gpu) installed="gpu" other="onnxruntime" unstamp="cpu|dev" ;;
  dev) installed="dev cpu" other="onnxruntime-gpu" unstamp="gpu" ;;
  cpu) installed="cpu" other="onnxruntime-gpu" unstamp="gpu" ;;
  *) installed="$extras" other="" unstamp="-" ;;
esac
if [ -n "$other" ] && python -m pip show -q "$other" >/dev/null 2>&1; then
  python -m pip uninstall -q -y onnxruntime onnxruntime-gpu
fi
python -m pip install -q -e ".[${extras}]"
# transparent-background requires opencv-python, the desktop build, which needs libGL and GLib; we require the
# headless build. Both write the same cv2/ files, and whichever pip installs last wins: a server without libGL then
# fails at `import cv2`. Keep the headless one (pip check will name opencv-python as missing: nothing imports it).
if python -m pip show -q opencv-python >/dev/null 2>&1; then
  headless="$(python -c 'from importlib.metadata import version; print(version("opencv-python-headless"))')"
  python -m pip uninstall -q -y opencv-python
  python -m pip install -q --no-deps --force-reinstall "opencv-python-headless==$headless"
fi
# pymatting's kernels (numba, cached beside its code): compiled here, once, rather than in the service's first start,
# whose readiness waits for them (~1 min on 2 cores, while the models load beside it).
echo "compiling pymatting's kernels for rgba's edge step (once, about a minute)"
python -c "from serve_app.effects import warm_up_matting; warm_up_matting()"
{ grep -s "^$sha " "$stamp" | grep -Ev " ($unstamp)\$" || true; for extra in $installed; do echo "$sha $extra"; done; } \
  | sort -u > "$stamp.new"
mv "$stamp.new" "$stamp"
