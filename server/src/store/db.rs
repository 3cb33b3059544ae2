//! One way to run a statement on either database, for the raters' hot path.
//!
//! Why it exists: sqlx's SQLite driver gives each connection a thread of its own, and every
//! statement is a round trip to it (a channel send, a wake-up, the rows sent back, another
//! wake-up). A label with the next pair is about eight statements; at ~1,100 labels/s on 2
//! cores three quarters of the server's CPU was on sqlx's SQLite threads, half of that the
//! kernel switching between threads (`perf` during `bench/load.sh`). SQLite is a library whose
//! statements take microseconds, so on SQLite the raters' path runs them through rusqlite in
//! the calling thread: reads on a small pool of read connections ([`Lite::reader`]; in WAL
//! mode readers never wait for the writer), writes on the group-commit writer's thread
//! (`store::batch`). Everything else, and all of PostgreSQL, goes through sqlx.
//!
//! [`Db`] is what lets each hot-path query be written once for both: the SQL text is the same
//! (`$N` parameters, which SQLite reads as named parameters and which are bound here by their
//! number), parameters are [`Param`]s (sqlx's `Encode` and rusqlite's `ToSql`), rows are
//! tuples of types both drivers decode ([`Row`]).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use apl_shared::{Choice, JobKind, JobState, PairKind, Side};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::error::BoxDynError;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyConnection, AnyPool, Arguments, AssertSqlSafe};

use super::{Result, StoreError};

/// A connection to run statements on: whichever the caller holds.
pub enum Db<'a> {
    /// A sqlx connection or open transaction (PostgreSQL; SQLite writes under the write lock).
    Conn(&'a mut AnyConnection),
    /// sqlx's pool (PostgreSQL reads).
    Pool(&'a AnyPool),
    /// A rusqlite connection (SQLite): a read connection, or the writer's inside its batch.
    Lite(&'a mut rusqlite::Connection),
}

/// A value bound to a `$N` parameter, by either driver.
pub trait Param: rusqlite::ToSql + Sync {
    fn add_to(&self, args: &mut AnyArguments) -> std::result::Result<(), BoxDynError>;
}

/// The parameter types of the hot path: owned values are added by reference, borrowed
/// strings as themselves (sqlx encodes `&'a str` for `'a` only, so no blanket impl covers both).
macro_rules! param {
    (owned: $($t:ty),*) => {$(
        impl Param for $t {
            fn add_to(&self, args: &mut AnyArguments) -> std::result::Result<(), BoxDynError> {
                args.add(self)
            }
        }
    )*};
    (borrowed: $($t:ty),*) => {$(
        impl Param for $t {
            fn add_to(&self, args: &mut AnyArguments) -> std::result::Result<(), BoxDynError> {
                args.add(*self)
            }
        }
    )*};
}
param!(owned: String, i64, Side, Choice, PairKind, JobKind, JobState);
param!(borrowed: &str, Option<&str>);

/// A row as rusqlite reads it (tuples of `FromSql` columns, in order).
pub trait LiteRow: Sized {
    fn from_lite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self>;
}

macro_rules! lite_tuple {
    ($($t:ident $i:tt),+) => {
        impl<$($t: rusqlite::types::FromSql),+> LiteRow for ($($t,)+) {
            fn from_lite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
                Ok(($(row.get::<_, $t>($i)?,)+))
            }
        }
    };
}
lite_tuple!(A 0);
lite_tuple!(A 0, B 1);
lite_tuple!(A 0, B 1, C 2);
lite_tuple!(A 0, B 1, C 2, D 3);
lite_tuple!(A 0, B 1, C 2, D 3, E 4);
lite_tuple!(A 0, B 1, C 2, D 3, E 4, F 5);

/// A row both drivers decode.
pub trait Row: for<'r> sqlx::FromRow<'r, AnyRow> + LiteRow + Send + Unpin {}
impl<T> Row for T where T: for<'r> sqlx::FromRow<'r, AnyRow> + LiteRow + Send + Unpin {}

fn any_args(params: &[&dyn Param]) -> Result<AnyArguments> {
    let mut args = AnyArguments::default();
    for p in params {
        p.add_to(&mut args).map_err(sqlx::Error::Encode)?;
    }
    Ok(args)
}

/// The cached statement for `sql` with `params` bound: each `$N` in the text (SQLite numbers
/// named parameters by first appearance, not by their name) gets `params[N - 1]`.
fn lite_statement<'c>(
    c: &'c rusqlite::Connection,
    sql: &str,
    params: &[&dyn Param],
) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
    let mut st = c.prepare_cached(sql)?;
    for i in 1..=st.parameter_count() {
        let name = st.parameter_name(i).unwrap_or("?").to_string();
        let p = name
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
            .and_then(|n| params.get(n))
            .ok_or(rusqlite::Error::InvalidParameterName(name))?;
        let p: &dyn rusqlite::ToSql = *p;
        st.raw_bind_parameter(i, p)?;
    }
    Ok(st)
}

fn lite_rows<R: LiteRow>(
    c: &rusqlite::Connection,
    sql: &str,
    params: &[&dyn Param],
    limit: usize,
) -> rusqlite::Result<Vec<R>> {
    let mut st = lite_statement(c, sql, params)?;
    let mut rows = st.raw_query();
    let mut out = Vec::new();
    while out.len() < limit
        && let Some(row) = rows.next()?
    {
        out.push(R::from_lite(row)?);
    }
    Ok(out)
}

impl Db<'_> {
    /// The first row, if any.
    pub async fn fetch_optional<R: Row>(&mut self, sql: &str, params: &[&dyn Param]) -> Result<Option<R>> {
        Ok(match self {
            Db::Conn(c) => sqlx::query_as_with(AssertSqlSafe(sql), any_args(params)?).fetch_optional(&mut **c).await?,
            Db::Pool(p) => sqlx::query_as_with(AssertSqlSafe(sql), any_args(params)?).fetch_optional(*p).await?,
            Db::Lite(c) => lite_rows(c, sql, params, 1)?.pop(),
        })
    }

    /// The first row; an error when there is none.
    pub async fn fetch_one<R: Row>(&mut self, sql: &str, params: &[&dyn Param]) -> Result<R> {
        self.fetch_optional(sql, params).await?.ok_or(StoreError::Db(sqlx::Error::RowNotFound))
    }

    pub async fn fetch_all<R: Row>(&mut self, sql: &str, params: &[&dyn Param]) -> Result<Vec<R>> {
        Ok(match self {
            Db::Conn(c) => sqlx::query_as_with(AssertSqlSafe(sql), any_args(params)?).fetch_all(&mut **c).await?,
            Db::Pool(p) => sqlx::query_as_with(AssertSqlSafe(sql), any_args(params)?).fetch_all(*p).await?,
            Db::Lite(c) => lite_rows(c, sql, params, usize::MAX)?,
        })
    }

    /// Runs a statement that returns no rows; the number of rows it changed.
    pub async fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<u64> {
        Ok(match self {
            Db::Conn(c) => {
                sqlx::query_with(AssertSqlSafe(sql), any_args(params)?).execute(&mut **c).await?.rows_affected()
            }
            Db::Pool(p) => sqlx::query_with(AssertSqlSafe(sql), any_args(params)?).execute(*p).await?.rows_affected(),
            Db::Lite(c) => lite_statement(c, sql, params)?.raw_execute()? as u64,
        })
    }
}

/// Read connections kept for reuse; more are opened when more threads read at once.
const KEPT_READERS: usize = 8;
/// Statements each rusqlite connection keeps prepared (the hot path has about twenty).
const STATEMENT_CACHE: usize = 64;
/// How long a read waits on a locked file: it runs on one of the runtime's few worker threads
/// (in WAL mode readers wait only while a connection recovers the log, which is rare).
const READER_BUSY: std::time::Duration = std::time::Duration::from_secs(2);
/// How long the writer waits for another process's write to end.
pub const WRITER_BUSY: std::time::Duration = std::time::Duration::from_secs(10);

/// The rusqlite side of an SQLite store: its file and its read connections.
pub struct Lite {
    path: PathBuf,
    readers: Mutex<Vec<rusqlite::Connection>>,
}

/// A read connection, back in the pool when dropped.
pub struct Reader<'a> {
    conn: Option<rusqlite::Connection>,
    lite: &'a Lite,
}

impl Reader<'_> {
    pub fn db(&mut self) -> Db<'_> {
        Db::Lite(self.conn.as_mut().expect("a reader holds its connection until dropped"))
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let mut kept = self.lite.readers.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < KEPT_READERS {
            kept.push(conn);
        }
    }
}

impl Lite {
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), readers: Mutex::new(Vec::new()) }
    }

    /// A connection to the store's file (which sqlx made and migrated: never created here)
    /// with the settings every SQLite connection of the store has (as `Store::connect` sets
    /// them on sqlx's): foreign keys, `synchronous = FULL` (the file is in WAL mode already),
    /// a busy timeout.
    pub fn open(&self, busy: std::time::Duration) -> rusqlite::Result<rusqlite::Connection> {
        use rusqlite::OpenFlags;
        let c = rusqlite::Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        c.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")?;
        c.busy_timeout(busy)?;
        c.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(c)
    }

    pub fn reader(&self) -> Result<Reader<'_>> {
        let kept = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match kept {
            Some(c) => c,
            None => self.open(READER_BUSY)?,
        };
        Ok(Reader { conn: Some(conn), lite: self })
    }
}

/// The file an SQLite URL names, read as sqlx reads it (scheme stripped, percent-decoded);
/// an error for an in-memory database, which other connections cannot open.
pub fn sqlite_file(url: &str) -> Result<PathBuf> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    if url.contains(":memory:") || query.split('&').any(|kv| kv == "mode=memory") {
        return Err(StoreError::Invalid(
            "an in-memory SQLite database cannot be shared by the store's connections; give a file".into(),
        ));
    }
    Ok(SqliteConnectOptions::from_str(url)?.get_filename().to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file sqlx opens for the same URL (sqlx-sqlite's `SqliteConnectOptions::from_str`).
    #[test]
    fn sqlite_files_from_urls() {
        let file = |url: &str| sqlite_file(url).ok();
        assert_eq!(file("sqlite:///tmp/a.sqlite?mode=rwc"), Some("/tmp/a.sqlite".into()));
        assert_eq!(file("sqlite:///data/my%20db/x.sqlite"), Some("/data/my db/x.sqlite".into()));
        assert_eq!(file("sqlite://rel/a.sqlite"), Some("rel/a.sqlite".into()));
        assert_eq!(file("sqlite:a.sqlite"), Some("a.sqlite".into()));
        assert_eq!(file("sqlite::memory:"), None);
        assert_eq!(file("sqlite://name?cache=shared&mode=memory"), None);
    }

    /// Parameters are bound by their number, wherever they first appear in the text, and rows
    /// come back as the same tuples sqlx gives.
    #[tokio::test]
    async fn both_drivers_bind_by_number_and_read_the_same_rows() {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        let pool = AnyPool::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.unwrap();
        sqlx::query("CREATE TABLE t (a TEXT, b BIGINT, c TEXT)").execute(&pool).await.unwrap();
        let lite = Lite::new(&path);
        let mut reader = lite.reader().unwrap();
        let (two, one) = ("two".to_string(), 1_i64);
        let no_text: Option<&str> = None;
        let sql = "INSERT INTO t (b, a, c) VALUES ($2, $1, $3)";
        assert_eq!(reader.db().execute(sql, &[&two, &one, &no_text]).await.unwrap(), 1);
        assert_eq!(Db::Pool(&pool).execute(sql, &[&"three", &3_i64, &Some("x")]).await.unwrap(), 1);
        let q = "SELECT a, b, c FROM t WHERE b >= $2 AND a <> $1 ORDER BY b";
        let want = vec![("two".to_string(), 1_i64, None), ("three".to_string(), 3, Some("x".to_string()))];
        let lite_rows: Vec<(String, i64, Option<String>)> = reader.db().fetch_all(q, &[&"none", &0_i64]).await.unwrap();
        let any_rows: Vec<(String, i64, Option<String>)> =
            Db::Pool(&pool).fetch_all(q, &[&"none", &0_i64]).await.unwrap();
        assert_eq!((lite_rows, any_rows), (want.clone(), want));
        let none: Option<(i64,)> = reader.db().fetch_optional("SELECT b FROM t WHERE b > $1", &[&9_i64]).await.unwrap();
        assert_eq!(none, None);
        // A parameter the caller did not give is an error that names it.
        let e = reader.db().fetch_optional::<(i64,)>("SELECT $3", &[&1_i64]).await.unwrap_err();
        assert!(e.to_string().contains("$3"), "{e}");
    }
}
