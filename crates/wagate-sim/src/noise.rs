//! The server side of WhatsApp's Noise handshake: XX for first contact, IK when the client
//! already knows our static key, and XXfallback when it holds a stale one (PROTOCOL.md 2, 9).

use buffa::Message;
use wacore_binary::consts::{NOISE_PATTERN_IK, NOISE_PATTERN_XX, NOISE_PATTERN_XXFALLBACK};
use wacore_libsignal::protocol::KeyPair;
use wacore_noise::{NoiseCipher, NoiseHandshake};
use waproto::buffa;
use waproto::whatsapp::handshake_message::ServerHello;
use waproto::whatsapp::{ClientPayload, HandshakeMessage};

use crate::crypto::{generate_key_pair, public_bytes};
use crate::keys::ServerKeys;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the handshake message is not a valid protobuf: {0}")]
    Decode(String),
    #[error("the handshake message lacks {0}")]
    Missing(&'static str),
    #[error("a key has the wrong length")]
    KeyLength,
    #[error("noise: {0}")]
    Noise(#[from] wacore_noise::HandshakeError),
}

/// Which handshake pattern a connection used; reported in logs and stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Xx,
    Ik,
    XxFallback,
}

/// A finished handshake: the transport ciphers and who the client says it is.
pub struct Established {
    pub read: NoiseCipher,
    pub write: NoiseCipher,
    pub client_static: [u8; 32],
    pub payload: ClientPayload,
    pub pattern: Pattern,
}

/// An XX (or XXfallback) handshake waiting for the client's finish message.
pub struct AwaitingFinish {
    noise: NoiseHandshake,
    server_ephemeral: KeyPair,
    pattern: Pattern,
}

pub enum HelloOutcome {
    Established(Box<Established>),
    AwaitingFinish(Box<AwaitingFinish>),
}

/// Answers the client's first handshake frame. Returns the server hello to send and what
/// comes next.
pub fn respond_to_hello(
    keys: &ServerKeys,
    prologue: &[u8],
    frame: &[u8],
) -> Result<(Vec<u8>, HelloOutcome), HandshakeError> {
    let hello = HandshakeMessage::decode_from_slice(frame)
        .map_err(|e| HandshakeError::Decode(e.to_string()))?
        .client_hello
        .into_option()
        .ok_or(HandshakeError::Missing("clientHello"))?;
    let client_ephemeral = to_key(hello.ephemeral.as_deref().ok_or(HandshakeError::Missing("ephemeral"))?)?;
    match (hello.r#static.as_deref(), hello.payload.as_deref()) {
        (Some(encrypted_static), Some(encrypted_payload))
            if !encrypted_static.is_empty() && !encrypted_payload.is_empty() =>
        {
            match try_ik(keys, prologue, &client_ephemeral, encrypted_static, encrypted_payload)? {
                Some(result) => Ok(result),
                // The client holds a static key that is not ours (we restarted with new
                // keys): continue as XXfallback, which reuses the ephemeral it already sent.
                None => xx_hello(keys, prologue, &client_ephemeral, Pattern::XxFallback),
            }
        }
        _ => xx_hello(keys, prologue, &client_ephemeral, Pattern::Xx),
    }
}

fn xx_hello(
    keys: &ServerKeys,
    prologue: &[u8],
    client_ephemeral: &[u8; 32],
    pattern: Pattern,
) -> Result<(Vec<u8>, HelloOutcome), HandshakeError> {
    let name = if pattern == Pattern::XxFallback { NOISE_PATTERN_XXFALLBACK } else { NOISE_PATTERN_XX };
    let mut noise = NoiseHandshake::new(name, prologue)?;
    noise.authenticate(client_ephemeral);
    let server_ephemeral = generate_key_pair();
    noise.authenticate(public_bytes(&server_ephemeral));
    noise.mix_shared_secret(server_ephemeral.private_key.serialize(), client_ephemeral)?;
    let encrypted_static = noise.encrypt(public_bytes(&keys.noise_static))?;
    noise.mix_shared_secret(keys.noise_static.private_key.serialize(), client_ephemeral)?;
    let encrypted_chain = noise.encrypt(&keys.cert_chain)?;
    let hello = server_hello(public_bytes(&server_ephemeral), Some(encrypted_static), encrypted_chain);
    Ok((hello, HelloOutcome::AwaitingFinish(Box::new(AwaitingFinish { noise, server_ephemeral, pattern }))))
}

/// Runs the IK responder. `Ok(None)` when the client's static key was encrypted to a server
/// key other than ours.
fn try_ik(
    keys: &ServerKeys,
    prologue: &[u8],
    client_ephemeral: &[u8; 32],
    encrypted_static: &[u8],
    encrypted_payload: &[u8],
) -> Result<Option<(Vec<u8>, HelloOutcome)>, HandshakeError> {
    let mut noise = NoiseHandshake::new(NOISE_PATTERN_IK, prologue)?;
    noise.authenticate(public_bytes(&keys.noise_static));
    noise.authenticate(client_ephemeral);
    noise.mix_shared_secret(keys.noise_static.private_key.serialize(), client_ephemeral)?;
    let Ok(client_static) = noise.decrypt(encrypted_static) else {
        return Ok(None);
    };
    let client_static = to_key(&client_static)?;
    noise.mix_shared_secret(keys.noise_static.private_key.serialize(), &client_static)?;
    let payload = noise.decrypt(encrypted_payload)?;
    let payload = ClientPayload::decode_from_slice(&payload).map_err(|e| HandshakeError::Decode(e.to_string()))?;
    let server_ephemeral = generate_key_pair();
    noise.authenticate(public_bytes(&server_ephemeral));
    noise.mix_shared_secret(server_ephemeral.private_key.serialize(), client_ephemeral)?;
    noise.mix_shared_secret(server_ephemeral.private_key.serialize(), &client_static)?;
    let encrypted_chain = noise.encrypt(&keys.cert_chain)?;
    let hello = server_hello(public_bytes(&server_ephemeral), None, encrypted_chain);
    let (read, write) = noise.finish()?;
    Ok(Some((
        hello,
        HelloOutcome::Established(Box::new(Established { read, write, client_static, payload, pattern: Pattern::Ik })),
    )))
}

impl AwaitingFinish {
    /// Reads the client's finish message (its static key and login payload).
    pub fn finish(mut self, frame: &[u8]) -> Result<Established, HandshakeError> {
        let finish = HandshakeMessage::decode_from_slice(frame)
            .map_err(|e| HandshakeError::Decode(e.to_string()))?
            .client_finish
            .into_option()
            .ok_or(HandshakeError::Missing("clientFinish"))?;
        let client_static = self.noise.decrypt(finish.r#static.as_deref().ok_or(HandshakeError::Missing("static"))?)?;
        let client_static = to_key(&client_static)?;
        self.noise.mix_shared_secret(self.server_ephemeral.private_key.serialize(), &client_static)?;
        let payload = self.noise.decrypt(finish.payload.as_deref().ok_or(HandshakeError::Missing("payload"))?)?;
        let payload = ClientPayload::decode_from_slice(&payload).map_err(|e| HandshakeError::Decode(e.to_string()))?;
        let (read, write) = self.noise.finish()?;
        Ok(Established { read, write, client_static, payload, pattern: self.pattern })
    }
}

fn server_hello(ephemeral: &[u8], encrypted_static: Option<Vec<u8>>, payload: Vec<u8>) -> Vec<u8> {
    HandshakeMessage {
        server_hello: buffa::MessageField::some(ServerHello {
            ephemeral: Some(ephemeral.to_vec()),
            r#static: encrypted_static,
            payload: Some(payload),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn to_key(bytes: &[u8]) -> Result<[u8; 32], HandshakeError> {
    bytes.try_into().map_err(|_| HandshakeError::KeyLength)
}
