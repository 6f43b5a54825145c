//! The engine's tables and their migrations.
//!
//! Versions are kept in `wagate_migrations` under the component `engine` (wagate's own tables
//! use `store` in the same table). Migrations run at connect, in one transaction that first
//! takes a transaction-scoped advisory lock, so nodes starting at once apply them one after
//! the other: the first migrates, the others then find the work done.

use tokio_postgres::Client;

use super::PgEngineError;

/// The advisory lock every migration of wagate's PostgreSQL tables takes (the store's too):
/// "wagate" in ASCII.
pub const MIGRATION_LOCK_KEY: i64 = 0x7761_6761_7465;

const COMPONENT: &str = "engine";

/// The migrations, in order: version `n` is `MIGRATIONS[n - 1]`. Append only.
const MIGRATIONS: &[&str] = &[V1];

/// The version of the engine's tables this build brings them to.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Every table with rows of a device (column `device`), children before the mapping they
/// reference. Wipe deletes from each of these.
pub(super) const DEVICE_TABLES: &[&str] = &[
    "wagate_engine_credentials",
    "wagate_engine_identities",
    "wagate_engine_sessions",
    "wagate_engine_prekeys",
    "wagate_engine_signed_prekeys",
    "wagate_engine_sender_keys",
    "wagate_engine_app_state_keys",
    "wagate_engine_app_state_versions",
    "wagate_engine_app_state_mutation_macs",
    "wagate_engine_sender_key_devices",
    "wagate_engine_lid_pn_mapping",
    "wagate_engine_base_keys",
    "wagate_engine_device_lists",
    "wagate_engine_group_metadata",
    "wagate_engine_tc_tokens",
    "wagate_engine_sent_messages",
    "wagate_engine_pending_inbound",
    "wagate_engine_msg_secrets",
];

/// Version 1. Text keys are `COLLATE "C"`: compared byte for byte as the library's SQLite
/// store does, and a prefix `LIKE` can use the index. Times are unix seconds (`_at`) or
/// milliseconds (`_ms`), as the library hands them over.
const V1: &str = r#"
CREATE TABLE wagate_engine_devices (
    device BIGSERIAL PRIMARY KEY,
    session TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL
);

CREATE TABLE wagate_engine_credentials (
    device BIGINT PRIMARY KEY REFERENCES wagate_engine_devices (device),
    -- the phone-number JID once linked, NULL before
    pn TEXT,
    -- serde JSON of wacore::store::Device
    data BYTEA NOT NULL,
    updated_ms BIGINT NOT NULL
);

CREATE TABLE wagate_engine_identities (
    device BIGINT NOT NULL REFERENCES wagate_engine_devices (device),
    address TEXT COLLATE "C" NOT NULL,
    key BYTEA NOT NULL,
    PRIMARY KEY (device, address)
);

CREATE TABLE wagate_engine_sessions (
    device BIGINT NOT NULL REFERENCES wagate_engine_devices (device),
    address TEXT COLLATE "C" NOT NULL,
    record BYTEA NOT NULL,
    PRIMARY KEY (device, address)
);

CREATE TABLE wagate_engine_prekeys (
    device BIGINT NOT NULL REFERENCES wagate_engine_devices (device),
    id BIGINT NOT NULL,
    record BYTEA NOT NULL,
    uploaded BOOLEAN NOT NULL,
    PRIMARY KEY (device, id)
);

CREATE TABLE wagate_engine_signed_prekeys (
    device BIGINT NOT NULL REFERENCES wagate_engine_devices (device),
    id BIGINT NOT NULL,
    record BYTEA NOT NULL,
    PRIMARY KEY (device, id)
);

CREATE TABLE wagate_engine_sender_keys (
    device BIGINT NOT NULL REFERENCES wagate_engine_devices (device),
    address TEXT COLLATE "C" NOT NULL,
    record BYTEA NOT NULL,
    PRIMARY KEY (device, address)
);

CREATE TABLE wagate_engine_app_state_keys (
    device BIGINT NOT NULL REFERENCES wagate_engine_devices (device),
    key_id BYTEA NOT NULL,
    -- serde JSON of wacore::store::traits::AppStateSyncKey
    data BYTEA NOT NULL,
    PRIMARY KEY (device, key_id)
);

CREATE TABLE wagate_engine_app_state_versions (
    device BIGINT NOT NULL REFERENCES wagate_engine_devices (device),
    name TEXT COLLATE "C" NOT NULL,
    -- serde JSON of wacore::appstate::hash::HashState
    state BYTEA NOT NULL,
    PRIMARY KEY (device, name)
);

CREATE TABLE wagate_engine_app_state_mutation_macs (
    device BIGINT NOT NULL REFERENCES wagate_engine_devices (device),
    name TEXT COLLATE "C" NOT NULL,
    index_mac BYTEA NOT NULL,
    version BIGINT NOT NULL,
    value_mac BYTEA NOT NULL,
    PRIMARY KEY (device, name, index_mac)
);

CREATE TABLE wagate_engine_sender_key_devices (
    device BIGINT NOT NULL REFERENCES wagate_engine_devices (device),
    group_jid TEXT COLLATE "C" NOT NULL,
    device_jid TEXT COLLATE "C" NOT NULL,
    has_key BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (device, group_jid, device_jid)
);
CREATE INDEX wagate_engine_sender_key_devices_by_jid ON wagate_engine_sender_key_devices (device, device_jid);

CREATE TABLE wagate_engine_lid_pn_mapping (
    device BIGINT NOT NULL REFERENCES wagate_engine_devices (device),
    lid TEXT COLLATE "C" NOT NULL,
    phone_number TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    learning_source TEXT NOT NULL,
    PRIMARY KEY (device, lid)
);
CREATE INDEX wagate_engine_lid_pn_mapping_by_pn ON wagate_engine_lid_pn_mapping (device, phone_number, updated_at DESC);

CREATE TABLE wagate_engine_base_keys (
    device BIGINT NOT NULL REFERENCES wagate_engine_devices (device),
    address TEXT COLLATE "C" NOT NULL,
    message_id TEXT COLLATE "C" NOT NULL,
    base_key BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (device, address, message_id)
);

CREATE TABLE wagate_engine_device_lists (
    device BIGINT NOT NULL REFERENCES wagate_engine_devices (device),
    user_id TEXT COLLATE "C" NOT NULL,
    -- serde JSON of Vec<wacore::store::traits::DeviceInfo>
    devices_json TEXT NOT NULL,
    list_ts BIGINT NOT NULL,
    phash TEXT,
    raw_id BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (device, user_id)
);

CREATE TABLE wagate_engine_group_metadata (
    device BIGINT NOT NULL REFERENCES wagate_engine_devices (device),
    group_jid TEXT COLLATE "C" NOT NULL,
    info BYTEA NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (device, group_jid)
);

CREATE TABLE wagate_engine_tc_tokens (
    device BIGINT NOT NULL REFERENCES wagate_engine_devices (device),
    jid TEXT COLLATE "C" NOT NULL,
    token BYTEA NOT NULL,
    token_timestamp BIGINT NOT NULL,
    sender_timestamp BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (device, jid)
);

CREATE TABLE wagate_engine_sent_messages (
    device BIGINT NOT NULL REFERENCES wagate_engine_devices (device),
    chat_jid TEXT COLLATE "C" NOT NULL,
    message_id TEXT COLLATE "C" NOT NULL,
    payload BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (device, chat_jid, message_id)
);
CREATE INDEX wagate_engine_sent_messages_by_age ON wagate_engine_sent_messages (device, created_at);

CREATE TABLE wagate_engine_pending_inbound (
    device BIGINT NOT NULL REFERENCES wagate_engine_devices (device),
    chat TEXT COLLATE "C" NOT NULL,
    sender TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    message BYTEA NOT NULL,
    inserted_at BIGINT NOT NULL,
    PRIMARY KEY (device, chat, sender, id)
);
CREATE INDEX wagate_engine_pending_inbound_by_age ON wagate_engine_pending_inbound (device, inserted_at);

CREATE TABLE wagate_engine_msg_secrets (
    device BIGINT NOT NULL REFERENCES wagate_engine_devices (device),
    chat TEXT COLLATE "C" NOT NULL,
    sender TEXT COLLATE "C" NOT NULL,
    msg_id TEXT COLLATE "C" NOT NULL,
    secret BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    -- 0: never
    expires_at BIGINT NOT NULL,
    message_ts BIGINT NOT NULL,
    PRIMARY KEY (device, chat, sender, msg_id)
);
CREATE INDEX wagate_engine_msg_secrets_by_expiry ON wagate_engine_msg_secrets (device, expires_at) WHERE expires_at <> 0;
"#;

/// Brings the engine tables to the newest version, under the migration lock.
pub(super) async fn migrate(client: &mut Client) -> Result<(), PgEngineError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS wagate_migrations (component TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    )
    .await?;
    let found: i32 = tx
        .query_opt("SELECT version FROM wagate_migrations WHERE component = $1", &[&COMPONENT])
        .await?
        .map_or(0, |row| row.get(0));
    let known = MIGRATIONS.len() as i32;
    if found > known {
        return Err(PgEngineError::NewerSchema { found, known });
    }
    for (version, sql) in (1..).zip(MIGRATIONS).skip(found as usize) {
        tx.batch_execute(sql).await.map_err(|source| PgEngineError::Migration { version, source })?;
        tx.execute(
            "INSERT INTO wagate_migrations (component, version) VALUES ($1, $2) \
             ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
            &[&COMPONENT, &version],
        )
        .await?;
        tracing::info!("engine tables migrated to version {version}");
    }
    tx.commit().await?;
    Ok(())
}
