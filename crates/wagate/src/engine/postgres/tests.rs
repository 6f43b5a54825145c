use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use wacore::appstate::hash::HashState;
use wacore::appstate::processor::AppStateMutationMAC;
use wacore::store::error::StoreError;
use wacore::store::traits::{
    AppStateSyncKey, AppSyncStore, Backend, DeviceInfo, DeviceListRecord, DeviceStore, LidPnMappingEntry,
    MsgSecretEntry, MsgSecretStore, PendingInboundKey, PendingInboundRow, ProtocolStore, SignalStore, TcTokenEntry,
};

use super::*;
use crate::pg_testing::TestDatabase;

async fn engine() -> (TestDatabase, PgEngine) {
    let database = TestDatabase::create().await;
    let engine = PgEngine::connect(&database.url(), 4).await.expect("connect and migrate");
    (database, engine)
}

async fn open(engine: &PgEngine, session: &str) -> PgDevice {
    engine.open_device(session, true, None).await.unwrap().expect("a device")
}

/// Rows of `device` in each engine table.
pub(crate) async fn rows_of(engine: &PgEngine, device: i64) -> HashMap<&'static str, i64> {
    let client = engine.pool().get().await.unwrap();
    let mut counts = HashMap::new();
    for table in schema::DEVICE_TABLES {
        let row =
            client.query_one(&format!("SELECT count(*) FROM {table} WHERE device = $1"), &[&device]).await.unwrap();
        counts.insert(*table, row.get::<_, i64>(0));
    }
    counts
}

fn mac(byte: u8) -> [u8; 32] {
    [byte; 32]
}

fn lid(lid: &str, phone: &str, created_at: i64, updated_at: i64) -> LidPnMappingEntry {
    LidPnMappingEntry {
        lid: lid.to_string(),
        phone_number: phone.to_string(),
        created_at,
        updated_at,
        learning_source: "usync".to_string(),
    }
}

fn secret(chat: &str, sender: &str, id: &str, byte: u8, expires_at: i64, message_ts: i64) -> MsgSecretEntry {
    MsgSecretEntry {
        chat: Arc::from(chat),
        sender: Arc::from(sender),
        msg_id: Arc::from(id),
        secret: [byte; 32],
        expires_at,
        message_ts,
    }
}

fn device_list(user: &str, devices: &[u32], raw_id: Option<u32>) -> DeviceListRecord {
    DeviceListRecord {
        user: user.to_string(),
        devices: devices.iter().map(|&d| DeviceInfo::new(d, Some(d + 1))).collect(),
        timestamp: 1_700_000_000_123,
        phash: Some(format!("2:{user}")),
        raw_id,
    }
}

/// Writes a row through every write method family, so that every engine table holds rows of
/// `device` (of either store); `seed` makes its values its own.
pub(crate) async fn populate(device: &impl Backend, seed: u8) {
    if !device.exists().await.unwrap() {
        device.create().await.unwrap();
    }
    device.put_identity("15550001111@s.whatsapp.net", [seed; 32]).await.unwrap();
    device.put_session("15550001111@s.whatsapp.net", &[seed, 1]).await.unwrap();
    device.store_prekey(1, &[seed, 2], false).await.unwrap();
    device.store_signed_prekey(1, &[seed, 3]).await.unwrap();
    device.put_sender_key("group@g.us::15550001111", &[seed, 4]).await.unwrap();
    let key = AppStateSyncKey { key_data: vec![seed; 32], fingerprint: vec![seed], timestamp: 1 };
    device.set_sync_key(&[seed, 5], key).await.unwrap();
    device.set_version("regular", HashState { version: u64::from(seed), ..HashState::default() }).await.unwrap();
    let macs = [AppStateMutationMAC { index_mac: mac(seed).to_vec(), value_mac: vec![seed, 6] }];
    device.put_mutation_macs("regular", 1, &macs).await.unwrap();
    device.set_sender_key_status("group@g.us", &[("15550001111:1@s.whatsapp.net", true)]).await.unwrap();
    device.put_lid_mapping(&lid("100000000000001", "15550001111", 1, 1)).await.unwrap();
    device.save_base_key("15550001111@s.whatsapp.net", "MSG1", &[seed, 7]).await.unwrap();
    device.update_device_list(device_list("15550001111", &[0, 1], Some(u32::from(seed)))).await.unwrap();
    device.put_group_metadata("group@g.us", &[seed, 8]).await.unwrap();
    device.store_received_tc_token("100000000000001@lid", &[seed, 9], 100).await.unwrap();
    device.store_sent_message("15550001111@s.whatsapp.net", "SENT1", &[seed, 10]).await.unwrap();
    device
        .store_pending_inbound("15550001111@s.whatsapp.net", "15550001111@s.whatsapp.net", "IN1", &[seed, 11])
        .await
        .unwrap();
    device
        .put_msg_secret("15550001111@s.whatsapp.net", "15550001111@s.whatsapp.net", "SENT1", &[seed; 32])
        .await
        .unwrap();
}

/// Reads back what [`populate`] wrote with `seed`.
pub(crate) async fn assert_populated(device: &impl Backend, seed: u8) {
    assert_eq!(device.load_identity("15550001111@s.whatsapp.net").await.unwrap(), Some([seed; 32]));
    assert_eq!(device.get_session("15550001111@s.whatsapp.net").await.unwrap().as_deref(), Some(&[seed, 1][..]));
    assert_eq!(device.load_prekey(1).await.unwrap().as_deref(), Some(&[seed, 2][..]));
    assert_eq!(device.load_signed_prekey(1).await.unwrap(), Some(vec![seed, 3]));
    assert_eq!(device.get_sender_key("group@g.us::15550001111").await.unwrap(), Some(vec![seed, 4]));
    assert_eq!(device.get_sync_key(&[seed, 5]).await.unwrap().map(|k| k.key_data), Some(vec![seed; 32]));
    assert_eq!(device.get_version("regular").await.unwrap().version, u64::from(seed));
    assert_eq!(device.get_mutation_mac("regular", &mac(seed)).await.unwrap(), Some(vec![seed, 6]));
    assert_eq!(device.get_devices("15550001111").await.unwrap().and_then(|l| l.raw_id), Some(u32::from(seed)));
    assert_eq!(device.get_group_metadata("group@g.us").await.unwrap(), Some(vec![seed, 8]));
    assert_eq!(device.get_tc_token("100000000000001@lid").await.unwrap().map(|t| t.token), Some(vec![seed, 9]));
    let pending = device.get_pending_inbound("15550001111@s.whatsapp.net", "15550001111@s.whatsapp.net", "IN1");
    assert_eq!(pending.await.unwrap(), Some(vec![seed, 11]));
    let secret = device.get_msg_secret("15550001111@s.whatsapp.net", "15550001111@s.whatsapp.net", "SENT1");
    assert_eq!(secret.await.unwrap(), Some(vec![seed; 32]));
}

#[tokio::test]
async fn credentials_round_trip_and_devices_are_listed() {
    let (_database, engine) = engine().await;
    assert!(engine.open_device("WA-a", false, None).await.unwrap().is_none(), "no device without create");
    assert!(!engine.has_keys("WA-a").await.unwrap());
    let device = open(&engine, "WA-a").await;
    let again = open(&engine, "WA-a").await;
    assert_eq!(device.device_id(), again.device_id(), "one device per session");
    assert!(engine.has_keys("WA-a").await.unwrap());
    assert!(!device.exists().await.unwrap());
    assert!(device.load().await.unwrap().is_none());
    assert!(engine.load_device("WA-a").await.unwrap().is_none());

    assert_eq!(device.create().await.unwrap(), device.device_id(), "create returns the device id");
    assert!(device.exists().await.unwrap());
    assert!(device.create().await.is_err(), "a second create does not replace the keys");
    let created = device.load().await.unwrap().expect("created credentials");

    // A device of the library's own constructor, linked, saved and read back whole.
    let mut saved = wacore::store::Device::new();
    saved.pn = Some("15551234567:3@s.whatsapp.net".parse().unwrap());
    saved.lid = Some("100000012345678:3@lid".parse().unwrap());
    saved.push_name = "Acme".to_string();
    saved.next_pre_key_id = 812;
    saved.login_counter = 7;
    saved.edge_routing_info = Some(vec![1, 2, 3]);
    device.save(&saved).await.unwrap();
    let loaded = device.load().await.unwrap().expect("saved credentials");
    assert_eq!(loaded.pn, saved.pn);
    assert_eq!(loaded.lid, saved.lid);
    assert_eq!(loaded.registration_id, saved.registration_id);
    assert_ne!(loaded.registration_id, 0);
    assert_eq!(loaded.identity_key.public_key.public_key_bytes(), saved.identity_key.public_key.public_key_bytes());
    assert_eq!(loaded.identity_key.private_key.serialize(), saved.identity_key.private_key.serialize());
    assert_eq!(loaded.noise_key.public_key.public_key_bytes(), saved.noise_key.public_key.public_key_bytes());
    assert_eq!(loaded.signed_pre_key_id, saved.signed_pre_key_id);
    assert_eq!(loaded.signed_pre_key_signature, saved.signed_pre_key_signature);
    assert_eq!(loaded.adv_secret_key, saved.adv_secret_key);
    assert_eq!(loaded.push_name, "Acme");
    assert_eq!((loaded.next_pre_key_id, loaded.login_counter), (812, 7));
    assert_eq!(loaded.edge_routing_info, Some(vec![1, 2, 3]));
    assert_eq!(serde_json::to_value(&loaded).unwrap(), serde_json::to_value(&saved).unwrap(), "every field");
    assert_ne!(
        created.identity_key.public_key.public_key_bytes(),
        loaded.identity_key.public_key.public_key_bytes(),
        "the save replaced the created keys"
    );
    let through_engine = engine.load_device("WA-a").await.unwrap().expect("credentials");
    assert_eq!(through_engine.pn, saved.pn);
    assert_eq!(device.credentials().await.unwrap().map(|d| d.push_name), Some("Acme".to_string()));

    let unlinked = open(&engine, "WA-0").await;
    unlinked.create().await.unwrap();
    open(&engine, "WA-b").await; // an id, no credentials yet
    let listed = engine.stored_devices().await.unwrap();
    assert_eq!(
        listed,
        vec![
            ("WA-0".to_string(), i64::from(unlinked.device_id()), false),
            ("WA-a".to_string(), i64::from(device.device_id()), true),
            ("WA-b".to_string(), listed[2].1, false),
        ]
    );
    assert_eq!(unlinked.resource_report().await.memory_bytes, Some(0));

    // Credentials that do not decode fail this session's load, with the session named.
    let client = engine.pool().get().await.unwrap();
    client
        .execute(
            "UPDATE wagate_engine_credentials SET data = '\\x00'::bytea WHERE device = $1",
            &[&i64::from(unlinked.device_id())],
        )
        .await
        .unwrap();
    let err = unlinked.credentials().await.err().expect("undecodable credentials");
    assert!(err.to_string().contains("WA-0"), "{err}");
    assert!(engine.load_device("WA-a").await.unwrap().is_some(), "the others are not affected");
}

#[tokio::test]
async fn signal_store_round_trips() {
    let (_database, engine) = engine().await;
    let d = open(&engine, "WA-signal").await;

    // Identities.
    assert_eq!(d.load_identity("1555@s.whatsapp.net").await.unwrap(), None);
    d.put_identity("1555@s.whatsapp.net", [1; 32]).await.unwrap();
    d.put_identity("1555@s.whatsapp.net", [2; 32]).await.unwrap();
    assert_eq!(d.load_identity("1555@s.whatsapp.net").await.unwrap(), Some([2; 32]), "upsert");
    let batch: Vec<(Arc<str>, [u8; 32])> =
        vec![(Arc::from("a@lid"), [3; 32]), (Arc::from("b@lid"), [4; 32]), (Arc::from("a@lid"), [5; 32])];
    d.put_identities_batch(&batch).await.unwrap();
    assert_eq!(d.load_identity("a@lid").await.unwrap(), Some([5; 32]), "the last of a key wins");
    assert_eq!(d.load_identity("b@lid").await.unwrap(), Some([4; 32]));
    d.put_identities_batch(&[]).await.unwrap();
    d.delete_identity("a@lid").await.unwrap();
    assert_eq!(d.load_identity("a@lid").await.unwrap(), None);

    // Sessions.
    assert!(!d.has_session("15551112222:1@s.whatsapp.net").await.unwrap());
    d.put_session("15551112222:1@s.whatsapp.net", &[9, 9]).await.unwrap();
    assert!(d.has_session("15551112222:1@s.whatsapp.net").await.unwrap());
    assert_eq!(d.get_session("15551112222:1@s.whatsapp.net").await.unwrap(), Some(Bytes::from_static(&[9, 9])));
    let sessions: Vec<(Arc<str>, Bytes)> = vec![
        (Arc::from("s1@s.whatsapp.net"), Bytes::from_static(&[1])),
        (Arc::from("15551112222:1@s.whatsapp.net"), Bytes::from_static(&[2])),
        (Arc::from("s1@s.whatsapp.net"), Bytes::from_static(&[3])),
    ];
    d.put_sessions_batch(&sessions).await.unwrap();
    assert_eq!(d.get_session("s1@s.whatsapp.net").await.unwrap(), Some(Bytes::from_static(&[3])));
    assert_eq!(d.get_session("15551112222:1@s.whatsapp.net").await.unwrap(), Some(Bytes::from_static(&[2])));
    d.delete_session("s1@s.whatsapp.net").await.unwrap();
    assert_eq!(d.get_session("s1@s.whatsapp.net").await.unwrap(), None);

    // Signal state of a user: `user@...` or `user:device@...`, in sessions or identities.
    assert!(d.has_signal_state_for_user("15551112222").await.unwrap(), "a session user:dev@");
    assert!(d.has_signal_state_for_user("1555").await.unwrap(), "an identity user@");
    assert!(!d.has_signal_state_for_user("155511").await.unwrap(), "a prefix of a user is not the user");
    assert!(!d.has_signal_state_for_user("1555111222_").await.unwrap(), "`_` is no wildcard");
    assert!(!d.has_signal_state_for_user("15559999999").await.unwrap());

    // Prekeys.
    assert_eq!(d.get_max_prekey_id().await.unwrap(), 0);
    d.store_prekey(5, &[5], false).await.unwrap();
    let keys: Vec<(u32, Bytes)> = (10..15).map(|id| (id, Bytes::from(vec![id as u8]))).collect();
    d.store_prekeys_batch(&keys, false).await.unwrap();
    assert_eq!(d.get_max_prekey_id().await.unwrap(), 14);
    assert_eq!(d.load_prekey(12).await.unwrap(), Some(Bytes::from_static(&[12])));
    let mut some = d.load_prekeys_batch(&[5, 11, 99]).await.unwrap();
    some.sort_by_key(|(id, _)| *id);
    assert_eq!(some, vec![(5, Bytes::from_static(&[5])), (11, Bytes::from_static(&[11]))], "only those found");
    d.remove_prekey(11).await.unwrap();
    d.mark_prekeys_uploaded(&[5, 11, 12]).await.unwrap();
    assert_eq!(d.load_prekey(11).await.unwrap(), None, "marking uploaded never brings a removed key back");
    let client = engine.pool().get().await.unwrap();
    let uploaded: Vec<i64> = client
        .query(
            "SELECT id FROM wagate_engine_prekeys WHERE device = $1 AND uploaded ORDER BY id",
            &[&i64::from(d.device_id())],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(uploaded, vec![5, 12]);
    d.store_prekey(u32::MAX, &[7], true).await.unwrap();
    assert_eq!(d.get_max_prekey_id().await.unwrap(), u32::MAX, "ids use the whole u32 range");

    // Signed prekeys.
    d.store_signed_prekey(2, &[2]).await.unwrap();
    d.store_signed_prekey(1, &[1]).await.unwrap();
    d.store_signed_prekey(2, &[22]).await.unwrap();
    assert_eq!(d.load_signed_prekey(2).await.unwrap(), Some(vec![22]));
    assert_eq!(d.load_all_signed_prekeys().await.unwrap(), vec![(1, vec![1]), (2, vec![22])]);
    d.remove_signed_prekey(1).await.unwrap();
    assert_eq!(d.load_signed_prekey(1).await.unwrap(), None);

    // Sender keys.
    d.put_sender_key("g@g.us::a", &[1]).await.unwrap();
    let sender_keys: Vec<(Arc<str>, Bytes)> =
        vec![(Arc::from("g@g.us::a"), Bytes::from_static(&[2])), (Arc::from("g@g.us::b"), Bytes::from_static(&[3]))];
    d.put_sender_keys_batch(&sender_keys).await.unwrap();
    assert_eq!(d.get_sender_key("g@g.us::a").await.unwrap(), Some(vec![2]));
    assert_eq!(d.get_sender_key("g@g.us::b").await.unwrap(), Some(vec![3]));
    d.delete_sender_key("g@g.us::a").await.unwrap();
    assert_eq!(d.get_sender_key("g@g.us::a").await.unwrap(), None);
}

#[tokio::test]
async fn app_sync_store_round_trips() {
    let (_database, engine) = engine().await;
    let d = open(&engine, "WA-appsync").await;

    assert!(d.get_sync_key(&[1]).await.unwrap().is_none());
    assert_eq!(d.get_latest_sync_key_id().await.unwrap(), None);
    let key = |byte: u8| AppStateSyncKey { key_data: vec![byte; 32], fingerprint: vec![byte, 1], timestamp: 42 };
    d.set_sync_key(&[0, 1], key(1)).await.unwrap();
    d.set_sync_key(&[0, 3], key(3)).await.unwrap();
    d.set_sync_key(&[0, 2], key(2)).await.unwrap();
    let got = d.get_sync_key(&[0, 3]).await.unwrap().expect("a key");
    assert_eq!((got.key_data, got.fingerprint, got.timestamp), (vec![3; 32], vec![3, 1], 42));
    assert_eq!(d.get_latest_sync_key_id().await.unwrap(), Some(vec![0, 3]), "the greatest id");
    // A row that does not decode is absent, and never the latest.
    let client = engine.pool().get().await.unwrap();
    client
        .execute(
            "INSERT INTO wagate_engine_app_state_keys (device, key_id, data) VALUES ($1, '\\x0009', '\\x00')",
            &[&i64::from(d.device_id())],
        )
        .await
        .unwrap();
    assert!(d.get_sync_key(&[0, 9]).await.unwrap().is_none());
    assert_eq!(d.get_latest_sync_key_id().await.unwrap(), Some(vec![0, 3]));

    // Versions.
    assert_eq!(d.get_version("critical_block").await.unwrap().version, 0, "the default");
    let mut state = HashState { version: 17, ..HashState::default() };
    state.hash[0] = 0xAB;
    state.index_value_map.insert("idx".to_string(), vec![1, 2]);
    d.set_version("critical_block", state).await.unwrap();
    let got = d.get_version("critical_block").await.unwrap();
    assert_eq!((got.version, got.hash[0]), (17, 0xAB));
    assert_eq!(got.index_value_map.get("idx"), Some(&vec![1, 2]));

    // Mutation MACs.
    let macs: Vec<AppStateMutationMAC> = (1..=3)
        .map(|b| AppStateMutationMAC { index_mac: mac(b).to_vec(), value_mac: vec![b, b] })
        .chain([AppStateMutationMAC { index_mac: mac(1).to_vec(), value_mac: vec![11] }])
        .collect();
    d.put_mutation_macs("regular", 5, &macs).await.unwrap();
    d.put_mutation_macs("regular_high", 5, &macs[..1]).await.unwrap();
    assert_eq!(d.get_mutation_mac("regular", &mac(1)).await.unwrap(), Some(vec![11]), "the last of a key");
    assert_eq!(d.get_mutation_mac("regular", &mac(9)).await.unwrap(), None);
    let found = d.get_mutation_macs("regular", &[mac(1), mac(2), mac(9)]).await.unwrap();
    assert_eq!(found, HashMap::from([(mac(1), vec![11]), (mac(2), vec![2, 2])]), "only those found");
    assert!(d.get_mutation_macs("regular", &[]).await.unwrap().is_empty());
    d.put_mutation_macs("regular", 6, &[AppStateMutationMAC { index_mac: mac(2).to_vec(), value_mac: vec![22] }])
        .await
        .unwrap();
    assert_eq!(d.get_mutation_mac("regular", &mac(2)).await.unwrap(), Some(vec![22]), "upsert");
    d.delete_mutation_macs("regular", &[mac(1).to_vec()]).await.unwrap();
    assert_eq!(d.get_mutation_mac("regular", &mac(1)).await.unwrap(), None);
    assert_eq!(d.get_mutation_mac("regular_high", &mac(1)).await.unwrap(), Some(vec![1, 1]), "per collection");
    d.clear_mutation_macs("regular").await.unwrap();
    assert!(d.get_mutation_macs("regular", &[mac(2), mac(3)]).await.unwrap().is_empty());
    assert_eq!(d.get_mutation_mac("regular_high", &mac(1)).await.unwrap(), Some(vec![1, 1]), "only the named one");
}

#[tokio::test]
async fn protocol_store_round_trips() {
    let (_database, engine) = engine().await;
    let d = open(&engine, "WA-protocol").await;

    // Sender key devices.
    d.set_sender_key_status("g1@g.us", &[("a:1@lid", true), ("b:2@lid", false), ("a:1@lid", false)]).await.unwrap();
    d.set_sender_key_status("g2@g.us", &[("a:1@lid", true)]).await.unwrap();
    assert_eq!(
        d.get_sender_key_devices("g1@g.us").await.unwrap(),
        vec![("a:1@lid".to_string(), false), ("b:2@lid".to_string(), false)]
    );
    d.set_sender_key_status("g1@g.us", &[("b:2@lid", true)]).await.unwrap();
    assert!(d.get_sender_key_devices("g1@g.us").await.unwrap().contains(&("b:2@lid".to_string(), true)));
    d.delete_sender_key_device_rows(&["a:1@lid"]).await.unwrap();
    assert_eq!(d.get_sender_key_devices("g1@g.us").await.unwrap(), vec![("b:2@lid".to_string(), true)]);
    assert!(d.get_sender_key_devices("g2@g.us").await.unwrap().is_empty(), "across groups");
    d.clear_sender_key_devices("g1@g.us").await.unwrap();
    assert!(d.get_sender_key_devices("g1@g.us").await.unwrap().is_empty());
    d.set_sender_key_status("g3@g.us", &[("c:1@lid", true)]).await.unwrap();
    d.clear_all_sender_key_devices().await.unwrap();
    assert!(d.get_sender_key_devices("g3@g.us").await.unwrap().is_empty());

    // LID/PN mappings.
    d.put_lid_mapping(&lid("100", "1555", 10, 10)).await.unwrap();
    let mut updated = lid("100", "1556", 99, 20);
    updated.learning_source = "peer_pn_message".to_string();
    d.put_lid_mapping(&updated).await.unwrap();
    let got = d.get_lid_mapping("100").await.unwrap().expect("a mapping");
    assert_eq!(
        (got.phone_number.as_str(), got.created_at, got.updated_at, got.learning_source.as_str()),
        ("1556", 10, 20, "peer_pn_message"),
        "an upsert keeps the first created_at"
    );
    d.put_lid_mappings(&[lid("200", "1556", 1, 30), lid("300", "1557", 1, 5), lid("300", "1558", 1, 6)]).await.unwrap();
    assert_eq!(d.get_pn_mapping("1556").await.unwrap().map(|m| m.lid), Some("200".to_string()), "the most recent");
    assert_eq!(d.get_lid_mapping("300").await.unwrap().map(|m| m.phone_number), Some("1558".to_string()));
    assert!(d.get_pn_mapping("1557").await.unwrap().is_none());
    let all: Vec<String> = d.get_all_lid_mappings().await.unwrap().into_iter().map(|m| m.lid).collect();
    assert_eq!(all, vec!["100", "200", "300"]);

    // Base keys.
    assert!(!d.has_same_base_key("a@lid", "M1", &[1]).await.unwrap());
    d.save_base_key("a@lid", "M1", &[1]).await.unwrap();
    assert!(d.has_same_base_key("a@lid", "M1", &[1]).await.unwrap());
    assert!(!d.has_same_base_key("a@lid", "M1", &[2]).await.unwrap());
    d.save_base_key("a@lid", "M1", &[2]).await.unwrap();
    assert!(d.has_same_base_key("a@lid", "M1", &[2]).await.unwrap());
    d.delete_base_key("a@lid", "M1").await.unwrap();
    assert!(!d.has_same_base_key("a@lid", "M1", &[2]).await.unwrap());

    // Device lists.
    assert!(d.get_devices("1555").await.unwrap().is_none());
    d.update_device_list(device_list("1555", &[0, 3], None)).await.unwrap();
    let got = d.get_devices("1555").await.unwrap().expect("a list");
    assert_eq!(
        got.devices.iter().map(|i| (i.device_id, i.key_index)).collect::<Vec<_>>(),
        vec![(0, Some(1)), (3, Some(4))]
    );
    assert_eq!((got.timestamp, got.phash.as_deref(), got.raw_id), (1_700_000_000_123, Some("2:1555"), None));
    d.update_device_lists(vec![device_list("1555", &[0], Some(u32::MAX)), device_list("1666", &[0, 1, 2], Some(7))])
        .await
        .unwrap();
    let got = d.get_devices("1555").await.unwrap().expect("a list");
    assert_eq!((got.devices.len(), got.raw_id), (1, Some(u32::MAX)));
    assert_eq!(d.get_devices("1666").await.unwrap().map(|l| l.devices.len()), Some(3));
    d.delete_devices("1555").await.unwrap();
    assert!(d.get_devices("1555").await.unwrap().is_none());

    // Group metadata.
    assert!(d.get_group_metadata("g@g.us").await.unwrap().is_none());
    d.put_group_metadata("g@g.us", &[1]).await.unwrap();
    d.put_group_metadata("g@g.us", &[2]).await.unwrap();
    assert_eq!(d.get_group_metadata("g@g.us").await.unwrap(), Some(vec![2]));
    d.delete_group_metadata("g@g.us").await.unwrap();
    assert!(d.get_group_metadata("g@g.us").await.unwrap().is_none());

    // Trusted-contact tokens.
    let entry = TcTokenEntry { token: vec![1], token_timestamp: 100, sender_timestamp: Some(50) };
    d.put_tc_token("a@lid", &entry).await.unwrap();
    let got = d.get_tc_token("a@lid").await.unwrap().expect("a token");
    assert_eq!((got.token, got.token_timestamp, got.sender_timestamp), (vec![1], 100, Some(50)));
    d.store_received_tc_token("a@lid", &[2], 90).await.unwrap();
    assert_eq!(d.get_tc_token("a@lid").await.unwrap().unwrap().token, vec![1], "an older token does not win");
    d.store_received_tc_token("a@lid", &[3], 100).await.unwrap();
    let got = d.get_tc_token("a@lid").await.unwrap().unwrap();
    assert_eq!((got.token, got.sender_timestamp), (vec![3], Some(50)), "as new wins; the sender bucket is kept");
    d.touch_tc_token_sender_timestamp("a@lid", 40).await.unwrap();
    assert_eq!(d.get_tc_token("a@lid").await.unwrap().unwrap().sender_timestamp, Some(50), "never backwards");
    d.touch_tc_token_sender_timestamp("a@lid", 60).await.unwrap();
    let got = d.get_tc_token("a@lid").await.unwrap().unwrap();
    assert_eq!((got.token, got.sender_timestamp), (vec![3], Some(60)), "forwards; the token is kept");
    d.touch_tc_token_sender_timestamp("b@lid", 70).await.unwrap();
    let got = d.get_tc_token("b@lid").await.unwrap().unwrap();
    assert_eq!((got.token, got.token_timestamp, got.sender_timestamp), (vec![], 70, Some(70)), "a placeholder");
    d.store_received_tc_token("b@lid", &[4], 10).await.unwrap();
    let got = d.get_tc_token("b@lid").await.unwrap().unwrap();
    assert_eq!((got.token, got.sender_timestamp), (vec![4], Some(70)), "a placeholder never blocks a real token");
    d.put_tc_token("c@lid", &TcTokenEntry { token: vec![5], token_timestamp: 10, sender_timestamp: None })
        .await
        .unwrap();
    d.put_tc_token("d@lid", &TcTokenEntry { token: vec![6], token_timestamp: 10, sender_timestamp: Some(200) })
        .await
        .unwrap();
    d.put_tc_token("e@lid", &TcTokenEntry { token: vec![], token_timestamp: 500, sender_timestamp: None })
        .await
        .unwrap();
    assert_eq!(d.get_all_tc_token_jids().await.unwrap(), vec!["a@lid", "b@lid", "c@lid", "d@lid", "e@lid"]);
    // Token cut-off 95, sender cut-off 100: a (token 100, sender 60) keeps its token; b
    // (token 10, sender 70) goes; c (token 10, no sender) goes; d keeps its recent sender
    // bucket; e is a placeholder without a sender bucket.
    assert_eq!(d.delete_expired_tc_tokens(95, 100).await.unwrap(), 3);
    assert_eq!(d.get_all_tc_token_jids().await.unwrap(), vec!["a@lid", "d@lid"]);
    d.delete_tc_token("a@lid").await.unwrap();
    assert!(d.get_tc_token("a@lid").await.unwrap().is_none());

    // Sent messages.
    d.store_sent_message("c@s.whatsapp.net", "M1", &[1]).await.unwrap();
    d.store_sent_message("c@s.whatsapp.net", "M1", &[2]).await.unwrap();
    d.store_sent_message("c@s.whatsapp.net", "M2", &[3]).await.unwrap();
    assert_eq!(d.take_sent_message("c@s.whatsapp.net", "M1").await.unwrap(), Some(vec![2]));
    assert_eq!(d.take_sent_message("c@s.whatsapp.net", "M1").await.unwrap(), None, "a take removes");
    let now = wacore::time::now_secs();
    assert_eq!(d.delete_expired_sent_messages(now - 60).await.unwrap(), 0, "younger than the cut-off");
    assert_eq!(d.delete_expired_sent_messages(now + 60).await.unwrap(), 1);
    assert_eq!(d.take_sent_message("c@s.whatsapp.net", "M2").await.unwrap(), None);

    // Pending inbound.
    d.store_pending_inbound("c", "s", "I1", &[1]).await.unwrap();
    d.store_pending_inbound("c", "s", "I1", &[2]).await.unwrap();
    assert_eq!(d.get_pending_inbound("c", "s", "I1").await.unwrap(), Some(vec![2]), "replaces");
    assert_eq!(d.get_pending_inbound("c", "other", "I1").await.unwrap(), None, "keyed by chat, sender and id");
    let rows = [
        PendingInboundRow { chat: "c", sender: "s", id: "I2", message: &[3] },
        PendingInboundRow { chat: "c", sender: "t", id: "I2", message: &[4] },
        PendingInboundRow { chat: "c", sender: "s", id: "I2", message: &[5] },
        PendingInboundRow { chat: "c", sender: "s", id: "I3", message: &[6] },
    ];
    d.store_pending_inbound_batch(&rows).await.unwrap();
    assert_eq!(d.get_pending_inbound("c", "s", "I2").await.unwrap(), Some(vec![5]));
    assert_eq!(d.get_pending_inbound("c", "t", "I2").await.unwrap(), Some(vec![4]));
    d.delete_pending_inbound("c", "s", "I1").await.unwrap();
    assert_eq!(d.get_pending_inbound("c", "s", "I1").await.unwrap(), None);
    d.delete_pending_inbound_batch(&[
        PendingInboundKey { chat: "c", sender: "s", id: "I2" },
        PendingInboundKey { chat: "c", sender: "x", id: "I3" },
    ])
    .await
    .unwrap();
    assert_eq!(d.get_pending_inbound("c", "s", "I2").await.unwrap(), None);
    assert_eq!(d.get_pending_inbound("c", "s", "I3").await.unwrap(), Some(vec![6]), "only the keys named");
    assert_eq!(d.delete_expired_pending_inbound(now - 60).await.unwrap(), 0);
    assert_eq!(d.delete_expired_pending_inbound(now + 60).await.unwrap(), 2);
    assert_eq!(d.get_pending_inbound("c", "t", "I2").await.unwrap(), None);
}

#[tokio::test]
async fn msg_secrets_round_trip_and_expire() {
    let (_database, engine) = engine().await;
    let d = open(&engine, "WA-secrets").await;

    assert_eq!(d.get_msg_secret("c", "s", "M").await.unwrap(), None);
    d.put_msg_secret("c", "s", "M", &[1; 32]).await.unwrap();
    assert_eq!(d.get_msg_secret("c", "s", "M").await.unwrap(), Some(vec![1; 32]));
    assert_eq!(d.get_msg_secret_with_ts("c", "s", "M").await.unwrap(), Some((vec![1; 32], 0)));
    assert_eq!(d.get_msg_secret("c", "other", "M").await.unwrap(), None, "keyed by chat, sender and id");

    let stored = d
        .put_msg_secrets(vec![
            secret("c", "s", "A", 2, 100, 50),
            secret("c", "s", "B", 3, 100, 0),
            secret("c", "s", "A", 4, 90, 0),
        ])
        .await
        .unwrap();
    assert_eq!(stored, 3, "every entry counts");
    assert_eq!(d.get_msg_secret_with_ts("c", "s", "A").await.unwrap(), Some((vec![4; 32], 50)), "merged in the batch");
    // On conflict: the new secret, the later deadline, the later parent time.
    d.put_msg_secrets(vec![secret("c", "s", "A", 5, 80, 0), secret("c", "s", "B", 6, 200, 70)]).await.unwrap();
    assert_eq!(d.get_msg_secret_with_ts("c", "s", "A").await.unwrap(), Some((vec![5; 32], 50)));
    assert_eq!(d.get_msg_secret_with_ts("c", "s", "B").await.unwrap(), Some((vec![6; 32], 70)));
    d.put_msg_secrets(vec![secret("c", "s", "C", 7, 100, 0)]).await.unwrap();
    d.put_msg_secrets(vec![secret("c", "s", "C", 7, 0, 0)]).await.unwrap(); // never, wins
    assert_eq!(d.put_msg_secrets(Vec::new()).await.unwrap(), 0);

    // A = 100, B = 200, C and M never: a cut-off of 100 removes A (at or before), not B.
    assert_eq!(d.delete_expired_msg_secrets(99).await.unwrap(), 0);
    assert_eq!(d.delete_expired_msg_secrets(100).await.unwrap(), 1);
    assert_eq!(d.get_msg_secret("c", "s", "A").await.unwrap(), None);
    assert_eq!(d.delete_expired_msg_secrets(i64::MAX).await.unwrap(), 1);
    assert!(d.get_msg_secret("c", "s", "C").await.unwrap().is_some(), "0 is never");
    assert!(d.get_msg_secret("c", "s", "M").await.unwrap().is_some());
}

#[tokio::test]
async fn devices_do_not_see_each_others_rows_and_wipe_removes_one() {
    let (_database, engine) = engine().await;
    let (a, b) = (open(&engine, "WA-a").await, open(&engine, "WA-b").await);
    assert_ne!(a.device_id(), b.device_id());
    populate(&a, 1).await;
    populate(&b, 2).await;
    assert_populated(&a, 1).await;
    assert_populated(&b, 2).await;
    assert_ne!(a.load().await.unwrap().unwrap().registration_id, b.load().await.unwrap().unwrap().registration_id);
    // Deletes and expiries of one touch nothing of the other.
    a.delete_session("15550001111@s.whatsapp.net").await.unwrap();
    a.clear_all_sender_key_devices().await.unwrap();
    assert_eq!(a.delete_expired_sent_messages(i64::MAX).await.unwrap(), 1);
    assert_eq!(a.delete_expired_pending_inbound(i64::MAX).await.unwrap(), 1);
    assert_eq!(a.delete_expired_tc_tokens(i64::MAX, i64::MAX).await.unwrap(), 1);
    assert!(b.get_session("15550001111@s.whatsapp.net").await.unwrap().is_some());
    assert_eq!(b.get_sender_key_devices("group@g.us").await.unwrap().len(), 1);
    assert_eq!(b.take_sent_message("15550001111@s.whatsapp.net", "SENT1").await.unwrap(), Some(vec![2, 10]));
    b.store_sent_message("15550001111@s.whatsapp.net", "SENT1", &[2, 10]).await.unwrap();
    assert_populated(&b, 2).await;
    populate(&a, 1).await;

    let (a_id, b_id) = (i64::from(a.device_id()), i64::from(b.device_id()));
    let before = rows_of(&engine, b_id).await;
    for (table, count) in &before {
        assert!(*count > 0, "the test writes rows to {table}");
    }
    assert!(rows_of(&engine, a_id).await.values().all(|&n| n > 0));

    engine.wipe("WA-a").await.unwrap();
    assert!(rows_of(&engine, a_id).await.values().all(|&n| n == 0), "every row of the wiped device is gone");
    assert_eq!(rows_of(&engine, b_id).await, before, "the other's rows are untouched");
    assert!(!engine.has_keys("WA-a").await.unwrap());
    assert!(engine.load_device("WA-a").await.unwrap().is_none());
    assert_populated(&b, 2).await;
    engine.wipe("WA-a").await.unwrap(); // again: nothing to do
    engine.wipe("WA-never").await.unwrap();

    // A late write of the wiped device fails rather than leaving rows behind; a new device of
    // the same session gets a new id.
    assert!(a.put_session("x@lid", &[1]).await.is_err());
    let fresh = open(&engine, "WA-a").await;
    assert!(fresh.device_id() > b.device_id(), "ids are never reused");
    assert!(fresh.load().await.unwrap().is_none());
    assert_eq!(
        engine.stored_devices().await.unwrap(),
        vec![("WA-a".to_string(), i64::from(fresh.device_id()), false), ("WA-b".to_string(), b_id, false)]
    );
}

fn lease_lost(err: &StoreError) -> bool {
    let lost = std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<PgEngineError>())
        .is_some_and(|e| matches!(e, PgEngineError::LeaseLost { session } if session == "WA-f"));
    lost && std::error::Error::source(err)
        .is_some_and(|s| s.to_string().contains("this node no longer holds the lease of session WA-f"))
}

#[tokio::test]
async fn a_fenced_device_writes_only_while_it_holds_the_lease() {
    let (_database, engine) = engine().await;
    let client = engine.pool().get().await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS wagate_leases (session TEXT PRIMARY KEY, owner TEXT NOT NULL, \
             generation BIGINT NOT NULL, expires_at TIMESTAMPTZ NOT NULL); \
             INSERT INTO wagate_leases VALUES ('WA-f', 'node-1', 1, now() + interval '30 seconds')",
        )
        .await
        .unwrap();
    let fence = |generation| Some(Fence { session: "WA-f".to_string(), generation });

    // A stale fence cannot even reserve a device id.
    match engine.open_device("WA-f", true, fence(0)).await {
        Err(PgEngineError::LeaseLost { session }) => assert_eq!(session, "WA-f"),
        other => panic!("expected the lease to be refused, got {:?}", other.map(|d| d.map(|d| d.device_id()))),
    }
    assert!(!engine.has_keys("WA-f").await.unwrap());

    let d = engine.open_device("WA-f", true, fence(1)).await.unwrap().expect("a device");
    d.create().await.unwrap();
    let mut linked = d.load().await.unwrap().unwrap();
    linked.push_name = "holder".to_string();
    d.save(&linked).await.unwrap();
    d.put_session("a@lid", &[1]).await.unwrap();
    d.store_prekeys_batch(&[(1, Bytes::from_static(&[1]))], false).await.unwrap();
    d.put_msg_secret("c", "s", "M", &[1; 32]).await.unwrap();
    assert_eq!(d.take_sent_message("c", "none").await.unwrap(), None);

    // Another node takes the lease over.
    client
        .execute("UPDATE wagate_leases SET owner = 'node-2', generation = 2 WHERE session = 'WA-f'", &[])
        .await
        .unwrap();
    let before = rows_of(&engine, i64::from(d.device_id())).await;
    let mut other = linked.clone();
    other.push_name = "stale".to_string();
    let err = d.save(&other).await.unwrap_err();
    assert!(lease_lost(&err), "{err:?}");
    assert!(lease_lost(&d.put_session("a@lid", &[2]).await.unwrap_err()));
    assert!(lease_lost(&d.put_session("b@lid", &[2]).await.unwrap_err()));
    assert!(lease_lost(&d.store_prekeys_batch(&[(2, Bytes::from_static(&[2]))], false).await.unwrap_err()));
    assert!(lease_lost(&d.remove_prekey(1).await.unwrap_err()));
    assert!(lease_lost(&d.delete_expired_msg_secrets(i64::MAX).await.unwrap_err()));
    assert!(lease_lost(&d.put_msg_secret("c", "s", "M", &[2; 32]).await.unwrap_err()));
    assert!(lease_lost(&d.create().await.unwrap_err()));
    // Its rows are as they were; reads still work.
    assert_eq!(rows_of(&engine, i64::from(d.device_id())).await, before);
    assert_eq!(d.load().await.unwrap().unwrap().push_name, "holder");
    assert_eq!(d.get_session("a@lid").await.unwrap(), Some(Bytes::from_static(&[1])));
    assert_eq!(d.load_prekey(1).await.unwrap(), Some(Bytes::from_static(&[1])));
    assert_eq!(d.get_msg_secret("c", "s", "M").await.unwrap(), Some(vec![1; 32]));

    // The new holder, fenced at the new generation, writes; an unfenced device is not checked.
    let holder = engine.open_device("WA-f", false, fence(2)).await.unwrap().expect("the device");
    holder.put_session("a@lid", &[3]).await.unwrap();
    assert_eq!(d.get_session("a@lid").await.unwrap(), Some(Bytes::from_static(&[3])));
    client.execute("DELETE FROM wagate_leases", &[]).await.unwrap();
    assert!(lease_lost(&holder.put_session("a@lid", &[4]).await.unwrap_err()), "no lease row at all");
    let single = engine.open_device("WA-f", false, None).await.unwrap().expect("the device");
    single.put_session("a@lid", &[5]).await.unwrap();
    assert_eq!(d.get_session("a@lid").await.unwrap(), Some(Bytes::from_static(&[5])));
}

#[tokio::test]
async fn nodes_connecting_at_once_migrate_once() {
    let database = TestDatabase::create().await;
    let url = database.url();
    let (first, second, third) =
        tokio::join!(PgEngine::connect(&url, 2), PgEngine::connect(&url, 2), PgEngine::connect(&url, 2));
    let (first, _second, _third) = (first.unwrap(), second.unwrap(), third.unwrap());
    let client = first.pool().get().await.unwrap();
    let name: String = client.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
    assert_eq!(name, database.name());
    let rows = client.query("SELECT component, version FROM wagate_migrations", &[]).await.unwrap();
    let versions: Vec<(String, i32)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(versions, vec![("engine".to_string(), 1)]);
    // A later start finds the work done, and another component's row is left alone.
    client.execute("INSERT INTO wagate_migrations VALUES ('store', 3)", &[]).await.unwrap();
    PgEngine::connect(&url, 1).await.unwrap();
    let count: i64 = client.query_one("SELECT count(*) FROM wagate_migrations", &[]).await.unwrap().get(0);
    assert_eq!(count, 2);
    // A database migrated by a newer build is refused with the reason.
    client.execute("UPDATE wagate_migrations SET version = 99 WHERE component = 'engine'", &[]).await.unwrap();
    match PgEngine::connect(&url, 1).await {
        Err(e @ PgEngineError::NewerSchema { found: 99, .. }) => {
            assert!(e.to_string().contains("upgrade wagate"), "{e}")
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
}

#[tokio::test]
async fn errors_name_what_went_wrong() {
    assert!(matches!(PgEngine::connect("postgres://[bad", 1).await, Err(PgEngineError::BadUrl(_))));
    // Nobody listens on port 1.
    let err =
        PgEngine::connect("postgres://postgres@127.0.0.1:1/none?connect_timeout=2", 1).await.err().expect("no server");
    assert!(matches!(err, PgEngineError::Pool(_)), "{err:?}");
}

/// A client of the library over the store: it creates the device's credentials through it
/// on the first build and reads the same ones back on the next (no connection is made).
#[tokio::test]
async fn the_client_library_builds_its_client_over_it() {
    use whatsapp_rust::prelude::Bot;

    let (_database, engine) = engine().await;
    let device = open(&engine, "WA-bot").await;
    let _as_the_library_holds_it: Arc<dyn wacore::store::traits::Backend> = Arc::new(device.clone());
    let build = |device: PgDevice| async move {
        let dial_error = Arc::new(std::sync::Mutex::new(None));
        let transport = crate::engine::transport::Dialer::new(Some("ws://127.0.0.1:1/ws"), None, dial_error);
        let http = crate::engine::media_http::MediaHttp::new(None, crate::engine::media_http::MediaHosts::Any).unwrap();
        Bot::builder().with_backend(device).with_transport_factory(transport).with_http_client(http).build().await
    };
    let first = build(device.clone()).await.expect("a client");
    let created = device.load().await.unwrap().expect("the library created the credentials");
    first.client().persistence_manager().flush().await.unwrap();
    drop(first);
    let second = build(device.clone()).await.expect("a client");
    let loaded = second.client().persistence_manager().get_device_snapshot();
    assert_eq!(loaded.registration_id, created.registration_id, "the same credentials");
    assert_eq!(loaded.identity_key.public_key.public_key_bytes(), created.identity_key.public_key.public_key_bytes());
}
