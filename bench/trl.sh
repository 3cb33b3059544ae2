#!/usr/bin/env bash
# Training on TRL (not a test; the issue-23 figures): the same small experiment twice on the
# tiny llama fixture (generic prompts, the length oracle, LoRA rank 4 on q_proj and v_proj,
# reset each phase), once with this engine's DPO and once with `trl dpo` run by
# --trainer-command, which exports each phase's pairs as TRL JSONL, streams TRL's log into the
# phase's training curve and takes the PEFT adapter TRL writes as the phase's policy (which apl
# then samples and evaluates). Phase 1 trains both on the same pairs (the untrained policy
# acquired them); its loss curves are printed side by side.
#
#   PEERS_CACHE=/work/peers bash bench/trl.sh     # needs the peers' venv (torch, transformers, TRL, peft)
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS_CACHE="${PEERS_CACHE:-./.peers-cache}"
venv="$PEERS_CACHE/venv"
[ -x "$venv/bin/trl" ] || { echo "needs TRL in the peers' venv: PEERS_CACHE=$PEERS_CACHE bash ../shared/peers/setup.sh"; exit 1; }
"$venv/bin/python" -c 'import peft' 2>/dev/null || "$venv/bin/pip" install -q peft
cargo build --release -q -p apl-server --bin apl
apl="${CARGO_TARGET_DIR:-target}/release/apl"
work=${OUT:-$(mktemp -d)}
mkdir -p "$work"
python3 - "$work/prompts.jsonl" <<'PY'
import json, sys
words = ["the", "film", "was", "great", "boring", "acting", "story", "and", "I", "loved", "it", "plot"]
with open(sys.argv[1], "w") as f:
    for i in range(600):
        f.write(json.dumps({"prompt": " ".join(words[(i // 12**k) % 12] for k in range(4))}) + "\n")
PY
args=(--model engine/tests/fixtures/llama --task generic --data "$work/prompts.jsonl" --oracle length
      --acquisition random --schedule 64,128 --seeds 1 --eval-prompts 128 --lora-rank 4 --lora-alpha 8
      --lora-targets q_proj,v_proj --lr 1e-3 --epochs 4 --pairs-per-step 16 --beta 0.1)
trl="$venv/bin/trl dpo --dataset_name {data} --model_name_or_path {base} --output_dir {out} --use_peft
  --lora_r {rank} --lora_alpha {alpha} --lora_dropout 0 --lora_target_modules {targets} --beta {beta}
  --learning_rate {lr} --lr_scheduler_type constant --num_train_epochs {epochs}
  --per_device_train_batch_size {batch} --seed {seed} --logging_steps 1 --disable_tqdm true
  --report_to none --use_cpu true --bf16 false --save_strategy no"
echo "== this engine's DPO"
/usr/bin/time -f "%e s" "$apl" experiment "${args[@]}" --out "$work/apl" 2>&1 | grep -E "^[0-9.]+ s$|win" | tail -n 4
echo "== TRL $("$venv/bin/python" -c 'import trl; print(trl.__version__)') through --trainer-command"
/usr/bin/time -f "%e s" "$apl" experiment "${args[@]}" --out "$work/trl" --trainer-command "$trl" 2>&1 \
  | grep -E "^[0-9.]+ s$|win" | tail -n 4
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
for phase in (1, 2):
    a = json.load(open(f"{w}/apl/runs/random-seed0/phase-{phase}.json"))
    t = json.load(open(f"{w}/trl/runs/random-seed0/phase-{phase}.json"))
    print(f"phase {phase} ({a['labels']} pairs{', the same for both' if phase == 1 else ''}): win-rate apl {a['win_rate']['win_rate']:.3f}, TRL {t['win_rate']['win_rate']:.3f}; training s apl {a['timings']['train_steps']:.1f}, TRL {t['train']['seconds']:.1f}")
    for name, r in (("apl", a), ("TRL", t)):
        c = r["train"]["loss_curve"]
        print(f"  {name} loss by step ({len(c)}): " + " ".join(f"{x:.4f}" for x in c))
        print(f"  {name} loss by epoch: " + " ".join(f"{x:.4f}" for x in r["train"]["epoch_losses"]))
PY
