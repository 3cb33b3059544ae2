#!/usr/bin/env bash
# Everything a GPU session runs, as one command on the GPU machine (which has the driver, CUDA's
# libraries and PyTorch, but no Rust toolchain): the CUDA build's numerics, then the benchmark
# side by side with HF transformers. Sized for the 15 minutes of device time such a session has.
#
#   bash xtask/cuda-dist.sh           # here: builds the CUDA binary, writes target/cuda-dist/apl.xz
#                                     # and copies the peer scripts to .peers (both ignored by git)
#   bash bench/gpu.sh                 # there, from the repository root, carrying target/cuda-dist
#                                     # and .peers
#
# Environment: OUT (results, default target/gpu-run), APL_XZ (the packed binary), SKIP_CHECK=1,
# SKIP_BENCH=1, REPS (default 3), MODELS (compare.sh's default: the four shapes).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-$root/target/gpu-run}"
xzbin="${APL_XZ:-$root/target/cuda-dist/apl.xz}"
mkdir -p "$out"
log() { echo "[gpu $(date +%T)] $*" >&2; }

[ -f "$xzbin" ] || { echo "gpu.sh: no packed CUDA binary at $xzbin (bash xtask/cuda-dist.sh)" >&2; exit 1; }
apl=/tmp/apl-cuda
xz -dc "$xzbin" > "$apl" && chmod +x "$apl"

# CUDA 13's cuBLAS, cuRAND, NVRTC and runtime: from a CUDA install or PyTorch's wheels.
# PyTorch's CUDA wheels put them under site-packages/nvidia/.
sitedirs=$("${PEERS_PY:-python3}" -c 'import site, sys; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null || true)
libdirs=""
for lib in libcublas.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
  # shellcheck disable=SC2086
  found=$(find /usr/local/cuda* /opt /usr/lib /usr/local/lib $sitedirs -name "$lib" 2>/dev/null | head -1)
  [ -n "$found" ] && libdirs="$libdirs:$(dirname "$found")"
done
# cuRAND: PyTorch's wheels lack it; xtask/cuda-dist.sh packs one beside the binary.
have_curand=""
for dir in ${libdirs//:/ }; do [ -f "$dir/libcurand.so.10" ] && have_curand=1; done
packed="$(dirname "$xzbin")/libcurand.so.10.xz"
if [ -z "$have_curand" ] && [ -f "$packed" ]; then
  mkdir -p /tmp/apl-cuda-lib && xz -dc "$packed" > /tmp/apl-cuda-lib/libcurand.so.10
  libdirs="$libdirs:/tmp/apl-cuda-lib"
  log "cuRAND from $packed"
fi
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
cat "$out/gpu.txt" >&2
ldd "$apl" | grep -E 'cu|nvrtc|not found' > "$out/ldd.txt"

status=0
if [ -z "${SKIP_CHECK:-}" ]; then
  for dtype in f32 bf16; do
    log "apl check, $dtype"
    "$apl" check --device cuda:0 --dtype "$dtype" --fixtures "$root/engine/tests/fixtures" \
      > "$out/check-$dtype.txt" 2>&1 || status=1
    tail -3 "$out/check-$dtype.txt" >&2
  done
fi
if [ -z "${SKIP_BENCH:-}" ]; then
  log "benchmarks: apl and HF transformers on the same card"
  peers="${PEERS:-$root/.peers}"
  APL_BIN="$apl" OUT="$out" REPS="${REPS:-3}" PEERS="$peers" PEERS_PY="${PEERS_PY:-python3}" bash "$root/bench/compare.sh" gpu \
    > "$out/compare.txt" 2>&1 || status=1
  tail -30 "$out/compare.txt" >&2
fi
log "results in $out"
exit $status
