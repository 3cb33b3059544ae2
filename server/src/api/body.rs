//! Request bodies with errors in the API's shape: a malformed or oversized body is answered
//! with a JSON message saying what was wrong, like every other error.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::AppError;

/// `Json<T>` whose rejection is an [`AppError`].
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(JsonRejection::BytesRejection(e)) => Err(bytes_error(e)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(AppError::TooLarge(too_large())),
            Err(e) => Err(AppError::BadRequest(format!("request body: {}", e.body_text()))),
        }
    }
}

/// Raw upload bytes whose rejection is an [`AppError`].
pub struct Upload(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Upload {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        Bytes::from_request(req, state).await.map(Self).map_err(bytes_error)
    }
}

fn too_large() -> String {
    "request body: too large (JSON requests up to 64 KiB, uploads up to 64 MiB)".to_string()
}

fn bytes_error(e: BytesRejection) -> AppError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::TooLarge(too_large())
    } else {
        AppError::BadRequest(format!("request body: {}", e.body_text()))
    }
}
