//! Linked sessions reconnecting without a burst: the ones restored at start and the ones
//! taken over from another node share one pace, `--reconnect-rate` logins per second.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::{info, warn};

use super::supervisor::Command;
use super::{state, validate_id, Handle, SessionError, SessionManager};

impl SessionManager {
    /// Brings back every session of the data directory at once, so the API can answer for
    /// all of them; the linked ones then reconnect without a QR code, paced in the
    /// background (see [`SessionManager::reconnect_paced`]). Returns how many were linked.
    pub fn restore(self: &Arc<Self>) -> Result<usize, SessionError> {
        if self.cluster.get().is_some() {
            // The cluster's heartbeat takes this node's share of the sessions.
            return Ok(0);
        }
        let mut linked = Vec::new();
        let mut unknown = Vec::new();
        for record in self.store.sessions()? {
            // The registry skips such rows already; an id names files, so never trust one.
            if let Err(e) = validate_id(&record.id) {
                warn!("not restoring the session {:?} of the registry: {e}", record.id);
                continue;
            }
            // `me` is recorded at pair-success: the session was linked, or was linking (a
            // pairing whose credentials never reached the disk then starts a clean new link).
            let was_linked = record.me.is_some();
            self.spawn(&record.id, record.me, record.link_confirmed, was_linked, false)?;
            if was_linked {
                linked.push(record.id);
            } else {
                unknown.push(record.id);
            }
        }
        let total = linked.len() + unknown.len();
        if let Some(files) = self.config.open_files.filter(|files| total > files.sessions) {
            warn!(
                "the data directory holds {total} sessions, but the open-files limit of {} leaves room for {}: \
                 some will fail to connect; raise the limit (LimitNOFILE= or ulimit -n) and restart",
                files.soft, files.sessions
            );
        }
        let count = linked.len();
        if count > 0 {
            info!(
                "{count} linked session{} will reconnect, {} per second",
                if count == 1 { "" } else { "s" },
                self.config.reconnect_rate
            );
        }
        tokio::spawn(Self::reconnect_paced(Arc::downgrade(self), linked, unknown));
        Ok(count)
    }

    /// Starts the restored sessions one after another, at `--reconnect-rate` per second
    /// (each gap up to a quarter longer, at random), so that WhatsApp never sees a burst of
    /// logins from this address. A session a caller needed meanwhile has connected already
    /// and is skipped. Then the sessions the registry did not know as linked are checked
    /// for credentials on disk (older data directories).
    async fn reconnect_paced(manager: Weak<Self>, linked: Vec<String>, unknown: Vec<String>) {
        let Some(rate) = manager.upgrade().map(|m| m.config.reconnect_rate.max(1)) else { return };
        let gap = Duration::from_secs_f64(1.0 / f64::from(rate));
        for id in linked {
            if !Self::reconnect_in_turn(manager.clone(), id).await {
                return;
            }
        }
        for id in unknown {
            let Some(this) = manager.upgrade() else { return };
            let linked = match this.store.engine_store(&id) {
                Ok(store) => this.engine.linked_identity(&store).await.ok().flatten().is_some(),
                Err(_) => false,
            };
            if linked && !this.stopping.load(Ordering::Relaxed) {
                let _ = this.command(&id, |reply| Command::Start { reason: state::reason::RESTORED, reply }).await;
                drop(this);
                tokio::time::sleep(gap).await;
            }
        }
    }

    /// Reconnects a linked session waiting for its turn (restored at start, or taken over
    /// from another node) once its turn comes; skipped when a caller needed it meanwhile
    /// (it connected already) or it left this node. False once the gateway stops.
    pub(super) async fn reconnect_in_turn(manager: Weak<Self>, id: String) -> bool {
        let Some(this) = manager.upgrade() else { return false };
        if !this.waiting_turn(&id) {
            return true;
        }
        let turn = this.take_reconnect_turn();
        drop(this);
        tokio::time::sleep_until(turn).await;
        let Some(this) = manager.upgrade() else { return false };
        if this.stopping.load(Ordering::Relaxed) {
            return false;
        }
        if this.waiting_turn(&id) {
            if let Err(e) = this.command(&id, |reply| Command::Start { reason: state::reason::RESTORED, reply }).await {
                warn!(session = %id, "could not reconnect the session: {e}");
            }
        }
        true
    }

    /// The next free slot of `--reconnect-rate` (each gap up to a quarter longer, at random).
    fn take_reconnect_turn(&self) -> tokio::time::Instant {
        let gap = Duration::from_secs_f64(1.0 / f64::from(self.config.reconnect_rate.max(1)));
        let mut next = self.next_reconnect.lock().unwrap_or_else(|p| p.into_inner());
        let turn = (*next).max(tokio::time::Instant::now());
        *next = turn + gap.mul_f64(1.0 + rand::random::<f64>() / 4.0);
        turn
    }

    /// Whether the session is still waiting for its turn to reconnect after the start.
    fn waiting_turn(&self, id: &str) -> bool {
        self.sessions().get(id).is_some_and(Handle::waiting_turn)
    }

    /// How many restored sessions still wait for their turn to reconnect.
    pub fn waiting_to_reconnect(&self) -> usize {
        self.sessions().values().filter(|h| h.waiting_turn()).count()
    }
}
