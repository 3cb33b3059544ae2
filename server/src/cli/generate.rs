//! `apl generate`: sample completions of one or more prompts, to eyeball a checkpoint.

use std::io::{IsTerminal, Write};

use anyhow::{Result, bail};

use super::{ModelArgs, progress};
use apl_engine::model::{SampleRequest, SamplingConfig, sample};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text (repeat for several prompts).
    #[arg(long, required = true)]
    pub prompt: Vec<String>,
    /// Completions per prompt.
    #[arg(short = 'n', long, default_value_t = 2)]
    pub num_samples: usize,
    #[arg(long, default_value_t = 24)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub min_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// 1 = off.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep going past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// One JSON object per completion instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    if a.num_samples == 0 {
        bail!("--num-samples must be at least 1");
    }
    let m = a.model.load()?;
    let encoded: Vec<Vec<u32>> = a.prompt.iter().map(|p| m.tokenizer.encode(p, true)).collect::<Result<_, _>>()?;
    let mut requests = Vec::new();
    for ids in &encoded {
        for _ in 0..a.num_samples {
            requests.push(SampleRequest::new(ids));
        }
    }
    let cfg = SamplingConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        max_new_tokens: a.max_new_tokens,
        min_new_tokens: a.min_new_tokens,
        stop_at_eos: !a.ignore_eos,
        seed: a.seed,
    };
    let pb = progress(a.max_new_tokens as u64, "sampling");
    let t = std::time::Instant::now();
    let samples = sample(&m.model, &requests, &cfg, m.tokenizer.eos_ids(), |_| pb.inc(1))?;
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    let new_tokens: usize = samples.iter().map(|s| s.tokens.len()).sum();
    let mut out = std::io::stdout().lock();
    let (bold, plain) = if out.is_terminal() { ("\x1b[1m", "\x1b[0m") } else { ("", "") };
    for (i, s) in samples.iter().enumerate() {
        let prompt = &a.prompt[i / a.num_samples];
        let text = m.tokenizer.decode(&s.tokens)?;
        let logprob: f32 = s.logprobs.iter().sum();
        if a.json {
            let v = serde_json::json!({
                "prompt": prompt, "completion": text, "tokens": s.tokens.len(),
                "finish": s.finish, "logprob": logprob,
            });
            writeln!(out, "{v}")?;
        } else {
            writeln!(
                out,
                "--- prompt {} sample {} ({} tokens, {:?}, log p = {logprob:.2})",
                i / a.num_samples + 1,
                i % a.num_samples + 1,
                s.tokens.len(),
                s.finish
            )?;
            writeln!(out, "{prompt}{bold}{text}{plain}")?;
        }
    }
    eprintln!("{new_tokens} tokens in {secs:.2} s ({:.1} tok/s)", new_tokens as f64 / secs);
    Ok(())
}
