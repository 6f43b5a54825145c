//! The simulated phone as a Signal party. A real phone shares its app-state sync key with a
//! newly linked device at once, as a Signal message from device 0; clients wait up to 10 s
//! for it after pairing (PROTOCOL.md 9). This module holds the phone's sessions and builds
//! that message.

use std::collections::HashMap;

use buffa::Message as _;
use wacore_binary::builder::NodeBuilder;
use wacore_binary::{Jid, Node};
use wacore_libsignal::protocol::{
    message_encrypt, process_prekey_bundle, CiphertextMessage, Direction, IdentityChange, IdentityKey, IdentityKeyPair,
    IdentityKeyStore, KeyPair, PreKeyBundle, ProtocolAddress, PublicKey, SessionRecord, SessionStore,
    SignalProtocolError, UsePQRatchet,
};
use waproto::buffa;
use waproto::whatsapp::message::{
    protocol_message, AppStateSyncKey, AppStateSyncKeyData, AppStateSyncKeyFingerprint, AppStateSyncKeyId,
    AppStateSyncKeyShare, ProtocolMessage,
};

use crate::accounts::SignalKeys;
use crate::clock::unix_now;
use crate::crypto::random_bytes;
use crate::nodes::new_stanza_id;

type Result<T> = std::result::Result<T, SignalProtocolError>;

/// The phone's Signal state: its identity (the account identity key) and its sessions with
/// the account's companion devices.
pub struct PhoneSignal {
    identity: SignalIdentity,
    sessions: SignalSessions,
    /// The app-state sync key the phone hands to every companion.
    app_state_key_id: Vec<u8>,
    app_state_key: [u8; 32],
}

/// The two stores libsignal wants as separate `&mut`, for any simulated Signal party that
/// sends to companions (the phone, and the contacts of a profiled account).
pub struct SignalIdentity {
    pair: IdentityKeyPair,
    registration_id: u32,
    known: HashMap<ProtocolAddress, IdentityKey>,
}

impl SignalIdentity {
    pub fn new(pair: IdentityKeyPair, registration_id: u32) -> Self {
        Self { pair, registration_id, known: HashMap::new() }
    }
}

#[derive(Default)]
pub struct SignalSessions(HashMap<ProtocolAddress, SessionRecord>);

impl PhoneSignal {
    /// `app_state_key` is the account's (key id, key data).
    pub fn new(identity: &KeyPair, registration_id: u32, app_state_key: (Vec<u8>, [u8; 32])) -> Self {
        Self {
            identity: SignalIdentity::new(IdentityKeyPair::from(identity.clone()), registration_id),
            sessions: SignalSessions::default(),
            app_state_key_id: app_state_key.0,
            app_state_key: app_state_key.1,
        }
    }
}

#[async_trait::async_trait]
impl IdentityKeyStore for SignalIdentity {
    async fn get_identity_key_pair(&self) -> Result<IdentityKeyPair> {
        Ok(self.pair.clone())
    }

    async fn get_local_registration_id(&self) -> Result<u32> {
        Ok(self.registration_id)
    }

    async fn save_identity(&mut self, address: &ProtocolAddress, identity: &IdentityKey) -> Result<IdentityChange> {
        let previous = self.known.insert(address.clone(), *identity);
        Ok(match previous {
            Some(old) if old != *identity => IdentityChange::ReplacedExisting,
            _ => IdentityChange::NewOrUnchanged,
        })
    }

    async fn is_trusted_identity(&self, _: &ProtocolAddress, _: &IdentityKey, _: Direction) -> Result<bool> {
        // The phone trusts its own companions (it just linked them), and the simulated
        // contacts trust whoever they write to.
        Ok(true)
    }

    async fn get_identity(&self, address: &ProtocolAddress) -> Result<Option<IdentityKey>> {
        Ok(self.known.get(address).copied())
    }
}

#[async_trait::async_trait]
impl SessionStore for SignalSessions {
    async fn load_session(&self, address: &ProtocolAddress) -> Result<Option<SessionRecord>> {
        Ok(self.0.get(address).cloned())
    }

    async fn has_session(&self, address: &ProtocolAddress) -> Result<bool> {
        Ok(self.0.contains_key(address))
    }

    async fn store_session(&mut self, address: &ProtocolAddress, record: SessionRecord) -> Result<()> {
        self.0.insert(address.clone(), record);
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PhoneError {
    #[error("the device has not registered a signed prekey")]
    NoSignedPreKey,
    #[error("the device's keys are malformed: {0}")]
    BadKeys(String),
    #[error("signal: {0}")]
    Signal(#[from] SignalProtocolError),
}

/// Everything needed to encrypt to one companion, copied out of the registry so the
/// encryption can run without holding its lock.
#[derive(Clone)]
pub struct Recipient {
    pub phone: u64,
    pub device: u16,
    pub raw_id: u32,
    pub key_index: u32,
    pub keys: SignalKeys,
}

/// Encrypts the app-state key share to a companion and wraps it in the `<message>` stanza
/// the phone would send.
pub async fn app_state_key_share(phone: &mut PhoneSignal, to: &Recipient) -> std::result::Result<Node, PhoneError> {
    let message = key_share_message(phone, to);
    to_companion(phone, to, &message).await
}

/// Encrypts a message of the phone's to one of its companions (a protocol message: key
/// share, history sync notification) and wraps it in the `<message>` stanza the phone sends.
pub async fn to_companion(
    phone: &mut PhoneSignal,
    to: &Recipient,
    message: &waproto::whatsapp::Message,
) -> std::result::Result<Node, PhoneError> {
    let address = ProtocolAddress::new(&to.phone.to_string(), u32::from(to.device).into());
    if !phone.sessions.0.contains_key(&address) {
        let bundle = bundle_of(to)?;
        // A Send generator: this runs inside a connection task.
        let mut rng = rand::make_rng::<rand::rngs::StdRng>();
        process_prekey_bundle(&address, &mut phone.sessions, &mut phone.identity, &bundle, &mut rng, UsePQRatchet::No)
            .await?;
    }
    let plaintext = pad(message.encode_to_vec());
    let encrypted = message_encrypt(&plaintext, &address, &mut phone.sessions, &mut phone.identity).await?;
    Ok(NodeBuilder::new("message")
        .attr("from", Jid::pn(to.phone.to_string()))
        .attr("id", new_stanza_id())
        .attr("t", unix_now().to_string())
        .attr("type", "text")
        .attr("category", "peer")
        .children([enc_node(&encrypted)])
        .build())
}

/// `<enc v="2" type="pkmsg|msg">`: a Signal message as it travels.
pub fn enc_node(encrypted: &CiphertextMessage) -> Node {
    let kind = match encrypted {
        CiphertextMessage::PreKeySignalMessage(_) => "pkmsg",
        _ => "msg",
    };
    NodeBuilder::new("enc").attr("v", "2").attr("type", kind).bytes(encrypted.serialize().to_vec()).build()
}

pub fn bundle_of(to: &Recipient) -> std::result::Result<PreKeyBundle, PhoneError> {
    let signed = to.keys.signed_prekey.as_ref().ok_or(PhoneError::NoSignedPreKey)?;
    let key =
        |bytes: &[u8]| PublicKey::from_djb_public_key_bytes(bytes).map_err(|e| PhoneError::BadKeys(e.to_string()));
    let one_time = match to.keys.prekeys.first() {
        Some(prekey) => Some((prekey.id.into(), key(&prekey.public)?)),
        None => None,
    };
    Ok(PreKeyBundle::new(
        to.keys.registration_id,
        u32::from(to.device).into(),
        one_time,
        signed.id.into(),
        key(&signed.public)?,
        signed.signature.clone(),
        IdentityKey::new(key(&to.keys.identity)?),
    )?)
}

fn key_share_message(phone: &PhoneSignal, to: &Recipient) -> waproto::whatsapp::Message {
    let key = AppStateSyncKey {
        key_id: buffa::MessageField::some(AppStateSyncKeyId { key_id: Some(phone.app_state_key_id.clone()) }),
        key_data: buffa::MessageField::some(AppStateSyncKeyData {
            key_data: Some(phone.app_state_key.to_vec()),
            fingerprint: buffa::MessageField::some(AppStateSyncKeyFingerprint {
                raw_id: Some(to.raw_id),
                current_index: Some(to.key_index),
                device_indexes: vec![0, to.key_index],
            }),
            timestamp: Some(unix_now() as i64 * 1000),
        }),
    };
    waproto::whatsapp::Message {
        protocol_message: buffa::MessageField::some(ProtocolMessage {
            r#type: Some(protocol_message::Type::APP_STATE_SYNC_KEY_SHARE),
            app_state_sync_key_share: buffa::MessageField::some(AppStateSyncKeyShare { keys: vec![key] }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// WhatsApp pads every plaintext with 1-16 bytes, each holding the pad length.
pub fn pad(mut plaintext: Vec<u8>) -> Vec<u8> {
    let n = (random_bytes::<1>()[0] % 16) + 1;
    plaintext.extend(std::iter::repeat_n(n, usize::from(n)));
    plaintext
}
