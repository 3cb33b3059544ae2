//! Starts the real router on port 0 over a tiny random-weight Llama (the committed parity
//! fixture), a six-review CSV and a fresh database: a temporary SQLite file, or, when
//! `APL_TEST_DATABASE_URL` names a PostgreSQL server, a new database created on it for this
//! test alone. Tests call [`backends`] and run once per backend.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use apl::api::{AppState, app};
use apl::store::Store;
use apl::store::tokens::ensure_admin;
use apl::worker::{Worker, WorkerParts};
use apl_engine::data::imdb;
use apl_engine::model::{Checkpoint, Model, SamplingConfig};
use apl_shared::{Health, Project, RaterInvite};
use candle_core::{DType, Device};
use serde_json::{Value, json};

pub const ADMIN: &str = "test-admin-token-0123456789";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The database backends to run against: SQLite always, PostgreSQL when configured.
pub fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Sqlite];
    if let Ok(url) = std::env::var("APL_TEST_DATABASE_URL")
        && !url.is_empty()
    {
        v.push(Backend::Postgres(url));
    }
    v
}

/// Runs `f` once per backend, saying which.
pub async fn each_backend<F, Fut>(f: F)
where
    F: Fn(Backend) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for b in backends() {
        eprintln!("backend: {b:?}");
        f(b).await;
    }
}

#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

pub struct Server {
    pub base: String,
    pub store: Arc<Store>,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
}

/// A fresh database URL for `b` (a new PostgreSQL database, or an SQLite file in `dir`).
pub async fn fresh_database(b: &Backend, dir: &Path) -> String {
    match b {
        Backend::Sqlite => dir.join("apl.sqlite").display().to_string(),
        Backend::Postgres(url) => {
            sqlx::any::install_default_drivers();
            let name = format!("apl_test_{}", uuid_like());
            let admin = sqlx::AnyPool::connect(url).await.expect("APL_TEST_DATABASE_URL reachable");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
            admin.close().await;
            let (head, _) = url.rsplit_once('/').expect("a database URL ends in /dbname");
            format!("{head}/{name}")
        }
    }
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{n:x}{:x}", std::process::id())
}

pub struct Options {
    pub dist: Option<PathBuf>,
    /// Run the job worker in this server.
    pub worker: bool,
    pub max_new_tokens: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { dist: None, worker: true, max_new_tokens: 6 }
    }
}

pub async fn start(b: &Backend, opts: Options) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let ck = Checkpoint::load(&root().join("engine/tests/fixtures/llama"), DType::F32, &Device::Cpu).unwrap();
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
    let sampling = SamplingConfig { max_new_tokens: opts.max_new_tokens, ..Default::default() };
    let worker = Arc::new(Worker::new(WorkerParts {
        checkpoint: ck.clone(),
        model,
        tokenizer: tok,
        prompts,
        reviews,
        sampling,
        data_dir: dir.path().to_path_buf(),
        secrets_file: None,
    }));
    let url = fresh_database(b, dir.path()).await;
    let store = Arc::new(Store::connect(&url).await.unwrap());
    ensure_admin(&store, Some(ADMIN), false).await.unwrap();
    if opts.worker {
        tokio::spawn(worker.clone().run_jobs(store.clone(), matches!(b, Backend::Sqlite)));
    }
    let state = AppState { store: store.clone(), worker, health: Arc::new(health), dist: opts.dist };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app(state)).await.unwrap() });
    apl::judge::install_crypto();
    Server { base: format!("http://{addr}"), store, client: reqwest::Client::new(), dir }
}

/// A request's status and JSON body (Null when the body is not JSON).
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }

    #[track_caller]
    pub fn ok(self) -> Value {
        assert!((200..300).contains(&self.status), "{}: {}", self.status, self.text);
        self.body
    }
}

impl Server {
    /// The base URL, keeping the server's files for the rest of the test process.
    pub fn base_leaked(self) -> String {
        let b = self.base.clone();
        std::mem::forget(self);
        b
    }

    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.client.request(m, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        Reply { status, body: serde_json::from_str(&text).unwrap_or(Value::Null), text }
    }

    pub async fn raw(&self, method: &str, path: &str, token: Option<&str>, body: Vec<u8>, ctype: &str) -> Reply {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.client.request(m, format!("{}{path}", self.base)).header("content-type", ctype).body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        Reply { status, body: serde_json::from_str(&text).unwrap_or(Value::Null), text }
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.call(method, path, Some(ADMIN), body).await
    }

    pub async fn project(&self, name: &str, config: Value) -> Project {
        let body = json!({"name": name, "task": "generic", "config": config});
        serde_json::from_value(self.admin("POST", "/api/projects", Some(body)).await.ok()).unwrap()
    }

    pub async fn rater(&self, project: &str, name: &str) -> String {
        let r = self.admin("POST", &format!("/api/projects/{project}/raters"), Some(json!({"name": name}))).await;
        let inv: RaterInvite = serde_json::from_value(r.ok()).unwrap();
        inv.token
    }

    /// Imports `n` TRL pairs (chosen "good i", rejected "bad i") for raters.
    pub async fn trl_pairs(&self, project: &str, n: usize, query: &str) -> Value {
        let body: String = (0..n)
            .map(|i| {
                json!({"prompt": format!("Prompt {i}"), "chosen": format!("good {i}"), "rejected": format!("bad {i}")})
                    .to_string()
                    + "\n"
            })
            .collect();
        self.raw(
            "POST",
            &format!("/api/projects/{project}/pairs?format=trl&{query}"),
            Some(ADMIN),
            body.into_bytes(),
            "application/x-ndjson",
        )
        .await
        .ok()
    }
}
