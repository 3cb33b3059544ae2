//! Label quality: agreement among raters (Krippendorff's alpha, Fleiss' kappa, pairwise Cohen),
//! each judge against the raters (agreement, kappa with its interval), the raters' left-side
//! bias, and the LLM judge's self-consistency, position bias and cost.

use apl_shared::ProjectAnalytics;
use leptos::prelude::*;

use super::{Ctx, shown};
use crate::api;
use crate::components::export::ExportCsv;
use crate::components::table::TableWrap;
use crate::util::{interval, num, pct};

#[component]
pub fn Quality() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let report = ctx.resource(|id| async move { api::analytics(&id).await });
    let ok = move || report.get().and_then(Result::ok);
    let judge_rows = Signal::derive(move || {
        ok().map(|a| {
            a.judges
                .iter()
                .map(|j| {
                    vec![
                        j.judge.clone(),
                        j.labels.to_string(),
                        j.no_decision.to_string(),
                        j.compared_pairs.to_string(),
                        num(j.agreement, 4),
                        num(j.kappa.map(|k| k.estimate), 4),
                        num(j.kappa.map(|k| k.lo), 4),
                        num(j.kappa.map(|k| k.hi), 4),
                    ]
                })
                .collect()
        })
        .unwrap_or_default()
    });
    let pair_rows = Signal::derive(move || {
        ok().map(|a| {
            a.rater_pairs
                .iter()
                .map(|p| vec![p.rater_a.clone(), p.rater_b.clone(), p.common_pairs.to_string(), num(p.kappa, 4)])
                .collect()
        })
        .unwrap_or_default()
    });
    view! {
        {move || shown(report.get(), move |a: ProjectAnalytics| {
            let h = a.humans.clone();
            let usage = a.judge_usage.clone();
            view! {
                <section class="card">
                    <h2>"Raters"</h2>
                    <dl class="stats">
                        <div><dt>"votes"</dt><dd>{h.votes}</dd></div>
                        <div><dt>"pairs with 2+ votes"</dt><dd>{h.overlapping_pairs}</dd></div>
                        <div><dt>"Krippendorff's alpha"</dt><dd>{interval(h.krippendorff_alpha.as_ref())}</dd></div>
                        <div><dt>{format!("Fleiss' kappa ({} pairs)", h.fleiss_pairs)}</dt><dd>{num(h.fleiss_kappa, 3)}</dd></div>
                        <div><dt>"chose the left text"</dt><dd>{interval(h.left_preference.as_ref())}</dd></div>
                    </dl>
                    <p class="muted">"Intervals are 95% bootstrap intervals. Left-side share 0.5 means no position bias."</p>
                </section>
                <section>
                    <h2>"Judges against the raters"</h2>
                    {if a.judges.is_empty() {
                        view! { <p class="muted">"No judge has labelled pairs of this project."</p> }.into_any()
                    } else {
                        view! {
                            <TableWrap label="Judges against the raters">
                            <table class="agreement">
                                <thead><tr><th>"Judge"</th><th>"Labels"</th><th>"No decision"</th>
                                    <th>"Pairs compared"</th><th>"Agreement"</th><th>"Cohen's kappa [95%]"</th></tr></thead>
                                <tbody>{a.judges.iter().map(|j| view! {
                                    <tr>
                                        <td>{j.judge.clone()}</td><td>{j.labels}</td><td>{j.no_decision}</td>
                                        <td>{j.compared_pairs}</td>
                                        <td>{j.agreement.map(pct).unwrap_or_else(|| "–".into())}</td>
                                        <td>{interval(j.kappa.as_ref())}</td>
                                    </tr>
                                }).collect_view()}</tbody>
                            </table>
                            </TableWrap>
                        }.into_any()
                    }}
                    <ExportCsv name="judge-agreement" rows=judge_rows header=vec![
                        "judge", "labels", "no_decision", "compared_pairs", "agreement", "kappa", "kappa_lo", "kappa_hi",
                    ]/>
                </section>
                <section>
                    <h2>"Rater against rater"</h2>
                    {if a.rater_pairs.is_empty() {
                        view! { <p class="muted">"No two raters have labelled the same pairs yet (set overlap above 1)."</p> }.into_any()
                    } else {
                        view! {
                            <TableWrap label="Rater against rater">
                            <table>
                                <thead><tr><th>"Rater"</th><th>"Rater"</th><th>"Common pairs"</th><th>"Cohen's kappa"</th></tr></thead>
                                <tbody>{a.rater_pairs.iter().map(|p| view! {
                                    <tr><td>{p.rater_a.clone()}</td><td>{p.rater_b.clone()}</td>
                                        <td>{p.common_pairs}</td><td>{num(p.kappa, 3)}</td></tr>
                                }).collect_view()}</tbody>
                            </table>
                            </TableWrap>
                        }.into_any()
                    }}
                    <ExportCsv name="rater-agreement" rows=pair_rows header=vec!["rater_a", "rater_b", "common_pairs", "kappa"]/>
                </section>
                <section class="card">
                    <h2>"LLM judge"</h2>
                    {match usage {
                        None => view! { <p class="muted">"No LLM judge calls recorded for this project."</p> }.into_any(),
                        Some(u) => {
                            let first = (u.decided > 0).then(|| u.first_position as f64 / u.decided as f64);
                            view! {
                                <dl class="stats">
                                    <div><dt>"calls"</dt><dd>{u.calls}</dd></div>
                                    <div><dt>"from cache"</dt><dd>{u.cached}</dd></div>
                                    <div><dt>"failed"</dt><dd>{u.failed}</dd></div>
                                    <div><dt>"no decision"</dt><dd>{u.no_decision}</dd></div>
                                    <div><dt>"picked the first-shown text"</dt><dd>{first.map(pct).unwrap_or_else(|| "–".into())}</dd></div>
                                    <div><dt>{format!("self-consistency ({} questions)", u.repeated_questions)}</dt>
                                        <dd>{u.self_consistency.map(pct).unwrap_or_else(|| "–".into())}</dd></div>
                                    <div><dt>"tokens"</dt><dd>{format!("{} + {}", u.prompt_tokens, u.completion_tokens)}</dd></div>
                                    <div><dt>"cost"</dt><dd>{format!("${:.4}", u.cost_usd)}</dd></div>
                                </dl>
                                <p class="muted">"First-shown share far from 50% is position bias; the judge's both-orders mode turns it into ties."</p>
                            }.into_any()
                        }
                    }}
                </section>
            }
        })}
    }
}
