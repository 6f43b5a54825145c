//! The simulator's key material: a test root (stands in for WhatsApp's root key), the
//! intermediate and leaf certificates it signs, and the server's Noise static key.

use std::path::Path;

use buffa::Message;
use serde::{Deserialize, Serialize};
use wacore_libsignal::protocol::{KeyPair, PrivateKey};
use waproto::buffa;
use waproto::whatsapp::cert_chain::{noise_certificate, NoiseCertificate};
use waproto::whatsapp::CertChain;

use crate::crypto::{generate_key_pair, public_bytes, sign};
use crate::error::SimError;

/// Serial numbers of the chain. whatsmeow checks `intermediate.issuerSerial == 0` (the root)
/// and `leaf.issuerSerial == intermediate.serial`.
const ROOT_SERIAL: u32 = 0;
const INTERMEDIATE_SERIAL: u32 = 1;
const LEAF_SERIAL: u32 = 2;
/// Certificates are valid from an hour ago for 30 days: clients that cache the chain for
/// Noise IK need a `notAfter` in the future.
const VALID_BEFORE_NOW_SECS: i64 = 3600;
const VALID_FOR_SECS: i64 = 30 * 24 * 3600;

/// The on-disk form of a persistent test root key (`--root-key FILE`).
#[derive(Serialize, Deserialize)]
struct RootKeyFile {
    public: String,
    private: String,
}

pub struct ServerKeys {
    root: KeyPair,
    /// The Noise static key whose public half is the certificate chain's leaf key.
    pub noise_static: KeyPair,
    /// The encoded `CertChain` sent (encrypted) in every XX/IK server hello.
    pub cert_chain: Vec<u8>,
}

impl ServerKeys {
    /// New keys with a fresh root (nothing on disk).
    pub fn generate() -> Self {
        Self::with_root(generate_key_pair())
    }

    /// Loads the root key pair from `path`, or creates it there (mode 0600) if absent.
    pub fn load_or_create(path: &Path) -> Result<Self, SimError> {
        let root = if path.exists() {
            let text = std::fs::read_to_string(path)
                .map_err(|e| SimError::RootKey(format!("cannot read {}: {e}", path.display())))?;
            let file: RootKeyFile = serde_json::from_str(&text)
                .map_err(|e| SimError::RootKey(format!("{} is not a root key file: {e}", path.display())))?;
            let private =
                hex::decode(&file.private).map_err(|e| SimError::RootKey(format!("private key is not hex: {e}")))?;
            let private =
                PrivateKey::deserialize(&private).map_err(|e| SimError::RootKey(format!("bad private key: {e}")))?;
            let pair = KeyPair::try_from(private).map_err(|e| SimError::RootKey(e.to_string()))?;
            if hex::encode(public_bytes(&pair)) != file.public.to_lowercase() {
                return Err(SimError::RootKey(format!(
                    "{}: the public key does not belong to the private key",
                    path.display()
                )));
            }
            pair
        } else {
            let pair = generate_key_pair();
            let file = RootKeyFile {
                public: hex::encode(public_bytes(&pair)),
                private: hex::encode(pair.private_key.serialize()),
            };
            let text = serde_json::to_string_pretty(&file).expect("root key file serializes");
            write_private_file(path, text.as_bytes())
                .map_err(|e| SimError::RootKey(format!("cannot write {}: {e}", path.display())))?;
            pair
        };
        Ok(Self::with_root(root))
    }

    fn with_root(root: KeyPair) -> Self {
        let intermediate = generate_key_pair();
        let noise_static = generate_key_pair();
        let now = crate::clock::unix_now() as i64;
        let not_before = (now - VALID_BEFORE_NOW_SECS) as u64;
        let not_after = (now + VALID_FOR_SECS) as u64;
        let intermediate_cert =
            certificate(&root, INTERMEDIATE_SERIAL, ROOT_SERIAL, public_bytes(&intermediate), not_before, not_after);
        let leaf_cert = certificate(
            &intermediate,
            LEAF_SERIAL,
            INTERMEDIATE_SERIAL,
            public_bytes(&noise_static),
            not_before,
            not_after,
        );
        let chain = CertChain {
            leaf: buffa::MessageField::some(leaf_cert),
            intermediate: buffa::MessageField::some(intermediate_cert),
        };
        Self { root, noise_static, cert_chain: chain.encode_to_vec() }
    }

    pub fn root_public_hex(&self) -> String {
        hex::encode(public_bytes(&self.root))
    }
}

fn certificate(
    issuer: &KeyPair,
    serial: u32,
    issuer_serial: u32,
    key: &[u8],
    not_before: u64,
    not_after: u64,
) -> NoiseCertificate {
    let details = noise_certificate::Details {
        serial: Some(serial),
        issuer_serial: Some(issuer_serial),
        key: Some(key.to_vec()),
        not_before: Some(not_before),
        not_after: Some(not_after),
    }
    .encode_to_vec();
    let signature = sign(issuer, &details);
    NoiseCertificate { details: Some(details), signature: Some(signature.to_vec()) }
}

fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use buffa::Message;
    use waproto::whatsapp::cert_chain::noise_certificate::Details;

    use super::*;
    use crate::crypto::verify;

    /// The checks whatsmeow makes on a server's chain (PROTOCOL.md 3).
    #[test]
    fn the_chain_passes_whatsmeows_checks() {
        let keys = ServerKeys::generate();
        let root_public = hex::decode(keys.root_public_hex()).unwrap();
        let chain = CertChain::decode_from_slice(&keys.cert_chain).unwrap();
        let intermediate = chain.intermediate.as_option().unwrap();
        let leaf = chain.leaf.as_option().unwrap();
        let intermediate_details = Details::decode_from_slice(intermediate.details.as_deref().unwrap()).unwrap();
        let leaf_details = Details::decode_from_slice(leaf.details.as_deref().unwrap()).unwrap();

        assert!(verify(
            &root_public,
            intermediate.details.as_deref().unwrap(),
            intermediate.signature.as_deref().unwrap()
        ));
        assert_eq!(intermediate_details.issuer_serial, Some(0));
        let intermediate_key = intermediate_details.key.as_deref().unwrap();
        assert!(verify(intermediate_key, leaf.details.as_deref().unwrap(), leaf.signature.as_deref().unwrap()));
        assert_eq!(leaf_details.issuer_serial, intermediate_details.serial);
        assert_eq!(leaf_details.key.as_deref(), Some(public_bytes(&keys.noise_static)));
        let now = crate::clock::unix_now();
        for details in [&intermediate_details, &leaf_details] {
            assert!(details.not_before.unwrap() < now && now < details.not_after.unwrap());
        }
        // And a signature by another key does not pass.
        assert!(!verify(
            public_bytes(&keys.noise_static),
            intermediate.details.as_deref().unwrap(),
            intermediate.signature.as_deref().unwrap()
        ));
    }

    #[test]
    fn a_root_key_file_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.json");
        let first = ServerKeys::load_or_create(&path).unwrap();
        let again = ServerKeys::load_or_create(&path).unwrap();
        assert_eq!(first.root_public_hex(), again.root_public_hex());

        std::fs::write(&path, r#"{"public": "00", "private": "zz"}"#).unwrap();
        assert!(matches!(ServerKeys::load_or_create(&path), Err(SimError::RootKey(_))));
    }
}
