//! Admin endpoints for human win-rate checks: send an evaluation's samples to chosen raters
//! (who label them blind, sides randomised, in the ordinary rater workspace), list the checks
//! with the human win-rate beside the judge's on the same pairs, and read one check's pairs for
//! the side-by-side view. Validation lives in `store::checks` and the figures in
//! `analytics::checks`; these only route, authorise and shape the replies.

use super::doc::Failures;
use apl_shared::{CheckPair, HumanCheck, NewHumanCheck};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::auth::Admin;
use super::body::JsonBody;
use super::{ApiResult, AppState};
use crate::analytics::checks::summarize;

/// `POST /api/projects/{id}/checks`.
#[utoipa::path(post, path = "/projects/{id}/checks", tag = "checks", security(("admin" = [])), params(("id" = String, Path, description = "The project")), request_body = NewHumanCheck,
    responses((status = 201, body = HumanCheck, description = "The check: the evaluation's samples sent to the raters, blind, sides randomised"), Failures))]
pub async fn create(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<NewHumanCheck>,
) -> ApiResult<(StatusCode, Json<HumanCheck>)> {
    Ok((StatusCode::CREATED, Json(summarize(s.store.create_check(&id, &req).await?))))
}

/// `GET /api/projects/{id}/checks`: newest first, figures from the labels so far.
#[utoipa::path(get, path = "/projects/{id}/checks", tag = "checks", security(("admin" = [])), params(("id" = String, Path, description = "The project")),
    responses((status = 200, body = Vec<HumanCheck>, description = "Checks, newest first: the raters' win-rate beside the judge's on the same pairs (95% bootstrap intervals), their agreement and Cohen's kappa"), Failures))]
pub async fn list(_: Admin, State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Vec<HumanCheck>>> {
    s.store.project(&id).await?;
    Ok(Json(s.store.checks(&id).await?.into_iter().map(summarize).collect()))
}

/// `GET /api/checks/{check}/pairs`.
#[utoipa::path(get, path = "/checks/{check}/pairs", tag = "checks", security(("admin" = [])), params(("check" = String, Path, description = "The check")),
    responses((status = 200, body = Vec<CheckPair>, description = "The pairs with the judge's outcome and the human votes"), Failures))]
pub async fn pairs(_: Admin, State(s): State<AppState>, Path(check): Path<String>) -> ApiResult<Json<Vec<CheckPair>>> {
    Ok(Json(s.store.check_pairs(&check).await?))
}
