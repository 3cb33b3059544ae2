//! Frozen weights packed once for bf16 products, kept with the layers that read them.
//!
//! With bf16 products (`amx.rs`) an operand is rounded and packed into AMX's tiles before the
//! product. For a weight that never changes (a policy's frozen layers, the tied head, the
//! reference model) packing on every call is waste: it costs as much as a product of ~16 rows,
//! so decoding's 32 or 64 rows a token could not use AMX at all, and each training step packed
//! the head's 28M values twice. A [`PackedWeight`] holds a weight's packed forms, each made the
//! first time it is read: the B operand of the forward product (`x W^T`, or `x W` for GPT-2's
//! Conv1D) and, once a gradient flows through the layer to its input, that of the backward
//! (`dy W`, or `dy W^T`).
//!
//! Which weights never change is the model owner's knowledge, not the tensor's: a policy's
//! inference view reads its trained layers through detached tensors whose storage the
//! optimiser overwrites in place. So packing is opt-in (`Model::pack_frozen`), and a layer
//! uses its packed forms only while its weight is the tensor they were made for (a replaced
//! weight is read as it is). Layers holding the same tensor share one `PackedWeight` (the
//! reference, the policy's training and inference views), through a registry of weak
//! references by tensor id.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use candle_core::{DType, Tensor, TensorId};

use super::amx::{self, PackedB, PackedView, Products};
use super::blas::Operand;

/// Fewer rows than this read a packed weight's f32 original instead (the few-row kernels win
/// below it: `amx::tests::few_rows_speed`).
pub const MIN_ROWS: usize = 8;

/// A weight's packed forms, each made when first read.
#[derive(Debug)]
pub struct PackedWeight {
    /// The tensor they are made from.
    id: TensorId,
    /// The layout and (in, out) of the first form made: every later read must agree.
    shape: OnceLock<(bool, usize, usize)>,
    forward: OnceLock<PackedB>,
    backward: OnceLock<PackedB>,
}

impl PackedWeight {
    /// The packed forms of `weight`, which the caller knows never changes: shared with every
    /// other holder of the same tensor. `None` unless it is a contiguous 2-D f32 matrix on the
    /// CPU outside any gradient graph.
    pub fn of(weight: &Tensor) -> Option<Arc<Self>> {
        let fits = weight.device().is_cpu()
            && weight.dtype() == DType::F32
            && weight.rank() == 2
            && weight.is_contiguous()
            && !weight.track_op();
        if !fits {
            return None;
        }
        static REGISTRY: Mutex<Vec<(TensorId, Weak<PackedWeight>)>> = Mutex::new(Vec::new());
        let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = registry.iter().find(|(id, _)| *id == weight.id()).and_then(|(_, p)| p.upgrade()) {
            return Some(p);
        }
        registry.retain(|(_, p)| p.strong_count() > 0);
        let p = Arc::new(Self {
            id: weight.id(),
            shape: OnceLock::new(),
            forward: OnceLock::new(),
            backward: OnceLock::new(),
        });
        registry.push((weight.id(), Arc::downgrade(&p)));
        Some(p)
    }

    /// Whether these are `weight`'s forms, and bf16 products are chosen: when to read them.
    pub fn serves(&self, weight: &Tensor) -> bool {
        self.id == weight.id() && amx::products() == Products::Bf16
    }

    /// B of the forward product, (in, out): `w` is the weight's data, (out, in) as HF stores it
    /// or (in, out) when `in_out`. Every call for one weight must pass the same data.
    pub fn forward(&self, w: &[f32], in_out: bool, (i, o): (usize, usize)) -> PackedView<'_> {
        self.check(w, in_out, (i, o));
        let b = if in_out { rows(w, o) } else { columns(w, i) };
        made(&self.forward, || PackedB::new(b, i, o)).view()
    }

    /// B of the input gradient's product, (out, in): `dy W` for HF's layout, `dy W^T` for
    /// Conv1D's.
    pub fn backward(&self, w: &[f32], in_out: bool, (i, o): (usize, usize)) -> PackedView<'_> {
        self.check(w, in_out, (i, o));
        let b = if in_out { columns(w, o) } else { rows(w, i) };
        made(&self.backward, || PackedB::new(b, o, i)).view()
    }

    /// One tensor read as two layouts (a Conv1D layer and an HF one sharing it) would give a
    /// form of the wrong shape: refused.
    fn check(&self, w: &[f32], in_out: bool, (i, o): (usize, usize)) {
        assert_eq!(w.len(), i * o, "packed weight: {} values for ({i}, {o})", w.len());
        let first = *self.shape.get_or_init(|| (in_out, i, o));
        assert_eq!(first, (in_out, i, o), "packed weight read as two layouts");
    }

    /// Bytes held by the forms made so far.
    pub fn bytes(&self) -> usize {
        [&self.forward, &self.backward].iter().filter_map(|p| p.get()).map(PackedB::bytes).sum()
    }
}

/// The cell's form, made by `make` if it has none yet. Not `OnceLock::get_or_init`: packing
/// runs on rayon's threads, and a thread waiting for them may take up other queued work, such
/// as a second sampling call on the same model (`rayon::scope` in `sample.rs`) asking for this
/// very form; initialising a `OnceLock` from within its own initialiser deadlocks. Here two
/// callers may both pack; the first to finish is kept.
fn made(cell: &OnceLock<PackedB>, make: impl FnOnce() -> PackedB) -> &PackedB {
    if let Some(p) = cell.get() {
        return p;
    }
    let _ = cell.set(make());
    cell.get().expect("set above, by this caller or another")
}

/// Row-major data with rows of `cols` values, as a B operand.
fn rows(data: &[f32], cols: usize) -> Operand<'_, f32> {
    Operand { data, row_stride: cols, col_stride: 1 }
}

/// Row-major data with rows of `k` values, read transposed (its rows are B's columns).
fn columns(data: &[f32], k: usize) -> Operand<'_, f32> {
    Operand { data, row_stride: 1, col_stride: k }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A form asked for again while it is being made, on the same thread (what a rayon
    /// thread waiting inside the packing does when it picks up another sampling call's work):
    /// `OnceLock::get_or_init` deadlocks here; `made` packs twice and keeps the first done.
    #[test]
    fn a_form_asked_for_while_it_is_made_does_not_deadlock() {
        let (tx, rx) = std::sync::mpsc::channel();
        // On a thread of its own, so a deadlock fails the test instead of hanging it.
        std::thread::spawn(move || {
            let w: Vec<f32> = (0..64 * 32).map(|i| i as f32 / 100.0).collect();
            let b = Operand { data: &w[..], row_stride: 32, col_stride: 1 };
            let cell = OnceLock::new();
            let outer = made(&cell, || {
                let inner = made(&cell, || PackedB::new(b, 64, 32));
                assert_eq!(inner.view().dims(), (64, 32));
                PackedB::new(b, 64, 32)
            });
            tx.send(outer.view().dims()).unwrap();
        });
        let dims = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("deadlocked");
        assert_eq!(dims, (64, 32));
    }
}
