//! Groups through the simulator: a group made by the simulated phone, its metadata through
//! the API, and group messages (sender keys) between three wagate sessions. The simulator
//! never decrypts, so a text that arrives proves the sender-key distribution worked.

mod common;

use common::receiver::Receiver;
use common::{link, start_gateway, start_sim, Api};
use serde_json::{json, Value};

const PHONES: [&str; 3] = ["15558000001", "15558000002", "15558000003"];

fn group_upserts(receiver: &Receiver, text: &str) -> Vec<Value> {
    receiver
        .received()
        .into_iter()
        .filter(|r| r.json["event"] == "messages.upsert" && r.json["data"]["text"] == text)
        .map(|r| r.json["data"].clone())
        .collect()
}

async fn wait_text(receiver: &Receiver, who: &str, text: &str) -> Value {
    receiver
        .wait_for(&format!("{who} to receive '{text}'"), common::WAIT, |r| {
            r.iter().any(|x| x.json["event"] == "messages.upsert" && x.json["data"]["text"] == text)
        })
        .await;
    let copies = group_upserts(receiver, text);
    assert_eq!(copies.len(), 1, "{who} got '{text}' once: {copies:?}");
    copies.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_message_reaches_every_other_member_with_the_group_subject() {
    let sim = start_sim().await;
    let control = Api::sim(&sim);
    // A and B share a gateway; C has its own, to be stopped for the offline part.
    let (data, data_c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let gw = start_gateway(&sim, data.path()).await;
    let gw_c = start_gateway(&sim, data_c.path()).await;
    let (api, api_c) = (Api::gateway(gw.addr), Api::gateway(gw_c.addr));
    let hooks = [Receiver::start().await, Receiver::start().await, Receiver::start().await];
    for (((id, phone), hook), api) in ["A", "B", "C"].iter().zip(PHONES).zip(&hooks).zip([&api, &api, &api_c]) {
        api.post("/v1/sessions", json!({ "id": id, "webhook": { "url": hook.url } })).await;
        link(api, &control, id, phone).await;
    }

    // Unknown accounts and bad input are refused by the simulated phone.
    let (status, body) = control
        .post("/control/groups", json!({ "subject": "x", "owner": PHONES[0], "participants": ["15550000000"] }))
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("15550000000"), "{body}");
    let (status, body) = control.post("/control/groups", json!({ "subject": "", "owner": PHONES[0] })).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = control.post("/control/groups", json!({ "subject": "x", "owner": "nope" })).await;
    assert_eq!(status, 400, "{body}");

    let (status, created) = control
        .post(
            "/control/groups",
            json!({ "subject": "Invoices", "owner": PHONES[0], "participants": [PHONES[1], PHONES[2]] }),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let gid = created["id"].as_str().unwrap().to_string();
    assert!(gid.ends_with("@g.us"), "{created}");
    assert_eq!(created["participants"].as_array().unwrap().len(), 3, "{created}");

    // The groups list and one group's metadata, as each member sees them.
    let (status, listed) = api.get("/v1/sessions/B/groups").await;
    assert_eq!(status, 200, "{listed}");
    let groups = listed["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{listed}");
    assert_eq!(groups[0]["id"], gid);
    assert_eq!(groups[0]["subject"], "Invoices");
    assert_eq!(groups[0]["participants_count"], 3);
    assert_eq!(groups[0]["owner_phone"], PHONES[0], "{listed}");
    let digits = gid.trim_end_matches("@g.us");
    let (status, group) = api_c.get(&format!("/v1/sessions/C/groups/{digits}")).await;
    assert_eq!(status, 200, "{group}");
    assert_eq!(group["subject"], "Invoices");
    assert_eq!(group["owner_phone"], PHONES[0]);
    assert!(group["creation"].as_u64().is_some(), "{group}");
    let members = group["participants"].as_array().unwrap();
    let mut phones: Vec<&str> = members.iter().map(|m| m["phone"].as_str().unwrap()).collect();
    phones.sort();
    assert_eq!(phones, PHONES, "{group}");
    for member in members {
        assert!(member["lid"].as_str().unwrap().ends_with("@lid"), "{member}");
        assert_eq!(member["admin"], member["phone"] == PHONES[0], "only the owner is an admin: {member}");
    }
    let (status, body) = api.get("/v1/sessions/B/groups/120363999999999999@g.us").await;
    assert_eq!(status, 404, "an unknown group: {body}");
    let (status, body) = api.get("/v1/sessions/B/groups/15551234567").await;
    assert_eq!(status, 400, "a phone number is not a group id: {body}");

    // The Node service's call for the same (COMPAT.md).
    let (status, compat) = api.post("/sessions/group-metadata", json!({ "sessionId": "A", "groupId": digits })).await;
    assert_eq!(status, 200, "{compat}");
    assert_eq!(compat["status"], "success");
    assert_eq!(compat["metadata"]["id"], gid);
    assert_eq!(compat["metadata"]["subject"], "Invoices");
    let owner =
        compat["metadata"]["participants"].as_array().unwrap().iter().find(|p| p["phone"] == PHONES[0]).cloned();
    let owner = owner.unwrap_or_else(|| panic!("the owner is listed: {compat}"));
    assert_eq!(owner["id"], PHONES[0], "{compat}");
    assert_eq!(owner["admin"], "superadmin", "{compat}");
    assert!(owner["full_id"].as_str().unwrap().ends_with("@lid"), "{compat}");
    let (status, body) =
        api.post("/sessions/group-metadata", json!({ "sessionId": "A", "groupId": "120363999999999999" })).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = api.post("/sessions/group-metadata", json!({ "sessionId": "A" })).await;
    assert_eq!(status, 400, "{body}");

    // A message from each member reaches the two others, once, named by the group.
    let mut first_id = Value::Null;
    for (n, sender) in ["A", "B", "C"].iter().enumerate() {
        let text = format!("hello group from {sender}");
        let to = if n == 1 { digits.to_string() } else { gid.clone() };
        let sender_api = if n == 2 { &api_c } else { &api };
        let (status, sent) =
            sender_api.post(&format!("/v1/sessions/{sender}/messages"), json!({ "to": to, "text": text })).await;
        assert_eq!(status, 200, "{sender}: {sent}");
        assert_eq!(sent["to"], gid, "{sent}");
        for (m, receiver) in ["A", "B", "C"].iter().enumerate().filter(|(m, _)| *m != n) {
            let message = wait_text(&hooks[m], receiver, &text).await;
            assert_eq!(message["id"], sent["id"], "{message}");
            assert_eq!(message["is_group"], true, "{message}");
            assert_eq!(message["chat"], gid, "{message}");
            assert_eq!(message["group_id"], digits, "{message}");
            assert_eq!(message["group_subject"], "Invoices", "{message}");
            assert_eq!(message["sender_phone"], PHONES[n], "{message}");
        }
        assert!(group_upserts(&hooks[n], &text).is_empty(), "{sender} does not receive its own message");
        if n == 0 {
            first_id = sent["id"].clone();
        }
    }
    // The members' delivery receipts come back to the sender through the group.
    api.wait_for(
        &format!("/v1/sessions/A/messages/{}", first_id.as_str().unwrap()),
        "A's group message delivered",
        |m| m["status"] == "delivered",
    )
    .await;

    // A member that is offline gets the group message when it is back.
    gw_c.stop().await;
    let (status, sent) = api.post("/v1/sessions/A/messages", json!({ "to": gid, "text": "while C was away" })).await;
    assert_eq!(status, 200, "{sent}");
    wait_text(&hooks[1], "B", "while C was away").await;
    let gw_c = start_gateway(&sim, data_c.path()).await;
    let message = wait_text(&hooks[2], "C after its restart", "while C was away").await;
    assert_eq!(message["offline"], true, "{message}");
    assert_eq!(message["group_subject"], "Invoices", "{message}");
    let (_, unknown) = control.get("/control/unknown-iqs").await;
    let group_iqs: Vec<_> = unknown.as_array().unwrap().iter().filter(|iq| iq["xmlns"] == "w:g2").collect();
    assert!(group_iqs.is_empty(), "group iqs the simulator did not understand: {group_iqs:?}");
    gw.stop().await;
    gw_c.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_endpoints_need_a_connected_session() {
    let sim = start_sim().await;
    let data = tempfile::tempdir().unwrap();
    let gw = start_gateway(&sim, data.path()).await;
    let api = Api::gateway(gw.addr);
    api.post("/v1/sessions", json!({ "id": "Q" })).await;
    api.wait_state("Q", "awaiting_scan").await;
    for path in ["/v1/sessions/Q/groups", "/v1/sessions/Q/groups/120363000000000001@g.us"] {
        let (status, body) = api.get(path).await;
        assert_eq!(status, 409, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("awaiting_scan"), "{body}");
    }
    let (status, _) = api.get("/v1/sessions/nope/groups").await;
    assert_eq!(status, 404);
    let (status, body) =
        api.post("/sessions/group-metadata", json!({ "sessionId": "Q", "groupId": "120363000000000001" })).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("Session not connected")), "{body}");
    gw.stop().await;
    sim.stop().await;
}
