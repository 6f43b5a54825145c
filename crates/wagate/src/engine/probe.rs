//! Can this machine reach WhatsApp? The steps a connection takes (DNS, TCP, TLS, the
//! WebSocket upgrade), each on its own short deadline, so that `wagate doctor` can say which
//! one fails instead of hanging or reporting one vague error.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::proxy::Proxy;
use super::transport::Target;

/// One step of the way and how it went.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    /// `Ok` with what was found, `Err` with why it failed.
    pub outcome: Result<String, String>,
}

#[derive(Debug, Clone)]
pub struct Probe {
    /// In order; the first failure ends the list.
    pub steps: Vec<Step>,
    /// The server's clock minus ours, from the `Date` header of the upgrade answer.
    pub clock_offset: Option<chrono::Duration>,
}

impl Probe {
    pub fn reached(&self) -> bool {
        self.steps.iter().all(|s| s.outcome.is_ok())
    }
}

/// Walks the steps to `url` (through `proxy`, if any), giving each at most `each`.
pub async fn probe(url: &str, proxy: Option<&Proxy>, each: Duration) -> Probe {
    let mut probe = Probe { steps: Vec::new(), clock_offset: None };
    let target = match Target::parse(url) {
        Ok(target) => target,
        Err(e) => {
            probe.steps.push(Step { name: "URL", outcome: Err(format!("{e:#}")) });
            return probe;
        }
    };
    let step = |name, outcome| Step { name, outcome };
    let deadline = |name: &str| format!("no answer within {} s ({name})", each.as_secs());

    // With a proxy the proxy resolves the name; what this machine resolves does not matter.
    if proxy.is_none() {
        let lookup = tokio::time::timeout(each, tokio::net::lookup_host((target.host.as_str(), target.port))).await;
        let outcome = match lookup {
            Ok(Ok(addrs)) => {
                let addrs: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
                Ok(format!("{} resolves to {}", target.host, addrs.join(", ")))
            }
            Ok(Err(e)) => Err(format!("cannot resolve {}: {e}", target.host)),
            Err(_) => Err(deadline("DNS")),
        };
        let failed = outcome.is_err();
        probe.steps.push(step("DNS", outcome));
        if failed {
            return probe;
        }
    }

    let tcp = match tokio::time::timeout(each, target.connect(proxy)).await {
        Ok(Ok(tcp)) => {
            let via = proxy.map(|p| format!(" through the proxy {p}")).unwrap_or_default();
            probe.steps.push(step("TCP", Ok(format!("connected to {}:{}{via}", target.host, target.port))));
            tcp
        }
        Ok(Err(e)) => return failed(probe, "TCP", format!("{e:#}")),
        Err(_) => return failed(probe, "TCP", deadline("TCP connect")),
    };
    let stream = match tokio::time::timeout(each, target.secure(tcp)).await {
        Ok(Ok(stream)) => {
            if target.tls {
                probe.steps.push(step("TLS", Ok(format!("TLS session with {} set up", target.host))));
            }
            stream
        }
        Ok(Err(e)) => return failed(probe, "TLS", format!("{e:#}")),
        Err(_) => return failed(probe, "TLS", deadline("TLS handshake")),
    };
    let asked = Utc::now();
    match tokio::time::timeout(each, target.upgrade(stream)).await {
        Ok(Ok((socket, response))) => {
            let answered = Utc::now();
            probe.steps.push(step("WebSocket", Ok(format!("{} accepted the WebSocket upgrade", target.uri))));
            probe.clock_offset = response
                .headers()
                .get(http::header::DATE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| DateTime::parse_from_rfc2822(v).ok())
                .map(|server| server.with_timezone(&Utc) - (asked + (answered - asked) / 2));
            drop(socket);
        }
        Ok(Err(e)) => return failed(probe, "WebSocket", format!("{e:#}")),
        Err(_) => return failed(probe, "WebSocket", deadline("WebSocket upgrade")),
    }
    probe
}

fn failed(mut probe: Probe, name: &'static str, why: String) -> Probe {
    probe.steps.push(Step { name, outcome: Err(why) });
    probe
}
