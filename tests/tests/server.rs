//! The real router, served on port 0 over a tiny random-weight Llama (the committed parity
//! fixture) and a six-review CSV, spoken to over HTTP like a browser would.

mod common;

use apl_shared::{ApiError, Health, Pair};
use common::{ADMIN, Backend, Options};

/// Starts the app over SQLite and returns its base URL.
async fn start(dist: Option<std::path::PathBuf>) -> String {
    common::start(&Backend::Sqlite, Options { dist, worker: false, ..Default::default() }).await.base_leaked()
}

async fn post(base: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/api/pair"))
        .bearer_auth(ADMIN)
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

#[tokio::test]
async fn the_frontend_answers_its_own_paths_and_the_api_stays_json() {
    let dist = tempfile::tempdir().unwrap();
    std::fs::write(dist.path().join("index.html"), "<!doctype html><title>apl</title>").unwrap();
    std::fs::create_dir(dist.path().join("pkg")).unwrap();
    std::fs::write(dist.path().join("pkg/app.js"), "export const x = 1;").unwrap();
    let base = start(Some(dist.path().to_path_buf())).await;
    // The app's own routes are not files: each gets index.html, with 200 and the headers.
    for path in ["/rate", "/projects/0192f0c2", "/projects/0192f0c2/checks", "/pkg/missing.js"] {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"), "{path}");
        assert!(r.text().await.unwrap().contains("<title>apl</title>"), "{path}");
    }
    // Files are still files.
    let r = reqwest::get(format!("{base}/pkg/app.js")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.text().await.unwrap(), "export const x = 1;");
    // A browser that accepts gzip gets the precompressed file the build wrote beside it.
    std::fs::write(dist.path().join("pkg/app.js.gz"), b"gzipped bytes").unwrap();
    let client = reqwest::Client::new();
    let r = client.get(format!("{base}/pkg/app.js")).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert!(r.headers()["content-type"].to_str().unwrap().contains("javascript"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"gzipped bytes");
    // Unknown API paths stay JSON 404s.
    for path in ["/api/nope", "/api/projects/x/nope", "/api", "/api/"] {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let e: ApiError = r.json().await.unwrap();
        assert!(e.message.starts_with("no API endpoint"), "{path}: {}", e.message);
    }
}

#[tokio::test]
async fn the_openapi_document_matches_the_router() {
    let s = common::start(&Backend::Sqlite, Options { worker: false, ..Default::default() }).await;
    let doc = s.call("GET", "/api/openapi.json", None, None).await.ok();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{} paths", paths.len());
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    // Schemas come from the real types: a field of each shows up.
    assert_eq!(schemas["LabelRequest"]["properties"]["choice"]["type"], "string");
    assert_eq!(schemas["Job"]["properties"]["progress"]["properties"]["eta_seconds"]["type"], "number");
    assert_eq!(schemas["NextPair"]["properties"]["assignment"]["type"], serde_json::json!(["object", "null"]));
    let mut checked = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            // Every $ref points at a schema that exists.
            for r in op.to_string().split("#/components/schemas/").skip(1) {
                let name: String = r.chars().take_while(|c| c.is_alphanumeric()).collect();
                assert!(schemas.contains_key(&name), "{method} {path}: missing schema {name}");
            }
            let concrete = path
                .replace("{id}", "nope")
                .replace("{rater}", "nope")
                .replace("{pair}", "nope")
                .replace("{check}", "nope");
            let r = s.call(&method.to_uppercase(), &concrete, None, None).await;
            assert!(!r.message().starts_with("no API endpoint"), "{method} {path} is not routed");
            assert_ne!(r.status, 405, "{method} {path} is not routed for this method");
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked} operations");
    // And an undocumented path is not routed.
    assert!(s.call("GET", "/api/secret", None, None).await.message().starts_with("no API endpoint"));
}
