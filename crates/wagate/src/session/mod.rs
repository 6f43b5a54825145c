//! Sessions: one supervisor task per session (see `supervisor`), the disconnect policy,
//! and the manager the HTTP API and the CLI talk to.

pub mod backoff;
mod group_names;
mod inbound;
mod media_upserts;
pub mod policy;
mod queue;
mod reconnects;
pub mod state;
mod supervisor;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot, watch};
use tracing::{info, warn};

use crate::engine::{
    ContactInfo, DeliveryState, Downloaded, Engine, EngineError, GroupInfo, MessageRef, NumberCheck, Outgoing,
};
use crate::store::{KeyClaim, SentMessage, Store, StoreError, StoredMedia, WebhookConfig};
use crate::webhook::Outbox;
pub use queue::StatusChange;
pub use state::{SessionView, StateKind};
use supervisor::{Command, Spawned, Supervisor};

/// Session tunables.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// QR cycles (one connection's worth of refs each) before giving up with `qr_timeout`.
    pub qr_cycles: u32,
    /// At most this many connections per session per minute, whatever callers do.
    pub max_opens_per_minute: u32,
    /// Where callers reach this gateway (`http://host:port`, no trailing slash); events
    /// link to media downloads under it. Empty: the address the gateway listens on.
    pub public_url: String,
    /// At most this many sessions in the registry; creating one more is refused. 0: no cap.
    pub max_sessions: usize,
    /// The largest received file downloaded (`--media-max`).
    pub media_max: u64,
    /// The largest file a Node-format webhook carries (`--compat-media-max`); bigger ones go
    /// as `media.data: null` with the reason.
    pub compat_media_max: u64,
    /// Restored sessions reconnecting per second after a start (`--reconnect-rate`).
    pub reconnect_rate: u32,
    /// What the open-files limit allows (set at start); `None`: not known, no cap.
    pub open_files: Option<crate::open_files::FileBudget>,
}

pub const MB: u64 = 1024 * 1024;

/// Sessions stopped at once when the gateway stops.
const SHUTDOWN_CONCURRENCY: usize = 64;

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            qr_cycles: 3,
            max_opens_per_minute: 10,
            public_url: String::new(),
            max_sessions: 0,
            media_max: 100 * MB,
            compat_media_max: 16 * MB,
            reconnect_rate: 20,
            open_files: None,
        }
    }
}

impl SessionConfig {
    /// The largest file a Node-format webhook carries, and the setting that says so.
    fn compat_download_limit(&self) -> media_upserts::Limit {
        if self.compat_media_max <= self.media_max {
            media_upserts::Limit { bytes: self.compat_media_max, setting: "--compat-media-max" }
        } else {
            media_upserts::Limit { bytes: self.media_max, setting: "--media-max" }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session not found")]
    NotFound,
    #[error("another node of the cluster runs this session")]
    NotOwned,
    #[error("the cluster's database: {0}")]
    Cluster(String),
    #[error("invalid session id: {0}")]
    InvalidId(&'static str),
    #[error("the session is already linked and connected")]
    AlreadyLinked,
    #[error("pairing code: {0}")]
    PairCode(String),
    #[error("a pairing code was issued already and can be typed on the phone for another {0} s")]
    PairCodeOutstanding(u64),
    /// Two callers asked for a code at once: the later request wins, the earlier one
    /// gets this (a 409, not WhatsApp's failure: a 502 before; found by schemathesis).
    #[error("a newer pairing-code request for this session replaced this one")]
    PairCodeSuperseded,
    #[error("the session's supervisor is not responding")]
    Unavailable,
    #[error("the session is not connected")]
    NotConnected(StateKind),
    #[error("a request with this Idempotency-Key is still being sent")]
    IdempotencyInProgress,
    #[error("WhatsApp refused or failed the request: {0}")]
    Send(String),
    #[error(
        "this gateway already holds its limit of {0} sessions (--max-sessions / WAGATE_MAX_SESSIONS); \
         delete one or raise the limit"
    )]
    TooManySessions(usize),
    #[error(
        "this gateway holds {sessions} sessions, all that its open-files limit of {limit} leaves room for beside \
         the API; raise the limit (LimitNOFILE= in its systemd unit, or ulimit -n before starting it) and restart \
         it (wagate doctor shows the numbers)"
    )]
    OutOfFiles { sessions: usize, limit: u64 },
    #[error("'{0}' is not a valid recipient")]
    BadRecipient(String),
    #[error("the session's outgoing queue is full ({max} messages wait already)", max = crate::store::MAX_QUEUED)]
    QueueFull,
    #[error("no message '{0}' in this session")]
    UnknownMessage(String),
    #[error("message '{0}' has no file")]
    NoMedia(String),
    #[error("the file of this message is not downloaded: {0}")]
    UnsafeMedia(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What an engine call that reached WhatsApp but failed reports to the API.
fn engine_failure(error: EngineError) -> SessionError {
    match error {
        EngineError::BadRecipient(to) => SessionError::BadRecipient(to),
        EngineError::UnsafeMedia(why) => SessionError::UnsafeMedia(why),
        EngineError::Send(reason) => SessionError::Send(reason),
        other => SessionError::Send(other.to_string()),
    }
}

/// Session ids name files and appear in URLs: 1-64 letters, digits, `_`, `-`, `.`.
pub fn validate_id(id: &str) -> Result<(), SessionError> {
    if id.is_empty() || id.len() > 64 {
        return Err(SessionError::InvalidId("it must be 1 to 64 characters long"));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
        return Err(SessionError::InvalidId("only letters, digits, '_', '-' and '.' are allowed"));
    }
    if id.bytes().all(|b| b == b'.') {
        return Err(SessionError::InvalidId("it cannot consist of dots only"));
    }
    Ok(())
}

struct Handle {
    spawned: Spawned,
}

impl Handle {
    /// Restored at start and not yet given its turn to reconnect (its view says so).
    fn waiting_turn(&self) -> bool {
        self.spawned.view.borrow().reason.as_deref() == Some(state::reason::WAITING_TURN)
    }
}

pub struct SessionManager {
    engine: Arc<dyn Engine>,
    store: Arc<Store>,
    outbox: Outbox,
    config: SessionConfig,
    sessions: Mutex<BTreeMap<String, Handle>>,
    /// Set by `shutdown`: the paced reconnects after the start stop too.
    stopping: AtomicBool,
    /// Names this process among the runs of the gateway on its data directory, so that an
    /// idempotency claim left by a run that died is told from one still being sent.
    run: String,
    /// Keyed sends in progress: `(session, key)` -> becomes true when the send has ended.
    keyed_sends: Mutex<HashMap<(String, String), watch::Receiver<bool>>>,
    /// Held while a session is counted and added, so that concurrent creates never pass
    /// `max_sessions` together.
    registering: Mutex<()>,
    /// Set when several nodes share a PostgreSQL database: a session runs here only while
    /// this node holds its lease.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// When the next linked session may reconnect: restored and taken-over sessions share
    /// `--reconnect-rate`, so WhatsApp never sees a burst of logins from this node.
    next_reconnect: Mutex<tokio::time::Instant>,
}

/// How long an API call waits for a supervisor's answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

impl SessionManager {
    pub fn new(engine: Arc<dyn Engine>, outbox: Outbox, config: SessionConfig) -> Arc<Self> {
        Arc::new(Self {
            engine,
            store: outbox.store().clone(),
            outbox,
            config,
            sessions: Mutex::new(BTreeMap::new()),
            run: format!("{}-{}", std::process::id(), crate::engine::new_message_id()),
            stopping: AtomicBool::new(false),
            keyed_sends: Mutex::default(),
            registering: Mutex::default(),
            cluster: std::sync::OnceLock::new(),
            next_reconnect: Mutex::new(tokio::time::Instant::now()),
        })
    }

    /// Makes this node one of several (before `restore`): sessions run here only under a
    /// lease, which the cluster's heartbeat takes and renews.
    pub fn join_cluster(self: &Arc<Self>, cluster: Arc<crate::cluster::Cluster>) {
        let weak = Arc::downgrade(self);
        self.outbox.deliver_only(Arc::new(move |session: &str| weak.upgrade().is_some_and(|m| m.runs(session))));
        let _ = self.cluster.set(cluster.clone());
        cluster.start(self);
    }

    /// Whether this node runs the session (holds its lease, on a cluster).
    pub fn runs(&self, session: &str) -> bool {
        match self.cluster.get() {
            Some(cluster) => cluster.generation(session).is_some(),
            None => true,
        }
    }

    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// The session's engine store, fenced by its lease on a cluster (refused without one).
    fn engine_store_for(&self, id: &str) -> Result<crate::engine::EngineStore, SessionError> {
        let store = self.store.engine_store(id)?;
        match self.cluster.get() {
            None => Ok(store),
            Some(cluster) => match cluster.generation(id) {
                Some(generation) => Ok(store.fenced(generation)),
                None => Err(SessionError::NotOwned),
            },
        }
    }

    /// Runs a session whose lease this node has just taken (a take-over, a move): starts
    /// it at once if it was linked (then true).
    pub async fn adopt(self: &Arc<Self>, id: &str, generation: i64) -> Result<bool, SessionError> {
        let record = self.store.session(id)?.ok_or(SessionError::NotFound)?;
        debug_assert_eq!(self.cluster.get().and_then(|c| c.generation(id)), Some(generation));
        let linked = record.me.is_some();
        self.spawn(id, record.me, record.link_confirmed, linked, false)?;
        // Its events go out from here now, from the oldest not yet delivered.
        self.outbox.wake_from_start(id);
        if linked {
            // In its turn: a node taking a dead node's sessions must not log them all in at once.
            tokio::spawn(Self::reconnect_in_turn(Arc::downgrade(self), id.to_string()));
        }
        Ok(linked)
    }

    /// Closes the session here without recording anything: another node runs it now.
    pub async fn release(&self, id: &str) {
        let Some(handle) = self.sessions().remove(id) else { return };
        let (reply, done) = oneshot::channel();
        if handle.spawned.mailbox.send(Command::Release { reply }).await.is_ok()
            && tokio::time::timeout(COMMAND_TIMEOUT, done).await.is_err()
        {
            warn!(session = %id, "the session did not close in time while handing it over");
        }
    }

    /// [`SessionManager::release`] of many, many at a time.
    pub async fn release_all(&self, ids: &[String]) {
        use futures_util::StreamExt;
        futures_util::stream::iter(ids).for_each_concurrent(SHUTDOWN_CONCURRENCY, |id| self.release(id)).await;
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Handle>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the session's supervisor unless it has a live one. `replace`: its supervisor
    /// died; the new one takes over what outlives it (see [`supervisor::Lasting`]).
    fn spawn(
        &self,
        id: &str,
        me: Option<crate::engine::Me>,
        link_confirmed: bool,
        waiting_turn: bool,
        replace: bool,
    ) -> Result<(), SessionError> {
        let engine_store = self.engine_store_for(id)?;
        // Checked and inserted under one lock: two concurrent creates never start two.
        let mut sessions = self.sessions();
        let lasting = match sessions.get(id) {
            Some(_) if !replace => return Ok(()),
            Some(old) => old.spawned.lasting.clone(),
            None => supervisor::Lasting::new(id, engine_store, &self.outbox, &self.config),
        };
        let engine = self.engine.clone();
        let spawned = Supervisor::spawn(
            id,
            me,
            link_confirmed,
            waiting_turn,
            engine,
            self.outbox.clone(),
            self.config.clone(),
            lasting,
        );
        sessions.insert(id.to_string(), Handle { spawned });
        Ok(())
    }

    /// Adds the session `id` to the registry unless it is there already, within
    /// `max_sessions`. Returns its record and whether it was added.
    pub fn register(
        &self,
        id: &str,
        webhook: Option<&WebhookConfig>,
    ) -> Result<(crate::store::SessionRecord, bool), SessionError> {
        validate_id(id)?;
        let _registering = self.registering.lock().unwrap_or_else(|p| p.into_inner());
        if self.store.session(id)?.is_none() {
            let count = self.store.sessions()?.len();
            let max = self.config.max_sessions;
            if max > 0 && count >= max {
                return Err(SessionError::TooManySessions(max));
            }
            if let Some(files) = self.config.open_files.filter(|files| count >= files.sessions) {
                return Err(SessionError::OutOfFiles { sessions: files.sessions, limit: files.soft });
            }
        }
        Ok(self.store.create_session(id, webhook)?)
    }

    /// Creates the session if it is new, and starts it unless it is already running.
    /// Returns its state and whether it was created.
    pub async fn create(
        &self,
        id: &str,
        webhook: Option<&WebhookConfig>,
        proxy: Option<&str>,
    ) -> Result<(SessionView, bool), SessionError> {
        // On a cluster the lease comes first: a session in the registry without one would be
        // taken by whichever node looks first.
        let claimed = match self.cluster.get() {
            Some(cluster) if !self.sessions().contains_key(id) => {
                validate_id(id)?;
                match cluster.claim(id).await.map_err(|e| SessionError::Cluster(e.to_string()))? {
                    Some(_) => true,
                    None => return Err(SessionError::NotOwned),
                }
            }
            _ => false,
        };
        let (record, created) = match self.register(id, webhook) {
            Ok(registered) => registered,
            Err(e) => {
                if let (true, Some(cluster)) = (claimed, self.cluster.get()) {
                    let _ = cluster.hand_over(id).await;
                }
                return Err(e);
            }
        };
        if created && proxy.is_some() {
            // Before the first connection, so that it already uses the proxy.
            self.store.set_proxy(id, proxy)?;
        }
        if !self.sessions().contains_key(id) {
            let identity = self.engine.linked_identity(&self.store.engine_store(id)?).await?;
            self.spawn(id, identity.or(record.me), record.link_confirmed, false, false)?;
        }
        if created {
            info!(session = %id, "session created");
        }
        let view = self.start(id).await?;
        Ok((view, created))
    }

    pub fn get(&self, id: &str) -> Option<SessionView> {
        self.sessions().get(id).map(|h| h.spawned.view.borrow().clone())
    }

    pub fn list(&self) -> Vec<SessionView> {
        self.sessions().values().map(|h| h.spawned.view.borrow().clone()).collect()
    }

    /// The current state and every later change.
    pub fn subscribe(&self, id: &str) -> Option<(SessionView, broadcast::Receiver<SessionView>)> {
        let sessions = self.sessions();
        let handle = sessions.get(id)?;
        let receiver = handle.spawned.lasting.changes.subscribe();
        let current = handle.spawned.view.borrow().clone();
        Some((current, receiver))
    }

    /// Every message the session receives from now on, as `messages.upsert` carries it,
    /// once it is committed (a redelivery comes once).
    pub fn received(&self, id: &str) -> Option<broadcast::Receiver<Arc<serde_json::Value>>> {
        self.sessions().get(id).map(|h| h.spawned.lasting.received.subscribe())
    }

    pub async fn start(&self, id: &str) -> Result<SessionView, SessionError> {
        self.command(id, |reply| Command::Start { reason: state::reason::STARTED, reply }).await
    }

    pub async fn pair_code(&self, id: &str, phone: &str) -> Result<String, SessionError> {
        let phone = phone.to_string();
        self.command(id, |reply| Command::PairCode { phone, reply }).await?
    }

    /// Sends a message; with an idempotency key, a repeated call returns the first
    /// result and never sends twice. A linked session that is reconnecting queues the
    /// message (answered with the state `queued`) unless `may_queue` is false; messages
    /// queue behind earlier queued ones so that they go out in order.
    ///
    /// A keyed send runs to its end even when the caller goes away; a retry with the key
    /// meanwhile waits for it and answers its outcome. A claim left by a run that died
    /// mid-send is taken over under the same message id, so WhatsApp and the recipient
    /// see one message whatever happened before.
    pub async fn send(
        self: &Arc<Self>,
        id: &str,
        to: &str,
        message: Outgoing,
        idempotency_key: Option<&str>,
        may_queue: bool,
    ) -> Result<SentMessage, SessionError> {
        self.send_as(id, to, message, idempotency_key, may_queue, None).await
    }

    /// [`SessionManager::send`] under a message id chosen by the caller (made with
    /// [`crate::engine::new_message_id`]), so that it can note the id before the message
    /// goes; with an idempotency key already used, the answer names the first message.
    pub async fn send_as(
        self: &Arc<Self>,
        id: &str,
        to: &str,
        message: Outgoing,
        idempotency_key: Option<&str>,
        may_queue: bool,
        message_id: Option<String>,
    ) -> Result<SentMessage, SessionError> {
        if self.get(id).is_none() {
            return Err(SessionError::NotFound);
        }
        let new_id = || message_id.clone().unwrap_or_else(crate::engine::new_message_id);
        let Some(key) = idempotency_key else {
            return self.send_or_queue(id, to, &message, None, may_queue, new_id()).await;
        };
        for _ in 0..3 {
            let fresh_id = new_id();
            let now = crate::webhook::now_ms();
            match self.store.claim_idempotency_key(id, key, &fresh_id, &self.run, now).await? {
                KeyClaim::Claimed => return self.send_keyed(id, to, message, key, fresh_id, may_queue).await,
                KeyClaim::Orphaned { message_id } => {
                    warn!(session = %id, message = %message_id, "an earlier run stopped while sending this message; sending it again under the same id");
                    return self.send_keyed(id, to, message, key, message_id, may_queue).await;
                }
                KeyClaim::Sent(message) => return Ok(message),
                KeyClaim::InProgress { .. } => {
                    let running = self.keyed_sends().get(&(id.to_string(), key.to_string())).cloned();
                    if let Some(mut done) = running {
                        let ended = tokio::time::timeout(COMMAND_TIMEOUT, done.wait_for(|ended| *ended)).await;
                        if ended.is_err() {
                            return Err(SessionError::IdempotencyInProgress);
                        }
                    }
                }
            }
        }
        Err(SessionError::IdempotencyInProgress)
    }

    fn keyed_sends(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), watch::Receiver<bool>>> {
        self.keyed_sends.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends under a claimed key on a task of its own, so that a caller who hangs up
    /// does not cut the send short and leave the key without an outcome.
    async fn send_keyed(
        self: &Arc<Self>,
        id: &str,
        to: &str,
        message: Outgoing,
        key: &str,
        message_id: String,
        may_queue: bool,
    ) -> Result<SentMessage, SessionError> {
        let (ended, done) = watch::channel(false);
        let slot = (id.to_string(), key.to_string());
        self.keyed_sends().insert(slot.clone(), done);
        let (this, to) = (self.clone(), to.to_string());
        let task = tokio::spawn(async move {
            let (session, key) = (&slot.0, &slot.1);
            let result = this.send_or_queue(session, &to, &message, Some(key), may_queue, message_id).await;
            if result.is_err() {
                // Nothing reached WhatsApp: the caller may try again with the same key.
                if let Err(e) = this.store.release_idempotency_key(session, key).await {
                    warn!(session = %session, "could not free an idempotency key after a failed send: {e}");
                }
            }
            this.keyed_sends().remove(&slot);
            let _ = ended.send(true);
            result
        });
        task.await.unwrap_or_else(|e| Err(SessionError::Send(format!("the send stopped: {e}"))))
    }

    async fn send_or_queue(
        &self,
        id: &str,
        to: &str,
        message: &Outgoing,
        idempotency_key: Option<&str>,
        may_queue: bool,
        message_id: String,
    ) -> Result<SentMessage, SessionError> {
        match self.connection(id).await {
            Ok(conn) if !may_queue || self.store.queued_count(id)? == 0 => {
                let started = std::time::Instant::now();
                let sent = conn.send(to, message, &message_id).await.map_err(engine_failure)?;
                // On disk before anyone hears of it: a crash after the server's ack still
                // knows the message was sent, and its receipts still move its state.
                queue::record_sent(&self.outbox, id, &sent).await?;
                queue::note_sent(id, message.content.kind(), &sent, started);
            }
            Ok(conn) => {
                self.enqueue(id, &message_id, to, message, idempotency_key)?;
                tokio::spawn(self.drainer(id)?.drain(conn));
            }
            Err(SessionError::NotConnected(state))
                if may_queue
                    && matches!(state, StateKind::Connecting | StateKind::Reconnecting)
                    && self.get(id).is_some_and(|v| v.me.is_some()) =>
            {
                self.enqueue(id, &message_id, to, message, idempotency_key)?;
                // The session may have connected, or been logged out, while this was queued.
                match self.connection(id).await {
                    Ok(conn) => drop(tokio::spawn(self.drainer(id)?.drain(conn))),
                    Err(SessionError::NotConnected(StateKind::LoggedOut | StateKind::AwaitingScan)) => {
                        self.drainer(id)?.give_up_all("the session was logged out before it could be sent").await
                    }
                    Err(_) => {}
                }
            }
            Err(e) => return Err(e),
        }
        self.store
            .sent_message(id, &message_id)?
            .ok_or_else(|| SessionError::Send("the message was not recorded".into()))
    }

    fn enqueue(
        &self,
        id: &str,
        message_id: &str,
        to: &str,
        message: &Outgoing,
        idempotency_key: Option<&str>,
    ) -> Result<(), SessionError> {
        let now = crate::webhook::now_ms();
        let event = queue::status_event(&self.outbox, id, message_id, to, DeliveryState::Queued, now);
        if !self.store.enqueue(id, message_id, to, message, idempotency_key, event, now)? {
            return Err(SessionError::QueueFull);
        }
        self.outbox.wake(id);
        info!(session = %id, message = %message_id, "message queued until the session is connected again");
        Ok(())
    }

    fn drainer(&self, id: &str) -> Result<queue::Drainer, SessionError> {
        self.sessions().get(id).map(|h| h.spawned.lasting.drainer.clone()).ok_or(SessionError::NotFound)
    }

    /// A message of this session's chats, received or sent, for a reply or a reaction.
    pub fn message_ref(&self, id: &str, message_id: &str) -> Result<MessageRef, SessionError> {
        if let Some(received) = self.store.received_message(id, message_id)? {
            return Ok(MessageRef {
                id: received.id,
                chat: received.chat,
                sender: Some(received.sender),
                text: received.text,
            });
        }
        match self.store.sent_message(id, message_id)? {
            Some(sent) => Ok(MessageRef { id: sent.id, chat: sent.chat, sender: None, text: None }),
            None => Err(SessionError::UnknownMessage(message_id.to_string())),
        }
    }

    /// Downloads and decrypts the file of a received message (into a temporary file).
    pub async fn download_media(&self, id: &str, message_id: &str) -> Result<(Downloaded, StoredMedia), SessionError> {
        if self.get(id).is_none() {
            return Err(SessionError::NotFound);
        }
        let media = self
            .store
            .received_message(id, message_id)?
            .ok_or_else(|| SessionError::UnknownMessage(message_id.to_string()))?
            .media
            .ok_or_else(|| SessionError::NoMedia(message_id.to_string()))?;
        let cap =
            media.location.download_cap(self.config.media_max, "--media-max").map_err(SessionError::UnsafeMedia)?;
        let conn = self.connection(id).await?;
        let file = conn.download(&media.location, cap).await.map_err(engine_failure)?;
        Ok((file, media))
    }

    /// Sends a read receipt for a received message of `chat` (`sender`: its author, for a
    /// group).
    pub async fn mark_read(
        &self,
        id: &str,
        chat: &str,
        sender: Option<&str>,
        message_id: &str,
    ) -> Result<(), SessionError> {
        let conn = self.connection(id).await?;
        conn.mark_read(chat, sender, &[message_id.to_string()]).await.map_err(engine_failure)
    }

    /// Where callers reach this gateway (`http://host:port`), for links to it.
    pub fn public_url(&self) -> &str {
        &self.config.public_url
    }

    /// Which of these phone numbers are on WhatsApp.
    pub async fn check_numbers(&self, id: &str, phones: &[String]) -> Result<Vec<NumberCheck>, SessionError> {
        let conn = self.connection(id).await?;
        conn.check_numbers(phones).await.map_err(engine_failure)
    }

    /// Whether a phone number (digits) is on WhatsApp, with its about text and picture.
    pub async fn contact_info(&self, id: &str, phone: &str) -> Result<ContactInfo, SessionError> {
        let conn = self.connection(id).await?;
        conn.contact_info(phone).await.map_err(engine_failure)
    }

    /// Subscribes to a user's presence; changes arrive as `presence.update` events.
    pub async fn subscribe_presence(&self, id: &str, jid: &str) -> Result<(), SessionError> {
        let conn = self.connection(id).await?;
        conn.subscribe_presence(jid).await.map_err(engine_failure)?;
        if let Some(handle) = self.sessions().get(id) {
            handle.spawned.lasting.watched.add(jid);
        }
        info!(session = %id, contact = %jid, "subscribed to the contact's presence");
        Ok(())
    }

    /// Every group the session's account is in.
    pub async fn groups(&self, id: &str) -> Result<Vec<GroupInfo>, SessionError> {
        let conn = self.connection(id).await?;
        conn.groups().await.map_err(engine_failure)
    }

    /// One group's metadata; `None` when the account is not in such a group.
    pub async fn group(&self, id: &str, group_jid: &str) -> Result<Option<GroupInfo>, SessionError> {
        let conn = self.connection(id).await?;
        conn.group(group_jid).await.map_err(engine_failure)
    }

    /// The session's live connection; `NotConnected` with its state otherwise.
    async fn connection(&self, id: &str) -> Result<Arc<dyn crate::engine::Connection>, SessionError> {
        self.command(id, |reply| Command::Connection { reply }).await?
    }

    pub async fn logout(&self, id: &str) -> Result<SessionView, SessionError> {
        self.command(id, |reply| Command::Logout { reply }).await
    }

    pub async fn stop(&self, id: &str) -> Result<SessionView, SessionError> {
        self.command(id, |reply| Command::Stop { reply }).await
    }

    /// Logs out (unlinking on WhatsApp) and forgets the session.
    pub async fn delete(&self, id: &str) -> Result<(), SessionError> {
        self.logout(id).await?;
        self.sessions().remove(id);
        self.store.delete_session(id)?;
        if let Some(cluster) = self.cluster.get() {
            if let Err(e) = cluster.forget(id).await {
                warn!(session = %id, "could not remove the deleted session's lease: {e}");
            }
        }
        info!(session = %id, "session deleted");
        Ok(())
    }

    /// Closes every connection (for a clean exit).
    /// Stops every session, many at a time: each waits for its connection to close and its
    /// state to be saved, and thousands of them one after another would outlast any
    /// service manager's stop timeout.
    pub async fn shutdown(&self) {
        use futures_util::StreamExt;
        self.stopping.store(true, Ordering::Relaxed);
        let ids: Vec<String> = self.sessions().keys().cloned().collect();
        futures_util::stream::iter(ids)
            .for_each_concurrent(SHUTDOWN_CONCURRENCY, |id| async move {
                if let Err(e) = self.stop(&id).await {
                    warn!(session = %id, "could not stop cleanly: {e}");
                }
            })
            .await;
    }

    /// Sends a command and waits for the answer. A supervisor that died (a panic) is
    /// replaced once, so one broken session never needs a restart of the gateway.
    async fn command<T>(&self, id: &str, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, SessionError> {
        let mailbox = self.sessions().get(id).map(|h| h.spawned.mailbox.clone()).ok_or(SessionError::NotFound)?;
        let (reply, answer) = oneshot::channel();
        let command = make(reply);
        let mailbox = match mailbox.try_reserve() {
            Ok(permit) => {
                permit.send(command);
                None
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(())) => Some(command),
            Err(tokio::sync::mpsc::error::TrySendError::Full(())) => {
                mailbox.send(command).await.map_err(|_| SessionError::Unavailable)?;
                None
            }
        };
        if let Some(command) = mailbox {
            warn!(session = %id, "the session's supervisor had stopped; starting a new one");
            let identity = self.engine.linked_identity(&self.store.engine_store(id)?).await?;
            let confirmed = self.store.session(id)?.is_some_and(|r| r.link_confirmed);
            self.spawn(id, identity, confirmed, false, true)?;
            let fresh = self.sessions().get(id).map(|h| h.spawned.mailbox.clone()).ok_or(SessionError::NotFound)?;
            fresh.send(command).await.map_err(|_| SessionError::Unavailable)?;
        }
        tokio::time::timeout(COMMAND_TIMEOUT, answer)
            .await
            .map_err(|_| SessionError::Unavailable)?
            .map_err(|_| SessionError::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_checked() {
        for good in ["WA-Acme_Ltd", "a", "x.y-z_1", &"a".repeat(64)] {
            assert!(validate_id(good).is_ok(), "{good}");
        }
        for bad in ["", "..", ".", "with space", "slash/", "ümlaut", &"a".repeat(65)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
