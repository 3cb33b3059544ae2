//! The remote model backend against a mock server that speaks exactly the JSON of vLLM's and
//! llama-cpp-python's completions APIs (field for field, as their `protocol.py` / `types.py`
//! write it), computing its answers with a real model: the tiny llama fixture, run by this
//! engine. So a remote sample's log-probs and a remote score must equal the local engine's
//! scoring of the same tokens (f32 noise only), which checks every alignment the client does:
//! choices to rows, prompt log-prob positions to completion tokens, echo offsets to the
//! prompt/completion boundary. A switch makes the mock read echoed log-probs one position late,
//! as llama-cpp-python does (its issue #1983): the probe must refuse it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apl::judge::destination::Destinations;
use apl::remote::{Remote, RemoteError};
use apl_engine::backend::{ModelBackend, Role, SampleJob};
use apl_engine::model::{FinishReason, sequence_logprobs};
use apl_engine::train::policy::Policy;
use apl_shared::settings::{RemoteBackend, ServerKind};
use candle_core::DType;
use serde_json::{Value, json};

mod common;

use common::model_server::{Faults, fixture, start, start_with};

fn settings(base_url: &str, server: ServerKind) -> RemoteBackend {
    RemoteBackend {
        base_url: base_url.into(),
        model: "base".into(),
        server,
        rows_per_request: 3,
        concurrency: 4,
        timeout_seconds: 5.0,
        retries: 3,
        backoff_seconds: 0.01,
        ..Default::default()
    }
}

fn remote(s: RemoteBackend) -> Remote {
    Remote::new(s, None, fixture().tok, Arc::new(Destinations::any())).unwrap()
}

/// Runs blocking backend calls off the test's runtime threads, as the loop does.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Samples 4 prompts x 2 with per-row lengths, then checks every row: its length, and its
/// reported log-probs against the local engine's scoring of the same tokens.
fn sample_and_check(r: &Remote, exact: bool) -> Vec<Vec<u32>> {
    let f = fixture();
    let texts = ["The film", "I think that", "A long and winding", "Why"];
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| f.tok.encode(t, true).unwrap()).collect();
    let prompts: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let lengths = [3, 5, 4, 4, 2, 6, 5, 1];
    let job = SampleJob {
        prompts: &prompts,
        per_prompt: 2,
        lengths: &lengths,
        exact_length: exact,
        temperature: 0.9,
        max_new_tokens: 6,
        seed: 11,
        batch_size: 8,
        pass_seed: |s, _| s,
    };
    let seen = Mutex::new(Vec::new());
    let r = r.serving(None);
    let samples = r.sample(Role::Policy, &job, &|d, n| seen.lock().unwrap().push((d, n))).unwrap();
    assert_eq!(samples.len(), 8);
    assert_eq!(seen.lock().unwrap().last(), Some(&(8, 8)));
    let mut compared = 0;
    for (row, s) in samples.iter().enumerate() {
        // The server's tokens (its log-probs, one each) have the row's length; a text server's
        // tokens are mapped back to ids by their text, or (where a piece is ambiguous) the
        // completion re-encoded, which may cut it otherwise: compared where it does not.
        if exact || s.finish == FinishReason::Length {
            assert_eq!(s.logprobs.len(), lengths[row], "row {row}");
        }
        assert!(s.logprobs.len() <= lengths[row]);
        // Only a token that is not a whole character (the tiny random model samples single
        // bytes above 127 often) leaves a text server's token ambiguous: such rows are
        // re-encoded, and may have other tokens than the server sampled, so are not compared.
        let text = f.tok.decode(&s.tokens).unwrap();
        if !text.is_ascii() {
            continue;
        }
        assert_eq!(s.tokens.len(), s.logprobs.len(), "row {row}: {text:?} was not mapped to the server's tokens");
        compared += 1;
        let pairs = [(prompts[row / 2], s.tokens.as_slice())];
        let local = sequence_logprobs(&f.model, &pairs, 1, |_| {}).unwrap();
        for (k, (a, b)) in s.logprobs.iter().zip(&local[0].tokens).enumerate() {
            assert!((a - b).abs() < 1e-4, "row {row} token {k}: remote {a} vs local {b}");
        }
    }
    assert!(compared >= 2, "{compared} of 8 rows have the server's tokens");
    // Seeded: the same job gives the same samples.
    let again = r.sample(Role::Policy, &job, &|_, _| {}).unwrap();
    assert_eq!(samples, again);
    samples.into_iter().map(|s| s.tokens).collect()
}

/// Scores rows remotely and locally: equal to f32 noise, token by token and in sum.
fn score_and_check(r: &Remote) {
    let f = fixture();
    let rows_text = [("The film", " was great"), ("I think that", " it is not"), ("Why", " yes and no, really")];
    let ids: Vec<(Vec<u32>, Vec<u32>)> = rows_text
        .iter()
        .map(|(p, c)| {
            let p_ids = f.tok.encode(p, true).unwrap();
            let all = f.tok.encode(&format!("{p}{c}"), true).unwrap();
            assert_eq!(&all[..p_ids.len()], p_ids.as_slice());
            (p_ids.clone(), all[p_ids.len()..].to_vec())
        })
        .collect();
    let rows: Vec<(&[u32], &[u32])> = ids.iter().map(|(p, c)| (p.as_slice(), c.as_slice())).collect();
    let local = sequence_logprobs(&f.model, &rows, 2, |_| {}).unwrap();
    let tokens = r.token_logprobs("base", &rows, &|_, _| {}).unwrap();
    for (i, (t, l)) in tokens.iter().zip(&local).enumerate() {
        assert_eq!(t.len(), l.tokens.len(), "row {i}");
        for (k, (a, b)) in t.iter().zip(&l.tokens).enumerate() {
            assert!((a - b).abs() < 1e-4, "row {i} token {k}: remote {a} vs local {b}");
        }
    }
    let untrained = r.serving(None);
    let (policy, reference) = untrained.score(&rows, 2, &|_, _| {}).unwrap();
    assert_eq!(policy, reference, "an untrained policy is the reference");
    let refs = untrained.score_reference(&rows, 2, &|_, _| {}).unwrap();
    for ((a, b), l) in refs.iter().zip(&reference).zip(&local) {
        assert!((a - l.sum).abs() < 1e-4 && a == b, "{a} {b} {}", l.sum);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_samples_and_scores_as_the_local_engine_does() {
    let (url, mock) = start(Faults::default()).await;
    let s = settings(&url, ServerKind::Vllm);
    let loaded = blocking(move || {
        let r = remote(s);
        let checked = r.check().unwrap();
        assert!(checked.d_same < 1e-5, "{checked:?}");
        assert!(checked.d_next > 0.05, "{checked:?}");
        sample_and_check(&r, true);
        sample_and_check(&r, false);
        score_and_check(&r);

        // A trained policy: an adapter loaded once by name, then asked for by that name; the
        // reference stays the base model.
        let dir = tempfile::tempdir().unwrap();
        let adapter = dir.path().join("policy-phase-1.peft");
        std::fs::create_dir(&adapter).unwrap();
        r.load_adapter("apl-certainty-seed0-phase1", &adapter).unwrap();
        r.load_adapter("apl-certainty-seed0-phase1", &adapter).unwrap();
        let trained = r.serving(Some("apl-certainty-seed0-phase1"));
        let (p, c) = (vec![1u32, 2, 3], vec![4u32, 5]);
        let (policy, reference) = trained.score(&[(&p, &c)], 1, &|_, _| {}).unwrap();
        assert_eq!(policy, reference, "the mock serves adapters with the base model's numbers");
        adapter.canonicalize().unwrap()
    })
    .await;
    let adapters = mock.adapters.lock().unwrap().clone();
    assert_eq!(adapters, vec![("apl-certainty-seed0-phase1".to_string(), loaded.display().to_string())]);
    let bodies = mock.bodies.lock().unwrap();
    let asked: Vec<&str> = bodies.iter().rev().take(2).map(|b| b["model"].as_str().unwrap()).collect();
    assert!(asked.contains(&"apl-certainty-seed0-phase1") && asked.contains(&"base"), "{asked:?}");
    // One prompt a request (each its own seed), its rows' longest length, every knob explicit.
    let sampling: Vec<&Value> = bodies.iter().filter(|b| b["n"] == json!(2)).take(4).collect();
    assert!(sampling.iter().all(|b| b["prompt"].as_array().unwrap().len() == 1), "one prompt a request");
    let seeds: std::collections::HashSet<u64> = sampling.iter().map(|b| b["seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds.len(), 4, "each prompt its own stream");
    assert!(sampling.iter().all(|b| b["top_k"] == json!(-1) && b["repetition_penalty"] == json!(1.0)));
    let mut longest: Vec<u64> = sampling.iter().map(|b| b["max_tokens"].as_u64().unwrap()).collect();
    longest.sort();
    assert_eq!(longest, vec![4, 5, 5, 6], "each request its rows' longest (lengths 3 5 | 4 4 | 2 6 | 5 1)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_cpp_python_samples_and_scores_by_text() {
    let (url, mock) = start(Faults::default()).await;
    let s = settings(&url, ServerKind::LlamaCppPython);
    blocking(move || {
        let r = remote(s);
        r.check().unwrap();
        sample_and_check(&r, true);
        score_and_check(&r);
    })
    .await;
    let bodies = mock.bodies.lock().unwrap();
    let sampling: Vec<&Value> = bodies.iter().filter(|b| b["seed"].is_u64() && b["echo"].is_null()).collect();
    // One request a completion, with end-of-sequence biased away for exact lengths.
    assert_eq!(sampling.len(), 16);
    assert!(sampling.iter().all(|b| b["logit_bias"].is_object() && b["top_k"] == json!(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_logprobs_read_one_position_late_are_refused() {
    let (url, _mock) = start(Faults { shifted: true, ..Default::default() }).await;
    let s = settings(&url, ServerKind::LlamaCppPython);
    let e = blocking(move || remote(s).check().unwrap_err().to_string()).await;
    assert!(e.contains("read one position late (llama-cpp-python issue #1983)"), "{e}");
    // The fixture's tokenizer cuts the probe's third token as " m" ("This m|ovie").
    assert!(e.contains("\" m\" is reported at") && e.contains("next-token request on \"This\""), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_prompt_logprobs_or_with_another_tokenizer_is_refused() {
    let (url, _mock) = start(Faults { no_prompt_logprobs: true, ..Default::default() }).await;
    let s = settings(&url, ServerKind::Vllm);
    let e = blocking(move || remote(s).check().unwrap_err().to_string()).await;
    assert!(e.contains("returns no prompt log-probs"), "{e}");

    let (url, _mock) = start(Faults { odd_tokenizer: true, ..Default::default() }).await;
    let s = settings(&url, ServerKind::Vllm);
    let e = blocking(move || remote(s).check().unwrap_err().to_string()).await;
    assert!(e.contains("tokenises differently") && e.contains("probe 4") && e.contains("token 3: local"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_servers_are_retried_and_cancelled_calls_dropped() {
    let (url, mock) = start(Faults { unavailable: AtomicUsize::new(2), ..Default::default() }).await;
    let s = settings(&url, ServerKind::Vllm);
    blocking(move || score_and_check(&remote(s))).await;
    assert!(mock.bodies.lock().unwrap().len() >= 3);

    // A refused destination is not retried.
    let s = settings(&url, ServerKind::Vllm);
    let e = Remote::new(s, None, fixture().tok, Arc::new(Destinations::public_and(vec![]))).unwrap_err();
    assert!(matches!(e, RemoteError::Client(_)), "{e}");

    // A reply without end is read up to the cap, and not asked for again.
    let (url, mock) = start(Faults { endless: true, ..Default::default() }).await;
    // Time enough to read 64 MiB on a loaded machine: the cap, not the timeout, must stop it.
    let s = RemoteBackend { timeout_seconds: 120.0, ..settings(&url, ServerKind::Vllm) };
    let e = blocking(move || remote(s).check().unwrap_err().to_string()).await;
    assert!(e.contains("the model server's reply is over 67108864 bytes; it was not read further"), "{e}");
    assert_eq!(mock.bodies.lock().unwrap().len(), 1);

    let (url, _mock) = start(Faults { delay: Some(Duration::from_secs(30)), ..Default::default() }).await;
    let flag = Arc::new(AtomicBool::new(false));
    let r = remote(settings(&url, ServerKind::Vllm)).cancelled_by(flag.clone());
    let t = Instant::now();
    let cancel = flag.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        cancel.store(true, Ordering::Relaxed);
    });
    let e = blocking(move || r.check().unwrap_err()).await;
    assert!(matches!(e, RemoteError::Cancelled), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// An experiment whose sampling and scoring all go to the server: the trained policy of each
/// phase written as a PEFT adapter, loaded by name (the mock reads it with this engine's PEFT
/// loader), and asked for by that name; what the server then computes for it equals the
/// trained policy's own log-probs here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_runs_on_the_server_with_its_policy_as_an_adapter() {
    use apl::experiment::setup::{JudgeEnv, Setup};
    use apl_shared::Acquisition;
    use apl_shared::settings::{AdamConfig, Backend};

    let (url, mock) = start_with(Faults::default(), Some(common::load("llama", DType::F32))).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c =
        common::generic_lora_experiment(dir.path(), Acquisition::Certainty, vec![16, 32], 16, &["q_proj", "v_proj"]);
    let s = &mut c.settings;
    s.train.adam = AdamConfig { lr: 1e-2, ..Default::default() };
    s.train.epochs = 2;
    s.train.pairs_per_step = 8;
    s.train.micro_batch = 8;
    s.acquire.over_generate = 2;
    s.backend = Backend::Remote(settings(&url, ServerKind::Vllm));
    let trainable = s.trainable.clone();
    c.validate().unwrap();
    let out = dir.path().join("out");
    let (records, run) = blocking(move || {
        let setup = Setup::build(&c, common::load("llama", DType::F32), None, &JudgeEnv::default()).unwrap();
        let records = apl::experiment::run_experiment(&c, &setup, &out, &common::Quiet).unwrap();
        (records, out.join("runs/certainty-seed0"))
    })
    .await;
    assert_eq!(records.iter().map(|r| r.phase).collect::<Vec<_>>(), vec![1, 2]);
    let adapters = mock.adapters.lock().unwrap().clone();
    let names: Vec<&str> = adapters.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].starts_with("apl-certainty-seed0-phase1-") && names[1].starts_with("apl-certainty-seed0-phase2-"));
    // Phase 2's acquisition sampled and scored phase 1's adapter; nothing was computed here.
    let bodies = mock.bodies.lock().unwrap();
    assert!(bodies.iter().any(|b| b["model"] == json!(names[0]) && b["n"].is_u64()), "phase 1's policy sampled");
    assert!(bodies.iter().any(|b| b["model"] == json!(names[0]) && b["prompt_logprobs"].is_u64()), "and scored");

    // The served adapter computes what the trained policy computes here.
    let mut policy = Policy::new(common::load("llama", DType::F32), trainable, 0).unwrap();
    policy.load_trainable(&run.join("policy-phase-2.safetensors")).unwrap();
    let served = mock.policy(&json!(names[1])).unwrap();
    let tok = fixture().tok;
    let (p, c) = (tok.encode("the film was", true).unwrap(), tok.encode(" great and", false).unwrap());
    let here = sequence_logprobs(policy.model(), &[(&p, &c)], 1, |_| {}).unwrap();
    let there = sequence_logprobs(served.model(), &[(&p, &c)], 1, |_| {}).unwrap();
    let base = sequence_logprobs(&fixture().model, &[(&p, &c)], 1, |_| {}).unwrap();
    assert!((here[0].sum - there[0].sum).abs() < 1e-4, "{} vs {}", here[0].sum, there[0].sum);
    assert!((here[0].sum - base[0].sum).abs() > 1e-3, "training moved the policy");
}
