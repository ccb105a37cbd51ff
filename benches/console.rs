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
        let frames = 300;
        let started = Instant::now();
        for _ in 0..frames {
            terminal.draw(|f| render(&model, f)).unwrap();
        }
        let per = started.elapsed() / frames;
        println!(
            "render {:<9} 200x60: {:.0} µs a frame; at the 10 frames/s cap {:.2}% of a core",
            view.title(),
            per.as_secs_f64() * 1e6,
            per.as_secs_f64() * 10.0 * 100.0
        );
    }
}
