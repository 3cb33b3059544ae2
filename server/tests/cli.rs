//! The `apl` binary's quick-check commands on the committed tiny checkpoints.

use std::process::Command;

fn apl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_apl"))
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
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
    assert!(String::from_utf8_lossy(&refused.stderr).contains("settings differ in: train"));

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
    let (base, tuned) = (score(&fixture("llama")), score(hf.to_str().unwrap()));
    assert!((base - tuned).abs() > 1e-4, "trained policy scores like the base model: {base} vs {tuned}");
    // Phase 1's policy differs from phase 2's; a phase that was not kept is a clear error.
    let hf1 = dir.path().join("hf1");
    run_ok(apl().args(["convert", "--phase", "1", "--run"]).arg(&run).arg("--out").arg(&hf1));
    assert!((score(hf1.to_str().unwrap()) - tuned).abs() > 1e-6);
    let err = apl().args(["convert", "--phase", "7", "--run"]).arg(&run).arg("--out").arg(&hf1).output().unwrap();
    assert!(String::from_utf8_lossy(&err.stderr).contains("no policy for phase 7 (kept: [1, 2])"));
}
