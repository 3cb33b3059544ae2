//! Training on TRL: a round's preferences exported as TRL's JSONL, a command the operator wrote
//! run on them (e.g. `accelerate launch … trl dpo …` on a cluster), its log streamed into the
//! round's progress, and the PEFT adapter it writes taken as the round's trained policy.
//!
//! A command is arbitrary code, so only the operator writes one: `apl experiment
//! --trainer-command` on their own machine, or `apl serve --trainer-commands FILE` (names to
//! templates) from which a project picks one by name. It is split into words here (quotes
//! honoured, no shell), so a placeholder's value is always exactly one word, or for `{targets}`
//! one word per projection: `{data}` (a directory with `train.jsonl`: prompt, chosen, rejected,
//! the shape `load_dataset(dir)` reads), `{base}` (the base model as an HF directory), `{out}`
//! (where the adapter must be written), `{beta}`, `{lr}`, `{epochs}`, `{batch}`, `{seed}`,
//! `{rank}`, `{alpha}`, `{targets}`; `{{` and `}}` are literal braces. An unknown placeholder is
//! refused before anything runs.
//!
//! In a server's job the process gets its own process group; cancelling the job sends it
//! SIGTERM and, ten seconds later, SIGKILL (a command-line run shares the terminal's group, so
//! Ctrl-C stops both). Its output goes to `{work}/trainer.log`; the lines transformers'
//! Trainer logs as dicts (`{'loss': 0.69, 'rewards/margins': 0.1, …, 'epoch': 0.5}`, with
//! `--logging_steps 1`) become the round's training steps. A failure ends with the log's last
//! lines. The adapter must be LoRA with the rank, alpha and projections of the settings.

use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use apl_engine::model::{Checkpoint, ModelError, Tokenizer};
use apl_engine::round::Observer;
use apl_engine::train::peft;
use apl_engine::train::policy::Policy;
use apl_engine::train::trainer::{PreferencePair, StepStats, TrainReport};
use apl_shared::settings::{LoopSettings, Trainable};

#[derive(Debug, thiserror::Error)]
pub enum TrlError {
    #[error("trainer command: {0}")]
    Template(String),
    #[error("starting the trainer command {program:?}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the trainer command failed ({status}); the end of its log ({log}):\n{tail}")]
    Failed { status: String, log: PathBuf, tail: String },
    #[error("cancelled: the trainer command was stopped")]
    Cancelled,
    #[error("the trainer logged a loss of {loss} at step {step} ({log}): its adapter is not kept")]
    Diverged { step: usize, loss: f64, log: PathBuf },
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the trainer's adapter in {}: {problem}", dir.display())]
    Adapter { dir: PathBuf, problem: String },
    #[error(transparent)]
    Model(#[from] ModelError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TrlError {
    let path = path.to_path_buf();
    move |source| TrlError::Io { what, path, source }
}

/// Splits a command template into words: whitespace separates, single quotes keep everything,
/// double quotes keep everything but `\"` and `\\`, a backslash outside quotes escapes the next
/// character. No shell: no variables, globs, pipes or redirections.
pub fn split_words(s: &str) -> Result<Vec<String>, TrlError> {
    let (mut words, mut cur, mut in_word) = (Vec::new(), String::new(), false);
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(TrlError::Template("a single quote is not closed".into())),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(TrlError::Template("a double quote is not closed".into())),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(TrlError::Template("a double quote is not closed".into())),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    if words.is_empty() {
        return Err(TrlError::Template("empty".into()));
    }
    Ok(words)
}

/// The command's argv: the template's words with the placeholders filled (`{targets}` alone
/// in a word becomes one word per projection).
pub fn expand(template: &str, values: &[(&str, Vec<String>)]) -> Result<Vec<String>, TrlError> {
    let mut argv = Vec::new();
    for word in split_words(template)? {
        if let Some((_, v)) = values.iter().find(|(k, _)| word == format!("{{{k}}}")) {
            argv.extend(v.iter().cloned());
            continue;
        }
        let mut out = String::new();
        let mut rest = word.as_str();
        while let Some(i) = rest.find('{') {
            out.push_str(&rest[..i]);
            // `{{` is a literal brace (JSON in an argument).
            if rest[i..].starts_with("{{") {
                out.push('{');
                rest = &rest[i + 2..];
                continue;
            }
            let Some(j) = rest[i..].find('}') else {
                return Err(TrlError::Template(format!("an unclosed {{ in {word:?}")));
            };
            let name = &rest[i + 1..i + j];
            match values.iter().find(|(k, _)| *k == name) {
                Some((_, v)) if v.len() == 1 => out.push_str(&v[0]),
                Some(_) => {
                    return Err(TrlError::Template(format!("{{{name}}} is several words: give it a word of its own")));
                }
                None => {
                    let known: Vec<String> = values.iter().map(|(k, _)| format!("{{{k}}}")).collect();
                    return Err(TrlError::Template(format!(
                        "unknown placeholder {{{name}}} in {word:?} (known: {})",
                        known.join(" ")
                    )));
                }
            }
            rest = &rest[i + j + 1..];
        }
        out.push_str(&rest.replace("}}", "}"));
        argv.push(out);
    }
    Ok(argv)
}

/// One logged step of transformers' Trainer: `{'loss': 0.6931, …, 'epoch': 0.25}`.
pub fn parse_log_line(line: &str) -> Option<Vec<(String, f64)>> {
    let body = line.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    for part in body.split(", '") {
        let (k, v) = part.trim_start_matches('\'').split_once("': ")?;
        // Values that are not numbers (a string, a tensor's repr) are passed over.
        if let Ok(x) = v.trim().trim_matches('\'').parse::<f64>() {
            out.push((k.to_string(), x));
        }
    }
    out.iter().any(|(k, _)| k == "loss").then_some(out)
}

/// Writes `base` as an HF directory a trainer loads with transformers: weights, config and
/// tokenizer as `apl convert` writes them, and a `tokenizer_config.json` naming the
/// end-of-sequence token, also as the padding token (TRL refuses a tokenizer without one).
pub fn write_base(base: &Checkpoint, tokenizer: &Tokenizer, dir: &Path) -> Result<(), TrlError> {
    base.save_hf(dir)?;
    let eos = tokenizer.eos_ids().first().and_then(|&id| tokenizer.id_to_token(id));
    let cfg = serde_json::json!({"eos_token": eos, "pad_token": eos, "tokenizer_class": "PreTrainedTokenizerFast"});
    let path = dir.join("tokenizer_config.json");
    std::fs::write(&path, cfg.to_string()).map_err(io("writing", &path))
}

/// Signals the process group `pgid` (the trainer's own, from `process_group(0)`) with the
/// system's `kill`: this crate has no unsafe code for libc's.
fn signal_group(pgid: u32, signal: &str) {
    let status = Command::new("kill").args([&format!("-{signal}"), "--", &format!("-{pgid}")]).status();
    if !status.is_ok_and(|s| s.success()) {
        tracing::warn!(pgid, signal, "could not signal the trainer's process group");
    }
}

/// What a TRL round needs besides the pairs.
pub struct TrlRun<'a> {
    /// The operator's command template.
    pub template: &'a str,
    /// The base model as an HF directory (what TRL loads).
    pub base_dir: &'a Path,
    /// The run's directory: data, output, log.
    pub work: &'a Path,
    pub seed: u64,
    /// Start the command in a process group of its own, which cancelling stops whole (a
    /// server's job). Off for a command-line run, whose Ctrl-C must reach it with the rest.
    pub own_group: bool,
}

/// Trains `pairs` with the command and returns the adapter as a policy on `base`, with the
/// steps the command logged.
pub fn train(
    run: &TrlRun,
    settings: &LoopSettings,
    tokenizer: &Tokenizer,
    base: Checkpoint,
    pairs: &[PreferencePair],
    observer: &dyn Observer,
) -> Result<(Policy, TrainReport), TrlError> {
    let Trainable::Lora { rank, alpha, targets } = &settings.trainable else {
        return Err(TrlError::Template("TRL training writes LoRA adapters: set trainable.kind to lora".into()));
    };
    let t0 = Instant::now();
    let data = run.work.join("data");
    let out = run.work.join("adapter");
    std::fs::create_dir_all(&data).map_err(io("creating", &data))?;
    let _ = std::fs::remove_dir_all(&out);
    let jsonl = data.join("train.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&jsonl).map_err(io("creating", &jsonl))?);
    // Texts as TRL tokenises them: without the BOS the tokenizer adds to prompts, and without
    // end-of-sequence tokens, which TRL appends to every completion itself.
    let added = tokenizer.encode("", true)?;
    let eos = tokenizer.eos_ids();
    let completion = |ids: &[u32]| -> Result<String, ModelError> {
        let kept: Vec<u32> = ids.iter().copied().filter(|t| !eos.contains(t)).collect();
        tokenizer.decode(&kept)
    };
    for p in pairs {
        let row = serde_json::json!({
            "prompt": tokenizer.decode(p.prompt.strip_prefix(added.as_slice()).unwrap_or(&p.prompt))?,
            "chosen": completion(&p.chosen)?,
            "rejected": completion(&p.rejected)?,
        });
        writeln!(f, "{row}").map_err(io("writing", &jsonl))?;
    }
    f.flush().map_err(io("writing", &jsonl))?;
    drop(f);

    let t = &settings.train;
    let one = |v: String| vec![v];
    let path = |p: &Path| one(p.display().to_string());
    let values: Vec<(&str, Vec<String>)> = vec![
        ("data", path(&data)),
        ("base", path(run.base_dir)),
        ("out", path(&out)),
        ("beta", one(t.beta.to_string())),
        ("lr", one(t.adam.lr.to_string())),
        ("epochs", one(t.epochs.to_string())),
        ("batch", one(t.pairs_per_step.to_string())),
        ("seed", one(run.seed.to_string())),
        ("rank", one(rank.to_string())),
        ("alpha", one(alpha.to_string())),
        ("targets", targets.clone()),
    ];
    let argv = expand(run.template, &values)?;
    let log_path = run.work.join("trainer.log");
    let mut log = std::fs::File::create(&log_path).map_err(io("creating", &log_path))?;
    tracing::info!(command = ?argv, "trainer command started");
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]).current_dir(run.work).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if run.own_group {
        command.process_group(0);
    }
    let mut child = command.spawn().map_err(|source| TrlError::Spawn { program: argv[0].clone(), source })?;
    let (tx, rx) = mpsc::channel::<String>();
    // Reader threads end with their pipe (they are not waited for: a process the command left
    // behind may hold it open).
    for stream in [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            // Progress bars rewrite their line with \r: each rewrite is a line here.
            for chunk in std::io::BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                for line in String::from_utf8_lossy(&chunk).split('\r') {
                    if !line.trim().is_empty() && tx.send(line.to_string()).is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(tx);

    let per_epoch = pairs.len().div_ceil(t.pairs_per_step.max(1));
    let total = (t.epochs * per_epoch).max(1);
    let mut steps: Vec<StepStats> = Vec::new();
    let mut tail: std::collections::VecDeque<String> = Default::default();
    let mut last_step = Instant::now();
    let mut killed_at: Option<Instant> = None;
    let mut exited_at: Option<Instant> = None;
    let pgid = child.id();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let _ = writeln!(log, "{line}");
                tail.push_back(line.clone());
                if tail.len() > 20 {
                    tail.pop_front();
                }
                if let Some(kv) = parse_log_line(&line) {
                    let get = |k: &str| kv.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
                    let s = StepStats {
                        step: steps.len(),
                        epoch: get("epoch").map_or(0, |e| (e - 1e-9).max(0.0).floor() as usize),
                        loss: get("loss").unwrap_or(f64::NAN),
                        reward_accuracy: get("rewards/accuracies").unwrap_or(f64::NAN),
                        reward_margin: get("rewards/margins").unwrap_or(f64::NAN),
                        reward_chosen: get("rewards/chosen").unwrap_or(f64::NAN),
                        reward_rejected: get("rewards/rejected").unwrap_or(f64::NAN),
                        seconds: last_step.elapsed().as_secs_f64(),
                    };
                    last_step = Instant::now();
                    observer.step(&s, total.max(s.step + 1));
                    steps.push(s);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // A process the command left behind (a daemon, an ssh it started) may hold the
                // pipes open: once the command itself has ended, a quiet second ends the wait.
                if exited_at.is_none()
                    && child.try_wait().map_err(io("waiting for the trainer in", run.work))?.is_some()
                {
                    exited_at = Some(Instant::now());
                }
                if exited_at.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if observer.cancelled() && !run.own_group && killed_at.is_none() {
            let _ = child.kill();
            killed_at = Some(Instant::now());
        } else if observer.cancelled() {
            match killed_at {
                None => {
                    signal_group(pgid, "TERM");
                    killed_at = Some(Instant::now());
                }
                Some(at) if at.elapsed() > Duration::from_secs(10) => signal_group(pgid, "KILL"),
                Some(_) => {}
            }
        }
    }
    let status = child.wait().map_err(io("waiting for the trainer in", run.work))?;
    if killed_at.is_some() {
        return Err(TrlError::Cancelled);
    }
    if !status.success() {
        let tail = tail.into_iter().collect::<Vec<_>>().join("\n");
        return Err(TrlError::Failed { status: status.to_string(), log: log_path, tail });
    }

    if let Some(st) = steps.iter().find(|st| !st.loss.is_finite()) {
        return Err(TrlError::Diverged { step: st.step + 1, loss: st.loss, log: log_path });
    }
    let adapter_problem = |problem: String| TrlError::Adapter { dir: out.clone(), problem };
    let cfg = peft::read_config(&out).map_err(|e| adapter_problem(e.to_string()))?;
    let policy = peft::load(base, &out)?;
    let Trainable::Lora { rank: r, alpha: a, targets: tg } = policy.trainable() else {
        return Err(adapter_problem(format!("not a LoRA adapter ({})", cfg.peft_type)));
    };
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    if r != rank || (a - alpha).abs() > 1e-9 || sorted(tg) != sorted(targets) {
        return Err(adapter_problem(format!(
            "rank {r}, alpha {a}, targets {tg:?}; the settings say rank {rank}, alpha {alpha}, targets {targets:?} \
             (pass {{rank}}, {{alpha}} and {{targets}} to the command)"
        )));
    }
    let report = TrainReport { steps, seconds: t0.elapsed().as_secs_f64(), prefix_seconds: 0.0 };
    Ok((policy, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_like_a_shell_and_fill_whole_words() {
        let w = split_words(r#"accelerate launch --config "my cfg.yaml" 'a b' c\ d e"f"g"#).unwrap();
        assert_eq!(w, ["accelerate", "launch", "--config", "my cfg.yaml", "a b", "c d", "efg"]);
        assert!(split_words("x 'open").is_err());
        let values =
            vec![("data", vec!["/d; rm -rf /".to_string()]), ("targets", vec!["q_proj".into(), "v_proj".into()])];
        let argv =
            expand("trl dpo --dataset_name {data} --lora_target_modules {targets} --x=pre{data}", &values).unwrap();
        assert_eq!(
            argv,
            [
                "trl",
                "dpo",
                "--dataset_name",
                "/d; rm -rf /",
                "--lora_target_modules",
                "q_proj",
                "v_proj",
                "--x=pre/d; rm -rf /"
            ]
        );
        let e = expand("trl {dataset}", &values).unwrap_err().to_string();
        assert!(e.contains("unknown placeholder {dataset}") && e.contains("{data} {targets}"), "{e}");
        assert!(expand("x --t={targets}", &values).unwrap_err().to_string().contains("word of its own"));
    }

    #[test]
    fn trainer_log_lines_are_read() {
        let kv = parse_log_line(
            "{'loss': 0.6928, 'grad_norm': 1.25, 'learning_rate': 5e-05, 'rewards/margins': 0.0, 'epoch': 0.5}",
        )
        .unwrap();
        assert_eq!(kv[0], ("loss".to_string(), 0.6928));
        assert_eq!(kv.last().unwrap(), &("epoch".to_string(), 0.5));
        assert_eq!(parse_log_line("{'train_runtime': 3.2}"), None, "the final summary has no loss");
        assert_eq!(parse_log_line("Map: 100%|####| 8/8"), None);
    }
}
