//! Win-rates: the share of prompts on which the policy's sample beats the baseline's (the
//! starting model's sample, or a reference text), ties and undecided judgements counting half,
//! with standard errors over prompts and over seeds.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::backend::{ModelBackend, Role, SampleJob};
use crate::model::Tokenizer;

/// How evaluation samples are drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSampling {
    /// One length drawn per prompt from this range.
    pub completion_tokens: (usize, usize),
    /// Suppress end-of-sequence until the drawn length.
    pub exact_length: bool,
    pub temperature: f64,
    pub batch_size: usize,
    /// Draws the completion lengths; none: the sampling seed does. Two models sampled with one
    /// length seed (and any sampling seeds) get the same length on every prompt.
    pub length_seed: Option<u64>,
}

/// The completion length of each of `n` prompts: from the length seed only (the sampling seed
/// when there is none), so two models sampled with one length seed get the same length on
/// every prompt whatever their sampling seeds.
pub fn completion_lengths(n: usize, how: &EvalSampling, seed: u64) -> Vec<usize> {
    let mut len_rng = ChaCha8Rng::seed_from_u64(how.length_seed.unwrap_or(seed) ^ 0xe7a1);
    let (lo, hi) = how.completion_tokens;
    (0..n).map(|_| len_rng.random_range(lo..=hi.max(lo))).collect()
}

/// Samples one completion per prompt from `role` of `backend`, with the lengths of
/// [`completion_lengths`].
pub fn sample_completions(
    backend: &dyn ModelBackend,
    role: Role,
    tokenizer: &Tokenizer,
    prompts: &[&[u32]],
    how: &EvalSampling,
    seed: u64,
    progress: &dyn Fn(&str, usize, usize),
) -> crate::model::Result<Vec<String>> {
    let lengths = completion_lengths(prompts.len(), how, seed);
    let job = SampleJob {
        prompts,
        per_prompt: 1,
        lengths: &lengths,
        exact_length: how.exact_length,
        temperature: how.temperature,
        max_new_tokens: how.completion_tokens.1.max(how.completion_tokens.0),
        seed,
        batch_size: how.batch_size,
        pass_seed: |seed, c| seed.wrapping_add(c as u64 * 7919),
    };
    let eos = tokenizer.eos_ids();
    let samples = backend.sample(role, &job, &|d, n| progress("evaluation samples", d, n))?;
    samples
        .into_iter()
        .map(|s| {
            let kept: Vec<u32> = s.tokens.into_iter().filter(|t| !eos.contains(t)).collect();
            tokenizer.decode_text(&kept)
        })
        .collect()
}

pub use apl_shared::Outcome;

pub use apl_shared::WinRate;

pub fn win_rate(outcomes: &[Outcome]) -> WinRate {
    let n = outcomes.len();
    let scores: Vec<f64> = outcomes.iter().map(|o| o.score()).collect();
    let (mean, stderr) = mean_and_stderr(&scores);
    let count = |k: Outcome| outcomes.iter().filter(|&&o| o == k).count();
    WinRate {
        win_rate: mean,
        stderr,
        n,
        wins: count(Outcome::Win),
        ties: count(Outcome::Tie),
        losses: count(Outcome::Loss),
    }
}

/// Mean and its standard error (sample std with ddof 1, over sqrt(n)); 0 error for n < 2.
pub fn mean_and_stderr(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, (var / n as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_and_baseline_share_lengths_through_the_length_seed() {
        let how = |length_seed| EvalSampling {
            completion_tokens: (16, 24),
            exact_length: true,
            temperature: 0.25,
            batch_size: 8,
            length_seed,
        };
        // Sampling seeds 1 (policy) and 2 (baseline), one length seed: the same lengths.
        let policy = completion_lengths(200, &how(Some(9)), 1);
        assert_eq!(policy, completion_lengths(200, &how(Some(9)), 2));
        assert!(policy.iter().all(|l| (16..=24).contains(l)) && policy.iter().any(|&l| l != policy[0]));
        // Without one, each sample's lengths follow its own seed and differ.
        assert_ne!(completion_lengths(200, &how(None), 1), completion_lengths(200, &how(None), 2));
    }

    #[test]
    fn ties_count_half_and_stderr_is_the_sample_one() {
        use Outcome::*;
        let w = win_rate(&[Win, Win, Tie, Loss]);
        // scores 1, 1, .5, 0: mean .625; deviations .375 .375 -.125 -.625 -> squares sum .6875;
        // var = .6875 / 3 = .229167; se = sqrt(.229167 / 4) = .239357
        assert_eq!((w.wins, w.ties, w.losses, w.n), (2, 1, 1, 4));
        assert!((w.win_rate - 0.625).abs() < 1e-12);
        assert!((w.stderr - 0.239357).abs() < 1e-6);
        assert_eq!(mean_and_stderr(&[0.7]), (0.7, 0.0));
    }
}
