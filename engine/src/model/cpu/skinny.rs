//! Products with few rows (decoding), read straight from the weight's HF (out, in) layout.
//!
//! A sampling step multiplies one activation row per sequence by every weight. BLAS packs the
//! weight into panels on each call: at 32 rows the weight is read once either way, so packing
//! only adds a second pass over it (OpenBLAS's `sgemm_incopy` was a fifth of batch-32 decoding,
//! its threads waiting on each other's panels another sixth: 57 GFLOP/s). Here every output is a
//! dot product of an activation row with a weight row, both contiguous: a block of `NB` weight
//! rows stays in L1 while the activation rows pass over it `MB` at a time, `NB x MB` sums in
//! registers (AVX-512, or AVX2 + FMA; detected at run time), and the output columns are split
//! across rayon's threads. CPUs with neither keep BLAS (`matmul` returns `None`). The same
//! kernels read f16 weights (`half.rs`'s frozen copies), widened to f32 as they load (F16C).

use rayon::prelude::*;

/// Up to this many rows a product takes this path; beyond it BLAS's packing pays for itself.
pub const MAX_ROWS: usize = 64;

/// The instruction sets this module has kernels for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
}

/// Whether products take these kernels at all (`APL_SKINNY=off`, or `set_enabled`, keeps BLAS:
/// for comparisons).
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the kernels on or off for the whole process (`apl bench --benches matmul` compares).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The best kernel this CPU runs (detected once; `APL_SKINNY=avx2` caps it at AVX2), or `None`
/// when the kernels are off or the CPU has neither.
pub fn isa() -> Option<Isa> {
    static ISA: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
    let isa = *ISA.get_or_init(|| {
        let chosen = std::env::var("APL_SKINNY").unwrap_or_default().trim().to_ascii_lowercase();
        if chosen == "off" {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if chosen != "avx2"
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                return Some(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Some(Isa::Avx2);
            }
        }
        None
    });
    isa.filter(|_| ENABLED.load(std::sync::atomic::Ordering::Relaxed))
}

/// `y (m, n) = x (m, k) @ w^T`: row `i` of `x` is `x[i * xs..][..k]`, output `j`'s weights are
/// `w[j * ws..][..k]` (a row of an HF `nn.Linear` weight). `None` when the CPU has no kernel.
pub fn matmul(m: usize, n: usize, k: usize, x: &[f32], xs: usize, w: &[f32], ws: usize) -> Option<Vec<f32>> {
    isa().map(|isa| matmul_with(isa, m, n, k, x, xs, Weights::F32(w), ws))
}

/// [`matmul`] with f16 weights (their bits: an f16 decoding copy, `half.rs`), widened to f32 as
/// they are loaded; `None` when the CPU has no kernel for them (AVX-512, or AVX2 with F16C).
pub fn matmul_f16(m: usize, n: usize, k: usize, x: &[f32], xs: usize, w: &[u16], ws: usize) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    let f16c = std::arch::is_x86_feature_detected!("f16c");
    #[cfg(not(target_arch = "x86_64"))]
    let f16c = false;
    isa().filter(|_| f16c).map(|isa| matmul_with(isa, m, n, k, x, xs, Weights::F16(w), ws))
}

/// The weights of a product, as rows of `ws` elements.
#[derive(Debug, Clone, Copy)]
pub enum Weights<'a> {
    F32(&'a [f32]),
    /// f16, as bits.
    F16(&'a [u16]),
}

impl Weights<'_> {
    fn len(&self) -> usize {
        match self {
            Weights::F32(w) => w.len(),
            Weights::F16(w) => w.len(),
        }
    }
}

/// [`matmul`] with a given kernel (tests run both where the CPU has both).
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(isa: Isa, m: usize, n: usize, k: usize, x: &[f32], xs: usize, w: Weights, ws: usize) -> Vec<f32> {
    if m == 0 || n == 0 || k == 0 {
        return vec![0f32; m * n];
    }
    // Every output is written by its first run over k (`add` false): no zeroing.
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    assert!((m - 1) * xs + k <= x.len() && (n - 1) * ws + k <= w.len(), "skinny matmul out of bounds");
    #[cfg(target_arch = "x86_64")]
    {
        if isa == Isa::Avx512 {
            assert!(
                std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl"),
                "AVX-512 kernel on a CPU without it"
            );
        } else {
            assert!(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"));
        }
        if matches!(w, Weights::F16(_)) {
            assert!(std::arch::is_x86_feature_detected!("f16c"), "f16 weights on a CPU without F16C");
        }
        // A few tasks per thread, each a run of whole 16-column groups.
        let threads = rayon::current_num_threads().max(1);
        let chunk = n.div_ceil(threads * 4).next_multiple_of(16).max(16);
        let out = OutPtr(y.as_mut_ptr());
        (0..n.div_ceil(chunk)).into_par_iter().for_each(|c| {
            let j0 = c * chunk;
            let cols = chunk.min(n - j0);
            let out = &out;
            // SAFETY: the bounds were checked above; each task writes only its own columns
            // j0..j0 + cols of every output row; the features were checked for `isa`.
            unsafe {
                let (xp, yp) = (x.as_ptr(), out.0.add(j0));
                match (isa, w) {
                    (Isa::Avx512, Weights::F32(w)) => {
                        avx512::columns(m, cols, k, xp, xs, w.as_ptr().add(j0 * ws), ws, yp, n)
                    }
                    (Isa::Avx2, Weights::F32(w)) => {
                        avx2::columns(m, cols, k, xp, xs, w.as_ptr().add(j0 * ws), ws, yp, n)
                    }
                    (Isa::Avx512, Weights::F16(w)) => {
                        avx512_h::columns(m, cols, k, xp, xs, w.as_ptr().add(j0 * ws), ws, yp, n)
                    }
                    (Isa::Avx2, Weights::F16(w)) => {
                        avx2_h::columns(m, cols, k, xp, xs, w.as_ptr().add(j0 * ws), ws, yp, n)
                    }
                }
            }
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, x, xs, w, ws);
        unreachable!("no skinny kernels on this architecture");
    }
    // SAFETY: the tasks above wrote all m x n outputs.
    unsafe { y.set_len(m * n) };
    y
}

/// `y[i * ys + j] = x_i . w_j` for `i < m`, `j < n` on the calling thread, any `m` (for kernels
/// that split work themselves, like `attend.rs`); plain loops when `isa` is `None`.
#[allow(clippy::too_many_arguments)]
pub fn product_serial(
    isa: Option<Isa>,
    (m, n, k): (usize, usize, usize),
    x: &[f32],
    xs: usize,
    w: &[f32],
    ws: usize,
    y: &mut [f32],
    ys: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * xs + k <= x.len() && (n - 1) * ws + k <= w.len() && (m - 1) * ys + n <= y.len(),
        "skinny product out of bounds"
    );
    if k == 0 {
        (0..m).for_each(|i| y[i * ys..][..n].fill(0.0));
        return;
    }
    match isa {
        // SAFETY: bounds checked above; `isa` comes from `isa()`, which detected the features.
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx512) => unsafe { avx512::columns(m, n, k, x.as_ptr(), xs, w.as_ptr(), ws, y.as_mut_ptr(), ys) },
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx2) => unsafe { avx2::columns(m, n, k, x.as_ptr(), xs, w.as_ptr(), ws, y.as_mut_ptr(), ys) },
        _ => {
            for i in 0..m {
                for j in 0..n {
                    let (xi, wj) = (&x[i * xs..][..k], &w[j * ws..][..k]);
                    y[i * ys + j] = xi.iter().zip(wj).map(|(a, b)| a * b).sum();
                }
            }
        }
    }
}

/// The output buffer, shared by tasks that write disjoint columns.
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements and the buffer outlives the parallel loop.
unsafe impl Sync for OutPtr {}

/// Longest run of `k` summed per pass: a block of `NB` weight rows this long stays in L1 while
/// every activation row passes over it; longer rows (the MLP's down projection) are summed in
/// runs of `K_RUN`, each added to the outputs.
const K_WHOLE: usize = 768;
const K_RUN: usize = 512;

/// One kernel set per instruction set: `block::<NB_, MB_>` sums an `MB_ x NB_` block of outputs
/// over a run of `k`, `full_block` is its hot `NB x MB` form, and `columns` tiles `m x cols`
/// outputs with them.
macro_rules! kernels {
    (
        $isa:ident, $ops:ident, $feature:literal, $wt:ty, nb $nb:literal, mb $mb:literal,
        loads [$($j:literal $v:ident),*],
        rows [$($i:literal [$(($g:literal: $w0:ident $w1:ident $w2:ident $w3:ident => $a0:ident $a1:ident $a2:ident $a3:ident))*]),*]
    ) => {
        #[cfg(target_arch = "x86_64")]
        mod $isa {
            use super::simd_ops::$ops::*;
            use super::{K_RUN, K_WHOLE};

            /// Weight rows held per block, and activation rows swept over them at a time.
            const NB: usize = $nb;
            const MB: usize = $mb;

            /// `y[i * ys + j] (+)= x_i . w_j` over `k` for `i < MB_`, `j < NB_` (`add`: onto
            /// what `y` holds).
            ///
            /// # Safety
            ///
            /// `x` holds `MB_` rows of `k` elements `xs` apart, `w` `NB_` rows of `k` elements
            /// `ws` apart, `y` `MB_` rows of `NB_` outputs `ys` apart; the CPU has `$feature`.
            #[target_feature(enable = $feature)]
            #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
            unsafe fn block<const NB_: usize, const MB_: usize>(
                k: usize,
                x: *const f32,
                xs: usize,
                w: *const $wt,
                ws: usize,
                y: *mut f32,
                ys: usize,
                add: bool,
            ) {
                // SAFETY (whole body): the caller guarantees MB_ rows of x and NB_ rows of w of
                // k elements each, and MB_ x NB_ outputs at y; loads past k are masked.
                unsafe {
                    let mut acc = [[zero(); NB_]; MB_];
                    let mut kk = 0;
                    // Index loops over constant bounds: unrolled, with the sums in registers.
                    while kk < k {
                        let n = (k - kk).min(LANES);
                        let mut wv = [zero(); NB_];
                        // Whole vectors but at the end of k (a partial f16 load goes through a
                        // buffer on the stack).
                        let whole = n == LANES;
                        for j in 0..NB_ {
                            let p = w.add(j * ws + kk);
                            wv[j] = if whole { wload(p) } else { wload_partial(p, n) };
                        }
                        for i in 0..MB_ {
                            let p = x.add(i * xs + kk);
                            let xv = if whole { load(p) } else { load_partial(p, n) };
                            for j in 0..NB_ {
                                acc[i][j] = fma(xv, wv[j], acc[i][j]);
                            }
                        }
                        kk += LANES;
                    }
                    for (i, row) in acc.iter().enumerate() {
                        let yi = y.add(i * ys);
                        let mut fours = row.chunks_exact(4);
                        for (g, f) in fours.by_ref().enumerate() {
                            sum4(f[0], f[1], f[2], f[3], yi.add(4 * g), add);
                        }
                        let done = NB_ / 4 * 4;
                        for (j, a) in fours.remainder().iter().enumerate() {
                            let o = yi.add(done + j);
                            *o = if add { *o + sum(*a) } else { sum(*a) };
                        }
                    }
                }
            }

            /// `block::<NB, MB>` for `k` a multiple of `LANES`, which almost all the work goes
            /// through: each sum a variable of its own (LLVM spilled the generic form's array of
            /// sums to the stack). It also asks for one row of the weights summed next (`pf`,
            /// `k` long), so that they are on their way from memory while this block is summed.
            ///
            /// # Safety
            ///
            /// As `block` with `NB_ = NB`, `MB_ = MB` and `k` a multiple of `LANES`; `pf` is
            /// only a prefetch hint and may point anywhere.
            #[target_feature(enable = $feature)]
            #[inline(never)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn full_block(
                k: usize,
                x: *const f32,
                xs: usize,
                w: *const $wt,
                ws: usize,
                y: *mut f32,
                ys: usize,
                add: bool,
                pf: *const $wt,
            ) {
                // SAFETY: as for `block` with NB_ = NB, MB_ = MB and k a multiple of LANES;
                // prefetches are hints, which never fault.
                unsafe {
                    $($(let (mut $a0, mut $a1, mut $a2, mut $a3) = (zero(), zero(), zero(), zero());)*)*
                    let mut kk = 0;
                    while kk < k {
                        prefetch(pf.wrapping_add(kk));
                        $(let $v = wload(w.add($j * ws + kk));)*
                        $(
                            let xv = load(x.add($i * xs + kk));
                            $(
                                $a0 = fma(xv, $w0, $a0);
                                $a1 = fma(xv, $w1, $a1);
                                $a2 = fma(xv, $w2, $a2);
                                $a3 = fma(xv, $w3, $a3);
                            )*
                        )*
                        kk += LANES;
                    }
                    $($(sum4($a0, $a1, $a2, $a3, y.add($i * ys + 4 * $g), add);)*)*
                }
            }

            /// Every row of `x` against `NB_` weight rows over one run of `k`; `pf`: the first
            /// of the `NB` weight rows summed after these (`full_block` prefetches one per pass).
            ///
            /// # Safety
            ///
            /// As `block`, with `m` rows of `x` and `y`.
            #[target_feature(enable = $feature)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn panel<const NB_: usize>(
                m: usize,
                k: usize,
                x: *const f32,
                xs: usize,
                w: *const $wt,
                ws: usize,
                y: *mut f32,
                ys: usize,
                add: bool,
                pf: *const $wt,
            ) {
                // SAFETY: as for `block`, over m rows of x and y.
                unsafe {
                    let mut i = 0;
                    while i + MB <= m {
                        let (xi, yi) = (x.add(i * xs), y.add(i * ys));
                        if NB_ == NB && k % LANES == 0 {
                            let pf = pf.wrapping_add((i / MB) % NB * ws);
                            full_block(k, xi, xs, w, ws, yi, ys, add, pf);
                        } else {
                            block::<NB_, MB>(k, xi, xs, w, ws, yi, ys, add);
                        }
                        i += MB;
                    }
                    let (x, y) = (x.add(i * xs), y.add(i * ys));
                    match m - i {
                        0 => {}
                        1 => block::<NB_, 1>(k, x, xs, w, ws, y, ys, add),
                        2 => block::<NB_, 2>(k, x, xs, w, ws, y, ys, add),
                        3 => block::<NB_, 3>(k, x, xs, w, ws, y, ys, add),
                        r => unreachable!("{r} rows left with blocks of {MB}"),
                    }
                }
            }

            /// `y[i * ys + j] = x_i . w_j` for `i < m`, `j < cols`.
            ///
            /// # Safety
            ///
            /// `x` holds `m` rows of `k` elements `xs` apart, `w` `cols` rows of `k` elements `ws`
            /// apart, `y` `m` rows of `cols` outputs `ys` apart; the CPU has `$feature`.
            #[target_feature(enable = $feature)]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn columns(
                m: usize,
                cols: usize,
                k: usize,
                x: *const f32,
                xs: usize,
                w: *const $wt,
                ws: usize,
                y: *mut f32,
                ys: usize,
            ) {
                let run = if k <= K_WHOLE { k } else { K_RUN };
                // SAFETY: as for `block`, over cols weight rows and output columns, k in runs.
                unsafe {
                    let mut j = 0;
                    while j < cols {
                        let nb = (cols - j).min(NB);
                        let (wj, yj) = (w.add(j * ws), y.add(j));
                        let mut k0 = 0;
                        while k0 < k {
                            let len = run.min(k - k0);
                            let (xk, wk, add) = (x.add(k0), wj.add(k0), k0 > 0);
                            // The weights summed next: the same rows' next run, or the next rows.
                            let pf = if k0 + len < k { wk.wrapping_add(len) } else { wj.wrapping_add(NB * ws) };
                            #[allow(unreachable_patterns)] // NB is one of the small counts
                            match nb {
                                NB => panel::<NB>(m, len, xk, xs, wk, ws, yj, ys, add, pf),
                                1 => panel::<1>(m, len, xk, xs, wk, ws, yj, ys, add, pf),
                                2 => panel::<2>(m, len, xk, xs, wk, ws, yj, ys, add, pf),
                                3 => panel::<3>(m, len, xk, xs, wk, ws, yj, ys, add, pf),
                                4 => panel::<4>(m, len, xk, xs, wk, ws, yj, ys, add, pf),
                                5 => panel::<5>(m, len, xk, xs, wk, ws, yj, ys, add, pf),
                                6 => panel::<6>(m, len, xk, xs, wk, ws, yj, ys, add, pf),
                                7 => panel::<7>(m, len, xk, xs, wk, ws, yj, ys, add, pf),
                                r => unreachable!("{r} columns in blocks of {NB}"),
                            }
                            k0 += len;
                        }
                        j += nb;
                    }
                }
            }
        }
    };
}

// AVX-512: 8 weight rows x 2 activation rows, 16 sums and 8 weight vectors in registers (of 32).
// Per 16 FMAs, 10 loads: the weight block sits in L1 while the activations stream from L2 at
// half a byte per FMA lane.
kernels!(avx512, avx512, "avx512f,avx512vl", f32, nb 8, mb 2,
    loads [0 v0, 1 v1, 2 v2, 3 v3, 4 v4, 5 v5, 6 v6, 7 v7],
    rows [
        0 [(0: v0 v1 v2 v3 => a00 a01 a02 a03) (1: v4 v5 v6 v7 => a04 a05 a06 a07)],
        1 [(0: v0 v1 v2 v3 => a10 a11 a12 a13) (1: v4 v5 v6 v7 => a14 a15 a16 a17)]
    ]
);
// AVX2: 4 x 2 with 8 sums and 4 weight vectors (of 16 registers).
kernels!(avx2, avx2, "avx2,fma", f32, nb 4, mb 2,
    loads [0 v0, 1 v1, 2 v2, 3 v3],
    rows [0 [(0: v0 v1 v2 v3 => a00 a01 a02 a03)], 1 [(0: v0 v1 v2 v3 => a10 a11 a12 a13)]]
);
// The same with f16 weights (an f16 decoding copy, `half.rs`), widened to f32 as they load.
kernels!(avx512_h, avx512_h, "avx512f,avx512vl,f16c", u16, nb 8, mb 2,
    loads [0 v0, 1 v1, 2 v2, 3 v3, 4 v4, 5 v5, 6 v6, 7 v7],
    rows [
        0 [(0: v0 v1 v2 v3 => a00 a01 a02 a03) (1: v4 v5 v6 v7 => a04 a05 a06 a07)],
        1 [(0: v0 v1 v2 v3 => a10 a11 a12 a13) (1: v4 v5 v6 v7 => a14 a15 a16 a17)]
    ]
);
kernels!(avx2_h, avx2_h, "avx2,fma,f16c", u16, nb 4, mb 2,
    loads [0 v0, 1 v1, 2 v2, 3 v3],
    rows [0 [(0: v0 v1 v2 v3 => a00 a01 a02 a03)], 1 [(0: v0 v1 v2 v3 => a10 a11 a12 a13)]]
);

/// The vector operations each kernel set is written in.
///
/// # Safety
///
/// Every `unsafe fn` here reads (or, `sum4`, writes) through a raw pointer: `load` and `wload`
/// need `LANES` readable elements at `p`, the `_partial` forms `n <= LANES`, and `sum4` four
/// writable (and, with `add`, readable) `f32` at `y`. The kernels that call them keep those
/// bounds (see `block`).
#[cfg(target_arch = "x86_64")]
mod simd_ops {
    pub mod avx512 {
        use std::arch::x86_64::*;
        // Each helper is compiled for its kernels' features, so that it inlines into them.
        pub const LANES: usize = 16;

        #[inline]
        #[target_feature(enable = "avx512f,avx512vl")]
        pub fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        /// # Safety: the pointer's bounds of the module's `# Safety`.
        #[inline]
        #[target_feature(enable = "avx512f,avx512vl")]
        pub unsafe fn load(p: *const f32) -> __m512 {
            // SAFETY: the caller gives the pointer its bounds (the module's `# Safety`).
            unsafe { _mm512_loadu_ps(p) }
        }
        /// # Safety: the pointer's bounds of the module's `# Safety`.
        /// The first `n <= 16` elements at `p`, zeros after.
        #[inline]
        #[target_feature(enable = "avx512f,avx512vl")]
        pub unsafe fn load_partial(p: *const f32, n: usize) -> __m512 {
            // SAFETY: the caller gives the pointer its bounds (the module's `# Safety`).
            unsafe { _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, p) }
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512vl")]
        pub fn prefetch<T>(p: *const T) {
            _mm_prefetch::<_MM_HINT_T0>(p.cast());
        }
        /// # Safety: the pointer's bounds of the module's `# Safety`.
        /// Weights in f32: loaded as they are.
        #[inline]
        #[target_feature(enable = "avx512f,avx512vl")]
        pub unsafe fn wload(p: *const f32) -> __m512 {
            // SAFETY: the caller gives the pointer its bounds (the module's `# Safety`).
            unsafe { load(p) }
        }
        /// # Safety: the pointer's bounds of the module's `# Safety`.
        #[inline]
        #[target_feature(enable = "avx512f,avx512vl")]
        pub unsafe fn wload_partial(p: *const f32, n: usize) -> __m512 {
            // SAFETY: the caller gives the pointer its bounds (the module's `# Safety`).
            unsafe { load_partial(p, n) }
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512vl")]
        pub fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512vl")]
        pub fn sum(a: __m512) -> f32 {
            _mm512_reduce_add_ps(a)
        }
        /// # Safety: the pointer's bounds of the module's `# Safety`.
        /// The four sums of `a..d` stored at `y[0..4]`, or added to them.
        #[inline]
        #[target_feature(enable = "avx512f,avx512vl")]
        pub unsafe fn sum4(a: __m512, b: __m512, c: __m512, d: __m512, y: *mut f32, add: bool) {
            // SAFETY: the caller gives the pointer its bounds (the module's `# Safety`).
            unsafe {
                let half = |v: __m512| {
                    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
                    _mm256_add_ps(_mm512_castps512_ps256(v), hi)
                };
                super::avx2::sum4(half(a), half(b), half(c), half(d), y, add)
            }
        }
    }

    pub mod avx2 {
        use std::arch::x86_64::*;
        pub const LANES: usize = 8;

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        pub fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        /// # Safety: the pointer's bounds of the module's `# Safety`.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn load(p: *const f32) -> __m256 {
            // SAFETY: the caller gives the pointer its bounds (the module's `# Safety`).
            unsafe { _mm256_loadu_ps(p) }
        }
        /// # Safety: the pointer's bounds of the module's `# Safety`.
        /// The first `n <= 8` elements at `p`, zeros after.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn load_partial(p: *const f32, n: usize) -> __m256 {
            // SAFETY: the caller gives the pointer its bounds (the module's `# Safety`).
            unsafe {
                let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lane);
                _mm256_maskload_ps(p, mask)
            }
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        pub fn prefetch<T>(p: *const T) {
            _mm_prefetch::<_MM_HINT_T0>(p.cast());
        }
        /// # Safety: the pointer's bounds of the module's `# Safety`.
        /// Weights in f32: loaded as they are.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn wload(p: *const f32) -> __m256 {
            // SAFETY: the caller gives the pointer its bounds (the module's `# Safety`).
            unsafe { load(p) }
        }
        /// # Safety: the pointer's bounds of the module's `# Safety`.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn wload_partial(p: *const f32, n: usize) -> __m256 {
            // SAFETY: the caller gives the pointer its bounds (the module's `# Safety`).
            unsafe { load_partial(p, n) }
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        pub fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        pub fn sum(a: __m256) -> f32 {
            let q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
            _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1)))
        }
        /// # Safety: the pointer's bounds of the module's `# Safety`.
        /// The four sums of `a..d` stored at `y[0..4]`, or added to them.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn sum4(a: __m256, b: __m256, c: __m256, d: __m256, y: *mut f32, add: bool) {
            // SAFETY: the caller gives the pointer its bounds (the module's `# Safety`).
            unsafe {
                // hadd pairs neighbours within each 128-bit half: after two rounds each half
                // holds partial sums of (a, b, c, d); the halves are then added.
                let h = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
                let q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
                let q = if add { _mm_add_ps(q, _mm_loadu_ps(y)) } else { q };
                _mm_storeu_ps(y, q)
            }
        }
    }

    /// AVX-512 with f16 weights (as their bits), widened to f32 on load.
    pub mod avx512_h {
        pub use super::avx512::{LANES, fma, load, load_partial, prefetch, sum, sum4, zero};
        use std::arch::x86_64::*;

        /// # Safety: the pointer's bounds of the module's `# Safety`.
        #[inline]
        #[target_feature(enable = "avx512f,avx512vl,f16c")]
        pub unsafe fn wload(p: *const u16) -> __m512 {
            // SAFETY: the caller gives the pointer its bounds (the module's `# Safety`).
            unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
        }
        /// # Safety: the pointer's bounds of the module's `# Safety`.
        /// The first `n <= 16` weights at `p`, zeros after.
        #[inline]
        #[target_feature(enable = "avx512f,avx512vl,f16c")]
        pub unsafe fn wload_partial(p: *const u16, n: usize) -> __m512 {
            let mut buf = [0u16; LANES];
            // SAFETY: the caller gives the pointer its bounds (the module's `# Safety`).
            unsafe {
                std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
                wload(buf.as_ptr())
            }
        }
    }

    /// AVX2 with f16 weights, widened to f32 on load (F16C).
    pub mod avx2_h {
        pub use super::avx2::{LANES, fma, load, load_partial, prefetch, sum, sum4, zero};
        use std::arch::x86_64::*;

        /// # Safety: the pointer's bounds of the module's `# Safety`.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn wload(p: *const u16) -> __m256 {
            // SAFETY: the caller gives the pointer its bounds (the module's `# Safety`).
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
        }
        /// # Safety: the pointer's bounds of the module's `# Safety`.
        /// The first `n <= 8` weights at `p`, zeros after.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn wload_partial(p: *const u16, n: usize) -> __m256 {
            let mut buf = [0u16; LANES];
            // SAFETY: the caller gives the pointer its bounds (the module's `# Safety`).
            unsafe {
                std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
                wload(buf.as_ptr())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Every edge of the tiling (rows and columns short of a block, k short of a vector,
    /// strides wider than k) on every kernel this CPU runs, against a plain f64 sum.
    #[test]
    fn matches_plain_dot_products_on_every_edge() {
        let isas: Vec<Isa> = match isa() {
            Some(Isa::Avx512) => vec![Isa::Avx512, Isa::Avx2],
            Some(Isa::Avx2) => vec![Isa::Avx2],
            None => return,
        };
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 7, 5),
            (2, 5, 16),
            (3, 9, 17),
            (6, 4, 8),
            (7, 13, 33),
            (13, 130, 97),
            (32, 64, 576),
            (64, 37, 40),
            (5, 19, 1536),
            (4, 9, 1100),
        ] {
            let (xs, ws) = (k + 3, k + 5);
            let x = fill(m * xs, 1 + m as u64);
            let w = fill(n * ws, 2 + n as u64);
            let want: Vec<f64> = (0..m * n)
                .map(|e| {
                    let (i, j) = (e / n, e % n);
                    (0..k).map(|l| x[i * xs + l] as f64 * w[j * ws + l] as f64).sum()
                })
                .collect();
            for &isa in &isas {
                let got = matmul_with(isa, m, n, k, &x, xs, Weights::F32(&w), ws);
                for (e, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (*g as f64 - w).abs() < 1e-4 * (1.0 + w.abs()),
                        "{isa:?} ({m}, {n}, {k}) at {e}: {g} vs {w}"
                    );
                }
            }
        }
        assert!(matmul_with(isas[0], 0, 3, 4, &[], 4, Weights::F32(&fill(12, 3)), 4).is_empty());
        // f16 weights, widened as they load: against the f64 sum over the rounded weights.
        if !std::arch::is_x86_feature_detected!("f16c") {
            return;
        }
        for &(m, n, k) in &[(1, 7, 5), (2, 9, 17), (8, 130, 576), (3, 19, 1100)] {
            let (xs, ws) = (k + 1, k + 2);
            let x = fill(m * xs, 5 + m as u64);
            let w: Vec<half::f16> = fill(n * ws, 6 + n as u64).into_iter().map(half::f16::from_f32).collect();
            let bits: Vec<u16> = w.iter().map(|h| h.to_bits()).collect();
            for &isa in &isas {
                let got = matmul_with(isa, m, n, k, &x, xs, Weights::F16(&bits), ws);
                for (e, g) in got.iter().enumerate() {
                    let (i, j) = (e / n, e % n);
                    let want: f64 = (0..k).map(|l| x[i * xs + l] as f64 * w[j * ws + l].to_f64()).sum();
                    assert!((*g as f64 - want).abs() < 1e-4 * (1.0 + want.abs()), "f16 {isa:?} ({m}, {n}, {k}) at {e}");
                }
            }
        }
        assert_eq!(matmul_with(isas[0], 2, 2, 0, &[], 0, Weights::F32(&[]), 0), vec![0.0; 4]);
    }
}
