//! A linear layer's product on the CPU as one autograd node, reading the weight in its
//! checkpoint layout.
//!
//! Composed from candle's view ops, `Linear::forward` in training was four nodes: the input
//! flattened to rows, the weight transposed, the product, the output reshaped back. candle's
//! backprop accumulates every node's gradient into a fresh zeroed tensor (a fill and an add
//! over the whole tensor), so each view node cost two passes over an activation-sized (or, for
//! the transpose, a strided weight-sized) gradient: on SmolLM2's DPO step that was the largest
//! cost after the products themselves. Here the product takes `xs` of any rank and the weight as
//! stored, HF's (out, in) or GPT-2's Conv1D (in, out), and its backward forms both gradients
//! directly in those layouts through `blas::matmul` (operands read through strides):
//!
//!   y = x W^T,   dx = dy W,   dW = dy^T x        (HF (out, in))
//!   y = x W,     dx = dy W^T, dW = x^T dy        (Conv1D (in, out))
//!
//! Only operands that take part in a gradient graph get one (a frozen weight costs no product).
//! A frozen weight's bf16 packed forms (`packed.rs`), where the layer has them, stand in for
//! the weight in the forward and the input's gradient from `packed::MIN_ROWS` rows up.
//! `ops`' tests check values and gradients against candle's own composed product.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor, bail};

use super::amx;
use super::blas::{Operand, matmul};
use super::packed::{self, PackedWeight};

/// `xs @ W^T` (`in_out`: `xs @ W`) over the last dimension of `xs`, f32 or f64 on the CPU;
/// `packed`: the weight's packed forms (`Linear::packed_now`), read in its place.
pub fn forward(xs: &Tensor, weight: &Tensor, in_out: bool, packed: Option<Arc<PackedWeight>>) -> Result<Tensor> {
    xs.contiguous()?.apply_op2(&weight.contiguous()?, CpuLinear { in_out, packed })
}

/// Whether [`forward`] takes these operands.
pub fn takes(xs: &Tensor, weight: &Tensor) -> bool {
    xs.device().is_cpu()
        && weight.device().is_cpu()
        && xs.dtype() == weight.dtype()
        && matches!(xs.dtype(), DType::F32 | DType::F64)
        && xs.rank() >= 1
        && weight.rank() == 2
}

struct CpuLinear {
    in_out: bool,
    packed: Option<Arc<PackedWeight>>,
}

impl CpuLinear {
    /// The packed weight (given only under bf16 products: `Linear::packed_now`), for a product
    /// of `m` rows, where it is faster than the weight itself.
    fn packed(&self, m: usize) -> Option<&PackedWeight> {
        self.packed.as_deref().filter(|_| m >= packed::MIN_ROWS)
    }

    /// (in, out) of a weight of shape `dims`.
    fn in_out_dims(&self, dims: &[usize]) -> (usize, usize) {
        if self.in_out { (dims[0], dims[1]) } else { (dims[1], dims[0]) }
    }
}

/// A contiguous operand's data from its offset on.
fn slice<'a, T>(data: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("cpu-linear: operands must be contiguous"),
    }
}

/// `a (m, k) @ b (k, n)` for rows of `a` and `b` given as (data, row stride, column stride).
fn product<T: super::blas::Element>(
    (m, n, k): (usize, usize, usize),
    a: (&[T], usize, usize),
    b: (&[T], usize, usize),
) -> Vec<T> {
    let op = |(data, row_stride, col_stride)| Operand { data, row_stride, col_stride };
    matmul(m, n, k, op(a), op(b), true)
}

impl CustomOp2 for CpuLinear {
    fn name(&self) -> &'static str {
        "cpu-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (i, o) = self.in_out_dims(l2.dims());
        let dims = l1.dims();
        if dims.last() != Some(&i) {
            bail!("cpu-linear: input {:?} against a weight {:?}", dims, l2.dims());
        }
        let m = l1.shape().elem_count() / i.max(1);
        // W^T read in place: (in, out) with row stride 1 for HF's (out, in).
        let w_stride = if self.in_out { (o, 1) } else { (1, i) };
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                let (x, w) = (slice(x, l1)?, slice(w, l2)?);
                CpuStorage::F32(match self.packed(m) {
                    Some(p) => amx::matmul_packed(
                        m,
                        Operand { data: x, row_stride: i, col_stride: 1 },
                        p.forward(w, self.in_out, (i, o)),
                    ),
                    None => product((m, o, i), (x, i, 1), (w, w_stride.0, w_stride.1)),
                })
            }
            (CpuStorage::F64(x), CpuStorage::F64(w)) => {
                let (x, w) = (slice(x, l1)?, slice(w, l2)?);
                CpuStorage::F64(product((m, o, i), (x, i, 1), (w, w_stride.0, w_stride.1)))
            }
            _ => bail!("cpu-linear: two f32 or two f64 operands expected"),
        };
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 1") = o;
        Ok((out, Shape::from(out_dims)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (want_dx, want_dw) = (x.track_op(), w.track_op());
        if !want_dx && !want_dw {
            return Ok((None, None));
        }
        let grad = grad.contiguous()?;
        let (i, o) = self.in_out_dims(w.dims());
        let m = x.elem_count() / i.max(1);
        let (gs, gl) = grad.storage_and_layout();
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (Storage::Cpu(gs), Storage::Cpu(xs), Storage::Cpu(ws)) = (&*gs, &*xs, &*ws) else {
            bail!("cpu-linear: operands not on the CPU");
        };
        let in_out = self.in_out;
        macro_rules! grads {
            ($g:expr, $x:expr, $w:expr, $packed_dx:expr) => {{
                let (g, x, w) = (slice($g, gl)?, slice($x, xl)?, slice($w, wl)?);
                // dx (m, in) = dy (m, out) @ [W (out, in) | W^T]
                let dx = want_dx.then(|| match $packed_dx(g, w) {
                    Some(dx) => dx,
                    None => {
                        let w_op = if in_out { (w, 1, o) } else { (w, i, 1) };
                        product((m, i, o), (g, o, 1), w_op)
                    }
                });
                // dW: (out, in) = dy^T (out, m) @ x (m, in), or (in, out) = x^T (in, m) @ dy (m, out)
                let dw = want_dw.then(|| {
                    if in_out {
                        product((i, o, m), (x, 1, i), (g, o, 1))
                    } else {
                        product((o, i, m), (g, 1, o), (x, i, 1))
                    }
                });
                (dx, dw)
            }};
        }
        let dev = x.device();
        match (gs, xs, ws) {
            (CpuStorage::F32(g), CpuStorage::F32(xd), CpuStorage::F32(wd)) => {
                let packed_dx = |g: &[f32], w: &[f32]| {
                    let p = self.packed(m)?;
                    let dy = Operand { data: g, row_stride: o, col_stride: 1 };
                    Some(amx::matmul_packed(m, dy, p.backward(w, in_out, (i, o))))
                };
                let (dx, dw) = grads!(g, xd, wd, packed_dx);
                Ok((
                    dx.map(|v| Tensor::from_vec(v, x.shape(), dev)).transpose()?,
                    dw.map(|v| Tensor::from_vec(v, w.shape(), dev)).transpose()?,
                ))
            }
            (CpuStorage::F64(g), CpuStorage::F64(xd), CpuStorage::F64(wd)) => {
                let (dx, dw) = grads!(g, xd, wd, |_: &[f64], _: &[f64]| None);
                Ok((
                    dx.map(|v| Tensor::from_vec(v, x.shape(), dev)).transpose()?,
                    dw.map(|v| Tensor::from_vec(v, w.shape(), dev)).transpose()?,
                ))
            }
            _ => bail!("cpu-linear: two f32 or two f64 operands expected"),
        }
    }
}
