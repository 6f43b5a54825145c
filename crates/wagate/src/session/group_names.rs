//! Group subjects for inbound group messages. Each group is looked up once and kept for a
//! while, so a busy group does not cost an iq per message. A message is committed with
//! what the cache knows at that moment; a lookup never sits between "received" and
//! "committed" (see `inbound`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use crate::engine::Connection;

/// A renamed group shows its new subject at the latest after this long.
const KEEP_FOR: Duration = Duration::from_secs(600);
/// A lookup never takes longer than this.
pub(super) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A failed lookup is not tried again for this long, so a slow or failing server does not
/// hold up every message of the group.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);
/// More groups than this and the cache starts over (a bound, not an expected size).
const MAX_GROUPS: usize = 1000;

#[derive(Default)]
pub(super) struct GroupNames {
    /// Group JID -> subject (`None`: the group could not be read) and until when it holds.
    known: Mutex<HashMap<String, (Option<String>, Instant)>>,
    /// One lookup at a time, so a burst of one group's messages asks once.
    lookups: tokio::sync::Mutex<()>,
}

impl GroupNames {
    /// What the cache knows of group `jid`: `None` when it must be looked up.
    pub(super) fn cached(&self, jid: &str) -> Option<Option<String>> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.get(jid).filter(|(_, until)| Instant::now() < *until).map(|(subject, _)| subject.clone())
    }

    /// The subject of group `jid`, from the cache or else asked of WhatsApp.
    pub(super) async fn subject(&self, session: &str, conn: &dyn Connection, jid: &str) -> Option<String> {
        let _one_at_a_time = self.lookups.lock().await;
        if let Some(subject) = self.cached(jid) {
            return subject;
        }
        let (subject, keep) = match tokio::time::timeout(LOOKUP_TIMEOUT, conn.group(jid)).await {
            Ok(Ok(group)) => (group.map(|g| g.subject), KEEP_FOR),
            Ok(Err(e)) => {
                warn!(session = %session, group = %jid, "could not look up the group's subject: {e}");
                (None, RETRY_AFTER_FAILURE)
            }
            Err(_) => {
                warn!(session = %session, group = %jid, "looking up the group's subject took too long");
                (None, RETRY_AFTER_FAILURE)
            }
        };
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= MAX_GROUPS {
            known.clear();
        }
        known.insert(jid.to_string(), (subject.clone(), Instant::now() + keep));
        subject
    }
}
