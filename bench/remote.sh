#!/usr/bin/env bash
# The remote model backend against real servers on this CPU (not a test; the issue-23 figures):
#  1. llama-cpp-python's server on the bundled SmolLM2 GGUF (--logits_all true): its sampling
#     against this engine's scoring of the same tokens (quantisation noise: llama.cpp computes
#     with the Q4_1 weights, this engine with them dequantised to f32), and the refusal of its
#     echoed prompt log-probs (one position late, llama-cpp-python #1983);
#  2. bench/hf_server.py (HF transformers, f32, eager) on SmolLM2 converted by `apl convert` and
#     on the tiny fixtures, through both of the client's protocols (vLLM's token ids and
#     prompt_logprobs; a text server's echo): every token against this engine's;
#  3. (PARTS=experiment) `apl experiment --preset imdb-protocol --seeds 1` with LoRA, sampling
#     and scoring on the HF server (the trained policy loaded there as apl's PEFT adapter, read
#     by `peft`), the baseline sampled on llama-cpp-python; the same experiment on this engine;
#     both summaries and per-stage times; then the last policy's adapter as PEFT computes it
#     against apl's merged policy, token by token.
#
#   bash bench/remote.sh            # needs the peers' venv: PEERS_CACHE=DIR bash ../shared/peers/setup.sh
#   PEERS_CACHE=/work/peers PARTS="agree experiment" bash bench/remote.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS_CACHE="${PEERS_CACHE:-./.peers-cache}"
py="$PEERS_CACHE/venv/bin/python"
gguf="$PEERS_CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -x "$py" ] && [ -f "$gguf" ] || { echo "needs the peers' venv and GGUF: PEERS_CACHE=$PEERS_CACHE bash ../shared/peers/setup.sh"; exit 1; }
cargo build --release -q -p apl-server --bin apl
apl="${CARGO_TARGET_DIR:-target}/release/apl"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
wait_for() { for _ in $(seq 120); do curl -sf "$1" >/dev/null && return 0; sleep 1; done; echo "no server at $1"; exit 1; }
check() { "$apl" remote "$@" 2>/dev/null; echo; }
parts="${PARTS:-agree}"
llama_server() {
  "$py" -m llama_cpp.server --model "$gguf" --logits_all true --host 127.0.0.1 --port 18088 --n_ctx 2048 \
    --n_threads "$(nproc)" --model_alias smollm2 >"$work/llama.log" 2>&1 &
  pids+=($!)
  wait_for http://127.0.0.1:18088/v1/models
}
hf_server() {  # model dir, served name
  "$py" bench/hf_server.py --model "$1" --port 18089 --name "$2" --threads "$(nproc)" >"$work/hf.log" 2>&1 &
  pids+=($!)
  wait_for http://127.0.0.1:18089/v1/models
}
stop() { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; pids=(); }
"$apl" convert --model "$gguf" --out "$work/smollm2" >/dev/null 2>&1

if [[ $parts == *agree* ]]; then
echo "== llama-cpp-python $("$py" -c 'import llama_cpp; print(llama_cpp.__version__)') on $(basename "$gguf")"
llama_server
check --base-url http://127.0.0.1:18088/v1 --served-model smollm2 --server llama_cpp_python --model "$gguf" \
  --prompts "${PROMPTS:-32}" --per-prompt 2 --tokens 16 --concurrency 1
stop

for m in "$work/smollm2" engine/tests/fixtures/llama engine/tests/fixtures/gpt2 engine/tests/fixtures/gpt_neox; do
  echo "== HF transformers $("$py" -c 'import transformers; print(transformers.__version__)') on $(basename "$m")"
  hf_server "$m" base
  for kind in vllm llama_cpp_python; do
    check --base-url http://127.0.0.1:18089/v1 --served-model base --server $kind --model "$m" \
      --prompts "${PROMPTS:-16}" --per-prompt 2 --tokens 16 --concurrency 2 --rows-per-request 16
  done
  stop
done
fi

if [[ $parts == *experiment* ]]; then
"$py" -c 'import peft' 2>/dev/null || "$PEERS_CACHE/venv/bin/pip" install -q peft
out=${OUT:-$work/experiments}
args=(--preset imdb-protocol --seeds 1 --acquisition random,certainty --lora-rank 8 --model "$work/smollm2")
echo "== imdb-protocol, LoRA rank 8, on this engine"
"$apl" experiment "${args[@]}" --out "$out/local" 2>"$work/local.log" | tail -n 25
echo "== the same on HF transformers (policy as apl's PEFT adapter), baseline sampled on llama-cpp-python"
llama_server
hf_server "$work/smollm2" smollm2
# These CPU servers compute one request at a time: one in flight, so none waits out its timeout.
echo '{"settings": {"backend": {"kind": "remote", "concurrency": 1}}}' >"$work/one-at-a-time.json"
"$apl" experiment "${args[@]}" --config "$work/one-at-a-time.json" --out "$out/remote" --remote --base-url http://127.0.0.1:18089/v1 \
  --served-model smollm2 --server vllm --reference-base-url http://127.0.0.1:18088/v1 \
  --reference-server llama_cpp_python 2>"$work/remote.log" | tail -n 25
for arm in local remote; do
  echo "-- $arm: seconds per stage, summed over phases and arms"
  "$py" - "$out/$arm" <<'PY'
import glob, json, sys, collections
t = collections.Counter()
for f in glob.glob(f"{sys.argv[1]}/runs/*/phase-*.json"):
    for k, v in json.load(open(f))["timings"].items():
        t[k] += v
print("  " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(t.items()) if v))
PY
done
echo "== the last certainty policy: PEFT in transformers against apl's merged policy"
run="$out/remote/runs/certainty-seed0"
"$apl" convert --run "$run" --out "$work/merged" >/dev/null 2>&1
adapter=$(ls -d "$run"/policy-phase-*.peft | sort | tail -n 1)
curl -sf http://127.0.0.1:18089/v1/load_lora_adapter -H 'content-type: application/json' \
  -d "{\"lora_name\": \"last\", \"lora_path\": \"$(realpath "$adapter")\"}" >/dev/null
check --base-url http://127.0.0.1:18089/v1 --served-model last --server vllm --model "$work/merged" \
  --prompts 16 --per-prompt 2 --tokens 16 --concurrency 2 --rows-per-request 16
stop
fi
