//! Shared test furniture: a gateway in front of in-process mock regions, on real sockets.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{Value, json};
use switchyard::config::Config;
use switchyard::daemon::Daemon;
use switchyard::mock::{MockHandle, MockUpstream};

pub const KEY_A: &str = "sy-test-tenant-a";
pub const KEY_B: &str = "sy-test-tenant-b";
pub const ADMIN_TOKEN: &str = "sy-test-admin-token";

/// A mock that answers at once: no first-token delay, no pacing.
pub fn quick_mock() -> MockUpstream {
    MockUpstream::builder()
        .ttft(Duration::ZERO)
        .tokens_per_sec(0.0)
        .answer_tokens(8)
}

/// A port nothing listens on now, for a process that must be told its address.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `tenant-a` (KEY_A) and `tenant-b` (KEY_B), both in tier `pro`, as config tables.
pub fn two_tenants() -> String {
    format!(
        r#"[[tenants]]
name = "tenant-a"
tier = "pro"
keys = ["{a}"]

[[tenants]]
name = "tenant-b"
tier = "pro"
keys = ["{b}"]
"#,
        a = switchyard::auth::hash_key(KEY_A),
        b = switchyard::auth::hash_key(KEY_B),
    )
}

/// The config for a gateway whose regions, in failover order, are at these base URLs.
pub fn config_for(regions: &[(&str, String)], extra: &str) -> String {
    let mut toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{data}"
{extra}

[health]
interval = "1h"

[tiers.pro]

{tenants}
[[models]]
alias = "gpt-4o-mini"

[[models]]
alias = "chat-small"
upstream = "gpt-4o-mini"

[[models]]
alias = "text-embedding-3-small"
kind = "embeddings"
"#,
        data = std::env::temp_dir().join("switchyard-tests").display(),
        tenants = two_tenants(),
    );
    for (order, (name, url)) in regions.iter().enumerate() {
        toml.push_str(&format!(
            r#"
[[regions]]
name = "{name}"
order = {order}
  [[regions.instances]]
  name = "{name}-a"
  url = "{url}"
"#
        ));
    }
    toml
}

pub struct TestGateway {
    pub daemon: Daemon,
    pub client: reqwest::Client,
    /// The data directory (logs, database); removed when the gateway is dropped.
    pub data: tempfile::TempDir,
}

impl TestGateway {
    /// A gateway whose regions, in failover order, are these mocks.
    pub async fn with_regions(regions: &[(&str, &MockHandle)]) -> TestGateway {
        Self::with_regions_and(regions, "").await
    }

    /// Same, with extra lines for the `[server]` table or whole extra tables.
    pub async fn with_regions_and(regions: &[(&str, &MockHandle)], extra: &str) -> TestGateway {
        let urls: Vec<(&str, String)> = regions.iter().map(|(n, m)| (*n, m.url())).collect();
        Self::from_toml(&config_for(&urls, extra)).await
    }

    pub async fn from_toml(toml: &str) -> TestGateway {
        Self::from_toml_in(toml, tempfile::tempdir().unwrap()).await
    }

    /// A gateway whose data directory is `data`, e.g. the one a stopped gateway left.
    pub async fn from_toml_in(toml: &str, data: tempfile::TempDir) -> TestGateway {
        let mut config = Config::from_toml(toml).expect("test config is valid");
        config.server.data_dir = data.path().to_owned();
        config.admin.listen = "127.0.0.1:0".parse().unwrap();
        let daemon = Daemon::start_with_admin_token(config, Some(ADMIN_TOKEN.into()))
            .await
            .expect("gateway starts");
        TestGateway {
            daemon,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            data,
        }
    }

    /// Stops the gateway cleanly and hands back its data directory.
    pub async fn stop(self) -> tempfile::TempDir {
        self.daemon.stop(Duration::from_secs(5)).await;
        self.data
    }

    /// Stops the gateway as SIGTERM does (`server.shutdown_grace`); hands back its data.
    pub async fn shutdown(self) -> tempfile::TempDir {
        self.daemon.shutdown().await;
        self.data
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.daemon.url())
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("gateway answers")
    }

    /// GETs `path` with tenant `key`.
    pub async fn get(&self, key: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    pub async fn chat(&self, key: &str, body: &Value) -> reqwest::Response {
        self.post("/v1/chat/completions", key, body).await
    }

    /// Calls the admin API with the admin token.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let url = format!("{}{path}", self.daemon.admin_url().expect("admin API runs"));
        let mut request = self.client.request(method, url).bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("admin API answers")
    }

    /// The admin API's answer to `method path`, read as JSON (whatever its status).
    pub async fn admin_json<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> T {
        self.admin(method, path, body)
            .await
            .json()
            .await
            .expect("the admin API answers JSON")
    }

    /// What `/metrics` on the admin API reports now.
    pub async fn metrics(&self) -> String {
        let response = self.admin(reqwest::Method::GET, "/metrics", None).await;
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// The newest request record in the audit log.
    pub async fn newest_record(&self) -> Value {
        let records: Value = self
            .admin_json(reqwest::Method::GET, "/admin/audit?kind=request", None)
            .await;
        // Oldest first: the newest is the last.
        records["records"]
            .as_array()
            .and_then(|r| r.last())
            .cloned()
            .unwrap_or_default()
    }

    /// The first instance of the first region, as the admin API shows it.
    pub async fn first_instance(&self) -> Value {
        let view: Value = self
            .admin_json(reqwest::Method::GET, "/admin/regions", None)
            .await;
        view["regions"][0]["instances"][0].clone()
    }

    pub async fn tenant(&self, name: &str) -> Value {
        self.admin_json(
            reqwest::Method::GET,
            &format!("/admin/tenants/{name}"),
            None,
        )
        .await
    }

    /// Tenant A's tokens charged today, once they reach `expected` (usage is settled as
    /// answers end) or after five seconds.
    pub async fn day_tokens_reaching(&self, expected: u64) -> u64 {
        let mut used = 0;
        for _ in 0..250 {
            used = self.tenant("tenant-a").await["day"]["tokens"]
                .as_u64()
                .unwrap();
            if used == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        used
    }
}

/// The value of one series (its name and labels exactly as written) in `/metrics` text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

pub fn hello(model: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": "hello" }] })
}

pub fn hello_stream(model: &str) -> Value {
    let mut body = hello(model);
    body["stream"] = json!(true);
    body
}

pub fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The `data:` payloads of an SSE body, in order (after an `event:` line, if any).
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| event.lines().find_map(|line| line.strip_prefix("data: ")))
        .map(str::to_owned)
        .collect()
}

/// The text of a streamed answer: every content delta, concatenated.
pub fn streamed_text(body: &str) -> String {
    sse_data(body)
        .iter()
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")?
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// An error body's `error` object, checking it is OpenAI-shaped.
pub async fn error_of(response: reqwest::Response) -> Value {
    let body: Value = response.json().await.expect("error body is JSON");
    let error = body
        .get("error")
        .cloned()
        .expect("body has an error object");
    for field in ["message", "type", "param", "code"] {
        assert!(error.get(field).is_some(), "error lacks {field}: {body}");
    }
    error
}

/// A URL on which nothing listens: connections are refused.
pub async fn dead_url() -> String {
    // Bound but never listening: connecting is refused, and no listener of a test
    // running beside this one can be given the port, as it could once it was released.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    std::mem::forget(socket);
    format!("http://{addr}/v1")
}

/// A `switchyard serve` process, killed with SIGKILL when dropped.
pub struct Serve(pub std::process::Child);

impl Serve {
    /// Starts `switchyard serve` and waits until each of `ports` (public and admin, which
    /// open one after the other) takes connections.
    pub fn start(config: &std::path::Path, ports: &[u16]) -> Serve {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for &port in ports {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(std::time::Instant::now() < deadline, "serve did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Serve(child)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `switchyard ctl` against the admin API at `url`, as operator `alice`.
pub fn ctl(url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("ctl")
        .args(["--url", url])
        .args(args)
        .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SWITCHYARD_OPERATOR", "alice")
        .output()
        .unwrap()
}

/// A test config (from `config_for`) for a `switchyard serve` process of its own: its
/// listeners on these ports, its data in `data`.
pub fn for_process(toml: &str, (port, admin_port): (u16, u16), data: &std::path::Path) -> String {
    toml.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\""),
    )
    .replace(
        &format!(
            "data_dir = \"{}\"",
            std::env::temp_dir().join("switchyard-tests").display()
        ),
        &format!("data_dir = \"{}\"", data.display()),
    )
}

/// The first of `names` that runs (Valkey's, else Redis's); `.ci/run` installs
/// `redis-server`, which brings `redis-cli`.
fn installed(names: [&'static str; 2]) -> &'static str {
    names
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "{} or {} is installed (apt-get install redis-server)",
                names[0], names[1]
            )
        })
}

/// A Valkey (or Redis) server of the test's own on a loopback port, without
/// persistence; killed when dropped. `.ci/run` installs `redis-server`.
pub struct Valkey {
    child: std::process::Child,
    pub port: u16,
}

impl Valkey {
    pub fn start() -> Valkey {
        Self::start_on(free_port())
    }

    /// Kills the server (its data goes with it: there is no persistence).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new, empty server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        *self = Self::start_on(self.port);
    }

    pub fn start_on(port: u16) -> Valkey {
        let binary = installed(["valkey-server", "redis-server"]);
        let child = std::process::Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{binary} did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Valkey { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Valkey {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A three-node Valkey (or Redis) Cluster of the test's own on loopback, every slot
/// covered, no replicas; killed when dropped.
pub struct ValkeyCluster {
    nodes: Vec<std::process::Child>,
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl ValkeyCluster {
    pub fn start() -> ValkeyCluster {
        let server = installed(["valkey-server", "redis-server"]);
        let cli = installed(["valkey-cli", "redis-cli"]);
        let dir = tempfile::tempdir().unwrap();
        // A node's cluster bus listens on its port + 10000.
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let port = free_port();
            if port < 55_000 && !ports.contains(&port) {
                ports.push(port);
            }
        }
        let nodes = ports
            .iter()
            .map(|port| {
                std::process::Command::new(server)
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .args(["--dir", dir.path().to_str().unwrap()])
                    .args(["--save", "", "--appendonly", "no"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        for port in &ports {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{server} did not start"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = std::process::Command::new(cli)
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(created.status.success(), "{created:?}");
        loop {
            let info = std::process::Command::new(cli)
                .args(["-p", &ports[0].to_string(), "cluster", "info"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster did not form"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ValkeyCluster {
            nodes,
            ports,
            _dir: dir,
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

impl Drop for ValkeyCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}
