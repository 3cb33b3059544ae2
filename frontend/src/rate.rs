//! The rater workspace: one pair at a time, keyboard first, and nothing lost.
//!
//! Shaped around three promises. (1) Every action has a key and a button: 1 / Left, 2 / Right,
//! T tie, X both bad, S skip, U / Backspace undo, ? keys. (2) A label counts only once the
//! server acknowledged it: until then it waits in local storage and is resent (the server
//! answers a repeat with the stored label, so a retry is never a second vote), and the
//! workspace takes no other answer. (3) Whatever the connection does, what the rater typed
//! stays: the rationale is cleared only after its label is acknowledged, and a draft survives
//! a reload of the page.
//!
//! On a phone the cards stack, so they are "Top" and "Bottom" there (the words follow the
//! layout's breakpoint in CSS), key hints are hidden on touch screens, and the answer given
//! stays highlighted on its button, saying "saving…", until the server has it. A request that
//! goes unanswered for 10 s counts as a lost connection (the offline banner; `api`'s timeout).
//! Progress is the rater's own count and the batch's (pairs complete of the round's pairs): a
//! target that does not shrink while other raters work.

use std::time::Duration;

use apl_shared::{Assignment, LabelRequest, NextStatus, RaterChoice, RaterHome, RaterProgress};
use leptos::ev;
use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::api::{self, Failure};
use crate::util::sleep;

const PENDING_KEY: &str = "apl_pending_label";
/// How often the batch's progress is asked for again.
const BATCH_REFRESH: Duration = Duration::from_secs(30);
/// The rationale being typed, with its pair: (pair, text).
const DRAFT_KEY: &str = "apl_rationale_draft";

/// What the workspace is doing.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Loading,
    Ready,
    Saving,
    /// No pair: why, and when asking again may find one.
    NoMore(NextStatus, Option<u64>),
    NoToken,
    Refused(String),
}

#[derive(Clone, Copy)]
struct Ws {
    home: RwSignal<Option<RaterHome>>,
    current: RwSignal<Option<Assignment>>,
    progress: RwSignal<Option<RaterProgress>>,
    phase: RwSignal<Phase>,
    rationale: RwSignal<String>,
    /// A passing message: saved, lease expired, undone.
    notice: RwSignal<Option<String>>,
    /// Set while the server cannot be reached; the pending action is being retried.
    offline: RwSignal<Option<String>>,
    shown_at: RwSignal<f64>,
    /// Pairs this rater labelled in this session, newest last (for undo).
    done: RwSignal<Vec<String>>,
    /// The answer being saved, highlighted until the server has it.
    chosen: RwSignal<Option<RaterChoice>>,
    /// Which wait for a pair is current: a timer set by an older one does nothing when it fires
    /// (one polling loop, however often "Check again" or undo is pressed).
    wait: StoredValue<u64>,
    show_keys: RwSignal<bool>,
}

fn now() -> f64 {
    js_sys::Date::now()
}

impl Ws {
    fn new() -> Self {
        Self {
            home: RwSignal::new(None),
            current: RwSignal::new(None),
            progress: RwSignal::new(None),
            phase: RwSignal::new(Phase::Loading),
            rationale: RwSignal::new(String::new()),
            notice: RwSignal::new(None),
            offline: RwSignal::new(None),
            shown_at: RwSignal::new(now()),
            done: RwSignal::new(Vec::new()),
            chosen: RwSignal::new(None),
            wait: StoredValue::new(0),
            show_keys: RwSignal::new(false),
        }
    }

    /// Runs `f` until it gets an answer from the server, showing the lost connection meanwhile.
    async fn persist<T, F, Fut>(&self, what: &str, f: F) -> Result<T, Failure>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let mut wait = 1u64;
        loop {
            match f().await {
                Err(e) if e.transient() => {
                    self.offline.set(Some(format!("{e}. {what}: trying again in {wait} s; nothing you did is lost.")));
                    sleep(Duration::from_secs(wait)).await;
                    wait = (wait * 2).min(30);
                }
                other => {
                    self.offline.set(None);
                    return other;
                }
            }
        }
    }

    fn show(&self, a: Option<Assignment>) {
        self.show_next(a, NextStatus::Assigned, None);
    }

    /// Shows the pair, or why there is none; when the server says when to ask again, asks
    /// again then by itself (so a rater waiting for the next batch never has to reload).
    fn show_next(&self, a: Option<Assignment>, status: NextStatus, retry: Option<u64>) {
        self.chosen.set(None);
        self.wait.update_value(|w| *w += 1);
        match a {
            Some(a) => {
                self.progress.set(Some(a.progress));
                // A rationale typed for this pair before a reload comes back.
                let draft = api::stored(DRAFT_KEY)
                    .and_then(|d| serde_json::from_str::<(String, String)>(&d).ok())
                    .filter(|(pair, _)| *pair == a.pair);
                if let Some((_, text)) = draft {
                    self.rationale.set(text);
                }
                self.current.set(Some(a));
                self.shown_at.set(now());
                self.phase.set(Phase::Ready);
            }
            None => {
                self.current.set(None);
                let status = if status == NextStatus::Assigned { NextStatus::Done } else { status };
                self.phase.set(Phase::NoMore(status, retry));
                spawn_local(self.refresh_batch());
                if let Some(secs) = retry {
                    let (ws, wait) = (*self, self.wait.get_value());
                    spawn_local(async move {
                        sleep(Duration::from_secs(secs.clamp(1, 300))).await;
                        if ws.wait.get_value() == wait && matches!(ws.phase.get_untracked(), Phase::NoMore(..)) {
                            ws.load_next().await;
                        }
                    });
                }
            }
        }
    }

    /// Asks again how the batch stands (in the background: a failure only leaves it as it was).
    async fn refresh_batch(self) {
        if let Ok(h) = api::rater_home().await {
            self.progress.set(Some(h.progress));
            self.home.set(Some(h));
        }
    }

    async fn load_next(self) {
        self.phase.set(Phase::Loading);
        match self.persist("Asking for the next pair", api::next_pair).await {
            Ok(next) => self.show_next(next.assignment, next.status, next.retry_after_seconds),
            Err(e) => self.phase.set(Phase::Refused(e.message)),
        }
    }

    async fn start(self) {
        if api::rater_token().is_none() {
            self.phase.set(Phase::NoToken);
            return;
        }
        match self.persist("Connecting", api::rater_home).await {
            Ok(h) => {
                self.progress.set(Some(h.progress));
                self.home.set(Some(h));
            }
            Err(e) => {
                self.phase.set(Phase::Refused(e.message));
                return;
            }
        }
        // A label given before the page was closed or the connection dropped goes first.
        if let Some(req) = api::stored(PENDING_KEY).and_then(|s| serde_json::from_str::<LabelRequest>(&s).ok()) {
            self.send(req).await;
        } else {
            self.load_next().await;
        }
    }

    fn choose(self, choice: RaterChoice) {
        if self.phase.get_untracked() != Phase::Ready {
            return;
        }
        let Some(a) = self.current.get_untracked() else { return };
        let rationale = self.rationale.get_untracked();
        let req = LabelRequest {
            pair: a.pair,
            choice,
            time_ms: (now() - self.shown_at.get_untracked()).max(0.0) as u64,
            rationale: (!rationale.trim().is_empty()).then(|| rationale.trim().to_string()),
            next: true,
        };
        api::store(PENDING_KEY, serde_json::to_string(&req).ok().as_deref());
        spawn_local(self.send(req));
    }

    /// Sends a label until the server answers, then moves on.
    async fn send(self, req: LabelRequest) {
        self.chosen.set(Some(req.choice));
        self.phase.set(Phase::Saving);
        let result = self.persist("Saving your answer", || api::submit_label(&req)).await;
        api::store(PENDING_KEY, None);
        match result {
            Ok(ack) => {
                self.progress.set(Some(ack.progress));
                self.rationale.set(String::new());
                api::store(DRAFT_KEY, None);
                self.done.update(|d| d.push(ack.pair));
                self.notice.set(Some(format!("Saved: {}.", choice_name(ack.choice))));
                // The next pair came with the acknowledgement (one round trip per label).
                if let Some(next) = ack.next {
                    self.show_next(next.assignment, next.status, next.retry_after_seconds);
                    return;
                }
            }
            Err(e) => {
                self.chosen.set(None);
                self.notice.set(Some(e.message));
            }
        }
        self.load_next().await;
    }

    fn undo(self) {
        if !matches!(self.phase.get_untracked(), Phase::Ready | Phase::NoMore(..)) {
            return;
        }
        spawn_local(async move {
            let last = match self.done.get_untracked().last().cloned() {
                Some(p) => Some(p),
                // After a reload: the newest label the server has from this rater.
                None => match self.persist("Looking up your last answer", api::own_labels).await {
                    Ok(l) => l.first().map(|l| l.pair.clone()),
                    Err(e) => {
                        self.notice.set(Some(e.message));
                        return;
                    }
                },
            };
            let Some(pair) = last else {
                self.notice.set(Some("Nothing to undo.".into()));
                return;
            };
            self.phase.set(Phase::Loading);
            match self.persist("Undoing", || api::undo_label(&pair)).await {
                Ok(a) => {
                    self.done.update(|d| {
                        d.retain(|p| p != &pair);
                    });
                    self.notice.set(Some("Undone: answer this pair again.".into()));
                    self.show(Some(a));
                }
                Err(e) => {
                    self.notice.set(Some(e.message));
                    self.load_next().await;
                }
            }
        });
    }
}

fn choice_name(c: RaterChoice) -> &'static str {
    match c {
        RaterChoice::Left => "left is better",
        RaterChoice::Right => "right is better",
        RaterChoice::Tie => "tie",
        RaterChoice::BothBad => "both bad",
        RaterChoice::Skip => "skipped",
    }
}

/// Whether a key press belongs to a text field (then it is typing, not a command).
fn typing(e: &web_sys::KeyboardEvent) -> bool {
    use wasm_bindgen::JsCast;
    e.target()
        .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
        .is_some_and(|el| matches!(el.tag_name().as_str(), "INPUT" | "TEXTAREA" | "SELECT"))
}

#[component]
pub fn RaterWorkspace() -> impl IntoView {
    let ws = Ws::new();
    spawn_local(ws.start());
    // The batch's count moves with everyone's labels: asked again now and then, not per label.
    if let Ok(h) = set_interval_with_handle(move || spawn_local(ws.refresh_batch()), BATCH_REFRESH) {
        on_cleanup(move || h.clear());
    }

    let keys = window_event_listener(ev::keydown, move |e| {
        if e.ctrl_key() || e.meta_key() || e.alt_key() {
            return;
        }
        if typing(&e) {
            if e.key() == "Escape"
                && let Some(el) = web_sys::window().and_then(|w| w.document()).and_then(|d| d.active_element())
                && let Ok(el) = wasm_bindgen::JsCast::dyn_into::<web_sys::HtmlElement>(el)
            {
                let _ = el.blur();
            }
            return;
        }
        let handled = match e.key().as_str() {
            "1" | "ArrowLeft" => Some(RaterChoice::Left),
            "2" | "ArrowRight" => Some(RaterChoice::Right),
            "t" | "T" => Some(RaterChoice::Tie),
            "x" | "X" => Some(RaterChoice::BothBad),
            "s" | "S" => Some(RaterChoice::Skip),
            "u" | "U" | "Backspace" => {
                ws.undo();
                e.prevent_default();
                return;
            }
            "?" => {
                ws.show_keys.update(|v| *v = !*v);
                return;
            }
            "Escape" => {
                ws.show_keys.set(false);
                return;
            }
            _ => None,
        };
        if let Some(c) = handled {
            e.prevent_default();
            ws.choose(c);
        }
    });
    on_cleanup(move || keys.remove());

    let busy = move || ws.phase.get() != Phase::Ready;
    view! {
        <header class="top rater-top">
            <h1>"Rate"</h1>
            {move || ws.home.get().map(|h| view! {
                <p class="muted">{h.project} " · signed in as " <strong>{h.name}</strong></p>
            })}
            <ProgressLine ws=ws/>
        </header>
        <main class="rate" aria-busy=move || (ws.phase.get() == Phase::Loading).to_string()>
            {move || ws.offline.get().map(|m| view! { <p class="banner offline" role="alert">{m}</p> })}
            {move || ws.home.get().map(|h| view! {
                <details class="guidelines" open=ws.done.with(|d| d.is_empty())>
                    <summary>"Guidelines"</summary>
                    <p class="pre">{h.guidelines}</p>
                </details>
            })}
            {move || match ws.phase.get() {
                Phase::NoToken => view! {
                    <p class="banner" role="alert">
                        "Open this page through your invite link (it ends in #token=…)."
                    </p>
                }.into_any(),
                Phase::Refused(m) => view! { <p class="error" role="alert">{m}</p> }.into_any(),
                Phase::NoMore(status, retry) => view! {
                    <section class="done-state" aria-live="polite" data-status=status.name()>
                        {match status {
                            NextStatus::Wait => view! {
                                <h2>"Every remaining pair is with another rater"</h2>
                                <p>{format!("Pairs come back when their raters finish or their time runs out; this page asks again in {} s.", retry.unwrap_or(5))}</p>
                            }.into_any(),
                            NextStatus::NothingYet => view! {
                                <h2>"No pairs yet"</h2>
                                <p>{format!("The next batch is being prepared; this page asks again every {} s.", retry.unwrap_or(30))}</p>
                            }.into_any(),
                            _ => view! {
                                <h2>"All done: nothing left for you"</h2>
                                <p>"Thank you. You have labelled every pair you can; new pairs may arrive later."</p>
                            }.into_any(),
                        }}
                        <button class="primary" on:click=move |_| spawn_local(ws.load_next())>"Check again"</button>
                        <button on:click=move |_| ws.undo()>"Undo last (U)"</button>
                    </section>
                }.into_any(),
                _ => view! { <PairCard ws=ws busy=Signal::derive(busy)/> }.into_any(),
            }}
            <p class="notice" role="status" aria-live="polite">{move || ws.notice.get()}</p>
            <button class="link keys-toggle" on:click=move |_| ws.show_keys.update(|v| *v = !*v)
                aria-expanded=move || ws.show_keys.get().to_string()>"Keyboard shortcuts (?)"</button>
            <Show when=move || ws.show_keys.get()>
                <KeysHelp/>
            </Show>
        </main>
    }
}

/// The rater's own count, what is left for them now, and the batch's progress (its size is
/// fixed, so the bar never moves back when other raters take pairs).
#[component]
fn ProgressLine(ws: Ws) -> impl IntoView {
    let batch = move || ws.home.get().and_then(|h| h.batch);
    move || {
        ws.progress.get().map(|p: RaterProgress| {
            // Without a pair, the empty state below says why; "0 more" would say it worse.
            let left = match ws.phase.get() {
                Phase::NoMore(NextStatus::Done, _) => " · all done".to_string(),
                Phase::NoMore(..) => String::new(),
                _ if p.at_least => format!(" · {}+ more for you now", p.target - p.done),
                _ => format!(" · {} more for you now", (p.target - p.done).max(0)),
            };
            view! {
                <div class="progress-line">
                    {batch().map(|b| view! {
                        <progress max=b.pairs.max(1) value=b.complete aria-label="Pairs of the batch complete"></progress>
                        <span class="batch" data-testid="batch">{format!("Round {}: {} of {} pairs complete", b.round, b.complete, b.pairs)}</span>
                    })}
                    <span class="count"><span data-testid="progress">{format!("You: {} labelled", p.done)}</span>
                        {left}</span>
                </div>
            }
        })
    }
}

#[component]
fn PairCard(ws: Ws, busy: Signal<bool>) -> impl IntoView {
    let pick = move |c: RaterChoice| move |_| ws.choose(c);
    // The answer given stays marked, saying so, until the server has it.
    let chosen = move |c: RaterChoice| move || ws.chosen.get() == Some(c);
    let saving = move |c: RaterChoice| {
        move || {
            (ws.chosen.get() == Some(c) && ws.phase.get() == Phase::Saving)
                .then(|| view! { <span class="saving">" saving…"</span> })
        }
    };
    view! {
        {move || ws.current.get().map(|a| view! {
            <section class="pair" data-pair=a.pair.clone() aria-label="The pair to compare">
                <p class="prompt"><span class="label">"Prompt"</span>{a.prompt.clone()}</p>
                <div class="sides">
                    <article class="side" aria-label="Left (top) completion">
                        <h2><span class="wide">"Left "</span><span class="narrow">"Top "</span><kbd>"1"</kbd></h2>
                        <p class="completion">{a.left.clone()}</p>
                    </article>
                    <article class="side" aria-label="Right (bottom) completion">
                        <h2><span class="wide">"Right "</span><span class="narrow">"Bottom "</span><kbd>"2"</kbd></h2>
                        <p class="completion">{a.right.clone()}</p>
                    </article>
                </div>
            </section>
        })}
        <div class="choices" role="group" aria-label="Your answer">
            <button class="primary" class:chosen=chosen(RaterChoice::Left) on:click=pick(RaterChoice::Left) disabled=busy>
                <span class="wide">"Left"</span><span class="narrow">"Top"</span>" is better " <kbd>"1"</kbd>{saving(RaterChoice::Left)}</button>
            <button class="primary" class:chosen=chosen(RaterChoice::Right) on:click=pick(RaterChoice::Right) disabled=busy>
                <span class="wide">"Right"</span><span class="narrow">"Bottom"</span>" is better " <kbd>"2"</kbd>{saving(RaterChoice::Right)}</button>
            <button class:chosen=chosen(RaterChoice::Tie) on:click=pick(RaterChoice::Tie) disabled=busy>"Tie " <kbd>"T"</kbd>{saving(RaterChoice::Tie)}</button>
            <button class:chosen=chosen(RaterChoice::BothBad) on:click=pick(RaterChoice::BothBad) disabled=busy>"Both bad " <kbd>"X"</kbd>{saving(RaterChoice::BothBad)}</button>
            <button class:chosen=chosen(RaterChoice::Skip) on:click=pick(RaterChoice::Skip) disabled=busy>"Skip " <kbd>"S"</kbd>{saving(RaterChoice::Skip)}</button>
            <button on:click=move |_| ws.undo() disabled=busy>"Undo last " <kbd>"U"</kbd></button>
        </div>
        <label class="rationale">
            "Why (optional, one line)"
            <input type="text" maxlength="2000" placeholder="e.g. the left one stays on topic"
                prop:value=move || ws.rationale.get()
                on:input=move |e| {
                    let text = event_target_value(&e);
                    if let Some(a) = ws.current.get_untracked() {
                        api::store(DRAFT_KEY, serde_json::to_string(&(a.pair, &text)).ok().as_deref());
                    }
                    ws.rationale.set(text);
                }/>
        </label>
        <p class="muted" aria-live="polite">
            {move || match ws.phase.get() {
                Phase::Saving => "Saving…",
                Phase::Loading => "Loading…",
                _ => "",
            }}
        </p>
    }
}

#[component]
pub fn KeysHelp() -> impl IntoView {
    view! {
        <table class="keys" aria-label="Keyboard shortcuts">
            <tbody>
                <tr><td><kbd>"1"</kbd> " or " <kbd>"←"</kbd></td><td>"left is better"</td></tr>
                <tr><td><kbd>"2"</kbd> " or " <kbd>"→"</kbd></td><td>"right is better"</td></tr>
                <tr><td><kbd>"T"</kbd></td><td>"tie"</td></tr>
                <tr><td><kbd>"X"</kbd></td><td>"both bad"</td></tr>
                <tr><td><kbd>"S"</kbd></td><td>"skip this pair"</td></tr>
                <tr><td><kbd>"U"</kbd> " or " <kbd>"Backspace"</kbd></td><td>"undo your last answer"</td></tr>
                <tr><td><kbd>"?"</kbd></td><td>"show or hide these keys"</td></tr>
                <tr><td><kbd>"Esc"</kbd></td><td>"leave the text field"</td></tr>
            </tbody>
        </table>
    }
}
