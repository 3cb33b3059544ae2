//! Admin endpoints for human win-rate checks: send an evaluation's samples to chosen raters
//! (who label them blind, sides randomised, in the ordinary rater workspace), list the checks
//! with the human win-rate beside the judge's on the same pairs, and read one check's pairs for
//! the side-by-side view. Validation and figures live in `store::checks`; these only route,
//! authorise and shape the replies.

use apl_shared::{CheckPair, HumanCheck, NewHumanCheck};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::auth::Admin;
use super::body::JsonBody;
use super::{ApiResult, AppState};

/// `POST /api/projects/{id}/checks`.
pub async fn create(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<NewHumanCheck>,
) -> ApiResult<(StatusCode, Json<HumanCheck>)> {
    Ok((StatusCode::CREATED, Json(s.store.create_check(&id, &req).await?)))
}

/// `GET /api/projects/{id}/checks`: newest first, figures from the labels so far.
pub async fn list(_: Admin, State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Vec<HumanCheck>>> {
    s.store.project(&id).await?;
    Ok(Json(s.store.checks(&id).await?))
}

/// `GET /api/checks/{check}/pairs`.
pub async fn pairs(_: Admin, State(s): State<AppState>, Path(check): Path<String>) -> ApiResult<Json<Vec<CheckPair>>> {
    Ok(Json(s.store.check_pairs(&check).await?))
}
