//! One client connection: handshake, then either a pairing (QR refs or pairing code, ending
//! in the 515 restart) or a login, then stanzas until either side closes. Each connection is
//! its own task; the control API reaches it through its command channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use buffa::Message as _;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use wacore_binary::builder::NodeBuilder;
use wacore_binary::{Jid, Node};
use waproto::buffa;
use waproto::whatsapp::{ClientPayload, DeviceProps};

use crate::accounts::{SignalKeys, SignedPreKey};
use crate::clock::unix_now;
use crate::iq::{self, IqContext};
use crate::jid::{lid_jid_string, DeviceAddr};
use crate::nodes::{attr, child, iq_error, iq_result, stream_error_code, stream_error_conflict};
use crate::noise::{respond_to_hello, Established, HelloOutcome, Pattern};
use crate::pair_code::{self, PhoneHalf};
use crate::pairing::{self, PairSuccess};
use crate::phone;
use crate::relay;
use crate::state::{ConnId, LiveConn, PendingCode, PendingFailure, PendingRef, SimState};
use crate::wire::{frame, FrameReader, Transport, WireError};

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// The outcome of a pairing, reported to the control call that started it.
pub type PairReply = oneshot::Sender<Result<DeviceAddr, String>>;

/// What the control API (or another connection) can ask of a connection.
pub enum ConnCommand {
    Send(Node),
    /// Write a relayed `<message>` that is pending in the outbox as `seq` until the device
    /// acknowledges it.
    Deliver {
        seq: u64,
        node: Node,
    },
    /// Send the node, if any, then close the socket.
    Close(Option<Node>),
    /// Close the TCP connection without a word.
    Drop,
    /// Close the TCP connection without a word right after writing the next relayed
    /// `<message>`, before the device can acknowledge it.
    DropAfterNextMessage,
    /// Answer nothing, send nothing, for this long.
    Silence(Duration),
    /// Take what the client sends but act on it only after this long, in order (a server
    /// that is slow to answer, not one that loses what it read).
    Stall(Duration),
    /// The phone scanned this connection's QR: send `pair-success` and check the answer.
    PairSuccess {
        success: Box<PairSuccess>,
        addr: DeviceAddr,
        reply: PairReply,
    },
    /// The user typed the pairing code on the phone: send `primary_hello`, then finish when
    /// the client's `companion_finish` arrives.
    PrimaryHello {
        node: Box<Node>,
        half: Box<PhoneHalf>,
        addr: DeviceAddr,
        reply: PairReply,
    },
}

/// What a pairing connection is waiting for.
enum Pairing {
    Idle,
    AwaitingFinish { half: Box<PhoneHalf>, addr: DeviceAddr, reply: PairReply },
    AwaitingSign { success: Box<PairSuccess>, addr: DeviceAddr, reply: PairReply },
}

struct Conn {
    id: ConnId,
    state: Arc<SimState>,
    socket: WebSocket,
    reader: FrameReader,
    transport: Option<Transport>,
    device: Option<DeviceAddr>,
    pairing: Pairing,
    silent_until: Option<Instant>,
    /// Stalled until then; what came meanwhile waits in `stalled`.
    stalled_until: Option<Instant>,
    stalled: Vec<Node>,
    offline_sent: bool,
    /// Fault: end the connection right after the next relayed message is written.
    drop_after_message: bool,
    /// The id of the app-state key share sent on this connection, until its receipt comes.
    key_share_id: Option<String>,
}

/// Why a connection ended; logged.
enum End {
    ClientClosed,
    ServerClosed(&'static str),
    Error(String),
}

pub async fn serve(socket: WebSocket, state: Arc<SimState>) {
    let (commands, mut inbox) = mpsc::unbounded_channel();
    let id = {
        let mut inner = state.lock();
        let id = inner.new_conn_id();
        inner.conns.insert(
            id,
            LiveConn { commands, device: None, client_static: None, registration: None, offline_flushed: false },
        );
        inner.stats.totals.connections += 1;
        id
    };
    debug!(conn = id, "connection opened");
    let mut conn = Conn {
        id,
        state: state.clone(),
        socket,
        reader: FrameReader::default(),
        transport: None,
        device: None,
        pairing: Pairing::Idle,
        silent_until: None,
        stalled_until: None,
        stalled: Vec::new(),
        offline_sent: false,
        drop_after_message: false,
        key_share_id: None,
    };
    let end = match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.handshake()).await {
        Err(_) => End::Error("no handshake within 20 s".into()),
        Ok(Err(end)) => end,
        Ok(Ok(established)) => match conn.start(*established).await {
            Err(end) => end,
            Ok(()) => conn.run(&mut inbox).await,
        },
    };
    conn.finish(end).await;
}

impl Conn {
    async fn handshake(&mut self) -> Result<Box<Established>, End> {
        let first = self.next_raw_frame().await?;
        let prologue = *self.reader.prologue().expect("a frame is only read after the intro");
        let result = respond_to_hello(&self.state.keys, &prologue, &first);
        let (hello, outcome) = result.map_err(|e| {
            self.state.lock().stats.totals.handshake_failures += 1;
            End::Error(format!("bad client hello: {e}"))
        })?;
        self.send_raw(frame(&hello)).await?;
        let established = match outcome {
            HelloOutcome::Established(done) => done,
            HelloOutcome::AwaitingFinish(pending) => {
                let finish = self.next_raw_frame().await?;
                Box::new(pending.finish(&finish).map_err(|e| {
                    self.state.lock().stats.totals.handshake_failures += 1;
                    End::Error(format!("bad client finish: {e}"))
                })?)
            }
        };
        debug!(conn = self.id, pattern = ?established.pattern, "handshake done");
        Ok(established)
    }

    /// After the handshake: hand out QR refs to a new client, or log a known one in.
    async fn start(&mut self, established: Established) -> Result<(), End> {
        let Established { read, write, client_static, payload, pattern } = established;
        self.transport = Some(Transport::new(read, write));
        {
            let mut inner = self.state.lock();
            let totals = &mut inner.stats.totals;
            totals.handshakes += 1;
            match pattern {
                Pattern::Ik => totals.ik_handshakes += 1,
                Pattern::XxFallback => totals.xx_fallback_handshakes += 1,
                Pattern::Xx => {}
            }
            if let Some(live) = inner.conns.get_mut(&self.id) {
                live.client_static = Some(client_static);
            }
        }
        match payload.username {
            Some(phone) if !payload.device_pairing_data.is_set() || payload.passive == Some(true) => {
                let device = payload.device.and_then(|d| u16::try_from(d).ok()).unwrap_or(0);
                self.login(DeviceAddr { phone, device }, client_static).await
            }
            _ => self.offer_pairing(&payload, client_static).await,
        }
    }

    async fn offer_pairing(&mut self, payload: &ClientPayload, client_static: [u8; 32]) -> Result<(), End> {
        let registration = registration_from(payload, client_static);
        let refs = pairing::new_refs();
        {
            let mut inner = self.state.lock();
            inner.stats.totals.pairing_connections += 1;
            if let Some(live) = inner.conns.get_mut(&self.id) {
                live.registration = Some(registration);
            }
            let issued = Instant::now();
            let config = &self.state.config;
            for (index, pairing_ref) in refs.iter().enumerate() {
                let ttl = config.first_ref_ttl + config.next_ref_ttl * index as u32;
                inner.refs.insert(pairing_ref.clone(), PendingRef { conn: self.id, expires_at: issued + ttl });
            }
        }
        info!(conn = self.id, "new client waiting to be linked; sent {} QR refs", refs.len());
        self.send_node(&pairing::pair_device_iq(&refs)).await
    }

    async fn login(&mut self, addr: DeviceAddr, client_static: [u8; 32]) -> Result<(), End> {
        let outcome = {
            let mut inner = self.state.lock();
            let stats = inner.stats.device(addr);
            stats.connections += 1;
            stats.handshakes += 1;
            let failure = inner.failures.remove(&addr);
            let check = inner.accounts.check_login(addr, &client_static);
            match (failure, check) {
                (Some(failure), _) => Err(failure),
                (None, Err(_)) => Err(PendingFailure { reason: 401, expire_secs: None, ban_code: None }),
                (None, Ok(())) => {
                    let previous = inner.conn_of(addr).map(|(id, _)| id);
                    if let Some(previous) = previous {
                        // The same credentials connected again: the older socket loses.
                        inner.stats.totals.simultaneous_logins += 1;
                        inner.command(previous, ConnCommand::Close(Some(stream_error_conflict("replaced"))));
                    }
                    if let Some(live) = inner.conns.get_mut(&self.id) {
                        live.device = Some(addr);
                    }
                    inner.stats.totals.count_login(crate::clock::unix_now());
                    inner.stats.device(addr).logins += 1;
                    let lid = inner.accounts.get(addr.phone).map(|a| a.lid).unwrap_or_default();
                    Ok(lid)
                }
            }
        };
        match outcome {
            Ok(lid) => {
                self.device = Some(addr);
                info!(conn = self.id, device = %addr, "device logged in");
                let success = NodeBuilder::new("success")
                    .attr("t", unix_now().to_string())
                    .attr("lid", Jid::lid_device(lid.to_string(), addr.device))
                    .attr("location", "sim")
                    .attr("creation", unix_now().to_string())
                    .build();
                self.send_node(&success).await
            }
            Err(PendingFailure { reason, expire_secs, ban_code }) => {
                {
                    let mut inner = self.state.lock();
                    inner.stats.totals.login_failures += 1;
                    inner.stats.device(addr).login_failures += 1;
                }
                info!(conn = self.id, device = %addr, reason, "login refused");
                let mut failure =
                    NodeBuilder::new("failure").attr("reason", reason.to_string()).attr("location", "sim");
                if let Some(expire) = expire_secs {
                    failure = failure.attr("expire", expire.to_string());
                }
                if let Some(code) = ban_code {
                    failure = failure.attr("code", code.to_string());
                }
                self.send_node(&failure.build()).await?;
                Err(End::ServerClosed("login refused"))
            }
        }
    }

    async fn run(&mut self, inbox: &mut mpsc::UnboundedReceiver<ConnCommand>) -> End {
        loop {
            let stall_ends = self.stalled_until;
            let step = tokio::select! {
                message = self.socket.recv() => self.on_socket(message).await,
                Some(command) = inbox.recv() => self.on_command(command).await,
                _ = sleep_until(stall_ends), if stall_ends.is_some() => self.end_stall().await,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn on_socket(&mut self, message: Option<Result<Message, axum::Error>>) -> Result<(), End> {
        match message {
            None | Some(Ok(Message::Close(_))) => Err(End::ClientClosed),
            Some(Err(e)) => Err(End::Error(format!("socket error: {e}"))),
            Some(Ok(Message::Binary(bytes))) => {
                self.reader.push(&bytes);
                while let Some(raw) = self.reader.next_frame().map_err(wire_end)? {
                    let transport = self.transport.as_mut().expect("running connections have a transport");
                    let node = transport.decrypt_node(raw).map_err(wire_end)?;
                    if self.is_silent() {
                        continue;
                    }
                    if self.stalled_until.is_some() {
                        self.stalled.push(node);
                        continue;
                    }
                    self.on_node(node).await?;
                }
                Ok(())
            }
            Some(Ok(_)) => Ok(()),
        }
    }

    async fn on_command(&mut self, command: ConnCommand) -> Result<(), End> {
        match command {
            ConnCommand::Send(node) if !self.is_silent() => self.send_node(&node).await,
            ConnCommand::Send(_) => Ok(()),
            // A silent connection writes nothing; the stanza stays pending and goes back to
            // the offline queue when the connection ends.
            ConnCommand::Deliver { seq, node } if !self.is_silent() => self.write_relayed(seq, &node).await,
            ConnCommand::Deliver { .. } => Ok(()),
            ConnCommand::Close(node) => {
                if let Some(node) = node {
                    self.send_node(&node).await?;
                }
                let _ = self.socket.send(Message::Close(None)).await;
                Err(End::ServerClosed("closed by the simulator"))
            }
            ConnCommand::Drop => Err(End::ServerClosed("dropped without a word (fault)")),
            ConnCommand::DropAfterNextMessage => {
                info!(conn = self.id, "will drop the connection after the next message (fault)");
                self.drop_after_message = true;
                Ok(())
            }
            ConnCommand::Silence(duration) => {
                info!(conn = self.id, secs = duration.as_secs_f32(), "going silent (fault)");
                self.silent_until = Some(Instant::now() + duration);
                Ok(())
            }
            ConnCommand::Stall(duration) => {
                info!(conn = self.id, secs = duration.as_secs_f32(), "stalling (fault)");
                self.stalled_until = Some(Instant::now() + duration);
                Ok(())
            }
            ConnCommand::PairSuccess { success, addr, reply } => {
                self.send_node(&success.node).await?;
                self.pairing = Pairing::AwaitingSign { success, addr, reply };
                Ok(())
            }
            ConnCommand::PrimaryHello { node, half, addr, reply } => {
                self.send_node(&node).await?;
                self.pairing = Pairing::AwaitingFinish { half, addr, reply };
                Ok(())
            }
        }
    }

    async fn on_node(&mut self, node: Node) -> Result<(), End> {
        debug!(conn = self.id, tag = %node.tag, "received {}", brief(&node));
        if let Pairing::AwaitingSign { success, .. } = &self.pairing {
            if pairing::is_answer_to(&node, success) {
                return self.on_pair_device_sign(&node).await;
            }
        }
        if node.tag == "receipt" {
            self.on_receipt(&node);
            if let Some(reader) = self.device {
                let ack = {
                    let mut inner = self.state.lock();
                    relay::settle_acked(&mut inner, reader, &node);
                    relay::relay_receipt(&mut inner, reader, &node)
                };
                return self.send_node(&ack).await;
            }
            return Ok(());
        }
        if node.tag == "ack" {
            if let Some(device) = self.device {
                relay::settle_acked(&mut self.state.lock(), device, &node);
            }
            return Ok(());
        }
        if node.tag == "message" {
            if let Some(sender) = self.device {
                let ack = relay::relay_message(&mut self.state.lock(), sender, &node);
                return self.send_node(&ack).await;
            }
            return Ok(());
        }
        if node.tag == "presence" || node.tag == "chatstate" {
            if let Some(sender) = self.device {
                crate::presence::on_stanza(&mut self.state.lock(), sender, &node);
            }
            return Ok(());
        }
        if node.tag != "iq" {
            return Ok(());
        }
        let kind = attr(&node, "type").unwrap_or_default();
        if kind == "result" || kind == "error" {
            return Ok(());
        }
        let xmlns = attr(&node, "xmlns").unwrap_or_default();
        if xmlns == "md" {
            if let Some(reg) = child(&node, "link_code_companion_reg") {
                return self.on_link_code(&node, reg).await;
            }
        }
        let context = IqContext { state: &self.state, device: self.device };
        let answer = iq::answer(&context, &node);
        for reply in answer.replies {
            self.send_node(&reply).await?;
        }
        if answer.went_active && !self.offline_sent {
            self.offline_sent = true;
            self.flush_offline().await?;
        }
        if answer.close_as_removed {
            self.send_node(&stream_error_conflict("device_removed")).await?;
            return Err(End::ServerClosed("device removed itself"));
        }
        Ok(())
    }

    fn on_receipt(&mut self, receipt: &Node) {
        let (Some(addr), Some(id)) = (self.device, attr(receipt, "id")) else { return };
        if self.key_share_id.as_deref() != Some(id.as_str()) {
            return;
        }
        self.key_share_id = None;
        let retry = attr(receipt, "type").as_deref() == Some("retry");
        let mut inner = self.state.lock();
        let stats = inner.stats.device(addr);
        if retry {
            stats.key_share_retries += 1;
            warn!(conn = self.id, device = %addr, "the device could not decrypt the phone's app-state key share");
        } else {
            stats.key_shares_received += 1;
        }
    }

    /// Delivers what waited for the device (the phone's app-state key share for a newly
    /// linked device, then the offline queue, which starts with what an earlier connection
    /// delivered and the device never acknowledged), then `<ib><offline count=N/>`, which
    /// whatsapp-rust waits for after `<active/>` (PROTOCOL.md 9); then, for a newly linked
    /// device of a profiled account, the phone's history sync notifications.
    async fn flush_offline(&mut self) -> Result<(), End> {
        let mut delivered = 0;
        if let Some(share) = self.pending_key_share().await {
            self.key_share_id = attr(&share, "id");
            self.send_node(&share).await?;
            delivered += 1;
        }
        let queued = match self.device {
            Some(addr) => relay::take_offline(&mut self.state.lock(), addr, self.id),
            None => Vec::new(),
        };
        for outgoing in queued {
            match outgoing.seq {
                Some(seq) => self.write_relayed(seq, &outgoing.node).await?,
                None => self.send_node(&outgoing.node).await?,
            }
            delivered += 1;
        }
        self.send_node(&iq::offline_marker(delivered)).await?;
        // A phone uploads the history once the device is online, so it comes live, after the
        // offline queue. (Baileys only starts its app-state sync for a history notification
        // that arrives after the end of the offline queue.)
        for notification in self.pending_history().await {
            self.send_node(&notification).await?;
        }
        Ok(())
    }

    /// Writes a relayed message that stays pending until the device acknowledges it.
    async fn write_relayed(&mut self, seq: u64, node: &Node) -> Result<(), End> {
        self.send_node(node).await?;
        if let Some(addr) = self.device {
            let mut inner = self.state.lock();
            inner.outbox.mark_written(addr, seq);
            inner.stats.count_delivered(addr);
        }
        if self.drop_after_message {
            // Nothing more is read from this socket, so the device's ack cannot arrive.
            return Err(End::ServerClosed("dropped right after delivering a message (fault)"));
        }
        Ok(())
    }

    async fn pending_key_share(&mut self) -> Option<Node> {
        let addr = self.device?;
        let (phone_signal, recipient) = {
            let mut inner = self.state.lock();
            let account = inner.accounts.get_mut(addr.phone)?;
            let device = account.devices.get_mut(&addr.device).filter(|d| !d.key_shared)?;
            // A one-time prekey serves one session only: the phone uses it up, as any
            // sender fetching a bundle would.
            let one_time = (!device.signal.prekeys.is_empty()).then(|| device.signal.prekeys.remove(0));
            let mut recipient = account.recipient(&account.devices[&addr.device]);
            recipient.keys.prekeys = one_time.into_iter().collect();
            (account.phone_signal.clone(), recipient)
        };
        let mut phone = phone_signal.lock().await;
        match phone::app_state_key_share(&mut phone, &recipient).await {
            Ok(node) => {
                if let Some(device) = self.state.lock().accounts.device_mut(addr) {
                    device.key_shared = true;
                }
                debug!(conn = self.id, device = %addr, "phone shares its app-state key");
                Some(node)
            }
            Err(e) => {
                warn!(conn = self.id, device = %addr, "the phone could not share its app-state key: {e}");
                None
            }
        }
    }

    /// A profiled account's phone sends a newly linked device the chat history: one
    /// notification per chunk, after its app-state key (the same Signal session).
    async fn pending_history(&mut self) -> Vec<Node> {
        let Some(addr) = self.device else { return Vec::new() };
        let (phone_signal, recipient, profiled) = {
            let inner = self.state.lock();
            let Some(account) = inner.accounts.get(addr.phone) else { return Vec::new() };
            let Some(device) = account.devices.get(&addr.device) else { return Vec::new() };
            let profiled = account.profile.clone().filter(|p| p.profile.history > 0);
            let Some(profiled) = profiled.filter(|_| device.key_shared && !device.history_sent) else {
                return Vec::new();
            };
            (account.phone_signal.clone(), account.recipient(device), profiled)
        };
        // Building the chunks (to announce their hashes) compresses the whole history.
        let media = self.state.media.clone();
        let built = tokio::task::spawn_blocking(move || crate::history::notifications(&media, &profiled)).await;
        let messages = match built {
            Ok(Ok(messages)) => messages,
            Ok(Err(e)) => {
                warn!(conn = self.id, device = %addr, "the phone could not upload the history: {e}");
                return Vec::new();
            }
            Err(e) => {
                warn!(conn = self.id, device = %addr, "building the history failed: {e}");
                return Vec::new();
            }
        };
        let mut nodes = Vec::with_capacity(messages.len());
        {
            let mut phone = phone_signal.lock().await;
            for message in &messages {
                match phone::to_companion(&mut phone, &recipient, message).await {
                    Ok(node) => nodes.push(node),
                    Err(e) => {
                        warn!(conn = self.id, device = %addr, "the phone could not encrypt a history notification: {e}");
                        return Vec::new();
                    }
                }
            }
        }
        let mut inner = self.state.lock();
        if let Some(device) = inner.accounts.device_mut(addr) {
            device.history_sent = true;
        }
        inner.stats.profile.history_notifications_sent += nodes.len() as u64;
        info!(conn = self.id, device = %addr, chunks = nodes.len(), "phone sends the device its chat history");
        nodes
    }

    async fn on_pair_device_sign(&mut self, node: &Node) -> Result<(), End> {
        let Pairing::AwaitingSign { success, addr, reply } = std::mem::replace(&mut self.pairing, Pairing::Idle) else {
            return Ok(());
        };
        match pairing::verify_pair_device_sign(node, &success) {
            Ok(()) => {
                let profiled = {
                    let mut inner = self.state.lock();
                    inner.accounts.confirm(addr);
                    inner.stats.totals.pairings += 1;
                    let stats = inner.stats.device(addr);
                    stats.pairings += 1;
                    stats.connections += 1;
                    stats.handshakes += 1;
                    if let Some(live) = inner.conns.get_mut(&self.id) {
                        live.device = Some(addr);
                    }
                    crate::profile::assign(&mut inner, addr.phone)
                };
                if let Some(profiled) = profiled {
                    crate::trickle::start(&self.state, profiled);
                }
                info!(conn = self.id, device = %addr, "device linked; sending 515 (restart required)");
                let _ = reply.send(Ok(addr));
                self.send_node(&stream_error_code(515)).await?;
                let _ = self.socket.send(Message::Close(None)).await;
                Err(End::ServerClosed("pairing done (515)"))
            }
            Err(e) => {
                warn!(conn = self.id, device = %addr, "pairing failed: {e}");
                self.state.lock().accounts.remove(addr);
                let _ = reply.send(Err(e.to_string()));
                Ok(())
            }
        }
    }

    async fn on_link_code(&mut self, request: &Node, reg: &Node) -> Result<(), End> {
        match attr(reg, "stage").as_deref() {
            Some("companion_hello") => match pair_code::parse_companion_hello(reg) {
                Ok(hello) => {
                    let pairing_ref = format!("2@{}", hex::encode(crate::crypto::random_bytes::<12>())).into_bytes();
                    self.state.lock().codes.insert(
                        hello.phone,
                        PendingCode {
                            conn: self.id,
                            wrapped_companion_ephemeral: hello.wrapped_ephemeral,
                            pairing_ref: pairing_ref.clone(),
                            expires_at: Instant::now() + self.state.config.pair_code_ttl,
                        },
                    );
                    info!(conn = self.id, phone = hello.phone, "client asked to link by pairing code");
                    self.send_node(&pair_code::companion_hello_answer(request, &pairing_ref)).await
                }
                Err(e) => {
                    warn!(conn = self.id, "{e}");
                    self.send_node(&iq_error(request, 400, "bad-request")).await
                }
            },
            Some("companion_finish") => self.on_companion_finish(request, reg).await,
            _ => self.send_node(&iq_result(request, vec![])).await,
        }
    }

    async fn on_companion_finish(&mut self, request: &Node, reg: &Node) -> Result<(), End> {
        let Pairing::AwaitingFinish { half, addr, reply } = std::mem::replace(&mut self.pairing, Pairing::Idle) else {
            return self.send_node(&iq_error(request, 400, "bad-request")).await;
        };
        let built = {
            let inner = self.state.lock();
            let account = inner.accounts.get(addr.phone);
            let device = inner.accounts.device(addr);
            match (account, device) {
                (Some(account), Some(device)) => pair_code::companion_finish(reg, &half, &account.identity)
                    .map(|done| pairing::pair_success(account, device, done.companion_identity, &done.adv_secret))
                    .map_err(|e| e.to_string()),
                _ => Err("the reserved device is gone".to_string()),
            }
        };
        match built {
            Ok(success) => {
                self.send_node(&iq_result(request, vec![])).await?;
                self.send_node(&success.node).await?;
                self.pairing = Pairing::AwaitingSign { success: Box::new(success), addr, reply };
                Ok(())
            }
            Err(e) => {
                warn!(conn = self.id, device = %addr, "pairing by code failed: {e}");
                self.state.lock().accounts.remove(addr);
                let _ = reply.send(Err(e));
                self.send_node(&iq_error(request, 401, "not-authorized")).await
            }
        }
    }

    async fn finish(mut self, end: End) {
        match &end {
            End::ClientClosed => debug!(conn = self.id, "client closed the connection"),
            End::ServerClosed(why) => debug!(conn = self.id, "connection closed: {why}"),
            End::Error(why) => info!(conn = self.id, "closing connection: {why}"),
        }
        let pending = std::mem::replace(&mut self.pairing, Pairing::Idle);
        let mut inner = self.state.lock();
        match pending {
            Pairing::AwaitingFinish { addr, reply, .. } | Pairing::AwaitingSign { addr, reply, .. } => {
                inner.accounts.remove(addr);
                let _ = reply.send(Err("the client disconnected before pairing finished".into()));
            }
            Pairing::Idle => {}
        }
        // The registered device, not `self.device`: a pairing connection is the new device's
        // for a moment before its 515.
        let device = inner.conns.get(&self.id).and_then(|live| live.device);
        if let Some(addr) = device {
            relay::take_back_unacked(&mut inner, addr, self.id);
        }
        inner.forget_conn(self.id);
        if let Some(addr) = device {
            relay::pass_offline_to_live(&mut inner, addr);
        }
    }

    /// Acts on what came in while stalled, in the order it came.
    async fn end_stall(&mut self) -> Result<(), End> {
        self.stalled_until = None;
        info!(conn = self.id, held = self.stalled.len(), "stall over");
        for node in std::mem::take(&mut self.stalled) {
            self.on_node(node).await?;
        }
        Ok(())
    }

    fn is_silent(&mut self) -> bool {
        match self.silent_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                self.silent_until = None;
                info!(conn = self.id, "silence over");
                false
            }
            None => false,
        }
    }

    async fn next_raw_frame(&mut self) -> Result<Vec<u8>, End> {
        loop {
            if let Some(frame) = self.reader.next_frame().map_err(wire_end)? {
                return Ok(frame);
            }
            match self.socket.recv().await {
                None | Some(Ok(Message::Close(_))) => return Err(End::ClientClosed),
                Some(Err(e)) => return Err(End::Error(format!("socket error: {e}"))),
                Some(Ok(Message::Binary(bytes))) => self.reader.push(&bytes),
                Some(Ok(_)) => {}
            }
        }
    }

    async fn send_node(&mut self, node: &Node) -> Result<(), End> {
        debug!(conn = self.id, tag = %node.tag, "sending {}", brief(node));
        let transport = self.transport.as_mut().expect("nodes are only sent after the handshake");
        let bytes = transport.encrypt_node(node).map_err(wire_end)?;
        self.send_raw(bytes).await
    }

    async fn send_raw(&mut self, bytes: Vec<u8>) -> Result<(), End> {
        self.socket.send(Message::Binary(bytes.into())).await.map_err(|e| End::Error(format!("send failed: {e}")))
    }
}

fn wire_end(e: WireError) -> End {
    End::Error(e.to_string())
}

/// A one-line description of a node for logs: tag, attributes, child tags.
fn brief(node: &Node) -> String {
    let attrs: Vec<String> = node.attrs.iter().map(|(k, v)| format!("{k}={}", v.as_str())).collect();
    let kids: Vec<&str> = node.children().unwrap_or_default().iter().map(|c| c.tag.as_ref()).collect();
    format!("<{} {}> [{}]", node.tag, attrs.join(" "), kids.join(","))
}

/// What a pairing client registers: its Noise key, Signal identity and signed prekey.
pub struct Registration {
    pub noise_key: [u8; 32],
    pub platform: String,
    pub signal: SignalKeys,
}

pub fn registration_from(payload: &ClientPayload, noise_key: [u8; 32]) -> Registration {
    let data = payload.device_pairing_data.as_option();
    let be_u32 =
        |bytes: Option<&[u8]>| bytes.map(|b| b.iter().fold(0u32, |acc, x| acc << 8 | u32::from(*x))).unwrap_or(0);
    let signal = SignalKeys {
        registration_id: be_u32(data.and_then(|d| d.e_regid.as_deref())),
        identity: data.and_then(|d| d.e_ident.clone()).unwrap_or_default(),
        signed_prekey: data.and_then(|d| {
            Some(SignedPreKey {
                id: be_u32(d.e_skey_id.as_deref()),
                public: d.e_skey_val.clone()?,
                signature: d.e_skey_sig.clone()?,
            })
        }),
        prekeys: Vec::new(),
    };
    let os = data
        .and_then(|d| d.device_props.as_deref())
        .and_then(|bytes| DeviceProps::decode_from_slice(bytes).ok())
        .and_then(|props| props.os);
    let platform = os.unwrap_or_else(|| {
        payload
            .user_agent
            .as_option()
            .and_then(|ua| ua.platform)
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "unknown".into())
    });
    Registration { noise_key, platform, signal }
}

/// For the control API's answers.
pub fn linked_jids(addr: DeviceAddr, lid: u64) -> (String, String) {
    (addr.to_string(), lid_jid_string(lid, addr.device))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
