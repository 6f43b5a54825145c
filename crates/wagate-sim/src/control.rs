//! The control API under `/control/`: the simulated phones (scan, pairing code, unlink),
//! fault injection, and what tests assert on (devices, stats, unhandled iqs).
//!
//! `GET /control/stats` counts, per device and in `totals`, relayed `<message>` stanzas:
//! `delivered` (written to the device, redeliveries included), `acked` (confirmed by the
//! device with a receipt or `<ack class="message">`) and `redelivered` (written, then put
//! back in the offline queue because the connection ended before the device's ack).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tracing::info;

use crate::accounts::LinkError;
use crate::conn::{linked_jids, ConnCommand};
use crate::error::ControlError;
use crate::jid::{lid_jid_string, parse_device_jid, parse_phone, DeviceAddr};
use crate::nodes::{stream_error_code, stream_error_conflict};
use crate::pair_code::{normalize_code, primary_hello};
use crate::pairing::{pair_success, parse_qr};
use crate::profile::{AccountProfile, ProfileOverrides};
use crate::state::{PendingFailure, SimState, UnknownIq};

type Result<T> = std::result::Result<T, ControlError>;

pub fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/control/scan", post(scan))
        .route("/control/pair-code", post(pair_code))
        .route("/control/devices", get(devices))
        .route("/control/unlink", post(unlink))
        .route("/control/fault", post(fault))
        .route("/control/stats", get(stats))
        .route("/control/unknown-iqs", get(unknown_iqs))
        .route("/control/groups", post(create_group))
        .route("/control/profile", post(set_profile))
        .route("/control/account-profile", get(account_profile).post(set_account_profile))
}

/// JSON bodies whose rejections are `{"error": ...}` like every other error.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ControlError;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(ControlError::bad_request(rejection_text(&rejection))),
        }
    }
}

fn rejection_text(rejection: &JsonRejection) -> String {
    format!("invalid JSON body: {}", rejection.body_text())
}

#[derive(Deserialize)]
struct ScanRequest {
    qr: String,
    phone: String,
}

#[derive(Serialize)]
struct Linked {
    jid: String,
    lid: String,
}

fn phone_of(text: &str) -> Result<u64> {
    parse_phone(text).ok_or_else(|| ControlError::bad_request(format!("'{text}' is not a phone number")))
}

async fn scan(State(state): State<Arc<SimState>>, Body(request): Body<ScanRequest>) -> Result<Json<Linked>> {
    let scan = parse_qr(&request.qr).map_err(|e| ControlError::bad_request(e.to_string()))?;
    let phone = phone_of(&request.phone)?;
    let (reply, outcome) = oneshot::channel();
    {
        let mut inner = state.lock();
        let pending = inner
            .refs
            .get(&scan.pairing_ref)
            .ok_or_else(|| ControlError::not_found("no connection is waiting with that QR ref"))?;
        if Instant::now() > pending.expires_at {
            return Err(ControlError::new(StatusCode::GONE, "that QR ref has expired; scan the current one"));
        }
        let conn = pending.conn;
        let live = inner.conns.get(&conn).ok_or_else(|| ControlError::not_found("the connection is gone"))?;
        if live.client_static != Some(scan.noise_key) {
            return Err(ControlError::bad_request("the QR's noise key is not the key of the connection that shows it"));
        }
        let registration =
            live.registration.as_ref().ok_or_else(|| ControlError::not_found("the connection is not pairing"))?;
        let (noise_key, platform, signal) =
            (registration.noise_key, registration.platform.clone(), registration.signal.clone());
        let addr = reserve(&mut inner.accounts, phone, noise_key, platform, signal)?;
        let account = inner.accounts.get(phone).expect("just reserved");
        let device = inner.accounts.device(addr).expect("just reserved");
        let success = pair_success(account, device, scan.identity_key, &scan.adv_secret);
        // One scan per pairing connection: its other refs are spent.
        inner.refs.retain(|_, r| r.conn != conn);
        if !inner.command(conn, ConnCommand::PairSuccess { success: Box::new(success), addr, reply }) {
            inner.accounts.remove(addr);
            return Err(ControlError::not_found("the connection closed"));
        }
        info!(device = %addr, "phone scanned a QR code");
    }
    wait_for_link(&state, outcome).await
}

fn reserve(
    accounts: &mut crate::accounts::Accounts,
    phone: u64,
    noise_key: [u8; 32],
    platform: String,
    signal: crate::accounts::SignalKeys,
) -> Result<DeviceAddr> {
    accounts
        .reserve_companion(phone, noise_key, platform, signal)
        .map_err(|e: LinkError| ControlError::new(StatusCode::CONFLICT, e.to_string()))
}

async fn wait_for_link(
    state: &Arc<SimState>,
    outcome: oneshot::Receiver<std::result::Result<DeviceAddr, String>>,
) -> Result<Json<Linked>> {
    match tokio::time::timeout(state.config.pairing_timeout, outcome).await {
        Ok(Ok(Ok(addr))) => {
            let lid = state.lock().accounts.get(addr.phone).map(|a| a.lid).unwrap_or_default();
            let (jid, lid) = linked_jids(addr, lid);
            Ok(Json(Linked { jid, lid }))
        }
        Ok(Ok(Err(why))) => Err(ControlError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("pairing failed: {why}"))),
        Ok(Err(_)) => Err(ControlError::new(StatusCode::UNPROCESSABLE_ENTITY, "pairing failed: the connection ended")),
        Err(_) => Err(ControlError::new(StatusCode::GATEWAY_TIMEOUT, "the client did not finish pairing in time")),
    }
}

#[derive(Deserialize)]
struct PairCodeRequest {
    phone: String,
    code: String,
}

async fn pair_code(State(state): State<Arc<SimState>>, Body(request): Body<PairCodeRequest>) -> Result<Json<Linked>> {
    let phone = phone_of(&request.phone)?;
    let code = normalize_code(&request.code)
        .ok_or_else(|| ControlError::bad_request("a pairing code is 8 characters like ABCD-EFGH"))?;
    let (conn, wrapped, pairing_ref, identity, addr) = {
        let mut inner = state.lock();
        let pending = inner
            .codes
            .get(&phone)
            .ok_or_else(|| ControlError::not_found("no client asked to link that phone number by code"))?;
        if Instant::now() > pending.expires_at {
            return Err(ControlError::new(StatusCode::GONE, "that pairing request has expired"));
        }
        let (conn, wrapped, pairing_ref) =
            (pending.conn, pending.wrapped_companion_ephemeral.clone(), pending.pairing_ref.clone());
        let registration = inner
            .conns
            .get(&conn)
            .and_then(|c| c.registration.as_ref())
            .ok_or_else(|| ControlError::not_found("the connection is gone"))?;
        let (noise_key, platform, signal) =
            (registration.noise_key, registration.platform.clone(), registration.signal.clone());
        let addr = reserve(&mut inner.accounts, phone, noise_key, platform, signal)?;
        inner.codes.remove(&phone);
        let identity = inner.accounts.get(phone).expect("just reserved").identity.clone();
        (conn, wrapped, pairing_ref, identity, addr)
    };
    // PBKDF2 with 131072 rounds, twice: keep it off the async workers.
    let crypto = tokio::task::spawn_blocking(move || primary_hello(&code, &wrapped, &pairing_ref, &identity)).await;
    let (node, half) = match crypto {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            state.lock().accounts.remove(addr);
            return Err(ControlError::bad_request(e.to_string()));
        }
        Err(e) => {
            state.lock().accounts.remove(addr);
            return Err(ControlError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
        }
    };
    let (reply, outcome) = oneshot::channel();
    let sent = state
        .lock()
        .command(conn, ConnCommand::PrimaryHello { node: Box::new(node), half: Box::new(half), addr, reply });
    if !sent {
        state.lock().accounts.remove(addr);
        return Err(ControlError::not_found("the connection closed"));
    }
    info!(device = %addr, "phone accepted a pairing code");
    wait_for_link(&state, outcome).await
}

#[derive(Serialize)]
struct DeviceView {
    jid: String,
    lid: String,
    connected: bool,
    platform: String,
}

async fn devices(State(state): State<Arc<SimState>>) -> Json<Vec<DeviceView>> {
    let inner = state.lock();
    let views = inner
        .accounts
        .iter()
        .flat_map(|account| {
            account.companions().filter(|d| d.confirmed).map(|device| {
                let addr = account.addr(device.id);
                DeviceView {
                    jid: addr.to_string(),
                    lid: lid_jid_string(account.lid, device.id),
                    connected: inner.conn_of(addr).is_some(),
                    platform: device.platform.clone(),
                }
            })
        })
        .collect();
    Json(views)
}

#[derive(Deserialize)]
struct JidRequest {
    jid: String,
}

fn resolve(state: &SimState, jid: &str) -> Result<DeviceAddr> {
    let parsed =
        parse_device_jid(jid).ok_or_else(|| ControlError::bad_request(format!("'{jid}' is not a device JID")))?;
    state.lock().accounts.resolve(parsed).ok_or_else(|| ControlError::not_found(format!("no linked device {jid}")))
}

async fn unlink(State(state): State<Arc<SimState>>, Body(request): Body<JidRequest>) -> Result<Json<Value>> {
    let addr = resolve(&state, &request.jid)?;
    let mut inner = state.lock();
    let connected = inner.conn_of(addr).map(|(id, _)| id);
    if let Some(conn) = connected {
        inner.command(conn, ConnCommand::Close(Some(stream_error_conflict("device_removed"))));
    }
    inner.accounts.remove(addr);
    inner.failures.remove(&addr);
    info!(device = %addr, "phone unlinked the device");
    Ok(Json(json!({ "jid": addr.to_string(), "was_connected": connected.is_some() })))
}

#[derive(Deserialize)]
struct FaultRequest {
    jid: String,
    kind: String,
    code: Option<u16>,
    seconds: Option<f64>,
    reason: Option<u16>,
    expire: Option<u64>,
}

/// A temporary ban without `expire` lasts an hour; its default reason code 101 is WhatsApp's
/// "sent to too many people".
const DEFAULT_BAN_SECS: u64 = 3600;
const DEFAULT_BAN_CODE: u16 = 101;

/// Reasons a login `<failure>` can carry here (PROTOCOL.md 8).
const FAILURE_REASONS: [u16; 5] = [401, 402, 403, 405, 406];

/// The `seconds` of a fault that lasts: more than 0, at most an hour.
fn fault_duration(request: &FaultRequest, kind: &str) -> Result<Duration> {
    let seconds = request
        .seconds
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
        .ok_or_else(|| ControlError::bad_request(format!("{kind} needs seconds between 0 and 3600")))?;
    Ok(Duration::from_secs_f64(seconds))
}

/// `POST /control/fault {"jid", "kind", ...}`. Kinds that act on the live connection (409
/// when the device has none):
/// - `stream_error` + `code`: `<stream:error code=..>`, then close;
/// - `replaced`: `<stream:error><conflict type="replaced"/>`, then close;
/// - `drop`: close the TCP connection without a word;
/// - `drop_after_next_message`: close the TCP connection without a word right after the
///   next relayed `<message>` is written to the device, before it can acknowledge it; the
///   message comes again, marked `offline`, at its next login;
/// - `silence` + `seconds`: read and write nothing for that long;
/// - `stall` + `seconds`: read what the client sends but act on it (answer, relay, ack)
///   only after that long, in order.
///
/// And one for the next login: `failure` + `reason` (+ `expire`, `code` for a 402).
async fn fault(State(state): State<Arc<SimState>>, Body(request): Body<FaultRequest>) -> Result<Json<Value>> {
    let addr = resolve(&state, &request.jid)?;
    let command = match request.kind.as_str() {
        "stream_error" => {
            let code = request.code.ok_or_else(|| ControlError::bad_request("stream_error needs a code, e.g. 515"))?;
            ConnCommand::Close(Some(stream_error_code(code)))
        }
        "replaced" => ConnCommand::Close(Some(stream_error_conflict("replaced"))),
        "drop" => ConnCommand::Drop,
        "drop_after_next_message" => ConnCommand::DropAfterNextMessage,
        "stall" => ConnCommand::Stall(fault_duration(&request, "stall")?),
        "silence" => ConnCommand::Silence(fault_duration(&request, "silence")?),
        "failure" => {
            let reason = request.reason.filter(|r| FAILURE_REASONS.contains(r)).ok_or_else(|| {
                ControlError::bad_request(format!("failure needs a reason, one of {FAILURE_REASONS:?}"))
            })?;
            // Clients only report a ban with both its length and its reason code.
            let (expire_secs, ban_code) = match reason {
                402 => {
                    (Some(request.expire.unwrap_or(DEFAULT_BAN_SECS)), Some(request.code.unwrap_or(DEFAULT_BAN_CODE)))
                }
                _ => (request.expire, None),
            };
            state.lock().failures.insert(addr, PendingFailure { reason, expire_secs, ban_code });
            info!(device = %addr, reason, "the next login of the device will fail");
            return Ok(Json(json!({ "jid": addr.to_string(), "kind": "failure", "applies": "at the next login" })));
        }
        other => {
            return Err(ControlError::bad_request(format!(
                "unknown fault kind '{other}'; use stream_error, replaced, drop, drop_after_next_message, silence, stall or failure"
            )))
        }
    };
    let inner = state.lock();
    let (conn, _) = inner
        .conn_of(addr)
        .ok_or_else(|| ControlError::new(StatusCode::CONFLICT, format!("{} is not connected", addr)))?;
    inner.command(conn, command);
    info!(device = %addr, kind = %request.kind, "fault injected");
    Ok(Json(json!({ "jid": addr.to_string(), "kind": request.kind, "applies": "now" })))
}

async fn stats(State(state): State<Arc<SimState>>) -> Json<Value> {
    let stats = state.lock().stats.clone();
    let media = state.media.stats();
    let mut body = serde_json::to_value(stats).unwrap_or_default();
    // The blobs the phones built are counted where they are downloaded; they belong with
    // the rest of what profiled accounts cost.
    body["profile"]["history_blobs_served"] = media.history_blobs_served.into();
    body["profile"]["app_state_blobs_served"] = media.app_state_blobs_served.into();
    body["media"] = serde_json::to_value(media).unwrap_or_default();
    Json(body)
}

/// `GET /control/account-profile`: the profile accounts linked from now on get.
async fn account_profile(State(state): State<Arc<SimState>>) -> Json<AccountProfile> {
    Json(state.lock().account_profile.clone())
}

/// `POST /control/account-profile {"preset"?, "contacts"?, "groups"?, "group_size"?,
/// "history"?, "trickle_per_minute"?}`: a preset (else the profile in force) with the given
/// counts replacing its own, for accounts linked from now on. Accounts already linked keep
/// theirs.
async fn set_account_profile(
    State(state): State<Arc<SimState>>,
    Body(overrides): Body<ProfileOverrides>,
) -> Result<Json<AccountProfile>> {
    let mut inner = state.lock();
    let profile = AccountProfile::with_overrides(&inner.account_profile, &overrides)
        .map_err(|e| ControlError::bad_request(e.to_string()))?;
    info!(
        preset = profile.preset,
        contacts = profile.contacts,
        groups = profile.groups,
        group_size = profile.group_size,
        history = profile.history,
        trickle_per_minute = profile.trickle_per_minute,
        "accounts linked from now on get this profile"
    );
    inner.account_profile = profile.clone();
    Ok(Json(profile))
}

#[derive(Serialize)]
struct UnknownIqCount {
    #[serde(flatten)]
    iq: UnknownIq,
    count: u64,
}

async fn unknown_iqs(State(state): State<Arc<SimState>>) -> Json<Vec<UnknownIqCount>> {
    let inner = state.lock();
    Json(inner.unknown_iqs.iter().map(|(iq, count)| UnknownIqCount { iq: iq.clone(), count: *count }).collect())
}

#[derive(Deserialize)]
struct GroupRequest {
    subject: String,
    owner: String,
    #[serde(default)]
    participants: Vec<String>,
}

/// WhatsApp's limit on a group subject, in characters.
const MAX_SUBJECT: usize = 100;

/// Creates a group of accounts the simulator knows (they have linked a device).
async fn create_group(State(state): State<Arc<SimState>>, Body(request): Body<GroupRequest>) -> Result<Json<Value>> {
    let subject = request.subject.trim().to_string();
    if subject.is_empty() || subject.chars().count() > MAX_SUBJECT {
        return Err(ControlError::bad_request(format!("subject must be 1 to {MAX_SUBJECT} characters")));
    }
    let owner = phone_of(&request.owner)?;
    let participants = request.participants.iter().map(|p| phone_of(p)).collect::<Result<Vec<_>>>()?;
    let mut inner = state.lock();
    if let Some(unknown) = std::iter::once(&owner).chain(&participants).find(|p| inner.accounts.get(**p).is_none()) {
        return Err(ControlError::not_found(format!("no account with phone number {unknown}; link a device first")));
    }
    let group = inner.groups.create(subject, owner, &participants).clone();
    info!(group = %group.id, members = group.members.len(), "phone created a group");
    let members: Vec<Value> = group
        .members
        .iter()
        .map(|phone| {
            json!({
                "phone": phone.to_string(),
                "jid": format!("{phone}@s.whatsapp.net"),
                "lid": inner.accounts.get(*phone).map(|a| format!("{}@lid", a.lid)),
                "admin": *phone == group.owner,
            })
        })
        .collect();
    Ok(Json(json!({
        "id": format!("{}@g.us", group.id),
        "subject": group.subject,
        "owner": format!("{}@s.whatsapp.net", group.owner),
        "creation": group.creation,
        "participants": members,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileRequest {
    phone: String,
    #[serde(default)]
    about: Option<String>,
    #[serde(default)]
    picture_url: Option<String>,
}

/// Sets what an account shows others: its about text and its picture's URL (null removes).
async fn set_profile(State(state): State<Arc<SimState>>, Body(request): Body<ProfileRequest>) -> Result<Json<Value>> {
    let phone = phone_of(&request.phone)?;
    let mut inner = state.lock();
    if inner.accounts.get(phone).is_none() {
        return Err(ControlError::not_found(format!("no account with phone number {phone}; link a device first")));
    }
    let profile = inner.profiles.entry(phone).or_default();
    if request.picture_url != profile.picture_url {
        profile.picture_id += 1;
    }
    profile.about = request.about.filter(|a| !a.is_empty());
    profile.picture_url = request.picture_url.filter(|u| !u.is_empty());
    info!(phone, "phone changed its profile");
    Ok(Json(json!({ "phone": phone.to_string(), "about": profile.about, "picture_url": profile.picture_url })))
}
