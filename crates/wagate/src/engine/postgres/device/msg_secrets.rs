//! Message secrets (for votes, reactions and edits of messages that carry one).

use super::*;

#[async_trait]
impl MsgSecretStore for PgDevice {
    /// One upsert for the batch. On a key already stored: the new secret, the later deadline
    /// (0, never, wins), the later parent time. Returns the number of entries, as the
    /// library's store does.
    async fn put_msg_secrets(&self, entries: Vec<MsgSecretEntry>) -> Result<usize> {
        if entries.is_empty() {
            return Ok(0);
        }
        let count = entries.len();
        // One row per key, merged as the upsert would merge them one after the other.
        let mut merged: Vec<MsgSecretEntry> = Vec::with_capacity(entries.len());
        let mut seen: HashMap<(Arc<str>, Arc<str>, Arc<str>), usize> = HashMap::new();
        for entry in entries {
            let key = (entry.chat.clone(), entry.sender.clone(), entry.msg_id.clone());
            match seen.get(&key) {
                Some(&at) => {
                    let old = &mut merged[at];
                    old.secret = entry.secret;
                    old.expires_at = wacore::store::traits::merge_msg_secret_expiry(old.expires_at, entry.expires_at);
                    old.message_ts =
                        wacore::store::traits::merge_msg_secret_message_ts(old.message_ts, entry.message_ts);
                }
                None => {
                    seen.insert(key, merged.len());
                    merged.push(entry);
                }
            }
        }
        let chats: Vec<&str> = merged.iter().map(|e| e.chat.as_ref()).collect();
        let senders: Vec<&str> = merged.iter().map(|e| e.sender.as_ref()).collect();
        let ids: Vec<&str> = merged.iter().map(|e| e.msg_id.as_ref()).collect();
        let secrets: Vec<&[u8]> = merged.iter().map(|e| &e.secret[..]).collect();
        let expiries: Vec<i64> = merged.iter().map(|e| e.expires_at).collect();
        let stamps: Vec<i64> = merged.iter().map(|e| e.message_ts).collect();
        let now = now_secs();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_msg_secrets (device, chat, sender, msg_id, secret, created_at, expires_at, message_ts) \
                 SELECT $1::int8, s.chat, s.sender, s.msg_id, s.secret, $8::int8, s.expires_at, s.message_ts \
                 FROM unnest($2::text[], $3::text[], $4::text[], $5::bytea[], $6::int8[], $7::int8[]) \
                 AS s (chat, sender, msg_id, secret, expires_at, message_ts) \
                 ON CONFLICT (device, chat, sender, msg_id) DO UPDATE SET secret = EXCLUDED.secret, \
                 created_at = EXCLUDED.created_at, \
                 expires_at = CASE WHEN wagate_engine_msg_secrets.expires_at = 0 OR EXCLUDED.expires_at = 0 THEN 0 \
                 ELSE GREATEST(wagate_engine_msg_secrets.expires_at, EXCLUDED.expires_at) END, \
                 message_ts = GREATEST(wagate_engine_msg_secrets.message_ts, EXCLUDED.message_ts)",
                &self.device,
                &chats,
                &senders,
                &ids,
                &secrets,
                &expiries,
                &stamps,
                &now
            );
        });
        Ok(count)
    }

    async fn get_msg_secret(&self, chat: &str, sender: &str, msg_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_msg_secret_with_ts(chat, sender, msg_id).await?.map(|(secret, _)| secret))
    }

    async fn get_msg_secret_with_ts(&self, chat: &str, sender: &str, msg_id: &str) -> Result<Option<(Vec<u8>, i64)>> {
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT secret, message_ts FROM wagate_engine_msg_secrets \
             WHERE device = $1 AND chat = $2 AND sender = $3 AND msg_id = $4",
            &self.device,
            &chat,
            &sender,
            &msg_id
        );
        Ok(rows.first().map(|row| (row.get(0), row.get(1))))
    }

    /// Deletes the rows whose deadline is set (not 0) and at or before the cut-off.
    async fn delete_expired_msg_secrets(&self, cutoff_timestamp: i64) -> Result<u32> {
        let deleted = writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_msg_secrets WHERE device = $1 AND expires_at <> 0 AND expires_at <= $2",
                &self.device,
                &cutoff_timestamp
            )
        });
        Ok(deleted as u32)
    }
}
