//! A table's own scrolling box: on a phone a wide table scrolls sideways inside it instead of
//! widening the whole page. Focusable and named, so keyboard users can scroll it too.

use leptos::prelude::*;

#[component]
pub fn TableWrap(
    /// What the table lists, for screen readers ("Raters").
    label: &'static str,
    children: Children,
) -> impl IntoView {
    view! { <div class="table-wrap" role="region" aria-label=label tabindex="0">{children()}</div> }
}
