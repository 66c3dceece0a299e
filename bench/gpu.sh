#!/usr/bin/env bash
# Every GPU measurement in one call of a lent GPU machine, most valuable first, each step under its own time
# limit so a short lease keeps what was measured. Results (JSON + logs) go to $OUT (default bench/results/gpu).
#
# That machine has PyTorch but not this project's other needs, and cannot download: prepare here, in the repo root,
#   python -m bench.test_weights_kit pack .gpucarry/test-weights     # the segmenting test weights in 15 MB
#   pip download --no-deps ... -d .whl <what transparent-background and pydantic need>   (docs/benchmarks.md#gpu)
# then run `bash bench/gpu.sh` there with .whl and .gpucarry carried. On a GPU box with `pip install -e .[gpu]`
# done, run it as it is: the wheel step is skipped when there are no wheels.
# Rehearse it here before a lease: `DEVICE=cpu BASE_SIZE=128 bash bench/gpu.sh` runs every step with the same
# arguments on the CPU at a small model size (fp16 fails in its rows there; everything else must report).
set -u
OUT=${OUT:-bench/results/gpu}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 NO_ALBUMENTATIONS_UPDATE=1  # albumentations phones home
PY=${PYTHON:-python3}
started=$SECONDS
step() { echo "=== $(date +%T) +$((SECONDS - started))s: $*"; }

if compgen -G ".whl/*.whl" >/dev/null; then
  step "installing the carried wheels"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
export BGSERVE_TEST_CACHE=${BGSERVE_TEST_CACHE:-/tmp/bgserve-test-weights}
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
$PY -c "import torch, pydantic, transparent_background; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" \
  || exit 1

if [ "${WEIGHTS:-}" = untrained ]; then  # timings and memory only (the cost is the same; parity means nothing)
  step "untrained weights: timings only (saved as a checkpoint so that Remover loads them too)"
  WEIGHTS=/tmp/untrained.pth
  $PY -c "import torch; from serve_app.runtimes.inspyrenet import load_model; from serve_app.weights import ResolvedWeights
torch.save(load_model(ResolvedWeights(None, 'untrained'), 384).state_dict(), '$WEIGHTS')" || exit 1
else
  step "test weights"
  if [ -d .gpucarry/test-weights ]; then  # else (another torch seeds the backbone differently) trained here on the CPUs
    $PY -m bench.test_weights_kit unpack .gpucarry/test-weights || echo "training the test weights on this machine"
  fi
  WEIGHTS=$($PY -c "from tests.support.segmenting_weights import segmenting_checkpoint as s; print(*s())" | tail -1) || exit 1
  echo "weights and held-out IoU: $WEIGHTS"
  WEIGHTS=${WEIGHTS%% *}
  [ -f "$WEIGHTS" ] || exit 1
fi

bench() {  # name, time limit (0: skip), bench.runtimes arguments...
  local name=$1 limit=$2
  shift 2
  [ "$limit" = 0 ] && return
  step "bench.runtimes $name: $*"
  timeout "$limit" $PY -m bench.runtimes --device "$DEVICE" --weights "$WEIGHTS" --out "/tmp/gpu-$name" \
    ${BASE_SIZE:+--base-size "$BASE_SIZE"} "$@"
  cp "/tmp/gpu-$name/runtimes.json" "$OUT/$name.json" 2>/dev/null
}

# Limits from the first lease (H200): ~15-20 s per worker process (imports, model build), the test weights trained
# there in ~100 s; a 10-minute call fits setup + fast + balanced + quality, then whatever the tests get.
# Each tier's runtimes can be narrowed (FAST_RUNTIMES=...) to what an earlier lease left unmeasured.
RUNTIMES=eager,fp16,bf16,torchscript
bench fast "${FAST_LIMIT:-150}" --tiers fast --runtimes "${FAST_RUNTIMES:-$RUNTIMES}" --batches 1,2,4,8,16,32 --repeats 3
bench balanced "${BALANCED_LIMIT:-170}" --tiers balanced --runtimes "${BALANCED_RUNTIMES:-$RUNTIMES}" \
  --batches 1,2,4,8,16 --repeats "${BALANCED_REPEATS:-3}"
bench quality "${QUALITY_LIMIT:-90}" --tiers quality --runtimes "${QUALITY_RUNTIMES:-eager,fp16,bf16}" --batches 1,2,4,8 \
  --repeats 2
if [ "${PYTEST_LIMIT:-120}" != 0 ]; then
  step "pytest -m gpu"
  timeout "${PYTEST_LIMIT:-120}" $PY -m pytest -m gpu -p no:cacheprovider -v tests/unit/test_runtime_cuda.py \
    tests/unit/test_runtimes.py 2>&1 | tee "$OUT/pytest-gpu.txt"
fi
bench compile "${COMPILE_LIMIT:-120}" --tiers fast --runtimes eager,compile --batches 1,8 --repeats 3 --no-remover
step "done"
