//! Everything an experiment needs before its first phase: the starting checkpoint, the prompt
//! pool, the held-out evaluation prompts (with reference texts for TL;DR), the labeller and the
//! evaluation judge. Built once and shared by every (acquisition, seed) run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use apl_shared::{Labeller, Task};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::config::ExperimentConfig;
use crate::judge::ledger::Ledger;
use crate::judge::local::LocalJudge;
use crate::judge::{LlmJudge, api_key};
use apl_engine::acquire::PromptItem;
use apl_engine::data::imdb::{self, Review};
use apl_engine::data::prompts;
use apl_engine::model::{Checkpoint, Model, Tokenizer};
use apl_engine::oracle::Oracle;
use apl_engine::oracle::length::LengthOracle;
use apl_engine::oracle::sentiment::{NaiveBayes, SentimentOracle};

/// A held-out prompt and, for TL;DR, the human reference it is judged against.
#[derive(Debug, Clone)]
pub struct EvalPrompt {
    pub item: PromptItem,
    pub reference: Option<String>,
}

/// Where an experiment's LLM judge keeps its audit log, and where its API key may be found.
#[derive(Debug, Clone, Default)]
pub struct JudgeEnv {
    pub log: Option<PathBuf>,
    pub secrets_file: Option<PathBuf>,
}

/// Where acquisition prompts come from.
pub enum PromptPool {
    /// Reviews, cut to their first tokens when drawn.
    Imdb { reviews: Arc<Vec<Review>>, indices: Vec<usize>, tokens: (usize, usize) },
    /// Ready prompts from a file.
    Items(Vec<PromptItem>),
}

impl PromptPool {
    pub fn len(&self) -> usize {
        match self {
            Self::Imdb { indices, .. } => indices.len(),
            Self::Items(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, i: usize, tokenizer: &Tokenizer, rng: &mut ChaCha8Rng) -> Result<PromptItem> {
        Ok(match self {
            Self::Imdb { reviews, indices, tokens } => {
                let n = rng.random_range(tokens.0..=tokens.1);
                let p = imdb::prompt_of(reviews, indices[i], tokenizer, n)?;
                PromptItem { ids: p.ids, text: p.text }
            }
            Self::Items(v) => v[i].clone(),
        })
    }
}

/// A run's own stream of fresh prompts: a permutation of the pool by the run's seed. The same
/// seed gives every acquisition function the same prompts in the same order.
pub struct PromptStream<'a> {
    pool: &'a PromptPool,
    tokenizer: &'a Tokenizer,
    order: Vec<usize>,
    pub consumed: usize,
    rng: ChaCha8Rng,
}

impl<'a> PromptStream<'a> {
    pub fn new(pool: &'a PromptPool, tokenizer: &'a Tokenizer, seed: u64) -> Self {
        let mut order: Vec<usize> = (0..pool.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x05ee_d0f9_e0e5));
        Self { pool, tokenizer, order, consumed: 0, rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// The next `n` prompts; an error once the pool is exhausted.
    pub fn take(&mut self, n: usize) -> apl_engine::model::Result<Vec<PromptItem>> {
        if self.consumed + n > self.order.len() {
            return Err(apl_engine::model::ModelError::Input(format!(
                "the prompt pool is exhausted: {} of {} used, {n} more asked for",
                self.consumed,
                self.order.len()
            )));
        }
        let mut out = Vec::with_capacity(n);
        for k in self.consumed..self.consumed + n {
            out.push(
                self.pool
                    .get(self.order[k], self.tokenizer, &mut self.rng)
                    .map_err(|e| apl_engine::model::ModelError::Input(crate::error::describe(&*e)))?,
            );
        }
        self.consumed += n;
        Ok(out)
    }

    /// Skips prompts already used by finished phases (when resuming).
    pub fn skip(&mut self, n: usize) -> apl_engine::model::Result<()> {
        self.take(n).map(|_| ())
    }
}

/// How well the sentiment oracle does on reviews it never saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OracleReport {
    pub name: String,
    pub train_reviews: usize,
    pub test_reviews: usize,
    pub vocabulary: usize,
    /// Accuracy on whole held-out reviews.
    pub accuracy_full_reviews: f64,
    /// Accuracy on the first 60 words of the same reviews (closer to what it judges).
    pub accuracy_60_words: f64,
    pub seconds: f64,
}

pub struct Setup {
    pub base: Checkpoint,
    pub tokenizer: Tokenizer,
    pub pool: PromptPool,
    pub eval: Vec<EvalPrompt>,
    /// Labels the acquired pairs (`settings.labeller`).
    pub labeller: Arc<dyn Oracle>,
    /// Judges policy against baseline (`settings.eval.judge`; the labeller itself when they are
    /// the same kind).
    pub judge: Arc<dyn Oracle>,
    pub oracle_report: Option<OracleReport>,
}

/// Trains the naive-Bayes sentiment oracle on the split's training reviews and measures it
/// on the held-out ones.
pub fn sentiment_oracle(reviews: &[Review], split: &imdb::Split) -> (SentimentOracle, OracleReport) {
    let t = Instant::now();
    let docs = |idx: &[usize]| -> Vec<(&str, u8)> {
        idx.iter().map(|&i| (reviews[i].text.as_str(), reviews[i].label)).collect()
    };
    let train = docs(&split.oracle_train);
    let test = docs(&split.oracle_test);
    let nb = NaiveBayes::train(&train, 2, 1.0);
    let snippets: Vec<String> =
        test.iter().map(|(t, _)| t.split_whitespace().take(60).collect::<Vec<_>>().join(" ")).collect();
    let snippet_docs: Vec<(&str, u8)> = snippets.iter().zip(&test).map(|(s, (_, l))| (s.as_str(), *l)).collect();
    let report = OracleReport {
        name: "imdb-sentiment-nb".into(),
        train_reviews: train.len(),
        test_reviews: test.len(),
        vocabulary: nb.vocab_size(),
        accuracy_full_reviews: nb.accuracy(&test),
        accuracy_60_words: nb.accuracy(&snippet_docs),
        seconds: t.elapsed().as_secs_f64(),
    };
    (SentimentOracle { model: nb }, report)
}

impl Setup {
    /// Loads the data, splits it, trains or builds the labeller and the judge. `imdb_csv` is
    /// the IMDB file to use when the task names none.
    pub fn build(cfg: &ExperimentConfig, base: Checkpoint, imdb_csv: Option<&Path>, env: &JudgeEnv) -> Result<Self> {
        let tokenizer = base.tokenizer().context("the experiment needs the model's tokenizer")?.clone();
        let mut oracle_report = None;
        let mut sentiment = None;
        let (pool, eval) = match cfg.task.kind {
            Task::Imdb => {
                let csv = cfg.task.path.as_deref().or(imdb_csv).context("no IMDB CSV given")?;
                let reviews = Arc::new(imdb::read_reviews(csv)?);
                let split = imdb::split(
                    &reviews,
                    cfg.settings.eval.prompts,
                    cfg.oracle_test_reviews,
                    cfg.task.min_chars,
                    cfg.task.split_seed,
                );
                let mut rng = ChaCha8Rng::seed_from_u64(cfg.task.split_seed);
                let (lo, hi) = cfg.task.prompt_tokens;
                let eval = split
                    .eval
                    .iter()
                    .map(|&i| {
                        let p = imdb::prompt_of(&reviews, i, &tokenizer, rng.random_range(lo..=hi))?;
                        Ok(EvalPrompt { item: PromptItem { ids: p.ids, text: p.text }, reference: None })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let s = &cfg.settings;
                if [s.labeller, s.eval.judge].contains(&Labeller::Sentiment) {
                    let (o, r) = sentiment_oracle(&reviews, &split);
                    oracle_report = Some(r);
                    sentiment = Some(Arc::new(o));
                }
                (PromptPool::Imdb { reviews, indices: split.pool, tokens: cfg.task.prompt_tokens }, eval)
            }
            Task::Summarize | Task::Generic => {
                let path = cfg.task.path.as_deref().context("task.path is required")?;
                let records = prompts::read(path, cfg.task.kind == Task::Summarize)?;
                let mut order: Vec<usize> = (0..records.len()).collect();
                order.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.task.split_seed));
                let n_eval = cfg.settings.eval.prompts.min(records.len() / 2);
                let item = |i: usize| -> Result<PromptItem> {
                    Ok(PromptItem { ids: tokenizer.encode(&records[i].prompt, true)?, text: records[i].prompt.clone() })
                };
                let eval = order[..n_eval]
                    .iter()
                    .map(|&i| Ok(EvalPrompt { item: item(i)?, reference: records[i].reference.clone() }))
                    .collect::<Result<Vec<_>>>()?;
                let pool = order[n_eval..].iter().map(|&i| item(i)).collect::<Result<Vec<_>>>()?;
                (PromptPool::Items(pool), eval)
            }
        };
        let make = |kind: Labeller| -> Result<Arc<dyn Oracle>> {
            let s = &cfg.settings;
            Ok(match kind {
                Labeller::Sentiment => {
                    sentiment.clone().context("the sentiment oracle needs the IMDB task")? as Arc<dyn Oracle>
                }
                Labeller::Length => Arc::new(LengthOracle),
                Labeller::Judge => {
                    let key = api_key(&s.judge, env.secrets_file.as_deref())?;
                    let ledger = match &env.log {
                        Some(p) => Ledger::open(p)?,
                        None => Ledger::in_memory(),
                    };
                    Arc::new(LlmJudge::new(s.judge.clone(), key, Arc::new(ledger))?)
                }
                Labeller::LocalJudge => Arc::new(LocalJudge::new(
                    Model::from_checkpoint(&base)?,
                    tokenizer.clone(),
                    s.judge.clone(),
                    s.acquire.batch_size,
                )),
                Labeller::Raters => anyhow::bail!("an experiment needs an automatic labeller, not human raters"),
            })
        };
        let labeller = make(cfg.settings.labeller)?;
        let judge = if cfg.settings.eval.judge == cfg.settings.labeller {
            labeller.clone()
        } else {
            make(cfg.settings.eval.judge)?
        };
        Ok(Self { base, tokenizer, pool, eval, labeller, judge, oracle_report })
    }
}
