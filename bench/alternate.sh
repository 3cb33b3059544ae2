#!/usr/bin/env bash
# PyTorch f32 eager against apl on this CPU, alternating (torch, apl f32, apl bf16; again) so that
# a noisy machine hits every program alike; then each bench's median over the rounds and the
# ratios, one row per round and the medians (the issue-26 table).
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
#   OUT        results directory                                   [target/bench/alternate-<time>]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
peers="${PEERS:-$root/../shared/peers}"
py="${PEERS_PY:-python3}"
apl="${APL_BIN:-$root/target/release/apl}"
rounds="${ROUNDS:-3}"
benches="${BENCHES:-sample_b32,score,dpo}"
products="${PRODUCTS:-f32,bf16}"
out="${OUT:-$root/target/bench/alternate-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
[ -x "$apl" ] || { echo "alternate.sh: no apl binary at $apl (cargo build --release -p apl-server)" >&2; exit 1; }
log() { echo "[alternate $(date +%T)] $*" >&2; }
for r in $(seq "$rounds"); do
  log "round $r: PyTorch f32 eager, 2 threads"
  "$py" "$peers/torch_cpu.py" --attn eager --threads 2 --benches "$benches" --reps 2 --heavy-reps 2 \
    --random-init --json "$out/torch-$r.json" >"$out/torch-$r.txt"
  for p in ${products//,/ }; do
    log "round $r: apl, $p products"
    "$apl" bench --benches "$benches" --reps 2 --warmup 1 --products "$p" --json "$out/apl-$p-$r.json" \
      >"$out/apl-$p-$r.txt" 2>&1
    grep -E "^  |bf16 products against" "$out/apl-$p-$r.txt" >&2 || true
  done
done
"$py" - "$out" "$rounds" "$products" <<'PY'
import json, statistics, sys
out, rounds, products = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
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
torch = [figures(f"{out}/torch-{r}.json", False) for r in range(1, rounds + 1)]
apl = {p: [figures(f"{out}/apl-{p}-{r}.json", True) for r in range(1, rounds + 1)] for p in products}
units = {"sample_b32": "tok/s", "score": "seq/s", "dpo": "pairs/s"}
head = "| bench | round | PyTorch f32 | " + " | ".join(f"apl {p} | ratio" for p in products) + " |"
print(head)
print("|" + "---|" * (3 + 2 * len(products)))
for b in units:
    if b not in torch[0]:
        continue
    for r in range(rounds):
        cells = [f"{apl[p][r][b]:.2f} | {apl[p][r][b] / torch[r][b]:.2f}x" for p in products]
        print(f"| {b} ({units[b]}) | {r + 1} | {torch[r][b]:.2f} | " + " | ".join(cells) + " |")
    med = lambda xs: statistics.median(xs)
    t = med([x[b] for x in torch])
    cells = []
    for p in products:
        a = med([x[b] for x in apl[p]])
        ratio = med([apl[p][r][b] / torch[r][b] for r in range(rounds)])
        cells.append(f"**{a:.2f}** | **{ratio:.2f}x**")
    print(f"| {b} ({units[b]}) | median | **{t:.2f}** | " + " | ".join(cells) + " |")
PY
