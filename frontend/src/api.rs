//! One function per API endpoint, typed with the `shared` crate. Two callers exist: the admin
//! (token from the `#admin=…` link, kept in local storage) and a rater (token from the invite
//! link's `#token=…`, kept likewise). Errors keep the HTTP status, so callers can tell a lost
//! connection (retry) from a refusal (show it).
// The rater-only build uses a part of these.
#![cfg_attr(not(feature = "admin"), allow(dead_code, unused_imports))]

use apl_shared::{
    ApiError, Assignment, CheckPair, CheckpointRow, EvaluationRow, Health, HumanCheck, ImdbImport, ImportReport, Job,
    LabelAck, LabelRequest, NewHumanCheck, NewJob, NewProject, NewRater, NextPair, PairRecord, Project,
    ProjectAnalytics, ProjectConfig, ProjectDetail, PromptFormat, PromptInfo, PromptUpdate, RaterHome, RaterInvite,
    RaterStats, RoundRow, Split,
};
use gloo_net::http::{Request, RequestBuilder, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a call failed: `status` is None when the server could not be reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub status: Option<u16>,
    pub message: String,
}

impl Failure {
    /// Worth retrying: no answer, or the server (or a proxy) failed.
    pub fn transient(&self) -> bool {
        self.status.is_none_or(|s| s >= 500 || s == 408 || s == 429)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub type Res<T> = Result<T, Failure>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Nobody,
    Admin,
    Rater,
}

const ADMIN_KEY: &str = "apl_admin_token";
const RATER_KEY: &str = "apl_rater_token";

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

pub fn stored(key: &str) -> Option<String> {
    storage().and_then(|s| s.get_item(key).ok().flatten()).filter(|t| !t.is_empty())
}

pub fn store(key: &str, value: Option<&str>) {
    if let Some(s) = storage() {
        let _ = match value {
            Some(v) => s.set_item(key, v),
            None => s.remove_item(key),
        };
    }
}

/// Takes `#name=value` out of the address bar into local storage; returns the stored value.
fn token_from_link(prefix: &str, key: &str) -> Option<String> {
    let window = web_sys::window()?;
    let hash = window.location().hash().unwrap_or_default();
    if let Some(t) = hash.strip_prefix(prefix).filter(|t| !t.is_empty()) {
        store(key, Some(t));
        // Drop the token from the address bar (and from history) once kept.
        let path = window.location().pathname().unwrap_or_default();
        let search = window.location().search().unwrap_or_default();
        if let Ok(h) = window.history() {
            let _ = h.replace_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(&format!("{path}{search}")));
        }
    }
    stored(key)
}

pub fn admin_token() -> Option<String> {
    token_from_link("#admin=", ADMIN_KEY)
}

pub fn set_admin_token(t: Option<&str>) {
    store(ADMIN_KEY, t);
}

pub fn rater_token() -> Option<String> {
    token_from_link("#token=", RATER_KEY)
}

fn token(who: Who) -> Option<String> {
    match who {
        Who::Nobody => None,
        Who::Admin => admin_token(),
        Who::Rater => rater_token(),
    }
}

/// How long a rater's request may go unanswered before it counts as a lost connection (and
/// the workspace shows its offline banner and sends it again; the server answers a repeated
/// label with the stored one, so a request that did arrive is never a second vote).
const RATER_TIMEOUT_MS: u32 = 10_000;

fn authed(mut b: RequestBuilder, who: Who) -> RequestBuilder {
    if let Some(t) = token(who) {
        b = b.header("Authorization", &format!("Bearer {t}"));
    }
    if who == Who::Rater {
        let signal = web_sys::AbortSignal::timeout_with_u32(RATER_TIMEOUT_MS);
        b = b.abort_signal(Some(&signal));
    }
    b
}

async fn answer(resp: Result<Response, gloo_net::Error>) -> Res<Response> {
    let resp = resp.map_err(|e| {
        let e = e.to_string();
        let message = match e.contains("Timeout") || e.contains("timed out") || e.contains("abort") {
            true => format!("the server did not answer in {} s", RATER_TIMEOUT_MS / 1000),
            false => format!("cannot reach the server ({e})"),
        };
        Failure { status: None, message }
    })?;
    if resp.ok() {
        return Ok(resp);
    }
    let status = resp.status();
    let message = match resp.json::<ApiError>().await {
        Ok(e) => e.message,
        Err(_) => format!("the server answered {status} {}", resp.status_text()),
    };
    Err(Failure { status: Some(status), message })
}

async fn decode<T: DeserializeOwned>(resp: Response) -> Res<T> {
    resp.json::<T>().await.map_err(|e| Failure {
        status: Some(resp.status()),
        message: format!("unexpected answer from the server: {e}"),
    })
}

async fn get<T: DeserializeOwned>(path: &str, who: Who) -> Res<T> {
    decode(answer(authed(Request::get(path), who).send().await).await?).await
}

async fn send_json<B: Serialize, T: DeserializeOwned>(b: RequestBuilder, who: Who, body: &B) -> Res<T> {
    let req = authed(b, who)
        .json(body)
        .map_err(|e| Failure { status: None, message: format!("cannot encode the request: {e}") })?;
    decode(answer(req.send().await).await?).await
}

async fn post<B: Serialize, T: DeserializeOwned>(path: &str, who: Who, body: &B) -> Res<T> {
    send_json(Request::post(path), who, body).await
}

// --- everyone -------------------------------------------------------------------------------

pub async fn health() -> Res<Health> {
    get("/api/health", Who::Nobody).await
}

// --- admin ----------------------------------------------------------------------------------

pub async fn projects() -> Res<Vec<Project>> {
    get("/api/projects", Who::Admin).await
}

pub async fn create_project(p: &NewProject) -> Res<Project> {
    post("/api/projects", Who::Admin, p).await
}

pub async fn project(id: &str) -> Res<ProjectDetail> {
    get(&format!("/api/projects/{id}"), Who::Admin).await
}

pub async fn set_config(id: &str, cfg: &ProjectConfig) -> Res<Project> {
    send_json(Request::put(&format!("/api/projects/{id}/config")), Who::Admin, cfg).await
}

pub async fn import_imdb(id: &str, train: usize, eval: usize) -> Res<ImportReport> {
    post(&format!("/api/projects/{id}/prompts/imdb"), Who::Admin, &ImdbImport { train, eval }).await
}

/// Uploads a prompt file into `split`; all or nothing.
pub async fn import_prompts(id: &str, format: PromptFormat, split: Split, file: web_sys::File) -> Res<ImportReport> {
    let req = authed(Request::post(&format!("/api/projects/{id}/prompts?format={format}&split={split}")), Who::Admin)
        .body(file)
        .map_err(|e| Failure { status: None, message: format!("cannot send the file: {e}") })?;
    decode(answer(req.send().await).await?).await
}

pub async fn pairs(id: &str, round: Option<i64>, limit: usize) -> Res<Vec<PairRecord>> {
    let round = round.map(|r| format!("&round={r}")).unwrap_or_default();
    get(&format!("/api/projects/{id}/pairs?limit={limit}{round}"), Who::Admin).await
}

pub async fn prompts(id: &str, split: Split, offset: usize, limit: usize) -> Res<Vec<PromptInfo>> {
    get(&format!("/api/projects/{id}/prompts?split={split}&offset={offset}&limit={limit}"), Who::Admin).await
}

pub async fn set_prompt_disabled(id: &str, prompt: &str, disabled: bool) -> Res<()> {
    let req = authed(Request::patch(&format!("/api/projects/{id}/prompts/{prompt}")), Who::Admin)
        .json(&PromptUpdate { disabled })
        .map_err(|e| Failure { status: None, message: format!("cannot encode the request: {e}") })?;
    answer(req.send().await).await.map(|_| ())
}

pub async fn delete_prompt(id: &str, prompt: &str) -> Res<()> {
    answer(authed(Request::delete(&format!("/api/projects/{id}/prompts/{prompt}")), Who::Admin).send().await)
        .await
        .map(|_| ())
}

pub async fn raters(id: &str) -> Res<Vec<RaterStats>> {
    get(&format!("/api/projects/{id}/raters"), Who::Admin).await
}

pub async fn create_rater(id: &str, r: &NewRater) -> Res<RaterInvite> {
    post(&format!("/api/projects/{id}/raters"), Who::Admin, r).await
}

pub async fn disable_rater(id: &str, rater: &str) -> Res<()> {
    answer(authed(Request::delete(&format!("/api/projects/{id}/raters/{rater}")), Who::Admin).send().await)
        .await
        .map(|_| ())
}

pub async fn jobs(id: &str) -> Res<Vec<Job>> {
    get(&format!("/api/projects/{id}/jobs"), Who::Admin).await
}

pub async fn cycle(id: &str) -> Res<apl_shared::Cycle> {
    get(&format!("/api/projects/{id}/cycle"), Who::Admin).await
}

pub async fn start_job(id: &str, job: &NewJob) -> Res<Job> {
    post(&format!("/api/projects/{id}/jobs"), Who::Admin, job).await
}

pub async fn cancel_job(job: &str) -> Res<Job> {
    post(&format!("/api/jobs/{job}/cancel"), Who::Admin, &serde_json::Value::Null).await
}

/// The address of a job's live progress (server-sent events; a browser cannot set headers
/// there, so the token travels in the query).
pub fn job_events_url(job: &str) -> String {
    format!("/api/jobs/{job}/events?access_token={}", admin_token().unwrap_or_default())
}

pub async fn rounds(id: &str) -> Res<Vec<RoundRow>> {
    get(&format!("/api/projects/{id}/rounds"), Who::Admin).await
}

pub async fn checkpoints(id: &str) -> Res<Vec<CheckpointRow>> {
    get(&format!("/api/projects/{id}/checkpoints"), Who::Admin).await
}

pub async fn evaluations(id: &str) -> Res<Vec<EvaluationRow>> {
    get(&format!("/api/projects/{id}/evaluations"), Who::Admin).await
}

pub async fn analytics(id: &str) -> Res<ProjectAnalytics> {
    get(&format!("/api/projects/{id}/analytics"), Who::Admin).await
}

pub async fn checks(id: &str) -> Res<Vec<HumanCheck>> {
    get(&format!("/api/projects/{id}/checks"), Who::Admin).await
}

pub async fn create_check(id: &str, c: &NewHumanCheck) -> Res<HumanCheck> {
    post(&format!("/api/projects/{id}/checks"), Who::Admin, c).await
}

pub async fn check_pairs(check: &str) -> Res<Vec<CheckPair>> {
    get(&format!("/api/checks/{check}/pairs"), Who::Admin).await
}

// --- raters ---------------------------------------------------------------------------------

pub async fn rater_home() -> Res<RaterHome> {
    get("/api/rate/me", Who::Rater).await
}

pub async fn next_pair() -> Res<NextPair> {
    post("/api/rate/next", Who::Rater, &serde_json::Value::Null).await
}

pub async fn submit_label(req: &LabelRequest) -> Res<LabelAck> {
    post("/api/rate/labels", Who::Rater, req).await
}

pub async fn own_labels() -> Res<Vec<LabelAck>> {
    get("/api/rate/labels", Who::Rater).await
}

pub async fn undo_label(pair: &str) -> Res<Assignment> {
    decode(answer(authed(Request::delete(&format!("/api/rate/labels/{pair}")), Who::Rater).send().await).await?).await
}
