//! The output head and the completion tokens' log-softmax as one op on the CPU, without the
//! (rows, vocab) logits.
//!
//! Scoring and DPO need `log_softmax(h W^T)[target]` for each completion position: one number
//! a row, from the largest product of a step (SmolLM2's 49,152 columns: 200 MB of logits for a
//! DPO micro-batch). Composed (`lm_head` then `TokenLogprob`), the forward wrote the logits,
//! the backward wrote their gradient, candle accumulated that into a zeroed tensor of the same
//! size (a fill and an add) and the head's backward read it again: four fresh 200 MB buffers a
//! step, every page of which the kernel clears on first touch (glibc maps blocks this large
//! afresh each time).
//!
//! Here the vocabulary is walked in chunks of about `CHUNK` logits (8 MiB). The forward keeps a
//! running log-sum-exp per row and picks up the target's logit; in training it keeps each
//! chunk, and the backward turns each in place into `g (onehot - softmax)` with the forward's
//! log-sum-exp and adds the chunk's part of `dh = dz W` (and writes its rows of `dW = dz^T h`
//! when the head trains). Blocks of 8 MiB come back from the allocator's free lists on the next
//! step instead of being mapped afresh; nothing of the logits' size is zeroed or added. Products
//! go through `blas::matmul`: BLAS, or bf16 on AMX when chosen, where a frozen head reads its
//! packed forms (`packed.rs`) chunk by chunk instead of packing them on every call.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

use super::amx;
use super::blas::{Operand, matmul};
use super::packed::PackedWeight;
use super::vmath;

/// Logits computed at a time, rows x columns.
const CHUNK: usize = 1 << 21;

/// Whether [`logprobs`] takes these: f32 hidden rows (n, d) and a (vocab, d) weight on the CPU.
pub fn takes(hidden: &Tensor, weight: &Tensor) -> bool {
    hidden.device().is_cpu()
        && weight.device().is_cpu()
        && hidden.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && hidden.rank() == 2
        && weight.rank() == 2
        && hidden.dim(1).ok() == weight.dim(1).ok()
}

/// `log_softmax(hidden @ weight^T)[targets]`, one value a row, differentiable in both operands;
/// `packed`: the weight's packed forms (`Linear::packed_now`), read in its place.
pub fn logprobs(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &[u32],
    packed: Option<Arc<PackedWeight>>,
) -> Result<Tensor> {
    logprobs_in_chunks(hidden, weight, targets, CHUNK, packed)
}

fn logprobs_in_chunks(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &[u32],
    chunk: usize,
    packed: Option<Arc<PackedWeight>>,
) -> Result<Tensor> {
    // In training the chunks' logits are kept for the backward (a recomputed f32 head product
    // costs more than the memory it saves); they are the allocator's reused blocks, not maps.
    let keep = hidden.track_op() || weight.track_op();
    let op = HeadLogprob {
        targets: targets.to_vec(),
        chunk,
        keep,
        // Given only under bf16 products (`Linear::packed_now`).
        packed: packed.filter(|_| targets.len() >= super::packed::MIN_ROWS),
        lse: Mutex::new(Vec::new()),
        kept: Mutex::new(Vec::new()),
    };
    hidden.contiguous()?.apply_op2(&weight.contiguous()?, op)
}

struct HeadLogprob {
    targets: Vec<u32>,
    /// Logits a chunk, rows x columns.
    chunk: usize,
    /// Keep each chunk's logits for the backward.
    keep: bool,
    /// The frozen weight's packed forms, read in its place.
    packed: Option<Arc<PackedWeight>>,
    /// Each row's log-sum-exp, from the forward, for the backward.
    lse: Mutex<Vec<f32>>,
    /// The chunks' logits when `keep`, taken by the backward.
    kept: Mutex<Vec<Vec<f32>>>,
}

impl HeadLogprob {
    /// Columns a chunk for `n` rows: a multiple of 32 (AMX's tile width), at least 32.
    fn columns(&self, n: usize, v: usize) -> usize {
        ((self.chunk / n.max(1)) / 32 * 32).clamp(32, v.max(32))
    }

    /// The vocabulary's column ranges, chunk by chunk.
    fn chunks(&self, n: usize, v: usize) -> impl Iterator<Item = (usize, usize)> {
        let c = self.columns(n, v);
        (0..v).step_by(c).map(move |c0| (c0, c.min(v - c0)))
    }
}

impl HeadLogprob {
    /// `h (n, d) @ w[c0..c0 + c]^T`: the logits of columns `c0..c0 + c`, row-major (n, c).
    fn logits(&self, h: &[f32], w: &[f32], (n, d, v): (usize, usize, usize), (c0, c): (usize, usize)) -> Vec<f32> {
        let a = Operand { data: h, row_stride: d, col_stride: 1 };
        if let Some(p) = &self.packed {
            return amx::matmul_packed(n, a, p.forward(w, false, (d, v)).columns(c0, c));
        }
        let b = Operand { data: &w[c0 * d..(c0 + c) * d], row_stride: 1, col_stride: d };
        matmul(n, c, d, a, b, true)
    }

    /// `dz (n, c) @ w[c0..c0 + c] (c, d)`: the chunk's part of the hidden rows' gradient.
    fn hidden_grad(
        &self,
        dz: &[f32],
        w: &[f32],
        (n, d, v): (usize, usize, usize),
        (c0, c): (usize, usize),
    ) -> Vec<f32> {
        let a = Operand { data: dz, row_stride: c, col_stride: 1 };
        if let Some(p) = &self.packed {
            return amx::matmul_packed(n, a, p.backward(w, false, (d, v)).rows(c0, c));
        }
        let b = Operand { data: &w[c0 * d..(c0 + c) * d], row_stride: d, col_stride: 1 };
        matmul(n, d, c, a, b, true)
    }
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(x), Some((a, b))) => Ok(&x[a..b]),
        _ => bail!("head-logprob: contiguous f32 operands expected"),
    }
}

impl CustomOp2 for HeadLogprob {
    fn name(&self) -> &'static str {
        "head-logprob"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let ((n, d), (v, d2)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        if d != d2 || self.targets.len() != n {
            bail!("head-logprob: hidden {:?}, weight {:?}, {} targets", l1.dims(), l2.dims(), self.targets.len());
        }
        if let Some(t) = self.targets.iter().find(|&&t| t as usize >= v) {
            bail!("head-logprob: target {t} is beyond the vocabulary of {v}");
        }
        let (h, w) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        self.kept.lock().expect("kept lock").clear();
        let mut lse = vec![f32::NEG_INFINITY; n];
        let mut target_logit = vec![0f32; n];
        for (c0, c) in self.chunks(n, v) {
            let z = self.logits(h, w, (n, d, v), (c0, c));
            z.par_chunks(c).zip(&mut lse).zip(&mut target_logit).zip(&self.targets).for_each(
                |(((row, lse), zt), &t)| {
                    // This chunk's log-sum-exp, merged into the running one.
                    let part = row[0] - vmath::log_softmax_at(row, 0);
                    let hi = lse.max(part);
                    if part.is_nan() {
                        *lse = f32::NAN; // `max` would drop it: a NaN logit makes the row NaN
                    } else if hi > f32::NEG_INFINITY {
                        *lse = hi + ((*lse - hi).exp() + (part - hi).exp()).ln();
                    }
                    if (c0..c0 + c).contains(&(t as usize)) {
                        *zt = row[t as usize - c0];
                    }
                },
            );
            if self.keep {
                self.kept.lock().expect("kept lock").push(z);
            }
        }
        let out = target_logit.iter().zip(&lse).map(|(z, l)| z - l).collect();
        *self.lse.lock().expect("lse lock") = lse;
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(&self, h: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (want_dh, want_dw) = (h.track_op(), w.track_op());
        if !want_dh && !want_dw {
            return Ok((None, None));
        }
        let ((n, d), (v, _)) = (h.dims2()?, w.dims2()?);
        let g = grad.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let lse = self.lse.lock().expect("lse lock").clone();
        if lse.len() != n {
            bail!("head-logprob: backward without its forward");
        }
        let (hs, hl) = h.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (Storage::Cpu(hs), Storage::Cpu(ws)) = (&*hs, &*ws) else {
            bail!("head-logprob: operands not on the CPU");
        };
        let (hd, wd) = (contiguous(hs, hl)?, contiguous(ws, wl)?);
        let mut dh = if want_dh { vec![0f32; n * d] } else { Vec::new() };
        let mut dw = Vec::with_capacity(if want_dw { v * d } else { 0 });
        let mut kept = std::mem::take(&mut *self.kept.lock().expect("kept lock")).into_iter();
        for (c0, c) in self.chunks(n, v) {
            // dz = g (onehot - softmax), in place of the forward's logits (or recomputed ones).
            let mut dz = match kept.next() {
                Some(z) => z,
                None => self.logits(hd, wd, (n, d, v), (c0, c)),
            };
            dz.par_chunks_mut(c).enumerate().for_each(|(i, row)| {
                vmath::scaled_exp(row, lse[i], -g[i]);
                let t = self.targets[i] as usize;
                if (c0..c0 + c).contains(&t) {
                    row[t - c0] += g[i];
                }
            });
            if want_dh {
                let part = self.hidden_grad(&dz, wd, (n, d, v), (c0, c));
                dh.par_chunks_mut(d)
                    .zip(part.par_chunks(d))
                    .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
            }
            if want_dw {
                // dw[c0..c0 + c] = dz^T (c, n) @ h (n, d)
                let dz_t = Operand { data: &dz[..], row_stride: 1, col_stride: c };
                let h_rows = Operand { data: hd, row_stride: d, col_stride: 1 };
                dw.extend_from_slice(&matmul(c, d, n, dz_t, h_rows, true));
            }
        }
        let dev = h.device();
        let dh = want_dh.then(|| Tensor::from_vec(dh, (n, d), dev)).transpose()?;
        let dw = want_dw.then(|| Tensor::from_vec(dw, (v, d), dev)).transpose()?;
        Ok((dh, dw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Against the composed head (`h W^T`, then `log_softmax`, then the target's column), which
    /// `logprobs.rs` checks against f64 autograd: values and both gradients, with the
    /// vocabulary in one chunk and in several (the last one short).
    #[test]
    fn equals_the_composed_head_and_its_gradients() {
        let dev = Device::Cpu;
        let (n, d, v) = (7, 16, 200);
        let h: Vec<f32> = (0..n * d).map(|i| ((i * 7919) % 101) as f32 / 40.0 - 1.2).collect();
        let w: Vec<f32> = (0..v * d).map(|i| ((i * 104729) % 97) as f32 / 30.0 - 1.6).collect();
        let targets: Vec<u32> = vec![0, 199, 31, 32, 64, 150, 7];
        let weights = Tensor::new(&[0.3f32, -1.7, 1.0, 0.5, 2.0, -0.2, 0.9], &dev).unwrap();
        let hv = Var::from_vec(h, (n, d), &dev).unwrap();
        let wv = Var::from_vec(w, (v, d), &dev).unwrap();
        let composed = {
            let z = hv.as_tensor().matmul(&wv.as_tensor().t().unwrap()).unwrap();
            let lp = candle_nn::ops::log_softmax(&z, 1).unwrap();
            let t = Tensor::new(targets.as_slice(), &dev).unwrap().unsqueeze(1).unwrap();
            lp.gather(&t, 1).unwrap().squeeze(1).unwrap()
        };
        let want_g = (&composed * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let max_diff = |a: &Tensor, b: &Tensor| {
            (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        // 7 rows: 64 logits a chunk is 32 columns (7 chunks, the last of 8); 1 << 21 is one chunk.
        for chunk in [64, 1 << 21] {
            let got = logprobs_in_chunks(hv.as_tensor(), wv.as_tensor(), &targets, chunk, None).unwrap();
            assert!(max_diff(&got, &composed) < 1e-5, "chunk {chunk}: values");
            let g = (&got * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, var) in [("dh", &hv), ("dW", &wv)] {
                let (a, b) = (g.get(var.as_tensor()).unwrap(), want_g.get(var.as_tensor()).unwrap());
                assert!(max_diff(a, b) < 1e-5, "chunk {chunk}: {name} {}", max_diff(a, b));
            }
        }
        // A frozen weight gets no gradient (and costs no product).
        let frozen = wv.as_tensor().detach();
        let got = logprobs(hv.as_tensor(), &frozen, &targets, None).unwrap();
        let g = got.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&frozen).is_none() && g.get(hv.as_tensor()).is_some());
        // Targets past the vocabulary are refused.
        let e = logprobs(hv.as_tensor(), &frozen, &[0, 1, 2, 3, 4, 5, 200], None).unwrap_err().to_string();
        assert!(e.contains("target 200 is beyond the vocabulary of 200"), "{e}");
    }
}
