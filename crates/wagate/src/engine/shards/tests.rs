use bytes::Bytes;
use wacore::store::traits::{DeviceStore, SignalStore};

use super::*;

/// `count` session ids that share one shard.
fn ids_in_one_shard(count: usize) -> Vec<String> {
    let ids = (0..).map(|n| format!("WA-{n}")).filter(|id| shard_index(id) == 0).take(count);
    ids.collect()
}

/// Gives the store's device a phone number, as a pair-success does; returns what was saved.
async fn link(device: &impl DeviceStore, phone: &str) -> wacore::store::Device {
    if !device.exists().await.unwrap() {
        device.create().await.unwrap();
    }
    let mut saved = device.load().await.unwrap().expect("a device row");
    saved.pn = Some(format!("{phone}:1@s.whatsapp.net").parse().unwrap());
    saved.push_name = format!("Phone {phone}");
    device.save(&saved).await.unwrap();
    saved
}

fn public_identity(device: &wacore::store::Device) -> Vec<u8> {
    device.identity_key.public_key.public_key_bytes().to_vec()
}

/// The Signal state a linked device has: an identity of a contact, a session, a prekey.
async fn add_signal_state(store: &impl SignalStore, seed: u8) {
    store.put_identity("15559990000.0", [seed; 32]).await.unwrap();
    store.put_session("15559990000.0", &[seed, 1, 2, 3]).await.unwrap();
    store.store_prekey(7, &[seed, 9, 9], true).await.unwrap();
    store.put_sender_key("group@g.us::15559990000.0", &[seed, 4]).await.unwrap();
}

async fn assert_signal_state(store: &impl SignalStore, seed: u8) {
    assert_eq!(store.load_identity("15559990000.0").await.unwrap(), Some([seed; 32]));
    assert_eq!(store.get_session("15559990000.0").await.unwrap().as_deref(), Some(&[seed, 1, 2, 3][..]));
    assert_eq!(store.load_prekey(7).await.unwrap().as_deref(), Some(&[seed, 9, 9][..]));
    assert_eq!(store.get_sender_key("group@g.us::15559990000.0").await.unwrap(), Some(vec![seed, 4]));
}

/// A session's file of the older layout, written by the library as the older wagate did.
async fn write_legacy(dir: &Path, id: &str, phone: &str, seed: u8) -> wacore::store::Device {
    crate::store::private::create_dir(dir).unwrap();
    let path = ShardStore::new(dir, id).legacy_path();
    let legacy = SqliteStore::new(path.to_str().unwrap()).await.unwrap();
    let saved = link(&legacy, phone).await;
    add_signal_state(&legacy, seed).await;
    saved
}

fn legacy_files(dir: &Path, id: &str) -> Vec<String> {
    let prefix = format!("{id}.db");
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    found.sort();
    found
}

#[test]
fn shard_names_and_indexes_are_fixed() {
    // FNV-1a: the same in every build, so a session finds its shard after an upgrade.
    assert_eq!(shard_index(""), 0x811c_9dc5 % SHARDS);
    assert_eq!(shard_index("WA-Acme"), shard_index("WA-Acme"));
    let spread: std::collections::HashSet<u32> = (0..200).map(|n| shard_index(&format!("WA-{n}"))).collect();
    assert_eq!(spread.len(), SHARDS as usize, "ids spread over every shard");
    for good in (0..SHARDS).map(shard_file_name) {
        assert!(is_shard_file_name(&good), "{good}");
    }
    for bad in ["shard-8.sqlite", "shard-01.sqlite", "shard-.sqlite", "shard-1.db", "shard-+1.sqlite", "x.sqlite"] {
        assert!(!is_shard_file_name(bad), "{bad}");
    }
    assert_eq!(uri_path("/a b/c?d#e/f.sqlite"), "/a%20b/c%3Fd%23e/f.sqlite");
}

#[tokio::test]
async fn a_file_of_the_older_layout_moves_into_the_shard() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("engine");
    let before = write_legacy(&dir, "WA-Old", "15551230001", 3).await;
    assert_eq!(legacy_files(&dir, "WA-Old").first().map(String::as_str), Some("WA-Old.db"));

    let store = ShardStore::new(&dir, "WA-Old");
    let device = open_device(&store, true).await.unwrap().expect("the moved device");
    let after = device.load().await.unwrap().expect("its credentials");
    assert_eq!(public_identity(&after), public_identity(&before), "the same identity");
    assert_eq!(after.noise_key.public_key.public_key_bytes(), before.noise_key.public_key.public_key_bytes());
    assert_eq!(after.registration_id, before.registration_id);
    assert_eq!(after.pn, before.pn);
    assert_signal_state(&device, 3).await;
    assert_eq!(legacy_files(&dir, "WA-Old"), Vec::<String>::new(), "the old file and its -wal/-shm are gone");

    let stored = stored_devices(&dir).unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!((stored[0].session.as_str(), stored[0].linked), ("WA-Old", true));
    assert_eq!(stored[0].shard, shard_file_name(shard_index("WA-Old")));
    drop(device);
    let me = load_device(&store).await.unwrap().expect("still linked on the next open");
    assert_eq!(public_identity(&me), public_identity(&before));
}

#[tokio::test]
async fn an_old_file_still_there_after_a_committed_copy_is_moved_again() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("engine");
    let before = write_legacy(&dir, "WA-Twice", "15551230002", 5).await;
    let legacy = ShardStore::new(&dir, "WA-Twice").legacy_path();
    // Checkpointed into one file, kept aside: what a crash between the commit and the
    // deletion leaves on disk.
    drop(rusqlite::Connection::open(&legacy).unwrap());
    let kept = std::fs::read(&legacy).unwrap();

    let store = ShardStore::new(&dir, "WA-Twice");
    let first = open_device(&store, true).await.unwrap().unwrap().device_id();
    std::fs::write(&legacy, kept).unwrap();

    let device = open_device(&store, true).await.unwrap().unwrap();
    assert_ne!(device.device_id(), first, "copied again under a new id");
    assert_eq!(public_identity(&device.load().await.unwrap().unwrap()), public_identity(&before));
    assert_signal_state(&device, 5).await;
    assert!(!legacy.exists());
    let stored = stored_devices(&dir).unwrap();
    assert_eq!(stored.iter().map(|d| d.device).collect::<Vec<_>>(), [i64::from(device.device_id())]);
    // Nothing of the first copy is left.
    let conn = rusqlite::Connection::open(store.shard_path()).unwrap();
    let left: i64 = conn.query_row("SELECT count(*) FROM device WHERE id = ?1", [first], |row| row.get(0)).unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn wipe_deletes_one_device_and_leaves_its_neighbours() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("engine");
    let ids = ids_in_one_shard(2);
    let (gone, kept) = (ShardStore::new(&dir, &ids[0]), ShardStore::new(&dir, &ids[1]));
    assert_eq!(gone.shard_path(), kept.shard_path());
    let a = open_device(&gone, true).await.unwrap().unwrap();
    let b = open_device(&kept, true).await.unwrap().unwrap();
    link(&a, "15551230003").await;
    let b_saved = link(&b, "15551230004").await;
    add_signal_state(&a, 1).await;
    add_signal_state(&b, 2).await;
    let gone_id = a.device_id();
    drop((a, b));

    wipe(&gone).await.unwrap();
    assert!(load_device(&gone).await.unwrap().is_none(), "the wiped session has no keys");
    assert!(!has_keys(&dir, &ids[0]).unwrap());
    let b = open_device(&kept, false).await.unwrap().expect("the neighbour is still there");
    assert_eq!(public_identity(&b.load().await.unwrap().unwrap()), public_identity(&b_saved));
    assert_signal_state(&b, 2).await;
    // Not a row of the wiped device is left in any table.
    assert_eq!(rows_of(&gone.shard_path(), gone_id), 0);
    // A new device for the same id starts empty, under a new device id.
    let again = open_device(&gone, true).await.unwrap().unwrap();
    assert_ne!(again.device_id(), gone_id);
    assert_eq!(again.load_identity("15559990000.0").await.unwrap(), None);
}

/// Rows of device `id` in every table of the shard at `path`.
fn rows_of(path: &Path, id: i32) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    let tables = device_tables(&conn, "main").unwrap();
    tables
        .iter()
        .map(|table| {
            let sql = format!("SELECT count(*) FROM {} WHERE {} = ?1", quoted(&table.name), table.key);
            conn.query_row(&sql, [id], |row| row.get::<_, i64>(0)).unwrap()
        })
        .sum()
}

#[tokio::test]
async fn rows_written_after_a_wipe_are_swept_when_the_shard_opens_again() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("engine");
    let ids = ids_in_one_shard(2);
    let (gone, kept) = (ShardStore::new(&dir, &ids[0]), ShardStore::new(&dir, &ids[1]));
    let late = open_device(&gone, true).await.unwrap().unwrap();
    let neighbour = open_device(&kept, true).await.unwrap().unwrap();
    link(&late, "15551230010").await;
    link(&neighbour, "15551230011").await;
    add_signal_state(&neighbour, 4).await;
    let gone_id = late.device_id();

    // A logged-out client still finishing its writes after the wipe.
    wipe(&gone).await.unwrap();
    add_signal_state(&late, 3).await;
    assert!(rows_of(&gone.shard_path(), gone_id) > 0, "the late writes landed (else this test proves nothing)");
    drop((late, neighbour));

    // The next opening of the shard (the next start) removes them, and only them.
    let neighbour = open_device(&kept, false).await.unwrap().expect("the neighbour is still there");
    assert_eq!(rows_of(&gone.shard_path(), gone_id), 0, "rows of the wiped device are gone");
    assert_signal_state(&neighbour, 4).await;
    assert!(neighbour.load().await.unwrap().is_some());
}

#[tokio::test]
async fn an_unreadable_device_fails_its_session_only() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("engine");
    let ids = ids_in_one_shard(2);
    let (broken, fine) = (ShardStore::new(&dir, &ids[0]), ShardStore::new(&dir, &ids[1]));
    let a = open_device(&broken, true).await.unwrap().unwrap();
    let b = open_device(&fine, true).await.unwrap().unwrap();
    link(&a, "15551230005").await;
    link(&b, "15551230006").await;
    let broken_id = a.device_id();
    drop((a, b));
    let conn = rusqlite::Connection::open(broken.shard_path()).unwrap();
    conn.execute("UPDATE device SET noise_key = x'00', adv_secret_key = x'01' WHERE id = ?1", [broken_id]).unwrap();
    drop(conn);

    let Err(error) = load_device(&broken).await else { panic!("its keys cannot be decoded") };
    assert!(matches!(error, ShardError::Unreadable { ref session, .. } if session == &ids[0]), "{error}");
    assert!(error.to_string().contains("other sessions are not affected"), "{error}");
    assert!(load_device(&fine).await.unwrap().is_some(), "the other session still loads");
    // It can be wiped and linked again.
    wipe(&broken).await.unwrap();
    assert!(load_device(&broken).await.unwrap().is_none());
}

/// The descriptors open on `dir`'s files, from this process's table.
fn descriptors_on(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

#[tokio::test]
async fn devices_of_a_shard_share_its_descriptors() {
    let data = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(data.path()).unwrap().join("engine");
    let mut open = Vec::new();
    for id in ids_in_one_shard(20) {
        let device = open_device(&ShardStore::new(&dir, &id), true).await.unwrap().unwrap();
        link(&device, "15551230007").await;
        open.push(device);
    }
    let held = descriptors_on(&dir);
    // The database, its -wal and -shm, whatever the number of devices.
    assert!(held <= 3, "{held} descriptors for 20 devices in one shard");
    for device in &open {
        assert!(device.load().await.unwrap().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cut_short_keeps_the_turn_until_its_statements_end() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("engine");
    let ids = ids_in_one_shard(2);
    let a = std::sync::Arc::new(open_device(&ShardStore::new(&dir, &ids[0]), true).await.unwrap().unwrap());
    let b = open_device(&ShardStore::new(&dir, &ids[1]), true).await.unwrap().unwrap();
    link(&*a, "15551230008").await;
    link(&b, "15551230009").await;
    let keys: Vec<(u32, Bytes)> = (0..20_000).map(|id| (id, Bytes::from(vec![7u8; 64]))).collect();
    for round in 0..10u32 {
        // A write of a, aborted while its statements run (as the library aborts a dropped
        // client's tasks), then writes of b at once: they wait instead of failing.
        let (a, keys) = (a.clone(), keys.clone());
        let cut = tokio::spawn(async move { a.store_prekeys_batch(&keys, false).await });
        tokio::time::sleep(std::time::Duration::from_millis(u64::from(round % 4))).await;
        cut.abort();
        // Reads first: the library does not retry those (its writes retry a lock error).
        b.load_prekey(round).await.unwrap();
        b.get_max_prekey_id().await.unwrap();
        b.put_session(&format!("15559990000.{round}"), &[round as u8]).await.unwrap();
        b.store_prekey(round, &[1, 2, 3], false).await.unwrap();
    }
    assert!(a.load().await.unwrap().is_some());
}

/// The library clears its "credentials changed" flag before it saves them, and drops the
/// save when the client is torn down (the 515 right after a pairing). A save still waiting
/// for the shard's turn then (another session's history being written) was lost, and the
/// next client, finding no credentials, showed a QR code again. A save that has started
/// waiting must land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentials_save_dropped_while_it_waits_for_the_turn_still_lands() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("engine");
    let ids = ids_in_one_shard(2);
    let (busy, paired) = (ShardStore::new(&dir, &ids[0]), ShardStore::new(&dir, &ids[1]));
    let other = open_device(&busy, true).await.unwrap().unwrap();
    let device = std::sync::Arc::new(open_device(&paired, true).await.unwrap().unwrap());
    device.create().await.unwrap();
    let mut credentials = device.load().await.unwrap().expect("a device row");
    credentials.pn = Some("15551230012:1@s.whatsapp.net".parse().unwrap());

    // Another session holds the shard; the save waits for it, and is dropped meanwhile.
    let held = other.shard.turn("a long write of another session").await;
    let (waiting_tx, waiting) = tokio::sync::oneshot::channel();
    let save = {
        let device = device.clone();
        tokio::spawn(async move {
            let _ = waiting_tx.send(());
            device.save(&credentials).await
        })
    };
    waiting.await.unwrap();
    save.abort();
    assert!(save.await.unwrap_err().is_cancelled());
    drop(held);
    drop((other, device));

    // The next client of the session finds the credentials.
    let reopened = open_device(&paired, false).await.unwrap().expect("the session's device");
    let loaded = reopened.load().await.unwrap().expect("its credentials");
    assert_eq!(loaded.pn.map(|j| j.to_string()).as_deref(), Some("15551230012:1@s.whatsapp.net"));
}
