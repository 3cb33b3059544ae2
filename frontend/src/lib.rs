//! The web frontend: a Leptos client-side app, compiled to WebAssembly and served by the
//! server. `start` only mounts; each page lives in its own module:
//!
//! - `/rate` — the rater workspace (invite link `#token=…`);
//! - `/` — the admin's projects (admin link `#admin=…`);
//! - `/projects/ID?tab=…` — a project's dashboard: run, setup, raters, quality, evaluation.
//!
//! Pages are chosen from the path at load; links between them are ordinary links. Every text
//! from the server is rendered as text, never as HTML. Built twice: with the `admin` feature
//! (every page but the rater workspace) and without (the rater workspace alone, a smaller
//! download that `boot.js` loads on `/rate`). In the admin build the start page and each dashboard
//! tab are wasm files of their own, fetched when first shown (`split`).

mod api;
#[cfg(feature = "admin")]
mod components;
#[cfg(feature = "admin")]
mod dashboard;
#[cfg(feature = "admin")]
mod home;
// The admin build never shows the rater workspace (`boot.js` loads the rater build on
// `/rate`): left out of it, its code does not weigh on the admin's download (about 100 KB of
// wasm), yet it is still compiled and linted there.
#[cfg_attr(feature = "admin", allow(dead_code))]
mod rate;
#[cfg(feature = "admin")]
mod split;
mod util;

use leptos::prelude::*;
use wasm_bindgen::prelude::wasm_bindgen;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}

#[component]
fn App() -> impl IntoView {
    let path = web_sys::window().and_then(|w| w.location().pathname().ok()).unwrap_or_default();
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match parts.as_slice() {
        #[cfg(not(feature = "admin"))]
        ["rate"] => view! { <rate::RaterWorkspace/> }.into_any(),
        #[cfg(feature = "admin")]
        [] => split::page(split::preload_home, split::home),
        #[cfg(feature = "admin")]
        ["projects", id] => {
            let id = id.to_string();
            view! { <dashboard::ProjectPage id=id/> }.into_any()
        }
        _ => view! {
            <main>
                <h1>"Not found"</h1>
                <p>"There is no page at " <code>{path.clone()}</code> ". " <a href="/">"Projects"</a></p>
            </main>
        }
        .into_any(),
    }
}
