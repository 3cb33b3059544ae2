//! Admin endpoints for jobs, and their live progress as server-sent events.
//!
//! Progress lives in the database (the worker writes it with its heartbeat), so any server
//! process can stream any job's progress: the event stream polls the job row and sends it
//! whenever it changed, until the job ends.

use super::doc::Failures;
use std::convert::Infallible;
use std::time::Duration;

use apl_shared::{Cycle, Job, NewJob};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use tokio_stream::wrappers::ReceiverStream;

use super::auth::Admin;
use super::body::JsonBody;
use super::{ApiResult, AppError, AppState};

#[utoipa::path(post, path = "/projects/{id}/jobs", tag = "jobs", security(("admin" = [])), params(("id" = String, Path, description = "The project")), request_body = NewJob,
    responses((status = 201, body = Job, description = "The job, queued"), Failures))]
pub async fn create(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<NewJob>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    if req.params.pairs == Some(0) {
        return Err(AppError::BadRequest("params.pairs: must be at least 1".into()));
    }
    let job = s.store.create_job(&id, req.kind, &req.params).await?;
    s.worker.wake();
    Ok((StatusCode::CREATED, Json(job)))
}

#[utoipa::path(get, path = "/projects/{id}/cycle", tag = "jobs", security(("admin" = [])), params(("id" = String, Path, description = "The project")),
    responses((status = 200, body = Cycle, description = "Where the newest round stands: its step, the raters' progress and pace, the next action"), Failures))]
pub async fn cycle(_: Admin, State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Cycle>> {
    let project = s.store.project(&id).await?;
    Ok(Json(s.store.cycle(&project).await?))
}

#[utoipa::path(get, path = "/projects/{id}/jobs", tag = "jobs", security(("admin" = [])), params(("id" = String, Path, description = "The project")),
    responses((status = 200, body = Vec<Job>, description = "The project's jobs, newest first"), Failures))]
pub async fn list(_: Admin, State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Vec<Job>>> {
    s.store.project(&id).await?;
    Ok(Json(s.store.jobs(&id).await?))
}

#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs", security(("admin" = [])), params(("id" = String, Path, description = "The job")),
    responses((status = 200, body = Job, description = "The job"), Failures))]
pub async fn get_one(_: Admin, State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    Ok(Json(s.store.job(&id).await?))
}

#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "jobs", security(("admin" = [])), params(("id" = String, Path, description = "The job")),
    responses((status = 200, body = Job, description = "The job, cancelled"), Failures))]
pub async fn cancel(_: Admin, State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    Ok(Json(s.store.cancel_job(&id).await?))
}

/// `GET /api/jobs/{id}/events`: a `job` event with the whole job at start and at every
/// change, the last one when it ends.
#[utoipa::path(get, path = "/jobs/{id}/events", tag = "jobs", security(("admin" = [])),
    params(("id" = String, Path, description = "The job"), ("access_token" = Option<String>, Query, description = "The admin token, for browsers' EventSource")),
    responses((status = 200, content_type = "text/event-stream", body = Job, description = "Server-sent `job` events: the whole job at start and at every change, until it ends"), Failures))]
pub async fn events(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl axum::response::IntoResponse> {
    let first = s.store.job(&id).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(8);
    tokio::spawn(async move {
        let mut last: Option<Job> = None;
        let mut job = first;
        loop {
            if last.as_ref() != Some(&job) {
                let ev = Event::default().event("job").json_data(&job).expect("job serialises");
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
                if job.state.is_finished() {
                    return;
                }
                last = Some(job);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            job = match s.store.job(&id).await {
                Ok(j) => j,
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "job events: reading the job");
                    return;
                }
            };
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}
