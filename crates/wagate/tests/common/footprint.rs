//! What a running process costs, read from `/proc`: open files by kind, resident memory and
//! CPU time. Shared by the open-files test and the `scale` benchmark.

use std::collections::HashSet;

/// What process `pid` holds open, counted by kind.
#[derive(Debug, Default)]
pub struct OpenFiles {
    /// TCP connections to the API's port (the caller's own HTTP clients: budgeted apart).
    pub api: usize,
    /// Every other socket: WhatsApp connections, the listener, the runtime's.
    pub sockets: usize,
    /// Files: databases, logs, the lock.
    pub files: Vec<String>,
}

impl OpenFiles {
    pub fn of(pid: u32, api_port: u16) -> Self {
        // The socket inodes of connections whose local port is the API's.
        let mut api_inodes = HashSet::new();
        for table in ["tcp", "tcp6"] {
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else { continue };
            for line in text.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local_port =
                    fields.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
                // State 0A is the listener itself.
                if local_port == Some(api_port) && fields.get(3) != Some(&"0A") {
                    api_inodes.insert(fields.get(9).unwrap_or(&"").to_string());
                }
            }
        }
        let mut found = Self::default();
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return found };
        for entry in entries.flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else { continue };
            let target = target.to_string_lossy().into_owned();
            match target.strip_prefix("socket:[").and_then(|rest| rest.strip_suffix(']')) {
                Some(inode) if api_inodes.contains(inode) => found.api += 1,
                Some(_) => found.sockets += 1,
                None => found.files.push(target),
            }
        }
        found.files.sort();
        found
    }

    /// Everything but the API's connections.
    pub fn held(&self) -> usize {
        self.sockets + self.files.len()
    }
}

/// The resident memory of process `pid`, in KiB (0 once it is gone).
pub fn resident_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The most resident memory process `pid` ever had, in KiB.
pub fn peak_resident_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_default();
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// CPU time process `pid` has used (user + system), in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis,
    // where utime and stime are the 12th and 13th.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / per_second
}
