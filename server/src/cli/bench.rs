//! `apl bench`: throughput of the three things the learning loop spends its time on, with the
//! same shapes and definitions as the peer scripts (../shared/peers/torch_cpu.py,
//! llamacpp_cpu.py, torch_anchor.py) so the numbers can be set side by side:
//!
//! - `sample_b1`, `sample_b32`: prompt 64 random tokens, 64 new tokens at temperature 1 (EOS
//!   suppressed so every row runs full length); tok/s = batch * new / wall time, prefill included.
//!   With `--decode-weights f16` (CPU, f32), batch 1 is measured again as `sample_b1+f16w` with
//!   the f16 decoding copy of the weights (`half.rs`); peers are matched on the name before `+`.
//! - `score`: 64 sequences x 128 tokens, sum of next-token log-probs (127 per sequence), no
//!   gradient, micro-batches of 8; seq/s.
//! - `dpo`: 8 pairs x 128 tokens (prompt 64 + completion 64, chosen and rejected in one batch
//!   of 16): reference log-probs without gradient, policy forward + backward, AdamW step
//!   (this project's fused AdamW); pairs/s, with the time of each part; the step with cached
//!   reference log-probs (`dpo_cached_ref`) is the same step without the reference part.
//!
//! Several models in one run (`--models random:gpt2,random:gpt2-large,random:pythia-1.4b,default`:
//! random weights in the peers' shapes, or checkpoints), and the peers' JSON results beside them
//! (`--peers DIR/*.json`, written by the peer scripts in the same session), matched by model shape
//! and bench name, with the ratio apl / peer. Medians over `--reps` after `--warmup`; a table on
//! stdout and, with `--json`, one JSON file holding everything.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::DType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::ModelArgs;
use apl_engine::device::{describe, parse_device, parse_dtype};
use apl_engine::model::cpu::amx;
use apl_engine::model::load::random::{self, SHAPES};
use apl_engine::model::logprobs::batch_logprobs;
use apl_engine::model::{ArchConfig, Checkpoint, Model, SampleRequest, SamplingConfig, sample, sequence_logprobs};
use apl_engine::train::optim::{Adam, AdamConfig};

const BENCHES: [&str; 5] = ["sample_b1", "sample_b32", "score", "dpo", "matmul"];

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Models to measure one after another, comma-separated: checkpoint paths, `default` (the
    /// bundled SmolLM2-135M) or `random:NAME` (gpt2, gpt2-large, pythia-1.4b, smollm2-135m).
    /// Without it, --model alone.
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Which benches, comma-separated: sample_b1, sample_b32, score, dpo; and matmul (not by
    /// default): every layer's products at decoding row counts, few-row kernels against BLAS.
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
    /// Peer results to set beside these: JSON files written by the peer scripts (torch_cpu.py,
    /// llamacpp_cpu.py, torch_anchor.py, torch_anchor3.py), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<PathBuf>,
    /// Write the results (and the peers' beside them) here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
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

/// One model's results.
#[derive(Debug, Serialize)]
struct ModelResults {
    model: String,
    /// The named shape this model has (`smollm2-135m`, ...), which peers are matched on.
    shape: String,
    params: usize,
    load_s: f64,
    results: Vec<BenchResult>,
}

/// One peer figure: which peer, model shape, bench, value.
#[derive(Debug, Clone, Serialize)]
struct PeerFigure {
    peer: String,
    shape: String,
    bench: String,
    value: f64,
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
    let r = summarize(name, unit, work, times);
    eprintln!(
        "  {:<16} {:>10.2} {:<8} (min {:.2}, max {:.2}; median {:.3} s/rep, {} reps)",
        r.bench, r.median, unit, r.min, r.max, r.median_s, reps
    );
    Ok(r)
}

fn summarize(name: &str, unit: &'static str, work: f64, times: Vec<f64>) -> BenchResult {
    let rates: Vec<f64> = times.iter().map(|t| work / t).collect();
    BenchResult {
        bench: name.to_string(),
        unit,
        work_per_rep: work,
        median: median(&rates),
        min: rates.iter().copied().fold(f64::INFINITY, f64::min),
        max: rates.iter().copied().fold(0.0, f64::max),
        median_s: median(&times),
        times_s: times,
        breakdown_median_s: None,
    }
}

/// The named shape a config has, or `fallback`.
fn shape_of(config: &ArchConfig, fallback: &str) -> String {
    let key = |c: &ArchConfig| (c.name(), c.vocab_size(), c.num_layers());
    SHAPES
        .iter()
        .find(|(name, json)| ArchConfig::from_json(json, name).is_ok_and(|c| key(&c) == key(config)))
        .map_or_else(|| fallback.to_string(), |(name, _)| name.to_string())
}

fn load(spec: &str, a: &ModelArgs) -> Result<Checkpoint> {
    let device = parse_device(&a.device)?;
    let dtype = parse_dtype(&a.dtype)?;
    if device.is_cpu() {
        super::set_up_cpu(&a.cache.dir(), spec == "default", a.products.unwrap_or_default());
    }
    Ok(if random::is_random(spec) {
        random::random_checkpoint(spec, dtype, &device, 0)?
    } else if spec == "default" {
        Checkpoint::load(&ModelArgs { model: None, ..a.clone() }.path()?, dtype, &device)?
    } else {
        Checkpoint::load(Path::new(spec), dtype, &device)?
    })
}

pub fn run(a: Args) -> Result<()> {
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let benches: Vec<&str> = a.benches.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    for b in &benches {
        if !BENCHES.contains(b) {
            bail!("unknown bench {b:?} ({})", BENCHES.join(", "));
        }
    }
    let peers = a.peers.iter().map(|p| read_peer(p)).collect::<Result<Vec<_>>>()?.concat();
    let specs: Vec<String> = if a.models.is_empty() {
        vec![a.model.model.as_ref().map_or_else(|| "default".to_string(), |p| p.display().to_string())]
    } else {
        a.models.clone()
    };
    let mut all = Vec::new();
    for spec in &specs {
        let t = Instant::now();
        let ck = load(spec, &a.model).with_context(|| format!("loading {spec}"))?;
        let load_s = t.elapsed().as_secs_f64();
        let shape = shape_of(&ck.config, spec);
        let model = Model::from_checkpoint(&ck)?;
        eprintln!(
            "apl bench: {spec} (shape {shape}, {} params), {:?} on {}",
            ck.num_params(),
            model.dtype(),
            describe(model.device())
        );
        let results = bench_model(&a, &benches, &ck, &model)?;
        all.push(ModelResults { model: spec.clone(), shape, params: ck.num_params(), load_s, results });
    }

    let comparison = print_table(&all, &peers);
    if let Some(path) = &a.json {
        let meta = serde_json::json!({
            "tool": "apl bench",
            "version": env!("CARGO_PKG_VERSION"),
            "dtype": a.model.dtype,
            "device": describe(&parse_device(&a.model.device)?),
            "cpu": cpu_name(),
            "blas": apl_engine::model::cpu::blas::describe(),
        });
        let doc = serde_json::json!({"meta": meta, "models": all, "peers": peers, "comparison": comparison});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn bench_model(a: &Args, benches: &[&str], ck: &Checkpoint, m: &Model) -> Result<Vec<BenchResult>> {
    let vocab = m.vocab_size() as u32;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut ids = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(3..vocab)).collect() };
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
        let eos = ck.config.tokens().eos_ids();
        let work = (b * a.new_tokens) as f64;
        let run = |model: &Model| -> Result<()> {
            let out = sample(model, &reqs, &cfg, &eos, |_| {})?;
            debug_assert!(out.iter().all(|s| s.tokens.len() == cfg.max_new_tokens));
            Ok(())
        };
        results.push(measure(&name, "tok/s", work, a.warmup, a.reps, || run(m))?);
        if b <= 8 && m.device().is_cpu() && m.dtype() == DType::F32 && a.model.decode_weights == "f16" {
            let half = m.with_half_weights(|_| false)?;
            results.push(measure(&format!("{name}+f16w"), "tok/s", work, a.warmup, a.reps, || run(&half))?);
        }
    }

    if benches.contains(&"score") {
        let seqs: Vec<Vec<u32>> = (0..a.score_n).map(|_| ids(a.seq_len)).collect();
        let pairs: Vec<(&[u32], &[u32])> = seqs.iter().map(|s| s.split_at(1)).collect();
        let name = format!("score_{}x{}", a.score_n, a.seq_len);
        results.push(measure(&name, "seq/s", a.score_n as f64, a.warmup, a.reps, || {
            sequence_logprobs(m, &pairs, a.score_mb, |_| {})?;
            Ok(())
        })?);
        if amx::products() == amx::Products::Bf16 {
            bf16_agreement(a, ck, m, &mut ids)?;
        }
    }

    if benches.contains(&"dpo") {
        results.extend(dpo(a, ck, m, &mut ids)?);
    }
    if benches.contains(&"matmul") {
        results.extend(matmuls(a, m)?);
    }
    Ok(results)
}

/// What bf16 products cost in accuracy: the model's own samples (64 rows of 64 tokens at
/// temperature 1 after 8 random tokens) scored with bf16 and with f32 products, per token.
fn bf16_agreement(a: &Args, ck: &Checkpoint, m: &Model, ids: &mut impl FnMut(usize) -> Vec<u32>) -> Result<()> {
    let prompts: Vec<Vec<u32>> = (0..64).map(|_| ids(8)).collect();
    let reqs: Vec<SampleRequest> = prompts.iter().map(|p| SampleRequest::new(p)).collect();
    let cfg = SamplingConfig { temperature: 1.0, max_new_tokens: 64, min_new_tokens: 64, ..Default::default() };
    let samples = sample(m, &reqs, &cfg, &ck.config.tokens().eos_ids(), |_| {})?;
    let pairs: Vec<(&[u32], &[u32])> =
        prompts.iter().zip(&samples).map(|(p, s)| (p.as_slice(), s.tokens.as_slice())).collect();
    let bf16 = sequence_logprobs(m, &pairs, a.score_mb, |_| {})?;
    amx::set_products(amx::Products::F32);
    let f32 = sequence_logprobs(m, &pairs, a.score_mb, |_| {});
    amx::set_products(amx::Products::Bf16);
    let mut d: Vec<f64> = bf16
        .iter()
        .zip(&f32?)
        .flat_map(|(x, y)| x.tokens.iter().zip(&y.tokens).map(|(u, v)| (u - v).abs() as f64))
        .collect();
    d.sort_by(f64::total_cmp);
    let mean = d.iter().sum::<f64>() / d.len().max(1) as f64;
    let at = |q: f64| d.get(((d.len() as f64 * q) as usize).min(d.len().saturating_sub(1))).copied().unwrap_or(0.0);
    eprintln!(
        "                   bf16 products against f32 on the model's own samples ({} tokens): |Δ log p| mean {mean:.4}, p99 {:.4}, max {:.4} nats",
        d.len(),
        at(0.99),
        at(1.0)
    );
    Ok(())
}

/// Every layer's products (q, k, v, o and the MLP's, through `Linear::forward` as the model
/// runs them; the weights stream from memory, as in decoding) for 1..128 rows, in GFLOP/s: the
/// engine's choice (the few-row kernels of `skinny.rs` up to their limit), then with those
/// kernels off (BLAS), in the same run; with `--decode-weights f16`, up to 8 rows also reading
/// the f16 copies.
fn matmuls(a: &Args, m: &Model) -> Result<Vec<BenchResult>> {
    use apl_engine::model::cpu::skinny;
    let mut model = m.clone();
    let linears: Vec<apl_engine::model::ops::Linear> = model.linears_mut().into_iter().map(|l| l.clone()).collect();
    // The same products reading f16 copies of the weights (`--decode-weights f16`, CPU f32).
    let half: Vec<apl_engine::model::ops::Linear> = if a.model.decode_weights == "f16" {
        let mut h = m.with_half_weights(|_| false)?;
        let l: Vec<_> = h.linears_mut().into_iter().map(|l| l.clone()).collect();
        l.into_iter().filter(|l| l.half.is_some()).collect()
    } else {
        Vec::new()
    };
    let flops_per_row: f64 = linears.iter().map(|l| 2.0 * (l.in_dim() * l.out_dim()) as f64).sum();
    let mut out = Vec::new();
    for rows in [1usize, 8, 16, 32, 64, 128] {
        let mut inputs = std::collections::HashMap::new();
        for l in &linears {
            if let std::collections::hash_map::Entry::Vacant(e) = inputs.entry(l.in_dim()) {
                e.insert(candle_core::Tensor::randn(0f32, 1.0, (rows, l.in_dim()), m.device())?.to_dtype(m.dtype())?);
            }
        }
        let work = flops_per_row * rows as f64 / 1e9;
        for (name, on) in [(format!("matmul_m{rows}"), true), (format!("matmul_m{rows}_blas"), false)] {
            if !on && (rows > skinny::MAX_ROWS || skinny::isa().is_none()) {
                continue;
            }
            skinny::set_enabled(on);
            let r = measure(&name, "GFLOP/s", work, a.warmup, a.reps, || {
                for l in &linears {
                    l.forward(&inputs[&l.in_dim()])?;
                }
                Ok(())
            });
            skinny::set_enabled(true);
            out.push(r?);
        }
        if rows <= 8 && !half.is_empty() {
            let r = measure(&format!("matmul_m{rows}_f16w"), "GFLOP/s", work, a.warmup, a.reps, || {
                for l in &half {
                    l.forward(&inputs[&l.in_dim()])?;
                }
                Ok(())
            });
            out.push(r?);
        }
    }
    Ok(out)
}

fn dpo(
    a: &Args,
    ck: &Checkpoint,
    reference: &Model,
    ids: &mut impl FnMut(usize) -> Vec<u32>,
) -> Result<[BenchResult; 2]> {
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
    let (policy, vars) = Model::trainable(ck, |_| true)?;
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
        // Wait for the device: a GPU step is queued, not done, when step() returns.
        let _: f32 = loss.to_dtype(DType::F32)?.to_scalar()?;
        let t3 = Instant::now();
        parts[0].push((t1 - t0).as_secs_f64());
        parts[1].push((t2 - t1).as_secs_f64());
        parts[2].push((t3 - t2).as_secs_f64());
        Ok(())
    };
    let name = format!("dpo_{}x{}", p, a.seq_len);
    let mut r = measure(&name, "pairs/s", p as f64, a.warmup, a.reps, &mut step)?;
    let n = a.reps;
    let tail = |v: &Vec<f64>| v[v.len() - n..].to_vec();
    let (ref_s, pol_s, opt_s) = (tail(&parts[0]), tail(&parts[1]), tail(&parts[2]));
    let cached: Vec<f64> = pol_s.iter().zip(&opt_s).map(|(a, b)| a + b).collect();
    let (ref_m, pol_m, opt_m) = (median(&ref_s), median(&pol_s), median(&opt_s));
    let cached = summarize(&format!("dpo_cached_ref_{}x{}", p, a.seq_len), "pairs/s", p as f64, cached);
    eprintln!(
        "  {:<16} reference {ref_m:.3} s + policy fwd/bwd {pol_m:.3} s + AdamW {opt_m:.3} s; \
         with cached reference log-probs {:.2} pairs/s",
        "", cached.median
    );
    r.breakdown_median_s = Some(serde_json::json!({"ref_s": ref_m, "policy_fwd_bwd_s": pol_m, "opt_s": opt_m}));
    Ok([r, cached])
}

/// The shape names the GPU peer scripts use, mapped to [`SHAPES`]' names.
fn peer_shape(name: &str) -> String {
    match name {
        "gpt2-124m" => "gpt2",
        "gpt2-large-774m" => "gpt2-large",
        other => other,
    }
    .to_string()
}

/// Reads one peer script's JSON: the CPU peers' `{meta, results}` (SmolLM2's shape), or the GPU
/// anchors' `{rows: [{model, bench|cache, *_per_s}]}`. The peer is named by the file's stem.
fn read_peer(path: &Path) -> Result<Vec<PeerFigure>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading peer results {}", path.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let stem = path.file_stem().map_or_else(|| "peer".to_string(), |s| s.to_string_lossy().into_owned());
    let mut out = Vec::new();
    let mut push = |peer: &str, shape: &str, bench: &str, value: Option<f64>| {
        if let Some(value) = value.filter(|v| v.is_finite() && *v > 0.0) {
            out.push(PeerFigure { peer: peer.to_string(), shape: shape.to_string(), bench: bench.to_string(), value });
        }
    };
    if let Some(results) = doc["results"].as_array() {
        for r in results {
            let Some(bench) = r["bench"].as_str() else { continue };
            push(&stem, "smollm2-135m", bench, r["median"].as_f64());
            // The step with cached reference log-probs: the same step less its reference part.
            let b = &r["breakdown_median_s"];
            if let (Some(pairs), Some(pol), Some(opt)) =
                (r["work_per_rep"].as_f64(), b["policy_fwd_bwd_s"].as_f64(), b["opt_s"].as_f64())
            {
                push(&stem, "smollm2-135m", &bench.replacen("dpo_", "dpo_cached_ref_", 1), Some(pairs / (pol + opt)));
            }
        }
    } else if let Some(rows) = doc["rows"].as_array() {
        for r in rows {
            let shape = peer_shape(r["model"].as_str().unwrap_or_default());
            if let Some(cache) = r["cache"].as_str() {
                push(&format!("{stem}_{cache}"), &shape, "sample_b32", r["tok_per_s"].as_f64());
                continue;
            }
            match r["bench"].as_str() {
                Some("generate") => push(&stem, &shape, "sample_b32", r["tok_per_s"].as_f64()),
                Some("score") => push(&stem, &shape, "score_64x128", r["seq_per_s"].as_f64()),
                Some("dpo_step") => push(&stem, &shape, "dpo_8x128", r["pairs_per_s"].as_f64()),
                _ => {}
            }
        }
    } else {
        bail!("{}: neither a CPU peer's {{results}} nor a GPU anchor's {{rows}}", path.display());
    }
    Ok(out)
}

/// Prints every result with the peers' figures for the same shape and bench beside it; returns
/// the comparison rows for the JSON file.
fn print_table(all: &[ModelResults], peers: &[PeerFigure]) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    println!("\n| model | bench | unit | apl (median) | min | max | peer | peer | apl / peer |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for m in all {
        for r in &m.results {
            // `sample_b1+f16w` is set beside the peers' `sample_b1`.
            let base = r.bench.split('+').next().unwrap_or_default();
            let matching: Vec<&PeerFigure> = peers.iter().filter(|p| p.shape == m.shape && p.bench == base).collect();
            let lead =
                format!("| {} | {} | {} | {:.2} | {:.2} | {:.2} |", m.shape, r.bench, r.unit, r.median, r.min, r.max);
            if matching.is_empty() {
                println!("{lead} – | – | – |");
            }
            for p in matching {
                let ratio = r.median / p.value;
                println!("{lead} {} | {:.2} | {:.2}x |", p.peer, p.value, ratio);
                rows.push(serde_json::json!({
                    "shape": m.shape, "bench": r.bench, "unit": r.unit, "apl": r.median,
                    "peer": p.peer, "peer_value": p.value, "ratio": ratio,
                }));
            }
        }
    }
    rows
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_peer_formats() {
        let dir = tempfile::tempdir().unwrap();
        let cpu = dir.path().join("torch_cpu_eager.json");
        std::fs::write(
            &cpu,
            r#"{"meta": {"peer": "pytorch-cpu"}, "results": [
                {"bench": "sample_b32", "unit": "tok/s", "median": 172.0, "work_per_rep": 2048},
                {"bench": "dpo_8x128", "unit": "pairs/s", "median": 0.5, "work_per_rep": 8,
                 "breakdown_median_s": {"ref_s": 4.0, "policy_fwd_bwd_s": 11.3, "opt_s": 0.2}}]}"#,
        )
        .unwrap();
        let gpu = dir.path().join("torch_anchor.json");
        std::fs::write(
            &gpu,
            r#"{"device": "H200", "rows": [{"model": "gpt2-large-774m", "bench": "generate", "tok_per_s": 1038.0},
                {"model": "pythia-1.4b", "bench": "dpo_step", "pairs_per_s": 57.2},
                {"model": "smollm2-135m", "cache": "static", "tok_per_s": 7600.0}]}"#,
        )
        .unwrap();
        let cpu = read_peer(&cpu).unwrap();
        assert_eq!(cpu.len(), 3);
        assert_eq!(
            (cpu[0].peer.as_str(), cpu[0].shape.as_str(), cpu[0].value),
            ("torch_cpu_eager", "smollm2-135m", 172.0)
        );
        assert_eq!(cpu[2].bench, "dpo_cached_ref_8x128");
        assert!((cpu[2].value - 8.0 / 11.5).abs() < 1e-9);
        let gpu = read_peer(&gpu).unwrap();
        assert_eq!((gpu[0].shape.as_str(), gpu[0].bench.as_str()), ("gpt2-large", "sample_b32"));
        assert_eq!(gpu[1].bench, "dpo_8x128");
        assert_eq!(gpu[2].peer, "torch_anchor_static");
        let bad = dir.path().join("x.json");
        std::fs::write(&bad, "{}").unwrap();
        assert!(read_peer(&bad).unwrap_err().to_string().contains("neither"));
    }

    #[test]
    fn shapes_are_recognised_from_configs() {
        for (name, json) in SHAPES {
            assert_eq!(shape_of(&ArchConfig::from_json(json, name).unwrap(), "?"), *name);
        }
    }
}
