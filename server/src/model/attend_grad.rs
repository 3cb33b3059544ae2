//! Attention for training on the CPU in f32: one op with a hand-written backward.
//!
//! The composed form (`ops::attention_composed`) records a node for each of q's copy, `q k^T`
//! (candle's batched matmul on the gemm crate), the scale, the broadcast mask, the softmax and
//! `p v`. Each holds or produces a (b, heads, t, s) tensor, and in the backward each gradient is
//! another, accumulated through a fresh zeroed tensor. Here the forward is `attend.rs`'s pass
//! per (sequence, kv head) and the backward is one task per group as well: it recomputes the
//! probabilities (a `q k^T` product and a softmax, cheaper than keeping (b, heads, t, s) per
//! layer until the backward), then forms
//!
//!   dV = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dP * P)) * scale,
//!   dQ = dS K,     dK = dS^T Q,
//!
//! the rows of a group's query heads stacked, so that dK and dV sum over the heads that share
//! a kv head (HF's `repeat_kv`). Every product is `skinny.rs`'s row-times-row kernel, with the
//! operand it reads by columns transposed once. `ops`' tests check values and the three
//! gradients against the composed form.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

use super::attend::{Group, group, probabilities, transpose};
use super::skinny::{self, Isa};

/// `softmax(q k^T * scale + mask) v` with grouped kv heads, differentiable in q, k and v.
/// q: (b, heads, t, d); k, v: (b, kv_heads, s, d); mask: additive, (b, 1, t, s), no gradient.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (kb, kv, s, kd) = k.dims4()?;
    if kb != b || kd != d || kv == 0 || h % kv != 0 || v.dims() != k.dims() || mask.dims() != [b, 1, t, s] {
        bail!(
            "fused attention: q {:?}, k {:?}, v {:?} and mask {:?} do not fit together",
            q.dims(),
            k.dims(),
            v.dims(),
            mask.dims()
        );
    }
    let op = Attention { mask: mask.detach().contiguous()?, scale: scale as f32, isa: skinny::isa() };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

struct Attention {
    mask: Tensor,
    scale: f32,
    isa: Option<Isa>,
}

/// The f32 data of a contiguous CPU operand.
fn data<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    super::fused::data(s, l, "fused-attention")
}

/// Shapes of one call: (b, heads, kv heads, t, s, d).
fn dims(q: &Layout, k: &Layout) -> Result<(usize, usize, usize, usize, usize, usize)> {
    match (q.dims(), k.dims()) {
        (&[b, h, t, d], &[_, kv, s, _]) => Ok((b, h, kv, t, s, d)),
        _ => bail!("fused attention: rank-4 q and k expected"),
    }
}

impl Attention {
    /// Runs `f(mask)` on the mask's f32 data.
    fn with_mask<R>(&self, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
        let (ms, ml) = self.mask.storage_and_layout();
        let Storage::Cpu(ms) = &*ms else { bail!("fused attention: the mask is not on the CPU") };
        f(data(ms, ml)?)
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (data(s1, l1)?, data(s2, l2)?, data(s3, l3)?);
        let (b, h, kv, t, s, d) = dims(l1, l2)?;
        let rows = h / kv * t;
        let mut out = vec![0f32; b * h * t * d];
        self.with_mask(|mask| {
            out.par_chunks_mut(rows * d).enumerate().for_each(|(task, out)| {
                let g = Group {
                    q: &q[task * rows * d..][..rows * d],
                    mask: &mask[task / kv * t * s..][..t * s],
                    keys: (&k[task * s * d..][..s * d], d),
                    values: (&v[task * s * d..][..s * d], d),
                    t,
                    s,
                    d,
                    scale: self.scale,
                };
                group(self.isa, &g, out);
            });
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (Storage::Cpu(gs), Storage::Cpu(qs), Storage::Cpu(ks), Storage::Cpu(vs)) = (&*gs, &*qs, &*ks, &*vs) else {
            bail!("fused attention: operands not on the CPU");
        };
        let (dout, qd, kd, vd) = (data(gs, gl)?, data(qs, ql)?, data(ks, kl)?, data(vs, vl)?);
        let (b, h, kv, t, s, d) = dims(ql, kl)?;
        let rows = h / kv * t;
        let (mut dq, mut dk, mut dv) = (vec![0f32; qd.len()], vec![0f32; kd.len()], vec![0f32; vd.len()]);
        let isa = self.isa;
        self.with_mask(|mask| {
            dq.par_chunks_mut(rows * d)
                .zip(dk.par_chunks_mut(s * d).zip(dv.par_chunks_mut(s * d)))
                .enumerate()
                .for_each(|(task, (dq, (dk, dv)))| {
                    let q = &qd[task * rows * d..][..rows * d];
                    let (k, v) = (&kd[task * s * d..][..s * d], &vd[task * s * d..][..s * d]);
                    let dout = &dout[task * rows * d..][..rows * d];
                    let mask = &mask[task / kv * t * s..][..t * s];
                    let g = Group { q, mask, keys: (k, d), values: (v, d), t, s, d, scale: self.scale };
                    group_backward(isa, g, dout, dq, dk, dv);
                });
            Ok(())
        })?;
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, (b, h, t, d), dev)?),
            Some(Tensor::from_vec(dk, (b, kv, s, d), dev)?),
            Some(Tensor::from_vec(dv, (b, kv, s, d), dev)?),
        ))
    }
}

/// The gradients of one group (see the header): `dq` (rows x d), `dk` and `dv` (s x d).
fn group_backward(isa: Option<Isa>, g: Group<'_>, dout: &[f32], dq: &mut [f32], dk: &mut [f32], dv: &mut [f32]) {
    let (q, k, v, s, d, scale) = (g.q, g.keys.0, g.values.0, g.s, g.d, g.scale);
    let rows = q.len() / d;
    // The probabilities again (the forward's output itself is not needed).
    let p = probabilities(isa, &g);
    // dV = P^T dO: rows of P^T against rows of dO^T.
    let (pt, dot) = (transpose(&p, s, rows, s), transpose(dout, d, rows, d));
    skinny::product_serial(isa, (s, d, rows), &pt, rows, &dot, rows, dv, d);
    // dP = dO V^T, then dS = P * (dP - rowsum(dP * P)) * scale, in place.
    let mut ds = vec![0f32; rows * s];
    skinny::product_serial(isa, (rows, s, d), dout, d, v, d, &mut ds, s);
    for (dsr, pr) in ds.chunks_exact_mut(s).zip(p.chunks_exact(s)) {
        let dot: f32 = dsr.iter().zip(pr).map(|(a, b)| a * b).sum();
        for (x, p) in dsr.iter_mut().zip(pr) {
            *x = p * (*x - dot) * scale;
        }
    }
    // dQ = dS K: rows of dS against rows of K^T; dK = dS^T Q: rows of dS^T against rows of Q^T.
    let kt = transpose(k, d, s, d);
    skinny::product_serial(isa, (rows, d, s), &ds, s, &kt, s, dq, d);
    let (dst, qt) = (transpose(&ds, s, rows, s), transpose(q, d, rows, d));
    skinny::product_serial(isa, (s, d, rows), &dst, rows, &qt, rows, dk, d);
}
