//! `Control`: how a console sees a gateway and acts on it, the same whether the gateway
//! runs in this process or behind a remote admin API.
//!
//! A control feeds snapshots (about once a second) and the state of its link into a
//! channel, and carries out actions. The in-process one builds snapshots from the
//! `Gateway`; the remote one lives on `GET /admin/events` (server-sent events) and
//! reconnects with capped backoff, reporting *reconnecting* meanwhile.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::admin::client::AdminClient;
use crate::domain::records::{AuditQuery, AuditRecord};
use crate::domain::snapshot::{Action, InstanceDetail, Snapshot, TenantDetail};
use crate::gateway::Gateway;

/// What a control sends a console.
#[derive(Debug, Clone)]
pub enum Feed {
    Snapshot(Box<Snapshot>),
    Link(Link),
}

/// The state of the connection to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    Connected,
    /// Lost; trying again (attempt number, and why it was lost).
    Reconnecting {
        attempt: u32,
        reason: String,
    },
    /// The admin API refused this console (a wrong or revoked token): trying again
    /// cannot help, so the console stops and says why.
    Refused(String),
    /// The gateway this console runs with has stopped.
    Stopped,
}

pub type Acted<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;
pub type Audited<'a> = Pin<Box<dyn Future<Output = Result<Vec<AuditRecord>, String>> + Send + 'a>>;
pub type Detailed<'a> = Pin<Box<dyn Future<Output = Result<TenantDetail, String>> + Send + 'a>>;
pub type InstanceDetailed<'a> =
    Pin<Box<dyn Future<Output = Result<InstanceDetail, String>> + Send + 'a>>;

pub trait Control: Send + Sync + 'static {
    /// Starts feeding snapshots and link changes; the feed stops when the receiver drops.
    fn subscribe(&self) -> mpsc::Receiver<Feed>;
    /// Carries out an action; the answer says what happened, or why not.
    fn act(&self, action: Action) -> Acted<'_>;
    /// Reads the audit log.
    fn audit(&self, query: AuditQuery) -> Audited<'_>;
    /// One tenant in depth, for the drill-down.
    fn tenant_detail(&self, tenant: String) -> Detailed<'_>;
    /// One upstream instance in depth, for the drill-down.
    fn instance_detail(&self, instance: String) -> InstanceDetailed<'_>;
    /// Where the gateway is, for the console's title.
    fn describe(&self) -> String;
    /// Whether quitting the console stops the gateway (`switchyard up`), so it asks first.
    fn quitting_stops_gateway(&self) -> bool {
        false
    }
    /// Starts stopping the gateway; the feed reports `Link::Stopped` once it has.
    fn stop_gateway(&self) {}
    /// A line to greet the operator with (the demo's admin URL and token).
    fn greeting(&self) -> Option<String> {
        None
    }
    /// Takes a region's simulated upstreams down for a while: only the demo has them.
    fn simulate_outage(&self, region: &str) -> Result<String, String> {
        let _ = region;
        Err("outages are simulated only in `switchyard demo`".into())
    }
}

/// What the demo does when the operator asks for an outage.
pub type OutageSwitch = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// How `switchyard up` stops its gateway from the console: the console asks through
/// `requested`, `up` stops the daemon and says so through `done`.
#[derive(Clone)]
pub struct Stopper {
    pub requested: Arc<tokio::sync::Notify>,
    pub done: tokio::sync::watch::Receiver<bool>,
}

/// A gateway in this process.
pub struct InProcess {
    gateway: Arc<Gateway>,
    operator: String,
    every: Duration,
    stopper: Option<Stopper>,
    greeting: Option<String>,
    outage: Option<OutageSwitch>,
}

impl InProcess {
    pub fn new(gateway: Arc<Gateway>, operator: &str) -> InProcess {
        InProcess {
            gateway,
            operator: operator.to_string(),
            every: Duration::from_millis(500),
            stopper: None,
            greeting: None,
            outage: None,
        }
    }

    /// Greets the operator with `line` when the console starts.
    pub fn greeting(mut self, line: String) -> InProcess {
        self.greeting = Some(line);
        self
    }

    /// Lets the operator take a simulated region down (the demo).
    pub fn simulating_outages(mut self, switch: OutageSwitch) -> InProcess {
        self.outage = Some(switch);
        self
    }

    /// Quitting the console stops the gateway, through `stopper`.
    pub fn stopping_with(mut self, stopper: Stopper) -> InProcess {
        self.stopper = Some(stopper);
        self
    }
}

impl Control for InProcess {
    fn subscribe(&self) -> mpsc::Receiver<Feed> {
        let (sender, receiver) = mpsc::channel(4);
        let gateway = self.gateway.clone();
        let every = self.every;
        let mut done = self.stopper.as_ref().map(|s| s.done.clone());
        tokio::spawn(async move {
            let _ = sender.send(Feed::Link(Link::Connected)).await;
            let mut tick = tokio::time::interval(every);
            loop {
                let stopped = async {
                    match done.as_mut() {
                        Some(done) => {
                            let _ = done.wait_for(|d| *d).await;
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stopped => {
                        let _ = sender.send(Feed::Link(Link::Stopped)).await;
                        return;
                    }
                }
                // Building a snapshot takes short locks only; off the runtime's way anyway.
                let gateway = gateway.clone();
                let Ok(snapshot) = tokio::task::spawn_blocking(move || gateway.snapshot()).await
                else {
                    return;
                };
                if sender
                    .send(Feed::Snapshot(Box::new(snapshot)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        receiver
    }

    fn act(&self, action: Action) -> Acted<'_> {
        Box::pin(async move { self.gateway.act(&action, &self.operator).await })
    }

    fn audit(&self, query: AuditQuery) -> Audited<'_> {
        Box::pin(async move {
            self.gateway
                .read_audit(query)
                .await
                .map_err(|e| format!("the audit log cannot be read: {e}"))
        })
    }

    fn tenant_detail(&self, tenant: String) -> Detailed<'_> {
        Box::pin(async move { self.gateway.tenant_detail(&tenant).await })
    }

    fn instance_detail(&self, instance: String) -> InstanceDetailed<'_> {
        Box::pin(async move { self.gateway.instance_detail(&instance) })
    }

    fn describe(&self) -> String {
        format!(
            "in-process gateway on {}",
            self.gateway.config().server.listen
        )
    }

    fn quitting_stops_gateway(&self) -> bool {
        self.stopper.is_some()
    }

    fn stop_gateway(&self) {
        if let Some(stopper) = &self.stopper {
            stopper.requested.notify_one();
        }
    }

    fn greeting(&self) -> Option<String> {
        self.greeting.clone()
    }

    fn simulate_outage(&self, region: &str) -> Result<String, String> {
        match &self.outage {
            Some(switch) => switch(region),
            None => Err("outages are simulated only in `switchyard demo`".into()),
        }
    }
}

/// A gateway behind its admin API.
pub struct Remote {
    url: String,
    client: AdminClient,
}

impl Remote {
    /// `ca_file`: trust an HTTPS admin API only if this CA signed its certificate.
    pub fn new(
        url: &str,
        token: &str,
        operator: &str,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Remote, String> {
        let client = AdminClient::new(url, token, operator, ca_file).map_err(|e| e.to_string())?;
        Ok(Remote {
            url: url.trim_end_matches('/').to_string(),
            client,
        })
    }
}

/// `text` as one URL path segment.
fn url_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Backoff between reconnection attempts: 250 ms doubling to at most 5 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(5))
}

impl Control for Remote {
    fn subscribe(&self) -> mpsc::Receiver<Feed> {
        let (sender, receiver) = mpsc::channel(4);
        let client = self.client.clone();
        tokio::spawn(async move {
            let mut attempt = 0u32;
            loop {
                let reason = match follow(&client, &sender, &mut attempt).await {
                    Ok(()) => return, // the console went away
                    Err(Lost::Refused(reason)) => {
                        let _ = sender.send(Feed::Link(Link::Refused(reason))).await;
                        return;
                    }
                    Err(Lost::Retry(reason)) => reason,
                };
                attempt += 1;
                let link = Link::Reconnecting { attempt, reason };
                if sender.send(Feed::Link(link)).await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff(attempt)).await;
            }
        });
        receiver
    }

    fn act(&self, action: Action) -> Acted<'_> {
        Box::pin(async move {
            let body = serde_json::to_value(&action).map_err(|e| e.to_string())?;
            let reply = self
                .client
                .post("/admin/actions", &body)
                .await
                .map_err(|e| e.to_string())?;
            Ok(reply["ok"].as_str().unwrap_or("done").to_string())
        })
    }

    fn audit(&self, query: AuditQuery) -> Audited<'_> {
        Box::pin(async move {
            let mut path = format!("/admin/audit?limit={}", query.limit);
            if let Some(since) = query.since_ms {
                path.push_str(&format!("&since={since}"));
            }
            if let Some(until) = query.until_ms {
                path.push_str(&format!("&until={until}"));
            }
            if let Some(tenant) = &query.tenant {
                path.push_str(&format!("&tenant={}", url_segment(tenant)));
            }
            if let Some(status) = &query.status {
                path.push_str(&format!("&status={}", url_segment(status)));
            }
            if let Some(kind) = query.kind {
                let kind = match kind {
                    crate::domain::records::AuditKind::Operator => "operator",
                    crate::domain::records::AuditKind::Request => "request",
                    crate::domain::records::AuditKind::Tool => "tool",
                };
                path.push_str(&format!("&kind={kind}"));
            }
            let reply = self.client.get(&path).await.map_err(|e| e.to_string())?;
            serde_json::from_value(reply["records"].clone()).map_err(|e| e.to_string())
        })
    }

    fn tenant_detail(&self, tenant: String) -> Detailed<'_> {
        Box::pin(async move {
            let path = format!("/admin/tenants/{}/detail", url_segment(&tenant));
            let reply = self.client.get(&path).await.map_err(|e| e.to_string())?;
            serde_json::from_value(reply).map_err(|e| format!("an unreadable detail: {e}"))
        })
    }

    fn instance_detail(&self, instance: String) -> InstanceDetailed<'_> {
        Box::pin(async move {
            let path = format!("/admin/instances/{}/detail", url_segment(&instance));
            let reply = self.client.get(&path).await.map_err(|e| e.to_string())?;
            serde_json::from_value(reply).map_err(|e| format!("an unreadable detail: {e}"))
        })
    }

    fn describe(&self) -> String {
        format!("remote gateway at {}", self.url)
    }
}

/// Why the event stream ended.
enum Lost {
    /// Worth trying again: the network, a restart.
    Retry(String),
    /// The admin API refused the token: trying again cannot help.
    Refused(String),
}

impl<T: Into<String>> From<T> for Lost {
    fn from(reason: T) -> Lost {
        Lost::Retry(reason.into())
    }
}

/// Reads the event stream until it breaks (`Err` with why) or the console is gone (`Ok`).
async fn follow(
    client: &AdminClient,
    sender: &mpsc::Sender<Feed>,
    attempt: &mut u32,
) -> Result<(), Lost> {
    let response = client
        .stream("/admin/events")
        .send()
        .await
        .map_err(|e| client.why(&e))?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(Lost::Refused(format!(
            "the admin API refused the token (HTTP {}); check --token or SWITCHYARD_ADMIN_TOKEN against the daemon's {}",
            status.as_u16(),
            "server.admin_token_env"
        )));
    }
    if !status.is_success() {
        return Err(Lost::Retry(format!("the admin API answered {status}")));
    }
    if sender.send(Feed::Link(Link::Connected)).await.is_err() {
        return Ok(());
    }
    *attempt = 0;
    let mut body = response.bytes_stream();
    let mut parser = crate::streams::SseParser::default();
    // No snapshot for this long means the link is dead even if TCP says otherwise.
    let silence = Duration::from_secs(10);
    loop {
        let chunk = match tokio::time::timeout(silence, body.next()).await {
            Err(_) => return Err("no snapshot for 10 s".into()),
            Ok(None) => return Err("the daemon closed the stream".into()),
            Ok(Some(Err(e))) => return Err(crate::providers::root_cause(&e).into()),
            Ok(Some(Ok(chunk))) => chunk,
        };
        for event in parser.push(&chunk) {
            let (kind, data) = (event.kind.as_deref().unwrap_or(""), event.data);
            if kind == "snapshot" {
                let snapshot: Snapshot =
                    serde_json::from_str(&data).map_err(|e| format!("unreadable snapshot: {e}"))?;
                if sender
                    .send(Feed::Snapshot(Box::new(snapshot)))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(9), Duration::from_secs(5));
    }
}
