//! The evaluation panel: win-rate against labels used (one curve per acquisition function, this
//! project's and any others chosen for comparison), the same comparison paired prompt by prompt
//! (`apl_shared::paired`, as the experiment reports compute it), the Bradley-Terry leaderboard of
//! checkpoints, raw and length-controlled win-rates, human win-rate checks beside the judge's
//! figure on the same pairs, and side-by-side samples of policy and reference.
//!
//! Shaped around one load: the project's rounds, checkpoints and evaluations (every sample
//! included) are fetched once per view of the tab, and again only when the project changes
//! ([`Results`]); each section derives what it shows from that one copy, and projects chosen for
//! comparison are loaded once per choice for both the curves and the paired table. Checkpoints
//! are named by the round that trained them ([`Names`]), never by id. Samples are filtered by
//! outcome and paged in the browser from the same copy: the data are already here, and one page
//! of every sample was 13,000 px long.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use apl_shared::paired::{self, PairedDifference};
use apl_shared::{
    Acquisition, CheckPair, CheckpointRow, EvalSample, EvaluationRow, HumanCheck, NewHumanCheck, Outcome, Project,
    ProjectAnalytics, RaterStats, RoundRow,
};
use leptos::prelude::*;
use leptos::task::spawn_local;

use super::{Ctx, shown};
use crate::api::{self, Res};
use crate::components::chart::{LineChart, Mark, Point, Series};
use crate::components::export::{ExportCsv, rows_of};
use crate::util::{interval, num, pct, rate_interval, short, when};

/// One project's results as this tab uses them.
#[derive(Debug, Clone, PartialEq)]
struct Results {
    rounds: Vec<RoundRow>,
    checkpoints: Vec<CheckpointRow>,
    evaluations: Vec<EvaluationRow>,
}

/// Loads a project's results: one request per list (shared behind an `Arc`, so the sections'
/// reads never copy the samples).
async fn results(id: String) -> Res<Arc<Results>> {
    Ok(Arc::new(Results {
        rounds: api::rounds(&id).await?,
        checkpoints: api::checkpoints(&id).await?,
        evaluations: api::evaluations(&id).await?,
    }))
}

/// This project's results, loaded once per view and whenever the project changes.
type Loaded = LocalResource<Res<Arc<Results>>>;
/// The projects chosen for comparison, by name, with their results.
type Compared = LocalResource<Res<Vec<(String, Arc<Results>)>>>;

#[component]
pub fn Evaluation() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let own: Loaded = ctx.resource(results);
    // Projects chosen for comparison: their curves beside this one's, and the paired table.
    let compare = RwSignal::new(Vec::<(String, String)>::new());
    let compared: Compared = LocalResource::new(move || {
        let chosen = compare.get();
        async move {
            let mut all = Vec::with_capacity(chosen.len());
            for (id, name) in chosen {
                all.push((name, results(id).await?));
            }
            Ok(all)
        }
    });
    view! {
        <Curves own=own compared=compared compare=compare/>
        <Paired own=own compared=compared/>
        <Leaderboard own=own/>
        <HumanChecks own=own/>
        <Samples own=own/>
    }
}

/// This project's name as the page has it (the header loads it).
fn project_name(ctx: Ctx) -> Memo<String> {
    Memo::new(move |_| {
        ctx.detail.with(|d| d.as_ref().map(|d| d.project.name.clone())).unwrap_or_else(|| "this project".into())
    })
}

/// Checkpoints as people read them: by the round whose labels trained them ("round 2"), with
/// "training k of n" where a round was trained more than once; none is the starting model.
#[derive(Debug, Clone, Default, PartialEq)]
struct Names(HashMap<String, String>);

impl Names {
    fn new(checkpoints: &[CheckpointRow]) -> Self {
        let mut by_round: BTreeMap<i64, Vec<&CheckpointRow>> = BTreeMap::new();
        for c in checkpoints {
            by_round.entry(c.round).or_default().push(c);
        }
        let mut names = HashMap::new();
        for (round, mut cs) in by_round {
            cs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            let n = cs.len();
            for (i, c) in cs.into_iter().enumerate() {
                let name =
                    if n == 1 { format!("round {round}") } else { format!("round {round}, training {} of {n}", i + 1) };
                names.insert(c.id.clone(), name);
            }
        }
        Self(names)
    }

    fn of(&self, checkpoint: Option<&str>) -> String {
        match checkpoint {
            None => "starting model".to_string(),
            // A checkpoint this project no longer lists: its id is all there is.
            Some(id) => self.0.get(id).cloned().unwrap_or_else(|| format!("checkpoint {}", short(id))),
        }
    }
}

/// The names of this project's checkpoints, from the one load.
fn names_of(own: Loaded) -> Memo<Names> {
    Memo::new(move |_| own.get().and_then(Result::ok).map(|r| Names::new(&r.checkpoints)).unwrap_or_default())
}

/// What the curve's unmeasured starting point says, in its tooltip and in the legend.
const STARTING_POINT: &str = "starting model, not measured: the reference itself (50 % expected)";

/// Whether an evaluation's baseline is the starting model's own samples (the server's
/// evaluations always are; the experiment runner's TL;DR ones are human references).
fn against_starting_model(baseline: &str) -> bool {
    matches!(baseline, "reference samples" | "starting model")
}

/// A project's evaluations as curves: x = labelled pairs the checkpoint was trained on (0 for
/// the starting model), one series per judge, named after the project's acquisition functions
/// in round order (one function per project is the paper's comparison; a project that switched
/// shows e.g. "random → certainty"). A series whose baseline is the starting model's samples
/// and that has no measured point at 0 starts from the starting model's known 0.5, drawn as
/// not measured.
fn curves(project: &str, r: &Results) -> Vec<Series> {
    let acq = acquisitions(&r.rounds);
    let names = Names::new(&r.checkpoints);
    let mut by: BTreeMap<String, (Vec<Point>, bool)> = BTreeMap::new();
    for (x, e) in placed(&r.checkpoints, &r.evaluations) {
        let (points, from_start) = by.entry(e.judge.clone()).or_insert((Vec::new(), true));
        *from_start &= against_starting_model(&e.baseline);
        points.push(Point {
            x,
            y: e.win_rate,
            err: 1.96 * e.stderr,
            label: names.of(e.checkpoint_id.as_deref()),
            mark: Mark::Measured,
        });
    }
    by.into_iter()
        .map(|(judge, (mut points, from_start))| {
            if from_start && !points.iter().any(|p| p.x == 0.0) {
                points.insert(
                    0,
                    Point {
                        x: 0.0,
                        y: 0.5,
                        err: 0.0,
                        label: "starting model".into(),
                        mark: Mark::Assumed(STARTING_POINT.into()),
                    },
                );
            }
            Series { name: format!("{project}: {acq} ({judge})"), points }
        })
        .collect()
}

/// The acquisition functions of a project's rounds in order ("random → certainty").
fn acquisitions(rounds: &[RoundRow]) -> String {
    let mut acqs: Vec<Acquisition> = Vec::new();
    let mut ordered: Vec<&RoundRow> = rounds.iter().collect();
    ordered.sort_by_key(|r| r.number);
    for r in ordered {
        if acqs.last() != Some(&r.acquisition) {
            acqs.push(r.acquisition);
        }
    }
    if acqs.is_empty() {
        "no rounds".to_string()
    } else {
        acqs.iter().map(|a| a.name()).collect::<Vec<_>>().join(" → ")
    }
}

/// Each evaluation with the labelled pairs its checkpoint was trained on (0: the starting model).
fn placed<'e>(cps: &[CheckpointRow], evals: &'e [EvaluationRow]) -> Vec<(f64, &'e EvaluationRow)> {
    evals
        .iter()
        .filter_map(|e| {
            let x = match &e.checkpoint_id {
                None => Some(0.0),
                Some(c) => cps.iter().find(|k| &k.id == c).map(|k| k.pairs as f64),
            };
            x.map(|x| (x, e))
        })
        .collect()
}

#[component]
fn Curves(own: Loaded, compared: Compared, compare: RwSignal<Vec<(String, String)>>) -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let others = LocalResource::new(api::projects);
    let name = project_name(ctx);
    let series = Memo::new(move |_| {
        let mine = own.get()?;
        // While compared projects load (or if they fail) this project's curves still show.
        let theirs = compared.get().and_then(Result::ok).unwrap_or_default();
        Some(mine.map(|mine| {
            let mut all = curves(&name.get(), &mine);
            for (n, r) in &theirs {
                all.extend(curves(n, r));
            }
            all
        }))
    });
    let rows = Signal::derive(move || {
        series
            .get()
            .and_then(Result::ok)
            .unwrap_or_default()
            .iter()
            .flat_map(|s| {
                s.points.iter().filter(|p| p.mark == Mark::Measured).map(|p| {
                    vec![s.name.clone(), p.label.clone(), p.x.to_string(), p.y.to_string(), (p.err / 1.96).to_string()]
                })
            })
            .collect()
    });
    view! {
        <section>
            <h2>"Win-rate against labels used"</h2>
            {move || shown(series.get(), |ss: Vec<Series>| {
                if ss.iter().all(|s| s.points.iter().all(|p| p.mark != Mark::Measured)) {
                    view! { <p class="muted">"No evaluations yet: a round with an automatic labeller, or an evaluate job, makes one."</p> }.into_any()
                } else {
                    view! {
                        <LineChart series=ss x_label="labelled pairs trained on" y_label="win-rate vs reference"
                            title="Win-rate against labels used (95% error bars)" reference=0.5/>
                    }.into_any()
                }
            })}
            <details>
                <summary>"Compare with other projects"</summary>
                {move || others.get().and_then(Result::ok).map(|ps: Vec<Project>| {
                    ps.into_iter().filter(|p| p.id != ctx.id()).map(|p| {
                        let (id, name) = (p.id.clone(), p.name.clone());
                        let key = id.clone();
                        view! {
                            <label class="check">
                                <input type="checkbox" on:change=move |e| {
                                    let on = event_target_checked(&e);
                                    compare.update(|c| {
                                        c.retain(|(i, _)| i != &id);
                                        if on { c.push((id.clone(), name.clone())); }
                                    });
                                } prop:checked=move || compare.get().iter().any(|(i, _)| i == &key)/>
                                {p.name.clone()}
                            </label>
                        }
                    }).collect_view()
                })}
            </details>
            <ExportCsv name="winrate-curves" rows=rows header=vec!["series", "policy", "labels", "win_rate", "stderr"]/>
        </section>
    }
}

/// One row of the paired table: this project against another at one number of labels.
#[derive(Debug, Clone, PartialEq)]
struct PairedView {
    against: String,
    labels: f64,
    judge: String,
    /// None: no prompt has the same baseline sample in both.
    difference: Option<PairedDifference>,
}

/// A project's name with its acquisition functions, and its evaluations placed by labels.
struct Arm<'r> {
    name: String,
    evals: Vec<(f64, &'r EvaluationRow)>,
}

fn arm<'r>(name: &str, r: &'r Results) -> Arm<'r> {
    Arm { name: format!("{name} ({})", acquisitions(&r.rounds)), evals: placed(&r.checkpoints, &r.evaluations) }
}

/// This project's evaluations against another's at the same labels and judge, the latest of
/// each, paired on the prompts with the same baseline sample.
fn paired_rows(mine: &Arm, theirs: &Arm) -> Vec<PairedView> {
    fn latest<'a>(arm: &Arm<'a>) -> BTreeMap<(u64, String), &'a EvaluationRow> {
        let mut by: BTreeMap<(u64, String), &EvaluationRow> = BTreeMap::new();
        for &(x, e) in &arm.evals {
            let slot = by.entry((x.to_bits(), e.judge.clone())).or_insert(e);
            if e.created_at > slot.created_at {
                *slot = e;
            }
        }
        by
    }
    let theirs_by = latest(theirs);
    latest(mine)
        .into_iter()
        .filter_map(|((x, judge), e)| {
            let other = theirs_by.get(&(x, judge.clone()))?;
            let scores = paired::matched(&e.details.samples, &other.details.samples);
            let draws = paired::resamples(&[scores.arm.len()], 1000, 0);
            Some(PairedView {
                against: theirs.name.clone(),
                labels: f64::from_bits(x),
                judge,
                difference: paired::paired_difference(&[scores], &draws),
            })
        })
        .collect()
}

/// This project against each compared one, paired per prompt: far tighter than two curves'
/// error bars, where the projects share the starting model's samples.
#[component]
fn Paired(own: Loaded, compared: Compared) -> impl IntoView {
    let name = project_name(expect_context::<Ctx>());
    let rows = Memo::new(move |_| {
        let theirs = match compared.get()? {
            Ok(t) if t.is_empty() => return Some(Ok((String::new(), Vec::new()))),
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        Some(own.get()?.map(|mine| {
            let me = arm(&name.get(), &mine);
            let rows = theirs.iter().flat_map(|(n, r)| paired_rows(&me, &arm(n, r))).collect::<Vec<_>>();
            (me.name, rows)
        }))
    });
    let export = Signal::derive(move || {
        rows.get()
            .and_then(Result::ok)
            .map(|(_, rs)| {
                rs.iter()
                    .map(|r| {
                        let d = r.difference.as_ref();
                        vec![
                            r.against.clone(),
                            r.labels.to_string(),
                            r.judge.clone(),
                            num(d.map(|d| d.estimate), 4),
                            num(d.map(|d| d.lo), 4),
                            num(d.map(|d| d.hi), 4),
                            num(d.map(|d| d.stderr), 4),
                            d.map_or(0, |d| d.prompts).to_string(),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default()
    });
    view! {
        <section>
            <h2>"Against other projects, paired"</h2>
            {move || shown(rows.get(), |(me, rs): (String, Vec<PairedView>)| {
                if rs.is_empty() {
                    return view! { <p class="muted">"Choose projects under \"Compare with other projects\" above: each gets this project's win-rate minus its own, prompt by prompt, at the labels both evaluated."</p> }.into_any();
                }
                view! {
                    <div class="scroll"><table>
                        <thead><tr><th>"comparison"</th><th>"labels"</th><th>"judge"</th><th>"difference [95%]"</th><th>"± paired s.e."</th><th>"prompts"</th></tr></thead>
                        <tbody>{rs.into_iter().map(|r| {
                            let (text, se, n, strong) = match &r.difference {
                                Some(d) => (d.show(), format!("{:.3}", d.stderr), d.prompts.to_string(), d.decisive()),
                                None => ("no shared baseline samples".into(), "–".into(), "0".into(), false),
                            };
                            view! {
                                <tr>
                                    <td>{format!("{me} − {}", r.against)}</td>
                                    <td>{format!("{:.0}", r.labels)}</td>
                                    <td>{r.judge}</td>
                                    <td class:strong=strong>{text}</td>
                                    <td>{se}</td>
                                    <td>{n}</td>
                                </tr>
                            }
                        }).collect_view()}</tbody>
                    </table></div>
                    <p class="muted">"Per evaluation prompt, this project's outcome minus the other's (win 1, tie ½, loss 0) where both judged the same starting-model sample (same model, seed and evaluation prompts); 95% bootstrap interval over prompts. Bold: the interval leaves out 0."</p>
                }.into_any()
            })}
            <ExportCsv name="paired" rows=export header=vec!["against", "labels", "judge", "difference", "lo", "hi", "stderr", "prompts"]/>
        </section>
    }
}

#[component]
fn Leaderboard(own: Loaded) -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let report = ctx.resource(|id| async move { api::analytics(&id).await });
    let names = names_of(own);
    let ok = move || report.get().and_then(Result::ok);
    let board_rows = Signal::derive(move || {
        let names = names.get();
        ok().map(|a| {
            a.leaderboard
                .iter()
                .map(|e| {
                    let r = &e.rating;
                    vec![
                        names.of(e.checkpoint.as_deref()),
                        e.checkpoint.clone().unwrap_or_default(),
                        r.elo.to_string(),
                        r.strength.to_string(),
                        r.lo.to_string(),
                        r.hi.to_string(),
                        r.games.to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default()
    });
    let eval_rows = Signal::derive(move || {
        let names = names.get();
        ok().map(|a| {
            a.evaluations
                .iter()
                .map(|e| {
                    vec![
                        e.id.clone(),
                        names.of(e.checkpoint.as_deref()),
                        e.checkpoint.clone().unwrap_or_default(),
                        e.judge.clone(),
                        num(e.win_rate.map(|w| w.estimate), 4),
                        num(e.win_rate.map(|w| w.lo), 4),
                        num(e.win_rate.map(|w| w.hi), 4),
                        num(e.length_controlled.map(|l| l.controlled), 4),
                        e.length_controlled.map(|l| l.n.to_string()).unwrap_or_default(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default()
    });
    view! {
        {move || shown(report.get(), move |a: ProjectAnalytics| {
            let names = names.get();
            view! {
            <section>
                <h2>"Leaderboard (Bradley-Terry)"</h2>
                {if a.leaderboard.is_empty() {
                    view! { <p class="muted">"No evaluations to rank yet."</p> }.into_any()
                } else {
                    view! {
                        <table class="leaderboard">
                            <thead><tr><th>"#"</th><th>"Policy"</th><th>"Elo"</th><th>"log-strength [95%]"</th><th>"Games"</th></tr></thead>
                            <tbody>{a.leaderboard.iter().enumerate().map(|(i, e)| view! {
                                <tr><td>{i + 1}</td><td>{names.of(e.checkpoint.as_deref())}</td><td>{format!("{:.0}", e.rating.elo)}</td>
                                    <td>{format!("{:.3} [{:.3}, {:.3}]", e.rating.strength, e.rating.lo, e.rating.hi)}</td>
                                    <td>{e.rating.games}</td></tr>
                            }).collect_view()}</tbody>
                        </table>
                    }.into_any()
                }}
                <ExportCsv name="leaderboard" rows=board_rows header=vec!["policy", "checkpoint", "elo", "strength", "lo", "hi", "games"]/>
                <h2>"Win-rates: raw and length-controlled"</h2>
                {if a.evaluations.is_empty() {
                    view! { <p class="muted">"No evaluations yet."</p> }.into_any()
                } else {
                    view! {
                        <table>
                            <thead><tr><th>"Policy"</th><th>"Judge"</th><th>"Win-rate [95%]"</th><th>"Length-controlled"</th></tr></thead>
                            <tbody>{a.evaluations.iter().map(|e| view! {
                                <tr>
                                    <td>{names.of(e.checkpoint.as_deref())}</td>
                                    <td>{e.judge.clone()}</td>
                                    <td>{interval(e.win_rate.as_ref())}</td>
                                    <td>{e.length_controlled.map(|l| format!("{:.3} (slope {:.2})", l.controlled, l.slope)).unwrap_or_else(|| "–".into())}</td>
                                </tr>
                            }).collect_view()}</tbody>
                        </table>
                    }.into_any()
                }}
                <ExportCsv name="evaluations" rows=eval_rows header=vec![
                    "evaluation", "policy", "checkpoint", "judge", "win_rate", "lo", "hi", "length_controlled", "n",
                ]/>
            </section>
        }})}
    }
}

#[component]
fn HumanChecks(own: Loaded) -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let raters = ctx.resource(|id| async move { api::raters(&id).await });
    let checks = ctx.resource(|id| async move { api::checks(&id).await });
    let names = names_of(own);
    let chosen_eval = RwSignal::new(String::new());
    let chosen = RwSignal::new(Vec::<String>::new());
    let overlap = RwSignal::new("1".to_string());
    let n = RwSignal::new(String::new());
    let message = RwSignal::new(None::<Result<String, String>>);
    let send = move |e: leptos::ev::SubmitEvent| {
        e.prevent_default();
        let mut evaluation = chosen_eval.get_untracked();
        if evaluation.is_empty() {
            evaluation = own
                .get_untracked()
                .and_then(Result::ok)
                .and_then(|r| r.evaluations.first().map(|e| e.id.clone()))
                .unwrap_or_default();
        }
        let req = NewHumanCheck {
            evaluation,
            raters: chosen.get_untracked(),
            overlap: overlap.get_untracked().trim().parse().ok(),
            pairs: n.get_untracked().trim().parse().ok(),
        };
        let id = ctx.id();
        spawn_local(async move {
            match api::create_check(&id, &req).await {
                Ok(c) => {
                    message.set(Some(Ok(format!("Sent {} pairs to {} raters.", c.pairs, c.raters.len()))));
                    ctx.changed();
                }
                Err(e) => message.set(Some(Err(e.message))),
            }
        });
    };
    let rows = rows_of(checks, move |c| {
        let r = |i: Option<apl_shared::RateInterval>| {
            i.map(|i| vec![i.rate.to_string(), i.low.to_string(), i.high.to_string(), i.n.to_string()])
                .unwrap_or_else(|| vec![String::new(); 4])
        };
        let mut row = vec![
            c.id.clone(),
            c.evaluation.clone(),
            names.with(|n| n.of(c.checkpoint.as_deref())),
            c.checkpoint.clone().unwrap_or_default(),
            c.judge.clone(),
            c.raters.len().to_string(),
            c.votes.to_string(),
            c.target_votes.to_string(),
        ];
        row.extend(r(c.human));
        row.extend(r(c.judge_rate));
        row.push(num(c.agreement, 4));
        row.push(num(c.kappa, 4));
        row
    });
    view! {
        <section class="card">
            <h2>"Human win-rate checks"</h2>
            <p class="muted">"Send an evaluation's samples (policy against reference) to chosen raters, blind and with sides randomised, in their usual workspace; their win-rate appears here beside the judge's on the same pairs."</p>
            <form on:submit=send>
                <div class="row">
                    <label>"Evaluation "
                        <select name="check-evaluation" prop:value=move || chosen_eval.get()
                            on:change=move |e| chosen_eval.set(event_target_value(&e))>
                            {move || {
                                let names = names.get();
                                own.get().and_then(Result::ok).map(|r| r.evaluations.iter().map(|e| view! {
                                    <option value=e.id.clone()>{format!("{} · {} · {} ({} samples, {})",
                                        names.of(e.checkpoint_id.as_deref()), e.judge, pct(e.win_rate), e.n, when(e.created_at))}</option>
                                }).collect_view())
                            }}
                        </select>
                    </label>
                    <label>"Raters per pair " <input type="number" min="1" name="check-overlap" prop:value=move || overlap.get()
                        on:input=move |e| overlap.set(event_target_value(&e))/></label>
                    <label>"Pairs " <input type="number" min="1" name="check-pairs" placeholder="all" prop:value=move || n.get()
                        on:input=move |e| n.set(event_target_value(&e))/></label>
                </div>
                <fieldset>
                    <legend>"Raters"</legend>
                    {move || raters.get().and_then(Result::ok).unwrap_or_default().into_iter().filter(|r: &RaterStats| !r.disabled).map(|r| {
                        let (id, key) = (r.id.clone(), r.id.clone());
                        view! {
                            <label class="check">
                                <input type="checkbox" name="check-rater" value=r.id.clone()
                                    prop:checked=move || chosen.get().contains(&key)
                                    on:change=move |e| {
                                        let on = event_target_checked(&e);
                                        chosen.update(|c| { c.retain(|x| x != &id); if on { c.push(id.clone()); } });
                                    }/>
                                {r.name.clone()}
                            </label>
                        }
                    }).collect_view()}
                </fieldset>
                <button class="primary" type="submit">"Send to raters"</button>
            </form>
            {move || message.get().map(|m| match m {
                Ok(t) => view! { <p class="ok" role="status">{t}</p> }.into_any(),
                Err(e) => view! { <p class="error" role="alert">{e}</p> }.into_any(),
            })}
            {move || shown(checks.get(), |cs: Vec<HumanCheck>| {
                if cs.is_empty() {
                    return view! { <p class="muted">"No checks yet."</p> }.into_any();
                }
                let names = names.get();
                view! {
                    <table class="checks">
                        <thead><tr><th>"Policy"</th><th>"Votes"</th><th>"Human win-rate [95%]"</th>
                            <th>"Judge on the same pairs"</th><th>"Agreement"</th><th>"Kappa"</th><th>"Pairs"</th></tr></thead>
                        <tbody>{cs.into_iter().map(|c| view! {
                            <tr data-check=c.id.clone()>
                                <td>{names.of(c.checkpoint.as_deref())}</td>
                                <td>{format!("{} / {}", c.votes, c.target_votes)}</td>
                                <td class="human-rate">{rate_interval(c.human.as_ref())}</td>
                                <td class="judge-rate">{format!("{} ({})", rate_interval(c.judge_rate.as_ref()), c.judge)}</td>
                                <td>{c.agreement.map(pct).unwrap_or_else(|| "–".into())}</td>
                                <td>{num(c.kappa, 3)}</td>
                                <td><CheckPairs check=c.id.clone()/></td>
                            </tr>
                        }).collect_view()}</tbody>
                    </table>
                }.into_any()
            })}
            <ExportCsv name="human-checks" rows=rows header=vec![
                "check", "evaluation", "policy", "checkpoint", "judge", "raters", "votes", "target_votes", "human_rate",
                "human_lo", "human_hi", "human_n", "judge_rate", "judge_lo", "judge_hi", "judge_n", "agreement", "kappa",
            ]/>
        </section>
    }
}

/// A check's pairs with the judge's and the raters' outcomes, loaded when opened.
#[component]
fn CheckPairs(check: String) -> impl IntoView {
    let open = RwSignal::new(false);
    let pairs = LocalResource::new(move || {
        let (check, open) = (check.clone(), open.get());
        async move { if open { api::check_pairs(&check).await.map(Some) } else { Ok(None) } }
    });
    view! {
        <details on:toggle=move |_| open.set(true)>
            <summary>"Show"</summary>
            {move || shown(pairs.get(), |ps: Option<Vec<CheckPair>>| view! {
                <ul class="check-pairs">
                    {ps.unwrap_or_default().into_iter().map(|p| view! {
                        <li>
                            <p class="prompt">{p.prompt}</p>
                            <div class="sides">
                                <div class="side"><h3>"Policy"</h3><p class="completion">{p.policy}</p></div>
                                <div class="side"><h3>"Reference"</h3><p class="completion">{p.baseline}</p></div>
                            </div>
                            <p class="muted">{format!("judge: {} · raters: {}", p.judge.name(),
                                if p.human.is_empty() {
                                    "no votes yet".to_string()
                                } else {
                                    p.human.iter().map(|o| o.name()).collect::<Vec<_>>().join(", ")
                                })}</p>
                        </li>
                    }).collect_view()}
                </ul>
            })}
        </details>
    }
}

/// Which samples the samples panel shows, by the judge's outcome for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Show {
    All,
    Wins,
    Losses,
    Ties,
}

impl Show {
    const ALL: [Show; 4] = [Show::All, Show::Wins, Show::Losses, Show::Ties];

    fn label(self) -> &'static str {
        match self {
            Self::All => "All",
            Self::Wins => "Wins",
            Self::Losses => "Losses",
            Self::Ties => "Ties",
        }
    }

    /// The outcome it keeps (none: every sample, judged or not).
    fn outcome(self) -> Option<Outcome> {
        match self {
            Self::All => None,
            Self::Wins => Some(Outcome::Win),
            Self::Losses => Some(Outcome::Loss),
            Self::Ties => Some(Outcome::Tie),
        }
    }

    fn keeps(self, o: Option<Outcome>) -> bool {
        self.outcome().is_none_or(|want| o == Some(want))
    }
}

/// Samples per page: a page stays a few screens long.
const PAGE: usize = 10;

/// The pages `n` items fill (at least one, empty when n is 0).
fn pages(n: usize) -> usize {
    n.div_ceil(PAGE).max(1)
}

/// The items on page `page` (0-based, clamped to the last) of `n`.
fn page_range(n: usize, page: usize) -> std::ops::Range<usize> {
    let start = page.min(pages(n) - 1) * PAGE;
    start.min(n)..(start + PAGE).min(n)
}

/// "11–12 of 12 wins", said of the page shown.
fn page_status(n: usize, page: usize, show: Show) -> String {
    let what = match show {
        Show::All => "samples",
        Show::Wins => "wins",
        Show::Losses => "losses",
        Show::Ties => "ties",
    };
    let r = page_range(n, page);
    if n == 0 { format!("no {what}") } else { format!("{}–{} of {n} {what}", r.start + 1, r.end) }
}

/// Policy against reference, side by side, for a chosen evaluation: filtered by outcome and
/// paged.
#[component]
fn Samples(own: Loaded) -> impl IntoView {
    let names = names_of(own);
    let chosen = RwSignal::new(String::new());
    let show = RwSignal::new(Show::All);
    let page = RwSignal::new(0usize);
    // The chosen evaluation, or the first listed, with its checkpoint's name.
    let evaluation = Memo::new(move |_| {
        let r = own.get().and_then(Result::ok)?;
        let c = chosen.get();
        let e = r.evaluations.iter().find(|e| e.id == c).or_else(|| r.evaluations.first())?;
        Some((e.id.clone(), names.get().of(e.checkpoint_id.as_deref()), e.details.samples.clone()))
    });
    let samples = move || evaluation.with(|e| e.as_ref().map(|(_, _, s)| s.clone()).unwrap_or_default());
    let counts = Memo::new(move |_| {
        evaluation.with(|e| {
            let ss = e.as_ref().map(|(_, _, s)| s.as_slice()).unwrap_or_default();
            Show::ALL.map(|f| ss.iter().filter(|s| f.keeps(s.outcome)).count())
        })
    });
    let count = move |f: Show| counts.get()[Show::ALL.iter().position(|g| *g == f).unwrap_or(0)];
    let kept = Memo::new(move |_| {
        let f = show.get();
        samples().into_iter().filter(|s| f.keeps(s.outcome)).collect::<Vec<_>>()
    });
    let rows = Signal::derive(move || {
        samples()
            .into_iter()
            .map(|s: EvalSample| vec![s.prompt, s.policy, s.baseline, outcome_name(s.outcome).to_string()])
            .collect()
    });
    let last = move || pages(kept.with(Vec::len)) - 1;
    view! {
        <section class="samples-panel">
            <h2>"Samples: policy against reference"</h2>
            <div class="row">
                <label>"Evaluation "
                    <select name="samples-evaluation"
                        prop:value=move || evaluation.with(|e| e.as_ref().map(|(id, _, _)| id.clone()).unwrap_or_default())
                        on:change=move |e| { chosen.set(event_target_value(&e)); page.set(0); }>
                        {move || {
                            let names = names.get();
                            own.get().and_then(Result::ok).map(|r| r.evaluations.iter().map(|e| view! {
                                <option value=e.id.clone()>{format!("{} · {} · {} · {}",
                                    names.of(e.checkpoint_id.as_deref()), e.judge, pct(e.win_rate), when(e.created_at))}</option>
                            }).collect_view())
                        }}
                    </select>
                </label>
                <div class="sample-filter" role="group" aria-label="Show samples by the judge's outcome for the policy">
                    {Show::ALL.map(|f| view! {
                        <button type="button" class="small" data-show=f.label().to_lowercase()
                            aria-pressed=move || (show.get() == f).to_string()
                            on:click=move |_| { show.set(f); page.set(0); }>
                            {move || format!("{} ({})", f.label(), count(f))}
                        </button>
                    })}
                </div>
            </div>
            {move || {
                let f = show.get();
                let policy = evaluation.with(|e| e.as_ref().map(|(_, n, _)| n.clone())).unwrap_or_default();
                kept.with(|ss| {
                    if ss.is_empty() {
                        let none = if f == Show::All { "No samples.".to_string() } else { format!("No {}.", f.label().to_lowercase()) };
                        return view! { <p class="muted">{none}</p> }.into_any();
                    }
                    let r = page_range(ss.len(), page.get());
                    let first = r.start;
                    view! {
                        <ol class="samples" start=first + 1>
                            {ss[r].iter().cloned().enumerate().map(|(i, s)| {
                                let outcome = outcome_name(s.outcome);
                                let verdict = if outcome.is_empty() { "not judged".to_string() } else { format!("judge: policy {outcome}") };
                                view! {
                                    <li class=format!("sample outcome-{outcome}") data-index=first + i>
                                        <p class="prompt"><span class="label">"Prompt"</span>{s.prompt}</p>
                                        <div class="sides">
                                            <div class="side"><h3>{format!("Policy ({policy})")}</h3><p class="completion">{s.policy}</p></div>
                                            <div class="side"><h3>"Reference"</h3><p class="completion">{s.baseline}</p></div>
                                        </div>
                                        <p class="muted">{verdict}</p>
                                    </li>
                                }
                            }).collect_view()}
                        </ol>
                    }.into_any()
                })
            }}
            <nav class="pager" aria-label="Sample pages">
                <button type="button" class="small" aria-label="Previous page of samples"
                    disabled=move || page.get().min(last()) == 0
                    on:click=move |_| page.update(|p| *p = (*p).min(last()).saturating_sub(1))>"← Previous"</button>
                <span class="page-status" role="status" aria-live="polite">
                    {move || page_status(kept.with(Vec::len), page.get(), show.get())}
                </span>
                <button type="button" class="small" aria-label="Next page of samples"
                    disabled=move || { page.get() >= last() }
                    on:click=move |_| page.update(|p| *p = (*p + 1).min(last()))>"Next →"</button>
            </nav>
            <ExportCsv name="samples" rows=rows header=vec!["prompt", "policy", "baseline", "outcome"]/>
        </section>
    }
}

/// A sample's outcome as named on the wire; empty where it was not judged.
fn outcome_name(o: Option<Outcome>) -> &'static str {
    o.map_or("", Outcome::name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apl_shared::{EvaluationDetails, TrainSummary, WinRate};

    fn checkpoint(id: &str, round: i64, pairs: i64, created_at: i64) -> CheckpointRow {
        CheckpointRow { id: id.into(), round, path: String::new(), pairs, report: TrainSummary::default(), created_at }
    }

    fn evaluation(checkpoint: Option<&str>, win_rate: f64, baseline: &str) -> EvaluationRow {
        EvaluationRow {
            id: format!("e-{checkpoint:?}"),
            checkpoint_id: checkpoint.map(str::to_string),
            judge: "length".into(),
            baseline: baseline.into(),
            win_rate,
            stderr: 0.1,
            n: 4,
            details: EvaluationDetails {
                win_rate: WinRate { win_rate, stderr: 0.1, n: 4, wins: 0, ties: 0, losses: 0 },
                samples: Vec::new(),
            },
            created_at: 0,
        }
    }

    #[test]
    fn checkpoints_are_named_by_round() {
        let names =
            Names::new(&[checkpoint("c1", 1, 8, 10), checkpoint("c2b", 2, 16, 30), checkpoint("c2a", 2, 16, 20)]);
        assert_eq!(names.of(Some("c1")), "round 1");
        assert_eq!(names.of(Some("c2a")), "round 2, training 1 of 2");
        assert_eq!(names.of(Some("c2b")), "round 2, training 2 of 2");
        assert_eq!(names.of(None), "starting model");
        assert_eq!(names.of(Some("0192f0c2-gone-abcdef12")), "checkpoint abcdef12");
    }

    #[test]
    fn the_curve_starts_from_the_starting_model() {
        let cps = [checkpoint("c1", 1, 8, 1), checkpoint("c2", 2, 16, 2)];
        // No evaluation of the starting model: it stands at 0.5, drawn as not measured.
        let r = Results {
            rounds: Vec::new(),
            checkpoints: cps.to_vec(),
            evaluations: vec![
                evaluation(Some("c1"), 0.6, "reference samples"),
                evaluation(Some("c2"), 0.7, "reference samples"),
            ],
        };
        let s = curves("p", &r);
        assert_eq!(s.len(), 1);
        let start = &s[0].points[0];
        assert_eq!((start.x, start.y, start.err), (0.0, 0.5, 0.0));
        assert_eq!(start.mark, Mark::Assumed(STARTING_POINT.into()));
        assert_eq!(s[0].points[1].label, "round 1");
        assert_eq!(s[0].points.iter().filter(|p| p.mark == Mark::Measured).count(), 2);
        // A measured starting model is the point at 0, and nothing is added.
        let mut measured = r.clone();
        measured.evaluations.push(evaluation(None, 0.47, "reference samples"));
        let s = curves("p", &measured);
        let at0: Vec<_> = s[0].points.iter().filter(|p| p.x == 0.0).collect();
        assert_eq!(at0.len(), 1);
        assert_eq!((at0[0].y, &at0[0].mark, at0[0].label.as_str()), (0.47, &Mark::Measured, "starting model"));
        // Against human references the starting model's win-rate is unknown: no point.
        let mut human = r;
        for e in &mut human.evaluations {
            e.baseline = "reference summaries".into();
        }
        assert!(curves("p", &human)[0].points.iter().all(|p| p.mark == Mark::Measured));
    }

    #[test]
    fn samples_filter_by_outcome_and_page() {
        assert!(Show::All.keeps(None) && Show::All.keeps(Some(Outcome::Loss)));
        assert!(Show::Wins.keeps(Some(Outcome::Win)) && !Show::Wins.keeps(Some(Outcome::Tie)));
        assert!(!Show::Ties.keeps(None) && Show::Ties.keeps(Some(Outcome::Tie)));
        assert!(Show::Losses.keeps(Some(Outcome::Loss)) && !Show::Losses.keeps(Some(Outcome::Win)));
        assert_eq!((pages(0), pages(10), pages(12)), (1, 1, 2));
        assert_eq!(page_range(12, 0), 0..10);
        assert_eq!(page_range(12, 1), 10..12);
        assert_eq!(page_range(12, 7), 10..12, "a page past the end shows the last");
        assert_eq!(page_range(0, 0), 0..0);
        assert_eq!(page_status(12, 1, Show::All), "11–12 of 12 samples");
        assert_eq!(page_status(3, 0, Show::Wins), "1–3 of 3 wins");
        assert_eq!(page_status(0, 0, Show::Ties), "no ties");
    }
}
