//! The control API's answers to bad input, expired refs and the companion limit, and the
//! simulator's robustness against garbage on the wire.

mod common;

use std::time::Duration;

use common::{link_client, qr_of, start_sim, start_sim_with, ClientEvent, Control, TestClient};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use wagate_sim::{SimConfig, MAX_COMPANIONS};

const SOME_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let sim = start_sim().await;
    let control = Control::new(&sim);
    let well_formed_qr = format!("2@unknown,{SOME_KEY},{SOME_KEY},{SOME_KEY},9");
    let cases = [
        ("/control/scan", json!({ "qr": "not a qr", "phone": "15551234567" }), 400),
        ("/control/scan", json!({ "qr": well_formed_qr, "phone": "not-a-phone" }), 400),
        ("/control/scan", json!({ "qr": well_formed_qr, "phone": "15551234567" }), 404),
        ("/control/scan", json!({ "phone": "15551234567" }), 400),
        ("/control/pair-code", json!({ "phone": "15551234567", "code": "short" }), 400),
        ("/control/pair-code", json!({ "phone": "15551234567", "code": "ABCD-EFGH" }), 404),
        ("/control/unlink", json!({ "jid": "garbage" }), 400),
        ("/control/unlink", json!({ "jid": "15550000000:1@s.whatsapp.net" }), 404),
        ("/control/fault", json!({ "jid": "15550000000:1@s.whatsapp.net", "kind": "drop" }), 404),
    ];
    for (path, body, expected) in cases {
        let (status, answer) = control.post(path, body.clone()).await;
        assert_eq!(status, expected, "{path} {body} -> {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{path} {body}: no error text in {answer}");
    }
    let (status, answer) = control.post_raw("/control/scan", "{not json").await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("JSON"), "{answer}");
    sim.stop().await;
}

#[tokio::test]
async fn garbage_on_the_wire_closes_only_that_client() {
    let sim = start_sim().await;
    let control = Control::new(&sim);
    let addr = sim.endpoints.control_url.trim_start_matches("http://").to_string();

    // Not HTTP at all.
    let mut raw = tokio::net::TcpStream::connect(&addr).await.unwrap();
    raw.write_all(b"\x00\x01\x02garbage\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(common::WAIT, raw.read_to_end(&mut sink)).await.expect("server closes the socket");

    // A WebSocket without the WhatsApp intro.
    let (mut ws, _) = tokio_tungstenite::connect_async(&sim.endpoints.ws_url).await.unwrap();
    ws.send(Message::Binary(b"GET / HTTP/1.1 and more".to_vec().into())).await.unwrap();
    expect_closed(&mut ws).await;

    // The intro, then a frame that is not a handshake message.
    let (mut ws, _) = tokio_tungstenite::connect_async(&sim.endpoints.ws_url).await.unwrap();
    let mut bytes = b"WA\x06\x03".to_vec();
    bytes.extend_from_slice(&[0, 0, 5, 0xff, 0xfe, 0xfd, 0xfc, 0xfb]);
    ws.send(Message::Binary(bytes.into())).await.unwrap();
    expect_closed(&mut ws).await;

    control.wait_stats("a handshake failure", |s| s["totals"]["handshake_failures"] == 1).await;
    // The simulator still serves a real client.
    let (client, _jid) = link_client(&sim, &control, "15551112222").await;
    client.stop().await;
    sim.stop().await;
}

async fn expect_closed<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let closed = tokio::time::timeout(common::WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the simulator kept a garbage connection open");
}

#[tokio::test]
async fn a_scan_of_an_expired_ref_is_410() {
    let sim = start_sim_with(SimConfig {
        first_ref_ttl: Duration::ZERO,
        next_ref_ttl: Duration::ZERO,
        ..SimConfig::default()
    })
    .await;
    let control = Control::new(&sim);
    let mut client = TestClient::start(&sim.endpoints.ws_url, None).await;
    let qr = client.wait_for("a QR code", qr_of).await;
    let (status, answer) = control.post("/control/scan", json!({ "qr": qr, "phone": "15551234567" })).await;
    assert_eq!(status, 410, "{answer}");
    client.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifth_companion_is_refused_until_one_is_unlinked() {
    let sim = start_sim().await;
    let control = Control::new(&sim);
    let phone = "15559990000";
    let mut linked = Vec::new();
    for _ in 0..MAX_COMPANIONS {
        linked.push(link_client(&sim, &control, phone).await);
    }
    let mut fifth = TestClient::start(&sim.endpoints.ws_url, None).await;
    let qr = fifth.wait_for("a QR code", qr_of).await;
    let (status, answer) = control.post("/control/scan", json!({ "qr": qr, "phone": phone })).await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("4 linked devices"), "{answer}");

    // The phone unlinks the first companion: it is told so and forgotten.
    let (mut first, first_jid) = linked.remove(0);
    let (status, answer) = control.post("/control/unlink", json!({ "jid": first_jid })).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["was_connected"], true);
    first.wait_for("LoggedOut", |e| matches!(e, ClientEvent::LoggedOut(_)).then_some(())).await;
    let devices = control.get("/control/devices").await;
    assert_eq!(devices.as_array().unwrap().len(), MAX_COMPANIONS - 1, "{devices}");

    // Now the same QR links.
    let (status, answer) = control.post("/control/scan", json!({ "qr": qr, "phone": phone })).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["jid"], format!("{phone}:5@s.whatsapp.net"));
    for (client, _) in linked {
        client.stop().await;
    }
    first.stop().await;
    fifth.stop().await;
    sim.stop().await;
}
