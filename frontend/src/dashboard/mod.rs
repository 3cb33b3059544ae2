//! A project's dashboard: one page, five tabs (run, setup, raters, quality, evaluation). The
//! tab is in the address (`?tab=`), so a link or a test can open any of them directly. Tabs
//! share the project and a `version` counter: anything that changes data bumps it, and every
//! tab's loaders re-run. Without an accepted admin token the page is the sign-in form alone
//! (no tab loads before the server has accepted the token). Leaving the setup tab with edits
//! not saved asks first (`Ctx::unsaved`, which the tab's button also shows).
//!
//! Each tab's code is a wasm file of its own, split off the main one at the `#[wasm_split]`
//! functions below (`cargo xtask frontend` splits it): fetched when the tab is first opened (or
//! pointed at), while it shows "Loading…"; once there, opening the tab again is immediate.

mod evaluation;
mod quality;
mod raters;
mod run;
mod setup;

use apl_shared::ProjectDetail;
use leptos::prelude::*;
use leptos::wasm_split::{SplitLoaderError, wasm_split};

use crate::api;
use crate::components::signin::{Refused, SignIn, refused};
use crate::split::{LOAD_FAILED, Loading, now};
use crate::util::{query_param, set_query_param};

#[derive(Clone, Copy)]
pub struct Ctx {
    pub id: StoredValue<String>,
    pub detail: RwSignal<Option<ProjectDetail>>,
    /// Bumped after every change; loaders read it to reload.
    pub version: RwSignal<u64>,
    /// The setup tab holds edits not saved yet.
    pub unsaved: RwSignal<bool>,
}

impl Ctx {
    pub fn id(&self) -> String {
        self.id.get_value()
    }

    pub fn changed(&self) {
        self.version.update(|v| *v += 1);
    }

    /// Loads `f(project id)`, and again whenever the project's data changes.
    pub fn resource<T: 'static, Fut>(self, f: impl Fn(String) -> Fut + 'static) -> LocalResource<api::Res<T>>
    where
        Fut: std::future::Future<Output = api::Res<T>> + 'static,
    {
        LocalResource::new(move || {
            self.version.get();
            f(self.id())
        })
    }
}

/// A tab: its key in the address, its name, and its split-off code (the view, and the fetch
/// of its code).
struct Tab {
    key: &'static str,
    name: &'static str,
    view: fn() -> Loading<AnyView>,
    preload: fn() -> Loading<()>,
}

const TABS: [Tab; 5] = [
    Tab { key: "run", name: "Run", view: || Box::pin(run_tab()), preload: || Box::pin(preload_run()) },
    Tab { key: "setup", name: "Setup", view: || Box::pin(setup_tab()), preload: || Box::pin(preload_setup()) },
    Tab { key: "raters", name: "Raters", view: || Box::pin(raters_tab()), preload: || Box::pin(preload_raters()) },
    Tab {
        key: "quality",
        name: "Label quality",
        view: || Box::pin(quality_tab()),
        preload: || Box::pin(preload_quality()),
    },
    Tab {
        key: "evaluation",
        name: "Evaluation",
        view: || Box::pin(evaluation_tab()),
        preload: || Box::pin(preload_evaluation()),
    },
];

/// The tab of `key` (the run tab for any other).
fn tab_of(key: &str) -> &'static Tab {
    TABS.iter().find(|t| t.key == key).unwrap_or(&TABS[0])
}

#[component]
pub fn ProjectPage(id: String) -> impl IntoView {
    let ctx = Ctx {
        id: StoredValue::new(id),
        detail: RwSignal::new(None),
        version: RwSignal::new(0),
        unsaved: RwSignal::new(false),
    };
    provide_context(ctx);
    let error = RwSignal::new(None::<String>);
    let access = RwSignal::new(if api::admin_token().is_some() { Access::Checking } else { Access::SignIn(None) });
    Effect::new(move |_| {
        ctx.version.get();
        if api::admin_token().is_none() {
            return;
        }
        let id = ctx.id();
        leptos::task::spawn_local(async move {
            match api::project(&id).await {
                Ok(d) => {
                    error.set(None);
                    ctx.detail.set(Some(d));
                    if access.get_untracked() != Access::In {
                        access.set(Access::In);
                    }
                }
                Err(e) => match refused(&e) {
                    Some(r) => access.set(Access::SignIn(Some(r))),
                    None => error.set(Some(e.message)),
                },
            }
        });
    });
    let signed_in = move || {
        access.set(Access::Checking);
        ctx.changed();
    };
    let why = Signal::derive(move || match access.get() {
        Access::SignIn(r) => r,
        _ => None,
    });
    let start = query_param("tab").filter(|t| TABS.iter().any(|tab| tab.key == t)).unwrap_or_else(|| "run".into());
    // The tabs whose code was fetched, and whether it came; the open tab's is fetched while
    // the server checks the token.
    let loaded = RwSignal::new(Vec::<(String, bool)>::new());
    load(&start, loaded);
    let tab = RwSignal::new(start);
    let ready = Memo::new(move |_| {
        let t = tab.get();
        loaded.with(|l| l.iter().find(|(k, _)| *k == t).map(|(_, ok)| *ok))
    });
    // Leaving the setup tab with edits not saved asks first.
    let open = move |key: &'static str| {
        if ctx.unsaved.get_untracked() && tab.get_untracked() == "setup" && key != "setup" {
            let leave = web_sys::window()
                .and_then(|w| w.confirm_with_message("The setup has changes that are not saved. Leave them?").ok())
                .unwrap_or(true);
            if !leave {
                return;
            }
            ctx.unsaved.set(false);
        }
        tab.set(key.to_string());
        set_query_param("tab", key);
    };
    view! {
        <header class="top">
            <p class="crumbs"><a href="/">"Projects"</a></p>
            <h1>{move || ctx.detail.get().map(|d| d.project.name).unwrap_or_else(|| "Project".into())}</h1>
            {move || ctx.detail.get().map(|d| view! { <StatsLine d=d/> })}
            {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
            <nav class="tabs" role="tablist" aria-label="Dashboard sections" hidden=move || access.get() != Access::In>
                {TABS.iter().map(|&Tab { key, name, .. }| {
                    let unsaved = move || key == "setup" && ctx.unsaved.get();
                    view! {
                        <button role="tab" class="tab" id=format!("tab-{key}") class:unsaved=unsaved
                            aria-selected=move || (tab.get() == key).to_string()
                            on:click=move |_| open(key)
                            on:pointerenter=move |_| load(key, loaded)>
                            {name}
                            {move || unsaved().then(|| view! {
                                <span class="unsaved-mark" title="changes not saved">" •"
                                    <span class="visually-hidden">" (changes not saved)"</span></span>
                            })}
                        </button>
                    }
                }).collect_view()}
            </nav>
        </header>
        <main role="tabpanel">
            {move || match access.get() {
                Access::In => ().into_any(),
                Access::Checking => view! { <p class="muted">"Loading…"</p> }.into_any(),
                Access::SignIn(_) => view! { <SignIn refused=why on_set=signed_in/> }.into_any(),
            }}
            {move || (access.get() == Access::In).then(|| {
                let key = tab.get();
                let failed = || view! { <p class="error" role="alert">{LOAD_FAILED}</p> }.into_any();
                match ready.get() {
                    Some(true) => match now((tab_of(&key).view)().as_mut()) {
                        Some(Ok(view)) => view,
                        _ => failed(),
                    },
                    // Tried again (opening the tab again, or pointing at it, tries too).
                    Some(false) => {
                        load(&key, loaded);
                        failed()
                    }
                    None => {
                        load(&key, loaded);
                        view! { <p class="muted">"Loading…"</p> }.into_any()
                    }
                }
            })}
        </main>
    }
}

/// Whether the page may load: the server accepted the admin token, or it is being asked, or
/// the sign-in form is shown (after a refusal, saying which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Checking,
    SignIn(Option<Refused>),
    In,
}

#[component]
fn StatsLine(d: ProjectDetail) -> impl IntoView {
    let s = d.stats;
    let items = [
        ("train prompts", s.prompts_train),
        ("unused", s.prompts_unused),
        ("eval prompts", s.prompts_eval),
        ("pairs", s.pairs),
        ("complete", s.pairs_complete),
        ("gold", s.gold_pairs),
        ("human labels", s.labels),
        ("judge labels", s.judge_labels),
        ("raters", s.raters),
        ("rounds", s.rounds),
        ("checkpoints", s.checkpoints),
    ];
    view! {
        <dl class="stats" data-testid="stats">
            <div><dt>"task"</dt><dd>{d.project.task.name()}</dd></div>
            {items.into_iter().map(|(k, v)| view! { <div><dt>{k}</dt><dd>{v}</dd></div> }).collect_view()}
        </dl>
    }
}

/// A loader's result, or its error, or "loading".
pub fn shown<T: Clone + 'static, V: IntoView + 'static>(
    r: Option<Result<T, api::Failure>>,
    f: impl FnOnce(T) -> V,
) -> AnyView {
    match r {
        None => view! { <p class="muted">"Loading…"</p> }.into_any(),
        Some(Err(e)) => view! { <p class="error" role="alert">{e.message}</p> }.into_any(),
        Some(Ok(v)) => f(v).into_any(),
    }
}

/// Fetches the tab's code unless it is loaded, then notes in `loaded` whether it came (the
/// panel then renders again if that tab is open; other tabs' panels are left alone).
fn load(key: &str, loaded: RwSignal<Vec<(String, bool)>>) {
    if loaded.with_untracked(|l| l.iter().any(|(k, ok)| k == key && *ok)) {
        return;
    }
    let fut = (tab_of(key).preload)();
    let key = key.to_string();
    leptos::task::spawn_local(async move {
        let ok = fut.await.is_ok();
        // (`try_`: the page may be gone by then.)
        if loaded.try_with_untracked(|l| !l.contains(&(key.clone(), ok))) == Some(true) {
            loaded.try_update(|l| {
                l.retain(|(k, _)| *k != key);
                l.push((key, ok));
            });
        }
    });
}

#[wasm_split(run, wasm_split_path = ::leptos::wasm_split, preload(preload_run), fallible)]
fn run_tab() -> Result<AnyView, SplitLoaderError> {
    Ok(view! { <run::Run/> }.into_any())
}

#[wasm_split(setup, wasm_split_path = ::leptos::wasm_split, preload(preload_setup), fallible)]
fn setup_tab() -> Result<AnyView, SplitLoaderError> {
    Ok(view! { <setup::Setup/> }.into_any())
}

#[wasm_split(raters, wasm_split_path = ::leptos::wasm_split, preload(preload_raters), fallible)]
fn raters_tab() -> Result<AnyView, SplitLoaderError> {
    Ok(view! { <raters::Raters/> }.into_any())
}

#[wasm_split(quality, wasm_split_path = ::leptos::wasm_split, preload(preload_quality), fallible)]
fn quality_tab() -> Result<AnyView, SplitLoaderError> {
    Ok(view! { <quality::Quality/> }.into_any())
}

#[wasm_split(evaluation, wasm_split_path = ::leptos::wasm_split, preload(preload_evaluation), fallible)]
fn evaluation_tab() -> Result<AnyView, SplitLoaderError> {
    Ok(view! { <evaluation::Evaluation/> }.into_any())
}
