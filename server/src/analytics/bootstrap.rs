//! Percentile bootstrap intervals: resample the units (pairs, items, comparisons) with
//! replacement, recompute the statistic, take the quantiles. Seeded, so a dashboard shows the
//! same interval on every load.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use apl_shared::Interval;

pub const RESAMPLES: usize = 1000;
pub const LEVEL: f64 = 0.95;

/// `stat` gets the indices of one resample of `0..n` (the estimate: all of them in order);
/// resamples on which it is undefined (None) are skipped. None when the estimate is undefined.
pub fn bootstrap(
    n: usize,
    resamples: usize,
    level: f64,
    seed: u64,
    stat: impl Fn(&[usize]) -> Option<f64>,
) -> Option<Interval> {
    let all: Vec<usize> = (0..n).collect();
    let estimate = stat(&all)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(resamples);
    let mut idx = vec![0; n];
    for _ in 0..resamples {
        for i in idx.iter_mut() {
            *i = rng.random_range(0..n);
        }
        if let Some(v) = stat(&idx).filter(|v| v.is_finite()) {
            values.push(v);
        }
    }
    if values.is_empty() {
        return Some(Interval { estimate, lo: estimate, hi: estimate, level });
    }
    values.sort_by(f64::total_cmp);
    let q = |p: f64| {
        // Linear interpolation between order statistics (numpy's default).
        let h = p * (values.len() - 1) as f64;
        let (lo, frac) = (h.floor() as usize, h - h.floor());
        values[lo] + frac * (values[(lo + 1).min(values.len() - 1)] - values[lo])
    };
    let tail = (1.0 - level) / 2.0;
    Some(Interval { estimate, lo: q(tail), hi: q(1.0 - tail), level })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_interval_brackets_the_normal_approximation() {
        // 200 coin flips with 120 heads: mean 0.6, normal-approximation 95% interval
        // 0.6 +- 1.96 * sqrt(0.6 * 0.4 / 200) = 0.6 +- 0.0679 = [0.532, 0.668].
        let x: Vec<f64> = (0..200).map(|i| (i < 120) as u8 as f64).collect();
        let mean = |idx: &[usize]| Some(idx.iter().map(|&i| x[i]).sum::<f64>() / idx.len() as f64);
        let ci = bootstrap(x.len(), 2000, 0.95, 7, mean).unwrap();
        assert_eq!(ci.estimate, 0.6);
        assert!((ci.lo - 0.532).abs() < 0.015 && (ci.hi - 0.668).abs() < 0.015, "{ci:?}");
        assert_eq!(ci, bootstrap(x.len(), 2000, 0.95, 7, mean).unwrap(), "seeded");
        assert!(bootstrap(0, 10, 0.95, 0, |_| None).is_none());
    }
}
