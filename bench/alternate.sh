#!/usr/bin/env bash
# PyTorch f32 eager against apl on this CPU, alternating (torch, apl f32, apl bf16; again) so that
# a noisy machine hits every program alike; then each bench's median over the rounds and the
# ratios, one row per round and the medians (the issue-26 table). With TORCH_BF16=1 (the default)
# each round also runs the same peer script under torch.autocast("cpu", bfloat16), PyTorch's own
# bf16 products (oneDNN, AMX where the CPU has it), and apl's bf16 column gets a ratio to it.
#
#   PEERS_PY=/work/peers/venv/bin/python bash bench/alternate.sh
#
# Environment:
#   PEERS      the peer scripts' directory                        [../shared/peers]
#   PEERS_PY   a Python with torch + transformers                  [python3]
#   APL_BIN    the apl binary                                      [target/release/apl]
#   ROUNDS     alternations                                        [3]
#   BENCHES    apl's and torch_cpu.py's bench names                [sample_b32,score,dpo]
#   PRODUCTS   apl's product precisions, each a column             [f32,bf16]
#   TORCH_BF16 also PyTorch under bf16 autocast (1 or 0)           [1]
#   OUT        results directory                                   [target/bench/alternate-<time>]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
peers="${PEERS:-$root/../shared/peers}"
py="${PEERS_PY:-python3}"
apl="${APL_BIN:-$root/target/release/apl}"
rounds="${ROUNDS:-3}"
benches="${BENCHES:-sample_b32,score,dpo}"
products="${PRODUCTS:-f32,bf16}"
torch_bf16="${TORCH_BF16:-1}"
out="${OUT:-$root/target/bench/alternate-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
[ -x "$apl" ] || { echo "alternate.sh: no apl binary at $apl (cargo build --release -p apl-server)" >&2; exit 1; }
log() { echo "[alternate $(date +%T)] $*" >&2; }
for r in $(seq "$rounds"); do
  log "round $r: PyTorch f32 eager, 2 threads"
  "$py" "$peers/torch_cpu.py" --attn eager --threads 2 --benches "$benches" --reps 2 --heavy-reps 2 \
    --random-init --json "$out/torch-$r.json" >"$out/torch-$r.txt"
  if [ "$torch_bf16" = 1 ]; then
    log "round $r: PyTorch bf16 autocast, 2 threads"
    # The peer script as it is, run with autocast entered first (sys.argv: the script, its args).
    "$py" -c 'import runpy, sys, torch
torch.autocast("cpu", dtype=torch.bfloat16).__enter__()
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")' "$peers/torch_cpu.py" --attn eager --threads 2 \
      --benches "$benches" --reps 2 --heavy-reps 2 --random-init --json "$out/torch-bf16-$r.json" \
      >"$out/torch-bf16-$r.txt"
  fi
  for p in ${products//,/ }; do
    log "round $r: apl, $p products"
    "$apl" bench --benches "$benches" --reps 2 --warmup 1 --products "$p" --json "$out/apl-$p-$r.json" \
      >"$out/apl-$p-$r.txt" 2>&1
    grep -E "^  |bf16 products against" "$out/apl-$p-$r.txt" >&2 || true
  done
done
"$py" - "$out" "$rounds" "$products" "$torch_bf16" <<'PY'
import json, statistics, sys
out, rounds, products, with_bf16 = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4] == "1"
def figures(path, apl):
    d = json.load(open(path))
    rows = d["models"][0]["results"] if apl else d["results"]
    def key(name):
        if name == "sample_b32":
            return name
        if name.startswith("score_"):
            return "score"
        if name.startswith("dpo_") and "cached" not in name:
            return "dpo"
    return {key(r["bench"]): r["median"] for r in rows if key(r["bench"])}
R = range(1, rounds + 1)
torch = [figures(f"{out}/torch-{r}.json", False) for r in R]
torch16 = [figures(f"{out}/torch-bf16-{r}.json", False) for r in R] if with_bf16 else None
apl = {p: [figures(f"{out}/apl-{p}-{r}.json", True) for r in R] for p in products}
units = {"sample_b32": "tok/s", "score": "seq/s", "dpo": "pairs/s"}
med = statistics.median
# Columns: PyTorch f32 [, PyTorch bf16], then per apl precision its figure and its ratio to
# PyTorch f32 (and, for bf16 when measured, to PyTorch bf16).
def row(b, r):
    cells = [f"{torch[r][b]:.2f}"] + ([f"{torch16[r][b]:.2f}"] if torch16 else [])
    for p in products:
        cells += [f"{apl[p][r][b]:.2f}", f"{apl[p][r][b] / torch[r][b]:.2f}x"]
        if torch16 and p == "bf16":
            cells.append(f"{apl[p][r][b] / torch16[r][b]:.2f}x")
    return cells
def medians(b):
    cells = [f"**{med([x[b] for x in torch]):.2f}**"]
    if torch16:
        cells.append(f"**{med([x[b] for x in torch16]):.2f}**")
    for p in products:
        cells += [f"**{med([x[b] for x in apl[p]]):.2f}**",
                  f"**{med([apl[p][r][b] / torch[r][b] for r in range(rounds)]):.2f}x**"]
        if torch16 and p == "bf16":
            cells.append(f"**{med([apl[p][r][b] / torch16[r][b] for r in range(rounds)]):.2f}x**")
    return cells
head = ["bench", "round", "PyTorch f32"] + (["PyTorch bf16 autocast"] if torch16 else [])
for p in products:
    head += [f"apl {p}", "ratio"] + (["ratio to PyTorch bf16"] if torch16 and p == "bf16" else [])
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for b in units:
    if b not in torch[0]:
        continue
    for r in range(rounds):
        print(f"| {b} ({units[b]}) | {r + 1} | " + " | ".join(row(b, r)) + " |")
    print(f"| {b} ({units[b]}) | median | " + " | ".join(medians(b)) + " |")
PY
