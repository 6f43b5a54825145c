//! `scripts/start.sh`, `status.sh` and `stop.sh` (the Node service's operator scripts),
//! run from another working directory against a real `wagate` binary.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{free_port, start_sim};

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts").join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_status_stop_work_from_anywhere() {
    let sim = start_sim().await;
    let home = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let run = |name: &str, args: &[&str]| {
        Command::new(script(name))
            .args(args)
            .current_dir(elsewhere.path())
            .env("WAGATE_HOME", home.path())
            .env("WAGATE_BIN", env!("CARGO_BIN_EXE_wagate"))
            .env("WAGATE_LISTEN", &listen)
            .output()
            .expect("the script runs")
    };

    let started = run("start.sh", &["--wa-url", &sim.endpoints.ws_url]);
    let out = String::from_utf8_lossy(&started.stdout);
    assert!(started.status.success(), "{out}{}", String::from_utf8_lossy(&started.stderr));
    assert!(out.contains("wagate started"), "{out}");
    let pid = std::fs::read_to_string(home.path().join("wagate.pid")).unwrap();

    let again = run("start.sh", &["--wa-url", &sim.endpoints.ws_url]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already running"));

    let status = run("status.sh", &[]);
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{out}");
    assert!(out.contains(&format!("running (pid {})", pid.trim())), "{out}");
    assert!(out.contains("\"status\":\"healthy\""), "{out}");
    assert!(home.path().join("whatsapp-service.log").exists());
    assert!(home.path().join("sessions/wagate.db").exists());

    let stopped = run("stop.sh", &[]);
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    assert!(String::from_utf8_lossy(&stopped.stdout).contains("wagate stopped"));
    assert!(!home.path().join("wagate.pid").exists());
    let status = run("status.sh", &[]);
    assert_eq!(status.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&status.stdout).contains("stopped"));
    let log = std::fs::read_to_string(home.path().join("whatsapp-service.log")).unwrap();
    assert!(log.contains("closing WhatsApp connections"), "a clean SIGTERM exit: {log}");
    sim.stop().await;
}

#[test]
fn stop_leaves_a_process_that_is_not_wagate_alone() {
    let home = tempfile::tempdir().unwrap();
    // The PID file outlived its wagate, and the PID now names something else.
    let mut other = Command::new("sleep").arg("30").spawn().expect("sleep runs");
    let other_pid = other.id();
    let pidfile = home.path().join("wagate.pid");
    std::fs::write(&pidfile, format!("{}\n", other.id())).unwrap();
    let stopped = Command::new(script("stop.sh")).env("WAGATE_HOME", home.path()).output().expect("the script runs");
    let out = String::from_utf8_lossy(&stopped.stdout).into_owned() + &String::from_utf8_lossy(&stopped.stderr);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let alive = other.try_wait().unwrap().is_none();
    let removed_by_stop = !pidfile.exists();
    // status.sh does not take that process for wagate either (exit 3: stopped).
    std::fs::write(&pidfile, format!("{other_pid}\n")).unwrap();
    let status = Command::new(script("status.sh")).env("WAGATE_HOME", home.path()).output().expect("the script runs");
    let status_out = String::from_utf8_lossy(&status.stdout).into_owned() + &String::from_utf8_lossy(&status.stderr);
    let _ = other.kill();
    let _ = other.wait();
    assert!(alive, "stop.sh killed an unrelated process: {out}");
    assert!(stopped.status.success(), "{out}");
    assert!(out.contains("not wagate"), "{out}");
    assert!(removed_by_stop, "the stale PID file is removed: {out}");

    assert_eq!(status.status.code(), Some(3), "{status_out}");
    assert!(status_out.contains("not wagate") && status_out.contains("stopped"), "{status_out}");
    assert!(!pidfile.exists(), "status.sh removes the stale PID file: {status_out}");

    // Nor does it act on a PID file that names no single process.
    for junk in ["-1", "0", "", "12 34", "abc"] {
        std::fs::write(&pidfile, junk).unwrap();
        let stopped =
            Command::new(script("stop.sh")).env("WAGATE_HOME", home.path()).output().expect("the script runs");
        let out = String::from_utf8_lossy(&stopped.stdout).into_owned() + &String::from_utf8_lossy(&stopped.stderr);
        assert!(stopped.status.success(), "'{junk}': {out}");
        assert!(!pidfile.exists(), "'{junk}': {out}");
    }
}
