//! The console in a real terminal: `switchyard up` inside tmux, driven by keys and
//! signals and read back from the screen, as an operator on a bastion would use it.
//! tmux comes from Debian (`.ci/run` installs it); without it these tests say so and fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A tmux server of its own (its own socket), killed when the test ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Runs `shell` in a 120x40 window of a new tmux server.
    fn start(name: &str, shell: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("switchyard-{name}-{}", std::process::id()),
        };
        let status = tmux
            .command()
            .args(["new-session", "-d", "-x", "120", "-y", "40", shell])
            .status()
            .expect("tmux runs (apt-get install tmux)");
        assert!(status.success(), "tmux could not start a session");
        tmux
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.args(["-L", &self.socket]);
        command
    }

    fn screen(&self) -> String {
        let out = self
            .command()
            .args(["capture-pane", "-p"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let status = self.command().arg("send-keys").args(keys).status().unwrap();
        assert!(status.success());
    }

    /// The process the pane's shell runs (`up`), from /proc.
    fn child_of_shell(&self) -> String {
        let out = self
            .command()
            .args(["display-message", "-p", "#{pane_pid}"])
            .output()
            .unwrap();
        let shell = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let children =
            std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap();
        children
            .split_whitespace()
            .next()
            .expect("the shell runs up")
            .to_string()
    }

    /// Waits until the screen shows `text`; fails with the screen after 30 s.
    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "never showed {text:?}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").status();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The example config on free ports and a temporary data dir; returns its path and the
/// public port.
fn config(dir: &Path) -> (String, u16) {
    let port = free_port();
    let toml = std::fs::read_to_string("config.toml.example")
        .unwrap()
        .replace("./data", dir.to_str().unwrap())
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{}", free_port()));
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).unwrap();
    (path.to_str().unwrap().to_string(), port)
}

/// `up` in a shell that, once it ends, prints its exit status and whether the terminal
/// is back in cooked mode (`icanon`) rather than left in the console's raw mode.
fn up_in_a_shell(config: &str) -> String {
    format!(
        "sh -c 'env -u SWITCHYARD_ADMIN_TOKEN {BIN} up --config {config}; echo EXITED $?; if stty -a | grep -q -- -icanon; then echo TERMINAL RAW; else echo TERMINAL COOKED; fi; sleep 60'"
    )
}

/// Waits for the shell's report after `up` ended and checks it.
fn ended_cleanly(tmux: &Tmux, what: &str) {
    let screen = tmux.wait_for("TERMINAL ");
    assert!(screen.contains("EXITED 0"), "{what}: {screen}");
    assert!(screen.contains("TERMINAL COOKED"), "{what}: {screen}");
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn quitting_up_asks_first_then_stops_the_gateway_and_gives_the_terminal_back() {
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = config(dir.path());
    let tmux = Tmux::start("quit", &up_in_a_shell(&config));
    tmux.wait_for("in-process gateway");
    tmux.wait_for("connected");

    tmux.keys(&["q"]);
    tmux.wait_for("Stop the gateway?");
    tmux.keys(&["n"]);
    tmux.wait_for("cancelled; the gateway keeps running");
    assert!(listening(port), "the gateway still serves");

    tmux.keys(&["C-c"]);
    tmux.wait_for("Stop the gateway?");
    tmux.keys(&["y"]);
    ended_cleanly(&tmux, "q, y");
    assert!(!listening(port), "the gateway stopped");
}

#[test]
fn sigterm_and_sighup_give_the_terminal_back_and_stop_the_gateway() {
    for signal in ["TERM", "HUP"] {
        let dir = tempfile::tempdir().unwrap();
        let (config, port) = config(dir.path());
        let tmux = Tmux::start(&signal.to_lowercase(), &up_in_a_shell(&config));
        tmux.wait_for("connected");
        let pid = tmux.child_of_shell();
        assert!(
            Command::new("kill")
                .args([&format!("-{signal}"), &pid])
                .status()
                .unwrap()
                .success()
        );
        ended_cleanly(&tmux, &format!("SIG{signal}"));
        assert!(!listening(port), "SIG{signal}: the gateway stopped");
    }
}

#[test]
fn the_demo_from_the_keyboard_outage_drain_and_a_tenant_in_depth() {
    let port = free_port();
    let tmux = Tmux::start(
        "demo",
        &format!("sh -c '{BIN} demo --listen 127.0.0.1:{port}; echo EXITED $?; sleep 60'"),
    );
    tmux.wait_for("attach: switchyard console --connect http://127.0.0.1:");
    tmux.wait_for("requests/s");
    // An outage now, in the selected region (the first).
    tmux.keys(&["3"]);
    tmux.wait_for("regions and instances");
    tmux.keys(&["o"]);
    tmux.wait_for("simulated outage: us-east goes dark");
    // Drain the next region from the keyboard, confirmed.
    tmux.keys(&["j", "j"]);
    tmux.keys(&["d"]);
    tmux.wait_for("Drain eu-west?");
    tmux.keys(&["y"]);
    tmux.wait_for("eu-west is draining");
    // A tenant in depth, with its refusals column on the way.
    tmux.keys(&["2"]);
    tmux.wait_for("REFUSED");
    tmux.keys(&["Enter"]);
    tmux.wait_for("(Esc returns)");
    tmux.wait_for("requests/s (0 to");
    tmux.wait_for("tokens/min (0 to");
    tmux.wait_for("queue wait p99 (0 to");
    tmux.keys(&["Escape"]);
    tmux.wait_for("TENANT");
    tmux.keys(&["q"]);
    tmux.wait_for("EXITED 0");
}

/// Regression: when the terminal itself goes away (ssh dropped, tmux killed), reading
/// keys spun on end of input for ever, so the console never left and the daemon kept
/// serving from a process nobody could see.
#[test]
fn a_terminal_that_goes_away_stops_up_and_the_process_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = config(dir.path());
    let tmux = Tmux::start("hangup", &up_in_a_shell(&config));
    tmux.wait_for("connected");
    let pid = tmux.child_of_shell();
    drop(tmux); // kill-server: the pane's terminal closes
    let deadline = Instant::now() + Duration::from_secs(40);
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            let _ = Command::new("kill").args(["-9", &pid]).status();
            panic!("up (pid {pid}) kept running after its terminal went away");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!listening(port), "the gateway stopped");
}
