//! Matrix products in bf16 on Intel AMX (Sapphire Rapids and later), accumulated in f32.
//!
//! A layer's product is most of a forward or backward pass, and f32 products on this project's
//! 2-core AVX-512 machines run near the cores' f32 peak (~200 GFLOP/s for both, through
//! OpenBLAS), as PyTorch's do: f32 cannot get much further ahead. AMX's `tdpbf16ps` multiplies
//! a 16x32 bf16 tile by a 32x16 one into 16x16 f32 sums in one instruction (2.6 TFLOP/s on one
//! core, measured). Operands are rounded to bf16 (8 bits of mantissa, round to nearest even)
//! as they are packed into tiles; the sums and the output stay f32, so the error is that of the
//! rounded inputs, reported by `apl bench --products bf16` as |Δ log p| against f32.
//!
//! Shaped for the loop's products (thousands of rows by a weight): both operands are packed
//! (B once, for a frozen weight) into tile order (A: 16 rows x 32 columns a tile; B: the
//! "VNNI" pairs of rows AMX reads, 16 pairs x 16 columns), padded to whole 32x32 blocks with
//! zeros. The kernel keeps a
//! 32x32 block of C in four tile registers over the whole inner dimension (one asm loop: the
//! compiler never sees the tile registers), and rayon's threads take (row group, column chunk)
//! tasks, the column chunk sized so its packed B stays in L2 while a row group's A is reused.
//! Each task configures the tiles on its thread and releases them when done.
//!
//! Used only where the CPU has AMX and Linux grants the tile state (`available`), for products
//! of at least `MIN_ROWS` rows, or from `packed::MIN_ROWS` rows by a frozen weight packed once
//! (`PackedB`, `packed.rs`: decoding's 32 or 64 rows a token); `products` chooses it for the
//! whole process.

use std::sync::atomic::{AtomicU8, Ordering};

use rayon::prelude::*;

use super::blas::Operand;

pub use apl_shared::settings::Products;

static PRODUCTS: AtomicU8 = AtomicU8::new(0);

/// Chooses the precision of every later product in this process.
pub fn set_products(p: Products) {
    PRODUCTS.store((p == Products::Bf16) as u8, Ordering::Relaxed);
}

/// The precision products are made in: `Bf16` only where it is both chosen and available.
pub fn products() -> Products {
    if PRODUCTS.load(Ordering::Relaxed) == 1 && available() { Products::Bf16 } else { Products::F32 }
}

/// Fewer rows than this stay f32 when B is packed per call (packing costs as much as a product
/// of ~16 rows).
pub const MIN_ROWS: usize = 64;

/// Whether this CPU and OS run AMX bf16 (checked once).
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid_count, _xgetbv};
    let (max, l1, l7) = (__cpuid_count(0, 0).eax, __cpuid_count(1, 0), __cpuid_count(7, 0));
    let osxsave = l1.ecx >> 27 & 1 == 1;
    let (amx_bf16, amx_tile) = (l7.edx >> 22 & 1 == 1, l7.edx >> 24 & 1 == 1);
    if max < 7 || !osxsave || !amx_bf16 || !amx_tile || !std::arch::is_x86_feature_detected!("avx512bf16") {
        return false;
    }
    // SAFETY: OSXSAVE is set, so `xgetbv` exists; XCR0 bits 17-18 are the tile state.
    let xcr0 = unsafe { _xgetbv(0) };
    if xcr0 & (0b11 << 17) != 0b11 << 17 {
        return false;
    }
    // Linux hands out the 8 KiB tile data state on request: ARCH_REQ_XCOMP_PERM for
    // XFEATURE_XTILEDATA (18), once per process.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    // SAFETY: arch_prctl with this code takes a feature number and touches no memory.
    let granted = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, 18 as libc::c_long) == 0 };
    if !granted {
        let e = std::io::Error::last_os_error();
        tracing::warn!("the CPU has AMX but Linux refused its tile state ({e}): products stay f32");
    }
    granted
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// f32 to bf16, rounding to nearest even (NaN stays a NaN).
#[inline]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// Elements of one packed tile (16 rows of 64 bytes).
const TILE: usize = 512;

/// `a (m, k)` in tiles of 16 rows x 32 columns: tile (row tile `it`, column chunk `kc`) at
/// `(it * kch + kc) * TILE`, rows of 32 values; zeros past `m` and `k`.
fn pack_a(a: Operand<f32>, m: usize, k: usize, row_tiles: usize, kch: usize) -> Vec<u16> {
    in_strips(row_tiles, kch, m, |it, rows, tiles| {
        if a.col_stride == 1 {
            for r in 0..rows {
                let row = &a.data[(it * 16 + r) * a.row_stride..][..k];
                for (kc, chunk) in row.chunks(32).enumerate() {
                    convert(chunk, &mut tiles[kc * TILE + r * 32..][..chunk.len()]);
                }
            }
        } else {
            // A transposed (a weight gradient's dy^T): rows of one column are adjacent.
            let mut buf = [0u16; 16];
            for l in 0..k {
                let col = &a.data[l * a.col_stride + it * 16 * a.row_stride..];
                if a.row_stride == 1 && rows == 16 {
                    convert(&col[..16], &mut buf);
                } else {
                    for (r, b) in buf[..rows].iter_mut().enumerate() {
                        *b = to_bf16(col[r * a.row_stride]);
                    }
                }
                let t = &mut tiles[(l / 32) * TILE + l % 32..];
                for (r, &b) in buf[..rows].iter().enumerate() {
                    t[r * 32] = b;
                }
            }
        }
    })
}

/// A zeroed buffer of `strips` strips of `kch` tiles, each strip (16 rows of A, or 16 columns
/// of B) filled on rayon's threads by `fill(strip, valid, tiles)`, `valid` its rows or columns
/// within `extent` (at least 1; strips past `extent` are padding and stay zero).
fn in_strips(strips: usize, kch: usize, extent: usize, fill: impl Fn(usize, usize, &mut [u16]) + Sync) -> Vec<u16> {
    let mut out = vec![0u16; strips * kch * TILE];
    out.par_chunks_mut(kch * TILE).enumerate().for_each(|(strip, tiles)| {
        let valid = extent.saturating_sub(strip * 16).min(16);
        if valid > 0 {
            fill(strip, valid, tiles);
        }
    });
    out
}

/// `b (k, n)` in AMX's pair layout, tiles of 16 row pairs x 16 columns: tile (column tile
/// `jt`, row chunk `kc`) at `(jt * kch + kc) * TILE`, where rows `2p` and `2p + 1` of column
/// `j` sit side by side at `p * 32 + j * 2`; zeros past `k` and `n`.
fn pack_b(b: Operand<f32>, k: usize, n: usize, col_tiles: usize, kch: usize) -> Vec<u16> {
    in_strips(col_tiles, kch, n, |jt, cols, tiles| {
        if b.row_stride == 1 {
            // B = W^T of an HF weight (out, in): each column of B is a row of W.
            let mut buf = [0u16; 32];
            for j in 0..cols {
                let column = &b.data[(jt * 16 + j) * b.col_stride..][..k];
                for (kc, chunk) in column.chunks(32).enumerate() {
                    convert(chunk, &mut buf[..chunk.len()]);
                    buf[chunk.len()..].fill(0);
                    let t = &mut tiles[kc * TILE + j * 2..];
                    for p in 0..16 {
                        t[p * 32] = buf[2 * p];
                        t[p * 32 + 1] = buf[2 * p + 1];
                    }
                }
            }
        } else {
            let (mut r0, mut r1) = ([0u16; 16], [0u16; 16]);
            for l in (0..k).step_by(2) {
                let t = &mut tiles[(l / 32) * TILE + (l % 32 / 2) * 32..];
                if cols == 16 && l + 1 < k && b.col_stride == 1 {
                    let at = |l: usize| &b.data[l * b.row_stride + jt * 16..][..16];
                    interleave(at(l), at(l + 1), &mut t[..32]);
                    continue;
                }
                let row = |l: usize, out: &mut [u16; 16]| {
                    if l < k && b.col_stride == 1 {
                        convert(&b.data[l * b.row_stride + jt * 16..][..cols], &mut out[..cols]);
                    } else if l < k {
                        for (j, o) in out[..cols].iter_mut().enumerate() {
                            *o = to_bf16(b.data[l * b.row_stride + (jt * 16 + j) * b.col_stride]);
                        }
                    } else {
                        out.fill(0);
                    }
                };
                row(l, &mut r0);
                row(l + 1, &mut r1);
                for j in 0..cols {
                    t[j * 2] = r0[j];
                    t[j * 2 + 1] = r1[j];
                }
            }
        }
    })
}

/// Two rows of 16 values to bf16, side by side by column: `out = [r0[0], r1[0], r0[1], ..]`
/// (AMX's pair layout).
fn interleave(r0: &[f32], r1: &[f32], out: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bf16") && std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has the features; 16 values in from each row, 32 out.
        unsafe { interleave16(r0, r1, out) };
        return;
    }
    for j in 0..16 {
        out[2 * j] = to_bf16(r0[j]);
        out[2 * j + 1] = to_bf16(r1[j]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn interleave16(r0: &[f32], r1: &[f32], out: &mut [u16]) {
    use std::arch::x86_64::*;
    assert!(r0.len() >= 16 && r1.len() >= 16 && out.len() >= 32);
    // Lane i of the result takes lane ORDER[i] of [r0 as bf16 (0..16), r1 as bf16 (16..32)].
    static ORDER: [u16; 32] = {
        let mut o = [0u16; 32];
        let mut j = 0;
        while j < 16 {
            o[2 * j] = j as u16;
            o[2 * j + 1] = 16 + j as u16;
            j += 1;
        }
        o
    };
    // SAFETY: the lengths were checked above.
    unsafe {
        let both: __m512i =
            std::mem::transmute(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(r1.as_ptr()), _mm512_loadu_ps(r0.as_ptr())));
        let order = _mm512_loadu_si512(ORDER.as_ptr().cast());
        _mm512_storeu_si512(out.as_mut_ptr().cast(), _mm512_permutexvar_epi16(order, both));
    }
}

/// `x` to bf16 into `out` (same length): 32 or 16 values at a time with AVX-512 BF16's
/// `vcvtne[2]ps2bf16` (round to nearest even, as `to_bf16`, except that subnormals become
/// zero, which `tdpbf16ps` does with them anyway), otherwise one by one.
fn convert(x: &[f32], out: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if x.len() == 32 && std::arch::is_x86_feature_detected!("avx512bf16") {
        // SAFETY: the CPU has the features; 32 values in and out.
        unsafe { convert32(x, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if x.len() == 16 && std::arch::is_x86_feature_detected!("avx512bf16") {
        // SAFETY: the CPU has the features; 16 values in and out.
        unsafe { convert16(x, out) };
        return;
    }
    for (o, &v) in out.iter_mut().zip(x) {
        *o = to_bf16(v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn convert16(x: &[f32], out: &mut [u16]) {
    use std::arch::x86_64::*;
    assert!(x.len() >= 16 && out.len() >= 16);
    // SAFETY: 16 values read and written (checked above).
    unsafe {
        let v: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(x.as_ptr())));
        _mm256_storeu_si256(out.as_mut_ptr().cast(), v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn convert32(x: &[f32], out: &mut [u16]) {
    use std::arch::x86_64::*;
    assert!(x.len() >= 32 && out.len() >= 32);
    // SAFETY: 32 values read and written (checked above).
    unsafe {
        let lo = _mm512_loadu_ps(x.as_ptr());
        let hi = _mm512_loadu_ps(x.as_ptr().add(16));
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(out.as_mut_ptr().cast(), v);
    }
}

/// The 64-byte tile configuration (palette 1): eight tiles of 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// A 32x32 block of C: `kch` steps of two A tiles by two B tiles into four f32 tiles, stored
/// at `c` (rows `ldc` bytes apart).
///
/// SAFETY: the tiles are configured on this thread (`CONFIG`); `a0`, `a1`, `b0`, `b1` each
/// point at `kch` consecutive packed tiles; `c` has 32 rows of 32 f32 at `ldc` bytes apart.
#[cfg(target_arch = "x86_64")]
unsafe fn block(kch: usize, a0: *const u16, a1: *const u16, b0: *const u16, b1: *const u16, c: *mut f32, ldc: usize) {
    // SAFETY: the caller's; the loop runs `kch` >= 1 times.
    unsafe {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a0} + {s}]",
            "tileloadd tmm6, [{b0} + {s}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s}]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {s}]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 1024",
            "add {a1}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {n}",
            "jnz 2b",
            "tilestored [{c0} + {ldc}], tmm0",
            "tilestored [{c0} + {ldc} + 64], tmm1",
            "tilestored [{c1} + {ldc}], tmm2",
            "tilestored [{c1} + {ldc} + 64], tmm3",
            a0 = inout(reg) a0 => _,
            a1 = inout(reg) a1 => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            n = inout(reg) kch => _,
            s = in(reg) 64usize,
            ldc = in(reg) ldc,
            c0 = in(reg) c,
            c1 = in(reg) c.byte_add(16 * ldc),
            options(nostack),
        );
    }
}

/// A pointer that may cross to rayon's threads: each task writes its own rows of C.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tasks write disjoint blocks of the buffer, which outlives them (rayon joins).
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}

impl Out {
    /// Through a method, so closures capture the whole (Send) wrapper, not its pointer field.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// `a (m, k) @ b (k, n)` into a new row-major (m, n) f32 buffer, operands rounded to bf16.
/// Callers check `available()` (else this panics).
pub fn matmul(m: usize, n: usize, k: usize, a: Operand<f32>, b: Operand<f32>) -> Vec<f32> {
    assert!(available(), "AMX products on a CPU without AMX");
    if m == 0 || n == 0 || k == 0 {
        return vec![0f32; m * n];
    }
    let kch = k.div_ceil(32);
    let (pa, pb) = rayon::join(|| pack_a(a, m, k, m.div_ceil(32) * 2, kch), || PackedB::new(b, k, n));
    product(m, &pa, pb.view())
}

/// `a (m, k) @ b` for a `b` packed beforehand ([`PackedB`]): only `a` is packed here.
/// Callers check `available()` (else this panics).
pub fn matmul_packed(m: usize, a: Operand<f32>, b: PackedView) -> Vec<f32> {
    assert!(available(), "AMX products on a CPU without AMX");
    if m == 0 || b.n == 0 || b.k == 0 {
        return vec![0f32; m * b.n];
    }
    let pa = pack_a(a, m, b.k, m.div_ceil(32) * 2, b.k.div_ceil(32));
    product(m, &pa, b)
}

/// A `b (k, n)` operand rounded to bf16 and packed once (AMX's pair layout, as `pack_b`), for
/// products with many `a`s: a frozen weight read at every decoding step, or by every training
/// step of the layers above it. Packing costs about what a product of ~16 rows does, so a
/// weight packed per call is what kept decoding's few rows off AMX.
#[derive(Debug)]
pub struct PackedB {
    k: usize,
    n: usize,
    data: Vec<u16>,
}

impl PackedB {
    pub fn new(b: Operand<f32>, k: usize, n: usize) -> Self {
        let (kch, col_tiles) = (k.div_ceil(32), n.div_ceil(32) * 2);
        Self { k, n, data: pack_b(b, k, n, col_tiles, kch) }
    }

    /// The whole operand.
    pub fn view(&self) -> PackedView<'_> {
        PackedView { data: &self.data, k: self.k, n: self.n, stride: self.k.div_ceil(32) }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 2
    }
}

/// Part of a [`PackedB`]: a range of its columns or of its rows (the output head's vocabulary
/// chunks, forward and backward), each starting at a multiple of 32.
#[derive(Debug, Clone, Copy)]
pub struct PackedView<'a> {
    /// From the view's first tile: its first column tile's tile at its first row chunk.
    data: &'a [u16],
    k: usize,
    n: usize,
    /// Tiles from one column tile to the next (the whole operand's row chunks).
    stride: usize,
}

impl<'a> PackedView<'a> {
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// Columns `c0..c0 + c`; `c0` a multiple of 32.
    pub fn columns(self, c0: usize, c: usize) -> Self {
        assert!(c0.is_multiple_of(32) && c0 + c <= self.n, "packed columns {c0}+{c} of {}", self.n);
        Self { data: &self.data[(c0 / 16) * self.stride * TILE..], n: c, ..self }
    }

    /// Rows `r0..r0 + r`; `r0` a multiple of 32, and `r` too unless the view ends at the last
    /// row (the rows after it in the last chunk would meet `a`'s zero padding: 0 x inf is NaN).
    pub fn rows(self, r0: usize, r: usize) -> Self {
        let fits = r0.is_multiple_of(32) && (r.is_multiple_of(32) || r0 + r == self.k) && r0 + r <= self.k;
        assert!(fits, "packed rows {r0}+{r} of {}", self.k);
        Self { data: &self.data[(r0 / 32) * TILE..], k: r, ..self }
    }
}

/// `pa` (packed by `pack_a` for `m` rows and `b.k` columns) by `b`, into a new (m, b.n) buffer.
fn product(m: usize, pa: &[u16], b: PackedView) -> Vec<f32> {
    let (n, kch) = (b.n, b.k.div_ceil(32));
    let (mb, nb) = (m.div_ceil(32), n.div_ceil(32));
    // Every block's tiles are in bounds (the pointer arithmetic below relies on it), and the
    // asm loop runs `kch` >= 1 times.
    assert!(mb > 0 && nb > 0 && kch > 0, "empty product {m}x{n}x{}", b.k);
    assert!(pa.len() >= mb * 2 * kch * TILE, "packed A too short");
    assert!(b.data.len() >= ((nb * 2 - 1) * b.stride + kch) * TILE, "packed B too short");
    // Every element is written by a block below; a memset of (rows, vocab) logits is not free.
    let mut c: Vec<std::mem::MaybeUninit<f32>> = Vec::with_capacity(m * n);
    // Column chunks whose packed B fits in ~256 KiB of L2; row groups of 8 blocks (256 rows).
    // A few rows (decoding) make few tasks: chunks are then cut so each thread gets several.
    let groups = mb.div_ceil(8);
    let want = (4 * rayon::current_num_threads()).div_ceil(groups);
    let chunk = (256 * 1024 / (kch * 2 * TILE * 2)).clamp(1, nb).min(nb.div_ceil(want).max(1));
    let chunks = nb.div_ceil(chunk);
    let out = Out(c.as_mut_ptr().cast::<f32>());
    (0..groups * chunks).into_par_iter().for_each(|task| {
        let out = out.ptr();
        let (g, ch) = (task % groups, task / groups);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AMX is available and its state granted (`available`); the configuration is
        // loaded on this thread before the blocks and released after them, with no call in
        // between that could run other AMX code on this thread. Tiles read are in bounds and
        // there is at least one block and one inner step (asserted above).
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
            let mut edge = [0f32; 32 * 32];
            for jb in ch * chunk..((ch + 1) * chunk).min(nb) {
                let b0 = b.data.as_ptr().add(jb * 2 * b.stride * TILE);
                let b1 = b0.add(b.stride * TILE);
                for ib in g * 8..((g + 1) * 8).min(mb) {
                    let a0 = pa.as_ptr().add(ib * 2 * kch * TILE);
                    let a1 = a0.add(kch * TILE);
                    let (rows, cols) = ((m - ib * 32).min(32), (n - jb * 32).min(32));
                    if rows == 32 && cols == 32 {
                        block(kch, a0, a1, b0, b1, out.add(ib * 32 * n + jb * 32), n * 4);
                    } else {
                        block(kch, a0, a1, b0, b1, edge.as_mut_ptr(), 32 * 4);
                        for r in 0..rows {
                            let dst = out.add((ib * 32 + r) * n + jb * 32);
                            std::ptr::copy_nonoverlapping(edge.as_ptr().add(r * 32), dst, cols);
                        }
                    }
                }
            }
            std::arch::asm!("tilerelease", options(nostack, nomem));
        }
    });
    // SAFETY: the blocks above wrote all m x n elements (whole blocks, and the valid part of
    // edge blocks), and rayon joined every task.
    unsafe {
        c.set_len(m * n);
        let mut c = std::mem::ManuallyDrop::new(c);
        Vec::from_raw_parts(c.as_mut_ptr().cast::<f32>(), c.len(), c.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(to_bf16(-2.0), 0xc000);
        assert!(f32::from_bits((to_bf16(f32::NAN) as u32) << 16).is_nan());
    }

    /// Against a product of the bf16-rounded operands in f64: the only difference left is
    /// the order of f32 sums. Every layout the linear op's forward and backward use, and
    /// sizes that are not multiples of the tiles.
    #[test]
    fn products_equal_the_rounded_operands_product() {
        if !available() {
            eprintln!("no AMX on this CPU: skipped");
            return;
        }
        let round = |x: f32| f32::from_bits((to_bf16(x) as u32) << 16) as f64;
        for (m, n, k) in [(64, 48, 40), (100, 33, 70), (257, 96, 576), (32, 1000, 31)] {
            // Room for the widest strides below.
            let a: Vec<f32> = (0..3 * m * k + 64).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
            let b: Vec<f32> = (0..3 * k * n + 64).map(|i| ((i * 104729) % 97) as f32 / 48.0 - 1.0).collect();
            // Row-major, transposed, padded rows, and neither stride 1 (the scalar paths).
            for (ars, acs) in [(k, 1), (1, m), (k + 3, 1), (2 * k, 2)] {
                for (brs, bcs) in [(n, 1), (1, k), (1, k + 5), (2, 2 * k)] {
                    let ao = Operand { data: &a[..], row_stride: ars, col_stride: acs };
                    let bo = Operand { data: &b[..], row_stride: brs, col_stride: bcs };
                    let got = matmul(m, n, k, ao, bo);
                    let mut err = 0f64;
                    for i in 0..m {
                        for j in 0..n {
                            let want: f64 =
                                (0..k).map(|l| round(a[i * ars + l * acs]) * round(b[l * brs + j * bcs])).sum();
                            err = err.max((got[i * n + j] as f64 - want).abs());
                        }
                    }
                    assert!(err < 1e-3, "{m}x{n}x{k} a {ars},{acs} b {brs},{bcs}: {err}");
                }
            }
        }
    }

    /// Element (`l`, `j`) of a packed B view, read back from the pair layout.
    fn packed_at(v: PackedView, l: usize, j: usize) -> u16 {
        let (jt, jj, kc, ll) = (j / 16, j % 16, l / 32, l % 32);
        v.data[(jt * v.stride + kc) * TILE + (ll / 2) * 32 + jj * 2 + ll % 2]
    }

    /// The packing and the views' offsets, read back element by element: on any CPU (the
    /// products above need AMX), for every operand layout the linear op and the head use, sizes
    /// that are not multiples of the tiles, and the padding zero.
    #[test]
    fn packing_and_views_read_back_on_any_cpu() {
        let (k, n) = (100, 70);
        let data: Vec<f32> = (0..3 * k * n + 64).map(|i| ((i * 104729) % 97) as f32 / 48.0 - 1.0).collect();
        for (rs, cs) in [(n, 1), (1, k), (1, k + 5), (2, 2 * k)] {
            let b = Operand { data: &data[..], row_stride: rs, col_stride: cs };
            let packed = PackedB::new(b, k, n);
            let want = |l: usize, j: usize| to_bf16(data[l * rs + j * cs]);
            let whole = packed.view();
            for l in 0..k.div_ceil(32) * 32 {
                for j in 0..n.div_ceil(32) * 32 {
                    let w = if l < k && j < n { want(l, j) } else { 0 };
                    assert_eq!(packed_at(whole, l, j), w, "b {rs},{cs} at ({l}, {j})");
                }
            }
            for (c0, c) in [(32, 38), (64, 6)] {
                let v = whole.columns(c0, c);
                assert_eq!(v.dims(), (k, c));
                for l in 0..k {
                    for j in 0..c {
                        assert_eq!(packed_at(v, l, j), want(l, c0 + j), "columns {c0}+{c} at ({l}, {j})");
                    }
                }
            }
            for (r0, r) in [(32, 32), (64, 36)] {
                let v = whole.rows(r0, r);
                assert_eq!(v.dims(), (r, n));
                for l in 0..r {
                    for j in 0..n {
                        assert_eq!(packed_at(v, l, j), want(r0 + l, j), "rows {r0}+{r} at ({l}, {j})");
                    }
                }
            }
        }
        // A: tiles of 16 rows x 32 columns, zeros past m and k.
        let (m, k) = (40, 70);
        for (rs, cs) in [(k, 1), (1, m), (k + 3, 1), (2 * k, 2)] {
            let a = Operand { data: &data[..], row_stride: rs, col_stride: cs };
            let (row_tiles, kch) = (m.div_ceil(32) * 2, k.div_ceil(32));
            let pa = pack_a(a, m, k, row_tiles, kch);
            for i in 0..row_tiles * 16 {
                for l in 0..kch * 32 {
                    let got = pa[((i / 16) * kch + l / 32) * TILE + (i % 16) * 32 + l % 32];
                    let w = if i < m && l < k { to_bf16(data[i * rs + l * cs]) } else { 0 };
                    assert_eq!(got, w, "a {rs},{cs} at ({i}, {l})");
                }
            }
        }
    }

    /// A weight packed once, then read whole and by column and row ranges (the head's
    /// vocabulary chunks), against the same products packed per call.
    #[test]
    fn packed_operands_and_their_views_equal_products_packed_per_call() {
        if !available() {
            eprintln!("no AMX on this CPU: skipped");
            return;
        }
        let (k, n) = (100, 200);
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 97) as f32 / 48.0 - 1.0).collect();
        // An HF weight (n, k) read as W^T, and the same weight as (n, k) rows for a backward.
        let wt = Operand { data: &w[..], row_stride: 1, col_stride: k };
        let wr = Operand { data: &w[..], row_stride: k, col_stride: 1 };
        let (fwd, bwd) = (PackedB::new(wt, k, n), PackedB::new(wr, n, k));
        for m in [1, 7, 32, 64, 100] {
            let x: Vec<f32> = (0..m * n).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
            let xo = |cols: usize| Operand { data: &x[..], row_stride: cols, col_stride: 1 };
            assert_eq!(matmul_packed(m, xo(k), fwd.view()), matmul(m, n, k, xo(k), wt), "m {m}");
            assert_eq!(matmul_packed(m, xo(n), bwd.view()), matmul(m, k, n, xo(n), wr), "m {m}");
            for (c0, c) in [(0, 64), (64, 40), (160, 40), (32, 168)] {
                let sub = Operand { data: &w[c0 * k..], row_stride: 1, col_stride: k };
                let want = matmul(m, c, k, xo(k), sub);
                assert_eq!(matmul_packed(m, xo(k), fwd.view().columns(c0, c)), want, "m {m} columns {c0}+{c}");
            }
            // Row ranges of whole chunks, or running to the last row.
            for (c0, c) in [(0, 64), (64, 96), (160, 40), (32, 168)] {
                let x_sub = Operand { data: &x[..], row_stride: c, col_stride: 1 };
                let w_sub = Operand { data: &w[c0 * k..], row_stride: k, col_stride: 1 };
                let want = matmul(m, k, c, x_sub, w_sub);
                assert_eq!(matmul_packed(m, x_sub, bwd.view().rows(c0, c)), want, "m {m} rows {c0}+{c}");
            }
        }
    }

    /// Its last chunk's other rows would meet `a`'s zero padding (0 x inf is NaN).
    #[test]
    #[should_panic(expected = "packed rows")]
    fn a_row_view_ending_inside_a_chunk_is_refused() {
        let w = vec![1f32; 100 * 64];
        let b = PackedB::new(Operand { data: &w, row_stride: 64, col_stride: 1 }, 100, 64);
        let _ = b.view().rows(32, 40);
    }

    /// A weight packed once against the f32 few-row kernel, rows as decoding has them:
    /// `cargo test --release -p apl-engine --lib amx::tests::few_rows -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn few_rows_speed() {
        if !available() {
            return;
        }
        for (k, n) in [(576, 576), (576, 1536), (1536, 576), (576, 49152)] {
            let w: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 97) as f32 / 48.0 - 1.0).collect();
            let bo = Operand { data: &w[..], row_stride: 1, col_stride: k };
            let packed = PackedB::new(bo, k, n);
            for m in [1, 8, 16, 32, 64] {
                let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
                let ao = Operand { data: &a[..], row_stride: k, col_stride: 1 };
                let time = |f: &dyn Fn() -> Vec<f32>| {
                    f();
                    let t = std::time::Instant::now();
                    for _ in 0..20 {
                        std::hint::black_box(f());
                    }
                    t.elapsed().as_secs_f64() / 20.0 * 1e6
                };
                let amx = time(&|| matmul_packed(m, ao, packed.view()));
                let f32 = time(&|| super::super::blas::matmul(m, n, k, ao, bo, true));
                eprintln!("{m:>3} x {k} @ {k}x{n}: packed AMX {amx:>8.0} us, f32 {f32:>8.0} us");
            }
        }
    }

    /// Throughput on SmolLM2's layer shapes for 2,048 rows (a DPO micro-batch), against BLAS:
    /// `cargo test --release -p apl-engine --lib amx::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn speed() {
        if !available() {
            return;
        }
        let m = 2048;
        for (k, n) in [(576, 576), (576, 1536), (1536, 576), (576, 49152 / 8)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
            let w: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 97) as f32 / 48.0 - 1.0).collect();
            let ao = Operand { data: &a[..], row_stride: k, col_stride: 1 };
            let bo = Operand { data: &w[..], row_stride: 1, col_stride: k };
            let flops = 2.0 * (m * n * k) as f64;
            let time = |f: &dyn Fn() -> Vec<f32>| {
                f();
                let t = std::time::Instant::now();
                for _ in 0..5 {
                    std::hint::black_box(f());
                }
                flops * 5.0 / t.elapsed().as_secs_f64() / 1e9
            };
            let amx = time(&|| matmul(m, n, k, ao, bo));
            let blas = time(&|| super::super::blas::matmul(m, n, k, ao, bo, true));
            let packed = PackedB::new(bo, k, n);
            let pa = pack_a(ao, m, k, m.div_ceil(32) * 2, k.div_ceil(32));
            let product_only = time(&|| product(m, &pa, packed.view()));
            let t = std::time::Instant::now();
            for _ in 0..5 {
                std::hint::black_box(pack_a(ao, m, k, m.div_ceil(32) * 2, k.div_ceil(32)));
            }
            let a_ms = t.elapsed().as_secs_f64() / 5.0 * 1e3;
            let t = std::time::Instant::now();
            for _ in 0..5 {
                std::hint::black_box(PackedB::new(bo, k, n));
            }
            let b_ms = t.elapsed().as_secs_f64() / 5.0 * 1e3;
            eprintln!(
                "{m}x{k} @ {k}x{n}: AMX {amx:.0} GFLOP/s (product alone {product_only:.0}; packing A {a_ms:.2} ms, \
                 B {b_ms:.2} ms), f32 {blas:.0} GFLOP/s"
            );
        }
    }
}
