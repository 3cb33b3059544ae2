//! A human win-rate check's figures: the raters' win-rate for the policy beside the judge's on
//! the same pairs, with bootstrap intervals, and how far raters and judge agree.
//!
//! The store returns what was stored (the judge's outcome and the raters' votes per pair);
//! everything computed from them is here, recomputed on every read (a check is at most a few
//! hundred pairs), so an undone label changes the figures back at once.

use apl_shared::{HumanCheck, Outcome, RateInterval};

use super::agreement::cohen_kappa;
use super::bootstrap::{LEVEL, RESAMPLES, bootstrap};
use crate::store::checks::CheckRecord;

/// The bootstrap's seed: the panel shows the same interval on every load.
const SEED: u64 = 0x00c0_ffee;

/// A check's figures from its pairs: (judge outcome, human outcomes so far) per pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub human: Option<RateInterval>,
    pub judge_rate: Option<RateInterval>,
    pub agreement: Option<f64>,
    pub kappa: Option<f64>,
}

/// Pairs with at least one human vote count. Each scores its raters' mean (win 1, tie 1/2,
/// loss 0); the human rate is the mean over pairs and the judge's the mean of its outcomes on
/// the same pairs, each with a 95% percentile bootstrap over pairs. The raters' majority of a
/// pair is win when its score is above 1/2 (more wins than losses), loss below, tie at 1/2;
/// agreement is the share of pairs where it equals the judge's outcome, kappa Cohen's over
/// win / tie / loss.
pub fn figures(pairs: &[(Outcome, Vec<Outcome>)]) -> Figures {
    let voted: Vec<(f64, Outcome, f64, Outcome)> = pairs
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(judge, h)| {
            let score = h.iter().map(|o| o.score()).sum::<f64>() / h.len() as f64;
            let (wins, losses) =
                (h.iter().filter(|o| **o == Outcome::Win).count(), h.iter().filter(|o| **o == Outcome::Loss).count());
            let majority = match wins.cmp(&losses) {
                std::cmp::Ordering::Greater => Outcome::Win,
                std::cmp::Ordering::Less => Outcome::Loss,
                std::cmp::Ordering::Equal => Outcome::Tie,
            };
            (score, majority, judge.score(), *judge)
        })
        .collect();
    let n = voted.len();
    let rate = |pick: fn(&(f64, Outcome, f64, Outcome)) -> f64| {
        let mean = |idx: &[usize]| {
            (!idx.is_empty()).then(|| idx.iter().map(|&i| pick(&voted[i])).sum::<f64>() / idx.len() as f64)
        };
        bootstrap(n, RESAMPLES, LEVEL, SEED, mean).map(|ci| RateInterval {
            rate: ci.estimate,
            low: ci.lo,
            high: ci.hi,
            n,
        })
    };
    let category = |o: Outcome| match o {
        Outcome::Win => 0,
        Outcome::Tie => 1,
        Outcome::Loss => 2,
    };
    let humans: Vec<usize> = voted.iter().map(|v| category(v.1)).collect();
    let judges: Vec<usize> = voted.iter().map(|v| category(v.3)).collect();
    let agree = humans.iter().zip(&judges).filter(|(h, j)| h == j).count();
    Figures {
        human: rate(|v| v.0),
        judge_rate: rate(|v| v.2),
        agreement: (n > 0).then(|| agree as f64 / n as f64),
        kappa: cohen_kappa(&humans, &judges),
    }
}

/// A stored check with its figures.
pub fn summarize(c: CheckRecord) -> HumanCheck {
    let f = figures(&c.pairs);
    HumanCheck {
        id: c.id,
        evaluation: c.evaluation,
        checkpoint: c.checkpoint,
        judge: c.judge,
        raters: c.raters,
        overlap: c.overlap as u32,
        pairs: c.pairs.len() as i64,
        votes: c.pairs.iter().map(|p| p.1.len() as i64).sum(),
        target_votes: c.pairs.len() as i64 * c.overlap,
        human: f.human,
        judge_rate: f.judge_rate,
        agreement: f.agreement,
        kappa: f.kappa,
        created_at: c.created_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;

    #[test]
    fn figures_by_hand() {
        // Pair 1: humans win, win (score 1, majority win), judge win: agree.
        // Pair 2: humans win, loss (score 1/2, tie), judge loss: disagree.
        // Pair 3: humans tie (score 1/2, tie), judge tie: agree.
        // Pair 4: no votes: left out.
        // Human rate (1 + .5 + .5) / 3 = 2/3; judge (1 + 0 + .5) / 3 = 1/2; agreement 2/3.
        // Kappa over (win, tie, tie) vs (win, loss, tie): p_o = 2/3;
        // p_e = (1/3)(1/3) [win] + (2/3)(1/3) [tie] + 0 [loss] = 3/9 = 1/3; kappa = (2/3 - 1/3) / (2/3) = 1/2.
        let pairs = vec![(Win, vec![Win, Win]), (Loss, vec![Win, Loss]), (Tie, vec![Tie]), (Win, vec![])];
        let f = figures(&pairs);
        let h = f.human.unwrap();
        assert!((h.rate - 2.0 / 3.0).abs() < 1e-12 && h.n == 3, "{h:?}");
        assert!(h.low <= h.rate && h.rate <= h.high && h.low >= 0.5 && h.high <= 1.0, "{h:?}");
        let j = f.judge_rate.unwrap();
        assert!((j.rate - 0.5).abs() < 1e-12 && j.n == 3 && j.low >= 0.0 && j.high <= 1.0, "{j:?}");
        assert!((f.agreement.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((f.kappa.unwrap() - 0.5).abs() < 1e-12, "{:?}", f.kappa);
        assert_eq!(figures(&pairs), f, "seeded");

        let none = figures(&[(Win, vec![])]);
        assert_eq!(none, Figures { human: None, judge_rate: None, agreement: None, kappa: None });
    }
}
