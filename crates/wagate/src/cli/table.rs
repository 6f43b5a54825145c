//! Sessions as the operator commands show them: one row per session, from the running
//! gateway's API or from the registry on disk, in one table layout.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::session::state::{explain, needs_companion_hint, reason_words, LastState};
use crate::session::StateKind;
use crate::store::SessionRecord;

#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: String,
    /// `None` when the registry has no recorded state for it.
    pub state: Option<StateKind>,
    pub reason: Option<String>,
    pub code: Option<u16>,
    pub since: Option<DateTime<Utc>>,
    pub banned_until: Option<String>,
    /// `+<digits>` and the push name, once linked.
    pub number: Option<String>,
    pub push_name: Option<String>,
    /// On a cluster: the node that runs it.
    pub node: Option<String>,
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
}

impl SessionRow {
    /// From a `SessionView` as `/v1/sessions` answers it.
    pub fn from_api(view: &Value) -> Self {
        let text = |key: &str| view[key].as_str().map(str::to_string);
        Self {
            id: text("id").unwrap_or_default(),
            state: serde_json::from_value(view["state"].clone()).ok(),
            reason: text("reason"),
            code: view["code"].as_u64().and_then(|c| u16::try_from(c).ok()),
            since: view["since"].as_str().and_then(parse_time),
            banned_until: text("banned_until"),
            number: view["me"]["phone"].as_str().map(|p| format!("+{p}")),
            push_name: view["me"]["push_name"].as_str().map(str::to_string),
            node: text("node"),
        }
    }

    /// From the registry (the gateway's last recorded state).
    pub fn from_record(record: &SessionRecord) -> Self {
        let last: Option<&LastState> = record.last_state.as_ref();
        Self {
            id: record.id.clone(),
            state: last.map(|l| l.state),
            reason: last.and_then(|l| l.reason.clone()),
            code: last.and_then(|l| l.code),
            since: last.and_then(|l| parse_time(&l.since)),
            banned_until: last.and_then(|l| l.banned_until.clone()),
            number: record.me.as_ref().and_then(|m| m.phone.as_ref()).map(|p| format!("+{p}")),
            push_name: record.me.as_ref().and_then(|m| m.push_name.clone()),
            node: None,
        }
    }

    pub fn state_name(&self) -> &'static str {
        self.state.map_or("unknown", StateKind::as_str)
    }

    /// The reason in plain words ("-" when the state needs none).
    pub fn reason_text(&self) -> String {
        self.reason.as_deref().map_or_else(|| "-".to_string(), |r| reason_words(r, self.code))
    }

    /// What to do about the session's state, in full (the API's own `detail`).
    pub fn explanation(&self) -> String {
        let Some(state) = self.state else {
            return "The gateway has not recorded a state for this session yet.".to_string();
        };
        let mut text = explain(state, self.reason.as_deref(), self.code);
        if let Some(until) = &self.banned_until {
            text = format!("{text} The ban ends at {until}.");
        }
        text
    }

    pub fn needs_companion_hint(&self) -> bool {
        self.state.is_some_and(|s| needs_companion_hint(s, self.reason.as_deref()))
    }

    pub fn who(&self) -> String {
        match (&self.number, &self.push_name) {
            (Some(number), Some(name)) => format!("{number} ({name})"),
            (Some(number), None) => number.clone(),
            _ => "-".to_string(),
        }
    }
}

/// `3 min ago`, `in 2 h`, `just now`.
pub fn ago(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (now - then).num_seconds();
    let (amount, future) = (seconds.unsigned_abs(), seconds < 0);
    let span = match amount {
        0..5 => return "just now".to_string(),
        5..60 => format!("{amount} s"),
        60..3600 => format!("{} min", amount / 60),
        3600..86_400 => format!("{} h", amount / 3600),
        _ => format!("{} days", amount / 86_400),
    };
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// Seconds as `2 h 5 min`, `40 s`, `3 days 1 h`.
pub fn duration_words(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min {} s", seconds / 60, seconds % 60),
        3600..86_400 => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{} days {} h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

/// The sessions as an aligned text table (with a header), or a line saying there are none.
pub fn render(rows: &[SessionRow], now: DateTime<Utc>) -> String {
    if rows.is_empty() {
        return "no sessions\n".to_string();
    }
    // The node column only on a cluster.
    let with_node = rows.iter().any(|row| row.node.is_some());
    let mut header: Vec<String> = ["SESSION", "STATE", "SINCE", "NUMBER", "LAST REASON"].map(str::to_string).into();
    if with_node {
        header.insert(1, "NODE".to_string());
    }
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut cells = vec![
                row.id.clone(),
                row.state_name().to_string(),
                row.since.map_or_else(|| "-".to_string(), |t| ago(t, now)),
                row.who(),
                row.reason_text(),
            ];
            if with_node {
                cells.insert(1, row.node.clone().unwrap_or_else(|| "-".to_string()));
            }
            cells
        })
        .collect();
    aligned(&header, &lines)
}

/// The nodes of a cluster as `/v1/nodes` answers them, as an aligned table.
pub fn render_nodes(nodes: &[Value]) -> String {
    let header: Vec<String> = ["NODE", "STATE", "SESSIONS", "HEARTBEAT", "URL"].map(str::to_string).into();
    let lines: Vec<Vec<String>> = nodes
        .iter()
        .map(|node| {
            let state = match (node["alive"].as_bool(), node["draining"].as_bool()) {
                (Some(true), Some(true)) => "draining",
                (Some(true), _) => "alive",
                _ => "gone",
            };
            let this = if node["this"] == Value::Bool(true) { " (this)" } else { "" };
            let sessions = match node["max_sessions"].as_i64() {
                Some(max) if max > 0 => format!("{} of {max}", node["sessions"]),
                _ => node["sessions"].to_string(),
            };
            let heartbeat = node["heartbeat_age_s"].as_f64().map_or("-".to_string(), |s| format!("{s:.1} s ago"));
            vec![
                format!("{}{this}", node["id"].as_str().unwrap_or("?")),
                state.to_string(),
                sessions,
                heartbeat,
                node["advertise_url"].as_str().unwrap_or("-").to_string(),
            ]
        })
        .collect();
    aligned(&header, &lines)
}

/// Rows as columns padded to their widest cell.
fn aligned(header: &[String], lines: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for line in lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in std::iter::once(header).chain(lines.iter().map(Vec::as_slice)) {
        let cells: Vec<String> = line.iter().zip(&widths).map(|(cell, &width)| format!("{cell:<width$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_words() {
        let now = Utc::now();
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now - chrono::Duration::seconds(200), now), "3 min ago");
        assert_eq!(ago(now + chrono::Duration::hours(2), now), "in 2 h");
        assert_eq!(ago(now - chrono::Duration::days(3), now), "3 days ago");
        assert_eq!(duration_words(7500), "2 h 5 min");
    }

    #[test]
    fn api_views_become_aligned_rows() {
        let now = Utc::now();
        let since = crate::session::state::timestamp(now - chrono::Duration::seconds(180));
        let view = serde_json::json!({
            "id": "WA-Acme", "state": "logged_out", "reason": "logged_out", "code": 401, "since": since,
            "me": { "phone": "15551234567", "push_name": "Acme" }
        });
        let row = SessionRow::from_api(&view);
        assert_eq!(row.state, Some(StateKind::LoggedOut));
        assert!(row.needs_companion_hint());
        let table = render(&[row, SessionRow::from_api(&serde_json::json!({ "id": "b", "state": "connected" }))], now);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[1].contains("3 min ago") && lines[1].contains("unlinked from the phone (401)"), "{table}");
        assert!(lines[1].contains("+15551234567 (Acme)"), "{table}");
        assert_eq!(lines[0].find("STATE"), lines[2].find("connected"), "columns line up:\n{table}");
        assert!(!lines[0].contains("NODE"), "no node column off a cluster: {table}");
    }

    #[test]
    fn a_cluster_shows_each_sessions_node() {
        let now = Utc::now();
        let rows = [
            SessionRow::from_api(&serde_json::json!({ "id": "a", "state": "connected", "node": "node-b" })),
            SessionRow::from_api(&serde_json::json!({ "id": "b", "state": "stopped", "reason": "no_node_runs_it" })),
        ];
        let table = render(&rows, now);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("SESSION  NODE"), "{table}");
        assert_eq!(lines[0].find("NODE"), lines[1].find("node-b"), "{table}");
        assert!(lines[2].contains(" - ") && lines[2].contains("no node runs it now"), "{table}");
    }
}
