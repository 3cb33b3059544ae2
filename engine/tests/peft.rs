//! LoRA adapters in PEFT's format, against PEFT itself.
//!
//! `tests/fixtures/make_peft_fixture.py` attached random LoRA adapters with PEFT to the llama
//! fixture (nn.Linear projections) and the gpt2 one (Conv1D, `fan_in_fan_out`), saved them
//! with `save_pretrained`, and recorded the logits PEFT computes on each model's parity batch.
//! Here the adapter is read into a policy and its logits compared; then the policy writes its
//! adapter and the files are compared with PEFT's (names, shapes, values, the config fields
//! PEFT reads), and read back.

mod common;

use std::collections::BTreeMap;

use apl_engine::train::peft::{self, AdapterConfig, TargetModules};
use apl_engine::train::policy::Trainable;
use candle_core::{DType, Device, IndexOp, Tensor};
use common::*;

const TOL: f32 = 1e-4;

fn adapter(name: &str) -> std::path::PathBuf {
    fixture(&format!("{name}-peft"))
}

fn tensors(path: &std::path::Path) -> BTreeMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap().into_iter().collect()
}

#[test]
fn peft_adapters_give_peft_logits() {
    for name in ["llama", "gpt2"] {
        let policy = peft::load(load(name, DType::F32), &adapter(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let exp = expected(&format!("{name}-peft"));
        let (batch, valid) = parity_batch(&exp, "");
        let logits = policy.model().forward(&batch).unwrap();
        let base = policy.reference().forward(&batch).unwrap();
        let (mut worst, mut moved) = (0f32, 0f32);
        for (r, row) in valid.iter().enumerate() {
            for (c, &ok) in row.iter().enumerate() {
                if ok {
                    let (got, want) = (logits.i((r, c)).unwrap(), exp["logits"].i((r, c)).unwrap());
                    worst = worst.max(max_abs(&got, &want));
                    moved = moved.max(max_abs(&base.i((r, c)).unwrap(), &want));
                }
            }
        }
        eprintln!("{name}: max |logit - PEFT| = {worst:.2e} (the adapter moves logits by up to {moved:.2e})");
        assert!(worst < TOL, "{name}: {worst} >= {TOL}");
        assert!(moved > 100.0 * TOL, "{name}: the adapter changes nothing, so this compares nothing ({moved})");
    }
}

#[test]
fn adapters_written_are_the_ones_peft_writes() {
    for name in ["llama", "gpt2"] {
        let dir = adapter(name);
        let policy = peft::load(load(name, DType::F32), &dir).unwrap();
        let out = tempfile::tempdir().unwrap();
        peft::save(&policy, out.path(), "tiny-fixture").unwrap();
        // Every tensor PEFT wrote, under its name and shape, with the same values.
        let (want, got) = (tensors(&dir.join(peft::WEIGHTS_FILE)), tensors(&out.path().join(peft::WEIGHTS_FILE)));
        assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>(), "{name}: tensor names");
        for (k, w) in &want {
            assert_eq!(w.dims(), got[k].dims(), "{name}: {k}");
            assert_eq!(max_abs(w, &got[k]), 0.0, "{name}: {k}");
        }
        // The config fields PEFT reads to rebuild the model, as PEFT wrote them.
        let (want, got) = (peft::read_config(&dir).unwrap(), peft::read_config(out.path()).unwrap());
        let fields = |c: &AdapterConfig| {
            let mut t = match &c.target_modules {
                TargetModules::List(t) => t.clone(),
                TargetModules::Pattern(p) => vec![p.clone()],
            };
            t.sort();
            (c.peft_type.clone(), c.task_type.clone(), c.r, c.lora_alpha, t, c.bias.clone(), c.fan_in_fan_out)
        };
        assert_eq!(fields(&got), fields(&want), "{name}");
        assert_eq!(got.base_model_name_or_path.as_deref(), Some("tiny-fixture"));
        // And it reads back into the same policy.
        let again = peft::load(load(name, DType::F32), out.path()).unwrap();
        let (a, b) = (policy.trainable_tensors().unwrap(), again.trainable_tensors().unwrap());
        for (k, t) in &a {
            assert_eq!(max_abs(t, &b[k]), 0.0, "{name}: {k}");
        }
    }
}

#[test]
fn adapters_that_are_not_plain_lora_are_refused_by_name() {
    let dir = adapter("llama");
    let base = peft::read_config(&dir).unwrap();
    let src = dir.join(peft::CONFIG_FILE);
    for (change, want) in [
        (AdapterConfig { use_dora: true, ..base.clone() }, "use_dora"),
        (AdapterConfig { use_rslora: true, ..base.clone() }, "use_rslora"),
        (AdapterConfig { bias: "all".into(), ..base.clone() }, "bias \"all\""),
        (AdapterConfig { peft_type: "IA3".into(), ..base.clone() }, "peft_type \"IA3\""),
        (AdapterConfig { target_modules: TargetModules::Pattern(".*q_proj".into()), ..base.clone() }, "pattern"),
        (AdapterConfig { modules_to_save: Some(vec!["lm_head".into()]), ..base.clone() }, "modules_to_save"),
    ] {
        let e = change.trainable(&src).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("adapter_config.json"), "{e}");
    }
    assert!(matches!(base.trainable(&src).unwrap(), Trainable::Lora { rank: 4, .. }));
    // A whole-model policy has no adapter to write.
    let all = apl_engine::train::policy::Policy::new(load("llama", DType::F32), Trainable::All, 0).unwrap();
    let e = peft::save(&all, tempfile::tempdir().unwrap().path(), "x").unwrap_err().to_string();
    assert!(e.contains("LoRA"), "{e}");
}
