//! Run-time choice of device and dtype (`--device cpu|cuda|cuda:N`, `--dtype f32|bf16|f16`).
//!
//! A CUDA binary is a separate build (`--features cuda`); asking a CPU build for CUDA is an
//! error that says how to get one, not a silent fallback to the CPU.

use candle_core::{DType, Device};

/// A device or dtype that cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device {0:?}: use cpu, cuda or cuda:N")]
    UnknownDevice(String),
    #[error(
        "device {0:?} asked for, but this binary was built without CUDA; rebuild with \
         `cargo build --release --features cuda` (see README)"
    )]
    NoCuda(String),
    #[error("opening the CUDA device")]
    Cuda(#[from] candle_core::Error),
    #[error("unknown dtype {0:?}: use f32, bf16 or f16")]
    UnknownDtype(String),
}

pub type Result<T, E = DeviceError> = std::result::Result<T, E>;

/// Fixes the CPU thread count once, before any thread starts.
///
/// candle asks for its thread count on every matmul, and without `RAYON_NUM_THREADS` that
/// means reading and parsing /proc/cpuinfo each time (measured: several percent of a
/// sampling step). Setting the variable from the available parallelism makes it a lookup.
pub fn pin_cpu_threads() {
    keep_freed_memory();
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: called first thing in main, while the process is single-threaded.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
}

/// Large tensors are allocated and freed on every decoding and training step. By default glibc
/// serves anything over 32 MB from a fresh mmap and unmaps it on free, trims the heap when much
/// is freed at once, and gives each thread (candle runs backward passes on a thread of its own)
/// an arena of 64 MB heaps; every step then had the kernel zero its pages afresh (measured: 5.2
/// million page faults in two DPO steps of SmolLM2, a fifth of the time). One heap that never
/// returns memory keeps the pages: the process holds its peak, as PyTorch's caching allocator does.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any allocation-heavy work.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}

pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.as_str() {
        "cuda" | "gpu" => 0,
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => return Err(DeviceError::UnknownDevice(spec)),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(DeviceError::NoCuda(spec));
    }
    Ok(Device::new_cuda(ordinal)?)
}

pub fn parse_dtype(spec: &str) -> Result<DType> {
    Ok(match spec.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => DType::F32,
        "bf16" | "bfloat16" => DType::BF16,
        "f16" | "float16" | "half" => DType::F16,
        "f64" | "float64" => DType::F64,
        other => return Err(DeviceError::UnknownDtype(other.to_string())),
    })
}

pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => {
            use crate::model::cpu::amx;
            let bf16 = if amx::products() == amx::Products::Bf16 {
                format!(
                    "bf16 on AMX from {} rows ({} by a frozen weight, packed once), else ",
                    amx::MIN_ROWS,
                    crate::model::cpu::packed::MIN_ROWS
                )
            } else {
                String::new()
            };
            format!(
                "cpu ({} threads; matrix products: {bf16}{})",
                candle_core::utils::get_num_threads(),
                crate::model::cpu::blas::describe()
            )
        }
        Device::Cuda(_) => "cuda".to_string(),
        Device::Metal(_) => "metal".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_clearly() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("tpu").unwrap_err().to_string().contains("cpu, cuda or cuda:N"));
        if !candle_core::utils::cuda_is_available() {
            assert!(parse_device("cuda:0").unwrap_err().to_string().contains("--features cuda"));
        }
        assert_eq!(parse_dtype("bf16").unwrap(), DType::BF16);
        assert!(parse_dtype("int8").is_err());
    }
}
