//! A webhook receiver for tests: records every request and answers as scripted.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::Value;

#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16),
    /// 429 with `Retry-After: <seconds>`.
    TooMany(u64),
    /// Never answers (the gateway's timeout fires).
    Hang,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub json: Value,
    /// What the receiver answered (`None`: it hung).
    pub answered: Option<u16>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn id(&self) -> &str {
        self.json["id"].as_str().unwrap_or_default()
    }
}

#[derive(Default)]
struct Script {
    next: VecDeque<Answer>,
    otherwise: Option<Answer>,
    received: Vec<Received>,
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    script: Arc<Mutex<Script>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    /// A receiver answering 200 unless told otherwise.
    pub async fn start() -> Self {
        let script = Arc::new(Mutex::new(Script { otherwise: Some(Answer::Status(200)), ..Default::default() }));
        let app = Router::new().route("/hook", post(handle)).with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url: format!("http://{addr}/hook"), script, task: Arc::new(task) }
    }

    /// These answers first, in order; then `otherwise` for every request.
    pub fn script(&self, next: Vec<Answer>, otherwise: Answer) {
        let mut script = self.script.lock().unwrap();
        script.next = next.into();
        script.otherwise = Some(otherwise);
    }

    pub fn received(&self) -> Vec<Received> {
        self.script.lock().unwrap().received.clone()
    }

    /// Ids that were answered 2xx, in the order they were.
    pub fn delivered_ids(&self) -> Vec<String> {
        self.received()
            .iter()
            .filter(|r| r.answered.is_some_and(|s| (200..300).contains(&s)))
            .map(|r| r.id().to_string())
            .collect()
    }

    /// Waits until `check` accepts what arrived so far.
    pub async fn wait_for(&self, what: &str, wait: Duration, check: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let received = self.received();
            if check(&received) {
                return received;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; received: {:?}",
                received
                    .iter()
                    .map(|r| (r.json["event"].clone(), r.json["data"]["state"].clone(), r.answered))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

async fn handle(State(script): State<Arc<Mutex<Script>>>, headers: HeaderMap, body: Bytes) -> Response {
    let answer = {
        let mut script = script.lock().unwrap();
        script.next.pop_front().or_else(|| script.otherwise.clone()).unwrap_or(Answer::Status(200))
    };
    let body = String::from_utf8_lossy(&body).to_string();
    let answered = match &answer {
        Answer::Status(status) => Some(*status),
        Answer::TooMany(_) => Some(429),
        Answer::Hang => None,
    };
    script.lock().unwrap().received.push(Received {
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string())).collect(),
        json: serde_json::from_str(&body).unwrap_or(Value::Null),
        body,
        answered,
    });
    match answer {
        Answer::Status(status) => StatusCode::from_u16(status).unwrap().into_response(),
        Answer::TooMany(seconds) => {
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", seconds.to_string())]).into_response()
        }
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
    }
}
