//! A Bradley-Terry ranking of checkpoints (or any players) from pairwise judgements:
//! P(i beats j) = p_i / (p_i + p_j). Fitted with Hunter's MM iteration, with choix's
//! regularisation (`alpha` pseudo-counts in numerator and denominator) so a player that never
//! won stays finite; ties count half a win to each side. Strengths are reported as centred
//! log-strengths and on the Elo scale, with bootstrap intervals over games.

use serde::{Deserialize, Serialize};

use super::bootstrap::{LEVEL, RESAMPLES, bootstrap};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Game {
    pub a: usize,
    pub b: usize,
    /// For `a`: 1 win, 0.5 tie, 0 loss.
    pub score_a: f64,
}

/// Centred log-strengths of players `0..n`.
pub fn fit(n: usize, games: &[Game], alpha: f64) -> Vec<f64> {
    let mut w = vec![1.0; n];
    let mut log = vec![0.0; n];
    for _ in 0..10_000 {
        let mut wins = vec![0.0; n];
        let mut denoms = vec![0.0; n];
        for g in games {
            wins[g.a] += g.score_a;
            wins[g.b] += 1.0 - g.score_a;
            let v = 1.0 / (w[g.a] + w[g.b]);
            denoms[g.a] += v;
            denoms[g.b] += v;
        }
        let next: Vec<f64> = (0..n).map(|i| ((wins[i] + alpha) / (denoms[i] + alpha)).max(1e-300).ln()).collect();
        let mean = next.iter().sum::<f64>() / n.max(1) as f64;
        let next: Vec<f64> = next.iter().map(|x| x - mean).collect();
        let change: f64 = next.iter().zip(&log).map(|(a, b)| (a - b).abs()).sum();
        log = next;
        // Weights normalised to mean 1, as choix does.
        let e: Vec<f64> = log.iter().map(|x| x.exp()).collect();
        let s: f64 = e.iter().sum();
        w = e.iter().map(|x| x * n as f64 / s).collect();
        if change < 1e-12 {
            break;
        }
    }
    log
}

pub use apl_shared::Rated;

/// Players ranked strongest first, with 95% bootstrap intervals over games.
pub fn ranking(n: usize, games: &[Game], seed: u64) -> Vec<Rated> {
    const ALPHA: f64 = 0.1;
    let strengths = fit(n, games, ALPHA);
    let mut out: Vec<Rated> = (0..n)
        .map(|i| {
            let ci = bootstrap(games.len(), RESAMPLES / 4, LEVEL, seed ^ i as u64, |idx| {
                let sample: Vec<Game> = idx.iter().map(|&k| games[k]).collect();
                Some(fit(n, &sample, ALPHA)[i])
            });
            let (lo, hi) = ci.map_or((strengths[i], strengths[i]), |c| (c.lo, c.hi));
            Rated {
                index: i,
                strength: strengths[i],
                lo,
                hi,
                elo: 1000.0 + 400.0 * strengths[i] / std::f64::consts::LN_10,
                games: games.iter().filter(|g| g.a == i || g.b == i).count(),
            }
        })
        .collect();
    out.sort_by(|a, b| b.strength.total_cmp(&a.strength));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn games() -> Vec<Game> {
        [(0, 1), (0, 1), (1, 0), (0, 2), (0, 2), (0, 2), (2, 0), (1, 2), (1, 2), (2, 1), (3, 0), (0, 3)]
            .iter()
            .chain(&[(3, 1), (1, 3), (3, 2), (2, 3), (3, 2), (3, 0)])
            .map(|&(w, l)| Game { a: w, b: l, score_a: 1.0 })
            .collect()
    }

    #[test]
    fn matches_choix() {
        // choix.mm_pairwise(4, data, alpha=a, tol=1e-12, max_iter=100000), data = the
        // (winner, loser) list above:
        //   alpha 0:   [0.2773679118111113, -0.03243986989290906, -0.63479719696598, 0.38986915504777775]
        //   alpha 0.5: [0.24520371271607144, -0.014908515110457654, -0.5537718906261315, 0.3234766930205177]
        let want0 = [0.2773679118111113, -0.03243986989290906, -0.63479719696598, 0.38986915504777775];
        let want5 = [0.24520371271607144, -0.014908515110457654, -0.5537718906261315, 0.3234766930205177];
        for (alpha, want) in [(0.0, want0), (0.5, want5)] {
            let got = fit(4, &games(), alpha);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-8, "alpha {alpha}: {got:?}");
            }
        }
    }

    #[test]
    fn two_players_by_hand_and_ties_count_half() {
        // 3 wins of 4: p0 / (p0 + p1) = 3/4, so log(p0 / p1) = ln 3 and the centred strengths
        // are +-ln(3)/2.
        let g = |a, b, s| Game { a, b, score_a: s };
        let s = fit(2, &[g(0, 1, 1.0), g(0, 1, 1.0), g(1, 0, 1.0), g(0, 1, 1.0)], 0.0);
        assert!((s[0] - 3f64.ln() / 2.0).abs() < 1e-9, "{s:?}");
        // Two ties and one win each: equal.
        let s = fit(2, &[g(0, 1, 0.5), g(0, 1, 0.5), g(0, 1, 1.0), g(1, 0, 1.0)], 0.0);
        assert!(s[0].abs() < 1e-9);
        let r = ranking(4, &games(), 1);
        assert_eq!(r.iter().map(|x| x.index).collect::<Vec<_>>(), vec![3, 0, 1, 2]);
        assert!(r.iter().all(|x| x.lo <= x.strength && x.strength <= x.hi && x.games > 0));
    }
}
