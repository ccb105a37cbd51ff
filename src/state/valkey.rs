//! The shared store's wire side: one connection (multiplexed, reconnected when lost)
//! to Valkey or Redis, and the lease script (`lease.lua`) run by its SHA.
//!
//! Keys are `{prefix:tenant}:...`: the braces are a hash tag, so every key of one
//! tenant lives in one slot and one script may touch them all on Valkey Cluster too.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::admission::lease::{Answer, Ask, Cluster, Shortage};
use crate::domain::period::PeriodKey;
use crate::domain::snapshot::ReplicaView;

/// How long one round trip may take before the store counts as unreachable.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(500);

/// The life of a day's key, and of a month's: past their period, with a margin.
const DAY_KEY_SECS: u64 = 2 * 86_400;
const MONTH_KEY_SECS: u64 = 40 * 86_400;

pub struct Valkey {
    connection: ConnectionManager,
    lease: redis::Script,
    replicas: redis::Script,
    prefix: String,
}

impl Valkey {
    /// Connects to `url` (`redis://host:port/db`), or says why it could not.
    pub async fn connect(url: &str, prefix: &str) -> Result<Valkey, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("{url} is not a store URL: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(ANSWER_TIMEOUT))
            .set_number_of_retries(1);
        let connection = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| format!("the shared store at {url} could not be reached: {e}"))?;
        Ok(Valkey {
            connection,
            lease: redis::Script::new(include_str!("lease.lua")),
            replicas: redis::Script::new(include_str!("replicas.lua")),
            prefix: prefix.to_string(),
        })
    }

    fn key(&self, tenant: &str, rest: &str) -> String {
        format!("{{{}:{tenant}}}:{rest}", self.prefix)
    }

    /// Runs the lease script for `ask` as `replica`: one round trip.
    pub async fn lease(
        &self,
        replica: &str,
        ask: &Ask,
        hold_ttl: Duration,
    ) -> Result<Answer, String> {
        let period = |key: PeriodKey| match key {
            PeriodKey::Day(day) => format!("day:{day}"),
            PeriodKey::Month(month) => format!("month:{month}"),
        };
        let budget = |limit: Option<f64>| limit.unwrap_or(-1.0);
        let mut invocation = self.lease.prepare_invoke();
        invocation
            .key(self.key(&ask.tenant, "rates"))
            .key(self.key(&ask.tenant, &period(ask.day)))
            .key(self.key(&ask.tenant, &period(ask.month)))
            .arg(replica)
            .arg(ask.rpm)
            .arg(ask.tpm)
            .arg(ask.requests_back)
            .arg(ask.tokens_back)
            .arg(ask.requests.min)
            .arg(ask.requests.want)
            .arg(ask.tokens.min)
            .arg(ask.tokens.want)
            .arg(budget(ask.day_tokens.map(|t| t as f64)))
            .arg(budget(ask.day_usd))
            .arg(budget(ask.month_tokens.map(|t| t as f64)))
            .arg(budget(ask.month_usd))
            .arg(ask.spent_day.0)
            .arg(ask.spent_day.1)
            .arg(ask.spent_month.0)
            .arg(ask.spent_month.1)
            .arg(ask.held_tokens.min)
            .arg(ask.held_tokens.want)
            .arg(ask.held_usd.min)
            .arg(ask.held_usd.want)
            .arg(hold_ttl.as_millis() as u64)
            .arg(DAY_KEY_SECS)
            .arg(MONTH_KEY_SECS);
        let fields = self.run(&invocation).await?;
        parse(&fields)
    }

    /// `replica`'s heartbeat, telling `about` itself: every replica heard from within
    /// `keep`, itself included.
    pub async fn heartbeat(
        &self,
        replica: &str,
        about: &serde_json::Value,
        keep: Duration,
    ) -> Result<Vec<ReplicaView>, String> {
        let mut invocation = self.replicas.prepare_invoke();
        invocation
            .key(format!("{{{}}}:replicas", self.prefix))
            .arg(replica)
            .arg(about.to_string())
            .arg(keep.as_millis() as u64);
        let fields = self.run(&invocation).await?;
        let now: u64 = fields
            .first()
            .and_then(|n| n.parse().ok())
            .ok_or("the shared store's heartbeat answer is not understood")?;
        let mut heard = Vec::new();
        for pair in fields[1..].chunks_exact(2) {
            let (at, about) = pair[1].split_once(' ').unwrap_or((&pair[1], "null"));
            heard.push(ReplicaView {
                id: pair[0].clone(),
                silent_ms: now.saturating_sub(at.parse().unwrap_or(0)),
                about: serde_json::from_str(about).unwrap_or(serde_json::Value::Null),
            });
        }
        heard.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(heard)
    }

    /// Runs a script, its answer a list of strings, within `ANSWER_TIMEOUT`.
    async fn run(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<Vec<String>, String> {
        let mut connection = self.connection.clone();
        tokio::time::timeout(ANSWER_TIMEOUT, invocation.invoke_async(&mut connection))
            .await
            .map_err(|_| "the shared store did not answer in time".to_string())?
            .map_err(|e| format!("the shared store failed: {e}"))
    }

    /// Sends `PING`: whether the store answers.
    pub async fn ping(&self) -> Result<(), String> {
        let mut connection = self.connection.clone();
        tokio::time::timeout(
            ANSWER_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut connection),
        )
        .await
        .map_err(|_| "the shared store did not answer in time".to_string())?
        .map(|_| ())
        .map_err(|e| format!("the shared store failed: {e}"))
    }
}

/// The script's answer, field by field (see `lease.lua`).
fn parse(fields: &[String]) -> Result<Answer, String> {
    let bad = || format!("the shared store's lease answer is not understood: {fields:?}");
    if fields.len() != 13 {
        return Err(bad());
    }
    let number = |i: usize| -> Result<f64, String> {
        match fields[i].as_str() {
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            text => text.parse::<f64>().map_err(|_| bad()),
        }
    };
    let optional = |i: usize| -> Result<Option<f64>, String> {
        if fields[i].is_empty() {
            Ok(None)
        } else {
            number(i).map(Some)
        }
    };
    let wait = number(6)?;
    let wait = (wait >= 0.0).then(|| Duration::from_millis(wait as u64));
    let refused = match fields[5].as_str() {
        "" => None,
        "requests" => Some(Shortage::Requests(wait)),
        "tokens" => Some(Shortage::Tokens(wait)),
        "day_tokens" => Some(Shortage::DayTokens),
        "day_usd" => Some(Shortage::DayUsd),
        "month_tokens" => Some(Shortage::MonthTokens),
        "month_usd" => Some(Shortage::MonthUsd),
        _ => return Err(bad()),
    };
    if (fields[0] == "1") != refused.is_none() {
        return Err(bad());
    }
    Ok(Answer {
        refused,
        requests: number(1)?,
        tokens: number(2)?,
        held_tokens: number(3)?,
        held_usd: number(4)?,
        cluster: Cluster {
            day_tokens: number(7)? as u64,
            day_usd: number(8)?,
            month_tokens: number(9)? as u64,
            month_usd: number(10)?,
            requests_left: optional(11)?,
            tokens_left: optional(12)?,
            mine_day: (0, 0.0),
            mine_month: (0, 0.0),
            at: Some(tokio::time::Instant::now()),
        },
    })
}
