//! A project's label-quality and evaluation report, built from plain rows the store returns:
//! human votes, judge labels, evaluations. Pure, so the numbers can be checked on fixed data;
//! the API only fetches and serialises.
//!
//! Categories are nominal: a, b, tie, both_bad (skips are not judgements and are left out; a
//! judge's "none" likewise). A pair's human label, when compared with a judge, is its plurality
//! category; pairs whose vote is split evenly between categories are left out of that comparison.

use std::collections::{BTreeMap, HashMap};

use apl_shared::{Choice, Preference, Side};

use super::agreement::{cohen_kappa, fleiss_kappa, krippendorff_alpha};
use super::bootstrap::{Interval, LEVEL, RESAMPLES, bootstrap};
use super::bradley_terry::{Game, ranking};
use super::winrate::length_controlled;

pub const CATEGORIES: [Choice; 4] = [Choice::A, Choice::B, Choice::Tie, Choice::BothBad];

fn category(choice: Choice) -> Option<usize> {
    CATEGORIES.iter().position(|c| *c == choice)
}

/// A judge's label as a category (no decision is none).
fn judged_category(p: Preference) -> Option<usize> {
    category(match p {
        Preference::A => Choice::A,
        Preference::B => Choice::B,
        Preference::Tie => Choice::Tie,
        Preference::NoDecision => return None,
    })
}

/// One human vote: (pair, rater, choice, side shown on the left).
pub struct VoteRow<'a> {
    pub pair: &'a str,
    pub rater: &'a str,
    pub choice: Choice,
    pub left: Side,
}

/// One judge label: (pair, judge, preference).
pub struct JudgeRow<'a> {
    pub pair: &'a str,
    pub judge: &'a str,
    pub choice: Preference,
}

/// An evaluation: who, and its per-prompt outcomes with the two texts' lengths.
pub struct EvalRow<'a> {
    pub id: &'a str,
    /// None: the starting model.
    pub checkpoint: Option<&'a str>,
    pub judge: &'a str,
    /// (policy score 1 / 0.5 / 0, policy length minus baseline length, in characters).
    pub games: Vec<(f64, f64)>,
}

pub use apl_shared::{
    EvaluationSummary, HumanAgreement, JudgeAgreement, LeaderboardEntry, ProjectAnalytics, RaterPair,
};

/// Pairs in first-seen order with each rater's category.
fn by_pair<'a>(votes: &[VoteRow<'a>]) -> Vec<(&'a str, Vec<(&'a str, usize)>)> {
    let mut order: Vec<&str> = Vec::new();
    let mut map: HashMap<&str, Vec<(&str, usize)>> = HashMap::new();
    for v in votes {
        if let Some(c) = category(v.choice) {
            map.entry(v.pair).or_insert_with(|| {
                order.push(v.pair);
                Vec::new()
            });
            map.get_mut(v.pair).unwrap().push((v.rater, c));
        }
    }
    order.into_iter().map(|p| (p, map.remove(p).unwrap())).collect()
}

fn plurality(labels: &[(&str, usize)]) -> Option<usize> {
    let mut counts = [0usize; 4];
    for (_, c) in labels {
        counts[*c] += 1;
    }
    let max = *counts.iter().max()?;
    let winners: Vec<usize> = (0..4).filter(|&c| counts[c] == max).collect();
    (max > 0 && winners.len() == 1).then(|| winners[0])
}

pub fn build(votes: &[VoteRow], judges: &[JudgeRow], evals: &[EvalRow], seed: u64) -> ProjectAnalytics {
    let pairs = by_pair(votes);
    let units: Vec<Vec<usize>> = pairs.iter().map(|(_, l)| l.iter().map(|x| x.1).collect()).collect();
    let overlapping: Vec<usize> = (0..units.len()).filter(|&i| units[i].len() >= 2).collect();
    let alpha = bootstrap(overlapping.len(), RESAMPLES, LEVEL, seed, |idx| {
        let us: Vec<Vec<usize>> = idx.iter().map(|&i| units[overlapping[i]].clone()).collect();
        krippendorff_alpha(&us)
    });
    // Fleiss: the pairs with the modal number of votes.
    let mut count_freq: BTreeMap<usize, usize> = BTreeMap::new();
    for &i in &overlapping {
        *count_freq.entry(units[i].len()).or_default() += 1;
    }
    let modal = count_freq.iter().max_by_key(|(k, n)| (**n, **k)).map(|(k, _)| *k);
    let fleiss_rows: Vec<Vec<usize>> = overlapping
        .iter()
        .filter(|&&i| Some(units[i].len()) == modal)
        .map(|&i| {
            let mut row = vec![0; 4];
            for &c in &units[i] {
                row[c] += 1;
            }
            row
        })
        .collect();
    let side = |c: Choice| match c {
        Choice::A => Some(Side::A),
        Choice::B => Some(Side::B),
        _ => None,
    };
    let left: Vec<bool> = votes.iter().filter_map(|v| side(v.choice).map(|s| s == v.left)).collect();
    let left_preference = share(&left, seed);
    let humans = HumanAgreement {
        votes: units.iter().map(Vec::len).sum(),
        overlapping_pairs: overlapping.len(),
        krippendorff_alpha: alpha,
        fleiss_kappa: fleiss_kappa(&fleiss_rows).ok(),
        fleiss_pairs: fleiss_rows.len(),
        left_preference,
    };

    // Rater against rater, on the pairs both labelled.
    let mut per_rater: BTreeMap<&str, HashMap<&str, usize>> = BTreeMap::new();
    for (pair, labels) in &pairs {
        for (rater, c) in labels {
            per_rater.entry(rater).or_default().insert(pair, *c);
        }
    }
    let raters: Vec<&str> = per_rater.keys().copied().collect();
    let mut rater_pairs = Vec::new();
    for (i, ra) in raters.iter().enumerate() {
        for rb in &raters[i + 1..] {
            let (ma, mb) = (&per_rater[ra], &per_rater[rb]);
            let (mut xa, mut xb) = (Vec::new(), Vec::new());
            for (pair, _) in &pairs {
                if let (Some(a), Some(b)) = (ma.get(pair), mb.get(pair)) {
                    xa.push(*a);
                    xb.push(*b);
                }
            }
            if !xa.is_empty() {
                rater_pairs.push(RaterPair {
                    rater_a: ra.to_string(),
                    rater_b: rb.to_string(),
                    common_pairs: xa.len(),
                    kappa: cohen_kappa(&xa, &xb),
                });
            }
        }
    }

    // Each judge against the humans' plurality.
    let human_label: HashMap<&str, usize> = pairs.iter().filter_map(|(p, l)| plurality(l).map(|c| (*p, c))).collect();
    let mut judge_names: Vec<&str> = judges.iter().map(|j| j.judge).collect();
    judge_names.sort();
    judge_names.dedup();
    let judges_out = judge_names
        .into_iter()
        .map(|name| {
            let rows: Vec<&JudgeRow> = judges.iter().filter(|j| j.judge == name).collect();
            let no_decision = rows.iter().filter(|j| judged_category(j.choice).is_none()).count();
            let (mut jx, mut hx) = (Vec::new(), Vec::new());
            for j in &rows {
                if let (Some(c), Some(h)) = (judged_category(j.choice), human_label.get(j.pair)) {
                    jx.push(c);
                    hx.push(*h);
                }
            }
            let agreement =
                (!jx.is_empty()).then(|| jx.iter().zip(&hx).filter(|(a, b)| a == b).count() as f64 / jx.len() as f64);
            let kappa = bootstrap(jx.len(), RESAMPLES, LEVEL, seed, |idx| {
                let a: Vec<usize> = idx.iter().map(|&i| jx[i]).collect();
                let b: Vec<usize> = idx.iter().map(|&i| hx[i]).collect();
                cohen_kappa(&a, &b)
            });
            JudgeAgreement {
                judge: name.to_string(),
                labels: rows.len(),
                no_decision,
                compared_pairs: jx.len(),
                agreement,
                kappa,
            }
        })
        .collect();

    // Evaluations: raw win-rate with a bootstrap interval, and length-controlled.
    let evaluations = evals
        .iter()
        .map(|e| EvaluationSummary {
            id: e.id.to_string(),
            checkpoint: e.checkpoint.map(str::to_string),
            judge: e.judge.to_string(),
            win_rate: bootstrap(e.games.len(), RESAMPLES, LEVEL, seed, |idx| {
                (!idx.is_empty()).then(|| idx.iter().map(|&i| e.games[i].0).sum::<f64>() / idx.len() as f64)
            }),
            length_controlled: length_controlled(&e.games),
        })
        .collect();

    // Bradley-Terry over every evaluated game: player 0 is the starting model (the baseline of
    // every evaluation so far), then each checkpoint in first-evaluated order.
    let mut names: Vec<Option<&str>> = vec![None];
    let mut games = Vec::new();
    for e in evals {
        let player = match e.checkpoint {
            None => 0,
            Some(c) => match names.iter().position(|n| *n == Some(c)) {
                Some(i) => i,
                None => {
                    names.push(Some(c));
                    names.len() - 1
                }
            },
        };
        if player == 0 {
            continue; // the starting model against its own samples says nothing about rank
        }
        games.extend(e.games.iter().map(|g| Game { a: player, b: 0, score_a: g.0 }));
    }
    let leaderboard = if names.len() > 1 {
        ranking(names.len(), &games, seed)
            .into_iter()
            .map(|r| LeaderboardEntry { checkpoint: names[r.index].map(str::to_string), rating: r })
            .collect()
    } else {
        Vec::new()
    };

    ProjectAnalytics {
        categories: CATEGORIES.to_vec(),
        humans,
        rater_pairs,
        judges: judges_out,
        evaluations,
        leaderboard,
        judge_usage: None,
    }
}

/// The share of `true`, with a bootstrap interval.
pub fn share(xs: &[bool], seed: u64) -> Option<Interval> {
    bootstrap(xs.len(), RESAMPLES, LEVEL, seed, |idx| {
        (!idx.is_empty()).then(|| idx.iter().filter(|&&i| xs[i]).count() as f64 / idx.len() as f64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_on_fixed_labels() {
        // Three raters on four pairs; r1 and r2 agree on all four, r3 disagrees on p2 and p4.
        //   p1: a a a   p2: b b a   p3: a a a   p4: tie tie b
        use Choice::{A, B, Tie};
        let rows = [("p1", [A, A, A]), ("p2", [B, B, A]), ("p3", [A, A, A]), ("p4", [Tie, Tie, B])];
        let mut votes = Vec::new();
        for (p, cs) in &rows {
            for (r, c) in ["r1", "r2", "r3"].iter().zip(cs) {
                votes.push(VoteRow { pair: p, rater: r, choice: *c, left: Side::A });
            }
        }
        votes.push(VoteRow { pair: "p5", rater: "r1", choice: Choice::Skip, left: Side::A });
        let judges = [
            JudgeRow { pair: "p1", judge: "llm:x", choice: Preference::A },
            JudgeRow { pair: "p2", judge: "llm:x", choice: Preference::A },
            JudgeRow { pair: "p3", judge: "llm:x", choice: Preference::A },
            JudgeRow { pair: "p4", judge: "llm:x", choice: Preference::NoDecision },
        ];
        let evals = [EvalRow {
            id: "e1",
            checkpoint: Some("c1"),
            judge: "sentiment",
            games: vec![(1.0, 3.0), (0.0, -2.0), (1.0, 1.0), (0.5, 0.0)],
        }];
        let r = build(&votes, &judges, &evals, 0);
        assert_eq!((r.humans.votes, r.humans.overlapping_pairs, r.humans.fleiss_pairs), (12, 4, 4));
        // krippendorff.alpha([[0,1,0,2],[0,1,0,2],[0,0,0,1]], level_of_measurement="nominal")
        // = 0.46341463414634143 (categories a=0, b=1, tie=2; rows are raters).
        assert!((r.humans.krippendorff_alpha.unwrap().estimate - 0.46341463414634143).abs() < 1e-12);
        // statsmodels fleiss_kappa([[3,0,0,0],[1,2,0,0],[3,0,0,0],[0,1,2,0]]) = 0.41463414634146323
        assert!((r.humans.fleiss_kappa.unwrap() - 0.41463414634146323).abs() < 1e-12);
        // Left was A throughout: 7 of the 10 A/B votes chose the left text.
        assert!((r.humans.left_preference.unwrap().estimate - 0.7).abs() < 1e-12);
        let r12 = &r.rater_pairs[0];
        assert_eq!(
            (r12.rater_a.as_str(), r12.rater_b.as_str(), r12.common_pairs, r12.kappa),
            ("r1", "r2", 4, Some(1.0))
        );
        // The judge vs the plurality (a, b, a, tie): on p1-p3 it says a, a, a.
        // p_o = 2/3; p_e = (3/3)(2/3) = 2/3 for a, so kappa = 0 (it agrees no better than chance).
        let j = &r.judges[0];
        assert_eq!((j.labels, j.no_decision, j.compared_pairs), (4, 1, 3));
        assert!((j.agreement.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!(j.kappa.unwrap().estimate.abs() < 1e-12);
        assert!((r.evaluations[0].win_rate.unwrap().estimate - 0.625).abs() < 1e-12);
        assert_eq!(r.leaderboard.len(), 2);
        assert_eq!(r.leaderboard[0].checkpoint.as_deref(), Some("c1"), "2.5 of 4 against the starting model");
    }
}
