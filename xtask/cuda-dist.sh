#!/usr/bin/env bash
# Builds the CUDA binary here (no GPU needed) and packs it for a GPU machine that has the driver and
# CUDA's libraries but no Rust toolchain: stripped and xz-compressed, small enough to travel with the
# working tree. `bench/gpu.sh` unpacks and runs it there.
#
#   bash xtask/cuda-dist.sh            # -> target/cuda-dist/apl.xz (+ the peers for bench/gpu.sh)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if ! command -v nvcc >/dev/null; then
  [ -f target/cuda-13.0/env.sh ] || bash xtask/cuda-toolchain.sh
  # shellcheck disable=SC1091
  source target/cuda-13.0/env.sh
fi
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
cargo build --release -p apl-server --features cuda --target-dir target/cuda
mkdir -p target/cuda-dist
strip -o target/cuda-dist/apl target/cuda/release/apl
xz -T2 -9 -c target/cuda-dist/apl > target/cuda-dist/apl.xz
rm target/cuda-dist/apl
# The binary links cuRAND, which PyTorch's CUDA 13 wheels (what a GPU machine may have instead of a
# CUDA install) do not bring: pack this toolchain's copy too (127 MB, 43 MB packed; with the binary
# it stays inside a 64 MiB carry). bench/gpu.sh uses it only where the machine has none.
curand=""
for dir in target/cuda-13.0/unpacked/nvidia/cu13/lib "${CUDA_HOME:-/usr/local/cuda}/lib64"; do
  [ -f "$dir/libcurand.so.10" ] && { curand="$dir/libcurand.so.10"; break; }
done
if [ -n "$curand" ]; then
  xz -T2 -6 -c "$curand" > target/cuda-dist/libcurand.so.10.xz
else
  echo "cuda-dist: no libcurand.so.10 found to pack; the GPU machine must have one" >&2
fi
# The peer scripts bench/gpu.sh runs beside apl (they stay outside the repository's history).
[ -d ../shared/peers ] && rm -rf .peers && cp -r ../shared/peers .peers
ls -la target/cuda-dist >&2
echo "cuda-dist: carry target/cuda-dist (and .peers) to the GPU machine, then: bash bench/gpu.sh" >&2
