#!/usr/bin/env bash
# Side-by-side throughput: this project's `apl bench` and the peer scripts, one after another in
# one run on the same machine (never in parallel), so that the ratios hold. Prints apl's table with
# each peer's figure and the ratio beside it, and writes everything to $OUT/compare.json.
#
#   bash bench/compare.sh cpu    # this CPU: SmolLM2-135M (bundled GGUF, f32) vs PyTorch f32 eager
#                                # (2 threads, same weights) and llama.cpp (the GGUF as shipped, Q4_1)
#   bash bench/compare.sh gpu    # a CUDA machine: the four shapes in bf16 vs HF transformers bf16
#                                # eager and with its static KV cache (torch_anchor*.py)
#
# Environment:
#   PEERS     the peer scripts' directory            [../shared/peers]
#   PEERS_PY  a Python with torch + transformers (+ llama_cpp for cpu)   [python3]
#   APL_BIN   the apl binary (a --features cuda build for gpu)          [target/release/apl]
#   MODELS    apl's models, comma-separated          [cpu: default; gpu: the four shapes]
#   REPS      repetitions per bench                  [3]
#   OUT       results directory                      [target/bench/<mode>-<time>]
# The CPU peers need the GGUF (APL_CACHE_DIR or `apl assets`); torch reads it converted to an HF
# directory by `apl convert`, done here once.
set -euo pipefail
mode="${1:-cpu}"
root="$(cd "$(dirname "$0")/.." && pwd)"
peers="${PEERS:-$root/../shared/peers}"
py="${PEERS_PY:-python3}"
apl="${APL_BIN:-$root/target/release/apl}"
reps="${REPS:-3}"
out="${OUT:-$root/target/bench/$mode-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
[ -x "$apl" ] || { echo "compare.sh: no apl binary at $apl (cargo build --release -p apl-server)" >&2; exit 1; }
[ -d "$peers" ] || { echo "compare.sh: no peer scripts at $peers (set PEERS)" >&2; exit 1; }
log() { echo "[compare $(date +%T)] $*" >&2; }

case "$mode" in
  cpu)
    gguf="$("$apl" assets | head -1)"
    hf="$out/../smollm2-hf"
    [ -f "$hf/model.safetensors" ] || { log "converting $gguf for PyTorch"; "$apl" convert --model "$gguf" --out "$hf"; }
    log "llama.cpp"
    SMOLLM2_GGUF="$gguf" "$py" "$peers/llamacpp_cpu.py" --batched --reps "$reps" --json "$out/llamacpp_cpu.json" \
      > "$out/llamacpp_cpu.txt"
    log "PyTorch f32 eager, 2 threads"
    "$py" "$peers/torch_cpu.py" --attn eager --threads 2 --hf-dir "$hf" --reps "$reps" --heavy-reps "$reps" \
      --json "$out/torch_cpu_eager.json" > "$out/torch_cpu_eager.txt"
    log "apl"
    "$apl" bench --models "${MODELS:-default}" --reps "$reps" --decode-weights f16 \
      --peers "$out/llamacpp_cpu.json,$out/torch_cpu_eager.json" --json "$out/compare.json" | tee "$out/compare.md"
    ;;
  gpu)
    log "HF transformers, bf16 eager (torch_anchor.py)"
    OUT="$out" "$py" "$peers/torch_anchor.py" > "$out/torch_anchor.txt"
    log "HF transformers, static KV cache (torch_anchor3.py)"
    OUT="$out" "$py" "$peers/torch_anchor3.py" > "$out/torch_anchor3.txt"
    log "apl on cuda:0, bf16"
    "$apl" bench --device "${APL_DEVICE:-cuda:0}" --dtype "${APL_DTYPE:-bf16}" \
      --models "${MODELS:-random:gpt2,random:gpt2-large,random:pythia-1.4b,random:smollm2-135m}" \
      --benches sample_b32,score,dpo --reps "$reps" \
      --peers "$out/torch_anchor.json,$out/torch_anchor3.json" --json "$out/compare.json" | tee "$out/compare.md"
    ;;
  *)
    echo "usage: bash bench/compare.sh cpu|gpu" >&2
    exit 2
    ;;
esac
log "results in $out"
