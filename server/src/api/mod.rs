//! The HTTP API and the static frontend. `app(state)` builds the whole router, so tests can
//! serve it on port 0 and talk HTTP to it.
//!
//! Every error leaves as JSON `{message}` through one type, [`AppError`], which never echoes
//! internals: a database or model failure is logged here and answered with a generic message.
//! Handlers are split by who calls them: `projects` and `data` (admin), `rate` (raters),
//! `jobs` (admin, with live progress), `results` (admin: rounds, checkpoints, evaluations),
//! `checks` (admin: human win-rate checks of evaluations), `doc` (the OpenAPI document, generated
//! from the handlers' annotations; the API's routes are registered through it, so the two are
//! one list).
//!
//! The frontend is a single-page app with real paths (`/rate`, `/projects/ID`): when it is
//! built, any other path that is not one of its files is answered with its `index.html`, while
//! unknown `/api/` paths stay JSON 404s. API answers are gzipped on the fly for clients that
//! accept it (job event streams excepted); the frontend's files are precompressed by its build.

pub mod auth;
pub mod body;
pub mod checks;
pub mod data;
pub mod doc;
pub mod jobs;
pub mod limit;
pub mod projects;
pub mod rate;
pub mod results;

use std::path::PathBuf;
use std::sync::Arc;

use apl_shared::{ApiError, Health, Pair, PairRequest};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{DefaultPredicate, Predicate, SizeAbove};
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    /// Failed authentications per address.
    pub auth_limit: Arc<limit::AuthLimiter>,
    /// Most records one upload may hold (`apl serve --max-import-rows`).
    pub max_import_rows: usize,
}

/// The API's one error type. What a caller did wrong is answered with a message naming it;
/// what went wrong on the server is logged with its whole cause chain and answered with a
/// generic message, so internals (paths, SQL, upstream replies) never leave the server.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl AppError {
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal(Box::new(e))
    }
}

impl From<ModelError> for AppError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Input(m) => Self::BadRequest(m),
            other => Self::internal(other),
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => Self::NotFound(m),
            StoreError::Conflict(m) => Self::Conflict(m),
            StoreError::Invalid(m) => Self::BadRequest(m),
            other => Self::internal(other),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::TooManyRequests { message, retry_after } => {
                let headers = [(header::RETRY_AFTER, retry_after.to_string())];
                return (StatusCode::TOO_MANY_REQUESTS, headers, Json(ApiError { message })).into_response();
            }
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Self::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            Self::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Self::Conflict(m) => (StatusCode::CONFLICT, m),
            Self::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            Self::Internal(e) => {
                tracing::error!(error = %crate::error::describe(&*e), "internal error");
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

/// The API's routes with their OpenAPI document: every endpoint is registered here, by its
/// handler's `#[utoipa::path]`, and nowhere else.
pub(crate) fn documented() -> OpenApiRouter<AppState> {
    let uploads = OpenApiRouter::new()
        .routes(routes!(data::import_prompts, data::list_prompts))
        .routes(routes!(data::update_prompt, data::delete_prompt))
        .routes(routes!(data::import_pairs))
        .layer(DefaultBodyLimit::max(UPLOAD_LIMIT));
    let api = OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(doc::document))
        .routes(routes!(projects::defaults))
        .routes(routes!(pair))
        .routes(routes!(projects::list, projects::create))
        .routes(routes!(projects::get_one))
        .routes(routes!(projects::set_config))
        .routes(routes!(data::import_imdb))
        .routes(routes!(data::list_pairs))
        .routes(routes!(data::export_dpo))
        .routes(routes!(data::export_votes_jsonl))
        .routes(routes!(data::export_votes_csv))
        .routes(routes!(projects::raters, projects::create_rater))
        .routes(routes!(projects::disable_rater))
        .routes(routes!(jobs::list, jobs::create))
        .routes(routes!(jobs::cycle))
        .routes(routes!(results::rounds))
        .routes(routes!(results::checkpoints))
        .routes(routes!(results::evaluations))
        .routes(routes!(results::analytics))
        .routes(routes!(checks::list, checks::create))
        .routes(routes!(checks::pairs))
        .routes(routes!(jobs::get_one))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::events))
        .routes(routes!(rate::me))
        .routes(routes!(rate::next))
        .routes(routes!(rate::own_labels, rate::label))
        .routes(routes!(rate::undo))
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
        .merge(uploads);
    OpenApiRouter::with_openapi(doc::ApiDoc::openapi()).nest("/api", api)
}

pub fn app(state: AppState) -> Router {
    let (documented, _) = documented().split_for_parts();
    let method_fallback = |axum::extract::OriginalUri(uri): axum::extract::OriginalUri| async move {
        let e = ApiError { message: format!("{} does not take this method", uri.path()) };
        (StatusCode::METHOD_NOT_ALLOWED, Json(e))
    };
    // Unknown API paths are JSON 404s, never the frontend's index.html.
    let mut router = documented
        .route("/api", any(no_endpoint))
        .route("/api/", any(no_endpoint))
        .route("/api/{*rest}", any(no_endpoint))
        .method_not_allowed_fallback(method_fallback)
        // API answers are gzipped for clients that accept it (an evaluation's samples are
        // mostly repeated text). Added here, before the static files, so it wraps the API only:
        // those are precompressed. The default predicate leaves server-sent events
        // (`text/event-stream`, the jobs' live progress) alone, so they are not buffered.
        // Answers under 2 KiB (a rater's label acknowledgement with the next pair, ~1 KB, on
        // the hot path) go as they are: compressing them costs more than it saves.
        .layer(CompressionLayer::new().gzip(true).compress_when(DefaultPredicate::new().and(SizeAbove::new(2048))));
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

/// What the server runs.
#[utoipa::path(get, path = "/health", tag = "server", responses((status = 200, body = Health, description = "The model, device and prompt pool")))]
async fn health(State(s): State<AppState>) -> Json<Health> {
    Json((*s.health).clone())
}

/// Samples a pair from the base model (a preview for the admin; it occupies the model).
#[utoipa::path(post, path = "/pair", tag = "server", security(("admin" = [])), request_body = PairRequest,
    responses((status = 200, body = Pair, description = "Two completions of one prompt"), doc::Failures))]
async fn pair(
    _: auth::Admin,
    State(s): State<AppState>,
    body::JsonBody(req): body::JsonBody<PairRequest>,
) -> ApiResult<Json<Pair>> {
    let worker = s.worker.clone();
    let pair = tokio::task::spawn_blocking(move || worker.pair(&req)).await.map_err(AppError::internal)??;
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
