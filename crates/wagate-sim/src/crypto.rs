//! Small wrappers over the curve and hash primitives the simulator needs, so the protocol
//! modules read as protocol, not as key juggling.

use hmac::{KeyInit, Mac};
use rand::RngExt;
use sha2::Sha256;
use wacore_libsignal::protocol::{KeyPair, PublicKey};

pub fn generate_key_pair() -> KeyPair {
    KeyPair::generate(&mut rand::rng())
}

/// The 32-byte Curve25519 public key (without Signal's 0x05 type prefix).
pub fn public_bytes(pair: &KeyPair) -> &[u8] {
    pair.public_key.public_key_bytes()
}

/// XEdDSA signature by `pair` over `message`.
pub fn sign(pair: &KeyPair, message: &[u8]) -> [u8; 64] {
    pair.private_key.calculate_signature(message, &mut rand::rng()).expect("a Curve25519 private key always signs")
}

/// Checks an XEdDSA signature by the 32-byte public key `public`.
pub fn verify(public: &[u8], message: &[u8], signature: &[u8]) -> bool {
    PublicKey::from_djb_public_key_bytes(public).map(|key| key.verify_signature(message, signature)).unwrap_or(false)
}

/// X25519 agreement between our `pair` and a 32-byte public key; `None` for a malformed key.
pub fn agree(pair: &KeyPair, their_public: &[u8]) -> Option<[u8; 32]> {
    let theirs = PublicKey::from_djb_public_key_bytes(their_public).ok()?;
    pair.private_key.calculate_agreement(&theirs).ok()
}

pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::rng().fill(&mut out[..]);
    out
}

pub fn random_u32() -> u32 {
    rand::rng().random()
}
