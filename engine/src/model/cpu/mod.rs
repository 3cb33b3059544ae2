//! CPU kernels: where a forward or backward pass spends its time on the CPU, written for it.
//!
//! - `amx`: bf16 products on Intel AMX, chosen for the process (`Products::Bf16`).
//! - `blas`: matrix products through a BLAS loaded at run time, else the `gemm` crate.
//! - `skinny`: products of few rows (decoding), AVX-512 / AVX2 / portable.
//! - `vmath`: vectorised softmax, log-softmax, SiLU and the sampler's weights.
//! - `head`: the output head and the targets' log-softmax as one op, without the logits.
//! - `half`: f16 copies of weights for batch-1 decoding.
//! - `packed`: frozen weights packed once for bf16 products, kept with their layer.
//! - `linear`, `fused`: candle custom ops (with backward) for projections and element-wise work.
//! - `attend`, `attend_grad`: attention without the (heads, seq, seq) graph of composed ops.
//!
//! Each is a candle custom op or a plain function over slices, so the model code stays in
//! candle's tensor vocabulary and the kernels can be tested against the composed ops.

pub mod amx;
pub mod attend;
pub mod attend_grad;
pub mod blas;
pub mod fused;
pub mod half;
pub mod head;
pub mod linear;
pub mod packed;
pub mod skinny;
pub mod vmath;
