//! `wagate status`: is the gateway running, since when, and its sessions. Exit codes as
//! LSB init scripts use them: 0 running, 1 stopped but a stale PID file remains, 3 stopped,
//! 4 a gateway process exists but does not answer.

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::Value;

use super::client::{base_url, Client};
use super::table::{duration_words, render, render_nodes, SessionRow};
use super::{exit, DataDirArg, GatewayArgs};
use crate::store::lock::{self, LockOwner, LockState};
use crate::store::Store;

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    data: DataDirArg,
    #[command(flatten)]
    gateway: GatewayArgs,
    /// PID file written by scripts/start.sh [default: wagate.pid next to the data directory,
    /// or in WAGATE_HOME].
    #[arg(long)]
    pid_file: Option<PathBuf>,
}

/// What the PID file says.
#[derive(Debug, PartialEq, Eq)]
enum PidFile {
    Absent,
    Alive(u32),
    Stale(u32),
}

fn pid_file(args: &StatusArgs) -> PidFile {
    let candidates: Vec<PathBuf> = match &args.pid_file {
        Some(path) => vec![path.clone()],
        None => {
            let mut found = Vec::new();
            if let Ok(home) = std::env::var("WAGATE_HOME") {
                found.push(Path::new(&home).join("wagate.pid"));
            }
            if let Some(parent) =
                std::path::absolute(&args.data.data_dir).ok().and_then(|d| d.parent().map(Path::to_path_buf))
            {
                found.push(parent.join("wagate.pid"));
            }
            found
        }
    };
    let Some(pid) = candidates.iter().find_map(|path| std::fs::read_to_string(path).ok()?.trim().parse::<u32>().ok())
    else {
        return PidFile::Absent;
    };
    if process_alive(pid) {
        PidFile::Alive(pid)
    } else {
        PidFile::Stale(pid)
    }
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

pub async fn run(args: StatusArgs) -> anyhow::Result<i32> {
    let data_dir = &args.data.data_dir;
    let lock = lock::inspect(data_dir).unwrap_or(LockState::Free);
    let url = base_url(&args.gateway, Some(data_dir));
    let client = Client::new(url.clone(), args.gateway.api_key.clone())?;
    let pid_file = pid_file(&args);

    if let Ok(health) = client.health().await {
        print_running(&health, &url, &lock, data_dir);
        let sessions = match client.get("/v1/sessions").await {
            Ok(Value::Array(views)) => Ok(views.iter().map(SessionRow::from_api).collect::<Vec<_>>()),
            Ok(other) => Err(format!("unexpected answer {other}")),
            Err(e) => Err(e.to_string()),
        };
        // On a cluster: the nodes first (a gateway that runs alone answers 404).
        if let Ok(Value::Array(nodes)) = client.get("/v1/nodes").await {
            print!("\n{}", render_nodes(&nodes));
        }
        match sessions {
            Ok(rows) => print!("\n{}", render(&rows, chrono::Utc::now())),
            Err(e) => {
                println!("\ncould not list the sessions through the API ({e}); from the data directory:");
                print_from_disk(data_dir);
            }
        }
        return Ok(exit::OK);
    }

    let code = match (&lock, &pid_file) {
        (LockState::Held(owner), _) => {
            let pid = owner.as_ref().map_or("unknown".to_string(), |o| o.pid.to_string());
            println!("wagate holds {} (pid {pid}) but does not answer at {url}", data_dir.display());
            exit::UNKNOWN
        }
        (LockState::Free, PidFile::Alive(pid)) => {
            println!("a process with the PID of wagate's PID file runs (pid {pid}) but nothing answers at {url}");
            exit::UNKNOWN
        }
        (LockState::Free, PidFile::Stale(pid)) => {
            println!("wagate is not running (its PID file names pid {pid}, which has ended)");
            exit::FAILED
        }
        (LockState::Free, PidFile::Absent) => {
            println!("wagate is not running (nothing answers at {url})");
            exit::NOT_RUNNING
        }
    };
    println!("\nsessions in {} (the last state the gateway recorded):", data_dir.display());
    print_from_disk(data_dir);
    Ok(code)
}

fn print_running(health: &Value, url: &str, lock: &LockState, data_dir: &Path) {
    let pid = health["pid"].as_u64().map(|p| format!("pid {p}, ")).unwrap_or_default();
    let uptime = health["uptime"].as_u64().map(duration_words).unwrap_or_else(|| "unknown".into());
    let since = health["startedAt"].as_str().map(|t| format!(", since {t}")).unwrap_or_default();
    println!("wagate is running ({pid}{url}), up {uptime}{since}");
    let serves_this_dir = match lock {
        LockState::Held(Some(LockOwner { pid, .. })) => health["pid"].as_u64() == Some(u64::from(*pid)),
        LockState::Held(None) => true,
        LockState::Free => false,
    };
    if !serves_this_dir {
        println!(
            "note: the gateway at {url} does not serve {} (no gateway holds that data directory)",
            data_dir.display()
        );
    }
}

fn print_from_disk(data_dir: &Path) {
    match Store::open_read_only(data_dir).and_then(|store| store.sessions()) {
        Ok(records) => {
            let rows: Vec<SessionRow> = records.iter().map(SessionRow::from_record).collect();
            print!("{}", render(&rows, chrono::Utc::now()));
        }
        Err(e) => println!("cannot read the session registry: {e}"),
    }
}
