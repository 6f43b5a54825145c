//! The trickle: a profiled account's contacts write to it now and then, as customers write to
//! a small business. Each message is Signal-encrypted by the contact to every linked device
//! of the account and goes through the relay like any message (queued for devices that are
//! offline, redelivered until acknowledged). It runs while any device of the account is
//! connected, at the profile's rate with jitter, and ends when the account has no device left.
//!
//! Contacts are not accounts of the simulator and keep no state: a contact's identity key
//! and its session with a device (its base key too) are derived from the account's seed, and
//! only the number of messages it sent the device is stored, so the session can be rebuilt
//! at the right chain step. The device sees what a real contact sends before the device
//! ever answers: `pkmsg` stanzas of one session, counting up.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rand::SeedableRng;
use tracing::{debug, info, warn};
use wacore_binary::builder::NodeBuilder;
use wacore_binary::{Jid, Node};
use wacore_libsignal::protocol::{
    message_encrypt, process_prekey_bundle, IdentityKeyPair, KeyPair, PrivateKey, ProtocolAddress, UsePQRatchet,
};
use waproto::buffa::Message as _;

use crate::clock::unix_now;
use crate::jid::DeviceAddr;
use crate::phone::{bundle_of, enc_node, pad, PhoneError, Recipient, SignalIdentity, SignalSessions};
use crate::profile::{derive_bytes, mix, purpose, ProfiledAccount};
use crate::relay;
use crate::state::SimState;

/// Starts the account's trickle, if its profile has one and it is not running already.
pub fn start(state: &Arc<SimState>, account: Arc<ProfiledAccount>) {
    let rate = account.profile.trickle_per_minute;
    if rate <= 0.0 || account.profile.contacts == 0 || account.trickle_running.swap(true, Ordering::AcqRel) {
        return;
    }
    info!(phone = account.phone, per_minute = rate, "contacts will write to the account while it is online");
    let state = Arc::downgrade(state);
    tokio::spawn(async move {
        run(state, &account).await;
        account.trickle_running.store(false, Ordering::Release);
    });
}

async fn run(state: Weak<SimState>, account: &ProfiledAccount) {
    let mean = Duration::from_secs_f64(60.0 / account.profile.trickle_per_minute);
    for n in 0u64.. {
        // Uniform jitter of ±50 % around the mean, so accounts do not write in step.
        let jitter = (mix(account.seed, purpose::TRICKLE, n) >> 11) as f64 / (1u64 << 53) as f64;
        tokio::time::sleep(mean.mul_f64(0.5 + jitter)).await;
        let Some(state) = state.upgrade() else { return };
        if state.is_stopping() {
            return;
        }
        match send_one(&state, account, n).await {
            Tick::Sent | Tick::Offline => {}
            Tick::Unlinked => {
                info!(phone = account.phone, "the account has no linked device left; its contacts stop writing");
                return;
            }
        }
    }
}

enum Tick {
    Sent,
    /// No device of the account is connected: nobody would read it now.
    Offline,
    Unlinked,
}

async fn send_one(state: &Arc<SimState>, account: &ProfiledAccount, n: u64) -> Tick {
    let recipients: Vec<Recipient> = {
        let inner = state.lock();
        let Some(registered) = inner.accounts.get(account.phone) else { return Tick::Unlinked };
        if registered.devices.is_empty() {
            return Tick::Unlinked;
        }
        let confirmed: Vec<_> = registered.companions().filter(|d| d.confirmed).collect();
        if !confirmed.iter().any(|d| inner.conn_of(registered.addr(d.id)).is_some()) {
            return Tick::Offline;
        }
        confirmed.into_iter().filter(|d| d.signal.signed_prekey.is_some()).map(|d| registered.recipient(d)).collect()
    };
    let contact = (mix(account.seed, purpose::TRICKLE, n ^ 0xC0FFEE) % u64::from(account.profile.contacts)) as u32;
    let id = account.message_id(purpose::TRICKLE, n);
    let text = format!("{} (#{})", account.phrase(n ^ 0x7777), n + 1);
    let mut sent = 0;
    for recipient in recipients {
        let device = DeviceAddr { phone: recipient.phone, device: recipient.device };
        let step = {
            let mut counters = account.trickle_counters.lock().unwrap_or_else(|p| p.into_inner());
            let counter = counters.entry((recipient.device, contact)).or_default();
            *counter += 1;
            *counter - 1
        };
        match contact_message(account, contact, &recipient, step, &id, &text).await {
            Ok(node) => {
                let mut inner = state.lock();
                relay::deliver(&mut inner, device, node);
                inner.stats.profile.trickle_messages_sent += 1;
                sent += 1;
            }
            Err(e) => warn!(device = %device, "a contact could not encrypt its message to the device: {e}"),
        }
    }
    debug!(phone = account.phone, contact, sent, "a contact wrote to the account");
    Tick::Sent
}

/// A key pair derived from the account's seed, the same every time.
fn derived_pair(account: &ProfiledAccount, purpose: u64, contact: u32) -> Result<KeyPair, PhoneError> {
    let secret = derive_bytes::<32>(account.seed, purpose, u64::from(contact));
    let private = PrivateKey::deserialize(&secret).map_err(|e| PhoneError::BadKeys(e.to_string()))?;
    KeyPair::try_from(private).map_err(|e| PhoneError::BadKeys(e.to_string()))
}

fn contact_registration_id(account: &ProfiledAccount, contact: u32) -> u32 {
    (mix(account.seed, purpose::REGISTRATION, u64::from(contact)) & 0x3fff) as u32 + 1
}

/// The contact's identity: derived from the account's seed, the same every time.
fn contact_identity(account: &ProfiledAccount, contact: u32) -> Result<SignalIdentity, PhoneError> {
    let pair = derived_pair(account, purpose::CONTACT_IDENTITY, contact)?;
    Ok(SignalIdentity::new(IdentityKeyPair::from(pair), contact_registration_id(account, contact)))
}

/// The keys a contact's phone (its only device) publishes, so a device of the account can
/// write to a contact that never wrote first: its identity and a signed prekey, derived from
/// the seed; no one-time prekeys, as the contact keeps no state. What is sent to a contact
/// is accepted by the server and goes no further.
pub fn contact_keys(account: &ProfiledAccount, contact: u32) -> Result<crate::accounts::SignalKeys, PhoneError> {
    let identity = derived_pair(account, purpose::CONTACT_IDENTITY, contact)?;
    let signed = derived_pair(account, purpose::CONTACT_SIGNED_PREKEY, contact)?;
    let signature = identity
        .private_key
        .calculate_signature(&signed.public_key.serialize(), &mut rand::rng())
        .map_err(|e| PhoneError::BadKeys(e.to_string()))?;
    Ok(crate::accounts::SignalKeys {
        registration_id: contact_registration_id(account, contact),
        identity: identity.public_key.public_key_bytes().to_vec(),
        signed_prekey: Some(crate::accounts::SignedPreKey {
            id: 1,
            public: signed.public_key.public_key_bytes().to_vec(),
            signature: signature.to_vec(),
        }),
        prekeys: Vec::new(),
    })
}

/// Message `step` (0 the first) of `contact`'s session with the device, as a `<message>`
/// from the contact. The session starts from the device's signed prekey alone (its
/// one-time prekeys are for senders that keep state) with a base key derived from the
/// seed, so the same session comes out every time; earlier steps are replayed to reach
/// `step`'s chain key.
pub async fn contact_message(
    account: &ProfiledAccount,
    contact: u32,
    to: &Recipient,
    step: u32,
    id: &str,
    text: &str,
) -> Result<Node, PhoneError> {
    let mut identity = contact_identity(account, contact)?;
    let mut sessions = SignalSessions::default();
    let address = ProtocolAddress::new(&to.phone.to_string(), u32::from(to.device).into());
    let signed_only =
        Recipient { keys: crate::accounts::SignalKeys { prekeys: Vec::new(), ..to.keys.clone() }, ..to.clone() };
    let bundle = bundle_of(&signed_only)?;
    let signed_id = to.keys.signed_prekey.as_ref().map(|k| u64::from(k.id)).unwrap_or(0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(mix(
        account.seed,
        purpose::CONTACT_BASE_KEY,
        (u64::from(contact) << 32) | (u64::from(to.device) << 16) ^ signed_id,
    ));
    process_prekey_bundle(&address, &mut sessions, &mut identity, &bundle, &mut rng, UsePQRatchet::No).await?;
    for _ in 0..step {
        message_encrypt(&[0], &address, &mut sessions, &mut identity).await?;
    }
    let message = waproto::whatsapp::Message { conversation: Some(text.to_string()), ..Default::default() };
    let encrypted = message_encrypt(&pad(message.encode_to_vec()), &address, &mut sessions, &mut identity).await?;
    let (first_name, _) = account.contact_name(contact);
    Ok(NodeBuilder::new("message")
        .attr("from", Jid::pn(account.contact_phone(contact).to_string()))
        .attr("id", id.to_string())
        .attr("t", unix_now().to_string())
        .attr("type", "text")
        .attr("notify", first_name)
        .children([enc_node(&encrypted)])
        .build())
}
