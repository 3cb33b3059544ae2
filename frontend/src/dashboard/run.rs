//! Run control: where the cycle stands (a stepper over the newest round: acquiring, with
//! raters, training, evaluating, done; the raters' progress and pace; the next action as one
//! button), start a round or one of its stages, watch jobs with live progress, and see each
//! round's acquisition: how many candidates were scored and where the kept pairs' scores fall
//! in the candidates' distribution.
//!
//! The stepper asks the server (`/cycle`) rather than piecing the state together from jobs
//! and rounds, so it reads the same after a reload; it asks again every few seconds while the
//! page is open, because raters and auto-continue move the cycle without this page.

use std::time::Duration;

use apl_shared::{
    Acquisition, Cycle, CycleStep, Job, JobKind, JobParams, NewJob, PairRecord, RaterRound, RoundRow, Vocabulary,
};
use leptos::prelude::*;
use leptos::task::spawn_local;

use super::{Ctx, shown};
use crate::api;
use crate::components::chart::Histogram;
use crate::components::export::{ExportCsv, rows_of};
use crate::components::job::JobCard;
use crate::components::options;
use crate::util::{duration, num, when};

#[component]
pub fn Run() -> impl IntoView {
    view! {
        <Stepper/>
        <StartJob/>
        <Jobs/>
        <Rounds/>
    }
}

/// Starts `job`; the dashboard reloads once it is queued, `error` says why it was not.
async fn start_job(ctx: Ctx, job: NewJob, error: RwSignal<Option<String>>) {
    match api::start_job(&ctx.id(), &job).await {
        Ok(_) => {
            error.set(None);
            ctx.changed();
        }
        Err(e) => error.set(Some(e.message)),
    }
}

/// How often the stepper asks where the cycle stands.
const CYCLE_POLL: Duration = Duration::from_secs(2);

#[component]
fn Stepper() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let cycle = RwSignal::new(None::<Cycle>);
    let error = RwSignal::new(None::<String>);
    let reloading = StoredValue::new(false);
    let load = move || {
        let id = ctx.id();
        spawn_local(async move {
            match api::cycle(&id).await {
                Ok(c) => {
                    error.set(None);
                    // Unchanged answers do not redraw (a poll every few seconds). When the
                    // cycle moved without this page (raters, auto-continue), the rest of the
                    // dashboard (jobs, rounds, figures) reloads too.
                    let old = cycle.get_untracked();
                    if old.as_ref() != Some(&c) {
                        let moved =
                            old.is_some_and(|o| (o.round, o.step, o.job.clone()) != (c.round, c.step, c.job.clone()));
                        cycle.set(Some(c));
                        if moved {
                            // (This answer is the new one: the reload below need not ask again.)
                            reloading.set_value(true);
                            ctx.changed();
                        }
                    }
                }
                Err(e) => error.set(Some(e.message)),
            }
        });
    };
    Effect::new(move |_| {
        ctx.version.get();
        if !reloading.get_value() {
            load();
        }
        reloading.set_value(false);
    });
    if let Ok(h) = set_interval_with_handle(load, CYCLE_POLL) {
        on_cleanup(move || h.clear());
    }
    let busy = RwSignal::new(false);
    let start = move |kind: JobKind| {
        busy.set(true);
        spawn_local(async move {
            start_job(ctx, NewJob { kind, params: JobParams::default() }, error).await;
            busy.set(false);
        });
    };
    view! {
        <section class="card cycle" aria-label="The cycle">
            {move || cycle.get().map(|c| {
                let step = c.step;
                let title = c.round.map_or("No rounds yet".to_string(), |n| format!("Round {n}"));
                let at = step.map(|s| CycleStep::ALL.iter().position(|x| *x == s).unwrap_or(0));
                let steps = CycleStep::ALL.iter().enumerate().map(|(i, s)| {
                    let state = match at {
                        Some(a) if i < a || *s == CycleStep::Done && step == Some(CycleStep::Done) => "done",
                        Some(a) if i == a => "current",
                        _ => "todo",
                    };
                    let name = match (*s, c.automatic) {
                        (CycleStep::Labelling, true) => "labelling",
                        _ => s.describe(),
                    };
                    view! {
                        <li class=format!("step step-{state}") data-step=s.name()
                            aria-current=(state == "current").then_some("step")>{name}</li>
                    }
                }).collect_view();
                view! {
                    <div data-step=step.map_or("none", |s| s.name()) class="cycle-state">
                        <h2>{title}</h2>
                        <ol class="stepper">{steps}</ol>
                        {c.raters.clone().filter(|_| step == Some(CycleStep::Labelling)).map(|r| view! { <RatersLine r=r/> })}
                        {c.note.clone().map(|n| view! { <p class="warn">{n}</p> })}
                        {c.next.clone().map(|a| {
                            let kind = a.kind;
                            view! {
                                <button class="primary next-action" data-kind=kind.name() disabled=move || busy.get()
                                    on:click=move |_| start(kind)>{a.label}</button>
                            }
                        })}
                    </div>
                }
            })}
            {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
        </section>
    }
}

/// The round with the raters: pairs complete, votes per pair, who is active, the time to go.
#[component]
fn RatersLine(r: RaterRound) -> impl IntoView {
    let votes =
        r.pairs_by_votes.iter().enumerate().map(|(v, n)| format!("{n} with {v}")).collect::<Vec<_>>().join(", ");
    let active = match r.active.is_empty() {
        true => "nobody in the last 10 minutes".to_string(),
        false => r.active.iter().map(|a| format!("{} ({})", a.name, a.labels)).collect::<Vec<_>>().join(", "),
    };
    let eta = r.eta_minutes.map(|m| format!(" · about {} to go at this pace", duration(m * 60.0)));
    let goes_on = match (r.auto_continue, r.deadline_at) {
        (false, _) => "Auto-continue is off: train when you are ready.".to_string(),
        (true, None) => format!("Goes on by itself at {} complete pairs.", r.needed),
        (true, Some(t)) => {
            format!("Goes on by itself at {} complete pairs, or at {} with what is complete.", r.needed, when(t))
        }
    };
    view! {
        <div class="raters-line">
            <progress max=r.pairs.max(1) value=r.complete aria-label="Pairs complete"></progress>
            <p><strong data-testid="cycle-complete">{format!("{} of {} pairs complete", r.complete, r.pairs)}</strong>
                {format!(" · pairs by votes so far ({} wanted each): {votes}", r.votes_per_pair)}</p>
            <p class="muted">{format!("Active: {active} · {:.1} labels a minute", r.labels_per_minute)}{eta}</p>
            <p class="muted">{goes_on}</p>
        </div>
    }
}

#[component]
fn StartJob() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let kind = RwSignal::new(JobKind::Round);
    let pairs = RwSignal::new(String::new());
    // None: the project's own.
    let acquisition = RwSignal::new(None::<Acquisition>);
    let error = RwSignal::new(None::<String>);
    let start = move |e: leptos::ev::SubmitEvent| {
        e.prevent_default();
        let kind = kind.get_untracked();
        // Only the acquiring jobs take a pair count and an acquisition function.
        let params = if kind.acquires() {
            JobParams {
                pairs: pairs.get_untracked().trim().parse().ok(),
                acquisition: acquisition.get_untracked(),
                ..JobParams::default()
            }
        } else {
            JobParams::default()
        };
        spawn_local(start_job(ctx, NewJob { kind, params }, error));
    };
    let uses_pairs = move || kind.get().acquires();
    // The default first, then the rest in their usual order.
    let kinds = std::iter::once(JobKind::Round).chain(JobKind::ALL.iter().copied().filter(|k| *k != JobKind::Round));
    view! {
        <section class="card">
            <h2>"Start"</h2>
            <form class="row" on:submit=start>
                <label>"Job "
                    <select name="kind" prop:value=move || kind.get().name()
                        on:change=move |e| if let Ok(k) = event_target_value(&e).parse() { kind.set(k) }>
                        {options(kinds, JobKind::describe)}
                    </select>
                </label>
                <Show when=uses_pairs>
                    <label>"Pairs " <input type="number" min="1" placeholder="project default" name="pairs"
                        prop:value=move || pairs.get() on:input=move |e| pairs.set(event_target_value(&e))/></label>
                    <label>"Acquisition "
                        <select name="acquisition" prop:value=move || acquisition.get().map_or("", Acquisition::name)
                            on:change=move |e| acquisition.set(event_target_value(&e).parse().ok())>
                            <option value="">"project default"</option>
                            {options(Acquisition::ALL.iter().copied(), Acquisition::describe)}
                        </select>
                    </label>
                </Show>
                <button class="primary" type="submit">"Start"</button>
            </form>
            {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
        </section>
    }
}

#[component]
fn Jobs() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let jobs = ctx.resource(|id| async move { api::jobs(&id).await });
    let done = Callback::new(move |_: Job| ctx.changed());
    view! {
        <section>
            <h2>"Jobs"</h2>
            {move || shown(jobs.get(), move |js: Vec<Job>| {
                if js.is_empty() {
                    return view! { <p class="muted">"No jobs yet."</p> }.into_any();
                }
                let (live, old): (Vec<Job>, Vec<Job>) = js.into_iter().partition(|j| !j.state.is_finished());
                view! {
                    <div class="jobs">
                        {live.into_iter().map(|j| view! { <JobCard job=j on_done=done/> }).collect_view()}
                        {old.into_iter().take(8).map(|j| view! { <JobCard job=j/> }).collect_view()}
                    </div>
                }.into_any()
            })}
        </section>
    }
}

#[component]
fn Rounds() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let rounds = ctx.resource(|id| async move { api::rounds(&id).await });
    let rows = rows_of(rounds, |r| {
        vec![
            r.number.to_string(),
            r.acquisition.name().to_string(),
            r.policy_checkpoint.clone().unwrap_or_default(),
            r.pairs.to_string(),
            r.stats.prompts_drawn.to_string(),
            r.stats.prompts_skipped.to_string(),
            r.stats.sequences_sampled.to_string(),
            r.stats.sequences_scored.to_string(),
            r.stats.sampling_seconds.to_string(),
            r.stats.scoring_seconds.to_string(),
        ]
    });
    view! {
        <section>
            <h2>"Rounds"</h2>
            {move || shown(rounds.get(), move |rs: Vec<RoundRow>| {
                if rs.is_empty() {
                    return view! { <p class="muted">"No rounds yet: start one above."</p> }.into_any();
                }
                let newest = rs.iter().map(|r| r.number).max().unwrap_or(0);
                let all = rs.clone();
                view! {
                    <table>
                        <thead><tr>
                            <th>"Round"</th><th>"Acquisition"</th><th>"Pairs"</th><th>"Prompts drawn"</th>
                            <th title="Too long for the model with the longest completion: passed over">"Skipped"</th>
                            <th>"Sampled"</th><th>"Scored"</th><th>"Sampling s"</th><th>"Scoring s"</th><th>"When"</th>
                        </tr></thead>
                        <tbody>
                            {rs.iter().map(|r| view! {
                                <tr>
                                    <td>{r.number}</td><td>{r.acquisition.name()}</td><td>{r.pairs}</td>
                                    <td>{r.stats.prompts_drawn}</td>
                                    <td>{r.stats.prompts_skipped}</td>
                                    <td>{r.stats.sequences_sampled}</td>
                                    <td>{r.stats.sequences_scored}</td>
                                    <td>{num(Some(r.stats.sampling_seconds), 1)}</td>
                                    <td>{num(Some(r.stats.scoring_seconds), 1)}</td>
                                    <td>{when(r.created_at)}</td>
                                </tr>
                            }).collect_view()}
                        </tbody>
                    </table>
                    <RoundPicker rounds=all newest=newest/>
                }.into_any()
            })}
            <ExportCsv name="rounds" rows=rows header=vec![
                "round", "acquisition", "policy_checkpoint", "pairs", "prompts_drawn", "prompts_skipped", "sequences_sampled",
                "sequences_scored", "sampling_seconds", "scoring_seconds",
            ]/>
        </section>
    }
}

/// Which round's acquisition scores to show (the newest at first).
#[component]
fn RoundPicker(rounds: Vec<RoundRow>, newest: i64) -> impl IntoView {
    let chosen = RwSignal::new(newest);
    let options = rounds.iter().map(|r| r.number).collect::<Vec<_>>();
    view! {
        <label>"Acquisition scores of round "
            <select name="scores-round" prop:value=move || chosen.get().to_string()
                on:change=move |e| chosen.set(event_target_value(&e).parse().unwrap_or(newest))>
                {options.into_iter().rev().map(|n| view! { <option value=n.to_string()>{n}</option> }).collect_view()}
            </select>
        </label>
        {move || rounds.iter().find(|r| r.number == chosen.get()).cloned().map(|r| view! { <RoundScores round=r/> })}
    }
}

/// The acquisition scores of one round: every scored candidate, and the pairs kept.
#[component]
fn RoundScores(round: RoundRow) -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let number = round.number;
    let acquisition = round.acquisition;
    let kept = LocalResource::new(move || {
        let id = ctx.id();
        async move { api::pairs(&id, Some(number), 1000).await }
    });
    let candidates: Vec<f64> = round.stats.candidate_margins.iter().map(|&m| f64::from(m)).collect();
    view! {
        <h3>{format!("Round {number}: acquisition scores ({})", round.acquisition.name())}</h3>
        {move || shown(kept.get(), {
            let candidates = candidates.clone();
            move |ps: Vec<PairRecord>| {
                let margins: Vec<f64> = ps.iter().filter_map(|p| p.margin).collect();
                let entropies: Vec<f64> = ps.iter().filter_map(|p| p.entropy).collect();
                let all = if candidates.is_empty() { margins.clone() } else { candidates.clone() };
                view! {
                    {if all.is_empty() {
                        let why = match acquisition {
                            Acquisition::Random => "No scores: random acquisition keeps pairs without scoring them.",
                            _ => "No scores: with the starting model as policy every preference margin is 0, so candidates were not scored.",
                        };
                        view! { <p class="muted">{why}</p> }.into_any()
                    } else {
                        view! { <Histogram values=all highlight=margins x_label="implicit reward margin r(a) − r(b)" title="Acquisition scores"/> }.into_any()
                    }}
                    {(!entropies.is_empty()).then(|| view! {
                        <Histogram values=entropies x_label="predictive entropy of the prompt (nats)" title="Entropy of acquired prompts"/>
                    })}
                }.into_any()
            }
        })}
    }
}
