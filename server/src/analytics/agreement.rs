//! Chance-corrected agreement on nominal labels (A, B, tie, ...; categories as small integers):
//! Cohen's kappa for two raters, Fleiss' kappa for a fixed number of raters per item, and
//! Krippendorff's alpha for any number of raters with missing labels — the one that fits crowd
//! data, where each pair gets a different set of raters.

/// Cohen's kappa of two raters over the same items. None when there are no items or chance
/// agreement is already perfect (both raters always gave the same single category).
pub fn cohen_kappa(a: &[usize], b: &[usize]) -> Option<f64> {
    assert_eq!(a.len(), b.len(), "cohen_kappa: both raters must label the same items");
    let n = a.len();
    if n == 0 {
        return None;
    }
    let k = a.iter().chain(b).max().copied().unwrap_or(0) + 1;
    let (mut pa, mut pb) = (vec![0.0; k], vec![0.0; k]);
    let mut agree = 0.0;
    for (&x, &y) in a.iter().zip(b) {
        pa[x] += 1.0;
        pb[y] += 1.0;
        agree += (x == y) as u8 as f64;
    }
    let n = n as f64;
    let po = agree / n;
    let pe: f64 = pa.iter().zip(&pb).map(|(x, y)| x / n * y / n).sum();
    (pe < 1.0).then(|| (po - pe) / (1.0 - pe))
}

/// Why Fleiss' kappa is not defined for a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleissError {
    #[error("fleiss_kappa: no items")]
    NoItems,
    #[error("fleiss_kappa: each item needs at least 2 ratings")]
    TooFewRatings,
    #[error("fleiss_kappa: item {0} has a different number of categories or ratings")]
    Uneven(usize),
    #[error("fleiss_kappa: every rating is the same category; kappa is undefined")]
    OneCategory,
}

/// Fleiss' kappa: `counts[i][j]` = raters who put item `i` in category `j`; every item must have
/// the same number of raters, at least 2.
pub fn fleiss_kappa(counts: &[Vec<usize>]) -> Result<f64, FleissError> {
    let first = counts.first().ok_or(FleissError::NoItems)?;
    let n: usize = first.iter().sum();
    if n < 2 {
        return Err(FleissError::TooFewRatings);
    }
    let k = first.len();
    let mut pj = vec![0.0; k];
    let mut p_bar = 0.0;
    for (i, row) in counts.iter().enumerate() {
        if row.len() != k || row.iter().sum::<usize>() != n {
            return Err(FleissError::Uneven(i));
        }
        let agree: usize = row.iter().map(|&c| c * c.saturating_sub(1)).sum();
        p_bar += agree as f64 / (n * (n - 1)) as f64;
        for (j, &c) in row.iter().enumerate() {
            pj[j] += c as f64;
        }
    }
    let items = counts.len() as f64;
    p_bar /= items;
    let pe: f64 = pj.iter().map(|c| (c / (items * n as f64)).powi(2)).sum();
    if pe >= 1.0 {
        return Err(FleissError::OneCategory);
    }
    Ok((p_bar - pe) / (1.0 - pe))
}

/// Krippendorff's alpha for nominal data: `units[i]` = the labels unit `i` received (any number;
/// units with fewer than 2 are not pairable and left out). Built from the coincidence matrix:
/// alpha = 1 - (n - 1) * sum_{c != k} o_ck / sum_{c != k} n_c n_k.
pub fn krippendorff_alpha(units: &[Vec<usize>]) -> Option<f64> {
    let k = units.iter().flatten().max().copied()? + 1;
    let mut o = vec![vec![0.0; k]; k];
    for u in units.iter().filter(|u| u.len() >= 2) {
        let w = 1.0 / (u.len() - 1) as f64;
        for (i, &c) in u.iter().enumerate() {
            for (j, &d) in u.iter().enumerate() {
                if i != j {
                    o[c][d] += w;
                }
            }
        }
    }
    let nc: Vec<f64> = o.iter().map(|row| row.iter().sum()).collect();
    let n: f64 = nc.iter().sum();
    if n <= 1.0 {
        return None;
    }
    let (mut d_o, mut d_e) = (0.0, 0.0);
    for c in 0..k {
        for d in 0..k {
            if c != d {
                d_o += o[c][d];
                d_e += nc[c] * nc[d];
            }
        }
    }
    (d_e > 0.0).then(|| 1.0 - (n - 1.0) * d_o / d_e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cohen_by_hand() {
        // 50 items: both "yes" 20, yes/no 5, no/yes 10, both "no" 15.
        // p_o = 35/50 = 0.7; p_e = (25/50)(30/50) + (25/50)(20/50) = 0.3 + 0.2 = 0.5;
        // kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4.
        let mut a = vec![];
        let mut b = vec![];
        for (x, y, n) in [(0, 0, 20), (0, 1, 5), (1, 0, 10), (1, 1, 15)] {
            a.extend(std::iter::repeat_n(x, n));
            b.extend(std::iter::repeat_n(y, n));
        }
        assert!((cohen_kappa(&a, &b).unwrap() - 0.4).abs() < 1e-12);
        // sklearn.metrics.cohen_kappa_score([0,1,2,0,1,2,0,0], [0,1,1,0,2,2,0,1]) = 0.4285714285714286
        let k = cohen_kappa(&[0, 1, 2, 0, 1, 2, 0, 0], &[0, 1, 1, 0, 2, 2, 0, 1]).unwrap();
        assert!((k - 0.4285714285714286).abs() < 1e-12, "{k}");
        assert_eq!(cohen_kappa(&[1, 1], &[1, 1]), None);
        assert_eq!(cohen_kappa(&[], &[]), None);
    }

    #[test]
    fn fleiss_reference_example() {
        // Fleiss (1971)-style worked example, 10 items x 14 raters x 5 categories:
        // P-bar = 0.378, P-e = 0.213; statsmodels.stats.inter_rater.fleiss_kappa(table)
        // = 0.20993070442195522.
        let table = vec![
            vec![0, 0, 0, 0, 14],
            vec![0, 2, 6, 4, 2],
            vec![0, 0, 3, 5, 6],
            vec![0, 3, 9, 2, 0],
            vec![2, 2, 8, 1, 1],
            vec![7, 7, 0, 0, 0],
            vec![3, 2, 6, 3, 0],
            vec![2, 5, 3, 2, 2],
            vec![6, 5, 2, 1, 0],
            vec![0, 2, 2, 3, 7],
        ];
        let k = fleiss_kappa(&table).unwrap();
        assert!((k - 0.20993070442195522).abs() < 1e-12, "{k}");
        assert_eq!(fleiss_kappa(&[vec![1, 1], vec![3, 0]]).unwrap_err(), FleissError::Uneven(1));
    }

    #[test]
    fn krippendorff_reference_example() {
        // Krippendorff (2011), "Computing Krippendorff's alpha-reliability", 4 coders x 12 units
        // with missing values (columns are units; "." missing):
        //   A: 1 2 3 3 2 1 4 1 2 . . .
        //   B: 1 2 3 3 2 2 4 1 2 5 . 3
        //   C: . 3 3 3 2 3 4 2 2 5 1 .
        //   D: 1 2 3 3 2 4 4 1 2 5 1 .
        // nominal alpha = 0.743 (the paper); krippendorff.alpha(data, level_of_measurement="nominal")
        // = 0.743421052631579.
        let units = vec![
            vec![1, 1, 1],
            vec![2, 2, 3, 2],
            vec![3, 3, 3, 3],
            vec![3, 3, 3, 3],
            vec![2, 2, 2, 2],
            vec![1, 2, 3, 4],
            vec![4, 4, 4, 4],
            vec![1, 1, 2, 1],
            vec![2, 2, 2, 2],
            vec![5, 5, 5],
            vec![1, 1],
            vec![3],
        ];
        let a = krippendorff_alpha(&units).unwrap();
        assert!((a - 0.7434210526315789).abs() < 1e-12, "{a}");
        // With exactly two coders and no missing data, alpha approaches Scott's pi; perfect
        // agreement is 1.
        assert_eq!(krippendorff_alpha(&[vec![0, 0], vec![1, 1]]), Some(1.0));
        assert_eq!(krippendorff_alpha(&[vec![1]]), None);
    }
}
