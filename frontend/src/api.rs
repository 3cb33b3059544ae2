//! One function per API endpoint. Errors come back as the server's `{message}` text.

use apl_shared::{ApiError, Health, Pair, PairRequest};
use gloo_net::http::{Request, Response};

async fn decode<T: serde::de::DeserializeOwned>(resp: Result<Response, gloo_net::Error>) -> Result<T, String> {
    let resp = resp.map_err(|e| format!("cannot reach the server: {e}"))?;
    if resp.ok() {
        resp.json::<T>().await.map_err(|e| format!("unexpected response: {e}"))
    } else {
        match resp.json::<ApiError>().await {
            Ok(e) => Err(e.message),
            Err(_) => Err(format!("server answered {}", resp.status())),
        }
    }
}

pub async fn health() -> Result<Health, String> {
    decode(Request::get("/api/health").send().await).await
}

/// The admin token: from the `#admin=...` link the server prints on first start (then kept in
/// this browser's local storage, and dropped from the address bar).
pub fn admin_token() -> Option<String> {
    let window = web_sys::window()?;
    let storage = window.local_storage().ok().flatten();
    let hash = window.location().hash().unwrap_or_default();
    if let Some(t) = hash.strip_prefix("#admin=").filter(|t| !t.is_empty()) {
        if let Some(s) = &storage {
            let _ = s.set_item("apl_admin_token", t);
        }
        let _ = window.location().set_hash("");
        return Some(t.to_string());
    }
    storage.and_then(|s| s.get_item("apl_admin_token").ok().flatten())
}

pub async fn pair(req: &PairRequest) -> Result<Pair, String> {
    let token = admin_token().ok_or("sampling needs the admin link the server printed (…/#admin=…)")?;
    let r = Request::post("/api/pair")
        .header("Authorization", &format!("Bearer {token}"))
        .json(req)
        .map_err(|e| e.to_string())?;
    decode(r.send().await).await
}
