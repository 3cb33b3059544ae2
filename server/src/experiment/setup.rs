//! Everything an experiment needs before its first phase: the starting checkpoint, the prompt
//! pool, the held-out evaluation prompts (with reference texts for TL;DR), the labeller and the
//! evaluation judge. Built once and shared by every (acquisition, seed) run.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use apl_shared::settings::Backend;
use apl_shared::{Labeller, Task};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::config::ExperimentConfig;
use crate::judge::destination::Destinations;
use crate::judge::ledger::Ledger;
use crate::judge::local::LocalJudge;
use crate::judge::{LlmJudge, api_key};
use crate::remote::Remote;
use apl_engine::acquire::PromptItem;
use apl_engine::data::imdb::{self, Review};
use apl_engine::data::prompts;
use apl_engine::model::{Checkpoint, Model, Tokenizer};
use apl_engine::oracle::Oracle;
use apl_engine::oracle::length::LengthOracle;
use apl_engine::oracle::noisy::NoisyRater;
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

/// A run's own stream of prompts: the pool in an order drawn from the run's seed, so every
/// acquisition function of one seed sees the same prompts in the same order. When the pool runs
/// out (hybrid at the paper's factors asks for m * 32 * 8 prompts a phase), another pass starts
/// in a new order, as the reference code's cycling prompt loader does; `TaskConfig::cycle_prompts`
/// turns that off. A prompt whose text is an evaluation prompt's is passed over.
pub struct PromptStream<'a> {
    pool: &'a PromptPool,
    tokenizer: &'a Tokenizer,
    order: Vec<usize>,
    seed: u64,
    cycle: bool,
    /// Evaluation prompts' texts.
    held_out: &'a HashSet<String>,
    /// Positions taken from the stream so far, over all passes (resuming skips as many).
    pub consumed: usize,
    /// Prompts passed over for being an evaluation prompt.
    pub held_out_skipped: usize,
    rng: ChaCha8Rng,
}

impl<'a> PromptStream<'a> {
    pub fn new(
        pool: &'a PromptPool,
        tokenizer: &'a Tokenizer,
        seed: u64,
        cycle: bool,
        held_out: &'a HashSet<String>,
    ) -> Self {
        Self {
            pool,
            tokenizer,
            order: Self::pass(pool.len(), seed, 0),
            seed,
            cycle,
            held_out,
            consumed: 0,
            held_out_skipped: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The order of pass `k` over a pool of `n` (pass 0 is the order runs always had).
    fn pass(n: usize, seed: u64, k: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        let s = seed ^ 0x05ee_d0f9_e0e5 ^ (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(s));
        order
    }

    /// How many passes over the pool have begun.
    pub fn passes(&self) -> usize {
        if self.order.is_empty() { 0 } else { self.consumed.div_ceil(self.order.len()) }
    }

    /// The next `n` prompts; an error once the pool is exhausted and cycling is off, or when
    /// it holds nothing but evaluation prompts.
    pub fn take(&mut self, n: usize) -> apl_engine::model::Result<Vec<PromptItem>> {
        let mut out = Vec::with_capacity(n);
        let mut skipped_in_a_row = 0;
        while out.len() < n {
            if skipped_in_a_row > self.order.len() {
                return Err(self.exhausted(n - out.len()));
            }
            let item = self.next_raw().map_err(|e| e.unwrap_or_else(|| self.exhausted(n - out.len())))?;
            if self.held_out.contains(item.text.trim()) {
                self.held_out_skipped += 1;
                skipped_in_a_row += 1;
                continue;
            }
            skipped_in_a_row = 0;
            out.push(item);
        }
        Ok(out)
    }

    /// Moves to position `consumed` of the stream (resuming after finished phases): from there
    /// the same prompts are drawn as an uninterrupted run would draw.
    pub fn skip_to(&mut self, consumed: usize) -> apl_engine::model::Result<()> {
        while self.consumed < consumed {
            self.next_raw().map_err(|e| e.unwrap_or_else(|| self.exhausted(consumed - self.consumed)))?;
        }
        Ok(())
    }

    /// The prompt at the stream's position, moving past it (None as the error: exhausted).
    fn next_raw(&mut self) -> Result<PromptItem, Option<apl_engine::model::ModelError>> {
        let len = self.order.len();
        if len == 0 || (!self.cycle && self.consumed >= len) {
            return Err(None);
        }
        let (k, at) = (self.consumed / len, self.consumed % len);
        if at == 0 && k > 0 {
            self.order = Self::pass(len, self.seed, k);
        }
        // Drawn even when skipping, so the prompt-length generator is where the run left it.
        let item = self
            .pool
            .get(self.order[at], self.tokenizer, &mut self.rng)
            .map_err(|e| Some(apl_engine::model::ModelError::Input(crate::error::describe(&*e))))?;
        self.consumed += 1;
        Ok(item)
    }

    fn exhausted(&self, more: usize) -> apl_engine::model::ModelError {
        let len = self.order.len();
        apl_engine::model::ModelError::Input(format!(
            "the prompt pool is exhausted: {} of {len} used ({} passed over as evaluation prompts), {more} more \
             asked for{}",
            self.consumed.min(len),
            self.held_out_skipped,
            if self.cycle { "" } else { "; task.cycle_prompts reuses the pool" }
        ))
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
    /// A second sentiment classifier, trained on reviews the labeller never saw, that judges
    /// every evaluation too (`held_out_judge`).
    pub held_out_judge: Option<Arc<dyn Oracle>>,
    pub held_out_report: Option<OracleReport>,
    /// The evaluation prompts' texts (trimmed): an acquisition prompt with one of them is
    /// passed over.
    pub held_out: HashSet<String>,
    /// Records (or reviews) left out for repeating an earlier one's text.
    pub duplicates: usize,
    /// The model server sampling and scoring (`settings.backend`), checked; None: this engine.
    pub remote: Option<Remote>,
}

/// Trains the naive-Bayes sentiment oracle on the reviews `train` and measures it on the
/// split's held-out ones.
pub fn sentiment_oracle(
    reviews: &[Review],
    split: &imdb::Split,
    train: &[usize],
    name: &str,
) -> (SentimentOracle, OracleReport) {
    let t = Instant::now();
    let docs = |idx: &[usize]| -> Vec<(&str, u8)> {
        idx.iter().map(|&i| (reviews[i].text.as_str(), reviews[i].label)).collect()
    };
    let train = docs(train);
    let test = docs(&split.oracle_test);
    let nb = NaiveBayes::train(&train, 2, 1.0);
    let snippets: Vec<String> =
        test.iter().map(|(t, _)| t.split_whitespace().take(60).collect::<Vec<_>>().join(" ")).collect();
    let snippet_docs: Vec<(&str, u8)> = snippets.iter().zip(&test).map(|(s, (_, l))| (s.as_str(), *l)).collect();
    let report = OracleReport {
        name: name.into(),
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
        let duplicates;
        let (mut held_out_judge, mut held_out_report) = (None, None);
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
                duplicates = split.duplicates;
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
                // With a held-out judge, the labeller trains on the first half of the oracle's
                // reviews and the judge on the second (the list is in the split's random order).
                let half = split.oracle_train.len() / 2;
                let (mine, theirs) = if cfg.held_out_judge {
                    split.oracle_train.split_at(half)
                } else {
                    (&split.oracle_train[..], &[][..])
                };
                if [s.labeller, s.eval.judge].contains(&Labeller::Sentiment) {
                    let (o, r) = sentiment_oracle(&reviews, &split, mine, "imdb-sentiment-nb");
                    oracle_report = Some(r);
                    sentiment = Some(Arc::new(o));
                }
                if cfg.held_out_judge {
                    let (o, r) = sentiment_oracle(&reviews, &split, theirs, "imdb-sentiment-nb-held-out");
                    held_out_report = Some(r);
                    held_out_judge = Some(Arc::new(o) as Arc<dyn Oracle>);
                }
                (PromptPool::Imdb { reviews, indices: split.pool, tokens: cfg.task.prompt_tokens }, eval)
            }
            Task::Summarize | Task::Generic => {
                let path = cfg.task.path.as_deref().context("task.path is required")?;
                let mut records = prompts::read(path, cfg.task.kind == Task::Summarize)?;
                // One record per prompt text, so no prompt is both evaluated and trained on.
                let mut seen = HashSet::new();
                let before = records.len();
                records.retain(|r| seen.insert(r.prompt.trim().to_string()));
                duplicates = before - records.len();
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
                    let key = api_key(s.judge.api_key_env.as_ref(), env.secrets_file.as_deref())?;
                    let ledger = match &env.log {
                        Some(p) => Ledger::open(p)?,
                        None => Ledger::in_memory(),
                    };
                    // The operator's own command: any destination (the server's policy is for
                    // what project admins configure).
                    Arc::new(LlmJudge::new(s.judge.clone(), key, Arc::new(ledger), Arc::new(Destinations::any()))?)
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
        let oracle = make(cfg.settings.labeller)?;
        // The evaluation judge is the oracle itself, never its noisy rater.
        let judge = if cfg.settings.eval.judge == cfg.settings.labeller {
            oracle.clone()
        } else {
            make(cfg.settings.eval.judge)?
        };
        let labeller = match cfg.rater_noise {
            Some(noise) => Arc::new(NoisyRater { inner: oracle, noise }) as Arc<dyn Oracle>,
            None => oracle,
        };
        let held_out = eval.iter().map(|e| e.item.text.trim().to_string()).collect();
        let remote = match &cfg.settings.backend {
            Backend::Local => None,
            Backend::Remote(r) => {
                let key = api_key(r.api_key_env.as_ref(), env.secrets_file.as_deref())?;
                let remote = Remote::new(r.clone(), key, tokenizer.clone(), Arc::new(Destinations::any()))?;
                let checked = remote.check().with_context(|| format!("checking the model server at {}", r.base_url))?;
                tracing::info!(
                    base_url = %r.base_url,
                    d_same = checked.d_same,
                    "model server checked: tokenisation and prompt log-probs agree"
                );
                Some(remote)
            }
        };
        Ok(Self {
            base,
            tokenizer,
            pool,
            eval,
            labeller,
            judge,
            oracle_report,
            held_out_judge,
            held_out_report,
            held_out,
            duplicates,
            remote,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/llama/tokenizer.json");
        Tokenizer::from_file(&path).unwrap()
    }

    fn pool(n: usize) -> PromptPool {
        PromptPool::Items((0..n).map(|i| PromptItem { ids: vec![i as u32], text: format!("prompt {i}") }).collect())
    }

    fn texts(items: &[PromptItem]) -> Vec<String> {
        items.iter().map(|p| p.text.clone()).collect()
    }

    #[test]
    fn the_stream_cycles_through_new_orders_and_resumes_in_place() {
        let (tok, pool, none) = (tokenizer(), pool(10), HashSet::new());
        let mut s = PromptStream::new(&pool, &tok, 3, true, &none);
        let first = texts(&s.take(10).unwrap());
        let second = texts(&s.take(10).unwrap());
        let third = texts(&s.take(5).unwrap());
        assert_eq!((s.consumed, s.passes()), (25, 3));
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        // Each pass holds every prompt once, in its own order.
        assert_eq!(sorted(&first), sorted(&second));
        assert_ne!(first, second);
        // Resuming at position 12 draws what the uninterrupted stream drew from there.
        let mut r = PromptStream::new(&pool, &tok, 3, true, &none);
        r.skip_to(12).unwrap();
        let rest = texts(&r.take(13).unwrap());
        assert_eq!(rest, [&second[2..], &third[..]].concat());
        // Without cycling, the pool's end is an error that says how to go on.
        let mut once = PromptStream::new(&pool, &tok, 3, false, &none);
        once.take(8).unwrap();
        let err = once.take(3).unwrap_err().to_string();
        assert!(err.contains("exhausted") && err.contains("cycle_prompts"), "{err}");
    }

    #[test]
    fn evaluation_prompts_are_passed_over() {
        let (tok, pool) = (tokenizer(), pool(6));
        let held_out: HashSet<String> = ["prompt 2".to_string(), "prompt 4".to_string()].into();
        let mut s = PromptStream::new(&pool, &tok, 0, true, &held_out);
        let got = texts(&s.take(8).unwrap());
        assert!(got.iter().all(|t| !held_out.contains(t)), "{got:?}");
        assert_eq!(s.held_out_skipped, s.consumed - 8);
        // A pool of nothing but evaluation prompts is an error, not an endless loop.
        let all: HashSet<String> = (0..6).map(|i| format!("prompt {i}")).collect();
        let err = PromptStream::new(&pool, &tok, 0, true, &all).take(1).unwrap_err().to_string();
        assert!(err.contains("exhausted"), "{err}");
    }
}
