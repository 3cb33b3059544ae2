//! A job with live progress: subscribes to the job's server-sent events while it runs and
//! shows its stage ("stage 3/4 · train"), the phase's work, loss, one progress bar and one
//! time left for the whole job (the server estimates both across the stages; "at least" while
//! a later stage has never been timed in the project); a cancel button while it is not
//! finished. The event stream ends with the job; `on_done` lets the page reload what it made.

use apl_shared::{Job, JobState};
use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::Closure;

use crate::api;
use crate::util::{duration, short, when};

/// Follows `job` live until it finishes; calls `on_done` once then.
#[component]
pub fn JobCard(job: Job, #[prop(optional)] on_done: Option<Callback<Job>>) -> impl IntoView {
    let live = RwSignal::new(job.clone());
    if !job.state.is_finished()
        && let Ok(es) = web_sys::EventSource::new(&api::job_events_url(&job.id))
    {
        let es2 = es.clone();
        let handler = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
            let Some(text) = e.data().as_string() else { return };
            let Ok(j) = serde_json::from_str::<Job>(&text) else { return };
            let end = j.state.is_finished();
            live.set(j.clone());
            if end {
                es2.close();
                if let Some(cb) = on_done {
                    cb.run(j);
                }
            }
        });
        let _ = es.add_event_listener_with_callback("job", handler.as_ref().unchecked_ref());
        // The listener lives as long as the page's EventSource (closed on cleanup).
        handler.forget();
        let es3 = es.clone();
        on_cleanup(move || es3.close());
    }
    let cancel = move |_| {
        let id = live.get_untracked().id;
        spawn_local(async move {
            if let Ok(j) = api::cancel_job(&id).await {
                live.set(j);
            }
        });
    };
    view! {
        {move || {
            let j = live.get();
            let p = j.progress.clone();
            let frac = p.fraction;
            let running = !j.state.is_finished();
            let took = j.started_at.zip(j.finished_at).map(|(a, b)| format!("took {:.1} s", (b - a) as f64 / 1000.0));
            let stage = (p.stage > 0 && p.stages.len() > 1)
                .then(|| p.stages.get(p.stage as usize - 1).map(|k| format!("stage {}/{} · {}", p.stage, p.stages.len(), k.name())))
                .flatten();
            let eta = p.eta_seconds.filter(|_| running).map(|s| match p.eta_complete {
                true => format!("~{} left", duration(s)),
                false => format!("at least ~{} left", duration(s)),
            });
            let detail = if j.state == JobState::Done { took.unwrap_or_default() } else { [
                stage,
                (!p.phase.is_empty()).then(|| p.phase.clone()),
                (p.total > 0).then(|| format!("{} / {}", p.step, p.total)),
                p.loss.map(|l| format!("loss {l:.4}")),
                eta,
                (!p.message.is_empty()).then(|| p.message.clone()),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" · ") };
            view! {
                <article class=format!("job job-{}", j.state) data-job=j.id.clone() data-state=j.state.name()
                    data-phase=p.phase.clone() data-stage=p.stage>
                    <header>
                        <strong>{j.kind.name()}</strong>
                        <span class=format!("state state-{}", j.state)>{j.state.name()}</span>
                        <span class="muted">{format!("#{} · {}", short(&j.id), when(j.created_at))}</span>
                        {running.then(|| view! { <button class="small" on:click=cancel>"Cancel"</button> })}
                    </header>
                    {running.then(|| view! {
                        <progress max="1" value=frac aria-label=format!("{} progress", j.kind)></progress>
                    })}
                    <p class="muted">{detail}</p>
                    {j.error.clone().map(|e| view! { <p class="error">{e}</p> })}
                    {j.result.clone().filter(|_| j.state == JobState::Done).map(|r| view! {
                        <details><summary>"Result"</summary><pre>{serde_json::to_string_pretty(&r).unwrap_or_default()}</pre></details>
                    })}
                </article>
            }
        }}
    }
}
