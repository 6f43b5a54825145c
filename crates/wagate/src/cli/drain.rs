//! `wagate drain [--node ID] [--resume]`: on a cluster, a node hands all its sessions over
//! to the others (which take them at once, without a QR code) and takes none until it is
//! resumed or restarted: what to do before stopping a node for maintenance.

use clap::Args;
use reqwest::Method;
use serde_json::Value;

use super::client::{base_url, Client, ClientError};
use super::{exit, GatewayArgs};

#[derive(Args, Debug)]
pub struct DrainArgs {
    /// The node to drain [default: the one at --url].
    #[arg(long)]
    node: Option<String>,
    /// Take sessions again after a drain instead.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    gateway: GatewayArgs,
}

pub async fn run(args: DrainArgs) -> anyhow::Result<i32> {
    let client = Client::new(base_url(&args.gateway, None), args.gateway.api_key.clone())?;
    let node = match args.node {
        Some(node) => node,
        None => match this_node(&client).await {
            Ok(node) => node,
            Err(code) => return Ok(code),
        },
    };
    let (method, verb) = if args.resume { (Method::DELETE, "resume") } else { (Method::POST, "drain") };
    match client.call(method, &format!("/v1/nodes/{node}/drain"), None).await {
        Ok(_) if args.resume => {
            println!("node {node} takes sessions again");
            Ok(exit::OK)
        }
        Ok(done) => {
            println!(
                "node {node} is draining: it handed {} sessions over to the other nodes and takes none until \
                 `wagate drain --resume` or a restart",
                done["handed_over"]
            );
            Ok(exit::OK)
        }
        Err(e) => Ok(report(&client, verb, e)),
    }
}

/// The node that answers at the URL.
async fn this_node(client: &Client) -> Result<String, i32> {
    match client.get("/v1/nodes").await {
        Ok(Value::Array(nodes)) => {
            match nodes.iter().find(|n| n["this"] == Value::Bool(true)).and_then(|n| n["id"].as_str()) {
                Some(id) => Ok(id.to_string()),
                None => {
                    eprintln!("wagate: the gateway at {} did not say which node it is", client.base);
                    Err(exit::FAILED)
                }
            }
        }
        Ok(other) => {
            eprintln!("wagate: unexpected answer from {}: {other}", client.base);
            Err(exit::FAILED)
        }
        Err(e) => Err(report(client, "find the node", e)),
    }
}

fn report(client: &Client, verb: &str, error: ClientError) -> i32 {
    match error {
        ClientError::NotRunning { url, reason } => {
            eprintln!("wagate: no node answers at {url} ({reason}); pass the URL of a running node with --url");
            exit::NOT_RUNNING
        }
        ClientError::Api { status, message } => {
            eprintln!("wagate: could not {verb} at {}: {message} (HTTP {status})", client.base);
            exit::FAILED
        }
        other => {
            eprintln!("wagate: {other}");
            exit::FAILED
        }
    }
}
