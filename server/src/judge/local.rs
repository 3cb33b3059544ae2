//! A judge with no API: any loaded model reads the task's judge prompt and we compare the
//! log-probabilities of it answering "A" and "B" right after "Preferred:". A forced choice that
//! cannot be malformed, deterministic (so self-consistency is 1 by construction; position bias is
//! what to watch, and the same random / both-orders controls as the LLM judge apply).
//!
//! Instruction-tuned checkpoints whose tokenizer has ChatML's `<|im_start|>` get the chat
//! layout; others the plain text of the messages.

use super::llm::{Side, combine, random_first};
use super::template::render;
use super::{JudgeError, JudgeOrder, JudgeSettings};
use apl_engine::model::{Model, ModelError, Tokenizer, sequence_logprobs};
use apl_engine::oracle::{Comparison, Judgement, Oracle, OracleError};

/// Why the local judge could not answer: its prompt, or the model.
#[derive(Debug, thiserror::Error)]
pub enum LocalJudgeError {
    #[error(transparent)]
    Prompt(#[from] JudgeError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

pub struct LocalJudge {
    model: Model,
    tokenizer: Tokenizer,
    settings: JudgeSettings,
    batch_size: usize,
}

impl LocalJudge {
    /// Uses the settings' task, template, order, disagreement rule and seed; the API fields are
    /// ignored. `model` shares its weights with the caller's (a model's clone copies no tensor).
    pub fn new(model: Model, tokenizer: Tokenizer, settings: JudgeSettings, batch_size: usize) -> Self {
        Self { model, tokenizer, settings, batch_size: batch_size.max(1) }
    }

    fn prompt_text(&self, c: &Comparison, first: Side) -> Result<String, JudgeError> {
        let (x, y) = match first {
            Side::A => (c.a, c.b),
            Side::B => (c.b, c.a),
        };
        let r = render(self.settings.task, self.settings.template.as_ref(), c.prompt, x, y)?;
        Ok(if self.tokenizer.token_to_id("<|im_start|>").is_some() {
            format!(
                "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\nPreferred:",
                r.system, r.user
            )
        } else {
            format!("{}\n\n{}\n\nPreferred:", r.system, r.user)
        })
    }

    /// Per call: log p(" A") - log p(" B") for each (pair, order) asked.
    pub fn margins(&self, asks: &[(Comparison, Side)]) -> Result<Vec<f32>, LocalJudgeError> {
        let letter_a = self.tokenizer.encode(" A", false)?;
        let letter_b = self.tokenizer.encode(" B", false)?;
        let prompts: Vec<Vec<u32>> = asks
            .iter()
            .map(|(c, first)| Ok(self.tokenizer.encode(&self.prompt_text(c, *first)?, true)?))
            .collect::<Result<_, LocalJudgeError>>()?;
        let mut seqs: Vec<(&[u32], &[u32])> = Vec::with_capacity(asks.len() * 2);
        for p in &prompts {
            seqs.push((p, &letter_a));
            seqs.push((p, &letter_b));
        }
        let lp = sequence_logprobs(&self.model, &seqs, self.batch_size, |_| {})?;
        Ok(lp.chunks(2).map(|ab| ab[0].sum - ab[1].sum).collect())
    }
}

impl Oracle for LocalJudge {
    fn name(&self) -> String {
        "local:logprob".into()
    }

    fn judge(&self, item: &Comparison) -> Result<Judgement, OracleError> {
        Ok(self.judge_all(std::slice::from_ref(item))?.remove(0))
    }

    fn judge_all(&self, items: &[Comparison]) -> Result<Vec<Judgement>, OracleError> {
        let mut asks = Vec::new();
        for c in items {
            match self.settings.order {
                JudgeOrder::Random => asks.push((*c, random_first(self.settings.seed, c))),
                JudgeOrder::Both => {
                    asks.push((*c, Side::A));
                    asks.push((*c, Side::B));
                }
            }
        }
        let margins = self.margins(&asks).map_err(|e| OracleError::new(self.name(), e))?;
        let per = if self.settings.order == JudgeOrder::Both { 2 } else { 1 };
        Ok(asks
            .chunks(per)
            .zip(margins.chunks(per))
            .map(|(a, m)| {
                // Un-swap: the letter "A" names whichever text was shown first.
                let choices: Vec<Option<Side>> = a
                    .iter()
                    .zip(m)
                    .map(|((_, first), &m)| {
                        let shown_first = m > 0.0;
                        Some(match (shown_first, first) {
                            (true, f) => *f,
                            (false, Side::A) => Side::B,
                            (false, Side::B) => Side::A,
                        })
                    })
                    .collect();
                let (preference, _) = combine(&choices, self.settings.on_disagreement);
                let detail: Vec<String> = m.iter().map(|m| format!("{m:+.3}")).collect();
                Judgement {
                    preference,
                    rationale: Some(format!("log p(first) - log p(second) = {}", detail.join(", "))),
                }
            })
            .collect())
    }
}
