//! The web frontend: a Leptos client-side app, compiled to WebAssembly and served by the
//! server. `start` only mounts; pages and components live in their own modules.
//!
//! For now one page: what the server runs, and a button that samples a completion pair from
//! the policy. Every text from the server is rendered as text, never as HTML.

mod api;
mod pair_view;

use leptos::prelude::*;
use wasm_bindgen::prelude::wasm_bindgen;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}

#[component]
fn App() -> impl IntoView {
    let health = LocalResource::new(api::health);
    view! {
        <header class="top">
            <h1>"apl"</h1>
            <p class="tagline">"Active preference learning: fine-tune a language model with DPO on as few labels as possible."</p>
        </header>
        <main>
            <Transition fallback=|| view! { <p class="muted">"Connecting to the server…"</p> }>
                {move || health.get().map(|h| match h {
                    Ok(h) => view! {
                        <p class="status">
                            "Model " <strong>{h.model}</strong> " (" {h.architecture} ", "
                            {format!("{:.1}M", h.parameters as f64 / 1e6)} " parameters) on " {h.device}
                            " · " {h.prompts} " IMDB prompts"
                        </p>
                    }.into_any(),
                    Err(e) => view! { <p class="error" role="alert">{e}</p> }.into_any(),
                })}
            </Transition>
            <pair_view::PairView/>
        </main>
    }
}
