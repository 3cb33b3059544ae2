//! The real router, served on port 0 over a tiny random-weight Llama (the committed parity
//! fixture) and a six-review CSV, spoken to over HTTP like a browser would.

mod common;

use std::collections::BTreeSet;

use apl_shared::settings::{AnswerMode, Disagreement, JudgeOrder, JudgeTask};
use apl_shared::{
    Acquisition, Choice, Health, JobKind, JobState, LabelSource, Labeller, Mode, Outcome, Pair, PairKind, PairRequest,
    PromptFormat, RaterChoice, Split, Task, Vocabulary,
};
use common::{Backend, Options, Server};
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};

/// Starts the app over SQLite without a job worker.
async fn start(dist: Option<std::path::PathBuf>) -> Server {
    common::start(&Backend::Sqlite, Options { dist, worker: false, ..Default::default() }).await
}

/// `POST /api/pair` with `body` as it is: these tests are about what the wire carries.
async fn post_raw(s: &Server, body: &str) -> reqwest::Response {
    s.client
        .post(format!("{}/api/pair", s.base))
        .bearer_auth(common::ADMIN)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn health_and_pairs() {
    let s = start(None).await;
    let h: Health = s.anonymous().get("/api/health").await;
    // Four reviews are over 200 characters and from IMDB.
    assert_eq!(h.prompts, 4);

    let seeded = PairRequest { prompt: None, seed: Some(5) };
    let a: Pair = s.post("/api/pair", &seeded).await;
    let b: Pair = s.post("/api/pair", &seeded).await;
    assert_eq!((a.prompt.clone(), a.completions.clone()), (b.prompt, b.completions), "same seed, same pair");
    assert!(!a.prompt.contains("<br"));
    for c in &a.completions {
        assert!(c.tokens <= 6);
        assert!(c.logprob <= 0.0 && c.logprob.is_finite());
    }
    let own: Pair = s.post("/api/pair", &PairRequest { prompt: Some("This movie".into()), seed: Some(1) }).await;
    assert_eq!(own.prompt, "This movie");
}

#[tokio::test]
async fn bad_requests_get_a_json_message() {
    let s = start(None).await;
    // Malformed bodies cannot be built from the request type: they are written out as text.
    for (body, want) in
        [("{not json", "request body"), (r#"{"prompt": 5}"#, "prompt"), (r#"{"prompt": "   "}"#, "prompt is empty")]
    {
        let r = post_raw(&s, body).await;
        assert_eq!(r.status(), 400, "{body}");
        let e: apl_shared::ApiError = r.json().await.unwrap();
        assert!(e.message.contains(want), "{body}: {}", e.message);
    }
    let huge = format!(r#"{{"prompt": "{}"}}"#, "x".repeat(100_000));
    assert_eq!(post_raw(&s, &huge).await.status(), 413);
    let r = s.anonymous().send(Method::GET, "/api/nope").await;
    assert_eq!(r.status, 404);
    assert!(r.message().contains("/api/nope"), "{}", r.text);
}

#[tokio::test]
async fn pages_carry_security_headers() {
    // Without a built frontend: a notice page.
    let base = start(None).await.base_leaked();
    let r = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.text().await.unwrap().contains("cargo xtask"));

    // With one: its files.
    let dist = tempfile::tempdir().unwrap();
    std::fs::write(dist.path().join("index.html"), "<!doctype html><title>apl</title>").unwrap();
    let base = start(Some(dist.path().to_path_buf())).await.base_leaked();
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
    let s = start(Some(dist.path().to_path_buf())).await;
    let base = s.base.clone();
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
    let r = s.client.get(format!("{base}/pkg/app.js")).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert!(r.headers()["content-type"].to_str().unwrap().contains("javascript"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"gzipped bytes");
    // Unknown API paths stay JSON 404s.
    for path in ["/api/nope", "/api/projects/x/nope", "/api", "/api/"] {
        let r = s.anonymous().send(Method::GET, path).await;
        assert_eq!(r.status, 404, "{path}");
        assert!(r.message().starts_with("no API endpoint"), "{path}: {}", r.text);
    }
}

/// The API's contract: every operation the OpenAPI document lists, and only these.
const OPERATIONS: &[(&str, &str)] = &[
    ("get", "/api/health"),
    ("get", "/api/openapi.json"),
    ("get", "/api/defaults"),
    ("post", "/api/pair"),
    ("get", "/api/projects"),
    ("post", "/api/projects"),
    ("get", "/api/projects/{id}"),
    ("put", "/api/projects/{id}/config"),
    ("post", "/api/projects/{id}/prompts"),
    ("get", "/api/projects/{id}/prompts"),
    ("patch", "/api/projects/{id}/prompts/{prompt}"),
    ("delete", "/api/projects/{id}/prompts/{prompt}"),
    ("post", "/api/projects/{id}/prompts/imdb"),
    ("get", "/api/projects/{id}/pairs"),
    ("post", "/api/projects/{id}/pairs"),
    ("get", "/api/projects/{id}/export/dpo.jsonl"),
    ("get", "/api/projects/{id}/export/votes.jsonl"),
    ("get", "/api/projects/{id}/export/votes.csv"),
    ("get", "/api/projects/{id}/raters"),
    ("post", "/api/projects/{id}/raters"),
    ("delete", "/api/projects/{id}/raters/{rater}"),
    ("get", "/api/projects/{id}/jobs"),
    ("post", "/api/projects/{id}/jobs"),
    ("get", "/api/projects/{id}/cycle"),
    ("get", "/api/projects/{id}/rounds"),
    ("get", "/api/projects/{id}/checkpoints"),
    ("get", "/api/projects/{id}/evaluations"),
    ("get", "/api/projects/{id}/analytics"),
    ("get", "/api/projects/{id}/checks"),
    ("post", "/api/projects/{id}/checks"),
    ("get", "/api/checks/{check}/pairs"),
    ("get", "/api/jobs/{id}"),
    ("post", "/api/jobs/{id}/cancel"),
    ("get", "/api/jobs/{id}/events"),
    ("get", "/api/rate/me"),
    ("post", "/api/rate/next"),
    ("get", "/api/rate/labels"),
    ("post", "/api/rate/labels"),
    ("delete", "/api/rate/labels/{pair}"),
];

/// The document is checked as the JSON it is (`serde_json::Value`): this test is about the
/// generated document itself, whose shape no `shared` type describes.
#[tokio::test]
async fn the_openapi_document_matches_the_router() {
    let s = start(None).await;
    let doc: Value = s.anonymous().get("/api/openapi.json").await;
    if std::env::var_os("APL_PRINT_OPENAPI").is_some() {
        println!("{doc:#}");
    }
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().unwrap();
    let schemas = doc["components"]["schemas"].as_object().unwrap();

    // Exactly the operations of the contract.
    const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            let item = item.as_object().unwrap();
            METHODS.iter().filter(|m| item.contains_key(**m)).map(|m| (m.to_string(), path.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = OPERATIONS.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(OPERATIONS.len(), expected.len(), "an operation listed twice");
    let missing: Vec<_> = expected.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&expected).collect();
    assert!(missing.is_empty() && extra.is_empty(), "not documented: {missing:?}; not in the contract: {extra:?}");

    // Every documented operation is routed for its method.
    let mut checked = 0;
    for (method, path) in &documented {
        let concrete = path
            .replace("{id}", "nope")
            .replace("{rater}", "nope")
            .replace("{pair}", "nope")
            .replace("{check}", "nope");
        let r = s.anonymous().send(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(), &concrete).await;
        assert!(!r.message().starts_with("no API endpoint"), "{method} {path} is not routed");
        assert_ne!(r.status, 405, "{method} {path} is not routed for this method");
        checked += 1;
    }
    assert_eq!(checked, OPERATIONS.len());
    // And an undocumented path is not routed.
    assert!(s.anonymous().send(Method::GET, "/api/secret").await.message().starts_with("no API endpoint"));

    // Every $ref in the document points at a schema that exists.
    let text = doc.to_string();
    let refs: BTreeSet<&str> =
        text.split("\"#/components/schemas/").skip(1).map(|r| &r[..r.find('"').unwrap()]).collect();
    assert!(!refs.is_empty());
    // What the document gets wrong is collected, to be reported all at once.
    let mut defects: Vec<String> = refs
        .iter()
        .filter(|name| !schemas.contains_key(**name))
        .map(|name| format!("{name}: referenced, but not in components.schemas"))
        .collect();

    // Schemas come from the real types: a field of each shows up.
    let schema = |name: &str| &schemas[name];
    let refers = |v: &Value, to: &str| v.to_string().contains(&format!("\"#/components/schemas/{to}\""));
    assert!(refers(&schema("LabelRequest")["properties"]["choice"], "RaterChoice"), "{}", schema("LabelRequest"));
    assert!(refers(&schema("Job")["properties"]["progress"], "JobProgress"), "{}", schema("Job"));
    assert!(refers(&schema("Job")["properties"]["state"], "JobState"), "{}", schema("Job"));
    assert_eq!(schema("JobProgress")["properties"]["eta_seconds"]["type"], json!(["number", "null"]));
    let assignment = &schema("NextPair")["properties"]["assignment"];
    assert!(refers(assignment, "Assignment") && assignment.to_string().contains("null"), "may be null: {assignment}");
    assert!(refers(&schema("ProjectConfig")["properties"]["loop_settings"], "LoopSettings"));
    let sample = schema("EvalSample");
    assert_eq!(sample["properties"]["baseline"]["type"], "string", "{sample}");
    assert!(sample["properties"].get("reference").is_none(), "the old name is read, never written: {sample}");
    // Enums list their names as they travel (serde's spelling), in order.
    fn names<T: Serialize>(all: &[T]) -> Value {
        all.iter().map(|v| serde_json::to_value(v).unwrap()).collect()
    }
    let vocabularies = [
        ("Acquisition", names(Acquisition::ALL)),
        ("Choice", names(Choice::ALL)),
        ("JobKind", names(JobKind::ALL)),
        ("JobState", names(JobState::ALL)),
        ("LabelSource", names(LabelSource::ALL)),
        ("Labeller", names(Labeller::ALL)),
        ("Mode", names(Mode::ALL)),
        ("Outcome", names(Outcome::ALL)),
        ("PairKind", names(PairKind::ALL)),
        ("Split", names(Split::ALL)),
        ("Task", names(Task::ALL)),
        ("PromptFormat", names(PromptFormat::ALL)),
        ("AnswerMode", names(AnswerMode::ALL)),
        ("Disagreement", names(Disagreement::ALL)),
        ("JudgeOrder", names(JudgeOrder::ALL)),
        ("JudgeTask", names(JudgeTask::ALL)),
        (
            "RaterChoice",
            names(&[RaterChoice::Left, RaterChoice::Right, RaterChoice::Tie, RaterChoice::BothBad, RaterChoice::Skip]),
        ),
    ];
    for (name, want) in &vocabularies {
        let got = schemas.get(*name).map_or(&Value::Null, |s| &s["enum"]);
        if got != want {
            defects.push(format!("{name}: enum {got}, but on the wire {want}"));
        }
    }
    assert!(defects.is_empty(), "the document is wrong:\n{}", defects.join("\n"));
}
