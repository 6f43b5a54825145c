//! The Signal protocol's keys: identities, sessions, prekeys, signed prekeys, sender keys.

use super::*;

#[async_trait]
impl SignalStore for PgDevice {
    async fn put_identity(&self, address: &str, key: [u8; 32]) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_identities (device, address, key) VALUES ($1, $2, $3) \
                 ON CONFLICT (device, address) DO UPDATE SET key = EXCLUDED.key",
                &self.device,
                &address,
                &&key[..]
            );
        });
        Ok(())
    }

    async fn put_identities_batch(&self, identities: &[(Arc<str>, [u8; 32])]) -> Result<()> {
        if identities.is_empty() {
            return Ok(());
        }
        let rows = last_per_key(identities.iter(), |(address, _)| address.clone());
        let addresses: Vec<&str> = rows.iter().map(|(a, _)| a.as_ref()).collect();
        let keys: Vec<&[u8]> = rows.iter().map(|(_, k)| &k[..]).collect();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_identities (device, address, key) \
                 SELECT $1::int8, * FROM unnest($2::text[], $3::bytea[]) \
                 ON CONFLICT (device, address) DO UPDATE SET key = EXCLUDED.key",
                &self.device,
                &addresses,
                &keys
            );
        });
        Ok(())
    }

    async fn load_identity(&self, address: &str) -> Result<Option<[u8; 32]>> {
        let c = self.client().await?;
        let found = bytes_of(exec!(
            c,
            query,
            "SELECT key FROM wagate_engine_identities WHERE device = $1 AND address = $2",
            &self.device,
            &address
        ));
        match found {
            None => Ok(None),
            Some(key) => key.try_into().map(Some).map_err(|key: Vec<u8>| {
                StoreError::Validation(format!(
                    "identity key for '{address}' has invalid length {} (expected 32)",
                    key.len()
                ))
            }),
        }
    }

    async fn delete_identity(&self, address: &str) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_identities WHERE device = $1 AND address = $2",
                &self.device,
                &address
            );
        });
        Ok(())
    }

    async fn get_session(&self, address: &str) -> Result<Option<Bytes>> {
        Ok(self.get_record(SESSIONS, address).await?.map(Bytes::from))
    }

    async fn put_session(&self, address: &str, session: &[u8]) -> Result<()> {
        self.put_records(SESSIONS, &[(address, session)]).await
    }

    async fn put_sessions_batch(&self, sessions: &[(Arc<str>, Bytes)]) -> Result<()> {
        let rows: Vec<(&str, &[u8])> = sessions.iter().map(|(a, r)| (a.as_ref(), r.as_ref())).collect();
        self.put_records(SESSIONS, &rows).await
    }

    async fn delete_session(&self, address: &str) -> Result<()> {
        self.delete_record(SESSIONS, address).await
    }

    async fn has_session(&self, address: &str) -> Result<bool> {
        let c = self.client().await?;
        let row = exec!(
            c,
            query_one,
            "SELECT EXISTS (SELECT 1 FROM wagate_engine_sessions WHERE device = $1 AND address = $2)",
            &self.device,
            &address
        );
        Ok(row.get(0))
    }

    /// A session or an identity of `user`: addresses `user@server` (device 0) or
    /// `user:device@server`.
    async fn has_signal_state_for_user(&self, user: &str) -> Result<bool> {
        let (at, colon) = (starts_with_pattern(&format!("{user}@")), starts_with_pattern(&format!("{user}:")));
        let c = self.client().await?;
        let row = exec!(
            c,
            query_one,
            "SELECT EXISTS (SELECT 1 FROM wagate_engine_sessions WHERE device = $1 AND (address LIKE $2 OR address LIKE $3)) \
             OR EXISTS (SELECT 1 FROM wagate_engine_identities WHERE device = $1 AND (address LIKE $2 OR address LIKE $3))",
            &self.device,
            &at,
            &colon
        );
        Ok(row.get(0))
    }

    async fn store_prekey(&self, id: u32, record: &[u8], uploaded: bool) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_prekeys (device, id, record, uploaded) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (device, id) DO UPDATE SET record = EXCLUDED.record, uploaded = EXCLUDED.uploaded",
                &self.device,
                &id_of(id),
                &record,
                &uploaded
            );
        });
        Ok(())
    }

    async fn store_prekeys_batch(&self, keys: &[(u32, Bytes)], uploaded: bool) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let rows = last_per_key(keys.iter(), |(id, _)| *id);
        let ids: Vec<i64> = rows.iter().map(|(id, _)| id_of(*id)).collect();
        let records: Vec<&[u8]> = rows.iter().map(|(_, r)| r.as_ref()).collect();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_prekeys (device, id, record, uploaded) \
                 SELECT $1::int8, k.id, k.record, $4::bool FROM unnest($2::int8[], $3::bytea[]) AS k (id, record) \
                 ON CONFLICT (device, id) DO UPDATE SET record = EXCLUDED.record, uploaded = EXCLUDED.uploaded",
                &self.device,
                &ids,
                &records,
                &uploaded
            );
        });
        Ok(())
    }

    async fn load_prekey(&self, id: u32) -> Result<Option<Bytes>> {
        let c = self.client().await?;
        let found = bytes_of(exec!(
            c,
            query,
            "SELECT record FROM wagate_engine_prekeys WHERE device = $1 AND id = $2",
            &self.device,
            &id_of(id)
        ));
        Ok(found.map(Bytes::from))
    }

    async fn load_prekeys_batch(&self, ids: &[u32]) -> Result<Vec<(u32, Bytes)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = ids.iter().copied().map(id_of).collect();
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT id, record FROM wagate_engine_prekeys WHERE device = $1 AND id = ANY($2)",
            &self.device,
            &ids
        );
        Ok(rows.iter().map(|row| (row.get::<_, i64>(0) as u32, Bytes::from(row.get::<_, Vec<u8>>(1)))).collect())
    }

    /// An update only: a key consumed since the upload snapshot stays deleted.
    async fn mark_prekeys_uploaded(&self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = ids.iter().copied().map(id_of).collect();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "UPDATE wagate_engine_prekeys SET uploaded = true WHERE device = $1 AND id = ANY($2)",
                &self.device,
                &ids
            );
        });
        Ok(())
    }

    async fn remove_prekey(&self, id: u32) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_prekeys WHERE device = $1 AND id = $2",
                &self.device,
                &id_of(id)
            );
        });
        Ok(())
    }

    async fn get_max_prekey_id(&self) -> Result<u32> {
        let c = self.client().await?;
        let row = exec!(c, query_one, "SELECT max(id) FROM wagate_engine_prekeys WHERE device = $1", &self.device);
        Ok(row.get::<_, Option<i64>>(0).unwrap_or(0) as u32)
    }

    async fn store_signed_prekey(&self, id: u32, record: &[u8]) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_signed_prekeys (device, id, record) VALUES ($1, $2, $3) \
                 ON CONFLICT (device, id) DO UPDATE SET record = EXCLUDED.record",
                &self.device,
                &id_of(id),
                &record
            );
        });
        Ok(())
    }

    async fn load_signed_prekey(&self, id: u32) -> Result<Option<Vec<u8>>> {
        let c = self.client().await?;
        Ok(bytes_of(exec!(
            c,
            query,
            "SELECT record FROM wagate_engine_signed_prekeys WHERE device = $1 AND id = $2",
            &self.device,
            &id_of(id)
        )))
    }

    async fn load_all_signed_prekeys(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT id, record FROM wagate_engine_signed_prekeys WHERE device = $1 ORDER BY id",
            &self.device
        );
        Ok(rows.iter().map(|row| (row.get::<_, i64>(0) as u32, row.get(1))).collect())
    }

    async fn remove_signed_prekey(&self, id: u32) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_signed_prekeys WHERE device = $1 AND id = $2",
                &self.device,
                &id_of(id)
            );
        });
        Ok(())
    }

    async fn put_sender_key(&self, address: &str, record: &[u8]) -> Result<()> {
        self.put_records(SENDER_KEYS, &[(address, record)]).await
    }

    async fn put_sender_keys_batch(&self, sender_keys: &[(Arc<str>, Bytes)]) -> Result<()> {
        let rows: Vec<(&str, &[u8])> = sender_keys.iter().map(|(a, r)| (a.as_ref(), r.as_ref())).collect();
        self.put_records(SENDER_KEYS, &rows).await
    }

    async fn get_sender_key(&self, address: &str) -> Result<Option<Vec<u8>>> {
        self.get_record(SENDER_KEYS, address).await
    }

    async fn delete_sender_key(&self, address: &str) -> Result<()> {
        self.delete_record(SENDER_KEYS, address).await
    }
}

/// The two tables that hold one record per Signal address: sessions and sender keys.
#[derive(Clone, Copy)]
struct RecordTable {
    upsert: &'static str,
    select: &'static str,
    delete: &'static str,
}

const SESSIONS: RecordTable = RecordTable {
    upsert: "INSERT INTO wagate_engine_sessions (device, address, record) \
             SELECT $1::int8, * FROM unnest($2::text[], $3::bytea[]) \
             ON CONFLICT (device, address) DO UPDATE SET record = EXCLUDED.record",
    select: "SELECT record FROM wagate_engine_sessions WHERE device = $1 AND address = $2",
    delete: "DELETE FROM wagate_engine_sessions WHERE device = $1 AND address = $2",
};

const SENDER_KEYS: RecordTable = RecordTable {
    upsert: "INSERT INTO wagate_engine_sender_keys (device, address, record) \
             SELECT $1::int8, * FROM unnest($2::text[], $3::bytea[]) \
             ON CONFLICT (device, address) DO UPDATE SET record = EXCLUDED.record",
    select: "SELECT record FROM wagate_engine_sender_keys WHERE device = $1 AND address = $2",
    delete: "DELETE FROM wagate_engine_sender_keys WHERE device = $1 AND address = $2",
};

impl PgDevice {
    /// Writes records by address in one statement (a batch naming an address twice keeps
    /// the last).
    async fn put_records(&self, table: RecordTable, rows: &[(&str, &[u8])]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows = last_per_key(rows.iter(), |(address, _)| *address);
        let addresses: Vec<&str> = rows.iter().map(|(a, _)| *a).collect();
        let records: Vec<&[u8]> = rows.iter().map(|(_, r)| *r).collect();
        writing!(self, |c| {
            exec!(c, execute, table.upsert, &self.device, &addresses, &records);
        });
        Ok(())
    }

    async fn get_record(&self, table: RecordTable, address: &str) -> Result<Option<Vec<u8>>> {
        let c = self.client().await?;
        Ok(bytes_of(exec!(c, query, table.select, &self.device, &address)))
    }

    async fn delete_record(&self, table: RecordTable, address: &str) -> Result<()> {
        writing!(self, |c| {
            exec!(c, execute, table.delete, &self.device, &address);
        });
        Ok(())
    }
}
