//! Batched sampling with a KV cache: temperature, top-k, top-p, per-row minimum and maximum
//! lengths, stop at EOS, seeded and reproducible.
//!
//! Prompts are left-padded so every row's next token lands in the same column; each step feeds
//! one token per row through the cached model, so a step costs the same whatever the prefix
//! length. On the CPU each row draws from its own ChaCha stream (seed, row), so a row's sample
//! does not depend on which other rows share its batch.
//!
//! On a GPU, plain temperature sampling and greedy decoding pick on the device (`device_picks`:
//! Gumbel-max, `argmax(logits / T - log(-log u))`, an exact draw from `softmax(logits / T)`), so
//! a step reads back one token and one log-prob per row instead of every row's logits; the
//! device's generator is seeded with `seed`, so a batch is reproducible, though a row's sample
//! then depends on its batch. Top-k and top-p pick on the host everywhere.

use candle_core::{DType, IndexOp, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::Model;
use super::batch::{self, Batch, KvCache, Padding};
use super::error::{ModelError, Result};

/// How to sample. Defaults are the paper's pair generation: T = 0.7, top-k off, top-p 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 means greedy.
    pub temperature: f64,
    /// Keep only the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p; 1 = off.
    pub top_p: f64,
    /// Longest completion, in tokens (a request may ask for fewer).
    pub max_new_tokens: usize,
    /// EOS is suppressed until a completion has this many tokens.
    pub min_new_tokens: usize,
    /// Stop a row when it emits an end-of-sequence token.
    pub stop_at_eos: bool,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: 24,
            min_new_tokens: 0,
            stop_at_eos: true,
            seed: 0,
        }
    }
}

/// One row to sample: a prompt and, optionally, its own length limits.
#[derive(Debug, Clone, Default)]
pub struct SampleRequest<'a> {
    pub prompt: &'a [u32],
    pub max_new_tokens: Option<usize>,
    pub min_new_tokens: Option<usize>,
}

impl<'a> SampleRequest<'a> {
    pub fn new(prompt: &'a [u32]) -> Self {
        Self { prompt, ..Default::default() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Emitted an end-of-sequence token (included in `tokens`).
    Eos,
    /// Reached its maximum length.
    Length,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub tokens: Vec<u32>,
    /// log pi(token | prefix) of each sampled token under the model itself (temperature 1,
    /// no truncation): what the entropy acquisition averages.
    pub logprobs: Vec<f32>,
    pub finish: FinishReason,
}

/// Samples a completion for every request in one batch. `on_step` is called after each new
/// column with the number of rows still running.
pub fn sample(
    model: &Model,
    requests: &[SampleRequest],
    cfg: &SamplingConfig,
    eos_ids: &[u32],
    on_step: impl FnMut(usize) + Send,
) -> Result<Vec<Sample>> {
    let on_device = !model.device().is_cpu() && cfg.top_k == 0 && cfg.top_p >= 1.0;
    sample_with(model, requests, cfg, eos_ids, on_step, on_device)
}

/// [`sample`], picking tokens on the model's device or on the host (tests pick on the CPU
/// "device" to check the device path against the host's).
fn sample_with(
    model: &Model,
    requests: &[SampleRequest],
    cfg: &SamplingConfig,
    eos_ids: &[u32],
    mut on_step: impl FnMut(usize) + Send,
    on_device: bool,
) -> Result<Vec<Sample>> {
    validate(model, requests, cfg)?;
    let b = requests.len();
    let max_new: Vec<usize> = requests.iter().map(|r| r.max_new_tokens.unwrap_or(cfg.max_new_tokens)).collect();
    let min_new: Vec<usize> = requests.iter().map(|r| r.min_new_tokens.unwrap_or(cfg.min_new_tokens)).collect();
    let steps = max_new.iter().copied().max().unwrap_or(0);
    let mut out: Vec<Sample> =
        (0..b).map(|_| Sample { tokens: Vec::new(), logprobs: Vec::new(), finish: FinishReason::Length }).collect();
    if steps == 0 {
        return Ok(out);
    }

    let prompts: Vec<&[u32]> = requests.iter().map(|r| r.prompt).collect();
    let pad = eos_ids.first().copied().unwrap_or(0);
    let (mut decoder, mut logits) = Decoder::new(model, &prompts, steps, pad)?;
    let mut rngs: Vec<ChaCha8Rng> = (0..b)
        .map(|i| {
            let mut r = ChaCha8Rng::seed_from_u64(cfg.seed);
            r.set_stream(i as u64);
            r
        })
        .collect();
    let mut running: Vec<bool> = max_new.iter().map(|&m| m > 0).collect();
    let mut scratch: Vec<Scratch> = (0..b).map(|_| Scratch::default()).collect();
    let mut device =
        if on_device { Some(DevicePicker::new(model.device(), model.vocab_size(), cfg, eos_ids)?) } else { None };
    let mut decode = || -> Result<()> {
        for _ in 0..steps {
            let suppress_eos: Vec<bool> = (0..b).map(|i| cfg.stop_at_eos && out[i].tokens.len() < min_new[i]).collect();
            let picks: Vec<Option<(u32, f32)>> = if let Some(d) = device.as_mut() {
                let all = d.picks(&logits, &suppress_eos)?;
                all.into_iter().zip(&running).map(|(p, &r)| r.then_some(p)).collect()
            } else {
                let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                // Rows are independent (own RNG, own buffers), so they are picked in parallel.
                rows.par_iter()
                    .zip(rngs.par_iter_mut())
                    .zip(scratch.par_iter_mut())
                    .enumerate()
                    .map(|(i, ((row, rng), s))| {
                        running[i].then(|| pick(row, cfg, if suppress_eos[i] { eos_ids } else { &[] }, rng, s))
                    })
                    .collect()
            };
            let mut column = Vec::with_capacity(b);
            for (i, p) in picks.into_iter().enumerate() {
                let Some((tok, logprob)) = p else {
                    column.push(None);
                    continue;
                };
                out[i].tokens.push(tok);
                out[i].logprobs.push(logprob);
                if cfg.stop_at_eos && eos_ids.contains(&tok) {
                    out[i].finish = FinishReason::Eos;
                    running[i] = false;
                } else if out[i].tokens.len() >= max_new[i] {
                    running[i] = false;
                }
                column.push(Some(tok));
            }
            let alive = running.iter().filter(|r| **r).count();
            on_step(alive);
            if alive == 0 {
                break;
            }
            logits = decoder.step(&column)?;
        }
        Ok(())
    };
    // On the CPU the few-row decoding steps run on one of rayon's threads: each step's
    // products are then split with the others from there, where from outside the pool every
    // product was handed over and waited for (two thread wake-ups per product, ~200 products
    // per token: 6-11% of batch-1 sampling). Bigger batches keep the caller's thread, since
    // BLAS products (past `skinny::MAX_ROWS` rows) are only started from outside the pool.
    if model.device().is_cpu() && b <= super::cpu::skinny::MAX_ROWS {
        rayon::scope(|_| decode())?;
    } else {
        decode()?;
    }
    Ok(out)
}

/// Picks every row's next token on the model's device: greedy, or plain temperature sampling
/// by Gumbel-max; returns each token with its log-probability at temperature 1.
struct DevicePicker {
    temperature: f64,
    /// (1, vocab): the mask value at EOS ids, 0 elsewhere, added to rows that may not end yet.
    eos_ban: Option<Tensor>,
}

impl DevicePicker {
    fn new(dev: &candle_core::Device, vocab: usize, cfg: &SamplingConfig, eos_ids: &[u32]) -> Result<Self> {
        if !dev.is_cpu() {
            dev.set_seed(cfg.seed)?;
        }
        let eos_ban = if cfg.stop_at_eos && eos_ids.iter().any(|&e| (e as usize) < vocab) {
            let mut ban = vec![0f32; vocab];
            for &e in eos_ids.iter().filter(|&&e| (e as usize) < vocab) {
                ban[e as usize] = super::ops::mask_value(DType::F32);
            }
            Some(Tensor::from_vec(ban, (1, vocab), dev)?)
        } else {
            None
        };
        Ok(Self { temperature: cfg.temperature, eos_ban })
    }

    fn picks(&mut self, logits: &Tensor, suppress_eos: &[bool]) -> Result<Vec<(u32, f32)>> {
        let l = logits.to_dtype(DType::F32)?;
        let (b, _) = l.dims2()?;
        // log pi at temperature 1: l - logsumexp(l).
        let max = l.max_keepdim(1)?;
        let lse = (l.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + &max)?;
        let scores = match &self.eos_ban {
            Some(ban) if suppress_eos.iter().any(|&s| s) => {
                let rows: Vec<f32> = suppress_eos.iter().map(|&s| if s { 1.0 } else { 0.0 }).collect();
                let rows = Tensor::from_vec(rows, (b, 1), l.device())?;
                l.broadcast_add(&rows.broadcast_mul(ban)?)?
            }
            _ => l.clone(),
        };
        let tok = if self.temperature == 0.0 {
            scores.argmax_keepdim(1)?
        } else {
            // Gumbel noise -log(-log u), u uniform in [0, 1): u = 0 gives -inf, never picked.
            let u = Tensor::rand(0f32, 1f32, scores.shape(), scores.device())?;
            let gumbel = u.log()?.neg()?.log()?.neg()?;
            ((scores / self.temperature)? + gumbel)?.argmax_keepdim(1)?
        };
        let logprob = (l.gather(&tok, 1)? - lse)?;
        let tok = tok.flatten_all()?.to_vec1::<u32>()?;
        let logprob = logprob.flatten_all()?.to_vec1::<f32>()?;
        Ok(tok.into_iter().zip(logprob).collect())
    }
}

/// Incremental decoding of a batch with a KV cache: prefill the prompts once, then one token
/// per row per step. Rows are left-padded; a row fed `None` is finished and its new column is
/// masked out.
pub struct Decoder<'m> {
    model: &'m Model,
    cache: KvCache,
    valid: Vec<Vec<bool>>,
    next_pos: Vec<u32>,
    pad: u32,
}

impl<'m> Decoder<'m> {
    /// Runs the prompts through the model, leaving room for `max_new` more tokens, and returns
    /// the next-token logits (batch, vocab).
    pub fn new(model: &'m Model, prompts: &[&[u32]], max_new: usize, pad: u32) -> Result<(Self, Tensor)> {
        let batch = Batch::new(prompts, Padding::Left, pad, model.dtype(), model.device())?;
        let width = batch.dims().1;
        let mut cache = KvCache::new(model.num_layers(), width + max_new);
        let hidden = model.hidden(&batch.input_ids, &batch.position_ids, &batch.mask, Some(&mut cache))?;
        let logits = model.lm_head(&hidden.i((.., width - 1, ..))?)?;
        let decoder =
            Self { model, cache, valid: batch.valid, next_pos: prompts.iter().map(|p| p.len() as u32).collect(), pad };
        Ok((decoder, logits))
    }

    /// Feeds one token per row (`None` for finished rows) and returns the next logits.
    pub fn step(&mut self, tokens: &[Option<u32>]) -> Result<Tensor> {
        let b = self.valid.len();
        if tokens.len() != b {
            return Err(ModelError::Input(format!("step got {} tokens for {b} rows", tokens.len())));
        }
        let mut ids = Vec::with_capacity(b);
        let mut pos = Vec::with_capacity(b);
        for ((tok, row), next) in tokens.iter().zip(&mut self.valid).zip(&mut self.next_pos) {
            row.push(tok.is_some());
            ids.push(tok.unwrap_or(self.pad));
            pos.push(*next);
            if tok.is_some() {
                *next += 1;
            }
        }
        let (model, dev) = (self.model, self.model.device());
        let ids = Tensor::from_vec(ids, (b, 1), dev)?;
        let pos = Tensor::from_vec(pos, (b, 1), dev)?;
        let s = self.valid[0].len();
        let mask = batch::attention_mask(&self.valid, s - 1, model.dtype(), dev)?;
        let hidden = model.hidden(&ids, &pos, &mask, Some(&mut self.cache))?;
        Ok(model.lm_head(&hidden.squeeze(1)?)?)
    }
}

fn validate(model: &Model, requests: &[SampleRequest], cfg: &SamplingConfig) -> Result<()> {
    if requests.is_empty() {
        return Err(ModelError::Input("no prompts to sample from".into()));
    }
    if !(cfg.temperature >= 0.0 && cfg.temperature.is_finite()) {
        return Err(ModelError::Input(format!("temperature must be >= 0, got {}", cfg.temperature)));
    }
    if !(cfg.top_p > 0.0 && cfg.top_p <= 1.0) {
        return Err(ModelError::Input(format!("top_p must be in (0, 1], got {}", cfg.top_p)));
    }
    for (i, r) in requests.iter().enumerate() {
        if r.prompt.is_empty() {
            return Err(ModelError::Input(format!("prompt {i} is empty")));
        }
        model.check_ids(&format!("prompt {i}"), r.prompt)?;
        let max_new = r.max_new_tokens.unwrap_or(cfg.max_new_tokens);
        let min_new = r.min_new_tokens.unwrap_or(cfg.min_new_tokens);
        if min_new > max_new {
            return Err(ModelError::Input(format!(
                "prompt {i}: min_new_tokens {min_new} exceeds max_new_tokens {max_new}"
            )));
        }
        if r.prompt.len() + max_new > model.max_positions() {
            return Err(ModelError::Input(format!(
                "prompt {i}: {} prompt tokens + {max_new} new tokens exceed the model's {} positions",
                r.prompt.len(),
                model.max_positions()
            )));
        }
    }
    Ok(())
}

/// Reused buffers for one row's token choice.
#[derive(Default)]
struct Scratch {
    idx: Vec<u32>,
    probs: Vec<f32>,
}

/// Chooses a token from one row of logits; returns it with its log-probability under the
/// model at temperature 1 (before any truncation or EOS suppression).
fn pick(logits: &[f32], cfg: &SamplingConfig, banned: &[u32], rng: &mut ChaCha8Rng, s: &mut Scratch) -> (u32, f32) {
    if cfg.temperature == 0.0 {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let tok = argmax(logits, |i| !banned.contains(&(i as u32)));
        let z1: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
        return (tok, logits[tok as usize] - max - z1.ln());
    }
    // One vectorised pass for the sampling weights and the temperature-1 normaliser.
    let (max, z1) = super::cpu::vmath::sampling_weights(logits, (1.0 / cfg.temperature) as f32, &mut s.probs);
    for &b in banned {
        if let Some(p) = s.probs.get_mut(b as usize) {
            *p = 0.0;
        }
    }
    let tok = if cfg.top_k == 0 && cfg.top_p >= 1.0 { draw(&s.probs, rng) } else { truncated_draw(cfg, rng, s) };
    let tok = tok.unwrap_or_else(|| argmax(logits, |_| true));
    (tok, logits[tok as usize] - max - z1.ln())
}

/// Draws an index with probability proportional to `weights`; None if they are all zero.
fn draw(weights: &[f32], rng: &mut ChaCha8Rng) -> Option<u32> {
    let total: f32 = weights.iter().sum();
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    let mut r = rng.random::<f32>() * total;
    let mut last = None;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            if r < w {
                return Some(i as u32);
            }
            r -= w;
            last = Some(i as u32);
        }
    }
    last
}

/// Top-k, then top-p (the order HF applies them), over the weights in `s.probs`.
fn truncated_draw(cfg: &SamplingConfig, rng: &mut ChaCha8Rng, s: &mut Scratch) -> Option<u32> {
    let probs = &s.probs;
    s.idx.clear();
    s.idx.extend((0..probs.len() as u32).filter(|&i| probs[i as usize] > 0.0));
    let desc = |a: &u32, b: &u32| probs[*b as usize].total_cmp(&probs[*a as usize]);
    if cfg.top_k > 0 && cfg.top_k < s.idx.len() {
        s.idx.select_nth_unstable_by(cfg.top_k - 1, desc);
        s.idx.truncate(cfg.top_k);
    }
    if cfg.top_p < 1.0 {
        s.idx.sort_unstable_by(desc);
        let total: f32 = s.idx.iter().map(|&i| probs[i as usize]).sum();
        let mut acc = 0.0;
        let mut keep = s.idx.len();
        for (n, &i) in s.idx.iter().enumerate() {
            acc += probs[i as usize] / total;
            if acc >= cfg.top_p as f32 {
                keep = n + 1;
                break;
            }
        }
        s.idx.truncate(keep);
    }
    let weights: Vec<f32> = s.idx.iter().map(|&i| probs[i as usize]).collect();
    draw(&weights, rng).map(|k| s.idx[k as usize])
}

fn argmax(logits: &[f32], allowed: impl Fn(usize) -> bool) -> u32 {
    let mut best: Option<(f32, u32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if allowed(i) && best.is_none_or(|(b, _)| l > b) {
            best = Some((l, i as u32));
        }
    }
    best.map_or(0, |(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(t: f64, k: usize, p: f64) -> SamplingConfig {
        SamplingConfig { temperature: t, top_k: k, top_p: p, ..Default::default() }
    }

    fn freq(logits: &[f32], c: &SamplingConfig, banned: &[u32]) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut s = Scratch::default();
        let mut n = vec![0usize; logits.len()];
        let draws = 20000;
        for _ in 0..draws {
            n[pick(logits, c, banned, &mut rng, &mut s).0 as usize] += 1;
        }
        n.into_iter().map(|k| k as f64 / draws as f64).collect()
    }

    #[test]
    fn greedy_takes_the_argmax_unless_banned() {
        let l = [0.1, 3.0, 2.0];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(pick(&l, &cfg(0.0, 0, 1.0), &[], &mut rng, &mut Scratch::default()).0, 1);
        assert_eq!(pick(&l, &cfg(0.0, 0, 1.0), &[1], &mut rng, &mut Scratch::default()).0, 2);
    }

    #[test]
    fn temperature_one_matches_softmax() {
        let l = [0.0f32, 1.0, 2.0];
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        let f = freq(&l, &cfg(1.0, 0, 1.0), &[]);
        for (i, &x) in l.iter().enumerate() {
            assert!((f[i] - (x as f64).exp() / z).abs() < 0.015, "{f:?}");
        }
    }

    /// The device path (run here on the CPU): Gumbel-max draws follow softmax(l / T), the
    /// log-prob is the temperature-1 one, and EOS is never drawn in rows that may not end.
    #[test]
    fn device_picks_follow_the_distribution() {
        let dev = candle_core::Device::Cpu;
        let row = [0.0f32, 1.0, 2.0, 0.5];
        let n = 20000;
        let logits = Tensor::from_vec(row.repeat(n), (n, 4), &dev).unwrap();
        let lse = row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        for t in [1.0, 0.5] {
            let mut d = DevicePicker::new(&dev, 4, &cfg(t, 0, 1.0), &[3]).unwrap();
            let picks = d.picks(&logits, &vec![false; n]).unwrap();
            let z: f64 = row.iter().map(|&x| (x as f64 / t).exp()).sum();
            for (tok, &x) in row.iter().enumerate() {
                let f = picks.iter().filter(|p| p.0 as usize == tok).count() as f64 / n as f64;
                assert!((f - (x as f64 / t).exp() / z).abs() < 0.015, "T {t}, token {tok}: {f}");
            }
            for (tok, lp) in &picks {
                assert!((*lp as f64 - (row[*tok as usize] as f64 - lse)).abs() < 1e-5);
            }
            let banned: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
            let picks = d.picks(&logits, &banned).unwrap();
            assert!(picks.iter().step_by(2).all(|p| p.0 != 3));
            assert!(picks.iter().skip(1).step_by(2).any(|p| p.0 == 3));
        }
    }

    /// Greedy decoding picks the same tokens, with the same log-probs, on the device path.
    #[test]
    fn device_and_host_greedy_agree() {
        // The committed tiny Llama fixture (engine/tests/fixtures/llama).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama");
        let ck = crate::model::Checkpoint::load(&dir, DType::F32, &candle_core::Device::Cpu).unwrap();
        let model = Model::from_checkpoint(&ck).unwrap();
        let prompts: Vec<Vec<u32>> = vec![vec![5, 6, 7], vec![9], vec![11, 12]];
        let reqs: Vec<SampleRequest> = prompts.iter().map(|p| SampleRequest::new(p)).collect();
        let c = SamplingConfig { temperature: 0.0, max_new_tokens: 6, min_new_tokens: 3, ..Default::default() };
        let host = sample_with(&model, &reqs, &c, &[0], |_| {}, false).unwrap();
        let device = sample_with(&model, &reqs, &c, &[0], |_| {}, true).unwrap();
        for (h, d) in host.iter().zip(&device) {
            assert_eq!(h.tokens, d.tokens);
            assert_eq!(h.finish, d.finish);
            for (a, b) in h.logprobs.iter().zip(&d.logprobs) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
        let t1 = SamplingConfig { temperature: 1.0, ..c };
        let drawn = sample_with(&model, &reqs, &t1, &[0], |_| {}, true).unwrap();
        assert!(drawn.iter().zip(&reqs).all(|(s, _)| s.tokens.len() >= 3 && s.tokens.len() <= 6));
    }

    #[test]
    fn top_k_and_top_p_truncate() {
        let l = [0.0f32, 1.0, 2.0, 3.0];
        let f = freq(&l, &cfg(1.0, 2, 1.0), &[]);
        assert_eq!((f[0], f[1]), (0.0, 0.0));
        assert!(f[2] > 0.2 && f[3] > 0.6);
        // softmax: .032 .087 .237 .644 -> top_p 0.7 keeps {3, 2}
        let f = freq(&l, &cfg(1.0, 0, 0.7), &[]);
        assert_eq!((f[0], f[1]), (0.0, 0.0));
        let f = freq(&l, &cfg(1.0, 0, 0.5), &[]);
        assert_eq!(f[3], 1.0);
        let f = freq(&l, &cfg(1.0, 0, 1.0), &[3]);
        assert_eq!(f[3], 0.0);
    }
}
