//! The HTTP API and the static frontend. `app(state)` builds the whole router, so tests can
//! serve it on port 0 and talk HTTP to it.
//!
//! Every error leaves as JSON `{message}` through one type, [`AppError`], which never echoes
//! internals: a model failure is logged here and answered with a generic message.

use std::path::PathBuf;
use std::sync::Arc;

use apl_shared::{ApiError, Health, Pair, PairRequest};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::model::ModelError;
use crate::worker::Worker;

#[derive(Clone)]
pub struct AppState {
    pub worker: Arc<Worker>,
    pub health: Arc<Health>,
    /// The built frontend (index.html, pkg/); a notice page is served when it is missing.
    pub dist: Option<PathBuf>,
}

/// The API's one error type.
#[derive(Debug)]
pub enum AppError {
    BadRequest(String),
    NotFound(String),
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

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Self::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the server log".to_string())
            }
        };
        (status, Json(ApiError { message })).into_response()
    }
}

/// A strict policy: only our own script, wasm and styles; nothing inline, no framing.
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

pub fn app(state: AppState) -> Router {
    let api = Router::new().route("/health", get(health)).route("/pair", post(pair)).fallback(
        |axum::extract::OriginalUri(uri): axum::extract::OriginalUri| async move {
            AppError::NotFound(format!("no API endpoint at {}", uri.path()))
        },
    );
    let mut router = Router::new().nest("/api", api);
    router = match &state.dist {
        Some(dir) if dir.join("index.html").exists() => router.fallback_service(ServeDir::new(dir)),
        _ => router.route("/", get(not_built)),
    };
    router
        .layer(RequestBodyLimitLayer::new(64 * 1024))
        .layer(SetResponseHeaderLayer::overriding(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)))
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        .with_state(state)
}

async fn health(State(s): State<AppState>) -> Json<Health> {
    Json((*s.health).clone())
}

async fn pair(
    State(s): State<AppState>,
    body: Result<Json<PairRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Pair>, AppError> {
    let Json(req) = body.map_err(|e| AppError::BadRequest(format!("request body: {}", e.body_text())))?;
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
         and restart). The API is up: <a href=/api/health>/api/health</a>.</p>",
    )
}
