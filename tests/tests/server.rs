//! The real router, served on port 0 over a tiny random-weight Llama (the committed parity
//! fixture) and a six-review CSV, spoken to over HTTP like a browser would.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use apl::api::{AppState, app};
use apl::data::imdb;
use apl::model::{Checkpoint, Model, SamplingConfig};
use apl::worker::Worker;
use apl_shared::{ApiError, Health, Pair};
use candle_core::{DType, Device};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Starts the app and returns its base URL.
async fn start(dist: Option<PathBuf>) -> String {
    let ck = Checkpoint::load(&root().join("server/tests/fixtures/llama"), DType::F32, &Device::Cpu).unwrap();
    let model = Model::from_checkpoint(&ck).unwrap();
    let tok = ck.tokenizer().unwrap().clone();
    let reviews = imdb::read_reviews(&root().join("tests/fixtures/reviews.csv")).unwrap();
    let prompts = imdb::prompts(&reviews, &tok, 200, (8, 16), 0).unwrap();
    let health = Health {
        status: "ok".into(),
        version: "test".into(),
        model: "llama".into(),
        architecture: "llama".into(),
        parameters: ck.num_params() as u64,
        device: "cpu".into(),
        prompts: prompts.len(),
    };
    let sampling = SamplingConfig { max_new_tokens: 6, ..Default::default() };
    let worker = Worker::new(model, tok, prompts, sampling);
    let state = AppState { worker: Arc::new(worker), health: Arc::new(health), dist };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app(state)).await.unwrap() });
    format!("http://{addr}")
}

async fn post(base: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/api/pair"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn health_and_pairs() {
    let base = start(None).await;
    let h: Health = reqwest::get(format!("{base}/api/health")).await.unwrap().json().await.unwrap();
    // Four reviews are over 200 characters and from IMDB.
    assert_eq!(h.prompts, 4);

    let a: Pair = post(&base, r#"{"seed": 5}"#).await.json().await.unwrap();
    let b: Pair = post(&base, r#"{"seed": 5}"#).await.json().await.unwrap();
    assert_eq!((a.prompt.clone(), a.completions.clone()), (b.prompt, b.completions), "same seed, same pair");
    assert!(!a.prompt.contains("<br"));
    for c in &a.completions {
        assert!(c.tokens <= 6);
        assert!(c.logprob <= 0.0 && c.logprob.is_finite());
    }
    let own: Pair = post(&base, r#"{"prompt": "This movie", "seed": 1}"#).await.json().await.unwrap();
    assert_eq!(own.prompt, "This movie");
}

#[tokio::test]
async fn bad_requests_get_a_json_message() {
    let base = start(None).await;
    for (body, want) in
        [("{not json", "request body"), (r#"{"prompt": 5}"#, "prompt"), (r#"{"prompt": "   "}"#, "prompt is empty")]
    {
        let r = post(&base, body).await;
        assert_eq!(r.status(), 400, "{body}");
        let e: ApiError = r.json().await.unwrap();
        assert!(e.message.contains(want), "{body}: {}", e.message);
    }
    let huge = format!(r#"{{"prompt": "{}"}}"#, "x".repeat(100_000));
    assert_eq!(post(&base, &huge).await.status(), 413);
    let r = reqwest::get(format!("{base}/api/nope")).await.unwrap();
    assert_eq!(r.status(), 404);
    let e: ApiError = r.json().await.unwrap();
    assert!(e.message.contains("/api/nope"), "{}", e.message);
}

#[tokio::test]
async fn pages_carry_security_headers() {
    // Without a built frontend: a notice page.
    let base = start(None).await;
    let r = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.text().await.unwrap().contains("cargo xtask"));

    // With one: its files.
    let dist = tempfile::tempdir().unwrap();
    std::fs::write(dist.path().join("index.html"), "<!doctype html><title>apl</title>").unwrap();
    let base = start(Some(dist.path().to_path_buf())).await;
    let r = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.text().await.unwrap().contains("<title>apl</title>"));
    assert_eq!(reqwest::get(format!("{base}/api/health")).await.unwrap().status(), 200);
}
