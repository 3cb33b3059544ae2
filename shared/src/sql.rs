//! How the wire types sit in the store's columns (feature `sqlx`), for sqlx's `Any` driver,
//! which the store uses so every query is written once for SQLite and PostgreSQL.
//!
//! sqlx derives column types for one database at a time, not for `Any`, and its `Json`
//! wrapper has no `Any` mapping either; these two macros give both: a vocabulary enum is a
//! TEXT column holding its name, a typed JSON document a TEXT column holding its JSON. With
//! them, rows map onto the wire types with `#[derive(sqlx::FromRow)]` and queries bind the
//! enums themselves.

use sqlx::any::{Any, AnyTypeInfo, AnyValueRef};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Type};

/// A TEXT column holding a vocabulary name.
macro_rules! text_column {
    ($t:ty) => {
        impl sqlx::Type<sqlx::Any> for $t {
            fn type_info() -> sqlx::any::AnyTypeInfo {
                <str as sqlx::Type<sqlx::Any>>::type_info()
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Any> for $t {
            fn encode_by_ref(
                &self,
                buf: &mut <sqlx::Any as sqlx::Database>::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, sqlx::Any>>::encode(self.name(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Any> for $t {
            fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let s = <&str as sqlx::Decode<'r, sqlx::Any>>::decode(value)?;
                Ok(s.parse::<$t>()?)
            }
        }
    };
}
pub(crate) use text_column;

/// A TEXT column holding a typed JSON document.
macro_rules! json_column {
    ($($t:ty),* $(,)?) => {$(
        impl sqlx::Type<sqlx::Any> for $t {
            fn type_info() -> sqlx::any::AnyTypeInfo {
                $crate::sql::text_type()
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Any> for $t {
            fn encode_by_ref(
                &self,
                buf: &mut <sqlx::Any as sqlx::Database>::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                $crate::sql::encode_json(self, buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Any> for $t {
            fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                $crate::sql::decode_json(value)
            }
        }
    )*};
}
pub(crate) use json_column;

pub fn text_type() -> AnyTypeInfo {
    <str as Type<Any>>::type_info()
}

pub fn encode_json<T: serde::Serialize>(
    v: &T,
    buf: &mut <Any as Database>::ArgumentBuffer,
) -> Result<IsNull, BoxDynError> {
    <String as Encode<'_, Any>>::encode(serde_json::to_string(v)?, buf)
}

pub fn decode_json<T: serde::de::DeserializeOwned>(value: AnyValueRef<'_>) -> Result<T, BoxDynError> {
    let s = <&str as Decode<'_, Any>>::decode(value)?;
    Ok(serde_json::from_str(s)?)
}
