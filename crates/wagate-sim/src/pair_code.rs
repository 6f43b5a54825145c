//! Linking by phone number (PROTOCOL.md 9): the phone's half of the `link_code_companion_reg`
//! exchange. The client sends its ephemeral key wrapped with the 8-character code; the user
//! types the code on the phone (here: `POST /control/pair-code`); both sides then derive the
//! ADV secret that keys the usual `pair-success`.

use wacore::crypto::hkdf_sha256_into;
use wacore::pair_code::PairCodeUtils;
use wacore_binary::builder::NodeBuilder;
use wacore_binary::Node;
use wacore_libsignal::crypto::aes_256_gcm_decrypt;
use wacore_libsignal::protocol::KeyPair;

use crate::crypto::{agree, generate_key_pair, public_bytes};
use crate::jid::parse_phone;
use crate::nodes::{attr, child, child_bytes, iq_result, new_stanza_id, server_jid};

const BUNDLE_KEY_INFO: &[u8] = b"link_code_pairing_key_bundle_encryption_key";
const ADV_SECRET_INFO: &[u8] = b"adv_secret";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodeError {
    #[error("the link_code_companion_reg request is malformed: {0}")]
    Malformed(&'static str),
    #[error("the code does not match the one the client showed")]
    WrongCode,
}

/// A client's `companion_hello`: it wants to link to `phone` and shows a code.
pub struct CompanionHello {
    pub phone: u64,
    pub wrapped_ephemeral: Vec<u8>,
}

pub fn parse_companion_hello(reg: &Node) -> Result<CompanionHello, CodeError> {
    let jid = attr(reg, "jid").ok_or(CodeError::Malformed("no jid"))?;
    let phone =
        parse_phone(jid.split('@').next().unwrap_or_default()).ok_or(CodeError::Malformed("jid is not a phone"))?;
    let wrapped = child_bytes(reg, "link_code_pairing_wrapped_companion_ephemeral_pub")
        .ok_or(CodeError::Malformed("no wrapped companion ephemeral"))?;
    if wrapped.len() != 80 {
        return Err(CodeError::Malformed("wrapped companion ephemeral is not 80 bytes"));
    }
    Ok(CompanionHello { phone, wrapped_ephemeral: wrapped.to_vec() })
}

pub fn companion_hello_answer(request: &Node, pairing_ref: &[u8]) -> Node {
    iq_result(
        request,
        vec![NodeBuilder::new("link_code_companion_reg")
            .children([NodeBuilder::new("link_code_pairing_ref").bytes(pairing_ref.to_vec()).build()])
            .build()],
    )
}

/// The phone's state between `primary_hello` and the client's `companion_finish`.
pub struct PhoneHalf {
    primary_ephemeral: KeyPair,
    companion_ephemeral: [u8; 32],
}

/// The phone unwraps the client's ephemeral with the typed code and answers with its own,
/// wrapped the same way. A wrong code is only noticed later, when the key bundle does not
/// open.
pub fn primary_hello(
    code: &str,
    wrapped_companion_ephemeral: &[u8],
    pairing_ref: &[u8],
    phone_identity: &KeyPair,
) -> Result<(Node, PhoneHalf), CodeError> {
    let companion_ephemeral = PairCodeUtils::decrypt_primary_ephemeral_pub(wrapped_companion_ephemeral, code)
        .map_err(|_| CodeError::Malformed("wrapped companion ephemeral"))?;
    let primary_ephemeral = generate_key_pair();
    let primary_public: [u8; 32] = public_bytes(&primary_ephemeral).try_into().expect("32-byte key");
    let wrapped_primary = PairCodeUtils::encrypt_ephemeral_pub(&primary_public, code);
    let node = NodeBuilder::new("notification")
        .attr("from", server_jid())
        .attr("type", "link_code_companion_reg")
        .attr("id", new_stanza_id())
        .children([NodeBuilder::new("link_code_companion_reg")
            .attr("stage", "primary_hello")
            .children([
                NodeBuilder::new("link_code_pairing_wrapped_primary_ephemeral_pub")
                    .bytes(wrapped_primary.to_vec())
                    .build(),
                NodeBuilder::new("primary_identity_pub").bytes(public_bytes(phone_identity).to_vec()).build(),
                NodeBuilder::new("link_code_pairing_ref").bytes(pairing_ref.to_vec()).build(),
            ])
            .build()])
        .build();
    Ok((node, PhoneHalf { primary_ephemeral, companion_ephemeral }))
}

/// What the phone learns from `companion_finish`.
pub struct Finished {
    pub companion_identity: [u8; 32],
    pub adv_secret: [u8; 32],
}

/// Opens the client's key bundle (`salt 32 | iv 12 | AES-GCM`) and derives the ADV secret.
pub fn companion_finish(reg: &Node, half: &PhoneHalf, phone_identity: &KeyPair) -> Result<Finished, CodeError> {
    if child(reg, "link_code_pairing_wrapped_key_bundle").is_none() {
        return Err(CodeError::Malformed("no wrapped key bundle"));
    }
    let bundle = child_bytes(reg, "link_code_pairing_wrapped_key_bundle").unwrap_or_default();
    if bundle.len() < 32 + 12 + 16 {
        return Err(CodeError::Malformed("key bundle too short"));
    }
    let ephemeral_shared = agree(&half.primary_ephemeral, &half.companion_ephemeral).ok_or(CodeError::WrongCode)?;
    let mut bundle_key = [0u8; 32];
    hkdf_sha256_into(&ephemeral_shared, Some(&bundle[..32]), BUNDLE_KEY_INFO, &mut bundle_key)
        .map_err(|_| CodeError::Malformed("bundle key"))?;
    let iv: [u8; 12] = bundle[32..44].try_into().expect("12 bytes");
    let mut plain = Vec::new();
    // With a wrong code the two sides hold different ephemerals, so this fails.
    aes_256_gcm_decrypt(&bundle_key, &iv, b"", &bundle[44..], &mut plain).map_err(|_| CodeError::WrongCode)?;
    if plain.len() != 96 {
        return Err(CodeError::Malformed("key bundle is not 96 bytes"));
    }
    let companion_identity: [u8; 32] = plain[..32].try_into().expect("32 bytes");
    if &plain[32..64] != public_bytes(phone_identity) {
        return Err(CodeError::Malformed("key bundle names another primary identity"));
    }
    let identity_shared =
        agree(phone_identity, &companion_identity).ok_or(CodeError::Malformed("companion identity"))?;
    let mut adv_secret = [0u8; 32];
    hkdf_sha256_into(
        &[&ephemeral_shared[..], &identity_shared, &plain[64..96]].concat(),
        None,
        ADV_SECRET_INFO,
        &mut adv_secret,
    )
    .map_err(|_| CodeError::Malformed("adv secret"))?;
    Ok(Finished { companion_identity, adv_secret })
}

/// Codes are shown as `ABCD-EFGH`; the phone ignores the dash and case.
pub fn normalize_code(code: &str) -> Option<String> {
    let code: String = code.chars().filter(|c| *c != '-' && !c.is_whitespace()).collect::<String>().to_uppercase();
    PairCodeUtils::validate_code(&code).then_some(code)
}
