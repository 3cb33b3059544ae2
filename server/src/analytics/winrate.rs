//! Raw and length-controlled win-rates. Judges (LLMs and people) favour longer texts; the
//! length-controlled win-rate (as in AlpacaEval 2) asks what the win-rate would be if the two
//! texts were equally long: fit P(win) = sigmoid(b0 + b1 * d), with d the length difference
//! (policy minus baseline) over its standard deviation, by Newton's method, and report
//! sigmoid(b0). Ties count as half a win, as in the raw rate.

pub use apl_shared::LengthControlled;

/// `games[i]` = (score of the policy: 1 win, 0.5 tie, 0 loss; length of the policy's text minus
/// the baseline's). None for no games.
pub fn length_controlled(games: &[(f64, f64)]) -> Option<LengthControlled> {
    let n = games.len();
    if n == 0 {
        return None;
    }
    let raw = games.iter().map(|g| g.0).sum::<f64>() / n as f64;
    let mean = games.iter().map(|g| g.1).sum::<f64>() / n as f64;
    let sd = (games.iter().map(|g| (g.1 - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
    if sd == 0.0 || raw == 0.0 || raw == 1.0 {
        // Nothing to regress out, or a rate already at its bound.
        return Some(LengthControlled { n, raw, controlled: raw, slope: 0.0 });
    }
    let x: Vec<f64> = games.iter().map(|g| g.1 / sd).collect();
    // A whisper of ridge on the slope keeps Newton finite when length separates wins from losses.
    let ridge = 1e-6 * n as f64;
    let (mut b0, mut b1) = ((raw / (1.0 - raw)).ln(), 0.0);
    for _ in 0..100 {
        let (mut g0, mut g1, mut h00, mut h01, mut h11) = (0.0, -ridge * b1, 0.0, 0.0, ridge);
        for (g, &xi) in games.iter().zip(&x) {
            let p = 1.0 / (1.0 + (-(b0 + b1 * xi)).exp());
            let w = p * (1.0 - p);
            g0 += g.0 - p;
            g1 += (g.0 - p) * xi;
            h00 += w;
            h01 += w * xi;
            h11 += w * xi * xi;
        }
        let det = h00 * h11 - h01 * h01;
        if det.abs() < 1e-300 {
            break;
        }
        let (d0, d1) = ((h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det);
        b0 += d0;
        b1 += d1;
        if d0.abs().max(d1.abs()) < 1e-12 {
            break;
        }
    }
    Some(LengthControlled { n, raw, controlled: 1.0 / (1.0 + (-b0).exp()), slope: b1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_unpenalised_logistic_regression() {
        // Longer policy texts win more often. Reference: sklearn
        //   d = [...]; X = (d / d.std()).reshape(-1, 1)
        //   LogisticRegression(penalty=None, tol=1e-10, max_iter=10000).fit(X, y)
        //   sigmoid(intercept_) = 0.476119330143772, coef_ = 2.3357334384228756
        let games: Vec<(f64, f64)> = [
            (1, 12.0),
            (1, 5.0),
            (0, -3.0),
            (1, 0.0),
            (0, -10.0),
            (1, 7.0),
            (0, 4.0),
            (1, -2.0),
            (0, -6.0),
            (1, 9.0),
            (1, 1.0),
            (0, 2.0),
            (1, 15.0),
            (0, -1.0),
            (1, 3.0),
            (0, -8.0),
        ]
        .iter()
        .map(|&(y, d)| (y as f64, d))
        .collect();
        let lc = length_controlled(&games).unwrap();
        assert_eq!(lc.raw, 9.0 / 16.0);
        assert!((lc.controlled - 0.476119330143772).abs() < 1e-4, "{lc:?}");
        assert!((lc.slope - 2.3357334384228756).abs() < 1e-3, "{lc:?}");
    }

    #[test]
    fn no_length_difference_leaves_the_raw_rate() {
        let lc = length_controlled(&[(1.0, 0.0), (0.5, 0.0), (0.0, 0.0)]).unwrap();
        assert_eq!((lc.raw, lc.controlled, lc.slope), (0.5, 0.5, 0.0));
        assert!(length_controlled(&[]).is_none());
    }
}
