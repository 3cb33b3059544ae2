//! The acquisition functions' decisions, as pure functions over scores, so each can be tested
//! on hand-built numbers. Ties are broken by the seeded RNG, never by index order: in the
//! first phase every margin is 0 and certainty must then be a random choice.

use rand::Rng;
use rand::seq::SliceRandom;

/// Indices of the `k` largest `scores` (all of them if fewer), best first; equal scores in
/// random order.
pub fn top_k(scores: &[f32], k: usize, rng: &mut impl Rng) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.shuffle(rng);
    // Stable sort after the shuffle: ties keep their random order.
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    idx.truncate(k);
    idx
}

/// Certainty: the `k` pairs whose implicit rewards differ most, |r_a - r_b| largest.
pub fn certainty(margins: &[f32], k: usize, rng: &mut impl Rng) -> Vec<usize> {
    let abs: Vec<f32> = margins.iter().map(|m| m.abs()).collect();
    top_k(&abs, k, rng)
}

/// Uncertainty, the inverse of certainty: the `k` pairs with the smallest |r_a - r_b|.
pub fn uncertainty(margins: &[f32], k: usize, rng: &mut impl Rng) -> Vec<usize> {
    let neg: Vec<f32> = margins.iter().map(|m| -m.abs()).collect();
    top_k(&neg, k, rng)
}

/// Entropy: the `k` prompts with the highest predictive entropy estimate.
pub fn entropy(entropies: &[f32], k: usize, rng: &mut impl Rng) -> Vec<usize> {
    top_k(entropies, k, rng)
}

/// Monte Carlo predictive entropy of each prompt: the mean negative log-likelihood of that
/// prompt's own samples, H(x) ~ -1/n sum_i log pi(y_i | x).
pub fn predictive_entropy(nll: &[Vec<f32>]) -> Vec<f32> {
    nll.iter().map(|v| if v.is_empty() { f32::NAN } else { v.iter().sum::<f32>() / v.len() as f32 }).collect()
}

/// The reference implementation's batched estimate, kept to compare with the paper: with the
/// samples of all prompts in one flat list (prompt-major, `n` each), prompt `s` gets the mean
/// of `flat[s..s + n]`, a window sliding by one sample rather than by one prompt. Only the
/// first prompt's window is its own samples.
pub fn windowed_entropy_reference(flat_nll: &[f32], n: usize) -> Vec<f32> {
    let prompts = flat_nll.len() / n.max(1);
    (0..prompts).map(|s| flat_nll[s..s + n].iter().sum::<f32>() / n as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    #[test]
    fn certainty_keeps_the_largest_absolute_margins() {
        let m = [0.1, -0.9, 0.5, 0.0, 0.7];
        assert_eq!(certainty(&m, 2, &mut rng(0)), vec![1, 4]);
        assert_eq!(uncertainty(&m, 2, &mut rng(0)), vec![3, 0]);
        assert_eq!(certainty(&m, 10, &mut rng(0)).len(), 5);
    }

    #[test]
    fn ties_are_broken_by_the_seed_not_the_index() {
        // All margins zero (phase one): the choice must vary with the seed and not always be
        // the first indices.
        let zeros = [0.0f32; 64];
        let picks: Vec<Vec<usize>> = (0..4).map(|s| certainty(&zeros, 8, &mut rng(s))).collect();
        assert!(picks.iter().any(|p| p != &(0..8).collect::<Vec<_>>()));
        assert!(picks.windows(2).any(|w| w[0] != w[1]));
        assert_eq!(certainty(&zeros, 8, &mut rng(7)), certainty(&zeros, 8, &mut rng(7)), "seeded");
        // A clear winner still wins whatever the seed.
        let mut m = [0.0f32; 64];
        m[40] = 1.0;
        for s in 0..4 {
            assert_eq!(certainty(&m, 1, &mut rng(s)), vec![40]);
        }
    }

    #[test]
    fn entropy_is_per_prompt_and_the_windowed_variant_reproduces_the_reference() {
        // Two prompts, n = 3 samples each: NLLs 1, 2, 3 and 10, 20, 30.
        let per_prompt = vec![vec![1.0, 2.0, 3.0], vec![10.0, 20.0, 30.0]];
        assert_eq!(predictive_entropy(&per_prompt), vec![2.0, 20.0]);
        // Reference: prompt s averages flat[s..s+3]: prompt 0 -> (1+2+3)/3 = 2,
        // prompt 1 -> (2+3+10)/3 = 5 (mostly prompt 0's samples).
        let flat: Vec<f32> = per_prompt.concat();
        assert_eq!(windowed_entropy_reference(&flat, 3), vec![2.0, 5.0]);
        assert_eq!(entropy(&[2.0, 20.0, 5.0], 2, &mut rng(0)), vec![1, 2]);
    }

    #[test]
    fn the_windowed_estimate_changes_the_selection() {
        // Six prompts, two samples each; prompts 4 and 5 are the uncertain ones.
        let per_prompt: Vec<Vec<f32>> =
            vec![vec![5.0, 5.0], vec![6.0, 4.0], vec![5.0, 6.0], vec![4.0, 5.0], vec![30.0, 28.0], vec![25.0, 27.0]];
        let correct = predictive_entropy(&per_prompt);
        assert_eq!(correct, vec![5.0, 5.0, 5.5, 4.5, 29.0, 26.0]);
        let mut top = entropy(&correct, 2, &mut rng(0));
        top.sort_unstable();
        assert_eq!(top, vec![4, 5], "the correct estimate keeps the top of the ranking");
        // The reference's window for prompt s is flat[s..s + 2]: prompts 0..=5 see samples of
        // prompts 0, 0-1, 1, 1-2, 2, 2-3 only, never those of prompts 4 and 5. It keeps 1 and 4,
        // prompt 4 for its window over prompt 2's samples.
        let windowed = windowed_entropy_reference(&per_prompt.concat(), 2);
        assert_eq!(windowed, vec![5.0, 5.5, 5.0, 4.5, 5.5, 5.0]);
        let mut picked = entropy(&windowed, 2, &mut rng(0));
        picked.sort_unstable();
        assert_eq!(picked, vec![1, 4]);
    }
}
