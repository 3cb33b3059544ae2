//! Attention for inference on the CPU in f32: scores, mask, softmax and the weighted sum of the
//! values per (sequence, kv head), reading a KV cache's keys and values in place.
//!
//! The composed form (`ops::attention`: batched matmul, scale, mask, softmax, matmul) makes four
//! intermediate tensors and runs its small per-head products through the gemm crate, whose
//! set-up dominates at decoding sizes: ~10% of a batch-32 sampling step, and another ~5% in
//! scalar `expf`. Here one task takes one (sequence, kv head): the scores of all its query heads
//! against the keys are one product through `skinny.rs`'s register-blocked kernel (the keys are
//! rows of the cache, the layout that kernel reads), the softmax runs over rows vectorised
//! (`vmath.rs`: lanes and a polynomial exp, built for AVX-512 or AVX2), and the values
//! are summed with another such product (over the values transposed once) or, for the few rows
//! of a decoding step, directly. It is used where no gradient is needed (sampling, scoring,
//! reference log-probs); training runs the same per-group pass with a backward
//! (`attend_grad.rs`).

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

use super::skinny::{self, Isa};
use super::vmath;

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
    let rep = h / kv;
    let rows = rep * t;
    let scale = scale as f32;
    let mut out = vec![0f32; b * h * t * d];
    // One task per (sequence, kv head): its `rep` query heads' rows are contiguous in q and out.
    out.par_chunks_mut(rows * d).enumerate().for_each(|(task, out)| {
        let (bi, g) = (task / kv, task % kv);
        let q = &qd[task * rows * d..][..rows * d];
        let mask = &md[bi * t * s..][..t * s];
        let g = Group { q, mask, keys: keys.group(bi, g, s, d), values: values.group(bi, g, s, d), t, s, d, scale };
        group(isa, &g, out);
    });
    drop((qs, ks, vs, ms));
    Tensor::from_vec(out, (b, h, t, d), &Device::Cpu).map(Some)
}

/// One (sequence, kv head): its query heads' rows (`rep * t` of `d`, head-major), their mask
/// rows (`t` of `s`), and its keys and values (`s` rows of `d` at a stride).
pub(super) struct Group<'a> {
    pub q: &'a [f32],
    pub mask: &'a [f32],
    pub keys: (&'a [f32], usize),
    pub values: (&'a [f32], usize),
    pub t: usize,
    pub s: usize,
    pub d: usize,
    pub scale: f32,
}

/// `out = softmax(q k^T * scale + mask) v` for one group.
pub(super) fn group(isa: Option<Isa>, g: &Group<'_>, out: &mut [f32]) {
    let (values, s, d) = (g.values, g.s, g.d);
    let rows = g.q.len() / d;
    let tiles = query_tiles(g, &reach(g.mask, g.t, g.s));
    let probs = probabilities(isa, g, &tiles);
    if rows <= 4 {
        // Decoding: a few rows, each a weighted sum of value rows.
        for (r, orow) in out.chunks_exact_mut(d).enumerate() {
            orow.fill(0.0);
            for (j, p) in probs[r * s..][..s].iter().enumerate() {
                if *p != 0.0 {
                    for (o, x) in orow.iter_mut().zip(&values.0[j * values.1..][..d]) {
                        *o += p * x;
                    }
                }
            }
        }
    } else {
        // Many rows: the values transposed once, then a few-row product per tile of query
        // rows over the keys they reach (the rest of their probabilities are exact zeros).
        let vt = transpose(values.0, values.1, s, d);
        for tile in &tiles {
            let r0 = tile.row;
            skinny::product_serial(isa, (tile.rows, d, tile.keys), &probs[r0 * s..], s, &vt, s, &mut out[r0 * d..], d);
        }
    }
}

/// `softmax(q k^T * scale + mask)` for one group: (rows x s), what the training backward
/// recomputes. Scores are formed only for the keys each tile of query rows reaches; the others
/// stay 0 before the mask, whose softmax weight is exactly 0 either way.
/// `tiles` are the group's [`query_tiles`], made once by the caller.
pub(super) fn probabilities(isa: Option<Isa>, g: &Group<'_>, tiles: &[QueryTile]) -> Vec<f32> {
    let rows = g.q.len() / g.d;
    // Scores: q . k for every (query row, key), as a few-row product over the keys' rows.
    let mut probs = vec![0f32; rows * g.s];
    for tile in tiles {
        let (r0, d) = (tile.row, g.d);
        let q = &g.q[r0 * d..];
        skinny::product_serial(isa, (tile.rows, tile.keys, d), q, d, g.keys.0, g.keys.1, &mut probs[r0 * g.s..], g.s);
    }
    vmath::softmax_rows(isa, &mut probs, g.mask, g.t, g.s, g.scale);
    probs
}

/// Query positions per tile: products run per tile over the keys its rows reach.
const TILE: usize = 16;

/// For each query position of a group's mask (t rows of s), how many leading keys it reaches:
/// one past the last key its mask leaves open. Past that, every key is masked and gets a
/// softmax weight of exactly 0 (`vmath`'s exp is 0 below -87), so products may stop there. A
/// row masked throughout reaches all `s` (its softmax, over masked scores only, is not zero).
pub(super) fn reach(mask: &[f32], t: usize, s: usize) -> Vec<usize> {
    let masked = crate::model::ops::mask_value(candle_core::DType::F32) / 2.0;
    (0..t)
        .map(|i| match mask[i * s..][..s].iter().rposition(|&m| m > masked) {
            Some(j) => j + 1,
            None => s,
        })
        .collect()
}

/// `rows` query rows from `row` (of one head, consecutive positions) and the keys they reach.
pub(super) struct QueryTile {
    pub row: usize,
    pub rows: usize,
    pub keys: usize,
}

/// The query tiles of a group: per head, runs of [`TILE`] positions; `reach` from [`reach`].
pub(super) fn query_tiles(g: &Group<'_>, reach: &[usize]) -> Vec<QueryTile> {
    let heads = g.q.len() / g.d / g.t.max(1);
    let mut tiles = Vec::with_capacity(heads * g.t.div_ceil(TILE));
    for h in 0..heads {
        for i0 in (0..g.t).step_by(TILE) {
            let i1 = (i0 + TILE).min(g.t);
            let keys = reach[i0..i1].iter().copied().max().unwrap_or(g.s);
            tiles.push(QueryTile { row: h * g.t + i0, rows: i1 - i0, keys });
        }
    }
    tiles
}

/// The (cols x rows) transpose of `rows` rows of `cols` at stride `stride`.
pub(super) fn transpose(x: &[f32], stride: usize, rows: usize, cols: usize) -> Vec<f32> {
    transpose_by_position(x, stride, rows, 1, cols)
}

/// The (cols x rows) transpose of `rep * t` rows of `cols` at `stride` (`rep` heads of `t`
/// positions, head-major), its columns in position-major order: row `h * t + i` becomes column
/// `i * rep + h`, so the rows of all heads at positions `i..` are one run of columns. In tiles
/// of 16 x 16, so that the strided writes stay within a few cache lines.
pub(super) fn transpose_by_position(x: &[f32], stride: usize, t: usize, rep: usize, cols: usize) -> Vec<f32> {
    const B: usize = 16;
    let rows = rep * t;
    let mut xt = vec![0f32; rows * cols];
    for r0 in (0..rows).step_by(B) {
        let r1 = (r0 + B).min(rows);
        for c0 in (0..cols).step_by(B) {
            let c1 = (c0 + B).min(cols);
            for r in r0..r1 {
                let column = r % t * rep + r / t;
                for (c, v) in x[r * stride + c0..r * stride + c1].iter().enumerate() {
                    xt[(c0 + c) * rows + column] = *v;
                }
            }
        }
    }
    xt
}

/// Keys or values: (b, kv, s, d) with rows of `d` contiguous and these outer strides.
struct Strided<'a> {
    data: &'a [f32],
    stride: [usize; 3],
}

impl<'a> Strided<'a> {
    /// The `s` rows of one (sequence, kv head), and their stride.
    fn group(&self, b: usize, g: usize, s: usize, d: usize) -> (&'a [f32], usize) {
        let start = b * self.stride[0] + g * self.stride[1];
        (&self.data[start..start + (s - 1) * self.stride[2] + d], self.stride[2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::tests::rand;

    /// Against the composed form, over grouped heads, padded (masked) keys, a fully masked row,
    /// and keys and values read through a view of a larger cache, on every kernel this CPU runs.
    #[test]
    fn matches_the_composed_form() {
        use crate::model::ops::{attention_composed as composed, mask_value};
        let neg = mask_value(DType::F32);
        for &(b, h, kv, t, s, d) in
            &[(2, 6, 2, 3, 5, 64), (1, 4, 4, 1, 9, 8), (3, 9, 3, 1, 70, 64), (2, 2, 1, 4, 4, 20), (2, 6, 2, 37, 40, 16)]
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
