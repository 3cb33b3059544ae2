//! Admin endpoints for what the learning loop produced: rounds (with acquisition statistics),
//! checkpoints (with training curves) and evaluations (win-rates with their samples).

use axum::Json;
use axum::extract::{Path, State};

use super::auth::Admin;
use super::{ApiResult, AppState};
use crate::store::rounds::{CheckpointRow, EvaluationRow, RoundRow};

pub async fn rounds(_: Admin, State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Vec<RoundRow>>> {
    s.store.project(&id).await?;
    Ok(Json(s.store.rounds(&id).await?))
}

pub async fn checkpoints(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<CheckpointRow>>> {
    s.store.project(&id).await?;
    Ok(Json(s.store.checkpoints(&id).await?))
}

pub async fn evaluations(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<EvaluationRow>>> {
    s.store.project(&id).await?;
    Ok(Json(s.store.evaluations(&id).await?))
}
