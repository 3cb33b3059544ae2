//! Samples a completion pair on demand and shows the two completions side by side (stacked on
//! a narrow screen), as a rater will later see them.

use apl_shared::{Completion, Pair, PairRequest};
use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::api;

#[component]
pub fn PairView() -> impl IntoView {
    let (pair, set_pair) = signal(None::<Pair>);
    let (error, set_error) = signal(None::<String>);
    let (busy, set_busy) = signal(false);
    let sample = move |_| {
        set_busy.set(true);
        set_error.set(None);
        spawn_local(async move {
            match api::pair(&PairRequest::default()).await {
                Ok(p) => set_pair.set(Some(p)),
                Err(e) => set_error.set(Some(e)),
            }
            set_busy.set(false);
        });
    };
    view! {
        <section class="pair" aria-live="polite">
            <button class="primary" on:click=sample disabled=move || busy.get()>
                {move || if busy.get() { "Sampling…" } else { "Sample a pair" }}
            </button>
            {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
            {move || pair.get().map(|p| view! {
                <p class="prompt"><span class="label">"Prompt"</span>{p.prompt.clone()}</p>
                <div class="sides">
                    <Side name="A" c=p.completions[0].clone()/>
                    <Side name="B" c=p.completions[1].clone()/>
                </div>
                <p class="muted">{format!("seed {} · T = {} · {} ms", p.seed, p.temperature, p.elapsed_ms)}</p>
            })}
        </section>
    }
}

/// One completion with its token count and log-probability.
#[component]
fn Side(name: &'static str, c: Completion) -> impl IntoView {
    view! {
        <article class="side">
            <h2>{name}</h2>
            <p class="completion">{c.text}</p>
            <p class="muted">{format!("{} tokens · log p = {:.2}", c.tokens, c.logprob)}</p>
        </article>
    }
}
