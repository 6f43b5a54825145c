//! One session's view of a shard: the client library's storage traits, answered by the
//! library's own [`SqliteStore`] for that session's device id, one call at a time per shard.
//!
//! Every device's store opens the shard with SQLite's shared cache, so all of them share one
//! set of file descriptors (the database, its -wal and -shm) instead of holding their own.
//! The price of the shared cache is that its locks are per table and a conflict is reported
//! at once (`SQLITE_LOCKED`), without the busy handler that would wait it out. So no two
//! calls run on a shard at the same time: each takes the shard's turn first. SQLite lets only
//! one writer into a file at a time anyway, and a call takes milliseconds.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use wacore::appstate::hash::HashState;
use wacore::appstate::processor::AppStateMutationMAC;
use wacore::store::error::Result;
use wacore::store::traits::{
    AppStateSyncKey, AppSyncStore, DeviceListRecord, DeviceStore, LidPnMappingEntry, MsgSecretEntry, MsgSecretStore,
    PendingInboundKey, PendingInboundRow, ProtocolStore, SignalStore, TcTokenEntry,
};
use whatsapp_rust::store::SqliteStore;
use whatsapp_rust_sqlite_storage::SharedSqlite;

use super::Shard;

/// The storage of one device in a shard, given to the client library as its backend.
#[derive(Clone)]
pub struct ShardDevice {
    pub(super) shard: Arc<Shard>,
    pub(super) inner: SqliteStore,
    /// The same store's connection, to wait for after a cancelled call (see [`Turn`]).
    pub(super) connection: SharedSqlite,
    pub(super) session: String,
}

impl ShardDevice {
    /// The library's id of this device inside its shard.
    pub fn device_id(&self) -> i32 {
        self.inner.device_id()
    }

    /// The device's credentials as the library reads them (`None`: not created yet); an
    /// error says that this session's keys are unreadable, and only this session's.
    pub async fn credentials(&self) -> std::result::Result<Option<wacore::store::Device>, super::ShardError> {
        self.load()
            .await
            .map_err(|e| super::ShardError::Unreadable { session: self.session.clone(), message: format!("{e:#}") })
    }
}

/// Runs one call of the library's store for this device while holding the shard's turn.
macro_rules! in_turn {
    ($self:ident, $trait:ident :: $method:ident ( $($arg:expr),* )) => {{
        let turn = Turn { guard: Some($self.shard.turn(stringify!($method)).await), connection: Some($self.connection.clone()) };
        let result = <SqliteStore as $trait>::$method(&$self.inner $(, $arg)*).await;
        turn.finished();
        result
    }};
}

/// The shard's turn for one call of the library. The library runs its statements on blocking
/// threads, which go on when the task that called is aborted (the library aborts its tasks
/// when a client is dropped, in the middle of a save if need be). Released with the dropped
/// call, the turn would let a second statement into the shared cache beside the first, and
/// one of them would fail at once (`SQLITE_LOCKED`). So a turn dropped before its call
/// finished is kept until the device's connection is back in its pool.
struct Turn {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    connection: Option<SharedSqlite>,
}

impl Turn {
    /// The call returned: nothing of it runs on, the turn goes to the next.
    fn finished(mut self) {
        self.connection = None;
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let (Some(guard), Some(connection)) = (self.guard.take(), self.connection.take()) else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            // Queues behind the cancelled call for the store's permit and its one connection.
            let _ = connection.run(|_| Ok(())).await;
            drop(guard);
        });
    }
}

#[async_trait]
impl SignalStore for ShardDevice {
    async fn put_identity(&self, address: &str, key: [u8; 32]) -> Result<()> {
        in_turn!(self, SignalStore::put_identity(address, key))
    }
    async fn put_identities_batch(&self, identities: &[(Arc<str>, [u8; 32])]) -> Result<()> {
        in_turn!(self, SignalStore::put_identities_batch(identities))
    }
    async fn load_identity(&self, address: &str) -> Result<Option<[u8; 32]>> {
        in_turn!(self, SignalStore::load_identity(address))
    }
    async fn delete_identity(&self, address: &str) -> Result<()> {
        in_turn!(self, SignalStore::delete_identity(address))
    }
    async fn get_session(&self, address: &str) -> Result<Option<Bytes>> {
        in_turn!(self, SignalStore::get_session(address))
    }
    async fn put_session(&self, address: &str, session: &[u8]) -> Result<()> {
        in_turn!(self, SignalStore::put_session(address, session))
    }
    async fn put_sessions_batch(&self, sessions: &[(Arc<str>, Bytes)]) -> Result<()> {
        in_turn!(self, SignalStore::put_sessions_batch(sessions))
    }
    async fn delete_session(&self, address: &str) -> Result<()> {
        in_turn!(self, SignalStore::delete_session(address))
    }
    async fn has_session(&self, address: &str) -> Result<bool> {
        in_turn!(self, SignalStore::has_session(address))
    }
    async fn has_signal_state_for_user(&self, user: &str) -> Result<bool> {
        in_turn!(self, SignalStore::has_signal_state_for_user(user))
    }
    async fn store_prekey(&self, id: u32, record: &[u8], uploaded: bool) -> Result<()> {
        in_turn!(self, SignalStore::store_prekey(id, record, uploaded))
    }
    async fn store_prekeys_batch(&self, keys: &[(u32, Bytes)], uploaded: bool) -> Result<()> {
        in_turn!(self, SignalStore::store_prekeys_batch(keys, uploaded))
    }
    async fn load_prekey(&self, id: u32) -> Result<Option<Bytes>> {
        in_turn!(self, SignalStore::load_prekey(id))
    }
    async fn load_prekeys_batch(&self, ids: &[u32]) -> Result<Vec<(u32, Bytes)>> {
        in_turn!(self, SignalStore::load_prekeys_batch(ids))
    }
    async fn mark_prekeys_uploaded(&self, ids: &[u32]) -> Result<()> {
        in_turn!(self, SignalStore::mark_prekeys_uploaded(ids))
    }
    async fn remove_prekey(&self, id: u32) -> Result<()> {
        in_turn!(self, SignalStore::remove_prekey(id))
    }
    async fn get_max_prekey_id(&self) -> Result<u32> {
        in_turn!(self, SignalStore::get_max_prekey_id())
    }
    async fn store_signed_prekey(&self, id: u32, record: &[u8]) -> Result<()> {
        in_turn!(self, SignalStore::store_signed_prekey(id, record))
    }
    async fn load_signed_prekey(&self, id: u32) -> Result<Option<Vec<u8>>> {
        in_turn!(self, SignalStore::load_signed_prekey(id))
    }
    async fn load_all_signed_prekeys(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        in_turn!(self, SignalStore::load_all_signed_prekeys())
    }
    async fn remove_signed_prekey(&self, id: u32) -> Result<()> {
        in_turn!(self, SignalStore::remove_signed_prekey(id))
    }
    async fn put_sender_key(&self, address: &str, record: &[u8]) -> Result<()> {
        in_turn!(self, SignalStore::put_sender_key(address, record))
    }
    async fn put_sender_keys_batch(&self, sender_keys: &[(Arc<str>, Bytes)]) -> Result<()> {
        in_turn!(self, SignalStore::put_sender_keys_batch(sender_keys))
    }
    async fn get_sender_key(&self, address: &str) -> Result<Option<Vec<u8>>> {
        in_turn!(self, SignalStore::get_sender_key(address))
    }
    async fn delete_sender_key(&self, address: &str) -> Result<()> {
        in_turn!(self, SignalStore::delete_sender_key(address))
    }
}

#[async_trait]
impl AppSyncStore for ShardDevice {
    async fn get_sync_key(&self, key_id: &[u8]) -> Result<Option<AppStateSyncKey>> {
        in_turn!(self, AppSyncStore::get_sync_key(key_id))
    }
    async fn set_sync_key(&self, key_id: &[u8], key: AppStateSyncKey) -> Result<()> {
        in_turn!(self, AppSyncStore::set_sync_key(key_id, key))
    }
    async fn get_version(&self, name: &str) -> Result<HashState> {
        in_turn!(self, AppSyncStore::get_version(name))
    }
    async fn set_version(&self, name: &str, state: HashState) -> Result<()> {
        in_turn!(self, AppSyncStore::set_version(name, state))
    }
    async fn put_mutation_macs(&self, name: &str, version: u64, mutations: &[AppStateMutationMAC]) -> Result<()> {
        in_turn!(self, AppSyncStore::put_mutation_macs(name, version, mutations))
    }
    async fn get_mutation_mac(&self, name: &str, index_mac: &[u8]) -> Result<Option<Vec<u8>>> {
        in_turn!(self, AppSyncStore::get_mutation_mac(name, index_mac))
    }
    async fn get_mutation_macs(
        &self,
        name: &str,
        index_macs: &[[u8; 32]],
    ) -> Result<std::collections::HashMap<[u8; 32], Vec<u8>>> {
        in_turn!(self, AppSyncStore::get_mutation_macs(name, index_macs))
    }
    async fn delete_mutation_macs(&self, name: &str, index_macs: &[Vec<u8>]) -> Result<()> {
        in_turn!(self, AppSyncStore::delete_mutation_macs(name, index_macs))
    }
    async fn clear_mutation_macs(&self, name: &str) -> Result<()> {
        in_turn!(self, AppSyncStore::clear_mutation_macs(name))
    }
    async fn get_latest_sync_key_id(&self) -> Result<Option<Vec<u8>>> {
        in_turn!(self, AppSyncStore::get_latest_sync_key_id())
    }
}

#[async_trait]
impl ProtocolStore for ShardDevice {
    async fn get_sender_key_devices(&self, group_jid: &str) -> Result<Vec<(String, bool)>> {
        in_turn!(self, ProtocolStore::get_sender_key_devices(group_jid))
    }
    async fn set_sender_key_status(&self, group_jid: &str, entries: &[(&str, bool)]) -> Result<()> {
        in_turn!(self, ProtocolStore::set_sender_key_status(group_jid, entries))
    }
    async fn clear_sender_key_devices(&self, group_jid: &str) -> Result<()> {
        in_turn!(self, ProtocolStore::clear_sender_key_devices(group_jid))
    }
    async fn delete_sender_key_device_rows(&self, device_jids: &[&str]) -> Result<()> {
        in_turn!(self, ProtocolStore::delete_sender_key_device_rows(device_jids))
    }
    async fn clear_all_sender_key_devices(&self) -> Result<()> {
        in_turn!(self, ProtocolStore::clear_all_sender_key_devices())
    }
    async fn get_lid_mapping(&self, lid: &str) -> Result<Option<LidPnMappingEntry>> {
        in_turn!(self, ProtocolStore::get_lid_mapping(lid))
    }
    async fn get_pn_mapping(&self, phone: &str) -> Result<Option<LidPnMappingEntry>> {
        in_turn!(self, ProtocolStore::get_pn_mapping(phone))
    }
    async fn put_lid_mapping(&self, entry: &LidPnMappingEntry) -> Result<()> {
        in_turn!(self, ProtocolStore::put_lid_mapping(entry))
    }
    async fn put_lid_mappings(&self, entries: &[LidPnMappingEntry]) -> Result<()> {
        in_turn!(self, ProtocolStore::put_lid_mappings(entries))
    }
    async fn get_all_lid_mappings(&self) -> Result<Vec<LidPnMappingEntry>> {
        in_turn!(self, ProtocolStore::get_all_lid_mappings())
    }
    async fn save_base_key(&self, address: &str, message_id: &str, base_key: &[u8]) -> Result<()> {
        in_turn!(self, ProtocolStore::save_base_key(address, message_id, base_key))
    }
    async fn has_same_base_key(&self, address: &str, message_id: &str, current_base_key: &[u8]) -> Result<bool> {
        in_turn!(self, ProtocolStore::has_same_base_key(address, message_id, current_base_key))
    }
    async fn delete_base_key(&self, address: &str, message_id: &str) -> Result<()> {
        in_turn!(self, ProtocolStore::delete_base_key(address, message_id))
    }
    async fn update_device_list(&self, record: DeviceListRecord) -> Result<()> {
        in_turn!(self, ProtocolStore::update_device_list(record))
    }
    async fn update_device_lists(&self, records: Vec<DeviceListRecord>) -> Result<()> {
        in_turn!(self, ProtocolStore::update_device_lists(records))
    }
    async fn get_devices(&self, user: &str) -> Result<Option<DeviceListRecord>> {
        in_turn!(self, ProtocolStore::get_devices(user))
    }
    async fn delete_devices(&self, user: &str) -> Result<()> {
        in_turn!(self, ProtocolStore::delete_devices(user))
    }
    async fn get_group_metadata(&self, group_jid: &str) -> Result<Option<Vec<u8>>> {
        in_turn!(self, ProtocolStore::get_group_metadata(group_jid))
    }
    async fn put_group_metadata(&self, group_jid: &str, blob: &[u8]) -> Result<()> {
        in_turn!(self, ProtocolStore::put_group_metadata(group_jid, blob))
    }
    async fn delete_group_metadata(&self, group_jid: &str) -> Result<()> {
        in_turn!(self, ProtocolStore::delete_group_metadata(group_jid))
    }
    async fn get_tc_token(&self, jid: &str) -> Result<Option<TcTokenEntry>> {
        in_turn!(self, ProtocolStore::get_tc_token(jid))
    }
    async fn put_tc_token(&self, jid: &str, entry: &TcTokenEntry) -> Result<()> {
        in_turn!(self, ProtocolStore::put_tc_token(jid, entry))
    }
    async fn delete_tc_token(&self, jid: &str) -> Result<()> {
        in_turn!(self, ProtocolStore::delete_tc_token(jid))
    }
    async fn get_all_tc_token_jids(&self) -> Result<Vec<String>> {
        in_turn!(self, ProtocolStore::get_all_tc_token_jids())
    }
    async fn delete_expired_tc_tokens(&self, token_cutoff: i64, sender_cutoff: i64) -> Result<u32> {
        in_turn!(self, ProtocolStore::delete_expired_tc_tokens(token_cutoff, sender_cutoff))
    }
    async fn touch_tc_token_sender_timestamp(&self, jid: &str, sender_timestamp: i64) -> Result<()> {
        in_turn!(self, ProtocolStore::touch_tc_token_sender_timestamp(jid, sender_timestamp))
    }
    async fn store_received_tc_token(&self, jid: &str, token: &[u8], token_timestamp: i64) -> Result<()> {
        in_turn!(self, ProtocolStore::store_received_tc_token(jid, token, token_timestamp))
    }
    async fn store_sent_message(&self, chat_jid: &str, message_id: &str, payload: &[u8]) -> Result<()> {
        in_turn!(self, ProtocolStore::store_sent_message(chat_jid, message_id, payload))
    }
    async fn take_sent_message(&self, chat_jid: &str, message_id: &str) -> Result<Option<Vec<u8>>> {
        in_turn!(self, ProtocolStore::take_sent_message(chat_jid, message_id))
    }
    async fn delete_expired_sent_messages(&self, cutoff_timestamp: i64) -> Result<u32> {
        in_turn!(self, ProtocolStore::delete_expired_sent_messages(cutoff_timestamp))
    }
    async fn store_pending_inbound(&self, chat: &str, sender: &str, id: &str, message: &[u8]) -> Result<()> {
        in_turn!(self, ProtocolStore::store_pending_inbound(chat, sender, id, message))
    }
    async fn get_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> Result<Option<Vec<u8>>> {
        in_turn!(self, ProtocolStore::get_pending_inbound(chat, sender, id))
    }
    async fn delete_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> Result<()> {
        in_turn!(self, ProtocolStore::delete_pending_inbound(chat, sender, id))
    }
    async fn delete_expired_pending_inbound(&self, cutoff_timestamp: i64) -> Result<u32> {
        in_turn!(self, ProtocolStore::delete_expired_pending_inbound(cutoff_timestamp))
    }
    async fn store_pending_inbound_batch(&self, rows: &[PendingInboundRow<'_>]) -> Result<()> {
        in_turn!(self, ProtocolStore::store_pending_inbound_batch(rows))
    }
    async fn delete_pending_inbound_batch(&self, keys: &[PendingInboundKey<'_>]) -> Result<()> {
        in_turn!(self, ProtocolStore::delete_pending_inbound_batch(keys))
    }
}

#[async_trait]
impl MsgSecretStore for ShardDevice {
    async fn put_msg_secret(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
        secret: &[u8; wacore::reporting_token::MESSAGE_SECRET_SIZE],
    ) -> Result<()> {
        in_turn!(self, MsgSecretStore::put_msg_secret(chat, sender, msg_id, secret))
    }
    async fn put_msg_secrets(&self, entries: Vec<MsgSecretEntry>) -> Result<usize> {
        in_turn!(self, MsgSecretStore::put_msg_secrets(entries))
    }
    async fn get_msg_secret(&self, chat: &str, sender: &str, msg_id: &str) -> Result<Option<Vec<u8>>> {
        in_turn!(self, MsgSecretStore::get_msg_secret(chat, sender, msg_id))
    }
    async fn get_msg_secret_with_ts(&self, chat: &str, sender: &str, msg_id: &str) -> Result<Option<(Vec<u8>, i64)>> {
        in_turn!(self, MsgSecretStore::get_msg_secret_with_ts(chat, sender, msg_id))
    }
    async fn delete_expired_msg_secrets(&self, cutoff_timestamp: i64) -> Result<u32> {
        in_turn!(self, MsgSecretStore::delete_expired_msg_secrets(cutoff_timestamp))
    }
}

#[async_trait]
impl DeviceStore for ShardDevice {
    /// Runs to its end in a task of its own, even when the caller is dropped. The library
    /// clears its "credentials changed" flag before it calls this, and drops the call when
    /// the client is torn down, as it is by the 515 right after a pairing. A save dropped
    /// while waiting for the shard's turn (another session's history being written) was
    /// lost with nobody to retry it, and the next client, finding no credentials, showed a
    /// QR code again. The turn is handed out in order, so the save still comes before the
    /// next client's open of the same session.
    async fn save(&self, device: &wacore::store::Device) -> Result<()> {
        let (this, device) = (self.clone(), device.clone());
        let saving = tokio::spawn(async move { in_turn!(this, DeviceStore::save(&device)) });
        saving.await.map_err(|e| wacore::store::error::StoreError::Database(Box::new(e)))?
    }
    async fn load(&self) -> Result<Option<wacore::store::Device>> {
        in_turn!(self, DeviceStore::load())
    }
    async fn exists(&self) -> Result<bool> {
        in_turn!(self, DeviceStore::exists())
    }
    async fn create(&self) -> Result<i32> {
        in_turn!(self, DeviceStore::create())
    }
    /// The library's debugging snapshot copies the database file: in a shard that would be
    /// every session's keys, so it is not offered.
    async fn snapshot_db(&self, _name: &str, _extra_content: Option<&[u8]>) -> Result<()> {
        Ok(())
    }
    async fn resource_report(&self) -> wacore::stats::StorageResourceReport {
        in_turn!(self, DeviceStore::resource_report())
    }
}
