//! What the benches that run `switchyard` processes share: a child process killed on
//! drop, free ports, waiting for a listener, a process's resident memory, and a mock.
#![allow(dead_code, clippy::unwrap_used)]

use std::process::Child;
use std::time::{Duration, Instant};

/// A child process, killed and reaped when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (at most 30 s) until something listens on `port`.
pub fn wait_for(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Resident memory of a process, KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The anonymous part of a process's resident memory, KiB: its heap and stacks, without
/// the pages of its executable (which the first use of a code path faults in once, and
/// which a load of thousands of streams would otherwise count against each stream).
#[allow(dead_code)]
pub fn anon_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Starts `switchyard serve` (the binary at `bin`) on `config`, written into `data`,
/// logging warnings only; returns once it listens on `port`.
pub fn serve(bin: &str, data: &std::path::Path, config: &str, port: u16) -> Process {
    std::fs::create_dir_all(data).unwrap();
    let path = data.join("config.toml");
    std::fs::write(&path, config).unwrap();
    let gateway = Process(
        std::process::Command::new(bin)
            .args(["serve", "--config", path.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            // The gateway's warnings, for when a run goes wrong.
            .stderr(std::fs::File::create(data.join("stderr.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(port);
    gateway
}

/// `switchyard mock` (the binary at `bin`) on `port`, with these pacing flags
/// (`--ttft`, `--tokens-per-sec`, `--answer-tokens`); its logs dropped.
pub fn mock(bin: &str, port: u16, pacing: &[&str]) -> Process {
    Process(
        std::process::Command::new(bin)
            .args(["mock", "--listen", &format!("127.0.0.1:{port}")])
            .args(pacing)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// The number in environment variable `name`, else `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The middle of `values` (the upper one of two).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
