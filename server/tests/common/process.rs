//! The real `apl` binary as a process: started on a free port over a given database, and
//! called over HTTP, for the tests that kill it, stop it or run several of it at once.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub const ADMIN: &str = "durability-admin-token-0123";

/// Starts `apl serve` (the tiny fixture model, no IMDB data) with `extra` arguments and returns
/// it with its base URL (read from its first line).
pub fn serve(data: &Path, database: &str, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_apl"))
        .args(["serve", "--no-prompts", "--addr", "127.0.0.1:0", "--admin-token", ADMIN])
        .arg("--model")
        .arg(super::fixture("llama"))
        .arg("--data-dir")
        .arg(data)
        .args(["--database", database])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("apl starts");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    // Keep draining its output so it never writes to a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).expect("serving line").trim_end_matches('/');
    (child, url.to_string())
}

/// A successful call's JSON answer (panics on any other).
pub async fn call(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> Value {
    let mut r = c.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.json().await.unwrap()
}

/// A new, empty database `{prefix}_{pid}` on the PostgreSQL server of `url`; its URL.
pub async fn fresh_postgres(url: &str, prefix: &str) -> String {
    sqlx::any::install_default_drivers();
    let name = format!("{prefix}_{}", std::process::id());
    let admin = sqlx::AnyPool::connect(url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(&admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
    format!("{}/{name}", url.rsplit_once('/').unwrap().0)
}
