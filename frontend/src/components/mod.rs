//! Pieces the pages share: charts, CSV export, a job's live progress, choice lists of the
//! domain's vocabulary, the admin sign-in, a text to copy, and a table's scrolling box.

pub mod chart;
pub mod copy;
pub mod export;
pub mod job;
pub mod signin;
pub mod table;

use apl_shared::Vocabulary;
use leptos::prelude::*;

/// `<option>`s for `items` of a vocabulary: the wire name as the value (what the server
/// parses back into the enum), `label` (its `describe`) as the text people see.
pub fn options<T: Vocabulary>(items: impl IntoIterator<Item = T>, label: impl Fn(T) -> &'static str) -> impl IntoView {
    items.into_iter().map(|v| view! { <option value=v.name()>{label(v)}</option> }).collect_view()
}
