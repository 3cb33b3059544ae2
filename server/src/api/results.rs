//! Admin endpoints for what the learning loop produced: rounds (with acquisition statistics),
//! checkpoints (with training curves), evaluations (win-rates with their samples), and the
//! analytics over them: agreement between raters and judges, raw and length-controlled
//! win-rates, the checkpoint leaderboard, and the judge's usage from its audit log.

use super::doc::Failures;
use axum::Json;
use axum::extract::{Path, State};

use super::auth::Admin;
use super::{ApiResult, AppError, AppState};
use crate::analytics::project::{EvalRow, JudgeRow, ProjectAnalytics, VoteRow, build};
use crate::judge::ledger::summarize;
use crate::store::rounds::{CheckpointRow, EvaluationRow, RoundRow};

#[utoipa::path(get, path = "/projects/{id}/rounds", tag = "results", security(("admin" = [])), params(("id" = String, Path, description = "The project")),
    responses((status = 200, body = Vec<RoundRow>, description = "Acquired rounds with their statistics"), Failures))]
pub async fn rounds(_: Admin, State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Vec<RoundRow>>> {
    s.store.project(&id).await?;
    Ok(Json(s.store.rounds(&id).await?))
}

#[utoipa::path(get, path = "/projects/{id}/checkpoints", tag = "results", security(("admin" = [])), params(("id" = String, Path, description = "The project")),
    responses((status = 200, body = Vec<CheckpointRow>, description = "Trained checkpoints with their training curves"), Failures))]
pub async fn checkpoints(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<CheckpointRow>>> {
    s.store.project(&id).await?;
    Ok(Json(s.store.checkpoints(&id).await?))
}

#[utoipa::path(get, path = "/projects/{id}/evaluations", tag = "results", security(("admin" = [])), params(("id" = String, Path, description = "The project")),
    responses((status = 200, body = Vec<EvaluationRow>, description = "Win-rates of checkpoints, with their samples"), Failures))]
pub async fn evaluations(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<EvaluationRow>>> {
    s.store.project(&id).await?;
    Ok(Json(s.store.evaluations(&id).await?))
}

/// Label quality and evaluation statistics (see `analytics::project`), with the LLM judge's
/// usage summed from its audit log when this process can see it.
#[utoipa::path(get, path = "/projects/{id}/analytics", tag = "results", security(("admin" = [])), params(("id" = String, Path, description = "The project")),
    responses((status = 200, body = ProjectAnalytics, description = "Agreement (Krippendorff alpha, Fleiss and Cohen kappa, human vs judge), left-side bias, raw and length-controlled win-rates, Bradley-Terry leaderboard, judge usage; intervals are 95% bootstrap"), Failures))]
pub async fn analytics(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ProjectAnalytics>> {
    s.store.project(&id).await?;
    let votes = s.store.votes(&id).await?;
    let judge_rows = s.store.judge_labels(&id).await?;
    let evals = s.store.evaluations(&id).await?;
    let log = Some(s.worker.judge_log(&id));
    let report = tokio::task::spawn_blocking(move || {
        let v: Vec<VoteRow> = votes
            .iter()
            .map(|v| VoteRow { pair: &v.pair_id, rater: &v.rater, choice: v.choice, left: v.left })
            .collect();
        let j: Vec<JudgeRow> = judge_rows.iter().map(|(p, j, c)| JudgeRow { pair: p, judge: j, choice: *c }).collect();
        let e: Vec<EvalRow> = evals.iter().map(eval_games).collect();
        let mut out = build(&v, &j, &e, 0);
        out.judge_usage = log.and_then(|p| summarize(&p).ok());
        out
    })
    .await
    .map_err(AppError::internal)?;
    Ok(Json(report))
}

/// Games of an evaluation from its stored samples: (score, policy length - baseline length).
fn eval_games(e: &EvaluationRow) -> EvalRow<'_> {
    let len = |t: &str| t.chars().count() as f64;
    let games = e
        .details
        .samples
        .iter()
        .filter_map(|s| Some((s.outcome?.score(), len(&s.policy) - len(&s.baseline))))
        .collect();
    EvalRow { id: &e.id, checkpoint: e.checkpoint_id.as_deref(), judge: &e.judge, games }
}
