//! Judge prompts, one per task, in the shape the paper used with GPT-4: the system message states
//! the task; the user message gives the criteria, then the "A" and "B" texts, and asks for a
//! one-sentence comparison followed, on its own line, by only the letter. The judge must choose.
//!
//! Parsing is deliberately strict: only the last non-empty line is read (the comparison sentence
//! names both letters), and anything that is not a bare A or B there is no decision — never
//! guessed into a side.

use apl_shared::settings::{AnswerMode, CustomTemplate, InvalidSetting, JudgeTask};
use serde::{Deserialize, Serialize};

const ANSWER_FORMAT: &str = "FIRST provide a one-sentence comparison of the two {what}, explaining which you prefer \
and why. SECOND, on a new line, state only \"A\" or \"B\" to indicate your choice. You must choose one of them. \
Your response should use the format:\nComparison: <one-sentence comparison and explanation>\nPreferred: <\"A\" or \"B\">";

const LETTER_FORMAT: &str = "Answer with only the letter \"A\" or \"B\" for the {what} you prefer, nothing else.";

/// The messages for one call; `a` and `b` are in the order shown to the judge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendered {
    pub system: String,
    pub user: String,
}

/// The messages of `task` for one pair, in the paper's answer format.
pub fn render(
    task: JudgeTask,
    custom: Option<&CustomTemplate>,
    prompt: &str,
    a: &str,
    b: &str,
) -> Result<Rendered, InvalidSetting> {
    render_for(task, AnswerMode::Text, custom, prompt, a, b)
}

/// The messages of `task` for one pair, asking for an answer in `mode`.
pub fn render_for(
    task: JudgeTask,
    mode: AnswerMode,
    custom: Option<&CustomTemplate>,
    prompt: &str,
    a: &str,
    b: &str,
) -> Result<Rendered, InvalidSetting> {
    let format = match mode {
        AnswerMode::Text => ANSWER_FORMAT,
        AnswerMode::Logprobs => LETTER_FORMAT,
    };
    let fmt = |what: &str| format.replace("{what}", what);
    Ok(match task {
        JudgeTask::Imdb => Rendered {
            system: "You are a careful judge of movie-review text. You compare two continuations of the same \
                         review and always pick one."
                .into(),
            user: format!(
                "Which of the following continuations of a movie review expresses a more positive sentiment, \
                     while staying fluent and coherent with the start of the review?\n\nReview start: {prompt}\n\n\
                     Continuation A: {a}\n\nContinuation B: {b}\n\n{}",
                fmt("continuations")
            ),
        },
        JudgeTask::Summarize => Rendered {
            system: "You are a careful judge of summaries. You compare two summaries of the same post and always \
                         pick one."
                .into(),
            user: format!(
                "Which of the following summaries does a better job of summarizing the most important points in \
                     the given forum post, without including unimportant or irrelevant details? A good summary is \
                     both precise and concise.\n\nPost: {prompt}\n\nSummary A: {a}\n\nSummary B: {b}\n\n{}",
                fmt("summaries")
            ),
        },
        JudgeTask::Helpful => Rendered {
            system: "You are a careful judge of assistant responses. You compare two responses to the same query \
                         and always pick one."
                .into(),
            user: format!(
                "For the following query to a chatbot, which response is more helpful?\n\nQuery: {prompt}\n\n\
                     Response A: {a}\n\nResponse B: {b}\n\n{}",
                fmt("responses")
            ),
        },
        JudgeTask::Custom => {
            let t = custom.ok_or_else(|| {
                InvalidSetting::new("judge.template", "judge.task is custom but the template is missing")
            })?;
            t.check()?;
            Rendered {
                system: t.system.clone(),
                // One pass, so a placeholder inside a completion is never substituted.
                user: substitute(&t.user, &[("prompt", prompt), ("a", a), ("b", b)]),
            }
        }
    })
}

fn substitute(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    'outer: while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        for (name, value) in values {
            let key = format!("{{{name}}}");
            if tail.starts_with(&key) {
                out.push_str(value);
                rest = &tail[key.len()..];
                continue 'outer;
            }
        }
        out.push('{');
        rest = &tail[1..];
    }
    out.push_str(rest);
    out
}

/// The position the judge chose, as shown to it (written as the letter it answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shown {
    /// The first text, labelled "A".
    #[serde(rename = "A")]
    First,
    /// The second text, labelled "B".
    #[serde(rename = "B")]
    Second,
}

/// Reads the letter off the last non-empty line: `B`, `"B"`, `**B**`, `B.`, `Preferred: B`,
/// `Answer: (B)`. Anything else, including an empty reply, is no decision.
pub fn parse_verdict(reply: &str) -> Option<Shown> {
    let line = reply.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    let mut s = line.trim_matches(|c: char| c == '*' || c == '#' || c.is_whitespace());
    for prefix in ["preferred", "answer", "choice", "verdict", "final answer"] {
        // `get`, not indexing: the prefix's length may fall inside a character of the reply.
        if s.len() > prefix.len()
            && let (Some(head), Some(tail)) = (s.get(..prefix.len()), s.get(prefix.len()..))
            && head.eq_ignore_ascii_case(prefix)
        {
            let after = tail.trim_start_matches(|c: char| c == '*' || c.is_whitespace());
            if let Some(rest) = after.strip_prefix(':') {
                s = rest;
            }
            break;
        }
    }
    let letter = s.trim_matches(|c: char| c.is_whitespace() || "*\"'`.()[]<>".contains(c));
    match letter {
        "A" | "a" => Some(Shown::First),
        "B" | "b" => Some(Shown::Second),
        _ => None,
    }
}

/// The letter with the higher log-probability among the first token's alternatives (tokens
/// compared after trimming spaces; "A" and "a" are the same letter). None when neither is there.
pub fn logprob_verdict(top: &[(String, f64)]) -> Option<Shown> {
    let best = |letter: &str| {
        top.iter().filter(|(t, _)| t.trim().eq_ignore_ascii_case(letter)).map(|(_, lp)| *lp).reduce(f64::max)
    };
    match (best("A"), best("B")) {
        (Some(a), Some(b)) if a == b => None,
        (Some(a), Some(b)) => Some(if a > b { Shown::First } else { Shown::Second }),
        (Some(_), None) => Some(Shown::First),
        (None, Some(_)) => Some(Shown::Second),
        (None, None) => None,
    }
}

/// The comparison sentence, when the reply has one (the rationale kept with the label).
pub fn comparison(reply: &str) -> Option<String> {
    let line = reply.lines().map(str::trim).find(|l| !l.is_empty())?;
    let text = line.strip_prefix("Comparison:").unwrap_or(line).trim();
    (!text.is_empty() && parse_verdict(line).is_none()).then(|| text.chars().take(500).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_from_the_last_line_only() {
        assert_eq!(parse_verdict("Comparison: A is nicer than B.\nPreferred: B"), Some(Shown::Second));
        assert_eq!(parse_verdict("Comparison: B rambles.\n\nA\n"), Some(Shown::First));
        assert_eq!(parse_verdict("**Preferred:** \"A\""), Some(Shown::First));
        assert_eq!(parse_verdict("Answer: (B)."), Some(Shown::Second));
        assert_eq!(parse_verdict("b"), Some(Shown::Second));
        // Not a bare letter: no decision, never guessed.
        assert_eq!(parse_verdict("Comparison: A is better.\nPreferred: A or B"), None);
        assert_eq!(parse_verdict("Both are fine."), None);
        assert_eq!(parse_verdict("A is better"), None);
        assert_eq!(parse_verdict("Preferred: C"), None);
        assert_eq!(parse_verdict(""), None);
        assert_eq!(parse_verdict("Comparison: A wins.\nPreferred:"), None);
    }

    /// Found by `cargo fuzz run judge_verdict` (fuzz/): a reply whose bytes at a prefix's
    /// length fall inside a character ("answe" + "é": byte 6 is inside it) panicked the job.
    #[test]
    fn replies_cut_inside_a_character_are_read_not_panicked_on() {
        assert_eq!(parse_verdict("answeé: B"), None);
        assert_eq!(parse_verdict("\0\u{fffd}"), None);
        assert_eq!(parse_verdict("Préféré: A"), None);
        assert_eq!(parse_verdict("ANSWER: b"), Some(Shown::Second));
    }

    #[test]
    fn logprob_verdicts() {
        let t = |v: &[(&str, f64)]| v.iter().map(|(s, l)| (s.to_string(), *l)).collect::<Vec<_>>();
        assert_eq!(logprob_verdict(&t(&[("A", -0.5), ("The", -1.0), (" B", -2.0)])), Some(Shown::First));
        assert_eq!(logprob_verdict(&t(&[("The", -0.1), (" B", -2.0), ("A", -2.5)])), Some(Shown::Second));
        assert_eq!(logprob_verdict(&t(&[("The", -0.1), ("b", -2.0)])), Some(Shown::Second));
        assert_eq!(logprob_verdict(&t(&[("The", -0.1), ("I", -2.0)])), None);
        assert_eq!(logprob_verdict(&t(&[("A", -1.0), ("B", -1.0)])), None);
    }

    #[test]
    fn comparison_sentence_kept() {
        assert_eq!(comparison("Comparison: A is warmer.\nPreferred: A").as_deref(), Some("A is warmer."));
        assert_eq!(comparison("B"), None);
    }

    #[test]
    fn built_in_prompts_have_both_texts_in_order() {
        for task in [JudgeTask::Imdb, JudgeTask::Summarize, JudgeTask::Helpful] {
            let r = render(task, None, "PROMPT", "FIRST-TEXT", "SECOND-TEXT").unwrap();
            let (p, a, b) = (
                r.user.find("PROMPT").unwrap(),
                r.user.find("FIRST-TEXT").unwrap(),
                r.user.find("SECOND-TEXT").unwrap(),
            );
            assert!(p < a && a < b, "{task:?}");
            assert!(r.user.ends_with("Preferred: <\"A\" or \"B\">"));
        }
    }

    #[test]
    fn custom_templates_checked_and_filled_once() {
        let t = CustomTemplate { system: "Judge.".into(), user: "Q: {prompt}\nA: {a}\nB: {b}\nLetter?".into() };
        let r = render(JudgeTask::Custom, Some(&t), "p", "{b}", "y").unwrap();
        assert_eq!(r.user, "Q: p\nA: {b}\nB: y\nLetter?");
        let missing = CustomTemplate { system: String::new(), user: "{prompt} {a}".into() };
        assert!(
            render(JudgeTask::Custom, Some(&missing), "p", "a", "b")
                .unwrap_err()
                .to_string()
                .contains("{b} is missing")
        );
        assert!(render(JudgeTask::Custom, None, "p", "a", "b").is_err());
    }
}
