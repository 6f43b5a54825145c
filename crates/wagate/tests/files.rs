//! Files are private (DESIGN.md, Guarantees): the data directory and every directory wagate
//! makes in it are 0700, every file it writes 0600 (the log file and the backup archive
//! too), whatever the umask of whoever starts it; `serve` tightens what an earlier version
//! left open, and `doctor` says how. Session ids read back from the registry never name a
//! file outside the data directory.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{free_port, link, start_gateway, start_sim, Api, GatewayProcess, WAIT};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn text(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Every directory under `dir` (itself included) is 0700 and every file 0600; returns the
/// files seen, relative to `dir`.
fn assert_private_tree(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(next) = todo.pop() {
        assert_eq!(mode(&next), 0o700, "directory {} is {:o}", next.display(), mode(&next));
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                todo.push(path);
            } else {
                assert_eq!(mode(&path), 0o600, "file {} is {:o}", path.display(), mode(&path));
                files.push(path.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    files
}

/// Runs the `wagate` binary; (exit code, stdout, stderr).
async fn wagate(args: &[&str]) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wagate"));
    for var in ["WAGATE_URL", "WAGATE_DATA_DIR", "WAGATE_API_KEY", "WAGATE_WA_URL", "WAGATE_PROXY", "WAGATE_HOME"] {
        command.env_remove(var);
    }
    let output = tokio::time::timeout(WAIT, command.args(args).kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("wagate {args:?} did not finish"))
        .expect("wagate runs");
    (
        output.status.code().expect("exited normally"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_backup_and_restore_write_private_files() {
    let sim = start_sim().await;
    let outer = tempfile::tempdir().unwrap();
    // Both made by wagate: the data directory does not exist yet, nor the log file.
    let data = outer.path().join("data");
    let log = outer.path().join("wagate.log");
    let port = free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_wagate"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", text(&data), "--log-file", text(&log), "--wa-url", &sim.endpoints.ws_url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("wagate serve starts");
    let gateway = GatewayProcess { child, api: Api::new(format!("http://127.0.0.1:{port}")) };
    gateway.ready().await;
    link(&gateway.api, &Api::sim(&sim), "WA-Files", "15553000051").await;

    let files = assert_private_tree(&data);
    let shard = common::engine_shard(&data, "WA-Files");
    let shard_name = format!("engine/{}", shard.file_name().unwrap().to_str().unwrap());
    for expected in ["wagate.db", "wagate.lock", shard_name.as_str()] {
        assert!(files.iter().any(|f| f == expected), "{expected} in {files:?}");
    }
    assert_eq!(mode(&data.join("engine")), 0o700);
    assert_eq!(mode(&data.join("wagate.db")), 0o600);
    assert_eq!(mode(&shard), 0o600);
    assert_eq!(mode(&data.join("wagate.lock")), 0o600);
    assert_eq!(mode(&log), 0o600, "the log file");

    // A backup of the running gateway, by another process with the usual umask.
    let archive = outer.path().join("backup.tar.gz");
    let (code, out, err) = wagate(&["backup", "--data-dir", text(&data), "--out", text(&archive)]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(mode(&archive), 0o600, "the backup archive");
    gateway.kill_9();

    let restored = outer.path().join("restored");
    let (code, out, err) = wagate(&["restore", text(&archive), "--data-dir", text(&restored)]).await;
    assert_eq!(code, 0, "{out}{err}");
    let files = assert_private_tree(&restored);
    assert!(files.iter().any(|f| f == &shard_name), "{files:?}");
    assert!(files.iter().any(|f| f == "wagate.db"), "{files:?}");
    // Nothing beside the target is left open either (staging areas are gone).
    let mut beside: Vec<_> =
        std::fs::read_dir(outer.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    beside.sort();
    assert_eq!(beside, ["backup.tar.gz", "data", "restored", "wagate.log"]);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_warns_about_open_permissions_and_serve_tightens_them() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let gateway = start_gateway(&sim, dir).await;
    link(&Api::gateway(gateway.addr), &Api::sim(&sim), "WA-Open", "15553000052").await;
    gateway.stop().await;
    let engine_db = common::engine_shard(dir, "WA-Open");
    assert_eq!(mode(&dir.join("wagate.db")), 0o600, "even from a gateway started in process (umask 022)");
    assert_eq!(mode(&engine_db), 0o600);
    assert_eq!(mode(&dir.join("engine")), 0o700);

    // As an older wagate (or a careless copy) left them.
    set_mode(dir, 0o755);
    set_mode(&dir.join("engine"), 0o755);
    set_mode(&dir.join("wagate.db"), 0o644);
    set_mode(&engine_db, 0o640);
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let doctor_args = ["doctor", "--data-dir", text(dir), "--url", &nobody, "--wa-url", "ws://127.0.0.1:9/ws/chat"];
    let (_, out, err) = wagate(&doctor_args).await;
    let warn_with = |words: &[&str]| out.lines().any(|l| l.starts_with("WARN") && words.iter().all(|w| l.contains(w)));
    assert!(warn_with(&[text(dir), "other users"]), "{out}{err}");
    assert!(out.contains(&format!("fix: chmod 700 {}\n", text(dir))), "{out}");
    assert!(out.contains(&format!("fix: chmod 700 {}\n", text(&dir.join("engine")))), "{out}");
    assert!(warn_with(&["wagate.db", "other users"]), "{out}");
    assert!(out.contains(&format!("fix: chmod 600 {}\n", text(&dir.join("wagate.db")))), "{out}");
    assert!(out.contains(&format!("fix: chmod 600 {}\n", text(&engine_db))), "{out}");

    // The next start tightens them all.
    let gateway = start_gateway(&sim, dir).await;
    Api::gateway(gateway.addr).wait_state("WA-Open", "connected").await;
    assert_private_tree(dir);
    gateway.stop().await;
    let (_, out, _) = wagate(&doctor_args).await;
    assert!(!out.contains("chmod"), "nothing left to fix: {out}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_session_id_that_names_another_path_is_skipped() {
    let sim = start_sim().await;
    let outer = tempfile::tempdir().unwrap();
    let data = outer.path().join("a").join("data");
    std::fs::create_dir_all(&data).unwrap();
    drop(wagate::store::Store::open(&data).expect("the registry is created"));
    // Rows as a tampered or foreign wagate.db could hold them; the first would put its
    // engine database at data/engine/../../escape.db, outside the data directory.
    let db = rusqlite::Connection::open(data.join("wagate.db")).unwrap();
    let me = r#"{"jid":"15550000009:1@s.whatsapp.net","phone":"15550000009"}"#;
    let absolute = outer.path().join("absolute");
    for (id, me) in [("../../escape", Some(me)), (text(&absolute), Some(me)), ("WA-Good", None)] {
        db.execute(
            "INSERT INTO sessions (id, created_at, me, link_confirmed) VALUES (?1, '2026-01-01T00:00:00.000Z', ?2, 1)",
            rusqlite::params![id, me],
        )
        .unwrap();
    }
    drop(db);

    let gateway = start_gateway(&sim, &data).await;
    let api = Api::gateway(gateway.addr);
    let (status, list) = api.get("/v1/sessions").await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list.as_array().unwrap().iter().filter_map(|v| v["id"].as_str()).collect();
    assert_eq!(ids, ["WA-Good"], "{list}");
    let (status, _) = api.get("/v1/sessions/..%2F..%2Fescape").await;
    assert_ne!(status, 200);
    // A moment for anything that would have started.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway.stop().await;

    let mut outside: Vec<PathBuf> = Vec::new();
    let mut todo = vec![outer.path().to_path_buf()];
    while let Some(next) = todo.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.starts_with(&data) {
                continue;
            }
            if path.is_dir() {
                todo.push(path.clone());
            }
            outside.push(path);
        }
    }
    outside.sort();
    assert_eq!(outside, [outer.path().join("a")], "nothing created outside the data directory");
    sim.stop().await;
}
