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
//! operand it reads by columns transposed once, and runs only over what the mask leaves open
//! (`attend::reach`). Three entry points: [`attention`] on (b, heads, t, d) heads,
//! [`attention_rows`] on the projections' own (b, t, heads * d) rows with rope inside, and
//! [`attention_joined`] on q, k and v side by side in one tensor, as one product on the stacked
//! weights (or GPT-2's `c_attn`, GPT-NeoX's `query_key_value`) writes them (below).
//! `ops`' tests check values and the three gradients against the composed form.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

use super::attend::{Group, group, probabilities, query_tiles, reach, transpose, transpose_by_position};
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
        with_operands(grad, q, k, v, |[dout, qd, kd, vd], ql, kl| {
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
                        group_backward(isa, &g, dout, dq, dk, dv);
                    });
                Ok(())
            })?;
            let dev = q.device();
            Ok((
                Some(Tensor::from_vec(dq, (b, h, t, d), dev)?),
                Some(Tensor::from_vec(dk, (b, kv, s, d), dev)?),
                Some(Tensor::from_vec(dv, (b, kv, s, d), dev)?),
            ))
        })
    }
}

/// Runs `f` on the f32 data of the upstream gradient and of q, k and v, with q's and k's
/// layouts: what both attention ops' backward passes read.
fn with_operands<R>(
    grad: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    f: impl FnOnce([&[f32]; 4], &Layout, &Layout) -> Result<R>,
) -> Result<R> {
    let grad = grad.contiguous()?;
    let (gs, gl) = grad.storage_and_layout();
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (Storage::Cpu(gs), Storage::Cpu(qs), Storage::Cpu(ks), Storage::Cpu(vs)) = (&*gs, &*qs, &*ks, &*vs) else {
        bail!("fused attention: operands not on the CPU");
    };
    f([data(gs, gl)?, data(qs, ql)?, data(ks, kl)?, data(vs, vl)?], ql, kl)
}

/// The gradients of one group (see the header): `dq` (rows x d), `dk` and `dv` (s x d).
///
/// Products skip what the mask makes exactly zero (`attend::reach`): per tile of query rows,
/// dP and dQ run over the keys those rows reach; per tile of keys, dV and dK run over the
/// query rows that reach them, one run of columns once P^T, dO^T, dS^T and Q^T are laid out
/// position-major (`transpose_by_position`).
fn group_backward(isa: Option<Isa>, g: &Group<'_>, dout: &[f32], dq: &mut [f32], dk: &mut [f32], dv: &mut [f32]) {
    let (q, (k, ks), (v, vs), t, s, d, scale) = (g.q, g.keys, g.values, g.t, g.s, g.d, g.scale);
    let rows = q.len() / d;
    let rep = rows / t.max(1);
    let reach = reach(g.mask, t, s);
    let tiles = query_tiles(g, &reach);
    // The probabilities again (the forward's output itself is not needed).
    let p = probabilities(isa, g, &tiles);
    // Key tiles: keys j0..j1 get contributions only from positions that reach past j0, which
    // in position-major columns start at `first * rep`.
    let key_tiles: Vec<(usize, usize, usize)> = (0..s)
        .step_by(16)
        .map(|j0| {
            let first = (0..t).find(|&i| reach[i] > j0).unwrap_or(t);
            (j0, (j0 + 16).min(s), first * rep)
        })
        .collect();
    // Rows of A^T against rows of B^T, for each key tile: `out` (s x d) = A^T B over the rows.
    let by_keys = |at: &[f32], bt: &[f32], out: &mut [f32]| {
        for &(j0, j1, c0) in &key_tiles {
            let k = rows - c0;
            skinny::product_serial(
                isa,
                (j1 - j0, d, k),
                &at[j0 * rows + c0..],
                rows,
                &bt[c0..],
                rows,
                &mut out[j0 * d..],
                d,
            );
        }
    };
    // dV = P^T dO.
    let (pt, dot) = (transpose_by_position(&p, s, t, rep, s), transpose_by_position(dout, d, t, rep, d));
    by_keys(&pt, &dot, dv);
    // dP = dO V^T, then dS = P * (dP - rowsum(dP * P)) * scale, in place.
    let mut ds = vec![0f32; rows * s];
    for tile in &tiles {
        let r0 = tile.row;
        skinny::product_serial(isa, (tile.rows, tile.keys, d), &dout[r0 * d..], d, v, vs, &mut ds[r0 * s..], s);
    }
    for (dsr, pr) in ds.chunks_exact_mut(s).zip(p.chunks_exact(s)) {
        let dot: f32 = dsr.iter().zip(pr).map(|(a, b)| a * b).sum();
        for (x, p) in dsr.iter_mut().zip(pr) {
            *x = p * (*x - dot) * scale;
        }
    }
    // dQ = dS K: rows of dS against rows of K^T; dK = dS^T Q.
    let kt = transpose(k, ks, s, d);
    for tile in &tiles {
        let r0 = tile.row;
        skinny::product_serial(isa, (tile.rows, d, tile.keys), &ds[r0 * s..], s, &kt, s, &mut dq[r0 * d..], d);
    }
    let (dst, qt) = (transpose_by_position(&ds, s, t, rep, s), transpose_by_position(q, d, t, rep, d));
    by_keys(&dst, &qt, dk);
}

// ---------------------------------------------------------------------------------------------
// Attention straight from the projections.
//
// Between the q/k/v projections and the output projection, a layer's attention in composed
// form is views and copies: heads split out and transposed, rope on q and k (each a copy), k
// and v made contiguous, the output transposed back and merged (another copy). Each is an
// autograd node whose gradient candle accumulates through a fresh zeroed tensor, and the
// transposed gradients are added through strides. This op reads q, k and v where the
// projections wrote them, (b, t, heads * d), gathers and rotates each group's rows itself,
// and writes its output (and, in the backward, dq, dk and dv, rotated back) in that layout.

/// Rotary tables for [`attention_rows`]: cos and sin (b, t, rot_dims / 2), applied to the
/// first `rot_dims` of each head in the "rotate half" layout.
pub struct Rotary<'a> {
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
}

/// `softmax(rope(q) rope(k)^T * scale + mask) v` per head, with `heads` query heads over
/// `kv_heads` key/value heads, differentiable in q, k and v (the tables and mask are constants).
/// q: (b, t, heads * d); k, v: (b, t, kv_heads * d); mask: additive (b, 1, t, t); output
/// (b, t, heads * d). f32 on the CPU.
pub fn attention_rows(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    rope: Option<Rotary<'_>>,
    mask: &Tensor,
    scale: f64,
    (heads, kv_heads): (usize, usize),
) -> Result<Tensor> {
    let (b, t, width) = q.dims3()?;
    let d = width.checked_div(heads).unwrap_or(0);
    let fits = heads > 0
        && kv_heads > 0
        && heads % kv_heads == 0
        && d * heads == width
        && d > 0
        && k.dims() == [b, t, kv_heads * d]
        && v.dims() == k.dims()
        && mask.dims() == [b, 1, t, t];
    if !fits {
        bail!(
            "fused attention: q {:?}, k {:?}, v {:?} and mask {:?} do not fit {heads} heads over {kv_heads}",
            q.dims(),
            k.dims(),
            v.dims(),
            mask.dims()
        );
    }
    let op = RowsAttention::new(rope, mask, scale, RowsShape { b, t, heads, kv: kv_heads, d }, q.dims())?;
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// How q, k and v sit side by side in one tensor's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkvLayout {
    /// All of q's heads, then k's, then v's: one product on the stacked q, k and v weights
    /// (`Linear::forward_joined`), or GPT-2's `c_attn`.
    Stacked,
    /// Per head [q | k | v]: GPT-NeoX's `query_key_value` (as many kv heads as heads).
    PerHead,
}

/// [`attention_rows`] on q, k and v joined in one tensor, (b, t, (heads + 2 kv_heads) * d),
/// laid out as `layout` says. Its gradient is one tensor in the same layout, so the
/// projection's backward is one product too.
pub fn attention_joined(
    qkv: &Tensor,
    layout: QkvLayout,
    rope: Option<Rotary<'_>>,
    mask: &Tensor,
    scale: f64,
    (heads, kv_heads): (usize, usize),
) -> Result<Tensor> {
    let (b, t, width) = qkv.dims3()?;
    let d = width.checked_div(heads + 2 * kv_heads).unwrap_or(0);
    let fits = heads > 0
        && kv_heads > 0
        && heads % kv_heads == 0
        && (layout == QkvLayout::Stacked || kv_heads == heads)
        && d > 0
        && d * (heads + 2 * kv_heads) == width
        && mask.dims() == [b, 1, t, t];
    if !fits {
        bail!(
            "fused attention: qkv {:?} ({layout:?}) and mask {:?} do not fit {heads} heads over {kv_heads}",
            qkv.dims(),
            mask.dims()
        );
    }
    let op = RowsAttention::new(rope, mask, scale, RowsShape { b, t, heads, kv: kv_heads, d }, &qkv.dims()[..2])?;
    qkv.contiguous()?.apply_op1(Joined { op, layout })
}

#[derive(Clone, Copy)]
struct RowsShape {
    b: usize,
    t: usize,
    heads: usize,
    kv: usize,
    d: usize,
}

struct RowsAttention {
    mask: Tensor,
    tables: Option<(Tensor, Tensor)>,
    shape: RowsShape,
    scale: f32,
    isa: Option<Isa>,
}

impl RowsAttention {
    /// The op for `shape`, with its constants (`input`: the input's dims, for errors).
    fn new(rope: Option<Rotary<'_>>, mask: &Tensor, scale: f64, shape: RowsShape, input: &[usize]) -> Result<Self> {
        let RowsShape { b, t, d, .. } = shape;
        let tables = match rope {
            None => None,
            Some(r) => {
                let half = r.cos.dim(2)?;
                if r.cos.dims() != [b, t, half] || r.sin.dims() != r.cos.dims() || 2 * half > d {
                    bail!("fused attention: rope tables {:?} for input {input:?} with head size {d}", r.cos.dims());
                }
                Some((r.cos.detach().contiguous()?, r.sin.detach().contiguous()?))
            }
        };
        Ok(Self { mask: mask.detach().contiguous()?, tables, shape, scale: scale as f32, isa: skinny::isa() })
    }
}

/// Where some heads sit in a (b, t, width) tensor: head `j` (of size d) starts at column
/// `(first + j * stride) * d`; stride 1 where a projection's heads are side by side, 3 in
/// GPT-NeoX's per-head [q | k | v].
#[derive(Clone, Copy)]
struct Heads {
    width: usize,
    first: usize,
    stride: usize,
}

impl Heads {
    /// All of a (b, t, n * d) tensor's n heads.
    fn all(n: usize, d: usize) -> Self {
        Self { width: n * d, first: 0, stride: 1 }
    }

    fn column(&self, j: usize, d: usize) -> usize {
        (self.first + j * self.stride) * d
    }

    /// These heads from head `j` on.
    fn from(self, j: usize) -> Self {
        Self { first: self.first + j * self.stride, ..self }
    }
}

/// q, k or v: its data and where its heads sit in it.
#[derive(Clone, Copy)]
struct Source<'a> {
    data: &'a [f32],
    at: Heads,
}

/// The f32 data of a constant operand of the op.
fn constant<'a>(t: &'a Tensor) -> Result<impl std::ops::Deref<Target = Storage> + 'a> {
    let (s, _) = t.storage_and_layout();
    if !matches!(&*s, Storage::Cpu(CpuStorage::F32(_))) {
        bail!("fused attention: constants must be f32 on the CPU");
    }
    Ok(s)
}

fn f32s<'a>(s: &'a Storage, t: &Tensor) -> &'a [f32] {
    match s {
        Storage::Cpu(CpuStorage::F32(v)) => &v[t.layout().start_offset()..][..t.elem_count()],
        _ => unreachable!("checked by constant()"),
    }
}

/// One (sequence, kv head)'s view of the rows layout.
struct Rows<'a> {
    /// cos and sin rows of this sequence, `half` per position (empty without rope).
    cos: &'a [f32],
    sin: &'a [f32],
    half: usize,
    bi: usize,
    t: usize,
    d: usize,
}

impl Rows<'_> {
    /// `n` heads of sequence `bi` from `src` (b, t, width) at `at`, head-major, each row
    /// rotated by its position's angles when `rotate`.
    fn gather(&self, src: &[f32], at: Heads, n: usize, rotate: bool) -> Vec<f32> {
        let (t, d) = (self.t, self.d);
        let mut out = vec![0f32; n * t * d];
        for j in 0..n {
            for i in 0..t {
                let row = &mut out[(j * t + i) * d..][..d];
                row.copy_from_slice(&src[(self.bi * t + i) * at.width + at.column(j, d)..][..d]);
                if rotate {
                    self.rotate(row, i, 1.0);
                }
            }
        }
        out
    }

    /// The inverse of [`Rows::gather`]: `rows` (head-major) into `dst`, rotated back when `rotate`.
    fn scatter(&self, mut rows: Vec<f32>, dst: &mut [f32], at: Heads, rotate: bool) {
        let (t, d) = (self.t, self.d);
        for (r, row) in rows.chunks_exact_mut(d).enumerate() {
            let (j, i) = (r / t, r % t);
            if rotate {
                self.rotate(row, i, -1.0);
            }
            dst[(self.bi * t + i) * at.width + at.column(j, d)..][..d].copy_from_slice(row);
        }
    }

    /// Rope in the "rotate half" layout on the first `2 * half` of `row`, by the angles of
    /// position `i` (`sign` -1: the inverse rotation, which is also its backward).
    fn rotate(&self, row: &mut [f32], i: usize, sign: f32) {
        let h = self.half;
        let (cos, sin) = (&self.cos[i * h..][..h], &self.sin[i * h..][..h]);
        let (x1, x2) = row[..2 * h].split_at_mut(h);
        for j in 0..h {
            let (a, b, s) = (x1[j], x2[j], sign * sin[j]);
            x1[j] = a * cos[j] - b * s;
            x2[j] = b * cos[j] + a * s;
        }
    }
}

impl RowsAttention {
    /// Runs `f(task, group, rows)` for every (sequence, kv head) task on rayon's threads, with
    /// that group's rotated q and k gathered and its values read in place.
    fn per_group<R: Send>(
        &self,
        [q, k, v]: [Source<'_>; 3],
        f: impl Fn(&Group<'_>, &Rows<'_>, usize) -> R + Sync,
    ) -> Result<Vec<R>> {
        let RowsShape { b, t, heads, kv, d } = self.shape;
        let rep = heads / kv;
        let mask_s = constant(&self.mask)?;
        let mask = f32s(&mask_s, &self.mask);
        let tables = match &self.tables {
            Some((c, s)) => Some((constant(c)?, c, constant(s)?, s)),
            None => None,
        };
        let (cos, sin, half) = match &tables {
            Some((cs, c, ss, s)) => (f32s(cs, c), f32s(ss, s), c.dim(2)?),
            None => (&[][..], &[][..], 0),
        };
        let rotate = half > 0;
        Ok((0..b * kv)
            .into_par_iter()
            .map(|task| {
                let (bi, g) = (task / kv, task % kv);
                let rows = Rows {
                    cos: &cos[bi * t * half..][..t * half],
                    sin: &sin[bi * t * half..][..t * half],
                    half,
                    bi,
                    t,
                    d,
                };
                let qg = rows.gather(q.data, q.at.from(g * rep), rep, rotate);
                let kg = rows.gather(k.data, k.at.from(g), 1, rotate);
                let start = bi * t * v.at.width + v.at.column(g, d);
                let values = &v.data[start..start + (t - 1) * v.at.width + d];
                let group = Group {
                    q: &qg,
                    mask: &mask[bi * t * t..][..t * t],
                    keys: (&kg, d),
                    values: (values, v.at.width),
                    t,
                    s: t,
                    d,
                    scale: self.scale,
                };
                f(&group, &rows, task)
            })
            .collect())
    }

    /// The output, (b, t, heads * d).
    fn forward(&self, src: [Source<'_>; 3]) -> Result<Vec<f32>> {
        let RowsShape { b, heads, kv, d, t } = self.shape;
        let mut out = vec![0f32; b * t * heads * d];
        if t == 0 {
            return Ok(out);
        }
        let isa = self.isa;
        let parts = self.per_group(src, |g, rows, _| {
            let mut y = vec![0f32; g.q.len()];
            group(isa, g, &mut y);
            (y, rows.bi)
        })?;
        for (task, (y, bi)) in parts.into_iter().enumerate() {
            let rows = Rows { cos: &[], sin: &[], half: 0, bi, t, d };
            rows.scatter(y, &mut out, Heads::all(heads, d).from(task % kv * (heads / kv)), false);
        }
        Ok(out)
    }

    /// dq, dk and dv from the output's gradient `dout`, handed to `put(which, rows, group,
    /// head)` a group at a time: `which` 0, 1, 2 for q, k, v, `rows` head-major (`Rows::scatter`'s
    /// input), `head` the group's first head within q's, k's or v's heads.
    fn backward(
        &self,
        dout: &[f32],
        src: [Source<'_>; 3],
        mut put: impl FnMut(usize, Vec<f32>, &Rows<'_>, usize),
    ) -> Result<()> {
        let RowsShape { heads, kv, d, t, .. } = self.shape;
        if t == 0 {
            return Ok(());
        }
        let rep = heads / kv;
        let isa = self.isa;
        let rotate = self.tables.is_some();
        let parts = self.per_group(src, |g, rows, task| {
            let dout = rows.gather(dout, Heads::all(heads, d).from(task % kv * rep), rep, false);
            let (mut gq, mut gk, mut gv) = (vec![0f32; g.q.len()], vec![0f32; t * d], vec![0f32; t * d]);
            group_backward(isa, g, &dout, &mut gq, &mut gk, &mut gv);
            // Rotated back here, on the worker threads; scattered below.
            if rotate {
                for (r, row) in gq.chunks_exact_mut(d).enumerate() {
                    rows.rotate(row, r % t, -1.0);
                }
                for (i, row) in gk.chunks_exact_mut(d).enumerate() {
                    rows.rotate(row, i, -1.0);
                }
            }
            (gq, gk, gv, rows.bi)
        })?;
        for (task, (gq, gk, gv, bi)) in parts.into_iter().enumerate() {
            let g = task % kv;
            let rows = Rows { cos: &[], sin: &[], half: 0, bi, t, d };
            put(0, gq, &rows, g * rep);
            put(1, gk, &rows, g);
            put(2, gv, &rows, g);
        }
        Ok(())
    }
}

impl CustomOp3 for RowsAttention {
    fn name(&self) -> &'static str {
        "fused-attention-rows"
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
        let RowsShape { heads, kv, d, .. } = self.shape;
        let src = [(q, heads), (k, kv), (v, kv)].map(|(data, n)| Source { data, at: Heads::all(n, d) });
        Ok((CpuStorage::F32(self.forward(src)?), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        with_operands(grad, q, k, v, |[dout, qd, kd, vd], _, _| {
            let RowsShape { heads, kv, d, .. } = self.shape;
            let src = [(qd, heads), (kd, kv), (vd, kv)].map(|(data, n)| Source { data, at: Heads::all(n, d) });
            let (mut dq, mut dk, mut dv) = (vec![0f32; qd.len()], vec![0f32; kd.len()], vec![0f32; vd.len()]);
            self.backward(dout, src, |which, g, rows, head| match which {
                0 => rows.scatter(g, &mut dq, Heads::all(heads, d).from(head), false),
                1 => rows.scatter(g, &mut dk, Heads::all(kv, d).from(head), false),
                _ => rows.scatter(g, &mut dv, Heads::all(kv, d).from(head), false),
            })?;
            let dev = q.device();
            Ok((
                Some(Tensor::from_vec(dq, q.shape(), dev)?),
                Some(Tensor::from_vec(dk, k.shape(), dev)?),
                Some(Tensor::from_vec(dv, v.shape(), dev)?),
            ))
        })
    }
}

/// [`attention_joined`]'s op: [`RowsAttention`] reading q, k and v from one input.
struct Joined {
    op: RowsAttention,
    layout: QkvLayout,
}

impl Joined {
    /// Where q's, k's and v's heads sit in the joined input.
    fn heads(&self) -> [Heads; 3] {
        let RowsShape { heads, kv, d, .. } = self.op.shape;
        let width = (heads + 2 * kv) * d;
        match self.layout {
            QkvLayout::Stacked => [0, heads, heads + kv].map(|first| Heads { width, first, stride: 1 }),
            QkvLayout::PerHead => [0, 1, 2].map(|first| Heads { width, first, stride: 3 }),
        }
    }
}

impl CustomOp1 for Joined {
    fn name(&self) -> &'static str {
        "fused-attention-joined"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = data(s1, l1)?;
        let RowsShape { b, t, heads, d, .. } = self.op.shape;
        let src = self.heads().map(|at| Source { data: qkv, at });
        let out = self.op.forward(src)?;
        Ok((CpuStorage::F32(out), Shape::from((b, t, heads * d))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let (xs, xl) = qkv.storage_and_layout();
        let (Storage::Cpu(gs), Storage::Cpu(xs)) = (&*gs, &*xs) else {
            bail!("fused attention: operands not on the CPU");
        };
        let (dout, x) = (data(gs, gl)?, data(xs, xl)?);
        let at = self.heads();
        let mut dqkv = vec![0f32; x.len()];
        self.op.backward(dout, at.map(|at| Source { data: x, at }), |which, g, rows, head| {
            rows.scatter(g, &mut dqkv, at[which].from(head), false)
        })?;
        Ok(Some(Tensor::from_vec(dqkv, qkv.shape(), qkv.device())?))
    }
}
