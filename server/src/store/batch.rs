//! Group commit of the raters' writes on SQLite.
//!
//! SQLite has one writer, and each commit in WAL mode with `synchronous = FULL` is an fsync
//! (~0.3 ms on this machine's disk, more than the statements of a label). With one transaction
//! per request the raters' pair claims and labels queue for the writer one fsync each, which
//! capped a project at a few hundred labels a second however fast the rest was. Here the
//! write operations of concurrent requests are run one after the other in *one* transaction,
//! by one task that owns the write lock while it runs them; the batch is committed with one
//! fsync, and only then is each operation's answer handed back: a label is still acknowledged
//! only once it is durable. Under light load a batch is one operation and nothing waits.
//!
//! The contract an operation keeps: when it fails for a reason of its own (a conflict, a pair
//! not found: any error but the database's) it has written nothing, so the others in its batch
//! commit unharmed. A database error fails the whole batch (it is rolled back, every operation
//! in it answers the error, none was acknowledged).
//!
//! PostgreSQL has many writers and flushes concurrent commits together itself (its WAL writer),
//! so there each operation runs in a transaction of its own, as before; one code path writes
//! both.
//!
//! On SQLite the writer is a thread of its own with a rusqlite connection, and an operation's
//! statements run on it directly (`store::db` says why not through sqlx): a request's write
//! costs one hand-over to that thread and one back, however many statements it has. An
//! operation is an async closure over a [`Db`] so that the same code runs on PostgreSQL; on
//! the writer thread its statements never wait, so it is polled to its end in one go.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::mpsc;
use std::task::{Context, Poll, Waker};

use futures_util::future::BoxFuture;
use tokio::sync::{Mutex, oneshot};

use super::db::Db;
use super::{Result, StoreError};

/// At most this many operations share a commit.
const MAX_BATCH: usize = 64;

/// A write operation: statements on the open transaction's connection.
pub trait WriteOp<T>: for<'c> FnOnce(Db<'c>) -> BoxFuture<'c, Result<T>> + Send + 'static {}
impl<T, F> WriteOp<T> for F where F: for<'c> FnOnce(Db<'c>) -> BoxFuture<'c, Result<T>> + Send + 'static {}

/// An operation queued for the batch, its result type erased: it runs on the connection (or,
/// given none because the transaction could not begin, does not), says whether it failed with
/// a database error, and leaves a reply to send once the commit is known.
type Job = Box<dyn FnOnce(Option<&mut rusqlite::Connection>) -> (bool, Reply) + Send>;
type Reply = Box<dyn FnOnce(std::result::Result<(), Arc<StoreError>>) + Send>;

/// The queue into the writer thread.
pub(super) struct Batcher {
    jobs: mpsc::Sender<Job>,
}

/// Runs `f` to its end now. The writer's operations wait only on their statements, which
/// on rusqlite finish before they return; one that waits on anything else is a bug, and
/// panics (its batch is rolled back, it answers an error).
fn run_now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a write operation waited on something other than its statements"),
    }
}

impl Batcher {
    /// Starts the thread that runs queued operations in shared transactions on `conn`, holding
    /// `write_lock` (the store's SQLite write lock, which sqlx's writers take too) for each
    /// batch. The thread ends when the store is dropped, after the operations already queued.
    pub(super) fn start(conn: rusqlite::Connection, write_lock: Arc<Mutex<()>>) -> Self {
        let (jobs, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("apl-sqlite-writer".into())
            .spawn(move || run(conn, write_lock, rx))
            .expect("starting the SQLite writer thread");
        Self { jobs }
    }

    /// Runs `op` in the next batch; answers once the batch is committed (or failed).
    pub(super) async fn submit<T: Send + 'static>(&self, op: impl WriteOp<T>) -> Result<T> {
        let (tx, rx) = oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |conn| {
            let result = match conn {
                Some(conn) => run_now(op(Db::Lite(conn))),
                None => Err(StoreError::Invalid("no transaction".into())),
            };
            let db_failed = result.as_ref().is_err_and(StoreError::is_database);
            let reply: Reply = Box::new(move |commit| {
                let answer = match (commit, result) {
                    (Ok(()), result) => result,
                    (Err(_), Err(own)) if own.is_database() => Err(own),
                    // The batch was rolled back: whatever this operation did is gone.
                    (Err(batch), _) => Err(StoreError::Batch(batch)),
                };
                let _ = tx.send(answer);
            });
            (db_failed, reply)
        });
        // The writer gone (it never returns while the store lives): a server error, not the
        // request's.
        self.jobs.send(job).map_err(|_| StoreError::Db(sqlx::Error::WorkerCrashed))?;
        // No answer: the operation panicked (logged) or the writer stopped.
        rx.await.map_err(|_| StoreError::Batch(Arc::new(StoreError::Db(sqlx::Error::WorkerCrashed))))?
    }
}

fn run(mut conn: rusqlite::Connection, write_lock: Arc<Mutex<()>>, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let _guard = write_lock.blocking_lock();
        let mut replies = Vec::new();
        let outcome = run_batch(&mut conn, first, &rx, &mut replies);
        if let Err(e) = &outcome {
            tracing::warn!(error = %e, operations = replies.len(), "a batch of writes failed and was rolled back");
        }
        let outcome = outcome.map_err(Arc::new);
        for reply in replies {
            reply(outcome.clone());
        }
    }
}

/// One transaction: `first`, then whatever else is queued (up to [`MAX_BATCH`]), committed.
fn run_batch(
    conn: &mut rusqlite::Connection,
    first: Job,
    rx: &mpsc::Receiver<Job>,
    replies: &mut Vec<Reply>,
) -> std::result::Result<(), StoreError> {
    // A transaction left open by a failed end of the last batch would fail every BEGIN after.
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        replies.push(first(None).1);
        return Err(e.into());
    }
    // IMMEDIATE: the write lock is taken at the start, so no statement of the batch can meet
    // SQLITE_BUSY half-way (another process on the file waits in the busy timeout instead).
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        // Nothing runs: the first operation answers the error.
        replies.push(first(None).1);
        return Err(e.into());
    }
    let mut next = Some(first);
    let mut db_failed = false;
    while let Some(job) = next.take() {
        // A panic in an operation must not take the writer (and every later label) with it:
        // its batch is rolled back and the operation answers an error (its reply is gone).
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Some(&mut *conn)))) {
            Ok((failed, reply)) => {
                replies.push(reply);
                if failed {
                    db_failed = true;
                    break;
                }
            }
            Err(_) => {
                tracing::error!("a write operation panicked; its batch is rolled back");
                db_failed = true;
                break;
            }
        }
        if replies.len() < MAX_BATCH {
            next = rx.try_recv().ok();
        }
    }
    if db_failed {
        // SQLite may have rolled back by itself already (SQLITE_FULL, for one).
        if !conn.is_autocommit() {
            conn.execute_batch("ROLLBACK")?;
        }
        return Err(StoreError::Invalid("an operation of the batch failed; the batch was rolled back".into()));
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        // A failed COMMIT (an I/O error) can leave the transaction open: end it (or the next
        // batch does, above).
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        return Err(e.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::*;

    /// An operation that inserts `x`; `plain` inserts without `ON CONFLICT`, so a repeated
    /// value is a database error.
    async fn insert(store: &Store, x: i64, plain: bool) -> Result<i64> {
        store
            .write(move |mut db| {
                Box::pin(async move {
                    let q = if plain {
                        "INSERT INTO t (x) VALUES ($1)"
                    } else {
                        "INSERT INTO t (x) VALUES ($1) ON CONFLICT DO NOTHING"
                    };
                    db.execute(q, &[&x]).await?;
                    Ok(x)
                })
            })
            .await
    }

    async fn stored(store: &Store) -> Vec<i64> {
        sqlx::query_scalar("SELECT x FROM t ORDER BY x").fetch_all(&store.pool).await.unwrap()
    }

    /// Operations queued while the writer is busy share one commit; one that refuses (having
    /// written nothing) leaves the others committed; a database error rolls back its whole
    /// batch and every operation in it answers an error, none is left half-written.
    #[tokio::test]
    async fn a_batch_commits_together_and_fails_together() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            std::sync::Arc::new(Store::connect(&dir.path().join("b.sqlite").display().to_string()).await.unwrap());
        sqlx::query("CREATE TABLE t (x BIGINT PRIMARY KEY)").execute(&store.pool).await.unwrap();

        // The writer is held, so the next operations queue and run as one batch.
        let held = store.write_lock.clone().lock_owned().await;
        let mut tasks = Vec::new();
        for x in 1..=5 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move { insert(&s, x, false).await }));
        }
        let s = store.clone();
        let refusal = tokio::spawn(async move {
            s.write(|_db| Box::pin(async { Err::<(), _>(StoreError::Conflict("no".into())) })).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        drop(held);
        for (x, t) in (1..=5).zip(tasks) {
            assert_eq!(t.await.unwrap().unwrap(), x);
        }
        assert!(matches!(refusal.await.unwrap(), Err(StoreError::Conflict(_))));
        assert_eq!(stored(&store).await, vec![1, 2, 3, 4, 5]);

        // A batch with a database error in it: 6 and 7 go with it, nothing of it is stored.
        let held = store.write_lock.clone().lock_owned().await;
        let mut tasks = Vec::new();
        for (x, plain) in [(6, false), (3, true), (7, false)] {
            let s = store.clone();
            tasks.push(tokio::spawn(async move { insert(&s, x, plain).await }));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        drop(held);
        let answers: Vec<Result<i64>> =
            futures_util::future::join_all(tasks).await.into_iter().map(|t| t.unwrap()).collect();
        assert!(matches!(answers[0], Err(StoreError::Batch(_))), "{:?}", answers[0]);
        assert!(matches!(answers[1], Err(StoreError::Sqlite(_))), "{:?}", answers[1]);
        // The operation after the failing one was not run in that batch: it runs in the next.
        assert_eq!(answers[2].as_ref().ok(), Some(&7), "{:?}", answers[2]);
        assert_eq!(stored(&store).await, vec![1, 2, 3, 4, 5, 7]);

        // An operation that panics fails alone with an error; the writer goes on.
        let r = store.write(|_db| Box::pin(async { panic!("a bug in an operation") as Result<()> })).await;
        assert!(matches!(r, Err(StoreError::Batch(_))), "{r:?}");
        assert_eq!(insert(&store, 8, false).await.unwrap(), 8);
        assert_eq!(stored(&store).await, vec![1, 2, 3, 4, 5, 7, 8]);
    }
}
