//! The HTTP API and the static frontend. `app(state)` builds the whole router, so tests can
//! serve it on port 0 and talk HTTP to it.
//!
//! Every error leaves as JSON `{message}` through one type, [`AppError`], which never echoes
//! internals: a database or model failure is logged here and answered with a generic message.
//! Handlers are split by who calls them: `projects` and `data` (admin), `rate` (raters),
//! `jobs` (admin, with live progress), `results` (admin: rounds, checkpoints, evaluations),
//! `checks` (admin: human win-rate checks of evaluations), `openapi` (the document describing
//! all of them).
//!
//! The frontend is a single-page app with real paths (`/rate`, `/projects/ID`): when it is
//! built, any other path that is not one of its files is answered with its `index.html`, while
//! unknown `/api/` paths stay JSON 404s.

pub mod auth;
pub mod body;
pub mod checks;
pub mod data;
pub mod jobs;
pub mod openapi;
pub mod projects;
pub mod rate;
pub mod results;

use std::path::PathBuf;
use std::sync::Arc;

use apl_shared::{ApiError, Health, Pair, PairRequest};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, delete, get, post, put};
use axum::{Json, Router};
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::store::{Store, StoreError};
use crate::worker::Worker;
use apl_engine::model::ModelError;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub worker: Arc<Worker>,
    pub health: Arc<Health>,
    /// The built frontend (index.html, pkg/); a notice page is served when it is missing.
    pub dist: Option<PathBuf>,
}

/// The API's one error type.
#[derive(Debug)]
pub enum AppError {
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    TooLarge(String),
    Internal(String),
}

impl From<ModelError> for AppError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Input(m) => Self::BadRequest(m),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => Self::NotFound(m),
            StoreError::Conflict(m) => Self::Conflict(m),
            StoreError::Invalid(m) => Self::BadRequest(m),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Self::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            Self::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Self::Conflict(m) => (StatusCode::CONFLICT, m),
            Self::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            Self::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the server log".to_string())
            }
        };
        (status, Json(ApiError { message })).into_response()
    }
}

pub type ApiResult<T> = std::result::Result<T, AppError>;

/// A strict policy: only our own script, wasm and styles; nothing inline, no framing.
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// Body limits: small JSON requests, and uploads of prompt and preference files.
pub const JSON_LIMIT: usize = 64 * 1024;
pub const UPLOAD_LIMIT: usize = 64 * 1024 * 1024;

pub fn app(state: AppState) -> Router {
    let uploads = Router::new()
        .route("/projects/{id}/prompts", post(data::import_prompts))
        .route("/projects/{id}/pairs", post(data::import_pairs))
        .layer(DefaultBodyLimit::max(UPLOAD_LIMIT));
    let api = Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi::document))
        .route("/defaults", get(projects::defaults))
        .route("/pair", post(pair))
        .route("/projects", get(projects::list).post(projects::create))
        .route("/projects/{id}", get(projects::get_one))
        .route("/projects/{id}/config", put(projects::set_config))
        .route("/projects/{id}/prompts/imdb", post(data::import_imdb))
        .route("/projects/{id}/pairs", get(data::list_pairs))
        .route("/projects/{id}/export/dpo.jsonl", get(data::export_dpo))
        .route("/projects/{id}/export/votes.jsonl", get(data::export_votes_jsonl))
        .route("/projects/{id}/export/votes.csv", get(data::export_votes_csv))
        .route("/projects/{id}/raters", get(projects::raters).post(projects::create_rater))
        .route("/projects/{id}/raters/{rater}", delete(projects::disable_rater))
        .route("/projects/{id}/jobs", get(jobs::list).post(jobs::create))
        .route("/projects/{id}/rounds", get(results::rounds))
        .route("/projects/{id}/checkpoints", get(results::checkpoints))
        .route("/projects/{id}/evaluations", get(results::evaluations))
        .route("/projects/{id}/analytics", get(results::analytics))
        .route("/projects/{id}/checks", get(checks::list).post(checks::create))
        .route("/checks/{check}/pairs", get(checks::pairs))
        .route("/jobs/{id}", get(jobs::get_one))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/jobs/{id}/events", get(jobs::events))
        .route("/rate/me", get(rate::me))
        .route("/rate/next", post(rate::next))
        .route("/rate/labels", get(rate::own_labels).post(rate::label))
        .route("/rate/labels/{pair}", delete(rate::undo))
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
        .merge(uploads)
        .fallback(no_endpoint)
        .method_not_allowed_fallback(|axum::extract::OriginalUri(uri): axum::extract::OriginalUri| async move {
            let e = ApiError { message: format!("{} does not take this method", uri.path()) };
            (StatusCode::METHOD_NOT_ALLOWED, Json(e))
        });
    // `/api/` itself is not matched by the nest: without this route it would get index.html.
    let mut router = Router::new().nest("/api", api).route("/api/", any(no_endpoint));
    router = match &state.dist {
        Some(dir) if dir.join("index.html").exists() => {
            // `cargo xtask frontend` writes FILE.gz beside each asset: sent to browsers that
            // accept gzip (the wasm shrinks about threefold), with no compression work here.
            let index = ServeFile::new(dir.join("index.html")).precompressed_gzip();
            router.fallback_service(ServeDir::new(dir).precompressed_gzip().fallback(index))
        }
        _ => router.route("/", get(not_built)),
    };
    router
        .layer(SetResponseHeaderLayer::overriding(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)))
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        .with_state(state)
}

async fn no_endpoint(axum::extract::OriginalUri(uri): axum::extract::OriginalUri) -> AppError {
    AppError::NotFound(format!("no API endpoint at {}", uri.path()))
}

async fn health(State(s): State<AppState>) -> Json<Health> {
    Json((*s.health).clone())
}

/// Samples a pair from the base model (a preview for the admin; it occupies the model).
async fn pair(
    _: auth::Admin,
    State(s): State<AppState>,
    body::JsonBody(req): body::JsonBody<PairRequest>,
) -> ApiResult<Json<Pair>> {
    let worker = s.worker.clone();
    let pair = tokio::task::spawn_blocking(move || worker.pair(&req))
        .await
        .map_err(|e| AppError::Internal(format!("worker task: {e}")))??;
    Ok(Json(pair))
}

async fn not_built() -> Html<&'static str> {
    Html(
        "<!doctype html><meta charset=utf-8><title>apl</title>\
         <p>The web frontend is not built. Run <code>cargo xtask run</code> (or <code>cargo xtask frontend</code> \
         and restart). The API is up: <a href=/api/health>/api/health</a>, described at \
         <a href=/api/openapi.json>/api/openapi.json</a>.</p>",
    )
}
