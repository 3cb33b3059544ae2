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
