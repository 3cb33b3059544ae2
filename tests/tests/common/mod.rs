//! Starts the real router on port 0 over a tiny random-weight Llama (the committed parity
//! fixture), a six-review CSV and a fresh database: a temporary SQLite file, or, when
//! `APL_TEST_DATABASE_URL` names a PostgreSQL server, a new database created on it for this
//! test alone. Tests that run on both backends are written with [`backend_test!`].
//!
//! Requests are built from the `shared` types and replies decoded into them ([`Caller`]'s
//! `get`, `post`, `put`, ...); [`Reply`] keeps a reply's status and text for the tests that are
//! about the wire itself (refusals and their messages).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apl::api::{AppState, app};
use apl::store::Store;
use apl::store::tokens::ensure_admin;
use apl::worker::{Worker, WorkerParts};
use apl_engine::data::imdb;
use apl_engine::model::{Checkpoint, Model, SamplingConfig};
use apl_shared::{
    ApiError, Assignment, Health, ImportReport, Job, JobKind, JobParams, LabelRequest, NewJob, NewProject, NewRater,
    NextPair, Project, ProjectConfig, ProjectDetail, ProjectStats, RaterChoice, RaterInvite, Split, Task,
};
use candle_core::{DType, Device};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub const ADMIN: &str = "test-admin-token-0123456789";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The PostgreSQL server to test against, if `APL_TEST_DATABASE_URL` names one.
pub fn postgres_url() -> Option<String> {
    std::env::var("APL_TEST_DATABASE_URL").ok().filter(|url| !url.is_empty())
}

/// Declares the tests of `async fn NAME(b: Backend)`, one per database backend, in a module
/// named after it: `NAME::sqlite` and `NAME::postgres` (the latter passes with a note on stderr
/// when `APL_TEST_DATABASE_URL` is unset). A failure names its backend, and one backend's
/// failure does not hide the other's result. What follows the name configures `#[tokio::test]`.
///
/// ```ignore
/// backend_test!(a_round_runs, flavor = "multi_thread", worker_threads = 2);
/// async fn a_round_runs(b: Backend) {
///     let s = common::start(&b, Default::default()).await;
///     // ...
/// }
/// ```
#[macro_export]
macro_rules! backend_test {
    ($name:ident $(,)?) => {
        $crate::backend_test!(@tests $name, #[tokio::test]);
    };
    ($name:ident, $($config:tt)+) => {
        $crate::backend_test!(@tests $name, #[tokio::test($($config)+)]);
    };
    (@tests $name:ident, #[$test:meta]) => {
        mod $name {
            #[$test]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }

            #[$test]
            async fn postgres() {
                match $crate::common::postgres_url() {
                    Some(url) => super::$name($crate::common::Backend::Postgres(url)).await,
                    None => eprintln!("SKIPPED {}::postgres: APL_TEST_DATABASE_URL is not set", stringify!($name)),
                }
            }
        }
    };
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
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    // Two tests of one process may start in the same nanosecond tick: a counter keeps them apart.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{n:x}{:x}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

pub struct Options {
    pub dist: Option<PathBuf>,
    /// Run the job worker in this server.
    pub worker: bool,
    pub max_new_tokens: usize,
    /// `apl serve --judge-allow`: the tests' scripted judges listen on 127.0.0.1.
    pub judge_allow: Vec<apl::judge::destination::Allow>,
    /// `apl serve --secrets-file`.
    pub secrets_file: Option<PathBuf>,
    /// `apl serve --max-import-rows`.
    pub max_import_rows: usize,
    /// `apl serve --trainer-commands`.
    pub trainer_commands: std::collections::BTreeMap<String, String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dist: None,
            worker: true,
            max_new_tokens: 6,
            judge_allow: vec!["127.0.0.1".parse().unwrap()],
            secrets_file: None,
            max_import_rows: 1_000_000,
            trainer_commands: Default::default(),
        }
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
        secrets_file: opts.secrets_file,
        judge_destinations: Arc::new(apl::judge::destination::Destinations::public_and(opts.judge_allow)),
        trainer_commands: opts.trainer_commands,
    }));
    let url = fresh_database(b, dir.path()).await;
    let store = Arc::new(Store::connect(&url).await.unwrap());
    ensure_admin(&store, Some(ADMIN), false).await.unwrap();
    if opts.worker {
        tokio::spawn(worker.clone().run_jobs(store.clone(), matches!(b, Backend::Sqlite)));
    }
    let state = AppState {
        store: store.clone(),
        worker,
        health: Arc::new(health),
        dist: opts.dist,
        auth_limit: Default::default(),
        max_import_rows: opts.max_import_rows,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = app(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
    apl::judge::install_crypto();
    Server { base: format!("http://{addr}"), store, client: reqwest::Client::new(), dir }
}

/// A reply as it came over the wire: its status and its body's text.
#[derive(Debug)]
pub struct Reply {
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub text: String,
}

impl Reply {
    /// The message of a refusal (the API's [`ApiError`]); empty when the body is not one.
    pub fn message(&self) -> String {
        serde_json::from_str::<ApiError>(&self.text).map(|e| e.message).unwrap_or_default()
    }

    /// Asserts a 2xx status.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!((200..300).contains(&self.status), "{} {}: {}: {}", self.method, self.path, self.status, self.text);
        self
    }

    /// The body decoded as `T`.
    #[track_caller]
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!("{} {}: not a {}: {e}: {}", self.method, self.path, std::any::type_name::<T>(), self.text)
        })
    }

    /// Asserts `status` and decodes the body as `T`.
    #[track_caller]
    pub fn expect<T: DeserializeOwned>(self, status: u16) -> T {
        assert_eq!(self.status, status, "{} {}: {}", self.method, self.path, self.text);
        self.json()
    }
}

/// Requests made with one token (or none).
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    server: &'a Server,
    token: Option<&'a str>,
}

impl Caller<'_> {
    fn request(&self, method: &Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.server.client.request(method.clone(), format!("{}{path}", self.server.base));
        match self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn reply(method: Method, path: &str, r: reqwest::RequestBuilder) -> Reply {
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        Reply { method, path: path.to_string(), status, text: resp.text().await.unwrap() }
    }

    /// A request without a body.
    pub async fn send(&self, method: Method, path: &str) -> Reply {
        let r = self.request(&method, path);
        Self::reply(method, path, r).await
    }

    /// A request with `body` as JSON.
    pub async fn send_json<B: Serialize + ?Sized>(&self, method: Method, path: &str, body: &B) -> Reply {
        let r = self.request(&method, path).json(body);
        Self::reply(method, path, r).await
    }

    /// A request with a raw body (an upload).
    pub async fn upload(&self, path: &str, body: Vec<u8>, content_type: &str) -> Reply {
        let r = self.request(&Method::POST, path).header("content-type", content_type).body(body);
        Self::reply(Method::POST, path, r).await
    }

    /// `GET`, expecting success.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> T {
        self.send(Method::GET, path).await.ok().json()
    }

    /// `POST` of `body`, expecting success.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> T {
        self.send_json(Method::POST, path, body).await.ok().json()
    }

    /// `POST` without a body, expecting success.
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> T {
        self.send(Method::POST, path).await.ok().json()
    }

    /// `PUT` of `body`, expecting success.
    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> T {
        self.send_json(Method::PUT, path, body).await.ok().json()
    }

    /// `DELETE`, expecting success with a body.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> T {
        self.send(Method::DELETE, path).await.ok().json()
    }
}

/// A line of a JSONL prompt upload.
#[derive(Serialize)]
struct PromptLine<'a> {
    prompt: &'a str,
}

/// A line of a TRL preference upload.
#[derive(Serialize)]
struct TrlLine {
    prompt: String,
    chosen: String,
    rejected: String,
}

/// A request body built from its type, for tables of bodies some of which the types cannot
/// express (those about malformed requests).
pub fn typed<T: Serialize>(body: &T) -> serde_json::Value {
    serde_json::to_value(body).unwrap()
}

/// Decodes each line of a JSONL file.
#[track_caller]
pub fn jsonl<T: DeserializeOwned>(text: &str) -> Vec<T> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a {}: {e}: {l}", std::any::type_name::<T>())))
        .collect()
}

impl Server {
    /// The base URL, keeping the server's files for the rest of the test process.
    pub fn base_leaked(self) -> String {
        let b = self.base.clone();
        std::mem::forget(self);
        b
    }

    /// Requests with the admin token.
    pub fn admin(&self) -> Caller<'_> {
        Caller { server: self, token: Some(ADMIN) }
    }

    /// Requests with `token` (a rater's, or a wrong one).
    pub fn with_token<'a>(&'a self, token: &'a str) -> Caller<'a> {
        Caller { server: self, token: Some(token) }
    }

    /// Requests without a token.
    pub fn anonymous(&self) -> Caller<'_> {
        Caller { server: self, token: None }
    }

    /// `GET` as the admin, expecting success.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> T {
        self.admin().get(path).await
    }

    /// `POST` as the admin, expecting success.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> T {
        self.admin().post(path, body).await
    }

    pub async fn project(&self, name: &str, config: ProjectConfig) -> Project {
        let body = NewProject { name: name.into(), task: Task::Generic, config: Some(config) };
        self.admin().send_json(Method::POST, "/api/projects", &body).await.expect(201)
    }

    pub async fn detail(&self, project: &str) -> ProjectDetail {
        self.get(&format!("/api/projects/{project}")).await
    }

    pub async fn stats(&self, project: &str) -> ProjectStats {
        self.detail(project).await.stats
    }

    /// A new rater's invite (their id and token).
    pub async fn invite(&self, project: &str, name: &str) -> RaterInvite {
        let body = NewRater { name: name.into(), ..Default::default() };
        self.admin().send_json(Method::POST, &format!("/api/projects/{project}/raters"), &body).await.expect(201)
    }

    /// A new rater's token.
    pub async fn rater(&self, project: &str, name: &str) -> String {
        self.invite(project, name).await.token
    }

    /// Imports `n` TRL pairs (chosen "good i", rejected "bad i"); `query` says what they are for
    /// (`rate=true`, `gold=true`).
    pub async fn trl_pairs(&self, project: &str, n: usize, query: &str) -> ImportReport {
        // New texts on every call: an import of a pair the project holds adds nothing.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let first = NEXT.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        let body: String = (first..first + n)
            .map(|i| {
                let line = TrlLine {
                    prompt: format!("Prompt {i}"),
                    chosen: format!("good {i}"),
                    rejected: format!("bad {i}"),
                };
                serde_json::to_string(&line).unwrap() + "\n"
            })
            .collect();
        let path = format!("/api/projects/{project}/pairs?format=trl&{query}");
        self.admin().upload(&path, body.into_bytes(), "application/x-ndjson").await.expect(201)
    }

    /// Imports `prompts` into `split` as a JSONL file.
    pub async fn prompts(&self, project: &str, split: Split, prompts: &[String]) -> ImportReport {
        let body: String =
            prompts.iter().map(|p| serde_json::to_string(&PromptLine { prompt: p }).unwrap() + "\n").collect();
        let path = format!("/api/projects/{project}/prompts?format=jsonl&split={split}");
        let report: ImportReport = self.admin().upload(&path, body.into_bytes(), "text/plain").await.expect(201);
        assert_eq!(report.imported, prompts.len());
        report
    }

    /// Queues a job.
    pub async fn job(&self, project: &str, kind: JobKind, params: JobParams) -> Job {
        let path = format!("/api/projects/{project}/jobs");
        self.admin().send_json(Method::POST, &path, &NewJob { kind, params }).await.expect(201)
    }

    /// Polls a job until it ends.
    pub async fn wait(&self, job: &str) -> Job {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let j: Job = self.get(&format!("/api/jobs/{job}")).await;
            if j.state.is_finished() {
                return j;
            }
            assert!(Instant::now() < deadline, "job {job} did not end: {j:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads a job's event stream to its end; returns every job state sent. The framing is
    /// checked on the wire (`event: job`, `data: ...`); each event's data is a [`Job`].
    pub async fn watch(&self, job: &str) -> Vec<Job> {
        let mut resp =
            self.client.get(format!("{}/api/jobs/{job}/events?access_token={ADMIN}", self.base)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let mut buf = String::new();
        let mut events = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        while let Some(chunk) =
            tokio::time::timeout_at(deadline.into(), resp.chunk()).await.expect("job ends in time").unwrap()
        {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                    assert!(block.contains("event: job"), "{block}");
                    events.push(serde_json::from_str(data).unwrap_or_else(|e| panic!("not a job: {e}: {data}")));
                }
            }
        }
        events
    }

    /// The rater's current pair (`POST /api/rate/next`), or none left.
    pub async fn next(&self, token: &str) -> Option<Assignment> {
        self.with_token(token).post_empty::<NextPair>("/api/rate/next").await.assignment
    }

    /// A rater's answer on `pair`, as the reply came.
    pub async fn label(&self, token: &str, pair: &str, choice: RaterChoice) -> Reply {
        let body = LabelRequest { pair: pair.into(), choice, time_ms: 1500, rationale: None, next: false };
        self.with_token(token).send_json(Method::POST, "/api/rate/labels", &body).await
    }

    /// The DPO export (`source` none: the server's default, human labels).
    pub async fn dpo(&self, project: &str, source: Option<apl_shared::LabelSource>) -> Vec<apl_shared::DpoLine> {
        let query = source.map(|s| format!("?source={s}")).unwrap_or_default();
        let r = self.admin().send(Method::GET, &format!("/api/projects/{project}/export/dpo.jsonl{query}")).await;
        // Nothing to export is a 404 that says why, not an empty file.
        if r.status == 404 && r.message().starts_with("no preferences") {
            return Vec::new();
        }
        jsonl(&r.ok().text)
    }

    /// The votes export.
    pub async fn votes(&self, project: &str) -> Vec<apl_shared::Vote> {
        let r = self.admin().send(Method::GET, &format!("/api/projects/{project}/export/votes.jsonl")).await.ok();
        jsonl(&r.text)
    }
}

/// Settings small enough for the tiny model: 4 pairs a round, 2 epochs, 4 evaluation prompts.
pub fn tiny(labeller: apl_shared::Labeller) -> ProjectConfig {
    use apl_shared::settings::{AcquireConfig, AdamConfig, EvalSettings, LoopSettings, TrainConfig, Trainable};
    use apl_shared::{Acquisition, Labeller, RatingConfig};
    ProjectConfig {
        rating: RatingConfig { overlap: 2, ..Default::default() },
        loop_settings: LoopSettings {
            acquisition: Acquisition::Certainty,
            pairs_per_round: 4,
            acquire: AcquireConfig { over_generate: 2, batch_size: 8, ..Default::default() },
            completion_tokens: (3, 5),
            labeller,
            trainable: Trainable::All,
            train: TrainConfig {
                epochs: 2,
                pairs_per_step: 2,
                micro_batch: 2,
                adam: AdamConfig { lr: 1e-3, ..Default::default() },
                ..Default::default()
            },
            eval: EvalSettings { prompts: 4, judge: Labeller::Length, batch_size: 4, ..Default::default() },
            ..Default::default()
        },
    }
}
