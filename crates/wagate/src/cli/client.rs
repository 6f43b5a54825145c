//! The operator commands' side of the HTTP API: which URL the gateway answers on, JSON
//! calls with errors in words, and the session event stream (Server-Sent Events).

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use super::GatewayArgs;
use crate::http::trust::CLIENT_HEADER;
use crate::store::lock::{self, LockState};

const DEFAULT_URL: &str = "http://127.0.0.1:3000";

/// The gateway's base URL: as given, else where the gateway holding `data_dir` listens,
/// else the default address.
pub fn base_url(args: &GatewayArgs, data_dir: Option<&Path>) -> String {
    if let Some(url) = &args.url {
        return url.trim_end_matches('/').to_string();
    }
    let listening = data_dir.and_then(|dir| match lock::inspect(dir) {
        Ok(LockState::Held(Some(owner))) => owner.listen,
        _ => None,
    });
    match listening {
        Some(listen) => format!("http://{}", reachable(&listen)),
        None => DEFAULT_URL.to_string(),
    }
}

/// A listen address made into one to call: a wildcard address means this machine.
fn reachable(listen: &str) -> String {
    if let Some(port) = listen.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = listen.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        listen.to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no gateway answers at {url} ({reason})")]
    NotRunning { url: String, reason: String },
    #[error("the gateway answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("talking to the gateway at {url}: {reason}")]
    Broken { url: String, reason: String },
}

pub struct Client {
    pub base: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: String, api_key: Option<String>) -> anyhow::Result<Self> {
        // No overall timeout: the event stream stays open; calls get theirs in `call`.
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(3)).build()?;
        Ok(Self { base, api_key: api_key.filter(|k| !k.is_empty()), http })
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        // Marks the call as wagate's own, so a POST without a body is not taken for a form.
        let request = self.http.request(method, format!("{}{path}", self.base)).header(CLIENT_HEADER, "cli");
        match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    fn failure(&self, error: reqwest::Error) -> ClientError {
        let reason = error.to_string();
        let reason = match std::error::Error::source(&error) {
            Some(cause) => format!("{reason}: {cause}"),
            None => reason,
        };
        if error.is_connect() || error.is_timeout() {
            ClientError::NotRunning { url: self.base.clone(), reason }
        } else {
            ClientError::Broken { url: self.base.clone(), reason }
        }
    }

    /// A JSON call; an answer other than 2xx becomes [`ClientError::Api`] with its `error` text.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let mut request = self.request(method, path).timeout(Duration::from_secs(45));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| self.failure(e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.failure(e))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(value)
        } else {
            let message = value["error"].as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
            Err(ClientError::Api { status: status.as_u16(), message })
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, None).await
    }

    /// `/health`, asked briefly: the question is whether anyone answers.
    pub async fn health(&self) -> Result<Value, ClientError> {
        let response = self
            .request(Method::GET, "/health")
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map_err(|e| self.failure(e))?;
        response.json().await.map_err(|e| self.failure(e))
    }

    /// Follows a Server-Sent Events stream.
    pub async fn events(&self, path: &str) -> Result<EventStream, ClientError> {
        let response = self
            .request(Method::GET, path)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| self.failure(e))?;
        let status = response.status();
        if !status.is_success() {
            let value: Value = response.json().await.unwrap_or_default();
            let message = value["error"].as_str().unwrap_or("no details").to_string();
            return Err(ClientError::Api { status: status.as_u16(), message });
        }
        Ok(EventStream { response, buffer: String::new() })
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub data: String,
}

pub struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    /// The next event; `None` when the gateway closed the stream.
    pub async fn next(&mut self) -> Result<Option<Event>, ClientError> {
        loop {
            if let Some(event) = take_event(&mut self.buffer) {
                return Ok(Some(event));
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.buffer.push_str(&String::from_utf8_lossy(&bytes).replace('\r', "")),
                Ok(None) => return Ok(None),
                Err(e) => return Err(ClientError::Broken { url: String::new(), reason: e.to_string() }),
            }
        }
    }
}

/// Takes the first complete event (ended by a blank line) out of `buffer`; comments and
/// keep-alives are skipped.
fn take_event(buffer: &mut String) -> Option<Event> {
    loop {
        let end = buffer.find("\n\n")?;
        let block: String = buffer.drain(..end + 2).collect();
        let mut event = Event { name: "message".into(), data: String::new() };
        let mut has_data = false;
        for line in block.lines() {
            if let Some(name) = line.strip_prefix("event:") {
                event.name = name.trim_start().to_string();
            } else if let Some(data) = line.strip_prefix("data:") {
                if has_data {
                    event.data.push('\n');
                }
                event.data.push_str(data.strip_prefix(' ').unwrap_or(data));
                has_data = true;
            }
        }
        if has_data {
            return Some(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_at_blank_lines() {
        let mut buffer = ": keep-alive\n\nevent: state\ndata: {\"a\":1}\n\nevent: state\nda".to_string();
        assert_eq!(take_event(&mut buffer), Some(Event { name: "state".into(), data: "{\"a\":1}".into() }));
        assert_eq!(take_event(&mut buffer), None, "the second event is not complete yet");
        buffer.push_str("ta: 2\ndata: 3\n\n");
        assert_eq!(take_event(&mut buffer), Some(Event { name: "state".into(), data: "2\n3".into() }));
    }

    #[test]
    fn wildcard_listen_addresses_mean_this_machine() {
        assert_eq!(reachable("0.0.0.0:3000"), "127.0.0.1:3000");
        assert_eq!(reachable("[::]:3000"), "[::1]:3000");
        assert_eq!(reachable("127.0.0.1:4000"), "127.0.0.1:4000");
    }
}
