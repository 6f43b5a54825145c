//! App-state sync: its keys, the versions of the collections, and the mutation MACs.

use super::*;

#[async_trait]
impl AppSyncStore for PgDevice {
    /// A key whose row does not decode reads as absent (the library then asks for it again
    /// and the next set overwrites it), as in the library's store.
    async fn get_sync_key(&self, key_id: &[u8]) -> Result<Option<AppStateSyncKey>> {
        let c = self.client().await?;
        let found = bytes_of(exec!(
            c,
            query,
            "SELECT data FROM wagate_engine_app_state_keys WHERE device = $1 AND key_id = $2",
            &self.device,
            &key_id
        ));
        Ok(found.and_then(|data| match serde_json::from_slice(&data) {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::warn!(session = %self.session, "an app-state sync key does not decode ({e}); treated as absent");
                None
            }
        }))
    }

    async fn set_sync_key(&self, key_id: &[u8], key: AppStateSyncKey) -> Result<()> {
        let data = serde_json::to_vec(&key).map_err(serialization)?;
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_app_state_keys (device, key_id, data) VALUES ($1, $2, $3) \
                 ON CONFLICT (device, key_id) DO UPDATE SET data = EXCLUDED.data",
                &self.device,
                &key_id,
                &data
            );
        });
        Ok(())
    }

    /// A collection without a version, or whose row does not decode, is at the default (it
    /// then syncs again from version 0), as in the library's store.
    async fn get_version(&self, name: &str) -> Result<HashState> {
        let c = self.client().await?;
        let found = bytes_of(exec!(
            c,
            query,
            "SELECT state FROM wagate_engine_app_state_versions WHERE device = $1 AND name = $2",
            &self.device,
            &name
        ));
        Ok(match found.map(|data| serde_json::from_slice(&data)) {
            Some(Ok(state)) => state,
            Some(Err(e)) => {
                tracing::warn!(session = %self.session, "app-state version of {name} does not decode ({e}); syncing it again from 0");
                HashState::default()
            }
            None => HashState::default(),
        })
    }

    async fn set_version(&self, name: &str, state: HashState) -> Result<()> {
        let data = serde_json::to_vec(&state).map_err(serialization)?;
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_app_state_versions (device, name, state) VALUES ($1, $2, $3) \
                 ON CONFLICT (device, name) DO UPDATE SET state = EXCLUDED.state",
                &self.device,
                &name,
                &data
            );
        });
        Ok(())
    }

    async fn put_mutation_macs(&self, name: &str, version: u64, mutations: &[AppStateMutationMAC]) -> Result<()> {
        if mutations.is_empty() {
            return Ok(());
        }
        let rows = last_per_key(mutations.iter(), |m| m.index_mac.clone());
        let index_macs: Vec<&[u8]> = rows.iter().map(|m| m.index_mac.as_slice()).collect();
        let value_macs: Vec<&[u8]> = rows.iter().map(|m| m.value_mac.as_slice()).collect();
        let version = version as i64;
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "INSERT INTO wagate_engine_app_state_mutation_macs (device, name, index_mac, version, value_mac) \
                 SELECT $1::int8, $2::text, m.index_mac, $3::int8, m.value_mac FROM unnest($4::bytea[], $5::bytea[]) AS m (index_mac, value_mac) \
                 ON CONFLICT (device, name, index_mac) DO UPDATE SET version = EXCLUDED.version, value_mac = EXCLUDED.value_mac",
                &self.device,
                &name,
                &version,
                &index_macs,
                &value_macs
            );
        });
        Ok(())
    }

    async fn get_mutation_mac(&self, name: &str, index_mac: &[u8]) -> Result<Option<Vec<u8>>> {
        let c = self.client().await?;
        Ok(bytes_of(exec!(
            c,
            query,
            "SELECT value_mac FROM wagate_engine_app_state_mutation_macs WHERE device = $1 AND name = $2 AND index_mac = $3",
            &self.device,
            &name,
            &index_mac
        )))
    }

    /// One query for all of them; only the index MACs found are in the map.
    async fn get_mutation_macs(&self, name: &str, index_macs: &[[u8; 32]]) -> Result<HashMap<[u8; 32], Vec<u8>>> {
        if index_macs.is_empty() {
            return Ok(HashMap::new());
        }
        let wanted: Vec<&[u8]> = index_macs.iter().map(|m| &m[..]).collect();
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT index_mac, value_mac FROM wagate_engine_app_state_mutation_macs \
             WHERE device = $1 AND name = $2 AND index_mac = ANY($3)",
            &self.device,
            &name,
            &wanted
        );
        Ok(rows
            .iter()
            .filter_map(|row| {
                let index: Vec<u8> = row.get(0);
                <[u8; 32]>::try_from(index.as_slice()).ok().map(|index| (index, row.get(1)))
            })
            .collect())
    }

    async fn delete_mutation_macs(&self, name: &str, index_macs: &[Vec<u8>]) -> Result<()> {
        if index_macs.is_empty() {
            return Ok(());
        }
        let index_macs: Vec<&[u8]> = index_macs.iter().map(Vec::as_slice).collect();
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_app_state_mutation_macs WHERE device = $1 AND name = $2 AND index_mac = ANY($3)",
                &self.device,
                &name,
                &index_macs
            );
        });
        Ok(())
    }

    async fn clear_mutation_macs(&self, name: &str) -> Result<()> {
        writing!(self, |c| {
            exec!(
                c,
                execute,
                "DELETE FROM wagate_engine_app_state_mutation_macs WHERE device = $1 AND name = $2",
                &self.device,
                &name
            );
        });
        Ok(())
    }

    /// The greatest key id (byte order) whose key decodes, as in the library's store.
    async fn get_latest_sync_key_id(&self) -> Result<Option<Vec<u8>>> {
        let c = self.client().await?;
        let rows = exec!(
            c,
            query,
            "SELECT key_id, data FROM wagate_engine_app_state_keys WHERE device = $1 ORDER BY key_id DESC",
            &self.device
        );
        Ok(rows.iter().find_map(|row| {
            let data: &[u8] = row.get(1);
            serde_json::from_slice::<AppStateSyncKey>(data).ok().map(|_| row.get(0))
        }))
    }
}
