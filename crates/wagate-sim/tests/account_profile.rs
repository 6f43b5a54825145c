//! Account profiles: a whatsapp-rust client linked to a profiled account gets the history,
//! app state, groups and inbound trickle a real small business's phone would give it; an
//! empty profile changes nothing; the control route refuses bad input.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{link_client, start_sim, ClientEvent, Control, TestClient};
use serde_json::{json, Value};
use wagate_sim::Simulator;

/// A small business, scaled down to keep the test quick: 50 contacts, 5 groups of up to 10,
/// 200 history messages, and contacts writing about five times a second.
fn small_profile() -> Value {
    json!({
        "preset": "small-business",
        "contacts": 50,
        "groups": 5,
        "group_size": 10,
        "history": 200,
        "trickle_per_minute": 300,
    })
}

/// A simulator whose accounts get `profile`; returns it with the profile in force.
async fn sim_with_profile(profile: Value) -> (Simulator, Control, Value) {
    let sim = start_sim().await;
    let control = Control::new(&sim);
    let (status, answer) = control.post("/control/account-profile", profile).await;
    assert_eq!(status, 200, "{answer}");
    (sim, control, answer)
}

/// What the client saw of the profile so far.
#[derive(Default, Debug)]
struct Seen {
    connected: bool,
    history_chunks: Vec<i32>,
    conversations: BTreeSet<String>,
    history_messages: usize,
    actions: BTreeMap<&'static str, BTreeSet<String>>,
    /// Messages from contacts, and the first few (a failure's message stays readable).
    trickle: usize,
    trickle_sample: Vec<(String, String)>,
}

impl Seen {
    fn take(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Connected => self.connected = true,
            ClientEvent::HistorySync { sync_type, conversations, messages } => {
                self.history_chunks.push(sync_type);
                self.conversations.extend(conversations);
                self.history_messages += messages;
            }
            ClientEvent::ChatAction { kind, jid } => {
                self.actions.entry(kind).or_default().insert(jid);
            }
            // Contacts of a profiled account have 15-digit numbers starting with 9.
            ClientEvent::Message { from, text } if from.starts_with('9') => {
                self.trickle += 1;
                if self.trickle_sample.len() < 3 {
                    self.trickle_sample.push((from, text));
                }
            }
            _ => {}
        }
    }

    fn actions(&self, kind: &str) -> usize {
        self.actions.get(kind).map_or(0, BTreeSet::len)
    }

    fn complete(&self) -> bool {
        self.connected
            && self.history_messages >= 200
            && self.actions("contact") >= 50
            && self.actions("mute") >= 3
            && self.actions("pin") >= 2
            && self.actions("archive") >= 3
            && self.trickle >= 3
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_business_account_gets_history_app_state_groups_and_trickle() {
    let (sim, control, profile) = sim_with_profile(small_profile()).await;
    assert_eq!(profile["contacts"], 50, "{profile}");
    assert_eq!(control.get("/control/account-profile").await, profile);

    let (mut client, jid) = link_client(&sim, &control, "15550300001").await;
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !seen.complete() {
        match tokio::time::timeout_at(deadline, client.events.recv()).await {
            Ok(Some(event)) => seen.take(event),
            Ok(None) => panic!("the client stopped; saw {seen:?}"),
            Err(_) => panic!("timed out; saw {seen:?}"),
        }
    }

    // History: both chunks, every chat with a message (5 groups + 50 contacts), every message.
    assert_eq!(seen.history_chunks.len(), 2, "{seen:?}");
    assert_eq!(seen.conversations.len(), 55, "{seen:?}");
    assert_eq!(seen.history_messages, 200, "{seen:?}");
    assert_eq!(seen.conversations.iter().filter(|c| c.ends_with("@g.us")).count(), 5, "{seen:?}");
    // App state: one contact action per contact, and the few chat settings.
    assert_eq!(seen.actions("contact"), 50, "{seen:?}");
    assert_eq!((seen.actions("mute"), seen.actions("pin"), seen.actions("archive")), (3, 2, 3), "{seen:?}");
    // Trickle: plain texts from the account's contacts.
    assert!(seen.trickle_sample.iter().all(|(_, text)| text.contains("(#")), "{seen:?}");

    // Groups: the account is in all five, and the engine can list them.
    let groups = client.client.groups().get_participating().await.expect("the group list");
    assert_eq!(groups.len(), 5, "{groups:?}");
    assert!(groups.values().all(|g| g.participants.len() >= 2 && g.participants.len() <= 10), "{groups:?}");

    let stats = control.get("/control/stats").await;
    let profile_stats = &stats["profile"];
    assert_eq!(profile_stats["history_notifications_sent"], 2, "{stats}");
    assert_eq!(profile_stats["history_blobs_served"], 2, "{stats}");
    assert_eq!(profile_stats["app_state_snapshots_served"], 1, "{stats}");
    assert_eq!(profile_stats["app_state_blobs_served"], 1, "{stats}");
    assert_eq!(profile_stats["app_state_patches_served"], 2, "{stats}");
    assert!(profile_stats["trickle_messages_sent"].as_u64().unwrap() >= 3, "{stats}");
    assert_eq!(stats["devices"][&jid]["key_share_retries"], 0, "{stats}");
    eprintln!("profile stats: {profile_stats}; media: {}", stats["media"]);

    // A restarted client (same store) is not sent the history or the snapshot again.
    let dir = client.stop().await;
    let mut again = TestClient::start_in(&sim.endpoints.ws_url, None, dir).await;
    again.wait_connected().await;
    let groups = again.client.groups().get_participating().await.expect("the group list");
    assert_eq!(groups.len(), 5);
    let stats = control.get("/control/stats").await;
    assert_eq!(stats["profile"]["history_notifications_sent"], 2, "{stats}");
    assert_eq!(stats["profile"]["app_state_snapshots_served"], 1, "{stats}");
    again.stop().await;
    sim.stop().await;
}

async fn next_event(client: &mut TestClient, waiting_for: &str) -> ClientEvent {
    tokio::time::timeout(common::WAIT, client.events.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out; so far: {waiting_for}"))
        .expect("the client runs")
}

/// Every linked device of the account gets the history, and each trickle message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_of_the_account_gets_history_and_trickle() {
    let profile = json!({ "preset": "small-business", "contacts": 10, "groups": 1, "group_size": 4, "history": 30, "trickle_per_minute": 600 });
    let (sim, control, _) = sim_with_profile(profile).await;
    let (mut first, _) = link_client(&sim, &control, "15550300004").await;
    let (mut second, second_jid) = link_client(&sim, &control, "15550300004").await;
    assert!(second_jid.starts_with("15550300004:2@"), "{second_jid}");
    // Each device: both history chunks and some trickle messages.
    let mut texts = Vec::new();
    for client in [&mut first, &mut second] {
        let mut chunks = 0;
        let mut trickle = BTreeSet::new();
        while chunks < 2 || trickle.len() < 3 {
            match next_event(client, &format!("{chunks} chunks, trickle {trickle:?}")).await {
                ClientEvent::HistorySync { .. } => chunks += 1,
                ClientEvent::Message { from, text } if from.starts_with('9') => {
                    trickle.insert(text);
                }
                _ => {}
            }
        }
        texts.push(trickle);
    }
    // What the second device got, the first got too (each text carries its number).
    while !texts[1].is_subset(&texts[0]) {
        if let ClientEvent::Message { from, text } = next_event(&mut first, &format!("{texts:?}")).await {
            if from.starts_with('9') {
                texts[0].insert(text);
            }
        }
    }
    let stats = control.get("/control/stats").await;
    assert_eq!(stats["profile"]["history_notifications_sent"], 4, "two chunks to each device: {stats}");
    first.stop().await;
    second.stop().await;
    sim.stop().await;
}

/// Contacts publish keys (usync lists their phone as a device, prekey fetches get a
/// bundle), so the account can write first to a contact that never wrote, and to its groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_writes_to_its_contacts_and_groups() {
    let quiet = json!({ "preset": "small-business", "contacts": 20, "groups": 2, "group_size": 6, "history": 20, "trickle_per_minute": 0 });
    let (sim, control, _) = sim_with_profile(quiet).await;
    let (mut client, _) = link_client(&sim, &control, "15550300003").await;
    client.wait_connected().await;
    let text = |t: &str| waproto::whatsapp::Message { conversation: Some(t.into()), ..Default::default() };
    let send = |to: whatsapp_rust::Jid, message| {
        let client = client.client.clone();
        async move {
            tokio::time::timeout(common::WAIT, client.send_message_with_options(to, message, Default::default()))
                .await
                .expect("the send finishes")
        }
    };
    // Contact 3 of this account: `9`, its last nine digits, five digits of index.
    let contact: whatsapp_rust::Jid = "955030000300003@s.whatsapp.net".parse().unwrap();
    send(contact, text("hello customer")).await.expect("a first message to a contact");
    let groups = client.client.groups().get_participating().await.expect("the group list");
    let group = groups.keys().next().expect("a group").clone();
    send(group, text("hello group")).await.expect("a message to a group");
    // Nobody is there to read them, but the server took both.
    let unknown = control.get("/control/unknown-iqs").await;
    assert!(
        unknown.as_array().unwrap().iter().all(|iq| iq["xmlns"] != "encrypt" && iq["xmlns"] != "usync"),
        "{unknown}"
    );
    client.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_empty_profile_changes_nothing() {
    let sim = start_sim().await;
    let control = Control::new(&sim);
    let profile = control.get("/control/account-profile").await;
    assert_eq!(profile["preset"], "empty", "{profile}");
    assert_eq!(profile["contacts"], 0, "{profile}");

    let (mut client, jid) = link_client(&sim, &control, "15550300002").await;
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, client.events.recv()).await.expect("Connected").unwrap();
        if matches!(event, ClientEvent::Connected) {
            break;
        }
        events.push(event);
    }
    control.wait_stats("the key share's receipt", |s| s["devices"][&jid]["key_shares_received"] == 1).await;
    // A round trip after Connected: whatever the login brought has arrived by its answer.
    let groups = client.client.groups().get_participating().await.expect("the group list");
    assert!(groups.is_empty(), "{groups:?}");
    while let Ok(event) = client.events.try_recv() {
        events.push(event);
    }
    assert!(
        !events.iter().any(|e| matches!(e, ClientEvent::HistorySync { .. } | ClientEvent::ChatAction { .. })),
        "{events:?}"
    );
    let stats = control.get("/control/stats").await;
    for counter in [
        "history_notifications_sent",
        "history_blobs_served",
        "app_state_snapshots_served",
        "app_state_patches_served",
        "app_state_blobs_served",
        "trickle_messages_sent",
    ] {
        assert_eq!(stats["profile"][counter], 0, "{counter}: {stats}");
    }
    assert_eq!(stats["devices"][&jid]["delivered"], 0, "nothing was relayed: {stats}");
    client.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn bad_account_profiles_are_refused() {
    let sim = start_sim().await;
    let control = Control::new(&sim);
    let cases = [
        json!({ "preset": "enterprise" }),
        json!({ "preset": 7 }),
        json!({ "contacts": -1 }),
        json!({ "contacts": 1e12 }),
        json!({ "contacts": "many" }),
        json!({ "contacts": 50_001 }),
        json!({ "groups": 1, "group_size": 1 }),
        json!({ "history": 100_001 }),
        json!({ "trickle_per_minute": -0.5 }),
        json!({ "trickle_per_minute": 1e9 }),
        json!({ "trickle_per_minute": "fast" }),
        json!({ "unknown_field": 1 }),
        json!([1, 2, 3]),
        json!(null),
    ];
    for body in cases {
        let (status, answer) = control.post("/control/account-profile", body.clone()).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}: no error text in {answer}");
    }
    // Garbage that is not JSON at all.
    for raw in ["{not json", "", "\u{0}\u{1}", "{\"contacts\": 1e400}", "[[[[[[[[[[[[[[[[[[[[[[[[[[[["] {
        let (status, answer) = control.post_raw("/control/account-profile", raw).await;
        assert_eq!(status, 400, "{raw:?} -> {answer}");
    }
    // Nothing changed, and the simulator still answers.
    let profile = control.get("/control/account-profile").await;
    assert_eq!(profile["preset"], "empty", "{profile}");
    let (status, profile) = control.post("/control/account-profile", json!({ "preset": "small-business" })).await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!((profile["contacts"].as_u64(), profile["groups"].as_u64()), (Some(500), Some(30)), "{profile}");
    assert_eq!(profile["trickle_per_minute"], 1.0, "{profile}");
    // Overrides apply on top of the profile in force.
    let (status, profile) = control.post("/control/account-profile", json!({ "trickle_per_minute": 0 })).await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!((profile["contacts"].as_u64(), profile["trickle_per_minute"].as_f64()), (Some(500), Some(0.0)));
    sim.stop().await;
}
