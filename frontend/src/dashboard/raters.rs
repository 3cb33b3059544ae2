//! Raters: invite links, and per rater the labels given, skips, speed, gold accuracy and
//! whether their invite still works. A token is shown once, when it is made (the server keeps
//! only its hash), so the link is offered with a Copy button right then; the list says per
//! rater whether their link works, until when, or that it expired or was revoked.

use apl_shared::{NewRater, RaterInvite, RaterStats};
use leptos::prelude::*;
use leptos::task::spawn_local;

use super::{Ctx, shown};
use crate::api;
use crate::components::copy::CopyField;
use crate::components::export::{ExportCsv, rows_of};
use crate::components::table::TableWrap;
use crate::util::{num, pct, when};

fn gold(r: &RaterStats) -> Option<f64> {
    (r.gold_answered > 0).then(|| r.gold_correct as f64 / r.gold_answered as f64)
}

/// Whether a rater's invite link works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Invite {
    /// Works, with no end.
    Open,
    /// Works until this time (ms since the epoch).
    Until(i64),
    Expired,
    /// The rater was removed: the link no longer works.
    Revoked,
}

impl Invite {
    fn of(r: &RaterStats, now_ms: i64) -> Self {
        match r.expires_at {
            _ if r.disabled => Self::Revoked,
            Some(t) if t <= now_ms => Self::Expired,
            Some(t) => Self::Until(t),
            None => Self::Open,
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Open => "works, no expiry".into(),
            Self::Until(t) => format!("works until {}", when(t)),
            Self::Expired => "expired".into(),
            Self::Revoked => "revoked".into(),
        }
    }

    /// Its name in the page (`data-invite`), for styles and tests.
    fn key(self) -> &'static str {
        match self {
            Self::Open | Self::Until(_) => "works",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
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
                    <div class="invite">
                        <p role="status">"Send this link to " <strong>{i.rater.name}</strong>
                           ". It is shown only now (copy it before leaving this page); anyone with it can rate as them."</p>
                        <CopyField text=link.clone() label="Invite link"/>
                        <a href=link target="_blank" rel="noopener">"Open the rater's page"</a>
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
                let now = js_sys::Date::now() as i64;
                view! {
                    <TableWrap label="Raters">
                    <table class="raters">
                        <thead><tr>
                            <th>"Name"</th><th>"Invite link"</th><th>"Labels"</th><th>"Quota"</th><th>"Skips"</th>
                            <th>"Median s / label"</th><th>"Gold accuracy"</th><th></th>
                        </tr></thead>
                        <tbody>
                            {rs.into_iter().map(|r| {
                                let rid = r.id.clone();
                                let invite = Invite::of(&r, now);
                                let disable = move |_| {
                                    let (id, rid) = (ctx.id(), rid.clone());
                                    spawn_local(async move {
                                        if api::disable_rater(&id, &rid).await.is_ok() { ctx.changed(); }
                                    });
                                };
                                view! {
                                    <tr class:disabled=r.disabled>
                                        <td>{r.name.clone()}</td>
                                        <td class="invite-state" data-invite=invite.key()>{invite.describe()}</td>
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
                    </TableWrap>
                }.into_any()
            })}
            <ExportCsv name="raters" rows=rows header=vec![
                "id", "name", "quota", "labels", "skips", "median_seconds", "gold_answered", "gold_correct", "disabled",
                "expires",
            ]/>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_state_from_expiry_and_removal() {
        let r = |expires_at, disabled| RaterStats {
            id: "r".into(),
            name: "Kim".into(),
            quota: None,
            disabled,
            labels: 0,
            skips: 0,
            gold_answered: 0,
            gold_correct: 0,
            median_seconds: None,
            created_at: 0,
            expires_at,
        };
        assert_eq!(Invite::of(&r(None, false), 5), Invite::Open);
        assert_eq!(Invite::of(&r(Some(10), false), 5), Invite::Until(10));
        assert_eq!(Invite::of(&r(Some(5), false), 5), Invite::Expired);
        assert_eq!(Invite::of(&r(None, true), 5), Invite::Revoked);
        assert_eq!(Invite::of(&r(Some(10), true), 5), Invite::Revoked, "removal wins");
        assert_eq!(Invite::Expired.key(), "expired");
        assert_eq!(Invite::Open.describe(), "works, no expiry");
    }
}
