//! What the whole cluster runs: every session with the node that runs it. Each node knows
//! the live state of its own sessions, so they are asked (in parallel, briefly); a session
//! no node answers for is shown from the registry, with why.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{forward, Cluster};
use crate::session::state::reason;
use crate::session::{SessionManager, SessionView, StateKind};

/// How long another node may take to list its sessions before they are shown without it.
const ASK_WAIT: Duration = Duration::from_secs(3);

/// A session and the node that runs it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeSession {
    #[serde(flatten)]
    pub view: SessionView,
    /// The node that runs it (on a cluster; absent on a gateway that runs alone, and when no
    /// node holds its lease).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// This node's sessions alone.
pub fn local(manager: &SessionManager) -> Vec<NodeSession> {
    let node = manager.cluster().map(|c| c.node_id().to_string());
    manager.list().into_iter().map(|view| NodeSession { view, node: node.clone() }).collect()
}

/// Every session of the cluster, in the registry's order (when it was created).
pub async fn everywhere(manager: &SessionManager, cluster: &Cluster, api_key: Option<&str>) -> Vec<NodeSession> {
    let me = cluster.node_id();
    let mut live: HashMap<String, NodeSession> =
        local(manager).into_iter().map(|listed| (listed.view.id.clone(), listed)).collect();
    let nodes = cluster.nodes().await.unwrap_or_default();
    let others = nodes.iter().filter(|n| n.alive && n.id != me);
    let answers = futures_util::future::join_all(others.map(|node| async move {
        let listed = forward::ask::<Vec<NodeSession>>(&node.advertise_url, "/v1/sessions", me, api_key, ASK_WAIT).await;
        (node.id.clone(), listed)
    }))
    .await;
    let owners = cluster.owners().await.unwrap_or_default();
    let mut unreachable = Vec::new();
    for (node, listed) in answers {
        match listed {
            Ok(sessions) => {
                for mut session in sessions {
                    // During a move two nodes may list it for a moment: the lease decides.
                    if live.contains_key(&session.view.id) && owners.get(&session.view.id) != Some(&node) {
                        continue;
                    }
                    session.node = Some(node.clone());
                    live.insert(session.view.id.clone(), session);
                }
            }
            Err(e) => {
                tracing::warn!(node = %node, "node did not list its sessions: {e}");
                unreachable.push(node);
            }
        }
    }
    let registry = manager.store().sessions().unwrap_or_default();
    let mut all = Vec::with_capacity(registry.len().max(live.len()));
    for record in registry {
        if let Some(session) = live.remove(&record.id) {
            all.push(session);
            continue;
        }
        let node = owners.get(&record.id).cloned();
        let (state, why) = match &node {
            Some(owner) if unreachable.contains(owner) => (StateKind::Stopped, reason::NODE_UNREACHABLE),
            // Taken a moment ago, not started yet.
            Some(_) => (StateKind::Connecting, reason::STARTED),
            None => (StateKind::Stopped, reason::NO_NODE),
        };
        let view = SessionView::new(&record.id, state, Some(why), record.me);
        all.push(NodeSession { view, node });
    }
    // Created after the registry was read.
    all.extend(live.into_values());
    all
}
