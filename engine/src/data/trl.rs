//! Preference data in TRL's DPO format: JSONL lines `{"prompt", "chosen", "rejected"}` of
//! plain strings (extra fields are kept out of the way, not refused). A file is taken whole or
//! not at all; errors name the line and the problem.

use anyhow::{Result, bail};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct TrlRecord {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
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
        let Ok(v) = serde_json::from_str::<Value>(line) else { bail!("{at}: not valid JSON") };
        let Value::Object(obj) = v else { bail!("{at}: expected a JSON object with prompt, chosen and rejected") };
        let get = |key: &str| -> Result<String> {
            match obj.get(key) {
                None => bail!("{at}: no {key:?} field"),
                Some(Value::String(s)) if s.chars().count() > MAX_FIELD => {
                    bail!("{at}: {key:?} is longer than {MAX_FIELD} characters")
                }
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Array(_)) => {
                    bail!("{at}: {key:?} is a list of messages; only the plain-text format is supported")
                }
                Some(_) => bail!("{at}: {key:?} must be a string"),
            }
        };
        let (prompt, chosen, rejected) = (get("prompt")?, get("chosen")?, get("rejected")?);
        if prompt.trim().is_empty() {
            bail!("{at}: the prompt is empty");
        }
        if chosen == rejected {
            bail!("{at}: chosen and rejected are the same text");
        }
        out.push(TrlRecord { prompt, chosen, rejected });
    }
    if out.is_empty() {
        bail!("{name}: no records");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_refuses_with_line_numbers() {
        let ok = parse_jsonl("f", "{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"b\",\"score\":1}\n\n").unwrap();
        assert_eq!(ok, vec![TrlRecord { prompt: "p".into(), chosen: "a".into(), rejected: "b".into() }]);
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
