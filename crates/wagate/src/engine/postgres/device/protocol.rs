//! The protocol's records: LID mappings, sender-key devices, base keys, device lists, group
//! metadata, trusted-contact tokens, sent messages kept for retries, pending inbound messages.

use super::*;

fn lid_entry(row: &tokio_postgres::Row) -> LidPnMappingEntry {
    LidPnMappingEntry {
        lid: row.get(0),
        phone_number: row.get(1),
        created_at: row.get(2),
        updated_at: row.get(3),
        learning_source: row.get(4),
    }
}

/// A device list row's values, serialised.
struct ListRow {
    user: String,
    devices_json: String,
    timestamp: i64,
    phash: Option<String>,
    raw_id: Option<i64>,
}

impl ListRow {
    fn of(record: DeviceListRecord) -> Result<Self> {
        Ok(Self {
            devices_json: serde_json::to_string(&record.devices).map_err(serialization)?,
            user: record.user,
            timestamp: record.timestamp,
            phash: record.phash,
            raw_id: record.raw_id.map(i64::from),
        })
    }
}

const PUT_LID_MAPPINGS: &str = "INSERT INTO wagate_engine_lid_pn_mapping \
     (device, lid, phone_number, created_at, updated_at, learning_source) \
     SELECT $1::int8, * FROM unnest($2::text[], $3::text[], $4::int8[], $5::int8[], $6::text[]) \
     ON CONFLICT (device, lid) DO UPDATE SET phone_number = EXCLUDED.phone_number, \
     updated_at = EXCLUDED.updated_at, learning_source = EXCLUDED.learning_source";

const PUT_DEVICE_LISTS: &str = "INSERT INTO wagate_engine_device_lists \
     (device, user_id, devices_json, list_ts, phash, raw_id, updated_at) \
     SELECT $1::int8, l.*, $7::int8 FROM unnest($2::text[], $3::text[], $4::int8[], $5::text[], $6::int8[]) AS l \
     ON CONFLICT (device, user_id) DO UPDATE SET devices_json = EXCLUDED.devices_json, list_ts = EXCLUDED.list_ts, \
     phash = EXCLUDED.phash, raw_id = EXCLUDED.raw_id, updated_at = EXCLUDED.updated_at";

const PUT_PENDING_INBOUND: &str = "INSERT INTO wagate_engine_pending_inbound (device, chat, sender, id, message, inserted_at) \
     SELECT $1::int8, p.*, $6::int8 FROM unnest($2::text[], $3::text[], $4::text[], $5::bytea[]) AS p \
     ON CONFLICT (device, chat, sender, id) DO UPDATE SET message = EXCLUDED.message, inserted_at = EXCLUDED.inserted_at";

const DELETE_PENDING_INBOUND: &str = "DELETE FROM wagate_engine_pending_inbound \
     WHERE device = $1 AND (chat, sender, id) IN (SELECT * FROM unnest($2::text[], $3::text[], $4::text[]))";

impl PgDevice {
    async fn put_lid_mapping_rows(&self, entries: &[LidPnMappingEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let rows = last_per_key(entries.iter(), |e| e.lid.clone());
        let lids: Vec<&str> = rows.iter().map(|e| e.lid.as_str()).collect();
        let phones: Vec<&str> = rows.iter().map(|e| e.phone_number.as_str()).collect();
        let created: Vec<i64> = rows.iter().map(|e| e.created_at).collect();
        let updated: Vec<i64> = rows.iter().map(|e| e.updated_at).collect();
        let sources: Vec<&str> = rows.iter().map(|e| e.learning_source.as_str()).collect();
        writing!(self, |c| {
            exec!(c, execute, PUT_LID_MAPPINGS, &self.device, &lids, &phones, &created, &updated, &sources);
        });
        Ok(())
    }

    async fn put_device_lists(&self, records: Vec<DeviceListRecord>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let rows = last_per_key(records.into_iter().map(ListRow::of).collect::<Result<Vec<_>>>()?, |r| r.user.clone());
        let users: Vec<&str> = rows.iter().map(|r| r.user.as_str()).collect();
        let lists: Vec<&str> = rows.iter().map(|r| r.devices_json.as_str()).collect();
        let stamps: Vec<i64> = rows.iter().map(|r| r.timestamp).collect();
        let hashes: Vec<Option<&str>> = rows.iter().map(|r| r.phash.as_deref()).collect();
        let raw_ids: Vec<Option<i64>> = rows.iter().map(|r| r.raw_id).collect();
        let now = now_secs();
        writing!(self, |c| {
            exec!(c, execute, PUT_DEVICE_LISTS, &self.device, &users, &lists, &stamps, &hashes, &raw_ids, &now);
        });
        Ok(())
    }

    async fn put_pending_inbound(&self, rows: &[PendingInboundRow<'_>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows = last_per_key(rows.iter(), |r| (r.chat, r.sender, r.id));
        let chats: Vec<&str> = rows.iter().map(|r| r.chat).collect();
        let senders: Vec<&str> = rows.iter().map(|r| r.sender).collect();
        let ids: Vec<&str> = rows.iter().map(|r| r.id).collect();
        let messages: Vec<&[u8]> = rows.iter().map(|r| r.message).collect();
        let now = now_secs();
        writing!(self, |c| {
            exec!(c, execute, PUT_PENDING_INBOUND, &self.device, &chats, &senders, &ids, &messages, &now);
        });
        Ok(())
    }
}

#[async_trait]
impl ProtocolStore for PgDevice {
    async fn get_sender_key_devices(&self, group_jid: &str) -> Result<Vec<(String, bool)>> {
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT device_jid, has_key FROM wagate_engine_sender_key_devices WHERE device = $1 AND group_jid = $2 \
             ORDER BY device_jid",
            &self.device,
            &group_jid
        );
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    async fn set_sender_key_status(&self, group_jid: &str, entries: &[(&str, bool)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let rows = last_per_key(entries.iter(), |(jid, _)| *jid);
        let jids: Vec<&str> = rows.iter().map(|(jid, _)| *jid).collect();
        let has_keys: Vec<bool> = rows.iter().map(|(_, has)| *has).collect();
        let now = now_secs();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_sender_key_devices (device, group_jid, device_jid, has_key, updated_at) \
                 SELECT $1::int8, $2::text, s.jid, s.has_key, $5::int8 FROM unnest($3::text[], $4::bool[]) AS s (jid, has_key) \
                 ON CONFLICT (device, group_jid, device_jid) DO UPDATE SET has_key = EXCLUDED.has_key, updated_at = EXCLUDED.updated_at",
                &self.device,
                &group_jid,
                &jids,
                &has_keys,
                &now
            );
        });
        Ok(())
    }

    async fn clear_sender_key_devices(&self, group_jid: &str) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_sender_key_devices WHERE device = $1 AND group_jid = $2",
                &self.device,
                &group_jid
            );
        });
        Ok(())
    }

    async fn delete_sender_key_device_rows(&self, device_jids: &[&str]) -> Result<()> {
        if device_jids.is_empty() {
            return Ok(());
        }
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_sender_key_devices WHERE device = $1 AND device_jid = ANY($2)",
                &self.device,
                &device_jids
            );
        });
        Ok(())
    }

    async fn clear_all_sender_key_devices(&self) -> Result<()> {
        writing!(self, |c| {
            exec!(c, execute, "DELETE FROM wagate_engine_sender_key_devices WHERE device = $1", &self.device);
        });
        Ok(())
    }

    async fn get_lid_mapping(&self, lid: &str) -> Result<Option<LidPnMappingEntry>> {
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT lid, phone_number, created_at, updated_at, learning_source FROM wagate_engine_lid_pn_mapping \
             WHERE device = $1 AND lid = $2",
            &self.device,
            &lid
        );
        Ok(rows.first().map(lid_entry))
    }

    /// The most recently updated mapping of the phone number.
    async fn get_pn_mapping(&self, phone: &str) -> Result<Option<LidPnMappingEntry>> {
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT lid, phone_number, created_at, updated_at, learning_source FROM wagate_engine_lid_pn_mapping \
             WHERE device = $1 AND phone_number = $2 ORDER BY updated_at DESC LIMIT 1",
            &self.device,
            &phone
        );
        Ok(rows.first().map(lid_entry))
    }

    /// An upsert that keeps the first `created_at`.
    async fn put_lid_mapping(&self, entry: &LidPnMappingEntry) -> Result<()> {
        self.put_lid_mapping_rows(std::slice::from_ref(entry)).await
    }

    async fn put_lid_mappings(&self, entries: &[LidPnMappingEntry]) -> Result<()> {
        self.put_lid_mapping_rows(entries).await
    }

    async fn get_all_lid_mappings(&self) -> Result<Vec<LidPnMappingEntry>> {
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT lid, phone_number, created_at, updated_at, learning_source FROM wagate_engine_lid_pn_mapping \
             WHERE device = $1 ORDER BY lid",
            &self.device
        );
        Ok(rows.iter().map(lid_entry).collect())
    }

    async fn save_base_key(&self, address: &str, message_id: &str, base_key: &[u8]) -> Result<()> {
        let now = now_secs();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_base_keys (device, address, message_id, base_key, created_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (device, address, message_id) DO UPDATE SET base_key = EXCLUDED.base_key",
                &self.device,
                &address,
                &message_id,
                &base_key,
                &now
            );
        });
        Ok(())
    }

    async fn has_same_base_key(&self, address: &str, message_id: &str, current_base_key: &[u8]) -> Result<bool> {
        let c = self.client().await?;
        let stored = bytes_of(exec!(
            c,
            query,
            "SELECT base_key FROM wagate_engine_base_keys WHERE device = $1 AND address = $2 AND message_id = $3",
            &self.device,
            &address,
            &message_id
        ));
        Ok(stored.as_deref() == Some(current_base_key))
    }

    async fn delete_base_key(&self, address: &str, message_id: &str) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_base_keys WHERE device = $1 AND address = $2 AND message_id = $3",
                &self.device,
                &address,
                &message_id
            );
        });
        Ok(())
    }

    async fn update_device_list(&self, record: DeviceListRecord) -> Result<()> {
        self.put_device_lists(vec![record]).await
    }

    async fn update_device_lists(&self, records: Vec<DeviceListRecord>) -> Result<()> {
        self.put_device_lists(records).await
    }

    async fn get_devices(&self, user: &str) -> Result<Option<DeviceListRecord>> {
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT user_id, devices_json, list_ts, phash, raw_id FROM wagate_engine_device_lists \
             WHERE device = $1 AND user_id = $2",
            &self.device,
            &user
        );
        let Some(row) = rows.first() else { return Ok(None) };
        let devices: Vec<DeviceInfo> = serde_json::from_str(row.get(1)).map_err(serialization)?;
        Ok(Some(DeviceListRecord {
            user: row.get(0),
            devices,
            timestamp: row.get(2),
            phash: row.get(3),
            raw_id: row.get::<_, Option<i64>>(4).map(|id| id as u32),
        }))
    }

    async fn delete_devices(&self, user: &str) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_device_lists WHERE device = $1 AND user_id = $2",
                &self.device,
                &user
            );
        });
        Ok(())
    }

    async fn get_group_metadata(&self, group_jid: &str) -> Result<Option<Vec<u8>>> {
        let c = self.client().await?;
        Ok(bytes_of(exec!(
            c,
            query,
            "SELECT info FROM wagate_engine_group_metadata WHERE device = $1 AND group_jid = $2",
            &self.device,
            &group_jid
        )))
    }

    async fn put_group_metadata(&self, group_jid: &str, blob: &[u8]) -> Result<()> {
        let now = now_secs();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_group_metadata (device, group_jid, info, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (device, group_jid) DO UPDATE SET info = EXCLUDED.info, updated_at = EXCLUDED.updated_at",
                &self.device,
                &group_jid,
                &blob,
                &now
            );
        });
        Ok(())
    }

    async fn delete_group_metadata(&self, group_jid: &str) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_group_metadata WHERE device = $1 AND group_jid = $2",
                &self.device,
                &group_jid
            );
        });
        Ok(())
    }

    async fn get_tc_token(&self, jid: &str) -> Result<Option<TcTokenEntry>> {
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT token, token_timestamp, sender_timestamp FROM wagate_engine_tc_tokens WHERE device = $1 AND jid = $2",
            &self.device,
            &jid
        );
        Ok(rows.first().map(|row| TcTokenEntry {
            token: row.get(0),
            token_timestamp: row.get(1),
            sender_timestamp: row.get(2),
        }))
    }

    async fn put_tc_token(&self, jid: &str, entry: &TcTokenEntry) -> Result<()> {
        let now = now_secs();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_tc_tokens (device, jid, token, token_timestamp, sender_timestamp, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (device, jid) DO UPDATE SET token = EXCLUDED.token, token_timestamp = EXCLUDED.token_timestamp, \
                 sender_timestamp = EXCLUDED.sender_timestamp, updated_at = EXCLUDED.updated_at",
                &self.device,
                &jid,
                &entry.token,
                &entry.token_timestamp,
                &entry.sender_timestamp,
                &now
            );
        });
        Ok(())
    }

    async fn delete_tc_token(&self, jid: &str) -> Result<()> {
        writing!(self, |c| {
            exec!(c, execute, "DELETE FROM wagate_engine_tc_tokens WHERE device = $1 AND jid = $2", &self.device, &jid);
        });
        Ok(())
    }

    async fn get_all_tc_token_jids(&self) -> Result<Vec<String>> {
        let c = self.client().await?;
        let rows =
            exec!(c, query, "SELECT jid FROM wagate_engine_tc_tokens WHERE device = $1 ORDER BY jid", &self.device);
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Removes a row only when its received token is expired or absent (empty) and its
    /// sender bucket is expired or absent (NULL).
    async fn delete_expired_tc_tokens(&self, token_cutoff: i64, sender_cutoff: i64) -> Result<u32> {
        let deleted = writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_tc_tokens WHERE device = $1 \
                 AND (length(token) = 0 OR token_timestamp < $2) \
                 AND (sender_timestamp IS NULL OR sender_timestamp < $3)",
                &self.device,
                &token_cutoff,
                &sender_cutoff
            )
        });
        Ok(deleted as u32)
    }

    /// One atomic upsert: the sender bucket only moves forward, the token bytes are kept.
    async fn touch_tc_token_sender_timestamp(&self, jid: &str, sender_timestamp: i64) -> Result<()> {
        let now = now_secs();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_tc_tokens (device, jid, token, token_timestamp, sender_timestamp, updated_at) \
                 VALUES ($1, $2, '\\x'::bytea, $3, $3, $4) \
                 ON CONFLICT (device, jid) DO UPDATE SET \
                 sender_timestamp = GREATEST(COALESCE(wagate_engine_tc_tokens.sender_timestamp, EXCLUDED.sender_timestamp), EXCLUDED.sender_timestamp), \
                 updated_at = EXCLUDED.updated_at",
                &self.device,
                &jid,
                &sender_timestamp,
                &now
            );
        });
        Ok(())
    }

    /// One atomic upsert, newer wins: the stored token is replaced only when it is a
    /// placeholder (empty) or not newer than this one; the sender bucket is kept.
    async fn store_received_tc_token(&self, jid: &str, token: &[u8], token_timestamp: i64) -> Result<()> {
        let now = now_secs();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_tc_tokens (device, jid, token, token_timestamp, sender_timestamp, updated_at) \
                 VALUES ($1, $2, $3, $4, NULL, $5) \
                 ON CONFLICT (device, jid) DO UPDATE SET token = EXCLUDED.token, \
                 token_timestamp = EXCLUDED.token_timestamp, updated_at = EXCLUDED.updated_at \
                 WHERE length(wagate_engine_tc_tokens.token) = 0 \
                 OR EXCLUDED.token_timestamp >= wagate_engine_tc_tokens.token_timestamp",
                &self.device,
                &jid,
                &token,
                &token_timestamp,
                &now
            );
        });
        Ok(())
    }

    /// Replaces a message of the same id (and its time).
    async fn store_sent_message(&self, chat_jid: &str, message_id: &str, payload: &[u8]) -> Result<()> {
        let now = now_secs();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_sent_messages (device, chat_jid, message_id, payload, created_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (device, chat_jid, message_id) DO UPDATE SET payload = EXCLUDED.payload, created_at = EXCLUDED.created_at",
                &self.device,
                &chat_jid,
                &message_id,
                &payload,
                &now
            );
        });
        Ok(())
    }

    /// Read and delete in one statement: two takes of one message get it once.
    async fn take_sent_message(&self, chat_jid: &str, message_id: &str) -> Result<Option<Vec<u8>>> {
        let rows = writing!(self, |c| {
            exec!(
                c,
                query,
                "DELETE FROM wagate_engine_sent_messages WHERE device = $1 AND chat_jid = $2 AND message_id = $3 \
                 RETURNING payload",
                &self.device,
                &chat_jid,
                &message_id
            )
        });
        Ok(bytes_of(rows))
    }

    /// Deletes the messages stored before `cutoff_timestamp` (unix seconds).
    async fn delete_expired_sent_messages(&self, cutoff_timestamp: i64) -> Result<u32> {
        let deleted = writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_sent_messages WHERE device = $1 AND created_at < $2",
                &self.device,
                &cutoff_timestamp
            )
        });
        Ok(deleted as u32)
    }

    /// Replaces a message of the same key (and its time).
    async fn store_pending_inbound(&self, chat: &str, sender: &str, id: &str, message: &[u8]) -> Result<()> {
        self.put_pending_inbound(&[PendingInboundRow { chat, sender, id, message }]).await
    }

    async fn get_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> Result<Option<Vec<u8>>> {
        let c = self.client().await?;
        Ok(bytes_of(exec!(
            c,
            query,
            "SELECT message FROM wagate_engine_pending_inbound WHERE device = $1 AND chat = $2 AND sender = $3 AND id = $4",
            &self.device,
            &chat,
            &sender,
            &id
        )))
    }

    async fn delete_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> Result<()> {
        self.delete_pending_inbound_batch(&[PendingInboundKey { chat, sender, id }]).await
    }

    /// Deletes the messages stored before `cutoff_timestamp` (unix seconds).
    async fn delete_expired_pending_inbound(&self, cutoff_timestamp: i64) -> Result<u32> {
        let deleted = writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_pending_inbound WHERE device = $1 AND inserted_at < $2",
                &self.device,
                &cutoff_timestamp
            )
        });
        Ok(deleted as u32)
    }

    async fn store_pending_inbound_batch(&self, rows: &[PendingInboundRow<'_>]) -> Result<()> {
        self.put_pending_inbound(rows).await
    }

    async fn delete_pending_inbound_batch(&self, keys: &[PendingInboundKey<'_>]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let chats: Vec<&str> = keys.iter().map(|k| k.chat).collect();
        let senders: Vec<&str> = keys.iter().map(|k| k.sender).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.id).collect();
        writing!(self, |c| {
            exec!(c, execute, DELETE_PENDING_INBOUND, &self.device, &chats, &senders, &ids);
        });
        Ok(())
    }
}
