//! `switchyard keys …` and `switchyard audit`: a running daemon's tenant keys and audit
//! log, through its admin API (the daemon holds the database).

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::admission::utc_text;
use crate::ctl::AdminTarget;
use crate::domain::records::AuditRecord;
use crate::say::say;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a key for a tenant; it is printed once, on standard output.
    Create {
        #[arg(long)]
        tenant: String,
        /// What the key is for, e.g. "ci".
        #[arg(long, default_value = "")]
        name: String,
        /// How long it works, e.g. "30d"; forever when left out.
        #[arg(long)]
        expires: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// List the keys made at run time (never the keys themselves).
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Stop a key at once.
    Revoke {
        /// The key's id, e.g. key_3f9a2c71.
        id: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Make a new key for the same tenant and name; the old one stops after --grace.
    Rotate {
        id: String,
        /// How long the old key keeps working, e.g. "1h"; at once when left out.
        #[arg(long)]
        grace: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
}

pub async fn keys(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create {
            tenant,
            name,
            expires,
            target,
        } => {
            let mut body = json!({ "tenant": tenant, "name": name });
            if let Some(expires) = expires {
                body["expires"] = json!(expires);
            }
            let made = target.connect()?.post("/admin/keys", &body).await?;
            announce(&made, "made");
        }
        KeyCommand::List { tenant, target } => {
            let path = match &tenant {
                Some(t) => format!("/admin/keys?tenant={t}"),
                None => "/admin/keys".to_string(),
            };
            let listed = target.connect()?.get(&path).await?;
            say!(
                "{:<14} {:<14} {:<12} {:<8} {:<20} {:<20}",
                "ID",
                "TENANT",
                "NAME",
                "STATE",
                "CREATED (UTC)",
                "EXPIRES (UTC)"
            );
            for k in listed["keys"].as_array().into_iter().flatten() {
                let time = |field: &str| k[field].as_u64().map_or("-".into(), utc_text);
                say!(
                    "{:<14} {:<14} {:<12} {:<8} {:<20} {:<20}",
                    k["id"].as_str().unwrap_or("?"),
                    k["tenant"].as_str().unwrap_or("?"),
                    k["name"].as_str().unwrap_or(""),
                    k["state"].as_str().unwrap_or("?"),
                    time("created_ms"),
                    time("expires_ms"),
                );
            }
        }
        KeyCommand::Revoke { id, target } => {
            let revoked = target
                .connect()?
                .post(&format!("/admin/keys/{id}/revoke"), &json!({}))
                .await?;
            say!(
                "{id} of {} is revoked; requests with it get 401 from now on",
                revoked["tenant"].as_str().unwrap_or("?")
            );
        }
        KeyCommand::Rotate { id, grace, target } => {
            let body = match &grace {
                Some(g) => json!({ "grace": g }),
                None => json!({}),
            };
            let made = target
                .connect()?
                .post(&format!("/admin/keys/{id}/rotate"), &body)
                .await?;
            announce(&made, "made to replace it");
            match grace {
                Some(g) => eprintln!("{id} keeps working for {g}, then stops"),
                None => eprintln!("{id} is revoked"),
            }
        }
    }
    Ok(())
}

/// The key on standard output, alone, for scripts; what it is on standard error.
fn announce(made: &Value, what: &str) {
    let expiry = made["expires_ms"].as_u64().map_or(String::new(), |at| {
        format!(", expires {} UTC", utc_text(at))
    });
    eprintln!(
        "{} {what} for {}{}{expiry}; it is shown only now, store it safely:",
        made["id"].as_str().unwrap_or("?"),
        made["tenant"].as_str().unwrap_or("?"),
        made["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(|n| format!(" ({n})"))
            .unwrap_or_default(),
    );
    say!("{}", made["key"].as_str().unwrap_or(""));
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// From this long ago ("1h", "7d") or this time in milliseconds since the epoch.
    #[arg(long, default_value = "1h")]
    since: String,
    /// Until then (same forms); now when left out.
    #[arg(long)]
    until: Option<String>,
    #[arg(long)]
    tenant: Option<String>,
    /// "request" or "operator".
    #[arg(long)]
    kind: Option<String>,
    /// A status (429), a class (5xx) or "error" (400 and above).
    #[arg(long)]
    status: Option<String>,
    /// At most this many, the newest (0: all). Default: 100 in the table, all with --json.
    #[arg(long)]
    limit: Option<usize>,
    /// One JSON record per line (JSONL), e.g. to export.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: AdminTarget,
}

pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let limit = args.limit.unwrap_or(if args.json { 0 } else { 100 });
    let mut query = vec![format!("since={}", args.since), format!("limit={limit}")];
    for (name, value) in [
        ("until", &args.until),
        ("tenant", &args.tenant),
        ("kind", &args.kind),
        ("status", &args.status),
    ] {
        if let Some(value) = value {
            query.push(format!("{name}={value}"));
        }
    }
    let reply = args
        .target
        .connect()?
        .get(&format!("/admin/audit?{}", query.join("&")))
        .await?;
    let records: Vec<AuditRecord> = serde_json::from_value(reply["records"].clone())?;
    if args.json {
        for record in &records {
            say!("{}", serde_json::to_string(record)?);
        }
        return Ok(());
    }
    say!(
        "{:<19} {:<8} {:<12} {:>6} {:<14} {:<10} {:>11} {:>7}  DETAIL",
        "TIME (UTC)",
        "KIND",
        "TENANT",
        "STATUS",
        "MODEL",
        "REGION",
        "TOKENS",
        "MS"
    );
    for r in &records {
        let kind = match r.kind {
            Some(crate::domain::records::AuditKind::Operator) => "operator",
            Some(crate::domain::records::AuditKind::Tool) => "tool",
            _ => "request",
        };
        let tokens = match (r.prompt_tokens, r.completion_tokens) {
            (Some(p), Some(c)) => format!(
                "{p}+{c}{}",
                if r.estimated == Some(true) { "~" } else { "" }
            ),
            _ => "-".into(),
        };
        let detail = match kind {
            "operator" => format!(
                "{}: {}",
                r.actor.as_deref().unwrap_or("?"),
                r.outcome.as_deref().unwrap_or("")
            ),
            _ => r
                .error
                .clone()
                .or_else(|| {
                    r.cache
                        .as_ref()
                        .filter(|c| *c == "hit")
                        .map(|_| "cache hit".into())
                })
                .or_else(|| r.route.as_deref().map(str::to_owned))
                .unwrap_or_default(),
        };
        say!(
            "{:<19} {:<8} {:<12} {:>6} {:<14} {:<10} {:>11} {:>7}  {detail}",
            utc_text(r.at_ms),
            kind,
            r.tenant.as_deref().unwrap_or("-"),
            r.status.map_or("-".into(), |s| s.to_string()),
            r.model.as_deref().unwrap_or("-"),
            r.region.as_deref().unwrap_or("-"),
            tokens,
            r.latency_ms.map_or("-".into(), |ms| ms.to_string()),
        );
    }
    if limit > 0 && records.len() == limit {
        say!("(the newest {limit} shown; --limit N or --limit 0 for more)");
    }
    Ok(())
}
