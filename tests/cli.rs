//! The `switchyard` binary as an operator runs it: real processes, real ports, signals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("switchyard runs")
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Kills the child if a test fails before it is stopped properly.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn config_check_summarises_a_valid_file() {
    let out = run(&["config", "check", "config.toml.example"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("config.toml.example is valid"), "{text}");
    // `workers = 0` is one per core.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        text.contains(&format!("; {cores} connection workers; ")),
        "{text}"
    );
    assert!(
        text.contains("region    us-east (order 0): us-east-a"),
        "{text}"
    );
    assert!(
        text.contains("tenant    acme (enterprise, 1 key)"),
        "{text}"
    );
}

#[test]
fn config_check_names_the_bad_key_and_fails() {
    let out = run(&[
        "config",
        "check",
        "tests/invalid_configs/unknown_instance_key.toml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.starts_with("error: tests/invalid_configs/unknown_instance_key.toml is not a valid configuration: line 13: regions[0].instances[0].urll: unknown field `urll`"),
        "{text}"
    );
}

#[test]
fn keys_hash_prints_the_hash_the_example_config_holds() {
    let example = std::fs::read_to_string("config.toml.example").unwrap();
    let out = run(&["keys", "hash", "sy-demo-globex"]);
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(hash.starts_with("sha256:"));
    assert!(example.contains(&hash));

    let mut child = Command::new(BIN)
        .args(["keys", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"sy-demo-globex\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), hash);
}

#[test]
fn serve_answers_through_a_mock_logs_to_the_data_dir_and_stops_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let (mock_port, gw_port) = (free_port(), free_port());
    let config = std::fs::read_to_string("config.toml.example")
        .unwrap()
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{gw_port}"))
        .replace("127.0.0.1:9101", &format!("127.0.0.1:{mock_port}"));
    let config_path = data.path().join("config.toml");
    std::fs::write(&config_path, config).unwrap();

    let _mock = Running(
        Command::new(BIN)
            .args([
                "mock",
                "--listen",
                &format!("127.0.0.1:{mock_port}"),
                "--ttft",
                "0ms",
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut gateway = Running(
        Command::new(BIN)
            .args(["serve", "--config", config_path.to_str().unwrap()])
            .env("SWITCHYARD_DATA_DIR", data.path())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_until_listening(mock_port);
    wait_until_listening(gw_port);

    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", gw_port)).unwrap();
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer sy-demo-initech\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut conn, &mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("x-switchyard-region: us-east"), "{reply}");

    let pid = gateway.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = gateway.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "serve exits cleanly on SIGTERM: {status}");

    let mut logs: Vec<_> = std::fs::read_dir(data.path().join("logs"))
        .expect("a logs directory in the data dir")
        .map(|e| e.unwrap().path())
        .collect();
    // One file a day: a run across midnight (UTC) writes two.
    logs.sort();
    assert!(
        (1..=2).contains(&logs.len())
            && logs
                .iter()
                .all(|l| l.to_string_lossy().contains("switchyard.log.")),
        "{logs:?}"
    );
    let text: String = logs
        .iter()
        .map(|l| std::fs::read_to_string(l).unwrap())
        .collect();
    assert!(text.contains("switchyard is listening"), "{text}");
    assert!(text.contains("switchyard stopped"), "{text}");
}

#[test]
fn serve_refuses_a_weak_admin_token_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let toml = std::fs::read_to_string("config.toml.example")
        .unwrap()
        .replace("./data", dir.path().to_str().unwrap())
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{}", free_port()));
    std::fs::write(&config, toml).unwrap();
    for (token, why) in [("   ", "only whitespace"), ("short", "too short")] {
        let output = Command::new(BIN)
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("SWITCHYARD_ADMIN_TOKEN", token)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("SWITCHYARD_ADMIN_TOKEN is {why}"))
                && stderr.contains("at least 16 characters"),
            "{stderr}"
        );
    }
}

#[test]
fn ctl_reaches_an_https_admin_api_found_through_the_config_with_a_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let (gw_port, admin_port) = (free_port(), free_port());
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls");
    let toml = std::fs::read_to_string("config.toml.example")
        .unwrap()
        .replace("./data", dir.path().to_str().unwrap())
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{gw_port}"))
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{admin_port}"))
        .replace(
            "# admin_tls_cert = \"/etc/switchyard/tls/admin.pem\"",
            &format!(
                "admin_tls_cert = \"{}\"",
                fixtures.join("server.pem").display()
            ),
        )
        .replace(
            "# admin_tls_key = \"/etc/switchyard/tls/admin.key\"",
            &format!(
                "admin_tls_key = \"{}\"",
                fixtures.join("server.key").display()
            ),
        );
    std::fs::write(&config, toml).unwrap();
    let config = config.to_str().unwrap();

    let checked = run(&["config", "check", config]);
    let text = String::from_utf8_lossy(&checked.stdout);
    assert!(
        text.contains(&format!("admin     127.0.0.1:{admin_port} (https://")),
        "{text}"
    );

    let token = "sy-cli-test-admin-token";
    let _gateway = Running(
        Command::new(BIN)
            .args(["serve", "--config", config])
            .env("SWITCHYARD_ADMIN_TOKEN", token)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until_listening(admin_port);
    let ca = fixtures.join("ca.pem");
    let ctl = |ca: &std::path::Path| {
        Command::new(BIN)
            .args([
                "ctl",
                "--config",
                config,
                "--ca-file",
                ca.to_str().unwrap(),
                "tenants",
            ])
            .env("SWITCHYARD_ADMIN_TOKEN", token)
            .output()
            .unwrap()
    };
    let listed = ctl(&ca);
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success() && stdout.contains("acme"),
        "{stdout}{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let refused = ctl(&fixtures.join("other-ca.pem"));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("--ca-file"),
        "{stderr}"
    );
}

/// A machine without CA certificates (a minimal container) runs a gateway whose
/// upstreams are plain HTTP, and refuses to start one with an https upstream, saying
/// which instance and what to install.
#[test]
fn without_ca_certificates_only_an_https_upstream_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let example = std::fs::read_to_string("config.toml.example")
        .unwrap()
        .replace("./data", dir.path().to_str().unwrap())
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{}", free_port()));
    let no_roots = |config: &str| {
        let path = dir.path().join(config);
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--config", path.to_str().unwrap()])
            .env("SSL_CERT_FILE", "/dev/null")
            .env("SSL_CERT_DIR", dir.path().join("no-such-dir"))
            .env_remove("SWITCHYARD_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        (path, command)
    };

    let tls = example.replace("http://127.0.0.1:9101/v1", "https://127.0.0.1:9101/v1");
    assert_ne!(tls, example, "the example has an instance to move to https");
    let (path, mut command) = no_roots("https.toml");
    std::fs::write(&path, tls).unwrap();
    let output = command.output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("instance us-east-a is reached over https")
            && stderr.contains("ca-certificates"),
        "{stderr}"
    );

    let (path, mut command) = no_roots("http.toml");
    std::fs::write(&path, &example).unwrap();
    let running = Running(command.spawn().unwrap());
    wait_until_listening(port);
    drop(running);
}
