//! Row-wise exp, max and sums on the CPU, vectorised: softmax rows for attention, the
//! log-softmax of one target per vocabulary row for completion log-probs, the sampler's
//! tempered weights, and SwiGLU's `silu(gate) * up` with its sigmoid.
//!
//! A float sum or max over a row does not vectorise as written (the compiler keeps the order of
//! the additions), and libm's `expf` is scalar: the log-softmax over SmolLM2's 49,152-token
//! vocabulary was ~7% of scoring in `__expf_fma` alone. Here reductions run in 16 independent
//! lanes and exp is a polynomial, so the loops vectorise; each entry point is compiled for
//! AVX-512 and for AVX2 besides the baseline, chosen at run time (`skinny::isa`).

use super::skinny::{self, Isa};

const LANES: usize = 16;

/// `softmax(row * scale + mask)` in place for each row of `s` in `scores`; row `r` takes mask
/// row `r % t` (the query position of stacked heads).
pub fn softmax_rows(isa: Option<Isa>, scores: &mut [f32], mask: &[f32], t: usize, s: usize, scale: f32) {
    match isa {
        // SAFETY: `isa` comes from `skinny::isa`, which detected the features.
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx512) => unsafe { softmax_avx512(scores, mask, t, s, scale) },
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx2) => unsafe { softmax_avx2(scores, mask, t, s, scale) },
        _ => softmax_generic(scores, mask, t, s, scale),
    }
}

/// `log_softmax(row)[target]`.
pub fn log_softmax_at(row: &[f32], target: usize) -> f32 {
    match skinny::isa() {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx512) => unsafe { log_softmax_at_avx512(row, target) },
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx2) => unsafe { log_softmax_at_avx2(row, target) },
        _ => log_softmax_at_generic(row, target),
    }
}

/// The gradient of `log_softmax(row)[target]` scaled by `g`: `out = g * (onehot(target) -
/// softmax(row))`, in one pass after the max and the sum (the row stays in cache between).
pub fn log_softmax_at_grad(row: &[f32], target: usize, g: f32, out: &mut [f32]) {
    match skinny::isa() {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx512) => unsafe { log_softmax_at_grad_avx512(row, target, g, out) },
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx2) => unsafe { log_softmax_at_grad_avx2(row, target, g, out) },
        _ => log_softmax_at_grad_generic(row, target, g, out),
    }
}

/// `x = scale * e^(x - shift)` in place: a softmax's gradient term from a known log-sum-exp.
pub fn scaled_exp(row: &mut [f32], shift: f32, scale: f32) {
    match skinny::isa() {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx512) => unsafe { scaled_exp_avx512(row, shift, scale) },
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx2) => unsafe { scaled_exp_avx2(row, shift, scale) },
        _ => scaled_exp_generic(row, shift, scale),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
fn scaled_exp_avx512(row: &mut [f32], shift: f32, scale: f32) {
    scaled_exp_generic(row, shift, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn scaled_exp_avx2(row: &mut [f32], shift: f32, scale: f32) {
    scaled_exp_generic(row, shift, scale)
}

#[inline(always)]
fn scaled_exp_generic(row: &mut [f32], shift: f32, scale: f32) {
    for x in row.iter_mut() {
        *x = scale * exp(*x - shift);
    }
}

/// A sampler's weights over one row of logits: fills `probs` with `e^((x - max) / T)` and
/// returns `(max, z1)`, `z1` the temperature-1 normaliser `sum e^(x - max)` (the log-prob of a
/// token at T = 1 is `x - max - ln z1`). `inv_t` is `1 / T`.
pub fn sampling_weights(logits: &[f32], inv_t: f32, probs: &mut Vec<f32>) -> (f32, f32) {
    probs.clear();
    probs.resize(logits.len(), 0.0);
    match skinny::isa() {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx512) => unsafe { sampling_weights_avx512(logits, inv_t, probs) },
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx2) => unsafe { sampling_weights_avx2(logits, inv_t, probs) },
        _ => sampling_weights_generic(logits, inv_t, probs),
    }
}

/// `out = silu(gate) * up = gate * sigmoid(gate) * up`, element by element.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    match skinny::isa() {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx512) => unsafe { silu_mul_avx512(gate, up, out) },
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx2) => unsafe { silu_mul_avx2(gate, up, out) },
        _ => silu_mul_generic(gate, up, out),
    }
}

/// `out = sigmoid(x)`, element by element.
pub fn sigmoid(x: &[f32], out: &mut [f32]) {
    match skinny::isa() {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx512) => unsafe { sigmoid_avx512(x, out) },
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx2) => unsafe { sigmoid_avx2(x, out) },
        _ => sigmoid_generic(x, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
fn silu_mul_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
    silu_mul_generic(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn silu_mul_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    silu_mul_generic(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
fn sigmoid_avx512(x: &[f32], out: &mut [f32]) {
    sigmoid_generic(x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sigmoid_avx2(x: &[f32], out: &mut [f32]) {
    sigmoid_generic(x, out)
}

#[inline(always)]
fn silu_mul_generic(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}

#[inline(always)]
fn sigmoid_generic(x: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(x) {
        *o = 1.0 / (1.0 + exp(-x));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
fn softmax_avx512(scores: &mut [f32], mask: &[f32], t: usize, s: usize, scale: f32) {
    softmax_generic(scores, mask, t, s, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_avx2(scores: &mut [f32], mask: &[f32], t: usize, s: usize, scale: f32) {
    softmax_generic(scores, mask, t, s, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
fn log_softmax_at_avx512(row: &[f32], target: usize) -> f32 {
    log_softmax_at_generic(row, target)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn log_softmax_at_avx2(row: &[f32], target: usize) -> f32 {
    log_softmax_at_generic(row, target)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
fn sampling_weights_avx512(logits: &[f32], inv_t: f32, probs: &mut [f32]) -> (f32, f32) {
    sampling_weights_generic(logits, inv_t, probs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sampling_weights_avx2(logits: &[f32], inv_t: f32, probs: &mut [f32]) -> (f32, f32) {
    sampling_weights_generic(logits, inv_t, probs)
}

#[inline(always)]
fn sampling_weights_generic(logits: &[f32], inv_t: f32, probs: &mut [f32]) -> (f32, f32) {
    let max = max(logits);
    let mut acc = [0f32; LANES];
    let mut total = 0f32;
    let mut pairs = logits.chunks_exact(LANES).zip(probs.chunks_exact_mut(LANES));
    for (x, p) in pairs.by_ref() {
        for l in 0..LANES {
            let d = x[l] - max;
            p[l] = exp(d * inv_t);
            acc[l] += exp(d);
        }
    }
    let done = logits.len() / LANES * LANES;
    for (x, p) in logits[done..].iter().zip(&mut probs[done..]) {
        *p = exp((x - max) * inv_t);
        total += exp(x - max);
    }
    (max, total + acc.iter().sum::<f32>())
}

/// Inlined into each `*_avx512` / `*_avx2`, so that its loops vectorise for that instruction set.
#[inline(always)]
fn softmax_generic(scores: &mut [f32], mask: &[f32], t: usize, s: usize, scale: f32) {
    for (r, row) in scores.chunks_exact_mut(s).enumerate() {
        let m = &mask[(r % t) * s..][..s];
        for (x, m) in row.iter_mut().zip(m) {
            *x = *x * scale + m;
        }
        let max = max(row);
        let mut acc = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in chunks.by_ref() {
            for l in 0..LANES {
                c[l] = exp(c[l] - max);
                acc[l] += c[l];
            }
        }
        let mut total: f32 = acc.iter().sum();
        for x in chunks.into_remainder() {
            *x = exp(*x - max);
            total += *x;
        }
        let inv = 1.0 / total;
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
fn log_softmax_at_grad_avx512(row: &[f32], target: usize, g: f32, out: &mut [f32]) {
    log_softmax_at_grad_generic(row, target, g, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn log_softmax_at_grad_avx2(row: &[f32], target: usize, g: f32, out: &mut [f32]) {
    log_softmax_at_grad_generic(row, target, g, out)
}

#[inline(always)]
fn log_softmax_at_grad_generic(row: &[f32], target: usize, g: f32, out: &mut [f32]) {
    // log_softmax_at(row, target) = row[target] - lse, so lse comes out of it.
    let lse = row[target] - log_softmax_at_generic(row, target);
    for (o, &x) in out.iter_mut().zip(row) {
        *o = -g * exp(x - lse);
    }
    out[target] += g;
}

#[inline(always)]
fn log_softmax_at_generic(row: &[f32], target: usize) -> f32 {
    let max = max(row);
    let mut acc = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let mut total: f32 = chunks.remainder().iter().map(|&x| exp(x - max)).sum();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += exp(c[l] - max);
        }
    }
    total += acc.iter().sum::<f32>();
    row[target] - max - total.ln()
}

/// The largest element (`-inf` for an empty row), in lanes.
#[inline(always)]
fn max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// `e^x` to about 2 ulp (Cephes' single-precision polynomial after reducing by `ln 2`). Below
/// -87 the result is 0: masked keys then weigh exactly nothing, where `e^-87` would make their
/// weights subnormal and every product with them a slow microcode assist.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let tiny = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let p = p * r * r + r + 1.0;
    // 2^n from n's bits: adding 1.5 * 2^23 puts the integer n in the low mantissa bits (exact
    // for |n| < 2^22). Unlike `n as i32` (saturating, so scalar), this vectorises.
    const MAGIC: f32 = 12_582_912.0;
    let n_bits = (n + MAGIC).to_bits().wrapping_sub(MAGIC.to_bits());
    let e = f32::from_bits(n_bits.wrapping_add(127) << 23) * p;
    if tiny { 0.0 } else { e }
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
        assert_eq!(exp(0.0), 1.0);
        let x = [-100.0f32, -3.0, 0.0, 0.5, 40.0, 100.0];
        let (mut s, mut y) = ([0f32; 6], [0f32; 6]);
        sigmoid(&x, &mut s);
        silu_mul(&x, &[2.0; 6], &mut y);
        for ((x, s), y) in x.iter().zip(s).zip(y) {
            let want = 1.0 / (1.0 + (-*x as f64).exp());
            assert!((s as f64 - want).abs() < 1e-7, "sigmoid({x})");
            assert!((y as f64 - 2.0 * *x as f64 * want).abs() < 1e-6 * (1.0 + x.abs() as f64), "silu({x})");
        }
    }

    fn isas() -> Vec<Option<Isa>> {
        match skinny::isa() {
            Some(Isa::Avx512) => vec![Some(Isa::Avx512), Some(Isa::Avx2), None],
            Some(Isa::Avx2) => vec![Some(Isa::Avx2), None],
            None => vec![None],
        }
    }

    #[test]
    fn rows_match_plain_f64_sums() {
        // Lengths around the lane width, and a vocabulary-sized row.
        for s in [1usize, 5, 16, 17, 40, 49152] {
            let row: Vec<f32> = (0..s).map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0).collect();
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            let target = s / 2;
            let want = row[target] as f64 - max - z.ln();
            assert!((log_softmax_at(&row, target) as f64 - want).abs() < 1e-4, "log-softmax, s {s}");
            let mut grad = vec![0f32; s];
            log_softmax_at_grad(&row, target, 0.5, &mut grad);
            for (j, (gj, &x)) in grad.iter().zip(&row).enumerate() {
                let want = 0.5 * (f64::from(j == target) - (x as f64 - max).exp() / z);
                assert!((*gj as f64 - want).abs() < 1e-6, "log-softmax gradient, s {s}, at {j}");
            }
            let mut probs = vec![7.0; 3];
            let (m, z1) = sampling_weights(&row, 1.0 / 0.7, &mut probs);
            assert_eq!((m as f64, probs.len()), (max, s), "sampling weights, s {s}");
            assert!((z1 as f64 - z).abs() < 1e-5 * z, "sampling normaliser, s {s}: {z1} vs {z}");
            for (p, &x) in probs.iter().zip(&row) {
                let want = ((x as f64 - max) / 0.7).exp();
                assert!((*p as f64 - want).abs() < 1e-6 * (1.0 + want), "sampling weight, s {s}");
            }
            let mask: Vec<f32> = (0..s).map(|j| if j % 3 == 1 { -1e30 } else { 0.0 }).collect();
            for isa in isas() {
                let mut got = row.clone();
                softmax_rows(isa, &mut got, &mask, 1, s, 0.5);
                let kept: Vec<f64> =
                    (0..s).map(|j| if j % 3 == 1 { 0.0 } else { (row[j] as f64 * 0.5).exp() }).collect();
                let total: f64 = kept.iter().sum();
                for (g, k) in got.iter().zip(&kept) {
                    assert!((*g as f64 - k / total).abs() < 1e-6, "softmax, s {s}, {isa:?}");
                }
            }
        }
    }
}
