//! `apl convert`: write any checkpoint the engine reads (a GGUF file, say) as an HF directory
//! of safetensors, e.g. to hand the bundled model to PyTorch tools.

use std::path::PathBuf;

use anyhow::Result;

use super::ModelArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The directory to write (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let m = a.model.load()?;
    m.checkpoint.save_hf(&a.out)?;
    println!("{}", a.out.display());
    Ok(())
}
