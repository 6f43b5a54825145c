//! The resumable upload the Cloud API uses for template header samples:
//! `POST /{version}/{app_id}/uploads?file_length=&file_type=` -> `{"id": "upload:..."}`, then
//! `POST /{version}/upload:...` with the bytes (`Authorization: OAuth <token>`) ->
//! `{"h": "<handle>"}`; `GET /{version}/upload:...` -> `{"id", "file_offset"}`. The bytes are
//! kept only as the sample of the template; nothing is sent from them.

use std::sync::Arc;

use axum::body::Body;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::{json_body, number_of_account, query_value, Caller, GraphError, GraphResult};
use crate::http::AppState;
use crate::store::cloud::CloudUpload;

/// The largest sample: WhatsApp's limit for documents.
const MAX_SAMPLE: usize = 100 * 1024 * 1024;

pub async fn start(state: &Arc<AppState>, caller: &Caller, app: &str, query: &str, body: Body) -> GraphResult {
    let number = number_of_account(state, caller, app, true)?;
    // The parameters come in the query (Meta's documentation) or in a JSON body (frappe_whatsapp).
    let request = json_body(body).await.unwrap_or_else(|_| json!({}));
    let field = |name: &str| {
        query_value(query, name).or_else(|| match &request[name] {
            serde_json::Value::String(text) => Some(text.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let file_length: u64 = field("file_length")
        .and_then(|l| l.trim().parse().ok())
        .filter(|l| *l > 0 && *l <= MAX_SAMPLE as u64)
        .ok_or_else(|| GraphError::invalid("(#100) The parameter file_length is required (1 to 100 MB)."))?;
    let file_type = field("file_type")
        .filter(|t| t.contains('/'))
        .ok_or_else(|| GraphError::invalid("(#100) The parameter file_type is required (a MIME type)."))?;
    let id = format!("upload:{}", hex::encode(rand::random::<[u8; 16]>()));
    let upload = CloudUpload { id: id.clone(), app_id: number.app_id, file_type, file_length, handle: None };
    state.manager.store().add_cloud_upload(upload, crate::webhook::now_ms()).await?;
    Ok(Json(json!({ "id": id })).into_response())
}

fn own_upload(state: &AppState, caller: &Caller, id: &str) -> Result<CloudUpload, GraphError> {
    let upload = state.manager.store().cloud_upload(id)?.ok_or_else(|| caller.missing(state.manager.store(), id))?;
    number_of_account(state, caller, &upload.app_id, true)?;
    Ok(upload)
}

pub async fn upload(state: &Arc<AppState>, caller: &Caller, id: &str, body: Body) -> GraphResult {
    let upload = own_upload(state, caller, id)?;
    let data = axum::body::to_bytes(body, MAX_SAMPLE)
        .await
        .map_err(|_| GraphError::invalid("(#100) the file is larger than 100 MB"))?;
    if data.is_empty() {
        return Err(GraphError::invalid("(#100) send the file's bytes as the body"));
    }
    let handle = format!("4::{}", hex::encode(rand::random::<[u8; 24]>()));
    state.manager.store().finish_cloud_upload(&upload.id, &handle, data.to_vec()).await?;
    Ok(Json(json!({ "h": handle })).into_response())
}

pub fn status(state: &Arc<AppState>, caller: &Caller, id: &str) -> GraphResult {
    let upload = own_upload(state, caller, id)?;
    let offset = if upload.handle.is_some() { upload.file_length } else { 0 };
    Ok(Json(json!({ "id": upload.id, "file_offset": offset })).into_response())
}
