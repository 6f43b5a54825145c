//! Outgoing messages as the library's protobufs. Media arrive here already uploaded: the
//! message carries where the encrypted file is and the key to open it.

use waproto::buffa::MessageField;
use waproto::whatsapp as wa;
use waproto::whatsapp::message as m;
use whatsapp_rust::upload::UploadResponse;

use super::content::{Content, MediaKind, MediaUpload, MessageRef};

/// WhatsApp's MIME type for voice notes; phones only play those as voice notes.
pub const VOICE_MIMETYPE: &str = "audio/ogg; codecs=opus";

/// The protobuf for `content`; `uploaded` is the CDN answer for its media, `own_jid` who
/// this session is (a reply to one of its own messages names it as the author).
pub fn message(
    content: &Content,
    reply_to: Option<&MessageRef>,
    uploaded: Option<UploadResponse>,
    own_jid: &str,
    now_ms: i64,
) -> wa::Message {
    let context = || context_info(reply_to, own_jid);
    match content {
        Content::Text(text) if reply_to.is_none() => {
            wa::Message { conversation: Some(text.clone()), ..Default::default() }
        }
        Content::Text(text) => wa::Message {
            extended_text_message: MessageField::some(m::ExtendedTextMessage {
                text: Some(text.clone()),
                context_info: context(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Content::Media(media) => match uploaded {
            Some(uploaded) => media_message(media, uploaded, context()),
            None => wa::Message::default(),
        },
        Content::Location(location) => wa::Message {
            location_message: MessageField::some(m::LocationMessage {
                degrees_latitude: Some(location.latitude),
                degrees_longitude: Some(location.longitude),
                name: location.name.clone(),
                address: location.address.clone(),
                context_info: context(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Content::Contact(contact) => wa::Message {
            contact_message: MessageField::some(m::ContactMessage {
                display_name: Some(contact.display_name.clone()),
                vcard: Some(contact.vcard.clone()),
                context_info: context(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Content::Reaction { target, emoji } => wa::Message {
            reaction_message: MessageField::some(m::ReactionMessage {
                key: MessageField::some(wa::MessageKey {
                    remote_jid: Some(target.chat.clone()),
                    from_me: Some(target.from_me()),
                    id: Some(target.id.clone()),
                    // Only group messages name their author in the key.
                    participant: target.sender.clone().filter(|_| target.chat.ends_with("@g.us")),
                }),
                text: Some(emoji.clone()),
                sender_timestamp_ms: Some(now_ms),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

fn context_info(reply_to: Option<&MessageRef>, own_jid: &str) -> MessageField<wa::ContextInfo> {
    let Some(quoted) = reply_to else {
        return MessageField::none();
    };
    MessageField::some(wa::ContextInfo {
        stanza_id: Some(quoted.id.clone()),
        participant: Some(quoted.sender.clone().unwrap_or_else(|| own_jid.to_string())),
        quoted_message: match &quoted.text {
            Some(text) => MessageField::some(wa::Message { conversation: Some(text.clone()), ..Default::default() }),
            None => MessageField::none(),
        },
        ..Default::default()
    })
}

/// A media message of type `$ty` with the CDN fields every media type shares, plus its own.
macro_rules! cdn_message {
    ($ty:ident, $up:expr, $mimetype:expr, $context:expr $(, $field:ident: $value:expr)* $(,)?) => {
        MessageField::some(m::$ty {
            url: Some($up.url.clone()),
            direct_path: Some($up.direct_path.clone()),
            media_key: Some($up.media_key.to_vec()),
            file_sha256: Some($up.file_sha256.to_vec()),
            file_enc_sha256: Some($up.file_enc_sha256.to_vec()),
            file_length: Some($up.file_length),
            media_key_timestamp: Some($up.media_key_timestamp),
            mimetype: $mimetype,
            context_info: $context,
            $($field: $value,)*
            ..Default::default()
        })
    };
}

fn media_message(media: &MediaUpload, up: UploadResponse, context: MessageField<wa::ContextInfo>) -> wa::Message {
    let mimetype = Some(if media.voice { VOICE_MIMETYPE.to_string() } else { media.mimetype.clone() });
    let caption = media.caption.clone();
    let mut message = wa::Message::default();
    match media.kind {
        MediaKind::Document => {
            message.document_message = cdn_message!(DocumentMessage, up, mimetype, context,
                title: media.filename.clone(), file_name: media.filename.clone(), caption: caption)
        }
        MediaKind::Image => message.image_message = cdn_message!(ImageMessage, up, mimetype, context, caption: caption),
        MediaKind::Video => {
            message.video_message = cdn_message!(VideoMessage, up, mimetype, context,
                caption: caption, streaming_sidecar: up.streaming_sidecar.clone())
        }
        MediaKind::Audio => {
            message.audio_message = cdn_message!(AudioMessage, up, mimetype, context,
                ptt: Some(media.voice), streaming_sidecar: up.streaming_sidecar.clone())
        }
        MediaKind::Sticker => message.sticker_message = cdn_message!(StickerMessage, up, mimetype, context),
    }
    message
}
