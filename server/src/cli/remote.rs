//! `apl remote`: a model server checked against this engine before a loop runs on it. The
//! backend's own checks (tokenisation, prompt log-probs), then the loop's two questions asked
//! of both: IMDB prompts sampled on the server (every row its length, the same seed the same
//! samples, another seed others) with the generated tokens' log-probs compared to this engine's
//! scoring of the same tokens, and the samples scored on the server against this engine, token
//! by token; with the time each took on each side. Its output is what a user (or the closing
//! note of a remote-backend change) quotes as the server's agreement figures.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use super::ModelArgs;
use crate::assets;
use crate::judge::destination::Destinations;
use crate::remote::{Remote, RemoteError};
use apl_engine::backend::{Local, ModelBackend, Role, SampleJob};
use apl_engine::data::imdb;
use apl_engine::model::{Sample, sequence_logprobs};
use apl_shared::settings::{RemoteBackend, ServerKind};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server's OpenAI-compatible API up to the version: http://127.0.0.1:8000/v1.
    #[arg(long)]
    pub base_url: String,
    /// The served model's name on the server.
    #[arg(long)]
    pub served_model: String,
    /// vllm or llama_cpp_python.
    #[arg(long, default_value = "vllm")]
    pub server: ServerKind,
    /// The environment variable holding the server's API key (ends in API_KEY).
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// The same model here, to compare with (its tokenizer is the one checked).
    #[command(flatten)]
    pub model: ModelArgs,
    /// IMDB prompts sampled.
    #[arg(long, default_value_t = 32)]
    pub prompts: usize,
    #[arg(long, default_value_t = 2)]
    pub per_prompt: usize,
    /// Completion length (exact: end-of-sequence suppressed).
    #[arg(long, default_value_t = 16)]
    pub tokens: usize,
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Prompts per request (vLLM).
    #[arg(long, default_value_t = 32)]
    pub rows_per_request: usize,
    #[arg(long)]
    pub json: bool,
}

/// |remote - local| per token.
#[derive(Debug, Default, Serialize)]
pub struct Agreement {
    pub rows: usize,
    pub tokens: usize,
    pub mean_abs: f64,
    pub p99_abs: f64,
    pub max_abs: f64,
}

impl Agreement {
    fn of(pairs: impl Iterator<Item = (f32, f32)>, rows: usize) -> Self {
        let mut d: Vec<f64> = pairs.map(|(a, b)| (a as f64 - b as f64).abs()).collect();
        d.sort_by(f64::total_cmp);
        let mean_abs = if d.is_empty() { f64::NAN } else { d.iter().sum::<f64>() / d.len() as f64 };
        let p99_abs = d.get((d.len() * 99 / 100).min(d.len().saturating_sub(1))).copied().unwrap_or(f64::NAN);
        Self { rows, tokens: d.len(), mean_abs, p99_abs, max_abs: d.last().copied().unwrap_or(f64::NAN) }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub server: String,
    pub tokenisation: Option<String>,
    /// The prompt log-probs probe: accepted with (d_same, d_next), or the refusal.
    pub prompt_logprobs: Option<String>,
    pub d_same: Option<f64>,
    pub d_next: Option<f64>,
    pub rows: usize,
    /// Rows whose server tokens count their length.
    pub rows_of_length: usize,
    /// Rows whose tokens are the server's own (text servers map token texts back to ids).
    pub rows_with_server_tokens: usize,
    pub rerun_identical: usize,
    pub other_seed_identical: usize,
    /// The server's generated-token log-probs against this engine's scoring of them.
    pub sampled_vs_local: Agreement,
    /// The server's scores of the samples against this engine's.
    pub scored_vs_local: Option<Agreement>,
    pub remote_sampling_seconds: f64,
    pub local_sampling_seconds: f64,
    pub remote_scoring_seconds: Option<f64>,
    pub local_scoring_seconds: f64,
}

pub fn run(a: Args) -> Result<()> {
    let m = a.model.load()?;
    let settings = RemoteBackend {
        base_url: a.base_url.clone(),
        model: a.served_model.clone(),
        api_key_env: a.api_key_env.clone(),
        server: a.server,
        concurrency: a.concurrency,
        rows_per_request: a.rows_per_request,
        ..Default::default()
    };
    let key = match &a.api_key_env {
        Some(name) => Some(std::env::var(name).with_context(|| format!("{name} is not set"))?),
        None => None,
    };
    // The operator's own command: any destination.
    let remote = Remote::new(settings, key, m.tokenizer.clone(), Arc::new(Destinations::any()))?;
    let mut r = Report { server: format!("{} at {}", a.server.name(), a.base_url), ..Default::default() };

    let outcome = |res: Result<String, RemoteError>| match res {
        Ok(s) => s,
        Err(e) => format!("refused: {e}"),
    };
    r.tokenisation = Some(outcome(remote.check_tokenisation().map(|n| format!("ok: {n} probe texts tokenised alike"))));
    let probe = remote.check_prompt_logprobs();
    if let Ok(c) = &probe {
        (r.d_same, r.d_next) = (Some(c.d_same), Some(c.d_next));
    }
    let scoring_ok = probe.is_ok();
    r.prompt_logprobs = Some(outcome(probe.map(|c| {
        let late = if c.d_next.is_finite() { format!("{:.3}", c.d_next) } else { "no alternative in common".into() };
        format!("ok: mean |Δ log p| {:.2e} against the next-token answers ({late} one position late)", c.d_same)
    })));

    let reviews = imdb::read_reviews(&assets::ensure(&assets::IMDB, &a.model.cache.dir())?)?;
    let prompts: Vec<imdb::Prompt> =
        imdb::prompts(&reviews, &m.tokenizer, 200, (8, 16), a.seed)?.into_iter().take(a.prompts).collect();
    let ids: Vec<&[u32]> = prompts.iter().map(|p| p.ids.as_slice()).collect();
    let lengths = vec![a.tokens; ids.len() * a.per_prompt];
    let job = |seed| SampleJob {
        prompts: &ids,
        per_prompt: a.per_prompt,
        lengths: &lengths,
        exact_length: true,
        temperature: a.temperature,
        max_new_tokens: a.tokens,
        seed,
        batch_size: 32,
        pass_seed: |s, c| s.wrapping_add(c as u64),
    };
    let bar = |what: &'static str| move |d: usize, n: usize| eprint!("\r{what}: {d}/{n}   ");
    let t = Instant::now();
    let server = remote.serving(None);
    let samples = server.sample(Role::Reference, &job(a.seed), &bar("remote samples"))?;
    r.remote_sampling_seconds = t.elapsed().as_secs_f64();
    let again = server.sample(Role::Reference, &job(a.seed), &bar("same seed"))?;
    let other = server.sample(Role::Reference, &job(a.seed + 1), &bar("next seed"))?;
    let local = Local::model(&m.model, m.tokenizer.eos_ids());
    let t = Instant::now();
    local.sample(Role::Reference, &job(a.seed), &bar("local samples"))?;
    r.local_sampling_seconds = t.elapsed().as_secs_f64();
    eprintln!();

    r.rows = samples.len();
    r.rows_of_length = samples.iter().filter(|s| s.logprobs.len() == a.tokens).count();
    let same = |x: &[Sample]| samples.iter().zip(x).filter(|(p, q)| p.tokens == q.tokens).count();
    (r.rerun_identical, r.other_seed_identical) = (same(&again), same(&other));
    let own: Vec<(usize, &Sample)> =
        samples.iter().enumerate().filter(|(_, s)| s.tokens.len() == s.logprobs.len()).collect();
    r.rows_with_server_tokens = own.len();
    let rows: Vec<(&[u32], &[u32])> = own.iter().map(|(i, s)| (ids[i / a.per_prompt], s.tokens.as_slice())).collect();
    let t = Instant::now();
    let scored = sequence_logprobs(&m.model, &rows, 16, |_| {})?;
    r.local_scoring_seconds = t.elapsed().as_secs_f64();
    let pairs =
        own.iter().zip(&scored).flat_map(|((_, s), l)| s.logprobs.iter().copied().zip(l.tokens.iter().copied()));
    r.sampled_vs_local = Agreement::of(pairs, rows.len());

    if scoring_ok {
        let t = Instant::now();
        let theirs = remote.token_logprobs(&a.served_model, &rows, &bar("remote scores"))?;
        r.remote_scoring_seconds = Some(t.elapsed().as_secs_f64());
        eprintln!();
        let pairs = theirs.iter().zip(&scored).flat_map(|(t, l)| t.iter().copied().zip(l.tokens.iter().copied()));
        r.scored_vs_local = Some(Agreement::of(pairs, rows.len()));
    }

    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    let agree = |g: &Agreement| {
        if g.tokens == 0 {
            return "no rows to compare (none has the server's own tokens)".to_string();
        }
        format!(
            "mean |Δ log p| {:.2e}, p99 {:.2e}, max {:.2e} over {} tokens of {} rows",
            g.mean_abs, g.p99_abs, g.max_abs, g.tokens, g.rows
        )
    };
    writeln!(out, "server:            {}", r.server)?;
    writeln!(out, "tokenisation:      {}", r.tokenisation.as_deref().unwrap_or(""))?;
    writeln!(out, "prompt log-probs:  {}", r.prompt_logprobs.as_deref().unwrap_or(""))?;
    writeln!(
        out,
        "sampling:          {} rows, {} of {} tokens, {} with the server's own token ids; same seed: {} identical, next seed: {} identical",
        r.rows, r.rows_of_length, a.tokens, r.rows_with_server_tokens, r.rerun_identical, r.other_seed_identical
    )?;
    writeln!(out, "sampled log-probs: {} (against this engine's scoring)", agree(&r.sampled_vs_local))?;
    match &r.scored_vs_local {
        Some(g) => writeln!(out, "scores:            {} (against this engine's)", agree(g))?,
        None => writeln!(out, "scores:            not asked (the prompt log-probs probe refused the server)")?,
    }
    writeln!(
        out,
        "time:              sampling {:.2} s remote, {:.2} s here; scoring {} remote, {:.2} s here",
        r.remote_sampling_seconds,
        r.local_sampling_seconds,
        r.remote_scoring_seconds.map_or("-".into(), |s| format!("{s:.2} s")),
        r.local_scoring_seconds
    )?;
    Ok(())
}
