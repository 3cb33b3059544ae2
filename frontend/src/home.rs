//! The admin's start page: what the server runs, the projects, and a new project. Without the
//! admin token (the link the server prints on first start) it asks for it (`components::signin`,
//! the form every admin page shows).

use apl_shared::{NewProject, Project, Task, Vocabulary};
use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::api;
use crate::components::export::ExportCsv;
use crate::components::options;
use crate::components::signin::{Refused, SignIn, refused};
use crate::components::table::TableWrap;
use crate::util::when;

#[component]
pub fn Home() -> impl IntoView {
    let has_token = RwSignal::new(api::admin_token().is_some());
    let why = RwSignal::new(None::<Refused>);
    view! {
        <header class="top">
            <h1>"apl"</h1>
            <p class="tagline">"Active preference learning: fine-tune a language model with DPO on as few labels as possible."</p>
            <ServerStatus/>
        </header>
        <main>
            {move || if has_token.get() {
                view! { <Projects on_bad_token=move |r| { why.set(Some(r)); has_token.set(false) }/> }.into_any()
            } else {
                view! { <SignIn refused=why on_set=move || has_token.set(true)/> }.into_any()
            }}
        </main>
    }
}

#[component]
fn ServerStatus() -> impl IntoView {
    let health = LocalResource::new(api::health);
    view! {
        <Transition fallback=|| view! { <p class="muted">"Connecting to the server…"</p> }>
            {move || health.get().map(|h| match h {
                Ok(h) => view! {
                    <p class="status">
                        "Model " <strong>{h.model}</strong> " (" {h.architecture} ", "
                        {format!("{:.1}M", h.parameters as f64 / 1e6)} " parameters) on " {h.device}
                    </p>
                }.into_any(),
                Err(e) => view! { <p class="error" role="alert">{e.message}</p> }.into_any(),
            })}
        </Transition>
    }
}

#[component]
fn Projects(on_bad_token: impl Fn(Refused) + Copy + 'static) -> impl IntoView {
    let list = RwSignal::new(None::<Result<Vec<Project>, String>>);
    let reload = move || {
        spawn_local(async move {
            match api::projects().await {
                Err(e) => match refused(&e) {
                    Some(r) => on_bad_token(r),
                    None => list.set(Some(Err(e.message))),
                },
                r => list.set(Some(r.map_err(|e| e.message))),
            }
        })
    };
    reload();
    let rows = Signal::derive(move || match list.get() {
        Some(Ok(ps)) => ps
            .iter()
            .map(|p| vec![p.id.clone(), p.name.clone(), p.task.name().to_string(), p.created_at.to_string()])
            .collect(),
        _ => Vec::new(),
    });
    let name = RwSignal::new(String::new());
    let task = RwSignal::new(Task::Imdb);
    let error = RwSignal::new(None::<String>);
    let create = move |e: leptos::ev::SubmitEvent| {
        e.prevent_default();
        let req = NewProject { name: name.get_untracked(), task: task.get_untracked(), config: None };
        spawn_local(async move {
            match api::create_project(&req).await {
                Ok(p) => {
                    if let Some(w) = web_sys::window() {
                        let _ = w.location().set_href(&format!("/projects/{}?tab=setup", p.id));
                    }
                }
                Err(e) => error.set(Some(e.message)),
            }
        });
    };
    view! {
        <section>
            <h2>"Projects"</h2>
            {move || match list.get() {
                None => view! { <p class="muted">"Loading…"</p> }.into_any(),
                Some(Err(e)) => view! { <p class="error" role="alert">{e}</p> }.into_any(),
                Some(Ok(ps)) if ps.is_empty() => view! { <p class="muted">"No projects yet."</p> }.into_any(),
                Some(Ok(ps)) => view! {
                    <TableWrap label="Projects">
                    <table>
                        <thead><tr><th>"Name"</th><th>"Task"</th><th>"Created"</th></tr></thead>
                        <tbody>
                            {ps.into_iter().map(|p| view! {
                                <tr>
                                    <td><a href=format!("/projects/{}", p.id)>{p.name}</a></td>
                                    <td>{p.task.name()}</td>
                                    <td>{when(p.created_at)}</td>
                                </tr>
                            }).collect_view()}
                        </tbody>
                    </table>
                    </TableWrap>
                }.into_any(),
            }}
            <ExportCsv name="projects" rows=rows header=vec!["id", "name", "task", "created_at"]/>
        </section>
        <section class="card">
            <h2>"New project"</h2>
            <form on:submit=create class="row">
                <label>"Name " <input type="text" name="project-name" required maxlength="200" prop:value=move || name.get()
                    on:input=move |e| name.set(event_target_value(&e))/></label>
                <label>"Task "
                    <select name="project-task" on:change=move |e| if let Ok(t) = event_target_value(&e).parse() { task.set(t) }
                        prop:value=move || task.get().name()>
                        {options(Task::ALL.iter().copied(), Task::describe)}
                    </select>
                </label>
                <button class="primary" type="submit">"Create"</button>
            </form>
            {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
        </section>
    }
}
