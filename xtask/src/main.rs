//! Build chores, as `cargo xtask <command>`:
//!
//! - `frontend`: compile the Leptos app to wasm and generate its JS glue with
//!   wasm-bindgen's library (pinned to the same version as the `wasm-bindgen` crate), then
//!   shrink the wasm with binaryen's `wasm-opt` (npm's `binaryen`, pinned in
//!   xtask/wasm-opt/package-lock.json and run by Node.js), into `dist/`. No downloaded tools
//!   (trunk, wasm-bindgen-cli binaries) are needed; without Node.js the build warns and keeps
//!   the wasm unoptimised.
//! - `run [ARGS]`: the main job. Builds the frontend and the server (release) and starts
//!   `apl serve ARGS` on embedded defaults; the model and IMDB data are fetched on first use.
//! - `test [ARGS]`: the whole test suite on a fresh machine with no step before it: a C compiler
//!   (the tokenizer's regex engine builds C), chromium, fonts and Node.js through apt-get when
//!   missing, playwright-core for the browser tests (`npm ci` in tests/browser, once), the
//!   frontend's wasm build, then `cargo test --workspace`.
//! - `ci`: what CI enforces: `cargo fmt --check`, clippy with warnings denied, then `test`.
//! - `bench [ARGS]`: release build, then `apl bench ARGS`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cmd.as_str() {
        "frontend" => frontend(&root),
        "run" => {
            frontend(&root)?;
            cargo(&["run", "--release", "-p", "apl-server", "--bin", "apl", "--", "serve"], &rest)
        }
        "test" => {
            if !on_path("cc") {
                apt_install(&["build-essential"]).context("the tests build C code (onig): install a C compiler")?;
            }
            // The browser's dependencies first: they bring Node.js, which the frontend's build
            // runs wasm-opt with.
            browser_deps(&root)?;
            frontend(&root)?;
            cargo(&["test", "--workspace"], &rest)
        }
        "ci" => {
            cargo(&["fmt", "--all", "--", "--check"], &[])?;
            cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"], &[])?;
            browser_deps(&root)?;
            frontend(&root)?;
            cargo(&["test", "--workspace"], &rest)
        }
        "bench" => cargo(&["run", "--release", "-p", "apl-server", "--bin", "apl", "--", "bench"], &rest),
        other => {
            eprintln!("usage: cargo xtask <frontend | run [ARGS] | test [ARGS] | ci | bench [ARGS]>");
            if other.is_empty() { Ok(()) } else { bail!("unknown command {other:?}") }
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_path_buf()
}

fn cargo(args: &[&str], extra: &[String]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("+ cargo {} {}", args.join(" "), extra.join(" "));
    let status = Command::new(&cargo).args(args).args(extra).status().with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Writes `FILE.gz` beside `file` (the server sends it to browsers that accept gzip); returns
/// its size.
fn gzip(file: &Path) -> Result<u64> {
    use std::io::Write;
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let mut name = file.as_os_str().to_owned();
    name.push(".gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&data)?;
    let gz = enc.finish()?;
    std::fs::write(&name, &gz).with_context(|| format!("writing {}", Path::new(&name).display()))?;
    Ok(gz.len() as u64)
}

/// What the browser tests need: the system's chromium (and fonts, so screenshots show text) and
/// Node.js with npm, from Debian's packages when the machine has apt-get and the rights to use
/// it (as `.ci/run` does), else one clear instruction; then playwright-core (pinned in
/// tests/browser/package-lock.json). The browser is never a download of its own.
/// `APL_SKIP_BROWSER=1` skips all of it (the browser test then says it was skipped).
fn browser_deps(root: &Path) -> Result<()> {
    if std::env::var_os("APL_SKIP_BROWSER").is_some() {
        return Ok(());
    }
    let chromium = std::env::var_os("APL_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into());
    let mut missing = Vec::new();
    if !chromium.exists() {
        missing.extend(["chromium", "fonts-dejavu-core"]);
    }
    if !on_path("npm") {
        missing.extend(["nodejs", "npm"]);
    }
    if !missing.is_empty() {
        apt_install(&missing).with_context(|| {
            format!(
                "the browser tests need {}: install them (`sudo apt-get install {}`), or set APL_CHROMIUM to a \
                 chromium binary, or APL_SKIP_BROWSER=1 to skip the browser tests",
                missing.join(", "),
                missing.join(" ")
            )
        })?;
    }
    let dir = root.join("tests/browser");
    if dir.join("node_modules/playwright-core").exists() {
        return Ok(());
    }
    eprintln!("+ npm ci (in tests/browser)");
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .context("running npm (install Node.js and npm: the browser tests need them)")?;
    if !status.success() {
        bail!("`npm ci` in tests/browser failed ({status})");
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

/// Installs Debian packages with apt-get, as root or through `sudo -n` (never a password prompt).
fn apt_install(packages: &[&str]) -> Result<()> {
    if !on_path("apt-get") {
        bail!("this machine has no apt-get");
    }
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let run = |args: &[&str]| -> Result<()> {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        eprintln!("+ {}apt-get {}", if root { "" } else { "sudo -n " }, args.join(" "));
        let status = cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive").status().context("running apt-get")?;
        if !status.success() {
            bail!("`apt-get {}` failed ({status})", args.join(" "));
        }
        Ok(())
    };
    run(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    run(&args)
}

/// Adds the wasm32 target through rustup when it is missing (a fresh machine).
fn ensure_wasm_target() -> Result<()> {
    let Ok(out) = Command::new("rustup").args(["target", "list", "--installed"]).output() else {
        return Ok(()); // no rustup: let cargo report what is missing
    };
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == "wasm32-unknown-unknown") {
        return Ok(());
    }
    eprintln!("+ rustup target add wasm32-unknown-unknown");
    let status = Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]).status()?;
    if !status.success() {
        bail!("`rustup target add wasm32-unknown-unknown` failed ({status})");
    }
    Ok(())
}

/// Cargo's build directory: `CARGO_TARGET_DIR` when set (relative to the workspace root), else
/// `target/`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// Builds `dist/`: index.html, boot.js, style.css, pkg/ (the whole app: wasm + JS glue) and
/// pkg-rater/ (the rater workspace alone, built without the `admin` feature).
///
/// The admin build is split first (wasm-split, the `wasm_split_cli_support` library): each
/// dashboard tab's code (the `#[wasm_split]` functions in frontend/src/dashboard/mod.rs) goes
/// to a file of its own in pkg/ (`split_TAB.wasm`, with `chunk_N.wasm` for code some of them
/// share), fetched by pkg/__wasm_split.js when the tab is first opened; wasm-bindgen then
/// processes the main file. Every wasm file is shrunk by wasm-opt and gzipped.
fn frontend(root: &Path) -> Result<()> {
    ensure_wasm_target()?;
    let opt = find_wasm_opt(root)?;
    let dist = root.join("dist");
    let kb = |n: u64| n as f64 / 1024.0;
    let mut sizes = Vec::new();
    for (dir, features) in [("pkg", &[][..]), ("pkg-rater", &["--no-default-features"][..])] {
        let mut args = vec![
            "build",
            "-p",
            "apl-frontend",
            "--lib",
            "--target",
            "wasm32-unknown-unknown",
            "--profile",
            "wasm-release",
        ];
        args.extend_from_slice(features);
        cargo(&args, &[])?;
        let built = target_dir(root).join("wasm32-unknown-unknown/wasm-release/apl_frontend.wasm");
        let raw = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
        let pkg = dist.join(dir);
        if pkg.exists() {
            std::fs::remove_dir_all(&pkg)?;
        }
        std::fs::create_dir_all(&pkg)?;
        // wasm-bindgen's input, named as the crate (its output's names follow).
        let work = target_dir(root).join("wasm-split").join(dir);
        std::fs::create_dir_all(&work)?;
        let input = work.join("apl_frontend.wasm");
        let mut chunks = Vec::new();
        if dir == "pkg" {
            let mut o = wasm_split_cli_support::Options::new(&raw);
            o.output_dir = &pkg;
            o.main_out_path = &input;
            o.link_name = "./__wasm_split.js";
            o.main_module = "./apl_frontend.js";
            let split = wasm_split_cli_support::transform(o).map_err(|e| anyhow::anyhow!("wasm-split: {e:?}"))?;
            chunks = split.split_modules;
            chunks.sort();
            if chunks.is_empty() {
                bail!("wasm-split found no split points in the admin build");
            }
        } else {
            // The relocations `--emit-relocs` keeps (.cargo/config.toml) are for wasm-split
            // alone: nothing to split here, so they go.
            std::fs::write(&input, strip_sections(&raw, |name| name == b"linking" || name.starts_with(b"reloc."))?)?;
        }
        wasm_bindgen_cli_support::Bindgen::new()
            .input_path(&input)
            .web(true)?
            .typescript(false)
            .remove_name_section(true)
            .remove_producers_section(true)
            // The function table, which the tabs' files add their functions to.
            .keep_lld_exports(!chunks.is_empty())
            .generate(&pkg)
            .context("wasm-bindgen")?;
        let wasm = pkg.join("apl_frontend_bg.wasm");
        let before = std::fs::metadata(&wasm)?.len();
        if let Some(tool) = &opt {
            wasm_opt(tool, &wasm, &target_dir(root).join("wasm-opt").join(dir))?;
        }
        let gz = gzip(&wasm)?;
        let after = std::fs::metadata(&wasm)?.len();
        let from = if opt.is_some() { format!(" (from {:.0} KB)", kb(before)) } else { String::new() };
        sizes.push(format!("{dir} {:.0} KB{from}, {:.0} KB gzipped", kb(after), kb(gz)));
        gzip(&pkg.join("apl_frontend.js"))?;
        if !chunks.is_empty() {
            // Each file on its own (wasm-opt is single-threaded), a few at a time.
            let shrink = |chunk: &PathBuf| -> Result<(String, u64, u64)> {
                let name = chunk.file_stem().and_then(|n| n.to_str()).unwrap_or_default();
                // Its names go (wasm-opt would warn about a subsection it does not know).
                std::fs::write(chunk, strip_sections(&std::fs::read(chunk)?, |name| name == b"name")?)?;
                if let Some(tool) = &opt {
                    wasm_opt(tool, chunk, &target_dir(root).join("wasm-opt").join(format!("{dir}-split")).join(name))?;
                }
                let gz = gzip(chunk)?;
                Ok((name.to_string(), std::fs::metadata(chunk)?.len(), gz))
            };
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let mut parts = Vec::new();
            for group in chunks.chunks(threads) {
                let done: Vec<Result<(String, u64, u64)>> = std::thread::scope(|s| {
                    let running: Vec<_> = group.iter().map(|c| s.spawn(|| shrink(c))).collect();
                    running.into_iter().map(|t| t.join().expect("wasm-opt thread")).collect()
                });
                for part in done {
                    parts.push(part?);
                }
            }
            // The split functions' own files, then the code several of them share (`chunk_N`).
            let (shared, own): (Vec<_>, Vec<_>) = parts.into_iter().partition(|(n, ..)| n.starts_with("chunk_"));
            let mut list: Vec<String> = own
                .iter()
                .map(|(n, raw, gz)| format!("{} {:.0}/{:.0}", n.trim_start_matches("split_"), kb(*raw), kb(*gz)))
                .collect();
            let (raw, gz) = shared.iter().fold((0, 0), |(r, g), (_, raw, gz)| (r + raw, g + gz));
            list.push(format!("{} shared chunks {:.0}/{:.0}", shared.len(), kb(raw), kb(gz)));
            sizes.push(format!("{dir}'s split-off pages (KB/KB gzipped): {}", list.join(", ")));
            gzip(&pkg.join("__wasm_split.js"))?;
        }
    }
    for (from, to) in
        [("frontend/index.html", "index.html"), ("frontend/boot.js", "boot.js"), ("style/style.css", "style.css")]
    {
        std::fs::copy(root.join(from), dist.join(to)).with_context(|| format!("copying {from}"))?;
        gzip(&dist.join(to))?;
    }
    let step = if opt.is_some() { "wasm-bindgen and wasm-opt" } else { "wasm-bindgen" };
    eprintln!("frontend built in {} (wasm after {step}: {})", dist.display(), sizes.join("; "));
    Ok(())
}

/// `wasm` without the custom sections whose names `drop` picks.
fn strip_sections(wasm: &[u8], drop: impl Fn(&[u8]) -> bool) -> Result<Vec<u8>> {
    /// An unsigned LEB128 number at `at`: its value and the position after it.
    fn leb(b: &[u8], mut at: usize) -> Result<(usize, usize)> {
        let (mut v, mut shift) = (0usize, 0);
        loop {
            let byte = *b.get(at).context("truncated wasm")?;
            at += 1;
            v |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((v, at));
            }
            shift += 7;
        }
    }
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        bail!("not a wasm module");
    }
    let mut out = wasm[..8].to_vec();
    let mut at = 8;
    while at < wasm.len() {
        let (len, body) = leb(wasm, at + 1)?;
        let end = body.checked_add(len).filter(|&e| e <= wasm.len()).context("truncated wasm section")?;
        let dropped = wasm[at] == 0 && {
            let (n, name) = leb(wasm, body)?;
            drop(wasm.get(name..name + n).unwrap_or_default())
        };
        if !dropped {
            out.extend_from_slice(&wasm[at..end]);
        }
        at = end;
    }
    Ok(out)
}

/// How to run binaryen's `wasm-opt`: a program and the arguments before the file's.
struct WasmOpt {
    program: PathBuf,
    args: Vec<String>,
}

/// Finds `wasm-opt`, in this order: `APL_WASM_OPT` (a `wasm-opt` program, or `off` to skip it),
/// npm's `binaryen` pinned in xtask/wasm-opt/package-lock.json (installed there with `npm ci`
/// when Node.js is at hand; a wasm build of binaryen that Node.js runs, so the same tool on
/// every machine), else a `wasm-opt` on PATH (e.g. Debian's binaryen). Without any, the build
/// warns and keeps the wasm as wasm-bindgen wrote it (still correct, about a tenth bigger),
/// unless `APL_WASM_OPT_REQUIRED` is set (CI), which makes that an error.
fn find_wasm_opt(root: &Path) -> Result<Option<WasmOpt>> {
    let required = std::env::var_os("APL_WASM_OPT_REQUIRED").is_some_and(|v| !v.is_empty() && v != "0");
    let missing = |why: String| -> Result<Option<WasmOpt>> {
        if required {
            bail!("wasm-opt is required (APL_WASM_OPT_REQUIRED) but {why}");
        }
        eprintln!("warning: {why}: the frontend's wasm is left unoptimised (about a tenth bigger)");
        Ok(None)
    };
    match std::env::var("APL_WASM_OPT") {
        Ok(v) if v == "off" => return missing("APL_WASM_OPT=off".into()),
        Ok(v) if !v.is_empty() => return Ok(Some(WasmOpt { program: v.into(), args: Vec::new() })),
        _ => {}
    }
    let dir = root.join("xtask/wasm-opt");
    let script = dir.join("node_modules/binaryen/bin/wasm-opt");
    if on_path("node") {
        if !script.exists() && on_path("npm") {
            eprintln!("+ npm ci (in xtask/wasm-opt)");
            let status = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .status()
                .context("running npm")?;
            if !status.success() {
                if required {
                    bail!("`npm ci` in xtask/wasm-opt failed ({status})");
                }
                eprintln!("warning: `npm ci` in xtask/wasm-opt failed ({status})");
            }
        }
        if script.exists() {
            return Ok(Some(WasmOpt { program: "node".into(), args: vec![script.display().to_string()] }));
        }
    }
    if on_path("wasm-opt") {
        return Ok(Some(WasmOpt { program: "wasm-opt".into(), args: Vec::new() }));
    }
    missing("no wasm-opt: install Node.js and npm (for npm's binaryen, pinned in xtask/wasm-opt), or binaryen".into())
}

/// Shrinks `wasm` in place with `wasm-opt`. Its last output is kept in `cache` (a folder of
/// its own per bundle) under a hash of its input, tool and flags: a rebuild whose wasm did not
/// change (`cargo xtask test` after a server edit) skips the half minute wasm-opt takes.
fn wasm_opt(tool: &WasmOpt, wasm: &Path, cache: &Path) -> Result<()> {
    use std::hash::{Hash, Hasher};
    let input = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&input, &tool.program, &tool.args, WASM_OPT_FLAGS).hash(&mut h);
    let cached = cache.join(format!("{:016x}.wasm", h.finish()));
    // A copy that fails (another build replacing the cache at the same moment) only means
    // running wasm-opt.
    if cached.exists() && std::fs::copy(&cached, wasm).is_ok() {
        return Ok(());
    }
    let out = wasm.with_extension("opt.wasm");
    let mut cmd = Command::new(&tool.program);
    cmd.args(&tool.args).arg(wasm).arg("-o").arg(&out).args(WASM_OPT_FLAGS);
    eprintln!("+ wasm-opt {} {}", wasm.display(), WASM_OPT_FLAGS.join(" "));
    let status = cmd.status().with_context(|| format!("running {}", tool.program.display()))?;
    if !status.success() {
        bail!("wasm-opt failed ({status}) on {}", wasm.display());
    }
    std::fs::rename(&out, wasm)?;
    // Only the latest output is kept; written under another name first and renamed, so a
    // build running beside this one never copies half a file.
    for old in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        let _ = std::fs::remove_file(old.path());
    }
    std::fs::create_dir_all(cache)?;
    let part = cached.with_extension(format!("{}.part", std::process::id()));
    std::fs::copy(wasm, &part).with_context(|| format!("writing {}", part.display()))?;
    std::fs::rename(&part, &cached)?;
    Ok(())
}

/// `-Oz`, except that a function called from one place is inlined there only when small
/// (`-ocimfs`): binaryen's default, inlining all of them, takes a tenth off the raw size but
/// adds a tenth to the gzipped one, what browsers download. The features are those Rust's
/// wasm32 target enables by default (the target_features section says so too). Names,
/// producers and DWARF are stripped.
const WASM_OPT_FLAGS: &[&str] = &[
    "-Oz",
    "--one-caller-inline-max-function-size=20",
    "--enable-bulk-memory",
    "--enable-mutable-globals",
    "--enable-nontrapping-float-to-int",
    "--enable-sign-ext",
    "--enable-reference-types",
    "--enable-multivalue",
    "--strip-debug",
    "--strip-producers",
];
