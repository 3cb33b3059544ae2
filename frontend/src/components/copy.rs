//! A text to copy (an invite link): shown read-only with a Copy button. The clipboard API needs
//! a secure page and the browser's consent; where it is refused the text is selected instead and
//! the page says to press the copy key, so the link can always be taken.

use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::{JsCast, JsValue};

/// What became of the last Copy press.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copied {
    Done,
    /// The clipboard was refused; the text is selected.
    Selected,
}

/// `navigator.clipboard.writeText(text)` (read through reflection: the API is not in every
/// browser or on plain-http pages).
async fn write_clipboard(text: &str) -> Result<(), JsValue> {
    let window = web_sys::window().ok_or(JsValue::NULL)?;
    let clipboard = js_sys::Reflect::get(&js_sys::Reflect::get(&window, &"navigator".into())?, &"clipboard".into())?;
    if clipboard.is_undefined() || clipboard.is_null() {
        return Err(JsValue::NULL);
    }
    let write: js_sys::Function = js_sys::Reflect::get(&clipboard, &"writeText".into())?.dyn_into()?;
    let promise: js_sys::Promise = write.call1(&clipboard, &JsValue::from_str(text))?.dyn_into()?;
    wasm_bindgen_futures::JsFuture::from(promise).await.map(|_| ())
}

#[component]
pub fn CopyField(
    /// The text (a link).
    text: String,
    /// The field's accessible name.
    label: &'static str,
) -> impl IntoView {
    let input = NodeRef::<leptos::html::Input>::new();
    let state = RwSignal::new(None::<Copied>);
    let select = move || {
        if let Some(i) = input.get_untracked() {
            let _ = i.focus();
            i.select();
        }
    };
    let value = text.clone();
    let copy = move |_| {
        let value = value.clone();
        spawn_local(async move {
            match write_clipboard(&value).await {
                Ok(()) => state.set(Some(Copied::Done)),
                Err(_) => {
                    select();
                    state.set(Some(Copied::Selected));
                }
            }
        });
    };
    view! {
        <div class="copy-field">
            <input type="text" readonly class="invite-link" aria-label=label node_ref=input prop:value=text
                on:focus=move |e| { event_target::<web_sys::HtmlInputElement>(&e).select(); }/>
            <button type="button" class="copy" on:click=copy>"Copy"</button>
            <span class="copy-state" role="status">{move || state.get().map(|s| match s {
                Copied::Done => "Copied.",
                Copied::Selected => "Copying is blocked here: the link is selected, press Ctrl+C (⌘C on a Mac).",
            })}</span>
        </div>
    }
}
