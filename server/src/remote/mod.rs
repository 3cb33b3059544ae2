//! The remote model backend: the loop's sampling and scoring on an OpenAI-compatible inference
//! server (vLLM on a GPU; llama-cpp-python's server), while the loop, the raters, the judge and
//! the statistics stay here.
//!
//! It is a [`ModelBackend`] like the local engine, so the round does not know which it has.
//! What the server is asked is in `wire`; before any of it is trusted, [`Remote::check`] runs
//! `probe`'s checks (the server tokenises as the local tokenizer does; its prompt log-probs are
//! the model's, not read one position late), and a server that fails is refused, naming the
//! problem.
//!
//! Roles: the reference is the served base model (`model`); the policy is the same name until
//! it is trained, then an adapter the server has loaded under another name
//! ([`Remote::with_policy`]). `reference_base_url`, when set, samples the reference elsewhere
//! (a server that cannot load adapters); every score comes from `base_url`, the server that
//! passed the prompt log-probs probe.
//!
//! Requests run `concurrency` at a time from the loop's blocking thread (`openai::Blocking`),
//! in order, and are dropped in flight when the job is cancelled. Seeds are per request (a
//! vLLM request of several prompts, or one llama-cpp-python completion), derived from the
//! job's seed, so a rerun asks the same questions; retried requests are idempotent.

pub mod probe;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use apl_engine::backend::{ModelBackend, Role, SampleJob};
use apl_engine::model::{FinishReason, ModelError, Sample, Tokenizer};
use apl_engine::train::peft;
use apl_engine::train::policy::Policy;
use apl_shared::settings::{RemoteBackend, ServerKind};
use futures_util::{StreamExt, TryStreamExt};
use sha2::Digest;

use crate::judge::destination::Destinations;
use crate::openai::{Blocking, CallError, Client, ClientConfig, ClientError, Who};
use wire::{Completion, Knobs};

/// What goes wrong with a model server.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("cancelled: the model server's calls in flight were dropped")]
    Cancelled,
    /// A reply that parsed but does not answer the request (too few choices, a missing
    /// log-prob, a completion tokenised otherwise).
    #[error("the model server's reply to {what}: {problem}")]
    Reply { what: String, problem: String },
    /// `probe`'s findings.
    #[error("{0}")]
    Refused(String),
    /// The model server would not load an adapter.
    #[error(
        "the model server did not load the adapter {name} from {path} (vLLM needs --enable-lora, a --max-lora-rank of at least the adapter's rank and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)"
    )]
    Adapter {
        name: String,
        path: String,
        #[source]
        source: CallError,
    },
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
}

fn reply(what: impl Into<String>, problem: impl Into<String>) -> RemoteError {
    RemoteError::Reply { what: what.into(), problem: problem.into() }
}

/// One server and what it speaks.
#[derive(Debug)]
struct Server {
    client: Client,
    kind: ServerKind,
}

/// The remote backend (see the module header).
pub struct Remote {
    main: Server,
    /// Samples the reference, when set.
    reference: Option<Server>,
    settings: RemoteBackend,
    tokenizer: Tokenizer,
    blocking: Blocking,
    /// Token texts to ids, for servers that return tokens as text (built on first use).
    pieces: OnceLock<HashMap<String, Option<u32>>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("main", &self.main).field("model", &self.settings.model).finish()
    }
}

/// A 64-bit mix (splitmix64) of a job's seed and a request's index: each request its own
/// stream, the same on a rerun.
fn request_seed(seed: u64, index: usize) -> u64 {
    let mut z = seed.wrapping_add((index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    // Servers read seeds as signed 64-bit (vLLM) or 32-bit (llama.cpp) integers.
    (z ^ (z >> 31)) & 0x7fff_ffff
}

impl Remote {
    /// A backend for `settings` (validated here); nothing is sent until it is used or checked.
    pub fn new(
        settings: RemoteBackend,
        api_key: Option<String>,
        tokenizer: Tokenizer,
        destinations: Arc<Destinations>,
    ) -> Result<Self, RemoteError> {
        settings.validate().map_err(ClientError::from)?;
        let server = |base_url: &str, kind: ServerKind| -> Result<Server, RemoteError> {
            let cfg = ClientConfig {
                base_url: base_url.to_string(),
                api_key: api_key.clone(),
                timeout: Duration::from_secs_f64(settings.timeout_seconds),
                retries: settings.retries,
                backoff_initial: Duration::from_secs_f64(settings.backoff_seconds),
                backoff_max: Duration::from_secs(60),
                destinations: destinations.clone(),
            };
            Ok(Server { client: Client::new(Who::Model, cfg)?, kind })
        };
        let main = server(&settings.base_url, settings.server)?;
        let reference = match &settings.reference_base_url {
            Some(url) => Some(server(url, settings.reference_server.unwrap_or(settings.server))?),
            None => None,
        };
        Ok(Self { main, reference, settings, tokenizer, blocking: Blocking::default(), pieces: OnceLock::new() })
    }

    /// The same backend, whose calls stop (in flight too) once `flag` is set.
    pub fn cancelled_by(mut self, flag: Arc<AtomicBool>) -> Self {
        self.blocking = Blocking::cancelled_by(flag);
        self
    }

    /// This server as the loop's backend, with the policy served under `policy` (an adapter
    /// it has loaded, [`Remote::load_adapter`]); None: the untrained policy, the base model.
    pub fn serving(&self, policy: Option<&str>) -> Serving<'_> {
        Serving { remote: self, policy: policy.unwrap_or(&self.settings.model).to_string() }
    }

    /// Has the main server serve a trained `policy`: its PEFT adapter written to `dir` (the
    /// caller keeps it while the policy is in use) and loaded under a name from `label` and the
    /// adapter's contents, so a long-lived server never answers for an older adapter of the same
    /// label. Adapters are not unloaded: vLLM keeps `--max-loras` of them on the GPU and the
    /// rest in CPU memory. Returns the name, for [`Remote::serving`].
    pub fn serve_policy(&self, policy: &Policy, dir: &std::path::Path, label: &str) -> Result<String, RemoteError> {
        peft::save(policy, dir, &self.settings.model)?;
        let weights = dir.join(peft::WEIGHTS_FILE);
        let bytes =
            std::fs::read(&weights).map_err(|e| reply("serving the policy", format!("{}: {e}", weights.display())))?;
        let digest = sha2::Sha256::digest(&bytes);
        let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        let label: String =
            label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
        let name = format!("apl-{label}-{hex}");
        self.load_adapter(&name, dir)?;
        Ok(name)
    }

    /// Has the main server serve the PEFT adapter in `dir` under `name` (vLLM:
    /// `--enable-lora`, `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`), unless it already does. The
    /// server reads the directory itself: at the same path, or as `adapter_path_map` maps it.
    pub fn load_adapter(&self, name: &str, dir: &std::path::Path) -> Result<(), RemoteError> {
        let c = &self.main.client;
        let models = self.one(c.get(&c.api("/models"), parse_models))?;
        if models.iter().any(|m| m == name) {
            return Ok(());
        }
        let canonical = |p: &std::path::Path| {
            p.canonicalize().map_err(|source| RemoteError::Io { what: "finding", path: p.to_path_buf(), source })
        };
        let local = canonical(dir)?;
        let path = match self.settings.adapter_path_map.as_ref().and_then(|m| m.split_once('=')) {
            Some((from, to)) => {
                let from = canonical(std::path::Path::new(from)).unwrap_or_else(|_| from.into());
                match local.strip_prefix(&from) {
                    Ok(rest) => std::path::Path::new(to).join(rest).display().to_string(),
                    Err(_) => {
                        let problem =
                            format!("{} is not under {} (backend.adapter_path_map)", local.display(), from.display());
                        return Err(reply("loading an adapter", problem));
                    }
                }
            }
            None => local.display().to_string(),
        };
        let body = serde_json::json!({"lora_name": name, "lora_path": path});
        // vLLM answers in plain text. A load that timed out may have happened: asked again,
        // the server says it has the name, which the list then shows.
        let loaded = self
            .run(vec![async { Ok(c.post(&c.api("/load_lora_adapter"), &body, |_| Ok(())).await.result) }])?
            .remove(0);
        if let Err(source) = loaded {
            let listed = self.one(c.get(&c.api("/models"), parse_models))?;
            if !listed.iter().any(|m| m == name) {
                return Err(RemoteError::Adapter { name: name.to_string(), path, source });
            }
        }
        tracing::info!(name, path, "adapter loaded on the model server");
        Ok(())
    }

    pub fn settings(&self) -> &RemoteBackend {
        &self.settings
    }

    /// Runs a batch of requests `concurrency` at a time, in order.
    fn run<T>(
        &self,
        calls: Vec<impl std::future::Future<Output = Result<T, RemoteError>>>,
    ) -> Result<Vec<T>, RemoteError> {
        // The first failure ends the batch; the requests still in flight are dropped.
        let all = futures_util::stream::iter(calls).buffered(self.settings.concurrency.max(1)).try_collect::<Vec<T>>();
        self.blocking.run(all).ok_or(RemoteError::Cancelled)?
    }

    /// One call's reply (see [`Remote::run`]).
    fn one<T>(&self, call: impl std::future::Future<Output = crate::openai::Outcome<T>>) -> Result<T, RemoteError> {
        Ok(self.run(vec![async { Ok(call.await.result?) }])?.remove(0))
    }

    /// Samples `job` from `role`, the policy being served as `policy` (see
    /// [`ModelBackend::sample`]).
    pub fn sample_rows(
        &self,
        role: Role,
        policy: &str,
        job: &SampleJob<'_>,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Vec<Sample>, RemoteError> {
        let (server, model) = match role {
            Role::Policy => (&self.main, policy),
            Role::Reference => (self.reference.as_ref().unwrap_or(&self.main), self.settings.model.as_str()),
        };
        let rows = job.lengths.len();
        let n = job.per_prompt.max(1);
        if rows != job.prompts.len() * n {
            return Err(ModelError::Input(format!("{rows} lengths for {} prompts x {n}", job.prompts.len())).into());
        }
        let done = std::cell::Cell::new(0);
        let tick = |k: usize| {
            done.set(done.get() + k);
            progress(done.get(), rows);
        };
        let eos = self.tokenizer.eos_ids();
        let out: Vec<Vec<Sample>> = match server.kind {
            ServerKind::Vllm => {
                // One prompt a request: vLLM seeds every prompt of a request alike (and its
                // `n` samples seed + k), so prompts sharing a request would share random
                // streams. Its continuous batching joins the concurrent requests anyway.
                let url = server.client.api("/completions");
                let calls: Vec<_> = (0..job.prompts.len())
                    .map(|i| {
                        let lengths = &job.lengths[i * n..(i + 1) * n];
                        let knobs = Knobs {
                            temperature: job.temperature,
                            max_tokens: lengths.iter().copied().max().unwrap_or(1).max(1),
                            exact: job.exact_length,
                            seed: request_seed(job.seed, i),
                        };
                        let body = wire::vllm_sample(model, &job.prompts[i..=i], n, knobs, eos);
                        let (url, tick) = (&url, &tick);
                        async move {
                            let c = server.client.post(url, &body, wire::parse).await.result?;
                            let samples = vllm_samples(c, lengths, eos)?;
                            tick(samples.len());
                            Ok(samples)
                        }
                    })
                    .collect();
                self.run(calls)?
            }
            ServerKind::LlamaCppPython => {
                let url = server.client.api("/completions");
                let texts: Vec<String> = job.prompts.iter().map(|p| self.text_of(p)).collect::<Result<_, _>>()?;
                let calls: Vec<_> = (0..rows)
                    .map(|r| {
                        let knobs = Knobs {
                            temperature: job.temperature,
                            max_tokens: job.lengths[r].max(1),
                            exact: job.exact_length,
                            seed: request_seed(job.seed, r),
                        };
                        let (prompt, text) = (job.prompts[r / n], &texts[r / n]);
                        let body = wire::text_sample(model, text, knobs, eos);
                        let (url, tick) = (&url, &tick);
                        async move {
                            let c = server.client.post(url, &body, wire::parse).await.result?;
                            let s = self.text_sample(c, prompt, text, job.lengths[r])?;
                            tick(1);
                            Ok(vec![s])
                        }
                    })
                    .collect();
                self.run(calls)?
            }
        };
        Ok(out.into_iter().flatten().collect())
    }

    /// The text a text server is sent for `ids`: without the special tokens the tokenizer adds
    /// itself (a BOS), which the server adds again when it tokenises.
    fn text_of(&self, ids: &[u32]) -> Result<String, RemoteError> {
        let added = self.tokenizer.encode("", true)?;
        Ok(self.tokenizer.decode(ids.strip_prefix(added.as_slice()).unwrap_or(ids))?)
    }

    /// Each token text's id: the text the token adds after another token (so a SentencePiece
    /// word start keeps its space, as servers report it mid-text), where no other token adds
    /// the same (texts of several ids, and bytes that are not a whole character, are
    /// ambiguous: None).
    fn piece_ids(&self) -> Result<&HashMap<String, Option<u32>>, RemoteError> {
        if let Some(m) = self.pieces.get() {
            return Ok(m);
        }
        let ctx = self.tokenizer.encode("a", false)?.first().copied().unwrap_or(0);
        let before = self.tokenizer.decode(&[ctx])?;
        let mut m = HashMap::new();
        for id in 0..self.tokenizer.vocab_size() as u32 {
            if let Some(s) = self.tokenizer.decode(&[ctx, id])?.strip_prefix(&before)
                && !s.is_empty()
                && !s.contains('\u{FFFD}')
            {
                m.entry(s.to_string()).and_modify(|v| *v = None).or_insert(Some(id));
            }
        }
        Ok(self.pieces.get_or_init(|| m))
    }

    /// A llama-cpp-python sample. Its tokens are strings: they are mapped back to ids by their
    /// text where each is unambiguous and together they decode to the completion; otherwise
    /// the completion is re-encoded after the prompt, which may cut it into other tokens than
    /// the server sampled (the log-probs stay the server's, one per its token; only their sum
    /// is read). An end-of-sequence id is appended when it stopped on one, as the local
    /// engine's samples keep theirs.
    fn text_sample(
        &self,
        mut c: Completion,
        prompt: &[u32],
        prompt_text: &str,
        len: usize,
    ) -> Result<Sample, RemoteError> {
        let choice = c.choices.swap_remove(0);
        let lp = choice.logprobs.ok_or_else(|| reply("a sampling request", "no log-probs (is logprobs ignored?)"))?;
        let logprobs = finite(&lp.token_logprobs, "a sampled token")?;
        let map = self.piece_ids()?;
        let mapped: Option<Vec<u32>> = lp.tokens.iter().map(|t| map.get(t).copied().flatten()).collect();
        let mut tokens = match mapped {
            Some(ids) if ids.len() == logprobs.len() && self.tokenizer.decode(&ids)? == choice.text => ids,
            _ => {
                let whole = self.tokenizer.encode(&format!("{prompt_text}{}", choice.text), true)?;
                match whole.strip_prefix(prompt) {
                    Some(rest) => rest.to_vec(),
                    // The completion's first characters merged with the prompt's last token.
                    None => self.tokenizer.encode(&choice.text, false)?,
                }
            }
        };
        // Not cut to `len`: re-encoded tokens stand for the server's text, to which its log-probs
        // belong (a re-encoding may be a token longer than the server's count, rarely).
        // The server reports neither the end-of-sequence token it stopped on nor its log-prob;
        // the first of ours stands for it (without a log-prob: the sum misses log p(EOS)).
        let finish = match choice.finish_reason.as_deref() {
            Some("stop") if tokens.len() < len => {
                tokens.extend(self.tokenizer.eos_ids().first());
                FinishReason::Eos
            }
            _ => FinishReason::Length,
        };
        Ok(Sample { tokens, logprobs, finish })
    }

    /// Each completion token's log-prob under the main server's `model` (the base model's
    /// name, or an adapter's), row by row.
    pub fn token_logprobs(
        &self,
        model: &str,
        rows: &[(&[u32], &[u32])],
        progress: &dyn Fn(usize, usize),
    ) -> Result<Vec<Vec<f32>>, RemoteError> {
        let server = &self.main;
        let url = server.client.api("/completions");
        let done = std::cell::Cell::new(0);
        let tick = |k: usize| {
            done.set(done.get() + k);
            progress(done.get(), rows.len());
        };
        let out: Vec<Vec<Vec<f32>>> = match server.kind {
            ServerKind::Vllm => {
                let calls: Vec<_> = rows
                    .chunks(self.settings.rows_per_request.max(1))
                    .map(|chunk| {
                        let seqs: Vec<Vec<u32>> = chunk.iter().map(|(p, c)| [*p, *c].concat()).collect();
                        let body = wire::vllm_score(model, &seqs, 1);
                        let (url, tick) = (&url, &tick);
                        async move {
                            let c = server.client.post(url, &body, wire::parse).await.result?;
                            let lps = prompt_logprobs(&c, chunk)?;
                            tick(chunk.len());
                            Ok(lps)
                        }
                    })
                    .collect();
                self.run(calls)?
            }
            ServerKind::LlamaCppPython => {
                let calls: Vec<_> = rows
                    .iter()
                    .map(|&(p, c)| {
                        let (url, tick) = (&url, &tick);
                        async move {
                            let prompt_text = self.text_of(p)?;
                            let text = self.text_of(&[p, c].concat())?;
                            let Some(completion) = text.strip_prefix(&prompt_text) else {
                                return Err(reply(
                                    "a scoring request",
                                    "the prompt's last token and the completion's first share a character; the text cannot be split",
                                ));
                            };
                            let body = wire::text_echo(model, &text, 1);
                            let reply = server.client.post(url, &body, wire::parse).await.result?;
                            let lps = echoed(&reply, &prompt_text, completion, c.len())?;
                            tick(1);
                            Ok(vec![lps])
                        }
                    })
                    .collect();
                self.run(calls)?
            }
        };
        Ok(out.into_iter().flatten().collect())
    }

    fn sums(
        &self,
        model: &str,
        rows: &[(&[u32], &[u32])],
        progress: &dyn Fn(usize, usize),
    ) -> Result<Vec<f32>, RemoteError> {
        let lps = self.token_logprobs(model, rows, progress)?;
        Ok(lps.iter().map(|l| l.iter().map(|&x| x as f64).sum::<f64>() as f32).collect())
    }
}

/// vLLM's choices of one request, prompt-major, each cut to its row's length: a prefix of a
/// longer sample (end-of-sequence suppressed until `max_tokens`, or stopping at the first) is a
/// sample of the shorter length.
fn vllm_samples(c: Completion, lengths: &[usize], eos: &[u32]) -> Result<Vec<Sample>, RemoteError> {
    if c.choices.len() != lengths.len() {
        let problem = format!("{} choices for {} rows", c.choices.len(), lengths.len());
        return Err(reply("a sampling request", problem));
    }
    c.choices
        .into_iter()
        .zip(lengths)
        .map(|(choice, &len)| {
            let lp = choice.logprobs.unwrap_or_default();
            let mut tokens = match choice.token_ids {
                Some(ids) => ids,
                None => {
                    lp.tokens.iter().map(|t| wire::token_id(t)).collect::<Option<Vec<u32>>>().ok_or_else(|| {
                        reply("a sampling request", "no token ids (vLLM 0.10.2 or later returns them)")
                    })?
                }
            };
            let mut logprobs = finite(&lp.token_logprobs, "a sampled token")?;
            if logprobs.len() != tokens.len() {
                let problem = format!("{} log-probs for {} tokens", logprobs.len(), tokens.len());
                return Err(reply("a sampling request", problem));
            }
            tokens.truncate(len);
            logprobs.truncate(len);
            let finish =
                if tokens.last().is_some_and(|t| eos.contains(t)) { FinishReason::Eos } else { FinishReason::Length };
            Ok(Sample { tokens, logprobs, finish })
        })
        .collect()
}

/// A server's token text as it may appear in a message: at most 24 characters (quoted with
/// escapes by the messages' `{:?}`), so a hostile server cannot write pages into logs.
pub(crate) fn shown(t: &str) -> String {
    t.chars().take(24).collect()
}

/// Log-probs a server reported, each finite and not vLLM's -9999 (its stand-in for -inf).
fn finite(values: &[Option<f64>], what: &str) -> Result<Vec<f32>, RemoteError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Some(x) if x.is_finite() && *x > -9999.0 && *x <= 1e-6 => Ok(*x as f32),
            Some(x) => Err(reply("a request", format!("{what} {i} has log-prob {x}"))),
            None => Err(reply("a request", format!("{what} {i} has no log-prob"))),
        })
        .collect()
}

/// vLLM: each row's completion tokens' log-probs from its prompt log-probs.
fn prompt_logprobs(c: &Completion, rows: &[(&[u32], &[u32])]) -> Result<Vec<Vec<f32>>, RemoteError> {
    if c.choices.len() != rows.len() {
        return Err(reply("a scoring request", format!("{} choices for {} rows", c.choices.len(), rows.len())));
    }
    let no = || {
        RemoteError::Refused(
            "the model server returns no prompt log-probs (`prompt_logprobs`), so it cannot score completions".into(),
        )
    };
    c.choices
        .iter()
        .zip(rows)
        .map(|(choice, (p, comp))| {
            let pl = choice.prompt_logprobs.as_ref().ok_or_else(no)?;
            if pl.len() != p.len() + comp.len() {
                let problem = format!("prompt log-probs of {} positions for {} tokens", pl.len(), p.len() + comp.len());
                return Err(reply("a scoring request", problem));
            }
            let values: Vec<Option<f64>> = comp
                .iter()
                .enumerate()
                .map(|(k, id)| pl[p.len() + k].as_ref().and_then(|m| m.get(&id.to_string())).map(|l| l.logprob))
                .collect();
            finite(&values, "completion token")
        })
        .collect()
}

/// A text server's echo: the log-probs of the completion's tokens, found by character offset
/// (`text_offset`), which must fall on the prompt/completion boundary and cover exactly
/// `tokens` tokens, as the local tokenizer cut the completion.
fn echoed(c: &Completion, prompt: &str, completion: &str, tokens: usize) -> Result<Vec<f32>, RemoteError> {
    let what = "a scoring request (echo)";
    let lp = c.choices[0].logprobs.as_ref().ok_or_else(|| {
        RemoteError::Refused(
            "the model server returns no log-probs for an echoed prompt, so it cannot score completions".into(),
        )
    })?;
    let offsets = &lp.text_offset;
    if offsets.len() != lp.token_logprobs.len() || offsets.len() != lp.tokens.len() {
        let problem =
            format!("{} offsets, {} log-probs, {} tokens", offsets.len(), lp.token_logprobs.len(), lp.tokens.len());
        return Err(reply(what, problem));
    }
    let (start, end) = (prompt.chars().count(), prompt.chars().count() + completion.chars().count());
    let Some(k0) = offsets.iter().position(|&o| o >= start) else {
        return Err(reply(what, "the echo ends before the completion starts"));
    };
    if offsets[k0] != start {
        let piece = lp.tokens.get(k0.wrapping_sub(1)).map(|t| shown(t)).unwrap_or_default();
        return Err(reply(what, format!("the server's token {piece:?} spans the prompt/completion boundary")));
    }
    let k1 = k0 + tokens;
    let fits =
        k1 <= offsets.len() && (tokens == 0 || offsets[k1 - 1] < end) && (k1 == offsets.len() || offsets[k1] >= end);
    if !fits {
        let theirs = offsets[k0..].iter().filter(|&&o| o < end).count();
        // At most 16 of the server's tokens, each cut (`shown`): its texts go into logs.
        let pieces: Vec<String> = lp.tokens[k0..].iter().take(theirs.min(16)).map(|t| shown(t)).collect();
        let more = if theirs > 16 { " and more" } else { "" };
        return Err(RemoteError::Refused(format!(
            "the model server tokenises the completion {:?} into {theirs} tokens {pieces:?}{more}, the local tokenizer into {tokens}",
            shown(completion)
        )));
    }
    finite(&lp.token_logprobs[k0..k1], "completion token")
}

/// A [`Remote`] with its policy named (see [`Remote::serving`]).
pub struct Serving<'a> {
    remote: &'a Remote,
    policy: String,
}

impl ModelBackend for Serving<'_> {
    fn sample(
        &self,
        role: Role,
        job: &SampleJob<'_>,
        progress: &dyn Fn(usize, usize),
    ) -> apl_engine::model::Result<Vec<Sample>> {
        self.remote.sample_rows(role, &self.policy, job, progress).map_err(into_model)
    }

    fn score(
        &self,
        rows: &[(&[u32], &[u32])],
        _batch: usize,
        progress: &dyn Fn(usize, usize),
    ) -> apl_engine::model::Result<(Vec<f32>, Vec<f32>)> {
        let base = &self.remote.settings.model;
        let reference = self.remote.sums(base, rows, progress).map_err(into_model)?;
        // An untrained policy is the reference: asked once.
        let policy = if &self.policy == base {
            reference.clone()
        } else {
            self.remote.sums(&self.policy, rows, progress).map_err(into_model)?
        };
        Ok((policy, reference))
    }

    fn score_reference(
        &self,
        rows: &[(&[u32], &[u32])],
        _batch: usize,
        progress: &dyn Fn(usize, usize),
    ) -> apl_engine::model::Result<Vec<f32>> {
        self.remote.sums(&self.remote.settings.model, rows, progress).map_err(into_model)
    }
}

/// The model names a server lists (`GET /v1/models`).
fn parse_models(bytes: &[u8]) -> Result<Vec<String>, CallError> {
    #[derive(serde::Deserialize)]
    struct Models {
        data: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        id: String,
    }
    let m: Models = serde_json::from_slice(bytes).map_err(|_| CallError::Malformed {
        who: Who::Model,
        expected: "a model list",
        shape: crate::openai::shape(bytes),
    })?;
    Ok(m.data.into_iter().map(|e| e.id).collect())
}

fn into_model(e: RemoteError) -> ModelError {
    match e {
        RemoteError::Model(m) => m,
        other => ModelError::Backend(Box::new(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply vLLM 0.16.0 gave to `echo: true, logprobs: 5, max_tokens: 1` for "The step of
    /// boiling water is: " (posted in llama.cpp's pull request #15189, 2026-03-01; its
    /// top_logprobs left out here): the text-echo path finds the completion by character offset
    /// and returns its tokens' log-probs, the distribution before each token's.
    #[test]
    fn a_recorded_vllm_echo_is_read_at_the_completion() {
        let reply = br#"{"id":"cmpl-8c16f81d43846721","object":"text_completion","created":1772367069,
            "model":"Intel/Qwen3-Coder-Next-int4-AutoRound","choices":[{"index":0,"text":"The step of boiling water is: 1",
            "logprobs":{"text_offset":[0,3,8,11,19,25,28,29,30],
            "token_logprobs":[null,-8.818763732910156,-1.552642822265625,-13.55989933013916,-2.0115487575531006,-2.2331151962280273,-8.53701114654541,-1.2870503664016724,-0.41059786081314087],
            "tokens":["The"," step"," of"," boiling"," water"," is",":"," ","1"],"top_logprobs":null},
            "finish_reason":"length","stop_reason":null,"prompt_logprobs":null}],
            "usage":{"prompt_tokens":8,"total_tokens":9,"completion_tokens":1}}"#;
        let c = wire::parse(reply).unwrap();
        let lps = echoed(&c, "The step of", " boiling water is:", 4).unwrap();
        // The reply's f64 values, as f32.
        let want = [-13.55989933013916f64, -2.0115487575531006, -2.2331151962280273, -8.53701114654541];
        assert_eq!(lps, want.map(|x| x as f32).to_vec());
        // Cut inside " step": the boundary falls within a server token.
        let e = echoed(&c, "The ste", "p of", 2).unwrap_err().to_string();
        assert!(e.contains("spans the prompt/completion boundary"), "{e}");
        // Tokenised otherwise than here: three tokens where the server has four.
        let e = echoed(&c, "The step of", " boiling water is:", 3).unwrap_err().to_string();
        assert!(e.contains("into 4 tokens") && e.contains("the local tokenizer into 3"), "{e}");
    }

    /// A text echo from a hostile server: each token's text a long run of markup, more tokens
    /// than the local tokenizer has, and lists of different lengths. Nothing panics and what
    /// the server wrote reaches a message only cut (24 characters a token, 16 tokens).
    #[test]
    fn a_hostile_echo_is_refused_in_a_few_lines() {
        let long = "<script>alert(1)</script>".repeat(4000);
        let n = 200;
        let echo = |tokens: usize, offsets: usize, logprobs: usize| {
            json_reply(serde_json::json!({"choices": [{"index": 0, "text": "x", "logprobs": {
                "text_offset": (0..offsets).collect::<Vec<_>>(),
                "token_logprobs": vec![-1.0; logprobs],
                "tokens": vec![long.clone(); tokens],
            }}]}))
        };
        let prompt = "a";
        let completion = "b".repeat(n - 1);
        let e = echoed(&echo(n, n, n), prompt, &completion, 3).unwrap_err().to_string();
        assert!(e.contains("into 199 tokens") && e.contains("and more"), "{e}");
        assert!(e.len() < 1200 && e.matches("<script>").count() == 16, "{} bytes: {e}", e.len());
        // Token texts, offsets and log-probs that do not line up.
        for (t, o, l) in [(3, n, n), (n, 3, n), (n, n, 3), (0, 0, 0)] {
            let e = echoed(&echo(t, o, l), prompt, &completion, 3).unwrap_err().to_string();
            assert!(e.len() < 300, "{e}");
        }
        // Log-probs that are no log-probs.
        for bad in
            [serde_json::json!(0.5), serde_json::json!(-9999.0), serde_json::json!(1e308), serde_json::Value::Null]
        {
            let c = json_reply(serde_json::json!({"choices": [{"index": 0, "text": "ab", "logprobs": {
                "text_offset": [0, 1], "token_logprobs": [null, bad], "tokens": ["a", "b"]}}]}));
            let e = echoed(&c, "a", "b", 1).unwrap_err().to_string();
            assert!(e.contains("completion token 0 has"), "{e}");
        }
    }

    /// vLLM replies that do not answer the request: missing ids, ids and log-probs of
    /// different lengths, the wrong number of choices or positions.
    #[test]
    fn vllm_replies_that_do_not_fit_are_refused() {
        let sample = |choice: serde_json::Value, n: usize| {
            let c = json_reply(serde_json::json!({"choices": vec![choice; n]}));
            vllm_samples(c, &[2], &[0]).map(|_| ()).unwrap_err().to_string()
        };
        let ok = serde_json::json!({"index": 0, "token_ids": [5, 6], "logprobs": {"token_logprobs": [-1.0, -2.0]}});
        assert!(sample(ok.clone(), 2).contains("2 choices for 1 rows"));
        let short = serde_json::json!({"index": 0, "token_ids": [5, 6, 7], "logprobs": {"token_logprobs": [-1.0]}});
        assert!(sample(short, 1).contains("1 log-probs for 3 tokens"));
        let texts =
            serde_json::json!({"index": 0, "logprobs": {"tokens": ["<b>", "x"], "token_logprobs": [-1.0, -2.0]}});
        assert!(sample(texts, 1).contains("no token ids"));
        let c = json_reply(
            serde_json::json!({"choices": [{"index": 0, "prompt_logprobs": [null, {"5": {"logprob": -1.0}}]}]}),
        );
        let e = prompt_logprobs(&c, &[(&[1, 2], &[5])]).unwrap_err().to_string();
        assert!(e.contains("prompt log-probs of 2 positions for 3 tokens"), "{e}");
        // The completion's token missing from its position's map.
        let c = json_reply(
            serde_json::json!({"choices": [{"index": 0, "prompt_logprobs": [null, {"9": {"logprob": -1.0}}]}]}),
        );
        let e = prompt_logprobs(&c, &[(&[1], &[5])]).unwrap_err().to_string();
        assert!(e.contains("completion token 0 has no log-prob"), "{e}");
    }

    fn json_reply(v: serde_json::Value) -> Completion {
        wire::parse(v.to_string().as_bytes()).unwrap()
    }
}
