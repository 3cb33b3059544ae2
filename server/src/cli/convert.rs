//! `apl convert`: write any checkpoint the engine reads (a GGUF file, say) as an HF directory
//! of safetensors, e.g. to hand the bundled model to PyTorch tools. With `--run` it writes an
//! experiment's trained policy instead: the starting model with the run's trained tensors
//! (top layers, or LoRA merged into the projections) put in, under the HF names. With `--run`
//! and `--peft` a LoRA run is written as a PEFT adapter instead (adapter_config.json and
//! adapter_model.safetensors), which PEFT and vLLM load on top of the unchanged base model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::ModelArgs;
use crate::experiment::config::ExperimentConfig;
use apl_engine::model::Checkpoint;
use apl_engine::train::policy::Policy;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The directory to write (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub out: PathBuf,
    /// An experiment run directory (RESULTS/runs/ACQ-seedS): write its trained policy.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// With --run: the phase whose policy to write [default: the latest kept].
    #[arg(long, requires = "run")]
    pub phase: Option<usize>,
    /// With --run: write the run's LoRA adapter in PEFT's format, not a merged checkpoint.
    #[arg(long, requires = "run")]
    pub peft: bool,
    /// With --peft: the base model's name in adapter_config.json (`base_model_name_or_path`;
    /// e.g. the HF id or the name the inference server serves it under) [default: its path].
    #[arg(long, requires = "peft")]
    pub base_model_name: Option<String>,
}

pub fn run(a: Args) -> Result<()> {
    match &a.run {
        None => {
            let m = a.model.load()?;
            m.checkpoint.save_hf(&a.out)?;
        }
        Some(dir) => {
            let (cfg, seed) = run_settings(dir)?;
            let weights = policy_file(dir, a.phase)?;
            let path = match (&a.model.model, &cfg.model) {
                (None, Some(p)) => p.clone(),
                _ => a.model.path()?,
            };
            let base = Checkpoint::load(
                &path,
                apl_engine::device::parse_dtype(&a.model.dtype)?,
                &apl_engine::device::parse_device(&a.model.device)?,
            )?;
            let mut policy = Policy::new(base, cfg.settings.trainable.clone(), seed)?;
            policy.load_trainable(&weights).with_context(|| format!("loading {}", weights.display()))?;
            if a.peft {
                let name = a.base_model_name.clone().unwrap_or_else(|| path.display().to_string());
                apl_engine::train::peft::save(&policy, &a.out, &name)?;
            } else {
                policy.save_hf(&a.out)?;
            }
            eprintln!("{} + {} ->", path.display(), weights.display());
        }
    }
    println!("{}", a.out.display());
    Ok(())
}

/// The experiment settings (from RESULTS/config.json) and the run's seed (from its name).
fn run_settings(dir: &Path) -> Result<(ExperimentConfig, u64)> {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let seed = name
        .rsplit_once("-seed")
        .and_then(|(_, s)| s.parse().ok())
        .with_context(|| format!("{}: not a run directory (expected a name like random-seed0)", dir.display()))?;
    let cfg_path = dir.join("../../config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("reading {} (the experiment's settings)", cfg_path.display()))?;
    let cfg = serde_json::from_str(&text)
        .and_then(ExperimentConfig::from_json)
        .with_context(|| format!("{} does not hold experiment settings", cfg_path.display()))?;
    Ok((cfg, seed))
}

/// policy-phase-P.safetensors: the one asked for, or the highest phase present.
fn policy_file(dir: &Path, phase: Option<usize>) -> Result<PathBuf> {
    let mut phases: Vec<usize> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| {
            let n = e.ok()?.file_name().into_string().ok()?;
            n.strip_prefix("policy-phase-")?.strip_suffix(".safetensors")?.parse().ok()
        })
        .collect();
    phases.sort_unstable();
    let p = match phase {
        Some(p) if phases.contains(&p) => p,
        Some(p) => bail!("{}: no policy for phase {p} (kept: {phases:?})", dir.display()),
        None => *phases.iter().max().with_context(|| format!("{}: no trained policy yet", dir.display()))?,
    };
    Ok(dir.join(format!("policy-phase-{p}.safetensors")))
}
