//! The command line: `serve` (the main job) and quick checks of the model engine
//! (`generate`, `score`, `bench`, `check`), `experiment`, `judge` (try an LLM judge), plus
//! `assets` to fetch the offline data ahead of time.
//!
//! Every command takes the same model options, so any checkpoint the engine reads can be
//! tried from the terminal before it is used in a project.

pub mod bench;
pub mod check;
pub mod convert;
pub mod experiment;
pub mod generate;
pub mod judge;
pub mod remote;
pub mod score;
pub mod serve;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::assets;
use apl_engine::device::{describe, parse_device, parse_dtype};
use apl_engine::model::cpu::amx::set_products;
use apl_engine::model::{Checkpoint, Model, Tokenizer};
use apl_shared::settings::Products;

#[derive(Debug, Parser)]
#[command(name = "apl", version, about = "Active preference learning workbench: DPO with as few labels as possible")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the web server (the main job).
    Serve(serve::Args),
    /// Sample completions of a prompt.
    Generate(generate::Args),
    /// Log-probabilities of completions given a prompt.
    Score(score::Args),
    /// Measure sampling, scoring and DPO-step throughput.
    Bench(bench::Args),
    /// Check the engine's numerics on a device (e.g. a CUDA build on a GPU) against HF's values.
    Check(check::Args),
    /// Run an active preference learning experiment (acquisition functions x seeds x phases).
    Experiment(Box<experiment::Args>),
    /// Try an LLM judge on pairs with a known answer: accuracy, position bias, self-consistency.
    Judge(Box<judge::Args>),
    /// Write a checkpoint (e.g. the bundled GGUF) as an HF safetensors directory.
    Convert(convert::Args),
    /// Check a model server (vLLM, llama-cpp-python) against this engine: tokenisation, prompt
    /// log-probs, sampling and scoring agreement, time per stage.
    Remote(Box<remote::Args>),
    /// Fetch the default model and the IMDB data into the cache directory.
    Assets(CacheArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct CacheArgs {
    /// Where downloaded assets live [default: $XDG_CACHE_HOME/apl or ~/.cache/apl].
    #[arg(long, env = "APL_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl CacheArgs {
    pub fn dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(assets::default_cache_dir)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// HF checkpoint directory or .gguf file [default: SmolLM2-135M-Instruct, fetched on first use].
    #[arg(long, env = "APL_MODEL")]
    pub model: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "APL_DEVICE")]
    pub device: String,
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32", env = "APL_DTYPE")]
    pub dtype: String,
    /// Weights read when decoding up to 8 sequences at a time on the CPU: f32 (exact) or f16
    /// (an extra f16 copy: half the bytes per token, outputs within f16 rounding of the weights).
    #[arg(long, default_value = "f32", env = "APL_DECODE_WEIGHTS", value_parser = ["f32", "f16"])]
    pub decode_weights: String,
    /// Matrix products on the CPU: f32, or bf16 (operands rounded to bf16, sums in f32) on
    /// Intel AMX where the CPU has it (f32 elsewhere).
    /// [default: f32; a resumed experiment must be given its own again]
    #[arg(long, env = "APL_PRODUCTS")]
    pub products: Option<Products>,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// A model ready to use, with its tokenizer.
pub struct Loaded {
    pub checkpoint: Checkpoint,
    pub model: Model,
    pub tokenizer: Tokenizer,
}

impl ModelArgs {
    /// The model path: as given, or the bundled default (fetched if needed).
    pub fn path(&self) -> Result<PathBuf> {
        match &self.model {
            Some(p) => Ok(p.clone()),
            None => assets::ensure(&assets::SMOLLM2, &self.cache.dir()),
        }
    }

    pub fn load(&self) -> Result<Loaded> {
        let path = self.path()?;
        let device = parse_device(&self.device)?;
        if device.is_cpu() {
            set_up_cpu(&self.cache.dir(), self.model.is_none(), self.products.unwrap_or_default());
        }
        let dtype = parse_dtype(&self.dtype)?;
        let t = Instant::now();
        let checkpoint = Checkpoint::load(&path, dtype, &device)?;
        let mut model = Model::from_checkpoint(&checkpoint)?;
        if self.decode_weights == "f16" {
            model = model.with_half_weights(|_| false)?;
        }
        let tokenizer = checkpoint.tokenizer().context("the CLI needs a tokenizer")?.clone();
        tracing::info!(
            model = %path.display(),
            architecture = checkpoint.config.name(),
            params = checkpoint.num_params(),
            device = %describe(&device),
            ?dtype,
            secs = format!("{:.1}", t.elapsed().as_secs_f64()),
            "model loaded"
        );
        Ok(Loaded { checkpoint, model, tokenizer })
    }
}

/// The CPU's matrix products for this process: the cached OpenBLAS (`offer_cached_blas`) and
/// the chosen precision (bf16 only where the CPU runs it: said if not).
pub fn set_up_cpu(cache_dir: &std::path::Path, fetch_blas: bool, products: Products) {
    offer_cached_blas(cache_dir, fetch_blas);
    set_products(products);
    if products == Products::Bf16 && !apl_engine::model::cpu::amx::available() {
        tracing::warn!("--products bf16: this CPU has no AMX (or Linux refused it); products stay f32");
    }
}

/// Hands the OpenBLAS in the asset cache to the CPU matrix products, fetching it first when
/// `fetch` (the default model is in use, so PyPI is being asked anyway). Best effort: without
/// it products run on the gemm crate, or the system's OpenBLAS.
pub fn offer_cached_blas(cache_dir: &std::path::Path, fetch: bool) {
    if !assets::OPENBLAS_PLATFORM || std::env::var_os("APL_BLAS").is_some() {
        return;
    }
    let path = cache_dir.join(assets::OPENBLAS.file_name);
    let path = if path.exists() || !fetch {
        path
    } else {
        match assets::ensure(&assets::OPENBLAS, cache_dir) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("OpenBLAS not fetched ({e:#}); CPU matrix products use the fallback");
                return;
            }
        }
    };
    if path.exists() {
        apl_engine::model::cpu::blas::offer_library(path);
    }
}

pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("APL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(a) => serve::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Score(a) => score::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Check(a) => check::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Judge(a) => judge::run(*a),
        Command::Experiment(a) => experiment::run(*a),
        Command::Remote(a) => remote::run(*a),
        Command::Assets(a) => {
            let dir = a.dir();
            for asset in [&assets::SMOLLM2, &assets::IMDB] {
                println!("{}", assets::ensure(asset, &dir)?.display());
            }
            if assets::OPENBLAS_PLATFORM {
                println!("{}", assets::ensure(&assets::OPENBLAS, &dir)?.display());
            }
            Ok(())
        }
    }
}

/// A progress bar on stderr in the house style; hidden when stderr is not a terminal.
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}
