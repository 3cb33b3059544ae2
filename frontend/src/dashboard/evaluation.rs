//! The evaluation panel: win-rate against labels used (one curve per acquisition function, this
//! project's and any others chosen for comparison), the same comparison paired prompt by prompt
//! (`apl_shared::paired`, as the experiment reports compute it), the Bradley-Terry leaderboard of
//! checkpoints, raw and length-controlled win-rates, human win-rate checks beside the judge's
//! figure on the same pairs, and side-by-side samples of policy and reference.

use std::collections::BTreeMap;

use apl_shared::paired::{self, PairedDifference};
use apl_shared::{
    Acquisition, CheckPair, CheckpointRow, EvalSample, EvaluationRow, HumanCheck, NewHumanCheck, Outcome, Project,
    ProjectAnalytics, RaterStats, RoundRow,
};
use leptos::prelude::*;
use leptos::task::spawn_local;

use super::{Ctx, shown};
use crate::api::{self, Res};
use crate::components::chart::{LineChart, Point, Series};
use crate::components::export::{ExportCsv, rows_of};
use crate::util::{interval, num, pct, rate_interval, short, when};

#[component]
pub fn Evaluation() -> impl IntoView {
    // One load of the evaluations (with every sample) for the checks form and the samples.
    let evals = expect_context::<Ctx>().resource(|id| async move { api::evaluations(&id).await });
    // Projects chosen for comparison: their curves beside this one's, and the paired table.
    let compare = RwSignal::new(Vec::<(String, String)>::new());
    view! {
        <Curves compare=compare/>
        <Paired compare=compare/>
        <Leaderboard/>
        <HumanChecks evals=evals/>
        <Samples evals=evals/>
    }
}

/// A project's evaluations as curves: x = labelled pairs the checkpoint was trained on (0 for
/// the starting model), one series per judge, named after the project's acquisition functions
/// in round order (one function per project is the paper's comparison; a project that switched
/// shows e.g. "random → certainty").
fn curves(project: &str, rounds: &[RoundRow], cps: &[CheckpointRow], evals: &[EvaluationRow]) -> Vec<Series> {
    let acq = acquisitions(rounds);
    let mut by: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    for (x, e) in placed(cps, evals) {
        by.entry(e.judge.clone()).or_default().push(Point { x, y: e.win_rate, err: 1.96 * e.stderr });
    }
    by.into_iter().map(|(judge, points)| Series { name: format!("{project}: {acq} ({judge})"), points }).collect()
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

async fn project_curves(id: String, name: String) -> Res<Vec<Series>> {
    let (r, c, e) = (api::rounds(&id).await?, api::checkpoints(&id).await?, api::evaluations(&id).await?);
    Ok(curves(&name, &r, &c, &e))
}

#[component]
fn Curves(compare: RwSignal<Vec<(String, String)>>) -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let others = LocalResource::new(api::projects);
    let series = LocalResource::new(move || {
        ctx.version.get();
        let mut ids =
            vec![(ctx.id(), ctx.detail.get().map(|d| d.project.name).unwrap_or_else(|| "this project".into()))];
        ids.extend(compare.get());
        async move {
            let mut all = Vec::new();
            for (id, name) in ids {
                all.extend(project_curves(id, name).await?);
            }
            Ok::<_, api::Failure>(all)
        }
    });
    let rows = Signal::derive(move || {
        series
            .get()
            .and_then(Result::ok)
            .unwrap_or_default()
            .iter()
            .flat_map(|s| {
                s.points
                    .iter()
                    .map(|p| vec![s.name.clone(), p.x.to_string(), p.y.to_string(), (p.err / 1.96).to_string()])
            })
            .collect()
    });
    view! {
        <section>
            <h2>"Win-rate against labels used"</h2>
            {move || shown(series.get(), |ss: Vec<Series>| {
                if ss.iter().all(|s| s.points.is_empty()) {
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
            <ExportCsv name="winrate-curves" rows=rows header=vec!["series", "labels", "win_rate", "stderr"]/>
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
struct Arm {
    name: String,
    evals: Vec<(f64, EvaluationRow)>,
}

async fn arm(id: String, name: String) -> Res<Arm> {
    let (r, c, e) = (api::rounds(&id).await?, api::checkpoints(&id).await?, api::evaluations(&id).await?);
    let evals = placed(&c, &e).into_iter().map(|(x, e)| (x, e.clone())).collect();
    Ok(Arm { name: format!("{name} ({})", acquisitions(&r)), evals })
}

/// This project's evaluations against another's at the same labels and judge, the latest of
/// each, paired on the prompts with the same baseline sample.
fn paired_rows(mine: &Arm, theirs: &Arm) -> Vec<PairedView> {
    fn latest(arm: &Arm) -> BTreeMap<(u64, String), &EvaluationRow> {
        let mut by: BTreeMap<(u64, String), &EvaluationRow> = BTreeMap::new();
        for (x, e) in &arm.evals {
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
fn Paired(compare: RwSignal<Vec<(String, String)>>) -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let rows = LocalResource::new(move || {
        ctx.version.get();
        let me = (ctx.id(), ctx.detail.get().map(|d| d.project.name).unwrap_or_else(|| "this project".into()));
        let others = compare.get();
        async move {
            if others.is_empty() {
                return Ok::<_, api::Failure>((String::new(), Vec::new()));
            }
            let mine = arm(me.0, me.1).await?;
            let mut out = Vec::new();
            for (id, name) in others {
                out.extend(paired_rows(&mine, &arm(id, name).await?));
            }
            Ok((mine.name, out))
        }
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
fn Leaderboard() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let report = ctx.resource(|id| async move { api::analytics(&id).await });
    let ok = move || report.get().and_then(Result::ok);
    let board_rows = Signal::derive(move || {
        ok().map(|a| {
            a.leaderboard
                .iter()
                .map(|e| {
                    let r = &e.rating;
                    vec![
                        e.checkpoint.clone().unwrap_or_else(|| "starting model".into()),
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
        ok().map(|a| {
            a.evaluations
                .iter()
                .map(|e| {
                    vec![
                        e.id.clone(),
                        e.checkpoint.clone().unwrap_or_else(|| "starting model".into()),
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
        {move || shown(report.get(), move |a: ProjectAnalytics| view! {
            <section>
                <h2>"Leaderboard (Bradley-Terry)"</h2>
                {if a.leaderboard.is_empty() {
                    view! { <p class="muted">"No evaluations to rank yet."</p> }.into_any()
                } else {
                    view! {
                        <table class="leaderboard">
                            <thead><tr><th>"#"</th><th>"Policy"</th><th>"Elo"</th><th>"log-strength [95%]"</th><th>"Games"</th></tr></thead>
                            <tbody>{a.leaderboard.iter().enumerate().map(|(i, e)| view! {
                                <tr><td>{i + 1}</td><td>{label(e.checkpoint.as_deref())}</td><td>{format!("{:.0}", e.rating.elo)}</td>
                                    <td>{format!("{:.3} [{:.3}, {:.3}]", e.rating.strength, e.rating.lo, e.rating.hi)}</td>
                                    <td>{e.rating.games}</td></tr>
                            }).collect_view()}</tbody>
                        </table>
                    }.into_any()
                }}
                <ExportCsv name="leaderboard" rows=board_rows header=vec!["policy", "elo", "strength", "lo", "hi", "games"]/>
                <h2>"Win-rates: raw and length-controlled"</h2>
                {if a.evaluations.is_empty() {
                    view! { <p class="muted">"No evaluations yet."</p> }.into_any()
                } else {
                    view! {
                        <table>
                            <thead><tr><th>"Policy"</th><th>"Judge"</th><th>"Win-rate [95%]"</th><th>"Length-controlled"</th></tr></thead>
                            <tbody>{a.evaluations.iter().map(|e| view! {
                                <tr>
                                    <td>{label(e.checkpoint.as_deref())}</td>
                                    <td>{e.judge.clone()}</td>
                                    <td>{interval(e.win_rate.as_ref())}</td>
                                    <td>{e.length_controlled.map(|l| format!("{:.3} (slope {:.2})", l.controlled, l.slope)).unwrap_or_else(|| "–".into())}</td>
                                </tr>
                            }).collect_view()}</tbody>
                        </table>
                    }.into_any()
                }}
                <ExportCsv name="evaluations" rows=eval_rows header=vec![
                    "evaluation", "checkpoint", "judge", "win_rate", "lo", "hi", "length_controlled", "n",
                ]/>
            </section>
        })}
    }
}

/// A checkpoint as people read it; none is the starting model.
fn label(checkpoint: Option<&str>) -> String {
    match checkpoint {
        Some(c) => format!("checkpoint {}", short(c)),
        None => "starting model".to_string(),
    }
}

#[component]
fn HumanChecks(evals: LocalResource<Res<Vec<EvaluationRow>>>) -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let raters = ctx.resource(|id| async move { api::raters(&id).await });
    let checks = ctx.resource(|id| async move { api::checks(&id).await });
    let chosen_eval = RwSignal::new(String::new());
    let chosen = RwSignal::new(Vec::<String>::new());
    let overlap = RwSignal::new("1".to_string());
    let n = RwSignal::new(String::new());
    let message = RwSignal::new(None::<Result<String, String>>);
    let send = move |e: leptos::ev::SubmitEvent| {
        e.prevent_default();
        let mut evaluation = chosen_eval.get_untracked();
        if evaluation.is_empty() {
            evaluation = evals
                .get_untracked()
                .and_then(Result::ok)
                .and_then(|v| v.first().map(|e| e.id.clone()))
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
    let rows = rows_of(checks, |c| {
        let r = |i: Option<apl_shared::RateInterval>| {
            i.map(|i| vec![i.rate.to_string(), i.low.to_string(), i.high.to_string(), i.n.to_string()])
                .unwrap_or_else(|| vec![String::new(); 4])
        };
        let mut row = vec![
            c.id.clone(),
            c.evaluation.clone(),
            c.checkpoint.clone().unwrap_or_else(|| "starting model".into()),
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
                            {move || evals.get().and_then(Result::ok).unwrap_or_default().into_iter().map(|e| view! {
                                <option value=e.id.clone()>{format!("{} · {} · {} ({} samples, {})",
                                    label(e.checkpoint_id.as_deref()), e.judge, pct(e.win_rate), e.n, when(e.created_at))}</option>
                            }).collect_view()}
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
                view! {
                    <table class="checks">
                        <thead><tr><th>"Policy"</th><th>"Votes"</th><th>"Human win-rate [95%]"</th>
                            <th>"Judge on the same pairs"</th><th>"Agreement"</th><th>"Kappa"</th><th>"Pairs"</th></tr></thead>
                        <tbody>{cs.into_iter().map(|c| view! {
                            <tr data-check=c.id.clone()>
                                <td>{label(c.checkpoint.as_deref())}</td>
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
                "check", "evaluation", "checkpoint", "judge", "raters", "votes", "target_votes", "human_rate", "human_lo",
                "human_hi", "human_n", "judge_rate", "judge_lo", "judge_hi", "judge_n", "agreement", "kappa",
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

/// Policy against reference, side by side, for a chosen evaluation.
#[component]
fn Samples(evals: LocalResource<Res<Vec<EvaluationRow>>>) -> impl IntoView {
    let chosen = RwSignal::new(String::new());
    let samples = Signal::derive(move || {
        // The chosen evaluation, or the first listed.
        let es = evals.get().and_then(Result::ok).unwrap_or_default();
        let c = chosen.get();
        let i = es.iter().position(|e| e.id == c).unwrap_or(0);
        es.into_iter().nth(i).map(|e| e.details.samples).unwrap_or_default()
    });
    let rows = Signal::derive(move || {
        samples
            .get()
            .into_iter()
            .map(|s: EvalSample| vec![s.prompt, s.policy, s.baseline, outcome_name(s.outcome).to_string()])
            .collect()
    });
    view! {
        <section>
            <h2>"Samples: policy against reference"</h2>
            <label>"Evaluation "
                <select name="samples-evaluation" prop:value=move || chosen.get() on:change=move |e| chosen.set(event_target_value(&e))>
                    {move || evals.get().and_then(Result::ok).unwrap_or_default().into_iter().map(|e| view! {
                        <option value=e.id.clone()>{format!("{} · {} · {}", label(e.checkpoint_id.as_deref()), pct(e.win_rate), when(e.created_at))}</option>
                    }).collect_view()}
                </select>
            </label>
            {move || {
                let ss = samples.get();
                if ss.is_empty() {
                    return view! { <p class="muted">"No samples."</p> }.into_any();
                }
                view! {
                    <div class="samples">
                        {ss.into_iter().take(40).map(|s| {
                            let outcome = outcome_name(s.outcome);
                            view! {
                                <article class=format!("sample outcome-{outcome}")>
                                    <p class="prompt"><span class="label">"Prompt"</span>{s.prompt}</p>
                                    <div class="sides">
                                        <div class="side"><h3>"Policy"</h3><p class="completion">{s.policy}</p></div>
                                        <div class="side"><h3>"Reference"</h3><p class="completion">{s.baseline}</p></div>
                                    </div>
                                    <p class="muted">{format!("judge: policy {outcome}")}</p>
                                </article>
                            }
                        }).collect_view()}
                    </div>
                }.into_any()
            }}
            <ExportCsv name="samples" rows=rows header=vec!["prompt", "policy", "baseline", "outcome"]/>
        </section>
    }
}

/// A sample's outcome as named on the wire; empty where it was not judged.
fn outcome_name(o: Option<Outcome>) -> &'static str {
    o.map_or("", Outcome::name)
}
