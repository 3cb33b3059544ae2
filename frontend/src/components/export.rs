//! "Export CSV" for any table: the page hands over a header and rows as text, the file is made
//! in the browser. Every table on the dashboard has one.

use leptos::prelude::*;

use crate::api::Res;

use crate::util::{download, to_csv};

#[component]
pub fn ExportCsv(
    /// File name, without `.csv`.
    #[prop(into)]
    name: String,
    header: Vec<&'static str>,
    /// Rows, computed when clicked (so they are current).
    rows: Signal<Vec<Vec<String>>>,
) -> impl IntoView {
    let label = format!("Export {name} as CSV");
    view! {
        <button class="small export" aria-label=label on:click=move |_| {
            download(&format!("{name}.csv"), "text/csv", &to_csv(&header, &rows.get_untracked()));
        }>"Export CSV"</button>
    }
}

/// CSV rows from a loaded list, one row per item (none while loading or on error).
pub fn rows_of<T: Clone + Send + Sync + 'static>(
    list: LocalResource<Res<Vec<T>>>,
    row: impl Fn(&T) -> Vec<String> + Send + Sync + 'static,
) -> Signal<Vec<Vec<String>>> {
    Signal::derive(move || list.get().and_then(Result::ok).unwrap_or_default().iter().map(&row).collect())
}
