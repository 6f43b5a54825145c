//! `wagate doctor --database postgres://...`: the cluster's side. The database answers and
//! is on this build's schema; the nodes are alive (or are known to be gone); every session
//! has a live lease; clocks agree with the database's.

use std::time::Duration;

use tokio_postgres::Client;

use super::{Report, STEP_TIMEOUT};
use crate::cluster::leases::{self, NodeRow};
use crate::cluster::DEFAULT_LEASE_TTL;

/// A node's clock may be this far from the database's before doctor says so. Leases use
/// the database's clock alone; a skewed node writes wrong times into logs and events.
const CLOCK_SKEW_WARN_MS: f64 = 2_000.0;
/// Beyond this, certificates and message timestamps go wrong.
const CLOCK_SKEW_FAIL_MS: f64 = 60_000.0;

const START_THE_DATABASE: &str = "check the URL, and that PostgreSQL runs and accepts this machine \
     (docs/cluster.md); every node must reach it";

pub async fn checks(report: &mut Report, url: &str, lease_ttl: Duration) {
    let Some(client) = connect(report, url).await else { return };
    schema(report, &client).await;
    clock(report, &client).await;
    let Ok(nodes) = leases::nodes_with(&client, lease_ttl).await.inspect_err(|e| {
        report.fail(format!("the cluster's tables cannot be read: {e}"), "start one node (wagate serve --database ...)")
    }) else {
        return;
    };
    nodes_alive(report, &nodes);
    leases_held(report, &client).await;
}

async fn connect(report: &mut Report, url: &str) -> Option<Client> {
    let settings = match crate::store::postgres::Settings::parse(url) {
        Ok(settings) => settings,
        Err(e) => {
            report.fail(e.to_string(), "use postgres://user:password@host:port/db (docs/cluster.md)");
            return None;
        }
    };
    let connected = tokio::time::timeout(STEP_TIMEOUT, settings.config.connect(settings.tls.clone())).await;
    let (client, connection) = match connected {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            report.fail(format!("the database does not accept the connection: {e}"), START_THE_DATABASE);
            return None;
        }
        Err(_) => {
            report.fail(format!("the database did not answer within {STEP_TIMEOUT:?}"), START_THE_DATABASE);
            return None;
        }
    };
    tokio::spawn(connection);
    let version = client
        .query_one("SHOW server_version", &[])
        .await
        .map(|row| row.get::<_, String>(0))
        .unwrap_or_else(|_| "unknown".into());
    report.ok(format!("the database answers (PostgreSQL {version})"));
    Some(client)
}

/// Both parts of the schema (wagate's tables, the engine's) are the ones this build uses.
async fn schema(report: &mut Report, client: &Client) {
    let wanted =
        [("store", crate::store::postgres::SCHEMA_VERSION), ("engine", crate::engine::postgres::SCHEMA_VERSION)];
    for (component, wanted) in wanted {
        let found = client
            .query_opt("SELECT version FROM wagate_migrations WHERE component = $1", &[&component])
            .await
            .map(|row| row.map_or(0, |row| row.get::<_, i32>(0)));
        let found = match found {
            Ok(found) => usize::try_from(found).unwrap_or(0),
            Err(_) => 0,
        };
        let what = format!("schema of the {component} tables: {found} (this wagate uses {wanted})");
        if found == wanted {
            report.ok(what);
        } else if found < wanted {
            report.warn(what, "start a node of this version (wagate serve --database ...): it migrates at start");
        } else {
            report.fail(what, "this wagate is older than the database: run the newest wagate on every node");
        }
    }
}

/// This machine's clock against the database's (the nodes' are in `nodes_alive`).
async fn clock(report: &mut Report, client: &Client) {
    let before = crate::webhook::now_ms() as f64;
    let Ok(row) = client.query_one("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8 * 1000", &[]).await else {
        return;
    };
    let here = (before + crate::webhook::now_ms() as f64) / 2.0;
    let database: f64 = row.get(0);
    skew(report, "this machine's clock", here - database);
}

fn skew(report: &mut Report, whose: &str, offset_ms: f64) {
    let what = format!(
        "{whose} is {:.0} ms {} the database's",
        offset_ms.abs(),
        if offset_ms >= 0.0 { "ahead of" } else { "behind" }
    );
    const FIX: &str = "run NTP (chrony or systemd-timesyncd) on every node and on the database's machine";
    if offset_ms.abs() >= CLOCK_SKEW_FAIL_MS {
        report.fail(what, FIX);
    } else if offset_ms.abs() >= CLOCK_SKEW_WARN_MS {
        report.warn(what, FIX);
    } else {
        report.ok(what);
    }
}

/// Every node: alive, draining or gone; and their clocks.
fn nodes_alive(report: &mut Report, nodes: &[NodeRow]) {
    if nodes.is_empty() {
        report.warn("no node has joined the cluster yet", "start one: wagate serve --database ...");
        return;
    }
    let alive: Vec<&NodeRow> = nodes.iter().filter(|n| n.alive).collect();
    if alive.is_empty() {
        report.fail(
            format!("none of the {} nodes is alive: nobody runs the sessions", nodes.len()),
            "start a node: wagate serve --database ... (it takes the sessions without a QR code)",
        );
    }
    for node in nodes {
        let room = if node.max_sessions > 0 { format!(" of {}", node.max_sessions) } else { String::new() };
        let what = format!(
            "node {} ({}): {} sessions{room}, last heartbeat {:.1} s ago{}",
            node.id,
            node.advertise_url,
            node.sessions,
            node.heartbeat_age_s,
            if node.draining { ", draining" } else { "" }
        );
        if node.alive {
            report.ok(what);
            skew(report, &format!("node {}'s clock", node.id), node.clock_offset_ms);
        } else if node.sessions > 0 {
            report.warn(
                format!("{what}: not alive, yet holds leases"),
                "they lapse within a lease time and the live nodes take them; if not, check the other nodes",
            );
        } else {
            report.ok(format!("{what}: stopped"));
        }
    }
}

/// Sessions without a live lease run nowhere.
async fn leases_held(report: &mut Report, client: &Client) {
    let Ok(rows) = client
        .query(
            "SELECT s.id FROM sessions s LEFT JOIN wagate_leases l ON l.session = s.id AND l.expires_at > now()
             WHERE l.session IS NULL ORDER BY s.id",
            &[],
        )
        .await
    else {
        return;
    };
    let total: i64 = client.query_one("SELECT COUNT(*) FROM sessions", &[]).await.map_or(0, |row| row.get(0));
    let unowned: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    if unowned.is_empty() {
        report.ok(format!("every one of the {total} sessions has a live lease (a node runs it)"));
        return;
    }
    let shown: Vec<&str> = unowned.iter().take(5).map(String::as_str).collect();
    let more =
        if unowned.len() > shown.len() { format!(" and {} more", unowned.len() - shown.len()) } else { String::new() };
    report.warn(
        format!(
            "{} of {total} sessions have no live lease (no node runs them): {}{more}",
            unowned.len(),
            shown.join(", ")
        ),
        &format!(
            "a live node takes them within a lease time ({} s by default); if they stay, the live nodes are full \
             (--max-sessions) or draining: start another node",
            DEFAULT_LEASE_TTL.as_secs()
        ),
    );
}
