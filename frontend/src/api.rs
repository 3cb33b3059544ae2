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

pub async fn pair(req: &PairRequest) -> Result<Pair, String> {
    let r = Request::post("/api/pair").json(req).map_err(|e| e.to_string())?;
    decode(r.send().await).await
}
