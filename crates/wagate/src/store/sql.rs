//! One way to run wagate's statements on either database: the store's code is written once,
//! against [`Db`], and runs on SQLite (one data directory) or PostgreSQL (several nodes).
//!
//! Statements are written in the SQL both understand: `?1`-style placeholders (turned into
//! PostgreSQL's `$1` here), `INSERT ... ON CONFLICT`, `RETURNING`, no rowid, no PRAGMA. Only
//! the schema differs (see `MIGRATIONS` and `postgres::MIGRATIONS`). Values cross as
//! [`Value`]: integers are 64-bit on both sides (PostgreSQL columns are BIGINT), booleans are
//! integers 0 and 1 (as SQLite keeps them).

use std::cell::RefCell;
use std::collections::HashMap;

use super::StoreError;

/// A value of a statement's parameter or a row's column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// What can be a statement's parameter.
pub trait ToValue {
    fn to_value(&self) -> Value;
}

/// What a column can be read as.
pub trait FromValue: Sized {
    fn from_value(value: &Value) -> Result<Self, String>;
}

/// The parameters of a statement: `args![session, id, now_ms as i64]`.
#[macro_export]
macro_rules! args {
    () => { &[] as &[&dyn $crate::store::sql::ToValue] };
    ($($value:expr),+ $(,)?) => { &[$(&$value as &dyn $crate::store::sql::ToValue),+] as &[&dyn $crate::store::sql::ToValue] };
}
pub use args;

/// One row of a query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    values: Vec<Value>,
}

impl Row {
    /// Column `index` as `T`; a column of another type is reported as corrupt data.
    pub fn get<T: FromValue>(&self, index: usize) -> Result<T, StoreError> {
        let value = self.values.get(index).ok_or_else(|| StoreError::Corrupt(format!("no column {index}")))?;
        T::from_value(value).map_err(|e| StoreError::Corrupt(format!("column {index}: {e}")))
    }
}

/// A connection (or the transaction on it) that runs wagate's statements.
pub trait Db {
    /// Runs a statement; returns how many rows it changed.
    fn execute(&self, sql: &str, params: &[&dyn ToValue]) -> Result<usize, StoreError>;
    /// Runs a query; returns its rows.
    fn query(&self, sql: &str, params: &[&dyn ToValue]) -> Result<Vec<Row>, StoreError>;
    /// Runs statements without parameters or answers (savepoints, schema changes).
    fn batch(&self, sql: &str) -> Result<(), StoreError>;
}

impl dyn Db + '_ {
    /// The first row of a query's answer, if any.
    pub fn query_opt(&self, sql: &str, params: &[&dyn ToValue]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The first row of a query that always answers one (`COUNT(*)`, `RETURNING`).
    pub fn query_one(&self, sql: &str, params: &[&dyn ToValue]) -> Result<Row, StoreError> {
        self.query_opt(sql, params)?.ok_or_else(|| StoreError::Corrupt(format!("no row from: {sql}")))
    }

    /// Every row of a query's answer, each read by `read`.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        read: impl FnMut(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        self.query(sql, params)?.iter().map(read).collect()
    }
}

// --- values --------------------------------------------------------------------------------

impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl ToValue for i64 {
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
}
impl ToValue for i32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for u32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for u16 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

fn found(value: &Value) -> &'static str {
    match value {
        Value::Null => "NULL",
        Value::Int(_) => "an integer",
        Value::Text(_) => "text",
        Value::Blob(_) => "bytes",
    }
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Int(v) => Ok(*v),
            other => Err(format!("expected an integer, found {}", found(other))),
        }
    }
}

/// Integers narrower than the column's 64 bits: out of range is corrupt data.
macro_rules! narrow_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(value: &Value) -> Result<Self, String> {
                let wide = i64::from_value(value)?;
                <$t>::try_from(wide).map_err(|_| format!("{wide} is out of range for {}", stringify!($t)))
            }
        }
    )*};
}
narrow_from_value!(i32, u32, u16);

impl FromValue for bool {
    fn from_value(value: &Value) -> Result<Self, String> {
        Ok(i64::from_value(value)? != 0)
    }
}
impl FromValue for String {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Text(text) => Ok(text.clone()),
            other => Err(format!("expected text, found {}", found(other))),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Blob(bytes) => Ok(bytes.clone()),
            other => Err(format!("expected bytes, found {}", found(other))),
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

// --- SQLite --------------------------------------------------------------------------------

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::ValueRef;
        Ok(rusqlite::types::ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Text(text) => ValueRef::Text(text.as_bytes()),
            Value::Blob(bytes) => ValueRef::Blob(bytes),
        }))
    }
}

fn sqlite_params(params: &[&dyn ToValue]) -> Vec<Value> {
    params.iter().map(|p| p.to_value()).collect()
}

impl Db for rusqlite::Connection {
    fn execute(&self, sql: &str, params: &[&dyn ToValue]) -> Result<usize, StoreError> {
        Ok(self.prepare_cached(sql)?.execute(rusqlite::params_from_iter(sqlite_params(params)))?)
    }

    fn query(&self, sql: &str, params: &[&dyn ToValue]) -> Result<Vec<Row>, StoreError> {
        use rusqlite::types::ValueRef;
        let mut statement = self.prepare_cached(sql)?;
        let columns = statement.column_count();
        let mut rows = statement.query(rusqlite::params_from_iter(sqlite_params(params)))?;
        let mut answer = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for index in 0..columns {
                values.push(match row.get_ref(index)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Text(text) => Value::Text(String::from_utf8_lossy(text).into_owned()),
                    ValueRef::Blob(bytes) => Value::Blob(bytes.to_vec()),
                    ValueRef::Real(v) => {
                        return Err(StoreError::Corrupt(format!("column {index}: unexpected real {v}")))
                    }
                });
            }
            answer.push(Row { values });
        }
        Ok(answer)
    }

    fn batch(&self, sql: &str) -> Result<(), StoreError> {
        Ok(self.execute_batch(sql)?)
    }
}

// --- PostgreSQL ----------------------------------------------------------------------------

/// `?1`-style placeholders as PostgreSQL's `$1`; text inside quotes is left alone.
pub fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted && chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::Type;
        match (self, ty) {
            (Value::Null, _) => Ok(postgres::types::IsNull::Yes),
            (Value::Int(v), &Type::INT8) => v.to_sql(ty, out),
            (Value::Int(v), &Type::INT4) => i32::try_from(*v)?.to_sql(ty, out),
            (Value::Int(v), &Type::INT2) => i16::try_from(*v)?.to_sql(ty, out),
            (Value::Int(v), &Type::BOOL) => (*v != 0).to_sql(ty, out),
            (Value::Int(v), &Type::TEXT | &Type::VARCHAR) => v.to_string().to_sql(ty, out),
            (Value::Text(text), &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME) => text.to_sql(ty, out),
            (Value::Blob(bytes), &Type::BYTEA) => bytes.to_sql(ty, out),
            (value, ty) => Err(format!("{} cannot be a parameter of type {ty}", found(value)).into()),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

fn postgres_value(row: &postgres::Row, index: usize) -> Result<Value, StoreError> {
    use postgres::types::Type;
    let ty = row.columns()[index].type_().clone();
    let value = match ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(index)?.map(Value::Int),
        Type::INT4 => row.try_get::<_, Option<i32>>(index)?.map(|v| Value::Int(v.into())),
        Type::INT2 => row.try_get::<_, Option<i16>>(index)?.map(|v| Value::Int(v.into())),
        Type::BOOL => row.try_get::<_, Option<bool>>(index)?.map(|v| Value::Int(v.into())),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            row.try_get::<_, Option<String>>(index)?.map(Value::Text)
        }
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(index)?.map(Value::Blob),
        other => return Err(StoreError::Corrupt(format!("column {index} has the unexpected type {other}"))),
    };
    Ok(value.unwrap_or(Value::Null))
}

/// The statements a PostgreSQL connection has prepared, by their text (prepared once per
/// connection: a statement of the hot paths runs thousands of times).
#[derive(Default)]
pub struct PreparedStatements {
    by_sql: RefCell<HashMap<String, postgres::Statement>>,
}

/// At most this many statements stay prepared per connection (wagate has a few dozen).
const MAX_PREPARED: usize = 512;

/// A PostgreSQL connection or transaction, as a [`Db`].
pub struct PgDb<'a, C: postgres::GenericClient> {
    client: RefCell<&'a mut C>,
    prepared: &'a PreparedStatements,
}

impl<'a, C: postgres::GenericClient> PgDb<'a, C> {
    pub fn new(client: &'a mut C, prepared: &'a PreparedStatements) -> Self {
        Self { client: RefCell::new(client), prepared }
    }

    fn statement(&self, sql: &str) -> Result<postgres::Statement, StoreError> {
        if let Some(statement) = self.prepared.by_sql.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.borrow_mut().prepare(&postgres_placeholders(sql))?;
        let mut prepared = self.prepared.by_sql.borrow_mut();
        if prepared.len() >= MAX_PREPARED {
            prepared.clear();
        }
        prepared.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

fn postgres_params(params: &[&dyn ToValue]) -> Vec<Value> {
    params.iter().map(|p| p.to_value()).collect()
}

impl<C: postgres::GenericClient> Db for PgDb<'_, C> {
    fn execute(&self, sql: &str, params: &[&dyn ToValue]) -> Result<usize, StoreError> {
        let statement = self.statement(sql)?;
        let values = postgres_params(params);
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = values.iter().map(|v| v as _).collect();
        let changed = self.client.borrow_mut().execute(&statement, &refs)?;
        Ok(usize::try_from(changed).unwrap_or(usize::MAX))
    }

    fn query(&self, sql: &str, params: &[&dyn ToValue]) -> Result<Vec<Row>, StoreError> {
        let statement = self.statement(sql)?;
        let values = postgres_params(params);
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = values.iter().map(|v| v as _).collect();
        let rows = self.client.borrow_mut().query(&statement, &refs)?;
        rows.iter()
            .map(|row| Ok(Row { values: (0..row.len()).map(|i| postgres_value(row, i)).collect::<Result<_, _>>()? }))
            .collect()
    }

    fn batch(&self, sql: &str) -> Result<(), StoreError> {
        Ok(self.client.borrow_mut().batch_execute(sql)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_postgres_ones_outside_quotes() {
        assert_eq!(
            postgres_placeholders("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND (?3 IS NULL OR d = ?3)"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND ($3 IS NULL OR d = $3)"
        );
        assert_eq!(postgres_placeholders("SELECT ? , ?x"), "SELECT ? , ?x", "only numbered ones");
    }

    #[test]
    fn sqlite_round_trips_every_kind_of_value() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        let db: &dyn Db = &db;
        db.batch("CREATE TABLE t (i INTEGER, s TEXT, b BLOB, n TEXT)").unwrap();
        let blob = vec![0u8, 255];
        let none: Option<&str> = None;
        assert_eq!(db.execute("INSERT INTO t VALUES (?1, ?2, ?3, ?4)", args![-7i64, "x", blob, none]).unwrap(), 1);
        let row = db.query_one("SELECT i, s, b, n FROM t", args![]).unwrap();
        assert_eq!(row.get::<i64>(0).unwrap(), -7);
        assert_eq!(row.get::<String>(1).unwrap(), "x");
        assert_eq!(row.get::<Vec<u8>>(2).unwrap(), blob);
        assert_eq!(row.get::<Option<String>>(3).unwrap(), None);
        assert!(row.get::<u32>(0).is_err(), "a negative number is no u32");
        assert!(row.get::<String>(0).is_err(), "an integer is no text");
        assert!(db.query_opt("SELECT i FROM t WHERE i = ?1", args![1i64]).unwrap().is_none());
    }
}
