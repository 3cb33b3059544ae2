//! `apl judge`: tries an LLM judge on pairs with a known better side before a project relies on
//! it — TRL `{prompt, chosen, rejected}` lines, or pairs cut from IMDB (the start of a positive
//! review, its own continuation, and a snippet of a negative review). It asks every pair in both
//! orders (accuracy, first-position rate, position-bias rate), then re-asks each `--repeats`
//! times (self-consistency), and prints the numbers with bootstrap intervals, tokens and cost.
//! Every call goes to the audit log, which also makes a rerun free.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::CacheArgs;
use crate::analytics::bootstrap::{LEVEL, RESAMPLES, bootstrap};
use crate::analytics::project::share;
use crate::assets;
use crate::judge::ledger::Ledger;
use crate::judge::llm::{PairVerdict, Side, pairwise_agreement};
use crate::judge::{JudgeOrder, JudgeSettings, JudgeTask, LlmJudge};
use apl_engine::data::{imdb, trl};
use apl_engine::oracle::Comparison;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The chat completions endpoint up to the version, e.g. http://127.0.0.1:8080/v1.
    #[arg(long)]
    pub base_url: String,
    #[arg(long)]
    pub model: String,
    /// Environment variable (or secrets-file entry) with the API key; none for local servers.
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// File of NAME=value lines searched for the key after the environment.
    #[arg(long)]
    pub secrets_file: Option<PathBuf>,
    /// Further judge settings as JSON (the project's `judge` object); flags above win.
    #[arg(long)]
    pub settings: Option<PathBuf>,
    /// TRL JSONL with the better text as `chosen` [default: pairs cut from IMDB].
    #[arg(long)]
    pub pairs: Option<PathBuf>,
    /// Pairs to judge.
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// Asks per pair for self-consistency (0: skip).
    #[arg(long, default_value_t = 4)]
    pub repeats: u32,
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// The audit log (JSONL), also the cache.
    #[arg(long, default_value = "judge-audit.jsonl")]
    pub log: PathBuf,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub cache: CacheArgs,
}

struct Pair {
    prompt: String,
    chosen: String,
    rejected: String,
}

fn words(text: &str, from: usize, n: usize) -> String {
    text.split_whitespace().skip(from).take(n).collect::<Vec<_>>().join(" ")
}

/// Start of a positive review + its continuation vs a snippet from a negative one.
fn imdb_pairs(reviews: &[imdb::Review], n: usize) -> Vec<Pair> {
    let long = |r: &&imdb::Review| r.text.split_whitespace().count() >= 60 && !r.text.contains("<br");
    let pos: Vec<&imdb::Review> = reviews.iter().filter(|r| r.label == 1).filter(long).take(n).collect();
    let neg: Vec<&imdb::Review> = reviews.iter().filter(|r| r.label == 0).filter(long).take(n).collect();
    pos.iter()
        .zip(&neg)
        .map(|(p, q)| Pair {
            prompt: words(&p.text, 0, 10),
            chosen: words(&p.text, 10, 20),
            rejected: words(&q.text, 30, 20),
        })
        .collect()
}

pub fn run(a: Args) -> Result<()> {
    let mut s: JudgeSettings = match &a.settings {
        Some(p) => {
            serde_json::from_str(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
                .with_context(|| format!("{}: not judge settings", p.display()))?
        }
        None => JudgeSettings { api_key_env: None, ..Default::default() },
    };
    s.base_url = a.base_url.clone();
    s.model = a.model.clone();
    if a.api_key_env.is_some() {
        s.api_key_env = a.api_key_env.clone();
    }
    if let Some(t) = a.temperature {
        s.temperature = t;
    }
    if let Some(c) = a.concurrency {
        s.concurrency = c;
    }
    s.order = JudgeOrder::Both;
    s.validate()?;
    let pairs: Vec<Pair> = match &a.pairs {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            trl::parse_jsonl(&p.display().to_string(), &text)?
                .into_iter()
                .take(a.n)
                .map(|r| Pair { prompt: r.prompt, chosen: r.chosen, rejected: r.rejected })
                .collect()
        }
        None => {
            if matches!(s.task, JudgeTask::Summarize | JudgeTask::Helpful) {
                bail!("pairs cut from IMDB need the imdb (or a custom) judge task; give --pairs for other tasks");
            }
            imdb_pairs(&imdb::read_reviews(&assets::ensure(&assets::IMDB, &a.cache.dir())?)?, a.n)
        }
    };
    if pairs.is_empty() {
        bail!("no pairs to judge");
    }
    // The known-better text sits on side A for even pairs and B for odd ones.
    let items: Vec<Comparison> = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (x, y) = if i.is_multiple_of(2) { (&p.chosen, &p.rejected) } else { (&p.rejected, &p.chosen) };
            Comparison { prompt: &p.prompt, a: x, b: y }
        })
        .collect();
    let better = |i: usize| if i.is_multiple_of(2) { Side::A } else { Side::B };
    let api_key = crate::judge::api_key(s.api_key_env.as_ref(), a.secrets_file.as_deref())?;
    // The operator's own command: any destination, a local server included.
    let destinations = Arc::new(crate::judge::destination::Destinations::any());
    let judge = LlmJudge::new(s.clone(), api_key, Arc::new(Ledger::open(&a.log)?), destinations)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;

    let t = Instant::now();
    eprintln!("judging {} pairs in both orders with {} at {}", items.len(), s.model, s.base_url);
    let verdicts: Vec<PairVerdict> = rt.block_on(judge.judge_pairs(&items))?;
    let failed = verdicts.iter().filter(|v| v.failed().is_some()).count();
    if let Some(e) = verdicts.iter().find_map(|v| v.failed()) {
        eprintln!("{failed} pairs had a failed call; first: {e}");
    }
    // Per call: did it pick the known-better text (None: no decision or failed)?
    let calls: Vec<Option<bool>> = verdicts
        .iter()
        .enumerate()
        .flat_map(|(i, v)| v.calls.iter().map(move |c| c.choice.map(|s| s == better(i))))
        .collect();
    let firsts: Vec<bool> =
        verdicts.iter().flat_map(|v| v.calls.iter().filter_map(|c| c.choice.map(|s| s == c.first_shown))).collect();
    let both: Vec<bool> = verdicts
        .iter()
        .filter(|v| v.calls.len() == 2 && v.calls.iter().all(|c| c.choice.is_some()))
        .map(|v| v.orders_disagree)
        .collect();
    let rate = |xs: &[bool]| share(xs, 1);
    let decided: Vec<bool> = calls.iter().flatten().copied().collect();
    let accuracy = rate(&decided);
    let first_position = rate(&firsts);
    let position_bias = rate(&both);
    let no_decision = calls.iter().filter(|c| c.is_none()).count() as f64 / calls.len().max(1) as f64;
    let judging_seconds = t.elapsed().as_secs_f64();

    let consistency = if a.repeats >= 2 {
        eprintln!("re-asking each pair {} times", a.repeats);
        let c = rt.block_on(judge.self_consistency(&items, a.repeats))?;
        let per: Vec<f64> = c.answers.iter().map(|ans| pairwise_agreement(ans)).collect();
        let ci = bootstrap(per.len(), RESAMPLES, LEVEL, 2, |idx| {
            (!idx.is_empty()).then(|| idx.iter().map(|&i| per[i]).sum::<f64>() / idx.len() as f64)
        });
        Some((c, ci))
    } else {
        None
    };
    let totals = judge.totals();
    let report = json!({
        "judge": {"base_url": crate::judge::ledger::redact_url(&s.base_url), "model": s.model, "temperature": s.temperature, "task": s.task},
        "pairs": items.len(),
        "calls_failed_pairs": failed,
        "accuracy": accuracy,
        "no_decision_rate": no_decision,
        "first_position_rate": first_position,
        "position_bias_rate": position_bias,
        "self_consistency": consistency.as_ref().map(|(c, ci)| json!({"repeats": c.repeats, "agreement": ci, "unanimous": c.unanimous})),
        "totals": totals,
        "seconds_both_orders": judging_seconds,
        "seconds_total": t.elapsed().as_secs_f64(),
        "audit_log": a.log,
    });
    let fmt = |ci: &Option<crate::analytics::Interval>| match ci {
        Some(c) => format!("{:.3} [{:.3}, {:.3}]", c.estimate, c.lo, c.hi),
        None => "n/a".into(),
    };
    println!("pairs                 {}", items.len());
    println!("accuracy (decided)    {}  over {} answered calls", fmt(&accuracy), decided.len());
    println!("no decision           {no_decision:.3} of {} calls", calls.len());
    println!("first-position rate   {}", fmt(&first_position));
    println!("position-bias rate    {}  (pairs whose two orders disagree, of {})", fmt(&position_bias), both.len());
    if let Some((c, ci)) = &consistency {
        println!("self-consistency      {}  (x{}; unanimous {:.3})", fmt(ci), c.repeats, c.unanimous);
    }
    println!(
        "calls {} (cached {}, retries {}), tokens {} + {}, cost ${:.4}, {:.1} s",
        totals.calls,
        totals.cached,
        totals.retries,
        totals.prompt_tokens,
        totals.completion_tokens,
        totals.cost_usd,
        t.elapsed().as_secs_f64()
    );
    if let Some(out) = &a.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
