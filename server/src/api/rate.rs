//! The rater's endpoints. Each acts only on the calling rater's own assignments and labels;
//! nothing here reveals gold answers, scores, model identities, A/B sides or other raters.

use super::doc::Failures;
use apl_shared::{Assignment, LabelAck, LabelRequest, NextPair, RaterHome};
use axum::Json;
use axum::extract::{Path, State};

use super::auth::RaterAuth;
use super::body::JsonBody;
use super::{ApiResult, AppState};

#[utoipa::path(get, path = "/rate/me", tag = "rate", security(("rater" = [])),
    responses((status = 200, body = RaterHome, description = "The rater's project, guidelines and progress"), Failures))]
pub async fn me(RaterAuth(r): RaterAuth, State(s): State<AppState>) -> ApiResult<Json<RaterHome>> {
    let project = s.store.project(&r.project_id).await?;
    let progress = s.store.progress(&r).await?;
    let batch = s.store.batch(&r.project_id).await?;
    let guidelines = project.config.rating.guidelines;
    Ok(Json(RaterHome { name: r.name, project: project.name, guidelines, progress, batch }))
}

#[utoipa::path(post, path = "/rate/next", tag = "rate", security(("rater" = [])),
    responses((status = 200, body = NextPair, description = "The rater's current pair, or why there is none (done, wait with retry_after_seconds, nothing yet)"), Failures))]
pub async fn next(RaterAuth(r): RaterAuth, State(s): State<AppState>) -> ApiResult<Json<NextPair>> {
    Ok(Json(s.store.next_assignment(&r).await?.into()))
}

#[utoipa::path(post, path = "/rate/labels", tag = "rate", security(("rater" = [])), request_body = LabelRequest,
    responses((status = 200, body = LabelAck, description = "The label, acknowledged once committed; with `next: true` in the request, also the rater's next pair"), Failures))]
pub async fn label(
    RaterAuth(r): RaterAuth,
    State(s): State<AppState>,
    JsonBody(req): JsonBody<LabelRequest>,
) -> ApiResult<Json<LabelAck>> {
    Ok(Json(s.store.submit_label(&r, &req).await?))
}

#[utoipa::path(get, path = "/rate/labels", tag = "rate", security(("rater" = [])),
    responses((status = 200, body = Vec<LabelAck>, description = "The rater's own labels, newest first"), Failures))]
pub async fn own_labels(RaterAuth(r): RaterAuth, State(s): State<AppState>) -> ApiResult<Json<Vec<LabelAck>>> {
    Ok(Json(s.store.own_labels(&r, 100).await?))
}

#[utoipa::path(delete, path = "/rate/labels/{pair}", tag = "rate", security(("rater" = [])), params(("pair" = String, Path, description = "The pair")),
    responses((status = 200, body = Assignment, description = "The label undone; the pair comes back"), Failures))]
pub async fn undo(
    RaterAuth(r): RaterAuth,
    State(s): State<AppState>,
    Path(pair): Path<String>,
) -> ApiResult<Json<Assignment>> {
    Ok(Json(s.store.undo_label(&r, &pair).await?))
}
