//! Shared by wagate's integration tests: a simulator, a gateway (in process or as a child
//! process), and small helpers to call both and wait for states.
#![allow(dead_code)]

pub mod cli;
pub mod cluster;
pub mod footprint;
pub mod node;
pub mod postgres;
pub mod proxies;
pub mod receiver;
pub mod sandbox;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use wagate::config::Config;
use wagate::server::Gateway;
use wagate::session::SessionConfig;
use wagate::webhook::WebhookSettings;
use wagate_sim::{ServerKeys, SimConfig, Simulator};

pub const WAIT: Duration = Duration::from_secs(30);

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

pub async fn start_sim() -> Simulator {
    init_logs();
    Simulator::start("127.0.0.1:0".parse().unwrap(), ServerKeys::generate(), SimConfig::default())
        .await
        .expect("simulator starts")
}

pub fn gateway_config(sim: &Simulator, data_dir: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        wa_url: Some(sim.endpoints.ws_url.clone()),
        access: Default::default(),
        sessions: SessionConfig::default(),
        webhooks: WebhookSettings::default(),
        proxy: None,
        limits: Default::default(),
        database: postgres::for_data_dir(data_dir).map(|url| wagate::config::DatabaseSettings {
            url,
            node_id: Some(postgres::TEST_NODE.into()),
            advertise_url: None,
            lease_ttl: Duration::from_secs(15),
        }),
    }
}

pub async fn start_gateway(sim: &Simulator, data_dir: &Path) -> Gateway {
    Gateway::start(gateway_config(sim, data_dir)).await.expect("gateway starts")
}

pub async fn start_gateway_with(config: Config) -> Gateway {
    Gateway::start(config).await.expect("gateway starts")
}

/// JSON over HTTP against a base URL.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: impl Into<String>) -> Self {
        Self { base: base.into(), http: reqwest::Client::new() }
    }

    pub fn gateway(addr: SocketAddr) -> Self {
        Self::new(format!("http://{addr}"))
    }

    pub fn sim(sim: &Simulator) -> Self {
        Self::new(sim.endpoints.control_url.clone())
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// Polls `path` until `check` accepts the JSON answer.
    pub async fn wait_for(&self, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_within(path, what, WAIT, check).await
    }

    pub async fn wait_for_within(
        &self,
        path: &str,
        what: &str,
        wait: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (_, value) = self.get(path).await;
            if check(&value) {
                return value;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}; last answer: {value}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until session `id` is in `state`.
    pub async fn wait_state(&self, id: &str, state: &str) -> Value {
        self.wait_for(&format!("/v1/sessions/{id}"), &format!("{id} to be {state}"), |v| v["state"] == state).await
    }
}

/// Creates a session, waits for its QR and scans it as `phone`; returns the device JID.
pub async fn link(gateway: &Api, sim: &Api, id: &str, phone: &str) -> String {
    let (status, body) = gateway.post("/v1/sessions", json!({ "id": id })).await;
    assert!(status == 201 || status == 200, "create {id}: {status} {body}");
    let view = gateway.wait_state(id, "awaiting_scan").await;
    let (status, linked) = sim.post("/control/scan", json!({ "qr": view["qr"], "phone": phone })).await;
    assert_eq!(status, 200, "scan: {linked}");
    gateway.wait_state(id, "connected").await;
    linked["jid"].as_str().unwrap().to_string()
}

/// A gateway running as a child process (`wagate serve`), for tests that kill it.
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub api: Api,
}

impl GatewayProcess {
    pub fn spawn(sim: &Simulator, data_dir: &Path, port: u16) -> Self {
        Self::spawn_with(sim, data_dir, port, &[])
    }

    /// With extra `wagate serve` arguments.
    pub fn spawn_with(sim: &Simulator, data_dir: &Path, port: u16, extra: &[&str]) -> Self {
        Self::spawn_with_env(sim, data_dir, port, extra, &[])
    }

    /// With extra arguments and environment variables.
    pub fn spawn_with_env(sim: &Simulator, data_dir: &Path, port: u16, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_command(std::process::Command::new(env!("CARGO_BIN_EXE_wagate")), sim, data_dir, port, extra, env)
    }

    /// Under an open-files limit of `files` (soft and hard), set with `prlimit`.
    pub fn spawn_with_open_files(sim: &Simulator, data_dir: &Path, port: u16, files: u64) -> Self {
        let mut command = std::process::Command::new("prlimit");
        command.arg(format!("--nofile={files}:{files}")).arg(env!("CARGO_BIN_EXE_wagate"));
        Self::spawn_command(command, sim, data_dir, port, &[], &[])
    }

    fn spawn_command(
        mut command: std::process::Command,
        sim: &Simulator,
        data_dir: &Path,
        port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let child = command
            .envs(env.iter().copied())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--log-file")
            .arg(data_dir.join("gateway.log"))
            .args(["--wa-url", &sim.endpoints.ws_url])
            .args(
                // A test that names its own database (the cluster's) keeps it.
                postgres::for_data_dir(data_dir)
                    .filter(|_| !extra.contains(&"--database"))
                    .map(|url| ["--database".to_string(), url, "--node-id".into(), postgres::TEST_NODE.into()])
                    .into_iter()
                    .flatten(),
            )
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("wagate serve starts");
        Self { child, api: Api::new(format!("http://127.0.0.1:{port}")) }
    }

    /// Waits until the HTTP API answers.
    pub async fn ready(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while reqwest::get(format!("{}/health", self.api.base)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "wagate serve did not come up");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

/// A test that ends early (a failed assert) leaves no gateway behind.
impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A free TCP port on 127.0.0.1 (for a child process that must be restarted on the same one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether session `id` has keys in the data directory (a device in its engine shard).
pub fn has_engine_keys(data_dir: &Path, id: &str) -> bool {
    wagate::engine::shards::has_keys(&data_dir.join("engine"), id).expect("the engine shards can be read")
}

/// The engine shard file that holds session `id`'s keys.
pub fn engine_shard(data_dir: &Path, id: &str) -> PathBuf {
    wagate::engine::EngineStore::new(data_dir.join("engine"), id).shard_path().expect("a shard of the data directory")
}
