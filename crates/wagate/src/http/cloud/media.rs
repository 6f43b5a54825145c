//! Media: `POST /{version}/{phone_number_id}/media` (multipart upload), `GET /{version}/{media_id}`
//! (metadata, with a `url`), `GET /cloud/media/{media_id}` (the bytes, with the same token),
//! `DELETE /{version}/{media_id}`. Received files are fetched from WhatsApp's CDN when
//! asked for, through the session's connection, whatever else the session is doing (its
//! webhook request that names the file may still be open).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{number_for, Caller, GraphError, GraphResult};
use crate::http::AppState;
use crate::store::cloud::{CloudMedia, CloudNumber};
use crate::webhook::cloud::parse_received_media_id;

/// The largest upload: WhatsApp's limit for documents.
const MAX_UPLOAD: usize = 100 * 1024 * 1024;

/// A new media or template id: 16 digits, as Meta's.
pub fn new_numeric_id() -> String {
    format!("{}", rand::random::<u64>() % 9_000_000_000_000_000 + 1_000_000_000_000_000)
}

pub async fn upload(
    state: &Arc<AppState>,
    caller: &Caller,
    number_id: &str,
    headers: &HeaderMap,
    body: Body,
) -> GraphResult {
    let number = number_for(state, caller, number_id)?;
    let mut request = Request::new(body);
    *request.headers_mut() = headers.clone();
    let mut form = Multipart::from_request(request, &()).await.map_err(|e| {
        GraphError::invalid(format!("(#100) send multipart/form-data with 'file', 'type' and 'messaging_product': {e}"))
    })?;
    let (mut file, mut declared_type, mut filename, mut product) = (None, None, None, None);
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(GraphError::invalid(format!("(#100) the multipart body: {e}"))),
        };
        match field.name().unwrap_or_default() {
            "file" => {
                filename = field.file_name().map(str::to_string);
                let part_type = field.content_type().map(str::to_string);
                let mut field = field;
                let mut data = Vec::new();
                while let Some(chunk) =
                    field.chunk().await.map_err(|e| GraphError::invalid(format!("(#100) the file: {e}")))?
                {
                    if data.len() + chunk.len() > MAX_UPLOAD {
                        return Err(GraphError::invalid(format!(
                            "(#100) the file is larger than {} MB",
                            MAX_UPLOAD / (1024 * 1024)
                        )));
                    }
                    data.extend_from_slice(&chunk);
                }
                file = Some((data, part_type));
            }
            "type" => declared_type = field.text().await.ok(),
            "messaging_product" => product = field.text().await.ok(),
            _ => {}
        }
    }
    if product.as_deref() != Some("whatsapp") {
        return Err(GraphError::invalid(
            "(#100) The parameter messaging_product is required and must be \"whatsapp\".",
        ));
    }
    let Some((data, part_type)) = file.filter(|(d, _)| !d.is_empty()) else {
        return Err(GraphError::invalid("(#100) The parameter file is required (a non-empty file)."));
    };
    let mime_type = declared_type
        .or(part_type)
        .filter(|t| t.contains('/'))
        .ok_or_else(|| GraphError::invalid("(#100) The parameter type is required (the file's MIME type)."))?;
    let id = new_numeric_id();
    let sha256 = hex::encode(Sha256::digest(&data));
    let media = CloudMedia { id: id.clone(), session: number.session.clone(), mime_type, filename, sha256, data };
    state.manager.store().add_cloud_media(media, crate::webhook::now_ms()).await?;
    Ok(Json(json!({ "id": id })).into_response())
}

/// A file this token may see: uploaded to, or received by, one of its numbers.
enum Found {
    Uploaded(CloudMedia),
    Received {
        session: String,
        message: String,
        mime_type: String,
        sha256: String,
        size: u64,
        filename: Option<String>,
    },
}

fn number_of_session(state: &AppState, caller: &Caller, session: &str, id: &str) -> Result<CloudNumber, GraphError> {
    match state.manager.store().cloud_number_of_session(session)? {
        Some(number) => {
            caller.check(&number)?;
            Ok(number)
        }
        None => Err(caller.missing(state.manager.store(), id)),
    }
}

fn find(state: &AppState, caller: &Caller, id: &str) -> Result<Option<Found>, GraphError> {
    let store = state.manager.store();
    if let Some((session, message)) = parse_received_media_id(id) {
        number_of_session(state, caller, &session, id)?;
        let received = store.received_message(&session, &message)?;
        let Some(media) = received.and_then(|r| r.media) else { return Err(GraphError::no_object(id)) };
        return Ok(Some(Found::Received {
            session,
            message,
            mime_type: media.mimetype.clone().unwrap_or_else(|| "application/octet-stream".into()),
            sha256: hex::encode(&media.location.file_sha256),
            size: media.location.file_length,
            filename: media.filename,
        }));
    }
    match store.cloud_media(id)? {
        Some(media) => {
            number_of_session(state, caller, &media.session, id)?;
            Ok(Some(Found::Uploaded(media)))
        }
        None => Ok(None),
    }
}

pub fn metadata(state: &Arc<AppState>, caller: &Caller, id: &str) -> GraphResult {
    let url = format!("{}/cloud/media/{}", state.manager.public_url(), crate::percent::encode(id));
    let (mime_type, sha256, size) = match find(state, caller, id)? {
        Some(Found::Uploaded(media)) => (media.mime_type, media.sha256, media.data.len() as u64),
        Some(Found::Received { mime_type, sha256, size, .. }) => (mime_type, sha256, size),
        None => return super::templates::show(state, caller, id),
    };
    Ok(Json(json!({
        "messaging_product": "whatsapp",
        "url": url,
        "mime_type": mime_type,
        "sha256": sha256,
        "file_size": size,
        "id": id,
    }))
    .into_response())
}

pub async fn download(state: &Arc<AppState>, caller: &Caller, id: &str) -> GraphResult {
    let found = find(state, caller, id)?.ok_or_else(|| caller.missing(state.manager.store(), id))?;
    let (mime_type, filename, body, length) = match found {
        Found::Uploaded(media) => {
            let length = media.data.len() as u64;
            (media.mime_type, media.filename, Body::from(media.data), length)
        }
        Found::Received { session, message, mime_type, filename, .. } => {
            let (file, _) = state.manager.download_media(&session, &message).await?;
            let length = file.len;
            let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file.file));
            (mime_type, filename, Body::from_stream(stream), length)
        }
    };
    let content_type =
        HeaderValue::from_str(&mime_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let name = filename.unwrap_or_else(|| id.to_string());
    let disposition = HeaderValue::from_str(&format!("attachment; filename*=UTF-8''{}", crate::percent::encode(&name)))
        .unwrap_or(HeaderValue::from_static("attachment"));
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_DISPOSITION, disposition),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'")),
        (header::CONTENT_LENGTH, HeaderValue::from(length)),
    ];
    Ok((StatusCode::OK, headers, body).into_response())
}

pub async fn delete(state: &Arc<AppState>, caller: &Caller, id: &str) -> GraphResult {
    match find(state, caller, id)? {
        Some(Found::Uploaded(media)) => {
            state.manager.store().delete_cloud_media(&media.id).await?;
            Ok(Json(json!({ "success": true })).into_response())
        }
        Some(Found::Received { .. }) => {
            Err(GraphError::invalid("(#100) received files are WhatsApp's; they cannot be deleted here"))
        }
        // `DELETE /{template_id}` is not the Cloud API's either: a template goes by name.
        None => Err(caller.missing(state.manager.store(), id)),
    }
}
