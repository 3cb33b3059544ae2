//! Who is calling: the admin (the admin token) or a rater (their invite token), presented as
//! `Authorization: Bearer <token>` (or `?access_token=` where a browser cannot set headers,
//! as for server-sent events). Every handler names the caller it needs, so authorisation is
//! checked per handler, not per route prefix; tokens are compared as hashes in constant time.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::{AppError, AppState};
use crate::store::rating::Rater;
use crate::store::tokens;

/// The caller holds the admin token.
pub struct Admin;

/// The caller is this rater.
pub struct RaterAuth(pub Rater);

fn presented(parts: &Parts) -> Option<String> {
    if let Some(v) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        return v.strip_prefix("Bearer ").map(|t| t.trim().to_string());
    }
    parts.uri.query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token=").map(|t| t.to_string())))
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, AppError> {
        let Some(token) = presented(parts) else {
            return Err(AppError::Unauthorized(
                "this endpoint needs the admin token (Authorization: Bearer ...)".into(),
            ));
        };
        if tokens::is_admin(&s.store, &token).await? {
            return Ok(Admin);
        }
        if s.store.rater_by_token(&token).await?.is_some() {
            return Err(AppError::Forbidden("raters cannot use this endpoint".into()));
        }
        Err(AppError::Unauthorized("the token is not valid".into()))
    }
}

impl FromRequestParts<AppState> for RaterAuth {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, AppError> {
        let Some(token) = presented(parts) else {
            return Err(AppError::Unauthorized("this endpoint needs a rater token from an invite link".into()));
        };
        match s.store.rater_by_token(&token).await? {
            Some(r) => Ok(RaterAuth(r)),
            None => Err(AppError::Unauthorized("the rater token is not valid (or the rater was removed)".into())),
        }
    }
}
