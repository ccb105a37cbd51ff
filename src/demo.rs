//! `switchyard demo`: everything embedded, nothing to set up. Three simulated regions, six
//! tenants over three tiers, synthetic traffic (plain and streamed) from all of them, and
//! a region outage every couple of minutes that heals, so that failover, queues and
//! budgets can be watched live in the console, or summarised with `--headless`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio::sync::Mutex;

use crate::config::Config;
use crate::control::InProcess;
use crate::daemon::Daemon;
use crate::mock::{Knobs, MockHandle, MockUpstream, Outage};
use crate::say::say;

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Run without the console and print a summary at the end.
    #[arg(long)]
    pub headless: bool,
    /// How long a headless demo runs, e.g. "60s".
    #[arg(long, default_value = "60s", value_parser = crate::config::parse_duration)]
    pub duration: Duration,
    /// Time between region outages, e.g. "2m".
    #[arg(long, default_value = "2m", value_parser = crate::config::parse_duration)]
    pub outage_every: Duration,
    /// How long an outage lasts.
    #[arg(long, default_value = "30s", value_parser = crate::config::parse_duration)]
    pub outage_for: Duration,
    /// Public API address; the demo falls back to a free port if it is taken.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
}

/// The demo's tenants: name, tier, requests per second, share of streamed requests.
const TENANTS: &[(&str, &str, f64, f64)] = &[
    ("acme", "enterprise", 12.0, 0.5),
    ("umbrella", "enterprise", 8.0, 0.3),
    ("globex", "pro", 8.0, 0.5),
    ("hooli", "pro", 5.0, 0.4),
    ("initech", "free", 4.0, 0.5),
    ("vandelay", "free", 3.0, 0.2),
];

const REGIONS: &[&str] = &["us-east", "eu-west", "ap-south"];

fn key(tenant: &str) -> String {
    format!("sy-demo-{tenant}")
}

fn config(mocks: &[MockHandle], listen: SocketAddr, data_dir: &std::path::Path) -> String {
    let mut toml = format!(
        r#"
[server]
listen = "{listen}"
admin_listen = "127.0.0.1:0"
data_dir = "{data}"

[health]
interval = "1s"
timeout = "500ms"

[routing]
consecutive_failures = 3
base_ejection = "10s"
drain_grace = "5s"
drain_deadline = "30s"

[tiers.enterprise]
share = 60
max_wait = "20s"
rpm = 3000

[tiers.pro]
share = 30
max_wait = "10s"
rpm = 600
tpm = 60000

[tiers.free]
share = 10
max_queue = 40
max_wait = "5s"
rpm = 180
tpm = 12000
max_concurrency = 4
daily_tokens = 400000
"#,
        data = data_dir.display()
    );
    for (name, tier, _, _) in TENANTS {
        toml.push_str(&format!(
            "\n[[tenants]]\nname = \"{name}\"\ntier = \"{tier}\"\nkeys = [\"{}\"]\n",
            crate::auth::hash_key(&key(name))
        ));
    }
    for (order, (name, mock)) in REGIONS.iter().zip(mocks).enumerate() {
        toml.push_str(&format!(
            "\n[[regions]]\nname = \"{name}\"\norder = {order}\n  [[regions.instances]]\n  name = \"{name}-a\"\n  url = \"{}\"\n  max_concurrency = 32\n",
            mock.url()
        ));
    }
    toml.push_str(
        "\n[[models]]\nalias = \"gpt-4o-mini\"\nprice = { input_per_mtok = 0.15, output_per_mtok = 0.60 }\n\n[[models]]\nalias = \"gpt-4o\"\nprice = { input_per_mtok = 2.50, output_per_mtok = 10.00 }\n\n[[models]]\nalias = \"text-embedding-3-small\"\nkind = \"embeddings\"\n",
    );
    let flows: Vec<String> = EXAMPLE_FLOWS
        .iter()
        .map(|(name, _)| format!("\"{}\"", data_dir.join("flows").join(name).display()))
        .collect();
    toml.push_str(&format!(
        "\n[flows]\nfiles = [{}]\ndocuments = \"{}\"\n",
        flows.join(", "),
        data_dir.join("docs").display()
    ));
    // The support agent's tool: the first region's simulator answers it.
    toml.push_str(&format!(
        "\n[[flows.tools]]\nname = \"order_status\"\ndescription = \"Looks an order up by its number.\"\nurl = \"{}/_mock/tools/order_status\"\nparameters = {{ type = \"object\", properties = {{ order = {{ type = \"string\" }} }}, required = [\"order\"] }}\n",
        mocks[0].url().trim_end_matches("/v1")
    ));
    toml
}

/// The example flows and the documents they read, carried in the binary so the demo
/// runs them wherever it is started.
const EXAMPLE_FLOWS: &[(&str, &str)] = &[
    ("qa.toml", include_str!("../examples/flows/qa.toml")),
    (
        "handbook-ingest.toml",
        include_str!("../examples/flows/handbook-ingest.toml"),
    ),
    (
        "handbook-ask.toml",
        include_str!("../examples/flows/handbook-ask.toml"),
    ),
    (
        "support-agent.toml",
        include_str!("../examples/flows/support-agent.toml"),
    ),
];
const EXAMPLE_DOCS: &[(&str, &str)] = &[
    (
        "returns.md",
        include_str!("../examples/docs/handbook/returns.md"),
    ),
    (
        "shipping.md",
        include_str!("../examples/docs/handbook/shipping.md"),
    ),
    (
        "support.md",
        include_str!("../examples/docs/handbook/support.md"),
    ),
];

/// Writes the example flows and documents under the demo's data directory.
fn write_examples(data_dir: &std::path::Path) -> std::io::Result<()> {
    let (flows, handbook) = (data_dir.join("flows"), data_dir.join("docs/handbook"));
    std::fs::create_dir_all(&flows)?;
    std::fs::create_dir_all(&handbook)?;
    for (name, text) in EXAMPLE_FLOWS {
        std::fs::write(flows.join(name), text)?;
    }
    for (name, text) in EXAMPLE_DOCS {
        std::fs::write(handbook.join(name), text)?;
    }
    Ok(())
}

/// Questions acme's handbook flow is asked, one every few seconds.
const QUESTIONS: &[&str] = &[
    "How long do refunds take?",
    "Which warehouse do orders ship from?",
    "Can I return a gift card?",
    "When does support answer email?",
];

/// globex's support agent answers a customer every fifteen seconds, looking the order
/// up with its tool (the simulator's model calls the tool the question names).
async fn support_questions(gateway: Arc<crate::gateway::Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    for order in (1001..).map(|n| format!("A-{n}")) {
        tick.tick().await;
        let question = format!("Where is my order_status {{\"order\": \"{order}\"}}?");
        let input = serde_json::json!({ "question": question, "customer": "c-7" });
        let _ = gateway.run_flow("globex", "support-agent", input).await;
    }
}

/// acme loads the handbook once, then asks it a question every ten seconds, so flow
/// runs go through the pipeline beside the live traffic.
async fn handbook_questions(gateway: Arc<crate::gateway::Gateway>) {
    let tenant = "acme";
    if let Err(error) = gateway
        .run_flow(tenant, "handbook-ingest", serde_json::json!({}))
        .await
    {
        tracing::warn!(?error, "the demo's handbook could not be loaded");
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    for question in QUESTIONS.iter().cycle() {
        tick.tick().await;
        let input = serde_json::json!({ "question": question });
        let _ = gateway.run_flow(tenant, "handbook-ask", input).await;
    }
}

/// What the synthetic clients saw, by status.
#[derive(Default)]
struct Tally {
    by_status: BTreeMap<u16, u64>,
    by_region: BTreeMap<String, u64>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let data_dir = std::env::temp_dir().join(format!("switchyard-demo-{}", std::process::id()));
    let _logs = crate::telemetry::init(&data_dir, false)?;
    let mut mocks = Vec::new();
    for _ in REGIONS {
        let mock = MockUpstream::builder()
            .knobs(Knobs {
                ttft_ms: 120,
                tokens_per_sec: 40.0,
                // Answers are as long as requests ask (`max_tokens`); up to ten seconds.
                answer_tokens: 400,
                dimensions: 256,
                ..Knobs::default()
            })
            .spawn_local()
            .await
            .context("cannot start a simulated region")?;
        mocks.push(mock);
    }
    let listen = match std::net::TcpListener::bind(args.listen) {
        Ok(probe) => {
            drop(probe);
            args.listen
        }
        Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    write_examples(&data_dir).context("cannot write the demo's example flows")?;
    let config = Config::from_toml(&config(&mocks, listen, &data_dir))?;
    let token = format!("sy-admin-{:016x}", fastrand::u64(..));
    let daemon = Daemon::start_with_admin_token(config, Some(token.clone())).await?;
    let base = format!("{}/v1", daemon.url());

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = Vec::new();
    for (name, _, rate, streamed) in TENANTS {
        tasks.push(tokio::spawn(client(
            base.clone(),
            key(name),
            *rate,
            *streamed,
            stop.clone(),
            tally.clone(),
        )));
    }
    // Stopped with the demo, mid-run if need be.
    let questions = tokio::spawn(handbook_questions(daemon.gateway().clone()));
    let support = tokio::spawn(support_questions(daemon.gateway().clone()));
    let mocks = Arc::new(mocks);
    tasks.push(tokio::spawn(outages(
        mocks.clone(),
        args.outage_every,
        args.outage_for,
        stop.clone(),
        daemon.gateway().clone(),
    )));

    if args.headless {
        say!(
            "switchyard demo: gateway on {base}, admin on {}",
            daemon.admin_url().unwrap_or_default()
        );
        say!(
            "attach a console: switchyard console --connect {} --token {token}",
            daemon.admin_url().unwrap_or_default()
        );
        say!(
            "running for {:?} (outage every {:?} for {:?})",
            args.duration,
            args.outage_every,
            args.outage_for
        );
        tokio::time::sleep(args.duration).await;
    } else {
        let attach = format!(
            "attach: switchyard console --connect {} --token {token}  (or switchyard ctl --url …)",
            daemon.admin_url().unwrap_or_default()
        );
        let switch: crate::control::OutageSwitch = {
            let (mocks, gateway, length) =
                (mocks.clone(), daemon.gateway().clone(), args.outage_for);
            Arc::new(move |region: &str| {
                let at = REGIONS
                    .iter()
                    .position(|r| *r == region)
                    .ok_or_else(|| format!("the demo has no region {region}"))?;
                mocks[at].start_outage(Outage::Drop);
                let message = format!(
                    "simulated outage: {region} goes dark for {length:?}, asked by the operator"
                );
                gateway.events().record(
                    crate::domain::snapshot::EventKind::Traffic,
                    Some("demo"),
                    message.clone(),
                );
                let (mocks, gateway, region) = (mocks.clone(), gateway.clone(), region.to_string());
                tokio::spawn(async move {
                    tokio::time::sleep(length).await;
                    mocks[at].stop_outage();
                    gateway.events().record(
                        crate::domain::snapshot::EventKind::Traffic,
                        Some("demo"),
                        format!("simulated outage over: {region} is back"),
                    );
                });
                Ok(message)
            })
        };
        let control = InProcess::new(daemon.gateway().clone(), "operator")
            .greeting(attach.clone())
            .simulating_outages(switch);
        crate::console::run(Arc::new(control), false).await?;
        say!("{attach}");
    }
    stop.store(true, Ordering::Relaxed);
    questions.abort();
    support.abort();
    for task in tasks {
        let _ = task.await;
    }
    let snapshot = daemon.gateway().snapshot();
    daemon.stop(Duration::from_secs(2)).await;
    let tally = tally.lock().await;
    say!("demo summary:");
    say!(
        "  {} requests, {} tokens, {} upstream errors seen by the gateway",
        snapshot.totals.requests,
        snapshot.totals.tokens,
        snapshot.totals.errors
    );
    let statuses: Vec<String> = tally
        .by_status
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect();
    say!("  clients saw: {}", statuses.join(", "));
    let regions: Vec<String> = tally
        .by_region
        .iter()
        .map(|(r, n)| format!("{r}: {n}"))
        .collect();
    say!("  served by: {}", regions.join(", "));
    let cache = &snapshot.cache;
    say!(
        "  cache: {} hits, {} coalesced, {} misses, {} bypassed; {} kept",
        cache.hits,
        cache.coalesced,
        cache.misses,
        cache.bypasses,
        crate::domain::snapshot::answers(cache.entries)
    );
    for t in &snapshot.tenants {
        say!(
            "  {:<9} {:<10} {:>7} requests today, {:>8} tokens",
            t.name,
            t.tier,
            t.day.requests,
            t.day.tokens
        );
    }
    let routing = snapshot
        .events
        .iter()
        .filter(|e| e.kind == crate::domain::snapshot::EventKind::Routing)
        .count();
    say!(
        "  {routing} routing events (ejections, probes, failovers); logs in {}",
        data_dir.join("logs").display()
    );
    let _ = std::fs::remove_dir_all(data_dir.join("db"));
    Ok(())
}

/// One tenant's synthetic client: requests at `rate` per second, `streamed` of them streams.
async fn client(
    base: String,
    key: String,
    rate: f64,
    streamed: f64,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) {
    let Ok(http) = reqwest::Client::builder().no_proxy().build() else {
        return;
    };
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Jitter the gaps so the load is not a metronome.
        tokio::time::sleep(gap.mul_f64(0.5 + fastrand::f64())).await;
        n += 1;
        let stream = fastrand::f64() < streamed;
        let model = if n.is_multiple_of(5) {
            "gpt-4o"
        } else {
            "gpt-4o-mini"
        };
        // One stream in ten is long (ten seconds): long enough to watch, or to kill.
        let max_tokens = if stream && n % 10 == 3 { 400 } else { 24 };
        let mut body = serde_json::json!({
            "model": model,
            "stream": stream,
            "max_tokens": max_tokens,
            "user": format!("{key}-conversation-{}", n % 7),
            "messages": [{"role": "user", "content": format!("Tell me about switchyard number {n}.")}],
        });
        // One request in four is a settled question from a short list: the cache's share.
        if n.is_multiple_of(4) {
            body["model"] = serde_json::json!("gpt-4o-mini");
            body["temperature"] = serde_json::json!(0);
            body["messages"][0]["content"] =
                serde_json::json!(format!("What is the answer to question {}?", n / 4 % 5));
        }
        let http = http.clone();
        let key = key.clone();
        let base = base.clone();
        let tally = tally.clone();
        tokio::spawn(async move {
            let reply = http
                .post(format!("{base}/chat/completions"))
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await;
            let Ok(reply) = reply else { return };
            let status = reply.status().as_u16();
            let region = reply
                .headers()
                .get("x-switchyard-region")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let _ = reply.bytes().await;
            let mut tally = tally.lock().await;
            *tally.by_status.entry(status).or_insert(0) += 1;
            if !region.is_empty() {
                *tally.by_region.entry(region).or_insert(0) += 1;
            }
        });
    }
}

/// Takes one region down every `every` for `length`, in turn, then heals it.
async fn outages(
    mocks: Arc<Vec<MockHandle>>,
    every: Duration,
    length: Duration,
    stop: Arc<AtomicBool>,
    gateway: Arc<crate::gateway::Gateway>,
) {
    let mut which = 0;
    loop {
        let region = REGIONS[which % REGIONS.len()];
        let at = crate::telemetry::now_ms() + every.as_millis() as u64;
        gateway.events().record(
            crate::domain::snapshot::EventKind::Traffic,
            Some("demo"),
            format!(
                "next simulated outage: {region} at {} UTC (in {every:?}; `o` in Regions for one now)",
                crate::domain::period::utc_text(at)
            ),
        );
        if sleep_unless_stopped(every, &stop).await {
            return;
        }
        let mock = &mocks[which % mocks.len()];
        mock.start_outage(Outage::Drop);
        gateway.events().record(
            crate::domain::snapshot::EventKind::Traffic,
            Some("demo"),
            format!("simulated outage: {region} goes dark for {length:?}"),
        );
        let stopped = sleep_unless_stopped(length, &stop).await;
        mock.stop_outage();
        gateway.events().record(
            crate::domain::snapshot::EventKind::Traffic,
            Some("demo"),
            format!("simulated outage over: {region} is back"),
        );
        if stopped {
            return;
        }
        which += 1;
    }
}

/// Sleeps for `length`; true when the demo stopped meanwhile.
async fn sleep_unless_stopped(length: Duration, stop: &AtomicBool) -> bool {
    let deadline = tokio::time::Instant::now() + length;
    while tokio::time::Instant::now() < deadline {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.load(Ordering::Relaxed)
}
