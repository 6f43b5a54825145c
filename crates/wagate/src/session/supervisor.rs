//! One task per session, owning its engine connection. Every command (start, pair code,
//! logout, stop) and every engine event goes through its loop, so there is exactly one
//! place that opens sockets, and at most one socket per session.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::backoff::STABLE_AFTER;
use super::group_names::GroupNames;
use super::inbound::InboundRecorder;
use super::media_upserts::MediaUpserts;
use super::policy::{self, Decision, Situation};
use super::queue::Drainer;
use super::state::{reason, timestamp, LastState, SessionView, StateKind};
use super::{SessionConfig, SessionError};
use crate::engine::{CloseReason, Connection, Engine, EngineError, EngineEvent, EngineStore, InboundSink, Me, MAX_BAN};
use crate::store::Store;
use crate::webhook::Outbox;

pub(super) enum Command {
    Start {
        reason: &'static str,
        reply: oneshot::Sender<SessionView>,
    },
    PairCode {
        phone: String,
        reply: oneshot::Sender<Result<String, SessionError>>,
    },
    Logout {
        reply: oneshot::Sender<SessionView>,
    },
    /// The live connection, for work done outside the loop (sending, lookups).
    Connection {
        reply: oneshot::Sender<Result<Arc<dyn Connection>, SessionError>>,
    },
    Stop {
        reply: oneshot::Sender<SessionView>,
    },
    /// Another node runs this session from now on: close the socket and end, recording
    /// nothing (the session's state is the new owner's to tell).
    Release {
        reply: oneshot::Sender<()>,
    },
}

pub(super) struct Supervisor {
    id: String,
    /// Sends what waited in the outgoing queue after each (re)connection.
    drainer: Drainer,
    engine: Arc<dyn Engine>,
    store: Arc<Store>,
    outbox: Outbox,
    engine_store: EngineStore,
    config: SessionConfig,
    view: SessionView,
    publish: watch::Sender<SessionView>,
    changes: broadcast::Sender<SessionView>,
    conn: Option<Arc<dyn Connection>>,
    events: Option<mpsc::UnboundedReceiver<EngineEvent>>,
    /// A connection to open at this time, and the reason to show meanwhile.
    next_attempt: Option<(Instant, &'static str)>,
    /// Failed attempts in a row (for back-off), `replaced` closes in a row, 500s in a row.
    attempts: u32,
    replaced: u32,
    bad_sessions: u32,
    qr_cycles: u32,
    showed_qr: bool,
    /// WhatsApp accepted the current credentials at least once (see `SessionRecord`).
    link_confirmed: bool,
    /// Restored at start and not connected yet: reconnects when the pacing says so.
    waiting_turn: bool,
    connected_at: Option<Instant>,
    /// When connections were opened in the last minute (rate limit).
    opens: VecDeque<Instant>,
    pending_pair_code: Option<(String, oneshot::Sender<Result<String, SessionError>>)>,
    /// Commits received messages before WhatsApp gets their ack.
    inbound: Arc<InboundRecorder>,
    /// The connection of the moment, for work outside the loop (downloads, lookups).
    live: Arc<watch::Sender<Option<Arc<dyn Connection>>>>,
    watched: Arc<Watched>,
}

/// What the manager keeps of a running supervisor.
pub(super) struct Spawned {
    pub mailbox: mpsc::Sender<Command>,
    pub view: watch::Receiver<SessionView>,
    pub lasting: Lasting,
}

/// The parts of a session that outlive its supervisor: a supervisor that died (a panic) is
/// replaced by one that takes these over, so that watchers keep their stream and no queue
/// is worked twice.
#[derive(Clone)]
pub(super) struct Lasting {
    /// Where the engine keeps the session's keys (from a validated id).
    pub engine_store: EngineStore,
    pub changes: broadcast::Sender<SessionView>,
    /// Received messages, once committed (see [`InboundRecorder::received`]).
    pub received: broadcast::Sender<Arc<serde_json::Value>>,
    pub drainer: Drainer,
    pub inbound: Arc<InboundRecorder>,
    pub live: Arc<watch::Sender<Option<Arc<dyn Connection>>>>,
    pub watched: Arc<Watched>,
}

/// The contacts whose presence the session subscribed to: only their presence and chat
/// states become events (any contact can type at a session; that must not cost a write).
#[derive(Default)]
pub(super) struct Watched {
    contacts: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// More subscriptions than this and the set starts over (a bound, not a target).
const MAX_WATCHED: usize = 10_000;

impl Watched {
    /// Remembers a subscription by its JID and, for a phone JID, its number.
    pub(super) fn add(&self, jid: &str) {
        let mut contacts = self.contacts.lock().unwrap_or_else(|p| p.into_inner());
        if contacts.len() >= MAX_WATCHED {
            contacts.clear();
        }
        contacts.insert(crate::engine::non_device(jid));
        if let Some(phone) = crate::engine::phone_of_jid(jid) {
            contacts.insert(phone);
        }
    }

    fn wants(&self, update: &crate::engine::PresenceUpdate) -> bool {
        let contacts = self.contacts.lock().unwrap_or_else(|p| p.into_inner());
        contacts.contains(&update.from) || update.phone.as_ref().is_some_and(|p| contacts.contains(p))
    }
}

impl Lasting {
    pub(super) fn new(id: &str, engine_store: EngineStore, outbox: &Outbox, config: &SessionConfig) -> Self {
        let (changes, _) = broadcast::channel(64);
        let (received, _) = broadcast::channel(256);
        let drainer = Drainer {
            session: id.to_string(),
            store: outbox.store().clone(),
            outbox: outbox.clone(),
            lock: Default::default(),
        };
        let (live, _) = watch::channel(None);
        let live = Arc::new(live);
        let groups = Arc::new(GroupNames::default());
        let media_upserts = Arc::new(MediaUpserts::spawn(
            id.to_string(),
            outbox.clone(),
            live.subscribe(),
            groups.clone(),
            config.compat_download_limit(),
        ));
        let inbound = Arc::new(InboundRecorder {
            session: id.to_string(),
            outbox: outbox.clone(),
            public_url: config.public_url.clone(),
            groups,
            live: live.subscribe(),
            media_upserts,
            received: received.clone(),
        });
        Self { engine_store, changes, received, drainer, inbound, live, watched: Arc::default() }
    }
}

impl Supervisor {
    /// `waiting_turn`: a linked session restored at start, which connects when the manager's
    /// pacing gives it its turn (a `Start`), or at once when a caller needs its connection.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn spawn(
        id: &str,
        me: Option<Me>,
        link_confirmed: bool,
        waiting_turn: bool,
        engine: Arc<dyn Engine>,
        outbox: Outbox,
        config: SessionConfig,
        lasting: Lasting,
    ) -> Spawned {
        let view = if waiting_turn {
            SessionView::new(id, StateKind::Reconnecting, Some(reason::WAITING_TURN), me)
        } else {
            SessionView::new(id, StateKind::Stopped, None, me)
        };
        let (publish, view_rx) = watch::channel(view.clone());
        let (mailbox, inbox) = mpsc::channel(64);
        let Lasting { engine_store, changes, drainer, inbound, live, watched, .. } = lasting.clone();
        let supervisor = Supervisor {
            drainer,
            id: id.to_string(),
            engine_store,
            inbound,
            live,
            watched,
            engine,
            store: outbox.store().clone(),
            outbox,
            config,
            view,
            publish,
            changes,
            conn: None,
            events: None,
            next_attempt: None,
            attempts: 0,
            replaced: 0,
            bad_sessions: 0,
            qr_cycles: 0,
            showed_qr: false,
            link_confirmed,
            waiting_turn,
            connected_at: None,
            opens: VecDeque::new(),
            pending_pair_code: None,
        };
        tokio::spawn(supervisor.run(inbox));
        Spawned { mailbox, view: view_rx, lasting }
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        loop {
            let next_attempt = self.next_attempt.map(|(at, _)| at);
            tokio::select! {
                command = inbox.recv() => match command {
                    Some(Command::Release { reply }) => {
                        self.close_connection().await;
                        self.moved_away();
                        info!(session = %self.id, "closed here: another node runs the session now");
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.on_command(command).await,
                    None => break,
                },
                event = next_event(&mut self.events) => match event {
                    Some(event) => self.on_event(event).await,
                    // The engine dropped the connection without a word.
                    None => self.on_event(EngineEvent::Closed(CloseReason::ConnectionLost {
                        detail: "the engine stopped reporting".into(),
                    })).await,
                },
                _ = sleep_until(next_attempt), if next_attempt.is_some() => {
                    let (_, why) = self.next_attempt.take().expect("checked above");
                    self.open(why).await;
                }
            }
        }
        // The manager is gone (shutdown): close the socket cleanly.
        self.close_connection().await;
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Start { reason: why, reply } => {
                if !self.is_running_or_waiting() {
                    self.qr_cycles = 0;
                    self.attempts = 0;
                    self.open(why).await;
                }
                let _ = reply.send(self.view.clone());
            }
            Command::PairCode { phone, reply } => self.pair_code(phone, reply).await,
            Command::Connection { reply } => {
                // A caller needs this session: it does not wait for its turn.
                if self.waiting_turn {
                    self.open(reason::RESTORED).await;
                }
                let conn = match (&self.conn, self.view.state) {
                    (Some(conn), StateKind::Connected) => Ok(conn.clone()),
                    _ => Err(SessionError::NotConnected(self.view.state)),
                };
                let _ = reply.send(conn);
            }
            Command::Logout { reply } => {
                self.logout().await;
                let _ = reply.send(self.view.clone());
            }
            Command::Release { .. } => unreachable!("handled by the loop, which ends with it"),
            Command::Stop { reply } => {
                self.waiting_turn = false;
                self.close_connection().await;
                self.next_attempt = None;
                self.set(StateKind::Stopped, Some(reason::STOPPED), None).await;
                let _ = reply.send(self.view.clone());
            }
        }
    }

    /// Whether a connection is open, opening, or scheduled (a start then changes nothing;
    /// a ban is waited out, not cut short).
    fn is_running_or_waiting(&self) -> bool {
        if self.waiting_turn {
            return false;
        }
        let banned = self.view.state == StateKind::Banned && self.next_attempt.is_some();
        self.view.state.is_active() || self.conn.is_some() || banned
    }

    async fn on_event(&mut self, event: EngineEvent) {
        match event {
            EngineEvent::Qr { code, valid_for } => {
                self.showed_qr = true;
                let mut view = self.view_for(StateKind::AwaitingScan, None, None);
                view.qr = Some(code);
                view.qr_expires_at =
                    Some(timestamp(Utc::now() + chrono::Duration::from_std(valid_for).unwrap_or_default()));
                self.publish_view(view).await;
                self.serve_pair_code();
            }
            EngineEvent::Paired { me } => {
                info!(session = %self.id, phone = ?me.phone, "phone linked the session; finishing pairing");
                crate::metrics::METRICS.pairings.inc();
                self.confirm_link(false);
                self.remember_me(me);
                self.set(StateKind::Pairing, None, None).await;
            }
            EngineEvent::Connected { me } => {
                let mut me = me;
                if let Some(known) = &self.view.me {
                    me.lid = me.lid.or_else(|| known.lid.clone());
                    me.push_name = me.push_name.or_else(|| known.push_name.clone());
                }
                self.remember_me(me);
                self.confirm_link(true);
                self.qr_cycles = 0;
                self.connected_at = Some(Instant::now());
                self.set(StateKind::Connected, None, None).await;
                self.live.send_replace(self.conn.clone());
                if let Some(conn) = &self.conn {
                    tokio::spawn(self.drainer.clone().drain(conn.clone()));
                }
            }
            EngineEvent::Messages(messages) => {
                // Kinds the engine could not commit before their ack: recorded now, the
                // same way (a redelivery of one already recorded makes no second event).
                if let Err(e) = self.inbound.commit(messages).await {
                    warn!(session = %self.id, "could not record received messages: {e}");
                }
            }
            EngineEvent::Presence(update) if !self.watched.wants(&update) => {}
            EngineEvent::Presence(update) => {
                let data = serde_json::to_value(&update).expect("presence updates serialize");
                self.outbox.record_or_log(&self.id, "presence.update", &data).await;
            }
            EngineEvent::Receipt { ids, chat, state, timestamp_ms } => {
                for id in ids {
                    super::queue::advance_and_announce(&self.outbox, &self.id, &id, &chat, state, timestamp_ms).await;
                }
            }
            EngineEvent::Closed(close) => {
                self.conn = None;
                self.live.send_replace(None);
                self.events = None;
                self.after_close(close).await;
            }
        }
    }

    /// Carries out the disconnect policy for a connection that ended.
    async fn after_close(&mut self, close: CloseReason) {
        if self.connected_at.take().is_some_and(|at| at.elapsed() >= STABLE_AFTER) {
            self.attempts = 0;
            self.replaced = 0;
        }
        let situation = Situation {
            showed_qr: self.showed_qr,
            qr_cycles_before: self.qr_cycles,
            qr_cycle_cap: self.config.qr_cycles,
            bad_sessions_before: self.bad_sessions,
        };
        if self.showed_qr && close != CloseReason::RestartRequired {
            self.qr_cycles += 1;
        }
        self.connection_gone();
        if close == CloseReason::Replaced && !self.engine_store.holds_lease().await.unwrap_or(true) {
            // Another node took the session over (this one lost its lease): never fight it
            // for the socket. The heartbeat closes the session here.
            warn!(session = %self.id, "replaced by the node that now holds the session's lease; not reconnecting");
            self.moved_away();
            return;
        }
        self.bad_sessions = if close == (CloseReason::StreamError { code: 500 }) { self.bad_sessions + 1 } else { 0 };
        let decision = policy::decide(&close, situation);
        info!(session = %self.id, ?close, ?decision, "connection ended");
        match decision {
            Decision::ReconnectNow { reason: why } => {
                crate::metrics::METRICS.reconnects.with_label_values(&[why]).inc();
                self.set(StateKind::Connecting, Some(why), None).await;
                self.open(why).await;
            }
            Decision::Retry { state, reason: why, code, schedule } => {
                crate::metrics::METRICS.reconnects.with_label_values(&[why]).inc();
                let last_error = match &close {
                    CloseReason::ConnectionLost { detail } => Some(detail.clone()),
                    _ => None,
                };
                let attempt = if state == StateKind::Replaced {
                    self.replaced += 1;
                    self.replaced
                } else {
                    self.attempts += 1;
                    self.attempts
                };
                let delay = schedule.delay(attempt);
                self.schedule(Instant::now() + delay, why);
                let mut view = self.view_for(state, Some(why), code);
                if let Some(error) = last_error {
                    view.detail = format!("{} Last error: {error}", view.detail);
                    view.last_error = Some(error);
                }
                view.attempt = Some(attempt);
                view.next_attempt_at =
                    Some(timestamp(Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default()));
                self.publish_view(view).await;
            }
            Decision::LoggedOut { code } if !self.link_confirmed => {
                // Credentials from a pair-success whose pairing WhatsApp then dropped (the
                // gateway died in between): not an unlink by the user. Start a clean link.
                warn!(session = %self.id, code, "WhatsApp does not know the credentials of an unfinished pairing; starting a new link");
                self.forget_credentials().await;
                self.qr_cycles = 0;
                self.set(StateKind::Connecting, Some(reason::PAIRING_INCOMPLETE), Some(code)).await;
                self.open(reason::PAIRING_INCOMPLETE).await;
            }
            Decision::LoggedOut { code } => {
                self.forget_credentials().await;
                self.set(StateKind::LoggedOut, Some(reason::LOGGED_OUT), Some(code)).await;
            }
            Decision::Banned { expire } => {
                let (at, until) = ban_ends(expire, Instant::now(), Utc::now());
                self.schedule(at, reason::TEMP_BANNED);
                let mut view = self.view_for(StateKind::Banned, Some(reason::TEMP_BANNED), Some(402));
                view.banned_until = Some(timestamp(until));
                self.publish_view(view.explained()).await;
            }
            Decision::Stop { state, reason: why, code } => self.set(state, Some(why), code).await,
        }
    }

    /// Opens a connection now, unless the rate limit says to wait; then it is scheduled.
    async fn open(&mut self, why: &'static str) {
        if self.conn.is_some() {
            return;
        }
        self.waiting_turn = false;
        let now = Instant::now();
        while self.opens.front().is_some_and(|at| now.duration_since(*at) >= Duration::from_secs(60)) {
            self.opens.pop_front();
        }
        if self.opens.len() >= self.config.max_opens_per_minute as usize {
            let at = *self.opens.front().expect("non-empty") + Duration::from_secs(60);
            warn!(session = %self.id, "too many connection attempts in a minute; waiting before the next one");
            self.schedule(at, why);
            return;
        }
        self.opens.push_back(now);
        self.next_attempt = None;
        if !self.view.state.is_active() || self.view.state == StateKind::Connected {
            self.set(StateKind::Connecting, Some(why), None).await;
        }
        let (events, receiver) = mpsc::unbounded_channel();
        let proxy = self.session_proxy();
        let inbound: Arc<dyn InboundSink> = self.inbound.clone();
        match self.engine.open(&self.id, &self.engine_store, proxy.as_ref(), inbound, events).await {
            Ok(conn) => {
                self.conn = Some(Arc::from(conn));
                self.events = Some(receiver);
            }
            Err(e) => {
                warn!(session = %self.id, "could not start a connection: {e}");
                Box::pin(self.after_close(CloseReason::ConnectionLost { detail: e.to_string() })).await;
            }
        }
    }

    /// The session's own proxy, read at every connection so a change applies at the next one.
    fn session_proxy(&self) -> Option<crate::engine::proxy::Proxy> {
        let url = self.store.session(&self.id).ok().flatten()?.proxy?;
        match crate::engine::proxy::Proxy::parse(&url) {
            Ok(proxy) => Some(proxy),
            Err(e) => {
                warn!(session = %self.id, "ignoring the session's proxy: {e}");
                None
            }
        }
    }

    fn schedule(&mut self, at: Instant, why: &'static str) {
        self.next_attempt = Some((at, why));
    }

    async fn pair_code(&mut self, phone: String, reply: oneshot::Sender<Result<String, SessionError>>) {
        if self.view.state == StateKind::Connected {
            let _ = reply.send(Err(SessionError::AlreadyLinked));
            return;
        }
        if let Some((_, previous)) = self.pending_pair_code.replace((phone, reply)) {
            let _ = previous.send(Err(SessionError::PairCodeSuperseded));
        }
        if self.showed_qr {
            self.serve_pair_code();
        } else if self.conn.is_none() {
            self.qr_cycles = 0;
            self.open(reason::STARTED).await;
        }
    }

    /// Asks the engine for a pairing code once the connection is ready to pair (it has
    /// shown a QR code), without blocking the loop.
    fn serve_pair_code(&mut self) {
        let (Some(conn), Some((phone, reply))) = (self.conn.clone(), self.pending_pair_code.take()) else {
            return;
        };
        let id = self.id.clone();
        tokio::spawn(async move {
            let result = conn.request_pair_code(&phone).await.map_err(|e| match e {
                // A second request while the first code can still be typed is the caller's
                // conflict, not WhatsApp's failure (a 502 before; found by tests/bodies.rs).
                EngineError::PairCodeOutstanding(left) => SessionError::PairCodeOutstanding(left),
                EngineError::PairCodeCancelled => SessionError::PairCodeSuperseded,
                e => SessionError::PairCode(e.to_string()),
            });
            if result.is_ok() {
                info!(session = %id, "pairing code issued; type it on the phone");
            }
            let _ = reply.send(result);
        });
    }

    async fn logout(&mut self) {
        self.next_attempt = None;
        self.waiting_turn = false;
        self.live.send_replace(None);
        if let Some(conn) = self.conn.take() {
            if self.view.state == StateKind::Connected {
                conn.logout().await;
            } else {
                conn.close().await;
            }
            self.drain_events().await;
        } else if self.view.me.is_some() {
            warn!(
                session = %self.id,
                "logging out while disconnected: WhatsApp was not told; remove the device from the phone's Linked devices"
            );
        }
        self.connection_gone();
        self.forget_credentials().await;
        self.set(StateKind::LoggedOut, Some(reason::LOGOUT_REQUESTED), None).await;
    }

    async fn forget_credentials(&mut self) {
        if let Err(e) = self.engine.wipe(&self.engine_store).await {
            warn!(session = %self.id, "could not delete the session's keys: {e}");
        }
        if let Err(e) = self.store.set_me(&self.id, None) {
            warn!(session = %self.id, "could not update the session registry: {e}");
        }
        self.confirm_link(false);
        self.view.me = None;
        // Nothing queued can go out on credentials that are gone.
        self.drainer.give_up_all("the session was logged out before it could be sent").await;
    }

    fn confirm_link(&mut self, confirmed: bool) {
        if self.link_confirmed == confirmed {
            return;
        }
        self.link_confirmed = confirmed;
        if let Err(e) = self.store.set_link_confirmed(&self.id, confirmed) {
            warn!(session = %self.id, "could not update the session registry: {e}");
        }
    }

    fn remember_me(&mut self, me: Me) {
        if let Err(e) = self.store.set_me(&self.id, Some(&me)) {
            warn!(session = %self.id, "could not record the linked number: {e}");
        }
        self.view.me = Some(me);
    }

    /// Closes the connection, then handles what it had already reported: an event taken
    /// from WhatsApp is never thrown away by a clean stop.
    async fn close_connection(&mut self) {
        self.live.send_replace(None);
        if let Some(conn) = self.conn.take() {
            conn.close().await;
            self.drain_events().await;
        }
        self.events = None;
        self.connection_gone();
    }

    /// What held for a connection that is gone, whether it ended (`after_close`) or we
    /// closed it: its QR code can no longer be paired with, and a pairing code asked for on
    /// it will not come. Once only `after_close` did this; a stale `showed_qr` after a
    /// logout made a pairing code wait for a connection that was never opened, until the
    /// command timed out (a 503; found by schemathesis).
    fn connection_gone(&mut self) {
        self.showed_qr = false;
        if let Some((_, reply)) = self.pending_pair_code.take() {
            let _ = reply.send(Err(SessionError::PairCode("the connection closed before a code was issued".into())));
        }
    }

    /// Handles the events a closing connection reported up to its `Closed`, without
    /// acting on the close itself (the caller decided what follows).
    async fn drain_events(&mut self) {
        let Some(mut events) = self.events.take() else { return };
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
            match event {
                EngineEvent::Closed(_) => break,
                EngineEvent::Messages(_) | EngineEvent::Receipt { .. } | EngineEvent::Presence(_) => {
                    Box::pin(self.on_event(event)).await
                }
                // A QR or a login that raced the close changes nothing now.
                EngineEvent::Qr { .. } | EngineEvent::Paired { .. } | EngineEvent::Connected { .. } => {}
            }
        }
    }

    fn view_for(&self, state: StateKind, why: Option<&str>, code: Option<u16>) -> SessionView {
        let mut view = SessionView::new(&self.id, state, why, self.view.me.clone());
        view.code = code;
        if state == self.view.state {
            view.since = self.view.since.clone();
        }
        view.explained()
    }

    async fn set(&mut self, state: StateKind, why: Option<&str>, code: Option<u16>) {
        let view = self.view_for(state, why, code);
        self.publish_view(view).await;
    }

    /// Tells this node's readers and event streams (those forwarded from other nodes too)
    /// that the session left for another node. Neither the outbox nor the registry hears
    /// it: they are shared, and the session's new node speaks for it there.
    fn moved_away(&mut self) {
        let view = self.view_for(StateKind::Stopped, Some(reason::MOVED), None);
        self.show(view);
    }

    /// Makes a state change visible: first recorded in the webhook outbox (so no receiver
    /// can miss it, even across a crash), then to API readers and event streams.
    async fn publish_view(&mut self, view: SessionView) {
        let changed = view.state != self.view.state || view.reason != self.view.reason;
        if changed {
            log_transition(&view);
        }
        if changed || view.qr != self.view.qr {
            let data = serde_json::to_value(&view).expect("views serialize");
            self.outbox.record_or_log(&self.id, "connection.update", &data).await;
        }
        // Kept for `wagate status` / `doctor` while the gateway is down. The stop at shutdown
        // is not recorded: the state before it says more about the session.
        let shutting_down = view.state == StateKind::Stopped && view.reason.as_deref() == Some(reason::STOPPED);
        if changed && !shutting_down {
            if let Err(e) = self.store.set_last_state(&self.id, &LastState::from(&view)) {
                warn!(session = %self.id, "could not record the session's state in the registry: {e}");
            }
        }
        self.show(view);
    }

    /// The view API readers and event streams see from now on.
    fn show(&mut self, view: SessionView) {
        self.view = view.clone();
        let _ = self.changes.send(view.clone());
        self.publish.send_replace(view);
    }
}

fn log_transition(view: &SessionView) {
    match view.state {
        StateKind::Connected => info!(session = %view.id, "WhatsApp Connected: {}", view.id),
        StateKind::AwaitingScan => {
            info!(session = %view.id, "QR code ready for {}: waiting for the phone to scan it", view.id)
        }
        _ => info!(
            session = %view.id,
            state = ?view.state,
            reason = view.reason.as_deref().unwrap_or("-"),
            code = view.code,
            "session {} is now {:?}: {}",
            view.id,
            view.state,
            view.detail
        ),
    }
}

/// When a ban of `expire` from `now` ends: the time to reconnect at, and the one to show.
/// A ban is at most [`MAX_BAN`], so that neither clock overflows.
fn ban_ends(expire: Duration, now: Instant, now_utc: chrono::DateTime<Utc>) -> (Instant, chrono::DateTime<Utc>) {
    let expire = expire.min(MAX_BAN);
    let at = now.checked_add(expire).unwrap_or(now);
    let until = chrono::Duration::from_std(expire).ok().and_then(|d| now_utc.checked_add_signed(d)).unwrap_or(now_utc);
    (at, until)
}

/// How long a stop waits for a closing connection's last events.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

async fn next_event(events: &mut Option<mpsc::UnboundedReceiver<EngineEvent>>) -> Option<EngineEvent> {
    match events {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_subscribed_contacts_presence_counts() {
        use crate::engine::{PresenceKind, PresenceUpdate};
        let update = |from: &str, phone: Option<&str>| PresenceUpdate {
            from: from.into(),
            phone: phone.map(str::to_string),
            presence: PresenceKind::Composing,
            last_seen: None,
        };
        let watched = Watched::default();
        assert!(!watched.wants(&update("15550001111@s.whatsapp.net", Some("15550001111"))), "nobody yet");
        watched.add("15550001111:3@s.whatsapp.net");
        assert!(watched.wants(&update("15550001111@s.whatsapp.net", Some("15550001111"))));
        assert!(watched.wants(&update("99887766@lid", Some("15550001111"))), "by number when LID-addressed");
        assert!(!watched.wants(&update("15550002222@s.whatsapp.net", Some("15550002222"))), "a stranger typing");
    }

    #[test]
    fn the_end_of_a_ban_is_never_past_thirty_days() {
        const THIRTY_DAYS: Duration = Duration::from_secs(30 * 24 * 3600);
        let (now, now_utc) = (Instant::now(), Utc::now());
        let thirty_days_utc = now_utc + chrono::Duration::days(30);
        for expire in
            [Duration::MAX, Duration::from_secs(u64::MAX), Duration::from_secs(i64::MAX as u64), THIRTY_DAYS * 2]
        {
            let (at, until) = ban_ends(expire, now, now_utc);
            assert_eq!(at, now + THIRTY_DAYS, "{expire:?}");
            assert_eq!(until, thirty_days_utc, "{expire:?}");
        }
        let ten_minutes = Duration::from_secs(600);
        assert_eq!(ban_ends(ten_minutes, now, now_utc), (now + ten_minutes, now_utc + chrono::Duration::minutes(10)));
    }
}
