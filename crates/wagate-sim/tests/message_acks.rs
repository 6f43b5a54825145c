//! Like WhatsApp's servers, the simulator keeps a relayed message for a device until the
//! device acknowledges it: a connection that ends first gets it again, marked `offline`, at
//! the next login, and an acknowledged message never comes twice. Seen from real
//! whatsapp-rust clients, which confirm a message with a delivery receipt.

mod common;

use common::{link_client, start_sim, Control, Stanza, TestClient};
use serde_json::{json, Value};
use wacore_binary::Jid;

const PHONE_A: &str = "15556100001";
const PHONE_B: &str = "15556100002";

/// Links A and B and waits until both are past their first login's offline flush.
async fn linked_pair(sim: &wagate_sim::Simulator, control: &Control) -> (TestClient, TestClient, String) {
    let (mut a, _) = link_client(sim, control, PHONE_A).await;
    let (mut b, b_jid) = link_client(sim, control, PHONE_B).await;
    a.wait_connected().await;
    // The first login's offline flush comes before `Connected`.
    b.stanzas_until_offline_marker().await;
    b.wait_connected().await;
    (a, b, b_jid)
}

async fn send_text(from: &TestClient, to_phone: &str, text: &str) -> String {
    let sent = from.handle.client().send_text(Jid::pn(to_phone), text).await.expect("the text is sent");
    sent.message_id
}

fn counts(stats: &Value, jid: &str) -> (u64, u64, u64) {
    let device = &stats["devices"][jid];
    let count = |field: &str| device[field].as_u64().unwrap_or_else(|| panic!("no {field} in {stats}"));
    (count("delivered"), count("acked"), count("redelivered"))
}

fn copies<'a>(stanzas: &'a [Stanza], id: &str) -> Vec<&'a Stanza> {
    stanzas.iter().filter(|s| s.is_message(id)).collect()
}

async fn drop_connection(control: &Control, jid: &str) {
    let (status, answer) = control.post("/control/fault", json!({ "jid": jid, "kind": "drop" })).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_dropped_before_its_ack_comes_again_at_the_next_login() {
    let sim = start_sim().await;
    let control = Control::new(&sim);
    let (a, mut b, b_jid) = linked_pair(&sim, &control).await;

    let (status, answer) =
        control.post("/control/fault", json!({ "jid": b_jid, "kind": "drop_after_next_message" })).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["kind"], "drop_after_next_message");
    let id = send_text(&a, PHONE_B, "hello, once more").await;

    // The simulator wrote the message, then dropped B before its receipt could come.
    control
        .wait_stats("the message to be put back", |s| {
            s["devices"][&b_jid]["redelivered"] == 1 && s["devices"][&b_jid]["delivered"] == 1
        })
        .await;
    // B reconnects by itself and gets the same message from the offline queue.
    let flushed = b.stanzas_until_offline_marker().await;
    let again: Vec<_> = copies(&flushed, &id).into_iter().filter(|s| s.attr("offline") == Some("1")).collect();
    assert_eq!(again.len(), 1, "one offline copy of {id} in {flushed:?}");
    let stats = control.wait_stats("B's ack", |s| s["devices"][&b_jid]["acked"].as_u64().unwrap_or(0) >= 1).await;
    assert_eq!(counts(&stats, &b_jid), (2, 1, 1), "delivered, acked, redelivered: {stats}");
    assert_eq!(stats["totals"]["redelivered"], 1, "{stats}");

    // Acknowledged now: the next login does not bring it again.
    drop_connection(&control, &b_jid).await;
    let flushed = b.stanzas_until_offline_marker().await;
    assert!(copies(&flushed, &id).is_empty(), "{id} came a third time: {flushed:?}");
    let stats = control.get("/control/stats").await;
    assert_eq!(counts(&stats, &b_jid), (2, 1, 1), "{stats}");
    a.stop().await;
    b.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_message_is_not_delivered_again() {
    let sim = start_sim().await;
    let control = Control::new(&sim);
    let (a, mut b, b_jid) = linked_pair(&sim, &control).await;

    let id = send_text(&a, PHONE_B, "hello").await;
    control.wait_stats("B's ack", |s| s["devices"][&b_jid]["acked"] == 1).await;
    drop_connection(&control, &b_jid).await;
    // Everything since the first login: the live delivery, and the second login's queue.
    let seen = b.stanzas_until_offline_marker().await;
    let received = copies(&seen, &id);
    assert_eq!(received.len(), 1, "{id} once: {seen:?}");
    assert_eq!(received[0].attr("offline"), None, "the live delivery");
    let stats = control.get("/control/stats").await;
    assert_eq!(counts(&stats, &b_jid), (1, 1, 0), "delivered, acked, redelivered: {stats}");
    assert_eq!(stats["devices"][&b_jid]["logins"], 2, "{stats}");
    a.stop().await;
    b.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_after_next_message_needs_a_connection() {
    let sim = start_sim().await;
    let control = Control::new(&sim);
    let (client, jid) = link_client(&sim, &control, PHONE_A).await;
    let _dir = client.stop().await;
    control.wait_disconnected(&jid).await;
    let (status, answer) =
        control.post("/control/fault", json!({ "jid": jid, "kind": "drop_after_next_message" })).await;
    assert_eq!(status, 409, "{answer}");
    sim.stop().await;
}
