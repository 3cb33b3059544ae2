//! Who is calling: the admin (the admin token) or a rater (their invite token), presented as
//! `Authorization: Bearer <token>`; `?access_token=` only on the server-sent event streams
//! (`.../events`), where a browser's EventSource cannot set headers (a token in a URL ends up in
//! logs and histories, so nowhere else). Every handler names the caller it needs, so
//! authorisation is checked per handler, not per route prefix; tokens are compared as hashes in
//! constant time. Wrong tokens are counted per client address (`limit`); an invite past its
//! expiry is refused as such.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::{AppError, AppState};
use crate::store::rating::{Rater, TokenRefused};
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
    if !parts.uri.path().ends_with("/events") {
        return None;
    }
    parts.uri.query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token=").map(|t| t.to_string())))
}

/// The client's address, when the server was started with connection info.
fn peer(parts: &Parts) -> Option<std::net::IpAddr> {
    parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())
}

/// Refuses a locked-out address before looking at its token.
fn not_locked(parts: &Parts, s: &AppState) -> Result<(), AppError> {
    match peer(parts).and_then(|ip| s.auth_limit.locked(ip)) {
        Some(left) => Err(AppError::TooManyRequests {
            message: "too many wrong tokens from this address; try again in a minute".into(),
            retry_after: left.as_secs().max(1),
        }),
        None => Ok(()),
    }
}

/// Counts a wrong token against the caller's address.
fn wrong(parts: &Parts, s: &AppState, e: AppError) -> AppError {
    if let Some(ip) = peer(parts) {
        s.auth_limit.failed(ip);
    }
    e
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, AppError> {
        let Some(token) = presented(parts) else {
            return Err(AppError::Unauthorized(
                "this endpoint needs the admin token (Authorization: Bearer ...)".into(),
            ));
        };
        not_locked(parts, s)?;
        if tokens::is_admin(&s.store, &token).await? {
            return Ok(Admin);
        }
        if s.store.rater_by_token(&token).await?.is_ok() {
            return Err(AppError::Forbidden("raters cannot use this endpoint".into()));
        }
        Err(wrong(parts, s, AppError::Unauthorized("the token is not valid".into())))
    }
}

impl FromRequestParts<AppState> for RaterAuth {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, AppError> {
        let Some(token) = presented(parts) else {
            return Err(AppError::Unauthorized("this endpoint needs a rater token from an invite link".into()));
        };
        not_locked(parts, s)?;
        match s.store.rater_by_token(&token).await? {
            Ok(r) => Ok(RaterAuth(r)),
            Err(TokenRefused::Expired) => {
                Err(AppError::Unauthorized("this invite has expired; ask the project's admin for a new one".into()))
            }
            Err(TokenRefused::Unknown) => Err(wrong(
                parts,
                s,
                AppError::Unauthorized("the rater token is not valid (or the rater was removed)".into()),
            )),
        }
    }
}
