//! The shared store's wire side: one connection to Valkey or Redis (multiplexed,
//! reconnected when lost) or to a Valkey Cluster (routed by key), the scripts run by
//! their SHA (`lease.lua`, `replicas.lua`, `operator.lua`, `keys.lua`), and the
//! operators' channel.
//!
//! Keys are `{prefix:tenant}:...` for a tenant's limits and `{prefix}:...` for the
//! cluster's own: the braces are a hash tag, so every key one script touches lives in
//! one slot, on Valkey Cluster too.

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
    client: redis::Client,
    connection: Link,
    lease: redis::Script,
    replicas: redis::Script,
    operator: redis::Script,
    keys: redis::Script,
    prefix: String,
}

/// One node's connection (reconnected when lost), or a cluster's (routed by key).
#[derive(Clone)]
enum Link {
    One(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Link {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Link::One(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Link::One(c) => c.req_packed_commands(cmd, offset, count),
            Link::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::One(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

/// The versions of the operators' shared state, as a heartbeat learns them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Versions {
    pub overrides: u64,
    pub keys: u64,
}

/// What a replica hears on the operators' channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// The overrides document is at this version.
    Overrides(u64),
    /// The key with this id was made, revoked or rotated.
    Key(String),
}

impl Valkey {
    /// Connects to `url` (`redis://host:port/db`), or says why it could not.
    pub async fn connect(url: &str, prefix: &str) -> Result<Valkey, String> {
        Self::connect_to(url, &[], prefix).await
    }

    /// Connects to `url`, or with `cluster_nodes` to a Valkey Cluster through them
    /// (`url` is then the node the operators' channel is heard on: a message
    /// published on any node reaches every node).
    pub async fn connect_to(
        url: &str,
        cluster_nodes: &[String],
        prefix: &str,
    ) -> Result<Valkey, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("{url} is not a store URL: {e}"))?;
        let connection = if cluster_nodes.is_empty() {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(ANSWER_TIMEOUT))
                .set_number_of_retries(1);
            let manager = client
                .get_connection_manager_with_config(config)
                .await
                .map_err(|e| format!("the shared store at {url} could not be reached: {e}"))?;
            Link::One(manager)
        } else {
            let cluster = redis::cluster::ClusterClient::builder(cluster_nodes.to_vec())
                .connection_timeout(Duration::from_secs(2))
                .response_timeout(ANSWER_TIMEOUT)
                .retries(1)
                .build()
                .map_err(|e| format!("the Valkey Cluster nodes are not understood: {e}"))?;
            let connection = cluster.get_async_connection().await.map_err(|e| {
                format!(
                    "the Valkey Cluster at {} could not be reached: {e}",
                    cluster_nodes.join(", ")
                )
            })?;
            Link::Cluster(connection)
        };
        Ok(Valkey {
            client,
            connection,
            lease: redis::Script::new(include_str!("lease.lua")),
            replicas: redis::Script::new(include_str!("replicas.lua")),
            operator: redis::Script::new(include_str!("operator.lua")),
            keys: redis::Script::new(include_str!("keys.lua")),
            prefix: prefix.to_string(),
        })
    }

    fn key(&self, tenant: &str, rest: &str) -> String {
        format!("{{{}:{tenant}}}:{rest}", self.prefix)
    }

    /// A key of the cluster's own (not a tenant's): one hash tag, one slot.
    fn cluster_key(&self, rest: &str) -> String {
        format!("{{{}}}:{rest}", self.prefix)
    }

    fn channel(&self) -> String {
        self.cluster_key("operator")
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
    ) -> Result<(Vec<ReplicaView>, Versions), String> {
        let mut invocation = self.replicas.prepare_invoke();
        invocation
            .key(self.cluster_key("replicas"))
            .key(self.cluster_key("operator"))
            .arg(replica)
            .arg(about.to_string())
            .arg(keep.as_millis() as u64);
        let fields = self.run(&invocation).await?;
        let number = |i: usize| fields.get(i).and_then(|n| n.parse::<u64>().ok());
        let (Some(now), Some(overrides), Some(keys)) = (number(0), number(1), number(2)) else {
            return Err("the shared store's heartbeat answer is not understood".into());
        };
        let mut heard = Vec::new();
        for pair in fields[3..].chunks_exact(2) {
            let (at, about) = pair[1].split_once(' ').unwrap_or((&pair[1], "null"));
            heard.push(ReplicaView {
                id: pair[0].clone(),
                silent_ms: now.saturating_sub(at.parse().unwrap_or(0)),
                about: serde_json::from_str(about).unwrap_or(serde_json::Value::Null),
            });
        }
        heard.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((heard, Versions { overrides, keys }))
    }

    /// Replaces the overrides document if it is still at `seen`: the new version, or
    /// (another replica was first) the version and document that are there now.
    pub async fn publish_overrides(
        &self,
        seen: u64,
        document: &str,
    ) -> Result<Result<u64, (u64, String)>, String> {
        let mut invocation = self.operator.prepare_invoke();
        invocation
            .key(self.cluster_key("operator"))
            .arg(seen)
            .arg(document)
            .arg(self.channel());
        let fields = self.run(&invocation).await?;
        let number = |i: usize| fields.get(i).and_then(|n| n.parse::<u64>().ok());
        match (fields.first().map(String::as_str), number(1)) {
            (Some("1"), Some(version)) => Ok(Ok(version)),
            (Some("0"), Some(version)) => {
                Ok(Err((version, fields.get(2).cloned().unwrap_or_default())))
            }
            _ => Err("the shared store's answer about the overrides is not understood".into()),
        }
    }

    /// The overrides document and its version (version 0: none yet).
    pub async fn overrides(&self) -> Result<(u64, String), String> {
        let mut connection = self.connection.clone();
        let (version, document): (Option<u64>, Option<String>) = tokio::time::timeout(
            ANSWER_TIMEOUT,
            redis::cmd("HMGET")
                .arg(self.cluster_key("operator"))
                .arg("version")
                .arg("overrides")
                .query_async(&mut connection),
        )
        .await
        .map_err(|_| "the shared store did not answer in time".to_string())?
        .map_err(|e| format!("the shared store failed: {e}"))?;
        Ok((version.unwrap_or(0), document.unwrap_or_default()))
    }

    /// Shares a key's record (made, revoked or rotated here).
    pub async fn put_key(&self, id: &str, record: &str) -> Result<(), String> {
        let mut invocation = self.keys.prepare_invoke();
        invocation
            .key(self.cluster_key("keys"))
            .key(self.cluster_key("operator"))
            .arg(id)
            .arg(record)
            .arg(self.channel());
        self.run(&invocation).await.map(|_| ())
    }

    /// Every key record the cluster shares, by id.
    pub async fn keys(&self) -> Result<Vec<(String, String)>, String> {
        let mut connection = self.connection.clone();
        tokio::time::timeout(
            ANSWER_TIMEOUT,
            redis::cmd("HGETALL")
                .arg(self.cluster_key("keys"))
                .query_async(&mut connection),
        )
        .await
        .map_err(|_| "the shared store did not answer in time".to_string())?
        .map_err(|e| format!("the shared store failed: {e}"))
    }

    /// Listens on the operators' channel: what changed, as it is published. The
    /// stream ends when the connection is lost.
    pub async fn listen(&self) -> Result<impl futures_util::Stream<Item = Heard> + use<>, String> {
        let mut pubsub = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| format!("the shared store's channel could not be opened: {e}"))?;
        pubsub
            .subscribe(self.channel())
            .await
            .map_err(|e| format!("the shared store's channel could not be joined: {e}"))?;
        Ok(futures_util::StreamExt::filter_map(
            pubsub.into_on_message(),
            |message| async move {
                let payload: String = message.get_payload().ok()?;
                match payload.split_once(' ')? {
                    ("overrides", version) => version.parse().ok().map(Heard::Overrides),
                    ("key", id) => Some(Heard::Key(id.to_string())),
                    _ => None,
                }
            },
        ))
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
