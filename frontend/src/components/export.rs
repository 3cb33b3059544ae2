//! "Export CSV" for any table: the page hands over a header and rows as text, the file is made
//! in the browser. Every table on the dashboard has one.

use leptos::prelude::*;

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
