//! Linking a new companion by QR code (PROTOCOL.md 4): the refs the client shows, what a
//! scan carries, the phone's `pair-success` and the check of the client's `pair-device-sign`.

use base64::Engine;
use buffa::Message;
use wacore_binary::builder::NodeBuilder;
use wacore_binary::{Jid, Node};
use waproto::buffa;
use waproto::whatsapp::{ADVDeviceIdentity, ADVSignedDeviceIdentity, ADVSignedDeviceIdentityHMAC};

use crate::accounts::{Account, Device};
use crate::clock::unix_now;
use crate::crypto::{hmac_sha256, public_bytes, random_bytes, sign, verify};
use crate::nodes::{attr, child, content_bytes, new_stanza_id, server_jid};

/// Clients rotate through this many refs before giving up (PROTOCOL.md 4).
pub const REFS_PER_PAIRING: usize = 6;
/// Signature prefixes of the ADV scheme.
const ACCOUNT_SIGNATURE_PREFIX: [u8; 2] = [6, 0];
const DEVICE_SIGNATURE_PREFIX: [u8; 2] = [6, 1];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QrError {
    #[error("the QR text does not have the form ref,noiseKey,identityKey,advSecret[,platform]")]
    Shape,
    #[error("the QR's {0} is not base64 of 32 bytes")]
    Key(&'static str),
}

/// What the phone reads from a QR code.
#[derive(Debug, Clone)]
pub struct QrScan {
    pub pairing_ref: String,
    pub noise_key: [u8; 32],
    pub identity_key: [u8; 32],
    pub adv_secret: [u8; 32],
}

/// Parses `ref,noise,identity,adv[,platform]`, with or without a
/// `https://wa.me/settings/linked_devices#` prefix.
pub fn parse_qr(text: &str) -> Result<QrScan, QrError> {
    let body = text.trim().rsplit('#').next().unwrap_or_default();
    let parts: Vec<&str> = body.split(',').collect();
    if parts.len() < 4 || parts[..4].iter().any(|p| p.is_empty()) {
        return Err(QrError::Shape);
    }
    let key = |text: &str, name: &'static str| -> Result<[u8; 32], QrError> {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(QrError::Key(name))
    };
    Ok(QrScan {
        pairing_ref: parts[0].to_string(),
        noise_key: key(parts[1], "noise key")?,
        identity_key: key(parts[2], "identity key")?,
        adv_secret: key(parts[3], "ADV secret")?,
    })
}

/// Six fresh refs, in the shape WhatsApp uses (`2@` and opaque text).
pub fn new_refs() -> Vec<String> {
    (0..REFS_PER_PAIRING)
        .map(|_| format!("2@{}", base64::engine::general_purpose::STANDARD.encode(random_bytes::<24>())))
        .collect()
}

pub fn pair_device_iq(refs: &[String]) -> Node {
    let ref_nodes = refs.iter().map(|r| NodeBuilder::new("ref").bytes(r.as_bytes().to_vec()).build());
    NodeBuilder::new("iq")
        .attr("from", server_jid())
        .attr("type", "set")
        .attr("id", new_stanza_id())
        .attr("xmlns", "md")
        .children([NodeBuilder::new("pair-device").children(ref_nodes).build()])
        .build()
}

/// A `pair-success` sent to a client, and what is needed to check its answer.
pub struct PairSuccess {
    pub node: Node,
    pub iq_id: String,
    /// The encoded `ADVDeviceIdentity` the client must sign.
    pub device_details: Vec<u8>,
    pub account_key: [u8; 32],
    pub client_identity: [u8; 32],
}

/// Builds the phone's `pair-success` for `device` of `account`: the device identity signed
/// by the phone's identity key, wrapped in an HMAC keyed with the ADV secret the client
/// shared (in the QR or through the pairing-code exchange).
pub fn pair_success(account: &Account, device: &Device, client_identity: [u8; 32], adv_secret: &[u8]) -> PairSuccess {
    let device_details = ADVDeviceIdentity {
        raw_id: Some(account.raw_id),
        timestamp: Some(unix_now()),
        key_index: Some(device.key_index),
        ..Default::default()
    }
    .encode_to_vec();
    let account_key: [u8; 32] = public_bytes(&account.identity).try_into().expect("curve keys are 32 bytes");
    let account_signature =
        sign(&account.identity, &[&ACCOUNT_SIGNATURE_PREFIX[..], &device_details, &client_identity].concat());
    let signed = ADVSignedDeviceIdentity {
        details: Some(device_details.clone()),
        account_signature_key: Some(account_key.to_vec()),
        account_signature: Some(account_signature.to_vec()),
        ..Default::default()
    }
    .encode_to_vec();
    let hmac = hmac_sha256(adv_secret, &[&signed]);
    let container =
        ADVSignedDeviceIdentityHMAC { details: Some(signed), hmac: Some(hmac.to_vec()), ..Default::default() }
            .encode_to_vec();
    let iq_id = new_stanza_id();
    let node = NodeBuilder::new("iq")
        .attr("from", server_jid())
        .attr("type", "set")
        .attr("id", iq_id.clone())
        .attr("t", unix_now().to_string())
        .children([NodeBuilder::new("pair-success")
            .children([
                NodeBuilder::new("device-identity").bytes(container).build(),
                NodeBuilder::new("platform").attr("name", "android").build(),
                NodeBuilder::new("device")
                    .attr("jid", Jid::pn_device(account.phone.to_string(), device.id))
                    .attr("lid", Jid::lid_device(account.lid.to_string(), device.id))
                    .build(),
                // The business name becomes the client's push name.
                NodeBuilder::new("biz").attr("name", format!("Sim {}", account.phone)).build(),
            ])
            .build()])
        .build();
    PairSuccess { node, iq_id, device_details, account_key, client_identity }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("the client refused the pairing: {0}")]
    ClientRefused(String),
    #[error("the client's pair-device-sign is malformed: {0}")]
    Malformed(&'static str),
    #[error("the client signed other device details than the phone sent")]
    OtherDetails,
    #[error("the client's device signature does not verify")]
    BadSignature,
}

/// Is `node` the client's answer to our pair-success?
pub fn is_answer_to(node: &Node, pair: &PairSuccess) -> bool {
    node.tag == "iq" && attr(node, "id").as_deref() == Some(pair.iq_id.as_str())
}

/// Checks the client's `pair-device-sign`: its device signature over
/// `06 01 || details || client identity || account key`.
pub fn verify_pair_device_sign(node: &Node, pair: &PairSuccess) -> Result<(), SignError> {
    if attr(node, "type").as_deref() == Some("error") {
        let text = child(node, "error")
            .map(|e| format!("{} {}", attr(e, "code").unwrap_or_default(), attr(e, "text").unwrap_or_default()))
            .unwrap_or_else(|| "error".into());
        return Err(SignError::ClientRefused(text));
    }
    let identity = child(node, "pair-device-sign")
        .and_then(|n| child(n, "device-identity"))
        .ok_or(SignError::Malformed("no pair-device-sign/device-identity"))?;
    let bytes = content_bytes(identity).ok_or(SignError::Malformed("device-identity has no bytes"))?;
    let signed = ADVSignedDeviceIdentity::decode_from_slice(bytes)
        .map_err(|_| SignError::Malformed("not an ADVSignedDeviceIdentity"))?;
    if signed.details.as_deref() != Some(pair.device_details.as_slice()) {
        return Err(SignError::OtherDetails);
    }
    let signature = signed.device_signature.as_deref().ok_or(SignError::Malformed("no device signature"))?;
    let message =
        [&DEVICE_SIGNATURE_PREFIX[..], &pair.device_details, &pair.client_identity, &pair.account_key].concat();
    if verify(&pair.client_identity, &message, signature) {
        Ok(())
    } else {
        Err(SignError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_text_parses_with_and_without_prefix() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let plain = format!("2@abc,{key},{key},{key},9");
        let scan = parse_qr(&plain).unwrap();
        assert_eq!(scan.pairing_ref, "2@abc");
        assert_eq!(scan.noise_key, [7; 32]);
        let prefixed = format!("https://wa.me/settings/linked_devices#{plain}");
        assert_eq!(parse_qr(&prefixed).unwrap().pairing_ref, "2@abc");
        assert_eq!(parse_qr("a,b").unwrap_err(), QrError::Shape);
        assert_eq!(parse_qr(&format!("r,{key},short,{key}")).unwrap_err(), QrError::Key("identity key"));
    }

    #[test]
    fn refs_are_distinct() {
        let refs = new_refs();
        assert_eq!(refs.len(), REFS_PER_PAIRING);
        let unique: std::collections::HashSet<_> = refs.iter().collect();
        assert_eq!(unique.len(), REFS_PER_PAIRING);
    }
}
