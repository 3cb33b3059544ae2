//! `apl score`: log pi(completion | prompt), summed and per token, as DPO sees it.

use std::io::Write;

use anyhow::Result;

use super::ModelArgs;
use apl_engine::model::sequence_logprobs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub prompt: String,
    /// Completion text (repeat to score several against the same prompt).
    #[arg(long, required = true)]
    pub completion: Vec<String>,
    /// Print every token's log-prob too.
    #[arg(long)]
    pub per_token: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let m = a.model.load()?;
    let prompt = m.tokenizer.encode(&a.prompt, true)?;
    let completions: Vec<Vec<u32>> =
        a.completion.iter().map(|c| m.tokenizer.encode(c, false)).collect::<Result<_, _>>()?;
    let pairs: Vec<(&[u32], &[u32])> = completions.iter().map(|c| (prompt.as_slice(), c.as_slice())).collect();
    let scores = sequence_logprobs(&m.model, &pairs, 8, |_| {})?;
    let mut out = std::io::stdout().lock();
    for ((text, ids), s) in a.completion.iter().zip(&completions).zip(&scores) {
        if a.json {
            let tokens: Vec<_> = ids
                .iter()
                .zip(&s.tokens)
                .map(|(id, lp)| serde_json::json!({"id": id, "token": m.tokenizer.decode(&[*id]).unwrap_or_default(), "logprob": lp}))
                .collect();
            writeln!(out, "{}", serde_json::json!({"completion": text, "logprob": s.sum, "tokens": tokens}))?;
            continue;
        }
        writeln!(out, "{:>10.4}  {} tokens  {text:?}", s.sum, ids.len())?;
        if a.per_token {
            for (id, lp) in ids.iter().zip(&s.tokens) {
                writeln!(out, "{:>22.4}  {:>6}  {:?}", lp, id, m.tokenizer.decode(&[*id])?)?;
            }
        }
    }
    Ok(())
}
