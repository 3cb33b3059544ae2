//! Fused CPU kernels with backward passes, for the ops a training step runs on every layer.
//!
//! candle-nn fuses RMSNorm, softmax and rope but records no backward for them, so training used
//! compositions of element-wise primitives: an RMSNorm forward and backward was ~15 passes over
//! the activations, each a fresh tensor. Each op here is one pass forward and one backward,
//! over rows split across rayon's threads, for f32 on the CPU (`takes`); everything else keeps
//! the composed form in `ops`. Backward passes are themselves ops without gradients (no
//! second-order use here). Ops with two gradients return them stacked in one tensor, which is
//! then split by views. `ops`' tests check each op and its gradients against the composed form.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// Whether the fused kernels take these tensors: all f32 on the CPU.
pub fn takes(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
}

/// The f32 data of a contiguous operand.
pub(super) fn data<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => bail!("{op}: operands must be contiguous"),
        _ => bail!("{op}: f32 operands expected"),
    }
}

/// Rows per rayon task: a few tasks per thread, whole rows each.
fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(rayon::current_num_threads().max(1) * 4).max(1)
}

// ---------------------------------------------------------------------------------------------
// RMSNorm: y = x * r * w, r = 1 / sqrt(mean(x^2) + eps)

/// RMSNorm over the last dimension, differentiable in `xs` and `weight`.
pub fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    xs.contiguous()?.apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })
}

struct RmsNorm {
    eps: f32,
}

fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ss: f32 = x.iter().map(|v| v * v).sum();
    1.0 / (ss / x.len() as f32 + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (data(s1, l1, self.name())?, data(s2, l2, self.name())?);
        let d = w.len();
        if l1.dims().last() != Some(&d) {
            bail!("fused-rms-norm: input {:?} against a weight of {d}", l1.dims());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
            let r = inv_rms(x, self.eps);
            for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
                *y = x * r * w;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let rows = x.elem_count() / d.max(1);
        let both = x.apply_op3_no_bwd(w, &grad.contiguous()?, &RmsNormBwd { eps: self.eps })?;
        let dx = both.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = both.get(rows)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// (x, w, g) -> (rows + 1, d): dx = r (g w - x^ mean(g w x^)), x^ = x r; last row dw = sum g x^.
struct RmsNormBwd {
    eps: f32,
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "fused-rms-norm-bwd"
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
        let (x, w, g) = (data(s1, l1, self.name())?, data(s2, l2, self.name())?, data(s3, l3, self.name())?);
        let d = w.len();
        let rows = x.len() / d;
        let per = rows_per_task(rows);
        let mut out = vec![0f32; (rows + 1) * d];
        let (dx, dw) = out.split_at_mut(rows * d);
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(per * d)
            .zip(x.par_chunks(per * d).zip(g.par_chunks(per * d)))
            .map(|(dx, (x, g))| {
                let mut dw = vec![0f32; d];
                for ((dx, x), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                    let r = inv_rms(x, self.eps);
                    let mut dot = 0f32;
                    for ((x, g), w) in x.iter().zip(g).zip(w) {
                        dot += g * w * x * r;
                    }
                    let c = dot / d as f32;
                    for (((dx, x), g), (w, dw)) in dx.iter_mut().zip(x).zip(g).zip(w.iter().zip(dw.iter_mut())) {
                        let xhat = x * r;
                        *dx = r * (g * w - xhat * c);
                        *dw += g * xhat;
                    }
                }
                dw
            })
            .collect();
        for p in partials {
            for (a, b) in dw.iter_mut().zip(p) {
                *a += b;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 1, d))))
    }
}

// ---------------------------------------------------------------------------------------------
// Softmax over the last dimension: dx = y (g - sum(g y))

/// Softmax over the last dimension, differentiable.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(Softmax)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = data(s, l, self.name())?;
        let d = *l.dims().last().unwrap_or(&1);
        let mut y = vec![0f32; x.len()];
        if d > 0 {
            y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (y, x) in y.iter_mut().zip(x) {
                    *y = (x - max).exp();
                    sum += *y;
                }
                let inv = 1.0 / sum;
                y.iter_mut().for_each(|y| *y *= inv);
            });
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwd)?))
    }
}

/// (y, g) -> y (g - sum(g y)) per row.
struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "fused-softmax-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (data(s1, l1, self.name())?, data(s2, l2, self.name())?);
        let d = *l1.dims().last().unwrap_or(&1);
        let mut dx = vec![0f32; y.len()];
        if d > 0 {
            dx.par_chunks_mut(d).zip(y.par_chunks(d).zip(g.par_chunks(d))).for_each(|(dx, (y, g))| {
                let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
                for ((dx, y), g) in dx.iter_mut().zip(y).zip(g) {
                    *dx = y * (g - dot);
                }
            });
        }
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding ("rotate half"): a rotation by the position's angles; its backward is the
// rotation by the opposite angles, i.e. the same kernel with `sin` negated.

/// `xs` (b, h, t, d), `cos`/`sin` (b, t, d / 2): differentiable in `xs` (the tables are constants).
pub fn rope(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope)
}

struct Rope;

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
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
        let (x, cos, sin) = (data(s1, l1, self.name())?, data(s2, l2, self.name())?, data(s3, l3, self.name())?);
        let (b, h, t, d) = l1.shape().dims4()?;
        let half = d / 2;
        if l2.dims() != [b, t, half] || l3.dims() != [b, t, half] {
            bail!("fused-rope: input {:?}, cos {:?}, sin {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        let mut y = vec![0f32; x.len()];
        if t * d > 0 {
            y.par_chunks_mut(t * d).zip(x.par_chunks(t * d)).enumerate().for_each(|(bh, (y, x))| {
                let table = (bh / h) * t * half;
                for i in 0..t {
                    let (cos, sin) = (&cos[table + i * half..][..half], &sin[table + i * half..][..half]);
                    let (x1, x2) = x[i * d..(i + 1) * d].split_at(half);
                    let (y1, y2) = y[i * d..(i + 1) * d].split_at_mut(half);
                    for j in 0..half {
                        y1[j] = x1[j] * cos[j] - x2[j] * sin[j];
                        y2[j] = x2[j] * cos[j] + x1[j] * sin[j];
                    }
                }
            });
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad.contiguous()?.apply_op3_no_bwd(cos, &sin.neg()?, &Rope)?;
        Ok((Some(dx), None, None))
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU: silu(gate) * up, the Llama MLP's middle.

/// `silu(gate) * up`, differentiable in both.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "fused-silu-mul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (gate, up) = (data(s1, l1, self.name())?, data(s2, l2, self.name())?);
        if l1.dims() != l2.dims() {
            bail!("fused-silu-mul: gate {:?}, up {:?}", l1.dims(), l2.dims());
        }
        let mut y = vec![0f32; gate.len()];
        let chunk = 4096;
        y.par_chunks_mut(chunk)
            .zip(gate.par_chunks(chunk).zip(up.par_chunks(chunk)))
            .for_each(|(y, (g, u))| super::vmath::silu_mul(g, u, y));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = gate.elem_count();
        let both = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SiluMulBwd)?;
        let d_gate = both.narrow(0, 0, n)?.reshape(gate.shape())?;
        let d_up = both.narrow(0, n, n)?.reshape(up.shape())?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

/// `silu(gate) * up` on gate and up side by side in each row of one (.., 2 n) tensor, as one
/// product on the stacked weights writes them; its gradient is one tensor in the same layout.
pub fn silu_mul_joined(gate_up: &Tensor) -> Result<Tensor> {
    gate_up.contiguous()?.apply_op1(SiluMulJoined)
}

struct SiluMulJoined;

impl SiluMulJoined {
    /// The half width `n` of rows `2 n` wide.
    fn half(dims: &[usize]) -> Result<usize> {
        match dims.last() {
            Some(&w) if w % 2 == 0 => Ok(w / 2),
            _ => bail!("fused-silu-mul-joined: gate and up side by side need an even last dimension, got {dims:?}"),
        }
    }
}

impl CustomOp1 for SiluMulJoined {
    fn name(&self) -> &'static str {
        "fused-silu-mul-joined"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Result<(CpuStorage, Shape)> {
        let gu = data(s1, l1, self.name())?;
        let n = Self::half(l1.dims())?;
        let mut y = vec![0f32; gu.len() / 2];
        if let Some(count) = y.len().checked_div(n) {
            let rows = rows_per_task(count);
            y.par_chunks_mut(rows * n).zip(gu.par_chunks(2 * rows * n)).for_each(|(y, gu)| {
                for (y, gu) in y.chunks_exact_mut(n).zip(gu.chunks_exact(2 * n)) {
                    let (g, u) = gu.split_at(n);
                    super::vmath::silu_mul(g, u, y);
                }
            });
        }
        let mut dims = l1.dims().to_vec();
        *dims.last_mut().expect("checked by half") = n;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(&self, gate_up: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(gate_up.apply_op2_no_bwd(&grad.contiguous()?, &SiluMulJoinedBwd)?))
    }
}

/// (gate_up, g) -> d gate_up, row by row as [`SiluMulBwd`].
struct SiluMulJoinedBwd;

impl CustomOp2 for SiluMulJoinedBwd {
    fn name(&self) -> &'static str {
        "fused-silu-mul-joined-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (gu, g) = (data(s1, l1, self.name())?, data(s2, l2, self.name())?);
        let n = SiluMulJoined::half(l1.dims())?;
        if g.len() * 2 != gu.len() {
            bail!("fused-silu-mul-joined-bwd: input {:?}, gradient {:?}", l1.dims(), l2.dims());
        }
        let mut out = vec![0f32; gu.len()];
        if let Some(count) = g.len().checked_div(n) {
            let rows = rows_per_task(count);
            out.par_chunks_mut(2 * rows * n).zip(gu.par_chunks(2 * rows * n).zip(g.par_chunks(rows * n))).for_each(
                |(out, (gu, g))| {
                    for (out, (gu, g)) in out.chunks_exact_mut(2 * n).zip(gu.chunks_exact(2 * n).zip(g.chunks_exact(n)))
                    {
                        let (dg, du) = out.split_at_mut(n);
                        let (x, u) = gu.split_at(n);
                        silu_mul_grads(x, u, g, dg, du);
                    }
                },
            );
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// d gate and d up of `silu(x) * u` for the upstream gradient `g` (`du` doubles as the
/// sigmoid's buffer).
fn silu_mul_grads(x: &[f32], u: &[f32], g: &[f32], dg: &mut [f32], du: &mut [f32]) {
    super::vmath::sigmoid(x, du);
    for ((dg, du), ((&x, &u), &g)) in dg.iter_mut().zip(du).zip(x.iter().zip(u).zip(g)) {
        let s = *du;
        *dg = g * u * s * (1.0 + x * (1.0 - s));
        *du = g * x * s;
    }
}

/// (gate, up, g) -> (2 n,): d gate = g up s (1 + gate (1 - s)), then d up = g silu(gate).
struct SiluMulBwd;

impl CustomOp3 for SiluMulBwd {
    fn name(&self) -> &'static str {
        "fused-silu-mul-bwd"
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
        let (gate, up, g) = (data(s1, l1, self.name())?, data(s2, l2, self.name())?, data(s3, l3, self.name())?);
        let n = gate.len();
        let mut out = vec![0f32; 2 * n];
        let (d_gate, d_up) = out.split_at_mut(n);
        let chunk = 4096;
        d_gate
            .par_chunks_mut(chunk)
            .zip(d_up.par_chunks_mut(chunk))
            .zip(gate.par_chunks(chunk).zip(up.par_chunks(chunk)).zip(g.par_chunks(chunk)))
            .for_each(|((dg, du), ((x, u), g))| silu_mul_grads(x, u, g, dg, du));
        Ok((CpuStorage::F32(out), Shape::from(2 * n)))
    }
}
