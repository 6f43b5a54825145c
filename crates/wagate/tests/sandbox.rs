//! `wagate sandbox`, run as the binary a newcomer runs: over HTTP only, a simulated phone
//! links the session it prepared, the session passes the 515 restart and connects, and the
//! simulated contact echoes a text and answers "file" with a PDF that downloads. Also: a
//! gateway that is not a sandbox routes none of it, and a sandbox never empties a
//! directory it did not make.

mod common;

use common::sandbox::{log_of, SandboxProcess};
use common::{start_gateway, start_sim, Api, WAIT};
use serde_json::{json, Value};

const CONTACT: &str = "15550100100";

/// A session's Server-Sent Events: `state` and `message`.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(api: &Api, session: &str) -> Self {
        let response = reqwest::get(format!("{}/v1/sessions/{session}/events", api.base)).await.unwrap();
        assert_eq!(response.status(), 200);
        Self { response, buffer: String::new() }
    }

    /// The next event (name, data), skipping comments.
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let name = block.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("message").to_string();
                let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
                return (name, serde_json::from_str(data).unwrap());
            }
            let chunk = self.response.chunk().await.expect("the stream reads").expect("the stream stays open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Events until one that `want` accepts (within `WAIT`); returns it and those before.
    async fn until(&mut self, what: &str, want: impl Fn(&str, &Value) -> bool) -> (Value, Vec<(String, Value)>) {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let (name, data) = self.next().await;
                if want(&name, &data) {
                    return data;
                }
                seen.push((name, data));
            }
        })
        .await;
        match found {
            Ok(data) => (data, seen),
            Err(_) => panic!("timed out waiting for {what}; saw {seen:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_phone_links_and_the_contact_echoes_and_sends_a_file() {
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("sandbox-data");
    let sandbox = SandboxProcess::start(&data_dir).await;
    let api = &sandbox.api;
    assert!(sandbox.banner.contains("/console#session=demo"), "{}", sandbox.banner);
    assert!(sandbox.banner.contains(&format!("+{CONTACT}")), "{}", sandbox.banner);

    let (status, about) = api.get("/v1/sandbox").await;
    assert_eq!(status, 200, "{about}");
    assert_eq!(about["contact"]["phone"], CONTACT);
    assert_eq!(about["contact"]["state"], "connected", "the contact is linked before the gateway answers");
    assert_eq!(about["contact"]["file_keyword"], "file");
    // The contact is not one of the gateway's sessions.
    let (_, sessions) = api.get("/v1/sessions").await;
    let ids: Vec<&str> = sessions.as_array().unwrap().iter().filter_map(|s| s["id"].as_str()).collect();
    assert_eq!(ids, ["demo"], "{sessions}");

    let mut events = Events::open(api, "demo").await;
    let (waiting, _) = events.until("a QR code", |name, v| name == "state" && v["state"] == "awaiting_scan").await;
    assert!(waiting["qr"].is_string());
    let (status, scanned) = api.post("/v1/sandbox/scan", json!({ "session": "demo" })).await;
    assert_eq!(status, 200, "{scanned}{}", sandbox.log());
    let phone = scanned["phone"].as_str().unwrap().to_string();
    assert_ne!(phone, CONTACT);
    let (connected, before) = events.until("connected", |name, v| name == "state" && v["state"] == "connected").await;
    assert_eq!(connected["me"]["phone"], phone.as_str());
    let states: Vec<String> = before
        .iter()
        .map(|(_, v)| format!("{}/{}", v["state"].as_str().unwrap_or("?"), v["reason"].as_str().unwrap_or("-")))
        .collect();
    assert!(states.iter().any(|s| s == "connecting/restart_required"), "the 515 restart shows: {states:?}");
    // Once linked, nothing is left to scan.
    let (status, again) = api.post("/v1/sandbox/scan", json!({ "session": "demo" })).await;
    assert_eq!(status, 409, "{again}");

    // A text comes back as a reply to it.
    let (status, sent) =
        api.post("/v1/sessions/demo/messages", json!({ "to": format!("+{CONTACT}"), "text": "hello" })).await;
    assert_eq!(status, 200, "{sent}");
    let sent_id = sent["id"].as_str().unwrap().to_string();
    let (echo, _) = events.until("the echo", |name, v| name == "message" && v["type"] == "text").await;
    assert_eq!(echo["text"], "hello", "{echo}");
    assert_eq!(echo["sender_phone"], CONTACT, "{echo}");
    assert_eq!(echo["quoted_id"], sent_id.as_str(), "the echo answers the message: {echo}");

    // "file" brings a PDF, downloadable through the media route.
    let (status, sent) =
        api.post("/v1/sessions/demo/messages", json!({ "to": format!("+{CONTACT}"), "text": "file" })).await;
    assert_eq!(status, 200, "{sent}");
    let (document, _) = events.until("the document", |name, v| name == "message" && v["type"] != "text").await;
    assert_eq!(document["type"], "document", "{document}");
    assert_eq!(document["media"]["mimetype"], "application/pdf", "{document}");
    assert_eq!(document["media"]["filename"], "wagate-sandbox.pdf", "{document}");
    let media_url = document["media"]["url"].as_str().unwrap();
    let path = format!("/v1/sessions/demo/media/{}", document["id"].as_str().unwrap());
    assert_eq!(media_url, format!("{}{path}", api.base), "events link to the media route");
    let file = reqwest::get(media_url).await.unwrap();
    assert_eq!(file.status(), 200);
    assert_eq!(file.headers()["content-type"], "application/pdf");
    let bytes = file.bytes().await.unwrap();
    assert!(bytes.starts_with(b"%PDF-") && bytes.ends_with(b"%%EOF\n"), "{:?}", String::from_utf8_lossy(&bytes));
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains(&format!("when +{phone} wrote")), "the PDF was made for this message: {text}");

    // The console of a sandbox has the simulated phone's script.
    let page = reqwest::get(format!("{}/console", api.base)).await.unwrap().text().await.unwrap();
    assert!(page.contains(r#"<script src="console/sandbox.js" defer></script>"#), "{page}");
    let script = reqwest::get(format!("{}/console/sandbox.js", api.base)).await.unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.text().await.unwrap().contains("Scan with a simulated phone"));

    // SIGTERM: a clean stop, and the data directory is free again.
    let pid = sandbox.child.id().expect("still running") as i32;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut child = sandbox.child;
    let exit = tokio::time::timeout(WAIT, child.wait()).await.expect("it stops").unwrap();
    assert!(exit.success(), "{exit}{}", log_of(&data_dir));
    let log = std::fs::read_to_string(data_dir.join("sandbox.log")).unwrap();
    assert!(log.contains("WhatsApp Connected: demo"), "operators' log line:{}", log_of(&data_dir));
    assert_eq!(wagate::store::lock::inspect(&data_dir).unwrap(), wagate::store::lock::LockState::Free);
}

#[tokio::test]
async fn a_directory_it_did_not_make_is_refused_untouched() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("wagate.db"), b"the sessions of a real gateway").unwrap();
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_wagate"))
            .args(["sandbox", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(root.path())
            .output(),
    )
    .await
    .expect("it exits at once")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("was not made by `wagate sandbox`"), "{stderr}");
    assert_eq!(std::fs::read(root.path().join("wagate.db")).unwrap(), b"the sessions of a real gateway");
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1, "nothing was added");
}

/// `wagate serve` (here: the same gateway started in-process, as serve starts it) has no
/// sandbox routes and no sandbox script, even in a sandbox build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_is_not_a_sandbox_routes_none_of_it() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&sim, data.path()).await;
    let api = Api::gateway(gateway.addr);
    api.post("/v1/sessions", json!({ "id": "plain" })).await;
    assert_eq!(api.get("/v1/sandbox").await.0, 404);
    assert_eq!(api.post("/v1/sandbox/scan", json!({ "session": "plain" })).await.0, 404);
    assert_eq!(reqwest::get(format!("{}/console/sandbox.js", api.base)).await.unwrap().status(), 404);
    let page = reqwest::get(format!("{}/console", api.base)).await.unwrap().text().await.unwrap();
    assert!(!page.contains("sandbox"), "{page}");
    gateway.stop().await;
    sim.stop().await;
}
