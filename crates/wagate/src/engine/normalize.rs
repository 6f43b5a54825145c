//! whatsapp-rust's inbound messages and receipts in wagate's own shape.

use wacore::proto_helpers::MessageExt;
use wacore::types::events::Receipt;
use wacore::types::message::MessageInfo;
use wacore::types::presence::ReceiptType;
use waproto::whatsapp as wa;
use waproto::whatsapp::message::protocol_message;

use super::content::{direct_path_problem, Contact, InboundMedia, Location, MediaKind, MediaRef};
use super::{phone_of_jid, DeliveryState, Inbound};

/// The kind of a message and its text or caption; `None` for protocol traffic that is not
/// a message a person sent (key shares, sender-key distribution, history sync ...).
fn classify(message: &wa::Message) -> Option<(&'static str, Option<String>, Option<String>)> {
    let message = message.get_base_message();
    let caption = message.get_caption().map(str::to_string);
    let quoted = |context: Option<&wa::ContextInfo>| context.and_then(|c| c.stanza_id.clone());
    if let Some(protocol) = message.protocol_message.as_option() {
        return match protocol.r#type {
            Some(protocol_message::Type::REVOKE) => {
                Some(("revoke", None, protocol.key.as_option().and_then(|k| k.id.clone())))
            }
            Some(protocol_message::Type::MESSAGE_EDIT) => {
                let text = protocol.edited_message.as_option().and_then(|m| m.text_content().map(str::to_string));
                Some(("edit", text, protocol.key.as_option().and_then(|k| k.id.clone())))
            }
            _ => None,
        };
    }
    if let Some(reaction) = message.reaction_message.as_option() {
        return Some(("reaction", reaction.text.clone(), reaction.key.as_option().and_then(|k| k.id.clone())));
    }
    if let Some(text) = message.conversation.as_ref() {
        return Some(("text", Some(text.clone()), None));
    }
    if let Some(extended) = message.extended_text_message.as_option() {
        return Some(("text", extended.text.clone(), quoted(extended.context_info.as_option())));
    }
    if let Some(image) = message.image_message.as_option() {
        return Some(("image", caption, quoted(image.context_info.as_option())));
    }
    if let Some(video) = message.video_message.as_option() {
        return Some(("video", caption, quoted(video.context_info.as_option())));
    }
    if let Some(audio) = message.audio_message.as_option() {
        let kind = if audio.ptt == Some(true) { "voice" } else { "audio" };
        return Some((kind, None, quoted(audio.context_info.as_option())));
    }
    if let Some(document) = message.document_message.as_option() {
        return Some(("document", caption, quoted(document.context_info.as_option())));
    }
    if message.document_with_caption_message.is_set() {
        return Some(("document", caption, None));
    }
    if message.sticker_message.is_set() {
        return Some(("sticker", None, None));
    }
    if let Some(location) = message.location_message.as_option() {
        return Some(("location", location.name.clone().or(location.address.clone()), None));
    }
    if let Some(contact) = message.contact_message.as_option() {
        return Some(("contact", contact.display_name.clone(), None));
    }
    if message.contacts_array_message.is_set() {
        return Some(("contact", None, None));
    }
    if let Some(poll) = message.poll_creation_message.as_option() {
        return Some(("poll", poll.name.clone(), None));
    }
    if message.sender_key_distribution_message.is_set() || message.message_context_info.is_set() {
        return None;
    }
    Some(("unknown", None, None))
}

/// The fields every media message type has, borrowed from whichever one a message holds.
struct CdnFile<'a> {
    kind: MediaKind,
    direct_path: &'a Option<String>,
    media_key: &'a Option<Vec<u8>>,
    file_sha256: &'a Option<Vec<u8>>,
    file_enc_sha256: &'a Option<Vec<u8>>,
    file_length: Option<u64>,
    mimetype: &'a Option<String>,
    filename: Option<&'a String>,
}

macro_rules! cdn_file {
    ($kind:expr, $m:expr, $filename:expr) => {
        CdnFile {
            kind: $kind,
            direct_path: &$m.direct_path,
            media_key: &$m.media_key,
            file_sha256: &$m.file_sha256,
            file_enc_sha256: &$m.file_enc_sha256,
            file_length: $m.file_length,
            mimetype: &$m.mimetype,
            filename: $filename,
        }
    };
}

/// The CDN location and keys of the file a message carries, with what events show of it.
fn media_of(message: &wa::Message) -> Option<InboundMedia> {
    let message = message.get_base_message();
    let captioned_document = message
        .document_with_caption_message
        .as_option()
        .and_then(|wrapper| wrapper.message.as_option())
        .and_then(|inner| inner.document_message.as_option());
    let file = if let Some(m) = message.image_message.as_option() {
        cdn_file!(MediaKind::Image, m, None)
    } else if let Some(m) = message.video_message.as_option() {
        cdn_file!(MediaKind::Video, m, None)
    } else if let Some(m) = message.audio_message.as_option() {
        cdn_file!(MediaKind::Audio, m, None)
    } else if let Some(m) = message.document_message.as_option().or(captioned_document) {
        cdn_file!(MediaKind::Document, m, m.file_name.as_ref().or(m.title.as_ref()))
    } else if let Some(m) = message.sticker_message.as_option() {
        cdn_file!(MediaKind::Sticker, m, None)
    } else {
        return None;
    };
    let file_sha256 = file.file_sha256.clone()?;
    let direct_path = file.direct_path.clone()?;
    // The message still arrives, with what it says of its file, but the file is never
    // fetched: `download` refuses such a reference (see `MediaRef::check_downloadable`).
    if let Some(problem) = direct_path_problem(&direct_path) {
        tracing::warn!(
            kind = file.kind.as_str(),
            "received media with an invalid direct path ({problem}): it will not be downloaded"
        );
    }
    Some(InboundMedia {
        mimetype: file.mimetype.clone(),
        filename: file.filename.cloned(),
        size: file.file_length.unwrap_or(0),
        sha256: hex::encode(&file_sha256),
        url: None,
        location: MediaRef {
            kind: file.kind,
            direct_path,
            media_key: file.media_key.clone()?,
            file_sha256,
            file_enc_sha256: file.file_enc_sha256.clone()?,
            file_length: file.file_length.unwrap_or(0),
        },
    })
}

fn location_of(message: &wa::Message) -> Option<Location> {
    let location = message.get_base_message().location_message.as_option()?;
    Some(Location {
        latitude: location.degrees_latitude?,
        longitude: location.degrees_longitude?,
        name: location.name.clone(),
        address: location.address.clone(),
    })
}

fn contact_of(message: &wa::Message) -> Option<Contact> {
    let contact = message.get_base_message().contact_message.as_option()?;
    Some(Contact { display_name: contact.display_name.clone().unwrap_or_default(), vcard: contact.vcard.clone()? })
}

pub fn inbound(message: &wa::Message, info: &MessageInfo) -> Option<Inbound> {
    let (kind, text, quoted_id) = classify(message)?;
    let sender = info.source.sender.to_string();
    let sender_alt = info.source.sender_alt.as_ref().map(|j| j.to_string());
    let (sender_phone, sender_lid) = if sender.ends_with("@lid") {
        (sender_alt.as_deref().and_then(phone_of_jid), Some(non_device(&sender)))
    } else {
        (phone_of_jid(&sender), sender_alt.map(|l| non_device(&l)))
    };
    let chat = info.source.chat.to_string();
    let is_group = info.source.is_group;
    Some(Inbound {
        id: info.id.clone(),
        group_id: is_group.then(|| chat.split('@').next().unwrap_or_default().to_string()),
        group_subject: None,
        chat,
        sender: non_device(&sender),
        sender_phone,
        sender_lid,
        push_name: Some(info.push_name.clone()).filter(|n| !n.is_empty()),
        timestamp: info.timestamp.timestamp(),
        reaction: (kind == "reaction").then(|| text.clone()).flatten(),
        text: if kind == "reaction" { None } else { text },
        kind: kind.to_string(),
        is_group,
        quoted_text: quoted_id.as_ref().and_then(|_| quoted_text(message)),
        quoted_id,
        media: media_of(message),
        location: location_of(message),
        contact: contact_of(message),
        from_me: info.source.is_from_me,
        offline: info.is_offline,
    })
}

/// The text (or caption) of the message a reply quotes: a reply carries a copy of it.
fn quoted_text(message: &wa::Message) -> Option<String> {
    let message = message.get_base_message();
    let context = [
        message.extended_text_message.as_option().and_then(|m| m.context_info.as_option()),
        message.image_message.as_option().and_then(|m| m.context_info.as_option()),
        message.video_message.as_option().and_then(|m| m.context_info.as_option()),
        message.audio_message.as_option().and_then(|m| m.context_info.as_option()),
        message.document_message.as_option().and_then(|m| m.context_info.as_option()),
    ]
    .into_iter()
    .flatten()
    .next()?;
    let quoted = context.quoted_message.as_option()?;
    quoted.text_content().or_else(|| quoted.get_caption()).map(str::to_string)
}

/// `user:device@server` -> `user@server`.
pub fn non_device(jid: &str) -> String {
    match jid.split_once('@') {
        Some((user, server)) => format!("{}@{server}", user.split(':').next().unwrap_or(user)),
        None => jid.to_string(),
    }
}

/// The delivery state a receipt reports, for receipts about messages this session sent.
pub fn receipt_state(receipt: &Receipt) -> Option<DeliveryState> {
    match receipt.r#type {
        ReceiptType::Delivered => Some(DeliveryState::Delivered),
        ReceiptType::Read => Some(DeliveryState::Read),
        ReceiptType::Played => Some(DeliveryState::Played),
        _ => None,
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_recognised() {
        let text = wa::Message { conversation: Some("hi".into()), ..Default::default() };
        assert_eq!(classify(&text), Some(("text", Some("hi".into()), None)));
        let voice = wa::Message {
            audio_message: waproto::buffa::MessageField::some(wa::message::AudioMessage {
                ptt: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(classify(&voice).unwrap().0, "voice");
        let key_share = wa::Message {
            protocol_message: waproto::buffa::MessageField::some(wa::message::ProtocolMessage {
                r#type: Some(protocol_message::Type::APP_STATE_SYNC_KEY_SHARE),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(classify(&key_share), None, "protocol traffic is not a message");
        assert_eq!(non_device("1555:3@s.whatsapp.net"), "1555@s.whatsapp.net");
    }

    fn document(direct_path: &str) -> wa::Message {
        wa::Message {
            document_message: waproto::buffa::MessageField::some(wa::message::DocumentMessage {
                url: Some("https://127.0.0.1:9/u".into()),
                direct_path: Some(direct_path.into()),
                media_key: Some(vec![1; 32]),
                file_sha256: Some(vec![2; 32]),
                file_enc_sha256: Some(vec![3; 32]),
                file_length: Some(1234),
                mimetype: Some("application/pdf".into()),
                file_name: Some("a.pdf".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn media_with_a_crafted_direct_path_arrives_but_is_not_downloadable() {
        let good = media_of(&document("/v/t62/ok.enc?ccb=1")).expect("media");
        assert_eq!(good.location.check_downloadable(), Ok(()));
        for bad in ["@127.0.0.1:9/x", "//127.0.0.1:9/z", ".x@127.0.0.1:9/y", "https://evil/x"] {
            let media = media_of(&document(bad)).expect("the message still shows its file");
            assert_eq!(media.filename.as_deref(), Some("a.pdf"));
            assert_eq!(media.size, 1234);
            let refused = media.location.check_downloadable().unwrap_err();
            assert!(refused.contains("invalid direct path"), "{bad}: {refused}");
        }
    }
}
