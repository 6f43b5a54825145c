use wacore::store::traits::{DeviceStore, ProtocolStore, SignalStore};

use super::*;
use crate::engine::postgres::tests::{assert_populated, populate, rows_of};
use crate::pg_testing::TestDatabase;

const JID: &str = "15551234567:3@s.whatsapp.net";

/// A session's device in the shards of `engine_dir`, written through every table and linked.
async fn linked_shard_device(engine_dir: &Path, session: &str, seed: u8) -> ShardDevice {
    let device = shards::open_device(&ShardStore::new(engine_dir, session), true).await.unwrap().expect("a device");
    populate(&device, seed).await;
    let mut credentials = device.load().await.unwrap().expect("created credentials");
    credentials.pn = Some(JID.parse().unwrap());
    credentials.lid = Some("100000012345678:3@lid".parse().unwrap());
    device.save(&credentials).await.unwrap();
    device
}

#[tokio::test]
async fn every_table_of_a_device_is_copied_through_the_library_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let engine_dir = dir.path().join("engine");
    let source = linked_shard_device(&engine_dir, "WA-m", 3).await;
    source.store_prekey(2, &[3, 12], true).await.unwrap();
    // Another session of the same shard: its rows stay out of the copy.
    let neighbour =
        (0..).map(|n| format!("WA-n{n}")).find(|id| shards::shard_index(id) == shards::shard_index("WA-m")).unwrap();
    linked_shard_device(&engine_dir, &neighbour, 4).await;

    let database = TestDatabase::create().await;
    let target = PgEngine::connect(&database.url(), 2).await.unwrap();
    let copy = copy_device(&engine_dir, "WA-m", &target).await.unwrap().expect("a copy");
    assert_eq!(copy.jid.as_deref(), Some(JID));
    for table in &copy.tables {
        assert!(table.copied > 0 && table.copied == table.source, "{table:?}");
    }
    let prekeys = copy.tables.iter().find(|t| t.table == "prekeys").unwrap();
    assert_eq!(prekeys.copied, 2);

    let dest = target.open_device("WA-m", false, None).await.unwrap().expect("the copied device");
    assert_populated(&dest, 3).await;
    let counts = rows_of(&target, i64::from(dest.device_id())).await;
    assert!(counts.values().all(|&n| n > 0), "every engine table of PostgreSQL got its rows: {counts:?}");
    let client = target.pool().get().await.unwrap();
    let uploaded: Vec<(i64, bool)> = client
        .query(
            "SELECT id, uploaded FROM wagate_engine_prekeys WHERE device = $1 ORDER BY id",
            &[&i64::from(dest.device_id())],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(uploaded, [(1, false), (2, true)], "the uploaded mark is kept");
    let (original, copied) = (source.load().await.unwrap().unwrap(), dest.load().await.unwrap().unwrap());
    assert_eq!(
        serde_json::to_value(&copied).unwrap(),
        serde_json::to_value(&original).unwrap(),
        "the credentials, every field"
    );
    assert!(target.open_device(&neighbour, false, None).await.unwrap().is_none(), "only the session asked for");

    // The shard is read, not consumed: the sent message kept for retries is still there.
    let sent = source.take_sent_message("15550001111@s.whatsapp.net", "SENT1").await.unwrap();
    assert_eq!(sent, Some(vec![3, 10]));

    let again = copy_device(&engine_dir, "WA-m", &target).await;
    assert!(matches!(again, Err(CopyError::TargetNotEmpty { .. })), "{again:?}");
    assert!(copy_device(&engine_dir, "WA-none", &target).await.unwrap().is_none(), "no device, nothing to copy");
    assert!(!target.has_keys("WA-none").await.unwrap());
}
