//! Admin endpoints for what the learning loop produced: rounds (with acquisition statistics),
//! checkpoints (with training curves), evaluations (win-rates with their samples), and the
//! analytics over them: agreement between raters and judges, raw and length-controlled
//! win-rates, the checkpoint leaderboard, and the judge's usage from its audit log.

use axum::Json;
use axum::extract::{Path, State};

use super::auth::Admin;
use super::{ApiResult, AppError, AppState};
use crate::analytics::project::{EvalRow, JudgeRow, ProjectAnalytics, VoteRow, build};
use crate::judge::ledger::summarize;
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

/// Label quality and evaluation statistics (see `analytics::project`), with the LLM judge's
/// usage summed from its audit log when this process can see it.
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
            .map(|v| VoteRow { pair: &v.pair_id, rater: &v.rater, choice: &v.choice, left: &v.left })
            .collect();
        let j: Vec<JudgeRow> = judge_rows.iter().map(|(p, j, c)| JudgeRow { pair: p, judge: j, choice: c }).collect();
        let e: Vec<EvalRow> = evals.iter().map(eval_games).collect();
        let mut out = build(&v, &j, &e, 0);
        out.judge_usage = log.and_then(|p| summarize(&p).ok());
        out
    })
    .await
    .map_err(|e| AppError::Internal(format!("analytics: {e}")))?;
    Ok(Json(report))
}

/// Games of an evaluation from its stored samples: (score, policy length - reference length).
fn eval_games(e: &EvaluationRow) -> EvalRow<'_> {
    let games = e.details["samples"]
        .as_array()
        .map(|samples| {
            samples
                .iter()
                .filter_map(|s| {
                    let score = match s["outcome"].as_str()? {
                        "win" => 1.0,
                        "loss" => 0.0,
                        _ => 0.5,
                    };
                    let len = |k: &str| s[k].as_str().map_or(0, |t| t.chars().count()) as f64;
                    Some((score, len("policy") - len("reference")))
                })
                .collect()
        })
        .unwrap_or_default();
    EvalRow { id: &e.id, checkpoint: e.checkpoint_id.as_deref(), judge: &e.judge, games }
}
