//! Prompt files: a generic JSONL of prompts, and TL;DR-format files (a Reddit post ending in
//! "TL;DR:" plus its human reference summary) as JSONL or CSV.
//!
//! A malformed file is refused whole, with the line number and what was wrong, so an
//! experiment never runs on half a file.

use std::path::Path;

use apl_shared::{PromptFormat, Vocabulary};
use serde_json::Value;

use super::{DataError, Result};

/// A prompt and, for summarisation data, its reference text.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRecord {
    pub prompt: String,
    pub reference: Option<String>,
}

/// Field names accepted for the prompt and for the reference text, in order of preference.
const PROMPT_FIELDS: &[&str] = &["prompt", "post", "text", "query"];
const REFERENCE_FIELDS: &[&str] = &["reference", "summary", "completion", "label"];

fn field<'a>(obj: &'a serde_json::Map<String, Value>, names: &[&'static str]) -> Option<(&'static str, &'a Value)> {
    names.iter().find_map(|n| obj.get(*n).map(|v| (*n, v)))
}

/// Reads a JSONL file of objects with a prompt field (`prompt`, `post`, `text` or `query`)
/// and, optionally, a reference (`reference`, `summary`, `completion` or `label`).
/// With `tldr`, every prompt must end with "TL;DR:" and have a reference.
pub fn read_jsonl(path: &Path, tldr: bool) -> Result<Vec<PromptRecord>> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    })?;
    parse_jsonl(&path.display().to_string(), &text, tldr)
}

/// [`read_jsonl`] of text already in memory; `name` prefixes the line numbers in errors.
pub fn parse_jsonl(name: &str, text: &str, tldr: bool) -> Result<Vec<PromptRecord>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = || format!("{name}:{}", i + 1);
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|source| DataError::Json { at: at(), source })?;
        let Value::Object(obj) = v else {
            return Err(DataError::record(at(), format!("expected a JSON object, got {}", kind(&v))));
        };
        let Some((name, p)) = field(&obj, PROMPT_FIELDS) else {
            return Err(DataError::record(at(), format!("no prompt field (one of {})", PROMPT_FIELDS.join(", "))));
        };
        let Some(prompt) = p.as_str() else {
            return Err(DataError::record(at(), format!("{name:?} must be a string, got {}", kind(p))));
        };
        let reference = match field(&obj, REFERENCE_FIELDS) {
            None => None,
            Some((_, Value::String(s))) => Some(s.clone()),
            Some((n, other)) => {
                return Err(DataError::record(at(), format!("{n:?} must be a string, got {}", kind(other))));
            }
        };
        out.push(
            check(PromptRecord { prompt: prompt.to_string(), reference }, tldr)
                .map_err(|m| DataError::record(at(), m))?,
        );
    }
    if out.is_empty() {
        return Err(DataError::record(name, "no prompts"));
    }
    Ok(out)
}

/// Reads a CSV with a header naming a prompt column and optionally a reference column (same
/// names as the JSONL fields).
pub fn read_csv(path: &Path, tldr: bool) -> Result<Vec<PromptRecord>> {
    let bytes =
        std::fs::read(path).map_err(|source| DataError::Io { what: "opening", path: path.to_path_buf(), source })?;
    parse_csv(&path.display().to_string(), &bytes, tldr)
}

/// [`read_csv`] of bytes already in memory; `name` prefixes the line numbers in errors.
pub fn parse_csv(name: &str, bytes: &[u8], tldr: bool) -> Result<Vec<PromptRecord>> {
    let mut rdr = csv::Reader::from_reader(bytes);
    let headers = rdr
        .headers()
        .map_err(|source| DataError::Csv { at: name.to_string(), what: "reading the header", source })?
        .clone();
    let find =
        |names: &[&str]| names.iter().find_map(|n| headers.iter().position(|h| h.trim().eq_ignore_ascii_case(n)));
    let Some(pcol) = find(PROMPT_FIELDS) else {
        return Err(DataError::record(name, format!("no prompt column (one of {})", PROMPT_FIELDS.join(", "))));
    };
    let rcol = find(REFERENCE_FIELDS);
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let at = format!("{name}:{}", i + 2);
        let rec = rec.map_err(|source| DataError::Csv { at: at.clone(), what: "malformed CSV row", source })?;
        let prompt = rec.get(pcol).unwrap_or_default().to_string();
        let reference = rcol.and_then(|c| rec.get(c)).map(str::to_string);
        out.push(check(PromptRecord { prompt, reference }, tldr).map_err(|m| DataError::record(&at, m))?);
    }
    if out.is_empty() {
        return Err(DataError::record(name, "no prompts"));
    }
    Ok(out)
}

/// Reads JSONL or CSV by extension (`.json` read as JSONL).
pub fn read(path: &Path, tldr: bool) -> Result<Vec<PromptRecord>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    let jsonl = ext.eq_ignore_ascii_case("json");
    match PromptFormat::parse(ext) {
        Ok(PromptFormat::Jsonl) => read_jsonl(path, tldr),
        Ok(PromptFormat::Csv) => read_csv(path, tldr),
        Err(_) if jsonl => read_jsonl(path, tldr),
        Err(_) => Err(DataError::record(path.display(), "expected a .jsonl or .csv file")),
    }
}

/// The record, or what is wrong with it.
fn check(r: PromptRecord, tldr: bool) -> std::result::Result<PromptRecord, String> {
    if r.prompt.trim().is_empty() {
        return Err("the prompt is empty".into());
    }
    for (what, text) in [("prompt", Some(&r.prompt)), ("reference", r.reference.as_ref())] {
        let Some(text) = text else { continue };
        let n = text.chars().count();
        if n > super::trl::MAX_FIELD {
            return Err(format!("the {what} has {n} characters; at most {} are accepted", super::trl::MAX_FIELD));
        }
        if text.contains('\0') {
            return Err(format!("the {what} contains a NUL character (U+0000)"));
        }
    }
    if tldr {
        if !r.prompt.trim_end().ends_with("TL;DR:") {
            return Err("a TL;DR prompt must end with \"TL;DR:\"".into());
        }
        match &r.reference {
            Some(s) if !s.trim().is_empty() => {}
            _ => return Err("a TL;DR record needs a reference summary (\"summary\" or \"reference\")".into()),
        }
    }
    Ok(r)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(ext: &str, body: &str) -> tempfile::NamedTempFile {
        let f = tempfile::Builder::new().suffix(ext).tempfile().unwrap();
        std::fs::write(f.path(), body).unwrap();
        f
    }

    #[test]
    fn reads_generic_and_tldr_jsonl() {
        let f = file(".jsonl", "{\"prompt\": \"Hello\"}\n\n{\"text\": \"World\", \"summary\": \"w\"}\n");
        let r = read(f.path(), false).unwrap();
        assert_eq!(r[0], PromptRecord { prompt: "Hello".into(), reference: None });
        assert_eq!(r[1].reference.as_deref(), Some("w"));
        let f = file(".jsonl", "{\"post\": \"My cat... TL;DR:\", \"summary\": \"cat\"}\n");
        assert_eq!(read(f.path(), true).unwrap().len(), 1);
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let cases = [
            ("{\"prompt\": \"ok\"}\n{\"prompt\": 3}\n", false, ":2:", "must be a string"),
            ("{\"prompt\": \"ok\"}\nnot json\n", false, ":2:", "not valid JSON"),
            ("[1, 2]\n", false, ":1:", "expected a JSON object"),
            ("{\"title\": \"x\"}\n", false, ":1:", "no prompt field"),
            ("{\"post\": \"no marker\", \"summary\": \"s\"}\n", true, ":1:", "TL;DR:"),
            ("{\"post\": \"x TL;DR:\"}\n", true, ":1:", "reference summary"),
        ];
        for (body, tldr, line, what) in cases {
            let f = file(".jsonl", body);
            let e = format!("{:#}", read(f.path(), tldr).unwrap_err());
            assert!(e.contains(line) && e.contains(what), "{body:?}: {e}");
        }
        let f = file(".csv", "post,summary\n\"a TL;DR:\",s\n\"b\",t\n");
        let e = format!("{:#}", read(f.path(), true).unwrap_err());
        assert!(e.contains(":3:") && e.contains("TL;DR:"), "{e}");
        let f = file(".txt", "x");
        assert!(read(f.path(), false).is_err());
    }
}
