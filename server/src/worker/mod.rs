//! The one owner of the model. Work that needs the model runs here one piece at a time on a
//! blocking thread, so the async server never stalls on a forward pass: the admin's pair
//! preview, and the jobs of the database queue (`jobs`), whose progress goes back to the
//! database for any server process to stream.

pub mod jobs;
pub mod progress;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use apl_shared::{Completion, Pair, PairRequest};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::judge::destination::Destinations;
use crate::judge::ledger::Ledger;
use crate::judge::{JudgeError, JudgeSettings, LlmJudge};
use crate::remote::Remote;
use apl_engine::data::imdb::{Prompt, Review};
use apl_engine::model::{
    Checkpoint, Model, ModelError, SampleRequest, SamplingConfig, Tokenizer, sample, sequence_logprobs,
};
use apl_engine::oracle::sentiment::{NaiveBayes, SentimentOracle};
use apl_shared::settings::RemoteBackend;
use jobs::JobError;

/// What the worker is built from.
pub struct WorkerParts {
    /// The starting model, as loaded (policies are trained views of it).
    pub checkpoint: Checkpoint,
    pub model: Model,
    pub tokenizer: Tokenizer,
    /// The IMDB prompt pool (empty when the server runs without it).
    pub prompts: Vec<Prompt>,
    /// IMDB reviews with labels, for the sentiment oracle (empty: no sentiment oracle).
    pub reviews: Vec<Review>,
    pub sampling: SamplingConfig,
    /// Where trained checkpoints and judge audit logs are written.
    pub data_dir: PathBuf,
    /// Where judge API keys are looked up after the environment.
    pub secrets_file: Option<PathBuf>,
    /// Where projects' LLM judges may call (`apl serve --judge-allow`).
    pub judge_destinations: Arc<Destinations>,
    /// The operator's trainer commands by name (`apl serve --trainer-commands`), which projects
    /// choose with `loop_settings.trainer`.
    pub trainer_commands: std::collections::BTreeMap<String, String>,
}

pub struct Worker {
    checkpoint: Checkpoint,
    model: Model,
    tokenizer: Tokenizer,
    prompts: Vec<Prompt>,
    reviews: Vec<Review>,
    sampling: SamplingConfig,
    data_dir: PathBuf,
    secrets_file: Option<PathBuf>,
    judge_destinations: Arc<Destinations>,
    trainer_commands: std::collections::BTreeMap<String, String>,
    busy: Mutex<()>,
    wake: tokio::sync::Notify,
    sentiment: OnceLock<SentimentOracle>,
}

impl Worker {
    pub fn new(p: WorkerParts) -> Self {
        Self {
            checkpoint: p.checkpoint,
            model: p.model,
            tokenizer: p.tokenizer,
            prompts: p.prompts,
            reviews: p.reviews,
            sampling: p.sampling,
            data_dir: p.data_dir,
            secrets_file: p.secrets_file,
            judge_destinations: p.judge_destinations,
            trainer_commands: p.trainer_commands,
            busy: Mutex::new(()),
            wake: tokio::sync::Notify::new(),
            sentiment: OnceLock::new(),
        }
    }

    /// The served model's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The most positions (prompt and completion tokens) the served model takes.
    pub fn max_positions(&self) -> usize {
        self.model.max_positions()
    }

    pub fn num_prompts(&self) -> usize {
        self.prompts.len()
    }

    /// The IMDB prompt pool's texts, in pool order.
    pub fn prompt_texts(&self) -> Vec<String> {
        self.prompts.iter().map(|p| p.text.clone()).collect()
    }

    /// A project's LLM judge; its audit log (and cache) is `DATA_DIR/judge/<project>.jsonl`.
    pub fn llm_judge(&self, project_id: &str, settings: &JudgeSettings) -> Result<LlmJudge, JudgeError> {
        let key = crate::judge::api_key(settings.api_key_env.as_ref(), self.secrets_file.as_deref())?;
        let ledger = Ledger::open(&self.judge_log(project_id))?;
        LlmJudge::new(settings.clone(), key, Arc::new(ledger), self.judge_destinations.clone())
    }

    /// A model server for a project's sampling and scoring (`loop_settings.backend`), reached
    /// under the same destination policy as the judges, with its key from the environment or
    /// the secrets file.
    pub fn remote(&self, settings: &RemoteBackend) -> Result<Remote, JobError> {
        let key = crate::judge::api_key(settings.api_key_env.as_ref(), self.secrets_file.as_deref())?;
        Ok(Remote::new(settings.clone(), key, self.tokenizer.clone(), self.judge_destinations.clone())?)
    }

    /// The operator's trainer command `name`.
    pub fn trainer_command(&self, name: &str) -> Result<&str, JobError> {
        self.trainer_commands.get(name).map(String::as_str).ok_or_else(|| {
            let known: Vec<&str> = self.trainer_commands.keys().map(String::as_str).collect();
            JobError::Cannot(format!(
                "trainer.name: this server has no trainer command {name:?} (it has: {}; the operator lists them with \
                 apl serve --trainer-commands)",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ))
        })
    }

    /// The starting model as an HF directory a trainer command loads: the model's own
    /// directory when it is a whole one, else written once under the data directory.
    pub fn trainer_base(&self) -> Result<PathBuf, JobError> {
        if self.checkpoint.source.join("tokenizer_config.json").exists() {
            return Ok(self.checkpoint.source.clone());
        }
        let dir = self.data_dir.join("trainer-base");
        if !dir.join("tokenizer_config.json").exists() {
            crate::trl::write_base(&self.checkpoint, &self.tokenizer, &dir)?;
        }
        Ok(dir)
    }

    pub fn judge_log(&self, project_id: &str) -> PathBuf {
        self.data_dir.join("judge").join(format!("{project_id}.jsonl"))
    }

    /// Tells the job loop a job was queued.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The naive-Bayes sentiment oracle, trained on first use from every IMDB review.
    pub fn sentiment(&self) -> Result<&SentimentOracle, JobError> {
        if self.reviews.is_empty() {
            return Err(JobError::Cannot(
                "the sentiment oracle needs the IMDB reviews, and this server runs without them".into(),
            ));
        }
        Ok(self.sentiment.get_or_init(|| {
            let docs: Vec<(&str, u8)> = self.reviews.iter().map(|r| (r.text.as_str(), r.label)).collect();
            SentimentOracle { model: NaiveBayes::train(&docs, 2, 1.0) }
        }))
    }

    /// Two completions of one prompt (given, or drawn from the IMDB pool), with their
    /// log-probabilities under the model.
    pub fn pair(&self, req: &PairRequest) -> Result<Pair, ModelError> {
        let _guard = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let t = Instant::now();
        let seed = req.seed.unwrap_or_else(|| rand::rng().random());
        let (text, ids) = match &req.prompt {
            Some(p) if p.trim().is_empty() => return Err(ModelError::Input("prompt is empty".into())),
            Some(p) if p.chars().count() > 2000 => {
                return Err(ModelError::Input(format!(
                    "prompt has {} characters; the limit is 2000",
                    p.chars().count()
                )));
            }
            Some(p) => (p.clone(), self.tokenizer.encode(p, true)?),
            None if self.prompts.is_empty() => {
                return Err(ModelError::Input("no prompt given and no prompt pool loaded".into()));
            }
            None => {
                let i = ChaCha8Rng::seed_from_u64(seed).random_range(0..self.prompts.len());
                (self.prompts[i].text.clone(), self.prompts[i].ids.clone())
            }
        };
        let cfg = SamplingConfig { seed, ..self.sampling.clone() };
        let reqs = [SampleRequest::new(&ids), SampleRequest::new(&ids)];
        let samples = sample(&self.model, &reqs, &cfg, self.tokenizer.eos_ids(), |_| {})?;
        // Log-probs without the end token, as the scorer sees the completion.
        let trimmed: Vec<Vec<u32>> = samples
            .iter()
            .map(|s| s.tokens.iter().copied().filter(|t| !self.tokenizer.eos_ids().contains(t)).collect())
            .collect();
        let pairs: Vec<(&[u32], &[u32])> =
            trimmed.iter().filter(|c| !c.is_empty()).map(|c| (ids.as_slice(), c.as_slice())).collect();
        let mut scores = sequence_logprobs(&self.model, &pairs, 2, |_| {})?.into_iter();
        let mut completion = |c: &Vec<u32>| -> Result<Completion, ModelError> {
            let logprob = if c.is_empty() { 0.0 } else { scores.next().map_or(0.0, |s| s.sum) };
            Ok(Completion { text: self.tokenizer.decode_text(c)?, tokens: c.len(), logprob })
        };
        let completions = [completion(&trimmed[0])?, completion(&trimmed[1])?];
        Ok(Pair {
            prompt: text,
            completions,
            seed,
            temperature: cfg.temperature,
            elapsed_ms: t.elapsed().as_millis() as u64,
        })
    }
}
