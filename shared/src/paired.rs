//! Paired comparisons of two arms that were evaluated on the same prompts against the same
//! baseline samples (every arm of an experiment seed is): per prompt, the difference of the two
//! outcomes (win 1, tie 1/2, loss 0), averaged over prompts and then over seeds. Pairing removes
//! the variation between prompts that two unpaired win-rates each carry, which is most of it.
//!
//! Intervals come from a stratified bootstrap: prompts are resampled within each seed (the
//! seeds themselves are kept, since with a handful of them their own resampling says little),
//! so the interval is conditional on the trained policies; the spread of the per-seed means is
//! reported beside it as the over-seeds standard error. Label efficiency, the labels an arm
//! needs to reach the reference arm's final win-rate, is read off the curves by linear
//! interpolation and gets its interval from the same resamples.
//!
//! Here, in the crate the browser compiles too, so the experiment's reports and the dashboard's
//! evaluation panel compute the same figures with the same draws.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

pub const RESAMPLES: usize = 2000;
pub const LEVEL: f64 = 0.95;

/// One seed's outcome scores of the arm and of the reference arm, prompt by prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedScores {
    pub arm: Vec<f64>,
    pub reference: Vec<f64>,
}

/// The arm minus the reference arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PairedDifference {
    /// Mean over seeds of each seed's mean per-prompt difference.
    pub estimate: f64,
    /// sqrt(sum_s var_s / n_s) / S, var_s the per-prompt differences' variance (ddof 1) in seed s.
    pub stderr: f64,
    /// Percentile bootstrap interval, prompts resampled within seeds.
    pub lo: f64,
    pub hi: f64,
    pub level: f64,
    /// Standard error of the per-seed means (ddof 1), with two seeds or more.
    pub stderr_seeds: Option<f64>,
    pub seeds: usize,
    pub prompts: usize,
}

impl PairedDifference {
    /// "+0.031 [+0.012, +0.050]".
    pub fn show(&self) -> String {
        format!("{:+.3} [{:+.3}, {:+.3}]", self.estimate, self.lo, self.hi)
    }

    /// Whether the interval leaves out zero.
    pub fn decisive(&self) -> bool {
        self.lo > 0.0 || self.hi < 0.0
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Sample variance (ddof 1); 0 below two values.
fn variance(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
}

/// Percentile of sorted values, interpolating between order statistics (numpy's default);
/// infinite ends stay infinite.
fn quantile(sorted: &[f64], p: f64) -> f64 {
    let h = p * (sorted.len() - 1) as f64;
    let (lo, frac) = (h.floor() as usize, h - h.floor());
    let (a, b) = (sorted[lo], sorted[(lo + 1).min(sorted.len() - 1)]);
    if frac == 0.0 || a == b || a.is_infinite() || b.is_infinite() {
        if frac > 0.0 && b.is_infinite() { b } else { a }
    } else {
        a + frac * (b - a)
    }
}

/// A uniform index below `n` (multiply-shift: a bias below n / 2^64, nothing at these sizes).
fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    ((u128::from(rng.next_u64()) * n as u128) >> 64) as usize
}

/// `resamples` draws of prompt indices per seed (`sizes[s]` prompts in seed s), seeded; the
/// same draws for every statistic computed from one seed, so arms stay paired.
pub fn resamples(sizes: &[usize], resamples: usize, seed: u64) -> Vec<Vec<Vec<usize>>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..resamples).map(|_| sizes.iter().map(|&n| (0..n).map(|_| below(&mut rng, n)).collect()).collect()).collect()
}

/// The outcome scores of two evaluations on the prompts where both judged the same baseline
/// text (matched by prompt and baseline, so two server projects pair only where their starting
/// model's samples coincide: same model, seed and evaluation prompts); prompts without an
/// outcome are left out.
pub fn matched(arm: &[crate::EvalSample], reference: &[crate::EvalSample]) -> SeedScores {
    let theirs: std::collections::HashMap<(&str, &str), f64> =
        reference.iter().filter_map(|s| Some(((s.prompt.as_str(), s.baseline.as_str()), s.outcome?.score()))).collect();
    let (mut a, mut r) = (Vec::new(), Vec::new());
    for s in arm {
        if let (Some(o), Some(&t)) = (s.outcome, theirs.get(&(s.prompt.as_str(), s.baseline.as_str()))) {
            a.push(o.score());
            r.push(t);
        }
    }
    SeedScores { arm: a, reference: r }
}

/// The paired difference of an arm against the reference arm over seeds. None without a
/// prompt, or when a seed's two lists differ in length (not the same prompts).
pub fn paired_difference(seeds: &[SeedScores], draws: &[Vec<Vec<usize>>]) -> Option<PairedDifference> {
    if seeds.is_empty() || seeds.iter().any(|s| s.arm.len() != s.reference.len() || s.arm.is_empty()) {
        return None;
    }
    let diffs: Vec<Vec<f64>> =
        seeds.iter().map(|s| s.arm.iter().zip(&s.reference).map(|(a, r)| a - r).collect()).collect();
    let seed_means: Vec<f64> = diffs.iter().map(|d| mean(d)).collect();
    let k = seeds.len() as f64;
    let estimate = mean(&seed_means);
    let stderr = diffs.iter().map(|d| variance(d) / d.len() as f64).sum::<f64>().sqrt() / k;
    let mut boot: Vec<f64> = draws
        .iter()
        .map(|draw| {
            diffs
                .iter()
                .zip(draw)
                .map(|(d, idx)| idx.iter().map(|&i| d[i]).sum::<f64>() / idx.len() as f64)
                .sum::<f64>()
                / k
        })
        .collect();
    boot.sort_by(f64::total_cmp);
    let tail = (1.0 - LEVEL) / 2.0;
    let (lo, hi) =
        if boot.is_empty() { (estimate, estimate) } else { (quantile(&boot, tail), quantile(&boot, 1.0 - tail)) };
    Some(PairedDifference {
        estimate,
        stderr,
        lo,
        hi,
        level: LEVEL,
        stderr_seeds: (seeds.len() >= 2).then(|| (variance(&seed_means) / k).sqrt()),
        seeds: seeds.len(),
        prompts: diffs.iter().map(Vec::len).sum(),
    })
}

/// Where a rising curve first reaches a win-rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "labels")]
pub enum Reach {
    /// Between two measured points, interpolated.
    At(f64),
    /// Already at the first measured point: this many labels or fewer.
    ByFirst(f64),
    /// Not within the measured labels.
    Never,
}

impl Reach {
    /// As a number for sorting and intervals: `Never` is infinite.
    pub fn labels(self) -> f64 {
        match self {
            Self::At(x) | Self::ByFirst(x) => x,
            Self::Never => f64::INFINITY,
        }
    }
}

/// The labels at which `curve` ((labels, win-rate), labels ascending) first reaches `target`,
/// linearly interpolated between the two points around the crossing.
pub fn labels_to_reach(curve: &[(f64, f64)], target: f64) -> Reach {
    let Some(&(x0, y0)) = curve.first() else { return Reach::Never };
    if y0 >= target {
        return Reach::ByFirst(x0);
    }
    for w in curve.windows(2) {
        let ((xa, ya), (xb, yb)) = (w[0], w[1]);
        if yb >= target {
            return Reach::At(xa + (target - ya) / (yb - ya) * (xb - xa));
        }
    }
    Reach::Never
}

/// One arm's label efficiency against the reference arm's final win-rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Efficiency {
    /// The reference arm's win-rate at its last point, and its labels there.
    pub target: f64,
    pub reference_labels: f64,
    pub reach: Reach,
    /// Percentile bootstrap interval of the labels (infinite: not reached in that share of
    /// resamples).
    pub lo: f64,
    pub hi: f64,
    pub level: f64,
}

/// Per-prompt outcome scores of every (seed, m) of one arm: `scores[m_index][seed]`, with the
/// labels at each m.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmCurve {
    pub labels: Vec<f64>,
    pub scores: Vec<Vec<Vec<f64>>>,
}

impl ArmCurve {
    /// (labels, mean win-rate over seeds) at each m, prompts taken as `draw` picks them.
    fn curve(&self, draw: Option<&[Vec<usize>]>) -> Vec<(f64, f64)> {
        self.labels
            .iter()
            .zip(&self.scores)
            .map(|(&x, per_seed)| {
                let means: Vec<f64> = per_seed
                    .iter()
                    .enumerate()
                    .map(|(s, v)| match draw {
                        Some(d) => d[s].iter().map(|&i| v[i]).sum::<f64>() / d[s].len() as f64,
                        None => mean(v),
                    })
                    .collect();
                (x, mean(&means))
            })
            .collect()
    }
}

/// Labels `arm` needs to reach `reference`'s win-rate at its last point, with a bootstrap
/// interval over the shared prompt resamples `draws` (every curve's seeds in one order, each
/// seed's prompts the same at every m). None if the reference has no point.
pub fn efficiency(arm: &ArmCurve, reference: &ArmCurve, draws: &[Vec<Vec<usize>>]) -> Option<Efficiency> {
    let target_of = |c: &[(f64, f64)]| c.last().copied();
    let (reference_labels, target) = target_of(&reference.curve(None))?;
    let reach = labels_to_reach(&arm.curve(None), target);
    let mut boot: Vec<f64> = draws
        .iter()
        .filter_map(|d| {
            let (_, t) = target_of(&reference.curve(Some(d)))?;
            Some(labels_to_reach(&arm.curve(Some(d)), t).labels())
        })
        .collect();
    boot.sort_by(f64::total_cmp);
    let tail = (1.0 - LEVEL) / 2.0;
    let (lo, hi) = if boot.is_empty() {
        (reach.labels(), reach.labels())
    } else {
        (quantile(&boot, tail), quantile(&boot, 1.0 - tail))
    };
    Some(Efficiency { target, reference_labels, reach, lo, hi, level: LEVEL })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand computation, one seed of 6 prompts:
    /// arm  1 1 .5 0 1 1, reference 0 1 0 0 .5 1 -> differences 1 0 .5 0 .5 0.
    /// mean = 2/6 = 0.333333; deviations .6667 -.3333 .1667 -.3333 .1667 -.3333, squares sum
    /// .4444 + .1111 + .0278 + .1111 + .0278 + .1111 = .8333; var = .8333 / 5 = .166667;
    /// se = sqrt(.166667 / 6) = 0.166667.
    /// scipy.stats.ttest_rel(arm, reference): statistic = 2.0 = 0.333333 / 0.166667, so its
    /// standard error is the same (numpy: d.std(ddof=1) / sqrt(6) = 0.16666666666666666).
    #[test]
    fn one_seed_matches_the_hand_computation_and_scipy() {
        let s = SeedScores { arm: vec![1.0, 1.0, 0.5, 0.0, 1.0, 1.0], reference: vec![0.0, 1.0, 0.0, 0.0, 0.5, 1.0] };
        let draws = resamples(&[6], RESAMPLES, 1);
        let d = paired_difference(&[s], &draws).unwrap();
        assert!((d.estimate - 1.0 / 3.0).abs() < 1e-12);
        assert!((d.stderr - 1.0 / 6.0).abs() < 1e-12);
        assert_eq!((d.seeds, d.prompts, d.stderr_seeds), (1, 6, None));
        // The bootstrap's spread is the plug-in one, sqrt((n-1)/n) = 0.913 of the above.
        assert!(d.lo < d.estimate && d.hi > d.estimate && d.lo >= -0.1 && d.hi <= 0.75, "{d:?}");
    }

    /// Two seeds: the estimate is the mean of the seed means, the standard error combines the
    /// seeds' own, and the over-seeds error is that of the two means.
    /// Seed A differences 1 0 1 0 (mean .5, var 1/3), seed B 1 1 1 0 (mean .75, var .25).
    /// estimate .625; stderr = sqrt(1/3 / 4 + .25 / 4) / 2 = sqrt(.145833) / 2 = 0.190941;
    /// over seeds: means .5 and .75, sd (ddof 1) .176777, / sqrt(2) = 0.125.
    #[test]
    fn seeds_are_strata() {
        let a = SeedScores { arm: vec![1.0, 1.0, 1.0, 0.0], reference: vec![0.0, 1.0, 0.0, 0.0] };
        let b = SeedScores { arm: vec![1.0, 1.0, 1.0, 0.5], reference: vec![0.0, 0.0, 0.0, 0.5] };
        let draws = resamples(&[4, 4], RESAMPLES, 2);
        let d = paired_difference(&[a, b], &draws).unwrap();
        assert!((d.estimate - 0.625).abs() < 1e-12);
        assert!((d.stderr - 0.190941).abs() < 1e-6, "{}", d.stderr);
        assert!((d.stderr_seeds.unwrap() - 0.125).abs() < 1e-12);
    }

    /// On a large sample the bootstrap interval agrees with the normal one from the paired
    /// standard error: 1000 prompts, differences +1 on 300, -1 on 200, 0 on 500: mean 0.1,
    /// var = (300 * .81 + 200 * 1.21 + 500 * .01) / 999 = 0.490490, se = 0.022147, so
    /// 0.1 +- 1.96 se = [0.05659, 0.14341] (numpy / scipy.stats.norm.ppf(0.975) = 1.959964).
    #[test]
    fn the_bootstrap_agrees_with_the_normal_interval_on_a_large_sample() {
        let arm: Vec<f64> = (0..1000).map(|i| if i < 300 { 1.0 } else { 0.0 }).collect();
        let reference: Vec<f64> = (0..1000).map(|i| if (300..500).contains(&i) { 1.0 } else { 0.0 }).collect();
        let draws = resamples(&[1000], RESAMPLES, 3);
        let d = paired_difference(&[SeedScores { arm, reference }], &draws).unwrap();
        assert!((d.estimate - 0.1).abs() < 1e-12);
        assert!((d.stderr - 0.022147).abs() < 1e-6, "{}", d.stderr);
        assert!((d.lo - 0.05659).abs() < 0.006 && (d.hi - 0.14341).abs() < 0.006, "{d:?}");
        assert!(d.decisive());
        assert_eq!(d.show(), format!("+0.100 [{:+.3}, {:+.3}]", d.lo, d.hi));
    }

    #[test]
    fn evaluations_pair_on_shared_prompt_and_baseline() {
        use crate::{EvalSample, Outcome};
        let sample = |p: &str, base: &str, o: Option<Outcome>| EvalSample {
            prompt_id: None,
            prompt: p.into(),
            policy: "x".into(),
            baseline: base.into(),
            outcome: o,
        };
        let arm = [
            sample("p1", "b1", Some(Outcome::Win)),
            sample("p2", "b2", Some(Outcome::Tie)),
            sample("p3", "b3", Some(Outcome::Win)),
            sample("p4", "b4", None),
        ];
        let reference = [
            sample("p2", "b2", Some(Outcome::Loss)),
            sample("p1", "b1", Some(Outcome::Tie)),
            sample("p3", "other baseline", Some(Outcome::Loss)),
            sample("p4", "b4", Some(Outcome::Win)),
        ];
        let m = matched(&arm, &reference);
        assert_eq!(m, SeedScores { arm: vec![1.0, 0.5], reference: vec![0.5, 0.0] });
    }

    #[test]
    fn mismatched_prompts_are_refused() {
        let s = SeedScores { arm: vec![1.0, 0.0], reference: vec![1.0] };
        assert!(paired_difference(&[s], &[]).is_none());
        assert!(paired_difference(&[], &[]).is_none());
    }

    #[test]
    fn labels_are_interpolated_where_the_curve_crosses() {
        let c = [(64.0, 0.55), (128.0, 0.60), (256.0, 0.70)];
        let near = |r: Reach, want: f64| matches!(r, Reach::At(x) if (x - want).abs() < 1e-9);
        // 0.65 lies half-way from 0.60 to 0.70: 128 + 0.5 * 128 = 192.
        assert!(near(labels_to_reach(&c, 0.65), 192.0), "{:?}", labels_to_reach(&c, 0.65));
        assert!(near(labels_to_reach(&c, 0.60), 128.0));
        assert_eq!(labels_to_reach(&c, 0.50), Reach::ByFirst(64.0));
        assert_eq!(labels_to_reach(&c, 0.71), Reach::Never);
        // A dip is passed over: the first crossing counts.
        assert!(near(labels_to_reach(&[(1.0, 0.4), (2.0, 0.7), (3.0, 0.5), (4.0, 0.9)], 0.6), 1.0 + 2.0 / 3.0));
    }

    #[test]
    fn efficiency_of_a_faster_arm() {
        // One seed, 4 prompts, m = 64, 128. Reference: 0.5 then 0.75 (target 0.75 at 128).
        // Arm: 0.625 then 1.0: reaches 0.75 at 64 + (0.75 - 0.625) / (1 - 0.625) * 64 = 85.33.
        let reference = ArmCurve {
            labels: vec![64.0, 128.0],
            scores: vec![vec![vec![1.0, 0.0, 1.0, 0.0]], vec![vec![1.0, 1.0, 1.0, 0.0]]],
        };
        let arm = ArmCurve {
            labels: vec![64.0, 128.0],
            scores: vec![vec![vec![1.0, 0.5, 1.0, 0.0]], vec![vec![1.0, 1.0, 1.0, 1.0]]],
        };
        let draws = resamples(&[4], 500, 4);
        let e = efficiency(&arm, &reference, &draws).unwrap();
        assert_eq!((e.target, e.reference_labels), (0.75, 128.0));
        match e.reach {
            Reach::At(x) => assert!((x - 64.0 - 64.0 / 3.0).abs() < 1e-9, "{x}"),
            r => panic!("{r:?}"),
        }
        assert!(e.lo <= 85.34 && e.hi >= 85.33, "{e:?}");
        // The reference against itself needs its own labels.
        let own = efficiency(&reference, &reference, &draws).unwrap();
        assert_eq!(own.reach, Reach::At(128.0));
    }
}
