//! The console's cost with 500 tenants: building a snapshot in the daemon, and rendering
//! a frame. At most ten frames a second are drawn, so a frame's time × 10 is the share
//! of one core the console can take. Run with `cargo bench --bench console`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use switchyard::config::Config;
use switchyard::console::model::{Model, Msg, View, update};
use switchyard::console::view::render;
use switchyard::control::Feed;
use switchyard::gateway::Gateway;

const TENANTS: usize = 500;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let mut toml = String::from(
        "[tiers.enterprise]\nshare = 60\n[tiers.pro]\nshare = 30\n[tiers.free]\nshare = 10\nrpm = 600\ntpm = 100000\ndaily_tokens = 1000000\n",
    );
    for i in 0..TENANTS {
        let tier = ["enterprise", "pro", "free"][i % 3];
        toml.push_str(&format!(
            "[[tenants]]\nname = \"tenant-{i:03}\"\ntier = \"{tier}\"\n"
        ));
    }
    for r in ["us-east", "eu-west", "ap-south"] {
        toml.push_str(&format!("[[regions]]\nname = \"{r}\"\n"));
        for i in 0..4 {
            toml.push_str(&format!(
                "  [[regions.instances]]\n  name = \"{r}-{i}\"\n  url = \"http://127.0.0.1:1/v1\"\n"
            ));
        }
    }
    toml.push_str("[[models]]\nalias = \"gpt-4o-mini\"\n");
    let gateway = Gateway::new(Config::from_toml(&toml).unwrap()).unwrap();

    let rounds = 200;
    let started = Instant::now();
    let mut snapshot = gateway.snapshot();
    for _ in 1..rounds {
        snapshot = gateway.snapshot();
    }
    let per = started.elapsed() / rounds;
    println!(
        "snapshot with {TENANTS} tenants, 12 instances: {:.0} µs to build ({} tenants, {} bytes as JSON)",
        per.as_secs_f64() * 1e6,
        snapshot.tenants.len(),
        serde_json::to_vec(&snapshot).unwrap().len()
    );

    let mut model = Model::new("bench", false);
    update(&mut model, Msg::Feed(Feed::Snapshot(Box::new(snapshot))));
    let mut terminal = Terminal::new(TestBackend::new(200, 60)).unwrap();
    for view in [View::Overview, View::Tenants, View::Regions] {
        model.view = view;
        frames(&mut terminal, &model, view.title());
    }

    // A tenant's drill-down with five full minutes of seconds: its line charts.
    let meter = switchyard::telemetry::meter::Meter::default();
    let tally = meter.tenant("tenant-001");
    for second in 0..300u64 {
        for _ in 0..(5 + second % 7) {
            tally.request();
            tally.tokens(900);
            tally.answered(std::time::Duration::from_millis(40 + second % 50));
        }
        if second % 60 > 50 {
            tally.code("rate_limit_exceeded");
        }
        meter.sample(0);
    }
    let history = tally.seconds();
    let detail = switchyard::domain::snapshot::TenantDetail {
        tenant: model.snapshot.as_ref().unwrap().tenants[1].clone(),
        requests_per_sec: history.requests,
        tokens_per_sec: history.tokens,
        refused_per_sec: history.refused,
        refused_by_code_per_sec: history.refused_by_code,
        e2e_p50_ms: history.e2e_p50_ms,
        e2e_p99_ms: history.e2e_p99_ms,
        queue_p99_ms: history.queue_p99_ms,
        audit: Vec::new(),
        audit_unreadable: None,
    };
    model.view = View::Tenants;
    model.detail = Some(("tenant-001".into(), Some(Box::new(detail))));
    frames(&mut terminal, &model, "Tenant detail");
}

/// Draws `model` a few hundred times and prints a frame's cost.
fn frames(terminal: &mut Terminal<TestBackend>, model: &Model, name: &str) {
    let frames = 300;
    let started = Instant::now();
    for _ in 0..frames {
        terminal.draw(|f| render(model, f)).unwrap();
    }
    let per = started.elapsed() / frames;
    println!(
        "render {name:<13} 200x60: {:.0} µs a frame; at the 10 frames/s cap {:.2}% of a core",
        per.as_secs_f64() * 1e6,
        per.as_secs_f64() * 10.0 * 100.0
    );
}
