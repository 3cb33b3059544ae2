//! The `apl` binary's quick-check commands on the committed tiny checkpoints.

use std::process::Command;

fn apl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_apl"))
}

fn fixture(name: &str) -> String {
    format!("{}/../engine/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn generate_is_reproducible_and_respects_lengths() {
    for model in [fixture("llama"), fixture("gpt2"), fixture("llama-gguf/model.gguf")] {
        let args = ["--prompt", "This movie was", "-n", "3", "--max-new-tokens", "5", "--seed", "9", "--json"];
        let first = run_ok(apl().arg("generate").arg("--model").arg(&model).args(args));
        let again = run_ok(apl().arg("generate").arg("--model").arg(&model).args(args));
        assert_eq!(first, again, "{model}: same seed, same text");
        let lines: Vec<serde_json::Value> = first.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        for l in lines {
            assert!(l["tokens"].as_u64().unwrap() <= 5);
            assert_eq!(l["prompt"], "This movie was");
        }
    }
}

#[test]
fn score_prints_sums_and_per_token_values() {
    let out = run_ok(apl().args(["score", "--model", &fixture("gpt_neox"), "--prompt", "The film", "--json"]).args([
        "--completion",
        " was great",
        "--completion",
        " was dull and long",
    ]));
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    for r in rows {
        let sum = r["logprob"].as_f64().unwrap();
        let per: f64 = r["tokens"].as_array().unwrap().iter().map(|t| t["logprob"].as_f64().unwrap()).sum();
        assert!(sum < 0.0 && (sum - per).abs() < 1e-3, "{r}");
    }
}

#[test]
fn errors_name_the_problem() {
    let out = apl().args(["generate", "--model", "/no/such/model", "--prompt", "x"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/model") && err.contains("does not exist"), "{err}");

    let out =
        apl().args(["generate", "--model", &fixture("llama"), "--prompt", "x", "--device", "cuda"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without CUDA"));

    let out = apl().args(["bench", "--model", &fixture("llama"), "--benches", "warp"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown bench"));
}

#[test]
fn bench_measures_several_models_and_sets_peers_beside_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        r#"{"model_type": "gpt_neox", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 32, "rotary_pct": 0.5, "eos_token_id": 0}"#,
    )
    .unwrap();
    // A peer result in the CPU peers' format, for SmolLM2's shape (the random llama below is
    // not that shape, the fixture neither: only a peer of a matching shape is set beside).
    let peer = dir.path().join("torch_cpu_eager.json");
    std::fs::write(&peer, r#"{"meta": {}, "results": [{"bench": "sample_b1", "median": 10.0, "work_per_rep": 4}]}"#)
        .unwrap();
    let json = dir.path().join("bench.json");
    let models = format!("random:{},{}", config.display(), fixture("llama"));
    let small = [
        "--benches",
        "sample_b1,score,dpo",
        "--reps",
        "2",
        "--warmup",
        "0",
        "--prompt-len",
        "4",
        "--new-tokens",
        "3",
        "--score-n",
        "3",
        "--seq-len",
        "8",
        "--score-mb",
        "2",
        "--dpo-pairs",
        "2",
        "--dpo-prompt-len",
        "4",
        "--decode-weights",
        "f16",
    ];
    let table = run_ok(
        apl().args(["bench", "--models", &models]).args(small).arg("--peers").arg(&peer).arg("--json").arg(&json),
    );
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let models = doc["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    for m in models {
        let benches: Vec<&str> =
            m["results"].as_array().unwrap().iter().map(|r| r["bench"].as_str().unwrap()).collect();
        assert_eq!(benches, ["sample_b1", "sample_b1+f16w", "score_3x8", "dpo_2x8", "dpo_cached_ref_2x8"], "{m}");
        for r in m["results"].as_array().unwrap() {
            assert!(r["median"].as_f64().unwrap() > 0.0 && r["times_s"].as_array().unwrap().len() == 2, "{r}");
        }
    }
    assert_eq!(doc["peers"][0]["peer"], "torch_cpu_eager");
    assert!(doc["comparison"].as_array().unwrap().is_empty(), "no model has SmolLM2's shape");
    assert!(table.contains("| sample_b1+f16w |"), "{table}");

    // A peer file that is neither format is named.
    std::fs::write(&peer, "[1, 2]").unwrap();
    let out =
        apl().args(["bench", "--models", &fixture("llama")]).args(small).arg("--peers").arg(&peer).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("torch_cpu_eager.json"));
}

#[test]
fn experiment_then_convert_its_trained_policy() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    let words = ["the", "film", "was", "great", "boring", "acting", "story", "and", "I", "loved"];
    let lines: Vec<String> = (0..200)
        .map(|i| {
            let p: Vec<&str> = (0..4).map(|k| words[(i * 7 + k * 3 + i / 5) % words.len()]).collect();
            serde_json::json!({ "prompt": p.join(" ") }).to_string()
        })
        .collect();
    std::fs::write(&prompts, lines.join("\n")).unwrap();
    let out = dir.path().join("exp");
    let exp = |extra: &[&str]| {
        let mut c = apl();
        c.args(["experiment", "--model", &fixture("llama"), "--task", "prompts", "--oracle", "length"])
            .arg("--data")
            .arg(&prompts)
            .arg("--out")
            .arg(&out)
            .args(["--acquisition", "random", "--schedule", "8,16", "--eval-prompts", "8", "--epochs", "2"])
            .args(["--top-layers", "1", "--lr", "0.01"])
            .args(extra);
        c
    };
    run_ok(&mut exp(&["--seeds", "1"]));
    let run = out.join("runs/random-seed0");
    assert!(run.join("phase-2.json").exists());
    // The same experiment with another seed is a resume that adds a run; other settings are refused.
    run_ok(&mut exp(&["--seeds", "1..2"]));
    assert!(out.join("runs/random-seed1/phase-2.json").exists());
    let refused = exp(&["--seeds", "1", "--beta", "0.5"]).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("settings differ in: settings.train.beta"));

    // The run's latest policy as an HF directory, the model taken from the experiment's settings.
    let hf = dir.path().join("hf");
    run_ok(apl().args(["convert", "--run"]).arg(&run).arg("--out").arg(&hf));
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(hf.join(f).exists(), "{f}");
    }
    let score = |model: &str| {
        let out = run_ok(
            apl()
                .args(["score", "--model", model, "--prompt", "the film", "--json"])
                .args(["--completion", " was great and I loved it"]),
        );
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["logprob"].as_f64().unwrap()
    };
    let (base_score, tuned) = (score(&fixture("llama")), score(hf.to_str().unwrap()));
    assert!((base_score - tuned).abs() > 1e-4, "trained policy scores like the base model: {base_score} vs {tuned}");
    // Phase 1's policy differs from phase 2's; a phase that was not kept is a clear error.
    let hf1 = dir.path().join("hf1");
    run_ok(apl().args(["convert", "--phase", "1", "--run"]).arg(&run).arg("--out").arg(&hf1));
    assert!((score(hf1.to_str().unwrap()) - tuned).abs() > 1e-6);
    let err = apl().args(["convert", "--phase", "7", "--run"]).arg(&run).arg("--out").arg(&hf1).output().unwrap();
    assert!(String::from_utf8_lossy(&err.stderr).contains("no policy for phase 7 (kept: [1, 2])"));
    // A top-layers run has no adapter to write in PEFT's format: said so.
    let err = apl().args(["convert", "--peft", "--run"]).arg(&run).arg("--out").arg(&hf1).output().unwrap();
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("holds LoRA weights"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );

    // A LoRA run written as a PEFT adapter: the adapter on the base model scores as the merged
    // checkpoint of the same run does.
    let lora_out = dir.path().join("lora");
    run_ok(
        apl()
            .args(["experiment", "--model", &fixture("llama"), "--task", "prompts", "--oracle", "length"])
            .arg("--data")
            .arg(&prompts)
            .arg("--out")
            .arg(&lora_out)
            .args([
                "--acquisition",
                "random",
                "--schedule",
                "8",
                "--eval-prompts",
                "8",
                "--epochs",
                "2",
                "--seeds",
                "1",
            ])
            .args(["--lora-rank", "2", "--lora-targets", "q_proj,v_proj", "--lr", "0.05"]),
    );
    let lora_run = lora_out.join("runs/random-seed0");
    let (adapter, merged) = (dir.path().join("adapter"), dir.path().join("merged"));
    run_ok(
        apl()
            .args(["convert", "--peft", "--base-model-name", "tiny-llama", "--run"])
            .arg(&lora_run)
            .arg("--out")
            .arg(&adapter),
    );
    run_ok(apl().args(["convert", "--run"]).arg(&lora_run).arg("--out").arg(&merged));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config["peft_type"].as_str(), config["r"].as_u64()), (Some("LORA"), Some(2)), "{config}");
    assert_eq!(config["base_model_name_or_path"], "tiny-llama");
    let base = apl_engine::model::Checkpoint::load(
        std::path::Path::new(&fixture("llama")),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let policy = apl_engine::train::peft::load(base, &adapter).unwrap();
    let tuned = dir.path().join("tuned");
    policy.save_hf(&tuned).unwrap();
    let (via_adapter, via_merge) = (score(tuned.to_str().unwrap()), score(merged.to_str().unwrap()));
    assert!((via_adapter - via_merge).abs() < 1e-4, "{via_adapter} vs {via_merge}");
    assert!((via_adapter - base_score).abs() > 1e-5, "the adapter was trained: {via_adapter} vs {base_score}");
}
