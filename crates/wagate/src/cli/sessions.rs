//! `wagate sessions list|logout ID|delete ID|move ID --to NODE`, through the running gateway: it owns the
//! WhatsApp connections, so logging out or deleting without it would leave the device
//! linked on the phone. Only `list` can fall back to the registry on disk.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;

use super::client::{base_url, Client, ClientError};
use super::table::{render, SessionRow};
use super::{exit, DataDirArg, GatewayArgs};
use crate::store::Store;

#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// The sessions with their state (from the data directory when the gateway is not running).
    List(Common),
    /// Unlink a session on WhatsApp and delete its keys; it stays registered and can be linked again.
    Logout(WithId),
    /// Log a session out and forget it entirely.
    Delete(WithId),
    /// On a cluster: move a session to another node (it reconnects there without a QR code).
    Move(MoveArgs),
}

#[derive(Args, Debug)]
pub struct MoveArgs {
    /// The session's id.
    id: String,
    /// The node to run it from now on (`wagate status` lists the nodes).
    #[arg(long)]
    to: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
pub struct Common {
    #[command(flatten)]
    data: DataDirArg,
    #[command(flatten)]
    gateway: GatewayArgs,
}

#[derive(Args, Debug)]
pub struct WithId {
    /// The session's id.
    id: String,
    #[command(flatten)]
    common: Common,
}

impl Common {
    fn client(&self) -> anyhow::Result<Client> {
        Client::new(base_url(&self.gateway, Some(&self.data.data_dir)), self.gateway.api_key.clone())
    }
}

pub async fn run(command: SessionsCommand) -> anyhow::Result<i32> {
    match command {
        SessionsCommand::List(common) => list(&common).await,
        SessionsCommand::Logout(WithId { id, common }) => {
            let path = format!("/v1/sessions/{id}/logout");
            change(&common, Method::POST, &path, |view| {
                format!("{id} logged out: {}", view["detail"].as_str().unwrap_or("done"))
            })
            .await
        }
        SessionsCommand::Delete(WithId { id, common }) => {
            let path = format!("/v1/sessions/{id}");
            change(&common, Method::DELETE, &path, |_| format!("{id} logged out and deleted")).await
        }
        SessionsCommand::Move(MoveArgs { id, to, common }) => {
            let path = format!("/v1/sessions/{id}/move");
            let body = serde_json::json!({ "node": to });
            change_with(&common, Method::POST, &path, Some(body), |done| {
                format!(
                    "{id} moved from {} to {} in {} ms; it reconnects there without a QR code",
                    done["from"].as_str().unwrap_or("?"),
                    done["to"].as_str().unwrap_or("?"),
                    done["took_ms"]
                )
            })
            .await
        }
    }
}

async fn list(common: &Common) -> anyhow::Result<i32> {
    let client = common.client()?;
    match client.get("/v1/sessions").await {
        Ok(Value::Array(views)) => {
            let rows: Vec<SessionRow> = views.iter().map(SessionRow::from_api).collect();
            print!("{}", render(&rows, chrono::Utc::now()));
            Ok(exit::OK)
        }
        Ok(other) => anyhow::bail!("unexpected answer from {}: {other}", client.base),
        Err(ClientError::NotRunning { url, .. }) => {
            let dir = &common.data.data_dir;
            println!("the gateway is not running at {url}; sessions in {} (last recorded state):", dir.display());
            let records = Store::open_read_only(dir)?.sessions()?;
            let rows: Vec<SessionRow> = records.iter().map(SessionRow::from_record).collect();
            print!("{}", render(&rows, chrono::Utc::now()));
            Ok(exit::NOT_RUNNING)
        }
        Err(e) => Err(e.into()),
    }
}

async fn change(common: &Common, method: Method, path: &str, done: impl Fn(&Value) -> String) -> anyhow::Result<i32> {
    change_with(common, method, path, None, done).await
}

async fn change_with(
    common: &Common,
    method: Method,
    path: &str,
    body: Option<Value>,
    done: impl Fn(&Value) -> String,
) -> anyhow::Result<i32> {
    let client = common.client()?;
    match client.call(method, path, body).await {
        Ok(view) => {
            println!("{}", done(&view));
            Ok(exit::OK)
        }
        Err(ClientError::NotRunning { url, reason }) => {
            eprintln!(
                "wagate: the gateway is not running at {url} ({reason}). It owns the WhatsApp connections, so it \
                 must run for this: start it (wagate serve, or scripts/start.sh), or pass --url."
            );
            Ok(exit::NOT_RUNNING)
        }
        Err(ClientError::Api { status, message }) => {
            eprintln!("wagate: {message} (HTTP {status})");
            Ok(exit::FAILED)
        }
        Err(e) => Err(e.into()),
    }
}
