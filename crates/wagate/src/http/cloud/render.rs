//! Message templates rendered by wagate: a linked device has no template machinery, so a
//! template message goes as the text a customer would have seen (header, body with its
//! `{{n}}` parameters, footer, URL and phone buttons as lines), or as a media message
//! captioned with that text when the header is a file.

use serde_json::Value;

use crate::engine::MediaKind;

/// A header file to fetch: by link or by uploaded media id.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMedia {
    pub kind: MediaKind,
    /// The send-time object: `{link | id, filename?, caption?}`.
    pub source: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub text: String,
    pub media: Option<HeaderMedia>,
}

/// Why a template could not be rendered (Graph code 132000 / 132012).
#[derive(Debug, Clone, PartialEq)]
pub struct RenderError(pub String);

fn typed<'a>(components: &'a Value, kind: &str) -> Option<&'a Value> {
    components.as_array()?.iter().find(|c| c["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case(kind)))
}

/// The text of a parameter (`text`, or the fallback of currency and date_time).
fn parameter_text(parameter: &Value) -> Result<String, RenderError> {
    match parameter["type"].as_str().unwrap_or("text") {
        "text" => parameter["text"].as_str().map(str::to_string),
        "currency" => parameter["currency"]["fallback_value"].as_str().map(str::to_string),
        "date_time" => parameter["date_time"]["fallback_value"].as_str().map(str::to_string),
        "payload" => parameter["payload"].as_str().map(str::to_string),
        _ => None,
    }
    .ok_or_else(|| {
        RenderError(format!("parameter {parameter} has no text (type text with 'text', or a fallback_value)"))
    })
}

/// `text` with `{{1}}`, `{{2}}` ... (and `{{name}}` for named parameters) replaced.
fn fill(text: &str, parameters: &[Value], what: &str) -> Result<String, RenderError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let name = after[..end].trim();
        let parameter = match name.parse::<usize>() {
            Ok(n) if n >= 1 => parameters.get(n - 1),
            Ok(_) => None,
            Err(_) => parameters.iter().find(|p| p["parameter_name"].as_str() == Some(name)),
        };
        let Some(parameter) = parameter else {
            return Err(RenderError(format!(
                "the {what} has the variable {{{{{name}}}}} but the message gives {} parameter(s) for it",
                parameters.len()
            )));
        };
        out.push_str(&parameter_text(parameter)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn parameters(component: Option<&Value>) -> &[Value] {
    component.and_then(|c| c["parameters"].as_array()).map(Vec::as_slice).unwrap_or(&[])
}

/// Renders the stored template `definition` (its components) with the send-time
/// `components` of the message.
pub fn render(definition: &Value, components: &Value) -> Result<Rendered, RenderError> {
    let mut parts = Vec::new();
    let mut media = None;
    if let Some(header) = typed(definition, "HEADER") {
        let given = parameters(typed(components, "header"));
        match header["format"].as_str().unwrap_or("TEXT").to_ascii_uppercase().as_str() {
            "TEXT" => {
                let text = fill(header["text"].as_str().unwrap_or_default(), given, "header")?;
                if !text.trim().is_empty() {
                    parts.push(format!("*{}*", text.trim()));
                }
            }
            format @ ("IMAGE" | "DOCUMENT" | "VIDEO") => {
                let kind = match format {
                    "IMAGE" => MediaKind::Image,
                    "VIDEO" => MediaKind::Video,
                    _ => MediaKind::Document,
                };
                let key = kind.as_str();
                let source = given.iter().find(|p| p["type"] == key).map(|p| p[key].clone()).ok_or_else(|| {
                    RenderError(format!(
                        "the template's header is {format}: give a header parameter {{\"type\": \"{key}\", \"{key}\": {{\"link\": ...}}}}"
                    ))
                })?;
                media = Some(HeaderMedia { kind, source });
            }
            other => {
                return Err(RenderError(format!(
                    "header format {other} is not supported (TEXT, IMAGE, DOCUMENT, VIDEO)"
                )))
            }
        }
    }
    if let Some(body) = typed(definition, "BODY") {
        parts.push(fill(body["text"].as_str().unwrap_or_default(), parameters(typed(components, "body")), "body")?);
    }
    if let Some(footer) = typed(definition, "FOOTER") {
        if let Some(text) = footer["text"].as_str().filter(|t| !t.trim().is_empty()) {
            parts.push(format!("_{}_", text.trim()));
        }
    }
    if let Some(buttons) = typed(definition, "BUTTONS").and_then(|b| b["buttons"].as_array()) {
        let mut lines = Vec::new();
        for (index, button) in buttons.iter().enumerate() {
            let label = button["text"].as_str().unwrap_or_default();
            let given = components.as_array().and_then(|all| {
                all.iter().find(|c| {
                    c["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case("button"))
                        && (c["index"]
                            .as_str()
                            .and_then(|i| i.parse::<usize>().ok())
                            .or(c["index"].as_u64().map(|i| i as usize))
                            == Some(index))
                })
            });
            match button["type"].as_str().unwrap_or_default().to_ascii_uppercase().as_str() {
                "URL" => {
                    let url = fill(button["url"].as_str().unwrap_or_default(), parameters(given), "button URL")?;
                    lines.push(format!("{label}: {url}"));
                }
                "PHONE_NUMBER" => {
                    lines.push(format!("{label}: {}", button["phone_number"].as_str().unwrap_or_default()))
                }
                _ => lines.push(format!("[{label}]")),
            }
        }
        if !lines.is_empty() {
            parts.push(lines.join("\n"));
        }
    }
    let text = parts.into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>().join("\n\n");
    if text.is_empty() && media.is_none() {
        return Err(RenderError("the template renders to nothing (no header, body or buttons)".into()));
    }
    Ok(Rendered { text, media })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn body_header_footer_and_buttons() {
        let definition = json!([
            { "type": "HEADER", "format": "TEXT", "text": "Invoice {{1}}" },
            { "type": "BODY", "text": "Dear {{1}}, you owe {{2}}." },
            { "type": "FOOTER", "text": "Acme Ltd" },
            { "type": "BUTTONS", "buttons": [
                { "type": "URL", "text": "Pay", "url": "https://pay.example/{{1}}" },
                { "type": "PHONE_NUMBER", "text": "Call us", "phone_number": "+15550001111" },
                { "type": "QUICK_REPLY", "text": "Stop" },
            ] },
        ]);
        let components = json!([
            { "type": "header", "parameters": [{ "type": "text", "text": "INV-7" }] },
            { "type": "body", "parameters": [{ "type": "text", "text": "Ann" },
                { "type": "currency", "currency": { "fallback_value": "$5", "code": "USD", "amount_1000": 5000 } }] },
            { "type": "button", "sub_type": "url", "index": "0", "parameters": [{ "type": "text", "text": "INV-7" }] },
        ]);
        let rendered = render(&definition, &components).unwrap();
        assert_eq!(
            rendered.text,
            "*Invoice INV-7*\n\nDear Ann, you owe $5.\n\n_Acme Ltd_\n\nPay: https://pay.example/INV-7\nCall us: +15550001111\n[Stop]"
        );
        assert_eq!(rendered.media, None);
        let missing = render(&definition, &json!([])).unwrap_err();
        assert!(missing.0.contains("{{1}}"), "{}", missing.0);
    }

    #[test]
    fn media_headers_and_named_parameters() {
        let definition = json!([
            { "type": "HEADER", "format": "DOCUMENT" },
            { "type": "BODY", "text": "Hello {{name}}" },
        ]);
        let components = json!([
            { "type": "header", "parameters": [{ "type": "document", "document": { "link": "http://x/a.pdf", "filename": "a.pdf" } }] },
            { "type": "body", "parameters": [{ "type": "text", "parameter_name": "name", "text": "Bo" }] },
        ]);
        let rendered = render(&definition, &components).unwrap();
        assert_eq!(rendered.text, "Hello Bo");
        assert_eq!(
            rendered.media,
            Some(HeaderMedia {
                kind: MediaKind::Document,
                source: json!({ "link": "http://x/a.pdf", "filename": "a.pdf" })
            })
        );
        assert!(render(&definition, &json!([])).is_err(), "the document is required");
    }
}
