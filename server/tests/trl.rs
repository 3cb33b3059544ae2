//! Training on an external trainer (`trainer_command`, TRL in practice): a stand-in trainer
//! script checks what it is given (the round's pairs as TRL JSONL, the placeholders filled as
//! separate words), logs steps the way transformers' Trainer does and writes a PEFT adapter
//! (the committed fixture's); the experiment takes its log as the phase's training curve and
//! the adapter as the phase's policy. A trainer that fails ends the phase with its log's end.

mod common;

use common::Quiet;

use apl::experiment::config::ExperimentConfig;
use apl::experiment::run_experiment;
use apl::experiment::setup::{JudgeEnv, Setup};
use apl_engine::model::{Model, sequence_logprobs};
use apl_engine::train::policy::Policy;
use apl_shared::Acquisition;
use candle_core::DType;

/// The stand-in trainer: `sh trainer.sh DATA OUT TARGETS...`.
const TRAINER: &str = r#"set -e
data=$1; out=$2; shift 2
rows=$(wc -l < "$data/train.jsonl")
grep -q '"prompt":' "$data/train.jsonl"; grep -q '"chosen":' "$data/train.jsonl"; grep -q '"rejected":' "$data/train.jsonl"
echo "$rows $*" > "$out.args"
printf 'Map: 50%%|##  | 1/2\rMap: 100%%|####| 2/2\n' >&2
echo "{'loss': 0.6928, 'grad_norm': 1.5, 'learning_rate': 1e-05, 'rewards/chosen': 0.0, 'rewards/margins': 0.0, 'rewards/accuracies': 0.0, 'epoch': 1.0}"
echo "{'loss': 0.6512, 'grad_norm': 1.25, 'learning_rate': 5e-06, 'rewards/chosen': 0.1, 'rewards/margins': 0.08, 'rewards/accuracies': 0.75, 'epoch': 2.0}"
[ -n "$FAIL" ] && { echo "CUDA out of memory (pretend)" >&2; exit 3; }
mkdir -p "$out"; cp "$ADAPTER"/adapter_config.json "$ADAPTER"/adapter_model.safetensors "$out"/
echo "{'train_runtime': 0.1, 'train_loss': 0.67, 'epoch': 1.0}"
"#;

fn config(dir: &std::path::Path, script: &std::path::Path) -> ExperimentConfig {
    // The fixture adapter's own LoRA (rank 4, alpha 8, these projections).
    let mut c =
        common::generic_lora_experiment(dir, Acquisition::Random, vec![8, 16], 8, &["q_proj", "v_proj", "down_proj"]);
    c.trainer_command = Some(format!("sh '{}' {{data}} {{out}} {{targets}}", script.display()));
    c
}

#[test]
fn phases_train_with_the_trainer_command_and_take_its_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = common::fixture("llama-peft");
    let script = |name: &str, fail: bool| {
        let path = dir.path().join(name);
        let head = format!("ADAPTER='{}'\nFAIL='{}'\n", adapter.display(), if fail { "1" } else { "" });
        std::fs::write(&path, head + TRAINER).unwrap();
        path
    };
    let cfg = config(dir.path(), &script("trainer.sh", false));
    cfg.validate().unwrap();
    let setup = Setup::build(&cfg, common::load("llama", DType::F32), None, &JudgeEnv::default()).unwrap();
    let out = dir.path().join("out");
    let records = run_experiment(&cfg, &setup, &out, &Quiet).unwrap();
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r.train.loss_curve, vec![0.6928, 0.6512], "phase {}", r.phase);
        assert_eq!(r.train.epoch_losses, vec![0.6928, 0.6512], "epoch 1.0 ends the first epoch");
        assert_eq!(r.train.accuracy_curve, vec![0.0, 0.75]);
    }
    let run = out.join("runs/random-seed0");
    // Every labelled pair went to the trainer (8, then 16), the projections as separate words.
    for (phase, rows) in [(1, 8), (2, 16)] {
        let args = std::fs::read_to_string(run.join(format!("trl-phase-{phase}/adapter.args"))).unwrap();
        assert_eq!(args.trim(), format!("{rows} q_proj v_proj down_proj"));
        assert!(run.join(format!("trl-phase-{phase}/trainer.log")).exists());
    }
    // The phase's policy is the adapter: it scores as PEFT's fixture policy does, not as the base.
    let mut policy = Policy::new(common::load("llama", DType::F32), cfg.settings.trainable.clone(), 0).unwrap();
    policy.load_trainable(&run.join("policy-phase-2.safetensors")).unwrap();
    let fixture =
        apl_engine::train::peft::load(common::load("llama", DType::F32), &common::fixture("llama-peft")).unwrap();
    let base = Model::from_checkpoint(&common::load("llama", DType::F32)).unwrap();
    let row = [(&[5u32, 9, 12][..], &[30u32, 31][..])];
    let score = |m: &Model| sequence_logprobs(m, &row, 1, |_| {}).unwrap()[0].sum;
    assert!((score(policy.model()) - score(fixture.model())).abs() < 1e-6);
    assert!((score(policy.model()) - score(&base)).abs() > 1e-4);

    // A trainer that fails stops the phase with the end of its log.
    let failing = config(dir.path(), &script("failing.sh", true));
    let err = run_experiment(&failing, &setup, &dir.path().join("failed"), &Quiet).unwrap_err();
    let e = format!("{err:#}");
    assert!(e.contains("the trainer command failed") && e.contains("CUDA out of memory (pretend)"), "{e}");
    // A placeholder the trainer module does not know is refused before anything runs.
    let mut bad = cfg.clone();
    bad.trainer_command = Some("trl dpo --dataset {dataset}".into());
    let err = run_experiment(&bad, &setup, &dir.path().join("bad"), &Quiet).unwrap_err();
    assert!(format!("{err:#}").contains("unknown placeholder {dataset}"), "{err:#}");
}
