//! The one owner of the model. Requests that need the model queue here and run one at a time
//! on a blocking thread, so the async server never stalls on a forward pass.
//!
//! For now it serves single pair samples; the job queue (generate, acquire, train, evaluate),
//! with progress streamed to the browser, builds on this.

use std::sync::Mutex;
use std::time::Instant;

use apl_shared::{Completion, Pair, PairRequest};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::imdb::Prompt;
use crate::model::{Model, ModelError, SampleRequest, SamplingConfig, Tokenizer, sample, sequence_logprobs};

pub struct Worker {
    model: Model,
    tokenizer: Tokenizer,
    prompts: Vec<Prompt>,
    sampling: SamplingConfig,
    busy: Mutex<()>,
}

impl Worker {
    pub fn new(model: Model, tokenizer: Tokenizer, prompts: Vec<Prompt>, sampling: SamplingConfig) -> Self {
        Self { model, tokenizer, prompts, sampling, busy: Mutex::new(()) }
    }

    pub fn num_prompts(&self) -> usize {
        self.prompts.len()
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
            Ok(Completion { text: self.tokenizer.decode(c)?, tokens: c.len(), logprob })
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
