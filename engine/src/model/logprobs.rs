//! Completion log-probabilities: `log pi(y_t | x, y_<t)` summed over completion tokens only.
//! This is what DPO's implicit reward and the acquisition functions consume.
//!
//! Only the hidden states that predict a completion token go through the output head, and the
//! log-softmax is fused with the gather of the target ids (one pass over each vocabulary row,
//! no (tokens, vocab) log-prob tensor), with a hand-written backward so training uses it too.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::Model;
use super::batch::{Batch, Padding};
use super::error::{ModelError, Result};
use super::ops::acc_dtype;

/// Log-probs of one completion.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SequenceLogprobs {
    /// Sum over the completion's tokens.
    pub sum: f32,
    /// One value per completion token.
    pub tokens: Vec<f32>,
}

/// `log_softmax(logits)[target]` per row: (n, vocab), (n,) u32 -> (n,) f32.
struct TokenLogprob;

impl CustomOp2 for TokenLogprob {
    fn name(&self) -> &'static str {
        "token-logprob"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let targets = match (s2, l2.contiguous_offsets()) {
            (CpuStorage::U32(t), Some((a, b))) => &t[a..b],
            _ => candle_core::bail!("token-logprob: targets must be contiguous u32"),
        };
        let Some((a, b)) = l1.contiguous_offsets() else {
            candle_core::bail!("token-logprob: logits must be contiguous");
        };
        if let Some(t) = targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("token-logprob: target {t} is beyond the vocabulary of {v}");
        }
        fn rows<T: Copy + Send + Sync>(x: &[T], v: usize, targets: &[u32], f: impl Fn(T) -> f32 + Sync) -> Vec<f32> {
            x.par_chunks(v)
                .zip(targets.par_iter())
                .map(|(row, &t)| {
                    let max = row.iter().map(|&e| f(e)).fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = row.iter().map(|&e| (f(e) - max).exp()).sum();
                    f(row[t as usize]) - max - sum.ln()
                })
                .collect()
        }
        let out = match s1 {
            CpuStorage::F32(x) => {
                let x = &x[a..b];
                // Vectorised: one max pass and one exp-sum pass per vocabulary row.
                x.par_chunks(v)
                    .zip(targets.par_iter())
                    .map(|(row, &t)| super::cpu::vmath::log_softmax_at(row, t as usize))
                    .collect()
            }
            CpuStorage::F64(x) => {
                // Kept in f64 throughout so finite-difference checks stay exact.
                let x = &x[a..b];
                let out: Vec<f64> = x
                    .par_chunks(v)
                    .zip(targets.par_iter())
                    .map(|(row, &t)| {
                        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let sum: f64 = row.iter().map(|&e| (e - max).exp()).sum();
                        row[t as usize] - max - sum.ln()
                    })
                    .collect();
                return Ok((CpuStorage::F64(out), Shape::from(n)));
            }
            CpuStorage::BF16(x) => rows(&x[a..b], v, targets, |e| e.to_f32()),
            CpuStorage::F16(x) => rows(&x[a..b], v, targets, |e| e.to_f32()),
            _ => candle_core::bail!("token-logprob: unsupported logits dtype"),
        };
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // d lp_i / d z_ij = 1[j = target_i] - softmax(z_i)_j
        if logits.dtype() == DType::F32 && grad.dtype() == DType::F32 && logits.device().is_cpu() {
            return Ok((Some(token_logprob_grad_cpu(logits, targets, grad)?), None));
        }
        let acc = acc_dtype(logits.dtype());
        let p = candle_nn::ops::softmax_last_dim(&logits.detach().to_dtype(acc)?)?;
        let g = grad.detach().to_dtype(acc)?.unsqueeze(1)?;
        let dz = p.broadcast_mul(&g)?.neg()?;
        let dz = dz.scatter_add(&targets.unsqueeze(1)?, &g, 1)?;
        Ok((Some(dz.to_dtype(logits.dtype())?), None))
    }
}

/// [`TokenLogprob`]'s backward for f32 on the CPU: one vectorised pass per vocabulary row
/// (`vmath`), where the composed form (softmax, scale, negate, scatter) wrote four (n, vocab)
/// tensors: the logits of a DPO micro-batch are 200 MB.
fn token_logprob_grad_cpu(logits: &Tensor, targets: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
    let (n, v) = logits.dims2()?;
    let (targets, grad) = (targets.to_vec1::<u32>()?, grad.to_vec1::<f32>()?);
    let (ls, ll) = logits.storage_and_layout();
    let (candle_core::Storage::Cpu(CpuStorage::F32(x)), Some((a, b))) = (&*ls, ll.contiguous_offsets()) else {
        candle_core::bail!("token-logprob: contiguous f32 logits expected");
    };
    let mut dz = vec![0f32; n * v];
    dz.par_chunks_mut(v.max(1))
        .zip(x[a..b].par_chunks(v.max(1)))
        .enumerate()
        .for_each(|(i, (out, row))| super::cpu::vmath::log_softmax_at_grad(row, targets[i] as usize, grad[i], out));
    drop(ls);
    Tensor::from_vec(dz, (n, v), logits.device())
}

/// `log_softmax(logits)[target]` per row, differentiable: (n, vocab), (n,) u32 -> (n,).
/// f32 out (f64 for f64 logits) whatever the logits' dtype.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    if logits.device().is_cpu() {
        logits.contiguous()?.apply_op2(&targets.contiguous()?, TokenLogprob)
    } else {
        let acc = acc_dtype(logits.dtype());
        let lp = candle_nn::ops::log_softmax(&logits.to_dtype(acc)?, 1)?;
        lp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)
    }
}

/// Completion log-probs of one batch, as tensors (differentiable when the model is).
#[derive(Debug)]
pub struct BatchLogprobs {
    /// (batch,) sums over each completion.
    pub sums: Tensor,
    /// (total completion tokens,) values, row after row.
    pub tokens: Tensor,
    /// Completion length of each row, to split `tokens`.
    pub lengths: Vec<usize>,
}

/// What the first `layer` layers compute for each sequence (prompt then completion), one
/// (length, hidden) tensor per sequence. When those layers are frozen it never changes, so a
/// trainer computes it once and runs only the layers above on every step.
#[derive(Debug, Clone, Copy)]
pub struct Prefix<'a> {
    pub layer: usize,
    pub states: &'a [Tensor],
}

/// Hidden states after the first `layer` layers for each sequence, without gradients,
/// `batch_size` sequences per forward pass.
pub fn prefix_states(model: &Model, seqs: &[&[u32]], layer: usize, batch_size: usize) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(batch_size.max(1)) {
        let batch = Batch::new(chunk, Padding::Right, 0, model.dtype(), model.device())?;
        let xs = model.embed(&batch.input_ids, &batch.position_ids)?;
        let h = model.layers(xs, 0..layer, &batch.position_ids, &batch.mask, None)?.detach();
        for (i, s) in chunk.iter().enumerate() {
            out.push(h.get(i)?.narrow(0, 0, s.len())?.contiguous()?);
        }
    }
    Ok(out)
}

/// Scores one batch of (prompt, completion) pairs in a single forward pass.
pub fn batch_logprobs(model: &Model, pairs: &[(&[u32], &[u32])]) -> Result<BatchLogprobs> {
    batch_logprobs_from(model, pairs, None)
}

/// As [`batch_logprobs`], starting from cached hidden states when `prefix` is given.
pub fn batch_logprobs_from(model: &Model, pairs: &[(&[u32], &[u32])], prefix: Option<Prefix>) -> Result<BatchLogprobs> {
    for (i, (p, c)) in pairs.iter().enumerate() {
        if p.is_empty() {
            return Err(ModelError::Input(format!(
                "pair {i}: the prompt is empty (a completion token needs a preceding token)"
            )));
        }
        if c.is_empty() {
            return Err(ModelError::Input(format!("pair {i}: the completion is empty")));
        }
        model.check_ids(&format!("pair {i} prompt"), p)?;
        model.check_ids(&format!("pair {i} completion"), c)?;
        if p.len() + c.len() > model.max_positions() {
            return Err(ModelError::Input(format!(
                "pair {i}: {} tokens exceed the model's {} positions",
                p.len() + c.len(),
                model.max_positions()
            )));
        }
    }
    let seqs: Vec<Vec<u32>> = pairs.iter().map(|(p, c)| [*p, *c].concat()).collect();
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    let batch = Batch::new(&refs, Padding::Right, 0, model.dtype(), model.device())?;
    let (b, t) = batch.dims();
    let hidden = match prefix {
        None => model.hidden(&batch.input_ids, &batch.position_ids, &batch.mask, None)?,
        Some(p) => {
            if p.states.len() != b {
                return Err(ModelError::Input(format!("{} cached prefixes for {b} sequences", p.states.len())));
            }
            let rows = p
                .states
                .iter()
                .map(|h| {
                    let pad = t - h.dim(0)?;
                    if pad == 0 { Ok(h.clone()) } else { h.pad_with_zeros(0, 0, pad) }
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let xs = Tensor::stack(&rows, 0)?;
            model.blocks(xs, p.layer, &batch.position_ids, &batch.mask, None)?
        }
    };

    // Rows of the flattened hidden states that predict a completion token, and their targets.
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut lengths = Vec::with_capacity(b);
    for (i, (p, c)) in pairs.iter().enumerate() {
        for (j, &tok) in c.iter().enumerate() {
            rows.push((i * t + p.len() - 1 + j) as u32);
            targets.push(tok);
        }
        lengths.push(c.len());
    }
    let n = rows.len();
    let dev = model.device();
    let hidden = hidden.reshape((b * t, ()))?.index_select(&Tensor::from_vec(rows, n, dev)?, 0)?;
    let head = model.head();
    let plain = head.bias.is_none() && head.lora.is_none() && !head.in_out;
    let tokens = if plain && super::cpu::head::takes(&hidden, &head.weight) {
        // Without the (rows, vocab) logits (`cpu/head.rs`).
        super::cpu::head::logprobs(&hidden, &head.weight, &targets, head.packed_now())?
    } else {
        let logits = model.lm_head(&hidden)?;
        token_logprobs(&logits, &Tensor::from_vec(targets, n, dev)?)?
    };

    // Per-row sums as one matmul with a 0/1 selection matrix (keeps the graph small).
    let mut sel = vec![0f32; b * n];
    let mut k = 0;
    for (i, len) in lengths.iter().enumerate() {
        for _ in 0..*len {
            sel[i * n + k] = 1.0;
            k += 1;
        }
    }
    let sel = Tensor::from_vec(sel, (b, n), dev)?.to_dtype(tokens.dtype())?;
    let sums = sel.matmul(&tokens.unsqueeze(1)?)?.squeeze(1)?;
    Ok(BatchLogprobs { sums, tokens, lengths })
}

/// Scores many (prompt, completion) pairs without gradients, `batch_size` pairs per forward
/// pass, grouping pairs of similar length to waste little on padding. `on_batch` is told how
/// many pairs each finished pass covered (for progress bars). Results come in input order.
pub fn sequence_logprobs(
    model: &Model,
    pairs: &[(&[u32], &[u32])],
    batch_size: usize,
    mut on_batch: impl FnMut(usize),
) -> Result<Vec<SequenceLogprobs>> {
    let batch_size = batch_size.max(1);
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(pairs[i].0.len() + pairs[i].1.len()));
    let mut out: Vec<Option<SequenceLogprobs>> = vec![None; pairs.len()];
    for chunk in order.chunks(batch_size) {
        let sub: Vec<(&[u32], &[u32])> = chunk.iter().map(|&i| pairs[i]).collect();
        let lp = batch_logprobs(model, &sub).map_err(|e| match e {
            // Report the caller's index, not the position inside the sorted chunk.
            ModelError::Input(m) => ModelError::Input(renumber(&m, chunk)),
            other => other,
        })?;
        let sums = lp.sums.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let tokens = lp.tokens.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let mut at = 0;
        for ((&i, len), sum) in chunk.iter().zip(&lp.lengths).zip(sums) {
            out[i] = Some(SequenceLogprobs { sum, tokens: tokens[at..at + len].to_vec() });
            at += len;
        }
        on_batch(chunk.len());
    }
    Ok(out.into_iter().map(|o| o.expect("every pair scored")).collect())
}

fn renumber(message: &str, chunk: &[usize]) -> String {
    // Messages start "pair {k}: ..." with k an index into `chunk`.
    if let Some(rest) = message.strip_prefix("pair ") {
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Some(&orig) = digits.parse::<usize>().ok().and_then(|k| chunk.get(k)) {
            return format!("pair {orig}{}", &rest[digits.len()..]);
        }
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_token_logprobs_match_log_softmax_and_have_the_right_gradient() {
        let dev = Device::Cpu;
        let z = Tensor::new(&[[1.0f64, 2.0, 0.5, -1.0], [0.1, 0.2, 3.0, 0.0]], &dev).unwrap();
        let t = Tensor::new(&[1u32, 3], &dev).unwrap();
        let want = candle_nn::ops::log_softmax(&z, 1)
            .unwrap()
            .gather(&t.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let got = token_logprobs(&z, &t).unwrap();
        let d = (got - &want).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
        assert!(d < 1e-12);

        // Gradient against the composed (autograd) form, with unequal weights per row.
        let w = Tensor::new(&[0.3f64, -1.7], &dev).unwrap();
        let v = Var::from_tensor(&z).unwrap();
        let g1 = (token_logprobs(v.as_tensor(), &t).unwrap() * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let composed = candle_nn::ops::log_softmax(v.as_tensor(), 1)
            .unwrap()
            .gather(&t.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let g2 = (composed * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let a = g1.get(v.as_tensor()).unwrap();
        let b = g2.get(v.as_tensor()).unwrap();
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
        assert!(d < 1e-12, "gradient mismatch {d}");

        // f32 takes the one-pass backward (token_logprob_grad_cpu): against the f64 gradient.
        let v32 = Var::from_tensor(&z.to_dtype(DType::F32).unwrap()).unwrap();
        let w32 = w.to_dtype(DType::F32).unwrap();
        let g3 = (token_logprobs(v32.as_tensor(), &t).unwrap() * &w32).unwrap().sum_all().unwrap().backward().unwrap();
        let c = g3.get(v32.as_tensor()).unwrap().to_dtype(DType::F64).unwrap();
        let d = (c - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
        assert!(d < 1e-6, "f32 gradient mismatch {d}");
    }

    #[test]
    fn renumbers_errors_to_caller_indices() {
        assert_eq!(renumber("pair 1: the completion is empty", &[7, 3]), "pair 3: the completion is empty");
    }
}
