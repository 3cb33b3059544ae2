//! Attention for inference on the CPU in f32: scores, mask, softmax and the weighted sum of the
//! values in one pass per query row, reading a KV cache's keys and values in place.
//!
//! The composed form (`ops::attention`: batched matmul, scale, mask, softmax, matmul) makes four
//! intermediate tensors and runs its small per-head products through the gemm crate, whose
//! set-up dominates at decoding sizes: ~10% of a batch-32 sampling step, and another ~5% in
//! scalar `expf`. Here each (sequence, head) is one task: the scores of one query row live in a
//! row-sized buffer, exp is a polynomial the compiler vectorises (compiled for AVX-512 or AVX2
//! where the CPU has them), and nothing else is allocated. It is used only where no gradient is
//! needed (sampling, scoring, reference log-probs); training keeps the composed form.

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

use super::skinny::{self, Isa};

/// `softmax(q k^T * scale + mask) v` per kv group, as `ops::attention`, or `None` where this
/// path does not apply (not CPU f32, a gradient to record, or an unexpected layout).
///
/// q: (b, heads, t, d); k, v: (b, kv_heads, s, d), rows contiguous, any outer strides (a view
/// of the KV cache); mask: additive, (b, 1, t, s).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    attention_with(skinny::isa(), q, k, v, mask, scale)
}

/// [`attention`] compiled for `isa` (`None`: the baseline build); tests run each.
fn attention_with(
    isa: Option<Isa>,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<Option<Tensor>> {
    let all = [q, k, v, mask];
    if all.iter().any(|t| !t.device().is_cpu() || t.dtype() != DType::F32 || t.track_op() || t.rank() != 4) {
        return Ok(None);
    }
    let (b, h, t, d) = q.dims4()?;
    let (kb, kv, s, kd) = k.dims4()?;
    if kb != b || kd != d || kv == 0 || h % kv != 0 || v.dims() != k.dims() || mask.dims() != [b, 1, t, s] {
        return Ok(None);
    }
    if k.stride()[3] != 1 || v.stride()[3] != 1 || s == 0 || d == 0 {
        return Ok(None);
    }
    let (q, mask) = (q.contiguous()?, mask.contiguous()?);
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (ms, ml) = mask.storage_and_layout();
    let (
        Storage::Cpu(CpuStorage::F32(qd)),
        Storage::Cpu(CpuStorage::F32(kd_)),
        Storage::Cpu(CpuStorage::F32(vd)),
        Storage::Cpu(CpuStorage::F32(md)),
    ) = (&*qs, &*ks, &*vs, &*ms)
    else {
        return Ok(None);
    };
    let qd = &qd[ql.start_offset()..];
    let md = &md[ml.start_offset()..];
    let keys = Strided { data: &kd_[kl.start_offset()..], stride: [kl.stride()[0], kl.stride()[1], kl.stride()[2]] };
    let values = Strided { data: &vd[vl.start_offset()..], stride: [vl.stride()[0], vl.stride()[1], vl.stride()[2]] };
    let last = |st: &Strided| (b - 1) * st.stride[0] + (kv - 1) * st.stride[1] + (s - 1) * st.stride[2] + d;
    if last(&keys) > keys.data.len() || last(&values) > values.data.len() {
        candle_core::bail!("attention: key or value view out of bounds");
    }
    let shape = Shape { h, t, d, kv, s, scale: scale as f32 };
    let mut out = vec![0f32; b * h * t * d];
    out.par_chunks_mut(t * d).enumerate().for_each(|(task, out)| {
        let (bi, head) = (task / h, task % h);
        let q = &qd[task * t * d..][..t * d];
        let mask = &md[bi * t * s..][..t * s];
        let g = head / (h / kv);
        // SAFETY: the features each kernel is compiled for were detected by `skinny::isa`.
        match isa {
            #[cfg(target_arch = "x86_64")]
            Some(Isa::Avx512) => unsafe { task_avx512(&shape, q, mask, &keys, &values, bi, g, out) },
            #[cfg(target_arch = "x86_64")]
            Some(Isa::Avx2) => unsafe { task_avx2(&shape, q, mask, &keys, &values, bi, g, out) },
            _ => one_task(&shape, q, mask, &keys, &values, bi, g, out),
        }
    });
    drop((qs, ks, vs, ms));
    Tensor::from_vec(out, (b, h, t, d), &Device::Cpu).map(Some)
}

/// Keys or values: (b, kv, s, d) with rows of `d` contiguous and these outer strides.
struct Strided<'a> {
    data: &'a [f32],
    stride: [usize; 3],
}

impl Strided<'_> {
    fn row(&self, b: usize, g: usize, j: usize, d: usize) -> &[f32] {
        &self.data[b * self.stride[0] + g * self.stride[1] + j * self.stride[2]..][..d]
    }
}

struct Shape {
    h: usize,
    t: usize,
    d: usize,
    kv: usize,
    s: usize,
    scale: f32,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn task_avx512(
    sh: &Shape,
    q: &[f32],
    mask: &[f32],
    k: &Strided,
    v: &Strided,
    b: usize,
    g: usize,
    out: &mut [f32],
) {
    one_task(sh, q, mask, k, v, b, g, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn task_avx2(
    sh: &Shape,
    q: &[f32],
    mask: &[f32],
    k: &Strided,
    v: &Strided,
    b: usize,
    g: usize,
    out: &mut [f32],
) {
    one_task(sh, q, mask, k, v, b, g, out)
}

/// One (sequence, head): `t` query rows against the kv group's `s` keys. Inlined into each
/// `task_*`, so that its loops are vectorised for that instruction set.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn one_task(sh: &Shape, q: &[f32], mask: &[f32], k: &Strided, v: &Strided, b: usize, g: usize, out: &mut [f32]) {
    let (t, d, s) = (sh.t, sh.d, sh.s);
    debug_assert!(g < sh.kv && out.len() == t * d && sh.h.is_multiple_of(sh.kv));
    let mut scores = vec![0f32; s];
    for ti in 0..t {
        let qrow = &q[ti * d..][..d];
        let mrow = &mask[ti * s..][..s];
        let mut max = f32::NEG_INFINITY;
        for (j, (sc, m)) in scores.iter_mut().zip(mrow).enumerate() {
            *sc = dot(qrow, k.row(b, g, j, d)) * sh.scale + m;
            max = max.max(*sc);
        }
        for sc in scores.iter_mut() {
            *sc -= max;
        }
        exp_in_place(&mut scores);
        let inv = 1.0 / scores.iter().sum::<f32>();
        let orow = &mut out[ti * d..][..d];
        orow.fill(0.0);
        for (j, p) in scores.iter().enumerate() {
            let p = p * inv;
            for (o, x) in orow.iter_mut().zip(v.row(b, g, j, d)) {
                *o += p * x;
            }
        }
    }
}

/// A dot product in 16 independent lanes (vectorisable; the lanes are summed at the end).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `e^x` of every element, to about 2 ulp (Cephes' single-precision polynomial after reducing by
/// `ln 2`). Below -87 the result is 0: masked keys then weigh exactly nothing, where `e^-87`
/// would make their weights subnormal and every product with them a slow microcode assist.
#[inline(always)]
pub fn exp_in_place(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x = exp(*x);
    }
}

#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    if x < -87.0 {
        return 0.0;
    }
    let x = x.min(88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let p = p * r * r + r + 1.0;
    f32::from_bits(((n as i32 + 127) as u32) << 23) * p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_close_to_libm() {
        let mut worst = (0f64, 0f32);
        for i in -8699..=8799 {
            let x = i as f32 / 100.0 + 0.003;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            let rel = ((got - want) / want).abs();
            if rel > worst.0 {
                worst = (rel, x);
            }
        }
        assert!(worst.0 < 3e-7, "relative error {} at {}", worst.0, worst.1);
        assert_eq!(exp(-1e30), 0.0);
        assert_eq!(exp(-87.5), 0.0);
        assert!(exp(0.0) == 1.0);
    }

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Against the composed form, over grouped heads, padded (masked) keys, a fully masked row,
    /// and keys and values read through a view of a larger cache, on every kernel this CPU runs.
    #[test]
    fn matches_the_composed_form() {
        use crate::model::ops::{attention_composed as composed, mask_value};
        let neg = mask_value(DType::F32);
        for &(b, h, kv, t, s, d) in
            &[(2, 6, 2, 3, 5, 64), (1, 4, 4, 1, 9, 8), (3, 9, 3, 1, 70, 64), (2, 2, 1, 4, 4, 20)]
        {
            let q = rand(&[b, h, t, d], 1);
            // A cache of capacity s + 3, of which the first s positions are used.
            let kc = rand(&[b, kv, s + 3, d], 2);
            let vc = rand(&[b, kv, s + 3, d], 3);
            let (k, v) = (kc.narrow(2, 0, s).unwrap(), vc.narrow(2, 0, s).unwrap());
            let mut m = vec![0f32; b * t * s];
            for (i, x) in m.iter_mut().enumerate() {
                let (row, j) = (i / s, i % s);
                // Causal-style masking, the first key of batch row 0 padded, and batch row 1's
                // first query masked entirely.
                let (bi, ti) = (row / t, row % t);
                if j > s - t + ti || (bi == 0 && j == 0 && s > 1) || (bi == 1 && ti == 0) {
                    *x = neg;
                }
            }
            let mask = Tensor::from_vec(m, (b, 1, t, s), &Device::Cpu).unwrap();
            let want = composed(&q, &k.contiguous().unwrap(), &v.contiguous().unwrap(), &mask, 0.125).unwrap();
            let isas = match skinny::isa() {
                Some(Isa::Avx512) => vec![Some(Isa::Avx512), Some(Isa::Avx2), None],
                Some(Isa::Avx2) => vec![Some(Isa::Avx2), None],
                None => vec![None],
            };
            for isa in isas {
                let got = attention_with(isa, &q, &k, &v, &mask, 0.125).unwrap().expect("applies");
                let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff < 2e-6, "({b}, {h}, {kv}, {t}, {s}, {d}) {isa:?}: {diff}");
            }
        }
    }

    #[test]
    fn declines_what_it_does_not_cover() {
        let q = rand(&[1, 2, 1, 4], 1);
        let k = rand(&[1, 2, 3, 4], 2);
        let mask = Tensor::zeros((1, 1, 1, 3), DType::F32, &Device::Cpu).unwrap();
        let var = candle_core::Var::from_tensor(&q).unwrap();
        assert!(attention(var.as_tensor(), &k, &k, &mask, 1.0).unwrap().is_none());
        let q64 = q.to_dtype(DType::F64).unwrap();
        assert!(attention(&q64, &k, &k, &mask, 1.0).unwrap().is_none());
        assert!(attention(&q, &k.t().unwrap(), &k, &mask, 1.0).unwrap().is_none());
    }
}
