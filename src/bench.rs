//! `switchyard bench`: the same load sent straight to a mock upstream and then through the
//! gateway to that mock, side by side, so the gateway's own cost is what differs.
//!
//! By default everything runs in this process (a mock answering instantly, a gateway in
//! front of it, and the load generator), which measures the gateway's CPU cost on the
//! request path. `--mock-url` and `--gateway-url` measure separately started processes,
//! and `--target NAME=URL` (repeated) any servers at all, the first being the baseline
//! (benches/peers.sh loads an upstream simulator, a peer gateway and Switchyard so).
//! Streams are timed to the first content event and to the end, and the time between
//! one content event and the next is recorded for each (what vLLM's benchmarks call
//! inter-token latency: how smoothly a stream flows once it has started). `--rounds N`
//! interleaves the targets N times and reports medians, so a noisy machine hurts every
//! target alike, and under them the share of the CPU the host took (Linux's `steal`)
//! during each target's load in each round, so a round far off can be told apart from a
//! target that is slow; with `--target-pid`, also how long each target's threads waited
//! for a CPU while ready to run, which another process on its core causes and steal
//! does not count.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::say::say;
use anyhow::{Context as _, bail};
use clap::Args;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::config::Config;
use crate::daemon::Daemon;
use crate::mock::MockUpstream;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Requests per target (after a warm-up of 5%).
    #[arg(long, short = 'n', default_value_t = 5000)]
    pub requests: usize,
    /// Requests in flight at once.
    #[arg(long, short = 'c', default_value_t = 32)]
    pub concurrency: usize,
    /// Stream the answers and time the first token as well.
    #[arg(long)]
    pub stream: bool,
    /// Send deterministic requests (temperature 0): after the warm-up the gateway
    /// answers them from its cache, so this measures a cache hit against the upstream.
    #[arg(long)]
    pub cached: bool,
    /// Run the in-process gateway with the audit log off, to measure what it costs.
    #[arg(long)]
    pub no_audit: bool,
    /// Tokens in each answer (in-process mock only).
    #[arg(long, default_value_t = 16)]
    pub answer_tokens: u32,
    /// Base URL (with /v1) of an already running mock; needs --gateway-url too.
    #[arg(long, requires = "gateway_url")]
    pub mock_url: Option<String>,
    /// Base URL (with /v1) of an already running gateway in front of that mock.
    #[arg(long, requires = "mock_url")]
    pub gateway_url: Option<String>,
    /// Tenant key for --gateway-url.
    #[arg(long, default_value = "sy-demo-acme")]
    pub key: String,
    /// Model alias to ask for.
    #[arg(long, default_value = "gpt-4o-mini")]
    pub model: String,
    /// A server to load, as NAME=URL (base URL with /v1); repeat for more. The first is
    /// the baseline the others are compared with. Replaces the mock and the gateway.
    #[arg(long = "target", value_name = "NAME=URL", conflicts_with_all = ["mock_url", "gateway_url"])]
    pub targets: Vec<String>,
    /// The bearer key for a --target, as NAME=KEY; repeat for more.
    #[arg(long = "target-key", value_name = "NAME=KEY")]
    pub target_keys: Vec<String>,
    /// A process serving a --target, as NAME=PID; repeat for more (a server of several
    /// processes gives each). For each round the time its threads were ready to run and
    /// waited for a CPU is reported: what another process on its core cost it.
    #[arg(long = "target-pid", value_name = "NAME=PID")]
    pub target_pids: Vec<String>,
    /// Rounds over every target, interleaved; medians are reported.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Start this many requests a second, evenly spaced, whatever pace the answers come
    /// at (an open loop), instead of keeping --concurrency in flight. --concurrency then
    /// caps what is in flight; a run that reaches the cap says so, as its later starts
    /// waited for answers.
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,
}

const BENCH_KEY: &str = "sy-bench";

/// Prompts the load cycles through, so requests are not all identical.
const PROMPTS: &str = include_str!("../assets/prompts.txt");

/// What one target did under load.
struct Report {
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    /// Open loop only: starts that waited because --concurrency were in flight.
    held: usize,
    elapsed: Duration,
    /// Whole-request latency, microseconds.
    total: Histogram<u64>,
    /// Time to the first content event of a stream, microseconds.
    first_token: Histogram<u64>,
    /// Time from one read of a stream that carried content to the next, microseconds.
    between_tokens: Histogram<u64>,
    /// The share of the machine's CPU the hypervisor took while this load ran (Linux's
    /// `steal`), when the kernel says.
    stolen: Option<f64>,
    /// The same for each CPU, in the kernel's order: a gateway pinned to one CPU feels
    /// what the host takes from that one, which the machine's share can average away.
    stolen_by_cpu: Vec<Option<f64>>,
    /// The most the host took of the machine's CPU in any `WORST_WINDOW` of the load:
    /// a stall of tens of milliseconds moves a p99 and is a fraction of a percent of a
    /// round's average.
    worst_stolen: Option<f64>,
    /// How long the target's threads (`--target-pid`) waited for a CPU while ready to
    /// run, over the load and the most in any `WORST_WINDOW` of it: a server pinned to
    /// one core loses it to whatever else the kernel runs there, which steal does not
    /// count (another process of this machine, not the host).
    waited: Option<Duration>,
    worst_waited: Option<Duration>,
    /// When each request was sent, until `measured` counts them into `most_started`.
    starts: Vec<Instant>,
    /// The most requests sent within any `BURST_WINDOW`: how tightly the load bunched.
    most_started: usize,
}

/// The stretch in which the most requests sent are counted: a closed loop's streams of
/// one length start in waves, and a gateway on one core takes a wave's starts in turn.
const BURST_WINDOW: Duration = Duration::from_millis(10);

/// How often the steal sampler reads /proc/stat while a load runs (the kernel counts
/// in 10 ms ticks), and the stretch it reports the worst of.
const STEAL_SAMPLE: Duration = Duration::from_millis(10);
const WORST_WINDOW: Duration = Duration::from_millis(100);

/// Reads the machine's ticks, and the time the watched processes' threads have waited
/// for a CPU, every `STEAL_SAMPLE` on a thread of its own until stopped.
struct StealSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
}

#[derive(Clone, Copy)]
struct Sample {
    ticks: CpuTicks,
    /// Nanoseconds, when there are processes to watch and the kernel says.
    waited: Option<u64>,
}

/// What the sampler saw over a load.
struct Sampled {
    worst_stolen: Option<f64>,
    waited: Option<Duration>,
    worst_waited: Option<Duration>,
}

impl StealSampler {
    fn start(pids: &[u32]) -> Option<StealSampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let pids = pids.to_vec();
        let thread = std::thread::Builder::new()
            .name("steal-sampler".into())
            .spawn(move || {
                let mut samples = Vec::new();
                while !stopped.load(Ordering::Relaxed) {
                    match CpuTicks::now() {
                        Some((ticks, _)) => samples.push(Sample {
                            ticks,
                            waited: waited_ns(&pids),
                        }),
                        None => break,
                    }
                    std::thread::sleep(STEAL_SAMPLE);
                }
                samples
            })
            .ok()?;
        Some(StealSampler { stop, thread })
    }

    /// The worst window's share stolen, and the watched processes' wait, once the load
    /// is over.
    fn finish(self) -> Option<Sampled> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.thread.join().ok()?;
        let window = (WORST_WINDOW.as_millis() / STEAL_SAMPLE.as_millis()) as usize;
        let ticks: Vec<CpuTicks> = samples.iter().map(|s| s.ticks).collect();
        let waited: Option<Vec<u64>> = samples.iter().map(|s| s.waited).collect();
        let waited = waited.filter(|w| !w.is_empty());
        Some(Sampled {
            worst_stolen: worst_window(&ticks, window),
            waited: waited.as_deref().map(|w| Duration::from_nanos(grown(w))),
            worst_waited: waited
                .as_deref()
                .map(|w| Duration::from_nanos(most_grown_within(w, window))),
        })
    }
}

/// How much a running total grew over `samples`: a thread that ends takes its own
/// share out of the total, which is not a shrinking of the rest.
fn grown(samples: &[u64]) -> u64 {
    samples
        .windows(2)
        .map(|pair| pair[1].saturating_sub(pair[0]))
        .sum()
}

/// The most a running total grew between samples `window` apart (or over all of them,
/// when there are fewer).
fn most_grown_within(samples: &[u64], window: usize) -> u64 {
    let window = window.max(1);
    if samples.len() <= window {
        return grown(samples);
    }
    samples
        .windows(window + 1)
        .map(grown)
        .max()
        .unwrap_or_default()
}

/// The time every thread of `pids` has spent ready to run and waiting for a CPU, in
/// nanoseconds (the second field of each `/proc/PID/task/TID/schedstat`); none without
/// pids or when one cannot be read (it has exited).
fn waited_ns(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    let mut waited = 0u64;
    for pid in pids {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        for task in tasks.flatten() {
            // A thread may end between the listing and the read: it no longer waits.
            let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            let field = stat.split_ascii_whitespace().nth(1)?;
            waited = waited.saturating_add(field.parse().ok()?);
        }
    }
    Some(waited)
}

/// The largest share stolen between samples `window` apart; none with too few samples.
fn worst_window(samples: &[CpuTicks], window: usize) -> Option<f64> {
    samples
        .iter()
        .zip(samples.iter().skip(window.max(1)))
        .filter_map(|(earlier, later)| later.stolen_since(*earlier))
        .max_by(f64::total_cmp)
}

/// The machine's CPU time as Linux's /proc/stat counts it, in ticks: what the hypervisor
/// gave to others while this virtual machine had work (`steal`), and all of it. A round
/// far off on a shared host is often one where the host took the CPU: both say so.
#[derive(Clone, Copy, Debug, PartialEq)]
struct CpuTicks {
    steal: u64,
    all: u64,
}

impl CpuTicks {
    /// The machine's ticks, and each CPU's.
    fn now() -> Option<(CpuTicks, Vec<CpuTicks>)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        Some((CpuTicks::parse(&stat)?, CpuTicks::each_cpu(&stat)))
    }

    /// The `cpu` line: user, nice, system, idle, iowait, irq, softirq, steal, then guest
    /// times (already counted in user and nice).
    fn parse(stat: &str) -> Option<CpuTicks> {
        CpuTicks::of_line(stat.lines().find(|line| line.starts_with("cpu "))?)
    }

    /// The `cpu0`, `cpu1`, … lines, in order; none if any cannot be read.
    fn each_cpu(stat: &str) -> Vec<CpuTicks> {
        stat.lines()
            .filter(|line| {
                line.strip_prefix("cpu")
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
            .map(CpuTicks::of_line)
            .collect::<Option<_>>()
            .unwrap_or_default()
    }

    fn of_line(line: &str) -> Option<CpuTicks> {
        let ticks: Vec<u64> = line
            .split_ascii_whitespace()
            .skip(1)
            .take(8)
            .map(|field| field.parse().ok())
            .collect::<Option<_>>()?;
        Some(CpuTicks {
            steal: *ticks.get(7)?,
            all: ticks.iter().sum(),
        })
    }

    /// The share of the CPU stolen from `earlier` to `self`.
    fn stolen_since(self, earlier: CpuTicks) -> Option<f64> {
        let all = self.all.checked_sub(earlier.all).filter(|&all| all > 0)?;
        Some(self.steal.checked_sub(earlier.steal)? as f64 / all as f64)
    }
}

/// How one request went: its whole time and, for a stream, when its first content came
/// and the gaps between reads with content after that.
struct Timing {
    started: Instant,
    total: Duration,
    first: Option<Duration>,
    between: Vec<Duration>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.requests > 0 && args.concurrency > 0,
        "--requests and --concurrency must be at least 1"
    );
    // Keep the in-process servers alive for the whole run.
    let mut _mock = None;
    let mut _gateway = None;
    let bench_dir = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
    let targets: Vec<(String, String, String)> = if !args.targets.is_empty() {
        named_targets(&args.targets, &args.target_keys)?
    } else if let (Some(m), Some(g)) = (&args.mock_url, &args.gateway_url) {
        vec![
            ("direct".into(), m.clone(), "unused".into()),
            ("gateway".into(), g.clone(), args.key.clone()),
        ]
    } else {
        let mock = MockUpstream::builder()
            .ttft(Duration::ZERO)
            .tokens_per_sec(0.0)
            .answer_tokens(args.answer_tokens)
            .spawn_local()
            .await
            .context("cannot start the mock upstream")?;
        let mut config = Config::from_toml(&bench_config(&mock.url(), &args.model))?;
        config.audit.enabled = !args.no_audit;
        config.server.data_dir = bench_dir.clone();
        let daemon = Daemon::start(config).await?;
        let targets = vec![
            ("direct".into(), mock.url(), "unused".into()),
            (
                "gateway".into(),
                format!("{}/v1", daemon.url()),
                BENCH_KEY.to_string(),
            ),
        ];
        _mock = Some(mock);
        _gateway = Some(daemon);
        targets
    };
    let pids = target_pids(&args.target_pids, &targets)?;
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    if let Some(rate) = args.rate {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "--rate must be a number of requests a second above 0, not {rate}"
        );
    }

    say!(
        "switchyard bench: {} requests {}, {}, model {}, {} round{}",
        args.requests,
        match args.rate {
            Some(rate) => format!(
                "started at {rate}/s (at most {} in flight)",
                args.concurrency
            ),
            None => format!("at concurrency {}", args.concurrency),
        },
        match (args.stream, args.cached) {
            (false, false) => "plain",
            (true, false) => "streaming",
            (false, true) => "plain, cacheable (the gateway answers hits)",
            (true, true) => "streaming, cacheable (the gateway replays hits)",
        },
        args.model,
        args.rounds,
        if args.rounds == 1 {
            ""
        } else {
            "s, interleaved"
        }
    );
    let mut rounds: Vec<Vec<Report>> = Vec::new();
    for round in 0..args.rounds {
        let mut reports: Vec<Option<Report>> = targets.iter().map(|_| None).collect();
        for t in turns(round, targets.len()) {
            let (name, url, key) = &targets[t];
            let report = load(&args, url, key, &pids[t])
                .await
                .with_context(|| format!("loading {name} at {url}"))?;
            reports[t] = Some(report);
        }
        let reports: Vec<Report> = reports.into_iter().flatten().collect();
        if args.rounds > 1 {
            say!("round {}:", round + 1);
            print(&args, &targets, &reports);
        }
        rounds.push(reports);
    }
    if args.rounds > 1 {
        say!("medians of {} rounds:", args.rounds);
    }
    print_medians(&args, &targets, &rounds);
    if let Some(daemon) = _gateway.take() {
        daemon.stop(Duration::from_secs(1)).await;
        let _ = std::fs::remove_dir_all(&bench_dir);
    }
    Ok(())
}

/// The order in which round `round` loads `n` targets: each round starts one further
/// along, so over `n` rounds every target runs once in every place. On a shared machine
/// the place matters: on two cores, one build loaded in two places of every round
/// differed by up to a tenth in median p99, and a fixed order hands whatever a place
/// costs to one target.
fn turns(round: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (round + i) % n)
}

/// (name, url, key) of each `--target NAME=URL`, with its `--target-key NAME=KEY`.
fn named_targets(
    targets: &[String],
    keys: &[String],
) -> anyhow::Result<Vec<(String, String, String)>> {
    let keys: Vec<(String, String)> = keys
        .iter()
        .map(|k| name_value(k, "--target-key"))
        .collect::<anyhow::Result<_>>()?;
    let mut out = Vec::new();
    for target in targets {
        let (name, url) = name_value(target, "--target")?;
        if out
            .iter()
            .any(|(n, _, _): &(String, String, String)| *n == name)
        {
            bail!("--target {name} is named twice");
        }
        let key = keys
            .iter()
            .find(|(n, _)| *n == name)
            .map_or_else(|| "unused".to_string(), |(_, k)| k.clone());
        out.push((name, url, key));
    }
    for (name, _) in &keys {
        if !out.iter().any(|(n, _, _)| n == name) {
            bail!("--target-key {name} names no --target");
        }
    }
    Ok(out)
}

/// `NAME=VALUE`, split; `what` names the flag in the error.
fn name_value(text: &str, what: &str) -> anyhow::Result<(String, String)> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() && !value.is_empty() => {
            Ok((name.to_string(), value.trim_end_matches('/').to_string()))
        }
        _ => bail!("{what} \"{text}\" is not NAME=VALUE"),
    }
}

/// The processes of each target, in the targets' order, from `--target-pid NAME=PID`.
fn target_pids(
    pids: &[String],
    targets: &[(String, String, String)],
) -> anyhow::Result<Vec<Vec<u32>>> {
    let mut each = vec![Vec::new(); targets.len()];
    for text in pids {
        let (name, pid) = name_value(text, "--target-pid")?;
        let Some(t) = targets.iter().position(|(n, _, _)| *n == name) else {
            bail!("--target-pid {name} names no target");
        };
        let pid: u32 = pid
            .parse()
            .with_context(|| format!("--target-pid {name}: \"{pid}\" is not a process id"))?;
        each[t].push(pid);
    }
    Ok(each)
}

fn bench_config(mock_url: &str, model: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[tiers.bench]

[[tenants]]
name = "bench"
tier = "bench"
keys = ["{key}"]

[[regions]]
name = "local"
  [[regions.instances]]
  name = "local-mock"
  url = "{mock_url}"
  max_concurrency = 100000

[[models]]
alias = "{model}"
"#,
        key = crate::auth::hash_key(BENCH_KEY),
    )
}

async fn load(args: &BenchArgs, base: &str, key: &str, pids: &[u32]) -> anyhow::Result<Report> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .tcp_nodelay(true)
        .no_proxy()
        .build()?;
    let url = format!("{base}/chat/completions");
    let bodies: Vec<String> = PROMPTS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|prompt| {
            let mut body = serde_json::json!({
                "model": args.model,
                "messages": [{"role": "user", "content": prompt}],
                "stream": args.stream,
            });
            if args.cached {
                body["temperature"] = serde_json::json!(0);
            }
            body.to_string()
        })
        .collect();
    let shared = Arc::new(Target {
        client,
        url,
        bodies,
        key: key.to_string(),
        stream: args.stream,
    });

    // Warm up connections so the measurement does not include TCP handshakes.
    match args.rate {
        None => {
            let warmup = (args.requests / 20).max(args.concurrency);
            run_load(shared.clone(), warmup, args.concurrency).await?;
            measured(run_load(shared, args.requests, args.concurrency), pids).await
        }
        Some(rate) => {
            // A second of starts opens about as many connections as the run keeps busy.
            let warmup = (args.requests / 20).max(rate.ceil() as usize);
            run_open_loop(shared.clone(), warmup, rate, args.concurrency).await?;
            measured(
                run_open_loop(shared, args.requests, rate, args.concurrency),
                pids,
            )
            .await
        }
    }
}

/// `run`'s report, with the CPU the host took while it ran and the time the target's
/// processes (`pids`) waited for one.
async fn measured(
    run: impl std::future::Future<Output = anyhow::Result<Report>>,
    pids: &[u32],
) -> anyhow::Result<Report> {
    let before = CpuTicks::now();
    let sampler = StealSampler::start(pids);
    let mut report = run.await?;
    if let Some(sampled) = sampler.and_then(StealSampler::finish) {
        report.worst_stolen = sampled.worst_stolen;
        report.waited = sampled.waited;
        report.worst_waited = sampled.worst_waited;
    }
    report.most_started = most_within(&mut std::mem::take(&mut report.starts), BURST_WINDOW);
    if let (Some((after, after_cpus)), Some((before, before_cpus))) = (CpuTicks::now(), before) {
        report.stolen = after.stolen_since(before);
        // CPUs that came or went meanwhile: no share for each.
        if after_cpus.len() == before_cpus.len() {
            report.stolen_by_cpu = (after_cpus.iter().zip(&before_cpus))
                .map(|(after, before)| after.stolen_since(*before))
                .collect();
        }
    }
    Ok(report)
}

/// Where the load goes and what it sends.
struct Target {
    client: reqwest::Client,
    url: String,
    bodies: Vec<String>,
    key: String,
    stream: bool,
}

type Shared = Arc<Target>;

async fn run_load(shared: Shared, requests: usize, concurrency: usize) -> anyhow::Result<Report> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let shared = shared.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut report = Report::new()?;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= requests {
                        break;
                    }
                    report.record(one(&shared, n).await);
                }
                anyhow::Ok(report)
            })
        })
        .collect();
    let mut merged = Report::new()?;
    for worker in workers {
        let report = worker.await.context("a load worker panicked")??;
        merged.ok += report.ok;
        merged.errors += report.errors;
        merged.held += report.held;
        if merged.first_error.is_none() {
            merged.first_error = report.first_error;
        }
        merged.total.add(&report.total)?;
        merged.first_token.add(&report.first_token)?;
        merged.between_tokens.add(&report.between_tokens)?;
        merged.starts.extend(report.starts);
    }
    merged.elapsed = started.elapsed();
    Ok(merged)
}

/// `requests` started `rate` a second, evenly spaced from the first, each on its own task:
/// a slow answer does not hold back the next start, as it does with a fixed number of
/// workers (where streams of one fixed length keep starting together, in bursts as large
/// as the concurrency, once they have started together). At most `cap` are in flight; a
/// start that finds the cap reached waits, and the report counts it.
async fn run_open_loop(
    shared: Shared,
    requests: usize,
    rate: f64,
    cap: usize,
) -> anyhow::Result<Report> {
    let gap = Duration::from_secs_f64(1.0 / rate);
    let slots = Arc::new(tokio::sync::Semaphore::new(cap));
    let mut running = tokio::task::JoinSet::new();
    let mut report = Report::new()?;
    let started = Instant::now();
    for n in 0..requests {
        tokio::time::sleep_until(started + gap.mul_f64(n as f64)).await;
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                report.held += 1;
                slots.clone().acquire_owned().await?
            }
        };
        let shared = shared.clone();
        running.spawn(async move {
            let result = one(&shared, n).await;
            drop(slot);
            result
        });
        while let Some(done) = running.try_join_next() {
            report.record(done.context("a load task panicked")?);
        }
    }
    while let Some(done) = running.join_next().await {
        report.record(done.context("a load task panicked")?);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn one(target: &Target, n: usize) -> anyhow::Result<Timing> {
    let body = target.bodies[n % target.bodies.len()].clone();
    let started = Instant::now();
    let mut response = target
        .client
        .post(&target.url)
        .bearer_auth(&target.key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("status {}", response.status());
    }
    if !target.stream {
        response.bytes().await?;
        return Ok(Timing {
            started,
            total: started.elapsed(),
            first: None,
            between: Vec::new(),
        });
    }
    let mut first = None;
    let mut last_content = None;
    let mut between = Vec::new();
    let mut seen = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if carries_text(&chunk) {
            let now = Instant::now();
            match last_content.replace(now) {
                None => first = Some(now - started),
                Some(last) => between.push(now - last),
            }
        }
        seen.extend_from_slice(&chunk[chunk.len().saturating_sub(16)..]);
    }
    if !seen.windows(6).any(|w| w == b"[DONE]") {
        bail!("the stream ended without [DONE]");
    }
    Ok(Timing {
        started,
        total: started.elapsed(),
        first,
        between,
    })
}

/// Whether a read of a stream holds a token: a `"content"` that is not empty (the first
/// chunk of OpenAI's streams names the role with an empty content).
fn carries_text(chunk: &[u8]) -> bool {
    memchr::memmem::find_iter(chunk, b"\"content\"").any(|at| {
        let rest = &chunk[at + 9..];
        let value = rest
            .trim_ascii_start()
            .strip_prefix(b":")
            .unwrap_or_default();
        value.trim_ascii_start().starts_with(b"\"")
            && value.trim_ascii_start().get(1) != Some(&b'"')
    })
}

impl Report {
    fn new() -> anyhow::Result<Report> {
        Ok(Report {
            ok: 0,
            errors: 0,
            first_error: None,
            held: 0,
            elapsed: Duration::ZERO,
            total: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            first_token: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            between_tokens: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            stolen: None,
            stolen_by_cpu: Vec::new(),
            worst_stolen: None,
            waited: None,
            worst_waited: None,
            starts: Vec::new(),
            most_started: 0,
        })
    }

    fn record(&mut self, result: anyhow::Result<Timing>) {
        match result {
            Ok(timing) => {
                self.ok += 1;
                self.starts.push(timing.started);
                self.total
                    .saturating_record(timing.total.as_micros() as u64);
                if let Some(first) = timing.first {
                    self.first_token.saturating_record(first.as_micros() as u64);
                }
                for gap in timing.between {
                    self.between_tokens
                        .saturating_record(gap.as_micros() as u64);
                }
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }

    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// One round: each target's rate and percentiles, and what each adds to the first.
fn print(args: &BenchArgs, targets: &[(String, String, String)], reports: &[Report]) {
    let rows: Vec<Row> = reports.iter().map(Row::of).collect();
    print_rows(args, targets, &rows, reports);
}

/// The median over rounds of each target's rate and percentiles.
fn print_medians(args: &BenchArgs, targets: &[(String, String, String)], rounds: &[Vec<Report>]) {
    let rows: Vec<Row> = (0..targets.len())
        .map(|t| {
            let rows: Vec<Row> = rounds.iter().map(|r| Row::of(&r[t])).collect();
            Row::median(&rows)
        })
        .collect();
    let last = rounds.last().map(Vec::as_slice).unwrap_or_default();
    print_rows(args, targets, &rows, last);
    if args.stream && rounds.len() > 1 {
        let rows: Vec<Vec<Row>> = rounds
            .iter()
            .map(|round| round.iter().map(Row::of).collect())
            .collect();
        say!("time to first token p99 added, each round against its own baseline:");
        for (t, (name, _, _)) in targets.iter().enumerate().skip(1) {
            say!("{}", added_by_round(name, &added_p99s(&rows, t)));
        }
        say!(
            "the most streams started within any {} ms of each round's load:",
            BURST_WINDOW.as_millis()
        );
        for (t, (name, _, _)) in targets.iter().enumerate() {
            let each: Vec<String> = rounds
                .iter()
                .map(|round| round[t].most_started.to_string())
                .collect();
            say!("{name:<12} {}", each.join(" "));
        }
    }
    if rounds.len() > 1 && rounds.iter().flatten().any(|r| r.stolen.is_some()) {
        say!("CPU the host took from this machine (steal) during each round's load:");
        for (t, (name, _, _)) in targets.iter().enumerate() {
            let stolen: Vec<Option<f64>> = rounds.iter().map(|round| round[t].stolen).collect();
            say!("{}", stolen_by_round(name, &stolen));
        }
        let cpus = rounds.iter().flatten().map(|r| r.stolen_by_cpu.len()).max();
        if cpus.is_some_and(|cpus| cpus > 1) {
            let names: Vec<String> = (0..cpus.unwrap_or_default())
                .map(|cpu| format!("cpu{cpu}"))
                .collect();
            say!("the same on each CPU ({}):", names.join(" / "));
            for (t, (name, _, _)) in targets.iter().enumerate() {
                let each: Vec<&[Option<f64>]> = rounds
                    .iter()
                    .map(|round| round[t].stolen_by_cpu.as_slice())
                    .collect();
                say!("{}", stolen_by_cpu_by_round(name, &each));
            }
        }
        if rounds.iter().flatten().any(|r| r.worst_stolen.is_some()) {
            say!(
                "the most the host took in any {} ms of each round's load:",
                WORST_WINDOW.as_millis()
            );
            for (t, (name, _, _)) in targets.iter().enumerate() {
                let worst: Vec<Option<f64>> =
                    rounds.iter().map(|round| round[t].worst_stolen).collect();
                say!("{}", stolen_by_round(name, &worst));
            }
        }
    }
    if rounds.len() > 1 && rounds.iter().flatten().any(|r| r.waited.is_some()) {
        say!(
            "time each target's threads waited, ready to run, for a CPU during each \
             round's load (all / the most in any {} ms):",
            WORST_WINDOW.as_millis()
        );
        for (t, (name, _, _)) in targets.iter().enumerate() {
            let each: Vec<(Option<Duration>, Option<Duration>)> = rounds
                .iter()
                .map(|round| (round[t].waited, round[t].worst_waited))
                .collect();
            say!("{}", waited_by_round(name, &each));
        }
    }
}

/// The most of `starts` within any `window` of each other.
fn most_within(starts: &mut [Instant], window: Duration) -> usize {
    starts.sort_unstable();
    let mut first = 0;
    let mut most = 0;
    for (last, &at) in starts.iter().enumerate() {
        while at.duration_since(starts[first]) >= window {
            first += 1;
        }
        most = most.max(last + 1 - first);
    }
    most
}

/// `name`, the share of each CPU stolen in each round, in percent: `0.1/34.9` for two.
fn stolen_by_cpu_by_round(name: &str, rounds: &[&[Option<f64>]]) -> String {
    let each: Vec<String> = rounds
        .iter()
        .map(|cpus| match cpus {
            [] => "-".into(),
            cpus => cpus
                .iter()
                .map(|share| share.map_or("-".into(), |share| format!("{:.1}", share * 100.0)))
                .collect::<Vec<_>>()
                .join("/"),
        })
        .collect();
    format!("{name:<12} {} %", each.join(" "))
}

/// `name`, the time waited in each round and the most in any window of it, in
/// milliseconds: `12.5/6.1`.
fn waited_by_round(name: &str, rounds: &[(Option<Duration>, Option<Duration>)]) -> String {
    let ms =
        |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3));
    let each: Vec<String> = rounds
        .iter()
        .map(|&(all, worst)| format!("{}/{}", ms(all), ms(worst)))
        .collect();
    format!("{name:<12} {} ms", each.join(" "))
}

/// `name`, the share of the CPU stolen in each round, in percent.
fn stolen_by_round(name: &str, stolen: &[Option<f64>]) -> String {
    let each: Vec<String> = stolen
        .iter()
        .map(|share| share.map_or("-".into(), |share| format!("{:.1}", share * 100.0)))
        .collect();
    format!("{name:<12} {} %", each.join(" "))
}

/// What target `t` added to the first token's p99 in each round, against the baseline
/// (the first target) of the same round, in microseconds. A round's own difference:
/// the machine's pace moves from round to round, and a median of each target's p99
/// over the rounds pairs one round's gateway with another's baseline.
fn added_p99s(rounds: &[Vec<Row>], t: usize) -> Vec<f64> {
    const P99: usize = 2;
    rounds
        .iter()
        .map(|round| round[t].first[P99] - round[0].first[P99])
        .collect()
}

/// `name`, each round's added time, their median and range, in milliseconds: the
/// range says how far one round is from the next, which a median alone hides.
fn added_by_round(name: &str, added: &[f64]) -> String {
    let mut sorted = added.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = match n {
        0 => return format!("{name:<12} no rounds"),
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    let ms = |micros: f64| format!("{:+.1}", micros / 1000.0);
    let each: Vec<String> = added.iter().map(|&a| ms(a)).collect();
    format!(
        "{name:<12} {} ms; median {} ms, range {} to {} ms",
        each.join(" "),
        ms(median),
        ms(sorted[0]),
        ms(sorted[n - 1])
    )
}

/// What one target did, in numbers: ok requests per second, whole-request, first-token
/// and between-token percentiles (µs), errors.
#[derive(Clone, Default)]
struct Row {
    rate: f64,
    total: [f64; 4],
    first: [f64; 4],
    between: [f64; 4],
    errors: usize,
}

impl Row {
    fn of(r: &Report) -> Row {
        Row {
            rate: r.rate(),
            total: QUANTILES.map(|q| r.total.value_at_quantile(q) as f64),
            first: QUANTILES.map(|q| r.first_token.value_at_quantile(q) as f64),
            between: QUANTILES.map(|q| r.between_tokens.value_at_quantile(q) as f64),
            errors: r.errors,
        }
    }

    fn median(rows: &[Row]) -> Row {
        let median = |pick: &dyn Fn(&Row) -> f64| {
            let mut values: Vec<f64> = rows.iter().map(pick).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        Row {
            rate: median(&|r| r.rate),
            total: std::array::from_fn(|i| median(&|r| r.total[i])),
            first: std::array::from_fn(|i| median(&|r| r.first[i])),
            between: std::array::from_fn(|i| median(&|r| r.between[i])),
            errors: rows.iter().map(|r| r.errors).sum(),
        }
    }
}

fn print_rows(
    args: &BenchArgs,
    targets: &[(String, String, String)],
    rows: &[Row],
    reports: &[Report],
) {
    let ms = |micros: f64| format!("{:.3}ms", micros / 1000.0);
    let line = |name: &str, rate: String, errors: String, q: [String; 4]| {
        say!(
            "{:<12} {:>10} {:>7} {:>10} {:>10} {:>10} {:>10}",
            name,
            rate,
            errors,
            q[0],
            q[1],
            q[2],
            q[3]
        );
    };
    line(
        "target",
        "req/s".into(),
        "errors".into(),
        ["p50", "p90", "p99", "p99.9"].map(String::from),
    );
    for ((name, _, _), row) in targets.iter().zip(rows) {
        line(
            name,
            format!("{:.1}", row.rate),
            row.errors.to_string(),
            row.total.map(ms),
        );
    }
    let Some(base) = rows.first() else {
        return;
    };
    for ((name, _, _), row) in targets.iter().zip(rows).skip(1) {
        line(
            &format!("{name} adds"),
            format!("{:.2}x", row.rate / base.rate.max(f64::EPSILON)),
            String::new(),
            std::array::from_fn(|i| format!("{:+.3}ms", (row.total[i] - base.total[i]) / 1000.0)),
        );
    }
    if args.stream {
        type Percentiles = fn(&Row) -> [f64; 4];
        let times: [(&str, Percentiles); 2] = [
            ("time to first token:", |row| row.first),
            ("time between tokens:", |row| row.between),
        ];
        for (title, of) in times {
            say!("{title}");
            for ((name, _, _), row) in targets.iter().zip(rows) {
                line(name, String::new(), String::new(), of(row).map(ms));
            }
            for ((name, _, _), row) in targets.iter().zip(rows).skip(1) {
                let (q, base) = (of(row), of(base));
                line(
                    &format!("{name} adds"),
                    String::new(),
                    String::new(),
                    std::array::from_fn(|i| format!("{:+.3}ms", (q[i] - base[i]) / 1000.0)),
                );
            }
        }
    }
    for ((name, _, _), r) in targets.iter().zip(reports) {
        if r.held > 0 {
            say!(
                "{name}: {} starts waited for one of the {} requests in flight to end, \
                 so they were late; raise --concurrency or lower --rate",
                r.held,
                args.concurrency
            );
        }
        if let Some(e) = &r.first_error {
            say!("{name}: {} errors, the first: {e}", r.errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target loaded at `rate` a second: the mock answers each stream after `ttft`.
    async fn open_loop(ttft: Duration, cap: usize) -> Report {
        paced_open_loop(ttft, 0.0, 2, cap).await
    }

    /// As `open_loop`, the mock's `tokens` coming `per_second`.
    async fn paced_open_loop(ttft: Duration, per_second: f64, tokens: u32, cap: usize) -> Report {
        crate::tls::install_crypto();
        let mock = MockUpstream::builder()
            .ttft(ttft)
            .tokens_per_sec(per_second)
            .answer_tokens(tokens)
            .spawn_local()
            .await
            .unwrap();
        let target = Arc::new(Target {
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            url: format!("{}/chat/completions", mock.url()),
            bodies: vec![
                serde_json::json!({
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": "hello"}],
                    "stream": true,
                })
                .to_string(),
            ],
            key: "unused".into(),
            stream: true,
        });
        run_open_loop(target, 5, 20.0, cap).await.unwrap()
    }

    #[test]
    fn the_cpu_the_host_took_is_read_from_the_kernel_s_counts() {
        let stat = |steal: u64, idle: u64| {
            format!(
                "cpu  800 0 200 {idle} 10 0 50 {steal} 0 0\n\
                 cpu0 400 0 100 {idle} 5 0 25 {steal} 0 0\n\
                 intr 12345 0 0\nctxt 999\n"
            )
        };
        let before = CpuTicks::parse(&stat(100, 8_840)).unwrap();
        assert_eq!(
            before,
            CpuTicks {
                steal: 100,
                all: 10_000
            }
        );
        // 1,000 ticks later, 50 of them taken by the host.
        let after = CpuTicks::parse(&stat(150, 9_790)).unwrap();
        assert_eq!(after.stolen_since(before), Some(0.05));
        // No time passed, or counters that went back (a restored snapshot): no share.
        assert_eq!(before.stolen_since(before), None);
        assert_eq!(before.stolen_since(after), None);
        // Each CPU's line, in order.
        let two = "cpu  10 0 0 70 0 0 0 20 0 0\n\
                   cpu0 5 0 0 45 0 0 0 0 0 0\n\
                   cpu1 5 0 0 25 0 0 0 20 0 0\n\
                   intr 1\n";
        let cpus = CpuTicks::each_cpu(two);
        assert_eq!(
            cpus,
            [
                CpuTicks { steal: 0, all: 50 },
                CpuTicks { steal: 20, all: 50 }
            ]
        );
        assert_eq!(CpuTicks::each_cpu("cpu  1 2 3 4 5 6 7 8\n"), []);
        assert_eq!(CpuTicks::each_cpu("cpu  1 2 3 4 5 6 7 8\ncpu0 1 2\n"), []);
        assert_eq!(
            stolen_by_cpu_by_round(
                "gateway",
                &[&[Some(0.001), Some(0.349)], &[], &[None, Some(0.0)]]
            ),
            "gateway      0.1/34.9 - -/0.0 %"
        );
        // The worst stretch of samples a window apart: ticks of 100 each, the host
        // taking 0, then 60, then 10 of them.
        let samples: Vec<CpuTicks> = [(0, 0), (0, 100), (60, 200), (70, 300)]
            .into_iter()
            .map(|(steal, all)| CpuTicks { steal, all })
            .collect();
        assert_eq!(worst_window(&samples, 1), Some(0.6));
        assert_eq!(worst_window(&samples, 2), Some(0.35));
        assert_eq!(worst_window(&samples, 4), None);
        assert_eq!(worst_window(&[], 1), None);
        assert_eq!(CpuTicks::parse("cpu  1 2 3\n"), None);
        assert_eq!(CpuTicks::parse("intr 1 2 3\n"), None);
        assert_eq!(
            stolen_by_round("gateway", &[Some(0.0), Some(0.052), None]),
            "gateway      0.0 5.2 - %"
        );
    }

    #[test]
    fn the_most_requests_sent_together_are_counted_within_a_window() {
        let base = Instant::now();
        let at = |ms: u64| base + Duration::from_millis(ms);
        // Out of order, as workers report them: a wave of four from 15 to 18 ms.
        let mut starts = vec![at(40), at(0), at(16), at(1), at(15), at(18), at(2), at(17)];
        assert_eq!(most_within(&mut starts, Duration::from_millis(10)), 4);
        // 40 is 10 ms past 30: not within the same 10 ms.
        let mut starts = vec![at(30), at(40), at(39)];
        assert_eq!(most_within(&mut starts, Duration::from_millis(10)), 2);
        assert_eq!(most_within(&mut [], Duration::from_millis(10)), 0);
        assert_eq!(most_within(&mut [at(5)], Duration::from_millis(10)), 1);
    }

    #[test]
    fn a_target_s_wait_for_a_cpu_is_what_its_running_total_grew() {
        let ms = |n: u64| n * 1_000_000;
        // Every 10 ms: a 6 ms wait between the third and fourth samples, and a thread
        // that ended after the fifth, taking its own 2 ms out of the total.
        let samples = [ms(10), ms(10), ms(11), ms(17), ms(17), ms(15), ms(16)];
        assert_eq!(grown(&samples), ms(8));
        assert_eq!(most_grown_within(&samples, 2), ms(7), "from 10 to 17");
        assert_eq!(most_grown_within(&samples, 1), ms(6));
        assert_eq!(most_grown_within(&samples, 100), ms(8), "all of it");
        assert_eq!(most_grown_within(&[], 10), 0);
        assert_eq!(
            waited_by_round(
                "switchyard",
                &[
                    (
                        Some(Duration::from_micros(12_340)),
                        Some(Duration::from_millis(6))
                    ),
                    (None, None)
                ]
            ),
            "switchyard   12.3/6.0 -/- ms"
        );
    }

    #[test]
    fn a_process_s_wait_for_a_cpu_is_read_from_the_kernel() {
        assert_eq!(waited_ns(&[]), None, "nothing to watch");
        assert_eq!(waited_ns(&[u32::MAX]), None, "no such process");
        // One busy process more than there are cores: together they are ready to run
        // for longer than the cores can run them, so they wait. Processes of their own,
        // not threads of this one: other tests' threads come and go here, and a thread
        // that ends takes its wait out of its process's total.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut busy: Vec<_> = (0..=cores)
            .map(|_| {
                std::process::Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .expect("a busy shell")
            })
            .collect();
        let pids: Vec<u32> = busy.iter().map(std::process::Child::id).collect();
        let before = waited_ns(&pids).expect("the busy processes' wait, from /proc");
        let until = std::time::Instant::now() + Duration::from_secs(20);
        let during = loop {
            let now = waited_ns(&pids).expect("the busy processes' wait");
            if now > before || std::time::Instant::now() > until {
                break now;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for child in &mut busy {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(during > before, "waited {before} ns, then {during}");
    }

    #[test]
    fn target_pids_name_their_targets() {
        let targets: Vec<(String, String, String)> = ["direct", "nginx"]
            .iter()
            .map(|n| (n.to_string(), "http://x/v1".into(), "unused".into()))
            .collect();
        let given = |pids: &[&str]| {
            let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
            target_pids(&pids, &targets)
        };
        assert_eq!(
            given(&["nginx=12", "nginx=13"]).expect("pids"),
            [vec![], vec![12, 13]]
        );
        let error = |pids: &[&str]| format!("{:#}", given(pids).expect_err("refused"));
        assert!(error(&["gateway=12"]).contains("--target-pid gateway names no target"));
        assert!(error(&["direct=twelve"]).contains("\"twelve\" is not a process id"));
        assert!(error(&["direct"]).contains("is not NAME=VALUE"));
    }

    #[test]
    fn each_round_is_compared_with_its_own_baseline() {
        let round = |direct: f64, gateway: f64| {
            let row = |p99: f64| Row {
                first: [0.0, 0.0, p99, 0.0],
                ..Row::default()
            };
            vec![row(direct), row(gateway)]
        };
        // The machine slows in the second round, the baseline with it.
        let rounds = [
            round(210_000.0, 212_000.0),
            round(230_000.0, 231_000.0),
            round(215_000.0, 214_500.0),
            round(212_000.0, 219_000.0),
        ];
        let added = added_p99s(&rounds, 1);
        assert_eq!(added, [2_000.0, 1_000.0, -500.0, 7_000.0]);
        assert_eq!(
            added_by_round("gateway", &added),
            "gateway      +2.0 +1.0 -0.5 +7.0 ms; median +1.5 ms, range -0.5 to +7.0 ms"
        );
        assert_eq!(
            added_by_round("gateway", &added[..3]),
            "gateway      +2.0 +1.0 -0.5 ms; median +1.0 ms, range -0.5 to +2.0 ms"
        );
    }

    #[test]
    fn over_as_many_rounds_as_targets_each_target_runs_once_in_every_place() {
        let n = 3;
        let rounds: Vec<Vec<usize>> = (0..n).map(|r| turns(r, n).collect()).collect();
        assert_eq!(rounds, [[0, 1, 2], [1, 2, 0], [2, 0, 1]]);
        for target in 0..n {
            let mut places: Vec<usize> = rounds
                .iter()
                .map(|order| order.iter().position(|&t| t == target).unwrap())
                .collect();
            places.sort_unstable();
            assert_eq!(places, [0, 1, 2], "target {target}");
        }
        assert_eq!(turns(4, 1).collect::<Vec<_>>(), [0]);
    }

    #[tokio::test]
    async fn an_open_loop_starts_on_schedule_whatever_the_answers_take() {
        // Five starts 50 ms apart, each answered 300 ms later: all five are in flight
        // together, so a fixed number of workers would have taken five times as long.
        let report = open_loop(Duration::from_millis(300), 10).await;
        assert_eq!((report.ok, report.errors, report.held), (5, 0, 0));
        assert_eq!(report.first_token.len(), 5);
        assert!(report.elapsed >= Duration::from_millis(4 * 50 + 300));
    }

    #[test]
    fn a_token_is_content_that_is_not_empty() {
        assert!(carries_text(br#"data: {"delta":{"content":"Hi"}}"#));
        assert!(carries_text(br#"data: {"delta": {"content" : " there"}}"#));
        assert!(carries_text(
            br#"data: {"delta":{"role":"assistant","content":""}}

data: {"delta":{"content":"Hi"}}"#
        ));
        assert!(!carries_text(
            br#"data: {"delta":{"role":"assistant","content":""}}"#
        ));
        assert!(!carries_text(br#"data: {"delta":{"content":null}}"#));
        assert!(!carries_text(
            br#"data: {"delta":{},"finish_reason":"stop"}"#
        ));
        assert!(!carries_text(br#"data: {"content"#));
    }

    #[tokio::test]
    async fn the_time_between_tokens_is_the_upstream_pace_and_not_the_first_token() {
        // Four tokens 100 ms apart after a first token at 50 ms: three gaps a stream,
        // each near 100 ms; the wait for the first token is not one of them.
        let report = paced_open_loop(Duration::from_millis(50), 10.0, 4, 10).await;
        assert_eq!((report.ok, report.errors), (5, 0));
        let gaps = report.between_tokens.len();
        assert!(
            (5..=15).contains(&gaps),
            "{gaps} gaps for 5 streams of 4 tokens"
        );
        let median = Duration::from_micros(report.between_tokens.value_at_quantile(0.5));
        assert!(median >= Duration::from_millis(50), "median gap {median:?}");
    }

    #[tokio::test]
    async fn an_open_loop_at_its_cap_holds_starts_back_and_says_so() {
        // Two in flight at most and each takes 300 ms: the third start (at 100 ms) and
        // every later one wait for an answer.
        let report = open_loop(Duration::from_millis(300), 2).await;
        assert_eq!((report.ok, report.errors, report.held), (5, 0, 3));
        assert!(report.elapsed >= Duration::from_millis(3 * 300));
    }
}
