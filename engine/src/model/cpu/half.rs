//! 16-bit copies of frozen weights for decoding a few sequences at a time on the CPU.
//!
//! Sampling one sequence is a chain of matrix-vector products: every weight is read once per
//! token, so its speed is memory bandwidth over weight bytes. f32 SmolLM2 reads 540 MB a token;
//! an f16 copy halves that. The copy is read by `skinny.rs`'s few-row kernel, which widens f16 to
//! f32 as it loads and accumulates in f32 (AVX-512, or AVX2 with F16C; else a dot product per
//! output), over rows of the HF (out, in) layout split across the threads. Only weights that
//! never change get a copy (the model of a CLI command, the frozen layers of a policy), so a
//! copy can never go stale; outputs differ from the f32 path by the f16 rounding of the weights
//! (relative 2^-11), as llama.cpp's quantised weights do by more.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use half::f16;
use rayon::prelude::*;

/// A weight as f16 rows: `rows` outputs of `cols` inputs, row-major (HF `nn.Linear` layout).
#[derive(Debug)]
pub struct HalfMatrix {
    data: Vec<f16>,
    rows: usize,
    cols: usize,
}

impl HalfMatrix {
    /// From a weight in (out, in) layout, or (in, out) when `in_out` (GPT-2's Conv1D).
    pub fn from_weight(weight: &Tensor, in_out: bool) -> Result<Arc<Self>> {
        let w = if in_out { weight.t()? } else { weight.clone() };
        let (rows, cols) = w.dims2()?;
        let data = w.to_dtype(DType::F16)?.contiguous()?.flatten_all()?.to_vec1::<f16>()?;
        Ok(Arc::new(Self { data, rows, cols }))
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `x @ self^T`: x (m, cols) f32 on the CPU -> (m, rows) f32.
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.cols {
            candle_core::bail!("half matmul: input has {k} features, the weight {}", self.cols);
        }
        let x = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let n = self.rows;
        let bits: &[u16] = half::slice::HalfFloatSliceExt::reinterpret_cast(&self.data[..]);
        if let Some(out) = super::skinny::matmul_f16(m, n, k, &x, k, bits, k) {
            return Tensor::from_vec(out, (m, n), &Device::Cpu);
        }
        let threads = rayon::current_num_threads().max(1);
        // Output-major (n, m): each thread owns a contiguous block of outputs.
        let chunk = n.div_ceil(threads * 4).max(64);
        let mut out_t = vec![0f32; n * m];
        out_t.par_chunks_mut(chunk * m).enumerate().for_each(|(c, block)| {
            let j0 = c * chunk;
            for (dj, outs) in block.chunks_mut(m).enumerate() {
                let j = j0 + dj;
                let w = &self.data[j * k..(j + 1) * k];
                for (r, o) in outs.iter_mut().enumerate() {
                    *o = dot(&x[r * k..(r + 1) * k], w);
                }
            }
        });
        let mut out = vec![0f32; m * n];
        for (j, outs) in out_t.chunks(m).enumerate() {
            for (r, &v) in outs.iter().enumerate() {
                out[r * n + j] = v;
            }
        }
        Tensor::from_vec(out, (m, n), &Device::Cpu)
    }
}

/// `sum x[i] * w[i]` in f32.
fn dot(x: &[f32], w: &[f16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features the function is compiled for were just detected.
            return unsafe { dot_avx2(x, w) };
        }
    }
    dot_scalar(x, w)
}

fn dot_scalar(x: &[f32], w: &[f16]) -> f32 {
    x.iter().zip(w).map(|(a, b)| a * b.to_f32()).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_avx2(x: &[f32], w: &[f16]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len().min(w.len());
    let (xp, wp) = (x.as_ptr(), w.as_ptr() as *const u16);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads 8 elements at i + 8 * u < n (the loop bounds).
    unsafe {
        while i + 32 <= n {
            for (u, a) in acc.iter_mut().enumerate() {
                let o = i + 8 * u;
                let wv = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(o) as *const __m128i));
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(o)), wv, *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            let wv = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i) as *const __m128i));
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i)), wv, acc[0]);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let hi = _mm256_extractf128_ps(s, 1);
        let q = _mm_add_ps(_mm256_castps256_ps128(s), hi);
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
        _mm_cvtss_f32(q) + dot_scalar(&x[i..n], &w[i..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_f32_matmul_up_to_weight_rounding() {
        // Odd sizes exercise the 32-, 8- and scalar tails and a last partial block of outputs.
        for (m, k, n, in_out) in [(1, 77, 300, false), (3, 576, 1536, false), (8, 40, 129, true)] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            let dims = if in_out { (k, n) } else { (n, k) };
            let w = Tensor::randn(0f32, 0.05, dims, &Device::Cpu).unwrap();
            let half = HalfMatrix::from_weight(&w, in_out).unwrap();
            assert_eq!(half.rows(), n);
            let got = half.matmul(&x).unwrap();
            let w_rounded = w.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap();
            let want = if in_out { x.matmul(&w_rounded) } else { x.matmul(&w_rounded.t().unwrap()) }.unwrap();
            let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff <= 1e-5 * scale.max(1.0), "({m}, {k}, {n}): max diff {diff} of {scale}");
        }
        let w = Tensor::zeros((4, 8), DType::F32, &Device::Cpu).unwrap();
        let x = Tensor::zeros((1, 9), DType::F32, &Device::Cpu).unwrap();
        assert!(HalfMatrix::from_weight(&w, false).unwrap().matmul(&x).is_err());
    }

    #[test]
    fn a_model_with_half_weights_decodes_like_the_f32_model() {
        use crate::model::load::random::random_checkpoint;
        use crate::model::{Batch, Model, Padding};
        for config in [
            r#"{"model_type": "llama", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": true}"#,
            r#"{"model_type": "gpt2", "vocab_size": 96, "n_positions": 32, "n_embd": 64, "n_layer": 2, "n_head": 4}"#,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("config.json");
            std::fs::write(&path, config).unwrap();
            let ck = random_checkpoint(&format!("random:{}", path.display()), DType::F32, &Device::Cpu, 3).unwrap();
            let f32_model = Model::from_checkpoint(&ck).unwrap();
            let half_model = f32_model.with_half_weights(|_| false).unwrap();
            let logits = |m: &Model, rows: usize| {
                let seqs: Vec<Vec<u32>> = (0..rows).map(|r| vec![(5 + r) as u32]).collect();
                let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
                let batch = Batch::new(&refs, Padding::Left, 0, DType::F32, &Device::Cpu).unwrap();
                m.forward(&batch).unwrap()
            };
            let max_diff =
                |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            // One row: the f16 path, within f16 rounding of the weights but not bit-identical.
            let (a, b) = (logits(&f32_model, 1), logits(&half_model, 1));
            let d = max_diff(&a, &b);
            assert!(d > 0.0 && d < 2e-3, "{config}: one row differs by {d}");
            // Nine rows: above the decode threshold, the f32 weights, bit-identical.
            assert_eq!(max_diff(&logits(&f32_model, 9), &logits(&half_model, 9)), 0.0);
            // Linears named by keep_f32 stay f32: keeping all of them is the f32 model.
            let kept = f32_model.with_half_weights(|_| true).unwrap();
            assert_eq!(max_diff(&a, &logits(&kept, 1)), 0.0);
        }
    }
}
