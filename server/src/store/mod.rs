//! The annotation store: SQLite by default, PostgreSQL by URL, through sqlx's `Any` driver so
//! every query is written once, in the dialect both accept (`$1` parameters, `ON CONFLICT`,
//! BIGINT/TEXT/DOUBLE PRECISION columns). Migrations are embedded. Rows map onto the shared
//! wire types with `sqlx::FromRow`; vocabulary enums and typed JSON documents are TEXT columns
//! (`apl_shared::sql`), bound and read as themselves.
//!
//! Invariants that concurrent servers could break (overlap, one label per pair and rater) are
//! database constraints, and claims are single conditional statements, so several processes
//! over one PostgreSQL stay consistent. On SQLite one process writes at a time through
//! [`Store::begin_write`] (a deferred SQLite transaction that reads and then writes could
//! otherwise fail with SQLITE_BUSY); SQLite runs in WAL mode with `synchronous = FULL`, so a
//! label acknowledged to a client survives a crash or power loss. The raters' hot path on
//! SQLite runs its statements in the calling thread through rusqlite instead ([`db`] says why).

mod batch;
pub mod checks;
pub mod cycle;
pub mod db;
pub mod export;
pub mod imports;
pub mod jobs;
pub mod projects;
pub mod prompts;
pub mod rating;
pub mod rounds;
pub mod tokens;

use std::path::Path;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Executor, Row, Transaction};
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};

/// The store's one error type.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Another write of the same group commit failed, so this one was rolled back with it.
    #[error("database (the write was rolled back with its batch): {0}")]
    Batch(#[source] Arc<StoreError>),
}

impl StoreError {
    /// An error of the database itself (not a refusal of ours): a write that meets one is
    /// rolled back with its whole batch.
    pub fn is_database(&self) -> bool {
        matches!(self, Self::Db(_) | Self::Sqlite(_) | Self::Batch(_))
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Connections of an SQLite store's pool.
pub const SQLITE_CONNECTIONS: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Store {
    pub pool: AnyPool,
    pub backend: Backend,
    /// Serialises write transactions on SQLite; unused on PostgreSQL.
    write_lock: Arc<Mutex<()>>,
    /// Group commit of the raters' writes ([`Store::write`]); SQLite only.
    batcher: Option<batch::Batcher>,
    /// The raters' read connections (rusqlite, [`db`]); SQLite only.
    lite: Option<db::Lite>,
}

/// A connection to read with ([`Store::read`]).
pub enum ReadConn<'a> {
    Pool(&'a AnyPool),
    Lite(db::Reader<'a>),
}

impl ReadConn<'_> {
    pub fn db(&mut self) -> db::Db<'_> {
        match self {
            Self::Pool(p) => db::Db::Pool(p),
            Self::Lite(r) => r.db(),
        }
    }
}

/// A write transaction (and, on SQLite, the process-wide write lock it holds).
///
/// One that is neither committed nor rolled back (an early return, an error) is rolled back
/// on a task of its own before its write lock is let go. Merely dropping it is not enough:
/// sqlx rolls a dropped transaction back only when its connection is next used, so that
/// connection kept SQLite's write lock (taken by any UPDATE, even one that changed nothing)
/// while the next writer already held the mutex, which then failed with "database is locked";
/// on PostgreSQL it kept its row locks.
pub struct WriteTx<'a> {
    pub tx: Tx,
    guard: Option<OwnedMutexGuard<()>>,
    _store: std::marker::PhantomData<&'a Store>,
}

/// The open transaction of a [`WriteTx`]; `&mut *w.tx` is its connection, to run queries on.
pub struct Tx(Option<Transaction<'static, Any>>);

impl std::ops::Deref for Tx {
    type Target = <Any as sqlx::Database>::Connection;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("the transaction is open")
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut().expect("the transaction is open")
    }
}

impl WriteTx<'_> {
    pub async fn commit(mut self) -> Result<()> {
        let tx = self.tx.0.take().expect("the transaction is open");
        tx.commit().await?;
        Ok(())
    }

    /// Ends the transaction without writing anything.
    pub async fn rollback(mut self) -> Result<()> {
        let tx = self.tx.0.take().expect("the transaction is open");
        tx.rollback().await?;
        Ok(())
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        let Some(tx) = self.tx.0.take() else { return };
        let guard = self.guard.take();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = tx.rollback().await {
                        tracing::warn!(error = %e, "rolling back an abandoned write transaction");
                    }
                    drop(guard);
                });
            }
            Err(_) => drop((tx, guard)),
        }
    }
}

impl Store {
    /// Opens `postgres://...` or `sqlite://...` (a plain path means an SQLite file, created if
    /// missing) and runs the migrations.
    pub async fn connect(url_or_path: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (url, backend) = if url_or_path.starts_with("postgres://") || url_or_path.starts_with("postgresql://") {
            (url_or_path.to_string(), Backend::Postgres)
        } else if url_or_path.starts_with("sqlite:") {
            (url_or_path.to_string(), Backend::Sqlite)
        } else {
            (sqlite_url(Path::new(url_or_path)), Backend::Sqlite)
        };
        let mut opts = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
        if backend == Backend::Sqlite {
            // Connections to a local file do not go stale: no ping before each use (on
            // sqlx's SQLite each is a round trip to the connection's thread, as many as the
            // statements themselves).
            // Few connections: each is a thread of sqlx's, and on a small machine more of them
            // cost more in switching between threads than they add in parallel reads.
            opts = opts.max_connections(SQLITE_CONNECTIONS).test_before_acquire(false).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA synchronous = FULL").await?;
                    Ok(())
                })
            });
        } else {
            // JIT compiles plans whose estimated cost is high, as the raters' claim with its
            // correlated subqueries is: ~190 ms of compiling for a 0.3 ms query.
            opts = opts.max_connections(16).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET jit = off").await?;
                    Ok(())
                })
            });
        }
        let pool = opts.connect(&url).await?;
        if backend == Backend::Sqlite {
            // WAL persists in the file: readers never wait for the writer.
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
        }
        sqlx::migrate!("./migrations").run(&pool).await?;
        let write_lock = Arc::new(Mutex::new(()));
        let (mut batcher, mut lite) = (None, None);
        if backend == Backend::Sqlite {
            let l = db::Lite::new(&db::sqlite_file(&url)?);
            batcher = Some(batch::Batcher::start(l.open(db::WRITER_BUSY)?, write_lock.clone()));
            lite = Some(l);
        }
        let store = Self { pool, backend, write_lock, batcher, lite };
        store.keep_old_settings().await?;
        store.sweep_imports(store.backend == Backend::Sqlite).await?;
        for problem in store.durability_problems().await? {
            tracing::warn!("{problem}");
        }
        Ok(store)
    }

    /// Settings added since a project was stored keep its old behaviour, where the new default
    /// would change what it does:
    /// - `acquire.pair_lengths`: older projects drew one length per pair; they keep doing so
    ///   (`matched`), so a study's later rounds stay comparable with its earlier ones (new
    ///   projects: a length per completion);
    /// - `rating.auto_continue`: older projects waited for an admin after a human-rated round;
    ///   they still do (`enabled: false`), rather than training and acquiring by themselves on
    ///   the first start after an upgrade (new projects: on).
    async fn keep_old_settings(&self) -> Result<()> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT id, config FROM projects").fetch_all(&self.pool).await?;
        for (id, config) in rows {
            let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&config) else { continue };
            let mut kept = Vec::new();
            if let Some(acquire) = v.pointer_mut("/loop_settings/acquire").and_then(|a| a.as_object_mut())
                && !acquire.contains_key("pair_lengths")
            {
                acquire.insert("pair_lengths".into(), serde_json::json!(apl_shared::settings::PairLengths::Matched));
                kept.push("one length per pair (acquire.pair_lengths: matched)");
            }
            if let Some(rating) = v.pointer_mut("/rating").and_then(|r| r.as_object_mut())
                && !rating.contains_key("auto_continue")
            {
                rating.insert("auto_continue".into(), serde_json::json!({ "enabled": false }));
                kept.push("rounds wait for an admin (rating.auto_continue off)");
            }
            if kept.is_empty() {
                continue;
            }
            let mut w = self.begin_write().await?;
            sqlx::query("UPDATE projects SET config = $1 WHERE id = $2")
                .bind(v.to_string())
                .bind(&id)
                .execute(&mut *w.tx)
                .await?;
            w.commit().await?;
            tracing::info!(project = %id, kept = %kept.join("; "), "project settings from an older version kept as they were");
        }
        Ok(())
    }

    /// PostgreSQL settings under which an acknowledged label could be lost in a crash (`fsync`
    /// or `synchronous_commit` off); SQLite's are set on every connection.
    pub async fn durability_problems(&self) -> Result<Vec<String>> {
        if self.backend != Backend::Postgres {
            return Ok(Vec::new());
        }
        let fsync: String = sqlx::query_scalar("SHOW fsync").fetch_one(&self.pool).await?;
        let commit: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&self.pool).await?;
        Ok(durability_problems(&fsync, &commit))
    }

    pub async fn begin_write(&self) -> Result<WriteTx<'_>> {
        let guard = match self.backend {
            Backend::Sqlite => Some(self.write_lock.clone().lock_owned().await),
            Backend::Postgres => None,
        };
        Ok(WriteTx { tx: Tx(Some(self.pool.begin().await?)), guard, _store: std::marker::PhantomData })
    }

    /// A connection for the raters' reads: on SQLite one of the rusqlite read connections
    /// (statements in the calling thread, [`db`]), on PostgreSQL sqlx's pool.
    pub fn read(&self) -> Result<ReadConn<'_>> {
        Ok(match &self.lite {
            Some(l) => ReadConn::Lite(l.reader()?),
            None => ReadConn::Pool(&self.pool),
        })
    }

    /// Runs `op` in a write transaction and answers once it is committed: on SQLite in a group
    /// commit with other requests' operations (`store::batch`, which says what `op` must keep),
    /// on PostgreSQL in a transaction of its own. For the frequent small writes of raters.
    pub async fn write<T: Send + 'static>(&self, op: impl batch::WriteOp<T>) -> Result<T> {
        if let Some(b) = &self.batcher {
            return b.submit(op).await;
        }
        let mut tx = self.pool.begin().await?;
        match op(db::Db::Conn(&mut tx)).await {
            Ok(v) => {
                tx.commit().await?;
                Ok(v)
            }
            Err(e) => {
                tx.rollback().await?;
                Err(e)
            }
        }
    }

    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1").bind(key).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.get::<String, _>(0)))
    }

    /// Sets `key` unless it is already set; returns whether this call set it.
    pub async fn set_setting_once(&self, key: &str, value: &str) -> Result<bool> {
        let mut w = self.begin_write().await?;
        let r = sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        let mut w = self.begin_write().await?;
        sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2")
            .bind(key)
            .bind(value)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await
    }
}

/// What PostgreSQL's `fsync` and `synchronous_commit` settings put at risk.
pub fn durability_problems(fsync: &str, synchronous_commit: &str) -> Vec<String> {
    let mut out = Vec::new();
    if fsync.trim().eq_ignore_ascii_case("off") {
        out.push(
            "PostgreSQL runs with fsync = off: a crash of its machine can lose or corrupt acknowledged labels".into(),
        );
    }
    if synchronous_commit.trim().eq_ignore_ascii_case("off") {
        out.push(
            "PostgreSQL runs with synchronous_commit = off: labels acknowledged in the last moments before a crash \
             can be lost"
                .into(),
        );
    }
    out
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// A new time-ordered id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
