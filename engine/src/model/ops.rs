//! Building blocks shared by every architecture, each in two forms behind one function.
//!
//! candle-nn's fused kernels (`softmax_last_dim`, `rms_norm`, `layer_norm`, `rope`) are fast but
//! record no backward op: a model built on them trains only its head while the loss still falls.
//! Each function here therefore checks whether any input takes part in a gradient graph
//! (`Tensor::track_op`) and, if so, uses a composition of differentiable primitives; otherwise it
//! uses the fused kernel. On the CPU in f32 the gradient form is itself fused (`fused.rs`: one
//! pass forward, one backward); the composition remains for other dtypes and devices. Tests
//! check that every form agrees and that every parameter of every architecture receives a gradient.

use candle_core::{D, DType, Device, Result, Tensor};

use super::cpu::fused;
use super::cpu::half::HalfMatrix;
use super::cpu::linear;
use super::cpu::packed::PackedWeight;

pub use super::cpu::attend_grad::QkvLayout;

/// Whether to use the composed form: gradients are needed, or the dtype is one the fused
/// kernels do not cover (f64, used by the finite-difference checks).
fn tracks(ts: &[&Tensor]) -> bool {
    ts.iter().any(|t| t.track_op() || t.dtype() == DType::F64)
}

/// The dtype to accumulate in: f32 for 16-bit inputs, the input's own otherwise.
pub fn acc_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        other => other,
    }
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if !tracks(&[xs]) {
        candle_nn::ops::softmax_last_dim(xs)
    } else if fused::takes(&[xs]) {
        fused::softmax_last_dim(xs)
    } else {
        candle_nn::ops::softmax(xs, D::Minus1)
    }
}

/// RMSNorm as in HF `LlamaRMSNorm`: computed in at least f32, scaled by `weight` in the input dtype.
pub fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if tracks(&[xs, weight]) && fused::takes(&[xs, weight]) {
        fused::rms_norm(xs, weight, eps)
    } else if tracks(&[xs, weight]) {
        let dtype = xs.dtype();
        let x = xs.to_dtype(acc_dtype(dtype))?;
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_div(&(var + eps)?.sqrt()?)?;
        x.to_dtype(dtype)?.broadcast_mul(weight)
    } else {
        candle_nn::ops::rms_norm(&xs.contiguous()?, weight, eps as f32)
    }
}

/// LayerNorm with weight and bias over the last dimension.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if tracks(&[xs, weight, bias]) {
        let dtype = xs.dtype();
        let x = xs.to_dtype(acc_dtype(dtype))?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_sub(&mean)?;
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_div(&(var + eps)?.sqrt()?)?;
        x.to_dtype(dtype)?.broadcast_mul(weight)?.broadcast_add(bias)
    } else {
        candle_nn::ops::layer_norm(&xs.contiguous()?, weight, bias, eps as f32)
    }
}

/// Rotary embedding in the "rotate half" layout used by HF Llama and GPT-NeoX checkpoints.
///
/// `xs`: (batch, heads, seq, head_dim); `cos`, `sin`: (batch, seq, head_dim / 2), one row per
/// position id, so rows of a batch may sit at different positions (left padding, KV cache).
pub fn rope(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if tracks(&[xs, cos, sin]) && fused::takes(&[xs, cos, sin]) {
        fused::rope(xs, cos, sin)
    } else if tracks(&[xs, cos, sin]) {
        let half = xs.dim(D::Minus1)? / 2;
        let cos = cos.unsqueeze(1)?;
        let sin = sin.unsqueeze(1)?;
        let x1 = xs.narrow(D::Minus1, 0, half)?;
        let x2 = xs.narrow(D::Minus1, half, half)?;
        let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
        Tensor::cat(&[r1, r2], D::Minus1)
    } else {
        candle_nn::rotary_emb::rope(&xs.contiguous()?, &cos.contiguous()?, &sin.contiguous()?)
    }
}

/// Rotary embedding on the first `rot_dims` of each head only (GPT-NeoX `rotary_pct`).
pub fn partial_rope(xs: &Tensor, cos: &Tensor, sin: &Tensor, rot_dims: usize) -> Result<Tensor> {
    let head_dim = xs.dim(D::Minus1)?;
    if rot_dims == head_dim {
        return rope(xs, cos, sin);
    }
    let rot = rope(&xs.narrow(D::Minus1, 0, rot_dims)?, cos, sin)?;
    let pass = xs.narrow(D::Minus1, rot_dims, head_dim - rot_dims)?;
    Tensor::cat(&[rot, pass], D::Minus1)
}

/// Precomputed rotary tables, indexed by position id.
#[derive(Debug, Clone)]
pub struct RotaryTable {
    cos: Tensor,
    sin: Tensor,
}

impl RotaryTable {
    /// `inv_freq` has `rot_dims / 2` entries; tables cover positions `0..max_positions`.
    pub fn new(inv_freq: &[f32], max_positions: usize, dtype: DType, device: &Device) -> Result<Self> {
        let half = inv_freq.len();
        let mut freqs = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for f in inv_freq {
                freqs.push(p as f32 * f);
            }
        }
        let freqs = Tensor::from_vec(freqs, (max_positions, half), device)?;
        Ok(Self { cos: freqs.cos()?.to_dtype(dtype)?, sin: freqs.sin()?.to_dtype(dtype)? })
    }

    /// The standard inverse frequencies `1 / base^(2i / dims)`.
    pub fn default_inv_freq(rot_dims: usize, base: f64) -> Vec<f32> {
        (0..rot_dims / 2).map(|i| (1.0 / base.powf(2.0 * i as f64 / rot_dims as f64)) as f32).collect()
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// cos and sin for `position_ids` (batch, seq): each (batch, seq, rot_dims / 2).
    pub fn lookup(&self, position_ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t) = position_ids.dims2()?;
        let max = self.max_positions();
        let flat = position_ids.flatten_all()?;
        let top = flat.max(0)?.to_scalar::<u32>()? as usize;
        if top >= max {
            candle_core::bail!("position {top} is beyond the model's {max} positions");
        }
        let cos = self.cos.index_select(&flat, 0)?;
        let sin = self.sin.index_select(&flat, 0)?;
        let half = cos.dim(1)?;
        Ok((cos.reshape((b, t, half))?, sin.reshape((b, t, half))?))
    }
}

/// The output head, (vocab, hidden) like the embedding: the input embedding (module
/// `embed_name`) when tied (HF `tie_word_embeddings`), else the checkpoint's own `{name}.weight`.
/// Logits are `head.forward(hidden)`.
pub fn output_head(
    vb: &candle_nn::VarBuilder,
    name: &str,
    embed: &Tensor,
    embed_name: &str,
    tied: bool,
) -> Result<Linear> {
    let (weight, name) = if tied {
        (embed.clone(), embed_name.to_string())
    } else {
        (vb.pp(name).get(embed.dims2()?, "weight")?, vb.pp(name).prefix())
    };
    Ok(Linear { name, weight, bias: None, in_out: false, lora: None, half: None, packed: None })
}

/// LayerNorm weights with their epsilon.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(vb: &candle_nn::VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: vb.get(dim, "weight")?, bias: vb.get(dim, "bias")?, eps })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        layer_norm(xs, &self.weight, &self.bias, self.eps)
    }
}

/// A dense layer with an optional LoRA adapter. `weight` is (out, in) as in `nn.Linear`, or
/// (in, out) as in GPT-2's `Conv1D` (`in_out`). `name` is the HF module path, e.g.
/// `model.layers.3.self_attn.q_proj`, used to name adapters and to select targets.
#[derive(Debug, Clone)]
pub struct Linear {
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub in_out: bool,
    pub lora: Option<LoraAdapter>,
    /// An f16 copy of a frozen weight for decoding a few rows at a time (see `half.rs`).
    pub half: Option<std::sync::Arc<HalfMatrix>>,
    /// A frozen weight's forms packed for bf16 products, made when first read (`packed.rs`).
    pub packed: Option<std::sync::Arc<PackedWeight>>,
}

/// `y += scale * (x @ a^T) @ b^T`, with `a` (rank, in) and `b` (out, rank), scale = alpha / rank.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

impl Linear {
    pub fn load(vb: &candle_nn::VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
        Ok(Self { name: vb.prefix(), weight, bias, in_out: false, lora: None, half: None, packed: None })
    }

    /// GPT-2's Conv1D: weight (in, out), always with a bias.
    pub fn load_conv1d(vb: &candle_nn::VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let weight = vb.get((in_dim, out_dim), "weight")?;
        let bias = Some(vb.get(out_dim, "bias")?);
        Ok(Self { name: vb.prefix(), weight, bias, in_out: true, lora: None, half: None, packed: None })
    }

    /// The packed forms to read in place of the weight, where they serve it (`packed.rs`).
    pub fn packed_now(&self) -> Option<std::sync::Arc<PackedWeight>> {
        self.packed.clone().filter(|p| p.serves(&self.weight))
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[if self.in_out { 0 } else { 1 }]
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[if self.in_out { 1 } else { 0 }]
    }

    /// Applies the layer to (..., in), flattening leading dims into one matmul.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let rows = xs.elem_count() / xs.dims().last().copied().unwrap_or(1).max(1);
        let half = self.half.as_ref().filter(|_| rows <= SMALL_M && xs.dtype() == DType::F32 && !tracks(&[xs]));
        let ys = if half.is_none() && linear::takes(xs, &self.weight) {
            // One node with the weight as stored (see `linear.rs`).
            let ys = linear::forward(xs, &self.weight, self.in_out, self.packed_now())?;
            match &self.bias {
                Some(b) => ys.broadcast_add(b)?,
                None => ys,
            }
        } else {
            let w = if self.in_out { self.weight.clone() } else { self.weight.t()? };
            matmul_2d_with(xs, &w, self.half.as_deref(), self.bias.as_ref())?
        };
        match &self.lora {
            None => Ok(ys),
            Some(l) if linear::takes(xs, &l.a) => {
                let low = linear::forward(xs, &l.a, false, None)?;
                ys + (linear::forward(&low, &l.b, false, None)? * l.scale)?
            }
            Some(l) => {
                let low = matmul_2d(xs, &l.a.t()?, None)?;
                ys + (matmul_2d(&low, &l.b.t()?, None)? * l.scale)?
            }
        }
    }

    /// The layers' outputs side by side on the last dimension, `[parts[0](xs), parts[1](xs),
    /// ..]`, as one product on their weights stacked by rows (q, k and v; gate and up): in
    /// training on the CPU this is one product forward and one for the input's gradient,
    /// where separate layers were one each plus candle's sum of their input gradients. The
    /// stacked weight is a copy per call (its backward hands each layer its rows' gradient).
    /// `None` where the layers should run one by one: without gradients (no backward to save,
    /// and decoding reads the weights in place), with adapters, Conv1D weights, unequal
    /// biases, or off the CPU.
    pub fn forward_joined(parts: &[&Linear], xs: &Tensor) -> Result<Option<Tensor>> {
        let training = tracks(&[xs]) || parts.iter().any(|l| l.weight.track_op());
        let fits = parts.len() > 1
            && parts.iter().all(|l| l.lora.is_none() && !l.in_out && linear::takes(xs, &l.weight))
            && (parts.iter().all(|l| l.bias.is_some()) || parts.iter().all(|l| l.bias.is_none()));
        // Frozen weights packed for bf16 products are read as packed, one by one: the stacked
        // weight would be packed afresh on every call.
        let packed = parts.iter().all(|l| l.packed_now().is_some());
        if !training || !fits || packed {
            return Ok(None);
        }
        let weights: Vec<&Tensor> = parts.iter().map(|l| &l.weight).collect();
        let ys = linear::forward(xs, &Tensor::cat(&weights, 0)?, false, None)?;
        let biases: Vec<&Tensor> = parts.iter().filter_map(|l| l.bias.as_ref()).collect();
        Ok(Some(if biases.is_empty() { ys } else { ys.broadcast_add(&Tensor::cat(&biases, 0)?)? }))
    }

    /// The weight with the adapter folded in, in the layer's own layout.
    pub fn merged_weight(&self) -> Result<Tensor> {
        match &self.lora {
            None => Ok(self.weight.clone()),
            Some(l) => {
                let delta = (l.b.matmul(&l.a)? * l.scale)?; // (out, in)
                let delta = if self.in_out { delta.t()?.contiguous()? } else { delta };
                (&self.weight + delta.to_dtype(self.weight.dtype())?)?.detach().contiguous()
            }
        }
    }
}

/// `xs @ w (+ bias)` where `w` is (in, out), e.g. GPT-2's Conv1D or a transposed Linear weight.
pub fn matmul_2d(xs: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    matmul_2d_with(xs, w, None, bias)
}

/// [`matmul_2d`], reading `half` (an f16 copy of `w`) instead of `w` for a few f32 rows on the
/// CPU without gradients: decoding.
fn matmul_2d_with(xs: &Tensor, w: &Tensor, half: Option<&HalfMatrix>, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = xs.dims().to_vec();
    let in_dim = *dims.last().expect("matmul on a scalar");
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = xs.reshape((rows, in_dim))?;
    let decoding = rows <= SMALL_M && x2.device().is_cpu() && !tracks(&[&x2, w]);
    let ys = if let Some(half) = half.filter(|_| decoding && x2.dtype() == DType::F32) {
        half.matmul(&x2)?
    } else if decoding && w.device().is_cpu() && !cpu_matmul_takes(&x2, w) {
        matmul_split_columns(&x2, w)?
    } else if cpu_matmul_takes(&x2, w) {
        CpuMatmul { use_blas: true }.apply(&x2, w)?
    } else {
        x2.matmul(w)?
    };
    let ys = match bias {
        Some(b) => ys.broadcast_add(b)?,
        None => ys,
    };
    let mut out_dims = dims;
    *out_dims.last_mut().expect("non-empty") = ys.dim(1)?;
    ys.reshape(out_dims)
}

/// `x @ w` for 2-D f32 or f64 operands on the CPU, through [`super::blas`], with a backward
/// made of the same products (`grad @ w^T`, `x^T @ grad`, read through strides, not copied).
/// Only the operands that take part in a gradient graph get one: a frozen weight (the tied
/// head, LoRA's base weights, the frozen layers under a trained top) costs no extra product.
#[derive(Debug, Clone, Copy)]
pub struct CpuMatmul {
    /// Through the loaded BLAS (if any) and the few-row kernels of `skinny.rs`; `false` forces
    /// the `gemm` crate (tests compare them).
    pub use_blas: bool,
}

impl CpuMatmul {
    fn apply(self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        x.apply_op2_arc(w, std::sync::Arc::new(Box::new(self)))
    }
}

/// Whether [`CpuMatmul`] takes these operands.
fn cpu_matmul_takes(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu()
        && w.device().is_cpu()
        && x.dtype() == w.dtype()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && x.rank() == 2
        && w.rank() == 2
}

impl candle_core::CustomOp2 for CpuMatmul {
    fn name(&self) -> &'static str {
        "cpu-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use super::cpu::blas::{Operand, matmul};
        use candle_core::CpuStorage;
        let (m, k) = l1.shape().dims2()?;
        let (k2, n) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("cpu-matmul: ({m}, {k}) @ ({k2}, {n})");
        }
        let (xs, ws) = (l1.stride(), l2.stride());
        fn operand<'a, T>(data: &'a [T], l: &candle_core::Layout, s: &[usize]) -> Operand<'a, T> {
            Operand { data: &data[l.start_offset()..], row_stride: s[0], col_stride: s[1] }
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                CpuStorage::F32(matmul(m, n, k, operand(x, l1, xs), operand(w, l2, ws), self.use_blas))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w)) => {
                CpuStorage::F64(matmul(m, n, k, operand(x, l1, xs), operand(w, l2, ws), self.use_blas))
            }
            _ => candle_core::bail!("cpu-matmul: two f32 or two f64 operands expected"),
        };
        Ok((out, candle_core::Shape::from((m, n))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.detach();
        let dx = if x.track_op() { Some(self.apply(&grad, &w.detach().t()?)?) } else { None };
        let dw = if w.track_op() { Some(self.apply(&x.detach().t()?, &grad)?) } else { None };
        Ok((dx, dw))
    }
}

/// Up to this many rows, a CPU matmul is a matrix-vector product in disguise.
const SMALL_M: usize = 8;

/// `x @ w` for a few rows of `x`, with the columns of `w` split across the CPU threads.
///
/// gemm runs matrix-vector products on one thread, so sampling one sequence at a time used
/// one core of two; splitting the output columns (contiguous rows of an HF weight) lets each
/// thread stream its own share of the weights.
fn matmul_split_columns(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    let out = w.dim(1)?;
    let parts = rayon::current_num_threads().min(out / 256);
    if parts <= 1 {
        return x.matmul(w);
    }
    let chunk = out.div_ceil(parts);
    let ys = (0..parts)
        .into_par_iter()
        .map(|i| {
            let start = i * chunk;
            x.matmul(&w.narrow(1, start, chunk.min(out - start))?)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&ys, 1)
}

/// Activation functions named as in HF configs (`hidden_act`, `activation_function`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Activation {
    #[serde(alias = "swish")]
    #[serde(rename = "silu")]
    Silu,
    /// Exact GELU (erf).
    #[serde(rename = "gelu")]
    Gelu,
    /// GELU, tanh approximation.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    #[serde(rename = "relu")]
    Relu,
}

impl Activation {
    /// `act(gate) * up`, the gated MLP's middle (Llama's SwiGLU): one vectorised pass on the
    /// CPU in f32 (`fused.rs`, with its backward when training).
    /// [`Activation::gated`] on gate and up side by side in one tensor (.., 2 x n), as
    /// [`Linear::forward_joined`] writes them.
    pub fn gated_joined(self, gate_up: &Tensor) -> Result<Tensor> {
        if self == Self::Silu && fused::takes(&[gate_up]) {
            return fused::silu_mul_joined(gate_up);
        }
        let n = gate_up.dim(D::Minus1)? / 2;
        self.gated(&gate_up.narrow(D::Minus1, 0, n)?, &gate_up.narrow(D::Minus1, n, n)?)
    }

    pub fn gated(self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        if self == Self::Silu && fused::takes(&[gate, up]) {
            fused::silu_mul(gate, up)
        } else {
            self.forward(gate)? * up
        }
    }

    pub fn forward(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Silu => xs.silu(),
            Self::Gelu => xs.gelu_erf(),
            Self::GeluTanh => xs.gelu(),
            Self::Relu => xs.relu(),
        }
    }
}

/// Scaled dot-product attention with grouped key/value heads, without copying the kv heads.
///
/// q: (b, heads, t, d); k, v: (b, kv_heads, s, d); mask: additive, (b, 1, t, s).
/// Query heads `g * rep .. (g + 1) * rep` share kv head `g`, as in HF's `repeat_kv`; they are
/// folded into the row dimension so one batched matmul serves the whole group.
///
/// On the CPU in f32 this is `attend.rs`'s one-pass kernel without gradients, and its
/// training form with a backward (`attend_grad.rs`) with them.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    match super::cpu::attend::attention(q, k, v, mask, scale)? {
        Some(y) => Ok(y),
        None if tracks(&[q, k, v]) && fused::takes(&[q, k, v, mask]) => {
            super::cpu::attend_grad::attention(q, k, v, mask, scale)
        }
        None => attention_composed(q, k, v, mask, scale),
    }
}

/// Attention from the projections' outputs to the output projection's input: q (b, t, heads *
/// d), k and v (b, t, kv_heads * d), all at the same positions (no KV cache); `rope` (cos, sin),
/// each (b, t, rot_dims / 2), rotates the first `rot_dims` of each q and k head; mask (b, 1, t,
/// t); output (b, t, heads * d). Training on the CPU in f32 is one op (`attend_grad.rs`, no
/// head copies); everything else splits the heads and runs [`attention`].
pub fn attention_rows(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    rope: Option<(&Tensor, &Tensor)>,
    mask: &Tensor,
    scale: f64,
    (heads, kv_heads): (usize, usize),
) -> Result<Tensor> {
    if let Some(rope) = rows_op_rope(&[q, k, v], mask, rope) {
        return super::cpu::attend_grad::attention_rows((q, k, v), rope, mask, scale, (heads, kv_heads));
    }
    let (b, t, width) = q.dims3()?;
    if heads == 0 || width % heads != 0 {
        candle_core::bail!("attention: q {:?} does not split into {heads} heads", q.dims());
    }
    let d = width / heads;
    let split = |x: &Tensor, n: usize| x.reshape((b, t, n, d))?.transpose(1, 2);
    let (q, k, v) = (split(q, heads)?, split(k, kv_heads)?, split(v, kv_heads)?);
    let (q, k) = match rope {
        Some((cos, sin)) => {
            let rot = 2 * cos.dim(D::Minus1)?;
            (partial_rope(&q, cos, sin, rot)?, partial_rope(&k, cos, sin, rot)?.contiguous()?)
        }
        None => (q, k.contiguous()?),
    };
    let y = attention(&q, &k, &v.contiguous()?, mask, scale)?;
    y.transpose(1, 2)?.reshape((b, t, width))
}

/// Whether `attend_grad`'s training ops take these operands (gradients needed; inputs, mask and
/// tables f32 on the CPU): then `Some` of the rotary tables in their form; `None` for the
/// composed path.
fn rows_op_rope<'a>(
    inputs: &[&Tensor],
    mask: &Tensor,
    rope: Option<(&'a Tensor, &'a Tensor)>,
) -> Option<Option<super::cpu::attend_grad::Rotary<'a>>> {
    let tables_fit = rope.is_none_or(|(c, s)| fused::takes(&[c, s]));
    let takes = tracks(inputs) && fused::takes(inputs) && fused::takes(&[mask]) && tables_fit;
    takes.then(|| rope.map(|(cos, sin)| super::cpu::attend_grad::Rotary { cos, sin }))
}

/// [`attention_rows`] on q, k and v joined in one (b, t, (heads + 2 kv_heads) * d) tensor laid
/// out as `layout` says (as [`Linear::forward_joined`], GPT-2's `c_attn` or GPT-NeoX's
/// `query_key_value` write them): in training on the CPU one op whose gradient is one tensor
/// again; elsewhere q, k and v are split out by views.
pub fn attention_joined(
    qkv: &Tensor,
    layout: QkvLayout,
    rope: Option<(&Tensor, &Tensor)>,
    mask: &Tensor,
    scale: f64,
    (heads, kv_heads): (usize, usize),
) -> Result<Tensor> {
    if let Some(rope) = rows_op_rope(&[qkv], mask, rope) {
        return super::cpu::attend_grad::attention_joined(qkv, layout, rope, mask, scale, (heads, kv_heads));
    }
    let (b, t, width) = qkv.dims3()?;
    let d = width.checked_div(heads + 2 * kv_heads).unwrap_or(0);
    if d == 0 || d * (heads + 2 * kv_heads) != width || (layout == QkvLayout::PerHead && kv_heads != heads) {
        candle_core::bail!(
            "attention: qkv {:?} ({layout:?}) does not split into {heads} + 2 x {kv_heads} heads",
            qkv.dims()
        );
    }
    let (q, k, v) = match layout {
        QkvLayout::Stacked => (
            qkv.narrow(D::Minus1, 0, heads * d)?,
            qkv.narrow(D::Minus1, heads * d, kv_heads * d)?,
            qkv.narrow(D::Minus1, (heads + kv_heads) * d, kv_heads * d)?,
        ),
        QkvLayout::PerHead => {
            let per_head = qkv.reshape((b, t, heads, 3 * d))?;
            let part = |i: usize| per_head.narrow(3, i * d, d)?.reshape((b, t, heads * d));
            (part(0)?, part(1)?, part(2)?)
        }
    };
    attention_rows((&q, &k, &v), rope, mask, scale, (heads, kv_heads))
}

/// [`attention`] composed of differentiable tensor ops.
pub fn attention_composed(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let kv = k.dim(1)?;
    let s = k.dim(2)?;
    let rep = h / kv;
    let q = q.contiguous()?.reshape((b, kv, rep * t, d))?;
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = scores.reshape((b, kv, rep, t, s))?.broadcast_add(&mask.unsqueeze(1)?)?;
    let probs = softmax_last_dim(&scores.to_dtype(acc_dtype(scores.dtype()))?)?.to_dtype(v.dtype())?;
    let probs = probs.reshape((b, kv, rep * t, s))?;
    // A view of the KV cache is read in place: matmul takes any batch stride over row-major rows.
    let v = if v.stride()[3] == 1 && v.stride()[0] == v.stride()[1] * kv { v.clone() } else { v.contiguous()? };
    probs.matmul(&v)?.reshape((b, h, t, d))
}

/// The additive mask value for padded or future keys: finite, so fully masked rows stay NaN-free.
pub fn mask_value(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => -65504.0,
        _ => -1.0e30,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Var;

    /// A small deterministic pseudo-random tensor in [-1, 1) (also for `attend.rs`'s tests).
    pub(crate) fn rand(shape: &[usize], seed: u64) -> Tensor {
        // A small deterministic pseudo-random fill, independent of candle's RNG.
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

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// Runs `f` on plain tensors (fused path) and on variables (differentiable path).
    /// Values and gradients of the fused f32 training form (`fused.rs`) against the composed
    /// form (which f64 takes), with a random upstream gradient; every input gets a gradient.
    fn fused_backward_matches_composed(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor) {
        let run = |dtype: DType| {
            let vars: Vec<Var> =
                inputs.iter().map(|t| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()).collect();
            let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let y = f(&ts);
            assert_eq!(y.dtype(), dtype);
            let g = rand(y.dims(), 99).to_dtype(dtype).unwrap();
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let gs: Vec<Tensor> = ts
                .iter()
                .map(|t| grads.get(t).expect("a gradient for every input").to_dtype(DType::F32).unwrap())
                .collect();
            (y.to_dtype(DType::F32).unwrap(), gs)
        };
        let (y32, g32) = run(DType::F32);
        let (y64, g64) = run(DType::F64);
        assert!(max_diff(&y32, &y64) < 1e-5, "values {}", max_diff(&y32, &y64));
        for (i, (a, b)) in g32.iter().zip(&g64).enumerate() {
            let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
            assert!(max_diff(a, b) / scale < 1e-5, "gradient of input {i}: {}", max_diff(a, b));
        }
    }

    #[test]
    fn fused_training_ops_match_the_composed_form_and_its_gradients() {
        let x = rand(&[2, 3, 5, 8], 1);
        fused_backward_matches_composed(std::slice::from_ref(&x), |t| softmax_last_dim(&t[0]).unwrap());
        // Attention scores with masked (future) keys.
        let mask =
            Tensor::new(&[0f32, 0.0, 0.0, mask_value(DType::F32), mask_value(DType::F32)], &Device::Cpu).unwrap();
        let scores = rand(&[2, 3, 4, 5], 5);
        fused_backward_matches_composed(&[scores], |t| {
            softmax_last_dim(&t[0].broadcast_add(&mask.to_dtype(t[0].dtype()).unwrap()).unwrap()).unwrap()
        });
        let w = (rand(&[8], 2) + 1.0).unwrap();
        fused_backward_matches_composed(&[x.clone(), w], |t| rms_norm(&t[0], &t[1], 1e-5).unwrap());

        // Attention over grouped kv heads (3 query heads each), causal with a padded key, and
        // sizes on both sides of the decoding shortcut (rows <= 4).
        for &(b, h, kv, t, s, d) in
            &[(2, 6, 2, 5, 7, 16), (1, 2, 2, 1, 3, 8), (2, 3, 1, 9, 9, 20), (2, 4, 2, 35, 38, 8)]
        {
            let neg = mask_value(DType::F32);
            let m: Vec<f32> = (0..b * t * s)
                .map(|i| {
                    let (bi, ti, j) = (i / (t * s), i / s % t, i % s);
                    if j > s - t + ti || (bi == 1 && j == 0) { neg } else { 0.0 }
                })
                .collect();
            let mask = Tensor::from_vec(m, (b, 1, t, s), &Device::Cpu).unwrap();
            let qkv = [rand(&[b, h, t, d], 11), rand(&[b, kv, s, d], 12), rand(&[b, kv, s, d], 13)];
            fused_backward_matches_composed(&qkv, |t| {
                attention(&t[0], &t[1], &t[2], &mask.to_dtype(t[0].dtype()).unwrap(), 0.3).unwrap()
            });
        }

        // Attention from the projections' (b, t, heads * d) rows: rope on all of each head, on
        // part of it (GPT-NeoX), or none (GPT-2); grouped kv heads; causal with padded keys.
        for &(b, h, kv, t, d, rot) in
            &[(2, 6, 2, 5, 8, 8), (3, 4, 4, 4, 8, 4), (2, 3, 1, 6, 6, 0), (1, 2, 1, 1, 4, 4), (2, 4, 2, 37, 8, 8)]
        {
            let neg = mask_value(DType::F32);
            let m: Vec<f32> = (0..b * t * t)
                .map(|i| {
                    let (bi, ti, j) = (i / (t * t), i / t % t, i % t);
                    if j > ti || (bi == 1 && j == 0 && ti > 0) { neg } else { 0.0 }
                })
                .collect();
            let mask = Tensor::from_vec(m, (b, 1, t, t), &Device::Cpu).unwrap();
            let pos: Vec<u32> = (0..b * t).map(|i| (i % t + 2 * (i / t)) as u32).collect();
            let pos = Tensor::from_vec(pos, (b, t), &Device::Cpu).unwrap();
            let tables = (rot > 0).then(|| {
                let table =
                    RotaryTable::new(&RotaryTable::default_inv_freq(rot, 10000.0), 64, DType::F32, &Device::Cpu)
                        .unwrap();
                table.lookup(&pos).unwrap()
            });
            let qkv = [rand(&[b, t, h * d], 21), rand(&[b, t, kv * d], 22), rand(&[b, t, kv * d], 23)];
            fused_backward_matches_composed(&qkv, |x| {
                let dt = x[0].dtype();
                let tables = tables.as_ref().map(|(c, s)| (c.to_dtype(dt).unwrap(), s.to_dtype(dt).unwrap()));
                let rope = tables.as_ref().map(|(c, s)| (c, s));
                let mask = mask.to_dtype(dt).unwrap();
                attention_rows((&x[0], &x[1], &x[2]), rope, &mask, 0.35, (h, kv)).unwrap()
            });
            // The same with q, k and v joined in one tensor (one gradient, same layout): heads
            // stacked, and per head [q | k | v] (GPT-NeoX) where there are as many kv heads.
            let joined = rand(&[b, t, (h + 2 * kv) * d], 24);
            let layouts: &[QkvLayout] =
                if kv == h { &[QkvLayout::Stacked, QkvLayout::PerHead] } else { &[QkvLayout::Stacked] };
            for &layout in layouts {
                fused_backward_matches_composed(std::slice::from_ref(&joined), |x| {
                    let dt = x[0].dtype();
                    let tables = tables.as_ref().map(|(c, s)| (c.to_dtype(dt).unwrap(), s.to_dtype(dt).unwrap()));
                    let rope = tables.as_ref().map(|(c, s)| (c, s));
                    attention_joined(&x[0], layout, rope, &mask.to_dtype(dt).unwrap(), 0.35, (h, kv)).unwrap()
                });
            }
        }

        let table = RotaryTable::new(&RotaryTable::default_inv_freq(8, 10000.0), 16, DType::F32, &Device::Cpu).unwrap();
        let pos = Tensor::new(&[[0u32, 1, 2, 3, 4], [3, 4, 5, 6, 7]], &Device::Cpu).unwrap();
        let (cos, sin) = table.lookup(&pos).unwrap();
        fused_backward_matches_composed(std::slice::from_ref(&x), |t| {
            let d = t[0].dtype();
            rope(&t[0], &cos.to_dtype(d).unwrap(), &sin.to_dtype(d).unwrap()).unwrap()
        });
        let table4 =
            RotaryTable::new(&RotaryTable::default_inv_freq(4, 10000.0), 16, DType::F32, &Device::Cpu).unwrap();
        let (cos4, sin4) = table4.lookup(&pos).unwrap();
        fused_backward_matches_composed(std::slice::from_ref(&x), |t| {
            let d = t[0].dtype();
            partial_rope(&t[0], &cos4.to_dtype(d).unwrap(), &sin4.to_dtype(d).unwrap(), 4).unwrap()
        });

        let up = rand(&[2, 5, 8], 3);
        let gate = (rand(&[2, 5, 8], 4) * 6.0).unwrap();
        fused_backward_matches_composed(&[gate, up], |t| Activation::Silu.gated(&t[0], &t[1]).unwrap());
        let gate_up = (rand(&[2, 5, 16], 5) * 4.0).unwrap();
        fused_backward_matches_composed(&[gate_up], |t| Activation::Silu.gated_joined(&t[0]).unwrap());
    }

    /// `Linear::forward_joined` against the layers one by one: values and the gradients of the
    /// input, every weight and every bias; and where it declines (no gradients, adapters).
    #[test]
    fn joined_layers_match_the_layers_one_by_one() {
        let diff = |a: &Tensor, b: &Tensor| max_diff(a, b);
        for bias in [false, true] {
            let x = Var::from_tensor(&rand(&[2, 3, 6], 41)).unwrap();
            let layers: Vec<(Var, Var)> = [4usize, 2, 2]
                .iter()
                .enumerate()
                .map(|(j, &o)| {
                    let w = Var::from_tensor(&rand(&[o, 6], 42 + j as u64)).unwrap();
                    (w, Var::from_tensor(&rand(&[o], 45 + j as u64)).unwrap())
                })
                .collect();
            let parts: Vec<Linear> = layers
                .iter()
                .map(|(w, b)| Linear {
                    name: "l".into(),
                    weight: w.as_tensor().clone(),
                    bias: bias.then(|| b.as_tensor().clone()),
                    in_out: false,
                    lora: None,
                    half: None,
                    packed: None,
                })
                .collect();
            let refs: Vec<&Linear> = parts.iter().collect();
            let joined = Linear::forward_joined(&refs, x.as_tensor()).unwrap().expect("joins in training");
            let outs: Vec<Tensor> = parts.iter().map(|l| l.forward(x.as_tensor()).unwrap()).collect();
            let want = Tensor::cat(&outs, 2).unwrap();
            assert!(diff(&joined, &want) < 1e-6, "values: {}", diff(&joined, &want));
            let g = rand(&[2, 3, 8], 48);
            let grads = |y: &Tensor| (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let (ga, gb) = (grads(&joined), grads(&want));
            let mut tracked = vec![x.as_tensor()];
            for (w, b) in &layers {
                tracked.push(w.as_tensor());
                if bias {
                    tracked.push(b.as_tensor());
                }
            }
            for t in tracked {
                let (a, b) = (ga.get(t).expect("a gradient"), gb.get(t).expect("a gradient"));
                assert!(diff(a, b) < 1e-5, "gradient: {}", diff(a, b));
            }
            // Without gradients the layers run one by one (decoding reads weights in place).
            let frozen: Vec<Linear> = parts
                .iter()
                .map(|l| Linear { weight: l.weight.detach(), bias: l.bias.as_ref().map(|b| b.detach()), ..l.clone() })
                .collect();
            let frozen: Vec<&Linear> = frozen.iter().collect();
            assert!(Linear::forward_joined(&frozen, &x.as_tensor().detach()).unwrap().is_none());
        }
    }

    fn both(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor) -> (Tensor, Tensor) {
        let fused = f(inputs);
        let vars: Vec<Tensor> = inputs.iter().map(|t| Var::from_tensor(t).unwrap().as_tensor().clone()).collect();
        let diff = f(&vars);
        assert!(diff.track_op(), "differentiable path must record ops");
        (fused, diff)
    }

    /// `linear.rs`'s product against candle's own (flatten, transpose, matmul, reshape), values
    /// and gradients, for both weight layouts, with and without a bias, in f32 and f64; a
    /// frozen weight gets no gradient.
    #[test]
    fn linear_op_matches_candles_product_and_its_gradients() {
        let diff =
            |a: &Tensor, b: &Tensor| max_diff(&a.to_dtype(DType::F32).unwrap(), &b.to_dtype(DType::F32).unwrap());
        for dtype in [DType::F32, DType::F64] {
            for (in_out, bias) in [(false, false), (false, true), (true, true)] {
                let (i, o) = (7, 5);
                let x = Var::from_tensor(&rand(&[2, 3, i], 31).to_dtype(dtype).unwrap()).unwrap();
                let shape = if in_out { [i, o] } else { [o, i] };
                let w = Var::from_tensor(&rand(&shape, 32).to_dtype(dtype).unwrap()).unwrap();
                let b = Var::from_tensor(&rand(&[o], 33).to_dtype(dtype).unwrap()).unwrap();
                let layer = Linear {
                    name: "l".into(),
                    weight: w.as_tensor().clone(),
                    bias: bias.then(|| b.as_tensor().clone()),
                    in_out,
                    lora: None,
                    half: None,
                    packed: None,
                };
                let g = rand(&[2, 3, o], 34).to_dtype(dtype).unwrap();
                let ours = layer.forward(x.as_tensor()).unwrap();
                let gw = if in_out { w.as_tensor().clone() } else { w.as_tensor().t().unwrap() };
                let mut want = x.as_tensor().reshape((6, i)).unwrap().matmul(&gw).unwrap().reshape((2, 3, o)).unwrap();
                if bias {
                    want = want.broadcast_add(b.as_tensor()).unwrap();
                }
                assert!(diff(&ours, &want) < 1e-5, "{dtype:?} in_out {in_out}: {}", diff(&ours, &want));
                let grads = |y: &Tensor| (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                let (ga, gb) = (grads(&ours), grads(&want));
                for t in [x.as_tensor(), w.as_tensor()] {
                    let (a, b) = (ga.get(t).expect("a gradient"), gb.get(t).expect("a gradient"));
                    assert!(diff(a, b) < 1e-5, "{dtype:?} in_out {in_out}: {}", diff(a, b));
                }
            }
        }
        // A frozen weight: only the input gets a gradient.
        let x = Var::from_tensor(&rand(&[4, 6], 35)).unwrap();
        let w = rand(&[3, 6], 36);
        let y = linear::forward(x.as_tensor(), &w, false, None).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(x.as_tensor()).is_some() && grads.get(&w).is_none());
    }

    #[test]
    fn fused_and_differentiable_forms_agree() {
        let x = rand(&[2, 3, 5, 8], 1);
        let (a, b) = both(std::slice::from_ref(&x), |t| softmax_last_dim(&t[0]).unwrap());
        assert!(max_diff(&a, &b) < 1e-6);

        let w = rand(&[8], 2);
        let bias = rand(&[8], 3);
        let (a, b) = both(&[x.clone(), w.clone()], |t| rms_norm(&t[0], &t[1], 1e-5).unwrap());
        assert!(max_diff(&a, &b) < 1e-5);
        let (a, b) = both(&[x.clone(), w, bias], |t| layer_norm(&t[0], &t[1], &t[2], 1e-5).unwrap());
        assert!(max_diff(&a, &b) < 1e-5);

        let table = RotaryTable::new(&RotaryTable::default_inv_freq(8, 10000.0), 16, DType::F32, &Device::Cpu).unwrap();
        let pos = Tensor::new(&[[0u32, 1, 2, 3, 4], [3, 4, 5, 6, 7]], &Device::Cpu).unwrap();
        let (cos, sin) = table.lookup(&pos).unwrap();
        let (a, b) = both(std::slice::from_ref(&x), |t| rope(&t[0], &cos, &sin).unwrap());
        assert!(max_diff(&a, &b) < 1e-6);
        let table4 =
            RotaryTable::new(&RotaryTable::default_inv_freq(4, 10000.0), 16, DType::F32, &Device::Cpu).unwrap();
        let (cos4, sin4) = table4.lookup(&pos).unwrap();
        let (a, b) = both(&[x], |t| partial_rope(&t[0], &cos4, &sin4, 4).unwrap());
        assert!(max_diff(&a, &b) < 1e-6);
    }

    #[test]
    fn cpu_matmul_matches_candle_and_differentiates_only_what_tracks() {
        let x = Var::from_tensor(&rand(&[33, 7], 11)).unwrap();
        let w_var = Var::from_tensor(&rand(&[9, 7], 12)).unwrap(); // HF layout, used transposed
        let frozen = rand(&[9, 7], 14);
        let g = rand(&[33, 9], 13);
        for use_blas in [false, true] {
            let op = CpuMatmul { use_blas };
            for (w, w_trains) in [(w_var.as_tensor(), true), (&frozen, false)] {
                let y = op.apply(x.as_tensor(), &w.t().unwrap()).unwrap();
                let want = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
                assert!(max_diff(&y, &want) < 1e-5);
                let got = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                let reference = (want * &g).unwrap().sum_all().unwrap().backward().unwrap();
                let (a, b) = (got.get(x.as_tensor()).unwrap(), reference.get(x.as_tensor()).unwrap());
                assert!(max_diff(a, b) < 1e-5);
                match w_trains {
                    true => assert!(max_diff(got.get(w).unwrap(), reference.get(w).unwrap()) < 1e-5),
                    false => assert!(got.get(w).is_none()),
                }
            }
        }
        // Through matmul_2d, leading dims flattened, with a bias.
        let x3 = rand(&[2, 17, 7], 15);
        let bias = rand(&[9], 16);
        let y = matmul_2d(&x3, &frozen.t().unwrap(), Some(&bias)).unwrap();
        let want = x3.broadcast_matmul(&frozen.t().unwrap()).unwrap().broadcast_add(&bias).unwrap();
        assert!(max_diff(&y, &want) < 1e-5);
    }

    #[test]
    fn grouped_attention_matches_repeated_kv() {
        let (b, h, kv, t, d) = (2, 4, 2, 3, 4);
        let q = rand(&[b, h, t, d], 4);
        let k = rand(&[b, kv, t, d], 5);
        let v = rand(&[b, kv, t, d], 6);
        let mask = Tensor::zeros((b, 1, t, t), DType::F32, &Device::Cpu).unwrap();
        let got = attention(&q, &k, &v, &mask, 0.5).unwrap();
        // Reference: repeat each kv head `h / kv` times, then plain attention per head.
        let rep = |x: &Tensor| {
            let x = x.unsqueeze(2).unwrap().broadcast_as((b, kv, h / kv, t, d)).unwrap();
            x.contiguous().unwrap().reshape((b, h, t, d)).unwrap()
        };
        let (k2, v2) = (rep(&k), rep(&v));
        let p = candle_nn::ops::softmax(&(q.matmul(&k2.t().unwrap()).unwrap() * 0.5).unwrap(), D::Minus1).unwrap();
        let want = p.matmul(&v2).unwrap();
        // The one-pass CPU kernel (`attend.rs`) and the composed form.
        assert!(max_diff(&got, &want) < 1e-6);
        assert!(max_diff(&attention_composed(&q, &k, &v, &mask, 0.5).unwrap(), &want) < 1e-6);
    }
}
