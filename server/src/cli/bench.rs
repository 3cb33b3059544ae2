//! `apl bench`: throughput of the three things the learning loop spends its time on, with the
//! same shapes and definitions as the peer scripts (../shared/peers/torch_cpu.py,
//! llamacpp_cpu.py) so the numbers can be set side by side:
//!
//! - `sample_b1`, `sample_b32`: prompt 64 random tokens, 64 new tokens at temperature 1 (EOS
//!   suppressed so every row runs full length); tok/s = batch * new / wall time, prefill included.
//! - `score`: 64 sequences x 128 tokens, sum of next-token log-probs (127 per sequence), no
//!   gradient, micro-batches of 8; seq/s.
//! - `dpo`: 8 pairs x 128 tokens (prompt 64 + completion 64, chosen and rejected in one batch
//!   of 16): reference log-probs without gradient, policy forward + backward, AdamW step;
//!   (this project's fused AdamW) pairs/s, with the time of each part (the step with cached reference log-probs is the
//!   total minus the reference part).
//!
//! Medians over `--reps` after `--warmup`; a table on stdout and, with `--json`, a JSON file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::ModelArgs;
use crate::model::logprobs::batch_logprobs;
use crate::model::{Model, SampleRequest, SamplingConfig, sample, sequence_logprobs};
use crate::train::optim::{Adam, AdamConfig};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Which benches, comma-separated: sample_b1, sample_b32, score, dpo.
    #[arg(long, default_value = "sample_b1,sample_b32,score,dpo")]
    pub benches: String,
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, default_value_t = 64)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    #[arg(long, default_value_t = 64)]
    pub score_n: usize,
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 8)]
    pub score_mb: usize,
    #[arg(long, default_value_t = 8)]
    pub dpo_pairs: usize,
    #[arg(long, default_value_t = 64)]
    pub dpo_prompt_len: usize,
    #[arg(long, default_value_t = 1e-6)]
    pub lr: f64,
    /// Write the results here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct BenchResult {
    bench: String,
    unit: &'static str,
    work_per_rep: f64,
    median: f64,
    min: f64,
    max: f64,
    median_s: f64,
    times_s: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    breakdown_median_s: Option<serde_json::Value>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

/// Times `f` (after warm-up) and summarises `work / seconds`.
fn measure(
    name: &str,
    unit: &'static str,
    work: f64,
    warmup: usize,
    reps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<BenchResult> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let rates: Vec<f64> = times.iter().map(|t| work / t).collect();
    let r = BenchResult {
        bench: name.to_string(),
        unit,
        work_per_rep: work,
        median: median(&rates),
        min: rates.iter().copied().fold(f64::INFINITY, f64::min),
        max: rates.iter().copied().fold(0.0, f64::max),
        median_s: median(&times),
        times_s: times,
        breakdown_median_s: None,
    };
    eprintln!(
        "  {:<14} {:>10.2} {:<8} (min {:.2}, max {:.2}; median {:.3} s/rep, {} reps)",
        r.bench, r.median, unit, r.min, r.max, r.median_s, reps
    );
    Ok(r)
}

pub fn run(a: Args) -> Result<()> {
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let benches: Vec<&str> = a.benches.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    for b in &benches {
        if !["sample_b1", "sample_b32", "score", "dpo"].contains(b) {
            bail!("unknown bench {b:?} (sample_b1, sample_b32, score, dpo)");
        }
    }
    let m = a.model.load()?;
    let vocab = m.model.vocab_size() as u32;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut ids = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(3..vocab)).collect() };
    eprintln!(
        "apl bench: {} ({} params), {:?} on {}",
        m.checkpoint.source.display(),
        m.checkpoint.num_params(),
        m.model.dtype(),
        crate::device::describe(m.model.device())
    );
    let mut results = Vec::new();

    for b in [1usize, 32] {
        let name = format!("sample_b{b}");
        if !benches.contains(&name.as_str()) {
            continue;
        }
        let prompts: Vec<Vec<u32>> = (0..b).map(|_| ids(a.prompt_len)).collect();
        let reqs: Vec<SampleRequest> = prompts.iter().map(|p| SampleRequest::new(p)).collect();
        let cfg = SamplingConfig {
            temperature: 1.0,
            max_new_tokens: a.new_tokens,
            min_new_tokens: a.new_tokens,
            ..Default::default()
        };
        let eos = m.tokenizer.eos_ids().to_vec();
        let work = (b * a.new_tokens) as f64;
        results.push(measure(&name, "tok/s", work, a.warmup, a.reps, || {
            let out = sample(&m.model, &reqs, &cfg, &eos, |_| {})?;
            debug_assert!(out.iter().all(|s| s.tokens.len() == cfg.max_new_tokens));
            Ok(())
        })?);
    }

    if benches.contains(&"score") {
        let seqs: Vec<Vec<u32>> = (0..a.score_n).map(|_| ids(a.seq_len)).collect();
        let pairs: Vec<(&[u32], &[u32])> = seqs.iter().map(|s| s.split_at(1)).collect();
        let name = format!("score_{}x{}", a.score_n, a.seq_len);
        results.push(measure(&name, "seq/s", a.score_n as f64, a.warmup, a.reps, || {
            sequence_logprobs(&m.model, &pairs, a.score_mb, |_| {})?;
            Ok(())
        })?);
    }

    if benches.contains(&"dpo") {
        results.push(dpo(&a, &m, &mut ids)?);
    }

    println!("\n| bench | median | min | max | unit | s/rep (median) |");
    println!("|---|---|---|---|---|---|");
    for r in &results {
        println!("| {} | {:.2} | {:.2} | {:.2} | {} | {:.3} |", r.bench, r.median, r.min, r.max, r.unit, r.median_s);
    }
    if let Some(path) = &a.json {
        let meta = serde_json::json!({
            "tool": "apl bench",
            "version": env!("CARGO_PKG_VERSION"),
            "model": m.checkpoint.source.display().to_string(),
            "params": m.checkpoint.num_params(),
            "dtype": format!("{:?}", m.model.dtype()),
            "device": crate::device::describe(m.model.device()),
        });
        std::fs::write(path, serde_json::to_string_pretty(&serde_json::json!({"meta": meta, "results": results}))?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn dpo(a: &Args, m: &super::Loaded, ids: &mut impl FnMut(usize) -> Vec<u32>) -> Result<BenchResult> {
    let p = a.dpo_pairs;
    let comp = a.seq_len - a.dpo_prompt_len;
    let prompts: Vec<Vec<u32>> = (0..p).map(|_| ids(a.dpo_prompt_len)).collect();
    let chosen: Vec<Vec<u32>> = (0..p).map(|_| ids(comp)).collect();
    let rejected: Vec<Vec<u32>> = (0..p).map(|_| ids(comp)).collect();
    let rows: Vec<(&[u32], &[u32])> = prompts
        .iter()
        .zip(&chosen)
        .map(|(x, y)| (x.as_slice(), y.as_slice()))
        .chain(prompts.iter().zip(&rejected).map(|(x, y)| (x.as_slice(), y.as_slice())))
        .collect();
    let reference = &m.model;
    let (policy, vars) = Model::trainable(&m.checkpoint, |_| true)?;
    let mut opt = Adam::new(
        vars.into_iter().map(|(_, v)| v).collect(),
        AdamConfig { lr: a.lr, weight_decay: 0.01, ..Default::default() },
    )?;
    let beta = 0.2;
    let mut parts: [Vec<f64>; 3] = Default::default();
    let mut step = || -> Result<()> {
        let t0 = Instant::now();
        let r = batch_logprobs(reference, &rows)?.sums.detach();
        let t1 = Instant::now();
        let s = batch_logprobs(&policy, &rows)?.sums;
        let margin = (s - r)?.to_dtype(DType::F32)?;
        let (c, rj) = (margin.narrow(0, 0, p)?, margin.narrow(0, p, p)?);
        let logits = ((c - rj)? * beta)?;
        let loss = candle_nn::ops::sigmoid(&logits)?.log()?.neg()?.mean_all()?;
        let grads = loss.backward()?;
        let t2 = Instant::now();
        opt.step(&grads)?;
        let _: Tensor = loss;
        let t3 = Instant::now();
        parts[0].push((t1 - t0).as_secs_f64());
        parts[1].push((t2 - t1).as_secs_f64());
        parts[2].push((t3 - t2).as_secs_f64());
        Ok(())
    };
    let name = format!("dpo_{}x{}", p, a.seq_len);
    let mut r = measure(&name, "pairs/s", p as f64, a.warmup, a.reps, &mut step)?;
    let n = a.reps;
    let tail = |v: &Vec<f64>| median(&v[v.len() - n..]);
    let (ref_s, pol_s, opt_s) = (tail(&parts[0]), tail(&parts[1]), tail(&parts[2]));
    eprintln!(
        "  {:<14} reference {ref_s:.3} s + policy fwd/bwd {pol_s:.3} s + AdamW {opt_s:.3} s; \
         with cached reference log-probs {:.2} pairs/s",
        "",
        p as f64 / (pol_s + opt_s)
    );
    r.breakdown_median_s = Some(serde_json::json!({"ref_s": ref_s, "policy_fwd_bwd_s": pol_s, "opt_s": opt_s}));
    Ok(r)
}
