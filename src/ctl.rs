//! `switchyard ctl`: operator commands against a running daemon's admin API, for scripts
//! and terminals. It finds the daemon through `--url`, `SWITCHYARD_ADMIN_URL` or the
//! config file's `server.admin_listen`, and the token through `--token` or the variable
//! the config names (`SWITCHYARD_ADMIN_TOKEN` by default).

use std::path::PathBuf;

use crate::say::say;
use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::admin::client::AdminClient;
use crate::config::Config;
use crate::domain::snapshot::CacheView;

/// Where a running daemon's admin API is, and the token for it.
#[derive(Debug, Args)]
pub struct AdminTarget {
    /// The admin API's URL, e.g. http://127.0.0.1:8081.
    #[arg(long, env = "SWITCHYARD_ADMIN_URL", global = true)]
    url: Option<String>,
    /// The admin token; prefer the environment variable, which `ps` does not show.
    #[arg(long, global = true)]
    token: Option<String>,
    /// Configuration file to take the admin address and token variable from.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Trust an https:// admin API only if this CA (PEM) signed its certificate.
    #[arg(long, env = "SWITCHYARD_ADMIN_CA", global = true)]
    ca_file: Option<PathBuf>,
    /// Who acts, as audit records name them (default: $USER).
    #[arg(long, env = "SWITCHYARD_OPERATOR", global = true)]
    operator: Option<String>,
}

impl AdminTarget {
    /// A client for the daemon, found through --url, SWITCHYARD_ADMIN_URL or the config
    /// file's admin_listen, with the token from --token or the config's variable.
    pub fn connect(&self) -> anyhow::Result<AdminClient> {
        let config = match &self.config {
            Some(path) => Some(
                Config::load(path)
                    .with_context(|| format!("{} is not a valid configuration", path.display()))?,
            ),
            None => None,
        };
        let url = self
            .url
            .clone()
            .or_else(|| {
                config.as_ref().map(|c| {
                    let scheme = if c.admin.tls.is_some() {
                        "https"
                    } else {
                        "http"
                    };
                    format!("{scheme}://{}", c.admin.listen)
                })
            })
            .unwrap_or_else(|| "http://127.0.0.1:8081".to_string());
        let token_env = config
            .as_ref()
            .map(|c| c.admin.token_env.clone())
            .unwrap_or_else(|| "SWITCHYARD_ADMIN_TOKEN".to_string());
        let token = self
            .token
            .clone()
            .or_else(|| std::env::var(&token_env).ok())
            .filter(|t| !t.is_empty())
            .with_context(|| format!("no admin token: set {token_env} or pass --token"))?;
        let operator = operator_name(self.operator.clone());
        Ok(AdminClient::new(
            &url,
            &token,
            &operator,
            self.ca_file.as_deref(),
        )?)
    }
}

/// The person acting, for audit records: `--operator`, else `$USER`, else "operator".
pub fn operator_name(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("USER").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "operator".into())
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    #[command(flatten)]
    target: AdminTarget,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// List tenants with their tier, limits and usage.
    Tenants,
    /// Show one tenant in full (JSON).
    Tenant { name: String },
    /// Show the priority levels' queues.
    Queues,
    /// Move a tenant to another tier; its waiting requests move too.
    Tier { tenant: String, tier: String },
    /// Change a tenant's limits (only the ones given).
    Limits {
        tenant: String,
        #[arg(long)]
        rpm: Option<u64>,
        #[arg(long)]
        tpm: Option<u64>,
        #[arg(long)]
        max_concurrency: Option<u32>,
        #[arg(long)]
        daily_tokens: Option<u64>,
        #[arg(long)]
        monthly_tokens: Option<u64>,
        #[arg(long)]
        daily_usd: Option<f64>,
        #[arg(long)]
        monthly_usd: Option<f64>,
        #[arg(long)]
        max_tokens_cap: Option<u64>,
        /// Batch lines running at once.
        #[arg(long)]
        batch_concurrency: Option<u32>,
        /// Tokens batch lines may use per UTC day.
        #[arg(long)]
        batch_daily_tokens: Option<u64>,
    },
    /// Refuse a tenant's requests, the waiting ones included, until it is resumed.
    Pause { tenant: String },
    /// Let a paused tenant's requests in again.
    Resume { tenant: String },
    /// Forget what a tenant spent this day and month.
    ResetBudget { tenant: String },
    /// Show regions and instances: health, ejections, in flight, latency.
    Regions,
    /// Drain a region (or, with --instance, one instance): no new requests; what still
    /// runs at the deadline is cut.
    Drain {
        /// Region name, or instance name with --instance.
        target: String,
        #[arg(long)]
        instance: bool,
        /// When to cut what still runs, e.g. "60s" (default: routing.drain_deadline).
        #[arg(long)]
        deadline: Option<String>,
    },
    /// End a drain at once.
    Undrain {
        target: String,
        #[arg(long)]
        instance: bool,
    },
    /// Take an instance out of rotation until restored.
    Eject { instance: String },
    /// Return an ejected instance (manually or automatically ejected) to rotation.
    Restore { instance: String },
    /// List live streams.
    Streams,
    /// End a live stream (its client gets an SSE error event).
    Kill { stream: String },
    /// Print the whole state as JSON (what the console shows).
    Snapshot,
    /// Print the recent events: routing changes and operator actions.
    Events,
    /// List batch jobs with their progress (`ctl batches cancel ID` stops one).
    Batches {
        #[command(subcommand)]
        command: Option<BatchesCommand>,
    },
    /// List flow runs: every tenant's, newest first, with the step each is at.
    Flows,
    /// Show the response cache (`ctl cache purge [--tenant NAME]` empties it).
    Cache {
        #[command(subcommand)]
        command: Option<CacheCommand>,
    },
}

#[derive(Debug, Subcommand)]
enum BatchesCommand {
    /// Stop a batch: lines in flight finish, its results so far are kept.
    Cancel { id: String },
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// Drop kept answers: one tenant's, or all of them.
    Purge {
        #[arg(long)]
        tenant: Option<String>,
    },
}

pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let client = args.target.connect()?;

    let tenant_path = |name: &str, action: &str| format!("/admin/tenants/{name}/{action}");
    match args.command {
        CtlCommand::Tenants => print_tenants(&client.get("/admin/tenants").await?),
        CtlCommand::Tenant { name } => {
            let view = client.get(&format!("/admin/tenants/{name}")).await?;
            say!("{}", serde_json::to_string_pretty(&view)?);
        }
        CtlCommand::Queues => print_queues(&client.get("/admin/queues").await?),
        CtlCommand::Tier { tenant, tier } => {
            let view = client
                .post(&tenant_path(&tenant, "tier"), &json!({ "tier": tier }))
                .await?;
            say!(
                "{tenant} is now in tier {}",
                view["tier"].as_str().unwrap_or("?")
            );
        }
        CtlCommand::Limits {
            tenant,
            rpm,
            tpm,
            max_concurrency,
            daily_tokens,
            monthly_tokens,
            daily_usd,
            monthly_usd,
            max_tokens_cap,
            batch_concurrency,
            batch_daily_tokens,
        } => {
            let mut change = serde_json::Map::new();
            let mut set = |key: &str, value: Option<Value>| {
                if let Some(v) = value {
                    change.insert(key.to_string(), v);
                }
            };
            set("rpm", rpm.map(Value::from));
            set("tpm", tpm.map(Value::from));
            set("max_concurrency", max_concurrency.map(Value::from));
            set("daily_tokens", daily_tokens.map(Value::from));
            set("monthly_tokens", monthly_tokens.map(Value::from));
            set("daily_usd", daily_usd.map(Value::from));
            set("monthly_usd", monthly_usd.map(Value::from));
            set("max_tokens_cap", max_tokens_cap.map(Value::from));
            set("batch_concurrency", batch_concurrency.map(Value::from));
            set("batch_daily_tokens", batch_daily_tokens.map(Value::from));
            anyhow::ensure!(
                !change.is_empty(),
                "give at least one limit, e.g. --rpm 600"
            );
            let view = client
                .post(&tenant_path(&tenant, "limits"), &Value::Object(change))
                .await?;
            say!(
                "{tenant}'s limits now: {}",
                serde_json::to_string(&view["limits"])?
            );
        }
        CtlCommand::Pause { tenant } => {
            client
                .post(&tenant_path(&tenant, "pause"), &json!({}))
                .await?;
            say!(
                "{tenant} is paused; its requests get 403 tenant_paused until `ctl resume {tenant}`"
            );
        }
        CtlCommand::Resume { tenant } => {
            client
                .post(&tenant_path(&tenant, "resume"), &json!({}))
                .await?;
            say!("{tenant} is resumed");
        }
        CtlCommand::Regions => print_regions(&client.get("/admin/regions").await?),
        CtlCommand::Drain {
            target,
            instance,
            deadline,
        } => {
            let kind = if instance { "instances" } else { "regions" };
            let body = match &deadline {
                Some(d) => json!({ "deadline": d }),
                None => json!({}),
            };
            let reply = client
                .post(&format!("/admin/{kind}/{target}/drain"), &body)
                .await?;
            say!(
                "{target} is draining: no new requests; {} in flight finish or are cut at the deadline",
                reply["in_flight"]
            );
        }
        CtlCommand::Undrain { target, instance } => {
            let kind = if instance { "instances" } else { "regions" };
            client
                .post(&format!("/admin/{kind}/{target}/undrain"), &json!({}))
                .await?;
            say!("{target} takes requests again");
        }
        CtlCommand::Eject { instance } => {
            client
                .post(&format!("/admin/instances/{instance}/eject"), &json!({}))
                .await?;
            say!("{instance} is out of rotation until `ctl restore {instance}`");
        }
        CtlCommand::Restore { instance } => {
            client
                .post(&format!("/admin/instances/{instance}/restore"), &json!({}))
                .await?;
            say!("{instance} is back in rotation");
        }
        CtlCommand::Streams => {
            let snapshot = client.get("/admin/snapshot").await?;
            say!(
                "{:<22} {:<12} {:<14} {:<24} {:>7} {:>7}",
                "STREAM",
                "TENANT",
                "MODEL",
                "WHERE",
                "TOKENS",
                "AGE"
            );
            for s in snapshot["streams"].as_array().into_iter().flatten() {
                say!(
                    "{:<22} {:<12} {:<14} {:<24} {:>7} {:>6.1}s",
                    s["id"].as_str().unwrap_or("?"),
                    s["tenant"].as_str().unwrap_or("?"),
                    s["model"].as_str().unwrap_or("?"),
                    format!(
                        "{}/{}",
                        s["region"].as_str().unwrap_or("?"),
                        s["instance"].as_str().unwrap_or("?")
                    ),
                    s["tokens"],
                    s["age_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                );
            }
        }
        CtlCommand::Kill { stream } => {
            let reply = client
                .post(
                    "/admin/actions",
                    &json!({ "action": "kill_stream", "id": stream }),
                )
                .await?;
            say!("{}", reply["ok"].as_str().unwrap_or("done"));
        }
        CtlCommand::Snapshot => {
            let snapshot = client.get("/admin/snapshot").await?;
            say!("{}", serde_json::to_string_pretty(&snapshot)?);
        }
        CtlCommand::Events => {
            let snapshot = client.get("/admin/snapshot").await?;
            for e in snapshot["events"].as_array().into_iter().flatten() {
                let secs = e["at_ms"].as_u64().unwrap_or(0) / 1000;
                say!(
                    "{:02}:{:02}:{:02} {:<9} {}{}",
                    (secs / 3600) % 24,
                    (secs / 60) % 60,
                    secs % 60,
                    e["kind"].as_str().unwrap_or("?"),
                    e["actor"]
                        .as_str()
                        .map(|a| format!("{a}: "))
                        .unwrap_or_default(),
                    e["message"].as_str().unwrap_or("")
                );
            }
        }
        CtlCommand::Batches { command: None } => {
            print_batches(&client.get("/admin/batches").await?);
        }
        CtlCommand::Batches {
            command: Some(BatchesCommand::Cancel { id }),
        } => {
            let reply = client
                .post(&format!("/admin/batches/{id}/cancel"), &json!({}))
                .await?;
            say!(
                "batch {id} is {}",
                reply["batch"]["status"].as_str().unwrap_or("?")
            );
        }
        CtlCommand::Flows => print_flow_runs(&client.get("/admin/flows/runs").await?),
        CtlCommand::Cache { command: None } => {
            print_cache(&serde_json::from_value(client.get("/admin/cache").await?)?);
        }
        CtlCommand::Cache {
            command: Some(CacheCommand::Purge { tenant }),
        } => {
            let body = match &tenant {
                Some(tenant) => json!({ "tenant": tenant }),
                None => json!({}),
            };
            let reply = client.post("/admin/cache/purge", &body).await?;
            say!("{}", reply["ok"].as_str().unwrap_or("done"));
        }
        CtlCommand::ResetBudget { tenant } => {
            client
                .post(&tenant_path(&tenant, "reset-budget"), &json!({}))
                .await?;
            say!("{tenant}'s daily and monthly usage is reset");
        }
    }
    Ok(())
}

fn print_flow_runs(view: &Value) {
    let runs = view["runs"].as_array().cloned().unwrap_or_default();
    if runs.is_empty() {
        say!("no flow runs");
        return;
    }
    let row = |cells: [&str; 6]| {
        format!(
            "{:<28} {:<12} {:<14} {:<10} {:>5} {:>8}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]
        )
    };
    say!(
        "{}",
        row(["RUN", "TENANT", "FLOW", "STATUS", "STEPS", "TOKENS"]).trim_end()
    );
    for r in &runs {
        let text = |name: &str| r[name].as_str().unwrap_or("?").to_string();
        let count = |name: &str| r[name].as_u64().unwrap_or(0);
        let steps = format!("{}/{}", count("steps_done"), count("steps"));
        let error = match r["error"]["code"].as_str() {
            Some(code) => format!(
                "{code} at {}: {}",
                r["error"]["step"].as_str().unwrap_or("?"),
                r["error"]["message"].as_str().unwrap_or("")
            ),
            None => String::new(),
        };
        let line = row([
            &text("id"),
            &text("tenant"),
            &text("flow"),
            &text("status"),
            &steps,
            &count("tokens").to_string(),
        ]);
        say!("{}", format!("{line}  {error}").trim_end());
    }
}

fn print_batches(view: &Value) {
    let batches = view["batches"].as_array().cloned().unwrap_or_default();
    if batches.is_empty() {
        say!("no batches");
        return;
    }
    let row = |cells: [&str; 7]| {
        format!(
            "{:<31} {:<12} {:<11} {:>13} {:>7} {:>8} {:>8}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]
        )
    };
    say!(
        "{}",
        row([
            "BATCH", "TENANT", "STATUS", "DONE", "FAILED", "LINES/S", "ETA"
        ])
    );
    for b in &batches {
        let count = |name: &str| b[name].as_u64().unwrap_or(0);
        let done = format!(
            "{}/{}",
            count("completed") + count("failed"),
            count("total")
        );
        let rate = b["lines_per_sec"]
            .as_f64()
            .map_or("-".to_string(), |r| format!("{r:.1}"));
        let eta = b["eta_secs"]
            .as_u64()
            .map_or("-".to_string(), |s| format!("{s}s"));
        let failed = count("failed").to_string();
        let text = |name: &str| b[name].as_str().unwrap_or("?").to_string();
        let (id, tenant, status) = (text("id"), text("tenant"), text("status"));
        say!(
            "{}",
            row([&id, &tenant, &status, &done, &failed, &rate, &eta])
        );
    }
}

fn print_cache(view: &CacheView) {
    if !view.enabled {
        say!("the cache is off (cache.enabled = false)");
    }
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    say!(
        "{} kept, {:.1} of {:.1} MiB",
        crate::domain::snapshot::answers(view.entries),
        mib(view.bytes),
        mib(view.max_bytes)
    );
    let ratio = view
        .hit_ratio()
        .map_or("-".into(), |r| format!("{:.0}%", r * 100.0));
    say!(
        "hits {}, coalesced {}, misses {} (hit ratio {ratio}); bypassed {}; evicted {}, expired {}",
        view.hits,
        view.coalesced,
        view.misses,
        view.bypasses,
        view.evictions,
        view.expirations
    );
    say!(
        "{:<20} {:>8} {:>12} {:>8}",
        "SCOPE",
        "ANSWERS",
        "BYTES",
        "HITS"
    );
    for s in &view.scopes {
        say!(
            "{:<20} {:>8} {:>12} {:>8}",
            s.scope,
            s.entries,
            s.bytes,
            s.hits
        );
    }
}

fn limit(available: &Value, limit: &Value) -> String {
    match (available.as_u64(), limit.as_u64()) {
        (Some(a), Some(l)) => format!("{a}/{l}"),
        _ => "-".into(),
    }
}

fn print_tenants(reply: &Value) {
    say!(
        "{:<16} {:<12} {:<6} {:>9} {:>15} {:>19} {:>12} {:>12}",
        "TENANT",
        "TIER",
        "PAUSED",
        "IN-FLIGHT",
        "RPM LEFT/LIMIT",
        "TPM LEFT/LIMIT",
        "DAY TOKENS",
        "MONTH TOKENS"
    );
    for t in reply["tenants"].as_array().into_iter().flatten() {
        say!(
            "{:<16} {:<12} {:<6} {:>9} {:>15} {:>19} {:>12} {:>12}",
            t["name"].as_str().unwrap_or("?"),
            t["tier"].as_str().unwrap_or("?"),
            if t["paused"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            t["in_flight"],
            limit(&t["requests_available"], &t["limits"]["rpm"]),
            limit(&t["tokens_available"], &t["limits"]["tpm"]),
            t["day"]["tokens"],
            t["month"]["tokens"],
        );
    }
}

fn print_regions(reply: &Value) {
    say!(
        "{:<12} {:<10} {:<16} {:<20} {:>9} {:>11} {:>9}",
        "REGION",
        "STATE",
        "INSTANCE",
        "HEALTH",
        "IN-FLIGHT",
        "LATENCY",
        "EJECTIONS"
    );
    for r in reply["regions"].as_array().into_iter().flatten() {
        for (n, i) in r["instances"].as_array().into_iter().flatten().enumerate() {
            let (region, state) = if n == 0 {
                (
                    r["name"].as_str().unwrap_or("?"),
                    r["state"].as_str().unwrap_or("?"),
                )
            } else {
                ("", "")
            };
            say!(
                "{:<12} {:<10} {:<16} {:<20} {:>9} {:>9.1}ms {:>9}",
                region,
                state,
                i["name"].as_str().unwrap_or("?"),
                i["health"]["state"].as_str().unwrap_or("?"),
                i["in_flight"],
                i["latency_ms"].as_f64().unwrap_or(0.0),
                i["health"]["ejections"],
            );
        }
    }
}

fn print_queues(reply: &Value) {
    say!(
        "{:<12} {:>5} {:>6} {:>7} {:>9} {:>7} {:>12} {:>11}",
        "TIER",
        "SHARE",
        "SEATS",
        "IN-USE",
        "BORROWED",
        "QUEUED",
        "OLDEST WAIT",
        "DISPATCHED"
    );
    for l in reply["levels"].as_array().into_iter().flatten() {
        say!(
            "{:<12} {:>5} {:>6} {:>7} {:>9} {:>7} {:>10}ms {:>11}",
            l["tier"].as_str().unwrap_or("?"),
            l["share"],
            l["seats"],
            l["in_use"],
            l["borrowed"],
            l["queued"],
            l["oldest_wait_ms"],
            l["dispatched"],
        );
    }
}
