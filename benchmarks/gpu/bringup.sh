#!/usr/bin/env bash
# GPU bring-up in one short run: install carried wheels, build aegaeon._C with CUDA, run the device tests,
# measure bandwidth, switch, swap, decode and a live node; results in $OUT (results.json, summary.txt).
#
#   bash benchmarks/gpu/bringup.sh                  # on a GPU machine (the device tool's run)
#   bash benchmarks/gpu/bringup.sh --device cpu     # the CPU dry run: every stage's code path, tiny model
#
# Wheels the GPU machine lacks travel in benchmarks/gpu/wheels/ (make them with fetch_wheels.sh here).
set -uo pipefail
cd "$(dirname "$0")/../.."
DEVICE=cuda
for arg in "$@"; do
  case "$arg" in
    --device) ;;
    cpu|cuda) DEVICE="$arg" ;;
    --device=*) DEVICE="${arg#--device=}" ;;
    *) echo "unknown argument $arg (use --device cpu|cuda)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
log() { echo "[bringup $(date +%T)] $*" | tee -a "$OUT/summary.txt" >&2; }

if [ "$DEVICE" = cuda ]; then
  if [ -d benchmarks/gpu/wheels ]; then
    log "stage wheels: installing from the carried benchmarks/gpu/wheels"
    "$PY" -m pip install -q --no-index --find-links benchmarks/gpu/wheels posix_ipc pyzmq msgpack fastapi \
      uvicorn tokenizers safetensors pyyaml jinja2 httpx pytest hypothesis click \
      >>"$OUT/pip.log" 2>&1 || log "stage wheels: FAILED (see pip.log); going on with what is installed"
  fi
  log "stage build: aegaeon._C with CUDA"
  ARCH=$("$PY" -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}.{n}')" 2>/dev/null)
  if ! AEGAEON_BUILD_CUDA=1 MAX_JOBS="$(nproc)" TORCH_CUDA_ARCH_LIST="${ARCH:-9.0}" \
      "$PY" -m pip install -q --no-build-isolation --no-deps -e . >>"$OUT/build.log" 2>&1; then
    log "stage build: FAILED (tail of build.log follows)"; tail -30 "$OUT/build.log" | tee -a "$OUT/summary.txt" >&2
    exit 1
  fi
fi
export AEGAEON_TEST_DEVICE="$DEVICE"
exec "$PY" benchmarks/gpu/bringup.py --device "$DEVICE" --out "$OUT"
