//! `apl check`: the engine's numerics on a device, for a machine where only the binary runs (a
//! GPU box without a Rust toolchain, where the test suite cannot be built).
//!
//! It makes the test suite's main checks on the committed tiny HF fixtures
//! (`engine/tests/fixtures`, whose expected values HF transformers computed): logits against
//! HF's, KV-cache logits against full-sequence logits, every parameter receiving a finite,
//! non-zero gradient of a DPO loss that points the way the CPU's f32 gradient does, and tokens
//! drawn on the device following the model's distribution. One line per check, and a non-zero
//! exit status when any fails. Tolerances widen for 16-bit compute, which rounds every op.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, IndexOp, Tensor};

use apl_engine::device::{describe, parse_device, parse_dtype};
use apl_engine::model::logprobs::batch_logprobs;
use apl_engine::model::{Batch, Checkpoint, Decoder, Model, Padding, SampleRequest, SamplingConfig, sample};
use apl_engine::train::loss::{Loss, PairLogprobs};

/// The fixtures every check runs on (those of `tests/fixtures/make_fixtures.py`).
const FIXTURES: &[&str] = &["llama", "llama3", "qwen2", "gpt2", "gpt_neox", "gpt_neox_seq"];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "APL_DEVICE")]
    pub device: String,
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32", env = "APL_DTYPE")]
    pub dtype: String,
    /// The fixtures directory [default: engine/tests/fixtures under the current directory].
    #[arg(long)]
    pub fixtures: Option<PathBuf>,
}

/// One check's outcome.
struct Outcome {
    fixture: String,
    check: &'static str,
    value: f64,
    limit: f64,
    /// Whether `value` must stay below `limit` (a difference) or above it (a similarity).
    below: bool,
    detail: String,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.value.is_finite() && if self.below { self.value <= self.limit } else { self.value >= self.limit }
    }
}

/// Tolerances per compute dtype: (logits, relative to the largest logit; gradient cosine).
fn tolerances(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 | DType::F64 => (1e-4, 0.9999),
        DType::F16 => (1e-2, 0.99),
        _ => (3e-2, 0.97),
    }
}

pub fn run(a: Args) -> Result<()> {
    let device = parse_device(&a.device)?;
    let dtype = parse_dtype(&a.dtype)?;
    let dir = a.fixtures.clone().unwrap_or_else(|| PathBuf::from("engine/tests/fixtures"));
    if !dir.join("llama").is_dir() {
        bail!("no fixtures at {} (pass --fixtures DIR: the repository's engine/tests/fixtures)", dir.display());
    }
    eprintln!("apl check: {dtype:?} on {} against HF's values and the CPU in f32", describe(&device));
    let mut outcomes = Vec::new();
    for name in FIXTURES {
        outcomes.extend(check_fixture(&dir, name, &device, dtype).with_context(|| format!("fixture {name}"))?);
    }
    let failed = outcomes.iter().filter(|o| !o.ok()).count();
    for o in &outcomes {
        let (verdict, rel) = (if o.ok() { "ok  " } else { "FAIL" }, if o.below { "<=" } else { ">=" });
        let (value, limit) = if o.below {
            (format!("{:.3e}", o.value), format!("{:.1e}", o.limit))
        } else {
            (format!("{:.5}", o.value), format!("{:.4}", o.limit))
        };
        println!("{verdict} {:<13} {:<10} {value:>10} {rel} {limit:<7}  {}", o.fixture, o.check, o.detail);
    }
    if failed > 0 {
        bail!("{failed} of {} checks failed", outcomes.len());
    }
    println!("all {} checks passed", outcomes.len());
    Ok(())
}

fn load(dir: &Path, name: &str, dtype: DType, device: &Device) -> Result<Checkpoint> {
    Ok(Checkpoint::load(&dir.join(name), dtype, device)?)
}

fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(t.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

fn check_fixture(dir: &Path, name: &str, device: &Device, dtype: DType) -> Result<Vec<Outcome>> {
    let (logit_tol, cos_min) = tolerances(dtype);
    let ck = load(dir, name, dtype, device)?;
    let model = Model::from_checkpoint(&ck)?;
    let expected = candle_core::safetensors::load(dir.join(name).join("expected.safetensors"), &Device::Cpu)?;
    let rows = |key: &str| -> Result<Vec<Vec<u32>>> { Ok(expected[key].to_dtype(DType::U32)?.to_vec2::<u32>()?) };
    let mut out = Vec::new();
    let outcome = |check, value, limit, below, detail: String| Outcome {
        fixture: name.to_string(),
        check,
        value,
        limit,
        below,
        detail,
    };

    // Logits against HF's, over real tokens only.
    let valid: Vec<Vec<bool>> =
        rows("attention_mask")?.into_iter().map(|r| r.into_iter().map(|m| m == 1).collect()).collect();
    let batch = Batch::from_rows(rows("input_ids")?, valid.clone(), dtype, device)?;
    let logits = model.forward(&batch)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let want = &expected["logits"];
    let (mut worst, mut scale) = (0f64, 0f64);
    for (r, row) in valid.iter().enumerate() {
        for (c, _) in row.iter().enumerate().filter(|(_, ok)| **ok) {
            worst = worst.max(max_abs(&(logits.i((r, c))? - want.i((r, c))?)?)?);
            scale = scale.max(max_abs(&want.i((r, c))?)?);
        }
    }
    let (limit, unit) = if logit_tol < 1e-3 { (logit_tol, "abs") } else { (logit_tol * scale, "rel") };
    out.push(outcome(
        "logits",
        worst,
        limit,
        true,
        format!("max |logit - HF| ({unit} tolerance, max |logit| {scale:.2})"),
    ));

    // KV-cache decoding against full-sequence logits on the same device and dtype.
    let prompts: [Vec<u32>; 3] = [vec![5, 9, 13, 2, 7, 11, 3], vec![17, 4, 8], vec![6, 12, 10, 15, 9]];
    let cont: [Vec<u32>; 3] = [vec![3, 8, 5, 21], vec![14, 6, 9, 4], vec![7, 7, 19, 2]];
    let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let (mut dec, mut step_logits) = Decoder::new(&model, &refs, cont[0].len(), 0)?;
    let (mut worst, mut scale) = (0f64, 0f64);
    for step in 0..=cont[0].len() {
        for (r, p) in prompts.iter().enumerate() {
            let full = [p.as_slice(), &cont[r][..step]].concat();
            let b = Batch::new(&[&full], Padding::Right, 0, dtype, device)?;
            let want = model.forward(&b)?.i((0, full.len() - 1))?.to_dtype(DType::F32)?;
            worst = worst.max(max_abs(&(step_logits.i(r)?.to_dtype(DType::F32)? - &want)?)?);
            scale = scale.max(max_abs(&want)?);
        }
        if step < cont[0].len() {
            let col: Vec<Option<u32>> = cont.iter().map(|c| Some(c[step])).collect();
            step_logits = dec.step(&col)?;
        }
    }
    let limit = if logit_tol < 1e-3 { logit_tol } else { logit_tol * scale };
    out.push(outcome("kv-cache", worst, limit, true, "max |cached - full-sequence logit|".into()));

    // Gradients of a DPO loss: every parameter gets one, pointing the CPU f32 gradient's way.
    let grads = |ck: &Checkpoint| -> Result<Vec<(String, Tensor)>> {
        let (policy, vars) = Model::trainable(ck, |_| true)?;
        let pairs: Vec<(&[u32], &[u32])> =
            vec![(&prompts[0], &cont[0]), (&prompts[0], &cont[1]), (&prompts[2], &cont[2]), (&prompts[2], &cont[0])];
        let sums = batch_logprobs(&policy, &pairs)?.sums.to_dtype(DType::F32)?.reshape((2, 2))?;
        // Reference log-probs away from the policy's, so that the loss is not at its symmetric point.
        let reference = Tensor::new(&[[-30f32, -32.0], [-31.0, -29.0]], sums.device())?;
        let (pc, pr, rc, rr) = (sums.i((.., 0))?, sums.i((.., 1))?, reference.i((.., 0))?, reference.i((.., 1))?);
        let (nc, nr) = (
            Tensor::new(&[cont[0].len() as f32, cont[2].len() as f32], sums.device())?,
            Tensor::new(&[cont[1].len() as f32, cont[0].len() as f32], sums.device())?,
        );
        let lp = PairLogprobs {
            policy_chosen: &pc,
            policy_rejected: &pr,
            ref_chosen: &rc,
            ref_rejected: &rr,
            chosen_tokens: &nc,
            rejected_tokens: &nr,
        };
        let g = apl_engine::train::loss::compute(Loss::Dpo, &lp, 0.2)?.loss.backward()?;
        vars.into_iter()
            .map(|(n, v)| {
                let t = g.get(v.as_tensor()).with_context(|| format!("no gradient for {n}"))?;
                Ok((n, t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?))
            })
            .collect()
    };
    let got = grads(&ck);
    let want = grads(&load(dir, name, DType::F32, &Device::Cpu)?)?;
    match got {
        Err(e) => out.push(outcome("gradients", 0.0, cos_min, false, format!("{e:#}"))),
        Ok(got) => {
            let (mut worst, mut worst_name, mut dead) = (1f64, String::new(), Vec::new());
            for ((n, g), (_, w)) in got.iter().zip(&want) {
                let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt() as f64;
                if !(norm > 0.0 && norm.is_finite()) {
                    dead.push(n.clone());
                    continue;
                }
                let wn = w.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt() as f64;
                let cos = (g * w)?.sum_all()?.to_scalar::<f32>()? as f64 / (norm * wn).max(f64::MIN_POSITIVE);
                if cos < worst {
                    (worst, worst_name) = (cos, n.clone());
                }
            }
            let detail = if dead.is_empty() {
                format!("min cosine to the CPU's f32 gradient over {} tensors ({worst_name})", got.len())
            } else {
                worst = f64::NAN;
                format!("no finite non-zero gradient for {dead:?}")
            };
            out.push(outcome("gradients", worst, cos_min, false, detail));
        }
    }

    // Tokens drawn on the device follow the model's own distribution: many copies of one
    // prompt, one token each, at temperature 1; frequencies against the returned log-probs.
    let n = 4096;
    let prompt = prompts[1].clone();
    let reqs: Vec<SampleRequest> = (0..n).map(|_| SampleRequest::new(&prompt)).collect();
    let cfg = SamplingConfig { temperature: 1.0, max_new_tokens: 1, stop_at_eos: false, seed: 7, ..Default::default() };
    let drawn = sample(&model, &reqs, &cfg, &[], |_| {})?;
    let mut counts = std::collections::HashMap::<u32, (usize, f32)>::new();
    for s in &drawn {
        let e = counts.entry(s.tokens[0]).or_insert((0, s.logprobs[0]));
        e.0 += 1;
    }
    let worst = counts.values().map(|&(c, lp)| (c as f64 / n as f64 - (lp as f64).exp()).abs()).fold(0.0, f64::max);
    out.push(outcome(
        "sampling",
        worst,
        0.03,
        true,
        format!("max |frequency - probability| over {} tokens drawn {n} times", counts.len()),
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command's checks pass on the CPU (the device a CI machine has), in f32 and f16 (the
    /// CPU has no bf16 matrix product).
    #[test]
    fn checks_pass_on_the_cpu() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures");
        for dtype in ["f32", "f16"] {
            let a = Args { device: "cpu".into(), dtype: dtype.into(), fixtures: Some(fixtures.clone()) };
            run(a).unwrap_or_else(|e| panic!("{dtype}: {e:#}"));
        }
        let missing = Args { device: "cpu".into(), dtype: "f32".into(), fixtures: Some("/nonexistent".into()) };
        assert!(run(missing).unwrap_err().to_string().contains("--fixtures"));
    }
}
