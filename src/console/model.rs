//! The console's state and its one way to change: `update(&mut Model, Msg) -> Vec<Cmd>`.
//! No I/O, no locks, no awaiting: keys and snapshots come in as messages, actions go out
//! as commands for the loop to carry through `Control`.

use crate::control::{Feed, Link};
use crate::domain::Limits;
use crate::domain::records::{AuditKind, AuditQuery, AuditRecord};
use crate::domain::snapshot::{Action, InstanceDetail, Snapshot, TenantDetail};

pub use super::keys::View;
use super::keys::{self, Does};

/// What the keyboard is doing.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Normal,
    Filter(String),
    Command(String),
    /// Asking before a destructive action: the action and what it will affect.
    Confirm {
        action: Action,
        impact: String,
    },
    /// The key list, scrolled this many lines down.
    Help(usize),
    /// Asking before quitting stops the gateway (`up`): what is in flight.
    ConfirmQuit {
        impact: String,
    },
}

/// The tenants column rows are sorted by; each matches a column of the Tenants view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Name,
    Tier,
    Paused,
    Rpm,
    Tpm,
    Concurrency,
    TokensToday,
    Month,
    Refused,
    Queued,
}

impl Sort {
    const ALL: [Sort; 10] = [
        Sort::Name,
        Sort::Tier,
        Sort::Paused,
        Sort::Rpm,
        Sort::Tpm,
        Sort::Concurrency,
        Sort::TokensToday,
        Sort::Month,
        Sort::Refused,
        Sort::Queued,
    ];

    fn next(self) -> Sort {
        let at = Sort::ALL.iter().position(|s| *s == self).unwrap_or(0);
        Sort::ALL[(at + 1) % Sort::ALL.len()]
    }

    pub fn label(self) -> &'static str {
        match self {
            Sort::Name => "name",
            Sort::Tier => "tier",
            Sort::Paused => "paused",
            Sort::Rpm => "requests last minute",
            Sort::Tpm => "tokens last minute",
            Sort::Concurrency => "in flight",
            Sort::TokensToday => "tokens today",
            Sort::Month => "this month",
            Sort::Refused => "refused",
            Sort::Queued => "queued",
        }
    }

    /// The Tenants view's column header this sort is by.
    pub fn header(self) -> &'static str {
        match self {
            Sort::Name => "TENANT",
            Sort::Tier => "TIER",
            Sort::Paused => "",
            Sort::Rpm => "RPM",
            Sort::Tpm => "TPM",
            Sort::Concurrency => "CONC",
            Sort::TokensToday => "TODAY",
            Sort::Month => "MONTH",
            Sort::Refused => "REFUSED",
            Sort::Queued => "QUEUED",
        }
    }

    /// Names and tiers read best A to Z; amounts largest first.
    fn descends_first(self) -> bool {
        !matches!(self, Sort::Name | Sort::Tier)
    }
}

/// A line in the status bar, and whether it reports a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub text: String,
    pub error: bool,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub view: View,
    pub mode: Mode,
    pub snapshot: Option<Snapshot>,
    /// A snapshot that arrived while the view was paused.
    pub held: Option<Snapshot>,
    pub link: Link,
    /// No snapshot for a while although the link looks up.
    pub stale: bool,
    pub paused: bool,
    pub read_only: bool,
    /// Selected row in each view.
    pub selected: [usize; View::ALL.len()],
    /// What is selected in each view, by identity (a tenant's name, a stream's id): the
    /// selection follows it when rows re-sort or refresh, so `p y` pauses the tenant
    /// that was highlighted, not whichever moved into its row.
    pub anchors: [Option<String>; View::ALL.len()],
    /// Rows a page (PgDn, Ctrl-D) moves, from the terminal's height.
    pub page: usize,
    /// The terminal's height, to tell which row a click landed on.
    pub height: u16,
    /// Each view's filter: rows whose text contains it (case-insensitive).
    pub filters: [String; View::ALL.len()],
    pub sort: Sort,
    /// Largest (or Z) first.
    pub descending: bool,
    pub status: Option<Status>,
    /// The batch drilled into (Enter in Batches).
    pub batch_detail: Option<String>,
    /// The flow run drilled into (Enter in Flows).
    pub run_detail: Option<String>,
    /// The stream drilled into (Enter in Streams): its text tailed, its rate charted.
    pub tailing: Option<String>,
    /// What each snapshot saw of that stream while it was open: (age, tokens).
    pub stream_seen: Vec<(u64, u64)>,
    /// The latency window shown: "10s", "1m" or "5m".
    pub window: &'static str,
    /// Seats handed out per second by each priority level, from the last two snapshots.
    pub dispatch_rates: Vec<(String, f64)>,
    /// Where the gateway is, for the title.
    pub target: String,
    /// The Events view shows the audit log instead of the event log (`a`): the newest
    /// records, refreshed every few snapshots.
    pub audit: Option<Vec<AuditRecord>>,
    /// Snapshots since the audit log was last asked for.
    pub audit_age: u32,
    /// Paging back through the audit log: records before this time (`]` goes further
    /// back, `[` returns to the newest, which refresh as they come).
    pub audit_until: Option<u64>,
    /// The region drilled into (Enter on a region in Regions).
    pub region_detail: Option<String>,
    /// The instance drilled into (Enter on an instance in Regions), and what was last
    /// read of it.
    pub instance_detail: Option<(String, Option<Box<InstanceDetail>>)>,
    /// The tenant drilled into (Enter in Tenants), and what was last read of it.
    pub detail: Option<(String, Option<Box<TenantDetail>>)>,
    /// Quitting stops the gateway (`switchyard up`), so it asks first.
    pub stops_gateway: bool,
    /// The gateway is stopping: the console shows its progress until it has.
    pub stopping: bool,
    /// Why the console stopped, when it was not the operator's choice.
    pub exit_message: Option<String>,
    pub quit: bool,
}

pub enum Msg {
    /// A key, named as `key_name` names it ("q", "tab", "down", "P").
    Key(String),
    Feed(Feed),
    /// What an action came to.
    Acted(Result<String, String>),
    /// The audit log's newest records, or why they could not be read.
    Audit(Result<Vec<AuditRecord>, String>),
    /// Seconds since the last snapshot, checked on every frame tick.
    Silence(u64),
    /// The terminal's height in rows.
    Height(u16),
    /// A tenant in depth, or why it could not be read.
    Detail(Result<Box<TenantDetail>, String>),
    /// An instance in depth, or why it could not be read.
    Instance(Result<Box<InstanceDetail>, String>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cmd {
    Act(Action),
    /// Stop the gateway this console runs with.
    StopGateway,
    /// Read audit records.
    ReadAudit(AuditQuery),
    /// Read a tenant in depth.
    ReadDetail(String),
    /// Read an instance in depth.
    ReadInstance(String),
    /// Take a region's simulated upstreams down (the demo).
    Outage(String),
}

/// Snapshots of a drilled-into stream kept for its chart (ten minutes at two a second).
const STREAM_SEEN: usize = 1200;

/// Audit records the Events view shows at most.
pub const AUDIT_ROWS: usize = 500;
/// Snapshots between two reads of the audit log while it is shown.
const AUDIT_EVERY: u32 = 2;

/// A row of the Regions view: a region, or one of its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionRow {
    Region(String),
    Instance { region: String, name: String },
}

impl Model {
    pub fn new(target: &str, read_only: bool) -> Model {
        Model {
            view: View::Overview,
            mode: Mode::Normal,
            snapshot: None,
            held: None,
            link: Link::Reconnecting {
                attempt: 0,
                reason: "connecting".into(),
            },
            stale: false,
            paused: false,
            read_only,
            selected: [0; View::ALL.len()],
            anchors: Default::default(),
            page: 10,
            height: 24,
            filters: Default::default(),
            sort: Sort::Name,
            descending: false,
            status: None,
            tailing: None,
            batch_detail: None,
            run_detail: None,
            stream_seen: Vec::new(),
            window: "1m",
            dispatch_rates: Vec::new(),
            target: target.to_string(),
            audit: None,
            audit_age: 0,
            audit_until: None,
            detail: None,
            region_detail: None,
            instance_detail: None,
            stops_gateway: false,
            stopping: false,
            exit_message: None,
            quit: false,
        }
    }

    /// Whether the numbers shown are old: no snapshot for a while, or the link is down
    /// (a paused view is old on purpose, and says so itself).
    pub fn data_is_old(&self) -> bool {
        self.stale || !matches!(self.link, Link::Connected)
    }

    fn selected(&self) -> usize {
        self.selected[self.view.index()]
    }

    /// The current view's filter.
    pub fn filter(&self) -> &str {
        &self.filters[self.view.index()]
    }

    /// The audit query the Events view's filter asks for: its `key=value` words (tenant,
    /// status, kind) go to the store; the other words match the records' text.
    pub fn audit_query(&self) -> AuditQuery {
        let mut query = AuditQuery {
            limit: AUDIT_ROWS,
            until_ms: self.audit_until,
            ..AuditQuery::default()
        };
        for word in self.filters[View::Events.index()].split_whitespace() {
            match word.split_once('=') {
                Some(("tenant", v)) => query.tenant = Some(v.to_string()),
                Some(("status", v)) => query.status = Some(v.to_string()),
                Some(("kind", "operator")) => query.kind = Some(AuditKind::Operator),
                Some(("kind", "request")) => query.kind = Some(AuditKind::Request),
                _ => {}
            }
        }
        query
    }

    /// Whether an audit record's text has every word of the Events filter that is not
    /// a `key=value` for the store.
    fn matches_words(&self, text: &str) -> bool {
        let text = text.to_lowercase();
        self.filters[View::Events.index()]
            .split_whitespace()
            .filter(|w| !w.contains('='))
            .all(|w| text.contains(&w.to_lowercase()))
    }

    /// Whether `texts` (a row's) pass `view`'s filter.
    fn matches(&self, view: View, texts: &[&str]) -> bool {
        let filter = self.filters[view.index()].to_lowercase();
        filter.is_empty() || texts.iter().any(|t| t.to_lowercase().contains(&filter))
    }

    /// Tenant names in display order (filtered, sorted).
    pub fn tenant_rows(&self) -> Vec<usize> {
        let Some(s) = &self.snapshot else {
            return Vec::new();
        };
        let mut rows: Vec<usize> = (0..s.tenants.len())
            .filter(|i| self.matches(View::Tenants, &[&s.tenants[*i].name, &s.tenants[*i].tier]))
            .collect();
        let t = &s.tenants;
        let refused = |i: usize| t[i].refused.iter().map(|(_, n)| n).sum::<u64>();
        let amount = |i: usize| -> u64 {
            match self.sort {
                Sort::Paused => u64::from(t[i].paused),
                Sort::Rpm => t[i].requests_last_minute,
                Sort::Tpm => t[i].tokens_last_minute,
                Sort::Concurrency => u64::from(t[i].in_flight),
                Sort::TokensToday => t[i].day.tokens,
                Sort::Month => (t[i].month.cost_usd * 100.0) as u64 + t[i].month.tokens,
                Sort::Refused => refused(i),
                Sort::Queued => t[i].queued,
                Sort::Name | Sort::Tier => 0,
            }
        };
        // Ties go by name, so equal rows keep a stable order between refreshes.
        rows.sort_by(|a, b| {
            let by = match self.sort {
                Sort::Name => t[*a].name.cmp(&t[*b].name),
                Sort::Tier => t[*a].tier.cmp(&t[*b].tier),
                _ => amount(*a).cmp(&amount(*b)),
            };
            let by = if self.descending { by.reverse() } else { by };
            by.then_with(|| t[*a].name.cmp(&t[*b].name))
        });
        rows
    }

    pub fn region_rows(&self) -> Vec<RegionRow> {
        let Some(s) = &self.snapshot else {
            return Vec::new();
        };
        let mut rows = Vec::new();
        for r in &s.regions {
            let instances: Vec<&str> = r
                .instances
                .iter()
                .filter(|i| self.matches(View::Regions, &[&i.name, &r.name]))
                .map(|i| i.name.as_str())
                .collect();
            if instances.is_empty() {
                continue;
            }
            rows.push(RegionRow::Region(r.name.clone()));
            rows.extend(instances.into_iter().map(|name| RegionRow::Instance {
                region: r.name.clone(),
                name: name.to_string(),
            }));
        }
        rows
    }

    pub fn stream_rows(&self) -> Vec<usize> {
        let Some(s) = &self.snapshot else {
            return Vec::new();
        };
        (0..s.streams.len())
            .filter(|i| {
                let st = &s.streams[*i];
                self.matches(
                    View::Streams,
                    &[&st.id, &st.tenant, &st.model, &st.region, &st.instance],
                )
            })
            .collect()
    }

    /// Batches, newest first, filtered.
    pub fn batch_rows(&self) -> Vec<usize> {
        let Some(s) = &self.snapshot else {
            return Vec::new();
        };
        (0..s.batches.len())
            .filter(|i| {
                let b = &s.batches[*i];
                self.matches(View::Batches, &[&b.id, &b.tenant, &b.status, &b.endpoint])
            })
            .collect()
    }

    /// Flow runs, newest first, filtered.
    pub fn flow_rows(&self) -> Vec<usize> {
        let Some(s) = &self.snapshot else {
            return Vec::new();
        };
        (0..s.flow_runs.len())
            .filter(|i| {
                let r = &s.flow_runs[*i];
                self.matches(View::Flows, &[&r.id, &r.tenant, &r.flow, &r.status])
            })
            .collect()
    }

    fn selected_run(&self) -> Option<String> {
        let s = self.snapshot.as_ref()?;
        self.flow_rows()
            .get(self.selected())
            .map(|i| s.flow_runs[*i].id.clone())
    }

    fn selected_batch(&self) -> Option<String> {
        let s = self.snapshot.as_ref()?;
        self.batch_rows()
            .get(self.selected())
            .map(|i| s.batches[*i].id.clone())
    }

    /// Latency series of the chosen window, filtered.
    pub fn latency_rows(&self) -> Vec<usize> {
        let Some(s) = &self.snapshot else {
            return Vec::new();
        };
        (0..s.latency.len())
            .filter(|i| {
                let l = &s.latency[*i];
                l.window == self.window && self.matches(View::Latency, &[&l.scope, &l.metric])
            })
            .collect()
    }

    pub fn event_rows(&self) -> Vec<usize> {
        if let Some(records) = &self.audit {
            return (0..records.len())
                .rev()
                .filter(|i| self.matches_words(&records[*i].summary()))
                .collect();
        }
        let Some(s) = &self.snapshot else {
            return Vec::new();
        };
        (0..s.events.len())
            .rev()
            .filter(|i| self.matches(View::Events, &[&s.events[*i].message]))
            .collect()
    }

    /// The identity of each row of `view`, in display order; `None` where rows have no
    /// identity of their own (events), so the selection stays on its position.
    fn row_ids(&self, view: View) -> Option<Vec<String>> {
        let s = self.snapshot.as_ref()?;
        Some(match view {
            View::Tenants => self
                .tenant_rows()
                .into_iter()
                .map(|i| s.tenants[i].name.clone())
                .collect(),
            View::Regions | View::Overview => self
                .region_rows()
                .into_iter()
                .map(|row| match row {
                    RegionRow::Region(name) => name,
                    RegionRow::Instance { region, name } => format!("{region}/{name}"),
                })
                .collect(),
            View::Streams => self
                .stream_rows()
                .into_iter()
                .map(|i| s.streams[i].id.clone())
                .collect(),
            View::Queues => s.levels.iter().map(|l| l.tier.clone()).collect(),
            View::Latency => self
                .latency_rows()
                .into_iter()
                .map(|i| format!("{}/{}", s.latency[i].scope, s.latency[i].metric))
                .collect(),
            View::Batches => self
                .batch_rows()
                .into_iter()
                .map(|i| s.batches[i].id.clone())
                .collect(),
            View::Flows => self
                .flow_rows()
                .into_iter()
                .map(|i| s.flow_runs[i].id.clone())
                .collect(),
            View::Events => return None,
        })
    }

    /// Puts each view's selection back on the row it names after rows changed; a row
    /// that is gone leaves the selection where it was (within the rows).
    fn follow_selection(&mut self) {
        let current = self.view;
        for view in View::ALL {
            let i = view.index();
            self.view = view;
            let rows = self.row_count();
            match self.row_ids(view) {
                Some(ids) => {
                    if let Some(at) = self.anchors[i]
                        .as_ref()
                        .and_then(|anchor| ids.iter().position(|id| id == anchor))
                    {
                        self.selected[i] = at;
                    } else {
                        self.selected[i] = self.selected[i].min(rows.saturating_sub(1));
                        self.anchors[i] = ids.get(self.selected[i]).cloned();
                    }
                }
                None => self.selected[i] = self.selected[i].min(rows.saturating_sub(1)),
            }
        }
        self.view = current;
    }

    /// Moves the current view's selection to row `to` (kept within the rows).
    fn select(&mut self, to: usize) {
        let i = self.view.index();
        self.selected[i] = to.min(self.row_count().saturating_sub(1));
        self.anchors[i] = self
            .row_ids(self.view)
            .and_then(|ids| ids.get(self.selected[i]).cloned());
    }

    fn row_count(&self) -> usize {
        match self.view {
            View::Tenants => self.tenant_rows().len(),
            View::Regions | View::Overview => self.region_rows().len(),
            View::Streams => self.stream_rows().len(),
            View::Events => self.event_rows().len(),
            View::Batches => self.batch_rows().len(),
            View::Flows => self.flow_rows().len(),
            View::Queues => self.snapshot.as_ref().map_or(0, |s| s.levels.len()),
            View::Latency => self.latency_rows().len(),
        }
    }

    fn selected_tenant(&self) -> Option<String> {
        let rows = self.tenant_rows();
        let s = self.snapshot.as_ref()?;
        rows.get(self.selected())
            .map(|i| s.tenants[*i].name.clone())
    }

    fn selected_region_row(&self) -> Option<RegionRow> {
        self.region_rows().get(self.selected()).cloned()
    }

    /// Notes what the snapshot shows of the stream drilled into, for its rate chart.
    fn see_stream(&mut self) {
        let Some(st) = self
            .tailing
            .as_ref()
            .zip(self.snapshot.as_ref())
            .and_then(|(id, s)| s.streams.iter().find(|st| &st.id == id))
        else {
            return;
        };
        let seen = (st.age_ms, st.tokens);
        if self.stream_seen.last().is_some_and(|last| last.0 >= seen.0) {
            return;
        }
        if self.stream_seen.len() == STREAM_SEEN {
            self.stream_seen.remove(0);
        }
        self.stream_seen.push(seen);
    }

    fn selected_stream(&self) -> Option<String> {
        let s = self.snapshot.as_ref()?;
        self.stream_rows()
            .get(self.selected())
            .map(|i| s.streams[*i].id.clone())
    }

    /// Refuses an action that names what the gateway does not have, before asking.
    /// Without a snapshot there is nothing to check against; the gateway decides.
    fn check(&self, action: &Action) -> Result<(), String> {
        let Some(s) = &self.snapshot else {
            return Ok(());
        };
        let region = |name: &String| {
            if s.regions.iter().any(|r| &r.name == name) {
                Ok(())
            } else {
                let known: Vec<&str> = s.regions.iter().map(|r| r.name.as_str()).collect();
                Err(format!(
                    "there is no region {name}; regions: {}",
                    known.join(", ")
                ))
            }
        };
        let instance = |name: &String| {
            if s.regions
                .iter()
                .flat_map(|r| &r.instances)
                .any(|i| &i.name == name)
            {
                Ok(())
            } else {
                Err(format!(
                    "there is no instance {name}; see the Regions view (3)"
                ))
            }
        };
        let tenant = |name: &String| {
            if s.tenants.iter().any(|t| &t.name == name) {
                Ok(())
            } else {
                Err(format!(
                    "there is no tenant {name}; see the Tenants view (2)"
                ))
            }
        };
        match action {
            Action::DrainRegion { region: r, .. } | Action::UndrainRegion { region: r } => {
                region(r)
            }
            Action::DrainInstance { instance: i, .. }
            | Action::UndrainInstance { instance: i }
            | Action::EjectInstance { instance: i }
            | Action::RestoreInstance { instance: i } => instance(i),
            Action::SetTier { tenant: t, tier } => {
                tenant(t)?;
                if s.levels.iter().any(|l| &l.tier == tier) {
                    Ok(())
                } else {
                    let known: Vec<&str> = s.levels.iter().map(|l| l.tier.as_str()).collect();
                    Err(format!(
                        "there is no tier {tier}; tiers: {}",
                        known.join(", ")
                    ))
                }
            }
            Action::SetLimits { tenant: t, .. }
            | Action::PauseTenant { tenant: t }
            | Action::ResumeTenant { tenant: t }
            | Action::ResetBudget { tenant: t }
            | Action::PurgeCache { tenant: Some(t) } => tenant(t),
            Action::KillStream { id } => {
                if s.streams.iter().any(|st| &st.id == id) {
                    Ok(())
                } else {
                    Err(format!(
                        "there is no live stream {id}; see the Streams view (5)"
                    ))
                }
            }
            Action::CancelBatch { id } => match s.batches.iter().find(|b| &b.id == id) {
                Some(b) if b.cancellable() => Ok(()),
                Some(b) if b.running() => Err(format!("batch {id} is already {}", b.status)),
                Some(b) => Err(format!("batch {id} has ended ({})", b.status)),
                None => Err(format!("there is no batch {id}; see the Batches view (8)")),
            },
            Action::CancelFlowRun { id } => match s.flow_runs.iter().find(|r| &r.id == id) {
                Some(r) if r.status == "running" => Ok(()),
                Some(r) if r.running() => Err(format!("flow run {id} is already {}", r.status)),
                Some(r) => Err(format!("flow run {id} has ended ({})", r.status)),
                None => Err(format!("there is no flow run {id}; see the Flows view (9)")),
            },
            Action::PurgeCache { tenant: None } => Ok(()),
        }
    }

    /// What an action will affect, for the confirmation line.
    fn impact(&self, action: &Action) -> String {
        let Some(s) = &self.snapshot else {
            return String::new();
        };
        let tenant = |name: &String| s.tenants.iter().find(|t| &t.name == name);
        match action {
            Action::SetLimits {
                tenant: name,
                limits,
            } => {
                let Some(t) = tenant(name) else {
                    return String::new();
                };
                let changes = t.limits.changes_to(limits);
                if changes.is_empty() {
                    "no limit given".into()
                } else {
                    changes.join(", ")
                }
            }
            Action::SetTier { tenant: name, tier } => match tenant(name) {
                Some(t) => format!(
                    "tier {} → {tier}; {} in flight, {} queued",
                    t.tier, t.in_flight, t.queued
                ),
                None => String::new(),
            },
            Action::ResetBudget { tenant: name } => match tenant(name) {
                Some(t) => format!(
                    "forgives {} tokens today and {} this month (${:.2})",
                    human_count(t.day.tokens),
                    human_count(t.month.tokens),
                    t.month.cost_usd
                ),
                None => String::new(),
            },
            Action::DrainRegion { region, .. } => {
                let n: u32 = s
                    .regions
                    .iter()
                    .filter(|r| &r.name == region)
                    .flat_map(|r| &r.instances)
                    .map(|i| i.in_flight)
                    .sum();
                format!("{n} requests in flight")
            }
            Action::DrainInstance { instance, .. } | Action::EjectInstance { instance } => {
                let n: u32 = s
                    .regions
                    .iter()
                    .flat_map(|r| &r.instances)
                    .filter(|i| &i.name == instance)
                    .map(|i| i.in_flight)
                    .sum();
                format!("{n} requests in flight")
            }
            Action::PauseTenant { tenant: name } => match tenant(name) {
                Some(t) => format!("{} in flight, {} queued", t.in_flight, t.queued),
                None => String::new(),
            },
            Action::KillStream { id } => match s.streams.iter().find(|st| &st.id == id) {
                Some(st) => format!("{} of {}, {} tokens so far", st.model, st.tenant, st.tokens),
                None => String::new(),
            },
            Action::CancelFlowRun { id } => match s.flow_runs.iter().find(|r| &r.id == id) {
                Some(r) => format!(
                    "{}'s {}, {} of {} steps done{}; the rest do not run",
                    r.tenant,
                    r.flow,
                    r.steps_done,
                    r.steps_total,
                    r.current
                        .as_ref()
                        .map(|c| format!(", {c} in flight is dropped"))
                        .unwrap_or_default()
                ),
                None => String::new(),
            },
            Action::CancelBatch { id } => match s.batches.iter().find(|b| &b.id == id) {
                Some(b) => format!(
                    "{}'s, {} of {} lines done; the other {} are not run",
                    b.tenant,
                    b.done(),
                    b.total,
                    b.total.saturating_sub(b.done())
                ),
                None => String::new(),
            },
            Action::PurgeCache { tenant } => {
                let (entries, bytes) = match tenant {
                    None => (s.cache.entries, s.cache.bytes),
                    Some(tenant) => s
                        .cache
                        .scopes
                        .iter()
                        .find(|c| &c.scope == tenant)
                        .map_or((0, 0), |c| (c.entries, c.bytes)),
                };
                format!(
                    "{} kept, {}",
                    crate::domain::snapshot::answers(entries),
                    human_bytes(bytes)
                )
            }
            _ => String::new(),
        }
    }

    fn flash(&mut self, text: impl Into<String>, error: bool) {
        self.status = Some(Status {
            text: text.into(),
            error,
        });
    }

    /// Checks the action names what exists, then asks first when it takes service away
    /// or changes what a tenant may use; otherwise sends it at once.
    fn request(&mut self, action: Action) -> Vec<Cmd> {
        if self.read_only {
            self.flash("read-only console: actions are disabled", true);
            return Vec::new();
        }
        if let Err(why) = self.check(&action) {
            self.flash(why, true);
            return Vec::new();
        }
        let asks = action.is_destructive()
            || matches!(
                action,
                Action::SetLimits { .. } | Action::SetTier { .. } | Action::ResetBudget { .. }
            );
        if asks {
            let impact = self.impact(&action);
            self.mode = Mode::Confirm { action, impact };
            Vec::new()
        } else {
            self.flash(format!("{}…", action.describe()), false);
            vec![Cmd::Act(action)]
        }
    }
}

pub fn update(model: &mut Model, msg: Msg) -> Vec<Cmd> {
    match msg {
        Msg::Feed(Feed::Snapshot(snapshot)) => {
            model.stale = false;
            if let Some(previous) = model.held.as_ref().or(model.snapshot.as_ref()) {
                let seconds =
                    snapshot.taken_at_ms.saturating_sub(previous.taken_at_ms) as f64 / 1000.0;
                if seconds > 0.0 {
                    model.dispatch_rates = snapshot
                        .levels
                        .iter()
                        .map(|level| {
                            let before = previous
                                .levels
                                .iter()
                                .find(|l| l.tier == level.tier)
                                .map_or(level.dispatched, |l| l.dispatched);
                            (
                                level.tier.clone(),
                                level.dispatched.saturating_sub(before) as f64 / seconds,
                            )
                        })
                        .collect();
                }
            }
            if model.paused {
                model.held = Some(*snapshot);
            } else {
                model.snapshot = Some(*snapshot);
                model.follow_selection();
                model.see_stream();
            }
            model.audit_age += 1;
            let mut cmds = Vec::new();
            if model.audit.is_some()
                && model.audit_until.is_none()
                && model.audit_age >= AUDIT_EVERY
                && !model.paused
            {
                model.audit_age = 0;
                cmds.push(Cmd::ReadAudit(model.audit_query()));
            }
            if let Some((tenant, _)) = &model.detail
                && !model.paused
            {
                cmds.push(Cmd::ReadDetail(tenant.clone()));
            }
            if let Some((instance, _)) = &model.instance_detail
                && !model.paused
            {
                cmds.push(Cmd::ReadInstance(instance.clone()));
            }
            cmds
        }
        Msg::Detail(Ok(detail)) => {
            if let Some((tenant, shown)) = &mut model.detail
                && *tenant == detail.tenant.name
            {
                *shown = Some(detail);
            }
            Vec::new()
        }
        Msg::Detail(Err(why)) | Msg::Instance(Err(why)) => {
            model.flash(why, true);
            Vec::new()
        }
        Msg::Instance(Ok(detail)) => {
            if let Some((instance, shown)) = &mut model.instance_detail
                && *instance == detail.instance
            {
                *shown = Some(detail);
            }
            Vec::new()
        }
        Msg::Audit(Ok(records)) => {
            if model.audit.is_some() {
                model.audit = Some(records);
                model.follow_selection();
            }
            Vec::new()
        }
        Msg::Audit(Err(why)) => {
            model.flash(why, true);
            Vec::new()
        }
        Msg::Feed(Feed::Link(link)) => {
            match &link {
                Link::Stopped => model.quit = true,
                Link::Refused(reason) => {
                    model.exit_message = Some(reason.clone());
                    model.quit = true;
                }
                Link::Connected | Link::Reconnecting { .. } => {}
            }
            model.link = link;
            Vec::new()
        }
        Msg::Silence(seconds) => {
            model.stale = seconds >= 5;
            Vec::new()
        }
        Msg::Height(rows) => {
            // The header, tabs, table borders and footer take about ten rows.
            model.page = usize::from(rows).saturating_sub(10).max(1);
            model.height = rows;
            Vec::new()
        }
        Msg::Acted(Ok(done)) => {
            model.flash(done, false);
            Vec::new()
        }
        Msg::Acted(Err(why)) => {
            model.flash(why, true);
            Vec::new()
        }
        Msg::Key(key) => on_key(model, &key),
    }
}

fn on_key(model: &mut Model, key: &str) -> Vec<Cmd> {
    match model.mode.clone() {
        Mode::Help(top) => {
            let last = keys::KEYMAP.len().saturating_sub(1);
            model.mode = match key {
                "j" | "down" => Mode::Help((top + 1).min(last)),
                "k" | "up" => Mode::Help(top.saturating_sub(1)),
                "pgdn" | "ctrl-d" | "space" => Mode::Help((top + model.page).min(last)),
                "pgup" | "ctrl-u" => Mode::Help(top.saturating_sub(model.page)),
                "g" | "home" => Mode::Help(0),
                "G" | "end" => Mode::Help(last),
                "resize" => Mode::Help(top),
                _ => Mode::Normal,
            };
            Vec::new()
        }
        Mode::ConfirmQuit { .. } => {
            model.mode = Mode::Normal;
            if key == "y" || key == "Y" {
                model.stopping = true;
                model.flash(
                    "stopping the gateway: requests in flight finish, then it exits",
                    false,
                );
                vec![Cmd::StopGateway]
            } else {
                model.flash("cancelled; the gateway keeps running", false);
                Vec::new()
            }
        }
        Mode::Confirm { action, .. } => {
            model.mode = Mode::Normal;
            if key == "y" || key == "Y" {
                model.flash(format!("{}…", action.describe()), false);
                vec![Cmd::Act(action)]
            } else {
                model.flash("cancelled", false);
                Vec::new()
            }
        }
        Mode::Filter(mut text) => {
            let view = model.view.index();
            match key {
                "esc" | "ctrl-c" => {
                    model.filters[view].clear();
                    model.mode = Mode::Normal;
                }
                "enter" => {
                    model.mode = Mode::Normal;
                    if model.view == View::Events && model.audit.is_some() {
                        model.follow_selection();
                        return vec![Cmd::ReadAudit(model.audit_query())];
                    }
                }
                "backspace" => {
                    text.pop();
                    model.filters[view] = text.clone();
                    model.mode = Mode::Filter(text);
                }
                k if k.chars().count() == 1 => {
                    text.push_str(k);
                    model.filters[view] = text.clone();
                    model.mode = Mode::Filter(text);
                }
                "space" => {
                    text.push(' ');
                    model.filters[view] = text.clone();
                    model.mode = Mode::Filter(text);
                }
                _ => {}
            }
            model.follow_selection();
            Vec::new()
        }
        Mode::Command(mut text) => match key {
            "esc" | "ctrl-c" => {
                model.mode = Mode::Normal;
                Vec::new()
            }
            "enter" => {
                model.mode = Mode::Normal;
                if let Some(region) = text.trim().strip_prefix("outage ") {
                    return outage(model, region.trim().to_string());
                }
                match parse_command(&text) {
                    Ok(Some(action)) => model.request(action),
                    Ok(None) => quit(model),
                    Err(why) => {
                        model.flash(why, true);
                        Vec::new()
                    }
                }
            }
            "backspace" => {
                text.pop();
                model.mode = Mode::Command(text);
                Vec::new()
            }
            "space" => {
                text.push(' ');
                model.mode = Mode::Command(text);
                Vec::new()
            }
            k if k.chars().count() == 1 => {
                text.push_str(k);
                model.mode = Mode::Command(text);
                Vec::new()
            }
            _ => Vec::new(),
        },
        Mode::Normal => {
            match key {
                "wheel-down" => return on_binding(model, Does::Down),
                "wheel-up" => return on_binding(model, Does::Up),
                _ => {}
            }
            if let Some(at) = key.strip_prefix("click:") {
                let mut xy = at.split(':').filter_map(|n| n.parse::<u16>().ok());
                if let (Some(x), Some(y)) = (xy.next(), xy.next()) {
                    click(model, x, y);
                }
                return Vec::new();
            }
            let Some(binding) = keys::lookup(key, model.view) else {
                return Vec::new();
            };
            on_binding(model, binding.does)
        }
    }
}

/// A click: on a tab, that view; on a row of a full-screen table, that row. The
/// layout is the view's: header, tabs, then the body's table (border, column headers).
fn click(model: &mut Model, x: u16, y: u16) {
    if y == 1 {
        let mut left = 0u16;
        for (i, view) in View::ALL.iter().enumerate() {
            let width = format!("{} {}", i + 1, view.title()).chars().count() as u16;
            if x >= left && x < left + width {
                model.view = *view;
                return;
            }
            left += width + 3; // " │ "
        }
        return;
    }
    let full_table = matches!(model.view, View::Tenants | View::Regions | View::Queues);
    if !full_table || model.detail.is_some() || y < 4 {
        return;
    }
    // ratatui scrolls a table just enough to show the selected row.
    let visible = usize::from(model.height.saturating_sub(7)).max(1);
    let first = model.selected().saturating_sub(visible - 1);
    let row = first + usize::from(y - 4);
    if row < model.row_count() {
        model.select(row);
    }
}

/// Asks the demo for an outage in `region`, once the region is known.
fn outage(model: &mut Model, region: String) -> Vec<Cmd> {
    let action = Action::DrainRegion {
        region: region.clone(),
        deadline_secs: None,
    };
    if let Err(why) = model.check(&action) {
        model.flash(why, true);
        return Vec::new();
    }
    model.flash(format!("simulating an outage in {region}…"), false);
    vec![Cmd::Outage(region)]
}

/// Quits; when that stops the gateway, asks first, naming what is in flight. Once it
/// is stopping, quitting leaves it finishing on its own.
fn quit(model: &mut Model) -> Vec<Cmd> {
    if !model.stops_gateway || model.stopping {
        model.quit = true;
        return Vec::new();
    }
    let impact = match &model.snapshot {
        Some(s) => format!(
            "{} requests in flight, {} streams",
            s.totals.in_flight,
            s.streams.len()
        ),
        None => "it stops serving".into(),
    };
    model.mode = Mode::ConfirmQuit { impact };
    Vec::new()
}

fn on_binding(model: &mut Model, does: Does) -> Vec<Cmd> {
    let index = model.view.index();
    match does {
        Does::Quit => return quit(model),
        Does::Help => model.mode = Mode::Help(0),
        Does::NextView => model.view = View::ALL[(index + 1) % View::ALL.len()],
        Does::PrevView => model.view = View::ALL[(index + View::ALL.len() - 1) % View::ALL.len()],
        Does::GoTo(view) => model.view = view,
        Does::Down => model.select(model.selected[index] + 1),
        Does::Up => model.select(model.selected[index].saturating_sub(1)),
        Does::PageDown => model.select(model.selected[index] + model.page),
        Does::PageUp => model.select(model.selected[index].saturating_sub(model.page)),
        Does::First => model.select(0),
        Does::Last => model.select(usize::MAX),
        Does::Filter => model.mode = Mode::Filter(model.filter().to_string()),
        Does::Detail => {
            let Some(tenant) = model.selected_tenant() else {
                model.flash("select a tenant first", true);
                return Vec::new();
            };
            model.detail = Some((tenant.clone(), None));
            return vec![Cmd::ReadDetail(tenant)];
        }
        Does::RegionDetail => match model.selected_region_row() {
            Some(RegionRow::Region(region)) => model.region_detail = Some(region),
            Some(RegionRow::Instance { name: instance, .. }) => {
                model.instance_detail = Some((instance.clone(), None));
                return vec![Cmd::ReadInstance(instance)];
            }
            None => model.flash("select a region or an instance first", true),
        },
        Does::ClearFilter => {
            // Esc leaves a drill-down first, then clears the filter.
            if model.view == View::Tenants && model.detail.take().is_some() {
                return Vec::new();
            }
            if model.view == View::Regions
                && (model.instance_detail.take().is_some() || model.region_detail.take().is_some())
            {
                return Vec::new();
            }
            if model.view == View::Streams && model.tailing.take().is_some() {
                return Vec::new();
            }
            if model.view == View::Batches && model.batch_detail.take().is_some() {
                return Vec::new();
            }
            if model.view == View::Flows && model.run_detail.take().is_some() {
                return Vec::new();
            }
            if !model.filters[index].is_empty() {
                model.filters[index].clear();
                model.follow_selection();
                model.flash("filter cleared", false);
            }
        }
        Does::Command => model.mode = Mode::Command(String::new()),
        Does::Pause => {
            model.paused = !model.paused;
            if !model.paused
                && let Some(held) = model.held.take()
            {
                model.snapshot = Some(held);
                model.follow_selection();
            }
            model.flash(
                if model.paused {
                    "view paused"
                } else {
                    "view live"
                },
                false,
            );
        }
        Does::Sort => {
            model.sort = model.sort.next();
            model.descending = model.sort.descends_first();
            model.follow_selection();
            model.flash(format!("sorted by {}", model.sort.label()), false);
        }
        Does::Reverse => {
            model.descending = !model.descending;
            model.follow_selection();
            model.flash(
                format!(
                    "sorted by {}, {}",
                    model.sort.label(),
                    if model.descending {
                        "descending"
                    } else {
                        "ascending"
                    }
                ),
                false,
            );
        }
        Does::Drain | Does::Undrain | Does::Eject | Does::Restore => {
            let Some(row) = model.selected_region_row() else {
                model.flash("select a region or instance first", true);
                return Vec::new();
            };
            let action = match (does, row) {
                (Does::Drain, RegionRow::Region(region)) => Action::DrainRegion {
                    region,
                    deadline_secs: None,
                },
                (Does::Drain, RegionRow::Instance { name, .. }) => Action::DrainInstance {
                    instance: name,
                    deadline_secs: None,
                },
                (Does::Undrain, RegionRow::Region(region)) => Action::UndrainRegion { region },
                (Does::Undrain, RegionRow::Instance { name, .. }) => {
                    Action::UndrainInstance { instance: name }
                }
                (Does::Eject, RegionRow::Instance { name, .. }) => {
                    Action::EjectInstance { instance: name }
                }
                (Does::Restore, RegionRow::Instance { name, .. }) => {
                    Action::RestoreInstance { instance: name }
                }
                _ => {
                    model.flash(
                        "select an instance (not a region) to eject or restore",
                        true,
                    );
                    return Vec::new();
                }
            };
            return model.request(action);
        }
        Does::PauseTenant | Does::ResumeTenant | Does::ResetBudget => {
            let Some(tenant) = model.selected_tenant() else {
                model.flash("select a tenant first", true);
                return Vec::new();
            };
            let action = match does {
                Does::PauseTenant => Action::PauseTenant { tenant },
                Does::ResumeTenant => Action::ResumeTenant { tenant },
                _ => Action::ResetBudget { tenant },
            };
            return model.request(action);
        }
        Does::Tier | Does::Limits => {
            let Some(tenant) = model.selected_tenant() else {
                model.flash("select a tenant first", true);
                return Vec::new();
            };
            let prefill = if does == Does::Tier {
                format!("tier {tenant} ")
            } else {
                format!("limits {tenant} rpm=")
            };
            model.mode = Mode::Command(prefill);
        }
        Does::Kill => {
            // In a stream's detail, the stream shown, even when the list moved on.
            let Some(id) = model.tailing.clone().or_else(|| model.selected_stream()) else {
                model.flash("select a stream first", true);
                return Vec::new();
            };
            return model.request(Action::KillStream { id });
        }
        Does::Outage => {
            let region = match model.selected_region_row() {
                Some(RegionRow::Region(region)) | Some(RegionRow::Instance { region, .. }) => {
                    region
                }
                None => {
                    model.flash("select a region first", true);
                    return Vec::new();
                }
            };
            return outage(model, region);
        }
        Does::CancelBatch => {
            // In a batch's detail, the batch shown, even when the list moved on.
            let Some(id) = model
                .batch_detail
                .clone()
                .or_else(|| model.selected_batch())
            else {
                model.flash("select a batch first", true);
                return Vec::new();
            };
            return model.request(Action::CancelBatch { id });
        }
        Does::BatchDetail => match model.selected_batch() {
            Some(id) => model.batch_detail = Some(id),
            None => model.flash("select a batch first", true),
        },
        Does::CancelRun => {
            // In a run's detail, the run shown, even when the list moved on.
            let Some(id) = model.run_detail.clone().or_else(|| model.selected_run()) else {
                model.flash("select a flow run first", true);
                return Vec::new();
            };
            return model.request(Action::CancelFlowRun { id });
        }
        Does::RunDetail => match model.selected_run() {
            Some(id) => model.run_detail = Some(id),
            None => model.flash("select a flow run first", true),
        },
        Does::Tail => {
            model.tailing = model.selected_stream();
            model.stream_seen.clear();
            model.see_stream();
        }
        Does::Audit => {
            if model.audit.take().is_none() {
                model.audit = Some(Vec::new());
                model.audit_age = 0;
                model.audit_until = None;
                model.flash(
                    "the audit log: filter with tenant=NAME status=429|5xx|error kind=operator|request and words; ] older, [ newest",
                    false,
                );
                model.follow_selection();
                return vec![Cmd::ReadAudit(model.audit_query())];
            }
            model.flash("the event log", false);
            model.follow_selection();
        }
        Does::Older | Does::Newest => {
            let Some(records) = &model.audit else {
                model.flash("press a for the audit log first", true);
                return Vec::new();
            };
            if does == Does::Older {
                let Some(oldest) = records.first() else {
                    model.flash("no older records", false);
                    return Vec::new();
                };
                model.audit_until = Some(oldest.at_ms);
                model.flash(
                    format!(
                        "records before {} UTC ([ for the newest)",
                        crate::domain::period::utc_text(oldest.at_ms)
                    ),
                    false,
                );
            } else {
                model.audit_until = None;
                model.flash("the newest records", false);
            }
            model.select(0);
            return vec![Cmd::ReadAudit(model.audit_query())];
        }
        Does::Window => {
            model.window = match model.window {
                "10s" => "1m",
                "1m" => "5m",
                _ => "10s",
            };
            model.flash(format!("latency over the last {}", model.window), false);
            model.follow_selection();
        }
    }
    Vec::new()
}

/// Parses a command line: `drain us-east [60]`, `undrain us-east`, `drain-instance X`,
/// `eject X`, `restore X`, `pause T`, `resume T`, `tier T TIER`, `limits T rpm=N tpm=N`,
/// `reset T`, `kill ID`, `purge-cache [T]`, `q`. `Ok(None)` means quit.
pub fn parse_command(line: &str) -> Result<Option<Action>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let need = |n: usize, usage: &str| {
        if words.len() == n + 1 {
            Ok(())
        } else {
            Err(format!("usage: :{usage}"))
        }
    };
    let Some(verb) = words.first() else {
        return Err("type a command, e.g. :drain us-east".into());
    };
    let arg = |i: usize| words.get(i).map(|w| w.to_string()).unwrap_or_default();
    let action = match *verb {
        "q" | "quit" => return Ok(None),
        "drain" => {
            if words.len() != 2 && words.len() != 3 {
                return Err("usage: :drain REGION [DEADLINE_SECS]".into());
            }
            let deadline_secs = match words.get(2) {
                Some(s) => Some(
                    s.parse()
                        .map_err(|_| format!("{s} is not a number of seconds"))?,
                ),
                None => None,
            };
            Action::DrainRegion {
                region: arg(1),
                deadline_secs,
            }
        }
        "undrain" => {
            need(1, "undrain REGION")?;
            Action::UndrainRegion { region: arg(1) }
        }
        "drain-instance" => {
            need(1, "drain-instance INSTANCE")?;
            Action::DrainInstance {
                instance: arg(1),
                deadline_secs: None,
            }
        }
        "undrain-instance" => {
            need(1, "undrain-instance INSTANCE")?;
            Action::UndrainInstance { instance: arg(1) }
        }
        "eject" => {
            need(1, "eject INSTANCE")?;
            Action::EjectInstance { instance: arg(1) }
        }
        "restore" => {
            need(1, "restore INSTANCE")?;
            Action::RestoreInstance { instance: arg(1) }
        }
        "pause" => {
            need(1, "pause TENANT")?;
            Action::PauseTenant { tenant: arg(1) }
        }
        "resume" => {
            need(1, "resume TENANT")?;
            Action::ResumeTenant { tenant: arg(1) }
        }
        "reset" => {
            need(1, "reset TENANT")?;
            Action::ResetBudget { tenant: arg(1) }
        }
        "purge-cache" => match words.len() {
            1 => Action::PurgeCache { tenant: None },
            2 => Action::PurgeCache {
                tenant: Some(arg(1)),
            },
            _ => return Err("usage: :purge-cache [TENANT]".into()),
        },
        "kill" => {
            need(1, "kill STREAM_ID")?;
            Action::KillStream { id: arg(1) }
        }
        "cancel-batch" => {
            need(1, "cancel-batch BATCH_ID")?;
            Action::CancelBatch { id: arg(1) }
        }
        "cancel-run" => {
            need(1, "cancel-run RUN_ID")?;
            Action::CancelFlowRun { id: arg(1) }
        }
        "tier" => {
            need(2, "tier TENANT TIER")?;
            Action::SetTier {
                tenant: arg(1),
                tier: arg(2),
            }
        }
        "limits" => {
            if words.len() < 3 {
                return Err(
                    "usage: :limits TENANT rpm=N tpm=N max_concurrency=N daily_tokens=N …".into(),
                );
            }
            let mut limits = Limits::default();
            for pair in &words[2..] {
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("{pair}: write limits as key=value"))?;
                let int = || {
                    value
                        .parse::<u64>()
                        .map_err(|_| format!("{key}: {value} is not a whole number"))
                };
                let float = || {
                    value
                        .parse::<f64>()
                        .map_err(|_| format!("{key}: {value} is not a number"))
                };
                match key {
                    "rpm" => limits.rpm = Some(int()?),
                    "tpm" => limits.tpm = Some(int()?),
                    "max_concurrency" => limits.max_concurrency = Some(int()? as u32),
                    "daily_tokens" => limits.daily_tokens = Some(int()?),
                    "monthly_tokens" => limits.monthly_tokens = Some(int()?),
                    "daily_usd" => limits.daily_usd = Some(float()?),
                    "monthly_usd" => limits.monthly_usd = Some(float()?),
                    "max_tokens_cap" => limits.max_tokens_cap = Some(int()?),
                    "batch_concurrency" => limits.batch_concurrency = Some(int()? as u32),
                    "batch_daily_tokens" => limits.batch_daily_tokens = Some(int()?),
                    other => {
                        return Err(format!("{other} is not a limit; see config.toml.example"));
                    }
                }
            }
            Action::SetLimits {
                tenant: arg(1),
                limits,
            }
        }
        other => return Err(format!("unknown command :{other}; press ? for help")),
    };
    Ok(Some(action))
}

/// A count in at most four characters: 950, 1.2k, 52k, 1.2M, 340M, 3.4G.
pub fn human_count(n: u64) -> String {
    let scaled = |value: f64, unit: &str| {
        if value < 9.95 {
            format!("{value:.1}{unit}")
        } else {
            format!("{value:.0}{unit}")
        }
    };
    match n {
        0..1_000 => n.to_string(),
        1_000..999_500 => scaled(n as f64 / 1e3, "k"),
        999_500..999_500_000 => scaled(n as f64 / 1e6, "M"),
        _ => scaled(n as f64 / 1e9, "G"),
    }
}

/// Bytes as B, KiB, MiB or GiB with one decimal.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
