//! The engine on `whatsapp-rust` 0.7. One `Bot` per connection: the library's own
//! reconnect loop is switched off, so every reconnect is a fresh client chosen by the
//! session supervisor (a `disconnect()` then `connect()` on one 0.7 client can stop reading
//! the socket). The library's events and the raw `<stream:error>` / `<failure>` stanzas
//! are turned into [`EngineEvent`]s; when the client's loop ends, its state is flushed to
//! disk and `Closed` is reported with the most specific reason seen.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use wacore::types::events::EventHandler;
use whatsapp_rust::prelude::*;

use super::content::{Content, MediaKind, MediaRef, Outgoing};
use super::media_http::{MediaHosts, MediaHttp};
use super::proxy::Proxy;
use super::scratch::{CappedFile, Scratch};
use super::{
    phone_of_jid, CloseReason, Connection, ContactInfo, Downloaded, Engine, EngineError, EngineEvent, EngineStore,
    GroupInfo, GroupMember, InboundSink, Me, NumberCheck, PresenceKind, PresenceUpdate, Sent, MAX_BAN,
};

/// The client version announced to a non-WhatsApp server (the simulator), which cannot
/// serve WhatsApp's version file.
const SANDBOX_VERSION: (u32, u32, u32) = (2, 3000, 1_000_000_000);

pub struct WhatsAppEngine {
    /// `None`: WhatsApp itself. `Some`: another server (only in sandbox builds).
    ws_url: Option<String>,
    /// The gateway's proxy (`--proxy`), for sessions without their own.
    default_proxy: Option<Proxy>,
    /// Where downloads are written.
    scratch: Scratch,
    /// Whether `HTTPS_PROXY` / `ALL_PROXY` / `NO_PROXY` apply when no proxy is set.
    environment_proxy: bool,
    /// Sessions paired by this process whose app state has not been fetched yet.
    app_state_due: AppStateDue,
}

impl WhatsAppEngine {
    pub fn new(ws_url: Option<String>, default_proxy: Option<Proxy>, scratch: Scratch) -> Self {
        Self { ws_url, default_proxy, scratch, environment_proxy: true, app_state_due: AppStateDue::default() }
    }

    /// An engine for a server on this machine that is always reached directly, whatever
    /// proxy the environment names (`wagate sandbox` and its in-process simulator).
    pub fn direct(ws_url: String, scratch: Scratch) -> Self {
        Self {
            ws_url: Some(ws_url),
            default_proxy: None,
            scratch,
            environment_proxy: false,
            app_state_due: AppStateDue::default(),
        }
    }

    /// The proxy for a connection: the session's, else the gateway's, else the standard
    /// environment variables (`HTTPS_PROXY`, `NO_PROXY` ...).
    fn proxy_for(&self, session: Option<&Proxy>) -> Result<Option<Proxy>, EngineError> {
        if let Some(proxy) = session.or(self.default_proxy.as_ref()) {
            return Ok(Some(proxy.clone()));
        }
        if !self.environment_proxy {
            return Ok(None);
        }
        let url = self.ws_url.as_deref().unwrap_or(super::transport::WHATSAPP_WS_URL);
        let host = url.split("://").nth(1).and_then(|rest| rest.split(['/', ':']).next()).unwrap_or_default();
        super::proxy::from_environment(host)
            .transpose()
            .map_err(|e| EngineError::Build(format!("HTTPS_PROXY / ALL_PROXY: {e}")))
    }
}

/// Remembers why the current connection ended. What the server said in a
/// `<stream:error>` or `<failure>` is the most precise; the library's events come next;
/// a close we asked for overrides both.
#[derive(Default)]
struct CloseTracker {
    slots: Mutex<CloseSlots>,
}

#[derive(Default)]
struct CloseSlots {
    ours: bool,
    from_server: Option<CloseReason>,
    from_library: Option<CloseReason>,
}

impl CloseTracker {
    fn closed_by_us(&self) {
        self.slots().ours = true;
    }

    fn server_said(&self, reason: CloseReason) {
        self.slots().from_server.get_or_insert(reason);
    }

    /// A generic socket close after a specific event must not replace it.
    fn library_said(&self, reason: CloseReason) {
        let mut slots = self.slots();
        if matches!(slots.from_library, None | Some(CloseReason::ConnectionLost { .. })) {
            slots.from_library = Some(reason);
        }
    }

    fn reason(&self) -> Option<CloseReason> {
        let slots = self.slots();
        if slots.ours {
            return Some(CloseReason::ClosedByUs);
        }
        slots.from_server.clone().or_else(|| slots.from_library.clone())
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, CloseSlots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sessions whose first connection after a pairing is still to come. After a pairing
/// the library fetches the account's app state (contacts, chat settings) on the reconnect
/// that follows, but it remembers that only in the client that paired, and the supervisor
/// opens a new client for that reconnect (515). Without this, a business account (whose
/// push name comes with the pairing, the library's other reason to fetch) never fetched it.
/// Kept in memory, like the library's own flag: a crash in between leaves the collections
/// to the server's later sync notifications.
#[derive(Clone, Default)]
struct AppStateDue(Arc<Mutex<std::collections::HashSet<String>>>);

impl AppStateDue {
    fn paired(&self, session: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(session.to_string());
    }

    /// On a connection's `Connected`: fetches every collection not fetched yet, once. An
    /// incremental sync asks for a snapshot only of a collection still at version 0, so
    /// what the library fetched already is not fetched again.
    fn connected(&self, session: &str, client: Option<Arc<Client>>) {
        let Some(client) = client else { return };
        if !self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(session) {
            return;
        }
        let session = session.to_string();
        tokio::spawn(async move {
            use wacore::appstate::patch_decode::WAPatchName;
            debug!(session = %session, "fetching the account's app state after the pairing");
            for name in [
                WAPatchName::CriticalBlock,
                WAPatchName::CriticalUnblockLow,
                WAPatchName::RegularHigh,
                WAPatchName::RegularLow,
                WAPatchName::Regular,
            ] {
                let task = whatsapp_rust::sync_task::MajorSyncTask::AppStateSync { name, full_sync: false };
                client.process_sync_task(task).await;
            }
        });
    }
}

/// Receives the library's events inline, in order, on its dispatch path (so a close
/// reason is recorded before the client's loop can end).
struct EventBridge {
    session: String,
    app_state_due: AppStateDue,
    events: mpsc::UnboundedSender<EngineEvent>,
    tracker: Arc<CloseTracker>,
    client: OnceLock<Weak<Client>>,
    acks: Arc<AckWaiters>,
    committed: Arc<Committed>,
}

impl EventHandler for EventBridge {
    fn handle_event(&self, event: Arc<Event>) {
        match &*event {
            Event::ServerAck(ack) => self.acks.acked(&ack.id, ack.error.clone()),
            Event::Messages(batch) => {
                // What the durability hook committed is recorded already; the rest (kinds
                // the library acks on their own path) is recorded now, late.
                let late: Vec<_> = batch
                    .messages
                    .iter()
                    .filter(|m| !self.committed.take(&m.info))
                    .filter_map(|m| super::normalize::inbound(&m.message, &m.info))
                    .collect();
                if !late.is_empty() {
                    let _ = self.events.send(EngineEvent::Messages(late));
                }
                return;
            }
            Event::PairSuccess(_) => self.app_state_due.paired(&self.session),
            Event::Connected(_) => {
                self.app_state_due.connected(&self.session, self.client.get().and_then(Weak::upgrade))
            }
            _ => {}
        }
        let client = self.client.get().and_then(Weak::upgrade);
        translate(&event, client.as_deref(), &self.events, &self.tracker);
    }
}

/// A received message's identity: its id is unique only within its chat and sender.
type MessageKey = (String, String, String);

fn key_of(info: &wacore::types::message::MessageInfo) -> MessageKey {
    (info.source.chat.to_string(), info.source.sender.to_string(), info.id.clone())
}

/// Messages the durability hook committed whose `Messages` event has not come yet.
#[derive(Default)]
struct Committed {
    keys: Mutex<std::collections::HashSet<MessageKey>>,
}

impl Committed {
    fn add(&self, keys: impl IntoIterator<Item = MessageKey>) {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).extend(keys);
    }

    /// Whether the hook committed this message (forgetting it: its event came).
    fn take(&self, info: &wacore::types::message::MessageInfo) -> bool {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).remove(&key_of(info))
    }
}

/// whatsapp-rust's inbound durability hook: the library acks a decrypted message only
/// once this returned `Ok`, so every message is in wagate's outbox before WhatsApp
/// forgets it.
struct DurableInbound {
    sink: Arc<dyn InboundSink>,
    committed: Arc<Committed>,
}

#[async_trait]
impl whatsapp_rust::InboundDurabilityHook for DurableInbound {
    async fn on_messages(
        &self,
        _client: Arc<Client>,
        batch: &[wacore::types::events::InboundMessage],
    ) -> anyhow::Result<()> {
        let messages: Vec<_> = batch.iter().filter_map(|m| super::normalize::inbound(&m.message, &m.info)).collect();
        if !messages.is_empty() {
            self.sink.commit(messages).await.map_err(anyhow::Error::msg)?;
        }
        self.committed.add(batch.iter().map(|m| key_of(&m.info)));
        Ok(())
    }
}

/// Sends waiting for the server's `<ack>` of their message id (a nack carries an error).
#[derive(Default)]
struct AckWaiters {
    waiting: Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<Option<String>>>>,
}

impl AckWaiters {
    fn expect(&self, id: &str) -> tokio::sync::oneshot::Receiver<Option<String>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), tx);
        rx
    }

    fn acked(&self, id: &str, error: Option<String>) {
        if let Some(waiter) = self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(id) {
            let _ = waiter.send(error);
        }
    }

    fn forget(&self, id: &str) {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// How long a send waits for the server's ack before it counts as failed.
const ACK_TIMEOUT: Duration = Duration::from_secs(20);

struct WhatsAppConnection {
    client: Arc<Client>,
    acks: Arc<AckWaiters>,
    tracker: Arc<CloseTracker>,
    /// Completes once the client's loop has ended and `Closed` was sent.
    done: tokio::sync::watch::Receiver<bool>,
    scratch: Scratch,
}

#[async_trait]
impl Engine for WhatsAppEngine {
    async fn open(
        &self,
        session: &str,
        store: &EngineStore,
        proxy: Option<&Proxy>,
        inbound: Arc<dyn InboundSink>,
        events: mpsc::UnboundedSender<EngineEvent>,
    ) -> Result<Box<dyn Connection>, EngineError> {
        let backend = store.backend().await?;
        let dial_error = Arc::new(Mutex::new(None));
        let proxy = self.proxy_for(proxy)?;
        // Media goes the same way as the WebSocket. Only the simulator's media host has a
        // self-signed certificate, and only it is not on WhatsApp's domains.
        let hosts = if self.ws_url.is_some() { MediaHosts::Any } else { MediaHosts::WhatsApp };
        let media_http = MediaHttp::new(proxy.as_ref(), hosts)?;
        let transport = super::transport::Dialer::new(self.ws_url.as_deref(), proxy, dial_error.clone());
        let tracker = Arc::new(CloseTracker::default());
        let acks = Arc::new(AckWaiters::default());
        let committed = Arc::new(Committed::default());
        let bridge = Arc::new(EventBridge {
            session: session.to_string(),
            app_state_due: self.app_state_due.clone(),
            events: events.clone(),
            tracker: tracker.clone(),
            client: OnceLock::new(),
            acks: acks.clone(),
            committed: committed.clone(),
        });
        let mut builder = Bot::builder()
            .with_backend_arc(backend)
            .with_inbound_durability_hook(DurableInbound { sink: inbound, committed })
            .with_transport_factory(transport)
            .with_http_client(media_http)
            .with_event_handler(BridgeRef(bridge.clone()));
        if self.ws_url.is_some() {
            builder = builder.with_version(SANDBOX_VERSION);
        }
        let bot = builder.build().await.map_err(|e| EngineError::Build(format!("{e:#}")))?;
        let client = bot.client();
        let _ = bridge.client.set(Arc::downgrade(&client));
        // The supervisor decides about every reconnect, 515 included.
        client.enable_auto_reconnect.store(false, Ordering::Relaxed);
        let raw_lease = client.acquire_raw_node_forwarding();
        let handle = bot.spawn();
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let watcher_client = client.clone();
        let watcher_tracker = tracker.clone();
        let session = session.to_string();
        tokio::spawn(async move {
            handle.await;
            drop(raw_lease);
            // The credentials of a fresh pairing must be on disk before anyone reconnects.
            if let Err(e) = watcher_client.persistence_manager().flush().await {
                warn!(session = %session, "could not save the session's state: {e}");
            }
            let dial_error = dial_error.lock().unwrap_or_else(|p| p.into_inner()).take();
            let reason = watcher_tracker.reason().unwrap_or(CloseReason::ConnectionLost {
                detail: dial_error.unwrap_or_else(|| "the connection closed".into()),
            });
            debug!(session = %session, ?reason, "engine connection ended");
            let _ = events.send(EngineEvent::Closed(reason));
            let _ = done_tx.send(true);
        });
        Ok(Box::new(WhatsAppConnection { client, acks, tracker, done, scratch: self.scratch.clone() }))
    }

    async fn linked_identity(&self, store: &EngineStore) -> Result<Option<Me>, EngineError> {
        let device = store.credentials().await?;
        Ok(device.and_then(|d| {
            let jid = d.pn.as_ref()?.to_string();
            Some(Me {
                phone: phone_of_jid(&jid),
                jid: Some(jid),
                lid: d.lid.as_ref().map(|l| l.to_string()),
                push_name: Some(d.push_name.clone()).filter(|n| !n.is_empty()),
            })
        }))
    }

    async fn wipe(&self, store: &EngineStore) -> Result<(), EngineError> {
        store.wipe().await
    }
}

#[async_trait]
impl Connection for WhatsAppConnection {
    async fn request_pair_code(&self, phone: &str) -> Result<String, EngineError> {
        let options =
            whatsapp_rust::pair_code::PairCodeOptions { phone_number: phone.to_string(), ..Default::default() };
        self.client.pair_with_code(options).await.map_err(|e| {
            use whatsapp_rust::pair_code::{PairCodeError, PairError};
            match e {
                PairError::PairCode(PairCodeError::CodeAlreadyOutstanding { remaining }) => {
                    EngineError::PairCodeOutstanding(remaining.as_secs())
                }
                PairError::PairCode(PairCodeError::Cancelled) => EngineError::PairCodeCancelled,
                e => EngineError::PairCode(format!("{e}")),
            }
        })
    }

    /// Uploads the media first, if any; returns once the server acked the message (not
    /// merely once it was written).
    async fn send(&self, to: &str, message: &Outgoing, id: &str) -> Result<Sent, EngineError> {
        let jid: wacore_binary::Jid = to.parse().map_err(|_| EngineError::BadRecipient(to.to_string()))?;
        let uploaded = match &message.content {
            Content::Media(media) => Some(
                self.client
                    .upload(media.data.clone(), media_type(media.kind), whatsapp_rust::UploadOptions::new())
                    .await
                    .map_err(|e| EngineError::Media(format!("upload of the {} failed: {e:#}", media.kind.as_str())))?,
            ),
            _ => None,
        };
        let own_jid = self.client.pn().map(|j| format!("{}@{}", j.user, j.server)).unwrap_or_default();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let proto = super::compose::message(&message.content, message.reply_to.as_ref(), uploaded, &own_jid, now_ms);
        let acked = self.acks.expect(id);
        let options = whatsapp_rust::SendOptions::default().with_message_id(id.to_string());
        let sent = match self.client.send_message_with_options(jid, proto, options).await {
            Ok(sent) => sent,
            Err(e) => {
                self.acks.forget(id);
                return Err(EngineError::Send(format!("{e}")));
            }
        };
        match tokio::time::timeout(ACK_TIMEOUT, acked).await {
            Ok(Ok(None)) => Ok(Sent {
                id: sent.message_id,
                to: sent.to.to_string(),
                timestamp_ms: u64::try_from(now_ms).unwrap_or(0),
            }),
            Ok(Ok(Some(error))) => Err(EngineError::Refused(error)),
            Ok(Err(_)) => {
                Err(EngineError::Send("the connection closed before WhatsApp acknowledged the message".into()))
            }
            Err(_) => {
                self.acks.forget(id);
                Err(EngineError::Send("WhatsApp did not acknowledge the message in time".into()))
            }
        }
    }

    /// Only files whose reference is safe to fetch: the library puts `direct_path` right
    /// after the media host in the URL (`https://{host}{direct_path}?auth=...`), and the
    /// hosts are the ones WhatsApp's media-conn answer names (`DownloadParams` carries no
    /// `static_url`, and nothing else of the message goes into the request). A path the
    /// sender crafted (`@host:port/...`) is refused here, before any connection.
    async fn download(&self, media: &MediaRef, cap: u64) -> Result<Downloaded, EngineError> {
        media.check_downloadable().map_err(EngineError::UnsafeMedia)?;
        let params = whatsapp_rust::download::DownloadParams::encrypted(
            media.direct_path.clone(),
            &media.media_key,
            &media.file_sha256,
            &media.file_enc_sha256,
            media.file_length,
            media_type(media.kind),
        );
        let file = self.scratch.file().map_err(|e| EngineError::Media(e.to_string()))?;
        // The HTTP client streams, so the file is decrypted into the sink as it arrives.
        let writer = self
            .client
            .download_from_params_to_writer(&params, CappedFile::new(file, cap))
            .await
            .map_err(|e| EngineError::Media(format!("{e:#}")))?;
        let (file, len) = writer.finish().map_err(|e| EngineError::Media(format!("the downloaded file: {e}")))?;
        Ok(Downloaded { file, len })
    }

    async fn mark_read(&self, chat: &str, sender: Option<&str>, ids: &[String]) -> Result<(), EngineError> {
        let chat: wacore_binary::Jid = chat.parse().map_err(|_| EngineError::BadRecipient(chat.to_string()))?;
        let sender = sender
            .map(|s| s.parse::<wacore_binary::Jid>().map_err(|_| EngineError::BadRecipient(s.to_string())))
            .transpose()?;
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.client.mark_as_read(&chat, sender.as_ref(), &ids).await.map_err(|e| EngineError::Send(format!("{e:#}")))
    }

    async fn check_numbers(&self, phones: &[String]) -> Result<Vec<NumberCheck>, EngineError> {
        let jids: Vec<wacore_binary::Jid> = phones.iter().map(|p| wacore_binary::Jid::pn(p.as_str())).collect();
        let found =
            self.client.contacts().is_on_whatsapp(&jids).await.map_err(|e| EngineError::Send(format!("{e}")))?;
        Ok(phones
            .iter()
            .map(|phone| {
                let hit = found.iter().find(|r| {
                    r.jid.user == phone.as_str() || r.pn_jid.as_ref().is_some_and(|j| j.user == phone.as_str())
                });
                NumberCheck {
                    phone: phone.clone(),
                    exists: hit.is_some_and(|r| r.is_registered),
                    jid: hit.filter(|r| r.is_registered).map(|_| format!("{phone}@s.whatsapp.net")),
                    lid: hit.and_then(|r| r.lid.as_ref()).map(|l| l.to_string()),
                }
            })
            .collect())
    }

    async fn contact_info(&self, phone: &str) -> Result<ContactInfo, EngineError> {
        let check = self.check_numbers(std::slice::from_ref(&phone.to_string())).await?.into_iter().next();
        let Some(jid) = check.and_then(|c| c.jid) else {
            return Ok(ContactInfo {
                phone: phone.to_string(),
                exists: false,
                jid: None,
                about: None,
                picture_url: None,
            });
        };
        let user = wacore_binary::Jid::pn(phone);
        let contacts = self.client.contacts();
        let (info, picture) = tokio::join!(
            contacts.get_user_info(std::slice::from_ref(&user)),
            contacts.get_profile_picture(&user, false)
        );
        // Like the Node service: a hidden or failed detail is null, the answer still comes.
        let about = match info {
            Ok(found) => found.into_values().next().and_then(|i| i.status).filter(|s| !s.is_empty()),
            Err(e) => {
                debug!(phone, "about text lookup failed: {e}");
                None
            }
        };
        let picture_url = match picture {
            Ok(picture) => picture.map(|p| p.url),
            Err(e) => {
                debug!(phone, "profile picture lookup failed: {e}");
                None
            }
        };
        Ok(ContactInfo { phone: phone.to_string(), exists: true, jid: Some(jid), about, picture_url })
    }

    async fn subscribe_presence(&self, jid: &str) -> Result<(), EngineError> {
        let jid: wacore_binary::Jid = jid.parse().map_err(|_| EngineError::BadRecipient(jid.to_string()))?;
        self.client.presence().subscribe(jid).await.map_err(|e| EngineError::Send(format!("{e}")))
    }

    async fn groups(&self) -> Result<Vec<GroupInfo>, EngineError> {
        let groups = self.client.groups().get_participating().await.map_err(|e| EngineError::Send(format!("{e}")))?;
        let mut groups: Vec<GroupInfo> = groups.into_values().map(group_info).collect();
        groups.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(groups)
    }

    async fn group(&self, jid: &str) -> Result<Option<GroupInfo>, EngineError> {
        let jid: wacore_binary::Jid = jid.parse().map_err(|_| EngineError::BadRecipient(jid.to_string()))?;
        match self.client.groups().get_metadata(&jid).await {
            Ok(metadata) => Ok(Some(group_info(metadata))),
            // Not found, or not a member (WhatsApp does not tell the two apart to outsiders).
            Err(whatsapp_rust::GroupError::Iq(whatsapp_rust::IqError::ServerError { code: 403 | 404, .. })) => Ok(None),
            Err(e) => Err(EngineError::Send(format!("{e}"))),
        }
    }

    async fn logout(&self) {
        self.tracker.closed_by_us();
        self.client.logout().await;
        self.wait_done().await;
    }

    async fn close(&self) {
        self.tracker.closed_by_us();
        self.client.disconnect().await;
        self.wait_done().await;
    }

    fn is_open(&self) -> bool {
        !*self.done.borrow()
    }
}

fn media_type(kind: MediaKind) -> wacore::download::MediaType {
    use wacore::download::MediaType;
    match kind {
        MediaKind::Image => MediaType::Image,
        MediaKind::Video => MediaType::Video,
        MediaKind::Audio => MediaType::Audio,
        MediaKind::Document => MediaType::Document,
        MediaKind::Sticker => MediaType::Sticker,
    }
}

impl WhatsAppConnection {
    async fn wait_done(&self) {
        let mut done = self.done.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), done.wait_for(|d| *d)).await;
    }
}

/// The bridge is shared with the builder, which wants the handler by value.
struct BridgeRef(Arc<EventBridge>);

impl EventHandler for BridgeRef {
    fn handle_event(&self, event: Arc<Event>) {
        self.0.handle_event(event);
    }
}

fn group_info(metadata: whatsapp_rust::GroupMetadata) -> GroupInfo {
    let participants = metadata
        .participants
        .iter()
        .map(|p| {
            let jid = p.jid.to_string();
            let (phone, lid) = if p.jid.is_lid() {
                (p.phone_number.as_ref().map(|j| j.user.to_string()), Some(jid.clone()))
            } else {
                (phone_of_jid(&jid), p.lid.as_ref().map(|j| j.to_string()))
            };
            GroupMember { jid, phone, lid, admin: p.is_admin(), super_admin: p.is_super_admin() }
        })
        .collect();
    let owner_phone = metadata
        .creator_pn
        .as_ref()
        .map(|j| j.user.to_string())
        .or_else(|| metadata.creator.as_ref().filter(|j| !j.is_lid()).map(|j| j.user.to_string()));
    GroupInfo {
        id: metadata.id.to_string(),
        subject: metadata.subject,
        owner: metadata.creator.map(|j| j.to_string()),
        owner_phone,
        creation: metadata.creation_time,
        description: metadata.description,
        participants,
    }
}

fn me_of(client: Option<&Client>) -> Me {
    let jid = client.and_then(|c| c.pn()).map(|j| j.to_string());
    Me {
        phone: jid.as_deref().and_then(phone_of_jid),
        jid,
        lid: None,
        push_name: client.map(|c| c.push_name()).filter(|n| !n.is_empty()),
    }
}

fn translate(
    event: &Event,
    client: Option<&Client>,
    events: &mpsc::UnboundedSender<EngineEvent>,
    tracker: &CloseTracker,
) {
    let send = |e| {
        let _ = events.send(e);
    };
    match event {
        Event::PairingQrCode(qr) => send(EngineEvent::Qr { code: qr.code.clone(), valid_for: qr.timeout }),
        Event::PairSuccess(paired) => {
            let jid = paired.id.to_string();
            send(EngineEvent::Paired {
                me: Me {
                    phone: phone_of_jid(&jid),
                    jid: Some(jid),
                    lid: Some(paired.lid.to_string()),
                    push_name: Some(paired.business_name.clone()).filter(|n| !n.is_empty()),
                },
            });
        }
        Event::Connected(_) => send(EngineEvent::Connected { me: me_of(client) }),
        Event::Receipt(receipt) => {
            if let Some(state) = super::normalize::receipt_state(receipt) {
                send(EngineEvent::Receipt {
                    ids: receipt.message_ids.clone(),
                    chat: receipt.source.chat.to_string(),
                    state,
                    timestamp_ms: u64::try_from(receipt.timestamp.timestamp_millis()).unwrap_or(0),
                });
            }
        }
        Event::Presence(update) => {
            let from = update.from.to_non_ad().to_string();
            send(EngineEvent::Presence(PresenceUpdate {
                phone: phone_of_jid(&from),
                from,
                presence: if update.unavailable { PresenceKind::Unavailable } else { PresenceKind::Available },
                last_seen: update.last_seen.map(|t| t.timestamp()),
            }));
        }
        Event::ChatPresence(update) => {
            use wacore::types::presence::{ChatPresence, ChatPresenceMedia};
            let from = update.source.sender.to_non_ad().to_string();
            let presence = match (&update.state, &update.media) {
                (ChatPresence::Composing, ChatPresenceMedia::Audio) => PresenceKind::Recording,
                (ChatPresence::Composing, _) => PresenceKind::Composing,
                (ChatPresence::Paused, _) => PresenceKind::Paused,
            };
            send(EngineEvent::Presence(PresenceUpdate { phone: phone_of_jid(&from), from, presence, last_seen: None }));
        }
        Event::PairingQrCodesExhausted(_) => tracker.library_said(CloseReason::QrRefsExhausted),
        Event::StreamReplaced(_) => tracker.library_said(CloseReason::Replaced),
        Event::TemporaryBan(ban) => tracker
            .library_said(CloseReason::TempBanned { expire: ban.expire.to_std().unwrap_or(DEFAULT_BAN).min(MAX_BAN) }),
        Event::ClientOutdated(_) => tracker.library_said(CloseReason::Outdated),
        Event::LoggedOut(_) => tracker.library_said(CloseReason::LoggedOut { code: 401 }),
        Event::Disconnected(gone) => {
            tracker.library_said(CloseReason::ConnectionLost { detail: gone.reason.to_string() })
        }
        Event::RawNode(node) if matches!(node.tag(), "stream:error" | "failure") => {
            if let Some(reason) = close_reason_of(&node.to_owned_node()) {
                tracker.server_said(reason);
            }
        }
        _ => {}
    }
}

/// A ban whose length the server did not say.
const DEFAULT_BAN: Duration = Duration::from_secs(3600);

/// A ban's length from its `expire` (seconds): at most [`MAX_BAN`], however big the number
/// (even one past `u64::MAX`); [`DEFAULT_BAN`] when absent or not a number.
fn ban_expiry(expire: Option<&str>) -> Duration {
    let Some(text) = expire.map(str::trim).filter(|t| !t.is_empty()) else { return DEFAULT_BAN };
    match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds).min(MAX_BAN),
        Err(_) if text.bytes().all(|b| b.is_ascii_digit()) => MAX_BAN,
        Err(_) => DEFAULT_BAN,
    }
}

/// Reads the reason out of a `<stream:error>` or a login `<failure>`.
fn close_reason_of(node: &wacore_binary::Node) -> Option<CloseReason> {
    let attr = |n: &wacore_binary::Node, key: &str| n.attrs.get(key).map(|v| v.as_str().into_owned());
    match node.tag.as_ref() {
        "stream:error" => {
            if let Some(conflict) = node.get_optional_child("conflict") {
                return Some(match attr(conflict, "type").as_deref() {
                    Some("replaced") => CloseReason::Replaced,
                    _ => CloseReason::LoggedOut { code: 401 },
                });
            }
            let code: u16 = attr(node, "code")?.parse().ok()?;
            Some(match code {
                515 => CloseReason::RestartRequired,
                401 | 516 => CloseReason::LoggedOut { code },
                409 => CloseReason::Replaced,
                other => CloseReason::StreamError { code: other },
            })
        }
        "failure" => {
            let code: u16 = attr(node, "reason")?.parse().ok()?;
            Some(match code {
                401 | 403 | 406 => CloseReason::LoggedOut { code },
                402 => CloseReason::TempBanned { expire: ban_expiry(attr(node, "expire").as_deref()) },
                405 => CloseReason::Outdated,
                411 => CloseReason::MultiDeviceMismatch,
                other => CloseReason::LoginFailure { code: other },
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wacore_binary::builder::NodeBuilder;

    const THIRTY_DAYS: Duration = Duration::from_secs(30 * 24 * 3600);

    fn ban(expire: Option<&str>) -> Option<CloseReason> {
        let mut node = NodeBuilder::new("failure").attr("reason", "402");
        if let Some(expire) = expire {
            node = node.attr("expire", expire);
        }
        close_reason_of(&node.build())
    }

    #[test]
    fn a_ban_expiry_is_read_and_clamped() {
        let banned = |secs| Some(CloseReason::TempBanned { expire: Duration::from_secs(secs) });
        assert_eq!(ban(Some("3600")), banned(3600));
        assert_eq!(ban(Some("0")), banned(0));
        assert_eq!(ban(None), banned(3600), "no expiry: an hour");
        assert_eq!(ban(Some("soon")), banned(3600));
        for huge in
            [u64::MAX.to_string(), i64::MAX.to_string(), "1".repeat(40), (THIRTY_DAYS.as_secs() + 1).to_string()]
        {
            assert_eq!(ban(Some(&huge)), Some(CloseReason::TempBanned { expire: THIRTY_DAYS }), "expire={huge}");
        }
    }
}
