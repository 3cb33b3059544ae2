//! The same column mapping as [`crate::sql`], for rusqlite (feature `rusqlite`): the store runs
//! the raters' hot path on SQLite through rusqlite in the calling thread (`store::db` in the
//! server says why), over the same columns. A vocabulary enum is a TEXT column holding its
//! name, a typed JSON document a TEXT column holding its JSON.

use rusqlite::types::{FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};

/// A TEXT column holding a vocabulary name.
macro_rules! text_column {
    ($t:ty) => {
        impl rusqlite::types::ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.name()))
            }
        }

        impl rusqlite::types::FromSql for $t {
            fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                value.as_str()?.parse::<$t>().map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
            }
        }
    };
}
pub(crate) use text_column;

/// A TEXT column holding a typed JSON document.
macro_rules! json_column {
    ($($t:ty),* $(,)?) => {$(
        impl rusqlite::types::ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                $crate::lite::encode_json(self)
            }
        }

        impl rusqlite::types::FromSql for $t {
            fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                $crate::lite::decode_json(value)
            }
        }
    )*};
}
pub(crate) use json_column;

pub fn encode_json<T: serde::Serialize>(v: &T) -> rusqlite::Result<ToSqlOutput<'static>> {
    let s = serde_json::to_string(v).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    Ok(ToSqlOutput::from(s))
}

pub fn decode_json<T: serde::de::DeserializeOwned>(value: ValueRef<'_>) -> FromSqlResult<T> {
    serde_json::from_str(value.as_str()?).map_err(|e| FromSqlError::Other(Box::new(e)))
}
