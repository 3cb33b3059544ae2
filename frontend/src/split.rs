//! Code fetched when first needed: the admin build is split (by `cargo xtask frontend`, with
//! wasm-split) at the `#[wasm_split]` functions, the start page's here and the dashboard tabs'
//! in `dashboard`. Each such function's code, and what only it uses, is a wasm file of its own
//! that `pkg/__wasm_split.js` fetches on the first call; later calls are immediate.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use leptos::prelude::*;
use leptos::wasm_split::{SplitLoaderError, wasm_split};

/// A split function's result, once its code is loaded.
pub type Loading<T> = Pin<Box<dyn Future<Output = Result<T, SplitLoaderError>>>>;

/// What a page shows when its code could not be fetched.
pub const LOAD_FAILED: &str = "This page could not be loaded (is the server reachable?). Reload the page to try again.";

/// The future's output if it is ready without waiting (a split function whose code is loaded).
pub fn now<F: Future + ?Sized>(fut: Pin<&mut F>) -> Option<F::Output> {
    match fut.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// A whole page built by a split function: "Loading…" until its code is there.
pub fn page<P, V>(preload: fn() -> P, build: fn() -> V) -> AnyView
where
    P: Future<Output = Result<(), SplitLoaderError>> + 'static,
    V: Future<Output = Result<AnyView, SplitLoaderError>> + 'static,
{
    let state = RwSignal::new(None::<bool>);
    leptos::task::spawn_local(async move { state.set(Some(preload().await.is_ok())) });
    (move || match state.get() {
        None => view! { <p class="muted">"Loading…"</p> }.into_any(),
        Some(true) => match now(std::pin::pin!(build())) {
            Some(Ok(v)) => v,
            _ => view! { <p class="error" role="alert">{LOAD_FAILED}</p> }.into_any(),
        },
        Some(false) => view! { <p class="error" role="alert">{LOAD_FAILED}</p> }.into_any(),
    })
    .into_any()
}

#[wasm_split(home, wasm_split_path = ::leptos::wasm_split, preload(preload_home), fallible)]
pub fn home() -> Result<AnyView, SplitLoaderError> {
    Ok(view! { <crate::home::Home/> }.into_any())
}
