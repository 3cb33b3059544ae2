//! Project set-up: prompts in (IMDB pool or a file) and the list of them (disable one that
//! should not be used, delete one no pair uses), and the configuration: the fields people
//! change most as form controls (acquisition and its parameters, labeller, judge, overlap,
//! gold rate, guidelines), everything else in the full JSON below them. Both edit one JSON
//! value, so they never disagree; the server checks it and names a bad field.

use apl_shared::settings::{JudgeOrder, JudgeTask, PairLengths};
use apl_shared::{Acquisition, Labeller, ProjectConfig, PromptFormat, PromptInfo, Split, Vocabulary};
use leptos::prelude::*;
use leptos::task::spawn_local;
use serde_json::Value;

use super::{Ctx, shown};
use crate::api;
use crate::components::options;
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

/// (section, label, JSON path from the config root, kind, help)
type FieldSpec = (&'static str, &'static str, &'static [&'static str], Kind, &'static str);

const FIELDS: &[FieldSpec] = &[
    ("Acquisition", "Function", &["loop_settings", "acquisition"], Kind::Choice(acquisitions), ""),
    ("Acquisition", "Pairs per round (m)", &["loop_settings", "pairs_per_round"], Kind::Number, ""),
    (
        "Acquisition",
        "Over-generation (certainty)",
        &["loop_settings", "acquire", "over_generate"],
        Kind::Number,
        "candidates scored per pair kept",
    ),
    (
        "Acquisition",
        "Entropy over-sampling",
        &["loop_settings", "acquire", "entropy_over_sample"],
        Kind::Number,
        "prompts scored per prompt kept",
    ),
    ("Acquisition", "Entropy samples", &["loop_settings", "acquire", "entropy_samples"], Kind::Number, "per prompt"),
    ("Acquisition", "Pair temperature", &["loop_settings", "acquire", "pair_temperature"], Kind::Number, ""),
    (
        "Acquisition",
        "Pair lengths",
        &["loop_settings", "acquire", "pair_lengths"],
        Kind::Choice(pair_lengths),
        "completion lengths drawn from the completion range",
    ),
    ("Labelling", "Labeller", &["loop_settings", "labeller"], Kind::Choice(labellers), ""),
    ("Labelling", "Raters per pair (overlap)", &["rating", "overlap"], Kind::Number, ""),
    ("Labelling", "Gold rate", &["rating", "gold_rate"], Kind::Number, "share of gold pairs, 0 to 1"),
    ("Labelling", "Lease (seconds)", &["rating", "lease_seconds"], Kind::Number, ""),
    (
        "Labelling",
        "Auto-continue",
        &["rating", "auto_continue", "enabled"],
        Kind::Switch,
        "with raters: once a round is labelled, train, evaluate and acquire the next one by itself",
    ),
    (
        "Labelling",
        "Continue when labelled",
        &["rating", "auto_continue", "fraction"],
        Kind::Number,
        "share of the round's pairs with all their votes, above 0 to 1",
    ),
    ("Training", "beta", &["loop_settings", "train", "beta"], Kind::Number, "DPO temperature"),
    ("Training", "Epochs", &["loop_settings", "train", "epochs"], Kind::Number, ""),
    ("Training", "Learning rate", &["loop_settings", "train", "adam", "lr"], Kind::Number, ""),
    ("Evaluation", "Win-rate judge", &["loop_settings", "eval", "judge"], Kind::Choice(eval_judges), ""),
    ("Evaluation", "Held-out prompts", &["loop_settings", "eval", "prompts"], Kind::Number, ""),
    ("Judge", "API base URL", &["loop_settings", "judge", "base_url"], Kind::Text, "OpenAI-compatible, …/v1"),
    ("Judge", "Model", &["loop_settings", "judge", "model"], Kind::Text, ""),
    (
        "Judge",
        "API key variable",
        &["loop_settings", "judge", "api_key_env"],
        Kind::Text,
        "name of the server's environment variable, e.g. OPENAI_API_KEY",
    ),
    ("Judge", "Task", &["loop_settings", "judge", "task"], Kind::Choice(judge_tasks), ""),
    ("Judge", "Temperature", &["loop_settings", "judge", "temperature"], Kind::Number, ""),
    ("Judge", "Order", &["loop_settings", "judge", "order"], Kind::Choice(orders), ""),
];

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

#[component]
fn Config() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let cfg = RwSignal::new(None::<Value>);
    let raw = RwSignal::new(String::new());
    let message = RwSignal::new(None::<Result<String, String>>);
    Effect::new(move |_| {
        if let Some(d) = ctx.detail.get()
            && cfg.get_untracked().is_none()
        {
            let v = serde_json::to_value(&d.project.config).unwrap_or(Value::Null);
            raw.set(serde_json::to_string_pretty(&v).unwrap_or_default());
            cfg.set(Some(v));
        }
    });
    let edit = move |path: &'static [&'static str], kind: Kind, text: String| {
        cfg.update(|c| {
            if let Some(c) = c {
                let x = match kind {
                    Kind::Number => match text.trim().parse::<f64>() {
                        Ok(n) if n.fract() == 0.0 && n.abs() < 1e15 && !text.contains('.') => Value::from(n as i64),
                        Ok(n) => Value::from(n),
                        Err(_) => Value::String(text),
                    },
                    Kind::Text if text.trim().is_empty() && path.last() == Some(&"api_key_env") => Value::Null,
                    Kind::Switch => Value::Bool(text == "true"),
                    _ => Value::String(text),
                };
                set_at(c, path, x);
                raw.set(serde_json::to_string_pretty(c).unwrap_or_default());
            }
        });
    };
    let save = move |e: leptos::ev::SubmitEvent| {
        e.prevent_default();
        let parsed: Result<ProjectConfig, String> =
            serde_json::from_str(&raw.get_untracked()).map_err(|e| format!("the JSON below: {e}"));
        let id = ctx.id();
        spawn_local(async move {
            let r = match parsed {
                Ok(c) => api::set_config(&id, &c).await.map_err(|e| e.message),
                Err(e) => Err(e),
            };
            match r {
                Ok(p) => {
                    let v = serde_json::to_value(&p.config).unwrap_or(Value::Null);
                    raw.set(serde_json::to_string_pretty(&v).unwrap_or_default());
                    cfg.set(Some(v));
                    message.set(Some(Ok("Saved.".into())));
                    ctx.changed();
                }
                Err(e) => message.set(Some(Err(e))),
            }
        });
    };
    let sections = ["Acquisition", "Labelling", "Training", "Evaluation", "Judge"];
    view! {
        <section class="card">
            <h2>"Configuration"</h2>
            <p class="muted">{move || ctx.detail.get().map(|d| format!(
                "Task: {}. The model is the server's (see the start page); the judge's API key is never stored here, only the name of the variable holding it.",
                d.project.task))}</p>
            <form on:submit=save>
                {sections.into_iter().map(|sec| view! {
                    <fieldset>
                        <legend>{sec}</legend>
                        {FIELDS.iter().filter(|f| f.0 == sec).map(|&(_, label, path, kind, help)| {
                            let value = move || cfg.get().map(|c| shown_value(at(&c, path))).unwrap_or_default();
                            let name = path.join(".");
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
                                        on:change=move |e| edit(path, kind, event_target_value(&e))/>
                                }.into_any(),
                                Kind::Text => view! {
                                    <input type="text" name=name.clone() prop:value=value
                                        on:change=move |e| edit(path, kind, event_target_value(&e))/>
                                }.into_any(),
                            };
                            view! {
                                <label class="field">
                                    <span>{label}</span>
                                    {control}
                                    {(!help.is_empty()).then(|| view! { <small class="muted">{help}</small> })}
                                </label>
                            }
                        }).collect_view()}
                    </fieldset>
                }).collect_view()}
                <label class="field wide">
                    <span>"Guidelines for raters"</span>
                    <textarea rows="3" prop:value=move || cfg.get().map(|c| shown_value(at(&c, &["rating", "guidelines"]))).unwrap_or_default()
                        on:change=move |e| edit(&["rating", "guidelines"], Kind::Text, event_target_value(&e))></textarea>
                </label>
                <details>
                    <summary>"Every setting (JSON)"</summary>
                    <textarea class="json" rows="24" spellcheck="false" prop:value=move || raw.get()
                        on:input=move |e| raw.set(event_target_value(&e))
                        on:change=move |e| {
                            if let Ok(v) = serde_json::from_str::<Value>(&event_target_value(&e)) { cfg.set(Some(v)); }
                        }></textarea>
                </details>
                <button class="primary" type="submit">"Save configuration"</button>
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
        let base = serde_json::to_value(ProjectConfig::default()).unwrap();
        for &(_, label, path, kind, _) in FIELDS {
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
}
