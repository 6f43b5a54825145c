//! Everything the simulator shares between connections and the control API, behind one
//! lock that is never held across an await.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::accounts::Accounts;
use crate::conn::ConnCommand;
use crate::jid::DeviceAddr;
use crate::keys::ServerKeys;
use crate::media::MediaStore;
use crate::profile::AccountProfile;

pub type ConnId = u64;

/// Tunables; the defaults are WhatsApp's.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How long the first QR ref stays valid (clients show it for 60 s).
    pub first_ref_ttl: Duration,
    /// How long each later ref stays valid (clients show each for 20 s).
    pub next_ref_ttl: Duration,
    /// How long a phone-number pairing code may be typed in after it was requested.
    pub pair_code_ttl: Duration,
    /// How long a control call waits for the client to finish pairing.
    pub pairing_timeout: Duration,
    /// What accounts linked from the start get besides their devices (contacts, groups,
    /// history, app state, inbound trickle); empty by default. `POST
    /// /control/account-profile` changes it for accounts linked later.
    pub account_profile: AccountProfile,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            first_ref_ttl: Duration::from_secs(60),
            next_ref_ttl: Duration::from_secs(20),
            pair_code_ttl: Duration::from_secs(180),
            pairing_timeout: Duration::from_secs(30),
            account_profile: AccountProfile::empty(),
        }
    }
}

/// A live socket and what it is.
pub struct LiveConn {
    pub commands: mpsc::UnboundedSender<ConnCommand>,
    /// Set once the connection logged in (or finished pairing) as this device.
    pub device: Option<DeviceAddr>,
    /// The client's Noise static key, known after the handshake.
    pub client_static: Option<[u8; 32]>,
    /// For a client waiting to be linked: the keys it will register.
    pub registration: Option<crate::conn::Registration>,
    /// Set once this connection took its device's offline queue: what is queued for the
    /// device later has to be handed to it directly, or it would wait for the next login.
    pub offline_flushed: bool,
}

/// A QR ref handed to a pairing connection.
pub struct PendingRef {
    pub conn: ConnId,
    pub expires_at: Instant,
}

/// A phone-number pairing request (`companion_hello`) waiting for the code to be typed.
pub struct PendingCode {
    pub conn: ConnId,
    pub wrapped_companion_ephemeral: Vec<u8>,
    pub pairing_ref: Vec<u8>,
    pub expires_at: Instant,
}

/// A fault to apply the next time a device logs in.
#[derive(Debug, Clone)]
pub struct PendingFailure {
    pub reason: u16,
    /// For a temporary ban (402): how long it lasts and why (WhatsApp's ban reason code).
    pub expire_secs: Option<u64>,
    pub ban_code: Option<u16>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// WebSocket connections accepted.
    pub connections: u64,
    /// Noise handshakes completed, and how many of them were IK (resumed with a cached
    /// server key) or XXfallback (the client's cached key was stale).
    pub handshakes: u64,
    pub ik_handshakes: u64,
    pub xx_fallback_handshakes: u64,
    pub handshake_failures: u64,
    /// Handshakes by unregistered clients (waiting for a QR scan or a code).
    pub pairing_connections: u64,
    pub pairings: u64,
    pub logins: u64,
    pub login_failures: u64,
    /// Logins of a device while another socket of it was live (the older one was closed with
    /// a `replaced` conflict): two clients fighting over one account.
    pub simultaneous_logins: u64,
    /// Relayed `<message>` stanzas, summed over devices (see [`DeviceStats`]).
    pub delivered: u64,
    pub acked: u64,
    pub redelivered: u64,
    /// Logins in each second (unix time) of the last hour with any: a gateway's paced
    /// reconnects after a restart show here.
    pub logins_per_second: BTreeMap<u64, u64>,
}

/// Seconds [`Totals::logins_per_second`] keeps.
const LOGIN_SECONDS_KEPT: usize = 3600;

impl Totals {
    pub fn count_login(&mut self, unix_second: u64) {
        self.logins += 1;
        *self.logins_per_second.entry(unix_second).or_default() += 1;
        while self.logins_per_second.len() > LOGIN_SECONDS_KEPT {
            self.logins_per_second.pop_first();
        }
    }
}

/// Per device JID. A socket counts for a device once its handshake says who it is (for a
/// pairing socket: once it has paired).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceStats {
    pub connections: u64,
    pub handshakes: u64,
    pub logins: u64,
    pub login_failures: u64,
    pub pairings: u64,
    /// The phone's app-state key shares the device confirmed with a receipt (it could
    /// decrypt them), and those it asked to be re-sent (it could not).
    pub key_shares_received: u64,
    pub key_share_retries: u64,
    /// Relayed `<message>` stanzas written to the device, redeliveries included (the
    /// phone's own key share is not relayed and not counted).
    pub delivered: u64,
    /// Stanzas the device acknowledged, by `<ack class="message">` or by a `<receipt>`.
    pub acked: u64,
    /// Written stanzas put back in the offline queue because the connection ended before
    /// the device acknowledged them.
    pub redelivered: u64,
}

/// What the phones of profiled accounts sent (the media host adds the blobs it served).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProfileStats {
    /// `HISTORY_SYNC_NOTIFICATION`s written to devices (one per history chunk).
    pub history_notifications_sent: u64,
    /// `w:sync:app:state` answers carrying a collection snapshot, or a patch.
    pub app_state_snapshots_served: u64,
    pub app_state_patches_served: u64,
    /// Messages from contacts handed to the relay, one per device.
    pub trickle_messages_sent: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub totals: Totals,
    pub devices: BTreeMap<String, DeviceStats>,
    pub profile: ProfileStats,
}

impl Stats {
    pub fn device(&mut self, addr: DeviceAddr) -> &mut DeviceStats {
        self.devices.entry(addr.to_string()).or_default()
    }

    pub fn count_delivered(&mut self, addr: DeviceAddr) {
        self.totals.delivered += 1;
        self.device(addr).delivered += 1;
    }

    pub fn count_acked(&mut self, addr: DeviceAddr, stanzas: u64) {
        self.totals.acked += stanzas;
        self.device(addr).acked += stanzas;
    }

    pub fn count_redelivered(&mut self, addr: DeviceAddr, stanzas: u64) {
        self.totals.redelivered += stanzas;
        self.device(addr).redelivered += stanzas;
    }
}

/// An iq the simulator answered with a plain empty result because it has no handler for it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnknownIq {
    pub xmlns: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub child: String,
}

#[derive(Default)]
pub struct Inner {
    pub accounts: Accounts,
    pub conns: HashMap<ConnId, LiveConn>,
    pub refs: HashMap<String, PendingRef>,
    /// By phone number, as the phone routes `primary_hello` by number.
    pub codes: HashMap<u64, PendingCode>,
    pub failures: HashMap<DeviceAddr, PendingFailure>,
    /// Stanzas waiting for devices that are offline, flushed at their next login.
    pub offline: HashMap<DeviceAddr, std::collections::VecDeque<wacore_binary::Node>>,
    /// Stanzas handed to connections and not yet acknowledged by their devices.
    pub outbox: crate::outbox::Outbox,
    pub groups: crate::groups::Groups,
    pub stats: Stats,
    pub unknown_iqs: BTreeMap<UnknownIq, u64>,
    pub presence: crate::presence::Presence,
    pub profiles: crate::profiles::Profiles,
    /// The account profile in force: what accounts linked from now on get.
    pub account_profile: AccountProfile,
    /// Profiled accounts by the nine digits their contacts' numbers carry (see
    /// [`crate::profile::ProfiledAccount::contact_phone`]), to find a contact's account.
    pub contact_books: HashMap<u64, Arc<crate::profile::ProfiledAccount>>,
    next_conn: ConnId,
}

impl Inner {
    pub fn new_conn_id(&mut self) -> ConnId {
        self.next_conn += 1;
        self.next_conn
    }

    /// A contact of a profiled account, by phone number: its account and index.
    pub fn contact(&self, phone: u64) -> Option<(Arc<crate::profile::ProfiledAccount>, u32)> {
        let (book, index) = crate::profile::ProfiledAccount::contact_book_of(phone)?;
        let account = self.contact_books.get(&book)?;
        (index < account.profile.contacts).then(|| (account.clone(), index))
    }

    /// The live connection logged in as `addr`, if any.
    pub fn conn_of(&self, addr: DeviceAddr) -> Option<(ConnId, &LiveConn)> {
        self.conns.iter().find(|(_, c)| c.device == Some(addr)).map(|(id, c)| (*id, c))
    }

    /// Tells a connection to do something; false when it is gone.
    pub fn command(&self, conn: ConnId, command: ConnCommand) -> bool {
        self.conns.get(&conn).map(|c| c.commands.send(command).is_ok()).unwrap_or(false)
    }

    /// Drops every trace of a closed connection.
    pub fn forget_conn(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        self.refs.retain(|_, r| r.conn != conn);
        self.codes.retain(|_, c| c.conn != conn);
    }
}

pub struct SimState {
    pub keys: ServerKeys,
    pub config: SimConfig,
    pub media: Arc<MediaStore>,
    inner: Mutex<Inner>,
    /// Set when the simulator stops: background work (trickles) ends.
    stopping: AtomicBool,
}

impl SimState {
    pub fn new(keys: ServerKeys, config: SimConfig, media: Arc<MediaStore>) -> Arc<Self> {
        let inner = Inner { account_profile: config.account_profile.clone(), ..Inner::default() };
        Arc::new(Self { keys, config, media, inner: Mutex::new(inner), stopping: AtomicBool::new(false) })
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock must not take the whole simulator down with it.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
