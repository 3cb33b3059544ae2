//! Project set-up: prompts in (IMDB pool or a file) and the list of them (disable one that
//! should not be used, delete one no pair uses), and the configuration: the fields people
//! change most as form controls (acquisition and its parameters, labeller, judge, overlap,
//! gold rate, guidelines), everything else in the full JSON below them. Both edit one JSON
//! value, so they never disagree. Each control carries the rule its value must meet, so a
//! wrong value is named next to its field as it is typed, and a server refusal naming a field
//! lands there too; the judge's controls appear only when a judge is used. Edits not saved are
//! marked, and leaving the tab or the page with them asks first (`Ctx::unsaved`).

use apl_shared::settings::{JudgeOrder, JudgeTask, PairLengths};
use apl_shared::{Acquisition, Labeller, ProjectConfig, PromptFormat, PromptInfo, Split, Vocabulary};
use leptos::prelude::*;
use leptos::task::spawn_local;
use serde_json::Value;

use super::{Ctx, shown};
use crate::api;
use crate::components::options;
use crate::components::table::TableWrap;
use crate::util::when;

#[component]
pub fn Setup() -> impl IntoView {
    view! {
        <Prompts/>
        <PromptList/>
        <Config/>
    }
}

#[component]
fn Prompts() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let train = RwSignal::new("2000".to_string());
    let eval = RwSignal::new("128".to_string());
    let split = RwSignal::new(Split::Train);
    let message = RwSignal::new(None::<Result<String, String>>);
    let file_input = NodeRef::<leptos::html::Input>::new();
    let imdb = move |e: leptos::ev::SubmitEvent| {
        e.prevent_default();
        let (t, v) = (train.get_untracked().parse().unwrap_or(0), eval.get_untracked().parse().unwrap_or(0));
        let id = ctx.id();
        spawn_local(async move {
            let r = api::import_imdb(&id, t, v).await;
            message.set(Some(r.map(|r| format!("Imported {} IMDB prompts.", r.imported)).map_err(|e| e.message)));
            ctx.changed();
        });
    };
    let upload = move |e: leptos::ev::SubmitEvent| {
        e.prevent_default();
        let Some(input) = file_input.get_untracked() else { return };
        let Some(file) = input.files().and_then(|f| f.get(0)) else {
            message.set(Some(Err("choose a file first".into())));
            return;
        };
        let format = if file.name().to_lowercase().ends_with(".csv") { PromptFormat::Csv } else { PromptFormat::Jsonl };
        let (id, sp) = (ctx.id(), split.get_untracked());
        spawn_local(async move {
            let r = api::import_prompts(&id, format, sp, file).await;
            message.set(Some(r.map(|r| format!("Imported {} prompts.", r.imported)).map_err(|e| e.message)));
            ctx.changed();
        });
    };
    view! {
        <section class="card">
            <h2>"Prompts"</h2>
            <form class="row" on:submit=imdb>
                <label>"IMDB training prompts " <input type="number" min="0" name="imdb-train" prop:value=move || train.get()
                    on:input=move |e| train.set(event_target_value(&e))/></label>
                <label>"held-out " <input type="number" min="0" name="imdb-eval" prop:value=move || eval.get()
                    on:input=move |e| eval.set(event_target_value(&e))/></label>
                <button type="submit">"Import from IMDB"</button>
            </form>
            <form class="row" on:submit=upload>
                <label>"Or a file (JSONL or CSV: prompt, optional reference) "
                    <input type="file" accept=".jsonl,.json,.csv" node_ref=file_input/></label>
                <label>"into "
                    <select prop:value=move || split.get().name()
                        on:change=move |e| if let Ok(sp) = event_target_value(&e).parse() { split.set(sp) }>
                        {options(Split::ALL.iter().copied(), split_label)}
                    </select>
                </label>
                <button type="submit">"Upload"</button>
            </form>
            {move || message.get().map(|m| match m {
                Ok(t) => view! { <p class="ok" role="status">{t}</p> }.into_any(),
                Err(e) => view! { <p class="error" role="alert">{e}</p> }.into_any(),
            })}
        </section>
    }
}

/// Prompts per page of the list.
const PAGE: usize = 50;

/// A page of the project's prompts with what became of each; a prompt can be disabled (no
/// round draws or evaluates it again; its pairs stay) and one without pairs deleted.
#[component]
fn PromptList() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let split = RwSignal::new(Split::Train);
    let offset = RwSignal::new(0usize);
    let error = RwSignal::new(None::<String>);
    let prompts = ctx.resource(move |id| {
        let (sp, off) = (split.get(), offset.get());
        async move { api::prompts(&id, sp, off, PAGE).await }
    });
    let act = move |f: std::pin::Pin<Box<dyn std::future::Future<Output = api::Res<()>>>>| {
        spawn_local(async move {
            match f.await {
                Ok(()) => {
                    error.set(None);
                    ctx.changed();
                }
                Err(e) => error.set(Some(e.message)),
            }
        });
    };
    view! {
        <section>
            <h2>"Prompt list"</h2>
            <div class="row">
                <label>"Show "
                    <select name="prompt-list-split" prop:value=move || split.get().name()
                        on:change=move |e| if let Ok(sp) = event_target_value(&e).parse() { split.set(sp); offset.set(0) }>
                        {options(Split::ALL.iter().copied(), split_label)}
                    </select>
                </label>
                <button class="small" disabled=move || offset.get() == 0
                    on:click=move |_| offset.update(|o| *o = o.saturating_sub(PAGE))>"Previous"</button>
                <span class="muted">{move || format!("from {}", offset.get() + 1)}</span>
                <button class="small" on:click=move |_| offset.update(|o| *o += PAGE)>"Next"</button>
            </div>
            {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
            {move || shown(prompts.get(), move |ps: Vec<PromptInfo>| {
                if ps.is_empty() {
                    return view! { <p class="muted">"No prompts here."</p> }.into_any();
                }
                view! {
                    <TableWrap label="Prompts">
                    <table class="prompt-list">
                        <thead><tr>
                            <th>"Prompt"</th><th>"Source"</th><th>"Round"</th><th>"Pairs"</th><th>"Added"</th><th></th>
                        </tr></thead>
                        <tbody>
                            {ps.into_iter().map(|p| {
                                let (toggle_id, delete_id, disabled) = (p.id.clone(), p.id.clone(), p.disabled);
                                let toggle = move |_| {
                                    let (id, pid) = (ctx.id(), toggle_id.clone());
                                    act(Box::pin(async move { api::set_prompt_disabled(&id, &pid, !disabled).await }));
                                };
                                let delete = move |_| {
                                    let (id, pid) = (ctx.id(), delete_id.clone());
                                    act(Box::pin(async move { api::delete_prompt(&id, &pid).await }));
                                };
                                view! {
                                    <tr class:disabled=p.disabled>
                                        <td class="prompt-text" title=p.text.clone()>{p.text.clone()}</td>
                                        <td>{p.source.clone()}</td>
                                        <td>{p.used_round.map(|r| r.to_string()).unwrap_or_else(|| "–".into())}</td>
                                        <td>{p.pairs}</td>
                                        <td>{when(p.created_at)}</td>
                                        <td>
                                            <button class="small" on:click=toggle>{if p.disabled { "Enable" } else { "Disable" }}</button>
                                            {(p.pairs == 0).then(|| view! {
                                                <button class="small" on:click=delete>"Delete"</button>
                                            })}
                                        </td>
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table>
                    </TableWrap>
                }.into_any()
            })}
        </section>
    }
}

/// What the prompt-file form calls each split.
fn split_label(split: Split) -> &'static str {
    match split {
        Split::Train => "training prompts",
        Split::Eval => "held-out prompts",
    }
}

/// A choice list: (the value's name in the JSON, its label).
type Choices = Vec<(String, &'static str)>;

/// How a form control edits the JSON.
#[derive(Clone, Copy)]
enum Kind {
    Number,
    Text,
    /// A choice among the values the function lists.
    Choice(fn() -> Choices),
    /// On or off.
    Switch,
}

/// The lower end of a number's range.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Low {
    AtLeast(f64),
    Above(f64),
}

/// What a field's value must be: checked in the form as it is typed, so a wrong value is named
/// next to its field in plain words (the server's own check stays the authority).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    /// Anything the control can produce.
    Any,
    /// A whole number from `min`, up to `max` when there is one.
    Whole { min: i64, max: Option<i64> },
    /// A number in a range.
    Real { low: Low, high: Option<f64> },
    /// An http:// or https:// address; required.
    Url,
    /// Some text.
    Required,
    /// The name of an environment variable holding an API key, or nothing.
    KeyVar,
}

fn number_text(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 { format!("{}", x as i64) } else { x.to_string() }
}

impl Rule {
    /// The problem with `v`, in words for the person filling the form; none when it is fine.
    fn problem(self, v: &Value) -> Option<String> {
        let text = v.as_str().map(str::trim).unwrap_or_default();
        match self {
            Rule::Any => None,
            Rule::Whole { min, max } => {
                let expected = match max {
                    Some(max) => format!("a whole number from {min} to {max}"),
                    None => format!("a whole number, {min} or more"),
                };
                let ok = v.as_i64().is_some_and(|n| n >= min && max.is_none_or(|m| n <= m));
                (!ok).then(|| format!("Enter {expected}."))
            }
            Rule::Real { low, high } => {
                let expected = match (low, high) {
                    (Low::AtLeast(l), Some(h)) => format!("a number from {} to {}", number_text(l), number_text(h)),
                    (Low::Above(l), Some(h)) => {
                        format!("a number above {} and at most {}", number_text(l), number_text(h))
                    }
                    (Low::AtLeast(l), None) => format!("a number, {} or more", number_text(l)),
                    (Low::Above(l), None) => format!("a number above {}", number_text(l)),
                };
                let ok = v.as_f64().is_some_and(|x| {
                    x.is_finite()
                        && match low {
                            Low::AtLeast(l) => x >= l,
                            Low::Above(l) => x > l,
                        }
                        && high.is_none_or(|h| x <= h)
                });
                (!ok).then(|| format!("Enter {expected}."))
            }
            Rule::Url if text.is_empty() => Some(
                "Set the judge's URL: its OpenAI-compatible API up to the version, e.g. https://api.openai.com/v1."
                    .into(),
            ),
            Rule::Url => (!(text.starts_with("http://") || text.starts_with("https://")))
                .then(|| "Enter an address starting with http:// or https://.".into()),
            Rule::Required => text.is_empty().then(|| "This cannot be empty.".into()),
            Rule::KeyVar => {
                let ok = text.is_empty()
                    || (text.ends_with("API_KEY")
                        && text.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'));
                (!ok).then(|| {
                    "Enter the name of a variable in capitals ending in API_KEY (e.g. OPENAI_API_KEY), or leave it \
                     empty for a server without a key."
                        .into()
                })
            }
        }
    }
}

/// When a field is part of the form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shown {
    Always,
    /// Some labeller or the win-rate judge is an LLM judge (the API's or the local one).
    AnyJudge,
    /// The API judge is used (its address, model and key).
    ApiJudge,
}

impl Shown {
    fn holds(self, cfg: &Value) -> bool {
        let uses = |l: Labeller| {
            [&["loop_settings", "labeller"][..], &["loop_settings", "eval", "judge"]]
                .iter()
                .any(|p| at(cfg, p).as_str() == Some(l.name()))
        };
        match self {
            Shown::Always => true,
            Shown::AnyJudge => uses(Labeller::Judge) || uses(Labeller::LocalJudge),
            Shown::ApiJudge => uses(Labeller::Judge),
        }
    }
}

/// The form's sections, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Acquisition,
    Labelling,
    Training,
    Evaluation,
    Judge,
}

impl Section {
    const ALL: [Section; 5] =
        [Section::Acquisition, Section::Labelling, Section::Training, Section::Evaluation, Section::Judge];

    fn title(self) -> &'static str {
        match self {
            Section::Acquisition => "Acquisition",
            Section::Labelling => "Labelling",
            Section::Training => "Training",
            Section::Evaluation => "Evaluation",
            Section::Judge => "Judge",
        }
    }

    /// The judge's settings matter only where a judge is used.
    fn shown(self) -> Shown {
        match self {
            Section::Judge => Shown::AnyJudge,
            _ => Shown::Always,
        }
    }
}

fn vocabulary<T: Vocabulary>(items: impl Iterator<Item = T>, label: fn(T) -> &'static str) -> Choices {
    items.map(|v| (v.name().to_string(), label(v))).collect()
}

fn acquisitions() -> Choices {
    vocabulary(Acquisition::ALL.iter().copied(), Acquisition::describe)
}

fn labellers() -> Choices {
    vocabulary(Labeller::ALL.iter().copied(), Labeller::describe)
}

/// Win-rates need an automatic judge.
fn eval_judges() -> Choices {
    vocabulary(Labeller::ALL.iter().copied().filter(|l| l.is_automatic()), Labeller::describe)
}

fn judge_tasks() -> Choices {
    vocabulary(JudgeTask::ALL.iter().copied(), JudgeTask::describe)
}

fn pair_lengths() -> Choices {
    vocabulary(PairLengths::ALL.iter().copied(), PairLengths::describe)
}

fn orders() -> Choices {
    vocabulary(JudgeOrder::ALL.iter().copied(), JudgeOrder::describe)
}

/// A form control of one setting.
struct Field {
    section: Section,
    label: &'static str,
    /// The JSON path from the config root; joined with dots, the name the server's errors use.
    path: &'static [&'static str],
    kind: Kind,
    help: &'static str,
    rule: Rule,
    shown: Shown,
}

const fn field(
    section: Section,
    label: &'static str,
    path: &'static [&'static str],
    kind: Kind,
    help: &'static str,
    rule: Rule,
) -> Field {
    Field { section, label, path, kind, help, rule, shown: Shown::Always }
}

const fn whole(min: i64, max: Option<i64>) -> Rule {
    Rule::Whole { min, max }
}

const ABOVE_ZERO: Rule = Rule::Real { low: Low::Above(0.0), high: None };

const FIELDS: &[Field] = &[
    field(
        Section::Acquisition,
        "Function",
        &["loop_settings", "acquisition"],
        Kind::Choice(acquisitions),
        "",
        Rule::Any,
    ),
    field(
        Section::Acquisition,
        "Pairs per round (m)",
        &["loop_settings", "pairs_per_round"],
        Kind::Number,
        "",
        whole(1, Some(100_000)),
    ),
    field(
        Section::Acquisition,
        "Over-generation (certainty)",
        &["loop_settings", "acquire", "over_generate"],
        Kind::Number,
        "candidates scored per pair kept",
        whole(1, None),
    ),
    field(
        Section::Acquisition,
        "Entropy over-sampling",
        &["loop_settings", "acquire", "entropy_over_sample"],
        Kind::Number,
        "prompts scored per prompt kept",
        whole(1, None),
    ),
    field(
        Section::Acquisition,
        "Entropy samples",
        &["loop_settings", "acquire", "entropy_samples"],
        Kind::Number,
        "per prompt",
        whole(1, None),
    ),
    field(
        Section::Acquisition,
        "Pair temperature",
        &["loop_settings", "acquire", "pair_temperature"],
        Kind::Number,
        "",
        ABOVE_ZERO,
    ),
    field(
        Section::Acquisition,
        "Pair lengths",
        &["loop_settings", "acquire", "pair_lengths"],
        Kind::Choice(pair_lengths),
        "completion lengths drawn from the completion range",
        Rule::Any,
    ),
    field(Section::Labelling, "Labeller", &["loop_settings", "labeller"], Kind::Choice(labellers), "", Rule::Any),
    field(
        Section::Labelling,
        "Raters per pair (overlap)",
        &["rating", "overlap"],
        Kind::Number,
        "",
        whole(1, Some(50)),
    ),
    field(
        Section::Labelling,
        "Gold rate",
        &["rating", "gold_rate"],
        Kind::Number,
        "share of gold pairs, 0 to 1",
        Rule::Real { low: Low::AtLeast(0.0), high: Some(1.0) },
    ),
    field(
        Section::Labelling,
        "Lease (seconds)",
        &["rating", "lease_seconds"],
        Kind::Number,
        "10 s to a week",
        whole(10, Some(7 * 24 * 3600)),
    ),
    field(
        Section::Labelling,
        "Auto-continue",
        &["rating", "auto_continue", "enabled"],
        Kind::Switch,
        "with raters: once a round is labelled, train, evaluate and acquire the next one by itself",
        Rule::Any,
    ),
    field(
        Section::Labelling,
        "Continue when labelled",
        &["rating", "auto_continue", "fraction"],
        Kind::Number,
        "share of the round's pairs with all their votes, above 0 to 1",
        Rule::Real { low: Low::Above(0.0), high: Some(1.0) },
    ),
    field(Section::Training, "beta", &["loop_settings", "train", "beta"], Kind::Number, "DPO temperature", ABOVE_ZERO),
    field(Section::Training, "Epochs", &["loop_settings", "train", "epochs"], Kind::Number, "", whole(1, None)),
    field(Section::Training, "Learning rate", &["loop_settings", "train", "adam", "lr"], Kind::Number, "", ABOVE_ZERO),
    field(
        Section::Evaluation,
        "Win-rate judge",
        &["loop_settings", "eval", "judge"],
        Kind::Choice(eval_judges),
        "",
        Rule::Any,
    ),
    field(
        Section::Evaluation,
        "Held-out prompts",
        &["loop_settings", "eval", "prompts"],
        Kind::Number,
        "",
        whole(1, None),
    ),
    Field {
        shown: Shown::ApiJudge,
        ..field(
            Section::Judge,
            "API base URL",
            &["loop_settings", "judge", "base_url"],
            Kind::Text,
            "OpenAI-compatible, up to the version: …/v1",
            Rule::Url,
        )
    },
    Field {
        shown: Shown::ApiJudge,
        ..field(Section::Judge, "Model", &["loop_settings", "judge", "model"], Kind::Text, "", Rule::Required)
    },
    Field {
        shown: Shown::ApiJudge,
        ..field(
            Section::Judge,
            "API key variable",
            &["loop_settings", "judge", "api_key_env"],
            Kind::Text,
            "name of the server's environment variable, e.g. OPENAI_API_KEY",
            Rule::KeyVar,
        )
    },
    field(Section::Judge, "Task", &["loop_settings", "judge", "task"], Kind::Choice(judge_tasks), "", Rule::Any),
    field(
        Section::Judge,
        "Temperature",
        &["loop_settings", "judge", "temperature"],
        Kind::Number,
        "",
        Rule::Real { low: Low::AtLeast(0.0), high: Some(2.0) },
    ),
    field(Section::Judge, "Order", &["loop_settings", "judge", "order"], Kind::Choice(orders), "", Rule::Any),
];

impl Field {
    /// The field's name in the form and in the server's errors (`loop_settings.judge.base_url`).
    fn name(&self) -> String {
        self.path.join(".")
    }

    /// Part of the form for this configuration.
    fn shown_in(&self, cfg: &Value) -> bool {
        self.section.shown().holds(cfg) && self.shown.holds(cfg)
    }
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

fn set_at(v: &mut Value, path: &[&str], x: Value) {
    let mut cur = v;
    for k in path {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        cur = cur.as_object_mut().expect("object").entry(k.to_string()).or_insert(Value::Null);
    }
    *cur = x;
}

fn shown_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The problems of the fields shown for `cfg`: (field name, what is wrong), in form order.
fn problems(cfg: &Value) -> Vec<(String, String)> {
    FIELDS
        .iter()
        .filter(|f| f.shown_in(cfg))
        .filter_map(|f| f.rule.problem(at(cfg, f.path)).map(|p| (f.name(), p)))
        .collect()
}

/// A server refusal that names a field of the form (`rating.overlap: must be 1 to 50`): the
/// field's name and the problem, to show next to it. Others are shown under the form.
fn field_error(message: &str) -> Option<(String, String)> {
    let (name, problem) = message.split_once(": ")?;
    FIELDS.iter().any(|f| f.name() == name).then(|| {
        let mut p = problem.trim().to_string();
        if let Some(first) = p.get(..1) {
            p = format!("{}{}", first.to_uppercase(), &p[1..]);
        }
        if !p.ends_with('.') {
            p.push('.');
        }
        (name.to_string(), p)
    })
}

/// The element id of a field's message (for `aria-describedby`).
fn error_id(name: &str) -> String {
    format!("{}-error", name.replace('.', "-"))
}

/// Moves the keyboard to the first field marked wrong.
fn focus_first_invalid() {
    use wasm_bindgen::JsCast;
    let el = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.query_selector("form.config [aria-invalid=true]").ok().flatten());
    if let Some(el) = el.and_then(|e| e.dyn_into::<web_sys::HtmlElement>().ok()) {
        let _ = el.focus();
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

#[component]
fn Config() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let cfg = RwSignal::new(None::<Value>);
    let raw = RwSignal::new(String::new());
    // The JSON as last loaded or saved: the form has unsaved edits while `raw` differs.
    let saved = RwSignal::new(String::new());
    let message = RwSignal::new(None::<Result<String, String>>);
    // A server refusal naming a field of the form: (field name, problem).
    let server_error = RwSignal::new(None::<(String, String)>);
    // The JSON editor's own problem (not JSON, or a value of the wrong type).
    let json_error = RwSignal::new(None::<String>);
    // The form shows `config` as stored: nothing unsaved.
    let show_stored = move |config: &ProjectConfig| {
        let v = serde_json::to_value(config).unwrap_or(Value::Null);
        let text = pretty(&v);
        raw.set(text.clone());
        saved.set(text);
        cfg.set(Some(v));
    };
    Effect::new(move |_| {
        if let Some(d) = ctx.detail.get()
            && cfg.get_untracked().is_none()
        {
            show_stored(&d.project.config);
        }
    });
    let dirty = Memo::new(move |_| cfg.with(Option::is_some) && raw.with(|r| saved.with(|s| r != s)));
    Effect::new(move |_| {
        let d = dirty.get();
        if ctx.unsaved.get_untracked() != d {
            ctx.unsaved.set(d);
        }
    });
    // Leaving the page (reload, another address, closing the tab) with edits not saved asks first.
    let leaving = window_event_listener(leptos::ev::beforeunload, move |e| {
        if dirty.get_untracked() {
            e.prevent_default();
            e.set_return_value("unsaved");
        }
    });
    on_cleanup(move || {
        leaving.remove();
        ctx.unsaved.set(false);
    });
    let found = Memo::new(move |_| cfg.with(|c| c.as_ref().map(problems).unwrap_or_default()));
    let problem_of = move |name: &str| {
        found
            .with(|ps| ps.iter().find(|(n, _)| n == name).map(|(_, p)| p.clone()))
            .or_else(|| server_error.with(|e| e.as_ref().filter(|(n, _)| n == name).map(|(_, p)| p.clone())))
    };
    let edit = move |path: &'static [&'static str], kind: Kind, text: String| {
        server_error.set(None);
        message.set(None);
        cfg.update(|c| {
            if let Some(c) = c {
                let x = match kind {
                    Kind::Number => match text.trim().parse::<f64>() {
                        Ok(n) if n.fract() == 0.0 && n.abs() < 1e15 && !text.contains(['.', 'e', 'E']) => {
                            Value::from(n as i64)
                        }
                        Ok(n) => Value::from(n),
                        Err(_) => Value::String(text),
                    },
                    Kind::Text if text.trim().is_empty() && path.last() == Some(&"api_key_env") => Value::Null,
                    Kind::Switch => Value::Bool(text == "true"),
                    _ => Value::String(text),
                };
                set_at(c, path, x);
                raw.set(pretty(c));
            }
        });
    };
    let save = move |e: leptos::ev::SubmitEvent| {
        e.prevent_default();
        server_error.set(None);
        if !found.with(Vec::is_empty) {
            message.set(Some(Err("Not saved: correct the fields marked above.".into())));
            focus_first_invalid();
            return;
        }
        let c = match serde_json::from_str::<ProjectConfig>(&raw.get_untracked()) {
            Ok(c) => c,
            Err(e) => {
                let e = format!("Not saved: the settings in \"Every setting (JSON)\" are not valid: {e}.");
                json_error.set(Some(e.clone()));
                message.set(Some(Err(e)));
                return;
            }
        };
        json_error.set(None);
        let id = ctx.id();
        spawn_local(async move {
            match api::set_config(&id, &c).await.map_err(|e| e.message) {
                Ok(p) => {
                    show_stored(&p.config);
                    message.set(Some(Ok("Saved.".into())));
                    ctx.changed();
                }
                Err(e) => match field_error(&e) {
                    Some(at_field) => {
                        server_error.set(Some(at_field));
                        message.set(Some(Err("Not saved: correct the field marked above.".into())));
                        focus_first_invalid();
                    }
                    None => message.set(Some(Err(format!("Not saved: {e}")))),
                },
            }
        });
    };
    view! {
        <section class="card">
            <h2>"Configuration"</h2>
            <p class="muted">{move || ctx.detail.get().map(|d| format!(
                "Task: {}. The model is the server's (see the start page); the judge's API key is never stored here, only the name of the variable holding it.",
                d.project.task))}</p>
            <form class="config" on:submit=save novalidate>
                {Section::ALL.into_iter().map(|sec| view! {
                    <fieldset name=format!("section-{}", sec.title().to_lowercase())
                        hidden=move || !cfg.with(|c| c.as_ref().is_some_and(|c| sec.shown().holds(c)))>
                        <legend>{sec.title()}</legend>
                        {FIELDS.iter().filter(|f| f.section == sec).map(|f| {
                            let (path, kind, label, help, shown) = (f.path, f.kind, f.label, f.help, f.shown);
                            let value = move || cfg.get().map(|c| shown_value(at(&c, path))).unwrap_or_default();
                            let name = f.name();
                            let err_id = error_id(&name);
                            let problem = {
                                let name = name.clone();
                                Memo::new(move |_| problem_of(&name))
                            };
                            let invalid = move || problem.get().is_some().to_string();
                            let described = if help.is_empty() { err_id.clone() } else { format!("{err_id} {err_id}-help") };
                            let control = match kind {
                                Kind::Choice(opts) => view! {
                                    <select name=name.clone() prop:value=value
                                        on:change=move |e| edit(path, kind, event_target_value(&e))>
                                        {opts().into_iter().map(|(v, l)| view! { <option value=v>{l}</option> }).collect_view()}
                                    </select>
                                }.into_any(),
                                Kind::Switch => view! {
                                    <select name=name.clone() prop:value=value
                                        on:change=move |e| edit(path, kind, event_target_value(&e))>
                                        <option value="true">"on"</option>
                                        <option value="false">"off"</option>
                                    </select>
                                }.into_any(),
                                Kind::Number => view! {
                                    <input type="text" inputmode="decimal" name=name.clone() prop:value=value
                                        aria-invalid=invalid aria-describedby=described.clone()
                                        on:change=move |e| edit(path, kind, event_target_value(&e))/>
                                }.into_any(),
                                Kind::Text => view! {
                                    <input type="text" name=name.clone() prop:value=value
                                        aria-invalid=invalid aria-describedby=described.clone()
                                        on:change=move |e| edit(path, kind, event_target_value(&e))/>
                                }.into_any(),
                            };
                            let help_id = format!("{err_id}-help");
                            view! {
                                <label class="field" class:invalid=move || problem.get().is_some()
                                    hidden=move || !cfg.with(|c| c.as_ref().is_some_and(|c| shown.holds(c)))>
                                    <span>{label}</span>
                                    {control}
                                    {(!help.is_empty()).then(|| view! { <small class="muted" id=help_id.clone()>{help}</small> })}
                                    <small class="field-error" id=err_id.clone()>{move || problem.get()}</small>
                                </label>
                            }
                        }).collect_view()}
                    </fieldset>
                }).collect_view()}
                <label class="field full-width">
                    <span>"Guidelines for raters"</span>
                    <textarea name="rating.guidelines" rows="4" prop:value=move || cfg.get().map(|c| shown_value(at(&c, &["rating", "guidelines"]))).unwrap_or_default()
                        on:change=move |e| edit(&["rating", "guidelines"], Kind::Text, event_target_value(&e))></textarea>
                </label>
                <details prop:open=move || json_error.get().is_some()>
                    <summary>"Every setting (JSON)"</summary>
                    <textarea class="json" rows="24" spellcheck="false" prop:value=move || raw.get()
                        aria-label="Every setting (JSON)" aria-describedby="config-json-error"
                        aria-invalid=move || json_error.get().is_some().to_string()
                        on:input=move |e| raw.set(event_target_value(&e))
                        on:change=move |e| {
                            json_error.set(None);
                            server_error.set(None);
                            match serde_json::from_str::<Value>(&event_target_value(&e)) {
                                Ok(v) => cfg.set(Some(v)),
                                Err(err) => json_error.set(Some(format!("This is not valid JSON: {err}."))),
                            }
                        }></textarea>
                    <small class="field-error" id="config-json-error">{move || json_error.get()}</small>
                </details>
                <div class="row">
                    <button class="primary" type="submit">"Save configuration"</button>
                    {move || dirty.get().then(|| view! { <span class="unsaved-note" data-testid="unsaved">"Changes not saved yet"</span> })}
                </div>
            </form>
            {move || message.get().map(|m| match m {
                Ok(t) => view! { <p class="ok" role="status">{t}</p> }.into_any(),
                Err(e) => view! { <p class="error" role="alert">{e}</p> }.into_any(),
            })}
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every form control names a setting of the typed configuration, of the kind the control
    /// edits, and every choice it offers is a value the configuration reads back unchanged.
    #[test]
    fn fields_edit_the_typed_config() {
        let mut base = serde_json::to_value(ProjectConfig::default()).unwrap();
        // The API judge's fields are text even when unset.
        set_at(&mut base, &["loop_settings", "judge", "base_url"], Value::from("https://api.openai.com/v1"));
        for f in FIELDS {
            let (label, path, kind) = (f.label, f.path, f.kind);
            let current = at(&base, path);
            match kind {
                Kind::Number => assert!(current.is_number(), "{label}: {path:?} is {current}"),
                Kind::Text | Kind::Choice(_) => assert!(current.is_string(), "{label}: {path:?} is {current}"),
                Kind::Switch => {
                    assert!(current.is_boolean(), "{label}: {path:?} is {current}");
                    for on in [true, false] {
                        let mut edited = base.clone();
                        set_at(&mut edited, path, Value::Bool(on));
                        let typed: ProjectConfig = serde_json::from_value(edited).unwrap();
                        assert_eq!(at(&serde_json::to_value(typed).unwrap(), path), &Value::Bool(on), "{label}");
                    }
                }
            }
            // The defaults pass the form's own checks.
            assert_eq!(f.rule.problem(current), None, "{label}");
            let Kind::Choice(list) = kind else { continue };
            let choices = list();
            assert!(choices.iter().any(|(v, _)| v == current.as_str().unwrap()), "{label}: the default is offered");
            for (value, _) in choices {
                let mut edited = base.clone();
                set_at(&mut edited, path, Value::String(value.clone()));
                let typed: ProjectConfig =
                    serde_json::from_value(edited).unwrap_or_else(|e| panic!("{label} = {value}: {e}"));
                assert_eq!(shown_value(at(&serde_json::to_value(&typed).unwrap(), path)), value);
            }
        }
    }

    #[test]
    fn choice_lists_follow_the_vocabulary() {
        assert_eq!(acquisitions().len(), Acquisition::ALL.len());
        assert_eq!(labellers().len(), Labeller::ALL.len());
        // Win-rates need an automatic judge: every labeller but the raters.
        let judges = eval_judges();
        assert_eq!(judges.len(), Labeller::ALL.len() - 1);
        assert!(judges.iter().all(|(v, _)| v.parse::<Labeller>().unwrap().is_automatic()));
        assert!(judge_tasks().iter().chain(&orders()).all(|(v, _)| !v.is_empty()));
    }

    /// The judge's section appears only when a judge is used; its address, model and key only
    /// for the API judge, whose missing address is then named in plain words.
    #[test]
    fn the_judge_section_follows_the_labellers() {
        let mut cfg = serde_json::to_value(ProjectConfig::default()).unwrap();
        let judge_fields = |cfg: &Value| {
            FIELDS
                .iter()
                .filter(|f| f.section == Section::Judge && f.shown_in(cfg))
                .map(|f| f.label)
                .collect::<Vec<_>>()
        };
        assert!(judge_fields(&cfg).is_empty(), "raters and the sentiment oracle need no judge");
        assert!(problems(&cfg).is_empty(), "{:?}", problems(&cfg));
        set_at(&mut cfg, &["loop_settings", "eval", "judge"], Value::from("local_judge"));
        assert_eq!(judge_fields(&cfg), ["Task", "Temperature", "Order"], "the local judge has no address");
        assert!(problems(&cfg).is_empty());
        set_at(&mut cfg, &["loop_settings", "labeller"], Value::from("judge"));
        assert_eq!(judge_fields(&cfg).len(), 6);
        let p = problems(&cfg);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "loop_settings.judge.base_url");
        assert!(p[0].1.starts_with("Set the judge's URL"), "{}", p[0].1);
        set_at(&mut cfg, &["loop_settings", "judge", "base_url"], Value::from("https://api.openai.com/v1"));
        assert!(problems(&cfg).is_empty());
    }

    /// Values the server would refuse, or could not read ("expected usize"), are named at
    /// their field in plain words.
    #[test]
    fn wrong_values_are_named_at_their_field() {
        let mut cfg = serde_json::to_value(ProjectConfig::default()).unwrap();
        set_at(&mut cfg, &["loop_settings", "pairs_per_round"], Value::from("abc"));
        set_at(&mut cfg, &["rating", "gold_rate"], Value::from(1.5));
        set_at(&mut cfg, &["rating", "auto_continue", "fraction"], Value::from(0));
        set_at(&mut cfg, &["loop_settings", "train", "epochs"], Value::from(2.5));
        let p: std::collections::HashMap<String, String> = problems(&cfg).into_iter().collect();
        assert_eq!(p.len(), 4, "{p:?}");
        assert_eq!(p["loop_settings.pairs_per_round"], "Enter a whole number from 1 to 100000.");
        assert_eq!(p["rating.gold_rate"], "Enter a number from 0 to 1.");
        assert_eq!(p["rating.auto_continue.fraction"], "Enter a number above 0 and at most 1.");
        assert_eq!(p["loop_settings.train.epochs"], "Enter a whole number, 1 or more.");
        let key = Rule::KeyVar;
        assert_eq!(key.problem(&Value::Null), None);
        assert_eq!(key.problem(&Value::from("OPENAI_API_KEY")), None);
        assert!(key.problem(&Value::from("DATABASE_URL")).is_some());
        assert!(Rule::Url.problem(&Value::from("ftp://x")).unwrap().contains("http://"));
        assert_eq!(Rule::Required.problem(&Value::from(" ")).as_deref(), Some("This cannot be empty."));
    }

    /// The server's refusals name the field by the same path the form uses.
    #[test]
    fn server_errors_find_their_field() {
        assert_eq!(
            field_error("rating.overlap: must be 1 to 50"),
            Some(("rating.overlap".into(), "Must be 1 to 50.".into()))
        );
        let (name, p) = field_error("loop_settings.judge.base_url: \"ftp://x\" is not an http:// or https:// address")
            .expect("a form field");
        assert_eq!(
            (name.as_str(), error_id(&name)),
            ("loop_settings.judge.base_url", "loop_settings-judge-base_url-error".into())
        );
        assert!(p.starts_with("\"ftp://x\" is not"), "{p}");
        assert_eq!(field_error("loop_settings.train: epochs, pairs_per_step and micro_batch must be at least 1"), None);
        assert_eq!(field_error("cannot reach the server"), None);
    }
}
