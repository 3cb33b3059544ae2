//! Results as files people read: one CSV row per phase, a summary per (acquisition, m) with
//! the mean over seeds and its standard error, a Markdown table, and an SVG plot of win-rate
//! against labels used, one line per acquisition function with error bars. CSVs are written
//! by the `csv` crate from row structs, so quoting is right and the header is the fields.
//!
//! Arms are compared with random paired, prompt by prompt (`analytics::paired`): every arm of
//! a seed is judged on the same prompts against the same baseline samples, so the per-prompt
//! differences carry far less noise than two win-rates side by side. Those rows, and the
//! labels each arm needs to reach random's final win-rate, come from the per-prompt outcomes
//! in each run's `samples-phase-{P}.json` ([`Outcomes`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use apl_engine::eval::mean_and_stderr;
use apl_shared::Acquisition;
use serde::Serialize;

use super::run::PhaseRecord;
use crate::analytics::paired::{
    self, ArmCurve, Efficiency, PairedDifference, Reach, SeedScores, efficiency, paired_difference, resamples,
};

/// A float written with a fixed number of decimals (`D`), for CSV columns people read.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Fixed<const D: usize>(f64);

impl<const D: usize> Serialize for Fixed<D> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:.*}", D, self.0))
    }
}

/// One row of phases.csv (the header is these fields' names).
#[derive(Serialize)]
struct PhaseRow {
    acquisition: Acquisition,
    seed: u64,
    phase: usize,
    m: usize,
    labels: usize,
    new_pairs: usize,
    oracle_calls: usize,
    undecided: usize,
    win_rate: Fixed<4>,
    stderr: Fixed<4>,
    wins: usize,
    ties: usize,
    losses: usize,
    final_loss: Option<Fixed<4>>,
    final_reward_accuracy: Option<Fixed<4>>,
    final_reward_margin: Option<Fixed<4>>,
    acquire_sampling_s: Fixed<2>,
    acquire_scoring_s: Fixed<2>,
    labelling_s: Fixed<2>,
    train_reference_s: Fixed<2>,
    train_prefix_s: Fixed<2>,
    train_steps_s: Fixed<2>,
    eval_sampling_s: Fixed<2>,
    eval_judging_s: Fixed<2>,
    total_s: Fixed<2>,
}

use crate::store::export::csv_of;

/// One row per phase.
pub fn phases_csv(records: &[PhaseRecord]) -> String {
    let last = |v: &[f64]| v.last().copied().map(Fixed::<4>);
    csv_of(records.iter().map(|r| {
        let t = &r.timings;
        PhaseRow {
            acquisition: r.acquisition,
            seed: r.seed,
            phase: r.phase,
            m: r.m,
            labels: r.labels,
            new_pairs: r.new_pairs,
            oracle_calls: r.oracle_calls,
            undecided: r.undecided,
            win_rate: Fixed(r.win_rate.win_rate),
            stderr: Fixed(r.win_rate.stderr),
            wins: r.win_rate.wins,
            ties: r.win_rate.ties,
            losses: r.win_rate.losses,
            final_loss: last(&r.train.loss_curve),
            final_reward_accuracy: last(&r.train.accuracy_curve),
            final_reward_margin: last(&r.train.margin_curve),
            acquire_sampling_s: Fixed(t.acquire_sampling),
            acquire_scoring_s: Fixed(t.acquire_scoring),
            labelling_s: Fixed(t.labelling),
            train_reference_s: Fixed(t.train_reference_logprobs),
            train_prefix_s: Fixed(t.train_prefix_cache),
            train_steps_s: Fixed(t.train_steps),
            eval_sampling_s: Fixed(t.eval_sampling),
            eval_judging_s: Fixed(t.eval_judging),
            total_s: Fixed(t.total),
        }
    }))
}

/// Mean win-rate over seeds for one (acquisition, m).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryRow {
    pub acquisition: Acquisition,
    pub m: usize,
    pub seeds: usize,
    pub win_rate: f64,
    /// Over seeds when there are several, else the single run's over prompts.
    pub stderr: f64,
    /// The part the finite evaluation set explains: each seed's over-prompts standard error,
    /// combined for the mean, sqrt(sum se_i^2) / n. With few seeds the over-seeds figure is
    /// itself noisy; this one is not.
    pub stderr_prompts: f64,
    /// The held-out judge's mean win-rate, when it judged.
    pub held_out_win_rate: Option<f64>,
    pub mean_labels: f64,
    pub mean_seconds: f64,
}

pub fn summarize(records: &[PhaseRecord]) -> Vec<SummaryRow> {
    let mut groups: BTreeMap<(Acquisition, usize), Vec<&PhaseRecord>> = BTreeMap::new();
    for r in records {
        groups.entry((r.acquisition, r.m)).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|((acquisition, m), rs)| {
            let rates: Vec<f64> = rs.iter().map(|r| r.win_rate.win_rate).collect();
            let (mean, se) = mean_and_stderr(&rates);
            let stderr = if rs.len() > 1 { se } else { rs[0].win_rate.stderr };
            SummaryRow {
                acquisition,
                m,
                seeds: rs.len(),
                win_rate: mean,
                stderr,
                stderr_prompts: stderr_of_mean(&rs.iter().map(|r| r.win_rate.stderr).collect::<Vec<_>>()),
                held_out_win_rate: {
                    let h: Vec<f64> =
                        rs.iter().filter_map(|r| r.held_out_win_rate.as_ref().map(|w| w.win_rate)).collect();
                    (h.len() == rs.len()).then(|| h.iter().sum::<f64>() / h.len() as f64)
                },
                mean_labels: rs.iter().map(|r| r.labels as f64).sum::<f64>() / rs.len() as f64,
                mean_seconds: rs.iter().map(|r| r.timings.total).sum::<f64>() / rs.len() as f64,
            }
        })
        .collect()
}

/// Standard error of the mean of independent estimates with these standard errors.
fn stderr_of_mean(se: &[f64]) -> f64 {
    se.iter().map(|e| e * e).sum::<f64>().sqrt() / se.len() as f64
}

/// One row of summary.csv.
#[derive(Serialize)]
struct SummaryCsvRow {
    acquisition: Acquisition,
    m: usize,
    seeds: usize,
    win_rate: Fixed<4>,
    stderr: Fixed<4>,
    stderr_prompts: Fixed<4>,
    /// Paired against random on the same prompts (empty for random itself).
    vs_random: Option<Fixed<4>>,
    vs_random_lo: Option<Fixed<4>>,
    vs_random_hi: Option<Fixed<4>>,
    vs_random_stderr: Option<Fixed<4>>,
    held_out_win_rate: Option<Fixed<4>>,
    held_out_vs_random: Option<Fixed<4>>,
    held_out_vs_random_lo: Option<Fixed<4>>,
    held_out_vs_random_hi: Option<Fixed<4>>,
    mean_labels: Fixed<1>,
    mean_phase_seconds: Fixed<1>,
}

pub fn summary_csv(rows: &[SummaryRow], cmp: &Comparison) -> String {
    csv_of(rows.iter().map(|r| {
        let d = cmp.paired(Judge::Oracle, r.acquisition, r.m);
        let h = cmp.paired(Judge::HeldOut, r.acquisition, r.m);
        SummaryCsvRow {
            acquisition: r.acquisition,
            m: r.m,
            seeds: r.seeds,
            win_rate: Fixed(r.win_rate),
            stderr: Fixed(r.stderr),
            stderr_prompts: Fixed(r.stderr_prompts),
            vs_random: d.map(|d| Fixed(d.estimate)),
            vs_random_lo: d.map(|d| Fixed(d.lo)),
            vs_random_hi: d.map(|d| Fixed(d.hi)),
            vs_random_stderr: d.map(|d| Fixed(d.stderr)),
            held_out_win_rate: r.held_out_win_rate.map(Fixed),
            held_out_vs_random: h.map(|d| Fixed(d.estimate)),
            held_out_vs_random_lo: h.map(|d| Fixed(d.lo)),
            held_out_vs_random_hi: h.map(|d| Fixed(d.hi)),
            mean_labels: Fixed(r.mean_labels),
            mean_phase_seconds: Fixed(r.mean_seconds),
        }
    }))
}

/// Whose outcomes: the experiment's judge, or the held-out judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Judge {
    Oracle,
    HeldOut,
}

impl Judge {
    fn heading(self) -> &'static str {
        match self {
            Self::Oracle => "judged by the experiment's judge",
            Self::HeldOut => "judged by the held-out classifier",
        }
    }
}

/// Per-prompt outcome scores (win 1, tie 1/2, loss 0) of every finished phase, by (judge,
/// acquisition, m, seed), in evaluation-prompt order, with a fingerprint of the baseline texts
/// they were judged against: two phases pair only when they share the baseline (a seed's
/// baseline is regenerated when an older results directory is resumed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcomes(pub BTreeMap<PhaseKey, (u64, Vec<f64>)>);

/// (judge, acquisition, m, seed).
pub type PhaseKey = (Judge, Acquisition, usize, u64);

/// One arm against random at one m.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairedRow {
    pub judge: Judge,
    pub acquisition: Acquisition,
    pub m: usize,
    #[serde(flatten)]
    pub difference: PairedDifference,
}

/// The labels one arm needs to reach random's final win-rate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EfficiencyRow {
    pub judge: Judge,
    pub acquisition: Acquisition,
    /// Seeds with the whole schedule for both arms.
    pub seeds: Vec<u64>,
    #[serde(flatten)]
    pub efficiency: Efficiency,
}

/// Every arm against random: paired differences and label efficiency.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Comparison {
    pub paired: Vec<PairedRow>,
    pub efficiency: Vec<EfficiencyRow>,
}

impl Comparison {
    pub fn paired(&self, judge: Judge, acquisition: Acquisition, m: usize) -> Option<&PairedDifference> {
        self.paired.iter().find(|r| r.judge == judge && r.acquisition == acquisition && r.m == m).map(|r| &r.difference)
    }
}

/// Compares every arm with random, per judge and m, on the seeds both have finished.
pub fn compare(outcomes: &Outcomes) -> Comparison {
    let o = &outcomes.0;
    let mut out = Comparison::default();
    let judges: std::collections::BTreeSet<Judge> = o.keys().map(|k| k.0).collect();
    let arms: std::collections::BTreeSet<Acquisition> =
        o.keys().map(|k| k.1).filter(|a| *a != Acquisition::Random).collect();
    for judge in judges {
        let ms: std::collections::BTreeSet<usize> =
            o.keys().filter(|k| k.0 == judge && k.1 == Acquisition::Random).map(|k| k.2).collect();
        let seeds_of = |acq: Acquisition, m: usize| -> std::collections::BTreeSet<u64> {
            o.keys().filter(|k| k.0 == judge && k.1 == acq && k.2 == m).map(|k| k.3).collect()
        };
        for &arm in &arms {
            for &m in &ms {
                let seeds: Vec<u64> = seeds_of(arm, m)
                    .intersection(&seeds_of(Acquisition::Random, m))
                    .copied()
                    .filter(|&s| o[&(judge, arm, m, s)].0 == o[&(judge, Acquisition::Random, m, s)].0)
                    .collect();
                let scores: Vec<SeedScores> = seeds
                    .iter()
                    .map(|&s| SeedScores {
                        arm: o[&(judge, arm, m, s)].1.clone(),
                        reference: o[&(judge, Acquisition::Random, m, s)].1.clone(),
                    })
                    .collect();
                let sizes: Vec<usize> = scores.iter().map(|s| s.arm.len()).collect();
                let draws = resamples(&sizes, paired::RESAMPLES, 0x5eed ^ m as u64);
                if let Some(difference) = paired_difference(&scores, &draws) {
                    out.paired.push(PairedRow { judge, acquisition: arm, m, difference });
                }
            }
            // Label efficiency on the seeds with every m for both arms.
            let complete = |acq: Acquisition| -> std::collections::BTreeSet<u64> {
                let mut it = ms.iter().map(|&m| seeds_of(acq, m));
                let first = it.next().unwrap_or_default();
                it.fold(first, |acc, s| acc.intersection(&s).copied().collect())
            };
            let same_baseline =
                |s: u64| ms.iter().all(|&m| o[&(judge, arm, m, s)].0 == o[&(judge, Acquisition::Random, m, s)].0);
            let seeds: Vec<u64> = complete(arm)
                .intersection(&complete(Acquisition::Random))
                .copied()
                .filter(|&s| same_baseline(s))
                .collect();
            if seeds.is_empty() || ms.is_empty() {
                continue;
            }
            let curve = |acq: Acquisition| ArmCurve {
                labels: ms.iter().map(|&m| m as f64).collect(),
                scores: ms.iter().map(|&m| seeds.iter().map(|&s| o[&(judge, acq, m, s)].1.clone()).collect()).collect(),
            };
            let (mine, random) = (curve(arm), curve(Acquisition::Random));
            // Every seed's prompts are the same at every m: one draw of them serves all m.
            let sizes: Vec<usize> = random.scores[0].iter().map(Vec::len).collect();
            if mine.scores.iter().chain(&random.scores).any(|per| per.iter().map(Vec::len).ne(sizes.iter().copied())) {
                continue;
            }
            let draws = resamples(&sizes, paired::RESAMPLES, 0xeff1);
            if let Some(efficiency) = efficiency(&mine, &random, &draws) {
                out.efficiency.push(EfficiencyRow { judge, acquisition: arm, seeds: seeds.clone(), efficiency });
            }
        }
    }
    out
}

fn labels_text(x: f64) -> String {
    if x.is_finite() { format!("{x:.0}") } else { "not reached".into() }
}

/// The paired differences and label efficiency as Markdown sections.
pub fn comparison_markdown(cmp: &Comparison) -> String {
    let mut s = String::new();
    let judges: std::collections::BTreeSet<Judge> = cmp.paired.iter().map(|r| r.judge).collect();
    for judge in judges {
        let rows: Vec<&PairedRow> = cmp.paired.iter().filter(|r| r.judge == judge).collect();
        let mut ms: Vec<usize> = rows.iter().map(|r| r.m).collect();
        ms.sort_unstable();
        ms.dedup();
        let _ = writeln!(s, "\n## Against random, paired ({})\n", judge.heading());
        s.push_str("| arm − random |");
        for m in &ms {
            let _ = write!(s, " m={m} |");
        }
        s.push_str("\n|---|");
        s.push_str(&"---|".repeat(ms.len()));
        s.push('\n');
        let mut arms: Vec<Acquisition> = rows.iter().map(|r| r.acquisition).collect();
        arms.dedup();
        for a in arms {
            let _ = write!(s, "| {a} − random |");
            for m in &ms {
                match rows.iter().find(|r| r.acquisition == a && r.m == *m) {
                    Some(r) => {
                        let d = &r.difference;
                        let seeds = d.stderr_seeds.map(|e| format!(", seeds ± {e:.3}")).unwrap_or_default();
                        let mark = if d.decisive() { "**" } else { "" };
                        let _ = write!(s, " {mark}{}{mark} ± {:.3}{seeds} |", d.show(), d.stderr);
                    }
                    None => s.push_str(" |"),
                }
            }
            s.push('\n');
        }
        let (seeds, prompts) = rows.first().map_or((0, 0), |r| (r.difference.seeds, r.difference.prompts));
        let _ = writeln!(
            s,
            "\nPer evaluation prompt, the arm's outcome minus random's on the same prompt and baseline sample (win 1, \
             tie ½, loss 0), averaged over prompts, then over seeds ({seeds} seed(s), {prompts} prompt pairs). In \
             brackets the {:.0}% bootstrap interval ({} resamples of the prompts within each seed: conditional on \
             the trained policies); ± the paired standard error; \"seeds ±\" the standard error of the per-seed \
             means. Bold: the interval leaves out 0.",
            paired::LEVEL * 100.0,
            paired::RESAMPLES
        );
        let eff: Vec<&EfficiencyRow> = cmp.efficiency.iter().filter(|r| r.judge == judge).collect();
        if let Some(first) = eff.first() {
            let e = &first.efficiency;
            let _ = writeln!(
                s,
                "\n### Labels to reach random's final win-rate\n\nRandom reaches {:.3} at {} labels (its last point). \
                 The labels each arm needs for the same win-rate, interpolated linearly on its curve, with the {:.0}% \
                 interval from the same resamples (\"not reached\": beyond the schedule in that share of resamples).\n\n\
                 | arm | labels | interval | labels saved |\n|---|---|---|---|",
                e.target,
                e.reference_labels,
                e.level * 100.0
            );
            for r in eff {
                let e = &r.efficiency;
                let labels = match e.reach {
                    Reach::At(x) => format!("{x:.0}"),
                    Reach::ByFirst(x) => format!("≤ {x:.0}"),
                    Reach::Never => format!("> {}", e.reference_labels),
                };
                let saved = match e.reach {
                    Reach::At(x) => format!("{:+.0}%", 100.0 * (1.0 - x / e.reference_labels)),
                    Reach::ByFirst(x) => format!("≥ {:.0}%", 100.0 * (1.0 - x / e.reference_labels)),
                    Reach::Never => "none".into(),
                };
                let _ = writeln!(
                    s,
                    "| {} | {labels} | [{}, {}] | {saved} |",
                    r.acquisition.name(),
                    labels_text(e.lo),
                    labels_text(e.hi)
                );
            }
        }
    }
    s
}

/// A Markdown table: one row per acquisition function, one column per m.
/// `head`, when given, opens the page (what the preset matches of the paper); the paired
/// comparison with random and the held-out judge's table follow the win-rates.
pub fn summary_markdown(rows: &[SummaryRow], cmp: &Comparison, head: Option<&str>) -> String {
    let mut s = head.map(|h| format!("{h}\n\n")).unwrap_or_default();
    s.push_str(&win_rate_table(rows, |r| {
        Some(format!("{:.3} ± {:.3} ({:.3})", r.win_rate, r.stderr, r.stderr_prompts))
    }));
    let seeds = rows.iter().map(|r| r.seeds).max().unwrap_or(0);
    let _ = writeln!(
        s,
        "\nWin-rate against the baseline, mean over {seeds} seed(s) ± standard error {}; in brackets the \
         standard error from the finite evaluation set alone.",
        if seeds > 1 { "over seeds" } else { "over prompts" }
    );
    if rows.iter().any(|r| r.held_out_win_rate.is_some()) {
        s.push_str(
            "\nThe same samples judged by the held-out classifier (trained on reviews the labeller never saw):\n\n",
        );
        s.push_str(&win_rate_table(rows, |r| r.held_out_win_rate.map(|w| format!("{w:.3}"))));
    }
    s.push_str(&comparison_markdown(cmp));
    s
}

/// One row per acquisition function, one column per m, cells from `cell`.
fn win_rate_table(rows: &[SummaryRow], cell: impl Fn(&SummaryRow) -> Option<String>) -> String {
    let ms: Vec<usize> = {
        let mut v: Vec<usize> = rows.iter().map(|r| r.m).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let mut s = String::from("| acquisition |");
    for m in &ms {
        let _ = write!(s, " m={m} |");
    }
    s.push_str("\n|---|");
    for _ in &ms {
        s.push_str("---|");
    }
    s.push('\n');
    let mut acqs: Vec<Acquisition> = rows.iter().map(|r| r.acquisition).collect();
    acqs.sort();
    acqs.dedup();
    for a in acqs {
        let _ = write!(s, "| {a} |");
        for m in &ms {
            match rows.iter().find(|r| r.acquisition == a && r.m == *m).and_then(&cell) {
                Some(text) => {
                    let _ = write!(s, " {text} |");
                }
                None => s.push_str(" |"),
            }
        }
        s.push('\n');
    }
    s
}

/// Win-rate against labels: one coloured line per acquisition function, ±1 standard error bars.
pub fn winrate_svg(rows: &[SummaryRow], title: &str) -> String {
    let (w, h) = (720.0, 440.0);
    let (left, right, top, bottom) = (70.0, 170.0, 40.0, 60.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let xs: Vec<f64> = rows.iter().map(|r| r.mean_labels).collect();
    let (xmin, xmax) =
        (xs.iter().copied().fold(f64::INFINITY, f64::min).min(0.0), xs.iter().copied().fold(0.0, f64::max).max(1.0));
    let lo = rows.iter().map(|r| r.win_rate - r.stderr).fold(0.5f64, f64::min);
    let hi = rows.iter().map(|r| r.win_rate + r.stderr).fold(0.5f64, f64::max);
    let (ymin, ymax) = (((lo - 0.02) * 20.0).floor() / 20.0, ((hi + 0.02) * 20.0).ceil() / 20.0);
    let x = |v: f64| left + (v - xmin) / (xmax - xmin) * pw;
    let y = |v: f64| top + (1.0 - (v - ymin) / (ymax - ymin)) * ph;
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        escape(title)
    );
    // Axes, grid and ticks.
    let mut t = ymin;
    while t <= ymax + 1e-9 {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#e5e5e5"/>"##,
            left + pw,
            y(t),
            y(t)
        );
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{t:.2}</text>"#, left - 6.0, y(t) + 4.0);
        t += 0.05;
    }
    let _ = writeln!(
        s,
        r##"<line x1="{left}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="4 3"/>"##,
        left + pw,
        y(0.5),
        y(0.5)
    );
    let mut ticks: Vec<f64> = xs.clone();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    for v in ticks {
        let _ = writeln!(s, r#"<text x="{:.1}" y="{}" text-anchor="middle">{v:.0}</text>"#, x(v), top + ph + 18.0);
    }
    let _ = writeln!(s, r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#);
    let _ =
        writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">labels used (m)</text>"#, left + pw / 2.0, h - 18.0);
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">win-rate vs baseline</text>"#,
        top + ph / 2.0
    );
    // One series per acquisition function.
    let mut acqs: Vec<Acquisition> = rows.iter().map(|r| r.acquisition).collect();
    acqs.sort();
    acqs.dedup();
    for (k, a) in acqs.iter().enumerate() {
        let c = colours[k % colours.len()];
        let mut pts: Vec<&SummaryRow> = rows.iter().filter(|r| r.acquisition == *a).collect();
        pts.sort_by(|p, q| p.mean_labels.total_cmp(&q.mean_labels));
        // Offset series slightly so error bars do not hide each other.
        let dx = (k as f64 - (acqs.len() as f64 - 1.0) / 2.0) * 4.0;
        let path: Vec<String> =
            pts.iter().map(|r| format!("{:.1},{:.1}", x(r.mean_labels) + dx, y(r.win_rate))).collect();
        let _ = writeln!(s, r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#, path.join(" "));
        for r in &pts {
            let (cx, cy) = (x(r.mean_labels) + dx, y(r.win_rate));
            let (y0, y1) = (y(r.win_rate - r.stderr), y(r.win_rate + r.stderr));
            let _ = writeln!(
                s,
                r#"<line x1="{cx:.1}" x2="{cx:.1}" y1="{y0:.1}" y2="{y1:.1}" stroke="{c}" stroke-width="1.5"/>"#
            );
            let _ = writeln!(
                s,
                r#"<line x1="{:.1}" x2="{:.1}" y1="{y0:.1}" y2="{y0:.1}" stroke="{c}"/>"#,
                cx - 4.0,
                cx + 4.0
            );
            let _ = writeln!(
                s,
                r#"<line x1="{:.1}" x2="{:.1}" y1="{y1:.1}" y2="{y1:.1}" stroke="{c}"/>"#,
                cx - 4.0,
                cx + 4.0
            );
            let _ = writeln!(
                s,
                r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="3.5" fill="{c}"><title>{a} m={}: {:.3} ± {:.3}</title></circle>"#,
                r.m, r.win_rate, r.stderr
            );
        }
        let ly = top + 16.0 + k as f64 * 20.0;
        let _ = writeln!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="3"/>"#,
            left + pw + 16.0,
            left + pw + 40.0
        );
        let _ = writeln!(s, r#"<text x="{}" y="{}">{a}</text>"#, left + pw + 46.0, ly + 4.0);
    }
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(a: Acquisition, m: usize, w: f64, se: f64) -> SummaryRow {
        SummaryRow {
            acquisition: a,
            m,
            seeds: 2,
            win_rate: w,
            stderr: se,
            stderr_prompts: se / 2.0,
            held_out_win_rate: None,
            mean_labels: m as f64,
            mean_seconds: 1.0,
        }
    }

    #[test]
    fn phases_judged_against_different_baselines_are_not_paired() {
        // Seed 0 shares its baseline between the arms; seed 1's random phase was judged against a
        // regenerated baseline (fingerprint 8 instead of 7), so only seed 0 pairs.
        let mut o = Outcomes::default();
        let mut put = |a, s, baseline, v: [f64; 4]| {
            o.0.insert((Judge::Oracle, a, 64, s), (baseline, v.to_vec()));
        };
        put(Acquisition::Random, 0, 7, [0.0, 1.0, 0.5, 0.0]);
        put(Acquisition::Certainty, 0, 7, [1.0, 1.0, 0.5, 0.0]);
        put(Acquisition::Random, 1, 8, [0.0, 0.0, 0.0, 0.0]);
        put(Acquisition::Certainty, 1, 7, [1.0, 1.0, 1.0, 1.0]);
        let c = compare(&o);
        let d = c.paired(Judge::Oracle, Acquisition::Certainty, 64).expect("seed 0 pairs");
        assert_eq!((d.seeds, d.prompts), (1, 4));
        // Seed 0's differences: 1, 0, 0, 0.
        assert!((d.estimate - 0.25).abs() < 1e-12);
        assert_eq!(c.efficiency.iter().map(|e| e.seeds.clone()).collect::<Vec<_>>(), vec![vec![0]]);
    }

    #[test]
    fn prompt_stderr_of_a_mean_over_seeds() {
        // Two seeds at 0.03 and 0.04: sqrt(0.0009 + 0.0016) / 2 = 0.05 / 2.
        assert!((stderr_of_mean(&[0.03, 0.04]) - 0.025).abs() < 1e-12);
        assert_eq!(stderr_of_mean(&[0.02]), 0.02);
    }

    #[test]
    fn markdown_and_svg_carry_every_point() {
        let rows = vec![
            row(Acquisition::Random, 64, 0.55, 0.02),
            row(Acquisition::Random, 128, 0.60, 0.02),
            row(Acquisition::Certainty, 64, 0.56, 0.03),
            row(Acquisition::Certainty, 128, 0.66, 0.03),
        ];
        let md = summary_markdown(&rows, &Comparison::default(), None);
        assert!(md.contains("| random | 0.550 ± 0.020 (0.010) | 0.600 ± 0.020 (0.010) |"), "{md}");
        assert!(md.contains("mean over 2 seed(s) ± standard error over seeds"), "{md}");
        let svg = winrate_svg(&rows, "IMDB <test>");
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains("IMDB &lt;test&gt;") && svg.contains("certainty"));
    }
}
