//! Preference data in TRL's DPO format: JSONL lines `{"prompt", "chosen", "rejected"}` of
//! plain strings. A row's other fields (a dataset's `score`, `id`, `source`) are kept as they
//! came, to be written back with the row. A file is taken whole or not at all; errors name the
//! line and the problem.

use serde_json::{Map, Value};

use super::{DataError, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct TrlRecord {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// The row's other fields.
    pub extra: Map<String, Value>,
}

/// Longest accepted field, in characters.
pub const MAX_FIELD: usize = 20_000;

pub fn parse_jsonl(name: &str, text: &str) -> Result<Vec<TrlRecord>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("{name}:{}", i + 1);
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|source| DataError::Json { at: at.clone(), source })?;
        let Value::Object(mut obj) = v else {
            return Err(DataError::record(at, "expected a JSON object with prompt, chosen and rejected"));
        };
        let get = |key: &str| -> Result<String> {
            let problem = match obj.get(key) {
                None => format!("no {key:?} field"),
                Some(Value::String(s)) if s.chars().count() > MAX_FIELD => {
                    format!("{key:?} is longer than {MAX_FIELD} characters")
                }
                // PostgreSQL's TEXT cannot hold it; no text a person reads needs it.
                Some(Value::String(s)) if s.contains('\0') => format!("{key:?} contains a NUL character (U+0000)"),
                Some(Value::String(s)) => return Ok(s.clone()),
                Some(Value::Array(_)) => {
                    format!("{key:?} is a list of messages; only the plain-text format is supported")
                }
                Some(_) => format!("{key:?} must be a string"),
            };
            Err(DataError::record(&at, problem))
        };
        let (prompt, chosen, rejected) = (get("prompt")?, get("chosen")?, get("rejected")?);
        if prompt.trim().is_empty() {
            return Err(DataError::record(at, "the prompt is empty"));
        }
        if chosen == rejected {
            return Err(DataError::record(at, "chosen and rejected are the same text"));
        }
        for key in ["prompt", "chosen", "rejected"] {
            obj.remove(key);
        }
        out.push(TrlRecord { prompt, chosen, rejected, extra: obj });
    }
    if out.is_empty() {
        return Err(DataError::record(name, "no records"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_refuses_with_line_numbers() {
        let ok = parse_jsonl("f", "{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"b\",\"score\":1}\n\n").unwrap();
        let extra = serde_json::json!({"score": 1}).as_object().unwrap().clone();
        assert_eq!(ok, vec![TrlRecord { prompt: "p".into(), chosen: "a".into(), rejected: "b".into(), extra }]);
        let good = "{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"b\"}\n";
        for (bad, want) in [
            ("nope", "f:2: not valid JSON"),
            ("{\"prompt\":\"p\",\"chosen\":\"a\"}", "f:2: no \"rejected\""),
            ("{\"prompt\":\"p\",\"chosen\":[],\"rejected\":\"b\"}", "list of messages"),
            ("{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"a\"}", "the same text"),
            ("{\"prompt\":\" \",\"chosen\":\"a\",\"rejected\":\"b\"}", "prompt is empty"),
        ] {
            let e = parse_jsonl("f", &format!("{good}{bad}\n")).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        assert!(parse_jsonl("f", "\n").unwrap_err().to_string().contains("no records"));
    }
}
