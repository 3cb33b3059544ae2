//! The import formats under arbitrary input (proptest): the parsers never panic, whatever the
//! bytes; any text a person could have written (every Unicode scalar but NUL: CRLF, BOMs inside
//! fields, quotes, commas, escapes, astral characters) comes back exactly through JSONL and
//! CSV written by the standard writers; NUL is refused with the line. A committed corpus of
//! hostile payloads (markup, spreadsheet formulas, URLs of internal addresses) goes through
//! unchanged: the importers store text, the exporters and the browser neutralise where it is
//! shown.

use apl_engine::data::prompts::{self, PromptRecord};
use apl_engine::data::trl::{self, TrlRecord};
use proptest::prelude::*;

/// Text a person could write: any scalar but NUL, up to 40 characters, not blank.
fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>().prop_filter("no NUL", |c| *c != '\0'), 1..40)
        .prop_map(|v| v.into_iter().collect::<String>())
        .prop_filter("not blank", |s| !s.trim().is_empty())
}

fn jsonl_of<T: serde::Serialize>(rows: &[T]) -> String {
    rows.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect()
}

#[derive(serde::Serialize)]
struct Trl<'a> {
    prompt: &'a str,
    chosen: &'a str,
    rejected: &'a str,
}

#[derive(serde::Serialize)]
struct Prompt<'a> {
    prompt: &'a str,
    reference: &'a str,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = trl::parse_jsonl("f", &text);
        let _ = prompts::parse_jsonl("f", &text, false);
        let _ = prompts::parse_jsonl("f", &text, true);
        let _ = prompts::parse_csv("f", &bytes, false);
        let _ = prompts::parse_csv("f", &bytes, true);
    }

    #[test]
    fn trl_rows_round_trip_exactly(rows in proptest::collection::vec((text(), text(), text()), 1..8)) {
        let rows: Vec<(String, String, String)> = rows.into_iter().filter(|(_, c, r)| c != r).collect();
        prop_assume!(!rows.is_empty());
        let file = jsonl_of(&rows.iter().map(|(p, c, r)| Trl { prompt: p, chosen: c, rejected: r }).collect::<Vec<_>>());
        let back = trl::parse_jsonl("f", &file).unwrap();
        let want: Vec<TrlRecord> = rows
            .iter()
            .map(|(p, c, r)| TrlRecord { prompt: p.clone(), chosen: c.clone(), rejected: r.clone(), extra: Default::default() })
            .collect();
        prop_assert_eq!(back, want);
    }

    #[test]
    fn prompts_round_trip_through_jsonl_and_csv(rows in proptest::collection::vec((text(), text()), 1..8)) {
        let want: Vec<PromptRecord> =
            rows.iter().map(|(p, r)| PromptRecord { prompt: p.clone(), reference: Some(r.clone()) }).collect();
        let file = jsonl_of(&rows.iter().map(|(p, r)| Prompt { prompt: p, reference: r }).collect::<Vec<_>>());
        prop_assert_eq!(&prompts::parse_jsonl("f", &file, false).unwrap(), &want);
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["prompt", "reference"]).unwrap();
        for (p, r) in &rows {
            w.write_record([p, r]).unwrap();
        }
        let bytes = w.into_inner().unwrap();
        prop_assert_eq!(&prompts::parse_csv("f", &bytes, false).unwrap(), &want);
    }
}

#[test]
fn nul_is_refused_with_its_line() {
    let file = "{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"b\"}\n{\"prompt\":\"p\",\"chosen\":\"a\\u0000\",\"rejected\":\"b\"}\n";
    let e = trl::parse_jsonl("f", file).unwrap_err().to_string();
    assert!(e.contains("f:2") && e.contains("NUL"), "{e}");
    let e = prompts::parse_jsonl("f", "{\"prompt\":\"a\\u0000b\"}\n", false).unwrap_err().to_string();
    assert!(e.contains("f:1") && e.contains("NUL"), "{e}");
}

/// `tests/fixtures/payloads.txt`, one payload a line, stored as they are.
#[test]
fn the_payload_corpus_imports_unchanged() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/payloads.txt");
    let corpus = std::fs::read_to_string(path).unwrap();
    let payloads: Vec<&str> = corpus.lines().filter(|l| !l.is_empty() && !l.starts_with("# ")).collect();
    assert!(payloads.len() >= 20);
    let rows: Vec<Trl> = payloads.iter().map(|p| Trl { prompt: p, chosen: p, rejected: "plain" }).collect();
    let back = trl::parse_jsonl("payloads", &jsonl_of(&rows)).unwrap();
    for (b, p) in back.iter().zip(&payloads) {
        assert_eq!((b.prompt.as_str(), b.chosen.as_str()), (*p, *p));
        // Written to a CSV, none is a formula any more.
        let cell = apl_shared::csv_cell(p);
        assert!(!cell.trim_start().starts_with(['=', '+', '-', '@']) && !cell.starts_with(['\t', '\r']), "{p:?}");
    }
}
