//! The rater's endpoints. Each acts only on the calling rater's own assignments and labels;
//! nothing here reveals gold answers, scores, model identities, A/B sides or other raters.

use apl_shared::{Assignment, LabelAck, LabelRequest, NextPair, RaterHome};
use axum::Json;
use axum::extract::{Path, State};

use super::auth::RaterAuth;
use super::body::JsonBody;
use super::{ApiResult, AppState};

pub async fn me(RaterAuth(r): RaterAuth, State(s): State<AppState>) -> ApiResult<Json<RaterHome>> {
    let project = s.store.project(&r.project_id).await?;
    let progress = s.store.progress(&r).await?;
    Ok(Json(RaterHome { name: r.name, project: project.name, guidelines: project.config.rating.guidelines, progress }))
}

pub async fn next(RaterAuth(r): RaterAuth, State(s): State<AppState>) -> ApiResult<Json<NextPair>> {
    Ok(Json(NextPair { assignment: s.store.next_assignment(&r).await? }))
}

pub async fn label(
    RaterAuth(r): RaterAuth,
    State(s): State<AppState>,
    JsonBody(req): JsonBody<LabelRequest>,
) -> ApiResult<Json<LabelAck>> {
    Ok(Json(s.store.submit_label(&r, &req).await?))
}

pub async fn own_labels(RaterAuth(r): RaterAuth, State(s): State<AppState>) -> ApiResult<Json<Vec<LabelAck>>> {
    Ok(Json(s.store.own_labels(&r, 100).await?))
}

pub async fn undo(
    RaterAuth(r): RaterAuth,
    State(s): State<AppState>,
    Path(pair): Path<String>,
) -> ApiResult<Json<Assignment>> {
    Ok(Json(s.store.undo_label(&r, &pair).await?))
}
