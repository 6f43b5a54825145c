//! Message templates: `GET/POST/DELETE /{version}/{waba_id}/message_templates`,
//! `POST /{version}/{template_id}` (edit), `GET /{version}/{template_id}`. Kept in wagate's
//! database and always `APPROVED`: there is no review on a linked device; sending renders
//! them (see `render`).

use std::sync::Arc;

use axum::body::Body;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::{json_body, number_of_account, query_value, Caller, GraphError, GraphResult};
use crate::http::AppState;
use crate::store::cloud::CloudTemplate;

fn shown(template: &CloudTemplate) -> Value {
    json!({
        "name": template.name,
        "components": template.components,
        "language": template.language,
        "status": "APPROVED",
        "category": template.category,
        "id": template.id,
    })
}

pub fn list(state: &Arc<AppState>, caller: &Caller, account: &str, query: &str) -> GraphResult {
    let number = number_of_account(state, caller, account, false)?;
    let name = query_value(query, "name");
    let templates: Vec<Value> = state
        .manager
        .store()
        .cloud_templates(&number.waba_id)?
        .iter()
        .filter(|t| name.as_deref().is_none_or(|n| t.name == n))
        .map(shown)
        .collect();
    Ok(Json(json!({ "data": templates, "paging": { "cursors": { "before": "", "after": "" } } })).into_response())
}

pub fn show(state: &Arc<AppState>, caller: &Caller, id: &str) -> GraphResult {
    let template =
        state.manager.store().cloud_template(id)?.ok_or_else(|| caller.missing(state.manager.store(), id))?;
    number_of_account(state, caller, &template.waba_id, false)?;
    Ok(Json(shown(&template)).into_response())
}

/// A template's components: an array of objects with a `type`, one of them the BODY.
fn components(value: &Value) -> Result<Value, GraphError> {
    let all = value
        .as_array()
        .ok_or_else(|| GraphError::invalid("(#100) The parameter components is required (an array)."))?;
    for component in all {
        let kind = component["type"].as_str().unwrap_or_default().to_ascii_uppercase();
        if !matches!(kind.as_str(), "HEADER" | "BODY" | "FOOTER" | "BUTTONS") {
            return Err(GraphError::invalid(format!("(#100) unknown component type {}", component["type"])));
        }
    }
    if !all.iter().any(|c| c["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case("BODY"))) {
        return Err(GraphError::invalid("(#100) a template needs a BODY component"));
    }
    Ok(value.clone())
}

pub async fn create(state: &Arc<AppState>, caller: &Caller, account: &str, body: Body) -> GraphResult {
    let number = number_of_account(state, caller, account, false)?;
    let request = json_body(body).await?;
    let name = request["name"]
        .as_str()
        .filter(|n| {
            !n.is_empty()
                && n.len() <= 512
                && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .ok_or_else(|| GraphError::invalid("(#100) name is required: lowercase letters, digits and '_' only"))?;
    let language = request["language"]
        .as_str()
        .filter(|l| !l.is_empty() && l.len() <= 16)
        .ok_or_else(|| GraphError::invalid("(#100) The parameter language is required (e.g. en_US)."))?;
    let category = request["category"].as_str().unwrap_or("UTILITY").to_ascii_uppercase();
    let template = CloudTemplate {
        id: super::media::new_numeric_id(),
        waba_id: number.waba_id.clone(),
        name: name.to_string(),
        language: language.to_string(),
        category: category.clone(),
        components: components(&request["components"])?,
    };
    let id = template.id.clone();
    if !state.manager.store().add_cloud_template(template, crate::webhook::now_ms()).await? {
        let mut error = GraphError::invalid(format!(
            "(#100) Content in this language already exists: a template '{name}' in '{language}' exists; edit it with POST /{{version}}/{{template_id}}"
        ));
        error.subcode = Some(2388024);
        return Err(error);
    }
    Ok(Json(json!({ "id": id, "status": "APPROVED", "category": category })).into_response())
}

pub async fn edit(state: &Arc<AppState>, caller: &Caller, id: &str, body: Body) -> GraphResult {
    let template =
        state.manager.store().cloud_template(id)?.ok_or_else(|| caller.missing(state.manager.store(), id))?;
    number_of_account(state, caller, &template.waba_id, false)?;
    let request = json_body(body).await?;
    let new_components = match &request["components"] {
        Value::Null => None,
        given => Some(components(given)?),
    };
    let category = request["category"].as_str().map(str::to_ascii_uppercase);
    state.manager.store().update_cloud_template(id, category, new_components).await?;
    Ok(Json(json!({ "success": true })).into_response())
}

pub async fn delete(state: &Arc<AppState>, caller: &Caller, account: &str, query: &str) -> GraphResult {
    let number = number_of_account(state, caller, account, false)?;
    let name = query_value(query, "name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| GraphError::invalid("(#100) The parameter name is required."))?;
    let id = query_value(query, "hsm_id").filter(|i| !i.is_empty());
    let deleted = state.manager.store().delete_cloud_templates(&number.waba_id, Some(&name), id.as_deref()).await?;
    if deleted == 0 {
        return Err(GraphError::new(
            axum::http::StatusCode::NOT_FOUND,
            132001,
            "Template name does not exist",
            format!("(#132001) no template named '{name}' in this account"),
        ));
    }
    Ok(Json(json!({ "success": true })).into_response())
}
