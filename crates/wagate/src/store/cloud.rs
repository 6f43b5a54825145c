//! What the Cloud API face of a session keeps (docs/cloud-api.md): which session answers
//! as which phone number id (and the hash of its token), the messages sent through that
//! API (only their statuses become Cloud webhooks), uploaded files, message templates,
//! resumable uploads and the last interactive message per contact.
//!
//! Portable SQL only (`?n` placeholders, `ON CONFLICT ... DO`, no rowid, no PRAGMA): the
//! same statements are meant to run on PostgreSQL.

use super::sql::{Db, Row};
use crate::args;

use super::{Store, StoreError};

/// The migration that adds these tables (appended to `MIGRATIONS`).
pub const MIGRATION: &str = "CREATE TABLE cloud_numbers (
        session TEXT PRIMARY KEY,
        phone_number_id TEXT NOT NULL UNIQUE,
        waba_id TEXT NOT NULL,
        app_id TEXT NOT NULL,
        token_sha256 BLOB NOT NULL,
        include_all INTEGER NOT NULL DEFAULT 0,
        rate_per_minute INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX cloud_numbers_waba ON cloud_numbers (waba_id);
    CREATE INDEX cloud_numbers_app ON cloud_numbers (app_id);
    CREATE TABLE cloud_sent (
        session TEXT NOT NULL,
        id TEXT NOT NULL,
        wa_id TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (session, id)
    );
    CREATE INDEX cloud_sent_age ON cloud_sent (created_ms);
    CREATE TABLE cloud_media (
        id TEXT PRIMARY KEY,
        session TEXT NOT NULL,
        mime_type TEXT NOT NULL,
        filename TEXT,
        sha256 TEXT NOT NULL,
        data BLOB NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX cloud_media_age ON cloud_media (created_ms);
    CREATE TABLE cloud_templates (
        id TEXT PRIMARY KEY,
        waba_id TEXT NOT NULL,
        name TEXT NOT NULL,
        language TEXT NOT NULL,
        category TEXT NOT NULL,
        components TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        UNIQUE (waba_id, name, language)
    );
    CREATE TABLE cloud_uploads (
        id TEXT PRIMARY KEY,
        app_id TEXT NOT NULL,
        file_type TEXT NOT NULL,
        file_length INTEGER NOT NULL,
        handle TEXT,
        data BLOB,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE cloud_interactive (
        session TEXT NOT NULL,
        contact TEXT NOT NULL,
        kind TEXT NOT NULL,
        options TEXT NOT NULL,
        sent_ms INTEGER NOT NULL,
        PRIMARY KEY (session, contact)
    );";

/// The same tables on PostgreSQL (appended to `store::postgres::MIGRATIONS`).
pub const POSTGRES_MIGRATION: &str = "CREATE TABLE cloud_numbers (
        session TEXT PRIMARY KEY,
        phone_number_id TEXT NOT NULL UNIQUE,
        waba_id TEXT NOT NULL,
        app_id TEXT NOT NULL,
        token_sha256 BYTEA NOT NULL,
        include_all BIGINT NOT NULL DEFAULT 0,
        rate_per_minute BIGINT NOT NULL,
        created_ms BIGINT NOT NULL
    );
    CREATE INDEX cloud_numbers_waba ON cloud_numbers (waba_id);
    CREATE INDEX cloud_numbers_app ON cloud_numbers (app_id);
    CREATE TABLE cloud_sent (
        session TEXT NOT NULL,
        id TEXT NOT NULL,
        wa_id TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY (session, id)
    );
    CREATE INDEX cloud_sent_age ON cloud_sent (created_ms);
    CREATE TABLE cloud_media (
        id TEXT PRIMARY KEY,
        session TEXT NOT NULL,
        mime_type TEXT NOT NULL,
        filename TEXT,
        sha256 TEXT NOT NULL,
        data BYTEA NOT NULL,
        created_ms BIGINT NOT NULL
    );
    CREATE INDEX cloud_media_age ON cloud_media (created_ms);
    CREATE TABLE cloud_templates (
        id TEXT PRIMARY KEY,
        waba_id TEXT NOT NULL,
        name TEXT NOT NULL,
        language TEXT NOT NULL,
        category TEXT NOT NULL,
        components TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        UNIQUE (waba_id, name, language)
    );
    CREATE TABLE cloud_uploads (
        id TEXT PRIMARY KEY,
        app_id TEXT NOT NULL,
        file_type TEXT NOT NULL,
        file_length BIGINT NOT NULL,
        handle TEXT,
        data BYTEA,
        created_ms BIGINT NOT NULL
    );
    CREATE TABLE cloud_interactive (
        session TEXT NOT NULL,
        contact TEXT NOT NULL,
        kind TEXT NOT NULL,
        options TEXT NOT NULL,
        sent_ms BIGINT NOT NULL,
        PRIMARY KEY (session, contact)
    );";

/// A session exposed as a Cloud API phone number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudNumber {
    pub session: String,
    pub phone_number_id: String,
    pub waba_id: String,
    pub app_id: String,
    /// SHA-256 of the access token (the token itself is not kept).
    pub token_sha256: Vec<u8>,
    /// Group messages, status broadcasts and edits are delivered too.
    pub include_all: bool,
    /// Sends allowed per minute through this API.
    pub rate_per_minute: u32,
    pub created_ms: u64,
}

/// A file uploaded through `POST /{v}/{phone_number_id}/media`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudMedia {
    pub id: String,
    pub session: String,
    pub mime_type: String,
    pub filename: Option<String>,
    /// Hex.
    pub sha256: String,
    pub data: Vec<u8>,
}

/// A message template (always approved).
#[derive(Debug, Clone, PartialEq)]
pub struct CloudTemplate {
    pub id: String,
    pub waba_id: String,
    pub name: String,
    pub language: String,
    pub category: String,
    /// The components as the client gave them (JSON array).
    pub components: serde_json::Value,
}

/// A resumable upload session (`POST /{v}/{app_id}/uploads`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudUpload {
    pub id: String,
    pub app_id: String,
    pub file_type: String,
    pub file_length: u64,
    pub handle: Option<String>,
}

/// The last interactive message sent to a contact: its options, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudInteractive {
    /// `button` or `list`.
    pub kind: String,
    /// JSON array of `{id, title, description?}`.
    pub options: String,
    pub sent_ms: u64,
}

const NUMBER_COLUMNS: &str =
    "session, phone_number_id, waba_id, app_id, token_sha256, include_all, rate_per_minute, created_ms";

fn number_of(row: &Row) -> Result<CloudNumber, StoreError> {
    Ok(CloudNumber {
        session: row.get(0)?,
        phone_number_id: row.get(1)?,
        waba_id: row.get(2)?,
        app_id: row.get(3)?,
        token_sha256: row.get(4)?,
        include_all: row.get::<i64>(5)? != 0,
        rate_per_minute: u32::try_from(row.get::<i64>(6)?).unwrap_or(0),
        created_ms: u64::try_from(row.get::<i64>(7)?).unwrap_or(0),
    })
}

fn template_of(row: &Row) -> Result<CloudTemplate, StoreError> {
    let template = CloudTemplate {
        id: row.get(0)?,
        waba_id: row.get(1)?,
        name: row.get(2)?,
        language: row.get(3)?,
        category: row.get(4)?,
        components: serde_json::Value::Null,
    };
    parse_template((template, row.get(5)?))
}

fn parse_template((mut template, components): (CloudTemplate, String)) -> Result<CloudTemplate, StoreError> {
    template.components = serde_json::from_str(&components)
        .map_err(|e| StoreError::Corrupt(format!("components of template {}: {e}", template.id)))?;
    Ok(template)
}

const TEMPLATE_COLUMNS: &str = "id, waba_id, name, language, category, components";

/// Whether a message was sent through the Cloud API (and to whom), inside a transaction
/// or on a reading connection.
pub fn cloud_sent_to(db: &dyn Db, session: &str, id: &str) -> Result<Option<String>, StoreError> {
    db.query_opt("SELECT wa_id FROM cloud_sent WHERE session = ?1 AND id = ?2", args![session, id])?
        .map(|row| row.get(0))
        .transpose()
}

/// Deletes a session's Cloud API rows inside the caller's transaction.
pub fn delete_session_rows(db: &dyn Db, session: &str) -> Result<(), StoreError> {
    for table in ["cloud_numbers", "cloud_sent", "cloud_media", "cloud_interactive"] {
        db.execute(&format!("DELETE FROM {table} WHERE session = ?1"), args![session])?;
    }
    Ok(())
}

impl Store {
    /// Exposes a session as a phone number id (replacing its earlier mapping). Err when the
    /// phone number id belongs to another session (a unique violation).
    pub async fn set_cloud_number(&self, number: CloudNumber) -> Result<(), StoreError> {
        self.write(move |db| {
            db.execute(
                "INSERT INTO cloud_numbers (session, phone_number_id, waba_id, app_id, token_sha256, include_all,
                 rate_per_minute, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (session) DO UPDATE SET phone_number_id = ?2, waba_id = ?3, app_id = ?4,
                 token_sha256 = ?5, include_all = ?6, rate_per_minute = ?7",
                args![
                    number.session,
                    number.phone_number_id,
                    number.waba_id,
                    number.app_id,
                    number.token_sha256,
                    i64::from(number.include_all),
                    i64::from(number.rate_per_minute),
                    number.created_ms as i64
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Removes a session's mapping; false when it had none.
    pub async fn remove_cloud_number(&self, session: &str) -> Result<bool, StoreError> {
        let session = session.to_string();
        self.write(move |db| Ok(db.execute("DELETE FROM cloud_numbers WHERE session = ?1", args![session])? == 1)).await
    }

    pub fn cloud_number_of_session(&self, session: &str) -> Result<Option<CloudNumber>, StoreError> {
        self.cloud_number_where("session", session)
    }

    pub fn cloud_number(&self, phone_number_id: &str) -> Result<Option<CloudNumber>, StoreError> {
        self.cloud_number_where("phone_number_id", phone_number_id)
    }

    fn cloud_number_where(&self, column: &'static str, value: &str) -> Result<Option<CloudNumber>, StoreError> {
        let value = value.to_string();
        self.read(move |db| {
            let sql = format!("SELECT {NUMBER_COLUMNS} FROM cloud_numbers WHERE {column} = ?1");
            db.query_opt(&sql, args![value])?.as_ref().map(number_of).transpose()
        })
    }

    /// The numbers of a WhatsApp Business Account id (or, with `by_app`, of an app id).
    pub fn cloud_numbers_of(&self, id: &str, by_app: bool) -> Result<Vec<CloudNumber>, StoreError> {
        let id = id.to_string();
        let column = if by_app { "app_id" } else { "waba_id" };
        self.read(move |db| {
            let sql = format!("SELECT {NUMBER_COLUMNS} FROM cloud_numbers WHERE {column} = ?1 ORDER BY session");
            db.query_map(&sql, args![id], number_of)
        })
    }

    /// Every mapping (for token checks on objects that name no number).
    pub fn cloud_numbers(&self) -> Result<Vec<CloudNumber>, StoreError> {
        self.read(|db| {
            db.query_map(&format!("SELECT {NUMBER_COLUMNS} FROM cloud_numbers ORDER BY session"), args![], number_of)
        })
    }

    /// Notes, before it is sent, that message `id` goes out through the Cloud API to `wa_id`.
    pub async fn note_cloud_send(&self, session: &str, id: &str, wa_id: &str, now_ms: u64) -> Result<(), StoreError> {
        let (session, id, wa_id) = (session.to_string(), id.to_string(), wa_id.to_string());
        self.write(move |db| {
            db.execute(
                "INSERT INTO cloud_sent (session, id, wa_id, created_ms) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                args![session, id, wa_id, now_ms as i64],
            )?;
            Ok(())
        })
        .await
    }

    pub fn cloud_sent_to(&self, session: &str, id: &str) -> Result<Option<String>, StoreError> {
        let (session, id) = (session.to_string(), id.to_string());
        self.read(move |db| cloud_sent_to(db, &session, &id))
    }

    pub async fn add_cloud_media(&self, media: CloudMedia, now_ms: u64) -> Result<(), StoreError> {
        self.write(move |db| {
            db.execute(
                "INSERT INTO cloud_media (id, session, mime_type, filename, sha256, data, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                args![
                    media.id,
                    media.session,
                    media.mime_type,
                    media.filename,
                    media.sha256,
                    media.data,
                    now_ms as i64
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub fn cloud_media(&self, id: &str) -> Result<Option<CloudMedia>, StoreError> {
        let id = id.to_string();
        self.read(move |db| {
            db.query_opt(
                "SELECT id, session, mime_type, filename, sha256, data FROM cloud_media WHERE id = ?1",
                args![id],
            )?
            .map(|row| {
                Ok(CloudMedia {
                    id: row.get(0)?,
                    session: row.get(1)?,
                    mime_type: row.get(2)?,
                    filename: row.get(3)?,
                    sha256: row.get(4)?,
                    data: row.get(5)?,
                })
            })
            .transpose()
        })
    }

    pub async fn delete_cloud_media(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |db| Ok(db.execute("DELETE FROM cloud_media WHERE id = ?1", args![id])? == 1)).await
    }

    /// Adds a template; false when the account has one of that name and language already.
    pub async fn add_cloud_template(&self, template: CloudTemplate, now_ms: u64) -> Result<bool, StoreError> {
        self.write(move |db| {
            let inserted = db.execute(
                "INSERT INTO cloud_templates (id, waba_id, name, language, category, components, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                args![
                    template.id,
                    template.waba_id,
                    template.name,
                    template.language,
                    template.category,
                    template.components.to_string(),
                    now_ms as i64
                ],
            )?;
            Ok(inserted == 1)
        })
        .await
    }

    /// Replaces a template's category and components; false for an unknown id.
    pub async fn update_cloud_template(
        &self,
        id: &str,
        category: Option<String>,
        components: Option<serde_json::Value>,
    ) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |db| {
            let changed = db.execute(
                "UPDATE cloud_templates SET category = COALESCE(CAST(?2 AS TEXT), category),
                 components = COALESCE(CAST(?3 AS TEXT), components) WHERE id = ?1",
                args![id, category, components.map(|c| c.to_string())],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    /// Deletes templates of an account by name (every language), or one by id; how many.
    pub async fn delete_cloud_templates(
        &self,
        waba_id: &str,
        name: Option<&str>,
        id: Option<&str>,
    ) -> Result<usize, StoreError> {
        let (waba_id, name, id) = (waba_id.to_string(), name.map(str::to_string), id.map(str::to_string));
        self.write(move |db| {
            db.execute(
                "DELETE FROM cloud_templates WHERE waba_id = ?1 AND (CAST(?2 AS TEXT) IS NULL OR name = ?2)
                 AND (CAST(?3 AS TEXT) IS NULL OR id = ?3)",
                args![waba_id, name, id],
            )
        })
        .await
    }

    pub fn cloud_templates(&self, waba_id: &str) -> Result<Vec<CloudTemplate>, StoreError> {
        let waba_id = waba_id.to_string();
        self.read(move |db| {
            let sql =
                format!("SELECT {TEMPLATE_COLUMNS} FROM cloud_templates WHERE waba_id = ?1 ORDER BY name, language");
            db.query_map(&sql, args![waba_id], template_of)
        })
    }

    pub fn cloud_template(&self, id: &str) -> Result<Option<CloudTemplate>, StoreError> {
        let id = id.to_string();
        self.read(move |db| {
            let sql = format!("SELECT {TEMPLATE_COLUMNS} FROM cloud_templates WHERE id = ?1");
            db.query_opt(&sql, args![id])?.as_ref().map(template_of).transpose()
        })
    }

    pub fn cloud_template_named(
        &self,
        waba_id: &str,
        name: &str,
        language: &str,
    ) -> Result<Option<CloudTemplate>, StoreError> {
        let (waba_id, name, language) = (waba_id.to_string(), name.to_string(), language.to_string());
        self.read(move |db| {
            let sql = format!(
                "SELECT {TEMPLATE_COLUMNS} FROM cloud_templates WHERE waba_id = ?1 AND name = ?2 AND language = ?3"
            );
            db.query_opt(&sql, args![waba_id, name, language])?.as_ref().map(template_of).transpose()
        })
    }

    pub async fn add_cloud_upload(&self, upload: CloudUpload, now_ms: u64) -> Result<(), StoreError> {
        self.write(move |db| {
            db.execute(
                "INSERT INTO cloud_uploads (id, app_id, file_type, file_length, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                args![upload.id, upload.app_id, upload.file_type, upload.file_length as i64, now_ms as i64],
            )?;
            Ok(())
        })
        .await
    }

    pub fn cloud_upload(&self, id: &str) -> Result<Option<CloudUpload>, StoreError> {
        let id = id.to_string();
        self.read(move |db| {
            db.query_opt(
                "SELECT id, app_id, file_type, file_length, handle FROM cloud_uploads WHERE id = ?1",
                args![id],
            )?
            .map(|row| {
                Ok(CloudUpload {
                    id: row.get(0)?,
                    app_id: row.get(1)?,
                    file_type: row.get(2)?,
                    file_length: u64::try_from(row.get::<i64>(3)?).unwrap_or(0),
                    handle: row.get(4)?,
                })
            })
            .transpose()
        })
    }

    /// Stores an upload's bytes and the handle that names them.
    pub async fn finish_cloud_upload(&self, id: &str, handle: &str, data: Vec<u8>) -> Result<(), StoreError> {
        let (id, handle) = (id.to_string(), handle.to_string());
        self.write(move |db| {
            db.execute("UPDATE cloud_uploads SET handle = ?2, data = ?3 WHERE id = ?1", args![id, handle, data])?;
            Ok(())
        })
        .await
    }

    /// Forgets what is older than `before_ms`: notes of sends (their statuses then no longer
    /// become Cloud webhooks), uploaded files and upload sessions (Meta keeps media 30
    /// days too), interactive options. Returns how many rows went.
    pub fn prune_cloud(&self, before_ms: u64) -> Result<usize, StoreError> {
        self.write_blocking(move |db| {
            let mut pruned = 0;
            for (table, column) in [
                ("cloud_sent", "created_ms"),
                ("cloud_media", "created_ms"),
                ("cloud_uploads", "created_ms"),
                ("cloud_interactive", "sent_ms"),
            ] {
                pruned += db.execute(&format!("DELETE FROM {table} WHERE {column} < ?1"), args![before_ms as i64])?;
            }
            Ok(pruned)
        })
    }

    /// Remembers the options of the interactive message just sent to `contact`.
    pub async fn set_cloud_interactive(
        &self,
        session: &str,
        contact: &str,
        kind: &str,
        options: String,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let (session, contact, kind) = (session.to_string(), contact.to_string(), kind.to_string());
        self.write(move |db| {
            db.execute(
                "INSERT INTO cloud_interactive (session, contact, kind, options, sent_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (session, contact) DO UPDATE SET kind = ?3, options = ?4, sent_ms = ?5",
                args![session, contact, kind, options, now_ms as i64],
            )?;
            Ok(())
        })
        .await
    }

    pub fn cloud_interactive(&self, session: &str, contact: &str) -> Result<Option<CloudInteractive>, StoreError> {
        let (session, contact) = (session.to_string(), contact.to_string());
        self.read(move |db| {
            db.query_opt(
                "SELECT kind, options, sent_ms FROM cloud_interactive WHERE session = ?1 AND contact = ?2",
                args![session, contact],
            )?
            .map(|row| {
                Ok(CloudInteractive {
                    kind: row.get(0)?,
                    options: row.get(1)?,
                    sent_ms: u64::try_from(row.get::<i64>(2)?).unwrap_or(0),
                })
            })
            .transpose()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn numbers_templates_media_and_sends_round_trip() {
        for test in crate::store::testing::both().await {
            eprintln!("on {}", test.name);
            numbers_templates_media_and_sends_round_trip_on(test.store()).await;
        }
    }

    async fn numbers_templates_media_and_sends_round_trip_on(store: &Store) {
        let number = CloudNumber {
            session: "A".into(),
            phone_number_id: "100".into(),
            waba_id: "200".into(),
            app_id: "300".into(),
            token_sha256: vec![1, 2, 3],
            include_all: false,
            rate_per_minute: 30,
            created_ms: 5,
        };
        store.set_cloud_number(number.clone()).await.unwrap();
        assert_eq!(store.cloud_number("100").unwrap(), Some(number.clone()));
        let moved = CloudNumber { phone_number_id: "101".into(), ..number.clone() };
        store.set_cloud_number(moved.clone()).await.unwrap();
        assert_eq!(store.cloud_number("100").unwrap(), None);
        assert_eq!(store.cloud_number_of_session("A").unwrap(), Some(moved));
        let other = CloudNumber { session: "B".into(), ..number.clone() };
        assert!(store.set_cloud_number(CloudNumber { phone_number_id: "101".into(), ..other }).await.is_err());
        assert_eq!(store.cloud_numbers_of("200", false).unwrap().len(), 1);
        assert_eq!(store.cloud_numbers_of("300", true).unwrap().len(), 1);

        let template = CloudTemplate {
            id: "t1".into(),
            waba_id: "200".into(),
            name: "hello".into(),
            language: "en".into(),
            category: "UTILITY".into(),
            components: serde_json::json!([{ "type": "BODY", "text": "Hi {{1}}" }]),
        };
        assert!(store.add_cloud_template(template.clone(), 1).await.unwrap());
        assert!(!store.add_cloud_template(CloudTemplate { id: "t2".into(), ..template.clone() }, 1).await.unwrap());
        assert_eq!(store.cloud_template_named("200", "hello", "en").unwrap(), Some(template.clone()));
        assert!(store.update_cloud_template("t1", None, Some(serde_json::json!([]))).await.unwrap());
        assert_eq!(store.cloud_template("t1").unwrap().unwrap().components, serde_json::json!([]));
        assert_eq!(store.delete_cloud_templates("200", Some("hello"), None).await.unwrap(), 1);
        assert!(store.cloud_templates("200").unwrap().is_empty());

        store.note_cloud_send("A", "M1", "1555", 1).await.unwrap();
        assert_eq!(store.cloud_sent_to("A", "M1").unwrap().as_deref(), Some("1555"));
        store.set_cloud_interactive("A", "1555", "button", "[]".into(), 7).await.unwrap();
        store.set_cloud_interactive("A", "1555", "list", "[1]".into(), 8).await.unwrap();
        assert_eq!(store.cloud_interactive("A", "1555").unwrap().unwrap().kind, "list");
        assert_eq!(store.prune_cloud(2).unwrap(), 1, "the note of M1");
        assert!(store.cloud_interactive("A", "1555").unwrap().is_some());
        store.note_cloud_send("A", "M1", "1555", 1).await.unwrap();
        store.write(|db| delete_session_rows(db, "A")).await.unwrap();
        assert!(store.cloud_number_of_session("A").unwrap().is_none());
    }
}
