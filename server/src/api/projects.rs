//! Admin endpoints for projects and their raters. A new project's configuration starts from
//! its task ([`new_config`]): raters of an IMDB project are asked about sentiment, of a generic
//! one about helpfulness; a project keeps whatever guidelines it stored.

use super::doc::Failures;
use apl_shared::{
    NewProject, NewRater, Project, ProjectConfig, ProjectDetail, RaterInvite, RaterStats, RatingConfig, Task,
};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::auth::Admin;
use super::body::JsonBody;
use super::{ApiResult, AppError, AppState};

/// Checks a configuration and fills every loop setting with its default.
fn checked(cfg: ProjectConfig) -> ApiResult<ProjectConfig> {
    let r = &cfg.rating;
    if r.overlap == 0 || r.overlap > 50 {
        return Err(AppError::BadRequest("rating.overlap: must be 1 to 50".into()));
    }
    if !(0.0..=1.0).contains(&r.gold_rate) {
        return Err(AppError::BadRequest("rating.gold_rate: must be between 0 and 1".into()));
    }
    if r.lease_seconds < 10 || r.lease_seconds > 7 * 24 * 3600 {
        return Err(AppError::BadRequest("rating.lease_seconds: must be 10 s to a week".into()));
    }
    if !(r.auto_continue.fraction > 0.0 && r.auto_continue.fraction <= 1.0) {
        return Err(AppError::BadRequest("rating.auto_continue.fraction: must be above 0 and at most 1".into()));
    }
    if r.guidelines.chars().count() > 20_000 {
        return Err(AppError::BadRequest("rating.guidelines: longer than 20000 characters".into()));
    }
    cfg.loop_settings.validate().map_err(|e| AppError::BadRequest(e.within("loop_settings").to_string()))?;
    Ok(cfg)
}

/// A new project's configuration: the task's defaults ([`ProjectConfig::for_task`]) when none is
/// sent; one sent keeps its guidelines unless they are empty or the generic placeholder a
/// configuration without guidelines reads as, which take the task's.
fn new_config(task: Task, sent: Option<ProjectConfig>) -> ProjectConfig {
    let Some(mut cfg) = sent else { return ProjectConfig::for_task(task) };
    let g = cfg.rating.guidelines.trim();
    if g.is_empty() || g == RatingConfig::default().guidelines {
        cfg.rating.guidelines = task.guidelines().into();
    }
    cfg
}

/// `GET /api/defaults`: a project configuration with every default spelled out.
#[utoipa::path(get, path = "/defaults", tag = "projects", security(("admin" = [])),
    responses((status = 200, body = ProjectConfig, description = "A project configuration with every default"), Failures))]
pub async fn defaults(_: Admin) -> ApiResult<Json<ProjectConfig>> {
    Ok(Json(checked(ProjectConfig::default())?))
}

#[utoipa::path(get, path = "/projects", tag = "projects", security(("admin" = [])),
    responses((status = 200, body = Vec<Project>, description = "Every project"), Failures))]
pub async fn list(_: Admin, State(s): State<AppState>) -> ApiResult<Json<Vec<Project>>> {
    Ok(Json(s.store.projects().await?))
}

#[utoipa::path(post, path = "/projects", tag = "projects", security(("admin" = [])), request_body = NewProject,
    responses((status = 201, body = Project, description = "The project created"), Failures))]
pub async fn create(
    _: Admin,
    State(s): State<AppState>,
    JsonBody(req): JsonBody<NewProject>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    let cfg = checked(new_config(req.task, req.config))?;
    Ok((StatusCode::CREATED, Json(s.store.create_project(&req.name, req.task, &cfg).await?)))
}

#[utoipa::path(get, path = "/projects/{id}", tag = "projects", security(("admin" = [])), params(("id" = String, Path, description = "The project")),
    responses((status = 200, body = ProjectDetail, description = "A project with its counts"), Failures))]
pub async fn get_one(_: Admin, State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<ProjectDetail>> {
    let project = s.store.project(&id).await?;
    let stats = s.store.project_stats(&id).await?;
    Ok(Json(ProjectDetail { project, stats }))
}

#[utoipa::path(put, path = "/projects/{id}/config", tag = "projects", security(("admin" = [])), params(("id" = String, Path, description = "The project")), request_body = ProjectConfig,
    responses((status = 200, body = Project, description = "The project with its new configuration"), Failures))]
pub async fn set_config(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(cfg): JsonBody<ProjectConfig>,
) -> ApiResult<Json<Project>> {
    let cfg = checked(cfg)?;
    Ok(Json(s.store.set_project_config(&id, &cfg).await?))
}

#[utoipa::path(get, path = "/projects/{id}/raters", tag = "projects", security(("admin" = [])), params(("id" = String, Path, description = "The project")),
    responses((status = 200, body = Vec<RaterStats>, description = "Raters with counts, speed and gold accuracy"), Failures))]
pub async fn raters(_: Admin, State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Vec<RaterStats>>> {
    s.store.project(&id).await?;
    Ok(Json(s.store.rater_stats(&id).await?))
}

#[utoipa::path(post, path = "/projects/{id}/raters", tag = "projects", security(("admin" = [])), params(("id" = String, Path, description = "The project")), request_body = NewRater,
    responses((status = 201, body = RaterInvite, description = "The rater and their invite link (the token is shown this once)"), Failures))]
pub async fn create_rater(
    _: Admin,
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<NewRater>,
) -> ApiResult<(StatusCode, Json<RaterInvite>)> {
    let (rater, token) = s.store.create_rater(&id, &req).await?;
    let invite_path = format!("/rate#token={token}");
    Ok((StatusCode::CREATED, Json(RaterInvite { rater, token, invite_path })))
}

#[utoipa::path(delete, path = "/projects/{id}/raters/{rater}", tag = "projects", security(("admin" = [])),
    params(("id" = String, Path, description = "The project"), ("rater" = String, Path, description = "The rater")),
    responses((status = 204, description = "Removed; their open leases return to the pool"), Failures))]
pub async fn disable_rater(
    _: Admin,
    State(s): State<AppState>,
    Path((id, rater)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.store.disable_rater(&id, &rater).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apl_shared::Vocabulary;

    /// Each task asks raters its own question; a project's own guidelines are kept.
    #[test]
    fn new_projects_get_their_tasks_guidelines() {
        let imdb = new_config(Task::Imdb, None);
        assert!(imdb.rating.guidelines.contains("positive"), "{}", imdb.rating.guidelines);
        assert!(imdb.rating.guidelines.contains("sentiment"), "{}", imdb.rating.guidelines);
        assert!(imdb.rating.guidelines.contains("fluent"), "{}", imdb.rating.guidelines);
        assert_eq!(imdb.loop_settings.judge.task, apl_shared::settings::JudgeTask::Imdb);
        let generic = new_config(Task::Generic, None);
        assert!(generic.rating.guidelines.contains("helpful"), "{}", generic.rating.guidelines);
        assert!(generic.rating.guidelines.contains("harmful"), "{}", generic.rating.guidelines);
        assert_eq!(generic.loop_settings.judge.task, apl_shared::settings::JudgeTask::Helpful);
        let summary = new_config(Task::Summarize, None);
        assert!(summary.rating.guidelines.contains("summary"), "{}", summary.rating.guidelines);
        assert_eq!(summary.loop_settings.judge.task, apl_shared::settings::JudgeTask::Summarize);
        // Every task's defaults pass the server's checks, each with its own guidelines.
        let all: Vec<String> = Task::ALL
            .iter()
            .map(|&t| checked(new_config(t, None)).expect("the defaults are valid").rating.guidelines)
            .collect();
        assert!(all.iter().enumerate().all(|(i, g)| !all[..i].contains(g)), "{all:?}");
        // A configuration sent with its own guidelines keeps them; an empty or generic one
        // takes the task's.
        let mut own = ProjectConfig::default();
        own.rating.guidelines = "Pick the funnier one.".into();
        assert_eq!(new_config(Task::Imdb, Some(own)).rating.guidelines, "Pick the funnier one.");
        assert_eq!(new_config(Task::Imdb, Some(ProjectConfig::default())).rating.guidelines, Task::Imdb.guidelines());
        let mut empty = ProjectConfig::default();
        empty.rating.guidelines = " ".into();
        assert_eq!(new_config(Task::Generic, Some(empty)).rating.guidelines, Task::Generic.guidelines());
    }
}
