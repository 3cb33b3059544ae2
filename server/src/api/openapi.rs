//! `GET /api/openapi.json`: an OpenAPI 3.1 document of the API.
//!
//! Schemas are derived from example values of the very types the handlers use (the `shared`
//! crate), so a renamed or added field shows up here without anyone editing the document; the
//! endpoint table below is checked against the router by the integration tests (every
//! documented path answers something other than "no API endpoint").

use apl_shared::*;
use axum::Json;
use serde::Serialize;
use serde_json::{Map, Value, json};

/// Who may call an endpoint.
#[derive(Clone, Copy)]
enum Who {
    Public,
    Admin,
    Rater,
}

struct Endpoint {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    who: Who,
    /// Schema name of the JSON body, or a media type for uploads (`text/...`).
    request: Option<&'static str>,
    /// Schema name of the response (`[Name]` for a list), or a media type for downloads.
    response: Option<&'static str>,
    /// Query parameters: (name, description).
    query: &'static [(&'static str, &'static str)],
}

const fn ep(method: &'static str, path: &'static str, summary: &'static str, who: Who) -> Endpoint {
    Endpoint { method, path, summary, who, request: None, response: None, query: &[] }
}

impl Endpoint {
    const fn req(mut self, r: &'static str) -> Self {
        self.request = Some(r);
        self
    }
    const fn resp(mut self, r: &'static str) -> Self {
        self.response = Some(r);
        self
    }
    const fn query(mut self, q: &'static [(&'static str, &'static str)]) -> Self {
        self.query = q;
        self
    }
}

const ENDPOINTS: &[Endpoint] = &[
    ep("get", "/api/health", "What the server runs", Who::Public).resp("Health"),
    ep("get", "/api/openapi.json", "This document", Who::Public),
    ep("get", "/api/defaults", "A project configuration with every default", Who::Admin).resp("ProjectConfig"),
    ep("post", "/api/pair", "Sample a pair from the starting model (preview)", Who::Admin)
        .req("PairRequest")
        .resp("Pair"),
    ep("get", "/api/projects", "List projects", Who::Admin).resp("[Project]"),
    ep("post", "/api/projects", "Create a project", Who::Admin).req("NewProject").resp("Project"),
    ep("get", "/api/projects/{id}", "A project with its counts", Who::Admin).resp("ProjectDetail"),
    ep("put", "/api/projects/{id}/config", "Replace a project's configuration", Who::Admin)
        .req("ProjectConfig")
        .resp("Project"),
    ep("post", "/api/projects/{id}/prompts", "Import prompts (all or nothing)", Who::Admin)
        .req("text/plain")
        .resp("ImportReport")
        .query(&[("format", "jsonl or csv"), ("split", "train (default) or eval"), ("tldr", "TL;DR format")]),
    ep("post", "/api/projects/{id}/prompts/imdb", "Import prompts from the built-in IMDB pool", Who::Admin)
        .req("ImdbImport")
        .resp("ImportReport"),
    ep("post", "/api/projects/{id}/pairs", "Import TRL preference pairs (all or nothing)", Who::Admin)
        .req("application/x-ndjson")
        .resp("ImportReport")
        .query(&[("format", "trl"), ("gold", "store as gold pairs"), ("rate", "also send to raters")]),
    ep("get", "/api/projects/{id}/pairs", "Pairs with acquisition scores and vote counts", Who::Admin)
        .resp("[PairRecord]")
        .query(&[("round", "only this round"), ("limit", "1 to 1000, default 100"), ("offset", "default 0")]),
    ep("get", "/api/projects/{id}/export/dpo.jsonl", "Labelled pairs as TRL DPO JSONL with metadata", Who::Admin)
        .resp("application/x-ndjson")
        .query(&[("source", "human (default), judge or human_then_judge")]),
    ep("get", "/api/projects/{id}/export/votes.jsonl", "Every human vote", Who::Admin).resp("application/x-ndjson"),
    ep("get", "/api/projects/{id}/export/votes.csv", "Every human vote", Who::Admin).resp("text/csv"),
    ep("get", "/api/projects/{id}/raters", "Raters with counts, speed and gold accuracy", Who::Admin)
        .resp("[RaterStats]"),
    ep("post", "/api/projects/{id}/raters", "Create a rater and their invite link", Who::Admin)
        .req("NewRater")
        .resp("RaterInvite"),
    ep("delete", "/api/projects/{id}/raters/{rater}", "Remove a rater (their open leases return)", Who::Admin),
    ep("get", "/api/projects/{id}/jobs", "Jobs of a project, newest first", Who::Admin).resp("[Job]"),
    ep("post", "/api/projects/{id}/jobs", "Queue a job", Who::Admin).req("NewJob").resp("Job"),
    ep("get", "/api/projects/{id}/rounds", "Acquired rounds with their statistics", Who::Admin).resp("[Round]"),
    ep("get", "/api/projects/{id}/checkpoints", "Trained checkpoints with their training curves", Who::Admin)
        .resp("[Checkpoint]"),
    ep("get", "/api/projects/{id}/evaluations", "Win-rates of checkpoints, with their samples", Who::Admin)
        .resp("[Evaluation]"),
    ep(
        "get",
        "/api/projects/{id}/analytics",
        "Agreement (Krippendorff alpha, Fleiss and Cohen kappa, human vs judge), left-side bias, raw and \
         length-controlled win-rates, Bradley-Terry leaderboard, judge usage; intervals are 95% bootstrap",
        Who::Admin,
    )
    .resp("Analytics"),
    ep(
        "post",
        "/api/projects/{id}/checks",
        "Send an evaluation's samples (policy against reference) to chosen raters, blind and with sides \
         randomised, for a human win-rate check",
        Who::Admin,
    )
    .req("NewHumanCheck")
    .resp("HumanCheck"),
    ep(
        "get",
        "/api/projects/{id}/checks",
        "Human win-rate checks, newest first: the raters' win-rate beside the judge's on the same pairs (95% \
         bootstrap intervals), their agreement and Cohen's kappa",
        Who::Admin,
    )
    .resp("[HumanCheck]"),
    ep("get", "/api/checks/{check}/pairs", "A check's pairs with the judge's outcome and the human votes", Who::Admin)
        .resp("[CheckPair]"),
    ep("get", "/api/jobs/{id}", "A job", Who::Admin).resp("Job"),
    ep("post", "/api/jobs/{id}/cancel", "Cancel a queued or running job", Who::Admin).resp("Job"),
    ep("get", "/api/jobs/{id}/events", "Live progress: server-sent `job` events until the job ends", Who::Admin)
        .resp("text/event-stream")
        .query(&[("access_token", "the admin token, for browsers' EventSource")]),
    ep("get", "/api/rate/me", "The rater's project, guidelines and progress", Who::Rater).resp("RaterHome"),
    ep("post", "/api/rate/next", "The rater's current pair, or none left", Who::Rater).resp("NextPair"),
    ep("post", "/api/rate/labels", "Label the current pair (acknowledged once committed)", Who::Rater)
        .req("LabelRequest")
        .resp("LabelAck"),
    ep("get", "/api/rate/labels", "The rater's own labels, newest first", Who::Rater).resp("[LabelAck]"),
    ep("delete", "/api/rate/labels/{pair}", "Undo a label; the pair comes back", Who::Rater).resp("Assignment"),
];

/// A JSON Schema for the shape of `v` (optional fields are given non-null example values and
/// marked nullable).
fn schema_of(v: &Value, nullable: bool) -> Value {
    let mut s = match v {
        Value::Null => json!({}),
        Value::Bool(_) => json!({"type": "boolean"}),
        Value::Number(n) if n.is_f64() => json!({"type": "number"}),
        Value::Number(_) => json!({"type": "integer"}),
        Value::String(_) => json!({"type": "string"}),
        Value::Array(a) => json!({"type": "array", "items": a.first().map_or(json!({}), |x| schema_of(x, false))}),
        Value::Object(o) => {
            let props: Map<String, Value> = o.iter().map(|(k, x)| (k.clone(), schema_of(x, false))).collect();
            json!({"type": "object", "properties": props})
        }
    };
    if nullable && let Some(t) = s.get("type").cloned() {
        s["type"] = json!([t, "null"]);
    }
    s
}

fn example<T: Serialize>(t: T) -> Value {
    serde_json::to_value(t).expect("examples serialise")
}

/// One example of each named type, with every optional field filled.
fn examples() -> Vec<(&'static str, Value)> {
    let progress = RaterProgress { done: 3, target: 40 };
    let assignment = Assignment {
        pair: "0192f0c2...".into(),
        prompt: "This film".into(),
        left: "was wonderful".into(),
        right: "was dull".into(),
        lease_expires_at: 1_764_300_000_000,
        progress,
    };
    let stats = RaterStats {
        id: "r".into(),
        name: "Ada".into(),
        quota: Some(100),
        disabled: false,
        labels: 3,
        skips: 0,
        gold_answered: 1,
        gold_correct: 1,
        median_seconds: Some(4.5),
        created_at: 0,
    };
    let config = ProjectConfig {
        rating: RatingConfig::default(),
        loop_settings: serde_json::to_value(crate::worker::settings::LoopSettings::default()).expect("serialise"),
    };
    let project =
        Project { id: "p".into(), name: "imdb".into(), task: "imdb".into(), config: config.clone(), created_at: 0 };
    let job = Job {
        id: "j".into(),
        project_id: "p".into(),
        kind: "round".into(),
        params: json!({"pairs": 64}),
        state: "running".into(),
        progress: JobProgress {
            phase: "training".into(),
            step: 3,
            total: 24,
            loss: Some(0.69),
            eta_seconds: Some(12.0),
            message: String::new(),
        },
        result: Some(json!({})),
        error: Some(String::new()),
        attempts: 1,
        created_at: 0,
        started_at: Some(0),
        finished_at: Some(0),
    };
    let completion = Completion { text: "was wonderful".into(), tokens: 3, logprob: -4.5 };
    let round = crate::store::rounds::RoundRow {
        number: 1,
        acquisition: "certainty".into(),
        policy_checkpoint: Some("c".into()),
        pairs: 64,
        stats: json!({"prompts_drawn": 256, "sampling_seconds": 1.5}),
        created_at: 0,
    };
    let checkpoint = crate::store::rounds::CheckpointRow {
        id: "c".into(),
        round: 1,
        path: String::new(),
        pairs: 64,
        report: json!({"epoch_losses": [0.69, 0.5], "steps": 8}),
        created_at: 0,
    };
    let evaluation = crate::store::rounds::EvaluationRow {
        id: "e".into(),
        checkpoint_id: Some("c".into()),
        judge: "imdb-sentiment-nb".into(),
        baseline: "reference samples".into(),
        win_rate: 0.62,
        stderr: 0.04,
        n: 128,
        details: json!({"samples": [{"prompt_id": "q", "prompt": "p", "policy": "a", "reference": "b", "outcome": "win"}]}),
        created_at: 0,
    };
    let analytics = {
        use crate::analytics::project::{EvalRow, JudgeRow, VoteRow, build};
        let v = |pair, rater, choice| VoteRow { pair, rater, choice, left: "a" };
        let votes = [v("p1", "r1", "a"), v("p1", "r2", "a"), v("p2", "r1", "b"), v("p2", "r2", "a")];
        let judges = [JudgeRow { pair: "p1", judge: "llm:gpt-4", choice: "a" }];
        let evals =
            [EvalRow { id: "e", checkpoint: Some("c"), judge: "llm:gpt-4", games: vec![(1.0, 2.0), (0.0, -1.0)] }];
        let mut a = example(build(&votes, &judges, &evals, 0));
        a["judge_usage"] = example(crate::judge::ledger::LedgerSummary::default());
        a
    };
    let interval = RateInterval { rate: 0.6, low: 0.45, high: 0.75, n: 40 };
    let check = HumanCheck {
        id: "h".into(),
        evaluation: "e".into(),
        checkpoint: Some("c".into()),
        judge: "llm:gpt-4".into(),
        raters: vec!["r".into()],
        overlap: 2,
        pairs: 40,
        votes: 80,
        target_votes: 80,
        human: Some(interval),
        judge_rate: Some(interval),
        agreement: Some(0.8),
        kappa: Some(0.6),
        created_at: 0,
    };
    vec![
        (
            "NewHumanCheck",
            example(NewHumanCheck {
                evaluation: "e".into(),
                raters: vec!["r".into()],
                overlap: Some(2),
                pairs: Some(40),
            }),
        ),
        ("RateInterval", example(interval)),
        ("HumanCheck", example(check)),
        (
            "CheckPair",
            example(CheckPair {
                pair: "x".into(),
                prompt: "p".into(),
                policy: "a".into(),
                reference: "b".into(),
                judge: "win".into(),
                human: vec!["win".into(), "tie".into()],
            }),
        ),
        ("Analytics", analytics),
        ("Round", example(round)),
        ("Checkpoint", example(checkpoint)),
        ("Evaluation", example(evaluation)),
        ("ApiError", example(ApiError { message: "what was wrong".into() })),
        (
            "Health",
            example(Health {
                status: "ok".into(),
                version: "0.1.0".into(),
                model: "m".into(),
                architecture: "llama".into(),
                parameters: 1,
                device: "cpu".into(),
                prompts: 1,
            }),
        ),
        ("PairRequest", example(PairRequest { prompt: Some("This film".into()), seed: Some(1) })),
        (
            "Pair",
            example(Pair {
                prompt: "This film".into(),
                completions: [completion.clone(), completion],
                seed: 1,
                temperature: 0.7,
                elapsed_ms: 1,
            }),
        ),
        ("ProjectConfig", example(&config)),
        ("NewProject", example(NewProject { name: "imdb".into(), task: "imdb".into(), config: Some(config.clone()) })),
        ("Project", example(&project)),
        ("ProjectDetail", example(ProjectDetail { project, stats: ProjectStats::default() })),
        ("ImportReport", example(ImportReport { imported: 10 })),
        ("ImdbImport", json!({"train": 2048, "eval": 128})),
        ("NewRater", example(NewRater { name: "Ada".into(), quota: Some(100) })),
        (
            "RaterInvite",
            example(RaterInvite {
                rater: stats.clone(),
                token: "apl_rater_...".into(),
                invite_path: "/rate#token=...".into(),
            }),
        ),
        ("RaterStats", example(&stats)),
        (
            "RaterHome",
            example(RaterHome { name: "Ada".into(), project: "imdb".into(), guidelines: "...".into(), progress }),
        ),
        ("Assignment", example(&assignment)),
        ("NextPair", example(NextPair { assignment: Some(assignment) })),
        (
            "LabelRequest",
            example(LabelRequest {
                pair: "0192f0c2...".into(),
                choice: RaterChoice::Left,
                time_ms: 4200,
                rationale: Some("more positive".into()),
            }),
        ),
        (
            "LabelAck",
            example(LabelAck { pair: "0192f0c2...".into(), choice: RaterChoice::Left, created_at: 0, progress }),
        ),
        ("NewJob", example(NewJob { kind: "round".into(), params: json!({"pairs": 64}) })),
        ("Job", example(&job)),
        (
            "PairRecord",
            example(PairRecord {
                id: "x".into(),
                kind: "train".into(),
                round: Some(1),
                acquisition: Some("certainty".into()),
                prompt: "p".into(),
                completion_a: "a".into(),
                completion_b: "b".into(),
                r_a: Some(0.1),
                r_b: Some(-0.1),
                margin: Some(0.2),
                entropy: Some(2.5),
                gold_choice: Some("a".into()),
                target_votes: 1,
                votes: 0,
                created_at: 0,
            }),
        ),
    ]
}

/// Marks fields that are `Option`s as nullable: those that serialise as null when empty.
fn nullable_fields(name: &str) -> &'static [&'static str] {
    match name {
        "PairRequest" => &["prompt", "seed"],
        "NewProject" => &["config"],
        "NewRater" => &["quota"],
        "RaterStats" => &["quota", "median_seconds"],
        "NextPair" => &["assignment"],
        "LabelRequest" => &["rationale"],
        "Job" => &["result", "error", "started_at", "finished_at"],
        "Round" => &["policy_checkpoint"],
        "Evaluation" => &["checkpoint_id"],
        "NewHumanCheck" => &["overlap", "pairs"],
        "HumanCheck" => &["checkpoint", "human", "judge_rate", "agreement", "kappa"],
        "PairRecord" => &["round", "acquisition", "r_a", "r_b", "margin", "entropy", "gold_choice"],
        _ => &[],
    }
}

fn content(kind: &str) -> Value {
    if kind.contains('/') {
        json!({ kind: {"schema": {"type": "string"}} })
    } else if let Some(inner) = kind.strip_prefix('[').and_then(|k| k.strip_suffix(']')) {
        json!({"application/json": {"schema": {"type": "array", "items": {"$ref": format!("#/components/schemas/{inner}")}}}})
    } else {
        json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{kind}")}}})
    }
}

pub fn build() -> Value {
    let mut schemas = Map::new();
    for (name, ex) in examples() {
        let mut s = schema_of(&ex, false);
        for f in nullable_fields(name) {
            if let Some(p) = s["properties"].get_mut(*f) {
                *p = schema_of(&ex[*f], true);
            }
        }
        schemas.insert(name.to_string(), s);
    }
    let mut paths = Map::new();
    for e in ENDPOINTS {
        let mut op = Map::new();
        op.insert("summary".into(), json!(e.summary));
        match e.who {
            Who::Public => {
                op.insert("security".into(), json!([]));
            }
            Who::Admin => {
                op.insert("security".into(), json!([{"admin": []}]));
            }
            Who::Rater => {
                op.insert("security".into(), json!([{"rater": []}]));
            }
        }
        let mut params: Vec<Value> = Vec::new();
        for seg in e.path.split('/').filter(|s| s.starts_with('{')) {
            let name = seg.trim_matches(|c| c == '{' || c == '}');
            params.push(json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}));
        }
        for (name, desc) in e.query {
            params.push(json!({"name": name, "in": "query", "description": desc, "schema": {"type": "string"}}));
        }
        if !params.is_empty() {
            op.insert("parameters".into(), json!(params));
        }
        if let Some(r) = e.request {
            op.insert("requestBody".into(), json!({"required": true, "content": content(r)}));
        }
        let ok = match e.response {
            Some(r) => json!({"description": "success", "content": content(r)}),
            None => json!({"description": "success"}),
        };
        let err = json!({"description": "what was wrong", "content": content("ApiError")});
        op.insert(
            "responses".into(),
            json!({"200": ok, "400": err, "401": err, "403": err, "404": err, "409": err, "413": err}),
        );
        let item = paths.entry(e.path.to_string()).or_insert_with(|| json!({}));
        item[e.method] = Value::Object(op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "apl: active preference learning",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Admin endpoints take the admin token, rater endpoints a rater's invite token, \
                            both as `Authorization: Bearer <token>`. Errors are JSON {message}.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "admin": {"type": "http", "scheme": "bearer"},
                "rater": {"type": "http", "scheme": "bearer"},
            },
        },
    })
}

pub async fn document() -> Json<Value> {
    Json(build())
}
