//! The rater flow over HTTP, on SQLite and (when configured) PostgreSQL: assignment with
//! overlap, leases, gold pairs, undo, exports, and everything a rater must not be able to do.

mod common;

use std::collections::{BTreeMap, HashSet};

use common::{Server, each_backend};
use serde_json::{Value, json};

fn cfg(overlap: u32, gold_rate: f64) -> Value {
    json!({"rating": {"overlap": overlap, "gold_rate": gold_rate, "lease_seconds": 600, "guidelines": "Pick the better one."}})
}

async fn next(s: &Server, token: &str) -> Value {
    s.call("POST", "/api/rate/next", Some(token), None).await.ok()["assignment"].clone()
}

async fn label(s: &Server, token: &str, pair: &str, choice: &str) -> common::Reply {
    s.call("POST", "/api/rate/labels", Some(token), Some(json!({"pair": pair, "choice": choice, "time_ms": 1500})))
        .await
}

/// Which completion ("good" or "bad") the rater's side shows.
fn side_text<'a>(a: &'a Value, side: &str) -> &'a str {
    a[side].as_str().unwrap()
}

#[tokio::test]
async fn raters_label_with_overlap_and_the_exports_hold_their_votes() {
    each_backend(|b| async move {
        let s = common::start(&b, Default::default()).await;
        let p = s.project("overlap", cfg(2, 0.0)).await;
        assert_eq!(s.trl_pairs(&p.id, 3, "rate=true").await["imported"], 3);
        let tokens = [s.rater(&p.id, "ann").await, s.rater(&p.id, "ben").await, s.rater(&p.id, "cy").await];

        let me = s.call("GET", "/api/rate/me", Some(&tokens[0]), None).await.ok();
        assert_eq!(me["guidelines"], "Pick the better one.");
        assert_eq!(me["progress"], json!({"done": 0, "target": 3}));

        // A rater's view holds only these fields: nothing about models, scores, sides or gold.
        let a = next(&s, &tokens[0]).await;
        let keys: HashSet<&str> = a.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, HashSet::from(["pair", "prompt", "left", "right", "lease_expires_at", "progress"]));
        // Asking again returns the same held pair.
        assert_eq!(next(&s, &tokens[0]).await["pair"], a["pair"]);

        // Everyone labels everything they are given, always picking the "good" side.
        let mut given: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in &tokens {
            loop {
                let a = next(&s, t).await;
                if a.is_null() {
                    break;
                }
                let choice = if side_text(&a, "left").starts_with("good") { "left" } else { "right" };
                let ack = label(&s, t, a["pair"].as_str().unwrap(), choice).await.ok();
                assert_eq!(ack["choice"], choice);
                given.entry(a["pair"].as_str().unwrap().to_string()).or_default().push(t.clone());
            }
        }
        // Overlap 2: each of the 3 pairs went to exactly 2 distinct raters.
        assert_eq!(given.len(), 3);
        for raters in given.values() {
            assert_eq!(raters.len(), 2);
            assert_ne!(raters[0], raters[1]);
        }
        let me = s.call("GET", "/api/rate/me", Some(&tokens[0]), None).await.ok();
        assert_eq!(
            me["progress"]["done"].as_i64().unwrap(),
            given.values().filter(|r| r.contains(&tokens[0])).count() as i64
        );

        // Exports: 6 votes, 3 DPO rows whose chosen is the good completion.
        let votes = s.admin("GET", &format!("/api/projects/{}/export/votes.jsonl", p.id), None).await;
        assert_eq!(votes.status, 200);
        assert_eq!(votes.text.lines().count(), 6);
        let csv = s.admin("GET", &format!("/api/projects/{}/export/votes.csv", p.id), None).await;
        assert_eq!(csv.text.lines().count(), 7);
        assert!(csv.text.starts_with("pair_id,pair_kind,round,rater_id,rater,choice,left,time_ms"));
        let dpo = s.admin("GET", &format!("/api/projects/{}/export/dpo.jsonl", p.id), None).await;
        let rows: Vec<Value> = dpo.text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 3);
        for r in &rows {
            assert!(r["chosen"].as_str().unwrap().starts_with("good"), "{r}");
            assert!(r["rejected"].as_str().unwrap().starts_with("bad"));
            assert_eq!(r["metadata"]["votes"]["a"], 2);
            assert_eq!(r["metadata"]["raters"].as_array().unwrap().len(), 2);
        }
        let raters = s.admin("GET", &format!("/api/projects/{}/raters", p.id), None).await.ok();
        let total: i64 = raters.as_array().unwrap().iter().map(|r| r["labels"].as_i64().unwrap()).sum();
        assert_eq!(total, 6);
        let detail = s.admin("GET", &format!("/api/projects/{}", p.id), None).await.ok();
        assert_eq!(detail["stats"]["pairs_complete"], 3);
        assert_eq!(detail["stats"]["labels"], 6);
    })
    .await;
}

#[tokio::test]
async fn retries_are_idempotent_undo_gives_the_pair_back_and_skips_free_the_slot() {
    each_backend(|b| async move {
        let s = common::start(&b, Default::default()).await;
        let p = s.project("undo", cfg(1, 0.0)).await;
        s.trl_pairs(&p.id, 2, "rate=true").await;
        let (ann, ben) = (s.rater(&p.id, "ann").await, s.rater(&p.id, "ben").await);

        let a = next(&s, &ann).await;
        let pair = a["pair"].as_str().unwrap().to_string();
        let first = label(&s, &ann, &pair, "left").await.ok();
        // The same label again (a client retry) is acknowledged once more, not stored twice.
        let again = label(&s, &ann, &pair, "left").await.ok();
        assert_eq!(first["created_at"], again["created_at"]);
        // A different answer must go through undo.
        let r = label(&s, &ann, &pair, "right").await;
        assert_eq!(r.status, 409);
        assert!(r.message().contains("undo"), "{}", r.message());

        // Undo: the label is gone and the same pair, same sides, comes back first.
        let back = s.call("DELETE", &format!("/api/rate/labels/{pair}"), Some(&ann), None).await.ok();
        assert_eq!(back["pair"], pair.as_str());
        assert_eq!(back["left"], a["left"]);
        assert_eq!(next(&s, &ann).await["pair"], pair.as_str());
        let votes = s.admin("GET", &format!("/api/projects/{}/export/votes.jsonl", p.id), None).await;
        assert_eq!(votes.text.lines().count(), 0);
        label(&s, &ann, &pair, "right").await.ok();
        let own = s.call("GET", "/api/rate/labels", Some(&ann), None).await.ok();
        assert_eq!(own.as_array().unwrap().len(), 1);
        assert_eq!(own[0]["choice"], "right");

        // Overlap 1: the first pair is full, ben gets the other; a skip frees it for ann.
        let b2 = next(&s, &ben).await;
        assert_ne!(b2["pair"], pair.as_str());
        label(&s, &ben, b2["pair"].as_str().unwrap(), "skip").await.ok();
        assert!(next(&s, &ben).await.is_null(), "ben skipped it and the other pair is full");
        let a2 = next(&s, &ann).await;
        assert_eq!(a2["pair"], b2["pair"]);
        // Ben cannot undo his skip now that ann holds the pair.
        let r = s.call("DELETE", &format!("/api/rate/labels/{}", b2["pair"].as_str().unwrap()), Some(&ben), None).await;
        assert_eq!(r.status, 409, "{}", r.text);
        // Skips do not count as votes.
        let dpo = s.admin("GET", &format!("/api/projects/{}/export/dpo.jsonl", p.id), None).await;
        assert_eq!(dpo.text.lines().count(), 1);
    })
    .await;
}

#[tokio::test]
async fn expired_leases_go_back_to_the_pool() {
    each_backend(|b| async move {
        let s = common::start(&b, Default::default()).await;
        let p = s.project("leases", cfg(1, 0.0)).await;
        s.trl_pairs(&p.id, 1, "rate=true").await;
        let (ann, ben) = (s.rater(&p.id, "ann").await, s.rater(&p.id, "ben").await);
        let a = next(&s, &ann).await;
        let pair = a["pair"].as_str().unwrap().to_string();
        assert!(next(&s, &ben).await.is_null(), "the only pair is leased to ann");
        // Ann walks away: her lease runs out.
        sqlx::query("UPDATE assignments SET lease_expires = 0").execute(&s.store.pool).await.unwrap();
        let b2 = next(&s, &ben).await;
        assert_eq!(b2["pair"], pair.as_str());
        // Ann comes back and answers: refused with a clear message, nothing stored.
        let r = label(&s, &ann, &pair, "left").await;
        assert_eq!(r.status, 409);
        assert!(r.message().contains("expired"), "{}", r.message());
        label(&s, &ben, &pair, "left").await.ok();
        let votes = s.admin("GET", &format!("/api/projects/{}/export/votes.jsonl", p.id), None).await;
        assert_eq!(votes.text.lines().count(), 1);
        // An expired lease nobody took is still its holder's to answer.
        s.trl_pairs(&p.id, 1, "rate=true").await;
        let a3 = next(&s, &ann).await;
        sqlx::query("UPDATE assignments SET lease_expires = 0 WHERE done = 0").execute(&s.store.pool).await.unwrap();
        label(&s, &ann, a3["pair"].as_str().unwrap(), "right").await.ok();
    })
    .await;
}

#[tokio::test]
async fn gold_pairs_are_mixed_in_and_scored_but_never_revealed() {
    each_backend(|b| async move {
        let s = common::start(&b, Default::default()).await;
        let p = s.project("gold", cfg(1, 1.0)).await;
        s.trl_pairs(&p.id, 2, "gold=true").await;
        s.trl_pairs(&p.id, 1, "rate=true").await;
        let ann = s.rater(&p.id, "ann").await;
        // gold_rate 1: both gold pairs first (each once), then the real one.
        let mut seen = Vec::new();
        loop {
            let a = next(&s, &ann).await;
            if a.is_null() {
                break;
            }
            assert!(!a.to_string().contains("gold"), "{a}");
            let good_left = a["left"].as_str().unwrap().starts_with("good");
            // Right on the first gold pair, wrong on the second.
            let choice = if seen.is_empty() == good_left { "left" } else { "right" };
            label(&s, &ann, a["pair"].as_str().unwrap(), choice).await.ok();
            seen.push(a["prompt"].as_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 3);
        let stats = s.admin("GET", &format!("/api/projects/{}/raters", p.id), None).await.ok();
        assert_eq!(stats[0]["gold_answered"], 2);
        assert_eq!(stats[0]["gold_correct"], 1);
        assert_eq!(stats[0]["labels"], 3);
        // Gold votes are not training data.
        let dpo = s.admin("GET", &format!("/api/projects/{}/export/dpo.jsonl", p.id), None).await;
        assert_eq!(dpo.text.lines().count(), 1);
    })
    .await;
}

#[tokio::test]
async fn raters_cannot_reach_admin_endpoints_or_each_other() {
    each_backend(|b| async move {
        let s = common::start(&b, Default::default()).await;
        let p = s.project("auth", cfg(1, 0.0)).await;
        s.trl_pairs(&p.id, 2, "rate=true").await;
        let (ann, ben) = (s.rater(&p.id, "ann").await, s.rater(&p.id, "ben").await);
        let admin_calls = [
            ("GET", "/api/projects".to_string()),
            ("POST", "/api/projects".to_string()),
            ("GET", format!("/api/projects/{}", p.id)),
            ("GET", format!("/api/projects/{}/raters", p.id)),
            ("GET", format!("/api/projects/{}/pairs", p.id)),
            ("GET", format!("/api/projects/{}/export/votes.csv", p.id)),
            ("GET", format!("/api/projects/{}/export/dpo.jsonl", p.id)),
            ("POST", format!("/api/projects/{}/jobs", p.id)),
            ("PUT", format!("/api/projects/{}/config", p.id)),
            ("POST", "/api/pair".to_string()),
        ];
        for (m, path) in &admin_calls {
            let r = s.call(m, path, Some(&ann), Some(json!({}))).await;
            assert_eq!(r.status, 403, "{m} {path}: {}", r.text);
            let r = s.call(m, path, None, Some(json!({}))).await;
            assert_eq!(r.status, 401, "{m} {path}: {}", r.text);
            let r = s.call(m, path, Some("apl_admin_guess"), Some(json!({}))).await;
            assert_eq!(r.status, 401, "{m} {path}: {}", r.text);
        }
        let up = s
            .raw(
                "POST",
                &format!("/api/projects/{}/prompts?format=jsonl", p.id),
                Some(&ann),
                b"{}".to_vec(),
                "text/plain",
            )
            .await;
        assert_eq!(up.status, 403);
        // The admin token is not a rater token.
        assert_eq!(s.call("POST", "/api/rate/next", Some(common::ADMIN), None).await.status, 401);

        // Ann's pair is invisible to Ben: he can neither label it nor undo on it.
        let a = next(&s, &ann).await;
        let pair = a["pair"].as_str().unwrap();
        let r = label(&s, &ben, pair, "left").await;
        assert!(r.status == 409 || r.status == 404, "{}", r.text);
        assert!(!r.text.contains(a["left"].as_str().unwrap()));
        label(&s, &ann, pair, "left").await.ok();
        let r = s.call("DELETE", &format!("/api/rate/labels/{pair}"), Some(&ben), None).await;
        assert_eq!(r.status, 404);
        let own = s.call("GET", "/api/rate/labels", Some(&ben), None).await.ok();
        assert_eq!(own, json!([]));
        // A removed rater is locked out at once and their lease returns to the pool.
        let rb = next(&s, &ben).await;
        assert!(!rb.is_null());
        let raters = s.admin("GET", &format!("/api/projects/{}/raters", p.id), None).await.ok();
        let ben_id =
            raters.as_array().unwrap().iter().find(|r| r["name"] == "ben").unwrap()["id"].as_str().unwrap().to_string();
        assert_eq!(s.admin("DELETE", &format!("/api/projects/{}/raters/{ben_id}", p.id), None).await.status, 204);
        assert_eq!(s.call("GET", "/api/rate/me", Some(&ben), None).await.status, 401);
        assert_eq!(next(&s, &ann).await["pair"], rb["pair"]);
    })
    .await;
}

#[tokio::test]
async fn malformed_input_is_refused_with_a_message_and_nothing_stored() {
    each_backend(|b| async move {
        let s = common::start(&b, Default::default()).await;
        let p = s.project("bad", cfg(1, 0.0)).await;
        let stats = || async { s.admin("GET", &format!("/api/projects/{}", p.id), None).await.ok()["stats"].clone() };
        let before = stats().await;
        let upload = |path: String, body: &'static str| {
            let s = &s;
            async move { s.raw("POST", &path, Some(common::ADMIN), body.as_bytes().to_vec(), "text/plain").await }
        };
        let cases = [
            (
                format!("/api/projects/{}/prompts?format=jsonl", p.id),
                "{\"prompt\": \"ok\"}\n{\"prompt\": 5}\n",
                "upload:2:",
            ),
            (format!("/api/projects/{}/prompts?format=csv", p.id), "prompt\nfine\n\"\"\n", "upload:3:"),
            (format!("/api/projects/{}/prompts?format=xml", p.id), "x", "format"),
            (format!("/api/projects/{}/prompts?format=jsonl&split=test", p.id), "{\"prompt\": \"ok\"}\n", "split"),
            (format!("/api/projects/{}/prompts?format=jsonl&bogus=1", p.id), "{\"prompt\": \"ok\"}\n", "bogus"),
            (
                format!("/api/projects/{}/pairs?format=trl", p.id),
                "{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"b\"}\n{\"prompt\":\"p\",\"chosen\":\"a\"}\n",
                "upload:2: no \"rejected\"",
            ),
        ];
        for (path, body, want) in cases {
            let r = upload(path.clone(), body).await;
            assert_eq!(r.status, 400, "{path}: {}", r.text);
            assert!(r.message().contains(want), "{path}: {}", r.message());
        }
        let r = s
            .raw(
                "POST",
                &format!("/api/projects/{}/prompts?format=jsonl", p.id),
                Some(common::ADMIN),
                vec![0xff, 0xfe],
                "text/plain",
            )
            .await;
        assert_eq!(r.status, 400);
        assert!(r.message().contains("UTF-8"));
        assert_eq!(stats().await, before, "nothing stored");

        let json_cases = [
            ("POST", "/api/projects".to_string(), json!({"name": "x", "task": "poetry"}), "task"),
            ("POST", "/api/projects".to_string(), json!({"name": "bad", "task": "generic"}), "already exists"),
            ("POST", "/api/projects".to_string(), json!({"name": "y", "colour": 1}), "colour"),
            (
                "POST",
                "/api/projects".to_string(),
                json!({"name": "z", "config": {"rating": {"overlap": 0}}}),
                "overlap",
            ),
            (
                "POST",
                "/api/projects".to_string(),
                json!({"name": "z", "config": {"loop_settings": {"acquisition": "magic"}}}),
                "loop_settings",
            ),
            (
                "PUT",
                format!("/api/projects/{}/config", p.id),
                json!({"loop_settings": {"train": {"beta": -1.0}}}),
                "beta",
            ),
            ("POST", format!("/api/projects/{}/raters", p.id), json!({"name": ""}), "name"),
            ("POST", format!("/api/projects/{}/jobs", p.id), json!({"kind": "dance"}), "kind"),
            (
                "POST",
                format!("/api/projects/{}/jobs", p.id),
                json!({"kind": "generate", "params": {"pairs": 0}}),
                "pairs",
            ),
            ("GET", format!("/api/projects/{}/pairs?limit=0", p.id), Value::Null, "limit"),
            ("GET", format!("/api/projects/{}/export/dpo.jsonl?source=crowd", p.id), Value::Null, "source"),
        ];
        for (m, path, body, want) in json_cases {
            let r = s.admin(m, &path, (!body.is_null()).then_some(body.clone())).await;
            assert!(r.status == 400 || r.status == 409, "{m} {path} {body}: {}", r.text);
            assert!(r.message().contains(want), "{m} {path} {body}: {}", r.message());
        }
        let r = s.raw("POST", "/api/projects", Some(common::ADMIN), b"{not json".to_vec(), "application/json").await;
        assert_eq!(r.status, 400);
        assert!(r.message().starts_with("request body"), "{}", r.message());
        let big = json!({"name": "x".repeat(100_000)});
        let r = s.admin("POST", "/api/projects", Some(big)).await;
        assert_eq!(r.status, 413);
        assert!(r.message().contains("too large"));
        assert_eq!(s.admin("GET", "/api/projects/nope", None).await.status, 404);
        assert_eq!(s.admin("GET", "/api/projects", None).await.ok().as_array().unwrap().len(), 1);

        // Raters' malformed labels.
        s.trl_pairs(&p.id, 1, "rate=true").await;
        let ann = s.rater(&p.id, "ann").await;
        let a = next(&s, &ann).await;
        let pair = a["pair"].as_str().unwrap();
        for (body, want) in [
            (json!({"pair": pair, "choice": "up"}), "request body"),
            (json!({"pair": pair, "choice": "left", "rationale": "x".repeat(3000)}), "rationale"),
            (json!({"pair": pair, "choice": "left", "extra": 1}), "extra"),
            (json!({"pair": "nope", "choice": "left"}), "not assigned"),
        ] {
            let r = s.call("POST", "/api/rate/labels", Some(&ann), Some(body.clone())).await;
            assert!(r.status == 400 || r.status == 404, "{body}: {}", r.text);
            assert!(r.message().contains(want), "{body}: {}", r.message());
        }
        let votes = s.admin("GET", &format!("/api/projects/{}/export/votes.jsonl", p.id), None).await;
        assert_eq!(votes.text, "");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_raters_at_once_never_exceed_the_overlap() {
    each_backend(|b| async move {
        let s = std::sync::Arc::new(common::start(&b, Default::default()).await);
        let p = s.project("race", cfg(2, 0.0)).await;
        s.trl_pairs(&p.id, 12, "rate=true").await;
        let mut tokens = Vec::new();
        for i in 0..8 {
            tokens.push(s.rater(&p.id, &format!("r{i}")).await);
        }
        let mut handles = Vec::new();
        for t in tokens {
            let s = s.clone();
            handles.push(tokio::spawn(async move {
                let mut n = 0;
                loop {
                    let r = s.call("POST", "/api/rate/next", Some(&t), None).await;
                    if r.status == 409 {
                        continue; // others took every open pair at once: ask again
                    }
                    let a = r.ok()["assignment"].clone();
                    if a.is_null() {
                        return n;
                    }
                    label(&s, &t, a["pair"].as_str().unwrap(), "left").await.ok();
                    n += 1;
                }
            }));
        }
        let mut total = 0;
        for h in handles {
            total += h.await.unwrap();
        }
        assert_eq!(total, 24, "12 pairs x overlap 2");
        let votes = s.admin("GET", &format!("/api/projects/{}/export/votes.jsonl", p.id), None).await;
        let mut per_pair: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        for l in votes.text.lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            let fresh = per_pair
                .entry(v["pair_id"].as_str().unwrap().into())
                .or_default()
                .insert(v["rater_id"].as_str().unwrap().into());
            assert!(fresh, "one label per (pair, rater)");
        }
        assert_eq!(per_pair.len(), 12);
        assert!(per_pair.values().all(|r| r.len() == 2));
    })
    .await;
}
