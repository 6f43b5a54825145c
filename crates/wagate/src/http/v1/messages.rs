//! `/v1/sessions/{id}/messages`: send, and the latest state of what was sent.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::sessions::SessionId;
use crate::engine::{Contact, Content, DeliveryState, Location, MediaKind, MessageRef, NumberCheck, Outgoing};
use crate::http::error::{ApiError, ErrorBody, JsonBody, MAX_BODY};
use crate::http::media_input::FileInput;
use crate::http::AppState;
use crate::session::SessionError;
use crate::store::SentMessage;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(send))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .routes(routes!(show))
        .routes(routes!(media))
        .routes(routes!(check_contacts))
}

/// At most this many numbers per check.
const MAX_CHECK: usize = 50;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    /// 1 to 50 phone numbers with country code, in any common format.
    #[schema(min_items = 1, max_items = 50)]
    phones: Vec<String>,
}

#[derive(Serialize, ToSchema)]
struct CheckResults {
    /// One per number asked, in the same order.
    results: Vec<NumberCheck>,
}

/// Which of these phone numbers have a WhatsApp account.
#[utoipa::path(post, path = "/v1/sessions/{id}/contacts/check", tag = "contacts", params(SessionId),
    request_body = CheckRequest, responses(
        (status = 200, description = "One result per number", body = CheckResults),
        (status = 400, description = "No numbers, too many, or one that is no phone number", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 409, description = "The session is not connected", body = ErrorBody),
        (status = 502, description = "WhatsApp did not answer", body = ErrorBody),
))]
async fn check_contacts(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<CheckRequest>,
) -> Result<Json<CheckResults>, ApiError> {
    if request.phones.is_empty() || request.phones.len() > MAX_CHECK {
        return Err(ApiError::bad_request(format!("give 1 to {MAX_CHECK} phone numbers")));
    }
    let phones = request
        .phones
        .iter()
        .map(|p| {
            super::sessions::phone_digits(p).ok_or_else(|| {
                ApiError::bad_request(format!("'{p}' is not a phone number (7 to 15 digits with country code)"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let results = state.manager.check_numbers(&id, &phones).await?;
    Ok(Json(CheckResults { results }))
}

/// WhatsApp refuses texts longer than this.
const MAX_TEXT: usize = 65_536;
/// The content fields of a send request; exactly one must be given.
const CONTENT_FIELDS: &str = "text, document, image, video, audio, sticker, location, contact or reaction";

/// A message to send: `to` and exactly one content field.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SendRequest {
    /// A phone number with country code in any common format, a JID
    /// (`<phone>@s.whatsapp.net`, `<lid>@lid`, `<group>@g.us`) or a group id.
    #[schema(example = "+91 98765 43210")]
    to: String,
    /// A text message, 1 to 65,536 bytes.
    text: Option<String>,
    document: Option<FileInput>,
    image: Option<FileInput>,
    video: Option<FileInput>,
    audio: Option<FileInput>,
    sticker: Option<FileInput>,
    location: Option<Location>,
    contact: Option<ContactInput>,
    reaction: Option<ReactionInput>,
    /// The id of a message of this chat to answer.
    reply_to: Option<String>,
    /// `false`: answer 409 instead of queueing while the session reconnects.
    #[serde(default = "default_true")]
    #[schema(default = true)]
    queue: bool,
}

fn default_true() -> bool {
    true
}

/// A contact card: a ready vCard, or a name and phone number to make one from.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ContactInput {
    name: String,
    phone: Option<String>,
    vcard: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReactionInput {
    message_id: String,
    /// One emoji; empty removes an earlier reaction.
    emoji: String,
}

/// The JID for `to`: a JID as given, a group id, or a phone number in any common format
/// (`+91 98765-43210`).
pub fn recipient_jid(to: &str) -> Result<String, ApiError> {
    let to = to.trim();
    if to.contains('@') {
        // Only JIDs of chats: `status@broadcast` used to pass here and fail in the library
        // with a 502 (found by the property tests of tests/bodies.rs).
        return match crate::engine::is_chat_jid(to) {
            true => Ok(to.to_string()),
            false => Err(ApiError::bad_request(format!(
                "'{to}' is not a valid JID (<phone>@s.whatsapp.net, <lid>@lid or <group>@g.us)"
            ))),
        };
    }
    let compact: String = to.chars().filter(|c| !matches!(c, ' ' | '+' | '(' | ')' | '.')).collect();
    // Old-style group ids: <creator phone>-<creation time>.
    if let Some((creator, created)) = compact.split_once('-') {
        if creator.len() >= 10
            && created.len() >= 9
            && !created.contains('-')
            && (creator.to_string() + created).bytes().all(|b| b.is_ascii_digit())
        {
            return Ok(format!("{compact}@g.us"));
        }
    }
    let digits: String = compact.chars().filter(|c| *c != '-').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(format!("'{to}' is neither a phone number, a JID nor a group id")));
    }
    match digits.len() {
        7..=15 => Ok(format!("{digits}@s.whatsapp.net")),
        16.. => Ok(format!("{digits}@g.us")),
        _ => Err(ApiError::bad_request(format!("'{to}' is too short for a phone number (include the country code)"))),
    }
}

/// What a send answers.
#[derive(Serialize, ToSchema)]
struct SendAnswer {
    /// The message's id, for `GET .../messages/{message_id}`, replies and reactions.
    id: String,
    /// `sent` (200) or `queued` (202).
    status: DeliveryState,
    /// When it was accepted, milliseconds since the epoch.
    timestamp: u64,
    /// The recipient's JID.
    to: String,
}

/// Sends a message, or queues it while the session reconnects. With an
/// `Idempotency-Key`, a retried call answers the first call's message instead of sending
/// again.
#[utoipa::path(post, path = "/v1/sessions/{id}/messages", tag = "messages",
    params(SessionId, ("Idempotency-Key" = Option<String>, Header, description = "1 to 200 printable ASCII \
        characters; the same key within 24 h answers the same message")),
    request_body = SendRequest, responses(
        (status = 200, description = "Sent: WhatsApp's server acknowledged it", body = SendAnswer),
        (status = 202, description = "Queued: it goes once the session is connected again", body = SendAnswer),
        (status = 400, description = "Invalid recipient or content", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 409, description = "Not connected (and `queue` is false, or the session is logged out), \
            the queue is full, or the same Idempotency-Key is being sent", body = ErrorBody),
        (status = 413, description = "The body is larger than 140 MB", body = ErrorBody),
        (status = 502, description = "WhatsApp refused it, or a file could not be fetched or uploaded", body = ErrorBody),
))]
async fn send(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<SendRequest>,
) -> Result<Response, ApiError> {
    let to = recipient_jid(&request.to)?;
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| ApiError::bad_request("Idempotency-Key must be printable ASCII"))?;
    if key.as_deref().is_some_and(|k| k.is_empty() || k.len() > 200) {
        return Err(ApiError::bad_request("Idempotency-Key must be 1 to 200 characters"));
    }
    state.manager.get(&id).ok_or(SessionError::NotFound)?;
    let reply_to = request.reply_to.as_deref().map(|m| known_message(&state, &id, m, &to)).transpose()?;
    let may_queue = request.queue;
    let content = content_of(&state, &id, &to, request).await?;
    let sent = state.manager.send(&id, &to, Outgoing { content, reply_to }, key.as_deref(), may_queue).await?;
    // A queued message is accepted, not yet sent: 202, and its state says so.
    let status = if sent.status == DeliveryState::Queued { StatusCode::ACCEPTED } else { StatusCode::OK };
    let body = SendAnswer { id: sent.id, status: sent.status, timestamp: sent.created_ms, to: sent.chat };
    Ok((status, Json(body)).into_response())
}

/// A message a reply or reaction points at, in the chat `to`; unknown ids and messages of
/// another chat (whose text a quote would carry elsewhere) are the caller's mistake.
fn known_message(state: &AppState, session: &str, message_id: &str, to: &str) -> Result<MessageRef, ApiError> {
    let found = state.manager.message_ref(session, message_id).map_err(|e| match e {
        SessionError::UnknownMessage(_) => ApiError::bad_request(format!(
            "no message '{message_id}' in this session (replies and reactions need a message it sent or received)"
        )),
        other => other.into(),
    })?;
    if other_chat(&found.chat, to) {
        return Err(ApiError::bad_request(format!("message '{message_id}' is in another chat ({})", found.chat)));
    }
    Ok(found)
}

/// Whether two chat JIDs surely differ. A chat can be named by phone number or by LID;
/// only names of the same kind can be compared.
fn other_chat(a: &str, b: &str) -> bool {
    let (a, b) = (crate::engine::non_device(a), crate::engine::non_device(b));
    let server = |jid: &str| jid.split_once('@').map(|(_, server)| server.to_string());
    a != b && server(&a) == server(&b)
}

/// The one content field of a request, checked and loaded.
async fn content_of(state: &AppState, session: &str, to: &str, request: SendRequest) -> Result<Content, ApiError> {
    let SendRequest { text, document, image, video, audio, sticker, location, contact, reaction, .. } = request;
    let files = [
        (MediaKind::Document, document),
        (MediaKind::Image, image),
        (MediaKind::Video, video),
        (MediaKind::Audio, audio),
        (MediaKind::Sticker, sticker),
    ];
    let given = usize::from(text.is_some())
        + files.iter().filter(|(_, f)| f.is_some()).count()
        + usize::from(location.is_some())
        + usize::from(contact.is_some())
        + usize::from(reaction.is_some());
    if given != 1 {
        return Err(ApiError::bad_request(format!("give exactly one of {CONTENT_FIELDS}")));
    }
    if let Some(text) = text {
        if text.is_empty() || text.len() > MAX_TEXT {
            return Err(ApiError::bad_request(format!("text must be 1 to {MAX_TEXT} bytes")));
        }
        return Ok(Content::Text(text));
    }
    if let Some((kind, Some(file))) = files.into_iter().find(|(_, f)| f.is_some()) {
        return Ok(Content::Media(file.load(kind).await?));
    }
    if let Some(location) = location {
        if !(-90.0..=90.0).contains(&location.latitude) || !(-180.0..=180.0).contains(&location.longitude) {
            return Err(ApiError::bad_request("location: latitude must be -90..90 and longitude -180..180"));
        }
        return Ok(Content::Location(location));
    }
    if let Some(contact) = contact {
        return Ok(Content::Contact(contact_card(contact)?));
    }
    let reaction = reaction.expect("exactly one content field is set");
    if reaction.emoji.chars().count() > 10 {
        return Err(ApiError::bad_request("reaction: 'emoji' must be one emoji (or empty to remove a reaction)"));
    }
    let target = known_message(state, session, &reaction.message_id, to)?;
    Ok(Content::Reaction { target, emoji: reaction.emoji })
}

fn contact_card(contact: ContactInput) -> Result<Contact, ApiError> {
    if contact.name.trim().is_empty() {
        return Err(ApiError::bad_request("contact: 'name' is required"));
    }
    let vcard = match (contact.vcard, contact.phone) {
        (Some(vcard), None) if vcard.contains("BEGIN:VCARD") => vcard,
        (Some(_), None) => return Err(ApiError::bad_request("contact: 'vcard' is not a vCard (BEGIN:VCARD ...)")),
        (None, Some(phone)) => {
            let digits = super::sessions::phone_digits(&phone)
                .ok_or_else(|| ApiError::bad_request(format!("contact: '{phone}' is not a phone number")))?;
            // WhatsApp shows a "Message" button for cards whose number carries `waid`.
            format!(
                "BEGIN:VCARD\nVERSION:3.0\nFN:{}\nTEL;type=CELL;waid={digits}:+{digits}\nEND:VCARD",
                vcard_text(&contact.name)
            )
        }
        _ => return Err(ApiError::bad_request("contact: give 'phone' or 'vcard' (one of them)")),
    };
    Ok(Contact { display_name: contact.name, vcard })
}

/// A name as a vCard 3.0 text value (RFC 2426 5.): `\\`, `;` and `,` escaped, control
/// characters (line breaks included) as spaces, so that it stays one value of one line.
/// Unescaped, a `\\` or `;` in a name changed what vCard readers showed (found by the
/// property test below).
fn vcard_text(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '\\' | ';' | ',' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The file of a received message, decrypted; WhatsApp's CDN is asked each time.
#[utoipa::path(get, path = "/v1/sessions/{id}/media/{message_id}", tag = "messages",
    params(SessionId, ("message_id" = String, Path, description = "The received message's id")), responses(
        (status = 200, description = "The file, as a download (`Content-Disposition: attachment`), with the \
            sender's MIME type", content((crate::http::openapi::FileBytes = "application/octet-stream"))),
        (status = 404, description = "No such session, message, or no file in it", body = ErrorBody),
        (status = 409, description = "The session is not connected", body = ErrorBody),
        (status = 422, description = "The message points at a file wagate will not fetch", body = ErrorBody),
        (status = 502, description = "WhatsApp's CDN failed, or the file is larger than `--media-max`", body = ErrorBody),
))]
async fn media(
    State(state): State<Arc<AppState>>,
    Path((id, message_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (file, media) = state.manager.download_media(&id, &message_id).await?;
    // The type and name come from whoever sent the file: never let a browser render it on
    // the gateway's origin (always a download, no sniffing, no scripts).
    let mimetype = media
        .mimetype
        .and_then(|m| HeaderValue::from_str(&m).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let name = media.filename.unwrap_or_else(|| format!("{message_id}.{}", media.location.kind.as_str()));
    let disposition = content_disposition(&name).unwrap_or(HeaderValue::from_static("attachment"));
    let headers = [
        (header::CONTENT_TYPE, mimetype),
        (header::CONTENT_DISPOSITION, disposition),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'")),
        (header::CONTENT_LENGTH, HeaderValue::from(file.len)),
    ];
    // From the temporary file, chunk by chunk: a large document is never held in memory.
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file.file)));
    Ok((StatusCode::OK, headers, body).into_response())
}

/// `attachment` with the file name; names beyond ASCII go in RFC 5987's `filename*`.
fn content_disposition(name: &str) -> Option<HeaderValue> {
    let name: String = name.chars().filter(|c| !c.is_control()).collect();
    let value = if name.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        format!("attachment; filename=\"{}\"", name.replace(['"', '\\'], "_"))
    } else {
        format!("attachment; filename*=UTF-8''{}", crate::percent::encode(&name))
    };
    HeaderValue::from_str(&value).ok()
}

/// The latest state of a message the session sent.
#[utoipa::path(get, path = "/v1/sessions/{id}/messages/{message_id}", tag = "messages",
    params(SessionId, ("message_id" = String, Path, description = "The id a send answered")), responses(
        (status = 200, description = "The message's latest state", body = SentMessage),
        (status = 404, description = "No such session, or no message with that id sent by it", body = ErrorBody),
))]
async fn show(
    State(state): State<Arc<AppState>>,
    Path((id, message_id)): Path<(String, String)>,
) -> Result<Json<SentMessage>, ApiError> {
    state.manager.get(&id).ok_or(SessionError::NotFound)?;
    let message = state
        .manager
        .store()
        .sent_message(&id, &message_id)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    message
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no message with that id was sent by this session"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn recipients_in_common_formats() {
        assert_eq!(recipient_jid("+91 98765-43210").unwrap(), "919876543210@s.whatsapp.net");
        assert_eq!(recipient_jid("15551234567").unwrap(), "15551234567@s.whatsapp.net");
        assert_eq!(recipient_jid("15551234567@s.whatsapp.net").unwrap(), "15551234567@s.whatsapp.net");
        assert_eq!(recipient_jid("120363025246125486").unwrap(), "120363025246125486@g.us");
        assert_eq!(recipient_jid("15551234567-1612345678").unwrap(), "15551234567-1612345678@g.us");
        assert!(recipient_jid("hello").is_err());
        assert!(recipient_jid("123").is_err());
        assert!(recipient_jid("@x").is_err());
        for bad in ["status@broadcast", "a@b", "1:x@s.whatsapp.net", "x@g.us", "1@s.whatsapp.net:2", "1 2@lid"] {
            assert!(recipient_jid(bad).is_err(), "{bad}");
        }
        assert_eq!(recipient_jid("15551234567:2@s.whatsapp.net").unwrap(), "15551234567:2@s.whatsapp.net");
        assert_eq!(recipient_jid("99123@lid").unwrap(), "99123@lid");
    }

    #[test]
    fn chats_differ_only_when_named_alike() {
        assert!(other_chat("1555@s.whatsapp.net", "1666@s.whatsapp.net"));
        assert!(!other_chat("1555:3@s.whatsapp.net", "1555@s.whatsapp.net"));
        assert!(!other_chat("9912@lid", "1555@s.whatsapp.net"), "a LID and a phone number cannot be compared");
        assert!(other_chat("120363@g.us", "120364@g.us"));
    }

    use super::super::sessions::phone_digits;

    /// The lines of a vCard as a reader sees them: property (with parameters) and value,
    /// the value's text escapes undone (RFC 2426 5.: `\\`, `\;`, `\,`, `\n`).
    fn read_vcard(card: &str) -> Vec<(String, String)> {
        let unescape = |value: &str| {
            let (mut out, mut chars) = (String::new(), value.chars());
            while let Some(c) = chars.next() {
                match (c, c == '\\') {
                    (_, true) => match chars.next() {
                        Some('n' | 'N') => out.push('\n'),
                        Some(other) => out.push(other),
                        None => out.push('\\'),
                    },
                    (c, false) => out.push(c),
                }
            }
            out
        };
        card.split('\n')
            .map(|line| match line.split_once(':') {
                Some((property, value)) => (property.to_string(), unescape(value)),
                None => (line.to_string(), String::new()),
            })
            .collect()
    }

    fn names() -> impl Strategy<Value = String> {
        prop_oneof![".{0,40}", "[\\\\;,:\n\r\t a-z]{0,20}", "[\\x00-\\x1f\\x7f\u{85}\u{2028} a]{0,10}"]
    }

    fn phones() -> impl Strategy<Value = String> {
        prop_oneof!["[0-9 +().-]{0,20}", ".{0,20}", Just("+1 555 400 0002".to_string())]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A card made from a name and a number reads back as that name and number, one
        /// property per line, whatever the name holds.
        #[test]
        fn contact_cards_read_back_as_given(name in names(), phone in phones()) {
            let input = ContactInput { name: name.clone(), phone: Some(phone.clone()), vcard: None };
            match contact_card(input) {
                Ok(contact) => {
                    let digits = phone_digits(&phone);
                    prop_assert!(digits.is_some(), "accepted a phone that is no number: {:?}", phone);
                    let digits = digits.unwrap();
                    prop_assert_eq!(&contact.display_name, &name);
                    let shown: String = name.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
                    let expected = vec![
                        ("BEGIN".to_string(), "VCARD".to_string()),
                        ("VERSION".to_string(), "3.0".to_string()),
                        ("FN".to_string(), shown),
                        (format!("TEL;type=CELL;waid={digits}"), format!("+{digits}")),
                        ("END".to_string(), "VCARD".to_string()),
                    ];
                    prop_assert_eq!(read_vcard(&contact.vcard), expected, "card: {:?}", contact.vcard);
                }
                Err(e) => prop_assert!(
                    name.trim().is_empty() || phone_digits(&phone).is_none(),
                    "refused a name and a number: {}", e.message
                ),
            }
        }

        /// A ready vCard goes as given, and only one that says it is a vCard.
        #[test]
        fn given_vcards_go_unchanged(name in names(), vcard in prop_oneof![".{0,60}", "BEGIN:VCARD.{0,40}"]) {
            let input = ContactInput { name: name.clone(), phone: None, vcard: Some(vcard.clone()) };
            match contact_card(input) {
                Ok(contact) => {
                    prop_assert_eq!(contact.vcard, vcard);
                    prop_assert_eq!(contact.display_name, name);
                }
                Err(_) => prop_assert!(name.trim().is_empty() || !vcard.contains("BEGIN:VCARD")),
            }
        }
    }

    #[test]
    fn download_names_survive_any_characters() {
        assert_eq!(content_disposition("invoice 7.pdf").unwrap(), "attachment; filename=\"invoice 7.pdf\"");
        assert_eq!(content_disposition("a\"b.pdf").unwrap(), "attachment; filename=\"a_b.pdf\"");
        assert_eq!(content_disposition("facture é.pdf").unwrap(), "attachment; filename*=UTF-8''facture%20%C3%A9.pdf");
    }
}
