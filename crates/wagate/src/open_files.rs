//! The open-files limit (`RLIMIT_NOFILE`) decides how many sessions one gateway can hold:
//! every session keeps a socket open, the engine's shards theirs, and the API needs
//! descriptors for its connections. Shells and many service managers give a soft limit of
//! 1024, which wagate (with one engine database per session then) used to hit at about 200
//! sessions: `accept` failed and the API went dark. So at start the soft limit is raised to
//! the hard one, and the number of sessions is capped to what fits beside a reserve for the API.

use crate::engine::shards::SHARDS;

/// Descriptors one session holds on average, in hundredths: its WebSocket (measured: 1.00 per
/// linked idle session beside the shards' fixed share; 1.48 in all at 50 sessions, see
/// `open_files_per_linked_session` in tests/limits.rs), and a quarter more for what comes and
/// goes (a media transfer, a lookup, the second connection of a pairing). With one engine
/// database per session it was 5 (4.6 measured at 2,000 idle sessions).
pub const FILES_PER_100_SESSIONS: u64 = 125;
/// Descriptors of the engine's shards, whatever the number of sessions: each shard's database,
/// -wal and -shm, shared by all its sessions.
pub const SHARD_FILES: u64 = 3 * SHARDS as u64;
/// Descriptors of the gateway itself: `wagate.db` and its -wal and -shm, the lock, the log,
/// the listener, webhook connections, standard streams, the runtime (19 measured at start),
/// and the shards.
pub const BASE: u64 = 64 + SHARD_FILES;
/// A soft limit raised to an unlimited hard limit stops here (the kernel's usual
/// `nr_open` is 1,048,576).
const CEILING: u64 = 1 << 20;

/// What the limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileBudget {
    /// The soft limit in force (after raising) and the hard limit.
    pub soft: u64,
    pub hard: u64,
    /// API connections served at once: the `--max-connections` asked for, or less when the
    /// limit leaves no room for that many.
    pub connections: usize,
    /// Sessions that fit beside them.
    pub sessions: usize,
}

impl FileBudget {
    /// Splits a soft limit: at most a quarter (beyond the base) for API connections, the
    /// rest for sessions.
    pub fn plan(soft: u64, hard: u64, max_connections: usize) -> Self {
        let spare = soft.saturating_sub(BASE);
        let connections = (max_connections as u64).min(spare / 4).max(1);
        let sessions = spare.saturating_sub(connections) * 100 / FILES_PER_100_SESSIONS;
        Self { soft, hard, connections: connections as usize, sessions: sessions as usize }
    }
}

/// The current (soft, hard) limits, or `None` where there is no such limit.
pub fn limits() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    Some((limit.rlim_cur, limit.rlim_max))
}

/// Raises the soft limit to the hard one (capped) and returns the budget, with the limits
/// before, for the log. `None` when the limits cannot be read.
pub fn raise(max_connections: usize) -> Option<(FileBudget, u64)> {
    let (soft, hard) = limits()?;
    let wanted = hard.min(CEILING).max(soft);
    if wanted > soft {
        let limit = libc::rlimit { rlim_cur: wanted, rlim_max: hard };
        // SAFETY: setrlimit only reads the struct it is given; a refusal leaves the limit as it was.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Some((FileBudget::plan(soft, hard, max_connections), soft));
        }
    }
    let (now, hard) = limits()?;
    Some((FileBudget::plan(now, hard, max_connections), soft))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_split_between_the_api_and_the_sessions() {
        // The shell default: room for the API, and the sessions that fit beside it.
        let small = FileBudget::plan(1024, 1024, 1024);
        assert_eq!(BASE, 88);
        assert_eq!(small.connections, 234);
        assert_eq!(small.sessions, (1024 - 88 - 234) * 100 / 125);
        assert_eq!(small.sessions, 561, "four times as many as with one engine database per session");
        // A service manager's usual limit: every connection asked for, thousands of sessions.
        let large = FileBudget::plan(65536, 65536, 1024);
        assert_eq!(large.connections, 1024);
        assert!(large.sessions > 50_000, "{large:?}");
        // A limit below the base still answers one connection and holds no session.
        let tiny = FileBudget::plan(10, 10, 1024);
        assert_eq!((tiny.connections, tiny.sessions), (1, 0));
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let (budget, _before) = raise(1024).expect("Linux has the limit");
        let (soft, hard) = limits().unwrap();
        assert_eq!(budget.soft, soft);
        assert_eq!(soft, hard.min(CEILING).max(soft));
    }
}
