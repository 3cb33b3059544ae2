//! Admin endpoints that move data in and out: prompt files (JSONL, CSV, the built-in IMDB
//! pool), preference pairs in TRL's format, the pair list, and the exports (TRL DPO JSONL with
//! metadata, every raw vote as JSONL and CSV). A file is checked whole before anything is
//! stored (errors name the line and the problem), then stored as one import (`store::imports`):
//! in short batches that raters' labels interleave with, visible all at once. The import runs
//! as a task of its own, so a client that goes away does not cut it off half-way.

use apl_shared::{
    Choice, ExtraFields, ImdbImport, ImportReport, LabelSource, PairFormat, PairKind, PairRecord, Preference,
    PromptFormat, PromptInfo, PromptUpdate, Split, Vocabulary,
};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;

use super::auth::Admin;
use super::body::{JsonBody, Upload};
use super::doc::Failures;
use super::{ApiResult, AppError, AppState};
use crate::store::export::votes_csv;
use crate::store::imports::{NewCompletion, NewPair, PromptRef, import_key};
use apl_engine::data::prompts::{self, PromptRecord};
use apl_engine::data::trl;

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(v)| v).map_err(|e| AppError::BadRequest(format!("query: {}", e.body_text())))
}

fn utf8(bytes: &[u8]) -> ApiResult<&str> {
    std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        AppError::BadRequest(format!("upload:{line}: not valid UTF-8"))
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PromptImport {
    pub format: PromptFormat,
    #[serde(default = "train")]
    pub split: Split,
    /// TL;DR format: every prompt ends with "TL;DR:" and has a reference summary.
    #[serde(default)]
    pub tldr: bool,
}

fn train() -> Split {
    Split::Train
}

/// `POST /api/projects/{id}/prompts?format=jsonl|csv&split=train|eval`, the file as the body.
#[utoipa::path(post, path = "/projects/{id}/prompts", tag = "data", security(("admin" = [])), params(("id" = String, Path, description = "The project"), PromptImport),
    request_body(content = String, content_type = "text/plain", description = "The file: JSONL or CSV of prompts (and references)"),
    responses((status = 201, body = ImportReport, description = "All imported (or none, with the line at fault)"), Failures))]
pub async fn import_prompts(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PromptImport>, QueryRejection>,
    Upload(body): Upload,
) -> ApiResult<(StatusCode, Json<ImportReport>)> {
    let q = query(q)?;
    let records = match q.format {
        PromptFormat::Jsonl => prompts::parse_jsonl("upload", utf8(&body)?, q.tldr),
        PromptFormat::Csv => prompts::parse_csv("upload", &body, q.tldr),
    }
    .map_err(|e| AppError::BadRequest(crate::error::describe(&e)))?;
    capped(&s, records.len())?;
    let (records, refused, notes) = fitting(&s, &id, records).await?;
    let store = s.store.clone();
    let (imported, duplicates) =
        detached(async move { store.insert_prompts(&id, &records, q.split, "upload").await }).await?;
    Ok((StatusCode::CREATED, Json(ImportReport { imported, duplicates, refused, notes })))
}

/// Refuses an upload of more records than the server takes.
fn capped(s: &AppState, records: usize) -> ApiResult<()> {
    if records > s.max_import_rows {
        return Err(AppError::TooLarge(format!(
            "upload: {records} records; this server takes up to {} per upload (apl serve --max-import-rows)",
            s.max_import_rows
        )));
    }
    Ok(())
}

/// Runs a store write to its end even when the request that started it is dropped.
async fn detached<T: Send + 'static>(
    write: impl std::future::Future<Output = crate::store::Result<T>> + Send + 'static,
) -> ApiResult<T> {
    Ok(tokio::spawn(write).await.map_err(AppError::internal)??)
}

/// The records whose prompt fits the model with the project's longest completion; the others
/// are refused, counted, and the first few named (a prompt past the model's positions would
/// fail every later round of the project).
async fn fitting(
    s: &AppState,
    project: &str,
    records: Vec<PromptRecord>,
) -> ApiResult<(Vec<PromptRecord>, usize, Vec<String>)> {
    let p = s.store.project(project).await?;
    let longest = p.config.loop_settings.completion_tokens.1;
    let worker = s.worker.clone();
    // Tokenising a large upload is CPU work: off the async threads.
    tokio::task::spawn_blocking(move || {
        let (positions, tok) = (worker.max_positions(), worker.tokenizer());
        let (mut kept, mut refused, mut notes) = (Vec::with_capacity(records.len()), 0, Vec::new());
        for (k, r) in records.into_iter().enumerate() {
            let n = tok.encode(&r.prompt, true)?.len();
            if n + longest > positions {
                refused += 1;
                if notes.len() < 5 {
                    notes.push(format!(
                        "record {}: the prompt is {n} tokens; with completions of up to {longest} it exceeds the \
                         model's {positions} positions",
                        k + 1
                    ));
                }
            } else {
                kept.push(r);
            }
        }
        Ok((kept, refused, notes))
    })
    .await
    .map_err(AppError::internal)?
}

/// `POST /api/projects/{id}/prompts/imdb {train, eval}`: prompts from the built-in IMDB pool
/// (the first 8-16 tokens of reviews), disjoint between the splits.
#[utoipa::path(post, path = "/projects/{id}/prompts/imdb", tag = "data", security(("admin" = [])), params(("id" = String, Path, description = "The project")), request_body = ImdbImport,
    responses((status = 201, body = ImportReport, description = "Prompts from the built-in IMDB pool"), Failures))]
pub async fn import_imdb(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ImdbImport>,
) -> ApiResult<(StatusCode, Json<ImportReport>)> {
    let pool = s.worker.prompt_texts();
    if pool.is_empty() {
        return Err(AppError::Conflict("this server runs without the IMDB prompt pool".into()));
    }
    if req.train + req.eval > pool.len() {
        return Err(AppError::BadRequest(format!(
            "train + eval = {} but the IMDB pool has {} prompts",
            req.train + req.eval,
            pool.len()
        )));
    }
    let rec = |t: &String| PromptRecord { prompt: t.clone(), reference: None };
    let eval: Vec<PromptRecord> = pool[..req.eval].iter().map(rec).collect();
    let train: Vec<PromptRecord> = pool[req.eval..req.eval + req.train].iter().map(rec).collect();
    let mut report = ImportReport::default();
    for (records, split) in [(eval, Split::Eval), (train, Split::Train)] {
        if !records.is_empty() {
            let (stored, duplicates) = s.store.insert_prompts(&id, &records, split, "imdb").await?;
            report.imported += stored;
            report.duplicates += duplicates;
        }
    }
    Ok((StatusCode::CREATED, Json(report)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PairImport {
    pub format: PairFormat,
    /// Gold pairs: the chosen completion is the known answer raters are checked against.
    #[serde(default)]
    pub gold: bool,
    /// Also send the pairs to raters (with the project's overlap), e.g. to measure agreement
    /// with the imported labels.
    #[serde(default)]
    pub rate: bool,
}

/// `POST /api/projects/{id}/pairs?format=trl[&gold=true][&rate=true]`, the file as the body.
/// The file's preference is stored as a judge label named `import`.
#[utoipa::path(post, path = "/projects/{id}/pairs", tag = "data", security(("admin" = [])), params(("id" = String, Path, description = "The project"), PairImport),
    request_body(content = String, content_type = "application/x-ndjson", description = "TRL preference pairs, one JSON object per line"),
    responses((status = 201, body = ImportReport, description = "All imported (or none, with the line at fault)"), Failures))]
pub async fn import_pairs(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PairImport>, QueryRejection>,
    Upload(body): Upload,
) -> ApiResult<(StatusCode, Json<ImportReport>)> {
    let q = query(q)?;
    let PairFormat::Trl = q.format;
    let project = s.store.project(&id).await?;
    let records =
        trl::parse_jsonl("upload", utf8(&body)?).map_err(|e| AppError::BadRequest(crate::error::describe(&e)))?;
    capped(&s, records.len())?;
    let kind = if q.gold { PairKind::Gold } else { PairKind::Train };
    let completion =
        |text: &str| NewCompletion { text: text.to_string(), source: "import".into(), logp: None, tokens: None };
    let pairs: Vec<NewPair> = records
        .into_iter()
        .map(|r| NewPair {
            import_key: Some(import_key(kind, &r.prompt, &r.chosen, &r.rejected)),
            a: completion(&r.chosen),
            b: completion(&r.rejected),
            prompt: PromptRef::New(r.prompt),
            extra: (!r.extra.is_empty()).then_some(ExtraFields(r.extra)),
            kind,
            round: None,
            acquisition: None,
            r_a: None,
            r_b: None,
            margin: None,
            entropy: None,
            gold_choice: q.gold.then_some(Choice::A),
            target_votes: if q.rate && !q.gold { project.config.rating.overlap as i64 } else { 0 },
            known: Some(("import".into(), Preference::A)),
        })
        .collect();
    let store = s.store.clone();
    let (imported, duplicates) = detached(async move { store.import_pairs(&id, &pairs, "import").await }).await?;
    Ok((StatusCode::CREATED, Json(ImportReport { imported, duplicates, ..Default::default() })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PromptList {
    /// Only this split's prompts.
    pub split: Option<Split>,
    /// 1 to 1000.
    pub limit: i64,
    pub offset: i64,
}

impl Default for PromptList {
    fn default() -> Self {
        Self { split: None, limit: 100, offset: 0 }
    }
}

fn page(limit: i64, offset: i64) -> ApiResult<()> {
    if !(1..=1000).contains(&limit) || offset < 0 {
        return Err(AppError::BadRequest("limit: 1 to 1000; offset: 0 or more".into()));
    }
    Ok(())
}

#[utoipa::path(get, path = "/projects/{id}/prompts", tag = "data", security(("admin" = [])), params(("id" = String, Path, description = "The project"), PromptList),
    responses((status = 200, body = Vec<PromptInfo>, description = "Prompts with their use: round, pairs, disabled"), Failures))]
pub async fn list_prompts(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PromptList>, QueryRejection>,
) -> ApiResult<Json<Vec<PromptInfo>>> {
    let q = query(q)?;
    page(q.limit, q.offset)?;
    s.store.project(&id).await?;
    Ok(Json(s.store.prompt_infos(&id, q.split, q.limit, q.offset).await?))
}

/// Disables a prompt (no round acquires or evaluates it again; its pairs and labels stay), or
/// enables it again.
#[utoipa::path(patch, path = "/projects/{id}/prompts/{prompt}", tag = "data", security(("admin" = [])),
    params(("id" = String, Path, description = "The project"), ("prompt" = String, Path, description = "The prompt")),
    request_body = PromptUpdate, responses((status = 204, description = "Updated"), Failures))]
pub async fn update_prompt(
    _: Admin,
    State(s): State<AppState>,
    Path((id, prompt)): Path<(String, String)>,
    JsonBody(req): JsonBody<PromptUpdate>,
) -> ApiResult<StatusCode> {
    s.store.set_prompt_disabled(&id, &prompt, req.disabled).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a prompt that no pair uses (409 for one with pairs: disable it instead).
#[utoipa::path(delete, path = "/projects/{id}/prompts/{prompt}", tag = "data", security(("admin" = [])),
    params(("id" = String, Path, description = "The project"), ("prompt" = String, Path, description = "The prompt")),
    responses((status = 204, description = "Deleted"), Failures))]
pub async fn delete_prompt(
    _: Admin,
    State(s): State<AppState>,
    Path((id, prompt)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.store.delete_prompt(&id, &prompt).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PairList {
    /// Only this round's pairs.
    pub round: Option<i64>,
    /// 1 to 1000.
    pub limit: i64,
    pub offset: i64,
}

impl Default for PairList {
    fn default() -> Self {
        Self { round: None, limit: 100, offset: 0 }
    }
}

#[utoipa::path(get, path = "/projects/{id}/pairs", tag = "data", security(("admin" = [])), params(("id" = String, Path, description = "The project"), PairList),
    responses((status = 200, body = Vec<PairRecord>, description = "Pairs with acquisition scores and vote counts"), Failures))]
pub async fn list_pairs(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PairList>, QueryRejection>,
) -> ApiResult<Json<Vec<PairRecord>>> {
    let q = query(q)?;
    page(q.limit, q.offset)?;
    s.store.project(&id).await?;
    Ok(Json(s.store.pair_records(&id, q.round, q.limit, q.offset).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DpoExport {
    /// Which labels make a preference (default: the project's `loop_settings.train_on`, what its
    /// training uses).
    pub source: Option<LabelSource>,
}

/// A download; the file name keeps only safe characters of the project name.
fn attachment(body: String, content_type: &'static str, name: String) -> impl IntoResponse {
    let name: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        body,
    )
}

fn jsonl<T: serde::Serialize>(rows: impl IntoIterator<Item = T>) -> String {
    rows.into_iter().map(|r| serde_json::to_string(&r).expect("rows serialise") + "\n").collect()
}

/// `GET /api/projects/{id}/export/dpo.jsonl[?source=human|judge|human_then_judge]`; 404 with
/// the reason when no pair has a preference from that source.
#[utoipa::path(get, path = "/projects/{id}/export/dpo.jsonl", tag = "data", security(("admin" = [])), params(("id" = String, Path, description = "The project"), DpoExport),
    responses((status = 200, content_type = "application/x-ndjson", body = String, description = "Labelled pairs as TRL DPO JSONL with metadata"), Failures))]
pub async fn export_dpo(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<DpoExport>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let project = s.store.project(&id).await?;
    let source = query(q)?.source.unwrap_or(project.config.loop_settings.train_on);
    let prefs = s.store.preferences(&id, source).await?;
    if prefs.is_empty() {
        // An empty file breaks `datasets.load_dataset`; say why there is nothing instead.
        return Err(AppError::NotFound(format!(
            "no preferences from {source} labels in this project yet (a pair needs a decided label); label \
             pairs, or ask for another ?source= ({})",
            LabelSource::ALL.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
        )));
    }
    let lines = jsonl(prefs.iter().map(|p| p.dpo_line()));
    Ok(attachment(lines, "application/x-ndjson", format!("{}-dpo.jsonl", project.name)))
}

#[utoipa::path(get, path = "/projects/{id}/export/votes.jsonl", tag = "data", security(("admin" = [])), params(("id" = String, Path, description = "The project")),
    responses((status = 200, content_type = "application/x-ndjson", body = String, description = "Every human vote"), Failures))]
pub async fn export_votes_jsonl(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let project = s.store.project(&id).await?;
    let votes = s.store.votes(&id).await?;
    Ok(attachment(jsonl(votes), "application/x-ndjson", format!("{}-votes.jsonl", project.name)))
}

#[utoipa::path(get, path = "/projects/{id}/export/votes.csv", tag = "data", security(("admin" = [])), params(("id" = String, Path, description = "The project")),
    responses((status = 200, content_type = "text/csv", body = String, description = "Every human vote"), Failures))]
pub async fn export_votes_csv(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let project = s.store.project(&id).await?;
    let votes = s.store.votes(&id).await?;
    Ok(attachment(votes_csv(&votes), "text/csv; charset=utf-8", format!("{}-votes.csv", project.name)))
}
