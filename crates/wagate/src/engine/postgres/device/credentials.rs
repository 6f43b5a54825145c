//! The device's credentials (`wacore::store::Device`), created once and saved after each change.

use super::*;

const UPSERT_CREDENTIALS: &str = "INSERT INTO wagate_engine_credentials (device, pn, data, updated_ms) \
     VALUES ($1, $2, $3, $4) \
     ON CONFLICT (device) DO UPDATE SET pn = EXCLUDED.pn, data = EXCLUDED.data, updated_ms = EXCLUDED.updated_ms";

/// Fails when the device has credentials already.
const INSERT_CREDENTIALS: &str =
    "INSERT INTO wagate_engine_credentials (device, pn, data, updated_ms) VALUES ($1, $2, $3, $4)";

impl PgDevice {
    /// Writes `device` as this device's credentials with `sql` (an upsert, or an insert).
    async fn write_credentials(&self, device: &wacore::store::Device, sql: &'static str) -> Result<()> {
        let data = serde_json::to_vec(device).map_err(serialization)?;
        let pn = device.pn.as_ref().map(|pn| pn.to_string());
        let now = chrono::Utc::now().timestamp_millis();
        writing!(self, |c| {
            exec!(c, execute, sql, &self.device, &pn, &data, &now);
        });
        Ok(())
    }
}

#[async_trait]
impl DeviceStore for PgDevice {
    /// Runs to its end in a task of its own, even when the caller is dropped: the library
    /// clears its "credentials changed" flag before it calls this and drops the call when
    /// the client is torn down, as it is by the 515 right after a pairing (see `shards`).
    async fn save(&self, device: &wacore::store::Device) -> Result<()> {
        let (this, device) = (self.clone(), device.clone());
        let saving = tokio::spawn(async move { this.write_credentials(&device, UPSERT_CREDENTIALS).await });
        saving.await.map_err(|e| StoreError::Database(Box::new(e)))?
    }

    async fn load(&self) -> Result<Option<wacore::store::Device>> {
        let c = self.client().await?;
        let found =
            bytes_of(exec!(c, query, "SELECT data FROM wagate_engine_credentials WHERE device = $1", &self.device));
        found.map(|data| serde_json::from_slice(&data).map_err(serialization)).transpose()
    }

    async fn exists(&self) -> Result<bool> {
        let c = self.client().await?;
        let row = exec!(
            c,
            query_one,
            "SELECT EXISTS (SELECT 1 FROM wagate_engine_credentials WHERE device = $1)",
            &self.device
        );
        Ok(row.get(0))
    }

    /// Writes new credentials (the library's `Device::new()`) for this device and returns its
    /// id. Fails, changing nothing, when the device already has credentials.
    async fn create(&self) -> Result<i32> {
        self.write_credentials(&wacore::store::Device::new(), INSERT_CREDENTIALS).await?;
        Ok(self.id)
    }

    /// The library's debugging snapshot copies a database file; here that would be every
    /// session's keys, so it is not offered.
    async fn snapshot_db(&self, _name: &str, _extra_content: Option<&[u8]>) -> Result<()> {
        Ok(())
    }

    /// The data lives in the database, not in this process.
    async fn resource_report(&self) -> wacore::stats::StorageResourceReport {
        wacore::stats::StorageResourceReport { memory_bytes: Some(0), ..Default::default() }
    }
}
