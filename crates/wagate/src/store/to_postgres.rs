//! `wagate migrate`'s part for wagate's own tables: every row of a data directory's
//! `wagate.db` copied into the same tables in PostgreSQL, in one transaction, so that the
//! sessions appear there all at once or not at all.
//!
//! The tables and columns are read from the SQLite schema rather than listed here, so a table
//! a later version adds to both schemas is copied too; one that PostgreSQL lacks stops the
//! copy before anything is written. Sequence numbers (`seq`, the order of the webhook outbox
//! and the outgoing queue) are not copied but given anew by PostgreSQL, in the same order:
//! the target may hold other sessions' rows whose numbers they would collide with.

use rusqlite::types::ValueRef;
use rusqlite::Connection;

use super::sql::{Db, PgDb, PreparedStatements, ToValue, Value};
use super::StoreError;

/// How many rows of one table were copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCount {
    pub table: String,
    pub rows: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("the data directory's database: {0}")]
    Source(#[from] rusqlite::Error),
    #[error("the target database: {0}")]
    Target(#[from] StoreError),
    #[error("the target database already has the session(s) {}", .0.join(", "))]
    SessionsExist(Vec<String>),
    #[error("the data directory has a table {0} that the PostgreSQL schema lacks (is this wagate older than the one that wrote it?)")]
    NoSuchTable(String),
    #[error("the data directory has a column {table}.{column} that the PostgreSQL schema lacks")]
    NoSuchColumn { table: String, column: String },
    #[error("copying table {table}: {source}")]
    Row { table: String, source: StoreError },
}

impl From<::postgres::Error> for TransferError {
    fn from(e: ::postgres::Error) -> Self {
        Self::Target(StoreError::Postgres(e))
    }
}

/// The ids of the sessions registered in `source` (a data directory's `wagate.db`).
pub fn source_sessions(source: &Connection) -> Result<Vec<String>, TransferError> {
    let mut statement = source.prepare("SELECT id FROM sessions ORDER BY id")?;
    let ids = statement.query_map([], |row| row.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(ids)
}

/// Which of `ids` are registered in the target database.
pub fn registered(target: &mut impl ::postgres::GenericClient, ids: &[String]) -> Result<Vec<String>, TransferError> {
    let rows = target.query("SELECT id FROM sessions WHERE id = ANY($1) ORDER BY id", &[&ids])?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Copies every table of `source` into `target` (migrated to this build's schema), in one
/// transaction; refused, before anything is written, when the target has any of the sessions.
pub fn copy_tables(source: &Connection, target: &mut ::postgres::Client) -> Result<Vec<TableCount>, TransferError> {
    let mut tx = target.transaction()?;
    let existing = registered(&mut tx, &source_sessions(source)?)?;
    if !existing.is_empty() {
        return Err(TransferError::SessionsExist(existing));
    }
    let mut plans = Vec::new();
    for table in source_tables(source)? {
        plans.push(plan(source, &mut tx, table)?);
    }
    let prepared = PreparedStatements::default();
    let mut counts = Vec::new();
    {
        let db = PgDb::new(&mut tx, &prepared);
        for plan in &plans {
            let rows = copy_rows(source, &db, plan).map_err(|e| match e {
                TransferError::Target(source) => TransferError::Row { table: plan.table.clone(), source },
                other => other,
            })?;
            counts.push(TableCount { table: plan.table.clone(), rows });
        }
    }
    tx.commit()?;
    Ok(counts)
}

/// How one table is copied.
#[derive(Debug)]
struct Plan {
    table: String,
    /// The columns copied (those of SQLite but the sequence number).
    columns: Vec<String>,
    /// The sequence number PostgreSQL gives anew: rows are copied in its order.
    sequence: Option<String>,
}

/// wagate's tables in `source` (not SQLite's own).
fn source_tables(source: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut statement = source.prepare(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )?;
    let names = statement.query_map([], |row| row.get(0))?.collect();
    names
}

fn plan(
    source: &Connection,
    target: &mut impl ::postgres::GenericClient,
    table: String,
) -> Result<Plan, TransferError> {
    let mut statement = source.prepare("SELECT name FROM pragma_table_info(?1)")?;
    let columns: Vec<String> = statement.query_map([&table], |row| row.get(0))?.collect::<rusqlite::Result<_>>()?;
    let found = target.query(
        "SELECT column_name::text, COALESCE(column_default, '') FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1",
        &[&table],
    )?;
    if found.is_empty() {
        return Err(TransferError::NoSuchTable(table));
    }
    let target_columns: Vec<(String, String)> = found.iter().map(|row| (row.get(0), row.get(1))).collect();
    let mut plan = Plan { table, columns: Vec::new(), sequence: None };
    for column in columns {
        let Some((_, default)) = target_columns.iter().find(|(name, _)| *name == column) else {
            return Err(TransferError::NoSuchColumn { table: plan.table, column });
        };
        if default.starts_with("nextval(") {
            plan.sequence = Some(column);
        } else {
            plan.columns.push(column);
        }
    }
    Ok(plan)
}

/// `"name"`, quoted as an SQL identifier (the names come from the file being copied).
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Copies the rows of one table, one at a time (a big outbox is not held in memory).
fn copy_rows(source: &Connection, target: &dyn Db, plan: &Plan) -> Result<usize, TransferError> {
    let list = plan.columns.iter().map(|c| quoted(c)).collect::<Vec<_>>().join(", ");
    let order = plan.sequence.as_deref().map(|seq| format!(" ORDER BY {}", quoted(seq))).unwrap_or_default();
    let placeholders = (1..=plan.columns.len()).map(|n| format!("?{n}")).collect::<Vec<_>>().join(", ");
    let insert = format!("INSERT INTO {} ({list}) VALUES ({placeholders})", quoted(&plan.table));
    let mut statement = source.prepare(&format!("SELECT {list} FROM {}{order}", quoted(&plan.table)))?;
    let mut rows = statement.query([])?;
    let mut copied = 0;
    while let Some(row) = rows.next()? {
        let values = (0..plan.columns.len()).map(|i| value(row.get_ref(i)?)).collect::<Result<Vec<_>, _>>()?;
        let params: Vec<&dyn ToValue> = values.iter().map(|v| v as &dyn ToValue).collect();
        target.execute(&insert, &params)?;
        copied += 1;
    }
    Ok(copied)
}

/// A column of SQLite as wagate's neutral value (wagate writes no floating-point numbers).
fn value(found: ValueRef<'_>) -> Result<Value, TransferError> {
    Ok(match found {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(v) => Value::Int(v),
        ValueRef::Text(text) => Value::Text(
            String::from_utf8(text.to_vec())
                .map_err(|e| StoreError::Corrupt(format!("text that is not UTF-8: {e}")))?,
        ),
        ValueRef::Blob(bytes) => Value::Blob(bytes.to_vec()),
        ValueRef::Real(v) => return Err(StoreError::Corrupt(format!("an unexpected real number {v}")).into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg_testing::TestDatabase;

    /// A data directory's database with session `S` and three events, the second one with
    /// NULLs in its optional columns.
    fn source(dir: &std::path::Path) -> Connection {
        drop(super::super::Store::open(dir).unwrap());
        let db = Connection::open(dir.join(super::super::DB_FILE)).unwrap();
        db.execute_batch(
            "INSERT INTO sessions (id, created_at, link_confirmed) VALUES ('S', '2024-01-01T00:00:00Z', 1);
             INSERT INTO webhook_events (seq, id, session, event, body, created_ms, next_attempt_ms, last_status)
                 VALUES (7, 'e1', 'S', 'x', '{}', 1, 1, 503), (8, 'e2', 'S', 'x', '{}', 2, 2, NULL),
                        (9, 'e3', 'S', 'x', '{}', 3, 3, 200);",
        )
        .unwrap();
        db
    }

    #[tokio::test]
    async fn rows_are_copied_in_order_after_the_targets_own_and_a_second_copy_is_refused() {
        let database = TestDatabase::create().await;
        let url = database.url();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let source = source(&path);
            let config = super::super::postgres::Settings::parse(&url).unwrap();
            super::super::postgres::migrate(&config).unwrap();
            let mut target = super::super::postgres::connect(&config).unwrap();
            // Another gateway's session already there, its event numbered like the source's.
            target
                .batch_execute(
                    "INSERT INTO sessions (id, created_at) VALUES ('T', 'now');
                     INSERT INTO webhook_events (id, session, event, body, created_ms, next_attempt_ms)
                         SELECT 'e' || n, 'T', 'x', '{}', n, n FROM generate_series(10, 20) n;",
                )
                .unwrap();

            let counts = copy_tables(&source, &mut target).unwrap();
            let count = |table: &str| counts.iter().find(|c| c.table == table).map(|c| c.rows);
            assert_eq!((count("sessions"), count("webhook_events")), (Some(1), Some(3)));
            let rows = target
                .query("SELECT id, seq, last_status FROM webhook_events WHERE session = 'S' ORDER BY seq", &[])
                .unwrap();
            let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            assert_eq!(ids, ["e1", "e2", "e3"], "in the source's order");
            assert!(rows.iter().all(|r| r.get::<_, i64>(1) > 11), "numbered after the target's own");
            assert_eq!(rows[1].get::<_, Option<i64>>(2), None);
            let confirmed: i64 =
                target.query_one("SELECT link_confirmed FROM sessions WHERE id = 'S'", &[]).unwrap().get(0);
            assert_eq!(confirmed, 1);

            let again = copy_tables(&source, &mut target);
            assert!(matches!(&again, Err(TransferError::SessionsExist(ids)) if ids == &["S"]), "{again:?}");
            let events: i64 = target.query_one("SELECT count(*) FROM webhook_events", &[]).unwrap().get(0);
            assert_eq!(events, 14, "nothing of the refused copy was written");
        })
        .await
        .unwrap();
    }
}
