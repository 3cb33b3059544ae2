//! Raters: invite links, and per rater the labels given, skips, speed and gold accuracy.

use apl_shared::{NewRater, RaterInvite, RaterStats};
use leptos::prelude::*;
use leptos::task::spawn_local;

use super::{Ctx, shown};
use crate::api;
use crate::components::export::{ExportCsv, rows_of};
use crate::util::{num, pct, when};

fn gold(r: &RaterStats) -> Option<f64> {
    (r.gold_answered > 0).then(|| r.gold_correct as f64 / r.gold_answered as f64)
}

#[component]
pub fn Raters() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let raters = ctx.resource(|id| async move { api::raters(&id).await });
    let name = RwSignal::new(String::new());
    let quota = RwSignal::new(String::new());
    let expires = RwSignal::new(String::new());
    let invite = RwSignal::new(None::<RaterInvite>);
    let error = RwSignal::new(None::<String>);
    let create = move |e: leptos::ev::SubmitEvent| {
        e.prevent_default();
        let req = NewRater {
            name: name.get_untracked(),
            quota: quota.get_untracked().trim().parse().ok(),
            expires_in_hours: expires.get_untracked().trim().parse().ok(),
        };
        let id = ctx.id();
        spawn_local(async move {
            match api::create_rater(&id, &req).await {
                Ok(i) => {
                    invite.set(Some(i));
                    error.set(None);
                    name.set(String::new());
                    ctx.changed();
                }
                Err(e) => error.set(Some(e.message)),
            }
        });
    };
    let origin = web_sys::window().and_then(|w| w.location().origin().ok()).unwrap_or_default();
    let rows = rows_of(raters, |r| {
        vec![
            r.id.clone(),
            r.name.clone(),
            r.quota.map(|q| q.to_string()).unwrap_or_default(),
            r.labels.to_string(),
            r.skips.to_string(),
            num(r.median_seconds, 1),
            r.gold_answered.to_string(),
            r.gold_correct.to_string(),
            r.disabled.to_string(),
            r.expires_at.map(when).unwrap_or_default(),
        ]
    });
    view! {
        <section class="card">
            <h2>"Invite a rater"</h2>
            <form class="row" on:submit=create>
                <label>"Name " <input type="text" name="rater-name" required maxlength="200" prop:value=move || name.get()
                    on:input=move |e| name.set(event_target_value(&e))/></label>
                <label>"Quota " <input type="number" min="1" name="rater-quota" placeholder="no limit" prop:value=move || quota.get()
                    on:input=move |e| quota.set(event_target_value(&e))/></label>
                <label>"Expires after (hours) " <input type="number" min="1" name="rater-expires" placeholder="never" prop:value=move || expires.get()
                    on:input=move |e| expires.set(event_target_value(&e))/></label>
                <button class="primary" type="submit">"Create invite link"</button>
            </form>
            {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
            {move || invite.get().map(|i| {
                let link = format!("{origin}{}", i.invite_path);
                view! {
                    <div class="invite" role="status">
                        <p>"Send this link to " <strong>{i.rater.name}</strong>
                           " (it is shown once; anyone with it can rate as them):"</p>
                        <input type="text" readonly class="invite-link" prop:value=link.clone()
                            on:focus=move |e| { event_target::<web_sys::HtmlInputElement>(&e).select(); }/>
                        <a href=link.clone() target="_blank" rel="noopener">"Open"</a>
                    </div>
                }
            })}
        </section>
        <section>
            <h2>"Raters"</h2>
            {move || shown(raters.get(), move |rs: Vec<RaterStats>| {
                if rs.is_empty() {
                    return view! { <p class="muted">"No raters yet."</p> }.into_any();
                }
                view! {
                    <table>
                        <thead><tr>
                            <th>"Name"</th><th>"Labels"</th><th>"Quota"</th><th>"Skips"</th>
                            <th>"Median s / label"</th><th>"Gold accuracy"</th><th></th>
                        </tr></thead>
                        <tbody>
                            {rs.into_iter().map(|r| {
                                let rid = r.id.clone();
                                let disable = move |_| {
                                    let (id, rid) = (ctx.id(), rid.clone());
                                    spawn_local(async move {
                                        if api::disable_rater(&id, &rid).await.is_ok() { ctx.changed(); }
                                    });
                                };
                                view! {
                                    <tr class:disabled=r.disabled>
                                        <td>{r.name.clone()}</td>
                                        <td>{r.labels}</td>
                                        <td>{r.quota.map(|q| q.to_string()).unwrap_or_else(|| "–".into())}</td>
                                        <td>{r.skips}</td>
                                        <td>{num(r.median_seconds, 1)}</td>
                                        <td>{gold(&r).map(|g| format!("{} of {} ({})", r.gold_correct, r.gold_answered, pct(g))).unwrap_or_else(|| "–".into())}</td>
                                        <td>{if r.disabled {
                                            view! { <span class="muted">"removed"</span> }.into_any()
                                        } else {
                                            view! { <button class="small" on:click=disable>"Remove"</button> }.into_any()
                                        }}</td>
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table>
                }.into_any()
            })}
            <ExportCsv name="raters" rows=rows header=vec![
                "id", "name", "quota", "labels", "skips", "median_seconds", "gold_answered", "gold_correct", "disabled",
                "expires",
            ]/>
        </section>
    }
}
