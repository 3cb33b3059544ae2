//! What travels compressed: API JSON is gzipped for a client that accepts it and decodes to the
//! very answer an uncompressed request gets (an evaluation with its samples, the largest answer
//! the dashboard loads), while a job's server-sent events stay uncompressed, so live progress
//! arrives event by event rather than when a compressor's buffer fills.
//!
//! The client here sends `Accept-Encoding` by hand and decodes with flate2: reqwest is built
//! without its gzip feature, so nothing is decoded behind the test's back.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use apl_shared::{Acquisition, EvaluationRow, Job, JobKind, JobParams, JobState, Labeller, ProjectConfig, Split};
use common::{ADMIN, Backend, Options, tiny};

/// The tiny model's settings, with enough evaluation prompts that the evaluation's answer is
/// over the 2 KiB below which answers go uncompressed.
fn config() -> ProjectConfig {
    let mut c = tiny(Labeller::Length);
    c.loop_settings.acquisition = Acquisition::Random;
    c.loop_settings.eval.prompts = 24;
    c.loop_settings.eval.batch_size = 8;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_json_is_gzipped_and_job_events_are_not() {
    let s = common::start(&Backend::Sqlite, Options::default()).await;
    let p = s.project("gzip", config()).await;
    let texts = |split: Split, n: usize| (0..n).map(|i| format!("{split} prompt number {i} is")).collect::<Vec<_>>();
    s.prompts(&p.id, Split::Train, &texts(Split::Train, 16)).await;
    // Enough evaluation prompts that the evaluation's answer is over the 2 KiB below which
    // answers go uncompressed.
    s.prompts(&p.id, Split::Eval, &texts(Split::Eval, 24)).await;
    let job = s.job(&p.id, JobKind::Round, JobParams::default()).await;

    // The job's live progress, asked for by a client that accepts gzip: sent as it is.
    let mut events = s
        .client
        .get(format!("{}/api/jobs/{}/events?access_token={ADMIN}", s.base, job.id))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert!(events.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    assert!(events.headers().get("content-encoding").is_none(), "event streams are not compressed: {events:?}");
    let (mut buf, mut seen) = (String::new(), Vec::<Job>::new());
    let deadline = Instant::now() + Duration::from_secs(300);
    while let Some(chunk) =
        tokio::time::timeout_at(deadline.into(), events.chunk()).await.expect("the job ends in time").unwrap()
    {
        buf.push_str(std::str::from_utf8(&chunk).expect("plain text on the wire"));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                seen.push(serde_json::from_str(data).unwrap_or_else(|e| panic!("not a job: {e}: {data}")));
            }
        }
    }
    let last = seen.last().expect("events were sent");
    assert_eq!(last.state, JobState::Done, "{last:?}");
    assert!(seen.len() >= 2, "progress arrived event by event: {seen:?}");
    assert!(!seen[0].state.is_finished(), "the first event came before the end: {:?}", seen[0]);

    // The evaluation the round made, in full and gzipped: the same JSON.
    let path = format!("{}/api/projects/{}/evaluations", s.base, p.id);
    let plain = s.client.get(&path).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(plain.status(), 200);
    assert!(plain.headers().get("content-encoding").is_none(), "no gzip unless asked: {plain:?}");
    let plain = plain.bytes().await.unwrap();
    let zipped = s.client.get(&path).bearer_auth(ADMIN).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(zipped.status(), 200);
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    assert!(zipped.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    assert!(zipped.headers()["vary"].to_str().unwrap().to_ascii_lowercase().contains("accept-encoding"));
    let zipped = zipped.bytes().await.unwrap();
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(zipped.as_ref()).read_to_end(&mut decoded).expect("a gzip stream");
    assert_eq!(decoded, plain.as_ref(), "gzip decodes to the uncompressed answer");
    let evals: Vec<EvaluationRow> = serde_json::from_slice(&decoded).unwrap();
    assert_eq!(evals.len(), 1);
    assert_eq!(evals[0].details.samples.len(), 24);
    assert!(zipped.len() < plain.len(), "gzip made it smaller: {} of {} bytes", zipped.len(), plain.len());

    // A small answer (under 2 KiB, as a rater's label acknowledgement is) goes uncompressed:
    // on the hot path, compressing costs more than it saves.
    let small = s
        .client
        .get(format!("{}/api/projects/{}", s.base, p.id))
        .bearer_auth(ADMIN)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 200);
    assert!(small.headers().get("content-encoding").is_none(), "{small:?}");
    assert!(small.bytes().await.unwrap().len() < 2048);
}
