//! `wagate migrate`'s engine part: a session's device copied from its shard (SQLite, one
//! box) into PostgreSQL (several nodes), so that the session logs in there with the same
//! keys, without a new pairing.
//!
//! The two stores encode some values differently (the library's SQLite store writes its own
//! wire format for credentials and app-state keys, ours serde JSON), so rows are not copied
//! as bytes: each value is read through the client library's storage traits from the shard
//! device and written through the same traits into the PostgreSQL device. Only the keys are
//! listed from the shard's tables (`keys`), as the traits cannot list them.
//!
//! The copy is checked before it counts: every table of the new device holds as many rows
//! as were written, and its credentials read back from PostgreSQL name the same account
//! with the same identity as the shard's.

mod keys;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use wacore::appstate::processor::AppStateMutationMAC;
use wacore::store::traits::{
    AppSyncStore, DeviceStore, MsgSecretEntry, MsgSecretStore, PendingInboundRow, ProtocolStore, SignalStore,
};

use super::postgres::{PgDevice, PgEngine, PgEngineError};
use super::shards::{self, ShardDevice, ShardError, ShardStore};

/// Rows written per batch call (each batch is one statement or one transaction).
const BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error(transparent)]
    Postgres(#[from] PgEngineError),
    #[error("session {session}: listing its keys in {}: {source}", .path.display())]
    List { session: String, path: PathBuf, source: rusqlite::Error },
    #[error("session {session}: {what}: {message}")]
    Library { session: String, what: String, message: String },
    #[error("session {session} already has engine keys in the target database")]
    TargetNotEmpty { session: String },
    #[error("session {session}: the copy in PostgreSQL differs from the original: {what}")]
    Mismatch { session: String, what: String },
    #[error("a background task failed: {0}")]
    Task(String),
}

/// One table of a device: how many rows the shard has, how many were copied (fewer when
/// the library no longer returns a listed row, an expired one say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCopy {
    pub table: &'static str,
    pub source: usize,
    pub copied: usize,
}

/// What was copied of one session's device.
#[derive(Debug, Clone)]
pub struct DeviceCopy {
    pub session: String,
    /// The account it is linked as (`None`: keys of a device that was never linked).
    pub jid: Option<String>,
    pub tables: Vec<TableCopy>,
}

/// Copies the device of `session` from the shards of the engine folder `engine_dir` into
/// `target`; `None` when the session has no credentials there (it was never linked: there is
/// nothing to keep). Refused when the session already has a device in `target`. Nothing runs
/// the session meanwhile: the caller holds the data directory's lock and the session is not
/// registered in the target yet.
pub async fn copy_device(engine_dir: &Path, session: &str, target: &PgEngine) -> Result<Option<DeviceCopy>, CopyError> {
    let store = ShardStore::new(engine_dir, session);
    let Some(source) = shards::open_device(&store, false).await? else { return Ok(None) };
    let Some(credentials) = source.credentials().await? else { return Ok(None) };
    if target.has_keys(session).await? {
        return Err(CopyError::TargetNotEmpty { session: session.to_string() });
    }
    let (path, id) = (store.shard_path(), source.device_id());
    let listed = tokio::task::spawn_blocking(move || keys::read(&path, id))
        .await
        .map_err(|e| CopyError::Task(e.to_string()))?
        .map_err(|source| CopyError::List { session: session.to_string(), path: store.shard_path(), source })?;
    let missing = || CopyError::Mismatch { session: session.to_string(), what: "no device could be created".into() };
    let dest = target.open_device(session, true, None).await?.ok_or_else(missing)?;

    let mut copier = Copier { session, source: &source, dest: &dest, tables: Vec::new() };
    copier.lib("the credentials", dest.save(&credentials).await)?;
    copier.record("credentials", "wagate_engine_credentials", 1, 1);
    copier.signal(&listed).await?;
    copier.app_state(&listed).await?;
    copier.protocol(&listed).await?;
    copier.messages(&listed).await?;

    let tables = copier.tables;
    verify_counts(target, session, &dest, &tables).await?;
    verify_credentials(target, session, &credentials).await?;
    Ok(Some(DeviceCopy {
        session: session.to_string(),
        jid: credentials.pn.as_ref().map(ToString::to_string),
        tables: tables.into_iter().map(|(copy, _)| copy).collect(),
    }))
}

/// Reads from one device and writes to the other, keeping count.
struct Copier<'a> {
    session: &'a str,
    source: &'a ShardDevice,
    dest: &'a PgDevice,
    /// Each table's counts and its PostgreSQL table (for the check).
    tables: Vec<(TableCopy, &'static str)>,
}

impl Copier<'_> {
    /// A call of the library's store, its error named for the operator.
    fn lib<T>(&self, what: &str, result: wacore::store::error::Result<T>) -> Result<T, CopyError> {
        result.map_err(|e| CopyError::Library {
            session: self.session.to_string(),
            what: format!("copying {what}"),
            message: format!("{e:#}"),
        })
    }

    /// The values the shard has for `addresses` (read by `get`), each with its address, as
    /// the batch writes take them.
    async fn by_address<V, Fut>(
        &self,
        what: &str,
        addresses: &[String],
        get: impl Fn(String) -> Fut,
    ) -> Result<Vec<(Arc<str>, V)>, CopyError>
    where
        Fut: std::future::Future<Output = wacore::store::error::Result<Option<V>>>,
    {
        let mut found = Vec::new();
        for address in addresses {
            if let Some(value) = self.lib(what, get(address.clone()).await)? {
                found.push((Arc::from(address.as_str()), value));
            }
        }
        Ok(found)
    }

    fn record(&mut self, table: &'static str, pg: &'static str, source: usize, copied: usize) {
        self.tables.push((TableCopy { table, source, copied }, pg));
    }

    /// Identities, Signal sessions, prekeys (with their uploaded mark), signed prekeys,
    /// sender keys.
    async fn signal(&mut self, keys: &keys::DeviceKeys) -> Result<(), CopyError> {
        let (source, dest) = (self.source, self.dest);
        let identities =
            self.by_address("an identity", &keys.identities, |a| async move { source.load_identity(&a).await }).await?;
        for chunk in identities.chunks(BATCH) {
            self.lib("identities", dest.put_identities_batch(chunk).await)?;
        }
        self.record("identities", "wagate_engine_identities", keys.identities.len(), identities.len());

        let sessions = self
            .by_address("a Signal session", &keys.sessions, |a| async move { source.get_session(&a).await })
            .await?;
        for chunk in sessions.chunks(BATCH) {
            self.lib("Signal sessions", dest.put_sessions_batch(chunk).await)?;
        }
        self.record("signal sessions", "wagate_engine_sessions", keys.sessions.len(), sessions.len());

        let mut copied = 0;
        for uploaded in [false, true] {
            let mut prekeys: Vec<(u32, Bytes)> = Vec::new();
            for &(id, _) in keys.prekeys.iter().filter(|(_, up)| *up == uploaded) {
                if let Some(record) = self.lib("a prekey", source.load_prekey(id).await)? {
                    prekeys.push((id, record));
                }
            }
            for chunk in prekeys.chunks(BATCH) {
                self.lib("prekeys", dest.store_prekeys_batch(chunk, uploaded).await)?;
            }
            copied += prekeys.len();
        }
        self.record("prekeys", "wagate_engine_prekeys", keys.prekeys.len(), copied);

        let mut copied = 0;
        for &id in &keys.signed_prekeys {
            if let Some(record) = self.lib("a signed prekey", source.load_signed_prekey(id).await)? {
                self.lib("a signed prekey", dest.store_signed_prekey(id, &record).await)?;
                copied += 1;
            }
        }
        self.record("signed prekeys", "wagate_engine_signed_prekeys", keys.signed_prekeys.len(), copied);

        let read = |a: String| async move { Ok(source.get_sender_key(&a).await?.map(Bytes::from)) };
        let sender_keys = self.by_address("a sender key", &keys.sender_keys, read).await?;
        for chunk in sender_keys.chunks(BATCH) {
            self.lib("sender keys", dest.put_sender_keys_batch(chunk).await)?;
        }
        self.record("sender keys", "wagate_engine_sender_keys", keys.sender_keys.len(), sender_keys.len());
        Ok(())
    }

    /// App-state sync keys, collection versions, mutation macs (at the version they were
    /// written at).
    async fn app_state(&mut self, keys: &keys::DeviceKeys) -> Result<(), CopyError> {
        let (source, dest) = (self.source, self.dest);
        let mut copied = 0;
        for key_id in &keys.sync_keys {
            if let Some(key) = self.lib("an app-state key", source.get_sync_key(key_id).await)? {
                self.lib("an app-state key", dest.set_sync_key(key_id, key).await)?;
                copied += 1;
            }
        }
        self.record("app-state keys", "wagate_engine_app_state_keys", keys.sync_keys.len(), copied);

        for name in &keys.versions {
            let state = self.lib("an app-state version", source.get_version(name).await)?;
            self.lib("an app-state version", dest.set_version(name, state).await)?;
        }
        self.record("app-state versions", "wagate_engine_app_state_versions", keys.versions.len(), keys.versions.len());

        let mut macs: BTreeMap<(&str, u64), Vec<AppStateMutationMAC>> = BTreeMap::new();
        for (name, version, index_mac) in &keys.mutation_macs {
            if let Some(value_mac) = self.lib("a mutation mac", source.get_mutation_mac(name, index_mac).await)? {
                let mac = AppStateMutationMAC { index_mac: index_mac.clone(), value_mac };
                macs.entry((name.as_str(), *version)).or_default().push(mac);
            }
        }
        let mut copied = 0;
        for ((name, version), macs) in &macs {
            for chunk in macs.chunks(BATCH) {
                self.lib("mutation macs", dest.put_mutation_macs(name, *version, chunk).await)?;
            }
            copied += macs.len();
        }
        self.record("app-state macs", "wagate_engine_app_state_mutation_macs", keys.mutation_macs.len(), copied);
        Ok(())
    }

    /// Sender-key devices of groups, LID mappings, base keys, device lists, group metadata,
    /// trusted-contact tokens.
    async fn protocol(&mut self, keys: &keys::DeviceKeys) -> Result<(), CopyError> {
        let (source, dest) = (self.source, self.dest);
        let mut groups: Vec<&str> = keys.sender_key_devices.iter().map(|(group, _)| group.as_str()).collect();
        groups.sort_unstable();
        groups.dedup();
        let mut copied = 0;
        for group in groups {
            let devices = self.lib("sender-key devices", source.get_sender_key_devices(group).await)?;
            let entries: Vec<(&str, bool)> = devices.iter().map(|(jid, has)| (jid.as_str(), *has)).collect();
            self.lib("sender-key devices", dest.set_sender_key_status(group, &entries).await)?;
            copied += entries.len();
        }
        let listed = keys.sender_key_devices.len();
        self.record("sender-key devices", "wagate_engine_sender_key_devices", listed, copied);

        let mut mappings = Vec::new();
        for lid in &keys.lid_mappings {
            mappings.extend(self.lib("a LID mapping", source.get_lid_mapping(lid).await)?);
        }
        for chunk in mappings.chunks(BATCH) {
            self.lib("LID mappings", dest.put_lid_mappings(chunk).await)?;
        }
        self.record("LID mappings", "wagate_engine_lid_pn_mapping", keys.lid_mappings.len(), mappings.len());

        for (address, message_id, base_key) in &keys.base_keys {
            self.lib("a base key", dest.save_base_key(address, message_id, base_key).await)?;
        }
        self.record("base keys", "wagate_engine_base_keys", keys.base_keys.len(), keys.base_keys.len());

        let mut lists = Vec::new();
        for user in &keys.device_lists {
            lists.extend(self.lib("a device list", source.get_devices(user).await)?);
        }
        let copied = lists.len();
        for chunk in lists.chunks(BATCH) {
            self.lib("device lists", dest.update_device_lists(chunk.to_vec()).await)?;
        }
        self.record("device lists", "wagate_engine_device_lists", keys.device_lists.len(), copied);

        let mut copied = 0;
        for group in &keys.group_metadata {
            if let Some(blob) = self.lib("group metadata", source.get_group_metadata(group).await)? {
                self.lib("group metadata", dest.put_group_metadata(group, &blob).await)?;
                copied += 1;
            }
        }
        self.record("group metadata", "wagate_engine_group_metadata", keys.group_metadata.len(), copied);

        let mut copied = 0;
        for jid in &keys.tc_tokens {
            if let Some(entry) = self.lib("a contact token", source.get_tc_token(jid).await)? {
                self.lib("a contact token", dest.put_tc_token(jid, &entry).await)?;
                copied += 1;
            }
        }
        self.record("contact tokens", "wagate_engine_tc_tokens", keys.tc_tokens.len(), copied);
        Ok(())
    }

    /// Sent messages kept for retries, received messages not yet acknowledged, message
    /// secrets (with their expiry).
    async fn messages(&mut self, keys: &keys::DeviceKeys) -> Result<(), CopyError> {
        let (source, dest) = (self.source, self.dest);
        for (chat, id, payload) in &keys.sent_messages {
            self.lib("a sent message", dest.store_sent_message(chat, id, payload).await)?;
        }
        self.record("sent messages", "wagate_engine_sent_messages", keys.sent_messages.len(), keys.sent_messages.len());

        let mut pending = Vec::new();
        for (chat, sender, id) in &keys.pending_inbound {
            if let Some(message) = self.lib("a pending message", source.get_pending_inbound(chat, sender, id).await)? {
                pending.push((chat, sender, id, message));
            }
        }
        let rows: Vec<PendingInboundRow<'_>> =
            pending.iter().map(|(chat, sender, id, message)| PendingInboundRow { chat, sender, id, message }).collect();
        for chunk in rows.chunks(BATCH) {
            self.lib("pending messages", dest.store_pending_inbound_batch(chunk).await)?;
        }
        self.record("pending inbound", "wagate_engine_pending_inbound", keys.pending_inbound.len(), rows.len());

        let mut secrets = Vec::new();
        for (chat, sender, id, expires_at) in &keys.msg_secrets {
            let found = self.lib("a message secret", source.get_msg_secret_with_ts(chat, sender, id).await)?;
            let Some((secret, message_ts)) = found else { continue };
            let secret = secret.as_slice().try_into().map_err(|_| CopyError::Mismatch {
                session: self.session.to_string(),
                what: format!("a message secret of {} bytes in the shard", secret.len()),
            })?;
            let (chat, sender, msg_id) = (Arc::from(chat.as_str()), Arc::from(sender.as_str()), Arc::from(id.as_str()));
            secrets.push(MsgSecretEntry { chat, sender, msg_id, secret, expires_at: *expires_at, message_ts });
        }
        let copied = secrets.len();
        for chunk in secrets.chunks(BATCH) {
            self.lib("message secrets", dest.put_msg_secrets(chunk.to_vec()).await)?;
        }
        self.record("message secrets", "wagate_engine_msg_secrets", keys.msg_secrets.len(), copied);
        Ok(())
    }
}

/// Every table of the new device holds as many rows as were written to it: no two keys of
/// the shard fell on one row in PostgreSQL, no write went missing.
async fn verify_counts(
    target: &PgEngine,
    session: &str,
    dest: &PgDevice,
    tables: &[(TableCopy, &'static str)],
) -> Result<(), CopyError> {
    let client = target.pool().get().await.map_err(PgEngineError::from)?;
    let device = i64::from(dest.device_id());
    for (copy, pg) in tables {
        let sql = format!("SELECT count(*) FROM {pg} WHERE device = $1");
        let found: i64 = client.query_one(&sql, &[&device]).await.map_err(PgEngineError::from)?.get(0);
        if usize::try_from(found).ok() != Some(copy.copied) {
            return Err(CopyError::Mismatch {
                session: session.to_string(),
                what: format!("{}: {} rows written, {found} found", copy.table, copy.copied),
            });
        }
    }
    Ok(())
}

/// The credentials read back from PostgreSQL are the shard's: the same account, the same
/// identity and noise keys (what WhatsApp knows the linked device by).
async fn verify_credentials(
    target: &PgEngine,
    session: &str,
    original: &wacore::store::Device,
) -> Result<(), CopyError> {
    let mismatch = |what: &str| CopyError::Mismatch { session: session.to_string(), what: what.to_string() };
    let copy = target.load_device(session).await?.ok_or_else(|| mismatch("no credentials"))?;
    let public = |pair: &wacore::libsignal::protocol::KeyPair| pair.public_key.public_key_bytes().to_vec();
    let checks = [
        ("the phone-number JID", copy.pn == original.pn),
        ("the LID", copy.lid == original.lid),
        ("the registration id", copy.registration_id == original.registration_id),
        ("the identity key", public(&copy.identity_key) == public(&original.identity_key)),
        ("the noise key", public(&copy.noise_key) == public(&original.noise_key)),
        ("the signed prekey", copy.signed_pre_key_id == original.signed_pre_key_id),
        ("the ADV secret", copy.adv_secret_key == original.adv_secret_key),
    ];
    match checks.iter().find(|(_, same)| !same) {
        Some((what, _)) => Err(mismatch(what)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
