//! The `switchyard` command line: parses arguments, sets up logging and a runtime, and
//! hands over to the module that does the work. Errors end here, printed for a person.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, parse_duration};
use crate::daemon::{Daemon, shutdown_signal};
use crate::mock::{Knobs, MockDialect, MockUpstream};
use crate::say::say;

#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about = "An OpenAI-compatible LLM gateway", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway daemon.
    Serve {
        /// The TOML configuration file.
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Run the daemon with the operations console in this terminal (logs go to files).
    Up {
        /// The TOML configuration file.
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
        /// Show, never act.
        #[arg(long)]
        read_only: bool,
        /// Who acts, as audit records name them (default: $USER).
        #[arg(long, env = "SWITCHYARD_OPERATOR")]
        operator: Option<String>,
    },
    /// Attach the operations console to a running daemon's admin API.
    Console {
        /// The admin API's URL, e.g. http://127.0.0.1:8081 or https://gateway:8081.
        #[arg(
            long,
            env = "SWITCHYARD_ADMIN_URL",
            default_value = "http://127.0.0.1:8081"
        )]
        connect: String,
        /// The admin token (or set SWITCHYARD_ADMIN_TOKEN).
        #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
        /// Trust an https:// admin API only if this CA (PEM) signed its certificate.
        #[arg(long, env = "SWITCHYARD_ADMIN_CA")]
        ca_file: Option<PathBuf>,
        /// Show, never act.
        #[arg(long)]
        read_only: bool,
        /// Who acts, as audit records name them (default: $USER).
        #[arg(long, env = "SWITCHYARD_OPERATOR")]
        operator: Option<String>,
    },
    /// Everything embedded: simulated regions, tenants, traffic and outages, with the console.
    Demo(crate::demo::DemoArgs),
    /// Run a simulated upstream: OpenAI-compatible at /v1/… (the Responses API with
    /// stored responses included), Azure OpenAI at /openai/deployments/…, Anthropic's
    /// Messages API at /v1/messages.
    Mock(MockArgs),
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Work with tenant API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Operate a running daemon through its admin API.
    Ctl(crate::ctl::CtlArgs),
    /// Read a running daemon's audit log: requests and operator actions.
    Audit(crate::records::AuditArgs),
    /// Measure the gateway's overhead: the same load straight to a mock, then through the gateway.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and summarise it.
    Check { file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print the `sha256:...` hash of a key, for a tenant's `keys` in the config.
    /// Reads the key from standard input when it is not given.
    Hash { key: Option<String> },
    #[command(flatten)]
    Managed(crate::records::KeyCommand),
}

#[derive(Debug, Args)]
struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9101")]
    listen: SocketAddr,
    /// Delay before the first token, e.g. "150ms".
    #[arg(long, default_value = "150ms", value_parser = parse_duration)]
    ttft: Duration,
    /// Token pacing; 0 sends as fast as possible.
    #[arg(long, default_value_t = 50.0)]
    tokens_per_sec: f64,
    /// Answer length when max_tokens does not cut it shorter.
    #[arg(long, default_value_t = 32)]
    answer_tokens: u32,
    /// Share of requests (0 to 1) answered with --error-status.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Status of injected errors; 429 comes with retry-after.
    #[arg(long, default_value_t = 500)]
    error_status: u16,
    /// retry-after seconds sent with injected 429s.
    #[arg(long, default_value_t = 1)]
    retry_after: u64,
    /// Cut every stream after this many tokens.
    #[arg(long)]
    fail_after_tokens: Option<u32>,
    /// Answer embeddings as floats even when base64 is asked for.
    #[arg(long)]
    embeddings_floats_only: bool,
    /// Drop a kept-alive connection when a second request arrives on it.
    #[arg(long)]
    drop_reused_connections: bool,
    /// Go silent (connection kept open) after this many tokens of every stream.
    #[arg(long)]
    hang_after_tokens: Option<u32>,
    /// How streams are framed, to stand in for other servers: any of `spaced` (Python's
    /// JSON spacing), `crlf`, `keepalive` (comments between events), comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = ["spaced", "crlf", "keepalive"])]
    wire: Vec<String>,
    /// Write streams in pieces of this many bytes, split anywhere (0: whole events).
    #[arg(long, default_value_t = 0)]
    wire_chunk_bytes: usize,
    /// Answer every streamed chat request with this recorded stream, byte for byte.
    #[arg(long)]
    transcript: Option<std::path::PathBuf>,
    /// Models served (comma-separated); others get 404 model_not_found.
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Environment variable holding a key that clients must present.
    #[arg(long)]
    api_key_env: Option<String>,
    /// Answer only one API, as a real server of it would (others get its 404):
    /// `openai` (/v1/…), `azure` (/openai/deployments/…) or `anthropic` (/v1/messages).
    /// Default: all of them.
    #[arg(long, value_parser = crate::mock::MockDialect::NAMES)]
    dialect: Option<String>,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Every command's HTTPS clients and servers use the same TLS provider.
    crate::tls::install_crypto();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Mock(args) => mock(args),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => check(file),
        Command::Keys {
            command: KeysCommand::Hash { key },
        } => hash(key),
        Command::Keys {
            command: KeysCommand::Managed(command),
        } => runtime()?.block_on(crate::records::keys(command)),
        Command::Audit(args) => runtime()?.block_on(crate::records::audit(args)),
        Command::Ctl(args) => runtime()?.block_on(crate::ctl::run(args)),
        Command::Up {
            config,
            read_only,
            operator,
        } => up(config, read_only, crate::ctl::operator_name(operator)),
        Command::Console {
            connect,
            token,
            ca_file,
            read_only,
            operator,
        } => {
            let operator = crate::ctl::operator_name(operator);
            let control =
                crate::control::Remote::new(&connect, &token, &operator, ca_file.as_deref())
                    .map_err(anyhow::Error::msg)?;
            runtime()?.block_on(crate::console::run(std::sync::Arc::new(control), read_only))?;
            Ok(())
        }
        Command::Demo(args) => runtime()?.block_on(crate::demo::run(args)),
        Command::Bench(args) => {
            let _logs = crate::telemetry::init_stderr("warn");
            runtime()?.block_on(crate::bench::run(args))
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path).with_context(|| format!("{} is not a valid configuration", path.display()))
}

fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = load(&path)?;
    let _logs = crate::telemetry::init(&config.server.data_dir, true)?;
    runtime()?.block_on(async {
        let daemon = Daemon::start(config).await?;
        shutdown_signal().await;
        tracing::info!("shutting down");
        daemon.shutdown().await;
        Ok(())
    })
}

fn up(path: PathBuf, read_only: bool, operator: String) -> anyhow::Result<()> {
    let config = load(&path)?;
    // The console owns the terminal: logs go to files only.
    let _logs = crate::telemetry::init(&config.server.data_dir, false)?;
    runtime()?.block_on(async {
        let daemon = Daemon::start(config).await?;
        // Quitting the console asks, then stops the daemon while the console shows the
        // requests and streams still finishing; it leaves once the daemon has stopped.
        let requested = std::sync::Arc::new(tokio::sync::Notify::new());
        let (done, stopped) = tokio::sync::watch::channel(false);
        let control = crate::control::InProcess::new(daemon.gateway().clone(), &operator)
            .stopping_with(crate::control::Stopper {
                requested: requested.clone(),
                done: stopped,
            });
        let console = async {
            let result = crate::console::run(std::sync::Arc::new(control), read_only).await;
            // Quit without the question (a signal, or leaving during the stop): the
            // daemon stops all the same.
            requested.notify_one();
            result
        };
        let stop = async {
            requested.notified().await;
            daemon.shutdown().await;
            done.send_replace(true);
        };
        let (result, ()) = tokio::join!(console, stop);
        result?;
        Ok(())
    })
}

fn mock(args: MockArgs) -> anyhow::Result<()> {
    let _logs = crate::telemetry::init_stderr("info");
    let mut builder = MockUpstream::builder().knobs(Knobs {
        ttft_ms: args.ttft.as_millis() as u64,
        tokens_per_sec: args.tokens_per_sec,
        answer_tokens: args.answer_tokens,
        error_rate: args.error_rate.clamp(0.0, 1.0),
        error_status: args.error_status,
        retry_after_secs: args.retry_after,
        fail_after_tokens: args.fail_after_tokens,
        embeddings_floats_only: args.embeddings_floats_only,
        drop_reused_connections: args.drop_reused_connections,
        hang_after_tokens: args.hang_after_tokens,
        wire_spaced: args.wire.iter().any(|w| w == "spaced"),
        wire_crlf: args.wire.iter().any(|w| w == "crlf"),
        wire_keepalive: args.wire.iter().any(|w| w == "keepalive"),
        wire_chunk_bytes: args.wire_chunk_bytes,
        ..Knobs::default()
    });
    if let Some(path) = &args.transcript {
        let transcript = std::fs::read(path)
            .with_context(|| format!("--transcript: cannot read {}", path.display()))?;
        builder = builder.transcript(transcript);
    }
    if let Some(models) = args.models {
        builder = builder.models(models);
    }
    if let Some(dialect) = args.dialect.as_deref().and_then(MockDialect::named) {
        builder = builder.dialect(dialect);
    }
    if let Some(var) = args.api_key_env {
        let key = std::env::var(&var)
            .with_context(|| format!("--api-key-env: environment variable {var} is not set"))?;
        builder = builder.api_key(key);
    }
    runtime()?.block_on(async {
        let mock = builder
            .spawn(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        tracing::info!(url = %mock.url(), "mock upstream is listening; control it at /_mock/stats, /_mock/knobs, /_mock/outage");
        shutdown_signal().await;
        mock.shutdown();
        Ok(())
    })
}

fn check(path: PathBuf) -> anyhow::Result<()> {
    let config = load(&path)?;
    // The certificates are read as the daemon would read them.
    for (files, prefix) in [
        (&config.server.tls, "server.tls"),
        (&config.admin.tls, "server.admin_tls"),
    ] {
        if let Some(files) = files {
            crate::tls::acceptor(files, prefix)?;
        }
    }
    let scheme = |tls: &Option<crate::tls::TlsFiles>| match tls {
        Some(files) => format!("https://, certificate {}", files.cert.display()),
        None => "http://".to_string(),
    };
    let instances: Vec<_> = config.regions.iter().flat_map(|r| &r.instances).collect();
    say!("{} is valid:", path.display());
    say!(
        "  listen    {} ({}; {} connection workers; data in {})",
        config.server.listen,
        scheme(&config.server.tls),
        config.server.workers,
        config.server.data_dir.display()
    );
    for region in &config.regions {
        let names: Vec<_> = region.instances.iter().map(|i| i.name.as_str()).collect();
        say!(
            "  region    {} (order {}): {}",
            region.name,
            region.order,
            names.join(", ")
        );
    }
    say!(
        "  admin     {} ({}; token from {})",
        config.admin.listen,
        scheme(&config.admin.tls),
        config.admin.token_env
    );
    say!("  seats     {} upstream at once", config.seats);
    for tier in &config.tiers {
        say!(
            "  tier      {}: share {}, queue {} for {:?}, limits {}",
            tier.name,
            tier.share,
            tier.max_queue,
            tier.max_wait,
            describe_limits(&tier.limits)
        );
    }
    for tenant in &config.tenants {
        say!(
            "  tenant    {} ({}, {} key{})",
            tenant.name,
            tenant.tier,
            tenant.keys.len(),
            if tenant.keys.len() == 1 { "" } else { "s" }
        );
    }
    for model in &config.models {
        let regions: Vec<_> = model
            .deployments
            .iter()
            .map(|d| format!("{}→{}", d.region, d.upstream_model))
            .collect();
        say!(
            "  model     {} ({}): {}",
            model.alias,
            model.kind,
            regions.join(", ")
        );
    }
    let missing: Vec<_> = instances
        .iter()
        .filter_map(|i| i.api_key_env.as_ref().map(|v| (i, v)))
        .filter(|(_, var)| std::env::var_os(var).is_none())
        .collect();
    for (instance, var) in &missing {
        say!(
            "  warning   instance {}: {var} is not set in this environment; `serve` will refuse to start without it",
            instance.name
        );
    }
    Ok(())
}

fn describe_limits(limits: &crate::domain::Limits) -> String {
    let set: Vec<String> = [
        ("rpm", limits.rpm.map(|v| v.to_string())),
        ("tpm", limits.tpm.map(|v| v.to_string())),
        ("concurrency", limits.max_concurrency.map(|v| v.to_string())),
        ("daily tokens", limits.daily_tokens.map(|v| v.to_string())),
        (
            "monthly tokens",
            limits.monthly_tokens.map(|v| v.to_string()),
        ),
        ("daily $", limits.daily_usd.map(|v| v.to_string())),
        ("monthly $", limits.monthly_usd.map(|v| v.to_string())),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some(format!("{name} {}", value?)))
    .collect();
    if set.is_empty() {
        "none".into()
    } else {
        set.join(", ")
    }
}

fn hash(key: Option<String>) -> anyhow::Result<()> {
    let key = match key {
        Some(key) => key,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the key from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    anyhow::ensure!(!key.is_empty(), "the key is empty");
    say!("{}", crate::auth::hash_key(&key));
    Ok(())
}
